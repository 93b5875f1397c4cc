#include "rollout.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "clock.h"
#include "coord.h"
#include "log.h"
#include "queue.h"
#include "runs.h"
#include "slack.h"
#include "store.h"

#define STEP_DEPTH_MAX 4

struct app_row {
	char fleet[48];
	char strategy[24];
	int64_t generation;
	char release[72];  /* "" when none */
};

struct rollout_row {
	char app[48];
	char release[72];
	char previous[72]; /* "" when none */
	int64_t generation;
	char strategy[24];
	char trigger[24];
	char state[24];
};

/* A list of ids collected from a query before acting on them (never act while
 * a statement over the same rows is stepping). */
struct idlist {
	size_t n, cap;
	char (*ids)[72];
};

static int idlist_add(struct idlist *l, const char *id)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 16;
		void *p = realloc(l->ids, cap * sizeof *l->ids);
		if (!p)
			return -1;
		l->ids = p;
		l->cap = cap;
	}
	snprintf(l->ids[l->n++], sizeof l->ids[0], "%s", id);
	return 0;
}

static void idlist_free(struct idlist *l)
{
	free(l->ids);
	memset(l, 0, sizeof *l);
}

/* Runs st (bound by the caller) and collects column 0 of every row. */
static int collect(struct store_tx *tx, sqlite3_stmt *st, struct idlist *out)
{
	int rc;
	while ((rc = store_step(tx, st)) == SQLITE_ROW)
		if (idlist_add(out, store_col_text(st, 0)) < 0)
			return err_set(&tx->err, "out of memory");
	return rc == SQLITE_DONE ? 0 : -1;
}

int rollout_event_tx(struct store_tx *tx, const char *app, const char *kind, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	sqlite3_stmt *st =
		store_stmt(tx, "INSERT INTO events(ts_ms, app, kind, message) VALUES (?, ?, ?, ?)");
	if (!st)
		return -1;
	sqlite3_bind_int64(st, 1, clock_wall_ms());
	store_bind_text(st, 2, app);
	sqlite3_bind_text(st, 3, kind, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, msg, -1, SQLITE_STATIC);
	if (store_step(tx, st) != SQLITE_DONE)
		return -1;
	log_info(kind, "app=%s %s", app ? app : "-", msg);
	return 0;
}

/* 1 found, 0 no such app, -1 error. */
static int app_load(struct store_tx *tx, const char *app, struct app_row *a)
{
	sqlite3_stmt *st;
	int rc = store_step_text(tx, "SELECT fleet, strategy, generation, release FROM apps "
				     "WHERE name = ?", app, &st);
	if (rc < 0)
		return -1;
	if (rc != SQLITE_ROW)
		return 0;
	snprintf(a->fleet, sizeof a->fleet, "%s", store_col_text(st, 0));
	snprintf(a->strategy, sizeof a->strategy, "%s", store_col_text(st, 1));
	a->generation = sqlite3_column_int64(st, 2);
	snprintf(a->release, sizeof a->release, "%s", store_col_text(st, 3));
	return 1;
}

static int rollout_load(struct store_tx *tx, const char *id, struct rollout_row *r)
{
	sqlite3_stmt *st;
	int rc = store_step_text(tx, "SELECT app, release, previous_release, generation, "
				     "strategy, trigger, state FROM rollouts WHERE id = ?",
				 id, &st);
	if (rc < 0)
		return -1;
	if (rc != SQLITE_ROW)
		return 0;
	snprintf(r->app, sizeof r->app, "%s", store_col_text(st, 0));
	snprintf(r->release, sizeof r->release, "%s", store_col_text(st, 1));
	snprintf(r->previous, sizeof r->previous, "%s", store_col_text(st, 2));
	r->generation = sqlite3_column_int64(st, 3);
	snprintf(r->strategy, sizeof r->strategy, "%s", store_col_text(st, 4));
	snprintf(r->trigger, sizeof r->trigger, "%s", store_col_text(st, 5));
	snprintf(r->state, sizeof r->state, "%s", store_col_text(st, 6));
	return 1;
}

static int rollout_end(struct store_tx *tx, const char *id, const char *state, const char *reason)
{
	sqlite3_stmt *st = store_stmt(tx, "UPDATE rollouts SET state = ?, reason = ?, ended_ms = ? "
					  "WHERE id = ?");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, state, -1, SQLITE_STATIC);
	store_bind_text(st, 2, reason);
	sqlite3_bind_int64(st, 3, clock_wall_ms());
	sqlite3_bind_text(st, 4, id, -1, SQLITE_STATIC);
	return store_step(tx, st) == SQLITE_DONE ? 0 : -1;
}

static int cancel_queued(struct store_tx *tx, const char *rollout)
{
	sqlite3_stmt *st = store_stmt(tx, "UPDATE jobs SET state = 'done', result = 'cancelled', "
					  "done_ms = ? WHERE rollout = ? AND state = 'queued'");
	if (!st)
		return -1;
	sqlite3_bind_int64(st, 1, clock_wall_ms());
	sqlite3_bind_text(st, 2, rollout, -1, SQLITE_STATIC);
	return store_step(tx, st) == SQLITE_DONE ? 0 : -1;
}

static int release_status(struct store_tx *tx, const char *release, const char *status)
{
	sqlite3_stmt *st = store_stmt(tx, "UPDATE releases SET status = ? WHERE id = ?");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, status, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, release, -1, SQLITE_STATIC);
	return store_step(tx, st) == SQLITE_DONE ? 0 : -1;
}

/* The running rollout of app at generation, into id (>= 72 bytes, "" none). */
static int running_rollout(struct store_tx *tx, const char *app, int64_t generation, char *id)
{
	id[0] = '\0';
	sqlite3_stmt *st = store_stmt(tx, "SELECT id FROM rollouts WHERE app = ? AND generation = ? "
					  "AND state = 'running' LIMIT 1");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, generation);
	int rc = store_step(tx, st);
	if (rc < 0)
		return -1;
	if (rc == SQLITE_ROW)
		snprintf(id, 72, "%s", store_col_text(st, 0));
	return 0;
}

/* Live agents of the fleet without a job in this rollout, oldest first. */
static int fresh_agents(struct store_tx *tx, const char *fleet, const char *rollout, int limit,
			struct idlist *out)
{
	sqlite3_stmt *st = store_stmt(tx, "SELECT id FROM agents WHERE fleet = ? AND state = 'live' "
					  "AND id NOT IN (SELECT agent FROM jobs WHERE rollout = ?) "
					  "ORDER BY registered_ms, id LIMIT ?");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, fleet, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, rollout, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 3, limit);
	return collect(tx, st, out);
}

static int queue_jobs(struct store_tx *tx, const struct idlist *agents, const char *app,
		      int64_t generation, const char *release, const char *rollout,
		      struct queue_wake *w)
{
	for (size_t i = 0; i < agents->n; i++)
		if (queue_job_insert_tx(tx, agents->ids[i], app, "deploy", generation, release,
					rollout, NULL, w) < 0)
			return -1;
	return 0;
}

/* Ends every running rollout of app as superseded by `by`. */
static int supersede_running(struct store_tx *tx, const char *app, const char *by)
{
	struct idlist ids = {0};
	sqlite3_stmt *st =
		store_stmt(tx, "SELECT id FROM rollouts WHERE app = ? AND state = 'running'");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
	int rc = collect(tx, st, &ids);
	for (size_t i = 0; rc == 0 && i < ids.n; i++) {
		char reason[128];
		snprintf(reason, sizeof reason, "superseded by rollout %s", by);
		if (rollout_end(tx, ids.ids[i], "superseded", reason) < 0 ||
		    cancel_queued(tx, ids.ids[i]) < 0 ||
		    rollout_event_tx(tx, app, "rollout.superseded", "rollout=%s by=%s", ids.ids[i],
				     by) < 0)
			rc = -1;
	}
	idlist_free(&ids);
	return rc;
}

static int set_desired(struct store_tx *tx, const char *app, int64_t gen, const char *release)
{
	sqlite3_stmt *st = store_stmt(tx, "UPDATE apps SET generation = ?, release = ? WHERE name = ?");
	if (!st)
		return -1;
	sqlite3_bind_int64(st, 1, gen);
	sqlite3_bind_text(st, 2, release, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, app, -1, SQLITE_STATIC);
	return store_step(tx, st) == SQLITE_DONE ? 0 : -1;
}

/* The common start: new generation, rollout row, jobs for `targets` (NULL: by
 * strategy from the fleet). */
static int start(struct store_tx *tx, struct coord *c, const char *app, const char *release,
		 const char *previous, const char *trigger, const char *strategy,
		 const struct idlist *targets, char *rid_out, int64_t *gen_out,
		 struct queue_wake *w, int depth);

static int step(struct store_tx *tx, struct coord *c, const char *rid, struct queue_wake *w,
		int depth);

static int succeed(struct store_tx *tx, const char *rid, const struct rollout_row *r)
{
	if (rollout_end(tx, rid, "succeeded", NULL) < 0)
		return -1;
	if (strcmp(r->trigger, "revert") != 0) {
		sqlite3_stmt *st = store_stmt(tx, "UPDATE releases SET status = ? WHERE app = ? AND "
						  "status = 'active' AND id != ?");
		if (!st)
			return -1;
		sqlite3_bind_text(st, 1, strcmp(r->trigger, "rollback") == 0 ? "rolled back"
									       : "superseded",
				  -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, r->app, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 3, r->release, -1, SQLITE_STATIC);
		if (store_step(tx, st) != SQLITE_DONE)
			return -1;
	}
	if (release_status(tx, r->release, "active") < 0)
		return -1;
	return rollout_event_tx(tx, r->app, "rollout.succeeded",
				"rollout=%s release=%s generation=%lld trigger=%s", rid, r->release,
				(long long)r->generation, r->trigger);
}

static int fail(struct store_tx *tx, struct coord *c, const char *rid, const struct rollout_row *r,
		struct queue_wake *w, int depth)
{
	/* Why: the first failed job. */
	char reason[600] = "an agent failed";
	sqlite3_stmt *st;
	int rc = store_step_text(tx, "SELECT agent, coalesce(reason, result) FROM jobs "
				     "WHERE rollout = ? AND state = 'done' AND result IN "
				     "('failed', 'expired') ORDER BY done_ms LIMIT 1", rid, &st);
	if (rc < 0)
		return -1;
	if (rc == SQLITE_ROW)
		snprintf(reason, sizeof reason, "agent %s: %.500s", store_col_text(st, 0),
			 store_col_text(st, 1));

	/* Who took the release: succeeded, or leased and possibly swapping now. */
	struct idlist took = {0};
	st = store_stmt(tx, "SELECT DISTINCT j.agent FROM jobs j JOIN agents a ON a.id = j.agent "
			    "WHERE j.rollout = ? AND a.state = 'live' AND "
			    "((j.state = 'done' AND j.result = 'succeeded') OR j.state = 'leased') "
			    "ORDER BY j.agent");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, rid, -1, SQLITE_STATIC);
	if (collect(tx, st, &took) < 0 || cancel_queued(tx, rid) < 0) {
		idlist_free(&took);
		return -1;
	}
	int revert = strcmp(r->trigger, "revert") != 0 && r->previous[0] &&
		     strcmp(r->previous, r->release) != 0;
	rc = 0;
	if (strcmp(r->trigger, "revert") != 0 && release_status(tx, r->release, "failed") < 0)
		rc = -1;
	if (rc == 0 && !revert) {
		rc = rollout_end(tx, rid, "failed", reason) < 0 ||
				     rollout_event_tx(tx, r->app, "rollout.failed",
						      "rollout=%s release=%s reason=\"%s\"", rid,
						      r->release, reason) < 0
			     ? -1
			     : 0;
	} else if (rc == 0) {
		char rev[ROLLOUT_ID_MAX];
		int64_t gen = 0;
		if (rollout_end(tx, rid, "rolled back", reason) < 0 ||
		    start(tx, c, r->app, r->previous, r->release, "revert", "all", &took, rev, &gen,
			  w, depth + 1) < 0 ||
		    rollout_event_tx(tx, r->app, "rollout.rolled_back",
				     "rollout=%s release=%s back_to=%s revert=%s generation=%lld "
				     "agents=%zu reason=\"%s\"",
				     rid, r->release, r->previous, rev, (long long)gen, took.n,
				     reason) < 0)
			rc = -1;
	}
	idlist_free(&took);
	return rc;
}

static int step(struct store_tx *tx, struct coord *c, const char *rid, struct queue_wake *w,
		int depth)
{
	if (depth > STEP_DEPTH_MAX)
		return 0;
	struct rollout_row r;
	int rc = rollout_load(tx, rid, &r);
	if (rc <= 0 || strcmp(r.state, "running") != 0)
		return rc < 0 ? -1 : 0;
	/* Waiting for its release command: runs.c moves it on. */
	rc = runs_rollout_waiting_tx(tx, rid);
	if (rc != 0)
		return rc < 0 ? -1 : 0;
	struct app_row a;
	rc = app_load(tx, r.app, &a);
	if (rc < 0)
		return -1;
	if (rc == 0 || a.generation != r.generation) {
		/* A newer generation exists without having ended this one: end it now. */
		return rollout_end(tx, rid, "superseded", "a newer generation of the app exists") < 0 ||
				       cancel_queued(tx, rid) < 0
			       ? -1
			       : 0;
	}
	sqlite3_stmt *st = store_stmt(
		tx, "SELECT coalesce(sum(j.state = 'done' AND j.result IN ('failed', 'expired')), 0), "
		    "coalesce(sum(j.state = 'done' AND j.result IN ('succeeded', 'superseded')), 0), "
		    "coalesce(sum(j.state != 'done' AND a.state = 'live'), 0) "
		    "FROM jobs j JOIN agents a ON a.id = j.agent WHERE j.rollout = ?");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, rid, -1, SQLITE_STATIC);
	if (store_step(tx, st) != SQLITE_ROW)
		return -1;
	int64_t failed = sqlite3_column_int64(st, 0);
	int64_t ok = sqlite3_column_int64(st, 1);
	int64_t pending = sqlite3_column_int64(st, 2);
	sqlite3_reset(st);
	if (failed > 0) {
		slack_rollout_ended(c, rid); /* slack: read and sent after this commit */
		return fail(tx, c, rid, &r, w, depth);
	}
	if (pending > 0)
		return 0;
	int limit = 0;
	if (strcmp(r.strategy, "one-at-a-time") == 0)
		limit = 1;
	else if (strcmp(r.strategy, "canary") == 0)
		limit = ok > 0 ? 1000000 : 1; /* no canary succeeded yet (it left): pick another */
	if (limit > 0) {
		struct idlist next = {0};
		if (fresh_agents(tx, a.fleet, rid, limit, &next) < 0 ||
		    queue_jobs(tx, &next, r.app, r.generation, r.release, rid, w) < 0) {
			idlist_free(&next);
			return -1;
		}
		size_t n = next.n;
		idlist_free(&next);
		if (n > 0)
			return rollout_event_tx(tx, r.app, "rollout.progress",
						"rollout=%s strategy=%s started=%zu done=%lld", rid,
						r.strategy, n, (long long)ok);
	}
	slack_rollout_ended(c, rid); /* slack: read and sent after this commit */
	return succeed(tx, rid, &r);
}

static int start(struct store_tx *tx, struct coord *c, const char *app, const char *release,
		 const char *previous, const char *trigger, const char *strategy,
		 const struct idlist *targets, char *rid_out, int64_t *gen_out,
		 struct queue_wake *w, int depth)
{
	struct app_row a;
	int rc = app_load(tx, app, &a);
	if (rc <= 0)
		return rc < 0 ? -1 : err_set(&tx->err, "unknown app %s", app);
	sqlite3_stmt *st = store_stmt(tx, "SELECT 1 FROM releases WHERE id = ? AND app = ?");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, release, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, app, -1, SQLITE_STATIC);
	rc = store_step(tx, st);
	if (rc < 0)
		return -1;
	if (rc != SQLITE_ROW)
		return err_set(&tx->err, "app %s has no release %s", app, release);
	char prev[72] = "";
	if (previous) {
		snprintf(prev, sizeof prev, "%s", previous);
	} else {
		st = store_stmt(tx, "SELECT id FROM releases WHERE app = ? AND status = 'active' "
				    "ORDER BY seq DESC LIMIT 1");
		if (!st)
			return -1;
		sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
		rc = store_step(tx, st);
		if (rc < 0)
			return -1;
		snprintf(prev, sizeof prev, "%s", rc == SQLITE_ROW ? store_col_text(st, 0) : a.release);
	}
	if (!strategy)
		strategy = a.strategy;
	char rid[ROLLOUT_ID_MAX];
	if (auth_new_id(rid, sizeof rid, "ro_") < 0)
		return err_set(&tx->err, "no randomness");
	if (supersede_running(tx, app, rid) < 0)
		return -1;
	/* Above anything an agent already applied, too: after a store restored from
	 * a backup, apps.generation may be behind the fleet, whose heartbeats
	 * report what it runs; a generation at or below that would be superseded. */
	int64_t gen = a.generation;
	st = store_stmt(tx, "SELECT max(applied_generation) FROM agent_apps WHERE app = ?");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
	if (store_step(tx, st) == SQLITE_ROW && sqlite3_column_int64(st, 0) > gen)
		gen = sqlite3_column_int64(st, 0);
	gen++;
	/* A release command runs first: the app keeps its generation and release
	 * until it exits 0 (rollout_release_phase_done_tx). */
	int phase = targets ? 0 : runs_release_phase_wanted_tx(tx, release, trigger);
	if (phase < 0)
		return -1;
	if (!phase && set_desired(tx, app, gen, release) < 0)
		return -1;
	st = store_stmt(tx, "INSERT INTO rollouts(id, app, release, previous_release, generation, "
			    "strategy, trigger, state, started_ms) VALUES (?, ?, ?, ?, ?, ?, ?, "
			    "'running', ?)");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, rid, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, app, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, release, -1, SQLITE_STATIC);
	if (prev[0])
		sqlite3_bind_text(st, 4, prev, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, 4);
	sqlite3_bind_int64(st, 5, gen);
	sqlite3_bind_text(st, 6, strategy, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 7, trigger, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 8, clock_wall_ms());
	if (store_step(tx, st) != SQLITE_DONE)
		return -1;
	if (strcmp(trigger, "revert") != 0 && release_status(tx, release, "pending") < 0)
		return -1;
	if (rid_out)
		snprintf(rid_out, ROLLOUT_ID_MAX, "%s", rid);
	if (gen_out)
		*gen_out = gen;
	if (phase)
		return rollout_event_tx(tx, app, "rollout.started",
					"rollout=%s release=%s previous=%s generation=%lld "
					"strategy=%s trigger=%s release_command=first",
					rid, release, prev[0] ? prev : "-", (long long)gen, strategy,
					trigger) < 0 ||
				       runs_release_phase_tx(tx, c, app, release, rid, gen, trigger,
							     w) < 0
			       ? -1
			       : 0;
	struct idlist chosen = {0};
	const struct idlist *jobs_for = targets;
	if (!targets) {
		int limit = strcmp(strategy, "all") == 0 ? 1000000 : 1;
		if (fresh_agents(tx, a.fleet, rid, limit, &chosen) < 0) {
			idlist_free(&chosen);
			return -1;
		}
		jobs_for = &chosen;
	}
	rc = queue_jobs(tx, jobs_for, app, gen, release, rid, w);
	size_t n = jobs_for->n;
	idlist_free(&chosen);
	if (rc < 0 ||
	    rollout_event_tx(tx, app, "rollout.started",
			     "rollout=%s release=%s previous=%s generation=%lld strategy=%s "
			     "trigger=%s agents=%zu",
			     rid, release, prev[0] ? prev : "-", (long long)gen, strategy, trigger,
			     n) < 0)
		return -1;
	/* Nothing to wait for (no live agent): settle at once. */
	return n == 0 ? step(tx, c, rid, w, depth) : 0;
}

int rollout_start_tx(struct store_tx *tx, struct coord *c, const char *app,
		     const char *release_id, const char *trigger, char *rollout_id,
		     int64_t *generation, struct queue_wake *w)
{
	return start(tx, c, app, release_id, NULL, trigger, NULL, NULL, rollout_id, generation, w,
		     0);
}

int rollout_release_phase_done_tx(struct store_tx *tx, struct coord *c, const char *rollout_id,
				   int ok, const char *reason, struct queue_wake *w)
{
	struct rollout_row r;
	int rc = rollout_load(tx, rollout_id, &r);
	if (rc <= 0 || strcmp(r.state, "running") != 0)
		return rc < 0 ? -1 : 0; /* superseded meanwhile: nothing waits */
	struct app_row a;
	rc = app_load(tx, r.app, &a);
	if (rc < 0)
		return -1;
	if (!ok) {
		char why[700];
		snprintf(why, sizeof why, "release command: %.600s", reason ? reason : "failed");
		slack_rollout_ended(c, rollout_id); /* read and sent after this commit */
		return rollout_end(tx, rollout_id, "failed", why) < 0 ||
				       release_status(tx, r.release, "failed") < 0 ||
				       rollout_event_tx(tx, r.app, "rollout.failed",
							"rollout=%s release=%s reason=\"%s\"",
							rollout_id, r.release, why) < 0
			       ? -1
			       : 0;
	}
	if (rc == 0 || a.generation >= r.generation)
		return rollout_end(tx, rollout_id, "superseded",
				   "a newer generation of the app exists") < 0 ? -1 : 0;
	if (set_desired(tx, r.app, r.generation, r.release) < 0)
		return -1;
	struct idlist chosen = {0};
	int limit = strcmp(r.strategy, "all") == 0 ? 1000000 : 1;
	if (fresh_agents(tx, a.fleet, rollout_id, limit, &chosen) < 0 ||
	    queue_jobs(tx, &chosen, r.app, r.generation, r.release, rollout_id, w) < 0) {
		idlist_free(&chosen);
		return -1;
	}
	size_t n = chosen.n;
	idlist_free(&chosen);
	if (rollout_event_tx(tx, r.app, "rollout.progress",
			     "rollout=%s release=%s release_command=succeeded agents=%zu", rollout_id,
			     r.release, n) < 0)
		return -1;
	return n == 0 ? step(tx, c, rollout_id, w, 0) : 0;
}

int rollout_has_pending_tx(struct store_tx *tx, const char *rollout_id)
{
	sqlite3_stmt *st;
	int rc = store_step_text(tx, "SELECT 1 FROM jobs j JOIN agents a ON a.id = j.agent "
				     "WHERE j.rollout = ? AND j.state IN ('queued', 'leased') "
				     "AND a.state = 'live' LIMIT 1", rollout_id, &st);
	sqlite3_reset(st);
	return rc < 0 ? -1 : rc == SQLITE_ROW;
}

int rollout_step_tx(struct store_tx *tx, struct coord *c, const char *rollout_id,
		    struct queue_wake *w)
{
	return step(tx, c, rollout_id, w, 0);
}

static int step_all(struct store_tx *tx, struct coord *c, sqlite3_stmt *st, struct queue_wake *w)
{
	struct idlist ids = {0};
	int rc = collect(tx, st, &ids);
	for (size_t i = 0; rc == 0 && i < ids.n; i++)
		rc = step(tx, c, ids.ids[i], w, 0);
	idlist_free(&ids);
	return rc;
}

int rollout_recover_tx(struct store_tx *tx, struct coord *c, struct queue_wake *w)
{
	sqlite3_stmt *st = store_stmt(tx, "SELECT id FROM rollouts WHERE state = 'running' "
					  "ORDER BY started_ms");
	if (!st)
		return -1;
	return step_all(tx, c, st, w);
}

int rollout_agent_left_tx(struct store_tx *tx, struct coord *c, const char *agent,
			  struct queue_wake *w)
{
	sqlite3_stmt *st = store_stmt(tx, "SELECT DISTINCT rollout FROM jobs WHERE agent = ? AND "
					  "state != 'done' AND rollout IS NOT NULL");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, agent, -1, SQLITE_STATIC);
	return step_all(tx, c, st, w);
}

struct fleet_app {
	char name[48];
	int64_t generation;
	char release[72];
};

int rollout_agent_joined_tx(struct store_tx *tx, struct coord *c, const char *agent,
			    int registered, struct queue_wake *w)
{
	(void)c;
	sqlite3_stmt *st;
	int rc = store_step_text(tx, "SELECT fleet FROM agents WHERE id = ? AND state = 'live'",
				 agent, &st);
	if (rc != SQLITE_ROW)
		return rc < 0 ? -1 : 0;
	char fleet[48];
	snprintf(fleet, sizeof fleet, "%s", store_col_text(st, 0));
	sqlite3_reset(st);

	st = store_stmt(tx, "SELECT name, generation, release FROM apps WHERE fleet = ? AND "
			    "release IS NOT NULL ORDER BY name");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, fleet, -1, SQLITE_STATIC);
	struct fleet_app *apps = NULL;
	size_t n = 0, cap = 0;
	while ((rc = store_step(tx, st)) == SQLITE_ROW) {
		if (n == cap) {
			cap = cap ? cap * 2 : 8;
			void *p = realloc(apps, cap * sizeof *apps);
			if (!p) {
				free(apps);
				return err_set(&tx->err, "out of memory");
			}
			apps = p;
		}
		snprintf(apps[n].name, sizeof apps[n].name, "%s", store_col_text(st, 0));
		apps[n].generation = sqlite3_column_int64(st, 1);
		snprintf(apps[n].release, sizeof apps[n].release, "%s", store_col_text(st, 2));
		n++;
	}
	if (rc != SQLITE_DONE) {
		free(apps);
		return -1;
	}
	rc = 0;
	for (size_t i = 0; rc == 0 && i < n; i++) {
		if (!registered) {
			st = store_stmt(tx, "SELECT applied_generation FROM agent_apps WHERE "
					    "agent = ? AND app = ?");
			if (!st) {
				rc = -1;
				break;
			}
			sqlite3_bind_text(st, 1, agent, -1, SQLITE_STATIC);
			sqlite3_bind_text(st, 2, apps[i].name, -1, SQLITE_STATIC);
			int s = store_step(tx, st);
			if (s < 0) {
				rc = -1;
				break;
			}
			int64_t applied = s == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
			sqlite3_reset(st);
			if (applied >= apps[i].generation)
				continue;
		}
		st = store_stmt(tx, "SELECT 1 FROM jobs WHERE agent = ? AND app = ? AND "
				    "state != 'done' AND generation >= ? AND type != 'run' LIMIT 1");
		if (!st) {
			rc = -1;
			break;
		}
		sqlite3_bind_text(st, 1, agent, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, apps[i].name, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 3, apps[i].generation);
		int s = store_step(tx, st);
		sqlite3_reset(st);
		if (s < 0) {
			rc = -1;
			break;
		}
		if (s == SQLITE_ROW)
			continue;
		char rid[72];
		if (running_rollout(tx, apps[i].name, apps[i].generation, rid) < 0 ||
		    queue_job_insert_tx(tx, agent, apps[i].name, "deploy", apps[i].generation,
					apps[i].release, rid[0] ? rid : NULL, NULL, w) < 0)
			rc = -1;
	}
	free(apps);
	return rc;
}

/* ---- start-up ---- */

struct recover {
	struct coord *c;
	struct queue_wake w;
};

static int recover_tx(struct store_tx *tx, void *arg)
{
	struct recover *r = arg;
	return rollout_recover_tx(tx, r->c, &r->w);
}

static void recover_done(int rc, void *arg)
{
	struct recover *r = arg;
	if (rc == 0 && r->c->queue)
		queue_wake(r->c->queue, &r->w);
	else if (rc < 0)
		log_error("rollout.recover_failed", "reason=\"store operation failed\"");
	queue_wake_free(&r->w);
	free(r);
}

void rollout_recover(struct coord *c)
{
	struct recover *r = calloc(1, sizeof *r);
	if (!r)
		return;
	r->c = c;
	if (store_submit(c->store, recover_tx, recover_done, r) < 0)
		free(r);
}
