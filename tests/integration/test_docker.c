/*
 * common/docker against the real Docker engine and registry of the
 * integration harness (tests/integration/harness.sh; tests/run sources its
 * environment). Everything created carries $SLIPWAY_TEST_LABEL and is removed
 * by the group teardown, which runs even when a test failed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>
#include <cmocka.h>
#include <ev.h>

#include "buf.h"
#include "clock.h"
#include "docker.h"
#include "http_client.h"

struct it {
	const char *sock, *run_id, *label, *registry, *image, *base;
	char label_key[64], label_value[64];
	struct ev_loop *loop;
	struct http_client *http;
	struct docker *d;
	char dir[128];
	char built_ref[256];   /* REGISTRY/slipway-test/built-RUNID:b1 */
	char pushed_ref[256];  /* the same repository, tag p1 */
};

static struct it T;

/* ---- loop helpers ------------------------------------------------------- */

static void on_guard(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	*(int *)w->data = 1;
}

/* Runs the loop until *counter >= n; fails after `seconds`. */
static void wait_for(const int *counter, int n, double seconds, const char *what)
{
	int expired = 0;
	ev_timer guard;
	ev_timer_init(&guard, on_guard, seconds, 0.0);
	guard.data = &expired;
	ev_timer_start(T.loop, &guard);
	while (*counter < n && !expired)
		ev_run(T.loop, EVRUN_ONCE);
	ev_timer_stop(T.loop, &guard);
	if (*counter < n)
		fail_msg("timed out after %.0f s waiting for %s", seconds, what);
}

struct res {
	int called;
	enum docker_error error;
	long status;
	char message[ERR_MSG_MAX];
	char id[256];
	char digest[256];
	cJSON *json;
	int progress;
	struct buf text;
};

static void res_init(struct res *r)
{
	memset(r, 0, sizeof *r);
	buf_init(&r->text, 4 << 20);
}

static void res_free(struct res *r)
{
	cJSON_Delete(r->json);
	buf_free(&r->text);
	memset(r, 0, sizeof *r);
}

static void on_done(const struct docker_result *dr, void *arg)
{
	struct res *r = arg;
	r->called++;
	r->error = dr->error;
	r->status = dr->status;
	snprintf(r->message, sizeof r->message, "%s", dr->message);
	snprintf(r->id, sizeof r->id, "%s", dr->id ? dr->id : "");
	snprintf(r->digest, sizeof r->digest, "%s", dr->digest ? dr->digest : "");
	cJSON_Delete(r->json);
	r->json = dr->json ? cJSON_Duplicate(dr->json, 1) : NULL;
}

static void on_progress(const cJSON *msg, void *arg)
{
	(void)msg;
	((struct res *)arg)->progress++;
}

static void on_text(const char *text, void *arg)
{
	buf_append_str(&((struct res *)arg)->text, text);
}

#define RUN(r, seconds, call)                                                              \
	do {                                                                               \
		res_init(&(r));                                                            \
		assert_true((call) > 0);                                                   \
		wait_for(&(r).called, 1, (seconds), #call);                                \
	} while (0)

#define ASSERT_OK(r)                                                                       \
	do {                                                                               \
		if ((r).error != DOCKER_OK)                                                \
			fail_msg("%s (HTTP %ld): %s", docker_error_name((r).error), (r).status,   \
				 (r).message);                                                     \
	} while (0)

struct get {
	int done;
	long status;
	enum http_error error;
	struct buf body;
};

static void on_get(const struct http_response *resp, void *arg)
{
	struct get *g = arg;
	g->status = resp->status;
	g->error = resp->error;
	buf_append(&g->body, resp->body, resp->body_len);
	g->done = 1;
}

/* A plain HTTP request from the loop (to the container, to the registry). */
static void http_run(const char *method, const char *url, const char *const *headers,
		     struct get *g)
{
	memset(g, 0, sizeof *g);
	buf_init(&g->body, 4 << 20);
	struct http_request req = {
		.method = method, .url = url, .headers = headers, .timeout_ms = 10000,
		.on_done = on_get, .arg = g,
	};
	assert_true(http_client_start(T.http, &req) > 0);
	wait_for(&g->done, 1, 15, url);
}

/* ---- setup and clean-up ------------------------------------------------- */

static const char *need_env(const char *name)
{
	const char *v = getenv(name);
	if (!v || !*v) {
		fprintf(stderr, "%s is not set: run through tests/run, or source the env file "
				"of tests/integration/harness.sh up\n", name);
		return NULL;
	}
	return v;
}

static int group_setup(void **state)
{
	(void)state;
	memset(&T, 0, sizeof T);
	if (!(T.sock = need_env("SLIPWAY_DOCKER_SOCKET")) ||
	    !(T.run_id = need_env("SLIPWAY_TEST_RUN_ID")) ||
	    !(T.label = need_env("SLIPWAY_TEST_LABEL")) ||
	    !(T.registry = need_env("SLIPWAY_TEST_REGISTRY")) ||
	    !(T.image = need_env("SLIPWAY_TEST_IMAGE")) ||
	    !(T.base = need_env("SLIPWAY_TEST_BASE_IMAGE")))
		return -1;
	const char *eq = strchr(T.label, '=');
	if (!eq)
		return -1;
	snprintf(T.label_key, sizeof T.label_key, "%.*s", (int)(eq - T.label), T.label);
	snprintf(T.label_value, sizeof T.label_value, "%s", eq + 1);
	snprintf(T.built_ref, sizeof T.built_ref, "%s/slipway-test/built-%s:b1", T.registry,
		 T.run_id);
	snprintf(T.pushed_ref, sizeof T.pushed_ref, "%s/slipway-test/built-%s:p1", T.registry,
		 T.run_id);
	snprintf(T.dir, sizeof T.dir, "/tmp/slipway-it-docker-XXXXXX");
	if (!mkdtemp(T.dir))
		return -1;
	T.loop = ev_loop_new(EVFLAG_AUTO);
	T.http = http_client_new(T.loop);
	struct docker_opts o = {.socket_path = T.sock};
	T.d = docker_new(T.loop, T.http, &o);
	return T.d ? 0 : -1;
}

/* Removes every container and image carrying the run's label, and our tags. */
static int group_teardown(void **state)
{
	(void)state;
	const char *const labels[] = {T.label, NULL};
	struct res r;
	RUN(r, 60, docker_container_list(T.d, 1, labels, 0, on_done, &r));
	const cJSON *c;
	cJSON_ArrayForEach(c, r.json)
	{
		struct res rm;
		const char *id = cJSON_GetObjectItem(c, "Id")->valuestring;
		RUN(rm, 60, docker_container_remove(T.d, id, 1, 1, 0, on_done, &rm));
		res_free(&rm);
	}
	res_free(&r);
	const char *refs[] = {T.built_ref, T.pushed_ref};
	for (int i = 0; i < 2; i++) {
		RUN(r, 60, docker_image_remove(T.d, refs[i], 1, 0, 0, on_done, &r));
		res_free(&r);
	}
	/* Images we pulled or built inherit the label; the harness's own base and
	 * v1/v2 images are its to remove. */
	docker_free(T.d);
	http_client_free(T.http);
	ev_loop_destroy(T.loop);
	char ctx[256];
	snprintf(ctx, sizeof ctx, "%s/context.tar.gz", T.dir);
	unlink(ctx);
	rmdir(T.dir);
	return 0;
}

/* ---- tests -------------------------------------------------------------- */

static void test_negotiate(void **state)
{
	(void)state;
	struct res r;
	RUN(r, 30, docker_negotiate(T.d, on_done, &r));
	ASSERT_OK(r);
	const char *api = cJSON_GetObjectItem(r.json, "ApiVersion")->valuestring;
	int minor = atoi(strchr(api, '.') + 1);
	char want[16];
	snprintf(want, sizeof want, "1.%d", minor < DOCKER_API_MAX_MINOR ? minor : DOCKER_API_MAX_MINOR);
	assert_string_equal(docker_api_version(T.d), want);
	print_message("# engine %s speaks API %s; negotiated %s\n",
		      cJSON_GetObjectItem(r.json, "Version")->valuestring, api, want);
	/* Debian 12's engine (20.10) speaks 1.41, the floor slipway supports. */
	if (strncmp(cJSON_GetObjectItem(r.json, "Version")->valuestring, "20.10", 5) == 0)
		assert_string_equal(want, "1.41");
	res_free(&r);
}

static void test_pull(void **state)
{
	(void)state;
	/* The harness left it untagged; make sure, so the pull really fetches. */
	struct res r;
	RUN(r, 60, docker_image_remove(T.d, T.image, 0, 0, 0, on_done, &r));
	assert_true(r.error == DOCKER_OK || r.error == DOCKER_ERR_NOT_FOUND);
	res_free(&r);
	RUN(r, 120, docker_image_pull(T.d, T.image, NULL, 0, on_progress, on_done, &r));
	ASSERT_OK(r);
	assert_true(r.progress >= 2);
	assert_int_equal(strlen(r.digest), 71);
	assert_memory_equal(r.digest, "sha256:", 7);
	char digest[80];
	snprintf(digest, sizeof digest, "%s", r.digest);
	res_free(&r);
	RUN(r, 30, docker_image_inspect(T.d, T.image, 0, on_done, &r));
	ASSERT_OK(r);
	assert_string_equal(r.digest, digest);
	res_free(&r);
}

static void test_pull_missing_tag(void **state)
{
	(void)state;
	char ref[300];
	snprintf(ref, sizeof ref, "%s/slipway-test/testsrv:nonexistent-%s", T.registry, T.run_id);
	struct res r;
	RUN(r, 60, docker_image_pull(T.d, ref, NULL, 0, on_progress, on_done, &r));
	/* Engine 20.10 knows the manifest is missing before it starts the stream
	 * (404); newer engines may report it inside the 200 stream. Either way it
	 * is an error, never a success without a digest. */
	print_message("# missing tag: %s (HTTP %ld): %s\n", docker_error_name(r.error), r.status,
		      r.message);
	assert_true(r.error == DOCKER_ERR_NOT_FOUND || r.error == DOCKER_ERR_STREAM);
	assert_non_null(strstr(r.message, "not found"));
	assert_string_equal(r.digest, "");
	res_free(&r);
}

struct watch {
	char cid[72];
	struct buf actions;   /* "start\n" ... for our container */
	int start, die, stop, reconnected;
};

static void on_event(const cJSON *ev, int64_t time_ns, void *arg)
{
	struct watch *w = arg;
	/* Actor.ID, not the top-level "id" that API 1.52 dropped. */
	const cJSON *actor_id = cJSON_GetObjectItem(cJSON_GetObjectItem(ev, "Actor"), "ID");
	const char *id = cJSON_IsString(actor_id) ? actor_id->valuestring : "";
	const cJSON *action = cJSON_GetObjectItem(ev, "Action");
	if (!w->cid[0] || strcmp(id, w->cid) != 0 || !cJSON_IsString(action))
		return;
	assert_true(time_ns > 0);
	buf_printf(&w->actions, "%s\n", action->valuestring);
	w->start += strcmp(action->valuestring, "start") == 0;
	w->die += strcmp(action->valuestring, "die") == 0;
	w->stop += strcmp(action->valuestring, "stop") == 0;
}

struct logs {
	struct res r;         /* first: one arg serves both callbacks */
	int listening;
	int out_lines, err_lines;
	int64_t min_ts, max_ts;
};

static int on_log(const struct linesplit_line *l, void *arg)
{
	struct logs *g = arg;
	if (l->ts_ns > 0) {
		if (!g->min_ts || l->ts_ns < g->min_ts)
			g->min_ts = l->ts_ns;
		if (l->ts_ns > g->max_ts)
			g->max_ts = l->ts_ns;
	}
	if (strstr(l->text, "testsrv release=r1 listening port=8080") && l->stream == 1)
		g->listening++;
	if (strncmp(l->text, "testsrv log seq=", 16) == 0) {
		/* Lines of exactly the size asked for: Docker cut the 20000-byte ones
		 * into 16 KiB messages with a timestamp each, and they came back whole. */
		if (l->stream == 1 && strstr(l->text, "stream=stdout") && l->len == 100 &&
		    l->flags == 0)
			g->out_lines++;
		else if (l->stream == 2 && strstr(l->text, "stream=stderr") && l->len == 20000 &&
			 l->flags == 0 && strspn(l->text + 100, "x") > 0 &&
			 !memchr(l->text + 100, 'Z', l->len - 100))
			g->err_lines++;
		else
			fail_msg("line on the wrong stream %d: %s", l->stream, l->text);
	}
	return 0;
}

static void test_container_lifecycle(void **state)
{
	(void)state;
	int64_t t0 = clock_wall_ms();
	struct watch w;
	memset(&w, 0, sizeof w);
	buf_init(&w.actions, 1 << 20);
	const char *const labels[] = {T.label, NULL};
	struct docker_events_opts eo = {
		.type = "container", .labels = labels,
		/* Replay from a little before now, so the start cannot slip past. */
		.since_ns = (t0 - 2000) * 1000000,
		.on_event = on_event, .arg = &w,
	};
	uint64_t sub = docker_events_subscribe(T.d, &eo);
	assert_true(sub > 0);

	char name[128];
	snprintf(name, sizeof name, "slipway-test-%s-web", T.run_id);
	cJSON *body = cJSON_CreateObject();
	cJSON_AddStringToObject(body, "Image", T.image);
	cJSON *env = cJSON_AddArrayToObject(body, "Env");
	cJSON_AddItemToArray(env, cJSON_CreateString("RELEASE=r1"));
	cJSON *lab = cJSON_AddObjectToObject(body, "Labels");
	cJSON_AddStringToObject(lab, T.label_key, T.label_value);
	cJSON_AddStringToObject(lab, "slipway.app", "web");
	cJSON_AddStringToObject(lab, "slipway.release", "r1");
	cJSON_AddStringToObject(lab, "slipway.service", "web");
	cJSON_AddStringToObject(lab, "slipway.generation", "1");
	struct res r;
	RUN(r, 30, docker_container_create(T.d, name, body, 0, on_done, &r));
	cJSON_Delete(body);
	ASSERT_OK(r);
	snprintf(w.cid, sizeof w.cid, "%.64s", r.id);
	res_free(&r);

	RUN(r, 30, docker_container_start(T.d, w.cid, 0, on_done, &r));
	ASSERT_OK(r);
	res_free(&r);
	wait_for(&w.start, 1, 30, "the start event");

	RUN(r, 30, docker_container_inspect(T.d, w.cid, 0, on_done, &r));
	ASSERT_OK(r);
	const cJSON *cfg = cJSON_GetObjectItem(r.json, "Config");
	int tty = cJSON_IsTrue(cJSON_GetObjectItem(cfg, "Tty"));
	assert_false(tty);
	assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(cfg, "Labels"),
						"slipway.release")->valuestring, "r1");
	const cJSON *ip = cJSON_GetObjectItem(cJSON_GetObjectItem(r.json, "NetworkSettings"),
					      "IPAddress");
	assert_true(cJSON_IsString(ip) && ip->valuestring[0]);
	char url[256];
	snprintf(url, sizeof url, "http://%s:8080/", ip->valuestring);
	res_free(&r);

	struct logs g;
	memset(&g, 0, sizeof g);
	struct docker_logs_opts lo = {.tty = tty, .follow = 1};
	assert_true(docker_container_logs(T.d, w.cid, &lo, on_log, on_done, &g) > 0);
	wait_for(&g.listening, 1, 30, "testsrv's start line");

	char logurl[300];
	struct get h;
	snprintf(logurl, sizeof logurl, "%slog?n=5&size=100&stream=stdout", url);
	http_run("GET", logurl, NULL, &h);
	assert_int_equal(h.status, 200);
	buf_free(&h.body);
	snprintf(logurl, sizeof logurl, "%slog?n=4&size=20000&stream=stderr", url);
	http_run("GET", logurl, NULL, &h);
	assert_int_equal(h.status, 200);
	buf_free(&h.body);
	http_run("GET", url, NULL, &h);
	assert_string_equal(h.body.data, "hello from r1\n");
	buf_free(&h.body);
	wait_for(&g.out_lines, 5, 30, "5 stdout lines");
	wait_for(&g.err_lines, 4, 30, "4 stderr lines (20000 bytes each: split by Docker)");
	int64_t now = clock_wall_ms();
	assert_true(g.min_ts >= (t0 - 5000) * 1000000);
	assert_true(g.max_ts <= (now + 5000) * 1000000);

	RUN(r, 30, docker_container_stats(T.d, w.cid, 0, on_done, &r));
	ASSERT_OK(r);
	assert_non_null(cJSON_GetObjectItem(r.json, "memory_stats"));
	assert_non_null(cJSON_GetObjectItem(r.json, "cpu_stats"));
	res_free(&r);

	const char *const by_app[] = {T.label, "slipway.app=web", NULL};
	RUN(r, 30, docker_container_list(T.d, 0, by_app, 0, on_done, &r));
	ASSERT_OK(r);
	assert_int_equal(cJSON_GetArraySize(r.json), 1);
	assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(r.json, 0), "Id")->valuestring,
			    w.cid);
	res_free(&r);

	/* SIGTERM with a 10 s grace: testsrv exits 0 at once. */
	RUN(r, 60, docker_container_stop(T.d, w.cid, 10, NULL, 0, on_done, &r));
	ASSERT_OK(r);
	res_free(&r);
	wait_for(&g.r.called, 1, 30, "the end of the log stream");
	assert_int_equal(g.r.error, DOCKER_OK);
	wait_for(&w.die, 1, 30, "the die event");
	wait_for(&w.stop, 1, 30, "the stop event");
	RUN(r, 30, docker_container_inspect(T.d, w.cid, 0, on_done, &r));
	ASSERT_OK(r);
	const cJSON *st = cJSON_GetObjectItem(r.json, "State");
	assert_false(cJSON_IsTrue(cJSON_GetObjectItem(st, "Running")));
	assert_int_equal(cJSON_GetObjectItem(st, "ExitCode")->valueint, 0);
	res_free(&r);
	RUN(r, 30, docker_container_stop(T.d, w.cid, 10, NULL, 0, on_done, &r));
	ASSERT_OK(r); /* 304: already stopped */
	assert_int_equal(r.status, 304);
	res_free(&r);

	RUN(r, 30, docker_container_remove(T.d, w.cid, 0, 1, 0, on_done, &r));
	ASSERT_OK(r);
	res_free(&r);
	RUN(r, 30, docker_container_inspect(T.d, w.cid, 0, on_done, &r));
	assert_int_equal(r.error, DOCKER_ERR_NOT_FOUND);
	res_free(&r);
	print_message("# events for the container: %s", w.actions.data);
	docker_cancel(T.d, sub);
	buf_free(&w.actions);
	res_free(&g.r);
}

/* A tar.gz build context with one Dockerfile, written with libarchive. */
static void write_context(const char *path, const char *dockerfile)
{
	struct archive *a = archive_write_new();
	assert_non_null(a);
	assert_int_equal(archive_write_add_filter_gzip(a), ARCHIVE_OK);
	assert_int_equal(archive_write_set_format_pax_restricted(a), ARCHIVE_OK);
	assert_int_equal(archive_write_open_filename(a, path), ARCHIVE_OK);
	struct archive_entry *e = archive_entry_new();
	archive_entry_set_pathname(e, "Dockerfile");
	archive_entry_set_size(e, (la_int64_t)strlen(dockerfile));
	archive_entry_set_filetype(e, AE_IFREG);
	archive_entry_set_perm(e, 0644);
	assert_int_equal(archive_write_header(a, e), ARCHIVE_OK);
	assert_int_equal(archive_write_data(a, dockerfile, strlen(dockerfile)),
			 (la_ssize_t)strlen(dockerfile));
	archive_entry_free(e);
	assert_int_equal(archive_write_close(a), ARCHIVE_OK);
	archive_write_free(a);
}

static void test_build_tag_push(void **state)
{
	(void)state;
	char ctx[256], dockerfile[1024];
	snprintf(ctx, sizeof ctx, "%s/context.tar.gz", T.dir);
	snprintf(dockerfile, sizeof dockerfile,
		 "FROM %s\nRUN echo built-%s > /built.txt\nCMD [\"/testsrv\"]\n", T.base, T.run_id);
	write_context(ctx, dockerfile);
	cJSON *labels = cJSON_CreateObject();
	cJSON_AddStringToObject(labels, T.label_key, T.label_value);
	const char *const tags[] = {T.built_ref, NULL};
	struct docker_build_opts o = {
		.context_file = ctx, .tags = tags, .labels = labels, .on_output = on_text,
	};
	struct res r;
	RUN(r, 300, docker_image_build(T.d, &o, on_done, &r));
	cJSON_Delete(labels);
	ASSERT_OK(r);
	/* FROM, RUN, CMD, and the LABEL step the labels parameter adds. */
	assert_non_null(strstr(r.text.data, "Step 1/4 : FROM"));
	assert_non_null(strstr(r.text.data, "Successfully built"));
	assert_memory_equal(r.id, "sha256:", 7);
	char image_id[80];
	snprintf(image_id, sizeof image_id, "%.71s", r.id);
	res_free(&r);

	RUN(r, 30, docker_image_inspect(T.d, T.built_ref, 0, on_done, &r));
	ASSERT_OK(r);
	assert_string_equal(r.id, image_id);
	assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(r.json,
		"Config"), "Labels"), T.label_key)->valuestring, T.label_value);
	res_free(&r);

	RUN(r, 30, docker_image_tag(T.d, image_id, T.pushed_ref, 0, on_done, &r));
	ASSERT_OK(r);
	res_free(&r);
	RUN(r, 300, docker_image_push(T.d, T.pushed_ref, NULL, 0, on_progress, on_done, &r));
	ASSERT_OK(r);
	assert_true(r.progress >= 2);
	assert_int_equal(strlen(r.digest), 71);
	char pushed[80];
	snprintf(pushed, sizeof pushed, "%s", r.digest);
	res_free(&r);
	RUN(r, 30, docker_image_inspect(T.d, T.pushed_ref, 0, on_done, &r));
	ASSERT_OK(r);
	assert_string_equal(r.digest, pushed);
	res_free(&r);
	/* The registry now serves that digest. */
	char url[512];
	snprintf(url, sizeof url, "http://%s/v2/slipway-test/built-%s/manifests/p1", T.registry,
		 T.run_id);
	static const char *const accept[] = {
		"Accept: application/vnd.docker.distribution.manifest.v2+json", NULL};
	struct get h;
	http_run("GET", url, accept, &h);
	assert_int_equal(h.status, 200);
	cJSON *manifest = cJSON_Parse(h.body.data);
	buf_free(&h.body);
	assert_non_null(manifest);
	const cJSON *layers = cJSON_GetObjectItem(manifest, "layers");
	int nl = cJSON_GetArraySize(layers);
	assert_true(nl >= 2);
	char top_layer[80];
	snprintf(top_layer, sizeof top_layer, "%s",
		 cJSON_GetObjectItem(cJSON_GetArrayItem(layers, nl - 1), "digest")->valuestring);
	cJSON_Delete(manifest);

	/* An error inside the 200 stream, for real: the manifest is there but the
	 * top layer's blob is gone, so the engine fails mid-pull. */
	snprintf(url, sizeof url, "http://%s/v2/slipway-test/built-%s/blobs/%s", T.registry,
		 T.run_id, top_layer);
	http_run("DELETE", url, NULL, &h);
	assert_int_equal(h.status, 202);
	buf_free(&h.body);
	RUN(r, 60, docker_image_remove(T.d, image_id, 1, 0, 0, on_done, &r));
	ASSERT_OK(r);
	res_free(&r);
	RUN(r, 120, docker_image_pull(T.d, T.pushed_ref, NULL, 0, on_progress, on_done, &r));
	print_message("# pull with a missing blob: %s (HTTP %ld): %s\n",
		      docker_error_name(r.error), r.status, r.message);
	assert_int_equal(r.error, DOCKER_ERR_STREAM);
	assert_int_equal(r.status, 200);
	assert_true(r.progress >= 1);
	res_free(&r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_negotiate),
		cmocka_unit_test(test_pull),
		cmocka_unit_test(test_pull_missing_tag),
		cmocka_unit_test(test_container_lifecycle),
		cmocka_unit_test(test_build_tag_push),
	};
	return cmocka_run_group_tests_name("docker_integration", tests, group_setup,
					   group_teardown);
}
