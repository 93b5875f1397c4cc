#include "awsjson.h"

#include <ev.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "awsretry.h"
#include "backoff.h"
#include "buf.h"
#include "clock.h"
#include "crypto.h"
#include "http_client.h"
#include "json.h"
#include "log.h"
#include "sigv4.h"

#define DEFAULT_RETRY_BASE_MS 100
#define DEFAULT_RETRY_CAP_MS 20000
#define DEFAULT_MAX_ATTEMPTS 4
#define DEFAULT_THROTTLE_ATTEMPTS 10
#define HOST_MAX 256
#define ACTION_MAX 64
#define HEADER_LINE_MAX 4096

struct jcall {
	struct awsjson *j;
	struct jcall *prev, *next;
	uint64_t id;
	char action[ACTION_MAX];
	char *body;
	size_t len;
	int64_t timeout_ms;
	size_t max_answer;
	struct awsretry_limits lim;
	struct awsretry rs;
	bool raw_answer;
	int64_t started_mono;
	bool waiting_creds;
	bool timer_on;
	uint64_t http_id;
	ev_timer delay;
	const struct aws_credentials *used; /* referenced while a request is out */
	struct awsjson_result res;
	char code[128];
	char qcode[128];
	char msg[512];
	awsjson_done_fn done;
	void *arg;
};

struct awsjson {
	struct ev_loop *loop;
	struct http_client *http;
	struct aws_credentials_provider *creds;
	struct sigv4_signer signer;
	char *url;
	char host[HOST_MAX];
	char path[HOST_MAX];
	char target_prefix[64];
	char content_type[64];
	char service[32];
	char ev_creds[64];       /* log event names */
	char ev_skew[64];
	char *ca_file;
	int64_t timeout_ms;
	struct backoff_policy retry;
	int max_attempts;
	int throttle_attempts;
	size_t max_answer;
	void (*payload_hash)(const void *data, size_t len, char out[65]);
	const char *const *throttle_codes;
	struct jcall *calls;
	uint64_t next_id;
	size_t pending;
};

/* ---- answers ---- */

void awsjson_parse_error(const char *body, size_t len, const char *error_type_header,
			 const char *query_error_header, char *code, size_t code_cap,
			 char *qcode, size_t qcode_cap, bool *sender_fault, char *msg,
			 size_t msg_cap)
{
	code[0] = qcode[0] = msg[0] = '\0';
	if (sender_fault)
		*sender_fault = false;
	const char *type = NULL;
	cJSON *doc = len ? json_parse(body, len, len, NULL) : NULL;
	if (cJSON_IsObject(doc)) {
		const cJSON *t = cJSON_GetObjectItemCaseSensitive(doc, "__type");
		if (cJSON_IsString(t))
			type = t->valuestring;
		const cJSON *m = cJSON_GetObjectItemCaseSensitive(doc, "message");
		if (!cJSON_IsString(m))
			m = cJSON_GetObjectItemCaseSensitive(doc, "Message");
		if (cJSON_IsString(m))
			snprintf(msg, msg_cap, "%s", m->valuestring);
	}
	if (!type || !*type)
		type = error_type_header;
	if (type) {
		/* "com.amazonaws.sqs#QueueDoesNotExist" and
		 * "ThrottlingException:http://internal.amazon.com/..." both name the code. */
		const char *hash = strrchr(type, '#');
		const char *start = hash ? hash + 1 : type;
		size_t n = strcspn(start, ":");
		if (n >= code_cap)
			n = code_cap - 1;
		memcpy(code, start, n);
		code[n] = '\0';
	}
	if (query_error_header) {
		/* "AWS.SimpleQueueService.NonExistentQueue;Sender" */
		size_t n = strcspn(query_error_header, ";");
		size_t k = n < qcode_cap - 1 ? n : qcode_cap - 1;
		memcpy(qcode, query_error_header, k);
		qcode[k] = '\0';
		if (sender_fault && query_error_header[n] == ';')
			*sender_fault = strcasecmp(query_error_header + n + 1, "Sender") == 0;
	}
	if (!msg[0] && len && !doc) {
		/* Not JSON (a proxy's error page): keep the start for the log. */
		size_t n = len < msg_cap - 1 ? len : msg_cap - 1;
		for (size_t i = 0; i < n; i++)
			msg[i] = (body[i] >= 0x20 && body[i] < 0x7f) ? body[i] : ' ';
		msg[n] = '\0';
	}
	cJSON_Delete(doc);
}

/* The JSON protocol's error names beyond those every AWS protocol shares. */
static const char *const json_throttle[] = {
	"RequestThrottled", "RequestThrottledException", "ProvisionedThroughputExceededException",
	NULL,
};
static const char *const json_credentials[] = {"IncompleteSignatureException", NULL};
static const char *const json_retry[] = {
	"ServiceUnavailableException", "ServerException", "RequestTimeoutException", NULL,
};
static const struct awsretry_names json_names = {json_throttle, json_credentials, json_retry};

enum awsjson_class awsjson_classify(long status, const char *code, const char *qcode,
				    const char *message)
{
	switch (awsretry_classify(status, code, qcode, message, &json_names)) {
	case AWSRETRY_THROTTLE:
		return AWSJSON_CLASS_THROTTLE;
	case AWSRETRY_RETRY:
		return AWSJSON_CLASS_RETRY;
	case AWSRETRY_CREDENTIALS:
		return AWSJSON_CLASS_CREDENTIALS;
	case AWSRETRY_SKEW:
		return AWSJSON_CLASS_SKEW;
	case AWSRETRY_SERVICE:
		break;
	}
	return AWSJSON_CLASS_SERVICE;
}

static int name_matches(const char *have, const char *name)
{
	static const char prefix[] = "AWS.SimpleQueueService.";
	if (!have || !*have)
		return 0;
	if (strcmp(have, name) == 0)
		return 1;
	size_t p = sizeof prefix - 1;
	if (strncmp(have, prefix, p) == 0 && strcmp(have + p, name) == 0)
		return 1;
	if (strncmp(name, prefix, p) == 0 && strcmp(name + p, have) == 0)
		return 1;
	return 0;
}

int awsjson_error_is(const struct awsjson_result *res, const char *name)
{
	if (!res || !name || res->status == AWSJSON_OK)
		return 0;
	return name_matches(res->code, name) || name_matches(res->query_code, name);
}

/* ---- calls ---- */

static void on_creds(const struct aws_credentials *creds, const char *error, void *arg);

static void call_free(struct jcall *c)
{
	struct awsjson *j = c->j;
	if (c->waiting_creds)
		aws_credentials_cancel(j->creds, on_creds, c);
	if (c->timer_on)
		ev_timer_stop(j->loop, &c->delay);
	if (c->http_id)
		http_client_cancel(j->http, c->http_id);
	if (c->used)
		aws_credentials_unref(c->used);
	if (c->prev)
		c->prev->next = c->next;
	else
		j->calls = c->next;
	if (c->next)
		c->next->prev = c->prev;
	j->pending--;
	free(c->body);
	free(c);
}

/* Reports and frees. doc is the parsed answer of a success (deleted here);
 * body the raw one of a raw_answer call. */
static void finish_body(struct jcall *c, enum awsjson_status st, cJSON *doc, const char *body,
			size_t body_len)
{
	awsjson_done_fn done = c->done;
	void *arg = c->arg;
	struct awsjson_result res = c->res;
	char code[sizeof c->code], qcode[sizeof c->qcode], msg[sizeof c->msg];
	memcpy(code, c->code, sizeof code);
	memcpy(qcode, c->qcode, sizeof qcode);
	memcpy(msg, c->msg, sizeof msg);
	res.status = st;
	res.doc = st == AWSJSON_OK ? doc : NULL;
	res.code = st == AWSJSON_OK ? "" : code;
	res.query_code = st == AWSJSON_OK ? "" : qcode;
	res.message = st == AWSJSON_OK ? "" : msg;
	res.body = st == AWSJSON_OK && body ? body : "";
	res.body_len = st == AWSJSON_OK && body ? body_len : 0;
	res.throttled = c->rs.throttled;
	res.creds_retried = c->rs.creds_retried;
	res.skew_retried = c->rs.skew_retried;
	res.elapsed_ms = clock_mono_ms() - c->started_mono;
	call_free(c);
	done(&res, arg);
	cJSON_Delete(doc);
}

static void finish(struct jcall *c, enum awsjson_status st, cJSON *doc)
{
	finish_body(c, st, doc, NULL, 0);
}

static void start_attempt(struct jcall *c);

static void on_delay(struct ev_loop *loop, ev_timer *t, int revents)
{
	(void)loop;
	(void)revents;
	struct jcall *c = t->data;
	c->timer_on = false;
	start_attempt(c);
}

static void retry_after(struct jcall *c, int64_t delay_ms)
{
	c->res.retries++;
	if (delay_ms <= 0) {
		start_attempt(c);
		return;
	}
	ev_timer_set(&c->delay, (double)delay_ms / 1000.0, 0.0);
	ev_timer_start(c->j->loop, &c->delay);
	c->timer_on = true;
}

static void set_error(struct jcall *c, const char *code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void set_error(struct jcall *c, const char *code, const char *fmt, ...)
{
	snprintf(c->code, sizeof c->code, "%s", code);
	c->qcode[0] = '\0';
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->msg, sizeof c->msg, fmt, ap);
	va_end(ap);
}

/* After a failure of class cls: another attempt, or the end for now. */
static void retry_or_stop(struct jcall *c, enum awsretry_class cls, const char *date_header)
{
	struct awsjson *j = c->j;
	int64_t delay_ms = 0;
	switch (awsretry_next(&c->rs, &c->lim, cls, c->res.attempts, &j->signer, c->code, c->msg,
			      date_header, &delay_ms)) {
	case AWSRETRY_STOP:
		finish(c, AWSJSON_UNREACHABLE, NULL);
		return;
	case AWSRETRY_WAIT:
		retry_after(c, delay_ms);
		return;
	case AWSRETRY_REFRESH:
		log_warn(j->ev_creds, "service=%s action=%s error=%s message=\"%s\": "
			 "refreshing the credentials and retrying once", j->service, c->action,
			 c->code, c->msg);
		aws_credentials_invalidate(j->creds, c->used);
		retry_after(c, 0);
		return;
	case AWSRETRY_RESIGN:
		log_warn(j->ev_skew, "service=%s offset_ms=%" PRId64 ": re-signing once", j->service,
			 j->signer.clock_offset_ms);
		retry_after(c, 0);
		return;
	}
}

/* A failure that says nothing about the request: retry, or give up for now. */
static void transient(struct jcall *c)
{
	retry_or_stop(c, AWSRETRY_RETRY, NULL);
}

static void on_http(const struct http_response *resp, void *arg);

static int add_line(struct buf *lines, const char *name, const char *value)
{
	return buf_printf(lines, "%s: %s", name, value) < 0 || buf_append_byte(lines, '\0') < 0
		       ? -1
		       : 0;
}

static void send_signed(struct jcall *c, const struct aws_credentials *creds)
{
	struct awsjson *j = c->j;
	char target[sizeof j->target_prefix + ACTION_MAX + 2];
	snprintf(target, sizeof target, "%s.%s", j->target_prefix, c->action);
	struct sigv4_header sh[] = {
		{"Host", j->host},
		{"Content-Type", j->content_type},
		{"X-Amz-Target", target},
	};
	char hash[65];
	if (j->payload_hash)
		j->payload_hash(c->body, c->len, hash);
	else
		crypto_sha256_hex(c->body, c->len, hash);
	struct sigv4_request sreq = {
		.method = "POST",
		.path = j->path,
		.headers = sh,
		.header_count = 3,
		.payload_kind = SIGV4_PAYLOAD_HASH,
		.payload_sha256_hex = hash,
	};
	struct sigv4_result sr;
	struct err err = {{0}};
	if (sigv4_sign(&j->signer, creds, &sreq, &sr, &err) < 0) {
		sigv4_result_free(&sr);
		set_error(c, "SigningError", "signing: %s", err.msg);
		transient(c);
		return;
	}
	/* Header lines, NUL-separated in one buffer: ours, the signer's, Authorization. */
	struct buf lines;
	buf_init(&lines, 64 * 1024);
	int rc = add_line(&lines, "Host", j->host) | add_line(&lines, "Content-Type", j->content_type) |
		 add_line(&lines, "X-Amz-Target", target);
	for (size_t i = 0; i < sr.add_count; i++)
		rc |= add_line(&lines, sr.add[i].name, sr.add[i].value);
	rc |= add_line(&lines, "Authorization", sr.authorization);
	sigv4_result_free(&sr);
	const char *hdrs[12];
	size_t nh = 0;
	for (size_t off = 0; rc == 0 && off < lines.len && nh < 11; off += strlen(lines.data + off) + 1)
		hdrs[nh++] = lines.data + off;
	hdrs[nh] = NULL;
	struct http_request req = {
		.method = "POST",
		.url = j->url,
		.headers = hdrs,
		.body = c->body,
		.body_len = c->len,
		.timeout_ms = c->timeout_ms,
		.max_body = c->max_answer,
		.ca_file = j->ca_file,
		.on_done = on_http,
		.arg = c,
	};
	c->http_id = rc == 0 ? http_client_start(j->http, &req) : 0;
	/* http_client copied the headers (the token among them): ours go now. */
	if (lines.data)
		memset(lines.data, 0, lines.len);
	buf_free(&lines);
	if (!c->http_id) {
		set_error(c, "InternalError", "could not start the %s request", c->action);
		transient(c);
		return;
	}
	c->res.attempts++;
	if (c->used)
		aws_credentials_unref(c->used);
	c->used = aws_credentials_ref(creds);
}

static void on_creds(const struct aws_credentials *creds, const char *error, void *arg)
{
	struct jcall *c = arg;
	c->waiting_creds = false;
	if (!creds) {
		set_error(c, "NoCredentials", "credentials: %s", error ? error : "none");
		transient(c);
		return;
	}
	send_signed(c, creds);
}

static void start_attempt(struct jcall *c)
{
	c->waiting_creds = true;
	aws_credentials_get(c->j->creds, on_creds, c);
}

static void on_http(const struct http_response *resp, void *arg)
{
	struct jcall *c = arg;
	struct awsjson *j = c->j;
	c->http_id = 0;
	c->res.http_status = resp->status;
	if (resp->error != HTTP_OK) {
		set_error(c, "Transport", "%s: %s: %s", c->action, http_error_name(resp->error),
			  resp->error_msg);
		transient(c);
		return;
	}
	if (resp->status >= 200 && resp->status < 300 && c->raw_answer) {
		finish_body(c, AWSJSON_OK, NULL, resp->body ? resp->body : "", resp->body_len);
		return;
	}
	if (resp->status >= 200 && resp->status < 300) {
		struct err err = {{0}};
		cJSON *doc = resp->body_len ? json_parse(resp->body, resp->body_len, c->max_answer, &err)
					    : cJSON_CreateObject();
		if (!cJSON_IsObject(doc)) {
			cJSON_Delete(doc);
			set_error(c, "MalformedAnswer", "%s: the answer is not a JSON object: %s",
				  c->action, err.msg[0] ? err.msg : "not an object");
			transient(c);
			return;
		}
		finish(c, AWSJSON_OK, doc);
		return;
	}
	awsjson_parse_error(resp->body, resp->body_len, http_response_header(resp, "x-amzn-ErrorType"),
			    http_response_header(resp, "x-amzn-query-error"), c->code, sizeof c->code,
			    c->qcode, sizeof c->qcode, &c->res.sender_fault, c->msg, sizeof c->msg);
	enum awsretry_class cls = awsretry_classify(resp->status, c->code, c->qcode, c->msg,
						    &json_names);
	if ((cls == AWSRETRY_SERVICE || cls == AWSRETRY_RETRY) &&
	    awsretry_named_in(j->throttle_codes, c->code, c->qcode))
		cls = AWSRETRY_THROTTLE;
	if (cls == AWSRETRY_SERVICE) {
		finish(c, AWSJSON_ERROR, NULL);
		return;
	}
	if (cls == AWSRETRY_RETRY && !c->code[0])
		snprintf(c->code, sizeof c->code, "HTTP%ld", resp->status);
	retry_or_stop(c, cls, http_response_header(resp, "Date"));
}

/* ---- the client ---- */

static int copy_opt(char *dst, size_t cap, const char *src)
{
	if (!src || !*src || strlen(src) >= cap)
		return -1;
	snprintf(dst, cap, "%s", src);
	return 0;
}

struct awsjson *awsjson_new(struct ev_loop *loop, struct http_client *http,
			    struct aws_credentials_provider *creds, const struct awsjson_opts *o,
			    struct err *err)
{
	if (!loop || !http || !creds || !o || !o->region || !*o->region || !o->service ||
	    !o->target_prefix || !o->content_type ||
	    ((!o->endpoint || !*o->endpoint) && !o->default_endpoint)) {
		err_set(err, "aws: loop, http client, credentials, region, service, target and "
			"endpoint are required");
		return NULL;
	}
	struct awsjson *j = calloc(1, sizeof *j);
	if (!j) {
		err_set(err, "aws: out of memory");
		return NULL;
	}
	j->loop = loop;
	j->http = http;
	j->creds = creds;
	if (copy_opt(j->target_prefix, sizeof j->target_prefix, o->target_prefix) < 0 ||
	    copy_opt(j->content_type, sizeof j->content_type, o->content_type) < 0 ||
	    copy_opt(j->service, sizeof j->service, o->service) < 0) {
		free(j);
		err_set(err, "aws: target prefix, content type or service name is empty or too long");
		return NULL;
	}
	if (sigv4_signer_init(&j->signer, o->region, o->service, NULL, err) < 0) {
		free(j);
		return NULL;
	}
	struct buf url;
	buf_init(&url, 4096);
	if (o->endpoint && *o->endpoint)
		buf_append_str(&url, o->endpoint);
	else
		buf_printf(&url, o->default_endpoint, o->region);
	const char *p = url.data ? strstr(url.data, "://") : NULL;
	if (!p || (strncmp(url.data, "http://", 7) != 0 && strncmp(url.data, "https://", 8) != 0)) {
		err_set(err, "aws: endpoint \"%s\" is not an http(s) URL", url.data ? url.data : "");
		buf_free(&url);
		free(j);
		return NULL;
	}
	p += 3;
	size_t hl = strcspn(p, "/?#");
	if (hl == 0 || hl >= sizeof j->host) {
		err_set(err, "aws: endpoint \"%s\" has no usable host", url.data);
		buf_free(&url);
		free(j);
		return NULL;
	}
	memcpy(j->host, p, hl);
	j->host[hl] = '\0';
	const char *path = p + hl;
	size_t pl = strcspn(path, "?#");
	if (pl == 0) {
		snprintf(j->path, sizeof j->path, "/");
		url.len = (size_t)(path - url.data);
		url.data[url.len] = '\0';
		buf_append_byte(&url, '/');
	} else if (pl < sizeof j->path) {
		memcpy(j->path, path, pl);
		j->path[pl] = '\0';
		url.len = (size_t)(path - url.data) + pl;
		url.data[url.len] = '\0';
	} else {
		err_set(err, "aws: endpoint path too long");
		buf_free(&url);
		free(j);
		return NULL;
	}
	j->url = buf_detach(&url, NULL);
	j->ca_file = o->ca_file ? strdup(o->ca_file) : NULL;
	j->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : AWSJSON_DEFAULT_TIMEOUT_MS;
	j->retry.base_ms = o->retry_base_ms > 0 ? o->retry_base_ms : DEFAULT_RETRY_BASE_MS;
	j->retry.cap_ms = o->retry_cap_ms > 0 ? o->retry_cap_ms : DEFAULT_RETRY_CAP_MS;
	j->max_attempts = o->max_attempts > 0 ? o->max_attempts : DEFAULT_MAX_ATTEMPTS;
	j->throttle_attempts = o->throttle_attempts > 0 ? o->throttle_attempts
							 : DEFAULT_THROTTLE_ATTEMPTS;
	j->max_answer = o->max_answer > 0 ? o->max_answer : AWSJSON_DEFAULT_MAX_ANSWER;
	j->payload_hash = o->payload_hash;
	const char *lp = o->log_prefix && *o->log_prefix ? o->log_prefix : "aws";
	snprintf(j->ev_creds, sizeof j->ev_creds, "%.40s.credentials_refresh", lp);
	snprintf(j->ev_skew, sizeof j->ev_skew, "%.40s.clock_skew", lp);
	j->throttle_codes = o->throttle_codes;
	j->next_id = 1;
	if (!j->url || (o->ca_file && !j->ca_file)) {
		awsjson_free(j);
		err_set(err, "aws: out of memory");
		return NULL;
	}
	return j;
}

void awsjson_free(struct awsjson *j)
{
	if (!j)
		return;
	while (j->calls)
		call_free(j->calls);
	sigv4_signer_clear(&j->signer);
	free(j->url);
	free(j->ca_file);
	free(j);
}

uint64_t awsjson_call(struct awsjson *j, const char *action, const char *body, size_t len,
		      int64_t timeout_ms, awsjson_done_fn done, void *arg)
{
	struct awsjson_call_opts o = {.timeout_ms = timeout_ms};
	return awsjson_call_ex(j, action, body, len, &o, done, arg);
}

uint64_t awsjson_call_ex(struct awsjson *j, const char *action, const char *body, size_t len,
			 const struct awsjson_call_opts *o, awsjson_done_fn done, void *arg)
{
	static const struct awsjson_call_opts none;
	if (!o)
		o = &none;
	if (!j || !action || !*action || strlen(action) >= ACTION_MAX || !done)
		return 0;
	struct jcall *c = calloc(1, sizeof *c);
	if (!c)
		return 0;
	if (!body) {
		body = "{}";
		len = 2;
	}
	c->body = malloc(len + 1);
	if (!c->body) {
		free(c);
		return 0;
	}
	memcpy(c->body, body, len);
	c->body[len] = '\0';
	c->len = len;
	c->j = j;
	c->id = j->next_id++;
	snprintf(c->action, sizeof c->action, "%s", action);
	c->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : j->timeout_ms;
	c->max_answer = o->max_answer > 0 ? o->max_answer : j->max_answer;
	c->lim = (struct awsretry_limits){
		.backoff = j->retry,
		.max_fails = o->max_attempts > 0 ? o->max_attempts : j->max_attempts,
		.max_throttled = o->throttle_attempts != 0 ? o->throttle_attempts
							   : j->throttle_attempts,
		.max_requests = o->max_requests > 0 ? o->max_requests : 0,
		.fails_in_a_row = true,
	};
	c->raw_answer = o->raw_answer;
	c->rs.creds_retried = o->creds_retried;
	c->rs.skew_retried = o->skew_retried;
	c->started_mono = clock_mono_ms();
	c->done = done;
	c->arg = arg;
	ev_timer_init(&c->delay, on_delay, 0.0, 0.0);
	c->delay.data = c;
	c->next = j->calls;
	if (j->calls)
		j->calls->prev = c;
	j->calls = c;
	j->pending++;
	start_attempt(c);
	return c->id;
}

void awsjson_cancel(struct awsjson *j, uint64_t id)
{
	if (!j || !id)
		return;
	for (struct jcall *c = j->calls; c; c = c->next) {
		if (c->id == id) {
			call_free(c);
			return;
		}
	}
}

size_t awsjson_pending(const struct awsjson *j)
{
	return j ? j->pending : 0;
}

const char *awsjson_endpoint(const struct awsjson *j)
{
	return j->url;
}

struct sigv4_signer *awsjson_signer(struct awsjson *j)
{
	return &j->signer;
}
