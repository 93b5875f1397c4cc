/*
 * imdsblock: keeps app containers off the instance metadata service (as the
 * Amazon ECS agent does), so a container cannot read the instance role's
 * credentials or the user data. Settings metadata.block, metadata.address.
 *
 * Rules, in Docker's DOCKER-USER chain (filter table, FORWARD: what a
 * container sends to an address outside the host passes there before
 * Docker's own rules), each marked with a comment naming this agent's
 * network, so agents on other networks (and everything else in the chain)
 * are never touched:
 *
 *   -s <the network's subnet> -d <address>/32 -m comment
 *      --comment slipway-imds:<network>:block -j DROP
 *   -s <container ip>/32 -d <address>/32 -m comment
 *      --comment slipway-imds:<network>:allow:<container id, 12 hex> -j ACCEPT
 *
 * The DROP is installed at start and whenever the network's subnet is first
 * seen or changes (idempotently: an existing rule is kept, one for an old
 * subnet is removed). An ACCEPT goes in above it, at the top of the chain,
 * for each running container whose label slipway.metadata_access is "true"
 * (a service that opts in with metadata_access: true), and is deleted when
 * that container stops, so a later container given the same address is
 * blocked again. A sync also removes ACCEPTs of containers this process does
 * not know (left by an agent that crashed); the inventory's start events of
 * the containers that still run put theirs back.
 *
 * iptables runs through common/proc (the default loop), one command at a
 * time in order; failures are logged, never fatal: a missing iptables or
 * DOCKER-USER chain (Docker without iptables) turns the block off with an
 * error line. The agent needs CAP_NET_ADMIN for it (init/aws/slipway.yaml
 * adds it to the unit).
 *
 * Ownership: opts are copied. Threads: the loop thread only; nothing blocks.
 */
#ifndef SLIPWAY_AGENT_IMDSBLOCK_H
#define SLIPWAY_AGENT_IMDSBLOCK_H

#include <stdbool.h>
#include <stddef.h>

#include "err.h"

struct ev_loop;
struct docker;
struct imdsblock;

#define IMDSBLOCK_TAG "slipway-imds"
#define IMDSBLOCK_LABEL "slipway.metadata_access"
#define IMDSBLOCK_DEFAULT_ADDRESS "169.254.169.254"
#define IMDSBLOCK_DEFAULT_CHAIN "DOCKER-USER"

struct imdsblock_opts {
	struct ev_loop *loop;      /* libev's default loop (proc watches children) */
	struct docker *docker;
	const char *network;       /* the agent's Docker network */
	const char *address;       /* NULL: 169.254.169.254 (tests route another) */
	const char *iptables;      /* NULL: "iptables" from PATH */
	const char *chain;         /* NULL: DOCKER-USER */
};

struct imdsblock *imdsblock_new(const struct imdsblock_opts *opts, struct err *err);
/* Stops a command in flight and frees; the rules stay (containers keep running). */
void imdsblock_free(struct imdsblock *b);

/* The first sync (the DROP for the network's subnet, stale rules out). */
void imdsblock_start(struct imdsblock *b);
/* A managed container started (inspected: ACCEPT when it opted in) or stopped. */
void imdsblock_container_started(struct imdsblock *b, const char *container_id);
void imdsblock_container_stopped(struct imdsblock *b, const char *container_id);

/* For tests and logs: no command queued or running; the DROP is in;
 * containers allowed now; the block gave up (no iptables, no chain). */
bool imdsblock_idle(const struct imdsblock *b);
bool imdsblock_installed(const struct imdsblock *b);
size_t imdsblock_allowed(const struct imdsblock *b);
bool imdsblock_disabled(const struct imdsblock *b);

/* One rule of `iptables -S <chain>` that carries prefix
 * ("slipway-imds:<network>:"): kind 'B' (block) or 'A' (allow), its
 * source, and for an allow the container id. 1 parsed, 0 not ours. */
struct imdsblock_rule {
	char kind;
	char source[64];
	char container[16];
	char args[512];      /* the rule's arguments after "-A <chain> " */
};
int imdsblock_parse_rule(const char *line, const char *chain, const char *prefix,
			 struct imdsblock_rule *out);

#endif
