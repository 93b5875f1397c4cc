/*
 * gzip: gzip (RFC 1952) compression and capped decompression on zlib.
 *
 * Build contexts, spool files and compressed request bodies pass through here.
 * Everything that inflates has a hard cap on its output, checked before any
 * output is handed over or stored, so a decompression bomb is an error and never
 * an allocation: at most `max_out` bytes ever leave the decompressor.
 *
 * Format: gzip only (no raw deflate, no zlib wrapper). Concatenated members are
 * supported as RFC 1952 section 2.2 allows ("a gzip file consists of a series of
 * members"): the output is the members' output in order and the cap counts them
 * together. Anything after a member that does not start with the gzip magic
 * (1f 8b) is trailing garbage and an error, as is an empty input.
 *
 * Ratio guard (streaming decoder): once more than GZIP_RATIO_GRACE bytes of
 * output have been produced, the output may not exceed GZIP_RATIO_MAX times the
 * compressed bytes consumed so far; a stream that does is refused
 * (GZIP_ERR_RATIO). Deflate cannot exceed about 1032:1, so only runs of a single
 * byte value (zeros, mostly) trip it; ordinary text and logs stay far below
 * 100:1. gzip_decoder_set_ratio changes or disables it. The one-shot
 * gzip_decompress has the whole input in hand and relies on max_out alone.
 *
 * Ownership: the one-shot helpers append to the caller's buf; on error its length
 * and contents are as before (its storage may have grown). Streams are allocated
 * by *_new and released by *_free (which also accepts NULL); they never own the
 * sink's argument or the target buf. A stream that failed stays failed: every
 * later call returns -1 with the same message; only *_free remains useful.
 *
 * Threads and blocking: no shared state; a stream belongs to one thread at a
 * time. Nothing here blocks: it is pure CPU, and file or socket I/O stays with
 * the caller (the sink may write a file; that is the caller's choice to make).
 */
#ifndef SLIPWAY_GZIP_H
#define SLIPWAY_GZIP_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "err.h"

#define GZIP_RATIO_MAX 1000u               /* output : consumed input */
#define GZIP_RATIO_GRACE ((uint64_t)1 << 20) /* output bytes before the ratio applies */

/* Why a decoder failed; GZIP_OK while it has not. */
enum gzip_error {
	GZIP_OK = 0,
	GZIP_ERR_CORRUPT,   /* not gzip, bad header, bad deflate data, CRC or length mismatch */
	GZIP_ERR_TRUNCATED, /* input ended inside a member (no complete trailer yet) */
	GZIP_ERR_TRAILING,  /* bytes after a member that are not another member */
	GZIP_ERR_TOO_LARGE, /* output would exceed max_out */
	GZIP_ERR_RATIO,     /* output / input beyond the ratio guard */
	GZIP_ERR_SINK,      /* the sink returned -1 */
	GZIP_ERR_NOMEM,
	GZIP_ERR_USAGE,     /* bad argument, or a call after finish */
};

/* Receives output in pieces of at most GZIP_CHUNK bytes (never 0 bytes).
 * Returns 0, or -1 (filling err) to stop the stream. */
typedef int (*gzip_sink_fn)(const void *data, size_t len, void *arg, struct err *err);

#define GZIP_CHUNK ((size_t)64 << 10)

/* ---- one-shot ---- */

/* Appends the gzip form of in[0..len) to out. level: 0..9 or -1 (zlib default, 6).
 * -1 when out's cap is reached or memory is short; out is then as before. */
int gzip_compress(const void *in, size_t len, int level, struct buf *out, struct err *err);

/* Appends the decompressed form of the complete gzip data in[0..len) to out.
 * max_out caps this call's output (0: out's own cap alone). -1 (out as before) on
 * corrupt, truncated or trailing data, or when the output would exceed max_out or
 * out's own cap; the message says which ("gzip: truncated: ...", "gzip: corrupt
 * data: ...", "gzip: trailing garbage ...", "gzip: output exceeds the cap ..."). */
int gzip_decompress(const void *in, size_t len, size_t max_out, struct buf *out,
		    struct err *err);

/* ---- streaming compression (spool files, request bodies) ---- */

struct gzip_stream;

/* Compressed bytes go to sink(arg) as they are produced. NULL on error. */
struct gzip_stream *gzip_stream_new(int level, gzip_sink_fn sink, void *arg, struct err *err);
/* Compressed bytes are appended to *out (not owned; must outlive the stream);
 * reaching out's cap fails the stream. */
struct gzip_stream *gzip_stream_new_buf(int level, struct buf *out, struct err *err);

/* Compresses data; output may stay inside zlib until the next flush or finish. */
int gzip_stream_write(struct gzip_stream *s, const void *data, size_t len, struct err *err);

/* Z_SYNC_FLUSH: everything written so far reaches the sink, ending on a byte
 * boundary, so a reader of what the sink stored so far can decompress all of it
 * (its decoder then reports GZIP_ERR_TRUNCATED at the end, having delivered the
 * data). Costs a few bytes and some ratio: flush per batch, not per line. */
int gzip_stream_flush(struct gzip_stream *s, struct err *err);

/* Ends the member (final block + CRC32/ISIZE trailer) and hands everything to
 * the sink. Afterwards only gzip_stream_free and the counters are valid. */
int gzip_stream_finish(struct gzip_stream *s, struct err *err);

uint64_t gzip_stream_bytes_in(const struct gzip_stream *s);
uint64_t gzip_stream_bytes_out(const struct gzip_stream *s);
void gzip_stream_free(struct gzip_stream *s);

/* ---- streaming decompression ---- */

struct gzip_decoder;

/* Decompressed bytes go to sink(arg), at most max_out of them in total
 * (UINT64_MAX: no cap but the ratio guard; 0 allows only empty members).
 * The ratio guard starts on. */
struct gzip_decoder *gzip_decoder_new(uint64_t max_out, gzip_sink_fn sink, void *arg,
				      struct err *err);

/* ratio 0 turns the guard off; grace is the output allowed before it applies. */
void gzip_decoder_set_ratio(struct gzip_decoder *d, unsigned ratio, uint64_t grace);

/* Feeds the next piece of compressed input (any split is fine). -1 on corrupt
 * data, trailing garbage, cap, ratio or sink failure; output delivered before the
 * failure stays delivered (on GZIP_ERR_TOO_LARGE exactly max_out bytes were), so a
 * caller that needs all-or-nothing discards it. */
int gzip_decoder_feed(struct gzip_decoder *d, const void *data, size_t len, struct err *err);

/* The input has ended: 0 when it ended right after a complete member, else -1
 * with GZIP_ERR_TRUNCATED (a spool file cut after its last flush: everything up
 * to that flush has been delivered) or the earlier error. */
int gzip_decoder_finish(struct gzip_decoder *d, struct err *err);

enum gzip_error gzip_decoder_error(const struct gzip_decoder *d);
uint64_t gzip_decoder_bytes_in(const struct gzip_decoder *d);  /* consumed */
uint64_t gzip_decoder_bytes_out(const struct gzip_decoder *d); /* delivered */
unsigned gzip_decoder_members(const struct gzip_decoder *d);  /* completed */
void gzip_decoder_free(struct gzip_decoder *d);

#endif
