#include "swap.h"

#include <errno.h>
#include <ev.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>

#include "agent.h"
#include "buf.h"
#include "clock.h"
#include "docker.h"
#include "health.h"
#include "json.h"
#include "log.h"
#include "proxy_client.h"
#include "registryauth.h"
#include "worker.h"

#define REASON_MAX 1024
#define TAIL_MAX 4096
#define CONTAINERS_MAX 1024

const char *const swap_steps[] = {"pull", "create", "start", "health", "switch",
				  "drain", "stop", "retire", NULL};

enum phase {
	P_LIST, P_DISK, P_PULL, P_NETWORK, P_CREATE, P_START, P_ADDRESS, P_HEALTH, P_SWITCH,
	P_DRAIN, P_STOP, P_RETIRE_LIST, P_RETIRE, P_PRUNE, P_ABORT_LOGS, P_ABORT, P_DONE,
};

/* A container of the app, from the listing, or one this swap created. */
struct cont {
	char id[72];
	char name[128];
	char service[SPEC_NAME_MAX + 1];
	char release[SPEC_ID_MAX + 1];
	char job[SPEC_ID_MAX + 1];
	int64_t generation;
	char state[16];             /* created, running, exited, ... */
	char image_id[80];
	int port;
	int64_t created_s;
	bool in_new;                /* part of the new set */
	bool created;               /* created by this swap */
	bool restarted;             /* a kept container this swap started */
	char address[80];
	struct health_probe *probe;
	bool gone;                  /* removed */
	bool retried;               /* create: a name conflict was cleared once */
	struct swap *owner;         /* for health callbacks */
	int index;                  /* create: which of the service's containers */
	const struct spec_service *svc;
};

enum op_kind { OP_DOCKER, OP_PROXY, OP_WORKER, OP_PULL };

/* An async call in flight, so swap_free can cancel it. */
struct op {
	struct op *next;
	struct swap *s;
	enum op_kind kind;
	uint64_t id;
	struct cont *c;             /* the container it is about, if any */
	int index;                  /* route / image index */
	/* worker (statvfs) */
	char path[512];
	int64_t free_bytes;
	int err_no;
};

struct route {
	char service[SPEC_NAME_MAX + 1];
	const struct spec_service *svc; /* deploys */
	cJSON *json;                /* the route object (journal form) */
	cJSON *previous;            /* ids the proxy had before (array of strings) */
	bool switched;
};

struct swap {
	struct agent *a;
	enum swap_kind kind;
	char job[SPEC_ID_MAX + 1];
	char app[SPEC_NAME_MAX + 1];
	char release_id[SPEC_ID_MAX + 1];
	int64_t gen;
	const struct spec_release *spec;
	cJSON *serving;             /* the app's routes before the swap */
	cJSON *started;             /* RECOVER: the start step's detail */
	cJSON *routes_json;         /* the new routes (journal form) */
	bool switched;
	bool removing;              /* a remove job (or its recovery): nothing is kept */
	bool restart_mode;          /* rollback: kept containers restart */
	struct swap_hooks hooks;
	enum phase phase;
	const char *awaiting;       /* step announced, waiting for swap_proceed */
	void (*next)(struct swap *s);
	int pending;
	bool issuing;               /* a phase is starting its calls */
	void (*then)(struct swap *s); /* runs when the phase's calls are all done */
	struct op *ops;
	ev_timer kick;
	struct cont *c;             /* containers */
	size_t nc;
	struct route *routes;
	size_t nroutes;
	char **digests;             /* per service (deploy) */
	size_t ndigests;
	char (*new_ids)[72];        /* the new set, kept across re-listings */
	size_t n_new;
	char reason[REASON_MAX];
	char tail[TAIL_MAX];
	struct cont *failing;       /* whose output tail the ack carries */
	bool failed;
	bool finished;
	struct buf logbuf;
	struct swap *net_next;      /* waiting for another swap to create the network */
	bool net_waiting;
	bool net_creator;
};

static void fail(struct swap *s, struct cont *c, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* ---- ops ---- */

static struct op *op_new(struct swap *s, enum op_kind kind, struct cont *c)
{
	struct op *o = calloc(1, sizeof *o);
	if (!o)
		return NULL;
	o->s = s;
	o->kind = kind;
	o->c = c;
	o->next = s->ops;
	s->ops = o;
	s->pending++;
	return o;
}

/* Unlinks a finished op; returns its swap (NULL when the swap is gone). */
static struct swap *op_end(struct op *o)
{
	struct swap *s = o->s;
	if (!s)
		return NULL;
	for (struct op **p = &s->ops; *p; p = &(*p)->next) {
		if (*p == o) {
			*p = o->next;
			break;
		}
	}
	s->pending--;
	return s;
}

/* The op could not even start: counts as finished. */
static void op_abandon(struct op *o)
{
	op_end(o);
	free(o);
}

static void cancel_ops(struct swap *s)
{
	struct op *o = s->ops;
	s->ops = NULL;
	while (o) {
		struct op *next = o->next;
		switch (o->kind) {
		case OP_DOCKER:
			docker_cancel(s->a->docker, o->id);
			break;
		case OP_PROXY:
			proxy_client_cancel(s->a->proxy, o->id);
			break;
		case OP_PULL:
			registryauth_cancel(s->a->registryauth, o->id);
			break;
		case OP_WORKER:
			o->s = NULL; /* freed by its done callback */
			break;
		}
		if (o->kind != OP_WORKER)
			free(o);
		o = next;
	}
	s->pending = 0;
}

/* ---- steps and flow ---- */

static void on_kick(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	struct swap *s = w->data;
	void (*next)(struct swap *) = s->next;
	s->next = NULL;
	if (next)
		next(s);
}

/* Runs fn on the next loop turn (never inside a caller's callback chain). */
static void later(struct swap *s, void (*fn)(struct swap *))
{
	s->next = fn;
	ev_timer_set(&s->kick, 0.0, 0.0);
	ev_timer_start(s->a->loop, &s->kick);
}

/* Announces a step; fn runs once the deployer has journalled it. */
static void announce(struct swap *s, const char *step, cJSON *detail, void (*fn)(struct swap *))
{
	s->awaiting = step;
	s->next = fn;
	log_info("swap.step", "job=%s app=%s step=%s", s->job, s->app, step);
	s->hooks.step(s->hooks.arg, s, step, detail);
}

void swap_proceed(struct swap *s)
{
	if (!s->awaiting)
		return;
	s->awaiting = NULL;
	later(s, s->next);
}

static void finish(struct swap *s, enum swap_status st)
{
	if (s->finished)
		return;
	s->finished = true;
	s->phase = P_DONE;
	struct swap_outcome o = {
		.status = st,
		.reason = st == SWAP_OK ? "" : s->reason,
		.output_tail = st == SWAP_OK ? "" : s->tail,
		.routes = st == SWAP_OK ? s->routes_json : NULL,
	};
	log_msg(st == SWAP_FAILED ? LOG_LEVEL_WARN : LOG_LEVEL_INFO, "swap.end",
		"job=%s app=%s status=%s%s%s%s", s->job, s->app,
		st == SWAP_OK ? "ok" : st == SWAP_FAILED ? "failed" : "undone",
		st == SWAP_OK ? "" : " reason=\"", st == SWAP_OK ? "" : s->reason,
		st == SWAP_OK ? "" : "\"");
	struct swap_hooks h = s->hooks;
	/* The swap frees itself after its last hook: the deployer drops its handle. */
	h.done(h.arg, &o);
	swap_free(s);
}

static void fail(struct swap *s, struct cont *c, const char *fmt, ...)
{
	if (s->failed)
		return;
	s->failed = true;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(s->reason, sizeof s->reason, fmt, ap);
	va_end(ap);
	s->failing = c;
	log_warn("swap.failed", "job=%s app=%s phase=%d reason=\"%s\"", s->job, s->app, s->phase,
		 s->reason);
}

/* A phase's calls: begin_calls, start them, end_calls; `then` runs once all
 * have finished (also when they finish synchronously, or none started). */
static void settle(struct swap *s)
{
	if (s->issuing || s->pending > 0 || !s->then || s->finished)
		return;
	void (*fn)(struct swap *) = s->then;
	s->then = NULL;
	fn(s);
}

static void begin_calls(struct swap *s, void (*then)(struct swap *))
{
	s->then = then;
	s->issuing = true;
}

static void end_calls(struct swap *s)
{
	s->issuing = false;
	settle(s);
}

/* ---- small helpers ---- */

static const char *jstr(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsString(v) && v->valuestring ? v->valuestring : "";
}

static const char *label(const cJSON *labels, const char *k)
{
	return jstr(labels, k);
}

static struct cont *find_cont(struct swap *s, const char *id)
{
	size_t n = strlen(id);
	for (size_t i = 0; i < s->nc; i++) {
		if (n >= 12 && strncmp(s->c[i].id, id, n) == 0)
			return &s->c[i];
	}
	return NULL;
}

static struct cont *add_cont(struct swap *s)
{
	if (s->nc >= CONTAINERS_MAX)
		return NULL;
	struct cont *c = realloc(s->c, (s->nc + 1) * sizeof *c);
	if (!c)
		return NULL;
	/* Probes hold pointers into the array: only grow it while none runs. */
	s->c = c;
	memset(&s->c[s->nc], 0, sizeof s->c[s->nc]);
	return &s->c[s->nc++];
}

/* Label filters for listing the app's containers: slipway.app plus the extras. */
static void app_filters(struct swap *s, const char **out, size_t cap, char *app_label,
			size_t app_cap)
{
	size_t n = 0;
	snprintf(app_label, app_cap, "slipway.app=%s", s->app);
	out[n++] = app_label;
	for (size_t i = 0; s->a->set.labels[i] && n + 1 < cap; i++)
		out[n++] = s->a->set.labels[i];
	out[n] = NULL;
}

static void add_extra_labels(const struct agent *a, cJSON *labels)
{
	for (size_t i = 0; a->set.labels[i]; i++) {
		const char *kv = a->set.labels[i];
		const char *eq = strchr(kv, '=');
		if (!eq)
			continue;
		char key[256];
		snprintf(key, sizeof key, "%.*s", (int)(eq - kv), kv);
		cJSON_AddStringToObject(labels, key, eq + 1);
	}
}

/* Fills s->c from a /containers/json answer (keeps the containers of the app). */
static void load_listing(struct swap *s, const cJSON *list)
{
	free(s->c);
	s->c = NULL;
	s->nc = 0;
	const cJSON *it;
	cJSON_ArrayForEach(it, list) {
		const cJSON *labels = cJSON_GetObjectItemCaseSensitive(it, "Labels");
		if (strcmp(label(labels, "slipway.app"), s->app) != 0)
			continue;
		if (*label(labels, "slipway.run")) /* a one-off run (runjob.h): never routed or retired */
			continue;
		struct cont *c = add_cont(s);
		if (!c)
			break;
		snprintf(c->id, sizeof c->id, "%s", jstr(it, "Id"));
		const cJSON *names = cJSON_GetObjectItemCaseSensitive(it, "Names");
		if (cJSON_IsArray(names) && cJSON_IsString(names->child))
			snprintf(c->name, sizeof c->name, "%s", names->child->valuestring +
				 (names->child->valuestring[0] == '/'));
		snprintf(c->service, sizeof c->service, "%s", label(labels, "slipway.service"));
		snprintf(c->release, sizeof c->release, "%s", label(labels, "slipway.release"));
		snprintf(c->job, sizeof c->job, "%s", label(labels, "slipway.job"));
		c->generation = strtoll(label(labels, "slipway.generation"), NULL, 10);
		c->port = atoi(label(labels, "slipway.port"));
		snprintf(c->state, sizeof c->state, "%s", jstr(it, "State"));
		snprintf(c->image_id, sizeof c->image_id, "%s", jstr(it, "ImageID"));
		const cJSON *created = cJSON_GetObjectItemCaseSensitive(it, "Created");
		c->created_s = cJSON_IsNumber(created) ? (int64_t)created->valuedouble : 0;
	}
}

static bool is_running(const struct cont *c)
{
	return strcmp(c->state, "running") == 0 || strcmp(c->state, "restarting") == 0;
}

/* "ip:port" of a container on the agent's network, from an inspect answer. */
static int address_of(const struct agent *a, const cJSON *inspect, int port, char *out,
		      size_t cap)
{
	const cJSON *ns = cJSON_GetObjectItemCaseSensitive(inspect, "NetworkSettings");
	const cJSON *nets = cJSON_GetObjectItemCaseSensitive(ns, "Networks");
	const cJSON *net = cJSON_GetObjectItemCaseSensitive(nets, a->set.network);
	const char *ip = jstr(net, "IPAddress");
	if (!*ip || port <= 0)
		return -1;
	if (strchr(ip, ':'))
		snprintf(out, cap, "[%s]:%d", ip, port);
	else
		snprintf(out, cap, "%s:%d", ip, port);
	return 0;
}

/* ---- docker call plumbing ---- */

static struct op *docker_op(struct swap *s, struct cont *c)
{
	return op_new(s, OP_DOCKER, c);
}

/* Finishes a docker op in its callback: returns the swap and the container. */
static struct swap *docker_end(void *arg, struct cont **c, int *index)
{
	struct op *o = arg;
	struct swap *s = op_end(o);
	if (c)
		*c = o->c;
	if (index)
		*index = o->index;
	free(o);
	return s;
}

/* After starting a docker call: 0 means it could not start. */
static void docker_started(struct swap *s, struct op *o, uint64_t id, const char *what)
{
	if (id) {
		o->id = id;
		return;
	}
	op_abandon(o);
	fail(s, NULL, "%s: could not start the Docker request", what);
}

/* Which containers a phase works on, and the one call it makes for each. */
typedef bool (*cont_pick_fn)(const struct cont *c);
typedef uint64_t (*cont_call_fn)(struct swap *s, struct cont *c, struct op *o);

/* One docker call per picked container, in the phase being issued. With
 * `what`, a call that cannot start fails the swap; without, it is skipped. */
static void each_container(struct swap *s, cont_pick_fn pick, cont_call_fn call,
			   const char *what)
{
	for (size_t i = 0; i < s->nc; i++) {
		struct cont *c = &s->c[i];
		if (!pick(c))
			continue;
		struct op *o = docker_op(s, c);
		if (!o) {
			if (what)
				fail(s, NULL, "out of memory");
			break;
		}
		if (what)
			docker_started(s, o, call(s, c, o), what);
		else if (!(o->id = call(s, c, o)))
			op_abandon(o);
	}
}

/* ---- listing ---- */

static void on_listed(const struct docker_result *res, void *arg)
{
	struct swap *s = docker_end(arg, NULL, NULL);
	if (res->error != DOCKER_OK) {
		fail(s, NULL, "listing the app's containers: %s", res->message);
		settle(s);
		return;
	}
	load_listing(s, res->json);
	settle(s);
}

static void list_app(struct swap *s, void (*then)(struct swap *))
{
	const char *filters[AGENT_LABELS_MAX + 2];
	char app_label[64];
	app_filters(s, filters, AGENT_LABELS_MAX + 2, app_label, sizeof app_label);
	begin_calls(s, then);
	struct op *o = docker_op(s, NULL);
	if (o)
		docker_started(s, o, docker_container_list(s->a->docker, 1, filters, 0, on_listed, o),
			       "list");
	else
		fail(s, NULL, "out of memory");
	end_calls(s);
}

/* ---- abort: before the switch, undo what this swap did ---- */

static void abort_done(struct swap *s) { finish(s, SWAP_FAILED); }

static void on_abort_removed(const struct docker_result *res, void *arg)
{
	struct cont *c;
	struct swap *s = docker_end(arg, &c, NULL);
	if (res->error != DOCKER_OK && res->error != DOCKER_ERR_NOT_FOUND)
		log_error("swap.cleanup_failed", "container=%.12s error=\"%s\"", c->id, res->message);
	else
		c->gone = true;
	settle(s);
}

static void abort_cleanup(struct swap *s)
{
	s->phase = P_ABORT;
	begin_calls(s, abort_done);
	for (size_t i = 0; i < s->nc; i++) {
		struct cont *c = &s->c[i];
		health_free(c->probe);
		c->probe = NULL;
		if (!c->id[0] || c->gone)
			continue;
		struct op *o;
		if (c->created && (o = docker_op(s, c)))
			o->id = docker_container_remove(s->a->docker, c->id, 1, 1, 0,
							on_abort_removed, o);
		else if (c->restarted && (o = docker_op(s, c)))
			o->id = docker_container_stop(s->a->docker, c->id, -1, NULL, 0,
						      on_abort_removed, o);
		else
			continue;
		if (!o->id)
			op_abandon(o);
	}
	end_calls(s);
}

static int on_tail_line(const struct linesplit_line *line, void *arg)
{
	struct op *o = arg;
	struct swap *s = o->s;
	if (!s)
		return -1;
	/* Keep the newest lines that fit: drop from the front when over. */
	if (s->logbuf.len + line->len + 1 > TAIL_MAX) {
		size_t drop = s->logbuf.len + line->len + 1 - TAIL_MAX;
		buf_consume(&s->logbuf, drop);
	}
	size_t n = line->len < TAIL_MAX - 1 ? line->len : TAIL_MAX - 1;
	buf_append(&s->logbuf, line->text + line->len - n, n);
	buf_append_byte(&s->logbuf, '\n');
	return 0;
}

static void on_tail_done(const struct docker_result *res, void *arg)
{
	struct swap *s = docker_end(arg, NULL, NULL);
	(void)res;
	snprintf(s->tail, sizeof s->tail, "%s", s->logbuf.data ? s->logbuf.data : "");
	settle(s);
}

/* Ends a failed swap: the failing container's output tail, then clean up. */
static void abort_swap(struct swap *s)
{
	s->phase = P_ABORT_LOGS;
	for (size_t i = 0; i < s->nc; i++) {
		health_free(s->c[i].probe);
		s->c[i].probe = NULL;
	}
	begin_calls(s, abort_cleanup);
	if (s->failing && s->failing->id[0]) {
		struct op *o = docker_op(s, s->failing);
		if (o) {
			struct docker_logs_opts lo = {.tail = s->a->set.output_tail_lines};
			buf_init(&s->logbuf, TAIL_MAX);
			o->id = docker_container_logs(s->a->docker, s->failing->id, &lo, on_tail_line,
						      on_tail_done, o);
			if (!o->id)
				op_abandon(o);
		}
	}
	end_calls(s);
}

/* Continues with fn unless the phase failed (then the swap is undone). */
static bool check_failed(struct swap *s)
{
	if (!s->failed)
		return false;
	abort_swap(s);
	return true;
}

/* ---- deploy: plan ---- */

/* Rollback: every service has `count` stopped containers of this release. */
static void plan_restart(struct swap *s)
{
	const struct spec_release *r = s->spec;
	size_t picked = 0;
	for (size_t i = 0; i < r->service_count; i++) {
		const struct spec_service *svc = &r->services[i];
		int have = 0;
		for (size_t k = 0; k < s->nc; k++) {
			const struct cont *c = &s->c[k];
			if (!is_running(c) && strcmp(c->release, r->id) == 0 &&
			    strcmp(c->service, svc->name) == 0 && c->port == svc->port)
				have++;
		}
		if (have < svc->count)
			return;
		picked += (size_t)svc->count;
	}
	/* Take the newest `count` of each service. */
	for (size_t i = 0; i < r->service_count; i++) {
		const struct spec_service *svc = &r->services[i];
		for (int n = 0; n < svc->count; n++) {
			struct cont *best = NULL;
			for (size_t k = 0; k < s->nc; k++) {
				struct cont *c = &s->c[k];
				if (c->in_new || is_running(c) || strcmp(c->release, r->id) != 0 ||
				    strcmp(c->service, svc->name) != 0)
					continue;
				if (!best || c->generation > best->generation ||
				    (c->generation == best->generation && c->created_s > best->created_s))
					best = c;
			}
			best->in_new = true;
			best->restarted = true;
		}
	}
	s->restart_mode = true;
	log_info("swap.rollback_restart", "job=%s app=%s release=%s containers=%zu (kept, no pull)",
		 s->job, s->app, r->id, picked);
}

static void do_create(struct swap *s);
static void network_ensure(struct swap *s);

static cJSON *images_detail(struct swap *s)
{
	cJSON *d = cJSON_CreateObject();
	cJSON *imgs = cJSON_AddArrayToObject(d, "images");
	for (size_t i = 0; i < s->spec->service_count; i++) {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "service", s->spec->services[i].name);
		cJSON_AddStringToObject(o, "image", s->spec->services[i].image);
		if (s->digests && s->digests[i])
			cJSON_AddStringToObject(o, "digest", s->digests[i]);
		cJSON_AddItemToArray(imgs, o);
	}
	cJSON_AddBoolToObject(d, "restart", s->restart_mode);
	return d;
}

/* ---- deploy: disk and pull ---- */

static void statvfs_work(void *arg)
{
	struct op *o = arg;
	struct statvfs st;
	if (statvfs(o->path, &st) == 0) {
		o->free_bytes = (int64_t)st.f_bavail * (int64_t)st.f_frsize;
		o->err_no = 0;
	} else {
		o->err_no = errno;
	}
}

static void statvfs_done(void *arg)
{
	struct op *o = arg;
	struct swap *s = op_end(o);
	if (!s) {
		free(o);
		return;
	}
	int64_t need = s->a->set.min_free_disk;
	if (o->err_no) {
		log_warn("swap.disk_unknown", "path=%s error=\"%s\" (free-disk check skipped)",
			 o->path, strerror(o->err_no));
	} else if (o->free_bytes < need) {
		fail(s, NULL, "not enough disk for the images: %lld MiB free on %s, "
		     "deploy.min_free_disk is %lld MiB", (long long)(o->free_bytes >> 20), o->path,
		     (long long)(need >> 20));
	} else {
		log_debug("swap.disk", "path=%s free_mib=%lld", o->path,
			  (long long)(o->free_bytes >> 20));
	}
	free(o);
	settle(s);
}

static void on_info(const struct docker_result *res, void *arg)
{
	struct swap *s = docker_end(arg, NULL, NULL);
	if (res->error != DOCKER_OK) {
		log_warn("swap.disk_unknown", "error=\"%s\" (free-disk check skipped)",
			 res->message);
		settle(s);
		return;
	}
	const char *root = jstr(res->json, "DockerRootDir");
	struct op *o = *root ? op_new(s, OP_WORKER, NULL) : NULL;
	if (o) {
		snprintf(o->path, sizeof o->path, "%s", root);
		if (!s->a->workers || worker_submit(s->a->workers, statvfs_work, statvfs_done, o) < 0)
			op_abandon(o);
	}
	settle(s);
}

static void on_pulled(const struct docker_result *res, void *arg)
{
	int index;
	struct swap *s = docker_end(arg, NULL, &index);
	const struct spec_service *svc = &s->spec->services[index];
	if (res->error != DOCKER_OK) {
		fail(s, NULL, "service %s: pulling %s failed: %s", svc->name, svc->image,
		     res->message);
	} else {
		log_info("swap.pulled", "job=%s service=%s image=%s digest=%s", s->job, svc->name,
			 svc->image, res->digest ? res->digest : "-");
		for (size_t i = 0; i < s->spec->service_count; i++) {
			if (strcmp(s->spec->services[i].image, svc->image) == 0 && res->digest &&
			    !s->digests[i])
				s->digests[i] = strdup(res->digest);
		}
	}
	settle(s);
}

static void network_checked(struct swap *s)
{
	if (check_failed(s))
		return;
	announce(s, "create", images_detail(s), do_create);
}

/* One swap at a time creates the network: concurrent swaps of several apps
 * would each create one (Docker's duplicate check is not atomic) and leave
 * the name ambiguous. The others wait for it here. */
static void net_wake(struct agent *a, const char *error)
{
	a->net_creating = false;
	struct swap *w = a->net_waiters;
	a->net_waiters = NULL;
	while (w) {
		struct swap *next = w->net_next;
		w->net_next = NULL;
		w->net_waiting = false;
		if (error)
			fail(w, NULL, "%s", error);
		w->pending--;
		settle(w);
		w = next;
	}
}

static void network_created(const struct docker_result *res, void *arg)
{
	struct swap *s = docker_end(arg, NULL, NULL);
	s->net_creator = false;
	/* A conflict: another agent created it meanwhile, as good. */
	if (res->error != DOCKER_OK && res->error != DOCKER_ERR_CONFLICT) {
		char why[REASON_MAX];
		snprintf(why, sizeof why, "creating the docker network %s: %s", s->a->set.network,
			 res->message);
		fail(s, NULL, "%s", why);
		net_wake(s->a, why);
	} else {
		log_info("swap.network_created", "network=%s", s->a->set.network);
		net_wake(s->a, NULL);
	}
	settle(s);
}

static void on_network_removed(const struct docker_result *res, void *arg)
{
	struct swap *s = docker_end(arg, NULL, NULL);
	if (res->error != DOCKER_OK)
		log_warn("swap.network_dedupe_failed", "network=%s error=\"%s\"", s->a->set.network,
			 res->message);
	settle(s);
}

static void on_networks(const struct docker_result *res, void *arg)
{
	struct swap *s = docker_end(arg, NULL, NULL);
	struct agent *a = s->a;
	if (res->error != DOCKER_OK) {
		fail(s, NULL, "listing docker networks: %s", res->message);
		settle(s);
		return;
	}
	const cJSON *list = res->json;
	const cJSON *it, *oldest = NULL;
	size_t n = 0;
	cJSON_ArrayForEach(it, list) {
		if (strcmp(jstr(it, "Name"), a->set.network) != 0)
			continue; /* the name filter matches substrings */
		n++;
		if (!oldest || strcmp(jstr(it, "Created"), jstr(oldest, "Created")) < 0)
			oldest = it;
	}
	if (n > 1) {
		/* Left by an older agent: keep the oldest, remove the empty others. */
		cJSON_ArrayForEach(it, list) {
			if (strcmp(jstr(it, "Name"), a->set.network) != 0 || it == oldest)
				continue;
			log_warn("swap.network_duplicate", "network=%s id=%.12s (removing)",
				 a->set.network, jstr(it, "Id"));
			struct op *o = docker_op(s, NULL);
			if (o && !(o->id = docker_network_remove(a->docker, jstr(it, "Id"), 0,
								  on_network_removed, o)))
				op_abandon(o);
		}
	}
	if (n > 0) {
		settle(s);
		return;
	}
	if (a->net_creating) {
		s->net_waiting = true;
		s->net_next = a->net_waiters;
		a->net_waiters = s;
		s->pending++; /* until net_wake */
		settle(s);
		return;
	}
	cJSON *b = cJSON_CreateObject();
	cJSON_AddStringToObject(b, "Name", a->set.network);
	cJSON_AddStringToObject(b, "Driver", "bridge");
	cJSON_AddBoolToObject(b, "CheckDuplicate", 1);
	cJSON *labels = cJSON_AddObjectToObject(b, "Labels");
	cJSON_AddStringToObject(labels, "slipway.managed", "true");
	add_extra_labels(a, labels);
	a->net_creating = true;
	s->net_creator = true;
	struct op *o = docker_op(s, NULL);
	if (!o || !(o->id = docker_network_create(a->docker, b, 0, network_created, o))) {
		if (o)
			op_abandon(o);
		s->net_creator = false;
		net_wake(a, "out of memory");
		fail(s, NULL, "out of memory");
	}
	cJSON_Delete(b);
	settle(s);
}

static void network_ensure(struct swap *s)
{
	if (check_failed(s))
		return;
	s->phase = P_NETWORK;
	begin_calls(s, network_checked);
	struct op *o = docker_op(s, NULL);
	if (o)
		docker_started(s, o, docker_network_list(s->a->docker, s->a->set.network, NULL, 0,
							 on_networks, o),
			       "list networks");
	else
		fail(s, NULL, "out of memory");
	end_calls(s);
}

static void pull_images(struct swap *s)
{
	if (check_failed(s))
		return;
	s->phase = P_PULL;
	begin_calls(s, network_ensure);
	for (size_t i = 0; i < s->spec->service_count; i++) {
		const struct spec_service *svc = &s->spec->services[i];
		bool dup = false;
		for (size_t k = 0; k < i; k++)
			dup |= strcmp(s->spec->services[k].image, svc->image) == 0;
		if (dup || svc->count == 0)
			continue;
		struct registryauth *ra = s->a->registryauth;
		struct op *o = op_new(s, ra ? OP_PULL : OP_DOCKER, NULL);
		if (!o) {
			fail(s, NULL, "out of memory");
			break;
		}
		o->index = (int)i;
		log_info("swap.pull", "job=%s service=%s image=%s", s->job, svc->name, svc->image);
		/* registryauth: ECR images log in first, others are pulled as they are */
		uint64_t id = ra ? registryauth_pull(ra, svc->image, s->a->set.pull_timeout_ms, NULL,
						     on_pulled, o)
				 : docker_image_pull(s->a->docker, svc->image, NULL,
						     s->a->set.pull_timeout_ms, NULL, on_pulled, o);
		docker_started(s, o, id, "pull");
	}
	end_calls(s);
}

static void do_pull(struct swap *s)
{
	if (s->restart_mode) {
		network_ensure(s);
		return;
	}
	s->phase = P_DISK;
	begin_calls(s, pull_images);
	if (s->a->set.min_free_disk > 0) {
		struct op *o = docker_op(s, NULL);
		if (o)
			docker_started(s, o, docker_info(s->a->docker, 0, on_info, o), "info");
		else
			fail(s, NULL, "out of memory");
	}
	end_calls(s);
}

/* ---- deploy: create ---- */

static void remember_new(struct swap *s)
{
	size_t n = 0;
	for (size_t i = 0; i < s->nc; i++)
		n += s->c[i].in_new;
	free(s->new_ids);
	s->new_ids = n ? calloc(n, sizeof *s->new_ids) : NULL;
	s->n_new = 0;
	for (size_t i = 0; i < s->nc && s->new_ids; i++) {
		if (s->c[i].in_new && s->c[i].id[0])
			snprintf(s->new_ids[s->n_new++], sizeof s->new_ids[0], "%s", s->c[i].id);
	}
}

static void mark_new(struct swap *s)
{
	for (size_t i = 0; i < s->nc; i++) {
		for (size_t k = 0; k < s->n_new; k++) {
			if (strcmp(s->c[i].id, s->new_ids[k]) == 0)
				s->c[i].in_new = true;
		}
	}
}

static cJSON *started_detail(struct swap *s)
{
	cJSON *d = cJSON_CreateObject();
	cJSON *arr = cJSON_AddArrayToObject(d, "started");
	for (size_t i = 0; i < s->nc; i++) {
		const struct cont *c = &s->c[i];
		if (!c->in_new)
			continue;
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "id", c->id);
		cJSON_AddStringToObject(o, "service", c->service);
		cJSON_AddBoolToObject(o, "created", c->created);
		cJSON_AddItemToArray(arr, o);
	}
	return d;
}

static cJSON *create_body(struct swap *s, const struct cont *c, const char *image_ref)
{
	const struct spec_service *svc = c->svc;
	const struct agent *a = s->a;
	char num[32];
	cJSON *b = cJSON_CreateObject();
	cJSON_AddStringToObject(b, "Image", image_ref);
	if (svc->command) {
		cJSON *cmd = cJSON_AddArrayToObject(b, "Cmd");
		for (char **p = svc->command; *p; p++)
			cJSON_AddItemToArray(cmd, cJSON_CreateString(*p));
	}
	cJSON *env = cJSON_AddArrayToObject(b, "Env");
	for (char **p = svc->env; p && *p; p++)
		cJSON_AddItemToArray(env, cJSON_CreateString(*p));
	cJSON *labels = cJSON_AddObjectToObject(b, "Labels");
	cJSON_AddStringToObject(labels, "slipway.app", s->app);
	cJSON_AddStringToObject(labels, "slipway.release", s->spec->id);
	cJSON_AddStringToObject(labels, "slipway.service", svc->name);
	snprintf(num, sizeof num, "%lld", (long long)s->gen);
	cJSON_AddStringToObject(labels, "slipway.generation", num);
	cJSON_AddStringToObject(labels, "slipway.job", s->job);
	snprintf(num, sizeof num, "%d", svc->port);
	cJSON_AddStringToObject(labels, "slipway.port", num);
	if (svc->metadata_access) /* agent/imdsblock.h lets it reach the instance metadata */
		cJSON_AddStringToObject(labels, "slipway.metadata_access", "true");
	add_extra_labels(a, labels);
	cJSON_AddNumberToObject(b, "StopTimeout", (double)((svc->stop_grace_ms + 999) / 1000));
	cJSON *hc = cJSON_AddObjectToObject(b, "HostConfig");
	cJSON *rp = cJSON_AddObjectToObject(hc, "RestartPolicy");
	cJSON_AddStringToObject(rp, "Name", "unless-stopped");
	cJSON *lc = cJSON_AddObjectToObject(hc, "LogConfig");
	cJSON_AddStringToObject(lc, "Type", "json-file");
	cJSON *lcc = cJSON_AddObjectToObject(lc, "Config");
	snprintf(num, sizeof num, "%lld", (long long)a->set.log_max_size);
	cJSON_AddStringToObject(lcc, "max-size", num);
	snprintf(num, sizeof num, "%d", a->set.log_max_files);
	cJSON_AddStringToObject(lcc, "max-file", num);
	if (svc->memory_mb > 0)
		cJSON_AddNumberToObject(hc, "Memory", (double)(svc->memory_mb << 20));
	cJSON_AddStringToObject(hc, "NetworkMode", a->set.network);
	cJSON_AddItemToObject(hc, "PortBindings", cJSON_CreateObject());
	cJSON *nc = cJSON_AddObjectToObject(b, "NetworkingConfig");
	cJSON *ec = cJSON_AddObjectToObject(nc, "EndpointsConfig");
	cJSON_AddItemToObject(ec, a->set.network, cJSON_CreateObject());
	return b;
}

static void create_one(struct swap *s, struct cont *c);

static void on_conflict_removed(const struct docker_result *res, void *arg)
{
	struct cont *c;
	struct swap *s = docker_end(arg, &c, NULL);
	if (res->error != DOCKER_OK && res->error != DOCKER_ERR_NOT_FOUND)
		fail(s, NULL, "service %s: the name %s is taken and could not be freed: %s",
		     c->service, c->name, res->message);
	else if (!s->failed)
		create_one(s, c);
	settle(s);
}

static void on_created(const struct docker_result *res, void *arg)
{
	struct cont *c;
	struct swap *s = docker_end(arg, &c, NULL);
	if (res->error == DOCKER_ERR_CONFLICT && !c->retried) {
		/* A container of an earlier, interrupted attempt holds the name. */
		c->retried = true;
		log_warn("swap.name_taken", "name=%s (removing the old container)", c->name);
		struct op *o = docker_op(s, c);
		if (o)
			docker_started(s, o, docker_container_remove(s->a->docker, c->name, 1, 1, 0,
								     on_conflict_removed, o),
				       "remove");
		settle(s);
		return;
	}
	if (res->error != DOCKER_OK) {
		fail(s, NULL, "service %s: creating a container failed: %s", c->service,
		     res->message);
	} else {
		snprintf(c->id, sizeof c->id, "%s", res->id ? res->id : "");
		snprintf(c->state, sizeof c->state, "created");
		log_info("swap.created", "job=%s service=%s container=%.12s name=%s", s->job,
			 c->service, c->id, c->name);
	}
	settle(s);
}

static void create_one(struct swap *s, struct cont *c)
{
	size_t si = (size_t)(c->svc - s->spec->services);
	const char *image = c->svc->image;
	char ref[SPEC_IMAGE_MAX + 80];
	snprintf(ref, sizeof ref, "%s", image);
	if (s->digests && s->digests[si] && !spec_image_has_digest(image)) {
		struct buf repo, tag;
		buf_init(&repo, SPEC_IMAGE_MAX + 1);
		buf_init(&tag, SPEC_IMAGE_MAX + 1);
		if (docker_split_ref(image, &repo, &tag) == 0)
			snprintf(ref, sizeof ref, "%s@%s", repo.data, s->digests[si]);
		buf_free(&repo);
		buf_free(&tag);
	}
	cJSON *body = create_body(s, c, ref);
	struct op *o = body ? docker_op(s, c) : NULL;
	if (!o) {
		cJSON_Delete(body);
		fail(s, NULL, "out of memory");
		return;
	}
	docker_started(s, o, docker_container_create(s->a->docker, c->name, body, 0, on_created, o),
		       "create");
	cJSON_Delete(body);
}

static void do_start(struct swap *s);

static void created_all(struct swap *s)
{
	if (check_failed(s))
		return;
	remember_new(s);
	announce(s, "start", started_detail(s), do_start);
}

static void do_create(struct swap *s)
{
	s->phase = P_CREATE;
	if (!s->restart_mode) {
		/* All entries first: the array must not move once calls point into it. */
		const struct spec_release *r = s->spec;
		for (size_t i = 0; i < r->service_count; i++) {
			for (int n = 0; n < r->services[i].count; n++) {
				struct cont *c = add_cont(s);
				if (!c) {
					fail(s, NULL, "too many containers");
					abort_swap(s);
					return;
				}
				c->svc = &r->services[i];
				c->index = n;
				c->in_new = true;
				c->created = true;
				c->port = r->services[i].port;
				c->generation = s->gen;
				snprintf(c->service, sizeof c->service, "%s", r->services[i].name);
				snprintf(c->release, sizeof c->release, "%s", r->id);
				snprintf(c->job, sizeof c->job, "%s", s->job);
				snprintf(c->name, sizeof c->name, "%s-%s-%s-g%lld-%d",
					 s->a->set.name_prefix, s->app, c->service, (long long)s->gen,
					 n + 1);
			}
		}
	}
	begin_calls(s, created_all);
	for (size_t i = 0; i < s->nc && !s->failed; i++) {
		if (s->c[i].created)
			create_one(s, &s->c[i]);
	}
	end_calls(s);
}

/* ---- deploy: start, address, health ---- */

static void do_health(struct swap *s);

static void on_address(const struct docker_result *res, void *arg)
{
	struct cont *c;
	struct swap *s = docker_end(arg, &c, NULL);
	if (res->error != DOCKER_OK) {
		fail(s, c, "service %s: inspecting container %.12s failed: %s", c->service, c->id,
		     res->message);
	} else if (c->port > 0 &&
		   address_of(s->a, res->json, c->port, c->address, sizeof c->address) < 0) {
		fail(s, c, "service %s: container %.12s has no address on network %s", c->service,
		     c->id, s->a->set.network);
	}
	settle(s);
}

static void addressed_all(struct swap *s)
{
	if (check_failed(s))
		return;
	announce(s, "health", NULL, do_health);
}

static bool new_created(const struct cont *c) { return c->in_new && c->id[0]; }
static bool new_with_port(const struct cont *c) { return c->in_new && c->port > 0; }
static bool old_running(const struct cont *c) { return !c->in_new && !c->gone && is_running(c); }

static uint64_t inspect_address(struct swap *s, struct cont *c, struct op *o)
{
	return docker_container_inspect(s->a->docker, c->id, 0, on_address, o);
}

static void find_addresses(struct swap *s)
{
	if (check_failed(s))
		return;
	s->phase = P_ADDRESS;
	begin_calls(s, addressed_all);
	each_container(s, new_created, inspect_address, "inspect");
	end_calls(s);
}

static void on_started(const struct docker_result *res, void *arg)
{
	struct cont *c;
	struct swap *s = docker_end(arg, &c, NULL);
	if (res->error != DOCKER_OK)
		fail(s, c, "service %s: starting container %.12s failed: %s", c->service, c->id,
		     res->message);
	else
		snprintf(c->state, sizeof c->state, "running");
	settle(s);
}

static uint64_t start_one(struct swap *s, struct cont *c, struct op *o)
{
	return docker_container_start(s->a->docker, c->id, 0, on_started, o);
}

static void start_new(struct swap *s, void (*then)(struct swap *))
{
	s->phase = P_START;
	begin_calls(s, then);
	each_container(s, new_created, start_one, "start");
	end_calls(s);
}

static void do_start(struct swap *s) { start_new(s, find_addresses); }

static void do_switch(struct swap *s);
static cJSON *build_routes(struct swap *s);

static void healthy_all(struct swap *s)
{
	if (check_failed(s))
		return;
	cJSON *d = cJSON_CreateObject();
	cJSON_AddItemToObject(d, "routes", cJSON_Duplicate(s->routes_json, 1));
	announce(s, "switch", d, do_switch);
}

static void on_health(bool ok, const char *detail, void *arg)
{
	struct cont *c = arg;
	struct swap *s = c->owner;
	health_free(c->probe);
	c->probe = NULL;
	s->pending--;
	if (!ok && !s->failed) {
		fail(s, c, "service %s: container %.12s never became healthy (%s)", c->service,
		     c->id, detail);
		/* The others need not finish: the release is refused already. */
		for (size_t i = 0; i < s->nc; i++) {
			if (s->c[i].probe) {
				health_free(s->c[i].probe);
				s->c[i].probe = NULL;
				s->pending--;
			}
		}
	}
	settle(s);
}

static void do_health(struct swap *s)
{
	s->phase = P_HEALTH;
	begin_calls(s, healthy_all);
	for (size_t i = 0; i < s->nc; i++) {
		struct cont *c = &s->c[i];
		if (!c->in_new)
			continue;
		const struct spec_service *svc = NULL;
		for (size_t k = 0; k < s->spec->service_count; k++) {
			if (strcmp(s->spec->services[k].name, c->service) == 0)
				svc = &s->spec->services[k];
		}
		if (!svc)
			continue;
		struct health_target t = {.spec = &svc->health, .container_id = c->id,
					  .address = c->address};
		c->owner = s;
		c->probe = health_start(s->a->loop, s->a->http, s->a->docker, &t, on_health, c);
		if (!c->probe) {
			fail(s, c, "out of memory");
			break;
		}
		s->pending++;
	}
	if (!s->failed && !(s->routes_json = build_routes(s)))
		fail(s, NULL, "out of memory");
	end_calls(s);
}

/* ---- switch ---- */

static void short_id(char out[13], const char *id)
{
	size_t n = strnlen(id, 12);
	memcpy(out, id, n);
	out[n] = '\0';
}

/* The new routes (journal form) for the proxied services of the release. */
static cJSON *build_routes(struct swap *s)
{
	cJSON *arr = cJSON_CreateArray();
	const struct spec_release *r = s->spec;
	for (size_t i = 0; arr && i < r->service_count; i++) {
		const struct spec_service *svc = &r->services[i];
		if (!svc->has_proxy)
			continue;
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "service", svc->name);
		cJSON_AddStringToObject(o, "release", r->id);
		cJSON_AddNumberToObject(o, "generation", (double)s->gen);
		cJSON_AddNumberToObject(o, "listen", svc->proxy.listen);
		cJSON_AddStringToObject(o, "protocol",
					svc->proxy.protocol == SPEC_PROTO_TCP ? "tcp" : "http");
		cJSON *hosts = cJSON_AddArrayToObject(o, "hosts");
		for (size_t h = 0; h < svc->proxy.host_count; h++)
			cJSON_AddItemToArray(hosts, cJSON_CreateString(svc->proxy.hosts[h]));
		cJSON_AddNumberToObject(o, "port", svc->port);
		cJSON *backends = cJSON_AddArrayToObject(o, "backends");
		for (size_t k = 0; k < s->nc; k++) {
			const struct cont *c = &s->c[k];
			if (c->in_new && strcmp(c->service, svc->name) == 0) {
				char sid[13];
				short_id(sid, c->id);
				cJSON_AddItemToArray(backends, cJSON_CreateString(sid));
			}
		}
		cJSON_AddItemToArray(arr, o);
	}
	return arr;
}

/* A proxy route from its journal form; addresses come from resolve(id). */
struct route_build {
	struct proxy_route_spec spec;
	const char *hosts[SPEC_HOSTS_MAX];
	struct proxy_backend_spec backends[PROXY_BACKENDS_MAX];
	char ids[PROXY_BACKENDS_MAX][13];
};

static int route_from_json(const char *app, const cJSON *r, struct route_build *b,
			   const char *(*resolve)(void *ctx, const char *id), void *ctx)
{
	memset(b, 0, sizeof *b);
	b->spec.app = app;
	b->spec.service = jstr(r, "service");
	b->spec.release = jstr(r, "release");
	const cJSON *g = cJSON_GetObjectItemCaseSensitive(r, "generation");
	b->spec.generation = cJSON_IsNumber(g) ? (int64_t)g->valuedouble : 0;
	const cJSON *l = cJSON_GetObjectItemCaseSensitive(r, "listen");
	if (!cJSON_IsNumber(l) || !*b->spec.service)
		return -1;
	b->spec.listen = l->valueint;
	b->spec.protocol = strcmp(jstr(r, "protocol"), "tcp") == 0 ? PROXY_TCP : PROXY_HTTP;
	const cJSON *it;
	cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(r, "hosts")) {
		if (cJSON_IsString(it) && b->spec.host_count < SPEC_HOSTS_MAX)
			b->hosts[b->spec.host_count++] = it->valuestring;
	}
	b->spec.hosts = b->hosts;
	cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(r, "backends")) {
		if (!cJSON_IsString(it) || b->spec.backend_count >= PROXY_BACKENDS_MAX)
			continue;
		const char *addr = resolve(ctx, it->valuestring);
		if (!addr || !*addr)
			continue;
		size_t n = b->spec.backend_count++;
		short_id(b->ids[n], it->valuestring);
		b->backends[n].id = b->ids[n];
		b->backends[n].address = addr;
	}
	b->spec.backends = b->backends;
	return 0;
}

static const char *resolve_new(void *ctx, const char *id)
{
	struct cont *c = find_cont(ctx, id);
	return c ? c->address : NULL;
}

static struct route *route_for(struct swap *s, const char *service)
{
	for (size_t i = 0; i < s->nroutes; i++) {
		if (strcmp(s->routes[i].service, service) == 0)
			return &s->routes[i];
	}
	return NULL;
}

static const cJSON *serving_route(const struct swap *s, const char *service)
{
	const cJSON *it;
	cJSON_ArrayForEach(it, s->serving) {
		if (strcmp(jstr(it, "service"), service) == 0)
			return it;
	}
	return NULL;
}

static void on_route_set(const struct proxy_result *res, const struct proxy_backend_state *prev,
			 size_t count, void *arg)
{
	struct op *o = arg;
	int index = o->index;
	struct swap *s = op_end(o);
	free(o);
	struct route *rt = &s->routes[index];
	if (res->error) {
		fail(s, NULL, "service %s: the proxy refused the route: %s", rt->service,
		     res->error);
		settle(s);
		return;
	}
	rt->switched = true;
	cJSON_Delete(rt->previous);
	rt->previous = cJSON_CreateArray();
	for (size_t i = 0; i < count; i++) {
		cJSON *b = cJSON_CreateObject();
		cJSON_AddStringToObject(b, "id", prev[i].id);
		cJSON_AddStringToObject(b, "address", prev[i].address);
		cJSON_AddItemToArray(rt->previous, b);
	}
	log_info("swap.switched", "job=%s app=%s service=%s previous=%zu at_ms=%lld", s->job,
		 s->app, rt->service, count, (long long)clock_wall_ms());
	settle(s);
}

static void on_route_removed(const struct proxy_result *res, void *arg)
{
	struct op *o = arg;
	struct swap *s = op_end(o);
	free(o);
	if (res->error)
		log_error("swap.route_remove_failed", "job=%s app=%s error=\"%s\"", s->job, s->app,
			  res->error);
	settle(s);
}

static void put_routes(struct swap *s, void (*then)(struct swap *))
{
	s->phase = P_SWITCH;
	size_t n = (size_t)cJSON_GetArraySize(s->routes_json);
	free(s->routes);
	s->routes = calloc(n ? n : 1, sizeof *s->routes);
	s->nroutes = 0;
	begin_calls(s, then);
	if (!s->routes) {
		fail(s, NULL, "out of memory");
		end_calls(s);
		return;
	}
	const cJSON *it;
	cJSON_ArrayForEach(it, s->routes_json) {
		struct route *rt = &s->routes[s->nroutes];
		struct route_build b;
		if (route_from_json(s->app, it, &b, resolve_new, s) < 0)
			continue;
		snprintf(rt->service, sizeof rt->service, "%s", b.spec.service);
		rt->json = (cJSON *)it;
		struct op *o = op_new(s, OP_PROXY, NULL);
		if (!o) {
			fail(s, NULL, "out of memory");
			break;
		}
		o->index = (int)s->nroutes++;
		o->id = proxy_client_set_route(s->a->proxy, &b.spec, on_route_set, o);
		if (!o->id) {
			op_abandon(o);
			fail(s, NULL, "service %s: the route could not be sent to the proxy",
			     rt->service);
		}
	}
	/* Services that no longer take traffic lose their route. */
	cJSON_ArrayForEach(it, s->serving) {
		const char *svc = jstr(it, "service");
		if (route_for(s, svc))
			continue;
		struct op *o = op_new(s, OP_PROXY, NULL);
		if (!o)
			break;
		o->id = proxy_client_remove_route(s->a->proxy, s->app, svc, on_route_removed, o);
		if (!o->id)
			op_abandon(o);
	}
	end_calls(s);
}

static void do_drain(struct swap *s);

static void reverted(struct swap *s) { abort_swap(s); }

static const char *resolve_previous(void *ctx, const char *id)
{
	const cJSON *prev = ctx, *it;
	cJSON_ArrayForEach(it, prev) {
		if (strcmp(jstr(it, "id"), id) == 0)
			return jstr(it, "address");
	}
	return NULL;
}

/* The switch failed part-way: routes already switched go back. */
static void revert_routes(struct swap *s)
{
	begin_calls(s, reverted);
	for (size_t i = 0; i < s->nroutes; i++) {
		struct route *rt = &s->routes[i];
		if (!rt->switched)
			continue;
		const cJSON *old = serving_route(s, rt->service);
		struct op *o = op_new(s, OP_PROXY, NULL);
		if (!o)
			break;
		struct route_build b;
		if (old && route_from_json(s->app, old, &b, resolve_previous, rt->previous) == 0) {
			o->id = proxy_client_set_route(s->a->proxy, &b.spec, on_route_set, o);
			o->index = (int)i;
		} else {
			o->id = proxy_client_remove_route(s->a->proxy, s->app, rt->service,
							  on_route_removed, o);
		}
		if (!o->id)
			op_abandon(o);
		log_warn("swap.revert_route", "job=%s app=%s service=%s", s->job, s->app,
			 rt->service);
	}
	end_calls(s);
}

static void switched_all(struct swap *s)
{
	if (s->failed) {
		revert_routes(s);
		return;
	}
	s->switched = true;
	announce(s, "drain", NULL, do_drain);
}

static void do_switch(struct swap *s) { put_routes(s, switched_all); }

/* ---- drain, stop ---- */

static void do_stop(struct swap *s);

static void drained_all(struct swap *s) { announce(s, "stop", NULL, do_stop); }

static void on_drained(const struct proxy_result *res, bool drained, int64_t remaining,
		       int64_t waited_ms, void *arg)
{
	struct op *o = arg;
	int index = o->index;
	struct swap *s = op_end(o);
	free(o);
	const char *svc = index >= 0 && (size_t)index < s->nroutes ? s->routes[index].service : "?";
	if (res->error)
		log_warn("swap.drain_failed", "job=%s service=%s error=\"%s\"", s->job, svc,
			 res->error);
	else
		log_msg(drained ? LOG_LEVEL_INFO : LOG_LEVEL_WARN, "swap.drained",
			"job=%s service=%s drained=%s remaining=%lld waited_ms=%lld", s->job, svc,
			drained ? "yes" : "no", (long long)remaining, (long long)waited_ms);
	settle(s);
}

static bool is_new_id(const struct swap *s, const char *id)
{
	size_t n = strlen(id);
	for (size_t k = 0; k < s->n_new; k++) {
		if (n && strncmp(s->new_ids[k], id, n) == 0)
			return true;
	}
	return false;
}

static void add_id(const char **ids, size_t *n, char (*store)[13], const char *id)
{
	char sid[13];
	short_id(sid, id);
	for (size_t i = 0; i < *n; i++) {
		if (strcmp(ids[i], sid) == 0)
			return;
	}
	if (*n >= PROXY_BACKENDS_MAX * 2)
		return;
	snprintf(store[*n], 13, "%s", sid);
	ids[*n] = store[*n];
	(*n)++;
}

static void do_drain(struct swap *s)
{
	s->phase = P_DRAIN;
	begin_calls(s, drained_all);
	for (size_t i = 0; i < s->nroutes; i++) {
		struct route *rt = &s->routes[i];
		const char *ids[PROXY_BACKENDS_MAX * 2];
		char store[PROXY_BACKENDS_MAX * 2][13];
		size_t n = 0;
		const cJSON *it;
		cJSON_ArrayForEach(it, rt->previous) {
			if (!is_new_id(s, jstr(it, "id")))
				add_id(ids, &n, store, jstr(it, "id"));
		}
		cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(
					       serving_route(s, rt->service), "backends")) {
			if (cJSON_IsString(it) && !is_new_id(s, it->valuestring))
				add_id(ids, &n, store, it->valuestring);
		}
		if (n == 0)
			continue;
		struct op *o = op_new(s, OP_PROXY, NULL);
		if (!o)
			break;
		o->index = (int)i;
		o->id = proxy_client_drain(s->a->proxy, s->app, rt->service, ids, n,
					   s->a->set.drain_timeout_ms, on_drained, o);
		if (!o->id)
			op_abandon(o);
	}
	end_calls(s);
}

static void do_retire(struct swap *s);

static void stopped_all(struct swap *s) { announce(s, "retire", NULL, do_retire); }

static void on_stopped(const struct docker_result *res, void *arg)
{
	struct cont *c;
	struct swap *s = docker_end(arg, &c, NULL);
	if (res->error != DOCKER_OK && res->error != DOCKER_ERR_NOT_FOUND)
		log_error("swap.stop_failed", "job=%s container=%.12s error=\"%s\"", s->job, c->id,
			  res->message);
	else
		log_info("swap.stopped", "job=%s service=%s container=%.12s release=%s", s->job,
			 c->service, c->id, c->release);
	settle(s);
}

static uint64_t stop_one(struct swap *s, struct cont *c, struct op *o)
{
	/* -1: the container's StopTimeout (its release's stop grace). */
	return docker_container_stop(s->a->docker, c->id, -1, NULL, 0, on_stopped, o);
}

static void do_stop(struct swap *s)
{
	s->phase = P_STOP;
	begin_calls(s, stopped_all);
	each_container(s, old_running, stop_one, NULL);
	end_calls(s);
}

/* ---- retire and prune ---- */

static void done_ok(struct swap *s) { finish(s, SWAP_OK); }

static void on_image_removed(const struct docker_result *res, void *arg)
{
	int index;
	struct swap *s = docker_end(arg, NULL, &index);
	if (res->error == DOCKER_OK)
		log_info("swap.image_pruned", "job=%s", s->job);
	else if (res->error != DOCKER_ERR_CONFLICT && res->error != DOCKER_ERR_NOT_FOUND)
		log_warn("swap.prune_failed", "job=%s error=\"%s\"", s->job, res->message);
	settle(s);
}

/* Images of the containers just removed that no container on the engine uses. */
static void on_all_listed(const struct docker_result *res, void *arg)
{
	struct swap *s = docker_end(arg, NULL, NULL);
	if (res->error != DOCKER_OK) {
		log_warn("swap.prune_skipped", "job=%s error=\"%s\"", s->job, res->message);
		settle(s);
		return;
	}
	for (size_t i = 0; i < s->nc; i++) {
		const struct cont *c = &s->c[i];
		if (!c->gone || !c->image_id[0])
			continue;
		bool used = false, dup = false;
		const cJSON *it;
		cJSON_ArrayForEach(it, res->json) {
			if (strcmp(jstr(it, "ImageID"), c->image_id) == 0)
				used = true;
		}
		for (size_t k = 0; k < i; k++)
			dup |= s->c[k].gone && strcmp(s->c[k].image_id, c->image_id) == 0;
		if (used || dup)
			continue;
		struct op *o = docker_op(s, NULL);
		if (!o)
			break;
		log_info("swap.prune", "job=%s image=%.19s", s->job, c->image_id);
		o->id = docker_image_remove(s->a->docker, c->image_id, 1, 0, 0, on_image_removed, o);
		if (!o->id)
			op_abandon(o);
	}
	settle(s);
}

static void prune(struct swap *s)
{
	bool any = false;
	for (size_t i = 0; i < s->nc; i++)
		any |= s->c[i].gone && s->c[i].image_id[0];
	s->phase = P_PRUNE;
	begin_calls(s, done_ok);
	if (any) {
		struct op *o = docker_op(s, NULL);
		if (o) {
			o->id = docker_container_list(s->a->docker, 1, NULL, 0, on_all_listed, o);
			if (!o->id)
				op_abandon(o);
		}
	}
	end_calls(s);
}

static void on_retired(const struct docker_result *res, void *arg)
{
	struct cont *c;
	struct swap *s = docker_end(arg, &c, NULL);
	if (res->error != DOCKER_OK && res->error != DOCKER_ERR_NOT_FOUND) {
		log_warn("swap.remove_failed", "job=%s container=%.12s error=\"%s\"", s->job, c->id,
			 res->message);
	} else {
		c->gone = true;
		log_info("swap.removed", "job=%s container=%.12s release=%s", s->job, c->id,
			 c->release);
	}
	settle(s);
}

/* Which releases stay: the newest keep_releases by generation, serving excluded. */
static void retire_listed(struct swap *s)
{
	mark_new(s);
	s->phase = P_RETIRE;
	int keep = s->removing ? 0 : s->a->set.keep_releases;
	const char *serving = s->removing ? "" : s->release_id;
	/* Pick kept releases greedily by their highest generation. */
	char kept[32][SPEC_ID_MAX + 1];
	int nkept = 0;
	while (nkept < keep && nkept < 32) {
		const struct cont *best = NULL;
		for (size_t i = 0; i < s->nc; i++) {
			const struct cont *c = &s->c[i];
			if (c->in_new || is_running(c) || strcmp(c->release, serving) == 0)
				continue;
			bool taken = false;
			for (int k = 0; k < nkept; k++)
				taken |= strcmp(kept[k], c->release) == 0;
			if (!taken && (!best || c->generation > best->generation))
				best = c;
		}
		if (!best)
			break;
		snprintf(kept[nkept++], sizeof kept[0], "%s", best->release);
	}
	begin_calls(s, prune);
	for (size_t i = 0; i < s->nc; i++) {
		struct cont *c = &s->c[i];
		if (c->in_new || is_running(c))
			continue;
		bool is_kept = false;
		for (int k = 0; k < nkept; k++)
			is_kept |= strcmp(kept[k], c->release) == 0;
		if (is_kept)
			continue;
		if (!agent_logs_drained(s->a, c->id)) {
			log_info("swap.remove_deferred", "job=%s container=%.12s (logs not read to "
				 "the end yet; removed by a later swap)", s->job, c->id);
			continue;
		}
		struct op *o = docker_op(s, c);
		if (!o)
			break;
		o->id = docker_container_remove(s->a->docker, c->id, 0, 1, 0, on_retired, o);
		if (!o->id)
			op_abandon(o);
	}
	end_calls(s);
}

static void do_retire(struct swap *s)
{
	s->phase = P_RETIRE_LIST;
	list_app(s, retire_listed);
}

/* ---- the three kinds ---- */

static void deploy_listed(struct swap *s)
{
	if (s->failed) {
		finish(s, SWAP_FAILED);
		return;
	}
	s->digests = calloc(s->spec->service_count, sizeof *s->digests);
	s->ndigests = s->digests ? s->spec->service_count : 0;
	if (!s->digests) {
		fail(s, NULL, "out of memory");
		finish(s, SWAP_FAILED);
		return;
	}
	plan_restart(s);
	announce(s, "pull", NULL, do_pull);
}

static void remove_switch(struct swap *s) { put_routes(s, drained_all); }

static void remove_listed(struct swap *s)
{
	if (s->failed) {
		finish(s, SWAP_FAILED);
		return;
	}
	s->switched = true;
	cJSON *d = cJSON_CreateObject();
	cJSON_AddItemToObject(d, "routes", cJSON_CreateArray());
	announce(s, "switch", d, remove_switch);
}

/* Recovery, switch journalled: bring the new set up and finish the swap. */
static void recover_switched(struct swap *s)
{
	s->switched = true;
	if (s->failed)
		log_warn("swap.recover_route_failed", "job=%s app=%s reason=\"%s\" (continuing)",
			 s->job, s->app, s->reason);
	s->failed = false;
	announce(s, "drain", NULL, do_drain);
}

static void recover_addressed(struct swap *s)
{
	/* Containers that did not come up are left out of the routes. */
	s->failed = false;
	put_routes(s, recover_switched);
}

static void recover_find_addresses(struct swap *s)
{
	s->failed = false;
	s->phase = P_ADDRESS;
	begin_calls(s, recover_addressed);
	each_container(s, new_with_port, inspect_address, NULL);
	end_calls(s);
}

static void undone(struct swap *s)
{
	if (s->failed) {
		finish(s, SWAP_FAILED);
		return;
	}
	if (s->serving)
		swap_resync(s->a, s->app, s->serving);
	finish(s, SWAP_UNDONE);
}

static void recover_listed(struct swap *s)
{
	if (s->failed) {
		finish(s, SWAP_FAILED);
		return;
	}
	if (s->switched) {
		/* The new set is what the start step recorded (and still exists). */
		const cJSON *it;
		cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(s->started, "started")) {
			struct cont *c = find_cont(s, jstr(it, "id"));
			if (c)
				c->in_new = true;
			else
				log_error("swap.recover_missing", "job=%s container=%.12s is gone",
					  s->job, jstr(it, "id"));
		}
		remember_new(s);
		log_warn("swap.recover_forward", "job=%s app=%s containers=%zu (the switch was "
			 "journalled: completing the swap)", s->job, s->app, s->n_new);
		start_new(s, recover_find_addresses);
		return;
	}
	log_warn("swap.recover_undo", "job=%s app=%s (no switch journalled: removing what the "
		 "job created)", s->job, s->app);
	begin_calls(s, undone);
	for (size_t i = 0; i < s->nc; i++) {
		struct cont *c = &s->c[i];
		bool restarted = false;
		const cJSON *it;
		cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(s->started, "started")) {
			if (strcmp(jstr(it, "id"), c->id) == 0 &&
			    !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(it, "created")))
				restarted = true;
		}
		struct op *o;
		if (strcmp(c->job, s->job) == 0 && (o = docker_op(s, c))) {
			c->created = true;
			o->id = docker_container_remove(s->a->docker, c->id, 1, 1, 0,
							on_abort_removed, o);
		} else if (restarted && is_running(c) && (o = docker_op(s, c))) {
			o->id = docker_container_stop(s->a->docker, c->id, -1, NULL, 0,
						      on_abort_removed, o);
		} else {
			continue;
		}
		if (!o->id)
			op_abandon(o);
	}
	end_calls(s);
}

static void begin(struct swap *s)
{
	s->phase = P_LIST;
	switch (s->kind) {
	case SWAP_DEPLOY:
		list_app(s, deploy_listed);
		break;
	case SWAP_REMOVE:
		list_app(s, remove_listed);
		break;
	case SWAP_RECOVER:
		list_app(s, recover_listed);
		break;
	}
}

struct swap *swap_start(struct agent *a, const struct swap_request *req,
			const struct swap_hooks *hooks)
{
	if (req->kind == SWAP_DEPLOY && !req->release)
		return NULL;
	struct swap *s = calloc(1, sizeof *s);
	if (!s)
		return NULL;
	s->a = a;
	s->kind = req->kind;
	snprintf(s->job, sizeof s->job, "%s", req->job_id);
	snprintf(s->app, sizeof s->app, "%s", req->app);
	s->gen = req->generation;
	s->spec = req->release;
	snprintf(s->release_id, sizeof s->release_id, "%s",
		 req->release ? req->release->id : req->release_id ? req->release_id : "");
	s->hooks = *hooks;
	s->removing = req->kind == SWAP_REMOVE || (req->kind == SWAP_RECOVER && req->remove);
	s->serving = req->serving_routes ? cJSON_Duplicate(req->serving_routes, 1) : NULL;
	if (req->kind == SWAP_RECOVER) {
		s->switched = req->switched;
		s->started = req->started ? cJSON_Duplicate(req->started, 1) : NULL;
		if (s->started && cJSON_IsArray(s->started)) {
			/* Stored as the bare array: wrap it like the step detail. */
			cJSON *w = cJSON_CreateObject();
			cJSON_AddItemToObject(w, "started", s->started);
			s->started = w;
		}
		s->routes_json = req->routes ? cJSON_Duplicate(req->routes, 1)
					     : cJSON_CreateArray();
	} else if (req->kind == SWAP_REMOVE) {
		s->routes_json = cJSON_CreateArray();
	}
	ev_timer_init(&s->kick, on_kick, 0.0, 0.0);
	s->kick.data = s;
	later(s, begin);
	return s;
}

void swap_free(struct swap *s)
{
	if (!s)
		return;
	struct agent *a = s->a;
	ev_timer_stop(a->loop, &s->kick);
	if (s->net_waiting) {
		for (struct swap **p = &a->net_waiters; *p; p = &(*p)->net_next) {
			if (*p == s) {
				*p = s->net_next;
				break;
			}
		}
	}
	cancel_ops(s);
	if (s->net_creator)
		net_wake(a, "the swap creating the docker network was stopped");
	for (size_t i = 0; i < s->nc; i++)
		health_free(s->c[i].probe);
	for (size_t i = 0; i < s->nroutes; i++)
		cJSON_Delete(s->routes[i].previous);
	free(s->routes);
	/* The spec may be gone already (the deployer frees it in its done hook). */
	for (size_t i = 0; i < s->ndigests; i++)
		free(s->digests[i]);
	free(s->digests);
	free(s->new_ids);
	free(s->c);
	cJSON_Delete(s->serving);
	cJSON_Delete(s->started);
	cJSON_Delete(s->routes_json);
	buf_free(&s->logbuf);
	free(s);
}

/* ---- resync: routes again after an agent or engine restart ---- */

#define RESYNC_ATTEMPTS 15
#define RESYNC_RETRY_S 2.0

struct swap_resync;

struct resync_call {
	struct swap_resync *owner;
	uint64_t id;
};

struct resync_backend {
	struct swap_resync *owner;
	char id[13];
	int port;
	char address[80];
	bool gone;
	uint64_t call;
};

struct swap_resync {
	struct swap_resync *next;
	struct agent *a;
	char app[SPEC_NAME_MAX + 1];
	cJSON *routes;
	struct resync_backend *b;
	size_t nb;
	int pending;
	int attempts;
	ev_timer retry;
	struct resync_call *proxy_calls;
	size_t nproxy;
};

static void resync_free(struct swap_resync *r)
{
	struct agent *a = r->a;
	for (struct swap_resync **p = &a->resyncs; *p; p = &(*p)->next) {
		if (*p == r) {
			*p = r->next;
			break;
		}
	}
	ev_timer_stop(a->loop, &r->retry);
	for (size_t i = 0; i < r->nb; i++) {
		if (r->b[i].call)
			docker_cancel(a->docker, r->b[i].call);
	}
	for (size_t i = 0; i < r->nproxy; i++) {
		if (r->proxy_calls[i].id)
			proxy_client_cancel(a->proxy, r->proxy_calls[i].id);
	}
	free(r->proxy_calls);
	free(r->b);
	cJSON_Delete(r->routes);
	free(r);
}

static const char *resync_resolve(void *ctx, const char *id)
{
	struct swap_resync *r = ctx;
	for (size_t i = 0; i < r->nb; i++) {
		if (strncmp(r->b[i].id, id, 12) == 0)
			return r->b[i].address;
	}
	return NULL;
}

static void resync_route_set(const struct proxy_result *res,
			     const struct proxy_backend_state *prev, size_t count, void *arg)
{
	(void)prev;
	(void)count;
	struct resync_call *call = arg;
	struct swap_resync *r = call->owner;
	call->id = 0;
	if (res->error)
		log_warn("swap.resync_failed", "app=%s error=\"%s\"", r->app, res->error);
	if (--r->pending == 0)
		resync_free(r);
}

static void resync_put(struct swap_resync *r)
{
	struct agent *a = r->a;
	size_t n = (size_t)cJSON_GetArraySize(r->routes);
	r->proxy_calls = calloc(n ? n : 1, sizeof *r->proxy_calls);
	r->nproxy = 0;
	const cJSON *it;
	cJSON_ArrayForEach(it, r->routes) {
		struct route_build b;
		if (!r->proxy_calls || route_from_json(r->app, it, &b, resync_resolve, r) < 0)
			continue;
		struct resync_call *call = &r->proxy_calls[r->nproxy];
		call->owner = r;
		call->id = proxy_client_set_route(a->proxy, &b.spec, resync_route_set, call);
		if (call->id) {
			r->nproxy++;
			r->pending++;
			log_info("swap.resync", "app=%s service=%s backends=%zu", r->app,
				 b.spec.service, b.spec.backend_count);
		}
	}
	if (r->pending == 0)
		resync_free(r);
}

static void resync_resolve_all(struct swap_resync *r);

static void resync_inspected(const struct docker_result *res, void *arg)
{
	struct resync_backend *b = arg;
	struct swap_resync *r = b->owner;
	b->call = 0;
	if (res->error == DOCKER_OK) {
		const cJSON *st = cJSON_GetObjectItemCaseSensitive(res->json, "State");
		if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(st, "Running")))
			address_of(r->a, res->json, b->port, b->address, sizeof b->address);
	} else if (res->error == DOCKER_ERR_NOT_FOUND) {
		b->gone = true;
	}
	if (--r->pending > 0)
		return;
	bool missing = false;
	for (size_t i = 0; i < r->nb; i++)
		missing |= !r->b[i].address[0] && !r->b[i].gone;
	if (missing && ++r->attempts < RESYNC_ATTEMPTS) {
		/* The engine restarts its containers a moment after it answers. */
		ev_timer_set(&r->retry, RESYNC_RETRY_S, 0.0);
		ev_timer_start(r->a->loop, &r->retry);
		return;
	}
	resync_put(r);
}

static void resync_resolve_all(struct swap_resync *r)
{
	r->pending = 1; /* held while the calls start */
	for (size_t i = 0; i < r->nb; i++) {
		struct resync_backend *b = &r->b[i];
		if (b->address[0] || b->gone)
			continue;
		b->call = docker_container_inspect(r->a->docker, b->id, 0, resync_inspected, b);
		if (b->call)
			r->pending++;
	}
	struct docker_result none = {.error = DOCKER_ERR_INTERNAL, .message = ""};
	struct resync_backend hold = {.owner = r};
	resync_inspected(&none, &hold);
}

static void on_resync_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	resync_resolve_all(w->data);
}

void swap_resync(struct agent *a, const char *app, const cJSON *routes)
{
	/* A newer resync of the app replaces one still running. */
	for (struct swap_resync *x = a->resyncs; x; x = x->next) {
		if (strcmp(x->app, app) == 0) {
			resync_free(x);
			break;
		}
	}
	struct swap_resync *r = calloc(1, sizeof *r);
	if (!r)
		return;
	r->a = a;
	snprintf(r->app, sizeof r->app, "%s", app);
	r->routes = cJSON_Duplicate(routes, 1);
	ev_timer_init(&r->retry, on_resync_retry, RESYNC_RETRY_S, 0.0);
	r->retry.data = r;
	size_t total = 0;
	const cJSON *it, *b;
	cJSON_ArrayForEach(it, routes)
		total += (size_t)cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(it, "backends"));
	r->b = calloc(total ? total : 1, sizeof *r->b);
	if (!r->routes || !r->b) {
		cJSON_Delete(r->routes);
		free(r->b);
		free(r);
		return;
	}
	r->next = a->resyncs;
	a->resyncs = r;
	cJSON_ArrayForEach(it, routes) {
		const cJSON *port = cJSON_GetObjectItemCaseSensitive(it, "port");
		cJSON_ArrayForEach(b, cJSON_GetObjectItemCaseSensitive(it, "backends")) {
			if (!cJSON_IsString(b))
				continue;
			struct resync_backend *rb = &r->b[r->nb++];
			rb->owner = r;
			short_id(rb->id, b->valuestring);
			rb->port = cJSON_IsNumber(port) ? port->valueint : 0;
		}
	}
	resync_resolve_all(r);
}

void swap_resync_cancel_all(struct agent *a)
{
	while (a->resyncs)
		resync_free(a->resyncs);
}
