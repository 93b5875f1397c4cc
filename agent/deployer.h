/*
 * deployer: turns jobs into swaps, one app at a time, and remembers enough in
 * the journal to apply each job id at most once and to find its way back
 * after a crash.
 *
 * Policy (docs/protocol.md, "Desired state"):
 *   - each app converges to the highest generation seen; a job whose
 *     generation is not above the highest one the app accepted is
 *     acknowledged `superseded` and changes nothing;
 *   - a job arriving while a swap of its app runs waits; when the swap ends
 *     the newest waiting job runs and the older ones are `superseded`;
 *   - a job id seen before is never run again: its stored result is
 *     acknowledged again (with the newest lease id);
 *   - a job that fails to parse is acknowledged `failed` with the parser's
 *     message and changes nothing;
 *   - leases of jobs being worked on (running or waiting) are extended every
 *     lease/3; a lost lease is logged and the work goes on (the redelivered
 *     copy carries the new lease the ack will use);
 *   - an ack must not be lost: results are journalled before they are sent
 *     and re-sent after a restart until the coordinator has answered.
 *
 * Journal records (one JSON object per line; never environment values):
 *   {"t":"job","id","app","gen","type","release","lease","lease_s"}  accepted
 *   {"t":"step","id","step", ...detail}  before each swap step is taken
 *   {"t":"result","id","app","gen","type","release","lease","result",
 *    "reason","duration_ms"}                                 outcome decided
 *   {"t":"acked","id"}  {"t":"lease","id","lease"}  {"t":"reset","id"}
 *   {"t":"app",...} and {"t":"jobsnap",...}: the compacted state
 * Recovery (deployer_start): a job with a "job" record and no result was
 * interrupted: the runner completes it if its switch was journalled (result
 * succeeded), otherwise undoes it ("reset": the redelivered copy runs again).
 *
 * The swaps and the coordinator are reached through the small interfaces
 * below, so the unit tests can drive the policy without Docker.
 *
 * Ownership: the deployer copies what it keeps. Threads: loop thread only;
 * never blocks.
 */
#ifndef SLIPWAY_AGENT_DEPLOYER_H
#define SLIPWAY_AGENT_DEPLOYER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "err.h"
#include "swap.h"

struct ev_loop;
struct journal;
struct deployer;

#define DEPLOYER_JOBS_KEPT 512      /* finished job ids remembered (at most once) */

/* How an ack or an extend ended. */
enum deployer_reply {
	DEPLOYER_REPLY_OK,          /* 200 (ack: recorded; extend: lease extended) */
	DEPLOYER_REPLY_FINAL,       /* a definitive refusal (400/404/409): stop retrying */
	DEPLOYER_REPLY_LEASE_LOST,  /* 410 */
	DEPLOYER_REPLY_RETRY,       /* extend only: no answer (transport, 5xx, 429): try again soon */
};
typedef void (*deployer_reply_fn)(enum deployer_reply r, void *arg);

struct deployer_ack {
	const char *job_id;
	const char *lease_id;
	const char *result;         /* succeeded, failed, superseded */
	int64_t generation;
	const char *reason;         /* "" when none */
	const char *output_tail;    /* "" when none */
	int64_t duration_ms;
	bool has_exit_code;         /* run jobs (runjob.h): exit_code is sent */
	int64_t exit_code;
};

/* The coordinator side. ack retries on its own until the coordinator answers
 * (transport errors, 5xx, 429); done reports the final answer. extend makes
 * one attempt. Both copy their arguments. */
struct deployer_coord {
	void (*ack)(void *ctx, const struct deployer_ack *ack, deployer_reply_fn done, void *arg);
	void (*extend)(void *ctx, const char *job_id, const char *lease_id, int64_t extend_s,
		       deployer_reply_fn done, void *arg);
	void *ctx;
};

/* The swap side: swap.h's functions in the agent, fakes in tests. */
struct deployer_runner {
	void *(*start)(void *ctx, const struct swap_request *req, const struct swap_hooks *hooks);
	void (*proceed)(void *handle);
	void (*cancel)(void *handle);
	void (*resync)(void *ctx, const char *app, const cJSON *routes);
	void *ctx;
};

/* A swap this process started has ended, with outcome "succeeded" or
 * "failed" and its duration from the job's start (waiting for the journal
 * included). Swaps completed or undone at recovery are not reported: their
 * start was in another process. For the health metrics (metrics_swap). */
typedef void (*deployer_swap_end_fn)(void *arg, const char *app, const char *outcome,
				     int64_t duration_ms);

struct deployer_opts {
	struct ev_loop *loop;
	struct deployer_coord coord;
	struct deployer_runner runner;
	deployer_swap_end_fn on_swap_end; /* may be NULL */
	void *swap_end_arg;
	const char *crash_at;       /* test hook: SIGKILL self right after journalling this step */
	int64_t tick_ms;            /* lease-extension check interval; 0 = 250 */
};

/* Creates the deployer. It replays the journal through deployer_replay (give
 * it as journal_opts.replay with the deployer as arg) and compacts through
 * deployer_snapshot; attach the journal with deployer_set_journal. */
struct deployer *deployer_new(const struct deployer_opts *opts, struct err *err);
int deployer_replay(const cJSON *rec, void *deployer, struct err *err);
int deployer_snapshot(cJSON *out, void *deployer);
void deployer_set_journal(struct deployer *d, struct journal *j);

/* After the replay: recovers interrupted swaps, re-sends unacknowledged
 * results and resyncs every app's routes. */
void deployer_start(struct deployer *d);

/* A job from a long-poll answer (one element of "jobs"). */
void deployer_offer(struct deployer *d, const cJSON *job);

/* Docker came back (events reconnected): re-resolve and re-PUT routes. */
void deployer_resync(struct deployer *d);

/* Heartbeat "apps": [{"app","generation","release","state"}]; caller frees. */
cJSON *deployer_apps_json(const struct deployer *d);

/* Tests and status. */
int64_t deployer_seen_generation(const struct deployer *d, const char *app);
int64_t deployer_applied_generation(const struct deployer *d, const char *app);
const char *deployer_release(const struct deployer *d, const char *app); /* "" when none */
bool deployer_busy(const struct deployer *d, const char *app);
/* The stored result of a job ("" when running or waiting, NULL when unknown). */
const char *deployer_job_result(const struct deployer *d, const char *job_id);
size_t deployer_unacked(const struct deployer *d);

/* Shutdown, in this order: deployer_stop (cancels the swaps; journal
 * callbacks still to come only tidy up), journal_free, deployer_free. The
 * coordinator client goes before deployer_free (its callbacks point here). */
void deployer_stop(struct deployer *d);
void deployer_free(struct deployer *d);

#endif
