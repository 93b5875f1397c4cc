#include "logship.h"

#include <ev.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "backoff.h"
#include "checkpoint.h"
#include "clock.h"
#include "docker.h"
#include "json.h"
#include "log.h"
#include "logbatch.h"
#include "logdest.h"
#include "logframe.h"
#include "spool.h"
#include "worker.h"

#define DEFAULT_FLUSH_MS 1000
#define DEFAULT_MEMORY_MAX ((uint64_t)32 << 20)
#define MAX_WAIT 2                  /* sealed batches waiting behind the one in flight */
#define SPOOLING_MAX 4              /* a stream's spool writes in progress before it pauses */
#define ROOM_PROBE 4096             /* a stream reads on while a line this long would fit */
#define DRAIN_MAX 4                 /* spooled batches in flight when the destination is up */
#define SENDS_MAX 4                 /* batches in flight from all streams together */
#define INSPECT_MAX 8               /* container inspects at a time */
#define PEND_MAX ((size_t)8 << 20)  /* a long line's repaired text not yet cut into events */
#define NAME_MAX_LEN 512
#define FOLLOW_RETRY_BASE_MS 250
#define FOLLOW_RETRY_CAP_MS 30000

enum fstate {
	F_IDLE,       /* not reading */
	F_INSPECT,    /* asking whether it has a TTY and what it is */
	F_FOLLOW,     /* a log connection is open */
	F_RETRY,      /* the connection broke: waiting to reopen it */
	F_PAUSED,     /* open, but held back (backpressure) */
	F_EOF,        /* read to the end; the container is not running */
};

struct sbatch {
	struct sbatch *next;
	struct logbatch b;
	uint64_t bseq;              /* the stream's batch number */
};

/* The position after a batch, recorded once it and every older batch of
 * the stream are accepted or durably spooled (they may settle out of order:
 * a batch in flight can fail after newer ones were spooled). */
struct pmark {
	uint64_t bseq;
	struct logpos_mark m;
	bool done;
};

struct lstream {
	struct logship *ls;
	struct lstream *next;
	uint64_t key;
	bool synthetic;             /* logship_emit: no container, no checkpoint */
	char id[72];
	char short_id[13];
	char app[64];
	char service[64];
	char release[72];
	char *group;                /* at most NAME_MAX_LEN - 1 bytes */
	char *stream;
	bool tty;
	/* reading */
	enum fstate fs;
	uint64_t call;
	struct logpos pos;
	struct logpos_mark base;    /* where the current read began */
	uint64_t skip_left;
	struct logbatch_utf8 u8;
	struct buf pend;
	int64_t line_ts;
	size_t line_events;
	int retries;
	ev_timer retry_timer;
	bool retry_on;
	bool removed;               /* destroyed in Docker */
	bool start_again;           /* a start came while a read was still open */
	/* shipping */
	struct logbatch cur;
	ev_timer flush;
	bool flush_on;
	struct sbatch *waitq, *waitq_tail;
	size_t nwait;
	struct sbatch *inflight;
	uint64_t send_id;
	struct lstream *send_next;  /* waiting for one of the SENDS_MAX slots */
	bool send_queued;
	uint64_t ckpt_gen;          /* must be durable before the next send */
	size_t spooling;            /* spool writes in progress */
	uint64_t next_bseq;
	uint64_t max_spooled;       /* newest batch sent to the spool */
	int64_t sent_mono;
	struct pmark *pm;           /* unsettled batches, oldest first */
	size_t npm, cappm;
};

struct inspect_req {
	struct logship *ls;
	struct inspect_req *next;
	char id[72];
	bool catch_up;              /* a stopped container with a checkpoint */
	uint64_t call;
};

struct drain {
	struct logship *ls;
	struct drain *next;
	uint64_t seq, key;
	struct logbatch *b;
	cJSON *header;
	uint64_t send_id;
};

struct spool_ctx {
	struct lstream *st;
	uint64_t bseq;
	size_t events;
};

struct logship {
	struct ev_loop *loop;
	struct docker *docker;
	struct logdest *dest;
	const struct logbatch_limits *lim;
	char dir[PATH_MAX - 64];
	char instance[256];
	char prefix[256];
	const char *filters[AGENT_LABELS_MAX + 2];
	char *filter_store[AGENT_LABELS_MAX + 1];
	int64_t flush_ms;
	uint64_t memory_max;
	int64_t max_age_ms;
	struct backoff_policy probe;
	bool discovery;
	struct worker_pool *workers;
	struct checkpoint_store *ckpt;
	struct spool *spool;
	struct lstream *streams;
	size_t nstreams;
	uint64_t mem;               /* batch bytes held, all streams */
	size_t sending;             /* stream batches in flight */
	struct lstream *send_q, *send_q_tail; /* streams waiting for a slot, in turn */
	size_t paused;
	bool ckpt_waiters;
	uint64_t spool_max;
	int64_t spool_broken_until;  /* mono ms: a spool write failed, do not use it till then */
	/* discovery */
	uint64_t events_sub;
	uint64_t list_call;
	bool listed_once;
	bool relist_again;
	struct inspect_req *inspects;   /* queued and running */
	size_t inspecting;
	/* destination state */
	bool down;
	int probe_failures;
	ev_timer probe_timer;
	bool probe_on;
	struct drain *drains;
	size_t ndrain;
	bool stopping;
	struct logship_stats st;
};

static void pump(struct lstream *st);
static void seal(struct lstream *st);
static void start_read(struct lstream *st);
static void drain_kick(struct logship *ls);
static void resume_paused(struct logship *ls);

/* ---- names ---- */

static void clean_name(char *s)
{
	/* Log stream names may not hold ':' or '*'; group names allow fewer still. */
	for (; *s; s++)
		if (*s == ':' || *s == '*' || (unsigned char)*s < 0x20)
			*s = '_';
}

void logship_group_name(const char *prefix, const char *app, char *out, size_t cap)
{
	snprintf(out, cap, "%s%s", prefix ? prefix : LOGSHIP_DEFAULT_PREFIX, app);
	for (char *s = out; *s; s++) {
		char c = *s;
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '-' || c == '_' || c == '/' || c == '#'))
			*s = '_';
	}
}

void logship_stream_name(const char *service, const char *instance, const char *container_id,
			 char *out, size_t cap)
{
	snprintf(out, cap, "%s/%s/%.12s", service, instance, container_id);
	clean_name(out);
}

static uint64_t key_of(const char *group, const char *stream)
{
	uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
	for (const char *p = group; *p; p++)
		h = (h ^ (unsigned char)*p) * 0x100000001b3ull;
	h = (h ^ '\n') * 0x100000001b3ull;
	for (const char *p = stream; *p; p++)
		h = (h ^ (unsigned char)*p) * 0x100000001b3ull;
	return h;
}

/* ---- streams ---- */

static struct lstream *find_id(struct logship *ls, const char *id)
{
	for (struct lstream *st = ls->streams; st; st = st->next)
		if (!st->synthetic && strcmp(st->id, id) == 0)
			return st;
	return NULL;
}

static struct lstream *find_key(struct logship *ls, uint64_t key)
{
	for (struct lstream *st = ls->streams; st; st = st->next)
		if (st->key == key)
			return st;
	return NULL;
}

static void on_flush(struct ev_loop *loop, ev_timer *t, int revents);
static void on_retry(struct ev_loop *loop, ev_timer *t, int revents);

static struct lstream *stream_new(struct logship *ls)
{
	struct lstream *st = calloc(1, sizeof *st);
	if (!st)
		return NULL;
	st->ls = ls;
	logbatch_init(&st->cur);
	logpos_init(&st->pos);
	buf_init(&st->pend, PEND_MAX);
	ev_timer_init(&st->flush, on_flush, 0.0, 0.0);
	st->flush.data = st;
	ev_timer_init(&st->retry_timer, on_retry, 0.0, 0.0);
	st->retry_timer.data = st;
	st->next = ls->streams;
	ls->streams = st;
	ls->nstreams++;
	return st;
}

static void sbatch_free(struct logship *ls, struct sbatch *b)
{
	if (!b)
		return;
	ls->mem -= b->b.bytes;
	logbatch_free(&b->b);
	free(b);
}

static void stream_free(struct lstream *st)
{
	struct logship *ls = st->ls;
	for (struct lstream **pp = &ls->streams; *pp; pp = &(*pp)->next) {
		if (*pp == st) {
			*pp = st->next;
			break;
		}
	}
	ls->nstreams--;
	if (st->call)
		docker_cancel(ls->docker, st->call);
	if (st->send_id) {
		logdest_cancel(ls->dest, st->send_id);
		ls->sending--;
	}
	if (st->send_queued) {
		struct lstream **pp = &ls->send_q;
		while (*pp != st)
			pp = &(*pp)->send_next;
		*pp = st->send_next;
		if (ls->send_q_tail == st) {
			ls->send_q_tail = NULL;
			for (struct lstream *q = ls->send_q; q; q = q->send_next)
				ls->send_q_tail = q;
		}
	}
	if (st->fs == F_PAUSED)
		ls->paused--;
	ev_timer_stop(ls->loop, &st->flush);
	ev_timer_stop(ls->loop, &st->retry_timer);
	ls->mem -= st->cur.bytes;
	logbatch_free(&st->cur);
	sbatch_free(ls, st->inflight);
	while (st->waitq) {
		struct sbatch *b = st->waitq;
		st->waitq = b->next;
		sbatch_free(ls, b);
	}
	buf_free(&st->pend);
	free(st->pm);
	free(st->group);
	free(st->stream);
	free(st);
}

/* Names live on the heap: most are short, and a stream exists per container. */
static void set_str(char **dst, const char *src)
{
	char *n = strdup(src);
	if (!n)
		return; /* keeps the old name (or "") */
	free(*dst);
	*dst = n;
}

static void set_names(struct lstream *st, const char *app, const char *service,
		      const char *release)
{
	struct logship *ls = st->ls;
	snprintf(st->app, sizeof st->app, "%s", app && *app ? app : "unknown");
	snprintf(st->service, sizeof st->service, "%s", service && *service ? service : "unknown");
	snprintf(st->release, sizeof st->release, "%s", release ? release : "");
	char group[NAME_MAX_LEN], stream[NAME_MAX_LEN];
	logship_group_name(ls->prefix, st->app, group, sizeof group);
	logship_stream_name(st->service, ls->instance, st->id, stream, sizeof stream);
	set_str(&st->group, group);
	set_str(&st->stream, stream);
	if (st->group && st->stream)
		st->key = key_of(st->group, st->stream);
}

/* Nothing left to read or send for this container. */
static bool stream_drained(const struct lstream *st)
{
	return st->fs == F_EOF && st->cur.n == 0 && st->nwait == 0 && !st->inflight &&
	       st->spooling == 0 && st->pend.len == 0;
}

/* A removed container whose output is all out: forget it. */
static void maybe_forget(struct lstream *st)
{
	if (st->synthetic || !st->removed || !stream_drained(st))
		return;
	checkpoint_forget(st->ls->ckpt, st->id);
	log_debug("logship.forget", "container=%.12s", st->id);
	stream_free(st);
}

/* ---- batches ---- */

static void on_flush(struct ev_loop *loop, ev_timer *t, int revents)
{
	(void)loop;
	(void)revents;
	struct lstream *st = t->data;
	st->flush_on = false;
	seal(st);
	pump(st);
}

/* The current batch becomes a sealed one, waiting its turn. */
static void seal(struct lstream *st)
{
	struct logship *ls = st->ls;
	if (st->flush_on) {
		ev_timer_stop(ls->loop, &st->flush);
		st->flush_on = false;
	}
	if (st->cur.n == 0)
		return;
	struct sbatch *b = calloc(1, sizeof *b);
	if (!b)
		return; /* keeps filling cur; sealed on the next event */
	logbatch_move(&b->b, &st->cur);
	b->bseq = ++st->next_bseq;
	if (!st->synthetic) {
		if (st->npm == st->cappm) {
			size_t nc = st->cappm ? st->cappm * 2 : 8;
			struct pmark *pm = realloc(st->pm, nc * sizeof *pm);
			if (pm) {
				st->pm = pm;
				st->cappm = nc;
			}
		}
		/* Without room the mark is skipped: a later one covers it. */
		if (st->npm < st->cappm)
			st->pm[st->npm++] = (struct pmark){b->bseq, logpos_mark(&st->pos, &st->base),
							   false};
	}
	if (st->waitq_tail)
		st->waitq_tail->next = b;
	else
		st->waitq = b;
	st->waitq_tail = b;
	st->nwait++;
}

static struct sbatch *pop_wait(struct lstream *st)
{
	struct sbatch *b = st->waitq;
	if (!b)
		return NULL;
	st->waitq = b->next;
	if (!st->waitq)
		st->waitq_tail = NULL;
	b->next = NULL;
	st->nwait--;
	return b;
}

static void push_front(struct lstream *st, struct sbatch *b)
{
	b->next = st->waitq;
	st->waitq = b;
	if (!st->waitq_tail)
		st->waitq_tail = b;
	st->nwait++;
}

/* Batch bseq is accepted or durably spooled: record the checkpoint as far
 * as every older batch is too. */
static void settle(struct lstream *st, uint64_t bseq)
{
	size_t k = 0;
	for (size_t i = 0; i < st->npm; i++)
		if (st->pm[i].bseq == bseq)
			st->pm[i].done = true;
	while (k < st->npm && st->pm[k].done)
		k++;
	if (k == 0)
		return;
	uint64_t gen = checkpoint_set(st->ls->ckpt, st->id, &st->pm[k - 1].m);
	if (gen > st->ckpt_gen)
		st->ckpt_gen = gen;
	memmove(st->pm, st->pm + k, (st->npm - k) * sizeof *st->pm);
	st->npm -= k;
}

static void drop_aged(struct logship *ls, struct logbatch *b)
{
	uint64_t old = 0, young = 0;
	logbatch_filter_age(b, clock_wall_ms(), ls->max_age_ms, &old, &young);
	if (old || young) {
		ls->st.dropped_too_old += old;
		ls->st.dropped_too_new += young;
		log_warn("logship.dropped_age", "too_old=%" PRIu64 " too_new=%" PRIu64 " (CloudWatch "
			 "takes nothing older than %" PRId64 " days or over 2 hours ahead)", old,
			 young, ls->max_age_ms / 86400000);
	}
}

static void enter_down(struct logship *ls, const char *why)
{
	if (ls->down)
		return;
	ls->down = true;
	ls->probe_failures = 0;
	log_warn("logship.destination_down", "error=\"%s\": spooling to disk until it answers",
		 why);
}

static void destination_up(struct logship *ls)
{
	if (!ls->down)
		return;
	ls->down = false;
	ls->probe_failures = 0;
	if (ls->probe_on) {
		ev_timer_stop(ls->loop, &ls->probe_timer);
		ls->probe_on = false;
	}
	log_info("logship.destination_up", "spooled_files=%zu: draining", spool_count(ls->spool));
}

static void stream_header(const struct lstream *st, char *out, size_t cap)
{
	struct buf h;
	buf_init(&h, SPOOL_HEADER_MAX);
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "group", st->group);
	cJSON_AddStringToObject(o, "stream", st->stream);
	cJSON_AddStringToObject(o, "app", st->app);
	cJSON_AddStringToObject(o, "service", st->service);
	cJSON_AddStringToObject(o, "container", st->short_id);
	cJSON_AddStringToObject(o, "release", st->release);
	json_to_buf(o, &h);
	cJSON_Delete(o);
	snprintf(out, cap, "%s", h.data ? h.data : "{}");
	buf_free(&h);
}

static bool spool_unusable(const struct logship *ls)
{
	return ls->spool_broken_until && clock_mono_ms() < ls->spool_broken_until;
}

static void on_spooled(int ok, uint64_t seq, struct logbatch *failed, void *arg)
{
	(void)seq;
	struct spool_ctx *c = arg;
	struct lstream *st = c->st;
	struct logship *ls = st->ls;
	st->spooling--;
	if (ok) {
		ls->st.events_spooled += c->events;
		settle(st, c->bseq);
		free(c);
		drain_kick(ls);
		pump(st);
		resume_paused(ls);
		maybe_forget(st);
		return;
	}
	/* The disk refused it: keep it in memory, at the front, and send it
	 * directly when the destination answers. */
	struct sbatch *b = calloc(1, sizeof *b);
	if (b) {
		logbatch_move(&b->b, failed);
		b->bseq = c->bseq;
		ls->mem += b->b.bytes;
		push_front(st, b);
	} else {
		ls->st.spool_dropped += c->events;
		settle(st, c->bseq);
		log_error("logship.lost", "events=%zu: could neither spool nor keep them", c->events);
	}
	free(c);
	ls->spool_broken_until = clock_mono_ms() + 30000;
	if (ls->down) {
		ls->down = false; /* no spool to fall back on: retry directly */
		log_error("logship.spool_unusable", "sending directly while the spool fails");
	}
	pump(st);
}

/* Writes a sealed batch to the spool; false when the spool would not take it. */
static bool spool_batch(struct lstream *st, struct sbatch *b)
{
	struct logship *ls = st->ls;
	if (spool_unusable(ls))
		return false;
	struct spool_ctx *c = calloc(1, sizeof *c);
	if (!c)
		return false;
	c->st = st;
	c->bseq = b->bseq;
	c->events = b->b.n;
	char header[SPOOL_HEADER_MAX];
	stream_header(st, header, sizeof header);
	uint64_t bytes = b->b.bytes;
	/* A batch that was in flight while newer ones of its stream were
	 * spooled goes before them. */
	int first = b->bseq < st->max_spooled;
	drop_aged(ls, &b->b);
	if (b->b.n == 0) {
		free(c);
		settle(st, b->bseq);
		sbatch_free(ls, b);
		return true;
	}
	logbatch_sort(&b->b);
	if (spool_write(ls->spool, st->key, header, &b->b, first, on_spooled, c) < 0) {
		free(c);
		return false;
	}
	ls->mem -= bytes;
	if (b->bseq > st->max_spooled)
		st->max_spooled = b->bseq;
	sbatch_free(ls, b);
	st->spooling++;
	return true;
}

static void on_sent(const struct logdest_result *res, void *arg);

/* Every stream sends one batch at a time, and all of them together at most
 * SENDS_MAX: a burst of flushes (every container's timer runs out within a
 * second) becomes a short queue instead of one connection and one request
 * body per container. Streams take the free slots in turn. */
static void wait_for_slot(struct lstream *st)
{
	struct logship *ls = st->ls;
	if (st->send_queued)
		return;
	st->send_queued = true;
	st->send_next = NULL;
	if (ls->send_q_tail)
		ls->send_q_tail->send_next = st;
	else
		ls->send_q = st;
	ls->send_q_tail = st;
}

static void serve_slots(struct logship *ls)
{
	while (ls->send_q && ls->sending < SENDS_MAX) {
		struct lstream *st = ls->send_q;
		ls->send_q = st->send_next;
		if (!ls->send_q)
			ls->send_q_tail = NULL;
		st->send_next = NULL;
		st->send_queued = false;
		pump(st);
	}
}

static void send_batch(struct lstream *st, struct sbatch *b)
{
	struct logship *ls = st->ls;
	ls->sending++;
	struct logdest_stream names = {
		.group = st->group, .stream = st->stream, .app = st->app, .service = st->service,
		.container = st->short_id, .release = st->release,
	};
	st->inflight = b;
	st->sent_mono = clock_mono_ms();
	st->send_id = logdest_send(ls->dest, &names, &b->b, on_sent, st);
	if (!st->send_id) {
		/* Only when out of memory: treat like an unreachable destination. */
		struct logdest_result r = {.status = LOGDEST_UNREACHABLE,
					   .message = "could not start the request"};
		on_sent(&r, st);
		return;
	}
	ls->st.batches_sent++;
}

/* During an outage, whether batches waiting behind the stream's batch in
 * flight (it will fail, or tell that the destination is back) should go to
 * the spool rather than stay in memory. */
static bool overflowing(const struct lstream *st)
{
	const struct logship *ls = st->ls;
	return ls->down && st->inflight && st->waitq && !spool_unusable(ls) &&
	       (st->nwait > MAX_WAIT || ls->mem > ls->memory_max);
}

/* Moves the stream's sealed batches along: to the destination one at a
 * time, or to the spool while it is down. While older batches of the stream
 * are still spooled the newer ones wait in memory (the stream is paused when
 * they fill its share), so the spool serves outages only. */
static void pump(struct lstream *st)
{
	struct logship *ls = st->ls;
	if (ls->stopping)
		return;
	bool moved = false;
	while (!st->inflight && st->waitq) {
		if (st->ckpt_gen > checkpoint_durable(ls->ckpt)) {
			ls->ckpt_waiters = true;
			break;
		}
		bool behind = st->spooling > 0 || spool_key_count(ls->spool, st->key) > 0;
		if (behind && !ls->down)
			break; /* after_drain and on_spooled pump again */
		if (!ls->down && ls->sending >= SENDS_MAX) {
			wait_for_slot(st);
			break;
		}
		struct sbatch *b = pop_wait(st);
		moved = true;
		if (ls->down && spool_batch(st, b))
			continue;
		drop_aged(ls, &b->b);
		if (b->b.n == 0) {
			settle(st, b->bseq);
			sbatch_free(ls, b);
			continue;
		}
		logbatch_sort(&b->b);
		send_batch(st, b);
	}
	while (overflowing(st)) {
		struct sbatch *b = pop_wait(st);
		if (!spool_batch(st, b)) {
			push_front(st, b);
			break;
		}
		moved = true;
	}
	if (moved)
		resume_paused(ls);
}

static void on_sent(const struct logdest_result *res, void *arg)
{
	struct lstream *st = arg;
	struct logship *ls = st->ls;
	struct sbatch *b = st->inflight;
	st->inflight = NULL;
	st->send_id = 0;
	ls->sending--;
	log_debug("logship.sent", "container=%.12s events=%zu ms=%" PRId64 " status=%d", st->id,
		  b->b.n, clock_mono_ms() - st->sent_mono, (int)res->status);
	ls->st.retries += (uint64_t)res->retries;
	ls->st.throttled += (uint64_t)res->throttled;
	switch (res->status) {
	case LOGDEST_OK:
		destination_up(ls);
		ls->st.events_shipped += b->b.n - (res->rejected < b->b.n ? res->rejected : b->b.n);
		if (res->rejected) {
			ls->st.events_rejected += res->rejected;
			log_warn("logship.rejected", "group=%s stream=%s events=%zu rejected=%zu: the "
				 "destination dropped them (too old, too new or past the retention)",
				 st->group, st->stream, b->b.n, res->rejected);
		}
		settle(st, b->bseq);
		sbatch_free(ls, b);
		drain_kick(ls);
		break;
	case LOGDEST_REFUSED:
		ls->st.events_refused += b->b.n;
		log_error("logship.refused", "group=%s stream=%s events=%zu error=\"%s\": dropped",
			  st->group, st->stream, b->b.n, res->message);
		settle(st, b->bseq);
		sbatch_free(ls, b);
		break;
	case LOGDEST_UNREACHABLE:
		enter_down(ls, res->message);
		if (!spool_batch(st, b))
			push_front(st, b); /* no spool: pump sends it again (with backoff) */
		drain_kick(ls);
		break;
	}
	serve_slots(ls); /* the streams that waited go before this one */
	pump(st);
	resume_paused(ls);
	maybe_forget(st);
}

/* ---- reading ---- */

/* Whether the stream's newer batches wait for its older ones in the spool
 * (after an outage) rather than go out as soon as nothing is in flight. */
static bool behind_spool(const struct lstream *st)
{
	const struct logship *ls = st->ls;
	return !ls->down && (st->spooling > 0 || spool_key_count(ls->spool, st->key) > 0);
}

/* Whether the stream can take a line of len bytes now; if not, its log
 * stream is paused until there is room (backpressure: the lines wait in
 * Docker's log file). */
static bool room(const struct lstream *st, size_t len)
{
	const struct logship *ls = st->ls;
	/* A repaired line may be three times longer (U+FFFD for every byte). */
	size_t need = 3 * len + 2 * LOGBATCH_EVENT_OVERHEAD;
	size_t max_bytes = ls->lim->max_bytes ? ls->lim->max_bytes : LOGBATCH_MAX_BYTES;
	size_t max_events = ls->lim->max_events ? ls->lim->max_events : LOGBATCH_MAX_EVENTS;
	bool fits = st->cur.bytes + need <= max_bytes && st->cur.n + 2 <= max_events &&
		    (!ls->lim->max_json || st->cur.json + 6 * len <= ls->lim->max_json);
	bool over = ls->mem > ls->memory_max;
	if (fits && !over)
		return true;
	/* A batch gets sealed: it is sent at once or waits in memory, up to
	 * MAX_WAIT of them. Past that only an outage sends batches on, to the
	 * spool, as long as its writes keep up. */
	bool waits = st->inflight || st->send_queued || behind_spool(st);
	if (!over && (!waits || st->nwait < MAX_WAIT))
		return true;
	return ls->down && !spool_unusable(ls) && st->spooling < SPOOLING_MAX;
}

/* Holds the log stream back; the connection stays open, so the resume
 * goes on from the same byte without a new request (with since=, the engine
 * would scan the container's whole log file again). */
static void pause_read(struct lstream *st)
{
	struct logship *ls = st->ls;
	docker_logs_pause(ls->docker, st->call, true);
	st->fs = F_PAUSED;
	ls->paused++;
	ls->st.pauses++;
	log_debug("logship.pause", "container=%.12s nwait=%zu mem=%" PRIu64, st->id, st->nwait,
		  ls->mem);
}

/* Room was made (a batch went out, a spool write finished): paused streams
 * that can take lines again read on. */
static void resume_paused(struct logship *ls)
{
	if (!ls->paused || ls->mem > ls->memory_max * 3 / 4)
		return;
	for (struct lstream *st = ls->streams; st && ls->paused; st = st->next) {
		if (st->fs != F_PAUSED || !room(st, ROOM_PROBE))
			continue;
		ls->paused--;
		st->fs = F_FOLLOW;
		docker_logs_pause(ls->docker, st->call, false);
		log_debug("logship.resume", "container=%.12s", st->id);
	}
}

static void emit(struct lstream *st, int64_t ts_ns, int stream, const char *msg, size_t len)
{
	struct logship *ls = st->ls;
	logpos_consume(&st->pos, ts_ns);
	if (st->skip_left > 0) {
		st->skip_left--;
		ls->st.duplicates_skipped++;
		return;
	}
	ls->st.events_read++;
	if (len == 0) {
		ls->st.dropped_empty++;
		return;
	}
	int64_t ts_ms = ts_ns / 1000000;
	size_t json = ls->lim->max_json ? logbatch_json_len(msg, len) : 0;
	if (!logbatch_fits(&st->cur, ls->lim, ts_ms, len, json))
		seal(st);
	if (logbatch_add(&st->cur, ts_ms, stream, msg, len, json, clock_mono_ms()) < 0) {
		log_error("logship.oom", "container=%.12s: event dropped", st->id);
		return;
	}
	ls->mem += len + LOGBATCH_EVENT_OVERHEAD;
	if (st->cur.n == 1 && !st->flush_on) {
		ev_timer_set(&st->flush, (double)ls->flush_ms / 1000.0, 0.0);
		ev_timer_start(ls->loop, &st->flush);
		st->flush_on = true;
	}
	size_t max_events = ls->lim->max_events ? ls->lim->max_events : LOGBATCH_MAX_EVENTS;
	size_t max_bytes = ls->lim->max_bytes ? ls->lim->max_bytes : LOGBATCH_MAX_BYTES;
	/* Full enough that a typical next line would not fit: send it now. */
	if (st->cur.n >= max_events || st->cur.bytes + 2 * LOGBATCH_EVENT_OVERHEAD + 64 > max_bytes)
		seal(st);
}

/* Cuts the repaired text of a long line into events of at most 1 MiB - 26. */
static void emit_pending(struct lstream *st, int stream, bool end_of_line)
{
	while (st->pend.len > LOGBATCH_EVENT_MAX) {
		size_t cut = logbatch_utf8_cut(st->pend.data, st->pend.len, LOGBATCH_EVENT_MAX);
		emit(st, st->line_ts, stream, st->pend.data, cut);
		if (st->line_events++ > 0)
			st->ls->st.events_split++;
		buf_consume(&st->pend, cut);
	}
	if (end_of_line) {
		if (st->pend.len > 0 || st->line_events == 0) {
			emit(st, st->line_ts, stream, st->pend.data ? st->pend.data : "", st->pend.len);
			if (st->line_events++ > 0)
				st->ls->st.events_split++;
		}
		if (st->pend.alloc > ((size_t)64 << 10))
			buf_free(&st->pend);
		else
			buf_reset(&st->pend);
		st->line_events = 0;
	}
}

static int on_line(const struct linesplit_line *l, void *arg)
{
	struct lstream *st = arg;
	struct logship *ls = st->ls;
	/* A paused stream still hands over the rest of the read in progress. */
	if (st->fs != F_FOLLOW && st->fs != F_PAUSED)
		return -1;
	ls->st.lines_read++;
	bool first = !(l->flags & LINESPLIT_CONT), last = !(l->flags & LINESPLIT_MORE);
	if (first)
		st->line_ts = l->ts_ns >= 0 ? l->ts_ns : clock_wall_ms() * 1000000;
	const char *t = l->text;
	size_t n = l->len;
	if (st->tty && last && n > 0 && t[n - 1] == '\r')
		n--;
	int stream = l->stream == LOGFRAME_STDERR ? 2 : 1;
	if (first && last && n <= LOGBATCH_EVENT_MAX && logbatch_utf8_clean(t, n)) {
		emit(st, st->line_ts, stream, t, n);
	} else {
		long r = logbatch_utf8_feed(&st->u8, t, n, last, &st->pend);
		if (r < 0) {
			/* Cannot happen within PEND_MAX; keep what fits rather than stall. */
			log_error("logship.line_too_long", "container=%.12s", st->id);
			memset(&st->u8, 0, sizeof st->u8);
		} else {
			ls->st.utf8_replaced += (uint64_t)r;
		}
		emit_pending(st, stream, last);
	}
	if (st->waitq)
		pump(st);
	if (st->fs == F_FOLLOW && !room(st, ROOM_PROBE))
		pause_read(st);
	return 0;
}

static void on_retry(struct ev_loop *loop, ev_timer *t, int revents)
{
	(void)loop;
	(void)revents;
	struct lstream *st = t->data;
	st->retry_on = false;
	if (st->fs == F_RETRY) {
		st->fs = F_IDLE;
		start_read(st);
	}
}

static void on_inspect_after_end(const struct docker_result *res, void *arg);

static void on_logs_done(const struct docker_result *res, void *arg)
{
	struct lstream *st = arg;
	struct logship *ls = st->ls;
	st->call = 0;
	if (st->fs == F_PAUSED)
		ls->paused--;
	/* Whatever was read so far goes out now, not after the flush interval. */
	buf_reset(&st->pend);
	memset(&st->u8, 0, sizeof st->u8);
	st->line_events = 0;
	seal(st);
	if (res->error == DOCKER_OK) {
		st->retries = 0;
		/* The container stopped. It may be running again already (restart
		 * policy, or a start event that came while this read was open). */
		st->fs = F_INSPECT;
		st->call = docker_container_inspect(ls->docker, st->id, 0, on_inspect_after_end, st);
		if (!st->call)
			st->fs = F_EOF;
	} else if (res->error == DOCKER_ERR_NOT_FOUND) {
		st->fs = F_EOF;
		st->removed = true;
	} else {
		st->fs = F_RETRY;
		st->retries++;
		struct backoff_policy p = {FOLLOW_RETRY_BASE_MS, FOLLOW_RETRY_CAP_MS, 0};
		int64_t delay = backoff_delay(&p, st->retries);
		log_warn("logship.read_broken", "container=%.12s error=%s message=\"%s\" retry_ms=%"
			 PRId64, st->id, docker_error_name(res->error), res->message, delay);
		ev_timer_set(&st->retry_timer, (double)delay / 1000.0, 0.0);
		ev_timer_start(ls->loop, &st->retry_timer);
		st->retry_on = true;
	}
	pump(st);
	maybe_forget(st);
}

static void on_inspect_after_end(const struct docker_result *res, void *arg)
{
	struct lstream *st = arg;
	st->call = 0;
	const cJSON *state = res->error == DOCKER_OK
				     ? cJSON_GetObjectItemCaseSensitive(res->json, "State")
				     : NULL;
	bool running = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(state, "Running"));
	if (res->error == DOCKER_ERR_NOT_FOUND)
		st->removed = true;
	if (running || st->start_again) {
		st->start_again = false;
		st->fs = F_IDLE;
		start_read(st);
		return;
	}
	st->fs = F_EOF;
	log_info("logship.eof", "container=%.12s: read to its end", st->id);
	maybe_forget(st);
}

/* Opens the log connection from the current position. */
static void start_read(struct lstream *st)
{
	struct logship *ls = st->ls;
	if (ls->stopping || st->synthetic || st->fs == F_FOLLOW || st->fs == F_INSPECT)
		return;
	struct logpos_mark m = logpos_mark(&st->pos, &st->base);
	st->base = m;
	st->skip_left = m.skip;
	logpos_init(&st->pos);
	buf_reset(&st->pend);
	memset(&st->u8, 0, sizeof st->u8);
	st->line_events = 0;
	struct docker_logs_opts o = {.tty = st->tty, .follow = 1, .since_ns = m.since_ns};
	st->fs = F_FOLLOW;
	st->call = docker_container_logs(ls->docker, st->id, &o, on_line, on_logs_done, st);
	if (!st->call) {
		struct docker_result r = {.error = DOCKER_ERR_INTERNAL, .message = "out of memory"};
		on_logs_done(&r, st);
		return;
	}
	ls->st.reads++;
	log_debug("logship.read", "container=%.12s since_ns=%" PRId64 " skip=%" PRIu64, st->id,
		  m.since_ns, m.skip);
}

/* ---- discovery ---- */

static const char *label_of(const cJSON *labels, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(labels, key);
	return cJSON_IsString(v) ? v->valuestring : "";
}

static void inspect_next(struct logship *ls);

static void inspect_finish(struct inspect_req *r)
{
	struct logship *ls = r->ls;
	for (struct inspect_req **pp = &ls->inspects; *pp; pp = &(*pp)->next) {
		if (*pp == r) {
			*pp = r->next;
			break;
		}
	}
	if (r->call)
		ls->inspecting--;
	free(r);
	inspect_next(ls);
}

static bool labels_match(const struct logship *ls, const cJSON *labels)
{
	if (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(labels, "slipway.app")))
		return false;
	for (size_t i = 1; ls->filters[i]; i++) {
		const char *f = ls->filters[i];
		const char *eq = strchr(f, '=');
		char key[256];
		snprintf(key, sizeof key, "%.*s", eq ? (int)(eq - f) : (int)strlen(f), f);
		const cJSON *v = cJSON_GetObjectItemCaseSensitive(labels, key);
		if (!cJSON_IsString(v) || (eq && strcmp(v->valuestring, eq + 1) != 0))
			return false;
	}
	return true;
}

static void on_inspect(const struct docker_result *res, void *arg)
{
	struct inspect_req *r = arg;
	struct logship *ls = r->ls;
	if (res->error != DOCKER_OK) {
		if (res->error != DOCKER_ERR_NOT_FOUND)
			log_warn("logship.inspect_failed", "container=%.12s error=\"%s\"", r->id,
				 res->message);
		inspect_finish(r);
		return;
	}
	const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(res->json, "Config");
	const cJSON *labels = cJSON_GetObjectItemCaseSensitive(cfg, "Labels");
	const cJSON *state = cJSON_GetObjectItemCaseSensitive(res->json, "State");
	const cJSON *id = cJSON_GetObjectItemCaseSensitive(res->json, "Id");
	bool running = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(state, "Running"));
	if (!cJSON_IsString(id) || strlen(id->valuestring) >= sizeof ((struct lstream *)0)->id ||
	    !labels_match(ls, labels) || (!running && !r->catch_up)) {
		inspect_finish(r);
		return;
	}
	struct lstream *st = find_id(ls, id->valuestring);
	if (!st) {
		if (!(st = stream_new(ls))) {
			inspect_finish(r);
			return;
		}
		snprintf(st->id, sizeof st->id, "%s", id->valuestring);
		snprintf(st->short_id, sizeof st->short_id, "%.12s", st->id);
		set_names(st, label_of(labels, "slipway.app"), label_of(labels, "slipway.service"),
			  label_of(labels, "slipway.release"));
		if (!st->group || !st->stream) {
			stream_free(st);
			inspect_finish(r);
			return;
		}
		st->tty = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cfg, "Tty"));
		struct logpos_mark m = {0, 0};
		if (!checkpoint_get(ls->ckpt, st->id, &m)) {
			/* An entry from the start: a later listing knows we followed it. */
			checkpoint_set(ls->ckpt, st->id, &m);
		}
		st->base = m;
		log_info("logship.follow", "container=%.12s group=%s stream=%s since_ns=%" PRId64
			 " skip=%" PRIu64 "%s", st->id, st->group, st->stream, m.since_ns, m.skip,
			 running ? "" : " (stopped: reading to its end)");
	}
	if (st->fs == F_IDLE || st->fs == F_EOF) {
		st->fs = F_IDLE;
		start_read(st);
	} else if (st->fs == F_FOLLOW || st->fs == F_PAUSED || st->fs == F_INSPECT) {
		st->start_again = true; /* the open read may be the last run's */
	}
	inspect_finish(r);
}

static void inspect_next(struct logship *ls)
{
	for (struct inspect_req *r = ls->inspects; r && ls->inspecting < INSPECT_MAX; r = r->next) {
		if (r->call)
			continue;
		r->call = docker_container_inspect(ls->docker, r->id, 0, on_inspect, r);
		if (!r->call) {
			inspect_finish(r); /* restarts the scan */
			return;
		}
		ls->inspecting++;
	}
}

static void queue_inspect(struct logship *ls, const char *id, bool catch_up)
{
	for (struct inspect_req *r = ls->inspects; r; r = r->next) {
		if (strcmp(r->id, id) == 0) {
			r->catch_up |= catch_up;
			return;
		}
	}
	struct inspect_req *r = calloc(1, sizeof *r);
	if (!r)
		return;
	r->ls = ls;
	r->catch_up = catch_up;
	snprintf(r->id, sizeof r->id, "%s", id);
	struct inspect_req **pp = &ls->inspects;
	while (*pp)
		pp = &(*pp)->next;
	*pp = r;
	inspect_next(ls);
}

struct prune_ctx {
	struct logship *ls;
	const cJSON *list;
	char (*gone)[CHECKPOINT_ID_MAX + 1];
	size_t ngone, cap;
};

static void prune_one(const char *id, const struct logpos_mark *m, void *arg)
{
	(void)m;
	struct prune_ctx *c = arg;
	const cJSON *it;
	cJSON_ArrayForEach(it, c->list) {
		const cJSON *cid = cJSON_GetObjectItemCaseSensitive(it, "Id");
		if (cJSON_IsString(cid) && strcmp(cid->valuestring, id) == 0)
			return;
	}
	if (c->ngone < c->cap)
		snprintf(c->gone[c->ngone++], CHECKPOINT_ID_MAX + 1, "%s", id);
}

static void relist(struct logship *ls);

static void on_list(const struct docker_result *res, void *arg)
{
	struct logship *ls = arg;
	ls->list_call = 0;
	if (res->error != DOCKER_OK) {
		log_warn("logship.list_failed", "error=\"%s\"", res->message);
	} else {
		const cJSON *it;
		cJSON_ArrayForEach(it, res->json) {
			const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "Id");
			const cJSON *state = cJSON_GetObjectItemCaseSensitive(it, "State");
			if (!cJSON_IsString(id))
				continue;
			bool running = cJSON_IsString(state) &&
				       (strcmp(state->valuestring, "running") == 0 ||
					strcmp(state->valuestring, "restarting") == 0 ||
					strcmp(state->valuestring, "paused") == 0);
			struct logpos_mark m;
			bool known = checkpoint_get(ls->ckpt, id->valuestring, &m);
			struct lstream *st = find_id(ls, id->valuestring);
			if (st && st->fs != F_EOF && st->fs != F_IDLE)
				continue;
			if (running || (known && !st))
				queue_inspect(ls, id->valuestring, !running);
		}
		if (!ls->listed_once) {
			/* Checkpoints of containers that are gone will never be needed. */
			ls->listed_once = true;
			struct prune_ctx c = {.ls = ls, .list = res->json,
					      .cap = checkpoint_count(ls->ckpt)};
			c.gone = c.cap ? calloc(c.cap, sizeof *c.gone) : NULL;
			if (c.gone) {
				checkpoint_each(ls->ckpt, prune_one, &c);
				for (size_t i = 0; i < c.ngone; i++)
					if (!find_id(ls, c.gone[i]))
						checkpoint_forget(ls->ckpt, c.gone[i]);
				free(c.gone);
			}
		}
	}
	if (ls->relist_again) {
		ls->relist_again = false;
		relist(ls);
	}
}

static void relist(struct logship *ls)
{
	if (ls->list_call) {
		ls->relist_again = true;
		return;
	}
	ls->list_call = docker_container_list(ls->docker, 1, ls->filters, 0, on_list, ls);
}

static void on_event(const cJSON *ev, int64_t time_ns, void *arg)
{
	(void)time_ns;
	struct logship *ls = arg;
	const cJSON *action = cJSON_GetObjectItemCaseSensitive(ev, "Action");
	const cJSON *actor = cJSON_GetObjectItemCaseSensitive(ev, "Actor");
	const cJSON *id = cJSON_GetObjectItemCaseSensitive(actor, "ID");
	if (!cJSON_IsString(action) || !cJSON_IsString(id))
		return;
	if (strcmp(action->valuestring, "start") == 0 || strcmp(action->valuestring, "restart") == 0) {
		/* It ran while we watch: read it even if it is already gone again
		 * (a crash loop, a one-shot task), to the end of its output. */
		queue_inspect(ls, id->valuestring, true);
	} else if (strcmp(action->valuestring, "destroy") == 0) {
		struct lstream *st = find_id(ls, id->valuestring);
		if (st) {
			st->removed = true;
			maybe_forget(st);
		} else {
			checkpoint_forget(ls->ckpt, id->valuestring);
		}
	}
}

static void on_events_state(enum docker_events_state state, const char *message, void *arg)
{
	struct logship *ls = arg;
	if (state == DOCKER_EVENTS_RECONNECTED) {
		log_info("logship.engine_back", "listing containers again");
		relist(ls);
	} else if (state == DOCKER_EVENTS_FAILED) {
		log_error("logship.events_failed", "error=\"%s\": only listings find new containers",
			  message ? message : "");
	}
}

/* ---- draining the spool ---- */

static void on_probe(struct ev_loop *loop, ev_timer *t, int revents)
{
	(void)loop;
	(void)revents;
	struct logship *ls = t->data;
	ls->probe_on = false;
	drain_kick(ls);
}

static int key_busy(uint64_t key, void *arg)
{
	struct logship *ls = arg;
	for (struct drain *d = ls->drains; d; d = d->next)
		if (d->key == key)
			return 1;
	struct lstream *st = find_key(ls, key);
	return st && st->inflight;
}

static void drain_free(struct drain *d)
{
	struct logship *ls = d->ls;
	for (struct drain **pp = &ls->drains; *pp; pp = &(*pp)->next) {
		if (*pp == d) {
			*pp = d->next;
			break;
		}
	}
	ls->ndrain--;
	if (d->send_id)
		logdest_cancel(ls->dest, d->send_id);
	if (d->b) {
		logbatch_free(d->b);
		free(d->b);
	}
	cJSON_Delete(d->header);
	free(d);
}

static void after_drain(struct logship *ls, uint64_t key)
{
	/* The stream's newer batches may now go directly. */
	struct lstream *st = find_key(ls, key);
	if (st && spool_key_count(ls->spool, key) == 0) {
		pump(st);
		maybe_forget(st);
	}
	resume_paused(ls);
	drain_kick(ls);
}

static void on_drain_sent(const struct logdest_result *res, void *arg)
{
	struct drain *d = arg;
	struct logship *ls = d->ls;
	d->send_id = 0;
	uint64_t key = d->key;
	ls->st.retries += (uint64_t)res->retries;
	ls->st.throttled += (uint64_t)res->throttled;
	switch (res->status) {
	case LOGDEST_OK:
		ls->st.events_shipped += d->b->n - (res->rejected < d->b->n ? res->rejected : d->b->n);
		ls->st.events_rejected += res->rejected;
		spool_remove(ls->spool, d->seq);
		destination_up(ls);
		break;
	case LOGDEST_REFUSED:
		ls->st.events_refused += d->b->n;
		log_error("logship.refused", "spooled batch events=%zu error=\"%s\": dropped", d->b->n,
			  res->message);
		spool_remove(ls->spool, d->seq);
		break;
	case LOGDEST_UNREACHABLE:
		spool_release(ls->spool, d->seq);
		enter_down(ls, res->message);
		ls->probe_failures++;
		int64_t delay = backoff_delay(&ls->probe, ls->probe_failures);
		if (!ls->probe_on) {
			ev_timer_set(&ls->probe_timer, (double)delay / 1000.0, 0.0);
			ev_timer_start(ls->loop, &ls->probe_timer);
			ls->probe_on = true;
		}
		log_debug("logship.probe_failed", "retry_ms=%" PRId64 " error=\"%s\"", delay,
			  res->message);
		break;
	}
	drain_free(d);
	after_drain(ls, key);
}

static const char *hstr(const cJSON *h, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(h, k);
	return cJSON_IsString(v) ? v->valuestring : "";
}

static void on_drain_read(int ok, uint64_t seq, struct logbatch *b, const char *header,
			  const char *error, void *arg)
{
	struct drain *d = arg;
	struct logship *ls = d->ls;
	d->b = b;
	if (ls->stopping) {
		drain_free(d); /* delivered while shutting down: the file stays for the next run */
		return;
	}
	if (ok)
		d->header = json_parse(header, strlen(header), SPOOL_HEADER_MAX, NULL);
	if (!ok || !d->header || !*hstr(d->header, "group") || !*hstr(d->header, "stream")) {
		uint64_t lost = b ? b->n : 0;
		log_error("logship.spool_unreadable", "seq=%" PRIu64 " error=\"%s\": removed", seq,
			  ok ? "bad header" : error);
		ls->st.spool_dropped += lost;
		spool_remove(ls->spool, seq);
		uint64_t key = d->key;
		drain_free(d);
		after_drain(ls, key);
		return;
	}
	drop_aged(ls, b);
	if (b->n == 0) {
		spool_remove(ls->spool, seq);
		uint64_t key = d->key;
		drain_free(d);
		after_drain(ls, key);
		return;
	}
	struct logdest_stream names = {
		.group = hstr(d->header, "group"), .stream = hstr(d->header, "stream"),
		.app = hstr(d->header, "app"), .service = hstr(d->header, "service"),
		.container = hstr(d->header, "container"), .release = hstr(d->header, "release"),
	};
	d->send_id = logdest_send(ls->dest, &names, b, on_drain_sent, d);
	if (!d->send_id) {
		struct logdest_result r = {.status = LOGDEST_UNREACHABLE, .message = "out of memory"};
		on_drain_sent(&r, d);
		return;
	}
	ls->st.batches_sent++;
}

static void drain_kick(struct logship *ls)
{
	if (!ls->spool || ls->stopping)
		return;
	/* While down, one probe at a time, paced by the probe timer. */
	size_t max = ls->down ? 1 : DRAIN_MAX;
	while (ls->ndrain < max && !(ls->down && ls->probe_on)) {
		const struct spool_entry *e = spool_next(ls->spool, key_busy, ls);
		if (!e)
			break;
		struct drain *d = calloc(1, sizeof *d);
		if (!d)
			break;
		d->ls = ls;
		d->seq = e->seq;
		d->key = e->key;
		if (spool_read(ls->spool, e->seq, on_drain_read, d) < 0) {
			free(d);
			break;
		}
		d->next = ls->drains;
		ls->drains = d;
		ls->ndrain++;
	}
	if (ls->down && !ls->probe_on && ls->ndrain == 0 && spool_count(ls->spool) == 0) {
		/* Nothing spooled to probe with (the spool failed): try directly again. */
		ls->down = false;
		for (struct lstream *st = ls->streams; st; st = st->next)
			pump(st);
	}
}

static void on_spool_dropped(uint64_t files, uint64_t events, void *arg)
{
	(void)files;
	struct logship *ls = arg;
	ls->st.spool_dropped += events;
}

static void on_durable(void *arg)
{
	struct logship *ls = arg;
	if (!ls->ckpt_waiters || ls->stopping)
		return;
	ls->ckpt_waiters = false;
	for (struct lstream *st = ls->streams; st; st = st->next)
		if (st->waitq && !st->inflight)
			pump(st);
}

/* ---- the shipper ---- */

struct logship *logship_new(const struct logship_opts *o, struct err *err)
{
	if (!o || !o->loop || !o->docker || !o->dest || !o->state_dir || !o->instance_id) {
		err_set(err, "logship: loop, docker, destination, state dir and instance id are "
			     "required");
		return NULL;
	}
	struct logship *ls = calloc(1, sizeof *ls);
	if (!ls) {
		err_set(err, "out of memory");
		return NULL;
	}
	ls->loop = o->loop;
	ls->docker = o->docker;
	ls->dest = o->dest;
	ls->lim = logdest_limits(o->dest);
	ls->discovery = !o->no_discovery;
	if (snprintf(ls->dir, sizeof ls->dir, "%s/%s", o->state_dir, LOGSHIP_DIR) >=
	    (int)sizeof ls->dir) {
		free(ls);
		err_set(err, "logship: state dir path too long");
		return NULL;
	}
	snprintf(ls->instance, sizeof ls->instance, "%s", o->instance_id);
	snprintf(ls->prefix, sizeof ls->prefix, "%s",
		 o->group_prefix ? o->group_prefix : LOGSHIP_DEFAULT_PREFIX);
	ls->flush_ms = o->flush_interval_ms > 0 ? o->flush_interval_ms : DEFAULT_FLUSH_MS;
	ls->memory_max = o->memory_max ? o->memory_max : DEFAULT_MEMORY_MAX;
	ls->spool_max = o->spool_max ? o->spool_max : (uint64_t)256 << 20;
	ls->max_age_ms = o->max_age_ms > 0 && o->max_age_ms < LOGBATCH_PAST_MS ? o->max_age_ms
									       : LOGBATCH_PAST_MS;
	ls->probe.base_ms = o->retry_base_ms > 0 ? o->retry_base_ms : 1000;
	ls->probe.cap_ms = o->retry_cap_ms > 0 ? o->retry_cap_ms : 30000;
	ev_timer_init(&ls->probe_timer, on_probe, 0.0, 0.0);
	ls->probe_timer.data = ls;
	size_t nf = 0;
	ls->filters[nf++] = "slipway.app";
	for (const char *const *l = o->labels; l && *l && nf <= AGENT_LABELS_MAX; l++) {
		if (!(ls->filter_store[nf - 1] = strdup(*l)))
			goto oom;
		ls->filters[nf] = ls->filter_store[nf - 1];
		nf++;
	}
	ls->filters[nf] = NULL;
	char path[PATH_MAX + 64];
	/* One thread: spool writes must land in the order they were queued. */
	if (!(ls->workers = worker_pool_new(ls->loop, 1, 4096, err)))
		goto fail;
	/* The spool makes <dir>/spool, and with it <dir> for the checkpoints. */
	snprintf(path, sizeof path, "%s/%s", ls->dir, SPOOL_DIR);
	struct spool_opts so = {.dir = path, .max_bytes = o->spool_max, .workers = ls->workers,
				.on_dropped = on_spool_dropped, .arg = ls};
	if (!(ls->spool = spool_open(&so, err)))
		goto fail;
	snprintf(path, sizeof path, "%s/%s", ls->dir, CHECKPOINT_FILE);
	if (!(ls->ckpt = checkpoint_open(path, ls->workers, on_durable, ls, err)))
		goto fail;
	return ls;
oom:
	err_set(err, "out of memory");
fail:
	logship_free(ls);
	return NULL;
}

void logship_start(struct logship *ls)
{
	if (ls->discovery) {
		struct docker_events_opts eo = {
			.type = "container",
			.labels = ls->filters,
			.on_event = on_event,
			.on_state = on_events_state,
			.arg = ls,
		};
		ls->events_sub = docker_events_subscribe(ls->docker, &eo);
		if (!ls->events_sub)
			log_error("logship.events_failed", "error=\"could not subscribe\"");
		relist(ls);
	}
	drain_kick(ls);
}

void logship_free(struct logship *ls)
{
	if (!ls)
		return;
	ls->stopping = true;
	if (ls->events_sub)
		docker_cancel(ls->docker, ls->events_sub);
	if (ls->list_call)
		docker_cancel(ls->docker, ls->list_call);
	while (ls->inspects) {
		struct inspect_req *r = ls->inspects;
		ls->inspects = r->next;
		if (r->call)
			docker_cancel(ls->docker, r->call);
		free(r);
	}
	for (struct drain *d = ls->drains; d; d = d->next) {
		if (d->send_id)
			logdest_cancel(ls->dest, d->send_id);
		d->send_id = 0;
	}
	ev_timer_stop(ls->loop, &ls->probe_timer);
	for (struct lstream *st = ls->streams; st; st = st->next) {
		if (st->call)
			docker_cancel(ls->docker, st->call);
		st->call = 0;
		if (st->send_id)
			logdest_cancel(ls->dest, st->send_id);
		st->send_id = 0;
	}
	/* Delivers the outstanding spool reads and writes and checkpoint writes
	 * (their callbacks still see every stream and drain), then stops the
	 * thread. */
	worker_pool_free(ls->workers);
	ls->workers = NULL;
	while (ls->drains)
		drain_free(ls->drains);
	while (ls->streams)
		stream_free(ls->streams);
	checkpoint_free(ls->ckpt);
	spool_free(ls->spool);
	for (size_t i = 0; i < AGENT_LABELS_MAX + 1; i++)
		free(ls->filter_store[i]);
	free(ls);
}

bool logship_drained(struct logship *ls, const char *container_id)
{
	if (!ls || !container_id)
		return true;
	struct lstream *st = find_id(ls, container_id);
	if (st)
		return stream_drained(st);
	struct logpos_mark m;
	if (!checkpoint_get(ls->ckpt, container_id, &m))
		return true; /* never followed: it ran before the shipper did */
	for (struct inspect_req *r = ls->inspects; r; r = r->next)
		if (strcmp(r->id, container_id) == 0)
			return false;
	queue_inspect(ls, container_id, true);
	return false;
}

void logship_follow(struct logship *ls, const char *container_id)
{
	if (!ls || !container_id)
		return;
	struct lstream *st = find_id(ls, container_id);
	if (st && st->fs != F_IDLE && st->fs != F_EOF)
		return;
	queue_inspect(ls, container_id, false);
}

int logship_emit(struct logship *ls, const char *group, const char *stream, int64_t ts_ms,
		 const char *msg, size_t len)
{
	if (!ls || !group || !stream || !msg)
		return -1;
	uint64_t key = key_of(group, stream);
	struct lstream *st = find_key(ls, key);
	if (!st) {
		if (!(st = stream_new(ls)))
			return -1;
		st->synthetic = true;
		st->fs = F_EOF;
		st->key = key;
		set_str(&st->group, group);
		set_str(&st->stream, stream);
		if (!st->group || !st->stream) {
			stream_free(st);
			return -1;
		}
		snprintf(st->app, sizeof st->app, "%s", "agent");
		snprintf(st->service, sizeof st->service, "%s", "metrics");
		snprintf(st->short_id, sizeof st->short_id, "%s", "agent");
	}
	if (!room(st, len)) {
		ls->st.events_refused++;
		return -1;
	}
	struct buf fixed;
	buf_init(&fixed, PEND_MAX);
	const char *t = msg;
	size_t n = len;
	if (!logbatch_utf8_clean(msg, len)) {
		struct logbatch_utf8 u8 = {0};
		if (logbatch_utf8_feed(&u8, msg, len, 1, &fixed) < 0) {
			buf_free(&fixed);
			return -1;
		}
		t = fixed.data ? fixed.data : "";
		n = fixed.len;
	}
	int rc = 0;
	if (n == 0 || n > LOGBATCH_EVENT_MAX) {
		rc = -1;
	} else {
		size_t json = ls->lim->max_json ? logbatch_json_len(t, n) : 0;
		if (!logbatch_fits(&st->cur, ls->lim, ts_ms, n, json))
			seal(st);
		if (logbatch_add(&st->cur, ts_ms, 1, t, n, json, clock_mono_ms()) < 0) {
			rc = -1;
		} else {
			ls->mem += n + LOGBATCH_EVENT_OVERHEAD;
			if (!st->flush_on) {
				ev_timer_set(&st->flush, (double)ls->flush_ms / 1000.0, 0.0);
				ev_timer_start(ls->loop, &st->flush);
				st->flush_on = true;
			}
		}
	}
	buf_free(&fixed);
	if (st->waitq && !st->inflight)
		pump(st);
	return rc;
}

void logship_stats(const struct logship *ls, struct logship_stats *out)
{
	*out = ls->st;
	out->spool_files = spool_count(ls->spool);
	out->spool_bytes = spool_bytes(ls->spool);
	out->memory_bytes = ls->mem;
	out->streams = ls->nstreams;
	out->destination_down = ls->down;
	out->following = 0;
	int64_t now = clock_mono_ms(), oldest = now;
	for (const struct lstream *st = ls->streams; st; st = st->next) {
		if (st->fs == F_FOLLOW || st->fs == F_PAUSED)
			out->following++;
		if (st->fs == F_PAUSED)
			out->paused++;
		if (st->cur.n && st->cur.first_mono_ms < oldest)
			oldest = st->cur.first_mono_ms;
		if (st->inflight && st->inflight->b.first_mono_ms < oldest)
			oldest = st->inflight->b.first_mono_ms;
		if (st->waitq && st->waitq->b.first_mono_ms < oldest)
			oldest = st->waitq->b.first_mono_ms;
	}
	out->queue_lag_ms = now - oldest;
}
