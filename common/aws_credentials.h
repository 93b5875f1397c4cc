/*
 * aws_credentials: where AWS credentials come from, and keeping them fresh.
 *
 * Sources, in this order (the first that has credentials wins):
 *   1. environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN;
 *   2. the shared credentials file: AWS_SHARED_CREDENTIALS_FILE or
 *      ~/.aws/credentials, profile AWS_PROFILE or "default" (INI; at most 64 KiB);
 *   3. EC2 instance metadata, IMDSv2 only (common/imds: token PUT, then role
 *      name and role credentials), at AWS_EC2_METADATA_SERVICE_ENDPOINT or
 *      http://169.254.169.254; AWS_EC2_METADATA_DISABLED=true turns it off.
 * A source that is present but wrong (only half the keys in the environment,
 * a malformed file, a named profile that does not exist) is an error, not a
 * reason to fall through to the next source. The profile, file path and IMDS
 * endpoint are settled when the provider is created; the environment keys and
 * the file are read again at every refresh (first use, aws_credentials_invalidate).
 *
 * Expiry (IMDS credentials carry an Expiration): more than 15 minutes left,
 * the cached credentials are handed out; 15..5 minutes left, they are still
 * handed out while one refresh runs in the background; under 5 minutes, callers
 * wait for the refresh (and get the old ones if it fails but they have not
 * expired yet); expired and the refresh failed is the only hard failure. All
 * of it reads clock.h, so tests freeze the clock and move it.
 *
 * Threads: the provider lives on its libev loop's thread; every function but
 * aws_credentials_ref/unref must be called there. Callbacks run on that thread,
 * never from inside aws_credentials_get. Nothing blocks except reading the
 * (small, local) credentials file.
 *
 * Ownership and secrets: credentials are immutable and reference-counted. The
 * set passed to a callback is valid during the callback; keep it with
 * aws_credentials_ref and release it with aws_credentials_unref (may be called
 * from any thread). Every secret string is registered with log_redact_add while
 * any set holding it is alive, and wiped from memory when the last reference
 * goes.
 */
#ifndef SLIPWAY_AWS_CREDENTIALS_H
#define SLIPWAY_AWS_CREDENTIALS_H

#include <stddef.h>
#include <stdint.h>

#include "backoff.h"
#include "err.h"
#include "imds.h"

struct ev_loop;
struct http_client;
struct aws_credentials_provider;

struct aws_credentials {
	const char *access_key_id;
	const char *secret_access_key;
	const char *session_token; /* NULL for long-term keys */
	int64_t expiration_ms;     /* wall ms; 0 = does not expire */
	const char *source;        /* "environment", "shared-file" or "imds" (for logs) */
};

#define AWS_CREDENTIALS_FILE_MAX (64 * 1024)
#define AWS_CREDENTIALS_REFRESH_SOON_MS (15 * 60 * 1000) /* background refresh */
#define AWS_CREDENTIALS_REFRESH_NOW_MS (5 * 60 * 1000)   /* callers wait */
#define AWS_IMDS_DEFAULT_ENDPOINT IMDS_DEFAULT_ENDPOINT
#define AWS_IMDS_TOKEN_TTL_S IMDS_TOKEN_TTL_S

struct aws_credentials_opts {
	const char *profile;       /* NULL = $AWS_PROFILE, else "default" */
	const char *shared_file;   /* NULL = $AWS_SHARED_CREDENTIALS_FILE, else ~/.aws/credentials */
	const char *imds_endpoint; /* NULL = $AWS_EC2_METADATA_SERVICE_ENDPOINT, else the default */
	int no_env;                   /* skip a source */
	int no_file;
	int no_imds;
	int64_t imds_timeout_ms;      /* per attempt; 0 = 1000 */
	const struct backoff_policy *imds_retry; /* NULL = 3 attempts, 100 ms base, 1 s cap */
};

/* NULL on error (err says why). opts may be NULL. The loop and client must
 * outlive the provider. */
struct aws_credentials_provider *aws_credentials_new(struct ev_loop *loop,
						     struct http_client *client,
						     const struct aws_credentials_opts *opts,
						     struct err *err);
/* Pending callbacks are not called; in-flight IMDS requests are cancelled. */
void aws_credentials_free(struct aws_credentials_provider *p);

typedef void (*aws_credentials_fn)(const struct aws_credentials *creds /* NULL on error */,
				   const char *error, void *arg);

/* Answers cb once, later, on the loop thread: with credentials, or with NULL and
 * a message naming what every source said. Callers that arrive during a refresh
 * are queued and answered by that one refresh. */
void aws_credentials_get(struct aws_credentials_provider *p, aws_credentials_fn cb, void *arg);

/* Forgets queued callbacks with this cb and arg (their owner is going away);
 * returns how many. */
size_t aws_credentials_cancel(struct aws_credentials_provider *p, aws_credentials_fn cb,
			      void *arg);

/* Force refresh: for callers that got ExpiredToken, InvalidClientTokenId or a
 * signature error with `used`. If `used` is still the current set (or used is
 * NULL), the next aws_credentials_get fetches new credentials from the sources
 * and waits for them; then retry the request once. A stale `used` (already
 * replaced) is ignored, so a burst of failures refreshes once. */
void aws_credentials_invalidate(struct aws_credentials_provider *p,
				const struct aws_credentials *used);

/* 1 while a refresh is running (tests wait on it). */
int aws_credentials_refreshing(const struct aws_credentials_provider *p);

/* Reference counting for sets handed out by a provider, aws_credentials_make or the
 * readers below (never for a struct aws_credentials built by hand). */
const struct aws_credentials *aws_credentials_ref(const struct aws_credentials *c);
void aws_credentials_unref(const struct aws_credentials *c);

/* A new set (strings copied; token and expiration optional); NULL when out of
 * memory or a key is empty. */
const struct aws_credentials *aws_credentials_make(const char *access_key_id,
						   const char *secret_access_key,
						   const char *session_token, int64_t expiration_ms,
						   const char *source);

/* Where a set stands at wall time now_ms. */
enum aws_credentials_freshness {
	AWS_CREDENTIALS_FRESH,        /* hand out */
	AWS_CREDENTIALS_REFRESH_SOON, /* hand out, refresh in the background */
	AWS_CREDENTIALS_REFRESH_NOW,  /* refresh first; still usable if that fails */
	AWS_CREDENTIALS_EXPIRED,
};
enum aws_credentials_freshness aws_credentials_freshness_at(const struct aws_credentials *c,
							    int64_t now_ms);

/*
 * The source readers, exposed for tests. Each returns 1 and sets *out when it
 * found credentials, 0 when the source has none (nothing set, no such file,
 * default profile absent), -1 on an error in the source (err says which line).
 */
int aws_credentials_from_env(const struct aws_credentials **out, struct err *err);
/* Parses credentials-file text (the whole file, len bytes) for `profile`. */
int aws_credentials_parse_file(const char *text, size_t len, const char *profile,
			       int profile_explicit, const struct aws_credentials **out,
			       struct err *err);
/* Reads and parses the file; a missing file is 0. */
int aws_credentials_from_file(const char *path, const char *profile, int profile_explicit,
			      const struct aws_credentials **out, struct err *err);

#endif
