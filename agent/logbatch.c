#include "logbatch.h"

#include <stdlib.h>
#include <string.h>

#define KEEP_TEXT ((size_t)64 << 10) /* storage kept by logbatch_reset */
#define KEEP_EVENTS 256

static size_t lim_bytes(const struct logbatch_limits *l)
{
	return l && l->max_bytes ? l->max_bytes : LOGBATCH_MAX_BYTES;
}

static size_t lim_events(const struct logbatch_limits *l)
{
	return l && l->max_events ? l->max_events : LOGBATCH_MAX_EVENTS;
}

static int64_t lim_span(const struct logbatch_limits *l)
{
	return l && l->max_span_ms ? l->max_span_ms : LOGBATCH_MAX_SPAN_MS;
}

void logbatch_init(struct logbatch *b)
{
	memset(b, 0, sizeof *b);
	/* A batch holds at most 1 MiB of messages; the cap adds room for nothing else. */
	buf_init(&b->text, LOGBATCH_MAX_BYTES);
}

void logbatch_free(struct logbatch *b)
{
	buf_free(&b->text);
	free(b->ev);
	logbatch_init(b);
}

void logbatch_reset(struct logbatch *b)
{
	if (b->text.alloc > KEEP_TEXT)
		buf_free(&b->text);
	else
		buf_reset(&b->text);
	if (b->cap > KEEP_EVENTS) {
		free(b->ev);
		b->ev = NULL;
		b->cap = 0;
	}
	b->n = 0;
	b->bytes = 0;
	b->json = 0;
	b->min_ts = b->max_ts = 0;
	b->first_mono_ms = 0;
}

void logbatch_move(struct logbatch *dst, struct logbatch *src)
{
	*dst = *src;
	logbatch_init(src);
}

size_t logbatch_mem(const struct logbatch *b)
{
	return b->text.alloc + b->cap * sizeof *b->ev;
}

int logbatch_fits(const struct logbatch *b, const struct logbatch_limits *l, int64_t ts_ms,
		  size_t len, size_t json_len)
{
	if (len == 0 || len > LOGBATCH_EVENT_MAX)
		return 0;
	if (b->n == 0)
		return 1;
	if (b->n + 1 > lim_events(l))
		return 0;
	if (b->bytes + len + LOGBATCH_EVENT_OVERHEAD > lim_bytes(l))
		return 0;
	if (l && l->max_json && b->json + json_len > l->max_json)
		return 0;
	int64_t lo = ts_ms < b->min_ts ? ts_ms : b->min_ts;
	int64_t hi = ts_ms > b->max_ts ? ts_ms : b->max_ts;
	return hi - lo <= lim_span(l);
}

int logbatch_add(struct logbatch *b, int64_t ts_ms, int stream, const char *msg, size_t len,
		 size_t json_len, int64_t mono_ms)
{
	if (len == 0 || len > LOGBATCH_EVENT_MAX)
		return -1;
	if (b->n == b->cap) {
		size_t nc = b->cap ? b->cap * 2 : 64;
		struct logbatch_event *ev = realloc(b->ev, nc * sizeof *ev);
		if (!ev)
			return -1;
		b->ev = ev;
		b->cap = nc;
	}
	size_t off = b->text.len;
	/* Messages are bounded by the byte limit, plus one event past it at most. */
	if (b->text.max < off + len)
		b->text.max = off + len;
	if (buf_append(&b->text, msg, len) < 0)
		return -1;
	b->ev[b->n++] = (struct logbatch_event){.ts_ms = ts_ms, .off = (uint32_t)off,
						 .len = (uint32_t)len, .stream = (uint8_t)stream};
	b->bytes += len + LOGBATCH_EVENT_OVERHEAD;
	b->json += json_len;
	if (b->n == 1) {
		b->min_ts = b->max_ts = ts_ms;
		b->first_mono_ms = mono_ms;
	} else {
		if (ts_ms < b->min_ts)
			b->min_ts = ts_ms;
		if (ts_ms > b->max_ts)
			b->max_ts = ts_ms;
	}
	return 0;
}

/* Bottom-up merge sort: stable, O(n log n), one scratch array. */
void logbatch_sort(struct logbatch *b)
{
	size_t n = b->n;
	int sorted = 1;
	for (size_t i = 1; i < n && sorted; i++)
		sorted = b->ev[i - 1].ts_ms <= b->ev[i].ts_ms;
	if (sorted)
		return;
	struct logbatch_event *tmp = malloc(n * sizeof *tmp);
	if (!tmp) {
		/* Insertion sort needs no memory; batches are nearly sorted anyway. */
		for (size_t i = 1; i < n; i++) {
			struct logbatch_event e = b->ev[i];
			size_t j = i;
			while (j > 0 && b->ev[j - 1].ts_ms > e.ts_ms) {
				b->ev[j] = b->ev[j - 1];
				j--;
			}
			b->ev[j] = e;
		}
		return;
	}
	struct logbatch_event *src = b->ev, *dst = tmp;
	for (size_t w = 1; w < n; w *= 2) {
		for (size_t lo = 0; lo < n; lo += 2 * w) {
			size_t mid = lo + w < n ? lo + w : n;
			size_t hi = lo + 2 * w < n ? lo + 2 * w : n;
			size_t i = lo, j = mid, k = lo;
			while (i < mid && j < hi)
				dst[k++] = src[j].ts_ms < src[i].ts_ms ? src[j++] : src[i++];
			while (i < mid)
				dst[k++] = src[i++];
			while (j < hi)
				dst[k++] = src[j++];
		}
		struct logbatch_event *t = src;
		src = dst;
		dst = t;
	}
	if (src != b->ev)
		memcpy(b->ev, src, n * sizeof *src);
	free(tmp);
}

static void recount(struct logbatch *b)
{
	b->bytes = 0;
	b->json = 0;
	for (size_t i = 0; i < b->n; i++) {
		const struct logbatch_event *e = &b->ev[i];
		b->bytes += e->len + LOGBATCH_EVENT_OVERHEAD;
		b->json += logbatch_json_len(b->text.data + e->off, e->len);
		if (i == 0 || e->ts_ms < b->min_ts)
			b->min_ts = e->ts_ms;
		if (i == 0 || e->ts_ms > b->max_ts)
			b->max_ts = e->ts_ms;
	}
	if (b->n == 0)
		b->min_ts = b->max_ts = 0;
}

size_t logbatch_filter_age(struct logbatch *b, int64_t now_ms, int64_t max_age_ms,
			   uint64_t *too_old, uint64_t *too_new)
{
	if (max_age_ms <= 0 || max_age_ms > LOGBATCH_PAST_MS)
		max_age_ms = LOGBATCH_PAST_MS;
	int64_t oldest = now_ms - max_age_ms, newest = now_ms + LOGBATCH_FUTURE_MS;
	if (b->n && b->min_ts >= oldest && b->max_ts <= newest)
		return b->n;
	size_t w = 0;
	for (size_t i = 0; i < b->n; i++) {
		int64_t ts = b->ev[i].ts_ms;
		if (ts < oldest) {
			if (too_old)
				(*too_old)++;
		} else if (ts > newest) {
			if (too_new)
				(*too_new)++;
		} else {
			b->ev[w++] = b->ev[i];
		}
	}
	if (w != b->n) {
		b->n = w;
		recount(b);
	}
	return b->n;
}

size_t logbatch_remove(struct logbatch *b, size_t from, size_t to)
{
	if (to > b->n)
		to = b->n;
	if (from >= to)
		return b->n;
	memmove(&b->ev[from], &b->ev[to], (b->n - to) * sizeof *b->ev);
	b->n -= to - from;
	recount(b);
	return b->n;
}

/* ---- UTF-8 ---- */

/* Bytes a sequence starting with c needs in all, 0 for a byte that cannot
 * start one; *lo..*hi is the range allowed for the second byte. */
static int seq_len(unsigned char c, unsigned char *lo, unsigned char *hi)
{
	*lo = 0x80;
	*hi = 0xBF;
	if (c < 0x80)
		return 1;
	if (c >= 0xC2 && c <= 0xDF)
		return 2;
	if (c == 0xE0) {
		*lo = 0xA0;
		return 3;
	}
	if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF)
		return 3;
	if (c == 0xED) {
		*hi = 0x9F; /* no surrogates */
		return 3;
	}
	if (c == 0xF0) {
		*lo = 0x90;
		return 4;
	}
	if (c >= 0xF1 && c <= 0xF3)
		return 4;
	if (c == 0xF4) {
		*hi = 0x8F; /* nothing above U+10FFFF */
		return 4;
	}
	return 0;
}

int logbatch_utf8_clean(const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s, *end = p + len;
	while (p < end) {
		/* ASCII runs, eight bytes at a time. */
		while (end - p >= 8) {
			uint64_t w;
			memcpy(&w, p, 8);
			/* Any byte >= 0x80, or any zero byte, ends the fast path. */
			if ((w & 0x8080808080808080ull) ||
			    ((w - 0x0101010101010101ull) & ~w & 0x8080808080808080ull))
				break;
			p += 8;
		}
		if (p >= end)
			break;
		unsigned char c = *p;
		if (c == 0)
			return 0;
		if (c < 0x80) {
			p++;
			continue;
		}
		unsigned char lo, hi;
		int n = seq_len(c, &lo, &hi);
		if (n == 0 || end - p < n || p[1] < lo || p[1] > hi)
			return 0;
		for (int k = 2; k < n; k++)
			if ((p[k] & 0xC0) != 0x80)
				return 0;
		p += n;
	}
	return 1;
}

static const char replacement[3] = {(char)0xEF, (char)0xBF, (char)0xBD};

long logbatch_utf8_feed(struct logbatch_utf8 *st, const char *in, size_t len, int final,
			struct buf *out)
{
	long repl = 0;
	const unsigned char *p = (const unsigned char *)in, *end = p + len;
	/* Finish a sequence cut by the previous piece. */
	while (st->ncarry > 0) {
		unsigned char lo, hi;
		int n = seq_len(st->carry[0], &lo, &hi);
		size_t have = st->ncarry;
		/* Check what is there, then take bytes until complete or broken. */
		int broken = 0;
		while ((int)have < n && p < end) {
			unsigned char c = *p;
			int ok = have == 1 ? (c >= lo && c <= hi) : ((c & 0xC0) == 0x80);
			if (!ok) {
				broken = 1;
				break;
			}
			st->carry[have++] = c;
			p++;
		}
		if (!broken && (int)have == n) {
			if (buf_append(out, st->carry, have) < 0)
				return -1;
			st->ncarry = 0;
		} else if (broken || final) {
			if (buf_append(out, replacement, 3) < 0)
				return -1;
			repl++;
			st->ncarry = 0;
		} else {
			st->ncarry = have; /* still incomplete and the piece is used up */
			return repl;
		}
	}
	const unsigned char *run = p;
	while (p < end) {
		unsigned char c = *p;
		if (c >= 0x01 && c < 0x80) {
			p++;
			continue;
		}
		if (p > run && buf_append(out, run, (size_t)(p - run)) < 0)
			return -1;
		unsigned char lo, hi;
		int n = c ? seq_len(c, &lo, &hi) : 0;
		if (n == 0) {
			if (buf_append(out, replacement, 3) < 0)
				return -1;
			repl++;
			p++;
			run = p;
			continue;
		}
		int k = 1;
		while (k < n && p + k < end) {
			unsigned char d = p[k];
			int ok = k == 1 ? (d >= lo && d <= hi) : ((d & 0xC0) == 0x80);
			if (!ok)
				break;
			k++;
		}
		if (k == n) {
			p += n; /* valid: stays in the run */
			run = p - n;
			if (buf_append(out, run, (size_t)n) < 0)
				return -1;
			run = p;
			continue;
		}
		if (p + k >= end && !final) {
			/* Cut by the end of this piece: keep for the next one. */
			memcpy(st->carry, p, (size_t)k);
			st->ncarry = (size_t)k;
			return repl;
		}
		/* A maximal ill-formed subpart of k bytes: one replacement. */
		if (buf_append(out, replacement, 3) < 0)
			return -1;
		repl++;
		p += k;
		run = p;
	}
	if (p > run && buf_append(out, run, (size_t)(p - run)) < 0)
		return -1;
	return repl;
}

size_t logbatch_utf8_cut(const char *s, size_t len, size_t max)
{
	if (len <= max)
		return len;
	size_t n = max;
	while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
		n--;
	return n;
}

size_t logbatch_json_len(const char *s, size_t len)
{
	size_t n = len;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c >= 0x20 && c != '"' && c != '\\')
			continue;
		if (c == '"' || c == '\\' || c == '\n' || c == '\r' || c == '\t' || c == '\b' ||
		    c == '\f')
			n += 1;
		else
			n += 5;
	}
	return n;
}

/* ---- positions ---- */

void logpos_init(struct logpos *p)
{
	memset(p, 0, sizeof *p);
}

void logpos_consume(struct logpos *p, int64_t ts_ns)
{
	p->ring[p->head] = ts_ns;
	p->head = (p->head + 1) % LOGPOS_RING;
	if (p->count < LOGPOS_RING)
		p->count++;
}

/* The i-th newest entry (0 = newest). */
static int64_t newest(const struct logpos *p, size_t i)
{
	return p->ring[(p->head + LOGPOS_RING - 1 - i) % LOGPOS_RING];
}

struct logpos_mark logpos_mark(const struct logpos *p, const struct logpos_mark *base)
{
	struct logpos_mark m = {0, 0};
	if (base)
		m = *base;
	if (p->count == 0)
		return m;
	size_t last = p->count < LOGPOS_LAST ? p->count : LOGPOS_LAST;
	int64_t lastmin = newest(p, 0);
	for (size_t i = 1; i < last; i++)
		if (newest(p, i) < lastmin)
			lastmin = newest(p, i);
	int64_t lo = lastmin - LOGPOS_MARGIN_NS;
	if (base && lo < base->since_ns)
		lo = base->since_ns;
	if (p->count == LOGPOS_RING) {
		/* Older events than the ring may share timestamps with it: start past
		 * the oldest one we remember, if that is not past the newest ones. */
		int64_t oldest = newest(p, LOGPOS_RING - 1);
		if (oldest >= lo && oldest + 1 <= lastmin)
			lo = oldest + 1;
	}
	/* Resume at the timestamp of an event we consumed: a line's first
	 * message, never the middle of a line Docker cut into pieces. */
	int found = 0;
	int64_t since = 0;
	for (size_t i = 0; i < p->count; i++) {
		int64_t t = newest(p, i);
		if (t >= lo && (!found || t < since)) {
			since = t;
			found = 1;
		}
	}
	if (!found)
		return m;
	uint64_t k = 0;
	for (size_t i = 0; i < p->count; i++)
		if (newest(p, i) >= since)
			k++;
	m.since_ns = since;
	m.skip = k;
	return m;
}
