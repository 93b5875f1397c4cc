/*
 * agent sqsqueue: the agent's side of the SQS queue backend (issue 8 "Queue
 * on SQS"; the coordinator's side is coordinator/sqsqueue.h). When the
 * registration answer names a queue (queue_url, queue_region), jobs come
 * from that queue instead of the coordinator's long poll: one ReceiveMessage
 * at a time (WaitTimeSeconds 20, up to 10 messages), each message body one
 * job object exactly as a poll answer carries it, handed to on_job (the
 * deployer, whose at-most-once and highest-generation rules are unchanged).
 *
 * The deployer's coordinator interface goes through this module
 * (agent_sqs_ack, agent_sqs_extend are deployer_coord-compatible): an extend
 * extends the coordinator's lease as before and also the visibility of the
 * job's messages (ChangeMessageVisibility), so SQS does not hand a job out
 * again while a long pull or swap runs; an ack goes to the coordinator
 * first, and once the coordinator has answered it (accepted, or a final
 * refusal), the job's messages are deleted (DeleteMessage). A message whose
 * body is not a job with an id and a lease id cannot be acknowledged: it is
 * deleted at once.
 * Results never travel through SQS.
 *
 * AWS credentials: the caller's provider (aws_credentials: the instance role
 * from IMDS, or environment / credentials-file keys in tests). The SQS
 * endpoint is the queue URL's scheme and authority; the region is the
 * registration's queue_region (else taken from an sqs.<region>.amazonaws.com
 * host). A queue that does not exist (deleted as an orphan, or while the
 * agent was lost) calls on_queue_gone: the agent registers again, which makes
 * the queue anew. Other receive failures retry with full-jitter backoff.
 *
 * Ownership: arguments are copied; the job handed to on_job lives for the
 * call. Threads: the loop thread only; never blocks.
 */
#ifndef SLIPWAY_AGENT_SQSQUEUE_H
#define SLIPWAY_AGENT_SQSQUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "deployer.h"
#include "err.h"

struct ev_loop;
struct http_client;
struct aws_credentials_provider;
struct agent_sqs;

#define AGENT_SQS_WAIT_S 20
#define AGENT_SQS_TRACKED_MAX 1024   /* messages remembered for ack/extend */

struct agent_sqs_opts {
	struct ev_loop *loop;
	struct http_client *http;
	struct aws_credentials_provider *creds;  /* the caller's (must outlive this), or NULL */
	const char *ca_file;                     /* NULL: the system bundle */
	struct deployer_coord coord;             /* the coordinator's ack and extend */
	void (*on_job)(const cJSON *job, void *arg);
	void (*on_queue_gone)(void *arg);
	void *arg;
	int wait_s;                              /* 0 = AGENT_SQS_WAIT_S; 0..20 */
	int64_t retry_base_ms;                   /* 0 = 1000 */
	int64_t retry_cap_ms;                    /* 0 = 30000 */
	int64_t sqs_retry_base_ms;               /* the SQS client's own; 0 = its default */
};

struct agent_sqs *agent_sqs_new(const struct agent_sqs_opts *opts, struct err *err);
/* Cancels everything (no callbacks) and frees. NULL is fine. */
void agent_sqs_free(struct agent_sqs *q);

/* Receives from url (starting, or switching from another queue). region may
 * be NULL or "" (then the URL's host must name it). The credentials are
 * opts.creds, else the first non-NULL creds given here (the caller's, kept),
 * else a provider of the default chain made here. -1 (err) on a URL or
 * region that cannot be used. */
int agent_sqs_set_queue(struct agent_sqs *q, const char *url, const char *region,
			struct aws_credentials_provider *creds, struct err *err);
/* "" when no queue is set. */
const char *agent_sqs_queue(const struct agent_sqs *q);

/* deployer_coord-compatible; ctx is the agent_sqs. */
void agent_sqs_ack(void *ctx, const struct deployer_ack *ack, deployer_reply_fn done, void *arg);
void agent_sqs_extend(void *ctx, const char *job_id, const char *lease_id, int64_t extend_s,
		      deployer_reply_fn done, void *arg);

struct agent_sqs_stats {
	uint64_t received;        /* messages */
	uint64_t deleted;
	uint64_t delete_failed;
	uint64_t extended;        /* ChangeMessageVisibility that succeeded */
	uint64_t poison;          /* bodies that were not a job */
	uint64_t receive_errors;
	size_t tracked;
};
void agent_sqs_stats(const struct agent_sqs *q, struct agent_sqs_stats *out);

/* ---- building blocks, exposed for tests ---- */

/* The endpoint (scheme://authority) of a queue URL into out; -1 when it is
 * not an http(s) URL with a path. */
int agent_sqs_endpoint_of(const char *url, char *out, size_t cap);
/* The region of an sqs.<region>.amazonaws.com[.cn] URL into out; -1 otherwise. */
int agent_sqs_region_of(const char *url, char *out, size_t cap);

#endif
