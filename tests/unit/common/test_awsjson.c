/*
 * awsjson: reading AWS JSON-protocol error answers (the __type of JSON 1.0
 * and 1.1 services, x-amzn-ErrorType, SQS's x-amzn-query-error), the
 * classes that decide retries, and matching an error under either of its
 * names. (The engine's request path is exercised by test_sqs and test_ecr
 * against the fakes.) The per-call settings and client hooks cwlogs uses
 * (awsjson_call_ex: raw answers, unlimited throttling, a cap on requests in
 * all, a credentials refresh already spent; payload_hash, throttle_codes)
 * run against a scripted server in this process (common/httpd).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include <ev.h>
#include <stdio.h>
#include <stdlib.h>

#include "aws_credentials.h"
#include "awsjson.h"
#include "crypto.h"
#include "http_client.h"
#include "httpd.h"
#include "log.h"

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

/* ---- the engine's per-call settings, against a scripted server ---- */

struct answer {
	int status;          /* 0: drop the connection */
	const char *code;    /* error name, or NULL for a 2xx */
	const char *body;    /* 2xx body; NULL = "{}" */
};

struct fix {
	struct ev_loop *loop;
	struct http_client *http;
	struct httpd *srv;
	struct aws_credentials_provider *creds;
	struct awsjson *j;
	const struct answer *script;
	size_t nscript, next;
	size_t nseen;
	char target[64];
	int done;
	struct awsjson_result res;
	char code[64];
	char body[64];
	int hashed;
};

static struct fix *hash_fix; /* payload_hash has no argument */

static void counting_hash(const void *data, size_t len, char out[65])
{
	hash_fix->hashed++;
	crypto_sha256_hex(data, len, out);
}

static void handler(struct httpd_req *req, void *arg)
{
	struct fix *f = arg;
	f->nseen++;
	const char *t = httpd_req_header(req, "X-Amz-Target");
	snprintf(f->target, sizeof f->target, "%s", t ? t : "");
	const struct answer *a = f->next < f->nscript ? &f->script[f->next++] : NULL;
	if (a && a->status == 0) {
		httpd_abort(req);
		return;
	}
	if (!a || !a->code) {
		const char *body = a && a->body ? a->body : "{}";
		httpd_respond(req, a ? a->status : 200, "application/x-amz-json-1.1", body,
			      strlen(body));
		return;
	}
	char body[256];
	snprintf(body, sizeof body, "{\"__type\":\"%s\",\"message\":\"scripted\"}", a->code);
	httpd_respond(req, a->status, "application/x-amz-json-1.1", body, strlen(body));
}

static const char *const extra_throttle[] = {"LimitExceededException", NULL};

static int setup(void **state)
{
	struct fix *f = calloc(1, sizeof *f);
	hash_fix = f;
	log_init("test", LOG_LEVEL_ERROR, 0);
	setenv("AWS_ACCESS_KEY_ID", "AKIDTESTAWSJSON", 1);
	setenv("AWS_SECRET_ACCESS_KEY", "test-secret-awsjson", 1);
	unsetenv("AWS_SESSION_TOKEN");
	f->loop = ev_loop_new(EVFLAG_AUTO);
	f->http = http_client_new(f->loop);
	struct httpd_config hc = {.listen = "127.0.0.1:0", .handler = handler, .arg = f};
	struct err err;
	f->srv = httpd_new(f->loop, &hc, &err);
	assert_non_null(f->srv);
	struct aws_credentials_opts co = {.no_file = 1, .no_imds = 1};
	f->creds = aws_credentials_new(f->loop, f->http, &co, &err);
	assert_non_null(f->creds);
	char url[64];
	snprintf(url, sizeof url, "http://127.0.0.1:%d", httpd_port(f->srv));
	struct awsjson_opts o = {
		.region = "us-east-1", .service = "logs", .endpoint = url,
		.target_prefix = "Logs_20140328", .content_type = "application/x-amz-json-1.1",
		.retry_base_ms = 1, .retry_cap_ms = 5, .max_attempts = 3, .throttle_attempts = 2,
		.payload_hash = counting_hash, .throttle_codes = extra_throttle,
		.log_prefix = "testjson",
	};
	f->j = awsjson_new(f->loop, f->http, f->creds, &o, &err);
	assert_non_null(f->j);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fix *f = *state;
	awsjson_free(f->j);
	aws_credentials_free(f->creds);
	httpd_free(f->srv);
	http_client_free(f->http);
	ev_loop_destroy(f->loop);
	hash_fix = NULL;
	free(f);
	return 0;
}

static void on_done(const struct awsjson_result *res, void *arg)
{
	struct fix *f = arg;
	f->done++;
	f->res = *res;
	snprintf(f->code, sizeof f->code, "%s", res->code);
	snprintf(f->body, sizeof f->body, "%.*s", (int)res->body_len, res->body ? res->body : "");
	f->res.doc = NULL; /* gone after done */
}

static void run(struct fix *f, const struct answer *script, size_t n,
		const struct awsjson_call_opts *o)
{
	f->script = script;
	f->nscript = n;
	f->next = f->nseen = 0;
	f->done = 0;
	assert_true(awsjson_call_ex(f->j, "PutLogEvents", "{\"a\":1}", 7, o, on_done, f) > 0);
	assert_int_equal(f->done, 0);
	for (int i = 0; i < 5000 && !f->done; i++)
		ev_run(f->loop, EVRUN_ONCE);
	assert_int_equal(f->done, 1);
	assert_int_equal(awsjson_pending(f->j), 0);
}

/* raw_answer hands a 2xx over as it came (not JSON here); without it such an
 * answer is retried as malformed. The payload hash is the client's hook. */
static void test_raw_answer(void **state)
{
	struct fix *f = *state;
	static const struct answer s[] = {{200, NULL, "not json"}};
	struct awsjson_call_opts raw = {.raw_answer = true};
	run(f, s, 1, &raw);
	assert_int_equal(f->res.status, AWSJSON_OK);
	assert_string_equal(f->body, "not json");
	assert_int_equal(f->res.attempts, 1);
	assert_string_equal(f->target, "Logs_20140328.PutLogEvents");
	assert_int_equal(f->hashed, 1);

	static const struct answer s2[] = {{200, NULL, "not json"}, {200, NULL, "{\"ok\":1}"}};
	run(f, s2, 2, NULL);
	assert_int_equal(f->res.status, AWSJSON_OK);
	assert_int_equal(f->res.attempts, 2);
	assert_int_equal(f->res.body_len, 0);
	assert_int_equal(f->hashed, 3);
}

/* The client's throttle_attempts (2) ends a call; -1 lifts the limit; the
 * client's throttle_codes count as throttling. */
static void test_throttle_limits(void **state)
{
	struct fix *f = *state;
	static const struct answer s[] = {
		{400, "ThrottlingException", NULL},
		{400, "LimitExceededException", NULL},
		{429, "TooManyRequestsException", NULL},
		{400, "ThrottlingException", NULL},
		{200, NULL, NULL},
	};
	run(f, s, 5, NULL);
	assert_int_equal(f->res.status, AWSJSON_UNREACHABLE);
	assert_int_equal(f->res.throttled, 2);
	assert_int_equal(f->nseen, 2);
	assert_string_equal(f->code, "LimitExceededException");

	struct awsjson_call_opts unlimited = {.throttle_attempts = -1};
	run(f, s, 5, &unlimited);
	assert_int_equal(f->res.status, AWSJSON_OK);
	assert_int_equal(f->res.throttled, 4);
	assert_int_equal(f->res.attempts, 5);
	assert_int_equal(f->res.retries, 4);
}

/* max_requests caps throttled and failed requests together. */
static void test_max_requests(void **state)
{
	struct fix *f = *state;
	static const struct answer s[] = {
		{400, "ThrottlingException", NULL},
		{500, "InternalFailure", NULL},
		{503, "ServiceUnavailableException", NULL},
		{200, NULL, NULL},
	};
	struct awsjson_call_opts o = {.throttle_attempts = -1, .max_attempts = 10,
				      .max_requests = 3};
	run(f, s, 4, &o);
	assert_int_equal(f->res.status, AWSJSON_UNREACHABLE);
	assert_int_equal(f->res.attempts, 3);
	assert_int_equal(f->nseen, 3);
	/* Without the cap the same script gets through. */
	o.max_requests = 0;
	run(f, s, 4, &o);
	assert_int_equal(f->res.status, AWSJSON_OK);
	assert_int_equal(f->res.attempts, 4);
}

/* One credentials refresh per operation: a call told the refresh is spent
 * reports the next credentials answer at once; a call that uses it says so. */
static void test_creds_retried_carried(void **state)
{
	struct fix *f = *state;
	static const struct answer s[] = {
		{403, "ExpiredTokenException", NULL},
		{200, NULL, NULL},
	};
	run(f, s, 2, NULL);
	assert_int_equal(f->res.status, AWSJSON_OK);
	assert_true(f->res.creds_retried);
	assert_false(f->res.skew_retried);
	assert_int_equal(f->nseen, 2);

	struct awsjson_call_opts spent = {.creds_retried = true};
	run(f, s, 2, &spent);
	assert_int_equal(f->res.status, AWSJSON_UNREACHABLE);
	assert_string_equal(f->code, "ExpiredTokenException");
	assert_int_equal(f->nseen, 1);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_error),
		cmocka_unit_test(test_classify),
		cmocka_unit_test(test_error_is),
		T(test_raw_answer),
		T(test_throttle_limits),
		T(test_max_requests),
		T(test_creds_retried_carried),
	};
	return cmocka_run_group_tests_name("awsjson", tests, NULL, NULL);
}
