/*
 * logsink: the embedded log store (docs/protocol.md "Logs (embedded mode)" and
 * "Metrics"), so `slipway logs` works on one machine without CloudWatch.
 *
 * Agents POST batches of container output; the sink checks the batch the way
 * CloudWatch PutLogEvents would (at most 10,000 events, 1 MiB counting 26 bytes
 * per event, chronological within a stream; a batch breaking a rule is refused
 * whole with 400 and nothing stored), stores every event of a known app in one
 * store operation, and counts events for unknown apps as rejected.
 *
 * Bound: each app keeps at most logs.max_per_app bytes, counting each event as
 * its message length plus LOGSINK_ROW_OVERHEAD (so a flood of empty lines is
 * bounded too). Past the bound the oldest events are deleted down to 90 % of
 * it, so trimming happens once per ~10 % of the bound, not on every batch. The
 * per-app totals live in memory on the store thread (computed from the table
 * the first time an app is seen) and are only touched inside store
 * operations.
 *
 * Reading (unless logs.cloudwatch_region is set: then coordinator/logcw.c
 * serves the route from CloudWatch Logs): GET /v1/apps/{app}/logs (role
 * read) answers the newest events as JSON, or with follow=1 streams them as NDJSON and keeps streaming new ones
 * (polled every 500 ms) until the client goes away, with an empty line after
 * every 15 s of silence (server_stream_keepalive). An unknown app is 404: the
 * first query checks the app before the stream starts. Metrics: the latest batch
 * of each agent is kept in memory (not in the store: the figures are only
 * useful fresh) and read with GET /v1/agents/{agent}/metrics.
 *
 * Ownership: struct logsink is main's (logsink_free). Threads: the loop thread;
 * logsink_*_tx inside store operations. Nothing blocks.
 */
#ifndef SLIPWAY_COORD_LOGSINK_H
#define SLIPWAY_COORD_LOGSINK_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "err.h"

struct coord;
struct server;
struct store_tx;
struct logsink;

#define LOGSINK_ROW_OVERHEAD 64
#define LOGSINK_EVENTS_MAX 10000
#define LOGSINK_BATCH_BYTES ((size_t)1 << 20)
#define LOGSINK_EVENT_OVERHEAD 26

struct logsink *logsink_new(struct coord *c);
void logsink_free(struct logsink *s);
int logsink_register_routes(struct logsink *s, struct server *srv);

/* Ends every follow stream (graceful shutdown): clients get a complete
 * answer and resume with ?after= elsewhere. */
void logsink_shutdown(struct logsink *s);

/* Checks a parsed batch ({"streams": [...]}) against the protocol's rules;
 * -1 and err when it breaks one. *events gets the number of events. */
int logsink_check_batch(const cJSON *batch, size_t *events, struct err *err);

/* Stores a checked batch from agent; accepted/rejected counts out. max_per_app
 * is the bound in bytes. */
int logsink_store_tx(struct store_tx *tx, struct logsink *s, const char *agent,
		     const cJSON *batch, int64_t max_per_app, size_t *accepted, size_t *rejected);

/* Bytes the sink counts for app (store thread; tests). */
int64_t logsink_app_bytes_tx(struct store_tx *tx, struct logsink *s, const char *app);

/* Forgets an app's total (the app was deleted). */
void logsink_forget_app_tx(struct logsink *s, const char *app);

/* A `since` parameter: "10m", "2h", "30s", "500ms" ago, epoch milliseconds,
 * or RFC 3339, as wall ms. 0, or -1 when malformed (logcw.c reads it too). */
int logsink_parse_since(const char *v, int64_t *out);

#endif
