/*
 * cwlogs: a CloudWatch Logs client for the log shipper: PutLogEvents, with
 * the log group and stream created on demand (and, for the coordinator's
 * `slipway logs`, FilterLogEvents and GetLogEvents: see "reading" below),
 * over the AWS JSON 1.1 protocol
 * (POST / with `X-Amz-Target: Logs_20140328.<Operation>` and
 * `Content-Type: application/x-amz-json-1.1`), SigV4-signed (service "logs")
 * with credentials from aws_credentials. The requests go through awsjson
 * (common/awsjson.h: signing per attempt, retries, error documents); what is
 * CloudWatch's own (the create steps, rejectedLogEventsInfo, which errors
 * refuse a batch, the read answers) is here.
 *
 * One call = one batch of one stream. What a call does until it reports:
 *   - PutLogEvents. Sequence tokens are gone: none is sent or read.
 *   - ResourceNotFoundException: CreateLogStream; if that says the group is
 *     missing, CreateLogGroup (then PutRetentionPolicy when retention_days is
 *     set) and CreateLogStream again; ResourceAlreadyExistsException counts
 *     as success (another writer, or our own earlier attempt, made it). Then
 *     PutLogEvents again. At most CWLOGS_CREATE_ROUNDS such rounds per call.
 *   - ThrottlingException (and 429): retried after a full-jitter backoff
 *     delay for as long as it lasts (the service is up; the caller's stream
 *     simply waits, which is the backpressure it needs).
 *   - 5xx, ServiceUnavailableException, a refused or dropped connection, a
 *     timeout: retried with full-jitter backoff; after unreachable_attempts
 *     such failures in a row the call reports CWLOGS_UNREACHABLE (the
 *     caller spools the batch and tries again later).
 *   - ExpiredToken(Exception), UnrecognizedClientException,
 *     InvalidClientTokenId, InvalidSignatureException or SignatureDoesNotMatch
 *     (not a clock-skew one): the credentials are invalidated (one refresh
 *     per call, across its steps) and the request is re-signed and sent ONCE
 *     more; a second such answer is CWLOGS_UNREACHABLE (logs wait in the
 *     spool until credentials work).
 *   - a clock-skew answer ("Signature expired", RequestTimeTooSkewed, ...):
 *     sigv4_signer_note_skew corrects the signer's offset and the request is
 *     re-signed and sent ONCE more.
 *   - InvalidParameterException, SerializationException, ValidationException,
 *     413: CWLOGS_REFUSED: the batch can never be accepted as it is.
 *   - any other error (AccessDenied, 4xx we do not know): CWLOGS_UNREACHABLE.
 * A 200 answer is CWLOGS_OK; its rejectedLogEventsInfo is parsed into the
 * result so the caller can count (and log) the events CloudWatch dropped.
 *
 * Ownership: the event array and the messages it points to are the caller's
 * and must stay valid and unchanged until done runs (the PutLogEvents body
 * is built again after a create step instead of being held through it).
 * Group and stream names are copied. The result passed to done lives for
 * the call.
 *
 * Threads: the loop thread only; never blocks. cwlogs_free must not be
 * called from inside a done callback.
 */
#ifndef SLIPWAY_CWLOGS_H
#define SLIPWAY_CWLOGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aws_credentials.h"
#include "buf.h"
#include "err.h"

struct ev_loop;
struct http_client;
struct cwlogs;
struct cJSON;

#define CWLOGS_SERVICE "logs"
#define CWLOGS_TARGET_PREFIX "Logs_20140328."
#define CWLOGS_CONTENT_TYPE "application/x-amz-json-1.1"
#define CWLOGS_CREATE_ROUNDS 2
#define CWLOGS_MAX_ANSWER ((size_t)256 << 10)

struct cwlogs_opts {
	const char *region;            /* required, e.g. "eu-west-1" */
	const char *endpoint;          /* NULL: https://logs.<region>.amazonaws.com */
	const char *ca_file;           /* NULL: the system bundle */
	int64_t timeout_ms;            /* per attempt; 0 = 30000 */
	int64_t retry_base_ms;         /* full-jitter backoff; 0 = 200 */
	int64_t retry_cap_ms;          /* 0 = 20000 */
	int unreachable_attempts;      /* attempts before CWLOGS_UNREACHABLE; 0 = 2 */
	int retention_days;            /* PutRetentionPolicy on groups we create; 0 = none */
};

enum cwlogs_status {
	CWLOGS_OK = 0,         /* accepted (possibly with rejected events, see below) */
	CWLOGS_UNREACHABLE,    /* transport, 5xx, credentials: try again later */
	CWLOGS_REFUSED,        /* the batch as it is will never be accepted */
};

struct cwlogs_result {
	enum cwlogs_status status;
	long http_status;               /* of the last answer; 0 when none came */
	const char *error_code;         /* "ThrottlingException", ...; "" on success */
	const char *message;            /* human-readable; "" on success */
	int attempts;                   /* PutLogEvents requests sent */
	int retries;                    /* of those, repeats after a failure */
	int throttled;                  /* throttling answers seen */
	int created;                    /* group or stream created by this call */
	/* rejectedLogEventsInfo, -1 when absent (indexes into the batch) */
	int64_t too_new_start;          /* [too_new_start, count) were too new */
	int64_t too_old_end;            /* [0, too_old_end) were too old */
	int64_t expired_end;            /* [0, expired_end) were past the retention */
	size_t rejected;                /* how many events those cover */
};

struct cwlogs_event {
	int64_t ts_ms;
	const char *message;   /* valid UTF-8, 1..1,048,550 bytes */
	size_t len;
};

typedef void (*cwlogs_done_fn)(const struct cwlogs_result *res, void *arg);

/* The provider, loop and client are the caller's and must outlive this.
 * NULL (err filled) on a bad region or endpoint. */
struct cwlogs *cwlogs_new(struct ev_loop *loop, struct http_client *http,
			  struct aws_credentials_provider *creds, const struct cwlogs_opts *opts,
			  struct err *err);
/* Cancels every call (no callbacks) and frees. NULL is fine. */
void cwlogs_free(struct cwlogs *cw);

/* Puts count events (chronological) into group/stream. Returns a call id,
 * or 0 on bad arguments or no memory (no callback then). */
uint64_t cwlogs_put_events(struct cwlogs *cw, const char *group, const char *stream,
			   const struct cwlogs_event *events, size_t count, cwlogs_done_fn done,
			   void *arg);
/* Stops a call; its done is not called. Unknown ids are ignored. */
void cwlogs_cancel(struct cwlogs *cw, uint64_t id);

/* Calls in progress. */
size_t cwlogs_pending(const struct cwlogs *cw);

/* ---- building blocks, exposed for tests ---- */

/* Lowercase hex SHA-256 of the payload; with allow_fast, through the CPU's SHA
 * extensions when it has them (the same digest, faster than mbedTLS). */
void cwlogs_sha256_hex(const void *data, size_t len, char out[65], int allow_fast);

/* Appends s as a JSON string (quotes included). Bytes >= 0x80 are copied as
 * they are (the caller guarantees UTF-8); control characters are escaped. */
int cwlogs_json_string(struct buf *out, const char *s, size_t len);
/* Bytes cwlogs_json_string would append for s. */
size_t cwlogs_json_string_len(const char *s, size_t len);

/* The PutLogEvents request body. */
int cwlogs_put_body(struct buf *out, const char *group, const char *stream,
		    const struct cwlogs_event *events, size_t count);

/* Reads an error answer: the code from "__type" (the part after '#', before
 * ':'), else the x-amzn-ErrorType header value (may be NULL), and the
 * "message"/"Message". code and msg are always NUL-terminated. */
void cwlogs_parse_error(const char *body, size_t len, const char *error_type_header,
			char *code, size_t code_cap, char *msg, size_t msg_cap);

/* Reads rejectedLogEventsInfo of a PutLogEvents answer into res (the index
 * fields and `rejected`, for a batch of count events). 0, or -1 when the
 * answer is not JSON. */
int cwlogs_parse_rejected(const char *body, size_t len, size_t count,
			  struct cwlogs_result *res);

/* How an error answer is handled (see above). */
enum cwlogs_error_class {
	CWLOGS_CLASS_THROTTLE,
	CWLOGS_CLASS_RETRY,       /* 5xx and the like */
	CWLOGS_CLASS_NOT_FOUND,   /* ResourceNotFoundException */
	CWLOGS_CLASS_EXISTS,      /* ResourceAlreadyExistsException */
	CWLOGS_CLASS_CREDENTIALS, /* refresh the credentials, retry once */
	CWLOGS_CLASS_SKEW,        /* clock skew, retry once */
	CWLOGS_CLASS_REFUSED,
	CWLOGS_CLASS_OTHER,
};
enum cwlogs_error_class cwlogs_classify(long status, const char *code, const char *message);

/* ---- reading: FilterLogEvents and GetLogEvents (the coordinator's
 * `slipway logs` in CloudWatch mode) ----
 *
 * One call = one request (one page). Throttling, 5xx, transport and
 * credentials-fetch failures are retried with backoff up to
 * CWLOGS_READ_ATTEMPTS attempts in all (a
 * person is waiting: the caller answers 503 rather than wait forever);
 * credentials are refreshed once and a clock skew corrected once, as for
 * puts. ResourceNotFoundException (no such group or stream: nothing was ever
 * shipped) is CWLOGS_OK with not_found set and no events;
 * InvalidParameterException and the like are CWLOGS_REFUSED.
 */
#define CWLOGS_READ_ATTEMPTS 4
#define CWLOGS_READ_MAX_ANSWER ((size_t)16 << 20) /* 1 MB of events, escaped */

struct cwlogs_read_event {
	int64_t ts_ms;
	int64_t ingestion_ms;   /* 0 when absent */
	const char *stream;     /* FilterLogEvents: logStreamName; GetLogEvents: the stream asked for */
	const char *message;
	const char *event_id;   /* FilterLogEvents: eventId; "" otherwise */
};

struct cwlogs_read_result {
	enum cwlogs_status status;
	bool not_found;                 /* the group (or stream) does not exist */
	long http_status;
	const char *error_code;         /* "" on success */
	const char *message;            /* "" on success */
	const struct cwlogs_read_event *events;
	size_t count;
	/* FilterLogEvents: nextToken, NULL on the last page. GetLogEvents:
	 * nextForwardToken (always given; the same token again means no new
	 * events yet), and nextBackwardToken. */
	const char *next_token;
	const char *backward_token;
	int attempts;
};

typedef void (*cwlogs_read_fn)(const struct cwlogs_read_result *res, void *arg);

struct cwlogs_filter {
	const char *group;              /* required */
	const char *stream_prefix;      /* logStreamNamePrefix; NULL = every stream */
	int64_t start_ms;               /* startTime; 0 = none */
	int64_t end_ms;                 /* endTime; 0 = none */
	int limit;                      /* 1..10000; 0 = the service's default */
	const char *filter_pattern;     /* NULL = every event */
	const char *next_token;         /* NULL = the first page */
};

struct cwlogs_get {
	const char *group;              /* required */
	const char *stream;             /* required */
	int64_t start_ms, end_ms;       /* 0 = none */
	int limit;                      /* 1..10000; 0 = the service's default */
	bool start_from_head;           /* false: the newest events (the service's default) */
	const char *next_token;
};

/* Both return a call id (cwlogs_cancel stops it), or 0 on bad arguments. */
uint64_t cwlogs_filter_events(struct cwlogs *cw, const struct cwlogs_filter *f,
			      cwlogs_read_fn done, void *arg);
uint64_t cwlogs_get_events(struct cwlogs *cw, const struct cwlogs_get *g, cwlogs_read_fn done,
			   void *arg);

/* The request bodies and the answer parser, exposed for tests. The parsed
 * events point into *doc, which the caller frees with cJSON_Delete (and the
 * event array with free). default_stream names GetLogEvents' events. */
int cwlogs_filter_body(struct buf *out, const struct cwlogs_filter *f);
int cwlogs_get_body(struct buf *out, const struct cwlogs_get *g);
int cwlogs_parse_events(const char *body, size_t len, const char *default_stream,
			struct cJSON **doc, struct cwlogs_read_event **events, size_t *count,
			const char **next_token, const char **backward_token, struct err *err);

#endif
