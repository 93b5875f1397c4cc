/*
 * libFuzzer target for common/awsjson's readers of what an AWS JSON-protocol
 * service (SQS, ECR) answers: awsjson_parse_error on the body and the
 * x-amzn-ErrorType / x-amzn-query-error headers, awsjson_classify,
 * awsjson_error_is, the 2xx body (json_parse with the client's cap, as
 * on_http reads it), and sigv4_signer_note_skew on the error and the Date
 * header (how a skew answer moves the signer's clock).
 *
 * Input: byte 0 picks the buffer sizes (bits 0-1), whether each header is
 * there (bits 2-3) and the HTTP status (bits 4-7); the rest is
 * "ERRORTYPE\nQUERYERROR\nDATE\nBODY" (missing lines are empty). Checks,
 * beyond the sanitizers: every output ends inside its buffer; the code holds
 * no '#' or ':' and the query code no ';' (they were cut there); a message
 * taken from a body that is not JSON is printable ASCII; a result whose
 * code is X answers awsjson_error_is(X); the signer's clock offset moves
 * only when sigv4_signer_note_skew says it did.
 *
 *   make build/fuzz/fuzz_awsjson
 *   build/fuzz/fuzz_awsjson -max_total_time=60 tests/fuzz/seeds/awsjson
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "awsjson.h"
#include "json.h"
#include "log.h"
#include "sigv4.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define TERMINATED(buf, cap) (memchr((buf), '\0', (cap)) != NULL)
#define HEADER_MAX 1024

static const size_t caps[] = {1, 7, 128, 512};

/* The next '\n'-terminated line of [*p, end) into out (NUL bytes end it early,
 * as they would a header value). */
static void take_line(const char **p, const char *end, char *out, size_t cap)
{
	const char *nl = memchr(*p, '\n', (size_t)(end - *p));
	const char *stop = nl ? nl : end;
	size_t n = (size_t)(stop - *p);
	if (n >= cap)
		n = cap - 1;
	memcpy(out, *p, n);
	out[n] = '\0';
	*p = nl ? nl + 1 : end;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	log_set_level(LOG_LEVEL_ERROR); /* note_skew warns on every skew answer */
	if (size < 1)
		return 0;
	size_t cap = caps[data[0] & 3];
	bool with_type = data[0] & 4, with_query = data[0] & 8;
	long status = (data[0] >> 4) == 15 ? 200 : 400 + 10 * (data[0] >> 4);
	const char *p = (const char *)data + 1, *end = (const char *)data + size;
	char type_h[HEADER_MAX], query_h[HEADER_MAX], date_h[HEADER_MAX];
	take_line(&p, end, type_h, sizeof type_h);
	take_line(&p, end, query_h, sizeof query_h);
	take_line(&p, end, date_h, sizeof date_h);
	const char *body = p;
	size_t len = (size_t)(end - p);

	char code[128], qcode[128], msg[512];
	size_t ccap = cap < sizeof code ? cap : sizeof code;
	size_t qcap = ccap;
	size_t mcap = cap;
	bool sender = true;
	memset(code, 0xA5, sizeof code);
	memset(qcode, 0xA5, sizeof qcode);
	memset(msg, 0xA5, sizeof msg);
	awsjson_parse_error(body, len, with_type ? type_h : NULL, with_query ? query_h : NULL, code,
			    ccap, qcode, qcap, &sender, msg, mcap);
	if (!TERMINATED(code, ccap) || !TERMINATED(qcode, qcap) || !TERMINATED(msg, mcap))
		abort();
	if (strchr(code, ':') || strchr(code, '#') || strchr(qcode, ';'))
		abort();
	if (!with_query && (qcode[0] || sender))
		abort();
	struct err err;
	cJSON *doc = len ? json_parse(body, len, len, &err) : NULL;
	if (len && !doc) {
		/* Not JSON: the message is the body's printable start. */
		for (const char *c = msg; *c; c++)
			if (*c < 0x20 || *c >= 0x7f)
				abort();
	}
	cJSON_Delete(doc);

	enum awsjson_class cls = awsjson_classify(status, code, qcode, msg);
	if ((unsigned)cls > AWSJSON_CLASS_SERVICE)
		abort();
	struct awsjson_result res = {
		.status = AWSJSON_ERROR,
		.http_status = status,
		.code = code,
		.query_code = qcode,
		.sender_fault = sender,
		.message = msg,
	};
	if ((code[0] && !awsjson_error_is(&res, code)) ||
	    (qcode[0] && !awsjson_error_is(&res, qcode)))
		abort();
	awsjson_error_is(&res, "QueueDoesNotExist");
	awsjson_error_is(&res, "AWS.SimpleQueueService.NonExistentQueue");
	res.status = AWSJSON_OK;
	if (awsjson_error_is(&res, code))
		abort();

	/* A 2xx answer as on_http reads it. */
	doc = json_parse(body, len, AWSJSON_DEFAULT_MAX_ANSWER, &err);
	if (!doc && (!TERMINATED(err.msg, sizeof err.msg) || !err.msg[0]))
		abort();
	cJSON_Delete(doc);

	/* A skew answer corrects the signer's clock by at most what it says. */
	struct sigv4_signer s;
	if (sigv4_signer_init(&s, "eu-west-1", "sqs", NULL, NULL) < 0)
		abort();
	int moved = sigv4_signer_note_skew(&s, code, msg, date_h[0] ? date_h : NULL);
	if ((moved != 0 && moved != 1) || (!moved && s.clock_offset_ms != 0))
		abort();
	int64_t before = s.clock_offset_ms;
	moved = sigv4_signer_note_skew(&s, type_h, query_h, date_h);
	if ((moved != 0 && moved != 1) || (!moved && s.clock_offset_ms != before))
		abort();
	sigv4_signer_clear(&s);
	return 0;
}
