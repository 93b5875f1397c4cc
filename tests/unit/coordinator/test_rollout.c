/*
 * rollout: strategies (all at once, one at a time, canary), failure that stops
 * the rollout and reverts the instances that took the release, lost agents
 * leaving, supersession, new and returning agents.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "coord_fixture.h"

struct args {
	struct coord *c;
	const char *app;
	const char *release;
	const char *trigger;
	const char *agent;
	int registered;
	char rollout[32];
	int64_t generation;
	cJSON *jobs;
	const char *job;
	const char *lease;
	const char *result;
	enum queue_status status;
	char msg[256];
	struct queue_wake wake;
};

static int start_tx(struct store_tx *tx, void *arg)
{
	struct args *a = arg;
	return rollout_start_tx(tx, a->c, a->app, a->release, a->trigger, a->rollout,
				&a->generation, &a->wake);
}

static int lease_tx(struct store_tx *tx, void *arg)
{
	struct args *a = arg;
	return queue_lease_tx(tx, a->c, a->agent, 10, a->jobs);
}

static int ack_tx(struct store_tx *tx, void *arg)
{
	struct args *a = arg;
	struct queue_ack ack = {.lease_id = a->lease, .result = a->result, .generation = -1,
				.duration_ms = -1, .reason = "health check failed"};
	return queue_ack_tx(tx, a->c, a->agent, a->job, &ack, &a->status, a->msg, sizeof a->msg,
			    &a->wake);
}

static int left_tx(struct store_tx *tx, void *arg)
{
	struct args *a = arg;
	return rollout_agent_left_tx(tx, a->c, a->agent, &a->wake);
}

static int joined_tx(struct store_tx *tx, void *arg)
{
	struct args *a = arg;
	return rollout_agent_joined_tx(tx, a->c, a->agent, a->registered, &a->wake);
}

static void run(struct fx *f, store_fn fn, struct args *a)
{
	struct err err = {{0}};
	a->c = &f->c;
	int rc = store_run(f->c.store, fn, a, &err);
	if (rc != 0)
		fail_msg("store: %s", err.msg);
	queue_wake_free(&a->wake);
}

static void promote(struct fx *f, const char *release, const char *trigger, char *rollout)
{
	struct args a = {.app = "web", .release = release, .trigger = trigger};
	run(f, start_tx, &a);
	if (rollout)
		strcpy(rollout, a.rollout);
}

/* Leases the agent's jobs; the newest one's id and lease go to job/lease. */
static int take(struct fx *f, const char *agent, char *job, char *lease)
{
	struct args a = {.agent = agent, .jobs = cJSON_CreateArray()};
	run(f, lease_tx, &a);
	int n = cJSON_GetArraySize(a.jobs);
	if (n > 0) {
		cJSON *j = cJSON_GetArrayItem(a.jobs, n - 1);
		strcpy(job, fx_str(j, "id"));
		strcpy(lease, fx_str(j, "lease_id"));
	}
	cJSON_Delete(a.jobs);
	return n;
}

static void finish(struct fx *f, const char *agent, const char *job, const char *lease,
		   const char *result)
{
	struct args a = {.agent = agent, .job = job, .lease = lease, .result = result};
	run(f, ack_tx, &a);
	assert_int_equal(a.status, QUEUE_OK);
}

/* Takes and acks the agent's newest job. */
static void deploy(struct fx *f, const char *agent, const char *result)
{
	char job[32], lease[32];
	assert_int_equal(take(f, agent, job, lease), 1);
	finish(f, agent, job, lease, result);
}

static const char *rstate(struct fx *f, const char *rollout)
{
	return fx_text(f, "SELECT state FROM rollouts WHERE id = '%s'", rollout);
}

static const char *relstatus(struct fx *f, const char *release)
{
	return fx_text(f, "SELECT status FROM releases WHERE id = '%s'", release);
}

static int64_t jobs_of(struct fx *f, const char *rollout)
{
	return fx_int(f, "SELECT count(*) FROM jobs WHERE rollout = '%s'", rollout);
}

static int setup_with(void **state, const char *strategy)
{
	static struct fx f;
	clock_fake_set(1800000000000LL, 1000);
	fx_init(&f, NULL, 0);
	fx_app(&f, "web", strategy);
	fx_agent(&f, "ag_a", 1);
	fx_agent(&f, "ag_b", 2);
	fx_agent(&f, "ag_c", 3);
	*state = &f;
	return 0;
}

static int setup_all(void **state)
{
	return setup_with(state, "all");
}
static int setup_one(void **state)
{
	return setup_with(state, "one-at-a-time");
}
static int setup_canary(void **state)
{
	return setup_with(state, "canary");
}

static int teardown(void **state)
{
	fx_free(*state);
	clock_fake_off();
	return 0;
}

/* r1 live everywhere: the starting point of most tests. */
static void first_release(struct fx *f, char *r1)
{
	char ro[32];
	fx_release(f, "web", "reg/web:v1", NULL, r1, 72);
	assert_string_equal(relstatus(f, r1), "pending");
	promote(f, r1, "promote", ro);
	const char *agents[] = {"ag_a", "ag_b", "ag_c"};
	for (int i = 0; i < 3; i++) {
		char job[32], lease[32];
		/* one-at-a-time and canary hand out one job at a time */
		if (take(f, agents[i], job, lease) == 0) {
			i = -1; /* none yet: someone else first */
			continue;
		}
		finish(f, agents[i], job, lease, "succeeded");
	}
	assert_string_equal(rstate(f, ro), "succeeded");
	assert_string_equal(relstatus(f, r1), "active");
}

static void all_at_once(void **state)
{
	struct fx *f = *state;
	char r1[72], r2[72], ro[32];
	first_release(f, r1);
	fx_release(f, "web", "reg/web:v2", NULL, r2, sizeof r2);
	promote(f, r2, "promote", ro);
	assert_int_equal(fx_int(f, "SELECT generation FROM apps WHERE name = 'web'"), 2);
	assert_int_equal(jobs_of(f, ro), 3);
	deploy(f, "ag_a", "succeeded");
	deploy(f, "ag_b", "succeeded");
	assert_string_equal(rstate(f, ro), "running");
	deploy(f, "ag_c", "succeeded");
	assert_string_equal(rstate(f, ro), "succeeded");
	assert_string_equal(relstatus(f, r2), "active");
	assert_string_equal(relstatus(f, r1), "superseded");
	assert_int_equal(fx_int(f, "SELECT count(*) FROM events WHERE kind = 'rollout.succeeded'"),
			 2);
}

/* A store restored from a backup is behind the fleet: the next generation
 * must be above what the agents report they applied, or they would take it
 * for an old one and supersede it. */
static void generation_above_the_fleet(void **state)
{
	struct fx *f = *state;
	char r1[72], r2[72], ro[32];
	first_release(f, r1);
	fx_exec(f, "UPDATE agent_apps SET applied_generation = 7 WHERE agent = 'ag_b' AND "
		   "app = 'web'");
	assert_int_equal(fx_int(f, "SELECT count(*) FROM agent_apps WHERE agent = 'ag_b' AND "
				   "applied_generation = 7"),
			 1);
	fx_release(f, "web", "reg/web:v2", NULL, r2, sizeof r2);
	promote(f, r2, "promote", ro);
	assert_int_equal(fx_int(f, "SELECT generation FROM apps WHERE name = 'web'"), 8);
	assert_int_equal(fx_int(f, "SELECT generation FROM rollouts WHERE id = '%s'", ro), 8);
}

static void one_at_a_time(void **state)
{
	struct fx *f = *state;
	char r1[72], r2[72], ro[32], job[32], lease[32];
	first_release(f, r1);
	fx_release(f, "web", "reg/web:v2", NULL, r2, sizeof r2);
	promote(f, r2, "promote", ro);
	assert_int_equal(jobs_of(f, ro), 1);
	/* the oldest agent first */
	assert_int_equal(take(f, "ag_b", job, lease), 0);
	deploy(f, "ag_a", "succeeded");
	assert_int_equal(jobs_of(f, ro), 2);
	assert_int_equal(take(f, "ag_c", job, lease), 0);
	deploy(f, "ag_b", "succeeded");
	assert_int_equal(jobs_of(f, ro), 3);
	assert_string_equal(rstate(f, ro), "running");
	deploy(f, "ag_c", "succeeded");
	assert_string_equal(rstate(f, ro), "succeeded");
	assert_string_equal(relstatus(f, r2), "active");
}

static void canary(void **state)
{
	struct fx *f = *state;
	char r1[72], r2[72], ro[32];
	first_release(f, r1);
	fx_release(f, "web", "reg/web:v2", NULL, r2, sizeof r2);
	promote(f, r2, "promote", ro);
	assert_int_equal(jobs_of(f, ro), 1);
	deploy(f, "ag_a", "succeeded");
	assert_int_equal(jobs_of(f, ro), 3); /* the rest at once */
	deploy(f, "ag_b", "succeeded");
	deploy(f, "ag_c", "succeeded");
	assert_string_equal(rstate(f, ro), "succeeded");
}

static void failure_reverts_who_took_it(void **state)
{
	struct fx *f = *state;
	char r1[72], r2[72], ro[32], jc[32], lc[32];
	first_release(f, r1);
	fx_release(f, "web", "reg/web:v2", NULL, r2, sizeof r2);
	promote(f, r2, "promote", ro);
	deploy(f, "ag_a", "succeeded");     /* took it */
	assert_int_equal(take(f, "ag_c", jc, lc), 1); /* swapping now */
	deploy(f, "ag_b", "failed");        /* never healthy */
	assert_string_equal(rstate(f, ro), "rolled back");
	assert_string_equal(relstatus(f, r2), "failed");
	assert_string_equal(relstatus(f, r1), "active");
	assert_string_equal(fx_text(f, "SELECT release FROM apps WHERE name = 'web'"), r1);
	assert_int_equal(fx_int(f, "SELECT generation FROM apps WHERE name = 'web'"), 3);
	const char *rev = fx_text(f, "SELECT id FROM rollouts WHERE trigger = 'revert'");
	char revert[32];
	strcpy(revert, rev);
	assert_string_equal(fx_text(f, "SELECT release FROM rollouts WHERE id = '%s'", revert), r1);
	/* ag_a and ag_c get generation 3 naming r1; ag_b (kept r1) does not. */
	assert_int_equal(jobs_of(f, revert), 2);
	assert_int_equal(fx_int(f, "SELECT count(*) FROM jobs WHERE rollout = '%s' AND agent IN "
				   "('ag_a', 'ag_c') AND generation = 3",
				revert),
			 2);
	assert_true(strstr(fx_text(f, "SELECT reason FROM rollouts WHERE id = '%s'", ro),
			   "health check failed") != NULL);
	/* ag_c's old swap finishes late: counted, changes nothing. */
	finish(f, "ag_c", jc, lc, "succeeded");
	deploy(f, "ag_a", "succeeded");
	deploy(f, "ag_c", "succeeded");
	assert_string_equal(rstate(f, revert), "succeeded");
	assert_string_equal(relstatus(f, r1), "active");
	assert_int_equal(fx_int(f, "SELECT count(*) FROM events WHERE kind = 'rollout.rolled_back'"),
			 1);
}

static void one_at_a_time_failure_stops(void **state)
{
	struct fx *f = *state;
	char r1[72], r2[72], ro[32], job[32], lease[32];
	first_release(f, r1);
	fx_release(f, "web", "reg/web:v2", NULL, r2, sizeof r2);
	promote(f, r2, "promote", ro);
	deploy(f, "ag_a", "succeeded");
	deploy(f, "ag_b", "failed");
	assert_string_equal(rstate(f, ro), "rolled back");
	assert_int_equal(jobs_of(f, ro), 2); /* ag_c never got r2 */
	assert_int_equal(take(f, "ag_b", job, lease), 0);
	assert_int_equal(take(f, "ag_c", job, lease), 0);
	deploy(f, "ag_a", "succeeded"); /* the revert */
	assert_string_equal(fx_text(f, "SELECT state FROM rollouts WHERE trigger = 'revert'"),
			    "succeeded");
}

static void first_release_failure_has_nothing_to_revert(void **state)
{
	struct fx *f = *state;
	char r1[72], ro[32];
	fx_release(f, "web", "reg/web:v1", NULL, r1, sizeof r1);
	promote(f, r1, "promote", ro);
	deploy(f, "ag_a", "failed");
	assert_string_equal(rstate(f, ro), "failed");
	assert_string_equal(relstatus(f, r1), "failed");
	assert_int_equal(fx_int(f, "SELECT count(*) FROM rollouts WHERE trigger = 'revert'"), 0);
	assert_int_equal(fx_int(f, "SELECT count(*) FROM jobs WHERE state = 'queued'"), 0);
}

static void lost_agent_leaves(void **state)
{
	struct fx *f = *state;
	char r1[72], r2[72], ro[32];
	first_release(f, r1);
	fx_release(f, "web", "reg/web:v2", NULL, r2, sizeof r2);
	promote(f, r2, "promote", ro);
	deploy(f, "ag_a", "succeeded");
	deploy(f, "ag_b", "succeeded");
	assert_string_equal(rstate(f, ro), "running");
	fx_exec(f, "UPDATE agents SET state = 'lost' WHERE id = 'ag_c'");
	struct args a = {.agent = "ag_c"};
	run(f, left_tx, &a);
	assert_string_equal(rstate(f, ro), "succeeded");
	/* Back again: it gets the generation it does not run. */
	fx_exec(f, "UPDATE agents SET state = 'live' WHERE id = 'ag_c'");
	struct args j = {.agent = "ag_c", .registered = 0};
	run(f, joined_tx, &j);
	/* its undelivered job of generation 2 is still queued: no second one */
	assert_int_equal(fx_int(f, "SELECT count(*) FROM jobs WHERE agent = 'ag_c' AND "
				   "state != 'done'"),
			 1);
	deploy(f, "ag_c", "succeeded");
	assert_int_equal(fx_int(f, "SELECT applied_generation FROM agent_apps WHERE agent = 'ag_c'"),
			 2);
	run(f, joined_tx, &j); /* runs it now: nothing more */
	assert_int_equal(fx_int(f, "SELECT count(*) FROM jobs WHERE agent = 'ag_c' AND "
				   "state != 'done'"),
			 0);
}

static void newer_promotion_supersedes(void **state)
{
	struct fx *f = *state;
	char r1[72], r2[72], r3[72], ro2[32], ro3[32];
	first_release(f, r1);
	fx_release(f, "web", "reg/web:v2", NULL, r2, sizeof r2);
	fx_release(f, "web", "reg/web:v3", NULL, r3, sizeof r3);
	promote(f, r2, "promote", ro2);
	deploy(f, "ag_a", "succeeded");
	promote(f, r3, "promote", ro3);
	assert_string_equal(rstate(f, ro2), "superseded");
	assert_int_equal(fx_int(f, "SELECT count(*) FROM jobs WHERE rollout = '%s' AND result = "
				   "'cancelled'",
				ro2),
			 2);
	deploy(f, "ag_a", "succeeded");
	deploy(f, "ag_b", "succeeded");
	deploy(f, "ag_c", "succeeded");
	assert_string_equal(rstate(f, ro3), "succeeded");
	assert_string_equal(relstatus(f, r3), "active");
	assert_string_equal(relstatus(f, r1), "superseded");
	assert_int_equal(fx_int(f, "SELECT count(*) FROM releases WHERE status = 'active'"), 1);
}

static void no_agents_succeeds_at_once(void **state)
{
	struct fx *f = *state;
	char r1[72], ro[32];
	fx_exec(f, "UPDATE agents SET state = 'lost'");
	fx_release(f, "web", "reg/web:v1", NULL, r1, sizeof r1);
	promote(f, r1, "promote", ro);
	assert_string_equal(rstate(f, ro), "succeeded");
	assert_string_equal(relstatus(f, r1), "active");
	/* A new instance gets it as it registers. */
	fx_agent(f, "ag_new", 9);
	struct args j = {.agent = "ag_new", .registered = 1};
	run(f, joined_tx, &j);
	char job[32], lease[32];
	assert_int_equal(take(f, "ag_new", job, lease), 1);
	assert_string_equal(fx_text(f, "SELECT release FROM jobs WHERE id = '%s'", job), r1);
}

static void recover_is_idempotent(void **state)
{
	struct fx *f = *state;
	char r1[72], r2[72], ro[32];
	first_release(f, r1);
	fx_release(f, "web", "reg/web:v2", NULL, r2, sizeof r2);
	promote(f, r2, "promote", ro);
	deploy(f, "ag_a", "succeeded");
	deploy(f, "ag_b", "succeeded");
	deploy(f, "ag_c", "succeeded");
	int64_t events = fx_int(f, "SELECT count(*) FROM events");
	int64_t jobs = fx_int(f, "SELECT count(*) FROM jobs");
	rollout_recover(&f->c);
	fx_drain(f);
	assert_int_equal(fx_int(f, "SELECT count(*) FROM events"), events);
	assert_int_equal(fx_int(f, "SELECT count(*) FROM jobs"), jobs);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(all_at_once, setup_all, teardown),
		cmocka_unit_test_setup_teardown(one_at_a_time, setup_one, teardown),
		cmocka_unit_test_setup_teardown(generation_above_the_fleet, setup_all, teardown),
		cmocka_unit_test_setup_teardown(canary, setup_canary, teardown),
		cmocka_unit_test_setup_teardown(failure_reverts_who_took_it, setup_all, teardown),
		cmocka_unit_test_setup_teardown(one_at_a_time_failure_stops, setup_one, teardown),
		cmocka_unit_test_setup_teardown(first_release_failure_has_nothing_to_revert,
						setup_all, teardown),
		cmocka_unit_test_setup_teardown(lost_agent_leaves, setup_all, teardown),
		cmocka_unit_test_setup_teardown(newer_promotion_supersedes, setup_all, teardown),
		cmocka_unit_test_setup_teardown(no_agents_succeeds_at_once, setup_all, teardown),
		cmocka_unit_test_setup_teardown(recover_is_idempotent, setup_all, teardown),
	};
	return cmocka_run_group_tests_name("rollout", tests, NULL, NULL);
}
