/*
 * cwlogs reads (FilterLogEvents, GetLogEvents: what the coordinator's
 * `slipway logs` uses in CloudWatch mode): the request bodies, the answer
 * parser, and calls against tests/fakes/cloudwatch.py (which checks every
 * signature): events of one service across its streams by name prefix and
 * start time, oldest first, paged with nextToken; one stream from its head
 * or its newest events, followed with nextForwardToken; a group that does
 * not exist yet; throttling retried; a service down past the attempts.
 * The put path's own tests are in test_cwlogs.c.
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

#include "clock.h"
#include "cwlogs.h"
#include "fakeproc.h"
#include "http_client.h"
#include "json.h"
#include "log.h"

#define AKID "AKIDFAKECLOUDWATCH"
#define SECRET "fake-secret-key-for-tests"
#define GROUP "/slipway/web"

/* ---- pure parts ---- */

static void test_bodies(void **state)
{
	(void)state;
	struct buf b;
	buf_init(&b, 0);
	struct cwlogs_filter f = {.group = GROUP, .stream_prefix = "web/", .start_ms = 1000,
				  .limit = 50, .next_token = "tok\"1"};
	assert_int_equal(cwlogs_filter_body(&b, &f), 0);
	assert_string_equal(b.data, "{\"logGroupName\":\"/slipway/web\",\"logStreamNamePrefix\":"
				    "\"web/\",\"startTime\":1000,\"limit\":50,\"nextToken\":"
				    "\"tok\\\"1\"}");
	buf_reset(&b);
	struct cwlogs_get g = {.group = GROUP, .stream = "web/i-1/3f9a", .start_from_head = true};
	assert_int_equal(cwlogs_get_body(&b, &g), 0);
	assert_string_equal(b.data, "{\"logGroupName\":\"/slipway/web\",\"logStreamName\":"
				    "\"web/i-1/3f9a\",\"startFromHead\":true}");
	buf_reset(&b);
	f.limit = 10001;
	assert_int_equal(cwlogs_filter_body(&b, &f), -1);
	g.stream = NULL;
	assert_int_equal(cwlogs_get_body(&b, &g), -1);
	buf_free(&b);

	const char ans[] = "{\"events\":[{\"logStreamName\":\"web/i-1/a\",\"timestamp\":5,"
			   "\"message\":\"hi\",\"ingestionTime\":6,\"eventId\":\"77\"},"
			   "{\"timestamp\":7,\"message\":\"x\"}],\"nextToken\":\"n1\","
			   "\"searchedLogStreams\":[]}";
	cJSON *doc;
	struct cwlogs_read_event *ev;
	size_t n;
	const char *next, *back;
	struct err err;
	assert_int_equal(cwlogs_parse_events(ans, sizeof ans - 1, "dflt", &doc, &ev, &n, &next,
					     &back, &err),
			 0);
	assert_int_equal(n, 2);
	assert_string_equal(ev[0].stream, "web/i-1/a");
	assert_string_equal(ev[0].event_id, "77");
	assert_int_equal(ev[0].ingestion_ms, 6);
	assert_string_equal(ev[1].stream, "dflt");
	assert_string_equal(next, "n1");
	assert_null(back);
	free(ev);
	cJSON_Delete(doc);
	const char bad[] = "{\"events\":[{\"timestamp\":\"5\",\"message\":\"hi\"}]}";
	assert_int_equal(cwlogs_parse_events(bad, sizeof bad - 1, "", &doc, &ev, &n, &next, &back,
					     &err),
			 -1);
	assert_non_null(strstr(err.msg, "events[0].timestamp"));
}

/* ---- against the fake ---- */

struct fx {
	struct fakeproc cw;
	struct ev_loop *loop;
	struct http_client *http;
	struct aws_credentials_provider *creds;
	struct cwlogs *client;
	int64_t t0;
};

static struct fx F;

static int setup(void **state)
{
	(void)state;
	memset(&F, 0, sizeof F);
	assert_int_equal(fakeproc_start(&F.cw, "cloudwatch.py", NULL), 0);
	setenv("AWS_ACCESS_KEY_ID", AKID, 1);
	setenv("AWS_SECRET_ACCESS_KEY", SECRET, 1);
	unsetenv("AWS_SESSION_TOKEN");
	F.loop = ev_loop_new(EVFLAG_AUTO);
	F.http = http_client_new(F.loop);
	struct aws_credentials_opts co = {.no_file = 1, .no_imds = 1};
	struct err err;
	F.creds = aws_credentials_new(F.loop, F.http, &co, &err);
	struct cwlogs_opts o = {.region = "us-east-1", .endpoint = F.cw.base, .timeout_ms = 3000,
				.retry_base_ms = 10, .retry_cap_ms = 50};
	F.client = cwlogs_new(F.loop, F.http, F.creds, &o, &err);
	if (!F.creds || !F.client)
		fail_msg("%s", err.msg);
	F.t0 = clock_wall_ms() - 60000;
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	cwlogs_free(F.client);
	aws_credentials_free(F.creds);
	http_client_free(F.http);
	ev_loop_destroy(F.loop);
	fakeproc_stop(&F.cw);
	return 0;
}

static int put_done;

static void on_put(const struct cwlogs_result *res, void *arg)
{
	(void)arg;
	assert_int_equal(res->status, CWLOGS_OK);
	put_done++;
}

/* Puts n events "<tag> <i>" at t0 + step*i into stream. */
static void put(const char *stream, const char *tag, int n, int64_t first, int64_t step)
{
	struct cwlogs_event *ev = calloc((size_t)n, sizeof *ev);
	char(*msgs)[32] = calloc((size_t)n, 32);
	for (int i = 0; i < n; i++) {
		snprintf(msgs[i], 32, "%s %d", tag, i);
		ev[i] = (struct cwlogs_event){first + step * i, msgs[i], strlen(msgs[i])};
	}
	put_done = 0;
	assert_true(cwlogs_put_events(F.client, GROUP, stream, ev, (size_t)n, on_put, NULL) > 0);
	while (!put_done)
		ev_run(F.loop, EVRUN_ONCE);
	free(ev);
	free(msgs);
}

struct page {
	int done;
	enum cwlogs_status status;
	bool not_found;
	char msgs[64][64];
	char streams[64][64];
	size_t n;
	char next[512];
	bool has_next;
	int attempts;
};

static void on_page(const struct cwlogs_read_result *r, void *arg)
{
	struct page *p = arg;
	p->done++;
	p->status = r->status;
	p->not_found = r->not_found;
	p->attempts = r->attempts;
	p->n = r->count;
	for (size_t i = 0; i < r->count && i < 64; i++) {
		snprintf(p->msgs[i], 64, "%s", r->events[i].message);
		snprintf(p->streams[i], 64, "%s", r->events[i].stream);
	}
	p->has_next = r->next_token != NULL;
	snprintf(p->next, sizeof p->next, "%s", r->next_token ? r->next_token : "");
}

static void filter(const struct cwlogs_filter *f, struct page *p)
{
	memset(p, 0, sizeof *p);
	assert_true(cwlogs_filter_events(F.client, f, on_page, p) > 0);
	while (!p->done)
		ev_run(F.loop, EVRUN_ONCE);
	assert_int_equal(cwlogs_pending(F.client), 0);
}

static void get(const struct cwlogs_get *g, struct page *p)
{
	memset(p, 0, sizeof *p);
	assert_true(cwlogs_get_events(F.client, g, on_page, p) > 0);
	while (!p->done)
		ev_run(F.loop, EVRUN_ONCE);
}

static void test_filter(void **state)
{
	(void)state;
	struct page p;
	/* Nothing shipped yet: no group, an empty answer. */
	struct cwlogs_filter f = {.group = GROUP};
	filter(&f, &p);
	assert_int_equal(p.status, CWLOGS_OK);
	assert_true(p.not_found);
	assert_int_equal(p.n, 0);
	/* Two web containers interleaved in time, and a worker. */
	put("web/i-1/aaa", "a", 3, F.t0 + 0, 10);
	put("web/i-2/bbb", "b", 3, F.t0 + 5, 10);
	put("worker/i-1/ccc", "w", 2, F.t0 + 1, 10);
	f = (struct cwlogs_filter){.group = GROUP, .stream_prefix = "web/", .limit = 4};
	filter(&f, &p);
	assert_int_equal(p.status, CWLOGS_OK);
	assert_int_equal(p.n, 4);
	assert_string_equal(p.msgs[0], "a 0");
	assert_string_equal(p.msgs[1], "b 0");
	assert_string_equal(p.msgs[2], "a 1");
	assert_string_equal(p.streams[3], "web/i-2/bbb");
	assert_true(p.has_next);
	char tok[512];
	snprintf(tok, sizeof tok, "%s", p.next);
	f.next_token = tok;
	filter(&f, &p);
	assert_int_equal(p.n, 2);
	assert_string_equal(p.msgs[0], "a 2");
	assert_string_equal(p.msgs[1], "b 2");
	assert_false(p.has_next);
	/* A start time, every stream. */
	f = (struct cwlogs_filter){.group = GROUP, .start_ms = F.t0 + 11};
	filter(&f, &p);
	assert_int_equal(p.n, 4);
	assert_string_equal(p.msgs[0], "w 1");
	assert_string_equal(p.msgs[3], "b 2");
}

static void test_get(void **state)
{
	(void)state;
	put("web/i-1/aaa", "a", 5, F.t0, 10);
	struct page p;
	struct cwlogs_get g = {.group = GROUP, .stream = "web/i-1/aaa", .limit = 2,
			       .start_from_head = true};
	get(&g, &p);
	assert_int_equal(p.n, 2);
	assert_string_equal(p.msgs[0], "a 0");
	assert_string_equal(p.streams[0], "web/i-1/aaa");
	/* Newest first page (the service's default), then follow forward. */
	g.start_from_head = false;
	get(&g, &p);
	assert_int_equal(p.n, 2);
	assert_string_equal(p.msgs[0], "a 3");
	assert_string_equal(p.msgs[1], "a 4");
	char tok[512];
	snprintf(tok, sizeof tok, "%s", p.next);
	g.next_token = tok;
	get(&g, &p);
	assert_int_equal(p.n, 0);
	assert_string_equal(p.next, tok); /* nothing new: the same token */
	put("web/i-1/aaa", "c", 1, F.t0 + 100, 1);
	get(&g, &p);
	assert_int_equal(p.n, 1);
	assert_string_equal(p.msgs[0], "c 0");
	g = (struct cwlogs_get){.group = GROUP, .stream = "web/i-9/none"};
	get(&g, &p);
	assert_true(p.not_found);
}

static void test_faults(void **state)
{
	(void)state;
	put("web/i-1/aaa", "a", 1, F.t0, 1);
	free(fakeproc_http(&F.cw, "POST", "/_fake/fault",
		      "{\"kind\":\"throttle\",\"count\":2,\"target\":\"FilterLogEvents\"}"));
	struct page p;
	struct cwlogs_filter f = {.group = GROUP};
	filter(&f, &p);
	assert_int_equal(p.status, CWLOGS_OK);
	assert_int_equal(p.n, 1);
	assert_int_equal(p.attempts, 3);
	free(fakeproc_http(&F.cw, "POST", "/_fake/fault",
		      "{\"kind\":\"error500\",\"count\":10,\"target\":\"FilterLogEvents\"}"));
	filter(&f, &p);
	assert_int_equal(p.status, CWLOGS_UNREACHABLE);
	assert_int_equal(p.attempts, CWLOGS_READ_ATTEMPTS);
	free(fakeproc_http(&F.cw, "POST", "/_fake/clear", NULL));
	/* Cancelled: no callback. */
	memset(&p, 0, sizeof p);
	uint64_t id = cwlogs_filter_events(F.client, &f, on_page, &p);
	assert_true(id > 0);
	cwlogs_cancel(F.client, id);
	assert_int_equal(cwlogs_pending(F.client), 0);
	ev_run(F.loop, EVRUN_NOWAIT);
	assert_int_equal(p.done, 0);
	/* Freed with a read in flight (teardown): no leak, no callback. */
	assert_true(cwlogs_filter_events(F.client, &f, on_page, &p) > 0);
}

int main(void)
{
	log_init("test_cwlogs_read", LOG_LEVEL_ERROR, 0);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bodies),
		cmocka_unit_test_setup_teardown(test_filter, setup, teardown),
		cmocka_unit_test_setup_teardown(test_get, setup, teardown),
		cmocka_unit_test_setup_teardown(test_faults, setup, teardown),
	};
	return cmocka_run_group_tests_name("cwlogs_read", tests, NULL, NULL);
}
