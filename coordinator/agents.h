/*
 * agents: the registry of instance agents (docs/protocol.md "Identity"):
 * registration with the fleet's bootstrap token, per-agent tokens, heartbeats,
 * loss detection, inventory and the desired-state read.
 *
 * Every agent is kept in memory (id, instance, fleet, token hash, state, last
 * seen): authenticating a request and noticing a silent agent never touch the
 * store, which matters with thousands of agents long-polling. The store holds
 * the same facts durably; in-memory changes follow committed store writes.
 *
 * Registration: the bootstrap token is compared by SHA-256 in constant time,
 * or (agents.aws_accounts) the agent's presigned sts:GetCallerIdentity is
 * checked and sent to STS (common/sts.h): the answer's account, role and
 * session (= the instance id claimed) must match;
 * an instance_id seen before keeps its agent_id and gets a new token (the old
 * one stops working at once). Registering, and coming back from `lost`, queue
 * a deploy job for every app of the fleet whose current generation the agent
 * does not run (rollout_agent_joined_tx).
 *
 * Liveness: any authenticated call (poll, heartbeat, report) counts as seen.
 * A timer (every second) marks agents silent for agents.lost_after as lost:
 * they leave the rollouts in progress and get no new jobs until they call
 * again. After a restart every agent gets a fresh lost_after to call in.
 * last_seen is written to the store at most every 30 s per agent (and on
 * every state change), so heartbeats cost almost nothing.
 *
 * Ownership: struct agents is main's (agents_free); struct agent records are
 * the registry's and live until agents_free (agents are never removed, only
 * marked gone). Threads: the loop thread; agents_load blocks (start-up).
 */
#ifndef SLIPWAY_COORD_AGENTS_H
#define SLIPWAY_COORD_AGENTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crypto.h"
#include "err.h"

struct coord;
struct server;
struct agents;

enum agent_state { AGENT_LIVE, AGENT_LOST, AGENT_DRAINING, AGENT_GONE };

#define AGENT_ID_MAX 64
#define AGENT_INSTANCE_MAX 128 /* EC2 ids are 19; the agent falls back to the hostname */

struct agent {
	char id[AGENT_ID_MAX + 1];
	char instance_id[AGENT_INSTANCE_MAX + 1];
	char fleet[48];
	int protocol;
	uint8_t token_hash[CRYPTO_SHA256_LEN];
	enum agent_state state;
	int transition;            /* a state change is being written to the store */
	int64_t last_seen_ms;      /* wall clock */
	int64_t persisted_seen_ms; /* last_seen_ms the store holds */
	bool lost_draining;        /* went silent while draining: the instance left */
	uint8_t apps_digest[CRYPTO_SHA256_LEN]; /* last heartbeat's apps, to skip repeats */
	void *waiter;              /* queue.c: the agent's long poll */
	struct agent *next;        /* hash chain */
};

struct agents *agents_new(struct coord *c);
void agents_free(struct agents *a);

/* Loads every agent from the store (start-up; blocks). Live agents get a fresh
 * lost_after from now. */
int agents_load(struct agents *a, struct err *err);

/* Reads agents.aws_* and sets up the AWS identity check (start-up); -1 when
 * the settings are wrong or neither a bootstrap token nor AWS accounts are
 * configured (no agent could register). */
int agents_identity_init(struct agents *a, struct err *err);
/* true when registration takes AWS identity proofs (agents.aws_accounts). */
bool agents_aws_identity(const struct agents *a);

/* Starts the loss timer (the daemon; unit tests call agents_check_lost). */
void agents_start(struct agents *a);

int agents_register_routes(struct agents *a, struct server *srv);

struct agent *agents_find(struct agents *a, const char *id);
size_t agents_count(const struct agents *a);

/* 1 authenticated, 0 unknown (or gone) agent, -1 wrong token. */
int agents_authenticate(struct agents *a, const char *id, const char *token);

/* The agent called: it is seen now; a lost agent becomes live again (its
 * missing deploy jobs are queued). */
void agents_seen(struct agents *a, struct agent *ag);

/* Marks every agent silent for lost_after as lost (the timer's work). */
void agents_check_lost(struct agents *a);

const char *agents_state_name(enum agent_state st);

#endif
