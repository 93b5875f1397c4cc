/* libFuzzer target: logframe demultiplexing and linesplit, both modes.
 * Input: byte 0 picks the mode, timestamps and the line cap; byte 1 the chunk
 * size; the rest is the stream. Invariants checked on every line. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "logframe.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct limits {
	size_t max_line;
	int64_t lines;
};

static int on_line(const struct linesplit_line *l, void *arg)
{
	struct limits *lim = arg;
	if (l->len > lim->max_line || l->text[l->len] != '\0' || l->stream < 0 || l->stream > 2)
		abort();
	if (memchr(l->text, '\n', l->len))
		abort();
	if (l->ts_ns < -1)
		abort();
	lim->lines++;
	return 0;
}

static int on_payload(int stream, const char *d, size_t len, void *arg)
{
	(void)d;
	(void)arg;
	if (stream < 0 || stream > 2 || len == 0)
		abort();
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	uint8_t mode = data[0];
	size_t chunk = (size_t)data[1] + 1;
	data += 2;
	size -= 2;
	static const size_t caps[4] = {1, 7, 64, 0};
	size_t cap = caps[(mode >> 2) & 3];
	struct limits lim = {cap ? cap : LINESPLIT_DEFAULT_MAX, 0};
	struct logframe_opts o = {
		.mode = (mode & 1) ? LOGFRAME_RAW : LOGFRAME_MULTIPLEXED,
		.timestamps = (mode >> 1) & 1,
		.max_line = cap,
		.on_line = on_line,
		.on_payload = on_payload,
		.arg = &lim,
	};
	struct logframe *lf = logframe_new(&o);
	if (!lf)
		return 0;
	struct err e;
	int rc = 0;
	for (size_t off = 0; off < size && rc == 0; off += chunk) {
		size_t n = size - off < chunk ? size - off : chunk;
		rc = logframe_feed(lf, (const char *)data + off, n, &e);
	}
	if (rc == 0)
		logframe_finish(lf, &e);
	if (logframe_offset(lf) > size)
		abort();
	logframe_free(lf);

	/* The splitter alone, with a message start at every chunk. */
	struct linesplit ls;
	linesplit_init(&ls, cap, (mode & 0x10) ? LINESPLIT_TIMESTAMPS | LINESPLIT_STRIP_CR : 0, 1,
		       on_line, &lim);
	for (size_t off = 0; off < size; off += chunk) {
		size_t n = size - off < chunk ? size - off : chunk;
		linesplit_message_start(&ls);
		if (linesplit_feed(&ls, (const char *)data + off, n, &e) < 0)
			abort(); /* the callback never stops it, so nothing can fail */
	}
	if (linesplit_finish(&ls, &e) < 0)
		abort();
	linesplit_free(&ls);

	int64_t ns;
	if (linesplit_parse_time((const char *)data, size < 64 ? size : 64, &ns) == 0 && ns < 0)
		abort();
	return 0;
}
