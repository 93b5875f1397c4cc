#include "webhook.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "builder.h"
#include "buf.h"
#include "clock.h"
#include "coord.h"
#include "crypto.h"
#include "json.h"
#include "log.h"
#include "secrets.h"
#include "server.h"
#include "store.h"
#include "worker.h"

#define BODY_PARSE_MAX ((size_t)64 << 20) /* the route's cap is lower; this is a backstop */
#define HEADER_COPY_MAX 1024
/* Larger bodies are parsed on a worker thread: 25 MB of JSON takes ~150 ms,
 * which the loop (and every long-polling agent) should not wait for. */
#define PARSE_INLINE_MAX ((size_t)1 << 20)

/* ---- parsing ------------------------------------------------------------- */

/* Copies s into out, cut to cap - 1 bytes. */
static void copy(char *out, size_t cap, const char *s)
{
	size_t n = s ? strnlen(s, cap - 1) : 0;
	if (n)
		memcpy(out, s, n);
	out[n] = '\0';
}

/* A Git object name: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits. */
static bool valid_sha(const char *s)
{
	size_t n = strlen(s);
	if (n != 40 && n != 64)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return true;
}

static bool all_zeros(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++)
		if (*s != '0')
			return false;
	return true;
}

/* A ref name we are willing to carry around: printable, no blanks. */
static bool valid_ref_text(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++)
		if ((unsigned char)*s <= 0x20 || *s == 0x7f)
			return false;
	return true;
}

/* The project object both kinds of payload carry. */
static int parse_project(const cJSON *root, struct webhook_event *ev, struct err *e)
{
	const cJSON *project;
	const char *path, *def, *url;
	int64_t id;
	if (json_get_object(root, NULL, "project", &project, e) < 0 ||
	    json_get_string(project, "project", "path_with_namespace", 255, &path, e) < 0 ||
	    json_get_int_opt(project, "project", "id", 0, JSON_INT_LIMIT, 0, &id, e) < 0 ||
	    json_get_string_opt(project, "project", "default_branch", WEBHOOK_REF_MAX, "", &def,
				e) < 0 ||
	    json_get_string_opt(project, "project", "git_ssh_url", 1023, "", &url, e) < 0)
		return -1;
	copy(ev->project, sizeof ev->project, path);
	copy(ev->default_branch, sizeof ev->default_branch, def);
	copy(ev->ssh_url, sizeof ev->ssh_url, url);
	ev->project_id = id;
	return 0;
}

static int parse_push(const cJSON *root, struct webhook_event *ev, struct err *e)
{
	const char *ref, *after, *before, *checkout, *user;
	if (json_get_string(root, NULL, "ref", WEBHOOK_REF_MAX, &ref, e) < 0 ||
	    json_get_string(root, NULL, "after", WEBHOOK_SHA_MAX, &after, e) < 0 ||
	    json_get_string_opt(root, NULL, "before", WEBHOOK_SHA_MAX, "", &before, e) < 0 ||
	    json_get_string_opt(root, NULL, "checkout_sha", WEBHOOK_SHA_MAX, "", &checkout, e) < 0 ||
	    json_get_string_opt(root, NULL, "user_username", 127, "", &user, e) < 0 ||
	    parse_project(root, ev, e) < 0)
		return -1;
	const char *prefix = ev->kind == WEBHOOK_PUSH ? "refs/heads/" : "refs/tags/";
	size_t pl = strlen(prefix);
	if (strncmp(ref, prefix, pl) != 0 || !valid_ref_text(ref + pl))
		return err_set(e, "ref: expected %s<name>", prefix);
	copy(ev->ref, sizeof ev->ref, ref);
	copy(ev->name, sizeof ev->name, ref + pl);
	copy(ev->before, sizeof ev->before, before);
	copy(ev->author, sizeof ev->author, user);
	if (!all_zeros(after) && !valid_sha(after))
		return err_set(e, "after: expected a commit id");
	if (*before && !all_zeros(before) && !valid_sha(before))
		return err_set(e, "before: expected a commit id");
	ev->deleted = all_zeros(after) || !*checkout;
	if (!ev->deleted) {
		if (!valid_sha(checkout))
			return err_set(e, "checkout_sha: expected a commit id");
		copy(ev->sha, sizeof ev->sha, checkout);
	}
	return 0;
}

static int parse_pipeline(const cJSON *root, struct webhook_event *ev, struct err *e)
{
	const cJSON *attrs, *user;
	const char *ref, *sha, *status, *source, *username = "";
	bool tag;
	int64_t id;
	if (json_get_object(root, NULL, "object_attributes", &attrs, e) < 0 ||
	    json_get_string(attrs, "object_attributes", "ref", WEBHOOK_REF_MAX - 11, &ref, e) < 0 ||
	    json_get_bool_opt(attrs, "object_attributes", "tag", false, &tag, e) < 0 ||
	    json_get_string(attrs, "object_attributes", "sha", WEBHOOK_SHA_MAX, &sha, e) < 0 ||
	    json_get_string(attrs, "object_attributes", "status", 31, &status, e) < 0 ||
	    json_get_string_opt(attrs, "object_attributes", "source", 63, "", &source, e) < 0 ||
	    json_get_int_opt(attrs, "object_attributes", "id", 0, JSON_INT_LIMIT, 0, &id, e) < 0 ||
	    json_get_object_opt(root, NULL, "user", &user, e) < 0 ||
	    (user && json_get_string_opt(user, "user", "username", 127, "", &username, e) < 0) ||
	    parse_project(root, ev, e) < 0)
		return -1;
	if (!valid_ref_text(ref))
		return err_set(e, "object_attributes.ref: expected a branch or tag name");
	if (!valid_sha(sha))
		return err_set(e, "object_attributes.sha: expected a commit id");
	snprintf(ev->ref, sizeof ev->ref, "%s%s", tag ? "refs/tags/" : "refs/heads/", ref);
	copy(ev->name, sizeof ev->name, ref);
	copy(ev->sha, sizeof ev->sha, sha);
	copy(ev->status, sizeof ev->status, status);
	copy(ev->source, sizeof ev->source, source);
	copy(ev->author, sizeof ev->author, username);
	ev->pipeline_id = id;
	return 0;
}

int webhook_parse(const char *event_header, const char *body, size_t len,
		  struct webhook_event *ev, struct err *err)
{
	memset(ev, 0, sizeof *ev);
	ev->kind = WEBHOOK_OTHER;
	if (len == 0)
		return err_set(err, "empty body");
	cJSON *root = json_parse(body, len, BODY_PARSE_MAX, err);
	if (!root)
		return err_prefix(err, "body is not valid JSON");
	if (!cJSON_IsObject(root)) {
		cJSON_Delete(root);
		return err_set(err, "body is not a JSON object");
	}
	const cJSON *ok_item = cJSON_GetObjectItemCaseSensitive(root, "object_kind");
	const char *object_kind = cJSON_IsString(ok_item) ? ok_item->valuestring : "";
	const char *event = event_header && *event_header ? event_header : NULL;
	if (!event) {
		event = !strcmp(object_kind, "push")       ? "Push Hook"
			: !strcmp(object_kind, "tag_push") ? "Tag Push Hook"
			: !strcmp(object_kind, "pipeline") ? "Pipeline Hook"
							   : "";
	}
	copy(ev->event, sizeof ev->event, event);
	const char *want_kind = NULL;
	if (!strcmp(event, "Push Hook")) {
		ev->kind = WEBHOOK_PUSH;
		want_kind = "push";
	} else if (!strcmp(event, "Tag Push Hook")) {
		ev->kind = WEBHOOK_TAG_PUSH;
		want_kind = "tag_push";
	} else if (!strcmp(event, "Pipeline Hook")) {
		ev->kind = WEBHOOK_PIPELINE;
		want_kind = "pipeline";
	}
	struct err e = {{0}};
	int rc = 0;
	if (want_kind && strcmp(object_kind, want_kind) != 0)
		rc = err_set(&e, "object_kind is \"%.40s\", not \"%s\"", object_kind, want_kind);
	else if (ev->kind == WEBHOOK_PUSH || ev->kind == WEBHOOK_TAG_PUSH)
		rc = parse_push(root, ev, &e);
	else if (ev->kind == WEBHOOK_PIPELINE)
		rc = parse_pipeline(root, ev, &e);
	if (rc < 0)
		copy(ev->problem, sizeof ev->problem, e.msg);
	cJSON_Delete(root);
	return 0;
}

/* ---- the decision -------------------------------------------------------- */

int webhook_decide(const struct webhook_app *app, const struct webhook_event *ev, char *why,
		   size_t cap)
{
	const char *deploy = app->deploy && *app->deploy ? app->deploy : "branch";
	const char *branch = app->branch && *app->branch ? app->branch : ev->default_branch;
	why[0] = '\0';
	if (ev->kind == WEBHOOK_OTHER) {
		snprintf(why, cap, "event \"%s\" is not used", *ev->event ? ev->event : "(none)");
		return 0;
	}
	if (ev->problem[0]) {
		snprintf(why, cap, "malformed %s: %s", ev->event, ev->problem);
		return 0;
	}
	if (app->project_id > 0 && ev->project_id != app->project_id) {
		snprintf(why, cap, "project %" PRId64 " is not the app's project %" PRId64,
			 ev->project_id, app->project_id);
		return 0;
	}
	const char *mode = !strcmp(deploy, "tags")       ? "the app deploys tags"
			   : !strcmp(deploy, "pipeline") ? "the app deploys after CI (Pipeline Hook)"
							 : "the app deploys on push";
	switch (ev->kind) {
	case WEBHOOK_PUSH:
		if (strcmp(deploy, "branch") != 0) {
			snprintf(why, cap, "push ignored: %s", mode);
			return 0;
		}
		break;
	case WEBHOOK_TAG_PUSH:
		if (strcmp(deploy, "tags") != 0) {
			snprintf(why, cap, "tag push ignored: %s", mode);
			return 0;
		}
		if (ev->deleted) {
			snprintf(why, cap, "tag %s deleted", ev->name);
			return 0;
		}
		return 1;
	case WEBHOOK_PIPELINE:
		if (strcmp(deploy, "pipeline") != 0) {
			snprintf(why, cap, "pipeline ignored: %s", mode);
			return 0;
		}
		break;
	default:
		return 0;
	}
	/* Branch deploys: pushes and pipelines of one branch. */
	if (!*branch) {
		snprintf(why, cap, "no branch: the app names none and the project has no default");
		return 0;
	}
	if (ev->kind == WEBHOOK_PUSH && ev->deleted) {
		snprintf(why, cap, "branch %s deleted", ev->name);
		return 0;
	}
	if (!strncmp(ev->ref, "refs/tags/", 10)) {
		snprintf(why, cap, "pipeline for tag %s (the app deploys branch %s)", ev->name, branch);
		return 0;
	}
	if (strcmp(ev->name, branch) != 0) {
		snprintf(why, cap, "%s of branch %s (the app deploys branch %s)",
			 ev->kind == WEBHOOK_PUSH ? "push" : "pipeline", ev->name, branch);
		return 0;
	}
	if (ev->kind == WEBHOOK_PIPELINE) {
		/* A merge request pipeline tests a merge result, not the branch. */
		if (!strcmp(ev->source, "merge_request_event")) {
			snprintf(why, cap, "merge request pipeline %" PRId64, ev->pipeline_id);
			return 0;
		}
		if (strcmp(ev->status, "success") != 0) {
			snprintf(why, cap, "pipeline %" PRId64 " is %s (builds on success)",
				 ev->pipeline_id, ev->status);
			return 0;
		}
	}
	return 1;
}

/* ---- keys and summaries -------------------------------------------------- */

static bool key_usable(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > WEBHOOK_KEY_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
			return false;
	return true;
}

/* "idem:<key>", "uuid:<uuid>" or "body:<hex>": the app name goes in front. */
static void dedup_suffix(const char *idem, const char *uuid, const char *event_header,
			 const char *body, size_t len, char *out, size_t cap)
{
	const char *kind = idem && *idem ? "idem" : uuid && *uuid ? "uuid" : NULL;
	const char *value = idem && *idem ? idem : uuid;
	char hex[2 * CRYPTO_SHA256_LEN + 1];
	if (kind) {
		if (key_usable(value)) {
			snprintf(out, cap, "%s:%s", kind, value);
		} else {
			crypto_sha256_hex(value, strlen(value), hex);
			snprintf(out, cap, "%s:sha256:%s", kind, hex);
		}
		return;
	}
	struct crypto_sha256_ctx ctx;
	uint8_t d[CRYPTO_SHA256_LEN];
	crypto_sha256_init(&ctx);
	if (event_header)
		crypto_sha256_update(&ctx, event_header, strlen(event_header));
	crypto_sha256_update(&ctx, "\n", 1);
	crypto_sha256_update(&ctx, body, len);
	crypto_sha256_final(&ctx, d);
	crypto_hex(d, sizeof d, hex);
	snprintf(out, cap, "body:%s", hex);
}

void webhook_dedup_key(const char *app, const char *idempotency_key, const char *event_uuid,
		       const char *event_header, const char *body, size_t len, char *out,
		       size_t cap)
{
	char suffix[WEBHOOK_KEY_MAX + 16];
	dedup_suffix(idempotency_key, event_uuid, event_header, body, len, suffix, sizeof suffix);
	snprintf(out, cap, "%s:%s", app, suffix);
}

static const char *kind_word(enum webhook_kind k)
{
	switch (k) {
	case WEBHOOK_PUSH:
		return "push";
	case WEBHOOK_TAG_PUSH:
		return "tag";
	case WEBHOOK_PIPELINE:
		return "pipeline";
	default:
		return "other";
	}
}

cJSON *webhook_summary(const struct webhook_event *ev)
{
	cJSON *s = cJSON_CreateObject();
	if (!s)
		return NULL;
	cJSON_AddStringToObject(s, "kind", kind_word(ev->kind));
	cJSON_AddStringToObject(s, "event", ev->event);
	cJSON_AddStringToObject(s, "ref", ev->ref);
	cJSON_AddStringToObject(s, "name", ev->name);
	cJSON_AddStringToObject(s, "sha", ev->sha);
	cJSON_AddStringToObject(s, "before", ev->before);
	cJSON_AddBoolToObject(s, "deleted", ev->deleted);
	cJSON_AddStringToObject(s, "project", ev->project);
	cJSON_AddNumberToObject(s, "project_id", (double)ev->project_id);
	cJSON_AddStringToObject(s, "ssh_url", ev->ssh_url);
	cJSON_AddStringToObject(s, "author", ev->author);
	if (ev->kind == WEBHOOK_PIPELINE) {
		cJSON_AddNumberToObject(s, "pipeline_id", (double)ev->pipeline_id);
		cJSON_AddStringToObject(s, "status", ev->status);
		cJSON_AddStringToObject(s, "source", ev->source);
	}
	return s;
}

void webhook_description(const struct webhook_event *ev, char *out, size_t cap)
{
	snprintf(out, cap, "%s %s %s %s", kind_word(ev->kind), ev->project, ev->ref,
		 ev->sha[0] ? ev->sha : "-");
}

/* ---- the endpoint --------------------------------------------------------- */

enum outcome { OUT_NONE, OUT_NOT_FOUND, OUT_UNAUTHORIZED, OUT_BAD, OUT_ERROR, OUT_RECORDED };

struct delivery {
	struct coord *c;
	struct server_req *req;     /* NULL once the client went away */
	char hook_id[SERVER_PARAM_MAX + 1];
	char token[HEADER_COPY_MAX];
	bool has_token;
	char event_header[64];
	char idem[HEADER_COPY_MAX], uuid[HEADER_COPY_MAX];
	const char *body;           /* the request's, or body_copy on a worker */
	size_t body_len;
	char *body_copy;
	char key_suffix[WEBHOOK_KEY_MAX + 80];
	int parse_rc;
	char parse_error[ERR_MSG_MAX];
	struct webhook_event ev;
	char *summary;              /* JSON text */
	int64_t received_ms;
	/* results, written on the store thread */
	enum outcome outcome;
	char app[64];
	int64_t id;
	bool duplicate;
	bool build;
	char dup_status[16];
	char reason[300];
};

static const char SQL_HOOK[] =
	"SELECT name, hook_token, deploy, branch, project_id FROM apps WHERE hook_id = ?";
static const char SQL_INSERT_DELIVERY[] =
	"INSERT INTO deliveries(dedup_key, app, event, summary, status, note, received_ms) "
	"VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(dedup_key) DO NOTHING";
static const char SQL_FIND_DELIVERY[] = "SELECT id, status FROM deliveries WHERE dedup_key = ?";

/* The store thread: lookup, authentication, decision and record in one go. */
static int record_delivery(struct store_tx *tx, void *arg)
{
	struct delivery *d = arg;
	sqlite3_stmt *st;
	int rc = store_step_text(tx, SQL_HOOK, d->hook_id, &st);
	if (rc < 0)
		return -1;
	if (rc != SQLITE_ROW) {
		d->outcome = OUT_NOT_FOUND;
		return 0;
	}
	copy(d->app, sizeof d->app, store_col_text(st, 0));
	const void *sealed = sqlite3_column_blob(st, 1);
	size_t sealed_len = (size_t)sqlite3_column_bytes(st, 1);
	char deploy[16], branch[WEBHOOK_REF_MAX + 1];
	copy(deploy, sizeof deploy, store_col_text(st, 2));
	copy(branch, sizeof branch, store_col_text(st, 3));
	int64_t project_id = sqlite3_column_int64(st, 4);

	/* Authenticate before looking at anything the body says. */
	if (!sealed || sealed_len == 0 || !d->has_token) {
		d->outcome = OUT_UNAUTHORIZED;
		return 0;
	}
	struct buf token;
	buf_init(&token, 4096);
	struct err e;
	if (secrets_open(d->c->master_key, "apps", d->app, "hook_token", sealed, sealed_len, &token,
			 &e) < 0) {
		buf_free(&token);
		log_error("webhook.token_unreadable", "app=%s error=\"%s\"", d->app, e.msg);
		d->outcome = OUT_ERROR;
		return 0;
	}
	int same = crypto_equal(token.data, token.len, d->token, strlen(d->token));
	buf_free(&token);
	if (!same) {
		d->outcome = OUT_UNAUTHORIZED;
		return 0;
	}
	if (d->parse_rc < 0) {
		d->outcome = OUT_BAD;
		return 0;
	}

	struct webhook_app app = {.deploy = deploy, .branch = branch, .project_id = project_id};
	d->build = webhook_decide(&app, &d->ev, d->reason, sizeof d->reason) == 1;
	char key[sizeof d->key_suffix + sizeof d->app + 2];
	snprintf(key, sizeof key, "%s:%s", d->app, d->key_suffix);
	st = store_stmt(tx, SQL_INSERT_DELIVERY);
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, d->app, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, d->ev.event[0] ? d->ev.event : "(none)", -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, d->summary, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 5, d->build ? "received" : "ignored", -1, SQLITE_STATIC);
	if (d->build)
		sqlite3_bind_null(st, 6);
	else
		sqlite3_bind_text(st, 6, d->reason, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 7, d->received_ms);
	if (store_step(tx, st) != SQLITE_DONE)
		return -1;
	d->outcome = OUT_RECORDED;
	if (sqlite3_changes(tx->db) == 1) {
		d->id = sqlite3_last_insert_rowid(tx->db);
		return 0;
	}
	d->duplicate = true;
	st = store_stmt(tx, SQL_FIND_DELIVERY);
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	if (store_step(tx, st) != SQLITE_ROW)
		return err_set(&tx->err, "delivery %s vanished", key);
	d->id = sqlite3_column_int64(st, 0);
	copy(d->dup_status, sizeof d->dup_status, store_col_text(st, 1));
	return 0;
}

static void delivery_free(struct delivery *d)
{
	free(d->summary);
	free(d->body_copy);
	free(d);
}

static void delivery_abort(struct server_req *r, void *arg)
{
	(void)r;
	struct delivery *d = arg;
	d->req = NULL; /* the store operation still finishes and records it */
}

static void respond(struct delivery *d, int rc)
{
	struct server_req *r = d->req;
	if (!r)
		return;
	server_on_abort(r, NULL, NULL);
	d->req = NULL;
	if (rc < 0 || d->outcome == OUT_ERROR) {
		server_add_header(r, "Retry-After", "5");
		server_respond_error(r, 503, "unavailable", "the delivery could not be recorded");
		return;
	}
	switch (d->outcome) {
	case OUT_NOT_FOUND:
		server_respond_error(r, 404, "not_found", "unknown hook");
		return;
	case OUT_UNAUTHORIZED:
		server_respond_error(r, 401, "unauthorized", "X-Gitlab-Token does not match");
		return;
	case OUT_BAD:
		server_respond_error(r, 400, "bad_request", "%s", d->parse_error);
		return;
	default:
		break;
	}
	cJSON *out = cJSON_CreateObject();
	if (!out) {
		server_respond_error(r, 500, "internal", "out of memory");
		return;
	}
	cJSON_AddNumberToObject(out, "delivery", (double)d->id);
	if (d->duplicate) {
		cJSON_AddBoolToObject(out, "duplicate", true);
		cJSON_AddStringToObject(out, "status", d->dup_status);
		server_respond_json_take(r, 200, out);
		return;
	}
	cJSON_AddBoolToObject(out, "duplicate", false);
	cJSON_AddStringToObject(out, "status", d->build ? "received" : "ignored");
	if (!d->build)
		cJSON_AddStringToObject(out, "reason", d->reason);
	server_respond_json_take(r, d->build ? 202 : 200, out);
}

static void recorded(int rc, void *arg)
{
	struct delivery *d = arg;
	respond(d, rc);
	if (rc == 0 && d->outcome == OUT_RECORDED) {
		if (d->duplicate)
			log_info("webhook.duplicate", "app=%s delivery=%" PRId64 " event=\"%s\"",
				 d->app, d->id, d->ev.event);
		else if (d->build)
			log_info("webhook.received", "app=%s delivery=%" PRId64 " event=\"%s\" ref=%s "
						     "sha=%s",
				 d->app, d->id, d->ev.event, d->ev.ref, d->ev.sha);
		else
			log_info("webhook.ignored", "app=%s delivery=%" PRId64 " event=\"%s\" "
						    "reason=\"%s\"",
				 d->app, d->id, d->ev.event, d->reason);
		if (d->build && !d->duplicate && d->c->builder)
			builder_kick(d->c->builder);
	} else if (rc == 0 && d->outcome == OUT_UNAUTHORIZED) {
		log_warn("webhook.unauthorized", "app=%s", d->app);
	} else if (rc < 0) {
		log_error("webhook.record_failed", "app=%s", d->app[0] ? d->app : "?");
	}
	delivery_free(d);
}

static const char *header(const struct server_req *r, const char *name)
{
	return httpd_req_header(r->http, name);
}

/* Parse, key and summary: on the loop or on a worker thread. */
static void parse_delivery(struct delivery *d)
{
	struct err e;
	const char *event = d->event_header[0] ? d->event_header : NULL;
	d->parse_rc = webhook_parse(event, d->body, d->body_len, &d->ev, &e);
	if (d->parse_rc < 0)
		copy(d->parse_error, sizeof d->parse_error, e.msg);
	dedup_suffix(d->idem, d->uuid, event, d->body, d->body_len, d->key_suffix,
		     sizeof d->key_suffix);
	cJSON *summary = webhook_summary(&d->ev);
	d->summary = summary ? cJSON_PrintUnformatted(summary) : NULL;
	cJSON_Delete(summary);
}

/* Hands the parsed delivery to the store. */
static void submit_delivery(struct delivery *d)
{
	free(d->body_copy);
	d->body_copy = NULL;
	d->body = NULL;
	if (!d->summary) {
		respond(d, -1);
		delivery_free(d);
		return;
	}
	if (store_submit(d->c->store, record_delivery, recorded, d) < 0) {
		respond(d, -1);
		delivery_free(d);
	}
}

static void parse_work(void *arg)
{
	parse_delivery(arg);
}

static void parse_done(void *arg)
{
	submit_delivery(arg);
}

static void webhook_post(struct server_req *r, void *arg)
{
	struct coord *c = arg;
	const char *hook = server_param(r, "hook_id");
	if (!hook || !server_valid_id(hook)) {
		server_respond_error(r, 404, "not_found", "unknown hook");
		return;
	}
	struct delivery *d = calloc(1, sizeof *d);
	if (!d) {
		server_respond_error(r, 503, "unavailable", "out of memory");
		return;
	}
	d->c = c;
	d->req = r;
	d->received_ms = clock_wall_ms();
	copy(d->hook_id, sizeof d->hook_id, hook);
	const char *token = header(r, "X-Gitlab-Token");
	if (token && strlen(token) < sizeof d->token) {
		copy(d->token, sizeof d->token, token);
		d->has_token = true;
	}
	copy(d->event_header, sizeof d->event_header, header(r, "X-Gitlab-Event"));
	copy(d->idem, sizeof d->idem, header(r, "Idempotency-Key"));
	copy(d->uuid, sizeof d->uuid, header(r, "X-Gitlab-Event-UUID"));
	d->body = r->http->body ? r->http->body : "";
	d->body_len = r->http->body_len;
	server_on_abort(r, delivery_abort, d);
	if (d->body_len > PARSE_INLINE_MAX && c->workers) {
		/* The request's body lives only while the client stays: copy it. */
		d->body_copy = malloc(d->body_len + 1);
		if (d->body_copy) {
			memcpy(d->body_copy, d->body, d->body_len);
			d->body_copy[d->body_len] = '\0';
			d->body = d->body_copy;
			if (worker_submit(c->workers, parse_work, parse_done, d) == 0)
				return;
			free(d->body_copy);
			d->body_copy = NULL;
			d->body = r->http->body ? r->http->body : "";
		}
	}
	parse_delivery(d);
	submit_delivery(d);
}

void webhook_register(struct coord *c)
{
	if (!c->server ||
	    server_add_route(c->server, "POST", WEBHOOK_ROUTE, SERVER_AUTH_WEBHOOK, webhook_post, c) <
		    0)
		log_error("webhook.register_failed", "route=%s", WEBHOOK_ROUTE);
}
