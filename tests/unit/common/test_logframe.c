/* Tests for logframe (Docker log stream demultiplexer) and linesplit. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "buf.h"
#include "logframe.h"

/* Every line handed over, one per row: "s<stream> t<ts> f<flags> |text|". */
struct collect {
	struct buf out;
	int lines;
	int stop_after; /* return -1 on this line (1-based); 0 = never */
};

static int collect_line(const struct linesplit_line *l, void *arg)
{
	struct collect *c = arg;
	c->lines++;
	assert_int_equal(strlen(l->text), l->len); /* NUL-terminated, no NUL inside here */
	buf_printf(&c->out, "s%d t%lld f%u |%s|\n", l->stream, (long long)l->ts_ns, l->flags,
		   l->text);
	if (c->stop_after && c->lines == c->stop_after)
		return -1;
	return 0;
}

static void collect_init(struct collect *c)
{
	memset(c, 0, sizeof *c);
	buf_init(&c->out, 64 << 20);
}

/* Appends one frame to b. */
static void frame(struct buf *b, int stream, const char *payload, size_t len)
{
	uint8_t h[8] = {(uint8_t)stream, 0, 0, 0, (uint8_t)(len >> 24), (uint8_t)(len >> 16),
			(uint8_t)(len >> 8), (uint8_t)len};
	assert_int_equal(buf_append(b, h, 8), 0);
	assert_int_equal(buf_append(b, payload, len), 0);
}

static void frame_str(struct buf *b, int stream, const char *payload)
{
	frame(b, stream, payload, strlen(payload));
}

static struct logframe *new_lf(enum logframe_mode mode, int ts, size_t max_line,
			       struct collect *c)
{
	struct logframe_opts o = {
		.mode = mode, .timestamps = ts, .max_line = max_line,
		.on_line = collect_line, .arg = c,
	};
	struct logframe *lf = logframe_new(&o);
	assert_non_null(lf);
	return lf;
}

/* Feeds `data` in chunks of `chunk` bytes, then finishes; returns finish's rc. */
static int run_chunked(struct logframe *lf, const char *data, size_t len, size_t chunk,
		       struct err *e)
{
	for (size_t off = 0; off < len; off += chunk) {
		size_t n = len - off < chunk ? len - off : chunk;
		if (logframe_feed(lf, data + off, n, e) < 0)
			return -1;
	}
	return logframe_finish(lf, e);
}

static void test_demux_basic(void **state)
{
	(void)state;
	struct buf s;
	buf_init(&s, 0);
	frame_str(&s, 1, "out one\n");
	frame_str(&s, 2, "err one\nerr two\n");
	frame_str(&s, 1, "out two\n");
	frame_str(&s, 1, ""); /* empty frames are legal */
	struct collect c;
	collect_init(&c);
	struct logframe *lf = new_lf(LOGFRAME_MULTIPLEXED, 0, 0, &c);
	struct err e;
	assert_int_equal(run_chunked(lf, s.data, s.len, s.len, &e), 0);
	assert_string_equal(c.out.data, "s1 t-1 f0 |out one|\n"
					"s2 t-1 f0 |err one|\n"
					"s2 t-1 f0 |err two|\n"
					"s1 t-1 f0 |out two|\n");
	assert_int_equal(logframe_offset(lf), s.len);
	logframe_free(lf);
	buf_free(&c.out);
	buf_free(&s);
}

/* A stream with timestamps, Docker's split long lines, partial lines in both
 * streams interleaved, and an empty line. */
static void build_rich_stream(struct buf *s)
{
	buf_init(s, 0);
	frame_str(s, 1, "2026-11-26T05:39:11.123456789Z testsrv release=r1 listening\n");
	frame_str(s, 2, "2026-11-26T05:39:11.200000000Z part one of a long ");
	frame_str(s, 1, "2026-11-26T05:39:11.300000000Z \n");
	frame_str(s, 2, "2026-11-26T05:39:11.400000000Z stderr line, joined\n");
	frame_str(s, 1, "2026-11-26T05:39:12Z no fraction\n");
	frame_str(s, 0, "2026-11-26T05:39:13.000000001Z stdin\n");
}

static const char rich_expected[] =
	"s1 t1795671551123456789 f0 |testsrv release=r1 listening|\n"
	"s1 t1795671551300000000 f0 ||\n"
	"s2 t1795671551200000000 f0 |part one of a long stderr line, joined|\n"
	"s1 t1795671552000000000 f0 |no fraction|\n"
	"s0 t1795671553000000001 f0 |stdin|\n";

static void test_every_chunk_size(void **state)
{
	(void)state;
	struct buf s;
	build_rich_stream(&s);
	for (size_t chunk = 1; chunk <= s.len; chunk++) {
		struct collect c;
		collect_init(&c);
		struct logframe *lf = new_lf(LOGFRAME_MULTIPLEXED, 1, 0, &c);
		struct err e;
		assert_int_equal(run_chunked(lf, s.data, s.len, chunk, &e), 0);
		if (strcmp(c.out.data, rich_expected) != 0)
			fail_msg("chunk size %zu gave:\n%s", chunk, c.out.data);
		logframe_free(lf);
		buf_free(&c.out);
	}
	buf_free(&s);
}

/* A 3 MiB frame of short lines goes through without being buffered whole,
 * and a 3 MiB single line comes out in pieces of max_line. */
static void test_big_frames(void **state)
{
	(void)state;
	size_t big = 3u << 20;
	char *payload = malloc(big);
	assert_non_null(payload);
	for (size_t i = 0; i < big; i++)
		payload[i] = (i % 64 == 63) ? '\n' : (char)('a' + i % 26);
	struct buf s;
	buf_init(&s, 16 << 20);
	frame(&s, 1, payload, big);
	struct collect c;
	collect_init(&c);
	struct logframe *lf = new_lf(LOGFRAME_MULTIPLEXED, 0, 0, &c);
	struct err e;
	assert_int_equal(run_chunked(lf, s.data, s.len, 4096, &e), 0);
	assert_int_equal(c.lines, big / 64);
	logframe_free(lf);
	buf_free(&c.out);

	/* One line of 3 MiB + 5 bytes, cap 1 MiB: 3 pieces of 1 MiB and a tail. */
	memset(payload, 'x', big);
	buf_reset(&s);
	frame(&s, 2, payload, big);
	frame_str(&s, 2, "tail\n");
	collect_init(&c);
	lf = new_lf(LOGFRAME_MULTIPLEXED, 0, 0, &c);
	assert_int_equal(run_chunked(lf, s.data, s.len, 65536, &e), 0);
	assert_int_equal(c.lines, 4);
	/* Check the flags row by row without printing megabytes. */
	const char *p = c.out.data;
	const char *want[] = {"s2 t-1 f1 |", "s2 t-1 f3 |", "s2 t-1 f3 |", "s2 t-1 f2 |tail|"};
	for (int i = 0; i < 4; i++) {
		assert_memory_equal(p, want[i], strlen(want[i]));
		if (i < 3)
			assert_int_equal(strspn(p + strlen(want[i]), "x"), 1u << 20);
		p = strchr(p, '\n') + 1;
	}
	logframe_free(lf);
	buf_free(&c.out);
	buf_free(&s);
	free(payload);
}

static void test_invalid_headers(void **state)
{
	(void)state;
	struct collect c;
	struct err e;
	/* Stream byte 3. */
	collect_init(&c);
	struct logframe *lf = new_lf(LOGFRAME_MULTIPLEXED, 0, 0, &c);
	struct buf s;
	buf_init(&s, 0);
	frame_str(&s, 1, "fine\n");
	frame_str(&s, 3, "bad\n");
	assert_int_equal(logframe_feed(lf, s.data, s.len, &e), -1);
	assert_non_null(strstr(e.msg, "stream byte 0x03"));
	assert_non_null(strstr(e.msg, "at byte 13"));
	assert_string_equal(c.out.data, "s1 t-1 f0 |fine|\n");
	/* Stopped for good: later input and finish fail the same way. */
	assert_int_equal(logframe_feed(lf, "\1\0\0\0\0\0\0\0", 8, &e), -1);
	assert_non_null(strstr(e.msg, "stream byte 0x03"));
	assert_int_equal(logframe_finish(lf, &e), -1);
	logframe_free(lf);
	buf_free(&c.out);

	/* Nonzero padding. */
	collect_init(&c);
	lf = new_lf(LOGFRAME_MULTIPLEXED, 0, 0, &c);
	assert_int_equal(logframe_feed(lf, "\1\0\1\0\0\0\0\1x", 9, &e), -1);
	assert_non_null(strstr(e.msg, "padding bytes 00 01 00"));
	assert_int_equal(c.lines, 0);
	logframe_free(lf);
	buf_free(&c.out);

	/* TTY output read as multiplexed: the first byte is text. */
	collect_init(&c);
	lf = new_lf(LOGFRAME_MULTIPLEXED, 0, 0, &c);
	assert_int_equal(logframe_feed(lf, "hello world\r\n", 13, &e), -1);
	assert_non_null(strstr(e.msg, "raw mode"));
	logframe_free(lf);
	buf_free(&c.out);
	buf_free(&s);
}

static void test_truncated(void **state)
{
	(void)state;
	struct collect c;
	struct err e;
	/* Ends inside a header. */
	collect_init(&c);
	struct logframe *lf = new_lf(LOGFRAME_MULTIPLEXED, 0, 0, &c);
	struct buf s;
	buf_init(&s, 0);
	frame_str(&s, 1, "whole\n");
	assert_int_equal(logframe_feed(lf, s.data, s.len, &e), 0);
	assert_int_equal(logframe_feed(lf, "\1\0\0", 3, &e), 0);
	assert_int_equal(logframe_finish(lf, &e), -1);
	assert_string_equal(e.msg,
			    "truncated log stream: it ended inside a frame header (3 of 8 bytes)");
	assert_string_equal(c.out.data, "s1 t-1 f0 |whole|\n");
	logframe_free(lf);
	buf_free(&c.out);

	/* Ends inside a payload: the partial line is still handed over. */
	collect_init(&c);
	lf = new_lf(LOGFRAME_MULTIPLEXED, 0, 0, &c);
	assert_int_equal(logframe_feed(lf, "\2\0\0\0\0\0\0\x0a" "abcdefgh", 16, &e), 0);
	assert_int_equal(logframe_finish(lf, &e), -1);
	assert_string_equal(e.msg, "truncated log stream: it ended inside a frame "
				   "(2 of 10 payload bytes missing)");
	assert_string_equal(c.out.data, "s2 t-1 f4 |abcdefgh|\n");
	logframe_free(lf);
	buf_free(&c.out);

	/* A clean end with a last line lacking its newline is not an error. */
	collect_init(&c);
	lf = new_lf(LOGFRAME_MULTIPLEXED, 0, 0, &c);
	assert_int_equal(logframe_feed(lf, "\1\0\0\0\0\0\0\3" "abc", 11, &e), 0);
	assert_int_equal(logframe_finish(lf, &e), 0);
	assert_string_equal(c.out.data, "s1 t-1 f4 |abc|\n");
	logframe_free(lf);
	buf_free(&c.out);
	buf_free(&s);
}

static void test_raw_mode(void **state)
{
	(void)state;
	/* No headers: bytes that would be an invalid header are text; \r\n ends lines. */
	const char tty[] = "2026-11-26T05:39:11.000000001Z \x01\x02 prompt> \r\n"
			   "2026-11-26T05:39:11.000000002Z second\r\n"
			   "2026-11-26T05:39:11.000000003Z no newline";
	for (size_t chunk = 1; chunk <= sizeof tty - 1; chunk++) {
		struct collect c;
		collect_init(&c);
		struct logframe *lf = new_lf(LOGFRAME_RAW, 1, 0, &c);
		struct err e;
		assert_int_equal(run_chunked(lf, tty, sizeof tty - 1, chunk, &e), 0);
		assert_string_equal(c.out.data, "s1 t1795671551000000001 f0 |\x01\x02 prompt> |\n"
						"s1 t1795671551000000002 f0 |second|\n"
						"s1 t1795671551000000003 f4 |no newline|\n");
		logframe_free(lf);
		buf_free(&c.out);
	}
}

static void test_parse_time(void **state)
{
	(void)state;
	struct {
		const char *s;
		int64_t ns;
	} ok[] = {
		{"1970-01-01T00:00:00Z", 0},
		{"2026-11-26T05:39:11.123456789Z", 1795671551123456789LL},
		{"2026-11-26T05:39:11.1Z", 1795671551100000000LL},
		{"2024-02-29T12:00:00+02:00", 1709200800000000000LL},
		{"2024-02-29T08:00:00.000000000-02:00", 1709200800000000000LL},
		{"2026-11-26t05:39:11z", 1795671551000000000LL},
	};
	for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
		int64_t ns = -5;
		assert_int_equal(linesplit_parse_time(ok[i].s, strlen(ok[i].s), &ns), 0);
		assert_int_equal(ns, ok[i].ns);
	}
	const char *bad[] = {
		"", "2026-11-26", "2026-11-26T05:39:11", "2026-11-26T05:39:11.Z",
		"2026-11-26T05:39:11.1234567890Z", "2023-02-29T00:00:00Z", "1969-12-31T23:59:59Z",
		"2026-13-01T00:00:00Z", "2026-11-26T24:00:00Z", "2026-11-26T05:39:11Zx",
		"2026-11-26T05:39:11+0200", "2026-11-26 05:39:11Z", "2263-01-01T00:00:00Z",
		"2026-11-26T05:39:11.12345678Q", "20x6-11-26T05:39:11Z",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		int64_t ns = -5;
		if (linesplit_parse_time(bad[i], strlen(bad[i]), &ns) != -1)
			fail_msg("accepted '%s'", bad[i]);
		assert_int_equal(ns, -5);
	}
}

static void test_timestamp_lines(void **state)
{
	(void)state;
	struct collect c;
	collect_init(&c);
	struct logframe *lf = new_lf(LOGFRAME_MULTIPLEXED, 1, 0, &c);
	struct buf s;
	buf_init(&s, 0);
	/* No timestamp where one was expected: ts -1, text kept whole. */
	frame_str(&s, 1, "not-a-time and text\n");
	/* A prefix longer than any timestamp. */
	frame_str(&s, 1, "0123456789012345678901234567890123456789012345 x\n");
	/* A frame continuing a line, whose start has no valid timestamp: kept as text. */
	frame_str(&s, 1, "2026-11-26T05:39:11Z start ");
	frame_str(&s, 1, "garbage-ts rest\n");
	/* Continuation that is nothing but a timestamp. */
	frame_str(&s, 2, "2026-11-26T05:39:11Z a");
	frame_str(&s, 2, "2026-11-26T05:39:12Z ");
	frame_str(&s, 2, "2026-11-26T05:39:13Z b\n");
	struct err e;
	assert_int_equal(run_chunked(lf, s.data, s.len, s.len, &e), 0);
	assert_string_equal(c.out.data,
			    "s1 t-1 f0 |not-a-time and text|\n"
			    "s1 t-1 f0 |0123456789012345678901234567890123456789012345 x|\n"
			    "s1 t1795671551000000000 f0 |start garbage-ts rest|\n"
			    "s2 t1795671551000000000 f0 |ab|\n");
	logframe_free(lf);
	buf_free(&c.out);
	buf_free(&s);
}

static void test_partial_lines_across_frames(void **state)
{
	(void)state;
	struct collect c;
	collect_init(&c);
	struct logframe *lf = new_lf(LOGFRAME_MULTIPLEXED, 0, 0, &c);
	struct buf s;
	buf_init(&s, 0);
	frame_str(&s, 1, "hel");
	frame_str(&s, 2, "E1\nE");
	frame_str(&s, 1, "lo\nwor");
	frame_str(&s, 2, "2\n");
	frame_str(&s, 1, "ld\n");
	struct err e;
	assert_int_equal(run_chunked(lf, s.data, s.len, 5, &e), 0);
	assert_string_equal(c.out.data, "s2 t-1 f0 |E1|\n"
					"s1 t-1 f0 |hello|\n"
					"s2 t-1 f0 |E2|\n"
					"s1 t-1 f0 |world|\n");
	logframe_free(lf);
	buf_free(&c.out);
	buf_free(&s);
}

static void test_line_cap(void **state)
{
	(void)state;
	struct collect c;
	collect_init(&c);
	struct logframe *lf = new_lf(LOGFRAME_MULTIPLEXED, 1, 10, &c);
	struct buf s;
	buf_init(&s, 0);
	/* 25 bytes across two frames (Docker's split), cap 10. */
	frame_str(&s, 1, "2026-11-26T05:39:11Z 0123456789ABCDE");
	frame_str(&s, 1, "2026-11-26T05:39:12Z FGHIJKLMNO\n");
	/* Exactly the cap: one piece. */
	frame_str(&s, 1, "2026-11-26T05:39:13Z 0123456789\n");
	struct err e;
	assert_int_equal(run_chunked(lf, s.data, s.len, 3, &e), 0);
	assert_string_equal(c.out.data, "s1 t1795671551000000000 f1 |0123456789|\n"
					"s1 t1795671551000000000 f3 |ABCDEFGHIJ|\n"
					"s1 t1795671551000000000 f2 |KLMNO|\n"
					"s1 t1795671553000000000 f0 |0123456789|\n");
	logframe_free(lf);
	buf_free(&c.out);
	buf_free(&s);
}

static void test_callback_stops(void **state)
{
	(void)state;
	struct collect c;
	collect_init(&c);
	c.stop_after = 2;
	struct logframe *lf = new_lf(LOGFRAME_MULTIPLEXED, 0, 0, &c);
	struct buf s;
	buf_init(&s, 0);
	frame_str(&s, 1, "a\nb\nc\n");
	struct err e;
	assert_int_equal(logframe_feed(lf, s.data, s.len, &e), -1);
	assert_string_equal(e.msg, "stopped by the line callback");
	assert_int_equal(c.lines, 2);
	assert_int_equal(logframe_feed(lf, s.data, s.len, &e), -1);
	assert_int_equal(c.lines, 2);
	logframe_free(lf);
	buf_free(&c.out);
	buf_free(&s);
}

/* The splitter on its own, as the log shipper uses it. */
static void test_linesplit_alone(void **state)
{
	(void)state;
	struct collect c;
	collect_init(&c);
	struct linesplit ls;
	linesplit_init(&ls, 0, LINESPLIT_STRIP_CR, 7, collect_line, &c);
	struct err e;
	assert_int_equal(linesplit_feed(&ls, "one\r\ntw", 7, &e), 0);
	assert_int_equal(linesplit_feed(&ls, "o\n\nthree\r", 9, &e), 0);
	assert_int_equal(linesplit_finish(&ls, &e), 0);
	assert_string_equal(c.out.data, "s7 t-1 f0 |one|\n"
					"s7 t-1 f0 |two|\n"
					"s7 t-1 f0 ||\n"
					"s7 t-1 f4 |three|\n");
	/* Usable again after finish. */
	assert_int_equal(linesplit_feed(&ls, "four\n", 5, &e), 0);
	assert_non_null(strstr(c.out.data, "|four|"));
	linesplit_free(&ls);
	buf_free(&c.out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_demux_basic),
		cmocka_unit_test(test_every_chunk_size),
		cmocka_unit_test(test_big_frames),
		cmocka_unit_test(test_invalid_headers),
		cmocka_unit_test(test_truncated),
		cmocka_unit_test(test_raw_mode),
		cmocka_unit_test(test_parse_time),
		cmocka_unit_test(test_timestamp_lines),
		cmocka_unit_test(test_partial_lines_across_frames),
		cmocka_unit_test(test_line_cap),
		cmocka_unit_test(test_callback_stops),
		cmocka_unit_test(test_linesplit_alone),
	};
	return cmocka_run_group_tests_name("logframe", tests, NULL, NULL);
}
