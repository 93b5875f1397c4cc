/*
 * registryauth: image pulls with registry credentials, for images on Amazon
 * ECR.
 *
 * registryauth_pull is docker_image_pull with a login in front: an image
 * whose registry host is an ECR registry (<account>.dkr.ecr[-fips].<region>
 * .amazonaws.com[.cn], or the one extra host of the ecr.* settings: a
 * registry behind a proxy, the tests' registry) is pulled with
 * X-Registry-Auth made from the agent's own GetAuthorizationToken token,
 * asked with the instance's credentials (common/aws_credentials: instance
 * role through IMDSv2, or environment/file) for that registry's account in
 * its region. Any other image is pulled as before, without credentials.
 *
 * Tokens are common/ecr's cache: one per registry, handed out until half
 * their 12-hour life has passed (never later than 30 minutes before expiry),
 * then replaced; concurrent pulls share one fetch. A pull the registry
 * refuses (ecr_docker_denied: expired, revoked) invalidates the token and is
 * tried once more with a new one; a second refusal, or no token at all, fails
 * the pull with a message that says which (DOCKER_ERR_DENIED). One ECR client
 * per region, made at the first image of that region.
 *
 * Ownership: options are copied. The credentials provider, when given, is
 * the caller's and must outlive this module; without one, a provider is made
 * at the first ECR pull and owned here. Callbacks: done exactly once, later,
 * on the loop thread (never from inside registryauth_pull), unless cancelled;
 * the result lives for the duration of the call. Threads: the loop thread
 * only; nothing blocks. registryauth_free cancels everything (no callbacks)
 * and must not be called from inside a callback.
 */
#ifndef SLIPWAY_AGENT_REGISTRYAUTH_H
#define SLIPWAY_AGENT_REGISTRYAUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "docker.h"
#include "err.h"

struct ev_loop;
struct http_client;
struct config;
struct aws_credentials_provider;
struct registryauth;

#define REGISTRYAUTH_REGIONS_MAX 16

struct registryauth_opts {
	struct ev_loop *loop;
	struct http_client *http;
	struct docker *docker;
	struct aws_credentials_provider *creds; /* NULL: made here when first needed */
	const char *endpoint;        /* ECR API endpoint for every region (NULL: AWS's) */
	const char *ca_file;         /* for the endpoint; NULL: the system bundle */
	/* One more registry host pulled with ECR tokens ("host[:port]", NULL: none),
	 * with the region and account (12 digits, NULL: the credentials' own) its
	 * tokens are asked for. */
	const char *extra_host;
	const char *extra_region;
	const char *extra_account;
};

/* NULL and err on bad options (an extra host without a region, a malformed
 * account). */
struct registryauth *registryauth_new(const struct registryauth_opts *opts, struct err *err);
/* From the agent's ecr.* settings (ecr.registry, ecr.region, ecr.account,
 * ecr.endpoint, ecr.ca_file). */
struct registryauth *registryauth_from_config(const struct config *cfg, struct ev_loop *loop,
					      struct http_client *http, struct docker *docker,
					      struct aws_credentials_provider *creds,
					      struct err *err);
void registryauth_free(struct registryauth *ra);

/* As docker_image_pull. Returns an id for registryauth_cancel, 0 when the
 * arguments are invalid or memory is short (no callback then). */
uint64_t registryauth_pull(struct registryauth *ra, const char *image, int64_t timeout_ms,
			   docker_progress_fn progress, docker_done_fn done, void *arg);
void registryauth_cancel(struct registryauth *ra, uint64_t id);

/* 1 when image is pulled with ECR tokens; fills registry_id (>= 13 bytes,
 * "" for the credentials' own account) and region (>= 64 bytes). */
int registryauth_match(const struct registryauth *ra, const char *image, char *registry_id,
		       char *region);

/* GetAuthorizationToken requests sent so far, all regions (tests, logs). */
uint64_t registryauth_fetches(const struct registryauth *ra);

#endif
