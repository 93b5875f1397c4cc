/*
 * awsjson: the request engine of slipway's clients for AWS services that
 * speak the AWS JSON protocol (sqs.c: JSON 1.0, ecr.c: JSON 1.1): POST / with
 * `X-Amz-Target: <prefix>.<Action>` and `Content-Type:
 * application/x-amz-json-1.x`, signed afresh with SigV4 for every attempt
 * (credentials from aws_credentials, the clock corrected by the signer).
 *
 * One call is one action. What it does until it reports:
 *   - a 2xx answer: AWSJSON_OK with the parsed document (an empty body is {});
 *   - throttling (ThrottlingException, Throttling, RequestThrottled,
 *     TooManyRequestsException, RequestLimitExceeded, 429): retried after a
 *     full-jitter backoff delay, at most throttle_attempts times in all;
 *   - 5xx, ServiceUnavailable, InternalFailure, InternalError,
 *     ServerException, a refused or dropped connection, a timeout: retried
 *     with full-jitter backoff, at most max_attempts attempts in a row;
 *   - ExpiredToken(Exception), InvalidClientTokenId, UnrecognizedClient-
 *     Exception, a signature error that is not about the clock: the
 *     credentials are invalidated (one refresh) and the action is re-signed
 *     and sent ONCE more;
 *   - a clock-skew answer (RequestTimeTooSkewed, "Signature expired", ...):
 *     sigv4_signer_note_skew corrects the offset and the action is re-signed
 *     and sent ONCE more;
 * and when retries run out it reports AWSJSON_UNREACHABLE (the caller tries
 * again later). Any other error answer is AWSJSON_ERROR with the service's
 * error name for the caller to act on (QueueDoesNotExist, ...).
 *
 * Retrying a dropped connection may repeat an action AWS already carried
 * out: callers use it for idempotent actions or accept the repeat (an SQS
 * message sent twice; slipway's consumers apply a job id once).
 *
 * Error names: the protocol's `__type` ("com.amazonaws.sqs#QueueDoesNotExist"
 * -> "QueueDoesNotExist"), else the x-amzn-ErrorType header; services with a
 * Query heritage (SQS) also send `x-amzn-query-error:
 * AWS.SimpleQueueService.NonExistentQueue;Sender`, kept as query_code and
 * matched by awsjson_error_is under either name.
 *
 * awsjson_call_ex changes those limits for one call (cwlogs: throttling
 * without limit for puts, a few requests in all for reads), hands a 2xx
 * answer over unparsed, and carries the one credentials refresh and skew
 * re-sign across the calls of one operation. A client may bring its own
 * payload hash and extra throttling error names (awsjson_opts).
 *
 * Ownership: the body is copied; the result and everything it points to live
 * for the duration of done. Threads: the loop thread only; never blocks.
 * awsjson_free must not be called from inside a done callback.
 */
#ifndef SLIPWAY_AWSJSON_H
#define SLIPWAY_AWSJSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "aws_credentials.h"
#include "err.h"

struct ev_loop;
struct http_client;
struct awsjson;

#define AWSJSON_DEFAULT_TIMEOUT_MS 30000
#define AWSJSON_DEFAULT_MAX_ANSWER ((size_t)1 << 20)

struct awsjson_opts {
	const char *region;           /* required, e.g. "eu-west-1" */
	const char *service;          /* signing name: "sqs", "ecr" */
	const char *endpoint;         /* NULL or "": default_endpoint */
	const char *default_endpoint; /* printf format with one %s for the region */
	const char *target_prefix;    /* "AmazonSQS" */
	const char *content_type;     /* "application/x-amz-json-1.0" */
	const char *ca_file;          /* NULL: the system bundle */
	int64_t timeout_ms;           /* per attempt; 0 = 30000 */
	int64_t retry_base_ms;        /* full-jitter backoff; 0 = 100 */
	int64_t retry_cap_ms;         /* 0 = 20000 */
	int max_attempts;             /* 5xx and transport failures in a row; 0 = 4 */
	int throttle_attempts;        /* throttled answers per call; 0 = 10 */
	size_t max_answer;            /* largest answer body; 0 = 1 MiB */
	/* NULL: crypto_sha256_hex. Lowercase hex SHA-256 of a request body (a
	 * faster one for clients that sign big bodies often: cwlogs). */
	void (*payload_hash)(const void *data, size_t len, char out[65]);
	/* NULL-terminated error names this service also means as throttling
	 * (CloudWatch Logs: LimitExceededException), or NULL. */
	const char *const *throttle_codes;
	/* NULL: "aws". Names the log events: <log_prefix>.credentials_refresh,
	 * <log_prefix>.clock_skew (operators' alerts know cwlogs.*). */
	const char *log_prefix;
};

/* Per-call settings for awsjson_call_ex; zero fields take the client's. */
struct awsjson_call_opts {
	int64_t timeout_ms;           /* per attempt */
	size_t max_answer;            /* largest answer body */
	int max_attempts;             /* 5xx and transport failures in a row */
	int throttle_attempts;        /* throttled answers; < 0: no limit */
	int max_requests;             /* requests in all before a retryable failure
				       * is AWSJSON_UNREACHABLE; 0: no such limit */
	bool raw_answer;              /* a 2xx answer is not parsed: res.body has it */
	/* Spent already by the caller's earlier calls of one operation: no
	 * second credentials refresh / skew re-sign in this call. */
	bool creds_retried;
	bool skew_retried;
};

enum awsjson_status {
	AWSJSON_OK = 0,
	AWSJSON_ERROR,        /* the service refused: code/query_code say why */
	AWSJSON_UNREACHABLE,  /* transport, 5xx, throttling or credentials: later */
};

struct awsjson_result {
	enum awsjson_status status;
	long http_status;         /* of the last answer; 0 when none came */
	const cJSON *doc;         /* AWSJSON_OK: the answer (an object); NULL if raw_answer */
	const char *body;         /* AWSJSON_OK with raw_answer: the answer as it came */
	size_t body_len;
	const char *code;         /* "QueueDoesNotExist"; "" on success */
	const char *query_code;   /* "AWS.SimpleQueueService.NonExistentQueue" or "" */
	bool sender_fault;        /* the query error said ";Sender" */
	const char *message;      /* human-readable; "" on success */
	int attempts;             /* requests sent */
	int retries;              /* of those, repeats after a failure */
	int throttled;            /* throttling answers seen */
	int64_t elapsed_ms;       /* from the call to done */
	bool creds_retried;       /* the one credentials refresh was used */
	bool skew_retried;        /* the one clock-skew re-sign was used */
};

typedef void (*awsjson_done_fn)(const struct awsjson_result *res, void *arg);

/* The provider, loop and client are the caller's and must outlive this.
 * NULL (err filled) on missing options or a bad endpoint. */
struct awsjson *awsjson_new(struct ev_loop *loop, struct http_client *http,
			    struct aws_credentials_provider *creds, const struct awsjson_opts *opts,
			    struct err *err);
/* Cancels every call (no callbacks) and frees. NULL is fine. */
void awsjson_free(struct awsjson *j);

/* Starts action with the JSON body (copied; NULL = "{}"). timeout_ms 0 uses
 * the client's per-attempt timeout (long polls pass their wait plus a margin).
 * Returns a call id, or 0 on bad arguments or no memory (no callback then). */
uint64_t awsjson_call(struct awsjson *j, const char *action, const char *body, size_t len,
		      int64_t timeout_ms, awsjson_done_fn done, void *arg);
/* awsjson_call with per-call settings (o may be NULL). */
uint64_t awsjson_call_ex(struct awsjson *j, const char *action, const char *body, size_t len,
			 const struct awsjson_call_opts *o, awsjson_done_fn done, void *arg);
/* Stops a call; its done is not called. Unknown ids are ignored. */
void awsjson_cancel(struct awsjson *j, uint64_t id);
size_t awsjson_pending(const struct awsjson *j);

/* The endpoint URL requests go to ("https://sqs.eu-west-1.amazonaws.com/"). */
const char *awsjson_endpoint(const struct awsjson *j);
/* The signer (tests read the clock offset). */
struct sigv4_signer *awsjson_signer(struct awsjson *j);

/* 1 when the result's error is `name`, under its protocol name or its query
 * name, with or without the "AWS.SimpleQueueService." prefix. */
int awsjson_error_is(const struct awsjson_result *res, const char *name);

/* ---- building blocks, exposed for tests ---- */

/* Reads an error answer into NUL-terminated buffers (any may be cut): code
 * from "__type" (after '#', before ':'), else the x-amzn-ErrorType header
 * (before ':'); qcode and sender_fault from x-amzn-query-error; msg from
 * "message"/"Message", else the start of the body. Headers may be NULL. */
void awsjson_parse_error(const char *body, size_t len, const char *error_type_header,
			 const char *query_error_header, char *code, size_t code_cap,
			 char *qcode, size_t qcode_cap, bool *sender_fault, char *msg,
			 size_t msg_cap);

enum awsjson_class {
	AWSJSON_CLASS_THROTTLE,
	AWSJSON_CLASS_RETRY,       /* 5xx and the like */
	AWSJSON_CLASS_CREDENTIALS, /* refresh the credentials, retry once */
	AWSJSON_CLASS_SKEW,        /* clock skew, retry once */
	AWSJSON_CLASS_SERVICE,     /* the service's own answer: the caller decides */
};
enum awsjson_class awsjson_classify(long status, const char *code, const char *query_code,
				    const char *message);

#endif
