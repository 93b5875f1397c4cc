/*
 * logbatch: the pure parts of the log shipper: a batch of log events that
 * obeys every PutLogEvents limit, UTF-8 repair, cutting long messages into
 * events, and the read position of a container's log stream (what a
 * checkpoint stores).
 *
 * Limits (CloudWatch Logs PutLogEvents; the coordinator's sink uses the same):
 *   - at most 1,048,576 bytes, counting each event as its UTF-8 message bytes
 *     plus 26;
 *   - at most 10,000 events;
 *   - an event's message is 1..1,048,550 bytes (1 MiB minus the 26);
 *   - the events of a batch span at most 24 hours, and are sent in
 *     chronological order (logbatch_sort, stable, so lines of one
 *     timestamp keep their order);
 *   - nothing older than 14 days (or the group's retention) or more than
 *     2 hours in the future: such events are counted and dropped before
 *     sending (logbatch_filter_age), since CloudWatch would drop them anyway.
 * An optional cap on the JSON-encoded size keeps a batch of escaped control
 * characters under the coordinator's 4 MiB body cap.
 *
 * Positions: a container's output is read in Docker's order (the order of
 * its log file), and a read can be resumed with `since=` (every line with a
 * timestamp at or after it). The events consumed so far are a prefix of that
 * order, so the events of a resumed read that were already consumed are
 * exactly its first K events, where K counts the consumed events with a
 * timestamp at or after `since`. struct logpos keeps the timestamps of the
 * last LOGPOS_RING events to compute (since, K) a little before the newest
 * event, so that lines of stdout and stderr whose timestamps interleave a
 * little out of order are neither lost nor repeated. With ordered
 * timestamps this is the timestamp of the last event and the number of
 * events at exactly that timestamp.
 *
 * Ownership: a batch owns its storage (logbatch_free). Not thread-safe;
 * nothing blocks.
 */
#ifndef SLIPWAY_AGENT_LOGBATCH_H
#define SLIPWAY_AGENT_LOGBATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

#define LOGBATCH_MAX_BYTES ((size_t)1048576)
#define LOGBATCH_EVENT_OVERHEAD 26
#define LOGBATCH_MAX_EVENTS 10000
#define LOGBATCH_EVENT_MAX (LOGBATCH_MAX_BYTES - LOGBATCH_EVENT_OVERHEAD) /* 1,048,550 */
#define LOGBATCH_MAX_SPAN_MS ((int64_t)24 * 3600 * 1000)
#define LOGBATCH_FUTURE_MS ((int64_t)2 * 3600 * 1000)
#define LOGBATCH_PAST_MS ((int64_t)14 * 24 * 3600 * 1000)

struct logbatch_event {
	int64_t ts_ms;
	uint32_t off;      /* into text */
	uint32_t len;
	uint8_t stream;    /* 1 stdout, 2 stderr */
};

struct logbatch_limits {
	size_t max_bytes;  /* 0 = LOGBATCH_MAX_BYTES */
	size_t max_events; /* 0 = LOGBATCH_MAX_EVENTS */
	int64_t max_span_ms; /* 0 = LOGBATCH_MAX_SPAN_MS */
	size_t max_json;   /* cap on the JSON-escaped messages; 0 = none */
};

struct logbatch {
	struct buf text;              /* the messages, back to back */
	struct logbatch_event *ev;
	size_t n, cap;
	size_t bytes;                 /* sum of (len + 26) */
	size_t json;                  /* sum of JSON-escaped lengths */
	int64_t min_ts, max_ts;
	int64_t first_mono_ms;        /* when the first event arrived (queue lag) */
};

void logbatch_init(struct logbatch *b);
void logbatch_free(struct logbatch *b);
/* Empties the batch; keeps small storage, frees large storage. */
void logbatch_reset(struct logbatch *b);
/* Moves src into dst (dst must be empty or freed); src becomes empty. */
void logbatch_move(struct logbatch *dst, struct logbatch *src);
/* Bytes of memory held. */
size_t logbatch_mem(const struct logbatch *b);

/* 1 when an event of len message bytes (json_len escaped) at ts_ms can join
 * the batch without breaking a limit; an empty batch takes any valid event. */
int logbatch_fits(const struct logbatch *b, const struct logbatch_limits *l, int64_t ts_ms,
		  size_t len, size_t json_len);
/* Appends (no limit checks: call logbatch_fits first). 0, -1 out of memory.
 * len must be 1..LOGBATCH_EVENT_MAX. */
int logbatch_add(struct logbatch *b, int64_t ts_ms, int stream, const char *msg, size_t len,
		 size_t json_len, int64_t mono_ms);

/* Stable sort by timestamp (a no-op pass when already sorted). */
void logbatch_sort(struct logbatch *b);

/* Drops events older than now_ms - max_age_ms or newer than now_ms + 2 h;
 * adds their counts to *too_old and *too_new; returns how many remain. */
size_t logbatch_filter_age(struct logbatch *b, int64_t now_ms, int64_t max_age_ms,
			   uint64_t *too_old, uint64_t *too_new);

/* Removes events [from, to) (rejected ones); returns how many remain. */
size_t logbatch_remove(struct logbatch *b, size_t from, size_t to);

/* ---- UTF-8 ---- */

/* 1 when s[0..len) is valid UTF-8 (RFC 3629) without NUL bytes. */
int logbatch_utf8_clean(const char *s, size_t len);

/* Streaming repair: every maximal ill-formed subpart (Unicode 15, 3.9) and
 * every NUL becomes U+FFFD. A sequence cut by the end of a piece is kept
 * for the next piece unless `final`. */
struct logbatch_utf8 {
	unsigned char carry[4];
	size_t ncarry;
};
/* Appends the repaired bytes to out; returns the number of replacements,
 * or -1 when out is full. */
long logbatch_utf8_feed(struct logbatch_utf8 *st, const char *in, size_t len, int final,
			struct buf *out);

/* The largest n <= max at a character boundary of the valid UTF-8 s (len
 * bytes); len itself when len <= max. Never 0 for max >= 4 and len > 0. */
size_t logbatch_utf8_cut(const char *s, size_t len, size_t max);

/* JSON-escaped size of a message (without quotes). */
size_t logbatch_json_len(const char *s, size_t len);

/* ---- positions ---- */

#define LOGPOS_RING 64
#define LOGPOS_LAST 8                  /* newest events the margin is taken from */
#define LOGPOS_MARGIN_NS 5000000LL     /* 5 ms */

struct logpos {
	int64_t ring[LOGPOS_RING];     /* timestamps (ns) of the newest events consumed */
	size_t head;                   /* next slot */
	size_t count;                  /* filled slots */
};

/* What a read resumes from: since_ns for Docker, and how many of the first
 * events of the answer were consumed already. */
struct logpos_mark {
	int64_t since_ns;
	uint64_t skip;
};

void logpos_init(struct logpos *p);
void logpos_consume(struct logpos *p, int64_t ts_ns);
/* The mark after everything consumed so far; `base` is where the read began
 * (a resumed read: its since_ns and the events not yet passed; the mark
 * never goes before it when nothing was consumed since). */
struct logpos_mark logpos_mark(const struct logpos *p, const struct logpos_mark *base);

#endif
