/* libFuzzer target: jsonl. Input: byte 0 picks the chunk size and byte 1 the
 * line cap; the rest is the stream. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "jsonl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct ctx {
	const uint8_t *start;
	size_t size;
};

static int on_item(const struct jsonl_item *it, void *arg)
{
	struct ctx *c = arg;
	if (!it->json || it->raw_len == 0 || it->offset >= c->size ||
	    it->raw_len > c->size - it->offset)
		abort();
	/* raw is the value's own text, which must parse alone. */
	cJSON *again = cJSON_ParseWithLength(it->raw, it->raw_len);
	if (!again || cJSON_IsInvalid(again) != cJSON_IsInvalid(it->json))
		abort();
	cJSON_Delete(again);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	size_t chunk = (size_t)data[0] + 1;
	size_t cap = data[1] < 128 ? (size_t)data[1] + 1 : 0;
	data += 2;
	size -= 2;
	struct ctx c = {data, size};
	struct jsonl j;
	jsonl_init(&j, cap, on_item, &c);
	struct err e;
	int rc = 0;
	for (size_t off = 0; off < size && rc == 0; off += chunk) {
		size_t n = size - off < chunk ? size - off : chunk;
		rc = jsonl_feed(&j, (const char *)data + off, n, &e);
	}
	if (rc == 0)
		jsonl_finish(&j, &e);
	jsonl_free(&j);
	return 0;
}
