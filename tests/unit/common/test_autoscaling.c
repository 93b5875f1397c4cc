/*
 * autoscaling (and awsquery's signed client under it) against
 * tests/fakes/autoscaling.py, which checks every SigV4 signature
 * independently: CompleteLifecycleAction and RecordLifecycleActionHeartbeat
 * reach the fake's lifecycle action; no action in progress is a final
 * ValidationError; throttling, ResourceContention, 500s and dropped
 * connections are retried with backoff up to max_attempts; an answer lost
 * after the action happened ends in ValidationError (the caller's "already
 * done"); an expired session token is refreshed once; a skewed clock is
 * corrected once; arguments are checked before anything is sent.
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
#include <unistd.h>

#include "autoscaling.h"
#include "fakeproc.h"
#include "http_client.h"
#include "json.h"
#include "log.h"

#define AKID "AKIDFAKEAUTOSCALING1"
#define SECRET "fake-autoscaling-secret"
#define GROUP "slipway-agents"
#define HOOK "slipway-drain"
#define INSTANCE "i-0123456789abcdef0"

/* ---- fixture ---- */

struct fx {
	struct fakeproc as;
	struct ev_loop *loop;
	struct http_client *http;
	struct aws_credentials_provider *creds;
	struct autoscaling *client;
};

static struct fx F;

static int setup(void **state)
{
	(void)state;
	memset(&F, 0, sizeof F);
	const char *args[] = {"--access-key", AKID, "--secret-key", SECRET, "--token", "tok-1",
			      NULL};
	assert_int_equal(fakeproc_start(&F.as, "autoscaling.py", args), 0);
	setenv("AWS_ACCESS_KEY_ID", AKID, 1);
	setenv("AWS_SECRET_ACCESS_KEY", SECRET, 1);
	setenv("AWS_SESSION_TOKEN", "tok-1", 1);
	F.loop = ev_loop_new(EVFLAG_AUTO);
	F.http = http_client_new(F.loop);
	struct aws_credentials_opts co = {.no_file = 1, .no_imds = 1};
	struct err err;
	F.creds = aws_credentials_new(F.loop, F.http, &co, &err);
	if (!F.creds)
		fail_msg("%s", err.msg);
	struct autoscaling_opts o = {.region = "us-east-1", .endpoint = F.as.base,
				     .timeout_ms = 2000, .retry_base_ms = 10, .retry_cap_ms = 50,
				     .max_attempts = 4};
	F.client = autoscaling_new(F.loop, F.http, F.creds, &o, &err);
	if (!F.client)
		fail_msg("%s", err.msg);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	autoscaling_free(F.client);
	aws_credentials_free(F.creds);
	http_client_free(F.http);
	ev_loop_destroy(F.loop);
	fakeproc_stop(&F.as);
	return 0;
}

struct res {
	int done;
	enum awsquery_status status;
	char code[128];
	int attempts, throttled;
};

static void on_done(const struct awsquery_result *r, void *arg)
{
	struct res *x = arg;
	x->done++;
	x->status = r->status;
	snprintf(x->code, sizeof x->code, "%s", r->code);
	x->attempts = r->attempts;
	x->throttled = r->throttled;
}

static const struct autoscaling_lifecycle LC = {GROUP, HOOK, INSTANCE, NULL, NULL};

static void run(int complete, struct res *r)
{
	memset(r, 0, sizeof *r);
	struct err err = {{0}};
	uint64_t id = complete ? autoscaling_complete_lifecycle_action(F.client, &LC, on_done, r,
								       &err)
			       : autoscaling_record_lifecycle_heartbeat(F.client, &LC, on_done, r,
									&err);
	if (!id)
		fail_msg("not started: %s", err.msg);
	while (!r->done)
		ev_run(F.loop, EVRUN_ONCE);
	assert_int_equal(r->done, 1);
	assert_int_equal(autoscaling_pending(F.client), 0);
}

static void start_action(void)
{
	free(fakeproc_http(&F.as, "POST", "/_fake/lifecycle",
		      "{\"group\":\"" GROUP "\",\"hook\":\"" HOOK "\",\"instance_id\":\"" INSTANCE
		      "\"}"));
}

/* The state of the last action at the fake, and its heartbeat count. */
static void action_state(char *state_out, size_t cap, int *heartbeats)
{
	char *body = fakeproc_http(&F.as, "GET", "/_fake/lifecycle", NULL);
	cJSON *doc = json_parse(body, strlen(body), 1 << 20, NULL);
	assert_non_null(doc);
	const cJSON *arr = cJSON_GetObjectItem(doc, "actions");
	const cJSON *a = cJSON_GetArrayItem(arr, cJSON_GetArraySize(arr) - 1);
	assert_non_null(a);
	snprintf(state_out, cap, "%s", cJSON_GetObjectItem(a, "state")->valuestring);
	*heartbeats = cJSON_GetObjectItem(a, "heartbeats")->valueint;
	cJSON_Delete(doc);
	free(body);
}

static int heartbeat_requests(void)
{
	char *body = fakeproc_http(&F.as, "GET", "/_fake/stats", NULL);
	cJSON *doc = json_parse(body, strlen(body), 1 << 20, NULL);
	assert_non_null(doc);
	const cJSON *n = cJSON_GetObjectItem(cJSON_GetObjectItem(doc, "requests"),
					     "RecordLifecycleActionHeartbeat");
	int v = n ? n->valueint : 0;
	cJSON_Delete(doc);
	free(body);
	return v;
}

static void test_lifecycle(void **state)
{
	(void)state;
	struct res r;
	char st[32];
	int hb;
	/* Nothing in progress: a final ValidationError, one attempt. */
	run(1, &r);
	assert_int_equal(r.status, AWSQUERY_FAILED);
	assert_string_equal(r.code, "ValidationError");
	assert_int_equal(r.attempts, 1);
	start_action();
	run(0, &r);
	assert_int_equal(r.status, AWSQUERY_OK);
	run(0, &r);
	assert_int_equal(r.status, AWSQUERY_OK);
	action_state(st, sizeof st, &hb);
	assert_string_equal(st, "pending");
	assert_int_equal(hb, 2);
	run(1, &r);
	assert_int_equal(r.status, AWSQUERY_OK);
	assert_int_equal(r.attempts, 1);
	action_state(st, sizeof st, &hb);
	assert_string_equal(st, "CONTINUE");
	/* Once completed, it is gone. */
	run(1, &r);
	assert_int_equal(r.status, AWSQUERY_FAILED);
	assert_string_equal(r.code, "ValidationError");
}

static void test_retries(void **state)
{
	(void)state;
	struct res r;
	char st[32];
	int hb;
	start_action();
	free(fakeproc_http(&F.as, "POST", "/_fake/fault", "{\"kind\":\"throttle\",\"count\":2}"));
	free(fakeproc_http(&F.as, "POST", "/_fake/fault", "{\"kind\":\"contention\",\"count\":1}"));
	run(0, &r);
	assert_int_equal(r.status, AWSQUERY_OK);
	assert_int_equal(r.attempts, 4);
	assert_int_equal(r.throttled, 2);
	/* 500s past max_attempts: unreachable, the action untouched. */
	free(fakeproc_http(&F.as, "POST", "/_fake/fault", "{\"kind\":\"error500\",\"count\":4}"));
	run(1, &r);
	assert_int_equal(r.status, AWSQUERY_UNREACHABLE);
	assert_string_equal(r.code, "InternalFailure");
	assert_int_equal(r.attempts, 4);
	action_state(st, sizeof st, &hb);
	assert_string_equal(st, "pending");
	/* A dropped connection before the action: retried, done. (On a reused
	 * connection curl itself may send it again, so the fake counts.) */
	int before = heartbeat_requests();
	free(fakeproc_http(&F.as, "POST", "/_fake/fault", "{\"kind\":\"drop\",\"count\":1}"));
	run(0, &r);
	assert_int_equal(r.status, AWSQUERY_OK);
	assert_int_equal(heartbeat_requests(), before + 2);
	/* The answer lost after the action happened: the retry finds nothing to
	 * complete (the caller counts that ValidationError as done). */
	free(fakeproc_http(&F.as, "POST", "/_fake/fault", "{\"kind\":\"drop_after\",\"count\":1}"));
	run(1, &r);
	assert_int_equal(r.status, AWSQUERY_FAILED);
	assert_string_equal(r.code, "ValidationError");
	action_state(st, sizeof st, &hb);
	assert_string_equal(st, "CONTINUE");
}

static void test_credentials_and_clock(void **state)
{
	(void)state;
	struct res r;
	start_action();
	/* The session token expires; the environment has the new one by now. */
	char *b = fakeproc_http(&F.as, "POST", "/_fake/fault",
			   "{\"kind\":\"expired_token\",\"new_token\":\"tok-2\"}");
	free(b);
	run(0, &r);
	assert_int_equal(r.status, AWSQUERY_UNREACHABLE); /* old token, then the same again */
	setenv("AWS_SESSION_TOKEN", "tok-2", 1);
	run(0, &r);
	assert_int_equal(r.status, AWSQUERY_OK);
	assert_int_equal(r.attempts, 2); /* ExpiredToken, refresh, success */
	/* The fake's clock is 20 minutes ahead: one re-signed attempt. */
	free(fakeproc_http(&F.as, "POST", "/_fake/fault", "{\"kind\":\"skew\",\"offset_s\":1200}"));
	run(0, &r);
	assert_int_equal(r.status, AWSQUERY_OK);
	assert_int_equal(r.attempts, 2);
	free(fakeproc_http(&F.as, "POST", "/_fake/clear", NULL));
}

static void test_arguments(void **state)
{
	(void)state;
	struct err err;
	struct res r = {0};
	struct autoscaling_lifecycle bad = LC;
	bad.hook = "drain hook";
	assert_int_equal(autoscaling_complete_lifecycle_action(F.client, &bad, on_done, &r, &err),
			 0);
	assert_non_null(strstr(err.msg, "hook"));
	bad = LC;
	bad.instance_id = "I-0123";
	assert_int_equal(autoscaling_record_lifecycle_heartbeat(F.client, &bad, on_done, &r, &err),
			 0);
	bad = LC;
	bad.result = "STOP";
	assert_int_equal(autoscaling_complete_lifecycle_action(F.client, &bad, on_done, &r, &err),
			 0);
	bad = LC;
	bad.token = "not-a-uuid";
	assert_int_equal(autoscaling_complete_lifecycle_action(F.client, &bad, on_done, &r, &err),
			 0);
	bad.token = "bcd2f1b8-9a78-44d3-8a7a-4dd07d7cf635";
	assert_int_equal(autoscaling_check_lifecycle(&bad, 1, &err), 0);
	/* Cancelled: no callback, nothing pending. */
	uint64_t id = autoscaling_complete_lifecycle_action(F.client, &LC, on_done, &r, &err);
	assert_true(id > 0);
	autoscaling_cancel(F.client, id);
	assert_int_equal(autoscaling_pending(F.client), 0);
	ev_run(F.loop, EVRUN_NOWAIT);
	assert_int_equal(r.done, 0);
	/* Freed with a call in flight: no callback, no leak. */
	id = autoscaling_record_lifecycle_heartbeat(F.client, &LC, on_done, &r, &err);
	assert_true(id > 0);
}

int main(void)
{
	log_init("test_autoscaling", LOG_LEVEL_ERROR, 0);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_lifecycle, setup, teardown),
		cmocka_unit_test_setup_teardown(test_retries, setup, teardown),
		cmocka_unit_test_setup_teardown(test_credentials_and_clock, setup, teardown),
		cmocka_unit_test_setup_teardown(test_arguments, setup, teardown),
	};
	return cmocka_run_group_tests_name("autoscaling", tests, NULL, NULL);
}
