/*
 * logcw: `slipway logs` from CloudWatch Logs (docs/api.md "Logs"), for a
 * fleet whose agents ship there (logs.cloudwatch_region set): the same route
 * as the embedded sink, GET /v1/apps/{app}/logs (role read), answered from
 * the app's log group <logs.group_prefix><app> through common/cwlogs.
 *
 *   - across the group's container streams (<service>/<instance>/<container>):
 *     FilterLogEvents from `since` (default: the last hour) to now, a
 *     `service` as logStreamNamePrefix "<service>/", pages followed with
 *     nextToken (at most LOGCW_PAGES_MAX pages a request); the answer holds
 *     the newest `limit` events, oldest first;
 *   - `stream=<service>/<instance>/<container>` (one container): GetLogEvents,
 *     the newest `limit` events;
 *   - `after=<cursor>` (a previous answer's `next`): the events after it,
 *     oldest first, up to `limit`;
 *   - `follow=1`: NDJSON, first as above (since default: 10 minutes), then
 *     polled every second: FilterLogEvents from the newest timestamp sent, the
 *     event ids already sent at that timestamp skipped; with `stream`,
 *     GetLogEvents with nextForwardToken. Empty lines keep an idle stream
 *     alive (server_stream_keepalive).
 * An unknown app is 404 (the store is asked first); a group that does not
 * exist yet answers no events; CloudWatch unreachable (after cwlogs' retries)
 * is 503 unavailable. Streams that are not container output (the agents'
 * EMF "metrics/<instance>") are left out.
 *
 * Events: {"id": eventId, "ts_ms", "app", "service", "instance", "container",
 * "log_stream", "release": null, "agent": null, "stream": null, "message"};
 * `next` is an opaque cursor string ("c1:<ts_ms>:<eventId>", or
 * "s1:<forward token>" with `stream`).
 *
 * Credentials: aws_credentials (environment, file, instance role): the
 * coordinator's role needs logs:FilterLogEvents, logs:GetLogEvents on the
 * /slipway/ groups (docs/aws-iam.md).
 *
 * Ownership: struct logcw is main's. Threads: the loop thread; nothing blocks.
 */
#ifndef SLIPWAY_COORD_LOGCW_H
#define SLIPWAY_COORD_LOGCW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

struct coord;
struct config;
struct server;
struct logcw;

#define LOGCW_PAGES_MAX 50
#define LOGCW_FOLLOW_EVERY_S 1.0
#define LOGCW_SEEN_MAX 1024
#define LOGCW_DEFAULT_SINCE_MS (3600 * 1000LL)
#define LOGCW_FOLLOW_SINCE_MS (600 * 1000LL)

/* true when the configuration asks for CloudWatch (logs.cloudwatch_region). */
bool logcw_enabled(const struct config *cfg);

/* NULL and err on a bad region or endpoint. */
struct logcw *logcw_new(struct coord *c, struct err *err);
void logcw_free(struct logcw *l);
int logcw_register_routes(struct logcw *l, struct server *srv);
/* Ends every follow stream (graceful shutdown). */
void logcw_shutdown(struct logcw *l);

/* The parts of a stream name (exposed for tests): 0, or -1 when it is not a
 * container stream "<service>/<instance>/<container>". */
int logcw_split_stream(const char *name, char *service, size_t scap, char *instance,
		       size_t icap, char *container, size_t ccap);

#endif
