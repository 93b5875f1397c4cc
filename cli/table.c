#include "table.h"

#include <stdlib.h>
#include <string.h>

#include "json.h"

struct table {
	size_t ncols;
	size_t nrows;       /* the header included */
	size_t alloc;
	char **cells;       /* nrows * ncols, row-major */
};

/* Length of the valid UTF-8 sequence starting at s (within n bytes), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
	size_t len = s[0] < 0x80 ? 1 : (s[0] & 0xE0) == 0xC0 ? 2 : (s[0] & 0xF0) == 0xE0 ? 3
				      : (s[0] & 0xF8) == 0xF0	      ? 4
									      : 0;
	if (len == 0 || len > n)
		return 0;
	return json_utf8_check((const char *)s, len, NULL) == 0 ? len : 0;
}

char *table_clean(const char *s, char *out, size_t cap)
{
	size_t o = 0;
	if (cap == 0)
		return out;
	if (!s)
		s = "";
	size_t n = strlen(s);
	for (size_t i = 0; i < n;) {
		const unsigned char *p = (const unsigned char *)s + i;
		size_t len = utf8_seq(p, n - i);
		const char *put;
		size_t put_len;
		char repl;
		if (len == 1 && (p[0] < 0x20 || p[0] == 0x7F)) {
			repl = (p[0] == '\n' || p[0] == '\t' || p[0] == '\r') ? ' ' : '?';
			put = &repl;
			put_len = 1;
			i++;
		} else if (len == 0 || (len == 2 && p[0] == 0xC2 && p[1] < 0xA0)) {
			/* invalid UTF-8, or a C1 control (U+0080..U+009F: 8-bit CSI and kin) */
			repl = '?';
			put = &repl;
			put_len = 1;
			i += len ? len : 1;
		} else {
			put = (const char *)p;
			put_len = len;
			i += len;
		}
		if (o + put_len + 1 > cap) {
			/* Cut on a character boundary and mark it. */
			while (o > 0 && o + 4 > cap) {
				o--; /* drop the last character, all its bytes */
				while (o > 0 && ((unsigned char)out[o] & 0xC0) == 0x80)
					o--;
			}
			if (o + 4 <= cap) {
				memcpy(out + o, "...", 3);
				o += 3;
			}
			break;
		}
		memcpy(out + o, put, put_len);
		o += put_len;
	}
	out[o] = '\0';
	return out;
}

size_t table_width(const char *s)
{
	size_t w = 0;
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if ((*p & 0xC0) != 0x80)
			w++;
	}
	return w;
}

struct table *table_new(size_t ncols, const char *const *headers)
{
	if (ncols == 0 || ncols > TABLE_COLS_MAX)
		return NULL;
	struct table *t = calloc(1, sizeof *t);
	if (!t)
		return NULL;
	t->ncols = ncols;
	if (table_add(t, headers) < 0) {
		table_free(t);
		return NULL;
	}
	return t;
}

void table_free(struct table *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < t->nrows * t->ncols; i++)
		free(t->cells[i]);
	free(t->cells);
	free(t);
}

int table_add(struct table *t, const char *const *cells)
{
	if (t->nrows == t->alloc) {
		size_t na = t->alloc ? t->alloc * 2 : 16;
		char **nc = realloc(t->cells, na * t->ncols * sizeof *nc);
		if (!nc)
			return -1;
		t->cells = nc;
		t->alloc = na;
	}
	char **row = t->cells + t->nrows * t->ncols;
	char tmp[TABLE_CELL_MAX];
	for (size_t c = 0; c < t->ncols; c++) {
		const char *v = cells[c];
		table_clean(v && *v ? v : "-", tmp, sizeof tmp);
		row[c] = strdup(tmp);
		if (!row[c]) {
			while (c-- > 0)
				free(row[c]);
			return -1;
		}
	}
	t->nrows++;
	return 0;
}

size_t table_rows(const struct table *t)
{
	return t->nrows - 1;
}

int table_render(const struct table *t, struct buf *out)
{
	size_t width[TABLE_COLS_MAX] = {0};
	for (size_t r = 0; r < t->nrows; r++) {
		for (size_t c = 0; c < t->ncols; c++) {
			size_t w = table_width(t->cells[r * t->ncols + c]);
			if (w > width[c])
				width[c] = w;
		}
	}
	size_t old = out->len;
	for (size_t r = 0; r < t->nrows; r++) {
		for (size_t c = 0; c < t->ncols; c++) {
			const char *cell = t->cells[r * t->ncols + c];
			if (buf_append_str(out, cell) < 0)
				goto fail;
			if (c + 1 == t->ncols)
				break;
			for (size_t pad = table_width(cell); pad < width[c] + 2; pad++) {
				if (buf_append_byte(out, ' ') < 0)
					goto fail;
			}
		}
		if (buf_append_byte(out, '\n') < 0)
			goto fail;
	}
	return 0;
fail:
	out->len = old;
	if (out->data)
		out->data[old] = '\0';
	return -1;
}

int table_print(const struct table *t, FILE *out)
{
	struct buf b;
	buf_init(&b, (size_t)256 << 20);
	int rc = table_render(t, &b);
	if (rc == 0 && b.len && fwrite(b.data, 1, b.len, out) != b.len)
		rc = -1;
	buf_free(&b);
	return rc;
}

static char *plural(char *out, long long n, const char *unit, int ahead)
{
	snprintf(out, TABLE_TIME_MAX, "%s%lld %s%s%s", ahead ? "in " : "", n, unit,
		 n == 1 ? "" : "s", ahead ? "" : " ago");
	return out;
}

char *table_ago(int64_t then_ms, int64_t now_ms, char out[TABLE_TIME_MAX])
{
	if (then_ms <= 0) {
		snprintf(out, TABLE_TIME_MAX, "-");
		return out;
	}
	int64_t d = now_ms - then_ms;
	int ahead = d < 0;
	if (ahead)
		d = -d;
	long long s = (long long)(d / 1000);
	if (s < 1 || (ahead && s < 60)) {
		snprintf(out, TABLE_TIME_MAX, "just now");
		return out;
	}
	if (s < 60)
		return plural(out, s, "second", ahead);
	if (s < 3600)
		return plural(out, s / 60, "minute", ahead);
	if (s < 86400)
		return plural(out, s / 3600, "hour", ahead);
	if (s < 30LL * 86400)
		return plural(out, s / 86400, "day", ahead);
	if (s < 365LL * 86400)
		return plural(out, s / (30LL * 86400), "month", ahead);
	return plural(out, s / (365LL * 86400), "year", ahead);
}

char *table_duration(int64_t ms, char out[TABLE_TIME_MAX])
{
	if (ms <= 0) {
		snprintf(out, TABLE_TIME_MAX, "0s");
		return out;
	}
	long long s = (long long)(ms / 1000);
	if (s == 0)
		snprintf(out, TABLE_TIME_MAX, "%lldms", (long long)ms);
	else if (s < 60)
		snprintf(out, TABLE_TIME_MAX, "%llds", s);
	else if (s < 3600)
		snprintf(out, TABLE_TIME_MAX, "%lldm%llds", s / 60, s % 60);
	else if (s < 86400)
		snprintf(out, TABLE_TIME_MAX, "%lldh%lldm", s / 3600, (s % 3600) / 60);
	else
		snprintf(out, TABLE_TIME_MAX, "%lldd%lldh", s / 86400, (s % 86400) / 3600);
	return out;
}

char *table_bytes(uint64_t n, char out[TABLE_TIME_MAX])
{
	static const char *const units[] = {"KB", "MB", "GB", "TB"};
	if (n < 1024) {
		snprintf(out, TABLE_TIME_MAX, "%llu B", (unsigned long long)n);
		return out;
	}
	double v = (double)n / 1024.0;
	size_t u = 0;
	while (v >= 1024.0 && u + 1 < sizeof units / sizeof units[0]) {
		v /= 1024.0;
		u++;
	}
	snprintf(out, TABLE_TIME_MAX, "%.1f %s", v, units[u]);
	return out;
}
