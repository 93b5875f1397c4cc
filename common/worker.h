/*
 * worker: a pool of threads for the blocking work a daemon must keep off its
 * libev loop (fsync, SQLite, key generation, archives).
 *
 *   worker_submit(pool, write_row, row_written, row);
 *
 * `work(arg)` runs on a pool thread; afterwards `done(arg)` runs on the loop
 * thread, delivered through an ev_async. `done` owns `arg` from then on (it
 * usually frees it). A pool with one thread runs the jobs, and their `done`
 * callbacks, strictly in submission order: a SQLite store relies on that.
 * With more threads jobs run concurrently and finish in any order (done
 * callbacks still arrive in the order their jobs finished).
 *
 * The pool keeps the loop alive (ev_run does not return) only while jobs are
 * outstanding; an idle pool does not hold the loop.
 *
 * Threads: worker_pool_new, worker_submit and worker_pool_free are called on
 * the loop thread only. Pool threads block every signal, so signals reach the
 * loop thread. Nothing here blocks except worker_pool_free.
 */
#ifndef SLIPWAY_WORKER_H
#define SLIPWAY_WORKER_H

#include <stddef.h>

#include "err.h"

struct ev_loop;
struct worker_pool;

typedef void (*worker_fn)(void *arg);

/* threads >= 1; queue_max >= 1 caps the jobs waiting for a thread (running
 * jobs and finished ones whose `done` has not run yet do not count).
 * NULL with *err filled on failure. */
struct worker_pool *worker_pool_new(struct ev_loop *loop, int threads, size_t queue_max,
				    struct err *err);

/* Queues `work` (required) and `done` (may be NULL). 0 when queued; -1 when the
 * queue holds queue_max jobs already, the pool is stopping, or memory is short:
 * then nothing was queued and neither function will be called. */
int worker_submit(struct worker_pool *p, worker_fn work, worker_fn done, void *arg);

/* Stops the pool and blocks until every submitted job is finished: jobs still
 * waiting in the queue run their `work` too (so `done` never sees undone work),
 * then `done` runs for every job not yet delivered, on the calling thread and
 * before this returns, in the order the jobs finished. Then the threads are
 * joined and everything is freed. May be called from inside a `done` callback.
 * NULL is ignored. */
void worker_pool_free(struct worker_pool *p);

#endif
