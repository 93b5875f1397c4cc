/*
 * slack: message text and fields, the bounded queue (drop oldest), retries
 * (429 after Retry-After, 5xx with backoff, 4xx given up), and the hooks from
 * the store (a failed build; rollouts read after their commit, including a
 * real rollout started through rollout.c; a queued build cancelled by hand and
 * builds a crash interrupted, through builder.c) against a scripted incoming
 * webhook in this process (common/httpd), and the notifier's place in the
 * coord (c->slack).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "builder.h"
#include "coord_fixture.h"
#include "crypto.h"
#include "httpd.h"
#include "secrets.h"
#include "slack.h"

#define HELD_MAX 8
#define GOT_MAX 32

struct answer {
	int status;
	const char *header;
};

static struct {
	struct fx f;
	struct httpd *srv;
	char url[128];
	struct answer script[8];
	size_t nscript, next;
	int hold;                       /* hold requests instead of answering */
	struct httpd_req *held[HELD_MAX];
	size_t nheld;
	char got[GOT_MAX][8192];        /* bodies answered 2xx, in order */
	size_t ngot;
	size_t attempts;
} S;

static void held_abort(struct httpd_req *req, void *arg)
{
	(void)arg;
	for (size_t i = 0; i < S.nheld; i++)
		if (S.held[i] == req)
			S.held[i] = NULL;
}

static void answer(struct httpd_req *req)
{
	struct answer a = {200, NULL};
	if (S.next < S.nscript)
		a = S.script[S.next++];
	if (a.header) {
		const char *colon = strchr(a.header, ':');
		char name[64];
		snprintf(name, sizeof name, "%.*s", (int)(colon - a.header), a.header);
		httpd_add_header(req, name, colon + 2);
	}
	if (a.status >= 200 && a.status < 300 && S.ngot < GOT_MAX)
		snprintf(S.got[S.ngot++], sizeof S.got[0], "%s", req->body);
	const char *text = a.status == 200 ? "ok" : "error";
	httpd_respond(req, a.status, "text/plain", text, strlen(text));
}

static void handler(struct httpd_req *req, void *arg)
{
	(void)arg;
	S.attempts++;
	if (S.hold && S.nheld < HELD_MAX) {
		S.held[S.nheld++] = req;
		httpd_req_on_abort(req, held_abort, NULL);
		return;
	}
	answer(req);
}

static void release_held(void)
{
	S.hold = 0;
	for (size_t i = 0; i < S.nheld; i++)
		if (S.held[i])
			answer(S.held[i]);
	S.nheld = 0;
}

static int setup(void **state)
{
	(void)state;
	memset(&S, 0, sizeof S);
	fx_init(&S.f, NULL, 0);
	S.f.http = http_client_new(S.f.loop);
	S.f.c.http = S.f.http;
	struct httpd_config cfg = {.listen = "127.0.0.1:0", .handler = handler};
	struct err err;
	S.srv = httpd_new(S.f.loop, &cfg, &err);
	if (!S.srv)
		return -1;
	snprintf(S.url, sizeof S.url, "http://127.0.0.1:%d/services/T0/B0/secretpart",
		 httpd_port(S.srv));
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	httpd_free(S.srv);
	fx_free(&S.f);
	return 0;
}

static void run_until(int (*cond)(void), int64_t ms)
{
	int64_t until = clock_mono_ms() + ms;
	while (!cond() && clock_mono_ms() < until)
		ev_run(S.f.loop, EVRUN_ONCE);
}

static struct slack *the_slack;

static int idle(void)
{
	struct slack_stats st;
	slack_get_stats(the_slack, &st);
	return st.queued == 0 && st.in_flight == 0;
}

static const struct slack_opts fast = {
	.queue_max = 3, .in_flight_max = 1,
	.retry = {.base_ms = 5, .cap_ms = 1000, .max_attempts = 4}, .timeout_ms = 5000};

/* ---- pure ---- */

static void test_format_duration(void **state)
{
	(void)state;
	char b[32];
	slack_format_duration(850, b, sizeof b);
	assert_string_equal(b, "850ms");
	slack_format_duration(4250, b, sizeof b);
	assert_string_equal(b, "4.2s");
	slack_format_duration(42000, b, sizeof b);
	assert_string_equal(b, "42s");
	slack_format_duration(185000, b, sizeof b);
	assert_string_equal(b, "3m 05s");
	slack_format_duration(3720000, b, sizeof b);
	assert_string_equal(b, "1h 02m");
	slack_format_duration(-1, b, sizeof b);
	assert_string_equal(b, "?");
}

static cJSON *parse(char *json)
{
	assert_non_null(json);
	cJSON *m = json_parse(json, strlen(json), 1 << 20, NULL);
	free(json);
	assert_non_null(m);
	return m;
}

/* Every field of a block section, concatenated ("*App*\nweb|*Release*\n...|"). */
static void fields_text(const cJSON *m, char *out, size_t cap)
{
	out[0] = '\0';
	const cJSON *blocks = cJSON_GetObjectItem(m, "blocks");
	assert_int_equal(cJSON_GetArraySize(blocks), 2);
	assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(blocks, 0), "type")->valuestring,
			    "section");
	const cJSON *fields = cJSON_GetObjectItem(cJSON_GetArrayItem(blocks, 1), "fields");
	const cJSON *fld;
	cJSON_ArrayForEach(fld, fields)
	{
		assert_string_equal(cJSON_GetObjectItem(fld, "type")->valuestring, "mrkdwn");
		strncat(out, cJSON_GetObjectItem(fld, "text")->valuestring, cap - strlen(out) - 2);
		strncat(out, "|", cap - strlen(out) - 1);
	}
}

static void test_message_json(void **state)
{
	(void)state;
	char fields[2048];
	struct slack_note live = {.kind = SLACK_RELEASE_LIVE, .app = "web", .release = "r_abc",
				  .release_seq = 4, .sha = "9f86d081884c7d659a2feaa0c55ad015",
				  .author = "alice", .took_ms = 42000, .total_ms = 95000};
	cJSON *m = parse(slack_message_json(&live));
	const char *text = cJSON_GetObjectItem(m, "text")->valuestring;
	assert_non_null(strstr(text, "*web*: release r_abc (#4) is live on every instance"));
	assert_non_null(strstr(text, "commit 9f86d081 by alice"));
	assert_non_null(strstr(text, "took 42s"));
	assert_non_null(strstr(text, "push to live 1m 35s"));
	fields_text(m, fields, sizeof fields);
	assert_non_null(strstr(fields, "*App*\nweb|"));
	assert_non_null(strstr(fields, "*Release*\nr_abc (#4)|"));
	assert_non_null(strstr(fields, "*Commit*\n9f86d081|"));
	assert_non_null(strstr(fields, "*Pushed by*\nalice|"));
	assert_non_null(strstr(fields, "*Rollout took*\n42s|"));
	cJSON_Delete(m);

	struct slack_note bf = {.kind = SLACK_BUILD_FAILED, .app = "web", .build = "b_1",
				.sha = "abc", .author = "<bob> & co", .reason = "Dockerfile:3 <bad>",
				.took_ms = 4200, .total_ms = -1};
	m = parse(slack_message_json(&bf));
	text = cJSON_GetObjectItem(m, "text")->valuestring;
	assert_non_null(strstr(text, ":x: *web*: build b_1 failed: Dockerfile:3 &lt;bad&gt;"));
	assert_non_null(strstr(text, "commit abc by &lt;bob&gt; &amp; co, took 4.2s"));
	fields_text(m, fields, sizeof fields);
	assert_non_null(strstr(fields, "*Build*\nb_1|"));
	assert_non_null(strstr(fields, "*Build took*\n4.2s|"));
	cJSON_Delete(m);

	struct slack_note rb = {.kind = SLACK_ROLLED_BACK, .app = "web", .release = "r_new",
				.back_to = "r_old", .reason = "agent ag_1: unhealthy",
				.took_ms = -1, .total_ms = -1};
	m = parse(slack_message_json(&rb));
	text = cJSON_GetObjectItem(m, "text")->valuestring;
	assert_non_null(strstr(text, "release r_new was rolled back to r_old: agent ag_1: unhealthy"));
	assert_non_null(strstr(text, "commit - by -"));
	fields_text(m, fields, sizeof fields);
	assert_non_null(strstr(fields, "*Serving again*\nr_old|"));
	cJSON_Delete(m);

	struct slack_note rf = {.kind = SLACK_ROLLOUT_FAILED, .app = "web", .release = "r_1",
				.reason = "no health", .took_ms = 1000, .total_ms = -1};
	m = parse(slack_message_json(&rf));
	assert_non_null(strstr(cJSON_GetObjectItem(m, "text")->valuestring,
			       ":warning: *web*: the rollout of release r_1 failed: no health"));
	cJSON_Delete(m);
}

/* ---- the queue ---- */

static void test_queue_drops_oldest(void **state)
{
	(void)state;
	struct slack *s = the_slack = slack_new(&S.f.c, &fast);
	assert_non_null(s);
	S.hold = 1;
	char body[64];
	for (int i = 1; i <= 6; i++) {
		snprintf(body, sizeof body, "{\"text\":\"m%d\"}", i);
		assert_int_equal(slack_post(s, S.url, body), 0);
	}
	struct slack_stats st;
	slack_get_stats(s, &st);
	assert_int_equal(st.in_flight, 1);   /* m1 went at once */
	assert_int_equal(st.queued, 3);      /* m4 m5 m6: the cap */
	assert_int_equal(st.dropped, 2);     /* m2 m3, the oldest waiting */
	assert_int_equal(st.enqueued, 6);
	int64_t until = clock_mono_ms() + 5000;
	while (S.nheld == 0 && clock_mono_ms() < until)
		ev_run(S.f.loop, EVRUN_ONCE);
	release_held();
	run_until(idle, 10000);
	assert_int_equal(S.ngot, 4);
	assert_string_equal(S.got[0], "{\"text\":\"m1\"}");
	assert_string_equal(S.got[1], "{\"text\":\"m4\"}");
	assert_string_equal(S.got[2], "{\"text\":\"m5\"}");
	assert_string_equal(S.got[3], "{\"text\":\"m6\"}");
	slack_get_stats(s, &st);
	assert_int_equal(st.sent, 4);
	assert_int_equal(st.failed, 0);
	slack_free(s);
}

static void test_retries(void **state)
{
	(void)state;
	const struct answer a[] = {{429, "Retry-After: 1"}, {503, NULL}, {200, NULL}, {400, NULL}};
	memcpy(S.script, a, sizeof a);
	S.nscript = 4;
	struct slack *s = the_slack = slack_new(&S.f.c, &fast);
	int64_t t0 = clock_mono_ms();
	assert_int_equal(slack_post(s, S.url, "{\"text\":\"retry me\"}"), 0);
	run_until(idle, 20000);
	int64_t took = clock_mono_ms() - t0;
	struct slack_stats st;
	slack_get_stats(s, &st);
	assert_int_equal(st.sent, 1);
	assert_int_equal(S.attempts, 3);
	assert_true(took >= 900); /* Retry-After, not the 5 ms backoff */
	assert_string_equal(S.got[0], "{\"text\":\"retry me\"}");
	/* 400 (invalid_payload) is not retried: counted as failed. */
	assert_int_equal(slack_post(s, S.url, "{\"text\":\"bad\"}"), 0);
	run_until(idle, 10000);
	slack_get_stats(s, &st);
	assert_int_equal(st.failed, 1);
	assert_int_equal(S.attempts, 4);
	slack_free(s);
}

/* Freeing with requests in flight and queued: nothing leaks, nothing is called. */
static void test_free_while_busy(void **state)
{
	(void)state;
	struct slack *s = slack_new(&S.f.c, &fast);
	S.hold = 1;
	for (int i = 0; i < 3; i++)
		assert_int_equal(slack_post(s, S.url, "{\"text\":\"x\"}"), 0);
	int64_t until = clock_mono_ms() + 5000;
	while (S.nheld == 0 && clock_mono_ms() < until)
		ev_run(S.f.loop, EVRUN_ONCE);
	slack_free(s);
	for (int i = 0; i < 5; i++)
		ev_run(S.f.loop, EVRUN_NOWAIT);
	assert_int_equal(S.ngot, 0);
}

/* ---- the hooks ---- */

static void set_url(const char *app, const char *url)
{
	struct buf sealed;
	buf_init(&sealed, 8192);
	assert_int_equal(secrets_seal(S.f.c.master_key, "apps", app, "slack_url", url, strlen(url),
				      &sealed),
			 0);
	char *hex = malloc(2 * sealed.len + 1);
	crypto_hex((const uint8_t *)sealed.data, sealed.len, hex);
	fx_exec(&S.f, "UPDATE apps SET slack_url = X'%s' WHERE name = '%s'", hex, app);
	free(hex);
	buf_free(&sealed);
}

/* The async wake, then everything the store had. */
static void settle(void)
{
	for (int i = 0; i < 3; i++) {
		ev_run(S.f.loop, EVRUN_NOWAIT);
		fx_drain(&S.f);
	}
	run_until(idle, 10000);
}

/* The same without a notifier to wait for. */
static void settle_quiet(void)
{
	for (int i = 0; i < 3; i++) {
		ev_run(S.f.loop, EVRUN_NOWAIT);
		fx_drain(&S.f);
	}
}

static const char *text_of(size_t i)
{
	static char text[4096];
	cJSON *m = json_parse(S.got[i], strlen(S.got[i]), sizeof S.got[i], NULL);
	assert_non_null(m);
	snprintf(text, sizeof text, "%s", cJSON_GetObjectItem(m, "text")->valuestring);
	cJSON_Delete(m);
	return text;
}

static void test_build_failed_hook(void **state)
{
	(void)state;
	struct slack *s = the_slack = slack_new(&S.f.c, &fast);
	fx_app(&S.f, "web", "all");
	fx_app(&S.f, "quiet", "all"); /* no Slack URL */
	set_url("web", S.url);
	fx_exec(&S.f, "INSERT INTO builds(id, app, status, source, ref, sha, author, error, "
		      "created_ms, started_ms, ended_ms) VALUES ('b_1', 'web', 'failed', 'push', "
		      "'refs/heads/main', '0123456789abcdef', 'alice', 'slipway.yml: line 3: bad', "
		      "1000, 2000, 14000)");
	fx_exec(&S.f, "INSERT INTO builds(id, app, status, source, created_ms) VALUES ('b_2', "
		      "'web', 'complete', 'push', 1)");
	fx_exec(&S.f, "INSERT INTO builds(id, app, status, source, created_ms) VALUES ('b_3', "
		      "'quiet', 'failed', 'push', 1)");
	slack_build_failed(&S.f.c, "b_2"); /* complete: nothing */
	slack_build_failed(&S.f.c, "b_3"); /* no URL: nothing */
	slack_build_failed(&S.f.c, "b_404");
	slack_build_failed(&S.f.c, "b_1");
	slack_build_failed(&S.f.c, "b_1"); /* twice: once */
	settle();
	assert_int_equal(S.ngot, 1);
	const char *t = text_of(0);
	assert_non_null(strstr(t, "*web*: build b_1 failed: slipway.yml: line 3: bad"));
	assert_non_null(strstr(t, "commit 01234567 by alice, took 12s"));
	slack_free(s);
}

static void test_rollout_hook(void **state)
{
	(void)state;
	struct slack *s = the_slack = slack_new(&S.f.c, &fast);
	fx_app(&S.f, "web", "all");
	set_url("web", S.url);
	fx_exec(&S.f, "INSERT INTO builds(id, app, status, source, sha, author, created_ms) VALUES "
		      "('b_9', 'web', 'complete', 'push', 'feedfacecafe', 'carol', 1000)");
	fx_exec(&S.f, "INSERT INTO releases(id, app, seq, build, spec, created_ms) VALUES "
		      "('r_1', 'web', 1, NULL, '{}', 1), ('r_2', 'web', 2, 'b_9', '{}', 2)");
	fx_exec(&S.f, "INSERT INTO rollouts(id, app, release, previous_release, generation, "
		      "strategy, trigger, state, started_ms) VALUES ('ro_a', 'web', 'r_2', 'r_1', 2, "
		      "'all', 'build', 'running', 5000)");
	/* Still running (a transition that rolled back): nothing. */
	slack_rollout_ended(&S.f.c, "ro_a");
	settle();
	assert_int_equal(S.ngot, 0);
	fx_exec(&S.f, "UPDATE rollouts SET state = 'succeeded', ended_ms = 65000 WHERE id = 'ro_a'");
	slack_rollout_ended(&S.f.c, "ro_a");
	settle();
	assert_int_equal(S.ngot, 1);
	const char *t = text_of(0);
	assert_non_null(strstr(t, "release r_2 (#2) is live on every instance"));
	assert_non_null(strstr(t, "commit feedface by carol, took 1m 00s, push to live 1m 04s"));
	/* Rolled back; a revert that succeeded says nothing more. */
	fx_exec(&S.f, "INSERT INTO rollouts(id, app, release, previous_release, generation, "
		      "strategy, trigger, state, reason, started_ms, ended_ms) VALUES "
		      "('ro_b', 'web', 'r_2', 'r_1', 3, 'all', 'promote', 'rolled back', "
		      "'agent ag_1: unhealthy', 1000, 3000), ('ro_c', 'web', 'r_1', 'r_2', 4, 'all', "
		      "'revert', 'succeeded', NULL, 3000, 4000)");
	slack_rollout_ended(&S.f.c, "ro_c");
	slack_rollout_ended(&S.f.c, "ro_b");
	slack_rollout_ended(&S.f.c, "ro_a"); /* told before: not again */
	settle();
	assert_int_equal(S.ngot, 2);
	t = text_of(1);
	assert_non_null(strstr(t, "release r_2 (#2) was rolled back to r_1: agent ag_1: unhealthy"));
	assert_non_null(strstr(t, "took 2.0s"));
	slack_free(s);
}

/* The real path: a promotion through rollout.c with no agent succeeds at once
 * inside the store transaction, and the message follows the commit. */
static void test_rollout_c_calls_the_hook(void **state)
{
	(void)state;
	struct slack *s = the_slack = slack_new(&S.f.c, &fast);
	fx_app(&S.f, "api", "all");
	set_url("api", S.url);
	char rel[80];
	fx_release(&S.f, "api", "registry/api@sha256:00", "promote", rel, sizeof rel);
	settle();
	assert_int_equal(S.ngot, 1);
	char want[200];
	snprintf(want, sizeof want, "*api*: release %s (#1) is live on every instance", rel);
	assert_non_null(strstr(text_of(0), want));
	slack_free(s);
}

/* The notifier lives in the coord (coord.h), not in a process-wide table. */
static void test_coord_field(void **state)
{
	(void)state;
	assert_null(S.f.c.slack);
	struct slack *s = slack_new(&S.f.c, &fast);
	assert_ptr_equal(S.f.c.slack, s);
	slack_free(s);
	assert_null(S.f.c.slack);
	/* Without one the hooks do nothing (and do not crash). */
	slack_build_failed(&S.f.c, "b_1");
	slack_rollout_ended(&S.f.c, "ro_1");
	settle_quiet();
	assert_int_equal(S.ngot, 0);
}

/* Builds that fail outside the builder's finish path are told too: a queued
 * build cancelled by hand, and builds a crash interrupted (start-up). */
static void test_cancelled_and_interrupted_builds(void **state)
{
	(void)state;
	struct slack *s = the_slack = slack_new(&S.f.c, &fast);
	fx_app(&S.f, "web", "all");
	set_url("web", S.url);
	struct err err;
	struct builder *b = S.f.c.builder = builder_new(&S.f.c, &err);
	assert_non_null(b);
	fx_exec(&S.f, "INSERT INTO builds(id, app, status, source, description, created_ms) "
		      "VALUES ('b_queued', 'web', 'created', 'upload', 'upload by ci', 1000)");
	fx_exec(&S.f, "INSERT INTO builds(id, app, status, source, sha, author, created_ms, "
		      "started_ms) VALUES ('b_crashed', 'web', 'running', 'push', 'feedfacecafe', "
		      "'dave', 1000, 2000)");
	assert_int_equal(builder_cancel(b, "b_queued"), 0);
	settle();
	assert_int_equal(S.ngot, 1);
	assert_non_null(strstr(text_of(0), "*web*: build b_queued failed: cancelled"));
	assert_string_equal(fx_text(&S.f, "SELECT status FROM builds WHERE id = 'b_queued'"),
			    "failed");
	/* Cancelling it again: it already ended, nothing more. */
	assert_int_equal(builder_cancel(b, "b_queued"), 0);
	settle();
	assert_int_equal(S.ngot, 1);

	builder_recover(&S.f.c);
	settle();
	assert_string_equal(fx_text(&S.f, "SELECT status FROM builds WHERE id = 'b_crashed'"),
			    "failed");
	assert_int_equal(S.ngot, 2);
	const char *t = text_of(1);
	assert_non_null(strstr(t, "*web*: build b_crashed failed: the coordinator stopped while "
				  "the build was running"));
	assert_non_null(strstr(t, "commit feedface by dave"));
	builder_free(b);
	S.f.c.builder = NULL;
	slack_free(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_format_duration),
		cmocka_unit_test(test_message_json),
		cmocka_unit_test_setup_teardown(test_queue_drops_oldest, setup, teardown),
		cmocka_unit_test_setup_teardown(test_retries, setup, teardown),
		cmocka_unit_test_setup_teardown(test_free_while_busy, setup, teardown),
		cmocka_unit_test_setup_teardown(test_build_failed_hook, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rollout_hook, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rollout_c_calls_the_hook, setup, teardown),
		cmocka_unit_test_setup_teardown(test_coord_field, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cancelled_and_interrupted_builds, setup,
						teardown),
	};
	return cmocka_run_group_tests_name("slack", tests, NULL, NULL);
}
