#include "runjob.h"

#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "clock.h"
#include "docker.h"
#include "json.h"
#include "log.h"
#include "registryauth.h"

#define TICK_MS 250

/* ---- parsing ---- */

bool runjob_is_run(const cJSON *job)
{
	const cJSON *t = cJSON_GetObjectItemCaseSensitive(job, "type");
	return cJSON_IsString(t) && strcmp(t->valuestring, "run") == 0;
}

static void free_argv(char **v)
{
	for (char **p = v; p && *p; p++)
		free(*p);
	free(v);
}

void runjob_req_clear(struct runjob_req *req)
{
	free_argv(req->command);
	spec_release_free(req->release);
	req->command = NULL;
	req->release = NULL;
	req->svc = NULL;
}

static int parse_command(const cJSON *cmd, char ***out, struct err *err)
{
	*out = NULL;
	if (!cmd || cJSON_IsNull(cmd))
		return 0;
	if (!cJSON_IsArray(cmd))
		return err_set(err, "run.command: expected an array of strings or null");
	int n = cJSON_GetArraySize(cmd);
	if (n < 1 || n > SPEC_COMMAND_MAX)
		return err_set(err, "run.command: expected 1..%d strings", SPEC_COMMAND_MAX);
	char **v = calloc((size_t)n + 1, sizeof *v);
	if (!v)
		return err_set(err, "out of memory");
	int i = 0;
	const cJSON *w;
	cJSON_ArrayForEach(w, cmd)
	{
		if (!cJSON_IsString(w) || strlen(w->valuestring) > SPEC_ARG_MAX) {
			free_argv(v);
			return err_set(err, "run.command[%d]: expected a string of at most %d bytes",
				       i, SPEC_ARG_MAX);
		}
		if (!(v[i++] = strdup(w->valuestring))) {
			free_argv(v);
			return err_set(err, "out of memory");
		}
	}
	*out = v;
	return 0;
}

int runjob_parse(const cJSON *json, struct runjob_req *req, struct err *err)
{
	memset(req, 0, sizeof *req);
	req->generation = -1;
	static const char *const keys[] = {"id",      "type",    "app",     "generation",
					   "lease_id", "lease_expires_in_s", "attempt",
					   "release", "run",     NULL};
	static const char *const run_keys[] = {"id", "service", "command", "timeout_s", NULL};
	if (!cJSON_IsObject(json))
		return err_set(err, "job: expected an object");
	const char *id, *lease, *type, *app, *run_id, *service;
	int64_t attempt;
	const cJSON *rel, *run;
	if (json_get_string(json, NULL, "id", SPEC_ID_MAX, &id, err) < 0 ||
	    !spec_valid_id(id))
		return err->msg[0] ? -1 : err_set(err, "id: not a valid id");
	snprintf(req->job, sizeof req->job, "%s", id);
	if (json_get_string(json, NULL, "lease_id", SPEC_ID_MAX, &lease, err) < 0)
		return -1;
	if (!spec_valid_id(lease))
		return err_set(err, "lease_id: not a valid id");
	snprintf(req->lease, sizeof req->lease, "%s", lease);
	req->ackable = true;
	if (json_check_keys(json, keys, "job", err) < 0 ||
	    json_get_string(json, NULL, "type", 16, &type, err) < 0)
		return -1;
	if (strcmp(type, "run") != 0)
		return err_set(err, "type: expected \"run\"");
	if (json_get_string(json, NULL, "app", SPEC_NAME_MAX, &app, err) < 0)
		return -1;
	if (!spec_valid_name(app))
		return err_set(err, "app: not a valid name");
	snprintf(req->app, sizeof req->app, "%s", app);
	if (json_get_int(json, NULL, "generation", 1, JSON_INT_LIMIT, &req->generation, err) < 0 ||
	    json_get_int(json, NULL, "lease_expires_in_s", 1, 86400, &req->lease_s, err) < 0 ||
	    json_get_int(json, NULL, "attempt", 1, 1000, &attempt, err) < 0 ||
	    json_get_object(json, NULL, "release", &rel, err) < 0 ||
	    json_get_object(json, NULL, "run", &run, err) < 0 ||
	    json_check_keys(run, run_keys, "run", err) < 0 ||
	    json_get_string(run, "run", "id", RUNJOB_ID_MAX, &run_id, err) < 0 ||
	    json_get_string(run, "run", "service", SPEC_NAME_MAX, &service, err) < 0 ||
	    json_get_int(run, "run", "timeout_s", 1, RUNJOB_TIMEOUT_MAX_S, &req->timeout_s, err) <
		    0)
		return -1;
	/* The run id names the log stream (a service name) and the container. */
	if (!spec_valid_name(run_id))
		return err_set(err, "run.id: not a valid name");
	if (!spec_valid_name(service))
		return err_set(err, "run.service: not a valid name");
	snprintf(req->run_id, sizeof req->run_id, "%s", run_id);
	snprintf(req->service, sizeof req->service, "%s", service);
	if (parse_command(cJSON_GetObjectItemCaseSensitive(run, "command"), &req->command, err) < 0)
		return -1;
	if (!(req->release = spec_release_parse(rel, "release", err)))
		return -1;
	if (strcmp(req->release->app, req->app) != 0)
		return err_set(err, "release.app: \"%s\" is not the job's app", req->release->app);
	for (size_t i = 0; i < req->release->service_count; i++)
		if (strcmp(req->release->services[i].name, service) == 0)
			req->svc = &req->release->services[i];
	if (!req->svc)
		return err_set(err, "run.service: release %s has no service %s", req->release->id,
			       service);
	return 0;
}

/* ---- the container ---- */

cJSON *runjob_create_body(const struct agent *a, const struct runjob_req *req)
{
	const struct spec_service *svc = req->svc;
	char num[32];
	cJSON *b = cJSON_CreateObject();
	if (!b)
		return NULL;
	cJSON_AddStringToObject(b, "Image", svc->image);
	char **cmd = req->command ? req->command : svc->command;
	if (cmd) {
		cJSON *arr = cJSON_AddArrayToObject(b, "Cmd");
		for (char **p = cmd; *p; p++)
			cJSON_AddItemToArray(arr, cJSON_CreateString(*p));
	}
	cJSON *env = cJSON_AddArrayToObject(b, "Env");
	for (char **p = svc->env; p && *p; p++)
		cJSON_AddItemToArray(env, cJSON_CreateString(*p));
	cJSON *labels = cJSON_AddObjectToObject(b, "Labels");
	cJSON_AddStringToObject(labels, "slipway.app", req->app);
	cJSON_AddStringToObject(labels, "slipway.release", req->release->id);
	/* The log shipper and `slipway ps` name the container after the run. */
	cJSON_AddStringToObject(labels, "slipway.service", req->run_id);
	snprintf(num, sizeof num, "%lld", (long long)req->generation);
	cJSON_AddStringToObject(labels, "slipway.generation", num);
	cJSON_AddStringToObject(labels, "slipway.job", req->job);
	cJSON_AddStringToObject(labels, "slipway.run", req->run_id);
	cJSON_AddStringToObject(labels, "slipway.run.service", svc->name);
	for (size_t i = 0; a->set.labels[i]; i++) {
		const char *kv = a->set.labels[i];
		const char *eq = strchr(kv, '=');
		if (!eq)
			continue;
		char key[256];
		snprintf(key, sizeof key, "%.*s", (int)(eq - kv), kv);
		cJSON_AddStringToObject(labels, key, eq + 1);
	}
	cJSON *hc = cJSON_AddObjectToObject(b, "HostConfig");
	cJSON *lc = cJSON_AddObjectToObject(hc, "LogConfig");
	cJSON_AddStringToObject(lc, "Type", "json-file");
	cJSON *lcc = cJSON_AddObjectToObject(lc, "Config");
	snprintf(num, sizeof num, "%lld", (long long)a->set.log_max_size);
	cJSON_AddStringToObject(lcc, "max-size", num);
	snprintf(num, sizeof num, "%d", a->set.log_max_files);
	cJSON_AddStringToObject(lcc, "max-file", num);
	if (svc->memory_mb > 0)
		cJSON_AddNumberToObject(hc, "Memory", (double)(svc->memory_mb << 20));
	/* The service's network (its database, its peers), but no port and no route. */
	if (a->set.network && *a->set.network) {
		cJSON_AddStringToObject(hc, "NetworkMode", a->set.network);
		cJSON *nc = cJSON_AddObjectToObject(b, "NetworkingConfig");
		cJSON *ec = cJSON_AddObjectToObject(nc, "EndpointsConfig");
		cJSON_AddItemToObject(ec, a->set.network, cJSON_CreateObject());
	}
	return b;
}

/* ---- the output tail ---- */

int runjob_tail_init(struct runjob_tail *t, size_t lines)
{
	memset(t, 0, sizeof *t);
	if (lines == 0)
		lines = 1;
	t->line = calloc(lines, sizeof *t->line);
	if (!t->line)
		return -1;
	t->cap = lines;
	return 0;
}

void runjob_tail_add(struct runjob_tail *t, const char *text, size_t len)
{
	if (!t->line)
		return;
	if (len > RUNJOB_LINE_MAX)
		len = RUNJOB_LINE_MAX;
	char *copy = malloc(len + 1);
	if (!copy)
		return;
	memcpy(copy, text, len);
	copy[len] = '\0';
	size_t slot = (t->head + t->n) % t->cap;
	if (t->n == t->cap) {
		free(t->line[t->head]);
		slot = t->head;
		t->head = (t->head + 1) % t->cap;
	} else {
		t->n++;
	}
	t->line[slot] = copy;
}

char *runjob_tail_text(const struct runjob_tail *t)
{
	size_t total = 1;
	for (size_t i = 0; i < t->n; i++)
		total += strlen(t->line[(t->head + i) % t->cap]) + 1;
	char *out = malloc(total);
	if (!out)
		return NULL;
	size_t at = 0;
	for (size_t i = 0; i < t->n; i++) {
		const char *l = t->line[(t->head + i) % t->cap];
		size_t len = strlen(l);
		memcpy(out + at, l, len);
		at += len;
		if (i + 1 < t->n)
			out[at++] = '\n';
	}
	out[at] = '\0';
	return out;
}

void runjob_tail_free(struct runjob_tail *t)
{
	for (size_t i = 0; i < t->n; i++)
		free(t->line[(t->head + i) % t->cap]);
	free(t->line);
	memset(t, 0, sizeof *t);
}

/* ---- running ---- */

enum phase {
	P_CHECK,     /* listing containers of this run */
	P_IMAGE,     /* inspecting, then pulling the image */
	P_CREATE,
	P_START,
	P_RUNNING,   /* waiting for the exit */
	P_DRAIN,     /* exited: waiting for the output to be read */
	P_ACK,
	P_REMOVE,
};

struct run {
	struct runjobs *rj;
	struct run *next;
	struct runjob_req req;
	enum phase phase;
	char container[80];
	char name[160];
	uint64_t call;            /* the docker (or registryauth) call in flight */
	bool call_is_pull;        /* call is registryauth's */
	uint64_t logs_call;
	bool logs_done;
	uint64_t kill_call;
	struct runjob_tail tail;
	int64_t started_ms;       /* mono, when the job arrived */
	int64_t deadline_ms;      /* mono, when the container is killed */
	int64_t drain_until_ms;
	int64_t next_extend_ms;
	bool extending;
	bool dead;                /* freed once the extend in flight answers */
	bool killed;              /* timed out or lease lost */
	bool timed_out;
	bool lease_lost;
	bool has_exit;
	int64_t exit_code;
	char reason[1024];
	ev_timer tick;
};

struct runjobs {
	struct runjob_opts o;
	struct run *runs;
	char seen[RUNJOB_SEEN_MAX][SPEC_ID_MAX + 1];
	size_t seen_next;
	uint64_t leftover_list;
	struct leftover *leftovers;
};

/* A container of a run from an earlier life: removed once it stopped. */
struct leftover {
	struct runjobs *rj;
	struct leftover *next;
	uint64_t call;
	char id[80];
};

static struct docker *dk(const struct run *r)
{
	return r->rj->o.a->docker;
}

static void run_free(struct run *r)
{
	struct runjobs *rj = r->rj;
	if (r->extending && !r->dead) {
		/* The coordinator client calls back later: free the run then. */
		r->dead = true;
		ev_timer_stop(rj->o.a->loop, &r->tick);
		return;
	}
	for (struct run **pp = &rj->runs; *pp; pp = &(*pp)->next) {
		if (*pp == r) {
			*pp = r->next;
			break;
		}
	}
	if (r->call) {
		if (r->call_is_pull && rj->o.a->registryauth)
			registryauth_cancel(rj->o.a->registryauth, r->call);
		else
			docker_cancel(dk(r), r->call);
	}
	if (r->logs_call)
		docker_cancel(dk(r), r->logs_call);
	if (r->kill_call)
		docker_cancel(dk(r), r->kill_call);
	ev_timer_stop(rj->o.a->loop, &r->tick);
	runjob_req_clear(&r->req);
	runjob_tail_free(&r->tail);
	free(r);
}

static void finish(struct run *r);

/* The run ends before (or without) an exit status: reason says why. */
static void fail(struct run *r, const char *fmt, const char *detail)
{
	snprintf(r->reason, sizeof r->reason, fmt, detail ? detail : "");
	log_warn("runjob.failed", "job=%s run=%s reason=\"%s\"", r->req.job, r->req.run_id,
		 r->reason);
	finish(r);
}

static void on_removed(const struct docker_result *res, void *arg)
{
	struct run *r = arg;
	r->call = 0;
	if (res->error != DOCKER_OK && res->error != DOCKER_ERR_NOT_FOUND)
		log_warn("runjob.remove_failed", "run=%s container=%.12s error=\"%s\"", r->req.run_id,
			 r->container, res->message);
	else
		log_info("runjob.removed", "run=%s container=%.12s", r->req.run_id, r->container);
	run_free(r);
}

static void remove_container(struct run *r)
{
	r->phase = P_REMOVE;
	if (!r->container[0] ||
	    !(r->call = docker_container_remove(dk(r), r->container, 1, 1, 0, on_removed, r)))
		run_free(r);
}

static void on_acked(enum deployer_reply reply, void *arg)
{
	struct run *r = arg;
	if (reply != DEPLOYER_REPLY_OK)
		log_warn("runjob.ack_refused", "job=%s run=%s reply=%d", r->req.job, r->req.run_id,
			 (int)reply);
	remove_container(r);
}

/* Acknowledges the outcome, then removes the container. */
static void finish(struct run *r)
{
	ev_timer_stop(r->rj->o.a->loop, &r->tick);
	if (r->logs_call) {
		docker_cancel(dk(r), r->logs_call);
		r->logs_call = 0;
	}
	r->phase = P_ACK;
	bool ok = r->has_exit && r->exit_code == 0 && !r->killed && !r->reason[0];
	if (!ok && !r->reason[0]) {
		if (r->timed_out)
			snprintf(r->reason, sizeof r->reason, "timed out after %llds (killed)",
				 (long long)r->req.timeout_s);
		else if (r->lease_lost)
			snprintf(r->reason, sizeof r->reason,
				 "the coordinator gave up on the run (lease lost): killed");
		else
			snprintf(r->reason, sizeof r->reason, "exited with status %lld",
				 (long long)r->exit_code);
	}
	char *tail = runjob_tail_text(&r->tail);
	struct deployer_ack ack = {
		.job_id = r->req.job,
		.lease_id = r->req.lease,
		.result = ok ? "succeeded" : "failed",
		.generation = r->req.generation,
		.reason = ok ? "" : r->reason,
		.output_tail = tail ? tail : "",
		.duration_ms = clock_mono_ms() - r->started_ms,
		.has_exit_code = r->has_exit,
		.exit_code = r->exit_code,
	};
	log_info("runjob.done", "job=%s run=%s result=%s exit_code=%lld duration_ms=%lld",
		 r->req.job, r->req.run_id, ack.result, r->has_exit ? (long long)r->exit_code : -1LL,
		 (long long)ack.duration_ms);
	r->rj->o.coord.ack(r->rj->o.coord.ctx, &ack, on_acked, r);
	free(tail);
}

static int on_line(const struct linesplit_line *line, void *arg)
{
	struct run *r = arg;
	if (!(line->flags & LINESPLIT_CONT))
		runjob_tail_add(&r->tail, line->text, line->len);
	return 0;
}

static void on_logs_end(const struct docker_result *res, void *arg)
{
	struct run *r = arg;
	r->logs_call = 0;
	r->logs_done = true;
	if (res->error != DOCKER_OK)
		log_warn("runjob.logs_ended", "run=%s error=\"%s\"", r->req.run_id, res->message);
}

static void on_waited(const struct docker_result *res, void *arg)
{
	struct run *r = arg;
	r->call = 0;
	if (res->error != DOCKER_OK) {
		fail(r, "waiting for the container: %s", res->message);
		return;
	}
	const cJSON *code = cJSON_GetObjectItemCaseSensitive(res->json, "StatusCode");
	r->has_exit = cJSON_IsNumber(code);
	r->exit_code = r->has_exit ? (int64_t)code->valuedouble : -1;
	if (r->exit_code < 0 || r->exit_code > 255)
		r->has_exit = false;
	log_info("runjob.exited", "run=%s container=%.12s exit_code=%lld", r->req.run_id,
		 r->container, (long long)r->exit_code);
	r->phase = P_DRAIN;
	r->drain_until_ms = clock_mono_ms() + r->rj->o.drain_ms;
	/* the tick decides when the output has been read */
}

static void on_started(const struct docker_result *res, void *arg)
{
	struct run *r = arg;
	r->call = 0;
	if (res->error != DOCKER_OK) {
		fail(r, "starting the container: %s", res->message);
		return;
	}
	struct agent *a = r->rj->o.a;
	log_info("runjob.started", "job=%s run=%s container=%.12s", r->req.job, r->req.run_id,
		 r->container);
	r->phase = P_RUNNING;
	r->deadline_ms = clock_mono_ms() + r->req.timeout_s * 1000;
	if (a->hooks.container_started) {
		struct agent_container c = {.id = r->container, .app = r->req.app,
					    .service = r->req.run_id, .release = r->req.release->id,
					    .generation = r->req.generation};
		a->hooks.container_started(&c, a->hooks.arg);
	}
	struct docker_logs_opts lo = {.follow = 1};
	r->logs_call = docker_container_logs(dk(r), r->container, &lo, on_line, on_logs_end, r);
	r->logs_done = r->logs_call == 0;
	if (!(r->call = docker_container_wait(dk(r), r->container, "not-running", 0, on_waited, r)))
		fail(r, "waiting for the container: %s", "could not start the request");
}

static void on_created(const struct docker_result *res, void *arg)
{
	struct run *r = arg;
	r->call = 0;
	if (res->error != DOCKER_OK) {
		fail(r, "creating the container: %s", res->message);
		return;
	}
	snprintf(r->container, sizeof r->container, "%s", res->id ? res->id : "");
	r->phase = P_START;
	if (!(r->call = docker_container_start(dk(r), r->container, 0, on_started, r)))
		fail(r, "starting the container: %s", "could not start the request");
}

static void create(struct run *r)
{
	cJSON *body = runjob_create_body(r->rj->o.a, &r->req);
	r->phase = P_CREATE;
	r->call = body ? docker_container_create(dk(r), r->name, body, 0, on_created, r) : 0;
	cJSON_Delete(body);
	if (!r->call)
		fail(r, "creating the container: %s", "could not start the request");
}

static void on_pulled(const struct docker_result *res, void *arg)
{
	struct run *r = arg;
	r->call = 0;
	r->call_is_pull = false;
	if (res->error != DOCKER_OK) {
		fail(r, "pulling the image: %s", res->message);
		return;
	}
	create(r);
}

static void on_image(const struct docker_result *res, void *arg)
{
	struct run *r = arg;
	r->call = 0;
	if (res->error == DOCKER_OK) {
		create(r);
		return;
	}
	if (res->error != DOCKER_ERR_NOT_FOUND) {
		fail(r, "inspecting the image: %s", res->message);
		return;
	}
	struct agent *a = r->rj->o.a;
	const char *image = r->req.svc->image;
	log_info("runjob.pull", "run=%s image=%s", r->req.run_id, image);
	if (a->registryauth) {
		r->call_is_pull = true;
		r->call = registryauth_pull(a->registryauth, image, a->set.pull_timeout_ms, NULL,
					    on_pulled, r);
	} else {
		r->call = docker_image_pull(dk(r), image, NULL, a->set.pull_timeout_ms, NULL,
					    on_pulled, r);
	}
	if (!r->call) {
		r->call_is_pull = false;
		fail(r, "pulling the image: %s", "could not start the request");
	}
}

static void on_checked(const struct docker_result *res, void *arg)
{
	struct run *r = arg;
	r->call = 0;
	if (res->error != DOCKER_OK) {
		fail(r, "listing containers: %s", res->message);
		return;
	}
	const cJSON *first = cJSON_IsArray(res->json) ? res->json->child : NULL;
	if (first) {
		/* An earlier life of this agent started it: never twice. Its
		 * container is not ours to remove here (runjob_start's leftovers). */
		fail(r, "a container of this run exists already (the agent restarted while it "
			"ran)%s: not started twice", "");
		return;
	}
	r->phase = P_IMAGE;
	if (!(r->call = docker_image_inspect(dk(r), r->req.svc->image, 0, on_image, r)))
		fail(r, "inspecting the image: %s", "could not start the request");
}

static void on_extended(enum deployer_reply reply, void *arg)
{
	struct run *r = arg;
	r->extending = false;
	if (r->dead) {
		run_free(r);
		return;
	}
	if (reply == DEPLOYER_REPLY_LEASE_LOST || reply == DEPLOYER_REPLY_FINAL) {
		log_warn("runjob.lease_lost", "job=%s run=%s (the coordinator failed the run)",
			 r->req.job, r->req.run_id);
		r->lease_lost = true;
	}
}

static void on_killed(const struct docker_result *res, void *arg)
{
	struct run *r = arg;
	r->kill_call = 0;
	if (res->error != DOCKER_OK && res->error != DOCKER_ERR_CONFLICT)
		log_warn("runjob.kill_failed", "run=%s error=\"%s\"", r->req.run_id, res->message);
}

static void on_tick(struct ev_loop *loop, ev_timer *t, int revents)
{
	(void)loop;
	(void)revents;
	struct run *r = t->data;
	struct runjobs *rj = r->rj;
	int64_t now = clock_mono_ms();
	if (!r->extending && now >= r->next_extend_ms && r->phase < P_ACK && !r->lease_lost) {
		r->extending = true;
		r->next_extend_ms = now + r->req.lease_s * 1000 / 3;
		rj->o.coord.extend(rj->o.coord.ctx, r->req.job, r->req.lease, r->req.lease_s,
				   on_extended, r);
	}
	if (r->phase == P_RUNNING && !r->killed &&
	    (now >= r->deadline_ms || r->lease_lost)) {
		r->killed = true;
		r->timed_out = !r->lease_lost;
		log_warn("runjob.kill", "run=%s container=%.12s reason=%s", r->req.run_id,
			 r->container, r->timed_out ? "timeout" : "lease lost");
		r->kill_call = docker_container_kill(dk(r), r->container, NULL, 0, on_killed, r);
	}
	if (r->phase == P_DRAIN) {
		bool drained = r->logs_done && agent_logs_drained(rj->o.a, r->container);
		if (drained || now >= r->drain_until_ms) {
			if (!drained)
				log_warn("runjob.drain_timeout", "run=%s container=%.12s", r->req.run_id,
					 r->container);
			finish(r);
		}
	}
}

static bool seen(struct runjobs *rj, const char *job)
{
	for (size_t i = 0; i < RUNJOB_SEEN_MAX; i++)
		if (strcmp(rj->seen[i], job) == 0)
			return true;
	snprintf(rj->seen[rj->seen_next], sizeof rj->seen[0], "%s", job);
	rj->seen_next = (rj->seen_next + 1) % RUNJOB_SEEN_MAX;
	return false;
}

static void refuse_ack(enum deployer_reply reply, void *arg)
{
	(void)reply;
	(void)arg;
}

void runjob_offer(struct runjobs *rj, const cJSON *job)
{
	struct err err = {{0}};
	struct run *r = calloc(1, sizeof *r);
	if (!r) {
		log_error("runjob.offer", "error=\"out of memory\"");
		return;
	}
	r->rj = rj;
	int rc = runjob_parse(job, &r->req, &err);
	if (r->req.ackable) {
		/* The same job again in this life: keep its new lease, run it once. */
		for (struct run *o = rj->runs; o; o = o->next) {
			if (strcmp(o->req.job, r->req.job) == 0) {
				snprintf(o->req.lease, sizeof o->req.lease, "%s", r->req.lease);
				runjob_req_clear(&r->req);
				free(r);
				return;
			}
		}
		if (seen(rj, r->req.job)) {
			log_info("runjob.repeat", "job=%s (ran already in this process)", r->req.job);
			runjob_req_clear(&r->req);
			free(r);
			return;
		}
	}
	if (rc < 0) {
		log_warn("runjob.bad_job", "job=%s error=\"%s\"", r->req.job, err.msg);
		if (r->req.ackable) {
			struct deployer_ack ack = {.job_id = r->req.job, .lease_id = r->req.lease,
						   .result = "failed",
						   .generation = r->req.generation > 0
									 ? r->req.generation
									 : 0,
						   .reason = err.msg, .output_tail = ""};
			rj->o.coord.ack(rj->o.coord.ctx, &ack, refuse_ack, NULL);
		}
		runjob_req_clear(&r->req);
		free(r);
		return;
	}
	struct agent *a = rj->o.a;
	if (runjob_tail_init(&r->tail, a->set.output_tail_lines > 0
					       ? (size_t)a->set.output_tail_lines
					       : 20) < 0) {
		runjob_req_clear(&r->req);
		free(r);
		return;
	}
	snprintf(r->name, sizeof r->name, "%s-%s-%s", a->set.name_prefix, r->req.app,
		 r->req.run_id);
	r->started_ms = clock_mono_ms();
	r->next_extend_ms = r->started_ms + r->req.lease_s * 1000 / 3;
	r->next = rj->runs;
	rj->runs = r;
	ev_timer_init(&r->tick, on_tick, rj->o.tick_ms / 1000.0, rj->o.tick_ms / 1000.0);
	r->tick.data = r;
	ev_timer_start(a->loop, &r->tick);
	log_info("runjob.accepted", "job=%s run=%s app=%s release=%s service=%s timeout_s=%lld",
		 r->req.job, r->req.run_id, r->req.app, r->req.release->id, r->req.service,
		 (long long)r->req.timeout_s);
	char label[64];
	snprintf(label, sizeof label, "slipway.run=%s", r->req.run_id);
	const char *filters[] = {label, NULL};
	r->phase = P_CHECK;
	if (!(r->call = docker_container_list(dk(r), 1, filters, 0, on_checked, r)))
		fail(r, "listing containers: %s", "could not start the request");
}

size_t runjob_active(const struct runjobs *rj)
{
	size_t n = 0;
	for (const struct run *r = rj->runs; r; r = r->next)
		n++;
	return n;
}

/* ---- leftovers of an earlier life ---- */

static void leftover_free(struct leftover *l)
{
	for (struct leftover **pp = &l->rj->leftovers; *pp; pp = &(*pp)->next) {
		if (*pp == l) {
			*pp = l->next;
			break;
		}
	}
	free(l);
}

static void on_leftover_removed(const struct docker_result *res, void *arg)
{
	struct leftover *l = arg;
	l->call = 0;
	if (res->error == DOCKER_OK)
		log_info("runjob.leftover_removed", "container=%.12s", l->id);
	leftover_free(l);
}

static void on_leftover_stopped(const struct docker_result *res, void *arg)
{
	struct leftover *l = arg;
	l->call = 0;
	(void)res;
	if (!(l->call = docker_container_remove(l->rj->o.a->docker, l->id, 1, 1, 0,
						on_leftover_removed, l)))
		leftover_free(l);
}

static void on_leftovers(const struct docker_result *res, void *arg)
{
	struct runjobs *rj = arg;
	rj->leftover_list = 0;
	if (res->error != DOCKER_OK) {
		log_warn("runjob.leftovers", "error=\"%s\"", res->message);
		return;
	}
	const cJSON *it;
	cJSON_ArrayForEach(it, res->json)
	{
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "Id");
		if (!cJSON_IsString(id))
			continue;
		struct leftover *l = calloc(1, sizeof *l);
		if (!l)
			return;
		l->rj = rj;
		snprintf(l->id, sizeof l->id, "%s", id->valuestring);
		l->next = rj->leftovers;
		rj->leftovers = l;
		log_info("runjob.leftover", "container=%.12s (removed once it stops)", l->id);
		/* A run still going finishes on its own; its result is lost (the
		 * coordinator failed it when the lease expired). */
		if (!(l->call = docker_container_wait(rj->o.a->docker, l->id, "not-running", 0,
						      on_leftover_stopped, l)))
			leftover_free(l);
	}
}

void runjob_start(struct runjobs *rj)
{
	const char *filters[AGENT_LABELS_MAX + 2] = {"slipway.run"};
	size_t n = 1;
	for (size_t i = 0; rj->o.a->set.labels[i] && n < AGENT_LABELS_MAX + 1; i++)
		filters[n++] = rj->o.a->set.labels[i];
	filters[n] = NULL;
	rj->leftover_list = docker_container_list(rj->o.a->docker, 1, filters, 0, on_leftovers, rj);
}

struct runjobs *runjob_new(const struct runjob_opts *opts, struct err *err)
{
	struct runjobs *rj = calloc(1, sizeof *rj);
	if (!rj) {
		err_set(err, "out of memory");
		return NULL;
	}
	rj->o = *opts;
	if (rj->o.tick_ms <= 0)
		rj->o.tick_ms = TICK_MS;
	if (rj->o.drain_ms <= 0)
		rj->o.drain_ms = RUNJOB_DRAIN_MS;
	return rj;
}

void runjob_free(struct runjobs *rj)
{
	if (!rj)
		return;
	while (rj->runs) {
		rj->runs->extending = false; /* the client is gone: no callback comes */
		run_free(rj->runs);
	}
	while (rj->leftovers) {
		if (rj->leftovers->call)
			docker_cancel(rj->o.a->docker, rj->leftovers->call);
		leftover_free(rj->leftovers);
	}
	if (rj->leftover_list)
		docker_cancel(rj->o.a->docker, rj->leftover_list);
	free(rj);
}
