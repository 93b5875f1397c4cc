/*
 * server + api over real HTTP: routing (404, 405 with Allow), the error body,
 * headers every answer carries, API key roles and app scopes, body caps per
 * route, and the API's main flows (apps, releases, promote, rollback, env,
 * scale, delete, API keys, events).
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
	fx_init(&f, NULL, 1);
	*state = &f;
	return 0;
}

static int teardown(void **state)
{
	fx_free(*state);
	return 0;
}

struct hdrs {
	int done;
	long status;
	char proto[16], rid[32], allow[128], ctype[64];
	struct buf body;
};

static void hdrs_done(const struct http_response *resp, void *arg)
{
	struct hdrs *h = arg;
	const char *v;
	h->status = resp->status;
	if ((v = http_response_header(resp, "Slipway-Protocol")))
		snprintf(h->proto, sizeof h->proto, "%s", v);
	if ((v = http_response_header(resp, "Slipway-Request-Id")))
		snprintf(h->rid, sizeof h->rid, "%s", v);
	if ((v = http_response_header(resp, "Allow")))
		snprintf(h->allow, sizeof h->allow, "%s", v);
	if ((v = http_response_header(resp, "Content-Type")))
		snprintf(h->ctype, sizeof h->ctype, "%s", v);
	buf_append(&h->body, resp->body, resp->body_len);
	h->done = 1;
}

static void raw_call(struct fx *f, const char *method, const char *path, const char *body,
		     size_t len, struct hdrs *h)
{
	char url[256];
	snprintf(url, sizeof url, "http://127.0.0.1:%d%s", f->port, path);
	memset(h, 0, sizeof *h);
	buf_init(&h->body, 1 << 20);
	struct http_request req = {.method = method, .url = url, .body = body, .body_len = len,
				   .timeout_ms = 30000, .on_done = hdrs_done, .arg = h};
	assert_true(http_client_start(f->http, &req) > 0);
	while (!h->done)
		ev_run(f->loop, EVRUN_ONCE);
}

static void routing_and_errors(void **state)
{
	struct fx *f = *state;
	struct hdrs h;
	raw_call(f, "GET", "/nowhere", NULL, 0, &h);
	assert_int_equal(h.status, 404);
	assert_string_equal(h.proto, "1");
	assert_int_equal(strncmp(h.rid, "rq_", 3), 0);
	cJSON *j = json_parse(h.body.data, h.body.len, h.body.len + 1, NULL);
	cJSON *e = cJSON_GetObjectItem(j, "error");
	assert_string_equal(fx_str(e, "code"), "not_found");
	assert_true(strlen(fx_str(e, "message")) > 0);
	cJSON_Delete(j);
	buf_free(&h.body);
	raw_call(f, "DELETE", "/v1/apps", NULL, 0, &h);
	assert_int_equal(h.status, 405);
	assert_non_null(strstr(h.allow, "GET"));
	assert_non_null(strstr(h.allow, "POST"));
	buf_free(&h.body);
	raw_call(f, "GET", "/v1/health", NULL, 0, &h);
	assert_int_equal(h.status, 200);
	assert_non_null(strstr(h.ctype, "application/json"));
	buf_free(&h.body);
	/* trailing slash and empty segments do not match */
	assert_int_equal(fx_req(f, "GET", "/v1/apps/", f->admin_key, NULL, NULL, NULL), 404);
	assert_int_equal(fx_req(f, "GET", "/v1//apps", f->admin_key, NULL, NULL, NULL), 404);
	/* an encoded slash in a parameter does not match */
	assert_int_equal(fx_req(f, "GET", "/v1/apps/a%2Fb", f->admin_key, NULL, NULL, NULL), 404);
}

static void keys_roles_scopes(void **state)
{
	struct fx *f = *state;
	cJSON *j = NULL;
	assert_int_equal(fx_req(f, "GET", "/v1/apps", NULL, NULL, NULL, NULL), 401);
	assert_int_equal(fx_req(f, "GET", "/v1/apps", "slw_nope", NULL, NULL, NULL), 401);
	assert_int_equal(fx_req(f, "POST", "/v1/apps", f->admin_key, "{\"name\":\"web\"}", NULL,
				NULL),
			 201);
	assert_int_equal(fx_req(f, "POST", "/v1/apps", f->admin_key, "{\"name\":\"api\"}", NULL,
				NULL),
			 201);
	char rkey[128], skey[128], kid[64];
	assert_int_equal(fx_req(f, "POST", "/v1/apikeys", f->admin_key,
				"{\"name\":\"viewer\",\"role\":\"read\"}", &j, NULL),
			 201);
	snprintf(rkey, sizeof rkey, "%s", fx_str(j, "key"));
	cJSON_Delete(j);
	assert_int_equal(fx_req(f, "POST", "/v1/apikeys", f->admin_key,
				"{\"name\":\"ci-web\",\"role\":\"deploy\",\"app\":\"web\"}", &j, NULL),
			 201);
	snprintf(skey, sizeof skey, "%s", fx_str(j, "key"));
	snprintf(kid, sizeof kid, "%s", fx_str(j, "id"));
	cJSON_Delete(j);
	/* read: may list, may not create or read env */
	assert_int_equal(fx_req(f, "GET", "/v1/apps", rkey, NULL, NULL, NULL), 200);
	assert_int_equal(fx_req(f, "POST", "/v1/apps", rkey, "{\"name\":\"x\"}", &j, NULL), 403);
	assert_string_equal(fx_str(cJSON_GetObjectItem(j, "error"), "code"), "forbidden");
	cJSON_Delete(j);
	assert_int_equal(fx_req(f, "GET", "/v1/apps/web/env", rkey, NULL, NULL, NULL), 403);
	/* scoped deploy key: its app only */
	assert_int_equal(fx_req(f, "GET", "/v1/apps/web/env", skey, NULL, NULL, NULL), 200);
	assert_int_equal(fx_req(f, "GET", "/v1/apps/api/env", skey, NULL, NULL, NULL), 403);
	assert_int_equal(fx_req(f, "GET", "/v1/agents", skey, NULL, NULL, NULL), 403);
	assert_int_equal(fx_req(f, "GET", "/v1/apps", skey, NULL, &j, NULL), 200);
	cJSON *apps = cJSON_GetObjectItem(j, "apps");
	assert_int_equal(cJSON_GetArraySize(apps), 1);
	assert_string_equal(fx_str(cJSON_GetArrayItem(apps, 0), "name"), "web");
	cJSON_Delete(j);
	assert_int_equal(fx_req(f, "GET", "/v1/whoami", skey, NULL, &j, NULL), 200);
	assert_string_equal(fx_str(j, "app"), "web");
	assert_string_equal(fx_str(j, "role"), "deploy");
	cJSON_Delete(j);
	/* the listing never shows keys or hashes */
	char *raw = NULL;
	assert_int_equal(fx_req(f, "GET", "/v1/apikeys", f->admin_key, NULL, NULL, &raw), 200);
	assert_null(strstr(raw, skey));
	assert_null(strstr(raw, "hash"));
	free(raw);
	/* revoked: refused at once */
	char path[128];
	snprintf(path, sizeof path, "/v1/apikeys/%s", kid);
	assert_int_equal(fx_req(f, "DELETE", path, f->admin_key, NULL, NULL, NULL), 200);
	assert_int_equal(fx_req(f, "GET", "/v1/apps/web/env", skey, NULL, NULL, NULL), 401);
	assert_int_equal(fx_req(f, "DELETE", "/v1/apikeys/k_nope", f->admin_key, NULL, NULL, NULL),
			 404);
}

static void body_caps(void **state)
{
	struct fx *f = *state;
	size_t n = ((size_t)1 << 20) + 10;
	char *big = malloc(n + 1);
	memset(big, ' ', n);
	big[0] = '{';
	big[n - 1] = '}';
	big[n] = '\0';
	struct hdrs h;
	/* Credentials first: a caller without them learns nothing and costs no body. */
	raw_call(f, "POST", "/v1/apps", big, n, &h);
	assert_int_equal(h.status, 401);
	buf_free(&h.body);
	cJSON *e = NULL;
	assert_int_equal(fx_req(f, "POST", "/v1/apps", f->admin_key, big, &e, NULL), 413);
	assert_string_equal(fx_str(cJSON_GetObjectItem(e, "error"), "code"), "too_large");
	cJSON_Delete(e);
	/* the log route takes up to 4 MiB (then the batch rules apply) */
	struct reg {
		char id[72], token[128];
	} g;
	cJSON *j = NULL;
	assert_int_equal(fx_req(f, "POST", "/v1/agents/register", FX_BOOT,
				"{\"instance_id\":\"i-1\"}", &j, NULL),
			 200);
	snprintf(g.id, sizeof g.id, "%s", fx_str(j, "agent_id"));
	snprintf(g.token, sizeof g.token, "%s", fx_str(j, "token"));
	cJSON_Delete(j);
	char path[128];
	snprintf(path, sizeof path, "/v1/agents/%s/logs", g.id);
	assert_int_equal(fx_req(f, "POST", path, g.token, big, &j, NULL), 400); /* not 413 */
	cJSON_Delete(j);
	snprintf(path, sizeof path, "/v1/agents/%s/heartbeat", g.id);
	assert_int_equal(fx_req(f, "POST", path, g.token, big, NULL, NULL), 413);
	free(big);
	assert_int_equal(fx_req(f, "POST", "/v1/apps", f->admin_key, "{\"name\":", NULL, NULL), 400);
}

static void api_flows(void **state)
{
	struct fx *f = *state;
	cJSON *j = NULL;
	const char *k = f->admin_key;
	assert_int_equal(fx_req(f, "POST", "/v1/apps", k, "{\"name\":\"Web\"}", NULL, NULL), 400);
	assert_int_equal(fx_req(f, "POST", "/v1/apps", k, "{\"name\":\"web\",\"colour\":1}", NULL,
				NULL),
			 400);
	assert_int_equal(fx_req(f, "POST", "/v1/apps", k, "{\"name\":\"web\",\"strategy\":\"canary\"}",
				&j, NULL),
			 201);
	assert_string_equal(fx_str(j, "strategy"), "canary");
	assert_string_equal(fx_str(j, "status"), "created");
	cJSON_Delete(j);
	assert_int_equal(fx_req(f, "POST", "/v1/apps", k, "{\"name\":\"web\"}", NULL, NULL), 409);
	assert_int_equal(fx_req(f, "PATCH", "/v1/apps/web", k, "{\"strategy\":\"all\"}", &j, NULL),
			 200);
	assert_string_equal(fx_str(j, "strategy"), "all");
	cJSON_Delete(j);
	assert_int_equal(fx_req(f, "GET", "/v1/apps/nope", k, NULL, NULL, NULL), 404);
	/* a release from an image, promoted (no agents: live at once) */
	assert_int_equal(fx_req(f, "POST", "/v1/apps/web/releases", k,
				"{\"services\":{\"web\":{\"image\":\"reg/web:v1\",\"port\":70000}}}",
				NULL, NULL),
			 400);
	assert_int_equal(fx_req(f, "POST", "/v1/apps/web/releases", k,
				"{\"services\":{\"web\":{\"image\":\"reg/web:v1\",\"port\":8080}}}",
				&j, NULL),
			 202);
	char r1[72];
	snprintf(r1, sizeof r1, "%s", fx_str(j, "release"));
	assert_int_equal((int)fx_num(j, "generation"), 1);
	cJSON_Delete(j);
	/* environment: set without promote makes a release, not promoted */
	assert_int_equal(fx_req(f, "PATCH", "/v1/apps/web/env", k,
				"{\"set\":{\"DB_PASSWORD\":\"s3cret-value\",\"MODE\":\"prod\"}}", &j,
				NULL),
			 200);
	char r2[72];
	snprintf(r2, sizeof r2, "%s", fx_str(j, "release"));
	assert_string_not_equal(r1, r2);
	assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "rollout")));
	cJSON_Delete(j);
	assert_int_equal(fx_req(f, "PATCH", "/v1/apps/web/env", k, "{\"set\":{\"1BAD\":\"x\"}}", NULL,
				NULL),
			 400);
	assert_int_equal(fx_req(f, "GET", "/v1/apps/web/env", k, NULL, &j, NULL), 200);
	assert_string_equal(fx_str(cJSON_GetObjectItem(j, "environment"), "DB_PASSWORD"),
			    "s3cret-value");
	cJSON_Delete(j);
	/* release info shows names, never values */
	char path[256], *raw = NULL;
	snprintf(path, sizeof path, "/v1/apps/web/releases/%s", r2);
	assert_int_equal(fx_req(f, "GET", path, k, NULL, NULL, &raw), 200);
	assert_null(strstr(raw, "s3cret-value"));
	assert_non_null(strstr(raw, "DB_PASSWORD"));
	free(raw);
	assert_int_equal(fx_req(f, "PATCH", "/v1/apps/web/env?promote=1", k,
				"{\"unset\":[\"MODE\"]}", &j, NULL),
			 202);
	char r3[72];
	snprintf(r3, sizeof r3, "%s", fx_str(j, "release"));
	cJSON_Delete(j);
	/* scale: a new release, promoted */
	assert_int_equal(fx_req(f, "POST", "/v1/apps/web/scale", k,
				"{\"service\":\"nope\",\"count\":3}", NULL, NULL),
			 404);
	assert_int_equal(fx_req(f, "POST", "/v1/apps/web/scale", k,
				"{\"service\":\"web\",\"count\":3,\"memory_mb\":256}", &j, NULL),
			 202);
	char r4[72];
	snprintf(r4, sizeof r4, "%s", fx_str(j, "release"));
	cJSON_Delete(j);
	snprintf(path, sizeof path, "/v1/apps/web/releases/%s", r4);
	assert_int_equal(fx_req(f, "GET", path, k, NULL, &j, NULL), 200);
	cJSON *svc = cJSON_GetArrayItem(
		cJSON_GetObjectItem(cJSON_GetObjectItem(j, "spec"), "services"), 0);
	assert_int_equal((int)fx_num(svc, "count"), 3);
	assert_int_equal((int)fx_num(svc, "memory_mb"), 256);
	cJSON_Delete(j);
	/* rollback to r1: a new release with r1's image and environment */
	snprintf(path, sizeof path, "/v1/apps/web/releases/%s/rollback", r1);
	assert_int_equal(fx_req(f, "POST", path, k, NULL, &j, NULL), 202);
	char r5[72];
	snprintf(r5, sizeof r5, "%s", fx_str(j, "release"));
	cJSON_Delete(j);
	assert_string_not_equal(r5, r1);
	assert_string_equal(fx_text(f, "SELECT trigger FROM rollouts ORDER BY started_ms DESC, "
				       "rowid DESC LIMIT 1"),
			    "rollback");
	assert_string_equal(fx_text(f, "SELECT release FROM apps WHERE name = 'web'"), r5);
	snprintf(path, sizeof path, "/v1/apps/web/releases/r_nope/promote");
	assert_int_equal(fx_req(f, "POST", path, k, NULL, NULL, NULL), 404);
	snprintf(path, sizeof path, "/v1/apps/web/releases/%s/promote", r2);
	assert_int_equal(fx_req(f, "POST", path, k, NULL, &j, NULL), 202);
	cJSON_Delete(j);
	assert_int_equal(fx_req(f, "GET", "/v1/apps/web/releases?limit=3", k, NULL, &j, NULL), 200);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j, "releases")), 3);
	cJSON_Delete(j);
	assert_int_equal(fx_req(f, "GET", "/v1/apps/web/releases?limit=0", k, NULL, NULL, NULL), 400);
	assert_int_equal(fx_req(f, "GET", "/v1/apps/web/rollouts", k, NULL, &j, NULL), 200);
	assert_true(cJSON_GetArraySize(cJSON_GetObjectItem(j, "rollouts")) >= 4);
	cJSON_Delete(j);
	assert_int_equal(fx_req(f, "GET", "/v1/events?app=web", k, NULL, &j, NULL), 200);
	assert_true(cJSON_GetArraySize(cJSON_GetObjectItem(j, "events")) > 5);
	cJSON_Delete(j);
	assert_int_equal(fx_req(f, "GET", "/v1/apps/web/builds", k, NULL, &j, NULL), 200);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j, "builds")), 0);
	cJSON_Delete(j);
	assert_int_equal(fx_req(f, "GET", "/v1/builds/b_nope", k, NULL, NULL, NULL), 404);
	assert_int_equal(fx_req(f, "GET", "/v1/builds/b_nope/log", k, NULL, NULL, NULL), 404);
}

static void delete_app_removes_everywhere(void **state)
{
	struct fx *f = *state;
	cJSON *j = NULL;
	const char *k = f->admin_key;
	assert_int_equal(fx_req(f, "POST", "/v1/agents/register", FX_BOOT,
				"{\"instance_id\":\"i-1\"}", &j, NULL),
			 200);
	char id[72];
	snprintf(id, sizeof id, "%s", fx_str(j, "agent_id"));
	cJSON_Delete(j);
	assert_int_equal(fx_req(f, "POST", "/v1/apps", k, "{\"name\":\"web\"}", NULL, NULL), 201);
	assert_int_equal(fx_req(f, "POST", "/v1/apps/web/releases", k,
				"{\"services\":{\"web\":{\"image\":\"reg/web:v1\"}}}", NULL, NULL),
			 202);
	assert_int_equal(fx_req(f, "DELETE", "/v1/apps/web", k, NULL, &j, NULL), 200);
	assert_int_equal((int)fx_num(j, "remove_jobs"), 1);
	cJSON_Delete(j);
	assert_string_equal(fx_text(f, "SELECT type FROM jobs WHERE agent = '%s' AND state = "
				       "'queued'",
				id),
			    "remove");
	assert_int_equal(fx_int(f, "SELECT generation FROM jobs WHERE type = 'remove'"), 2);
	assert_int_equal(fx_int(f, "SELECT count(*) FROM releases"), 0);
	/* the same name again continues the generations */
	assert_int_equal(fx_req(f, "POST", "/v1/apps", k, "{\"name\":\"web\"}", &j, NULL), 201);
	assert_int_equal((int)fx_num(j, "generation"), 2);
	cJSON_Delete(j);
	assert_int_equal(fx_req(f, "DELETE", "/v1/apps/web", k, NULL, NULL, NULL), 200);
	assert_int_equal(fx_req(f, "DELETE", "/v1/apps/web", k, NULL, NULL, NULL), 404);
}

static void uploads_and_build_logs(void **state)
{
	struct fx *f = *state;
	const char *k = f->admin_key;
	cJSON *j = NULL;
	assert_int_equal(fx_req(f, "POST", "/v1/apps", k, "{\"name\":\"web\"}", NULL, NULL), 201);
	/* an upload becomes a created build whose context is the body */
	const char ctx[] = "\x1f\x8b pretend this is a tar.gz";
	assert_int_equal(fx_req(f, "POST", "/v1/apps/web/builds?description=from%20ci", k, ctx, &j,
				NULL),
			 202);
	char build[72];
	snprintf(build, sizeof build, "%s", fx_str(j, "build"));
	cJSON_Delete(j);
	assert_string_equal(fx_text(f, "SELECT status || ' ' || source || ' ' || description FROM "
				       "builds WHERE id = '%s'",
				build),
			    "created upload from ci");
	char path[512];
	snprintf(path, sizeof path, "%s", fx_text(f, "SELECT context_path FROM builds WHERE id = "
						    "'%s'",
						 build));
	FILE *fp = fopen(path, "rb");
	assert_non_null(fp);
	char got[64] = {0};
	assert_int_equal(fread(got, 1, sizeof got, fp), sizeof ctx - 1);
	fclose(fp);
	assert_memory_equal(got, ctx, sizeof ctx - 1);
	assert_int_equal(fx_req(f, "POST", "/v1/apps/nope/builds", k, ctx, NULL, NULL), 404);
	assert_int_equal(fx_req(f, "POST", "/v1/apps/web/builds", k, NULL, NULL, NULL), 400);
	char cpath[128];
	snprintf(cpath, sizeof cpath, "/v1/builds/%s/cancel", build);
	assert_int_equal(fx_req(f, "POST", cpath, k, NULL, &j, NULL), 202);
	cJSON_Delete(j);
	assert_int_equal(fx_req(f, "POST", "/v1/builds/b_nope/cancel", k, NULL, NULL, NULL), 404);
	/* A running build's log streams until the build ends. */
	fx_exec(f, "UPDATE builds SET status = 'running' WHERE id = '%s'", build);
	fx_exec(f, "INSERT INTO build_logs(build, seq, chunk) VALUES ('%s', 0, 'step 1\n')", build);
	struct hdrs h;
	char url[256], auth[256];
	snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/builds/%s/log", f->port, build);
	snprintf(auth, sizeof auth, "Authorization: Bearer %s", k);
	const char *headers[] = {auth, NULL};
	memset(&h, 0, sizeof h);
	buf_init(&h.body, 1 << 20);
	struct http_request req = {.url = url, .headers = headers, .timeout_ms = 30000,
				   .on_done = hdrs_done, .arg = &h};
	assert_true(http_client_start(f->http, &req) > 0);
	double t0 = ev_time();
	while (ev_time() - t0 < 0.8)
		ev_run(f->loop, EVRUN_ONCE);
	assert_false(h.done); /* still running: the answer stays open */
	fx_exec(f, "INSERT INTO build_logs(build, seq, chunk) VALUES ('%s', 1, 'step 2\n')", build);
	fx_exec(f, "UPDATE builds SET status = 'complete' WHERE id = '%s'", build);
	while (!h.done)
		ev_run(f->loop, EVRUN_ONCE);
	assert_int_equal(h.status, 200);
	assert_string_equal(h.body.data, "step 1\nstep 2\n");
	assert_non_null(strstr(h.ctype, "text/plain"));
	buf_free(&h.body);
	snprintf(cpath, sizeof cpath, "/v1/builds/%s/cancel", build);
	assert_int_equal(fx_req(f, "POST", cpath, k, NULL, NULL, NULL), 409);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(routing_and_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(keys_roles_scopes, setup, teardown),
		cmocka_unit_test_setup_teardown(body_caps, setup, teardown),
		cmocka_unit_test_setup_teardown(api_flows, setup, teardown),
		cmocka_unit_test_setup_teardown(delete_app_removes_everywhere, setup, teardown),
		cmocka_unit_test_setup_teardown(uploads_and_build_logs, setup, teardown),
	};
	return cmocka_run_group_tests_name("server", tests, NULL, NULL);
}
