/*
 * sigv4: AWS Signature Version 4, for the Authorization header and for
 * presigned URLs (query-string signing).
 *
 * A struct sigv4_signer is owned by the caller (embed it in the client of one
 * AWS service): it fixes region, service and options, caches the derived
 * signing key (it only changes daily), and keeps the offset between the
 * server's clock and ours, so that signatures made after a clock-skew error
 * use clock_wall_ms() + offset. One signer per thread at a time (it is
 * mutated while signing); nothing in here blocks or does I/O.
 *
 * Inputs are borrowed for the duration of the call. Results are written to a
 * struct sigv4_result that the caller releases with sigv4_result_free (which
 * wipes its copy of the session token; the signing key never leaves the
 * signer). On -1 the result is left empty (safe to free) and err says why.
 *
 * Paths: `path` is the path exactly as it goes on the request line (usually
 * already percent-encoded; raw UTF-8 or spaces are tolerated and encoded). By
 * default (every service but S3) it is normalized (RFC 3986 dot-segment
 * removal, repeated slashes merged) and URI-encoded once more, as AWS
 * specifies ("each path segment URI-encoded twice"), so "/a%3Ab" signs as
 * "/a%253Ab". S3 (SIGV4_OPTIONS_S3) neither normalizes nor double-encodes:
 * each segment is decoded and re-encoded once.
 * Query: the raw query string (without '?'); each name and value is
 * percent-decoded, then encoded in canonical form ('+' is a literal plus).
 *
 * Clock skew: when AWS answers RequestTimeTooSkewed, RequestExpired,
 * RequestInTheFuture or an error whose message says "Signature expired" /
 * "Signature not yet current", pass the error code, message and the HTTP
 * `Date` response header to sigv4_signer_note_skew. When it returns 1 the
 * offset was corrected: re-sign and retry the request ONCE (a second skew
 * error means something else is wrong; report it).
 */
#ifndef SLIPWAY_SIGV4_H
#define SLIPWAY_SIGV4_H

#include <stddef.h>
#include <stdint.h>

#include "aws_credentials.h"
#include "buf.h"
#include "err.h"

#define SIGV4_ALGORITHM "AWS4-HMAC-SHA256"
#define SIGV4_UNSIGNED_PAYLOAD "UNSIGNED-PAYLOAD"
#define SIGV4_MAX_EXPIRES_S 604800 /* presigned URLs live at most 7 days */

struct sigv4_options {
	int normalize_path;            /* remove dot segments, merge slashes (off for S3) */
	int double_encode_path;        /* encode the request-line path again (off for S3) */
	int sign_session_token;        /* 1: X-Amz-Security-Token is signed; 0: added after */
	int add_content_sha256_header; /* send and sign X-Amz-Content-Sha256 (S3; not presign) */
};

#define SIGV4_OPTIONS_DEFAULT ((struct sigv4_options){1, 1, 1, 0})
#define SIGV4_OPTIONS_S3 ((struct sigv4_options){0, 0, 1, 1})

struct sigv4_signer {
	char region[64];
	char service[64];
	struct sigv4_options opts;
	int64_t clock_offset_ms; /* server clock minus ours */
	/* Derived-key cache: kSigning for the fingerprint of (secret, date, region,
	 * service). The fingerprint is a SHA-256, never the secret itself. */
	int key_valid;
	uint8_t key_id[32];
	uint8_t key[32];
};

struct sigv4_header {
	const char *name;
	const char *value; /* may hold obs-fold continuation lines ("a\r\n  b") */
};

enum sigv4_payload_kind {
	SIGV4_PAYLOAD_BYTES = 0, /* hash payload/payload_len (NULL, 0 = empty body) */
	SIGV4_PAYLOAD_HASH,      /* payload_sha256_hex is the precomputed hash */
	SIGV4_PAYLOAD_UNSIGNED,  /* the literal UNSIGNED-PAYLOAD */
};

struct sigv4_request {
	const char *method;                 /* "GET", ... */
	const char *path;                   /* request-line path; NULL or "" = "/" */
	const char *query;                  /* raw, without '?'; NULL = none */
	const struct sigv4_header *headers; /* must include Host; duplicates allowed */
	size_t header_count;
	enum sigv4_payload_kind payload_kind;
	const void *payload;
	size_t payload_len;
	const char *payload_sha256_hex;     /* 64 hex digits, for SIGV4_PAYLOAD_HASH */
	int64_t time_ms;                    /* wall ms; 0 = sigv4_signer_now() */
};

struct sigv4_result {
	char *canonical_request;
	char *string_to_sign;
	char *signed_headers;     /* "host;x-amz-date" */
	char *authorization;      /* sigv4_sign: the Authorization header value */
	char *presigned_query;    /* sigv4_presign: the whole query, X-Amz-Signature included */
	char signature[65];
	char amz_date[17];        /* "20150830T123600Z" */
	char payload_hash[65];    /* hex, or "UNSIGNED-PAYLOAD" */
	/* Headers to send besides the caller's (sigv4_sign only): X-Amz-Date,
	 * X-Amz-Security-Token when there is a token, X-Amz-Content-Sha256 when
	 * asked for. Values point into this result: do not copy it by value. */
	struct sigv4_header add[3];
	size_t add_count;
	char *token_copy;
};

/* region and service must be non-empty, short and free of '/' and spaces.
 * opts NULL = SIGV4_OPTIONS_DEFAULT. */
int sigv4_signer_init(struct sigv4_signer *s, const char *region, const char *service,
		      const struct sigv4_options *opts, struct err *err);
/* Wipes the cached signing key. */
void sigv4_signer_clear(struct sigv4_signer *s);

/* clock_wall_ms() corrected by the skew offset: the time AWS believes it is. */
int64_t sigv4_signer_now(const struct sigv4_signer *s);

/* Signs for the Authorization header. The caller's headers must not already
 * contain Authorization, X-Amz-Date, nor the headers the signer adds (see
 * struct sigv4_result.add). */
int sigv4_sign(struct sigv4_signer *s, const struct aws_credentials *creds,
	       const struct sigv4_request *req, struct sigv4_result *out, struct err *err);

/* Query-string signing: out->presigned_query is what goes after '?' in
 * "<scheme>://<host><path>?<query>" (path as given in req). Signed headers are
 * the request's (Host at least). Presigned URLs usually sign with
 * SIGV4_PAYLOAD_UNSIGNED (S3 requires it). expires_s is 1..604800. The token,
 * when there is one, is signed in the query unless sign_session_token is 0. */
int sigv4_presign(struct sigv4_signer *s, const struct aws_credentials *creds,
		  const struct sigv4_request *req, int64_t expires_s, struct sigv4_result *out,
		  struct err *err);

void sigv4_result_free(struct sigv4_result *r);

/* Appends "Name: value\r\n" for each header of out->add and Authorization
 * (as an http_client prepare callback wants them). */
int sigv4_result_append_headers(const struct sigv4_result *r, struct buf *headers);

/*
 * Feeds an AWS error answer. Returns 1 when it is a clock-skew error and the
 * server's time could be read (from the HTTP Date header, else from the
 * "(20150830T130600Z - 15 min.)" part of the message): the offset is stored
 * and the caller should re-sign and retry once. Returns 0 otherwise (offset
 * unchanged). Any argument may be NULL.
 */
int sigv4_signer_note_skew(struct sigv4_signer *s, const char *error_code,
			   const char *error_message, const char *date_header);

/* Building blocks, exposed for tests and for other signers (e.g. S3 chunked). */
/* Appends `s` URI-encoded: unreserved bytes kept, '/' kept when keep_slash,
 * everything else %XX (uppercase). */
int sigv4_uri_encode(struct buf *out, const char *s, size_t len, int keep_slash);
/* RFC 3986 remove_dot_segments plus merging of repeated slashes. */
int sigv4_normalize_path(struct buf *out, const char *path);
/* "Sun, 06 Nov 1994 08:49:37 GMT" (IMF-fixdate) -> wall ms; -1 if malformed. */
int sigv4_parse_http_date(const char *s, int64_t *wall_ms);

#endif
