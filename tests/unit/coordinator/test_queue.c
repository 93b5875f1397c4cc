/*
 * queue: leases, extension, acknowledgement, expiry and redelivery, max
 * attempts, idempotent and contradicting acks, the long poll over HTTP.
 * Time is frozen (clock_fake_*): leases expire when the test says so.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "coord_fixture.h"
#include "spec.h" /* agent/spec.h: the agent's own parser */

#define T0 1800000000000LL

struct qargs {
	struct coord *c;
	const char *agent;
	const char *job;
	const char *lease;
	const char *result;
	int64_t extend_s;
	int64_t expires_in_s;
	int max;
	cJSON *jobs;
	enum queue_status status;
	char msg[256];
	char id[32];
	int64_t generation;
	int64_t now;
	struct queue_wake wake;
};

static int insert_tx(struct store_tx *tx, void *arg)
{
	struct qargs *a = arg;
	return queue_job_insert_tx(tx, a->agent, "web", "deploy", a->generation, NULL, NULL, a->id,
				   &a->wake);
}

static int insert_rm_tx(struct store_tx *tx, void *arg)
{
	struct qargs *a = arg;
	return queue_job_insert_tx(tx, a->agent, "web", "remove", a->generation, NULL, NULL, a->id,
				   &a->wake);
}

static int lease_tx(struct store_tx *tx, void *arg)
{
	struct qargs *a = arg;
	return queue_lease_tx(tx, a->c, a->agent, a->max ? a->max : 10, a->jobs);
}

static int ack_tx(struct store_tx *tx, void *arg)
{
	struct qargs *a = arg;
	struct queue_ack ack = {.lease_id = a->lease, .result = a->result, .generation = -1,
				.duration_ms = -1};
	return queue_ack_tx(tx, a->c, a->agent, a->job, &ack, &a->status, a->msg, sizeof a->msg,
			    &a->wake);
}

static int extend_tx(struct store_tx *tx, void *arg)
{
	struct qargs *a = arg;
	return queue_extend_tx(tx, a->c, a->agent, a->job, a->lease, a->extend_s,
			       &a->expires_in_s, &a->status, a->msg, sizeof a->msg);
}

static int expire_tx(struct store_tx *tx, void *arg)
{
	struct qargs *a = arg;
	return queue_expire_tx(tx, a->c, clock_wall_ms(), &a->wake);
}

static int unlease_tx(struct store_tx *tx, void *arg)
{
	struct qargs *a = arg;
	return queue_unlease_tx(tx, a->jobs);
}

static void run(struct fx *f, store_fn fn, struct qargs *a)
{
	struct err err;
	a->c = &f->c;
	assert_int_equal(store_run(f->c.store, fn, a, &err), 0);
}

static char *insert_job(struct fx *f, const char *agent, int64_t gen, char *id)
{
	struct qargs a = {.agent = agent, .generation = gen};
	run(f, insert_tx, &a);
	assert_int_equal(a.wake.n, 1);
	assert_string_equal(a.wake.ids[0], agent);
	queue_wake_free(&a.wake);
	strcpy(id, a.id);
	return id;
}

/* Leases; returns the number of jobs; lease id of the first into lease. */
static int lease(struct fx *f, const char *agent, char *lease_id, int64_t *attempt)
{
	struct qargs a = {.agent = agent, .jobs = cJSON_CreateArray()};
	run(f, lease_tx, &a);
	int n = cJSON_GetArraySize(a.jobs);
	if (n > 0) {
		cJSON *j = cJSON_GetArrayItem(a.jobs, 0);
		if (lease_id)
			strcpy(lease_id, fx_str(j, "lease_id"));
		if (attempt)
			*attempt = (int64_t)fx_num(j, "attempt");
		assert_int_equal((int)fx_num(j, "lease_expires_in_s"), 60);
		assert_string_equal(fx_str(j, "type"), "deploy");
	}
	cJSON_Delete(a.jobs);
	return n;
}

static enum queue_status ack(struct fx *f, const char *agent, const char *job, const char *lease_id,
			     const char *result)
{
	struct qargs a = {.agent = agent, .job = job, .lease = lease_id, .result = result};
	run(f, ack_tx, &a);
	queue_wake_free(&a.wake);
	return a.status;
}

static enum queue_status extend(struct fx *f, const char *job, const char *lease_id, int64_t s,
				int64_t *expires)
{
	struct qargs a = {.agent = "ag_1", .job = job, .lease = lease_id, .extend_s = s};
	run(f, extend_tx, &a);
	if (expires)
		*expires = a.expires_in_s;
	return a.status;
}

static void expire(struct fx *f)
{
	struct qargs a = {0};
	run(f, expire_tx, &a);
	queue_wake_free(&a.wake);
}

static int setup(void **state)
{
	static struct fx f;
	clock_fake_set(T0, 1000);
	fx_init(&f, "queue.max_attempts = 3\n", 0);
	fx_app(&f, "web", "all");
	fx_agent(&f, "ag_1", 1);
	fx_agent(&f, "ag_2", 2);
	*state = &f;
	return 0;
}

static int teardown(void **state)
{
	fx_free(*state);
	clock_fake_off();
	return 0;
}

static void lease_hides_job_until_expiry(void **state)
{
	struct fx *f = *state;
	char job[32], l1[32], l2[32];
	int64_t attempt;
	insert_job(f, "ag_1", 1, job);
	assert_int_equal(lease(f, "ag_2", NULL, NULL), 0); /* not ag_2's */
	assert_int_equal(lease(f, "ag_1", l1, &attempt), 1);
	assert_int_equal(attempt, 1);
	assert_int_equal(lease(f, "ag_1", NULL, NULL), 0); /* invisible while leased */
	clock_fake_advance(59999);
	expire(f);
	assert_int_equal(lease(f, "ag_1", NULL, NULL), 0); /* not yet */
	clock_fake_advance(1);
	expire(f);
	assert_string_equal(fx_text(f, "SELECT state FROM jobs WHERE id = '%s'", job), "queued");
	assert_int_equal(lease(f, "ag_1", l2, &attempt), 1);
	assert_int_equal(attempt, 2);
	assert_string_not_equal(l1, l2);
}

static void extend_keeps_lease(void **state)
{
	struct fx *f = *state;
	char job[32], l1[32];
	int64_t exp;
	insert_job(f, "ag_1", 1, job);
	assert_int_equal(lease(f, "ag_1", l1, NULL), 1);
	clock_fake_advance(50000);
	assert_int_equal(extend(f, job, l1, 120, &exp), QUEUE_OK);
	assert_int_equal(exp, 120);
	clock_fake_advance(100000); /* past the original 60 s, within the extension */
	expire(f);
	assert_string_equal(fx_text(f, "SELECT state FROM jobs WHERE id = '%s'", job), "leased");
	assert_int_equal(extend(f, job, "l_000000000000", 60, NULL), QUEUE_LEASE_LOST);
	clock_fake_advance(20001);
	/* Expired but not yet swept: still lost. */
	assert_int_equal(extend(f, job, l1, 60, NULL), QUEUE_LEASE_LOST);
	expire(f);
	assert_int_equal(extend(f, job, l1, 60, NULL), QUEUE_LEASE_LOST);
	assert_int_equal(extend(f, "j_nope", l1, 60, NULL), QUEUE_NOT_FOUND);
}

static void ack_idempotent_and_conflicts(void **state)
{
	struct fx *f = *state;
	char job[32], l1[32];
	insert_job(f, "ag_1", 1, job);
	assert_int_equal(lease(f, "ag_1", l1, NULL), 1);
	assert_int_equal(ack(f, "ag_2", job, l1, "succeeded"), QUEUE_NOT_FOUND);
	assert_int_equal(ack(f, "ag_1", job, "l_bogus", "succeeded"), QUEUE_CONFLICT);
	assert_int_equal(ack(f, "ag_1", job, l1, "succeeded"), QUEUE_OK);
	assert_string_equal(fx_text(f, "SELECT result FROM jobs WHERE id = '%s'", job), "succeeded");
	assert_int_equal(ack(f, "ag_1", job, l1, "succeeded"), QUEUE_OK);
	assert_int_equal(ack(f, "ag_1", job, l1, "failed"), QUEUE_CONFLICT);
	assert_int_equal(ack(f, "ag_1", job, l1, "superseded"), QUEUE_CONFLICT);
	assert_string_equal(fx_text(f, "SELECT result FROM jobs WHERE id = '%s'", job), "succeeded");
	assert_int_equal(extend(f, job, l1, 60, NULL), QUEUE_CONFLICT);
	/* The ack told what the agent runs. */
	assert_int_equal(fx_int(f, "SELECT applied_generation FROM agent_apps WHERE agent = 'ag_1'"),
			 1);
	assert_string_equal(fx_text(f, "SELECT state FROM agent_apps WHERE agent = 'ag_1'"),
			    "converged");
}

static void late_ack_after_expiry_is_accepted(void **state)
{
	struct fx *f = *state;
	char job[32], l1[32], l2[32];
	insert_job(f, "ag_1", 1, job);
	assert_int_equal(lease(f, "ag_1", l1, NULL), 1);
	clock_fake_advance(61000);
	expire(f);
	assert_int_equal(lease(f, "ag_1", l2, NULL), 1); /* redelivered, attempt 2 */
	/* The first attempt finishes and acks with its (expired) lease: accepted. */
	assert_int_equal(ack(f, "ag_1", job, l1, "succeeded"), QUEUE_OK);
	/* The redelivered copy acks the same: idempotent. */
	assert_int_equal(ack(f, "ag_1", job, l2, "succeeded"), QUEUE_OK);
	assert_int_equal(fx_int(f, "SELECT count(*) FROM jobs WHERE state = 'done'"), 1);
}

static void max_attempts_fail_the_job(void **state)
{
	struct fx *f = *state;
	char job[32], l[32];
	int64_t attempt = 0;
	insert_job(f, "ag_1", 1, job);
	for (int i = 1; i <= 3; i++) {
		assert_int_equal(lease(f, "ag_1", l, &attempt), 1);
		assert_int_equal(attempt, i);
		clock_fake_advance(60000);
		expire(f);
	}
	assert_int_equal(lease(f, "ag_1", NULL, NULL), 0);
	assert_string_equal(fx_text(f, "SELECT result FROM jobs WHERE id = '%s'", job), "expired");
	assert_string_equal(fx_text(f, "SELECT reason FROM jobs WHERE id = '%s'", job),
			    "lease expired 3 times");
	assert_int_equal(ack(f, "ag_1", job, l, "succeeded"), QUEUE_CONFLICT);
	assert_int_equal(fx_int(f, "SELECT count(*) FROM events WHERE kind = 'job.expired'"), 1);
}

static void unlease_restores_job(void **state)
{
	struct fx *f = *state;
	char job[32];
	insert_job(f, "ag_1", 1, job);
	struct qargs a = {.agent = "ag_1", .jobs = cJSON_CreateArray()};
	run(f, lease_tx, &a);
	assert_int_equal(cJSON_GetArraySize(a.jobs), 1);
	run(f, unlease_tx, &a);
	cJSON_Delete(a.jobs);
	assert_string_equal(fx_text(f, "SELECT state FROM jobs WHERE id = '%s'", job), "queued");
	assert_int_equal(fx_int(f, "SELECT attempt FROM jobs WHERE id = '%s'", job), 0);
	assert_string_equal(fx_text(f, "SELECT leases FROM jobs WHERE id = '%s'", job), "");
	int64_t attempt;
	assert_int_equal(lease(f, "ag_1", NULL, &attempt), 1);
	assert_int_equal(attempt, 1);
}

static void newer_generation_cancels_queued(void **state)
{
	struct fx *f = *state;
	char j1[32], j2[32], j3[32], l[32];
	insert_job(f, "ag_1", 1, j1);
	assert_int_equal(lease(f, "ag_1", l, NULL), 1); /* j1 leased: stays */
	insert_job(f, "ag_1", 2, j2);
	insert_job(f, "ag_1", 3, j3); /* cancels the queued j2, not the leased j1 */
	assert_string_equal(fx_text(f, "SELECT result FROM jobs WHERE id = '%s'", j2), "cancelled");
	assert_string_equal(fx_text(f, "SELECT state FROM jobs WHERE id = '%s'", j1), "leased");
	assert_string_equal(fx_text(f, "SELECT state FROM jobs WHERE id = '%s'", j3), "queued");
	assert_int_equal(fx_int(f, "SELECT generation FROM agent_apps WHERE agent = 'ag_1'"), 3);
}

static void max_per_poll(void **state)
{
	struct fx *f = *state;
	char id[32];
	fx_app(f, "api", "all");
	for (int i = 0; i < 12; i++) {
		struct qargs a = {.agent = "ag_2", .generation = 1};
		a.c = &f->c;
		struct err err;
		/* one job per app and generation: vary the generation */
		a.generation = i + 1;
		assert_int_equal(store_run(f->c.store, insert_tx, &a, &err), 0);
		queue_wake_free(&a.wake);
	}
	(void)id;
	/* Only the newest generation survives: older queued ones were cancelled. */
	assert_int_equal(fx_int(f, "SELECT count(*) FROM jobs WHERE agent = 'ag_2' AND "
				   "state = 'queued'"),
			 1);
	struct qargs a = {.agent = "ag_2", .jobs = cJSON_CreateArray(), .max = 50};
	run(f, lease_tx, &a);
	assert_int_equal(cJSON_GetArraySize(a.jobs), 1);
	assert_int_equal((int)fx_num(cJSON_GetArrayItem(a.jobs, 0), "generation"), 12);
	cJSON_Delete(a.jobs);
}

/* The contract: what the coordinator hands out, the agent's strict parser
 * (agent/spec.c) accepts, for a full release spec and for a remove job. */
static void agent_accepts_jobs(void **state)
{
	struct fx *f = *state;
	struct fx_rel r = {.c = &f->c, .app = "web", .image = "reg/web@sha256:"
		"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
		.trigger = "promote"};
	cJSON *env = cJSON_Parse("{\"DB_URL\":\"postgres://x\"}");
	r.env = env;
	struct err err;
	assert_int_equal(store_run(f->c.store, fx_release_tx, &r, &err), 0);
	queue_wake_free(&r.wake);
	cJSON_Delete(env);
	struct qargs a = {.agent = "ag_1", .jobs = cJSON_CreateArray()};
	run(f, lease_tx, &a);
	assert_int_equal(cJSON_GetArraySize(a.jobs), 1);
	struct spec_job job;
	if (spec_job_parse(cJSON_GetArrayItem(a.jobs, 0), &job, &err) < 0)
		fail_msg("the agent refuses the job: %s", err.msg);
	assert_int_equal(job.generation, 1);
	spec_job_clear(&job);
	cJSON_Delete(a.jobs);
	/* a remove job */
	struct qargs ins = {.agent = "ag_2", .generation = 5};
	ins.c = &f->c;
	assert_int_equal(store_run(f->c.store, insert_rm_tx, &ins, &err), 0);
	queue_wake_free(&ins.wake);
	struct qargs b = {.agent = "ag_2", .jobs = cJSON_CreateArray()};
	run(f, lease_tx, &b);
	if (spec_job_parse(cJSON_GetArrayItem(b.jobs, 0), &job, &err) < 0)
		fail_msg("the agent refuses the remove job: %s", err.msg);
	spec_job_clear(&job);
	cJSON_Delete(b.jobs);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(lease_hides_job_until_expiry, setup, teardown),
		cmocka_unit_test_setup_teardown(extend_keeps_lease, setup, teardown),
		cmocka_unit_test_setup_teardown(ack_idempotent_and_conflicts, setup, teardown),
		cmocka_unit_test_setup_teardown(late_ack_after_expiry_is_accepted, setup, teardown),
		cmocka_unit_test_setup_teardown(max_attempts_fail_the_job, setup, teardown),
		cmocka_unit_test_setup_teardown(unlease_restores_job, setup, teardown),
		cmocka_unit_test_setup_teardown(newer_generation_cancels_queued, setup, teardown),
		cmocka_unit_test_setup_teardown(max_per_poll, setup, teardown),
		cmocka_unit_test_setup_teardown(agent_accepts_jobs, setup, teardown),
	};
	return cmocka_run_group_tests_name("queue", tests, NULL, NULL);
}
