/*
 * imds: the EC2 instance metadata service, IMDSv2 only: a session token
 * (PUT /latest/api/token with X-aws-ec2-metadata-token-ttl-seconds), then
 * GETs of metadata paths carrying it in X-aws-ec2-metadata-token. Used by
 * aws_credentials (role credentials) and the agent (its instance id).
 *
 * The token is a secret: it is registered for log redaction while held and
 * wiped when dropped. It is reused until a minute before its TTL runs out; a
 * 401 on a GET means IMDS no longer accepts it (revoked, the instance
 * restarted): a new one is fetched and the GET made again, once per
 * imds_get. Every request has the short per-attempt timeout_ms (connecting
 * included: off EC2 nothing answers at all) and the retry policy.
 *
 * Endpoint: opts->endpoint, else $AWS_EC2_METADATA_SERVICE_ENDPOINT, else
 * http://169.254.169.254 (the AWS SDKs' order); an endpoint that is not an
 * http(s) URL is an error. imds_disabled() reads AWS_EC2_METADATA_DISABLED,
 * for callers that honour it.
 *
 * One request at a time per client: imds_get while one runs returns -1.
 * done is called exactly once per accepted imds_get, later, on the loop
 * thread (never inside imds_get), unless imds_cancel or imds_free comes
 * first. The result and its strings live for the callback only.
 *
 * Threads: the loop thread of the http_client. Nothing blocks.
 */
#ifndef SLIPWAY_IMDS_H
#define SLIPWAY_IMDS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backoff.h"
#include "err.h"

struct http_client;
struct imds;

#define IMDS_DEFAULT_ENDPOINT "http://169.254.169.254"
#define IMDS_TOKEN_TTL_S 21600
#define IMDS_DEFAULT_TIMEOUT_MS 1000
#define IMDS_BODY_MAX ((size_t)64 << 10)

struct imds_opts {
	const char *endpoint;              /* NULL: the environment, then the default */
	int64_t timeout_ms;                /* per attempt; 0 = IMDS_DEFAULT_TIMEOUT_MS */
	const struct backoff_policy *retry; /* NULL = 3 attempts, 100 ms base, 1 s cap */
};

struct imds_result {
	const char *error;   /* NULL when IMDS answered the GET (any status), else why not:
			      * "session token: HTTP 403", "connect: ..." */
	long status;         /* of the GET; 0 when error is set */
	const char *body;    /* NUL-terminated; "" when none */
	size_t body_len;
};

typedef void (*imds_done_fn)(const struct imds_result *res, void *arg);

/* NULL on error (a bad endpoint, out of memory). http must outlive it. */
struct imds *imds_new(struct http_client *http, const struct imds_opts *opts, struct err *err);
/* Cancels a request in flight (no callback), wipes the token, frees. NULL is fine. */
void imds_free(struct imds *m);

/* GETs path ("/latest/meta-data/instance-id"). 0, or -1 when a request is
 * already running or could not be queued (then done is never called). */
int imds_get(struct imds *m, const char *path, imds_done_fn done, void *arg);
/* Stops the request in flight; its done is not called. */
void imds_cancel(struct imds *m);

/* The endpoint in use ("http://169.254.169.254", no trailing '/'). */
const char *imds_endpoint(const struct imds *m);

/* AWS_EC2_METADATA_DISABLED is "true" (any case). */
bool imds_disabled(void);

#endif
