/*
 * checkpoint: marks survive a reopen, writes are coalesced and atomic,
 * durability is reported per change, a damaged file costs duplicates (not a
 * refusal to start), and a restart resumes with exactly the unconsumed lines.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ev.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "log.h"
#include "worker.h"

struct fix {
	char dir[64];
	char path[128];
	struct ev_loop *loop;
	struct worker_pool *pool;
	int durable_calls;
};

static void on_durable(void *arg)
{
	struct fix *f = arg;
	f->durable_calls++;
}

static int setup(void **state)
{
	struct fix *f = calloc(1, sizeof *f);
	snprintf(f->dir, sizeof f->dir, "/tmp/slipway-ckpt-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->path, sizeof f->path, "%s/%s", f->dir, CHECKPOINT_FILE);
	f->loop = ev_loop_new(EVFLAG_AUTO);
	f->pool = worker_pool_new(f->loop, 1, 64, NULL);
	log_init("test", LOG_LEVEL_ERROR, 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fix *f = *state;
	worker_pool_free(f->pool);
	ev_loop_destroy(f->loop);
	unlink(f->path);
	char tmp[160];
	snprintf(tmp, sizeof tmp, "%s.tmp", f->path);
	unlink(tmp);
	rmdir(f->dir);
	free(f);
	return 0;
}

static void run_until_durable(struct fix *f, struct checkpoint_store *cs, uint64_t gen)
{
	for (int i = 0; i < 1000 && checkpoint_durable(cs) < gen; i++)
		ev_run(f->loop, EVRUN_ONCE);
	assert_true(checkpoint_durable(cs) >= gen);
}

static const char *ID_A = "3f9a1c2b4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
static const char *ID_B = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

static void test_roundtrip(void **state)
{
	struct fix *f = *state;
	struct checkpoint_store *cs = checkpoint_open(f->path, f->pool, on_durable, f, NULL);
	assert_non_null(cs);
	assert_int_equal(checkpoint_count(cs), 0);
	/* Nanosecond timestamps above 2^53 must survive exactly. */
	struct logpos_mark a = {1795600000123456789LL, 3}, b = {0, 0}, got;
	uint64_t g1 = checkpoint_set(cs, ID_A, &a);
	uint64_t g2 = checkpoint_set(cs, ID_B, &b);
	assert_true(g2 > g1);
	assert_true(checkpoint_durable(cs) < g2);
	run_until_durable(f, cs, g2);
	assert_true(f->durable_calls >= 1);
	checkpoint_free(cs);

	cs = checkpoint_open(f->path, f->pool, NULL, NULL, NULL);
	assert_int_equal(checkpoint_count(cs), 2);
	assert_int_equal(checkpoint_get(cs, ID_A, &got), 1);
	assert_int_equal(got.since_ns, 1795600000123456789LL);
	assert_int_equal(got.skip, 3);
	assert_int_equal(checkpoint_get(cs, ID_B, &got), 1);
	assert_int_equal(checkpoint_get(cs, "nope", &got), 0);
	/* The same mark again is not a change. */
	uint64_t g = checkpoint_set(cs, ID_A, &a);
	assert_int_equal(checkpoint_writes(cs), 0);
	assert_int_equal(g, 0);
	checkpoint_forget(cs, ID_B);
	assert_int_equal(checkpoint_count(cs), 1);
	run_until_durable(f, cs, 1);
	checkpoint_free(cs);
	cs = checkpoint_open(f->path, f->pool, NULL, NULL, NULL);
	assert_int_equal(checkpoint_count(cs), 1);
	assert_int_equal(checkpoint_get(cs, ID_B, &got), 0);
	checkpoint_free(cs);
	/* The file is private. */
	struct stat st;
	assert_int_equal(stat(f->path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
}

/* Changes made while a write runs go out together in the next one. */
static void test_coalesced(void **state)
{
	struct fix *f = *state;
	struct checkpoint_store *cs = checkpoint_open(f->path, f->pool, NULL, NULL, NULL);
	uint64_t last = 0;
	for (int i = 1; i <= 500; i++) {
		struct logpos_mark m = {1000LL * i, (uint64_t)i};
		last = checkpoint_set(cs, ID_A, &m);
	}
	run_until_durable(f, cs, last);
	/* One write started with the first change, one more carries the other 499. */
	assert_true(checkpoint_writes(cs) <= 2);
	checkpoint_free(cs);
	cs = checkpoint_open(f->path, f->pool, NULL, NULL, NULL);
	struct logpos_mark got;
	assert_int_equal(checkpoint_get(cs, ID_A, &got), 1);
	assert_int_equal(got.since_ns, 500000);
	assert_int_equal(got.skip, 500);
	checkpoint_free(cs);
}

/* checkpoint_free writes what is still unwritten (shutdown). */
static void test_written_at_free(void **state)
{
	struct fix *f = *state;
	struct checkpoint_store *cs = checkpoint_open(f->path, NULL, NULL, NULL, NULL);
	struct logpos_mark m = {42, 7}, got;
	checkpoint_set(cs, ID_A, &m);
	checkpoint_free(cs);
	cs = checkpoint_open(f->path, NULL, NULL, NULL, NULL);
	assert_int_equal(checkpoint_get(cs, ID_A, &got), 1);
	assert_int_equal(got.skip, 7);
	checkpoint_free(cs);
}

static void test_damaged_file(void **state)
{
	struct fix *f = *state;
	FILE *fp = fopen(f->path, "w");
	fputs("{\"version\":1,\"containers\":{\"abc\":{\"since_ns\":\"12", fp);
	fclose(fp);
	struct checkpoint_store *cs = checkpoint_open(f->path, f->pool, NULL, NULL, NULL);
	assert_non_null(cs);
	assert_int_equal(checkpoint_count(cs), 0);
	checkpoint_free(cs);
	/* A bad entry is skipped, the good one kept. */
	fp = fopen(f->path, "w");
	fprintf(fp, "{\"version\":1,\"containers\":{\"bad id!\":{\"since_ns\":\"1\",\"skip\":1},"
		    "\"%s\":{\"since_ns\":\"5\",\"skip\":2},\"x\":{\"since_ns\":\"-4\",\"skip\":1}}}",
		ID_B);
	fclose(fp);
	cs = checkpoint_open(f->path, f->pool, NULL, NULL, NULL);
	assert_int_equal(checkpoint_count(cs), 1);
	struct logpos_mark got;
	assert_int_equal(checkpoint_get(cs, ID_B, &got), 1);
	assert_int_equal(got.since_ns, 5);
	checkpoint_free(cs);
}

/* A "crash" after some batches: the stream read again from the persisted
 * mark yields exactly the lines after the last accepted batch. */
static void test_resume_skips_duplicates(void **state)
{
	struct fix *f = *state;
	enum { N = 2000 };
	int64_t ts[N];
	for (int i = 0; i < N; i++)
		ts[i] = 1795600000000000000LL + (int64_t)(i / 4) * 1000; /* 4 lines per timestamp */
	struct checkpoint_store *cs = checkpoint_open(f->path, f->pool, NULL, NULL, NULL);
	struct logpos pos;
	logpos_init(&pos);
	/* Batches of 333 lines accepted; the agent dies after line 1334 was read
	 * but only 1332 (4 batches) were accepted. */
	uint64_t gen = 0;
	for (int i = 0; i < 1334; i++) {
		logpos_consume(&pos, ts[i]);
		if ((i + 1) % 333 == 0) {
			struct logpos_mark m = logpos_mark(&pos, NULL);
			gen = checkpoint_set(cs, ID_A, &m);
		}
	}
	run_until_durable(f, cs, gen);
	checkpoint_free(cs);
	cs = checkpoint_open(f->path, f->pool, NULL, NULL, NULL);
	struct logpos_mark m;
	assert_int_equal(checkpoint_get(cs, ID_A, &m), 1);
	/* Docker answers since= with every line at or after it. */
	int first = -1;
	for (int i = 0; i < N; i++) {
		if (ts[i] >= m.since_ns) {
			first = i;
			break;
		}
	}
	assert_true(first >= 0);
	int next = first + (int)m.skip;
	assert_int_equal(next, 1332);
	checkpoint_free(cs);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_roundtrip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_coalesced, setup, teardown),
		cmocka_unit_test_setup_teardown(test_written_at_free, setup, teardown),
		cmocka_unit_test_setup_teardown(test_damaged_file, setup, teardown),
		cmocka_unit_test_setup_teardown(test_resume_skips_duplicates, setup, teardown),
	};
	return cmocka_run_group_tests_name("checkpoint", tests, NULL, NULL);
}
