#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <zlib.h>

#include "buf.h"
#include "err.h"
#include "gzip.h"

#define MiB ((size_t)1 << 20)

/* ---- helpers ---- */

/* Deterministic, moderately compressible text (log-like lines), len bytes. */
static char *make_text(size_t len)
{
	static const char *const words[] = {"deploy", "web", "release", "r42", "healthy",
					    "swap", "drain", "container", "pull", "ok",
					    "sha256:9f86d081884c7d65", "agent", "queue", "lease"};
	char *p = malloc(len + 1);
	assert_non_null(p);
	uint64_t x = 0x2545f4914f6cdd1dull;
	size_t o = 0, line = 0;
	while (o < len) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		char piece[64];
		int n;
		if (x % 9 == 0)
			n = snprintf(piece, sizeof piece, " seq=%zu\n", line++);
		else
			n = snprintf(piece, sizeof piece, " %s=%u", words[x % 14], (unsigned)(x >> 40));
		for (int i = 0; i < n && o < len; i++)
			p[o++] = piece[i];
	}
	p[len] = '\0';
	return p;
}

/* Incompressible bytes. */
static uint8_t *make_noise(size_t len)
{
	uint8_t *p = malloc(len);
	assert_non_null(p);
	uint64_t x = 0x9e3779b97f4a7c15ull;
	for (size_t i = 0; i < len; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[i] = (uint8_t)(x >> 24);
	}
	return p;
}

static void compress_or_die(const void *in, size_t len, int level, struct buf *out)
{
	struct err e = {{0}};
	if (gzip_compress(in, len, level, out, &e) != 0)
		fail_msg("gzip_compress: %s", e.msg);
}

/* Sink: append to a struct buf. */
static int sink_buf(const void *data, size_t len, void *arg, struct err *err)
{
	assert_true(len > 0 && len <= GZIP_CHUNK);
	if (buf_append(arg, data, len) < 0)
		return err_set(err, "test buf full");
	return 0;
}

/* Sink: count bytes, keep nothing. */
struct counter {
	uint64_t bytes;
	uint64_t calls;
	int nonzero;
	uint64_t fail_after; /* 0: never fail */
};

static int sink_count(const void *data, size_t len, void *arg, struct err *err)
{
	struct counter *c = arg;
	assert_true(len > 0 && len <= GZIP_CHUNK);
	if (c->fail_after && c->bytes + len > c->fail_after)
		return err_set(err, "disk full (test)");
	const uint8_t *p = data;
	for (size_t i = 0; i < len; i += 4096)
		c->nonzero |= p[i] != 0;
	c->bytes += len;
	c->calls++;
	return 0;
}

/* Feeds `in` to a new decoder in pieces of the given sizes (cycled). */
static int decode_pieces(const void *in, size_t len, uint64_t max_out, const size_t *sizes,
			 size_t nsizes, struct buf *out, enum gzip_error *why, struct err *e)
{
	struct gzip_decoder *d = gzip_decoder_new(max_out, sink_buf, out, e);
	assert_non_null(d);
	const uint8_t *p = in;
	size_t off = 0, k = 0;
	int rc = 0;
	while (off < len && rc == 0) {
		size_t n = sizes[k++ % nsizes];
		if (n > len - off)
			n = len - off;
		rc = gzip_decoder_feed(d, p + off, n, e);
		off += n;
	}
	if (rc == 0)
		rc = gzip_decoder_finish(d, e);
	*why = gzip_decoder_error(d);
	if (rc == 0)
		assert_int_equal(gzip_decoder_bytes_in(d), len);
	assert_int_equal(gzip_decoder_bytes_out(d), out->len);
	gzip_decoder_free(d);
	return rc;
}

/* ---- one-shot ---- */

static void test_round_trip_empty(void **state)
{
	(void)state;
	struct buf z, out;
	buf_init(&z, 0);
	buf_init(&out, 0);
	compress_or_die("", 0, -1, &z);
	assert_int_equal(z.len, 20); /* 10-byte header, empty final block, 8-byte trailer */
	assert_memory_equal(z.data, "\x1f\x8b\x08", 3);
	assert_int_equal(buf_append_str(&out, "x"), 0);
	struct err e;
	assert_int_equal(gzip_decompress(z.data, z.len, 100, &out, &e), 0);
	assert_int_equal(out.len, 1);
	assert_string_equal(out.data, "x");
	buf_free(&z);
	buf_free(&out);
}

static void test_round_trip_small_all_levels(void **state)
{
	(void)state;
	static const char msg[] = "hello, slipway\nsecond line\n";
	static const int levels[] = {-1, 0, 1, 5, 6, 9};
	for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++) {
		struct buf z, out;
		buf_init(&z, 0);
		buf_init(&out, 0);
		assert_int_equal(buf_append_str(&z, "pre"), 0); /* compress appends */
		compress_or_die(msg, sizeof msg - 1, levels[i], &z);
		assert_memory_equal(z.data, "pre\x1f\x8b", 5);
		struct err e;
		assert_int_equal(gzip_decompress(z.data + 3, z.len - 3, 0, &out, &e), 0);
		assert_int_equal(out.len, sizeof msg - 1);
		assert_memory_equal(out.data, msg, sizeof msg - 1);
		buf_free(&z);
		buf_free(&out);
	}
}

/* Produced by GNU gzip 1.12: printf 'hello, slipway\n' | gzip -n -9 */
static const uint8_t gnu_gzip[] = {
	0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x03, 0xcb, 0x48,
	0xcd, 0xc9, 0xc9, 0xd7, 0x51, 0x28, 0xce, 0xc9, 0x2c, 0x28, 0x4f, 0xac,
	0xe4, 0x02, 0x00, 0xc4, 0x36, 0x82, 0xe6, 0x0f, 0x00, 0x00, 0x00,
};

static void test_decompress_gnu_gzip_output(void **state)
{
	(void)state;
	struct buf out;
	buf_init(&out, 0);
	struct err e;
	assert_int_equal(gzip_decompress(gnu_gzip, sizeof gnu_gzip, 0, &out, &e), 0);
	assert_string_equal(out.data, "hello, slipway\n");

	/* The same with optional header fields (FNAME, FCOMMENT, FEXTRA, FHCRC), built by
	 * hand per RFC 1952 2.3 around the deflate data and trailer above. */
	uint8_t h[128];
	size_t n = 0;
	memcpy(h, "\x1f\x8b\x08\x1e\0\0\0\0\0\x03", 10); /* FHCRC|FEXTRA|FNAME|FCOMMENT */
	n = 10;
	memcpy(h + n, "\x04\x00" "AB\x00\x00", 6); /* XLEN 4: one subfield, no data */
	n += 6;
	memcpy(h + n, "hello.txt", 10);
	n += 10;
	memcpy(h + n, "a comment", 10);
	n += 10;
	uint32_t hcrc = (uint32_t)crc32(0, h, (uInt)n);
	h[n++] = (uint8_t)hcrc;
	h[n++] = (uint8_t)(hcrc >> 8);
	memcpy(h + n, gnu_gzip + 10, sizeof gnu_gzip - 10);
	n += sizeof gnu_gzip - 10;
	buf_reset(&out);
	assert_int_equal(gzip_decompress(h, n, 0, &out, &e), 0);
	assert_string_equal(out.data, "hello, slipway\n");
	/* A wrong header CRC is caught. */
	h[36] ^= 1;
	assert_int_equal(gzip_decompress(h, n, 0, &out, &e), -1);
	assert_non_null(strstr(e.msg, "corrupt"));
	buf_free(&out);
}

static void test_invalid_level(void **state)
{
	(void)state;
	struct buf z;
	buf_init(&z, 0);
	assert_int_equal(buf_append_str(&z, "keep"), 0);
	struct err e;
	assert_int_equal(gzip_compress("abc", 3, 10, &z, &e), -1);
	assert_non_null(strstr(e.msg, "level"));
	assert_int_equal(gzip_compress("abc", 3, -2, &z, &e), -1);
	assert_string_equal(z.data, "keep");
	assert_null(gzip_stream_new(42, sink_buf, &z, &e));
	assert_null(gzip_stream_new(1, NULL, NULL, &e));
	buf_free(&z);
}

static void test_round_trip_10mib(void **state)
{
	(void)state;
	const size_t len = 10 * MiB;
	char *text = make_text(len);
	struct buf z, out;
	buf_init(&z, 16 * MiB);
	buf_init(&out, 16 * MiB);
	compress_or_die(text, len, 6, &z);
	assert_true(z.len < len / 2);
	struct err e;
	/* max_out exactly the size: fine. */
	assert_int_equal(gzip_decompress(z.data, z.len, len, &out, &e), 0);
	assert_int_equal(out.len, len);
	assert_memory_equal(out.data, text, len);

	/* Streaming both ways, odd piece sizes, with flushes in the middle. */
	struct buf z2;
	buf_init(&z2, 16 * MiB);
	struct gzip_stream *s = gzip_stream_new_buf(-1, &z2, &e);
	assert_non_null(s);
	size_t off = 0, step = 1;
	int writes = 0;
	while (off < len) {
		size_t n = step < len - off ? step : len - off;
		assert_int_equal(gzip_stream_write(s, text + off, n, &e), 0);
		off += n;
		step = step * 5 % 300007 + 1;
		if (++writes % 50 == 0)
			assert_int_equal(gzip_stream_flush(s, &e), 0);
	}
	assert_int_equal(gzip_stream_finish(s, &e), 0);
	assert_int_equal(gzip_stream_bytes_in(s), len);
	assert_int_equal(gzip_stream_bytes_out(s), z2.len);
	gzip_stream_free(s);

	static const size_t pieces[] = {1, 2, 3, 4093, 65536, 1, 100000, 7};
	buf_reset(&out);
	enum gzip_error why;
	assert_int_equal(decode_pieces(z2.data, z2.len, len, pieces, 8, &out, &why, &e), 0);
	assert_int_equal(why, GZIP_OK);
	assert_int_equal(out.len, len);
	assert_memory_equal(out.data, text, len);
	/* The one-shot form reads the streamed form too. */
	buf_reset(&out);
	assert_int_equal(gzip_decompress(z2.data, z2.len, 0, &out, &e), 0);
	assert_memory_equal(out.data, text, len);

	buf_free(&z2);
	buf_free(&z);
	buf_free(&out);
	free(text);
}

static void test_output_caps(void **state)
{
	(void)state;
	char *text = make_text(100000);
	struct buf z, out;
	buf_init(&z, 0);
	compress_or_die(text, 100000, 6, &z);
	struct err e;

	/* One byte over max_out: error, out untouched. */
	buf_init(&out, 0);
	assert_int_equal(buf_append_str(&out, "keep"), 0);
	assert_int_equal(gzip_decompress(z.data, z.len, 99999, &out, &e), -1);
	assert_non_null(strstr(e.msg, "exceeds the cap"));
	assert_int_equal(out.len, 4);
	assert_string_equal(out.data, "keep");
	assert_true(out.alloc <= 2 * 100000);

	/* out's own cap counts too: 4 bytes already in, room for 99999 more. */
	struct buf small;
	buf_init(&small, 100003);
	assert_int_equal(buf_append_str(&small, "keep"), 0);
	assert_int_equal(gzip_decompress(z.data, z.len, 0, &small, &e), -1);
	assert_non_null(strstr(e.msg, "exceeds the cap"));
	assert_string_equal(small.data, "keep");
	assert_int_equal(gzip_decompress(z.data, z.len, 1000000, &small, &e), -1);
	assert_int_equal(small.len, 4);
	small.max = 100004; /* exactly enough */
	assert_int_equal(gzip_decompress(z.data, z.len, 0, &small, &e), 0);
	assert_int_equal(small.len, 100004);
	assert_memory_equal(small.data + 4, text, 100000);

	/* max_out exactly the size works and appends. */
	assert_int_equal(gzip_decompress(z.data, z.len, 100000, &out, &e), 0);
	assert_int_equal(out.len, 100004);
	assert_memory_equal(out.data, "keep", 4);
	assert_memory_equal(out.data + 4, text, 100000);

	/* Compressing into a too-small buf: error, unchanged. */
	struct buf zs;
	buf_init(&zs, 64);
	assert_int_equal(buf_append_str(&zs, "zz"), 0);
	assert_int_equal(gzip_compress(text, 100000, 6, &zs, &e), -1);
	assert_non_null(strstr(e.msg, "cap"));
	assert_int_equal(zs.len, 2);
	assert_string_equal(zs.data, "zz");

	buf_free(&zs);
	buf_free(&small);
	buf_free(&out);
	buf_free(&z);
	free(text);
}

/* ---- bombs ---- */

static uint8_t *bomb;
static size_t bomb_len;
#define BOMB_SIZE ((uint64_t)1 << 30)

/* 1 GiB of zeros, compressed by streaming 1 MiB at a time (about 1 MB of gzip). */
static int build_bomb(void **state)
{
	(void)state;
	struct buf z;
	buf_init(&z, 4 * MiB);
	struct err e;
	struct gzip_stream *s = gzip_stream_new_buf(9, &z, &e);
	if (!s)
		return -1;
	uint8_t *zeros = calloc(1, MiB);
	if (!zeros)
		return -1;
	for (uint64_t i = 0; i < BOMB_SIZE / MiB; i++) {
		if (gzip_stream_write(s, zeros, MiB, &e) != 0)
			return -1;
	}
	if (gzip_stream_finish(s, &e) != 0)
		return -1;
	gzip_stream_free(s);
	free(zeros);
	bomb = (uint8_t *)buf_detach(&z, &bomb_len);
	return bomb ? 0 : -1;
}

static int free_bomb(void **state)
{
	(void)state;
	free(bomb);
	return 0;
}

static void test_bomb_sanity(void **state)
{
	(void)state;
	/* It really is 1 GiB: the trailer's ISIZE is the length mod 2^32, little-endian
	 * (2^30 here), and the ratio is deflate's maximum, about 1030:1. */
	assert_true(bomb_len < 2 * MiB);
	assert_true(bomb_len > 900000);
	assert_memory_equal(bomb + bomb_len - 4, "\0\0\0\x40", 4);
	/* Decoding it fully with no limits (counting only) gives exactly 1 GiB. */
	struct counter c = {0};
	struct err e;
	struct gzip_decoder *d = gzip_decoder_new(UINT64_MAX, sink_count, &c, &e);
	gzip_decoder_set_ratio(d, 0, 0);
	assert_int_equal(gzip_decoder_feed(d, bomb, bomb_len, &e), 0);
	assert_int_equal(gzip_decoder_finish(d, &e), 0);
	assert_int_equal(c.bytes, BOMB_SIZE);
	assert_int_equal(gzip_decoder_bytes_out(d), BOMB_SIZE);
	assert_false(c.nonzero);
	gzip_decoder_free(d);
}

static void test_bomb_one_shot_stops_at_cap(void **state)
{
	(void)state;
	struct buf out;
	buf_init(&out, 64 * MiB);
	struct err e;
	assert_int_equal(gzip_decompress(bomb, bomb_len, 10 * MiB, &out, &e), -1);
	assert_non_null(strstr(e.msg, "exceeds the cap"));
	assert_int_equal(out.len, 0);
	/* Never grew past the cap: a doubling buffer holding at most 10 MiB. */
	assert_true(out.alloc <= 16 * MiB + 1);
	buf_free(&out);

	/* With no max_out, out's own cap (default 1 MiB) stops it. */
	struct buf d;
	buf_init(&d, 0);
	assert_int_equal(gzip_decompress(bomb, bomb_len, 0, &d, &e), -1);
	assert_true(d.alloc <= BUF_DEFAULT_MAX + 1);
	buf_free(&d);
}

static void test_bomb_stream_ratio_guard(void **state)
{
	(void)state;
	struct counter c = {0};
	struct err e;
	struct gzip_decoder *d = gzip_decoder_new(UINT64_MAX, sink_count, &c, &e);
	assert_non_null(d);
	/* Fed in 4 KiB pieces, as a request body would arrive. */
	int rc = 0;
	for (size_t off = 0; off < bomb_len && rc == 0; off += 4096)
		rc = gzip_decoder_feed(d, bomb + off, bomb_len - off < 4096 ? bomb_len - off : 4096, &e);
	assert_int_equal(rc, -1);
	assert_int_equal(gzip_decoder_error(d), GZIP_ERR_RATIO);
	assert_non_null(strstr(e.msg, "1000 times"));
	/* Stopped just after the grace amount. */
	assert_true(c.bytes >= GZIP_RATIO_GRACE - GZIP_CHUNK);
	assert_true(c.bytes <= GZIP_RATIO_GRACE + GZIP_CHUNK);
	assert_int_equal(gzip_decoder_bytes_out(d), c.bytes);
	/* Stays failed. */
	struct err e2;
	assert_int_equal(gzip_decoder_feed(d, bomb, 10, &e2), -1);
	assert_string_equal(e2.msg, e.msg);
	assert_int_equal(gzip_decoder_finish(d, &e2), -1);
	assert_int_equal(gzip_decoder_error(d), GZIP_ERR_RATIO);
	gzip_decoder_free(d);
}

static void test_bomb_stream_cap(void **state)
{
	(void)state;
	const uint64_t cap = 20 * MiB + 12345;
	struct counter c = {0};
	struct err e;
	struct gzip_decoder *d = gzip_decoder_new(cap, sink_count, &c, &e);
	gzip_decoder_set_ratio(d, 0, 0);
	assert_int_equal(gzip_decoder_feed(d, bomb, bomb_len, &e), -1);
	assert_int_equal(gzip_decoder_error(d), GZIP_ERR_TOO_LARGE);
	/* Output up to the cap was delivered; nothing beyond it ever was. */
	assert_int_equal(c.bytes, cap);
	assert_int_equal(gzip_decoder_bytes_out(d), cap);
	/* Only a small part of the input was needed to get there. */
	assert_true(gzip_decoder_bytes_in(d) < bomb_len / 10);
	gzip_decoder_free(d);
}

/* Zeros beyond the grace trip the ratio; raising or disabling the guard lets them by. */
static void test_ratio_settings(void **state)
{
	(void)state;
	const size_t len = 4 * MiB;
	uint8_t *zeros = calloc(1, len);
	struct buf z;
	buf_init(&z, 4 * MiB);
	compress_or_die(zeros, len, 9, &z);
	struct err e;
	struct counter c = {0};
	struct gzip_decoder *d = gzip_decoder_new(UINT64_MAX, sink_count, &c, &e);
	assert_int_equal(gzip_decoder_feed(d, z.data, z.len, &e), -1);
	assert_int_equal(gzip_decoder_error(d), GZIP_ERR_RATIO);
	gzip_decoder_free(d);

	c = (struct counter){0};
	d = gzip_decoder_new(UINT64_MAX, sink_count, &c, &e);
	gzip_decoder_set_ratio(d, 2000, GZIP_RATIO_GRACE);
	assert_int_equal(gzip_decoder_feed(d, z.data, z.len, &e), 0);
	assert_int_equal(gzip_decoder_finish(d, &e), 0);
	assert_int_equal(c.bytes, len);
	gzip_decoder_free(d);

	c = (struct counter){0};
	d = gzip_decoder_new(UINT64_MAX, sink_count, &c, &e);
	gzip_decoder_set_ratio(d, 0, 0);
	assert_int_equal(gzip_decoder_feed(d, z.data, z.len, &e), 0);
	assert_int_equal(gzip_decoder_finish(d, &e), 0);
	gzip_decoder_free(d);

	/* A tight guard with no grace still passes ordinary text (ratio a few to one). */
	char *text = make_text(3 * MiB);
	buf_reset(&z);
	compress_or_die(text, 3 * MiB, 6, &z);
	c = (struct counter){0};
	d = gzip_decoder_new(UINT64_MAX, sink_count, &c, &e);
	gzip_decoder_set_ratio(d, 20, 0);
	assert_int_equal(gzip_decoder_feed(d, z.data, z.len, &e), 0);
	assert_int_equal(gzip_decoder_finish(d, &e), 0);
	assert_int_equal(c.bytes, 3 * MiB);
	gzip_decoder_free(d);
	free(text);
	free(zeros);
	buf_free(&z);
}

/* ---- malformed input ---- */

/* One-shot must fail with `word` in the message and leave out alone; the decoder
 * must report `why`. */
static void expect_failure(const void *in, size_t len, const char *word, enum gzip_error want)
{
	struct buf out;
	buf_init(&out, 0);
	assert_int_equal(buf_append_str(&out, "keep"), 0);
	struct err e;
	assert_int_equal(gzip_decompress(in, len, 0, &out, &e), -1);
	if (!strstr(e.msg, word))
		fail_msg("expected '%s' in '%s'", word, e.msg);
	assert_int_equal(out.len, 4);
	assert_string_equal(out.data, "keep");

	static const size_t one[] = {1}, whole[] = {SIZE_MAX};
	enum gzip_error why;
	buf_reset(&out);
	assert_int_equal(decode_pieces(in, len, UINT64_MAX, whole, 1, &out, &why, &e), -1);
	assert_int_equal(why, want);
	buf_reset(&out);
	assert_int_equal(decode_pieces(in, len, UINT64_MAX, one, 1, &out, &why, &e), -1);
	assert_int_equal(why, want);
	buf_free(&out);
}

static void test_truncated(void **state)
{
	(void)state;
	const size_t len = 200000;
	char *text = make_text(len);
	struct buf z;
	buf_init(&z, 0);
	compress_or_die(text, len, 6, &z);
	const size_t cuts[] = {0, 1, 2, 5, 9, 10, 11, z.len / 3, z.len / 2, z.len - 8,
			       z.len - 5, z.len - 1};
	for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
		expect_failure(z.data, cuts[i], "truncated", GZIP_ERR_TRUNCATED);

		/* What the decoder delivered before the end is a prefix of the text. */
		struct buf out;
		buf_init(&out, 0);
		struct err e;
		struct gzip_decoder *d = gzip_decoder_new(UINT64_MAX, sink_buf, &out, &e);
		assert_int_equal(gzip_decoder_feed(d, z.data, cuts[i], &e), 0);
		assert_int_equal(gzip_decoder_finish(d, &e), -1);
		assert_int_equal(gzip_decoder_error(d), GZIP_ERR_TRUNCATED);
		assert_non_null(strstr(e.msg, "truncated"));
		assert_true(out.len <= len);
		if (out.len)
			assert_memory_equal(out.data, text, out.len);
		if (cuts[i] >= z.len - 8)
			assert_int_equal(out.len, len); /* only the trailer was missing */
		gzip_decoder_free(d);
		buf_free(&out);
	}
	buf_free(&z);
	free(text);
}

static void test_corrupt(void **state)
{
	(void)state;
	char *text = make_text(50000);
	struct buf z;
	buf_init(&z, 0);
	compress_or_die(text, 50000, 6, &z);
	uint8_t *t = malloc(z.len);

	memcpy(t, z.data, z.len);
	t[z.len - 8] ^= 0x01; /* CRC32 */
	expect_failure(t, z.len, "incorrect data check", GZIP_ERR_CORRUPT);
	memcpy(t, z.data, z.len);
	t[z.len - 5] ^= 0x80; /* CRC32, top byte */
	expect_failure(t, z.len, "corrupt", GZIP_ERR_CORRUPT);
	memcpy(t, z.data, z.len);
	t[z.len - 1] ^= 0x01; /* ISIZE */
	expect_failure(t, z.len, "incorrect length check", GZIP_ERR_CORRUPT);
	memcpy(t, z.data, z.len);
	t[0] = 0x1e; /* magic */
	expect_failure(t, z.len, "not gzip", GZIP_ERR_CORRUPT);
	memcpy(t, z.data, z.len);
	t[1] = 0x8c;
	expect_failure(t, z.len, "not gzip", GZIP_ERR_CORRUPT);
	memcpy(t, z.data, z.len);
	t[2] = 7; /* compression method */
	expect_failure(t, z.len, "corrupt", GZIP_ERR_CORRUPT);
	memcpy(t, z.data, z.len);
	t[3] = 0xe0; /* reserved flag bits */
	expect_failure(t, z.len, "corrupt", GZIP_ERR_CORRUPT);
	memcpy(t, z.data, z.len);
	t[10] = 0xff; /* first deflate block header: invalid block type */
	expect_failure(t, z.len, "corrupt", GZIP_ERR_CORRUPT);
	/* Damage in the middle of the deflate data is caught somewhere. */
	for (size_t pos = 20; pos < z.len - 8; pos += z.len / 17) {
		memcpy(t, z.data, z.len);
		t[pos] ^= 0x55;
		expect_failure(t, z.len, "corrupt", GZIP_ERR_CORRUPT);
	}

	/* Other formats: zlib wrapper, raw deflate, plain text. */
	uLongf zl = compressBound(50000);
	uint8_t *zw = malloc(zl);
	assert_int_equal(compress(zw, &zl, (const Bytef *)text, 50000), Z_OK);
	expect_failure(zw, zl, "not gzip", GZIP_ERR_CORRUPT);
	free(zw);
	expect_failure(z.data + 10, z.len - 18, "not gzip", GZIP_ERR_CORRUPT);
	expect_failure("hello world", 11, "not gzip", GZIP_ERR_CORRUPT);

	free(t);
	buf_free(&z);
	free(text);
}

static void test_trailing_garbage(void **state)
{
	(void)state;
	struct buf z;
	buf_init(&z, 0);
	compress_or_die("payload", 7, 6, &z);
	size_t base = z.len;

	assert_int_equal(buf_append_str(&z, "xyz"), 0);
	expect_failure(z.data, z.len, "trailing garbage", GZIP_ERR_TRAILING);
	z.len = base;
	assert_int_equal(buf_append(&z, "\0\0\0\0", 4), 0); /* zero padding */
	expect_failure(z.data, z.len, "trailing garbage", GZIP_ERR_TRAILING);
	z.len = base;
	assert_int_equal(buf_append(&z, "\x1f\x8c", 2), 0); /* half a magic */
	expect_failure(z.data, z.len, "trailing garbage", GZIP_ERR_TRAILING);
	/* A lone 1f (or 1f 8b) may be the start of a next member: truncated, not garbage. */
	z.len = base;
	assert_int_equal(buf_append(&z, "\x1f", 1), 0);
	expect_failure(z.data, z.len, "truncated", GZIP_ERR_TRUNCATED);
	assert_int_equal(buf_append(&z, "\x8b", 1), 0);
	expect_failure(z.data, z.len, "truncated", GZIP_ERR_TRUNCATED);

	/* Garbage arriving in a later feed: the member's output was delivered. */
	z.len = base;
	struct buf out;
	buf_init(&out, 0);
	struct err e;
	struct gzip_decoder *d = gzip_decoder_new(1000, sink_buf, &out, &e);
	assert_int_equal(gzip_decoder_feed(d, z.data, z.len, &e), 0);
	assert_string_equal(out.data, "payload");
	assert_int_equal(gzip_decoder_members(d), 1);
	assert_int_equal(gzip_decoder_feed(d, "PK\x03\x04", 4, &e), -1);
	assert_int_equal(gzip_decoder_error(d), GZIP_ERR_TRAILING);
	assert_non_null(strstr(e.msg, "after member 1"));
	gzip_decoder_free(d);
	buf_free(&out);
	buf_free(&z);
}

static void test_concatenated_members(void **state)
{
	(void)state;
	struct buf z, out;
	buf_init(&z, 0);
	buf_init(&out, 0);
	compress_or_die("first ", 6, 6, &z);
	compress_or_die("", 0, 1, &z);
	compress_or_die("second", 6, 9, &z);
	struct err e;
	assert_int_equal(gzip_decompress(z.data, z.len, 12, &out, &e), 0);
	assert_string_equal(out.data, "first second");
	/* The cap counts all members together. */
	buf_reset(&out);
	assert_int_equal(gzip_decompress(z.data, z.len, 11, &out, &e), -1);
	assert_int_equal(out.len, 0);

	/* Byte by byte, so every boundary (magic included) splits across feeds. */
	buf_reset(&out);
	struct gzip_decoder *d = gzip_decoder_new(UINT64_MAX, sink_buf, &out, &e);
	for (size_t i = 0; i < z.len; i++)
		assert_int_equal(gzip_decoder_feed(d, z.data + i, 1, &e), 0);
	assert_int_equal(gzip_decoder_finish(d, &e), 0);
	assert_int_equal(gzip_decoder_members(d), 3);
	assert_string_equal(out.data, "first second");
	gzip_decoder_free(d);

	/* GNU gzip output appended to ours. */
	assert_int_equal(buf_append(&z, gnu_gzip, sizeof gnu_gzip), 0);
	buf_reset(&out);
	assert_int_equal(gzip_decompress(z.data, z.len, 0, &out, &e), 0);
	assert_string_equal(out.data, "first secondhello, slipway\n");
	buf_free(&out);
	buf_free(&z);
}

/* ---- streaming compression ---- */

/* A spool file being written: what has been flushed so far decodes in full even
 * though the member has no trailer yet. */
static void test_stream_flush_readable_midway(void **state)
{
	(void)state;
	struct buf file;
	buf_init(&file, MiB);
	struct err e;
	struct gzip_stream *s = gzip_stream_new_buf(6, &file, &e);
	assert_non_null(s);

	/* Flushing before any data: a header and an empty block, 0 bytes of output. */
	assert_int_equal(gzip_stream_flush(s, &e), 0);
	assert_true(file.len > 10);

	static const char l1[] = "ts=1 event=deploy.start app=web\n";
	static const char l2[] = "ts=2 event=deploy.done app=web\n";
	assert_int_equal(gzip_stream_write(s, l1, sizeof l1 - 1, &e), 0);
	assert_int_equal(gzip_stream_flush(s, &e), 0);
	size_t snap1 = file.len;
	/* A second flush with nothing new adds nothing. */
	assert_int_equal(gzip_stream_flush(s, &e), 0);
	assert_int_equal(file.len, snap1);

	struct buf out;
	buf_init(&out, 0);
	struct gzip_decoder *d = gzip_decoder_new(MiB, sink_buf, &out, &e);
	assert_int_equal(gzip_decoder_feed(d, file.data, snap1, &e), 0);
	assert_string_equal(out.data, l1);
	assert_int_equal(gzip_decoder_finish(d, &e), -1);
	assert_int_equal(gzip_decoder_error(d), GZIP_ERR_TRUNCATED);
	assert_string_equal(out.data, l1); /* delivered data stays delivered */
	gzip_decoder_free(d);
	/* The one-shot form calls it truncated. */
	buf_reset(&out);
	assert_int_equal(gzip_decompress(file.data, snap1, 0, &out, &e), -1);
	assert_non_null(strstr(e.msg, "truncated"));

	/* Unflushed data may still sit in zlib; after the next flush both lines read. */
	assert_int_equal(gzip_stream_write(s, l2, sizeof l2 - 1, &e), 0);
	assert_int_equal(gzip_stream_flush(s, &e), 0);
	buf_reset(&out);
	d = gzip_decoder_new(MiB, sink_buf, &out, &e);
	assert_int_equal(gzip_decoder_feed(d, file.data, file.len, &e), 0);
	assert_int_equal(gzip_decoder_finish(d, &e), -1);
	assert_int_equal(gzip_decoder_error(d), GZIP_ERR_TRUNCATED);
	assert_int_equal(out.len, sizeof l1 + sizeof l2 - 2);
	assert_memory_equal(out.data + sizeof l1 - 1, l2, sizeof l2 - 1);
	gzip_decoder_free(d);

	assert_int_equal(gzip_stream_finish(s, &e), 0);
	assert_int_equal(gzip_stream_bytes_in(s), sizeof l1 + sizeof l2 - 2);
	assert_int_equal(gzip_stream_bytes_out(s), file.len);
	buf_reset(&out);
	assert_int_equal(gzip_decompress(file.data, file.len, 0, &out, &e), 0);
	assert_int_equal(out.len, sizeof l1 + sizeof l2 - 2);
	gzip_stream_free(s);
	buf_free(&out);
	buf_free(&file);
}

static void test_stream_misuse(void **state)
{
	(void)state;
	struct buf z;
	buf_init(&z, 0);
	struct err e;
	struct gzip_stream *s = gzip_stream_new_buf(6, &z, &e);
	assert_int_equal(gzip_stream_write(s, "abc", 3, &e), 0);
	assert_int_equal(gzip_stream_write(s, NULL, 0, &e), 0);
	assert_int_equal(gzip_stream_finish(s, &e), 0);
	size_t len = z.len;
	assert_int_equal(gzip_stream_write(s, "abc", 3, &e), -1);
	assert_non_null(strstr(e.msg, "finished"));
	assert_int_equal(gzip_stream_flush(s, &e), -1);
	assert_int_equal(gzip_stream_finish(s, &e), -1);
	assert_int_equal(z.len, len);
	gzip_stream_free(s);
	gzip_stream_free(NULL);
	gzip_decoder_free(NULL);
	buf_free(&z);
}

static void test_stream_sink_failure(void **state)
{
	(void)state;
	const size_t len = 2 * MiB;
	uint8_t *noise = make_noise(len);
	struct counter c = {.fail_after = 200000};
	struct err e;
	struct gzip_stream *s = gzip_stream_new(1, sink_count, &c, &e);
	int rc = 0;
	for (size_t off = 0; off < len && rc == 0; off += 10000)
		rc = gzip_stream_write(s, noise + off, len - off < 10000 ? len - off : 10000, &e);
	assert_int_equal(rc, -1);
	assert_string_equal(e.msg, "disk full (test)");
	assert_true(c.bytes <= 200000);
	assert_int_equal(gzip_stream_bytes_out(s), c.bytes);
	/* Failed for good, with the same reason. */
	struct err e2;
	assert_int_equal(gzip_stream_write(s, "x", 1, &e2), -1);
	assert_string_equal(e2.msg, "disk full (test)");
	assert_int_equal(gzip_stream_flush(s, &e2), -1);
	assert_int_equal(gzip_stream_finish(s, &e2), -1);
	assert_string_equal(e2.msg, "disk full (test)");
	gzip_stream_free(s);

	/* A buf target with a small cap fails the same way. */
	struct buf small;
	buf_init(&small, 100);
	s = gzip_stream_new_buf(6, &small, &e);
	assert_int_equal(gzip_stream_write(s, noise, 10000, &e), 0); /* held in zlib */
	assert_int_equal(gzip_stream_finish(s, &e), -1);
	assert_non_null(strstr(e.msg, "cap"));
	assert_true(small.len <= 100);
	gzip_stream_free(s);
	buf_free(&small);
	free(noise);
}

/* Large writes reach the sink in few, full chunks, not in dribbles. */
static void test_stream_chunking(void **state)
{
	(void)state;
	const size_t len = 4 * MiB;
	uint8_t *noise = make_noise(len);
	struct counter c = {0};
	struct err e;
	struct gzip_stream *s = gzip_stream_new(0, sink_count, &c, &e); /* stored blocks */
	assert_int_equal(gzip_stream_write(s, noise, len, &e), 0);
	assert_int_equal(gzip_stream_finish(s, &e), 0);
	assert_true(c.bytes > len);
	assert_true(c.calls <= c.bytes / GZIP_CHUNK + 1);
	gzip_stream_free(s);
	free(noise);
}

/* ---- decoder specifics ---- */

static void test_decoder_sink_failure(void **state)
{
	(void)state;
	char *text = make_text(500000);
	struct buf z;
	buf_init(&z, 0);
	compress_or_die(text, 500000, 6, &z);
	struct counter c = {.fail_after = 100000};
	struct err e;
	struct gzip_decoder *d = gzip_decoder_new(UINT64_MAX, sink_count, &c, &e);
	assert_int_equal(gzip_decoder_feed(d, z.data, z.len, &e), -1);
	assert_int_equal(gzip_decoder_error(d), GZIP_ERR_SINK);
	assert_string_equal(e.msg, "disk full (test)");
	assert_true(c.bytes <= 100000);
	assert_int_equal(gzip_decoder_bytes_out(d), c.bytes);
	struct err e2;
	assert_int_equal(gzip_decoder_finish(d, &e2), -1);
	assert_string_equal(e2.msg, "disk full (test)");
	gzip_decoder_free(d);
	buf_free(&z);
	free(text);
}

static void test_decoder_exact_and_zero_caps(void **state)
{
	(void)state;
	struct buf z, out;
	buf_init(&z, 0);
	buf_init(&out, 0);
	compress_or_die("0123456789", 10, 6, &z);
	static const size_t whole[] = {SIZE_MAX}, one[] = {1};
	enum gzip_error why;
	struct err e;
	assert_int_equal(decode_pieces(z.data, z.len, 10, whole, 1, &out, &why, &e), 0);
	assert_string_equal(out.data, "0123456789");
	buf_reset(&out);
	assert_int_equal(decode_pieces(z.data, z.len, 10, one, 1, &out, &why, &e), 0);
	buf_reset(&out);
	assert_int_equal(decode_pieces(z.data, z.len, 9, whole, 1, &out, &why, &e), -1);
	assert_int_equal(why, GZIP_ERR_TOO_LARGE);
	assert_true(out.len <= 9);
	buf_reset(&out);
	assert_int_equal(decode_pieces(z.data, z.len, 0, one, 1, &out, &why, &e), -1);
	assert_int_equal(why, GZIP_ERR_TOO_LARGE);
	assert_int_equal(out.len, 0);

	/* A cap of 0 still admits empty members. */
	buf_reset(&z);
	compress_or_die("", 0, 6, &z);
	compress_or_die("", 0, 6, &z);
	buf_reset(&out);
	assert_int_equal(decode_pieces(z.data, z.len, 0, whole, 1, &out, &why, &e), 0);
	assert_int_equal(out.len, 0);
	buf_free(&z);
	buf_free(&out);
}

static void test_decoder_misuse(void **state)
{
	(void)state;
	struct buf z, out;
	buf_init(&z, 0);
	buf_init(&out, 0);
	compress_or_die("abc", 3, 6, &z);
	struct err e;
	assert_null(gzip_decoder_new(10, NULL, NULL, &e));
	struct gzip_decoder *d = gzip_decoder_new(10, sink_buf, &out, &e);
	assert_int_equal(gzip_decoder_feed(d, NULL, 0, &e), 0);
	assert_int_equal(gzip_decoder_feed(d, z.data, z.len, &e), 0);
	assert_int_equal(gzip_decoder_finish(d, &e), 0);
	assert_int_equal(gzip_decoder_finish(d, &e), 0); /* idempotent */
	assert_int_equal(gzip_decoder_feed(d, z.data, z.len, &e), -1);
	assert_int_equal(gzip_decoder_error(d), GZIP_ERR_USAGE);
	assert_string_equal(out.data, "abc");
	gzip_decoder_free(d);

	/* Nothing fed at all: truncated ("no data"). */
	d = gzip_decoder_new(10, sink_buf, &out, &e);
	assert_int_equal(gzip_decoder_finish(d, &e), -1);
	assert_int_equal(gzip_decoder_error(d), GZIP_ERR_TRUNCATED);
	assert_non_null(strstr(e.msg, "no data"));
	gzip_decoder_free(d);
	buf_free(&z);
	buf_free(&out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip_empty),
		cmocka_unit_test(test_round_trip_small_all_levels),
		cmocka_unit_test(test_decompress_gnu_gzip_output),
		cmocka_unit_test(test_invalid_level),
		cmocka_unit_test(test_round_trip_10mib),
		cmocka_unit_test(test_output_caps),
		cmocka_unit_test(test_bomb_sanity),
		cmocka_unit_test(test_bomb_one_shot_stops_at_cap),
		cmocka_unit_test(test_bomb_stream_ratio_guard),
		cmocka_unit_test(test_bomb_stream_cap),
		cmocka_unit_test(test_ratio_settings),
		cmocka_unit_test(test_truncated),
		cmocka_unit_test(test_corrupt),
		cmocka_unit_test(test_trailing_garbage),
		cmocka_unit_test(test_concatenated_members),
		cmocka_unit_test(test_stream_flush_readable_midway),
		cmocka_unit_test(test_stream_misuse),
		cmocka_unit_test(test_stream_sink_failure),
		cmocka_unit_test(test_stream_chunking),
		cmocka_unit_test(test_decoder_sink_failure),
		cmocka_unit_test(test_decoder_exact_and_zero_caps),
		cmocka_unit_test(test_decoder_misuse),
	};
	return cmocka_run_group_tests_name("gzip", tests, build_bomb, free_bomb);
}
