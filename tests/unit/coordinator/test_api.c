/*
 * api: over HTTP against the in-process coordinator (coord_fixture.h):
 *   - every {app} route answers 404 for an unknown app (logs and their
 *     follow stream included), and refuses nothing for a known one;
 *   - DELETE /v1/apps/{app} of an app linked to GitLab is 409 naming
 *     `slipway apps unlink`, and deletes nothing;
 *   - builds and releases name the rollout that promoted them;
 *   - the polled streams (logs?follow=1, a running build's log) send an empty
 *     line after 15 s of silence (a frozen clock moved by hand), not before.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "coord_fixture.h"
#include "link.h"

static int setup(void **state)
{
	static struct fx f;
	fx_init(&f, NULL, 1);
	/* The link and Slack routes too (they need an HTTP client for GitLab). */
	f.c.http = f.http;
	if (link_register(&f.c) < 0)
		return -1;
	fx_app(&f, "web", "all");
	*state = &f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	clock_fake_off();
	link_free(&f->c);
	fx_free(f);
	return 0;
}

/* Every route with {app}, as method + path with "%s" for the app, and a body. */
static const struct {
	const char *method, *path, *body;
} app_routes[] = {
	{"GET", "/v1/apps/%s", NULL},
	{"PATCH", "/v1/apps/%s", "{\"strategy\":\"canary\"}"},
	{"DELETE", "/v1/apps/%s", NULL},
	{"GET", "/v1/apps/%s/builds", NULL},
	{"GET", "/v1/apps/%s/releases", NULL},
	{"POST", "/v1/apps/%s/releases",
	 "{\"services\":{\"web\":{\"image\":\"registry/web:1\"}},\"promote\":false}"},
	{"GET", "/v1/apps/%s/releases/r_nosuch", NULL},
	{"POST", "/v1/apps/%s/releases/r_nosuch/promote", NULL},
	{"POST", "/v1/apps/%s/releases/r_nosuch/rollback", NULL},
	{"GET", "/v1/apps/%s/rollouts", NULL},
	{"GET", "/v1/apps/%s/rollouts/ro_nosuch", NULL},
	{"GET", "/v1/apps/%s/env", NULL},
	{"PATCH", "/v1/apps/%s/env", "{\"set\":{\"A\":\"1\"}}"},
	{"POST", "/v1/apps/%s/scale", "{\"service\":\"web\",\"count\":2}"},
	{"GET", "/v1/apps/%s/logs", NULL},
	{"GET", "/v1/apps/%s/logs?follow=1", NULL},
	{"GET", "/v1/apps/%s/link", NULL},
	{"POST", "/v1/apps/%s/link",
	 "{\"gitlab_url\":\"http://127.0.0.1:9\",\"project\":\"group/web\",\"token\":\"t\"}"},
	{"DELETE", "/v1/apps/%s/link", NULL},
	{"GET", "/v1/apps/%s/slack", NULL},
	{"PUT", "/v1/apps/%s/slack", "{\"url\":\"https://hooks.slack.com/services/T/B/X\"}"},
	{"DELETE", "/v1/apps/%s/slack", NULL},
};

static void unknown_app_is_404_everywhere(void **state)
{
	struct fx *f = *state;
	for (size_t i = 0; i < sizeof app_routes / sizeof app_routes[0]; i++) {
		char path[256];
		snprintf(path, sizeof path, app_routes[i].path, "nosuch");
		cJSON *j = NULL;
		long st = fx_req(f, app_routes[i].method, path, f->admin_key, app_routes[i].body,
				 &j, NULL);
		if (st != 404)
			fprintf(stderr, "%s %s: %ld\n", app_routes[i].method, path, st);
		assert_int_equal(st, 404);
		const cJSON *e = cJSON_GetObjectItem(j, "error");
		assert_string_equal(fx_str(e, "code"), "not_found");
		cJSON_Delete(j);
	}
	/* The same log read of a known app is no 404. */
	assert_int_equal(fx_req(f, "GET", "/v1/apps/web/logs", f->admin_key, NULL, NULL, NULL),
			 200);
}

static void deleting_a_linked_app_is_refused(void **state)
{
	struct fx *f = *state;
	fx_exec(f, "UPDATE apps SET hook_id = 'hk_0123', gitlab_hook_id = 7, gitlab_key_id = 12, "
		   "project = 'group/web' WHERE name = 'web'");
	cJSON *j = NULL;
	assert_int_equal(fx_req(f, "DELETE", "/v1/apps/web", f->admin_key, NULL, &j, NULL), 409);
	const cJSON *e = cJSON_GetObjectItem(j, "error");
	assert_string_equal(fx_str(e, "code"), "conflict");
	assert_non_null(strstr(fx_str(e, "message"), "`slipway apps unlink web`"));
	assert_non_null(strstr(fx_str(e, "message"), "group/web"));
	cJSON_Delete(j);
	assert_int_equal(fx_int(f, "SELECT count(*) FROM apps WHERE name = 'web'"), 1);
	/* A deploy key alone is a link too. */
	fx_exec(f, "UPDATE apps SET hook_id = NULL, gitlab_hook_id = NULL WHERE name = 'web'");
	assert_int_equal(fx_req(f, "DELETE", "/v1/apps/web", f->admin_key, NULL, NULL, NULL), 409);
	/* Unlinked: deleted. */
	fx_exec(f, "UPDATE apps SET gitlab_key_id = NULL WHERE name = 'web'");
	assert_int_equal(fx_req(f, "DELETE", "/v1/apps/web", f->admin_key, NULL, &j, NULL), 200);
	assert_string_equal(fx_str(j, "deleted"), "web");
	cJSON_Delete(j);
	assert_int_equal(fx_int(f, "SELECT count(*) FROM apps WHERE name = 'web'"), 0);
}

static void builds_and_releases_name_their_rollout(void **state)
{
	struct fx *f = *state;
	char rel[80], first_ro[80];
	fx_release(f, "web", "registry/web@sha256:00", "build", rel, sizeof rel);
	snprintf(first_ro, sizeof first_ro, "%s",
		 fx_text(f, "SELECT id FROM rollouts WHERE release = '%s'", rel));
	assert_int_equal(strncmp(first_ro, "ro_", 3), 0);
	fx_exec(f, "INSERT INTO builds(id, app, status, source, release, created_ms) VALUES "
		   "('b_1', 'web', 'complete', 'upload', '%s', 1), "
		   "('b_2', 'web', 'running', 'upload', NULL, 2)",
		   rel);
	/* Promoted again later: the field stays the rollout that promoted it first. */
	char path[256];
	snprintf(path, sizeof path, "/v1/apps/web/releases/%s/promote", rel);
	assert_int_equal(fx_req(f, "POST", path, f->admin_key, NULL, NULL, NULL), 202);

	cJSON *j = NULL;
	assert_int_equal(fx_req(f, "GET", "/v1/builds/b_1", f->admin_key, NULL, &j, NULL), 200);
	assert_string_equal(fx_str(j, "rollout"), first_ro);
	cJSON_Delete(j);
	assert_int_equal(fx_req(f, "GET", "/v1/builds/b_2", f->admin_key, NULL, &j, NULL), 200);
	assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "rollout")));
	cJSON_Delete(j);
	assert_int_equal(fx_req(f, "GET", "/v1/apps/web/builds", f->admin_key, NULL, &j, NULL),
			 200);
	const cJSON *builds = cJSON_GetObjectItem(j, "builds");
	assert_int_equal(cJSON_GetArraySize(builds), 2);
	assert_string_equal(fx_str(cJSON_GetArrayItem(builds, 1), "rollout"), first_ro);
	cJSON_Delete(j);

	snprintf(path, sizeof path, "/v1/apps/web/releases/%s", rel);
	assert_int_equal(fx_req(f, "GET", path, f->admin_key, NULL, &j, NULL), 200);
	assert_string_equal(fx_str(j, "rollout"), first_ro);
	cJSON_Delete(j);
	assert_int_equal(fx_req(f, "GET", "/v1/apps/web/releases", f->admin_key, NULL, &j, NULL),
			 200);
	assert_string_equal(fx_str(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "releases"), 0),
				   "rollout"),
			    first_ro);
	cJSON_Delete(j);
	/* Not promoted: null. */
	char quiet[80];
	fx_release(f, "web", "registry/web@sha256:01", NULL, quiet, sizeof quiet);
	snprintf(path, sizeof path, "/v1/apps/web/releases/%s", quiet);
	assert_int_equal(fx_req(f, "GET", path, f->admin_key, NULL, &j, NULL), 200);
	assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "rollout")));
	cJSON_Delete(j);
}

/* ---- keepalive on quiet streams ---- */

struct stream {
	struct buf data;
	int done;
};

static int stream_data(const char *data, size_t len, void *arg)
{
	buf_append(&((struct stream *)arg)->data, data, len);
	return 0;
}

static void stream_done(const struct http_response *resp, void *arg)
{
	(void)resp;
	((struct stream *)arg)->done = 1;
}

/* Runs the loop for about `s` seconds of real time (the streams poll every
 * 500 ms), or until the stream has more than `until` bytes. */
static void run_for(struct fx *f, struct stream *s, double secs, size_t until)
{
	double t0 = ev_time();
	while (ev_time() - t0 < secs && s->data.len <= until && !s->done)
		ev_run(f->loop, EVRUN_ONCE);
}

/* Starts GET path as a stream, waits for its first line (so the stream is
 * open before the clock moves), then checks that 14 s of silence send
 * nothing and 15 s an empty line. */
static void check_keepalive(struct fx *f, const char *path)
{
	clock_fake_set(clock_wall_ms(), 1000000);
	struct stream s = {0};
	buf_init(&s.data, 1 << 20);
	char url[256], auth[256];
	snprintf(url, sizeof url, "http://127.0.0.1:%d%s", f->port, path);
	snprintf(auth, sizeof auth, "Authorization: Bearer %s", f->admin_key);
	const char *headers[] = {auth, NULL};
	struct http_request req = {.url = url, .headers = headers, .on_data = stream_data,
				   .on_done = stream_done, .arg = &s};
	uint64_t rid = http_client_start(f->http, &req);
	assert_true(rid > 0);
	double t0 = ev_time();
	while ((!s.data.len || s.data.data[s.data.len - 1] != '\n') && ev_time() - t0 < 5)
		ev_run(f->loop, EVRUN_ONCE);
	size_t first = s.data.len;
	assert_true(first > 1);
	clock_fake_advance(SERVER_STREAM_KEEPALIVE_MS - 1000);
	run_for(f, &s, 1.2, first);
	assert_int_equal(s.data.len, first); /* 14 s: not yet */
	clock_fake_advance(1000);
	run_for(f, &s, 5, first);
	assert_int_equal(s.data.len, first + 1);
	assert_int_equal(s.data.data[first], '\n');
	/* And again after another 15 s, not at every poll. */
	run_for(f, &s, 1.2, first + 1);
	assert_int_equal(s.data.len, first + 1);
	clock_fake_advance(SERVER_STREAM_KEEPALIVE_MS);
	run_for(f, &s, 5, first + 1);
	assert_int_equal(s.data.len, first + 2);
	assert_false(s.done);
	http_client_cancel(f->http, rid);
	buf_free(&s.data);
	clock_fake_off();
}

static void follow_streams_keep_alive(void **state)
{
	struct fx *f = *state;
	/* One event, so we know the stream is open before the clock moves. */
	fx_exec(f, "INSERT INTO logs(ts_ms, app, service, container, release, agent, stream, "
		   "message) VALUES (1, 'web', 'web', 'c1', NULL, 'ag_1', 'stdout', 'hello')");
	check_keepalive(f, "/v1/apps/web/logs?follow=1");
}

static void build_log_stream_keeps_alive(void **state)
{
	struct fx *f = *state;
	fx_exec(f, "INSERT INTO builds(id, app, status, source, created_ms, started_ms) VALUES "
		   "('b_run', 'web', 'running', 'upload', 1, 1)");
	fx_exec(f, "INSERT INTO build_logs(build, seq, chunk) VALUES ('b_run', 1, CAST('%s' AS "
		   "BLOB))", "2026-01-01T00:00:00.000Z building\n");
	check_keepalive(f, "/v1/builds/b_run/log");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(unknown_app_is_404_everywhere, setup, teardown),
		cmocka_unit_test_setup_teardown(deleting_a_linked_app_is_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(builds_and_releases_name_their_rollout, setup,
						teardown),
		cmocka_unit_test_setup_teardown(follow_streams_keep_alive, setup, teardown),
		cmocka_unit_test_setup_teardown(build_log_stream_keeps_alive, setup, teardown),
	};
	return cmocka_run_group_tests_name("api", tests, NULL, NULL);
}
