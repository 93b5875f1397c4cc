/*
 * webhook: the GitLab webhook endpoint, POST /hooks/gitlab/{hook_id}
 * (docs/webhooks.md is the reference).
 *
 * One delivery, in order:
 *   1. the body (at most webhooks.max_body, the router answers 413 beyond) is
 *      parsed on the loop thread (webhook_parse);
 *   2. ONE store operation looks the hook id up (unknown: 404), opens the
 *      app's sealed hook token and compares X-Gitlab-Token in constant time
 *      (mismatch or missing: 401), refuses a body that is not JSON (400),
 *      decides (webhook_decide) and records the delivery in `deliveries`,
 *      keyed for deduplication (webhook_dedup_key): status 'received' (to
 *      build) or 'ignored' with the reason;
 *   3. once that transaction has committed, the answer: 202 {"delivery": id,
 *      "status": "received"}, 200 {"delivery": id, "status": "ignored",
 *      "reason": ..} or, for a key seen before, 200 {"duplicate": true,
 *      "delivery": id}; a full store queue or failed commit gives 503;
 *   4. for 'received', the builder is kicked (builder_kick); it fetches,
 *      checks staleness and builds afterwards.
 * The store's group commit makes step 2 one fsync shared with every other
 * delivery in flight, so answers come in milliseconds, never near GitLab's
 * 10 s timeout. Nothing is cached in memory: a token rotated through the API
 * applies to the next delivery.
 *
 * Malformed input: a body that is not valid UTF-8 JSON, or not an object,
 * gets 400 (GitLab never sends that: the caller is not GitLab, or is broken).
 * A valid JSON object that lacks fields or has wrong types is answered 200 and
 * recorded as 'ignored' with the reason: a 4xx would count as a failure at
 * GitLab, which disables hooks that keep failing, and a future payload
 * change must not silently switch deploys off; the reason is visible in the
 * deliveries table and the log.
 *
 * Threads: webhook_register and the handler on the loop thread; the parse,
 * decide and key helpers are pure (any thread). Nothing blocks.
 */
#ifndef SLIPWAY_COORD_WEBHOOK_H
#define SLIPWAY_COORD_WEBHOOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "err.h"

struct coord;

#define WEBHOOK_ROUTE "/hooks/gitlab/{hook_id}"
#define WEBHOOK_SHA_MAX 64          /* SHA-1 (40) or SHA-256 (64) object names */
#define WEBHOOK_REF_MAX 255
#define WEBHOOK_KEY_MAX 128         /* Idempotency-Key / event UUID kept as given */

enum webhook_kind {
	WEBHOOK_PUSH,
	WEBHOOK_TAG_PUSH,
	WEBHOOK_PIPELINE,
	WEBHOOK_OTHER,  /* an event slipway does not use */
};

/* The fields of a delivery the decision and the builder need. */
struct webhook_event {
	enum webhook_kind kind;
	char event[64];             /* X-Gitlab-Event (or derived from object_kind) */
	char ref[WEBHOOK_REF_MAX + 1];   /* full: "refs/heads/main", "refs/tags/v1.0" */
	char name[WEBHOOK_REF_MAX + 1];  /* the branch or tag name */
	char sha[WEBHOOK_SHA_MAX + 1];   /* what to build; "" for a deletion */
	char before[WEBHOOK_SHA_MAX + 1];
	bool deleted;               /* a branch or tag deletion */
	char project[256];          /* path_with_namespace */
	int64_t project_id;
	char default_branch[WEBHOOK_REF_MAX + 1];
	char ssh_url[1024];         /* project.git_ssh_url */
	char author[128];           /* user_username / user.username */
	char status[32];            /* pipeline status */
	char source[64];            /* pipeline source */
	int64_t pipeline_id;
	/* Non-empty when the JSON is valid but not a usable event of its kind
	 * (missing field, wrong type): the delivery is ignored for this reason. */
	char problem[256];
};

/* How an app wants to be deployed (the apps row). */
struct webhook_app {
	const char *deploy;         /* "branch", "tags" or "pipeline" */
	const char *branch;         /* NULL or "": the project's default branch */
	int64_t project_id;         /* 0: any project */
};

/* Parses a delivery. event_header is X-Gitlab-Event (NULL: taken from
 * object_kind). -1 (err) only when the body is not valid UTF-8 JSON or not an
 * object (answer 400); otherwise 0, with ev->problem set for a valid object
 * that is not a usable event. */
int webhook_parse(const char *event_header, const char *body, size_t len,
		  struct webhook_event *ev, struct err *err);

/* 1: build ev->sha; 0: ignore, with the reason in why. */
int webhook_decide(const struct webhook_app *app, const struct webhook_event *ev, char *why,
		   size_t why_cap);

/* The deduplication key of a delivery to app: "<app>:idem:<Idempotency-Key>",
 * else "<app>:uuid:<X-Gitlab-Event-UUID>", else "<app>:body:<SHA-256 of event
 * and body>" (a key over WEBHOOK_KEY_MAX bytes or with bytes outside
 * 0x21..0x7e is replaced by "sha256:<hex of it>"). */
void webhook_dedup_key(const char *app, const char *idempotency_key, const char *event_uuid,
		       const char *event_header, const char *body, size_t len, char *out,
		       size_t cap);

/* The JSON stored in deliveries.summary (what the builder reads back), and the
 * build description "push <project> <ref> <sha>". */
cJSON *webhook_summary(const struct webhook_event *ev);
void webhook_description(const struct webhook_event *ev, char *out, size_t cap);

/* Registers POST /hooks/gitlab/{hook_id} with c->server (call after
 * server_new and builder_new). Logs and does nothing more on failure. */
void webhook_register(struct coord *c);

#endif
