/*
 * sqsqueue (agent): queue URLs to endpoints and regions; then against
 * tests/fakes/sqs.py as a child process (SigV4 checked there), with a fake
 * coordinator interface: a job message reaches on_job; an extend extends the
 * coordinator's lease and the message's visibility; an ack goes to the
 * coordinator first and the message is deleted after its answer (also a
 * final refusal), never before; every copy of a job delivered twice goes;
 * a body that is not a job is deleted unseen; receive failures are retried;
 * a queue that vanished calls on_queue_gone.
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
#include <ev.h>

#include "../../../agent/sqsqueue.h"
#include "aws_credentials.h"
#include "clock.h"
#include "fakeproc.h"
#include "http_client.h"
#include "json.h"
#include "log.h"
#include "sqs.h"

#define AKID "AKIDUNITAGENTSQS"
#define SECRET "unit-secret-for-the-agent-sqs-test"

static struct fakeproc fake;

static int group_setup(void **state)
{
	(void)state;
	log_init("test", LOG_LEVEL_ERROR, 0);
	setenv("AWS_ACCESS_KEY_ID", AKID, 1);
	setenv("AWS_SECRET_ACCESS_KEY", SECRET, 1);
	unsetenv("AWS_SESSION_TOKEN");
	const char *args[] = {"--access-key", AKID, "--secret-key", SECRET, "--region", "eu-west-1",
			      "--deleted-recently-s", "0", NULL};
	return fakeproc_start(&fake, "sqs.py", args);
}

static int group_teardown(void **state)
{
	(void)state;
	fakeproc_stop(&fake);
	return 0;
}

static cJSON *ctl(const char *method, const char *path, const char *body)
{
	return fakeproc_json(&fake, method, path, body);
}

/* Messages in queue name (any state). */
static int messages_in(const char *name)
{
	char path[160];
	snprintf(path, sizeof path, "/_fake/messages?queue=%s", name);
	cJSON *doc = ctl("GET", path, NULL);
	int n = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(doc, "messages"));
	cJSON_Delete(doc);
	return n;
}

/* Calls of action on queue name the fake recorded; the last one's
 * "visibility" into *vis when vis is not NULL. */
static int calls_of(const char *action, const char *name, int64_t *vis)
{
	char path[200];
	snprintf(path, sizeof path, "/_fake/calls?action=%s&queue=%s", action, name);
	cJSON *doc = ctl("GET", path, NULL);
	const cJSON *calls = cJSON_GetObjectItemCaseSensitive(doc, "calls");
	int n = cJSON_GetArraySize(calls);
	if (vis && n > 0) {
		const cJSON *v = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(calls, n - 1),
								  "visibility");
		*vis = cJSON_IsNumber(v) ? (int64_t)v->valuedouble : -1;
	}
	cJSON_Delete(doc);
	return n;
}

/* ---- fixture ---- */

struct t {
	struct ev_loop *loop;
	struct http_client *http;
	struct aws_credentials_provider *creds;
	struct sqs *sqs;            /* the test's own client: makes queues, sends */
	struct agent_sqs *q;
	ev_timer ticker;
	char endpoint[64];
	/* what reached the fake coordinator and on_job */
	int jobs, acks, extends, gone;
	char last_job[128];
	char last_ack_result[32];
	enum deployer_reply ack_answer;
	deployer_reply_fn ack_done;   /* held acks: answered by the test */
	void *ack_arg;
	bool hold_acks;
	int replies;
	enum deployer_reply last_reply;
	int done;
	enum sqs_status status;
	char url[512];
};

static void tick(struct ev_loop *l, ev_timer *w, int revents)
{
	(void)l;
	(void)w;
	(void)revents;
}

#define WAIT(t, cond)                                                  \
	do {                                                           \
		int64_t wait_deadline_ = clock_mono_ms() + 20000;      \
		while (!(cond) && clock_mono_ms() < wait_deadline_)    \
			ev_run((t)->loop, EVRUN_ONCE);                 \
	} while (0)

static void coord_ack(void *ctx, const struct deployer_ack *ack, deployer_reply_fn done, void *arg)
{
	struct t *t = ctx;
	t->acks++;
	snprintf(t->last_ack_result, sizeof t->last_ack_result, "%s", ack->result);
	if (t->hold_acks) {
		t->ack_done = done;
		t->ack_arg = arg;
		return;
	}
	done(t->ack_answer, arg);
}

static void coord_extend(void *ctx, const char *job_id, const char *lease_id, int64_t extend_s,
			 deployer_reply_fn done, void *arg)
{
	(void)job_id;
	(void)lease_id;
	(void)extend_s;
	struct t *t = ctx;
	t->extends++;
	done(DEPLOYER_REPLY_OK, arg);
}

static void on_job(const cJSON *job, void *arg)
{
	struct t *t = arg;
	t->jobs++;
	const cJSON *id = cJSON_GetObjectItemCaseSensitive(job, "id");
	snprintf(t->last_job, sizeof t->last_job, "%s", cJSON_IsString(id) ? id->valuestring : "");
}

static void on_gone(void *arg)
{
	struct t *t = arg;
	t->gone++;
}

static void on_reply(enum deployer_reply r, void *arg)
{
	struct t *t = arg;
	t->replies++;
	t->last_reply = r;
}

static void on_call(const struct sqs_result *res, void *arg)
{
	struct t *t = arg;
	t->done = 1;
	t->status = res->status;
	snprintf(t->url, sizeof t->url, "%s", res->queue_url ? res->queue_url : "");
}

static int setup(void **state)
{
	struct t *t = calloc(1, sizeof *t);
	t->loop = ev_loop_new(EVFLAG_AUTO);
	t->http = http_client_new(t->loop);
	snprintf(t->endpoint, sizeof t->endpoint, "http://127.0.0.1:%d", fake.port);
	struct err err = {{0}};
	struct aws_credentials_opts co = {.no_file = 1, .no_imds = 1};
	t->creds = aws_credentials_new(t->loop, t->http, &co, &err);
	struct sqs_opts so = {.region = "eu-west-1", .endpoint = t->endpoint, .retry_base_ms = 5};
	t->sqs = sqs_new(t->loop, t->http, t->creds, &so, &err);
	assert_non_null(t->sqs);
	struct agent_sqs_opts o = {
		.loop = t->loop, .http = t->http, .creds = t->creds,
		.coord = {.ack = coord_ack, .extend = coord_extend, .ctx = t},
		.on_job = on_job, .on_queue_gone = on_gone, .arg = t,
		.wait_s = 2, .retry_base_ms = 10, .retry_cap_ms = 50, .sqs_retry_base_ms = 5,
	};
	t->q = agent_sqs_new(&o, &err);
	assert_non_null(t->q);
	t->ack_answer = DEPLOYER_REPLY_OK;
	ev_timer_init(&t->ticker, tick, 0.01, 0.01);
	ev_timer_start(t->loop, &t->ticker);
	*state = t;
	return 0;
}

static int teardown(void **state)
{
	struct t *t = *state;
	ev_timer_stop(t->loop, &t->ticker);
	agent_sqs_free(t->q);
	sqs_free(t->sqs);
	aws_credentials_free(t->creds);
	http_client_free(t->http);
	ev_loop_destroy(t->loop);
	free(t);
	return 0;
}

/* Makes queue name; its URL in t->url. */
static void make_queue(struct t *t, const char *name)
{
	t->done = 0;
	const struct sqs_kv attrs[] = {{"VisibilityTimeout", "30"}};
	assert_true(sqs_create_queue(t->sqs, name, attrs, 1, NULL, 0, on_call, t) > 0);
	WAIT(t, t->done);
	assert_int_equal(t->status, SQS_OK);
}

static void send_body(struct t *t, const char *url, const char *body)
{
	struct sqs_send_entry e = {.id = "e1", .body = body, .body_len = strlen(body)};
	t->done = 0;
	assert_true(sqs_send_batch(t->sqs, url, &e, 1, on_call, t) > 0);
	WAIT(t, t->done);
	assert_int_equal(t->status, SQS_OK);
}

static const char JOB[] = "{\"id\":\"j_1\",\"type\":\"deploy\",\"app\":\"web\",\"generation\":3,"
			  "\"lease_id\":\"l_1\",\"lease_expires_in_s\":30,\"attempt\":1,"
			  "\"release\":{\"app\":\"web\"}}";

/* ---- tests ---- */

static void test_urls(void **state)
{
	(void)state;
	char out[128];
	assert_int_equal(agent_sqs_endpoint_of("https://sqs.eu-west-1.amazonaws.com/123456789012/"
					       "slipway-i-1", out, sizeof out), 0);
	assert_string_equal(out, "https://sqs.eu-west-1.amazonaws.com");
	assert_int_equal(agent_sqs_endpoint_of("http://127.0.0.1:4566/000000000000/q", out,
					       sizeof out), 0);
	assert_string_equal(out, "http://127.0.0.1:4566");
	assert_int_equal(agent_sqs_endpoint_of("ftp://x/y", out, sizeof out), -1);
	assert_int_equal(agent_sqs_endpoint_of("https://host-only", out, sizeof out), -1);
	assert_int_equal(agent_sqs_endpoint_of("https:///path", out, sizeof out), -1);
	assert_int_equal(agent_sqs_endpoint_of("https://a.b/c", out, 4), -1);
	assert_int_equal(agent_sqs_region_of("https://sqs.eu-west-1.amazonaws.com/1/q", out,
					     sizeof out), 0);
	assert_string_equal(out, "eu-west-1");
	assert_int_equal(agent_sqs_region_of("https://sqs.cn-north-1.amazonaws.com.cn/1/q", out,
					     sizeof out), 0);
	assert_string_equal(out, "cn-north-1");
	assert_int_equal(agent_sqs_region_of("http://127.0.0.1:4566/1/q", out, sizeof out), -1);
	assert_int_equal(agent_sqs_region_of("https://sqs..amazonaws.com/1/q", out, sizeof out), -1);
}

static void test_bad_queue(void **state)
{
	struct t *t = *state;
	struct err err = {{0}};
	assert_int_equal(agent_sqs_set_queue(t->q, "not a url", "eu-west-1", NULL, &err), -1);
	assert_non_null(strstr(err.msg, "queue_url"));
	assert_int_equal(agent_sqs_set_queue(t->q, "http://127.0.0.1:1/1/q", "", NULL, &err), -1);
	assert_non_null(strstr(err.msg, "queue_region"));
	assert_string_equal(agent_sqs_queue(t->q), "");
}

static void test_job_extend_ack_delete(void **state)
{
	struct t *t = *state;
	make_queue(t, "ag-one");
	char url[512];
	snprintf(url, sizeof url, "%s", t->url);
	struct err err = {{0}};
	assert_int_equal(agent_sqs_set_queue(t->q, url, "eu-west-1", NULL, &err), 0);
	assert_string_equal(agent_sqs_queue(t->q), url);
	send_body(t, url, JOB);
	WAIT(t, t->jobs == 1);
	assert_int_equal(t->jobs, 1);
	assert_string_equal(t->last_job, "j_1");
	/* A long swap: the coordinator's lease and the message's visibility. */
	agent_sqs_extend(t->q, "j_1", "l_1", 90, on_reply, t);
	WAIT(t, t->replies == 1);
	assert_int_equal(t->extends, 1);
	assert_int_equal(t->last_reply, DEPLOYER_REPLY_OK);
	struct agent_sqs_stats st;
	WAIT(t, (agent_sqs_stats(t->q, &st), st.extended == 1));
	int64_t vis = 0;
	assert_int_equal(calls_of("ChangeMessageVisibility", "ag-one", &vis), 1);
	assert_int_equal(vis, 90);
	/* The ack: the coordinator first, the message only after its answer. */
	t->hold_acks = true;
	struct deployer_ack ack = {.job_id = "j_1", .lease_id = "l_1", .result = "succeeded",
				   .generation = 3, .reason = "", .output_tail = ""};
	agent_sqs_ack(t->q, &ack, on_reply, t);
	WAIT(t, t->acks == 1);
	assert_string_equal(t->last_ack_result, "succeeded");
	assert_int_equal(messages_in("ag-one"), 1);
	assert_int_equal(calls_of("DeleteMessage", "ag-one", NULL), 0);
	t->ack_done(DEPLOYER_REPLY_OK, t->ack_arg);
	assert_int_equal(t->replies, 2);
	WAIT(t, (agent_sqs_stats(t->q, &st), st.deleted == 1));
	assert_int_equal(messages_in("ag-one"), 0);
	assert_int_equal(st.received, 1);
	assert_int_equal(st.deleted, 1);
	assert_int_equal(st.tracked, 0);
}

static void test_duplicates_and_final(void **state)
{
	struct t *t = *state;
	make_queue(t, "ag-dup");
	char url[512];
	snprintf(url, sizeof url, "%s", t->url);
	struct err err = {{0}};
	assert_int_equal(agent_sqs_set_queue(t->q, url, "eu-west-1", NULL, &err), 0);
	/* The same job twice (the coordinator sent it again after a lost lease). */
	send_body(t, url, JOB);
	send_body(t, url, JOB);
	WAIT(t, t->jobs == 2);
	assert_int_equal(t->jobs, 2);
	/* A final refusal (409) ends the job as much as an accepted ack. */
	t->ack_answer = DEPLOYER_REPLY_FINAL;
	struct deployer_ack ack = {.job_id = "j_1", .lease_id = "l_1", .result = "superseded",
				   .generation = 3, .reason = "", .output_tail = ""};
	agent_sqs_ack(t->q, &ack, on_reply, t);
	struct agent_sqs_stats st;
	WAIT(t, (agent_sqs_stats(t->q, &st), st.deleted == 2));
	assert_int_equal(messages_in("ag-dup"), 0);
	assert_int_equal(t->last_reply, DEPLOYER_REPLY_FINAL);
	assert_int_equal(st.deleted, 2);
}

static void test_poison_deleted(void **state)
{
	struct t *t = *state;
	make_queue(t, "ag-poison");
	char url[512];
	snprintf(url, sizeof url, "%s", t->url);
	struct err err = {{0}};
	assert_int_equal(agent_sqs_set_queue(t->q, url, "eu-west-1", NULL, &err), 0);
	send_body(t, url, "this is not a job");
	send_body(t, url, "{\"type\":\"deploy\"}");
	send_body(t, url, "{\"id\":\"j_9\",\"type\":\"deploy\"}");
	struct agent_sqs_stats st;
	WAIT(t, (agent_sqs_stats(t->q, &st), st.deleted == 3));
	assert_int_equal(st.poison, 3);
	assert_int_equal(st.deleted, 3);
	assert_int_equal(t->jobs, 0);
	assert_int_equal(messages_in("ag-poison"), 0);
}

static void test_receive_retried(void **state)
{
	struct t *t = *state;
	make_queue(t, "ag-faults");
	char url[512];
	snprintf(url, sizeof url, "%s", t->url);
	/* More failures in a row than the client retries: this module retries. */
	cJSON_Delete(ctl("POST", "/_fake/fault",
			 "{\"kind\":\"error500\",\"count\":6,\"target\":\"ReceiveMessage\"}"));
	cJSON_Delete(ctl("POST", "/_fake/fault",
			 "{\"kind\":\"drop\",\"count\":2,\"target\":\"ReceiveMessage\"}"));
	struct err err = {{0}};
	assert_int_equal(agent_sqs_set_queue(t->q, url, "eu-west-1", NULL, &err), 0);
	send_body(t, url, JOB);
	WAIT(t, t->jobs == 1);
	assert_int_equal(t->jobs, 1);
	struct agent_sqs_stats st;
	agent_sqs_stats(t->q, &st);
	assert_true(st.receive_errors >= 1);
	cJSON_Delete(ctl("POST", "/_fake/clear", "{}"));
}

static void test_queue_gone(void **state)
{
	struct t *t = *state;
	make_queue(t, "ag-gone");
	char url[512];
	snprintf(url, sizeof url, "%s", t->url);
	struct err err = {{0}};
	assert_int_equal(agent_sqs_set_queue(t->q, url, "eu-west-1", NULL, &err), 0);
	t->done = 0;
	assert_true(sqs_delete_queue(t->sqs, url, on_call, t) > 0);
	WAIT(t, t->gone == 1);
	assert_int_equal(t->gone, 1);
	assert_string_equal(agent_sqs_queue(t->q), "");
	/* Registered again: the same queue is made anew and read. */
	make_queue(t, "ag-gone");
	assert_int_equal(agent_sqs_set_queue(t->q, url, "eu-west-1", NULL, &err), 0);
	send_body(t, url, JOB);
	WAIT(t, t->jobs == 1);
	assert_int_equal(t->jobs, 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_urls),
		cmocka_unit_test_setup_teardown(test_bad_queue, setup, teardown),
		cmocka_unit_test_setup_teardown(test_job_extend_ack_delete, setup, teardown),
		cmocka_unit_test_setup_teardown(test_duplicates_and_final, setup, teardown),
		cmocka_unit_test_setup_teardown(test_poison_deleted, setup, teardown),
		cmocka_unit_test_setup_teardown(test_receive_retried, setup, teardown),
		cmocka_unit_test_setup_teardown(test_queue_gone, setup, teardown),
	};
	return cmocka_run_group_tests_name("agent_sqsqueue", tests, group_setup, group_teardown);
}
