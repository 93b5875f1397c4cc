/*
 * libFuzzer target for the coordinator's check of an agent's AWS identity
 * proof (common/sts: sts_proof_check, then sts_replay_use), the object an
 * agent sends as "aws_identity" in its registration (coordinator/agents.c
 * passes it to sts_verifier_start, which checks it this way before anything
 * leaves the process). Outside input: anyone who can reach the coordinator
 * can send one.
 *
 * Input: byte 0 picks the endpoint the coordinator trusts (bits 0-1), the
 * name it expects agents to sign (bits 2-3) and the time (bits 4-7, around
 * the seeds' 2030-01-01T00:00:00Z); the rest is the JSON body. Checks,
 * beyond the sanitizers: a refusal has a message; an accepted proof names
 * the trusted endpoint's host (the coordinator is no proxy to anywhere else)
 * with path "/", a 64-hex-digit signature, an expiry no later than the
 * clock allows (signed at most 5 minutes ahead, valid at most 300 s), the
 * server name expected, a nonce of 16..64 letters and digits or none; the
 * same input gives the same answer; a signature counts once.
 *
 *   make build/fuzz/fuzz_stsproof
 *   build/fuzz/fuzz_stsproof -max_total_time=60 tests/fuzz/seeds/stsproof
 */
#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "json.h"
#include "sts.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define TERMINATED(buf) (memchr((buf), '\0', sizeof(buf)) != NULL)
#define BODY_MAX (64 << 10)
#define T0 1893456000000LL /* 2030-01-01T00:00:00Z, the seeds' X-Amz-Date */

static const char *const endpoints[] = {
	"https://sts.eu-west-1.amazonaws.com",
	"http://127.0.0.1:8123",
	"https://sts.amazonaws.com/",
	"https://sts.eu-west-1.amazonaws.com/x", /* not "/": every proof is refused */
};
static const char *const endpoint_hosts[] = {
	"sts.eu-west-1.amazonaws.com",
	"127.0.0.1:8123",
	"sts.amazonaws.com",
	NULL,
};
static const char *const servers[] = {NULL, "", "coord.internal:8700", "COORD.internal:8700"};

static struct sts_checked out, again; /* 16 KiB each: off the stack */

static void check_accepted(const struct sts_checked *c, size_t e, const char *server,
			   int64_t now)
{
	if (!TERMINATED(c->url) || !TERMINATED(c->host) || !TERMINATED(c->server) ||
	    !TERMINATED(c->nonce) || !TERMINATED(c->signature))
		abort();
	const char *want = endpoint_hosts[e];
	if (!want || strcasecmp(c->host, want) != 0)
		abort();
	/* scheme://host/? with the trusted endpoint's scheme and host */
	const char *ep = endpoints[e];
	size_t scheme = (size_t)(strstr(ep, "://") + 3 - ep);
	size_t hl = strlen(want);
	if (strncmp(c->url, ep, scheme) != 0 || strncmp(c->url + scheme, want, hl) != 0 ||
	    strncmp(c->url + scheme + hl, "/?", 2) != 0)
		abort();
	if (strlen(c->signature) != 64)
		abort();
	for (const char *s = c->signature; *s; s++)
		if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f')))
			abort();
	if (c->expires_ms < now || c->expires_ms > now + 5 * 60 * 1000 + STS_EXPIRES_MAX_S * 1000)
		abort();
	if (server && *server ? strcmp(c->server, server) != 0 : c->server[0] != '\0')
		abort();
	size_t nl = strlen(c->nonce);
	if (nl && (nl < 16 || nl > 64))
		abort();
	for (const char *s = c->nonce; *s; s++)
		if (!isalnum((unsigned char)*s))
			abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	size_t e = data[0] & 3;
	const char *server = servers[(data[0] >> 2) & 3];
	int64_t now = T0 - 60 * 1000 + (int64_t)(data[0] >> 4) * 40 * 1000;
	struct err err;
	cJSON *body = json_parse((const char *)data + 1, size - 1, BODY_MAX, &err);
	if (!body)
		return 0;
	/* The registration body's member, or the body itself as the proof. */
	const cJSON *proof = cJSON_GetObjectItemCaseSensitive(body, "aws_identity");
	if (!proof)
		proof = body;

	memset(&out, 0xA5, sizeof out);
	memset(err.msg, 'x', sizeof err.msg);
	int rc = sts_proof_check(proof, endpoints[e], server, now, &out, &err);
	if (rc != 0 && rc != -1)
		abort();
	if (rc < 0) {
		if (!TERMINATED(err.msg) || !err.msg[0])
			abort();
	} else {
		check_accepted(&out, e, server, now);
		struct sts_replay *r = sts_replay_new(4);
		if (!r || sts_replay_use(r, out.signature, out.expires_ms, now) != 0 ||
		    sts_replay_use(r, out.signature, out.expires_ms, now) != -1 ||
		    sts_replay_count(r) != 1)
			abort();
		sts_replay_free(r);
	}
	/* The same input, the same answer. */
	struct err err2;
	memset(&again, 0x5A, sizeof again);
	int rc2 = sts_proof_check(proof, endpoints[e], server, now, &again, &err2);
	if (rc2 != rc || (rc == 0 && (strcmp(out.url, again.url) != 0 ||
				      strcmp(out.signature, again.signature) != 0 ||
				      out.expires_ms != again.expires_ms)) ||
	    (rc < 0 && strcmp(err.msg, err2.msg) != 0))
		abort();
	cJSON_Delete(body);
	return 0;
}
