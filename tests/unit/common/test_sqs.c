/*
 * sqs: names, bodies and MD5 (RFC 1321 appendix A.5 vectors), then every
 * action against tests/fakes/sqs.py run as a child process, which verifies
 * each SigV4 signature itself and keeps SQS's semantics: queue life cycle
 * with tags and QueueDeletedRecently, ListQueues pagination, batches with
 * per-entry failures, long polling, receive counts, visibility changes with
 * the latest receipt handle, deletion; and the recovery paths through fault
 * injection: throttling, 5xx, dropped connections, an expired session token
 * (one refresh), clock skew (one re-sign), a corrupted MD5.
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
#include "fakeproc.h"
#include "http_client.h"
#include "json.h"
#include "log.h"
#include "sqs.h"

#define AKID "AKIDUNITSQS"
#define SECRET "unit-secret-for-the-sqs-fake"
#define TOKEN1 "session-token-one"

/* ---- the fake, a child process ---- */

static void fake_start(struct fakeproc *f)
{
	const char *args[] = {"--access-key", AKID, "--secret-key", SECRET, "--token", TOKEN1,
			      "--deleted-recently-s", "60", NULL};
	assert_int_equal(fakeproc_start(f, "sqs.py", args), 0);
}

static void fault(struct fakeproc *f, const char *json)
{
	cJSON_Delete(fakeproc_json(f, "POST", "/_fake/fault", json));
}

/* A number from a control answer: stats.requests.SendMessageBatch etc. */
static int64_t stat_of(struct fakeproc *f, const char *group, const char *key)
{
	cJSON *doc = fakeproc_json(f, "GET", "/_fake/stats", NULL);
	const cJSON *g = cJSON_GetObjectItemCaseSensitive(doc, group);
	const cJSON *v = key ? cJSON_GetObjectItemCaseSensitive(g, key) : g;
	int64_t n = cJSON_IsNumber(v) ? (int64_t)v->valuedouble : 0;
	cJSON_Delete(doc);
	return n;
}

/* ---- fixture ---- */

#define RESULTS_MAX 8

struct got {
	int done;
	enum sqs_status status;
	char code[128];
	char qcode[128];
	int attempts;
	int throttled;
	char url[512];
	char next[256];
	size_t nurls;
	char urls[16][256];
	size_t ntags;
	char tags[8][2][64];
	size_t nmsg;
	size_t corrupt;
	struct {
		char id[64];
		char receipt[1024];
		char body[256];
		int64_t count;
		int64_t sent_ms;
	} msg[10];
	size_t nent, failed;
	struct {
		char id[96];
		int ok;
		char code[96];
		int sender_fault;
	} ent[10];
	int64_t elapsed_ms;
};

struct fix {
	struct ev_loop *loop;
	struct http_client *http;
	struct aws_credentials_provider *creds;
	struct sqs *q;
	struct fakeproc fake;
	char endpoint[64];
	struct got g[RESULTS_MAX];
	int64_t started_ms[RESULTS_MAX];
};

static struct fix *F; /* for the callbacks' slot lookup */

static void on_done(const struct sqs_result *r, void *arg)
{
	struct got *g = arg;
	g->done++;
	g->status = r->status;
	snprintf(g->code, sizeof g->code, "%s", r->error_code ? r->error_code : "");
	snprintf(g->qcode, sizeof g->qcode, "%s", r->query_code ? r->query_code : "");
	g->attempts = r->attempts;
	g->throttled = r->throttled;
	snprintf(g->url, sizeof g->url, "%s", r->queue_url ? r->queue_url : "");
	snprintf(g->next, sizeof g->next, "%s", r->next_token ? r->next_token : "");
	g->nurls = r->queue_url_count;
	for (size_t i = 0; i < r->queue_url_count && i < 16; i++)
		snprintf(g->urls[i], sizeof g->urls[i], "%s", r->queue_urls[i]);
	g->ntags = r->tag_count;
	for (size_t i = 0; i < r->tag_count && i < 8; i++) {
		snprintf(g->tags[i][0], sizeof g->tags[i][0], "%s", r->tags[i].key);
		snprintf(g->tags[i][1], sizeof g->tags[i][1], "%s", r->tags[i].value);
	}
	g->nmsg = r->message_count;
	g->corrupt = r->corrupt;
	for (size_t i = 0; i < r->message_count && i < 10; i++) {
		snprintf(g->msg[i].id, sizeof g->msg[i].id, "%s", r->messages[i].message_id);
		snprintf(g->msg[i].receipt, sizeof g->msg[i].receipt, "%s",
			 r->messages[i].receipt_handle);
		snprintf(g->msg[i].body, sizeof g->msg[i].body, "%.*s",
			 (int)r->messages[i].body_len, r->messages[i].body);
		g->msg[i].count = r->messages[i].receive_count;
		g->msg[i].sent_ms = r->messages[i].sent_ms;
	}
	g->nent = r->entry_count;
	g->failed = r->failed;
	for (size_t i = 0; i < r->entry_count && i < 10; i++) {
		snprintf(g->ent[i].id, sizeof g->ent[i].id, "%s", r->entries[i].id);
		g->ent[i].ok = r->entries[i].ok;
		snprintf(g->ent[i].code, sizeof g->ent[i].code, "%s",
			 r->entries[i].code ? r->entries[i].code : "");
		g->ent[i].sender_fault = r->entries[i].sender_fault;
	}
	g->elapsed_ms = clock_mono_ms() - F->started_ms[g - F->g];
}

/* Slot i: cleared, and its start time noted. */
static struct got *slot(struct fix *f, int i)
{
	memset(&f->g[i], 0, sizeof f->g[i]);
	f->started_ms[i] = clock_mono_ms();
	return &f->g[i];
}

static void wait_done(struct fix *f, struct got *g)
{
	int64_t deadline = clock_mono_ms() + 40000;
	while (!g->done && clock_mono_ms() < deadline)
		ev_run(f->loop, EVRUN_ONCE);
	assert_int_equal(g->done, 1);
}

static struct sqs *client(struct fix *f, int max_attempts)
{
	struct sqs_opts o = {.region = "us-east-1", .endpoint = f->endpoint, .retry_base_ms = 5,
			     .retry_cap_ms = 50, .timeout_ms = 5000, .max_attempts = max_attempts};
	struct err err;
	struct sqs *q = sqs_new(f->loop, f->http, f->creds, &o, &err);
	if (!q)
		fail_msg("sqs_new: %s", err.msg);
	return q;
}

static int setup(void **state)
{
	struct fix *f = calloc(1, sizeof *f);
	F = f;
	log_init("test", LOG_LEVEL_ERROR, 0);
	setenv("AWS_ACCESS_KEY_ID", AKID, 1);
	setenv("AWS_SECRET_ACCESS_KEY", SECRET, 1);
	setenv("AWS_SESSION_TOKEN", TOKEN1, 1);
	fake_start(&f->fake);
	snprintf(f->endpoint, sizeof f->endpoint, "http://127.0.0.1:%d", f->fake.port);
	f->loop = ev_loop_new(EVFLAG_AUTO);
	f->http = http_client_new(f->loop);
	struct err err;
	struct aws_credentials_opts co = {.no_file = 1, .no_imds = 1};
	f->creds = aws_credentials_new(f->loop, f->http, &co, &err);
	assert_non_null(f->creds);
	f->q = client(f, 4);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fix *f = *state;
	sqs_free(f->q);
	aws_credentials_free(f->creds);
	http_client_free(f->http);
	ev_loop_destroy(f->loop);
	fakeproc_stop(&f->fake);
	unsetenv("AWS_SESSION_TOKEN");
	free(f);
	return 0;
}

/* Creates a queue and returns its URL in url. */
static void make_queue(struct fix *f, const char *name, char *url, size_t cap)
{
	struct got *g = slot(f, 7);
	assert_true(sqs_create_queue(f->q, name, NULL, 0, NULL, 0, on_done, g) > 0);
	wait_done(f, g);
	assert_int_equal(g->status, SQS_OK);
	snprintf(url, cap, "%s", g->url);
}

static void send_bodies(struct fix *f, const char *url, const char *const *bodies, size_t n)
{
	struct sqs_send_entry e[10];
	char ids[10][24];
	for (size_t i = 0; i < n; i++) {
		snprintf(ids[i], sizeof ids[i], "e%zu", i);
		e[i] = (struct sqs_send_entry){ids[i], bodies[i], strlen(bodies[i]), 0};
	}
	struct got *g = slot(f, 6);
	assert_true(sqs_send_batch(f->q, url, e, n, on_done, g) > 0);
	wait_done(f, g);
	assert_int_equal(g->status, SQS_OK);
	assert_int_equal(g->failed, 0);
}

/* ---- pure parts ---- */

static void test_names_bodies_md5(void **state)
{
	(void)state;
	assert_true(sqs_queue_name_valid("slipway-default-i-0a1b2c3d4e5f"));
	assert_true(sqs_queue_name_valid("a"));
	char n81[82];
	memset(n81, 'a', 81);
	n81[81] = '\0';
	assert_false(sqs_queue_name_valid(n81));
	n81[80] = '\0';
	assert_true(sqs_queue_name_valid(n81));
	assert_false(sqs_queue_name_valid(""));
	assert_false(sqs_queue_name_valid("a.b"));
	assert_false(sqs_queue_name_valid("a:b"));
	assert_false(sqs_queue_name_valid("q.fifo"));

	assert_int_equal(sqs_body_valid("{\"job\":1}\n\t\r", 12, NULL), 0);
	assert_int_equal(sqs_body_valid("caf\xC3\xA9 \xF0\x9F\x9A\x80", 10, NULL), 0);
	size_t bad = 99;
	assert_int_equal(sqs_body_valid("ab\x01", 3, &bad), -1);
	assert_int_equal(bad, 2);
	assert_int_equal(sqs_body_valid("x\xEF\xBF\xBF", 4, &bad), -1); /* U+FFFF */
	assert_int_equal(bad, 1);
	assert_int_equal(sqs_body_valid("\xC3", 1, NULL), -1); /* cut UTF-8 */
	assert_int_equal(sqs_body_valid("a\0b", 3, NULL), -1);

	/* RFC 1321, appendix A.5 */
	char hex[33];
	sqs_md5_hex("", 0, hex);
	assert_string_equal(hex, "d41d8cd98f00b204e9800998ecf8427e");
	sqs_md5_hex("abc", 3, hex);
	assert_string_equal(hex, "900150983cd24fb0d6963f7d28e17f72");
	sqs_md5_hex("message digest", 14, hex);
	assert_string_equal(hex, "f96b697d7cb7938d525a2f31aaf161d0");

	assert_string_equal(sqs_queue_name_of("https://sqs.us-east-1.amazonaws.com/123/q-1"), "q-1");
	assert_null(sqs_queue_name_of("https://sqs.us-east-1.amazonaws.com/123/"));
}

static void test_bad_arguments(void **state)
{
	struct fix *f = *state;
	struct got *g = slot(f, 0);
	struct sqs_send_entry e[11];
	char ids[11][24];
	for (int i = 0; i < 11; i++) {
		snprintf(ids[i], sizeof ids[i], "id%d", i);
		e[i] = (struct sqs_send_entry){ids[i], "x", 1, 0};
	}
	const char *url = "http://127.0.0.1:1/123456789012/q";
	assert_int_equal(sqs_send_batch(f->q, url, e, 11, on_done, g), 0);  /* > 10 */
	assert_int_equal(sqs_send_batch(f->q, url, e, 0, on_done, g), 0);
	e[1].id = "id0";
	assert_int_equal(sqs_send_batch(f->q, url, e, 2, on_done, g), 0);   /* same id */
	e[1].id = "bad id";
	assert_int_equal(sqs_send_batch(f->q, url, e, 2, on_done, g), 0);
	e[1].id = "id1";
	e[1].body = "\x01";
	assert_int_equal(sqs_send_batch(f->q, url, e, 2, on_done, g), 0);   /* body */
	char *big = malloc(200 << 10);
	memset(big, 'b', 200 << 10);
	e[0] = (struct sqs_send_entry){"a", big, 200 << 10, 0};
	e[1] = (struct sqs_send_entry){"b", big, 60 << 10, 0};
	assert_int_equal(sqs_send_batch(f->q, url, e, 2, on_done, g), 0);   /* 260 KiB */
	e[1].body_len = 56 << 10;
	assert_int_equal(sqs_send_batch(f->q, url, e, 2, on_done, g) > 0, 1); /* 256 KiB: fine */
	free(big);
	wait_done(f, g); /* the queue does not exist */
	assert_int_equal(g->status, SQS_NOT_FOUND);
	assert_int_equal(sqs_create_queue(f->q, "no.dots", NULL, 0, NULL, 0, on_done, g), 0);
	struct sqs_receive_opts ro = {.max_messages = 11, .wait_s = 0, .visibility_s = -1};
	assert_int_equal(sqs_receive(f->q, url, &ro, on_done, g), 0);
	ro = (struct sqs_receive_opts){.max_messages = 1, .wait_s = 21, .visibility_s = -1};
	assert_int_equal(sqs_receive(f->q, url, &ro, on_done, g), 0);
	assert_int_equal(sqs_change_visibility(f->q, url, "rh", 43201, on_done, g), 0);
	assert_int_equal(sqs_delete_message(f->q, url, "", on_done, g), 0);
	assert_int_equal(sqs_pending(f->q), 0);
}

/* ---- against the fake ---- */

static void test_queue_lifecycle(void **state)
{
	struct fix *f = *state;
	struct sqs_kv attrs[] = {{"VisibilityTimeout", "60"}, {"SqsManagedSseEnabled", "true"}};
	struct sqs_kv tags[] = {{"slipway:instance-id", "i-0a1b"}, {"slipway:fleet", "default"}};
	struct got *g = slot(f, 0);
	assert_true(sqs_create_queue(f->q, "slipway-default-i-0a1b", attrs, 2, tags, 2, on_done, g));
	assert_int_equal(g->done, 0); /* never from inside the call */
	wait_done(f, g);
	assert_int_equal(g->status, SQS_OK);
	char url[512];
	snprintf(url, sizeof url, "%s", g->url);
	char want[128];
	snprintf(want, sizeof want, "http://127.0.0.1:%d/123456789012/slipway-default-i-0a1b",
		 f->fake.port);
	assert_string_equal(url, want);

	/* The same name and attributes: the same queue. */
	g = slot(f, 0);
	sqs_create_queue(f->q, "slipway-default-i-0a1b", attrs, 2, NULL, 0, on_done, g);
	wait_done(f, g);
	assert_int_equal(g->status, SQS_OK);
	assert_string_equal(g->url, url);
	/* Other attributes: QueueNameExists, under both of its names. */
	struct sqs_kv other[] = {{"VisibilityTimeout", "61"}};
	g = slot(f, 0);
	sqs_create_queue(f->q, "slipway-default-i-0a1b", other, 1, NULL, 0, on_done, g);
	wait_done(f, g);
	assert_int_equal(g->status, SQS_REFUSED);
	assert_string_equal(g->code, "QueueNameExists");
	assert_string_equal(g->qcode, "QueueAlreadyExists");
	struct sqs_result r = {.status = SQS_REFUSED, .error_code = g->code, .query_code = g->qcode};
	assert_true(sqs_error_is(&r, "QueueNameExists"));
	assert_true(sqs_error_is(&r, "QueueAlreadyExists"));
	assert_false(sqs_error_is(&r, "QueueDoesNotExist"));

	g = slot(f, 0);
	sqs_get_queue_url(f->q, "slipway-default-i-0a1b", on_done, g);
	wait_done(f, g);
	assert_string_equal(g->url, url);

	struct sqs_kv more[] = {{"slipway:coordinator", "c1"}};
	g = slot(f, 0);
	sqs_tag_queue(f->q, url, more, 1, on_done, g);
	wait_done(f, g);
	assert_int_equal(g->status, SQS_OK);
	g = slot(f, 0);
	sqs_list_queue_tags(f->q, url, on_done, g);
	wait_done(f, g);
	assert_int_equal(g->status, SQS_OK);
	assert_int_equal(g->ntags, 3);
	int seen = 0;
	for (size_t i = 0; i < g->ntags; i++) {
		if (!strcmp(g->tags[i][0], "slipway:instance-id"))
			seen += !strcmp(g->tags[i][1], "i-0a1b");
		if (!strcmp(g->tags[i][0], "slipway:fleet"))
			seen += !strcmp(g->tags[i][1], "default");
		if (!strcmp(g->tags[i][0], "slipway:coordinator"))
			seen += !strcmp(g->tags[i][1], "c1");
	}
	assert_int_equal(seen, 3);

	g = slot(f, 0);
	sqs_delete_queue(f->q, url, on_done, g);
	wait_done(f, g);
	assert_int_equal(g->status, SQS_OK);
	g = slot(f, 0);
	sqs_get_queue_url(f->q, "slipway-default-i-0a1b", on_done, g);
	wait_done(f, g);
	assert_int_equal(g->status, SQS_NOT_FOUND);
	assert_string_equal(g->code, "QueueDoesNotExist");
	assert_string_equal(g->qcode, "AWS.SimpleQueueService.NonExistentQueue");
	/* Deleting what is gone is what the caller wanted. */
	g = slot(f, 0);
	sqs_delete_queue(f->q, url, on_done, g);
	wait_done(f, g);
	assert_int_equal(g->status, SQS_OK);
	g = slot(f, 0);
	sqs_list_queue_tags(f->q, url, on_done, g);
	wait_done(f, g);
	assert_int_equal(g->status, SQS_NOT_FOUND);
	/* The name is blocked for 60 s after a delete. */
	g = slot(f, 0);
	sqs_create_queue(f->q, "slipway-default-i-0a1b", NULL, 0, NULL, 0, on_done, g);
	wait_done(f, g);
	assert_int_equal(g->status, SQS_REFUSED);
	assert_string_equal(g->code, "QueueDeletedRecently");
	assert_string_equal(g->qcode, "AWS.SimpleQueueService.QueueDeletedRecently");
}

static void test_list_pagination(void **state)
{
	struct fix *f = *state;
	char url[512];
	for (int i = 0; i < 7; i++) {
		char name[32];
		snprintf(name, sizeof name, "pg-q%d", i);
		make_queue(f, name, url, sizeof url);
	}
	make_queue(f, "other-q", url, sizeof url);
	char token[256] = "";
	size_t total = 0, pages = 0;
	for (;;) {
		struct got *g = slot(f, 0);
		assert_true(sqs_list_queues(f->q, "pg-", token[0] ? token : NULL, 3, on_done, g) > 0);
		wait_done(f, g);
		assert_int_equal(g->status, SQS_OK);
		pages++;
		for (size_t i = 0; i < g->nurls; i++)
			assert_non_null(strstr(g->urls[i], "/pg-q"));
		total += g->nurls;
		if (!g->next[0])
			break;
		assert_int_equal(g->nurls, 3);
		snprintf(token, sizeof token, "%s", g->next);
	}
	assert_int_equal(total, 7);
	assert_int_equal(pages, 3);
	/* Without MaxResults: every match, no token. */
	struct got *g = slot(f, 0);
	sqs_list_queues(f->q, "pg-", NULL, 0, on_done, g);
	wait_done(f, g);
	assert_int_equal(g->nurls, 7);
	assert_string_equal(g->next, "");
}

static void test_send_receive_visibility_delete(void **state)
{
	struct fix *f = *state;
	char url[512];
	make_queue(f, "msgs", url, sizeof url);
	const char *bodies[] = {"{\"id\":\"j_1\"}", "{\"id\":\"j_2\"}", "caf\xC3\xA9"};
	send_bodies(f, url, bodies, 3);
	assert_int_equal(f->g[6].nent, 3);
	for (int i = 0; i < 3; i++)
		assert_true(f->g[6].ent[i].ok);

	struct sqs_receive_opts ro = {.max_messages = 10, .wait_s = 0, .visibility_s = 30};
	struct got *g = slot(f, 0);
	assert_true(sqs_receive(f->q, url, &ro, on_done, g) > 0);
	wait_done(f, g);
	assert_int_equal(g->status, SQS_OK);
	assert_int_equal(g->nmsg, 3);
	int64_t now = clock_wall_ms();
	for (int i = 0; i < 3; i++) {
		assert_int_equal(g->msg[i].count, 1);
		assert_true(g->msg[i].sent_ms > now - 60000 && g->msg[i].sent_ms <= now + 1000);
	}
	assert_string_equal(g->msg[2].body, "caf\xC3\xA9");
	/* In flight: nothing more to receive. */
	struct got *g2 = slot(f, 1);
	sqs_receive(f->q, url, &ro, on_done, g2);
	wait_done(f, g2);
	assert_int_equal(g2->nmsg, 0);

	/* Visible again at once, then received a second time with a new handle. */
	g2 = slot(f, 1);
	sqs_change_visibility(f->q, url, g->msg[0].receipt, 0, on_done, g2);
	wait_done(f, g2);
	assert_int_equal(g2->status, SQS_OK);
	struct got *g3 = slot(f, 2);
	sqs_receive(f->q, url, &ro, on_done, g3);
	wait_done(f, g3);
	assert_int_equal(g3->nmsg, 1);
	assert_string_equal(g3->msg[0].id, g->msg[0].id);
	assert_int_equal(g3->msg[0].count, 2);
	assert_string_not_equal(g3->msg[0].receipt, g->msg[0].receipt);
	/* The old handle is no good any more. */
	g2 = slot(f, 1);
	sqs_change_visibility(f->q, url, g->msg[0].receipt, 60, on_done, g2);
	wait_done(f, g2);
	assert_int_equal(g2->status, SQS_REFUSED);
	assert_string_equal(g2->code, "ReceiptHandleIsInvalid");
	/* Extending with the latest handle works. */
	g2 = slot(f, 1);
	sqs_change_visibility(f->q, url, g3->msg[0].receipt, 120, on_done, g2);
	wait_done(f, g2);
	assert_int_equal(g2->status, SQS_OK);
	cJSON *calls = fakeproc_json(&f->fake, "GET",
				     "/_fake/calls?action=ChangeMessageVisibility&queue=msgs", NULL);
	const cJSON *arr = cJSON_GetObjectItemCaseSensitive(calls, "calls");
	const cJSON *last = cJSON_GetArrayItem(arr, cJSON_GetArraySize(arr) - 1);
	assert_int_equal(cJSON_GetObjectItemCaseSensitive(last, "visibility")->valueint, 120);
	cJSON_Delete(calls);

	/* Delete with the latest handle (twice: the second is harmless), and the others. */
	for (int i = 0; i < 2; i++) {
		g2 = slot(f, 1);
		sqs_delete_message(f->q, url, g3->msg[0].receipt, on_done, g2);
		wait_done(f, g2);
		assert_int_equal(g2->status, SQS_OK);
	}
	g2 = slot(f, 1);
	sqs_delete_message(f->q, url, g->msg[1].receipt, on_done, g2);
	wait_done(f, g2);
	assert_int_equal(g2->status, SQS_OK);
	g2 = slot(f, 1);
	sqs_delete_message(f->q, url, "not-a-receipt-handle", on_done, g2);
	wait_done(f, g2);
	assert_int_equal(g2->status, SQS_REFUSED);
	assert_string_equal(g2->code, "ReceiptHandleIsInvalid");
	cJSON *m = fakeproc_json(&f->fake, "GET", "/_fake/messages?queue=msgs", NULL);
	arr = cJSON_GetObjectItemCaseSensitive(m, "messages");
	assert_int_equal(cJSON_GetArraySize(arr), 1);
	assert_string_equal(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(arr, 0), "body")
				    ->valuestring,
			    "caf\xC3\xA9");
	cJSON_Delete(m);
}

/* Sends one message a little after the long poll started. */
static void later_send(struct ev_loop *loop, ev_timer *t, int revents)
{
	(void)loop;
	(void)revents;
	struct fix *f = t->data;
	static struct sqs_send_entry e = {"late", "late body", 9, 0};
	assert_true(sqs_send_batch(f->q, f->g[5].url, &e, 1, on_done, slot(f, 1)) > 0);
}

static void test_long_poll(void **state)
{
	struct fix *f = *state;
	char url[512];
	make_queue(f, "poll", url, sizeof url);
	snprintf(f->g[5].url, sizeof f->g[5].url, "%s", url);
	/* Empty: the poll is held for its wait. */
	struct sqs_receive_opts ro = {.max_messages = 10, .wait_s = 1, .visibility_s = -1};
	struct got *g = slot(f, 0);
	sqs_receive(f->q, url, &ro, on_done, g);
	wait_done(f, g);
	assert_int_equal(g->nmsg, 0);
	assert_true(g->elapsed_ms >= 900);
	/* A message sent meanwhile ends it early. */
	ro.wait_s = 20;
	g = slot(f, 0);
	sqs_receive(f->q, url, &ro, on_done, g);
	ev_timer t;
	ev_timer_init(&t, later_send, 0.3, 0.0);
	t.data = f;
	ev_timer_start(f->loop, &t);
	wait_done(f, g);
	assert_int_equal(g->status, SQS_OK);
	assert_int_equal(g->nmsg, 1);
	assert_string_equal(g->msg[0].body, "late body");
	assert_true(g->elapsed_ms >= 250 && g->elapsed_ms < 10000);
	wait_done(f, &f->g[1]);
}

static void test_batch_entry_failures(void **state)
{
	struct fix *f = *state;
	char url[512];
	make_queue(f, "batch", url, sizeof url);
	/* The service fails two entries on its side: they are sent again, alone. */
	fault(&f->fake, "{\"kind\":\"entry_fail\",\"entries\":2,\"target\":\"SendMessageBatch\"}");
	int64_t before = stat_of(&f->fake, "requests", "SendMessageBatch");
	const char *bodies[] = {"one", "two", "three"};
	send_bodies(f, url, bodies, 3);
	struct got *g = &f->g[6];
	assert_int_equal(g->nent, 3);
	for (int i = 0; i < 3; i++)
		assert_true(g->ent[i].ok);
	assert_int_equal(stat_of(&f->fake, "requests", "SendMessageBatch") - before, 2);
	cJSON *m = fakeproc_json(&f->fake, "GET", "/_fake/messages?queue=batch", NULL);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(m, "messages")), 3);
	cJSON_Delete(m);

	/* An entry SQS refuses as the sender's fault is reported, never resent. */
	struct sqs_kv small[] = {{"MaximumMessageSize", "1024"}};
	g = slot(f, 0);
	sqs_create_queue(f->q, "small", small, 1, NULL, 0, on_done, g);
	wait_done(f, g);
	snprintf(url, sizeof url, "%s", g->url);
	char big[2000];
	memset(big, 'x', sizeof big);
	struct sqs_send_entry e[] = {{"fits", "ok", 2, 0}, {"toobig", big, sizeof big, 0}};
	before = stat_of(&f->fake, "requests", "SendMessageBatch");
	g = slot(f, 0);
	sqs_send_batch(f->q, url, e, 2, on_done, g);
	wait_done(f, g);
	assert_int_equal(g->status, SQS_OK);
	assert_int_equal(g->failed, 1);
	assert_true(g->ent[0].ok);
	assert_false(g->ent[1].ok);
	assert_true(g->ent[1].sender_fault);
	assert_string_equal(g->ent[1].code, "InvalidParameterValue");
	assert_int_equal(stat_of(&f->fake, "requests", "SendMessageBatch") - before, 1);

	/* The service keeps failing an entry: after the client's attempts it is reported. */
	fault(&f->fake, "{\"kind\":\"entry_fail\",\"entries\":1,\"count\":10}");
	g = slot(f, 0);
	sqs_send_batch(f->q, url, e, 1, on_done, g);
	wait_done(f, g);
	assert_int_equal(g->failed, 1);
	assert_string_equal(g->ent[0].code, "InternalError");
	assert_false(g->ent[0].sender_fault);
	cJSON_Delete(fakeproc_json(&f->fake, "POST", "/_fake/clear", NULL));
}

static void test_retries(void **state)
{
	struct fix *f = *state;
	char url[512];
	make_queue(f, "retry", url, sizeof url);
	struct sqs_receive_opts ro = {.max_messages = 1, .wait_s = 0, .visibility_s = -1};

	fault(&f->fake, "{\"kind\":\"throttle\",\"count\":2}");
	struct got *g = slot(f, 0);
	sqs_receive(f->q, url, &ro, on_done, g);
	wait_done(f, g);
	assert_int_equal(g->status, SQS_OK);
	assert_int_equal(g->throttled, 2);
	assert_int_equal(g->attempts, 3);

	fault(&f->fake, "{\"kind\":\"throttle_exc\",\"count\":1}");
	g = slot(f, 0);
	sqs_list_queue_tags(f->q, url, on_done, g);
	wait_done(f, g);
	assert_int_equal(g->status, SQS_OK);
	assert_int_equal(g->throttled, 1);

	fault(&f->fake, "{\"kind\":\"error500\",\"count\":2}");
	g = slot(f, 0);
	sqs_receive(f->q, url, &ro, on_done, g);
	wait_done(f, g);
	assert_int_equal(g->status, SQS_OK);
	assert_int_equal(g->attempts, 3);

	/* A dropped connection after the message was stored: sent again (twice
	 * in the queue; consumers apply a job id once). On a kept-alive
	 * connection curl itself resends once, so count what reached the fake. */
	fault(&f->fake, "{\"kind\":\"drop_after\",\"count\":1,\"target\":\"SendMessageBatch\"}");
	int64_t before = stat_of(&f->fake, "requests", "SendMessageBatch");
	const char *bodies[] = {"dup"};
	send_bodies(f, url, bodies, 1);
	assert_int_equal(stat_of(&f->fake, "requests", "SendMessageBatch") - before, 2);
	cJSON *m = fakeproc_json(&f->fake, "GET", "/_fake/messages?queue=retry", NULL);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(m, "messages")), 2);
	cJSON_Delete(m);

	fault(&f->fake, "{\"kind\":\"drop\",\"count\":1}");
	before = stat_of(&f->fake, "requests", "GetQueueUrl");
	g = slot(f, 0);
	sqs_get_queue_url(f->q, "retry", on_done, g);
	wait_done(f, g);
	assert_int_equal(g->status, SQS_OK);
	assert_int_equal(stat_of(&f->fake, "requests", "GetQueueUrl") - before, 2);

	/* It stays down: the caller hears UNREACHABLE after the client's attempts. */
	fault(&f->fake, "{\"kind\":\"error503\",\"count\":10}");
	g = slot(f, 0);
	sqs_get_queue_url(f->q, "retry", on_done, g);
	wait_done(f, g);
	assert_int_equal(g->status, SQS_UNREACHABLE);
	assert_int_equal(g->attempts, 4);
	assert_string_equal(g->code, "ServiceUnavailable");
	cJSON_Delete(fakeproc_json(&f->fake, "POST", "/_fake/clear", NULL));
	/* Throttling that never ends gives up too. */
	struct sqs *q2 = f->q;
	struct sqs_opts o = {.region = "us-east-1", .endpoint = f->endpoint, .retry_base_ms = 1,
			     .retry_cap_ms = 5, .throttle_attempts = 3};
	struct err err;
	f->q = sqs_new(f->loop, f->http, f->creds, &o, &err);
	assert_non_null(f->q);
	fault(&f->fake, "{\"kind\":\"throttle\",\"count\":10}");
	g = slot(f, 0);
	sqs_get_queue_url(f->q, "retry", on_done, g);
	wait_done(f, g);
	assert_int_equal(g->status, SQS_UNREACHABLE);
	assert_int_equal(g->throttled, 3);
	assert_string_equal(g->code, "RequestThrottled");
	sqs_free(f->q);
	f->q = q2;
	cJSON_Delete(fakeproc_json(&f->fake, "POST", "/_fake/clear", NULL));
}

static void test_expired_token_refreshed_once(void **state)
{
	struct fix *f = *state;
	char url[512];
	make_queue(f, "tok", url, sizeof url);
	cJSON *a = fakeproc_json(&f->fake, "POST", "/_fake/fault", "{\"kind\":\"expired_token\"}");
	const cJSON *nt = cJSON_GetObjectItemCaseSensitive(a, "new_token");
	assert_true(cJSON_IsString(nt));
	setenv("AWS_SESSION_TOKEN", nt->valuestring, 1); /* what the refresh will find */
	cJSON_Delete(a);
	int64_t expired = stat_of(&f->fake, "errors", "ExpiredToken");
	struct got *g = slot(f, 0);
	sqs_list_queue_tags(f->q, url, on_done, g);
	wait_done(f, g);
	assert_int_equal(g->status, SQS_OK);
	assert_int_equal(g->attempts, 2);
	assert_int_equal(stat_of(&f->fake, "errors", "ExpiredToken") - expired, 1);

	/* Expired again and nothing new to refresh to: one refresh only, then
	 * UNREACHABLE (not a loop). */
	cJSON_Delete(fakeproc_json(&f->fake, "POST", "/_fake/fault",
				   "{\"kind\":\"expired_token\"}"));
	g = slot(f, 0);
	sqs_list_queue_tags(f->q, url, on_done, g);
	wait_done(f, g);
	assert_int_equal(g->status, SQS_UNREACHABLE);
	assert_string_equal(g->code, "ExpiredToken");
	assert_int_equal(g->attempts, 2);
}

static void test_clock_skew_resigned_once(void **state)
{
	struct fix *f = *state;
	char url[512];
	make_queue(f, "skew", url, sizeof url);
	fault(&f->fake, "{\"kind\":\"skew\",\"offset_s\":900}");
	struct got *g = slot(f, 0);
	sqs_list_queue_tags(f->q, url, on_done, g);
	wait_done(f, g);
	assert_int_equal(g->status, SQS_OK);
	assert_int_equal(g->attempts, 2);
	/* The next call is signed with the corrected clock at once. */
	g = slot(f, 0);
	sqs_list_queue_tags(f->q, url, on_done, g);
	wait_done(f, g);
	assert_int_equal(g->attempts, 1);
	cJSON_Delete(fakeproc_json(&f->fake, "POST", "/_fake/clear", NULL));
}

static void test_md5_checked(void **state)
{
	struct fix *f = *state;
	char url[512];
	make_queue(f, "md5", url, sizeof url);
	const char *bodies[] = {"checked"};
	send_bodies(f, url, bodies, 1);
	fault(&f->fake, "{\"kind\":\"bad_md5\",\"target\":\"ReceiveMessage\"}");
	struct sqs_receive_opts ro = {.max_messages = 10, .wait_s = 0, .visibility_s = 0};
	struct got *g = slot(f, 0);
	sqs_receive(f->q, url, &ro, on_done, g);
	wait_done(f, g);
	assert_int_equal(g->nmsg, 0);
	assert_int_equal(g->corrupt, 1);
	g = slot(f, 0); /* visibility 0: it is there again, intact */
	sqs_receive(f->q, url, &ro, on_done, g);
	wait_done(f, g);
	assert_int_equal(g->nmsg, 1);
	assert_string_equal(g->msg[0].body, "checked");
	/* A wrong MD5 for a sent entry: sent again. */
	fault(&f->fake, "{\"kind\":\"bad_md5\",\"target\":\"SendMessageBatch\"}");
	const char *b2[] = {"again"};
	send_bodies(f, url, b2, 1);
	assert_int_equal(f->g[6].attempts, 2);
}

int main(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_names_bodies_md5),
		cmocka_unit_test_setup_teardown(test_bad_arguments, setup, teardown),
		cmocka_unit_test_setup_teardown(test_queue_lifecycle, setup, teardown),
		cmocka_unit_test_setup_teardown(test_list_pagination, setup, teardown),
		cmocka_unit_test_setup_teardown(test_send_receive_visibility_delete, setup, teardown),
		cmocka_unit_test_setup_teardown(test_long_poll, setup, teardown),
		cmocka_unit_test_setup_teardown(test_batch_entry_failures, setup, teardown),
		cmocka_unit_test_setup_teardown(test_retries, setup, teardown),
		cmocka_unit_test_setup_teardown(test_expired_token_refreshed_once, setup, teardown),
		cmocka_unit_test_setup_teardown(test_clock_skew_resigned_once, setup, teardown),
		cmocka_unit_test_setup_teardown(test_md5_checked, setup, teardown),
	};
	int rc = cmocka_run_group_tests_name("sqs", tests, NULL, NULL);
	curl_global_cleanup();
	return rc;
}
