/*
 * gitlab: the few GitLab REST API v4 calls linking an app needs, over
 * common/http_client (asynchronous, on the loop).
 *
 *   GET    /projects/:path                      the project (path URL-encoded: group%2Fname)
 *   GET    /projects/:id/deploy_keys            find our key (by key material)
 *   POST   /projects/:id/deploy_keys            {title, key, can_push: false}
 *   DELETE /projects/:id/deploy_keys/:key_id
 *   GET    /projects/:id/hooks                  find our hook (by URL)
 *   POST   /projects/:id/hooks                  {url, token, push_events, tag_push_events,
 *                                                pipeline_events, push_events_branch_filter,
 *                                                enable_ssl_verification: true}
 *   PUT    /projects/:id/hooks/:hook_id         the same fields (re-linking)
 *   DELETE /projects/:id/hooks/:hook_id
 * Every call sends `PRIVATE-TOKEN: <token>`; lists are read 100 per page,
 * following X-Next-Page (at most GITLAB_PAGES_MAX pages).
 *
 * Failures become one clear sentence for the user (gitlab_error_message): 401
 * names the token and its api scope, 403 the Maintainer role, 404 the path,
 * 409/422/400 carry GitLab's own reason. 429 is retried after Retry-After and
 * 5xx, timeouts and dropped connections with full-jitter backoff
 * (GITLAB_RETRY_* unless the conn says otherwise) before they are reported.
 * A DELETE answered 404 counts as done (the thing is gone either way).
 * A POST retried after a 5xx or a timeout may have been applied the first
 * time: for deploy keys GitLab then says "has already been taken" and link.c
 * looks the key up; a webhook could exist twice (GitLab allows equal URLs),
 * and a later link reuses the first one found.
 *
 * Ownership: every string in struct gitlab_conn and the arguments is copied
 * at the call; the struct gitlab_reply lives only during the callback.
 * Secrets: the token is registered with log_redact_add and never logged.
 * Threads: loop thread only; nothing blocks. done runs exactly once, later
 * (never inside the starting call), unless the call returned -1.
 */
#ifndef SLIPWAY_COORD_GITLAB_H
#define SLIPWAY_COORD_GITLAB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backoff.h"
#include "err.h"
#include "http_client.h"

#define GITLAB_RETRY_BASE_MS 500
#define GITLAB_RETRY_CAP_MS 8000   /* Retry-After is honoured up to 4x this (http_client) */
#define GITLAB_RETRY_ATTEMPTS 5
#define GITLAB_TIMEOUT_MS 30000
#define GITLAB_PAGES_MAX 20
#define GITLAB_URL_MAX 1024
#define GITLAB_TOKEN_MAX 512
#define GITLAB_PATH_MAX 255

struct gitlab_conn {
	const char *base_url;    /* "https://gitlab.example.com" (with or without /api/v4) */
	const char *token;       /* PRIVATE-TOKEN */
	const char *ca_file;     /* NULL: the system's CAs */
	const struct backoff_policy *retry; /* NULL: GITLAB_RETRY_* */
	int64_t timeout_ms;      /* per attempt; 0: GITLAB_TIMEOUT_MS */
};

struct gitlab_project {
	int64_t id;
	char path_with_namespace[GITLAB_PATH_MAX + 1];
	char default_branch[256];   /* "" for an empty repository */
	char ssh_url_to_repo[GITLAB_URL_MAX + 1];
};

struct gitlab_hook_spec {
	const char *url;
	const char *token;           /* sent as X-Gitlab-Token with every delivery */
	bool push_events;
	bool tag_push_events;
	bool pipeline_events;
	const char *branch_filter;   /* push_events_branch_filter; NULL or "": every branch */
};

struct gitlab_reply {
	int ok;                      /* 1: done as asked (a find that found nothing is ok, id 0) */
	long status;                 /* final HTTP status; 0 when no answer arrived */
	int attempts;
	char message[600];           /* on failure: what to tell the user */
	int64_t id;                  /* the key or hook created or found */
	struct gitlab_project project;   /* gitlab_get_project */
};

typedef void (*gitlab_done_fn)(const struct gitlab_reply *reply, void *arg);

/* Each returns 0 when the call is under way (done follows), -1 (err) when it
 * could not start: bad base URL, out of memory. */
int gitlab_get_project(struct http_client *http, const struct gitlab_conn *conn,
		       const char *path, gitlab_done_fn done, void *arg, struct err *err);
int gitlab_find_deploy_key(struct http_client *http, const struct gitlab_conn *conn,
			   int64_t project_id, const char *public_line, gitlab_done_fn done,
			   void *arg, struct err *err);
int gitlab_add_deploy_key(struct http_client *http, const struct gitlab_conn *conn,
			  int64_t project_id, const char *title, const char *public_line,
			  gitlab_done_fn done, void *arg, struct err *err);
int gitlab_delete_deploy_key(struct http_client *http, const struct gitlab_conn *conn,
			     int64_t project_id, int64_t key_id, gitlab_done_fn done, void *arg,
			     struct err *err);
int gitlab_find_hook(struct http_client *http, const struct gitlab_conn *conn,
		     int64_t project_id, const char *url, gitlab_done_fn done, void *arg,
		     struct err *err);
int gitlab_add_hook(struct http_client *http, const struct gitlab_conn *conn, int64_t project_id,
		    const struct gitlab_hook_spec *spec, gitlab_done_fn done, void *arg,
		    struct err *err);
int gitlab_update_hook(struct http_client *http, const struct gitlab_conn *conn,
		       int64_t project_id, int64_t hook_id, const struct gitlab_hook_spec *spec,
		       gitlab_done_fn done, void *arg, struct err *err);
int gitlab_delete_hook(struct http_client *http, const struct gitlab_conn *conn,
		       int64_t project_id, int64_t hook_id, gitlab_done_fn done, void *arg,
		       struct err *err);

/* ---- pure helpers (any thread; tests) ---- */

/* "<scheme>://host[:port][/prefix]/api/v4" from what a user typed: http(s)
 * only, no query, fragment or credentials; a trailing "/" or "/api/v4" is
 * dropped first. */
int gitlab_api_base(const char *gitlab_url, char *out, size_t cap, struct err *err);

/* The user's sentence for a failed call. what: "read project group/web",
 * "add the deploy key", ...; body: GitLab's error document (may be NULL).
 * err_name/err_msg: the transport failure (HTTP_OK when an answer arrived). */
void gitlab_error_message(const char *what, const char *base_url, enum http_error error,
			  const char *transport_msg, long status, const char *body, size_t len,
			  int attempts, char *out, size_t cap);

/* GitLab's reason from an error body: {"message": "..."}, {"message":
 * {"field": ["..."]}} or {"error": "..."}; "" when none. Control characters
 * are dropped and the text cut at cap. */
void gitlab_error_detail(const char *body, size_t len, char *out, size_t cap);

#endif
