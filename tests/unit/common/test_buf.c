#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "buf.h"

static void test_append_keeps_nul(void **state)
{
	(void)state;
	struct buf b;
	buf_init(&b, 0);
	assert_null(b.data);
	assert_int_equal(buf_append(&b, "abc", 3), 0);
	assert_int_equal(buf_append_str(&b, "de"), 0);
	assert_int_equal(buf_append_byte(&b, 'f'), 0);
	assert_int_equal(b.len, 6);
	assert_string_equal(b.data, "abcdef");
	assert_int_equal(b.data[6], '\0');
	/* Binary data with embedded NULs counts every byte. */
	assert_int_equal(buf_append(&b, "\0x", 2), 0);
	assert_int_equal(b.len, 8);
	assert_memory_equal(b.data, "abcdef\0x", 9);
	buf_free(&b);
	assert_null(b.data);
	assert_int_equal(b.len, 0);
}

static void test_append_empty_allocates_string(void **state)
{
	(void)state;
	struct buf b;
	buf_init(&b, 0);
	assert_int_equal(buf_append(&b, NULL, 0), 0);
	assert_non_null(b.data);
	assert_string_equal(b.data, "");
	assert_int_equal(b.len, 0);
	buf_free(&b);
}

static void test_cap_leaves_buffer_unchanged(void **state)
{
	(void)state;
	struct buf b;
	buf_init(&b, 10);
	/* Too big from empty: nothing allocated. */
	assert_int_equal(buf_append(&b, "01234567890", 11), -1);
	assert_null(b.data);
	assert_int_equal(b.len, 0);

	assert_int_equal(buf_append(&b, "0123456", 7), 0);
	char *data = b.data;
	size_t alloc = b.alloc;
	assert_int_equal(buf_append(&b, "7890", 4), -1);
	assert_int_equal(buf_append_str(&b, "7890"), -1);
	assert_int_equal(buf_printf(&b, "%d", 7890), -1);
	assert_int_equal(b.len, 7);
	assert_ptr_equal(b.data, data);
	assert_int_equal(b.alloc, alloc);
	assert_string_equal(b.data, "0123456");

	/* Filling exactly to the cap is allowed; one more byte is not. */
	assert_int_equal(buf_append(&b, "789", 3), 0);
	assert_int_equal(b.len, 10);
	assert_int_equal(buf_append_byte(&b, 'x'), -1);
	assert_string_equal(b.data, "0123456789");
	/* Storage never grows past cap + NUL. */
	assert_true(b.alloc <= 11);
	buf_free(&b);
}

static void test_default_cap(void **state)
{
	(void)state;
	struct buf b;
	buf_init(&b, 0);
	char *big = calloc(1, BUF_DEFAULT_MAX + 1);
	assert_non_null(big);
	assert_int_equal(buf_append(&b, big, BUF_DEFAULT_MAX + 1), -1);
	assert_int_equal(b.len, 0);
	assert_int_equal(buf_append(&b, big, BUF_DEFAULT_MAX), 0);
	assert_int_equal(b.len, BUF_DEFAULT_MAX);
	assert_int_equal(buf_append_byte(&b, 'x'), -1);
	assert_int_equal(b.len, BUF_DEFAULT_MAX);
	assert_true(b.alloc <= BUF_DEFAULT_MAX + 1);
	buf_free(&b);
	free(big);
}

/* A cap of SIZE_MAX ("as much as memory allows") used to wrap cap + 1 to 0 and
 * shrink the allocation to nothing. */
static void test_size_max_cap(void **state)
{
	(void)state;
	struct buf b;
	buf_init(&b, SIZE_MAX);
	for (int i = 0; i < 100; i++)
		assert_int_equal(buf_append_str(&b, "hello "), 0);
	assert_int_equal(b.len, 600);
	assert_true(b.alloc >= 601);
	assert_memory_equal(b.data + 594, "hello ", 7);
	/* len + extra + 1 must not wrap either. */
	assert_int_equal(buf_append(&b, "x", SIZE_MAX - 600), -1);
	assert_int_equal(buf_append(&b, "x", SIZE_MAX), -1);
	assert_int_equal(b.len, 600);
	buf_free(&b);
}

static void test_cap_lowered_below_len(void **state)
{
	(void)state;
	struct buf b;
	buf_init(&b, 0);
	assert_int_equal(buf_append_str(&b, "0123456789"), 0);
	b.max = 4;
	assert_int_equal(buf_append_byte(&b, 'x'), -1);
	assert_int_equal(buf_append(&b, "", 0), -1);
	assert_string_equal(b.data, "0123456789");
	buf_free(&b);
}

static void test_printf_grows(void **state)
{
	(void)state;
	struct buf b;
	buf_init(&b, 0);
	char expect[4096];
	size_t n = 0;
	for (int i = 0; i < 300; i++) {
		assert_int_equal(buf_printf(&b, "%d,", i), 0);
		n += (size_t)snprintf(expect + n, sizeof expect - n, "%d,", i);
	}
	assert_int_equal(b.len, n);
	assert_string_equal(b.data, expect);
	assert_true(b.alloc > 64);

	/* One long piece well beyond the current storage. */
	char long_str[3000];
	memset(long_str, 'q', sizeof long_str - 1);
	long_str[sizeof long_str - 1] = '\0';
	buf_reset(&b);
	assert_int_equal(buf_printf(&b, "<%s>", long_str), 0);
	assert_int_equal(b.len, 3001);
	assert_int_equal(b.data[0], '<');
	assert_int_equal(b.data[3000], '>');
	assert_int_equal(b.data[3001], '\0');

	/* Empty format output still yields a string. */
	struct buf e;
	buf_init(&e, 0);
	assert_int_equal(buf_printf(&e, "%s", ""), 0);
	assert_non_null(e.data);
	assert_string_equal(e.data, "");
	buf_free(&e);
	buf_free(&b);
}

static void test_printf_at_cap(void **state)
{
	(void)state;
	struct buf b;
	buf_init(&b, 8);
	assert_int_equal(buf_printf(&b, "%s-%d", "ab", 1234), 0); /* 7 bytes */
	assert_int_equal(buf_printf(&b, "%d", 12), -1);           /* would be 9 */
	assert_string_equal(b.data, "ab-1234");
	assert_int_equal(buf_printf(&b, "%d", 9), 0);             /* exactly 8 */
	assert_string_equal(b.data, "ab-12349");
	buf_free(&b);
}

static void test_reset_keeps_storage(void **state)
{
	(void)state;
	struct buf b;
	buf_init(&b, 0);
	assert_int_equal(buf_append_str(&b, "something"), 0);
	char *data = b.data;
	buf_reset(&b);
	assert_int_equal(b.len, 0);
	assert_ptr_equal(b.data, data);
	assert_string_equal(b.data, "");
	buf_reset(&b);
	buf_free(&b);
	buf_reset(&b); /* on freed/unused storage: no crash */
	assert_null(b.data);
}

static void test_consume(void **state)
{
	(void)state;
	struct buf b;
	buf_init(&b, 0);
	buf_consume(&b, 0);  /* never used: fine */
	buf_consume(&b, 10);
	assert_null(b.data);
	assert_int_equal(b.len, 0);

	assert_int_equal(buf_append_str(&b, "line1\nline2\n"), 0);
	buf_consume(&b, 0);
	assert_string_equal(b.data, "line1\nline2\n");
	buf_consume(&b, 6);
	assert_int_equal(b.len, 6);
	assert_string_equal(b.data, "line2\n");
	buf_consume(&b, 6); /* exactly everything */
	assert_int_equal(b.len, 0);
	assert_string_equal(b.data, "");
	assert_int_equal(buf_append_str(&b, "abc"), 0);
	buf_consume(&b, 1000); /* more than len */
	assert_int_equal(b.len, 0);
	assert_string_equal(b.data, "");
	/* Still usable, and the cap counts the remaining bytes only. */
	struct buf c;
	buf_init(&c, 4);
	assert_int_equal(buf_append_str(&c, "abcd"), 0);
	buf_consume(&c, 2);
	assert_int_equal(buf_append_str(&c, "ef"), 0);
	assert_string_equal(c.data, "cdef");
	assert_int_equal(buf_append_byte(&c, 'g'), -1);
	buf_free(&c);
	buf_free(&b);
}

static void test_detach(void **state)
{
	(void)state;
	struct buf b;
	buf_init(&b, 100);
	size_t len = 99;
	char *p = buf_detach(&b, &len); /* never used */
	assert_non_null(p);
	assert_string_equal(p, "");
	assert_int_equal(len, 0);
	free(p);

	assert_int_equal(buf_append_str(&b, "keep me"), 0);
	p = buf_detach(&b, &len);
	assert_string_equal(p, "keep me");
	assert_int_equal(len, 7);
	assert_null(b.data);
	assert_int_equal(b.len, 0);
	assert_int_equal(b.alloc, 0);
	assert_int_equal(b.max, 100); /* the cap survives */
	free(p);

	/* Detach after reset: an empty string, and len may be NULL. */
	assert_int_equal(buf_append_str(&b, "x"), 0);
	buf_reset(&b);
	p = buf_detach(&b, NULL);
	assert_string_equal(p, "");
	free(p);

	/* Reusable afterwards. */
	assert_int_equal(buf_append_str(&b, "again"), 0);
	assert_string_equal(b.data, "again");
	buf_free(&b);
}

static int call_vprintf(struct buf *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static int call_vprintf(struct buf *b, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int rc = buf_vprintf(b, fmt, ap);
	va_end(ap);
	return rc;
}

static void test_vprintf(void **state)
{
	(void)state;
	struct buf b;
	buf_init(&b, 0);
	assert_int_equal(call_vprintf(&b, "%s=%u", "n", 42u), 0);
	assert_string_equal(b.data, "n=42");
	buf_free(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_append_keeps_nul),
		cmocka_unit_test(test_append_empty_allocates_string),
		cmocka_unit_test(test_cap_leaves_buffer_unchanged),
		cmocka_unit_test(test_default_cap),
		cmocka_unit_test(test_size_max_cap),
		cmocka_unit_test(test_cap_lowered_below_len),
		cmocka_unit_test(test_printf_grows),
		cmocka_unit_test(test_printf_at_cap),
		cmocka_unit_test(test_reset_keeps_storage),
		cmocka_unit_test(test_consume),
		cmocka_unit_test(test_detach),
		cmocka_unit_test(test_vprintf),
	};
	return cmocka_run_group_tests_name("buf", tests, NULL, NULL);
}
