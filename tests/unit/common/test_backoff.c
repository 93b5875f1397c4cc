#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <limits.h>
#include <cmocka.h>

#include "backoff.h"

static int64_t ceiling_of(int64_t base, int64_t cap, int retry)
{
	int64_t c = base;
	for (int i = 1; i < retry && c < cap; i++)
		c *= 2;
	return c < cap ? c : cap;
}

/* Pinned jitter: 0 gives no delay, the top value gives exactly min(cap, base * 2^(n-1)). */
static void test_bounds_per_retry(void **state)
{
	(void)state;
	struct backoff_policy p = {.base_ms = 100, .cap_ms = 10000, .max_attempts = 0};
	static const int64_t want[] = {100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000, 10000};
	for (int n = 1; n <= 10; n++) {
		assert_int_equal(ceiling_of(100, 10000, n), want[n - 1]);
		assert_int_equal(backoff_delay_with(&p, n, 0), 0);
		assert_int_equal(backoff_delay_with(&p, n, UINT64_MAX), want[n - 1]);
		/* The middle of the range lands in the middle. */
		int64_t mid = backoff_delay_with(&p, n, UINT64_MAX / 2);
		assert_true(mid >= want[n - 1] / 2 - 1 && mid <= want[n - 1] / 2 + 1);
	}
}

/* Every random value maps into [0, ceiling], monotonically. */
static void test_mapping_monotonic_and_bounded(void **state)
{
	(void)state;
	struct backoff_policy p = {.base_ms = 250, .cap_ms = 30000, .max_attempts = 5};
	uint64_t x = 0x9e3779b97f4a7c15ull;
	for (int n = 1; n <= 12; n++) {
		int64_t ceiling = ceiling_of(250, 30000, n);
		int64_t prev = -1;
		for (uint64_t k = 0; k <= 64; k++) {
			uint64_t r = k == 64 ? UINT64_MAX : (uint64_t)k << 58;
			int64_t d = backoff_delay_with(&p, n, r);
			assert_true(d >= prev);
			assert_true(d >= 0 && d <= ceiling);
			prev = d;
		}
		for (int i = 0; i < 1000; i++) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			int64_t d = backoff_delay_with(&p, n, x);
			assert_true(d >= 0 && d <= ceiling);
		}
	}
}

static void test_cap_honoured(void **state)
{
	(void)state;
	struct backoff_policy p = {.base_ms = 500, .cap_ms = 20000, .max_attempts = 0};
	assert_int_equal(backoff_delay_with(&p, 7, UINT64_MAX), 20000);
	assert_int_equal(backoff_delay_with(&p, 64, UINT64_MAX), 20000);
	assert_int_equal(backoff_delay_with(&p, 1000, UINT64_MAX), 20000);
	assert_int_equal(backoff_delay_with(&p, INT_MAX, UINT64_MAX), 20000);
	/* A base above the cap is cut to the cap from the first retry. */
	struct backoff_policy q = {.base_ms = 5000, .cap_ms = 1000, .max_attempts = 0};
	assert_int_equal(backoff_delay_with(&q, 1, UINT64_MAX), 1000);
	/* A cap near the top of int64 must not overflow while doubling. */
	struct backoff_policy big = {.base_ms = 3, .cap_ms = INT64_MAX, .max_attempts = 0};
	int64_t d = backoff_delay_with(&big, 100, UINT64_MAX);
	assert_true(d > 0);
	assert_true(d >= INT64_MAX / 4);
}

/* cap_ms <= 0 means no cap: the delay keeps doubling (it used to stay at base). */
static void test_no_cap(void **state)
{
	(void)state;
	struct backoff_policy p = {.base_ms = 100, .cap_ms = 0, .max_attempts = 0};
	assert_int_equal(backoff_delay_with(&p, 1, UINT64_MAX), 100);
	assert_int_equal(backoff_delay_with(&p, 5, UINT64_MAX), 1600);
	assert_int_equal(backoff_delay_with(&p, 11, UINT64_MAX), 102400);
	int64_t huge = backoff_delay_with(&p, 200, UINT64_MAX);
	assert_true(huge > 0); /* no overflow into negatives */
	assert_true(huge >= INT64_MAX / 4);
	assert_int_equal(backoff_delay_with(&p, 200, 0), 0);
}

static void test_odd_inputs(void **state)
{
	(void)state;
	struct backoff_policy p = {.base_ms = 100, .cap_ms = 1000, .max_attempts = 0};
	/* Retry numbers below 1 count as the first retry. */
	assert_int_equal(backoff_delay_with(&p, 0, UINT64_MAX), 100);
	assert_int_equal(backoff_delay_with(&p, -5, UINT64_MAX), 100);
	/* A base of 0 or less counts as 1 ms. */
	struct backoff_policy z = {.base_ms = 0, .cap_ms = 1000, .max_attempts = 0};
	assert_int_equal(backoff_delay_with(&z, 1, UINT64_MAX), 1);
	assert_int_equal(backoff_delay_with(&z, 4, UINT64_MAX), 8);
	assert_int_equal(backoff_delay_with(&z, 30, UINT64_MAX), 1000);
}

/* With real randomness: always in bounds, and actually spread out. */
static void test_random_delay(void **state)
{
	(void)state;
	struct backoff_policy p = {.base_ms = 1000, .cap_ms = 8000, .max_attempts = 0};
	for (int n = 1; n <= 6; n++) {
		int64_t ceiling = ceiling_of(1000, 8000, n);
		int64_t lo = INT64_MAX, hi = -1;
		for (int i = 0; i < 400; i++) {
			int64_t d = backoff_delay(&p, n);
			assert_true(d >= 0 && d <= ceiling);
			if (d < lo)
				lo = d;
			if (d > hi)
				hi = d;
		}
		/* 400 uniform draws all in one quarter: probability 2 * 0.75^400, nil. */
		assert_true(lo < ceiling / 4);
		assert_true(hi > ceiling * 3 / 4);
	}
}

static void test_may_retry(void **state)
{
	(void)state;
	struct backoff_policy p = {.base_ms = 100, .cap_ms = 1000, .max_attempts = 3};
	assert_true(backoff_may_retry(&p, 0));
	assert_true(backoff_may_retry(&p, 1));
	assert_true(backoff_may_retry(&p, 2));
	assert_false(backoff_may_retry(&p, 3));
	assert_false(backoff_may_retry(&p, 4));
	struct backoff_policy one = {.base_ms = 100, .cap_ms = 1000, .max_attempts = 1};
	assert_false(backoff_may_retry(&one, 1)); /* one attempt, no retries */
	struct backoff_policy forever = {.base_ms = 100, .cap_ms = 1000, .max_attempts = 0};
	assert_true(backoff_may_retry(&forever, 1));
	assert_true(backoff_may_retry(&forever, 1000000));
	assert_true(backoff_may_retry(&forever, INT_MAX));
}

static void test_state_grows_and_resets(void **state)
{
	(void)state;
	struct backoff_state s;
	backoff_state_init(&s, 100, 3000);
	assert_int_equal(s.failures, 0);
	assert_int_equal(s.policy.max_attempts, 0);
	for (int n = 1; n <= 10; n++) {
		int64_t d = backoff_state_next(&s);
		assert_int_equal(s.failures, n);
		assert_true(d >= 0 && d <= ceiling_of(100, 3000, n));
	}
	/* The failure count saturates instead of overflowing on a long outage. */
	for (int i = 0; i < 200; i++) {
		int64_t d = backoff_state_next(&s);
		assert_true(d >= 0 && d <= 3000);
	}
	assert_int_equal(s.failures, 64);

	backoff_state_reset(&s);
	assert_int_equal(s.failures, 0);
	/* After a reset the next delay is back under base. */
	for (int i = 0; i < 200; i++) {
		int64_t d = backoff_state_next(&s);
		assert_true(d >= 0 && d <= 100);
		backoff_state_reset(&s);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bounds_per_retry),
		cmocka_unit_test(test_mapping_monotonic_and_bounded),
		cmocka_unit_test(test_cap_honoured),
		cmocka_unit_test(test_no_cap),
		cmocka_unit_test(test_odd_inputs),
		cmocka_unit_test(test_random_delay),
		cmocka_unit_test(test_may_retry),
		cmocka_unit_test(test_state_grows_and_resets),
	};
	return cmocka_run_group_tests_name("backoff", tests, NULL, NULL);
}
