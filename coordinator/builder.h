/*
 * builder: turns recorded webhook deliveries (and queued builds) into images
 * in the registry and a release (docs/webhooks.md, docs/internals.md).
 *
 * Work comes from the store, not from memory: builder_kick makes the builder
 * look for the oldest `deliveries` row with status 'received' and the oldest
 * `builds` row with status 'created' (an uploaded context or an API rebuild),
 * of an app that has no job running, and take it. So a delivery recorded just
 * before the coordinator died is simply found again (builder_recover), and at
 * most builds.concurrency jobs run at once, one per app (the builds of an app
 * happen in order, which the staleness rule relies on).
 *
 * One job:
 *   source   git (a delivery or a created build with a sha): the app's bare
 *            mirror <data.dir>/git/<app>.git fetches the exact sha over SSH with
 *            the app's deploy key (GIT_SSH_COMMAND: only that key, the app's
 *            pinned known_hosts with StrictHostKeyChecking=yes, or
 *            accept-new the first time and then pinned in apps.known_hosts;
 *            BatchMode). The mirror keeps the history, so later fetches are
 *            incremental and ancestry is known.
 *            upload (builds.context_path, a tar.gz on disk): extracted, no git.
 *   stale    (deliveries only) when the sha is the app's last complete build
 *            of that ref, or an ancestor of it (git merge-base --is-ancestor),
 *            the delivery becomes 'stale' and nothing is built or released:
 *            a push delivered late or twice never rolls the app back. A
 *            force-push to a commit that is not an ancestor builds.
 *   build    a builds row (status running) is made; the sha is checked out
 *            into a private workspace, slipway.yml is read (manifest.h); per
 *            service with `build`: context tar.gz (context.h, worker thread),
 *            Docker POST /build (X-Registry-Config when the registry has
 *            credentials, cachefrom = the service's previous image, labels
 *            slipway.app / slipway.build / slipway.service), tag
 *            <registry>/<prefix><app>:<service>.<build-id>, push, digest; per
 *            service with `image`: pulled to learn its digest (kept as given if
 *            that fails). With registry.kind = ecr (coordinator/ecrauth.h) the
 *            app's repository <prefix><app> is created before its first build,
 *            and builds, pushes and pulls of our registry log in with an ECR
 *            token; a push the registry refuses is retried once with a new one.
 *   done     ONE store transaction makes the build row complete with images
 *            and manifest JSON (the delivery 'built') and creates and
 *            promotes its release (releases_create_from_build_tx), so no
 *            reader ever sees a complete build without its release; a release
 *            that cannot be made fails the build ("no release: ..."). Any
 *            failure, builds.timeout or builder_cancel makes it failed with
 *            the reason (the delivery 'failed').
 * The build log (every git and docker line, each with an RFC 3339 time) is
 * written to build_logs in chunks every 250 ms, so it can be read while the
 * build runs; past builds.log_max the oldest chunks are dropped (the end is
 * what explains a failure).
 *
 * Ownership: builder_new returns the builder (builder_free). Threads: loop
 * thread only; git runs through common/proc, archives and file work on the
 * worker pool, SQL on the store thread. Nothing here blocks.
 */
#ifndef SLIPWAY_COORD_BUILDER_H
#define SLIPWAY_COORD_BUILDER_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

struct coord;
struct builder;

#define BUILDER_LOG_FLUSH_MS 250
#define BUILDER_LOG_CHUNK_MAX ((size_t)64 << 10)

/* Reads builds.* / registry.* / git.ssh from c->cfg; needs c->loop, c->store,
 * c->docker, c->workers and c->data_dir. Creates <data.dir>/git and
 * <data.dir>/work (0700). NULL and err on failure. */
struct builder *builder_new(struct coord *c, struct err *err);

/* Stops every job: processes are killed, Docker calls dropped, and their
 * builds left 'running' (the next start marks them failed, as after a
 * crash). Waits for nothing; workspaces are left for the next start, which
 * clears <data.dir>/work. NULL is fine. */
void builder_free(struct builder *b);

/* There may be new work in the store. Cheap; coalesces. */
void builder_kick(struct builder *b);

/* At start-up, before the first kick: builds that were running when the
 * coordinator stopped fail ("the coordinator stopped while the build was
 * running") with their deliveries, and Slack is told as for any failed
 * build; then deliveries recorded but never built are processed again. */
void builder_recover(struct coord *c);

/* Cancels a build: a running one fails now with "cancelled"; a queued
 * ('created') one is marked failed in the store (and Slack told once that
 * commits). 1 when it was running here,
 * 0 when the store update was queued (the build may have ended already), -1
 * when the store queue is full. */
int builder_cancel(struct builder *b, const char *build_id);

/* Jobs running now (tests, metrics). */
size_t builder_running(const struct builder *b);

#endif
