/*
 * runjob: the agent's side of job type `run` (docs/protocol.md): a one-off
 * container of a release's service with its command replaced, run to its end
 * (`slipway run`, the manifest's release command before a rollout).
 *
 * For each run job: parse it (envelope, release spec, "run" object), check
 * that no container of that run exists yet (one would mean an earlier life
 * of this agent started it: a run is never started twice; it is acknowledged
 * `failed`), make sure the image is there (pulled as the swaps pull it,
 * through registryauth when configured), create the container from the
 * service (image, environment, memory limit, the agent's network and extra
 * labels) with the run's command, labels slipway.app, slipway.release,
 * slipway.service = the run id (so the log shipper names the output after
 * the run), slipway.run = the run id and slipway.run.service, no restart
 * policy, no published port and no proxy route; start it, keep the last
 * output lines, wait for its exit (killing it at the run's deadline), wait
 * until the log shipper has read its output (bounded), acknowledge
 * `succeeded` (exit status 0) or `failed` with exit_code, reason and the
 * output tail, then remove the container. The lease is extended every
 * lease/3 while the run lasts; a lost lease (the coordinator gave up on the
 * run) kills the container.
 *
 * Runs do not touch the deployer: they are not generations, are never
 * journalled and never superseded; several may run at once. A job id seen
 * before in this process is not run again (only its lease is updated). At
 * start-up, containers of runs left by an earlier life are removed once they
 * have stopped (the coordinator failed their jobs when the leases expired).
 *
 * Ownership: the module copies what it keeps. Threads: loop thread only;
 * never blocks.
 */
#ifndef SLIPWAY_AGENT_RUNJOB_H
#define SLIPWAY_AGENT_RUNJOB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "deployer.h"
#include "err.h"
#include "spec.h"

struct agent;
struct runjobs;

#define RUNJOB_ID_MAX 32
#define RUNJOB_TIMEOUT_MAX_S 86400
#define RUNJOB_LINE_MAX 2048         /* bytes of one output line kept in the tail */
#define RUNJOB_DRAIN_MS 10000        /* longest wait for the log shipper after the exit */
#define RUNJOB_SEEN_MAX 256          /* job ids remembered (at most once) */

/* A parsed run job. */
struct runjob_req {
	bool ackable;                /* id and lease_id were read (even on failure) */
	char job[SPEC_ID_MAX + 1];
	char lease[SPEC_ID_MAX + 1];
	char app[SPEC_NAME_MAX + 1];
	int64_t generation;
	int64_t lease_s;
	char run_id[RUNJOB_ID_MAX + 1];
	char service[SPEC_NAME_MAX + 1];
	char **command;              /* NULL-terminated, or NULL: the service's */
	int64_t timeout_s;
	struct spec_release *release;
	const struct spec_service *svc; /* inside release */
};

/* True for a job object of type "run" (the agent's dispatch). */
bool runjob_is_run(const cJSON *job);

/* Parses a run job strictly (the envelope as spec_job_parse checks it, plus
 * "run": {"id", "service", "command", "timeout_s"}); the service must be in
 * the release. -1 with err naming the field; req->ackable tells whether it can
 * be acknowledged. runjob_req_clear frees what it holds (also after -1). */
int runjob_parse(const cJSON *json, struct runjob_req *req, struct err *err);
void runjob_req_clear(struct runjob_req *req);

/* The container create document for req (a new tree; NULL out of memory). */
cJSON *runjob_create_body(const struct agent *a, const struct runjob_req *req);

/* The last lines of a run's output: at most `lines` lines of at most
 * RUNJOB_LINE_MAX bytes each. */
struct runjob_tail {
	char **line;
	size_t cap, n, head;
};
int runjob_tail_init(struct runjob_tail *t, size_t lines);
void runjob_tail_add(struct runjob_tail *t, const char *text, size_t len);
/* The lines joined with '\n' (a new string; NULL out of memory). */
char *runjob_tail_text(const struct runjob_tail *t);
void runjob_tail_free(struct runjob_tail *t);

struct runjob_opts {
	struct agent *a;             /* docker, registryauth, settings, hooks */
	struct deployer_coord coord; /* ack and extend, as the deployer's */
	int64_t tick_ms;             /* lease/deadline checks; 0 = 250 */
	int64_t drain_ms;            /* 0 = RUNJOB_DRAIN_MS */
};

struct runjobs *runjob_new(const struct runjob_opts *opts, struct err *err);
/* Removes the stopped containers of runs an earlier life left behind. */
void runjob_start(struct runjobs *r);
/* A job of type run from a poll answer. */
void runjob_offer(struct runjobs *r, const cJSON *job);
/* Runs in progress (tests, status). */
size_t runjob_active(const struct runjobs *r);
/* Cancels every call (no callbacks) and frees; containers stay (the next
 * start removes them). NULL is fine. */
void runjob_free(struct runjobs *r);

#endif
