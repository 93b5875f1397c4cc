/*
 * queue: the per-agent job queues of docs/protocol.md "The queue": long polls,
 * leases with a visibility timeout, extension, acknowledgement.
 *
 * Jobs live in the store (table jobs) and every change to one is a store
 * operation, so a job survives a restart in exactly the state its last
 * committed change left it in. What lives only in memory is the waiting: one
 * long poll per agent (a new poll ends the previous one with an empty answer).
 * A job created for an agent wakes its poll at once (queue_wake), so a promoted
 * release reaches a thousand waiting agents in one store round trip each.
 *
 * Leasing a job sets state leased, attempt + 1, a new lease id (also appended
 * to the job's lease history) and lease_expires_ms = now + queue.lease. A lease
 * that expires returns the job to the queue; the next lease shows attempt + 1.
 * A job whose lease expired queue.max_attempts times ends with result
 * `expired` (reason "lease expired N times"), which the rollout counts as a
 * failure. An ack must name a lease issued for that job (any of its
 * attempts): the first ack ends the job, a repeat with the same result is
 * answered 200, a different result 409; an ack after the lease expired is
 * accepted while nobody else acknowledged the job. Extending needs the current,
 * unexpired lease (410 lease_lost otherwise). Job results feed the rollout in
 * the same transaction (rollout.h), so an ack and its consequences (next
 * instance, revert) commit together or not at all.
 *
 * Ownership: struct queue is main's (queue_free). Threads: the loop thread;
 * the *_tx functions inside store operations. Nothing blocks.
 */
#ifndef SLIPWAY_COORD_QUEUE_H
#define SLIPWAY_COORD_QUEUE_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "err.h"

struct coord;
struct server;
struct store_tx;
struct queue;

#define QUEUE_JOBS_PER_POLL 10
#define QUEUE_WAIT_MAX_S 30
#define QUEUE_EXTEND_MAX_S 3600

/* Agents to wake once a store operation has committed. */
struct queue_wake {
	size_t n, cap;
	char (*ids)[72];
};
int queue_wake_add(struct queue_wake *w, const char *agent_id);
void queue_wake_free(struct queue_wake *w);

struct queue *queue_new(struct coord *c);
void queue_free(struct queue *q);

/* Starts the lease-expiry timer (every second). */
void queue_start(struct queue *q);

int queue_register_routes(struct queue *q, struct server *srv);

/* Wakes the long polls of the listed agents (they lease what is queued). */
void queue_wake(struct queue *q, const struct queue_wake *w);
void queue_wake_agent(struct queue *q, const char *agent_id);

/* Ends every long poll with an empty answer (shutdown). */
void queue_shutdown(struct queue *q);
size_t queue_waiting(const struct queue *q);

/* Runs the expiry pass now (the timer's work; tests with a frozen clock). */
void queue_expire_now(struct queue *q);

/* ---- inside store operations ---- */

/* Queues a job; queued (never delivered) jobs of the same agent and app with a
 * lower generation are cancelled: the new one supersedes them. id_out (>= 32
 * bytes, may be NULL) receives the job id; the agent is added to w. */
int queue_job_insert_tx(struct store_tx *tx, const char *agent, const char *app,
			const char *type, int64_t generation, const char *release,
			const char *rollout, char *id_out, struct queue_wake *w);

/* Outcomes of the agent's calls that are answers, not failures. */
enum queue_status {
	QUEUE_OK = 0,
	QUEUE_NOT_FOUND,   /* 404 not_found */
	QUEUE_CONFLICT,    /* 409 conflict */
	QUEUE_LEASE_LOST,  /* 410 lease_lost */
};

struct queue_ack {
	const char *lease_id;
	const char *result;       /* succeeded, failed, superseded */
	int64_t generation;       /* -1: not given */
	const char *reason;       /* may be NULL */
	const char *output_tail;  /* may be NULL */
	int64_t duration_ms;      /* -1: not given */
	int64_t exit_code;        /* run jobs: the container's exit status; -1: not given */
};

/* Leases up to max queued jobs of agent into jobs (a cJSON array of job
 * objects as the protocol shows them, release specs included). */
int queue_lease_tx(struct store_tx *tx, struct coord *c, const char *agent, int max,
		   cJSON *jobs);

/* Returns leased jobs that were never handed out (the poll went away) to the
 * queue as they were. */
int queue_unlease_tx(struct store_tx *tx, const cJSON *jobs);

int queue_ack_tx(struct store_tx *tx, struct coord *c, const char *agent, const char *job,
		 const struct queue_ack *ack, enum queue_status *status, char *msg, size_t cap,
		 struct queue_wake *w);

int queue_extend_tx(struct store_tx *tx, struct coord *c, const char *agent, const char *job,
		    const char *lease_id, int64_t extend_s, int64_t *expires_in_s,
		    enum queue_status *status, char *msg, size_t cap);

/* Requeues expired leases (as of now_ms) and ends jobs out of attempts; the
 * agents with requeued jobs, and with new jobs from rollouts this moved on, go
 * into w. */
int queue_expire_tx(struct store_tx *tx, struct coord *c, int64_t now_ms, struct queue_wake *w);

#endif
