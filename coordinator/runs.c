#include "runs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "apiop.h"
#include "auth.h"
#include "clock.h"
#include "coord.h"
#include "json.h"
#include "log.h"
#include "queue.h"
#include "rollout.h"
#include "server.h"
#include "store.h"

#define RUN_COLS                                                                                   \
	"id, app, service, release, kind, rollout, agent, job, state, exit_code, reason, "        \
	"output_tail, timeout_s, who, created_ms, started_ms, ended_ms, command "

static const struct apiop_field run_fields[] = {
	{"id", APIOP_TEXT},          {"app", APIOP_TEXT},
	{"service", APIOP_TEXT},     {"release", APIOP_TEXT},
	{"kind", APIOP_TEXT},        {"rollout", APIOP_TEXT_OR_NULL},
	{"agent", APIOP_TEXT_OR_NULL}, {"job", APIOP_TEXT_OR_NULL},
	{"state", APIOP_TEXT},       {"exit_code", APIOP_INT_OR_NULL},
	{"reason", APIOP_TEXT_OR_NULL}, {"output_tail", APIOP_TEXT_OR_NULL},
	{"timeout_s", APIOP_INT},    {"who", APIOP_TEXT},
	{"created_ms", APIOP_INT},   {"started_ms", APIOP_INT_OR_NULL},
	{"ended_ms", APIOP_INT_OR_NULL}, {"command", APIOP_JSON},
};

int runs_check_command(const cJSON *command, const char *path, struct err *err)
{
	if (!cJSON_IsArray(command))
		return err_set(err, "%s: expected an array of strings", path);
	int n = cJSON_GetArraySize(command);
	if (n < 1 || n > RUNS_COMMAND_MAX)
		return err_set(err, "%s: expected 1..%d words", path, RUNS_COMMAND_MAX);
	int i = 0;
	const cJSON *w;
	cJSON_ArrayForEach(w, command)
	{
		if (!cJSON_IsString(w))
			return err_set(err, "%s[%d]: expected a string", path, i);
		size_t len = strlen(w->valuestring);
		if (len > RUNS_ARG_MAX)
			return err_set(err, "%s[%d]: longer than %d bytes", path, i, RUNS_ARG_MAX);
		if (json_utf8_check(w->valuestring, len, NULL) < 0)
			return err_set(err, "%s[%d]: not valid UTF-8", path, i);
		i++;
	}
	return 0;
}

/* ---- the release and its service ---- */

/* The release's spec services (a new array) and, when manifest is not NULL,
 * its manifest (a new tree or NULL). 1 found, 0 no such release of app. */
static int release_load(struct store_tx *tx, const char *app, const char *release,
			cJSON **services, cJSON **manifest)
{
	*services = NULL;
	if (manifest)
		*manifest = NULL;
	sqlite3_stmt *st;
	int rc = store_step_text2(tx, "SELECT spec, manifest FROM releases WHERE id = ? AND app = ?",
				  release, app, &st);
	if (rc != SQLITE_ROW)
		return rc < 0 ? -1 : 0;
	cJSON *spec = cJSON_Parse(store_col_text(st, 0));
	cJSON *svcs = cJSON_DetachItemFromObjectCaseSensitive(spec, "services");
	cJSON_Delete(spec);
	if (manifest && sqlite3_column_type(st, 1) != SQLITE_NULL)
		*manifest = cJSON_Parse(store_col_text(st, 1));
	sqlite3_reset(st);
	if (!cJSON_IsArray(svcs)) {
		cJSON_Delete(svcs);
		if (manifest) {
			cJSON_Delete(*manifest);
			*manifest = NULL;
		}
		return err_set(&tx->err, "release %s: unreadable spec", release);
	}
	*services = svcs;
	return 1;
}

static const cJSON *service_find(const cJSON *services, const char *name)
{
	const cJSON *s;
	cJSON_ArrayForEach(s, services)
	{
		const cJSON *n = cJSON_GetObjectItemCaseSensitive(s, "name");
		if (cJSON_IsString(n) && (!name || strcmp(n->valuestring, name) == 0))
			return s;
	}
	return NULL;
}

cJSON *runs_release_command_tx(struct store_tx *tx, const char *release_id)
{
	sqlite3_stmt *st;
	int rc = store_step_text(tx, "SELECT manifest FROM releases WHERE id = ?", release_id, &st);
	if (rc != SQLITE_ROW || sqlite3_column_type(st, 0) == SQLITE_NULL) {
		if (st)
			sqlite3_reset(st);
		return NULL;
	}
	cJSON *m = cJSON_Parse(store_col_text(st, 0));
	sqlite3_reset(st);
	cJSON *cmd = cJSON_DetachItemFromObjectCaseSensitive(m, "release");
	cJSON_Delete(m);
	struct err err;
	if (!cmd || runs_check_command(cmd, "release", &err) < 0) {
		cJSON_Delete(cmd);
		return NULL;
	}
	return cmd;
}

int runs_release_phase_wanted_tx(struct store_tx *tx, const char *release_id,
				 const char *trigger)
{
	if (!trigger || (strcmp(trigger, "build") != 0 && strcmp(trigger, "promote") != 0 &&
			 strcmp(trigger, "env") != 0))
		return 0;
	tx->err.msg[0] = '\0';
	cJSON *cmd = runs_release_command_tx(tx, release_id);
	if (!cmd)
		return tx->err.msg[0] ? -1 : 0;
	cJSON_Delete(cmd);
	return 1;
}

/* ---- creating ---- */

static int refuse(struct runs_result *res, int status, const char *fmt, const char *a,
		  const char *b)
{
	res->status = status;
	snprintf(res->message, sizeof res->message, fmt, a, b);
	return 0;
}

/* One live agent of the app's fleet, those already running the app first. */
static int pick_agent(struct store_tx *tx, const char *app, char *out, size_t cap)
{
	out[0] = '\0';
	sqlite3_stmt *st;
	int rc = store_step_text(
		tx, "SELECT g.id FROM agents g WHERE g.state = 'live' AND "
		    "g.fleet = (SELECT fleet FROM apps WHERE name = ?1) "
		    "ORDER BY EXISTS (SELECT 1 FROM agent_apps x WHERE x.agent = g.id AND "
		    "x.app = ?1 AND x.applied_generation > 0) DESC, random() LIMIT 1",
		app, &st);
	if (rc == SQLITE_ROW)
		snprintf(out, cap, "%s", store_col_text(st, 0));
	if (st)
		sqlite3_reset(st);
	return rc < 0 ? -1 : 0;
}

int runs_create_tx(struct store_tx *tx, struct coord *c, const struct runs_request *req,
		   struct runs_result *res, struct queue_wake *w)
{
	(void)c;
	memset(res, 0, sizeof *res);
	sqlite3_stmt *st;
	int rc = store_step_text(tx, "SELECT generation, coalesce(release, '') FROM apps "
				     "WHERE name = ?", req->app, &st);
	if (rc != SQLITE_ROW)
		return rc < 0 ? -1 : refuse(res, 404, "unknown app %s%s", req->app, "");
	int64_t app_gen = sqlite3_column_int64(st, 0);
	char release[72];
	snprintf(release, sizeof release, "%s", req->release ? req->release : store_col_text(st, 1));
	sqlite3_reset(st);
	if (!release[0])
		return refuse(res, 409, "app %s has no release yet%s", req->app, "");
	cJSON *services;
	rc = release_load(tx, req->app, release, &services, NULL);
	if (rc <= 0)
		return rc < 0 ? -1 : refuse(res, 404, "app %s has no release %s", req->app, release);
	const cJSON *svc = service_find(services, req->service);
	if (!svc) {
		cJSON_Delete(services);
		return refuse(res, 404, "release %s has no service %s", release,
			      req->service ? req->service : "");
	}
	char service[48];
	snprintf(service, sizeof service, "%s",
		 cJSON_GetObjectItemCaseSensitive(svc, "name")->valuestring);
	char *command = NULL;
	if (req->command) {
		command = cJSON_PrintUnformatted(req->command);
	} else {
		const cJSON *own = cJSON_GetObjectItemCaseSensitive(svc, "command");
		command = cJSON_IsArray(own) ? cJSON_PrintUnformatted(own) : strdup("null");
	}
	cJSON_Delete(services);
	if (!command)
		return err_set(&tx->err, "out of memory");
	if (pick_agent(tx, req->app, res->agent, sizeof res->agent) < 0) {
		free(command);
		return -1;
	}
	if (!res->agent[0]) {
		free(command);
		return refuse(res, 409, "no live agent of app %s's fleet to run it on%s", req->app,
			      "");
	}
	if (auth_new_id(res->id, sizeof res->id, RUNS_ID_PREFIX) < 0) {
		free(command);
		return err_set(&tx->err, "no randomness");
	}
	int64_t gen = req->generation > 0 ? req->generation : (app_gen > 0 ? app_gen : 1);
	int64_t timeout = req->timeout_s > 0 ? req->timeout_s : RUNS_TIMEOUT_DEFAULT_S;
	if (timeout > RUNS_TIMEOUT_MAX_S)
		timeout = RUNS_TIMEOUT_MAX_S;
	rc = queue_job_insert_tx(tx, res->agent, req->app, "run", gen, release, NULL, res->job, w);
	if (rc == 0) {
		st = store_stmt(tx, "INSERT INTO runs(id, app, service, release, command, kind, "
				    "rollout, agent, job, timeout_s, who, created_ms) "
				    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
		if (!st) {
			rc = -1;
		} else {
			sqlite3_bind_text(st, 1, res->id, -1, SQLITE_STATIC);
			sqlite3_bind_text(st, 2, req->app, -1, SQLITE_STATIC);
			sqlite3_bind_text(st, 3, service, -1, SQLITE_STATIC);
			sqlite3_bind_text(st, 4, release, -1, SQLITE_STATIC);
			sqlite3_bind_text(st, 5, command, -1, SQLITE_STATIC);
			sqlite3_bind_text(st, 6, req->kind ? req->kind : "run", -1, SQLITE_STATIC);
			store_bind_text(st, 7, req->rollout);
			sqlite3_bind_text(st, 8, res->agent, -1, SQLITE_STATIC);
			sqlite3_bind_text(st, 9, res->job, -1, SQLITE_STATIC);
			sqlite3_bind_int64(st, 10, timeout);
			sqlite3_bind_text(st, 11, req->who ? req->who : "", -1, SQLITE_STATIC);
			sqlite3_bind_int64(st, 12, clock_wall_ms());
			rc = store_step(tx, st) == SQLITE_DONE ? 0 : -1;
		}
	}
	if (rc == 0)
		rc = rollout_event_tx(tx, req->app, "run.started",
				      "run=%s kind=%s release=%s service=%s agent=%s job=%s by=%s",
				      res->id, req->kind ? req->kind : "run", release, service,
				      res->agent, res->job, req->who && req->who[0] ? req->who : "-");
	free(command);
	return rc;
}

/* ---- the job's life ---- */

int runs_job_leased_tx(struct store_tx *tx, const char *job_id, int64_t attempt, cJSON *job)
{
	(void)attempt;
	sqlite3_stmt *st;
	int rc = store_step_text(tx, "SELECT id, service, command, timeout_s FROM runs "
				     "WHERE job = ?", job_id, &st);
	if (rc != SQLITE_ROW) {
		if (st)
			sqlite3_reset(st);
		if (rc < 0)
			return -1;
		/* Its run is gone (the app was deleted): the agent refuses the job
		 * ("run" null) and acks it failed; the poll must not fail for it. */
		log_warn("runs.job_without_run", "job=%s", job_id);
		cJSON_AddNullToObject(job, "run");
		return 0;
	}
	cJSON *run = cJSON_CreateObject();
	cJSON *cmd = cJSON_Parse(store_col_text(st, 2));
	if (!run || !cmd) {
		cJSON_Delete(run);
		cJSON_Delete(cmd);
		sqlite3_reset(st);
		return err_set(&tx->err, "out of memory");
	}
	cJSON_AddStringToObject(run, "id", store_col_text(st, 0));
	cJSON_AddStringToObject(run, "service", store_col_text(st, 1));
	cJSON_AddItemToObject(run, "command", cmd);
	cJSON_AddNumberToObject(run, "timeout_s", (double)sqlite3_column_int64(st, 3));
	sqlite3_reset(st);
	cJSON_AddItemToObject(job, "run", run);
	st = store_stmt(tx, "UPDATE runs SET state = 'running', started_ms = ? "
			    "WHERE job = ? AND state = 'queued'");
	if (!st)
		return -1;
	sqlite3_bind_int64(st, 1, clock_wall_ms());
	sqlite3_bind_text(st, 2, job_id, -1, SQLITE_STATIC);
	return store_step(tx, st) == SQLITE_DONE ? 0 : -1;
}

int runs_job_done_tx(struct store_tx *tx, struct coord *c, const char *job_id,
		     const char *result, int64_t exit_code, const char *reason,
		     const char *output_tail, struct queue_wake *w)
{
	sqlite3_stmt *st;
	int rc = store_step_text(tx, "SELECT id, app, kind, coalesce(rollout, ''), state "
				     "FROM runs WHERE job = ?", job_id, &st);
	if (rc != SQLITE_ROW) {
		if (st)
			sqlite3_reset(st);
		return rc < 0 ? -1 : 0; /* not a run's job (or its run was deleted) */
	}
	char id[RUNS_ID_MAX], app[48], kind[16], rollout[72], state[16];
	snprintf(id, sizeof id, "%s", store_col_text(st, 0));
	snprintf(app, sizeof app, "%s", store_col_text(st, 1));
	snprintf(kind, sizeof kind, "%s", store_col_text(st, 2));
	snprintf(rollout, sizeof rollout, "%s", store_col_text(st, 3));
	snprintf(state, sizeof state, "%s", store_col_text(st, 4));
	sqlite3_reset(st);
	if (strcmp(state, "succeeded") == 0 || strcmp(state, "failed") == 0)
		return 0; /* already ended: the first word counts */
	int ok = strcmp(result, "succeeded") == 0 && exit_code <= 0;
	if (ok)
		exit_code = 0;
	char why[600] = "";
	if (!ok) {
		if (reason && reason[0])
			snprintf(why, sizeof why, "%.590s", reason);
		else if (exit_code >= 0)
			snprintf(why, sizeof why, "exited with status %lld", (long long)exit_code);
		else
			snprintf(why, sizeof why, "%s", result);
	}
	const char *tail = output_tail;
	if (tail) {
		size_t len = strlen(tail);
		if (len > RUNS_OUTPUT_TAIL_MAX) {
			tail += len - RUNS_OUTPUT_TAIL_MAX;
			while (*tail && ((unsigned char)*tail & 0xC0) == 0x80)
				tail++; /* start on a UTF-8 boundary */
		}
	}
	st = store_stmt(tx, "UPDATE runs SET state = ?, exit_code = ?, reason = ?, "
			    "output_tail = ?, ended_ms = ?, "
			    "started_ms = coalesce(started_ms, ?5) WHERE id = ?");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, ok ? "succeeded" : "failed", -1, SQLITE_STATIC);
	if (exit_code >= 0)
		sqlite3_bind_int64(st, 2, exit_code);
	else
		sqlite3_bind_null(st, 2);
	store_bind_text(st, 3, ok ? NULL : why);
	store_bind_text(st, 4, tail);
	sqlite3_bind_int64(st, 5, clock_wall_ms());
	sqlite3_bind_text(st, 6, id, -1, SQLITE_STATIC);
	if (store_step(tx, st) != SQLITE_DONE)
		return -1;
	if (rollout_event_tx(tx, app, ok ? "run.succeeded" : "run.failed",
			     "run=%s kind=%s exit_code=%lld%s%s%s", id, kind, (long long)exit_code,
			     ok ? "" : " reason=\"", ok ? "" : why, ok ? "" : "\"") < 0)
		return -1;
	if (strcmp(kind, "release") == 0 && rollout[0])
		return rollout_release_phase_done_tx(tx, c, rollout, ok, why, w);
	return 0;
}

int runs_expire_tx(struct store_tx *tx, struct coord *c, int64_t now_ms, struct queue_wake *w)
{
	sqlite3_stmt *st = store_stmt(tx, "SELECT id, agent, app FROM jobs WHERE type = 'run' AND "
					  "state = 'leased' AND lease_expires_ms <= ? LIMIT 1000");
	if (!st)
		return -1;
	sqlite3_bind_int64(st, 1, now_ms);
	struct row {
		char id[72], agent[72], app[48];
	} *rows = NULL;
	size_t n = 0, cap = 0;
	int rc;
	while ((rc = store_step(tx, st)) == SQLITE_ROW) {
		if (n == cap) {
			cap = cap ? cap * 2 : 8;
			void *p = realloc(rows, cap * sizeof *rows);
			if (!p) {
				free(rows);
				sqlite3_reset(st);
				return err_set(&tx->err, "out of memory");
			}
			rows = p;
		}
		snprintf(rows[n].id, sizeof rows[n].id, "%s", store_col_text(st, 0));
		snprintf(rows[n].agent, sizeof rows[n].agent, "%s", store_col_text(st, 1));
		snprintf(rows[n].app, sizeof rows[n].app, "%s", store_col_text(st, 2));
		n++;
	}
	if (rc != SQLITE_DONE) {
		free(rows);
		return -1;
	}
	static const char why[] = "the agent stopped extending the run's lease (a run is never "
				  "started twice)";
	rc = 0;
	for (size_t i = 0; rc == 0 && i < n; i++) {
		st = store_stmt(tx, "UPDATE jobs SET state = 'done', result = 'expired', reason = ?, "
				    "done_ms = ?, lease_id = NULL, lease_expires_ms = NULL "
				    "WHERE id = ?");
		if (!st) {
			rc = -1;
			break;
		}
		sqlite3_bind_text(st, 1, why, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 2, now_ms);
		sqlite3_bind_text(st, 3, rows[i].id, -1, SQLITE_STATIC);
		if (store_step(tx, st) != SQLITE_DONE ||
		    rollout_event_tx(tx, rows[i].app, "job.expired", "job=%s agent=%s reason=\"%s\"",
				     rows[i].id, rows[i].agent, why) < 0 ||
		    runs_job_done_tx(tx, c, rows[i].id, "failed", -1, why, NULL, w) < 0)
			rc = -1;
	}
	free(rows);
	return rc;
}

int runs_sync_tx(struct store_tx *tx, struct coord *c, const char *app, struct queue_wake *w)
{
	sqlite3_stmt *st = store_stmt(
		tx, "SELECT r.job, coalesce(j.reason, 'job ' || j.result, 'its job is gone') "
		    "FROM runs r LEFT JOIN jobs j ON j.id = r.job WHERE r.app = ? AND "
		    "r.state IN ('queued', 'running') AND (j.id IS NULL OR j.state = 'done') "
		    "LIMIT 100");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
	struct row {
		char job[72];
		char why[512];
	} *rows = NULL;
	size_t n = 0, cap = 0;
	int rc;
	while ((rc = store_step(tx, st)) == SQLITE_ROW) {
		if (n == cap) {
			cap = cap ? cap * 2 : 4;
			void *p = realloc(rows, cap * sizeof *rows);
			if (!p) {
				free(rows);
				sqlite3_reset(st);
				return err_set(&tx->err, "out of memory");
			}
			rows = p;
		}
		snprintf(rows[n].job, sizeof rows[n].job, "%s", store_col_text(st, 0));
		snprintf(rows[n].why, sizeof rows[n].why, "%s", store_col_text(st, 1));
		n++;
	}
	rc = rc == SQLITE_DONE ? 0 : -1;
	for (size_t i = 0; rc == 0 && i < n; i++)
		rc = runs_job_done_tx(tx, c, rows[i].job, "failed", -1, rows[i].why, NULL, w);
	free(rows);
	return rc;
}

/* ---- the release phase ---- */

int runs_release_phase_tx(struct store_tx *tx, struct coord *c, const char *app,
			  const char *release_id, const char *rollout_id, int64_t generation,
			  const char *trigger, struct queue_wake *w)
{
	int want = runs_release_phase_wanted_tx(tx, release_id, trigger);
	if (want <= 0)
		return want;
	cJSON *cmd = runs_release_command_tx(tx, release_id);
	if (!cmd)
		return err_set(&tx->err, "release %s: release command unreadable", release_id);
	struct runs_request req = {
		.app = app,
		.release = release_id,
		.command = cmd,
		.kind = "release",
		.rollout = rollout_id,
		.generation = generation,
		.who = "",
	};
	struct runs_result res;
	int rc = runs_create_tx(tx, c, &req, &res, w);
	cJSON_Delete(cmd);
	if (rc < 0)
		return -1;
	if (res.status != 0)
		return rollout_release_phase_done_tx(tx, c, rollout_id, 0, res.message, w) < 0 ? -1
											       : 1;
	return 1;
}

int runs_rollout_waiting_tx(struct store_tx *tx, const char *rollout_id)
{
	sqlite3_stmt *st;
	int rc = store_step_text(tx, "SELECT 1 FROM runs WHERE rollout = ? AND "
				     "state IN ('queued', 'running') LIMIT 1", rollout_id, &st);
	if (st)
		sqlite3_reset(st);
	return rc < 0 ? -1 : rc == SQLITE_ROW;
}

int runs_info_tx(struct store_tx *tx, const char *app, const char *run_id, cJSON *out)
{
	sqlite3_stmt *st;
	int rc = store_step_text2(tx, "SELECT " RUN_COLS "FROM runs WHERE id = ? AND app = ?",
				  run_id, app, &st);
	if (rc == SQLITE_ROW)
		apiop_add_fields(out, st, 0, APIOP_FIELDS(run_fields));
	if (st)
		sqlite3_reset(st);
	return rc < 0 ? -1 : rc == SQLITE_ROW;
}

/* ---- the API ---- */

static const char *code_of(int status)
{
	return status == 404 ? "not_found" : status == 409 ? "conflict" : "bad_request";
}

static int create_tx(struct store_tx *tx, struct apiop *op)
{
	int ex = apiop_app_exists(tx, op);
	if (ex <= 0)
		return ex;
	const cJSON *svc = cJSON_GetObjectItemCaseSensitive(op->in, "service");
	const cJSON *rel = cJSON_GetObjectItemCaseSensitive(op->in, "release");
	const cJSON *cmd = cJSON_GetObjectItemCaseSensitive(op->in, "command");
	struct runs_request req = {
		.app = op->app,
		.service = cJSON_IsString(svc) ? svc->valuestring : NULL,
		.release = cJSON_IsString(rel) ? rel->valuestring : NULL,
		.command = cJSON_IsArray(cmd) ? cmd : NULL,
		.timeout_s = op->n1,
		.kind = "run",
		.who = op->who,
	};
	struct runs_result res;
	if (runs_create_tx(tx, op->c, &req, &res, &op->wake) < 0)
		return -1;
	if (res.status)
		return apiop_refuse(op, res.status, code_of(res.status), "%s", res.message);
	op->out = cJSON_CreateObject();
	cJSON *run = cJSON_AddObjectToObject(op->out, "run");
	if (!run || runs_info_tx(tx, op->app, res.id, run) != 1)
		return err_set(&tx->err, "run %s: not readable after insert", res.id);
	op->status = 202;
	return 0;
}

static void create_run(struct server_req *r, void *arg)
{
	(void)arg;
	struct apiop *op = apiop_start(r, create_tx, 1, 0);
	if (!op)
		return;
	static const char *const keys[] = {"service", "command", "release", "timeout_s", NULL};
	struct err err = {{0}};
	const char *svc, *rel;
	const cJSON *cmd;
	if (json_check_keys(op->in, keys, "body", &err) < 0 ||
	    json_get_string_opt(op->in, NULL, "service", 40, NULL, &svc, &err) < 0 ||
	    json_get_string_opt(op->in, NULL, "release", 64, NULL, &rel, &err) < 0 ||
	    json_get_int_opt(op->in, NULL, "timeout_s", 1, RUNS_TIMEOUT_MAX_S,
			     RUNS_TIMEOUT_DEFAULT_S, &op->n1, &err) < 0 ||
	    json_get_array_opt(op->in, NULL, "command", RUNS_COMMAND_MAX, &cmd, NULL, &err) < 0 ||
	    (cmd && runs_check_command(cmd, "command", &err) < 0) ||
	    (svc && !server_valid_name(svc) && err_set(&err, "service: not a name") < 0) ||
	    (rel && !server_valid_id(rel) && err_set(&err, "release: not an id") < 0)) {
		server_respond_error(r, 400, "bad_request", "%s", err.msg);
		apiop_free(op);
		return;
	}
	apiop_submit(op);
}

static int info_tx(struct store_tx *tx, struct apiop *op)
{
	int ex = apiop_app_exists(tx, op);
	if (ex <= 0)
		return ex;
	if (runs_sync_tx(tx, op->c, op->app, &op->wake) < 0)
		return -1;
	op->out = cJSON_CreateObject();
	int rc = runs_info_tx(tx, op->app, op->id, op->out);
	if (rc == 0)
		return apiop_refuse(op, 404, "not_found", "app %s has no run %s", op->app, op->id);
	return rc < 0 ? -1 : 0;
}

static void run_info(struct server_req *r, void *arg)
{
	(void)arg;
	struct apiop *op = apiop_start(r, info_tx, 0, 0);
	if (!op)
		return;
	snprintf(op->id, sizeof op->id, "%s", server_param(r, "run"));
	apiop_submit(op);
}

static int list_tx(struct store_tx *tx, struct apiop *op)
{
	int ex = apiop_app_exists(tx, op);
	if (ex <= 0)
		return ex;
	if (runs_sync_tx(tx, op->c, op->app, &op->wake) < 0)
		return -1;
	sqlite3_stmt *st = store_stmt(tx, "SELECT " RUN_COLS "FROM runs WHERE app = ? "
					  "ORDER BY created_ms DESC, rowid DESC LIMIT ?");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, op->app, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, op->n1);
	op->out = cJSON_CreateObject();
	return apiop_add_rows(tx, op->out, "runs", st, APIOP_FIELDS(run_fields));
}

static void run_list(struct server_req *r, void *arg)
{
	(void)arg;
	int64_t limit;
	if (apiop_query_limit(r, &limit) < 0)
		return;
	struct apiop *op = apiop_start(r, list_tx, 0, 0);
	if (!op)
		return;
	op->n1 = limit;
	apiop_submit(op);
}

int runs_register_routes(struct coord *c)
{
	const struct server_route routes[] = {
		{"POST", "/v1/apps/{app}/runs", SERVER_AUTH_DEPLOY, SERVER_BODY_SMALL, 0, create_run,
		 NULL},
		{"GET", "/v1/apps/{app}/runs", SERVER_AUTH_READ, SERVER_BODY_NONE, 0, run_list, NULL},
		{"GET", "/v1/apps/{app}/runs/{run}", SERVER_AUTH_READ, SERVER_BODY_NONE, 0, run_info,
		 NULL},
	};
	for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
		if (server_add_route_ex(c->server, &routes[i]) < 0)
			return -1;
	return 0;
}
