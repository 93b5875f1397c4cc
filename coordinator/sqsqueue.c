#include "sqsqueue.h"

#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agents.h"
#include "aws_credentials.h"
#include "backoff.h"
#include "clock.h"
#include "config.h"
#include "coord.h"
#include "crypto.h"
#include "log.h"
#include "queue.h"
#include "server.h"
#include "sqs.h"
#include "store.h"

#define BUCKETS 4096
#define RETRY_BASE_MS 1000
#define RETRY_CAP_MS 60000
#define URL_MAX 1024
#define PREFIX_MAX 56

/* Every operation waiting on an SQS call is on this list, so sqsqueue_free
 * can free it (sqs_free cancels the calls without callbacks). Operations
 * inside a store operation are off the list: the store's done brings them
 * back (main closes the store before sqsqueue_free). */
struct opnode {
	struct opnode *prev, *next;
	void (*destroy)(struct opnode *n);
};

struct sq_agent {
	struct sqsqueue *s;
	char id[AGENT_ID_MAX + 1];
	char name[SQS_QUEUE_NAME_MAX + 1];
	char *url;                   /* NULL: no queue known */
	bool want;                   /* jobs may be queued */
	bool busy;                   /* a lease and send cycle runs */
	bool in_fifo;
	bool removed;
	int creating;                /* registrations making its queue */
	int failures;                /* send cycles failed in a row */
	ev_timer retry;
	struct sq_agent *next;       /* hash chain */
	struct sq_agent *fifo_next;  /* waiting for a send slot */
};

struct sqsqueue {
	struct coord *c;
	struct aws_credentials_provider *creds;
	struct sqs *sqs;
	char region[64];
	char prefix[PREFIX_MAX + 1];
	int concurrency;
	int64_t lease_s;
	int64_t lost_grace_ms;
	struct sq_agent *buckets[BUCKETS];
	size_t count;
	struct sq_agent *fifo_head, *fifo_tail;
	struct opnode ops;           /* list head */
	size_t in_store;             /* operations inside store operations */
	ev_timer sweep_timer;
	bool started;
	bool sweeping;
	struct sqsqueue_stats st;
};

/* ---- names ---- */

static int name_char(char ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
	       ch == '-' || ch == '_';
}

int sqsqueue_queue_name(const char *prefix, const char *instance_id, char *out, size_t cap)
{
	size_t plen = strlen(prefix), ilen = strlen(instance_id);
	if (plen > PREFIX_MAX || cap < SQS_QUEUE_NAME_MAX + 1 || ilen == 0)
		return -1;
	for (const char *p = prefix; *p; p++)
		if (!name_char(*p))
			return -1;
	bool clean = plen + ilen <= SQS_QUEUE_NAME_MAX;
	for (const char *p = instance_id; clean && *p; p++)
		clean = name_char(*p);
	if (clean) {
		snprintf(out, cap, "%s%s", prefix, instance_id);
		return 0;
	}
	/* Dropping characters could make two ids one name: the hash keeps them apart. */
	size_t keep = SQS_QUEUE_NAME_MAX - plen - 17;
	if (keep > 40)
		keep = 40;
	size_t n = 0;
	memcpy(out, prefix, plen);
	for (const char *p = instance_id; *p && n < keep; p++)
		if (name_char(*p))
			out[plen + n++] = *p;
	char hex[2 * CRYPTO_SHA256_LEN + 1];
	crypto_sha256_hex(instance_id, ilen, hex);
	snprintf(out + plen + n, cap - plen - n, "-%.16s", hex);
	return 0;
}

/* ---- the agents this backend knows ---- */

static size_t bucket_of(const char *id)
{
	uint32_t h = 2166136261u;
	for (const unsigned char *p = (const unsigned char *)id; *p; p++)
		h = (h ^ *p) * 16777619u;
	return h % BUCKETS;
}

static struct sq_agent *find(const struct sqsqueue *s, const char *id)
{
	for (struct sq_agent *e = s->buckets[bucket_of(id)]; e; e = e->next)
		if (strcmp(e->id, id) == 0)
			return e;
	return NULL;
}

static void retry_fired(struct ev_loop *loop, ev_timer *t, int revents);

static struct sq_agent *get(struct sqsqueue *s, const char *id)
{
	struct sq_agent *e = find(s, id);
	if (e || strlen(id) > AGENT_ID_MAX)
		return e;
	if (!(e = calloc(1, sizeof *e)))
		return NULL;
	e->s = s;
	snprintf(e->id, sizeof e->id, "%s", id);
	ev_timer_init(&e->retry, retry_fired, 1.0, 0.0);
	e->retry.data = e;
	size_t b = bucket_of(id);
	e->next = s->buckets[b];
	s->buckets[b] = e;
	s->count++;
	return e;
}

static void set_url(struct sq_agent *e, const char *url)
{
	free(e->url);
	e->url = url ? strdup(url) : NULL;
}

static void op_link(struct sqsqueue *s, struct opnode *n)
{
	n->next = s->ops.next;
	n->prev = &s->ops;
	s->ops.next->prev = n;
	s->ops.next = n;
}

static void op_unlink(struct opnode *n)
{
	if (!n->next)
		return;
	n->prev->next = n->next;
	n->next->prev = n->prev;
	n->next = n->prev = NULL;
}

/* ---- sending: lease, SendMessageBatch, give back what did not go ---- */

struct send_op {
	struct opnode node;
	struct sqsqueue *s;
	struct sq_agent *e;
	char agent[AGENT_ID_MAX + 1];
	char url[URL_MAX];
	cJSON *jobs;         /* leased job objects */
	char **bodies;       /* printed jobs, by index; NULL once handled */
	size_t njobs;
	size_t next;         /* next job to send */
	cJSON *back;         /* jobs to give back (references into jobs' copies) */
	cJSON *too_big;      /* jobs to fail */
	size_t batch[SQS_BATCH_ENTRIES_MAX];
	size_t batch_n;
	bool gone;           /* the queue does not exist: forget its URL */
	bool failed;         /* SQS unreachable or refusing: retry later */
	uint64_t call;
	struct queue_wake wake;
};

static void kick(struct sq_agent *e);

static void send_op_free(struct send_op *op)
{
	for (size_t i = 0; op->bodies && i < op->njobs; i++)
		cJSON_free(op->bodies[i]);
	free(op->bodies);
	cJSON_Delete(op->jobs);
	cJSON_Delete(op->back);
	cJSON_Delete(op->too_big);
	queue_wake_free(&op->wake);
	free(op);
}

static void send_op_destroy(struct opnode *n)
{
	struct send_op *op = (struct send_op *)n;
	op->e->busy = false;
	send_op_free(op);
}

static void next_from_fifo(struct sqsqueue *s)
{
	while (s->fifo_head && s->st.active < (size_t)s->concurrency) {
		struct sq_agent *e = s->fifo_head;
		s->fifo_head = e->fifo_next;
		if (!s->fifo_head)
			s->fifo_tail = NULL;
		e->fifo_next = NULL;
		e->in_fifo = false;
		s->st.waiting--;
		kick(e);
	}
}

/* The cycle ended: failed ones try again after a backoff. Frees op. */
static void finish(struct send_op *op, bool failed)
{
	struct sqsqueue *s = op->s;
	struct sq_agent *e = op->e;
	op_unlink(&op->node);
	send_op_free(op);
	e->busy = false;
	s->st.active--;
	if (failed) {
		e->want = true;
		e->failures++;
		struct backoff_policy p = {.base_ms = RETRY_BASE_MS, .cap_ms = RETRY_CAP_MS};
		int64_t ms = backoff_delay(&p, e->failures);
		ev_timer_set(&e->retry, (double)(ms < 10 ? 10 : ms) / 1000.0, 0.0);
		ev_timer_start(s->c->loop, &e->retry);
	} else {
		e->failures = 0;
		if (e->want)
			kick(e);
	}
	next_from_fifo(s);
}

static int giveback_tx(struct store_tx *tx, void *arg)
{
	struct send_op *op = arg;
	if (op->back && queue_unlease_tx(tx, op->back) < 0)
		return -1;
	const cJSON *j;
	cJSON_ArrayForEach(j, op->too_big)
	{
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(j, "id");
		const cJSON *lease = cJSON_GetObjectItemCaseSensitive(j, "lease_id");
		if (!cJSON_IsString(id) || !cJSON_IsString(lease))
			continue;
		struct queue_ack ack = {
			.lease_id = lease->valuestring, .result = "failed", .generation = -1,
			.duration_ms = -1, .exit_code = -1,
			.reason = "the job is over SQS's message limit of 256 KiB (an environment "
				  "too large for queue.backend = sqs)"};
		enum queue_status qs;
		char msg[256];
		if (queue_ack_tx(tx, op->s->c, op->agent, id->valuestring, &ack, &qs, msg,
				 sizeof msg, &op->wake) < 0)
			return -1;
	}
	if (op->gone) {
		sqlite3_stmt *st = store_stmt(tx, "DELETE FROM sqs_queues WHERE agent = ? AND "
						  "url = ?");
		if (!st)
			return -1;
		sqlite3_bind_text(st, 1, op->agent, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, op->url, -1, SQLITE_STATIC);
		if (store_step(tx, st) != SQLITE_DONE)
			return -1;
	}
	return 0;
}

static void giveback_done(int rc, void *arg)
{
	struct send_op *op = arg;
	struct sqsqueue *s = op->s;
	s->in_store--;
	if (rc < 0)
		log_warn("sqsqueue.giveback_failed",
			 "agent=%s reason=\"the leases expire instead\"", op->agent);
	if (rc == 0 && op->wake.n && s->c->queue)
		queue_wake(s->c->queue, &op->wake);
	bool failed = op->failed || op->gone || cJSON_GetArraySize(op->back) > 0;
	op_link(s, &op->node);
	finish(op, failed && !op->gone);
}

static void after_send(struct send_op *op)
{
	struct sqsqueue *s = op->s;
	if (op->gone && op->e->url && strcmp(op->e->url, op->url) == 0) {
		/* The queue went away (swept, deleted by hand): the agent registers
		 * again when its receive says so, which makes the queue anew. */
		log_warn("sqsqueue.queue_gone", "agent=%s url=%s", op->agent, op->url);
		set_url(op->e, NULL);
	}
	if (cJSON_GetArraySize(op->back) == 0 && cJSON_GetArraySize(op->too_big) == 0 &&
	    !op->gone) {
		finish(op, op->failed);
		return;
	}
	s->st.given_back += (uint64_t)cJSON_GetArraySize(op->back);
	s->st.too_large += (uint64_t)cJSON_GetArraySize(op->too_big);
	op_unlink(&op->node);
	if (store_submit(s->c->store, giveback_tx, giveback_done, op) < 0) {
		op_link(s, &op->node);
		finish(op, true); /* the leases expire and the jobs come back */
		return;
	}
	s->in_store++;
}

/* Moves job i to list (back or too_big). */
static void move_job(struct send_op *op, size_t i, cJSON **list)
{
	if (!*list)
		*list = cJSON_CreateArray();
	cJSON *j = cJSON_Duplicate(cJSON_GetArrayItem(op->jobs, (int)i), 1);
	if (*list && j)
		cJSON_AddItemToArray(*list, j);
	else
		cJSON_Delete(j);
}

static void send_next(struct send_op *op);

static void on_sent(const struct sqs_result *res, void *arg)
{
	struct send_op *op = arg;
	struct sqsqueue *s = op->s;
	op->call = 0;
	if (res->status == SQS_OK) {
		s->st.batches++;
		for (size_t k = 0; k < op->batch_n && k < res->entry_count; k++) {
			const struct sqs_entry_result *er = &res->entries[k];
			if (er->ok) {
				s->st.messages_sent++;
				continue;
			}
			log_warn("sqsqueue.entry_failed", "agent=%s code=%s sender_fault=%d "
				 "message=\"%s\"", op->agent, er->code ? er->code : "",
				 er->sender_fault, er->message ? er->message : "");
			move_job(op, op->batch[k], &op->back);
		}
		for (size_t k = res->entry_count; k < op->batch_n; k++)
			move_job(op, op->batch[k], &op->back);
	} else {
		if (res->status == SQS_NOT_FOUND)
			op->gone = true;
		else
			op->failed = true;
		log_warn("sqsqueue.send_failed", "agent=%s status=%d code=%s attempts=%d "
			 "throttled=%d message=\"%s\"", op->agent, (int)res->status,
			 res->error_code ? res->error_code : "", res->attempts, res->throttled,
			 res->message ? res->message : "");
		for (size_t k = 0; k < op->batch_n; k++)
			move_job(op, op->batch[k], &op->back);
	}
	op->batch_n = 0;
	send_next(op);
}

static void send_next(struct send_op *op)
{
	struct sqsqueue *s = op->s;
	if (op->gone || op->failed || !op->e->url) {
		/* Nothing more goes out this cycle: the rest waits for the retry. */
		for (; op->next < op->njobs; op->next++)
			if (op->bodies[op->next])
				move_job(op, op->next, &op->back);
		after_send(op);
		return;
	}
	struct sqs_send_entry entries[SQS_BATCH_ENTRIES_MAX];
	char ids[SQS_BATCH_ENTRIES_MAX][8];
	size_t bytes = 0;
	op->batch_n = 0;
	while (op->next < op->njobs && op->batch_n < SQS_BATCH_ENTRIES_MAX) {
		const char *b = op->bodies[op->next];
		size_t len = b ? strlen(b) : 0;
		if (!b) {
			op->next++;
			continue;
		}
		if (op->batch_n > 0 && bytes + len > SQS_BATCH_MAX)
			break;
		size_t k = op->batch_n++;
		snprintf(ids[k], sizeof ids[k], "m%zu", k);
		entries[k] = (struct sqs_send_entry){.id = ids[k], .body = b, .body_len = len};
		op->batch[k] = op->next++;
		bytes += len;
	}
	if (op->batch_n == 0) {
		after_send(op);
		return;
	}
	op->call = sqs_send_batch(s->sqs, op->url, entries, op->batch_n, on_sent, op);
	if (!op->call) {
		log_error("sqsqueue.send_refused",
			  "agent=%s reason=\"the client refused the batch\"", op->agent);
		op->failed = true;
		for (size_t k = 0; k < op->batch_n; k++)
			move_job(op, op->batch[k], &op->back);
		op->batch_n = 0;
		send_next(op);
	}
}

static int lease_tx(struct store_tx *tx, void *arg)
{
	struct send_op *op = arg;
	return queue_lease_tx(tx, op->s->c, op->agent, QUEUE_JOBS_PER_POLL, op->jobs);
}

static void lease_done(int rc, void *arg)
{
	struct send_op *op = arg;
	struct sqsqueue *s = op->s;
	s->in_store--;
	op_link(s, &op->node);
	if (rc < 0) {
		finish(op, true);
		return;
	}
	op->njobs = (size_t)cJSON_GetArraySize(op->jobs);
	if (op->njobs >= QUEUE_JOBS_PER_POLL)
		op->e->want = true; /* a full lease: there may be more behind it */
	if (op->njobs == 0) {
		finish(op, false);
		return;
	}
	if (!(op->bodies = calloc(op->njobs, sizeof *op->bodies))) {
		op->back = cJSON_Duplicate(op->jobs, 1);
		op->next = op->njobs;
		after_send(op);
		return;
	}
	for (size_t i = 0; i < op->njobs; i++) {
		char *b = cJSON_PrintUnformatted(cJSON_GetArrayItem(op->jobs, (int)i));
		size_t len = b ? strlen(b) : 0;
		if (b && len <= SQS_MESSAGE_MAX) {
			op->bodies[i] = b;
			continue;
		}
		cJSON_free(b);
		if (b) {
			log_error("sqsqueue.job_too_large", "agent=%s bytes=%zu max=%zu", op->agent,
				  len, SQS_MESSAGE_MAX);
			move_job(op, i, &op->too_big);
		} else {
			move_job(op, i, &op->back);
		}
	}
	send_next(op);
}

static void start_cycle(struct sq_agent *e)
{
	struct sqsqueue *s = e->s;
	struct send_op *op = calloc(1, sizeof *op);
	cJSON *jobs = cJSON_CreateArray();
	if (!op || !jobs) {
		free(op);
		cJSON_Delete(jobs);
		return;
	}
	op->node.destroy = send_op_destroy;
	op->s = s;
	op->e = e;
	op->jobs = jobs;
	snprintf(op->agent, sizeof op->agent, "%s", e->id);
	snprintf(op->url, sizeof op->url, "%s", e->url);
	e->busy = true;
	e->want = false;
	s->st.active++;
	if (store_submit(s->c->store, lease_tx, lease_done, op) < 0) {
		op_link(s, &op->node);
		finish(op, true);
		return;
	}
	s->in_store++;
}

static void kick(struct sq_agent *e)
{
	struct sqsqueue *s = e->s;
	if (!s->started || e->busy || e->removed || !e->url || ev_is_active(&e->retry) ||
	    e->in_fifo)
		return;
	const struct agent *ag = agents_find(s->c->agents, e->id);
	if (!ag || ag->state != AGENT_LIVE) {
		/* Lost, draining or gone: it gets no jobs. Coming back wakes it. */
		e->want = false;
		return;
	}
	if (s->st.active >= (size_t)s->concurrency) {
		e->in_fifo = true;
		if (s->fifo_tail)
			s->fifo_tail->fifo_next = e;
		else
			s->fifo_head = e;
		s->fifo_tail = e;
		s->st.waiting++;
		return;
	}
	start_cycle(e);
}

static void retry_fired(struct ev_loop *loop, ev_timer *t, int revents)
{
	(void)revents;
	struct sq_agent *e = t->data;
	ev_timer_stop(loop, t);
	kick(e);
}

void sqsqueue_wake(struct sqsqueue *s, const char *agent_id)
{
	if (!s)
		return;
	struct sq_agent *e = get(s, agent_id);
	if (!e)
		return;
	e->want = true;
	kick(e);
}

/* ---- registration: the agent's queue, then the answer ---- */

struct reg_op {
	struct opnode node;
	struct sqsqueue *s;
	struct sq_agent *e;
	struct server_req *r;     /* NULL when the client went away */
	cJSON *answer;
	char name[SQS_QUEUE_NAME_MAX + 1];
	char url[URL_MAX];
	bool asked_url;           /* GetQueueUrl after QueueNameExists */
	uint64_t call;
};

static void reg_free(struct reg_op *op)
{
	if (op->r)
		server_on_abort(op->r, NULL, NULL);
	cJSON_Delete(op->answer);
	op->e->creating--;
	free(op);
}

static void reg_destroy(struct opnode *n)
{
	struct reg_op *op = (struct reg_op *)n;
	if (op->r)
		server_respond_error(op->r, 503, "unavailable", "the coordinator is stopping");
	reg_free(op);
}

static void reg_abort(struct server_req *r, void *arg)
{
	(void)r;
	struct reg_op *op = arg;
	op->r = NULL;
}

static void reg_fail(struct reg_op *op, const char *why)
{
	log_warn("sqsqueue.queue_create_failed", "agent=%s queue=%s reason=\"%s\"", op->e->id,
		 op->name, why);
	op_unlink(&op->node);
	if (op->r) {
		server_on_abort(op->r, NULL, NULL);
		server_respond_error(op->r, 503, "unavailable",
				     "the agent's SQS queue cannot be made now (%s): "
				     "register again", why);
		op->r = NULL;
	}
	reg_free(op);
}

static int save_tx(struct store_tx *tx, void *arg)
{
	struct reg_op *op = arg;
	sqlite3_stmt *st = store_stmt(tx, "INSERT INTO sqs_queues(agent, url, name, created_ms) "
					  "VALUES (?, ?, ?, ?) ON CONFLICT(agent) DO UPDATE SET "
					  "url = excluded.url, name = excluded.name, "
					  "created_ms = excluded.created_ms");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, op->e->id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, op->url, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, op->name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 4, clock_wall_ms());
	return store_step(tx, st) == SQLITE_DONE ? 0 : -1;
}

static void save_done(int rc, void *arg)
{
	struct reg_op *op = arg;
	struct sqsqueue *s = op->s;
	struct sq_agent *e = op->e;
	s->in_store--;
	if (rc < 0) {
		op_link(s, &op->node);
		reg_fail(op, "the store is busy");
		return;
	}
	set_url(e, op->url);
	snprintf(e->name, sizeof e->name, "%s", op->name);
	e->removed = false;
	if (op->r) {
		server_on_abort(op->r, NULL, NULL);
		cJSON_AddStringToObject(op->answer, "queue_url", op->url);
		cJSON_AddStringToObject(op->answer, "queue_region", s->region);
		server_respond_json_take(op->r, 200, op->answer);
		op->answer = NULL;
		op->r = NULL;
	}
	log_info("sqsqueue.queue_ready", "agent=%s url=%s", e->id, op->url);
	reg_free(op);
	e->want = true; /* what registration queued, and anything sent before */
	kick(e);
}

static void on_created(const struct sqs_result *res, void *arg)
{
	struct reg_op *op = arg;
	struct sqsqueue *s = op->s;
	op->call = 0;
	if (res->status == SQS_REFUSED && !op->asked_url && sqs_error_is(res, "QueueNameExists")) {
		/* It exists with other attributes (queue.lease changed): use it. */
		op->asked_url = true;
		if ((op->call = sqs_get_queue_url(s->sqs, op->name, on_created, op)))
			return;
	}
	if (res->status != SQS_OK || !res->queue_url || !*res->queue_url ||
	    strlen(res->queue_url) >= sizeof op->url) {
		char why[256];
		const char *code = res->error_code && *res->error_code ? res->error_code
								       : "unreachable";
		const char *text = res->message ? res->message : "";
		snprintf(why, sizeof why, "%s%s%s", code, *text ? ": " : "", text);
		reg_fail(op, why);
		return;
	}
	if (!op->asked_url)
		s->st.queues_created++;
	snprintf(op->url, sizeof op->url, "%s", res->queue_url);
	op_unlink(&op->node);
	if (store_submit(s->c->store, save_tx, save_done, op) < 0) {
		op_link(s, &op->node);
		reg_fail(op, "the store is busy");
		return;
	}
	s->in_store++;
}

void sqsqueue_register_answer(struct sqsqueue *s, const struct agent *ag, struct server_req *r,
			      cJSON *answer)
{
	struct sq_agent *e = get(s, ag->id);
	struct reg_op *op = e ? calloc(1, sizeof *op) : NULL;
	if (!op) {
		if (r)
			server_respond_error(r, 503, "unavailable", "out of memory");
		cJSON_Delete(answer);
		return;
	}
	op->node.destroy = reg_destroy;
	op->s = s;
	op->e = e;
	op->r = r;
	op->answer = answer;
	e->creating++;
	if (sqsqueue_queue_name(s->prefix, ag->instance_id, op->name, sizeof op->name) < 0) {
		op_link(s, &op->node);
		reg_fail(op, "no queue name for this instance id");
		return;
	}
	char vis[24];
	snprintf(vis, sizeof vis, "%lld", (long long)s->lease_s);
	/* Messages carry release specs, environments included: encrypted at rest. */
	const struct sqs_kv attrs[] = {{"VisibilityTimeout", vis},
				       {"SqsManagedSseEnabled", "true"}};
	const struct sqs_kv tags[] = {{SQSQUEUE_TAG_INSTANCE, ag->instance_id},
				      {SQSQUEUE_TAG_FLEET, ag->fleet},
				      {SQSQUEUE_TAG_AGENT, ag->id}};
	op_link(s, &op->node);
	if (r)
		server_on_abort(r, reg_abort, op);
	op->call = sqs_create_queue(s->sqs, op->name, attrs, 2, tags, 3, on_created, op);
	if (!op->call)
		reg_fail(op, "the client refused the request");
}

/* ---- deleting queues ---- */

struct del_op {
	struct opnode node;
	struct sqsqueue *s;
	char agent[AGENT_ID_MAX + 1]; /* "" for an orphan nobody knew */
	char url[URL_MAX];
	uint64_t call;
};

static void del_destroy(struct opnode *n)
{
	free(n);
}

static int forget_tx(struct store_tx *tx, void *arg)
{
	struct del_op *op = arg;
	sqlite3_stmt *st = store_stmt(tx, "DELETE FROM sqs_queues WHERE url = ?");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, op->url, -1, SQLITE_STATIC);
	return store_step(tx, st) == SQLITE_DONE ? 0 : -1;
}

static void forget_done(int rc, void *arg)
{
	struct del_op *op = arg;
	op->s->in_store--;
	(void)rc;
	free(op);
}

static void on_deleted(const struct sqs_result *res, void *arg)
{
	struct del_op *op = arg;
	struct sqsqueue *s = op->s;
	op_unlink(&op->node);
	if (res->status != SQS_OK) {
		/* The next sweep finds it again. */
		log_warn("sqsqueue.queue_delete_failed", "agent=%s url=%s code=%s", op->agent,
			 op->url, res->error_code ? res->error_code : "");
		free(op);
		return;
	}
	s->st.queues_deleted++;
	log_info("sqsqueue.queue_deleted", "agent=%s url=%s", op->agent[0] ? op->agent : "-",
		 op->url);
	if (store_submit(s->c->store, forget_tx, forget_done, op) < 0) {
		free(op);
		return;
	}
	s->in_store++;
}

static void delete_queue(struct sqsqueue *s, const char *agent, const char *url)
{
	struct del_op *op = calloc(1, sizeof *op);
	if (!op || strlen(url) >= sizeof op->url) {
		free(op);
		return;
	}
	op->node.destroy = del_destroy;
	op->s = s;
	snprintf(op->agent, sizeof op->agent, "%s", agent ? agent : "");
	snprintf(op->url, sizeof op->url, "%s", url);
	op_link(s, &op->node);
	if (!(op->call = sqs_delete_queue(s->sqs, url, on_deleted, op))) {
		op_unlink(&op->node);
		free(op);
	}
}

void sqsqueue_agent_left(struct sqsqueue *s, const char *agent_id)
{
	struct sq_agent *e = s ? find(s, agent_id) : NULL;
	if (!e)
		return;
	e->removed = true;
	e->want = false;
	if (e->url) {
		delete_queue(s, e->id, e->url);
		set_url(e, NULL);
	}
}

/* ---- the orphan sweep ---- */

struct sweep_op {
	struct opnode node;
	struct sqsqueue *s;
	char **urls;
	size_t n, cap;
	uint64_t call;
};

static void sweep_free(struct sweep_op *op)
{
	for (size_t i = 0; i < op->n; i++)
		free(op->urls[i]);
	free(op->urls);
	op->s->sweeping = false;
	free(op);
}

static void sweep_destroy(struct opnode *n)
{
	sweep_free((struct sweep_op *)n);
}

struct by_url {
	const char *url;
	struct sq_agent *e;
	bool drop;
};

static int by_url_cmp(const void *a, const void *b)
{
	return strcmp(((const struct by_url *)a)->url, ((const struct by_url *)b)->url);
}

/* 1 when the agent behind a known queue still needs it. */
static int still_needed(struct sqsqueue *s, const struct sq_agent *e, int64_t now)
{
	if (e->removed)
		return 0;
	const struct agent *ag = agents_find(s->c->agents, e->id);
	if (!ag)
		return 0;
	switch (ag->state) {
	case AGENT_LIVE:
	case AGENT_DRAINING:
		return 1;
	case AGENT_LOST: /* a drained instance left for good: no grace */
		return !ag->lost_draining && now - ag->last_seen_ms < s->lost_grace_ms;
	default:
		return 0;
	}
}

static void sweep_decide(struct sweep_op *op)
{
	struct sqsqueue *s = op->s;
	struct by_url *idx = calloc(s->count ? s->count : 1, sizeof *idx);
	if (!idx)
		return;
	size_t n = 0;
	for (size_t b = 0; b < BUCKETS; b++)
		for (struct sq_agent *e = s->buckets[b]; e; e = e->next)
			if (e->url)
				idx[n++] = (struct by_url){e->url, e, false};
	qsort(idx, n, sizeof *idx, by_url_cmp);
	int64_t now = clock_wall_ms();
	size_t deleted = 0;
	for (size_t i = 0; i < op->n; i++) {
		struct by_url key = {op->urls[i], NULL, false};
		struct by_url *hit = bsearch(&key, idx, n, sizeof *idx, by_url_cmp);
		if (hit && still_needed(s, hit->e, now))
			continue;
		const char *name = sqs_queue_name_of(op->urls[i]);
		bool in_creation = false;
		for (struct opnode *o = s->ops.next; !hit && name && o != &s->ops; o = o->next)
			if (o->destroy == reg_destroy &&
			    strcmp(((struct reg_op *)o)->name, name) == 0)
				in_creation = true;
		if (in_creation)
			continue;
		/* A queue being made for a registration is not in s->ops while its URL
		 * is saved: its agent has creating > 0. */
		bool saving = false;
		for (size_t b = 0; !hit && name && b < BUCKETS && !saving; b++)
			for (struct sq_agent *e = s->buckets[b]; e; e = e->next)
				if (e->creating && strcmp(e->name, name) == 0)
					saving = true;
		if (saving)
			continue;
		log_info("sqsqueue.orphan", "url=%s agent=%s", op->urls[i],
			 hit ? hit->e->id : "unknown");
		delete_queue(s, hit ? hit->e->id : NULL, op->urls[i]);
		if (hit)
			hit->drop = true; /* forgotten below */
		deleted++;
	}
	/* idx points at the URL strings: forget them only now. */
	for (size_t i = 0; i < n; i++)
		if (idx[i].drop)
			set_url(idx[i].e, NULL);
	free(idx);
	log_info("sqsqueue.sweep", "queues=%zu deleted=%zu", op->n, deleted);
}

static void on_listed(const struct sqs_result *res, void *arg)
{
	struct sweep_op *op = arg;
	struct sqsqueue *s = op->s;
	op->call = 0;
	if (res->status != SQS_OK) {
		log_warn("sqsqueue.sweep_failed", "code=%s message=\"%s\"",
			 res->error_code ? res->error_code : "", res->message ? res->message : "");
		op_unlink(&op->node);
		sweep_free(op);
		return;
	}
	for (size_t i = 0; i < res->queue_url_count; i++) {
		if (op->n == op->cap) {
			size_t cap = op->cap ? op->cap * 2 : 256;
			char **p = realloc(op->urls, cap * sizeof *p);
			if (!p)
				break;
			op->urls = p;
			op->cap = cap;
		}
		if ((op->urls[op->n] = strdup(res->queue_urls[i])))
			op->n++;
	}
	if (res->next_token && *res->next_token) {
		op->call = sqs_list_queues(s->sqs, s->prefix, res->next_token, 1000, on_listed, op);
		if (op->call)
			return;
	}
	op_unlink(&op->node);
	sweep_decide(op);
	s->st.sweeps++;
	sweep_free(op);
}

void sqsqueue_sweep_now(struct sqsqueue *s)
{
	if (!s || s->sweeping)
		return;
	struct sweep_op *op = calloc(1, sizeof *op);
	if (!op)
		return;
	op->node.destroy = sweep_destroy;
	op->s = s;
	s->sweeping = true;
	op_link(s, &op->node);
	if (!(op->call = sqs_list_queues(s->sqs, s->prefix, NULL, 1000, on_listed, op))) {
		op_unlink(&op->node);
		sweep_free(op);
	}
}

static void sweep_tick(struct ev_loop *loop, ev_timer *t, int revents)
{
	(void)loop;
	(void)revents;
	sqsqueue_sweep_now(t->data);
}

/* ---- life cycle ---- */

bool sqsqueue_enabled(const struct config *cfg)
{
	return config_has(cfg, "queue.backend") &&
	       strcmp(config_str(cfg, "queue.backend"), "sqs") == 0;
}

static int create_tx(struct store_tx *tx, void *arg)
{
	(void)arg;
	return store_exec(tx, "CREATE TABLE IF NOT EXISTS sqs_queues ("
			      "  agent TEXT PRIMARY KEY,"
			      "  url TEXT NOT NULL,"
			      "  name TEXT NOT NULL,"
			      "  created_ms INTEGER NOT NULL)");
}

static int load_tx(struct store_tx *tx, void *arg)
{
	struct sqsqueue *s = arg;
	sqlite3_stmt *st = store_stmt(tx, "SELECT agent, url, name FROM sqs_queues");
	if (!st)
		return -1;
	int rc;
	while ((rc = store_step(tx, st)) == SQLITE_ROW) {
		struct sq_agent *e = get(s, store_col_text(st, 0));
		if (!e)
			return err_set(&tx->err, "out of memory");
		set_url(e, store_col_text(st, 1));
		snprintf(e->name, sizeof e->name, "%s", store_col_text(st, 2));
	}
	return rc == SQLITE_DONE ? 0 : -1;
}

struct sqsqueue *sqsqueue_new(struct coord *c, struct err *err)
{
	const struct config *cfg = c->cfg;
	const char *region = config_has(cfg, "queue.sqs_region")
				     ? config_str(cfg, "queue.sqs_region") : "";
	const char *prefix = config_str(cfg, "queue.sqs_prefix");
	if (!*region) {
		err_set(err, "queue.sqs_region: required with queue.backend = sqs");
		return NULL;
	}
	char probe[SQS_QUEUE_NAME_MAX + 1];
	if (sqsqueue_queue_name(prefix, "i-0", probe, sizeof probe) < 0) {
		err_set(err, "queue.sqs_prefix: at most %d of [A-Za-z0-9_-]", PREFIX_MAX);
		return NULL;
	}
	struct sqsqueue *s = calloc(1, sizeof *s);
	if (!s) {
		err_set(err, "out of memory");
		return NULL;
	}
	s->c = c;
	s->ops.next = s->ops.prev = &s->ops;
	snprintf(s->region, sizeof s->region, "%s", region);
	snprintf(s->prefix, sizeof s->prefix, "%s", prefix);
	s->concurrency = (int)config_int(cfg, "queue.sqs_concurrency");
	s->lease_s = config_ms(cfg, "queue.lease") / 1000;
	if (s->lease_s < 1)
		s->lease_s = 1;
	s->lost_grace_ms = config_ms(cfg, "queue.sqs_lost_grace");
	ev_timer_init(&s->sweep_timer, sweep_tick, 0.0,
		      (double)config_ms(cfg, "queue.sqs_sweep_interval") / 1000.0);
	s->sweep_timer.data = s;
	struct aws_credentials_opts ao = {0};
	struct sqs_opts so = {
		.region = s->region,
		.endpoint = config_has(cfg, "queue.sqs_endpoint")
				    ? config_str(cfg, "queue.sqs_endpoint") : NULL,
	};
	if (!(s->creds = aws_credentials_new(c->loop, c->http, &ao, err)) ||
	    !(s->sqs = sqs_new(c->loop, c->http, s->creds, &so, err)) ||
	    store_run(c->store, create_tx, NULL, err) < 0 ||
	    store_run(c->store, load_tx, s, err) < 0) {
		sqsqueue_free(s);
		return NULL;
	}
	log_info("sqsqueue.ready", "region=%s endpoint=%s prefix=%s queues=%zu concurrency=%d",
		 s->region, so.endpoint ? so.endpoint : "(the region's)", s->prefix, s->count,
		 s->concurrency);
	return s;
}

void sqsqueue_start(struct sqsqueue *s)
{
	if (!s || s->started)
		return;
	s->started = true;
	if (s->sweep_timer.repeat > 0) {
		/* The first sweep a minute after start: agents re-register first. */
		ev_timer_set(&s->sweep_timer, s->sweep_timer.repeat < 60.0 ? s->sweep_timer.repeat
									   : 60.0,
			     s->sweep_timer.repeat);
		ev_timer_start(s->c->loop, &s->sweep_timer);
		ev_unref(s->c->loop);
	}
	for (size_t b = 0; b < BUCKETS; b++)
		for (struct sq_agent *e = s->buckets[b]; e; e = e->next) {
			e->want = true;
			kick(e);
		}
}

void sqsqueue_free(struct sqsqueue *s)
{
	if (!s)
		return;
	if (s->started && ev_is_active(&s->sweep_timer)) {
		ev_ref(s->c->loop);
		ev_timer_stop(s->c->loop, &s->sweep_timer);
	}
	sqs_free(s->sqs); /* no more callbacks */
	s->sqs = NULL;
	while (s->ops.next != &s->ops) {
		struct opnode *n = s->ops.next;
		op_unlink(n);
		n->destroy(n);
	}
	for (size_t b = 0; b < BUCKETS; b++) {
		while (s->buckets[b]) {
			struct sq_agent *e = s->buckets[b];
			s->buckets[b] = e->next;
			ev_timer_stop(s->c->loop, &e->retry);
			free(e->url);
			free(e);
		}
	}
	aws_credentials_free(s->creds);
	free(s);
}

void sqsqueue_stats(const struct sqsqueue *s, struct sqsqueue_stats *out)
{
	*out = s->st;
}

const char *sqsqueue_url(const struct sqsqueue *s, const char *agent_id)
{
	const struct sq_agent *e = find(s, agent_id);
	return e ? e->url : NULL;
}

bool sqsqueue_idle(const struct sqsqueue *s)
{
	return s->ops.next == &s->ops && s->in_store == 0 && s->st.active == 0 && !s->sweeping;
}
