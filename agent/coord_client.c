#include "coord_client.h"

#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "backoff.h"
#include "buf.h"
#include "clock.h"
#include "dlist.h"
#include "http_client.h"
#include "journal.h"
#include "json.h"
#include "log.h"
#include "spec.h"
#include "worker.h"

#define IDENTITY_MAX ((size_t)16 << 10)
#define TOKEN_MAX 512
#define REQUEST_TIMEOUT_MS 30000
#define POLL_MARGIN_MS 15000
#define UNREACHABLE_LOG_MS 60000

enum kind { K_REGISTER, K_HEARTBEAT, K_POLL, K_EXTEND, K_ACK, K_INVENTORY, K_DESIRED, K_COUNT };

static const char *const kind_names[K_COUNT] = {
	"register", "heartbeat", "poll", "extend", "ack", "inventory", "desired"};

struct creq {
	struct creq *prev, *next;
	struct coord_client *cc;
	enum kind kind;
	const char *method;
	char suffix[256];            /* path after /v1/agents/{agent_id} */
	char *body;                  /* NULL: none, or built at send time */
	size_t body_len;
	uint64_t http_id;
	ev_timer timer;              /* retry delay */
	int failures;
	bool parked;                 /* waits for a registration */
	bool proving;                /* registration: the prover's answer is awaited */
	bool proof_ready;            /* registration: the body carries a fresh proof */
	bool await_probe;            /* a job-scoped 404: a heartbeat decides */
	deployer_reply_fn reply;
	coord_desired_fn desired;
	void *arg;
};

struct coord_client {
	struct ev_loop *loop;
	struct http_client *http;
	struct worker_pool *workers;
	char *url;
	char *ca_file;
	char *bootstrap;
	char identity_path[PATH_MAX];
	char *instance_id, *hostname, *fleet, *version;
	char arch[32];
	struct coord_client_opts cb;    /* callbacks and arg */
	int64_t retry_base_ms, retry_cap_ms;
	int64_t poll_wait_override_s;

	char agent_id[SPEC_ID_MAX + 1];
	char token[TOKEN_MAX + 1];
	char auth_header[TOKEN_MAX + 32];
	int64_t heartbeat_s, lost_after_s, lease_s, poll_wait_s;
	bool registered;
	/* queue.backend = sqs: the registration named the agent's SQS queue, and
	 * jobs come from there (agent/sqsqueue.h) instead of the long poll */
	char queue_url[1024];
	char queue_region[64];
	bool started;
	int64_t started_mono;
	bool draining;

	struct creq *reqs;              /* every live request */
	struct creq *registering;
	struct creq *poll;
	struct creq *heartbeat;
	struct creq *inventory;         /* in flight or waiting to retry */
	char *inventory_next;           /* newer document to send after it */
	ev_timer hb_timer;
	int64_t last_unreachable_log[K_COUNT];
	bool unreachable[K_COUNT];
};

static void send_req(struct creq *r);
static void ensure_register(struct coord_client *cc);

/* ---- request objects ---- */

static void on_retry_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	send_req(w->data);
}

static struct creq *new_req(struct coord_client *cc, enum kind kind, const char *method,
			    const char *suffix)
{
	struct creq *r = calloc(1, sizeof *r);
	if (!r)
		return NULL;
	r->cc = cc;
	r->kind = kind;
	r->method = method;
	snprintf(r->suffix, sizeof r->suffix, "%s", suffix);
	ev_timer_init(&r->timer, on_retry_timer, 0.0, 0.0);
	r->timer.data = r;
	DLIST_PUSH(cc->reqs, r);
	return r;
}

static void free_req(struct creq *r)
{
	struct coord_client *cc = r->cc;
	if (r->http_id)
		http_client_cancel(cc->http, r->http_id);
	if (r->proving && cc->cb.prover.cancel)
		cc->cb.prover.cancel(cc->cb.prover.ctx, r);
	ev_timer_stop(cc->loop, &r->timer);
	DLIST_UNLINK(cc->reqs, r);
	if (cc->registering == r)
		cc->registering = NULL;
	if (cc->poll == r)
		cc->poll = NULL;
	if (cc->heartbeat == r)
		cc->heartbeat = NULL;
	if (cc->inventory == r)
		cc->inventory = NULL;
	free(r->body);
	free(r);
}

static void set_body(struct creq *r, cJSON *doc)
{
	free(r->body);
	r->body = doc ? cJSON_PrintUnformatted(doc) : NULL;
	r->body_len = r->body ? strlen(r->body) : 0;
	cJSON_Delete(doc);
}

/* ---- logging an outage once a minute ---- */

static void note_failure(struct coord_client *cc, enum kind k, const char *what, int64_t delay)
{
	int64_t now = clock_mono_ms();
	if (!cc->unreachable[k] || now - cc->last_unreachable_log[k] >= UNREACHABLE_LOG_MS) {
		log_warn("coord.unreachable", "request=%s error=\"%s\" retry_ms=%lld%s", kind_names[k],
			 what, (long long)delay, cc->unreachable[k] ? " (still)" : "");
		cc->last_unreachable_log[k] = now;
	} else {
		log_debug("coord.retry", "request=%s error=\"%s\" retry_ms=%lld", kind_names[k],
			  what, (long long)delay);
	}
	cc->unreachable[k] = true;
}

static void note_success(struct coord_client *cc, enum kind k)
{
	if (cc->unreachable[k])
		log_info("coord.reachable", "request=%s", kind_names[k]);
	cc->unreachable[k] = false;
}

static void retry_later(struct creq *r, int64_t delay_ms, const char *what)
{
	struct coord_client *cc = r->cc;
	if (delay_ms < 0) {
		struct backoff_policy p = {.base_ms = cc->retry_base_ms, .cap_ms = cc->retry_cap_ms};
		delay_ms = backoff_delay(&p, ++r->failures);
	}
	note_failure(cc, r->kind, what, delay_ms);
	ev_timer_set(&r->timer, (double)delay_ms / 1000.0, 0.0);
	ev_timer_start(cc->loop, &r->timer);
}

/* Waits for a registration, then is sent again. */
static void park(struct creq *r)
{
	r->parked = true;
	ensure_register(r->cc);
}

static void resend_parked(struct coord_client *cc)
{
	for (struct creq *r = cc->reqs; r; r = r->next) {
		if (r->parked) {
			r->parked = false;
			r->await_probe = false;
			ev_timer_stop(cc->loop, &r->timer);
			/* On the next loop turn: sending here could free r inside the walk. */
			ev_timer_set(&r->timer, 0.0, 0.0);
			ev_timer_start(cc->loop, &r->timer);
		}
	}
}

static int64_t retry_after_ms(const struct http_response *resp)
{
	const char *v = http_response_header(resp, "Retry-After");
	if (!v)
		return -1;
	char *end;
	long s = strtol(v, &end, 10);
	if (end == v || *end || s < 0)
		return -1;
	return s > 3600 ? 3600000 : s * 1000;
}

/* The error code of a protocol error body, or "". */
static void error_code(const struct http_response *resp, char *code, size_t cap, char *msg,
		       size_t mcap)
{
	code[0] = msg[0] = '\0';
	cJSON *doc = json_parse(resp->body, resp->body_len, HTTP_DEFAULT_MAX_BODY, NULL);
	const cJSON *e = cJSON_GetObjectItemCaseSensitive(doc, "error");
	const cJSON *c = cJSON_GetObjectItemCaseSensitive(e, "code");
	const cJSON *m = cJSON_GetObjectItemCaseSensitive(e, "message");
	if (cJSON_IsString(c))
		snprintf(code, cap, "%s", c->valuestring);
	if (cJSON_IsString(m))
		snprintf(msg, mcap, "%s", m->valuestring);
	cJSON_Delete(doc);
}

static void reply(struct creq *r, enum deployer_reply rep)
{
	if (r->reply)
		r->reply(rep, r->arg);
}

/* ---- kinds: what to do with an answer ---- */

static void handle_register(struct creq *r, const struct http_response *resp);
static void handle_poll(struct creq *r, const struct http_response *resp);
static void heartbeat_succeeded(struct coord_client *cc);

static void handle_ok(struct creq *r, const struct http_response *resp)
{
	struct coord_client *cc = r->cc;
	switch (r->kind) {
	case K_REGISTER:
		handle_register(r, resp);
		return;
	case K_POLL:
		handle_poll(r, resp);
		return;
	case K_HEARTBEAT:
		free_req(r);
		heartbeat_succeeded(cc);
		return;
	case K_EXTEND:
	case K_ACK:
		reply(r, DEPLOYER_REPLY_OK);
		free_req(r);
		return;
	case K_INVENTORY:
		free_req(r);
		if (cc->inventory_next) {
			char *next = cc->inventory_next;
			cc->inventory_next = NULL;
			struct creq *n = new_req(cc, K_INVENTORY, "PUT", "/inventory");
			if (!n) {
				free(next);
				return;
			}
			n->body = next;
			n->body_len = strlen(next);
			cc->inventory = n;
			send_req(n);
		}
		return;
	case K_DESIRED: {
		cJSON *doc = json_parse(resp->body, resp->body_len, SPEC_POLL_MAX, NULL);
		const cJSON *apps = cJSON_GetObjectItemCaseSensitive(doc, "apps");
		if (r->desired)
			r->desired(cJSON_IsArray(apps) ? apps : NULL, r->arg);
		cJSON_Delete(doc);
		free_req(r);
		return;
	}
	case K_COUNT:
		break;
	}
	free_req(r);
}

/* A definitive refusal: logged, reported, dropped (the poll goes on). */
static void handle_final(struct creq *r, const struct http_response *resp, const char *code,
			 const char *msg)
{
	struct coord_client *cc = r->cc;
	/* A lost lease is part of the protocol's normal life: a warning. */
	log_msg(resp->status == 410 ? LOG_LEVEL_WARN : LOG_LEVEL_ERROR, "coord.refused",
		"request=%s path=%s status=%ld code=%s message=\"%s\"", kind_names[r->kind],
		r->suffix[0] ? r->suffix : "/register", resp->status, code, msg);
	if (r->kind == K_REGISTER || r->kind == K_POLL) {
		/* Never give up on these: a fixed coordinator or config comes back. */
		struct backoff_policy p = {.base_ms = cc->retry_cap_ms, .cap_ms = cc->retry_cap_ms};
		ev_timer_set(&r->timer, (double)backoff_delay(&p, 1) / 1000.0 + 1.0, 0.0);
		ev_timer_start(cc->loop, &r->timer);
		return;
	}
	if (r->kind == K_DESIRED && r->desired)
		r->desired(NULL, r->arg);
	if (r->kind == K_EXTEND && resp->status == 410) {
		reply(r, DEPLOYER_REPLY_LEASE_LOST);
	} else if (r->kind == K_ACK && resp->status == 410) {
		reply(r, DEPLOYER_REPLY_LEASE_LOST);
	} else {
		reply(r, DEPLOYER_REPLY_FINAL);
	}
	free_req(r);
}

static void on_http_done(const struct http_response *resp, void *arg)
{
	struct creq *r = arg;
	struct coord_client *cc = r->cc;
	r->http_id = 0;
	if (r->kind != K_POLL && r->kind != K_HEARTBEAT)
		log_debug("coord.answer", "request=%s status=%ld error=\"%s\" ms=%lld",
			  kind_names[r->kind], resp->status, resp->error_msg,
			  (long long)resp->elapsed_ms);
	if (resp->error != HTTP_OK) {
		if (r->kind == K_EXTEND) {
			reply(r, DEPLOYER_REPLY_RETRY);
			free_req(r);
			return;
		}
		if (r->kind == K_HEARTBEAT) {
			note_failure(cc, r->kind, resp->error_msg, cc->heartbeat_s * 1000);
			free_req(r);
			return;
		}
		retry_later(r, -1, resp->error_msg);
		return;
	}
	long st = resp->status;
	if (st >= 200 && st < 300) {
		r->failures = 0;
		note_success(cc, r->kind);
		handle_ok(r, resp);
		return;
	}
	char code[64], msg[256], what[384];
	error_code(resp, code, sizeof code, msg, sizeof msg);
	snprintf(what, sizeof what, "HTTP %ld %s", st, code);
	if (st == 429 || st >= 500 || st == 408) {
		if (r->kind == K_EXTEND) {
			reply(r, DEPLOYER_REPLY_RETRY);
			free_req(r);
			return;
		}
		if (r->kind == K_HEARTBEAT) {
			note_failure(cc, r->kind, what, cc->heartbeat_s * 1000);
			free_req(r);
			return;
		}
		retry_later(r, st == 429 ? retry_after_ms(resp) : -1, what);
		return;
	}
	if (r->kind != K_REGISTER && (st == 401 || (st == 404 && r->kind != K_ACK &&
						    r->kind != K_EXTEND))) {
		log_warn("coord.identity_refused", "request=%s status=%ld code=%s: registering again",
			 kind_names[r->kind], st, code);
		cc->registered = false;
		if (r->kind == K_HEARTBEAT) {
			free_req(r);
			ensure_register(cc);
			return;
		}
		park(r);
		return;
	}
	if (st == 404 && (r->kind == K_ACK || r->kind == K_EXTEND) && !r->await_probe) {
		/* Unknown job, or unknown agent? A heartbeat tells. */
		r->await_probe = true;
		r->parked = true;
		if (!cc->heartbeat) {
			ev_feed_event(cc->loop, &cc->hb_timer, EV_TIMER);
		}
		return;
	}
	handle_final(r, resp, code, msg);
}

/* The prover's answer: the registration body gets the proof, then goes. */
static void on_proof(void *arg, const cJSON *proof, const char *error)
{
	struct creq *r = arg;
	r->proving = false;
	cJSON *body = r->body ? cJSON_Parse(r->body) : NULL;
	if (!proof || !body) {
		cJSON_Delete(body);
		retry_later(r, -1, proof ? "out of memory" : error ? error : "no identity proof");
		return;
	}
	cJSON_DeleteItemFromObjectCaseSensitive(body, "aws_identity");
	cJSON_AddItemToObject(body, "aws_identity", cJSON_Duplicate(proof, 1));
	set_body(r, body);
	r->proof_ready = true;
	send_req(r);
}

static void send_req(struct creq *r)
{
	struct coord_client *cc = r->cc;
	if (r->kind != K_REGISTER && !cc->registered) {
		park(r);
		return;
	}
	r->parked = false;
	bool prover = r->kind == K_REGISTER && cc->cb.prover.prove;
	if (prover && !r->proof_ready) {
		/* A fresh proof for every attempt: the coordinator takes each once. */
		r->proving = true;
		cc->cb.prover.prove(cc->cb.prover.ctx, on_proof, r);
		return;
	}
	r->proof_ready = false;
	struct buf url;
	buf_init(&url, 4096);
	if (r->kind == K_REGISTER)
		buf_printf(&url, "%s/v1/agents/register", cc->url);
	else
		buf_printf(&url, "%s/v1/agents/%s%s", cc->url, cc->agent_id, r->suffix);
	if (r->kind == K_HEARTBEAT) {
		cJSON *b = cJSON_CreateObject();
		cJSON_AddNumberToObject(b, "uptime_s",
					(double)((clock_mono_ms() - cc->started_mono) / 1000));
		cJSON_AddBoolToObject(b, "draining", cc->draining);
		cJSON *apps = cc->cb.heartbeat_apps ? cc->cb.heartbeat_apps(cc->cb.arg) : NULL;
		cJSON_AddItemToObject(b, "apps", apps ? apps : cJSON_CreateArray());
		set_body(r, b);
	}
	const char *auth = r->kind == K_REGISTER ? NULL : cc->auth_header;
	char boot[TOKEN_MAX + 32];
	if (r->kind == K_REGISTER && !prover) {
		snprintf(boot, sizeof boot, "Authorization: Bearer %s", cc->bootstrap);
		auth = boot;
	}
	const char *headers[] = {"Slipway-Protocol: 1", "Content-Type: application/json",
				 "Accept: application/json", auth, NULL};
	int64_t timeout = REQUEST_TIMEOUT_MS;
	size_t max_body = HTTP_DEFAULT_MAX_BODY;
	if (r->kind == K_POLL) {
		timeout = cc->poll_wait_s * 1000 + POLL_MARGIN_MS;
		max_body = SPEC_POLL_MAX;
	} else if (r->kind == K_DESIRED) {
		max_body = SPEC_POLL_MAX;
	}
	struct http_request req = {
		.method = r->method,
		.url = url.data,
		.headers = headers,
		.body = r->body,
		.body_len = r->body_len,
		.timeout_ms = timeout,
		.max_body = max_body,
		.ca_file = cc->ca_file,
		.on_done = on_http_done,
		.arg = r,
	};
	r->http_id = url.data ? http_client_start(cc->http, &req) : 0;
	if (r->kind != K_POLL && r->kind != K_HEARTBEAT)
		log_debug("coord.send", "request=%s %s id=%llu", kind_names[r->kind],
			  url.data ? url.data : "", (unsigned long long)r->http_id);
	buf_free(&url);
	if (!r->http_id)
		retry_later(r, -1, "could not start the request");
}

/* ---- registration and identity ---- */

struct identity_write {
	char path[PATH_MAX];
	char *text;
};

static void identity_work(void *arg)
{
	struct identity_write *w = arg;
	struct err err;
	if (journal_write_file(w->path, w->text, strlen(w->text), 0600, &err) < 0)
		log_error("coord.identity_write_failed", "error=\"%s\"", err.msg);
}

static void identity_done(void *arg)
{
	struct identity_write *w = arg;
	free(w->text);
	free(w);
}

static void save_identity(struct coord_client *cc)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "agent_id", cc->agent_id);
	cJSON_AddStringToObject(o, "token", cc->token);
	cJSON_AddStringToObject(o, "url", cc->url);
	cJSON_AddStringToObject(o, "instance_id", cc->instance_id);
	cJSON_AddNumberToObject(o, "heartbeat_interval_s", (double)cc->heartbeat_s);
	cJSON_AddNumberToObject(o, "lease_s", (double)cc->lease_s);
	cJSON_AddNumberToObject(o, "poll_wait_s", (double)cc->poll_wait_s);
	if (cc->queue_url[0]) {
		cJSON_AddStringToObject(o, "queue_url", cc->queue_url);
		cJSON_AddStringToObject(o, "queue_region", cc->queue_region);
	}
	struct identity_write *w = calloc(1, sizeof *w);
	if (w) {
		snprintf(w->path, sizeof w->path, "%s", cc->identity_path);
		w->text = cJSON_PrintUnformatted(o);
	}
	cJSON_Delete(o);
	if (!w || !w->text || !cc->workers ||
	    worker_submit(cc->workers, identity_work, identity_done, w) < 0) {
		log_error("coord.identity_write_failed", "error=\"could not queue the write\"");
		if (w)
			free(w->text);
		free(w);
	}
}

static void set_token(struct coord_client *cc, const char *agent_id, const char *token)
{
	if (cc->token[0])
		log_redact_remove(cc->token);
	snprintf(cc->agent_id, sizeof cc->agent_id, "%s", agent_id);
	snprintf(cc->token, sizeof cc->token, "%s", token);
	snprintf(cc->auth_header, sizeof cc->auth_header, "Authorization: Bearer %s", token);
	log_redact_add(cc->token);
}

static void start_heartbeats(struct coord_client *cc)
{
	ev_timer_stop(cc->loop, &cc->hb_timer);
	ev_timer_set(&cc->hb_timer, (double)cc->heartbeat_s, (double)cc->heartbeat_s);
	ev_timer_start(cc->loop, &cc->hb_timer);
}

static void start_poll(struct coord_client *cc);

static void handle_register(struct creq *r, const struct http_response *resp)
{
	struct coord_client *cc = r->cc;
	struct err err;
	const char *agent_id, *token, *qurl, *qregion;
	int64_t hb, lost, lease, wait;
	cJSON *doc = json_parse(resp->body, resp->body_len, HTTP_DEFAULT_MAX_BODY, &err);
	if (!doc || json_get_string(doc, NULL, "agent_id", SPEC_ID_MAX, &agent_id, &err) < 0 ||
	    json_get_string(doc, NULL, "token", TOKEN_MAX, &token, &err) < 0 ||
	    json_get_int_opt(doc, NULL, "heartbeat_interval_s", 1, 3600, 10, &hb, &err) < 0 ||
	    json_get_int_opt(doc, NULL, "lost_after_s", 1, 86400, 45, &lost, &err) < 0 ||
	    json_get_int_opt(doc, NULL, "lease_s", 1, 86400, 60, &lease, &err) < 0 ||
	    json_get_int_opt(doc, NULL, "poll_wait_s", 1, 30, 30, &wait, &err) < 0 ||
	    json_get_string_opt(doc, NULL, "queue_url", sizeof cc->queue_url - 1, "", &qurl,
				&err) < 0 ||
	    json_get_string_opt(doc, NULL, "queue_region", sizeof cc->queue_region - 1, "",
				&qregion, &err) < 0 ||
	    !spec_valid_id(agent_id) || !token[0]) {
		cJSON_Delete(doc);
		retry_later(r, -1, "registration answer is malformed");
		log_error("coord.register_bad_answer", "error=\"%s\"", err.msg);
		return;
	}
	set_token(cc, agent_id, token);
	cc->heartbeat_s = hb;
	cc->lost_after_s = lost;
	cc->lease_s = lease;
	cc->poll_wait_s = cc->poll_wait_override_s ? cc->poll_wait_override_s : wait;
	snprintf(cc->queue_url, sizeof cc->queue_url, "%s", qurl);
	snprintf(cc->queue_region, sizeof cc->queue_region, "%s", qregion);
	cJSON_Delete(doc);
	cc->registered = true;
	free_req(r);
	if (cc->queue_url[0] && cc->poll)
		free_req(cc->poll); /* jobs come from SQS now */
	log_info("coord.registered", "agent_id=%s heartbeat_s=%lld lease_s=%lld poll_wait_s=%lld",
		 cc->agent_id, (long long)hb, (long long)lease, (long long)cc->poll_wait_s);
	save_identity(cc);
	start_heartbeats(cc);
	resend_parked(cc);
	if (cc->started && !cc->poll && !cc->queue_url[0])
		start_poll(cc);
	if (cc->cb.on_queue)
		cc->cb.on_queue(cc->queue_url, cc->queue_region, cc->cb.arg);
	if (cc->cb.on_registered)
		cc->cb.on_registered(cc->cb.arg);
}

static void ensure_register(struct coord_client *cc)
{
	if (cc->registering)
		return;
	struct creq *r = new_req(cc, K_REGISTER, "POST", "");
	if (!r)
		return;
	cJSON *b = cJSON_CreateObject();
	cJSON_AddStringToObject(b, "instance_id", cc->instance_id);
	cJSON_AddStringToObject(b, "hostname", cc->hostname);
	cJSON_AddStringToObject(b, "fleet", cc->fleet);
	cJSON_AddStringToObject(b, "version", cc->version);
	cJSON_AddStringToObject(b, "arch", cc->arch);
	cJSON_AddNumberToObject(b, "protocol", COORD_PROTOCOL);
	cJSON *caps = cJSON_AddArrayToObject(b, "capabilities");
	cJSON_AddItemToArray(caps, cJSON_CreateString("deploy"));
	cJSON_AddItemToArray(caps, cJSON_CreateString("run")); /* one-off jobs: runjob.h */
	set_body(r, b);
	cc->registering = r;
	log_info("coord.register", "instance_id=%s fleet=%s url=%s", cc->instance_id, cc->fleet,
		 cc->url);
	send_req(r);
}

static int load_identity(struct coord_client *cc)
{
	int fd = open(cc->identity_path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	char text[IDENTITY_MAX];
	ssize_t n = read(fd, text, sizeof text);
	close(fd);
	if (n <= 0)
		return -1;
	struct err err;
	const char *agent_id, *token, *url, *iid;
	int64_t hb, lease, wait;
	cJSON *doc = json_parse(text, (size_t)n, IDENTITY_MAX, &err);
	int rc = -1;
	if (doc && json_get_string(doc, NULL, "agent_id", SPEC_ID_MAX, &agent_id, &err) == 0 &&
	    json_get_string(doc, NULL, "token", TOKEN_MAX, &token, &err) == 0 &&
	    json_get_string(doc, NULL, "url", 4096, &url, &err) == 0 &&
	    json_get_string(doc, NULL, "instance_id", 256, &iid, &err) == 0 &&
	    json_get_int_opt(doc, NULL, "heartbeat_interval_s", 1, 3600, 10, &hb, &err) == 0 &&
	    json_get_int_opt(doc, NULL, "lease_s", 1, 86400, 60, &lease, &err) == 0 &&
	    json_get_int_opt(doc, NULL, "poll_wait_s", 1, 30, 30, &wait, &err) == 0 &&
	    spec_valid_id(agent_id) && token[0]) {
		if (strcmp(url, cc->url) != 0 || strcmp(iid, cc->instance_id) != 0) {
			log_info("coord.identity_stale", "the identity was issued for another "
				 "coordinator or instance: registering again");
		} else {
			set_token(cc, agent_id, token);
			cc->heartbeat_s = hb;
			cc->lease_s = lease;
			cc->poll_wait_s = cc->poll_wait_override_s ? cc->poll_wait_override_s : wait;
			const cJSON *qu = cJSON_GetObjectItemCaseSensitive(doc, "queue_url");
			const cJSON *qr = cJSON_GetObjectItemCaseSensitive(doc, "queue_region");
			if (cJSON_IsString(qu) && strlen(qu->valuestring) < sizeof cc->queue_url)
				snprintf(cc->queue_url, sizeof cc->queue_url, "%s", qu->valuestring);
			if (cJSON_IsString(qr) && strlen(qr->valuestring) < sizeof cc->queue_region)
				snprintf(cc->queue_region, sizeof cc->queue_region, "%s",
					 qr->valuestring);
			cc->registered = true;
			rc = 0;
		}
	} else {
		log_warn("coord.identity_unreadable", "path=%s error=\"%s\": registering again",
			 cc->identity_path, err.msg);
	}
	cJSON_Delete(doc);
	return rc;
}

/* ---- heartbeat and poll ---- */

static void heartbeat_succeeded(struct coord_client *cc)
{
	/* Requests that got a job-scoped 404 while the agent is known: unknown job. */
	struct creq *r = cc->reqs;
	while (r) {
		struct creq *next = r->next;
		if (r->parked && r->await_probe) {
			log_error("coord.refused", "request=%s path=%s status=404 (unknown job)",
				  kind_names[r->kind], r->suffix);
			reply(r, DEPLOYER_REPLY_FINAL);
			free_req(r);
		}
		r = next;
	}
}

static void on_hb_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	struct coord_client *cc = w->data;
	if (cc->heartbeat || !cc->registered)
		return;
	struct creq *r = new_req(cc, K_HEARTBEAT, "POST", "/heartbeat");
	if (!r)
		return;
	cc->heartbeat = r;
	send_req(r);
}

static void handle_poll(struct creq *r, const struct http_response *resp)
{
	struct coord_client *cc = r->cc;
	struct err err;
	cJSON *doc = json_parse(resp->body, resp->body_len, SPEC_POLL_MAX, &err);
	const cJSON *jobs = cJSON_GetObjectItemCaseSensitive(doc, "jobs");
	if (!cJSON_IsArray(jobs)) {
		log_error("coord.poll_bad_answer", "error=\"%s\"",
			  doc ? "no \"jobs\" array" : err.msg);
		cJSON_Delete(doc);
		retry_later(r, -1, "malformed poll answer");
		return;
	}
	/* Poll again at once: the next jobs wait on the coordinator, not here. */
	send_req(r);
	if (jobs->child && cc->cb.on_jobs)
		cc->cb.on_jobs(jobs, cc->cb.arg);
	cJSON_Delete(doc);
}

static void start_poll(struct coord_client *cc)
{
	char suffix[64];
	snprintf(suffix, sizeof suffix, "/jobs?wait=%lld&max=10", (long long)cc->poll_wait_s);
	struct creq *r = new_req(cc, K_POLL, "GET", suffix);
	if (!r)
		return;
	cc->poll = r;
	send_req(r);
}

/* ---- public API ---- */

static char *dup_opt(const char *s, const char *def)
{
	return strdup(s && *s ? s : def);
}

struct coord_client *coord_client_new(const struct coord_client_opts *o, struct err *err)
{
	if (!o->loop || !o->http || !o->url || (!o->bootstrap_token && !o->prover.prove) ||
	    !o->state_dir) {
		err_set(err, "coordinator client: loop, http, url, bootstrap token (or a prover) "
			"and state directory are required");
		return NULL;
	}
	struct coord_client *cc = calloc(1, sizeof *cc);
	if (!cc) {
		err_set(err, "coordinator client: out of memory");
		return NULL;
	}
	cc->loop = o->loop;
	cc->http = o->http;
	cc->workers = o->workers;
	cc->cb = *o;
	size_t ul = strlen(o->url);
	while (ul > 0 && o->url[ul - 1] == '/')
		ul--;
	cc->url = strndup(o->url, ul);
	cc->ca_file = o->ca_file ? strdup(o->ca_file) : NULL;
	cc->bootstrap = strdup(o->bootstrap_token ? o->bootstrap_token : "");
	cc->instance_id = dup_opt(o->instance_id, "unknown");
	cc->hostname = dup_opt(o->hostname, "unknown");
	cc->fleet = dup_opt(o->fleet, "default");
	cc->version = dup_opt(o->version, "0");
	cc->retry_base_ms = o->retry_base_ms > 0 ? o->retry_base_ms : 1000;
	cc->retry_cap_ms = o->retry_cap_ms > 0 ? o->retry_cap_ms : 30000;
	cc->poll_wait_override_s = o->poll_wait_s;
	cc->heartbeat_s = 10;
	cc->lost_after_s = 45;
	cc->lease_s = 60;
	cc->poll_wait_s = o->poll_wait_s ? o->poll_wait_s : 30;
	cc->started_mono = clock_mono_ms();
	struct utsname u;
	snprintf(cc->arch, sizeof cc->arch, "%.31s", uname(&u) == 0 ? u.machine : "unknown");
	ev_timer_init(&cc->hb_timer, on_hb_timer, 10.0, 10.0);
	cc->hb_timer.data = cc;
	if (!cc->url || !cc->bootstrap || !cc->instance_id || !cc->hostname || !cc->fleet ||
	    !cc->version || (o->ca_file && !cc->ca_file) ||
	    snprintf(cc->identity_path, sizeof cc->identity_path, "%s/%s", o->state_dir,
		     COORD_IDENTITY_FILE) >= (int)sizeof cc->identity_path) {
		coord_client_free(cc);
		err_set(err, "coordinator client: out of memory or state path too long");
		return NULL;
	}
	if (cc->bootstrap[0])
		log_redact_add(cc->bootstrap);
	bool loopback = strncmp(cc->url, "http://127.", 11) == 0 ||
			strncmp(cc->url, "http://localhost", 16) == 0 ||
			strncmp(cc->url, "http://[::1]", 12) == 0;
	if (strncmp(cc->url, "http://", 7) == 0 && !loopback)
		log_warn("coord.plaintext", "url=%s: the coordinator is reached without TLS "
			 "(acceptable only on a private network)", cc->url);
	if (load_identity(cc) == 0)
		log_info("coord.identity", "agent_id=%s (from %s)", cc->agent_id, cc->identity_path);
	return cc;
}

void coord_client_start(struct coord_client *cc)
{
	if (cc->started)
		return;
	cc->started = true;
	if (cc->registered) {
		start_heartbeats(cc);
		if (!cc->queue_url[0])
			start_poll(cc);
		else if (cc->cb.on_queue)
			cc->cb.on_queue(cc->queue_url, cc->queue_region, cc->cb.arg);
		/* Tell the coordinator at once that this agent is alive again. */
		ev_feed_event(cc->loop, &cc->hb_timer, EV_TIMER);
	} else {
		ensure_register(cc);
	}
}

void coord_client_free(struct coord_client *cc)
{
	if (!cc)
		return;
	while (cc->reqs)
		free_req(cc->reqs);
	ev_timer_stop(cc->loop, &cc->hb_timer);
	if (cc->token[0])
		log_redact_remove(cc->token);
	free(cc->inventory_next);
	free(cc->url);
	free(cc->ca_file);
	free(cc->bootstrap);
	free(cc->instance_id);
	free(cc->hostname);
	free(cc->fleet);
	free(cc->version);
	free(cc);
}

void coord_client_ack(void *ctx, const struct deployer_ack *a, deployer_reply_fn done,
		      void *arg)
{
	struct coord_client *cc = ctx;
	char suffix[128];
	snprintf(suffix, sizeof suffix, "/jobs/%s/ack", a->job_id);
	struct creq *r = new_req(cc, K_ACK, "POST", suffix);
	if (!r) {
		if (done)
			done(DEPLOYER_REPLY_RETRY, arg);
		return;
	}
	cJSON *b = cJSON_CreateObject();
	cJSON_AddStringToObject(b, "lease_id", a->lease_id);
	cJSON_AddStringToObject(b, "result", a->result);
	cJSON_AddNumberToObject(b, "generation", (double)a->generation);
	if (a->reason && *a->reason)
		cJSON_AddStringToObject(b, "reason", a->reason);
	if (a->output_tail && *a->output_tail)
		cJSON_AddStringToObject(b, "output_tail", a->output_tail);
	cJSON_AddNumberToObject(b, "duration_ms", (double)a->duration_ms);
	if (a->has_exit_code)
		cJSON_AddNumberToObject(b, "exit_code", (double)a->exit_code);
	set_body(r, b);
	r->reply = done;
	r->arg = arg;
	send_req(r);
}

void coord_client_extend(void *ctx, const char *job_id, const char *lease_id, int64_t extend_s,
			 deployer_reply_fn done, void *arg)
{
	struct coord_client *cc = ctx;
	char suffix[128];
	snprintf(suffix, sizeof suffix, "/jobs/%s/extend", job_id);
	struct creq *r = new_req(cc, K_EXTEND, "POST", suffix);
	if (!r) {
		if (done)
			done(DEPLOYER_REPLY_RETRY, arg);
		return;
	}
	cJSON *b = cJSON_CreateObject();
	cJSON_AddStringToObject(b, "lease_id", lease_id);
	cJSON_AddNumberToObject(b, "extend_s", (double)extend_s);
	set_body(r, b);
	r->reply = done;
	r->arg = arg;
	send_req(r);
}

void coord_client_put_inventory(struct coord_client *cc, const cJSON *containers)
{
	cJSON *doc = cJSON_CreateObject();
	cJSON_AddItemToObject(doc, "containers", cJSON_Duplicate(containers, 1));
	char *text = cJSON_PrintUnformatted(doc);
	cJSON_Delete(doc);
	if (!text)
		return;
	if (cc->inventory) {
		if (ev_is_active(&cc->inventory->timer) || cc->inventory->parked) {
			/* Waiting to retry: the newer document replaces the old one. */
			free(cc->inventory->body);
			cc->inventory->body = text;
			cc->inventory->body_len = strlen(text);
		} else {
			free(cc->inventory_next);
			cc->inventory_next = text;
		}
		return;
	}
	struct creq *r = new_req(cc, K_INVENTORY, "PUT", "/inventory");
	if (!r) {
		free(text);
		return;
	}
	r->body = text;
	r->body_len = strlen(text);
	cc->inventory = r;
	send_req(r);
}

void coord_client_get_desired(struct coord_client *cc, coord_desired_fn done, void *arg)
{
	struct creq *r = new_req(cc, K_DESIRED, "GET", "/desired");
	if (!r) {
		if (done)
			done(NULL, arg);
		return;
	}
	r->desired = done;
	r->arg = arg;
	send_req(r);
}

void coord_client_set_draining(struct coord_client *cc, bool draining)
{
	bool changed = cc->draining != draining;
	cc->draining = draining;
	/* The coordinator hears it now, not at the next interval. */
	if (changed && cc->started && cc->registered && !cc->heartbeat)
		ev_feed_event(cc->loop, &cc->hb_timer, EV_TIMER);
}

const char *coord_client_agent_id(const struct coord_client *cc)
{
	return cc->registered ? cc->agent_id : "";
}

const char *coord_client_token(const struct coord_client *cc)
{
	return cc->registered ? cc->token : "";
}

void coord_client_identity(void *ctx, const char **agent_id, const char **token)
{
	const struct coord_client *cc = ctx;
	*agent_id = coord_client_agent_id(cc);
	*token = coord_client_token(cc);
}

int64_t coord_client_lease_s(const struct coord_client *cc) { return cc->lease_s; }
const char *coord_client_queue_url(const struct coord_client *cc) { return cc->queue_url; }

void coord_client_register_again(struct coord_client *cc)
{
	if (cc->started)
		ensure_register(cc);
}
bool coord_client_registered(const struct coord_client *cc) { return cc->registered; }
