/*
 * proxy_client: the deployer's asynchronous client for the proxy's control
 * API (docs: the proxy control contract; server side agent/proxy_ctl.c),
 * HTTP/1.1 + JSON over the unix socket proxy.control_socket, through
 * common/http_client.
 *
 * Every call returns a call id (> 0) and later calls its callback exactly
 * once on the loop thread (never from inside the call), unless cancelled
 * with proxy_client_cancel or proxy_client_free. 0 means the call could not
 * even start (bad arguments, out of memory): then no callback comes.
 *
 * Results: struct proxy_result says whether the call worked. error is NULL
 * on success (a 2xx answer with the expected body); otherwise a one-line
 * message ("HTTP 409 conflict: host web.example.com on port 80 belongs to
 * api/web", "connect: No such file or directory", "bad answer: ...").
 * status is the HTTP status (0 when no answer came) and code the error
 * code of the answer's body ("conflict", "not_found", "bad_request"; "" when
 * none), so callers can tell a 409 from a transport error.
 *
 * Retries: a call that found no proxy listening (connect refused, no socket:
 * the proxy process starting) is retried with backoff, 8 attempts over about
 * 2 s; other failures are handed back at once. Every call is idempotent on the proxy's
 * side, so the caller may simply repeat it.
 *
 * Ownership: arguments are copied before the call returns. Everything a
 * callback receives (result, arrays, strings) lives only for the callback's
 * duration. The http_client passed to proxy_client_new is the caller's and
 * must outlive the proxy_client.
 *
 * Threads: loop thread only; nothing blocks.
 */
#ifndef SLIPWAY_AGENT_PROXY_CLIENT_H
#define SLIPWAY_AGENT_PROXY_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proxy.h"   /* struct proxy_route_spec, proxy_backend_spec */

struct http_client;
struct proxy_client;

struct proxy_result {
	const char *error;       /* NULL: success */
	int status;              /* HTTP status; 0 when no answer arrived */
	const char *code;        /* the answer's error code, or "" */
};

/* A backend as the proxy reports it; counters are -1 when the answer has none
 * (the "previous" list of set_route carries only inflight). */
struct proxy_backend_state {
	const char *id;
	const char *address;
	int64_t inflight;        /* requests in flight + open tunnels */
	int64_t requests;
	int64_t errors;
	int64_t connections;     /* upstream connections open */
};

struct proxy_route_state {
	const char *app;
	const char *service;
	int64_t generation;
	const char *release;
	int listen;
	enum proxy_protocol protocol;
	const char *const *hosts;
	size_t host_count;
	const struct proxy_backend_state *backends;  /* the active set */
	size_t backend_count;
	const struct proxy_backend_state *retired;   /* left the set, connections open */
	size_t retired_count;
};

struct proxy_health {
	int64_t pid;
	const char *version;
	int64_t uptime_s;
	int64_t routes;
};

typedef void (*proxy_client_route_fn)(const struct proxy_result *res,
				      const struct proxy_backend_state *previous, size_t count,
				      void *arg);
typedef void (*proxy_client_drain_fn)(const struct proxy_result *res, bool drained,
				      int64_t remaining, int64_t waited_ms, void *arg);
typedef void (*proxy_client_done_fn)(const struct proxy_result *res, void *arg);
typedef void (*proxy_client_routes_fn)(const struct proxy_result *res,
				       const struct proxy_route_state *routes, size_t count,
				       bool draining, void *arg);
typedef void (*proxy_client_health_fn)(const struct proxy_result *res,
				       const struct proxy_health *health, void *arg);

/* socket_path is copied. NULL when memory is short. */
struct proxy_client *proxy_client_new(struct http_client *http, const char *socket_path);
/* Cancels every call still running (no callbacks) and frees. NULL is fine. */
void proxy_client_free(struct proxy_client *pc);

/* PUT /v1/routes/{app}/{service}: previous = the set it replaced. */
uint64_t proxy_client_set_route(struct proxy_client *pc, const struct proxy_route_spec *spec,
				proxy_client_route_fn cb, void *arg);
/* POST /v1/routes/{app}/{service}/drain. The HTTP call waits timeout_ms plus
 * a margin; drained is false when the proxy's deadline passed first. */
uint64_t proxy_client_drain(struct proxy_client *pc, const char *app, const char *service,
			    const char *const *backend_ids, size_t count, int64_t timeout_ms,
			    proxy_client_drain_fn cb, void *arg);
/* DELETE /v1/routes/{app}/{service}; a 404 (no such route) counts as done. */
uint64_t proxy_client_remove_route(struct proxy_client *pc, const char *app,
				   const char *service, proxy_client_done_fn cb, void *arg);
/* PUT /v1/draining */
uint64_t proxy_client_set_draining(struct proxy_client *pc, bool draining,
				   proxy_client_done_fn cb, void *arg);
/* GET /v1/routes */
uint64_t proxy_client_routes(struct proxy_client *pc, proxy_client_routes_fn cb, void *arg);
/* GET /v1/health */
uint64_t proxy_client_health(struct proxy_client *pc, proxy_client_health_fn cb, void *arg);

/* Stops a call; its callback is not called. Unknown ids are ignored. */
void proxy_client_cancel(struct proxy_client *pc, uint64_t call_id);

#endif
