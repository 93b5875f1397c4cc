/*
 * ecr: an Amazon ECR client over the AWS JSON 1.1 protocol (POST / with
 * `X-Amz-Target: AmazonEC2ContainerRegistry_V20150921.<Action>`), SigV4
 * (signing name "ecr") per attempt through awsjson, which owns retries,
 * the one credentials refresh and the one clock-skew re-sign.
 *
 * The actions slipway needs: CreateRepository (an existing repository,
 * RepositoryAlreadyExistsException, counts as success: `existed` is set),
 * DescribeRepositories (RepositoryNotFoundException is ECR_NOT_FOUND) and
 * GetAuthorizationToken.
 *
 * Registry credentials for Docker: ecr_auth_get answers with the user
 * ("AWS") and password decoded from the token's base64 "AWS:password", the
 * registry's proxyEndpoint and host, and the documents Docker's Engine API
 * takes: auth_json for X-Registry-Auth (pull, push) and config_json for
 * X-Registry-Config (build), both keyed to that registry. Tokens are cached
 * per registry id and refreshed well before their 12-hour expiry: a token
 * is handed out until half its lifetime has passed, and never later than
 * ECR_REFRESH_BEFORE_MS before it expires; then callers wait for a new one
 * (and get the cached one, with a warning, if that fails while it still has
 * more than ECR_USABLE_MARGIN_MS left). Callers that arrive during a fetch
 * are answered by that one fetch. The password is registered for log
 * redaction while the token is cached, and wiped when it goes.
 *
 * Ownership: inputs are copied; results (and the ecr_auth) live for the
 * duration of the callback: copy what must last. Threads: the loop thread
 * only; never blocks. ecr_free must not be called from inside a callback.
 */
#ifndef SLIPWAY_ECR_H
#define SLIPWAY_ECR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aws_credentials.h"
#include "err.h"

struct ev_loop;
struct http_client;
struct ecr;

#define ECR_SERVICE "ecr"
#define ECR_TARGET_PREFIX "AmazonEC2ContainerRegistry_V20150921"
#define ECR_CONTENT_TYPE "application/x-amz-json-1.1"
#define ECR_REFRESH_BEFORE_MS ((int64_t)30 * 60 * 1000)   /* refresh 30 min before expiry */
#define ECR_USABLE_MARGIN_MS ((int64_t)60 * 1000)        /* a stale token still worth using */
#define ECR_REPOSITORY_NAME_MAX 256

struct ecr_opts {
	const char *region;          /* required */
	const char *endpoint;        /* NULL: https://api.ecr.<region>.amazonaws.com */
	const char *ca_file;         /* NULL: the system bundle */
	int64_t timeout_ms;          /* per attempt; 0 = 30000 */
	int64_t retry_base_ms;       /* 0 = 100 */
	int64_t retry_cap_ms;        /* 0 = 20000 */
	int max_attempts;            /* 0 = 4 */
	int throttle_attempts;       /* 0 = 10 */
};

enum ecr_status {
	ECR_OK = 0,
	ECR_NOT_FOUND,       /* RepositoryNotFoundException */
	ECR_REFUSED,         /* the service said no: error_code */
	ECR_UNREACHABLE,     /* retries ran out: try again later */
};

struct ecr_repository {
	const char *name;
	const char *uri;             /* "123456789012.dkr.ecr.eu-west-1.amazonaws.com/web" */
	const char *arn;
	const char *registry_id;
	int64_t created_ms;
};

struct ecr_tag {
	const char *key;
	const char *value;
};

struct ecr_result {
	enum ecr_status status;
	long http_status;
	const char *error_code;      /* "" on success */
	const char *message;
	int attempts;
	/* CreateRepository: the repository (NULL when it existed already) */
	const struct ecr_repository *repository;
	bool existed;
	/* DescribeRepositories */
	const struct ecr_repository *repositories;
	size_t repository_count;
	const char *next_token;      /* NULL on the last page */
};

typedef void (*ecr_done_fn)(const struct ecr_result *res, void *arg);

struct ecr *ecr_new(struct ev_loop *loop, struct http_client *http,
		    struct aws_credentials_provider *creds, const struct ecr_opts *opts,
		    struct err *err);
/* Cancels every call (no callbacks), forgets the tokens and frees. NULL is fine. */
void ecr_free(struct ecr *e);

/* name: ECR's repository name rules (lowercase, digits, ._-/, 2..256). */
uint64_t ecr_create_repository(struct ecr *e, const char *name, const struct ecr_tag *tags,
			       size_t ntags, bool scan_on_push, ecr_done_fn done, void *arg);
/* names NULL (count 0): every repository of the registry, a page at a time. */
uint64_t ecr_describe_repositories(struct ecr *e, const char *const *names, size_t count,
				   const char *next_token, ecr_done_fn done, void *arg);

struct ecr_auth {
	const char *registry_id;     /* "" for the caller's default registry */
	const char *username;        /* "AWS" */
	const char *password;
	const char *proxy_endpoint;  /* "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com" */
	const char *registry_host;   /* "123456789012.dkr.ecr.eu-west-1.amazonaws.com" */
	const char *auth_json;       /* X-Registry-Auth document */
	const char *config_json;     /* X-Registry-Config document */
	int64_t expires_ms;          /* wall ms */
	int64_t refresh_ms;          /* wall ms after which a new token is fetched */
	bool stale;                  /* handed out after a failed refresh */
};

/* auth NULL on error (error says why). */
typedef void (*ecr_auth_fn)(const struct ecr_auth *auth, const char *error, void *arg);

/* registry_id: the 12-digit account of the registry; NULL or "" for the
 * caller's own. Answers cb once, later, on the loop thread. Returns 0 on bad
 * arguments (no callback then), else an id for ecr_auth_cancel. */
uint64_t ecr_auth_get(struct ecr *e, const char *registry_id, ecr_auth_fn cb, void *arg);
void ecr_auth_cancel(struct ecr *e, uint64_t id);
/* Forgets the cached token of registry_id (Docker refused it): the next
 * ecr_auth_get fetches a new one. */
void ecr_auth_invalidate(struct ecr *e, const char *registry_id);
/* GetAuthorizationToken requests sent so far (tests, logs). */
uint64_t ecr_auth_fetches(const struct ecr *e);

void ecr_cancel(struct ecr *e, uint64_t id);
size_t ecr_pending(const struct ecr *e);

/* ---- building blocks, exposed for tests ---- */

int ecr_repository_name_valid(const char *name);

/* When image ("host/repo[:tag][@digest]") lives in an ECR registry
 * (<12 digits>.dkr.ecr[-fips].<region>.amazonaws.com[.cn]), returns 1 and
 * fills registry_id (>= 13 bytes) and region (>= 32 bytes); else 0. */
int ecr_image_registry(const char *image, char *registry_id, char *region);

/* The Docker documents for user/password at proxy_endpoint (malloc'ed). */
int ecr_docker_auth(const char *username, const char *password, const char *proxy_endpoint,
		    char **auth_json, char **config_json);

/* Decodes authorizationToken (base64 "user:password"); user/pass malloc'ed. */
int ecr_decode_token(const char *token, char **user, char **password, struct err *err);

/* When a token fetched at fetched_ms and expiring at expires_ms is replaced. */
int64_t ecr_refresh_at(int64_t fetched_ms, int64_t expires_ms);

/* 1 when the message of a failed Docker pull or push says the registry
 * refused the credentials ("no basic auth credentials", "unauthorized: ...",
 * "... authorization token has expired", "denied: ..."): worth one retry
 * with a fresh token. Case-insensitive. */
int ecr_docker_denied(const char *message);

#endif
