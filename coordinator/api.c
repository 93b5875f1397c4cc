#include "api.h"

#include <ev.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agents.h"
#include "apiop.h"
#include "auth.h"
#include "builder.h"
#include "clock.h"
#include "config.h"
#include "coord.h"
#include "json.h"
#include "link.h"
#include "log.h"
#include "logsink.h"
#include "queue.h"
#include "releases.h"
#include "rollout.h"
#include "runs.h"
#include "server.h"
#include "sqsqueue.h"
#include "store.h"

#define BUILD_LOG_EVERY_S 0.5
#define BUILD_LOG_CHUNKS 64

/* ---- refusals from releases.c ---- */

static const char *code_of(int status)
{
	switch (status) {
	case 400:
		return "bad_request";
	case 403:
		return "forbidden";
	case 404:
		return "not_found";
	case 409:
		return "conflict";
	default:
		return "internal";
	}
}

/* Copies a releases_result refusal into the op. */
static int from_res(struct apiop *op)
{
	if (op->res.status)
		return apiop_refuse(op, op->res.status, code_of(op->res.status), "%s",
				    op->res.message);
	return 0;
}

/* ---- rows as JSON ---- */

static const struct apiop_field rollout_fields[] = {
	{"id", APIOP_TEXT}, {"release", APIOP_TEXT}, {"previous_release", APIOP_TEXT_OR_NULL},
	{"generation", APIOP_INT}, {"strategy", APIOP_TEXT}, {"trigger", APIOP_TEXT},
	{"state", APIOP_TEXT}, {"reason", APIOP_TEXT_OR_NULL}, {"started_ms", APIOP_INT},
	{"ended_ms", APIOP_INT_OR_NULL},
};

#define ROLLOUT_COLS \
	"id, release, previous_release, generation, strategy, trigger, state, reason, " \
	"started_ms, ended_ms "

/* ---- apps ---- */

#define APP_COLS                                                                              \
	"a.name, a.fleet, a.strategy, a.deploy, a.branch, a.repo_url, a.project, a.generation, " \
	"a.release, a.created_ms, a.hook_id IS NOT NULL, a.scale, "                              \
	"(SELECT state FROM rollouts WHERE app = a.name ORDER BY started_ms DESC, rowid DESC "   \
	"LIMIT 1) "

static const struct apiop_field app_fields[] = {
	{"name", APIOP_TEXT}, {"fleet", APIOP_TEXT}, {"strategy", APIOP_TEXT},
	{"deploy", APIOP_TEXT}, {"branch", APIOP_TEXT_OR_NULL},
	{"repo_url", APIOP_TEXT_OR_NULL}, {"project", APIOP_TEXT_OR_NULL},
	{"generation", APIOP_INT}, {"release", APIOP_TEXT_OR_NULL}, {"created_ms", APIOP_INT},
	{"linked", APIOP_BOOL}, {"scale", APIOP_JSON},
};

static cJSON *app_json(sqlite3_stmt *st)
{
	cJSON *o = cJSON_CreateObject();
	apiop_add_fields(o, st, 0, APIOP_FIELDS(app_fields));
	const char *last = store_col_text(st, 12);
	const char *status = !*last				? "created"
			     : strcmp(last, "running") == 0	? "deploying"
			     : strcmp(last, "succeeded") == 0	? "running"
			     : strcmp(last, "superseded") == 0	? "deploying"
								: last;
	cJSON_AddStringToObject(o, "status", status);
	return o;
}

static int apps_list_tx(struct store_tx *tx, struct apiop *op)
{
	sqlite3_stmt *st = store_stmt(tx, "SELECT " APP_COLS "FROM apps a WHERE (?1 = '' OR "
					  "a.name = ?1) ORDER BY a.name");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, op->principal.app, -1, SQLITE_STATIC);
	op->out = cJSON_CreateObject();
	cJSON *arr = cJSON_AddArrayToObject(op->out, "apps");
	int rc;
	while ((rc = store_step(tx, st)) == SQLITE_ROW)
		cJSON_AddItemToArray(arr, app_json(st));
	return rc == SQLITE_DONE ? 0 : -1;
}

static int app_info_tx(struct store_tx *tx, struct apiop *op)
{
	sqlite3_stmt *st;
	int rc = store_step_text(tx, "SELECT " APP_COLS "FROM apps a WHERE a.name = ?",
				 op->app, &st);
	if (rc != SQLITE_ROW)
		return rc < 0 ? -1 : apiop_refuse(op, 404, "not_found", "unknown app %s", op->app);
	op->out = app_json(st);
	sqlite3_reset(st);
	/* Where the fleet stands: agents per state of this app. */
	st = store_stmt(tx, "SELECT aa.state, count(*) FROM agent_apps aa JOIN agents g ON "
			    "g.id = aa.agent WHERE aa.app = ? AND g.state = 'live' GROUP BY aa.state");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, op->app, -1, SQLITE_STATIC);
	cJSON *agents = cJSON_AddObjectToObject(op->out, "agents");
	while ((rc = store_step(tx, st)) == SQLITE_ROW)
		cJSON_AddNumberToObject(agents, store_col_text(st, 0),
					(double)sqlite3_column_int64(st, 1));
	if (rc != SQLITE_DONE)
		return -1;
	st = store_stmt(tx, "SELECT " ROLLOUT_COLS "FROM rollouts WHERE app = ? ORDER BY started_ms "
			    "DESC, rowid DESC LIMIT 1");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, op->app, -1, SQLITE_STATIC);
	rc = store_step(tx, st);
	if (rc < 0)
		return -1;
	if (rc == SQLITE_ROW)
		apiop_add_fields(cJSON_AddObjectToObject(op->out, "rollout"), st, 0,
				 APIOP_FIELDS(rollout_fields));
	else
		cJSON_AddNullToObject(op->out, "rollout");
	sqlite3_reset(st);
	return 0;
}

static const char *const strategies[] = {"all", "one-at-a-time", "canary", NULL};
static const char *const deploys[] = {"branch", "tags", "pipeline", NULL};

static int one_of(const char *v, const char *const *choices)
{
	for (size_t i = 0; choices[i]; i++)
		if (strcmp(v, choices[i]) == 0)
			return 1;
	return 0;
}

/* Checks the app fields of a create/update body; NULL or the problem. */
static const char *app_fields_problem(const cJSON *in, int creating, struct err *err)
{
	static const char *const keys[] = {"name",     "fleet",   "strategy", "deploy",
					   "branch",   "repo_url", "project", NULL};
	if (json_check_keys(in, keys, "body", err) < 0)
		return err->msg;
	const char *s;
	if (creating) {
		if (json_get_string(in, NULL, "name", 40, &s, err) < 0)
			return err->msg;
		if (!server_valid_name(s))
			return "name: [a-z][a-z0-9-]{0,39}";
	} else if (cJSON_GetObjectItemCaseSensitive(in, "name")) {
		return "name: an app cannot be renamed";
	}
	if (json_get_string_opt(in, NULL, "fleet", 40, "default", &s, err) < 0)
		return err->msg;
	if (!server_valid_name(s))
		return "fleet: [a-z][a-z0-9-]{0,39}";
	if (json_get_string_opt(in, NULL, "strategy", 16, "all", &s, err) < 0)
		return err->msg;
	if (!one_of(s, strategies))
		return "strategy: all, one-at-a-time or canary";
	if (json_get_string_opt(in, NULL, "deploy", 16, "branch", &s, err) < 0)
		return err->msg;
	if (!one_of(s, deploys))
		return "deploy: branch, tags or pipeline";
	if (json_get_string_opt(in, NULL, "branch", 255, NULL, &s, err) < 0 ||
	    json_get_string_opt(in, NULL, "repo_url", 1024, NULL, &s, err) < 0 ||
	    json_get_string_opt(in, NULL, "project", 255, NULL, &s, err) < 0)
		return err->msg;
	return NULL;
}

static void bind_opt(sqlite3_stmt *st, int i, const cJSON *in, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(in, key);
	if (cJSON_IsString(v))
		sqlite3_bind_text(st, i, v->valuestring, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, i);
}

static int app_create_tx(struct store_tx *tx, struct apiop *op)
{
	const cJSON *name = cJSON_GetObjectItemCaseSensitive(op->in, "name");
	snprintf(op->app, sizeof op->app, "%s", name->valuestring);
	int ex = store_app_exists(tx, op->app);
	if (ex != 0)
		return ex < 0 ? -1 : apiop_refuse(op, 409, "conflict", "app %s exists", op->app);
	/* A name used before continues its generations: agents may still hold the
	 * old app's numbers, and generations only grow. */
	sqlite3_stmt *st = store_stmt(
		tx, "INSERT INTO apps(name, created_ms, fleet, strategy, deploy, branch, "
		    "repo_url, project, generation) VALUES (?1, ?2, coalesce(?3, 'default'), "
		    "coalesce(?4, 'all'), coalesce(?5, 'branch'), ?6, ?7, ?8, coalesce(("
		    "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'generation:' || ?1), "
		    "0))");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, op->app, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, clock_wall_ms());
	bind_opt(st, 3, op->in, "fleet");
	bind_opt(st, 4, op->in, "strategy");
	bind_opt(st, 5, op->in, "deploy");
	bind_opt(st, 6, op->in, "branch");
	bind_opt(st, 7, op->in, "repo_url");
	bind_opt(st, 8, op->in, "project");
	if (store_step(tx, st) != SQLITE_DONE)
		return -1;
	if (rollout_event_tx(tx, op->app, "app.created", "by=%s", op->who) < 0)
		return -1;
	op->status = 201;
	return app_info_tx(tx, op);
}

static const char *app_create_check(struct apiop *op, struct err *err)
{
	return app_fields_problem(op->in, 1, err);
}

static int app_update_tx(struct store_tx *tx, struct apiop *op)
{
	int ex = apiop_app_exists(tx, op);
	if (ex <= 0)
		return ex;
	sqlite3_stmt *st = store_stmt(tx, "UPDATE apps SET fleet = coalesce(?2, fleet), strategy = "
					  "coalesce(?3, strategy), deploy = coalesce(?4, deploy), "
					  "branch = CASE WHEN ?8 THEN ?5 ELSE branch END, repo_url = "
					  "coalesce(?6, repo_url), project = coalesce(?7, project) "
					  "WHERE name = ?1");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, op->app, -1, SQLITE_STATIC);
	bind_opt(st, 2, op->in, "fleet");
	bind_opt(st, 3, op->in, "strategy");
	bind_opt(st, 4, op->in, "deploy");
	bind_opt(st, 5, op->in, "branch");
	bind_opt(st, 6, op->in, "repo_url");
	bind_opt(st, 7, op->in, "project");
	/* branch: null means "the project's default branch", so it can be cleared. */
	sqlite3_bind_int(st, 8, cJSON_GetObjectItemCaseSensitive(op->in, "branch") != NULL);
	if (store_step(tx, st) != SQLITE_DONE)
		return -1;
	char *text = cJSON_PrintUnformatted(op->in);
	int rc = rollout_event_tx(tx, op->app, "app.updated", "by=%s %.400s", op->who,
				  text ? text : "");
	free(text);
	return rc < 0 ? -1 : app_info_tx(tx, op);
}

static const char *app_update_check(struct apiop *op, struct err *err)
{
	return app_fields_problem(op->in, 0, err);
}

static int app_delete_tx(struct store_tx *tx, struct apiop *op)
{
	sqlite3_stmt *st;
	int rc = store_step_text(tx, "SELECT generation FROM apps WHERE name = ?", op->app, &st);
	if (rc != SQLITE_ROW)
		return rc < 0 ? -1 : apiop_refuse(op, 404, "not_found", "unknown app %s", op->app);
	int64_t gen = sqlite3_column_int64(st, 0) + 1;
	sqlite3_reset(st);
	/* A linked app's webhook and deploy key live at GitLab: deleting the app
	 * would leave them there (a read key to the repository nobody tracks).
	 * Unlinking removes them, and can fail or need --force: the caller does
	 * it knowingly, first. */
	char project[256];
	int linked = link_linked_tx(tx, op->app, project, sizeof project);
	if (linked < 0)
		return -1;
	if (linked)
		return apiop_refuse(op, 409, "conflict",
				    "app %s is linked to GitLab project %s: unlink it first "
				    "(`slipway apps unlink %s` removes its webhook and deploy key "
				    "there), then delete it",
				    op->app, project[0] ? project : "?", op->app);
	/* Every agent that was told to run it removes it. */
	struct queue_wake agents = {0};
	st = store_stmt(tx, "SELECT agent FROM agent_apps WHERE app = ?");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, op->app, -1, SQLITE_STATIC);
	while ((rc = store_step(tx, st)) == SQLITE_ROW)
		queue_wake_add(&agents, store_col_text(st, 0));
	sqlite3_reset(st);
	for (size_t i = 0; rc == SQLITE_DONE && i < agents.n; i++)
		if (queue_job_insert_tx(tx, agents.ids[i], op->app, "remove", gen, NULL, NULL, NULL,
					&op->wake) < 0)
			rc = -1;
	size_t n = agents.n;
	queue_wake_free(&agents);
	if (rc != SQLITE_DONE)
		return -1;
	st = store_stmt(tx, "INSERT INTO meta(key, value) VALUES ('generation:' || ?1, ?2) "
			    "ON CONFLICT(key) DO UPDATE SET value = excluded.value");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, op->app, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, gen);
	if (store_step(tx, st) != SQLITE_DONE)
		return -1;
	/* Deploy jobs not handed out yet are moot. */
	st = store_stmt(tx, "UPDATE jobs SET state = 'done', result = 'cancelled', reason = "
			    "'app deleted', done_ms = ?2 WHERE app = ?1 AND state = 'queued' AND "
			    "type = 'deploy'");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, op->app, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, clock_wall_ms());
	if (store_step(tx, st) != SQLITE_DONE)
		return -1;
	st = store_stmt(tx, "DELETE FROM apps WHERE name = ?");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, op->app, -1, SQLITE_STATIC);
	if (store_step(tx, st) != SQLITE_DONE)
		return -1;
	st = store_stmt(tx, "DELETE FROM logs WHERE app = ?");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, op->app, -1, SQLITE_STATIC);
	if (store_step(tx, st) != SQLITE_DONE)
		return -1;
	if (op->c->logsink)
		logsink_forget_app_tx(op->c->logsink, op->app);
	if (rollout_event_tx(tx, op->app, "app.deleted", "by=%s agents=%zu", op->who, n) < 0)
		return -1;
	op->out = cJSON_CreateObject();
	cJSON_AddStringToObject(op->out, "deleted", op->app);
	cJSON_AddNumberToObject(op->out, "remove_jobs", (double)n);
	return 0;
}

/* ---- builds ---- */

/* The rollout that promoted a release: the first one naming it (started in the
 * transaction that made it, for a build's release). Stable once set. */
#define FIRST_ROLLOUT(app, release)                                                    \
	"(SELECT ro.id FROM rollouts ro WHERE ro.app = " app " AND ro.release = " release \
	" ORDER BY ro.started_ms, ro.rowid LIMIT 1)"

#define BUILD_COLS                                                                        \
	"id, app, status, source, ref, sha, author, description, release, error, created_ms, " \
	"started_ms, ended_ms, " FIRST_ROLLOUT("builds.app", "builds.release") " "

static const struct apiop_field build_fields[] = {
	{"id", APIOP_TEXT}, {"app", APIOP_TEXT}, {"status", APIOP_TEXT}, {"source", APIOP_TEXT},
	{"ref", APIOP_TEXT_OR_NULL}, {"sha", APIOP_TEXT_OR_NULL},
	{"author", APIOP_TEXT_OR_NULL}, {"description", APIOP_TEXT},
	{"release", APIOP_TEXT_OR_NULL}, {"error", APIOP_TEXT_OR_NULL},
	{"created_ms", APIOP_INT}, {"started_ms", APIOP_INT_OR_NULL},
	{"ended_ms", APIOP_INT_OR_NULL}, {"rollout", APIOP_TEXT_OR_NULL},
};
static const struct apiop_field build_extra_fields[] = {{"manifest", APIOP_JSON},
							{"images", APIOP_JSON}};

/* Scoped keys may only see builds of their app: checked against the row. */
static int scope_ok(struct apiop *op, const char *app)
{
	if (!op->principal.app[0] || strcmp(op->principal.app, app) == 0)
		return 1;
	apiop_refuse(op, 404, "not_found", "no such build");
	return 0;
}

static int build_info_tx(struct store_tx *tx, struct apiop *op)
{
	sqlite3_stmt *st;
	int rc = store_step_text(tx, "SELECT " BUILD_COLS ", manifest, images FROM builds "
				     "WHERE id = ?", op->id, &st);
	if (rc != SQLITE_ROW)
		return rc < 0 ? -1 : apiop_refuse(op, 404, "not_found", "no build %s", op->id);
	if (!scope_ok(op, store_col_text(st, 1))) {
		sqlite3_reset(st);
		return 0;
	}
	op->out = cJSON_CreateObject();
	apiop_add_fields(op->out, st, 0, APIOP_FIELDS(build_fields));
	apiop_add_fields(op->out, st, 14, APIOP_FIELDS(build_extra_fields));
	sqlite3_reset(st);
	return 0;
}

/* The build log: text, streamed while the build runs. */
struct logread {
	struct logread *prev, *next;  /* every reader, for api_shutdown */
	struct coord *c;
	struct server_req *r;
	char build[72];
	int64_t after_seq;
	int started;       /* the answer's head is out */
	int busy;
	int finished;      /* the build ended: this was the last read */
	int missing;       /* no such build (or not in scope) */
	char scope[48];
	struct buf out;
	ev_timer timer;
};

static struct logread *readers;

static void logread_free(struct logread *l)
{
	if (l->prev)
		l->prev->next = l->next;
	else if (readers == l)
		readers = l->next;
	if (l->next)
		l->next->prev = l->prev;
	ev_timer_stop(l->c->loop, &l->timer);
	buf_free(&l->out);
	free(l);
}

static int logread_tx(struct store_tx *tx, void *arg)
{
	struct logread *l = arg;
	sqlite3_stmt *st;
	int rc = store_step_text(tx, "SELECT app, status FROM builds WHERE id = ?", l->build, &st);
	if (rc < 0)
		return -1;
	if (rc != SQLITE_ROW || (l->scope[0] && strcmp(l->scope, store_col_text(st, 0)) != 0)) {
		sqlite3_reset(st);
		l->missing = 1;
		return 0;
	}
	/* Read the status first: chunks written before it ended are all there. */
	const char *status = store_col_text(st, 1);
	l->finished = strcmp(status, "complete") == 0 || strcmp(status, "failed") == 0;
	sqlite3_reset(st);
	st = store_stmt(tx, "SELECT seq, chunk FROM build_logs WHERE build = ? AND seq > ? "
			    "ORDER BY seq LIMIT ?");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, l->build, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, l->after_seq);
	sqlite3_bind_int(st, 3, BUILD_LOG_CHUNKS);
	int n = 0;
	while ((rc = store_step(tx, st)) == SQLITE_ROW) {
		if (buf_append(&l->out, sqlite3_column_blob(st, 1),
			       (size_t)sqlite3_column_bytes(st, 1)) < 0)
			break;
		l->after_seq = sqlite3_column_int64(st, 0);
		n++;
	}
	sqlite3_reset(st);
	if (n == BUILD_LOG_CHUNKS)
		l->finished = 0; /* more to read */
	return rc < 0 ? -1 : 0;
}

static void logread_next(struct logread *l);

static void logread_done(int rc, void *arg)
{
	struct logread *l = arg;
	l->busy = 0;
	if (!l->r) {
		logread_free(l);
		return;
	}
	if (rc < 0 || l->missing) {
		if (l->started) {
			server_stream_end(l->r);
		} else {
			server_on_abort(l->r, NULL, NULL);
			if (rc < 0)
				server_respond_error(l->r, 503, "unavailable", "the store is busy");
			else
				server_respond_error(l->r, 404, "not_found", "no build %s", l->build);
		}
		logread_free(l);
		return;
	}
	if (!l->started) {
		server_stream_start(l->r, 200, "text/plain; charset=utf-8");
		l->started = 1;
	}
	/* Nothing new for a while: an empty line keeps proxies from timing out. */
	if ((l->out.len ? server_stream_write(l->r, l->out.data, l->out.len)
			: server_stream_keepalive(l->r)) < 0) {
		/* A client that does not read: give up on it rather than buffer. */
		server_abort(l->r);
		logread_free(l);
		return;
	}
	buf_reset(&l->out);
	if (l->finished) {
		server_on_abort(l->r, NULL, NULL);
		server_stream_end(l->r);
		logread_free(l);
		return;
	}
	ev_timer_set(&l->timer, BUILD_LOG_EVERY_S, 0.0);
	ev_timer_start(l->c->loop, &l->timer);
}

static void logread_next(struct logread *l)
{
	if (store_submit(l->c->store, logread_tx, logread_done, l) < 0) {
		ev_timer_set(&l->timer, BUILD_LOG_EVERY_S, 0.0);
		ev_timer_start(l->c->loop, &l->timer);
		return;
	}
	l->busy = 1;
}

static void logread_tick(struct ev_loop *loop, ev_timer *t, int revents)
{
	(void)loop;
	(void)revents;
	struct logread *l = t->data;
	ev_timer_stop(l->c->loop, t);
	logread_next(l);
}

static void logread_abort(struct server_req *r, void *arg)
{
	(void)r;
	struct logread *l = arg;
	l->r = NULL;
	if (!l->busy)
		logread_free(l);
}

static void build_log(struct server_req *r, void *arg)
{
	(void)arg;
	struct logread *l = calloc(1, sizeof *l);
	if (!l) {
		server_respond_error(r, 503, "unavailable", "out of memory");
		return;
	}
	l->c = r->coord;
	l->r = r;
	l->after_seq = -1;
	snprintf(l->build, sizeof l->build, "%s", server_param(r, "build"));
	snprintf(l->scope, sizeof l->scope, "%s", r->who.app);
	buf_init(&l->out, (size_t)BUILD_LOG_CHUNKS * (128 << 10));
	ev_timer_init(&l->timer, logread_tick, BUILD_LOG_EVERY_S, 0.0);
	l->timer.data = l;
	l->next = readers;
	if (readers)
		readers->prev = l;
	readers = l;
	server_on_abort(r, logread_abort, l);
	logread_next(l);
	if (!l->busy) {
		server_on_abort(r, NULL, NULL);
		server_respond_error(r, 503, "unavailable", "the store is busy; retry");
		logread_free(l);
	}
}

/* Uploads: POST /v1/apps/{app}/builds with a tar.gz body (slipway deploy). The
 * body went to a file under <data.dir>/uploads; it becomes the build's context
 * and the builder takes the created build from the store. */
static int upload_tx(struct store_tx *tx, struct apiop *op)
{
	int ex = apiop_app_exists(tx, op);
	if (ex <= 0)
		return ex;
	const cJSON *path = cJSON_GetObjectItemCaseSensitive(op->in, "path");
	const cJSON *desc = cJSON_GetObjectItemCaseSensitive(op->in, "description");
	sqlite3_stmt *st = store_stmt(tx, "INSERT INTO builds(id, app, status, source, description, "
					  "context_path, created_ms) VALUES (?, ?, 'created', "
					  "'upload', ?, ?, ?)");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, op->id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, op->app, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, desc->valuestring, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, path->valuestring, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 5, clock_wall_ms());
	if (store_step(tx, st) != SQLITE_DONE)
		return -1;
	op->out = cJSON_CreateObject();
	cJSON_AddStringToObject(op->out, "build", op->id);
	cJSON_AddStringToObject(op->out, "app", op->app);
	cJSON_AddStringToObject(op->out, "status", "created");
	op->status = 202;
	return 0;
}

static void upload_after(struct apiop *op)
{
	if (op->c->builder)
		builder_kick(op->c->builder);
}

static void upload_cleanup(struct apiop *op)
{
	/* Refused or failed: the file is nobody's. */
	const cJSON *path = cJSON_GetObjectItemCaseSensitive(op->in, "path");
	if (op->status >= 400 && cJSON_IsString(path))
		unlink(path->valuestring);
}

static void upload_done(int rc, void *arg)
{
	struct apiop *op = arg;
	if (rc < 0 && op->status < 400)
		op->status = 500;
	upload_cleanup(op);
	apiop_done(rc, arg);
}

static void build_upload(struct server_req *r, void *arg)
{
	(void)arg;
	char *file = server_take_body_file(r);
	if (!file || r->http->body_len == 0) {
		if (file)
			unlink(file);
		free(file);
		server_respond_error(r, 400, "bad_request", "the body is the build context (tar.gz)");
		return;
	}
	struct apiop *op = apiop_new(r, upload_tx);
	char id[32], path[4200], desc[200], q[160];
	if (!op || auth_new_id(id, sizeof id, "b_") < 0) {
		unlink(file);
		free(file);
		if (op) {
			server_respond_error(r, 503, "unavailable", "no randomness");
			apiop_free(op);
		}
		return;
	}
	snprintf(op->id, sizeof op->id, "%s", id);
	snprintf(path, sizeof path, "%s/uploads/%s.tar.gz", op->c->data_dir, id);
	if (rename(file, path) < 0) {
		unlink(file);
		free(file);
		server_respond_internal(r, "upload", "rename failed");
		apiop_free(op);
		return;
	}
	free(file);
	int rq = server_query(r, "description", q, sizeof q);
	snprintf(desc, sizeof desc, "%s", rq > 0 ? q : "");
	if (!desc[0])
		snprintf(desc, sizeof desc, "upload by %s", op->who[0] ? op->who : "?");
	op->in = cJSON_CreateObject();
	cJSON_AddStringToObject(op->in, "path", path);
	cJSON_AddStringToObject(op->in, "description", desc);
	op->after = upload_after;
	if (store_submit(op->c->store, apiop_tx, upload_done, op) < 0) {
		unlink(path);
		server_respond_error(r, 503, "unavailable", "the store is busy; retry");
		apiop_free(op);
		return;
	}
	server_on_abort(r, apiop_abort, op);
}

static int cancel_tx(struct store_tx *tx, struct apiop *op)
{
	sqlite3_stmt *st;
	int rc = store_step_text(tx, "SELECT app, status FROM builds WHERE id = ?", op->id, &st);
	if (rc != SQLITE_ROW)
		return rc < 0 ? -1 : apiop_refuse(op, 404, "not_found", "no build %s", op->id);
	if (!scope_ok(op, store_col_text(st, 0))) {
		sqlite3_reset(st);
		return 0;
	}
	const char *status = store_col_text(st, 1);
	if (strcmp(status, "complete") == 0 || strcmp(status, "failed") == 0) {
		apiop_refuse(op, 409, "conflict", "build %s already ended (%s)", op->id, status);
		sqlite3_reset(st);
		return 0;
	}
	sqlite3_reset(st);
	op->out = cJSON_CreateObject();
	cJSON_AddStringToObject(op->out, "build", op->id);
	return 0;
}

static void cancel_after(struct apiop *op)
{
	int rc = op->c->builder ? builder_cancel(op->c->builder, op->id) : 0;
	cJSON_AddBoolToObject(op->out, "was_running", rc == 1);
	op->status = rc < 0 ? 503 : 202;
	if (rc < 0)
		apiop_refuse(op, 503, "unavailable", "the store is busy; retry");
}

/* ---- releases ---- */

static const struct apiop_field release_fields[] = {
	{"id", APIOP_TEXT}, {"app", APIOP_TEXT}, {"seq", APIOP_INT},
	{"build", APIOP_TEXT_OR_NULL}, {"description", APIOP_TEXT}, {"status", APIOP_TEXT},
	{"created_ms", APIOP_INT}, {"rollout", APIOP_TEXT_OR_NULL},
};
static const struct apiop_field release_extra_fields[] = {{"spec", APIOP_JSON},
							  {"manifest", APIOP_JSON}};

#define RELEASE_COLS                                           \
	"id, app, seq, build, description, status, created_ms, " \
	FIRST_ROLLOUT("releases.app", "releases.id") " "

static int release_info_tx(struct store_tx *tx, struct apiop *op)
{
	sqlite3_stmt *st;
	int rc = store_step_text2(tx, "SELECT " RELEASE_COLS ", spec, manifest FROM releases "
				      "WHERE id = ? AND app = ?", op->id, op->app, &st);
	if (rc != SQLITE_ROW)
		return rc < 0 ? -1
			       : apiop_refuse(op, 404, "not_found", "app %s has no release %s", op->app,
					op->id);
	op->out = cJSON_CreateObject();
	apiop_add_fields(op->out, st, 0, APIOP_FIELDS(release_fields));
	apiop_add_fields(op->out, st, 8, APIOP_FIELDS(release_extra_fields));
	sqlite3_reset(st);
	/* The sealed environment: names only. */
	cJSON *spec = releases_spec_tx(tx, op->c->master_key, op->id);
	cJSON *names = cJSON_AddArrayToObject(op->out, "environment");
	if (!spec)
		return -1;
	cJSON *svc = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(spec, "services"), 0);
	const cJSON *v;
	cJSON_ArrayForEach(v, cJSON_GetObjectItemCaseSensitive(svc, "environment"))
		cJSON_AddItemToArray(names, cJSON_CreateString(v->string));
	cJSON_Delete(spec);
	return 0;
}

static void promoted_answer(struct apiop *op)
{
	op->out = cJSON_CreateObject();
	cJSON_AddStringToObject(op->out, "app", op->app);
	if (op->res.release[0])
		cJSON_AddStringToObject(op->out, "release", op->res.release);
	else
		cJSON_AddNullToObject(op->out, "release");
	if (op->res.rollout[0]) {
		cJSON_AddStringToObject(op->out, "rollout", op->res.rollout);
		cJSON_AddNumberToObject(op->out, "generation", (double)op->res.generation);
		op->status = 202;
	} else {
		cJSON_AddNullToObject(op->out, "rollout");
	}
}

/* After a releases_*_tx call (rc): a store error, a refusal, or PROMOTED. */
static int promoted(struct apiop *op, int rc)
{
	if (rc < 0)
		return -1;
	if (from_res(op) == 0 && !op->status)
		promoted_answer(op);
	return 0;
}

static int promote_tx(struct store_tx *tx, struct apiop *op)
{
	return promoted(op, releases_promote_tx(tx, op->c, op->app, op->id, "promote", &op->res));
}

static int rollback_tx(struct store_tx *tx, struct apiop *op)
{
	return promoted(op, releases_rollback_tx(tx, op->c, op->app, op->id, &op->res));
}

/* A release from images (no build): body {"services": ..., "description",
 * "promote"}. */
static int release_create_tx(struct store_tx *tx, struct apiop *op)
{
	int ex = apiop_app_exists(tx, op);
	if (ex <= 0)
		return ex;
	struct err err;
	cJSON *scale = releases_app_scale_tx(tx, op->app);
	cJSON *services = releases_services_from_manifest(op->in, NULL, scale, &err);
	cJSON_Delete(scale);
	if (!services)
		return apiop_refuse(op, 400, "bad_request", "%s", err.msg);
	cJSON *env = releases_app_env_tx(tx, op->c->master_key, op->app);
	if (!env) {
		cJSON_Delete(services);
		return -1;
	}
	const cJSON *d = cJSON_GetObjectItemCaseSensitive(op->in, "description");
	char desc[256];
	snprintf(desc, sizeof desc, "%s", cJSON_IsString(d) ? d->valuestring : "release from images");
	cJSON *manifest = cJSON_CreateObject();
	cJSON_AddItemToObject(manifest, "services",
			      cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(op->in, "services"), 1));
	/* The release command (runs.h), run before the rollout as a build's would be. */
	const cJSON *rcmd = cJSON_GetObjectItemCaseSensitive(op->in, "release");
	if (cJSON_IsArray(rcmd))
		cJSON_AddItemToObject(manifest, "release", cJSON_Duplicate(rcmd, 1));
	char *mtext = cJSON_PrintUnformatted(manifest);
	cJSON_Delete(manifest);
	int rc = releases_create_tx(tx, op->c, op->app, NULL, services, env, mtext, desc,
				    op->flag ? "promote" : NULL, &op->res);
	free(mtext);
	cJSON_Delete(services);
	cJSON_Delete(env);
	if (promoted(op, rc) < 0)
		return -1;
	if (op->out && !op->res.rollout[0])
		op->status = 201;
	return 0;
}

static const char *release_create_check(struct apiop *op, struct err *err)
{
	static const char *const keys[] = {"services", "description", "promote", "release", NULL};
	bool promote;
	const char *desc;
	const cJSON *rcmd = cJSON_GetObjectItemCaseSensitive(op->in, "release");
	if (json_check_keys(op->in, keys, "body", err) < 0 ||
	    (rcmd && !cJSON_IsNull(rcmd) && runs_check_command(rcmd, "release", err) < 0) ||
	    json_get_bool_opt(op->in, NULL, "promote", true, &promote, err) < 0 ||
	    json_get_string_opt(op->in, NULL, "description", 200, NULL, &desc, err) < 0)
		return err->msg;
	op->flag = promote;
	return NULL;
}

/* ---- rollouts ---- */

static int rollout_info_tx(struct store_tx *tx, struct apiop *op)
{
	sqlite3_stmt *st;
	int rc = store_step_text2(tx, "SELECT " ROLLOUT_COLS "FROM rollouts WHERE id = ? AND "
				      "app = ?", op->id, op->app, &st);
	if (rc != SQLITE_ROW)
		return rc < 0 ? -1 : apiop_refuse(op, 404, "not_found", "no rollout %s", op->id);
	op->out = cJSON_CreateObject();
	apiop_add_fields(op->out, st, 0, APIOP_FIELDS(rollout_fields));
	sqlite3_reset(st);
	static const struct apiop_field job_fields[] = {
		{"id", APIOP_TEXT}, {"agent", APIOP_TEXT}, {"instance_id", APIOP_TEXT},
		{"agent_state", APIOP_TEXT}, {"state", APIOP_TEXT},
		{"result", APIOP_TEXT_OR_NULL}, {"reason", APIOP_TEXT_OR_NULL},
		{"attempt", APIOP_INT}, {"created_ms", APIOP_INT},
		{"done_ms", APIOP_INT_OR_NULL}, {"duration_ms", APIOP_INT_OR_NULL},
	};
	st = store_stmt(tx, "SELECT j.id, j.agent, g.instance_id, g.state, j.state, j.result, "
			    "j.reason, j.attempt, j.created_ms, j.done_ms, j.duration_ms FROM jobs j "
			    "JOIN agents g ON g.id = j.agent WHERE j.rollout = ? ORDER BY j.created_ms");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, op->id, -1, SQLITE_STATIC);
	return apiop_add_rows(tx, op->out, "jobs", st, APIOP_FIELDS(job_fields));
}

/* ---- environment and scale ---- */

static int env_get_tx(struct store_tx *tx, struct apiop *op)
{
	int ex = apiop_app_exists(tx, op);
	if (ex <= 0)
		return ex;
	cJSON *env = releases_app_env_tx(tx, op->c->master_key, op->app);
	if (!env)
		return -1;
	op->out = cJSON_CreateObject();
	cJSON_AddStringToObject(op->out, "app", op->app);
	cJSON_AddItemToObject(op->out, "environment", env);
	return 0;
}

static int env_change_tx(struct store_tx *tx, struct apiop *op)
{
	const cJSON *set = cJSON_GetObjectItemCaseSensitive(op->in, "set");
	const cJSON *unset = cJSON_GetObjectItemCaseSensitive(op->in, "unset");
	return promoted(op, releases_env_change_tx(tx, op->c, op->app, set, unset, op->flag,
						   op->who, &op->res));
}

static int query_flag(struct server_req *r, const char *name)
{
	char v[8];
	return server_query(r, name, v, sizeof v) > 0 &&
	       (strcmp(v, "1") == 0 || strcmp(v, "true") == 0 || strcmp(v, "yes") == 0);
}

static const char *env_change_check(struct apiop *op, struct err *err)
{
	static const char *const keys[] = {"set", "unset", "promote", NULL};
	bool promote;
	if (json_check_keys(op->in, keys, "body", err) < 0 ||
	    json_get_bool_opt(op->in, NULL, "promote", false, &promote, err) < 0)
		return err->msg;
	op->flag = promote || query_flag(op->r, "promote");
	return NULL;
}

static int scale_tx(struct store_tx *tx, struct apiop *op)
{
	return promoted(op, releases_scale_tx(tx, op->c, op->app, op->id, op->n1, op->n2, op->who,
					      &op->res));
}

static const char *scale_check(struct apiop *op, struct err *err)
{
	static const char *const keys[] = {"service", "count", "memory_mb", NULL};
	const char *service;
	if (json_check_keys(op->in, keys, "body", err) < 0 ||
	    json_get_string(op->in, NULL, "service", 40, &service, err) < 0 ||
	    json_get_int(op->in, NULL, "count", 0, 100, &op->n1, err) < 0 ||
	    json_get_int_opt(op->in, NULL, "memory_mb", 0, 1048576, -1, &op->n2, err) < 0)
		return err->msg;
	snprintf(op->id, sizeof op->id, "%s", service);
	return NULL;
}

/* ---- ps, agents, events ---- */

static int ps_tx(struct store_tx *tx, struct apiop *op)
{
	sqlite3_stmt *st = store_stmt(tx, "SELECT id, instance_id, hostname, state, inventory, "
					  "inventory_ms FROM agents WHERE state != 'gone' ORDER BY "
					  "registered_ms, id");
	if (!st)
		return -1;
	op->out = cJSON_CreateObject();
	cJSON *arr = cJSON_AddArrayToObject(op->out, "containers");
	int rc;
	while ((rc = store_step(tx, st)) == SQLITE_ROW) {
		const char *inv = store_col_text(st, 4);
		cJSON *list = json_parse(inv, strlen(inv), (size_t)16 << 20, NULL);
		cJSON *c;
		cJSON_ArrayForEach(c, list)
		{
			const cJSON *app = cJSON_GetObjectItemCaseSensitive(c, "app");
			const char *a = cJSON_IsString(app) ? app->valuestring : "";
			if ((op->app[0] && strcmp(a, op->app) != 0) ||
			    (op->principal.app[0] && strcmp(a, op->principal.app) != 0))
				continue;
			cJSON *o = cJSON_Duplicate(c, 1);
			cJSON_AddStringToObject(o, "agent", store_col_text(st, 0));
			cJSON_AddStringToObject(o, "instance_id", store_col_text(st, 1));
			cJSON_AddStringToObject(o, "hostname", store_col_text(st, 2));
			cJSON_AddStringToObject(o, "agent_state", store_col_text(st, 3));
			apiop_add_int(o, "reported_ms", st, 5);
			cJSON_AddItemToArray(arr, o);
		}
		cJSON_Delete(list);
	}
	return rc == SQLITE_DONE ? 0 : -1;
}

static void ps(struct server_req *r, void *arg)
{
	(void)arg;
	char app[48];
	int rc = server_query(r, "app", app, sizeof app);
	if (rc < 0 || (rc > 0 && !server_valid_name(app))) {
		server_respond_error(r, 400, "bad_request", "app: [a-z][a-z0-9-]{0,39}");
		return;
	}
	struct apiop *op = apiop_start(r, ps_tx, 0, 0);
	if (!op)
		return;
	if (rc > 0)
		snprintf(op->app, sizeof op->app, "%s", app);
	apiop_submit(op);
}

static int agents_list_tx(struct store_tx *tx, struct apiop *op)
{
	sqlite3_stmt *st = store_stmt(tx, "SELECT id, instance_id, hostname, fleet, version, arch, "
					  "protocol, state, registered_ms, last_seen_ms FROM agents "
					  "ORDER BY registered_ms, id");
	if (!st)
		return -1;
	/* last_seen_ms: agents_list_after puts the registry's fresher time in. */
	static const struct apiop_field agent_fields[] = {
		{"id", APIOP_TEXT}, {"instance_id", APIOP_TEXT}, {"hostname", APIOP_TEXT},
		{"fleet", APIOP_TEXT}, {"version", APIOP_TEXT}, {"arch", APIOP_TEXT},
		{"protocol", APIOP_INT}, {"state", APIOP_TEXT}, {"registered_ms", APIOP_INT},
		{"last_seen_ms", APIOP_INT},
	};
	static const struct apiop_field agent_app_fields[] = {
		{"app", APIOP_TEXT}, {"generation", APIOP_INT},
		{"applied_generation", APIOP_INT}, {"release", APIOP_TEXT_OR_NULL},
		{"state", APIOP_TEXT},
	};
	op->out = cJSON_CreateObject();
	if (apiop_add_rows(tx, op->out, "agents", st, APIOP_FIELDS(agent_fields)) < 0)
		return -1;
	cJSON *arr = cJSON_GetObjectItemCaseSensitive(op->out, "agents"), *ag;
	cJSON_ArrayForEach(ag, arr)
		cJSON_AddArrayToObject(ag, "apps");
	int rc;
	st = store_stmt(tx, "SELECT agent, app, generation, applied_generation, release, state "
			    "FROM agent_apps ORDER BY agent, app");
	if (!st)
		return -1;
	cJSON *cur = NULL;
	while ((rc = store_step(tx, st)) == SQLITE_ROW) {
		const char *agent = store_col_text(st, 0);
		if (!cur || strcmp(cJSON_GetObjectItemCaseSensitive(cur, "id")->valuestring, agent)) {
			cur = NULL;
			cJSON *a;
			cJSON_ArrayForEach(a, arr)
			{
				if (strcmp(cJSON_GetObjectItemCaseSensitive(a, "id")->valuestring,
					   agent) == 0) {
					cur = a;
					break;
				}
			}
		}
		if (!cur)
			continue;
		cJSON *o = cJSON_CreateObject();
		apiop_add_fields(o, st, 1, APIOP_FIELDS(agent_app_fields));
		cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(cur, "apps"), o);
	}
	return rc == SQLITE_DONE ? 0 : -1;
}

/* last_seen from the registry, which is fresher than the store. */
static void agents_list_after(struct apiop *op)
{
	if (!op->c->agents)
		return;
	cJSON *a;
	cJSON_ArrayForEach(a, cJSON_GetObjectItemCaseSensitive(op->out, "agents"))
	{
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(a, "id");
		struct agent *ag = agents_find(op->c->agents, id->valuestring);
		if (ag && ag->last_seen_ms)
			cJSON_ReplaceItemInObjectCaseSensitive(a, "last_seen_ms",
							       cJSON_CreateNumber((double)ag->last_seen_ms));
	}
}

static int agent_delete_tx(struct store_tx *tx, struct apiop *op)
{
	sqlite3_stmt *st = store_stmt(tx, "UPDATE agents SET state = 'gone' WHERE id = ? AND "
					  "state != 'gone'");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, op->id, -1, SQLITE_STATIC);
	if (store_step(tx, st) != SQLITE_DONE)
		return -1;
	if (sqlite3_changes(tx->db) == 0)
		return apiop_refuse(op, 404, "not_found", "no agent %s", op->id);
	st = store_stmt(tx, "UPDATE jobs SET state = 'done', result = 'cancelled', reason = "
			    "'agent removed', done_ms = ? WHERE agent = ? AND state != 'done'");
	if (!st)
		return -1;
	sqlite3_bind_int64(st, 1, clock_wall_ms());
	sqlite3_bind_text(st, 2, op->id, -1, SQLITE_STATIC);
	if (store_step(tx, st) != SQLITE_DONE ||
	    rollout_event_tx(tx, NULL, "agent.removed", "agent=%s by=%s", op->id, op->who) < 0 ||
	    rollout_recover_tx(tx, op->c, &op->wake) < 0)
		return -1;
	op->out = cJSON_CreateObject();
	cJSON_AddStringToObject(op->out, "removed", op->id);
	return 0;
}

static void agent_delete_after(struct apiop *op)
{
	struct agent *ag = op->c->agents ? agents_find(op->c->agents, op->id) : NULL;
	if (ag)
		ag->state = AGENT_GONE;
	sqsqueue_agent_left(op->c->sqsqueue, op->id); /* its SQS queue goes too */
}

static int events_tx(struct store_tx *tx, struct apiop *op)
{
	sqlite3_stmt *st = store_stmt(tx, "SELECT id, ts_ms, app, kind, message FROM events WHERE "
					  "(?1 = '' OR app = ?1) AND (?2 = '' OR app = ?2) AND "
					  "id > ?4 ORDER BY id DESC LIMIT ?3");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, op->app, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, op->principal.app, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, op->n1);
	sqlite3_bind_int64(st, 4, op->n2);
	static const struct apiop_field event_fields[] = {
		{"id", APIOP_INT}, {"ts_ms", APIOP_INT}, {"app", APIOP_TEXT_OR_NULL},
		{"kind", APIOP_TEXT}, {"message", APIOP_TEXT},
	};
	op->out = cJSON_CreateObject();
	return apiop_add_rows(tx, op->out, "events", st, APIOP_FIELDS(event_fields));
}

static void events(struct server_req *r, void *arg)
{
	(void)arg;
	char app[48], after[24];
	int64_t limit;
	int rc = server_query(r, "app", app, sizeof app);
	int ra = server_query(r, "after", after, sizeof after);
	if (apiop_query_limit(r, &limit) < 0)
		return;
	char *end = NULL;
	long long n = ra > 0 ? strtoll(after, &end, 10) : 0;
	if (rc < 0 || (rc > 0 && !server_valid_name(app)) || ra < 0 || (ra > 0 && (*end || n < 0))) {
		server_respond_error(r, 400, "bad_request", "app: a name; after: an event id");
		return;
	}
	struct apiop *op = apiop_start(r, events_tx, 0, 0);
	if (!op)
		return;
	if (rc > 0)
		snprintf(op->app, sizeof op->app, "%s", app);
	op->n1 = limit;
	op->n2 = n;
	apiop_submit(op);
}

/* ---- API keys ---- */

static int key_create_tx(struct store_tx *tx, struct apiop *op)
{
	const cJSON *name = cJSON_GetObjectItemCaseSensitive(op->in, "name");
	const cJSON *app = cJSON_GetObjectItemCaseSensitive(op->in, "app");
	char key[AUTH_API_KEY_LEN + 1];
	if (auth_key_create_tx(tx, name->valuestring, (enum auth_role)op->n1,
			       cJSON_IsString(app) ? app->valuestring : NULL, op->id, key) < 0)
		return -1;
	auth_token_hash(key, op->hash);
	op->out = cJSON_CreateObject();
	cJSON_AddStringToObject(op->out, "id", op->id);
	cJSON_AddStringToObject(op->out, "name", name->valuestring);
	cJSON_AddStringToObject(op->out, "role", auth_role_name((enum auth_role)op->n1));
	if (cJSON_IsString(app))
		cJSON_AddStringToObject(op->out, "app", app->valuestring);
	else
		cJSON_AddNullToObject(op->out, "app");
	cJSON_AddStringToObject(op->out, "key", key);
	memset(key, 0, sizeof key);
	op->status = 201;
	return rollout_event_tx(tx, cJSON_IsString(app) ? app->valuestring : NULL, "apikey.created",
				"id=%s name=%s role=%s by=%s", op->id, name->valuestring,
				auth_role_name((enum auth_role)op->n1), op->who);
}

static void key_create_after(struct apiop *op)
{
	struct auth_principal who = {0};
	const cJSON *o = op->out;
	who.role = (enum auth_role)op->n1;
	snprintf(who.key_id, sizeof who.key_id, "%.39s", op->id);
	snprintf(who.key_name, sizeof who.key_name, "%s",
		 cJSON_GetObjectItemCaseSensitive(o, "name")->valuestring);
	const cJSON *app = cJSON_GetObjectItemCaseSensitive(o, "app");
	if (cJSON_IsString(app))
		snprintf(who.app, sizeof who.app, "%s", app->valuestring);
	if (op->c->auth)
		auth_remember(op->c->auth, &who, op->hash);
}

static const char *key_create_check(struct apiop *op, struct err *err)
{
	static const char *const keys[] = {"name", "role", "app", NULL};
	const char *name, *role, *app;
	enum auth_role rl;
	if (json_check_keys(op->in, keys, "body", err) < 0 ||
	    json_get_string(op->in, NULL, "name", 63, &name, err) < 0 ||
	    json_get_string(op->in, NULL, "role", 16, &role, err) < 0 ||
	    json_get_string_opt(op->in, NULL, "app", 40, NULL, &app, err) < 0)
		return err->msg;
	if (!*name || !server_valid_id(name))
		return "name: 1..63 of [A-Za-z0-9_-]";
	if (auth_role_parse(role, &rl) < 0)
		return "role: admin, deploy or read";
	if (app && !server_valid_name(app))
		return "app: [a-z][a-z0-9-]{0,39}";
	op->n1 = rl;
	return NULL;
}

static int keys_list_tx(struct store_tx *tx, struct apiop *op)
{
	sqlite3_stmt *st = store_stmt(tx, "SELECT id, name, role, app, created_ms, last_used_ms, "
					  "revoked_ms FROM api_keys ORDER BY created_ms");
	if (!st)
		return -1;
	static const struct apiop_field key_fields[] = {
		{"id", APIOP_TEXT}, {"name", APIOP_TEXT}, {"role", APIOP_TEXT},
		{"app", APIOP_TEXT_OR_NULL}, {"created_ms", APIOP_INT},
		{"last_used_ms", APIOP_INT_OR_NULL}, {"revoked_ms", APIOP_INT_OR_NULL},
	};
	op->out = cJSON_CreateObject();
	return apiop_add_rows(tx, op->out, "keys", st, APIOP_FIELDS(key_fields));
}

static int key_revoke_tx(struct store_tx *tx, struct apiop *op)
{
	if (auth_key_revoke_tx(tx, op->id) < 0) {
		if (strcmp(tx->err.msg, "not found") == 0) {
			tx->err.msg[0] = '\0';
			return apiop_refuse(op, 404, "not_found", "no API key %s", op->id);
		}
		return -1;
	}
	op->out = cJSON_CreateObject();
	cJSON_AddStringToObject(op->out, "revoked", op->id);
	return rollout_event_tx(tx, NULL, "apikey.revoked", "id=%s by=%s", op->id, op->who);
}

static void key_revoke_after(struct apiop *op)
{
	if (op->c->auth)
		auth_forget(op->c->auth, op->id);
}

/* ---- small things ---- */

static void health(struct server_req *r, void *arg)
{
	(void)arg;
	cJSON *b = cJSON_CreateObject();
	cJSON_AddStringToObject(b, "status", "ok");
	cJSON_AddStringToObject(b, "version", SLIPWAY_VERSION);
	cJSON_AddNumberToObject(b, "protocol", 1);
	cJSON_AddNumberToObject(b, "agents", r->coord->agents ? (double)agents_count(r->coord->agents)
							       : 0);
	cJSON_AddNumberToObject(b, "polls", r->coord->queue ? (double)queue_waiting(r->coord->queue)
							     : 0);
	server_respond_json_take(r, 200, b);
}

static void whoami(struct server_req *r, void *arg)
{
	(void)arg;
	cJSON *b = cJSON_CreateObject();
	cJSON_AddStringToObject(b, "id", r->who.key_id);
	cJSON_AddStringToObject(b, "name", r->who.key_name);
	cJSON_AddStringToObject(b, "role", auth_role_name(r->who.role));
	if (r->who.app[0])
		cJSON_AddStringToObject(b, "app", r->who.app);
	else
		cJSON_AddNullToObject(b, "app");
	server_respond_json_take(r, 200, b);
}

void api_shutdown(struct coord *c)
{
	(void)c;
	struct logread *l = readers;
	while (l) {
		struct logread *next = l->next;
		if (l->r && l->started) {
			struct server_req *r = l->r;
			server_on_abort(r, NULL, NULL);
			l->r = NULL;
			server_stream_end(r);
			if (!l->busy)
				logread_free(l);
		}
		l = next;
	}
}

/* ---- the routes ---- */

/* A route that is one store operation: its function, the path parameter naming
 * the row (op->id; NULL: none), what runs after the commit, and for routes
 * with a JSON body the check, which answers 400 with the problem it names and
 * may copy values into the op. */
struct op_route {
	apiop_fn fn;
	const char *param;
	apiop_after_fn after;
	const char *(*check)(struct apiop *op, struct err *err);
};

static void op_route(struct server_req *r, void *arg)
{
	const struct op_route *o = arg;
	struct apiop *op = apiop_start(r, o->fn, o->check != NULL, 0);
	if (!op)
		return;
	if (o->param)
		snprintf(op->id, sizeof op->id, "%s", server_param(r, o->param));
	op->after = o->after;
	struct err err = {{0}};
	const char *bad = o->check ? o->check(op, &err) : NULL;
	if (bad) {
		server_respond_error(r, 400, "bad_request", "%s", bad);
		apiop_free(op);
		return;
	}
	apiop_submit(op);
}

/* A list of an app's rows (?limit=): sql binds ?1 app, ?2 limit. */
struct app_list {
	const char *sql;
	const char *key;
	const struct apiop_field *fields;
	size_t nfields;
};

static int app_list_tx(struct store_tx *tx, struct apiop *op)
{
	const struct app_list *l = op->arg;
	int ex = apiop_app_exists(tx, op);
	if (ex <= 0)
		return ex;
	sqlite3_stmt *st = store_stmt(tx, l->sql);
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, op->app, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, op->n1);
	op->out = cJSON_CreateObject();
	return apiop_add_rows(tx, op->out, l->key, st, l->fields, l->nfields);
}

static void app_list(struct server_req *r, void *arg)
{
	int64_t limit;
	if (apiop_query_limit(r, &limit) < 0)
		return;
	struct apiop *op = apiop_start(r, app_list_tx, 0, 0);
	if (!op)
		return;
	op->arg = arg;
	op->n1 = limit;
	apiop_submit(op);
}

static const char SQL_BUILDS[] = "SELECT " BUILD_COLS "FROM builds WHERE app = ? "
				 "ORDER BY created_ms DESC, rowid DESC LIMIT ?";
static const char SQL_RELEASES[] = "SELECT " RELEASE_COLS "FROM releases WHERE app = ? "
				   "ORDER BY seq DESC LIMIT ?";
static const char SQL_ROLLOUTS[] = "SELECT " ROLLOUT_COLS "FROM rollouts WHERE app = ? "
				   "ORDER BY started_ms DESC, rowid DESC LIMIT ?";
static const struct app_list builds_list = {SQL_BUILDS, "builds", APIOP_FIELDS(build_fields)};
static const struct app_list releases_list = {SQL_RELEASES, "releases",
					      APIOP_FIELDS(release_fields)};
static const struct app_list rollouts_list = {SQL_ROLLOUTS, "rollouts",
					      APIOP_FIELDS(rollout_fields)};

static const struct op_route apps_list = {.fn = apps_list_tx};
static const struct op_route app_create = {.fn = app_create_tx, .check = app_create_check};
static const struct op_route app_info = {.fn = app_info_tx};
static const struct op_route app_update = {.fn = app_update_tx, .check = app_update_check};
static const struct op_route app_delete = {.fn = app_delete_tx};
static const struct op_route build_info = {.fn = build_info_tx, .param = "build"};
static const struct op_route build_cancel = {.fn = cancel_tx, .param = "build",
					     .after = cancel_after};
static const struct op_route release_create = {.fn = release_create_tx,
					       .check = release_create_check};
static const struct op_route release_info = {.fn = release_info_tx, .param = "release"};
static const struct op_route release_promote = {.fn = promote_tx, .param = "release"};
static const struct op_route release_rollback = {.fn = rollback_tx, .param = "release"};
static const struct op_route rollout_info = {.fn = rollout_info_tx, .param = "rollout"};
static const struct op_route env_get = {.fn = env_get_tx};
static const struct op_route env_change = {.fn = env_change_tx, .check = env_change_check};
static const struct op_route scale = {.fn = scale_tx, .check = scale_check};
static const struct op_route agents_list = {.fn = agents_list_tx, .after = agents_list_after};
static const struct op_route agent_delete = {.fn = agent_delete_tx, .param = "agent",
					     .after = agent_delete_after};
static const struct op_route key_create = {.fn = key_create_tx, .after = key_create_after,
					   .check = key_create_check};
static const struct op_route keys_list = {.fn = keys_list_tx};
static const struct op_route key_revoke = {.fn = key_revoke_tx, .param = "key",
					   .after = key_revoke_after};

#define OP(x) op_route, (void *)&(x)
#define LIST(x) app_list, (void *)&(x)

int api_register(struct coord *c)
{
	const struct server_route routes[] = {
		{"GET", "/v1/health", SERVER_AUTH_NONE, SERVER_BODY_NONE, 0, health, NULL},
		{"GET", "/v1/whoami", SERVER_AUTH_READ, SERVER_BODY_NONE, SERVER_ROUTE_SCOPED_OK,
		 whoami, NULL},
		{"GET", "/v1/apps", SERVER_AUTH_READ, SERVER_BODY_NONE, SERVER_ROUTE_SCOPED_OK,
		 OP(apps_list)},
		{"POST", "/v1/apps", SERVER_AUTH_ADMIN, SERVER_BODY_SMALL, 0, OP(app_create)},
		{"GET", "/v1/apps/{app}", SERVER_AUTH_READ, SERVER_BODY_NONE, 0, OP(app_info)},
		{"PATCH", "/v1/apps/{app}", SERVER_AUTH_ADMIN, SERVER_BODY_SMALL, 0, OP(app_update)},
		{"DELETE", "/v1/apps/{app}", SERVER_AUTH_ADMIN, SERVER_BODY_NONE, 0, OP(app_delete)},
		{"GET", "/v1/apps/{app}/builds", SERVER_AUTH_READ, SERVER_BODY_NONE, 0,
		 LIST(builds_list)},
		{"POST", "/v1/apps/{app}/builds", SERVER_AUTH_DEPLOY, SERVER_BODY_UPLOAD, 0,
		 build_upload, NULL},
		{"POST", "/v1/builds/{build}/cancel", SERVER_AUTH_DEPLOY, SERVER_BODY_SMALL,
		 SERVER_ROUTE_SCOPED_OK, OP(build_cancel)},
		{"GET", "/v1/builds/{build}", SERVER_AUTH_READ, SERVER_BODY_NONE,
		 SERVER_ROUTE_SCOPED_OK, OP(build_info)},
		{"GET", "/v1/builds/{build}/log", SERVER_AUTH_READ, SERVER_BODY_NONE,
		 SERVER_ROUTE_SCOPED_OK, build_log, NULL},
		{"GET", "/v1/apps/{app}/releases", SERVER_AUTH_READ, SERVER_BODY_NONE, 0,
		 LIST(releases_list)},
		{"POST", "/v1/apps/{app}/releases", SERVER_AUTH_DEPLOY, SERVER_BODY_SMALL, 0,
		 OP(release_create)},
		{"GET", "/v1/apps/{app}/releases/{release}", SERVER_AUTH_READ, SERVER_BODY_NONE, 0,
		 OP(release_info)},
		{"POST", "/v1/apps/{app}/releases/{release}/promote", SERVER_AUTH_DEPLOY,
		 SERVER_BODY_SMALL, 0, OP(release_promote)},
		{"POST", "/v1/apps/{app}/releases/{release}/rollback", SERVER_AUTH_DEPLOY,
		 SERVER_BODY_SMALL, 0, OP(release_rollback)},
		{"GET", "/v1/apps/{app}/rollouts", SERVER_AUTH_READ, SERVER_BODY_NONE, 0,
		 LIST(rollouts_list)},
		{"GET", "/v1/apps/{app}/rollouts/{rollout}", SERVER_AUTH_READ, SERVER_BODY_NONE, 0,
		 OP(rollout_info)},
		{"GET", "/v1/apps/{app}/env", SERVER_AUTH_DEPLOY, SERVER_BODY_NONE, 0, OP(env_get)},
		{"PATCH", "/v1/apps/{app}/env", SERVER_AUTH_DEPLOY, SERVER_BODY_SMALL, 0,
		 OP(env_change)},
		{"POST", "/v1/apps/{app}/scale", SERVER_AUTH_DEPLOY, SERVER_BODY_SMALL, 0,
		 OP(scale)},
		{"GET", "/v1/ps", SERVER_AUTH_READ, SERVER_BODY_NONE, SERVER_ROUTE_SCOPED_OK, ps,
		 NULL},
		{"GET", "/v1/agents", SERVER_AUTH_READ, SERVER_BODY_NONE, 0, OP(agents_list)},
		{"DELETE", "/v1/agents/{agent}", SERVER_AUTH_ADMIN, SERVER_BODY_NONE, 0,
		 OP(agent_delete)},
		{"GET", "/v1/events", SERVER_AUTH_READ, SERVER_BODY_NONE, SERVER_ROUTE_SCOPED_OK,
		 events, NULL},
		{"POST", "/v1/apikeys", SERVER_AUTH_ADMIN, SERVER_BODY_SMALL, 0, OP(key_create)},
		{"GET", "/v1/apikeys", SERVER_AUTH_ADMIN, SERVER_BODY_NONE, 0, OP(keys_list)},
		{"DELETE", "/v1/apikeys/{key}", SERVER_AUTH_ADMIN, SERVER_BODY_NONE, 0,
		 OP(key_revoke)},
	};
	for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
		if (server_add_route_ex(c->server, &routes[i]) < 0)
			return -1;
	return runs_register_routes(c);
}
