/*
 * logdest: where the log shipper's batches go, behind one small interface:
 * CloudWatch Logs (common/cwlogs) when cloudwatch.region is set, else the
 * coordinator's embedded sink (docs/protocol.md, "Logs (embedded mode)":
 * POST /v1/agents/{agent_id}/logs, and .../metrics for health data).
 *
 * Both report the same three outcomes: LOGDEST_OK (with the number of
 * events the destination dropped: too old or new for CloudWatch, an unknown
 * app for the coordinator), LOGDEST_UNREACHABLE (try again later: the
 * shipper spools) and LOGDEST_REFUSED (never accepted as it is).
 *
 * The coordinator destination authenticates with the agent's id and token,
 * asked of the coordinator client (coord_client_identity) before every
 * request, so a registration that changed them (after a 401 or 404) is
 * picked up by the next attempt; a 401 or 404 is tried once more after a
 * short delay for that. Its retries: transport
 * errors and 5xx with full-jitter backoff, unreachable_attempts of them
 * before LOGDEST_UNREACHABLE; 429 after Retry-After for as long as it
 * lasts; 400 and 413 are LOGDEST_REFUSED (the sink refuses a bad batch
 * whole and it must not be sent again unchanged).
 *
 * Ownership: a batch passed to logdest_send must stay unchanged until done
 * runs (CloudWatch rebuilds its body per attempt from it). The cwlogs
 * client is borrowed. Threads: the loop thread only; nothing blocks.
 */
#ifndef SLIPWAY_AGENT_LOGDEST_H
#define SLIPWAY_AGENT_LOGDEST_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "logbatch.h"

struct ev_loop;
struct http_client;
struct cwlogs;
struct logdest;

enum logdest_status { LOGDEST_OK = 0, LOGDEST_UNREACHABLE, LOGDEST_REFUSED };

struct logdest_result {
	enum logdest_status status;
	size_t rejected;       /* dropped by the destination (OK only) */
	int attempts;          /* requests for this batch */
	int retries;           /* of those, repeats */
	int throttled;
	const char *message;   /* "" on success */
};

typedef void (*logdest_done_fn)(const struct logdest_result *res, void *arg);

/* Names of one stream of output. */
struct logdest_stream {
	const char *group;     /* CloudWatch log group */
	const char *stream;    /* CloudWatch log stream */
	const char *app;       /* coordinator: names */
	const char *service;
	const char *container; /* short id */
	const char *release;   /* may be NULL */
};

struct logdest *logdest_cloudwatch(struct cwlogs *cw);

/* The agent's id and token now ("" for both while it is not registered);
 * the strings need only last until the call returns. */
typedef void (*logdest_identity_fn)(void *ctx, const char **agent_id, const char **token);

struct logdest_coord_opts {
	struct ev_loop *loop;
	struct http_client *http;
	const char *url;              /* coordinator base URL */
	const char *ca_file;          /* NULL: system bundle */
	logdest_identity_fn identity; /* required: coord_client_identity in the agent */
	void *identity_ctx;
	int64_t timeout_ms;           /* 0 = 30000 */
	int64_t retry_base_ms;        /* 0 = 1000 */
	int64_t retry_cap_ms;         /* 0 = 30000 */
	int unreachable_attempts;     /* 0 = 2 */
};
struct logdest *logdest_coordinator(const struct logdest_coord_opts *o, struct err *err);

/* Cancels every send (no callbacks) and frees. NULL is fine. */
void logdest_free(struct logdest *d);

/* The limits batches for this destination obey. */
const struct logbatch_limits *logdest_limits(const struct logdest *d);
/* 1 for CloudWatch. */
int logdest_is_cloudwatch(const struct logdest *d);

/* Sends one sorted, non-empty batch of one stream. An id, or 0 on bad
 * arguments (no callback). */
uint64_t logdest_send(struct logdest *d, const struct logdest_stream *s,
		      const struct logbatch *b, logdest_done_fn done, void *arg);
void logdest_cancel(struct logdest *d, uint64_t id);

/* Coordinator only: POST .../metrics with body (a {"metrics": [...]}
 * document, copied). 0 on a CloudWatch destination. */
uint64_t logdest_post_metrics(struct logdest *d, const char *body, size_t len,
			      logdest_done_fn done, void *arg);

/* The coordinator's request body for one stream (exposed for tests). */
int logdest_coord_body(struct buf *out, const struct logdest_stream *s,
		       const struct logbatch *b);

#endif
