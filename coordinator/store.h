/*
 * store: the coordinator's SQLite database, kept off the event loop.
 *
 * One thread owns the connection. Modules hand it operations: `fn` runs on the
 * store thread with the connection, `done` runs afterwards on the loop thread.
 * Operations are applied in submission order. The thread takes every operation
 * waiting in its queue and runs them in ONE transaction (each inside its own
 * SAVEPOINT, so an operation that fails rolls back only its own changes): one
 * fsync commits a whole batch. That is what lets the webhook endpoint answer
 * 1,000 deliveries per second with each one durable before its 2xx.
 *
 * Durability: WAL journal with synchronous=FULL, so a COMMIT has reached the
 * disk when `done` runs. `done` receives -1 for an operation whose own `fn`
 * failed or whose batch could not be committed (disk full, I/O error).
 * Checkpoints (copying the WAL back into the database) never run inside a
 * COMMIT: a second connection on a thread of its own does them, so the write
 * path pays one fsync per batch and nothing more.
 *
 * Schema: versioned by PRAGMA user_version; store_open applies the missing
 * migrations from the list in store.c, each in its own transaction. Never edit
 * a released migration: append a new one.
 *
 * Threads: store_open, store_submit and store_close on the loop thread;
 * store_run from any thread that is not the store thread (start-up, tests,
 * offline commands). fn must not call back into the store API.
 */
#ifndef SLIPWAY_STORE_H
#define SLIPWAY_STORE_H

#include <sqlite3.h>
#include <stddef.h>

#include "err.h"

struct ev_loop;
struct store;

struct store_tx {
	sqlite3 *db;
	struct store *store;
	struct err err;   /* fn writes why it failed here; store_run returns it */
};

typedef int (*store_fn)(struct store_tx *tx, void *arg);  /* 0 keeps, -1 rolls back */
typedef void (*store_done_fn)(int rc, void *arg);

#define STORE_QUEUE_MAX 65536
#define STORE_BATCH_MAX 512

/* Opens (creating if needed) and migrates the database at path. Blocks: call
 * at start-up. NULL with err filled on failure. */
struct store *store_open(struct ev_loop *loop, const char *path, struct err *err);

/* Runs what is queued, stops the thread, closes the database. */
void store_close(struct store *s);

/* Queues fn; done (may be NULL) follows on the loop thread. -1 when the queue is
 * full or the store is closing: then neither runs. */
int store_submit(struct store *s, store_fn fn, store_done_fn done, void *arg);

/* Runs fn in its own transaction and waits for it. Returns fn's result; on -1
 * the message is in *err. */
int store_run(struct store *s, store_fn fn, void *arg, struct err *err);

/* A prepared statement for sql, cached by the string's address (pass string
 * literals), reset and with its bindings cleared. NULL (and tx->err) on error.
 * Only inside fn. */
sqlite3_stmt *store_stmt(struct store_tx *tx, const char *sql);

/* Runs one statement without results (DDL, simple updates); -1 and tx->err. */
int store_exec(struct store_tx *tx, const char *sql);

/* Helpers for fn: sqlite3_column_text as a C string ("" for NULL), and a step
 * that turns an error into tx->err. store_step returns SQLITE_ROW, SQLITE_DONE
 * or -1. */
const char *store_col_text(sqlite3_stmt *st, int col);
int store_step(struct store_tx *tx, sqlite3_stmt *st);

/* Binds s (SQLITE_STATIC: it must outlive the step), or NULL when s is NULL. */
int store_bind_text(sqlite3_stmt *st, int i, const char *s);

/* The common one-key query: store_stmt(sql) with ?1 = text, stepped once.
 * Returns store_step's result; *out is the statement (NULL when it could not
 * be prepared) for reading the row. */
int store_step_text(struct store_tx *tx, const char *sql, const char *text, sqlite3_stmt **out);
/* The same with ?2 = text2 too. */
int store_step_text2(struct store_tx *tx, const char *sql, const char *text, const char *text2,
		     sqlite3_stmt **out);

/* 1 when the apps table has app, 0 when not, -1 on a store error. */
int store_app_exists(struct store_tx *tx, const char *app);

int store_schema_version(const struct store *s);

#endif
