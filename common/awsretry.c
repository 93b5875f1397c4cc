#include "awsretry.h"

#include <stddef.h>
#include <string.h>

#include "sigv4.h"

/* The names every AWS protocol here shares. */
static const char *const throttle_names[] = {
	"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded",
	NULL,
};
static const char *const skew_names[] = {
	"RequestTimeTooSkewed", "RequestExpired", "RequestInTheFuture", NULL,
};
static const char *const credentials_names[] = {
	"ExpiredToken", "ExpiredTokenException", "UnrecognizedClientException",
	"InvalidClientTokenId", "InvalidSignatureException", "SignatureDoesNotMatch",
	"IncompleteSignature", NULL,
};
static const char *const retry_names[] = {
	"ServiceUnavailable", "InternalFailure", "InternalError", "RequestTimeout", NULL,
};

int awsretry_named_in(const char *const *names, const char *code, const char *query_code)
{
	for (; names && *names; names++)
		if ((code && strcmp(code, *names) == 0) ||
		    (query_code && strcmp(query_code, *names) == 0))
			return 1;
	return 0;
}

enum awsretry_class awsretry_classify(long status, const char *code, const char *qcode,
				      const char *message, const struct awsretry_names *extra)
{
	static const struct awsretry_names none;
	if (!extra)
		extra = &none;
	if (!message)
		message = "";
	if (awsretry_named_in(throttle_names, code, qcode) ||
	    awsretry_named_in(extra->throttle, code, qcode) || status == 429)
		return AWSRETRY_THROTTLE;
	if (awsretry_named_in(skew_names, code, qcode) || strstr(message, "Signature expired") ||
	    strstr(message, "Signature not yet current"))
		return AWSRETRY_SKEW;
	if (awsretry_named_in(credentials_names, code, qcode) ||
	    awsretry_named_in(extra->credentials, code, qcode))
		return AWSRETRY_CREDENTIALS;
	if (status >= 500 || awsretry_named_in(retry_names, code, qcode) ||
	    awsretry_named_in(extra->retry, code, qcode) || status == 408)
		return AWSRETRY_RETRY;
	return AWSRETRY_SERVICE;
}

static int out_of_requests(const struct awsretry_limits *lim, int requests)
{
	return lim->max_requests > 0 && requests >= lim->max_requests;
}

static enum awsretry_next failed(struct awsretry *st, const struct awsretry_limits *lim,
				 int requests, int64_t *delay_ms)
{
	st->fails++;
	if ((lim->max_fails > 0 && st->fails >= lim->max_fails) || out_of_requests(lim, requests))
		return AWSRETRY_STOP;
	*delay_ms = backoff_delay(&lim->backoff, st->fails);
	return AWSRETRY_WAIT;
}

enum awsretry_next awsretry_next(struct awsretry *st, const struct awsretry_limits *lim,
				 enum awsretry_class cls, int requests,
				 struct sigv4_signer *signer, const char *code, const char *msg,
				 const char *date_header, int64_t *delay_ms)
{
	*delay_ms = 0;
	switch (cls) {
	case AWSRETRY_THROTTLE:
		st->throttled++;
		if (lim->throttle_is_failure)
			return failed(st, lim, requests, delay_ms);
		if ((lim->max_throttled > 0 && st->throttled >= lim->max_throttled) ||
		    out_of_requests(lim, requests))
			return AWSRETRY_STOP;
		*delay_ms = backoff_delay(&lim->backoff, st->throttled);
		return AWSRETRY_WAIT;
	case AWSRETRY_RETRY:
		return failed(st, lim, requests, delay_ms);
	case AWSRETRY_CREDENTIALS:
		if (lim->fails_in_a_row)
			st->fails = 0;
		if (st->creds_retried)
			return AWSRETRY_STOP;
		st->creds_retried = true;
		return AWSRETRY_REFRESH;
	case AWSRETRY_SKEW:
		if (lim->fails_in_a_row)
			st->fails = 0;
		if (!st->skew_retried && signer &&
		    sigv4_signer_note_skew(signer, code ? code : "", msg ? msg : "", date_header)) {
			st->skew_retried = true;
			return AWSRETRY_RESIGN;
		}
		return AWSRETRY_STOP;
	case AWSRETRY_SERVICE:
		break;
	}
	return AWSRETRY_STOP;
}
