/*
 * imds: IMDSv2 against tests/fakes/imds.py started as a subprocess: the token
 * PUT before the first GET and its reuse after, a revoked token replaced once,
 * statuses handed through, retries, IMDS down, one request at a time,
 * cancellation, and where the endpoint comes from.
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
#include <sys/wait.h>
#include <unistd.h>

#include "fakeproc.h"
#include "http_client.h"
#include "imds.h"
#include "json.h"
#include "log.h"

struct fx {
	struct ev_loop *loop;
	struct http_client *http;
	struct fakeproc fake;
	struct backoff_policy fast;
};

static struct fx F;

static void fake_start(void)
{
	const char *args[] = {"--instance-id", "i-0feedc0ffee123456", NULL};
	assert_int_equal(fakeproc_start(&F.fake, "imds.py", args), 0);
}

static void fake_stop(void)
{
	fakeproc_stop(&F.fake);
}

/* A blocking control request; returns the parsed answer (GET) or NULL. */
static cJSON *control(const char *body)
{
	cJSON *doc = fakeproc_json(&F.fake, body ? "POST" : "GET", "/_control", body);
	if (!body)
		return doc;
	cJSON_Delete(doc);
	return NULL;
}

static int64_t count(const char *name)
{
	cJSON *doc = control(NULL);
	assert_non_null(doc);
	const cJSON *v = cJSON_GetObjectItem(cJSON_GetObjectItem(doc, "counts"), name);
	int64_t n = cJSON_IsNumber(v) ? (int64_t)v->valuedouble : -1;
	cJSON_Delete(doc);
	return n;
}

static int setup(void **state)
{
	(void)state;
	memset(&F, 0, sizeof F);
	unsetenv("AWS_EC2_METADATA_SERVICE_ENDPOINT");
	unsetenv("AWS_EC2_METADATA_DISABLED");
	log_init("test", LOG_LEVEL_ERROR, 0);
	F.loop = ev_loop_new(EVFLAG_AUTO);
	F.http = http_client_new(F.loop);
	F.fast = (struct backoff_policy){10, 50, 3};
	fake_start();
	return F.loop && F.http ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	fake_stop();
	http_client_free(F.http);
	ev_loop_destroy(F.loop);
	unsetenv("AWS_EC2_METADATA_SERVICE_ENDPOINT");
	unsetenv("AWS_EC2_METADATA_DISABLED");
	return 0;
}

struct got {
	int done;
	long status;
	char error[256];
	char body[256];
	int has_error;
};

static void on_done(const struct imds_result *r, void *arg)
{
	struct got *g = arg;
	g->done++;
	g->has_error = r->error != NULL;
	snprintf(g->error, sizeof g->error, "%s", r->error ? r->error : "");
	snprintf(g->body, sizeof g->body, "%s", r->body);
	g->status = r->status;
}

static void get_wait(struct imds *m, const char *path, struct got *g)
{
	memset(g, 0, sizeof *g);
	assert_int_equal(imds_get(m, path, on_done, g), 0);
	assert_int_equal(g->done, 0); /* never inside imds_get */
	for (int i = 0; i < 100000 && !g->done; i++)
		ev_run(F.loop, EVRUN_ONCE);
	assert_int_equal(g->done, 1);
}

static struct imds *client(void)
{
	struct imds_opts o = {.endpoint = F.fake.base, .timeout_ms = 5000, .retry = &F.fast};
	struct imds *m = imds_new(F.http, &o, NULL);
	assert_non_null(m);
	return m;
}

static void test_instance_id_and_token_reuse(void **state)
{
	(void)state;
	struct imds *m = client();
	struct got g;
	get_wait(m, "/latest/meta-data/instance-id", &g);
	assert_false(g.has_error);
	assert_int_equal(g.status, 200);
	assert_string_equal(g.body, "i-0feedc0ffee123456");
	assert_int_equal(count("token"), 1);
	/* The token is kept for the next GET. */
	get_wait(m, "/latest/meta-data/placement/region", &g);
	assert_int_equal(g.status, 200);
	assert_int_equal(count("token"), 1);
	/* Revoked (the instance restarted, say): one new token, the GET again. */
	control("{\"revoke_tokens\":true}");
	get_wait(m, "/latest/meta-data/instance-id", &g);
	assert_int_equal(g.status, 200);
	assert_string_equal(g.body, "i-0feedc0ffee123456");
	assert_int_equal(count("token"), 2);
	assert_int_equal(count("unauthorized"), 1);
	/* Statuses other than 401 are the caller's to judge. */
	get_wait(m, "/latest/meta-data/no-such-thing", &g);
	assert_false(g.has_error);
	assert_int_equal(g.status, 404);
	imds_free(m);
}

static void test_retries_and_down(void **state)
{
	(void)state;
	struct imds *m = client();
	struct got g;
	control("{\"fail_next\":2}");
	get_wait(m, "/latest/meta-data/instance-id", &g);
	assert_int_equal(g.status, 200);
	assert_int_equal(count("failed"), 2);
	control("{\"fail_next\":100}");
	get_wait(m, "/latest/meta-data/instance-id", &g);
	assert_false(g.has_error); /* an answer, if a bad one */
	assert_int_equal(g.status, 500);
	imds_free(m);

	/* A fresh client must get a token first: with IMDS gone, that fails. */
	m = client();
	fake_stop();
	get_wait(m, "/latest/meta-data/instance-id", &g);
	assert_true(g.has_error);
	assert_non_null(strstr(g.error, "session token: "));
	assert_non_null(strstr(g.error, "connect"));
	imds_free(m);
}

static void test_one_at_a_time_and_cancel(void **state)
{
	(void)state;
	struct imds *m = client();
	struct got g = {0}, g2 = {0};
	assert_int_equal(imds_get(m, "/latest/meta-data/instance-id", on_done, &g), 0);
	assert_int_equal(imds_get(m, "/latest/meta-data/instance-id", on_done, &g2), -1);
	imds_cancel(m);
	for (int i = 0; i < 50; i++)
		ev_run(F.loop, EVRUN_NOWAIT);
	assert_int_equal(g.done, 0);
	get_wait(m, "/latest/meta-data/instance-id", &g);
	assert_int_equal(g.status, 200);
	assert_int_equal(imds_get(m, "no-slash", on_done, &g), -1);
	/* Freed in flight: no callback. */
	memset(&g, 0, sizeof g);
	assert_int_equal(imds_get(m, "/latest/meta-data/instance-id", on_done, &g), 0);
	imds_free(m);
	for (int i = 0; i < 50; i++)
		ev_run(F.loop, EVRUN_NOWAIT);
	assert_int_equal(g.done, 0);
}

static void test_endpoint(void **state)
{
	(void)state;
	struct imds *m = imds_new(F.http, NULL, NULL);
	assert_string_equal(imds_endpoint(m), "http://169.254.169.254");
	imds_free(m);
	setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", F.fake.base, 1);
	m = imds_new(F.http, NULL, NULL);
	assert_string_equal(imds_endpoint(m), F.fake.base);
	struct got g;
	get_wait(m, "/latest/meta-data/instance-id", &g);
	assert_string_equal(g.body, "i-0feedc0ffee123456");
	imds_free(m);
	struct err err;
	assert_null(imds_new(F.http, &(struct imds_opts){.endpoint = "169.254.169.254"}, &err));
	assert_non_null(strstr(err.msg, "not an http(s) URL"));
	assert_false(imds_disabled());
	setenv("AWS_EC2_METADATA_DISABLED", "TRUE", 1);
	assert_true(imds_disabled());
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_instance_id_and_token_reuse),
		T(test_retries_and_down),
		T(test_one_at_a_time_and_cancel),
		T(test_endpoint),
	};
	return cmocka_run_group_tests_name("imds", tests, NULL, NULL);
}
