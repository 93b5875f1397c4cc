/*
 * logsink: the PutLogEvents-like batch rules, unknown apps counted as
 * rejected, the per-app bound (oldest trimmed, total never over it), and the
 * read API over HTTP (tail, after, service filter, follow).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "coord_fixture.h"

static int setup(void **state)
{
	static struct fx f;
	fx_init(&f, "logs.max_per_app = 64k\n", 1);
	fx_app(&f, "web", "all");
	*state = &f;
	return 0;
}

static int teardown(void **state)
{
	fx_free(*state);
	return 0;
}

/* A batch of n events of msg_len bytes for app, starting at ts. */
static cJSON *batch(const char *app, int n, size_t msg_len, int64_t ts)
{
	cJSON *b = cJSON_CreateObject();
	cJSON *streams = cJSON_AddArrayToObject(b, "streams");
	cJSON *s = cJSON_CreateObject();
	cJSON_AddStringToObject(s, "app", app);
	cJSON_AddStringToObject(s, "service", "web");
	cJSON_AddStringToObject(s, "container", "3f9a1c");
	cJSON_AddStringToObject(s, "release", "r_1");
	cJSON *evs = cJSON_AddArrayToObject(s, "events");
	char *msg = malloc(msg_len + 1);
	for (int i = 0; i < n; i++) {
		memset(msg, 'a' + i % 26, msg_len);
		msg[msg_len] = '\0';
		if (msg_len >= 8)
			snprintf(msg, msg_len + 1, "%07d", i), msg[7] = ' ';
		cJSON *e = cJSON_CreateObject();
		cJSON_AddNumberToObject(e, "ts_ms", (double)(ts + i));
		cJSON_AddStringToObject(e, "stream", i % 2 ? "stderr" : "stdout");
		cJSON_AddStringToObject(e, "message", msg);
		cJSON_AddItemToArray(evs, e);
	}
	free(msg);
	cJSON_AddItemToArray(streams, s);
	return b;
}

static void batch_rules(void **state)
{
	(void)state;
	struct err err;
	size_t n;
	cJSON *b = batch("web", 10, 20, 1000);
	assert_int_equal(logsink_check_batch(b, &n, &err), 0);
	assert_int_equal(n, 10);
	cJSON_Delete(b);
	b = batch("web", LOGSINK_EVENTS_MAX + 1, 1, 1000);
	assert_int_equal(logsink_check_batch(b, &n, &err), -1);
	cJSON_Delete(b);
	b = batch("web", LOGSINK_EVENTS_MAX, 1, 1000); /* exactly the limit */
	assert_int_equal(logsink_check_batch(b, &n, &err), 0);
	cJSON_Delete(b);
	/* 1 MiB counting 26 bytes per event */
	size_t per = 1000 - LOGSINK_EVENT_OVERHEAD;
	b = batch("web", 1048, per, 1000); /* 1,048,000 bytes */
	assert_int_equal(logsink_check_batch(b, &n, &err), 0);
	cJSON_Delete(b);
	b = batch("web", 1049, per, 1000);
	assert_int_equal(logsink_check_batch(b, &n, &err), -1);
	assert_non_null(strstr(err.msg, "bytes"));
	cJSON_Delete(b);
	/* out of order within a stream */
	b = batch("web", 3, 5, 1000);
	cJSON *evs = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(b, "streams"), 0),
					 "events");
	cJSON_ReplaceItemInObject(cJSON_GetArrayItem(evs, 2), "ts_ms", cJSON_CreateNumber(10));
	assert_int_equal(logsink_check_batch(b, &n, &err), -1);
	assert_non_null(strstr(err.msg, "chronological"));
	cJSON_Delete(b);
	static const char *const bad[] = {
		"{}",
		"{\"streams\":[{\"app\":\"Web\",\"service\":\"web\",\"container\":\"c\",\"events\":[]}]}",
		"{\"streams\":[{\"app\":\"web\",\"service\":\"web\",\"container\":\"c\",\"events\":"
		"[{\"ts_ms\":1,\"stream\":\"stdin\",\"message\":\"x\"}]}]}",
		"{\"streams\":[{\"app\":\"web\",\"service\":\"web\",\"container\":\"c\",\"events\":"
		"[{\"ts_ms\":\"1\",\"message\":\"x\"}]}]}",
		"{\"streams\":[{\"app\":\"web\",\"service\":\"web\",\"events\":[]}]}",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		cJSON *j = json_parse(bad[i], strlen(bad[i]), 4096, NULL);
		assert_non_null(j);
		assert_int_equal(logsink_check_batch(j, &n, &err), -1);
		cJSON_Delete(j);
	}
}

struct st {
	struct fx *f;
	cJSON *batch;
	size_t accepted, rejected;
	int64_t bytes;
	const char *app;
};

static int store_tx(struct store_tx *tx, void *arg)
{
	struct st *s = arg;
	return logsink_store_tx(tx, s->f->c.logsink, "ag_1", s->batch,
				config_size(s->f->c.cfg, "logs.max_per_app"), &s->accepted,
				&s->rejected);
}

static int bytes_tx(struct store_tx *tx, void *arg)
{
	struct st *s = arg;
	s->bytes = logsink_app_bytes_tx(tx, s->f->c.logsink, s->app);
	return 0;
}

static void bounded_per_app(void **state)
{
	struct fx *f = *state;
	struct err err;
	int64_t max = 64 << 10;
	int64_t ts = 1000;
	for (int round = 0; round < 40; round++) {
		struct st s = {.f = f, .batch = batch("web", 50, 100, ts)};
		ts += 50;
		assert_int_equal(store_run(f->c.store, store_tx, &s, &err), 0);
		assert_int_equal(s.accepted, 50);
		assert_int_equal(s.rejected, 0);
		cJSON_Delete(s.batch);
		/* what the table holds never passes the bound */
		int64_t held = fx_int(f, "SELECT sum(length(message) + %d) FROM logs WHERE app = 'web'",
				      LOGSINK_ROW_OVERHEAD);
		assert_true(held <= max);
		struct st b = {.f = f, .app = "web"};
		assert_int_equal(store_run(f->c.store, bytes_tx, &b, &err), 0);
		assert_int_equal(b.bytes, held);
	}
	/* 2,000 events of 164 counted bytes = 328,000 > 64 KiB: the oldest went */
	int64_t kept = fx_int(f, "SELECT count(*) FROM logs");
	assert_true(kept < 400 && kept > 300);
	assert_int_equal(fx_int(f, "SELECT max(ts_ms) FROM logs"), ts - 1);
	assert_true(fx_int(f, "SELECT min(ts_ms) FROM logs") > 1000);
	/* unknown app: counted as rejected, nothing stored */
	struct st u = {.f = f, .batch = batch("ghost", 7, 10, 1)};
	assert_int_equal(store_run(f->c.store, store_tx, &u, &err), 0);
	assert_int_equal(u.accepted, 0);
	assert_int_equal(u.rejected, 7);
	cJSON_Delete(u.batch);
	assert_int_equal(fx_int(f, "SELECT count(*) FROM logs WHERE app = 'ghost'"), 0);
}

static void http_post_and_read(void **state)
{
	struct fx *f = *state;
	cJSON *j = NULL;
	assert_int_equal(fx_req(f, "POST", "/v1/agents/register", FX_BOOT,
				"{\"instance_id\":\"i-1\"}", &j, NULL),
			 200);
	char id[72], tok[128], path[256];
	snprintf(id, sizeof id, "%s", fx_str(j, "agent_id"));
	snprintf(tok, sizeof tok, "%s", fx_str(j, "token"));
	cJSON_Delete(j);
	snprintf(path, sizeof path, "/v1/agents/%s/logs", id);
	cJSON *b = batch("web", 30, 12, 5000);
	char *text = cJSON_PrintUnformatted(b);
	cJSON_Delete(b);
	assert_int_equal(fx_req(f, "POST", path, tok, text, &j, NULL), 200);
	free(text);
	assert_int_equal((int)fx_num(j, "accepted"), 30);
	assert_int_equal((int)fx_num(j, "rejected"), 0);
	cJSON_Delete(j);
	assert_int_equal(fx_req(f, "POST", path, tok, "{\"streams\":7}", NULL, NULL), 400);
	/* tail */
	assert_int_equal(fx_req(f, "GET", "/v1/apps/web/logs?limit=5", f->admin_key, NULL, &j, NULL),
			 200);
	cJSON *evs = cJSON_GetObjectItem(j, "events");
	assert_int_equal(cJSON_GetArraySize(evs), 5);
	assert_int_equal((int)fx_num(cJSON_GetArrayItem(evs, 4), "ts_ms"), 5029);
	assert_int_equal((int)fx_num(cJSON_GetArrayItem(evs, 0), "ts_ms"), 5025);
	assert_string_equal(fx_str(cJSON_GetArrayItem(evs, 0), "agent"), id);
	int next = (int)fx_num(j, "next");
	cJSON_Delete(j);
	/* since as absolute ms; after an id */
	assert_int_equal(fx_req(f, "GET", "/v1/apps/web/logs?after=0&limit=3", f->admin_key, NULL,
				&j, NULL),
			 200);
	assert_int_equal((int)fx_num(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "events"), 0),
				     "ts_ms"),
			 5000);
	cJSON_Delete(j);
	snprintf(path, sizeof path, "/v1/apps/web/logs?after=%d", next);
	assert_int_equal(fx_req(f, "GET", path, f->admin_key, NULL, &j, NULL), 200);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j, "events")), 0);
	cJSON_Delete(j);
	assert_int_equal(fx_req(f, "GET", "/v1/apps/web/logs?service=db", f->admin_key, NULL, &j,
				NULL),
			 200);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j, "events")), 0);
	cJSON_Delete(j);
	assert_int_equal(fx_req(f, "GET", "/v1/apps/web/logs?since=forever", f->admin_key, NULL,
				NULL, NULL),
			 400);
	assert_int_equal(fx_req(f, "GET", "/v1/apps/web/logs?since=10m", f->admin_key, NULL, &j,
				NULL),
			 200);
	cJSON_Delete(j);
	/* metrics: the latest batch per agent */
	snprintf(path, sizeof path, "/v1/agents/%s/metrics", id);
	assert_int_equal(fx_req(f, "POST", path, tok,
				"{\"metrics\":[{\"name\":\"container_memory_bytes\",\"value\":41943040,"
				"\"unit\":\"Bytes\",\"ts_ms\":1,\"dimensions\":{\"App\":\"web\"}}]}",
				&j, NULL),
			 200);
	assert_int_equal((int)fx_num(j, "accepted"), 1);
	cJSON_Delete(j);
	assert_int_equal(fx_req(f, "POST", path, tok, "{\"metrics\":[{\"name\":\"x\"}]}", NULL, NULL),
			 400);
	assert_int_equal(fx_req(f, "GET", path, f->admin_key, NULL, &j, NULL), 200);
	assert_string_equal(fx_str(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "metrics"), 0), "name"),
			    "container_memory_bytes");
	cJSON_Delete(j);
}

struct stream {
	struct buf data;
	int lines;
};

static int stream_data(const char *data, size_t len, void *arg)
{
	struct stream *s = arg;
	buf_append(&s->data, data, len);
	s->lines = 0;
	for (size_t i = 0; i < s->data.len; i++)
		s->lines += s->data.data[i] == '\n';
	return 0;
}

static void stream_done(const struct http_response *resp, void *arg)
{
	(void)resp;
	(void)arg;
}

static void follow(void **state)
{
	struct fx *f = *state;
	cJSON *j = NULL;
	assert_int_equal(fx_req(f, "POST", "/v1/agents/register", FX_BOOT,
				"{\"instance_id\":\"i-1\"}", &j, NULL),
			 200);
	char id[72], tok[128], path[256];
	snprintf(id, sizeof id, "%s", fx_str(j, "agent_id"));
	snprintf(tok, sizeof tok, "%s", fx_str(j, "token"));
	cJSON_Delete(j);
	snprintf(path, sizeof path, "/v1/agents/%s/logs", id);
	cJSON *b = batch("web", 3, 10, 100);
	char *text = cJSON_PrintUnformatted(b);
	cJSON_Delete(b);
	assert_int_equal(fx_req(f, "POST", path, tok, text, NULL, NULL), 200);
	free(text);
	struct stream s = {0};
	buf_init(&s.data, 1 << 20);
	char url[256], auth[256];
	snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/apps/web/logs?follow=1", f->port);
	snprintf(auth, sizeof auth, "Authorization: Bearer %s", f->admin_key);
	const char *headers[] = {auth, NULL};
	struct http_request req = {.url = url, .headers = headers, .on_data = stream_data,
				   .on_done = stream_done, .arg = &s};
	uint64_t rid = http_client_start(f->http, &req);
	assert_true(rid > 0);
	while (s.lines < 3)
		ev_run(f->loop, EVRUN_ONCE);
	/* new events follow */
	b = batch("web", 2, 10, 200);
	text = cJSON_PrintUnformatted(b);
	cJSON_Delete(b);
	assert_int_equal(fx_req(f, "POST", path, tok, text, NULL, NULL), 200);
	free(text);
	double t0 = ev_time();
	while (s.lines < 5 && ev_time() - t0 < 5)
		ev_run(f->loop, EVRUN_ONCE);
	assert_int_equal(s.lines, 5);
	char *last = strrchr(s.data.data, '{');
	cJSON *e = json_parse(last, strlen(last), strlen(last) + 1, NULL);
	assert_non_null(e);
	assert_int_equal((int)fx_num(e, "ts_ms"), 201);
	cJSON_Delete(e);
	/* the client goes away: the follower ends with it */
	http_client_cancel(f->http, rid);
	t0 = ev_time();
	while (ev_time() - t0 < 0.7)
		ev_run(f->loop, EVRUN_ONCE);
	assert_int_equal(server_request_count(f->c.server), 0);
	buf_free(&s.data);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(batch_rules),
		cmocka_unit_test_setup_teardown(bounded_per_app, setup, teardown),
		cmocka_unit_test_setup_teardown(http_post_and_read, setup, teardown),
		cmocka_unit_test_setup_teardown(follow, setup, teardown),
	};
	return cmocka_run_group_tests_name("logsink", tests, NULL, NULL);
}
