/*
 * slack: per-app Slack notifications through an incoming webhook.
 *
 * Each app may have an incoming-webhook URL (apps.slack_url, sealed at rest
 * like every secret: secrets.h; set with PUT /v1/apps/{app}/slack, never
 * returned by any API, registered with log_redact_add whenever it is read).
 * A message goes out when
 *   - a build fails                      (slack_build_failed, from the builder),
 *   - a release is live on every instance (a rollout ended `succeeded`),
 *   - a rollout fails or is rolled back  (ended `failed` / `rolled back`),
 * naming the app, the release, the commit (short sha), who pushed and how long
 * it took. Messages are Slack's JSON {"text": ..., "blocks": [a section with
 * the headline, a section of fields]}; "text" alone says everything too.
 *
 * Nothing waits for Slack. The hooks only note an id: slack_rollout_ended is
 * called from rollout.c INSIDE a store transaction (the store thread), so it
 * takes a lock for a moment, appends the rollout id and wakes the loop
 * (ev_async); the loop then reads the rollout in a store operation queued
 * after that transaction, so a transition that was rolled back (its rollout
 * is still `running`) sends nothing. Messages go into a bounded in-memory
 * queue (opts.queue_max; when full the OLDEST waiting message is dropped and
 * counted) and at most opts.in_flight_max are sent at a time through
 * common/http_client: 429 is retried after Retry-After, 5xx, timeouts and
 * dropped connections with full-jitter backoff (opts.retry); other answers
 * are logged and counted as failed. The queue is not durable: a restart
 * loses what was waiting (notifications are best effort, rollouts are not).
 *
 * Ownership: slack_new returns the module (slack_free) and sets c->slack,
 * which slack_free clears again (under a lock: the store thread reads it in
 * slack_rollout_ended). The hooks find the module there; with none they do
 * nothing, so code paths and tests without Slack are unaffected.
 * Threads: loop thread for everything except slack_rollout_ended (any
 * thread). Nothing blocks.
 */
#ifndef SLIPWAY_COORD_SLACK_H
#define SLIPWAY_COORD_SLACK_H

#include <stddef.h>
#include <stdint.h>

#include "backoff.h"

struct coord;
struct server;
struct slack;

#define SLACK_QUEUE_MAX 256
#define SLACK_IN_FLIGHT_MAX 2
#define SLACK_RETRY_BASE_MS 1000
#define SLACK_RETRY_CAP_MS 30000      /* Retry-After honoured up to 4x this */
#define SLACK_RETRY_ATTEMPTS 6
#define SLACK_TIMEOUT_MS 10000
#define SLACK_URL_MAX 2048
#define SLACK_PENDING_MAX 1024        /* rollout ids noted and not yet read */

struct slack_opts {
	size_t queue_max;              /* 0: SLACK_QUEUE_MAX */
	int in_flight_max;             /* 0: SLACK_IN_FLIGHT_MAX */
	struct backoff_policy retry;   /* all zero: SLACK_RETRY_* */
	int64_t timeout_ms;            /* 0: SLACK_TIMEOUT_MS */
};

struct slack_stats {
	size_t queued;                 /* waiting */
	size_t in_flight;
	uint64_t enqueued, sent, failed, dropped;
	uint64_t pending_dropped;      /* rollout notes lost to SLACK_PENDING_MAX */
};

/* Needs c->loop, c->http and c->store (c->master_key opens the URLs); opts
 * may be NULL. Sets c->slack for the hooks. NULL when out of memory. */
struct slack *slack_new(struct coord *c, const struct slack_opts *opts);

/* Cancels what is in flight, drops the queue, clears c->slack. Store operations
 * still outstanding finish harmlessly. NULL is fine. */
void slack_free(struct slack *s);

/* PUT/GET/DELETE /v1/apps/{app}/slack (docs/api.md); -1 when refused. */
int slack_register_routes(struct slack *s, struct server *srv);

/* ---- the hooks ---- */

/* The build's failed row is committed (loop thread): notify if the app wants. */
void slack_build_failed(struct coord *c, const char *build_id);

/* A rollout may have ended in this transaction (any thread, typically the store
 * thread inside the transaction): its final state is read after the commit. */
void slack_rollout_ended(struct coord *c, const char *rollout_id);

/* ---- lower level (tests) ---- */

/* Queues body (JSON) for url; 0 queued (an older message may have been
 * dropped to make room), -1 out of memory or bad arguments. */
int slack_post(struct slack *s, const char *url, const char *body);
void slack_get_stats(const struct slack *s, struct slack_stats *out);

enum slack_kind {
	SLACK_BUILD_FAILED,
	SLACK_RELEASE_LIVE,
	SLACK_ROLLOUT_FAILED,
	SLACK_ROLLED_BACK,
};

/* What a message says. Strings may be NULL or "" (unknown). */
struct slack_note {
	enum slack_kind kind;
	const char *app;
	const char *release;
	int64_t release_seq;       /* 0: unknown */
	const char *build;
	const char *sha;           /* full; the message shows 8 characters */
	const char *author;        /* who pushed */
	const char *ref;
	const char *reason;        /* why it failed / rolled back */
	const char *back_to;       /* rolled back: the release serving again */
	int64_t took_ms;           /* the build, or the rollout; < 0 unknown */
	int64_t total_ms;          /* push to live (release live from a build); < 0 unknown */
};

/* The message JSON (caller frees); NULL when out of memory. */
char *slack_message_json(const struct slack_note *n);

/* "850ms", "4.2s", "42s", "3m 05s", "1h 02m". */
void slack_format_duration(int64_t ms, char *out, size_t cap);

#endif
