/*
 * sqsqueue: the SQS queue backend (queue.backend = sqs; issue 8 "Queue on
 * SQS"). Jobs stay what coordinator/queue.c makes them: rows of the store
 * with leases, attempts, acks and expiry, feeding the rollouts. What changes
 * is how a leased job reaches its agent: instead of answering the agent's
 * long poll, the coordinator leases the agent's queued jobs itself and sends
 * them (the same job objects the poll answer carries) to the agent's own SQS
 * queue with SendMessageBatch. The agent long-polls that queue, acknowledges
 * to the coordinator as before, then deletes the message. So the coordinator
 * holds no connection per agent, and every protocol rule (at most once,
 * highest generation, lease expiry and redelivery) is unchanged.
 *
 * Queues: one per agent, named <queue.sqs_prefix><instance id> (characters SQS
 * does not allow, or a name over 80 bytes, give a hashed name), created
 * (idempotently) at every registration with VisibilityTimeout = queue.lease,
 * SSE-SQS encryption (SqsManagedSseEnabled) and tags slipway:instance-id,
 * slipway:fleet, slipway:agent; its URL is kept in the store (table
 * sqs_queues, created by this module) and returned in the registration answer
 * (queue_url, queue_region). A queue is deleted when its agent is removed
 * (sqsqueue_agent_left) and by the sweep (every queue.sqs_sweep_interval): a
 * queue under the prefix whose agent is unknown, gone, lost longer than
 * queue.sqs_lost_grace, or lost after draining (scale-in) is an orphan.
 *
 * Sending: at most queue.sqs_concurrency agents are served at once (lease,
 * then SendMessageBatch: <= 10 entries and <= 256 KiB per call); the client
 * (common/sqs) retries throttling, 5xx and dropped connections itself and
 * resends only the failed entries. Jobs still not sent are given back to the
 * queue (queue_unlease_tx: the attempt is not counted) and tried again after a
 * full-jitter backoff. A job over SQS's 256 KiB cannot travel this way: it is
 * acknowledged failed with that reason (the rollout stops).
 *
 * Ownership: struct sqsqueue is main's (sqsqueue_free). Threads: the loop
 * thread; sqsqueue_new blocks (start-up: it reads the store). Never blocks
 * otherwise.
 */
#ifndef SLIPWAY_COORD_SQSQUEUE_H
#define SLIPWAY_COORD_SQSQUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "err.h"

struct coord;
struct config;
struct agent;
struct server_req;
struct sqsqueue;

#define SQSQUEUE_TAG_INSTANCE "slipway:instance-id"
#define SQSQUEUE_TAG_FLEET "slipway:fleet"
#define SQSQUEUE_TAG_AGENT "slipway:agent"

/* true when the configuration selects the SQS backend. */
bool sqsqueue_enabled(const struct config *cfg);

/* Checks the queue.sqs_* settings, makes the credentials provider and the
 * SQS client, creates the table if needed and loads the known queues. NULL
 * (err filled) on a wrong setting or a store error. */
struct sqsqueue *sqsqueue_new(struct coord *c, struct err *err);
/* Starts the sweep timer and sends what is queued for every known agent. */
void sqsqueue_start(struct sqsqueue *s);
/* Cancels every SQS call (nothing more is sent) and frees. NULL is fine. */
void sqsqueue_free(struct sqsqueue *s);

/* Jobs may be queued for this agent: lease and send them (queue_wake's work
 * with this backend). */
void sqsqueue_wake(struct sqsqueue *s, const char *agent_id);

/* A registration committed: make sure the agent's queue exists, then answer r
 * with `answer` plus queue_url and queue_region (503 when the queue cannot be
 * made now: the agent registers again later). Takes answer; r may be NULL
 * (the client went away: the queue is still made). */
void sqsqueue_register_answer(struct sqsqueue *s, const struct agent *ag, struct server_req *r,
			      cJSON *answer);

/* The agent left for good (removed): delete its queue now. */
void sqsqueue_agent_left(struct sqsqueue *s, const char *agent_id);

/* Runs the orphan sweep now (the timer's work; tests). */
void sqsqueue_sweep_now(struct sqsqueue *s);

/* Status for tests and the bench. */
struct sqsqueue_stats {
	uint64_t messages_sent;    /* entries SQS accepted */
	uint64_t batches;          /* SendMessageBatch calls that got an answer */
	uint64_t given_back;       /* jobs handed back to the queue after a failed send */
	uint64_t too_large;        /* jobs failed: over 256 KiB */
	uint64_t queues_created;
	uint64_t queues_deleted;   /* by sqsqueue_agent_left and the sweep */
	uint64_t sweeps;           /* sweeps finished */
	size_t active;             /* agents being served now */
	size_t waiting;            /* agents waiting for a slot */
};
void sqsqueue_stats(const struct sqsqueue *s, struct sqsqueue_stats *out);
/* The queue URL known for agent_id, or NULL. */
const char *sqsqueue_url(const struct sqsqueue *s, const char *agent_id);
/* true when nothing is being sent, created, deleted or swept. */
bool sqsqueue_idle(const struct sqsqueue *s);

/* ---- building blocks, exposed for tests ---- */

/* The queue name of an instance: prefix + instance_id when that is a valid
 * SQS name, else prefix + the id's allowed characters (at most 40) + "-" +
 * 16 hex digits of its SHA-256. -1 when the prefix leaves no room (over 56
 * bytes) or has a character SQS refuses. out needs SQS_QUEUE_NAME_MAX + 1. */
int sqsqueue_queue_name(const char *prefix, const char *instance_id, char *out, size_t cap);

#endif
