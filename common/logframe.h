/*
 * logframe: reads the byte stream of Docker's logs and attach endpoints and
 * turns it into lines, and linesplit, the small line splitter underneath that
 * the log shipper reuses on its own.
 *
 * Docker multiplexes stdout and stderr of a container without a TTY into
 * frames: an 8-byte header (byte 0 the stream: 0 stdin, 1 stdout, 2 stderr;
 * bytes 1-3 zero; bytes 4-7 the payload length, big-endian) and the payload.
 * A container with a TTY has one stream and no headers (LOGFRAME_RAW: all of
 * it is stdout). Bytes arrive in chunks of any size, so a header may be split
 * anywhere; the demultiplexer buffers only those 8 header bytes and streams
 * every payload through as it arrives, so a frame of any size (Docker uses
 * 16 KiB pieces for json-file logs, but nothing stops a bigger one) costs no
 * memory; what is buffered is the current line of each stream, up to its cap.
 *
 * A header with a stream byte above 2 or nonzero padding is an error that
 * stops the stream for good (it usually means the container has a TTY and the
 * raw mode was needed). logframe_finish reports a stream that ended inside a
 * header or a payload, after flushing the partial lines it had.
 *
 * Lines: split on '\n' (the newline is not handed over). With timestamps on,
 * every Docker log message starts with an RFC 3339 timestamp with nanoseconds
 * and a space ("2026-11-26T05:39:11.123456789Z "): it is parsed into
 * nanoseconds since the epoch and handed separately; a line without one gets
 * ts_ns -1 and keeps its text whole. Docker cuts lines longer than 16 KiB into
 * several messages, each with its own timestamp: in multiplexed mode every
 * frame is one message, so the timestamp at the start of a frame that
 * continues a line is dropped and the line is joined back (raw mode has no
 * message boundaries, so there the inner timestamps stay in the text). A line
 * longer than max_line is handed over in pieces of max_line bytes, flagged
 * LINESPLIT_MORE (more of this line follows) and LINESPLIT_CONT (continues
 * the previous piece), so memory stays bounded and no text is lost. A last
 * line without a newline is handed over by *_finish, flagged LINESPLIT_NO_EOL.
 *
 * Ownership: struct linesplit_line and its text live only for the duration
 * of the callback. A callback returning -1 stops the splitter: the feed
 * returns -1 ("stopped by the line callback") and every later feed too.
 * Not thread-safe (one stream, one thread); never blocks.
 */
#ifndef SLIPWAY_LOGFRAME_H
#define SLIPWAY_LOGFRAME_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "err.h"

/* ---- linesplit ---------------------------------------------------------- */

#define LINESPLIT_DEFAULT_MAX ((size_t)1 << 20)
#define LINESPLIT_TS_MAX 40    /* longest timestamp prefix looked at */

/* linesplit_init options */
#define LINESPLIT_TIMESTAMPS 1u /* each message starts with "RFC3339NANO " */
#define LINESPLIT_STRIP_CR 2u   /* drop one '\r' before the '\n' (TTY output) */

/* struct linesplit_line flags */
#define LINESPLIT_MORE 1u       /* cut at max_line: more of this line follows */
#define LINESPLIT_CONT 2u       /* continues a piece already handed over */
#define LINESPLIT_NO_EOL 4u     /* the stream ended before the newline */

struct linesplit_line {
	int stream;        /* the tag given to linesplit_init (logframe: 0, 1 or 2) */
	int64_t ts_ns;     /* nanoseconds since the epoch, -1 when there was none */
	const char *text;  /* NUL-terminated, without the newline */
	size_t len;
	unsigned flags;
};

typedef int (*linesplit_fn)(const struct linesplit_line *line, void *arg); /* -1 stops */

/* Fields are private; the struct is public so it can be embedded. */
struct linesplit {
	struct buf part;        /* text of the current line so far */
	size_t max_line;
	unsigned opts;
	int tag;
	int state;
	int cut;                /* a piece of the current line was handed over */
	int stopped;
	int64_t line_ts;
	size_t ts_len;
	char ts[LINESPLIT_TS_MAX];
	linesplit_fn fn;
	void *arg;
};

/* max_line 0 = LINESPLIT_DEFAULT_MAX. Cannot fail. */
void linesplit_init(struct linesplit *ls, size_t max_line, unsigned opts, int tag,
		    linesplit_fn fn, void *arg);
void linesplit_free(struct linesplit *ls);

int linesplit_feed(struct linesplit *ls, const char *data, size_t len, struct err *err);

/* Tells the splitter that a new Docker log message starts with the next byte
 * (multiplexed mode: a new frame). With LINESPLIT_TIMESTAMPS, a message that
 * continues a cut line starts with a timestamp of its own, which is dropped. */
void linesplit_message_start(struct linesplit *ls);

/* End of input: hands over a last line that had no newline. The splitter is
 * ready for new input afterwards. */
int linesplit_finish(struct linesplit *ls, struct err *err);

/* Parses exactly len bytes of "YYYY-MM-DDTHH:MM:SS[.fraction](Z|+hh:mm|-hh:mm)"
 * into nanoseconds since the epoch (fraction up to 9 digits). -1 on anything
 * else, years before 1970 included. */
int linesplit_parse_time(const char *s, size_t len, int64_t *ns);

/* ---- logframe ----------------------------------------------------------- */

enum logframe_mode {
	LOGFRAME_MULTIPLEXED = 0, /* 8-byte headers: a container without a TTY */
	LOGFRAME_RAW,             /* no headers, everything is stdout: Config.Tty true */
};

enum { LOGFRAME_STDIN = 0, LOGFRAME_STDOUT = 1, LOGFRAME_STDERR = 2 };

/* Raw payload bytes as they arrive, before line splitting (attach streams). */
typedef int (*logframe_payload_fn)(int stream, const char *data, size_t len, void *arg);

struct logframe_opts {
	enum logframe_mode mode;
	int timestamps;               /* the request had timestamps=1 */
	size_t max_line;              /* per stream; 0 = LINESPLIT_DEFAULT_MAX */
	linesplit_fn on_line;         /* may be NULL */
	logframe_payload_fn on_payload; /* may be NULL */
	void *arg;
};

struct logframe;

/* NULL only when out of memory. opts is copied. */
struct logframe *logframe_new(const struct logframe_opts *opts);
void logframe_free(struct logframe *lf);

/* 0, or -1 on an invalid header or a callback's -1; after -1 every call
 * fails with the same message. */
int logframe_feed(struct logframe *lf, const char *data, size_t len, struct err *err);

/* End of stream: hands over partial lines (LINESPLIT_NO_EOL), then -1 when the
 * stream stopped inside a header or a payload ("truncated frame ..."). */
int logframe_finish(struct logframe *lf, struct err *err);

/* Bytes consumed so far (for error messages and tests). */
uint64_t logframe_offset(const struct logframe *lf);

#endif
