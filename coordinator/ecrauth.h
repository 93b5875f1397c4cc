/*
 * ecrauth: the builder's login to Amazon ECR (registry.kind = ecr).
 *
 * Before an app's first push the app's repository must exist: ecrauth_prepare
 * with a repository name sends CreateRepository once per name and process
 * (scan on push, no tags: tagging on create would need ecr:TagResource;
 * RepositoryAlreadyExistsException counts as success) and remembers the names it made sure of. Then, and for
 * every ecrauth_prepare, it answers with a registry login: the documents
 * Docker takes as X-Registry-Auth (push, pull) and X-Registry-Config (build),
 * made from a GetAuthorizationToken token. Tokens are common/ecr's: cached,
 * handed out until half their (12-hour) life has passed and never later than
 * 30 minutes before they expire, then replaced; callers that arrive during a
 * fetch share it. When Docker refuses a login (ecr_docker_denied),
 * ecrauth_invalidate makes the next prepare fetch a new token: the builder
 * retries a refused push once with it.
 *
 * Credentials come from common/aws_credentials (environment, shared file,
 * instance role), refreshed there; the role needs ecr:GetAuthorizationToken
 * and ecr:CreateRepository plus the push actions (docs/aws-iam.md).
 *
 * Ownership: ecrauth_new copies its options; the login handed to a callback
 * lives for the duration of the call (copy what must last; it holds a
 * password). Callbacks come later, on the loop thread, never from inside
 * ecrauth_prepare. Threads: loop thread only; nothing blocks. ecrauth_free
 * cancels what is in flight (no callbacks) and must not be called from
 * inside a callback.
 */
#ifndef SLIPWAY_COORD_ECRAUTH_H
#define SLIPWAY_COORD_ECRAUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

struct ev_loop;
struct http_client;
struct config;
struct ecrauth;

#define ECRAUTH_KNOWN_MAX 4096   /* repository names remembered as existing */
#define ECRAUTH_DEFAULT_PREFIX "slipway/"

struct ecrauth_opts {
	const char *region;          /* required */
	const char *endpoint;        /* NULL: https://api.ecr.<region>.amazonaws.com */
	const char *registry_id;     /* 12 digits; NULL or "": the credentials' account */
	const char *registry_host;   /* where images are pushed (for the log only) */
};

struct ecrauth_login {
	const char *auth_json;       /* X-Registry-Auth document */
	const char *config_json;     /* X-Registry-Config document */
	const char *registry_host;   /* the token's registry (proxyEndpoint host) */
	int64_t expires_ms;
	bool stale;                  /* a refresh failed; this one is still valid */
};

/* login NULL on error, error says what failed ("CreateRepository ...",
 * "GetAuthorizationToken ..."). */
typedef void (*ecrauth_fn)(const struct ecrauth_login *login, const char *error, void *arg);

/* The builder's settings: registry.kind, .region, .account, .endpoint, .host.
 * Returns 1 and fills the host images go to (host_cap bytes) when the
 * registry is ECR, 0 when it is not, -1 with err when the ECR settings are
 * incomplete (registry.region missing, no registry.host nor registry.account,
 * an account that is not 12 digits). */
int ecrauth_settings(const struct config *cfg, char *host, size_t host_cap, struct err *err);

/* The repository prefix (registry.repository_prefix; unset: "slipway/" for
 * ECR, "" for a plain registry). */
const char *ecrauth_repository_prefix(const struct config *cfg, bool ecr);

/* NULL and err on bad options. */
struct ecrauth *ecrauth_new(struct ev_loop *loop, struct http_client *http,
			    const struct ecrauth_opts *opts, struct err *err);
/* From the configuration (ecrauth_settings); NULL and err on bad settings. */
struct ecrauth *ecrauth_from_config(struct ev_loop *loop, struct http_client *http,
				    const struct config *cfg, struct err *err);
void ecrauth_free(struct ecrauth *ea);

/* repository NULL: a login only. Returns an id for ecrauth_cancel, or 0 when
 * the repository name is not one ECR accepts or memory is short (no
 * callback then). */
uint64_t ecrauth_prepare(struct ecrauth *ea, const char *repository, ecrauth_fn cb, void *arg);
void ecrauth_cancel(struct ecrauth *ea, uint64_t id);

/* Docker refused the current login: the next prepare fetches a new token. */
void ecrauth_invalidate(struct ecrauth *ea);

/* For tests and logs: CreateRepository calls sent, tokens fetched. */
uint64_t ecrauth_creates(const struct ecrauth *ea);
uint64_t ecrauth_fetches(const struct ecrauth *ea);

#endif
