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

#include "buf.h"
#include "config.h"
#include "coord.h"
#include "crypto.h"
#include "http_client.h"
#include "log.h"
#include "secrets.h"
#include "server.h"
#include "../../../coordinator/settings.h" /* agent/ has a settings.h too */
#include "store.h"
#include "webhook.h"
#include "worker.h"

/* ---- fixtures (real GitLab payloads, $SLIPWAY_FIXTURES/gitlab) ---- */

static char *fixture(const char *name, size_t *len)
{
	const char *base = getenv("SLIPWAY_FIXTURES");
	char path[1024];
	snprintf(path, sizeof path, "%s/gitlab/%s", base && *base ? base : "/work/shared/fixtures",
		 name);
	FILE *f = fopen(path, "rb");
	if (!f) {
		print_error("cannot open fixture %s\n", path);
		fail();
	}
	struct buf b;
	buf_init(&b, 1 << 20);
	char chunk[4096];
	size_t n;
	while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
		assert_int_equal(buf_append(&b, chunk, n), 0);
	fclose(f);
	*len = b.len;
	return buf_detach(&b, NULL);
}

static void parse_fixture(const char *name, const char *event, struct webhook_event *ev)
{
	size_t len;
	char *body = fixture(name, &len);
	struct err e;
	if (webhook_parse(event, body, len, ev, &e) < 0) {
		print_error("%s: %s\n", name, e.msg);
		fail();
	}
	free(body);
}

static void test_parse_fixtures(void **state)
{
	(void)state;
	struct webhook_event ev;
	parse_fixture("push_hook.json", "Push Hook", &ev);
	assert_int_equal(ev.kind, WEBHOOK_PUSH);
	assert_string_equal(ev.problem, "");
	assert_string_equal(ev.ref, "refs/heads/master");
	assert_string_equal(ev.name, "master");
	assert_string_equal(ev.sha, "2adc9465c4edfc33834e173fe89436a7cb899a1d");
	assert_string_equal(ev.before, "9217710ce8c7e1eae7a5d1c45f6e43e1c769f866");
	assert_false(ev.deleted);
	assert_string_equal(ev.project, "gitlab-org/hello-world");
	assert_int_equal(ev.project_id, 4861503);
	assert_string_equal(ev.default_branch, "master");
	assert_string_equal(ev.ssh_url, "git@gitlab.com:gitlab-org/hello-world.git");
	assert_string_equal(ev.author, "sytses");

	parse_fixture("push_hook_branch_create.json", "Push Hook", &ev);
	assert_string_equal(ev.problem, "");
	assert_string_equal(ev.name, "feature");
	assert_string_equal(ev.sha, "c4c79227ed610f1151f05bbc5be33b4f340d39c8");
	assert_string_equal(ev.before, "0000000000000000000000000000000000000000");
	assert_false(ev.deleted);

	parse_fixture("push_hook_branch_delete.json", "Push Hook", &ev);
	assert_string_equal(ev.problem, "");
	assert_true(ev.deleted);
	assert_string_equal(ev.sha, "");
	assert_string_equal(ev.name, "feature");

	parse_fixture("tag_push_hook.json", "Tag Push Hook", &ev);
	assert_int_equal(ev.kind, WEBHOOK_TAG_PUSH);
	assert_string_equal(ev.problem, "");
	assert_string_equal(ev.ref, "refs/tags/v1.0.0");
	assert_string_equal(ev.name, "v1.0.0");
	assert_string_equal(ev.sha, "2adc9465c4edfc33834e173fe89436a7cb899a1d");

	parse_fixture("tag_push_hook_delete.json", "Tag Push Hook", &ev);
	assert_string_equal(ev.problem, "");
	assert_true(ev.deleted);

	parse_fixture("pipeline_hook.json", "Pipeline Hook", &ev);
	assert_int_equal(ev.kind, WEBHOOK_PIPELINE);
	assert_string_equal(ev.problem, "");
	assert_string_equal(ev.ref, "refs/heads/master");
	assert_string_equal(ev.name, "master");
	assert_string_equal(ev.sha, "bcbb5ec396a2c0f828686f14fac9b80b780504f2");
	assert_string_equal(ev.status, "success");
	assert_string_equal(ev.source, "merge_request_event");
	assert_int_equal(ev.pipeline_id, 31);
	assert_string_equal(ev.author, "user1");
	assert_int_equal(ev.project_id, 1);

	/* Without X-Gitlab-Event the kind comes from object_kind. */
	parse_fixture("tag_push_hook.json", NULL, &ev);
	assert_int_equal(ev.kind, WEBHOOK_TAG_PUSH);
	assert_string_equal(ev.event, "Tag Push Hook");
	/* Another event is "not used", not an error. */
	parse_fixture("push_hook.json", "Note Hook", &ev);
	assert_int_equal(ev.kind, WEBHOOK_OTHER);
	/* A header that contradicts the body is a problem. */
	parse_fixture("push_hook.json", "Tag Push Hook", &ev);
	assert_non_null(strstr(ev.problem, "object_kind is \"push\", not \"tag_push\""));
}

/* Replaces the first `from` in text by `to` (a broken variant of a fixture). */
static char *variant(const char *name, const char *from, const char *to, size_t *len)
{
	size_t flen;
	char *orig = fixture(name, &flen);
	char *at = strstr(orig, from);
	assert_non_null(at);
	size_t n = flen - strlen(from) + strlen(to);
	char *out = malloc(n + 1);
	assert_non_null(out);
	size_t pre = (size_t)(at - orig);
	memcpy(out, orig, pre);
	memcpy(out + pre, to, strlen(to));
	strcpy(out + pre + strlen(to), at + strlen(from));
	free(orig);
	*len = n;
	return out;
}

static void expect_problem(const char *name, const char *event, const char *from, const char *to,
			   const char *want)
{
	size_t len;
	char *body = variant(name, from, to, &len);
	struct webhook_event ev;
	struct err e;
	assert_int_equal(webhook_parse(event, body, len, &ev, &e), 0);
	if (!strstr(ev.problem, want)) {
		print_error("replacing %s: problem '%s' lacks '%s'\n", from, ev.problem, want);
		fail();
	}
	free(body);
}

static void expect_invalid(const char *body, size_t len, const char *want)
{
	struct webhook_event ev;
	struct err e;
	assert_int_equal(webhook_parse("Push Hook", body, len, &ev, &e), -1);
	if (!strstr(e.msg, want)) {
		print_error("error '%s' lacks '%s'\n", e.msg, want);
		fail();
	}
}

static void test_parse_broken(void **state)
{
	(void)state;
	/* Not JSON at all: -1 (the endpoint answers 400). */
	expect_invalid("", 0, "empty body");
	expect_invalid("{\"object_kind\": \"push\",", 24, "body is not valid JSON");
	expect_invalid("[1, 2]", 6, "not a JSON object");
	expect_invalid("{\"ref\": \"\xff\xfe\"}", 13, "body is not valid JSON");
	size_t len;
	char *body = variant("push_hook.json", "sytses", "syt\xc3\x28s", &len); /* bad UTF-8 */
	expect_invalid(body, len, "body is not valid JSON");
	free(body);
	body = variant("push_hook.json", "\"ref\"", "\"ref\" \"x\"", &len);
	expect_invalid(body, len, "body is not valid JSON");
	free(body);

	/* Valid JSON, unusable event: parsed with a problem (answered 2xx, ignored). */
	expect_problem("push_hook.json", "Push Hook", "\"ref\":", "\"xref\":", "ref");
	expect_problem("push_hook.json", "Push Hook", "\"ref\": \"refs/heads/master\"", "\"ref\": 12",
		       "ref: expected string");
	expect_problem("push_hook.json", "Push Hook", "\"ref\": \"refs/heads/master\"",
		       "\"ref\": \"master\"", "ref: expected refs/heads/<name>");
	expect_problem("push_hook.json", "Push Hook",
		       "\"checkout_sha\": \"2adc9465c4edfc33834e173fe89436a7cb899a1d\"",
		       "\"checkout_sha\": \"not-a-sha\"", "checkout_sha: expected a commit id");
	expect_problem("push_hook.json", "Push Hook",
		       "\"checkout_sha\": \"2adc9465c4edfc33834e173fe89436a7cb899a1d\"",
		       "\"checkout_sha\": true", "checkout_sha: expected string");
	expect_problem("push_hook.json", "Push Hook", "\"project\": {", "\"projekt\": {", "project");
	expect_problem("push_hook.json", "Push Hook", "\"path_with_namespace\": \"gitlab-org",
		       "\"path\": \"gitlab-org", "project.path_with_namespace");
	expect_problem("push_hook.json", "Push Hook", "\"after\": \"2adc", "\"after\": \"zzzz",
		       "after: expected a commit id");
	expect_problem("pipeline_hook.json", "Pipeline Hook", "\"status\": \"success\"",
		       "\"status\": 7", "object_attributes.status: expected string");
	expect_problem("pipeline_hook.json", "Pipeline Hook", "\"tag\": false", "\"tag\": \"no\"",
		       "object_attributes.tag");
	expect_problem("pipeline_hook.json", "Pipeline Hook", "\"object_attributes\": {",
		       "\"object_attributez\": {", "object_attributes");
	/* A huge ref is refused by its cap, not copied. */
	char *big = malloc(20000);
	assert_non_null(big);
	strcpy(big, "\"ref\": \"refs/heads/");
	memset(big + strlen(big), 'a', 10000);
	strcpy(big + strlen("\"ref\": \"refs/heads/") + 10000, "\"");
	expect_problem("push_hook.json", "Push Hook", "\"ref\": \"refs/heads/master\"", big, "ref");
	free(big);

	/* A large but valid payload (many commits) parses. */
	struct buf b;
	buf_init(&b, 64 << 20);
	size_t flen;
	char *orig = fixture("push_hook.json", &flen);
	char *commits = strstr(orig, "\"commits\": [");
	assert_non_null(commits);
	commits += strlen("\"commits\": [");
	buf_append(&b, orig, (size_t)(commits - orig));
	for (int i = 0; i < 20000; i++)
		buf_printf(&b, "{\"id\": \"%040d\", \"message\": \"commit %d with a long message "
			       "................................................\"},",
			   i, i);
	buf_append_str(&b, commits);
	struct webhook_event ev;
	struct err e;
	assert_true(b.len > 2 << 20);
	assert_int_equal(webhook_parse("Push Hook", b.data, b.len, &ev, &e), 0);
	assert_string_equal(ev.problem, "");
	assert_string_equal(ev.sha, "2adc9465c4edfc33834e173fe89436a7cb899a1d");
	buf_free(&b);
	free(orig);
}

static int decide(const char *deploy, const char *branch, int64_t project_id, const char *fixture_name,
		  const char *event, const char *from, const char *to, char *why, size_t cap)
{
	size_t len;
	char *body = from ? variant(fixture_name, from, to, &len) : fixture(fixture_name, &len);
	struct webhook_event ev;
	struct err e;
	assert_int_equal(webhook_parse(event, body, len, &ev, &e), 0);
	free(body);
	struct webhook_app app = {.deploy = deploy, .branch = branch, .project_id = project_id};
	return webhook_decide(&app, &ev, why, cap);
}

static void test_decide_table(void **state)
{
	(void)state;
	char why[300];
	struct {
		const char *deploy, *branch;
		int64_t project_id;
		const char *fixture, *event, *from, *to;
		int build;
		const char *why;
	} cases[] = {
		/* Pushes: the configured branch, else the project's default branch. */
		{"branch", NULL, 0, "push_hook.json", "Push Hook", NULL, NULL, 1, ""},
		{"branch", "master", 4861503, "push_hook.json", "Push Hook", NULL, NULL, 1, ""},
		{"branch", "main", 0, "push_hook.json", "Push Hook", NULL, NULL, 0,
		 "push of branch master (the app deploys branch main)"},
		{"branch", NULL, 0, "push_hook_branch_create.json", "Push Hook", NULL, NULL, 0,
		 "push of branch feature (the app deploys branch master)"},
		{"branch", "feature", 0, "push_hook_branch_create.json", "Push Hook", NULL, NULL, 1,
		 ""},
		{"branch", "feature", 0, "push_hook_branch_delete.json", "Push Hook", NULL, NULL, 0,
		 "branch feature deleted"},
		{"branch", NULL, 0, "push_hook_branch_delete.json", "Push Hook", NULL, NULL, 0,
		 "branch feature deleted"},
		{"branch", NULL, 99, "push_hook.json", "Push Hook", NULL, NULL, 0,
		 "project 4861503 is not the app's project 99"},
		{"branch", NULL, 0, "push_hook.json", "Push Hook", "\"default_branch\": \"master\"",
		 "\"default_branch\": null", 0, "no branch"},
		{"tags", NULL, 0, "push_hook.json", "Push Hook", NULL, NULL, 0,
		 "push ignored: the app deploys tags"},
		{"pipeline", NULL, 0, "push_hook.json", "Push Hook", NULL, NULL, 0,
		 "push ignored: the app deploys after CI"},
		/* Tags. */
		{"tags", NULL, 0, "tag_push_hook.json", "Tag Push Hook", NULL, NULL, 1, ""},
		{"tags", NULL, 0, "tag_push_hook_delete.json", "Tag Push Hook", NULL, NULL, 0,
		 "tag v1.0.0 deleted"},
		{"branch", NULL, 0, "tag_push_hook.json", "Tag Push Hook", NULL, NULL, 0,
		 "tag push ignored: the app deploys on push"},
		/* Pipelines: success of the branch, not merge request pipelines. */
		{"pipeline", NULL, 0, "pipeline_hook.json", "Pipeline Hook", NULL, NULL, 0,
		 "merge request pipeline 31"},
		{"pipeline", NULL, 0, "pipeline_hook.json", "Pipeline Hook",
		 "\"merge_request_event\"", "\"push\"", 1, ""},
		{"pipeline", NULL, 0, "pipeline_hook.json", "Pipeline Hook",
		 "\"status\": \"success\"", "\"status\": \"failed\"", 0,
		 "merge request pipeline"},
		{"pipeline", "master", 0, "pipeline_hook.json", "Pipeline Hook",
		 "\"source\": \"merge_request_event\",\n    \"status\": \"success\"",
		 "\"source\": \"push\",\n    \"status\": \"failed\"", 0,
		 "pipeline 31 is failed (builds on success)"},
		{"pipeline", "master", 0, "pipeline_hook.json", "Pipeline Hook",
		 "\"source\": \"merge_request_event\",\n    \"status\": \"success\"",
		 "\"source\": \"push\",\n    \"status\": \"running\"", 0, "pipeline 31 is running"},
		{"pipeline", "release", 0, "pipeline_hook.json", "Pipeline Hook",
		 "\"merge_request_event\"", "\"push\"", 0,
		 "pipeline of branch master (the app deploys branch release)"},
		{"pipeline", NULL, 0, "pipeline_hook.json", "Pipeline Hook", "\"tag\": false",
		 "\"tag\": true", 0, "pipeline for tag master"},
		{"branch", NULL, 0, "pipeline_hook.json", "Pipeline Hook", NULL, NULL, 0,
		 "pipeline ignored: the app deploys on push"},
		/* Events the app does not use; malformed ones. */
		{"branch", NULL, 0, "push_hook.json", "Merge Request Hook", NULL, NULL, 0,
		 "event \"Merge Request Hook\" is not used"},
		{"branch", NULL, 0, "push_hook.json", "Push Hook", "\"ref\": \"refs/heads/master\"",
		 "\"ref\": 1", 0, "malformed Push Hook: ref: expected string"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		int got = decide(cases[i].deploy, cases[i].branch, cases[i].project_id,
				 cases[i].fixture, cases[i].event, cases[i].from, cases[i].to, why,
				 sizeof why);
		if (got != cases[i].build || !strstr(why, cases[i].why)) {
			print_error("case %zu (%s, %s %s): got %d '%s', want %d '%s'\n", i,
				    cases[i].fixture, cases[i].deploy,
				    cases[i].branch ? cases[i].branch : "-", got, why,
				    cases[i].build, cases[i].why);
			fail();
		}
	}
}

static void test_dedup_keys(void **state)
{
	(void)state;
	char k1[300], k2[300];
	webhook_dedup_key("web", "idem-1", "uuid-1", "Push Hook", "{}", 2, k1, sizeof k1);
	assert_string_equal(k1, "web:idem:idem-1");
	webhook_dedup_key("web", NULL, "uuid-1", "Push Hook", "{}", 2, k1, sizeof k1);
	assert_string_equal(k1, "web:uuid:uuid-1");
	webhook_dedup_key("web", "", "uuid-1", "Push Hook", "{}", 2, k1, sizeof k1);
	assert_string_equal(k1, "web:uuid:uuid-1");
	/* Neither header: the event and body decide. */
	webhook_dedup_key("web", NULL, NULL, "Push Hook", "{}", 2, k1, sizeof k1);
	webhook_dedup_key("web", NULL, NULL, "Push Hook", "{}", 2, k2, sizeof k2);
	assert_string_equal(k1, k2);
	assert_int_equal(strncmp(k1, "web:body:", 9), 0);
	assert_int_equal(strlen(k1), 9 + 64);
	webhook_dedup_key("web", NULL, NULL, "Tag Push Hook", "{}", 2, k2, sizeof k2);
	assert_string_not_equal(k1, k2);
	/* Another app: another key for the same event. */
	webhook_dedup_key("api", "idem-1", NULL, NULL, "", 0, k2, sizeof k2);
	assert_string_equal(k2, "api:idem:idem-1");
	/* Odd bytes or length: hashed. */
	webhook_dedup_key("web", "has space", NULL, NULL, "", 0, k1, sizeof k1);
	assert_int_equal(strncmp(k1, "web:idem:sha256:", 16), 0);
	char longkey[300];
	memset(longkey, 'k', 200);
	longkey[200] = '\0';
	webhook_dedup_key("web", longkey, NULL, NULL, "", 0, k1, sizeof k1);
	assert_int_equal(strncmp(k1, "web:idem:sha256:", 16), 0);
}

static void test_summary(void **state)
{
	(void)state;
	struct webhook_event ev;
	parse_fixture("pipeline_hook.json", "Pipeline Hook", &ev);
	cJSON *s = webhook_summary(&ev);
	assert_non_null(s);
	assert_string_equal(cJSON_GetObjectItem(s, "kind")->valuestring, "pipeline");
	assert_string_equal(cJSON_GetObjectItem(s, "sha")->valuestring,
			    "bcbb5ec396a2c0f828686f14fac9b80b780504f2");
	assert_string_equal(cJSON_GetObjectItem(s, "status")->valuestring, "success");
	cJSON_Delete(s);
	char d[400];
	parse_fixture("push_hook.json", "Push Hook", &ev);
	webhook_description(&ev, d, sizeof d);
	assert_string_equal(d, "push gitlab-org/hello-world refs/heads/master "
			       "2adc9465c4edfc33834e173fe89436a7cb899a1d");
}

/* ---- the endpoint, for real: server + store over HTTP ---- */

#define HOOK_ID "hk_0123456789abcdef0123456789abcdef"
#define TOKEN "s3cret-token-value"

struct env {
	char dir[64];
	struct ev_loop *loop;
	struct config *cfg;
	struct coord c;
	struct http_client *http;
	char base[128];
};

static struct env E;

struct app_row {
	const char *name, *hook_id, *token, *deploy, *branch;
};

static int insert_app(struct store_tx *tx, void *arg)
{
	const struct app_row *a = arg;
	struct buf sealed;
	buf_init(&sealed, 4096);
	if (secrets_seal(E.c.master_key, "apps", a->name, "hook_token", a->token, strlen(a->token),
			 &sealed) < 0)
		return -1;
	sqlite3_stmt *st = store_stmt(tx, "INSERT INTO apps(name, created_ms, hook_id, hook_token, "
					  "deploy, branch) VALUES (?, 1, ?, ?, ?, ?)");
	sqlite3_bind_text(st, 1, a->name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, a->hook_id, -1, SQLITE_STATIC);
	sqlite3_bind_blob(st, 3, sealed.data, (int)sealed.len, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 4, a->deploy, -1, SQLITE_STATIC);
	if (a->branch)
		sqlite3_bind_text(st, 5, a->branch, -1, SQLITE_STATIC);
	int rc = store_step(tx, st) == SQLITE_DONE ? 0 : -1;
	buf_free(&sealed);
	return rc;
}

static int endpoint_setup(void **state)
{
	(void)state;
	memset(&E, 0, sizeof E);
	snprintf(E.dir, sizeof E.dir, "/tmp/slipway-webhook-XXXXXX");
	if (!mkdtemp(E.dir))
		return -1;
	const char *conf = "agents.bootstrap_token = boot-token-for-tests\n"
			   "webhooks.max_body = 2M\n"
			   "log.level = warn\n";
	struct err e;
	E.cfg = config_load_buffer(coord_settings, coord_settings_count, conf, strlen(conf),
				   "test.conf", NULL, &e);
	if (!E.cfg) {
		print_error("%s\n", e.msg);
		return -1;
	}
	E.loop = ev_default_loop(0);
	E.c.loop = E.loop;
	E.c.cfg = E.cfg;
	snprintf(E.c.data_dir, sizeof E.c.data_dir, "%s", E.dir);
	crypto_random(E.c.master_key, sizeof E.c.master_key);
	char db[128];
	snprintf(db, sizeof db, "%s/coordinator.db", E.dir);
	E.c.store = store_open(E.loop, db, &e);
	if (!E.c.store) {
		print_error("%s\n", e.msg);
		return -1;
	}
	E.c.workers = worker_pool_new(E.loop, 2, 64, &e);
	if (!E.c.workers) {
		print_error("%s\n", e.msg);
		return -1;
	}
	E.c.server = server_new(&E.c, "127.0.0.1:0", &e);
	if (!E.c.server) {
		print_error("%s\n", e.msg);
		return -1;
	}
	webhook_register(&E.c);
	snprintf(E.base, sizeof E.base, "http://127.0.0.1:%d", server_port(E.c.server));
	E.http = http_client_new(E.loop);
	struct app_row web = {"web", HOOK_ID, TOKEN, "branch", NULL};
	struct app_row tags = {"tagged", "hk_tags0123456789", "other-token", "tags", NULL};
	if (store_run(E.c.store, insert_app, &web, &e) < 0 ||
	    store_run(E.c.store, insert_app, &tags, &e) < 0) {
		print_error("%s\n", e.msg);
		return -1;
	}
	return 0;
}

static int endpoint_teardown(void **state)
{
	(void)state;
	http_client_free(E.http);
	server_free(E.c.server);
	worker_pool_free(E.c.workers);
	store_close(E.c.store);
	config_free(E.cfg);
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf %s", E.dir);
	return system(cmd) == 0 ? 0 : -1;
}

struct answer {
	int done;
	long status;
	char body[2048];
};

static void answered(const struct http_response *resp, void *arg)
{
	struct answer *a = arg;
	a->done = 1;
	a->status = resp->status;
	snprintf(a->body, sizeof a->body, "%s", resp->body ? resp->body : "");
}

/* POSTs body to path with the given header lines; waits for the answer. */
static struct answer post(const char *path, const char *const *headers, const char *body,
			  size_t len)
{
	static struct answer a;
	memset(&a, 0, sizeof a);
	char url[256];
	snprintf(url, sizeof url, "%s%s", E.base, path);
	struct http_request req = {.method = "POST",
				   .url = url,
				   .headers = headers,
				   .body = body,
				   .body_len = len,
				   .timeout_ms = 10000,
				   .on_done = answered,
				   .arg = &a};
	assert_true(http_client_start(E.http, &req) > 0);
	while (!a.done)
		ev_run(E.loop, EVRUN_ONCE);
	return a;
}

static int count_fn(struct store_tx *tx, void *arg)
{
	char **q = arg;
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(tx->db, q[0], -1, &st, NULL) != SQLITE_OK)
		return err_set(&tx->err, "%s", sqlite3_errmsg(tx->db));
	int rc = sqlite3_step(st);
	snprintf(q[1], 256, "%s", rc == SQLITE_ROW ? (const char *)sqlite3_column_text(st, 0) : "");
	sqlite3_finalize(st);
	return 0;
}

/* The first column of the first row of sql, as text. */
static const char *query(const char *sql)
{
	static char out[256];
	char *q[2] = {(char *)sql, out};
	struct err e;
	assert_int_equal(store_run(E.c.store, count_fn, q, &e), 0);
	return out;
}

static void test_endpoint(void **state)
{
	(void)state;
	size_t len;
	char *push = fixture("push_hook.json", &len);
	const char *ok_headers[] = {"X-Gitlab-Event: Push Hook", "X-Gitlab-Token: " TOKEN,
				    "Idempotency-Key: key-1", "Content-Type: application/json", NULL};

	/* Unknown hook: 404; wrong or missing token: 401, before the body is looked at. */
	struct answer a = post("/hooks/gitlab/hk_nope", ok_headers, push, len);
	assert_int_equal(a.status, 404);
	const char *bad_token[] = {"X-Gitlab-Event: Push Hook", "X-Gitlab-Token: wrong", NULL};
	a = post("/hooks/gitlab/" HOOK_ID, bad_token, push, len);
	assert_int_equal(a.status, 401);
	const char *no_token[] = {"X-Gitlab-Event: Push Hook", NULL};
	a = post("/hooks/gitlab/" HOOK_ID, no_token, push, len);
	assert_int_equal(a.status, 401);
	a = post("/hooks/gitlab/" HOOK_ID, bad_token, "{not json", 9);
	assert_int_equal(a.status, 401);
	/* The other app's token does not open this hook. */
	const char *other_token[] = {"X-Gitlab-Event: Push Hook", "X-Gitlab-Token: other-token",
				     NULL};
	a = post("/hooks/gitlab/" HOOK_ID, other_token, push, len);
	assert_int_equal(a.status, 401);
	assert_string_equal(query("SELECT count(*) FROM deliveries"), "0");

	/* Not JSON, with the right token: 400, nothing recorded. */
	a = post("/hooks/gitlab/" HOOK_ID, ok_headers, "{not json", 9);
	assert_int_equal(a.status, 400);
	assert_non_null(strstr(a.body, "bad_request"));
	a = post("/hooks/gitlab/" HOOK_ID, ok_headers, "\xff\xfe", 2);
	assert_int_equal(a.status, 400);
	assert_string_equal(query("SELECT count(*) FROM deliveries"), "0");

	/* The push of the default branch: 202, recorded as received. */
	a = post("/hooks/gitlab/" HOOK_ID, ok_headers, push, len);
	assert_int_equal(a.status, 202);
	assert_non_null(strstr(a.body, "\"status\":\"received\""));
	assert_string_equal(query("SELECT status FROM deliveries WHERE dedup_key = 'web:idem:key-1'"),
			    "received");
	assert_string_equal(
		query("SELECT json_extract(summary, '$.sha') FROM deliveries WHERE id = 1"),
		"2adc9465c4edfc33834e173fe89436a7cb899a1d");
	/* The same Idempotency-Key again: a duplicate, not a second row. */
	a = post("/hooks/gitlab/" HOOK_ID, ok_headers, push, len);
	assert_int_equal(a.status, 200);
	assert_non_null(strstr(a.body, "\"duplicate\":true"));
	assert_string_equal(query("SELECT count(*) FROM deliveries"), "1");

	/* Deduplication on X-Gitlab-Event-UUID when there is no Idempotency-Key. */
	const char *uuid_headers[] = {"X-Gitlab-Event: Push Hook", "X-Gitlab-Token: " TOKEN,
				      "X-Gitlab-Event-UUID: 7f0c7a3e-uuid", NULL};
	a = post("/hooks/gitlab/" HOOK_ID, uuid_headers, push, len);
	assert_int_equal(a.status, 202);
	a = post("/hooks/gitlab/" HOOK_ID, uuid_headers, push, len);
	assert_non_null(strstr(a.body, "\"duplicate\":true"));
	assert_string_equal(query("SELECT count(*) FROM deliveries"), "2");

	/* Another branch: 200, ignored with the reason. */
	size_t blen;
	char *branch = fixture("push_hook_branch_create.json", &blen);
	const char *h3[] = {"X-Gitlab-Event: Push Hook", "X-Gitlab-Token: " TOKEN,
			    "Idempotency-Key: key-3", NULL};
	a = post("/hooks/gitlab/" HOOK_ID, h3, branch, blen);
	assert_int_equal(a.status, 200);
	assert_non_null(strstr(a.body, "\"status\":\"ignored\""));
	assert_non_null(strstr(a.body, "push of branch feature"));
	assert_string_equal(query("SELECT status || ': ' || note FROM deliveries WHERE "
				  "dedup_key = 'web:idem:key-3'"),
			    "ignored: push of branch feature (the app deploys branch master)");
	free(branch);

	/* Valid JSON that is not a usable push: 200 and ignored, never a 4xx. */
	const char *h4[] = {"X-Gitlab-Event: Push Hook", "X-Gitlab-Token: " TOKEN,
			    "Idempotency-Key: key-4", NULL};
	a = post("/hooks/gitlab/" HOOK_ID, h4, "{\"object_kind\": \"push\"}", 23);
	assert_int_equal(a.status, 200);
	assert_non_null(strstr(a.body, "malformed Push Hook"));
	/* An event the app does not use. */
	const char *h5[] = {"X-Gitlab-Event: Issue Hook", "X-Gitlab-Token: " TOKEN,
			    "Idempotency-Key: key-5", NULL};
	a = post("/hooks/gitlab/" HOOK_ID, h5, "{\"object_kind\": \"issue\"}", 24);
	assert_int_equal(a.status, 200);
	assert_non_null(strstr(a.body, "is not used"));

	/* No key header at all: the body is the key. */
	const char *h6[] = {"X-Gitlab-Event: Push Hook", "X-Gitlab-Token: " TOKEN, NULL};
	a = post("/hooks/gitlab/" HOOK_ID, h6, push, len);
	assert_int_equal(a.status, 202);
	a = post("/hooks/gitlab/" HOOK_ID, h6, push, len);
	assert_non_null(strstr(a.body, "\"duplicate\":true"));

	/* The tags app ignores pushes but records them. */
	const char *h7[] = {"X-Gitlab-Event: Push Hook", "X-Gitlab-Token: other-token",
			    "Idempotency-Key: key-1", NULL};
	a = post("/hooks/gitlab/hk_tags0123456789", h7, push, len);
	assert_int_equal(a.status, 200);
	assert_non_null(strstr(a.body, "the app deploys tags"));
	assert_string_equal(query("SELECT count(*) FROM deliveries"), "7");
	assert_string_equal(query("SELECT count(*) FROM deliveries WHERE status = 'received'"), "3");

	/* A large (1.5 MB) valid delivery is parsed on a worker thread. */
	size_t mid = (size_t)3 << 19;
	char *padded = malloc(mid);
	assert_non_null(padded);
	memset(padded, ' ', mid);
	memcpy(padded, push, len);
	const char *h9[] = {"X-Gitlab-Event: Push Hook", "X-Gitlab-Token: " TOKEN,
			    "Idempotency-Key: key-9", NULL};
	a = post("/hooks/gitlab/" HOOK_ID, h9, padded, mid);
	assert_int_equal(a.status, 202);
	assert_string_equal(query("SELECT json_extract(summary, '$.sha') FROM deliveries WHERE "
				  "dedup_key = 'web:idem:key-9'"),
			    "2adc9465c4edfc33834e173fe89436a7cb899a1d");
	/* The same, not JSON: still 400 from the worker path. */
	memset(padded, '{', 10);
	const char *h10[] = {"X-Gitlab-Event: Push Hook", "X-Gitlab-Token: " TOKEN,
			     "Idempotency-Key: key-10", NULL};
	a = post("/hooks/gitlab/" HOOK_ID, h10, padded, mid);
	assert_int_equal(a.status, 400);
	free(padded);
	assert_string_equal(query("SELECT count(*) FROM deliveries"), "8");

	/* Over webhooks.max_body (2M here): 413 from the router, nothing recorded. */
	size_t huge = (size_t)3 << 20;
	char *big = malloc(huge);
	assert_non_null(big);
	memset(big, ' ', huge);
	memcpy(big, push, len);
	const char *h8[] = {"X-Gitlab-Event: Push Hook", "X-Gitlab-Token: " TOKEN,
			    "Idempotency-Key: key-8", NULL};
	a = post("/hooks/gitlab/" HOOK_ID, h8, big, huge);
	assert_int_equal(a.status, 413);
	assert_string_equal(query("SELECT count(*) FROM deliveries"), "8");
	free(big);
	free(push);
}

int main(void)
{
	log_init("test_webhook", LOG_LEVEL_WARN, 0);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_fixtures),
		cmocka_unit_test(test_parse_broken),
		cmocka_unit_test(test_decide_table),
		cmocka_unit_test(test_dedup_keys),
		cmocka_unit_test(test_summary),
		cmocka_unit_test_setup_teardown(test_endpoint, endpoint_setup, endpoint_teardown),
	};
	return cmocka_run_group_tests_name("webhook", tests, NULL, NULL);
}
