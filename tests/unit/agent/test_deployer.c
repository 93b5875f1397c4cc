/*
 * The deployer's policy with a fake swap runner and a fake coordinator, over
 * a real journal in a temporary directory: generations, superseded jobs, at
 * most once, waiting behind a running swap, failures, restarts (replay and
 * recovery), acks that must not be lost, lease extension.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clock.h"
#include "deployer.h"
#include "journal.h"
#include "json.h"
#include "log.h"

#define MAX_SWAPS 32
#define MAX_ACKS 64

struct fake_swap {
	struct fixture *f;
	bool live;
	enum swap_kind kind;
	char job[72];
	char app[48];
	int64_t gen;
	char release[72];
	bool switched;           /* recover requests */
	int proceeds;
	struct swap_hooks hooks;
	char step[16];
};

struct ack {
	char job[72];
	char lease[72];
	char result[16];
	int64_t gen;
	char reason[512];
	char tail[256];
	deployer_reply_fn done;
	void *arg;
	bool answered;
};

struct fixture {
	char dir[64];
	struct ev_loop *loop;
	struct deployer *d;
	struct journal *j;
	struct fake_swap swaps[MAX_SWAPS];
	int nswaps;
	struct ack acks[MAX_ACKS];
	int nacks;
	bool hold_acks;          /* leave acks unanswered */
	int extends;
	char extend_lease[72];
	enum deployer_reply extend_reply;
	int resyncs;
	int swap_ends;
	char swap_end[128];      /* "app outcome duration_ms" of the last one */
};

/* ---- fakes ---- */

static void *fake_start(void *ctx, const struct swap_request *req, const struct swap_hooks *h)
{
	struct fixture *f = ctx;
	assert_true(f->nswaps < MAX_SWAPS);
	struct fake_swap *s = &f->swaps[f->nswaps++];
	memset(s, 0, sizeof *s);
	s->f = f;
	s->live = true;
	s->kind = req->kind;
	snprintf(s->job, sizeof s->job, "%s", req->job_id);
	snprintf(s->app, sizeof s->app, "%s", req->app);
	s->gen = req->generation;
	snprintf(s->release, sizeof s->release, "%s",
		 req->release ? req->release->id : req->release_id ? req->release_id : "");
	s->switched = req->switched;
	s->hooks = *h;
	return s;
}

static void fake_proceed(void *handle)
{
	struct fake_swap *s = handle;
	s->proceeds++;
}

static void fake_cancel(void *handle)
{
	struct fake_swap *s = handle;
	s->live = false;
}

static void fake_resync(void *ctx, const char *app, const cJSON *routes)
{
	(void)app;
	(void)routes;
	struct fixture *f = ctx;
	f->resyncs++;
}

static void fake_ack(void *ctx, const struct deployer_ack *a, deployer_reply_fn done, void *arg)
{
	struct fixture *f = ctx;
	assert_true(f->nacks < MAX_ACKS);
	struct ack *k = &f->acks[f->nacks++];
	memset(k, 0, sizeof *k);
	snprintf(k->job, sizeof k->job, "%s", a->job_id);
	snprintf(k->lease, sizeof k->lease, "%s", a->lease_id);
	snprintf(k->result, sizeof k->result, "%s", a->result);
	snprintf(k->reason, sizeof k->reason, "%s", a->reason);
	snprintf(k->tail, sizeof k->tail, "%s", a->output_tail);
	k->gen = a->generation;
	k->done = done;
	k->arg = arg;
	if (!f->hold_acks) {
		k->answered = true;
		done(DEPLOYER_REPLY_OK, arg);
	}
}

static void fake_extend(void *ctx, const char *job_id, const char *lease_id, int64_t extend_s,
			deployer_reply_fn done, void *arg)
{
	(void)job_id;
	(void)extend_s;
	struct fixture *f = ctx;
	f->extends++;
	snprintf(f->extend_lease, sizeof f->extend_lease, "%s", lease_id);
	done(f->extend_reply, arg);
}

static void on_swap_end(void *arg, const char *app, const char *outcome, int64_t duration_ms)
{
	struct fixture *f = arg;
	f->swap_ends++;
	snprintf(f->swap_end, sizeof f->swap_end, "%s %s %lld", app, outcome,
		 (long long)duration_ms);
}

/* ---- plumbing ---- */

static void open_deployer(struct fixture *f)
{
	struct err err;
	struct deployer_opts o = {
		.loop = f->loop,
		.coord = {.ack = fake_ack, .extend = fake_extend, .ctx = f},
		.runner = {.start = fake_start, .proceed = fake_proceed, .cancel = fake_cancel,
			   .resync = fake_resync, .ctx = f},
		.on_swap_end = on_swap_end,
		.swap_end_arg = f,
		.tick_ms = 5,
	};
	f->d = deployer_new(&o, &err);
	assert_non_null(f->d);
	struct journal_opts jo = {.dir = f->dir, .max_bytes = 1 << 20, .replay = deployer_replay,
				  .snapshot = deployer_snapshot, .arg = f->d};
	f->j = journal_open(f->loop, &jo, &err);
	if (!f->j)
		fail_msg("journal_open: %s", err.msg);
	deployer_set_journal(f->d, f->j);
	deployer_start(f->d);
}

/* A crash: everything in memory goes, the journal stays as written. */
static void restart(struct fixture *f)
{
	deployer_stop(f->d);
	journal_free(f->j);
	deployer_free(f->d);
	for (int i = 0; i < f->nswaps; i++)
		f->swaps[i].live = false;
	open_deployer(f);
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof *f);
	snprintf(f->dir, sizeof f->dir, "/tmp/slipway-deployer-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	f->loop = ev_loop_new(EVFLAG_AUTO);
	f->extend_reply = DEPLOYER_REPLY_OK;
	clock_fake_set(1795600000000, 1000000);
	open_deployer(f);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	deployer_stop(f->d);
	journal_free(f->j);
	deployer_free(f->d);
	char path[128];
	snprintf(path, sizeof path, "%s/%s", f->dir, JOURNAL_FILE);
	unlink(path);
	rmdir(f->dir);
	ev_loop_destroy(f->loop);
	clock_fake_off();
	free(f);
	return 0;
}

/* Turns the loop until the journal has written everything. */
static void settle(struct fixture *f)
{
	for (int i = 0; i < 2000; i++) {
		ev_run(f->loop, EVRUN_NOWAIT);
		if (journal_pending(f->j) == 0) {
			ev_run(f->loop, EVRUN_NOWAIT);
			if (journal_pending(f->j) == 0)
				return;
		}
		usleep(200);
	}
	fail_msg("the journal did not settle");
}

static void offer(struct fixture *f, const char *id, const char *app, int64_t gen,
		  const char *release, const char *lease)
{
	char text[1024];
	snprintf(text, sizeof text,
		 "{\"id\":\"%s\",\"type\":\"deploy\",\"app\":\"%s\",\"generation\":%lld,"
		 "\"lease_id\":\"%s\",\"lease_expires_in_s\":3,\"attempt\":1,\"release\":{"
		 "\"id\":\"%s\",\"app\":\"%s\",\"services\":[{\"name\":\"web\",\"image\":\"web:1\","
		 "\"port\":8080,\"proxy\":{\"listen\":80},\"environment\":{\"SECRET\":\"hunter22\"},"
		 "\"health\":{\"type\":\"http\",\"path\":\"/health\"},\"count\":1}]}}",
		 id, app, (long long)gen, lease, release, app);
	struct err err;
	cJSON *doc = json_parse(text, strlen(text), 1 << 20, &err);
	assert_non_null(doc);
	deployer_offer(f->d, doc);
	cJSON_Delete(doc);
	settle(f);
}

static struct fake_swap *swap_of(struct fixture *f, const char *job)
{
	for (int i = f->nswaps - 1; i >= 0; i--) {
		if (strcmp(f->swaps[i].job, job) == 0)
			return &f->swaps[i];
	}
	return NULL;
}

static int swaps_of(struct fixture *f, const char *job)
{
	int n = 0;
	for (int i = 0; i < f->nswaps; i++)
		n += strcmp(f->swaps[i].job, job) == 0;
	return n;
}

/* The fake swap announces a step (with detail) and waits for proceed. */
static void step(struct fixture *f, struct fake_swap *s, const char *name, cJSON *detail)
{
	int before = s->proceeds;
	snprintf(s->step, sizeof s->step, "%s", name);
	s->hooks.step(s->hooks.arg, (struct swap *)s, name, detail);
	settle(f);
	assert_int_equal(s->proceeds, before + 1);
}

static void finish(struct fixture *f, struct fake_swap *s, enum swap_status st,
		   const char *reason, const char *tail)
{
	cJSON *routes = cJSON_Parse("[{\"service\":\"web\",\"listen\":80,\"port\":8080,"
				    "\"backends\":[\"aaaaaaaaaaaa\"]}]");
	struct swap_outcome o = {.status = st, .reason = reason ? reason : "",
				 .output_tail = tail ? tail : "",
				 .routes = st == SWAP_OK ? routes : NULL};
	s->live = false;
	s->hooks.done(s->hooks.arg, &o);
	cJSON_Delete(routes);
	settle(f);
}

static void run_to_success(struct fixture *f, const char *job)
{
	struct fake_swap *s = swap_of(f, job);
	assert_non_null(s);
	step(f, s, "pull", NULL);
	step(f, s, "switch", cJSON_Parse("{\"routes\":[]}"));
	finish(f, s, SWAP_OK, NULL, NULL);
}

static struct ack *last_ack(struct fixture *f, const char *job)
{
	for (int i = f->nacks - 1; i >= 0; i--) {
		if (strcmp(f->acks[i].job, job) == 0)
			return &f->acks[i];
	}
	return NULL;
}

static int acks_of(struct fixture *f, const char *job)
{
	int n = 0;
	for (int i = 0; i < f->nacks; i++)
		n += strcmp(f->acks[i].job, job) == 0;
	return n;
}

static char *journal_text(struct fixture *f)
{
	char path[128];
	snprintf(path, sizeof path, "%s/%s", f->dir, JOURNAL_FILE);
	FILE *fp = fopen(path, "r");
	assert_non_null(fp);
	static char buf[1 << 16];
	size_t n = fread(buf, 1, sizeof buf - 1, fp);
	buf[n] = '\0';
	fclose(fp);
	return buf;
}

/* ---- tests ---- */

static void test_highest_generation_wins(void **state)
{
	struct fixture *f = *state;
	offer(f, "j1", "web", 5, "r5", "l1");
	assert_int_equal(swaps_of(f, "j1"), 1);
	assert_int_equal(swap_of(f, "j1")->kind, SWAP_DEPLOY);
	assert_int_equal(deployer_seen_generation(f->d, "web"), 5);
	run_to_success(f, "j1");
	assert_string_equal(last_ack(f, "j1")->result, "succeeded");
	assert_int_equal(last_ack(f, "j1")->gen, 5);
	assert_int_equal(deployer_applied_generation(f->d, "web"), 5);
	assert_string_equal(deployer_release(f->d, "web"), "r5");

	offer(f, "j2", "web", 3, "r3", "l2");   /* older */
	offer(f, "j3", "web", 5, "r5b", "l3");  /* equal */
	assert_int_equal(swaps_of(f, "j2") + swaps_of(f, "j3"), 0);
	assert_string_equal(last_ack(f, "j2")->result, "superseded");
	assert_string_equal(last_ack(f, "j3")->result, "superseded");
	assert_string_equal(deployer_release(f->d, "web"), "r5");

	offer(f, "j4", "web", 6, "r3", "l4");   /* a rollback: newer generation, older release */
	assert_int_equal(swaps_of(f, "j4"), 1);
	run_to_success(f, "j4");
	assert_string_equal(deployer_release(f->d, "web"), "r3");
	assert_int_equal(deployer_applied_generation(f->d, "web"), 6);
	/* Apps are independent. */
	offer(f, "j5", "api", 1, "a1", "l5");
	assert_int_equal(swaps_of(f, "j5"), 1);
}

static void test_at_most_once(void **state)
{
	struct fixture *f = *state;
	offer(f, "j1", "web", 1, "r1", "l1");
	/* Delivered again while it runs (a lost lease): not run twice. */
	offer(f, "j1", "web", 1, "r1", "l1b");
	assert_int_equal(swaps_of(f, "j1"), 1);
	run_to_success(f, "j1");
	assert_int_equal(acks_of(f, "j1"), 1);
	/* The ack uses the newest lease. */
	assert_string_equal(last_ack(f, "j1")->lease, "l1b");
	/* Delivered again after it finished: the stored result, again. */
	offer(f, "j1", "web", 1, "r1", "l1c");
	assert_int_equal(swaps_of(f, "j1"), 1);
	assert_int_equal(acks_of(f, "j1"), 2);
	assert_string_equal(last_ack(f, "j1")->result, "succeeded");
	assert_string_equal(last_ack(f, "j1")->lease, "l1c");
	/* And after a restart too. */
	restart(f);
	offer(f, "j1", "web", 1, "r1", "l1d");
	assert_int_equal(swaps_of(f, "j1"), 1);
	assert_string_equal(last_ack(f, "j1")->result, "succeeded");
	assert_string_equal(deployer_job_result(f->d, "j1"), "succeeded");
}

static void test_waiting_behind_running_swap(void **state)
{
	struct fixture *f = *state;
	offer(f, "j1", "web", 1, "r1", "l1");
	struct fake_swap *s1 = swap_of(f, "j1");
	step(f, s1, "pull", NULL);
	offer(f, "j2", "web", 2, "r2", "l2");
	assert_int_equal(swaps_of(f, "j2"), 0);  /* waits */
	assert_true(deployer_busy(f->d, "web"));
	assert_null(last_ack(f, "j2"));
	offer(f, "j3", "web", 3, "r3", "l3");
	/* The newer waiting job supersedes the older one at once. */
	assert_string_equal(last_ack(f, "j2")->result, "superseded");
	assert_int_equal(swaps_of(f, "j3"), 0);
	/* Not newer than the running swap: superseded without waiting. */
	offer(f, "j0", "web", 1, "r0", "l0");
	assert_string_equal(last_ack(f, "j0")->result, "superseded");
	/* Older than the waiting one but newer than the running one: superseded. */
	offer(f, "j2b", "web", 2, "r2", "l2b");
	assert_string_equal(last_ack(f, "j2b")->result, "superseded");
	step(f, s1, "switch", cJSON_Parse("{\"routes\":[]}"));
	finish(f, s1, SWAP_OK, NULL, NULL);
	assert_string_equal(last_ack(f, "j1")->result, "succeeded");
	/* Then the waiting job runs. */
	assert_int_equal(swaps_of(f, "j3"), 1);
	assert_int_equal(swap_of(f, "j3")->gen, 3);
	run_to_success(f, "j3");
	assert_int_equal(deployer_applied_generation(f->d, "web"), 3);
	assert_false(deployer_busy(f->d, "web"));
}

static void test_invalid_job_acked_failed(void **state)
{
	struct fixture *f = *state;
	const char *bad = "{\"id\":\"jb\",\"type\":\"deploy\",\"app\":\"web\",\"generation\":4,"
			  "\"lease_id\":\"lb\",\"lease_expires_in_s\":60,\"attempt\":1,\"release\":{"
			  "\"id\":\"r\",\"app\":\"web\",\"services\":[{\"name\":\"web\","
			  "\"image\":\"Bad Image\",\"health\":{\"type\":\"running\"},\"count\":1}]}}";
	struct err err;
	cJSON *doc = json_parse(bad, strlen(bad), 1 << 20, &err);
	deployer_offer(f->d, doc);
	cJSON_Delete(doc);
	settle(f);
	assert_int_equal(f->nswaps, 0);
	struct ack *a = last_ack(f, "jb");
	assert_non_null(a);
	assert_string_equal(a->result, "failed");
	assert_string_equal(a->lease, "lb");
	assert_int_equal(a->gen, 4);
	assert_non_null(strstr(a->reason, "release.services[0].image: not a valid image reference"));
	/* Nothing changed: the same generation still deploys. */
	assert_int_equal(deployer_seen_generation(f->d, "web"), 0);
	offer(f, "jg", "web", 4, "r4", "lg");
	assert_int_equal(swaps_of(f, "jg"), 1);
	/* An envelope without a lease cannot be acknowledged: dropped. */
	doc = cJSON_Parse("{\"id\":\"jx\",\"type\":\"deploy\"}");
	deployer_offer(f->d, doc);
	cJSON_Delete(doc);
	settle(f);
	assert_null(last_ack(f, "jx"));
}

static void test_failed_swap(void **state)
{
	struct fixture *f = *state;
	offer(f, "j1", "web", 1, "r1", "l1");
	run_to_success(f, "j1");
	offer(f, "j2", "web", 2, "r2", "l2");
	struct fake_swap *s = swap_of(f, "j2");
	step(f, s, "pull", NULL);
	step(f, s, "health", NULL);
	finish(f, s, SWAP_FAILED, "service web: container 3f9a never became healthy",
	       "boom\nexit 1\n");
	struct ack *a = last_ack(f, "j2");
	assert_string_equal(a->result, "failed");
	assert_string_equal(a->reason, "service web: container 3f9a never became healthy");
	assert_string_equal(a->tail, "boom\nexit 1\n");
	/* The old release still serves; the failed generation is not retried. */
	assert_string_equal(deployer_release(f->d, "web"), "r1");
	assert_int_equal(deployer_applied_generation(f->d, "web"), 1);
	offer(f, "j2b", "web", 2, "r2", "l2b");
	assert_string_equal(last_ack(f, "j2b")->result, "superseded");
	/* The heartbeat still reports what serves: generation 1, running. */
	cJSON *apps = deployer_apps_json(f->d);
	const cJSON *web = cJSON_GetArrayItem(apps, 0);
	assert_string_equal(cJSON_GetObjectItem(web, "state")->valuestring, "running");
	assert_int_equal(cJSON_GetObjectItem(web, "generation")->valueint, 1);
	assert_string_equal(cJSON_GetObjectItem(web, "release")->valuestring, "r1");
	cJSON_Delete(apps);
	offer(f, "j3", "web", 3, "r1", "l3");
	assert_int_equal(swaps_of(f, "j3"), 1);
}

static void test_recover_after_switch(void **state)
{
	struct fixture *f = *state;
	offer(f, "j1", "web", 1, "r1", "l1");
	struct fake_swap *s = swap_of(f, "j1");
	step(f, s, "pull", NULL);
	step(f, s, "start", cJSON_Parse("{\"started\":[{\"id\":\"c1\",\"service\":\"web\","
					"\"created\":true}]}"));
	step(f, s, "switch", cJSON_Parse("{\"routes\":[{\"service\":\"web\",\"listen\":80,"
					 "\"backends\":[\"c1\"]}]}"));
	restart(f);
	/* The interrupted swap is completed, since its switch is in the journal. */
	struct fake_swap *r = swap_of(f, "j1");
	assert_true(r->live);
	assert_int_equal(r->kind, SWAP_RECOVER);
	assert_true(r->switched);
	assert_string_equal(r->release, "r1");
	assert_true(deployer_busy(f->d, "web"));
	/* Jobs of the app wait for the recovery. */
	offer(f, "j2", "web", 2, "r2", "l2");
	assert_int_equal(swaps_of(f, "j2"), 0);
	step(f, r, "drain", NULL);
	finish(f, r, SWAP_OK, NULL, NULL);
	assert_string_equal(last_ack(f, "j1")->result, "succeeded");
	assert_string_equal(last_ack(f, "j1")->lease, "l1");
	assert_int_equal(deployer_applied_generation(f->d, "web"), 1);
	assert_int_equal(swaps_of(f, "j2"), 1);
}

static void test_recover_before_switch_is_undone(void **state)
{
	struct fixture *f = *state;
	offer(f, "j1", "web", 1, "r1", "l1");
	run_to_success(f, "j1");
	offer(f, "j2", "web", 2, "r2", "l2");
	struct fake_swap *s = swap_of(f, "j2");
	step(f, s, "pull", NULL);
	step(f, s, "create", NULL);
	restart(f);
	struct fake_swap *r = swap_of(f, "j2");
	assert_int_equal(r->kind, SWAP_RECOVER);
	assert_false(r->switched);
	finish(f, r, SWAP_UNDONE, NULL, NULL);
	assert_null(last_ack(f, "j2"));
	assert_null(deployer_job_result(f->d, "j2"));
	assert_int_equal(deployer_seen_generation(f->d, "web"), 1);
	assert_string_equal(deployer_release(f->d, "web"), "r1");
	/* The redelivered copy runs again, and the reset survives a restart. */
	restart(f);
	assert_int_equal(swaps_of(f, "j2"), 2);
	offer(f, "j2", "web", 2, "r2", "l2-again");
	assert_int_equal(swaps_of(f, "j2"), 3);
	assert_int_equal(swap_of(f, "j2")->kind, SWAP_DEPLOY);
	run_to_success(f, "j2");
	assert_string_equal(last_ack(f, "j2")->result, "succeeded");
	assert_string_equal(last_ack(f, "j2")->lease, "l2-again");
}

static void test_redelivered_during_recovery_runs_at_once(void **state)
{
	struct fixture *f = *state;
	offer(f, "j1", "web", 1, "r1", "l1");
	struct fake_swap *s = swap_of(f, "j1");
	step(f, s, "pull", NULL);
	restart(f);
	struct fake_swap *r = swap_of(f, "j1");
	assert_int_equal(r->kind, SWAP_RECOVER);
	/* The lease ran out while the agent was down: the job comes back now. */
	offer(f, "j1", "web", 1, "r1", "l1b");
	assert_int_equal(swaps_of(f, "j1"), 2);
	finish(f, r, SWAP_UNDONE, NULL, NULL);
	/* Undone, then run again at once with the copy just delivered. */
	assert_int_equal(swaps_of(f, "j1"), 3);
	assert_int_equal(swap_of(f, "j1")->kind, SWAP_DEPLOY);
	assert_string_equal(swap_of(f, "j1")->release, "r1");
	run_to_success(f, "j1");
	assert_string_equal(last_ack(f, "j1")->result, "succeeded");
	assert_string_equal(last_ack(f, "j1")->lease, "l1b");
	/* The journal agrees after another restart. */
	restart(f);
	assert_string_equal(deployer_job_result(f->d, "j1"), "succeeded");
	assert_int_equal(deployer_applied_generation(f->d, "web"), 1);
}

static void test_ack_survives_restart(void **state)
{
	struct fixture *f = *state;
	f->hold_acks = true;
	offer(f, "j1", "web", 1, "r1", "l1");
	run_to_success(f, "j1");
	assert_int_equal(acks_of(f, "j1"), 1);
	assert_int_equal(deployer_unacked(f->d), 1);
	restart(f);
	/* Sent again from the journal. */
	assert_int_equal(acks_of(f, "j1"), 2);
	struct ack *a = last_ack(f, "j1");
	assert_string_equal(a->result, "succeeded");
	a->answered = true;
	a->done(DEPLOYER_REPLY_OK, a->arg);
	settle(f);
	assert_int_equal(deployer_unacked(f->d), 0);
	restart(f);
	assert_int_equal(acks_of(f, "j1"), 2);
	/* A lost lease on the ack: sent again when the job comes back. */
	offer(f, "j2", "web", 2, "r2", "l2");
	run_to_success(f, "j2");
	a = last_ack(f, "j2");
	a->done(DEPLOYER_REPLY_LEASE_LOST, a->arg);
	settle(f);
	assert_int_equal(deployer_unacked(f->d), 1);
	offer(f, "j2", "web", 2, "r2", "l2b");
	assert_string_equal(last_ack(f, "j2")->lease, "l2b");
	assert_int_equal(swaps_of(f, "j2"), 1);
}

static void turn(struct fixture *f, int ms)
{
	for (int i = 0; i < ms; i++) {
		ev_run(f->loop, EVRUN_NOWAIT);
		usleep(1000);
	}
}

static void test_lease_extension(void **state)
{
	struct fixture *f = *state;
	offer(f, "j1", "web", 1, "r1", "l1");
	turn(f, 20);
	assert_int_equal(f->extends, 0);         /* lease 3 s: every 1 s */
	clock_fake_advance(1001);
	turn(f, 20);
	assert_int_equal(f->extends, 1);
	assert_string_equal(f->extend_lease, "l1");
	clock_fake_advance(1001);
	turn(f, 20);
	assert_int_equal(f->extends, 2);
	/* The lease is lost: no more extensions until the job comes back. */
	f->extend_reply = DEPLOYER_REPLY_LEASE_LOST;
	clock_fake_advance(1001);
	turn(f, 20);
	assert_int_equal(f->extends, 3);
	clock_fake_advance(5000);
	turn(f, 20);
	assert_int_equal(f->extends, 3);
	f->extend_reply = DEPLOYER_REPLY_OK;
	offer(f, "j1", "web", 1, "r1", "l1-new");
	clock_fake_advance(1001);
	turn(f, 20);
	assert_int_equal(f->extends, 4);
	assert_string_equal(f->extend_lease, "l1-new");
	/* A waiting job's lease is extended too; a finished one's is not. */
	offer(f, "j2", "web", 2, "r2", "l2");
	run_to_success(f, "j1");
	int before = f->extends;
	clock_fake_advance(1001);
	turn(f, 20);
	assert_int_equal(f->extends, before + 1);
	assert_string_equal(f->extend_lease, "l2");
}

/* Every swap this process ran reports its outcome and duration (the health
 * metrics' per-swap figures); refused, superseded and recovered jobs do not. */
static void test_swap_end_reported(void **state)
{
	struct fixture *f = *state;
	offer(f, "j1", "web", 1, "r1", "l1");
	clock_fake_advance(4200);
	run_to_success(f, "j1");
	assert_int_equal(f->swap_ends, 1);
	assert_string_equal(f->swap_end, "web succeeded 4200");

	offer(f, "j2", "web", 2, "r2", "l2");
	clock_fake_advance(900);
	finish(f, swap_of(f, "j2"), SWAP_FAILED, "never healthy", NULL);
	assert_int_equal(f->swap_ends, 2);
	assert_string_equal(f->swap_end, "web failed 900");

	offer(f, "j3", "web", 1, "r1", "l3");         /* superseded: no swap */
	offer(f, "j4", "api", 5, "r5", "l4");
	restart(f);                                   /* interrupted: recovered, not reported */
	struct fake_swap *s = swap_of(f, "j4");
	assert_int_equal(s->kind, SWAP_RECOVER);
	finish(f, s, SWAP_UNDONE, NULL, NULL);
	assert_int_equal(f->swap_ends, 2);
}

static void test_remove_job(void **state)
{
	struct fixture *f = *state;
	offer(f, "j1", "web", 1, "r1", "l1");
	run_to_success(f, "j1");
	cJSON *doc = cJSON_Parse("{\"id\":\"jr\",\"type\":\"remove\",\"app\":\"web\","
				 "\"generation\":2,\"lease_id\":\"lr\",\"lease_expires_in_s\":60,"
				 "\"attempt\":1,\"release\":null}");
	deployer_offer(f->d, doc);
	cJSON_Delete(doc);
	settle(f);
	struct fake_swap *s = swap_of(f, "jr");
	assert_non_null(s);
	assert_int_equal(s->kind, SWAP_REMOVE);
	finish(f, s, SWAP_OK, NULL, NULL);
	assert_string_equal(last_ack(f, "jr")->result, "succeeded");
	assert_string_equal(deployer_release(f->d, "web"), "");
	/* An older deploy arriving late does not bring the app back. */
	offer(f, "j1b", "web", 1, "r1", "l1b");
	assert_string_equal(last_ack(f, "j1b")->result, "superseded");
	cJSON *apps = deployer_apps_json(f->d);
	assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(apps, 0), "state")->valuestring,
			    "removed");
	cJSON_Delete(apps);
}

static void test_journal_holds_no_environment(void **state)
{
	struct fixture *f = *state;
	offer(f, "j1", "web", 1, "r1", "l1");
	run_to_success(f, "j1");
	const char *text = journal_text(f);
	assert_non_null(strstr(text, "\"t\":\"job\""));
	assert_non_null(strstr(text, "\"t\":\"result\""));
	assert_non_null(strstr(text, "\"t\":\"acked\""));
	assert_null(strstr(text, "hunter22"));
	assert_null(strstr(text, "SECRET"));
}

static void test_snapshot_round_trip(void **state)
{
	struct fixture *f = *state;
	offer(f, "j1", "web", 1, "r1", "l1");
	run_to_success(f, "j1");
	offer(f, "j2", "web", 2, "r2", "l2");
	struct fake_swap *s = swap_of(f, "j2");
	step(f, s, "pull", NULL);
	step(f, s, "switch", cJSON_Parse("{\"routes\":[]}"));
	offer(f, "j0", "api", 7, "a7", "l0");
	run_to_success(f, "j0");
	cJSON *snap = cJSON_CreateArray();
	assert_int_equal(deployer_snapshot(snap, f->d), 0);
	/* A fresh deployer that replays only the snapshot sees the same state. */
	struct err err;
	struct deployer_opts o = {
		.loop = f->loop,
		.coord = {.ack = fake_ack, .extend = fake_extend, .ctx = f},
		.runner = {.start = fake_start, .proceed = fake_proceed, .cancel = fake_cancel,
			   .resync = fake_resync, .ctx = f},
	};
	struct deployer *d2 = deployer_new(&o, &err);
	const cJSON *it;
	cJSON_ArrayForEach(it, snap)
		assert_int_equal(deployer_replay(it, d2, &err), 0);
	cJSON_Delete(snap);
	assert_int_equal(deployer_seen_generation(d2, "web"), 2);
	assert_int_equal(deployer_applied_generation(d2, "web"), 1);
	assert_string_equal(deployer_release(d2, "web"), "r1");
	assert_string_equal(deployer_release(d2, "api"), "a7");
	assert_string_equal(deployer_job_result(d2, "j1"), "succeeded");
	assert_string_equal(deployer_job_result(d2, "j2"), "");  /* interrupted */
	int before = f->nswaps;
	deployer_start(d2);
	assert_int_equal(f->nswaps, before + 1);
	assert_int_equal(f->swaps[before].kind, SWAP_RECOVER);
	assert_true(f->swaps[before].switched);
	deployer_stop(d2);
	deployer_free(d2);
}

int main(void)
{
	log_init("test_deployer", LOG_LEVEL_ERROR, 0);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_highest_generation_wins, setup, teardown),
		cmocka_unit_test_setup_teardown(test_at_most_once, setup, teardown),
		cmocka_unit_test_setup_teardown(test_waiting_behind_running_swap, setup, teardown),
		cmocka_unit_test_setup_teardown(test_invalid_job_acked_failed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_failed_swap, setup, teardown),
		cmocka_unit_test_setup_teardown(test_recover_after_switch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_recover_before_switch_is_undone, setup, teardown),
		cmocka_unit_test_setup_teardown(test_redelivered_during_recovery_runs_at_once, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_ack_survives_restart, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lease_extension, setup, teardown),
		cmocka_unit_test_setup_teardown(test_swap_end_reported, setup, teardown),
		cmocka_unit_test_setup_teardown(test_remove_job, setup, teardown),
		cmocka_unit_test_setup_teardown(test_journal_holds_no_environment, setup, teardown),
		cmocka_unit_test_setup_teardown(test_snapshot_round_trip, setup, teardown),
	};
	return cmocka_run_group_tests_name("deployer", tests, NULL, NULL);
}
