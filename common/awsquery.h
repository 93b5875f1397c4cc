/*
 * awsquery: AWS's Query protocol (the one STS and Auto Scaling speak), the
 * part slipway needs:
 *
 *   - a strict reader for the XML answers: awsquery_xml_text picks the text
 *     of one element by its path from the root. libexpat parses (XML 1.0
 *     well-formedness, entities, line ends read as "\n"); its handlers refuse
 *     what a Query answer never holds: a DOCTYPE (stopped before any internal
 *     subset is read, so no entity is declared or expands), CDATA, processing
 *     instructions past the declaration, an encoding other than UTF-8,
 *     unknown entities, invalid UTF-8, NUL and other control bytes, more than
 *     AWSQUERY_XML_DEPTH levels, documents over a cap. The element asked for
 *     must be a leaf and appear once: an answer with two <Arn> elements is
 *     malformed, never "the first one wins". Error messages of syntax errors
 *     are expat's, with a line and column.
 *   - the error document (<ErrorResponse><Error><Code>, and EC2's
 *     <Response><Errors><Error>) and how each error code is handled;
 *   - a client for signed calls (POST /, application/x-www-form-urlencoded,
 *     Action=...&Version=..., SigV4 with credentials from aws_credentials)
 *     with the retry rules of every AWS client here (common/awsretry.h):
 *       Throttling and 5xx, a refused or dropped connection, a timeout:
 *         full-jitter backoff, up to max_attempts attempts in all;
 *       ExpiredToken, InvalidClientTokenId, SignatureDoesNotMatch (not a
 *         clock-skew one): credentials invalidated, re-signed, sent ONCE more;
 *       a clock-skew answer: sigv4_signer_note_skew, re-signed, sent ONCE more;
 *       anything else (ValidationError, AccessDenied, ...): final.
 *
 * Ownership: parameters are copied by awsquery_call. The result handed to
 * done, and the answer body it points to, live for the callback only.
 * Threads: the loop thread only; nothing blocks. awsquery_client_free must
 * not be called from inside a done callback.
 */
#ifndef SLIPWAY_AWSQUERY_H
#define SLIPWAY_AWSQUERY_H

#include <stddef.h>
#include <stdint.h>

#include "aws_credentials.h"
#include "buf.h"
#include "err.h"

struct ev_loop;
struct http_client;
struct awsquery_client;

#define AWSQUERY_XML_MAX ((size_t)256 << 10) /* Query answers are small */
#define AWSQUERY_XML_DEPTH 32
#define AWSQUERY_NAME_MAX 128
#define AWSQUERY_CONTENT_TYPE "application/x-www-form-urlencoded; charset=utf-8"

/* ---- XML ---- */

/*
 * The text of the element at `path`: element names from the root joined by
 * '/' ("GetCallerIdentityResponse/GetCallerIdentityResult/Arn"); namespace
 * prefixes of the document's names are ignored. Entities (&lt; &gt; &amp;
 * &quot; &apos; &#N; &#xH;) are decoded. Returns 1 with out filled, 0 when
 * there is no such element (out = ""), -1 when the document is malformed,
 * the element has child elements or appears more than once, or its text
 * does not fit in cap - 1 bytes (err says which).
 */
int awsquery_xml_text(const char *xml, size_t len, const char *path, char *out, size_t cap,
		      struct err *err);

/* Local name of the root element (1), or -1 for a malformed document. */
int awsquery_xml_root(const char *xml, size_t len, char *out, size_t cap, struct err *err);

/* ---- errors ---- */

/* Reads an error answer: code and message from <Error> (ErrorResponse or
 * EC2's Response/Errors); a body that is not such XML leaves code "" and
 * puts its printable start into msg. Both are always NUL-terminated. */
void awsquery_parse_error(const char *body, size_t len, char *code, size_t code_cap, char *msg,
			  size_t msg_cap);

enum awsquery_error_class {
	AWSQUERY_CLASS_THROTTLE,
	AWSQUERY_CLASS_RETRY,       /* 5xx and the like */
	AWSQUERY_CLASS_CREDENTIALS, /* refresh the credentials, retry once */
	AWSQUERY_CLASS_SKEW,        /* clock skew, retry once */
	AWSQUERY_CLASS_FINAL,       /* ValidationError, AccessDenied, other 4xx */
};
enum awsquery_error_class awsquery_classify(long status, const char *code, const char *message);

/* ---- form bodies ---- */

struct awsquery_param {
	const char *name;
	const char *value;
};

/* "Action=A&Version=V&name=value..." with every name and value
 * percent-encoded (RFC 3986 unreserved characters kept). */
int awsquery_form(struct buf *out, const char *action, const char *version,
		  const struct awsquery_param *params, size_t count);

/* ---- the client ---- */

struct awsquery_client_opts {
	const char *service;        /* signing name and default host: "autoscaling" */
	const char *version;        /* API version: "2011-01-01" */
	const char *region;         /* required */
	const char *endpoint;       /* NULL: https://<service>.<region>.amazonaws.com */
	const char *ca_file;        /* NULL: the system bundle */
	int64_t timeout_ms;         /* per attempt; 0 = 10000 */
	int64_t retry_base_ms;      /* 0 = 200 */
	int64_t retry_cap_ms;       /* 0 = 20000 */
	int max_attempts;           /* attempts for retryable failures; 0 = 8 */
};

enum awsquery_status {
	AWSQUERY_OK = 0,        /* a 2xx answer */
	AWSQUERY_FAILED,        /* a final error answer (code says which) */
	AWSQUERY_UNREACHABLE,   /* transport, 5xx or throttling past max_attempts, credentials */
};

struct awsquery_result {
	enum awsquery_status status;
	long http_status;       /* of the last answer; 0 when none came */
	const char *code;       /* "" on success */
	const char *message;    /* "" on success */
	const char *body;       /* the last answer's body ("" when none) */
	size_t body_len;
	int attempts;           /* requests sent */
	int throttled;          /* throttling answers seen */
};

typedef void (*awsquery_done_fn)(const struct awsquery_result *res, void *arg);

/* The loop, client and provider are the caller's and must outlive this.
 * NULL (err filled) on a bad region, service or endpoint. */
struct awsquery_client *awsquery_client_new(struct ev_loop *loop, struct http_client *http,
					    struct aws_credentials_provider *creds,
					    const struct awsquery_client_opts *opts, struct err *err);
/* Cancels every call (no callbacks) and frees. NULL is fine. */
void awsquery_client_free(struct awsquery_client *c);

/* Calls `action` with the parameters. Returns a call id, or 0 on bad
 * arguments (then done is never called). */
uint64_t awsquery_call(struct awsquery_client *c, const char *action,
		       const struct awsquery_param *params, size_t count, awsquery_done_fn done,
		       void *arg);
/* Stops a call; its done is not called. Unknown ids are ignored. */
void awsquery_cancel(struct awsquery_client *c, uint64_t id);
size_t awsquery_pending(const struct awsquery_client *c);

/* Splits an http(s) endpoint URL into host (with a non-default port) and
 * path (at least "/"). -1 and err when it is not usable. */
int awsquery_split_endpoint(const char *url, char *host, size_t host_cap, char *path,
			    size_t path_cap, struct err *err);

#endif
