/*
 * link: the link/unlink endpoints in-process (server, store, workers, the
 * coordinator's routes) against tests/fakes/gitlab.py run as a child process:
 * a first link, linking twice, GitLab's refusals with nothing half-done left
 * at GitLab or in the store, unlink (and --force), and what the API never
 * returns.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "coord_fixture.h"
#include "fakeproc.h"
#include "link.h"
#include "secrets.h"
#include "sshkey.h"
#include "worker.h"

#define GL_TOKEN "glpat-link-unit-0123456789"
#define PUBLIC "https://coordinator.example.com"

static struct {
	struct fx f;
	struct fakeproc gitlab;
	char body[1024];
} L;

/* Starts the fake GitLab. */
static int start_fake(void)
{
	const char *args[] = {"--token", GL_TOKEN,
			      "--project", "group/web:42:main:ssh://git@git.example.com/group/web.git",
			      "--project", "group/other:43", NULL};
	return fakeproc_start(&L.gitlab, "gitlab.py", args);
}

static int setup(void **state)
{
	(void)state;
	memset(&L, 0, sizeof L);
	if (start_fake() < 0)
		return -1;
	fx_init(&L.f, "server.public_url = " PUBLIC "\n", 1);
	struct err err;
	L.f.c.http = L.f.http;
	L.f.c.workers = worker_pool_new(L.f.loop, 1, 16, &err);
	if (!L.f.c.workers || link_register(&L.f.c) < 0)
		return -1;
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	link_free(&L.f.c);
	worker_pool_free(L.f.c.workers);
	fx_free(&L.f);
	fakeproc_stop(&L.gitlab);
	return 0;
}

/* The fake's control document. */
static cJSON *fake(const char *method, const char *body)
{
	char url[128];
	snprintf(url, sizeof url, "http://127.0.0.1:%d/_control", L.gitlab.port);
	struct fx_resp r = {0};
	buf_init(&r.body, (size_t)4 << 20);
	const char *headers[] = {"Content-Type: application/json", NULL};
	struct http_request req = {.method = method, .url = url, .headers = headers, .body = body,
				   .body_len = body ? strlen(body) : 0, .timeout_ms = 10000,
				   .max_body = (size_t)4 << 20, .on_done = fx_http_done, .arg = &r};
	assert_true(http_client_start(L.f.http, &req) > 0);
	while (!r.done)
		ev_run(L.f.loop, EVRUN_ONCE);
	assert_int_equal(r.status, 200);
	cJSON *doc = json_parse(r.body.data, r.body.len, r.body.len + 1, NULL);
	buf_free(&r.body);
	assert_non_null(doc);
	return doc;
}

static int count_of(const cJSON *state, const char *what, const char *pid)
{
	const cJSON *arr = cJSON_GetObjectItem(cJSON_GetObjectItem(state, what), pid);
	return arr ? cJSON_GetArraySize(arr) : 0;
}

static const cJSON *first_of(const cJSON *state, const char *what)
{
	return cJSON_GetArrayItem(cJSON_GetObjectItem(cJSON_GetObjectItem(state, what), "42"), 0);
}

static void no_violations(const cJSON *state)
{
	const cJSON *v = cJSON_GetObjectItem(state, "violations");
	if (cJSON_GetArraySize(v) > 0) {
		char *t = cJSON_Print(v);
		fail_msg("fake GitLab saw violations: %s", t);
	}
}

static long do_link(const char *app, const char *extra, cJSON **out)
{
	snprintf(L.body, sizeof L.body,
		 "{\"gitlab_url\":\"%s\",\"project\":\"group/web\",\"token\":\"" GL_TOKEN "\"%s}",
		 L.gitlab.base, extra ? extra : "");
	char path[128];
	snprintf(path, sizeof path, "/v1/apps/%s/link", app);
	return fx_req(&L.f, "POST", path, L.f.admin_key, L.body, out, NULL);
}

static const char *err_msg(const cJSON *o)
{
	return fx_str(cJSON_GetObjectItem(o, "error"), "message");
}

static void assert_unlinked_in_store(const char *app)
{
	assert_int_equal(fx_int(&L.f, "SELECT count(*) FROM apps WHERE name = '%s' AND hook_id IS "
				      "NULL AND hook_token IS NULL AND deploy_key_public IS NULL AND "
				      "deploy_key_private IS NULL AND gitlab_token IS NULL AND "
				      "gitlab_url IS NULL AND gitlab_hook_id IS NULL AND "
				      "gitlab_key_id IS NULL",
				 app),
			 1);
}

static void test_link_then_again(void **state)
{
	(void)state;
	fx_app(&L.f, "web", "all");
	cJSON *o = NULL;
	assert_int_equal(do_link("web", ",\"deploy\":\"tags\"", &o), 200);
	assert_true(cJSON_IsTrue(cJSON_GetObjectItem(o, "linked")));
	assert_string_equal(fx_str(o, "project"), "group/web");
	assert_int_equal((int)fx_num(o, "project_id"), 42);
	assert_string_equal(fx_str(o, "repo_url"), "ssh://git@git.example.com/group/web.git");
	assert_string_equal(fx_str(o, "deploy"), "tags");
	const cJSON *key = cJSON_GetObjectItem(o, "deploy_key");
	char public_line[512];
	snprintf(public_line, sizeof public_line, "%s", fx_str(key, "public"));
	assert_int_equal(strncmp(public_line, "ecdsa-sha2-nistp256 AAAA", 24), 0);
	assert_non_null(strstr(public_line, " slipway-web"));
	assert_true(cJSON_IsTrue(cJSON_GetObjectItem(key, "created")));
	assert_true(cJSON_IsTrue(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "webhook"), "created")));
	char *text = cJSON_PrintUnformatted(o);
	assert_null(strstr(text, GL_TOKEN));
	assert_null(strstr(text, "PRIVATE KEY"));
	free(text);
	cJSON_Delete(o);

	cJSON *st = fake("GET", NULL);
	no_violations(st);
	assert_int_equal(count_of(st, "keys", "42"), 1);
	assert_int_equal(count_of(st, "hooks", "42"), 1);
	const cJSON *k = first_of(st, "keys");
	const cJSON *h = first_of(st, "hooks");
	assert_true(cJSON_IsFalse(cJSON_GetObjectItem(k, "can_push")));
	assert_true(sshkey_same_public(fx_str(k, "key"), public_line));
	char hook_id[80];
	snprintf(hook_id, sizeof hook_id, "%s", fx_text(&L.f, "SELECT hook_id FROM apps"));
	char want[200];
	snprintf(want, sizeof want, PUBLIC "/hooks/gitlab/%s", hook_id);
	assert_string_equal(fx_str(h, "url"), want);
	assert_true(cJSON_IsTrue(cJSON_GetObjectItem(h, "tag_push_events")));
	assert_true(cJSON_IsFalse(cJSON_GetObjectItem(h, "pipeline_events")));
	assert_true(cJSON_IsTrue(cJSON_GetObjectItem(h, "enable_ssl_verification")));
	assert_string_equal(fx_str(h, "push_events_branch_filter"), ""); /* tags: all branches */
	char hook_token[128];
	snprintf(hook_token, sizeof hook_token, "%s", fx_str(h, "token"));
	assert_int_equal(strlen(hook_token), 64);
	cJSON_Delete(st);

	/* The store: sealed columns open to what GitLab got; no plaintext. */
	assert_int_equal(fx_int(&L.f, "SELECT count(*) FROM apps WHERE gitlab_token LIKE '%%%s%%' "
				      "OR hook_token LIKE '%%%s%%' OR deploy_key_private LIKE "
				      "'%%PRIVATE%%'",
				 GL_TOKEN, hook_token),
			 0);
	assert_int_equal(fx_int(&L.f, "SELECT count(*) FROM apps WHERE gitlab_hook_id > 0 AND "
				      "gitlab_key_id > 0 AND project_id = 42 AND deploy = 'tags' AND "
				      "gitlab_url = '%s'",
				 L.gitlab.base),
			 1);

	/* Again, with a branch: same key, same hook (updated), nothing new. */
	o = NULL;
	assert_int_equal(do_link("web", ",\"deploy\":\"branch\",\"branch\":\"release\"", &o), 200);
	key = cJSON_GetObjectItem(o, "deploy_key");
	assert_string_equal(fx_str(key, "public"), public_line);
	assert_true(cJSON_IsFalse(cJSON_GetObjectItem(key, "created")));
	assert_true(cJSON_IsFalse(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "webhook"), "created")));
	cJSON_Delete(o);
	assert_string_equal(fx_text(&L.f, "SELECT hook_id FROM apps"), hook_id);
	st = fake("GET", NULL);
	no_violations(st);
	assert_int_equal(count_of(st, "keys", "42"), 1);
	assert_int_equal(count_of(st, "hooks", "42"), 1);
	h = first_of(st, "hooks");
	assert_string_equal(fx_str(h, "push_events_branch_filter"), "release");
	assert_string_equal(fx_str(h, "token"), hook_token);
	cJSON_Delete(st);

	/* GET .../link shows it, never a secret. */
	char *raw = NULL;
	assert_int_equal(fx_req(&L.f, "GET", "/v1/apps/web/link", L.f.admin_key, NULL, &o, &raw), 200);
	assert_true(cJSON_IsTrue(cJSON_GetObjectItem(o, "linked")));
	assert_string_equal(fx_str(o, "branch"), "release");
	assert_null(strstr(raw, GL_TOKEN));
	assert_null(strstr(raw, hook_token));
	assert_null(strstr(raw, hook_id));
	assert_null(strstr(raw, "PRIVATE"));
	free(raw);
	cJSON_Delete(o);

	/* Another project while linked: refused. */
	snprintf(L.body, sizeof L.body,
		 "{\"gitlab_url\":\"%s\",\"project\":\"group/other\",\"token\":\"" GL_TOKEN "\"}",
		 L.gitlab.base);
	assert_int_equal(fx_req(&L.f, "POST", "/v1/apps/web/link", L.f.admin_key, L.body, &o, NULL),
			 409);
	assert_non_null(strstr(err_msg(o), "unlink it first"));
	cJSON_Delete(o);

	/* Unlink: both gone at GitLab, columns cleared; twice is harmless. */
	assert_int_equal(fx_req(&L.f, "DELETE", "/v1/apps/web/link", L.f.admin_key, NULL, &o, NULL),
			 200);
	assert_true(cJSON_IsTrue(cJSON_GetObjectItem(o, "unlinked")));
	assert_true(cJSON_IsTrue(cJSON_GetObjectItem(o, "webhook_removed")));
	assert_true(cJSON_IsTrue(cJSON_GetObjectItem(o, "deploy_key_removed")));
	cJSON_Delete(o);
	st = fake("GET", NULL);
	no_violations(st);
	assert_int_equal(count_of(st, "keys", "42"), 0);
	assert_int_equal(count_of(st, "hooks", "42"), 0);
	cJSON_Delete(st);
	assert_unlinked_in_store("web");
	assert_int_equal(fx_req(&L.f, "DELETE", "/v1/apps/web/link", L.f.admin_key, NULL, &o, NULL),
			 200);
	assert_true(cJSON_IsFalse(cJSON_GetObjectItem(o, "unlinked")));
	cJSON_Delete(o);
}

/* Each GitLab refusal: a clear 502, nothing left at GitLab or in the store. */
static void test_refusals_leave_nothing(void **state)
{
	(void)state;
	fx_app(&L.f, "web", "all");
	static const struct {
		const char *rule;
		int gitlab_status;
		const char *says;
	} cases[] = {
		{"{\"method\":\"GET\",\"path\":\"/projects/group\",\"status\":401}", 401,
		 "refused the token (401)"},
		{"{\"method\":\"POST\",\"path\":\"/deploy_keys\",\"status\":403}", 403, "Maintainer"},
		{"{\"method\":\"POST\",\"path\":\"/hooks\",\"status\":422}", 422,
		 "invalid (422) while trying to create the webhook"},
		{"{\"method\":\"POST\",\"path\":\"/hooks\",\"status\":409}", 409, "conflict (409)"},
		{"{\"method\":\"GET\",\"path\":\"/hooks\",\"status\":404}", 404, "(404)"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char ctl[512];
		snprintf(ctl, sizeof ctl, "{\"clear\":true,\"fail\":[%s]}", cases[i].rule);
		cJSON_Delete(fake("POST", ctl));
		cJSON *o = NULL;
		assert_int_equal(do_link("web", NULL, &o), 502);
		const cJSON *e = cJSON_GetObjectItem(o, "error");
		assert_string_equal(fx_str(e, "code"), "gitlab_error");
		assert_int_equal((int)fx_num(e, "gitlab_status"), cases[i].gitlab_status);
		if (!strstr(fx_str(e, "message"), cases[i].says))
			fail_msg("case %zu: %s", i, fx_str(e, "message"));
		cJSON_Delete(o);
		cJSON *st = fake("GET", NULL);
		no_violations(st);
		assert_int_equal(count_of(st, "keys", "42"), 0);
		assert_int_equal(count_of(st, "hooks", "42"), 0);
		cJSON_Delete(st);
		assert_unlinked_in_store("web");
	}
	/* 429 and 500 once are retried: the link goes through. */
	cJSON_Delete(fake("POST", "{\"clear\":true,\"fail\":[{\"method\":\"GET\",\"path\":"
				  "\"/projects/group\",\"status\":429,\"retry_after\":1},"
				  "{\"method\":\"POST\",\"path\":\"/hooks\",\"status\":500}]}"));
	cJSON *o = NULL;
	assert_int_equal(do_link("web", NULL, &o), 200);
	cJSON_Delete(o);
	cJSON *st = fake("GET", NULL);
	assert_int_equal(count_of(st, "hooks", "42"), 1);
	cJSON_Delete(st);

	/* Unlink refused (token revoked): nothing cleared; with force: cleared. */
	cJSON_Delete(fake("POST", "{\"tokens\":[]}"));
	assert_int_equal(fx_req(&L.f, "DELETE", "/v1/apps/web/link", L.f.admin_key, NULL, &o, NULL),
			 502);
	assert_non_null(strstr(err_msg(o), "(401)"));
	cJSON_Delete(o);
	assert_int_equal(fx_int(&L.f, "SELECT count(*) FROM apps WHERE hook_id IS NOT NULL"), 1);
	assert_int_equal(fx_req(&L.f, "DELETE", "/v1/apps/web/link?force=1", L.f.admin_key, NULL,
				&o, NULL),
			 200);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(o, "warnings")), 2);
	cJSON_Delete(o);
	assert_unlinked_in_store("web");
}

static void test_bad_requests(void **state)
{
	(void)state;
	fx_app(&L.f, "web", "all");
	cJSON *o = NULL;
	assert_int_equal(do_link("nope", NULL, &o), 404);
	cJSON_Delete(o);
	static const char *const bodies[] = {
		"{\"gitlab_url\":\"ftp://x\",\"project\":\"g/w\",\"token\":\"t0123\"}",
		"{\"gitlab_url\":\"https://x\",\"project\":\"/g\",\"token\":\"t0123\"}",
		"{\"gitlab_url\":\"https://x\",\"project\":\"g/w\",\"token\":\"has space\"}",
		"{\"gitlab_url\":\"https://x\",\"project\":\"g/w\",\"token\":\"t\",\"deploy\":\"x\"}",
		"{\"gitlab_url\":\"https://x\",\"project\":\"g/w\",\"token\":\"t\",\"branch\":\"a..b\"}",
		"{\"gitlab_url\":\"https://x\",\"project\":\"g/w\",\"token\":\"t\",\"colour\":1}",
		"{\"gitlab_url\":\"https://x\",\"project\":\"g/w\",\"token\":7}",
		"{\"project\":\"g/w\",\"token\":\"t\"}",
	};
	for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
		o = NULL;
		long st = fx_req(&L.f, "POST", "/v1/apps/web/link", L.f.admin_key, bodies[i], &o, NULL);
		if (st != 400)
			fail_msg("body %zu: status %ld", i, st);
		cJSON_Delete(o);
	}
	/* GitLab unreachable: a clear sentence, nothing stored. */
	snprintf(L.body, sizeof L.body,
		 "{\"gitlab_url\":\"http://127.0.0.1:1\",\"project\":\"g/w\",\"token\":\"t0123\"}");
	assert_int_equal(fx_req(&L.f, "POST", "/v1/apps/web/link", L.f.admin_key, L.body, &o, NULL),
			 502);
	assert_non_null(strstr(err_msg(o), "cannot reach GitLab"));
	cJSON_Delete(o);
	assert_unlinked_in_store("web");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_link_then_again, setup, teardown),
		cmocka_unit_test_setup_teardown(test_refusals_leave_nothing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_requests, setup, teardown),
	};
	return cmocka_run_group_tests_name("link", tests, NULL, NULL);
}
