/*
 * ecrauth: the builder's ECR settings (registry.kind/region/account/host/
 * repository_prefix), then against tests/fakes/ecr.py run as a child process
 * (it checks every SigV4 signature itself): the app's repository created once
 * per process (scan on push; one that exists already is fine), the
 * login's Docker documents holding a password the fake issued and still
 * honours, the token cached across prepares, fetched anew after
 * ecrauth_invalidate and after half its life, refusals reported with the
 * action that failed, cancelled prepares never answered.
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

#include "clock.h"
#include "config.h"
#include "ecrauth.h"
#include "fakeproc.h"
#include "http_client.h"
#include "json.h"
#include "log.h"
#include "../../../coordinator/settings.h" /* agent/ has a settings.h too */

#define AKID "AKIDUNITECRAUTH"
#define SECRET "unit-secret-for-ecrauth"
#define PROXY "http://127.0.0.1:5998"
#define ACCOUNT "123456789012"

/* ---- the fake ---- */

static struct fakeproc fake;

static void fake_start(void)
{
	const char *args[] = {"--access-key", AKID, "--secret-key", SECRET, "--proxy-endpoint",
			      PROXY, "--account", ACCOUNT, NULL};
	assert_int_equal(fakeproc_start(&fake, "ecr.py", args), 0);
}

static cJSON *ctl(const char *method, const char *path, const char *body)
{
	return fakeproc_json(&fake, method, path, body);
}

static int live_password(const char *pw)
{
	char *esc = curl_easy_escape(NULL, pw, 0);
	char path[512];
	snprintf(path, sizeof path, "/_fake/check?password=%s", esc);
	curl_free(esc);
	cJSON *doc = ctl("GET", path, NULL);
	int ok = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(doc, "valid"));
	cJSON_Delete(doc);
	return ok;
}

/* The fake's requests for an action so far. */
static int requests(const char *action)
{
	cJSON *doc = ctl("GET", "/_fake/stats", NULL);
	const cJSON *n = cJSON_GetObjectItemCaseSensitive(
		cJSON_GetObjectItemCaseSensitive(doc, "requests"), action);
	int v = cJSON_IsNumber(n) ? n->valueint : 0;
	cJSON_Delete(doc);
	return v;
}

/* ---- configuration ---- */

static struct config *conf(const char *text, struct err *err)
{
	return config_load_buffer(coord_settings, coord_settings_count, text, strlen(text),
				  "test.conf", NULL, err);
}

static void test_settings(void **state)
{
	(void)state;
	struct err err = {{0}};
	char host[256];
	struct config *c = conf("registry.host = \"reg.example:5000\"\n", &err);
	assert_non_null(c);
	assert_int_equal(ecrauth_settings(c, host, sizeof host, &err), 0);
	assert_string_equal(ecrauth_repository_prefix(c, false), "");
	config_free(c);

	c = conf("registry.kind = ecr\nregistry.account = \"" ACCOUNT "\"\n", &err);
	assert_non_null(c);
	assert_int_equal(ecrauth_settings(c, host, sizeof host, &err), -1);
	assert_non_null(strstr(err.msg, "registry.region"));
	config_free(c);

	c = conf("registry.kind = ecr\nregistry.region = eu-west-1\n"
		 "registry.account = \"" ACCOUNT "\"\n", &err);
	assert_non_null(c);
	assert_int_equal(ecrauth_settings(c, host, sizeof host, &err), 1);
	assert_string_equal(host, ACCOUNT ".dkr.ecr.eu-west-1.amazonaws.com");
	assert_string_equal(ecrauth_repository_prefix(c, true), "slipway/");
	config_free(c);

	/* The host as given (a test registry, a proxy), a prefix as given. */
	c = conf("registry.kind = ecr\nregistry.region = us-east-1\n"
		 "registry.host = \"127.0.0.1:5998\"\nregistry.repository_prefix = \"\"\n", &err);
	assert_non_null(c);
	assert_int_equal(ecrauth_settings(c, host, sizeof host, &err), 1);
	assert_string_equal(host, "127.0.0.1:5998");
	assert_string_equal(ecrauth_repository_prefix(c, true), "");
	config_free(c);

	/* No host and no account: nowhere to push. */
	c = conf("registry.kind = ecr\nregistry.region = us-east-1\n", &err);
	assert_non_null(c);
	assert_int_equal(ecrauth_settings(c, host, sizeof host, &err), -1);
	assert_non_null(strstr(err.msg, "registry.account"));
	config_free(c);

	c = conf("registry.kind = ecr\nregistry.region = us-east-1\nregistry.account = \"1234\"\n",
		 &err);
	assert_non_null(c);
	assert_int_equal(ecrauth_settings(c, host, sizeof host, &err), -1);
	assert_non_null(strstr(err.msg, "12 digits"));
	config_free(c);

	c = conf("registry.kind = ecr\nregistry.region = \"EU WEST\"\n"
		 "registry.account = \"" ACCOUNT "\"\n", &err);
	assert_non_null(c);
	assert_int_equal(ecrauth_settings(c, host, sizeof host, &err), -1);
	config_free(c);

	/* An unknown kind is refused by the schema. */
	assert_null(conf("registry.kind = docker-hub\n", &err));
	assert_non_null(strstr(err.msg, "registry.kind"));
}

/* ---- against the fake ---- */

struct got {
	int done;
	int have;
	char error[700];
	char auth_json[1024];
	char config_json[1024];
	char host[128];
	int stale;
};

struct fix {
	struct ev_loop *loop;
	struct http_client *http;
	struct ecrauth *ea;
	struct got g[3];
};

static void on_login(const struct ecrauth_login *l, const char *error, void *arg)
{
	struct got *g = arg;
	g->done++;
	g->have = l != NULL;
	snprintf(g->error, sizeof g->error, "%s", error ? error : "");
	if (!l)
		return;
	snprintf(g->auth_json, sizeof g->auth_json, "%s", l->auth_json);
	snprintf(g->config_json, sizeof g->config_json, "%s", l->config_json);
	snprintf(g->host, sizeof g->host, "%s", l->registry_host);
	g->stale = l->stale;
}

static void wait_done(struct fix *f, struct got *g)
{
	int64_t deadline = clock_mono_ms() + 30000;
	while (!g->done && clock_mono_ms() < deadline)
		ev_run(f->loop, EVRUN_ONCE);
	assert_int_equal(g->done, 1);
}

static struct ecrauth *make(struct fix *f, const char *registry_id)
{
	char endpoint[64];
	snprintf(endpoint, sizeof endpoint, "http://127.0.0.1:%d", fake.port);
	struct ecrauth_opts o = {.region = "us-east-1", .endpoint = endpoint,
				 .registry_id = registry_id, .registry_host = "127.0.0.1:5998"};
	struct err err = {{0}};
	struct ecrauth *ea = ecrauth_new(f->loop, f->http, &o, &err);
	if (!ea)
		fail_msg("ecrauth_new: %s", err.msg);
	return ea;
}

static int setup(void **state)
{
	struct fix *f = calloc(1, sizeof *f);
	log_init("test", LOG_LEVEL_ERROR, 0);
	setenv("AWS_ACCESS_KEY_ID", AKID, 1);
	setenv("AWS_SECRET_ACCESS_KEY", SECRET, 1);
	unsetenv("AWS_SESSION_TOKEN");
	setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/slipway-test", 1);
	setenv("AWS_EC2_METADATA_DISABLED", "true", 1);
	fake_start();
	f->loop = ev_loop_new(EVFLAG_AUTO);
	f->http = http_client_new(f->loop);
	f->ea = make(f, ACCOUNT);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fix *f = *state;
	ecrauth_free(f->ea);
	http_client_free(f->http);
	ev_loop_destroy(f->loop);
	fakeproc_stop(&fake);
	clock_fake_off();
	free(f);
	return 0;
}

/* The password inside an X-Registry-Auth document. */
static void password_of(const char *auth_json, char *out, size_t cap)
{
	cJSON *doc = cJSON_Parse(auth_json);
	assert_non_null(doc);
	const cJSON *u = cJSON_GetObjectItemCaseSensitive(doc, "username");
	const cJSON *p = cJSON_GetObjectItemCaseSensitive(doc, "password");
	const cJSON *s = cJSON_GetObjectItemCaseSensitive(doc, "serveraddress");
	assert_true(cJSON_IsString(u) && cJSON_IsString(p) && cJSON_IsString(s));
	assert_string_equal(u->valuestring, "AWS");
	assert_string_equal(s->valuestring, PROXY);
	snprintf(out, cap, "%s", p->valuestring);
	cJSON_Delete(doc);
}

static void test_repository_then_login(void **state)
{
	struct fix *f = *state;
	struct got *g = &f->g[0];
	assert_true(ecrauth_prepare(f->ea, "slipway/web", on_login, g) > 0);
	assert_int_equal(g->done, 0); /* never from inside the call */
	wait_done(f, g);
	assert_true(g->have);
	assert_string_equal(g->error, "");
	assert_string_equal(g->host, "127.0.0.1:5998");
	char pw[256];
	password_of(g->auth_json, pw, sizeof pw);
	assert_true(live_password(pw));
	/* X-Registry-Config: the same login keyed by the registry host. */
	cJSON *cfg = cJSON_Parse(g->config_json);
	const cJSON *entry = cJSON_GetObjectItemCaseSensitive(cfg, "127.0.0.1:5998");
	assert_true(cJSON_IsObject(entry));
	assert_string_equal(cJSON_GetObjectItemCaseSensitive(entry, "password")->valuestring, pw);
	cJSON_Delete(cfg);

	/* The fake has the repository, scanned on push, untagged. */
	cJSON *repos = ctl("GET", "/_fake/repositories", NULL);
	const cJSON *r = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(repos, "repositories"),
					    0);
	assert_non_null(r);
	assert_string_equal(cJSON_GetObjectItemCaseSensitive(r, "repositoryName")->valuestring,
			    "slipway/web");
	assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(
		cJSON_GetObjectItemCaseSensitive(r, "imageScanningConfiguration"), "scanOnPush")));
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r, "tags")), 0);
	cJSON_Delete(repos);

	/* Again: no CreateRepository, the cached token. */
	struct got *h = &f->g[1];
	assert_true(ecrauth_prepare(f->ea, "slipway/web", on_login, h) > 0);
	wait_done(f, h);
	assert_true(h->have);
	assert_string_equal(h->auth_json, g->auth_json);
	assert_int_equal(ecrauth_creates(f->ea), 1);
	assert_int_equal(ecrauth_fetches(f->ea), 1);
	assert_int_equal(requests("CreateRepository"), 1);
	assert_int_equal(requests("GetAuthorizationToken"), 1);
}

static void test_existing_repository(void **state)
{
	struct fix *f = *state;
	/* Another coordinator process made it: RepositoryAlreadyExistsException is fine. */
	struct ecrauth *other = make(f, ACCOUNT);
	struct got *g = &f->g[0];
	assert_true(ecrauth_prepare(other, "slipway/api", on_login, g) > 0);
	wait_done(f, g);
	assert_true(g->have);
	struct got *h = &f->g[1];
	assert_true(ecrauth_prepare(f->ea, "slipway/api", on_login, h) > 0);
	wait_done(f, h);
	assert_true(h->have);
	assert_string_equal(h->error, "");
	assert_int_equal(requests("CreateRepository"), 2);
	ecrauth_free(other);
}

static void test_invalidate_fetches_new(void **state)
{
	struct fix *f = *state;
	struct got *g = &f->g[0];
	assert_true(ecrauth_prepare(f->ea, NULL, on_login, g) > 0);
	wait_done(f, g);
	char first[256], second[256];
	password_of(g->auth_json, first, sizeof first);
	/* Docker said the token was refused: the next login is a new token. */
	ecrauth_invalidate(f->ea);
	struct got *h = &f->g[1];
	assert_true(ecrauth_prepare(f->ea, NULL, on_login, h) > 0);
	wait_done(f, h);
	password_of(h->auth_json, second, sizeof second);
	assert_string_not_equal(first, second);
	assert_int_equal(ecrauth_fetches(f->ea), 2);
	assert_true(live_password(second));
	assert_int_equal(requests("CreateRepository"), 0); /* a login only */
}

static void test_refreshed_at_half_life(void **state)
{
	struct fix *f = *state;
	clock_fake_set(clock_wall_ms(), clock_mono_ms());
	struct got *g = &f->g[0];
	assert_true(ecrauth_prepare(f->ea, NULL, on_login, g) > 0);
	wait_done(f, g);
	/* 5 h 59 min later (of 12 h): the same token. */
	int64_t moved = 359 * 60 * 1000LL;
	clock_fake_advance(moved);
	char body[96];
	snprintf(body, sizeof body, "{\"kind\":\"skew\",\"offset_s\":%lld}",
		 (long long)(moved / 1000));
	cJSON_Delete(ctl("POST", "/_fake/fault", body));
	struct got *h = &f->g[1];
	assert_true(ecrauth_prepare(f->ea, NULL, on_login, h) > 0);
	wait_done(f, h);
	assert_string_equal(h->auth_json, g->auth_json);
	assert_int_equal(ecrauth_fetches(f->ea), 1);
	/* Past half its life: a new one, long before it expires. */
	clock_fake_advance(2 * 60 * 1000LL);
	moved += 2 * 60 * 1000LL;
	snprintf(body, sizeof body, "{\"kind\":\"skew\",\"offset_s\":%lld}",
		 (long long)(moved / 1000));
	cJSON_Delete(ctl("POST", "/_fake/fault", body));
	struct got *k = &f->g[2];
	assert_true(ecrauth_prepare(f->ea, NULL, on_login, k) > 0);
	wait_done(f, k);
	assert_true(k->have);
	assert_string_not_equal(k->auth_json, g->auth_json);
	assert_int_equal(ecrauth_fetches(f->ea), 2);
}

static void test_refusals_name_the_action(void **state)
{
	struct fix *f = *state;
	/* Another account's registry: the fake refuses to create there. */
	struct ecrauth *foreign = make(f, "210987654321");
	struct got *g = &f->g[0];
	assert_true(ecrauth_prepare(foreign, "slipway/web", on_login, g) > 0);
	wait_done(f, g);
	assert_false(g->have);
	assert_non_null(strstr(g->error, "GetAuthorizationToken"));
	assert_non_null(strstr(g->error, "InvalidParameterException"));
	ecrauth_free(foreign);

	/* Wrong credentials: the signature check fails on CreateRepository. */
	setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret", 1);
	struct ecrauth *wrong = make(f, ACCOUNT);
	struct got *h = &f->g[1];
	assert_true(ecrauth_prepare(wrong, "slipway/other", on_login, h) > 0);
	wait_done(f, h);
	assert_false(h->have);
	assert_non_null(strstr(h->error, "CreateRepository slipway/other"));
	assert_non_null(strstr(h->error, "InvalidSignatureException"));
	ecrauth_free(wrong);
	setenv("AWS_SECRET_ACCESS_KEY", SECRET, 1);
}

static void test_bad_names_and_cancel(void **state)
{
	struct fix *f = *state;
	struct got *g = &f->g[0];
	assert_int_equal(ecrauth_prepare(f->ea, "Slipway/Web", on_login, g), 0);
	assert_int_equal(ecrauth_prepare(f->ea, "a", on_login, g), 0);
	assert_int_equal(ecrauth_prepare(f->ea, "slipway//web", on_login, g), 0);
	assert_int_equal(ecrauth_prepare(NULL, NULL, on_login, g), 0);
	uint64_t id = ecrauth_prepare(f->ea, "slipway/cancelled", on_login, g);
	assert_true(id > 0);
	ecrauth_cancel(f->ea, id);
	/* Run the loop a while: nothing answers. */
	int64_t until = clock_mono_ms() + 300;
	while (clock_mono_ms() < until)
		ev_run(f->loop, EVRUN_NOWAIT);
	assert_int_equal(g->done, 0);
	/* A prepare in flight at ecrauth_free: no callback either (teardown frees). */
	assert_true(ecrauth_prepare(f->ea, NULL, on_login, &f->g[1]) > 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_settings),
		cmocka_unit_test_setup_teardown(test_repository_then_login, setup, teardown),
		cmocka_unit_test_setup_teardown(test_existing_repository, setup, teardown),
		cmocka_unit_test_setup_teardown(test_invalidate_fetches_new, setup, teardown),
		cmocka_unit_test_setup_teardown(test_refreshed_at_half_life, setup, teardown),
		cmocka_unit_test_setup_teardown(test_refusals_name_the_action, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_names_and_cancel, setup, teardown),
	};
	return cmocka_run_group_tests_name("ecrauth", tests, NULL, NULL);
}
