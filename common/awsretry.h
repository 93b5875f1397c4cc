/*
 * awsretry: the retry rules of slipway's AWS clients in one place, for both
 * request engines (awsjson: the JSON protocol; awsquery: the Query one):
 * which error answers mean throttling, a failure another attempt may cure,
 * credentials to refresh, or a skewed clock; and, after such a failure,
 * what the call does next within its limits:
 *   - throttling and retryable failures: wait a full-jitter backoff delay and
 *     send again, until a limit says stop;
 *   - credentials: refresh them and re-sign ONCE per call;
 *   - clock skew: correct the signer's offset (sigv4_signer_note_skew) and
 *     re-sign ONCE per call, when the answer says by how much.
 * The engines keep what differs between the protocols: the error document,
 * the extra error names each knows (struct awsretry_names), and the limits
 * (struct awsretry_limits).
 *
 * Pure functions over the caller's state; no allocation; any thread.
 */
#ifndef SLIPWAY_AWSRETRY_H
#define SLIPWAY_AWSRETRY_H

#include <stdbool.h>
#include <stdint.h>

#include "backoff.h"

struct sigv4_signer;

enum awsretry_class {
	AWSRETRY_THROTTLE,
	AWSRETRY_RETRY,       /* 5xx and the like; transport failures too */
	AWSRETRY_CREDENTIALS, /* refresh the credentials, retry once */
	AWSRETRY_SKEW,        /* clock skew, retry once */
	AWSRETRY_SERVICE,     /* the service's own answer: the caller decides */
};

/* A protocol's error names beyond the common ones: NULL-terminated lists,
 * any may be NULL. */
struct awsretry_names {
	const char *const *throttle;
	const char *const *credentials;
	const char *const *retry;
};

/* The class of an error answer: the code (and, for services with a Query
 * heritage, the query code) matched by name, the message for clock skew,
 * the status for 429, 408 and 5xx. Any string may be NULL. */
enum awsretry_class awsretry_classify(long status, const char *code, const char *query_code,
				      const char *message, const struct awsretry_names *extra);

/* 1 when code or query_code is one of the NULL-terminated names (may be NULL). */
int awsretry_named_in(const char *const *names, const char *code, const char *query_code);

struct awsretry_limits {
	struct backoff_policy backoff;
	int max_fails;        /* retryable failures; 0: no such limit */
	int max_throttled;    /* throttled answers; <= 0: no such limit */
	int max_requests;     /* requests sent in all; 0: no such limit */
	bool throttle_is_failure; /* a throttled answer also counts (and waits) as a failure */
	bool fails_in_a_row;  /* a credentials or skew answer starts the failure count again */
};

/* One call's retry state; zero it when the call starts. */
struct awsretry {
	int fails;
	int throttled;
	bool creds_retried;
	bool skew_retried;
};

enum awsretry_next {
	AWSRETRY_STOP,    /* give up: the caller reports */
	AWSRETRY_WAIT,    /* send again after *delay_ms */
	AWSRETRY_REFRESH, /* invalidate the credentials, send again now */
	AWSRETRY_RESIGN,  /* the signer's clock is corrected: send again now */
};

/* After a failure of class cls (not AWSRETRY_SERVICE), with requests sent
 * so far: updates st and says what the call does next. signer, code, msg
 * and date_header (the answer's Date, may be NULL) serve AWSRETRY_SKEW. */
enum awsretry_next awsretry_next(struct awsretry *st, const struct awsretry_limits *lim,
				 enum awsretry_class cls, int requests,
				 struct sigv4_signer *signer, const char *code, const char *msg,
				 const char *date_header, int64_t *delay_ms);

#endif
