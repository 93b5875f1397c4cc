/*
 * releases: immutable releases of an app and their promotion.
 *
 * A release is what one generation of an app runs: id ("r_" + random), app,
 * seq (1, 2, 3... per app), the build it came from, the release spec sent to
 * agents (docs/protocol.md "The release spec": images by digest, commands,
 * ports, health, counts), the manifest it was made from, the app's environment
 * at that moment (sealed at rest, secrets.h: the spec column never holds it),
 * a description, created_ms and a status: pending (made, not yet live
 * everywhere), active (the app's live release), failed (its rollout failed),
 * rolled back (replaced by a rollback), superseded (a later release went
 * live). Only the status ever changes; a rollback, an environment change and a
 * scale change each make a NEW release, so the history is exact.
 *
 * Creating a release from a build (the builder calls the _tx form inside the
 * transaction that completes the build):
 *   - the build row must be `complete`; builds.images is
 *     {"<service>": {"image": "<registry>/<app>:<service>.<build>",
 *                    "digest": "sha256:<64 hex>"}}
 *     (digest may be missing for services that use a prebuilt `image:`; then
 *     the image reference is used as given);
 *   - builds.manifest is the NORMALIZED manifest the builder stores (manifest.h):
 *     {"services": {"web": {...release-spec fields...}}, "release": ..}
 *     where each service carries the release spec's own field names and units:
 *     "command" (array of strings or null), "environment" (object of strings),
 *     "port" (int or null), "proxy" ({listen, hosts, protocol} or null),
 *     "health" ({type, path, interval_ms, timeout_ms, grace_ms}), "count",
 *     "memory_mb", "stop_grace_ms"; anything else ("build", "image", "release")
 *     is the builder's and ignored here. Missing fields take the spec's
 *     defaults (count 1, memory 0, health running, stop grace 10 s).
 *     "services" may also be an array of objects with a "name".
 *   - the app's scale overrides (apps.scale, {"<service>": {"count", "memory_mb"}})
 *     and its current environment (apps.environment, sealed JSON object, added
 *     to every service over the manifest's own environment) are merged in;
 *   - the release is inserted, builds.release set, and the release promoted.
 *
 * Promoting (rollout.h does the work): raises the app's generation, makes the
 * release the app's desired release, and starts a rollout that queues deploy
 * jobs for the fleet's live agents by the app's strategy.
 *
 * Threads: the async calls are made on the loop thread and call `done` later on
 * the loop thread (never from inside the call), exactly once, unless they
 * return -1 (store queue full: nothing happened, done is not called). The *_tx
 * functions run inside a store operation. Nothing blocks.
 */
#ifndef SLIPWAY_COORD_RELEASES_H
#define SLIPWAY_COORD_RELEASES_H

#include <stdint.h>

#include <cjson/cJSON.h>

#include "err.h"

struct coord;
struct store_tx;

/* rc 0: release_id is the new (or promoted) release; rc -1: error says why.
 * release_id and error live only during the call. */
typedef void (*releases_done_fn)(int rc, const char *release_id, const char *error, void *arg);

/* See above. The build must be complete and have no release yet (a build is
 * released once: a second call answers the existing release without promoting
 * it again). */
int releases_create_from_build(struct coord *c, const char *build_id, releases_done_fn done,
			       void *arg);

/* Promotes an existing release of app (any status): a newer generation naming
 * it. trigger: "promote", "rollback", "build", "env", "scale". */
int releases_promote(struct coord *c, const char *app, const char *release_id,
		     const char *trigger, releases_done_fn done, void *arg);

/* A new release with the build, manifest and environment of release_id (and the
 * app's current scale), promoted with trigger "rollback". */
int releases_rollback(struct coord *c, const char *app, const char *release_id,
		      releases_done_fn done, void *arg);

/* Changes the app's environment: set (object of string -> string, may be NULL)
 * is added, unset (array of names, may be NULL) removed; then, when the app has
 * a release, a new release with the latest release's build and the new
 * environment is made (and promoted when promote is set). release_id is ""
 * when the app has no release yet. Names must match [A-Za-z_][A-Za-z0-9_]*,
 * values are strings; the whole environment at most 256 KiB. */
int releases_env_change(struct coord *c, const char *app, const cJSON *set, const cJSON *unset,
			int promote, const char *who, releases_done_fn done, void *arg);

/* Sets a service's scale override (count 0..100; memory_mb -1 keeps the
 * current value, 0 no limit, 6..1048576) and makes and promotes a new release
 * from the latest release (when there is one). */
int releases_scale(struct coord *c, const char *app, const char *service, int64_t count,
		   int64_t memory_mb, const char *who, releases_done_fn done, void *arg);

/* ---- inside store operations ---- */

struct queue_wake;

/* Outcome of the *_tx calls below. status 0: done (release, and rollout and
 * generation when promoted, filled). 400, 404, 409: refused before anything
 * was written, message says why. The functions return -1 only for store
 * errors (tx->err). wake collects the agents that got jobs. */
struct releases_result {
	int status;
	char message[512];
	char release[72];
	char rollout[32];
	int64_t generation;
	struct queue_wake *wake;
};

/* A new release of app from a spec "services" array (releases_services_from_manifest
 * output or an older release's), the app environment object env (sealed into
 * the row; NULL for none), and manifest/build/description (may be NULL).
 * Promotes it with trigger when trigger is not NULL. */
int releases_create_tx(struct store_tx *tx, struct coord *c, const char *app, const char *build,
		       const cJSON *services, const cJSON *env, const char *manifest,
		       const char *description, const char *trigger, struct releases_result *res);

int releases_create_from_build_tx(struct store_tx *tx, struct coord *c, const char *build_id,
				  struct releases_result *res);
int releases_promote_tx(struct store_tx *tx, struct coord *c, const char *app,
			const char *release_id, const char *trigger, struct releases_result *res);
int releases_rollback_tx(struct store_tx *tx, struct coord *c, const char *app,
			 const char *release_id, struct releases_result *res);
int releases_env_change_tx(struct store_tx *tx, struct coord *c, const char *app,
			   const cJSON *set, const cJSON *unset, int promote, const char *who,
			   struct releases_result *res);
int releases_scale_tx(struct store_tx *tx, struct coord *c, const char *app, const char *service,
		      int64_t count, int64_t memory_mb, const char *who,
		      struct releases_result *res);

/* The app's scale overrides ({} when none), a new object. */
cJSON *releases_app_scale_tx(struct store_tx *tx, const char *app);

/* The app's environment (opened), a new object; NULL and tx->err on failure. */
cJSON *releases_app_env_tx(struct store_tx *tx, const uint8_t *master_key, const char *app);

/* The release spec for agents, with the environment opened and merged in:
 * a new tree the caller deletes; NULL and tx->err on failure (unknown release,
 * a sealed environment that does not open). */
cJSON *releases_spec_tx(struct store_tx *tx, const uint8_t *master_key, const char *release_id);

/* Builds the spec's "services" array from a normalized manifest, the build's
 * images and the scale overrides (pure; for tests too). NULL and err when the
 * manifest is unusable (no services, a bad value, a service without image). */
cJSON *releases_services_from_manifest(const cJSON *manifest, const cJSON *images,
				       const cJSON *scale, struct err *err);

#endif
