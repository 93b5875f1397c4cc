/*
 * logbatch: the PutLogEvents limits with exact byte accounting, ordering,
 * the age filter, UTF-8 repair, cutting long messages, and read positions
 * (the checkpoint arithmetic: resuming skips exactly what was consumed).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "logbatch.h"

#define T0 1795600000000LL /* 2026-11-26, ms */

static void add_ok(struct logbatch *b, int64_t ts, const char *msg, size_t len)
{
	assert_true(logbatch_fits(b, NULL, ts, len, logbatch_json_len(msg, len)));
	assert_int_equal(logbatch_add(b, ts, 1, msg, len, logbatch_json_len(msg, len), 0), 0);
}

/* 1,048,576 bytes counting 26 per event: exactly full fits, one byte more does not. */
static void test_byte_limit_exact(void **state)
{
	(void)state;
	struct logbatch b;
	logbatch_init(&b);
	/* 1024 events of 1000 bytes: 1024 * 1026 = 1,050,624 > limit, so 1022 fit
	 * (1,048,572) and the 1023rd (1,049,598) does not. */
	char *msg = malloc(1000);
	memset(msg, 'a', 1000);
	for (int i = 0; i < 1022; i++)
		add_ok(&b, T0 + i, msg, 1000);
	assert_int_equal(b.bytes, 1022 * 1026);
	assert_false(logbatch_fits(&b, NULL, T0, 1000, 1000));
	/* What is left is 1,048,576 - 1,048,572 = 4 bytes: no event fits (26 + 1). */
	assert_false(logbatch_fits(&b, NULL, T0, 1, 1));
	logbatch_reset(&b);
	/* Now an exact fill: one event of 1,048,550 bytes is exactly the limit. */
	char *big = malloc(LOGBATCH_EVENT_MAX + 1);
	memset(big, 'b', LOGBATCH_EVENT_MAX + 1);
	add_ok(&b, T0, big, LOGBATCH_EVENT_MAX);
	assert_int_equal(b.bytes, LOGBATCH_MAX_BYTES);
	assert_false(logbatch_fits(&b, NULL, T0, 1, 1));
	/* An event over 1 MiB - 26 never fits, even an empty batch. */
	logbatch_reset(&b);
	assert_false(logbatch_fits(&b, NULL, T0, LOGBATCH_EVENT_MAX + 1, 0));
	assert_int_equal(logbatch_add(&b, T0, 1, big, LOGBATCH_EVENT_MAX + 1, 0, 0), -1);
	/* Two events summing to exactly the limit: 524,262 + 26 + 524,262 + 26. */
	add_ok(&b, T0, big, 524262);
	add_ok(&b, T0, big, 524262);
	assert_int_equal(b.bytes, LOGBATCH_MAX_BYTES);
	free(big);
	free(msg);
	logbatch_free(&b);
}

static void test_event_count_limit(void **state)
{
	(void)state;
	struct logbatch b;
	logbatch_init(&b);
	for (int i = 0; i < LOGBATCH_MAX_EVENTS; i++)
		add_ok(&b, T0, "x", 1);
	assert_int_equal(b.n, 10000);
	assert_false(logbatch_fits(&b, NULL, T0, 1, 1));
	/* A lower cap (the limits struct) is obeyed too. */
	struct logbatch_limits l = {.max_events = 3};
	logbatch_reset(&b);
	for (int i = 0; i < 3; i++) {
		assert_true(logbatch_fits(&b, &l, T0, 1, 1));
		logbatch_add(&b, T0, 1, "y", 1, 1, 0);
	}
	assert_false(logbatch_fits(&b, &l, T0, 1, 1));
	logbatch_free(&b);
}

static void test_span_limit(void **state)
{
	(void)state;
	struct logbatch b;
	logbatch_init(&b);
	add_ok(&b, T0, "a", 1);
	assert_true(logbatch_fits(&b, NULL, T0 + LOGBATCH_MAX_SPAN_MS, 1, 1));
	assert_false(logbatch_fits(&b, NULL, T0 + LOGBATCH_MAX_SPAN_MS + 1, 1, 1));
	/* Earlier events count as well as later ones. */
	assert_false(logbatch_fits(&b, NULL, T0 - LOGBATCH_MAX_SPAN_MS - 1, 1, 1));
	add_ok(&b, T0 + LOGBATCH_MAX_SPAN_MS, "b", 1);
	assert_false(logbatch_fits(&b, NULL, T0 - 1, 1, 1));
	logbatch_free(&b);
}

/* The JSON cap (coordinator: 4 MiB body) counts escaped bytes. */
static void test_json_cap(void **state)
{
	(void)state;
	struct logbatch b;
	logbatch_init(&b);
	struct logbatch_limits l = {.max_json = 20};
	const char ctl[] = "\x01\x02\x03"; /* 6 bytes each once escaped */
	assert_int_equal(logbatch_json_len(ctl, 3), 18);
	assert_int_equal(logbatch_json_len("a\"b\\c\n", 6), 9);
	assert_true(logbatch_fits(&b, &l, T0, 3, 18));
	logbatch_add(&b, T0, 1, ctl, 3, 18, 0);
	assert_false(logbatch_fits(&b, &l, T0, 1, 6));
	assert_true(logbatch_fits(&b, &l, T0, 2, 2));
	logbatch_free(&b);
}

/* Stable sort: equal timestamps keep their arrival order. */
static void test_sort_stable(void **state)
{
	(void)state;
	struct logbatch b;
	logbatch_init(&b);
	int64_t ts[] = {5, 3, 5, 1, 3, 5, 2, 1};
	char msg[8][16];
	for (int i = 0; i < 8; i++) {
		snprintf(msg[i], sizeof msg[i], "m%d", i);
		logbatch_add(&b, T0 + ts[i], 1, msg[i], 2, 2, 0);
	}
	logbatch_sort(&b);
	const char *want[] = {"m3", "m7", "m6", "m1", "m4", "m0", "m2", "m5"};
	for (int i = 0; i < 8; i++) {
		assert_true(i == 0 || b.ev[i - 1].ts_ms <= b.ev[i].ts_ms);
		assert_memory_equal(b.text.data + b.ev[i].off, want[i], 2);
	}
	/* A large nearly sorted batch sorts correctly too. */
	logbatch_reset(&b);
	for (int i = 0; i < 5000; i++)
		logbatch_add(&b, T0 + (i % 7 == 0 ? i - 3 : i), 1, "z", 1, 1, 0);
	logbatch_sort(&b);
	for (size_t i = 1; i < b.n; i++)
		assert_true(b.ev[i - 1].ts_ms <= b.ev[i].ts_ms);
	logbatch_free(&b);
}

static void test_age_filter(void **state)
{
	(void)state;
	struct logbatch b;
	logbatch_init(&b);
	int64_t now = T0;
	logbatch_add(&b, now - LOGBATCH_PAST_MS - 1, 1, "old", 3, 3, 0);
	logbatch_add(&b, now - LOGBATCH_PAST_MS, 1, "edge", 4, 4, 0);
	logbatch_add(&b, now, 1, "now", 3, 3, 0);
	logbatch_add(&b, now + LOGBATCH_FUTURE_MS, 1, "soon", 4, 4, 0);
	logbatch_add(&b, now + LOGBATCH_FUTURE_MS + 1, 1, "late", 4, 4, 0);
	uint64_t old = 0, young = 0;
	assert_int_equal(logbatch_filter_age(&b, now, 0, &old, &young), 3);
	assert_int_equal(old, 1);
	assert_int_equal(young, 1);
	assert_int_equal(b.bytes, 4 + 3 + 4 + 3 * 26);
	assert_memory_equal(b.text.data + b.ev[0].off, "edge", 4);
	/* A retention shorter than 14 days drops more. */
	old = young = 0;
	assert_int_equal(logbatch_filter_age(&b, now, 3600000, &old, &young), 2);
	assert_int_equal(old, 1);
	assert_int_equal(b.min_ts, now);
	/* Removing a rejected range. */
	assert_int_equal(logbatch_remove(&b, 0, 1), 1);
	assert_memory_equal(b.text.data + b.ev[0].off, "soon", 4);
	logbatch_free(&b);
}

static void repair(const char *in, size_t len, const char *want, size_t want_len, long nrepl)
{
	struct logbatch_utf8 st = {0};
	struct buf out;
	buf_init(&out, 0);
	assert_int_equal(logbatch_utf8_feed(&st, in, len, 1, &out), nrepl);
	assert_int_equal(out.len, want_len);
	assert_memory_equal(out.data ? out.data : "", want, want_len);
	assert_int_equal(logbatch_utf8_clean(out.data ? out.data : "", out.len), 1);
	/* Fed one byte at a time, the result is the same. */
	struct logbatch_utf8 st2 = {0};
	struct buf out2;
	buf_init(&out2, 0);
	long n = 0;
	for (size_t i = 0; i < len; i++)
		n += logbatch_utf8_feed(&st2, in + i, 1, i + 1 == len, &out2);
	if (len == 0)
		n += logbatch_utf8_feed(&st2, "", 0, 1, &out2);
	assert_int_equal(n, nrepl);
	assert_int_equal(out2.len, want_len);
	assert_memory_equal(out2.data ? out2.data : "", want, want_len);
	buf_free(&out);
	buf_free(&out2);
}

#define FFFD "\xEF\xBF\xBD"

/* Replacement per maximal subpart, as Unicode 15 section 3.9 (table 3-8) shows. */
static void test_utf8_repair(void **state)
{
	(void)state;
	repair("plain ascii", 11, "plain ascii", 11, 0);
	repair("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80", 14, "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80",
	       14, 0);
	repair("a\xFF" "b", 3, "a" FFFD "b", 5, 1);
	repair("a\x00" "b", 3, "a" FFFD "b", 5, 1); /* NUL too */
	repair("\xC0\xAF", 2, FFFD FFFD, 6, 2);     /* overlong: two */
	repair("\xED\xA0\x80", 3, FFFD FFFD FFFD, 9, 3); /* surrogate */
	repair("\xE2\x82", 2, FFFD, 3, 1);               /* truncated at the end: one */
	repair("\xE2\x82" "x", 3, FFFD "x", 4, 1);
	repair("\xF4\x90\x80\x80", 4, FFFD FFFD FFFD FFFD, 12, 4); /* above U+10FFFF */
	/* Table 3-8 of the standard: 61 F1 80 80 E1 80 C2 62 80 63 80 BF 64 ->
	 * a FFFD FFFD FFFD b FFFD c FFFD FFFD d */
	repair("\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64", 13,
	       "a" FFFD FFFD FFFD "b" FFFD "c" FFFD FFFD "d", 22, 6);
	assert_int_equal(logbatch_utf8_clean("a\xC3", 2), 0);
	assert_int_equal(logbatch_utf8_clean("0123456789abcdef\x01", 17), 1);
	assert_int_equal(logbatch_utf8_clean("0123456789abcdef\x00", 17), 0);
	assert_int_equal(logbatch_utf8_clean("0123456789abcdef\x80", 17), 0);
}

/* A sequence cut between two pieces is completed by the next piece. */
static void test_utf8_across_pieces(void **state)
{
	(void)state;
	struct logbatch_utf8 st = {0};
	struct buf out;
	buf_init(&out, 0);
	assert_int_equal(logbatch_utf8_feed(&st, "ab\xF0\x9F", 4, 0, &out), 0);
	assert_int_equal(out.len, 2);
	assert_int_equal(logbatch_utf8_feed(&st, "\x98\x80" "c", 3, 1, &out), 0);
	assert_int_equal(out.len, 7);
	assert_memory_equal(out.data, "ab\xF0\x9F\x98\x80" "c", 7);
	buf_free(&out);
}

static void test_utf8_cut(void **state)
{
	(void)state;
	const char *s = "ab\xE2\x82\xAC" "cd"; /* a b EURO c d */
	assert_int_equal(logbatch_utf8_cut(s, 7, 10), 7);
	assert_int_equal(logbatch_utf8_cut(s, 7, 4), 2); /* not inside the euro sign */
	assert_int_equal(logbatch_utf8_cut(s, 7, 5), 5);
	assert_int_equal(logbatch_utf8_cut(s, 7, 2), 2);
	/* A 3 MiB line of 3-byte characters cuts into events under the limit. */
	size_t len = 3 * 1048576;
	char *big = malloc(len);
	for (size_t i = 0; i < len; i += 3)
		memcpy(big + i, "\xE2\x82\xAC", 3);
	size_t off = 0, events = 0;
	while (off < len) {
		size_t n = logbatch_utf8_cut(big + off, len - off, LOGBATCH_EVENT_MAX);
		assert_true(n > 0 && n <= LOGBATCH_EVENT_MAX);
		assert_int_equal(logbatch_utf8_clean(big + off, n), 1);
		off += n;
		events++;
	}
	assert_int_equal(events, 4); /* 3,145,728 / 1,048,548 rounded up */
	free(big);
}

/* Consumes events with the given timestamps. */
static void consume(struct logpos *p, const int64_t *ts, size_t n)
{
	for (size_t i = 0; i < n; i++)
		logpos_consume(p, ts[i]);
}

/* What a resumed read delivers: every event (arrival order) with ts >= since. */
static size_t resumed(const int64_t *all, size_t n, int64_t since, int64_t *out)
{
	size_t k = 0;
	for (size_t i = 0; i < n; i++)
		if (all[i] >= since)
			out[k++] = all[i];
	return k;
}

/* The mark of a prefix, applied to the whole stream, yields exactly the rest. */
static void check_resume(const int64_t *all, size_t n, size_t consumed)
{
	struct logpos p;
	logpos_init(&p);
	consume(&p, all, consumed);
	struct logpos_mark m = logpos_mark(&p, NULL);
	int64_t *out = malloc(n * sizeof *out);
	size_t k = resumed(all, n, m.since_ns, out);
	assert_true(m.skip <= k);
	/* After skipping, the read continues with exactly the unconsumed events. */
	assert_int_equal(k - m.skip, n - consumed);
	for (size_t i = 0; i < n - consumed; i++)
		assert_int_equal(out[m.skip + i], all[consumed + i]);
	free(out);
}

static void test_position_ordered(void **state)
{
	(void)state;
	/* Several events per timestamp (ns resolution is not unique under load). */
	int64_t all[40];
	for (int i = 0; i < 40; i++)
		all[i] = 1000000000LL * 100 + (i / 3) * 1000;
	for (size_t c = 1; c <= 40; c++)
		check_resume(all, 40, c);
	/* With ordered timestamps the mark is the last timestamp and the count there. */
	struct logpos p;
	logpos_init(&p);
	consume(&p, all, 8); /* timestamps ..., 2000 x3 (6,7 consumed of 6,7,8) */
	struct logpos_mark m = logpos_mark(&p, NULL);
	assert_true(m.since_ns <= all[7]);
}

/* stdout and stderr lines with interleaved timestamps: neither lost nor repeated. */
static void test_position_out_of_order(void **state)
{
	(void)state;
	int64_t base = 1000000000LL * 200;
	int64_t all[] = {base + 10, base + 30, base + 20, base + 40, base + 35, base + 50,
			 base + 45, base + 60, base + 60, base + 55, base + 70};
	size_t n = sizeof all / sizeof all[0];
	for (size_t c = 1; c <= n; c++)
		check_resume(all, n, c);
}

/* Past the ring (256 events), resuming stays exact for ordered timestamps. */
static void test_position_long(void **state)
{
	(void)state;
	size_t n = 3000;
	int64_t *all = malloc(n * sizeof *all);
	for (size_t i = 0; i < n; i++)
		all[i] = 1000000000LL * 300 + (int64_t)(i / 2) * 10; /* pairs share a timestamp */
	for (size_t c = 250; c <= 600; c += 7)
		check_resume(all, n, c);
	check_resume(all, n, n);
	/* A resumed read (base) that consumed the skipped events again gives the
	 * same mark as one that never stopped. */
	struct logpos p1, p2;
	logpos_init(&p1);
	consume(&p1, all, 1000);
	struct logpos_mark m1 = logpos_mark(&p1, NULL);
	int64_t *out = malloc(n * sizeof *out);
	size_t k = resumed(all, n, m1.since_ns, out);
	logpos_init(&p2);
	consume(&p2, out, m1.skip + 500); /* the skipped ones, then 500 new */
	struct logpos_mark m2 = logpos_mark(&p2, &m1);
	size_t k2 = resumed(all, n, m2.since_ns, out);
	assert_int_equal(k2 - m2.skip, n - 1500);
	(void)k;
	free(out);
	free(all);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_byte_limit_exact),
		cmocka_unit_test(test_event_count_limit),
		cmocka_unit_test(test_span_limit),
		cmocka_unit_test(test_json_cap),
		cmocka_unit_test(test_sort_stable),
		cmocka_unit_test(test_age_filter),
		cmocka_unit_test(test_utf8_repair),
		cmocka_unit_test(test_utf8_across_pieces),
		cmocka_unit_test(test_utf8_cut),
		cmocka_unit_test(test_position_ordered),
		cmocka_unit_test(test_position_out_of_order),
		cmocka_unit_test(test_position_long),
	};
	return cmocka_run_group_tests_name("logbatch", tests, NULL, NULL);
}
