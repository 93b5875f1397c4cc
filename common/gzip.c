#include "gzip.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#define ZLIB_CONST /* next_in is const: zlib never writes through it */
#include <zlib.h>

/* windowBits for deflateInit2/inflateInit2: 15-bit window, gzip wrapper only. */
#define GZIP_WBITS (16 + MAX_WBITS)

static const unsigned char gzip_magic[2] = {0x1f, 0x8b};

/* zlib counts in uInt: feed it size_t lengths in pieces no larger than this. */
static uInt zlen(size_t n)
{
	return n > UINT_MAX ? UINT_MAX : (uInt)n;
}

static int buf_sink(const void *data, size_t len, void *arg, struct err *err)
{
	struct buf *out = arg;
	if (buf_append(out, data, len) < 0)
		return err_set(err, "gzip: output exceeds the buffer cap (%zu bytes) or memory",
			       out->max ? out->max : BUF_DEFAULT_MAX);
	return 0;
}

/* ---------------------------------------------------------------- compression */

struct gzip_stream {
	z_stream zs;
	gzip_sink_fn sink;
	void *arg;
	uint64_t bytes_in, bytes_out;
	size_t pending;     /* compressed bytes waiting in chunk */
	int finished;
	int failed;
	struct err failure;
	unsigned char chunk[GZIP_CHUNK];
};

struct gzip_stream *gzip_stream_new(int level, gzip_sink_fn sink, void *arg, struct err *err)
{
	if (level < -1 || level > 9) {
		err_set(err, "gzip: compression level %d is not in -1..9", level);
		return NULL;
	}
	if (!sink) {
		err_set(err, "gzip: no sink");
		return NULL;
	}
	struct gzip_stream *s = calloc(1, sizeof *s);
	if (!s) {
		err_set(err, "gzip: out of memory");
		return NULL;
	}
	int rc = deflateInit2(&s->zs, level, Z_DEFLATED, GZIP_WBITS, 8, Z_DEFAULT_STRATEGY);
	if (rc != Z_OK) {
		err_set(err, "gzip: deflateInit2 failed (%d)", rc);
		free(s);
		return NULL;
	}
	s->sink = sink;
	s->arg = arg;
	return s;
}

struct gzip_stream *gzip_stream_new_buf(int level, struct buf *out, struct err *err)
{
	return gzip_stream_new(level, buf_sink, out, err);
}

static int stream_fail(struct gzip_stream *s, struct err *err)
{
	s->failed = 1;
	if (err)
		*err = s->failure;
	return -1;
}

static int stream_deliver(struct gzip_stream *s)
{
	if (s->pending == 0)
		return 0;
	err_set(&s->failure, "gzip: sink failed");
	if (s->sink(s->chunk, s->pending, s->arg, &s->failure) < 0)
		return -1;
	s->bytes_out += s->pending;
	s->pending = 0;
	return 0;
}

/*
 * Runs deflate over the input already in s->zs with the given flush mode. Output
 * collects in chunk and goes to the sink when chunk is full, and at the end for
 * Z_SYNC_FLUSH and Z_FINISH, so the sink sees few, large pieces.
 */
static int stream_deflate(struct gzip_stream *s, int flush)
{
	for (;;) {
		s->zs.next_out = s->chunk + s->pending;
		s->zs.avail_out = (uInt)(GZIP_CHUNK - s->pending);
		int rc = deflate(&s->zs, flush);
		if (rc == Z_STREAM_ERROR)
			return err_set(&s->failure, "gzip: deflate failed (stream error)");
		s->pending = GZIP_CHUNK - s->zs.avail_out;
		if (s->pending == GZIP_CHUNK && stream_deliver(s) < 0)
			return -1;
		if (rc == Z_STREAM_END)
			break;
		if (rc == Z_BUF_ERROR) {
			/* No progress possible: fine for a flush with nothing new to flush;
			 * with Z_FINISH and free output space it cannot happen. */
			if (flush == Z_FINISH)
				return err_set(&s->failure, "gzip: deflate made no progress");
			break;
		}
		/* zlib leaves output space unused only once it has taken all the input
		 * and, for a flush, written all of it out. */
		if (flush != Z_FINISH && s->zs.avail_out != 0)
			break;
	}
	if (flush != Z_NO_FLUSH && stream_deliver(s) < 0)
		return -1;
	return 0;
}

static int stream_usable(struct gzip_stream *s, struct err *err)
{
	if (s->failed)
		return stream_fail(s, err);
	if (s->finished)
		return err_set(err, "gzip: stream already finished");
	return 0;
}

int gzip_stream_write(struct gzip_stream *s, const void *data, size_t len, struct err *err)
{
	if (stream_usable(s, err) < 0)
		return -1;
	const unsigned char *p = data;
	while (len > 0) {
		uInt n = zlen(len);
		s->zs.next_in = p;
		s->zs.avail_in = n;
		if (stream_deflate(s, Z_NO_FLUSH) < 0)
			return stream_fail(s, err);
		p += n;
		len -= n;
		s->bytes_in += n;
	}
	return 0;
}

int gzip_stream_flush(struct gzip_stream *s, struct err *err)
{
	if (stream_usable(s, err) < 0)
		return -1;
	s->zs.next_in = NULL;
	s->zs.avail_in = 0;
	if (stream_deflate(s, Z_SYNC_FLUSH) < 0)
		return stream_fail(s, err);
	return 0;
}

int gzip_stream_finish(struct gzip_stream *s, struct err *err)
{
	if (stream_usable(s, err) < 0)
		return -1;
	s->zs.next_in = NULL;
	s->zs.avail_in = 0;
	if (stream_deflate(s, Z_FINISH) < 0)
		return stream_fail(s, err);
	s->finished = 1;
	return 0;
}

uint64_t gzip_stream_bytes_in(const struct gzip_stream *s)
{
	return s->bytes_in;
}

uint64_t gzip_stream_bytes_out(const struct gzip_stream *s)
{
	return s->bytes_out;
}

void gzip_stream_free(struct gzip_stream *s)
{
	if (!s)
		return;
	deflateEnd(&s->zs);
	free(s);
}

/* -------------------------------------------------------------- decompression */

struct gzip_decoder {
	z_stream zs;
	gzip_sink_fn sink;
	void *arg;
	uint64_t max_out;    /* UINT64_MAX: uncapped */
	unsigned ratio;      /* 0: guard off */
	uint64_t grace;
	uint64_t bytes_in, bytes_out;
	unsigned members;    /* completed members */
	unsigned magic_seen; /* bytes of the current member's magic checked (0..2) */
	enum gzip_error error;
	struct err failure;
	int finished;
	unsigned char chunk[GZIP_CHUNK];
};

struct gzip_decoder *gzip_decoder_new(uint64_t max_out, gzip_sink_fn sink, void *arg,
				      struct err *err)
{
	if (!sink) {
		err_set(err, "gzip: no sink");
		return NULL;
	}
	struct gzip_decoder *d = calloc(1, sizeof *d);
	if (!d) {
		err_set(err, "gzip: out of memory");
		return NULL;
	}
	int rc = inflateInit2(&d->zs, GZIP_WBITS);
	if (rc != Z_OK) {
		err_set(err, "gzip: inflateInit2 failed (%d)", rc);
		free(d);
		return NULL;
	}
	d->sink = sink;
	d->arg = arg;
	d->max_out = max_out;
	d->ratio = GZIP_RATIO_MAX;
	d->grace = GZIP_RATIO_GRACE;
	return d;
}

void gzip_decoder_set_ratio(struct gzip_decoder *d, unsigned ratio, uint64_t grace)
{
	d->ratio = ratio;
	d->grace = grace;
}

static int decoder_fail(struct gzip_decoder *d, enum gzip_error why, struct err *err)
{
	d->error = why;
	if (err)
		*err = d->failure;
	return -1;
}

/*
 * Checks the bytes of the next member's magic (1f 8b) that are in the input before
 * zlib parses them, so bytes after a member that cannot start another member are
 * told apart (trailing garbage) from a member that is corrupt. zlib consumes the
 * checked bytes itself; magic_seen remembers how many across feeds.
 */
static enum gzip_error decoder_check_magic(struct gzip_decoder *d)
{
	for (size_t k = 0; d->magic_seen < 2 && k < d->zs.avail_in; k++) {
		if (d->zs.next_in[k] != gzip_magic[d->magic_seen]) {
			if (d->members > 0) {
				err_set(&d->failure, "gzip: trailing garbage after member %u "
					"(at compressed byte %llu)", d->members,
					(unsigned long long)(d->bytes_in + k));
				return GZIP_ERR_TRAILING;
			}
			err_set(&d->failure, "gzip: corrupt data: not gzip (bad magic)");
			return GZIP_ERR_CORRUPT;
		}
		d->magic_seen++;
	}
	return GZIP_OK;
}

/* Output over the ratio, once past the grace amount? */
static int ratio_exceeded(const struct gzip_decoder *d, uint64_t out)
{
	if (d->ratio == 0 || out <= d->grace)
		return 0;
	if (d->bytes_in > UINT64_MAX / d->ratio)
		return 0;
	return out > d->bytes_in * d->ratio;
}

/* Inflates what is in zs.next_in/avail_in, handing output to the sink. */
static enum gzip_error decoder_run(struct gzip_decoder *d)
{
	for (;;) {
		if (d->zs.avail_in == 0 && d->magic_seen == 0)
			return GZIP_OK; /* between members: nothing to start on */
		enum gzip_error bad = decoder_check_magic(d);
		if (bad != GZIP_OK)
			return bad;

		uint64_t room = d->max_out - d->bytes_out;
		/* One byte beyond the room, so output past the cap is seen, never passed on. */
		size_t want = room < GZIP_CHUNK ? (size_t)room + 1 : GZIP_CHUNK;
		d->zs.next_out = d->chunk;
		d->zs.avail_out = (uInt)want;
		uInt in_before = d->zs.avail_in;
		int rc = inflate(&d->zs, Z_NO_FLUSH);
		d->bytes_in += in_before - d->zs.avail_in;
		size_t produced = want - d->zs.avail_out;

		switch (rc) {
		case Z_OK:
		case Z_STREAM_END:
		case Z_BUF_ERROR:
			break;
		case Z_MEM_ERROR:
			err_set(&d->failure, "gzip: out of memory");
			return GZIP_ERR_NOMEM;
		case Z_NEED_DICT: /* a zlib-only feature; cannot occur in valid gzip */
		case Z_DATA_ERROR:
		default:
			err_set(&d->failure, "gzip: corrupt data: %s (at compressed byte %llu)",
				d->zs.msg ? d->zs.msg : "invalid deflate stream",
				(unsigned long long)d->bytes_in);
			return GZIP_ERR_CORRUPT;
		}
		/* Up to the cap is delivered; the byte beyond it never is. */
		size_t deliver = produced > room ? (size_t)room : produced;
		if (ratio_exceeded(d, d->bytes_out + deliver)) {
			err_set(&d->failure, "gzip: output exceeds %u times the input after %llu "
				"bytes (%llu from %llu): refusing a likely decompression bomb",
				d->ratio, (unsigned long long)d->grace,
				(unsigned long long)(d->bytes_out + deliver),
				(unsigned long long)d->bytes_in);
			return GZIP_ERR_RATIO;
		}
		if (deliver > 0) {
			err_set(&d->failure, "gzip: sink failed");
			if (d->sink(d->chunk, deliver, d->arg, &d->failure) < 0)
				return GZIP_ERR_SINK;
			d->bytes_out += deliver;
		}
		if (produced > room) {
			err_set(&d->failure, "gzip: output exceeds the cap of %llu bytes",
				(unsigned long long)d->max_out);
			return GZIP_ERR_TOO_LARGE;
		}
		if (rc == Z_STREAM_END) {
			/* zlib stops right after the trailer; what follows must be a member. */
			d->members++;
			d->magic_seen = 0;
			if (inflateReset(&d->zs) != Z_OK) {
				err_set(&d->failure, "gzip: inflateReset failed");
				return GZIP_ERR_CORRUPT;
			}
			continue;
		}
		if (rc == Z_BUF_ERROR)
			return GZIP_OK; /* needs more input */
		if (d->zs.avail_in == 0 && d->zs.avail_out != 0)
			return GZIP_OK; /* all input taken and no output held back */
	}
}

int gzip_decoder_feed(struct gzip_decoder *d, const void *data, size_t len, struct err *err)
{
	if (d->error != GZIP_OK)
		return decoder_fail(d, d->error, err);
	if (d->finished) {
		err_set(&d->failure, "gzip: decoder already finished");
		return decoder_fail(d, GZIP_ERR_USAGE, err);
	}
	const unsigned char *p = data;
	while (len > 0) {
		uInt n = zlen(len);
		d->zs.next_in = p;
		d->zs.avail_in = n;
		enum gzip_error why = decoder_run(d);
		d->zs.next_in = NULL;
		d->zs.avail_in = 0;
		if (why != GZIP_OK)
			return decoder_fail(d, why, err);
		p += n;
		len -= n;
	}
	return 0;
}

int gzip_decoder_finish(struct gzip_decoder *d, struct err *err)
{
	if (d->error != GZIP_OK)
		return decoder_fail(d, d->error, err);
	d->finished = 1;
	if (d->members > 0 && d->magic_seen == 0)
		return 0;
	if (d->members == 0 && d->bytes_in == 0 && d->magic_seen == 0)
		err_set(&d->failure, "gzip: truncated: no data");
	else
		err_set(&d->failure, "gzip: truncated: input ended inside member %u after %llu "
			"compressed bytes (%llu bytes of output delivered)", d->members + 1,
			(unsigned long long)d->bytes_in, (unsigned long long)d->bytes_out);
	return decoder_fail(d, GZIP_ERR_TRUNCATED, err);
}

enum gzip_error gzip_decoder_error(const struct gzip_decoder *d)
{
	return d->error;
}

uint64_t gzip_decoder_bytes_in(const struct gzip_decoder *d)
{
	return d->bytes_in;
}

uint64_t gzip_decoder_bytes_out(const struct gzip_decoder *d)
{
	return d->bytes_out;
}

unsigned gzip_decoder_members(const struct gzip_decoder *d)
{
	return d->members;
}

void gzip_decoder_free(struct gzip_decoder *d)
{
	if (!d)
		return;
	inflateEnd(&d->zs);
	free(d);
}

/* ----------------------------------------------------------------- one-shot */

/* Puts out back to its first `start` bytes after a failed append. */
static void buf_truncate(struct buf *out, size_t start)
{
	out->len = start;
	if (out->data)
		out->data[start] = '\0';
}

int gzip_compress(const void *in, size_t len, int level, struct buf *out, struct err *err)
{
	size_t start = out->len;
	struct gzip_stream *s = gzip_stream_new_buf(level, out, err);
	if (!s)
		return -1;
	int rc = gzip_stream_write(s, in, len, err);
	if (rc == 0)
		rc = gzip_stream_finish(s, err);
	gzip_stream_free(s);
	if (rc < 0)
		buf_truncate(out, start);
	return rc;
}

int gzip_decompress(const void *in, size_t len, size_t max_out, struct buf *out,
		    struct err *err)
{
	size_t start = out->len;
	size_t cap = out->max ? out->max : BUF_DEFAULT_MAX;
	size_t room = cap > out->len ? cap - out->len : 0;
	/* The decoder's cap is the smaller of max_out and out's own room, so a bomb stops
	 * at the cap instead of at a failed allocation. */
	uint64_t limit = max_out && max_out < room ? max_out : room;
	struct gzip_decoder *d = gzip_decoder_new(limit, buf_sink, out, err);
	if (!d)
		return -1;
	gzip_decoder_set_ratio(d, 0, 0); /* the whole input is here; the cap is enough */
	int rc = gzip_decoder_feed(d, in, len, err);
	if (rc == 0)
		rc = gzip_decoder_finish(d, err);
	gzip_decoder_free(d);
	if (rc < 0)
		buf_truncate(out, start);
	return rc;
}
