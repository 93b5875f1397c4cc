/*
 * ecr: repository names, ECR image references, the authorization token's
 * "AWS:password" (RFC 4648 base64) and the Docker documents made from it,
 * the refresh schedule; then every action against tests/fakes/ecr.py run as
 * a child process (it verifies each SigV4 signature itself): repositories
 * created once (RepositoryAlreadyExistsException is success), described,
 * not found; tokens fetched, cached, shared by concurrent callers, refreshed
 * at half their life, kept while a refresh fails and refused once expired;
 * throttling, 5xx, dropped connections, an expired session token.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <ev.h>

#include "aws_credentials.h"
#include "clock.h"
#include "ecr.h"
#include "fakeproc.h"
#include "http_client.h"
#include "json.h"
#include "log.h"

#define AKID "AKIDUNITECR"
#define SECRET "unit-secret-for-the-ecr-fake"
#define TOKEN1 "ecr-session-token-one"
#define PROXY "http://127.0.0.1:5999"

/* ---- the fake, a child process ---- */

static void fake_start(struct fakeproc *f, const char *ttl_s)
{
	const char *args[] = {"--access-key", AKID, "--secret-key", SECRET, "--token", TOKEN1,
			      "--proxy-endpoint", PROXY, "--token-ttl-s", ttl_s, NULL};
	assert_int_equal(fakeproc_start(f, "ecr.py", args), 0);
}

static void fault(struct fakeproc *f, const char *json)
{
	cJSON_Delete(fakeproc_json(f, "POST", "/_fake/fault", json));
}

/* 1 when the fake issued this password and it has not expired. */
static int live_password(struct fakeproc *f, const char *pw)
{
	char *esc = curl_easy_escape(NULL, pw, 0);
	char path[512];
	snprintf(path, sizeof path, "/_fake/check?password=%s", esc);
	curl_free(esc);
	cJSON *doc = fakeproc_json(f, "GET", path, NULL);
	int ok = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(doc, "valid"));
	cJSON_Delete(doc);
	return ok;
}

/* ---- fixture ---- */

struct got {
	int done;
	enum ecr_status status;
	char code[128];
	int attempts;
	int existed;
	char uri[256];
	size_t nrepos;
	char names[8][64];
	/* auth */
	int have_auth;
	char error[512];
	char user[16];
	char password[256];
	char proxy[128];
	char host[128];
	char auth_json[1024];
	char config_json[1024];
	int64_t expires_ms, refresh_ms;
	int stale;
};

struct fix {
	struct ev_loop *loop;
	struct http_client *http;
	struct aws_credentials_provider *creds;
	struct ecr *e;
	struct fakeproc fake;
	char endpoint[64];
	struct got g[4];
};

static void on_done(const struct ecr_result *r, void *arg)
{
	struct got *g = arg;
	g->done++;
	g->status = r->status;
	snprintf(g->code, sizeof g->code, "%s", r->error_code ? r->error_code : "");
	g->attempts = r->attempts;
	g->existed = r->existed;
	snprintf(g->uri, sizeof g->uri, "%s", r->repository ? r->repository->uri : "");
	g->nrepos = r->repository_count;
	for (size_t i = 0; i < r->repository_count && i < 8; i++)
		snprintf(g->names[i], sizeof g->names[i], "%s", r->repositories[i].name);
}

static void on_auth(const struct ecr_auth *a, const char *error, void *arg)
{
	struct got *g = arg;
	g->done++;
	g->have_auth = a != NULL;
	snprintf(g->error, sizeof g->error, "%s", error ? error : "");
	if (!a)
		return;
	snprintf(g->user, sizeof g->user, "%s", a->username);
	snprintf(g->password, sizeof g->password, "%s", a->password);
	snprintf(g->proxy, sizeof g->proxy, "%s", a->proxy_endpoint);
	snprintf(g->host, sizeof g->host, "%s", a->registry_host);
	snprintf(g->auth_json, sizeof g->auth_json, "%s", a->auth_json);
	snprintf(g->config_json, sizeof g->config_json, "%s", a->config_json);
	g->expires_ms = a->expires_ms;
	g->refresh_ms = a->refresh_ms;
	g->stale = a->stale;
}

static struct got *slot(struct fix *f, int i)
{
	memset(&f->g[i], 0, sizeof f->g[i]);
	return &f->g[i];
}

static void wait_done(struct fix *f, struct got *g)
{
	int64_t deadline = clock_mono_ms() + 30000;
	while (!g->done && clock_mono_ms() < deadline)
		ev_run(f->loop, EVRUN_ONCE);
	assert_int_equal(g->done, 1);
}

static int setup_ttl(void **state, const char *ttl_s)
{
	struct fix *f = calloc(1, sizeof *f);
	log_init("test", LOG_LEVEL_ERROR, 0);
	setenv("AWS_ACCESS_KEY_ID", AKID, 1);
	setenv("AWS_SECRET_ACCESS_KEY", SECRET, 1);
	setenv("AWS_SESSION_TOKEN", TOKEN1, 1);
	fake_start(&f->fake, ttl_s);
	snprintf(f->endpoint, sizeof f->endpoint, "http://127.0.0.1:%d", f->fake.port);
	f->loop = ev_loop_new(EVFLAG_AUTO);
	f->http = http_client_new(f->loop);
	struct err err;
	struct aws_credentials_opts co = {.no_file = 1, .no_imds = 1};
	f->creds = aws_credentials_new(f->loop, f->http, &co, &err);
	assert_non_null(f->creds);
	struct ecr_opts o = {.region = "us-east-1", .endpoint = f->endpoint, .retry_base_ms = 5,
			     .retry_cap_ms = 50, .timeout_ms = 5000};
	f->e = ecr_new(f->loop, f->http, f->creds, &o, &err);
	if (!f->e)
		fail_msg("ecr_new: %s", err.msg);
	*state = f;
	return 0;
}

static int setup(void **state)
{
	return setup_ttl(state, "43200");
}

static int teardown(void **state)
{
	struct fix *f = *state;
	ecr_free(f->e);
	aws_credentials_free(f->creds);
	http_client_free(f->http);
	ev_loop_destroy(f->loop);
	fakeproc_stop(&f->fake);
	clock_fake_off();
	unsetenv("AWS_SESSION_TOKEN");
	free(f);
	return 0;
}

/* ---- pure parts ---- */

static void test_names_and_references(void **state)
{
	(void)state;
	assert_true(ecr_repository_name_valid("web"));
	assert_true(ecr_repository_name_valid("slipway/web-app_1.x"));
	assert_false(ecr_repository_name_valid("w"));
	assert_false(ecr_repository_name_valid("Web"));
	assert_false(ecr_repository_name_valid("web/"));
	assert_false(ecr_repository_name_valid("/web"));
	assert_false(ecr_repository_name_valid("we__b"));
	assert_false(ecr_repository_name_valid("web:tag"));

	char rid[13], region[32];
	assert_int_equal(ecr_image_registry("123456789012.dkr.ecr.eu-west-1.amazonaws.com/web@sha256:"
					    "ab", rid, region), 1);
	assert_string_equal(rid, "123456789012");
	assert_string_equal(region, "eu-west-1");
	assert_int_equal(ecr_image_registry("210987654321.dkr.ecr-fips.us-gov-west-1.amazonaws.com/"
					    "a/b:1", rid, region), 1);
	assert_string_equal(region, "us-gov-west-1");
	assert_int_equal(ecr_image_registry("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn/x",
					    rid, region), 1);
	assert_int_equal(ecr_image_registry("127.0.0.1:5000/web:1", rid, region), 0);
	assert_int_equal(ecr_image_registry("12345678901.dkr.ecr.eu-west-1.amazonaws.com/web", rid,
					    region), 0);
	assert_int_equal(ecr_image_registry("123456789012.dkr.ecr.eu-west-1.amazonaws.com.evil.io/w",
					    rid, region), 0);
	assert_int_equal(ecr_image_registry("docker.io/library/busybox", rid, region), 0);
}

static void test_token_and_docker_documents(void **state)
{
	(void)state;
	char *user, *pw;
	struct err err;
	/* RFC 4648 base64 of "AWS:s3cr3t+/=" */
	assert_int_equal(ecr_decode_token("QVdTOnMzY3IzdCsvPQ==", &user, &pw, &err), 0);
	assert_string_equal(user, "AWS");
	assert_string_equal(pw, "s3cr3t+/=");
	free(user);
	free(pw);
	assert_int_equal(ecr_decode_token("not base64!", &user, &pw, &err), -1);
	assert_null(user);
	assert_int_equal(ecr_decode_token("QVdTcGFzcw==", &user, &pw, &err), -1); /* "AWSpass" */
	assert_non_null(strstr(err.msg, "user:password"));
	assert_int_equal(ecr_decode_token("QVdTOg==", &user, &pw, &err), -1);    /* "AWS:" */
	assert_int_equal(ecr_decode_token("", &user, &pw, &err), -1);

	char *a, *c;
	assert_int_equal(ecr_docker_auth("AWS", "p\"w", "https://1.dkr.ecr.x.amazonaws.com", &a, &c),
			 0);
	cJSON *doc = json_parse(a, strlen(a), 4096, NULL);
	assert_string_equal(cJSON_GetObjectItem(doc, "username")->valuestring, "AWS");
	assert_string_equal(cJSON_GetObjectItem(doc, "password")->valuestring, "p\"w");
	assert_string_equal(cJSON_GetObjectItem(doc, "serveraddress")->valuestring,
			    "https://1.dkr.ecr.x.amazonaws.com");
	cJSON_Delete(doc);
	doc = json_parse(c, strlen(c), 4096, NULL);
	const cJSON *e = cJSON_GetObjectItem(doc, "1.dkr.ecr.x.amazonaws.com");
	assert_non_null(e);
	assert_string_equal(cJSON_GetObjectItem(e, "password")->valuestring, "p\"w");
	cJSON_Delete(doc);
	free(a);
	free(c);

	int64_t h = 3600 * 1000LL;
	assert_int_equal(ecr_refresh_at(0, 12 * h), 6 * h);              /* half its life */
	assert_int_equal(ecr_refresh_at(0, 40 * 60000LL), 10 * 60000LL);  /* 30 min before */
	assert_int_equal(ecr_refresh_at(1000, 1000 + 10 * 60000LL), 1000); /* at once */
}

/* ---- against the fake ---- */

static void test_repositories(void **state)
{
	struct fix *f = *state;
	struct ecr_tag tags[] = {{"slipway:app", "web"}};
	struct got *g = slot(f, 0);
	assert_true(ecr_create_repository(f->e, "web", tags, 1, true, on_done, g) > 0);
	assert_int_equal(g->done, 0);
	wait_done(f, g);
	assert_int_equal(g->status, ECR_OK);
	assert_false(g->existed);
	assert_string_equal(g->uri, "127.0.0.1:5999/web");
	g = slot(f, 0);
	ecr_create_repository(f->e, "web", NULL, 0, false, on_done, g);
	wait_done(f, g);
	assert_int_equal(g->status, ECR_OK);
	assert_true(g->existed);
	assert_string_equal(g->code, "");
	cJSON *repos = fakeproc_json(&f->fake, "GET", "/_fake/repositories", NULL);
	const cJSON *r0 = cJSON_GetArrayItem(cJSON_GetObjectItem(repos, "repositories"), 0);
	assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(r0, "tags"), "slipway:app")
				    ->valuestring, "web");
	cJSON_Delete(repos);

	g = slot(f, 0);
	ecr_create_repository(f->e, "api", NULL, 0, false, on_done, g);
	wait_done(f, g);
	const char *names[] = {"web"};
	g = slot(f, 0);
	ecr_describe_repositories(f->e, names, 1, NULL, on_done, g);
	wait_done(f, g);
	assert_int_equal(g->status, ECR_OK);
	assert_int_equal(g->nrepos, 1);
	assert_string_equal(g->names[0], "web");
	g = slot(f, 0);
	ecr_describe_repositories(f->e, NULL, 0, NULL, on_done, g);
	wait_done(f, g);
	assert_int_equal(g->nrepos, 2);
	const char *missing[] = {"nope"};
	g = slot(f, 0);
	ecr_describe_repositories(f->e, missing, 1, NULL, on_done, g);
	wait_done(f, g);
	assert_int_equal(g->status, ECR_NOT_FOUND);
	assert_string_equal(g->code, "RepositoryNotFoundException");
	assert_int_equal(ecr_create_repository(f->e, "Not/Valid", NULL, 0, false, on_done, g), 0);
}

static char logged[8192];

static void sink(enum log_level level, const char *line, void *arg)
{
	(void)level;
	(void)arg;
	snprintf(logged, sizeof logged, "%s", line);
}

static void test_token_fetched_cached_shared(void **state)
{
	struct fix *f = *state;
	/* Two callers before any answer: one GetAuthorizationToken. */
	struct got *a = slot(f, 0), *b = slot(f, 1);
	assert_true(ecr_auth_get(f->e, NULL, on_auth, a) > 0);
	assert_true(ecr_auth_get(f->e, "", on_auth, b) > 0);
	wait_done(f, a);
	wait_done(f, b);
	assert_true(a->have_auth && b->have_auth);
	assert_int_equal(ecr_auth_fetches(f->e), 1);
	assert_string_equal(a->password, b->password);
	assert_string_equal(a->user, "AWS");
	assert_string_equal(a->proxy, PROXY);
	assert_string_equal(a->host, "127.0.0.1:5999");
	assert_true(live_password(&f->fake, a->password));
	int64_t now = clock_wall_ms(), h = 3600 * 1000LL;
	assert_true(a->expires_ms > now + 12 * h - 60000 && a->expires_ms <= now + 12 * h + 1000);
	assert_true(a->refresh_ms > now + 6 * h - 60000 && a->refresh_ms <= now + 6 * h + 1000);
	cJSON *doc = json_parse(a->auth_json, strlen(a->auth_json), 4096, NULL);
	assert_string_equal(cJSON_GetObjectItem(doc, "password")->valuestring, a->password);
	assert_string_equal(cJSON_GetObjectItem(doc, "serveraddress")->valuestring, PROXY);
	cJSON_Delete(doc);
	doc = json_parse(a->config_json, strlen(a->config_json), 4096, NULL);
	assert_non_null(cJSON_GetObjectItem(doc, "127.0.0.1:5999"));
	cJSON_Delete(doc);

	/* Cached: no request, and still never answered from inside the call. */
	struct got *c = slot(f, 2);
	assert_true(ecr_auth_get(f->e, NULL, on_auth, c) > 0);
	assert_int_equal(c->done, 0);
	wait_done(f, c);
	assert_string_equal(c->password, a->password);
	assert_int_equal(ecr_auth_fetches(f->e), 1);

	/* The password never reaches a log line. */
	log_set_sink(sink, NULL);
	log_error("test.line", "auth=%s", a->password);
	log_set_sink(NULL, NULL);
	assert_null(strstr(logged, a->password));
	assert_non_null(strstr(logged, "[redacted]"));

	/* Docker refused it: the next get fetches a new one. */
	char old[256];
	snprintf(old, sizeof old, "%s", a->password);
	ecr_auth_invalidate(f->e, NULL);
	c = slot(f, 2);
	ecr_auth_get(f->e, NULL, on_auth, c);
	wait_done(f, c);
	assert_int_equal(ecr_auth_fetches(f->e), 2);
	assert_string_not_equal(c->password, old);

	/* Cancelled waiters hear nothing. */
	struct got *d = slot(f, 3);
	ecr_auth_invalidate(f->e, NULL);
	uint64_t id = ecr_auth_get(f->e, NULL, on_auth, d);
	ecr_auth_cancel(f->e, id);
	c = slot(f, 2);
	ecr_auth_get(f->e, NULL, on_auth, c);
	wait_done(f, c);
	assert_int_equal(d->done, 0);
	/* Another registry: its own token; a malformed id is refused. */
	assert_int_equal(ecr_auth_get(f->e, "12345", on_auth, d), 0);
}

/* Moves our clock and the fake's together (signatures stay in its window). */
static void travel(struct fix *f, int64_t *moved, int64_t ms)
{
	clock_fake_advance(ms);
	*moved += ms;
	char body[96];
	snprintf(body, sizeof body, "{\"kind\":\"skew\",\"offset_s\":%lld}",
		 (long long)(*moved / 1000));
	fault(&f->fake, body);
}

static void test_token_refreshed_before_expiry(void **state)
{
	struct fix *f = *state;
	int64_t h = 3600 * 1000LL, moved = 0;
	clock_fake_set(clock_wall_ms(), clock_mono_ms());
	struct got *a = slot(f, 0);
	ecr_auth_get(f->e, NULL, on_auth, a);
	wait_done(f, a);
	assert_int_equal(ecr_auth_fetches(f->e), 1);
	char first[256];
	snprintf(first, sizeof first, "%s", a->password);

	travel(f, &moved, 6 * h - 60000); /* just before half its life: cached */
	a = slot(f, 0);
	ecr_auth_get(f->e, NULL, on_auth, a);
	wait_done(f, a);
	assert_int_equal(ecr_auth_fetches(f->e), 1);

	travel(f, &moved, 2 * 60000);     /* past it: a new token, well before expiry */
	a = slot(f, 0);
	ecr_auth_get(f->e, NULL, on_auth, a);
	wait_done(f, a);
	assert_int_equal(ecr_auth_fetches(f->e), 2);
	assert_false(a->stale);
	assert_string_not_equal(a->password, first);
	char second[256];
	snprintf(second, sizeof second, "%s", a->password);

	/* The refresh fails while the token still has hours: it is kept, marked stale. */
	travel(f, &moved, 6 * h + 60000);
	fault(&f->fake, "{\"kind\":\"error500\",\"count\":20}");
	a = slot(f, 0);
	ecr_auth_get(f->e, NULL, on_auth, a);
	wait_done(f, a);
	assert_true(a->have_auth);
	assert_true(a->stale);
	assert_string_equal(a->password, second);

	/* Past its expiry a failed refresh is an error. */
	travel(f, &moved, 6 * h);
	fault(&f->fake, "{\"kind\":\"error500\",\"count\":20}");
	a = slot(f, 0);
	ecr_auth_get(f->e, NULL, on_auth, a);
	wait_done(f, a);
	assert_false(a->have_auth);
	assert_non_null(strstr(a->error, "ServerException"));
	cJSON_Delete(fakeproc_json(&f->fake, "POST", "/_fake/clear", NULL));
	clock_fake_off();
}

/* A short-lived token (40 minutes) is replaced 30 minutes before it expires. */
static int setup_short(void **state)
{
	return setup_ttl(state, "2400");
}

static void test_short_token_refreshed_30_min_early(void **state)
{
	struct fix *f = *state;
	struct got *a = slot(f, 0);
	ecr_auth_get(f->e, NULL, on_auth, a);
	wait_done(f, a);
	int64_t left = a->expires_ms - a->refresh_ms;
	assert_true(left >= 30 * 60000LL - 1000 && left <= 30 * 60000LL + 1000);
}

static void test_faults(void **state)
{
	struct fix *f = *state;
	fault(&f->fake, "{\"kind\":\"throttle\",\"count\":2,\"target\":\"GetAuthorizationToken\"}");
	struct got *a = slot(f, 0);
	ecr_auth_get(f->e, NULL, on_auth, a);
	wait_done(f, a);
	assert_true(a->have_auth);

	fault(&f->fake, "{\"kind\":\"error500\",\"count\":1}");
	struct got *g = slot(f, 1);
	ecr_create_repository(f->e, "faulty", NULL, 0, false, on_done, g);
	wait_done(f, g);
	assert_int_equal(g->status, ECR_OK);
	assert_int_equal(g->attempts, 2);

	fault(&f->fake, "{\"kind\":\"drop\",\"count\":1}");
	g = slot(f, 1);
	ecr_create_repository(f->e, "faulty", NULL, 0, false, on_done, g);
	wait_done(f, g);
	assert_int_equal(g->status, ECR_OK);
	assert_true(g->existed);

	cJSON *r = fakeproc_json(&f->fake, "POST", "/_fake/fault", "{\"kind\":\"expired_token\"}");
	setenv("AWS_SESSION_TOKEN", cJSON_GetObjectItem(r, "new_token")->valuestring, 1);
	cJSON_Delete(r);
	ecr_auth_invalidate(f->e, NULL);
	a = slot(f, 0);
	ecr_auth_get(f->e, NULL, on_auth, a);
	wait_done(f, a);
	assert_true(a->have_auth);
	assert_true(live_password(&f->fake, a->password));

	fault(&f->fake, "{\"kind\":\"skew\",\"offset_s\":-1200}");
	g = slot(f, 1);
	ecr_describe_repositories(f->e, NULL, 0, NULL, on_done, g);
	wait_done(f, g);
	assert_int_equal(g->status, ECR_OK);
	assert_int_equal(g->attempts, 2);

	fault(&f->fake, "{\"kind\":\"error500\",\"count\":10}");
	g = slot(f, 1);
	ecr_describe_repositories(f->e, NULL, 0, NULL, on_done, g);
	wait_done(f, g);
	assert_int_equal(g->status, ECR_UNREACHABLE);
	assert_string_equal(g->code, "ServerException");
	cJSON_Delete(fakeproc_json(&f->fake, "POST", "/_fake/clear", NULL));
}

int main(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_names_and_references),
		cmocka_unit_test(test_token_and_docker_documents),
		cmocka_unit_test_setup_teardown(test_repositories, setup, teardown),
		cmocka_unit_test_setup_teardown(test_token_fetched_cached_shared, setup, teardown),
		cmocka_unit_test_setup_teardown(test_token_refreshed_before_expiry, setup, teardown),
		cmocka_unit_test_setup_teardown(test_short_token_refreshed_30_min_early, setup_short,
						teardown),
		cmocka_unit_test_setup_teardown(test_faults, setup, teardown),
	};
	int rc = cmocka_run_group_tests_name("ecr", tests, NULL, NULL);
	curl_global_cleanup();
	return rc;
}
