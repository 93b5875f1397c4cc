/*
 * coord_client: the agent's side of docs/protocol.md: registration, the
 * identity kept in <state_dir>/identity.json (0600), heartbeats, the long
 * poll (one at a time), lease extension, acknowledgements, the inventory and
 * the desired state.
 *
 * Retries (the agent never gives up; it keeps serving meanwhile):
 *   - transport errors and 5xx: full-jitter backoff, base retry_base_ms
 *     (1 s), cap retry_cap_ms (30 s); 429: after Retry-After;
 *   - 401: the token is unknown or rotated: register again, then repeat;
 *   - 404 on an agent-scoped path: register again; on a job-scoped path
 *     (ack, extend) a heartbeat tells "unknown agent" (register again) from
 *     "unknown job" (a final answer);
 *   - other 4xx are final (logged).
 * An unreachable coordinator is logged at most once a minute per kind of
 * request (and once when it answers again).
 *
 * Acks are retried until the coordinator answers them; 409 (a contradicting
 * earlier ack), 400 and an unknown job are final, 410 reports a lost lease.
 * The caller (the deployer) journals results before acking and acks again
 * after a restart, so an ack survives crashes too.
 *
 * The inventory is latest-wins: a PUT asked for while one is in flight is
 * sent after it, with the newest document only.
 *
 * Ownership: arguments are copied. jobs handed to on_jobs live for the call.
 * Threads: loop thread only. coord_client_new blocks briefly (reads the
 * identity file at start-up); the identity is written on a worker thread.
 */
#ifndef SLIPWAY_AGENT_COORD_CLIENT_H
#define SLIPWAY_AGENT_COORD_CLIENT_H

#include <stdbool.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "deployer.h"
#include "err.h"

struct ev_loop;
struct http_client;
struct worker_pool;
struct coord_client;

#define COORD_PROTOCOL 1
#define COORD_IDENTITY_FILE "identity.json"

/* Registration with a proof of identity instead of the bootstrap token
 * (coordinator.aws_identity, agent/awsmode.h). Before each registration
 * attempt the client asks prove(ctx, ready, arg); the prover answers
 * ready(arg, proof, error) once, later, never from inside prove (proof: the
 * "aws_identity" object, borrowed for the call; NULL with error when none
 * could be made: the attempt is retried with backoff). cancel(ctx, arg)
 * withdraws an ask whose answer has not come (the client is going away). */
typedef void (*coord_proof_fn)(void *arg, const cJSON *proof, const char *error);
struct coord_prover {
	void (*prove)(void *ctx, coord_proof_fn ready, void *arg);
	void (*cancel)(void *ctx, void *arg);
	void *ctx;
};

struct coord_client_opts {
	struct ev_loop *loop;
	struct http_client *http;
	struct worker_pool *workers;        /* writes the identity file */
	const char *url;                    /* coordinator base URL */
	const char *ca_file;                /* NULL: system bundle */
	const char *bootstrap_token;        /* NULL only with a prover */
	struct coord_prover prover;         /* prove NULL: the bootstrap token registers */
	const char *state_dir;
	const char *instance_id;
	const char *hostname;
	const char *fleet;
	const char *version;
	int64_t retry_base_ms;              /* 0 = 1000 */
	int64_t retry_cap_ms;               /* 0 = 30000 */
	int64_t poll_wait_s;                /* 0 = what registration says (30) */
	/* Every non-empty poll answer's "jobs" array. */
	void (*on_jobs)(const cJSON *jobs, void *arg);
	/* The heartbeat's "apps" (caller's cJSON array, freed by the client). */
	cJSON *(*heartbeat_apps)(void *arg);
	/* After each successful registration (first or again). */
	void (*on_registered)(void *arg);
	/* The queue backend, after each registration and at start with a kept
	 * identity: url "" means the coordinator's long poll; otherwise jobs
	 * come from that SQS queue (agent/sqsqueue.h) and nothing polls here. */
	void (*on_queue)(const char *url, const char *region, void *arg);
	void *arg;
};

struct coord_client *coord_client_new(const struct coord_client_opts *opts, struct err *err);
/* Registers when there is no identity, then heartbeats and long-polls. */
void coord_client_start(struct coord_client *cc);
/* Cancels every request (no callbacks) and frees. NULL is fine. */
void coord_client_free(struct coord_client *cc);

/* deployer_coord-compatible (ctx is the coord_client). */
void coord_client_ack(void *cc, const struct deployer_ack *ack, deployer_reply_fn done,
		      void *arg);
void coord_client_extend(void *cc, const char *job_id, const char *lease_id, int64_t extend_s,
			 deployer_reply_fn done, void *arg);

/* PUT .../inventory with {"containers": containers} (copied). */
void coord_client_put_inventory(struct coord_client *cc, const cJSON *containers);

/* GET .../desired: apps is the "apps" array, or NULL on a final error. */
typedef void (*coord_desired_fn)(const cJSON *apps, void *arg);
void coord_client_get_desired(struct coord_client *cc, coord_desired_fn done, void *arg);

void coord_client_set_draining(struct coord_client *cc, bool draining);

/* The per-agent token ("" before registration). It changes when the agent
 * registers again (a 401 or 404, a lost state); other senders of agent
 * requests (logdest) ask for it before every request rather than keep a
 * copy. The string stays valid until the next registration. */
const char *coord_client_token(const struct coord_client *cc);
/* Both at once, with the signature logdest_identity_fn wants (ctx is the
 * coord_client). */
void coord_client_identity(void *cc, const char **agent_id, const char **token);

/* Status for logs and tests. */
const char *coord_client_agent_id(const struct coord_client *cc); /* "" before registration */
int64_t coord_client_lease_s(const struct coord_client *cc);
const char *coord_client_queue_url(const struct coord_client *cc); /* "": the long poll */
/* Registers again now (the agent's SQS queue is gone: registering makes it anew). */
void coord_client_register_again(struct coord_client *cc);
bool coord_client_registered(const struct coord_client *cc);

#endif
