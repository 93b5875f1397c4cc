#include "awsmode.h"

#include <ev.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "autoscaling.h"
#include "aws_credentials.h"
#include "clock.h"
#include "config.h"
#include "docker.h"
#include "imds.h"
#include "imdsblock.h"
#include "lifecycle.h"
#include "log.h"
#include "logship.h"
#include "proxy_client.h"
#include "sigv4.h"
#include "sts.h"

#define TICK_S 0.1
#define FLIP_RETRY_S 1.0
#define DOCKER_LIST_TIMEOUT_MS 15000
#define REGION_PATH "/latest/meta-data/placement/region"

struct proof_ask {
	struct proof_ask *next;
	struct awsmode *m;
	coord_proof_fn ready;
	void *arg;
};

struct stop_call {
	struct awsmode *m;
	uint64_t id;
};

enum step_kind { STEP_NONE, STEP_UNHEALTHY, STEP_DRAIN, STEP_STOP, STEP_FLUSH };

struct awsmode {
	struct agent *a;
	/* identity */
	bool identity;
	struct sigv4_signer signer;
	char sts_endpoint[512];
	char server[256];
	struct proof_ask *asks;
	/* block and scale-in */
	struct imdsblock *block;
	struct lifecycle *lc;
	/* the step in progress */
	enum step_kind kind;
	uint64_t step;
	int64_t deadline_mono;
	ev_timer tick;
	uint64_t proxy_call;
	uint64_t list_call;
	struct stop_call *stops;
	size_t nstops, stops_pending;
	char (*stopped)[72];      /* containers the stop step stopped */
	size_t nstopped;
};

/* ---- settings ---- */

static const char *opt_str(const struct config *c, const char *key)
{
	return config_has(c, key) && *config_str(c, key) ? config_str(c, key) : NULL;
}

int awsmode_check(const struct config *c, struct err *err)
{
	bool identity = config_bool(c, "coordinator.aws_identity");
	if (!identity && !opt_str(c, "coordinator.bootstrap_token"))
		return err_set(err, "coordinator.bootstrap_token: required unless "
			       "coordinator.aws_identity is true");
	if (config_bool(c, "lifecycle.enabled")) {
		const char *group = opt_str(c, "lifecycle.group_name");
		struct autoscaling_lifecycle l = {group ? group : "g",
						  config_str(c, "lifecycle.hook_name"),
						  "i-0", NULL, NULL};
		if (autoscaling_check_lifecycle(&l, 1, err) < 0)
			return -1;
	}
	const char *addr = config_str(c, "metadata.address");
	if (strspn(addr, "0123456789.") != strlen(addr) || !*addr)
		return err_set(err, "metadata.address: \"%s\" is not an IPv4 address", addr);
	return 0;
}

/* ---- the region ---- */

struct region_lookup {
	bool done;
	char region[64];
	char why[ERR_MSG_MAX];
};

static void on_region(const struct imds_result *r, void *arg)
{
	struct region_lookup *l = arg;
	l->done = true;
	size_t n = r->body_len;
	while (n > 0 && (r->body[n - 1] == '\n' || r->body[n - 1] == ' ' || r->body[n - 1] == '\r'))
		n--;
	if (r->error)
		snprintf(l->why, sizeof l->why, "%s", r->error);
	else if (r->status != 200 || n == 0 || n >= sizeof l->region ||
		 strspn(r->body, "abcdefghijklmnopqrstuvwxyz0123456789-") < n)
		snprintf(l->why, sizeof l->why, "HTTP %ld, \"%.40s\"", r->status, r->body);
	else
		snprintf(l->region, sizeof l->region, "%.*s", (int)n, r->body);
}

static int resolve_region(struct agent *a, char *out, size_t cap, struct err *err)
{
	const char *r = opt_str(a->cfg, "aws.region");
	if (!r)
		r = opt_str(a->cfg, "cloudwatch.region");
	if (r) {
		snprintf(out, cap, "%s", r);
		return 0;
	}
	struct region_lookup l = {0};
	if (imds_disabled())
		return err_set(err, "aws.region: not set, and AWS_EC2_METADATA_DISABLED is true");
	struct imds *m = imds_new(a->http, NULL, err);
	if (!m)
		return -1;
	if (imds_get(m, REGION_PATH, on_region, &l) < 0)
		snprintf(l.why, sizeof l.why, "could not start the request");
	else
		while (!l.done)
			ev_run(a->loop, EVRUN_ONCE);
	imds_free(m);
	if (!l.region[0])
		return err_set(err, "aws.region: not set, and the instance metadata did not tell "
			       "(%s)", l.why);
	snprintf(out, cap, "%s", l.region);
	log_info("awsmode.region", "region=%s (from the instance metadata)", out);
	return 0;
}

/* ---- identity proofs ---- */

static void ask_free(struct awsmode *m, struct proof_ask *k)
{
	for (struct proof_ask **pp = &m->asks; *pp; pp = &(*pp)->next) {
		if (*pp == k) {
			*pp = k->next;
			break;
		}
	}
	free(k);
}

static void on_creds(const struct aws_credentials *creds, const char *error, void *arg)
{
	struct proof_ask *k = arg;
	struct awsmode *m = k->m;
	coord_proof_fn ready = k->ready;
	void *rarg = k->arg;
	ask_free(m, k);
	if (!creds) {
		log_warn("awsmode.no_credentials", "error=\"%s\"", error ? error : "");
		ready(rarg, NULL, error ? error : "no AWS credentials");
		return;
	}
	struct sts_proof p = {0};
	struct err err = {{0}};
	if (sts_presign_identity(&m->signer, creds, m->sts_endpoint, m->server,
				 AWSMODE_PROOF_EXPIRES_S, 0, &p, &err) < 0) {
		log_error("awsmode.presign_failed", "error=\"%s\"", err.msg);
		ready(rarg, NULL, err.msg);
		return;
	}
	cJSON *doc = sts_proof_json(&p);
	sts_proof_free(&p);
	log_info("awsmode.identity_proof", "credentials=%s server=%s", creds->source, m->server);
	ready(rarg, doc, doc ? NULL : "out of memory");
	cJSON_Delete(doc);
}

static void prove(void *ctx, coord_proof_fn ready, void *arg)
{
	struct awsmode *m = ctx;
	struct proof_ask *k = calloc(1, sizeof *k);
	if (!k) {
		ready(arg, NULL, "out of memory"); /* the client retries later */
		return;
	}
	k->m = m;
	k->ready = ready;
	k->arg = arg;
	k->next = m->asks;
	m->asks = k;
	aws_credentials_get(m->a->aws, on_creds, k);
}

static void prove_cancel(void *ctx, void *arg)
{
	struct awsmode *m = ctx;
	for (struct proof_ask *k = m->asks; k; k = k->next) {
		if (k->arg == arg) {
			aws_credentials_cancel(m->a->aws, on_creds, k);
			ask_free(m, k);
			return;
		}
	}
}

struct coord_prover awsmode_prover(struct awsmode *m)
{
	struct coord_prover p = {0};
	if (m && m->identity) {
		p.prove = prove;
		p.cancel = prove_cancel;
		p.ctx = m;
	}
	return p;
}

/* ---- the scale-in steps (agent/lifecycle.h) ---- */

static void step_report(struct awsmode *m)
{
	uint64_t step = m->step;
	m->kind = STEP_NONE;
	ev_timer_stop(m->a->loop, &m->tick);
	lifecycle_step_done(m->lc, step);
}

static void tick_in(struct awsmode *m, double s)
{
	ev_timer_stop(m->a->loop, &m->tick);
	ev_timer_set(&m->tick, s, 0.0);
	ev_timer_start(m->a->loop, &m->tick);
}

static void stop_calls_clear(struct awsmode *m);

static void begin_step(struct awsmode *m, enum step_kind kind, uint64_t step, int64_t timeout)
{
	/* A step passed by (its guard ran out) leaves nothing behind. */
	if (m->proxy_call)
		proxy_client_cancel(m->a->proxy, m->proxy_call);
	m->proxy_call = 0;
	stop_calls_clear(m);
	m->kind = kind;
	m->step = step;
	m->deadline_mono = clock_mono_ms() + timeout;
}

/* 1. unhealthy */

static void flip_proxy(struct awsmode *m);

static void on_flipped(const struct proxy_result *res, void *arg)
{
	struct awsmode *m = arg;
	m->proxy_call = 0;
	if (res->error) {
		log_warn("awsmode.health_flip_failed", "error=\"%s\": trying again", res->error);
		tick_in(m, FLIP_RETRY_S);
		return;
	}
	log_info("awsmode.unhealthy", "the proxy's health endpoint answers 503");
	step_report(m);
}

static void flip_proxy(struct awsmode *m)
{
	m->proxy_call = proxy_client_set_draining(m->a->proxy, true, on_flipped, m);
	if (!m->proxy_call)
		tick_in(m, FLIP_RETRY_S);
}

static void step_unhealthy(void *ctx, struct lifecycle *lc, uint64_t step)
{
	struct awsmode *m = ctx;
	(void)lc;
	begin_step(m, STEP_UNHEALTHY, step, 0);
	coord_client_set_draining(m->a->coord, true);
	flip_proxy(m);
}

/* 2. drain: the proxy's requests in flight finish */

static int64_t count_inflight(const struct proxy_backend_state *b, size_t n)
{
	int64_t sum = 0;
	for (size_t i = 0; i < n; i++)
		sum += b[i].inflight > 0 ? b[i].inflight : 0;
	return sum;
}

static void on_reflipped(const struct proxy_result *res, void *arg)
{
	struct awsmode *m = arg;
	m->proxy_call = 0;
	if (res->error)
		log_warn("awsmode.health_flip_failed", "error=\"%s\"", res->error);
	tick_in(m, TICK_S);
}

static void on_routes(const struct proxy_result *res, const struct proxy_route_state *routes,
		      size_t count, bool draining, void *arg)
{
	struct awsmode *m = arg;
	m->proxy_call = 0;
	if (!res->error && !draining) {
		/* A proxy started since (a crash, an upgrade) serves health 200 again. */
		log_warn("awsmode.health_reflip", "the proxy is not draining: 503 again");
		m->proxy_call = proxy_client_set_draining(m->a->proxy, true, on_reflipped, m);
		if (m->proxy_call)
			return;
	}
	int64_t inflight = 0;
	for (size_t i = 0; !res->error && i < count; i++)
		inflight += count_inflight(routes[i].backends, routes[i].backend_count) +
			    count_inflight(routes[i].retired, routes[i].retired_count);
	if (!res->error && inflight == 0) {
		log_info("awsmode.drained", "routes=%zu: no request in flight", count);
		step_report(m);
		return;
	}
	if (clock_mono_ms() >= m->deadline_mono) {
		log_warn("awsmode.drain_timeout", "in_flight=%" PRId64 " error=\"%s\": going on",
			 inflight, res->error ? res->error : "");
		step_report(m);
		return;
	}
	tick_in(m, TICK_S);
}

static void poll_routes(struct awsmode *m)
{
	m->proxy_call = proxy_client_routes(m->a->proxy, on_routes, m);
	if (!m->proxy_call)
		tick_in(m, TICK_S);
}

static void step_drain(void *ctx, struct lifecycle *lc, uint64_t step, int64_t timeout_ms)
{
	struct awsmode *m = ctx;
	(void)lc;
	begin_step(m, STEP_DRAIN, step, timeout_ms);
	poll_routes(m);
}

/* 3. stop every managed container */

static void stop_calls_clear(struct awsmode *m)
{
	if (m->list_call)
		docker_cancel(m->a->docker, m->list_call);
	m->list_call = 0;
	for (size_t i = 0; i < m->nstops; i++)
		if (m->stops[i].id)
			docker_cancel(m->a->docker, m->stops[i].id);
	free(m->stops);
	m->stops = NULL;
	m->nstops = m->stops_pending = 0;
}

static void on_stopped(const struct docker_result *res, void *arg)
{
	struct stop_call *sc = arg;
	struct awsmode *m = sc->m;
	sc->id = 0;
	if (res->error != DOCKER_OK && res->status != 304)
		log_warn("awsmode.stop_failed", "status=%ld error=\"%s\"", res->status,
			 res->message);
	if (--m->stops_pending == 0) {
		stop_calls_clear(m);
		log_info("awsmode.stopped", "containers=%zu", m->nstopped);
		step_report(m);
	}
}

/* Ours by name too (<name_prefix>-...): agents that share an engine and the
 * labels (tests do) stop only their own containers. */
static bool named_mine(const struct awsmode *m, const cJSON *names)
{
	char prefix[80];
	snprintf(prefix, sizeof prefix, "/%s-", m->a->set.name_prefix);
	const cJSON *n;
	cJSON_ArrayForEach(n, names)
		if (cJSON_IsString(n) && strncmp(n->valuestring, prefix, strlen(prefix)) == 0)
			return true;
	return false;
}

static void on_listed(const struct docker_result *res, void *arg)
{
	struct awsmode *m = arg;
	m->list_call = 0;
	stop_calls_clear(m);
	if (res->error != DOCKER_OK || !cJSON_IsArray(res->json)) {
		log_error("awsmode.list_failed", "error=\"%s\": no container stopped",
			  res->message);
		step_report(m);
		return;
	}
	size_t n = (size_t)cJSON_GetArraySize(res->json);
	free(m->stopped);
	m->stopped = n ? calloc(n, sizeof *m->stopped) : NULL;
	m->stops = n ? calloc(n, sizeof *m->stops) : NULL;
	m->nstopped = 0;
	if (n && (!m->stopped || !m->stops)) {
		log_error("awsmode.oom", "step=stop");
		step_report(m);
		return;
	}
	int64_t left = m->deadline_mono - clock_mono_ms();
	const cJSON *c;
	cJSON_ArrayForEach(c, res->json) {
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(c, "Id");
		if (!cJSON_IsString(id) || strlen(id->valuestring) >= sizeof m->stopped[0] ||
		    !named_mine(m, cJSON_GetObjectItemCaseSensitive(c, "Names")))
			continue;
		snprintf(m->stopped[m->nstopped++], sizeof m->stopped[0], "%s", id->valuestring);
		/* -1: the container's own StopTimeout (its service's stop grace) */
		struct stop_call *sc = &m->stops[m->nstops++];
		sc->m = m;
		sc->id = docker_container_stop(m->a->docker, id->valuestring, -1, NULL,
					       left > 0 ? left : 1000, on_stopped, sc);
		if (sc->id)
			m->stops_pending++;
	}
	log_info("awsmode.stopping", "containers=%zu", m->nstopped);
	if (m->stops_pending == 0) {
		stop_calls_clear(m);
		step_report(m);
	}
}

static void step_stop(void *ctx, struct lifecycle *lc, uint64_t step, int64_t timeout_ms)
{
	struct awsmode *m = ctx;
	(void)lc;
	begin_step(m, STEP_STOP, step, timeout_ms);
	stop_calls_clear(m);
	const char *filters[AGENT_LABELS_MAX + 2];
	size_t n = 0;
	filters[n++] = "slipway.app";
	for (size_t i = 0; m->a->set.labels[i] && n < AGENT_LABELS_MAX + 1; i++)
		filters[n++] = m->a->set.labels[i];
	filters[n] = NULL;
	m->list_call = docker_container_list(m->a->docker, 0, filters, DOCKER_LIST_TIMEOUT_MS,
					     on_listed, m);
	if (!m->list_call) {
		log_error("awsmode.list_failed", "error=\"could not start the request\"");
		step_report(m);
	}
}

/* 4. flush: the stopped containers' output accepted, nothing spooled or held */

static bool logs_flushed(struct awsmode *m, struct logship_stats *st)
{
	struct logship *ls = m->a->logship;
	memset(st, 0, sizeof *st);
	if (!ls)
		return true;
	bool all = true;
	for (size_t i = 0; i < m->nstopped; i++)
		all &= logship_drained(ls, m->stopped[i]); /* asks every one: reads start */
	logship_stats(ls, st);
	return all && st->spool_files == 0 && st->memory_bytes == 0;
}

static void check_flush(struct awsmode *m)
{
	struct logship_stats st;
	if (logs_flushed(m, &st)) {
		log_info("awsmode.logs_flushed", "events_shipped=%" PRIu64 " containers=%zu",
			 st.events_shipped, m->nstopped);
		step_report(m);
		return;
	}
	if (clock_mono_ms() >= m->deadline_mono) {
		log_error("awsmode.flush_timeout", "spool_files=%" PRIu64 " memory_bytes=%" PRIu64
			  " destination_down=%s: going on; these lines are lost with the instance",
			  st.spool_files, st.memory_bytes, st.destination_down ? "yes" : "no");
		step_report(m);
		return;
	}
	tick_in(m, TICK_S);
}

static void step_flush(void *ctx, struct lifecycle *lc, uint64_t step, int64_t timeout_ms)
{
	struct awsmode *m = ctx;
	(void)lc;
	begin_step(m, STEP_FLUSH, step, timeout_ms);
	check_flush(m);
}

static void on_tick(struct ev_loop *loop, ev_timer *t, int revents)
{
	(void)loop;
	(void)revents;
	struct awsmode *m = t->data;
	switch (m->kind) {
	case STEP_UNHEALTHY:
		flip_proxy(m);
		return;
	case STEP_DRAIN:
		poll_routes(m);
		return;
	case STEP_FLUSH:
		check_flush(m);
		return;
	case STEP_STOP:
	case STEP_NONE:
		return;
	}
}

/* ---- setup ---- */

static void server_of_url(const char *url, char *out, size_t cap)
{
	const char *u = strstr(url, "://");
	u = u ? u + 3 : url;
	size_t n = strcspn(u, "/?#");
	snprintf(out, cap, "%.*s", (int)(n < cap ? n : 0), u);
}

/* metadata.block = auto: on EC2, which the instance id read from the metadata
 * tells, and so do the settings of AWS mode (the stack's user data names the
 * instance id itself, and then IMDS is never asked). */
static bool block_wanted(const struct config *c, bool on_ec2)
{
	const char *mode = config_str(c, "metadata.block");
	if (strcmp(mode, "auto") != 0)
		return strcmp(mode, "on") == 0;
	return on_ec2 || config_bool(c, "coordinator.aws_identity") ||
	       config_bool(c, "lifecycle.enabled");
}

static int start_block(struct awsmode *m, bool on_ec2, struct err *err)
{
	const struct config *c = m->a->cfg;
	const char *mode = config_str(c, "metadata.block");
	bool on = block_wanted(c, on_ec2);
	if (!on) {
		log_info("awsmode.metadata_block", "mode=%s: off (containers may reach the "
			 "instance metadata service)", mode);
		return 0;
	}
	struct imdsblock_opts o = {
		.loop = m->a->loop,
		.docker = m->a->docker,
		.network = m->a->set.network,
		.address = config_str(c, "metadata.address"),
		.iptables = config_str(c, "metadata.iptables"),
	};
	if (!(m->block = imdsblock_new(&o, err)))
		return -1;
	log_info("awsmode.metadata_block", "mode=%s: on (address=%s network=%s)", mode, o.address,
		 o.network);
	return 0;
}

static int start_lifecycle(struct awsmode *m, const char *region, const char *instance_id,
			   bool on_ec2, struct err *err)
{
	const struct config *c = m->a->cfg;
	struct lifecycle_opts o = {
		.loop = m->a->loop,
		.http = m->a->http,
		.creds = m->a->aws,
		.region = region,
		.autoscaling_endpoint = opt_str(c, "aws.autoscaling_endpoint"),
		.ca_file = opt_str(c, "aws.ca_file"),
		.group_name = opt_str(c, "lifecycle.group_name"),
		.hook_name = config_str(c, "lifecycle.hook_name"),
		/* Auto Scaling knows the instance by its EC2 id: the configured one only
		 * when it came from the metadata or looks like one; else ask IMDS. */
		.instance_id = on_ec2 || strncmp(instance_id, "i-", 2) == 0 ? instance_id : NULL,
		.watch_spot = config_bool(c, "lifecycle.watch_spot"),
		.poll_interval_ms = config_ms(c, "lifecycle.poll_interval"),
		.deregistration_delay_ms = config_ms(c, "lifecycle.deregistration_delay"),
		.drain_timeout_ms = config_ms(c, "lifecycle.drain_timeout"),
		.stop_timeout_ms = config_ms(c, "lifecycle.stop_timeout"),
		.log_flush_timeout_ms = config_ms(c, "lifecycle.log_flush_timeout"),
		.heartbeat_interval_ms = config_ms(c, "lifecycle.heartbeat_interval"),
		.steps = {.unhealthy = step_unhealthy, .drain = step_drain, .stop = step_stop,
			  .flush_logs = step_flush, .ctx = m},
	};
	if (!(m->lc = lifecycle_new(&o, err)))
		return -1;
	return 0;
}

int awsmode_new(struct agent *a, const char *instance_id, bool on_ec2, struct err *err)
{
	const struct config *c = a->cfg;
	bool identity = config_bool(c, "coordinator.aws_identity");
	bool lifecycle = config_bool(c, "lifecycle.enabled");
	a->awsmode = NULL;
	if (awsmode_check(c, err) < 0)
		return -1;
	if (!identity && !lifecycle && !block_wanted(c, on_ec2))
		return 0;
	struct awsmode *m = calloc(1, sizeof *m);
	if (!m)
		return err_set(err, "out of memory");
	m->a = a;
	ev_timer_init(&m->tick, on_tick, 0.0, 0.0);
	m->tick.data = m;
	a->awsmode = m;
	char region[64] = "";
	if (identity || lifecycle) {
		if (resolve_region(a, region, sizeof region, err) < 0)
			goto fail;
		if (!a->aws && !(a->aws = aws_credentials_new(a->loop, a->http, NULL, err)))
			goto fail;
	}
	if (identity) {
		if (sigv4_signer_init(&m->signer, region, STS_SERVICE, NULL, err) < 0)
			goto fail;
		m->identity = true;
		const char *ep = opt_str(c, "aws.sts_endpoint");
		const char *server = opt_str(c, "aws.server_id");
		if (ep)
			snprintf(m->sts_endpoint, sizeof m->sts_endpoint, "%s", ep);
		else
			snprintf(m->sts_endpoint, sizeof m->sts_endpoint,
				 "https://sts.%s.amazonaws.com", region);
		if (server)
			snprintf(m->server, sizeof m->server, "%s", server);
		else
			server_of_url(config_str(c, "coordinator.url"), m->server,
				      sizeof m->server);
		log_info("awsmode.identity", "sts_endpoint=%s server=%s region=%s: registering "
			 "with a presigned sts:GetCallerIdentity", m->sts_endpoint, m->server,
			 region);
	}
	if (start_block(m, on_ec2, err) < 0)
		goto fail;
	if (lifecycle && start_lifecycle(m, region, instance_id, on_ec2, err) < 0)
		goto fail;
	return 0;
fail:
	awsmode_free(m);
	a->awsmode = NULL;
	return -1;
}

void awsmode_start(struct awsmode *m)
{
	if (!m)
		return;
	imdsblock_start(m->block);
	lifecycle_start(m->lc);
}

void awsmode_container_started(struct awsmode *m, const char *container_id)
{
	if (m)
		imdsblock_container_started(m->block, container_id);
}

void awsmode_container_stopped(struct awsmode *m, const char *container_id)
{
	if (m)
		imdsblock_container_stopped(m->block, container_id);
}

void awsmode_free(struct awsmode *m)
{
	if (!m)
		return;
	lifecycle_free(m->lc);
	m->lc = NULL;
	if (m->proxy_call)
		proxy_client_cancel(m->a->proxy, m->proxy_call);
	stop_calls_clear(m);
	ev_timer_stop(m->a->loop, &m->tick);
	while (m->asks) {
		aws_credentials_cancel(m->a->aws, on_creds, m->asks);
		ask_free(m, m->asks);
	}
	imdsblock_free(m->block);
	free(m->stopped);
	if (m->identity)
		sigv4_signer_clear(&m->signer);
	free(m);
}
