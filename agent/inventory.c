#include "inventory.h"

#include <ev.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "clock.h"
#include "docker.h"
#include "log.h"
#include "spec.h"

#define KNOWN_MAX 4096

struct known {
	char id[72];
	char app[SPEC_NAME_MAX + 1];
	char service[SPEC_NAME_MAX + 1];
	char release[SPEC_ID_MAX + 1];
	int64_t generation;
	bool running;            /* as last listed */
	bool announced;          /* container_started was called */
	bool present;            /* in the current listing */
	bool tty;
	int64_t started_ms;
	int64_t memory;
	uint64_t call;           /* inspect or stats in flight */
	struct inventory *inv;
};

struct inventory {
	struct agent *a;
	struct inventory_opts o;
	uint64_t events;
	uint64_t list_call;
	bool again;              /* a change came while listing */
	bool force;              /* report even when unchanged (periodic) */
	bool want_stats;
	int pending;             /* inspects and stats of this round */
	struct known *k;
	size_t nk;
	cJSON *current;          /* the last listing, as reported */
	cJSON *listing;          /* the engine's answer of this round */
	char *last_sent;         /* without memory, to tell changes */
	ev_timer debounce;
	ev_timer periodic;
	char app_label[64];
	const char *filters[AGENT_LABELS_MAX + 2];
};

static void relist(struct inventory *inv);

static const char *jstr(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsString(v) && v->valuestring ? v->valuestring : "";
}

static struct known *find(struct inventory *inv, const char *id)
{
	for (size_t i = 0; i < inv->nk; i++) {
		if (strcmp(inv->k[i].id, id) == 0)
			return &inv->k[i];
	}
	return NULL;
}

static void hook(struct inventory *inv, struct known *k, bool started)
{
	struct agent_hooks *h = &inv->a->hooks;
	struct agent_container c = {.id = k->id, .app = k->app, .service = k->service,
				    .release = k->release, .generation = k->generation,
				    .tty = k->tty};
	if (started && h->container_started)
		h->container_started(&c, h->arg);
	if (!started && h->container_stopped)
		h->container_stopped(&c, h->arg);
}

static const char *health_of(const char *status)
{
	if (strstr(status, "(healthy)"))
		return "healthy";
	if (strstr(status, "(unhealthy)"))
		return "unhealthy";
	if (strstr(status, "(health: starting)"))
		return "starting";
	return "none";
}

/* Builds the document from the current listing and reports it if needed. */
static void report(struct inventory *inv, const cJSON *list)
{
	cJSON *arr = cJSON_CreateArray();
	const cJSON *it;
	cJSON_ArrayForEach(it, list) {
		struct known *k = find(inv, jstr(it, "Id"));
		if (!k)
			continue;
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "id", k->id);
		cJSON_AddStringToObject(o, "app", k->app);
		cJSON_AddStringToObject(o, "service", k->service);
		cJSON_AddStringToObject(o, "release", k->release);
		cJSON_AddNumberToObject(o, "generation", (double)k->generation);
		cJSON_AddStringToObject(o, "state", jstr(it, "State"));
		cJSON_AddStringToObject(o, "health", health_of(jstr(it, "Status")));
		cJSON_AddNumberToObject(o, "started_ms", (double)k->started_ms);
		cJSON_AddStringToObject(o, "command", jstr(it, "Command"));
		cJSON_AddItemToArray(arr, o);
	}
	char *text = cJSON_PrintUnformatted(arr);
	/* Memory goes in after the comparison: it moves all the time. */
	size_t i = 0;
	cJSON *o;
	cJSON_ArrayForEach(o, arr) {
		struct known *k = find(inv, jstr(o, "id"));
		cJSON_AddNumberToObject(o, "memory_bytes", k ? (double)k->memory : 0);
		i++;
	}
	bool changed = !text || !inv->last_sent || strcmp(text, inv->last_sent) != 0;
	cJSON_Delete(inv->current);
	inv->current = arr;
	if (changed || inv->force) {
		free(inv->last_sent);
		inv->last_sent = text;
		text = NULL;
		log_debug("inventory.report", "containers=%zu changed=%s", i, changed ? "yes" : "no");
		if (inv->o.report)
			inv->o.report(arr, inv->o.arg);
	}
	inv->force = false;
	free(text);
}

/* The round's inspects and stats are done: announce and report. */
static void round_done(struct inventory *inv)
{
	if (inv->pending > 0)
		return;
	for (size_t i = 0; i < inv->nk; i++) {
		struct known *k = &inv->k[i];
		if (k->present && k->running && !k->announced && k->started_ms) {
			k->announced = true;
			log_info("inventory.started", "container=%.12s app=%s service=%s release=%s",
				 k->id, k->app, k->service, k->release);
			hook(inv, k, true);
		}
	}
	report(inv, inv->listing);
	cJSON_Delete(inv->listing);
	inv->listing = NULL;
	/* Forget containers that are gone. */
	size_t w = 0;
	for (size_t i = 0; i < inv->nk; i++) {
		if (inv->k[i].present || inv->k[i].call)
			inv->k[w++] = inv->k[i];
	}
	inv->nk = w;
	if (inv->again) {
		inv->again = false;
		relist(inv);
	}
}

static void on_inspect(const struct docker_result *res, void *arg)
{
	struct known *k = arg;
	struct inventory *inv = k->inv;
	k->call = 0;
	inv->pending--;
	if (res->error == DOCKER_OK) {
		const cJSON *st = cJSON_GetObjectItemCaseSensitive(res->json, "State");
		const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(res->json, "Config");
		int64_t ms = 0;
		if (clock_parse_rfc3339(jstr(st, "StartedAt"), &ms) == 0)
			k->started_ms = ms;
		k->tty = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cfg, "Tty"));
	}
	if (!k->started_ms)
		k->started_ms = 1; /* inspect failed: announce anyway */
	round_done(inv);
}

static void on_stats(const struct docker_result *res, void *arg)
{
	struct known *k = arg;
	struct inventory *inv = k->inv;
	k->call = 0;
	inv->pending--;
	if (res->error == DOCKER_OK) {
		/* As `docker stats` shows it: usage minus the inactive page cache. */
		const cJSON *ms = cJSON_GetObjectItemCaseSensitive(res->json, "memory_stats");
		const cJSON *usage = cJSON_GetObjectItemCaseSensitive(ms, "usage");
		const cJSON *stats = cJSON_GetObjectItemCaseSensitive(ms, "stats");
		const cJSON *inactive = cJSON_GetObjectItemCaseSensitive(stats, "inactive_file");
		if (!inactive)
			inactive = cJSON_GetObjectItemCaseSensitive(stats, "total_inactive_file");
		double u = cJSON_IsNumber(usage) ? usage->valuedouble : 0;
		double c = cJSON_IsNumber(inactive) ? inactive->valuedouble : 0;
		k->memory = (int64_t)(u > c ? u - c : u);
	}
	round_done(inv);
}

static void on_list(const struct docker_result *res, void *arg)
{
	struct inventory *inv = arg;
	inv->list_call = 0;
	if (res->error != DOCKER_OK) {
		log_warn("inventory.list_failed", "error=\"%s\"", res->message);
		if (inv->again) {
			inv->again = false;
			ev_timer_set(&inv->debounce, 2.0, 0.0);
			ev_timer_start(inv->a->loop, &inv->debounce);
		}
		return;
	}
	for (size_t i = 0; i < inv->nk; i++)
		inv->k[i].present = false;
	const cJSON *it;
	cJSON_ArrayForEach(it, res->json) {
		const cJSON *labels = cJSON_GetObjectItemCaseSensitive(it, "Labels");
		const char *id = jstr(it, "Id");
		struct known *k = find(inv, id);
		if (!k) {
			if (inv->nk >= KNOWN_MAX || !*id)
				continue;
			struct known *nk = realloc(inv->k, (inv->nk + 1) * sizeof *nk);
			if (!nk)
				continue;
			/* Calls in flight point into the array: none may run when it moves. */
			inv->k = nk;
			k = &inv->k[inv->nk++];
			memset(k, 0, sizeof *k);
			k->inv = inv;
			snprintf(k->id, sizeof k->id, "%s", id);
			snprintf(k->app, sizeof k->app, "%s", jstr(labels, "slipway.app"));
			snprintf(k->service, sizeof k->service, "%s", jstr(labels, "slipway.service"));
			snprintf(k->release, sizeof k->release, "%s", jstr(labels, "slipway.release"));
			k->generation = strtoll(jstr(labels, "slipway.generation"), NULL, 10);
		}
		k->present = true;
		bool running = strcmp(jstr(it, "State"), "running") == 0;
		if (k->running && !running && k->announced) {
			k->announced = false;
			log_info("inventory.stopped", "container=%.12s app=%s state=%s", k->id, k->app,
				 jstr(it, "State"));
			hook(inv, k, false);
		}
		if (running && !k->running)
			k->started_ms = 0; /* (re)started: inspect again */
		k->running = running;
	}
	for (size_t i = 0; i < inv->nk; i++) {
		struct known *k = &inv->k[i];
		if (!k->present && k->announced) {
			k->announced = false;
			hook(inv, k, false);
		}
	}
	inv->listing = cJSON_Duplicate(res->json, 1);
	inv->pending = 1; /* held while the calls start */
	for (size_t i = 0; i < inv->nk; i++) {
		struct known *k = &inv->k[i];
		if (!k->present || !k->running || k->call)
			continue;
		if (!k->started_ms)
			k->call = docker_container_inspect(inv->a->docker, k->id, 0, on_inspect, k);
		else if (inv->want_stats)
			k->call = docker_container_stats(inv->a->docker, k->id, 0, on_stats, k);
		if (k->call)
			inv->pending++;
	}
	inv->want_stats = false;
	inv->pending--;
	round_done(inv);
}

static void relist(struct inventory *inv)
{
	if (inv->list_call || inv->pending > 0) {
		inv->again = true;
		return;
	}
	inv->list_call = docker_container_list(inv->a->docker, 1, inv->filters, 0, on_list, inv);
}

static void on_debounce(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	relist(w->data);
}

static void on_periodic(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	struct inventory *inv = w->data;
	inv->force = true;
	inv->want_stats = true;
	relist(inv);
}

void inventory_changed(struct inventory *inv)
{
	if (!ev_is_active(&inv->debounce)) {
		ev_timer_set(&inv->debounce, (double)inv->o.debounce_ms / 1000.0, 0.0);
		ev_timer_start(inv->a->loop, &inv->debounce);
	}
}

static void on_event(const cJSON *event, int64_t time_ns, void *arg)
{
	(void)time_ns;
	struct inventory *inv = arg;
	const char *action = jstr(event, "Action");
	/* exec_* and top are noise; everything else may change the table. */
	if (strncmp(action, "exec_", 5) == 0 || strcmp(action, "top") == 0)
		return;
	inventory_changed(inv);
}

static void on_events_state(enum docker_events_state st, const char *message, void *arg)
{
	struct inventory *inv = arg;
	switch (st) {
	case DOCKER_EVENTS_CONNECTED:
		break;
	case DOCKER_EVENTS_DISCONNECTED:
		log_warn("inventory.engine_lost", "error=\"%s\" (reconnecting)", message);
		break;
	case DOCKER_EVENTS_RECONNECTED:
		log_info("inventory.engine_back", "re-listing and re-sending the proxy routes");
		inventory_changed(inv);
		if (inv->o.engine_back)
			inv->o.engine_back(inv->o.arg);
		break;
	case DOCKER_EVENTS_FAILED:
		log_error("inventory.events_failed", "error=\"%s\"", message);
		break;
	}
}

struct inventory *inventory_new(struct agent *a, const struct inventory_opts *opts,
				struct err *err)
{
	struct inventory *inv = calloc(1, sizeof *inv);
	if (!inv) {
		err_set(err, "inventory: out of memory");
		return NULL;
	}
	inv->a = a;
	inv->o = *opts;
	if (inv->o.interval_ms <= 0)
		inv->o.interval_ms = 60000;
	if (inv->o.debounce_ms <= 0)
		inv->o.debounce_ms = 300;
	size_t n = 0;
	snprintf(inv->app_label, sizeof inv->app_label, "slipway.app");
	inv->filters[n++] = inv->app_label;
	for (size_t i = 0; a->set.labels[i] && n < AGENT_LABELS_MAX + 1; i++)
		inv->filters[n++] = a->set.labels[i];
	inv->filters[n] = NULL;
	ev_timer_init(&inv->debounce, on_debounce, 0.0, 0.0);
	inv->debounce.data = inv;
	double every = (double)inv->o.interval_ms / 1000.0;
	ev_timer_init(&inv->periodic, on_periodic, every, every);
	inv->periodic.data = inv;
	return inv;
}

void inventory_start(struct inventory *inv)
{
	struct docker_events_opts eo = {
		.type = "container",
		.labels = inv->filters,
		.on_event = on_event,
		.on_state = on_events_state,
		.arg = inv,
	};
	inv->events = docker_events_subscribe(inv->a->docker, &eo);
	if (!inv->events)
		log_error("inventory.events_failed", "error=\"could not subscribe\"");
	ev_timer_start(inv->a->loop, &inv->periodic);
	inv->want_stats = true;
	relist(inv);
}

const cJSON *inventory_containers(const struct inventory *inv) { return inv->current; }

void inventory_free(struct inventory *inv)
{
	if (!inv)
		return;
	struct docker *d = inv->a->docker;
	if (inv->events)
		docker_cancel(d, inv->events);
	if (inv->list_call)
		docker_cancel(d, inv->list_call);
	for (size_t i = 0; i < inv->nk; i++) {
		if (inv->k[i].call)
			docker_cancel(d, inv->k[i].call);
	}
	ev_timer_stop(inv->a->loop, &inv->debounce);
	ev_timer_stop(inv->a->loop, &inv->periodic);
	free(inv->k);
	cJSON_Delete(inv->current);
	cJSON_Delete(inv->listing);
	free(inv->last_sent);
	free(inv);
}
