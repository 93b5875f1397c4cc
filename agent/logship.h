/*
 * logship: the log shipper. Follows stdout and stderr of every container
 * the agent manages (label slipway.app plus the configured extra labels, and
 * only those) and ships each line, with Docker's timestamp, to CloudWatch
 * Logs or to the coordinator's embedded sink (agent/logdest.h), losing
 * nothing across outages and restarts.
 *
 * Discovery: a container listing (stopped ones too) at start and after the
 * engine's event stream reconnects, plus the container events (start,
 * destroy). A running container is followed (GET /containers/{id}/logs with
 * follow, timestamps and since=); a stopped one is read to its end when a
 * checkpoint says it was followed before (the agent may have died while it
 * ran). A container never seen before is read from its first line.
 *
 * Lines: Docker's 16 KiB pieces are joined (logframe/linesplit); invalid
 * UTF-8 and NUL bytes become U+FFFD (CloudWatch refuses the batch
 * otherwise); a line over 1 MiB minus 26 bytes is cut into several events at
 * character boundaries, never dropped; empty lines are dropped (CloudWatch
 * refuses empty messages). A TTY container's "\r\n" loses its "\r".
 *
 * Names: log group <prefix><app> (prefix default "/slipway/"), log stream
 * <service>/<instance>/<container id, 12 hex>.
 *
 * Batches (agent/logbatch.h): each stream fills one batch and seals it when
 * it is full (1,048,576 bytes counting 26 per event, 10,000 events, 24 h)
 * or flush_interval_ms after its first event; a sealed batch is sorted by
 * timestamp and loses the events CloudWatch would reject for their age
 * (counted). One batch per stream is in flight at a time; two more may wait
 * behind it in memory. When a container writes faster than that drains, or
 * all batches together pass memory_max, its log stream is paused
 * (docker_logs_pause: backpressure, the lines wait in Docker's log file) and
 * resumed once there is room: the connection stays open, so nothing is read
 * twice and the engine never rescans the log file as a new request with
 * since= would make it. The spool is for outages only.
 *
 * Checkpoints (agent/checkpoint.h): after each accepted (or durably
 * spooled) batch, the position after it is recorded; a stream's next batch
 * is sent only once that record is on disk, so a crash repeats at most one
 * batch per stream, and a restart loses nothing.
 *
 * Outages: when the destination cannot be reached (a batch failed after its
 * retry), batches go to the spool (agent/spool.h) instead, in order per
 * stream, and the spool is probed with full-jitter backoff (retry_base_ms
 * .. retry_cap_ms). Once a batch gets through, the spool drains oldest
 * first, a stream's spooled batches before any newer batch of that stream.
 * The spool is capped (spool_max; the oldest files go, counted).
 *
 * logship_emit adds events the agent makes itself (EMF metric documents)
 * to a stream of their own, through the same batches and spool, without
 * checkpoints.
 *
 * Ownership: logship_new copies what it needs from opts; docker and dest
 * are borrowed and must outlive it. Threads: the loop thread only; file I/O
 * (checkpoints, spool) runs on the shipper's own worker thread. Nothing
 * blocks except at start (reading the checkpoint file and the spool
 * directory) and logship_free (the last checkpoint write).
 */
#ifndef SLIPWAY_AGENT_LOGSHIP_H
#define SLIPWAY_AGENT_LOGSHIP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

struct ev_loop;
struct docker;
struct logdest;
struct logship;

#define LOGSHIP_DEFAULT_PREFIX "/slipway/"
#define LOGSHIP_DIR "logs"

struct logship_opts {
	struct ev_loop *loop;
	struct docker *docker;
	struct logdest *dest;
	const char *state_dir;           /* checkpoints and spool in <state_dir>/logs */
	const char *instance_id;
	const char *group_prefix;        /* NULL = LOGSHIP_DEFAULT_PREFIX */
	const char *const *labels;       /* extra "key=value" filters, NULL-terminated */
	int64_t flush_interval_ms;       /* 0 = 1000 */
	uint64_t spool_max;              /* 0 = 256 MiB */
	uint64_t memory_max;             /* batches in memory, all streams; 0 = 32 MiB */
	int64_t max_age_ms;              /* drop older events; 0 = 14 days */
	int64_t retry_base_ms;           /* spool probes; 0 = 1000 */
	int64_t retry_cap_ms;            /* 0 = 30000 */
	bool no_discovery;               /* tests: only logship_follow / logship_emit */
};

struct logship_stats {
	uint64_t lines_read;        /* lines (and long-line pieces) from Docker */
	uint64_t events_read;       /* events made from them, before any drop */
	uint64_t events_shipped;    /* accepted by the destination */
	uint64_t events_rejected;   /* accepted batches' events the destination dropped */
	uint64_t events_refused;    /* in batches the destination refused whole */
	uint64_t dropped_too_old;
	uint64_t dropped_too_new;
	uint64_t dropped_empty;
	uint64_t events_spooled;    /* written to the spool */
	uint64_t spool_dropped;     /* deleted from the spool by its cap, or unreadable */
	uint64_t duplicates_skipped;/* already shipped before a reconnect or restart */
	uint64_t utf8_replaced;     /* U+FFFD put in */
	uint64_t events_split;      /* extra events made by cutting long lines */
	uint64_t batches_sent;
	uint64_t retries;           /* requests repeated after a failure */
	uint64_t throttled;
	uint64_t pauses;            /* log streams paused for backpressure */
	uint64_t reads;             /* log connections opened (one per container, again
				     * only after a break or a restart of the container) */
	uint64_t spool_files;
	uint64_t spool_bytes;
	uint64_t memory_bytes;      /* batches held in memory */
	int64_t queue_lag_ms;       /* age of the oldest event not accepted or spooled */
	size_t streams;
	size_t following;           /* open log connections (paused ones included) */
	size_t paused;              /* of those, held back now */
	bool destination_down;
};

struct logship *logship_new(const struct logship_opts *opts, struct err *err);
/* Starts discovery (unless no_discovery) and spool draining. */
void logship_start(struct logship *ls);
/* Closes every log connection and frees; writes the last checkpoints
 * (blocking). NULL is fine. */
void logship_free(struct logship *ls);

/* The deployer's question before it removes a stopped container: true once
 * its output was read to the end and all of it accepted or spooled (or the
 * shipper never followed it). A container it should have read but has not
 * is read now, so asking again later gets true. */
bool logship_drained(struct logship *ls, const char *container_id);

/* Starts following a container now (idempotent): for the agent's
 * container_started hook and for tests. */
void logship_follow(struct logship *ls, const char *container_id);

/* Adds one event (copied; UTF-8 is repaired) to group/stream. -1 when the
 * stream cannot take it now (full: counted as dropped). */
int logship_emit(struct logship *ls, const char *group, const char *stream, int64_t ts_ms,
		 const char *msg, size_t len);

void logship_stats(const struct logship *ls, struct logship_stats *out);

/* Group and stream names (exposed for tests): out holds at least 512 bytes. */
void logship_group_name(const char *prefix, const char *app, char *out, size_t cap);
void logship_stream_name(const char *service, const char *instance, const char *container_id,
			 char *out, size_t cap);

#endif
