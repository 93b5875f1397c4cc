#include "queue.h"

#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agents.h"
#include "auth.h"
#include "clock.h"
#include "config.h"
#include "coord.h"
#include "json.h"
#include "log.h"
#include "releases.h"
#include "rollout.h"
#include "runs.h"
#include "server.h"
#include "sqsqueue.h"
#include "store.h"

#define REASON_MAX 4096
#define OUTPUT_TAIL_MAX 16384

/* ---- wake lists ---- */

int queue_wake_add(struct queue_wake *w, const char *agent_id)
{
	if (!w)
		return 0;
	for (size_t i = 0; i < w->n; i++)
		if (strcmp(w->ids[i], agent_id) == 0)
			return 0;
	if (w->n == w->cap) {
		size_t cap = w->cap ? w->cap * 2 : 16;
		void *p = realloc(w->ids, cap * sizeof *w->ids);
		if (!p)
			return -1;
		w->ids = p;
		w->cap = cap;
	}
	snprintf(w->ids[w->n++], sizeof w->ids[0], "%s", agent_id);
	return 0;
}

void queue_wake_free(struct queue_wake *w)
{
	free(w->ids);
	memset(w, 0, sizeof *w);
}

/* ---- inside store operations ---- */

int queue_job_insert_tx(struct store_tx *tx, const char *agent, const char *app,
			const char *type, int64_t generation, const char *release,
			const char *rollout, char *id_out, struct queue_wake *w)
{
	int64_t now = clock_wall_ms();
	/* One-off runs (runs.h) neither replace nor are replaced by generations. */
	sqlite3_stmt *st = strcmp(type, "run") == 0
				   ? NULL
				   : store_stmt(tx, "UPDATE jobs SET state = 'done', "
						    "result = 'cancelled', "
						    "reason = 'replaced by a newer generation', "
						    "done_ms = ? WHERE agent = ? AND app = ? AND "
						    "state = 'queued' AND generation < ? AND "
						    "type != 'run'");
	if (!st && strcmp(type, "run") != 0)
		return -1;
	if (st) {
		sqlite3_bind_int64(st, 1, now);
		sqlite3_bind_text(st, 2, agent, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 3, app, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 4, generation);
		if (store_step(tx, st) != SQLITE_DONE)
			return -1;
	}
	char id[32];
	if (auth_new_id(id, sizeof id, "j_") < 0)
		return err_set(&tx->err, "no randomness");
	st = store_stmt(tx, "INSERT INTO jobs(id, agent, app, type, generation, release, rollout, "
			    "state, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?)");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, agent, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, app, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, type, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 5, generation);
	store_bind_text(st, 6, release);
	store_bind_text(st, 7, rollout);
	sqlite3_bind_int64(st, 8, now);
	if (store_step(tx, st) != SQLITE_DONE)
		return -1;
	if (strcmp(type, "deploy") == 0) {
		st = store_stmt(tx, "INSERT INTO agent_apps(agent, app, generation, release, state, "
				    "updated_ms) VALUES (?, ?, ?, ?, 'pending', ?) "
				    "ON CONFLICT(agent, app) DO UPDATE SET "
				    "generation = max(generation, excluded.generation), "
				    "release = CASE WHEN excluded.generation >= generation "
				    "THEN excluded.release ELSE release END, "
				    "state = 'pending', updated_ms = excluded.updated_ms");
		if (!st)
			return -1;
		sqlite3_bind_text(st, 1, agent, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, app, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 3, generation);
		store_bind_text(st, 4, release);
		sqlite3_bind_int64(st, 5, now);
		if (store_step(tx, st) != SQLITE_DONE)
			return -1;
	}
	if (id_out)
		snprintf(id_out, 32, "%s", id);
	if (queue_wake_add(w, agent) < 0)
		return err_set(&tx->err, "out of memory");
	return 0;
}

struct lease_row {
	char id[72];
	char type[16];
	char app[48];
	int64_t generation;
	char release[72];
	int64_t attempt;
};

int queue_lease_tx(struct store_tx *tx, struct coord *c, const char *agent, int max,
		   cJSON *jobs)
{
	struct lease_row rows[QUEUE_JOBS_PER_POLL];
	if (max < 1)
		max = 1;
	if (max > QUEUE_JOBS_PER_POLL)
		max = QUEUE_JOBS_PER_POLL;
	sqlite3_stmt *st = store_stmt(tx, "SELECT id, type, app, generation, coalesce(release, ''), "
					  "attempt FROM jobs WHERE agent = ? AND state = 'queued' "
					  "ORDER BY created_ms, rowid LIMIT ?");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, agent, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 2, max);
	int n = 0, rc = SQLITE_DONE;
	while (n < max && (rc = store_step(tx, st)) == SQLITE_ROW) {
		struct lease_row *r = &rows[n++];
		snprintf(r->id, sizeof r->id, "%s", store_col_text(st, 0));
		snprintf(r->type, sizeof r->type, "%s", store_col_text(st, 1));
		snprintf(r->app, sizeof r->app, "%s", store_col_text(st, 2));
		r->generation = sqlite3_column_int64(st, 3);
		snprintf(r->release, sizeof r->release, "%s", store_col_text(st, 4));
		r->attempt = sqlite3_column_int64(st, 5);
	}
	sqlite3_reset(st);
	if (rc < 0)
		return -1;
	int64_t lease_ms = config_ms(c->cfg, "queue.lease");
	int64_t expires = clock_wall_ms() + lease_ms;
	for (int i = 0; i < n; i++) {
		struct lease_row *r = &rows[i];
		cJSON *spec = NULL;
		if (r->release[0]) {
			spec = releases_spec_tx(tx, c->master_key, r->release);
			if (!spec) {
				/* A job whose release cannot be read would fail forever. */
				log_error("queue.job_unusable", "job=%s release=%s error=\"%s\"", r->id,
					  r->release, tx->err.msg);
				sqlite3_stmt *bad = store_stmt(
					tx, "UPDATE jobs SET state = 'done', result = 'cancelled', "
					    "reason = 'release unreadable', done_ms = ? WHERE id = ?");
				if (!bad)
					return -1;
				sqlite3_bind_int64(bad, 1, clock_wall_ms());
				sqlite3_bind_text(bad, 2, r->id, -1, SQLITE_STATIC);
				if (store_step(tx, bad) != SQLITE_DONE)
					return -1;
				tx->err.msg[0] = '\0';
				continue;
			}
		}
		char lease[32];
		if (auth_new_id(lease, sizeof lease, "l_") < 0) {
			cJSON_Delete(spec);
			return err_set(&tx->err, "no randomness");
		}
		sqlite3_stmt *up = store_stmt(
			tx, "UPDATE jobs SET state = 'leased', attempt = attempt + 1, lease_id = ?1, "
			    "lease_expires_ms = ?2, leases = CASE WHEN leases = '' THEN ?1 "
			    "ELSE leases || ' ' || ?1 END WHERE id = ?3");
		if (!up) {
			cJSON_Delete(spec);
			return -1;
		}
		sqlite3_bind_text(up, 1, lease, -1, SQLITE_STATIC);
		sqlite3_bind_int64(up, 2, expires);
		sqlite3_bind_text(up, 3, r->id, -1, SQLITE_STATIC);
		if (store_step(tx, up) != SQLITE_DONE) {
			cJSON_Delete(spec);
			return -1;
		}
		cJSON *j = cJSON_CreateObject();
		if (!j) {
			cJSON_Delete(spec);
			return err_set(&tx->err, "out of memory");
		}
		cJSON_AddStringToObject(j, "id", r->id);
		cJSON_AddStringToObject(j, "type", r->type);
		cJSON_AddStringToObject(j, "app", r->app);
		cJSON_AddNumberToObject(j, "generation", (double)r->generation);
		cJSON_AddStringToObject(j, "lease_id", lease);
		cJSON_AddNumberToObject(j, "lease_expires_in_s", (double)(lease_ms / 1000));
		cJSON_AddNumberToObject(j, "attempt", (double)(r->attempt + 1));
		if (spec)
			cJSON_AddItemToObject(j, "release", spec);
		else
			cJSON_AddNullToObject(j, "release");
		cJSON_AddItemToArray(jobs, j);
		if (strcmp(r->type, "run") == 0 &&
		    runs_job_leased_tx(tx, r->id, r->attempt + 1, j) < 0)
			return -1;
	}
	return 0;
}

int queue_unlease_tx(struct store_tx *tx, const cJSON *jobs)
{
	const cJSON *j;
	cJSON_ArrayForEach(j, jobs)
	{
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(j, "id");
		const cJSON *lease = cJSON_GetObjectItemCaseSensitive(j, "lease_id");
		if (!cJSON_IsString(id) || !cJSON_IsString(lease))
			continue;
		/* Undo exactly that lease: attempt back, lease forgotten from the history. */
		sqlite3_stmt *st = store_stmt(
			tx, "UPDATE jobs SET state = 'queued', attempt = attempt - 1, lease_id = NULL, "
			    "lease_expires_ms = NULL, leases = trim(replace(' ' || leases || ' ', "
			    "' ' || ?1 || ' ', ' ')) WHERE id = ?2 AND state = 'leased' AND "
			    "lease_id = ?1");
		if (!st)
			return -1;
		sqlite3_bind_text(st, 1, lease->valuestring, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, id->valuestring, -1, SQLITE_STATIC);
		if (store_step(tx, st) != SQLITE_DONE)
			return -1;
	}
	return 0;
}

static int lease_in_history(const char *history, const char *lease)
{
	size_t n = strlen(lease);
	if (n == 0)
		return 0;
	for (const char *p = history; (p = strstr(p, lease)) != NULL; p += n) {
		int starts = p == history || p[-1] == ' ';
		int ends = p[n] == '\0' || p[n] == ' ';
		if (starts && ends)
			return 1;
	}
	return 0;
}

struct job_row {
	char agent[72];
	char app[48];
	char type[16];
	int64_t generation;
	char rollout[72];
	char state[16];
	char result[16];
	int64_t attempt;
	char lease_id[32];
	int64_t lease_expires_ms;
	char *leases;
};

/* 1 found, 0 not, -1 error. row->leases is malloc'ed (free it). */
static int job_load(struct store_tx *tx, const char *id, struct job_row *row)
{
	memset(row, 0, sizeof *row);
	sqlite3_stmt *st;
	int rc = store_step_text(tx, "SELECT agent, app, type, generation, "
				     "coalesce(rollout, ''), state, coalesce(result, ''), "
				     "attempt, coalesce(lease_id, ''), "
				     "coalesce(lease_expires_ms, 0), leases FROM jobs WHERE id = ?",
				 id, &st);
	if (rc != SQLITE_ROW)
		return rc < 0 ? -1 : 0;
	snprintf(row->agent, sizeof row->agent, "%s", store_col_text(st, 0));
	snprintf(row->app, sizeof row->app, "%s", store_col_text(st, 1));
	snprintf(row->type, sizeof row->type, "%s", store_col_text(st, 2));
	row->generation = sqlite3_column_int64(st, 3);
	snprintf(row->rollout, sizeof row->rollout, "%s", store_col_text(st, 4));
	snprintf(row->state, sizeof row->state, "%s", store_col_text(st, 5));
	snprintf(row->result, sizeof row->result, "%s", store_col_text(st, 6));
	row->attempt = sqlite3_column_int64(st, 7);
	snprintf(row->lease_id, sizeof row->lease_id, "%s", store_col_text(st, 8));
	row->lease_expires_ms = sqlite3_column_int64(st, 9);
	row->leases = strdup(store_col_text(st, 10));
	sqlite3_reset(st);
	if (!row->leases)
		return err_set(&tx->err, "out of memory");
	return 1;
}

/* What a finished job tells about the agent's copy of the app. */
static int note_applied(struct store_tx *tx, const char *agent, const struct job_row *job,
			const char *result)
{
	if (strcmp(job->type, "deploy") != 0)
		return 0;
	sqlite3_stmt *st;
	if (strcmp(result, "succeeded") == 0) {
		st = store_stmt(tx, "UPDATE agent_apps SET applied_generation = "
				    "max(applied_generation, ?1), state = CASE WHEN generation <= ?1 "
				    "THEN 'converged' ELSE state END, updated_ms = ?2 "
				    "WHERE agent = ?3 AND app = ?4");
	} else if (strcmp(result, "failed") == 0) {
		st = store_stmt(tx, "UPDATE agent_apps SET state = CASE WHEN generation <= ?1 "
				    "THEN 'failed' ELSE state END, updated_ms = ?2 "
				    "WHERE agent = ?3 AND app = ?4");
	} else {
		return 0;
	}
	if (!st)
		return -1;
	sqlite3_bind_int64(st, 1, job->generation);
	sqlite3_bind_int64(st, 2, clock_wall_ms());
	sqlite3_bind_text(st, 3, agent, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, job->app, -1, SQLITE_STATIC);
	return store_step(tx, st) == SQLITE_DONE ? 0 : -1;
}

int queue_ack_tx(struct store_tx *tx, struct coord *c, const char *agent, const char *job,
		 const struct queue_ack *ack, enum queue_status *status, char *msg, size_t cap,
		 struct queue_wake *w)
{
	struct job_row row;
	*status = QUEUE_OK;
	msg[0] = '\0';
	int rc = job_load(tx, job, &row);
	if (rc < 0)
		return -1;
	if (rc == 0 || strcmp(row.agent, agent) != 0) {
		free(row.leases);
		*status = QUEUE_NOT_FOUND;
		snprintf(msg, cap, "no job %s for this agent", job);
		return 0;
	}
	rc = 0;
	if (!lease_in_history(row.leases, ack->lease_id)) {
		*status = QUEUE_CONFLICT;
		snprintf(msg, cap, "lease %s was never issued for job %s", ack->lease_id, job);
	} else if (ack->generation >= 0 && ack->generation != row.generation) {
		*status = QUEUE_CONFLICT;
		snprintf(msg, cap, "job %s is generation %lld, not %lld", job,
			 (long long)row.generation, (long long)ack->generation);
	} else if (strcmp(row.state, "done") == 0) {
		if (strcmp(row.result, ack->result) == 0) {
			/* The same ack again: idempotent. */
		} else if (strcmp(row.result, "cancelled") == 0) {
			/* We dropped it for a newer generation after handing it out: the
			 * agent's word on what it did still counts for its state. */
			rc = note_applied(tx, agent, &row, ack->result);
		} else if (strcmp(row.result, "expired") == 0) {
			*status = QUEUE_CONFLICT;
			snprintf(msg, cap, "job %s failed: its lease expired %lld times", job,
				 (long long)row.attempt);
		} else {
			*status = QUEUE_CONFLICT;
			snprintf(msg, cap, "job %s was already acknowledged as %s", job, row.result);
		}
	} else {
		sqlite3_stmt *st = store_stmt(
			tx, "UPDATE jobs SET state = 'done', result = ?, reason = ?, output_tail = ?, "
			    "duration_ms = ?, done_ms = ?, lease_expires_ms = NULL WHERE id = ?");
		if (!st) {
			free(row.leases);
			return -1;
		}
		sqlite3_bind_text(st, 1, ack->result, -1, SQLITE_STATIC);
		store_bind_text(st, 2, ack->reason);
		if (ack->output_tail) {
			size_t len = strlen(ack->output_tail);
			const char *tail = ack->output_tail;
			if (len > OUTPUT_TAIL_MAX) {
				tail += len - OUTPUT_TAIL_MAX;
				/* Start on a UTF-8 boundary. */
				while (*tail && ((unsigned char)*tail & 0xC0) == 0x80)
					tail++;
			}
			sqlite3_bind_text(st, 3, tail, -1, SQLITE_STATIC);
		} else {
			sqlite3_bind_null(st, 3);
		}
		if (ack->duration_ms >= 0)
			sqlite3_bind_int64(st, 4, ack->duration_ms);
		else
			sqlite3_bind_null(st, 4);
		sqlite3_bind_int64(st, 5, clock_wall_ms());
		sqlite3_bind_text(st, 6, job, -1, SQLITE_STATIC);
		if (store_step(tx, st) != SQLITE_DONE ||
		    note_applied(tx, agent, &row, ack->result) < 0) {
			rc = -1;
		} else if (strcmp(ack->result, "failed") == 0 &&
			   rollout_event_tx(tx, row.app, "job.failed",
					    "job=%s agent=%s generation=%lld reason=\"%.600s\"", job,
					    agent, (long long)row.generation,
					    ack->reason ? ack->reason : "") < 0) {
			rc = -1;
		} else if (row.rollout[0]) {
			/* A success changes nothing while other live agents of the rollout
			 * are still at it: skip the re-evaluation (it reads every job of
			 * the rollout, which a thousand acks would make quadratic). */
			int busy = 0;
			if (strcmp(ack->result, "failed") != 0 &&
			    (busy = rollout_has_pending_tx(tx, row.rollout)) < 0)
				rc = -1;
			else if (!busy)
				rc = rollout_step_tx(tx, c, row.rollout, w);
		}
		if (rc == 0 && strcmp(row.type, "run") == 0)
			rc = runs_job_done_tx(tx, c, job, ack->result, ack->exit_code, ack->reason,
					      ack->output_tail, w);
	}
	free(row.leases);
	return rc;
}

int queue_extend_tx(struct store_tx *tx, struct coord *c, const char *agent, const char *job,
		    const char *lease_id, int64_t extend_s, int64_t *expires_in_s,
		    enum queue_status *status, char *msg, size_t cap)
{
	(void)c;
	struct job_row row;
	*status = QUEUE_OK;
	msg[0] = '\0';
	int rc = job_load(tx, job, &row);
	if (rc < 0)
		return -1;
	free(row.leases);
	int64_t now = clock_wall_ms();
	if (rc == 0 || strcmp(row.agent, agent) != 0) {
		*status = QUEUE_NOT_FOUND;
		snprintf(msg, cap, "no job %s for this agent", job);
		return 0;
	}
	if (strcmp(row.state, "done") == 0) {
		*status = QUEUE_CONFLICT;
		snprintf(msg, cap, "job %s is already finished (%s)", job, row.result);
		return 0;
	}
	if (strcmp(row.state, "leased") != 0 || strcmp(row.lease_id, lease_id) != 0 ||
	    row.lease_expires_ms <= now) {
		*status = QUEUE_LEASE_LOST;
		snprintf(msg, cap, "lease %s of job %s expired; the job went back to the queue",
			 lease_id, job);
		return 0;
	}
	if (extend_s < 1)
		extend_s = 1;
	if (extend_s > QUEUE_EXTEND_MAX_S)
		extend_s = QUEUE_EXTEND_MAX_S;
	sqlite3_stmt *st = store_stmt(tx, "UPDATE jobs SET lease_expires_ms = ? WHERE id = ?");
	if (!st)
		return -1;
	sqlite3_bind_int64(st, 1, now + extend_s * 1000);
	sqlite3_bind_text(st, 2, job, -1, SQLITE_STATIC);
	if (store_step(tx, st) != SQLITE_DONE)
		return -1;
	*expires_in_s = extend_s;
	return 0;
}

struct expired_row {
	char id[72];
	char agent[72];
	char app[48];
	int64_t attempt;
	char rollout[72];
};

int queue_expire_tx(struct store_tx *tx, struct coord *c, int64_t now_ms, struct queue_wake *w)
{
	/* Run jobs first: they end at their first expiry (at most once). */
	if (runs_expire_tx(tx, c, now_ms, w) < 0)
		return -1;
	sqlite3_stmt *st = store_stmt(tx, "SELECT id, agent, app, attempt, coalesce(rollout, '') "
					  "FROM jobs WHERE state = 'leased' AND lease_expires_ms <= ? "
					  "LIMIT 1000");
	if (!st)
		return -1;
	sqlite3_bind_int64(st, 1, now_ms);
	struct expired_row *rows = NULL;
	size_t n = 0, cap = 0;
	int rc;
	while ((rc = store_step(tx, st)) == SQLITE_ROW) {
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			void *p = realloc(rows, cap * sizeof *rows);
			if (!p) {
				free(rows);
				return err_set(&tx->err, "out of memory");
			}
			rows = p;
		}
		struct expired_row *r = &rows[n++];
		snprintf(r->id, sizeof r->id, "%s", store_col_text(st, 0));
		snprintf(r->agent, sizeof r->agent, "%s", store_col_text(st, 1));
		snprintf(r->app, sizeof r->app, "%s", store_col_text(st, 2));
		r->attempt = sqlite3_column_int64(st, 3);
		snprintf(r->rollout, sizeof r->rollout, "%s", store_col_text(st, 4));
	}
	if (rc != SQLITE_DONE) {
		free(rows);
		return -1;
	}
	int64_t max_attempts = config_int(c->cfg, "queue.max_attempts");
	rc = 0;
	for (size_t i = 0; rc == 0 && i < n; i++) {
		struct expired_row *r = &rows[i];
		if (r->attempt >= max_attempts) {
			char reason[64];
			snprintf(reason, sizeof reason, "lease expired %lld times",
				 (long long)r->attempt);
			st = store_stmt(tx, "UPDATE jobs SET state = 'done', result = 'expired', "
					    "reason = ?, done_ms = ?, lease_id = NULL, "
					    "lease_expires_ms = NULL WHERE id = ?");
			if (!st) {
				rc = -1;
				break;
			}
			sqlite3_bind_text(st, 1, reason, -1, SQLITE_STATIC);
			sqlite3_bind_int64(st, 2, now_ms);
			sqlite3_bind_text(st, 3, r->id, -1, SQLITE_STATIC);
			if (store_step(tx, st) != SQLITE_DONE ||
			    rollout_event_tx(tx, r->app, "job.expired", "job=%s agent=%s reason=\"%s\"",
					     r->id, r->agent, reason) < 0)
				rc = -1;
			else if (r->rollout[0])
				rc = rollout_step_tx(tx, c, r->rollout, w);
		} else {
			st = store_stmt(tx, "UPDATE jobs SET state = 'queued', lease_id = NULL, "
					    "lease_expires_ms = NULL WHERE id = ?");
			if (!st) {
				rc = -1;
				break;
			}
			sqlite3_bind_text(st, 1, r->id, -1, SQLITE_STATIC);
			if (store_step(tx, st) != SQLITE_DONE)
				rc = -1;
			else if (queue_wake_add(w, r->agent) < 0)
				rc = err_set(&tx->err, "out of memory");
			else
				log_info("queue.lease_expired", "job=%s agent=%s attempt=%lld", r->id,
					 r->agent, (long long)r->attempt);
		}
	}
	free(rows);
	return rc;
}

/* ---- the loop side: long polls ---- */

struct waiter {
	struct queue *q;
	struct agent *ag;
	struct server_req *r;    /* NULL once answered or gone */
	ev_timer timer;
	int max;
	int busy;                /* a lease operation is running */
	int again;               /* woken while busy: lease again afterwards */
	int timed_out;           /* the wait ran out while busy */
	int no_lease;            /* draining: hold the poll, hand out nothing */
	int one_look;            /* wait=0: answer after the first lease attempt */
	struct waiter *prev, *next;
};

struct queue {
	struct coord *c;
	struct waiter *waiters;  /* every waiter with a request */
	size_t nwaiting;
	ev_timer expiry;
	int expiry_busy;
	int started;
};

struct lease_op {
	struct queue *q;
	struct waiter *w;
	char agent[72];
	int max;
	cJSON *jobs;
};

static void waiter_unlink(struct waiter *w)
{
	struct queue *q = w->q;
	if (w->prev)
		w->prev->next = w->next;
	else if (q->waiters == w)
		q->waiters = w->next;
	if (w->next)
		w->next->prev = w->prev;
	w->prev = w->next = NULL;
	if (q->nwaiting > 0)
		q->nwaiting--;
	if (w->ag && w->ag->waiter == w)
		w->ag->waiter = NULL;
	ev_timer_stop(q->c->loop, &w->timer);
}

/* The request is answered or gone: the waiter leaves, freed unless an
 * operation still points at it. */
static void waiter_done(struct waiter *w)
{
	w->r = NULL;
	waiter_unlink(w);
	if (!w->busy)
		free(w);
}

static int unlease_tx(struct store_tx *tx, void *arg)
{
	return queue_unlease_tx(tx, arg);
}

static void unlease_done(int rc, void *arg)
{
	if (rc < 0)
		log_warn("queue.unlease_failed", "reason=\"the lease expires instead\"");
	cJSON_Delete(arg);
}

/* Hands jobs nobody received back to the queue. Takes jobs. */
static void give_back(struct queue *q, cJSON *jobs)
{
	if (!jobs || cJSON_GetArraySize(jobs) == 0 ||
	    store_submit(q->c->store, unlease_tx, unlease_done, jobs) < 0)
		cJSON_Delete(jobs);
}

static void answer(struct waiter *w, cJSON *jobs)
{
	cJSON *body = cJSON_CreateObject();
	cJSON *arr = jobs ? jobs : cJSON_CreateArray();
	if (!body || !arr) {
		cJSON_Delete(body);
		server_respond_error(w->r, 503, "unavailable", "out of memory");
		give_back(w->q, jobs);
		waiter_done(w);
		return;
	}
	cJSON_AddItemToObject(body, "jobs", arr);
	int rc = server_respond_json(w->r, 200, body);
	if (rc < 0 && jobs) {
		/* The client went away in this very loop iteration. */
		cJSON_DetachItemViaPointer(body, arr);
		give_back(w->q, arr);
	}
	cJSON_Delete(body);
	waiter_done(w);
}

static int lease_tx(struct store_tx *tx, void *arg)
{
	struct lease_op *op = arg;
	return queue_lease_tx(tx, op->q->c, op->agent, op->max, op->jobs);
}

static void lease_start(struct waiter *w);

static void lease_done(int rc, void *arg)
{
	struct lease_op *op = arg;
	struct waiter *w = op->w;
	cJSON *jobs = op->jobs;
	free(op);
	w->busy = 0;
	if (!w->r) { /* answered or gone meanwhile */
		give_back(w->q, rc == 0 ? jobs : NULL);
		if (rc < 0)
			cJSON_Delete(jobs);
		free(w);
		return;
	}
	if (rc < 0) {
		cJSON_Delete(jobs);
		server_respond_error(w->r, 503, "unavailable", "the store is busy; poll again");
		waiter_done(w);
		return;
	}
	if (cJSON_GetArraySize(jobs) > 0 || w->timed_out) {
		answer(w, jobs);
		return;
	}
	cJSON_Delete(jobs);
	if (w->again) {
		w->again = 0;
		lease_start(w);
		return;
	}
	if (w->one_look)
		answer(w, NULL);
}

static void lease_start(struct waiter *w)
{
	struct lease_op *op = calloc(1, sizeof *op);
	cJSON *jobs = cJSON_CreateArray();
	if (!op || !jobs) {
		free(op);
		cJSON_Delete(jobs);
		return; /* the poll ends empty on its timer */
	}
	op->q = w->q;
	op->w = w;
	op->max = w->max;
	op->jobs = jobs;
	snprintf(op->agent, sizeof op->agent, "%s", w->ag->id);
	if (store_submit(w->q->c->store, lease_tx, lease_done, op) < 0) {
		cJSON_Delete(jobs);
		free(op);
		return;
	}
	w->busy = 1;
}

static void waiter_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
	(void)loop;
	(void)revents;
	struct waiter *w = t->data;
	ev_timer_stop(w->q->c->loop, t);
	if (w->busy) {
		w->timed_out = 1;
		return;
	}
	answer(w, NULL);
}

static void waiter_abort(struct server_req *r, void *arg)
{
	(void)r;
	waiter_done(arg);
}

static void wake_one(struct queue *q, struct agent *ag)
{
	(void)q;
	struct waiter *w = ag ? ag->waiter : NULL;
	if (!w || !w->r || w->no_lease)
		return;
	if (w->busy)
		w->again = 1;
	else
		lease_start(w);
}

void queue_wake_agent(struct queue *q, const char *agent_id)
{
	if (q && q->c->sqsqueue) { /* queue.backend = sqs: jobs travel through SQS */
		sqsqueue_wake(q->c->sqsqueue, agent_id);
		return;
	}
	if (q && q->c->agents)
		wake_one(q, agents_find(q->c->agents, agent_id));
}

void queue_wake(struct queue *q, const struct queue_wake *w)
{
	if (!q || !w)
		return;
	for (size_t i = 0; i < w->n; i++)
		queue_wake_agent(q, w->ids[i]);
}

static int query_int(struct server_req *r, const char *name, int64_t def, int64_t *out)
{
	char v[24];
	int rc = server_query(r, name, v, sizeof v);
	if (rc == 0) {
		*out = def;
		return 0;
	}
	char *end = NULL;
	long long n = rc > 0 ? strtoll(v, &end, 10) : 0;
	if (rc < 0 || !v[0] || *end || n < 0)
		return -1;
	*out = n;
	return 0;
}

static void poll_jobs(struct server_req *r, void *arg)
{
	struct queue *q = arg;
	struct agent *ag = agents_find(q->c->agents, r->who.agent_id);
	int64_t wait_max = config_ms(q->c->cfg, "queue.poll_wait_max") / 1000;
	if (wait_max > QUEUE_WAIT_MAX_S)
		wait_max = QUEUE_WAIT_MAX_S;
	int64_t wait, max;
	if (query_int(r, "wait", wait_max, &wait) < 0 ||
	    query_int(r, "max", QUEUE_JOBS_PER_POLL, &max) < 0) {
		server_respond_error(r, 400, "bad_request", "wait and max are non-negative integers");
		return;
	}
	if (!ag) {
		server_respond_error(r, 404, "not_found", "unknown agent: register again");
		return;
	}
	if (wait > wait_max)
		wait = wait_max;
	if (max < 1)
		max = 1;
	if (max > QUEUE_JOBS_PER_POLL)
		max = QUEUE_JOBS_PER_POLL;
	agents_seen(q->c->agents, ag);
	if (ag->waiter) /* one poll per agent: the new one replaces the old */
		answer(ag->waiter, NULL);
	struct waiter *w = calloc(1, sizeof *w);
	if (!w) {
		server_respond_error(r, 503, "unavailable", "out of memory");
		return;
	}
	w->q = q;
	w->ag = ag;
	w->r = r;
	w->max = (int)max;
	w->no_lease = ag->state == AGENT_DRAINING;
	w->one_look = wait == 0;
	w->next = q->waiters;
	if (q->waiters)
		q->waiters->prev = w;
	q->waiters = w;
	q->nwaiting++;
	ag->waiter = w;
	server_on_abort(r, waiter_abort, w);
	ev_timer_init(&w->timer, waiter_timeout, (double)wait, 0.0);
	w->timer.data = w;
	if (wait > 0)
		ev_timer_start(q->c->loop, &w->timer);
	if (!w->no_lease)
		lease_start(w);
	if (!w->busy && wait == 0)
		answer(w, NULL);
}

/* ---- extend and ack ---- */

struct call_op {
	struct queue *q;
	struct server_req *r;    /* NULL when the client went away */
	char agent[72];
	char job[72];
	char lease[72];
	int64_t extend_s;
	int64_t expires_in_s;
	struct queue_ack ack;
	cJSON *body;             /* owns the strings ack points to */
	enum queue_status status;
	char msg[256];
	struct queue_wake wake;
};

static void call_abort(struct server_req *r, void *arg)
{
	(void)r;
	struct call_op *op = arg;
	op->r = NULL;
}

static void respond_status(struct call_op *op, cJSON *ok_body)
{
	struct server_req *r = op->r;
	switch (op->status) {
	case QUEUE_OK:
		server_respond_json(r, 200, ok_body);
		break;
	case QUEUE_NOT_FOUND:
		server_respond_error(r, 404, "not_found", "%s", op->msg);
		break;
	case QUEUE_CONFLICT:
		server_respond_error(r, 409, "conflict", "%s", op->msg);
		break;
	case QUEUE_LEASE_LOST:
		server_respond_error(r, 410, "lease_lost", "%s", op->msg);
		break;
	}
}

static void call_free(struct call_op *op)
{
	cJSON_Delete(op->body);
	queue_wake_free(&op->wake);
	free(op);
}

static int extend_tx(struct store_tx *tx, void *arg)
{
	struct call_op *op = arg;
	return queue_extend_tx(tx, op->q->c, op->agent, op->job, op->lease, op->extend_s,
			       &op->expires_in_s, &op->status, op->msg, sizeof op->msg);
}

static void extend_done(int rc, void *arg)
{
	struct call_op *op = arg;
	if (op->r) {
		server_on_abort(op->r, NULL, NULL);
		if (rc < 0) {
			server_respond_error(op->r, 503, "unavailable", "the store is busy; retry");
		} else {
			cJSON *b = cJSON_CreateObject();
			cJSON_AddNumberToObject(b, "lease_expires_in_s", (double)op->expires_in_s);
			respond_status(op, b);
			cJSON_Delete(b);
		}
	}
	call_free(op);
}

static struct call_op *call_new(struct queue *q, struct server_req *r)
{
	struct call_op *op = calloc(1, sizeof *op);
	if (!op) {
		server_respond_error(r, 503, "unavailable", "out of memory");
		return NULL;
	}
	op->q = q;
	op->r = r;
	snprintf(op->agent, sizeof op->agent, "%s", r->who.agent_id);
	snprintf(op->job, sizeof op->job, "%s", server_param(r, "job_id"));
	return op;
}

static void submit_call(struct call_op *op, store_fn fn, store_done_fn done)
{
	if (store_submit(op->q->c->store, fn, done, op) < 0) {
		server_respond_error(op->r, 503, "unavailable", "the store is busy; retry");
		call_free(op);
		return;
	}
	server_on_abort(op->r, call_abort, op);
}

static void seen(struct queue *q, struct server_req *r)
{
	struct agent *ag = agents_find(q->c->agents, r->who.agent_id);
	if (ag)
		agents_seen(q->c->agents, ag);
}

static void extend_job(struct server_req *r, void *arg)
{
	struct queue *q = arg;
	seen(q, r);
	cJSON *body = server_json_body(r);
	if (!body)
		return;
	struct err err;
	const char *lease;
	int64_t extend_s;
	int64_t def = config_ms(q->c->cfg, "queue.lease") / 1000;
	if (json_get_string(body, NULL, "lease_id", 64, &lease, &err) < 0 ||
	    json_get_int_opt(body, NULL, "extend_s", 1, QUEUE_EXTEND_MAX_S, def, &extend_s, &err) <
		    0) {
		cJSON_Delete(body);
		server_respond_error(r, 400, "bad_request", "%s", err.msg);
		return;
	}
	struct call_op *op = call_new(q, r);
	if (!op) {
		cJSON_Delete(body);
		return;
	}
	snprintf(op->lease, sizeof op->lease, "%s", lease);
	op->extend_s = extend_s;
	cJSON_Delete(body);
	submit_call(op, extend_tx, extend_done);
}

static int ack_tx(struct store_tx *tx, void *arg)
{
	struct call_op *op = arg;
	return queue_ack_tx(tx, op->q->c, op->agent, op->job, &op->ack, &op->status, op->msg,
			    sizeof op->msg, &op->wake);
}

static void ack_done(int rc, void *arg)
{
	struct call_op *op = arg;
	if (rc == 0)
		queue_wake(op->q, &op->wake);
	if (op->r) {
		server_on_abort(op->r, NULL, NULL);
		if (rc < 0) {
			server_respond_error(op->r, 503, "unavailable", "the store is busy; retry");
		} else {
			cJSON *b = cJSON_CreateObject();
			cJSON_AddStringToObject(b, "job", op->job);
			cJSON_AddStringToObject(b, "result", op->ack.result);
			respond_status(op, b);
			cJSON_Delete(b);
		}
	}
	call_free(op);
}

static void ack_job(struct server_req *r, void *arg)
{
	struct queue *q = arg;
	seen(q, r);
	cJSON *body = server_json_body(r);
	if (!body)
		return;
	struct err err;
	struct queue_ack ack = {.generation = -1, .duration_ms = -1, .exit_code = -1};
	if (json_get_string(body, NULL, "lease_id", 64, &ack.lease_id, &err) < 0 ||
	    json_get_string(body, NULL, "result", 16, &ack.result, &err) < 0 ||
	    json_get_int_opt(body, NULL, "generation", 0, JSON_INT_LIMIT, -1, &ack.generation,
			     &err) < 0 ||
	    json_get_string_opt(body, NULL, "reason", REASON_MAX, NULL, &ack.reason, &err) < 0 ||
	    json_get_string_opt(body, NULL, "output_tail", (size_t)256 << 10, NULL,
				&ack.output_tail, &err) < 0 ||
	    json_get_int_opt(body, NULL, "duration_ms", 0, JSON_INT_LIMIT, -1, &ack.duration_ms,
			     &err) < 0 ||
	    json_get_int_opt(body, NULL, "exit_code", 0, 255, -1, &ack.exit_code, &err) < 0) {
		cJSON_Delete(body);
		server_respond_error(r, 400, "bad_request", "%s", err.msg);
		return;
	}
	if (strcmp(ack.result, "succeeded") != 0 && strcmp(ack.result, "failed") != 0 &&
	    strcmp(ack.result, "superseded") != 0) {
		cJSON_Delete(body);
		server_respond_error(r, 400, "bad_request",
				     "result: expected succeeded, failed or superseded");
		return;
	}
	struct call_op *op = call_new(q, r);
	if (!op) {
		cJSON_Delete(body);
		return;
	}
	op->ack = ack;
	op->body = body;
	submit_call(op, ack_tx, ack_done);
}

/* ---- expiry ---- */

struct expire_op {
	struct queue *q;
	int64_t now;
	struct queue_wake wake;
};

static int expire_tx(struct store_tx *tx, void *arg)
{
	struct expire_op *op = arg;
	return queue_expire_tx(tx, op->q->c, op->now, &op->wake);
}

static void expire_done(int rc, void *arg)
{
	struct expire_op *op = arg;
	op->q->expiry_busy = 0;
	if (rc == 0)
		queue_wake(op->q, &op->wake);
	queue_wake_free(&op->wake);
	free(op);
}

void queue_expire_now(struct queue *q)
{
	if (q->expiry_busy)
		return;
	struct expire_op *op = calloc(1, sizeof *op);
	if (!op)
		return;
	op->q = q;
	op->now = clock_wall_ms();
	if (store_submit(q->c->store, expire_tx, expire_done, op) < 0) {
		free(op);
		return;
	}
	q->expiry_busy = 1;
}

static void expiry_tick(struct ev_loop *loop, ev_timer *t, int revents)
{
	(void)loop;
	(void)revents;
	queue_expire_now(t->data);
}

/* ---- life cycle ---- */

struct queue *queue_new(struct coord *c)
{
	struct queue *q = calloc(1, sizeof *q);
	if (!q)
		return NULL;
	q->c = c;
	ev_timer_init(&q->expiry, expiry_tick, 1.0, 1.0);
	q->expiry.data = q;
	return q;
}

void queue_start(struct queue *q)
{
	if (q->started)
		return;
	q->started = 1;
	ev_timer_start(q->c->loop, &q->expiry);
	ev_unref(q->c->loop); /* the timer alone does not keep the loop running */
}

size_t queue_waiting(const struct queue *q)
{
	return q->nwaiting;
}

void queue_shutdown(struct queue *q)
{
	if (!q)
		return;
	while (q->waiters)
		answer(q->waiters, NULL);
}

void queue_free(struct queue *q)
{
	if (!q)
		return;
	queue_shutdown(q);
	if (q->started) {
		ev_ref(q->c->loop);
		ev_timer_stop(q->c->loop, &q->expiry);
	}
	free(q);
}

int queue_register_routes(struct queue *q, struct server *srv)
{
	struct server_route routes[] = {
		{.method = "GET", .pattern = "/v1/agents/{agent_id}/jobs",
		 .auth = SERVER_AUTH_AGENT, .body = SERVER_BODY_NONE, .fn = poll_jobs, .arg = q},
		{.method = "POST", .pattern = "/v1/agents/{agent_id}/jobs/{job_id}/extend",
		 .auth = SERVER_AUTH_AGENT, .fn = extend_job, .arg = q},
		{.method = "POST", .pattern = "/v1/agents/{agent_id}/jobs/{job_id}/ack",
		 .auth = SERVER_AUTH_AGENT, .fn = ack_job, .arg = q},
	};
	for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
		if (server_add_route_ex(srv, &routes[i]) < 0)
			return -1;
	return 0;
}
