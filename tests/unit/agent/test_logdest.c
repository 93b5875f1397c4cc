/*
 * logdest, coordinator side: the request (docs/protocol.md "Logs (embedded
 * mode)"), the agent id and token asked of the identity callback (the
 * coordinator client in the agent) before every request, so a new token
 * after a 401 is used at once, retries (5xx, 429 with Retry-After), and what
 * is final (400).
 * Against a scripted server in this process (common/httpd).
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
#include <unistd.h>

#include "http_client.h"
#include "httpd.h"
#include "json.h"
#include "log.h"
#include "logdest.h"

struct answer {
	int status;
	const char *body;
	const char *retry_after;
	const char *rotate_token;   /* the client registers again: a new token */
};

struct fix {
	struct ev_loop *loop;
	struct http_client *http;
	struct httpd *srv;
	struct logdest *d;
	char agent_id[64];
	char token[128];
	int identity_calls;
	char url[64];
	const struct answer *script;
	size_t nscript, next;
	char paths[8][128];
	char auths[8][128];
	char proto[8][16];
	char *body;
	size_t seen;
	int done;
	struct logdest_result res;
};

/* As the coordinator client does after a registration. */
static void write_identity(struct fix *f, const char *token)
{
	snprintf(f->agent_id, sizeof f->agent_id, "%s", *token ? "ag_test" : "");
	snprintf(f->token, sizeof f->token, "%s", token);
}

static void identity(void *ctx, const char **agent_id, const char **token)
{
	struct fix *f = ctx;
	f->identity_calls++;
	*agent_id = f->agent_id;
	*token = f->token;
}

static void handler(struct httpd_req *req, void *arg)
{
	struct fix *f = arg;
	if (f->seen < 8) {
		const char *v;
		snprintf(f->paths[f->seen], sizeof f->paths[0], "%s %s", req->method, req->path);
		snprintf(f->auths[f->seen], sizeof f->auths[0], "%s",
			 (v = httpd_req_header(req, "Authorization")) ? v : "");
		snprintf(f->proto[f->seen], sizeof f->proto[0], "%s",
			 (v = httpd_req_header(req, "Slipway-Protocol")) ? v : "");
	}
	f->seen++;
	free(f->body);
	f->body = strdup(req->body);
	const struct answer *a = f->next < f->nscript ? &f->script[f->next++] : NULL;
	if (a && a->rotate_token)
		write_identity(f, a->rotate_token);
	int status = a ? a->status : 200;
	const char *body = a && a->body ? a->body : "{\"accepted\":1,\"rejected\":0}";
	if (a && a->retry_after)
		httpd_add_header(req, "Retry-After", a->retry_after);
	httpd_respond(req, status, "application/json", body, strlen(body));
}

static int setup(void **state)
{
	struct fix *f = calloc(1, sizeof *f);
	log_init("test", LOG_LEVEL_ERROR, 0);
	f->loop = ev_loop_new(EVFLAG_AUTO);
	f->http = http_client_new(f->loop);
	struct httpd_config hc = {.listen = "127.0.0.1:0", .handler = handler, .arg = f,
				  .body_max = (size_t)8 << 20};
	f->srv = httpd_new(f->loop, &hc, NULL);
	assert_non_null(f->srv);
	snprintf(f->url, sizeof f->url, "http://127.0.0.1:%d", httpd_port(f->srv));
	struct logdest_coord_opts o = {.loop = f->loop, .http = f->http, .url = f->url,
				       .identity = identity, .identity_ctx = f, .retry_base_ms = 1,
				       .retry_cap_ms = 5, .timeout_ms = 5000};
	f->d = logdest_coordinator(&o, NULL);
	assert_non_null(f->d);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fix *f = *state;
	logdest_free(f->d);
	httpd_free(f->srv);
	http_client_free(f->http);
	ev_loop_destroy(f->loop);
	free(f->body);
	free(f);
	return 0;
}

static void on_done(const struct logdest_result *res, void *arg)
{
	struct fix *f = arg;
	f->done++;
	f->res = *res;
}

static void make_batch(struct logbatch *b)
{
	logbatch_init(b);
	logbatch_add(b, 1795600000000LL, 1, "GET / 200", 9, 9, 0);
	logbatch_add(b, 1795600000001LL, 2, "oops \"quoted\"", 13, 15, 0);
}

static const struct logdest_stream NAMES = {"/slipway/web", "web/i/3f9a1c2b4d5e", "web", "web",
					    "3f9a1c2b4d5e", "r_12"};

static void do_send(struct fix *f, const struct answer *script, size_t n)
{
	f->script = script;
	f->nscript = n;
	struct logbatch b;
	make_batch(&b);
	assert_true(logdest_send(f->d, &NAMES, &b, on_done, f) > 0);
	assert_int_equal(f->done, 0);
	for (int i = 0; i < 5000 && !f->done; i++)
		ev_run(f->loop, EVRUN_ONCE);
	assert_int_equal(f->done, 1);
	logbatch_free(&b);
}

static void test_body(void **state)
{
	(void)state;
	struct logbatch b;
	make_batch(&b);
	struct buf out;
	buf_init(&out, 0);
	assert_int_equal(logdest_coord_body(&out, &NAMES, &b), 0);
	assert_string_equal(out.data,
			    "{\"streams\":[{\"app\":\"web\",\"service\":\"web\",\"container\":"
			    "\"3f9a1c2b4d5e\",\"release\":\"r_12\",\"events\":[{\"ts_ms\":"
			    "1795600000000,\"stream\":\"stdout\",\"message\":\"GET / 200\"},{\"ts_ms\":"
			    "1795600000001,\"stream\":\"stderr\",\"message\":\"oops \\\"quoted\\\"\"}]}]}");
	buf_free(&out);
	logbatch_free(&b);
}

static void test_sends_with_token(void **state)
{
	struct fix *f = *state;
	write_identity(f, "tok-1");
	static const struct answer s[] = {{200, "{\"accepted\":1,\"rejected\":1}", NULL, NULL}};
	do_send(f, s, 1);
	assert_int_equal(f->res.status, LOGDEST_OK);
	assert_int_equal(f->res.rejected, 1);
	assert_string_equal(f->paths[0], "POST /v1/agents/ag_test/logs");
	assert_string_equal(f->auths[0], "Bearer tok-1");
	assert_string_equal(f->proto[0], "1");
	cJSON *doc = json_parse(f->body, strlen(f->body), 1 << 20, NULL);
	assert_non_null(doc);
	cJSON_Delete(doc);
	assert_true(logdest_limits(f->d)->max_json > 0 &&
		    logdest_limits(f->d)->max_json <= ((size_t)4 << 20));
	assert_false(logdest_is_cloudwatch(f->d));
}

/* 401: the coordinator client registered again; the new token is used. */
static void test_token_rotated(void **state)
{
	struct fix *f = *state;
	write_identity(f, "tok-old");
	static const struct answer s[] = {{401, "{\"error\":{\"code\":\"unauthorized\"}}", NULL,
					   "tok-new"},
					  {200, NULL, NULL, NULL}};
	do_send(f, s, 2);
	assert_int_equal(f->res.status, LOGDEST_OK);
	assert_string_equal(f->auths[0], "Bearer tok-old");
	assert_string_equal(f->auths[1], "Bearer tok-new");
}

/* The token is asked for per request, not kept: one that changed between
 * two batches (a registration elsewhere) is used by the next one. */
static void test_token_asked_per_request(void **state)
{
	struct fix *f = *state;
	write_identity(f, "tok-a");
	do_send(f, NULL, 0);
	assert_int_equal(f->res.status, LOGDEST_OK);
	write_identity(f, "tok-b");
	f->done = 0;
	do_send(f, NULL, 0);
	assert_int_equal(f->res.status, LOGDEST_OK);
	assert_string_equal(f->auths[0], "Bearer tok-a");
	assert_string_equal(f->auths[1], "Bearer tok-b");
	assert_int_equal(f->identity_calls, 2);
}

static void test_retries_then_unreachable(void **state)
{
	struct fix *f = *state;
	write_identity(f, "tok");
	static const struct answer s1[] = {{503, "{}", NULL, NULL}, {200, NULL, NULL, NULL}};
	do_send(f, s1, 2);
	assert_int_equal(f->res.status, LOGDEST_OK);
	assert_int_equal(f->res.attempts, 2);
	f->done = 0;
	f->next = 0;
	static const struct answer s2[] = {{500, "{}", NULL, NULL}, {502, "{}", NULL, NULL}};
	do_send(f, s2, 2);
	assert_int_equal(f->res.status, LOGDEST_UNREACHABLE);
	f->done = 0;
	f->next = 0;
	/* 429 waits for Retry-After (0 s here) and does not count as unreachable. */
	static const struct answer s3[] = {{429, "{}", "0", NULL}, {429, "{}", "0", NULL},
					   {429, "{}", "0", NULL}, {200, NULL, NULL, NULL}};
	do_send(f, s3, 4);
	assert_int_equal(f->res.status, LOGDEST_OK);
	assert_int_equal(f->res.throttled, 3);
}

static void test_refused_and_unregistered(void **state)
{
	struct fix *f = *state;
	write_identity(f, "tok");
	static const struct answer s[] = {{400, "{\"error\":{\"code\":\"bad_request\"}}", NULL, NULL}};
	do_send(f, s, 1);
	assert_int_equal(f->res.status, LOGDEST_REFUSED);
	assert_int_equal(f->seen, 1);
	/* No identity yet (not registered): nothing is sent, the batch waits (spool). */
	write_identity(f, "");
	f->done = 0;
	f->seen = 0;
	do_send(f, NULL, 0);
	assert_int_equal(f->res.status, LOGDEST_UNREACHABLE);
	assert_int_equal(f->seen, 0);
	assert_non_null(strstr(f->res.message, "not registered"));
}

static void test_metrics_post(void **state)
{
	struct fix *f = *state;
	write_identity(f, "tok");
	const char *body = "{\"metrics\":[{\"name\":\"x\",\"value\":1}]}";
	assert_true(logdest_post_metrics(f->d, body, strlen(body), on_done, f) > 0);
	for (int i = 0; i < 5000 && !f->done; i++)
		ev_run(f->loop, EVRUN_ONCE);
	assert_int_equal(f->res.status, LOGDEST_OK);
	assert_string_equal(f->paths[0], "POST /v1/agents/ag_test/metrics");
	assert_string_equal(f->body, body);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_body),
		T(test_sends_with_token),
		T(test_token_rotated),
		T(test_token_asked_per_request),
		T(test_retries_then_unreachable),
		T(test_refused_and_unregistered),
		T(test_metrics_post),
	};
	return cmocka_run_group_tests_name("logdest", tests, NULL, NULL);
}
