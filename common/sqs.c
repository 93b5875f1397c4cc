#include "sqs.h"

#include <ev.h>
#include <mbedtls/md5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "awsjson.h"
#include "backoff.h"
#include "crypto.h"
#include "json.h"
#include "log.h"

#define DEFAULT_MAX_ATTEMPTS 4
#define DEFAULT_RETRY_BASE_MS 100
#define DEFAULT_RETRY_CAP_MS 20000
#define LONG_POLL_MARGIN_MS 10000
#define URL_MAX 2048
#define RECEIPT_MAX 4096

enum op {
	OP_CREATE,
	OP_GET_URL,
	OP_DELETE_QUEUE,
	OP_LIST,
	OP_TAG,
	OP_LIST_TAGS,
	OP_SEND,
	OP_RECEIVE,
	OP_CHANGE_VISIBILITY,
	OP_DELETE_MESSAGE,
};

static const char *const op_action[] = {
	[OP_CREATE] = "CreateQueue",
	[OP_GET_URL] = "GetQueueUrl",
	[OP_DELETE_QUEUE] = "DeleteQueue",
	[OP_LIST] = "ListQueues",
	[OP_TAG] = "TagQueue",
	[OP_LIST_TAGS] = "ListQueueTags",
	[OP_SEND] = "SendMessageBatch",
	[OP_RECEIVE] = "ReceiveMessage",
	[OP_CHANGE_VISIBILITY] = "ChangeMessageVisibility",
	[OP_DELETE_MESSAGE] = "DeleteMessage",
};

struct bentry {
	char *id;
	char *body;
	size_t len;
	int delay_s;
	char md5[33];
	bool settled;            /* accepted, or refused for good */
	bool ok;
	char message_id[128];
	char code[96];
	char msg[256];
	bool sender_fault;
};

struct scall {
	struct sqs *q;
	struct scall *prev, *next;
	uint64_t id;
	enum op op;
	char *body;              /* the request (SendMessageBatch: rebuilt per round) */
	size_t len;
	char *queue_url;         /* SendMessageBatch rounds */
	int64_t timeout_ms;
	uint64_t jid;            /* the awsjson call in flight */
	struct bentry *ents;
	size_t n;
	int rounds;              /* SendMessageBatch requests made */
	bool timer_on;
	ev_timer delay;
	int attempts;
	int throttled;
	sqs_done_fn done;
	void *arg;
};

struct sqs {
	struct ev_loop *loop;
	struct awsjson *j;
	struct scall *calls;
	uint64_t next_id;
	size_t pending;
	int max_attempts;
	struct backoff_policy retry;
};

/* ---- building blocks ---- */

int sqs_queue_name_valid(const char *name)
{
	size_t n = name ? strlen(name) : 0;
	if (n == 0 || n > SQS_QUEUE_NAME_MAX)
		return 0;
	for (const char *p = name; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		      (*p >= '0' && *p <= '9') || *p == '-' || *p == '_'))
			return 0;
	return 1;
}

/* Batch entry ids: 1..80 of [A-Za-z0-9_-]. */
static int entry_id_valid(const char *id)
{
	size_t n = id ? strlen(id) : 0;
	if (n == 0 || n > SQS_ENTRY_ID_MAX)
		return 0;
	for (const char *p = id; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		      (*p >= '0' && *p <= '9') || *p == '-' || *p == '_'))
			return 0;
	return 1;
}

int sqs_body_valid(const char *body, size_t len, size_t *bad_at)
{
	size_t bad;
	if (json_utf8_check(body, len, &bad) < 0) {
		if (bad_at)
			*bad_at = bad;
		return -1;
	}
	const unsigned char *p = (const unsigned char *)body;
	for (size_t i = 0; i < len;) {
		unsigned char c = p[i];
		if (c < 0x80) {
			if (c < 0x20 && c != 0x09 && c != 0x0a && c != 0x0d) {
				if (bad_at)
					*bad_at = i;
				return -1;
			}
			i++;
			continue;
		}
		/* Valid UTF-8 already: only U+FFFE and U+FFFF are left to refuse
		 * (surrogates are not valid UTF-8). */
		if (c == 0xEF && i + 2 < len && p[i + 1] == 0xBF && (p[i + 2] == 0xBE || p[i + 2] == 0xBF)) {
			if (bad_at)
				*bad_at = i;
			return -1;
		}
		i += c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
	}
	return 0;
}

void sqs_md5_hex(const void *data, size_t len, char out[33])
{
	unsigned char d[16];
	if (mbedtls_md5_ret(data, len, d) != 0)
		memset(d, 0, sizeof d);
	crypto_hex(d, sizeof d, out);
}

const char *sqs_queue_name_of(const char *url)
{
	if (!url)
		return NULL;
	const char *slash = strrchr(url, '/');
	const char *name = slash ? slash + 1 : url;
	return *name ? name : NULL;
}

int sqs_error_is(const struct sqs_result *res, const char *name)
{
	if (!res || res->status == SQS_OK)
		return 0;
	struct awsjson_result r = {.status = AWSJSON_ERROR,
				   .code = res->error_code ? res->error_code : "",
				   .query_code = res->query_code ? res->query_code : ""};
	return awsjson_error_is(&r, name);
}

/* ---- calls ---- */

/* Takes the call out of the client (nothing can reach it any more). */
static void call_unlink(struct scall *c)
{
	struct sqs *q = c->q;
	if (c->jid)
		awsjson_cancel(q->j, c->jid);
	c->jid = 0;
	if (c->timer_on)
		ev_timer_stop(q->loop, &c->delay);
	c->timer_on = false;
	if (c->prev)
		c->prev->next = c->next;
	else
		q->calls = c->next;
	if (c->next)
		c->next->prev = c->prev;
	q->pending--;
}

static void call_release(struct scall *c)
{
	for (size_t i = 0; i < c->n; i++) {
		free(c->ents[i].id);
		free(c->ents[i].body);
	}
	free(c->ents);
	free(c->queue_url);
	free(c->body);
	free(c);
}

static void call_free(struct scall *c)
{
	call_unlink(c);
	call_release(c);
}

static void on_json(const struct awsjson_result *r, void *arg);
static void on_send_delay(struct ev_loop *loop, ev_timer *t, int revents);

static int submit(struct scall *c)
{
	c->jid = awsjson_call(c->q->j, op_action[c->op], c->body, c->len, c->timeout_ms, on_json, c);
	return c->jid ? 0 : -1;
}

static struct scall *call_new(struct sqs *q, enum op op, cJSON *req, sqs_done_fn done, void *arg)
{
	if (!q || !req || !done) {
		cJSON_Delete(req);
		return NULL;
	}
	struct scall *c = calloc(1, sizeof *c);
	char *text = cJSON_PrintUnformatted(req);
	cJSON_Delete(req);
	if (!c || !text) {
		free(c);
		free(text);
		return NULL;
	}
	c->q = q;
	c->op = op;
	c->body = text;
	c->len = strlen(text);
	c->done = done;
	c->arg = arg;
	c->id = q->next_id++;
	ev_timer_init(&c->delay, on_send_delay, 0.0, 0.0);
	c->delay.data = c;
	c->next = q->calls;
	if (q->calls)
		q->calls->prev = c;
	q->calls = c;
	q->pending++;
	return c;
}

static uint64_t start(struct scall *c)
{
	if (!c)
		return 0;
	if (submit(c) < 0) {
		call_free(c);
		return 0;
	}
	return c->id;
}

static enum sqs_status map_status(const struct awsjson_result *r)
{
	switch (r->status) {
	case AWSJSON_OK:
		return SQS_OK;
	case AWSJSON_UNREACHABLE:
		return SQS_UNREACHABLE;
	case AWSJSON_ERROR:
		break;
	}
	if (awsjson_error_is(r, "QueueDoesNotExist") ||
	    awsjson_error_is(r, "AWS.SimpleQueueService.NonExistentQueue"))
		return SQS_NOT_FOUND;
	return SQS_REFUSED;
}

static void base_result(struct sqs_result *out, const struct scall *c,
			const struct awsjson_result *r)
{
	memset(out, 0, sizeof *out);
	out->status = map_status(r);
	out->http_status = r->http_status;
	out->error_code = r->code;
	out->query_code = r->query_code;
	out->message = r->message;
	out->attempts = c->attempts;
	out->throttled = c->throttled;
}

/* The result may point into the call (batch entries): it is freed after done. */
static void report(struct scall *c, struct sqs_result *res)
{
	c->jid = 0;
	call_unlink(c);
	c->done(res, c->arg);
	call_release(c);
}

static const char *str_at(const cJSON *obj, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
	return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int64_t int_attr(const cJSON *attrs, const char *key)
{
	const char *s = str_at(attrs, key);
	if (!s)
		return 0;
	char *end;
	long long v = strtoll(s, &end, 10);
	return end != s && !*end && v >= 0 ? (int64_t)v : 0;
}

/* A malformed 2xx answer: reported as unreachable (SQS did answer, but with
 * nothing we can act on; the caller tries again). */
static void malformed(struct scall *c, const struct awsjson_result *r, const char *what)
{
	struct sqs_result res;
	base_result(&res, c, r);
	res.status = SQS_UNREACHABLE;
	res.error_code = "MalformedAnswer";
	res.message = what;
	log_warn("sqs.malformed_answer", "action=%s problem=\"%s\"", op_action[c->op], what);
	report(c, &res);
}

static void done_receive(struct scall *c, const struct awsjson_result *r)
{
	struct sqs_result res;
	base_result(&res, c, r);
	const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(r->doc, "Messages");
	size_t n = cJSON_IsArray(msgs) ? (size_t)cJSON_GetArraySize(msgs) : 0;
	if (msgs && !cJSON_IsArray(msgs) && !cJSON_IsNull(msgs)) {
		malformed(c, r, "Messages is not an array");
		return;
	}
	struct sqs_message *out = n ? calloc(n, sizeof *out) : NULL;
	if (n && !out) {
		malformed(c, r, "out of memory");
		return;
	}
	size_t k = 0;
	const cJSON *m;
	cJSON_ArrayForEach(m, msgs)
	{
		const char *id = str_at(m, "MessageId"), *rh = str_at(m, "ReceiptHandle");
		const char *body = str_at(m, "Body"), *md5 = str_at(m, "MD5OfBody");
		if (!id || !rh || !body) {
			res.corrupt++;
			continue;
		}
		size_t len = strlen(body);
		char want[33];
		sqs_md5_hex(body, len, want);
		if (!md5 || strcmp(md5, want) != 0) {
			log_warn("sqs.md5_mismatch", "message_id=%s: left for a later receive", id);
			res.corrupt++;
			continue;
		}
		const cJSON *attrs = cJSON_GetObjectItemCaseSensitive(m, "Attributes");
		struct sqs_message *o = &out[k++];
		o->message_id = id;
		o->receipt_handle = rh;
		o->body = body;
		o->body_len = len;
		o->receive_count = int_attr(attrs, "ApproximateReceiveCount");
		if (o->receive_count < 1)
			o->receive_count = 1;
		o->sent_ms = int_attr(attrs, "SentTimestamp");
		o->first_receive_ms = int_attr(attrs, "ApproximateFirstReceiveTimestamp");
	}
	res.messages = out;
	res.message_count = k;
	report(c, &res);
	free(out);
}

static void done_list(struct scall *c, const struct awsjson_result *r)
{
	struct sqs_result res;
	base_result(&res, c, r);
	const cJSON *urls = cJSON_GetObjectItemCaseSensitive(r->doc, "QueueUrls");
	size_t n = cJSON_IsArray(urls) ? (size_t)cJSON_GetArraySize(urls) : 0;
	const char **out = n ? calloc(n, sizeof *out) : NULL;
	if (n && !out) {
		malformed(c, r, "out of memory");
		return;
	}
	size_t k = 0;
	const cJSON *u;
	cJSON_ArrayForEach(u, urls)
	{
		if (cJSON_IsString(u))
			out[k++] = u->valuestring;
	}
	res.queue_urls = out;
	res.queue_url_count = k;
	const char *next = str_at(r->doc, "NextToken");
	res.next_token = next && *next ? next : NULL;
	report(c, &res);
	free(out);
}

static void done_tags(struct scall *c, const struct awsjson_result *r)
{
	struct sqs_result res;
	base_result(&res, c, r);
	const cJSON *tags = cJSON_GetObjectItemCaseSensitive(r->doc, "Tags");
	size_t n = cJSON_IsObject(tags) ? (size_t)cJSON_GetArraySize(tags) : 0;
	struct sqs_kv *out = n ? calloc(n, sizeof *out) : NULL;
	if (n && !out) {
		malformed(c, r, "out of memory");
		return;
	}
	size_t k = 0;
	const cJSON *t;
	cJSON_ArrayForEach(t, tags)
	{
		if (cJSON_IsString(t)) {
			out[k].key = t->string;
			out[k++].value = t->valuestring;
		}
	}
	res.tags = out;
	res.tag_count = k;
	report(c, &res);
	free(out);
}

/* ---- SendMessageBatch ---- */

static int batch_body(struct scall *c)
{
	cJSON *req = cJSON_CreateObject();
	cJSON *arr = req ? cJSON_AddArrayToObject(req, "Entries") : NULL;
	if (!arr || !cJSON_AddStringToObject(req, "QueueUrl", c->queue_url)) {
		cJSON_Delete(req);
		return -1;
	}
	for (size_t i = 0; i < c->n; i++) {
		struct bentry *e = &c->ents[i];
		if (e->settled)
			continue;
		cJSON *o = cJSON_CreateObject();
		if (!o || !cJSON_AddStringToObject(o, "Id", e->id) ||
		    !cJSON_AddStringToObject(o, "MessageBody", e->body) ||
		    (e->delay_s && !cJSON_AddNumberToObject(o, "DelaySeconds", e->delay_s))) {
			cJSON_Delete(o);
			cJSON_Delete(req);
			return -1;
		}
		cJSON_AddItemToArray(arr, o);
	}
	char *text = cJSON_PrintUnformatted(req);
	cJSON_Delete(req);
	if (!text)
		return -1;
	free(c->body);
	c->body = text;
	c->len = strlen(text);
	return 0;
}

static struct bentry *entry_named(struct scall *c, const char *id)
{
	for (size_t i = 0; id && i < c->n; i++)
		if (strcmp(c->ents[i].id, id) == 0)
			return &c->ents[i];
	return NULL;
}

static void send_report(struct scall *c, const struct awsjson_result *r, enum sqs_status st)
{
	struct sqs_result res;
	base_result(&res, c, r);
	res.status = st;
	struct sqs_entry_result *out = calloc(c->n ? c->n : 1, sizeof *out);
	if (!out) {
		malformed(c, r, "out of memory");
		return;
	}
	for (size_t i = 0; i < c->n; i++) {
		struct bentry *e = &c->ents[i];
		struct sqs_entry_result *o = &out[i];
		o->id = e->id;
		o->ok = e->ok;
		o->message_id = e->ok ? e->message_id : NULL;
		if (!e->ok) {
			if (!e->code[0]) /* never answered: the call's own failure */
				snprintf(e->code, sizeof e->code, "%s", r->code[0] ? r->code : "Unsent");
			o->code = e->code;
			o->message = e->msg[0] ? e->msg : r->message;
			o->sender_fault = e->sender_fault;
			res.failed++;
		}
	}
	res.entries = out;
	res.entry_count = c->n;
	report(c, &res);
	free(out);
}

static void on_send_delay(struct ev_loop *loop, ev_timer *t, int revents)
{
	(void)loop;
	(void)revents;
	struct scall *c = t->data;
	c->timer_on = false;
	if (batch_body(c) < 0 || submit(c) < 0) {
		struct awsjson_result r = {.status = AWSJSON_UNREACHABLE, .code = "InternalError",
					   .query_code = "", .message = "out of memory"};
		send_report(c, &r, SQS_UNREACHABLE);
	}
}

static void done_send(struct scall *c, const struct awsjson_result *r)
{
	c->rounds++;
	const cJSON *ok = cJSON_GetObjectItemCaseSensitive(r->doc, "Successful");
	const cJSON *failed = cJSON_GetObjectItemCaseSensitive(r->doc, "Failed");
	const cJSON *e;
	cJSON_ArrayForEach(e, ok)
	{
		struct bentry *b = entry_named(c, str_at(e, "Id"));
		if (!b || b->settled)
			continue;
		const char *md5 = str_at(e, "MD5OfMessageBody");
		const char *mid = str_at(e, "MessageId");
		if (!md5 || strcmp(md5, b->md5) != 0 || !mid) {
			/* What SQS stored is not what we sent: send it again. */
			snprintf(b->code, sizeof b->code, "MD5Mismatch");
			snprintf(b->msg, sizeof b->msg, "MD5OfMessageBody %s, expected %s",
				 md5 ? md5 : "(none)", b->md5);
			b->sender_fault = false;
			continue;
		}
		b->settled = b->ok = true;
		snprintf(b->message_id, sizeof b->message_id, "%s", mid);
	}
	cJSON_ArrayForEach(e, failed)
	{
		struct bentry *b = entry_named(c, str_at(e, "Id"));
		if (!b || b->settled)
			continue;
		const cJSON *sf = cJSON_GetObjectItemCaseSensitive(e, "SenderFault");
		const char *code = str_at(e, "Code"), *msg = str_at(e, "Message");
		snprintf(b->code, sizeof b->code, "%s", code ? code : "Unknown");
		snprintf(b->msg, sizeof b->msg, "%s", msg ? msg : "");
		b->sender_fault = cJSON_IsTrue(sf);
		if (b->sender_fault)
			b->settled = true; /* the entry itself is wrong: never resend */
	}
	size_t open = 0;
	for (size_t i = 0; i < c->n; i++) {
		struct bentry *b = &c->ents[i];
		if (b->settled)
			continue;
		if (!b->code[0]) { /* in neither list: treat as not accepted */
			snprintf(b->code, sizeof b->code, "Unanswered");
			snprintf(b->msg, sizeof b->msg, "the answer did not mention this entry");
		}
		open++;
	}
	if (open == 0 || c->rounds >= c->q->max_attempts) {
		send_report(c, r, SQS_OK);
		return;
	}
	log_info("sqs.batch_retry", "entries=%zu round=%d", open, c->rounds);
	c->jid = 0;
	ev_timer_set(&c->delay, (double)backoff_delay(&c->q->retry, c->rounds) / 1000.0, 0.0);
	ev_timer_start(c->q->loop, &c->delay);
	c->timer_on = true;
}

static void on_json(const struct awsjson_result *r, void *arg)
{
	struct scall *c = arg;
	c->jid = 0;
	c->attempts += r->attempts;
	c->throttled += r->throttled;
	if (c->op == OP_SEND) {
		if (r->status == AWSJSON_OK)
			done_send(c, r);
		else
			send_report(c, r, map_status(r));
		return;
	}
	if (r->status != AWSJSON_OK) {
		struct sqs_result res;
		base_result(&res, c, r);
		/* Deleting a queue that is already gone has what the caller wanted. */
		if (c->op == OP_DELETE_QUEUE && res.status == SQS_NOT_FOUND)
			res.status = SQS_OK;
		if (res.status != SQS_OK && res.status != SQS_UNREACHABLE)
			log_debug("sqs.refused", "action=%s code=%s message=\"%s\"", op_action[c->op],
				  r->code, r->message);
		report(c, &res);
		return;
	}
	switch (c->op) {
	case OP_CREATE:
	case OP_GET_URL: {
		const char *url = str_at(r->doc, "QueueUrl");
		if (!url || !*url) {
			malformed(c, r, "no QueueUrl in the answer");
			return;
		}
		struct sqs_result res;
		base_result(&res, c, r);
		res.queue_url = url;
		report(c, &res);
		return;
	}
	case OP_LIST:
		done_list(c, r);
		return;
	case OP_LIST_TAGS:
		done_tags(c, r);
		return;
	case OP_RECEIVE:
		done_receive(c, r);
		return;
	case OP_SEND:
	case OP_DELETE_QUEUE:
	case OP_TAG:
	case OP_CHANGE_VISIBILITY:
	case OP_DELETE_MESSAGE: {
		struct sqs_result res;
		base_result(&res, c, r);
		report(c, &res);
		return;
	}
	}
}

/* ---- the client ---- */

struct sqs *sqs_new(struct ev_loop *loop, struct http_client *http,
		    struct aws_credentials_provider *creds, const struct sqs_opts *o, struct err *err)
{
	if (!o) {
		err_set(err, "sqs: options are required");
		return NULL;
	}
	struct sqs *q = calloc(1, sizeof *q);
	if (!q) {
		err_set(err, "sqs: out of memory");
		return NULL;
	}
	struct awsjson_opts jo = {
		.region = o->region,
		.service = SQS_SERVICE,
		.endpoint = o->endpoint,
		.default_endpoint = "https://sqs.%s.amazonaws.com",
		.target_prefix = SQS_TARGET_PREFIX,
		.content_type = SQS_CONTENT_TYPE,
		.ca_file = o->ca_file,
		.timeout_ms = o->timeout_ms,
		.retry_base_ms = o->retry_base_ms,
		.retry_cap_ms = o->retry_cap_ms,
		.max_attempts = o->max_attempts,
		.throttle_attempts = o->throttle_attempts,
		.max_answer = SQS_MAX_ANSWER,
	};
	q->j = awsjson_new(loop, http, creds, &jo, err);
	if (!q->j) {
		err_prefix(err, "sqs");
		free(q);
		return NULL;
	}
	q->loop = loop;
	q->next_id = 1;
	q->max_attempts = o->max_attempts > 0 ? o->max_attempts : DEFAULT_MAX_ATTEMPTS;
	q->retry.base_ms = o->retry_base_ms > 0 ? o->retry_base_ms : DEFAULT_RETRY_BASE_MS;
	q->retry.cap_ms = o->retry_cap_ms > 0 ? o->retry_cap_ms : DEFAULT_RETRY_CAP_MS;
	return q;
}

void sqs_free(struct sqs *q)
{
	if (!q)
		return;
	while (q->calls)
		call_free(q->calls);
	awsjson_free(q->j);
	free(q);
}

void sqs_cancel(struct sqs *q, uint64_t id)
{
	if (!q || !id)
		return;
	for (struct scall *c = q->calls; c; c = c->next) {
		if (c->id == id) {
			call_free(c);
			return;
		}
	}
}

size_t sqs_pending(const struct sqs *q)
{
	return q ? q->pending : 0;
}

static int url_ok(const char *url)
{
	return url && *url && strlen(url) < URL_MAX;
}

static cJSON *with_url(const char *url)
{
	if (!url_ok(url))
		return NULL;
	cJSON *req = cJSON_CreateObject();
	if (req && !cJSON_AddStringToObject(req, "QueueUrl", url)) {
		cJSON_Delete(req);
		return NULL;
	}
	return req;
}

/* Adds {"k": "v", ...} under name; -1 on a bad or repeated key. */
static int add_map(cJSON *req, const char *name, const struct sqs_kv *kv, size_t n)
{
	if (n == 0)
		return 0;
	cJSON *m = cJSON_AddObjectToObject(req, name);
	if (!m)
		return -1;
	for (size_t i = 0; i < n; i++) {
		if (!kv[i].key || !*kv[i].key || !kv[i].value ||
		    cJSON_GetObjectItemCaseSensitive(m, kv[i].key) ||
		    !cJSON_AddStringToObject(m, kv[i].key, kv[i].value))
			return -1;
	}
	return 0;
}

uint64_t sqs_create_queue(struct sqs *q, const char *name, const struct sqs_kv *attrs,
			  size_t nattrs, const struct sqs_kv *tags, size_t ntags, sqs_done_fn done,
			  void *arg)
{
	if (!sqs_queue_name_valid(name) || ntags > SQS_TAGS_MAX)
		return 0;
	cJSON *req = cJSON_CreateObject();
	if (!req || !cJSON_AddStringToObject(req, "QueueName", name) ||
	    add_map(req, "Attributes", attrs, nattrs) < 0 || add_map(req, "tags", tags, ntags) < 0) {
		cJSON_Delete(req);
		return 0;
	}
	return start(call_new(q, OP_CREATE, req, done, arg));
}

uint64_t sqs_get_queue_url(struct sqs *q, const char *name, sqs_done_fn done, void *arg)
{
	if (!sqs_queue_name_valid(name))
		return 0;
	cJSON *req = cJSON_CreateObject();
	if (!req || !cJSON_AddStringToObject(req, "QueueName", name)) {
		cJSON_Delete(req);
		return 0;
	}
	return start(call_new(q, OP_GET_URL, req, done, arg));
}

uint64_t sqs_delete_queue(struct sqs *q, const char *queue_url, sqs_done_fn done, void *arg)
{
	cJSON *req = with_url(queue_url);
	return req ? start(call_new(q, OP_DELETE_QUEUE, req, done, arg)) : 0;
}

uint64_t sqs_list_queues(struct sqs *q, const char *prefix, const char *next_token,
			 int max_results, sqs_done_fn done, void *arg)
{
	if (max_results < 0 || max_results > 1000 || (next_token && !*next_token) ||
	    (prefix && strlen(prefix) > SQS_QUEUE_NAME_MAX))
		return 0;
	cJSON *req = cJSON_CreateObject();
	if (!req || (prefix && *prefix && !cJSON_AddStringToObject(req, "QueueNamePrefix", prefix)) ||
	    (next_token && !cJSON_AddStringToObject(req, "NextToken", next_token)) ||
	    (max_results && !cJSON_AddNumberToObject(req, "MaxResults", max_results))) {
		cJSON_Delete(req);
		return 0;
	}
	return start(call_new(q, OP_LIST, req, done, arg));
}

uint64_t sqs_tag_queue(struct sqs *q, const char *queue_url, const struct sqs_kv *tags,
		       size_t ntags, sqs_done_fn done, void *arg)
{
	if (ntags == 0 || ntags > SQS_TAGS_MAX)
		return 0;
	cJSON *req = with_url(queue_url);
	if (!req || add_map(req, "Tags", tags, ntags) < 0) {
		cJSON_Delete(req);
		return 0;
	}
	return start(call_new(q, OP_TAG, req, done, arg));
}

uint64_t sqs_list_queue_tags(struct sqs *q, const char *queue_url, sqs_done_fn done, void *arg)
{
	cJSON *req = with_url(queue_url);
	return req ? start(call_new(q, OP_LIST_TAGS, req, done, arg)) : 0;
}

uint64_t sqs_send_batch(struct sqs *q, const char *queue_url, const struct sqs_send_entry *entries,
			size_t count, sqs_done_fn done, void *arg)
{
	if (!q || !done || !url_ok(queue_url) || !entries || count == 0 ||
	    count > SQS_BATCH_ENTRIES_MAX)
		return 0;
	size_t total = 0;
	for (size_t i = 0; i < count; i++) {
		const struct sqs_send_entry *e = &entries[i];
		if (!entry_id_valid(e->id) || !e->body || e->body_len == 0 || e->delay_s < 0 ||
		    e->delay_s > 900 || memchr(e->body, '\0', e->body_len) ||
		    sqs_body_valid(e->body, e->body_len, NULL) < 0)
			return 0;
		for (size_t k = 0; k < i; k++)
			if (strcmp(entries[k].id, e->id) == 0)
				return 0;
		total += e->body_len;
		if (total > SQS_BATCH_MAX)
			return 0;
	}
	cJSON *placeholder = cJSON_CreateObject(); /* the real body is built per round */
	struct scall *c = call_new(q, OP_SEND, placeholder, done, arg);
	if (!c)
		return 0;
	c->queue_url = strdup(queue_url);
	c->ents = calloc(count, sizeof *c->ents);
	if (!c->queue_url || !c->ents) {
		call_free(c);
		return 0;
	}
	c->n = count;
	for (size_t i = 0; i < count; i++) {
		struct bentry *b = &c->ents[i];
		b->id = strdup(entries[i].id);
		b->body = strndup(entries[i].body, entries[i].body_len);
		b->len = entries[i].body_len;
		b->delay_s = entries[i].delay_s;
		if (!b->id || !b->body) {
			call_free(c);
			return 0;
		}
		sqs_md5_hex(b->body, b->len, b->md5);
	}
	if (batch_body(c) < 0) {
		call_free(c);
		return 0;
	}
	return start(c);
}

uint64_t sqs_receive(struct sqs *q, const char *queue_url, const struct sqs_receive_opts *o,
		     sqs_done_fn done, void *arg)
{
	struct sqs_receive_opts d = {.max_messages = 10, .wait_s = SQS_WAIT_MAX_S,
				     .visibility_s = -1};
	if (!o)
		o = &d;
	int max = o->max_messages ? o->max_messages : 10;
	if (max < 1 || max > 10 || o->wait_s < 0 || o->wait_s > SQS_WAIT_MAX_S ||
	    o->visibility_s < -1 || o->visibility_s > SQS_VISIBILITY_MAX_S)
		return 0;
	cJSON *req = with_url(queue_url);
	cJSON *names = req ? cJSON_AddArrayToObject(req, "MessageSystemAttributeNames") : NULL;
	if (!names || !cJSON_AddNumberToObject(req, "MaxNumberOfMessages", max) ||
	    !cJSON_AddNumberToObject(req, "WaitTimeSeconds", o->wait_s) ||
	    (o->visibility_s >= 0 &&
	     !cJSON_AddNumberToObject(req, "VisibilityTimeout", o->visibility_s))) {
		cJSON_Delete(req);
		return 0;
	}
	static const char *const attrs[] = {"ApproximateReceiveCount", "SentTimestamp",
					    "ApproximateFirstReceiveTimestamp"};
	for (size_t i = 0; i < sizeof attrs / sizeof attrs[0]; i++)
		cJSON_AddItemToArray(names, cJSON_CreateString(attrs[i]));
	struct scall *c = call_new(q, OP_RECEIVE, req, done, arg);
	if (c)
		c->timeout_ms = (int64_t)o->wait_s * 1000 + LONG_POLL_MARGIN_MS +
				(int64_t)AWSJSON_DEFAULT_TIMEOUT_MS / 3;
	return start(c);
}

static uint64_t receipt_call(struct sqs *q, enum op op, const char *queue_url,
			     const char *receipt, int timeout_s, sqs_done_fn done, void *arg)
{
	if (!receipt || !*receipt || strlen(receipt) > RECEIPT_MAX)
		return 0;
	cJSON *req = with_url(queue_url);
	if (!req || !cJSON_AddStringToObject(req, "ReceiptHandle", receipt) ||
	    (op == OP_CHANGE_VISIBILITY &&
	     !cJSON_AddNumberToObject(req, "VisibilityTimeout", timeout_s))) {
		cJSON_Delete(req);
		return 0;
	}
	return start(call_new(q, op, req, done, arg));
}

uint64_t sqs_change_visibility(struct sqs *q, const char *queue_url, const char *receipt_handle,
			       int timeout_s, sqs_done_fn done, void *arg)
{
	if (timeout_s < 0 || timeout_s > SQS_VISIBILITY_MAX_S)
		return 0;
	return receipt_call(q, OP_CHANGE_VISIBILITY, queue_url, receipt_handle, timeout_s, done,
			    arg);
}

uint64_t sqs_delete_message(struct sqs *q, const char *queue_url, const char *receipt_handle,
			    sqs_done_fn done, void *arg)
{
	return receipt_call(q, OP_DELETE_MESSAGE, queue_url, receipt_handle, 0, done, arg);
}
