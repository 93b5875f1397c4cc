/* Tests for docker (Engine API client) against tests/fakes/docker_engine.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <ev.h>
#include <zlib.h>

#include "buf.h"
#include "clock.h"
#include "docker.h"
#include "fakeproc.h"
#include "http_client.h"

#define DIGEST "sha256:abababababababababababababababababababababababababababababababab"
#define PUSH_DIGEST "sha256:cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd"
#define BUILT_ID "sha256:efefefefefefefefefefefefefefefefefefefefefefefefefefefefefefefef"

/* ---- the fake engine ---------------------------------------------------- */

/* The engine listens on a socket in a fresh directory. */
struct fake {
	struct fakeproc proc;
	char dir[64];
};

static void fake_start(struct fake *f, const char *profile)
{
	snprintf(f->dir, sizeof f->dir, "/tmp/slipway-fake-docker-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->proc.sock, sizeof f->proc.sock, "%s/docker.sock", f->dir);
	const char *args[] = {f->proc.sock, "--profile", profile, NULL};
	assert_int_equal(fakeproc_start(&f->proc, "docker_engine.py", args), 0);
}

static void fake_stop(struct fake *f)
{
	if (f->proc.pid <= 0)
		return;
	fakeproc_finish(&f->proc); /* closing its stdin stops it */
	unlink(f->proc.sock);
	rmdir(f->dir);
}

/* Blocking control request to the fake (it runs in its own process). */
static cJSON *fake_request(struct fake *f, const char *method, const char *path,
			   const char *body)
{
	return fakeproc_json(&f->proc, method, path, body);
}

/* The requests the fake recorded, as "METHOD path" strings joined by '\n'. */
static char *fake_paths(struct fake *f)
{
	cJSON *reqs = fake_request(f, "GET", "/_fake/requests", NULL);
	struct buf b;
	buf_init(&b, 16 << 20);
	const cJSON *r;
	cJSON_ArrayForEach(r, reqs)
	{
		buf_printf(&b, "%s %s\n", cJSON_GetObjectItem(r, "method")->valuestring,
			   cJSON_GetObjectItem(r, "path")->valuestring);
	}
	cJSON_Delete(reqs);
	return buf_detach(&b, NULL);
}

/* The last recorded request whose path starts with prefix (caller deletes the
 * returned tree through *all). */
static const cJSON *fake_last(struct fake *f, const char *prefix, cJSON **all)
{
	*all = fake_request(f, "GET", "/_fake/requests", NULL);
	const cJSON *found = NULL, *r;
	cJSON_ArrayForEach(r, *all)
	{
		const char *p = cJSON_GetObjectItem(r, "path")->valuestring;
		if (strncmp(p, prefix, strlen(prefix)) == 0)
			found = r;
	}
	if (!found)
		fail_msg("the fake got no request for %s", prefix);
	return found;
}

static const char *req_header(const cJSON *req, const char *name)
{
	const cJSON *v = cJSON_GetObjectItem(cJSON_GetObjectItem(req, "headers"), name);
	return cJSON_IsString(v) ? v->valuestring : NULL;
}

static const char *req_path(const cJSON *req)
{
	return cJSON_GetObjectItem(req, "path")->valuestring;
}

/* ---- the client under test ---------------------------------------------- */

struct env {
	struct fake fake;
	struct ev_loop *loop;
	struct http_client *http;
	struct docker *d;
};

static void env_up(struct env *e, const char *profile, const struct docker_opts *opts)
{
	memset(e, 0, sizeof *e);
	fake_start(&e->fake, profile);
	e->loop = ev_loop_new(EVFLAG_AUTO);
	e->http = http_client_new(e->loop);
	assert_non_null(e->http);
	struct docker_opts o = opts ? *opts : (struct docker_opts){0};
	if (!o.socket_path)
		o.socket_path = e->fake.proc.sock;
	e->d = docker_new(e->loop, e->http, &o);
	assert_non_null(e->d);
}

static void env_down(struct env *e)
{
	docker_free(e->d);
	http_client_free(e->http);
	ev_loop_destroy(e->loop);
	fake_stop(&e->fake);
}

static void on_guard(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	*(int *)w->data = 1;
}

/* Runs the loop until *counter reaches n (fails after 20 s). */
static void wait_for(struct env *e, const int *counter, int n)
{
	int expired = 0;
	ev_timer guard;
	ev_timer_init(&guard, on_guard, 20.0, 0.0);
	guard.data = &expired;
	ev_timer_start(e->loop, &guard);
	while (*counter < n && !expired)
		ev_run(e->loop, EVRUN_ONCE);
	ev_timer_stop(e->loop, &guard);
	if (*counter < n)
		fail_msg("timed out waiting (%d of %d)", *counter, n);
}

struct res {
	int called;
	enum docker_error error;
	long status;
	char message[ERR_MSG_MAX];
	char id[72];
	char digest[256];
	char *json;
	int progress;
	struct buf text;
};

static void res_free(struct res *r)
{
	free(r->json);
	buf_free(&r->text);
	memset(r, 0, sizeof *r);
}

static void on_done(const struct docker_result *dr, void *arg)
{
	struct res *r = arg;
	r->called++;
	r->error = dr->error;
	r->status = dr->status;
	assert_non_null(dr->message);
	snprintf(r->message, sizeof r->message, "%s", dr->message);
	snprintf(r->id, sizeof r->id, "%s", dr->id ? dr->id : "");
	snprintf(r->digest, sizeof r->digest, "%s", dr->digest ? dr->digest : "");
	free(r->json);
	r->json = dr->json ? cJSON_PrintUnformatted(dr->json) : NULL;
	if (dr->error == DOCKER_OK)
		assert_string_equal(dr->message, "");
	else
		assert_true(strlen(dr->message) > 0);
}

static void on_progress(const cJSON *msg, void *arg)
{
	struct res *r = arg;
	assert_true(cJSON_IsObject(msg));
	r->progress++;
}

static void on_text(const char *text, void *arg)
{
	struct res *r = arg;
	buf_append_str(&r->text, text);
}

/* Runs one call to its end. */
#define RUN(e, r, call)                                                                    \
	do {                                                                               \
		memset(&(r), 0, sizeof(r));                                                \
		buf_init(&(r).text, 1 << 20);                                              \
		assert_true((call) > 0);                                                   \
		wait_for((e), &(r).called, 1);                                             \
	} while (0)

/* ---- negotiation -------------------------------------------------------- */

static const char *const test_labels[] = {"slipway.app=web", "slipway.test", NULL};
#define TEST_FILTERS "%7B%22label%22%3A%5B%22slipway.app%3Dweb%22%2C%22slipway.test%22%5D%7D"

static void test_negotiate_old_engine(void **state)
{
	(void)state;
	struct env e;
	env_up(&e, "old", NULL);
	assert_null(docker_api_version(e.d));
	/* Made before negotiation: queued, then sent with the negotiated version. */
	struct res r, n;
	memset(&n, 0, sizeof n);
	assert_true(docker_negotiate(e.d, on_done, &n) > 0);
	RUN(&e, r, docker_container_list(e.d, 1, test_labels, 5000, on_done, &r));
	wait_for(&e, &n.called, 1);
	assert_int_equal(r.error, DOCKER_OK);
	assert_string_equal(r.json, "[]");
	assert_int_equal(n.error, DOCKER_OK);
	assert_non_null(strstr(n.json, "\"ApiVersion\":\"1.41\""));
	assert_string_equal(docker_api_version(e.d), "1.41");
	char *paths = fake_paths(&e.fake);
	assert_string_equal(paths, "GET /_ping\nGET /version\n"
				   "GET /v1.41/containers/json?all=1&filters=" TEST_FILTERS "\n");
	free(paths);
	res_free(&r);
	res_free(&n);
	env_down(&e);
}

static void test_negotiate_new_engine(void **state)
{
	(void)state;
	struct env e;
	env_up(&e, "new", NULL);
	struct res r;
	RUN(&e, r, docker_container_list(e.d, 0, NULL, 5000, on_done, &r));
	assert_int_equal(r.error, DOCKER_OK);
	assert_string_equal(docker_api_version(e.d), "1.51");
	char *paths = fake_paths(&e.fake);
	assert_string_equal(paths, "GET /_ping\nGET /version\nGET /v1.51/containers/json\n");
	free(paths);
	/* Once negotiated, calls go straight out. */
	res_free(&r);
	RUN(&e, r, docker_container_inspect(e.d, "nope", 5000, on_done, &r));
	assert_int_equal(r.error, DOCKER_ERR_NOT_FOUND);
	paths = fake_paths(&e.fake);
	assert_non_null(strstr(paths, "GET /v1.51/containers/json\nGET /v1.51/containers/nope/json\n"));
	assert_null(strstr(strstr(paths, "containers/json"), "_ping"));
	free(paths);
	res_free(&r);
	env_down(&e);
}

static void test_negotiate_refused(void **state)
{
	(void)state;
	struct {
		const char *profile;
		const char *says;
	} cases[] = {
		{"toonew", "accepts API 1.60 at the oldest"},
		{"ancient", "speaks API 1.40 at the newest"},
	};
	for (size_t i = 0; i < 2; i++) {
		struct env e;
		env_up(&e, cases[i].profile, NULL);
		struct res n, r;
		memset(&n, 0, sizeof n);
		assert_true(docker_negotiate(e.d, on_done, &n) > 0);
		RUN(&e, r, docker_container_inspect(e.d, "x", 5000, on_done, &r));
		wait_for(&e, &n.called, 1);
		assert_int_equal(n.error, DOCKER_ERR_VERSION);
		assert_int_equal(r.error, DOCKER_ERR_VERSION);
		assert_non_null(strstr(r.message, cases[i].says));
		assert_null(docker_api_version(e.d));
		char *paths = fake_paths(&e.fake);
		assert_string_equal(paths, "GET /_ping\nGET /version\n");
		free(paths);
		res_free(&n);
		res_free(&r);
		env_down(&e);
	}
}

static void test_unreachable_socket(void **state)
{
	(void)state;
	struct env e;
	struct docker_opts o = {.socket_path = "/nonexistent/slipway/docker.sock"};
	env_up(&e, "old", &o);
	struct res r, n;
	memset(&n, 0, sizeof n);
	assert_true(docker_negotiate(e.d, on_done, &n) > 0);
	RUN(&e, r, docker_container_start(e.d, "abc", 2000, on_done, &r));
	wait_for(&e, &n.called, 1);
	assert_int_equal(n.error, DOCKER_ERR_CONNECT);
	assert_int_equal(r.error, DOCKER_ERR_CONNECT);
	assert_int_equal(r.status, 0);
	assert_non_null(strstr(r.message, "/nonexistent/slipway/docker.sock"));
	assert_null(docker_api_version(e.d));
	res_free(&r);
	res_free(&n);
	env_down(&e);
}

/* ---- containers --------------------------------------------------------- */

static void test_container_lifecycle(void **state)
{
	(void)state;
	struct env e;
	env_up(&e, "old", NULL);
	struct res r;
	cJSON *body = cJSON_Parse("{\"Image\":\"testsrv:v1\",\"Env\":[\"RELEASE=r1\"],"
				  "\"Labels\":{\"slipway.app\":\"web\",\"slipway.test\":\"t\"}}");
	RUN(&e, r, docker_container_create(e.d, "web-1", body, 0, on_done, &r));
	assert_int_equal(r.error, DOCKER_OK);
	assert_int_equal(r.status, 201);
	assert_int_equal(strlen(r.id), 64);
	char id[72];
	snprintf(id, sizeof id, "%.64s", r.id);
	res_free(&r);
	cJSON *all;
	const cJSON *req = fake_last(&e.fake, "/v1.41/containers/create", &all);
	assert_string_equal(req_path(req), "/v1.41/containers/create?name=web-1");
	assert_string_equal(req_header(req, "content-type"), "application/json");
	cJSON *sent = cJSON_Parse(cJSON_GetObjectItem(req, "body")->valuestring);
	assert_true(cJSON_Compare(sent, body, 1));
	cJSON_Delete(sent);
	cJSON_Delete(all);

	RUN(&e, r, docker_container_create(e.d, "web-1", body, 0, on_done, &r));
	assert_int_equal(r.error, DOCKER_ERR_CONFLICT);
	assert_int_equal(r.status, 409);
	assert_non_null(strstr(r.message, "already in use"));
	res_free(&r);
	cJSON_Delete(body);

	RUN(&e, r, docker_container_start(e.d, id, 0, on_done, &r));
	assert_int_equal(r.error, DOCKER_OK);
	assert_int_equal(r.status, 204);
	res_free(&r);
	RUN(&e, r, docker_container_start(e.d, "web-1", 0, on_done, &r));
	assert_int_equal(r.error, DOCKER_OK); /* 304: already started */
	assert_int_equal(r.status, 304);
	res_free(&r);

	RUN(&e, r, docker_container_list(e.d, 0, test_labels, 0, on_done, &r));
	assert_int_equal(r.error, DOCKER_OK);
	assert_non_null(strstr(r.json, id));
	res_free(&r);
	static const char *const other[] = {"slipway.app=api", NULL};
	RUN(&e, r, docker_container_list(e.d, 1, other, 0, on_done, &r));
	assert_string_equal(r.json, "[]");
	res_free(&r);

	RUN(&e, r, docker_container_inspect(e.d, id, 0, on_done, &r));
	assert_int_equal(r.error, DOCKER_OK);
	assert_string_equal(r.id, id);
	assert_non_null(strstr(r.json, "\"Name\":\"/web-1\""));
	res_free(&r);

	RUN(&e, r, docker_container_stats(e.d, id, 0, on_done, &r));
	assert_int_equal(r.error, DOCKER_OK);
	assert_non_null(strstr(r.json, "\"usage\":1234"));
	res_free(&r);

	/* A stop signal needs API 1.42; this engine speaks 1.41. */
	RUN(&e, r, docker_container_stop(e.d, id, 5, "SIGTERM", 0, on_done, &r));
	assert_int_equal(r.error, DOCKER_ERR_UNSUPPORTED);
	assert_non_null(strstr(r.message, "1.42"));
	res_free(&r);

	RUN(&e, r, docker_container_stop(e.d, id, 5, NULL, 0, on_done, &r));
	assert_int_equal(r.error, DOCKER_OK);
	assert_int_equal(r.status, 204);
	res_free(&r);
	RUN(&e, r, docker_container_stop(e.d, id, 5, NULL, 0, on_done, &r));
	assert_int_equal(r.error, DOCKER_OK); /* 304: already stopped */
	assert_int_equal(r.status, 304);
	res_free(&r);
	RUN(&e, r, docker_container_kill(e.d, id, "SIGKILL", 0, on_done, &r));
	assert_int_equal(r.error, DOCKER_ERR_CONFLICT);
	assert_non_null(strstr(r.message, "is not running"));
	res_free(&r);
	RUN(&e, r, docker_container_wait(e.d, id, NULL, 0, on_done, &r));
	assert_int_equal(r.error, DOCKER_OK);
	assert_non_null(strstr(r.json, "\"StatusCode\":0"));
	res_free(&r);

	RUN(&e, r, docker_container_remove(e.d, id, 1, 1, 0, on_done, &r));
	assert_int_equal(r.error, DOCKER_OK);
	res_free(&r);
	RUN(&e, r, docker_container_remove(e.d, id, 1, 1, 0, on_done, &r));
	assert_int_equal(r.error, DOCKER_ERR_NOT_FOUND);
	assert_int_equal(r.status, 404);
	assert_non_null(strstr(r.message, "No such container"));
	res_free(&r);

	char *paths = fake_paths(&e.fake);
	char want[1024];
	snprintf(want, sizeof want,
		 "POST /v1.41/containers/%s/stop?t=5\n"
		 "POST /v1.41/containers/%s/stop?t=5\n"
		 "POST /v1.41/containers/%s/kill?signal=SIGKILL\n"
		 "POST /v1.41/containers/%s/wait?condition=not-running\n"
		 "DELETE /v1.41/containers/%s?force=1&v=1\n",
		 id, id, id, id, id);
	assert_non_null(strstr(paths, want));
	snprintf(want, sizeof want, "GET /v1.41/containers/%s/stats?stream=false&one-shot=true\n",
		 id);
	assert_non_null(strstr(paths, want));
	free(paths);
	env_down(&e);
}

static void test_stop_signal_new_engine(void **state)
{
	(void)state;
	struct env e;
	env_up(&e, "new", NULL);
	struct res r;
	cJSON *body = cJSON_Parse("{\"Image\":\"x\"}");
	RUN(&e, r, docker_container_create(e.d, NULL, body, 0, on_done, &r));
	cJSON_Delete(body);
	char id[72];
	snprintf(id, sizeof id, "%.64s", r.id);
	res_free(&r);
	RUN(&e, r, docker_container_start(e.d, id, 0, on_done, &r));
	res_free(&r);
	RUN(&e, r, docker_container_stop(e.d, id, -1, "SIGTERM", 0, on_done, &r));
	assert_int_equal(r.error, DOCKER_OK);
	res_free(&r);
	cJSON *all;
	const cJSON *req = fake_last(&e.fake, "/v1.51/containers/", &all);
	char want[256];
	snprintf(want, sizeof want, "/v1.51/containers/%s/stop?signal=SIGTERM", id);
	assert_string_equal(req_path(req), want);
	cJSON_Delete(all);
	env_down(&e);
}

static void test_engine_500(void **state)
{
	(void)state;
	struct env e;
	env_up(&e, "old", NULL);
	struct res r;
	RUN(&e, r, docker_container_inspect(e.d, "boom", 0, on_done, &r));
	assert_int_equal(r.error, DOCKER_ERR_ENGINE);
	assert_int_equal(r.status, 500);
	assert_string_equal(r.message, "GET /containers/boom/json: boom: the engine fell over");
	assert_null(r.json);
	res_free(&r);
	env_down(&e);
}

static void test_oversized_answer(void **state)
{
	(void)state;
	struct env e;
	struct docker_opts o = {.max_body = 64 * 1024};
	env_up(&e, "old", &o);
	struct res r;
	RUN(&e, r, docker_container_inspect(e.d, "huge", 0, on_done, &r));
	assert_int_equal(r.error, DOCKER_ERR_PROTOCOL);
	assert_non_null(strstr(r.message, "65536"));
	res_free(&r);
	env_down(&e);
}

/* ---- images ------------------------------------------------------------- */

static void test_base64url_and_refs(void **state)
{
	(void)state;
	/* RFC 4648 section 10 vectors, and bytes that differ from standard base64. */
	struct {
		const char *in;
		size_t len;
		const char *out;
	} v[] = {
		{"", 0, ""}, {"f", 1, "Zg=="}, {"fo", 2, "Zm8="}, {"foo", 3, "Zm9v"},
		{"foobar", 6, "Zm9vYmFy"}, {"\xfb\xff", 2, "-_8="}, {"{}", 2, "e30="},
	};
	for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
		struct buf b;
		buf_init(&b, 0);
		assert_int_equal(docker_base64url(&b, v[i].in, v[i].len), 0);
		assert_string_equal(b.data ? b.data : "", v[i].out);
		buf_free(&b);
	}
	struct {
		const char *ref, *repo, *tag;
	} refs[] = {
		{"busybox", "busybox", "latest"},
		{"busybox:1.36", "busybox", "1.36"},
		{"127.0.0.1:5000/slipway-test/testsrv", "127.0.0.1:5000/slipway-test/testsrv", "latest"},
		{"127.0.0.1:5000/slipway-test/testsrv:v1", "127.0.0.1:5000/slipway-test/testsrv", "v1"},
		{"127.0.0.1:5000/app@" DIGEST, "127.0.0.1:5000/app", DIGEST},
	};
	for (size_t i = 0; i < sizeof refs / sizeof refs[0]; i++) {
		struct buf repo, tag;
		buf_init(&repo, 0);
		buf_init(&tag, 0);
		assert_int_equal(docker_split_ref(refs[i].ref, &repo, &tag), 0);
		assert_string_equal(repo.data, refs[i].repo);
		assert_string_equal(tag.data, refs[i].tag);
		buf_free(&repo);
		buf_free(&tag);
	}
}

static void test_pull(void **state)
{
	(void)state;
	struct env e;
	struct docker_opts o = {.max_line = 64 * 1024};
	env_up(&e, "old", &o);
	struct res r;
	const char *auth = "{\"username\":\"u\",\"password\":\"p\",\"serveraddress\":\"127.0.0.1:5000\"}";
	RUN(&e, r, docker_image_pull(e.d, "127.0.0.1:5000/slipway-test/testsrv:v1", auth, 0,
				     on_progress, on_done, &r));
	assert_int_equal(r.error, DOCKER_OK);
	assert_string_equal(r.digest, DIGEST);
	assert_int_equal(r.progress, 6);
	res_free(&r);
	cJSON *all;
	const cJSON *req = fake_last(&e.fake, "/v1.41/images/create", &all);
	assert_string_equal(req_path(req), "/v1.41/images/create?fromImage=127.0.0.1%3A5000%2F"
					   "slipway-test%2Ftestsrv&tag=v1");
	assert_string_equal(req_header(req, "x-registry-auth"),
			    "eyJ1c2VybmFtZSI6InUiLCJwYXNzd29yZCI6InAiLCJzZXJ2ZXJhZGRyZXNzIjoiMTI3"
			    "LjAuMC4xOjUwMDAifQ==");
	cJSON_Delete(all);

	/* The classic trap: HTTP 200, and the failure inside the stream. */
	RUN(&e, r, docker_image_pull(e.d, "127.0.0.1:5000/slipway-test/testsrv:missing", NULL, 0,
				     on_progress, on_done, &r));
	assert_int_equal(r.error, DOCKER_ERR_STREAM);
	assert_int_equal(r.status, 200);
	assert_string_equal(r.message, "manifest for 127.0.0.1:5000/slipway-test/testsrv:missing "
				       "not found: manifest unknown: manifest unknown");
	assert_string_equal(r.digest, "");
	assert_int_equal(r.progress, 1);
	res_free(&r);
	req = fake_last(&e.fake, "/v1.41/images/create", &all);
	assert_string_equal(req_header(req, "x-registry-auth"), "e30=");
	cJSON_Delete(all);

	RUN(&e, r, docker_image_pull(e.d, "nothere:notfound", NULL, 0, NULL, on_done, &r));
	assert_int_equal(r.error, DOCKER_ERR_NOT_FOUND);
	assert_non_null(strstr(r.message, "pull access denied"));
	res_free(&r);

	RUN(&e, r, docker_image_pull(e.d, "x:garbage", NULL, 0, NULL, on_done, &r));
	assert_int_equal(r.error, DOCKER_ERR_PROTOCOL);
	assert_non_null(strstr(r.message, "invalid JSON at byte offset"));
	res_free(&r);

	RUN(&e, r, docker_image_pull(e.d, "x:huge", NULL, 0, NULL, on_done, &r));
	assert_int_equal(r.error, DOCKER_ERR_PROTOCOL);
	assert_non_null(strstr(r.message, "longer than the cap of 65536 bytes"));
	res_free(&r);

	/* Older engines: objects back to back without newlines. */
	RUN(&e, r, docker_image_pull(e.d, "x:concat", NULL, 0, on_progress, on_done, &r));
	assert_int_equal(r.error, DOCKER_OK);
	assert_string_equal(r.digest, DIGEST);
	assert_int_equal(r.progress, 6);
	res_free(&r);

	/* No tag means latest (never every tag); a digest goes in tag=. */
	RUN(&e, r, docker_image_pull(e.d, "busybox", NULL, 0, NULL, on_done, &r));
	res_free(&r);
	RUN(&e, r, docker_image_pull(e.d, "127.0.0.1:5000/app@" DIGEST, NULL, 0, NULL, on_done, &r));
	assert_int_equal(r.error, DOCKER_OK);
	res_free(&r);
	char *paths = fake_paths(&e.fake);
	assert_non_null(strstr(paths, "POST /v1.41/images/create?fromImage=busybox&tag=latest\n"
				      "POST /v1.41/images/create?fromImage=127.0.0.1%3A5000%2Fapp"
				      "&tag=sha256%3Aabab"));
	free(paths);
	env_down(&e);
}

static void test_push_tag_inspect_remove(void **state)
{
	(void)state;
	struct env e;
	env_up(&e, "old", NULL);
	struct res r;
	RUN(&e, r, docker_image_tag(e.d, "app:v1", "127.0.0.1:5000/slipway-test/app:v2", 0,
				    on_done, &r));
	assert_int_equal(r.error, DOCKER_OK);
	assert_int_equal(r.status, 201);
	res_free(&r);
	RUN(&e, r, docker_image_push(e.d, "127.0.0.1:5000/slipway-test/app:v2", NULL, 0,
				     on_progress, on_done, &r));
	assert_int_equal(r.error, DOCKER_OK);
	assert_string_equal(r.digest, PUSH_DIGEST);
	res_free(&r);
	cJSON *all;
	const cJSON *req = fake_last(&e.fake, "/v1.41/images/127", &all);
	assert_string_equal(req_path(req),
			    "/v1.41/images/127.0.0.1%3A5000/slipway-test/app/push?tag=v2");
	assert_string_equal(req_header(req, "x-registry-auth"), "e30=");
	cJSON_Delete(all);

	RUN(&e, r, docker_image_push(e.d, "127.0.0.1:5000/fail/app:v2", NULL, 0, NULL, on_done,
				     &r));
	assert_int_equal(r.error, DOCKER_ERR_STREAM);
	assert_non_null(strstr(r.message, "denied"));
	res_free(&r);

	RUN(&e, r, docker_image_inspect(e.d, "127.0.0.1:5000/slipway-test/app:v2", 0, on_done, &r));
	assert_int_equal(r.error, DOCKER_OK);
	assert_string_equal(r.id, BUILT_ID);
	assert_string_equal(r.digest, DIGEST);
	res_free(&r);
	RUN(&e, r, docker_image_inspect(e.d, "unknown", 0, on_done, &r));
	assert_int_equal(r.error, DOCKER_ERR_NOT_FOUND);
	res_free(&r);

	static const char *const labels[] = {"slipway.test=x", NULL};
	RUN(&e, r, docker_image_list(e.d, "app", labels, 0, on_done, &r));
	assert_int_equal(r.error, DOCKER_OK);
	res_free(&r);
	RUN(&e, r, docker_image_remove(e.d, "app:v1", 1, 0, 0, on_done, &r));
	assert_int_equal(r.error, DOCKER_OK);
	assert_non_null(strstr(r.json, "Untagged"));
	res_free(&r);
	RUN(&e, r, docker_image_remove(e.d, "unknown", 0, 0, 0, on_done, &r));
	assert_int_equal(r.error, DOCKER_ERR_NOT_FOUND);
	res_free(&r);

	char *paths = fake_paths(&e.fake);
	assert_non_null(strstr(paths, "POST /v1.41/images/app%3Av1/tag?repo=127.0.0.1%3A5000%2F"
				      "slipway-test%2Fapp&tag=v2\n"));
	assert_non_null(strstr(paths, "GET /v1.41/images/json?filters=%7B%22reference%22%3A%5B"
				      "%22app%22%5D%2C%22label%22%3A%5B%22slipway.test%3Dx%22%5D%7D\n"));
	assert_non_null(strstr(paths, "DELETE /v1.41/images/app%3Av1?force=1\n"));
	free(paths);
	env_down(&e);
}

static void write_context(const char *path)
{
	gzFile z = gzopen(path, "wb");
	assert_non_null(z);
	gzputs(z, "not really a tar, the fake only checks the gzip magic");
	gzclose(z);
}

static void test_build(void **state)
{
	(void)state;
	struct env e;
	env_up(&e, "old", NULL);
	char ctx[200];
	snprintf(ctx, sizeof ctx, "%s/context.tar.gz", e.fake.dir);
	write_context(ctx);
	static const char *const tags[] = {"app:v1", "127.0.0.1:5000/app:v1", NULL};
	static const char *const cache[] = {"app:v0", NULL};
	cJSON *labels = cJSON_Parse("{\"slipway.test\":\"x\"}");
	struct docker_build_opts o = {
		.context_file = ctx,
		.tags = tags,
		.labels = labels,
		.cache_from = cache,
		.registry_config = "{\"127.0.0.1:5000\":{}}",
		.on_output = on_text,
		.on_progress = on_progress,
	};
	struct res r;
	RUN(&e, r, docker_image_build(e.d, &o, on_done, &r));
	assert_int_equal(r.error, DOCKER_OK);
	assert_string_equal(r.id, BUILT_ID);
	assert_int_equal(r.progress, 1);
	assert_string_equal(r.text.data, "Step 1/2 : FROM base\n ---> 0123456789ab\n"
					 "Successfully built efefefefefef\n"
					 "Successfully tagged app:v1\n"
					 "Successfully tagged 127.0.0.1:5000/app:v1\n");
	res_free(&r);
	cJSON *all;
	const cJSON *req = fake_last(&e.fake, "/v1.41/build", &all);
	assert_string_equal(req_path(req),
			    "/v1.41/build?rm=1&forcerm=1&t=app%3Av1&t=127.0.0.1%3A5000%2Fapp%3Av1"
			    "&labels=%7B%22slipway.test%22%3A%22x%22%7D&cachefrom=%5B%22app%3Av0%22%5D");
	assert_string_equal(req_header(req, "content-type"), "application/x-tar");
	assert_string_equal(req_header(req, "x-registry-config"), "eyIxMjcuMC4wLjE6NTAwMCI6e319");
	cJSON_Delete(all);

	o.dockerfile = "fail.Dockerfile";
	RUN(&e, r, docker_image_build(e.d, &o, on_done, &r));
	assert_int_equal(r.error, DOCKER_ERR_STREAM);
	assert_non_null(strstr(r.message, "returned a non-zero code: 1"));
	res_free(&r);

	o.context_file = "/nonexistent/context.tar.gz";
	RUN(&e, r, docker_image_build(e.d, &o, on_done, &r));
	assert_int_equal(r.error, DOCKER_ERR_INTERNAL);
	assert_non_null(strstr(r.message, "/nonexistent/context.tar.gz"));
	res_free(&r);
	cJSON_Delete(labels);
	unlink(ctx);
	env_down(&e);
}

/* ---- logs --------------------------------------------------------------- */

/* res first: the logs call has one arg for its line and done callbacks. */
struct lines {
	struct res r;
	struct buf out;
	int n;
	int cancel_at;
	struct docker *d;
	uint64_t id;
};

static int on_line(const struct linesplit_line *l, void *arg)
{
	struct lines *ls = arg;
	ls->n++;
	buf_printf(&ls->out, "%d %lld %u %s\n", l->stream, (long long)l->ts_ns, l->flags, l->text);
	if (ls->cancel_at && ls->n == ls->cancel_at)
		docker_cancel(ls->d, ls->id);
	return 0;
}

static void run_logs(struct env *e, const char *id, int tty, struct lines *ls)
{
	memset(ls, 0, sizeof *ls);
	buf_init(&ls->out, 1 << 20);
	struct docker_logs_opts o = {.tty = tty, .follow = 1, .since_ns = 1795671551000000000LL};
	assert_true(docker_container_logs(e->d, id, &o, on_line, on_done, ls) > 0);
	wait_for(e, &ls->r.called, 1);
}

static void test_logs(void **state)
{
	(void)state;
	struct env e;
	env_up(&e, "old", NULL);
	struct lines ls;
	struct res r;
	run_logs(&e, "logs-normal", 0, &ls);
	assert_int_equal(ls.r.error, DOCKER_OK);
	assert_string_equal(ls.out.data, "1 1795671551000000001 0 hello stdout\n"
					 "2 1795671551000000002 0 hello stderr\n"
					 "1 1795671551000000003 0 partial joined\n");
	buf_free(&ls.out);
	res_free(&ls.r);
	cJSON *all;
	const cJSON *req = fake_last(&e.fake, "/v1.41/containers/logs-normal/logs", &all);
	assert_string_equal(req_path(req), "/v1.41/containers/logs-normal/logs?stdout=1&stderr=1"
					   "&timestamps=1&follow=1&since=1795671551.000000000");
	cJSON_Delete(all);

	/* The stream ends inside a frame: the lines before it, the piece of the
	 * last one, then a clear error. */
	run_logs(&e, "logs-truncated", 0, &ls);
	assert_int_equal(ls.r.error, DOCKER_ERR_PROTOCOL);
	assert_string_equal(ls.r.message, "truncated log stream: it ended inside a frame "
				       "(7 of 41 payload bytes missing)");
	assert_string_equal(ls.out.data, "1 1795671551000000001 0 hello stdout\n"
					 "2 1795671551000000002 0 hello stderr\n"
					 "1 1795671551000000003 0 partial joined\n"
					 "2 1795671551000000005 4 cut\n");
	buf_free(&ls.out);
	res_free(&ls.r);

	run_logs(&e, "logs-tty", 1, &ls);
	assert_int_equal(ls.r.error, DOCKER_OK);
	assert_string_equal(ls.out.data, "1 1795671551000000001 0 tty line one\n"
					 "1 1795671551000000002 0 tty line two\n");
	buf_free(&ls.out);
	res_free(&ls.r);

	/* A TTY stream read as multiplexed: a clear error, not garbage. */
	run_logs(&e, "logs-tty", 0, &ls);
	assert_int_equal(ls.r.error, DOCKER_ERR_PROTOCOL);
	assert_non_null(strstr(ls.r.message, "use the raw mode"));
	assert_int_equal(ls.n, 0);
	buf_free(&ls.out);
	res_free(&ls.r);

	/* The engine goes away mid-stream. */
	run_logs(&e, "logs-drop", 0, &ls);
	assert_int_equal(ls.r.error, DOCKER_ERR_TRANSPORT);
	assert_int_equal(ls.n, 3);
	buf_free(&ls.out);
	res_free(&ls.r);

	RUN(&e, r, docker_container_logs(e.d, "nope", NULL, NULL, on_done, &r));
	assert_int_equal(r.error, DOCKER_ERR_NOT_FOUND);
	res_free(&r);
	env_down(&e);
}

/* Lets the loop run for s seconds: only to show that nothing happens meanwhile. */
static void run_for(struct env *e, double s)
{
	int expired = 0;
	ev_timer guard;
	ev_timer_init(&guard, on_guard, s, 0.0);
	guard.data = &expired;
	ev_timer_start(e->loop, &guard);
	while (!expired)
		ev_run(e->loop, EVRUN_ONCE);
}

/* logs-many-N: numbered lines, checked in order; pauses at line pause_at. */
struct many {
	struct res r;
	struct docker *d;
	uint64_t id;
	int n, bad, pause_at;
};

static int on_many_line(const struct linesplit_line *l, void *arg)
{
	struct many *m = arg;
	m->n++;
	int k = -1;
	if (sscanf(l->text, "line %d", &k) != 1 || k != m->n || l->stream != 1)
		m->bad++;
	if (m->n == m->pause_at)
		docker_logs_pause(m->d, m->id, true);
	return 0;
}

static int fake_logs_sent(struct fake *f)
{
	cJSON *doc = fake_request(f, "GET", "/_fake/logs_sent", NULL);
	int n = cJSON_GetObjectItem(doc, "lines")->valueint;
	cJSON_Delete(doc);
	return n;
}

static int count_requests(struct fake *f, const char *prefix)
{
	char *paths = fake_paths(f);
	int n = 0;
	for (const char *p = paths; (p = strstr(p, prefix)); p++)
		n++;
	free(paths);
	return n;
}

static void test_logs_pause(void **state)
{
	(void)state;
	struct env e;
	env_up(&e, "old", NULL);
	struct many m = {.d = e.d, .pause_at = 1};
	struct docker_logs_opts o = {.follow = 1};
	m.id = docker_container_logs(e.d, "logs-many-20000", &o, on_many_line, on_done, &m);
	assert_true(m.id > 0);
	wait_for(&e, &m.n, 1);
	int held = m.n;
	run_for(&e, 0.4);
	/* Only what the read in progress carried (4 KiB: under a hundred lines). */
	assert_int_equal(m.n, held);
	assert_true(held < 100);
	assert_int_equal(m.r.called, 0);
	int sent = fake_logs_sent(&e.fake);
	assert_true(sent < 20000); /* the engine is held back too */
	docker_logs_pause(e.d, m.id, false);
	assert_int_equal(m.n, held); /* resumed from the loop, not in the call */
	wait_for(&e, &m.r.called, 1);
	assert_int_equal(m.r.error, DOCKER_OK);
	assert_int_equal(m.n, 20000);
	assert_int_equal(m.bad, 0);
	/* One connection throughout: no second request, no since= scan. */
	assert_int_equal(count_requests(&e.fake, "/containers/logs-many-20000/logs"), 1);
	res_free(&m.r);

	/* Paused before the request even went out (the version is negotiated
	 * first): nothing arrives until the resume. */
	docker_free(e.d);
	e.d = docker_new(e.loop, e.http, &(struct docker_opts){.socket_path = e.fake.proc.sock});
	struct many m2 = {.d = e.d};
	m2.id = docker_container_logs(e.d, "logs-many-3000", &o, on_many_line, on_done, &m2);
	assert_true(m2.id > 0);
	docker_logs_pause(e.d, m2.id, true);
	run_for(&e, 0.3);
	assert_int_equal(m2.n, 0);
	docker_logs_pause(e.d, m2.id, false);
	wait_for(&e, &m2.r.called, 1);
	assert_int_equal(m2.r.error, DOCKER_OK);
	assert_int_equal(m2.n, 3000);
	assert_int_equal(m2.bad, 0);
	res_free(&m2.r);
	/* Ids that are no log stream are ignored. */
	docker_logs_pause(e.d, m2.id, true);
	docker_logs_pause(e.d, 0, true);
	env_down(&e);
}

static void test_info_and_networks(void **state)
{
	(void)state;
	struct env e;
	env_up(&e, "new", NULL);
	struct res r;
	RUN(&e, r, docker_info(e.d, 0, on_done, &r));
	assert_int_equal(r.error, DOCKER_OK);
	cJSON *doc = cJSON_Parse(r.json);
	assert_string_equal(cJSON_GetObjectItem(doc, "DockerRootDir")->valuestring,
			    "/var/lib/docker");
	cJSON_Delete(doc);
	res_free(&r);

	cJSON *body = cJSON_CreateObject();
	cJSON_AddStringToObject(body, "Name", "sw-net");
	cJSON_AddStringToObject(body, "Driver", "bridge");
	cJSON *labels = cJSON_AddObjectToObject(body, "Labels");
	cJSON_AddStringToObject(labels, "slipway.managed", "true");
	RUN(&e, r, docker_network_create(e.d, body, 0, on_done, &r));
	assert_int_equal(r.error, DOCKER_OK);
	assert_int_equal(r.status, 201);
	char net_id[72];
	snprintf(net_id, sizeof net_id, "%s", r.id);
	assert_int_equal(strlen(net_id), 64);
	res_free(&r);
	cJSON *all;
	const cJSON *req = fake_last(&e.fake, "/v1.51/networks/create", &all);
	assert_string_equal(req_header(req, "content-type"), "application/json");
	doc = cJSON_Parse(cJSON_GetObjectItem(req, "body")->valuestring);
	assert_string_equal(cJSON_GetObjectItem(doc, "Name")->valuestring, "sw-net");
	cJSON_Delete(doc);
	cJSON_Delete(all);
	/* The name is taken now. */
	RUN(&e, r, docker_network_create(e.d, body, 0, on_done, &r));
	assert_int_equal(r.error, DOCKER_ERR_CONFLICT);
	res_free(&r);
	cJSON_Delete(body);

	const char *const want[] = {"slipway.managed=true", NULL};
	RUN(&e, r, docker_network_list(e.d, "sw-net", want, 0, on_done, &r));
	assert_int_equal(r.error, DOCKER_OK);
	doc = cJSON_Parse(r.json);
	assert_int_equal(cJSON_GetArraySize(doc), 1);
	assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(doc, 0), "Id")->valuestring,
			    net_id);
	cJSON_Delete(doc);
	res_free(&r);
	req = fake_last(&e.fake, "/v1.51/networks?", &all);
	assert_string_equal(req_path(req), "/v1.51/networks?filters=%7B%22name%22%3A%5B%22sw-net"
					   "%22%5D%2C%22label%22%3A%5B%22slipway.managed%3Dtrue%22"
					   "%5D%7D");
	cJSON_Delete(all);
	const char *const other[] = {"slipway.managed=false", NULL};
	RUN(&e, r, docker_network_list(e.d, NULL, other, 0, on_done, &r));
	assert_string_equal(r.json, "[]");
	res_free(&r);

	RUN(&e, r, docker_network_inspect(e.d, "sw-net", 0, on_done, &r));
	assert_int_equal(r.error, DOCKER_OK);
	assert_string_equal(r.id, net_id);
	res_free(&r);
	RUN(&e, r, docker_network_remove(e.d, net_id, 0, on_done, &r));
	assert_int_equal(r.error, DOCKER_OK);
	res_free(&r);
	RUN(&e, r, docker_network_remove(e.d, net_id, 0, on_done, &r));
	assert_int_equal(r.error, DOCKER_ERR_NOT_FOUND);
	res_free(&r);
	RUN(&e, r, docker_network_inspect(e.d, "sw-net", 0, on_done, &r));
	assert_int_equal(r.error, DOCKER_ERR_NOT_FOUND);
	res_free(&r);
	assert_int_equal(docker_network_create(e.d, NULL, 0, on_done, &r), 0);
	assert_int_equal(docker_network_remove(e.d, "", 0, on_done, &r), 0);
	env_down(&e);
}

static void test_cancel(void **state)
{
	(void)state;
	struct env e;
	env_up(&e, "old", NULL);
	/* Cancelled while queued behind the negotiation: no callback. */
	struct res q;
	memset(&q, 0, sizeof q);
	uint64_t qid = docker_container_inspect(e.d, "x", 0, on_done, &q);
	assert_true(qid > 0);
	docker_cancel(e.d, qid);
	/* Cancelled from its own line callback, mid-stream. */
	struct lines ls;
	memset(&ls, 0, sizeof ls);
	buf_init(&ls.out, 1 << 20);
	ls.cancel_at = 5;
	ls.d = e.d;
	struct docker_logs_opts o = {.follow = 1};
	ls.id = docker_container_logs(e.d, "logs-hang", &o, on_line, on_done, &ls);
	assert_true(ls.id > 0);
	wait_for(&e, &ls.n, 5);
	/* Another call still completes: the loop keeps working after the cancel. */
	struct res after;
	RUN(&e, after, docker_container_inspect(e.d, "y", 0, on_done, &after));
	assert_int_equal(after.error, DOCKER_ERR_NOT_FOUND);
	assert_int_equal(ls.n, 5);
	assert_int_equal(ls.r.called, 0);
	assert_int_equal(q.called, 0);
	res_free(&after);
	/* Freed with a stream still open: no callback, nothing leaks. */
	struct lines ls2;
	memset(&ls2, 0, sizeof ls2);
	buf_init(&ls2.out, 1 << 20);
	assert_true(docker_container_logs(e.d, "logs-hang", &o, on_line, on_done, &ls2) > 0);
	wait_for(&e, &ls2.n, 1);
	env_down(&e);
	assert_int_equal(ls2.r.called, 0);
	buf_free(&ls.out);
	buf_free(&ls2.out);
}

/* ---- events ------------------------------------------------------------- */

struct evlog {
	struct buf actions;   /* "start e1\n" ... */
	struct buf states;    /* "C D R" */
	int n;
	int reconnected;
	int64_t last_ns;
};

static void on_event(const cJSON *ev, int64_t time_ns, void *arg)
{
	struct evlog *l = arg;
	l->n++;
	l->last_ns = time_ns;
	buf_printf(&l->actions, "%s %s %lld\n", cJSON_GetObjectItem(ev, "Action")->valuestring,
		   cJSON_GetObjectItem(ev, "id")->valuestring, (long long)time_ns);
}

static void on_state(enum docker_events_state st, const char *msg, void *arg)
{
	struct evlog *l = arg;
	assert_non_null(msg);
	static const char names[] = "CDRF";
	buf_append_byte(&l->states, names[st]);
	if (st == DOCKER_EVENTS_RECONNECTED)
		l->reconnected++;
}

static char *event_json(const char *action, const char *id, const char *label, int64_t ns)
{
	char *s = malloc(1024);
	snprintf(s, 1024,
		 "{\"status\":\"%s\",\"id\":\"%s\",\"from\":\"img\",\"Type\":\"container\","
		 "\"Action\":\"%s\",\"Actor\":{\"ID\":\"%s\",\"Attributes\":{\"slipway.test\":\"%s\"}},"
		 "\"scope\":\"local\",\"time\":%lld,\"timeNano\":%lld}",
		 action, id, action, id, label, (long long)(ns / 1000000000), (long long)ns);
	return s;
}

struct ctl {
	int done;
	long status;
	char msg[256];
};

static void on_ctl_done(const struct http_response *resp, void *arg)
{
	struct ctl *c = arg;
	c->status = resp->status;
	snprintf(c->msg, sizeof c->msg, "%s %.200s", resp->error_msg, resp->body);
	c->done = 1;
}

/* A control request sent from the loop, so the client under test keeps
 * running while the fake waits (for a subscriber to arrive, say). */
static void fake_post_async(struct env *e, const char *path, const char *body)
{
	char url[256];
	snprintf(url, sizeof url, "http://localhost%s", path);
	static const char *const hdrs[] = {"Content-Type: application/json", NULL};
	struct ctl c = {0};
	struct http_request req = {
		.method = "POST", .url = url, .unix_socket = e->fake.proc.sock, .headers = hdrs,
		.body = body, .body_len = strlen(body), .timeout_ms = 15000,
		.on_done = on_ctl_done, .arg = &c,
	};
	assert_true(http_client_start(e->http, &req) > 0);
	wait_for(e, &c.done, 1);
	if (c.status != 200)
		fail_msg("fake POST %s: HTTP %ld %s", path, c.status, c.msg);
}

static void post_event(struct env *e, const char *action, const char *id, int64_t ns, int wait)
{
	char *ev = event_json(action, id, "t1", ns);
	char body[1200];
	snprintf(body, sizeof body, "{\"event\":%s,\"wait_subscribers\":%d}", ev, wait);
	fake_post_async(e, "/_fake/event", body);
	free(ev);
}

#define T0 1795671551000000000LL

static void test_events_resume_after_drop(void **state)
{
	(void)state;
	struct env e;
	env_up(&e, "old", NULL);
	struct evlog l;
	memset(&l, 0, sizeof l);
	buf_init(&l.actions, 1 << 20);
	buf_init(&l.states, 1024);
	static const char *const labels[] = {"slipway.test=t1", NULL};
	struct docker_events_opts o = {
		.type = "container", .labels = labels, .backoff_base_ms = 5, .backoff_cap_ms = 50,
		.on_event = on_event, .on_state = on_state, .arg = &l,
	};
	assert_true(docker_events_subscribe(e.d, &o) > 0);
	post_event(&e, "create", "e1", T0 + 1, 1);
	post_event(&e, "start", "e2", T0 + 2, 1);
	post_event(&e, "die", "e3", T0 + 300000000, 1);
	wait_for(&e, &l.n, 3);
	/* The connection drops; meanwhile e4 (same nanosecond as e3, a different
	 * event), e5, and an event for another label happen. On reconnect the
	 * engine replays from e3's time: e3 must not come twice. */
	char *e4 = event_json("stop", "e4", "t1", T0 + 300000000);
	char *e5 = event_json("destroy", "e5", "t1", T0 + 400000000);
	char *other = event_json("start", "x9", "other", T0 + 400000001);
	char body[4096];
	snprintf(body, sizeof body, "{\"then_add\":[%s,%s,%s]}", e4, e5, other);
	fake_post_async(&e, "/_fake/drop_events", body);
	free(e4);
	free(e5);
	free(other);
	wait_for(&e, &l.n, 5);
	wait_for(&e, &l.reconnected, 1);
	post_event(&e, "create", "e6", T0 + 500000000, 1);
	wait_for(&e, &l.n, 6);
	assert_string_equal(l.actions.data, "create e1 1795671551000000001\n"
					    "start e2 1795671551000000002\n"
					    "die e3 1795671551300000000\n"
					    "stop e4 1795671551300000000\n"
					    "destroy e5 1795671551400000000\n"
					    "create e6 1795671551500000000\n");
	assert_string_equal(l.states.data, "CDR");
	char *paths = fake_paths(&e.fake);
	const char *first = strstr(paths, "GET /v1.41/events?filters=");
	assert_non_null(first);
	const char *second = strstr(first + 1, "GET /v1.41/events?filters=");
	assert_non_null(second);
	const char *eol = strchr(first, '\n');
	assert_true(memmem(first, (size_t)(eol - first), "since=", 6) == NULL);
	assert_non_null(strstr(second, "&since=1795671551.300000000\n"));
	/* The drop made the version stale: it was negotiated again first. */
	assert_non_null(strstr(first, "GET /_ping\nGET /version\nGET /v1.41/events"));
	free(paths);
	buf_free(&l.actions);
	buf_free(&l.states);
	env_down(&e);
}

/* A drop before any event: the reconnect asks since= the time of the first
 * connection, so an event from the gap is still delivered. */
static void test_events_drop_before_any_event(void **state)
{
	(void)state;
	struct env e;
	env_up(&e, "old", NULL);
	struct evlog l;
	memset(&l, 0, sizeof l);
	buf_init(&l.actions, 1 << 20);
	buf_init(&l.states, 1024);
	static const char *const labels[] = {"slipway.test=t1", NULL};
	struct docker_events_opts o = {
		.labels = labels, .backoff_base_ms = 5, .backoff_cap_ms = 50,
		.on_event = on_event, .on_state = on_state, .arg = &l,
	};
	int64_t before = clock_wall_ms();
	assert_true(docker_events_subscribe(e.d, &o) > 0);
	/* Filtered out by the engine; returns once the subscriber is there. */
	char *ev = event_json("start", "x1", "other", T0);
	char body[4096];
	snprintf(body, sizeof body, "{\"event\":%s,\"wait_subscribers\":1}", ev);
	free(ev);
	fake_post_async(&e, "/_fake/event", body);
	int64_t in_gap = (clock_wall_ms() + 60000) * 1000000;
	ev = event_json("die", "g1", "t1", in_gap);
	snprintf(body, sizeof body, "{\"then_add\":[%s]}", ev);
	free(ev);
	fake_post_async(&e, "/_fake/drop_events", body);
	wait_for(&e, &l.n, 1);
	assert_non_null(strstr(l.actions.data, "die g1"));
	assert_string_equal(l.states.data, "CDR");
	cJSON *all;
	const cJSON *req = fake_last(&e.fake, "/v1.41/events", &all);
	const char *since = strstr(req_path(req), "&since=");
	assert_non_null(since);
	long long secs = atoll(since + 7);
	assert_true(secs >= before / 1000 && secs <= clock_wall_ms() / 1000);
	cJSON_Delete(all);
	buf_free(&l.actions);
	buf_free(&l.states);
	env_down(&e);
}

static void test_engine_restart(void **state)
{
	(void)state;
	struct env e;
	env_up(&e, "old", NULL);
	struct evlog l;
	memset(&l, 0, sizeof l);
	buf_init(&l.actions, 1 << 20);
	buf_init(&l.states, 1024);
	struct docker_events_opts o = {
		.backoff_base_ms = 20, .backoff_cap_ms = 100,
		.on_event = on_event, .on_state = on_state, .arg = &l,
	};
	assert_true(docker_events_subscribe(e.d, &o) > 0);
	post_event(&e, "start", "e1", T0 + 7, 1);
	wait_for(&e, &l.n, 1);
	/* Also a log stream open across the restart. */
	struct lines ls;
	memset(&ls, 0, sizeof ls);
	buf_init(&ls.out, 1 << 20);
	struct docker_logs_opts lo = {.follow = 1};
	assert_true(docker_container_logs(e.d, "logs-hang", &lo, on_line, on_done, &ls) > 0);
	wait_for(&e, &ls.n, 1);
	/* The engine goes away for 300 ms and comes back upgraded. */
	fake_post_async(&e, "/_fake/restart", "{\"down_ms\":300,\"profile\":\"new\"}");
	wait_for(&e, &ls.r.called, 1);
	assert_int_equal(ls.r.error, DOCKER_ERR_TRANSPORT);
	wait_for(&e, &l.reconnected, 1);
	post_event(&e, "start", "e2", T0 + 8, 1);
	wait_for(&e, &l.n, 2);
	assert_string_equal(l.actions.data, "start e1 1795671551000000007\n"
					    "start e2 1795671551000000008\n");
	assert_string_equal(l.states.data, "CDR");
	assert_string_equal(docker_api_version(e.d), "1.51");
	cJSON *all;
	const cJSON *req = fake_last(&e.fake, "/v1.51/events", &all);
	assert_string_equal(req_path(req), "/v1.51/events?since=1795671551.000000007");
	cJSON_Delete(all);
	res_free(&ls.r);
	struct res r;
	RUN(&e, r, docker_container_list(e.d, 0, NULL, 0, on_done, &r));
	assert_int_equal(r.error, DOCKER_OK);
	req = fake_last(&e.fake, "/v1.51/containers/json", &all);
	cJSON_Delete(all);
	res_free(&r);
	buf_free(&ls.out);
	buf_free(&l.actions);
	buf_free(&l.states);
	env_down(&e);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_base64url_and_refs),
		cmocka_unit_test(test_negotiate_old_engine),
		cmocka_unit_test(test_negotiate_new_engine),
		cmocka_unit_test(test_negotiate_refused),
		cmocka_unit_test(test_unreachable_socket),
		cmocka_unit_test(test_container_lifecycle),
		cmocka_unit_test(test_stop_signal_new_engine),
		cmocka_unit_test(test_engine_500),
		cmocka_unit_test(test_oversized_answer),
		cmocka_unit_test(test_pull),
		cmocka_unit_test(test_push_tag_inspect_remove),
		cmocka_unit_test(test_build),
		cmocka_unit_test(test_logs),
		cmocka_unit_test(test_logs_pause),
		cmocka_unit_test(test_info_and_networks),
		cmocka_unit_test(test_cancel),
		cmocka_unit_test(test_events_resume_after_drop),
		cmocka_unit_test(test_events_drop_before_any_event),
		cmocka_unit_test(test_engine_restart),
	};
	curl_global_init(CURL_GLOBAL_DEFAULT);
	int rc = cmocka_run_group_tests_name("docker", tests, NULL, NULL);
	curl_global_cleanup();
	return rc;
}
