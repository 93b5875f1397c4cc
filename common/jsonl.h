/*
 * jsonl: reads a stream of JSON lines as it arrives in chunks: Docker's
 * events and its pull, push and build progress.
 *
 * Lines end at '\n'; a '\r' before it and blank lines are skipped. Each value
 * on a line is parsed with cJSON and handed to the callback. Older engines
 * write progress objects back to back without a newline ("}{"), so a line may
 * hold several values: parsing continues where the previous value ended. A
 * line is buffered only until its newline, up to max_line bytes (default
 * 1 MiB); a longer line is an error, as is a line that is not valid JSON (the
 * message gives the byte offset in the stream). After an error, or when the
 * callback returns -1, the reader is stopped and every later call fails with
 * the same message. jsonl_finish parses a last line that had no newline and
 * fails when it is cut short.
 *
 * Ownership: the struct is the caller's (usually embedded); the cJSON tree and
 * the raw text handed to the callback live only for the duration of the call.
 * Not thread-safe (one stream, one thread); never blocks.
 */
#ifndef SLIPWAY_JSONL_H
#define SLIPWAY_JSONL_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "buf.h"
#include "err.h"

#define JSONL_DEFAULT_MAX ((size_t)1 << 20)

struct jsonl_item {
	const cJSON *json;
	const char *raw;      /* the value's text as received (not NUL-terminated) */
	size_t raw_len;
	uint64_t offset;      /* byte offset of raw in the stream */
};

typedef int (*jsonl_fn)(const struct jsonl_item *item, void *arg); /* -1 stops */

/* Fields are private; the struct is public so it can be embedded. */
struct jsonl {
	struct buf line;      /* the current line so far */
	size_t max_line;
	uint64_t line_offset; /* stream offset of the current line's first byte */
	uint64_t values;      /* values handed over */
	int failed;
	char msg[ERR_MSG_MAX];
	jsonl_fn fn;
	void *arg;
};

/* max_line 0 = JSONL_DEFAULT_MAX. Cannot fail. */
void jsonl_init(struct jsonl *j, size_t max_line, jsonl_fn fn, void *arg);
void jsonl_free(struct jsonl *j);

int jsonl_feed(struct jsonl *j, const char *data, size_t len, struct err *err);

/* End of stream: parses a last line without a newline. */
int jsonl_finish(struct jsonl *j, struct err *err);

/* Values handed to the callback so far. */
uint64_t jsonl_count(const struct jsonl *j);

#endif
