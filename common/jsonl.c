#include "jsonl.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void jsonl_init(struct jsonl *j, size_t max_line, jsonl_fn fn, void *arg)
{
	memset(j, 0, sizeof *j);
	j->max_line = max_line ? max_line : JSONL_DEFAULT_MAX;
	buf_init(&j->line, j->max_line);
	j->fn = fn;
	j->arg = arg;
}

void jsonl_free(struct jsonl *j)
{
	buf_free(&j->line);
}

uint64_t jsonl_count(const struct jsonl *j)
{
	return j->values;
}

static int fail(struct jsonl *j, struct err *err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int fail(struct jsonl *j, struct err *err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(j->msg, sizeof j->msg, fmt, ap);
	va_end(ap);
	j->failed = 1;
	return err_set(err, "%s", j->msg);
}

static int is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Parses every value on one line (without its '\n'); `offset` is the stream
 * offset of line[0]. */
static int parse_line(struct jsonl *j, const char *line, size_t len, uint64_t offset,
		      struct err *err)
{
	size_t i = 0;
	for (;;) {
		while (i < len && is_space(line[i]))
			i++;
		if (i == len)
			return 0;
		const char *end = NULL;
		cJSON *v = cJSON_ParseWithLengthOpts(line + i, len - i, &end, 0);
		if (!v) {
			uint64_t at = offset + (end && end >= line + i ? (uint64_t)(end - line) : i);
			return fail(j, err,
				    "invalid JSON at byte offset %llu (line starting at byte %llu)",
				    (unsigned long long)at, (unsigned long long)offset);
		}
		struct jsonl_item item = {
			.json = v,
			.raw = line + i,
			.raw_len = (size_t)(end - (line + i)),
			.offset = offset + i,
		};
		j->values++;
		int rc = j->fn ? j->fn(&item, j->arg) : 0;
		cJSON_Delete(v);
		if (rc < 0)
			return fail(j, err, "stopped by the callback");
		i = (size_t)(end - line);
	}
}

static int too_long(struct jsonl *j, struct err *err)
{
	return fail(j, err, "JSON line at byte offset %llu is longer than the cap of %zu bytes",
		    (unsigned long long)j->line_offset, j->max_line);
}

int jsonl_feed(struct jsonl *j, const char *data, size_t len, struct err *err)
{
	if (j->failed)
		return err_set(err, "%s", j->msg);
	while (len) {
		const char *nl = memchr(data, '\n', len);
		size_t n = nl ? (size_t)(nl - data) : len;
		if (n > j->max_line - j->line.len)
			return too_long(j, err);
		if (nl && j->line.len == 0) {
			/* A whole line inside this chunk: parse it in place. */
			if (parse_line(j, data, n, j->line_offset, err) < 0)
				return -1;
			j->line_offset += n + 1;
		} else {
			if (buf_append(&j->line, data, n) < 0)
				return fail(j, err, "out of memory for a JSON line");
			if (!nl)
				return 0;
			size_t total = j->line.len;
			if (parse_line(j, j->line.data, total, j->line_offset, err) < 0)
				return -1;
			buf_reset(&j->line);
			j->line_offset += total + 1;
		}
		data += n + 1;
		len -= n + 1;
	}
	return 0;
}

int jsonl_finish(struct jsonl *j, struct err *err)
{
	if (j->failed)
		return err_set(err, "%s", j->msg);
	if (j->line.len == 0)
		return 0;
	if (parse_line(j, j->line.data, j->line.len, j->line_offset, NULL) < 0) {
		char why[ERR_MSG_MAX];
		memcpy(why, j->msg, sizeof why);
		return fail(j, err, "at the end of the stream: %s", why);
	}
	j->line_offset += j->line.len;
	buf_reset(&j->line);
	return 0;
}
