#include "logcw.h"

#include <ev.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "aws_credentials.h"
#include "buf.h"
#include "clock.h"
#include "config.h"
#include "coord.h"
#include "cwlogs.h"
#include "json.h"
#include "log.h"
#include "logsink.h"
#include "server.h"
#include "store.h"

#define LIMIT_DEFAULT 1000
#define LIMIT_MAX 10000
#define OUT_MAX ((size_t)64 << 20)
#define FOLLOW_OUT_MAX ((size_t)4 << 20)
#define TOKEN_MAX 4096
#define STREAM_MAX 512

struct ring_ev {
	char *json;          /* the event's JSON (no separator) */
	size_t len;
	int64_t ts;
	char id[72];
};

struct rd {
	struct logcw *l;
	struct server_req *r;        /* NULL once the client left */
	struct rd *prev, *next;
	char app[48];
	char service[48];
	char stream[STREAM_MAX];     /* one container's stream: GetLogEvents */
	char group[320];
	int64_t since_ms, end_ms;
	int limit;
	bool follow, forward, started, busy, blocked, tailing;
	bool missing;
	int pages;
	size_t sent;                 /* events taken in this pass (forward mode) */
	char token[TOKEN_MAX];       /* FilterLogEvents nextToken / GetLogEvents forward token */
	bool have_token;
	/* cursor: the newest timestamp sent and the ids sent at it */
	int64_t last_ts;
	char (*seen)[72];
	size_t nseen;
	/* tail mode: the newest `limit` events, oldest first */
	struct ring_ev *ring;
	size_t rhead, rcount, rbytes;
	struct buf out;
	uint64_t call;
	ev_timer timer;
};

struct logcw {
	struct coord *c;
	struct aws_credentials_provider *creds;
	struct cwlogs *cw;
	char prefix[256];
	struct rd *readers;
	bool stopping;
};

bool logcw_enabled(const struct config *cfg)
{
	return config_has(cfg, "logs.cloudwatch_region") &&
	       *config_str(cfg, "logs.cloudwatch_region");
}

int logcw_split_stream(const char *name, char *service, size_t scap, char *instance,
		       size_t icap, char *container, size_t ccap)
{
	const char *a = strchr(name, '/');
	const char *b = a ? strchr(a + 1, '/') : NULL;
	if (!a || !b || a == name || b == a + 1 || !b[1] || strchr(b + 1, '/'))
		return -1;
	if ((size_t)(a - name) >= scap || (size_t)(b - a - 1) >= icap || strlen(b + 1) >= ccap)
		return -1;
	snprintf(service, scap, "%.*s", (int)(a - name), name);
	snprintf(instance, icap, "%.*s", (int)(b - a - 1), a + 1);
	snprintf(container, ccap, "%s", b + 1);
	return 0;
}

/* ---- readers ---- */

static void rd_free(struct rd *d)
{
	struct logcw *l = d->l;
	ev_timer_stop(l->c->loop, &d->timer);
	if (d->call)
		cwlogs_cancel(l->cw, d->call);
	if (d->prev)
		d->prev->next = d->next;
	else if (l->readers == d)
		l->readers = d->next;
	if (d->next)
		d->next->prev = d->prev;
	for (size_t i = 0; i < d->rcount; i++)
		free(d->ring[(d->rhead + i) % (size_t)d->limit].json);
	free(d->ring);
	free(d->seen);
	buf_free(&d->out);
	free(d);
}

static void refuse(struct rd *d, int status, const char *code, const char *msg)
{
	server_on_abort(d->r, NULL, NULL);
	server_respond_error(d->r, status, code, "%s", msg);
	d->r = NULL;
	rd_free(d);
}

static bool seen_before(const struct rd *d, int64_t ts, const char *id)
{
	if (ts < d->last_ts)
		return true;
	if (ts > d->last_ts || !id[0])
		return false;
	for (size_t i = 0; i < d->nseen; i++)
		if (strcmp(d->seen[i], id) == 0)
			return true;
	return false;
}

static void note_sent(struct rd *d, int64_t ts, const char *id)
{
	if (ts > d->last_ts) {
		d->last_ts = ts;
		d->nseen = 0;
	}
	if (id[0] && d->nseen < LOGCW_SEEN_MAX)
		snprintf(d->seen[d->nseen++], sizeof d->seen[0], "%s", id);
}

/* One event as JSON into out (no separator); -1 when it is no container output. */
static int event_json(const struct rd *d, const struct cwlogs_read_event *e, struct buf *out)
{
	char service[128], instance[128], container[128];
	if (logcw_split_stream(e->stream, service, sizeof service, instance, sizeof instance,
			       container, sizeof container) < 0)
		return -1;
	cJSON *o = cJSON_CreateObject();
	if (!o)
		return -1;
	if (e->event_id[0])
		cJSON_AddStringToObject(o, "id", e->event_id);
	else
		cJSON_AddNullToObject(o, "id");
	cJSON_AddNumberToObject(o, "ts_ms", (double)e->ts_ms);
	cJSON_AddStringToObject(o, "app", d->app);
	cJSON_AddStringToObject(o, "service", service);
	cJSON_AddStringToObject(o, "instance", instance);
	cJSON_AddStringToObject(o, "container", container);
	cJSON_AddStringToObject(o, "log_stream", e->stream);
	cJSON_AddNullToObject(o, "release");
	cJSON_AddNullToObject(o, "agent");
	cJSON_AddNullToObject(o, "stream");
	cJSON_AddStringToObject(o, "message", e->message);
	int rc = json_to_buf(o, out);
	cJSON_Delete(o);
	return rc;
}

static void ring_push(struct rd *d, const struct cwlogs_read_event *e)
{
	struct buf b;
	buf_init(&b, (size_t)4 << 20);
	if (event_json(d, e, &b) < 0) {
		buf_free(&b);
		return;
	}
	size_t cap = (size_t)d->limit;
	/* The oldest go when the ring is full, or past the answer's byte cap. */
	while (d->rcount && (d->rcount == cap || d->rbytes + b.len > OUT_MAX / 2)) {
		struct ring_ev *old = &d->ring[d->rhead];
		d->rbytes -= old->len;
		free(old->json);
		d->rhead = (d->rhead + 1) % cap;
		d->rcount--;
	}
	struct ring_ev *slot = &d->ring[(d->rhead + d->rcount) % cap];
	slot->json = buf_detach(&b, &slot->len);
	slot->ts = e->ts_ms;
	snprintf(slot->id, sizeof slot->id, "%s", e->event_id);
	if (!slot->json)
		return;
	d->rbytes += slot->len;
	d->rcount++;
}

/* The ring into out, oldest first, and the cursor past it. */
static void ring_flush(struct rd *d)
{
	const char *sep = d->follow ? "\n" : ",";
	size_t cap = (size_t)d->limit;
	for (size_t i = 0; i < d->rcount; i++) {
		struct ring_ev *e = &d->ring[(d->rhead + i) % cap];
		if (buf_append(&d->out, e->json, e->len) == 0)
			buf_append_str(&d->out, sep);
		note_sent(d, e->ts, e->id);
		free(e->json);
		e->json = NULL;
	}
	d->rhead = d->rcount = d->rbytes = 0;
}

static void query(struct rd *d);
static void rd_drain(struct server_req *r, void *arg);

static void cursor_text(const struct rd *d, char *out, size_t cap)
{
	if (d->stream[0])
		snprintf(out, cap, "s1:%s", d->have_token ? d->token : "");
	else if (d->nseen)
		snprintf(out, cap, "c1:%" PRId64 ":%s", d->last_ts, d->seen[d->nseen - 1]);
	else
		snprintf(out, cap, "c1:%" PRId64 ":", d->last_ts);
}

static void schedule(struct rd *d)
{
	ev_timer_set(&d->timer, LOGCW_FOLLOW_EVERY_S, 0.0);
	ev_timer_start(d->l->c->loop, &d->timer);
}

/* A pass ended: answer, or write to the stream and poll again later. */
static void pass_done(struct rd *d)
{
	if (d->tailing) {
		ring_flush(d);
		d->tailing = false;
	}
	if (!d->follow) {
		if (d->out.len && d->out.data[d->out.len - 1] == ',')
			d->out.len--;
		char cur[TOKEN_MAX + 64];
		cursor_text(d, cur, sizeof cur);
		struct buf b;
		buf_init(&b, d->out.len + sizeof cur + 64);
		buf_printf(&b, "{\"events\":[%.*s],\"next\":", (int)d->out.len,
			   d->out.data ? d->out.data : "");
		cJSON *cj = cJSON_CreateString(cur);
		json_to_buf(cj, &b);
		cJSON_Delete(cj);
		buf_append_byte(&b, '}');
		server_on_abort(d->r, NULL, NULL);
		server_respond(d->r, 200, "application/json", b.data ? b.data : "{}", b.len);
		buf_free(&b);
		d->r = NULL;
		rd_free(d);
		return;
	}
	if (!d->started) {
		if (server_stream_start(d->r, 200, "application/x-ndjson") < 0) {
			server_on_abort(d->r, NULL, NULL);
			server_abort(d->r);
			d->r = NULL;
			rd_free(d);
			return;
		}
		server_stream_on_drain(d->r, rd_drain, d);
		d->started = true;
	}
	if (d->l->stopping) {
		if (d->out.len)
			server_stream_write(d->r, d->out.data, d->out.len);
		server_on_abort(d->r, NULL, NULL);
		server_stream_end(d->r);
		d->r = NULL;
		rd_free(d);
		return;
	}
	if (d->out.len) {
		if (server_stream_write(d->r, d->out.data, d->out.len) < 0) {
			d->blocked = true; /* rd_drain goes on */
			return;
		}
		buf_reset(&d->out);
	} else {
		server_stream_keepalive(d->r);
	}
	schedule(d);
}

static void on_page(const struct cwlogs_read_result *res, void *arg)
{
	struct rd *d = arg;
	d->call = 0;
	d->busy = false;
	if (!d->r) {
		rd_free(d);
		return;
	}
	if (res->status != CWLOGS_OK) {
		char msg[700];
		snprintf(msg, sizeof msg, "CloudWatch Logs: %s %s", res->error_code, res->message);
		log_warn("logcw.unavailable", "app=%s error=\"%s\"", d->app, msg);
		if (!d->started) {
			refuse(d, res->status == CWLOGS_REFUSED ? 400 : 503,
			       res->status == CWLOGS_REFUSED ? "bad_request" : "unavailable", msg);
			return;
		}
		schedule(d); /* a follow stream tries again */
		return;
	}
	const char *sep = d->follow ? "\n" : ",";
	for (size_t i = 0; i < res->count; i++) {
		const struct cwlogs_read_event *e = &res->events[i];
		if (!d->stream[0] && seen_before(d, e->ts_ms, e->event_id))
			continue;
		if (d->tailing) {
			ring_push(d, e);
			continue;
		}
		if (d->forward && !d->follow && d->sent >= (size_t)d->limit)
			break;
		size_t before = d->out.len;
		if (event_json(d, e, &d->out) < 0) {
			d->out.len = before;
			if (d->out.data)
				d->out.data[before] = '\0';
			continue;
		}
		if (buf_append_str(&d->out, sep) < 0)
			break; /* out of room: the rest comes with the next poll */
		d->sent++;
		note_sent(d, e->ts_ms, e->event_id);
	}
	d->pages++;
	bool more;
	if (d->stream[0]) {
		/* GetLogEvents always names a forward token: where to poll from. */
		if (res->next_token && strlen(res->next_token) < sizeof d->token) {
			snprintf(d->token, sizeof d->token, "%s", res->next_token);
			d->have_token = true;
		}
		more = false;
	} else {
		more = res->next_token && strlen(res->next_token) < sizeof d->token &&
		       d->pages < LOGCW_PAGES_MAX &&
		       !(d->forward && !d->follow && d->sent >= (size_t)d->limit);
		if (more)
			snprintf(d->token, sizeof d->token, "%s", res->next_token);
		else
			d->have_token = false;
		d->have_token = more;
	}
	if (more) {
		query(d);
		return;
	}
	pass_done(d);
}

static void query(struct rd *d)
{
	struct logcw *l = d->l;
	if (d->busy || !d->r)
		return;
	if (d->stream[0]) {
		struct cwlogs_get g = {
			.group = d->group,
			.stream = d->stream,
			.limit = d->tailing ? d->limit : LIMIT_MAX,
			.start_from_head = d->have_token,
			.next_token = d->have_token ? d->token : NULL,
			.start_ms = d->have_token ? 0 : d->since_ms,
		};
		d->call = cwlogs_get_events(l->cw, &g, on_page, d);
	} else {
		char prefix[64];
		snprintf(prefix, sizeof prefix, "%s/", d->service);
		struct cwlogs_filter f = {
			.group = d->group,
			.stream_prefix = d->service[0] ? prefix : NULL,
			.start_ms = d->last_ts > d->since_ms ? d->last_ts : d->since_ms,
			.end_ms = d->follow ? 0 : d->end_ms,
			.limit = LIMIT_MAX,
			.next_token = d->have_token ? d->token : NULL,
		};
		d->call = cwlogs_filter_events(l->cw, &f, on_page, d);
	}
	if (!d->call) {
		if (!d->started)
			refuse(d, 503, "unavailable", "could not ask CloudWatch Logs");
		else
			schedule(d);
		return;
	}
	d->busy = true;
}

static void on_tick(struct ev_loop *loop, ev_timer *t, int revents)
{
	(void)loop;
	(void)revents;
	struct rd *d = t->data;
	ev_timer_stop(d->l->c->loop, t);
	d->pages = 0;
	query(d);
}

static void rd_drain(struct server_req *r, void *arg)
{
	struct rd *d = arg;
	if (!d->blocked)
		return;
	if (server_stream_write(r, d->out.data, d->out.len) < 0)
		return;
	d->blocked = false;
	buf_reset(&d->out);
	schedule(d);
}

static void rd_abort(struct server_req *r, void *arg)
{
	(void)r;
	struct rd *d = arg;
	d->r = NULL;
	if (!d->busy)
		rd_free(d);
}

/* ---- the app must exist (404 like every {app} route) ---- */

static int exists_tx(struct store_tx *tx, void *arg)
{
	struct rd *d = arg;
	int ex = store_app_exists(tx, d->app);
	if (ex < 0)
		return -1;
	d->missing = !ex;
	return 0;
}

static void exists_done(int rc, void *arg)
{
	struct rd *d = arg;
	d->busy = false;
	if (!d->r) {
		rd_free(d);
		return;
	}
	if (rc < 0) {
		refuse(d, 503, "unavailable", "the store is busy; retry");
		return;
	}
	if (d->missing) {
		char msg[96];
		snprintf(msg, sizeof msg, "unknown app %s", d->app);
		refuse(d, 404, "not_found", msg);
		return;
	}
	query(d);
}

static int parse_cursor(struct rd *d, const char *v)
{
	if (strncmp(v, "s1:", 3) == 0 && d->stream[0]) {
		size_t n = strlen(v + 3);
		if (n >= sizeof d->token || !n)
			return -1;
		memcpy(d->token, v + 3, n + 1);
		d->have_token = true;
		return 0;
	}
	if (strncmp(v, "c1:", 3) != 0 || d->stream[0])
		return -1;
	char *end;
	long long ts = strtoll(v + 3, &end, 10);
	if (end == v + 3 || *end != ':' || ts < 0)
		return -1;
	d->last_ts = ts;
	const char *id = end + 1;
	if (strlen(id) >= sizeof d->seen[0] || strspn(id, "0123456789abcdefABCDEF/_-") != strlen(id))
		return -1;
	d->nseen = 0;
	if (*id)
		snprintf(d->seen[d->nseen++], sizeof d->seen[0], "%s", id);
	return 0;
}

static void get_logs(struct server_req *r, void *arg)
{
	struct logcw *l = arg;
	char since[64], service[48], limit[16], follow[8], after[TOKEN_MAX + 8];
	char stream[STREAM_MAX];
	int rs = server_query(r, "since", since, sizeof since);
	int rv = server_query(r, "service", service, sizeof service);
	int rl = server_query(r, "limit", limit, sizeof limit);
	int rf = server_query(r, "follow", follow, sizeof follow);
	int ra = server_query(r, "after", after, sizeof after);
	int rt = server_query(r, "stream", stream, sizeof stream);
	struct rd *d = calloc(1, sizeof *d);
	if (d)
		d->seen = calloc(LOGCW_SEEN_MAX, sizeof *d->seen);
	if (!d || !d->seen) {
		if (d)
			free(d);
		server_respond_error(r, 503, "unavailable", "out of memory");
		return;
	}
	d->l = l;
	snprintf(d->app, sizeof d->app, "%s", server_param(r, "app"));
	snprintf(d->group, sizeof d->group, "%s%s", l->prefix, d->app);
	d->limit = LIMIT_DEFAULT;
	d->follow = rf > 0 && (strcmp(follow, "1") == 0 || strcmp(follow, "true") == 0);
	int64_t now = clock_wall_ms();
	d->since_ms = now - (d->follow ? LOGCW_FOLLOW_SINCE_MS : LOGCW_DEFAULT_SINCE_MS);
	d->end_ms = now;
	char sv[128], in[128], ct[128];
	const char *bad = NULL;
	if (rs < 0 || rv < 0 || rl < 0 || rf < 0 || ra < 0 || rt < 0)
		bad = "malformed query parameter";
	else if (rs > 0 && logsink_parse_since(since, &d->since_ms) < 0)
		bad = "since: a duration (10m, 2h), epoch milliseconds or an RFC 3339 time";
	else if (rv > 0 && !server_valid_name(service))
		bad = "service: [a-z][a-z0-9-]{0,39}";
	else if (rt > 0 && logcw_split_stream(stream, sv, sizeof sv, in, sizeof in, ct,
					      sizeof ct) < 0)
		bad = "stream: <service>/<instance>/<container>";
	else if (rt > 0 && rv > 0)
		bad = "stream and service: one or the other";
	if (!bad && rl > 0) {
		char *end;
		long n = strtol(limit, &end, 10);
		if (*end || n < 1 || n > LIMIT_MAX)
			bad = "limit: 1..10000";
		else
			d->limit = (int)n;
	}
	if (!bad && rt > 0)
		snprintf(d->stream, sizeof d->stream, "%s", stream);
	if (!bad && ra > 0 && parse_cursor(d, after) < 0)
		bad = "after: a cursor from an earlier answer's \"next\"";
	if (bad) {
		free(d->seen);
		free(d);
		server_respond_error(r, 400, "bad_request", "%s", bad);
		return;
	}
	if (rv > 0)
		snprintf(d->service, sizeof d->service, "%s", service);
	d->forward = ra > 0;
	d->tailing = !d->forward;
	if (d->tailing) {
		d->ring = calloc((size_t)d->limit, sizeof *d->ring);
		if (!d->ring) {
			free(d->seen);
			free(d);
			server_respond_error(r, 503, "unavailable", "out of memory");
			return;
		}
	}
	buf_init(&d->out, d->follow ? FOLLOW_OUT_MAX : OUT_MAX);
	ev_timer_init(&d->timer, on_tick, LOGCW_FOLLOW_EVERY_S, 0.0);
	d->timer.data = d;
	d->r = r;
	d->next = l->readers;
	if (l->readers)
		l->readers->prev = d;
	l->readers = d;
	server_on_abort(r, rd_abort, d);
	if (store_submit(l->c->store, exists_tx, exists_done, d) < 0) {
		refuse(d, 503, "unavailable", "the store is busy; retry");
		return;
	}
	d->busy = true;
}

/* ---- life cycle ---- */

struct logcw *logcw_new(struct coord *c, struct err *err)
{
	const struct config *cfg = c->cfg;
	struct logcw *l = calloc(1, sizeof *l);
	if (!l) {
		err_set(err, "logcw: out of memory");
		return NULL;
	}
	l->c = c;
	snprintf(l->prefix, sizeof l->prefix, "%s", config_str(cfg, "logs.group_prefix"));
	struct cwlogs_opts o = {
		.region = config_str(cfg, "logs.cloudwatch_region"),
		.endpoint = config_has(cfg, "logs.cloudwatch_endpoint")
				    ? config_str(cfg, "logs.cloudwatch_endpoint") : NULL,
		.timeout_ms = 15000,
		.retry_base_ms = 200,
		.retry_cap_ms = 2000,
	};
	struct aws_credentials_opts ao = {0};
	if (!(l->creds = aws_credentials_new(c->loop, c->http, &ao, err)) ||
	    !(l->cw = cwlogs_new(c->loop, c->http, l->creds, &o, err))) {
		logcw_free(l);
		return NULL;
	}
	log_info("logcw.ready", "region=%s group_prefix=%s", o.region, l->prefix);
	return l;
}

void logcw_shutdown(struct logcw *l)
{
	if (!l)
		return;
	l->stopping = true;
	struct rd *d = l->readers;
	while (d) {
		struct rd *next = d->next;
		if (d->started && d->r && !d->busy) {
			if (d->out.len)
				server_stream_write(d->r, d->out.data, d->out.len);
			server_on_abort(d->r, NULL, NULL);
			server_stream_end(d->r);
			d->r = NULL;
			rd_free(d);
		}
		d = next;
	}
}

void logcw_free(struct logcw *l)
{
	if (!l)
		return;
	while (l->readers) {
		struct rd *d = l->readers;
		if (d->r)
			server_on_abort(d->r, NULL, NULL);
		rd_free(d);
	}
	cwlogs_free(l->cw);
	aws_credentials_free(l->creds);
	free(l);
}

int logcw_register_routes(struct logcw *l, struct server *srv)
{
	struct server_route rt = {.method = "GET", .pattern = "/v1/apps/{app}/logs",
				  .auth = SERVER_AUTH_READ, .body = SERVER_BODY_NONE,
				  .fn = get_logs, .arg = l};
	return server_add_route_ex(srv, &rt);
}
