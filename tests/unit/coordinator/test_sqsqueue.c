/*
 * sqsqueue (coordinator): queue names; then an in-process coordinator
 * (coord_fixture.h) with queue.backend = sqs against tests/fakes/sqs.py run
 * as a child process (SigV4 checked there): registration makes the agent's
 * queue (tags, visibility) and names it in the answer; a promoted release's
 * job arrives in the queue as the job object the poll would carry, leased;
 * a send that fails for good gives the job back (attempt not counted) and
 * the retry sends it; a queue that vanished is forgotten until the agent
 * registers again; removing an agent deletes its queue; the sweep deletes
 * orphans and the queues of agents lost longer than the grace, and keeps
 * the rest; a job over 256 KiB fails with a clear reason.
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

#include "coord_fixture.h"
#include "../../../coordinator/sqsqueue.h"
#include "aws_credentials.h"
#include "fakeproc.h"
#include "log.h"
#include "sqs.h"

#define AKID "AKIDUNITSQSQUEUE"
#define SECRET "unit-secret-for-the-sqsqueue-test"

/* ---- the fake, a child process (one for the whole group) ---- */

static struct fakeproc fake;

static int group_setup(void **state)
{
	(void)state;
	log_init("test", LOG_LEVEL_ERROR, 0);
	setenv("AWS_ACCESS_KEY_ID", AKID, 1);
	setenv("AWS_SECRET_ACCESS_KEY", SECRET, 1);
	unsetenv("AWS_SESSION_TOKEN");
	setenv("AWS_EC2_METADATA_DISABLED", "true", 1);
	setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/slipway-test", 1);
	const char *args[] = {"--access-key", AKID, "--secret-key", SECRET,
			      "--deleted-recently-s", "0", NULL};
	return fakeproc_start(&fake, "sqs.py", args);
}

static int group_teardown(void **state)
{
	(void)state;
	fakeproc_stop(&fake);
	return 0;
}

/* A blocking control request to the fake; the parsed answer (cJSON_Delete it). */
static cJSON *ctl(const char *method, const char *path, const char *body)
{
	return fakeproc_json(&fake, method, path, body);
}

/* The fake's queue named name (a copy; NULL when there is none). */
static cJSON *fake_queue(const char *name)
{
	cJSON *doc = ctl("GET", "/_fake/queues", NULL);
	cJSON *q, *found = NULL;
	cJSON_ArrayForEach(q, cJSON_GetObjectItemCaseSensitive(doc, "queues"))
		if (strcmp(fx_str(q, "name"), name) == 0)
			found = cJSON_Duplicate(q, 1);
	cJSON_Delete(doc);
	return found;
}

static int fake_has(const char *name)
{
	cJSON *q = fake_queue(name);
	cJSON_Delete(q);
	return q != NULL;
}

/* ---- fixture: a coordinator on the SQS backend ---- */

struct t {
	struct fx f;
	struct sqsqueue *s;
	struct aws_credentials_provider *creds;
	struct sqs *sqs;              /* the test's own client, as an operator's tool */
	ev_timer ticker;
};

static void tick(struct ev_loop *l, ev_timer *w, int revents)
{
	(void)l;
	(void)w;
	(void)revents;
}

static int setup(void **state)
{
	struct t *t = calloc(1, sizeof *t);
	char extra[512];
	snprintf(extra, sizeof extra,
		 "queue.backend = sqs\nqueue.sqs_region = us-east-1\n"
		 "queue.sqs_endpoint = http://127.0.0.1:%d\nqueue.sqs_prefix = ut-\n"
		 "queue.sqs_sweep_interval = 0\nqueue.sqs_lost_grace = 1h\nqueue.lease = 30s\n",
		 fake.port);
	fx_init(&t->f, extra, 1);
	t->f.c.http = t->f.http;
	struct err err = {{0}};
	t->s = sqsqueue_new(&t->f.c, &err);
	if (!t->s)
		fail_msg("sqsqueue_new: %s", err.msg);
	t->f.c.sqsqueue = t->s;
	sqsqueue_start(t->s);
	struct aws_credentials_opts co = {.no_file = 1, .no_imds = 1};
	char endpoint[64];
	snprintf(endpoint, sizeof endpoint, "http://127.0.0.1:%d", fake.port);
	struct sqs_opts so = {.region = "us-east-1", .endpoint = endpoint, .retry_base_ms = 5};
	t->creds = aws_credentials_new(t->f.loop, t->f.http, &co, &err);
	t->sqs = t->creds ? sqs_new(t->f.loop, t->f.http, t->creds, &so, &err) : NULL;
	assert_non_null(t->sqs);
	/* The loop wakes up often enough for the waits below to see the clock. */
	ev_timer_init(&t->ticker, tick, 0.01, 0.01);
	ev_timer_start(t->f.loop, &t->ticker);
	*state = t;
	return 0;
}

static int teardown(void **state)
{
	struct t *t = *state;
	ev_timer_stop(t->f.loop, &t->ticker);
	/* main.c's order: the server, the store, then the backend, then HTTP. */
	struct coord *c = &t->f.c;
	server_free(c->server);
	store_close(c->store);
	sqsqueue_free(t->s);
	sqs_free(t->sqs);
	aws_credentials_free(t->creds);
	http_client_free(t->f.http);
	logsink_free(c->logsink);
	queue_free(c->queue);
	agents_free(c->agents);
	auth_free(c->auth);
	ev_loop_destroy(t->f.loop);
	config_free(t->f.cfg);
	char cmd[256];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", t->f.dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", t->f.dir);
	free(t);
	return 0;
}

#define WAIT(t, cond)                                                  \
	do {                                                           \
		int64_t wait_deadline_ = clock_mono_ms() + 20000;      \
		while (!(cond) && clock_mono_ms() < wait_deadline_)    \
			ev_run((t)->f.loop, EVRUN_ONCE);               \
	} while (0)

static struct sqsqueue_stats stats(struct t *t)
{
	struct sqsqueue_stats st;
	sqsqueue_stats(t->s, &st);
	return st;
}

/* Registers instance; the agent id into id (>= 80 bytes); the answer's URL
 * into url (may be NULL). Returns the HTTP status. */
static long reg(struct t *t, const char *instance, char *id, char *url)
{
	char body[256];
	snprintf(body, sizeof body, "{\"instance_id\":\"%s\",\"fleet\":\"default\"}", instance);
	cJSON *b = NULL;
	long st = fx_req(&t->f, "POST", "/v1/agents/register", FX_BOOT, body, &b, NULL);
	if (st == 200) {
		snprintf(id, 80, "%s", fx_str(b, "agent_id"));
		if (url)
			snprintf(url, 512, "%s", fx_str(b, "queue_url"));
		assert_string_equal(fx_str(b, "queue_region"), "us-east-1");
	}
	cJSON_Delete(b);
	return st;
}

/* The only message in queue name, parsed (NULL when there is not exactly one). */
static cJSON *only_message(const char *name)
{
	char path[160];
	snprintf(path, sizeof path, "/_fake/messages?queue=%s", name);
	cJSON *doc = ctl("GET", path, NULL);
	const cJSON *ms = cJSON_GetObjectItemCaseSensitive(doc, "messages");
	cJSON *job = NULL;
	if (cJSON_GetArraySize(ms) == 1)
		job = cJSON_Parse(fx_str(cJSON_GetArrayItem(ms, 0), "body"));
	cJSON_Delete(doc);
	return job;
}

static void promote(struct t *t, const char *image)
{
	char rel[128];
	if (!fx_int(&t->f, "SELECT count(*) FROM apps WHERE name = 'web'"))
		fx_app(&t->f, "web", "all");
	fx_release(&t->f, "web", image, "promote", rel, sizeof rel);
}

static struct got_call {
	int done;
	enum sqs_status status;
} got;

static void on_call(const struct sqs_result *res, void *arg)
{
	(void)arg;
	got.done = 1;
	got.status = res->status;
}

/* ---- tests ---- */

static void test_names(void **state)
{
	(void)state;
	char a[SQS_QUEUE_NAME_MAX + 1], b[SQS_QUEUE_NAME_MAX + 1];
	assert_int_equal(sqsqueue_queue_name("slipway-", "i-0abc123", a, sizeof a), 0);
	assert_string_equal(a, "slipway-i-0abc123");
	/* Characters SQS refuses: dropped, and a hash keeps ids apart. */
	assert_int_equal(sqsqueue_queue_name("p-", "a.b", a, sizeof a), 0);
	assert_int_equal(sqsqueue_queue_name("p-", "a_b", b, sizeof b), 0);
	assert_string_equal(b, "p-a_b");
	assert_true(strncmp(a, "p-ab-", 5) == 0 && strlen(a) == 5 + 16);
	assert_true(sqs_queue_name_valid(a));
	assert_int_equal(sqsqueue_queue_name("p-", "host.example:8", a, sizeof a), 0);
	assert_int_equal(sqsqueue_queue_name("p-", "host.example:9", b, sizeof b), 0);
	assert_string_not_equal(a, b);
	char longid[129];
	memset(longid, 'x', 128);
	longid[128] = '\0';
	assert_int_equal(sqsqueue_queue_name("slipway-", longid, a, sizeof a), 0);
	assert_true(strlen(a) <= SQS_QUEUE_NAME_MAX && sqs_queue_name_valid(a));
	assert_int_equal(sqsqueue_queue_name("bad.prefix", "i-1", a, sizeof a), -1);
	char longprefix[58];
	memset(longprefix, 'p', 57);
	longprefix[57] = '\0';
	assert_int_equal(sqsqueue_queue_name(longprefix, "i-1", a, sizeof a), -1);
	assert_int_equal(sqsqueue_queue_name("p-", "", a, sizeof a), -1);
}

static void test_register_makes_queue(void **state)
{
	struct t *t = *state;
	char id[80], url[512], url2[512], id2[80];
	assert_int_equal(reg(t, "i-0reg", id, url), 200);
	assert_non_null(strstr(url, "/ut-i-0reg"));
	cJSON *q = fake_queue("ut-i-0reg");
	assert_non_null(q);
	const cJSON *tags = cJSON_GetObjectItemCaseSensitive(q, "tags");
	assert_string_equal(fx_str(tags, SQSQUEUE_TAG_INSTANCE), "i-0reg");
	assert_string_equal(fx_str(tags, SQSQUEUE_TAG_FLEET), "default");
	assert_string_equal(fx_str(tags, SQSQUEUE_TAG_AGENT), id);
	assert_string_equal(fx_str(cJSON_GetObjectItemCaseSensitive(q, "attributes"),
				   "VisibilityTimeout"), "30");
	assert_string_equal(fx_str(cJSON_GetObjectItemCaseSensitive(q, "attributes"),
				   "SqsManagedSseEnabled"), "true");
	assert_string_equal(fx_str(q, "url"), url);
	cJSON_Delete(q);
	assert_string_equal(sqsqueue_url(t->s, id), url);
	assert_string_equal(fx_text(&t->f, "SELECT url FROM sqs_queues WHERE agent = '%s'", id),
			    url);
	/* Registering again is the same agent and the same queue. */
	assert_int_equal(reg(t, "i-0reg", id2, url2), 200);
	assert_string_equal(id2, id);
	assert_string_equal(url2, url);
	assert_int_equal(stats(t).queues_created, 2); /* CreateQueue is idempotent */
}

static void test_job_sent(void **state)
{
	struct t *t = *state;
	char id[80];
	assert_int_equal(reg(t, "i-0job", id, NULL), 200);
	promote(t, "registry.local/web:1");
	sqsqueue_wake(t->s, id);
	WAIT(t, stats(t).messages_sent == 1 && sqsqueue_idle(t->s));
	assert_int_equal(stats(t).messages_sent, 1);
	cJSON *job = only_message("ut-i-0job");
	assert_non_null(job);
	assert_string_equal(fx_str(job, "id"),
			    fx_text(&t->f, "SELECT id FROM jobs WHERE agent = '%s'", id));
	assert_string_equal(fx_str(job, "lease_id"),
			    fx_text(&t->f, "SELECT lease_id FROM jobs WHERE agent = '%s'", id));
	assert_string_equal(fx_str(job, "type"), "deploy");
	assert_int_equal((int)fx_num(job, "attempt"), 1);
	assert_int_equal((int)fx_num(job, "lease_expires_in_s"), 30);
	assert_string_equal(fx_str(cJSON_GetObjectItemCaseSensitive(job, "release"), "app"), "web");
	cJSON_Delete(job);
	assert_string_equal(fx_text(&t->f, "SELECT state FROM jobs WHERE agent = '%s'", id),
			    "leased");
	/* Nothing more to send: another wake sends nothing. */
	sqsqueue_wake(t->s, id);
	WAIT(t, sqsqueue_idle(t->s));
	assert_int_equal(stats(t).messages_sent, 1);
}

static void test_send_failure_gives_back(void **state)
{
	struct t *t = *state;
	char id[80];
	assert_int_equal(reg(t, "i-0fail", id, NULL), 200);
	cJSON_Delete(ctl("POST", "/_fake/fault",
			 "{\"kind\":\"error500\",\"count\":100,\"target\":\"SendMessageBatch\"}"));
	promote(t, "registry.local/web:2");
	sqsqueue_wake(t->s, id);
	WAIT(t, stats(t).given_back >= 1);
	assert_true(stats(t).given_back >= 1);
	WAIT(t, sqsqueue_idle(t->s));
	assert_string_equal(fx_text(&t->f, "SELECT state || '/' || attempt FROM jobs WHERE "
				    "agent = '%s'", id), "queued/0");
	assert_int_equal(stats(t).messages_sent, 0);
	/* The service is back: the retry (after a backoff) sends it. */
	cJSON_Delete(ctl("POST", "/_fake/clear", "{}"));
	WAIT(t, stats(t).messages_sent == 1 && sqsqueue_idle(t->s));
	assert_int_equal(stats(t).messages_sent, 1);
	assert_string_equal(fx_text(&t->f, "SELECT state || '/' || attempt FROM jobs WHERE "
				    "agent = '%s'", id), "leased/1");
	cJSON *job = only_message("ut-i-0fail");
	assert_non_null(job);
	cJSON_Delete(job);
}

static void test_queue_gone(void **state)
{
	struct t *t = *state;
	char id[80], url[512], url2[512];
	assert_int_equal(reg(t, "i-0gone", id, url), 200);
	got.done = 0;
	assert_true(sqs_delete_queue(t->sqs, url, on_call, NULL) > 0);
	WAIT(t, got.done);
	assert_int_equal(got.status, SQS_OK);
	promote(t, "registry.local/web:3");
	sqsqueue_wake(t->s, id);
	WAIT(t, sqsqueue_url(t->s, id) == NULL && sqsqueue_idle(t->s));
	assert_null(sqsqueue_url(t->s, id));
	assert_string_equal(fx_text(&t->f, "SELECT state FROM jobs WHERE agent = '%s'", id),
			    "queued");
	assert_int_equal(fx_int(&t->f, "SELECT count(*) FROM sqs_queues WHERE agent = '%s'", id), 0);
	/* The agent registers again (its receive said the queue is gone). */
	assert_int_equal(reg(t, "i-0gone", id, url2), 200);
	assert_string_equal(url2, url);
	WAIT(t, stats(t).messages_sent == 1 && sqsqueue_idle(t->s));
	assert_int_equal(stats(t).messages_sent, 1);
	cJSON *job = only_message("ut-i-0gone");
	assert_non_null(job);
	cJSON_Delete(job);
}

static void test_agent_removed(void **state)
{
	struct t *t = *state;
	char id[80], path[128];
	assert_int_equal(reg(t, "i-0left", id, NULL), 200);
	assert_true(fake_has("ut-i-0left"));
	snprintf(path, sizeof path, "/v1/agents/%s", id);
	assert_int_equal(fx_req(&t->f, "DELETE", path, t->f.admin_key, NULL, NULL, NULL), 200);
	WAIT(t, stats(t).queues_deleted == 1 && sqsqueue_idle(t->s));
	assert_int_equal(stats(t).queues_deleted, 1);
	assert_false(fake_has("ut-i-0left"));
	assert_null(sqsqueue_url(t->s, id));
	assert_int_equal(fx_int(&t->f, "SELECT count(*) FROM sqs_queues WHERE agent = '%s'", id), 0);
}

/* More jobs than one lease takes: every one goes, in batches of at most 10. */
static void test_many_jobs(void **state)
{
	struct t *t = *state;
	char id[80], app[16], rel[128];
	assert_int_equal(reg(t, "i-0many", id, NULL), 200);
	for (int i = 0; i < 12; i++) {
		snprintf(app, sizeof app, "app%d", i);
		fx_app(&t->f, app, "all");
		fx_release(&t->f, app, "registry.local/web:1", "promote", rel, sizeof rel);
	}
	sqsqueue_wake(t->s, id);
	WAIT(t, stats(t).messages_sent == 12 && sqsqueue_idle(t->s));
	assert_int_equal(stats(t).messages_sent, 12);
	assert_true(stats(t).batches >= 2);
	assert_int_equal(fx_int(&t->f, "SELECT count(*) FROM jobs WHERE agent = '%s' AND "
				"state = 'leased'", id), 12);
	cJSON *doc = ctl("GET", "/_fake/messages?queue=ut-i-0many", NULL);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(doc, "messages")), 12);
	cJSON_Delete(doc);
}

static void make_queue(struct t *t, const char *name)
{
	got.done = 0;
	assert_true(sqs_create_queue(t->sqs, name, NULL, 0, NULL, 0, on_call, NULL) > 0);
	WAIT(t, got.done);
	assert_int_equal(got.status, SQS_OK);
}

static void test_sweep(void **state)
{
	struct t *t = *state;
	char live[80], lost[80], recent[80], drained[80];
	assert_int_equal(reg(t, "i-0live", live, NULL), 200);
	assert_int_equal(reg(t, "i-0lost", lost, NULL), 200);
	assert_int_equal(reg(t, "i-0recent", recent, NULL), 200);
	assert_int_equal(reg(t, "i-0drained", drained, NULL), 200);
	make_queue(t, "ut-orphan-1");
	make_queue(t, "other-keep");
	/* Lost for longer than the grace, and lost only just. */
	struct agent *ag = agents_find(t->f.c.agents, lost);
	ag->state = AGENT_LOST;
	ag->last_seen_ms = clock_wall_ms() - 2 * 3600 * 1000;
	ag = agents_find(t->f.c.agents, recent);
	ag->state = AGENT_LOST;
	ag->last_seen_ms = clock_wall_ms() - 60 * 1000;
	/* Lost only just too, but it was draining (scale-in): it left. */
	ag = agents_find(t->f.c.agents, drained);
	ag->state = AGENT_LOST;
	ag->lost_draining = true;
	ag->last_seen_ms = clock_wall_ms() - 60 * 1000;
	uint64_t before = stats(t).queues_deleted;
	sqsqueue_sweep_now(t->s);
	WAIT(t, stats(t).sweeps == 1 && sqsqueue_idle(t->s));
	assert_int_equal(stats(t).sweeps, 1);
	assert_true(fake_has("ut-i-0live"));
	assert_true(fake_has("ut-i-0recent"));
	assert_false(fake_has("ut-i-0lost"));
	assert_false(fake_has("ut-i-0drained"));
	assert_false(fake_has("ut-orphan-1"));
	assert_true(fake_has("other-keep")); /* not under the prefix */
	assert_true(stats(t).queues_deleted >= before + 3);
	assert_null(sqsqueue_url(t->s, lost));
	assert_non_null(sqsqueue_url(t->s, live));
	assert_int_equal(fx_int(&t->f, "SELECT count(*) FROM sqs_queues WHERE agent = '%s'", lost),
			 0);
}

static void test_too_large(void **state)
{
	struct t *t = *state;
	char id[80];
	assert_int_equal(reg(t, "i-0big", id, NULL), 200);
	fx_app(&t->f, "web", "all");
	/* An environment just under the spec's limit makes a job over SQS's. */
	char *big = malloc(250001);
	memset(big, 'x', 250000);
	big[250000] = '\0';
	cJSON *env = cJSON_CreateObject();
	cJSON_AddStringToObject(env, "BIG", big);
	cJSON_AddStringToObject(env, "BIG2", big + 237910); /* 262,099 bytes in all */
	free(big);
	struct fx_rel r = {.c = &t->f.c, .app = "web", .image = "registry.local/web:9",
			   .trigger = "promote", .env = env};
	struct err err;
	int rc = store_run(t->f.c.store, fx_release_tx, &r, &err);
	queue_wake_free(&r.wake);
	cJSON_Delete(env);
	if (rc < 0)
		fail_msg("release: %s", err.msg);
	sqsqueue_wake(t->s, id);
	WAIT(t, stats(t).too_large == 1 && sqsqueue_idle(t->s));
	assert_int_equal(stats(t).too_large, 1);
	assert_int_equal(stats(t).messages_sent, 0);
	assert_string_equal(fx_text(&t->f, "SELECT result FROM jobs WHERE agent = '%s'", id),
			    "failed");
	assert_non_null(strstr(fx_text(&t->f, "SELECT reason FROM jobs WHERE agent = '%s'", id),
			       "256 KiB"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_names),
		cmocka_unit_test_setup_teardown(test_register_makes_queue, setup, teardown),
		cmocka_unit_test_setup_teardown(test_job_sent, setup, teardown),
		cmocka_unit_test_setup_teardown(test_many_jobs, setup, teardown),
		cmocka_unit_test_setup_teardown(test_send_failure_gives_back, setup, teardown),
		cmocka_unit_test_setup_teardown(test_queue_gone, setup, teardown),
		cmocka_unit_test_setup_teardown(test_agent_removed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_sweep, setup, teardown),
		cmocka_unit_test_setup_teardown(test_too_large, setup, teardown),
	};
	return cmocka_run_group_tests_name("sqsqueue", tests, group_setup, group_teardown);
}
