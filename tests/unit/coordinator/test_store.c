#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "store.h"

static char dir[64];
static char dbpath[128];

static int setup(void **state)
{
	(void)state;
	snprintf(dir, sizeof dir, "/tmp/slipway-store-XXXXXX");
	if (!mkdtemp(dir))
		return -1;
	snprintf(dbpath, sizeof dbpath, "%s/store.db", dir);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	return system(cmd) == 0 ? 0 : -1;
}

static int insert_event(struct store_tx *tx, void *arg)
{
	sqlite3_stmt *st = store_stmt(tx, "INSERT INTO events(ts_ms, kind, message) VALUES (?, 'test', ?)");
	if (!st)
		return -1;
	sqlite3_bind_int64(st, 1, 1);
	sqlite3_bind_text(st, 2, arg, -1, SQLITE_STATIC);
	return store_step(tx, st) == SQLITE_DONE ? 0 : -1;
}

/* Inserts a row, then fails: the savepoint must undo the insert only. */
static int insert_then_fail(struct store_tx *tx, void *arg)
{
	if (insert_event(tx, arg) < 0)
		return -1;
	err_set(&tx->err, "deliberate");
	return -1;
}

static int count_events(struct store_tx *tx, void *arg)
{
	sqlite3_stmt *st = store_stmt(tx, "SELECT count(*) FROM events");
	if (!st || store_step(tx, st) != SQLITE_ROW)
		return -1;
	*(int *)arg = sqlite3_column_int(st, 0);
	return 0;
}

struct result {
	int calls;
	int failures;
	int order[64];
};
static struct result results;

static void record_done(int rc, void *arg)
{
	results.order[results.calls++] = (int)(intptr_t)arg;
	if (rc < 0)
		results.failures++;
}

static int insert_numbered(struct store_tx *tx, void *arg)
{
	return insert_event(tx, (intptr_t)arg % 5 == 3 ? "bad" : "good") == 0 &&
			       (intptr_t)arg % 5 != 3
		       ? 0
		       : -1;
}

static void test_migrates_and_persists(void **state)
{
	(void)state;
	struct ev_loop *loop = ev_loop_new(0);
	struct err err;
	struct store *s = store_open(loop, dbpath, &err);
	assert_non_null(s);
	assert_int_equal(store_schema_version(s), 2); /* 2: runs */
	assert_int_equal(store_run(s, insert_event, "one", &err), 0);
	store_close(s);

	s = store_open(loop, dbpath, &err);
	assert_non_null(s);
	int n = -1;
	assert_int_equal(store_run(s, count_events, &n, &err), 0);
	assert_int_equal(n, 1);
	store_close(s);
	ev_loop_destroy(loop);
}

static void test_failed_op_rolls_back_only_itself(void **state)
{
	(void)state;
	struct ev_loop *loop = ev_loop_new(0);
	struct err err;
	struct store *s = store_open(loop, dbpath, &err);
	assert_non_null(s);
	memset(&results, 0, sizeof results);
	for (intptr_t i = 0; i < 20; i++)
		assert_int_equal(store_submit(s, insert_numbered, record_done, (void *)i), 0);
	ev_run(loop, 0); /* returns once every done callback ran */
	assert_int_equal(results.calls, 20);
	assert_int_equal(results.failures, 4);
	for (int i = 0; i < 20; i++)
		assert_int_equal(results.order[i], i);
	int n = -1;
	assert_int_equal(store_run(s, count_events, &n, &err), 0);
	assert_int_equal(n, 16);

	assert_int_equal(store_run(s, insert_then_fail, "x", &err), -1);
	assert_string_equal(err.msg, "deliberate");
	assert_int_equal(store_run(s, count_events, &n, &err), 0);
	assert_int_equal(n, 16);
	store_close(s);
	ev_loop_destroy(loop);
}

static int check_pragmas(struct store_tx *tx, void *arg)
{
	(void)arg;
	sqlite3_stmt *st = store_stmt(tx, "PRAGMA journal_mode");
	if (!st || store_step(tx, st) != SQLITE_ROW)
		return -1;
	if (strcmp(store_col_text(st, 0), "wal") != 0)
		return err_set(&tx->err, "journal_mode %s", store_col_text(st, 0));
	st = store_stmt(tx, "PRAGMA foreign_keys");
	if (!st || store_step(tx, st) != SQLITE_ROW || sqlite3_column_int(st, 0) != 1)
		return err_set(&tx->err, "foreign keys off");
	return 0;
}

static void test_wal_and_foreign_keys(void **state)
{
	(void)state;
	struct ev_loop *loop = ev_loop_new(0);
	struct err err;
	struct store *s = store_open(loop, dbpath, &err);
	assert_non_null(s);
	assert_int_equal(store_run(s, check_pragmas, NULL, &err), 0);
	store_close(s);
	ev_loop_destroy(loop);
}

static void test_refuses_newer_schema(void **state)
{
	(void)state;
	sqlite3 *db;
	assert_int_equal(sqlite3_open(dbpath, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, "PRAGMA user_version = 999", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);
	struct ev_loop *loop = ev_loop_new(0);
	struct err err;
	assert_null(store_open(loop, dbpath, &err));
	assert_non_null(strstr(err.msg, "newer than this coordinator"));
	ev_loop_destroy(loop);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_migrates_and_persists, setup, teardown),
		cmocka_unit_test_setup_teardown(test_failed_op_rolls_back_only_itself, setup, teardown),
		cmocka_unit_test_setup_teardown(test_wal_and_foreign_keys, setup, teardown),
		cmocka_unit_test_setup_teardown(test_refuses_newer_schema, setup, teardown),
	};
	return cmocka_run_group_tests_name("store", tests, NULL, NULL);
}
