/*
 * metrics: health data of the instance, its containers, its swaps and the
 * agent itself, readable locally as Prometheus text and shipped every
 * interval_ms: to CloudWatch as Embedded Metric Format documents through the
 * log shipper (one code path for logs and metrics: the same batching,
 * retries, spool and credentials, and CloudWatch turns the documents into
 * metrics itself), or to the coordinator (POST /v1/agents/{id}/metrics) in
 * embedded mode.
 *
 * What is measured:
 *   per container (label slipway.app): health (Docker's health check),
 *     restarts (Docker's RestartCount), OOM kills (the "oom" event, or a
 *     "die" with exit code 137 whose inspect says OOMKilled), CPU (one-shot
 *     stats: cumulative seconds, and percent of one CPU between two rounds)
 *     and memory (usage minus inactive page cache, as `docker stats`);
 *   per instance: CPU busy percent (/proc/stat), memory used (/proc/meminfo
 *     MemTotal - MemAvailable), disk used and free (statvfs of Docker's root
 *     directory);
 *   per swap: duration and outcome (metrics_swap, called by the deployer);
 *   the agent: private memory (smaps_rollup Private_Clean + Private_Dirty),
 *     RSS, and the log shipper's counters (lines shipped, dropped,
 *     spooled, retries, queue lag).
 *
 * EMF: each document is a JSON log event with "_aws": {"Timestamp",
 * "CloudWatchMetrics": [{"Namespace", "Dimensions", "Metrics"}]} and the
 * values as top-level members. Dimensions are the configured subset of App,
 * Service and InstanceId that applies to the document. Documents about an
 * app go to its log group (<prefix><app>), stream "metrics/<instance>";
 * the instance's and the agent's to the group <prefix>_agent (no app name
 * can hold '_'), same stream name.
 *
 * The Prometheus endpoint failing to bind (a busy port) is logged, not an
 * error: the agent's deploys matter more than its local page.
 *
 * Ownership: everything in opts is copied or borrowed (docker, ship, coord
 * must outlive the module). Threads: the loop thread; statvfs runs on the
 * worker pool when one is given. Nothing blocks (reading /proc files is
 * memory, not disk).
 */
#ifndef SLIPWAY_AGENT_METRICS_H
#define SLIPWAY_AGENT_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "err.h"

struct ev_loop;
struct docker;
struct logship;
struct logdest;
struct worker_pool;
struct metrics;

#define METRICS_DEFAULT_LISTEN "127.0.0.1:9464"
#define METRICS_DEFAULT_NAMESPACE "Slipway"
#define METRICS_DEFAULT_DIMENSIONS "App,Service,InstanceId"
#define METRICS_DEFAULT_DOCKER_ROOT "/var/lib/docker"
#define METRICS_AGENT_GROUP "_agent"

struct metrics_opts {
	struct ev_loop *loop;
	struct docker *docker;
	struct logship *ship;          /* counters; EMF goes through it unless coord is set */
	struct logdest *coord;         /* embedded mode: POST .../metrics; NULL: EMF */
	struct worker_pool *workers;   /* statvfs; NULL: done on the loop */
	const char *listen;            /* Prometheus endpoint; NULL or "": none */
	int64_t interval_ms;           /* 0 = 60000 */
	const char *namespace_;        /* NULL = METRICS_DEFAULT_NAMESPACE */
	const char *dimensions;        /* comma-separated; NULL = METRICS_DEFAULT_DIMENSIONS */
	const char *instance_id;
	const char *group_prefix;      /* NULL = "/slipway/" */
	const char *const *labels;     /* extra label filters, NULL-terminated */
	const char *docker_root;       /* NULL = METRICS_DEFAULT_DOCKER_ROOT */
};

struct metrics *metrics_new(const struct metrics_opts *opts, struct err *err);
/* Subscribes to container events and starts the rounds (the first at once). */
void metrics_start(struct metrics *m);
void metrics_free(struct metrics *m);

/* The bound port of the Prometheus endpoint (0 when there is none). */
int metrics_port(const struct metrics *m);

/* A swap ended: outcome "succeeded", "failed", ... (m may be NULL). */
void metrics_swap(struct metrics *m, const char *app, const char *outcome, int64_t duration_ms);

/* The Prometheus text (exposed for tests). */
int metrics_prometheus(struct metrics *m, struct buf *out);

/* ---- building blocks, exposed for tests ---- */

struct metrics_value {
	const char *name;
	const char *unit;        /* CloudWatch unit: "Percent", "Bytes", "Count", "Milliseconds", "None" */
	double value;
};
struct metrics_dim {
	const char *name;
	const char *value;
};
/* One EMF document: the dims whose names appear in `allowed` (comma-separated)
 * form the dimension set; every dim is also a member. extra (may be NULL)
 * adds string members that are not dimensions. Appends to out. */
int metrics_emf(struct buf *out, const char *namespace_, const char *allowed, int64_t ts_ms,
		const struct metrics_dim *dims, size_t ndims, const struct metrics_dim *extra,
		size_t nextra, const struct metrics_value *vals, size_t nvals);

/* Appends a Prometheus label value with \\, \" and \n escaped. */
int metrics_prom_label(struct buf *out, const char *value);

/* Parsers of the /proc files (text in, numbers out); 0 or -1. */
int metrics_parse_proc_stat(const char *text, uint64_t *busy, uint64_t *total);
int metrics_parse_meminfo(const char *text, uint64_t *total, uint64_t *available);
int metrics_parse_smaps_rollup(const char *text, uint64_t *rss, uint64_t *private_bytes);

#endif
