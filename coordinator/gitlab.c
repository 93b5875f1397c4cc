#include "gitlab.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "buf.h"
#include "json.h"
#include "log.h"
#include "sshkey.h"

#define ANSWER_MAX ((size_t)4 << 20)   /* a page of 100 hooks or keys is far below */
#define DETAIL_MAX 300

enum call_kind {
	CALL_PROJECT,
	CALL_FIND_KEY,
	CALL_ADD_KEY,
	CALL_DELETE_KEY,
	CALL_FIND_HOOK,
	CALL_ADD_HOOK,
	CALL_UPDATE_HOOK,
	CALL_DELETE_HOOK,
};

struct call {
	enum call_kind kind;
	struct http_client *http;
	char base[GITLAB_URL_MAX + 16];
	char *token;
	char *ca_file;
	struct backoff_policy retry;
	int64_t timeout_ms;
	const char *method;
	char *path;              /* after the base: "/projects/12/hooks" */
	char *target;            /* what a find looks for: the hook URL, the key line */
	char *body;              /* JSON for POST / PUT */
	char what[320];          /* "add the deploy key", for messages */
	int page;
	int attempts;            /* over every page */
	gitlab_done_fn done;
	void *arg;
};

/* ---- pure helpers ---- */

int gitlab_api_base(const char *gitlab_url, char *out, size_t cap, struct err *err)
{
	if (!gitlab_url || !*gitlab_url)
		return err_set(err, "gitlab_url: required");
	size_t len = strlen(gitlab_url);
	if (len > GITLAB_URL_MAX)
		return err_set(err, "gitlab_url: longer than %d bytes", GITLAB_URL_MAX);
	const char *rest;
	const char *scheme;
	if (strncasecmp(gitlab_url, "https://", 8) == 0) {
		scheme = "https://";
		rest = gitlab_url + 8;
	} else if (strncasecmp(gitlab_url, "http://", 7) == 0) {
		scheme = "http://";
		rest = gitlab_url + 7;
	} else {
		return err_set(err, "gitlab_url: expected http:// or https://, e.g. "
				    "https://gitlab.example.com");
	}
	for (const char *p = rest; *p; p++) {
		unsigned char ch = (unsigned char)*p;
		if (ch <= 0x20 || ch >= 0x7f || ch == '?' || ch == '#' || ch == '\\')
			return err_set(err, "gitlab_url: no spaces, query or fragment allowed");
	}
	size_t host_len = strcspn(rest, "/");
	if (host_len == 0)
		return err_set(err, "gitlab_url: no host");
	if (memchr(rest, '@', host_len))
		return err_set(err, "gitlab_url: no credentials in the URL (the token goes apart)");
	char tmp[GITLAB_URL_MAX + 1];
	snprintf(tmp, sizeof tmp, "%s", rest);
	size_t n = strlen(tmp);
	while (n > host_len && tmp[n - 1] == '/')
		tmp[--n] = '\0';
	if (n >= host_len + 7 && strcmp(tmp + n - 7, "/api/v4") == 0)
		tmp[n -= 7] = '\0';
	while (n > host_len && tmp[n - 1] == '/')
		tmp[--n] = '\0';
	if ((size_t)snprintf(out, cap, "%s%s/api/v4", scheme, tmp) >= cap)
		return err_set(err, "gitlab_url: too long");
	return 0;
}

/* Appends s without control characters, up to cap - 1 bytes in all. */
static void append_clean(char *out, size_t cap, const char *s)
{
	size_t n = strlen(out);
	for (; *s && n + 1 < cap; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch < 0x20 || ch == 0x7f)
			ch = ' ';
		out[n++] = (char)ch;
	}
	out[n] = '\0';
}

void gitlab_error_detail(const char *body, size_t len, char *out, size_t cap)
{
	if (!cap)
		return;
	out[0] = '\0';
	if (!body || !len)
		return;
	cJSON *doc = json_parse(body, len, ANSWER_MAX, NULL);
	if (!doc)
		return;
	const cJSON *msg = cJSON_GetObjectItemCaseSensitive(doc, "message");
	const cJSON *error = cJSON_GetObjectItemCaseSensitive(doc, "error");
	if (cJSON_IsString(msg)) {
		append_clean(out, cap, msg->valuestring);
	} else if (cJSON_IsObject(msg)) {
		/* {"message": {"key": ["has already been taken"], "url": ["is blocked: ..."]}} */
		const cJSON *field;
		cJSON_ArrayForEach(field, msg)
		{
			const cJSON *item = cJSON_IsArray(field) ? field->child : field;
			for (; item; item = cJSON_IsArray(field) ? item->next : NULL) {
				if (!cJSON_IsString(item))
					continue;
				if (out[0])
					append_clean(out, cap, "; ");
				append_clean(out, cap, field->string ? field->string : "");
				append_clean(out, cap, " ");
				append_clean(out, cap, item->valuestring);
			}
		}
	} else if (cJSON_IsArray(msg)) {
		const cJSON *item;
		cJSON_ArrayForEach(item, msg)
		{
			if (!cJSON_IsString(item))
				continue;
			if (out[0])
				append_clean(out, cap, "; ");
			append_clean(out, cap, item->valuestring);
		}
	} else if (cJSON_IsString(error)) {
		append_clean(out, cap, error->valuestring);
		const cJSON *desc = cJSON_GetObjectItemCaseSensitive(doc, "error_description");
		if (cJSON_IsString(desc)) {
			append_clean(out, cap, ": ");
			append_clean(out, cap, desc->valuestring);
		}
	}
	cJSON_Delete(doc);
}

void gitlab_error_message(const char *what, const char *base_url, enum http_error error,
			  const char *transport_msg, long status, const char *body, size_t len,
			  int attempts, char *out, size_t cap)
{
	char detail[DETAIL_MAX] = "";
	gitlab_error_detail(body, len, detail, sizeof detail);
	const char *sep = detail[0] ? ": " : "";
	if (attempts < 1)
		attempts = 1;
	if (error == HTTP_ERR_TLS) {
		snprintf(out, cap, "TLS with GitLab at %s failed (%s) while trying to %s: check the "
				   "URL and the server's certificate",
			 base_url, transport_msg ? transport_msg : "handshake", what);
		return;
	}
	if (error != HTTP_OK) {
		snprintf(out, cap, "cannot reach GitLab at %s (%s; %d attempt%s) while trying to %s",
			 base_url, transport_msg && *transport_msg ? transport_msg : http_error_name(error),
			 attempts, attempts == 1 ? "" : "s", what);
		return;
	}
	switch (status) {
	case 400:
		snprintf(out, cap, "GitLab refused the request (400) to %s%s%s", what, sep, detail);
		return;
	case 401:
		snprintf(out, cap, "GitLab refused the token (401) while trying to %s: check that it "
				   "is valid, not expired or revoked, and has the api scope",
			 what);
		return;
	case 403:
		snprintf(out, cap, "GitLab denied access (403) while trying to %s: the token needs the "
				   "api scope and its user at least the Maintainer role on the project%s%s",
			 what, sep, detail);
		return;
	case 404:
		snprintf(out, cap, "GitLab found nothing (404) while trying to %s: check the project "
				   "path, and that the token's user can see the project",
			 what);
		return;
	case 409:
		snprintf(out, cap, "GitLab reports a conflict (409) while trying to %s%s%s", what, sep,
			 detail);
		return;
	case 422:
		snprintf(out, cap, "GitLab refused the request as invalid (422) while trying to %s%s%s",
			 what, sep, detail);
		return;
	case 429:
		snprintf(out, cap, "GitLab kept rate-limiting the requests (429, %d attempts) while "
				   "trying to %s: retry later",
			 attempts, what);
		return;
	}
	if (status >= 500)
		snprintf(out, cap, "GitLab failed (HTTP %ld, %d attempt%s) while trying to %s: retry "
				   "later%s%s",
			 status, attempts, attempts == 1 ? "" : "s", what, sep, detail);
	else if (status >= 300 && status < 400)
		snprintf(out, cap, "GitLab at %s redirects elsewhere (HTTP %ld) while trying to %s: "
				   "give the final URL (https?) as gitlab_url",
			 base_url, status, what);
	else
		snprintf(out, cap, "GitLab answered HTTP %ld while trying to %s%s%s", status, what, sep,
			 detail);
}

/* ---- calls ---- */

static void call_free(struct call *c)
{
	if (!c)
		return;
	free(c->token);
	free(c->ca_file);
	free(c->path);
	free(c->target);
	free(c->body);
	free(c);
}

static int is_list(const struct call *c)
{
	return c->kind == CALL_FIND_KEY || c->kind == CALL_FIND_HOOK;
}

static void call_done(const struct http_response *resp, void *arg);

static int call_start(struct call *c, struct err *err)
{
	char url[GITLAB_URL_MAX + 600];
	int n = snprintf(url, sizeof url, "%s%s", c->base, c->path);
	if (is_list(c))
		n = snprintf(url, sizeof url, "%s%s?per_page=100&page=%d", c->base, c->path, c->page);
	if (n < 0 || (size_t)n >= sizeof url)
		return err_set(err, "GitLab URL too long");
	char auth[GITLAB_TOKEN_MAX + 32];
	snprintf(auth, sizeof auth, "PRIVATE-TOKEN: %s", c->token);
	const char *headers[] = {auth, "Accept: application/json", "User-Agent: slipway-coordinator",
				 c->body ? "Content-Type: application/json" : NULL, NULL};
	struct http_request req = {
		.method = c->method,
		.url = url,
		.headers = headers,
		.body = c->body,
		.body_len = c->body ? strlen(c->body) : 0,
		.timeout_ms = c->timeout_ms,
		.max_body = ANSWER_MAX,
		.ca_file = c->ca_file,
		.retry = &c->retry,
		.on_done = call_done,
		.arg = c,
	};
	uint64_t id = http_client_start(c->http, &req);
	memset(auth, 0, sizeof auth);
	if (!id)
		return err_set(err, "cannot start the request to GitLab");
	return 0;
}

static int valid_token(const char *t)
{
	size_t n = strlen(t);
	if (n == 0 || n > GITLAB_TOKEN_MAX)
		return 0;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)t[i] <= 0x20 || (unsigned char)t[i] >= 0x7f)
			return 0;
	return 1;
}

static struct call *call_new(enum call_kind kind, struct http_client *http,
			     const struct gitlab_conn *conn, const char *method, gitlab_done_fn done,
			     void *arg, struct err *err)
{
	if (!http || !conn || !done) {
		err_set(err, "gitlab: missing arguments");
		return NULL;
	}
	if (!conn->token || !valid_token(conn->token)) {
		err_set(err, "token: 1..%d printable characters", GITLAB_TOKEN_MAX);
		return NULL;
	}
	struct call *c = calloc(1, sizeof *c);
	if (!c) {
		err_set(err, "out of memory");
		return NULL;
	}
	if (gitlab_api_base(conn->base_url, c->base, sizeof c->base, err) < 0) {
		free(c);
		return NULL;
	}
	c->kind = kind;
	c->http = http;
	c->method = method;
	c->token = strdup(conn->token);
	c->ca_file = conn->ca_file ? strdup(conn->ca_file) : NULL;
	if (conn->retry) {
		c->retry = *conn->retry;
	} else {
		c->retry.base_ms = GITLAB_RETRY_BASE_MS;
		c->retry.cap_ms = GITLAB_RETRY_CAP_MS;
		c->retry.max_attempts = GITLAB_RETRY_ATTEMPTS;
	}
	c->timeout_ms = conn->timeout_ms > 0 ? conn->timeout_ms : GITLAB_TIMEOUT_MS;
	c->page = 1;
	c->done = done;
	c->arg = arg;
	if (!c->token || (conn->ca_file && !c->ca_file)) {
		call_free(c);
		err_set(err, "out of memory");
		return NULL;
	}
	log_redact_add(conn->token);
	return c;
}

static int set_path(struct call *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int set_path(struct call *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vasprintf(&c->path, fmt, ap);
	va_end(ap);
	if (n < 0)
		c->path = NULL;
	return n < 0 ? -1 : 0;
}

/* Starts c or frees it; the common tail of every public call. */
static int launch(struct call *c, int built, struct err *err)
{
	if (!built) {
		call_free(c);
		return err_set(err, "out of memory");
	}
	if (call_start(c, err) < 0) {
		call_free(c);
		return -1;
	}
	return 0;
}

static int64_t get_id(const cJSON *obj)
{
	const cJSON *id = cJSON_GetObjectItemCaseSensitive(obj, "id");
	if (!cJSON_IsNumber(id) || id->valuedouble < 1 || id->valuedouble > (double)JSON_INT_LIMIT ||
	    id->valuedouble != (double)(int64_t)id->valuedouble)
		return 0;
	return (int64_t)id->valuedouble;
}

static void copy_str(char *out, size_t cap, const cJSON *obj, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
	snprintf(out, cap, "%s", cJSON_IsString(v) ? v->valuestring : "");
}

/* Reads a 2xx answer into r; -1 with r->message when it is not what the API
 * documents; 1 when a list continues on the next page. */
static int read_answer(struct call *c, const struct http_response *resp, struct gitlab_reply *r)
{
	if (c->kind == CALL_DELETE_KEY || c->kind == CALL_DELETE_HOOK)
		return 0;
	struct err e;
	cJSON *doc = json_parse(resp->body, resp->body_len, ANSWER_MAX, &e);
	if (!doc) {
		snprintf(r->message, sizeof r->message,
			 "the answer of %.200s to \"%.200s\" is not GitLab's JSON (%.120s): check "
			 "gitlab_url",
			 c->base, c->what, e.msg);
		return -1;
	}
	int rc = 0;
	switch (c->kind) {
	case CALL_PROJECT:
		r->id = get_id(doc);
		copy_str(r->project.path_with_namespace, sizeof r->project.path_with_namespace, doc,
			 "path_with_namespace");
		copy_str(r->project.default_branch, sizeof r->project.default_branch, doc,
			 "default_branch");
		copy_str(r->project.ssh_url_to_repo, sizeof r->project.ssh_url_to_repo, doc,
			 "ssh_url_to_repo");
		r->project.id = r->id;
		if (!r->id || !r->project.path_with_namespace[0] || !r->project.ssh_url_to_repo[0]) {
			snprintf(r->message, sizeof r->message,
				 "GitLab's project answer lacks id, path_with_namespace or "
				 "ssh_url_to_repo (%.200s)",
				 c->base);
			rc = -1;
		}
		break;
	case CALL_ADD_KEY:
	case CALL_ADD_HOOK:
	case CALL_UPDATE_HOOK:
		r->id = get_id(doc);
		if (!r->id) {
			snprintf(r->message, sizeof r->message,
				 "GitLab's answer to \"%s\" carries no id", c->what);
			rc = -1;
		}
		break;
	case CALL_FIND_KEY:
	case CALL_FIND_HOOK: {
		if (!cJSON_IsArray(doc)) {
			snprintf(r->message, sizeof r->message,
				 "GitLab's answer to \"%s\" is not a list", c->what);
			rc = -1;
			break;
		}
		const cJSON *item;
		cJSON_ArrayForEach(item, doc)
		{
			const cJSON *v = cJSON_GetObjectItemCaseSensitive(
				item, c->kind == CALL_FIND_KEY ? "key" : "url");
			if (!cJSON_IsString(v))
				continue;
			int same = c->kind == CALL_FIND_KEY
					   ? sshkey_same_public(v->valuestring, c->target)
					   : strcmp(v->valuestring, c->target) == 0;
			if (same && get_id(item)) {
				r->id = get_id(item);
				break;
			}
		}
		const char *next = http_response_header(resp, "X-Next-Page");
		if (!r->id && next && *next && c->page < GITLAB_PAGES_MAX)
			rc = 1;
		break;
	}
	default:
		break;
	}
	cJSON_Delete(doc);
	return rc;
}

static void call_done(const struct http_response *resp, void *arg)
{
	struct call *c = arg;
	struct gitlab_reply r;
	memset(&r, 0, sizeof r);
	c->attempts += resp->attempts;
	r.attempts = c->attempts;
	r.status = resp->status;
	int deleting = c->kind == CALL_DELETE_KEY || c->kind == CALL_DELETE_HOOK;
	if (resp->error == HTTP_OK && resp->status >= 200 && resp->status < 300) {
		int rc = read_answer(c, resp, &r);
		if (rc == 1) {
			struct err e;
			c->page++;
			if (call_start(c, &e) == 0)
				return; /* the next page answers */
			snprintf(r.message, sizeof r.message, "%s", e.msg);
			rc = -1;
		}
		r.ok = rc == 0;
	} else if (resp->error == HTTP_OK && resp->status == 404 && deleting) {
		r.ok = 1; /* already gone */
	} else if (resp->error == HTTP_OK && resp->status == 404 && c->kind == CALL_PROJECT) {
		snprintf(r.message, sizeof r.message,
			 "GitLab has no project %.255s at %.200s (404), or the token's user cannot "
			 "see it",
			 c->target, c->base);
	} else {
		gitlab_error_message(c->what, c->base, resp->error, resp->error_msg, resp->status,
				     resp->body, resp->body_len, c->attempts, r.message,
				     sizeof r.message);
	}
	if (!r.ok)
		log_warn("gitlab.call_failed", "call=\"%s\" status=%ld attempts=%d error=\"%s\"",
			 c->what, r.status, r.attempts, r.message);
	c->done(&r, c->arg);
	call_free(c);
}

int gitlab_get_project(struct http_client *http, const struct gitlab_conn *conn,
		       const char *path, gitlab_done_fn done, void *arg, struct err *err)
{
	if (!path || !*path || strlen(path) > GITLAB_PATH_MAX)
		return err_set(err, "project: 1..%d characters (group/name)", GITLAB_PATH_MAX);
	struct call *c = call_new(CALL_PROJECT, http, conn, "GET", done, arg, err);
	if (!c)
		return -1;
	struct buf enc;
	buf_init(&enc, 4 * GITLAB_PATH_MAX);
	int ok = http_url_encode(&enc, path, strlen(path)) == 0 &&
		 set_path(c, "/projects/%s", enc.data ? enc.data : "") == 0 &&
		 (c->target = strdup(path)) != NULL;
	buf_free(&enc);
	snprintf(c->what, sizeof c->what, "read project %s", path);
	return launch(c, ok, err);
}

int gitlab_find_deploy_key(struct http_client *http, const struct gitlab_conn *conn,
			   int64_t project_id, const char *public_line, gitlab_done_fn done,
			   void *arg, struct err *err)
{
	struct call *c = call_new(CALL_FIND_KEY, http, conn, "GET", done, arg, err);
	if (!c)
		return -1;
	snprintf(c->what, sizeof c->what, "list the deploy keys of project %lld",
		 (long long)project_id);
	int ok = set_path(c, "/projects/%lld/deploy_keys", (long long)project_id) == 0 &&
		 (c->target = strdup(public_line ? public_line : "")) != NULL;
	return launch(c, ok, err);
}

int gitlab_add_deploy_key(struct http_client *http, const struct gitlab_conn *conn,
			  int64_t project_id, const char *title, const char *public_line,
			  gitlab_done_fn done, void *arg, struct err *err)
{
	struct call *c = call_new(CALL_ADD_KEY, http, conn, "POST", done, arg, err);
	if (!c)
		return -1;
	snprintf(c->what, sizeof c->what, "add the deploy key to project %lld",
		 (long long)project_id);
	cJSON *body = cJSON_CreateObject();
	cJSON_AddStringToObject(body, "title", title ? title : "slipway");
	cJSON_AddStringToObject(body, "key", public_line ? public_line : "");
	cJSON_AddBoolToObject(body, "can_push", 0); /* read-only: slipway only clones */
	c->body = cJSON_PrintUnformatted(body);
	cJSON_Delete(body);
	int ok = c->body && set_path(c, "/projects/%lld/deploy_keys", (long long)project_id) == 0;
	return launch(c, ok, err);
}

int gitlab_delete_deploy_key(struct http_client *http, const struct gitlab_conn *conn,
			     int64_t project_id, int64_t key_id, gitlab_done_fn done, void *arg,
			     struct err *err)
{
	struct call *c = call_new(CALL_DELETE_KEY, http, conn, "DELETE", done, arg, err);
	if (!c)
		return -1;
	snprintf(c->what, sizeof c->what, "remove deploy key %lld of project %lld",
		 (long long)key_id, (long long)project_id);
	int ok = set_path(c, "/projects/%lld/deploy_keys/%lld", (long long)project_id,
			  (long long)key_id) == 0;
	return launch(c, ok, err);
}

int gitlab_find_hook(struct http_client *http, const struct gitlab_conn *conn,
		     int64_t project_id, const char *url, gitlab_done_fn done, void *arg,
		     struct err *err)
{
	struct call *c = call_new(CALL_FIND_HOOK, http, conn, "GET", done, arg, err);
	if (!c)
		return -1;
	snprintf(c->what, sizeof c->what, "list the webhooks of project %lld",
		 (long long)project_id);
	int ok = set_path(c, "/projects/%lld/hooks", (long long)project_id) == 0 &&
		 (c->target = strdup(url ? url : "")) != NULL;
	return launch(c, ok, err);
}

static char *hook_body(const struct gitlab_hook_spec *spec)
{
	cJSON *body = cJSON_CreateObject();
	cJSON_AddStringToObject(body, "url", spec->url ? spec->url : "");
	cJSON_AddStringToObject(body, "token", spec->token ? spec->token : "");
	cJSON_AddBoolToObject(body, "push_events", spec->push_events);
	cJSON_AddBoolToObject(body, "tag_push_events", spec->tag_push_events);
	cJSON_AddBoolToObject(body, "pipeline_events", spec->pipeline_events);
	cJSON_AddStringToObject(body, "push_events_branch_filter",
				spec->branch_filter ? spec->branch_filter : "");
	cJSON_AddBoolToObject(body, "enable_ssl_verification", 1);
	char *text = cJSON_PrintUnformatted(body);
	cJSON_Delete(body);
	return text;
}

int gitlab_add_hook(struct http_client *http, const struct gitlab_conn *conn, int64_t project_id,
		    const struct gitlab_hook_spec *spec, gitlab_done_fn done, void *arg,
		    struct err *err)
{
	if (!spec || !spec->url || !spec->token)
		return err_set(err, "gitlab: hook url and token required");
	struct call *c = call_new(CALL_ADD_HOOK, http, conn, "POST", done, arg, err);
	if (!c)
		return -1;
	snprintf(c->what, sizeof c->what, "create the webhook in project %lld",
		 (long long)project_id);
	log_redact_add(spec->token);
	c->body = hook_body(spec);
	int ok = c->body && set_path(c, "/projects/%lld/hooks", (long long)project_id) == 0;
	return launch(c, ok, err);
}

int gitlab_update_hook(struct http_client *http, const struct gitlab_conn *conn,
		       int64_t project_id, int64_t hook_id, const struct gitlab_hook_spec *spec,
		       gitlab_done_fn done, void *arg, struct err *err)
{
	if (!spec || !spec->url || !spec->token)
		return err_set(err, "gitlab: hook url and token required");
	struct call *c = call_new(CALL_UPDATE_HOOK, http, conn, "PUT", done, arg, err);
	if (!c)
		return -1;
	snprintf(c->what, sizeof c->what, "update webhook %lld of project %lld",
		 (long long)hook_id, (long long)project_id);
	log_redact_add(spec->token);
	c->body = hook_body(spec);
	int ok = c->body && set_path(c, "/projects/%lld/hooks/%lld", (long long)project_id,
				     (long long)hook_id) == 0;
	return launch(c, ok, err);
}

int gitlab_delete_hook(struct http_client *http, const struct gitlab_conn *conn,
		       int64_t project_id, int64_t hook_id, gitlab_done_fn done, void *arg,
		       struct err *err)
{
	struct call *c = call_new(CALL_DELETE_HOOK, http, conn, "DELETE", done, arg, err);
	if (!c)
		return -1;
	snprintf(c->what, sizeof c->what, "remove webhook %lld of project %lld",
		 (long long)hook_id, (long long)project_id);
	int ok = set_path(c, "/projects/%lld/hooks/%lld", (long long)project_id,
			  (long long)hook_id) == 0;
	return launch(c, ok, err);
}
