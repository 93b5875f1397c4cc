/*
 * agent: the agent's shared context. One per process, built by main.c and
 * handed to every module; each module owns the field it creates and frees.
 * Everything here is used from the loop thread only (the journal and the
 * worker pool have their own threads behind their APIs).
 *
 * Hooks for the log shipper (a later issue) and anything else that follows
 * containers: the deployer asks logs_drained(id) before it removes a
 * container (NULL: always drained) and the inventory calls
 * container_started / container_stopped when it sees a managed container
 * start or stop (including the ones already running when the agent starts).
 */
#ifndef SLIPWAY_AGENT_AGENT_H
#define SLIPWAY_AGENT_AGENT_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>

struct ev_loop;
struct config;
struct http_client;
struct docker;
struct proxy_client;
struct worker_pool;
struct journal;
struct deployer;
struct runjobs;
struct coord_client;
struct agent_sqs;
struct inventory;
struct swap_resync;
struct swap;
struct aws_credentials_provider;
struct cwlogs;
struct logdest;
struct logship;
struct metrics;
struct registryauth;
struct awsmode;

#define AGENT_VERSION "0.1.0"
#define AGENT_LABELS_MAX 16

/* What a hook learns about a managed container. */
struct agent_container {
	const char *id;          /* full id */
	const char *app;
	const char *service;
	const char *release;
	int64_t generation;
	bool tty;
};

struct agent_hooks {
	bool (*logs_drained)(const char *container_id, void *arg);
	void (*container_started)(const struct agent_container *c, void *arg);
	void (*container_stopped)(const struct agent_container *c, void *arg);
	void *arg;
};

/* Settings the modules read, taken from the config once at start-up. */
struct agent_settings {
	char state_dir[PATH_MAX];
	char control_socket[PATH_MAX];
	const char *docker_socket;
	const char *network;
	const char *name_prefix;
	const char *labels[AGENT_LABELS_MAX + 1]; /* "key=value", NULL-terminated */
	int keep_releases;
	int64_t min_free_disk;
	int64_t pull_timeout_ms;
	int64_t drain_timeout_ms;
	int64_t log_max_size;
	int log_max_files;
	int output_tail_lines;
	int64_t inventory_interval_ms;
	const char *crash_at;    /* debug.crash_at: test hook, NULL when unset */
};

struct agent {
	struct ev_loop *loop;
	const struct config *cfg;
	const char *config_path;         /* NULL: defaults and environment only */
	struct agent_settings set;
	struct http_client *http;        /* coordinator, Docker, proxy control, health */
	struct docker *docker;
	struct registryauth *registryauth; /* pulls: ECR logins (agent/registryauth.h) */
	struct proxy_client *proxy;
	struct worker_pool *workers;     /* blocking odds and ends: identity file, statvfs */
	struct journal *journal;
	struct deployer *deployer;
	struct runjobs *runjobs;         /* job type run: one-off containers (runjob.h) */
	struct coord_client *coord;
	struct agent_sqs *sqs;           /* jobs from SQS when registration names a queue */
	struct inventory *inventory;
	/* logs and health data (agent/logship.h, agent/metrics.h); logship is NULL
	 * when logs.enabled is false, aws and cwlogs without cloudwatch.region */
	struct aws_credentials_provider *aws;
	struct cwlogs *cwlogs;
	struct logdest *logdest;
	struct logship *logship;
	struct metrics *metrics;
	/* AWS mode (agent/awsmode.h): identity proofs, metadata block, scale-in;
	 * NULL when none of them is on */
	struct awsmode *awsmode;
	struct agent_hooks hooks;
	struct swap_resync *resyncs;     /* swap.c: route resyncs in flight */
	bool net_creating;               /* swap.c: one swap creates the network ... */
	struct swap *net_waiters;        /* ... the others wait for it */
	int64_t started_mono_ms;
};

static inline bool agent_logs_drained(const struct agent *a, const char *container_id)
{
	return !a->hooks.logs_drained || a->hooks.logs_drained(container_id, a->hooks.arg);
}

#endif
