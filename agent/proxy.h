/*
 * proxy: the data plane of the agent's proxy process. It owns every public
 * port of the instance and forwards HTTP/1.1 (keep-alive, chunked bodies,
 * 100-continue, upgrades) or plain TCP to the active backend set of a route.
 *
 * Model: one libev loop, one thread, non-blocking sockets. Each client
 * connection has one read buffer (taken from a free list when it has bytes to
 * hold); the request head is rewritten with an iovec list that points into
 * that buffer (hop-by-hop headers left out, X-Forwarded-* added), and the head
 * and the body bytes that came with it leave in one writev. Bodies (chunked
 * ones too) pass through as they arrived; http-parser only finds where each
 * message ends. Responses take the same road back. Upstream connections are
 * kept in a per-backend idle pool (LIFO, capped, idle timeout).
 *
 * Headers: Connection, Keep-Alive, Proxy-Connection, TE, Trailer, Upgrade
 * (kept when upgrading) and the headers a Connection header names are left
 * out both ways; the client's address is appended to the last
 * X-Forwarded-For (or one is added); X-Forwarded-Proto and -Port are added
 * when absent and kept when present (the load balancer in front knows the
 * original scheme and port). Everything else passes byte for byte.
 *
 * Requests: http-parser refuses Content-Length with Transfer-Encoding and
 * repeated Content-Length; this module also refuses a Transfer-Encoding other
 * than one "chunked", folded or malformed header lines, header names that are
 * not tokens, and a missing or repeated Host (400); a head over
 * max_header_size or with more than 128 lines gets 431, a head not complete
 * header_timeout_ms after its first byte 408. Errors the proxy makes are
 * plain text ("slipway-proxy: no healthy backend for web.example.com").
 *
 * Backends: round robin over the active set; a backend whose connect failed
 * is skipped for 2 s while another is left, and a request whose connect
 * failed goes to the next backend (nothing was sent yet). A request that met
 * a dead pooled connection (closed before any answer byte) is sent again on a
 * fresh connection only if it is GET, HEAD, OPTIONS, TRACE or DELETE without
 * a body and no upgrade; otherwise 502. No answer head within
 * upstream_timeout_ms: 504. Empty set: 503. Unknown host: 404.
 *
 * Routes: a route (app/service) has a listen port, a protocol, a host list
 * (empty: any host) and an active backend set. proxy_set_route replaces the
 * set at once: every request routed after it returns uses the new set, a
 * request already on its way to an old backend completes there (each backend
 * counts its requests in flight and its tunnels). Backends leaving the set are
 * "retired": they take no new request, their idle pooled connections are
 * closed, and they are freed when their last connection closes.
 *
 * Ownership: the caller owns struct proxy (proxy_free). Strings passed in are
 * copied. cJSON trees returned are the caller's (cJSON_Delete).
 *
 * Threads: everything runs on the loop thread; nothing blocks except binding
 * a listener (a local syscall). Callbacks (drain, idle) are never called from
 * inside the proxy_* call that registered them.
 */
#ifndef SLIPWAY_AGENT_PROXY_H
#define SLIPWAY_AGENT_PROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "err.h"

struct ev_loop;
struct proxy;

#define PROXY_NAME_MAX 40        /* app and service: [a-z][a-z0-9-]{0,39} */
#define PROXY_ID_MAX 64          /* backend ids: [A-Za-z0-9_-]{1,64} */
#define PROXY_RELEASE_MAX 64
#define PROXY_HOST_MAX 253
#define PROXY_HOSTS_MAX 64       /* per route */
#define PROXY_BACKENDS_MAX 64    /* per route */
#define PROXY_ADDRESS_MAX 64     /* "[v6]:port" */
#define PROXY_LISTENERS_MAX 200  /* fits one SCM_RIGHTS message */

enum proxy_protocol { PROXY_HTTP, PROXY_TCP };

/* Why a route operation failed; the control API maps it to a status. */
enum proxy_status {
	PROXY_OK = 0,
	PROXY_EINVAL,     /* malformed spec (400) */
	PROXY_ECONFLICT,  /* port/host taken by another route, or backend still active (409) */
	PROXY_ENOTFOUND,  /* no such route (404) */
	PROXY_ELISTEN,    /* the port could not be bound (500) */
};

struct proxy_config {
	const char *bind;               /* listeners' address: "0.0.0.0", "::", "127.0.0.1" */
	const char *health_path;        /* answered by the proxy on every HTTP listener */
	int64_t idle_timeout_ms;        /* client keep-alive idle, and client inactivity */
	int64_t header_timeout_ms;      /* a request head must arrive within this */
	size_t max_header_size;         /* request line + headers; over it: 431 */
	int64_t connect_timeout_ms;     /* to a backend */
	int64_t upstream_timeout_ms;    /* backend silence while a response is awaited: 504 */
	int64_t upstream_idle_timeout_ms; /* pooled idle connections are closed after it */
	size_t pool_max_idle;           /* idle connections kept per backend; 0 = 64 */
	int64_t stop_idle_grace_ms;     /* when stopping: idle keep-alive clients get this
					 * long to send one more request; 0 = 2000 */
};

struct proxy_backend_spec {
	const char *id;
	const char *address;            /* "172.18.0.5:8080", "[fd00::5]:8080" */
};

struct proxy_route_spec {
	const char *app;
	const char *service;
	int64_t generation;
	const char *release;            /* may be NULL or "" */
	int listen;                     /* 1..65535 */
	enum proxy_protocol protocol;
	const char *const *hosts;       /* lowercased when stored; port parts not allowed */
	size_t host_count;
	const struct proxy_backend_spec *backends;
	size_t backend_count;
};

/* NULL (err filled) when the config is unusable. No listener is opened yet. */
struct proxy *proxy_new(struct ev_loop *loop, const struct proxy_config *cfg, struct err *err);

/* Closes every connection at once and frees everything. Pending drains are
 * dropped without their callback. NULL is fine. */
void proxy_free(struct proxy *p);

/*
 * Creates or replaces a route. On success the new set takes the next request;
 * *previous (when previous is not NULL) receives a new cJSON array of the
 * route's previous active backends [{"id","address","inflight"}] (empty for a
 * new route). On failure nothing changed, *status says why and err the detail.
 */
int proxy_set_route(struct proxy *p, const struct proxy_route_spec *spec, cJSON **previous,
		    enum proxy_status *status, struct err *err);

/* Removes a route; requests in flight finish; the port closes when no route
 * uses it. -1 with PROXY_ENOTFOUND when there is no such route. */
int proxy_remove_route(struct proxy *p, const char *app, const char *service,
		       enum proxy_status *status, struct err *err);

/* Result of a drain: drained is false when the timeout passed first. */
typedef void (*proxy_drain_fn)(bool drained, uint64_t remaining, int64_t waited_ms, void *arg);

/*
 * Waits until the listed backends of the route (which must not be in its
 * active set: else PROXY_ECONFLICT) have no request in flight and no open
 * tunnel, or until timeout_ms passes (then their remaining connections are
 * closed). Idle pooled connections to them are closed at once. Returns a
 * drain id (> 0) and calls cb later, on the loop; 0 on error (status, err).
 */
uint64_t proxy_drain(struct proxy *p, const char *app, const char *service,
		     const char *const *ids, size_t id_count, int64_t timeout_ms,
		     proxy_drain_fn cb, void *arg, enum proxy_status *status, struct err *err);

/* Forgets a pending drain; its callback is not called. Unknown ids are ignored. */
void proxy_drain_cancel(struct proxy *p, uint64_t drain_id);

/* Instance draining: every listener's health endpoint answers 503. */
void proxy_set_draining(struct proxy *p, bool draining);
bool proxy_draining(const struct proxy *p);

size_t proxy_route_count(const struct proxy *p);

/* The route table: {"routes":[...],"draining":bool}. with_stats adds per-backend
 * counters (inflight, requests, errors, connections) and the retired backends
 * still alive; without them it is the persistence form (what proxy_set_route
 * takes back). NULL when memory is short. */
cJSON *proxy_routes_json(const struct proxy *p, bool with_stats);

/* ---- process hand-over and shutdown ---- */

struct proxy_listener_info {
	int port;
	enum proxy_protocol protocol;
	int fd;                          /* still the proxy's */
};

/* The open listeners (at most max); returns how many were written. */
size_t proxy_listeners(const struct proxy *p, struct proxy_listener_info *out, size_t max);

/* Serves an inherited listening socket for `port` (made non-blocking and
 * close-on-exec). Routes set later on that port use it instead of binding.
 * An adopted listener that no route claims is closed by proxy_prune_listeners. */
int proxy_adopt_listener(struct proxy *p, int port, enum proxy_protocol protocol, int fd,
			 struct err *err);
void proxy_prune_listeners(struct proxy *p);

/*
 * Graceful stop: closes the listeners (another process may own the sockets
 * now), answers each request still to come on an open connection with
 * "Connection: close", closes keep-alive connections that stay idle for
 * stop_idle_grace_ms, and calls on_idle once no client connection or tunnel
 * is left (possibly later, never from inside this call). After deadline_ms
 * every connection still open is closed (0: no deadline).
 */
typedef void (*proxy_idle_fn)(void *arg);
void proxy_stop(struct proxy *p, int64_t deadline_ms, proxy_idle_fn on_idle, void *arg);

/* Client connections (tunnels included) open now. */
size_t proxy_connection_count(const struct proxy *p);

#endif
