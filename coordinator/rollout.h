/*
 * rollout: how a promoted release reaches the fleet, and what happens when it
 * does not.
 *
 * A rollout (table rollouts) belongs to one app generation. Starting one
 * raises the app's generation, makes the release the app's desired release,
 * ends a rollout still running for the app as `superseded` (its queued jobs
 * are cancelled: the newer generation replaces them), and queues deploy jobs
 * for the live agents of the app's fleet by the app's strategy:
 *   all            every live agent at once (default);
 *   one-at-a-time  one agent; the next when it succeeded;
 *   canary         one agent; every other live agent when it succeeded.
 * With no live agent the rollout succeeds at once (new agents get the release
 * when they register). A release whose manifest has a `release` command
 * (triggers build, promote, env) runs it first on one agent (runs.h): the
 * rollout row exists but the app keeps its generation and release, and no
 * deploy job is queued, until the command exits 0; a failure fails the
 * rollout and the release with the reason.
 *
 * rollout_step_tx re-evaluates a running rollout from the store alone (its
 * jobs and the agents' states), so it can run after any change and after a
 * restart (rollout_recover_tx) with the same result:
 *   - a job that failed (or ran out of lease attempts) fails the rollout: its
 *     queued jobs are cancelled and, when there is a previous release, the
 *     agents that took the new release (job succeeded or still leased) get a
 *     revert rollout: a newer generation naming the previous release. The
 *     rollout ends `rolled back` (or `failed` without a previous release, and
 *     for a failing revert, which is never reverted in turn);
 *   - jobs of agents that are lost or draining do not hold the rollout (the
 *     agent left it);
 *   - when nothing is pending, the next agents are started (one-at-a-time,
 *     canary) or the rollout ends `succeeded`: the release becomes `active`
 *     and the release it replaced `superseded` (`rolled back` when this was a
 *     rollback).
 * Every transition writes an events row (kind rollout.*).
 *
 * Threads: the *_tx functions run inside store operations (the store thread),
 * reading only immutable configuration from the coord; rollout_recover is
 * called on the loop thread at start-up. Nothing blocks.
 */
#ifndef SLIPWAY_COORD_ROLLOUT_H
#define SLIPWAY_COORD_ROLLOUT_H

#include <stdint.h>

#include "err.h"

struct coord;
struct store_tx;
struct queue_wake;

#define ROLLOUT_ID_MAX 32

/* Starts a rollout of release_id for app (see above). rollout_id (>= 32 bytes)
 * and generation (both may be NULL) receive the new rollout and generation. */
int rollout_start_tx(struct store_tx *tx, struct coord *c, const char *app,
		     const char *release_id, const char *trigger, char *rollout_id,
		     int64_t *generation, struct queue_wake *w);

/* Re-evaluates one rollout (no-op unless running). */
int rollout_step_tx(struct store_tx *tx, struct coord *c, const char *rollout_id,
		    struct queue_wake *w);

/* The release command of a rollout that waits for it (runs.h) ended: ok
 * queues the deploy jobs by strategy (the app takes the rollout's generation
 * and release now); otherwise the rollout and its release fail with reason
 * and the app keeps what it runs. No-op unless the rollout is running. */
int rollout_release_phase_done_tx(struct store_tx *tx, struct coord *c, const char *rollout_id,
				  int ok, const char *reason, struct queue_wake *w);

/* 1 when a job of the rollout is still queued or leased by a live agent (its
 * state cannot have changed by a success), 0 when none, -1 on error. */
int rollout_has_pending_tx(struct store_tx *tx, const char *rollout_id);

/* Re-evaluates every running rollout. */
int rollout_recover_tx(struct store_tx *tx, struct coord *c, struct queue_wake *w);

/* The agent left (lost, draining): rollouts waiting for it move on. */
int rollout_agent_left_tx(struct store_tx *tx, struct coord *c, const char *agent,
			  struct queue_wake *w);

/* The agent joined: queues a deploy job for every app of its fleet that has a
 * release and for which the agent has no pending job of the current
 * generation. registered 1 (it enrolled, maybe with an empty state): every such
 * app; 0 (it came back from lost): only apps whose generation it does not run.
 * Jobs join the app's running rollout, if any. */
int rollout_agent_joined_tx(struct store_tx *tx, struct coord *c, const char *agent,
			    int registered, struct queue_wake *w);

/* Appends an events row (app may be NULL). */
int rollout_event_tx(struct store_tx *tx, const char *app, const char *kind, const char *fmt,
		     ...) __attribute__((format(printf, 4, 5)));

/* Start-up: re-evaluates every running rollout and wakes whom it concerns. */
void rollout_recover(struct coord *c);

#endif
