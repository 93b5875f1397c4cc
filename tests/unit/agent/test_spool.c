/*
 * spool: batches written durably (gzip files), read back identical, handed
 * out oldest first and one per stream, found again after a restart, and
 * dropped oldest first (counted) when over the cap.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "spool.h"
#include "worker.h"

struct fix {
	char dir[64];
	struct ev_loop *loop;
	struct worker_pool *pool;
	int written_ok, written_fail;
	uint64_t dropped_files, dropped_events;
	/* last read */
	int read_done, read_ok;
	struct logbatch *got;
	char *header;
};

static int setup(void **state)
{
	struct fix *f = calloc(1, sizeof *f);
	snprintf(f->dir, sizeof f->dir, "/tmp/slipway-spool-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	f->loop = ev_loop_new(EVFLAG_AUTO);
	f->pool = worker_pool_new(f->loop, 1, 256, NULL);
	log_init("test", LOG_LEVEL_ERROR, 0);
	*state = f;
	return 0;
}

static void rm_rf(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	char p[512];
	while (d && (de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
		unlink(p);
	}
	if (d)
		closedir(d);
	rmdir(dir);
}

static int teardown(void **state)
{
	struct fix *f = *state;
	worker_pool_free(f->pool);
	ev_loop_destroy(f->loop);
	rm_rf(f->dir);
	free(f->header);
	free(f);
	return 0;
}

static void on_dropped(uint64_t files, uint64_t events, void *arg)
{
	struct fix *f = arg;
	f->dropped_files += files;
	f->dropped_events += events;
}

static void on_written(int ok, uint64_t seq, struct logbatch *failed, void *arg)
{
	(void)seq;
	(void)failed;
	struct fix *f = arg;
	if (ok)
		f->written_ok++;
	else
		f->written_fail++;
}

static void on_read(int ok, uint64_t seq, struct logbatch *b, const char *header,
		    const char *error, void *arg)
{
	(void)seq;
	(void)error;
	struct fix *f = arg;
	f->read_done = 1;
	f->read_ok = ok;
	f->got = b;
	free(f->header);
	f->header = header ? strdup(header) : NULL;
}

static struct spool *open_spool(struct fix *f, uint64_t max)
{
	struct spool_opts o = {.dir = f->dir, .max_bytes = max, .workers = f->pool,
			       .on_dropped = on_dropped, .arg = f};
	struct err err;
	struct spool *sp = spool_open(&o, &err);
	assert_non_null(sp);
	return sp;
}

static void make_batch(struct logbatch *b, int n, const char *tag)
{
	logbatch_init(b);
	for (int i = 0; i < n; i++) {
		char msg[64];
		int len = snprintf(msg, sizeof msg, "%s line %d \xE2\x82\xAC \"quoted\"", tag, i);
		logbatch_add(b, 1795600000000LL + i, i % 2 ? 2 : 1, msg, (size_t)len, 0, 0);
	}
}

static void settle(struct fix *f, struct spool *sp)
{
	for (int i = 0; i < 1000 && spool_pending_writes(sp); i++)
		ev_run(f->loop, EVRUN_ONCE);
	assert_int_equal(spool_pending_writes(sp), 0);
}

/* Every queued job (unlinks included) done. */
static void flush_pool(struct fix *f)
{
	worker_pool_free(f->pool);
	f->pool = worker_pool_new(f->loop, 1, 256, NULL);
}

static struct logbatch *read_entry(struct fix *f, struct spool *sp, uint64_t seq)
{
	f->read_done = 0;
	f->got = NULL;
	assert_int_equal(spool_read(sp, seq, on_read, f), 0);
	for (int i = 0; i < 1000 && !f->read_done; i++)
		ev_run(f->loop, EVRUN_ONCE);
	assert_true(f->read_done);
	return f->got;
}

static void test_record_coding(void **state)
{
	(void)state;
	struct logbatch b, back;
	make_batch(&b, 50, "rec");
	struct buf rec;
	buf_init(&rec, SPOOL_RECORD_MAX);
	assert_int_equal(spool_encode("{\"group\":\"g\"}", &b, &rec), 0);
	logbatch_init(&back);
	char *header = NULL;
	struct err err;
	assert_int_equal(spool_decode(rec.data, rec.len, &back, &header, &err), 0);
	assert_string_equal(header, "{\"group\":\"g\"}");
	assert_int_equal(back.n, 50);
	assert_int_equal(back.bytes, b.bytes);
	for (size_t i = 0; i < b.n; i++) {
		assert_int_equal(back.ev[i].ts_ms, b.ev[i].ts_ms);
		assert_int_equal(back.ev[i].stream, b.ev[i].stream);
		assert_int_equal(back.ev[i].len, b.ev[i].len);
		assert_memory_equal(back.text.data + back.ev[i].off, b.text.data + b.ev[i].off,
				    b.ev[i].len);
	}
	free(header);
	logbatch_free(&back);
	/* Truncated and bad records are refused and leave nothing behind. */
	logbatch_init(&back);
	assert_int_equal(spool_decode(rec.data, rec.len - 3, &back, &header, &err), -1);
	assert_null(header);
	assert_int_equal(back.n, 0);
	assert_int_equal(spool_decode("SLSPOOL2xxxxxxxxxx", 18, &back, &header, &err), -1);
	logbatch_free(&back);
	buf_free(&rec);
	logbatch_free(&b);
}

static int skip_key2(uint64_t key, void *arg);

static void test_write_read_order(void **state)
{
	struct fix *f = *state;
	struct spool *sp = open_spool(f, 0);
	struct logbatch b1, b2, b3;
	make_batch(&b1, 10, "k1-first");
	make_batch(&b2, 20, "k2-first");
	make_batch(&b3, 30, "k1-second");
	assert_int_equal(spool_write(sp, 1, "{\"n\":1}", &b1, 0, on_written, f), 0);
	assert_int_equal(b1.n, 0); /* moved */
	assert_int_equal(spool_write(sp, 2, "{\"n\":2}", &b2, 0, on_written, f), 0);
	assert_int_equal(spool_write(sp, 1, "{\"n\":3}", &b3, 0, on_written, f), 0);
	assert_int_equal(spool_count(sp), 3);
	assert_null(spool_next(sp, NULL, NULL)); /* nothing durable yet */
	settle(f, sp);
	assert_int_equal(f->written_ok, 3);
	assert_int_equal(spool_events(sp), 60);
	assert_int_equal(spool_key_count(sp, 1), 2);
	assert_true(spool_bytes(sp) > 0);
	const struct spool_entry *e = spool_next(sp, NULL, NULL);
	assert_int_equal(e->key, 1);
	assert_int_equal(e->events, 10);
	uint64_t s1 = e->seq;
	struct logbatch *got = read_entry(f, sp, s1);
	assert_true(f->read_ok);
	assert_int_equal(got->n, 10);
	assert_string_equal(f->header, "{\"n\":1}");
	assert_memory_equal(got->text.data + got->ev[0].off, "k1-first line 0", 15);
	logbatch_free(got);
	free(got);
	/* Key 1 is busy: next is key 2's batch, not key 1's second one. */
	e = spool_next(sp, NULL, NULL);
	assert_int_equal(e->key, 2);
	spool_remove(sp, s1);
	e = spool_next(sp, NULL, NULL);
	assert_int_equal(e->key, 2); /* k2's is older than k1's second one */
	e = spool_next(sp, skip_key2, NULL);
	assert_int_equal(e->key, 1);
	assert_int_equal(e->events, 30);
	spool_free(sp);

	/* A restart finds the two left, in order. */
	flush_pool(f);
	sp = open_spool(f, 0);
	assert_int_equal(spool_count(sp), 2);
	e = spool_next(sp, NULL, NULL);
	assert_int_equal(e->key, 2);
	got = read_entry(f, sp, e->seq);
	assert_int_equal(got->n, 20);
	logbatch_free(got);
	free(got);
	spool_free(sp);
}

static int skip_key2(uint64_t key, void *arg)
{
	(void)arg;
	return key == 2;
}

/* A batch put "first" goes before its key's entries, not before others'. */
static void test_first_and_skip(void **state)
{
	struct fix *f = *state;
	struct spool *sp = open_spool(f, 0);
	struct logbatch a, b, c;
	make_batch(&a, 1, "key2");
	make_batch(&b, 2, "newer");
	make_batch(&c, 3, "older");
	spool_write(sp, 2, "{}", &a, 0, on_written, f);
	spool_write(sp, 7, "{}", &b, 0, on_written, f);
	spool_write(sp, 7, "{}", &c, 1, on_written, f);
	settle(f, sp);
	const struct spool_entry *e = spool_next(sp, skip_key2, NULL);
	assert_int_equal(e->key, 7);
	assert_int_equal(e->events, 3); /* the one written first-in-line */
	e = spool_next(sp, NULL, NULL);
	assert_int_equal(e->key, 2);
	spool_free(sp);
	/* The order holds across a restart (it is in the file names). */
	sp = open_spool(f, 0);
	e = spool_next(sp, skip_key2, NULL);
	assert_int_equal(e->events, 3);
	spool_free(sp);
}

static void test_cap_drops_oldest(void **state)
{
	struct fix *f = *state;
	/* Random text compresses badly: each file is a few KiB. */
	struct spool *sp = open_spool(f, 20000);
	uint64_t seed = 7;
	for (int k = 0; k < 10; k++) {
		struct logbatch b;
		logbatch_init(&b);
		for (int i = 0; i < 40; i++) {
			char msg[100];
			for (int j = 0; j < 99; j++) {
				seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
				msg[j] = (char)('a' + (seed >> 59) % 26);
			}
			logbatch_add(&b, 1795600000000LL + i, 1, msg, 99, 99, 0);
		}
		assert_int_equal(spool_write(sp, (uint64_t)k, "{}", &b, 0, on_written, f), 0);
		settle(f, sp);
		assert_true(spool_bytes(sp) <= 20000);
	}
	assert_int_equal(f->written_ok, 10);
	assert_true(f->dropped_files > 0);
	assert_int_equal(f->dropped_events, 40 * f->dropped_files);
	assert_int_equal(spool_dropped_events(sp), f->dropped_events);
	assert_int_equal(spool_count(sp) + f->dropped_files, 10);
	/* The survivors are the newest. */
	const struct spool_entry *e = spool_next(sp, NULL, NULL);
	assert_int_equal(e->key, f->dropped_files);
	spool_free(sp);
	/* Deletions happened on disk too. */
	flush_pool(f);
	sp = open_spool(f, 20000);
	assert_int_equal(spool_count(sp), 10 - f->dropped_files);
	spool_free(sp);
}

static void test_corrupt_file(void **state)
{
	struct fix *f = *state;
	char path[256];
	snprintf(path, sizeof path, "%s/%016x-%d-%016x.gz", f->dir, 5, 3, 9);
	FILE *fp = fopen(path, "w");
	fputs("not gzip at all", fp);
	fclose(fp);
	snprintf(path, sizeof path, "%s/%016x-%d-%016x.gz.tmp", f->dir, 6, 3, 9);
	fp = fopen(path, "w");
	fputs("half written", fp);
	fclose(fp);
	struct spool *sp = open_spool(f, 0);
	assert_int_equal(spool_count(sp), 1); /* the temp file is gone */
	assert_int_equal(access(path, F_OK), -1);
	const struct spool_entry *e = spool_next(sp, NULL, NULL);
	assert_int_equal(e->events, 3);
	read_entry(f, sp, e->seq);
	assert_false(f->read_ok);
	assert_null(f->got);
	spool_remove(sp, 5);
	assert_int_equal(spool_count(sp), 0);
	free(f->header);
	f->header = NULL;
	spool_free(sp);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_record_coding),
		cmocka_unit_test_setup_teardown(test_write_read_order, setup, teardown),
		cmocka_unit_test_setup_teardown(test_first_and_skip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cap_drops_oldest, setup, teardown),
		cmocka_unit_test_setup_teardown(test_corrupt_file, setup, teardown),
	};
	return cmocka_run_group_tests_name("spool", tests, NULL, NULL);
}
