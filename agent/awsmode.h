/*
 * awsmode: the agent's AWS pieces, wired to the rest of the agent.
 * Settings coordinator.aws_identity, aws.*, metadata.*, lifecycle.*
 * (agent/settings.c; docs/operations.md "Running on AWS").
 *
 *   identity   with coordinator.aws_identity, every registration attempt
 *              carries a fresh presigned sts:GetCallerIdentity (common/sts)
 *              made with the instance role's credentials (a->aws, common/
 *              aws_credentials: environment, file, then IMDSv2), signed for
 *              aws.server_id (default host[:port] of coordinator.url) and
 *              valid 60 s; it reaches coord_client as a struct coord_prover.
 *   block      metadata.block (auto: on EC2, i.e. the instance id came from
 *              the instance metadata, or aws_identity or lifecycle is on):
 *              agent/imdsblock.h, fed by the agent's container hooks.
 *   scale-in   lifecycle.enabled: agent/lifecycle.h with the agent's steps:
 *              unhealthy = the proxy's health endpoint 503 (PUT /v1/draining)
 *              and draining: true to the coordinator (heartbeat at once);
 *              drain = the proxy's routes polled until no request is in
 *              flight; stop = every managed running container (labels and
 *              deploy.name_prefix: agents sharing an engine in tests keep
 *              theirs) stopped with its own grace; flush = every stopped
 *              container's output read to its end and accepted, nothing
 *              spooled, nothing in memory.
 *
 * The region (for STS and Auto Scaling): aws.region, else cloudwatch.region,
 * else the instance's placement/region from IMDS (start-up only).
 *
 * Ownership: the awsmode hangs off struct agent (a->awsmode) and borrows
 * the agent's clients; a->aws is created here when the agent has none yet
 * and then belongs to the agent (run_agent frees it last).
 * Threads: the loop thread. awsmode_new blocks briefly (runs the loop for the
 * IMDS region lookup when it needs one); nothing else blocks.
 */
#ifndef SLIPWAY_AGENT_AWSMODE_H
#define SLIPWAY_AGENT_AWSMODE_H

#include <stdbool.h>

#include "coord_client.h"
#include "err.h"

struct agent;
struct config;
struct awsmode;

#define AWSMODE_PROOF_EXPIRES_S 60

/* What --check can tell without running: a way to register, names valid. */
int awsmode_check(const struct config *cfg, struct err *err);

/* Reads the settings, sets a->awsmode (NULL when nothing is on). on_ec2: the
 * instance id came from the instance metadata. -1: a start-up error. */
int awsmode_new(struct agent *a, const char *instance_id, bool on_ec2, struct err *err);
/* For coord_client_opts.prover (prove NULL when aws_identity is off). */
struct coord_prover awsmode_prover(struct awsmode *m);
/* Once the proxy answered: the block's first sync, the lifecycle watcher. */
void awsmode_start(struct awsmode *m);
/* From the agent's container hooks (m NULL is fine). */
void awsmode_container_started(struct awsmode *m, const char *container_id);
void awsmode_container_stopped(struct awsmode *m, const char *container_id);
/* Cancels everything (no callbacks). After coord_client_free (which withdraws
 * its pending proof asks here), before proxy_client_free, docker_free and
 * aws_credentials_free(a->aws). NULL is fine. */
void awsmode_free(struct awsmode *m);

#endif
