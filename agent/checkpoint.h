/*
 * checkpoint: where the log shipper stands in each container's output, kept
 * in one small file (<state_dir>/logs/checkpoints.json) so that a restarted
 * agent resumes every container where it stopped: no line lost, at most one
 * batch per stream sent again.
 *
 * A checkpoint is a struct logpos_mark (logbatch.h): the `since` timestamp
 * (ns) to ask Docker for, and how many of the first events of that answer
 * were already accepted. An entry with since 0 and skip 0 means "followed
 * from the start, nothing accepted yet"; having an entry at all tells a
 * container the shipper has seen from one it never followed.
 *
 * Writes are coalesced: checkpoint_set only changes memory and schedules a
 * write; while one write runs on the worker pool, later changes wait for it
 * and go out together in the next. Each write replaces the file atomically
 * (temp file, fsync, rename, fsync of the directory). checkpoint_durable
 * tells the caller whether a given change is on disk yet: the shipper sends
 * a stream's next batch only once the checkpoint of its previous one is.
 *
 * Ownership: the store copies ids. checkpoint_open reads the file (blocking,
 * at start-up); a malformed file is logged and ignored (everything is read
 * again from its start: duplicates, never losses). Threads: the loop thread;
 * the writes run on the pool. Free the pool (which delivers the last
 * write's completion) before checkpoint_free, which writes what is still
 * unwritten, blocking.
 */
#ifndef SLIPWAY_AGENT_CHECKPOINT_H
#define SLIPWAY_AGENT_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "logbatch.h"

struct worker_pool;
struct checkpoint_store;

#define CHECKPOINT_FILE "checkpoints.json"
#define CHECKPOINT_ID_MAX 128
#define CHECKPOINT_FILE_MAX ((size_t)16 << 20)

/* on_durable (may be NULL) runs on the loop thread after each completed write. */
struct checkpoint_store *checkpoint_open(const char *path, struct worker_pool *workers,
					 void (*on_durable)(void *arg), void *arg,
					 struct err *err);
void checkpoint_free(struct checkpoint_store *cs);

/* 1 and *out when the container has an entry, else 0. */
int checkpoint_get(const struct checkpoint_store *cs, const char *id, struct logpos_mark *out);
/* Records the mark (no-op when unchanged) and schedules a write; returns the
 * change's generation (compare with checkpoint_durable), 0 on out of memory. */
uint64_t checkpoint_set(struct checkpoint_store *cs, const char *id,
			const struct logpos_mark *mark);
/* Forgets a container (it was removed); schedules a write. */
void checkpoint_forget(struct checkpoint_store *cs, const char *id);
/* The newest generation known to be on disk. */
uint64_t checkpoint_durable(const struct checkpoint_store *cs);
/* Entries, and writes completed (tests, metrics). */
size_t checkpoint_count(const struct checkpoint_store *cs);
uint64_t checkpoint_writes(const struct checkpoint_store *cs);
/* The ids, for pruning containers that are gone: calls fn for each. */
void checkpoint_each(const struct checkpoint_store *cs,
		     void (*fn)(const char *id, const struct logpos_mark *m, void *arg), void *arg);

/* The file's text for the current entries (exposed for tests). */
char *checkpoint_serialize(const struct checkpoint_store *cs);

#endif
