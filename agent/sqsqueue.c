#include "sqsqueue.h"

#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aws_credentials.h"
#include "backoff.h"
#include "clock.h"
#include "dlist.h"
#include "json.h"
#include "log.h"
#include "sqs.h"

#define URL_MAX 1024
#define JOB_ID_MAX 80

/* A received message of a job not yet acknowledged. */
struct tracked {
	struct tracked *prev, *next;
	char job[JOB_ID_MAX + 1];
	char *receipt;
	char url[URL_MAX];        /* the queue it came from */
};

/* An ack or extend on its way to the coordinator. */
struct call {
	struct call *prev, *next;
	struct agent_sqs *q;
	char job[JOB_ID_MAX + 1];
	int64_t extend_s;         /* extend only */
	deployer_reply_fn done;
	void *arg;
};

/* A DeleteMessage or ChangeMessageVisibility in flight. */
struct sqs_call {
	struct sqs_call *prev, *next;
	struct agent_sqs *q;
	uint64_t id;
	bool is_delete;
};

struct agent_sqs {
	struct agent_sqs_opts o;
	struct aws_credentials_provider *creds;  /* o.creds, the set_queue one, or own */
	struct aws_credentials_provider *own;    /* made here (the default chain) */
	char *ca_file;
	struct sqs *sqs;
	char url[URL_MAX];
	char region[64];
	uint64_t receiving;       /* the ReceiveMessage in flight */
	int failures;
	ev_timer retry;
	struct tracked *tracked;
	size_t ntracked;
	struct call *calls;
	struct sqs_call *sqs_calls;
	struct agent_sqs_stats st;
};

/* ---- URLs ---- */

int agent_sqs_endpoint_of(const char *url, char *out, size_t cap)
{
	const char *p = NULL;
	if (strncmp(url, "https://", 8) == 0)
		p = url + 8;
	else if (strncmp(url, "http://", 7) == 0)
		p = url + 7;
	if (!p || !*p || *p == '/')
		return -1;
	const char *slash = strchr(p, '/');
	if (!slash || !slash[1])
		return -1;
	size_t n = (size_t)(slash - url);
	if (n + 1 > cap)
		return -1;
	memcpy(out, url, n);
	out[n] = '\0';
	return 0;
}

int agent_sqs_region_of(const char *url, char *out, size_t cap)
{
	const char *p = strstr(url, "://");
	if (!p || strncmp(p + 3, "sqs.", 4) != 0)
		return -1;
	p += 7;
	const char *dot = strchr(p, '.');
	if (!dot || dot == p || strncmp(dot, ".amazonaws.com", 14) != 0 ||
	    (size_t)(dot - p) + 1 > cap)
		return -1;
	memcpy(out, p, (size_t)(dot - p));
	out[dot - p] = '\0';
	return 0;
}

/* ---- tracked messages ---- */

static void untrack(struct agent_sqs *q, struct tracked *t)
{
	DLIST_UNLINK(q->tracked, t);
	q->ntracked--;
	free(t->receipt);
	free(t);
}

static void track(struct agent_sqs *q, const char *job, const char *receipt)
{
	/* A message seen again comes with a new handle: only the newest works. */
	for (struct tracked *t = q->tracked; t; t = t->next)
		if (strcmp(t->job, job) == 0 && strcmp(t->url, q->url) == 0 &&
		    strcmp(t->receipt, receipt) == 0)
			return;
	if (q->ntracked >= AGENT_SQS_TRACKED_MAX) {
		/* Forget the oldest: its message comes back and is acked again. */
		struct tracked *old = q->tracked;
		while (old && old->next)
			old = old->next;
		if (old)
			untrack(q, old);
	}
	struct tracked *t = calloc(1, sizeof *t);
	if (!t || !(t->receipt = strdup(receipt))) {
		free(t);
		return;
	}
	snprintf(t->job, sizeof t->job, "%s", job);
	snprintf(t->url, sizeof t->url, "%s", q->url);
	DLIST_PUSH(q->tracked, t);
	q->ntracked++;
}

static void sqs_call_done(const struct sqs_result *res, void *arg)
{
	struct sqs_call *c = arg;
	struct agent_sqs *q = c->q;
	if (c->is_delete) {
		if (res->status == SQS_OK) {
			q->st.deleted++;
		} else {
			/* It comes back after its visibility timeout; the deployer knows the
			 * job and acknowledges it again, and the delete is tried again. */
			q->st.delete_failed++;
			log_warn("sqs.delete_failed", "code=%s message=\"%s\"",
				 res->error_code ? res->error_code : "",
				 res->message ? res->message : "");
		}
	} else if (res->status == SQS_OK) {
		q->st.extended++;
	} else {
		log_warn("sqs.visibility_failed", "code=%s message=\"%s\"",
			 res->error_code ? res->error_code : "", res->message ? res->message : "");
	}
	DLIST_UNLINK(q->sqs_calls, c);
	free(c);
}

static void sqs_call_start(struct agent_sqs *q, const struct tracked *t, bool is_delete,
			   int64_t extend_s)
{
	if (!q->sqs)
		return;
	struct sqs_call *c = calloc(1, sizeof *c);
	if (!c)
		return;
	c->q = q;
	c->is_delete = is_delete;
	DLIST_PUSH(q->sqs_calls, c);
	if (is_delete)
		c->id = sqs_delete_message(q->sqs, t->url, t->receipt, sqs_call_done, c);
	else
		c->id = sqs_change_visibility(q->sqs, t->url, t->receipt,
					      (int)(extend_s > SQS_VISIBILITY_MAX_S
							    ? SQS_VISIBILITY_MAX_S : extend_s),
					      sqs_call_done, c);
	if (!c->id) {
		DLIST_UNLINK(q->sqs_calls, c);
		free(c);
	}
}

/* ---- the deployer's coordinator interface ---- */

static struct call *call_new(struct agent_sqs *q, const char *job, deployer_reply_fn done,
			     void *arg)
{
	struct call *c = calloc(1, sizeof *c);
	if (!c)
		return NULL;
	c->q = q;
	snprintf(c->job, sizeof c->job, "%s", job);
	c->done = done;
	c->arg = arg;
	DLIST_PUSH(q->calls, c);
	return c;
}

static void acked(enum deployer_reply r, void *arg)
{
	struct call *c = arg;
	struct agent_sqs *q = c->q;
	if (r != DEPLOYER_REPLY_RETRY) {
		/* The coordinator has the result (or refuses it for good): the
		 * messages of this job have done their work. */
		struct tracked *t = q->tracked;
		while (t) {
			struct tracked *next = t->next;
			if (strcmp(t->job, c->job) == 0) {
				sqs_call_start(q, t, true, 0);
				untrack(q, t);
			}
			t = next;
		}
	}
	DLIST_UNLINK(q->calls, c);
	deployer_reply_fn done = c->done;
	void *darg = c->arg;
	free(c);
	if (done)
		done(r, darg);
}

void agent_sqs_ack(void *ctx, const struct deployer_ack *ack, deployer_reply_fn done, void *arg)
{
	struct agent_sqs *q = ctx;
	struct call *c = call_new(q, ack->job_id, done, arg);
	if (!c) {
		q->o.coord.ack(q->o.coord.ctx, ack, done, arg);
		return;
	}
	q->o.coord.ack(q->o.coord.ctx, ack, acked, c);
}

static void extended(enum deployer_reply r, void *arg)
{
	struct call *c = arg;
	struct agent_sqs *q = c->q;
	DLIST_UNLINK(q->calls, c);
	deployer_reply_fn done = c->done;
	void *darg = c->arg;
	free(c);
	if (done)
		done(r, darg);
}

void agent_sqs_extend(void *ctx, const char *job_id, const char *lease_id, int64_t extend_s,
		      deployer_reply_fn done, void *arg)
{
	struct agent_sqs *q = ctx;
	/* SQS first: it is what hands the message out again. */
	for (struct tracked *t = q->tracked; t; t = t->next)
		if (strcmp(t->job, job_id) == 0)
			sqs_call_start(q, t, false, extend_s);
	struct call *c = call_new(q, job_id, done, arg);
	if (!c) {
		q->o.coord.extend(q->o.coord.ctx, job_id, lease_id, extend_s, done, arg);
		return;
	}
	c->extend_s = extend_s;
	q->o.coord.extend(q->o.coord.ctx, job_id, lease_id, extend_s, extended, c);
}

/* ---- receiving ---- */

static void receive(struct agent_sqs *q);

static void retry_later(struct agent_sqs *q)
{
	q->failures++;
	struct backoff_policy p = {.base_ms = q->o.retry_base_ms, .cap_ms = q->o.retry_cap_ms};
	int64_t ms = backoff_delay(&p, q->failures);
	ev_timer_set(&q->retry, (double)(ms < 10 ? 10 : ms) / 1000.0, 0.0);
	ev_timer_start(q->o.loop, &q->retry);
}

static void on_retry(struct ev_loop *loop, ev_timer *t, int revents)
{
	(void)revents;
	ev_timer_stop(loop, t);
	receive(t->data);
}

static void handle_message(struct agent_sqs *q, const struct sqs_message *m)
{
	q->st.received++;
	struct err err = {{0}};
	cJSON *job = json_parse(m->body, m->body_len, SQS_MESSAGE_MAX, &err);
	const cJSON *id = cJSON_GetObjectItemCaseSensitive(job, "id");
	const cJSON *lease = cJSON_GetObjectItemCaseSensitive(job, "lease_id");
	if (!cJSON_IsObject(job) || !cJSON_IsString(id) || !*id->valuestring ||
	    strlen(id->valuestring) > JOB_ID_MAX || !cJSON_IsString(lease)) {
		/* Nobody can acknowledge it: it would come back forever. */
		q->st.poison++;
		log_error("sqs.message_not_a_job", "message_id=%s error=\"%s\"",
			  m->message_id ? m->message_id : "",
			  job ? "no job id or lease id" : err.msg);
		struct tracked t = {.receipt = (char *)m->receipt_handle};
		snprintf(t.url, sizeof t.url, "%s", q->url);
		sqs_call_start(q, &t, true, 0);
		cJSON_Delete(job);
		return;
	}
	track(q, id->valuestring, m->receipt_handle);
	log_debug("sqs.job", "job=%s receive_count=%lld", id->valuestring,
		  (long long)m->receive_count);
	if (q->o.on_job)
		q->o.on_job(job, q->o.arg);
	cJSON_Delete(job);
}

static void on_received(const struct sqs_result *res, void *arg)
{
	struct agent_sqs *q = arg;
	q->receiving = 0;
	if (res->status == SQS_NOT_FOUND) {
		q->st.receive_errors++;
		log_warn("sqs.queue_gone", "url=%s: registering again", q->url);
		q->url[0] = '\0';
		if (q->o.on_queue_gone)
			q->o.on_queue_gone(q->o.arg);
		return;
	}
	if (res->status != SQS_OK) {
		q->st.receive_errors++;
		log_warn("sqs.receive_failed", "code=%s attempts=%d message=\"%s\"",
			 res->error_code ? res->error_code : "", res->attempts,
			 res->message ? res->message : "");
		retry_later(q);
		return;
	}
	q->failures = 0;
	/* Receive again first: on_job may take a while to return. */
	receive(q);
	for (size_t i = 0; i < res->message_count; i++)
		handle_message(q, &res->messages[i]);
}

static void receive(struct agent_sqs *q)
{
	if (q->receiving || !q->sqs || !q->url[0] || ev_is_active(&q->retry))
		return;
	struct sqs_receive_opts ro = {.max_messages = 10, .wait_s = q->o.wait_s,
				      .visibility_s = -1};
	q->receiving = sqs_receive(q->sqs, q->url, &ro, on_received, q);
	if (!q->receiving)
		retry_later(q);
}

int agent_sqs_set_queue(struct agent_sqs *q, const char *url, const char *region,
			struct aws_credentials_provider *creds, struct err *err)
{
	char endpoint[URL_MAX], reg[64];
	if (!url || strlen(url) >= sizeof q->url || agent_sqs_endpoint_of(url, endpoint,
									  sizeof endpoint) < 0)
		return err_set(err, "queue_url: not an http(s) queue URL: \"%.200s\"",
			       url ? url : "");
	if (region && *region)
		snprintf(reg, sizeof reg, "%s", region);
	else if (agent_sqs_region_of(url, reg, sizeof reg) < 0)
		return err_set(err, "queue_region: not given and not in the URL %.200s", url);
	if (q->sqs && strcmp(q->url, url) == 0 && strcmp(q->region, reg) == 0) {
		receive(q); /* the same queue: make sure it is read */
		return 0;
	}
	if (!q->creds)
		q->creds = q->o.creds ? q->o.creds : creds;
	if (!q->creds) {
		struct aws_credentials_opts ao = {0};
		if (!(q->own = aws_credentials_new(q->o.loop, q->o.http, &ao, err)))
			return -1;
		q->creds = q->own;
	}
	struct sqs_opts so = {.region = reg, .endpoint = endpoint, .ca_file = q->ca_file,
			      .retry_base_ms = q->o.sqs_retry_base_ms};
	struct sqs *s = sqs_new(q->o.loop, q->o.http, q->creds, &so, err);
	if (!s)
		return -1;
	/* Calls on the old client go with it; their messages come back. */
	while (q->sqs_calls) {
		struct sqs_call *c = q->sqs_calls;
		DLIST_UNLINK(q->sqs_calls, c);
		free(c);
	}
	sqs_free(q->sqs);
	q->sqs = s;
	q->receiving = 0;
	ev_timer_stop(q->o.loop, &q->retry);
	q->failures = 0;
	snprintf(q->url, sizeof q->url, "%s", url);
	snprintf(q->region, sizeof q->region, "%s", reg);
	log_info("sqs.queue", "url=%s region=%s wait_s=%d", q->url, q->region, q->o.wait_s);
	receive(q);
	return 0;
}

const char *agent_sqs_queue(const struct agent_sqs *q)
{
	return q->url;
}

/* ---- life cycle ---- */

struct agent_sqs *agent_sqs_new(const struct agent_sqs_opts *o, struct err *err)
{
	if (!o->loop || !o->http || !o->coord.ack || !o->coord.extend) {
		err_set(err, "sqs queue: loop, http and the coordinator are required");
		return NULL;
	}
	struct agent_sqs *q = calloc(1, sizeof *q);
	if (!q) {
		err_set(err, "sqs queue: out of memory");
		return NULL;
	}
	q->o = *o;
	if (q->o.wait_s <= 0 || q->o.wait_s > SQS_WAIT_MAX_S)
		q->o.wait_s = AGENT_SQS_WAIT_S;
	if (q->o.retry_base_ms <= 0)
		q->o.retry_base_ms = 1000;
	if (q->o.retry_cap_ms <= 0)
		q->o.retry_cap_ms = 30000;
	if (o->ca_file && !(q->ca_file = strdup(o->ca_file))) {
		free(q);
		err_set(err, "sqs queue: out of memory");
		return NULL;
	}
	ev_timer_init(&q->retry, on_retry, 1.0, 0.0);
	q->retry.data = q;
	return q;
}

void agent_sqs_free(struct agent_sqs *q)
{
	if (!q)
		return;
	ev_timer_stop(q->o.loop, &q->retry);
	sqs_free(q->sqs);
	while (q->sqs_calls) {
		struct sqs_call *c = q->sqs_calls;
		DLIST_UNLINK(q->sqs_calls, c);
		free(c);
	}
	while (q->calls) {
		struct call *c = q->calls;
		DLIST_UNLINK(q->calls, c);
		free(c);
	}
	while (q->tracked)
		untrack(q, q->tracked);
	aws_credentials_free(q->own);
	free(q->ca_file);
	free(q);
}

void agent_sqs_stats(const struct agent_sqs *q, struct agent_sqs_stats *out)
{
	*out = q->st;
	out->tracked = q->ntracked;
}
