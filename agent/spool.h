/*
 * spool: batches of log events kept on disk while the destination cannot
 * take them (an outage, or more backlog than memory may hold), so that an
 * agent keeps reading its containers' output through an outage (Docker's
 * own log files rotate and would lose it) and loses nothing across a
 * restart either.
 *
 * One file per batch in <state_dir>/logs/spool: "<seq>-<events>-<key>.gz"
 * (seq and key in hex): gzip of a small binary record (magic, the caller's
 * header text, then each event's timestamp, stream and message). seq orders
 * the files; key names the destination stream (the caller's hash of group
 * and stream), so one stream's batches can be sent in order, one at a time,
 * without opening files; events is what a drop costs. Files are written
 * atomically (temp file, fsync, rename, fsync of the directory) on the
 * worker pool, compressed there too; a file is in the index (and may be
 * read) only once it is durable.
 *
 * Cap: when the files pass max_bytes, the oldest are deleted until they fit
 * again; on_dropped reports how many files and events that cost (the caller
 * logs it and counts it in a metric). Files being read are never dropped.
 *
 * Ownership: spool_write takes the batch (it is moved out of the caller's
 * struct) and gives it back to the written callback only when the write
 * failed (NULL otherwise). A batch handed to a read callback becomes the
 * callback's (logbatch_free it). Threads: the loop thread; I/O on the pool
 * (which must run jobs in order: one thread). spool_open scans the
 * directory, blocking, at start-up. Free the pool before spool_free.
 */
#ifndef SLIPWAY_AGENT_SPOOL_H
#define SLIPWAY_AGENT_SPOOL_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "logbatch.h"

struct worker_pool;
struct spool;

#define SPOOL_DIR "spool"
#define SPOOL_MAGIC "SLSPOOL1"
#define SPOOL_HEADER_MAX 4096
#define SPOOL_RECORD_MAX ((size_t)16 << 20) /* decoded record cap when reading */

struct spool_opts {
	const char *dir;                 /* created if missing */
	uint64_t max_bytes;              /* cap on the files' total size; 0 = 256 MiB */
	struct worker_pool *workers;     /* one thread */
	void (*on_dropped)(uint64_t files, uint64_t events, void *arg);
	void *arg;
};

struct spool_entry {
	uint64_t seq;
	uint64_t key;
	uint64_t events;
	uint64_t bytes;                  /* file size; 0 while being written */
	int writing;                     /* not durable yet */
	int busy;                        /* being read or sent */
};

typedef void (*spool_written_fn)(int ok, uint64_t seq, struct logbatch *failed, void *arg);
typedef void (*spool_read_fn)(int ok, uint64_t seq, struct logbatch *b, const char *header,
			      const char *error, void *arg);

struct spool *spool_open(const struct spool_opts *opts, struct err *err);
void spool_free(struct spool *sp);

/* Queues the batch (moved out of *b) with header (copied; at most
 * SPOOL_HEADER_MAX bytes) under key. With `first`, it is ordered before the
 * key's entries already there (a batch that was in flight while newer ones
 * of its stream were spooled). 0 queued; -1 when the pool refused (the
 * batch stays in *b). */
int spool_write(struct spool *sp, uint64_t key, const char *header, struct logbatch *b,
		int first, spool_written_fn done, void *arg);
/* Writes queued and not yet durable. */
size_t spool_pending_writes(const struct spool *sp);

/* The oldest durable, idle entry whose key is not busy, not still being
 * written for an older batch, and not refused by skip (may be NULL). */
const struct spool_entry *spool_next(const struct spool *sp, int (*skip)(uint64_t key, void *arg),
				     void *arg);
/* Reads an entry (marks it busy). -1 when unknown or the pool refused. */
int spool_read(struct spool *sp, uint64_t seq, spool_read_fn done, void *arg);
/* Sending failed: the entry is idle again. */
void spool_release(struct spool *sp, uint64_t seq);
/* Delivered (or unusable): out of the index now, unlinked on the pool. */
void spool_remove(struct spool *sp, uint64_t seq);

size_t spool_count(const struct spool *sp);          /* entries, writes included */
uint64_t spool_bytes(const struct spool *sp);        /* durable files' bytes */
uint64_t spool_events(const struct spool *sp);       /* events in all entries */
size_t spool_key_count(const struct spool *sp, uint64_t key);
uint64_t spool_dropped_events(const struct spool *sp);

/* Record coding (exposed for tests): appends the uncompressed record. */
int spool_encode(const char *header, const struct logbatch *b, struct buf *out);
/* Decodes a record into b (must be initialised and empty); *header gets a
 * malloc'd copy. */
int spool_decode(const char *data, size_t len, struct logbatch *b, char **header,
		 struct err *err);

#endif
