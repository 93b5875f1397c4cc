/*
 * aws_credentials tests: the environment first, the shared credentials file
 * (profiles, malformed lines with their numbers, the size cap), then IMDSv2
 * against tests/fakes/imds.py started as a subprocess: happy path, the token
 * being required, refresh before expiry with a frozen clock, forced refresh,
 * 500s and dropped connections absorbed by retries, and expired credentials
 * with IMDS down.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ev.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "aws_credentials.h"
#include "clock.h"
#include "err.h"
#include "fakeproc.h"
#include "http_client.h"
#include "json.h"
#include "log.h"

#define T0 1893456000000LL          /* 2030-01-01T00:00:00Z */
#define HOUR (3600 * 1000LL)
#define MIN (60 * 1000LL)

/* ---- fixture: a loop, an HTTP client, the fake IMDS, a scratch directory ---- */

struct fx {
	struct ev_loop *loop;
	struct http_client *http;
	struct fakeproc fake; /* the IMDS fake */
	char dir[64];     /* scratch directory */
	struct backoff_policy fast; /* quick retries so tests stay short */
};

static struct fx F;

static const char *const aws_env[] = {
	"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
	"AWS_SHARED_CREDENTIALS_FILE", "AWS_EC2_METADATA_SERVICE_ENDPOINT",
	"AWS_EC2_METADATA_DISABLED", NULL,
};

static void clear_env(void)
{
	for (const char *const *e = aws_env; *e; e++)
		unsetenv(*e);
	setenv("HOME", F.dir[0] ? F.dir : "/nonexistent", 1);
}

static void fake_start(void)
{
	assert_int_equal(fakeproc_start(&F.fake, "imds.py", NULL), 0);
}

static void fake_stop(void)
{
	fakeproc_stop(&F.fake); /* it exits on EOF; SIGTERM makes sure */
}

static int setup(void **state)
{
	(void)state;
	memset(&F, 0, sizeof F);
	snprintf(F.dir, sizeof F.dir, "/tmp/slipway-creds-XXXXXX");
	if (!mkdtemp(F.dir))
		return -1;
	clear_env();
	F.loop = ev_loop_new(EVFLAG_AUTO);
	F.http = http_client_new(F.loop);
	if (!F.loop || !F.http)
		return -1;
	F.fast = (struct backoff_policy){10, 50, 3};
	fake_start();
	return 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static int teardown(void **state)
{
	(void)state;
	fake_stop();
	http_client_free(F.http);
	ev_loop_destroy(F.loop);
	nftw(F.dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
	clock_fake_off();
	log_set_sink(NULL, NULL);
	clear_env();
	return 0;
}

/* Runs the loop until *flag is set; fails after 20 s of real time. */
static void on_watchdog(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	*(int *)w->data = 1;
}

static void run_until(const int *flag)
{
	int expired = 0;
	ev_timer dog;
	ev_timer_init(&dog, on_watchdog, 20.0, 0.0);
	dog.data = &expired;
	ev_timer_start(F.loop, &dog);
	while (!*flag && !expired)
		ev_run(F.loop, EVRUN_ONCE);
	ev_timer_stop(F.loop, &dog);
	if (!*flag)
		fail_msg("timed out waiting");
}

/* ---- talking to the fake's control endpoint ---- */

struct sync_resp {
	int done;
	long status;
	enum http_error error;
	char body[4096];
};

static void on_sync(const struct http_response *r, void *arg)
{
	struct sync_resp *s = arg;
	s->status = r->status;
	s->error = r->error;
	snprintf(s->body, sizeof s->body, "%s", r->body ? r->body : "");
	s->done = 1;
}

static void http_sync(const char *method, const char *path, const char *const *headers,
		      const char *body, struct sync_resp *out)
{
	char url[256];
	snprintf(url, sizeof url, "%s%s", F.fake.base, path);
	memset(out, 0, sizeof *out);
	struct http_request req = {
		.method = method,
		.url = url,
		.headers = headers,
		.body = body,
		.body_len = body ? strlen(body) : 0,
		.timeout_ms = 10000,
		.on_done = on_sync,
		.arg = out,
	};
	assert_true(http_client_start(F.http, &req) > 0);
	run_until(&out->done);
}

static void control(const char *json)
{
	static const char *const h[] = {"Content-Type: application/json", NULL};
	struct sync_resp r;
	http_sync("POST", "/_control", h, json, &r);
	if (r.status != 200)
		fail_msg("control %s: HTTP %ld %s", json, r.status, r.body);
}

/* A counter from GET /_control ("token", "role", "creds", "failed", ...). */
static int64_t count(const char *name)
{
	struct sync_resp r;
	http_sync("GET", "/_control", NULL, NULL, &r);
	assert_int_equal(r.status, 200);
	cJSON *doc = json_parse(r.body, strlen(r.body), sizeof r.body, NULL);
	assert_non_null(doc);
	const cJSON *counts = NULL;
	int64_t v = -1;
	assert_int_equal(json_get_object(doc, NULL, "counts", &counts, NULL), 0);
	assert_int_equal(json_get_int(counts, "counts", name, 0, 1000000, &v, NULL), 0);
	cJSON_Delete(doc);
	return v;
}

static void set_keys(int n, const char *expiration)
{
	char json[512];
	snprintf(json, sizeof json,
		 "{\"access_key_id\":\"ASIAKEY%04d\",\"secret_access_key\":\"secret/key+%04d\","
		 "\"token\":\"session-token-%04d\",\"expiration\":\"%s\"}",
		 n, n, n, expiration);
	control(json);
}

/* ---- getting credentials ---- */

struct got {
	int done;
	const struct aws_credentials *c; /* a reference of ours */
	char error[1024];
};

static void on_creds(const struct aws_credentials *c, const char *error, void *arg)
{
	struct got *g = arg;
	g->done++;
	if (c)
		g->c = aws_credentials_ref(c);
	else
		snprintf(g->error, sizeof g->error, "%s", error ? error : "(no message)");
}

static void got_clear(struct got *g)
{
	aws_credentials_unref(g->c);
	memset(g, 0, sizeof *g);
}

/* Gets and waits; returns the answer in *g (cleared first). */
static void get_wait(struct aws_credentials_provider *p, struct got *g)
{
	got_clear(g);
	aws_credentials_get(p, on_creds, g);
	assert_int_equal(g->done, 0); /* never answered from inside aws_credentials_get */
	run_until(&g->done);
	assert_int_equal(g->done, 1);
}

static void expect_key(const struct got *g, int n)
{
	if (!g->c)
		fail_msg("expected credentials, got error: %s", g->error);
	char want[32];
	snprintf(want, sizeof want, "ASIAKEY%04d", n);
	assert_string_equal(g->c->access_key_id, want);
	snprintf(want, sizeof want, "secret/key+%04d", n);
	assert_string_equal(g->c->secret_access_key, want);
	snprintf(want, sizeof want, "session-token-%04d", n);
	assert_string_equal(g->c->session_token, want);
}

static struct aws_credentials_provider *imds_provider(void)
{
	struct aws_credentials_opts o = {
		.no_env = 1,
		.no_file = 1,
		.imds_endpoint = F.fake.base,
		.imds_timeout_ms = 5000,
		.imds_retry = &F.fast,
	};
	struct err err = {{0}};
	struct aws_credentials_provider *p = aws_credentials_new(F.loop, F.http, &o, &err);
	if (!p)
		fail_msg("aws_credentials_new: %s", err.msg);
	return p;
}

static void write_file(const char *path, const char *text, size_t len)
{
	FILE *f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(text, 1, len, f), len);
	fclose(f);
}

/* ---- freshness maths ---- */

static void freshness(void **state)
{
	(void)state;
	const struct aws_credentials *c = aws_credentials_make("AKID", "secret", NULL, T0, "test");
	assert_non_null(c);
	assert_int_equal(aws_credentials_freshness_at(c, T0 - HOUR), AWS_CREDENTIALS_FRESH);
	assert_int_equal(aws_credentials_freshness_at(c, T0 - 15 * MIN - 1), AWS_CREDENTIALS_FRESH);
	assert_int_equal(aws_credentials_freshness_at(c, T0 - 15 * MIN), AWS_CREDENTIALS_REFRESH_SOON);
	assert_int_equal(aws_credentials_freshness_at(c, T0 - 5 * MIN - 1), AWS_CREDENTIALS_REFRESH_SOON);
	assert_int_equal(aws_credentials_freshness_at(c, T0 - 5 * MIN), AWS_CREDENTIALS_REFRESH_NOW);
	assert_int_equal(aws_credentials_freshness_at(c, T0 - 1), AWS_CREDENTIALS_REFRESH_NOW);
	assert_int_equal(aws_credentials_freshness_at(c, T0), AWS_CREDENTIALS_EXPIRED);
	aws_credentials_unref(c);
	c = aws_credentials_make("AKID", "secret", "", 0, "test");
	assert_null(c->session_token); /* empty token = none */
	assert_int_equal(aws_credentials_freshness_at(c, T0 * 2), AWS_CREDENTIALS_FRESH);
	aws_credentials_unref(c);
	assert_null(aws_credentials_make("AK ID", "secret", NULL, 0, "test"));
	assert_null(aws_credentials_make("AKID", "", NULL, 0, "test"));
	assert_null(aws_credentials_make("AKID", "sec\nret", NULL, 0, "test"));
}

/* ---- secrets never reach the log ---- */

struct sink {
	char lines[64][512];
	int n;
};

static void on_line(enum log_level level, const char *line, void *arg)
{
	(void)level;
	struct sink *s = arg;
	if (s->n < 64)
		snprintf(s->lines[s->n++], sizeof s->lines[0], "%s", line);
}

static void redaction(void **state)
{
	(void)state;
	struct sink s = {0};
	log_set_sink(on_line, &s);
	const struct aws_credentials *a =
		aws_credentials_make("AKIDREDACT1", "very-secret-1", "tok-1234", 0, "test");
	const struct aws_credentials *b =
		aws_credentials_make("AKIDREDACT2", "very-secret-1", NULL, 0, "test");
	log_info("t.one", "id=%s secret=%s token=%s", "AKIDREDACT1", "very-secret-1", "tok-1234");
	assert_string_equal(strstr(s.lines[0], "id="),
			    "id=[redacted] secret=[redacted] token=[redacted]");
	/* b shares the secret: it stays redacted until b goes too. */
	aws_credentials_unref(a);
	log_info("t.two", "secret=%s id=%s", "very-secret-1", "AKIDREDACT1");
	assert_string_equal(strstr(s.lines[1], "secret="), "secret=[redacted] id=AKIDREDACT1");
	aws_credentials_unref(b);
	log_info("t.three", "secret=%s", "very-secret-1");
	assert_string_equal(strstr(s.lines[2], "secret="), "secret=very-secret-1");
	log_set_sink(NULL, NULL);
}

/* ---- environment ---- */

static void env_first(void **state)
{
	(void)state;
	char path[128];
	snprintf(path, sizeof path, "%s/credentials", F.dir);
	const char *file = "[default]\naws_access_key_id = AKIDFILE\n"
			   "aws_secret_access_key = filesecret\n";
	write_file(path, file, strlen(file));
	setenv("AWS_SHARED_CREDENTIALS_FILE", path, 1);
	setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", F.fake.base, 1);
	setenv("AWS_ACCESS_KEY_ID", "AKIDENV", 1);
	setenv("AWS_SECRET_ACCESS_KEY", "envsecret", 1);
	setenv("AWS_SESSION_TOKEN", "envtoken", 1);

	struct aws_credentials_provider *p = aws_credentials_new(F.loop, F.http, NULL, NULL);
	assert_non_null(p);
	struct got g = {0};
	get_wait(p, &g);
	assert_non_null(g.c);
	assert_string_equal(g.c->access_key_id, "AKIDENV");
	assert_string_equal(g.c->secret_access_key, "envsecret");
	assert_string_equal(g.c->session_token, "envtoken");
	assert_string_equal(g.c->source, "environment");
	assert_int_equal(g.c->expiration_ms, 0);
	aws_credentials_free(p);

	/* Without the environment, the file. */
	unsetenv("AWS_ACCESS_KEY_ID");
	unsetenv("AWS_SECRET_ACCESS_KEY");
	unsetenv("AWS_SESSION_TOKEN");
	p = aws_credentials_new(F.loop, F.http, NULL, NULL);
	get_wait(p, &g);
	assert_non_null(g.c);
	assert_string_equal(g.c->access_key_id, "AKIDFILE");
	assert_null(g.c->session_token);
	assert_string_equal(g.c->source, "shared-file");
	aws_credentials_free(p);

	/* Half a set in the environment is an error, not a reason to go on. */
	setenv("AWS_ACCESS_KEY_ID", "AKIDENV", 1);
	p = aws_credentials_new(F.loop, F.http, NULL, NULL);
	get_wait(p, &g);
	assert_null(g.c);
	assert_non_null(strstr(g.error, "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not"));
	aws_credentials_free(p);
	got_clear(&g);
	assert_int_equal(count("total"), 0); /* IMDS never asked */

	const struct aws_credentials *c = NULL;
	struct err err = {{0}};
	unsetenv("AWS_ACCESS_KEY_ID");
	assert_int_equal(aws_credentials_from_env(&c, &err), 0);
	setenv("AWS_SESSION_TOKEN", "lonely", 1);
	assert_int_equal(aws_credentials_from_env(&c, &err), -1);
	assert_non_null(strstr(err.msg, "AWS_SESSION_TOKEN"));
}

/* ---- the shared credentials file ---- */

static const char good_file[] =
	"# comment\r\n"
	"; another\n"
	"[default]\n"
	"aws_access_key_id=AKIDDEFAULT\n"
	"aws_secret_access_key = default/secret+1\n"
	"region = eu-west-1\n"
	"\n"
	"  [ prod ]  \r\n"
	"AWS_ACCESS_KEY_ID\t=\tAKIDPROD\n"
	"aws_secret_access_key = prod-secret\n"
	"aws_session_token = prod-token\n"
	"[config-only]\n"
	"role_arn = arn:aws:iam::123456789012:role/x\n"
	"[last]\n"
	"aws_access_key_id = AKIDLAST\n"
	"aws_secret_access_key = last-secret"; /* no final newline */

static void file_profiles(void **state)
{
	(void)state;
	const struct aws_credentials *c = NULL;
	struct err err = {{0}};
	size_t n = strlen(good_file);
	assert_int_equal(aws_credentials_parse_file(good_file, n, "default", 0, &c, &err), 1);
	assert_string_equal(c->access_key_id, "AKIDDEFAULT");
	assert_string_equal(c->secret_access_key, "default/secret+1");
	assert_null(c->session_token);
	aws_credentials_unref(c);
	assert_int_equal(aws_credentials_parse_file(good_file, n, "prod", 1, &c, &err), 1);
	assert_string_equal(c->access_key_id, "AKIDPROD");
	assert_string_equal(c->session_token, "prod-token");
	aws_credentials_unref(c);
	assert_int_equal(aws_credentials_parse_file(good_file, n, "last", 1, &c, &err), 1);
	assert_string_equal(c->secret_access_key, "last-secret");
	aws_credentials_unref(c);
	/* Absent or key-less profiles: nothing for the default, an error when named. */
	c = NULL;
	assert_int_equal(aws_credentials_parse_file("[other]\n", 8, "default", 0, &c, &err), 0);
	assert_null(c);
	assert_int_equal(aws_credentials_parse_file(good_file, n, "nope", 1, &c, &err), -1);
	assert_string_equal(err.msg, "profile 'nope' not found");
	assert_int_equal(aws_credentials_parse_file(good_file, n, "config-only", 1, &c, &err), -1);
	assert_non_null(strstr(err.msg, "line 12: profile 'config-only' has no aws_access_key_id"));

	/* Through the provider: AWS_SHARED_CREDENTIALS_FILE and AWS_PROFILE. */
	char path[128];
	snprintf(path, sizeof path, "%s/creds", F.dir);
	write_file(path, good_file, n);
	setenv("AWS_SHARED_CREDENTIALS_FILE", path, 1);
	setenv("AWS_PROFILE", "prod", 1);
	struct aws_credentials_opts o = {.no_imds = 1};
	struct aws_credentials_provider *p = aws_credentials_new(F.loop, F.http, &o, &err);
	struct got g = {0};
	get_wait(p, &g);
	assert_non_null(g.c);
	assert_string_equal(g.c->access_key_id, "AKIDPROD");
	aws_credentials_free(p);

	setenv("AWS_PROFILE", "missing", 1);
	p = aws_credentials_new(F.loop, F.http, &o, &err);
	get_wait(p, &g);
	assert_null(g.c);
	assert_non_null(strstr(g.error, path));
	assert_non_null(strstr(g.error, "profile 'missing' not found"));
	aws_credentials_free(p);

	/* The default location, ~/.aws/credentials. */
	unsetenv("AWS_PROFILE");
	unsetenv("AWS_SHARED_CREDENTIALS_FILE");
	char dir[128];
	snprintf(dir, sizeof dir, "%s/.aws", F.dir);
	assert_int_equal(mkdir(dir, 0700), 0);
	snprintf(path, sizeof path, "%s/.aws/credentials", F.dir);
	write_file(path, good_file, n);
	p = aws_credentials_new(F.loop, F.http, &o, &err);
	get_wait(p, &g);
	assert_non_null(g.c);
	assert_string_equal(g.c->access_key_id, "AKIDDEFAULT");
	aws_credentials_free(p);
	got_clear(&g);
}

static void expect_parse_error(const char *text, size_t len, const char *want)
{
	const struct aws_credentials *c = NULL;
	struct err err = {{0}};
	assert_int_equal(aws_credentials_parse_file(text, len, "default", 0, &c, &err), -1);
	assert_null(c);
	if (strcmp(err.msg, want) != 0)
		fail_msg("input %.40s...: got \"%s\", want \"%s\"", text, err.msg, want);
}

static void file_malformed(void **state)
{
	(void)state;
	const char *t;
	t = "[default]\naws_access_key_id = A\nnot a setting\n";
	expect_parse_error(t, strlen(t), "line 3: expected '[profile]' or 'key = value'");
	t = "region = x\n[default]\n";
	expect_parse_error(t, strlen(t), "line 1: key outside a [profile] section");
	t = "# c\n[default\n";
	expect_parse_error(t, strlen(t), "line 2: section header must end with ']'");
	t = "[ ]\n";
	expect_parse_error(t, strlen(t), "line 1: bad section name");
	t = "[a]\nx = 1\n\n[a]\n";
	expect_parse_error(t, strlen(t), "line 4: section [a] already started on line 1");
	t = "[default]\naws_access_key_id = A\naws_secret_access_key = B\nAWS_ACCESS_KEY_ID = C\n";
	expect_parse_error(t, strlen(t), "line 4: key 'aws_access_key_id' already set on line 2");
	t = "[default]\naws_access_key_id = A\n";
	expect_parse_error(t, strlen(t),
			   "line 2: profile 'default' has aws_access_key_id but no aws_secret_access_key");
	t = "[default]\nfoo bar = 1\n";
	expect_parse_error(t, strlen(t), "line 2: bad key 'foo bar'");
	t = "[default]\n = 1\n";
	expect_parse_error(t, strlen(t), "line 2: missing key before '='");
	expect_parse_error("[default]\na=\0b\n", 14, "line 2: NUL byte");
	t = "[default]\naws_access_key_id = A B\naws_secret_access_key = s\n";
	expect_parse_error(t, strlen(t),
			   "line 2: profile 'default': keys contain spaces or control characters");

	/* The 64 KiB cap, with the path in front of the message. */
	size_t big = AWS_CREDENTIALS_FILE_MAX + 1;
	char *text = malloc(big);
	memset(text, '#', big);
	char path[128];
	snprintf(path, sizeof path, "%s/big", F.dir);
	write_file(path, text, big);
	const struct aws_credentials *c = NULL;
	struct err err = {{0}};
	assert_int_equal(aws_credentials_from_file(path, "default", 0, &c, &err), -1);
	assert_non_null(strstr(err.msg, path));
	assert_non_null(strstr(err.msg, "larger than 65536 bytes"));
	/* Exactly at the cap is fine (all comment: no profile). */
	write_file(path, text, big - 1);
	assert_int_equal(aws_credentials_from_file(path, "default", 0, &c, &err), 0);
	free(text);
	snprintf(path, sizeof path, "%s/none", F.dir);
	assert_int_equal(aws_credentials_from_file(path, "default", 0, &c, &err), 0);

	/* A malformed file stops the chain: IMDS is not asked. */
	snprintf(path, sizeof path, "%s/bad", F.dir);
	t = "[default]\naws_access_key_id = A\naws_secret_access_key = B\ngarbage\n";
	write_file(path, t, strlen(t));
	struct aws_credentials_opts o = {.no_env = 1, .shared_file = path,
					  .imds_endpoint = F.fake.base};
	struct aws_credentials_provider *p = aws_credentials_new(F.loop, F.http, &o, &err);
	struct got g = {0};
	get_wait(p, &g);
	assert_null(g.c);
	char want[256];
	snprintf(want, sizeof want, "no AWS credentials: %s: line 4: expected", path);
	assert_non_null(strstr(g.error, want));
	aws_credentials_free(p);
	assert_int_equal(count("total"), 0);
}

/* ---- IMDS ---- */

static void imds_happy_path(void **state)
{
	(void)state;
	clock_fake_set(T0, 5000000);
	set_keys(1, "2030-01-01T06:00:00Z");
	/* The endpoint from the environment, with a trailing slash. */
	char ep[80];
	snprintf(ep, sizeof ep, "%s/", F.fake.base);
	setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", ep, 1);
	struct sink s = {0};
	log_set_sink(on_line, &s);
	struct aws_credentials_opts o = {.no_env = 1, .no_file = 1, .imds_retry = &F.fast};
	struct aws_credentials_provider *p = aws_credentials_new(F.loop, F.http, &o, NULL);
	assert_non_null(p);
	struct got g = {0};
	get_wait(p, &g);
	expect_key(&g, 1);
	assert_int_equal(g.c->expiration_ms, T0 + 6 * HOUR);
	assert_string_equal(g.c->source, "imds");
	assert_int_equal(count("token"), 1);
	assert_int_equal(count("role"), 1);
	assert_int_equal(count("creds"), 1);
	struct sync_resp r;
	http_sync("GET", "/_control", NULL, NULL, &r);
	assert_non_null(strstr(r.body, "\"last_ttl\": \"21600\""));

	/* Cached: no more requests. */
	const struct aws_credentials *first = g.c;
	aws_credentials_ref(first);
	get_wait(p, &g);
	assert_ptr_equal(g.c, first);
	assert_int_equal(count("total"), 3);
	aws_credentials_unref(first);

	/* What was logged names the source and expiry, and never needed redacting. */
	int loaded = 0;
	for (int i = 0; i < s.n; i++) {
		assert_null(strstr(s.lines[i], "[redacted]"));
		if (strstr(s.lines[i], "aws.credentials.loaded source=imds role=slipway-test-role "
					"expires=2030-01-01T06:00:00.000Z"))
			loaded++;
	}
	assert_int_equal(loaded, 1);
	log_set_sink(NULL, NULL);
	aws_credentials_free(p);
	got_clear(&g);
}

static void imds_token_required(void **state)
{
	(void)state;
	struct sync_resp r;
	http_sync("GET", "/latest/meta-data/iam/security-credentials/", NULL, NULL, &r);
	assert_int_equal(r.status, 401);
	static const char *const bogus[] = {"X-aws-ec2-metadata-token: made-up", NULL};
	http_sync("GET", "/latest/meta-data/iam/security-credentials/slipway-test-role", bogus,
		  NULL, &r);
	assert_int_equal(r.status, 401);
	http_sync("PUT", "/latest/api/token", NULL, NULL, &r);
	assert_int_equal(r.status, 400);
	static const char *const ttl0[] = {"X-aws-ec2-metadata-token-ttl-seconds: 0", NULL};
	http_sync("PUT", "/latest/api/token", ttl0, NULL, &r);
	assert_int_equal(r.status, 400);
	static const char *const ttl_big[] = {"X-aws-ec2-metadata-token-ttl-seconds: 21601", NULL};
	http_sync("PUT", "/latest/api/token", ttl_big, NULL, &r);
	assert_int_equal(r.status, 400);
	static const char *const ttl1[] = {"X-aws-ec2-metadata-token-ttl-seconds: 1", NULL};
	http_sync("PUT", "/latest/api/token", ttl1, NULL, &r);
	assert_int_equal(r.status, 200);
	assert_int_equal(count("unauthorized"), 2);

	/* The provider sends its token; when IMDS stops accepting it (tokens
	 * revoked), it fetches a new one once and carries on. */
	set_keys(1, "2030-01-01T06:00:00Z");
	clock_fake_set(T0, 5000000);
	struct aws_credentials_provider *p = imds_provider();
	struct got g = {0};
	get_wait(p, &g);
	expect_key(&g, 1);
	assert_int_equal(count("unauthorized"), 2);
	control("{\"revoke_tokens\":true}");
	set_keys(2, "2030-01-01T06:00:00Z");
	aws_credentials_invalidate(p, g.c);
	get_wait(p, &g);
	expect_key(&g, 2);
	assert_int_equal(count("unauthorized"), 3);
	assert_int_equal(count("token"), 3); /* ours twice, plus the ttl=1 one above */

	/* No role attached. */
	control("{\"role\":null}");
	aws_credentials_invalidate(p, NULL);
	get_wait(p, &g);
	assert_null(g.c);
	assert_non_null(strstr(g.error, "no IAM role is attached"));
	aws_credentials_free(p);
	got_clear(&g);
}

static void imds_refresh_before_expiry(void **state)
{
	(void)state;
	clock_fake_set(T0, 5000000);
	set_keys(1, "2030-01-01T06:00:00Z");
	struct aws_credentials_provider *p = imds_provider();
	struct got g = {0};
	get_wait(p, &g);
	expect_key(&g, 1);

	/* 16 minutes before expiry: still fresh, nothing fetched. */
	clock_fake_advance(6 * HOUR - 16 * MIN);
	set_keys(2, "2030-01-01T12:00:00Z");
	get_wait(p, &g);
	expect_key(&g, 1);
	assert_int_equal(aws_credentials_refreshing(p), 0);
	assert_int_equal(count("creds"), 1);

	/* 14 minutes before: the old set is answered at once while a refresh runs
	 * in the background. */
	clock_fake_advance(2 * MIN);
	got_clear(&g);
	aws_credentials_get(p, on_creds, &g);
	assert_int_equal(aws_credentials_refreshing(p), 1);
	run_until(&g.done);
	expect_key(&g, 1);
	while (aws_credentials_refreshing(p))
		ev_run(F.loop, EVRUN_ONCE);
	assert_int_equal(count("creds"), 2);
	get_wait(p, &g);
	expect_key(&g, 2);
	assert_int_equal(g.c->expiration_ms, T0 + 12 * HOUR);

	/* 4 minutes before the new expiry (background refresh never ran): callers
	 * wait for the refresh and get the newer set, not the old one. */
	set_keys(3, "2030-01-01T18:00:00Z");
	clock_fake_advance(12 * HOUR - 4 * MIN - (6 * HOUR - 14 * MIN));
	assert_int_equal(clock_wall_ms(), T0 + 12 * HOUR - 4 * MIN);
	get_wait(p, &g);
	expect_key(&g, 3);
	assert_int_equal(count("creds"), 3);
	aws_credentials_free(p);
	got_clear(&g);
}

static void imds_forced_refresh(void **state)
{
	(void)state;
	clock_fake_set(T0, 5000000);
	set_keys(1, "2030-01-01T06:00:00Z");
	struct aws_credentials_provider *p = imds_provider();
	struct got g = {0};
	get_wait(p, &g);
	expect_key(&g, 1);
	const struct aws_credentials *k1 = aws_credentials_ref(g.c);
	set_keys(2, "2030-01-01T06:00:00Z");

	/* A set that is not the current one: ignored. */
	const struct aws_credentials *other = aws_credentials_make("AKIDOTHER", "x-secret", NULL, 0,
								   "test");
	aws_credentials_invalidate(p, other);
	aws_credentials_unref(other);
	get_wait(p, &g);
	assert_ptr_equal(g.c, k1);

	/* The caller got ExpiredToken with k1: refresh once. */
	aws_credentials_invalidate(p, k1);
	get_wait(p, &g);
	expect_key(&g, 2);
	assert_int_equal(count("creds"), 2);
	/* A second caller failing with the same stale k1 does not refresh again. */
	aws_credentials_invalidate(p, k1);
	get_wait(p, &g);
	expect_key(&g, 2);
	assert_int_equal(count("creds"), 2);
	aws_credentials_unref(k1);
	aws_credentials_free(p);
	got_clear(&g);
}

static void imds_retries(void **state)
{
	(void)state;
	clock_fake_set(T0, 5000000);
	set_keys(1, "2030-01-01T06:00:00Z");
	control("{\"fail_next\":2}");
	struct aws_credentials_provider *p = imds_provider();
	struct got g = {0};
	get_wait(p, &g);
	expect_key(&g, 1);
	assert_int_equal(count("failed"), 2);
	assert_int_equal(count("token"), 1);

	/* A dropped connection is retried too. */
	control("{\"drop_next\":1}");
	set_keys(2, "2030-01-01T06:00:00Z");
	aws_credentials_invalidate(p, NULL);
	get_wait(p, &g);
	expect_key(&g, 2);
	assert_int_equal(count("dropped"), 1);

	/* Retries are bounded: three attempts, then a clear error. */
	control("{\"fail_next\":100,\"reset_counts\":true}");
	aws_credentials_invalidate(p, NULL);
	get_wait(p, &g);
	assert_null(g.c);
	assert_non_null(strstr(g.error, "HTTP 500"));
	assert_non_null(strstr(g.error, "rejected"));
	assert_int_equal(count("failed"), 3);
	aws_credentials_free(p);
	got_clear(&g);
}

static void imds_expired_and_down(void **state)
{
	(void)state;
	clock_fake_set(T0, 5000000);
	set_keys(1, "2030-01-01T06:00:00Z");
	struct aws_credentials_provider *p = imds_provider();
	struct got g = {0};
	get_wait(p, &g);
	expect_key(&g, 1);
	fake_stop(); /* IMDS is down: connection refused */

	/* 10 minutes left: the background refresh fails, the old set is served. */
	clock_fake_advance(6 * HOUR - 10 * MIN);
	get_wait(p, &g);
	expect_key(&g, 1);
	while (aws_credentials_refreshing(p))
		ev_run(F.loop, EVRUN_ONCE);
	/* Right after a failure, no new attempt: still the old set. */
	got_clear(&g);
	aws_credentials_get(p, on_creds, &g);
	assert_int_equal(aws_credentials_refreshing(p), 0);
	run_until(&g.done);
	expect_key(&g, 1);

	/* 4 minutes left: callers wait for a refresh; it fails; not expired yet,
	 * so they still get the old set. */
	clock_fake_advance(6 * MIN);
	get_wait(p, &g);
	expect_key(&g, 1);

	/* Expired and the refresh fails: the only hard failure. */
	clock_fake_advance(4 * MIN + 1000);
	get_wait(p, &g);
	assert_null(g.c);
	assert_non_null(strstr(g.error, "AWS credentials expired at 2030-01-01T06:00:00.000Z and "
					"the refresh failed: IMDS: "));
	aws_credentials_free(p);
	got_clear(&g);
}

/* IMDS hands out a set that has already expired by our clock: a clear error. */
static void imds_stale_answer(void **state)
{
	(void)state;
	clock_fake_set(T0, 5000000);
	set_keys(1, "2029-12-31T23:00:00Z");
	struct aws_credentials_provider *p = imds_provider();
	struct got g = {0};
	get_wait(p, &g);
	assert_null(g.c);
	assert_non_null(strstr(g.error, "AWS credentials from imds expired at "
					"2029-12-31T23:00:00.000Z and it has no newer ones"));
	/* Once IMDS has a valid set again, the next caller gets it. */
	set_keys(2, "2030-01-01T06:00:00Z");
	get_wait(p, &g);
	expect_key(&g, 2);
	aws_credentials_free(p);
	got_clear(&g);
}

static void imds_concurrent_callers(void **state)
{
	(void)state;
	clock_fake_set(T0, 5000000);
	set_keys(7, "2030-01-01T06:00:00Z");
	struct aws_credentials_provider *p = imds_provider();
	struct got g[5];
	memset(g, 0, sizeof g);
	for (int i = 0; i < 5; i++)
		aws_credentials_get(p, on_creds, &g[i]);
	for (int i = 0; i < 5; i++) {
		run_until(&g[i].done);
		expect_key(&g[i], 7);
		assert_ptr_equal(g[i].c, g[0].c);
	}
	assert_int_equal(count("token"), 1);
	assert_int_equal(count("role"), 1);
	assert_int_equal(count("creds"), 1);
	for (int i = 0; i < 5; i++)
		got_clear(&g[i]);
	aws_credentials_free(p);
}

/* Cancelled callers are not answered; freeing from inside a callback is safe. */
static struct aws_credentials_provider *to_free;
static int after_free_calls;

static void free_in_callback(const struct aws_credentials *c, const char *error, void *arg)
{
	(void)c;
	(void)error;
	*(int *)arg = 1;
	aws_credentials_free(to_free);
}

static void count_call(const struct aws_credentials *c, const char *error, void *arg)
{
	(void)c;
	(void)error;
	(void)arg;
	after_free_calls++;
}

static void cancel_and_free(void **state)
{
	(void)state;
	clock_fake_set(T0, 5000000);
	set_keys(1, "2030-01-01T06:00:00Z");
	struct aws_credentials_provider *p = imds_provider();
	struct got a = {0}, b = {0};
	aws_credentials_get(p, on_creds, &a);
	aws_credentials_get(p, on_creds, &b);
	assert_int_equal(aws_credentials_cancel(p, on_creds, &a), 1);
	run_until(&b.done);
	expect_key(&b, 1);
	assert_int_equal(a.done, 0);

	to_free = p;
	int freed = 0;
	after_free_calls = 0;
	aws_credentials_get(p, free_in_callback, &freed);
	aws_credentials_get(p, count_call, NULL);
	run_until(&freed);
	assert_int_equal(after_free_calls, 0);

	/* Freed while an IMDS request is in flight: it is cancelled. */
	p = imds_provider();
	aws_credentials_get(p, count_call, NULL);
	assert_int_equal(aws_credentials_refreshing(p), 1);
	aws_credentials_free(p);
	assert_int_equal(http_client_pending(F.http), 0);
	got_clear(&b);
}

static void nothing_anywhere(void **state)
{
	(void)state;
	struct aws_credentials_opts o = {.no_imds = 1};
	struct err err = {{0}};
	struct aws_credentials_provider *p = aws_credentials_new(F.loop, F.http, &o, &err);
	assert_non_null(p);
	struct got g = {0};
	get_wait(p, &g);
	assert_null(g.c);
	assert_non_null(strstr(g.error, "no AWS credentials: environment: not set; "));
	assert_non_null(strstr(g.error, "/.aws/credentials"));
	aws_credentials_free(p);

	setenv("AWS_EC2_METADATA_DISABLED", "true", 1);
	p = aws_credentials_new(F.loop, F.http, NULL, &err);
	get_wait(p, &g);
	assert_null(g.c);
	aws_credentials_free(p);
	assert_int_equal(count("total"), 0);

	struct aws_credentials_opts bad = {.imds_endpoint = "169.254.169.254"};
	assert_null(aws_credentials_new(F.loop, F.http, &bad, &err));
	assert_non_null(strstr(err.msg, "not an http(s) URL"));
	got_clear(&g);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
		T(freshness),
		T(redaction),
		T(env_first),
		T(file_profiles),
		T(file_malformed),
		T(imds_happy_path),
		T(imds_token_required),
		T(imds_refresh_before_expiry),
		T(imds_forced_refresh),
		T(imds_retries),
		T(imds_expired_and_down),
		T(imds_stale_answer),
		T(imds_concurrent_callers),
		T(cancel_and_free),
		T(nothing_anywhere),
	};
	return cmocka_run_group_tests_name("aws_credentials", tests, NULL, NULL);
}
