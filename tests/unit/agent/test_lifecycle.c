/*
 * lifecycle: the scale-in drain against tests/fakes/imds.py (the lifecycle
 * state, spot notices, the group's name tag, the instance id) and
 * tests/fakes/autoscaling.py (the hook's action, signatures checked), with
 * stand-in steps that record their order: a "Terminated" state runs
 * unhealthy, the deregistration wait, drain, stop and the log flush in that
 * order and only then completes the action; heartbeats keep a slow drain
 * alive; a spot notice drains without completing anything until a hook
 * shows up; a step that never reports is passed by; Auto Scaling down for a
 * while is retried; an action that no longer exists counts as done.
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

#include "aws_credentials.h"
#include "clock.h"
#include "fakeproc.h"
#include "http_client.h"
#include "json.h"
#include "lifecycle.h"
#include "log.h"

#define AKID "AKIDFAKEAUTOSCALING1"
#define SECRET "fake-autoscaling-secret"
#define GROUP "slipway-test-agents"
#define HOOK "slipway-drain"
#define INSTANCE "i-0123456789abcdef0"

/* ---- fixture ---- */

struct fx {
	struct fakeproc imds, as;
	struct ev_loop *loop;
	struct http_client *http;
	struct aws_credentials_provider *creds;
	struct lifecycle *lc;
	char order[256];          /* the steps as they ran: "U D S F" */
	uint64_t pending_step;    /* a step held back by the test */
	int hold_ms;              /* how long each step takes */
	bool never_flush;         /* the flush step never reports */
	ev_timer step_timer;
};

static struct fx F;

static void record(const char *what)
{
	size_t n = strlen(F.order);
	snprintf(F.order + n, sizeof F.order - n, "%s%s", n ? " " : "", what);
}

static void report(struct ev_loop *loop, ev_timer *t, int revents)
{
	(void)loop;
	(void)revents;
	(void)t;
	lifecycle_step_done(F.lc, F.pending_step);
}

static void later(struct lifecycle *lc, uint64_t step)
{
	(void)lc;
	F.pending_step = step;
	ev_timer_set(&F.step_timer, F.hold_ms / 1000.0, 0.0);
	ev_timer_start(F.loop, &F.step_timer);
}

static void s_unhealthy(void *ctx, struct lifecycle *lc, uint64_t step)
{
	(void)ctx;
	record("U");
	later(lc, step);
}

static void s_drain(void *ctx, struct lifecycle *lc, uint64_t step, int64_t timeout_ms)
{
	(void)ctx;
	assert_true(timeout_ms > 0);
	record("D");
	later(lc, step);
}

static void s_stop(void *ctx, struct lifecycle *lc, uint64_t step, int64_t timeout_ms)
{
	(void)ctx;
	(void)timeout_ms;
	record("S");
	later(lc, step);
}

static void s_flush(void *ctx, struct lifecycle *lc, uint64_t step, int64_t timeout_ms)
{
	(void)ctx;
	(void)timeout_ms;
	record("F");
	if (!F.never_flush)
		later(lc, step);
}

static void make(int64_t heartbeat_ms, bool spot, const char *group)
{
	struct lifecycle_opts o = {
		.loop = F.loop, .http = F.http, .creds = F.creds, .region = "us-east-1",
		.autoscaling_endpoint = F.as.base, .imds_endpoint = F.imds.base,
		.group_name = group, .hook_name = HOOK, .instance_id = NULL, .watch_spot = spot,
		.poll_interval_ms = 50, .deregistration_delay_ms = 200, .drain_timeout_ms = 300,
		.stop_timeout_ms = 300, .log_flush_timeout_ms = 300,
		.heartbeat_interval_ms = heartbeat_ms, .step_margin_ms = 200,
		.steps = {s_unhealthy, s_drain, s_stop, s_flush, NULL},
	};
	struct err err;
	F.lc = lifecycle_new(&o, &err);
	if (!F.lc)
		fail_msg("%s", err.msg);
	lifecycle_start(F.lc);
}

static int setup(void **state)
{
	(void)state;
	memset(&F, 0, sizeof F);
	const char *ia[] = {"--instance-id", INSTANCE, NULL};
	assert_int_equal(fakeproc_start(&F.imds, "imds.py", ia), 0);
	const char *aa[] = {"--access-key", AKID, "--secret-key", SECRET, NULL};
	assert_int_equal(fakeproc_start(&F.as, "autoscaling.py", aa), 0);
	setenv("AWS_ACCESS_KEY_ID", AKID, 1);
	setenv("AWS_SECRET_ACCESS_KEY", SECRET, 1);
	unsetenv("AWS_SESSION_TOKEN");
	F.loop = ev_default_loop(0);
	F.http = http_client_new(F.loop);
	struct aws_credentials_opts co = {.no_file = 1, .no_imds = 1};
	struct err err;
	F.creds = aws_credentials_new(F.loop, F.http, &co, &err);
	ev_timer_init(&F.step_timer, report, 0.0, 0.0);
	F.hold_ms = 20;
	/* The group's name comes from the instance's tags. */
	free(fakeproc_http(&F.imds, "POST", "/_control",
			   "{\"tags\":{\"aws:autoscaling:groupName\":\"" GROUP "\"}}"));
	return F.creds ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	ev_timer_stop(F.loop, &F.step_timer);
	lifecycle_free(F.lc);
	aws_credentials_free(F.creds);
	http_client_free(F.http);
	fakeproc_stop(&F.imds);
	fakeproc_stop(&F.as);
	return 0;
}

/* The fake's last action as a parsed object (caller frees doc). */
static const cJSON *action(cJSON **doc)
{
	char *body = fakeproc_http(&F.as, "GET", "/_fake/lifecycle", NULL);
	*doc = json_parse(body, strlen(body), 1 << 20, NULL);
	free(body);
	assert_non_null(*doc);
	const cJSON *arr = cJSON_GetObjectItem(*doc, "actions");
	return cJSON_GetArrayItem(arr, cJSON_GetArraySize(arr) - 1);
}

static void start_hook(void)
{
	free(fakeproc_http(&F.as, "POST", "/_fake/lifecycle", "{\"group\":\"" GROUP "\",\"hook\":\""
		      HOOK "\",\"instance_id\":\"" INSTANCE "\"}"));
	free(fakeproc_http(&F.imds, "POST", "/_control", "{\"lifecycle_state\":\"Terminated\"}"));
}

static void run_until(enum lifecycle_state st, int64_t max_ms)
{
	int64_t end = clock_mono_ms() + max_ms;
	while (lifecycle_get_state(F.lc) != st && clock_mono_ms() < end)
		ev_run(F.loop, EVRUN_ONCE);
	if (lifecycle_get_state(F.lc) != st)
		fail_msg("state %s, not %s, after %lld ms (steps: %s)",
			 lifecycle_state_name(lifecycle_get_state(F.lc)), lifecycle_state_name(st),
			 (long long)max_ms, F.order);
}

static void test_hook(void **state)
{
	(void)state;
	make(100, true, NULL);
	/* In service: nothing happens. */
	int64_t end = clock_mono_ms() + 300;
	while (clock_mono_ms() < end)
		ev_run(F.loop, EVRUN_ONCE);
	assert_int_equal(lifecycle_get_state(F.lc), LIFECYCLE_WATCHING);
	assert_string_equal(F.order, "");
	F.hold_ms = 150; /* a slow drain: heartbeats keep the hook alive */
	int64_t t0 = clock_mono_ms();
	start_hook();
	run_until(LIFECYCLE_DONE, 10000);
	int64_t took = clock_mono_ms() - t0;
	assert_string_equal(F.order, "U D S F");
	/* The deregistration delay was waited out between the first two steps. */
	assert_true(took >= 200 + 4 * 150);
	assert_true(lifecycle_completed(F.lc));
	cJSON *doc;
	const cJSON *a = action(&doc);
	assert_string_equal(cJSON_GetObjectItem(a, "state")->valuestring, "CONTINUE");
	assert_true(cJSON_GetObjectItem(a, "heartbeats")->valueint >= 2);
	assert_int_equal(cJSON_GetObjectItem(a, "heartbeats")->valueint,
			 lifecycle_heartbeats(F.lc));
	cJSON_Delete(doc);
}

static void test_spot_then_hook(void **state)
{
	(void)state;
	make(60000, true, GROUP);
	free(fakeproc_http(&F.imds, "POST", "/_control", "{\"spot_action\":{\"in_s\":120}}"));
	run_until(LIFECYCLE_DONE, 10000);
	assert_string_equal(F.order, "U D S F");
	assert_false(lifecycle_completed(F.lc)); /* no hook ran: nothing to complete */
	/* The group starts a termination hook after all: it is completed. */
	start_hook();
	int64_t end = clock_mono_ms() + 5000;
	while (!lifecycle_completed(F.lc) && clock_mono_ms() < end)
		ev_run(F.loop, EVRUN_ONCE);
	assert_true(lifecycle_completed(F.lc));
	assert_string_equal(F.order, "U D S F"); /* not drained twice */
	cJSON *doc;
	assert_string_equal(cJSON_GetObjectItem(action(&doc), "state")->valuestring, "CONTINUE");
	cJSON_Delete(doc);
}

static void test_stuck_step_and_retries(void **state)
{
	(void)state;
	make(60000, false, GROUP);
	F.never_flush = true;
	/* Auto Scaling answers 500 for a while: the completion is retried. */
	free(fakeproc_http(&F.as, "POST", "/_fake/fault", "{\"kind\":\"error500\",\"count\":4}"));
	start_hook();
	run_until(LIFECYCLE_DONE, 30000);
	assert_string_equal(F.order, "U D S F");
	assert_true(lifecycle_completed(F.lc));
	cJSON *doc;
	assert_string_equal(cJSON_GetObjectItem(action(&doc), "state")->valuestring, "CONTINUE");
	cJSON_Delete(doc);
}

static void test_no_action(void **state)
{
	(void)state;
	make(60000, false, GROUP);
	/* Terminated, but the action already ended (timed out): done all the same. */
	free(fakeproc_http(&F.imds, "POST", "/_control", "{\"lifecycle_state\":\"Terminated\"}"));
	run_until(LIFECYCLE_DONE, 10000);
	assert_true(lifecycle_completed(F.lc));
	assert_string_equal(F.order, "U D S F");
}

static void test_arguments(void **state)
{
	(void)state;
	struct lifecycle_opts o = {.loop = F.loop, .http = F.http, .creds = F.creds,
				   .region = "us-east-1", .hook_name = "bad hook",
				   .steps = {s_unhealthy, s_drain, s_stop, s_flush, NULL}};
	struct err err;
	assert_null(lifecycle_new(&o, &err));
	assert_non_null(strstr(err.msg, "hook"));
	o.hook_name = HOOK;
	o.steps.flush_logs = NULL;
	assert_null(lifecycle_new(&o, &err));
}

int main(void)
{
	log_init("test_lifecycle", LOG_LEVEL_ERROR, 0);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_hook, setup, teardown),
		cmocka_unit_test_setup_teardown(test_spot_then_hook, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stuck_step_and_retries, setup, teardown),
		cmocka_unit_test_setup_teardown(test_no_action, setup, teardown),
		cmocka_unit_test_setup_teardown(test_arguments, setup, teardown),
	};
	return cmocka_run_group_tests_name("lifecycle", tests, NULL, NULL);
}
