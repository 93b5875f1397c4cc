#include "lifecycle.h"

#include <ev.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autoscaling.h"
#include "backoff.h"
#include "clock.h"
#include "imds.h"
#include "log.h"

#define DEFAULT_POLL_MS 5000
#define DEFAULT_DRAIN_MS 30000
#define DEFAULT_STOP_MS 120000
#define DEFAULT_FLUSH_MS 60000
#define DEFAULT_HEARTBEAT_MS 60000
#define COMPLETE_RETRY_BASE_MS 1000
#define COMPLETE_RETRY_CAP_MS 30000

enum poll_what { POLL_NONE, POLL_STATE, POLL_SPOT, POLL_GROUP, POLL_INSTANCE };

struct lifecycle {
	struct ev_loop *loop;
	struct imds *imds;
	struct autoscaling *as;
	struct lifecycle_steps steps;
	char group[256];
	char hook[256];
	char instance[32];
	bool watch_spot;
	int64_t poll_ms, dereg_ms, drain_ms, stop_ms, flush_ms, heartbeat_ms, margin_ms;

	enum lifecycle_state state;
	bool started;
	bool hook_running;     /* the lifecycle state said Terminated (or begin said so) */
	bool action_over;      /* completed, or Auto Scaling said there is none */
	bool completing_wanted;
	char reason[64];
	int64_t begun_mono;
	uint64_t step;         /* id of the step in progress */
	int heartbeats;
	int complete_failures;

	ev_timer poll_timer;   /* metadata polling */
	ev_timer step_timer;   /* deregistration delay, step guards, completion retries */
	ev_timer hb_timer;     /* lifecycle heartbeats */
	enum poll_what polling;
	uint64_t as_call;      /* complete or heartbeat in flight */
	bool as_is_heartbeat;
};

static void advance(struct lifecycle *lc);
static void complete_now(struct lifecycle *lc);
static void retry_complete(struct lifecycle *lc);

const char *lifecycle_state_name(enum lifecycle_state st)
{
	static const char *const names[] = {"watching", "unhealthy", "deregistering", "draining",
					    "stopping", "flushing", "completing", "done"};
	return (unsigned)st < sizeof names / sizeof names[0] ? names[st] : "?";
}

static int64_t since(const struct lifecycle *lc)
{
	return lc->begun_mono ? clock_mono_ms() - lc->begun_mono : 0;
}

/* ---- watching the metadata ---- */

static void poll_next(struct lifecycle *lc, enum poll_what what);

static void trim(char *s)
{
	size_t n = strlen(s);
	while (n && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' '))
		s[--n] = '\0';
}

static void on_imds(const struct imds_result *r, void *arg)
{
	struct lifecycle *lc = arg;
	enum poll_what what = lc->polling;
	lc->polling = POLL_NONE;
	char body[256];
	snprintf(body, sizeof body, "%.*s", (int)(r->body_len < sizeof body - 1 ? r->body_len
										  : sizeof body - 1),
		 r->body ? r->body : "");
	trim(body);
	bool ok = !r->error && r->status == 200;
	switch (what) {
	case POLL_STATE:
		if (ok && strcmp(body, "Terminated") == 0) {
			if (!lc->hook_running)
				log_info("lifecycle.hook", "target-lifecycle-state=Terminated: a termination "
					 "lifecycle hook holds this instance");
			lc->hook_running = true;
			if (lc->state == LIFECYCLE_WATCHING) {
				lifecycle_begin(lc, "termination lifecycle hook", true);
				return;
			}
			/* Drained already after a spot notice: a hook that started since is completed. */
			if (lc->state == LIFECYCLE_DONE && !lc->action_over && !lc->as_call) {
				lc->state = LIFECYCLE_COMPLETING;
				complete_now(lc);
				return;
			}
		}
		if (lc->watch_spot && lc->state == LIFECYCLE_WATCHING) {
			poll_next(lc, POLL_SPOT);
			return;
		}
		break;
	case POLL_SPOT:
		if (ok && body[0] == '{' && lc->state == LIFECYCLE_WATCHING) {
			log_warn("lifecycle.spot_interruption", "notice=%s", body);
			lifecycle_begin(lc, "spot interruption", false);
			return;
		}
		break;
	case POLL_GROUP:
		if (ok && body[0] && strlen(body) < sizeof lc->group) {
			snprintf(lc->group, sizeof lc->group, "%s", body);
			log_info("lifecycle.group", "name=%s (from the instance metadata)", lc->group);
			if (!lc->instance[0]) {
				poll_next(lc, POLL_INSTANCE);
				return;
			}
		} else {
			log_warn("lifecycle.group_unknown", "error=\"%s\" status=%ld: set "
				 "lifecycle.group_name or turn on instance metadata tags",
				 r->error ? r->error : "", r->status);
			if (lc->state == LIFECYCLE_COMPLETING && !lc->as_call) {
				retry_complete(lc);
				return;
			}
		}
		break;
	case POLL_INSTANCE:
		if (ok && body[0] && strlen(body) < sizeof lc->instance) {
			memcpy(lc->instance, body, strlen(body) + 1);
		} else {
			log_warn("lifecycle.instance_unknown", "error=\"%s\" status=%ld",
				 r->error ? r->error : "", r->status);
			if (lc->state == LIFECYCLE_COMPLETING && !lc->as_call) {
				retry_complete(lc);
				return;
			}
		}
		break;
	case POLL_NONE:
		break;
	}
	if (lc->state == LIFECYCLE_COMPLETING && !lc->as_call && !ev_is_active(&lc->step_timer))
		complete_now(lc);
}

static void poll_next(struct lifecycle *lc, enum poll_what what)
{
	static const char *const paths[] = {
		[POLL_STATE] = LIFECYCLE_STATE_PATH, [POLL_SPOT] = LIFECYCLE_SPOT_PATH,
		[POLL_GROUP] = LIFECYCLE_GROUP_TAG_PATH, [POLL_INSTANCE] = LIFECYCLE_INSTANCE_PATH};
	if (lc->polling != POLL_NONE)
		return;
	lc->polling = what;
	if (imds_get(lc->imds, paths[what], on_imds, lc) < 0) {
		lc->polling = POLL_NONE;
		log_warn("lifecycle.imds_busy", "path=%s", paths[what]);
	}
}

static void on_poll(struct ev_loop *loop, ev_timer *t, int revents)
{
	(void)loop;
	(void)revents;
	struct lifecycle *lc = t->data;
	/* While draining, only a later hook matters (after a spot notice). */
	if (lc->state == LIFECYCLE_WATCHING || (lc->state == LIFECYCLE_DONE && !lc->action_over))
		poll_next(lc, POLL_STATE);
}

/* ---- Auto Scaling ---- */

static void on_as(const struct awsquery_result *res, void *arg);

static void start_heartbeat(struct lifecycle *lc);

static void on_hb_timer(struct ev_loop *loop, ev_timer *t, int revents)
{
	(void)loop;
	(void)revents;
	start_heartbeat(t->data);
}

static bool names_known(struct lifecycle *lc)
{
	if (!lc->group[0]) {
		poll_next(lc, POLL_GROUP);
		return false;
	}
	if (!lc->instance[0]) {
		poll_next(lc, POLL_INSTANCE);
		return false;
	}
	return true;
}

static void start_heartbeat(struct lifecycle *lc)
{
	if (lc->as_call || lc->action_over || !lc->hook_running ||
	    lc->state == LIFECYCLE_COMPLETING || lc->state == LIFECYCLE_DONE ||
	    !lc->group[0] || !lc->instance[0])
		return;
	struct autoscaling_lifecycle l = {lc->group, lc->hook, lc->instance, NULL, NULL};
	struct err err = {{0}};
	lc->as_is_heartbeat = true;
	lc->as_call = autoscaling_record_lifecycle_heartbeat(lc->as, &l, on_as, lc, &err);
	if (!lc->as_call)
		log_error("lifecycle.heartbeat_failed", "error=\"%s\"", err.msg);
}

static void retry_complete(struct lifecycle *lc)
{
	struct backoff_policy p = {COMPLETE_RETRY_BASE_MS, COMPLETE_RETRY_CAP_MS, 0};
	int64_t d = backoff_delay(&p, ++lc->complete_failures);
	ev_timer_stop(lc->loop, &lc->step_timer);
	ev_timer_set(&lc->step_timer, (double)d / 1000.0, 0.0);
	ev_timer_start(lc->loop, &lc->step_timer);
}

static void finish(struct lifecycle *lc, const char *how)
{
	lc->action_over = true;
	lc->state = LIFECYCLE_DONE;
	ev_timer_stop(lc->loop, &lc->hb_timer);
	log_info("lifecycle.done", "outcome=%s reason=\"%s\" elapsed_ms=%" PRId64
		 " heartbeats=%d", how, lc->reason, since(lc), lc->heartbeats);
}

static void on_as(const struct awsquery_result *res, void *arg)
{
	struct lifecycle *lc = arg;
	lc->as_call = 0;
	bool none = res->status == AWSQUERY_FAILED && strcmp(res->code, "ValidationError") == 0;
	if (lc->as_is_heartbeat) {
		if (res->status == AWSQUERY_OK) {
			lc->heartbeats++;
			log_info("lifecycle.heartbeat", "elapsed_ms=%" PRId64 " state=%s", since(lc),
				 lifecycle_state_name(lc->state));
		} else if (none) {
			log_warn("lifecycle.no_action", "message=\"%s\": the hook already ended",
				 res->message);
			lc->hook_running = false;
		} else {
			log_warn("lifecycle.heartbeat_failed", "code=%s message=\"%s\"", res->code,
				 res->message);
		}
		if (lc->completing_wanted)
			complete_now(lc);
		return;
	}
	if (res->status == AWSQUERY_OK) {
		finish(lc, "completed");
		return;
	}
	if (none) {
		/* Completed by an attempt whose answer was lost, or timed out. */
		log_warn("lifecycle.no_action", "message=\"%s\"", res->message);
		finish(lc, "no action in progress");
		return;
	}
	if (res->status == AWSQUERY_FAILED) {
		log_error("lifecycle.complete_refused", "code=%s message=\"%s\": the hook ends by its "
			  "timeout instead", res->code, res->message);
		finish(lc, "refused");
		return;
	}
	log_warn("lifecycle.complete_retry", "code=%s message=\"%s\"", res->code, res->message);
	retry_complete(lc);
}

static void complete_now(struct lifecycle *lc)
{
	lc->completing_wanted = false;
	if (lc->as_call) {
		if (lc->as_is_heartbeat) {
			lc->completing_wanted = true; /* after the heartbeat in flight */
			return;
		}
		return;
	}
	if (!names_known(lc))
		return; /* the metadata answer calls again */
	struct autoscaling_lifecycle l = {lc->group, lc->hook, lc->instance, NULL, "CONTINUE"};
	struct err err = {{0}};
	lc->as_is_heartbeat = false;
	log_info("lifecycle.complete", "group=%s hook=%s instance=%s elapsed_ms=%" PRId64,
		 lc->group, lc->hook, lc->instance, since(lc));
	lc->as_call = autoscaling_complete_lifecycle_action(lc->as, &l, on_as, lc, &err);
	if (!lc->as_call) {
		log_error("lifecycle.complete_failed", "error=\"%s\"", err.msg);
		finish(lc, "bad arguments");
	}
}

/* ---- the drain ---- */

static void on_step_timer(struct ev_loop *loop, ev_timer *t, int revents)
{
	(void)loop;
	(void)revents;
	struct lifecycle *lc = t->data;
	switch (lc->state) {
	case LIFECYCLE_DEREGISTERING:
		advance(lc);
		return;
	case LIFECYCLE_UNHEALTHY:
	case LIFECYCLE_DRAINING:
	case LIFECYCLE_STOPPING:
	case LIFECYCLE_FLUSHING:
		log_error("lifecycle.step_timeout", "step=%s elapsed_ms=%" PRId64 ": going on",
			  lifecycle_state_name(lc->state), since(lc));
		advance(lc);
		return;
	case LIFECYCLE_COMPLETING:
		complete_now(lc);
		return;
	default:
		return;
	}
}

static void guard(struct lifecycle *lc, int64_t ms)
{
	ev_timer_stop(lc->loop, &lc->step_timer);
	ev_timer_set(&lc->step_timer, (double)ms / 1000.0, 0.0);
	ev_timer_start(lc->loop, &lc->step_timer);
}

/* Leaves the current state for the next one and starts it. */
static void advance(struct lifecycle *lc)
{
	ev_timer_stop(lc->loop, &lc->step_timer);
	uint64_t step = ++lc->step;
	void *ctx = lc->steps.ctx;
	switch (lc->state) {
	case LIFECYCLE_UNHEALTHY:
		lc->state = LIFECYCLE_DEREGISTERING;
		log_info("lifecycle.deregistering", "wait_ms=%" PRId64 " elapsed_ms=%" PRId64,
			 lc->dereg_ms, since(lc));
		guard(lc, lc->dereg_ms);
		return;
	case LIFECYCLE_DEREGISTERING:
		lc->state = LIFECYCLE_DRAINING;
		log_info("lifecycle.draining", "elapsed_ms=%" PRId64, since(lc));
		guard(lc, lc->drain_ms + lc->margin_ms);
		lc->steps.drain(ctx, lc, step, lc->drain_ms);
		return;
	case LIFECYCLE_DRAINING:
		lc->state = LIFECYCLE_STOPPING;
		log_info("lifecycle.stopping", "elapsed_ms=%" PRId64, since(lc));
		guard(lc, lc->stop_ms + lc->margin_ms);
		lc->steps.stop(ctx, lc, step, lc->stop_ms);
		return;
	case LIFECYCLE_STOPPING:
		lc->state = LIFECYCLE_FLUSHING;
		log_info("lifecycle.flushing_logs", "elapsed_ms=%" PRId64, since(lc));
		guard(lc, lc->flush_ms + lc->margin_ms);
		lc->steps.flush_logs(ctx, lc, step, lc->flush_ms);
		return;
	case LIFECYCLE_FLUSHING:
		if (!lc->hook_running) {
			/* A spot notice without a hook: done, but a hook that starts later is completed. */
			lc->state = LIFECYCLE_DONE;
			ev_timer_stop(lc->loop, &lc->hb_timer);
			log_info("lifecycle.drained", "reason=\"%s\" elapsed_ms=%" PRId64 ": no lifecycle "
				 "hook runs; watching for one", lc->reason, since(lc));
			poll_next(lc, POLL_STATE);
			return;
		}
		lc->state = LIFECYCLE_COMPLETING;
		complete_now(lc);
		return;
	default:
		return;
	}
}

void lifecycle_step_done(struct lifecycle *lc, uint64_t step)
{
	if (!lc || step != lc->step)
		return;
	switch (lc->state) {
	case LIFECYCLE_UNHEALTHY:
	case LIFECYCLE_DRAINING:
	case LIFECYCLE_STOPPING:
	case LIFECYCLE_FLUSHING:
		log_info("lifecycle.step_done", "step=%s elapsed_ms=%" PRId64,
			 lifecycle_state_name(lc->state), since(lc));
		advance(lc);
		return;
	default:
		return;
	}
}

void lifecycle_begin(struct lifecycle *lc, const char *reason, bool hook)
{
	if (!lc || lc->state != LIFECYCLE_WATCHING)
		return;
	snprintf(lc->reason, sizeof lc->reason, "%s", reason ? reason : "asked");
	if (hook)
		lc->hook_running = true;
	lc->begun_mono = clock_mono_ms();
	lc->state = LIFECYCLE_UNHEALTHY;
	log_warn("lifecycle.begin", "reason=\"%s\" group=%s hook=%s instance=%s: draining this "
		 "instance", lc->reason, lc->group[0] ? lc->group : "?", lc->hook,
		 lc->instance[0] ? lc->instance : "?");
	/* Names from the metadata now, so the heartbeats and the completion need no wait. */
	if (!lc->group[0])
		poll_next(lc, POLL_GROUP);
	else if (!lc->instance[0])
		poll_next(lc, POLL_INSTANCE);
	ev_timer_set(&lc->hb_timer, (double)lc->heartbeat_ms / 1000.0,
		     (double)lc->heartbeat_ms / 1000.0);
	ev_timer_start(lc->loop, &lc->hb_timer);
	uint64_t step = ++lc->step;
	guard(lc, 10000 + lc->margin_ms);
	lc->steps.unhealthy(lc->steps.ctx, lc, step);
}

/* ---- setup ---- */

struct lifecycle *lifecycle_new(const struct lifecycle_opts *o, struct err *err)
{
	if (!o->loop || !o->http || !o->creds || !o->region || !*o->region || !o->hook_name ||
	    !*o->hook_name || !o->steps.unhealthy || !o->steps.drain || !o->steps.stop ||
	    !o->steps.flush_logs) {
		err_set(err, "lifecycle: loop, http, credentials, region, hook name and steps are "
			"required");
		return NULL;
	}
	struct lifecycle *lc = calloc(1, sizeof *lc);
	if (!lc) {
		err_set(err, "lifecycle: out of memory");
		return NULL;
	}
	lc->loop = o->loop;
	lc->steps = o->steps;
	snprintf(lc->hook, sizeof lc->hook, "%s", o->hook_name);
	snprintf(lc->group, sizeof lc->group, "%s", o->group_name ? o->group_name : "");
	snprintf(lc->instance, sizeof lc->instance, "%s", o->instance_id ? o->instance_id : "");
	lc->watch_spot = o->watch_spot;
	lc->poll_ms = o->poll_interval_ms > 0 ? o->poll_interval_ms : DEFAULT_POLL_MS;
	lc->dereg_ms = o->deregistration_delay_ms > 0 ? o->deregistration_delay_ms : 0;
	lc->drain_ms = o->drain_timeout_ms > 0 ? o->drain_timeout_ms : DEFAULT_DRAIN_MS;
	lc->stop_ms = o->stop_timeout_ms > 0 ? o->stop_timeout_ms : DEFAULT_STOP_MS;
	lc->flush_ms = o->log_flush_timeout_ms > 0 ? o->log_flush_timeout_ms : DEFAULT_FLUSH_MS;
	lc->heartbeat_ms = o->heartbeat_interval_ms > 0 ? o->heartbeat_interval_ms
							: DEFAULT_HEARTBEAT_MS;
	lc->margin_ms = o->step_margin_ms > 0 ? o->step_margin_ms : LIFECYCLE_STEP_MARGIN_MS;
	struct autoscaling_lifecycle check = {lc->group[0] ? lc->group : "g", lc->hook,
					      lc->instance[0] ? lc->instance : "i-0", NULL, NULL};
	if (autoscaling_check_lifecycle(&check, 1, err) < 0) {
		free(lc);
		return NULL;
	}
	struct imds_opts io = {.endpoint = o->imds_endpoint};
	/* Few quick attempts per call: the completion itself is retried for as
	 * long as it takes (retry_complete), heartbeats at their next interval. */
	struct autoscaling_opts ao = {.region = o->region, .endpoint = o->autoscaling_endpoint,
				      .ca_file = o->ca_file, .retry_base_ms = 100,
				      .retry_cap_ms = 2000, .max_attempts = 3};
	if (!(lc->imds = imds_new(o->http, &io, err)) ||
	    !(lc->as = autoscaling_new(o->loop, o->http, o->creds, &ao, err))) {
		lifecycle_free(lc);
		return NULL;
	}
	ev_timer_init(&lc->poll_timer, on_poll, 0.0, (double)lc->poll_ms / 1000.0);
	lc->poll_timer.data = lc;
	ev_timer_init(&lc->step_timer, on_step_timer, 0.0, 0.0);
	lc->step_timer.data = lc;
	ev_timer_init(&lc->hb_timer, on_hb_timer, 0.0, 0.0);
	lc->hb_timer.data = lc;
	return lc;
}

void lifecycle_free(struct lifecycle *lc)
{
	if (!lc)
		return;
	if (lc->loop) {
		ev_timer_stop(lc->loop, &lc->poll_timer);
		ev_timer_stop(lc->loop, &lc->step_timer);
		ev_timer_stop(lc->loop, &lc->hb_timer);
	}
	imds_free(lc->imds);
	autoscaling_free(lc->as);
	free(lc);
}

void lifecycle_start(struct lifecycle *lc)
{
	if (!lc || lc->started)
		return;
	lc->started = true;
	ev_timer_set(&lc->poll_timer, 0.0, (double)lc->poll_ms / 1000.0);
	ev_timer_start(lc->loop, &lc->poll_timer);
	log_info("lifecycle.watching", "poll_ms=%" PRId64 " spot=%s hook=%s group=%s", lc->poll_ms,
		 lc->watch_spot ? "yes" : "no", lc->hook, lc->group[0] ? lc->group : "(metadata)");
}

enum lifecycle_state lifecycle_get_state(const struct lifecycle *lc)
{
	return lc ? lc->state : LIFECYCLE_WATCHING;
}

int lifecycle_heartbeats(const struct lifecycle *lc)
{
	return lc ? lc->heartbeats : 0;
}

bool lifecycle_completed(const struct lifecycle *lc)
{
	return lc && lc->action_over;
}
