#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ev.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "journal.h"
#include "json.h"
#include "log.h"

struct fixture {
	char dir[64];
	char path[128];
	struct ev_loop *loop;
	/* what the replay saw */
	int replayed;
	int64_t values[256];
	/* what the snapshot callback says the state is */
	int64_t state_sum;
	int64_t state_count;
	int snapshots;
	int done_order[256];
	int done_n;
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof *f);
	snprintf(f->dir, sizeof f->dir, "/tmp/slipway-journal-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->path, sizeof f->path, "%s/%s", f->dir, JOURNAL_FILE);
	f->loop = ev_loop_new(EVFLAG_AUTO);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	unlink(f->path);
	char tmp[160];
	snprintf(tmp, sizeof tmp, "%s.tmp", f->path);
	unlink(tmp);
	rmdir(f->dir);
	ev_loop_destroy(f->loop);
	free(f);
	return 0;
}

static int on_record(const cJSON *rec, void *arg, struct err *err)
{
	(void)err;
	struct fixture *f = arg;
	const cJSON *n = cJSON_GetObjectItemCaseSensitive(rec, "n");
	const cJSON *sum = cJSON_GetObjectItemCaseSensitive(rec, "sum");
	if (cJSON_IsNumber(sum)) {
		/* a snapshot record */
		f->state_sum = (int64_t)sum->valuedouble;
		f->state_count = (int64_t)cJSON_GetObjectItemCaseSensitive(rec, "count")->valuedouble;
	}
	if (cJSON_IsNumber(n) && f->replayed < 256)
		f->values[f->replayed] = (int64_t)n->valuedouble;
	f->replayed++;
	return 0;
}

static int on_snapshot(cJSON *out, void *arg)
{
	struct fixture *f = arg;
	f->snapshots++;
	cJSON *r = cJSON_CreateObject();
	cJSON_AddNumberToObject(r, "sum", (double)f->state_sum);
	cJSON_AddNumberToObject(r, "count", (double)f->state_count);
	cJSON_AddItemToArray(out, r);
	return 0;
}

struct done_arg {
	struct fixture *f;
	int index;
};

static void on_done(void *arg)
{
	struct done_arg *d = arg;
	d->f->done_order[d->f->done_n++] = d->index;
	free(d);
}

static struct journal *open_j(struct fixture *f, size_t max_bytes)
{
	struct err err;
	f->replayed = 0;
	struct journal_opts o = {.dir = f->dir, .max_bytes = max_bytes, .replay = on_record,
				 .snapshot = max_bytes ? on_snapshot : NULL, .arg = f};
	struct journal *j = journal_open(f->loop, &o, &err);
	if (!j)
		fail_msg("journal_open: %s", err.msg);
	return j;
}

static void append_n(struct fixture *f, struct journal *j, int n)
{
	struct err err;
	cJSON *r = cJSON_CreateObject();
	cJSON_AddNumberToObject(r, "n", n);
	cJSON_AddStringToObject(r, "pad", "0123456789012345678901234567890123456789");
	struct done_arg *d = malloc(sizeof *d);
	d->f = f;
	d->index = n;
	f->state_sum += n;
	f->state_count++;
	assert_int_equal(journal_append(j, r, on_done, d, &err), 0);
	cJSON_Delete(r);
}

static void run_until_idle(struct fixture *f, struct journal *j)
{
	for (int i = 0; i < 10000 && journal_pending(j) > 0; i++)
		ev_run(f->loop, EVRUN_ONCE);
	assert_int_equal(journal_pending(j), 0);
}

static void test_append_replay_order(void **state)
{
	struct fixture *f = *state;
	struct journal *j = open_j(f, 0);
	for (int i = 0; i < 100; i++)
		append_n(f, j, i);
	run_until_idle(f, j);
	/* Callbacks in append order, every one after its write. */
	assert_int_equal(f->done_n, 100);
	for (int i = 0; i < 100; i++)
		assert_int_equal(f->done_order[i], i);
	journal_free(j);
	j = open_j(f, 0);
	assert_int_equal(f->replayed, 100);
	for (int i = 0; i < 100; i++)
		assert_int_equal(f->values[i], i);
	journal_free(j);
	struct stat st;
	assert_int_equal(stat(f->path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
}

static void write_raw(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_APPEND | O_CREAT, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
}

static void test_torn_tail_without_newline(void **state)
{
	struct fixture *f = *state;
	write_raw(f->path, "{\"n\":1}\n{\"n\":2}\n{\"n\":3,\"pa");
	struct journal *j = open_j(f, 0);
	assert_int_equal(f->replayed, 2);
	/* The torn bytes are gone: a new record starts on a clean line. */
	assert_int_equal(journal_size(j), 16);
	append_n(f, j, 4);
	run_until_idle(f, j);
	journal_free(j);
	j = open_j(f, 0);
	assert_int_equal(f->replayed, 3);
	assert_int_equal(f->values[2], 4);
	journal_free(j);
}

static void test_torn_tail_invalid_last_line(void **state)
{
	struct fixture *f = *state;
	/* A crash can leave a complete-looking but corrupt last line. */
	write_raw(f->path, "{\"n\":1}\n{\"n\":2\n");
	struct journal *j = open_j(f, 0);
	assert_int_equal(f->replayed, 1);
	assert_int_equal(journal_size(j), 8);
	journal_free(j);
}

static void test_bad_middle_line_skipped(void **state)
{
	struct fixture *f = *state;
	write_raw(f->path, "{\"n\":1}\nnot json\n[1,2]\n{\"n\":2}\n");
	struct journal *j = open_j(f, 0);
	assert_int_equal(f->replayed, 2);
	assert_int_equal(f->values[0], 1);
	assert_int_equal(f->values[1], 2);
	/* Nothing cut: only a torn tail is. */
	struct stat st;
	assert_int_equal(stat(f->path, &st), 0);
	assert_int_equal((size_t)st.st_size, strlen("{\"n\":1}\nnot json\n[1,2]\n{\"n\":2}\n"));
	journal_free(j);
}

static void test_compaction(void **state)
{
	struct fixture *f = *state;
	struct journal *j = open_j(f, 2048);
	for (int round = 0; round < 20; round++) {
		for (int i = 0; i < 10; i++)
			append_n(f, j, round * 10 + i);
		run_until_idle(f, j);
		/* Let a compaction that was started finish too. */
		for (int k = 0; k < 100; k++)
			ev_run(f->loop, EVRUN_NOWAIT);
	}
	for (int k = 0; k < 1000 && journal_compactions(j) == 0; k++)
		ev_run(f->loop, EVRUN_ONCE);
	assert_true(journal_compactions(j) >= 1);
	assert_true(f->snapshots >= 1);
	/* The file stays small: a snapshot plus what came after it. */
	assert_true(journal_size(j) < 2048 + 10 * 80);
	int64_t sum = f->state_sum, count = f->state_count;
	assert_int_equal(count, 200);
	journal_free(j);
	/* Replay: the snapshot, then the records written after it add up. */
	f->state_sum = f->state_count = 0;
	int64_t tail_sum = 0, tail_count = 0;
	j = open_j(f, 0);
	for (int i = 1; i < f->replayed; i++) {
		tail_sum += f->values[i];
		tail_count++;
	}
	assert_int_equal(f->state_sum + tail_sum, sum);
	assert_int_equal(f->state_count + tail_count, count);
	journal_free(j);
	char tmp[160];
	snprintf(tmp, sizeof tmp, "%s.tmp", f->path);
	assert_int_equal(access(tmp, F_OK), -1);
}

static void test_leftover_tmp_ignored(void **state)
{
	struct fixture *f = *state;
	write_raw(f->path, "{\"n\":7}\n");
	char tmp[160];
	snprintf(tmp, sizeof tmp, "%s.tmp", f->path);
	write_raw(tmp, "{\"n\":99}\n{\"n\":");
	struct journal *j = open_j(f, 0);
	assert_int_equal(f->replayed, 1);
	assert_int_equal(f->values[0], 7);
	assert_int_equal(access(tmp, F_OK), -1);
	journal_free(j);
}

static void test_free_writes_pending(void **state)
{
	struct fixture *f = *state;
	struct journal *j = open_j(f, 0);
	for (int i = 0; i < 5; i++)
		append_n(f, j, i);
	/* No loop turn: journal_free writes them and runs the callbacks. */
	journal_free(j);
	assert_int_equal(f->done_n, 5);
	j = open_j(f, 0);
	assert_int_equal(f->replayed, 5);
	journal_free(j);
}

static void test_refusals(void **state)
{
	struct fixture *f = *state;
	struct journal *j = open_j(f, 0);
	struct err err;
	cJSON *arr = cJSON_CreateArray();
	assert_int_equal(journal_append(j, arr, NULL, NULL, &err), -1);
	cJSON_Delete(arr);
	cJSON *big = cJSON_CreateObject();
	char *s = malloc(JOURNAL_RECORD_MAX + 1);
	memset(s, 'x', JOURNAL_RECORD_MAX);
	s[JOURNAL_RECORD_MAX] = '\0';
	cJSON_AddStringToObject(big, "x", s);
	free(s);
	assert_int_equal(journal_append(j, big, NULL, NULL, &err), -1);
	assert_non_null(strstr(err.msg, "journal"));
	cJSON_Delete(big);
	assert_int_equal(journal_pending(j), 0);
	journal_free(j);
}

static void test_write_file(void **state)
{
	struct fixture *f = *state;
	char path[160];
	snprintf(path, sizeof path, "%s/identity.json", f->dir);
	struct err err;
	assert_int_equal(journal_write_file(path, "{\"a\":1}", 7, 0600, &err), 0);
	assert_int_equal(journal_write_file(path, "{\"a\":2}", 7, 0600, &err), 0);
	char buf[16] = {0};
	int fd = open(path, O_RDONLY);
	assert_int_equal(read(fd, buf, sizeof buf), 7);
	close(fd);
	assert_string_equal(buf, "{\"a\":2}");
	struct stat st;
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	unlink(path);
	assert_int_equal(journal_write_file("/nonexistent-dir/x", "a", 1, 0600, &err), -1);
}

int main(void)
{
	log_init("test_journal", LOG_LEVEL_ERROR, 0);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_append_replay_order, setup, teardown),
		cmocka_unit_test_setup_teardown(test_torn_tail_without_newline, setup, teardown),
		cmocka_unit_test_setup_teardown(test_torn_tail_invalid_last_line, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_middle_line_skipped, setup, teardown),
		cmocka_unit_test_setup_teardown(test_compaction, setup, teardown),
		cmocka_unit_test_setup_teardown(test_leftover_tmp_ignored, setup, teardown),
		cmocka_unit_test_setup_teardown(test_free_writes_pending, setup, teardown),
		cmocka_unit_test_setup_teardown(test_refusals, setup, teardown),
		cmocka_unit_test_setup_teardown(test_write_file, setup, teardown),
	};
	return cmocka_run_group_tests_name("journal", tests, NULL, NULL);
}
