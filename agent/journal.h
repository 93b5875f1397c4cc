/*
 * journal: the agent's write-ahead log. Each record is one JSON object on one
 * line of <dir>/journal.jsonl, written and fsync'ed on the journal's own
 * worker thread before its done callback runs on the loop thread: the caller
 * takes the step a record announces only from that callback, so after a crash
 * the journal never claims less than what happened.
 *
 * Records hold job ids, generations, release ids, image digests and container
 * ids: never environment values (the caller's rule; nothing here looks inside).
 *
 * Group commit: records appended while a write is in flight are written
 * together by the next write (one write + one fsync); callbacks run in append
 * order. A failed write or fsync (full disk, I/O error) is cut back off the
 * file (ftruncate to the last good size) and retried with full-jitter backoff
 * (1 s .. 30 s) until it succeeds, logging each failure: a step waits rather
 * than goes unjournalled.
 *
 * Compaction: when the file has grown past max_bytes and nothing is pending,
 * the snapshot callback describes the current state as records; they are
 * written to journal.jsonl.tmp, fsync'ed, renamed over journal.jsonl and the
 * directory fsync'ed. A crash at any point leaves either the old or the new
 * file, both complete. Records appended meanwhile go to the new file.
 *
 * Replay (journal_open): every complete line, in order. A torn last line (no
 * newline, or invalid JSON at the end: a crash during a write) is ignored and
 * cut off the file so later appends start on a clean line; an invalid line
 * in the middle is logged and skipped.
 *
 * Ownership: journal_append serialises the record at once (the caller keeps
 * its cJSON). Threads: loop thread only. journal_open blocks (reads the file:
 * start-up), journal_free blocks until outstanding writes finish (their
 * callbacks run inside it); nothing else blocks.
 */
#ifndef SLIPWAY_AGENT_JOURNAL_H
#define SLIPWAY_AGENT_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "err.h"

struct ev_loop;
struct journal;

#define JOURNAL_RECORD_MAX ((size_t)64 << 10)
#define JOURNAL_DEFAULT_MAX_BYTES ((size_t)1 << 20)
#define JOURNAL_FILE "journal.jsonl"

/* Replay: one record (an object). Return -1 to stop opening (err filled). */
typedef int (*journal_record_fn)(const cJSON *rec, void *arg, struct err *err);
/* Compaction: append records describing the whole current state to `out`
 * (an array). -1 skips this compaction. */
typedef int (*journal_snapshot_fn)(cJSON *out, void *arg);
/* The record is on disk (written and fsync'ed). */
typedef void (*journal_done_fn)(void *arg);

struct journal_opts {
	const char *dir;              /* must exist */
	size_t max_bytes;             /* compaction threshold; 0 = JOURNAL_DEFAULT_MAX_BYTES */
	journal_record_fn replay;     /* may be NULL */
	journal_snapshot_fn snapshot; /* NULL: never compacts */
	void *arg;                    /* for replay and snapshot */
};

/* Opens (creating) the journal and replays it. NULL with err on failure. */
struct journal *journal_open(struct ev_loop *loop, const struct journal_opts *opts,
			     struct err *err);

/* Queues rec; done (may be NULL) runs on the loop once it is durable. -1
 * (err) when rec is not an object, prints longer than JOURNAL_RECORD_MAX,
 * or memory is short: then done is never called. */
int journal_append(struct journal *j, const cJSON *rec, journal_done_fn done, void *arg,
		   struct err *err);

/* Records appended and not yet durable. */
size_t journal_pending(const struct journal *j);
/* Bytes in the file (as far as written). */
uint64_t journal_size(const struct journal *j);
/* Completed compactions since open (tests). */
unsigned journal_compactions(const struct journal *j);

/* Writes the outstanding records (blocking), runs their callbacks, frees. */
void journal_free(struct journal *j);

/* Blocking helper for any thread: writes data to path atomically (temp file
 * in the same directory, fsync, rename, fsync of the directory) with mode. */
int journal_write_file(const char *path, const void *data, size_t len, unsigned mode,
		       struct err *err);

#endif
