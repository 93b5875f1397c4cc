#include "deployer.h"

#include <ev.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clock.h"
#include "journal.h"
#include "json.h"
#include "log.h"
#include "spec.h"

#define REASON_MAX 2048
#define TAIL_MAX 4096
#define RECOVER_RETRY_S 5.0

enum jstate {
	J_WAITING,    /* behind the running swap of its app */
	J_STARTING,   /* its "job" record is being written */
	J_RUNNING,    /* the swap runs (or, after a replay, was interrupted) */
	J_DONE,       /* result decided */
};

struct djob {
	struct djob *prev, *next;   /* every job, oldest first */
	struct deployer *d;
	char id[SPEC_ID_MAX + 1];
	char lease[SPEC_ID_MAX + 1];
	char app[SPEC_NAME_MAX + 1];
	char release[SPEC_ID_MAX + 1];
	int64_t gen;
	int64_t lease_s;
	enum spec_job_type type;
	enum jstate state;
	char step[16];
	cJSON *started;             /* the start step's detail */
	cJSON *routes;              /* switch routes, then the result's routes */
	bool switched;
	bool recovering;
	bool ran;                   /* accepted and run (not refused or superseded) */
	int jpending;               /* journal callbacks still to come */
	bool again;                 /* delivered again during its recovery: spec kept */
	char result[16];
	char *reason;
	char *tail;                 /* memory only: container output stays out of the journal */
	int64_t duration_ms;
	bool acked, ack_inflight;
	bool lease_lost;
	bool extend_inflight;
	int64_t begin_mono;
	int64_t last_extend_mono;
	struct spec_job spec;       /* waiting / running deploys: owns the release */
	void *swap;
};

struct dapp {
	struct dapp *next;
	char app[SPEC_NAME_MAX + 1];
	int64_t seen;               /* highest generation accepted */
	int64_t applied;            /* generation of what serves */
	char release[SPEC_ID_MAX + 1];
	cJSON *routes;
	struct djob *running;
	struct djob *waiting;
	ev_timer retry;             /* recovery retry */
	struct deployer *d;
};

struct deployer {
	struct ev_loop *loop;
	struct deployer_coord coord;
	struct deployer_runner runner;
	deployer_swap_end_fn on_swap_end;
	void *swap_end_arg;
	struct journal *journal;
	const char *crash_at;
	struct djob *head, *tail;
	size_t done_count;
	struct dapp *apps;
	ev_timer tick;
	int64_t tick_ms;
	bool started;
	bool stopping;              /* deployer_stop ran: callbacks only tidy up */
};

/* ---- small helpers ---- */

static int64_t now_ms(void) { return clock_mono_ms(); }

static char *dup_cap(const char *s, size_t cap)
{
	if (!s)
		return NULL;
	size_t n = strnlen(s, cap);
	char *d = malloc(n + 1);
	if (d) {
		memcpy(d, s, n);
		d[n] = '\0';
	}
	return d;
}

static struct djob *find_job(const struct deployer *d, const char *id)
{
	for (struct djob *j = d->tail; j; j = j->prev) {
		if (strcmp(j->id, id) == 0)
			return j;
	}
	return NULL;
}

static struct dapp *find_app(const struct deployer *d, const char *app)
{
	for (struct dapp *a = d->apps; a; a = a->next) {
		if (strcmp(a->app, app) == 0)
			return a;
	}
	return NULL;
}

static void on_recover_retry(struct ev_loop *loop, ev_timer *w, int revents);

static struct dapp *get_app(struct deployer *d, const char *app)
{
	struct dapp *a = find_app(d, app);
	if (a)
		return a;
	if (!(a = calloc(1, sizeof *a)))
		return NULL;
	snprintf(a->app, sizeof a->app, "%s", app);
	a->d = d;
	ev_timer_init(&a->retry, on_recover_retry, RECOVER_RETRY_S, 0.0);
	a->retry.data = a;
	a->next = d->apps;
	d->apps = a;
	return a;
}

static struct djob *new_job(struct deployer *d, const char *id)
{
	struct djob *j = calloc(1, sizeof *j);
	if (!j)
		return NULL;
	j->d = d;
	snprintf(j->id, sizeof j->id, "%s", id);
	j->prev = d->tail;
	if (d->tail)
		d->tail->next = j;
	else
		d->head = j;
	d->tail = j;
	return j;
}

static void free_job(struct deployer *d, struct djob *j)
{
	if (j->prev)
		j->prev->next = j->next;
	else
		d->head = j->next;
	if (j->next)
		j->next->prev = j->prev;
	else
		d->tail = j->prev;
	if (j->state == J_DONE)
		d->done_count--;
	cJSON_Delete(j->started);
	cJSON_Delete(j->routes);
	free(j->reason);
	free(j->tail);
	spec_job_clear(&j->spec);
	free(j);
}

/* Forgets the oldest finished and acknowledged jobs beyond the cap. */
static void evict(struct deployer *d)
{
	struct djob *j = d->head;
	while (d->done_count > DEPLOYER_JOBS_KEPT && j) {
		struct djob *next = j->next;
		if (j->state == J_DONE && j->acked && !j->ack_inflight && j->jpending == 0)
			free_job(d, j);
		j = next;
	}
}

static void set_done(struct deployer *d, struct djob *j)
{
	if (j->state != J_DONE)
		d->done_count++;
	j->state = J_DONE;
}

static const char *type_name(enum spec_job_type t)
{
	return t == SPEC_JOB_REMOVE ? "remove" : "deploy";
}

static void crash_hook(struct deployer *d, const char *step)
{
	if (d->crash_at && strcmp(d->crash_at, step) == 0) {
		log_warn("deployer.crash_at", "step=%s (debug.crash_at test hook: SIGKILL)", step);
		raise(SIGKILL);
	}
}

/* Appends a record; a failure to even queue it is logged (journal_append only
 * fails for programming errors or a lack of memory). */
static int journal(struct deployer *d, const cJSON *rec, journal_done_fn done, void *arg)
{
	struct err err;
	if (!d->journal) {
		if (done)
			done(arg);
		return 0;
	}
	if (journal_append(d->journal, rec, done, arg, &err) < 0) {
		log_error("deployer.journal_failed", "error=\"%s\"", err.msg);
		return -1;
	}
	return 0;
}

static cJSON *job_record(const struct djob *j, const char *t)
{
	cJSON *r = cJSON_CreateObject();
	cJSON_AddStringToObject(r, "t", t);
	cJSON_AddStringToObject(r, "id", j->id);
	return r;
}

/* What the job, result and snapshot records say about the job itself. */
static void add_job_fields(cJSON *r, const struct djob *j)
{
	cJSON_AddStringToObject(r, "app", j->app);
	cJSON_AddNumberToObject(r, "gen", (double)j->gen);
	cJSON_AddStringToObject(r, "type", type_name(j->type));
	cJSON_AddStringToObject(r, "release", j->release);
	cJSON_AddStringToObject(r, "lease", j->lease);
}

/* After a job was forgotten: the highest generation still accepted. */
static void recompute_seen(struct deployer *d, struct dapp *a)
{
	a->seen = a->applied;
	for (struct djob *k = d->head; k; k = k->next) {
		if (k->ran && k->gen > a->seen && strcmp(k->app, a->app) == 0)
			a->seen = k->gen;
	}
}

/* ---- acknowledgements ---- */

static void send_ack(struct deployer *d, struct djob *j);

static void on_acked_durable(void *arg) { (void)arg; }

static void ack_reply(enum deployer_reply r, void *arg)
{
	struct djob *j = arg;
	struct deployer *d = j->d;
	j->ack_inflight = false;
	if (r == DEPLOYER_REPLY_LEASE_LOST) {
		/* Sent again with the new lease when the job is delivered again. */
		log_warn("deployer.ack_lease_lost", "job=%s", j->id);
		return;
	}
	j->acked = true;
	log_info("deployer.acked", "job=%s result=%s%s", j->id, j->result,
		 r == DEPLOYER_REPLY_FINAL ? " (refused by the coordinator)" : "");
	cJSON *rec = job_record(j, "acked");
	journal(d, rec, on_acked_durable, NULL);
	cJSON_Delete(rec);
	free(j->tail);
	j->tail = NULL;
	evict(d);
}

static void send_ack(struct deployer *d, struct djob *j)
{
	if (d->stopping || j->state != J_DONE || j->acked || j->ack_inflight || !d->coord.ack)
		return;
	struct deployer_ack a = {
		.job_id = j->id,
		.lease_id = j->lease,
		.result = j->result,
		.generation = j->gen,
		.reason = j->reason ? j->reason : "",
		.output_tail = j->tail ? j->tail : "",
		.duration_ms = j->duration_ms,
	};
	j->ack_inflight = true;
	log_debug("deployer.ack", "job=%s lease=%s result=%s", j->id, j->lease, j->result);
	d->coord.ack(d->coord.ctx, &a, ack_reply, j);
}

/* ---- results ---- */

static void run_next(struct deployer *d, struct dapp *a);

/* A record of j is on disk. False while the deployer stops (callbacks only
 * tidy up then); otherwise the crash test hook gets its chance at `step`. */
static bool record_durable(struct djob *j, const char *step)
{
	j->jpending--;
	if (j->d->stopping)
		return false;
	crash_hook(j->d, step);
	return true;
}

static void on_result_durable(void *arg)
{
	struct djob *j = arg;
	if (record_durable(j, "done"))
		send_ack(j->d, j);
}

/* Applies a result to the app's state (replay and live). */
static void apply_result(struct deployer *d, struct djob *j)
{
	if (!j->ran || j->gen < 0 || !j->app[0])
		return;
	struct dapp *a = get_app(d, j->app);
	if (!a)
		return;
	if (strcmp(j->result, "succeeded") != 0)
		return;
	if (j->gen > a->seen)
		a->seen = j->gen;
	a->applied = j->gen;
	cJSON_Delete(a->routes);
	a->routes = NULL;
	if (j->type == SPEC_JOB_REMOVE) {
		a->release[0] = '\0';
	} else {
		snprintf(a->release, sizeof a->release, "%s", j->release);
		if (j->routes)
			a->routes = cJSON_Duplicate(j->routes, 1);
	}
}

/* Decides a job's result, journals it, then acknowledges it. */
static void finish(struct deployer *d, struct djob *j, const char *result, const char *reason,
		   const char *tail, const cJSON *routes)
{
	set_done(d, j);
	snprintf(j->result, sizeof j->result, "%s", result);
	free(j->reason);
	j->reason = dup_cap(reason && *reason ? reason : NULL, REASON_MAX);
	free(j->tail);
	j->tail = dup_cap(tail && *tail ? tail : NULL, TAIL_MAX);
	j->duration_ms = j->begin_mono ? now_ms() - j->begin_mono : 0;
	if (routes) {
		cJSON_Delete(j->routes);
		j->routes = cJSON_Duplicate(routes, 1);
	}
	spec_job_clear(&j->spec);
	apply_result(d, j);
	log_msg(strcmp(result, "failed") == 0 ? LOG_LEVEL_WARN : LOG_LEVEL_INFO, "deployer.result",
		"job=%s app=%s generation=%lld result=%s duration_ms=%lld%s%s%s", j->id,
		j->app[0] ? j->app : "-", (long long)j->gen, result, (long long)j->duration_ms,
		j->reason ? " reason=\"" : "", j->reason ? j->reason : "", j->reason ? "\"" : "");
	cJSON *rec = job_record(j, "result");
	add_job_fields(rec, j);
	cJSON_AddStringToObject(rec, "result", result);
	cJSON_AddStringToObject(rec, "reason", j->reason ? j->reason : "");
	cJSON_AddNumberToObject(rec, "duration_ms", (double)j->duration_ms);
	cJSON_AddBoolToObject(rec, "ran", j->ran);
	if (j->routes && strcmp(result, "succeeded") == 0)
		cJSON_AddItemToObject(rec, "routes", cJSON_Duplicate(j->routes, 1));
	j->jpending++;
	if (journal(d, rec, on_result_durable, j) < 0) {
		j->jpending--;
		send_ack(d, j); /* better an ack without a journal record than none */
	}
	cJSON_Delete(rec);
}

/* ---- running swaps ---- */

static void swap_step_hook(void *arg, struct swap *s, const char *step, cJSON *detail);
static void swap_done_hook(void *arg, const struct swap_outcome *o);

static void on_step_durable(void *arg)
{
	struct djob *j = arg;
	if (record_durable(j, j->step) && j->swap)
		j->d->runner.proceed(j->swap);
}

static void swap_step_hook(void *arg, struct swap *s, const char *step, cJSON *detail)
{
	(void)s;
	struct djob *j = arg;
	struct deployer *d = j->d;
	snprintf(j->step, sizeof j->step, "%s", step);
	cJSON *rec = job_record(j, "step");
	cJSON_AddStringToObject(rec, "step", step);
	if (detail) {
		cJSON *started = cJSON_GetObjectItemCaseSensitive(detail, "started");
		cJSON *routes = cJSON_GetObjectItemCaseSensitive(detail, "routes");
		if (started) {
			cJSON_Delete(j->started);
			j->started = cJSON_Duplicate(started, 1);
		}
		if (routes && strcmp(step, "switch") == 0) {
			cJSON_Delete(j->routes);
			j->routes = cJSON_Duplicate(routes, 1);
			j->switched = true;
		}
		for (cJSON *it = detail->child; it; it = it->next)
			cJSON_AddItemToObject(rec, it->string, cJSON_Duplicate(it, 1));
		cJSON_Delete(detail);
	}
	log_info("deployer.step", "job=%s app=%s step=%s", j->id, j->app, step);
	j->jpending++;
	if (journal(d, rec, on_step_durable, j) < 0)
		j->jpending--;
	cJSON_Delete(rec);
}

static void start_swap(struct deployer *d, struct djob *j, struct dapp *a)
{
	struct swap_request req = {
		.kind = j->recovering ? SWAP_RECOVER
			: j->type == SPEC_JOB_REMOVE ? SWAP_REMOVE : SWAP_DEPLOY,
		.job_id = j->id,
		.app = j->app,
		.generation = j->gen,
		.release = j->spec.release,
		.serving_routes = a->routes,
		.release_id = j->release,
		.switched = j->switched,
		.started = j->started,
		.routes = j->routes,
		.remove = j->type == SPEC_JOB_REMOVE,
	};
	struct swap_hooks hooks = {.step = swap_step_hook, .done = swap_done_hook, .arg = j};
	j->swap = d->runner.start(d->runner.ctx, &req, &hooks);
	if (!j->swap) {
		log_error("deployer.swap_failed", "job=%s error=\"out of memory\"", j->id);
		if (j->recovering) {
			ev_timer_start(d->loop, &a->retry);
			return;
		}
		a->running = NULL;
		finish(d, j, "failed", "agent out of memory", NULL, NULL);
		run_next(d, a);
	}
}

static void on_job_durable(void *arg)
{
	struct djob *j = arg;
	if (!record_durable(j, "begin"))
		return;
	j->state = J_RUNNING;
	start_swap(j->d, j, find_app(j->d, j->app));
}

static void run_job(struct deployer *d, struct dapp *a, struct djob *j)
{
	a->running = j;
	j->ran = true;
	if (j->gen > a->seen)
		a->seen = j->gen;
	j->state = J_STARTING;
	j->begin_mono = now_ms();
	snprintf(j->step, sizeof j->step, "begin");
	if (j->spec.release)
		snprintf(j->release, sizeof j->release, "%s", j->spec.release->id);
	log_info("deployer.job_start", "job=%s app=%s type=%s generation=%lld release=%s", j->id,
		 j->app, type_name(j->type), (long long)j->gen, j->release[0] ? j->release : "-");
	cJSON *rec = job_record(j, "job");
	add_job_fields(rec, j);
	cJSON_AddNumberToObject(rec, "lease_s", (double)j->lease_s);
	j->jpending++;
	if (journal(d, rec, on_job_durable, j) < 0) {
		j->jpending--;
		a->running = NULL;
		finish(d, j, "failed", "the journal refused the job record", NULL, NULL);
	}
	cJSON_Delete(rec);
}

static void run_next(struct deployer *d, struct dapp *a)
{
	if (a->running || !a->waiting)
		return;
	struct djob *j = a->waiting;
	a->waiting = NULL;
	if (j->gen <= a->seen) {
		finish(d, j, "superseded", "", NULL, NULL);
		return;
	}
	run_job(d, a, j);
}

static void swap_done_hook(void *arg, const struct swap_outcome *o)
{
	struct djob *j = arg;
	struct deployer *d = j->d;
	struct dapp *a = find_app(d, j->app);
	j->swap = NULL;
	if (j->recovering && o->status == SWAP_FAILED) {
		log_warn("deployer.recover_retry", "job=%s reason=\"%s\"", j->id, o->reason);
		ev_timer_start(d->loop, &a->retry);
		return;
	}
	a->running = NULL;
	if (o->status == SWAP_UNDONE) {
		/* The interrupted job left no trace for clients: forget it, so its
		 * redelivered copy runs again. */
		cJSON *rec = job_record(j, "reset");
		journal(d, rec, NULL, NULL);
		cJSON_Delete(rec);
		if (j->again) {
			/* Delivered again while the recovery ran: run that copy now. */
			log_info("deployer.undone", "job=%s app=%s (running it again)", j->id, j->app);
			j->recovering = j->switched = j->again = false;
			cJSON_Delete(j->started);
			cJSON_Delete(j->routes);
			j->started = j->routes = NULL;
			recompute_seen(d, a);
			run_job(d, a, j);
			return;
		}
		log_info("deployer.undone", "job=%s app=%s (runs again when redelivered)", j->id,
			 j->app);
		free_job(d, j);
		recompute_seen(d, a);
	} else {
		const char *outcome = o->status == SWAP_OK ? "succeeded" : "failed";
		if (j->begin_mono && d->on_swap_end)
			d->on_swap_end(d->swap_end_arg, j->app, outcome, now_ms() - j->begin_mono);
		finish(d, j, outcome, o->reason, o->output_tail, o->routes);
	}
	run_next(d, a);
}

static void on_recover_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	struct dapp *a = w->data;
	if (a->running && !a->running->swap)
		start_swap(a->d, a->running, a);
}

/* ---- offers ---- */

static void update_lease(struct deployer *d, struct djob *j, const struct spec_job *sj)
{
	if (strcmp(j->lease, sj->lease_id) == 0)
		return;
	snprintf(j->lease, sizeof j->lease, "%s", sj->lease_id);
	j->lease_lost = false;
	j->last_extend_mono = now_ms();
	if (sj->lease_expires_in_s > 0)
		j->lease_s = sj->lease_expires_in_s;
	cJSON *rec = job_record(j, "lease");
	cJSON_AddStringToObject(rec, "lease", j->lease);
	journal(d, rec, NULL, NULL);
	cJSON_Delete(rec);
}

void deployer_offer(struct deployer *d, const cJSON *json)
{
	struct spec_job sj;
	struct err err;
	int rc = spec_job_parse(json, &sj, &err);
	if (!sj.ackable) {
		log_error("deployer.job_unreadable", "error=\"%s\" (cannot be acknowledged)",
			  err.msg);
		return;
	}
	struct djob *j = find_job(d, sj.id);
	if (j) {
		/* Delivered again: a lost lease, or an agent restart. Never run twice. */
		log_info("deployer.redelivered", "job=%s state=%s", j->id,
			 j->state == J_DONE ? j->result : "in progress");
		update_lease(d, j, &sj);
		if (j->state == J_DONE) {
			j->acked = false; /* acknowledge again, with the new lease */
			send_ack(d, j);
		}
		if (j->recovering && rc == 0 && !j->again) {
			/* Kept: if the recovery undoes the job, it runs again at once. */
			j->spec = sj;
			j->again = true;
			return;
		}
		spec_job_clear(&sj);
		return;
	}
	if (!(j = new_job(d, sj.id))) {
		spec_job_clear(&sj);
		return;
	}
	snprintf(j->lease, sizeof j->lease, "%s", sj.lease_id);
	snprintf(j->app, sizeof j->app, "%s", sj.app);
	j->gen = sj.generation;
	j->type = sj.type;
	j->lease_s = sj.lease_expires_in_s;
	j->last_extend_mono = now_ms();
	j->begin_mono = now_ms();
	if (rc < 0) {
		log_warn("deployer.job_invalid", "job=%s error=\"%s\"", sj.id, err.msg);
		finish(d, j, "failed", err.msg, NULL, NULL);
		return;
	}
	if (sj.release)
		snprintf(j->release, sizeof j->release, "%s", sj.release->id);
	struct dapp *a = get_app(d, sj.app);
	if (!a) {
		finish(d, j, "failed", "agent out of memory", NULL, NULL);
		spec_job_clear(&sj);
		return;
	}
	if (j->gen <= a->seen) {
		log_info("deployer.superseded", "job=%s app=%s generation=%lld seen=%lld", j->id,
			 a->app, (long long)j->gen, (long long)a->seen);
		finish(d, j, "superseded", "", NULL, NULL);
		spec_job_clear(&sj);
		return;
	}
	j->spec = sj; /* takes the release */
	if (a->running) {
		/* Waits for the running swap; only the newest waiting job survives. */
		if (a->waiting && a->waiting->gen >= j->gen) {
			finish(d, j, "superseded", "", NULL, NULL);
			return;
		}
		if (a->waiting)
			finish(d, a->waiting, "superseded", "", NULL, NULL);
		j->state = J_WAITING;
		a->waiting = j;
		log_info("deployer.job_waits", "job=%s app=%s generation=%lld behind=%s", j->id,
			 a->app, (long long)j->gen, a->running->id);
		return;
	}
	run_job(d, a, j);
}

/* ---- leases ---- */

static void extend_reply(enum deployer_reply r, void *arg)
{
	struct djob *j = arg;
	j->extend_inflight = false;
	if (r == DEPLOYER_REPLY_OK) {
		j->last_extend_mono = now_ms();
	} else if (r == DEPLOYER_REPLY_LEASE_LOST) {
		j->lease_lost = true;
		log_warn("deployer.lease_lost", "job=%s (work goes on; the ack uses the next lease)",
			 j->id);
	} else if (r == DEPLOYER_REPLY_RETRY) {
		/* Again in about two seconds rather than a third of a lease. */
		j->last_extend_mono = now_ms() - j->lease_s * 1000 / 3 + 2000;
	} else {
		j->last_extend_mono = now_ms();
	}
}

static void on_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	struct deployer *d = w->data;
	int64_t now = now_ms();
	for (struct djob *j = d->head; j; j = j->next) {
		if (j->state == J_DONE || j->lease_lost || j->extend_inflight || j->lease_s <= 0 ||
		    !d->coord.extend)
			continue;
		int64_t every = j->lease_s * 1000 / 3;
		if (now - j->last_extend_mono < every)
			continue;
		j->extend_inflight = true;
		d->coord.extend(d->coord.ctx, j->id, j->lease, j->lease_s, extend_reply, j);
	}
}

/* ---- replay and snapshot ---- */

static const char *str(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsString(v) ? v->valuestring : "";
}

static int64_t num(const cJSON *o, const char *k, int64_t def)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsNumber(v) ? (int64_t)v->valuedouble : def;
}

static void replace_json(cJSON **dst, const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	if (!v)
		return;
	cJSON_Delete(*dst);
	*dst = cJSON_IsNull(v) ? NULL : cJSON_Duplicate(v, 1);
}

static struct djob *replay_job(struct deployer *d, const cJSON *rec)
{
	const char *id = str(rec, "id");
	if (!spec_valid_id(id))
		return NULL;
	struct djob *j = find_job(d, id);
	return j ? j : new_job(d, id);
}

static void fill_job(struct djob *j, const cJSON *rec)
{
	const char *s;
	if (*(s = str(rec, "app")))
		snprintf(j->app, sizeof j->app, "%s", s);
	if (*(s = str(rec, "release")))
		snprintf(j->release, sizeof j->release, "%s", s);
	if (*(s = str(rec, "lease")))
		snprintf(j->lease, sizeof j->lease, "%s", s);
	j->gen = num(rec, "gen", j->gen);
	j->lease_s = num(rec, "lease_s", j->lease_s);
	j->type = strcmp(str(rec, "type"), "remove") == 0 ? SPEC_JOB_REMOVE : SPEC_JOB_DEPLOY;
}

int deployer_replay(const cJSON *rec, void *arg, struct err *err)
{
	(void)err;
	struct deployer *d = arg;
	const char *t = str(rec, "t");
	struct djob *j;
	if (strcmp(t, "app") == 0) {
		const char *name = str(rec, "app");
		struct dapp *a = spec_valid_name(name) ? get_app(d, name) : NULL;
		if (!a)
			return 0;
		a->seen = num(rec, "seen", 0);
		a->applied = num(rec, "applied", 0);
		snprintf(a->release, sizeof a->release, "%s", str(rec, "release"));
		replace_json(&a->routes, rec, "routes");
		return 0;
	}
	if (!(j = replay_job(d, rec)))
		return 0;
	if (strcmp(t, "job") == 0) {
		fill_job(j, rec);
		j->state = J_RUNNING;
		j->ran = true;
		snprintf(j->step, sizeof j->step, "begin");
		struct dapp *a = get_app(d, j->app);
		if (a && j->gen > a->seen)
			a->seen = j->gen;
	} else if (strcmp(t, "step") == 0) {
		snprintf(j->step, sizeof j->step, "%s", str(rec, "step"));
		replace_json(&j->started, rec, "started");
		if (strcmp(j->step, "switch") == 0) {
			replace_json(&j->routes, rec, "routes");
			j->switched = true;
		}
	} else if (strcmp(t, "result") == 0 || strcmp(t, "jobsnap") == 0) {
		fill_job(j, rec);
		bool snap = strcmp(t, "jobsnap") == 0;
		if (snap) {
			snprintf(j->step, sizeof j->step, "%s", str(rec, "step"));
			replace_json(&j->started, rec, "started");
			j->switched = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(rec, "switched"));
			j->acked = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(rec, "acked"));
		}
		replace_json(&j->routes, rec, "routes");
		j->ran = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(rec, "ran"));
		const char *result = str(rec, "result");
		if (*result) {
			set_done(d, j);
			snprintf(j->result, sizeof j->result, "%s", result);
			free(j->reason);
			j->reason = *str(rec, "reason") ? dup_cap(str(rec, "reason"), REASON_MAX)
							 : NULL;
			j->duration_ms = num(rec, "duration_ms", 0);
			if (!snap)
				apply_result(d, j);
		} else {
			j->state = J_RUNNING;
		}
	} else if (strcmp(t, "acked") == 0) {
		j->acked = true;
	} else if (strcmp(t, "lease") == 0) {
		snprintf(j->lease, sizeof j->lease, "%s", str(rec, "lease"));
	} else if (strcmp(t, "reset") == 0) {
		struct dapp *a = find_app(d, j->app);
		free_job(d, j);
		if (a)
			recompute_seen(d, a);
	} else {
		log_warn("deployer.replay_unknown", "t=\"%.32s\" (skipped)", t);
	}
	return 0;
}

int deployer_snapshot(cJSON *out, void *arg)
{
	struct deployer *d = arg;
	for (struct dapp *a = d->apps; a; a = a->next) {
		cJSON *r = cJSON_CreateObject();
		cJSON_AddStringToObject(r, "t", "app");
		cJSON_AddStringToObject(r, "app", a->app);
		cJSON_AddNumberToObject(r, "seen", (double)a->seen);
		cJSON_AddNumberToObject(r, "applied", (double)a->applied);
		cJSON_AddStringToObject(r, "release", a->release);
		if (a->routes)
			cJSON_AddItemToObject(r, "routes", cJSON_Duplicate(a->routes, 1));
		cJSON_AddItemToArray(out, r);
	}
	for (struct djob *j = d->head; j; j = j->next) {
		/* Waiting and starting jobs have no record yet: redelivery covers them. */
		if (j->state == J_WAITING || j->state == J_STARTING)
			continue;
		cJSON *r = job_record(j, "jobsnap");
		add_job_fields(r, j);
		cJSON_AddNumberToObject(r, "lease_s", (double)j->lease_s);
		cJSON_AddStringToObject(r, "step", j->step);
		if (j->started)
			cJSON_AddItemToObject(r, "started", cJSON_Duplicate(j->started, 1));
		if (j->routes)
			cJSON_AddItemToObject(r, "routes", cJSON_Duplicate(j->routes, 1));
		cJSON_AddBoolToObject(r, "switched", j->switched);
		cJSON_AddBoolToObject(r, "ran", j->ran);
		if (j->state == J_DONE) {
			cJSON_AddStringToObject(r, "result", j->result);
			cJSON_AddStringToObject(r, "reason", j->reason ? j->reason : "");
			cJSON_AddNumberToObject(r, "duration_ms", (double)j->duration_ms);
			cJSON_AddBoolToObject(r, "acked", j->acked);
		}
		cJSON_AddItemToArray(out, r);
	}
	return 0;
}

/* ---- life cycle ---- */

struct deployer *deployer_new(const struct deployer_opts *opts, struct err *err)
{
	if (!opts->loop || !opts->runner.start || !opts->runner.proceed) {
		err_set(err, "deployer: a loop and a runner are required");
		return NULL;
	}
	struct deployer *d = calloc(1, sizeof *d);
	if (!d) {
		err_set(err, "deployer: out of memory");
		return NULL;
	}
	d->loop = opts->loop;
	d->coord = opts->coord;
	d->runner = opts->runner;
	d->on_swap_end = opts->on_swap_end;
	d->swap_end_arg = opts->swap_end_arg;
	d->crash_at = opts->crash_at;
	d->tick_ms = opts->tick_ms > 0 ? opts->tick_ms : 250;
	ev_timer_init(&d->tick, on_tick, (double)d->tick_ms / 1000.0,
		      (double)d->tick_ms / 1000.0);
	d->tick.data = d;
	return d;
}

void deployer_set_journal(struct deployer *d, struct journal *j) { d->journal = j; }

void deployer_start(struct deployer *d)
{
	if (d->started)
		return;
	d->started = true;
	int64_t now = now_ms();
	/* Interrupted swaps first: their apps wait until they are sorted out. */
	for (struct djob *j = d->head; j; j = j->next) {
		j->last_extend_mono = now;
		if (j->state != J_RUNNING)
			continue;
		struct dapp *a = get_app(d, j->app);
		if (!a || a->running) {
			log_error("deployer.recover_skipped", "job=%s app=%s (another job of the app "
				  "is being recovered)", j->id, j->app);
			continue;
		}
		log_warn("deployer.recover", "job=%s app=%s generation=%lld step=%s switched=%s",
			 j->id, j->app, (long long)j->gen, j->step, j->switched ? "yes" : "no");
		a->running = j;
		j->recovering = true;
		j->begin_mono = now;
		start_swap(d, j, a);
	}
	for (struct djob *j = d->head; j; j = j->next)
		send_ack(d, j);
	for (struct dapp *a = d->apps; a; a = a->next) {
		if (!a->running && a->routes && d->runner.resync)
			d->runner.resync(d->runner.ctx, a->app, a->routes);
	}
	ev_timer_start(d->loop, &d->tick);
	ev_unref(d->loop); /* the tick alone does not keep the loop running */
}

void deployer_resync(struct deployer *d)
{
	for (struct dapp *a = d->apps; a; a = a->next) {
		if (!a->running && a->routes && d->runner.resync)
			d->runner.resync(d->runner.ctx, a->app, a->routes);
	}
}

cJSON *deployer_apps_json(const struct deployer *d)
{
	cJSON *arr = cJSON_CreateArray();
	for (const struct dapp *a = d->apps; a && arr; a = a->next) {
		if (!a->applied)
			continue;
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "app", a->app);
		cJSON_AddNumberToObject(o, "generation", (double)a->applied);
		cJSON_AddStringToObject(o, "release", a->release);
		/* What serves now (docs/protocol.md): a swap in progress or a failed
		 * one does not change it. */
		const char *state = a->release[0] ? "running" : "removed";
		cJSON_AddStringToObject(o, "state", state);
		cJSON_AddItemToArray(arr, o);
	}
	return arr;
}

int64_t deployer_seen_generation(const struct deployer *d, const char *app)
{
	const struct dapp *a = find_app(d, app);
	return a ? a->seen : 0;
}

int64_t deployer_applied_generation(const struct deployer *d, const char *app)
{
	const struct dapp *a = find_app(d, app);
	return a ? a->applied : 0;
}

const char *deployer_release(const struct deployer *d, const char *app)
{
	const struct dapp *a = find_app(d, app);
	return a ? a->release : "";
}

bool deployer_busy(const struct deployer *d, const char *app)
{
	const struct dapp *a = find_app(d, app);
	return a && (a->running || a->waiting);
}

const char *deployer_job_result(const struct deployer *d, const char *job_id)
{
	const struct djob *j = find_job(d, job_id);
	if (!j)
		return NULL;
	return j->state == J_DONE ? j->result : "";
}

size_t deployer_unacked(const struct deployer *d)
{
	size_t n = 0;
	for (const struct djob *j = d->head; j; j = j->next)
		n += j->state == J_DONE && !j->acked;
	return n;
}

void deployer_stop(struct deployer *d)
{
	if (!d || d->stopping)
		return;
	d->stopping = true;
	if (d->started) {
		ev_ref(d->loop);
		ev_timer_stop(d->loop, &d->tick);
	}
	for (struct djob *j = d->head; j; j = j->next) {
		if (j->swap && d->runner.cancel)
			d->runner.cancel(j->swap);
		j->swap = NULL;
	}
	for (struct dapp *a = d->apps; a; a = a->next)
		ev_timer_stop(d->loop, &a->retry);
}

void deployer_free(struct deployer *d)
{
	if (!d)
		return;
	deployer_stop(d);
	while (d->head)
		free_job(d, d->head);
	while (d->apps) {
		struct dapp *a = d->apps;
		d->apps = a->next;
		cJSON_Delete(a->routes);
		free(a);
	}
	free(d);
}
