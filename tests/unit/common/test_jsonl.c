/* Tests for jsonl (JSON-lines reader for Docker's streamed answers). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "buf.h"
#include "jsonl.h"

/* Each value, one per row: "@offset raw=<raw> print=<unformatted>". */
struct collect {
	struct buf out;
	int n;
	int stop_after;
};

static int collect_item(const struct jsonl_item *it, void *arg)
{
	struct collect *c = arg;
	char *p = cJSON_PrintUnformatted(it->json);
	assert_non_null(p);
	buf_printf(&c->out, "@%llu raw=%.*s print=%s\n", (unsigned long long)it->offset,
		   (int)it->raw_len, it->raw, p);
	free(p);
	c->n++;
	return c->stop_after && c->n == c->stop_after ? -1 : 0;
}

static void collect_init(struct collect *c)
{
	memset(c, 0, sizeof *c);
	buf_init(&c->out, 1 << 20);
}

static int feed_chunked(struct jsonl *j, const char *s, size_t len, size_t chunk,
			struct err *e)
{
	for (size_t off = 0; off < len; off += chunk) {
		size_t n = len - off < chunk ? len - off : chunk;
		if (jsonl_feed(j, s + off, n, e) < 0)
			return -1;
	}
	return jsonl_finish(j, e);
}

/* Docker pull progress as an engine writes it, with the oddities a reader meets:
 * \r\n, blank and whitespace-only lines, objects back to back, a last line
 * without a newline. */
static const char stream[] =
	"{\"status\":\"Pulling from slipway-test/testsrv\",\"id\":\"v1\"}\r\n"
	"\r\n"
	"   \t\n"
	"{\"status\":\"Downloading\",\"progressDetail\":{\"current\":10,\"total\":20}}"
	"{\"status\":\"Download complete\"} {\"status\":\"x\"}\n"
	"\n"
	"{\"status\":\"Digest: sha256:abc\"}";

static const char expected[] =
	"@0 raw={\"status\":\"Pulling from slipway-test/testsrv\",\"id\":\"v1\"} "
	"print={\"status\":\"Pulling from slipway-test/testsrv\",\"id\":\"v1\"}\n"
	"@65 raw={\"status\":\"Downloading\",\"progressDetail\":{\"current\":10,\"total\":20}} "
	"print={\"status\":\"Downloading\",\"progressDetail\":{\"current\":10,\"total\":20}}\n"
	"@132 raw={\"status\":\"Download complete\"} print={\"status\":\"Download complete\"}\n"
	"@163 raw={\"status\":\"x\"} print={\"status\":\"x\"}\n"
	"@179 raw={\"status\":\"Digest: sha256:abc\"} print={\"status\":\"Digest: sha256:abc\"}\n";

static void test_every_chunk_size(void **state)
{
	(void)state;
	for (size_t chunk = 1; chunk <= sizeof stream - 1; chunk++) {
		struct collect c;
		collect_init(&c);
		struct jsonl j;
		jsonl_init(&j, 0, collect_item, &c);
		struct err e;
		assert_int_equal(feed_chunked(&j, stream, sizeof stream - 1, chunk, &e), 0);
		if (strcmp(c.out.data, expected) != 0)
			fail_msg("chunk %zu gave:\n%s", chunk, c.out.data);
		assert_int_equal(jsonl_count(&j), 5);
		jsonl_free(&j);
		buf_free(&c.out);
	}
}

static void test_oversize_line(void **state)
{
	(void)state;
	const char s[] = "{\"a\":1}\n{\"b\":\"0123456789012345678901234567890123456789\"}\n{}\n";
	/* Cap 40: the second line (50 bytes) fails, wherever the chunks fall. */
	for (size_t chunk = 1; chunk <= sizeof s - 1; chunk++) {
		struct collect c;
		collect_init(&c);
		struct jsonl j;
		jsonl_init(&j, 40, collect_item, &c);
		struct err e;
		assert_int_equal(feed_chunked(&j, s, sizeof s - 1, chunk, &e), -1);
		assert_string_equal(e.msg,
				    "JSON line at byte offset 8 is longer than the cap of 40 bytes");
		assert_string_equal(c.out.data, "@0 raw={\"a\":1} print={\"a\":1}\n");
		/* Stopped: the next good line is refused too. */
		assert_int_equal(jsonl_feed(&j, "{}\n", 3, &e), -1);
		assert_int_equal(c.n, 1);
		jsonl_free(&j);
		buf_free(&c.out);
	}
	/* A line of exactly the cap is fine. */
	struct collect c;
	collect_init(&c);
	struct jsonl j;
	jsonl_init(&j, 9, collect_item, &c);
	struct err e;
	assert_int_equal(feed_chunked(&j, "{\"a\":123}\n", 10, 4, &e), 0);
	assert_int_equal(c.n, 1);
	jsonl_free(&j);
	buf_free(&c.out);
}

static void test_invalid_json(void **state)
{
	(void)state;
	struct {
		const char *s;
		const char *msg;
		int good;
	} cases[] = {
		{"{\"a\":1}\n{\"b\":}\n",
		 "invalid JSON at byte offset 13 (line starting at byte 8)", 1},
		{"{\"a\":1}{oops}\n", "invalid JSON at byte offset 9 (line starting at byte 0)", 1},
		{"\n\n  nope\n", "invalid JSON at byte offset 4 (line starting at byte 2)", 0},
		{"{\"a\":1}\n{\"b\":[1,2\n", "invalid JSON at byte offset 16 (line starting at byte 8)",
		 1},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct collect c;
		collect_init(&c);
		struct jsonl j;
		jsonl_init(&j, 0, collect_item, &c);
		struct err e;
		assert_int_equal(feed_chunked(&j, cases[i].s, strlen(cases[i].s), 3, &e), -1);
		assert_string_equal(e.msg, cases[i].msg);
		assert_int_equal(c.n, cases[i].good);
		assert_int_equal(jsonl_finish(&j, &e), -1);
		jsonl_free(&j);
		buf_free(&c.out);
	}
}

static void test_truncated_at_end(void **state)
{
	(void)state;
	struct collect c;
	collect_init(&c);
	struct jsonl j;
	jsonl_init(&j, 0, collect_item, &c);
	struct err e;
	assert_int_equal(jsonl_feed(&j, "{\"a\":1}\n{\"status\":\"Downlo", 26, &e), 0);
	assert_int_equal(jsonl_finish(&j, &e), -1);
	assert_string_equal(e.msg, "at the end of the stream: invalid JSON at byte offset 19 "
				   "(line starting at byte 8)");
	assert_int_equal(c.n, 1);
	jsonl_free(&j);
	buf_free(&c.out);
}

static void test_callback_stops(void **state)
{
	(void)state;
	struct collect c;
	collect_init(&c);
	c.stop_after = 2;
	struct jsonl j;
	jsonl_init(&j, 0, collect_item, &c);
	struct err e;
	assert_int_equal(jsonl_feed(&j, "1\n2\n3\n", 6, &e), -1);
	assert_string_equal(e.msg, "stopped by the callback");
	assert_int_equal(c.n, 2);
	jsonl_free(&j);
	buf_free(&c.out);
}

/* Nesting far beyond cJSON's limit fails cleanly instead of overflowing the stack. */
static void test_deep_nesting(void **state)
{
	(void)state;
	size_t depth = 100000;
	char *s = malloc(depth + 2);
	assert_non_null(s);
	memset(s, '[', depth);
	s[depth] = '\n';
	struct collect c;
	collect_init(&c);
	struct jsonl j;
	jsonl_init(&j, depth + 10, collect_item, &c);
	struct err e;
	assert_int_equal(jsonl_feed(&j, s, depth + 1, &e), -1);
	assert_non_null(strstr(e.msg, "invalid JSON"));
	jsonl_free(&j);
	buf_free(&c.out);
	free(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_chunk_size),
		cmocka_unit_test(test_oversize_line),
		cmocka_unit_test(test_invalid_json),
		cmocka_unit_test(test_truncated_at_end),
		cmocka_unit_test(test_callback_stops),
		cmocka_unit_test(test_deep_nesting),
	};
	return cmocka_run_group_tests_name("jsonl", tests, NULL, NULL);
}
