/*
 * server: the coordinator's request router on top of common/httpd.
 *
 * Modules register routes (method + path pattern) at start-up; the server picks
 * the route as soon as a request's headers are in, sets the body cap for that
 * kind of route, authenticates the caller, and then calls the route's handler
 * with a struct server_req holding the path parameters and the principal.
 *
 *   server_add_route(srv, "POST", "/hooks/gitlab/{hook_id}", SERVER_AUTH_WEBHOOK,
 *                    webhook_post, wh);
 *   ...
 *   static void webhook_post(struct server_req *r, void *arg)
 *   {
 *       const char *hook = server_param(r, "hook_id");
 *       ...
 *       server_respond_error(r, 404, "not_found", "unknown hook");
 *   }
 *
 * Patterns: literal segments and {name} segments, each matching one non-empty
 * path segment (percent-decoded; values longer than SERVER_PARAM_MAX, or holding
 * '/', NUL or control bytes after decoding, do not match). A path that matches
 * no route gets 404 not_found; one that matches only under other methods gets
 * 405 method_not_allowed with an Allow header. HEAD is served by GET routes.
 *
 * Authentication, by route (all credentials as `Authorization: Bearer <token>`):
 *   SERVER_AUTH_NONE       nothing checked (health checks, version).
 *   SERVER_AUTH_WEBHOOK    nothing checked here: the handler authenticates (hook
 *                          id in the URL, X-Gitlab-Token); body cap
 *                          webhooks.max_body (413 beyond).
 *   SERVER_AUTH_BOOTSTRAP  the fleet's agents.bootstrap_token (registration); with
 *                          agents.aws_accounts set, a request without any token
 *                          goes on too: its handler verifies the AWS identity
 *                          proof in the body (agents.c).
 *   SERVER_AUTH_AGENT      the agent token of the agent named by the {agent_id}
 *                          parameter (401 unauthorized on a wrong token, 404
 *                          not_found for an unknown agent); `Slipway-Protocol`
 *                          other than 1 gets 400 protocol_unsupported.
 *   SERVER_AUTH_READ, _DEPLOY, _ADMIN
 *                          an API key with at least that role (admin > deploy >
 *                          read): 401 without a valid key, 403 forbidden with too
 *                          low a role. A key scoped to one app may only use
 *                          routes whose {app} parameter names that app (403
 *                          otherwise); routes without {app} need an unscoped key
 *                          unless registered with SERVER_ROUTE_SCOPED_OK.
 * Credentials are checked before the body is read whenever the check needs no
 * store lookup (agent tokens, cached API keys), so a wrong token costs no body.
 *
 * Bodies: 1 MiB by default (agent reports, API), webhooks.max_body for webhook
 * routes; server_add_route_ex chooses another kind (4 MiB agent logs, no body,
 * or an upload streamed into a file under <data.dir>/uploads up to
 * builds.upload_max). gzip request bodies are inflated under the same cap.
 *
 * Answers: every answer carries `Slipway-Protocol: 1` and `Slipway-Request-Id`;
 * errors have the protocol's body {"error":{"code":..,"message":..}}. Each
 * request is logged once when it ends (event http.request, with its request id;
 * agent routes at debug level: a thousand agents polling would drown the log).
 *
 * Lifetime: the struct server_req is the server's. The handler (and whoever it
 * hands the request to) may use it until it answers with one of the
 * server_respond* / server_stream_end / server_abort calls, or until the
 * on_abort callback it registered has run (the client went away). After that
 * the pointer is gone: drop it. An owner that keeps a request across loop
 * iterations (long polls, store queries, streams) must register on_abort.
 *
 * Threads: everything on the loop thread; nothing blocks.
 */
#ifndef SLIPWAY_COORD_SERVER_H
#define SLIPWAY_COORD_SERVER_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "auth.h"
#include "err.h"
#include "httpd.h"

struct coord;
struct server;

enum server_auth {
	SERVER_AUTH_NONE,
	SERVER_AUTH_WEBHOOK,
	SERVER_AUTH_BOOTSTRAP,
	SERVER_AUTH_AGENT,
	SERVER_AUTH_READ,
	SERVER_AUTH_DEPLOY,
	SERVER_AUTH_ADMIN,
};

enum server_body {
	SERVER_BODY_DEFAULT, /* by auth: webhooks webhooks.max_body, anything else 1 MiB */
	SERVER_BODY_NONE,    /* no body allowed (413 for any) */
	SERVER_BODY_SMALL,   /* 1 MiB in memory */
	SERVER_BODY_LOGS,    /* 4 MiB in memory (agent log batches) */
	SERVER_BODY_WEBHOOK, /* webhooks.max_body in memory */
	SERVER_BODY_UPLOAD,  /* into a file under <data.dir>/uploads, up to builds.upload_max */
};

#define SERVER_PARAMS_MAX 4
#define SERVER_PARAM_MAX 128

/* Route flags for server_add_route_ex. */
#define SERVER_ROUTE_SCOPED_OK 0x1 /* app-scoped keys may call it without {app} */

struct server_req {
	struct httpd_req *http;    /* method, path, query, headers, body, peer */
	struct coord *coord;
	char id[24];               /* request id, "rq_" + hex: in logs and Slipway-Request-Id */
	struct auth_principal who;   /* who is calling (auth.h) */
	size_t param_count;
	const char *param_names[SERVER_PARAMS_MAX];
	char param_values[SERVER_PARAMS_MAX][SERVER_PARAM_MAX + 1];
	void *user;                /* the handler's */
};

typedef void (*server_handler_fn)(struct server_req *r, void *arg);
typedef void (*server_abort_fn)(struct server_req *r, void *arg);
typedef void (*server_drain_fn)(struct server_req *r, void *arg);

struct server_route {
	const char *method;        /* "GET", "POST", "PUT", "DELETE" */
	const char *pattern;       /* "/v1/apps/{app}/releases/{release}/promote" */
	enum server_auth auth;
	enum server_body body;
	unsigned flags;            /* SERVER_ROUTE_* */
	server_handler_fn fn;
	void *arg;
};

/* Creates the server on c->loop, listening on server.listen (TLS when
 * server.tls_cert and server.tls_key are set). listen_override (may be NULL)
 * replaces server.listen (tests pass "127.0.0.1:0"). NULL and err on failure. */
struct server *server_new(struct coord *c, const char *listen_override, struct err *err);

/* Stops accepting (graceful shutdown, step 1); requests in flight continue. */
void server_stop_accepting(struct server *srv);
/* Closes everything: owners get their on_abort. NULL is fine. */
void server_free(struct server *srv);

int server_port(const struct server *srv);
size_t server_request_count(const struct server *srv);

/* Registers a route; -1 on a malformed pattern, too many parameters, or a
 * pattern + method registered twice. Start-up only. */
int server_add_route(struct server *srv, const char *method, const char *pattern,
		     enum server_auth auth, server_handler_fn fn, void *arg);
int server_add_route_ex(struct server *srv, const struct server_route *route);

/* ---- reading ---- */

/* The decoded value of path parameter {name}, or NULL. */
const char *server_param(const struct server_req *r, const char *name);

/* Query parameter (decoded) into out; 1 found, 0 absent, -1 malformed or too long. */
int server_query(const struct server_req *r, const char *name, char *out, size_t cap);

/* Parses the body as a JSON object (strict, common/json). On failure answers
 * 400 bad_request itself and returns NULL: the request is then finished. The
 * caller frees the tree with cJSON_Delete. */
cJSON *server_json_body(struct server_req *r);

/* 1 when the principal may act on app (unscoped key, or scoped to that app);
 * otherwise answers 403 forbidden and returns 0 (the request is finished). */
int server_check_app_scope(struct server_req *r, const char *app);

/* ---- answering (each finishes the request; see Lifetime) ---- */

int server_respond_json(struct server_req *r, int status, const cJSON *json);
/* Takes ownership of json (deletes it). */
int server_respond_json_take(struct server_req *r, int status, cJSON *json);
int server_respond(struct server_req *r, int status, const char *content_type,
		   const void *body, size_t len);
int server_respond_error(struct server_req *r, int status, const char *code, const char *fmt,
			 ...) __attribute__((format(printf, 4, 5)));
/* Adds a header to the coming answer; -1 when httpd refuses it. */
int server_add_header(struct server_req *r, const char *name, const char *value);

/* Streams (chunked). write returns -1 when the client's backlog is over the cap
 * (wait for on_drain) or the request is gone. end finishes the request. */
int server_stream_start(struct server_req *r, int status, const char *content_type);
int server_stream_write(struct server_req *r, const void *data, size_t len);
int server_stream_end(struct server_req *r);
void server_stream_on_drain(struct server_req *r, server_drain_fn fn, void *arg);

/* Keepalive for polled streams (NDJSON log follow, build logs): a stream on
 * which nothing was written for SERVER_STREAM_KEEPALIVE_MS (clock_mono_ms)
 * gets an empty line, so a load balancer's idle timeout does not cut it;
 * clients skip empty lines. Owners call it whenever a poll had nothing to
 * send. 1 written, 0 not due yet, -1 the write was refused (backlog). */
#define SERVER_STREAM_KEEPALIVE_MS 15000
int server_stream_keepalive(struct server_req *r);

/* Drops the connection without an answer (on_abort is not called). */
void server_abort(struct server_req *r);

/* Registers (fn NULL clears) the callback for a client that goes away while the
 * owner holds the request. After it returns the request is gone. */
void server_on_abort(struct server_req *r, server_abort_fn fn, void *arg);

/* The body file of a SERVER_BODY_UPLOAD route becomes the caller's (freed with
 * free(); the file is then the caller's to remove). NULL when there is none. */
char *server_take_body_file(struct server_req *r);

/* ---- shared helpers ---- */

/* Names: [a-z][a-z0-9-]{0,39}. Ids: 1..64 bytes of [A-Za-z0-9_-]. */
int server_valid_name(const char *s);
int server_valid_id(const char *s);

/* Maps a store or validation failure to an answer: 500 internal with a generic
 * message (the detail is logged with the request id, never sent). */
int server_respond_internal(struct server_req *r, const char *what, const char *detail);

#endif
