/*
 * spec: strict parsing of what the coordinator asks the agent to run: the job
 * envelope of a long-poll answer and the release spec inside it
 * (docs/protocol.md, "The queue" and "The release spec").
 *
 * Strict means: a missing required field, a wrong type, an unknown field, a
 * value out of range, a malformed name, id, host or image reference, an
 * environment over SPEC_ENV_MAX bytes or two services fighting over one
 * public port are refused with a message naming the field
 * ("release.services[1].image: not a valid image reference: ..."). A refused
 * job changes nothing; the caller acknowledges it `failed` with that message.
 *
 * spec_job_parse fills what it could read of the envelope even when it fails
 * (job->ackable tells whether id and lease_id were valid, so the job can be
 * acknowledged), and never leaves a half-built release behind: job->release
 * is set only on success.
 *
 * Ownership: everything a struct spec_release holds is allocated by this
 * module and freed by spec_release_free (strings are copies: the cJSON tree
 * may be freed after parsing). Environment values live only here and in the
 * container create request: never log or journal them.
 *
 * Pure functions: any thread, never block.
 */
#ifndef SLIPWAY_AGENT_SPEC_H
#define SLIPWAY_AGENT_SPEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "err.h"

#define SPEC_NAME_MAX 40             /* app, service: [a-z][a-z0-9-]{0,39} */
#define SPEC_ID_MAX 64               /* ids: [A-Za-z0-9_-]{1,64} */
#define SPEC_IMAGE_MAX 512
#define SPEC_ENV_MAX ((size_t)256 << 10) /* NAME=value bytes per service */
#define SPEC_SERVICES_MAX 32
#define SPEC_COUNT_MAX 100
#define SPEC_HOSTS_MAX 64
#define SPEC_HOST_MAX 253
#define SPEC_PATH_MAX 1024
#define SPEC_COMMAND_MAX 256         /* arguments */
#define SPEC_ARG_MAX 8192            /* bytes per argument */
#define SPEC_POLL_MAX ((size_t)16 << 20) /* a whole long-poll answer */

enum spec_health_type {
	SPEC_HEALTH_HTTP,
	SPEC_HEALTH_TCP,
	SPEC_HEALTH_DOCKER,
	SPEC_HEALTH_RUNNING,
};
enum spec_protocol { SPEC_PROTO_HTTP, SPEC_PROTO_TCP };
enum spec_job_type { SPEC_JOB_DEPLOY, SPEC_JOB_REMOVE };

struct spec_health {
	enum spec_health_type type;
	char *path;                  /* http only, starts with '/'; else NULL */
	int64_t interval_ms;
	int64_t timeout_ms;
	int64_t grace_ms;
};

struct spec_proxy {
	int listen;                  /* 1..65535 */
	enum spec_protocol protocol;
	char **hosts;                /* lowercased; host_count entries */
	size_t host_count;
};

struct spec_service {
	char name[SPEC_NAME_MAX + 1];
	char *image;
	char **command;              /* NULL-terminated argv, or NULL: the image's */
	char **env;                  /* NULL-terminated "NAME=value" */
	size_t env_count;
	size_t env_bytes;
	int port;                    /* container port; 0: none (worker) */
	bool has_proxy;
	struct spec_proxy proxy;
	struct spec_health health;
	int count;
	int64_t memory_mb;           /* 0: no limit */
	int64_t stop_grace_ms;
	bool metadata_access;        /* may reach the instance metadata (agent/imdsblock.h) */
};

struct spec_release {
	char id[SPEC_ID_MAX + 1];
	char app[SPEC_NAME_MAX + 1];
	char build[SPEC_ID_MAX + 1];  /* "" when absent */
	int64_t created_ms;
	struct spec_service *services;
	size_t service_count;
};

struct spec_job {
	bool ackable;                /* id and lease_id were read (even on failure) */
	char id[SPEC_ID_MAX + 1];
	char lease_id[SPEC_ID_MAX + 1];
	enum spec_job_type type;
	char app[SPEC_NAME_MAX + 1];  /* "" when unreadable */
	int64_t generation;          /* -1 when unreadable */
	int64_t lease_expires_in_s;
	int64_t attempt;
	struct spec_release *release; /* deploy jobs, on success only; caller frees */
};

/* Parses one element of a poll answer's "jobs" array. On -1, err says why and
 * job holds what was readable (see ackable); job->release is NULL. */
int spec_job_parse(const cJSON *json, struct spec_job *job, struct err *err);

/* Parses a release spec (path names it in messages, e.g. "release"). */
struct spec_release *spec_release_parse(const cJSON *json, const char *path, struct err *err);
void spec_release_free(struct spec_release *r);

/* Frees job->release and clears it. */
void spec_job_clear(struct spec_job *job);

/* Syntax checks, exposed for tests and other modules. */
bool spec_valid_name(const char *s);
bool spec_valid_id(const char *s);
bool spec_valid_host(const char *s);
/* Docker image reference: [domain[:port]/]path[:tag][@sha256:<64 hex>]. On
 * false, *why (may be NULL) says what is wrong. */
bool spec_valid_image(const char *s, const char **why);
/* True when the reference pins a digest ("...@sha256:..."). */
bool spec_image_has_digest(const char *s);

const char *spec_health_type_name(enum spec_health_type t);

#endif
