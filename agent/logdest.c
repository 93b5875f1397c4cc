#include "logdest.h"

#include <ev.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backoff.h"
#include "cwlogs.h"
#include "dlist.h"
#include "http_client.h"
#include "json.h"

#define COORD_LOGS_BODY_MAX ((size_t)4 << 20)   /* the protocol's cap on POST .../logs */
#define COORD_BODY_SLACK ((size_t)64 << 10)     /* names, keys and framing per batch */
#define AUTH_MAX 1024                           /* "Authorization: Bearer <token>" */

enum kind { D_CLOUDWATCH, D_COORD };

struct send {
	struct logdest *d;
	struct send *prev, *next;
	uint64_t id;
	uint64_t sub_id;               /* cwlogs call or http request */
	struct cwlogs_event *events;   /* CloudWatch */
	char *body;                    /* coordinator */
	size_t body_len;
	const char *path;              /* "/logs" or "/metrics" */
	int attempts, retries, throttled, fails;
	bool auth_retried;
	bool timer_on;
	ev_timer delay;
	char msg[512];
	logdest_done_fn done;
	void *arg;
};

struct logdest {
	enum kind kind;
	struct logbatch_limits limits;
	struct send *sends;
	uint64_t next_id;
	/* CloudWatch */
	struct cwlogs *cw;
	/* coordinator */
	struct ev_loop *loop;
	struct http_client *http;
	char *url;
	char *ca_file;
	logdest_identity_fn identity;
	void *identity_ctx;
	int64_t timeout_ms;
	struct backoff_policy retry;
	int unreachable_attempts;
};

static struct send *send_new(struct logdest *d, logdest_done_fn done, void *arg)
{
	struct send *s = calloc(1, sizeof *s);
	if (!s)
		return NULL;
	s->d = d;
	s->id = d->next_id++;
	s->done = done;
	s->arg = arg;
	DLIST_PUSH(d->sends, s);
	return s;
}

static void send_free(struct send *s)
{
	struct logdest *d = s->d;
	if (s->timer_on)
		ev_timer_stop(d->loop, &s->delay);
	if (s->sub_id) {
		if (d->kind == D_CLOUDWATCH)
			cwlogs_cancel(d->cw, s->sub_id);
		else
			http_client_cancel(d->http, s->sub_id);
	}
	DLIST_UNLINK(d->sends, s);
	free(s->events);
	free(s->body);
	free(s);
}

static void report(struct send *s, enum logdest_status st, size_t rejected)
{
	struct logdest_result r = {
		.status = st,
		.rejected = rejected,
		.attempts = s->attempts,
		.retries = s->retries,
		.throttled = s->throttled,
	};
	char msg[sizeof s->msg];
	memcpy(msg, s->msg, sizeof msg);
	r.message = st == LOGDEST_OK ? "" : msg;
	logdest_done_fn done = s->done;
	void *arg = s->arg;
	s->sub_id = 0;
	send_free(s);
	done(&r, arg);
}

/* ---- CloudWatch ---- */

static void on_cw_done(const struct cwlogs_result *res, void *arg)
{
	struct send *s = arg;
	s->attempts = res->attempts;
	s->retries = res->retries;
	s->throttled = res->throttled;
	snprintf(s->msg, sizeof s->msg, "%s%s%s", res->error_code, res->error_code[0] ? ": " : "",
		 res->message);
	enum logdest_status st = res->status == CWLOGS_OK ? LOGDEST_OK
				 : res->status == CWLOGS_REFUSED ? LOGDEST_REFUSED
								  : LOGDEST_UNREACHABLE;
	report(s, st, res->rejected);
}

struct logdest *logdest_cloudwatch(struct cwlogs *cw)
{
	if (!cw)
		return NULL;
	struct logdest *d = calloc(1, sizeof *d);
	if (!d)
		return NULL;
	d->kind = D_CLOUDWATCH;
	d->cw = cw;
	d->next_id = 1;
	return d;
}

/* ---- coordinator ---- */

int logdest_coord_body(struct buf *out, const struct logdest_stream *st,
		       const struct logbatch *b)
{
	int rc = buf_append_str(out, "{\"streams\":[{\"app\":");
	rc |= cwlogs_json_string(out, st->app, strlen(st->app));
	rc |= buf_append_str(out, ",\"service\":");
	rc |= cwlogs_json_string(out, st->service, strlen(st->service));
	rc |= buf_append_str(out, ",\"container\":");
	rc |= cwlogs_json_string(out, st->container, strlen(st->container));
	rc |= buf_append_str(out, ",\"release\":");
	if (st->release && *st->release)
		rc |= cwlogs_json_string(out, st->release, strlen(st->release));
	else
		rc |= buf_append_str(out, "null");
	rc |= buf_append_str(out, ",\"events\":[");
	for (size_t i = 0; i < b->n && rc == 0; i++) {
		const struct logbatch_event *e = &b->ev[i];
		rc |= buf_printf(out, "%s{\"ts_ms\":%" PRId64 ",\"stream\":\"%s\",\"message\":",
				 i ? "," : "", e->ts_ms, e->stream == 2 ? "stderr" : "stdout");
		rc |= cwlogs_json_string(out, b->text.data + e->off, e->len);
		rc |= buf_append_byte(out, '}');
	}
	rc |= buf_append_str(out, "]}]}");
	return rc ? -1 : 0;
}

static void coord_attempt(struct send *s);

static void on_coord_delay(struct ev_loop *loop, ev_timer *t, int revents)
{
	(void)loop;
	(void)revents;
	struct send *s = t->data;
	s->timer_on = false;
	coord_attempt(s);
}

static void coord_arm(struct send *s, int64_t ms)
{
	ev_timer_init(&s->delay, on_coord_delay, (double)(ms > 0 ? ms : 0) / 1000.0, 0.0);
	s->delay.data = s;
	ev_timer_start(s->d->loop, &s->delay);
	s->timer_on = true;
}

static void coord_later(struct send *s, int64_t ms)
{
	s->retries++;
	coord_arm(s, ms);
}

/* A failure that says nothing about the batch. */
static void coord_fail(struct send *s)
{
	s->fails++;
	if (s->fails >= s->d->unreachable_attempts) {
		report(s, LOGDEST_UNREACHABLE, 0);
		return;
	}
	coord_later(s, backoff_delay(&s->d->retry, s->fails));
}

static void on_coord_http(const struct http_response *resp, void *arg)
{
	struct send *s = arg;
	struct logdest *d = s->d;
	s->sub_id = 0;
	if (resp->error != HTTP_OK) {
		snprintf(s->msg, sizeof s->msg, "%s: %s", http_error_name(resp->error),
			 resp->error_msg);
		coord_fail(s);
		return;
	}
	long st = resp->status;
	if (st >= 200 && st < 300) {
		int64_t rejected = 0;
		cJSON *doc = json_parse(resp->body, resp->body_len, HTTP_DEFAULT_MAX_BODY, NULL);
		if (doc)
			json_get_int_opt(doc, NULL, "rejected", 0, JSON_INT_LIMIT, 0, &rejected, NULL);
		cJSON_Delete(doc);
		report(s, LOGDEST_OK, (size_t)rejected);
		return;
	}
	snprintf(s->msg, sizeof s->msg, "HTTP %ld: %.400s", st, resp->body);
	if (st == 429) {
		s->throttled++;
		int64_t ms = backoff_delay(&d->retry, s->throttled);
		const char *ra = http_response_header(resp, "Retry-After");
		if (ra && *ra >= '0' && *ra <= '9') {
			long sec = strtol(ra, NULL, 10);
			ms = sec > 0 && sec < 600 ? sec * 1000 : ms;
		}
		coord_later(s, ms);
		return;
	}
	if (st == 401 || st == 404) {
		/* The coordinator client registers again; the next attempt asks it
		 * for the new token. */
		if (!s->auth_retried) {
			s->auth_retried = true;
			coord_later(s, backoff_delay(&d->retry, 1));
			return;
		}
		report(s, LOGDEST_UNREACHABLE, 0);
		return;
	}
	if (st == 400 || st == 413) {
		report(s, LOGDEST_REFUSED, 0);
		return;
	}
	coord_fail(s);
}

static void coord_attempt(struct send *s)
{
	struct logdest *d = s->d;
	const char *agent_id = "", *token = "";
	d->identity(d->identity_ctx, &agent_id, &token);
	char url[4096 + 256], auth[AUTH_MAX];
	if (!*agent_id || !*token) {
		snprintf(s->msg, sizeof s->msg, "not registered with the coordinator yet");
		coord_fail(s);
		return;
	}
	if (snprintf(url, sizeof url, "%s/v1/agents/%s%s", d->url, agent_id, s->path) >=
		    (int)sizeof url ||
	    snprintf(auth, sizeof auth, "Authorization: Bearer %s", token) >= (int)sizeof auth) {
		snprintf(s->msg, sizeof s->msg, "agent id or token too long");
		report(s, LOGDEST_UNREACHABLE, 0);
		return;
	}
	const char *headers[] = {"Slipway-Protocol: 1", "Content-Type: application/json",
				 "Accept: application/json", auth, NULL};
	struct http_request req = {
		.method = "POST",
		.url = url,
		.headers = headers,
		.body = s->body,
		.body_len = s->body_len,
		.timeout_ms = d->timeout_ms,
		.ca_file = d->ca_file,
		.on_done = on_coord_http,
		.arg = s,
	};
	s->attempts++;
	s->sub_id = http_client_start(d->http, &req);
	if (!s->sub_id) {
		snprintf(s->msg, sizeof s->msg, "could not start the request");
		coord_fail(s);
	}
}

struct logdest *logdest_coordinator(const struct logdest_coord_opts *o, struct err *err)
{
	if (!o || !o->loop || !o->http || !o->url || !o->identity) {
		err_set(err, "logdest: loop, http, url and identity are required");
		return NULL;
	}
	struct logdest *d = calloc(1, sizeof *d);
	if (!d) {
		err_set(err, "out of memory");
		return NULL;
	}
	d->kind = D_COORD;
	d->loop = o->loop;
	d->http = o->http;
	d->url = strdup(o->url);
	d->ca_file = o->ca_file ? strdup(o->ca_file) : NULL;
	d->identity = o->identity;
	d->identity_ctx = o->identity_ctx;
	d->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : 30000;
	d->retry.base_ms = o->retry_base_ms > 0 ? o->retry_base_ms : 1000;
	d->retry.cap_ms = o->retry_cap_ms > 0 ? o->retry_cap_ms : 30000;
	d->unreachable_attempts = o->unreachable_attempts > 0 ? o->unreachable_attempts : 2;
	d->next_id = 1;
	/* Escaped messages must fit the sink's 4 MiB body cap. */
	d->limits.max_json = COORD_LOGS_BODY_MAX - COORD_BODY_SLACK;
	if (!d->url || (o->ca_file && !d->ca_file)) {
		logdest_free(d);
		err_set(err, "out of memory");
		return NULL;
	}
	size_t ul = strlen(d->url);
	while (ul > 0 && d->url[ul - 1] == '/')
		d->url[--ul] = '\0';
	return d;
}

void logdest_free(struct logdest *d)
{
	if (!d)
		return;
	while (d->sends)
		send_free(d->sends);
	free(d->url);
	free(d->ca_file);
	free(d);
}

const struct logbatch_limits *logdest_limits(const struct logdest *d)
{
	return &d->limits;
}

int logdest_is_cloudwatch(const struct logdest *d)
{
	return d && d->kind == D_CLOUDWATCH;
}

uint64_t logdest_send(struct logdest *d, const struct logdest_stream *st,
		      const struct logbatch *b, logdest_done_fn done, void *arg)
{
	if (!d || !st || !b || b->n == 0 || !done)
		return 0;
	struct send *s = send_new(d, done, arg);
	if (!s)
		return 0;
	if (d->kind == D_CLOUDWATCH) {
		s->events = malloc(b->n * sizeof *s->events);
		if (!s->events) {
			send_free(s);
			return 0;
		}
		for (size_t i = 0; i < b->n; i++)
			s->events[i] = (struct cwlogs_event){b->ev[i].ts_ms,
							     b->text.data + b->ev[i].off,
							     b->ev[i].len};
		s->sub_id = cwlogs_put_events(d->cw, st->group, st->stream, s->events, b->n,
					      on_cw_done, s);
		if (!s->sub_id) {
			send_free(s);
			return 0;
		}
		return s->id;
	}
	struct buf body;
	buf_init(&body, (size_t)64 << 20);
	if (logdest_coord_body(&body, st, b) < 0) {
		buf_free(&body);
		send_free(s);
		return 0;
	}
	s->body = buf_detach(&body, &s->body_len);
	s->path = "/logs";
	coord_arm(s, 0); /* never call back from inside logdest_send */
	return s->id;
}

void logdest_cancel(struct logdest *d, uint64_t id)
{
	if (!d || !id)
		return;
	for (struct send *s = d->sends; s; s = s->next) {
		if (s->id == id) {
			send_free(s);
			return;
		}
	}
}

uint64_t logdest_post_metrics(struct logdest *d, const char *body, size_t len,
			      logdest_done_fn done, void *arg)
{
	if (!d || d->kind != D_COORD || !body || !done)
		return 0;
	struct send *s = send_new(d, done, arg);
	if (!s)
		return 0;
	if (!(s->body = malloc(len + 1))) {
		send_free(s);
		return 0;
	}
	memcpy(s->body, body, len);
	s->body[len] = '\0';
	s->body_len = len;
	s->path = "/metrics";
	coord_arm(s, 0);
	return s->id;
}
