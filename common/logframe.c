#include "logframe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- timestamps --------------------------------------------------------- */

static int digits(const char *s, int n, int *out)
{
	int v = 0;
	for (int i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	*out = v;
	return 0;
}

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar
 * (H. Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
	y -= m <= 2;
	int64_t era = (y >= 0 ? y : y - 399) / 400;
	int64_t yoe = y - era * 400;
	int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

static int days_in_month(int y, int m)
{
	static const int dim[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
		return 29;
	return dim[m - 1];
}

int linesplit_parse_time(const char *s, size_t len, int64_t *ns)
{
	int y, mo, d, h, mi, sec;
	/* "YYYY-MM-DDTHH:MM:SS" is 19 bytes, then a fraction and a zone. */
	if (len < 20 || digits(s, 4, &y) || s[4] != '-' || digits(s + 5, 2, &mo) ||
	    s[7] != '-' || digits(s + 8, 2, &d) || (s[10] != 'T' && s[10] != 't') ||
	    digits(s + 11, 2, &h) || s[13] != ':' || digits(s + 14, 2, &mi) || s[16] != ':' ||
	    digits(s + 17, 2, &sec))
		return -1;
	if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) || h > 23 ||
	    mi > 59 || sec > 60)
		return -1;
	size_t i = 19;
	int64_t frac = 0;
	if (s[i] == '.') {
		i++;
		int n = 0;
		while (i < len && s[i] >= '0' && s[i] <= '9') {
			if (n == 9)
				return -1;
			frac = frac * 10 + (s[i] - '0');
			n++;
			i++;
		}
		if (n == 0)
			return -1;
		for (; n < 9; n++)
			frac *= 10;
	}
	if (i >= len)
		return -1;
	int64_t offset_s = 0;
	if (s[i] == 'Z' || s[i] == 'z') {
		i++;
	} else if (s[i] == '+' || s[i] == '-') {
		int oh, om;
		if (len - i < 6 || digits(s + i + 1, 2, &oh) || s[i + 3] != ':' ||
		    digits(s + i + 4, 2, &om) || oh > 23 || om > 59)
			return -1;
		offset_s = (int64_t)(oh * 3600 + om * 60) * (s[i] == '-' ? -1 : 1);
		i += 6;
	} else {
		return -1;
	}
	if (i != len)
		return -1;
	int64_t secs = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - offset_s;
	/* int64 nanoseconds reach into the year 2262. */
	if (secs < 0 || secs > INT64_MAX / 1000000000 - 1)
		return -1;
	*ns = secs * 1000000000 + frac;
	return 0;
}

/* ---- linesplit ---------------------------------------------------------- */

enum {
	LS_LINE_START, /* nothing of the current line seen yet */
	LS_TS,         /* collecting the timestamp that starts a line */
	LS_CONT_TS,    /* collecting the timestamp of a message that continues a line */
	LS_TEXT,       /* in the text of a line */
};

void linesplit_init(struct linesplit *ls, size_t max_line, unsigned opts, int tag,
		    linesplit_fn fn, void *arg)
{
	memset(ls, 0, sizeof *ls);
	ls->max_line = max_line ? max_line : LINESPLIT_DEFAULT_MAX;
	buf_init(&ls->part, ls->max_line);
	ls->opts = opts;
	ls->tag = tag;
	ls->state = LS_LINE_START;
	ls->line_ts = -1;
	ls->fn = fn;
	ls->arg = arg;
}

void linesplit_free(struct linesplit *ls)
{
	buf_free(&ls->part);
}

static int emit(struct linesplit *ls, unsigned flags, struct err *err)
{
	struct linesplit_line line = {
		.stream = ls->tag,
		.ts_ns = ls->line_ts,
		.text = ls->part.data ? ls->part.data : "",
		.len = ls->part.len,
		.flags = flags | (ls->cut ? LINESPLIT_CONT : 0),
	};
	if ((ls->opts & LINESPLIT_STRIP_CR) && !(flags & LINESPLIT_MORE) && line.len &&
	    line.text[line.len - 1] == '\r') {
		line.len--;
		ls->part.data[line.len] = '\0';
	}
	int rc = ls->fn ? ls->fn(&line, ls->arg) : 0;
	buf_reset(&ls->part);
	if (rc < 0) {
		ls->stopped = 1;
		return err_set(err, "stopped by the line callback");
	}
	return 0;
}

/* Adds text to the current line; a line reaching the cap is handed over in
 * pieces. The piece is handed over only when more text arrives, so a line of
 * exactly max_line bytes is one piece. */
static int add_text(struct linesplit *ls, const char *p, size_t n, struct err *err)
{
	while (n) {
		size_t room = ls->max_line - ls->part.len;
		if (room == 0) {
			if (emit(ls, LINESPLIT_MORE, err) < 0)
				return -1;
			ls->cut = 1;
			room = ls->max_line;
		}
		size_t k = n < room ? n : room;
		if (buf_append(&ls->part, p, k) < 0)
			return err_set(err, "out of memory for a %zu-byte line", ls->part.len + k);
		p += k;
		n -= k;
	}
	return 0;
}

/* The collected prefix was not a timestamp: it is text after all. */
static int ts_to_text(struct linesplit *ls, struct err *err)
{
	size_t n = ls->ts_len;
	ls->ts_len = 0;
	return add_text(ls, ls->ts, n, err);
}

static int end_line(struct linesplit *ls, unsigned flags, struct err *err)
{
	int rc = emit(ls, flags, err);
	ls->cut = 0;
	ls->line_ts = -1;
	ls->state = LS_LINE_START;
	return rc;
}

int linesplit_feed(struct linesplit *ls, const char *data, size_t len, struct err *err)
{
	if (ls->stopped)
		return err_set(err, "stopped by the line callback");
	while (len) {
		switch (ls->state) {
		case LS_LINE_START:
			ls->line_ts = -1;
			ls->ts_len = 0;
			ls->state = (ls->opts & LINESPLIT_TIMESTAMPS) ? LS_TS : LS_TEXT;
			break;
		case LS_TS:
		case LS_CONT_TS: {
			char c = *data;
			if (c == ' ') {
				int64_t ns;
				data++;
				len--;
				if (linesplit_parse_time(ls->ts, ls->ts_len, &ns) == 0) {
					/* A continuation keeps the time of the line's first part. */
					if (ls->state == LS_TS)
						ls->line_ts = ns;
					ls->ts_len = 0;
				} else if (ts_to_text(ls, err) < 0 || add_text(ls, " ", 1, err) < 0) {
					return -1;
				}
				ls->state = LS_TEXT;
			} else if (c == '\n' || ls->ts_len == LINESPLIT_TS_MAX) {
				if (ts_to_text(ls, err) < 0)
					return -1;
				ls->state = LS_TEXT;
			} else {
				ls->ts[ls->ts_len++] = c;
				data++;
				len--;
			}
			break;
		}
		case LS_TEXT: {
			const char *nl = memchr(data, '\n', len);
			size_t n = nl ? (size_t)(nl - data) : len;
			if (add_text(ls, data, n, err) < 0)
				return -1;
			data += n;
			len -= n;
			if (nl) {
				data++;
				len--;
				if (end_line(ls, 0, err) < 0)
					return -1;
			}
			break;
		}
		}
	}
	return 0;
}

void linesplit_message_start(struct linesplit *ls)
{
	if (!(ls->opts & LINESPLIT_TIMESTAMPS) || ls->stopped)
		return;
	if (ls->state == LS_TEXT) {
		ls->state = LS_CONT_TS;
		ls->ts_len = 0;
	} else if (ls->state == LS_TS || ls->state == LS_CONT_TS) {
		/* A message that was nothing but the start of a timestamp: keep those
		 * bytes as text (cannot fail: they are fewer than any cap... unless the
		 * cap is tiny, where add_text hands over a piece). */
		if (ls->ts_len) {
			if (ts_to_text(ls, NULL) < 0)
				return;
			ls->state = LS_CONT_TS;
		}
	}
}

int linesplit_finish(struct linesplit *ls, struct err *err)
{
	if (ls->stopped)
		return err_set(err, "stopped by the line callback");
	if ((ls->state == LS_TS || ls->state == LS_CONT_TS) && ts_to_text(ls, err) < 0)
		return -1;
	int rc = 0;
	if (ls->part.len)
		rc = end_line(ls, LINESPLIT_NO_EOL, err);
	ls->state = LS_LINE_START;
	ls->cut = 0;
	ls->line_ts = -1;
	ls->ts_len = 0;
	return rc;
}

/* ---- logframe ----------------------------------------------------------- */

#define HEADER_LEN 8

struct logframe {
	struct logframe_opts opts;
	struct linesplit ls[3];
	uint8_t hdr[HEADER_LEN];
	size_t hdr_len;
	int stream;
	uint32_t frame_len;
	uint32_t remaining;   /* payload bytes still to come of the current frame */
	uint64_t offset;      /* bytes consumed */
	int failed;
	char msg[ERR_MSG_MAX];
};

struct logframe *logframe_new(const struct logframe_opts *opts)
{
	struct logframe *lf = calloc(1, sizeof *lf);
	if (!lf)
		return NULL;
	lf->opts = *opts;
	unsigned lopts = 0;
	if (opts->timestamps)
		lopts |= LINESPLIT_TIMESTAMPS;
	if (opts->mode == LOGFRAME_RAW)
		lopts |= LINESPLIT_STRIP_CR; /* a TTY ends its lines with \r\n */
	for (int i = 0; i < 3; i++)
		linesplit_init(&lf->ls[i], opts->max_line, lopts, i, opts->on_line, opts->arg);
	return lf;
}

void logframe_free(struct logframe *lf)
{
	if (!lf)
		return;
	for (int i = 0; i < 3; i++)
		linesplit_free(&lf->ls[i]);
	free(lf);
}

uint64_t logframe_offset(const struct logframe *lf)
{
	return lf->offset;
}

/* Marks the stream failed; the message sticks for every later call. */
static int fail(struct logframe *lf, struct err *err, const char *msg)
{
	lf->failed = 1;
	snprintf(lf->msg, sizeof lf->msg, "%s", msg);
	return err_set(err, "%s", lf->msg);
}

static int payload(struct logframe *lf, int stream, const char *data, size_t len,
		   struct err *err)
{
	if (lf->opts.on_payload && lf->opts.on_payload(stream, data, len, lf->opts.arg) < 0)
		return fail(lf, err, "stopped by the payload callback");
	if (lf->opts.on_line) {
		struct err e;
		if (linesplit_feed(&lf->ls[stream], data, len, &e) < 0)
			return fail(lf, err, e.msg);
	}
	return 0;
}

static int check_header(struct logframe *lf, struct err *err)
{
	char msg[ERR_MSG_MAX];
	uint64_t at = lf->offset - HEADER_LEN;
	if (lf->hdr[0] > 2) {
		snprintf(msg, sizeof msg,
			 "invalid log frame header at byte %llu: stream byte 0x%02x is not 0, 1 "
			 "or 2 (a container with a TTY sends raw output: use the raw mode)",
			 (unsigned long long)at, lf->hdr[0]);
		return fail(lf, err, msg);
	}
	if (lf->hdr[1] || lf->hdr[2] || lf->hdr[3]) {
		snprintf(msg, sizeof msg,
			 "invalid log frame header at byte %llu: padding bytes %02x %02x %02x "
			 "are not zero",
			 (unsigned long long)at, lf->hdr[1], lf->hdr[2], lf->hdr[3]);
		return fail(lf, err, msg);
	}
	return 0;
}

int logframe_feed(struct logframe *lf, const char *data, size_t len, struct err *err)
{
	if (lf->failed)
		return err_set(err, "%s", lf->msg);
	if (lf->opts.mode == LOGFRAME_RAW) {
		lf->offset += len;
		return len ? payload(lf, LOGFRAME_STDOUT, data, len, err) : 0;
	}
	while (len) {
		if (lf->remaining == 0) {
			size_t k = HEADER_LEN - lf->hdr_len;
			if (k > len)
				k = len;
			memcpy(lf->hdr + lf->hdr_len, data, k);
			lf->hdr_len += k;
			lf->offset += k;
			data += k;
			len -= k;
			if (lf->hdr_len < HEADER_LEN)
				break;
			lf->hdr_len = 0;
			if (check_header(lf, err) < 0)
				return -1;
			lf->stream = lf->hdr[0];
			lf->frame_len = (uint32_t)lf->hdr[4] << 24 | (uint32_t)lf->hdr[5] << 16 |
					(uint32_t)lf->hdr[6] << 8 | lf->hdr[7];
			lf->remaining = lf->frame_len;
			linesplit_message_start(&lf->ls[lf->stream]);
			continue;
		}
		size_t k = lf->remaining < len ? lf->remaining : len;
		lf->remaining -= (uint32_t)k;
		lf->offset += k;
		if (payload(lf, lf->stream, data, k, err) < 0)
			return -1;
		data += k;
		len -= k;
	}
	return 0;
}

int logframe_finish(struct logframe *lf, struct err *err)
{
	if (lf->failed)
		return err_set(err, "%s", lf->msg);
	if (lf->opts.on_line) {
		for (int i = 0; i < 3; i++) {
			struct err e;
			if (linesplit_finish(&lf->ls[i], &e) < 0)
				return fail(lf, err, e.msg);
		}
	}
	char msg[ERR_MSG_MAX];
	if (lf->hdr_len) {
		snprintf(msg, sizeof msg,
			 "truncated log stream: it ended inside a frame header (%zu of 8 bytes)",
			 lf->hdr_len);
		return fail(lf, err, msg);
	}
	if (lf->remaining) {
		snprintf(msg, sizeof msg,
			 "truncated log stream: it ended inside a frame (%u of %u payload bytes "
			 "missing)",
			 lf->remaining, lf->frame_len);
		return fail(lf, err, msg);
	}
	return 0;
}
