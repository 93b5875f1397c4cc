/*
 * awsjson: reading AWS JSON-protocol error answers (the __type of JSON 1.0
 * and 1.1 services, x-amzn-ErrorType, SQS's x-amzn-query-error), the
 * classes that decide retries, and matching an error under either of its
 * names. (The engine's request path is exercised by test_sqs and test_ecr
 * against the fakes.)
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "awsjson.h"

static void test_parse_error(void **state)
{
	(void)state;
	char code[64], qcode[64], msg[128];
	bool sender = false;
	const char *b = "{\"__type\":\"com.amazonaws.sqs#QueueDoesNotExist\","
			"\"message\":\"The specified queue does not exist.\"}";
	awsjson_parse_error(b, strlen(b), NULL, "AWS.SimpleQueueService.NonExistentQueue;Sender",
			    code, sizeof code, qcode, sizeof qcode, &sender, msg, sizeof msg);
	assert_string_equal(code, "QueueDoesNotExist");
	assert_string_equal(qcode, "AWS.SimpleQueueService.NonExistentQueue");
	assert_true(sender);
	assert_string_equal(msg, "The specified queue does not exist.");

	b = "{\"__type\":\"RepositoryNotFoundException\",\"message\":\"no such repository\"}";
	awsjson_parse_error(b, strlen(b), "RepositoryNotFoundException", NULL, code, sizeof code,
			    qcode, sizeof qcode, &sender, msg, sizeof msg);
	assert_string_equal(code, "RepositoryNotFoundException");
	assert_string_equal(qcode, "");
	assert_false(sender);

	b = "{\"Message\":\"Rate exceeded\"}";
	awsjson_parse_error(b, strlen(b), "ThrottlingException:http://internal.amazon.com/", NULL,
			    code, sizeof code, qcode, sizeof qcode, &sender, msg, sizeof msg);
	assert_string_equal(code, "ThrottlingException");
	assert_string_equal(msg, "Rate exceeded");

	awsjson_parse_error("<html>502\x01</html>", 17, NULL, "InternalError;Receiver", code,
			    sizeof code, qcode, sizeof qcode, &sender, msg, sizeof msg);
	assert_string_equal(code, "");
	assert_string_equal(qcode, "InternalError");
	assert_false(sender);
	assert_string_equal(msg, "<html>502 </html>");

	/* Cut, never overflowed. */
	char small[8];
	const char *lb = "{\"__type\":\"a#VeryLongErrorName\"}";
	awsjson_parse_error(lb, strlen(lb), NULL, NULL, small,
			    sizeof small, qcode, sizeof qcode, NULL, msg, sizeof msg);
	assert_string_equal(small, "VeryLon");
}

static void test_classify(void **state)
{
	(void)state;
	assert_int_equal(awsjson_classify(400, "RequestThrottled", "RequestThrottled", ""),
			 AWSJSON_CLASS_THROTTLE);
	assert_int_equal(awsjson_classify(400, "ThrottlingException", "", ""),
			 AWSJSON_CLASS_THROTTLE);
	assert_int_equal(awsjson_classify(429, "", "", ""), AWSJSON_CLASS_THROTTLE);
	assert_int_equal(awsjson_classify(500, "InternalFailure", "", ""), AWSJSON_CLASS_RETRY);
	assert_int_equal(awsjson_classify(500, "ServerException", "", ""), AWSJSON_CLASS_RETRY);
	assert_int_equal(awsjson_classify(503, "", "", ""), AWSJSON_CLASS_RETRY);
	assert_int_equal(awsjson_classify(403, "ExpiredToken", "ExpiredToken", ""),
			 AWSJSON_CLASS_CREDENTIALS);
	assert_int_equal(awsjson_classify(403, "InvalidClientTokenId", "", ""),
			 AWSJSON_CLASS_CREDENTIALS);
	assert_int_equal(awsjson_classify(403, "SignatureDoesNotMatch", "", "does not match"),
			 AWSJSON_CLASS_CREDENTIALS);
	assert_int_equal(awsjson_classify(403, "SignatureDoesNotMatch", "",
					  "Signature expired: 20260101T000000Z is now earlier than"),
			 AWSJSON_CLASS_SKEW);
	assert_int_equal(awsjson_classify(400, "RequestTimeTooSkewed", "", ""), AWSJSON_CLASS_SKEW);
	assert_int_equal(awsjson_classify(400, "QueueDoesNotExist", "", ""), AWSJSON_CLASS_SERVICE);
	assert_int_equal(awsjson_classify(403, "AccessDeniedException", "", ""),
			 AWSJSON_CLASS_SERVICE);
	assert_int_equal(awsjson_classify(400, NULL, NULL, NULL), AWSJSON_CLASS_SERVICE);
}

static void test_error_is(void **state)
{
	(void)state;
	struct awsjson_result r = {.status = AWSJSON_ERROR, .code = "QueueDoesNotExist",
				   .query_code = "AWS.SimpleQueueService.NonExistentQueue"};
	assert_true(awsjson_error_is(&r, "QueueDoesNotExist"));
	assert_true(awsjson_error_is(&r, "AWS.SimpleQueueService.NonExistentQueue"));
	assert_true(awsjson_error_is(&r, "NonExistentQueue"));
	assert_false(awsjson_error_is(&r, "QueueDeletedRecently"));
	r.code = "QueueDeletedRecently";
	r.query_code = "";
	assert_true(awsjson_error_is(&r, "AWS.SimpleQueueService.QueueDeletedRecently"));
	r.status = AWSJSON_OK;
	assert_false(awsjson_error_is(&r, "QueueDeletedRecently"));
	assert_false(awsjson_error_is(NULL, "x"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_error),
		cmocka_unit_test(test_classify),
		cmocka_unit_test(test_error_is),
	};
	return cmocka_run_group_tests_name("awsjson", tests, NULL, NULL);
}
