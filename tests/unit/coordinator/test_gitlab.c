/*
 * gitlab: the error sentences (pure), and every call against a scripted
 * HTTP server in this process (common/httpd on the test's loop): the
 * PRIVATE-TOKEN header, the URL-encoded path, the bodies' fields and JSON
 * types, paging, 429 after Retry-After, 5xx with backoff, DELETE of what is
 * gone.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "gitlab.h"
#include "http_client.h"
#include "httpd.h"
#include "json.h"

#define SCRIPT_MAX 16
#define SEEN_MAX 16
#define TOKEN "glpat-unit-test-token-0001"

struct answer {
	int status;
	const char *body;
	const char *header;  /* one extra "Name: value", or NULL */
};

struct seen {
	char method[8];
	char target[512];
	char token[128];
	char ctype[64];
	char body[4096];
};

static struct {
	struct ev_loop *loop;
	struct httpd *srv;
	struct http_client *http;
	char base[64];
	struct answer script[SCRIPT_MAX];
	size_t nscript, next;
	struct seen seen[SEEN_MAX];
	size_t nseen;
} T;

static void handler(struct httpd_req *req, void *arg)
{
	(void)arg;
	if (T.nseen < SEEN_MAX) {
		struct seen *s = &T.seen[T.nseen++];
		const char *tok = httpd_req_header(req, "PRIVATE-TOKEN");
		const char *ct = httpd_req_header(req, "Content-Type");
		snprintf(s->method, sizeof s->method, "%s", req->method);
		snprintf(s->target, sizeof s->target, "%s", req->target);
		snprintf(s->token, sizeof s->token, "%s", tok ? tok : "");
		snprintf(s->ctype, sizeof s->ctype, "%s", ct ? ct : "");
		snprintf(s->body, sizeof s->body, "%s", req->body);
	}
	struct answer a = {200, "{}", NULL};
	if (T.next < T.nscript)
		a = T.script[T.next++];
	if (a.header) {
		char name[64];
		const char *colon = strchr(a.header, ':');
		snprintf(name, sizeof name, "%.*s", (int)(colon - a.header), a.header);
		httpd_add_header(req, name, colon + 2);
	}
	httpd_respond(req, a.status, "application/json", a.body, strlen(a.body));
}

static int setup(void **state)
{
	(void)state;
	memset(&T, 0, sizeof T);
	T.loop = ev_loop_new(EVFLAG_AUTO);
	struct httpd_config cfg = {.listen = "127.0.0.1:0", .handler = handler};
	struct err err;
	T.srv = httpd_new(T.loop, &cfg, &err);
	if (!T.srv)
		return -1;
	T.http = http_client_new(T.loop);
	snprintf(T.base, sizeof T.base, "http://127.0.0.1:%d/", httpd_port(T.srv));
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	http_client_free(T.http);
	httpd_free(T.srv);
	ev_loop_destroy(T.loop);
	return 0;
}

static void script(const struct answer *a, size_t n)
{
	memcpy(T.script, a, n * sizeof *a);
	T.nscript = n;
	T.next = 0;
	T.nseen = 0;
}

struct result {
	int done;
	struct gitlab_reply rep;
};

static void on_done(const struct gitlab_reply *rep, void *arg)
{
	struct result *r = arg;
	r->done++;
	r->rep = *rep;
}

static void wait_for(struct result *r)
{
	int64_t until = clock_mono_ms() + 20000;
	while (!r->done && clock_mono_ms() < until)
		ev_run(T.loop, EVRUN_ONCE);
	assert_int_equal(r->done, 1);
}

static const struct backoff_policy fast = {.base_ms = 5, .cap_ms = 20, .max_attempts = 3};

static struct gitlab_conn conn(void)
{
	struct gitlab_conn c = {.base_url = T.base, .token = TOKEN, .retry = &fast,
				.timeout_ms = 5000};
	return c;
}

/* ---- pure ---- */

static void test_api_base(void **state)
{
	(void)state;
	char out[256];
	struct err err;
	assert_int_equal(gitlab_api_base("https://gitlab.example.com", out, sizeof out, &err), 0);
	assert_string_equal(out, "https://gitlab.example.com/api/v4");
	assert_int_equal(gitlab_api_base("https://gitlab.example.com/", out, sizeof out, &err), 0);
	assert_string_equal(out, "https://gitlab.example.com/api/v4");
	assert_int_equal(gitlab_api_base("http://h:8080/gitlab/api/v4/", out, sizeof out, &err), 0);
	assert_string_equal(out, "http://h:8080/gitlab/api/v4");
	assert_int_equal(gitlab_api_base("HTTPS://h", out, sizeof out, &err), 0);
	assert_string_equal(out, "https://h/api/v4");
	assert_int_equal(gitlab_api_base("ftp://h", out, sizeof out, &err), -1);
	assert_int_equal(gitlab_api_base("https://", out, sizeof out, &err), -1);
	assert_int_equal(gitlab_api_base("https://u:p@h", out, sizeof out, &err), -1);
	assert_non_null(strstr(err.msg, "credentials"));
	assert_int_equal(gitlab_api_base("https://h/x?y=1", out, sizeof out, &err), -1);
	assert_int_equal(gitlab_api_base("https://h/a b", out, sizeof out, &err), -1);
	assert_int_equal(gitlab_api_base("", out, sizeof out, &err), -1);
}

static void test_error_detail(void **state)
{
	(void)state;
	char d[256];
	const char *b1 = "{\"message\":\"401 Unauthorized\"}";
	gitlab_error_detail(b1, strlen(b1), d, sizeof d);
	assert_string_equal(d, "401 Unauthorized");
	const char *b2 = "{\"message\":{\"url\":[\"is blocked: local network\"],\"token\":[\"is "
			 "too long\"]}}";
	gitlab_error_detail(b2, strlen(b2), d, sizeof d);
	assert_string_equal(d, "url is blocked: local network; token is too long");
	const char *b3 = "{\"error\":\"insufficient_scope\",\"error_description\":\"needs api\"}";
	gitlab_error_detail(b3, strlen(b3), d, sizeof d);
	assert_string_equal(d, "insufficient_scope: needs api");
	const char *b4 = "<html>oops</html>";
	gitlab_error_detail(b4, strlen(b4), d, sizeof d);
	assert_string_equal(d, "");
	const char *b5 = "{\"message\":\"line\\nbreak\"}";
	gitlab_error_detail(b5, strlen(b5), d, sizeof d);
	assert_string_equal(d, "line break");
	gitlab_error_detail(b1, strlen(b1), d, 5);
	assert_string_equal(d, "401 ");
}

static void test_error_messages(void **state)
{
	(void)state;
	char m[600];
	const char *base = "https://gl/api/v4";
#define MSG(st, body)                                                                        \
	gitlab_error_message("add the deploy key", base, HTTP_OK, "", st, body,              \
			     strlen(body), 1, m, sizeof m)
	MSG(401, "{\"message\":\"401 Unauthorized\"}");
	assert_non_null(strstr(m, "refused the token (401)"));
	assert_non_null(strstr(m, "api scope"));
	MSG(403, "{\"message\":\"403 Forbidden\"}");
	assert_non_null(strstr(m, "(403)"));
	assert_non_null(strstr(m, "Maintainer"));
	MSG(404, "");
	assert_non_null(strstr(m, "(404)"));
	assert_non_null(strstr(m, "project path"));
	MSG(409, "{\"message\":\"Fingerprint has already been taken\"}");
	assert_non_null(strstr(m, "conflict (409)"));
	assert_non_null(strstr(m, "has already been taken"));
	MSG(422, "{\"message\":{\"url\":[\"is blocked\"]}}");
	assert_non_null(strstr(m, "invalid (422)"));
	assert_non_null(strstr(m, "url is blocked"));
	MSG(400, "{\"message\":\"key is invalid\"}");
	assert_non_null(strstr(m, "(400)"));
	assert_non_null(strstr(m, "key is invalid"));
	gitlab_error_message("x", base, HTTP_OK, "", 429, NULL, 0, 5, m, sizeof m);
	assert_non_null(strstr(m, "rate-limiting"));
	assert_non_null(strstr(m, "5 attempts"));
	gitlab_error_message("x", base, HTTP_OK, "", 502, NULL, 0, 5, m, sizeof m);
	assert_non_null(strstr(m, "HTTP 502, 5 attempts"));
	gitlab_error_message("x", base, HTTP_ERR_CONNECT, "connect: Connection refused", 0, NULL, 0,
			     5, m, sizeof m);
	assert_non_null(strstr(m, "cannot reach GitLab at https://gl/api/v4"));
	assert_non_null(strstr(m, "Connection refused"));
	gitlab_error_message("x", base, HTTP_OK, "", 302, NULL, 0, 1, m, sizeof m);
	assert_non_null(strstr(m, "redirects"));
#undef MSG
}

/* ---- calls ---- */

static void test_get_project(void **state)
{
	(void)state;
	const struct answer a[] = {{200,
				    "{\"id\":42,\"path_with_namespace\":\"group/sub/web\","
				    "\"default_branch\":\"main\",\"ssh_url_to_repo\":"
				    "\"git@gl:group/sub/web.git\",\"name\":\"web\"}",
				    NULL}};
	script(a, 1);
	struct gitlab_conn c = conn();
	struct result r = {0};
	assert_int_equal(gitlab_get_project(T.http, &c, "group/sub/web", on_done, &r, NULL), 0);
	assert_int_equal(r.done, 0);
	wait_for(&r);
	assert_true(r.rep.ok);
	assert_int_equal(r.rep.project.id, 42);
	assert_string_equal(r.rep.project.default_branch, "main");
	assert_string_equal(r.rep.project.ssh_url_to_repo, "git@gl:group/sub/web.git");
	assert_string_equal(r.rep.project.path_with_namespace, "group/sub/web");
	assert_int_equal(T.nseen, 1);
	assert_string_equal(T.seen[0].method, "GET");
	assert_string_equal(T.seen[0].target, "/api/v4/projects/group%2Fsub%2Fweb");
	assert_string_equal(T.seen[0].token, TOKEN);
}

static void test_project_errors(void **state)
{
	(void)state;
	const struct answer a[] = {{404, "{\"message\":\"404 Project Not Found\"}", NULL},
				   {401, "{\"message\":\"401 Unauthorized\"}", NULL},
				   {200, "<html>a login page</html>", NULL}};
	script(a, 3);
	struct gitlab_conn c = conn();
	struct result r = {0};
	assert_int_equal(gitlab_get_project(T.http, &c, "group/web", on_done, &r, NULL), 0);
	wait_for(&r);
	assert_false(r.rep.ok);
	assert_int_equal(r.rep.status, 404);
	assert_non_null(strstr(r.rep.message, "no project group/web"));
	memset(&r, 0, sizeof r);
	assert_int_equal(gitlab_get_project(T.http, &c, "group/web", on_done, &r, NULL), 0);
	wait_for(&r);
	assert_int_equal(r.rep.status, 401);
	assert_int_equal(r.rep.attempts, 1); /* 4xx is not retried */
	assert_non_null(strstr(r.rep.message, "token"));
	memset(&r, 0, sizeof r);
	assert_int_equal(gitlab_get_project(T.http, &c, "group/web", on_done, &r, NULL), 0);
	wait_for(&r);
	assert_false(r.rep.ok);
	assert_non_null(strstr(r.rep.message, "not GitLab's JSON"));
	/* Refused before any request: a token that would forge a header. */
	struct gitlab_conn bad = c;
	bad.token = "abc\r\nX-Evil: 1";
	struct err err;
	assert_int_equal(gitlab_get_project(T.http, &bad, "group/web", on_done, &r, &err), -1);
	bad.token = TOKEN;
	bad.base_url = "gopher://x";
	assert_int_equal(gitlab_get_project(T.http, &bad, "group/web", on_done, &r, &err), -1);
}

static void test_add_deploy_key_body(void **state)
{
	(void)state;
	const struct answer a[] = {{201, "{\"id\":7,\"title\":\"slipway-web\",\"can_push\":false}",
				    NULL}};
	script(a, 1);
	struct gitlab_conn c = conn();
	struct result r = {0};
	assert_int_equal(gitlab_add_deploy_key(T.http, &c, 42, "slipway-web",
					       "ecdsa-sha2-nistp256 AAAAE2Vj slipway-web", on_done,
					       &r, NULL),
			 0);
	wait_for(&r);
	assert_true(r.rep.ok);
	assert_int_equal(r.rep.id, 7);
	assert_string_equal(T.seen[0].method, "POST");
	assert_string_equal(T.seen[0].target, "/api/v4/projects/42/deploy_keys");
	assert_string_equal(T.seen[0].ctype, "application/json");
	cJSON *b = json_parse(T.seen[0].body, strlen(T.seen[0].body), 1 << 20, NULL);
	assert_non_null(b);
	assert_string_equal(cJSON_GetObjectItem(b, "title")->valuestring, "slipway-web");
	assert_string_equal(cJSON_GetObjectItem(b, "key")->valuestring,
			    "ecdsa-sha2-nistp256 AAAAE2Vj slipway-web");
	assert_true(cJSON_IsFalse(cJSON_GetObjectItem(b, "can_push")));
	cJSON_Delete(b);
}

static void test_add_and_update_hook_body(void **state)
{
	(void)state;
	const struct answer a[] = {{201, "{\"id\":9}", NULL}, {200, "{\"id\":9}", NULL}};
	script(a, 2);
	struct gitlab_conn c = conn();
	struct gitlab_hook_spec spec = {.url = "https://co.example/hooks/gitlab/abc",
					.token = "hooktoken0123456789",
					.push_events = true,
					.tag_push_events = true,
					.branch_filter = ""};
	struct result r = {0};
	assert_int_equal(gitlab_add_hook(T.http, &c, 42, &spec, on_done, &r, NULL), 0);
	wait_for(&r);
	assert_true(r.rep.ok);
	assert_int_equal(r.rep.id, 9);
	memset(&r, 0, sizeof r);
	spec.branch_filter = "main";
	assert_int_equal(gitlab_update_hook(T.http, &c, 42, 9, &spec, on_done, &r, NULL), 0);
	wait_for(&r);
	assert_true(r.rep.ok);
	assert_string_equal(T.seen[0].method, "POST");
	assert_string_equal(T.seen[0].target, "/api/v4/projects/42/hooks");
	assert_string_equal(T.seen[1].method, "PUT");
	assert_string_equal(T.seen[1].target, "/api/v4/projects/42/hooks/9");
	for (int i = 0; i < 2; i++) {
		cJSON *b = json_parse(T.seen[i].body, strlen(T.seen[i].body), 1 << 20, NULL);
		assert_non_null(b);
		assert_string_equal(cJSON_GetObjectItem(b, "url")->valuestring, spec.url);
		assert_string_equal(cJSON_GetObjectItem(b, "token")->valuestring, spec.token);
		assert_true(cJSON_IsTrue(cJSON_GetObjectItem(b, "push_events")));
		assert_true(cJSON_IsTrue(cJSON_GetObjectItem(b, "tag_push_events")));
		assert_true(cJSON_IsFalse(cJSON_GetObjectItem(b, "pipeline_events")));
		assert_true(cJSON_IsTrue(cJSON_GetObjectItem(b, "enable_ssl_verification")));
		assert_string_equal(cJSON_GetObjectItem(b, "push_events_branch_filter")->valuestring,
				    i == 0 ? "" : "main");
		cJSON_Delete(b);
	}
}

/* Lists: 100 per page, X-Next-Page followed; found by URL / by key material. */
static void test_find_pages(void **state)
{
	(void)state;
	const struct answer a[] = {
		{200, "[{\"id\":1,\"url\":\"https://other/hook\"}]", "X-Next-Page: 2"},
		{200, "[{\"id\":2,\"url\":\"https://co/hooks/gitlab/x\"}]", "X-Next-Page: "},
		{200, "[{\"id\":5,\"key\":\"ecdsa-sha2-nistp256 AAAA\"}]", "X-Next-Page: "},
		{200, "[]", "X-Next-Page: "},
	};
	script(a, 4);
	struct gitlab_conn c = conn();
	struct result r = {0};
	assert_int_equal(gitlab_find_hook(T.http, &c, 42, "https://co/hooks/gitlab/x", on_done, &r,
					  NULL),
			 0);
	wait_for(&r);
	assert_true(r.rep.ok);
	assert_int_equal(r.rep.id, 2);
	assert_int_equal(T.nseen, 2);
	assert_string_equal(T.seen[0].target, "/api/v4/projects/42/hooks?per_page=100&page=1");
	assert_string_equal(T.seen[1].target, "/api/v4/projects/42/hooks?per_page=100&page=2");
	/* GitLab hands keys back without the comment: still ours. */
	memset(&r, 0, sizeof r);
	assert_int_equal(gitlab_find_deploy_key(T.http, &c, 42, "ecdsa-sha2-nistp256 AAAA slipway-x",
						on_done, &r, NULL),
			 0);
	wait_for(&r);
	assert_true(r.rep.ok);
	assert_int_equal(r.rep.id, 5);
	memset(&r, 0, sizeof r);
	assert_int_equal(gitlab_find_deploy_key(T.http, &c, 42, "ecdsa-sha2-nistp256 AAAA", on_done,
						&r, NULL),
			 0);
	wait_for(&r);
	assert_true(r.rep.ok);
	assert_int_equal(r.rep.id, 0); /* not found is not an error */
}

static void test_retry_after_429(void **state)
{
	(void)state;
	const struct answer a[] = {{429, "{\"message\":\"Retry later\"}", "Retry-After: 1"},
				   {201, "{\"id\":11}", NULL}};
	script(a, 2);
	struct backoff_policy slow = {.base_ms = 5, .cap_ms = 1000, .max_attempts = 3};
	struct gitlab_conn c = conn();
	c.retry = &slow;
	struct result r = {0};
	int64_t t0 = clock_mono_ms();
	assert_int_equal(gitlab_add_deploy_key(T.http, &c, 42, "t", "ssh-ed25519 AAAA", on_done, &r,
					       NULL),
			 0);
	wait_for(&r);
	int64_t took = clock_mono_ms() - t0;
	assert_true(r.rep.ok);
	assert_int_equal(r.rep.id, 11);
	assert_int_equal(r.rep.attempts, 2);
	assert_int_equal(T.nseen, 2);
	assert_true(took >= 900); /* waited for Retry-After, not the 5 ms backoff */
}

static void test_retry_5xx(void **state)
{
	(void)state;
	const struct answer a[] = {{502, "bad gateway", NULL},
				   {503, "{}", NULL},
				   {204, "", NULL},
				   {500, "{}", NULL},
				   {500, "{}", NULL},
				   {500, "{\"message\":\"boom\"}", NULL}};
	script(a, 6);
	struct gitlab_conn c = conn();
	struct result r = {0};
	assert_int_equal(gitlab_delete_hook(T.http, &c, 42, 9, on_done, &r, NULL), 0);
	wait_for(&r);
	assert_true(r.rep.ok);
	assert_int_equal(r.rep.attempts, 3);
	assert_string_equal(T.seen[2].method, "DELETE");
	assert_string_equal(T.seen[2].target, "/api/v4/projects/42/hooks/9");
	/* Exhausted: the sentence says how often it tried. */
	memset(&r, 0, sizeof r);
	T.nseen = 0;
	assert_int_equal(gitlab_delete_deploy_key(T.http, &c, 42, 7, on_done, &r, NULL), 0);
	wait_for(&r);
	assert_false(r.rep.ok);
	assert_int_equal(r.rep.status, 500);
	assert_int_equal(T.nseen, 3);
	assert_non_null(strstr(r.rep.message, "HTTP 500, 3 attempts"));
	assert_non_null(strstr(r.rep.message, "boom"));
}

static void test_delete_gone_is_done(void **state)
{
	(void)state;
	const struct answer a[] = {{404, "{\"message\":\"404 Deploy Key Not Found\"}", NULL}};
	script(a, 1);
	struct gitlab_conn c = conn();
	struct result r = {0};
	assert_int_equal(gitlab_delete_deploy_key(T.http, &c, 42, 7, on_done, &r, NULL), 0);
	wait_for(&r);
	assert_true(r.rep.ok);
	assert_int_equal(r.rep.status, 404);
}

static void test_unreachable(void **state)
{
	(void)state;
	struct gitlab_conn c = conn();
	c.base_url = "http://127.0.0.1:1";
	struct result r = {0};
	assert_int_equal(gitlab_get_project(T.http, &c, "g/w", on_done, &r, NULL), 0);
	wait_for(&r);
	assert_false(r.rep.ok);
	assert_int_equal(r.rep.status, 0);
	assert_int_equal(r.rep.attempts, 3);
	assert_non_null(strstr(r.rep.message, "cannot reach GitLab at http://127.0.0.1:1/api/v4"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_api_base),
		cmocka_unit_test(test_error_detail),
		cmocka_unit_test(test_error_messages),
		cmocka_unit_test_setup_teardown(test_get_project, setup, teardown),
		cmocka_unit_test_setup_teardown(test_project_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_add_deploy_key_body, setup, teardown),
		cmocka_unit_test_setup_teardown(test_add_and_update_hook_body, setup, teardown),
		cmocka_unit_test_setup_teardown(test_find_pages, setup, teardown),
		cmocka_unit_test_setup_teardown(test_retry_after_429, setup, teardown),
		cmocka_unit_test_setup_teardown(test_retry_5xx, setup, teardown),
		cmocka_unit_test_setup_teardown(test_delete_gone_is_done, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unreachable, setup, teardown),
	};
	return cmocka_run_group_tests_name("gitlab", tests, NULL, NULL);
}
