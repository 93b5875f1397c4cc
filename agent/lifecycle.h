/*
 * lifecycle: leaving the Auto Scaling group without dropping a request
 * (docs/operations.md "Scale-in"). Settings lifecycle.*.
 *
 * Watching: every poll_interval the agent reads, from the instance metadata
 * (IMDSv2, common/imds), autoscaling/target-lifecycle-state ("Terminated"
 * means the group is terminating this instance and a termination lifecycle
 * hook holds it in Terminating:Wait) and, when watch_spot is set,
 * spot/instance-action (present once EC2 scheduled a spot interruption,
 * two minutes ahead). Either starts the drain, once:
 *
 *   1. unhealthy   the proxy's health endpoint answers 503 (the load balancer
 *                  stops sending new connections once it sees two failed
 *                  checks) and the coordinator hears draining: true (it sends
 *                  no more jobs and leaves rollouts alone);
 *   2. deregister  wait out the load balancer's deregistration delay, during
 *                  which requests already sent to this instance still arrive
 *                  and are served;
 *   3. drain       the proxy's requests in flight finish (drain_timeout);
 *   4. stop        every container stops with its own stop grace;
 *   5. flush logs  until every stream reached its end and all of it was
 *                  accepted by the destination (not merely spooled: the disk
 *                  goes with the instance), at most log_flush_timeout;
 *   6. complete    CompleteLifecycleAction (CONTINUE) for the group, hook and
 *                  instance, retried with backoff while Auto Scaling cannot
 *                  be reached; a ValidationError ("No active Lifecycle
 *                  Action") means the action already ended and counts as done.
 *
 * While 1-6 run, RecordLifecycleActionHeartbeat every heartbeat_interval
 * keeps the hook from timing out. A drain started by a spot notice completes
 * an action only if the lifecycle state says a hook runs (the group may never
 * have started one); it keeps watching and completes one that starts later.
 * The steps are the caller's (struct lifecycle_steps): each reports with
 * lifecycle_step_done; one that does not report within its timeout plus a
 * margin is passed by (logged), so the action is always completed.
 * The group name and the instance id come from the options, else from the
 * instance metadata (tags/instance/aws:autoscaling:groupName with instance
 * metadata tags on, and instance-id).
 *
 * Ownership: opts are copied (steps.ctx is borrowed). Threads: the loop
 * thread only; nothing blocks.
 */
#ifndef SLIPWAY_AGENT_LIFECYCLE_H
#define SLIPWAY_AGENT_LIFECYCLE_H

#include <stdbool.h>
#include <stdint.h>

#include "err.h"

struct ev_loop;
struct http_client;
struct aws_credentials_provider;
struct lifecycle;

#define LIFECYCLE_STATE_PATH "/latest/meta-data/autoscaling/target-lifecycle-state"
#define LIFECYCLE_SPOT_PATH "/latest/meta-data/spot/instance-action"
#define LIFECYCLE_GROUP_TAG_PATH "/latest/meta-data/tags/instance/aws:autoscaling:groupName"
#define LIFECYCLE_INSTANCE_PATH "/latest/meta-data/instance-id"
#define LIFECYCLE_STEP_MARGIN_MS 5000

enum lifecycle_state {
	LIFECYCLE_WATCHING,
	LIFECYCLE_UNHEALTHY,
	LIFECYCLE_DEREGISTERING,
	LIFECYCLE_DRAINING,
	LIFECYCLE_STOPPING,
	LIFECYCLE_FLUSHING,
	LIFECYCLE_COMPLETING,
	LIFECYCLE_DONE,
};

/* Each step reports with lifecycle_step_done(lc, step), once, later. */
struct lifecycle_steps {
	void (*unhealthy)(void *ctx, struct lifecycle *lc, uint64_t step);
	void (*drain)(void *ctx, struct lifecycle *lc, uint64_t step, int64_t timeout_ms);
	void (*stop)(void *ctx, struct lifecycle *lc, uint64_t step, int64_t timeout_ms);
	void (*flush_logs)(void *ctx, struct lifecycle *lc, uint64_t step, int64_t timeout_ms);
	void *ctx;
};

struct lifecycle_opts {
	struct ev_loop *loop;
	struct http_client *http;
	struct aws_credentials_provider *creds;
	const char *region;                 /* Auto Scaling's region (required) */
	const char *autoscaling_endpoint;   /* NULL: https://autoscaling.<region>.amazonaws.com */
	const char *ca_file;
	const char *imds_endpoint;          /* NULL: the environment, then 169.254.169.254 */
	const char *group_name;             /* NULL: the instance's aws:autoscaling:groupName tag */
	const char *hook_name;              /* required */
	const char *instance_id;            /* NULL: from the instance metadata */
	bool watch_spot;
	int64_t poll_interval_ms;           /* 0 = 5000 */
	int64_t deregistration_delay_ms;
	int64_t drain_timeout_ms;           /* 0 = 30000 */
	int64_t stop_timeout_ms;            /* 0 = 120000 */
	int64_t log_flush_timeout_ms;       /* 0 = 60000 */
	int64_t heartbeat_interval_ms;      /* 0 = 60000 */
	int64_t step_margin_ms;             /* a step's grace past its timeout; 0 = 5000 */
	struct lifecycle_steps steps;
};

struct lifecycle *lifecycle_new(const struct lifecycle_opts *opts, struct err *err);
/* Cancels everything in flight (no step is called after). NULL is fine. */
void lifecycle_free(struct lifecycle *lc);

/* Starts watching the instance metadata. */
void lifecycle_start(struct lifecycle *lc);
/* Starts the drain now (what a "Terminated" state or a spot notice does). */
void lifecycle_begin(struct lifecycle *lc, const char *reason, bool hook);
/* A step reports; a stale step id (a step passed by) is ignored. */
void lifecycle_step_done(struct lifecycle *lc, uint64_t step);

enum lifecycle_state lifecycle_get_state(const struct lifecycle *lc);
const char *lifecycle_state_name(enum lifecycle_state st);
/* Heartbeats recorded, and whether the action was completed (for tests). */
int lifecycle_heartbeats(const struct lifecycle *lc);
bool lifecycle_completed(const struct lifecycle *lc);

#endif
