/*
 * sts: both sides of the instance identity. Presigning (the URL's
 * parameters, the signed server header); the coordinator's checks of a
 * proof before anything leaves the process (the trusted host only, no
 * other path, action or parameter, expiry at most 300 s, unexpired, the
 * signed headers exactly the ones given, the coordinator's own name);
 * reading GetCallerIdentity answers and ARNs; the policy (account, role,
 * session = instance); the replay cache; and the verifier end to end
 * against tests/fakes/sts.py, which checks the presigned signature
 * independently: accepted, wrong account/role/instance, a proof used
 * twice, throttling and 5xx retried, STS down, an expired token, a
 * malformed answer.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "clock.h"
#include "fakeproc.h"
#include "http_client.h"
#include "json.h"
#include "log.h"
#include "sts.h"

#define AKID "ASIAFAKESTS000000001"
#define SECRET "fake-sts-secret-key"
#define ACCOUNT "123456789012"
#define ROLE "slipway-agent"
#define INSTANCE "i-0123456789abcdef0"
#define SERVER "coord.internal:8700"
#define T0 1893456000000LL /* 2030-01-01T00:00:00Z */

static const struct aws_credentials creds = {AKID, SECRET, NULL, 0, "test"};

/* ---- presigning ---- */

static void test_presign(void **state)
{
	(void)state;
	struct sigv4_signer s;
	assert_int_equal(sigv4_signer_init(&s, "eu-west-1", STS_SERVICE, NULL, NULL), 0);
	struct sts_proof p;
	struct err err;
	assert_int_equal(sts_presign_identity(&s, &creds, NULL, SERVER, 60, T0, &p, &err), 0);
	assert_string_equal(p.host, "sts.eu-west-1.amazonaws.com");
	assert_string_equal(p.server, SERVER);
	const char *want = "https://sts.eu-west-1.amazonaws.com/?Action=GetCallerIdentity&"
			   "Version=2011-06-15&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential="
			   AKID "%2F20300101%2Feu-west-1%2Fsts%2Faws4_request&X-Amz-Date="
			   "20300101T000000Z&X-Amz-Expires=60&X-Amz-SignedHeaders="
			   "host%3Bx-slipway-coordinator%3Bx-slipway-nonce&X-Amz-Signature=";
	assert_memory_equal(p.url, want, strlen(want));
	assert_int_equal(strlen(p.url), strlen(want) + 64);
	/* The proof the coordinator gets, and its own check of it, agree. */
	cJSON *j = sts_proof_json(&p);
	assert_non_null(j);
	struct sts_checked chk;
	assert_int_equal(sts_proof_check(j, "https://sts.eu-west-1.amazonaws.com", SERVER,
					 T0 + 1000, &chk, &err),
			 0);
	assert_string_equal(chk.url, p.url);
	assert_string_equal(chk.signature, strstr(p.url, "Signature=") + 10);
	assert_int_equal(chk.expires_ms, T0 + 60000);
	cJSON_Delete(j);
	sts_proof_free(&p);
	/* Expiry bounds. */
	assert_int_equal(sts_presign_identity(&s, &creds, NULL, SERVER, 301, T0, &p, &err), -1);
	assert_int_equal(sts_presign_identity(&s, &creds, NULL, SERVER, 0, T0, &p, &err), -1);
	assert_int_equal(sts_presign_identity(&s, &creds, "https://sts.x/path", NULL, 60, T0, &p,
					      &err),
			 -1);
	sigv4_signer_clear(&s);
}

/* ---- the coordinator's checks ---- */

static char good_nonce[33];

static cJSON *proof_of(const char *url, const char *host, const char *server)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "url", url);
	cJSON *h = cJSON_AddObjectToObject(o, "headers");
	if (host)
		cJSON_AddStringToObject(h, "Host", host);
	cJSON_AddStringToObject(h, STS_NONCE_HEADER, good_nonce);
	if (server)
		cJSON_AddStringToObject(h, STS_SERVER_HEADER, server);
	return o;
}

static char good_url[4096];

static void make_good(void)
{
	struct sigv4_signer s;
	sigv4_signer_init(&s, "eu-west-1", STS_SERVICE, NULL, NULL);
	struct sts_proof p;
	struct aws_credentials tc = {AKID, SECRET, "tok/en+1==", 0, "test"};
	assert_int_equal(sts_presign_identity(&s, &tc, NULL, SERVER, 300, T0, &p, NULL), 0);
	snprintf(good_url, sizeof good_url, "%s", p.url);
	snprintf(good_nonce, sizeof good_nonce, "%s", p.nonce);
	sts_proof_free(&p);
	sigv4_signer_clear(&s);
}

static void check_refused(const char *url, const char *host, const char *server,
			  int64_t now, const char *why)
{
	cJSON *j = proof_of(url, host, server);
	struct sts_checked chk;
	struct err err = {{0}};
	int rc = sts_proof_check(j, "https://sts.eu-west-1.amazonaws.com", SERVER, now, &chk, &err);
	cJSON_Delete(j);
	if (rc != -1)
		fail_msg("accepted: %s", url);
	if (!strstr(err.msg, why))
		fail_msg("error \"%s\" lacks \"%s\" (%s)", err.msg, why, url);
}

/* good_url with `from` replaced by `to` (once). */
static const char *edit(const char *from, const char *to)
{
	static char out[4096];
	const char *p = strstr(good_url, from);
	assert_non_null(p);
	snprintf(out, sizeof out, "%.*s%s%s", (int)(p - good_url), good_url, to, p + strlen(from));
	return out;
}

static void test_proof_checks(void **state)
{
	(void)state;
	make_good();
	const char *H = "sts.eu-west-1.amazonaws.com";
	int64_t now = T0 + 1000;
	/* The good one passes, token and all. */
	cJSON *j = proof_of(good_url, H, SERVER);
	struct sts_checked chk;
	struct err err;
	assert_int_equal(sts_proof_check(j, "https://sts.eu-west-1.amazonaws.com", SERVER, now, &chk,
					 &err),
			 0);
	assert_non_null(strstr(chk.url, "X-Amz-Security-Token=tok%2Fen%2B1%3D%3D"));
	cJSON_Delete(j);
	/* Anywhere but the trusted endpoint: never forwarded. */
	check_refused(edit("https://sts.eu-west-1.amazonaws.com", "http://169.254.169.254"), H,
		      SERVER, now, "not the STS endpoint");
	check_refused(edit("https://sts.eu-west-1.amazonaws.com", "http://sts.eu-west-1.amazonaws.com"),
		      H, SERVER, now, "not the STS endpoint");
	check_refused(edit("amazonaws.com/", "amazonaws.com.evil.example/"), H, SERVER, now,
		      "not the STS endpoint");
	check_refused(edit("https://", "https://user@"), H, SERVER, now, "not the STS endpoint");
	check_refused(edit("amazonaws.com/", "amazonaws.com:8443/"), H, SERVER, now,
		      "not the STS endpoint");
	check_refused(edit("amazonaws.com/?", "amazonaws.com/x?"), H, SERVER, now, "path");
	check_refused(edit("amazonaws.com/?", "amazonaws.com?"), H, SERVER, now, "path");
	check_refused(edit("/?Action", "/#?Action"), H, SERVER, now, "path");
	/* Only GetCallerIdentity, only the signer's parameters, once each. */
	check_refused(edit("GetCallerIdentity", "AssumeRole"), H, SERVER, now, "GetCallerIdentity");
	check_refused(edit("Version=", "RoleArn=x&Version="), H, SERVER, now, "unexpected");
	check_refused(edit("Version=", "Action=GetCallerIdentity&Version="), H, SERVER, now,
		      "twice");
	check_refused(edit("X-Amz-Expires=300", "X-Amz-Expires=301"), H, SERVER, now,
		      "X-Amz-Expires");
	check_refused(edit("X-Amz-Expires=300", "X-Amz-Expires=3e2"), H, SERVER, now,
		      "X-Amz-Expires");
	check_refused(edit("%2Fsts%2F", "%2Fs3%2F"), H, SERVER, now, "scoped");
	check_refused(edit("X-Amz-Date=20300101", "X-Amz-Date=20300102"), H, SERVER, now,
		      "X-Amz-Date");
	check_refused(edit("&X-Amz-Signature=", "&X-Amz-Signature=ZZ"), H, SERVER, now,
		      "Signature");
	check_refused(edit("Action=", "Act ion="), H, SERVER, now, "character");
	/* Time: expired, or from too far in the future. */
	check_refused(good_url, H, SERVER, T0 + 301000, "expired");
	check_refused(good_url, H, SERVER, T0 - 6 * 60000, "future");
	/* Headers: Host must be given and be the endpoint; the server name must be ours. */
	check_refused(good_url, NULL, SERVER, now, "differ");
	check_refused(good_url, "evil.example", SERVER, now, "Host");
	check_refused(good_url, H, "other-coordinator:8700", now, "not this one");
	check_refused(good_url, H, NULL, now, "differ");
	j = proof_of(good_url, H, SERVER);
	cJSON_AddStringToObject(cJSON_GetObjectItem(j, "headers"), "X-Forwarded-For", "1.2.3.4");
	assert_int_equal(sts_proof_check(j, "https://sts.eu-west-1.amazonaws.com", SERVER, now, &chk,
					 &err),
			 -1);
	assert_non_null(strstr(err.msg, "not signed"));
	cJSON_Delete(j);
	j = proof_of(good_url, H, SERVER);
	cJSON_AddStringToObject(j, "method", "POST");
	assert_int_equal(sts_proof_check(j, "https://sts.eu-west-1.amazonaws.com", SERVER, now, &chk,
					 &err),
			 -1);
	assert_non_null(strstr(err.msg, "unknown field"));
	cJSON_Delete(j);
	/* A coordinator that expects a name refuses a proof without one. */
	struct sigv4_signer s;
	sigv4_signer_init(&s, "eu-west-1", STS_SERVICE, NULL, NULL);
	struct sts_proof p;
	assert_int_equal(sts_presign_identity(&s, &creds, NULL, NULL, 60, T0, &p, NULL), 0);
	snprintf(good_nonce, sizeof good_nonce, "%s", p.nonce);
	check_refused(p.url, H, NULL, now, "must sign");
	sts_proof_free(&p);
	/* The nonce is what tells two proofs of one second apart. */
	struct sts_proof p1, p2;
	assert_int_equal(sts_presign_identity(&s, &creds, NULL, SERVER, 60, T0, &p1, NULL), 0);
	assert_int_equal(sts_presign_identity(&s, &creds, NULL, SERVER, 60, T0, &p2, NULL), 0);
	assert_string_not_equal(p1.url, p2.url);
	sts_proof_free(&p1);
	sts_proof_free(&p2);
	sigv4_signer_clear(&s);
}

/* ---- what STS says, and the policy ---- */

static void test_identity(void **state)
{
	(void)state;
	const char ok[] = "<GetCallerIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/"
			  "2011-06-15/\"><GetCallerIdentityResult><Arn>arn:aws:sts::123456789012:"
			  "assumed-role/slipway-agent/i-0123456789abcdef0</Arn><UserId>"
			  "AROAEXAMPLE:i-0123456789abcdef0</UserId><Account>123456789012</Account>"
			  "</GetCallerIdentityResult></GetCallerIdentityResponse>";
	struct sts_identity id;
	struct err err;
	assert_int_equal(sts_parse_identity(ok, sizeof ok - 1, &id, &err), 0);
	assert_string_equal(id.partition, "aws");
	assert_string_equal(id.type, "assumed-role");
	assert_string_equal(id.role, ROLE);
	assert_string_equal(id.session, INSTANCE);
	assert_int_equal(sts_identity_allowed(&id, "111122223333, 123456789012", "x,slipway-agent",
					      INSTANCE, &err),
			 0);
	assert_int_equal(sts_identity_allowed(&id, "111122223333", ROLE, INSTANCE, &err), -1);
	assert_non_null(strstr(err.msg, "account 123456789012"));
	assert_int_equal(sts_identity_allowed(&id, ACCOUNT, "slipway", INSTANCE, &err), -1);
	assert_non_null(strstr(err.msg, "role"));
	assert_int_equal(sts_identity_allowed(&id, ACCOUNT, "slipway-agent-x", INSTANCE, &err), -1);
	assert_int_equal(sts_identity_allowed(&id, ACCOUNT, ROLE, "i-0fffffffffffffff0", &err), -1);
	assert_non_null(strstr(err.msg, "session"));
	assert_int_equal(sts_identity_allowed(&id, "", "", INSTANCE, &err), -1);

	/* An IAM user is not an instance. */
	struct sts_identity u = {.account = ACCOUNT};
	assert_int_equal(sts_parse_arn("arn:aws:iam::123456789012:user/ops/alice", &u, &err), 0);
	assert_string_equal(u.type, "user");
	assert_int_equal(sts_identity_allowed(&u, ACCOUNT, ROLE, NULL, &err), -1);
	/* The ARN's account must be the answer's. */
	const char mismatch[] = "<GetCallerIdentityResponse><GetCallerIdentityResult><Arn>arn:aws:"
				"sts::999999999999:assumed-role/r/i-1</Arn><UserId>A:i-1</UserId>"
				"<Account>123456789012</Account></GetCallerIdentityResult>"
				"</GetCallerIdentityResponse>";
	assert_int_equal(sts_parse_identity(mismatch, sizeof mismatch - 1, &id, &err), -1);
	assert_non_null(strstr(err.msg, "account"));
	/* Two Arn elements: malformed, not "the first wins". */
	const char twice[] = "<GetCallerIdentityResponse><GetCallerIdentityResult><Arn>arn:aws:sts::"
			     "123456789012:assumed-role/r/i-1</Arn><Arn>arn:aws:sts::123456789012:"
			     "assumed-role/admin/i-1</Arn><UserId>A:i-1</UserId><Account>"
			     "123456789012</Account></GetCallerIdentityResult>"
			     "</GetCallerIdentityResponse>";
	assert_int_equal(sts_parse_identity(twice, sizeof twice - 1, &id, &err), -1);
	const char missing[] = "<GetCallerIdentityResponse><GetCallerIdentityResult><Arn>arn:aws:"
			       "sts::123456789012:assumed-role/r/i-1</Arn><Account>123456789012"
			       "</Account></GetCallerIdentityResult></GetCallerIdentityResponse>";
	assert_int_equal(sts_parse_identity(missing, sizeof missing - 1, &id, &err), -1);
	assert_non_null(strstr(err.msg, "UserId"));
	struct sts_identity x = {0};
	assert_int_equal(sts_parse_arn("arn:aws:sts::12345678901:assumed-role/r/s1", &x, &err), -1);
	assert_int_equal(sts_parse_arn("arn:aws:sts::123456789012:assumed-role/r", &x, &err), -1);
	/* Found by fuzz_awsquery: no slash after the resource type. */
	assert_int_equal(sts_parse_arn("arn:aws:sts::123456789012:assumed-role", &x, &err), -1);
	assert_int_equal(sts_parse_arn("arn:aws:sts::123456789012:assumed-role/r/s 1", &x, &err),
			 -1);
	assert_int_equal(sts_parse_arn("arn:aws:s3:::bucket", &x, &err), -1);
	assert_int_equal(sts_parse_arn("arn:aws-cn:sts::123456789012:assumed-role/r/s1", &x, &err),
			 0);
	assert_string_equal(x.partition, "aws-cn");
}

static void test_replay(void **state)
{
	(void)state;
	struct sts_replay *r = sts_replay_new(3);
	assert_int_equal(sts_replay_use(r, "aa", T0 + 1000, T0), 0);
	assert_int_equal(sts_replay_use(r, "aa", T0 + 1000, T0), -1);
	assert_int_equal(sts_replay_use(r, "bb", T0 + 1000, T0), 0);
	assert_int_equal(sts_replay_use(r, "cc", T0 + 1000, T0), 0);
	/* Full of live entries: refused rather than forgetting one. */
	assert_int_equal(sts_replay_use(r, "dd", T0 + 1000, T0), -1);
	assert_int_equal(sts_replay_count(r), 3);
	/* Entries go once expired (plus the allowed skew). */
	int64_t later = T0 + 1000 + 5 * 60000 + 1;
	assert_int_equal(sts_replay_use(r, "dd", later + 1000, later), 0);
	assert_int_equal(sts_replay_count(r), 1);
	assert_int_equal(sts_replay_use(r, "aa", later + 1000, later), 0);
	sts_replay_free(r);
}

/* ---- the verifier against the fake STS ---- */

struct vres {
	int done;
	enum sts_verdict verdict;
	char reason[600];
	char role[65];
};

static void on_verdict(enum sts_verdict v, const struct sts_identity *id, const char *reason,
		       void *arg)
{
	struct vres *r = arg;
	r->done++;
	r->verdict = v;
	snprintf(r->reason, sizeof r->reason, "%s", reason);
	snprintf(r->role, sizeof r->role, "%s", id ? id->role : "");
}

struct vfx {
	struct fakeproc sts;
	struct ev_loop *loop;
	struct http_client *http;
	struct sts_verifier *v;
	struct sigv4_signer signer;
};

static struct vfx V;

static int v_setup(void **state)
{
	(void)state;
	memset(&V, 0, sizeof V);
	const char *args[] = {"--access-key", AKID, "--secret-key", SECRET, "--session", INSTANCE,
			      NULL};
	assert_int_equal(fakeproc_start(&V.sts, "sts.py", args), 0);
	V.loop = ev_loop_new(EVFLAG_AUTO);
	V.http = http_client_new(V.loop);
	struct sts_verifier_opts o = {.endpoint = V.sts.base, .server = SERVER, .accounts = ACCOUNT,
				      .roles = ROLE, .timeout_ms = 2000, .max_attempts = 3};
	struct err err;
	V.v = sts_verifier_new(V.http, &o, &err);
	if (!V.v)
		fail_msg("%s", err.msg);
	sigv4_signer_init(&V.signer, "us-east-1", STS_SERVICE, NULL, NULL);
	return 0;
}

static int v_teardown(void **state)
{
	(void)state;
	sts_verifier_free(V.v);
	http_client_free(V.http);
	ev_loop_destroy(V.loop);
	fakeproc_stop(&V.sts);
	sigv4_signer_clear(&V.signer);
	return 0;
}

static cJSON *fresh_proof(const struct aws_credentials *c)
{
	struct sts_proof p;
	struct err err;
	if (sts_presign_identity(&V.signer, c, V.sts.base, SERVER, 60, 0, &p, &err) < 0)
		fail_msg("%s", err.msg);
	cJSON *j = sts_proof_json(&p);
	sts_proof_free(&p);
	return j;
}

static void verify(cJSON *proof, const char *instance, struct vres *r)
{
	memset(r, 0, sizeof *r);
	struct err err = {{0}};
	uint64_t id = sts_verifier_start(V.v, proof, instance, on_verdict, r, &err);
	if (!id)
		fail_msg("refused at once: %s", err.msg);
	while (!r->done)
		ev_run(V.loop, EVRUN_ONCE);
	assert_int_equal(r->done, 1);
}

static void test_verifier(void **state)
{
	(void)state;
	struct vres r;
	cJSON *p = fresh_proof(&creds);
	verify(p, INSTANCE, &r);
	if (r.verdict != STS_VERIFIED)
		fail_msg("not verified: %s", r.reason);
	assert_string_equal(r.role, ROLE);
	/* The same proof again: refused here, STS is not asked. */
	struct err err = {{0}};
	assert_int_equal(sts_verifier_start(V.v, p, INSTANCE, on_verdict, &r, &err), 0);
	assert_non_null(strstr(err.msg, "used before"));
	cJSON_Delete(p);
	char *stats = fakeproc_http(&V.sts, "GET", "/_fake/stats", NULL);
	cJSON *st = json_parse(stats, strlen(stats), 1 << 20, NULL);
	assert_int_equal(cJSON_GetObjectItem(st, "requests")->valueint, 1);
	/* Only the signed headers went to STS (and curl's own). */
	const cJSON *call = cJSON_GetArrayItem(cJSON_GetObjectItem(st, "calls"), 0);
	const cJSON *h;
	cJSON_ArrayForEach(h, cJSON_GetObjectItem(call, "headers"))
	{
		const char *n = h->valuestring;
		if (strcmp(n, "host") && strcmp(n, "x-slipway-coordinator") &&
		    strcmp(n, "x-slipway-nonce") && strcmp(n, "accept"))
			fail_msg("header %s was sent to STS", n);
	}
	cJSON_Delete(st);
	free(stats);

	/* Another instance's claim with this instance's proof. */
	p = fresh_proof(&creds);
	verify(p, "i-0fffffffffffffff0", &r);
	assert_int_equal(r.verdict, STS_REFUSED);
	assert_non_null(strstr(r.reason, "session"));
	cJSON_Delete(p);

	/* A key STS knows, of another account and role. */
	free(fakeproc_http(&V.sts, "POST", "/_fake/identity",
		      "{\"access_key\":\"AKIDOTHER0000000001\",\"secret\":\"s2\",\"account\":"
		      "\"999988887777\",\"role\":\"admin\",\"session\":\"" INSTANCE "\"}"));
	struct aws_credentials other = {"AKIDOTHER0000000001", "s2", NULL, 0, "test"};
	p = fresh_proof(&other);
	verify(p, INSTANCE, &r);
	assert_int_equal(r.verdict, STS_REFUSED);
	assert_non_null(strstr(r.reason, "account 999988887777"));
	cJSON_Delete(p);

	/* A wrong secret: STS refuses the signature. */
	struct aws_credentials wrong = {AKID, "not-the-secret", NULL, 0, "test"};
	p = fresh_proof(&wrong);
	verify(p, INSTANCE, &r);
	assert_int_equal(r.verdict, STS_REFUSED);
	assert_non_null(strstr(r.reason, "SignatureDoesNotMatch"));
	cJSON_Delete(p);
}

static void test_verifier_faults(void **state)
{
	(void)state;
	struct vres r;
	/* Throttling and a 500, then an answer: retried within max_attempts. */
	free(fakeproc_http(&V.sts, "POST", "/_fake/fault", "{\"kind\":\"throttle\",\"count\":1}"));
	free(fakeproc_http(&V.sts, "POST", "/_fake/fault", "{\"kind\":\"error500\",\"count\":1}"));
	cJSON *p = fresh_proof(&creds);
	verify(p, INSTANCE, &r);
	if (r.verdict != STS_VERIFIED)
		fail_msg("not verified after retries: %s", r.reason);
	cJSON_Delete(p);
	/* Down for longer than the attempts: unavailable (the agent retries), not refused. */
	free(fakeproc_http(&V.sts, "POST", "/_fake/fault", "{\"kind\":\"error503\",\"count\":5}"));
	p = fresh_proof(&creds);
	verify(p, INSTANCE, &r);
	assert_int_equal(r.verdict, STS_UNAVAILABLE);
	cJSON_Delete(p);
	free(fakeproc_http(&V.sts, "POST", "/_fake/clear", NULL));
	free(fakeproc_http(&V.sts, "POST", "/_fake/fault", "{\"kind\":\"drop\",\"count\":5}"));
	p = fresh_proof(&creds);
	verify(p, INSTANCE, &r);
	assert_int_equal(r.verdict, STS_UNAVAILABLE);
	assert_non_null(strstr(r.reason, "unreachable"));
	cJSON_Delete(p);
	free(fakeproc_http(&V.sts, "POST", "/_fake/clear", NULL));
	/* A malformed 200: never trusted. */
	free(fakeproc_http(&V.sts, "POST", "/_fake/fault", "{\"kind\":\"bad_xml\",\"count\":1}"));
	p = fresh_proof(&creds);
	verify(p, INSTANCE, &r);
	assert_int_equal(r.verdict, STS_REFUSED);
	assert_non_null(strstr(r.reason, "xml"));
	cJSON_Delete(p);
	/* Temporary credentials whose token expired. */
	free(fakeproc_http(&V.sts, "POST", "/_fake/identity",
		      "{\"access_key\":\"ASIATOKEN000000001\",\"secret\":\"s3\",\"token\":\"t1\","
		      "\"session\":\"" INSTANCE "\"}"));
	struct aws_credentials tok = {"ASIATOKEN000000001", "s3", "t1", 0, "test"};
	p = fresh_proof(&tok);
	verify(p, INSTANCE, &r);
	if (r.verdict != STS_VERIFIED)
		fail_msg("not verified with a session token: %s", r.reason);
	cJSON_Delete(p);
	free(fakeproc_http(&V.sts, "POST", "/_fake/fault", "{\"kind\":\"expired_token\"}"));
	p = fresh_proof(&tok);
	verify(p, INSTANCE, &r);
	assert_int_equal(r.verdict, STS_REFUSED);
	assert_non_null(strstr(r.reason, "ExpiredToken"));
	cJSON_Delete(p);
}

int main(void)
{
	log_init("test_sts", LOG_LEVEL_ERROR, 0);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_presign),
		cmocka_unit_test(test_proof_checks),
		cmocka_unit_test(test_identity),
		cmocka_unit_test(test_replay),
		cmocka_unit_test_setup_teardown(test_verifier, v_setup, v_teardown),
		cmocka_unit_test_setup_teardown(test_verifier_faults, v_setup, v_teardown),
	};
	return cmocka_run_group_tests_name("sts", tests, NULL, NULL);
}
