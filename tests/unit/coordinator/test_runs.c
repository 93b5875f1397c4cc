/*
 * runs: a one-off run is queued to one live agent of the app's fleet, its job
 * carries the "run" object, its ack records the exit status; refusals change
 * nothing; run jobs are never requeued after a lease expiry nor cancelled by
 * deploy jobs; the release phase holds a rollout until the release command
 * ends, continues it on exit 0 and fails it (release failed, app unchanged)
 * otherwise; rollbacks run no release command; a newer promotion supersedes a
 * waiting rollout.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "coord_fixture.h"
#include "runs.h"

struct args {
	struct coord *c;
	struct runs_request req;
	struct runs_result res;
	const char *release;
	const char *trigger;
	char rollout[32];
	const char *agent;
	cJSON *jobs;
	const char *job;
	const char *lease;
	const char *result;
	int64_t exit_code;
	enum queue_status status;
	char msg[256];
	struct queue_wake wake;
};

static int create_tx(struct store_tx *tx, void *arg)
{
	struct args *a = arg;
	return runs_create_tx(tx, a->c, &a->req, &a->res, &a->wake);
}

static int start_tx(struct store_tx *tx, void *arg)
{
	struct args *a = arg;
	return rollout_start_tx(tx, a->c, "web", a->release, a->trigger, a->rollout, NULL,
				&a->wake);
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
				.duration_ms = 5, .exit_code = a->exit_code,
				.reason = strcmp(a->result, "failed") == 0 ? "" : NULL,
				.output_tail = "line one\nline two"};
	return queue_ack_tx(tx, a->c, a->agent, a->job, &ack, &a->status, a->msg, sizeof a->msg,
			    &a->wake);
}

static int expire_tx(struct store_tx *tx, void *arg)
{
	struct args *a = arg;
	return queue_expire_tx(tx, a->c, clock_wall_ms(), &a->wake);
}

static int joined_tx(struct store_tx *tx, void *arg)
{
	struct args *a = arg;
	return rollout_agent_joined_tx(tx, a->c, a->agent, 1, &a->wake);
}

static int recover_tx(struct store_tx *tx, void *arg)
{
	struct args *a = arg;
	return rollout_recover_tx(tx, a->c, &a->wake);
}

static void run(struct fx *f, store_fn fn, struct args *a)
{
	struct err err = {{0}};
	a->c = &f->c;
	if (store_run(f->c.store, fn, a, &err) != 0)
		fail_msg("store: %s", err.msg);
	queue_wake_free(&a->wake);
}

/* Leases the agent's jobs; the newest goes to job/lease (and *json when given). */
static int take(struct fx *f, const char *agent, char *job, char *lease, cJSON **json)
{
	struct args a = {.agent = agent, .jobs = cJSON_CreateArray()};
	run(f, lease_tx, &a);
	int n = cJSON_GetArraySize(a.jobs);
	if (n > 0) {
		cJSON *j = cJSON_GetArrayItem(a.jobs, n - 1);
		strcpy(job, fx_str(j, "id"));
		strcpy(lease, fx_str(j, "lease_id"));
	}
	if (json)
		*json = a.jobs;
	else
		cJSON_Delete(a.jobs);
	return n;
}

static enum queue_status ack(struct fx *f, const char *agent, const char *job, const char *lease,
			     const char *result, int64_t exit_code)
{
	struct args a = {.agent = agent, .job = job, .lease = lease, .result = result,
			 .exit_code = exit_code};
	run(f, ack_tx, &a);
	return a.status;
}

static void promote(struct fx *f, const char *release, const char *trigger, char *rollout)
{
	struct args a = {.release = release, .trigger = trigger};
	run(f, start_tx, &a);
	strcpy(rollout, a.rollout);
}

static int setup(void **state)
{
	static struct fx f;
	clock_fake_set(1800000000000LL, 1000);
	fx_init(&f, "queue.lease = 30s\n", 0);
	fx_app(&f, "web", "all");
	fx_agent(&f, "ag_a", 1);
	fx_agent(&f, "ag_b", 2);
	*state = &f;
	return 0;
}

static int teardown(void **state)
{
	fx_free(*state);
	clock_fake_off();
	return 0;
}

/* r1 live on both agents. */
static void live_release(struct fx *f, char *r1)
{
	char ro[32], job[32], lease[32];
	fx_release(f, "web", "reg/web:v1", NULL, r1, 72);
	promote(f, r1, "promote", ro);
	const char *agents[] = {"ag_a", "ag_b"};
	for (int i = 0; i < 2; i++) {
		assert_int_equal(take(f, agents[i], job, lease, NULL), 1);
		assert_int_equal(ack(f, agents[i], job, lease, "succeeded", -1), QUEUE_OK);
	}
	assert_string_equal(fx_text(f, "SELECT state FROM rollouts WHERE id = '%s'", ro),
			    "succeeded");
}

static struct runs_result start_run(struct fx *f, const char *service, const char *release,
				    const char *command_json)
{
	cJSON *cmd = command_json ? cJSON_Parse(command_json) : NULL;
	struct args a = {.req = {.app = "web", .service = service, .release = release,
				 .command = cmd, .kind = "run", .who = "tester"}};
	run(f, create_tx, &a);
	cJSON_Delete(cmd);
	return a.res;
}

static void run_is_queued_leased_and_acked(void **state)
{
	struct fx *f = *state;
	char r1[72], job[32], lease[32];
	live_release(f, r1);
	struct runs_result res = start_run(f, NULL, NULL, "[\"bin/migrate\", \"--yes\"]");
	assert_int_equal(res.status, 0);
	assert_memory_equal(res.id, "run-", 4);
	assert_int_equal(strlen(res.id), 16);
	assert_string_equal(fx_text(f, "SELECT state FROM runs WHERE id = '%s'", res.id), "queued");
	assert_string_equal(fx_text(f, "SELECT service FROM runs WHERE id = '%s'", res.id), "web");
	assert_string_equal(fx_text(f, "SELECT release FROM runs WHERE id = '%s'", res.id), r1);
	assert_string_equal(fx_text(f, "SELECT type FROM jobs WHERE id = '%s'", res.job), "run");
	assert_string_equal(fx_text(f, "SELECT agent FROM jobs WHERE id = '%s'", res.job),
			    res.agent);

	cJSON *jobs;
	assert_int_equal(take(f, res.agent, job, lease, &jobs), 1);
	cJSON *j = cJSON_GetArrayItem(jobs, 0);
	assert_string_equal(fx_str(j, "type"), "run");
	assert_string_equal(fx_str(j, "id"), res.job);
	cJSON *runobj = cJSON_GetObjectItemCaseSensitive(j, "run");
	assert_string_equal(fx_str(runobj, "id"), res.id);
	assert_string_equal(fx_str(runobj, "service"), "web");
	assert_int_equal((int)fx_num(runobj, "timeout_s"), RUNS_TIMEOUT_DEFAULT_S);
	cJSON *cmd = cJSON_GetObjectItemCaseSensitive(runobj, "command");
	assert_int_equal(cJSON_GetArraySize(cmd), 2);
	assert_string_equal(cJSON_GetArrayItem(cmd, 1)->valuestring, "--yes");
	cJSON *rel = cJSON_GetObjectItemCaseSensitive(j, "release");
	assert_string_equal(fx_str(rel, "id"), r1);
	cJSON_Delete(jobs);
	assert_string_equal(fx_text(f, "SELECT state FROM runs WHERE id = '%s'", res.id),
			    "running");

	assert_int_equal(ack(f, res.agent, job, lease, "failed", 7), QUEUE_OK);
	assert_string_equal(fx_text(f, "SELECT state FROM runs WHERE id = '%s'", res.id), "failed");
	assert_int_equal(fx_int(f, "SELECT exit_code FROM runs WHERE id = '%s'", res.id), 7);
	assert_string_equal(fx_text(f, "SELECT reason FROM runs WHERE id = '%s'", res.id),
			    "exited with status 7");
	assert_string_equal(fx_text(f, "SELECT output_tail FROM runs WHERE id = '%s'", res.id),
			    "line one\nline two");
	/* The same ack again is idempotent and changes nothing. */
	assert_int_equal(ack(f, res.agent, job, lease, "failed", 7), QUEUE_OK);
	assert_int_equal(fx_int(f, "SELECT count(*) FROM events WHERE kind = 'run.failed'"), 1);

	res = start_run(f, "web", r1, NULL);
	assert_int_equal(res.status, 0);
	assert_string_equal(fx_text(f, "SELECT command FROM runs WHERE id = '%s'", res.id), "null");
	assert_int_equal(take(f, res.agent, job, lease, NULL), 1);
	assert_int_equal(ack(f, res.agent, job, lease, "succeeded", 0), QUEUE_OK);
	assert_string_equal(fx_text(f, "SELECT state FROM runs WHERE id = '%s'", res.id),
			    "succeeded");
	assert_int_equal(fx_int(f, "SELECT exit_code FROM runs WHERE id = '%s'", res.id), 0);
	assert_int_equal(fx_int(f, "SELECT count(*) FROM runs WHERE reason IS NOT NULL AND "
				   "id = '%s'", res.id), 0);
}

static void refusals_change_nothing(void **state)
{
	struct fx *f = *state;
	char r1[72];
	struct runs_result res = start_run(f, NULL, NULL, "[\"true\"]");
	assert_int_equal(res.status, 409); /* no release yet */
	live_release(f, r1);
	res = start_run(f, "nosuch", NULL, "[\"true\"]");
	assert_int_equal(res.status, 404);
	assert_non_null(strstr(res.message, "no service nosuch"));
	res = start_run(f, NULL, "r_unknown", "[\"true\"]");
	assert_int_equal(res.status, 404);
	struct args a = {.req = {.app = "nope", .kind = "run"}};
	run(f, create_tx, &a);
	assert_int_equal(a.res.status, 404);
	fx_exec(f, "UPDATE agents SET state = 'lost'");
	res = start_run(f, NULL, NULL, "[\"true\"]");
	assert_int_equal(res.status, 409);
	assert_non_null(strstr(res.message, "no live agent"));
	assert_int_equal(fx_int(f, "SELECT count(*) FROM runs"), 0);
	assert_int_equal(fx_int(f, "SELECT count(*) FROM jobs WHERE type = 'run'"), 0);
}

static void runs_and_deploys_do_not_cancel_each_other(void **state)
{
	struct fx *f = *state;
	char r1[72], r2[72], ro[32];
	live_release(f, r1);
	struct runs_result res = start_run(f, NULL, NULL, "[\"true\"]");
	fx_release(f, "web", "reg/web:v2", NULL, r2, sizeof r2);
	promote(f, r2, "promote", ro);
	assert_string_equal(fx_text(f, "SELECT state FROM jobs WHERE id = '%s'", res.job),
			    "queued");
	assert_int_equal(fx_int(f, "SELECT count(*) FROM jobs WHERE rollout = '%s' AND "
				   "state = 'queued'", ro), 2);
	/* and a new run leaves the queued deploy jobs alone */
	res = start_run(f, NULL, NULL, "[\"true\"]");
	assert_int_equal(fx_int(f, "SELECT count(*) FROM jobs WHERE rollout = '%s' AND "
				   "state = 'queued'", ro), 2);
	assert_int_equal(fx_int(f, "SELECT count(*) FROM jobs WHERE type = 'run' AND "
				   "state = 'queued'"), 2);
}

static void expired_run_is_never_requeued(void **state)
{
	struct fx *f = *state;
	char r1[72], job[32], lease[32];
	live_release(f, r1);
	struct runs_result res = start_run(f, NULL, NULL, "[\"sleep\", \"999\"]");
	assert_int_equal(take(f, res.agent, job, lease, NULL), 1);
	clock_fake_advance(31000);
	struct args a = {0};
	run(f, expire_tx, &a);
	assert_string_equal(fx_text(f, "SELECT state || ' ' || result FROM jobs WHERE id = '%s'",
				    res.job),
			    "done expired");
	assert_string_equal(fx_text(f, "SELECT state FROM runs WHERE id = '%s'", res.id), "failed");
	assert_non_null(strstr(fx_text(f, "SELECT reason FROM runs WHERE id = '%s'", res.id),
				"never started twice"));
	assert_int_equal(take(f, res.agent, job, lease, NULL), 0);
	/* A late ack cannot turn it around. */
	assert_int_equal(ack(f, res.agent, res.job, lease, "succeeded", 0), QUEUE_CONFLICT);
	assert_string_equal(fx_text(f, "SELECT state FROM runs WHERE id = '%s'", res.id), "failed");
}

/* r2 with a release command, promoted: the rollout waits for the run. */
static void waiting_rollout(struct fx *f, char *r1, char *r2, char *ro, char *run_id)
{
	live_release(f, r1);
	fx_release(f, "web", "reg/web:v2", NULL, r2, 72);
	fx_exec(f, "UPDATE releases SET manifest = '{\"release\":[\"bin/migrate\"]}' WHERE id = '%s'",
		r2);
	promote(f, r2, "promote", ro);
	assert_string_equal(fx_text(f, "SELECT state FROM rollouts WHERE id = '%s'", ro),
			    "running");
	assert_int_equal(fx_int(f, "SELECT count(*) FROM jobs WHERE rollout = '%s'", ro), 0);
	assert_int_equal(fx_int(f, "SELECT generation FROM apps WHERE name = 'web'"), 1);
	assert_string_equal(fx_text(f, "SELECT release FROM apps WHERE name = 'web'"), r1);
	strcpy(run_id, fx_text(f, "SELECT id FROM runs WHERE rollout = '%s'", ro));
	assert_string_equal(fx_text(f, "SELECT kind || ' ' || state || ' ' || command FROM runs "
				    "WHERE id = '%s'", run_id),
			    "release queued [\"bin/migrate\"]");
	/* Re-evaluating (a restart) leaves it waiting. */
	struct args a = {0};
	run(f, recover_tx, &a);
	assert_string_equal(fx_text(f, "SELECT state FROM rollouts WHERE id = '%s'", ro),
			    "running");
}

static void release_command_success_continues(void **state)
{
	struct fx *f = *state;
	char r1[72], r2[72], ro[32], run_id[32], job[32], lease[32];
	waiting_rollout(f, r1, r2, ro, run_id);
	const char *agent = fx_text(f, "SELECT agent FROM runs WHERE id = '%s'", run_id);
	char who[32];
	strcpy(who, agent);
	assert_int_equal(take(f, who, job, lease, NULL), 1);
	assert_int_equal(ack(f, who, job, lease, "succeeded", 0), QUEUE_OK);
	assert_int_equal(fx_int(f, "SELECT generation FROM apps WHERE name = 'web'"), 2);
	assert_string_equal(fx_text(f, "SELECT release FROM apps WHERE name = 'web'"), r2);
	assert_int_equal(fx_int(f, "SELECT count(*) FROM jobs WHERE rollout = '%s' AND "
				   "type = 'deploy' AND generation = 2", ro), 2);
	const char *agents[] = {"ag_a", "ag_b"};
	for (int i = 0; i < 2; i++) {
		assert_int_equal(take(f, agents[i], job, lease, NULL), 1);
		assert_int_equal(ack(f, agents[i], job, lease, "succeeded", -1), QUEUE_OK);
	}
	assert_string_equal(fx_text(f, "SELECT state FROM rollouts WHERE id = '%s'", ro),
			    "succeeded");
	assert_string_equal(fx_text(f, "SELECT status FROM releases WHERE id = '%s'", r2), "active");
}

static void release_command_failure_stops(void **state)
{
	struct fx *f = *state;
	char r1[72], r2[72], ro[32], run_id[32], job[32], lease[32], who[32];
	waiting_rollout(f, r1, r2, ro, run_id);
	strcpy(who, fx_text(f, "SELECT agent FROM runs WHERE id = '%s'", run_id));
	assert_int_equal(take(f, who, job, lease, NULL), 1);
	assert_int_equal(ack(f, who, job, lease, "failed", 3), QUEUE_OK);
	assert_string_equal(fx_text(f, "SELECT state FROM rollouts WHERE id = '%s'", ro), "failed");
	assert_non_null(strstr(fx_text(f, "SELECT reason FROM rollouts WHERE id = '%s'", ro),
			       "release command: exited with status 3"));
	assert_string_equal(fx_text(f, "SELECT status FROM releases WHERE id = '%s'", r2), "failed");
	assert_string_equal(fx_text(f, "SELECT status FROM releases WHERE id = '%s'", r1), "active");
	assert_int_equal(fx_int(f, "SELECT generation FROM apps WHERE name = 'web'"), 1);
	assert_string_equal(fx_text(f, "SELECT release FROM apps WHERE name = 'web'"), r1);
	assert_int_equal(fx_int(f, "SELECT count(*) FROM jobs WHERE rollout = '%s'", ro), 0);
	assert_int_equal(fx_int(f, "SELECT count(*) FROM events WHERE kind = 'rollout.failed'"), 1);
	/* The next promotion takes the next generation as usual. */
	char r3[72], ro3[32];
	fx_release(f, "web", "reg/web:v3", NULL, r3, sizeof r3);
	promote(f, r3, "promote", ro3);
	assert_int_equal(fx_int(f, "SELECT generation FROM apps WHERE name = 'web'"), 2);
}

static void rollback_and_revert_run_nothing(void **state)
{
	struct fx *f = *state;
	char r1[72], r2[72], ro[32];
	live_release(f, r1);
	fx_release(f, "web", "reg/web:v2", NULL, r2, sizeof r2);
	fx_exec(f, "UPDATE releases SET manifest = '{\"release\":[\"bin/migrate\"]}' WHERE id = '%s'",
		r2);
	promote(f, r2, "rollback", ro);
	assert_int_equal(fx_int(f, "SELECT count(*) FROM runs"), 0);
	assert_int_equal(fx_int(f, "SELECT count(*) FROM jobs WHERE rollout = '%s'", ro), 2);
	promote(f, r2, "scale", ro);
	assert_int_equal(fx_int(f, "SELECT count(*) FROM runs"), 0);
	promote(f, r2, "env", ro);
	assert_int_equal(fx_int(f, "SELECT count(*) FROM runs"), 1);
}

static void newer_promotion_supersedes_waiting(void **state)
{
	struct fx *f = *state;
	char r1[72], r2[72], ro[32], run_id[32], job[32], lease[32], who[32], r3[72], ro3[32];
	waiting_rollout(f, r1, r2, ro, run_id);
	strcpy(who, fx_text(f, "SELECT agent FROM runs WHERE id = '%s'", run_id));
	fx_release(f, "web", "reg/web:v3", NULL, r3, sizeof r3);
	promote(f, r3, "promote", ro3);
	assert_string_equal(fx_text(f, "SELECT state FROM rollouts WHERE id = '%s'", ro),
			    "superseded");
	assert_int_equal(fx_int(f, "SELECT generation FROM apps WHERE name = 'web'"), 2);
	assert_string_equal(fx_text(f, "SELECT release FROM apps WHERE name = 'web'"), r3);
	/* The old release command still reports; it moves nothing. */
	char found = 0;
	cJSON *jobs;
	int n = take(f, who, job, lease, &jobs);
	const cJSON *j;
	cJSON_ArrayForEach(j, jobs)
	{
		if (strcmp(fx_str(j, "type"), "run") == 0) {
			strcpy(job, fx_str(j, "id"));
			strcpy(lease, fx_str(j, "lease_id"));
			found = 1;
		}
	}
	cJSON_Delete(jobs);
	assert_true(n >= 1 && found);
	assert_int_equal(ack(f, who, job, lease, "succeeded", 0), QUEUE_OK);
	assert_int_equal(fx_int(f, "SELECT generation FROM apps WHERE name = 'web'"), 2);
	assert_string_equal(fx_text(f, "SELECT release FROM apps WHERE name = 'web'"), r3);
	assert_int_equal(fx_int(f, "SELECT count(*) FROM jobs WHERE rollout = '%s'", ro), 0);
}

static void no_agent_fails_release_phase_at_once(void **state)
{
	struct fx *f = *state;
	char r1[72], r2[72], ro[32];
	live_release(f, r1);
	fx_exec(f, "UPDATE agents SET state = 'lost'");
	fx_release(f, "web", "reg/web:v2", NULL, r2, sizeof r2);
	fx_exec(f, "UPDATE releases SET manifest = '{\"release\":[\"bin/migrate\"]}' WHERE id = '%s'",
		r2);
	promote(f, r2, "promote", ro);
	assert_string_equal(fx_text(f, "SELECT state FROM rollouts WHERE id = '%s'", ro), "failed");
	assert_non_null(strstr(fx_text(f, "SELECT reason FROM rollouts WHERE id = '%s'", ro),
			       "no live agent"));
	assert_string_equal(fx_text(f, "SELECT release FROM apps WHERE name = 'web'"), r1);
}

static void pending_run_does_not_keep_deploys_away(void **state)
{
	struct fx *f = *state;
	char r1[72];
	live_release(f, r1);
	struct runs_result res = start_run(f, NULL, NULL, "[\"true\"]");
	assert_int_equal(res.status, 0);
	/* The agent enrols again with an empty state: it needs the app. */
	struct args a = {.agent = res.agent};
	run(f, joined_tx, &a);
	assert_int_equal(fx_int(f, "SELECT count(*) FROM jobs WHERE agent = '%s' AND "
				   "type = 'deploy' AND state = 'queued'", res.agent), 1);
	assert_string_equal(fx_text(f, "SELECT state FROM jobs WHERE id = '%s'", res.job),
			    "queued");
}

static void deleted_app_does_not_block_the_poll(void **state)
{
	struct fx *f = *state;
	char r1[72], job[32], lease[32];
	live_release(f, r1);
	struct runs_result res = start_run(f, NULL, NULL, "[\"true\"]");
	fx_exec(f, "DELETE FROM apps WHERE name = 'web'");
	assert_int_equal(fx_int(f, "SELECT count(*) FROM runs"), 0);
	/* The poll still answers (the job is dropped, its release being gone). */
	take(f, res.agent, job, lease, NULL);
	assert_string_equal(fx_text(f, "SELECT state FROM jobs WHERE id = '%s'", res.job), "done");
}

static void command_checks(void **state)
{
	(void)state;
	struct err err;
	cJSON *c = cJSON_Parse("[\"a\", \"b\"]");
	assert_int_equal(runs_check_command(c, "command", &err), 0);
	cJSON_Delete(c);
	c = cJSON_Parse("[]");
	assert_int_equal(runs_check_command(c, "command", &err), -1);
	assert_non_null(strstr(err.msg, "command: expected 1..256 words"));
	cJSON_Delete(c);
	c = cJSON_Parse("[\"a\", 3]");
	assert_int_equal(runs_check_command(c, "release", &err), -1);
	assert_string_equal(err.msg, "release[1]: expected a string");
	cJSON_Delete(c);
	c = cJSON_Parse("\"bin/migrate\"");
	assert_int_equal(runs_check_command(c, "command", &err), -1);
	cJSON_Delete(c);
	c = cJSON_CreateArray();
	char *big = malloc(RUNS_ARG_MAX + 2);
	memset(big, 'x', RUNS_ARG_MAX + 1);
	big[RUNS_ARG_MAX + 1] = '\0';
	cJSON_AddItemToArray(c, cJSON_CreateString(big));
	assert_int_equal(runs_check_command(c, "command", &err), -1);
	assert_non_null(strstr(err.msg, "longer than"));
	free(big);
	cJSON_Delete(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(run_is_queued_leased_and_acked, setup, teardown),
		cmocka_unit_test_setup_teardown(refusals_change_nothing, setup, teardown),
		cmocka_unit_test_setup_teardown(runs_and_deploys_do_not_cancel_each_other, setup,
						teardown),
		cmocka_unit_test_setup_teardown(expired_run_is_never_requeued, setup, teardown),
		cmocka_unit_test_setup_teardown(release_command_success_continues, setup,
						teardown),
		cmocka_unit_test_setup_teardown(release_command_failure_stops, setup, teardown),
		cmocka_unit_test_setup_teardown(rollback_and_revert_run_nothing, setup, teardown),
		cmocka_unit_test_setup_teardown(newer_promotion_supersedes_waiting, setup,
						teardown),
		cmocka_unit_test_setup_teardown(no_agent_fails_release_phase_at_once, setup,
						teardown),
		cmocka_unit_test_setup_teardown(pending_run_does_not_keep_deploys_away, setup,
						teardown),
		cmocka_unit_test_setup_teardown(deleted_app_does_not_block_the_poll, setup, teardown),
		cmocka_unit_test(command_checks),
	};
	return cmocka_run_group_tests_name("runs", tests, NULL, NULL);
}
