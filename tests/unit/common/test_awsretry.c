/*
 * awsretry: the shared classes of AWS error answers (with a protocol's own
 * extra names) and what a call does next under the JSON engine's limits
 * (failures in a row, throttling counted apart) and the Query engine's (one
 * budget of requests for both); one credentials refresh and one skew
 * re-sign per call.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "awsretry.h"
#include "backoff.h"
#include "sigv4.h"

static const char *const extra_throttle[] = {"SlowDown", NULL};
static const char *const extra_retry[] = {"ResourceContention", NULL};
static const struct awsretry_names extra = {extra_throttle, NULL, extra_retry};

static void test_classify(void **state)
{
	(void)state;
	assert_int_equal(awsretry_classify(400, "ThrottlingException", NULL, NULL, NULL),
			 AWSRETRY_THROTTLE);
	assert_int_equal(awsretry_classify(400, "", "Throttling", "", NULL), AWSRETRY_THROTTLE);
	assert_int_equal(awsretry_classify(429, NULL, NULL, NULL, NULL), AWSRETRY_THROTTLE);
	assert_int_equal(awsretry_classify(503, "SlowDown", NULL, NULL, NULL), AWSRETRY_RETRY);
	assert_int_equal(awsretry_classify(503, "SlowDown", NULL, NULL, &extra), AWSRETRY_THROTTLE);
	assert_int_equal(awsretry_classify(400, "ResourceContention", NULL, NULL, NULL),
			 AWSRETRY_SERVICE);
	assert_int_equal(awsretry_classify(400, "ResourceContention", NULL, NULL, &extra),
			 AWSRETRY_RETRY);
	assert_int_equal(awsretry_classify(408, "", NULL, NULL, NULL), AWSRETRY_RETRY);
	assert_int_equal(awsretry_classify(403, "ExpiredToken", NULL, NULL, NULL),
			 AWSRETRY_CREDENTIALS);
	/* A signature error about the clock is skew, not credentials. */
	assert_int_equal(awsretry_classify(403, "SignatureDoesNotMatch", NULL,
					   "Signature expired: 20260101T000000Z is now earlier", NULL),
			 AWSRETRY_SKEW);
	assert_int_equal(awsretry_classify(400, "RequestTimeTooSkewed", NULL, NULL, NULL),
			 AWSRETRY_SKEW);
	assert_int_equal(awsretry_classify(400, "ValidationError", NULL, "bad", &extra),
			 AWSRETRY_SERVICE);
	assert_true(awsretry_named_in(extra_throttle, "x", "SlowDown"));
	assert_false(awsretry_named_in(NULL, "SlowDown", NULL));
}

/* JSON: failures in a row against max_fails, throttling apart (delay from
 * its own count), a cap on requests in all. */
static void test_next_json_limits(void **state)
{
	(void)state;
	struct awsretry_limits lim = {.backoff = {.base_ms = 10, .cap_ms = 40}, .max_fails = 3,
				      .max_throttled = 2, .fails_in_a_row = true};
	struct awsretry st = {0};
	int64_t d = -1;
	assert_int_equal(awsretry_next(&st, &lim, AWSRETRY_RETRY, 1, NULL, "", "", NULL, &d),
			 AWSRETRY_WAIT);
	assert_true(d >= 0 && d <= 40);
	assert_int_equal(awsretry_next(&st, &lim, AWSRETRY_RETRY, 2, NULL, "", "", NULL, &d),
			 AWSRETRY_WAIT);
	assert_int_equal(st.fails, 2);
	/* A credentials answer starts the count again; the one refresh is used. */
	assert_int_equal(awsretry_next(&st, &lim, AWSRETRY_CREDENTIALS, 3, NULL, "", "", NULL, &d),
			 AWSRETRY_REFRESH);
	assert_int_equal(st.fails, 0);
	assert_true(st.creds_retried);
	assert_int_equal(awsretry_next(&st, &lim, AWSRETRY_THROTTLE, 4, NULL, "", "", NULL, &d),
			 AWSRETRY_WAIT);
	assert_int_equal(st.fails, 0);
	assert_int_equal(awsretry_next(&st, &lim, AWSRETRY_THROTTLE, 5, NULL, "", "", NULL, &d),
			 AWSRETRY_STOP);
	assert_int_equal(st.throttled, 2);
	assert_int_equal(awsretry_next(&st, &lim, AWSRETRY_CREDENTIALS, 6, NULL, "", "", NULL, &d),
			 AWSRETRY_STOP);
	/* No throttling limit, but requests in all. */
	struct awsretry s2 = {0};
	lim.max_throttled = -1;
	lim.max_requests = 3;
	assert_int_equal(awsretry_next(&s2, &lim, AWSRETRY_THROTTLE, 2, NULL, "", "", NULL, &d),
			 AWSRETRY_WAIT);
	assert_int_equal(awsretry_next(&s2, &lim, AWSRETRY_THROTTLE, 3, NULL, "", "", NULL, &d),
			 AWSRETRY_STOP);
	struct awsretry s3 = {0};
	assert_int_equal(awsretry_next(&s3, &lim, AWSRETRY_RETRY, 3, NULL, "", "", NULL, &d),
			 AWSRETRY_STOP);
}

/* Query: throttling is a failure too, and only requests in all end a call;
 * a credentials answer does not start the count again. */
static void test_next_query_limits(void **state)
{
	(void)state;
	struct awsretry_limits lim = {.backoff = {.base_ms = 10, .cap_ms = 40}, .max_requests = 3,
				      .throttle_is_failure = true};
	struct awsretry st = {0};
	int64_t d = -1;
	assert_int_equal(awsretry_next(&st, &lim, AWSRETRY_THROTTLE, 1, NULL, "", "", NULL, &d),
			 AWSRETRY_WAIT);
	assert_int_equal(st.fails, 1);
	assert_int_equal(st.throttled, 1);
	assert_int_equal(awsretry_next(&st, &lim, AWSRETRY_CREDENTIALS, 2, NULL, "", "", NULL, &d),
			 AWSRETRY_REFRESH);
	assert_int_equal(st.fails, 1);
	assert_int_equal(awsretry_next(&st, &lim, AWSRETRY_RETRY, 2, NULL, "", "", NULL, &d),
			 AWSRETRY_WAIT);
	assert_int_equal(awsretry_next(&st, &lim, AWSRETRY_RETRY, 3, NULL, "", "", NULL, &d),
			 AWSRETRY_STOP);
	assert_int_equal(st.fails, 3);
}

/* Skew: re-sign once, and only when the answer says what time it is. */
static void test_next_skew(void **state)
{
	(void)state;
	struct sigv4_signer signer;
	assert_int_equal(sigv4_signer_init(&signer, "us-east-1", "sts", NULL, NULL), 0);
	struct awsretry_limits lim = {.backoff = {.base_ms = 10, .cap_ms = 40}, .max_fails = 3};
	struct awsretry st = {0};
	int64_t d;
	assert_int_equal(awsretry_next(&st, &lim, AWSRETRY_SKEW, 1, &signer, "SignatureDoesNotMatch",
				       "no time here", NULL, &d),
			 AWSRETRY_STOP);
	assert_false(st.skew_retried);
	const char *date = "Sun, 06 Nov 1994 08:49:37 GMT";
	assert_int_equal(awsretry_next(&st, &lim, AWSRETRY_SKEW, 1, &signer, "RequestTimeTooSkewed",
				       "", date, &d),
			 AWSRETRY_RESIGN);
	assert_true(st.skew_retried);
	assert_true(signer.clock_offset_ms < 0);
	assert_int_equal(awsretry_next(&st, &lim, AWSRETRY_SKEW, 2, &signer, "RequestTimeTooSkewed",
				       "", date, &d),
			 AWSRETRY_STOP);
	sigv4_signer_clear(&signer);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_classify),
		cmocka_unit_test(test_next_json_limits),
		cmocka_unit_test(test_next_query_limits),
		cmocka_unit_test(test_next_skew),
	};
	return cmocka_run_group_tests_name("awsretry", tests, NULL, NULL);
}
