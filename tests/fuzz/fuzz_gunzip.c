/*
 * libFuzzer target for common/gzip: gzip bytes from outside (request bodies,
 * build contexts, spool files) through gzip_decompress and the streaming decoder
 * with a small cap, cross-checked against each other, plus a compress round trip.
 *
 *   make build/fuzz/fuzz_gunzip
 *   build/fuzz/fuzz_gunzip -max_total_time=60 build/fuzz/corpus-fuzz_gunzip
 *
 * Any disagreement or broken promise calls abort(), which libFuzzer reports as a
 * crash with the input saved.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "err.h"
#include "gzip.h"

/* Below GZIP_RATIO_GRACE, so the ratio guard never fires and both forms must agree. */
#define FUZZ_CAP ((size_t)64 << 10)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok)
{
	if (!ok)
		abort();
}

static int sink_buf(const void *p, size_t len, void *arg, struct err *err)
{
	check(len > 0 && len <= GZIP_CHUNK);
	if (buf_append(arg, p, len) < 0)
		return err_set(err, "fuzz sink full");
	return 0;
}

/* Streams `data` through a decoder in pieces whose sizes come from the data itself,
 * so the fuzzer explores splits as well as contents. */
static int stream_decode(const uint8_t *data, size_t size, struct buf *out,
			 enum gzip_error *why)
{
	struct err e;
	struct gzip_decoder *d = gzip_decoder_new(FUZZ_CAP, sink_buf, out, &e);
	check(d != NULL);
	size_t off = 0, k = 0;
	int rc = 0;
	while (off < size && rc == 0) {
		size_t n = 1 + (size_t)(data[k++ % size] % 61);
		if (n > size - off)
			n = size - off;
		rc = gzip_decoder_feed(d, data + off, n, &e);
		off += n;
	}
	if (rc == 0)
		rc = gzip_decoder_finish(d, &e);
	*why = gzip_decoder_error(d);
	check((rc == 0) == (*why == GZIP_OK));
	check(gzip_decoder_bytes_out(d) == out->len);
	check(out->len <= FUZZ_CAP);
	if (*why == GZIP_ERR_TOO_LARGE)
		check(out->len == FUZZ_CAP);
	if (rc == 0)
		check(gzip_decoder_bytes_in(d) == size);
	check(e.msg[0] != '\0' || rc == 0);
	gzip_decoder_free(d);
	return rc;
}

/* Compresses data with a flush in the middle and checks it comes back unchanged,
 * and that the flushed prefix alone decodes to the first half. */
static void round_trip(const uint8_t *data, size_t size)
{
	int level = size ? (int)(data[0] % 11) - 1 : -1; /* -1..9 */
	struct buf z, out;
	buf_init(&z, 0);
	buf_init(&out, 0);
	struct err e;
	struct gzip_stream *s = gzip_stream_new_buf(level, &z, &e);
	check(s != NULL);
	size_t half = size / 2;
	check(gzip_stream_write(s, data, half, &e) == 0);
	check(gzip_stream_flush(s, &e) == 0);
	size_t flushed = z.len;
	check(gzip_stream_write(s, data + half, size - half, &e) == 0);
	check(gzip_stream_finish(s, &e) == 0);
	check(gzip_stream_bytes_in(s) == size);
	check(gzip_stream_bytes_out(s) == z.len);
	gzip_stream_free(s);

	check(gzip_decompress(z.data, z.len, size ? size : 1, &out, &e) == 0);
	check(out.len == size);
	check(size == 0 || memcmp(out.data, data, size) == 0);

	buf_reset(&out);
	enum gzip_error why;
	check(stream_decode((const uint8_t *)z.data, flushed, &out, &why) == -1);
	check(why == GZIP_ERR_TRUNCATED);
	check(out.len == half);
	check(half == 0 || memcmp(out.data, data, half) == 0);
	buf_free(&z);
	buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct buf one;
	buf_init(&one, 0);
	check(buf_append(&one, "p", 1) == 0);
	struct err e;
	int rc1 = gzip_decompress(data, size, FUZZ_CAP, &one, &e);
	if (rc1 != 0) {
		/* Failure leaves out as it was. */
		check(one.len == 1 && one.data[0] == 'p' && one.data[1] == '\0');
		check(strncmp(e.msg, "gzip: ", 6) == 0);
	} else {
		check(one.len - 1 <= FUZZ_CAP);
	}

	struct buf two;
	buf_init(&two, 0);
	enum gzip_error why;
	int rc2 = stream_decode(data, size, &two, &why);
	/* Same verdict however the input is split; same bytes when both succeed. */
	check(rc1 == rc2);
	if (rc1 == 0) {
		check(two.len == one.len - 1);
		check(two.len == 0 || memcmp(two.data, one.data + 1, two.len) == 0);
	}
	buf_free(&one);
	buf_free(&two);

	round_trip(data, size);
	return 0;
}
