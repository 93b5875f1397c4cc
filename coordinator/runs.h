/*
 * runs: one-off containers of a release on one instance (`slipway run`), and
 * the manifest's top-level `release` command run that way before a rollout
 * (docs/api.md "Runs", docs/protocol.md job type `run`).
 *
 * A run (table runs) names the app, a service of a release (whose image,
 * environment and memory limit it borrows), the command that replaces the
 * service's, a timeout, and one live agent of the app's fleet (agents that run
 * the app first: the image is likely there). Creating one queues a job of
 * type `run` for that agent; leasing the job marks the run `running`; the
 * agent's ack ends it `succeeded` (exit status 0) or `failed` with the exit
 * status, the reason and the last lines of output. The output itself travels
 * like any container's: the agent's log shipper sends it to the log sink (or
 * CloudWatch) under service = the run id, which is a valid name ("run-" and 12
 * hex digits), so `GET /v1/apps/{app}/logs?service=<run id>` follows it.
 *
 * At most once: a run job is never handed out again once a lease of it
 * expired (runs_expire_tx ends it `failed` first, so the queue's requeue never
 * sees it), and a queued run job is not cancelled by deploy jobs of the same
 * app (queue_job_insert_tx leaves `run` jobs alone).
 *
 * The release phase: when a rollout starts (trigger build, promote or env) for
 * a release whose manifest has a `release` command, rollout.c creates the
 * rollout row but queues no deploy job; instead runs_release_phase_tx queues a
 * run (kind `release`, in the first service of the release). The rollout
 * waits (runs_rollout_waiting_tx makes its step a no-op) until the run ends:
 * exit 0 continues the rollout (rollout_release_phase_done_tx queues the
 * deploy jobs), anything else fails the rollout and the release with the
 * reason, and the app keeps its previous release and generation.
 *
 * Threads: runs_register_routes at start-up on the loop thread; the *_tx
 * functions inside store operations (store thread). Nothing blocks.
 * Ownership: callers own what they pass; JSON added to a caller's object
 * belongs to that object.
 */
#ifndef SLIPWAY_COORD_RUNS_H
#define SLIPWAY_COORD_RUNS_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "err.h"

struct coord;
struct store_tx;
struct queue_wake;

#define RUNS_ID_PREFIX "run-"
#define RUNS_ID_MAX 32
#define RUNS_TIMEOUT_DEFAULT_S 3600      /* an ad-hoc run or a release command */
#define RUNS_TIMEOUT_MAX_S 86400
#define RUNS_COMMAND_MAX 256             /* words, as the release spec's command */
#define RUNS_ARG_MAX 8192                /* bytes per word */
#define RUNS_OUTPUT_TAIL_MAX 16384       /* kept of the agent's output_tail */

/* What to run. service NULL: the release's first service; release NULL: the
 * app's desired release; command NULL: the service's own command. */
struct runs_request {
	const char *app;
	const char *service;
	const char *release;
	const cJSON *command;     /* array of strings or NULL */
	int64_t timeout_s;        /* 0: RUNS_TIMEOUT_DEFAULT_S */
	const char *kind;         /* "run" or "release" */
	const char *rollout;      /* release phase: the waiting rollout; else NULL */
	int64_t generation;       /* the job's generation; 0: the app's (at least 1) */
	const char *who;          /* the caller ("" for the release phase) */
};

/* Outcome of runs_create_tx: status 0 created (id filled), or 400/404/409
 * with message (nothing written). -1 only for store errors (tx->err). */
struct runs_result {
	int status;
	char message[512];
	char id[RUNS_ID_MAX];
	char agent[72];
	char job[32];
};

/* Checks a command array (1..RUNS_COMMAND_MAX strings of at most RUNS_ARG_MAX
 * bytes, valid UTF-8 without NUL). -1 with err naming `path`. */
int runs_check_command(const cJSON *command, const char *path, struct err *err);

/* ---- inside store operations ---- */

/* Creates a run and queues its job (agent woken through w). */
int runs_create_tx(struct store_tx *tx, struct coord *c, const struct runs_request *req,
		   struct runs_result *res, struct queue_wake *w);

/* The queue leases job_id (type run): adds the "run" object to the job
 * ({"id", "service", "command", "timeout_s"}) and marks the run running.
 * 0, or -1 on a store error or when the job has no run (tx->err). */
int runs_job_leased_tx(struct store_tx *tx, const char *job_id, int64_t attempt, cJSON *job);

/* The agent acknowledged job_id (type run): records the outcome and, for a
 * release command, continues or fails its rollout. exit_code -1: none
 * (the container never ran or its status is unknown). */
int runs_job_done_tx(struct store_tx *tx, struct coord *c, const char *job_id,
		     const char *result, int64_t exit_code, const char *reason,
		     const char *output_tail, struct queue_wake *w);

/* Ends every leased run job whose lease expired as of now_ms (job `expired`,
 * run `failed`): at most once, never requeued. */
int runs_expire_tx(struct store_tx *tx, struct coord *c, int64_t now_ms, struct queue_wake *w);

/* Brings runs whose job ended elsewhere (cancelled: the agent was removed or
 * the app deleted) to `failed`. */
int runs_sync_tx(struct store_tx *tx, struct coord *c, const char *app, struct queue_wake *w);

/* The release command of release_id as a new array (NULL when it has none:
 * no manifest, or "release": null). */
cJSON *runs_release_command_tx(struct store_tx *tx, const char *release_id);

/* 1 when a rollout of release_id with trigger runs a release command first
 * (build, promote, env and a release whose manifest has one), 0 when not,
 * -1 on error. */
int runs_release_phase_wanted_tx(struct store_tx *tx, const char *release_id,
				 const char *trigger);

/* Called by rollout.c when rollout_id (generation) of app starts release_id
 * with trigger: 1 when a release command was queued (the rollout waits for
 * it), 0 when there is none or the trigger does not run one (rollback, scale,
 * revert), -1 on error. With no live agent to run it on, the rollout fails at
 * once (returns 1 after failing it through rollout_release_phase_done_tx). */
int runs_release_phase_tx(struct store_tx *tx, struct coord *c, const char *app,
			  const char *release_id, const char *rollout_id, int64_t generation,
			  const char *trigger, struct queue_wake *w);

/* 1 when rollout_id waits for its release command (a run of it not ended),
 * 0 when not, -1 on error. */
int runs_rollout_waiting_tx(struct store_tx *tx, const char *rollout_id);

/* The run as the API shows it, added to out; 1 found, 0 not, -1 error. */
int runs_info_tx(struct store_tx *tx, const char *app, const char *run_id, cJSON *out);

/* ---- the API (docs/api.md "Runs") ---- */

int runs_register_routes(struct coord *c);

#endif
