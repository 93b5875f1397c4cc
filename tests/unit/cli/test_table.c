#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "table.h"

#define SEC 1000LL
#define MIN (60 * SEC)
#define HOUR (60 * MIN)
#define DAY (24 * HOUR)

static char *render(struct table *t)
{
	static char out[4096];
	struct buf b;
	buf_init(&b, 0);
	assert_int_equal(table_render(t, &b), 0);
	assert_true(b.len < sizeof out);
	memcpy(out, b.data, b.len + 1);
	buf_free(&b);
	return out;
}

/* Columns pad to the widest cell, two spaces apart; the last is not padded. */
static void test_alignment(void **state)
{
	(void)state;
	static const char *const head[] = {"APP", "STATUS", "RELEASE"};
	struct table *t = table_new(3, head);
	assert_non_null(t);
	const char *r1[] = {"web", "running", "r_3f9a1c2b7d0e"};
	const char *r2[] = {"billing-api", "created", NULL};
	assert_int_equal(table_add(t, r1), 0);
	assert_int_equal(table_add(t, r2), 0);
	assert_int_equal(table_rows(t), 2);
	assert_string_equal(render(t), "APP          STATUS   RELEASE\n"
				       "web          running  r_3f9a1c2b7d0e\n"
				       "billing-api  created  -\n");
	table_free(t);
}

/* A table with no rows is its header; empty cells are "-". */
static void test_empty_and_dash(void **state)
{
	(void)state;
	static const char *const head[] = {"ID", "STATUS"};
	struct table *t = table_new(2, head);
	assert_string_equal(render(t), "ID  STATUS\n");
	const char *r[] = {"", "x"};
	table_add(t, r);
	assert_string_equal(render(t), "ID  STATUS\n-   x\n");
	table_free(t);
}

/* Widths count code points, not bytes: "é" takes one column. */
static void test_utf8_width(void **state)
{
	(void)state;
	assert_int_equal(table_width("caf\xc3\xa9"), 4);
	static const char *const head[] = {"NAME", "X"};
	struct table *t = table_new(2, head);
	const char *r[] = {"caf\xc3\xa9", "1"};
	table_add(t, r);
	assert_string_equal(render(t), "NAME  X\ncaf\xc3\xa9  1\n");
	table_free(t);
}

/* Cells from outside cannot move the cursor or break the layout. */
static void test_cleaning(void **state)
{
	(void)state;
	char out[64];
	assert_string_equal(table_clean("a\nb\tc", out, sizeof out), "a b c");
	assert_string_equal(table_clean("\x1b[2Jred", out, sizeof out), "?[2Jred");
	assert_string_equal(table_clean("bad\xff\xfe", out, sizeof out), "bad??");
	assert_string_equal(table_clean("c1\xc2\x9b" "x", out, sizeof out), "c1?x");
	assert_string_equal(table_clean(NULL, out, sizeof out), "");
	/* Cut on a character boundary, marked with "...". */
	assert_string_equal(table_clean("abcdefghij", out, 8), "abcd...");
	assert_string_equal(table_clean("\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9", out, 8),
			    "\xc3\xa9\xc3\xa9...");
	assert_string_equal(table_clean("abcdefg", out, 8), "abcdefg");
}

static void test_ago(void **state)
{
	(void)state;
	char out[TABLE_TIME_MAX];
	int64_t now = 1795600000000LL;
	assert_string_equal(table_ago(0, now, out), "-");
	assert_string_equal(table_ago(now, now, out), "just now");
	assert_string_equal(table_ago(now - 999, now, out), "just now");
	assert_string_equal(table_ago(now - SEC, now, out), "1 second ago");
	assert_string_equal(table_ago(now - 59 * SEC, now, out), "59 seconds ago");
	assert_string_equal(table_ago(now - MIN, now, out), "1 minute ago");
	assert_string_equal(table_ago(now - 5 * MIN - 59 * SEC, now, out), "5 minutes ago");
	assert_string_equal(table_ago(now - HOUR, now, out), "1 hour ago");
	assert_string_equal(table_ago(now - 23 * HOUR, now, out), "23 hours ago");
	assert_string_equal(table_ago(now - 2 * DAY, now, out), "2 days ago");
	assert_string_equal(table_ago(now - 29 * DAY, now, out), "29 days ago");
	assert_string_equal(table_ago(now - 95 * DAY, now, out), "3 months ago");
	assert_string_equal(table_ago(now - 800 * DAY, now, out), "2 years ago");
	/* Ahead of us (clock skew): a little is "just now", more says so. */
	assert_string_equal(table_ago(now + 30 * SEC, now, out), "just now");
	assert_string_equal(table_ago(now + 5 * MIN, now, out), "in 5 minutes");
}

static void test_duration(void **state)
{
	(void)state;
	char out[TABLE_TIME_MAX];
	assert_string_equal(table_duration(-5, out), "0s");
	assert_string_equal(table_duration(0, out), "0s");
	assert_string_equal(table_duration(850, out), "850ms");
	assert_string_equal(table_duration(12 * SEC + 999, out), "12s");
	assert_string_equal(table_duration(72 * SEC, out), "1m12s");
	assert_string_equal(table_duration(5 * MIN, out), "5m0s");
	assert_string_equal(table_duration(2 * HOUR + 3 * MIN + 59 * SEC, out), "2h3m");
	assert_string_equal(table_duration(3 * DAY + 4 * HOUR + 5 * MIN, out), "3d4h");
}

static void test_bytes(void **state)
{
	(void)state;
	char out[TABLE_TIME_MAX];
	assert_string_equal(table_bytes(0, out), "0 B");
	assert_string_equal(table_bytes(1023, out), "1023 B");
	assert_string_equal(table_bytes(1024, out), "1.0 KB");
	assert_string_equal(table_bytes(4718592, out), "4.5 MB");
	assert_string_equal(table_bytes(3ULL << 30, out), "3.0 GB");
}

static void test_bad_shapes(void **state)
{
	(void)state;
	static const char *const head[] = {"A"};
	assert_null(table_new(0, head));
	assert_null(table_new(TABLE_COLS_MAX + 1, head));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_alignment),
		cmocka_unit_test(test_empty_and_dash),
		cmocka_unit_test(test_utf8_width),
		cmocka_unit_test(test_cleaning),
		cmocka_unit_test(test_ago),
		cmocka_unit_test(test_duration),
		cmocka_unit_test(test_bytes),
		cmocka_unit_test(test_bad_shapes),
	};
	return cmocka_run_group_tests_name("table", tests, NULL, NULL);
}
