/*
 * proxy_ctl: the control server inside the proxy process (the contract the
 * deployer's proxy_client speaks): HTTP/1.1 + JSON on a unix socket, served
 * by common/httpd, driving the data plane (agent/proxy.h). It also keeps
 * the route table on disk: after each change the table is written to
 * routes_file (temporary file, fsync, rename, fsync of the directory) on a
 * worker thread; writes that pile up while one runs collapse into one.
 *
 * The control socket is created here (mode 0600, made at a temporary path
 * and renamed into place, so it is never reachable with looser modes) or
 * inherited from an older proxy process (listen_fd), and accepted by this
 * module, each connection handed to httpd: that way the very same listening
 * socket can move to a new process during an upgrade without a moment in
 * which the path answers nothing.
 *
 * Ownership: proxy_ctl_new copies its config; the proxy and the worker pool
 * are the caller's and must outlive the ctl. proxy_ctl_free answers nothing
 * more (drains in flight are cancelled) and waits for nothing: a route write
 * in progress goes on on its worker and still writes the newest table, so
 * free the worker pool (which waits for it) after the ctl.
 *
 * Threads: loop thread only. Blocking: proxy_ctl_new (bind), proxy_ctl_load_file
 * (reads the file at start-up); everything else runs on the loop or workers.
 */
#ifndef SLIPWAY_AGENT_PROXY_CTL_H
#define SLIPWAY_AGENT_PROXY_CTL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "err.h"

struct ev_loop;
struct proxy;
struct worker_pool;
struct proxy_ctl;

#define PROXY_CTL_BODY_MAX ((size_t)1 << 20)
#define PROXY_ROUTES_FILE_MAX ((size_t)16 << 20)

struct proxy_ctl_config {
	const char *socket_path;   /* the control socket */
	int listen_fd;             /* inherited listening socket, or -1: bind socket_path */
	const char *routes_file;   /* NULL: no persistence */
	const char *version;       /* reported by GET /v1/health */
};

/* Starts serving. NULL (err filled) when the socket cannot be made: a live
 * socket at the path (another proxy answers there) is an error; a stale
 * one is replaced. */
struct proxy_ctl *proxy_ctl_new(struct ev_loop *loop, struct proxy *proxy,
				struct worker_pool *workers, const struct proxy_ctl_config *cfg,
				struct err *err);
void proxy_ctl_free(struct proxy_ctl *ctl);

/* The listening socket (for the hand-over); still the ctl's. */
int proxy_ctl_listen_fd(const struct proxy_ctl *ctl);

/* Hand-over: stops accepting control connections (the new process accepts on
 * the same socket now) and closes this process's copy of it; idle control
 * connections close, requests in flight (drains) are still answered. */
void proxy_ctl_stop_accepting(struct proxy_ctl *ctl);

/* Hand-over in progress: stop / start accepting control connections (they
 * wait in the backlog meanwhile); the socket stays open. */
void proxy_ctl_pause(struct proxy_ctl *ctl);
void proxy_ctl_resume(struct proxy_ctl *ctl);

/* Control requests being read or waiting for their answer (drains). */
size_t proxy_ctl_requests(const struct proxy_ctl *ctl);

/* Writes the table now (asynchronously); proxy_ctl does it after each change
 * itself. */
void proxy_ctl_persist(struct proxy_ctl *ctl);
/* Route-table writes finished so far (tests wait on it), and whether one is
 * still running or queued. */
uint64_t proxy_ctl_persisted(const struct proxy_ctl *ctl);
bool proxy_ctl_persist_busy(const struct proxy_ctl *ctl);

/* Loads a route table ({"routes":[{app, service, generation, release, listen,
 * protocol, hosts, backends}]}, proxy_routes_json's persistence form) into
 * the proxy, route by route; a route that fails is logged and skipped.
 * Returns the number of routes loaded, or -1 when the document itself is
 * unreadable. */
int proxy_ctl_load_table(struct proxy *proxy, const cJSON *table, struct err *err);
/* The same from the file (blocking read; a missing file loads nothing). */
int proxy_ctl_load_file(struct proxy *proxy, const char *path, struct err *err);

/* Listens on a 0600 unix socket at path (the control socket, the hand-over
 * socket), put in place atomically: bound and chmod'ed under a temporary
 * name, then renamed over path, so a client never finds a half-made socket.
 * `what` names it in errors. The non-blocking, close-on-exec listening fd,
 * or -1. Blocks only on the file system. */
int proxy_ctl_listen_unix(const char *path, int backlog, const char *what, struct err *err);

#endif
