#include "store.h"

#include <ev.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* Schema migrations, applied in order; index + 1 is the user_version they lead to. */
static const char *const migrations[] = {
	/* 1: everything the first coordinator keeps. */
	"CREATE TABLE meta ("
	"  key TEXT PRIMARY KEY,"
	"  value TEXT NOT NULL);"

	"CREATE TABLE apps ("
	"  name TEXT PRIMARY KEY,"
	"  created_ms INTEGER NOT NULL,"
	"  fleet TEXT NOT NULL DEFAULT 'default',"
	"  strategy TEXT NOT NULL DEFAULT 'all'"
	"    CHECK (strategy IN ('all', 'one-at-a-time', 'canary')),"
	"  deploy TEXT NOT NULL DEFAULT 'branch' CHECK (deploy IN ('branch', 'tags', 'pipeline')),"
	"  branch TEXT,"                       /* NULL: the project's default branch */
	"  repo_url TEXT,"                     /* what the builder clones */
	"  project TEXT,"                      /* GitLab path_with_namespace */
	"  project_id INTEGER,"
	"  hook_id TEXT UNIQUE,"               /* the secret in /hooks/gitlab/<hook_id> */
	"  hook_token BLOB,"                   /* sealed X-Gitlab-Token */
	"  deploy_key_public TEXT,"
	"  deploy_key_private BLOB,"           /* sealed */
	"  known_hosts TEXT,"                  /* pinned on first clone */
	"  gitlab_url TEXT,"
	"  gitlab_token BLOB,"                 /* sealed, never returned */
	"  gitlab_hook_id INTEGER,"
	"  gitlab_key_id INTEGER,"
	"  slack_url BLOB,"                    /* sealed */
	"  environment BLOB,"                  /* sealed JSON object: the next release's env */
	"  scale TEXT NOT NULL DEFAULT '{}',"  /* JSON {service: {count, memory_mb}} */
	"  generation INTEGER NOT NULL DEFAULT 0,"
	"  release TEXT);"                     /* the desired release */

	"CREATE TABLE builds ("
	"  id TEXT PRIMARY KEY,"
	"  app TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,"
	"  status TEXT NOT NULL CHECK (status IN ('created', 'running', 'complete', 'failed')),"
	"  source TEXT NOT NULL,"              /* push, tag, pipeline, upload */
	"  ref TEXT,"
	"  sha TEXT,"
	"  author TEXT,"
	"  description TEXT NOT NULL DEFAULT '',"
	"  release TEXT,"
	"  error TEXT,"
	"  delivery INTEGER,"
	"  context_path TEXT,"                 /* uploaded context (deploy from a directory) */
	"  manifest TEXT,"
	"  images TEXT,"                       /* JSON {service: {image, digest}} */
	"  cancel_requested INTEGER NOT NULL DEFAULT 0,"
	"  created_ms INTEGER NOT NULL,"
	"  started_ms INTEGER,"
	"  ended_ms INTEGER);"
	"CREATE INDEX builds_app ON builds(app, created_ms);"
	"CREATE INDEX builds_status ON builds(status);"

	"CREATE TABLE build_logs ("
	"  build TEXT NOT NULL REFERENCES builds(id) ON DELETE CASCADE,"
	"  seq INTEGER NOT NULL,"
	"  chunk BLOB NOT NULL,"
	"  PRIMARY KEY (build, seq));"

	"CREATE TABLE releases ("
	"  id TEXT PRIMARY KEY,"
	"  app TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,"
	"  seq INTEGER NOT NULL,"              /* 1, 2, 3... per app */
	"  build TEXT,"
	"  spec TEXT NOT NULL,"                /* release spec JSON, environment left out */
	"  environment BLOB,"                  /* sealed JSON object */
	"  manifest TEXT,"
	"  description TEXT NOT NULL DEFAULT '',"
	"  status TEXT NOT NULL DEFAULT 'pending'"
	"    CHECK (status IN ('pending', 'active', 'failed', 'rolled back', 'superseded')),"
	"  created_ms INTEGER NOT NULL,"
	"  UNIQUE (app, seq));"

	"CREATE TABLE agents ("
	"  id TEXT PRIMARY KEY,"
	"  instance_id TEXT NOT NULL UNIQUE,"
	"  hostname TEXT NOT NULL DEFAULT '',"
	"  fleet TEXT NOT NULL DEFAULT 'default',"
	"  version TEXT NOT NULL DEFAULT '',"
	"  arch TEXT NOT NULL DEFAULT '',"
	"  protocol INTEGER NOT NULL DEFAULT 1,"
	"  token_hash BLOB NOT NULL,"          /* SHA-256 of the agent token */
	"  state TEXT NOT NULL DEFAULT 'live' CHECK (state IN ('live', 'lost', 'draining', 'gone')),"
	"  registered_ms INTEGER NOT NULL,"
	"  last_seen_ms INTEGER NOT NULL,"
	"  inventory TEXT NOT NULL DEFAULT '[]',"
	"  inventory_ms INTEGER);"

	/* What each agent should run, and what it reported running. */
	"CREATE TABLE agent_apps ("
	"  agent TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,"
	"  app TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,"
	"  generation INTEGER NOT NULL,"
	"  release TEXT,"
	"  applied_generation INTEGER NOT NULL DEFAULT 0,"
	"  state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'converged', 'failed')),"
	"  updated_ms INTEGER NOT NULL,"
	"  PRIMARY KEY (agent, app));"

	"CREATE TABLE rollouts ("
	"  id TEXT PRIMARY KEY,"
	"  app TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,"
	"  release TEXT NOT NULL,"
	"  previous_release TEXT,"
	"  generation INTEGER NOT NULL,"
	"  strategy TEXT NOT NULL,"
	"  trigger TEXT NOT NULL,"             /* build, promote, rollback, scale, env */
	"  state TEXT NOT NULL DEFAULT 'running'"
	"    CHECK (state IN ('running', 'succeeded', 'failed', 'rolled back', 'superseded')),"
	"  reason TEXT,"
	"  started_ms INTEGER NOT NULL,"
	"  ended_ms INTEGER);"
	"CREATE INDEX rollouts_app ON rollouts(app, started_ms);"

	"CREATE TABLE jobs ("
	"  id TEXT PRIMARY KEY,"
	"  agent TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,"
	"  app TEXT NOT NULL,"
	"  type TEXT NOT NULL CHECK (type IN ('deploy', 'remove', 'run')),"
	"  generation INTEGER NOT NULL,"
	"  release TEXT,"
	"  rollout TEXT,"
	"  state TEXT NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'leased', 'done')),"
	"  result TEXT CHECK (result IN ('succeeded', 'failed', 'superseded', 'expired',"
	"    'cancelled')),"
	"  reason TEXT,"
	"  output_tail TEXT,"
	"  attempt INTEGER NOT NULL DEFAULT 0,"
	"  lease_id TEXT,"
	"  lease_expires_ms INTEGER,"
	"  leases TEXT NOT NULL DEFAULT '',"   /* every lease id issued, space-separated */
	"  created_ms INTEGER NOT NULL,"
	"  done_ms INTEGER,"
	"  duration_ms INTEGER);"
	"CREATE INDEX jobs_agent_state ON jobs(agent, state);"
	"CREATE INDEX jobs_rollout ON jobs(rollout, state);"
	"CREATE INDEX jobs_lease ON jobs(state, lease_expires_ms);"

	/* Webhook deliveries, recorded before the 2xx; keyed for deduplication. */
	"CREATE TABLE deliveries ("
	"  id INTEGER PRIMARY KEY,"
	"  dedup_key TEXT NOT NULL UNIQUE,"    /* Idempotency-Key, else X-Gitlab-Event-UUID */
	"  app TEXT NOT NULL,"
	"  event TEXT NOT NULL,"
	"  summary TEXT NOT NULL,"             /* JSON: the fields the builder needs */
	"  status TEXT NOT NULL DEFAULT 'received'"
	"    CHECK (status IN ('received', 'ignored', 'stale', 'building', 'built', 'failed')),"
	"  note TEXT,"
	"  build TEXT,"
	"  received_ms INTEGER NOT NULL);"
	"CREATE INDEX deliveries_status ON deliveries(status);"

	"CREATE TABLE events ("
	"  id INTEGER PRIMARY KEY,"
	"  ts_ms INTEGER NOT NULL,"
	"  app TEXT,"
	"  kind TEXT NOT NULL,"
	"  message TEXT NOT NULL);"
	"CREATE INDEX events_app ON events(app, ts_ms);"

	"CREATE TABLE api_keys ("
	"  id TEXT PRIMARY KEY,"
	"  name TEXT NOT NULL,"
	"  key_hash BLOB NOT NULL UNIQUE,"     /* SHA-256 of the key */
	"  role TEXT NOT NULL CHECK (role IN ('admin', 'deploy', 'read')),"
	"  app TEXT,"                          /* NULL: every app */
	"  created_ms INTEGER NOT NULL,"
	"  last_used_ms INTEGER,"
	"  revoked_ms INTEGER);"

	/* The embedded log sink: bounded per app by the coordinator. */
	"CREATE TABLE logs ("
	"  id INTEGER PRIMARY KEY,"
	"  app TEXT NOT NULL,"
	"  service TEXT NOT NULL,"
	"  container TEXT NOT NULL,"
	"  release TEXT,"
	"  agent TEXT,"
	"  ts_ms INTEGER NOT NULL,"
	"  stream TEXT NOT NULL,"
	"  message TEXT NOT NULL);"
	"CREATE INDEX logs_app_ts ON logs(app, ts_ms);"
	"CREATE INDEX logs_app_id ON logs(app, id);",

	/* 2: one-off containers (`slipway run`, the manifest's release command):
	 * coordinator/runs.h. */
	"CREATE TABLE runs ("
	"  id TEXT PRIMARY KEY,"               /* run-<hex>: also the log stream's service */
	"  app TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,"
	"  service TEXT NOT NULL,"
	"  release TEXT NOT NULL,"
	"  command TEXT NOT NULL,"             /* JSON array of strings */
	"  kind TEXT NOT NULL CHECK (kind IN ('run', 'release')),"
	"  rollout TEXT,"                      /* release: the rollout waiting for it */
	"  agent TEXT,"
	"  job TEXT,"
	"  timeout_s INTEGER NOT NULL,"
	"  state TEXT NOT NULL DEFAULT 'queued'"
	"    CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),"
	"  exit_code INTEGER,"
	"  reason TEXT,"
	"  output_tail TEXT,"
	"  who TEXT NOT NULL DEFAULT '',"
	"  created_ms INTEGER NOT NULL,"
	"  started_ms INTEGER,"
	"  ended_ms INTEGER);"
	"CREATE INDEX runs_app ON runs(app, created_ms);"
	"CREATE INDEX runs_job ON runs(job);"
	"CREATE INDEX runs_rollout ON runs(rollout);",
};

#define MIGRATION_COUNT ((int)(sizeof migrations / sizeof migrations[0]))
#define STMT_CACHE_SIZE 512

struct store_op {
	store_fn fn;
	store_done_fn done;
	void *arg;
	int rc;
	/* store_run waits on these; NULL for queued operations. */
	pthread_cond_t *waiter;
	int *finished;
	struct err *err;
	struct store_op *next;
};

struct stmt_slot {
	const char *sql;
	sqlite3_stmt *stmt;
};

struct store {
	struct ev_loop *loop;
	sqlite3 *db;
	int schema_version;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	struct store_op *queue_head, *queue_tail;
	size_t queued;
	struct store_op *done_head, *done_tail;
	int stopping;
	ev_async async;
	size_t outstanding; /* submitted and not yet delivered: keeps the loop alive */
	struct stmt_slot stmts[STMT_CACHE_SIZE];
	/* The checkpointer: its own connection and thread (see checkpoint_thread). */
	sqlite3 *ckpt_db;
	pthread_t ckpt_thread;
	int ckpt_wanted;
	pthread_cond_t ckpt_wake;
};

static int exec_sql(sqlite3 *db, const char *sql, struct err *err)
{
	char *msg = NULL;
	if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
		err_set(err, "%s", msg ? msg : sqlite3_errmsg(db));
		sqlite3_free(msg);
		return -1;
	}
	return 0;
}

int store_exec(struct store_tx *tx, const char *sql)
{
	return exec_sql(tx->db, sql, &tx->err);
}

sqlite3_stmt *store_stmt(struct store_tx *tx, const char *sql)
{
	struct store *s = tx->store;
	size_t h = ((uintptr_t)sql >> 3) % STMT_CACHE_SIZE;
	for (size_t i = 0; i < STMT_CACHE_SIZE; i++) {
		struct stmt_slot *slot = &s->stmts[(h + i) % STMT_CACHE_SIZE];
		if (slot->sql == sql) {
			sqlite3_reset(slot->stmt);
			sqlite3_clear_bindings(slot->stmt);
			return slot->stmt;
		}
		if (!slot->sql) {
			sqlite3_stmt *st = NULL;
			if (sqlite3_prepare_v3(tx->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) !=
			    SQLITE_OK) {
				err_set(&tx->err, "prepare: %s", sqlite3_errmsg(tx->db));
				return NULL;
			}
			slot->sql = sql;
			slot->stmt = st;
			return st;
		}
	}
	/* Cache full (more distinct statements than slots): prepare a throwaway
	 * would leak, so this is a programming error worth failing loudly. */
	err_set(&tx->err, "statement cache full (%d)", STMT_CACHE_SIZE);
	return NULL;
}

int store_step(struct store_tx *tx, sqlite3_stmt *st)
{
	int rc = sqlite3_step(st);
	if (rc == SQLITE_ROW || rc == SQLITE_DONE)
		return rc;
	err_set(&tx->err, "%s", sqlite3_errmsg(tx->db));
	return -1;
}

const char *store_col_text(sqlite3_stmt *st, int col)
{
	const unsigned char *t = sqlite3_column_text(st, col);
	return t ? (const char *)t : "";
}

int store_bind_text(sqlite3_stmt *st, int i, const char *s)
{
	return s ? sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC) : sqlite3_bind_null(st, i);
}

int store_step_text(struct store_tx *tx, const char *sql, const char *text, sqlite3_stmt **out)
{
	return store_step_text2(tx, sql, text, NULL, out);
}

int store_step_text2(struct store_tx *tx, const char *sql, const char *text, const char *text2,
		     sqlite3_stmt **out)
{
	sqlite3_stmt *st = *out = store_stmt(tx, sql);
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, text, -1, SQLITE_STATIC);
	if (text2)
		sqlite3_bind_text(st, 2, text2, -1, SQLITE_STATIC);
	return store_step(tx, st);
}

int store_app_exists(struct store_tx *tx, const char *app)
{
	sqlite3_stmt *st;
	int rc = store_step_text(tx, "SELECT 1 FROM apps WHERE name = ?", app, &st);
	if (st)
		sqlite3_reset(st);
	return rc < 0 ? -1 : rc == SQLITE_ROW;
}

static int migrate(sqlite3 *db, int *version, struct err *err)
{
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL) != SQLITE_OK)
		return err_set(err, "user_version: %s", sqlite3_errmsg(db));
	int current = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : 0;
	sqlite3_finalize(st);
	if (current > MIGRATION_COUNT)
		return err_set(err, "database schema %d is newer than this coordinator (%d)",
			       current, MIGRATION_COUNT);
	for (int v = current; v < MIGRATION_COUNT; v++) {
		char bump[64];
		snprintf(bump, sizeof bump, "PRAGMA user_version = %d", v + 1);
		if (exec_sql(db, "BEGIN IMMEDIATE", err) < 0)
			return -1;
		if (exec_sql(db, migrations[v], err) < 0 || exec_sql(db, bump, err) < 0) {
			exec_sql(db, "ROLLBACK", NULL);
			return err_prefix(err, "migration %d", v + 1);
		}
		if (exec_sql(db, "COMMIT", err) < 0)
			return err_prefix(err, "migration %d", v + 1);
		log_info("store.migrated", "version=%d", v + 1);
	}
	*version = MIGRATION_COUNT;
	return 0;
}

/* Runs one operation inside the open transaction, isolated by a savepoint. */
static void run_op(struct store *s, struct store_op *op)
{
	struct store_tx tx = {.db = s->db, .store = s};
	tx.err.msg[0] = '\0';
	if (exec_sql(s->db, "SAVEPOINT op", &tx.err) < 0) {
		op->rc = -1;
	} else {
		op->rc = op->fn(&tx, op->arg) == 0 ? 0 : -1;
		/* A statement left mid-result would block the COMMIT. */
		for (size_t i = 0; i < STMT_CACHE_SIZE; i++)
			if (s->stmts[i].stmt)
				sqlite3_reset(s->stmts[i].stmt);
		if (op->rc < 0)
			exec_sql(s->db, "ROLLBACK TO op", NULL);
		exec_sql(s->db, "RELEASE op", NULL);
	}
	if (op->rc < 0) {
		if (op->err)
			*op->err = tx.err;
		else if (tx.err.msg[0])
			log_warn("store.op_failed", "error=\"%s\"", tx.err.msg);
	}
}

static void *store_thread(void *arg)
{
	struct store *s = arg;
	sigset_t all;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);

	pthread_mutex_lock(&s->lock);
	for (;;) {
		while (!s->queue_head && !s->stopping)
			pthread_cond_wait(&s->wake, &s->lock);
		if (!s->queue_head && s->stopping)
			break;
		/* Take a batch. */
		struct store_op *batch = s->queue_head, *last = batch;
		size_t n = 1;
		while (last->next && n < STORE_BATCH_MAX) {
			last = last->next;
			n++;
		}
		s->queue_head = last->next;
		if (!s->queue_head)
			s->queue_tail = NULL;
		s->queued -= n;
		last->next = NULL;
		pthread_mutex_unlock(&s->lock);

		struct err err;
		int begun = exec_sql(s->db, "BEGIN IMMEDIATE", &err) == 0;
		for (struct store_op *op = batch; op; op = op->next) {
			if (begun) {
				run_op(s, op);
			} else {
				op->rc = -1;
				if (op->err)
					*op->err = err;
			}
		}
		if (begun && exec_sql(s->db, "COMMIT", &err) < 0) {
			log_error("store.commit_failed", "ops=%zu error=\"%s\"", n, err.msg);
			exec_sql(s->db, "ROLLBACK", NULL);
			for (struct store_op *op = batch; op; op = op->next) {
				op->rc = -1;
				if (op->err)
					*op->err = err;
			}
		}

		pthread_mutex_lock(&s->lock);
		struct store_op *next;
		int deliver = 0;
		for (struct store_op *op = batch; op; op = next) {
			next = op->next;
			op->next = NULL;
			if (op->waiter) {
				*op->finished = 1;
				pthread_cond_broadcast(op->waiter);
				continue;
			}
			if (s->done_tail)
				s->done_tail->next = op;
			else
				s->done_head = op;
			s->done_tail = op;
			deliver = 1;
		}
		if (deliver)
			ev_async_send(s->loop, &s->async);
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

static void deliver_done(struct store *s)
{
	pthread_mutex_lock(&s->lock);
	struct store_op *list = s->done_head;
	s->done_head = s->done_tail = NULL;
	pthread_mutex_unlock(&s->lock);
	while (list) {
		struct store_op *op = list;
		list = op->next;
		if (s->outstanding > 0 && --s->outstanding == 0)
			ev_unref(s->loop); /* idle again: stop holding the loop */
		if (op->done)
			op->done(op->rc, op->arg);
		free(op);
	}
}

static void async_cb(struct ev_loop *loop, ev_async *w, int revents)
{
	(void)loop;
	(void)revents;
	deliver_done(w->data);
}

/*
 * SQLite's automatic checkpoint runs inside the COMMIT that crosses its page
 * threshold, so one unlucky batch of webhook deliveries waited 70-160 ms for
 * it. The writer therefore never checkpoints: its WAL hook wakes this thread,
 * which copies the WAL back into the database from a second connection
 * (PASSIVE: it never blocks the writer) and pays that fsync off the write
 * path. The WAL restarts from its beginning once a checkpoint has caught up.
 */
#define CHECKPOINT_PAGES 1000

static int wal_hook(void *arg, sqlite3 *db, const char *name, int pages)
{
	(void)db;
	(void)name;
	struct store *s = arg;
	if (pages >= CHECKPOINT_PAGES) {
		pthread_mutex_lock(&s->lock);
		s->ckpt_wanted = 1;
		pthread_cond_signal(&s->ckpt_wake);
		pthread_mutex_unlock(&s->lock);
	}
	return SQLITE_OK;
}

static void *checkpoint_thread(void *arg)
{
	struct store *s = arg;
	sigset_t all;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	pthread_mutex_lock(&s->lock);
	for (;;) {
		while (!s->ckpt_wanted && !s->stopping)
			pthread_cond_wait(&s->ckpt_wake, &s->lock);
		if (s->stopping)
			break;
		s->ckpt_wanted = 0;
		pthread_mutex_unlock(&s->lock);
		int wal_pages = 0, copied = 0;
		int rc = sqlite3_wal_checkpoint_v2(s->ckpt_db, NULL, SQLITE_CHECKPOINT_PASSIVE,
						   &wal_pages, &copied);
		if (rc != SQLITE_OK && rc != SQLITE_BUSY)
			log_warn("store.checkpoint_failed", "error=\"%s\"", sqlite3_errmsg(s->ckpt_db));
		pthread_mutex_lock(&s->lock);
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

struct store *store_open(struct ev_loop *loop, const char *path, struct err *err)
{
	struct store *s = calloc(1, sizeof *s);
	if (!s) {
		err_set(err, "out of memory");
		return NULL;
	}
	s->loop = loop;
	int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
	if (sqlite3_open_v2(path, &s->db, flags, NULL) != SQLITE_OK) {
		err_set(err, "open %s: %s", path, s->db ? sqlite3_errmsg(s->db) : "out of memory");
		goto fail;
	}
	sqlite3_busy_timeout(s->db, 5000);
	if (exec_sql(s->db,
		     "PRAGMA journal_mode = WAL;"
		     "PRAGMA synchronous = FULL;"
		     "PRAGMA foreign_keys = ON;"
		     "PRAGMA temp_store = MEMORY;"
		     "PRAGMA wal_autocheckpoint = 0;",
		     err) < 0 ||
	    migrate(s->db, &s->schema_version, err) < 0) {
		err_prefix(err, "%s", path);
		goto fail;
	}
	if (sqlite3_open_v2(path, &s->ckpt_db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
	    SQLITE_OK) {
		err_set(err, "open %s for checkpoints: %s", path,
			s->ckpt_db ? sqlite3_errmsg(s->ckpt_db) : "out of memory");
		goto fail;
	}
	sqlite3_busy_timeout(s->ckpt_db, 5000);
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->wake, NULL);
	pthread_cond_init(&s->ckpt_wake, NULL);
	sqlite3_wal_hook(s->db, wal_hook, s);
	ev_async_init(&s->async, async_cb);
	s->async.data = s;
	ev_async_start(loop, &s->async);
	ev_unref(loop); /* an idle store does not keep the loop running */
	if (pthread_create(&s->ckpt_thread, NULL, checkpoint_thread, s) != 0) {
		err_set(err, "cannot start the checkpoint thread");
		ev_ref(loop);
		ev_async_stop(loop, &s->async);
		goto fail;
	}
	if (pthread_create(&s->thread, NULL, store_thread, s) != 0) {
		err_set(err, "cannot start the store thread");
		pthread_mutex_lock(&s->lock);
		s->stopping = 1;
		pthread_cond_signal(&s->ckpt_wake);
		pthread_mutex_unlock(&s->lock);
		pthread_join(s->ckpt_thread, NULL);
		ev_ref(loop);
		ev_async_stop(loop, &s->async);
		goto fail;
	}
	return s;
fail:
	if (s->ckpt_db)
		sqlite3_close(s->ckpt_db);
	if (s->db)
		sqlite3_close(s->db);
	free(s);
	return NULL;
}

static int enqueue(struct store *s, struct store_op *op)
{
	pthread_mutex_lock(&s->lock);
	if (s->stopping || s->queued >= STORE_QUEUE_MAX) {
		pthread_mutex_unlock(&s->lock);
		return -1;
	}
	if (s->queue_tail)
		s->queue_tail->next = op;
	else
		s->queue_head = op;
	s->queue_tail = op;
	s->queued++;
	pthread_cond_signal(&s->wake);
	pthread_mutex_unlock(&s->lock);
	return 0;
}

int store_submit(struct store *s, store_fn fn, store_done_fn done, void *arg)
{
	struct store_op *op = calloc(1, sizeof *op);
	if (!op)
		return -1;
	op->fn = fn;
	op->done = done;
	op->arg = arg;
	if (enqueue(s, op) < 0) {
		free(op);
		return -1;
	}
	if (s->outstanding++ == 0)
		ev_ref(s->loop); /* hold the loop while operations are outstanding */
	return 0;
}

int store_run(struct store *s, store_fn fn, void *arg, struct err *err)
{
	pthread_cond_t cond;
	pthread_cond_init(&cond, NULL);
	int finished = 0;
	struct store_op op = {.fn = fn, .arg = arg, .waiter = &cond, .finished = &finished,
			      .err = err};
	if (enqueue(s, &op) < 0) {
		pthread_cond_destroy(&cond);
		return err_set(err, "store is closing or its queue is full");
	}
	pthread_mutex_lock(&s->lock);
	while (!finished)
		pthread_cond_wait(&cond, &s->lock);
	pthread_mutex_unlock(&s->lock);
	pthread_cond_destroy(&cond);
	return op.rc;
}

void store_close(struct store *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&s->lock);
	s->stopping = 1;
	pthread_cond_signal(&s->wake);
	pthread_cond_signal(&s->ckpt_wake);
	pthread_mutex_unlock(&s->lock);
	pthread_join(s->thread, NULL);
	pthread_join(s->ckpt_thread, NULL);
	deliver_done(s);
	ev_ref(s->loop); /* balances the ev_unref in store_open before stopping */
	ev_async_stop(s->loop, &s->async);
	for (size_t i = 0; i < STMT_CACHE_SIZE; i++)
		if (s->stmts[i].stmt)
			sqlite3_finalize(s->stmts[i].stmt);
	/* Leave a short WAL behind: the next start need not replay it. */
	sqlite3_wal_checkpoint_v2(s->ckpt_db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
	sqlite3_close(s->ckpt_db);
	sqlite3_close(s->db);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->wake);
	pthread_cond_destroy(&s->ckpt_wake);
	free(s);
}

int store_schema_version(const struct store *s)
{
	return s->schema_version;
}
