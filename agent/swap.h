/*
 * swap: the per-release state machine that replaces an app's containers with
 * a new release's at zero downtime, and its relatives: removing an app,
 * finishing or undoing a swap interrupted by a crash, and re-pointing the
 * proxy at an app's containers after a restart.
 *
 * A deploy runs these steps, each announced through hooks->step (the deployer
 * journals it and calls swap_proceed once the record is durable; nothing of a
 * step is done before):
 *   pull    free disk (DockerRootDir from /info, statvfs) and pull each image
 *           (skipped when the release's stopped containers are kept: rollback)
 *   create  create the containers: labels slipway.app/.release/.service/
 *           .generation/.job/.port plus the configured extra labels, json-file
 *           logs capped, on the agent's network (created if missing), no host
 *           ports, restart unless-stopped, memory limit, command, environment
 *   start   start them (detail: the ids, created and restarted)
 *   health  wait until every new container passes its check
 *   switch  point each proxied service's route at the new containers
 *           (detail: the routes, so a crash after this point completes)
 *   drain   let in-flight requests on the old backends finish (deadline)
 *   stop    stop every other running container of the app (SIGTERM, its stop grace)
 *   retire  keep the newest keep_releases stopped releases, remove older
 *           containers whose logs are drained, prune images no container uses
 * A failure before the switch removes what the swap created (kept containers
 * it restarted are stopped again), leaves the old containers serving and
 * reports the reason plus the tail of the failing container's output. After
 * the switch nothing rolls back: later errors are logged and the swap ends ok.
 *
 * Routes (journal and app state): [{"service","listen","protocol","hosts",
 * "port","backends":[container ids]}]; addresses are looked up (Docker
 * network IP + port) whenever a route is sent to the proxy.
 *
 * Ownership: the request is read during swap_start only (strings, spec and
 * JSON are copied as needed). The outcome and the detail handed to hooks live
 * for the duration of the call. Threads: loop thread only; never blocks
 * (statvfs runs on a worker).
 */
#ifndef SLIPWAY_AGENT_SWAP_H
#define SLIPWAY_AGENT_SWAP_H

#include <stdbool.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "spec.h"

struct agent;
struct swap;

enum swap_kind {
	SWAP_DEPLOY,   /* converge the app to release */
	SWAP_REMOVE,   /* the app was deleted: routes and containers go */
	SWAP_RECOVER,  /* a deploy interrupted by a crash: complete or undo it */
};

struct swap_request {
	enum swap_kind kind;
	const char *job_id;
	const char *app;
	int64_t generation;
	const struct spec_release *release; /* SWAP_DEPLOY */
	const cJSON *serving_routes;        /* the app's routes now (may be NULL) */
	/* SWAP_RECOVER: what the journal knows of the interrupted job */
	const char *release_id;
	bool switched;                      /* the switch step was journalled */
	const cJSON *started;               /* the start step's detail, or NULL */
	const cJSON *routes;                /* the switch step's routes, or NULL */
	bool remove;                        /* the interrupted job was a remove */
};

enum swap_status {
	SWAP_OK,          /* deployed / removed / recovery completed the switch */
	SWAP_FAILED,      /* nothing changed for clients; reason says why */
	SWAP_UNDONE,      /* recovery removed an unswitched job's containers */
};

struct swap_outcome {
	enum swap_status status;
	const char *reason;       /* "" when ok */
	const char *output_tail;  /* last lines of the failing container, or "" */
	const cJSON *routes;      /* the app's routes after the swap (ok), else NULL */
};

struct swap_hooks {
	/* Journal `step` (detail: an object or NULL, the hook's to keep or free),
	 * then call swap_proceed(s). */
	void (*step)(void *arg, struct swap *s, const char *step, cJSON *detail);
	void (*done)(void *arg, const struct swap_outcome *o);
	void *arg;
};

/* The swap starts on the loop's next turn. NULL when memory is short. */
struct swap *swap_start(struct agent *a, const struct swap_request *req,
			const struct swap_hooks *hooks);
void swap_proceed(struct swap *s);
/* Stops a swap (shutdown): no hook runs afterwards. Containers stay as they
 * are: the journal and recovery at the next start sort them out. */
void swap_free(struct swap *s);

/* Re-resolves the containers of an app's routes and PUTs them to the proxy
 * (after an agent or Docker restart). Fire and forget; logs failures. */
void swap_resync(struct agent *a, const char *app, const cJSON *routes);
/* Stops every resync in flight (shutdown). */
void swap_resync_cancel_all(struct agent *a);

/* Step names in order, NULL-terminated (debug.crash_at takes these and
 * "begin" / "done"). */
extern const char *const swap_steps[];

#endif
