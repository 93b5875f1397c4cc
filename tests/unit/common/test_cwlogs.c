/*
 * cwlogs: the JSON 1.1 request bodies, error and rejectedLogEventsInfo
 * parsing, and the call's state machine against a scripted server in this
 * process (common/httpd on the same loop): create-on-ResourceNotFound,
 * throttling, 5xx and dropped connections, one credentials refresh after
 * ExpiredToken, one re-sign after a clock-skew answer, refusals.
 * (Signatures are verified independently by tests/fakes/cloudwatch.py in
 * the integration tests; here only their presence and scope are checked.)
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aws_credentials.h"
#include "cwlogs.h"
#include "http_client.h"
#include "httpd.h"
#include "json.h"
#include "log.h"

/* ---- pure parts ---- */

static void test_json_string(void **state)
{
	(void)state;
	struct buf b;
	buf_init(&b, 0);
	const char in[] = "a\"b\\c\nd\te\x01\x1f \xE2\x82\xAC";
	assert_int_equal(cwlogs_json_string(&b, in, sizeof in - 1), 0);
	assert_string_equal(b.data, "\"a\\\"b\\\\c\\nd\\te\\u0001\\u001f \xE2\x82\xAC\"");
	assert_int_equal(cwlogs_json_string_len(in, sizeof in - 1), b.len);
	/* What we write, a strict parser reads back identically. */
	cJSON *doc = json_parse(b.data, b.len, b.len, NULL);
	assert_non_null(doc);
	assert_string_equal(doc->valuestring, in);
	cJSON_Delete(doc);
	buf_free(&b);
}

/* The fast payload hash equals the reference one (crypto_sha256) at every
 * length around the block and padding edges; FIPS 180-2 appendix B vectors. */
static void test_payload_hash(void **state)
{
	(void)state;
	char a[65], b[65];
	cwlogs_sha256_hex("abc", 3, a, 1);
	assert_string_equal(a, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	const char *m2 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
	cwlogs_sha256_hex(m2, strlen(m2), a, 1);
	assert_string_equal(a, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
	cwlogs_sha256_hex("", 0, a, 1);
	assert_string_equal(a, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	size_t big = (size_t)3 << 20;
	unsigned char *data = malloc(big);
	uint64_t x = 0x243f6a8885a308d3ull;
	for (size_t i = 0; i < big; i++) {
		x = x * 6364136223846793005ull + 1442695040888963407ull;
		data[i] = (unsigned char)(x >> 56);
	}
	for (size_t len = 0; len <= 300; len++) {
		cwlogs_sha256_hex(data, len, a, 1);
		cwlogs_sha256_hex(data, len, b, 0);
		assert_string_equal(a, b);
	}
	size_t sizes[] = {4095, 4096, 65537, 1048576, big};
	for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
		cwlogs_sha256_hex(data + 1, sizes[i] - 1, a, 1); /* unaligned too */
		cwlogs_sha256_hex(data + 1, sizes[i] - 1, b, 0);
		assert_string_equal(a, b);
	}
	free(data);
}

static void test_put_body(void **state)
{
	(void)state;
	struct cwlogs_event ev[] = {{1795600000000LL, "first", 5}, {1795600000001LL, "sec\"ond", 7}};
	struct buf b;
	buf_init(&b, 0);
	assert_int_equal(cwlogs_put_body(&b, "/slipway/web", "web/i-1/3f9a", ev, 2), 0);
	assert_string_equal(b.data, "{\"logGroupName\":\"/slipway/web\",\"logStreamName\":"
				    "\"web/i-1/3f9a\",\"logEvents\":[{\"timestamp\":1795600000000,"
				    "\"message\":\"first\"},{\"timestamp\":1795600000001,"
				    "\"message\":\"sec\\\"ond\"}]}");
	buf_free(&b);
}

static void test_parse_error(void **state)
{
	(void)state;
	char code[64], msg[128];
	const char *b1 = "{\"__type\":\"com.amazonaws.logs#ResourceNotFoundException\","
			 "\"message\":\"The specified log group does not exist.\"}";
	cwlogs_parse_error(b1, strlen(b1), NULL, code, sizeof code, msg, sizeof msg);
	assert_string_equal(code, "ResourceNotFoundException");
	assert_string_equal(msg, "The specified log group does not exist.");
	const char *b2 = "{\"Message\":\"Rate exceeded\"}";
	cwlogs_parse_error(b2, strlen(b2), "ThrottlingException:http://internal.amazon.com/", code,
			   sizeof code, msg, sizeof msg);
	assert_string_equal(code, "ThrottlingException");
	assert_string_equal(msg, "Rate exceeded");
	cwlogs_parse_error("<html>502 Bad Gateway</html>", 28, NULL, code, sizeof code, msg,
			   sizeof msg);
	assert_string_equal(code, "");
	assert_string_equal(msg, "<html>502 Bad Gateway</html>");
}

static void test_parse_rejected(void **state)
{
	(void)state;
	struct cwlogs_result r;
	const char *b = "{\"rejectedLogEventsInfo\":{\"tooOldLogEventEndIndex\":3,"
			"\"expiredLogEventEndIndex\":2,\"tooNewLogEventStartIndex\":8}}";
	assert_int_equal(cwlogs_parse_rejected(b, strlen(b), 10, &r), 0);
	assert_int_equal(r.too_old_end, 3);
	assert_int_equal(r.expired_end, 2);
	assert_int_equal(r.too_new_start, 8);
	assert_int_equal(r.rejected, 3 + 2); /* [0,3) and [8,10) */
	assert_int_equal(cwlogs_parse_rejected("{}", 2, 10, &r), 0);
	assert_int_equal(r.rejected, 0);
	assert_int_equal(r.too_new_start, -1);
	/* Indexes past the batch are clamped. */
	b = "{\"rejectedLogEventsInfo\":{\"tooOldLogEventEndIndex\":50}}";
	assert_int_equal(cwlogs_parse_rejected(b, strlen(b), 10, &r), 0);
	assert_int_equal(r.rejected, 10);
	assert_int_equal(cwlogs_parse_rejected("nope", 4, 10, &r), -1);
}

static void test_classify(void **state)
{
	(void)state;
	assert_int_equal(cwlogs_classify(400, "ThrottlingException", ""), CWLOGS_CLASS_THROTTLE);
	assert_int_equal(cwlogs_classify(429, "", ""), CWLOGS_CLASS_THROTTLE);
	assert_int_equal(cwlogs_classify(500, "InternalFailure", ""), CWLOGS_CLASS_RETRY);
	assert_int_equal(cwlogs_classify(503, "", ""), CWLOGS_CLASS_RETRY);
	assert_int_equal(cwlogs_classify(400, "ResourceNotFoundException", ""),
			 CWLOGS_CLASS_NOT_FOUND);
	assert_int_equal(cwlogs_classify(400, "ResourceAlreadyExistsException", ""),
			 CWLOGS_CLASS_EXISTS);
	assert_int_equal(cwlogs_classify(403, "ExpiredTokenException", ""), CWLOGS_CLASS_CREDENTIALS);
	assert_int_equal(cwlogs_classify(403, "InvalidSignatureException", "does not match"),
			 CWLOGS_CLASS_CREDENTIALS);
	assert_int_equal(cwlogs_classify(400, "InvalidSignatureException",
					 "Signature expired: 20260101T000000Z is now earlier than ..."),
			 CWLOGS_CLASS_SKEW);
	assert_int_equal(cwlogs_classify(400, "InvalidParameterException", ""), CWLOGS_CLASS_REFUSED);
	assert_int_equal(cwlogs_classify(403, "AccessDeniedException", ""), CWLOGS_CLASS_OTHER);
}

/* ---- the scripted server ---- */

struct answer {
	int status;                /* 0: drop the connection */
	const char *code;          /* error code, or NULL for a 200 */
	const char *body;          /* 200 body; NULL = "{}" */
	const char *set_token;     /* setenv AWS_SESSION_TOKEN before answering */
};

struct seen {
	char target[64];
	char auth[512];
	char token[64];
	char body[256];
	char ctype[64];
};

struct fix {
	struct ev_loop *loop;
	struct http_client *http;
	struct httpd *srv;
	struct aws_credentials_provider *creds;
	struct cwlogs *cw;
	const struct answer *script;
	size_t nscript, next;
	struct seen seen[32];
	size_t nseen;
	int done;
	struct cwlogs_result res;
	char code[64];
};

static void handler(struct httpd_req *req, void *arg)
{
	struct fix *f = arg;
	if (f->nseen < 32) {
		struct seen *s = &f->seen[f->nseen++];
		const char *v;
		snprintf(s->target, sizeof s->target, "%s",
			 (v = httpd_req_header(req, "X-Amz-Target")) ? v : "");
		snprintf(s->auth, sizeof s->auth, "%s",
			 (v = httpd_req_header(req, "Authorization")) ? v : "");
		snprintf(s->token, sizeof s->token, "%s",
			 (v = httpd_req_header(req, "X-Amz-Security-Token")) ? v : "");
		snprintf(s->ctype, sizeof s->ctype, "%s",
			 (v = httpd_req_header(req, "Content-Type")) ? v : "");
		snprintf(s->body, sizeof s->body, "%s", req->body);
	}
	const struct answer *a = f->next < f->nscript ? &f->script[f->next++] : NULL;
	if (a && a->set_token)
		setenv("AWS_SESSION_TOKEN", a->set_token, 1);
	if (a && a->status == 0) {
		httpd_abort(req);
		return;
	}
	if (!a || !a->code) {
		const char *body = a && a->body ? a->body : "{}";
		httpd_respond(req, 200, "application/x-amz-json-1.1", body, strlen(body));
		return;
	}
	char body[512];
	snprintf(body, sizeof body, "{\"__type\":\"%s\",\"message\":\"%s\"}", a->code,
		 strcmp(a->code, "InvalidSignatureException") == 0
			 ? "Signature expired: 20200101T000000Z is now earlier than 20200101T000500Z "
			   "(20200101T001000Z - 5 min.)"
			 : "scripted");
	httpd_add_header(req, "x-amzn-ErrorType", a->code);
	httpd_respond(req, a->status, "application/x-amz-json-1.1", body, strlen(body));
}

static int setup(void **state)
{
	struct fix *f = calloc(1, sizeof *f);
	log_init("test", LOG_LEVEL_ERROR, 0);
	setenv("AWS_ACCESS_KEY_ID", "AKIDTESTCWLOGS", 1);
	setenv("AWS_SECRET_ACCESS_KEY", "test-secret-cwlogs", 1);
	setenv("AWS_SESSION_TOKEN", "token-one", 1);
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
	struct cwlogs_opts o = {.region = "us-east-1", .endpoint = url, .retry_base_ms = 1,
				.retry_cap_ms = 5, .retention_days = 7, .timeout_ms = 5000};
	f->cw = cwlogs_new(f->loop, f->http, f->creds, &o, &err);
	assert_non_null(f->cw);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fix *f = *state;
	cwlogs_free(f->cw);
	aws_credentials_free(f->creds);
	httpd_free(f->srv);
	http_client_free(f->http);
	ev_loop_destroy(f->loop);
	unsetenv("AWS_SESSION_TOKEN");
	free(f);
	return 0;
}

static void on_done(const struct cwlogs_result *res, void *arg)
{
	struct fix *f = arg;
	f->done++;
	f->res = *res;
	snprintf(f->code, sizeof f->code, "%s", res->error_code);
}

static const struct cwlogs_event EV[] = {{1795600000000LL, "one", 3},
					 {1795600000001LL, "two", 3},
					 {1795600000002LL, "three", 5}};

static void run(struct fix *f, const struct answer *script, size_t n)
{
	f->script = script;
	f->nscript = n;
	assert_true(cwlogs_put_events(f->cw, "/slipway/web", "web/i-1/3f9a", EV, 3, on_done, f) > 0);
	assert_int_equal(f->done, 0); /* never from inside the call */
	for (int i = 0; i < 5000 && !f->done; i++)
		ev_run(f->loop, EVRUN_ONCE);
	assert_int_equal(f->done, 1);
	assert_int_equal(cwlogs_pending(f->cw), 0);
}

static void test_creates_group_and_stream(void **state)
{
	struct fix *f = *state;
	static const struct answer s[] = {
		{400, "ResourceNotFoundException", NULL, NULL},    /* Put */
		{400, "ResourceNotFoundException", NULL, NULL},    /* CreateLogStream: no group */
		{200, NULL, NULL, NULL},                           /* CreateLogGroup */
		{200, NULL, NULL, NULL},                           /* PutRetentionPolicy */
		{400, "ResourceAlreadyExistsException", NULL, NULL}, /* CreateLogStream: raced */
		{200, NULL, "{\"rejectedLogEventsInfo\":{\"tooNewLogEventStartIndex\":2}}", NULL},
	};
	run(f, s, 6);
	assert_int_equal(f->res.status, CWLOGS_OK);
	assert_int_equal(f->nseen, 6);
	const char *want[] = {"PutLogEvents", "CreateLogStream", "CreateLogGroup",
			      "PutRetentionPolicy", "CreateLogStream", "PutLogEvents"};
	for (int i = 0; i < 6; i++) {
		char t[64];
		snprintf(t, sizeof t, "Logs_20140328.%s", want[i]);
		assert_string_equal(f->seen[i].target, t);
		assert_string_equal(f->seen[i].ctype, "application/x-amz-json-1.1");
		assert_string_equal(f->seen[i].token, "token-one");
		assert_non_null(strstr(f->seen[i].auth, "AWS4-HMAC-SHA256 Credential=AKIDTESTCWLOGS/"));
		assert_non_null(strstr(f->seen[i].auth, "/us-east-1/logs/aws4_request"));
		assert_non_null(strstr(f->seen[i].auth, "x-amz-target"));
	}
	assert_string_equal(f->seen[2].body, "{\"logGroupName\":\"/slipway/web\"}");
	assert_string_equal(f->seen[3].body,
			    "{\"logGroupName\":\"/slipway/web\",\"retentionInDays\":7}");
	assert_string_equal(f->seen[4].body, "{\"logGroupName\":\"/slipway/web\","
					     "\"logStreamName\":\"web/i-1/3f9a\"}");
	assert_int_equal(f->res.created, 1);
	assert_int_equal(f->res.attempts, 2);
	assert_int_equal(f->res.too_new_start, 2);
	assert_int_equal(f->res.rejected, 1);
}

static void test_throttling_retried(void **state)
{
	struct fix *f = *state;
	static const struct answer s[] = {
		{400, "ThrottlingException", NULL, NULL},
		{400, "ThrottlingException", NULL, NULL},
		{429, "TooManyRequestsException", NULL, NULL},
		{200, NULL, NULL, NULL},
	};
	run(f, s, 4);
	assert_int_equal(f->res.status, CWLOGS_OK);
	assert_int_equal(f->res.throttled, 3);
	assert_int_equal(f->res.attempts, 4);
	assert_int_equal(f->res.retries, 3);
}

static void test_5xx_then_unreachable(void **state)
{
	struct fix *f = *state;
	static const struct answer s[] = {
		{500, "InternalFailure", NULL, NULL},
		{503, "ServiceUnavailableException", NULL, NULL},
		{200, NULL, NULL, NULL},
	};
	run(f, s, 3);
	/* After the first retry fails, the caller is told (and spools). */
	assert_int_equal(f->res.status, CWLOGS_UNREACHABLE);
	assert_int_equal(f->res.attempts, 2);
	assert_string_equal(f->code, "ServiceUnavailableException");
}

static void test_dropped_connection(void **state)
{
	struct fix *f = *state;
	static const struct answer s[] = {{0, NULL, NULL, NULL}, {200, NULL, NULL, NULL}};
	run(f, s, 2);
	assert_int_equal(f->res.status, CWLOGS_OK);
	assert_int_equal(f->res.attempts, 2);
	assert_int_equal(f->res.retries, 1);
}

static void test_expired_token_refresh(void **state)
{
	struct fix *f = *state;
	/* The token is rotated (as IMDS would) while the request is refused. */
	static const struct answer s[] = {
		{403, "ExpiredTokenException", NULL, "token-two"},
		{200, NULL, NULL, NULL},
	};
	run(f, s, 2);
	assert_int_equal(f->res.status, CWLOGS_OK);
	assert_string_equal(f->seen[0].token, "token-one");
	assert_string_equal(f->seen[1].token, "token-two");
}

static void test_expired_token_once_only(void **state)
{
	struct fix *f = *state;
	static const struct answer s[] = {
		{403, "ExpiredTokenException", NULL, NULL},
		{403, "ExpiredTokenException", NULL, NULL},
		{200, NULL, NULL, NULL},
	};
	run(f, s, 3);
	assert_int_equal(f->res.status, CWLOGS_UNREACHABLE);
	assert_int_equal(f->nseen, 2);
}

static void test_clock_skew_resigned_once(void **state)
{
	struct fix *f = *state;
	static const struct answer s1[] = {
		{400, "InvalidSignatureException", NULL, NULL},
		{200, NULL, NULL, NULL},
	};
	run(f, s1, 2);
	assert_int_equal(f->res.status, CWLOGS_OK);
	assert_int_equal(f->nseen, 2);
	f->done = 0;
	f->nseen = 0;
	f->next = 0;
	static const struct answer s2[] = {
		{400, "InvalidSignatureException", NULL, NULL},
		{400, "InvalidSignatureException", NULL, NULL},
		{200, NULL, NULL, NULL},
	};
	run(f, s2, 3);
	assert_int_equal(f->res.status, CWLOGS_UNREACHABLE);
	assert_int_equal(f->nseen, 2);
}

static void test_refused(void **state)
{
	struct fix *f = *state;
	static const struct answer s[] = {{400, "InvalidParameterException", NULL, NULL}};
	run(f, s, 1);
	assert_int_equal(f->res.status, CWLOGS_REFUSED);
	assert_int_equal(f->nseen, 1);
	assert_string_equal(f->code, "InvalidParameterException");
}

static void test_cancel(void **state)
{
	struct fix *f = *state;
	uint64_t id = cwlogs_put_events(f->cw, "/g", "s", EV, 3, on_done, f);
	assert_true(id > 0);
	assert_int_equal(cwlogs_pending(f->cw), 1);
	cwlogs_cancel(f->cw, id);
	assert_int_equal(cwlogs_pending(f->cw), 0);
	for (int i = 0; i < 20; i++)
		ev_run(f->loop, EVRUN_NOWAIT);
	assert_int_equal(f->done, 0);
	/* Bad arguments: no call, no callback. */
	assert_int_equal(cwlogs_put_events(f->cw, "", "s", EV, 3, on_done, f), 0);
	assert_int_equal(cwlogs_put_events(f->cw, "/g", "s", EV, 0, on_done, f), 0);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_json_string),
		cmocka_unit_test(test_payload_hash),
		cmocka_unit_test(test_put_body),
		cmocka_unit_test(test_parse_error),
		cmocka_unit_test(test_parse_rejected),
		cmocka_unit_test(test_classify),
		T(test_creates_group_and_stream),
		T(test_throttling_retried),
		T(test_5xx_then_unreachable),
		T(test_dropped_connection),
		T(test_expired_token_refresh),
		T(test_expired_token_once_only),
		T(test_clock_skew_resigned_once),
		T(test_refused),
		T(test_cancel),
	};
	return cmocka_run_group_tests_name("cwlogs", tests, NULL, NULL);
}
