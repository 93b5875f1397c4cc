/*
 * libFuzzer target for common/awsquery's XML reader (libexpat behind
 * refusing handlers) and what reads AWS Query answers with it: the element
 * picker awsquery_xml_text, awsquery_xml_root, the error document reader
 * awsquery_parse_error with awsquery_classify, and sts_parse_identity /
 * sts_identity_allowed (the GetCallerIdentity answer the coordinator gets).
 *
 * Input: byte 0 picks the caller's buffer size (bits 0-2), the HTTP status
 * (bits 3-6), and with bit 7 the rest is an ARN for sts_parse_arn instead of
 * a document. Checks, beyond the sanitizers: every result is 1, 0 or -1 and
 * ends inside its buffer; a refusal has a message and leaves out ""; an
 * element's text is valid UTF-8 without NUL; the cap is exact (text of n
 * bytes fits cap n + 1 and not cap n); a document the reader takes for one
 * path has a root for awsquery_xml_root, and one it refuses as malformed is
 * refused whatever the path; an identity that parses has a 12-digit account
 * and the ARN's type.
 *
 *   make build/fuzz/fuzz_awsquery
 *   build/fuzz/fuzz_awsquery -max_total_time=60 tests/fuzz/seeds/awsquery
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "awsquery.h"
#include "json.h"
#include "sts.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define TERMINATED(buf, cap) (memchr((buf), '\0', (cap)) != NULL)

static const size_t caps[] = {1, 2, 5, 13, 64, 256, 2048, 8192};

static const char *const paths[] = {
	"GetCallerIdentityResponse/GetCallerIdentityResult/Arn",
	"GetCallerIdentityResponse/GetCallerIdentityResult/Account",
	"ErrorResponse/Error/Code",
	"ErrorResponse/Error/Message",
	"Response/Errors/Error/Code",
	"R/B",
	"R",
	"a:R/b",
};

static char text[8192 + 16];

static void check_identity(const struct sts_identity *id)
{
	if (!TERMINATED(id->account, sizeof id->account) || !TERMINATED(id->arn, sizeof id->arn) ||
	    !TERMINATED(id->user_id, sizeof id->user_id) ||
	    !TERMINATED(id->partition, sizeof id->partition) ||
	    !TERMINATED(id->type, sizeof id->type) || !TERMINATED(id->role, sizeof id->role) ||
	    !TERMINATED(id->session, sizeof id->session))
		abort();
}

static void fuzz_arn(const char *s, size_t len)
{
	char arn[STS_ARN_MAX + 8];
	if (len >= sizeof arn)
		len = sizeof arn - 1;
	memcpy(arn, s, len);
	arn[len] = '\0';
	struct sts_identity id;
	memset(&id, 0, sizeof id);
	struct err err;
	memset(err.msg, 'x', sizeof err.msg);
	if (sts_parse_arn(arn, &id, &err) < 0) {
		if (!TERMINATED(err.msg, sizeof err.msg) || !err.msg[0])
			abort();
		return;
	}
	check_identity(&id);
	if (!id.type[0] || !id.partition[0] || strlen(id.account) != 0)
		abort(); /* sts_parse_arn checks the account, it does not fill it */
	sts_identity_allowed(&id, "123456789012, 210987654321", "slipway-agent", id.session, &err);
}

/* One path: the result's invariants; returns rc. */
static int pick(const char *xml, size_t len, const char *path, size_t cap)
{
	struct err err;
	memset(err.msg, 'x', sizeof err.msg);
	memset(text, 0xA5, sizeof text);
	int rc = awsquery_xml_text(xml, len, path, text, cap, &err);
	if (rc < -1 || rc > 1 || !TERMINATED(text, cap))
		abort();
	if (rc == -1 && (!TERMINATED(err.msg, sizeof err.msg) || !err.msg[0]))
		abort();
	if (rc != 1 && text[0] != '\0')
		abort();
	if (rc == 1) {
		size_t n = strlen(text);
		if (n >= cap || json_utf8_check(text, n, NULL) < 0)
			abort();
	}
	return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	size_t cap = caps[data[0] & 7];
	long status = 400 + 10 * ((data[0] >> 3) & 15);
	const char *doc = (const char *)data + 1;
	size_t len = size - 1;
	if (data[0] & 0x80) {
		fuzz_arn(doc, len);
		return 0;
	}

	int any_ok = 0, malformed = 0;
	for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
		int rc = pick(doc, len, paths[i], cap);
		if (rc >= 0)
			any_ok = 1;
		if (rc == 1 && i == 0) {
			/* The cap is exact. */
			char keep[sizeof text];
			size_t n = strlen(text);
			memcpy(keep, text, n + 1);
			if (pick(doc, len, paths[i], n + 1) != 1 || strcmp(text, keep) != 0)
				abort();
			if (n > 0 && pick(doc, len, paths[i], n) != -1)
				abort();
		}
		if (rc == -1 && i == 0)
			malformed = awsquery_xml_root(doc, len, text, sizeof text, NULL) < 0;
	}
	char root[AWSQUERY_NAME_MAX + 1];
	struct err err;
	int rrc = awsquery_xml_root(doc, len, root, sizeof root, &err);
	if (rrc != 1 && rrc != -1)
		abort();
	if (any_ok && (rrc != 1 || !root[0]))
		abort();
	if (malformed && any_ok)
		abort();

	/* The error document, with the caller's caps. */
	char code[128], msg[512];
	size_t ccap = cap < sizeof code ? cap : sizeof code;
	size_t mcap = cap < sizeof msg ? cap : sizeof msg;
	memset(code, 0xA5, sizeof code);
	memset(msg, 0xA5, sizeof msg);
	awsquery_parse_error(doc, len, code, ccap, msg, mcap);
	if (!TERMINATED(code, ccap) || !TERMINATED(msg, mcap))
		abort();
	enum awsquery_error_class cls = awsquery_classify(status, code, msg);
	if ((unsigned)cls > AWSQUERY_CLASS_FINAL)
		abort();

	/* The identity STS vouches for. */
	struct sts_identity id;
	memset(&id, 0xA5, sizeof id);
	if (sts_parse_identity(doc, len, &id, &err) == 0) {
		check_identity(&id);
		if (strlen(id.account) != 12 || !id.type[0] || !id.arn[0])
			abort();
		sts_identity_allowed(&id, "123456789012", "slipway-agent,other", NULL, &err);
	} else if (!TERMINATED(err.msg, sizeof err.msg) || !err.msg[0]) {
		abort();
	}
	return 0;
}
