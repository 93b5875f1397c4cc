#include "logsink.h"

#include <ev.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "apiop.h"
#include "clock.h"
#include "config.h"
#include "coord.h"
#include "json.h"
#include "log.h"
#include "logcw.h"
#include "server.h"
#include "store.h"

#define METRICS_MAX 1000
#define METRICS_TEXT_MAX ((size_t)256 << 10)
#define READ_LIMIT_DEFAULT 1000
#define READ_LIMIT_MAX 10000
#define FOLLOW_EVERY_S 0.5
#define FOLLOW_BATCH 1000

/* Per-app byte totals: store thread only. */
struct app_total {
	char app[48];
	int64_t bytes;
	struct app_total *next;
};

struct agent_metrics {
	char agent[72];
	char *text;          /* the last batch, as received (checked) */
	int64_t received_ms;
	struct agent_metrics *next;
};

struct follower;

struct logsink {
	struct coord *c;
	struct app_total *totals;
	struct agent_metrics *metrics;
	struct follower *followers;
	int stopping;             /* logsink_shutdown ran: follow streams end */
	atomic_int stale_totals;  /* a write failed: recount on the store thread */
};

/* ---- checking a batch ---- */

static int stream_name_ok(const char *s)
{
	return strcmp(s, "stdout") == 0 || strcmp(s, "stderr") == 0;
}

int logsink_check_batch(const cJSON *batch, size_t *events, struct err *err)
{
	const cJSON *streams;
	size_t nstreams;
	if (json_get_array(batch, NULL, "streams", LOGSINK_EVENTS_MAX, &streams, &nstreams, err) < 0)
		return -1;
	size_t total = 0, bytes = 0, i = 0;
	const cJSON *s;
	cJSON_ArrayForEach(s, streams)
	{
		char path[JSON_PATH_MAX];
		json_path_index(path, sizeof path, "streams", i++);
		const char *app, *service, *container, *release;
		const cJSON *evs;
		size_t nev;
		if (!cJSON_IsObject(s))
			return err_set(err, "%s: expected an object", path);
		if (json_get_string(s, path, "app", 40, &app, err) < 0 ||
		    json_get_string(s, path, "service", 40, &service, err) < 0 ||
		    json_get_string(s, path, "container", 128, &container, err) < 0 ||
		    json_get_string_opt(s, path, "release", 64, NULL, &release, err) < 0 ||
		    json_get_array(s, path, "events", LOGSINK_EVENTS_MAX, &evs, &nev, err) < 0)
			return -1;
		if (!server_valid_name(app) || !server_valid_name(service))
			return err_set(err, "%s: app and service match [a-z][a-z0-9-]{0,39}", path);
		int64_t last = INT64_MIN;
		size_t k = 0;
		const cJSON *e;
		cJSON_ArrayForEach(e, evs)
		{
			char ep[JSON_PATH_MAX];
			json_path_index(ep, sizeof ep, path, k++);
			const char *stream, *msg;
			int64_t ts;
			if (!cJSON_IsObject(e))
				return err_set(err, "%s: expected an object", ep);
			if (json_get_int(e, ep, "ts_ms", 0, JSON_INT_LIMIT, &ts, err) < 0 ||
			    json_get_string_opt(e, ep, "stream", 8, "stdout", &stream, err) < 0 ||
			    json_get_string(e, ep, "message", LOGSINK_BATCH_BYTES, &msg, err) < 0)
				return -1;
			if (!stream_name_ok(stream))
				return err_set(err, "%s.stream: expected stdout or stderr", ep);
			if (ts < last)
				return err_set(err, "%s: events of a stream must be in chronological "
						    "order", ep);
			last = ts;
			bytes += strlen(msg) + LOGSINK_EVENT_OVERHEAD;
			if (++total > LOGSINK_EVENTS_MAX)
				return err_set(err, "more than %d events in one batch",
					       LOGSINK_EVENTS_MAX);
			if (bytes > LOGSINK_BATCH_BYTES)
				return err_set(err, "batch over %zu bytes (messages + 26 per event)",
					       LOGSINK_BATCH_BYTES);
		}
	}
	if (events)
		*events = total;
	return 0;
}

/* ---- storing ---- */

static struct app_total *total_of(struct store_tx *tx, struct logsink *s, const char *app)
{
	for (struct app_total *t = s->totals; t; t = t->next)
		if (strcmp(t->app, app) == 0)
			return t;
	sqlite3_stmt *st = store_stmt(tx, "SELECT coalesce(sum(length(CAST(message AS BLOB)) + "
					  "?), 0) FROM logs WHERE app = ?");
	if (!st)
		return NULL;
	sqlite3_bind_int(st, 1, LOGSINK_ROW_OVERHEAD);
	sqlite3_bind_text(st, 2, app, -1, SQLITE_STATIC);
	if (store_step(tx, st) != SQLITE_ROW)
		return NULL;
	struct app_total *t = calloc(1, sizeof *t);
	if (!t) {
		err_set(&tx->err, "out of memory");
		return NULL;
	}
	snprintf(t->app, sizeof t->app, "%s", app);
	t->bytes = sqlite3_column_int64(st, 0);
	sqlite3_reset(st);
	t->next = s->totals;
	s->totals = t;
	return t;
}

int64_t logsink_app_bytes_tx(struct store_tx *tx, struct logsink *s, const char *app)
{
	struct app_total *t = total_of(tx, s, app);
	return t ? t->bytes : -1;
}

void logsink_forget_app_tx(struct logsink *s, const char *app)
{
	struct app_total **pp = &s->totals;
	while (*pp) {
		if (strcmp((*pp)->app, app) == 0) {
			struct app_total *t = *pp;
			*pp = t->next;
			free(t);
			return;
		}
		pp = &(*pp)->next;
	}
}

/* Deletes the oldest events of app until its total is at most target. */
static int trim(struct store_tx *tx, struct app_total *t, int64_t target)
{
	while (t->bytes > target) {
		sqlite3_stmt *st = store_stmt(tx, "SELECT id, length(CAST(message AS BLOB)) FROM logs "
						  "WHERE app = ? ORDER BY id LIMIT 2000");
		if (!st)
			return -1;
		sqlite3_bind_text(st, 1, t->app, -1, SQLITE_STATIC);
		int64_t last = -1, freed = 0;
		int rc;
		while ((rc = store_step(tx, st)) == SQLITE_ROW) {
			last = sqlite3_column_int64(st, 0);
			freed += sqlite3_column_int64(st, 1) + LOGSINK_ROW_OVERHEAD;
			if (t->bytes - freed <= target)
				break;
		}
		sqlite3_reset(st);
		if (rc < 0)
			return -1;
		if (last < 0) { /* nothing left: the total was off */
			t->bytes = 0;
			return 0;
		}
		st = store_stmt(tx, "DELETE FROM logs WHERE app = ? AND id <= ?");
		if (!st)
			return -1;
		sqlite3_bind_text(st, 1, t->app, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 2, last);
		if (store_step(tx, st) != SQLITE_DONE)
			return -1;
		t->bytes -= freed;
	}
	return 0;
}

int logsink_store_tx(struct store_tx *tx, struct logsink *s, const char *agent,
		     const cJSON *batch, int64_t max_per_app, size_t *accepted, size_t *rejected)
{
	*accepted = *rejected = 0;
	if (atomic_exchange(&s->stale_totals, 0)) {
		while (s->totals) {
			struct app_total *t = s->totals;
			s->totals = t->next;
			free(t);
		}
	}
	const cJSON *streams = cJSON_GetObjectItemCaseSensitive(batch, "streams");
	const cJSON *strm;
	cJSON_ArrayForEach(strm, streams)
	{
		const char *app = cJSON_GetObjectItemCaseSensitive(strm, "app")->valuestring;
		const char *service = cJSON_GetObjectItemCaseSensitive(strm, "service")->valuestring;
		const char *container =
			cJSON_GetObjectItemCaseSensitive(strm, "container")->valuestring;
		const cJSON *rel = cJSON_GetObjectItemCaseSensitive(strm, "release");
		const cJSON *evs = cJSON_GetObjectItemCaseSensitive(strm, "events");
		size_t n = (size_t)cJSON_GetArraySize(evs);
		sqlite3_stmt *st;
		int rc = store_step_text(tx, "SELECT 1 FROM apps WHERE name = ?", app, &st);
		sqlite3_reset(st);
		if (rc < 0)
			return -1;
		if (rc != SQLITE_ROW) {
			*rejected += n;
			continue;
		}
		struct app_total *t = total_of(tx, s, app);
		if (!t)
			return -1;
		const cJSON *e;
		cJSON_ArrayForEach(e, evs)
		{
			const cJSON *ts = cJSON_GetObjectItemCaseSensitive(e, "ts_ms");
			const cJSON *sn = cJSON_GetObjectItemCaseSensitive(e, "stream");
			const cJSON *msg = cJSON_GetObjectItemCaseSensitive(e, "message");
			st = store_stmt(tx, "INSERT INTO logs(app, service, container, release, agent, "
					    "ts_ms, stream, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?)");
			if (!st)
				return -1;
			sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
			sqlite3_bind_text(st, 2, service, -1, SQLITE_STATIC);
			sqlite3_bind_text(st, 3, container, -1, SQLITE_STATIC);
			if (cJSON_IsString(rel))
				sqlite3_bind_text(st, 4, rel->valuestring, -1, SQLITE_STATIC);
			else
				sqlite3_bind_null(st, 4);
			sqlite3_bind_text(st, 5, agent, -1, SQLITE_STATIC);
			sqlite3_bind_int64(st, 6, (int64_t)ts->valuedouble);
			sqlite3_bind_text(st, 7, cJSON_IsString(sn) ? sn->valuestring : "stdout", -1,
					  SQLITE_STATIC);
			sqlite3_bind_text(st, 8, msg->valuestring, -1, SQLITE_STATIC);
			if (store_step(tx, st) != SQLITE_DONE)
				return -1;
			t->bytes += (int64_t)strlen(msg->valuestring) + LOGSINK_ROW_OVERHEAD;
		}
		*accepted += n;
		if (t->bytes > max_per_app && trim(tx, t, max_per_app / 10 * 9) < 0)
			return -1;
	}
	return 0;
}

/* ---- POST logs / metrics ---- */

struct post {
	struct logsink *s;
	struct server_req *r;
	char agent[72];
	cJSON *batch;
	int64_t max;
	size_t accepted, rejected;
};

static void post_abort(struct server_req *r, void *arg)
{
	(void)r;
	((struct post *)arg)->r = NULL;
}

static int post_tx(struct store_tx *tx, void *arg)
{
	struct post *p = arg;
	return logsink_store_tx(tx, p->s, p->agent, p->batch, p->max, &p->accepted, &p->rejected);
}

static void post_done(int rc, void *arg)
{
	struct post *p = arg;
	if (rc < 0)
		atomic_store(&p->s->stale_totals, 1);
	if (p->r) {
		server_on_abort(p->r, NULL, NULL);
		if (rc < 0) {
			server_respond_error(p->r, 503, "unavailable", "the store is busy; retry");
		} else {
			cJSON *b = cJSON_CreateObject();
			cJSON_AddNumberToObject(b, "accepted", (double)p->accepted);
			cJSON_AddNumberToObject(b, "rejected", (double)p->rejected);
			server_respond_json_take(p->r, 200, b);
		}
	}
	cJSON_Delete(p->batch);
	free(p);
}

static void post_logs(struct server_req *r, void *arg)
{
	struct logsink *s = arg;
	cJSON *batch = server_json_body(r);
	if (!batch)
		return;
	struct err err;
	size_t n;
	if (logsink_check_batch(batch, &n, &err) < 0) {
		cJSON_Delete(batch);
		server_respond_error(r, 400, "bad_request", "%s", err.msg);
		return;
	}
	struct post *p = calloc(1, sizeof *p);
	if (!p) {
		cJSON_Delete(batch);
		server_respond_error(r, 503, "unavailable", "out of memory");
		return;
	}
	p->s = s;
	p->r = r;
	p->batch = batch;
	p->max = config_size(s->c->cfg, "logs.max_per_app");
	snprintf(p->agent, sizeof p->agent, "%s", r->who.agent_id);
	if (store_submit(s->c->store, post_tx, post_done, p) < 0) {
		cJSON_Delete(batch);
		free(p);
		server_respond_error(r, 503, "unavailable", "the store is busy; retry");
		return;
	}
	server_on_abort(r, post_abort, p);
}

static int check_metrics(const cJSON *body, size_t *n, struct err *err)
{
	const cJSON *arr;
	if (json_get_array(body, NULL, "metrics", METRICS_MAX, &arr, n, err) < 0)
		return -1;
	size_t i = 0;
	const cJSON *m;
	cJSON_ArrayForEach(m, arr)
	{
		char path[JSON_PATH_MAX];
		json_path_index(path, sizeof path, "metrics", i++);
		const char *name, *unit;
		int64_t ts;
		const cJSON *dims, *value;
		if (!cJSON_IsObject(m))
			return err_set(err, "%s: expected an object", path);
		if (json_get_string(m, path, "name", 255, &name, err) < 0 ||
		    json_get_string_opt(m, path, "unit", 64, "None", &unit, err) < 0 ||
		    json_get_int_opt(m, path, "ts_ms", 0, JSON_INT_LIMIT, 0, &ts, err) < 0 ||
		    json_get_object_opt(m, path, "dimensions", &dims, err) < 0)
			return -1;
		value = cJSON_GetObjectItemCaseSensitive(m, "value");
		if (!cJSON_IsNumber(value))
			return err_set(err, "%s.value: expected a number", path);
		const cJSON *d;
		cJSON_ArrayForEach(d, dims)
		{
			if (!cJSON_IsString(d))
				return err_set(err, "%s.dimensions.%s: expected a string", path,
					       d->string);
		}
	}
	return 0;
}

static struct agent_metrics *metrics_of(struct logsink *s, const char *agent, int create)
{
	for (struct agent_metrics *m = s->metrics; m; m = m->next)
		if (strcmp(m->agent, agent) == 0)
			return m;
	if (!create)
		return NULL;
	struct agent_metrics *m = calloc(1, sizeof *m);
	if (!m)
		return NULL;
	snprintf(m->agent, sizeof m->agent, "%s", agent);
	m->next = s->metrics;
	s->metrics = m;
	return m;
}

static void post_metrics(struct server_req *r, void *arg)
{
	struct logsink *s = arg;
	cJSON *body = server_json_body(r);
	if (!body)
		return;
	struct err err;
	size_t n;
	if (check_metrics(body, &n, &err) < 0) {
		cJSON_Delete(body);
		server_respond_error(r, 400, "bad_request", "%s", err.msg);
		return;
	}
	char *text = json_print(cJSON_GetObjectItemCaseSensitive(body, "metrics"), METRICS_TEXT_MAX,
				&err);
	cJSON_Delete(body);
	struct agent_metrics *m = text ? metrics_of(s, r->who.agent_id, 1) : NULL;
	if (!m) {
		free(text);
		server_respond_error(r, 413, "too_large", "metrics batch over %zu bytes",
				     METRICS_TEXT_MAX);
		return;
	}
	free(m->text);
	m->text = text;
	m->received_ms = clock_wall_ms();
	cJSON *b = cJSON_CreateObject();
	cJSON_AddNumberToObject(b, "accepted", (double)n);
	server_respond_json_take(r, 200, b);
}

static void get_metrics(struct server_req *r, void *arg)
{
	struct logsink *s = arg;
	struct agent_metrics *m = metrics_of(s, server_param(r, "agent"), 0);
	cJSON *b = cJSON_CreateObject();
	cJSON_AddStringToObject(b, "agent", server_param(r, "agent"));
	cJSON_AddNumberToObject(b, "received_ms", m ? (double)m->received_ms : 0);
	cJSON_AddItemToObject(b, "metrics", cJSON_CreateRaw(m && m->text ? m->text : "[]"));
	server_respond_json_take(r, 200, b);
}

/* ---- reading ---- */

struct follower {
	struct logsink *s;
	struct server_req *r;    /* NULL once gone */
	char app[48];
	char service[48];        /* "" for every service */
	int64_t since_ms;
	int64_t after_id;        /* last event sent */
	int limit;
	int tail;                /* the first query takes the newest `limit` events */
	int follow;
	int started;             /* the first query answered (follow: the stream is open) */
	int missing;             /* the first query found no such app */
	int busy;                /* a query is running */
	int blocked;             /* waiting for the client to drain */
	ev_timer timer;
	struct buf out;          /* the answer being built */
	struct follower *prev, *next;
};

static void follower_unlink(struct follower *f)
{
	if (f->prev)
		f->prev->next = f->next;
	else if (f->s->followers == f)
		f->s->followers = f->next;
	if (f->next)
		f->next->prev = f->prev;
	f->prev = f->next = NULL;
}

static void follower_free(struct follower *f)
{
	ev_timer_stop(f->s->c->loop, &f->timer);
	follower_unlink(f);
	buf_free(&f->out);
	free(f);
}

static void event_json(struct buf *out, sqlite3_stmt *st)
{
	static const struct apiop_field fields[] = {
		{"id", APIOP_INT}, {"ts_ms", APIOP_INT}, {"app", APIOP_TEXT},
		{"service", APIOP_TEXT}, {"container", APIOP_TEXT},
		{"release", APIOP_TEXT_OR_NULL}, {"agent", APIOP_TEXT}, {"stream", APIOP_TEXT},
		{"message", APIOP_TEXT},
	};
	cJSON *o = cJSON_CreateObject();
	apiop_add_fields(o, st, 0, APIOP_FIELDS(fields));
	json_to_buf(o, out);
	cJSON_Delete(o);
}

/* Appends events as JSON objects, each followed by sep, to f->out. */
static int read_tx(struct store_tx *tx, void *arg)
{
	struct follower *f = arg;
	const char *sep = f->follow ? "\n" : ",";
	sqlite3_stmt *st;
	if (!f->started) {
		/* An unknown app is 404, like every other {app} route. */
		int ex = store_app_exists(tx, f->app);
		if (ex < 0)
			return -1;
		if (!ex) {
			f->missing = 1;
			return 0;
		}
	}
	if (f->tail) {
		/* The newest `limit` events, oldest first. */
		st = store_stmt(tx, "SELECT * FROM (SELECT id, ts_ms, app, service, container, "
				    "release, agent, stream, message FROM logs WHERE app = ?1 AND "
				    "ts_ms >= ?2 AND (?3 = '' OR service = ?3) ORDER BY id DESC "
				    "LIMIT ?4) ORDER BY id");
	} else {
		st = store_stmt(tx, "SELECT id, ts_ms, app, service, container, release, agent, "
				    "stream, message FROM logs WHERE app = ?1 AND ts_ms >= ?2 AND "
				    "(?3 = '' OR service = ?3) AND id > ?5 ORDER BY id LIMIT ?4");
	}
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, f->app, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, f->since_ms);
	sqlite3_bind_text(st, 3, f->service, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 4, f->limit);
	if (!f->tail)
		sqlite3_bind_int64(st, 5, f->after_id);
	int rc;
	while ((rc = store_step(tx, st)) == SQLITE_ROW) {
		size_t before = f->out.len;
		event_json(&f->out, st);
		if (f->out.len == before || buf_append_str(&f->out, sep) < 0)
			break; /* out of room: the rest comes next time */
		f->after_id = sqlite3_column_int64(st, 0);
	}
	sqlite3_reset(st);
	return rc < 0 ? -1 : 0;
}

static void follow_query(struct follower *f);

static void follow_tick(struct ev_loop *loop, ev_timer *t, int revents)
{
	(void)loop;
	(void)revents;
	struct follower *f = t->data;
	ev_timer_stop(f->s->c->loop, t);
	follow_query(f);
}

static void follow_drain(struct server_req *r, void *arg);

/* The answer of a request that never started streaming, then the end. */
static void read_refused(struct follower *f, int status, const char *code, const char *msg)
{
	server_on_abort(f->r, NULL, NULL);
	server_respond_error(f->r, status, code, "%s", msg);
	f->r = NULL;
	follower_free(f);
}

static void read_done(int rc, void *arg)
{
	struct follower *f = arg;
	f->busy = 0;
	f->tail = 0;
	if (!f->r) {
		follower_free(f);
		return;
	}
	if (f->missing) {
		char msg[96];
		snprintf(msg, sizeof msg, "unknown app %s", f->app);
		read_refused(f, 404, "not_found", msg);
		return;
	}
	if (rc < 0 && !f->started) {
		read_refused(f, 503, "unavailable", "the store is busy; retry");
		return;
	}
	if (!f->follow) {
		if (f->out.len && f->out.data[f->out.len - 1] == ',')
			f->out.len--;
		struct buf b;
		buf_init(&b, f->out.len + 64);
		buf_printf(&b, "{\"events\":[%.*s],\"next\":%lld}", (int)f->out.len,
			   f->out.data ? f->out.data : "", (long long)f->after_id);
		server_on_abort(f->r, NULL, NULL);
		server_respond(f->r, 200, "application/json", b.data, b.len);
		buf_free(&b);
		f->r = NULL;
		follower_free(f);
		return;
	}
	if (!f->started) {
		if (server_stream_start(f->r, 200, "application/x-ndjson") < 0) {
			server_on_abort(f->r, NULL, NULL);
			server_abort(f->r);
			f->r = NULL;
			follower_free(f);
			return;
		}
		server_stream_on_drain(f->r, follow_drain, f);
	}
	f->started = 1;
	if (rc < 0 || f->s->stopping) {
		if (rc == 0 && f->out.len)
			server_stream_write(f->r, f->out.data, f->out.len);
		server_on_abort(f->r, NULL, NULL);
		server_stream_end(f->r); /* a complete answer: the client can resume */
		f->r = NULL;
		follower_free(f);
		return;
	}
	if (f->out.len) {
		if (server_stream_write(f->r, f->out.data, f->out.len) < 0) {
			f->blocked = 1; /* the drain callback resumes us */
			return;
		}
		buf_reset(&f->out);
	} else {
		server_stream_keepalive(f->r); /* refused: the backlog ends it anyway */
	}
	ev_timer_set(&f->timer, FOLLOW_EVERY_S, 0.0);
	ev_timer_start(f->s->c->loop, &f->timer);
}

static void follow_query(struct follower *f)
{
	if (f->busy || !f->r)
		return;
	if (store_submit(f->s->c->store, read_tx, read_done, f) < 0) {
		ev_timer_set(&f->timer, FOLLOW_EVERY_S, 0.0);
		ev_timer_start(f->s->c->loop, &f->timer);
		return;
	}
	f->busy = 1;
}

static void follow_drain(struct server_req *r, void *arg)
{
	struct follower *f = arg;
	if (!f->blocked)
		return;
	if (server_stream_write(r, f->out.data, f->out.len) < 0)
		return;
	f->blocked = 0;
	buf_reset(&f->out);
	ev_timer_set(&f->timer, FOLLOW_EVERY_S, 0.0);
	ev_timer_start(f->s->c->loop, &f->timer);
}

static void follow_abort(struct server_req *r, void *arg)
{
	(void)r;
	struct follower *f = arg;
	f->r = NULL;
	if (!f->busy)
		follower_free(f);
}

/* "10m", "2h", "30s", "500ms" ago; epoch milliseconds; or RFC 3339. */
int logsink_parse_since(const char *v, int64_t *out)
{
	char *end = NULL;
	long long n = strtoll(v, &end, 10);
	if (end != v && n >= 0) {
		int64_t now = clock_wall_ms();
		if (!*end && n > 100000000000LL) { /* an absolute time in ms */
			*out = n;
			return 0;
		}
		int64_t unit = strcmp(end, "ms") == 0  ? 1
			       : strcmp(end, "s") == 0 ? 1000
			       : strcmp(end, "m") == 0 ? 60000
			       : strcmp(end, "h") == 0 ? 3600000
			       : strcmp(end, "d") == 0 ? 86400000
			       : !*end		       ? 1000
						       : 0;
		if (unit) {
			*out = now - n * unit;
			return 0;
		}
	}
	return clock_parse_rfc3339(v, out);
}

static void get_logs(struct server_req *r, void *arg)
{
	struct logsink *s = arg;
	char since[64], service[48], limit[16], follow[8], after[24];
	int rs = server_query(r, "since", since, sizeof since);
	int rv = server_query(r, "service", service, sizeof service);
	int rl = server_query(r, "limit", limit, sizeof limit);
	int rf = server_query(r, "follow", follow, sizeof follow);
	int ra = server_query(r, "after", after, sizeof after);
	struct follower *f = calloc(1, sizeof *f);
	if (!f) {
		server_respond_error(r, 503, "unavailable", "out of memory");
		return;
	}
	f->s = s;
	snprintf(f->app, sizeof f->app, "%s", server_param(r, "app"));
	f->limit = READ_LIMIT_DEFAULT;
	f->tail = 1;
	const char *bad = NULL;
	if (rs < 0 || rv < 0 || rl < 0 || rf < 0 || ra < 0)
		bad = "malformed query parameter";
	else if (rs > 0 && logsink_parse_since(since, &f->since_ms) < 0)
		bad = "since: a duration (10m, 2h), epoch milliseconds or an RFC 3339 time";
	else if (rv > 0 && !server_valid_name(service))
		bad = "service: [a-z][a-z0-9-]{0,39}";
	if (!bad && rl > 0) {
		char *end;
		long n = strtol(limit, &end, 10);
		if (*end || n < 1 || n > READ_LIMIT_MAX)
			bad = "limit: 1..10000";
		else
			f->limit = (int)n;
	}
	if (!bad && ra > 0) {
		char *end;
		long long n = strtoll(after, &end, 10);
		if (*end || n < 0)
			bad = "after: an event id";
		f->after_id = n;
		f->tail = 0;
	}
	if (bad) {
		free(f);
		server_respond_error(r, 400, "bad_request", "%s", bad);
		return;
	}
	if (rv > 0)
		snprintf(f->service, sizeof f->service, "%s", service);
	f->follow = rf > 0 && (strcmp(follow, "1") == 0 || strcmp(follow, "true") == 0);
	buf_init(&f->out, f->follow ? (size_t)4 << 20 : (size_t)64 << 20);
	ev_timer_init(&f->timer, follow_tick, FOLLOW_EVERY_S, 0.0);
	f->timer.data = f;
	f->r = r;
	f->next = s->followers;
	if (s->followers)
		s->followers->prev = f;
	s->followers = f;
	if (f->follow && !f->tail)
		f->limit = FOLLOW_BATCH;
	/* The stream starts once the first query found the app (404 otherwise). */
	server_on_abort(r, follow_abort, f);
	follow_query(f);
	if (!f->busy)
		read_refused(f, 503, "unavailable", "the store is busy; retry");
}

/* ---- life cycle ---- */

void logsink_shutdown(struct logsink *s)
{
	if (!s)
		return;
	s->stopping = 1; /* a follower whose query is in flight ends when it returns */
	struct follower *f = s->followers;
	while (f) {
		struct follower *next = f->next;
		if (f->r && f->follow && f->started && !f->busy) {
			server_on_abort(f->r, NULL, NULL);
			server_stream_end(f->r); /* a complete answer: the client can resume */
			f->r = NULL;
		}
		if (!f->r && !f->busy)
			follower_free(f);
		f = next;
	}
}

struct logsink *logsink_new(struct coord *c)
{
	struct logsink *s = calloc(1, sizeof *s);
	if (s) {
		s->c = c;
		atomic_init(&s->stale_totals, 0);
	}
	return s;
}

void logsink_free(struct logsink *s)
{
	if (!s)
		return;
	/* Followers end with their connections (server_free runs first). */
	while (s->followers) {
		struct follower *f = s->followers;
		if (f->busy) { /* its read_done frees it once the store delivers */
			follower_unlink(f);
			f->r = NULL;
			continue;
		}
		follower_free(f);
	}
	while (s->totals) {
		struct app_total *t = s->totals;
		s->totals = t->next;
		free(t);
	}
	while (s->metrics) {
		struct agent_metrics *m = s->metrics;
		s->metrics = m->next;
		free(m->text);
		free(m);
	}
	free(s);
}

int logsink_register_routes(struct logsink *s, struct server *srv)
{
	struct server_route routes[] = {
		{.method = "POST", .pattern = "/v1/agents/{agent_id}/logs", .auth = SERVER_AUTH_AGENT,
		 .body = SERVER_BODY_LOGS, .fn = post_logs, .arg = s},
		{.method = "POST", .pattern = "/v1/agents/{agent_id}/metrics",
		 .auth = SERVER_AUTH_AGENT, .fn = post_metrics, .arg = s},
		{.method = "GET", .pattern = "/v1/agents/{agent}/metrics", .auth = SERVER_AUTH_READ,
		 .body = SERVER_BODY_NONE, .fn = get_metrics, .arg = s},
		{.method = "GET", .pattern = "/v1/apps/{app}/logs", .auth = SERVER_AUTH_READ,
		 .body = SERVER_BODY_NONE, .fn = get_logs, .arg = s},
	};
	size_t n = sizeof routes / sizeof routes[0];
	/* With CloudWatch configured, coordinator/logcw.c answers `slipway logs`. */
	if (logcw_enabled(s->c->cfg))
		n--;
	for (size_t i = 0; i < n; i++)
		if (server_add_route_ex(srv, &routes[i]) < 0)
			return -1;
	return 0;
}
