#include "docker.h"

#include <ev.h>
#include <mbedtls/base64.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backoff.h"
#include "buf.h"
#include "clock.h"
#include "err.h"
#include "http_client.h"
#include "jsonl.h"
#include "log.h"

enum call_kind {
	K_NEGOTIATE, /* docker_negotiate: reports once the negotiation is done */
	K_PLAIN,     /* one buffered answer */
	K_PULL,
	K_PUSH,
	K_BUILD,
	K_LOGS,
	K_EVENTS,
};

/* K_PLAIN answers */
#define F_JSON 1u        /* parse the answer as JSON */
#define F_ID 2u          /* res->id = answer.Id */
#define F_IMAGE 4u       /* res->id = Id, res->digest = RepoDigests[0] after '@' */

enum neg_state { NEG_NONE, NEG_RUNNING, NEG_DONE };

#define EVENT_KEYS 64
#define URL_BASE "http://localhost"

struct events_sub {
	struct docker_events_opts opts;  /* labels and type are not kept: see filters */
	char *filters;                   /* URL-encoded filters JSON, or NULL */
	int64_t since_ns;                /* the caller's start point */
	int64_t connect_ns;              /* wall time of the first request */
	int64_t last_ns;                 /* timeNano of the newest event delivered, 0 = none */
	uint64_t keys[EVENT_KEYS];       /* hashes of events delivered at last_ns */
	int nkeys;
	int replay;                      /* since the last (re)connect no newer event came */
	int connected;                   /* a stream is requested and has not dropped */
	int ever_connected;
	struct backoff_state backoff;
};

struct call {
	struct docker *d;
	struct call *prev, *next;
	uint64_t id;
	uint64_t http_id;
	enum call_kind kind;
	unsigned flags;
	int min_minor;           /* API minor version this call needs */
	int queued;
	uint64_t gen;            /* negotiation it waits for */
	int busy;                /* inside one of its callbacks: freeing waits */
	int dead;                /* cancelled */
	bool paused;             /* logs: held back by docker_logs_pause */
	size_t recv_buffer;      /* streams: bytes read at a time */

	const char *method;      /* static strings */
	struct buf path;         /* after the version prefix, query included */
	char *hdrs[4];           /* owned "Name: value" strings, NULL-terminated */
	char *body;
	size_t body_len;
	char *body_file;
	int64_t timeout_ms;
	int64_t stall_ms;

	docker_done_fn done;
	docker_progress_fn progress;
	docker_text_fn text;
	linesplit_fn on_line;
	void *arg;

	struct jsonl jl;
	struct logframe *lf;
	char *stream_err;        /* first error object of a 200 stream */
	char *digest;
	char *image_id;
	enum docker_error own_code; /* why we aborted the transfer */
	char own_msg[ERR_MSG_MAX];

	int fail_pending;        /* the timer reports fail_code/fail_msg */
	enum docker_error fail_code;
	char fail_msg[ERR_MSG_MAX];
	ev_timer timer;          /* deferred failure, events reconnect delay */

	struct events_sub *ev;
};

struct docker {
	struct ev_loop *loop;
	struct http_client *http;
	char *socket;
	int64_t neg_timeout_ms;
	int64_t stall_ms;
	size_t max_body;
	size_t max_line;

	enum neg_state neg;
	uint64_t neg_gen;
	uint64_t neg_http;
	int api_minor;
	char version[16];
	cJSON *version_doc;
	enum docker_error neg_fail_code;
	char neg_fail_msg[ERR_MSG_MAX];
	ev_timer neg_fail_timer;

	struct call *calls;      /* every live call, oldest first */
	struct call *calls_tail;
	uint64_t next_id;
};

static void dispatch(struct call *c);
static void submit(struct call *c);
static void events_dropped(struct call *c, enum docker_error code, long status,
			   const char *msg);

const char *docker_error_name(enum docker_error e)
{
	switch (e) {
	case DOCKER_OK: return "ok";
	case DOCKER_ERR_NOT_FOUND: return "not found";
	case DOCKER_ERR_CONFLICT: return "conflict";
	case DOCKER_ERR_BAD_REQUEST: return "bad request";
	case DOCKER_ERR_DENIED: return "denied";
	case DOCKER_ERR_ENGINE: return "engine error";
	case DOCKER_ERR_STREAM: return "error in stream";
	case DOCKER_ERR_CONNECT: return "cannot connect";
	case DOCKER_ERR_TRANSPORT: return "connection broken";
	case DOCKER_ERR_TIMEOUT: return "timeout";
	case DOCKER_ERR_PROTOCOL: return "protocol error";
	case DOCKER_ERR_VERSION: return "API version mismatch";
	case DOCKER_ERR_UNSUPPORTED: return "unsupported by the API version";
	case DOCKER_ERR_INTERNAL: return "internal error";
	}
	return "unknown";
}

/* ---- small helpers ------------------------------------------------------ */

int docker_base64url(struct buf *out, const void *data, size_t len)
{
	size_t need = 4 * ((len + 2) / 3) + 1, olen = 0;
	unsigned char *tmp = malloc(need);
	if (!tmp)
		return -1;
	if (mbedtls_base64_encode(tmp, need, &olen, data, len) != 0) {
		free(tmp);
		return -1;
	}
	for (size_t i = 0; i < olen; i++) {
		if (tmp[i] == '+')
			tmp[i] = '-';
		else if (tmp[i] == '/')
			tmp[i] = '_';
	}
	int rc = buf_append(out, tmp, olen);
	free(tmp);
	return rc;
}

int docker_split_ref(const char *image, struct buf *repo, struct buf *tag)
{
	const char *at = strchr(image, '@');
	if (at)
		return buf_append(repo, image, (size_t)(at - image)) < 0 ||
			       buf_append_str(tag, at + 1) < 0 ? -1 : 0;
	/* A colon after the last slash separates the tag; one before it is a port. */
	const char *slash = strrchr(image, '/');
	const char *colon = strrchr(image, ':');
	if (colon && (!slash || colon > slash))
		return buf_append(repo, image, (size_t)(colon - image)) < 0 ||
			       buf_append_str(tag, colon + 1) < 0 ? -1 : 0;
	return buf_append_str(repo, image) < 0 || buf_append_str(tag, "latest") < 0 ? -1 : 0;
}

/* Appends "?key=value" or "&key=value" with the value percent-encoded. */
static int q_add(struct buf *b, const char *key, const char *val)
{
	if (buf_printf(b, "%c%s=", strchr(b->data ? b->data : "", '?') ? '&' : '?', key) < 0)
		return -1;
	return http_url_encode(b, val, strlen(val));
}

static int q_add_int(struct buf *b, const char *key, long long v)
{
	char tmp[32];
	snprintf(tmp, sizeof tmp, "%lld", v);
	return q_add(b, key, tmp);
}

/* Appends "/" and a name whose slashes stay (image names), each part encoded. */
static int path_name(struct buf *b, const char *name)
{
	if (buf_append_byte(b, '/') < 0)
		return -1;
	for (const char *p = name;;) {
		const char *slash = strchr(p, '/');
		size_t n = slash ? (size_t)(slash - p) : strlen(p);
		if (http_url_encode(b, p, n) < 0)
			return -1;
		if (!slash)
			return 0;
		if (buf_append_byte(b, '/') < 0)
			return -1;
		p = slash + 1;
	}
}

/* Builds {"key":[...]}-style filters; returns the URL-encoded JSON or NULL
 * when there is no filter (or on out of memory, with *oom set). */
struct filters {
	const char *type, *reference, *name;
	const char *const *labels;
};

static char *filters_encode(const struct filters *fl, int *oom)
{
	*oom = 0;
	const char *const keys[] = {"type", "reference", "name"};
	const char *const values[] = {fl->type, fl->reference, fl->name};
	const char *const *labels = fl->labels;
	if (!fl->type && !fl->reference && !fl->name && !(labels && labels[0]))
		return NULL;
	cJSON *f = cJSON_CreateObject();
	int ok = f != NULL;
	for (size_t i = 0; ok && i < sizeof keys / sizeof keys[0]; i++) {
		if (!values[i])
			continue;
		cJSON *a = cJSON_AddArrayToObject(f, keys[i]);
		ok = a && cJSON_AddItemToArray(a, cJSON_CreateString(values[i]));
	}
	if (ok && labels && labels[0]) {
		cJSON *a = cJSON_AddArrayToObject(f, "label");
		ok = a != NULL;
		for (size_t i = 0; ok && labels[i]; i++)
			ok = cJSON_AddItemToArray(a, cJSON_CreateString(labels[i]));
	}
	char *json = ok ? cJSON_PrintUnformatted(f) : NULL;
	cJSON_Delete(f);
	struct buf b;
	buf_init(&b, 0);
	if (!json || http_url_encode(&b, json, strlen(json)) < 0) {
		free(json);
		buf_free(&b);
		*oom = 1;
		return NULL;
	}
	free(json);
	return buf_detach(&b, NULL);
}

static const char *json_str(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Parses "1.41" into 1041; -1 on anything else. */
static int parse_version(const char *s)
{
	if (!s)
		return -1;
	char *end;
	long major = strtol(s, &end, 10);
	if (end == s || *end != '.' || major < 0 || major > 99)
		return -1;
	const char *m = end + 1;
	long minor = strtol(m, &end, 10);
	if (end == m || *end || minor < 0 || minor > 999)
		return -1;
	return (int)(major * 1000 + minor);
}

/* Reads the integer value of a top-level key straight from JSON text that
 * cJSON already accepted: timeNano does not fit a double exactly. */
static int raw_top_int(const char *s, size_t len, const char *key, int64_t *out)
{
	size_t klen = strlen(key);
	int depth = 0;
	int expect_key = 0;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		if (c == '"') {
			size_t start = ++i;
			while (i < len && s[i] != '"')
				i += s[i] == '\\' ? 2 : 1;
			if (i >= len)
				return -1;
			if (depth == 1 && expect_key && i - start == klen &&
			    memcmp(s + start, key, klen) == 0) {
				size_t j = i + 1;
				while (j < len && (s[j] == ' ' || s[j] == ':' || s[j] == '\t' ||
						   s[j] == '\r' || s[j] == '\n'))
					j++;
				uint64_t v = 0;
				size_t d = 0;
				for (; j < len && s[j] >= '0' && s[j] <= '9' && d < 19; j++, d++)
					v = v * 10 + (uint64_t)(s[j] - '0');
				if (d == 0 || (j < len && s[j] >= '0' && s[j] <= '9') ||
				    v > (uint64_t)INT64_MAX)
					return -1;
				*out = (int64_t)v;
				return 0;
			}
			expect_key = 0;
		} else if (c == '{') {
			depth++;
			expect_key = 1;
		} else if (c == '[') {
			depth++;
			expect_key = 0;
		} else if (c == '}' || c == ']') {
			depth--;
		} else if (c == ',') {
			expect_key = 1;
		}
	}
	return -1;
}

static uint64_t fnv1a(const char *s, size_t n)
{
	uint64_t h = 14695981039346656037ULL;
	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)s[i];
		h *= 1099511628211ULL;
	}
	return h;
}

/* ---- call lifetime ------------------------------------------------------ */

static void free_call(struct call *c)
{
	struct docker *d = c->d;
	if (c->prev)
		c->prev->next = c->next;
	else
		d->calls = c->next;
	if (c->next)
		c->next->prev = c->prev;
	else
		d->calls_tail = c->prev;
	ev_timer_stop(d->loop, &c->timer);
	buf_free(&c->path);
	for (int i = 0; c->hdrs[i]; i++)
		free(c->hdrs[i]);
	free(c->body);
	free(c->body_file);
	jsonl_free(&c->jl);
	logframe_free(c->lf);
	free(c->stream_err);
	free(c->digest);
	free(c->image_id);
	if (c->ev)
		free(c->ev->filters);
	free(c->ev);
	free(c);
}

static void on_call_timer(struct ev_loop *loop, ev_timer *w, int revents);

static struct call *new_call(struct docker *d, enum call_kind kind, const char *method,
			     docker_done_fn done, void *arg)
{
	struct call *c = calloc(1, sizeof *c);
	if (!c)
		return NULL;
	c->d = d;
	c->id = ++d->next_id;
	c->kind = kind;
	c->method = method;
	c->min_minor = DOCKER_API_MIN_MINOR;
	c->done = done;
	c->arg = arg;
	buf_init(&c->path, 64 * 1024);
	jsonl_init(&c->jl, d->max_line, NULL, NULL);
	ev_init(&c->timer, on_call_timer);
	c->timer.data = c;
	c->prev = d->calls_tail;
	if (d->calls_tail)
		d->calls_tail->next = c;
	else
		d->calls = c;
	d->calls_tail = c;
	return c;
}

/* Adds "name: value" to the call's headers (three at most). */
static int add_header(struct call *c, const char *name, const char *value)
{
	int i = 0;
	while (c->hdrs[i])
		i++;
	if (i >= 3)
		return -1;
	struct buf b;
	buf_init(&b, 0);
	if (buf_printf(&b, "%s: %s", name, value) < 0) {
		buf_free(&b);
		return -1;
	}
	c->hdrs[i] = buf_detach(&b, NULL);
	return c->hdrs[i] ? 0 : -1;
}

/* Sends the base64url of a JSON document (or of "{}") in header `name`. */
static int add_auth_header(struct call *c, const char *name, const char *json)
{
	if (!json)
		json = "{}";
	struct buf b;
	buf_init(&b, 0);
	int rc = -1;
	if (docker_base64url(&b, json, strlen(json)) == 0 && b.data)
		rc = add_header(c, name, b.data);
	buf_free(&b);
	return rc;
}

static void complete(struct call *c, const struct docker_result *r)
{
	c->busy++;
	if (c->done && !c->dead)
		c->done(r, c->arg);
	c->busy--;
	free_call(c);
}

static void complete_error(struct call *c, enum docker_error code, long status, const char *msg)
{
	if (c->kind == K_EVENTS) {
		events_dropped(c, code, status, msg);
		return;
	}
	struct docker_result r = {.error = code, .status = status, .message = msg};
	complete(c, &r);
}

/* Reports a failure from the loop, never from inside the caller's call. */
static void fail_later(struct call *c, enum docker_error code, const char *msg)
{
	c->fail_pending = 1;
	c->fail_code = code;
	snprintf(c->fail_msg, sizeof c->fail_msg, "%s", msg);
	ev_timer_stop(c->d->loop, &c->timer);
	ev_timer_set(&c->timer, 0.0, 0.0);
	ev_timer_start(c->d->loop, &c->timer);
}

static void on_call_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	struct call *c = w->data;
	if (c->fail_pending) {
		c->fail_pending = 0;
		complete_error(c, c->fail_code, 0, c->fail_msg);
		return;
	}
	submit(c); /* an events subscription's reconnect delay ran out */
}

void docker_cancel(struct docker *d, uint64_t id)
{
	if (!d || !id)
		return;
	struct call *c = d->calls;
	while (c && c->id != id)
		c = c->next;
	if (!c || c->dead)
		return;
	c->dead = 1;
	c->queued = 0;
	if (c->http_id) {
		http_client_cancel(d->http, c->http_id);
		c->http_id = 0;
	}
	ev_timer_stop(d->loop, &c->timer);
	if (!c->busy)
		free_call(c);
}

/* ---- negotiation -------------------------------------------------------- */

static void mark_stale(struct docker *d, const char *why)
{
	if (d->neg != NEG_DONE)
		return;
	log_info("docker.version_stale", "socket=%s reason=%s", d->socket, why);
	d->neg = NEG_NONE;
	d->version[0] = '\0';
}

/* Hands the calls waiting for negotiation `gen` on: dispatched when it
 * succeeded, failed otherwise. Rescans from the head each time, because the
 * callbacks may start and cancel calls. */
static void flush_queue(struct docker *d, uint64_t gen, enum docker_error code, const char *msg)
{
	for (;;) {
		struct call *c = d->calls;
		while (c && !(c->queued && c->gen == gen && !c->dead))
			c = c->next;
		if (!c)
			return;
		c->queued = 0;
		if (code == DOCKER_OK)
			submit(c); /* dispatches, or waits again if a callback made it stale */
		else
			complete_error(c, code, 0, msg);
	}
}

static void neg_fail(struct docker *d, enum docker_error code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void neg_fail(struct docker *d, enum docker_error code, const char *fmt, ...)
{
	char msg[ERR_MSG_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	d->neg = NEG_NONE;
	d->neg_http = 0;
	log_warn("docker.negotiate_failed", "socket=%s error=%s", d->socket, msg);
	flush_queue(d, d->neg_gen, code, msg);
}

static void on_neg_fail_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	struct docker *d = w->data;
	neg_fail(d, d->neg_fail_code, "%s", d->neg_fail_msg);
}

static enum docker_error map_http_error(enum http_error e)
{
	switch (e) {
	case HTTP_OK: return DOCKER_OK;
	case HTTP_ERR_CONNECT: return DOCKER_ERR_CONNECT;
	case HTTP_ERR_TRANSPORT: return DOCKER_ERR_TRANSPORT;
	case HTTP_ERR_TIMEOUT: return DOCKER_ERR_TIMEOUT;
	case HTTP_ERR_TOO_LARGE: return DOCKER_ERR_PROTOCOL;
	case HTTP_ERR_TLS:
	case HTTP_ERR_ABORTED:
	case HTTP_ERR_INTERNAL: return DOCKER_ERR_INTERNAL;
	}
	return DOCKER_ERR_INTERNAL;
}

static int neg_get(struct docker *d, const char *path, http_done_fn done);

static void on_version(const struct http_response *resp, void *arg)
{
	struct docker *d = arg;
	d->neg_http = 0;
	if (resp->error != HTTP_OK) {
		neg_fail(d, map_http_error(resp->error), "GET /version on %s: %s", d->socket,
			 resp->error_msg);
		return;
	}
	if (resp->status != 200) {
		neg_fail(d, DOCKER_ERR_ENGINE, "GET /version on %s: HTTP %ld", d->socket,
			 resp->status);
		return;
	}
	cJSON *doc = cJSON_ParseWithLength(resp->body, resp->body_len);
	const char *api = json_str(doc, "ApiVersion");
	const char *min = json_str(doc, "MinAPIVersion");
	int engine_max = parse_version(api);
	/* Engines from before API 1.24 did not say; they are too old anyway. */
	int engine_min = min ? parse_version(min) : 1000;
	if (!doc || engine_max < 0 || engine_min < 0) {
		cJSON_Delete(doc);
		neg_fail(d, DOCKER_ERR_PROTOCOL,
			 "GET /version on %s: no valid ApiVersion/MinAPIVersion in the answer",
			 d->socket);
		return;
	}
	if (engine_min > 1000 + DOCKER_API_MAX_MINOR) {
		neg_fail(d, DOCKER_ERR_VERSION,
			 "the Docker engine on %s accepts API %s at the oldest, but slipway "
			 "speaks 1.%d to 1.%d: upgrade slipway",
			 d->socket, min, DOCKER_API_MIN_MINOR, DOCKER_API_MAX_MINOR);
		cJSON_Delete(doc);
		return;
	}
	if (engine_max < 1000 + DOCKER_API_MIN_MINOR) {
		neg_fail(d, DOCKER_ERR_VERSION,
			 "the Docker engine on %s speaks API %s at the newest, but slipway needs "
			 "1.%d or newer (Docker 20.10+): upgrade the engine",
			 d->socket, api, DOCKER_API_MIN_MINOR);
		cJSON_Delete(doc);
		return;
	}
	int use = engine_max < 1000 + DOCKER_API_MAX_MINOR ? engine_max : 1000 + DOCKER_API_MAX_MINOR;
	d->api_minor = use - 1000;
	snprintf(d->version, sizeof d->version, "1.%d", d->api_minor);
	cJSON_Delete(d->version_doc);
	d->version_doc = doc;
	d->neg = NEG_DONE;
	log_info("docker.negotiated", "socket=%s version=%s engine_api=%s engine_min_api=%s",
		 d->socket, d->version, api, min ? min : "?");
	flush_queue(d, d->neg_gen, DOCKER_OK, "");
}

static void on_ping(const struct http_response *resp, void *arg)
{
	struct docker *d = arg;
	d->neg_http = 0;
	if (resp->error != HTTP_OK) {
		neg_fail(d, map_http_error(resp->error), "cannot reach the Docker engine on %s: %s",
			 d->socket, resp->error_msg);
		return;
	}
	if (resp->status != 200) {
		neg_fail(d, DOCKER_ERR_ENGINE, "GET /_ping on %s: HTTP %ld", d->socket,
			 resp->status);
		return;
	}
	if (neg_get(d, "/version", on_version) < 0)
		neg_fail(d, DOCKER_ERR_INTERNAL, "could not start GET /version");
}

static int neg_get(struct docker *d, const char *path, http_done_fn done)
{
	char url[64];
	snprintf(url, sizeof url, URL_BASE "%s", path);
	struct http_request req = {
		.method = "GET",
		.url = url,
		.unix_socket = d->socket,
		.timeout_ms = d->neg_timeout_ms,
		.max_body = 1 << 20,
		.on_done = done,
		.arg = d,
	};
	d->neg_http = http_client_start(d->http, &req);
	return d->neg_http ? 0 : -1;
}

static void negotiate_start(struct docker *d)
{
	d->neg = NEG_RUNNING;
	d->neg_gen++;
	if (neg_get(d, "/_ping", on_ping) < 0) {
		d->neg_fail_code = DOCKER_ERR_INTERNAL;
		snprintf(d->neg_fail_msg, sizeof d->neg_fail_msg, "could not start GET /_ping");
		ev_timer_set(&d->neg_fail_timer, 0.0, 0.0);
		ev_timer_start(d->loop, &d->neg_fail_timer);
	}
}

static void submit(struct call *c)
{
	struct docker *d = c->d;
	if (d->neg == NEG_DONE) {
		dispatch(c);
		return;
	}
	c->queued = 1;
	if (d->neg == NEG_NONE)
		negotiate_start(d);
	c->gen = d->neg_gen;
}

const char *docker_api_version(const struct docker *d)
{
	return d->neg == NEG_DONE ? d->version : NULL;
}

uint64_t docker_negotiate(struct docker *d, docker_done_fn done, void *arg)
{
	struct call *c = new_call(d, K_NEGOTIATE, "GET", done, arg);
	if (!c)
		return 0;
	if (d->neg == NEG_DONE)
		d->neg = NEG_NONE; /* asked for explicitly: ask the engine again */
	submit(c);
	return c->id;
}

/* ---- answers ------------------------------------------------------------ */

/* The engine's error text: {"message": ...} or the body itself. */
static void engine_message(const struct http_response *resp, char *out, size_t cap)
{
	cJSON *doc = cJSON_ParseWithLength(resp->body, resp->body_len);
	const char *m = json_str(doc, "message");
	if (m)
		snprintf(out, cap, "%s", m);
	else if (resp->body_len)
		snprintf(out, cap, "%.*s", (int)(resp->body_len > 300 ? 300 : resp->body_len),
			 resp->body);
	else
		snprintf(out, cap, "HTTP %ld", resp->status);
	cJSON_Delete(doc);
	size_t n = strlen(out);
	while (n && (out[n - 1] == '\n' || out[n - 1] == '\r' || out[n - 1] == ' '))
		out[--n] = '\0';
}

static enum docker_error map_status(long status)
{
	switch (status) {
	case 400: return DOCKER_ERR_BAD_REQUEST;
	case 401:
	case 403: return DOCKER_ERR_DENIED;
	case 404: return DOCKER_ERR_NOT_FOUND;
	case 409: return DOCKER_ERR_CONFLICT;
	default: return DOCKER_ERR_ENGINE;
	}
}

/* Cuts "/containers/x/logs?..." to "/containers/x/logs" for messages. */
static void short_path(const struct call *c, char *out, size_t cap)
{
	const char *p = c->path.data ? c->path.data : "";
	const char *q = strchr(p, '?');
	snprintf(out, cap, "%.*s", (int)(q ? (size_t)(q - p) : strlen(p)), p);
}

static void finish_plain(struct call *c, const struct http_response *resp)
{
	struct docker_result r = {.status = resp->status, .message = ""};
	cJSON *doc = NULL;
	if (c->flags & F_JSON) {
		doc = cJSON_ParseWithLength(resp->body, resp->body_len);
		if (!doc) {
			char p[256], msg[ERR_MSG_MAX];
			short_path(c, p, sizeof p);
			snprintf(msg, sizeof msg, "%s %s: the answer is not valid JSON", c->method, p);
			complete_error(c, DOCKER_ERR_PROTOCOL, resp->status, msg);
			return;
		}
		r.json = doc;
		if (c->flags & (F_ID | F_IMAGE))
			r.id = json_str(doc, "Id");
		if (c->flags & F_IMAGE) {
			const cJSON *rd = cJSON_GetObjectItemCaseSensitive(doc, "RepoDigests");
			const cJSON *first = cJSON_IsArray(rd) ? cJSON_GetArrayItem(rd, 0) : NULL;
			if (cJSON_IsString(first) && strchr(first->valuestring, '@'))
				r.digest = strchr(first->valuestring, '@') + 1;
		}
	}
	complete(c, &r);
	cJSON_Delete(doc);
}

static void finish_stream(struct call *c, const struct http_response *resp)
{
	struct err e;
	if (jsonl_finish(&c->jl, &e) < 0) {
		complete_error(c, DOCKER_ERR_PROTOCOL, resp->status, e.msg);
		return;
	}
	if (c->stream_err) {
		complete_error(c, DOCKER_ERR_STREAM, resp->status, c->stream_err);
		return;
	}
	struct docker_result r = {
		.status = resp->status, .message = "", .digest = c->digest, .id = c->image_id,
	};
	complete(c, &r);
}

static void finish_logs(struct call *c, const struct http_response *resp)
{
	struct err e;
	c->busy++;
	int rc = logframe_finish(c->lf, &e);
	c->busy--;
	if (c->dead) {
		free_call(c);
		return;
	}
	if (rc < 0) {
		complete_error(c, c->own_code ? c->own_code : DOCKER_ERR_PROTOCOL, resp->status,
			       c->own_code ? c->own_msg : e.msg);
		return;
	}
	struct docker_result r = {.status = resp->status, .message = ""};
	complete(c, &r);
}

static void http_done(const struct http_response *resp, void *arg)
{
	struct call *c = arg;
	struct docker *d = c->d;
	c->http_id = 0;
	char p[256], msg[ERR_MSG_MAX];
	short_path(c, p, sizeof p);
	if (resp->error != HTTP_OK) {
		enum docker_error code = map_http_error(resp->error);
		if (resp->error == HTTP_ERR_ABORTED && c->own_code) {
			snprintf(msg, sizeof msg, "%s", c->own_msg);
			code = c->own_code;
		} else {
			snprintf(msg, sizeof msg, "%s %s: %s", c->method, p, resp->error_msg);
		}
		if (code == DOCKER_ERR_CONNECT || code == DOCKER_ERR_TRANSPORT)
			mark_stale(d, http_error_name(resp->error));
		if (c->kind == K_LOGS && c->lf) {
			/* Hand over what arrived before the break. */
			c->busy++;
			logframe_finish(c->lf, NULL);
			c->busy--;
			if (c->dead) {
				free_call(c);
				return;
			}
		}
		complete_error(c, code, resp->status, msg);
		return;
	}
	if (resp->status < 200 || (resp->status >= 300 && resp->status != 304)) {
		char m[ERR_MSG_MAX - 300];
		engine_message(resp, m, sizeof m);
		snprintf(msg, sizeof msg, "%s %s: %s", c->method, p, m);
		/* Docker 25+ answers 400 to a version it no longer accepts. */
		if (resp->status == 400 && strstr(m, "client version"))
			mark_stale(d, "engine refused the API version");
		complete_error(c, map_status(resp->status), resp->status, msg);
		return;
	}
	switch (c->kind) {
	case K_PLAIN:
		finish_plain(c, resp);
		break;
	case K_PULL:
	case K_PUSH:
	case K_BUILD:
		finish_stream(c, resp);
		break;
	case K_LOGS:
		finish_logs(c, resp);
		break;
	case K_EVENTS:
		snprintf(msg, sizeof msg, "GET /events: the engine ended the stream");
		events_dropped(c, DOCKER_ERR_TRANSPORT, resp->status, msg);
		break;
	case K_NEGOTIATE:
		break;
	}
}

/* ---- streams ------------------------------------------------------------ */

/* Error text of a {"error": ..., "errorDetail": {"message": ...}} object. */
static const char *stream_error_text(const cJSON *o)
{
	const cJSON *ed = cJSON_GetObjectItemCaseSensitive(o, "errorDetail");
	const char *m = json_str(ed, "message");
	if (m && *m)
		return m;
	m = json_str(o, "error");
	if (m && *m)
		return m;
	if (ed || cJSON_GetObjectItemCaseSensitive(o, "error"))
		return "the engine reported an error without a message";
	return NULL;
}

static char *dup_token(const char *s)
{
	size_t n = strcspn(s, " \t\r\n");
	return strndup(s, n);
}

static int on_stream_item(const struct jsonl_item *it, void *arg)
{
	struct call *c = arg;
	if (c->dead)
		return -1;
	const cJSON *o = it->json;
	if (!cJSON_IsObject(o))
		return 0;
	const char *err = stream_error_text(o);
	if (err) {
		if (!c->stream_err)
			c->stream_err = strdup(err);
		return 0;
	}
	const char *status = json_str(o, "status");
	const cJSON *aux = cJSON_GetObjectItemCaseSensitive(o, "aux");
	if (c->kind == K_PULL && status && strncmp(status, "Digest: ", 8) == 0) {
		free(c->digest);
		c->digest = dup_token(status + 8);
	} else if (c->kind == K_PUSH) {
		const char *dg = json_str(aux, "Digest");
		const char *in_status = status ? strstr(status, "digest: ") : NULL;
		if (dg || in_status) {
			free(c->digest);
			c->digest = dg ? strdup(dg) : dup_token(in_status + 8);
		}
	} else if (c->kind == K_BUILD) {
		const char *text = json_str(o, "stream");
		const char *id = json_str(aux, "ID");
		if (id) {
			free(c->image_id);
			c->image_id = strdup(id);
		}
		if (text) {
			if (c->text)
				c->text(text, c->arg);
			return c->dead ? -1 : 0;
		}
		if (id)
			return 0;
	}
	if (c->progress)
		c->progress(o, c->arg);
	return c->dead ? -1 : 0;
}

static int stream_data(const char *data, size_t len, void *arg)
{
	struct call *c = arg;
	struct err e;
	c->busy++;
	int rc = jsonl_feed(&c->jl, data, len, &e);
	c->busy--;
	if (c->dead) {
		free_call(c);
		return -1;
	}
	if (rc < 0) {
		c->own_code = DOCKER_ERR_PROTOCOL;
		snprintf(c->own_msg, sizeof c->own_msg, "%s", e.msg);
		return -1;
	}
	return 0;
}

static int on_log_line(const struct linesplit_line *line, void *arg)
{
	struct call *c = arg;
	if (c->dead)
		return -1;
	int rc = c->on_line ? c->on_line(line, c->arg) : 0;
	return c->dead ? -1 : rc;
}

static int logs_data(const char *data, size_t len, void *arg)
{
	struct call *c = arg;
	struct err e;
	c->busy++;
	int rc = logframe_feed(c->lf, data, len, &e);
	c->busy--;
	if (c->dead) {
		free_call(c);
		return -1;
	}
	if (rc < 0) {
		int by_callback = strcmp(e.msg, "stopped by the line callback") == 0;
		c->own_code = by_callback ? DOCKER_ERR_INTERNAL : DOCKER_ERR_PROTOCOL;
		snprintf(c->own_msg, sizeof c->own_msg, "%s", e.msg);
		return -1;
	}
	return 0;
}

/* ---- events ------------------------------------------------------------- */

static int on_event_item(const struct jsonl_item *it, void *arg)
{
	struct call *c = arg;
	struct events_sub *ev = c->ev;
	if (c->dead)
		return -1;
	const cJSON *o = it->json;
	if (!cJSON_IsObject(o))
		return 0;
	int64_t t;
	if (raw_top_int(it->raw, it->raw_len, "timeNano", &t) < 0) {
		const cJSON *secs = cJSON_GetObjectItemCaseSensitive(o, "time");
		int ok = cJSON_IsNumber(secs) && secs->valuedouble >= 0 &&
			 secs->valuedouble < (double)(INT64_MAX / 1000000000);
		t = ok ? (int64_t)secs->valuedouble * 1000000000 : 0;
	}
	uint64_t key = fnv1a(it->raw, it->raw_len);
	backoff_state_reset(&ev->backoff);
	if (t == ev->last_ns) {
		for (int i = 0; i < ev->nkeys; i++)
			if (ev->keys[i] == key)
				return 0; /* replayed: delivered before the reconnect */
		if (ev->nkeys == EVENT_KEYS)
			memmove(ev->keys, ev->keys + 1, sizeof ev->keys[0] * (EVENT_KEYS - 1));
		else
			ev->nkeys++;
		ev->keys[ev->nkeys - 1] = key;
	} else if (t > ev->last_ns) {
		ev->last_ns = t;
		ev->keys[0] = key;
		ev->nkeys = 1;
		ev->replay = 0;
	} else if (ev->replay) {
		return 0; /* older than what we saw: an engine replaying too much */
	}
	/* Older events on a live stream are delivered: the engine stamps events
	 * before it orders them, so two can arrive a little out of order. */
	ev->opts.on_event(o, t, ev->opts.arg);
	return c->dead ? -1 : 0;
}

static void events_state(struct call *c, enum docker_events_state st, const char *msg)
{
	if (c->ev->opts.on_state) {
		c->busy++;
		c->ev->opts.on_state(st, msg, c->ev->opts.arg);
		c->busy--;
	}
}

static void events_dropped(struct call *c, enum docker_error code, long status,
			   const char *msg)
{
	struct docker *d = c->d;
	struct events_sub *ev = c->ev;
	/* The partial line of a broken connection is worthless; start clean. */
	jsonl_free(&c->jl);
	jsonl_init(&c->jl, d->max_line, on_event_item, c);
	if ((status >= 400 && status < 500) || code == DOCKER_ERR_VERSION) {
		log_error("docker.events_failed", "error=%s", msg);
		events_state(c, DOCKER_EVENTS_FAILED, msg);
		free_call(c);
		return;
	}
	/* An engine that went away may come back another version. */
	mark_stale(d, "events stream dropped");
	if (ev->connected) {
		ev->connected = 0;
		log_warn("docker.events_disconnected", "error=%s code=%s", msg,
			 docker_error_name(code));
		events_state(c, DOCKER_EVENTS_DISCONNECTED, msg);
		if (c->dead) {
			free_call(c);
			return;
		}
	}
	int64_t delay = backoff_state_next(&ev->backoff);
	log_debug("docker.events_retry", "delay_ms=%lld error=%s", (long long)delay, msg);
	ev_timer_stop(d->loop, &c->timer);
	ev_timer_set(&c->timer, (double)delay / 1000.0, 0.0);
	ev_timer_start(d->loop, &c->timer);
}

static int events_path(struct call *c)
{
	struct events_sub *ev = c->ev;
	buf_reset(&c->path);
	if (buf_append_str(&c->path, "/events") < 0)
		return -1;
	if (ev->filters && buf_printf(&c->path, "?filters=%s", ev->filters) < 0)
		return -1;
	/* Resume after the last event; before any, from the caller's start or
	 * from when we first subscribed. */
	int64_t since = ev->last_ns ? ev->last_ns : ev->since_ns ? ev->since_ns : ev->connect_ns;
	if (since > 0) {
		char tmp[48];
		snprintf(tmp, sizeof tmp, "%lld.%09lld", (long long)(since / 1000000000),
			 (long long)(since % 1000000000));
		if (q_add(&c->path, "since", tmp) < 0)
			return -1;
	}
	return 0;
}

uint64_t docker_events_subscribe(struct docker *d, const struct docker_events_opts *opts)
{
	if (!opts || !opts->on_event)
		return 0;
	struct call *c = new_call(d, K_EVENTS, "GET", NULL, NULL);
	if (!c)
		return 0;
	c->ev = calloc(1, sizeof *c->ev);
	int oom = 0;
	if (c->ev)
		c->ev->filters = filters_encode(&(struct filters){.type = opts->type,
								  .labels = opts->labels}, &oom);
	if (!c->ev || oom) {
		free_call(c);
		return 0;
	}
	c->recv_buffer = DOCKER_STREAM_RECV_BUFFER;
	c->ev->opts = *opts;
	c->ev->opts.labels = NULL;
	c->ev->opts.type = NULL;
	c->ev->since_ns = opts->since_ns;
	backoff_state_init(&c->ev->backoff, opts->backoff_base_ms ? opts->backoff_base_ms : 250,
			   opts->backoff_cap_ms ? opts->backoff_cap_ms : 30000);
	jsonl_free(&c->jl);
	jsonl_init(&c->jl, d->max_line, on_event_item, c);
	/* Start from the loop, so the first state callback never runs inside this call. */
	ev_timer_set(&c->timer, 0.0, 0.0);
	ev_timer_start(d->loop, &c->timer);
	return c->id;
}

/* ---- dispatch ----------------------------------------------------------- */

static void dispatch(struct call *c)
{
	struct docker *d = c->d;
	if (c->kind == K_NEGOTIATE) {
		struct docker_result r = {.message = "", .json = d->version_doc};
		complete(c, &r);
		return;
	}
	char msg[ERR_MSG_MAX];
	if (d->api_minor < c->min_minor) {
		snprintf(msg, sizeof msg, "%s needs Docker API 1.%d; the engine speaks %s",
			 c->path.data, c->min_minor, d->version);
		fail_later(c, DOCKER_ERR_UNSUPPORTED, msg);
		return;
	}
	c->own_code = DOCKER_OK;
	if (c->kind == K_EVENTS && events_path(c) < 0) {
		fail_later(c, DOCKER_ERR_INTERNAL, "out of memory");
		return;
	}
	struct buf url;
	buf_init(&url, 128 * 1024);
	if (buf_printf(&url, URL_BASE "/v%s%s", d->version, c->path.data) < 0) {
		buf_free(&url);
		fail_later(c, DOCKER_ERR_INTERNAL, "URL too long");
		return;
	}
	struct http_request req = {
		.method = c->method,
		.url = url.data,
		.unix_socket = d->socket,
		.headers = (const char *const *)c->hdrs,
		.body = c->body,
		.body_len = c->body_len,
		.body_file = c->body_file,
		.timeout_ms = c->timeout_ms,
		.stall_timeout_ms = c->stall_ms,
		.max_body = d->max_body,
		.recv_buffer = c->recv_buffer,
		.on_done = http_done,
		.arg = c,
	};
	switch (c->kind) {
	case K_PULL:
	case K_PUSH:
	case K_BUILD:
	case K_EVENTS:
		req.on_data = stream_data;
		break;
	case K_LOGS:
		req.on_data = logs_data;
		break;
	default:
		break;
	}
	c->http_id = http_client_start(d->http, &req);
	buf_free(&url);
	if (!c->http_id) {
		snprintf(msg, sizeof msg, "%s %s: the request could not be started", c->method,
			 c->path.data);
		fail_later(c, DOCKER_ERR_INTERNAL, msg);
		return;
	}
	if (c->paused)
		http_client_pause(d->http, c->http_id, true);
	if (c->kind == K_EVENTS && !c->ev->connected) {
		int again = c->ev->ever_connected;
		if (!again)
			c->ev->connect_ns = clock_wall_ms() * 1000000;
		c->ev->connected = 1;
		c->ev->ever_connected = 1;
		c->ev->replay = 1;
		if (again)
			log_info("docker.events_reconnected", "version=%s", d->version);
		events_state(c, again ? DOCKER_EVENTS_RECONNECTED : DOCKER_EVENTS_CONNECTED, "");
		if (c->dead && !c->busy)
			free_call(c);
	}
}

/* ---- public calls ------------------------------------------------------- */

static int64_t plain_timeout(int64_t t)
{
	return t > 0 ? t : DOCKER_DEFAULT_TIMEOUT_MS;
}

/* A one-answer call; the caller fills in its path. */
static struct call *plain(struct docker *d, const char *method, unsigned flags,
			  int64_t timeout_ms, docker_done_fn done, void *arg)
{
	if (!done)
		return NULL;
	struct call *c = new_call(d, K_PLAIN, method, done, arg);
	if (!c)
		return NULL;
	c->flags = flags;
	c->timeout_ms = plain_timeout(timeout_ms);
	return c;
}

/* "/containers/<id><suffix>" */
static int container_path(struct call *c, const char *id, const char *suffix)
{
	if (!id || !*id)
		return -1;
	if (buf_append_str(&c->path, "/containers/") < 0 ||
	    http_url_encode(&c->path, id, strlen(id)) < 0 || buf_append_str(&c->path, suffix) < 0)
		return -1;
	return 0;
}

static uint64_t go(struct call *c, int ok)
{
	if (!ok) {
		free_call(c);
		return 0;
	}
	uint64_t id = c->id;
	submit(c);
	return id;
}

/* A call that sends `body` (copied) as JSON. */
static int json_body(struct call *c, const cJSON *body)
{
	if (!body || add_header(c, "Content-Type", "application/json") < 0)
		return -1;
	c->body = cJSON_PrintUnformatted(body);
	c->body_len = c->body ? strlen(c->body) : 0;
	return c->body ? 0 : -1;
}

uint64_t docker_container_create(struct docker *d, const char *name, const cJSON *body,
				 int64_t timeout_ms, docker_done_fn done, void *arg)
{
	if (!body)
		return 0;
	struct call *c = plain(d, "POST", F_JSON | F_ID, timeout_ms, done, arg);
	if (!c)
		return 0;
	return go(c, buf_append_str(&c->path, "/containers/create") == 0 &&
			     (!name || q_add(&c->path, "name", name) == 0) && json_body(c, body) == 0);
}

uint64_t docker_container_start(struct docker *d, const char *id, int64_t timeout_ms,
				docker_done_fn done, void *arg)
{
	struct call *c = plain(d, "POST", 0, timeout_ms, done, arg);
	return c ? go(c, container_path(c, id, "/start") == 0) : 0;
}

uint64_t docker_container_stop(struct docker *d, const char *id, int stop_timeout_s,
			       const char *signal, int64_t timeout_ms, docker_done_fn done,
			       void *arg)
{
	if (timeout_ms <= 0)
		timeout_ms = (stop_timeout_s >= 0 ? (int64_t)stop_timeout_s * 1000
						  : DOCKER_DEFAULT_TIMEOUT_MS) +
			     DOCKER_DEFAULT_TIMEOUT_MS;
	struct call *c = plain(d, "POST", 0, timeout_ms, done, arg);
	if (!c)
		return 0;
	int ok = container_path(c, id, "/stop") == 0 &&
		 (stop_timeout_s < 0 || q_add_int(&c->path, "t", stop_timeout_s) == 0) &&
		 (!signal || q_add(&c->path, "signal", signal) == 0);
	if (signal)
		c->min_minor = 42;
	return go(c, ok);
}

uint64_t docker_container_kill(struct docker *d, const char *id, const char *signal,
			       int64_t timeout_ms, docker_done_fn done, void *arg)
{
	struct call *c = plain(d, "POST", 0, timeout_ms, done, arg);
	if (!c)
		return 0;
	return go(c, container_path(c, id, "/kill") == 0 &&
			     (!signal || q_add(&c->path, "signal", signal) == 0));
}

uint64_t docker_container_remove(struct docker *d, const char *id, int force, int volumes,
				 int64_t timeout_ms, docker_done_fn done, void *arg)
{
	struct call *c = plain(d, "DELETE", 0, timeout_ms, done, arg);
	if (!c)
		return 0;
	return go(c, container_path(c, id, "") == 0 &&
			     (!force || q_add(&c->path, "force", "1") == 0) &&
			     (!volumes || q_add(&c->path, "v", "1") == 0));
}

uint64_t docker_container_inspect(struct docker *d, const char *id, int64_t timeout_ms,
				  docker_done_fn done, void *arg)
{
	struct call *c = plain(d, "GET", F_JSON | F_ID, timeout_ms, done, arg);
	return c ? go(c, container_path(c, id, "/json") == 0) : 0;
}

uint64_t docker_container_list(struct docker *d, int all, const char *const *labels,
			       int64_t timeout_ms, docker_done_fn done, void *arg)
{
	struct call *c = plain(d, "GET", F_JSON, timeout_ms, done, arg);
	if (!c)
		return 0;
	int oom;
	char *f = filters_encode(&(struct filters){.labels = labels}, &oom);
	int ok = !oom && buf_append_str(&c->path, "/containers/json") == 0 &&
		 (!all || q_add(&c->path, "all", "1") == 0) &&
		 (!f || buf_printf(&c->path, "%cfilters=%s", all ? '&' : '?', f) == 0);
	free(f);
	return go(c, ok);
}

uint64_t docker_container_wait(struct docker *d, const char *id, const char *condition,
			       int64_t timeout_ms, docker_done_fn done, void *arg)
{
	struct call *c = plain(d, "POST", F_JSON, timeout_ms, done, arg);
	if (!c)
		return 0;
	c->timeout_ms = timeout_ms > 0 ? timeout_ms : 0;
	return go(c, container_path(c, id, "/wait") == 0 &&
			     q_add(&c->path, "condition", condition ? condition : "not-running") == 0);
}

uint64_t docker_container_stats(struct docker *d, const char *id, int64_t timeout_ms,
				docker_done_fn done, void *arg)
{
	struct call *c = plain(d, "GET", F_JSON, timeout_ms, done, arg);
	if (!c)
		return 0;
	return go(c, container_path(c, id, "/stats?stream=false&one-shot=true") == 0);
}

uint64_t docker_container_logs(struct docker *d, const char *id,
			       const struct docker_logs_opts *opts, linesplit_fn on_line,
			       docker_done_fn done, void *arg)
{
	static const struct docker_logs_opts none;
	if (!opts)
		opts = &none;
	if (!done || (opts->recv_buffer && (opts->recv_buffer < HTTP_RECV_BUFFER_MIN ||
					    opts->recv_buffer > HTTP_RECV_BUFFER_MAX)))
		return 0;
	struct call *c = new_call(d, K_LOGS, "GET", done, arg);
	if (!c)
		return 0;
	c->on_line = on_line;
	c->recv_buffer = opts->recv_buffer ? opts->recv_buffer : DOCKER_STREAM_RECV_BUFFER;
	struct logframe_opts lo = {
		.mode = opts->tty ? LOGFRAME_RAW : LOGFRAME_MULTIPLEXED,
		.timestamps = 1,
		.max_line = d->max_line,
		.on_line = on_log_line,
		.arg = c,
	};
	c->lf = logframe_new(&lo);
	int ok = c->lf && container_path(c, id, "/logs") == 0 &&
		 q_add(&c->path, "stdout", opts->no_stdout ? "0" : "1") == 0 &&
		 q_add(&c->path, "stderr", opts->no_stderr ? "0" : "1") == 0 &&
		 q_add(&c->path, "timestamps", "1") == 0 &&
		 (!opts->follow || q_add(&c->path, "follow", "1") == 0) &&
		 (opts->tail <= 0 || q_add_int(&c->path, "tail", opts->tail) == 0);
	if (ok && opts->since_ns > 0) {
		char tmp[48];
		snprintf(tmp, sizeof tmp, "%lld.%09lld", (long long)(opts->since_ns / 1000000000),
			 (long long)(opts->since_ns % 1000000000));
		ok = q_add(&c->path, "since", tmp) == 0;
	}
	return go(c, ok);
}

void docker_logs_pause(struct docker *d, uint64_t id, bool paused)
{
	if (!d || !id)
		return;
	struct call *c = d->calls;
	while (c && c->id != id)
		c = c->next;
	if (!c || c->dead || c->kind != K_LOGS || c->paused == paused)
		return;
	c->paused = paused;
	/* Before the request is sent (negotiation) dispatch applies it. */
	if (c->http_id)
		http_client_pause(d->http, c->http_id, paused);
}

/* ---- the engine and networks -------------------------------------------- */

uint64_t docker_info(struct docker *d, int64_t timeout_ms, docker_done_fn done, void *arg)
{
	struct call *c = plain(d, "GET", F_JSON, timeout_ms, done, arg);
	return c ? go(c, buf_append_str(&c->path, "/info") == 0) : 0;
}

uint64_t docker_network_create(struct docker *d, const cJSON *body, int64_t timeout_ms,
			       docker_done_fn done, void *arg)
{
	if (!body)
		return 0;
	struct call *c = plain(d, "POST", F_JSON | F_ID, timeout_ms, done, arg);
	return c ? go(c, buf_append_str(&c->path, "/networks/create") == 0 &&
				 json_body(c, body) == 0)
		 : 0;
}

/* "/networks/<id>" */
static int network_path(struct call *c, const char *id)
{
	return id && *id && buf_append_str(&c->path, "/networks/") == 0 &&
			       http_url_encode(&c->path, id, strlen(id)) == 0
		       ? 0
		       : -1;
}

uint64_t docker_network_inspect(struct docker *d, const char *id, int64_t timeout_ms,
				docker_done_fn done, void *arg)
{
	struct call *c = plain(d, "GET", F_JSON | F_ID, timeout_ms, done, arg);
	return c ? go(c, network_path(c, id) == 0) : 0;
}

uint64_t docker_network_list(struct docker *d, const char *name, const char *const *labels,
			     int64_t timeout_ms, docker_done_fn done, void *arg)
{
	struct call *c = plain(d, "GET", F_JSON, timeout_ms, done, arg);
	if (!c)
		return 0;
	int oom;
	char *f = filters_encode(&(struct filters){.name = name, .labels = labels}, &oom);
	int ok = !oom && buf_append_str(&c->path, "/networks") == 0 &&
		 (!f || buf_printf(&c->path, "?filters=%s", f) == 0);
	free(f);
	return go(c, ok);
}

uint64_t docker_network_remove(struct docker *d, const char *id, int64_t timeout_ms,
			       docker_done_fn done, void *arg)
{
	struct call *c = plain(d, "DELETE", 0, timeout_ms, done, arg);
	return c ? go(c, network_path(c, id) == 0) : 0;
}

static struct call *stream_call(struct docker *d, enum call_kind kind, int64_t timeout_ms,
				docker_progress_fn progress, docker_done_fn done, void *arg)
{
	if (!done)
		return NULL;
	struct call *c = new_call(d, kind, "POST", done, arg);
	if (!c)
		return NULL;
	c->progress = progress;
	c->timeout_ms = timeout_ms > 0 ? timeout_ms : 0;
	c->stall_ms = kind == K_BUILD ? 0 : d->stall_ms;
	jsonl_free(&c->jl);
	jsonl_init(&c->jl, d->max_line, on_stream_item, c);
	return c;
}

uint64_t docker_image_pull(struct docker *d, const char *image, const char *auth_json,
			   int64_t timeout_ms, docker_progress_fn progress, docker_done_fn done,
			   void *arg)
{
	if (!image || !*image)
		return 0;
	struct call *c = stream_call(d, K_PULL, timeout_ms, progress, done, arg);
	if (!c)
		return 0;
	struct buf repo, tag;
	buf_init(&repo, 0);
	buf_init(&tag, 0);
	int ok = docker_split_ref(image, &repo, &tag) == 0 && repo.len && tag.len &&
		 buf_append_str(&c->path, "/images/create") == 0 &&
		 q_add(&c->path, "fromImage", repo.data) == 0 &&
		 q_add(&c->path, "tag", tag.data) == 0 &&
		 add_auth_header(c, "X-Registry-Auth", auth_json) == 0;
	buf_free(&repo);
	buf_free(&tag);
	return go(c, ok);
}

uint64_t docker_image_push(struct docker *d, const char *image, const char *auth_json,
			   int64_t timeout_ms, docker_progress_fn progress, docker_done_fn done,
			   void *arg)
{
	if (!image || !*image)
		return 0;
	struct call *c = stream_call(d, K_PUSH, timeout_ms, progress, done, arg);
	if (!c)
		return 0;
	struct buf repo, tag;
	buf_init(&repo, 0);
	buf_init(&tag, 0);
	int ok = docker_split_ref(image, &repo, &tag) == 0 && repo.len && tag.len &&
		 buf_append_str(&c->path, "/images") == 0 && path_name(&c->path, repo.data) == 0 &&
		 buf_append_str(&c->path, "/push") == 0 && q_add(&c->path, "tag", tag.data) == 0 &&
		 add_auth_header(c, "X-Registry-Auth", auth_json) == 0;
	buf_free(&repo);
	buf_free(&tag);
	return go(c, ok);
}

uint64_t docker_image_tag(struct docker *d, const char *source, const char *target,
			  int64_t timeout_ms, docker_done_fn done, void *arg)
{
	if (!source || !*source || !target || !*target)
		return 0;
	struct call *c = plain(d, "POST", 0, timeout_ms, done, arg);
	if (!c)
		return 0;
	struct buf repo, tag;
	buf_init(&repo, 0);
	buf_init(&tag, 0);
	int ok = docker_split_ref(target, &repo, &tag) == 0 &&
		 buf_append_str(&c->path, "/images") == 0 && path_name(&c->path, source) == 0 &&
		 buf_append_str(&c->path, "/tag") == 0 && q_add(&c->path, "repo", repo.data) == 0 &&
		 q_add(&c->path, "tag", tag.data) == 0;
	buf_free(&repo);
	buf_free(&tag);
	return go(c, ok);
}

uint64_t docker_image_remove(struct docker *d, const char *name, int force, int noprune,
			     int64_t timeout_ms, docker_done_fn done, void *arg)
{
	if (!name || !*name)
		return 0;
	struct call *c = plain(d, "DELETE", F_JSON, timeout_ms, done, arg);
	if (!c)
		return 0;
	return go(c, buf_append_str(&c->path, "/images") == 0 && path_name(&c->path, name) == 0 &&
			     (!force || q_add(&c->path, "force", "1") == 0) &&
			     (!noprune || q_add(&c->path, "noprune", "1") == 0));
}

uint64_t docker_image_list(struct docker *d, const char *reference, const char *const *labels,
			   int64_t timeout_ms, docker_done_fn done, void *arg)
{
	struct call *c = plain(d, "GET", F_JSON, timeout_ms, done, arg);
	if (!c)
		return 0;
	int oom;
	char *f = filters_encode(&(struct filters){.reference = reference, .labels = labels},
				 &oom);
	int ok = !oom && buf_append_str(&c->path, "/images/json") == 0 &&
		 (!f || buf_printf(&c->path, "?filters=%s", f) == 0);
	free(f);
	return go(c, ok);
}

uint64_t docker_image_inspect(struct docker *d, const char *name, int64_t timeout_ms,
			      docker_done_fn done, void *arg)
{
	if (!name || !*name)
		return 0;
	struct call *c = plain(d, "GET", F_JSON | F_IMAGE, timeout_ms, done, arg);
	if (!c)
		return 0;
	return go(c, buf_append_str(&c->path, "/images") == 0 && path_name(&c->path, name) == 0 &&
			     buf_append_str(&c->path, "/json") == 0);
}

/* Adds key=<JSON of v> to the query. */
static int q_add_json(struct buf *b, const char *key, const cJSON *v)
{
	char *s = cJSON_PrintUnformatted(v);
	if (!s)
		return -1;
	int rc = q_add(b, key, s);
	free(s);
	return rc;
}

static int q_add_json_list(struct buf *b, const char *key, const char *const *items)
{
	cJSON *a = cJSON_CreateArray();
	int ok = a != NULL;
	for (size_t i = 0; ok && items[i]; i++)
		ok = cJSON_AddItemToArray(a, cJSON_CreateString(items[i]));
	ok = ok && q_add_json(b, key, a) == 0;
	cJSON_Delete(a);
	return ok ? 0 : -1;
}

uint64_t docker_image_build(struct docker *d, const struct docker_build_opts *o,
			    docker_done_fn done, void *arg)
{
	if (!o || !o->context_file || !*o->context_file)
		return 0;
	struct call *c = stream_call(d, K_BUILD, o->timeout_ms, o->on_progress, done, arg);
	if (!c)
		return 0;
	c->text = o->on_output;
	c->body_file = strdup(o->context_file);
	int ok = c->body_file && buf_append_str(&c->path, "/build") == 0 &&
		 q_add(&c->path, "rm", "1") == 0 && q_add(&c->path, "forcerm", "1") == 0;
	for (size_t i = 0; ok && o->tags && o->tags[i]; i++)
		ok = q_add(&c->path, "t", o->tags[i]) == 0;
	ok = ok && (!o->dockerfile || q_add(&c->path, "dockerfile", o->dockerfile) == 0) &&
	     (!o->labels || q_add_json(&c->path, "labels", o->labels) == 0) &&
	     (!o->build_args || q_add_json(&c->path, "buildargs", o->build_args) == 0) &&
	     (!o->cache_from || q_add_json_list(&c->path, "cachefrom", o->cache_from) == 0) &&
	     (!o->pull || q_add(&c->path, "pull", "1") == 0) &&
	     (!o->no_cache || q_add(&c->path, "nocache", "1") == 0) &&
	     add_header(c, "Content-Type", "application/x-tar") == 0 &&
	     (!o->registry_config ||
	      add_auth_header(c, "X-Registry-Config", o->registry_config) == 0);
	return go(c, ok);
}

/* ---- client ------------------------------------------------------------- */

struct docker *docker_new(struct ev_loop *loop, struct http_client *http,
			  const struct docker_opts *opts)
{
	static const struct docker_opts defaults;
	if (!opts)
		opts = &defaults;
	struct docker *d = calloc(1, sizeof *d);
	if (!d)
		return NULL;
	d->loop = loop;
	d->http = http;
	d->socket = strdup(opts->socket_path ? opts->socket_path : DOCKER_DEFAULT_SOCKET);
	if (!d->socket) {
		free(d);
		return NULL;
	}
	d->neg_timeout_ms = opts->negotiate_timeout_ms > 0 ? opts->negotiate_timeout_ms
							   : DOCKER_DEFAULT_NEGOTIATE_TIMEOUT_MS;
	d->stall_ms = opts->progress_stall_ms > 0 ? opts->progress_stall_ms
						  : DOCKER_DEFAULT_STALL_MS;
	d->max_body = opts->max_body ? opts->max_body : DOCKER_DEFAULT_MAX_BODY;
	d->max_line = opts->max_line ? opts->max_line : JSONL_DEFAULT_MAX;
	ev_init(&d->neg_fail_timer, on_neg_fail_timer);
	d->neg_fail_timer.data = d;
	return d;
}

void docker_free(struct docker *d)
{
	if (!d)
		return;
	while (d->calls) {
		struct call *c = d->calls;
		if (c->http_id)
			http_client_cancel(d->http, c->http_id);
		free_call(c);
	}
	if (d->neg_http)
		http_client_cancel(d->http, d->neg_http);
	ev_timer_stop(d->loop, &d->neg_fail_timer);
	cJSON_Delete(d->version_doc);
	free(d->socket);
	free(d);
}
