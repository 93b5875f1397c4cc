#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "clock.h"

static int teardown(void **state)
{
	(void)state;
	clock_fake_off();
	return 0;
}

static void test_fake_set_advance_off(void **state)
{
	(void)state;
	clock_fake_set(1700000000000, 42);
	assert_int_equal(clock_wall_ms(), 1700000000000);
	assert_int_equal(clock_mono_ms(), 42);
	assert_int_equal(clock_wall_ms(), 1700000000000); /* frozen */
	clock_fake_advance(1500);
	assert_int_equal(clock_wall_ms(), 1700000001500);
	assert_int_equal(clock_mono_ms(), 1542);
	clock_fake_advance(0);
	assert_int_equal(clock_mono_ms(), 1542);
	clock_fake_set(5, 6); /* set again: replaces, does not add */
	assert_int_equal(clock_wall_ms(), 5);
	assert_int_equal(clock_mono_ms(), 6);

	clock_fake_off();
	int64_t wall = clock_wall_ms();
	int64_t now = (int64_t)time(NULL) * 1000;
	assert_true(wall > now - 5000 && wall < now + 5000);
	int64_t m1 = clock_mono_ms();
	int64_t m2 = clock_mono_ms();
	assert_true(m2 >= m1);
	assert_true(m1 != 1542);
}

struct reader {
	int64_t last_seen;
	int went_back;
};

static void *read_mono(void *arg)
{
	struct reader *r = arg;
	int64_t prev = 0;
	for (int i = 0; i < 200000; i++) {
		int64_t v = clock_mono_ms();
		if (v < prev)
			r->went_back = 1;
		prev = v;
	}
	r->last_seen = prev;
	return NULL;
}

/* Worker threads read a fake clock while the test moves it forward. */
static void test_fake_clock_across_threads(void **state)
{
	(void)state;
	clock_fake_set(0, 0);
	struct reader r = {0};
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, read_mono, &r), 0);
	for (int i = 0; i < 100000; i++)
		clock_fake_advance(1);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_false(r.went_back);
	assert_true(r.last_seen <= 100000);
	assert_int_equal(clock_mono_ms(), 100000);
	assert_int_equal(clock_wall_ms(), 100000);
}

static void check_format(int64_t ms, const char *want)
{
	char out[25];
	memset(out, 'X', sizeof out);
	clock_format_rfc3339(ms, out);
	assert_string_equal(out, want);
}

static void test_format(void **state)
{
	(void)state;
	check_format(0, "1970-01-01T00:00:00.000Z");
	check_format(1, "1970-01-01T00:00:00.001Z");
	check_format(1700000000123, "2023-11-14T22:13:20.123Z");
	check_format(951782400000, "2000-02-29T00:00:00.000Z");   /* leap day */
	check_format(1798761599999, "2026-12-31T23:59:59.999Z");
	check_format(-1, "1969-12-31T23:59:59.999Z");             /* before the epoch */
	check_format(-1000, "1969-12-31T23:59:59.000Z");
	check_format(-1001, "1969-12-31T23:59:58.999Z");
	check_format(253402300799999, "9999-12-31T23:59:59.999Z");
}

static int64_t parse_ok(const char *s)
{
	int64_t ms = -42;
	if (clock_parse_rfc3339(s, &ms) != 0)
		fail_msg("'%s' did not parse", s);
	return ms;
}

static void parse_bad(const char *s)
{
	int64_t ms = -42;
	if (clock_parse_rfc3339(s, &ms) != -1)
		fail_msg("'%s' parsed", s);
	assert_int_equal(ms, -42); /* untouched */
}

static void test_parse(void **state)
{
	(void)state;
	assert_int_equal(parse_ok("1970-01-01T00:00:00Z"), 0);
	assert_int_equal(parse_ok("2023-11-14T22:13:20Z"), 1700000000000);
	assert_int_equal(parse_ok("2023-11-14T22:13:20.123Z"), 1700000000123);
	assert_int_equal(parse_ok("2023-11-14t22:13:20.123z"), 1700000000123);
	assert_int_equal(parse_ok("2023-11-14 22:13:20.123Z"), 1700000000123);
	assert_int_equal(parse_ok("1969-12-31T23:59:59.999Z"), -1);
	/* Fractions: short ones scale up, long ones are truncated (not rounded). */
	assert_int_equal(parse_ok("2023-11-14T22:13:20.1Z"), 1700000000100);
	assert_int_equal(parse_ok("2023-11-14T22:13:20.12Z"), 1700000000120);
	assert_int_equal(parse_ok("2023-11-14T22:13:20.123456789Z"), 1700000000123);
	assert_int_equal(parse_ok("2023-11-14T22:13:20.9999999Z"), 1700000000999);
	/* Offsets: local time minus the offset is UTC. */
	assert_int_equal(parse_ok("2023-11-15T00:13:20+02:00"), 1700000000000);
	assert_int_equal(parse_ok("2023-11-14T16:43:20.5-05:30"), 1700000000500);
	assert_int_equal(parse_ok("2023-11-14T22:13:20+00:00"), 1700000000000);
	assert_int_equal(parse_ok("2023-11-14T22:13:20-00:00"), 1700000000000);
	assert_int_equal(parse_ok("2023-11-14T22:13:20+23:59"), 1700000000000 - 86340000);
	/* Calendar edges. */
	assert_int_equal(parse_ok("2000-02-29T00:00:00Z"), 951782400000);
	assert_int_equal(parse_ok("2024-02-29T12:00:00Z"), 1709208000000);
	assert_int_equal(parse_ok("2023-12-31T23:59:59Z"), 1704067199000);
	/* A leap second is the next second. */
	assert_int_equal(parse_ok("2016-12-31T23:59:60Z"), 1483228800000);
}

static void test_parse_rejects(void **state)
{
	(void)state;
	parse_bad("");
	parse_bad("2023-11-14");
	parse_bad("2023-11-14T22:13:20");          /* missing Z or offset */
	parse_bad("2023-11-14T22:13:20.123");
	parse_bad("2023-11-14T22:13:20ZZ");        /* trailing garbage */
	parse_bad("2023-11-14T22:13:20Z ");
	parse_bad("2023-11-14T22:13:20+02:00x");
	parse_bad("2023-11-14T22:13:20.Z");        /* dot without digits */
	parse_bad("2023-13-14T22:13:20Z");         /* bad month */
	parse_bad("2023-00-14T22:13:20Z");
	parse_bad("2023-11-00T22:13:20Z");         /* bad day */
	parse_bad("2023-11-32T22:13:20Z");
	parse_bad("2023-02-29T00:00:00Z");         /* not a leap year */
	parse_bad("1900-02-29T00:00:00Z");         /* century, not leap */
	parse_bad("2024-02-30T00:00:00Z");
	parse_bad("2023-04-31T00:00:00Z");
	parse_bad("2023-11-14T24:00:00Z");         /* bad hour */
	parse_bad("2023-11-14T22:60:00Z");         /* bad minute */
	parse_bad("2023-11-14T22:13:61Z");         /* bad second */
	parse_bad("2023-11-14T22:13:20+0200");     /* offset without colon */
	parse_bad("2023-11-14T22:13:20+2:00");
	parse_bad("2023-11-14T22:13:20+24:00");    /* offsets beyond a day */
	parse_bad("2023-11-14T22:13:20+02:60");
	parse_bad("2023-11-14T22:13:20+");
	parse_bad("2023-11-14X22:13:20Z");         /* bad separator */
	parse_bad("2023/11/14T22:13:20Z");
	parse_bad("23-11-14T22:13:20Z");           /* two-digit year */
	parse_bad("2023-1-14T22:13:20Z");
	parse_bad("2023-11-14T2:13:20Z");
	parse_bad("2023-11-14T22:13:2Z");
	parse_bad("-023-11-14T22:13:20Z");
	parse_bad("2023-11-14T22:13:20 Z");
	parse_bad("Tue, 14 Nov 2023 22:13:20 GMT");
}

static void test_round_trips(void **state)
{
	(void)state;
	char out[25];
	/* format -> parse over a spread of instants, fractions included. */
	uint64_t x = 88172645463325252ull;
	for (int i = 0; i < 2000; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		int64_t ms = (int64_t)(x % 4102444800000ull); /* up to 2100 */
		clock_format_rfc3339(ms, out);
		int64_t back = -1;
		assert_int_equal(clock_parse_rfc3339(out, &back), 0);
		assert_int_equal(back, ms);
	}
	/* parse -> format for canonical strings. */
	static const char *const canon[] = {
		"1970-01-01T00:00:00.000Z", "2000-02-29T23:59:59.999Z",
		"2026-11-26T05:39:11.123Z", "2099-12-31T00:00:00.010Z",
	};
	for (size_t i = 0; i < sizeof canon / sizeof canon[0]; i++) {
		int64_t ms;
		assert_int_equal(clock_parse_rfc3339(canon[i], &ms), 0);
		clock_format_rfc3339(ms, out);
		assert_string_equal(out, canon[i]);
	}
	/* An offset form comes back in UTC. */
	int64_t ms;
	assert_int_equal(clock_parse_rfc3339("2026-11-26T07:39:11.5+02:00", &ms), 0);
	clock_format_rfc3339(ms, out);
	assert_string_equal(out, "2026-11-26T05:39:11.500Z");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_fake_set_advance_off, teardown),
		cmocka_unit_test_teardown(test_fake_clock_across_threads, teardown),
		cmocka_unit_test(test_format),
		cmocka_unit_test(test_parse),
		cmocka_unit_test(test_parse_rejects),
		cmocka_unit_test(test_round_trips),
	};
	return cmocka_run_group_tests_name("clock", tests, NULL, NULL);
}
