#include "link.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "apiop.h"
#include "buf.h"
#include "config.h"
#include "coord.h"
#include "crypto.h"
#include "gitlab.h"
#include "json.h"
#include "log.h"
#include "rollout.h"
#include "secrets.h"
#include "server.h"
#include "slack.h"
#include "sshkey.h"
#include "store.h"
#include "webhook.h"

#define HOOK_ID_BYTES 16        /* 32 hex digits in the URL */
#define HOOK_TOKEN_BYTES 32     /* 64 hex digits in X-Gitlab-Token */
#define BRANCH_MAX 255
#define SEALED_MAX ((size_t)64 << 10)

struct flow;

struct link {
	struct coord *c;
	struct flow *flows;         /* in progress, one per app */
	bool closing;               /* link_free ran: the last flow frees the module */
};

enum step { STEP_LINK, STEP_UNLINK };

struct flow {
	struct link *m;
	struct flow *next;
	struct server_req *r;       /* NULL once the client went away */
	enum step kind;
	char app[48];
	char who[64];
	bool force;                 /* unlink: clear even when GitLab refuses */

	/* what the caller asked (link) */
	char gitlab_url[GITLAB_URL_MAX + 1];
	char api_base[GITLAB_URL_MAX + 16];
	char project_path[GITLAB_PATH_MAX + 1];
	char *token;                /* plaintext, wiped when freed */
	char branch[BRANCH_MAX + 1];
	bool has_branch;
	char deploy[16];
	bool has_deploy;

	/* the app's row */
	bool found;
	bool linked;
	char hook_id[48];
	char *hook_token;           /* plaintext, wiped when freed */
	char public_line[512];
	bool has_private;
	char old_api_base[GITLAB_URL_MAX + 16];
	char old_gitlab_url[GITLAB_URL_MAX + 1];
	char old_project[GITLAB_PATH_MAX + 1];
	int64_t old_project_id;
	int64_t old_hook_gid, old_key_gid;
	char *old_token;            /* unlink: the stored GitLab token */
	char app_branch[BRANCH_MAX + 1];
	bool app_branch_set;
	char app_deploy[16];
	char repo_url[GITLAB_URL_MAX + 1];

	/* made on the way */
	struct sshkey *key;         /* a new pair (none was stored) */
	char fingerprint[SSHKEY_FINGERPRINT_MAX];
	struct gitlab_project project;
	char hook_url[GITLAB_URL_MAX + 128];
	char filter[BRANCH_MAX + 1];
	int64_t key_gid, hook_gid;
	bool created_key, created_hook;
	bool key_retry_find;        /* a refused add: look again (a retried POST may have won) */

	/* the outcome */
	int status;                 /* HTTP status of the answer */
	char code[32];
	char message[700];
	long gitlab_status;
	cJSON *warnings;            /* unlink --force: what GitLab refused */
	bool removed_hook, removed_key;
};

/* ---- small helpers ---- */

static void wipe_free(char *s)
{
	if (s) {
		memset(s, 0, strlen(s));
		free(s);
	}
}

static struct flow *busy(struct link *m, const char *app)
{
	for (struct flow *f = m->flows; f; f = f->next)
		if (strcmp(f->app, app) == 0)
			return f;
	return NULL;
}

static void flow_free(struct flow *f)
{
	struct link *m = f->m;
	for (struct flow **p = &m->flows; *p; p = &(*p)->next) {
		if (*p == f) {
			*p = f->next;
			break;
		}
	}
	wipe_free(f->token);
	wipe_free(f->hook_token);
	wipe_free(f->old_token);
	if (f->key) {
		sshkey_free(f->key);
		free(f->key);
	}
	cJSON_Delete(f->warnings);
	free(f);
	if (m->closing && !m->flows)
		free(m);
}

static void flow_abort(struct server_req *r, void *arg)
{
	(void)r;
	((struct flow *)arg)->r = NULL; /* the flow still finishes: GitLab and the store agree */
}

static int fail(struct flow *f, int status, const char *code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static int fail(struct flow *f, int status, const char *code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(f->message, sizeof f->message, fmt, ap);
	va_end(ap);
	snprintf(f->code, sizeof f->code, "%s", code);
	f->status = status;
	return -1;
}

static void gitlab_failed(struct flow *f, const struct gitlab_reply *rep)
{
	f->gitlab_status = rep->status;
	fail(f, 502, "gitlab_error", "%s", rep->message);
}

/* A GitLab refusal ends the flow with `end` (undo: what it made goes; finish:
 * nothing was made yet). 1 when rep was a refusal. */
static int refused_by_gitlab(struct flow *f, const struct gitlab_reply *rep,
			     void (*end)(struct flow *f))
{
	if (rep->ok)
		return 0;
	gitlab_failed(f, rep);
	end(f);
	return 1;
}

/* The GitLab side of the link as the answer shows it. */
static cJSON *link_json(const struct flow *f)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "app", f->app);
	cJSON_AddBoolToObject(o, "linked", 1);
	cJSON_AddStringToObject(o, "gitlab_url", f->gitlab_url);
	cJSON_AddStringToObject(o, "project", f->project.path_with_namespace);
	cJSON_AddNumberToObject(o, "project_id", (double)f->project.id);
	cJSON_AddStringToObject(o, "repo_url", f->project.ssh_url_to_repo);
	const char *branch = f->has_branch ? f->branch : f->app_branch_set ? f->app_branch : NULL;
	if (branch && *branch)
		cJSON_AddStringToObject(o, "branch", branch);
	else
		cJSON_AddNullToObject(o, "branch");
	cJSON_AddStringToObject(o, "default_branch", f->project.default_branch);
	cJSON_AddStringToObject(o, "deploy", f->has_deploy ? f->deploy : f->app_deploy);
	cJSON *key = cJSON_AddObjectToObject(o, "deploy_key");
	cJSON_AddStringToObject(key, "public", f->public_line);
	cJSON_AddStringToObject(key, "fingerprint", f->fingerprint);
	cJSON_AddNumberToObject(key, "gitlab_id", (double)f->key_gid);
	cJSON_AddBoolToObject(key, "created", f->created_key);
	cJSON *hook = cJSON_AddObjectToObject(o, "webhook");
	cJSON_AddNumberToObject(hook, "gitlab_id", (double)f->hook_gid);
	cJSON_AddBoolToObject(hook, "created", f->created_hook);
	cJSON_AddStringToObject(hook, "branch_filter", f->filter);
	return o;
}

/* Answers (when the client is still there) and frees the flow. */
static void finish(struct flow *f)
{
	struct server_req *r = f->r;
	if (r) {
		server_on_abort(r, NULL, NULL);
		if (f->status >= 400 && f->gitlab_status >= 0 && strcmp(f->code, "gitlab_error") == 0) {
			cJSON *o = cJSON_CreateObject();
			cJSON *e = cJSON_AddObjectToObject(o, "error");
			cJSON_AddStringToObject(e, "code", f->code);
			cJSON_AddStringToObject(e, "message", f->message);
			cJSON_AddNumberToObject(e, "gitlab_status", (double)f->gitlab_status);
			server_respond_json_take(r, f->status, o);
		} else if (f->status == 500) {
			server_respond_internal(r, f->kind == STEP_LINK ? "link" : "unlink", f->message);
		} else if (f->status >= 400) {
			server_respond_error(r, f->status, f->code, "%s", f->message);
		} else if (f->kind == STEP_LINK) {
			server_respond_json_take(r, 200, link_json(f));
		} else {
			cJSON *o = cJSON_CreateObject();
			cJSON_AddStringToObject(o, "app", f->app);
			cJSON_AddBoolToObject(o, "unlinked", f->linked);
			cJSON_AddBoolToObject(o, "webhook_removed", f->removed_hook);
			cJSON_AddBoolToObject(o, "deploy_key_removed", f->removed_key);
			if (f->warnings) {
				cJSON_AddItemToObject(o, "warnings", f->warnings);
				f->warnings = NULL;
			}
			server_respond_json_take(r, 200, o);
		}
	}
	if (f->status >= 400)
		log_warn(f->kind == STEP_LINK ? "link.failed" : "link.unlink_failed",
			 "app=%s status=%d error=\"%s\"", f->app, f->status, f->message);
	flow_free(f);
}

static struct gitlab_conn conn_of(const struct flow *f, const char *base, const char *token)
{
	(void)f;
	struct gitlab_conn conn = {.base_url = base, .token = token};
	return conn;
}

/* ---- undoing what this flow made at GitLab ---- */

static void undo(struct flow *f);

static void append_message(struct flow *f, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void append_message(struct flow *f, const char *fmt, ...)
{
	size_t n = strlen(f->message);
	if (n + 1 >= sizeof f->message)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(f->message + n, sizeof f->message - n, fmt, ap);
	va_end(ap);
}

/* One thing this flow created is removed (or could not be). */
static void undone(struct flow *f, const struct gitlab_reply *rep, bool *created,
		   const char *what, const char *name, const char *made, int64_t gid)
{
	*created = false;
	if (!rep->ok) {
		log_error("link.undo_failed", "app=%s what=%s gitlab_id=%lld error=\"%s\"", f->app,
			  what, (long long)gid, rep->message);
		append_message(f, " (and the %s %lld %s just now could not be removed: "
				  "delete it in GitLab)",
			       name, (long long)gid, made);
	}
	undo(f);
}

static void undone_hook(const struct gitlab_reply *rep, void *arg)
{
	struct flow *f = arg;
	undone(f, rep, &f->created_hook, "webhook", "webhook", "created", f->hook_gid);
}

static void undone_key(const struct gitlab_reply *rep, void *arg)
{
	struct flow *f = arg;
	undone(f, rep, &f->created_key, "deploy_key", "deploy key", "added", f->key_gid);
}

/* After a failure: removes what this flow created, newest first, then answers. */
static void undo(struct flow *f)
{
	struct coord *c = f->m->c;
	struct gitlab_conn conn = conn_of(f, f->api_base, f->token);
	struct err err;
	if (f->created_hook) {
		if (gitlab_delete_hook(c->http, &conn, f->project.id, f->hook_gid, undone_hook, f,
				       &err) == 0)
			return;
		f->created_hook = false;
		append_message(f, " (and the webhook %lld could not be removed: %s)",
			       (long long)f->hook_gid, err.msg);
	}
	if (f->created_key) {
		if (gitlab_delete_deploy_key(c->http, &conn, f->project.id, f->key_gid, undone_key, f,
					     &err) == 0)
			return;
		f->created_key = false;
		append_message(f, " (and the deploy key %lld could not be removed: %s)",
			       (long long)f->key_gid, err.msg);
	}
	finish(f);
}

/* ---- the app's row ---- */

static const char SQL_LOAD[] =
	"SELECT hook_id, hook_token, deploy_key_public, deploy_key_private IS NOT NULL, gitlab_url, "
	"project_id, gitlab_hook_id, gitlab_key_id, gitlab_token, branch, deploy, project, "
	"repo_url FROM apps WHERE name = ?";

/* Opens a sealed column of the row into *out (NULL when the cell is NULL). */
static int open_cell(struct store_tx *tx, struct flow *f, sqlite3_stmt *st, int col,
		     const char *column, char **out)
{
	const void *blob = sqlite3_column_blob(st, col);
	int len = sqlite3_column_bytes(st, col);
	if (!blob || len <= 0)
		return 0;
	struct buf plain;
	buf_init(&plain, SEALED_MAX);
	if (secrets_open(f->m->c->master_key, "apps", f->app, column, blob, (size_t)len, &plain,
			 &tx->err) < 0) {
		buf_free(&plain);
		return -1;
	}
	*out = buf_detach(&plain, NULL);
	buf_free(&plain);
	if (!*out)
		return err_set(&tx->err, "out of memory");
	log_redact_add(*out);
	return 0;
}

static void copy_col(char *out, size_t cap, sqlite3_stmt *st, int col)
{
	snprintf(out, cap, "%s", store_col_text(st, col));
}

static int load_tx(struct store_tx *tx, void *arg)
{
	struct flow *f = arg;
	sqlite3_stmt *st;
	int rc = store_step_text(tx, SQL_LOAD, f->app, &st);
	if (rc < 0)
		return -1;
	f->found = rc == SQLITE_ROW;
	if (!f->found)
		return 0;
	f->linked = sqlite3_column_type(st, 0) != SQLITE_NULL ||
		    sqlite3_column_type(st, 6) != SQLITE_NULL ||
		    sqlite3_column_type(st, 7) != SQLITE_NULL;
	copy_col(f->hook_id, sizeof f->hook_id, st, 0);
	copy_col(f->public_line, sizeof f->public_line, st, 2);
	f->has_private = sqlite3_column_int(st, 3) != 0;
	copy_col(f->old_gitlab_url, sizeof f->old_gitlab_url, st, 4);
	f->old_project_id = sqlite3_column_int64(st, 5);
	f->old_hook_gid = sqlite3_column_int64(st, 6);
	f->old_key_gid = sqlite3_column_int64(st, 7);
	f->app_branch_set = sqlite3_column_type(st, 9) != SQLITE_NULL;
	copy_col(f->app_branch, sizeof f->app_branch, st, 9);
	copy_col(f->app_deploy, sizeof f->app_deploy, st, 10);
	copy_col(f->old_project, sizeof f->old_project, st, 11);
	copy_col(f->repo_url, sizeof f->repo_url, st, 12);
	if (open_cell(tx, f, st, 1, "hook_token", &f->hook_token) < 0 ||
	    (f->kind == STEP_UNLINK && open_cell(tx, f, st, 8, "gitlab_token", &f->old_token) < 0))
		return -1;
	return 0;
}

static const char SQL_SAVE[] =
	"UPDATE apps SET hook_id = ?1, hook_token = ?2, deploy_key_public = ?3, "
	"deploy_key_private = coalesce(?4, deploy_key_private), gitlab_url = ?5, gitlab_token = ?6, "
	"gitlab_hook_id = ?7, gitlab_key_id = ?8, project = ?9, project_id = ?10, "
	"known_hosts = CASE WHEN repo_url IS ?11 THEN known_hosts ELSE NULL END, repo_url = ?11, "
	"branch = CASE WHEN ?12 THEN ?13 ELSE branch END, deploy = coalesce(?14, deploy) "
	"WHERE name = ?15";

static int seal(struct flow *f, const char *column, const char *plain, struct buf *out)
{
	return secrets_seal(f->m->c->master_key, "apps", f->app, column, plain, strlen(plain), out);
}

/* The GitLab URL kept in the store: the API base without "/api/v4". */
static void stored_url(const char *api_base, char *out, size_t cap)
{
	snprintf(out, cap, "%s", api_base);
	size_t n = strlen(out);
	if (n > 7 && strcmp(out + n - 7, "/api/v4") == 0)
		out[n - 7] = '\0';
}

/* ONE transaction: everything the link needs, secrets sealed. */
static int save_tx(struct store_tx *tx, void *arg)
{
	struct flow *f = arg;
	struct buf token, hook, priv;
	buf_init(&token, SEALED_MAX);
	buf_init(&hook, SEALED_MAX);
	buf_init(&priv, SEALED_MAX);
	int rc = -1;
	if (seal(f, "gitlab_token", f->token, &token) < 0 ||
	    seal(f, "hook_token", f->hook_token, &hook) < 0 ||
	    (f->key && seal(f, "deploy_key_private", f->key->private_pem, &priv) < 0)) {
		err_set(&tx->err, "cannot seal the link's secrets");
		goto out;
	}
	char base[GITLAB_URL_MAX + 16];
	stored_url(f->api_base, base, sizeof base);
	sqlite3_stmt *st = store_stmt(tx, SQL_SAVE);
	if (!st)
		goto out;
	sqlite3_bind_text(st, 1, f->hook_id, -1, SQLITE_STATIC);
	sqlite3_bind_blob(st, 2, hook.data, (int)hook.len, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, f->public_line, -1, SQLITE_STATIC);
	if (f->key)
		sqlite3_bind_blob(st, 4, priv.data, (int)priv.len, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, 4);
	sqlite3_bind_text(st, 5, base, -1, SQLITE_STATIC);
	sqlite3_bind_blob(st, 6, token.data, (int)token.len, SQLITE_STATIC);
	sqlite3_bind_int64(st, 7, f->hook_gid);
	sqlite3_bind_int64(st, 8, f->key_gid);
	sqlite3_bind_text(st, 9, f->project.path_with_namespace, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 10, f->project.id);
	sqlite3_bind_text(st, 11, f->project.ssh_url_to_repo, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 12, f->has_branch);
	if (f->has_branch && f->branch[0])
		sqlite3_bind_text(st, 13, f->branch, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, 13);
	if (f->has_deploy)
		sqlite3_bind_text(st, 14, f->deploy, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, 14);
	sqlite3_bind_text(st, 15, f->app, -1, SQLITE_STATIC);
	if (store_step(tx, st) != SQLITE_DONE)
		goto out;
	if (sqlite3_changes(tx->db) != 1) {
		f->found = false;
		err_set(&tx->err, "app %s was deleted meanwhile", f->app);
		goto out;
	}
	rc = rollout_event_tx(tx, f->app, "app.linked",
			      "by=%s project=%s project_id=%lld webhook=%lld deploy_key=%lld "
			      "fingerprint=%s",
			      f->who, f->project.path_with_namespace, (long long)f->project.id,
			      (long long)f->hook_gid, (long long)f->key_gid, f->fingerprint);
out:
	buf_free(&token);
	buf_free(&hook);
	buf_free(&priv);
	return rc;
}

static const char SQL_CLEAR[] =
	"UPDATE apps SET hook_id = NULL, hook_token = NULL, deploy_key_public = NULL, "
	"deploy_key_private = NULL, known_hosts = NULL, gitlab_url = NULL, gitlab_token = NULL, "
	"gitlab_hook_id = NULL, gitlab_key_id = NULL, project_id = NULL WHERE name = ?";

static int clear_tx(struct store_tx *tx, void *arg)
{
	struct flow *f = arg;
	sqlite3_stmt *st = store_stmt(tx, SQL_CLEAR);
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, f->app, -1, SQLITE_STATIC);
	if (store_step(tx, st) != SQLITE_DONE)
		return -1;
	return rollout_event_tx(tx, f->app, "app.unlinked",
				"by=%s project=%s webhook_removed=%d deploy_key_removed=%d "
				"forced=%d",
				f->who, f->old_project, f->removed_hook, f->removed_key,
				f->warnings != NULL);
}

/* ---- linking, step by step ---- */

static void saved(int rc, void *arg);
static void find_hook(struct flow *f);
static void get_project(struct flow *f);

static void save(struct flow *f)
{
	if (store_submit(f->m->c->store, save_tx, saved, f) < 0) {
		fail(f, 503, "unavailable", "the store is busy; retry");
		undo(f);
	}
}

static void saved(int rc, void *arg)
{
	struct flow *f = arg;
	if (rc < 0) {
		if (!f->found)
			fail(f, 404, "not_found", "app %s was deleted while it was being linked",
			     f->app);
		else
			fail(f, 500, "internal", "the link could not be stored");
		undo(f);
		return;
	}
	f->status = 200;
	log_info("link.linked", "app=%s project=%s project_id=%lld webhook=%lld created=%d "
				"deploy_key=%lld created=%d fingerprint=%s",
		 f->app, f->project.path_with_namespace, (long long)f->project.id,
		 (long long)f->hook_gid, f->created_hook, (long long)f->key_gid, f->created_key,
		 f->fingerprint);
	finish(f);
}

static struct gitlab_hook_spec hook_spec(const struct flow *f)
{
	const char *deploy = f->has_deploy ? f->deploy : f->app_deploy;
	struct gitlab_hook_spec spec = {
		.url = f->hook_url,
		.token = f->hook_token,
		.push_events = true,
		.tag_push_events = strcmp(deploy, "tags") == 0,
		.pipeline_events = strcmp(deploy, "pipeline") == 0,
		.branch_filter = f->filter,
	};
	return spec;
}

static void hook_done(const struct gitlab_reply *rep, void *arg)
{
	struct flow *f = arg;
	if (refused_by_gitlab(f, rep, undo))
		return;
	f->hook_gid = rep->id;
	save(f);
}

static void hook_created(const struct gitlab_reply *rep, void *arg)
{
	struct flow *f = arg;
	if (rep->ok)
		f->created_hook = true;
	hook_done(rep, arg);
}

static void hook_found(const struct gitlab_reply *rep, void *arg)
{
	struct flow *f = arg;
	if (refused_by_gitlab(f, rep, undo))
		return;
	struct coord *c = f->m->c;
	struct gitlab_conn conn = conn_of(f, f->api_base, f->token);
	struct gitlab_hook_spec spec = hook_spec(f);
	struct err err;
	int rc;
	if (rep->id) {
		/* Ours already (same URL): bring its settings and token up to date. */
		f->hook_gid = rep->id;
		rc = gitlab_update_hook(c->http, &conn, f->project.id, rep->id, &spec, hook_done, f,
					&err);
	} else {
		rc = gitlab_add_hook(c->http, &conn, f->project.id, &spec, hook_created, f, &err);
	}
	if (rc < 0) {
		fail(f, 500, "internal", "%s", err.msg);
		undo(f);
	}
}

static void find_hook(struct flow *f)
{
	struct coord *c = f->m->c;
	struct gitlab_conn conn = conn_of(f, f->api_base, f->token);
	struct err err;
	if (gitlab_find_hook(c->http, &conn, f->project.id, f->hook_url, hook_found, f, &err) < 0) {
		fail(f, 500, "internal", "%s", err.msg);
		undo(f);
	}
}

static void key_found(const struct gitlab_reply *rep, void *arg);

static void key_added(const struct gitlab_reply *rep, void *arg)
{
	struct flow *f = arg;
	if (rep->ok) {
		f->created_key = true;
		f->key_gid = rep->id;
		find_hook(f);
		return;
	}
	gitlab_failed(f, rep);
	/* "has already been taken": an earlier attempt of this POST may have made it. */
	if (!f->key_retry_find && (rep->status == 400 || rep->status == 409 || rep->status == 422)) {
		f->key_retry_find = true;
		struct gitlab_conn conn = conn_of(f, f->api_base, f->token);
		struct err err;
		if (gitlab_find_deploy_key(f->m->c->http, &conn, f->project.id, f->public_line,
					   key_found, f, &err) == 0)
			return;
	}
	undo(f);
}

static void key_found(const struct gitlab_reply *rep, void *arg)
{
	struct flow *f = arg;
	if (f->key_retry_find && (!rep->ok || !rep->id)) {
		undo(f); /* the add's refusal (kept in f) is the answer */
		return;
	}
	if (refused_by_gitlab(f, rep, undo))
		return;
	if (rep->id) {
		f->status = 0;
		f->gitlab_status = -1;
		f->key_gid = rep->id;
		find_hook(f);
		return;
	}
	struct gitlab_conn conn = conn_of(f, f->api_base, f->token);
	struct err err;
	char title[80];
	snprintf(title, sizeof title, "slipway-%s", f->app);
	if (gitlab_add_deploy_key(f->m->c->http, &conn, f->project.id, title, f->public_line,
				  key_added, f, &err) < 0) {
		fail(f, 500, "internal", "%s", err.msg);
		undo(f);
	}
}

static void got_project(const struct gitlab_reply *rep, void *arg)
{
	struct flow *f = arg;
	if (refused_by_gitlab(f, rep, finish))
		return;
	f->project = rep->project;
	if (f->linked && f->old_project_id && f->old_project_id != f->project.id) {
		fail(f, 409, "conflict", "app %s is linked to project %s (id %lld); unlink it first",
		     f->app, f->old_project, (long long)f->old_project_id);
		finish(f);
		return;
	}
	const char *deploy = f->has_deploy ? f->deploy : f->app_deploy;
	const char *branch = f->has_branch ? f->branch : f->app_branch;
	if (strcmp(deploy, "branch") == 0)
		snprintf(f->filter, sizeof f->filter, "%s",
			 *branch ? branch : f->project.default_branch);
	else
		f->filter[0] = '\0'; /* tags and pipelines: every branch's events reach us */
	struct gitlab_conn conn = conn_of(f, f->api_base, f->token);
	struct err err;
	if (gitlab_find_deploy_key(f->m->c->http, &conn, f->project.id, f->public_line, key_found,
				   f, &err) < 0) {
		fail(f, 500, "internal", "%s", err.msg);
		finish(f);
	}
}

static void get_project(struct flow *f)
{
	struct gitlab_conn conn = conn_of(f, f->api_base, f->token);
	struct err err;
	if (gitlab_get_project(f->m->c->http, &conn, f->project_path, got_project, f, &err) < 0) {
		fail(f, 400, "bad_request", "%s", err.msg);
		finish(f);
	}
}

static void key_made(struct sshkey *key, const char *error, void *arg)
{
	struct flow *f = arg;
	if (!key) {
		fail(f, 500, "internal", "deploy key generation failed: %s", error ? error : "?");
		finish(f);
		return;
	}
	f->key = key;
	log_redact_add(key->private_pem);
	/* Each line of it too: a piece must not get out either. */
	char *pem = strdup(key->private_pem), *save = NULL;
	for (char *ln = pem ? strtok_r(pem, "\n", &save) : NULL; ln; ln = strtok_r(NULL, "\n", &save))
		if (strncmp(ln, "-----", 5) != 0)
			log_redact_add(ln);
	wipe_free(pem);
	snprintf(f->public_line, sizeof f->public_line, "%s", key->public_line);
	snprintf(f->fingerprint, sizeof f->fingerprint, "%s", key->fingerprint);
	get_project(f);
}

/* The app's row could not be read, or there is no such app: answered. */
static int not_loaded(struct flow *f, int rc)
{
	if (rc < 0)
		fail(f, 500, "internal", "the app's link could not be read");
	else if (!f->found)
		fail(f, 404, "not_found", "unknown app %s", f->app);
	else
		return 0;
	finish(f);
	return 1;
}

static void link_loaded(int rc, void *arg)
{
	struct flow *f = arg;
	struct coord *c = f->m->c;
	if (not_loaded(f, rc))
		return;
	char old_base[GITLAB_URL_MAX + 16];
	if (f->linked && f->old_gitlab_url[0] &&
	    (gitlab_api_base(f->old_gitlab_url, old_base, sizeof old_base, NULL) < 0 ||
	     strcmp(old_base, f->api_base) != 0)) {
		fail(f, 409, "conflict", "app %s is linked to %s at %s; unlink it first", f->app,
		     f->old_project, f->old_gitlab_url);
		finish(f);
		return;
	}
	/* A first link makes the hook's id and token; a re-link keeps them. */
	if (!f->hook_id[0] || !f->hook_token) {
		char tok[2 * HOOK_TOKEN_BYTES + 1];
		if (crypto_random_hex(f->hook_id, HOOK_ID_BYTES) < 0 ||
		    crypto_random_hex(tok, HOOK_TOKEN_BYTES) < 0) {
			fail(f, 500, "internal", "no randomness");
			finish(f);
			return;
		}
		wipe_free(f->hook_token);
		f->hook_token = strdup(tok);
		memset(tok, 0, sizeof tok);
		if (!f->hook_token) {
			fail(f, 503, "unavailable", "out of memory");
			finish(f);
			return;
		}
		log_redact_add(f->hook_token);
	}
	const char *pub = config_str(c->cfg, "server.public_url");
	size_t n = strlen(pub);
	while (n > 0 && pub[n - 1] == '/')
		n--;
	snprintf(f->hook_url, sizeof f->hook_url, "%.*s/hooks/gitlab/%s", (int)n, pub, f->hook_id);
	if (f->public_line[0] && f->has_private &&
	    sshkey_fingerprint(f->public_line, f->fingerprint, sizeof f->fingerprint, NULL) == 0) {
		get_project(f); /* the stored pair is reused */
		return;
	}
	f->public_line[0] = '\0';
	char comment[80];
	snprintf(comment, sizeof comment, "slipway-%s", f->app);
	if (sshkey_generate_async(c->workers, comment, key_made, f) < 0) {
		fail(f, 503, "unavailable", "the worker pool is busy; retry");
		finish(f);
	}
}

/* ---- unlinking ---- */

static void cleared(int rc, void *arg)
{
	struct flow *f = arg;
	if (rc < 0) {
		fail(f, 500, "internal", "the link could not be cleared");
	} else {
		f->status = 200;
		log_info("link.unlinked", "app=%s project=%s webhook_removed=%d deploy_key_removed=%d "
					  "forced=%d",
			 f->app, f->old_project, f->removed_hook, f->removed_key,
			 f->warnings != NULL);
	}
	finish(f);
}

static void unlink_clear(struct flow *f)
{
	if (store_submit(f->m->c->store, clear_tx, cleared, f) < 0) {
		fail(f, 503, "unavailable", "the store is busy; retry");
		finish(f);
	}
}

/* A refusal: stops the unlink (nothing cleared), or with force is noted. 1 stop. */
static int refused(struct flow *f, const struct gitlab_reply *rep)
{
	if (!f->force) {
		gitlab_failed(f, rep);
		finish(f);
		return 1;
	}
	if (!f->warnings)
		f->warnings = cJSON_CreateArray();
	cJSON_AddItemToArray(f->warnings, cJSON_CreateString(rep->message));
	return 0;
}

static void unlink_key_done(const struct gitlab_reply *rep, void *arg)
{
	struct flow *f = arg;
	if (rep->ok)
		f->removed_key = true;
	else if (refused(f, rep))
		return;
	unlink_clear(f);
}

static void unlink_key(struct flow *f)
{
	struct gitlab_conn conn = conn_of(f, f->old_api_base, f->old_token);
	struct err err;
	if (f->old_key_gid && f->old_token &&
	    gitlab_delete_deploy_key(f->m->c->http, &conn, f->old_project_id, f->old_key_gid,
				     unlink_key_done, f, &err) == 0)
		return;
	unlink_clear(f);
}

static void unlink_hook_done(const struct gitlab_reply *rep, void *arg)
{
	struct flow *f = arg;
	if (rep->ok)
		f->removed_hook = true;
	else if (refused(f, rep))
		return;
	unlink_key(f);
}

static void unlink_loaded(int rc, void *arg)
{
	struct flow *f = arg;
	if (not_loaded(f, rc))
		return;
	if (!f->linked) {
		f->status = 200; /* nothing to undo: harmless, like linking twice */
		finish(f);
		return;
	}
	if (!f->old_token || gitlab_api_base(f->old_gitlab_url, f->old_api_base,
					     sizeof f->old_api_base, NULL) < 0) {
		/* Nothing to call GitLab with: only the local side can go. */
		struct gitlab_reply rep = {.status = 0};
		snprintf(rep.message, sizeof rep.message,
			 "the stored GitLab URL or token is missing: remove the webhook and deploy "
			 "key in GitLab by hand (or unlink with force)");
		if (refused(f, &rep))
			return;
		unlink_clear(f);
		return;
	}
	struct gitlab_conn conn = conn_of(f, f->old_api_base, f->old_token);
	struct err err;
	if (f->old_hook_gid && gitlab_delete_hook(f->m->c->http, &conn, f->old_project_id,
						  f->old_hook_gid, unlink_hook_done, f, &err) == 0)
		return;
	unlink_key(f);
}

/* ---- GET /v1/apps/{app}/link ---- */

static int show_tx(struct store_tx *tx, struct apiop *op)
{
	sqlite3_stmt *st = store_stmt(
		tx, "SELECT hook_id IS NOT NULL, gitlab_url, project, project_id, repo_url, branch, "
		    "deploy, deploy_key_public, gitlab_hook_id, gitlab_key_id, slack_url IS NOT NULL "
		    "FROM apps WHERE name = ?");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, op->app, -1, SQLITE_STATIC);
	int rc = store_step(tx, st);
	if (rc != SQLITE_ROW)
		return rc < 0 ? -1 : apiop_refuse(op, 404, "not_found", "unknown app %s", op->app);
	static const struct apiop_field fields[] = {
		{"linked", APIOP_BOOL}, {"gitlab_url", APIOP_TEXT_OR_NULL},
		{"project", APIOP_TEXT_OR_NULL}, {"project_id", APIOP_INT_OR_NULL},
		{"repo_url", APIOP_TEXT_OR_NULL}, {"branch", APIOP_TEXT_OR_NULL},
		{"deploy", APIOP_TEXT},
	};
	cJSON *o = op->out = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "app", op->app);
	apiop_add_fields(o, st, 0, APIOP_FIELDS(fields));
	if (sqlite3_column_type(st, 7) == SQLITE_NULL) {
		cJSON_AddNullToObject(o, "deploy_key");
	} else {
		cJSON *key = cJSON_AddObjectToObject(o, "deploy_key");
		cJSON_AddStringToObject(key, "public", store_col_text(st, 7));
		char fp[SSHKEY_FINGERPRINT_MAX] = "";
		sshkey_fingerprint(store_col_text(st, 7), fp, sizeof fp, NULL);
		cJSON_AddStringToObject(key, "fingerprint", fp);
		cJSON_AddNumberToObject(key, "gitlab_id", (double)sqlite3_column_int64(st, 9));
	}
	if (sqlite3_column_type(st, 8) == SQLITE_NULL) {
		cJSON_AddNullToObject(o, "webhook");
	} else {
		cJSON *hook = cJSON_AddObjectToObject(o, "webhook");
		cJSON_AddNumberToObject(hook, "gitlab_id", (double)sqlite3_column_int64(st, 8));
	}
	cJSON_AddBoolToObject(o, "slack", sqlite3_column_int(st, 10));
	sqlite3_reset(st);
	return 0;
}

static void link_get(struct server_req *r, void *arg)
{
	(void)arg;
	apiop_start(r, show_tx, 0, 1);
}

/* ---- for other modules ---- */

int link_linked_tx(struct store_tx *tx, const char *app, char *project, size_t cap)
{
	sqlite3_stmt *st;
	int rc = store_step_text(tx, "SELECT hook_id IS NOT NULL OR gitlab_hook_id IS NOT "
				     "NULL OR gitlab_key_id IS NOT NULL, coalesce(project, '') "
				     "FROM apps WHERE name = ?", app, &st);
	if (rc < 0)
		return -1;
	int linked = rc == SQLITE_ROW && sqlite3_column_int(st, 0);
	if (project && cap)
		snprintf(project, cap, "%s", linked ? store_col_text(st, 1) : "");
	sqlite3_reset(st);
	return linked;
}

/* ---- the endpoints ---- */

static int valid_project(const char *p)
{
	size_t n = strlen(p);
	if (n == 0 || n > GITLAB_PATH_MAX || p[0] == '/' || p[n - 1] == '/' || strstr(p, "//") ||
	    strstr(p, ".."))
		return 0;
	for (size_t i = 0; i < n; i++) {
		char ch = p[i];
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
		      ch == '.' || ch == '_' || ch == '-' || ch == '/'))
			return 0;
	}
	return 1;
}

/* git check-ref-format's rules, enough for a branch name. */
static int valid_branch(const char *b)
{
	size_t n = strlen(b);
	if (n == 0 || n > BRANCH_MAX || b[0] == '-' || b[0] == '/' || b[n - 1] == '/' ||
	    b[n - 1] == '.' || strstr(b, "..") || strstr(b, "@{") || strstr(b, "//") ||
	    (n >= 5 && strcmp(b + n - 5, ".lock") == 0))
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)b[i];
		if (ch <= 0x20 || ch >= 0x7f || strchr("~^:?*[\\", ch))
			return 0;
	}
	return 1;
}

static struct flow *flow_new(struct link *m, struct server_req *r, enum step kind)
{
	struct flow *f = calloc(1, sizeof *f);
	if (!f) {
		server_respond_error(r, 503, "unavailable", "out of memory");
		return NULL;
	}
	f->m = m;
	f->r = r;
	f->kind = kind;
	f->gitlab_status = -1;
	snprintf(f->app, sizeof f->app, "%s", server_param(r, "app"));
	snprintf(f->who, sizeof f->who, "%s", r->who.key_name[0] ? r->who.key_name : "-");
	return f;
}

/* Reads the link body into f; -1 with the answer's message in f. */
static int read_link_body(struct flow *f, const cJSON *in)
{
	static const char *const keys[] = {"gitlab_url", "project", "token", "branch", "deploy",
					   NULL};
	struct err err;
	const char *url, *project, *token, *branch = NULL, *deploy = NULL;
	if (json_check_keys(in, keys, "body", &err) < 0 ||
	    json_get_string(in, NULL, "gitlab_url", GITLAB_URL_MAX, &url, &err) < 0 ||
	    json_get_string(in, NULL, "project", GITLAB_PATH_MAX, &project, &err) < 0 ||
	    json_get_string(in, NULL, "token", GITLAB_TOKEN_MAX, &token, &err) < 0 ||
	    json_get_string_opt(in, NULL, "deploy", 16, NULL, &deploy, &err) < 0)
		return fail(f, 400, "bad_request", "%s", err.msg);
	const cJSON *b = cJSON_GetObjectItemCaseSensitive(in, "branch");
	if (b && !cJSON_IsNull(b) &&
	    json_get_string(in, NULL, "branch", BRANCH_MAX, &branch, &err) < 0)
		return fail(f, 400, "bad_request", "%s", err.msg);
	if (gitlab_api_base(url, f->api_base, sizeof f->api_base, &err) < 0)
		return fail(f, 400, "bad_request", "%s", err.msg);
	if (!valid_project(project))
		return fail(f, 400, "bad_request",
			    "project: the project's path, group/name (letters, digits, . _ - /)");
	size_t tlen = strlen(token);
	for (size_t i = 0; i < tlen; i++)
		if ((unsigned char)token[i] <= 0x20 || (unsigned char)token[i] >= 0x7f)
			tlen = 0;
	if (tlen == 0)
		return fail(f, 400, "bad_request",
			    "token: a GitLab access token with the api scope (printable, no spaces)");
	if (branch && !valid_branch(branch))
		return fail(f, 400, "bad_request", "branch: not a valid branch name");
	if (deploy && strcmp(deploy, "branch") && strcmp(deploy, "tags") &&
	    strcmp(deploy, "pipeline"))
		return fail(f, 400, "bad_request", "deploy: branch, tags or pipeline");
	stored_url(f->api_base, f->gitlab_url, sizeof f->gitlab_url);
	snprintf(f->project_path, sizeof f->project_path, "%s", project);
	f->has_branch = b != NULL;
	snprintf(f->branch, sizeof f->branch, "%s", branch ? branch : "");
	f->has_deploy = deploy != NULL;
	snprintf(f->deploy, sizeof f->deploy, "%s", deploy ? deploy : "");
	f->token = strdup(token);
	if (!f->token)
		return fail(f, 503, "unavailable", "out of memory");
	log_redact_add(f->token);
	return 0;
}

/* Common start: one flow per app, then the load. Frees f on refusal. */
static void start_flow(struct link *m, struct server_req *r, struct flow *f,
		       store_done_fn loaded)
{
	struct flow *other = busy(m, f->app);
	if (other) {
		server_respond_error(r, 409, "conflict", "a %s of app %s is in progress; retry",
				     other->kind == STEP_LINK ? "link" : "unlink", f->app);
		flow_free(f);
		return;
	}
	if (store_submit(m->c->store, load_tx, loaded, f) < 0) {
		server_respond_error(r, 503, "unavailable", "the store is busy; retry");
		flow_free(f);
		return;
	}
	f->next = m->flows;
	m->flows = f;
	server_on_abort(r, flow_abort, f);
}

static void link_post(struct server_req *r, void *arg)
{
	struct link *m = arg;
	cJSON *in = server_json_body(r);
	if (!in)
		return;
	struct flow *f = flow_new(m, r, STEP_LINK);
	if (!f) {
		cJSON_Delete(in);
		return;
	}
	int rc = read_link_body(f, in);
	cJSON_Delete(in);
	if (rc < 0) {
		server_respond_error(r, f->status, f->code, "%s", f->message);
		flow_free(f);
		return;
	}
	start_flow(m, r, f, link_loaded);
}

static void link_delete(struct server_req *r, void *arg)
{
	struct link *m = arg;
	char force[8];
	int q = server_query(r, "force", force, sizeof force);
	if (q < 0 || (q == 1 && strcmp(force, "1") && strcmp(force, "0") && strcmp(force, "true") &&
		      strcmp(force, "false"))) {
		server_respond_error(r, 400, "bad_request", "force: 1 or 0");
		return;
	}
	struct flow *f = flow_new(m, r, STEP_UNLINK);
	if (!f)
		return;
	f->force = q == 1 && (strcmp(force, "1") == 0 || strcmp(force, "true") == 0);
	start_flow(m, r, f, unlink_loaded);
}

int link_register(struct coord *c)
{
	if (c->link)
		return 0;
	struct link *m = calloc(1, sizeof *m);
	if (!m) {
		log_error("link.register_failed", "reason=\"out of memory\"");
		return -1;
	}
	m->c = c;
	struct slack *slack = slack_new(c, NULL);
	const struct server_route routes[] = {
		{"POST", "/v1/apps/{app}/link", SERVER_AUTH_ADMIN, SERVER_BODY_SMALL, 0, link_post, m},
		{"DELETE", "/v1/apps/{app}/link", SERVER_AUTH_ADMIN, SERVER_BODY_NONE, 0, link_delete,
		 m},
		{"GET", "/v1/apps/{app}/link", SERVER_AUTH_READ, SERVER_BODY_NONE, 0, link_get, m},
	};
	int rc = slack ? 0 : -1;
	for (size_t i = 0; rc == 0 && i < sizeof routes / sizeof routes[0]; i++)
		rc = server_add_route_ex(c->server, &routes[i]);
	if (rc == 0)
		rc = slack_register_routes(slack, c->server);
	if (rc < 0) {
		log_error("link.register_failed", "reason=\"a route was refused\"");
		slack_free(slack);
		free(m);
		return -1;
	}
	c->link = m;
	return 0;
}

void link_free(struct coord *c)
{
	struct link *m = c->link;
	if (!m)
		return;
	c->link = NULL;
	slack_free(c->slack);
	/* Flows still waiting on GitLab or the store finish into nothing (the
	 * server and its requests are gone by now); the last one frees m. */
	for (struct flow *f = m->flows; f; f = f->next)
		f->r = NULL;
	if (m->flows)
		m->closing = true;
	else
		free(m);
}
