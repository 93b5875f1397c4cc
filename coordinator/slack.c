#include "slack.h"

#include <ev.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "apiop.h"
#include "buf.h"
#include "coord.h"
#include "http_client.h"
#include "json.h"
#include "log.h"
#include "rollout.h"
#include "secrets.h"
#include "server.h"
#include "store.h"

#define RECENT_MAX 256          /* ids already notified (a rollout can be noted twice) */
#define ID_MAX 72
#define TEXT_MAX 600            /* reasons and errors are cut to this in messages */
#define SLACK_ANSWER_MAX ((size_t)64 << 10)

struct msg {
	char *url;
	char *body;
	uint64_t req;            /* http_client id while in flight */
	struct slack *s;
	struct msg *next;
};

struct slack {
	struct coord *c;
	struct ev_loop *loop;
	size_t queue_max;
	int in_flight_max;
	struct backoff_policy retry;
	int64_t timeout_ms;
	struct msg *head, *tail;     /* waiting, oldest first */
	size_t queued;
	struct msg *flying;          /* in flight */
	size_t in_flight;
	struct slack_stats stats;
	ev_async wake;
	/* guarded by note_lock: rollout ids noted by the store thread */
	char (*pending)[ID_MAX];
	size_t npending;
	/* loop thread */
	char recent[RECENT_MAX][ID_MAX + 2];
	size_t recent_next;
	int ops;                     /* store operations outstanding */
	int closing;                 /* slack_free ran; the last op frees */
};

/* Guards c->slack against slack_free while the store thread notes a rollout,
 * and s->pending. */
static pthread_mutex_t note_lock = PTHREAD_MUTEX_INITIALIZER;

/* ---- formatting ---- */

void slack_format_duration(int64_t ms, char *out, size_t cap)
{
	if (ms < 0) {
		snprintf(out, cap, "?");
		return;
	}
	long long s = (long long)(ms / 1000);
	if (ms < 1000)
		snprintf(out, cap, "%lldms", (long long)ms);
	else if (ms < 10000)
		snprintf(out, cap, "%lld.%llds", s, (long long)(ms % 1000) / 100);
	else if (s < 60)
		snprintf(out, cap, "%llds", s);
	else if (s < 3600)
		snprintf(out, cap, "%lldm %02llds", s / 60, s % 60);
	else
		snprintf(out, cap, "%lldh %02lldm", s / 3600, (s / 60) % 60);
}

/* Slack's mrkdwn wants &, < and > escaped; control characters become spaces. */
static void put_escaped(struct buf *b, const char *s, size_t max)
{
	size_t n = 0;
	for (; s && *s && n < max; s++, n++) {
		switch (*s) {
		case '&':
			buf_append_str(b, "&amp;");
			break;
		case '<':
			buf_append_str(b, "&lt;");
			break;
		case '>':
			buf_append_str(b, "&gt;");
			break;
		default:
			buf_append_byte(b, (unsigned char)*s < 0x20 ? ' ' : *s);
		}
	}
	if (s && *s)
		buf_append_str(b, "...");
}

static int set(const char *s)
{
	return s && *s;
}

static void add_field(cJSON *fields, const char *name, const char *value)
{
	struct buf b;
	buf_init(&b, 4096);
	buf_printf(&b, "*%s*\n", name);
	put_escaped(&b, set(value) ? value : "-", TEXT_MAX);
	cJSON *f = cJSON_CreateObject();
	cJSON_AddStringToObject(f, "type", "mrkdwn");
	cJSON_AddStringToObject(f, "text", b.data ? b.data : "");
	cJSON_AddItemToArray(fields, f);
	buf_free(&b);
}

char *slack_message_json(const struct slack_note *n)
{
	char sha[9] = "";
	if (set(n->sha))
		snprintf(sha, sizeof sha, "%s", n->sha);
	char took[32], total[32];
	slack_format_duration(n->took_ms, took, sizeof took);
	slack_format_duration(n->total_ms, total, sizeof total);
	char release[96] = "";
	if (set(n->release) && n->release_seq > 0)
		snprintf(release, sizeof release, "%.72s (#%lld)", n->release, (long long)n->release_seq);
	else if (set(n->release))
		snprintf(release, sizeof release, "%.72s", n->release);

	/* The headline, in mrkdwn. */
	struct buf head;
	buf_init(&head, 8192);
	const char *app = set(n->app) ? n->app : "?";
	switch (n->kind) {
	case SLACK_BUILD_FAILED:
		buf_append_str(&head, ":x: *");
		put_escaped(&head, app, 64);
		buf_printf(&head, "*: build %s failed", set(n->build) ? n->build : "");
		if (set(n->reason)) {
			buf_append_str(&head, ": ");
			put_escaped(&head, n->reason, TEXT_MAX);
		}
		break;
	case SLACK_RELEASE_LIVE:
		buf_append_str(&head, ":white_check_mark: *");
		put_escaped(&head, app, 64);
		buf_printf(&head, "*: release %s is live on every instance", release);
		break;
	case SLACK_ROLLOUT_FAILED:
		buf_append_str(&head, ":warning: *");
		put_escaped(&head, app, 64);
		buf_printf(&head, "*: the rollout of release %s failed", release);
		if (set(n->reason)) {
			buf_append_str(&head, ": ");
			put_escaped(&head, n->reason, TEXT_MAX);
		}
		break;
	case SLACK_ROLLED_BACK:
		buf_append_str(&head, ":leftwards_arrow_with_hook: *");
		put_escaped(&head, app, 64);
		buf_printf(&head, "*: release %s was rolled back to %s", release,
			   set(n->back_to) ? n->back_to : "the previous release");
		if (set(n->reason)) {
			buf_append_str(&head, ": ");
			put_escaped(&head, n->reason, TEXT_MAX);
		}
		break;
	}
	/* The plain text says everything too (notifications, clients without blocks). */
	struct buf text;
	buf_init(&text, 16384);
	buf_append(&text, head.data, head.len);
	buf_printf(&text, " (commit %s by ", sha[0] ? sha : "-");
	put_escaped(&text, set(n->author) ? n->author : "-", 128);
	buf_printf(&text, ", took %s", took);
	if (n->kind == SLACK_RELEASE_LIVE && n->total_ms >= 0)
		buf_printf(&text, ", push to live %s", total);
	buf_append_str(&text, ")");

	cJSON *root = cJSON_CreateObject();
	cJSON_AddStringToObject(root, "text", text.data ? text.data : "");
	cJSON *blocks = cJSON_AddArrayToObject(root, "blocks");
	cJSON *sec = cJSON_CreateObject();
	cJSON_AddStringToObject(sec, "type", "section");
	cJSON *t = cJSON_AddObjectToObject(sec, "text");
	cJSON_AddStringToObject(t, "type", "mrkdwn");
	cJSON_AddStringToObject(t, "text", head.data ? head.data : "");
	cJSON_AddItemToArray(blocks, sec);
	cJSON *fsec = cJSON_CreateObject();
	cJSON_AddStringToObject(fsec, "type", "section");
	cJSON *fields = cJSON_AddArrayToObject(fsec, "fields");
	add_field(fields, "App", app);
	if (n->kind == SLACK_BUILD_FAILED)
		add_field(fields, "Build", n->build);
	else
		add_field(fields, "Release", release);
	add_field(fields, "Commit", sha);
	add_field(fields, "Pushed by", n->author);
	add_field(fields, n->kind == SLACK_BUILD_FAILED ? "Build took" : "Rollout took", took);
	if (n->kind == SLACK_RELEASE_LIVE && n->total_ms >= 0)
		add_field(fields, "Push to live", total);
	if (n->kind == SLACK_ROLLED_BACK)
		add_field(fields, "Serving again", n->back_to);
	if (set(n->ref))
		add_field(fields, "Ref", n->ref);
	cJSON_AddItemToArray(blocks, fsec);
	char *json = cJSON_PrintUnformatted(root);
	cJSON_Delete(root);
	buf_free(&head);
	buf_free(&text);
	return json;
}

/* ---- the queue and the sending ---- */

static void msg_free(struct msg *m)
{
	if (!m)
		return;
	free(m->url);
	free(m->body);
	free(m);
}

static void pump(struct slack *s);

static void unlink_flying(struct slack *s, struct msg *m)
{
	for (struct msg **p = &s->flying; *p; p = &(*p)->next) {
		if (*p == m) {
			*p = m->next;
			s->in_flight--;
			return;
		}
	}
}

static void sent(const struct http_response *resp, void *arg)
{
	struct msg *m = arg;
	struct slack *s = m->s;
	unlink_flying(s, m);
	if (resp->error == HTTP_OK && resp->status >= 200 && resp->status < 300) {
		s->stats.sent++;
		log_debug("slack.sent", "attempts=%d elapsed_ms=%lld", resp->attempts,
			  (long long)resp->elapsed_ms);
	} else {
		s->stats.failed++;
		char why[160];
		snprintf(why, sizeof why, "%.120s", resp->error == HTTP_OK ? resp->body : resp->error_msg);
		for (char *p = why; *p; p++)
			if ((unsigned char)*p < 0x20)
				*p = ' ';
		log_warn("slack.failed", "status=%ld attempts=%d error=\"%s\"", resp->status,
			 resp->attempts, why);
	}
	msg_free(m);
	pump(s);
}

static void pump(struct slack *s)
{
	while (s->head && s->in_flight < (size_t)s->in_flight_max && !s->closing) {
		struct msg *m = s->head;
		s->head = m->next;
		if (!s->head)
			s->tail = NULL;
		s->queued--;
		m->next = NULL;
		const char *headers[] = {"Content-Type: application/json",
					 "User-Agent: slipway-coordinator", NULL};
		struct http_request req = {
			.method = "POST",
			.url = m->url,
			.headers = headers,
			.body = m->body,
			.body_len = strlen(m->body),
			.timeout_ms = s->timeout_ms,
			.max_body = SLACK_ANSWER_MAX,
			.retry = &s->retry,
			.on_done = sent,
			.arg = m,
		};
		m->s = s;
		m->req = http_client_start(s->c->http, &req);
		if (!m->req) {
			s->stats.failed++;
			log_warn("slack.failed", "error=\"the request could not start\"");
			msg_free(m);
			continue;
		}
		m->next = s->flying;
		s->flying = m;
		s->in_flight++;
	}
}

int slack_post(struct slack *s, const char *url, const char *body)
{
	if (!s || !url || !body || s->closing)
		return -1;
	struct msg *m = calloc(1, sizeof *m);
	if (!m || !(m->url = strdup(url)) || !(m->body = strdup(body))) {
		msg_free(m);
		return -1;
	}
	log_redact_add(url);
	/* Full: the oldest waiting message goes (the newest news matters most). */
	while (s->queued >= s->queue_max && s->head) {
		struct msg *old = s->head;
		s->head = old->next;
		if (!s->head)
			s->tail = NULL;
		s->queued--;
		s->stats.dropped++;
		msg_free(old);
		log_warn("slack.dropped", "queue_max=%zu dropped=%llu", s->queue_max,
			 (unsigned long long)s->stats.dropped);
	}
	if (s->tail)
		s->tail->next = m;
	else
		s->head = m;
	s->tail = m;
	s->queued++;
	s->stats.enqueued++;
	pump(s);
	return 0;
}

void slack_get_stats(const struct slack *s, struct slack_stats *out)
{
	*out = s->stats;
	out->queued = s->queued;
	out->in_flight = s->in_flight;
	pthread_mutex_lock(&note_lock);
	out->pending_dropped = s->stats.pending_dropped;
	pthread_mutex_unlock(&note_lock);
}

/* ---- reading what to say (store operations) ---- */

struct out_msg {
	char *url;
	char *body;
};

struct note_op {
	struct slack *s;
	int is_build;
	size_t n;
	char (*ids)[ID_MAX];
	struct out_msg *out;       /* n entries; url NULL: nothing to send */
};

static void note_op_free(struct note_op *op)
{
	for (size_t i = 0; op->out && i < op->n; i++) {
		free(op->out[i].url);
		free(op->out[i].body);
	}
	free(op->out);
	free(op->ids);
	free(op);
}

/* The app's Slack URL from its sealed column; NULL when none or unreadable. */
static char *open_url(struct store_tx *tx, const uint8_t *key, const char *app, sqlite3_stmt *st,
		      int col)
{
	const void *blob = sqlite3_column_blob(st, col);
	int len = sqlite3_column_bytes(st, col);
	if (!blob || len <= 0)
		return NULL;
	struct buf plain;
	buf_init(&plain, SLACK_URL_MAX + 1);
	struct err e;
	char *url = NULL;
	if (secrets_open(key, "apps", app, "slack_url", blob, (size_t)len, &plain, &e) < 0)
		log_error("slack.url_unreadable", "app=%s error=\"%s\"", app, e.msg);
	else
		url = buf_detach(&plain, NULL);
	buf_free(&plain);
	(void)tx;
	return url;
}

/* What note i says, and where it goes: the app's URL from column col. */
static int note_out(struct store_tx *tx, struct note_op *op, size_t i, const struct slack_note *n,
		    sqlite3_stmt *st, int col)
{
	op->out[i].body = slack_message_json(n);
	op->out[i].url = open_url(tx, op->s->c->master_key, n->app, st, col);
	return 0;
}

static const char SQL_BUILD_NOTE[] =
	"SELECT b.app, b.status, b.sha, b.author, b.ref, b.error, b.created_ms, b.started_ms, "
	"b.ended_ms, a.slack_url FROM builds b JOIN apps a ON a.name = b.app WHERE b.id = ?";

static int build_note(struct store_tx *tx, struct note_op *op, size_t i)
{
	sqlite3_stmt *st;
	int rc = store_step_text(tx, SQL_BUILD_NOTE, op->ids[i], &st);
	if (rc != SQLITE_ROW)
		return rc < 0 ? -1 : 0;
	if (strcmp(store_col_text(st, 1), "failed") != 0 ||
	    sqlite3_column_type(st, 9) == SQLITE_NULL)
		return 0;
	char app[64];
	snprintf(app, sizeof app, "%s", store_col_text(st, 0));
	int64_t start = sqlite3_column_type(st, 7) != SQLITE_NULL ? sqlite3_column_int64(st, 7)
								   : sqlite3_column_int64(st, 6);
	int64_t end = sqlite3_column_type(st, 8) != SQLITE_NULL ? sqlite3_column_int64(st, 8) : -1;
	struct slack_note n = {
		.kind = SLACK_BUILD_FAILED,
		.app = app,
		.build = op->ids[i],
		.sha = store_col_text(st, 2),
		.author = store_col_text(st, 3),
		.ref = store_col_text(st, 4),
		.reason = store_col_text(st, 5),
		.took_ms = end >= start && start > 0 ? end - start : -1,
		.total_ms = -1,
	};
	return note_out(tx, op, i, &n, st, 9);
}

static const char SQL_ROLLOUT_NOTE[] =
	"SELECT r.app, r.release, r.previous_release, r.trigger, r.state, r.reason, r.started_ms, "
	"r.ended_ms, rel.seq, rel.build, b.sha, b.author, b.created_ms, b.ref, a.slack_url "
	"FROM rollouts r JOIN apps a ON a.name = r.app LEFT JOIN releases rel ON rel.id = r.release "
	"LEFT JOIN builds b ON b.id = rel.build WHERE r.id = ?";

static int rollout_note(struct store_tx *tx, struct note_op *op, size_t i)
{
	sqlite3_stmt *st;
	int rc = store_step_text(tx, SQL_ROLLOUT_NOTE, op->ids[i], &st);
	if (rc != SQLITE_ROW)
		return rc < 0 ? -1 : 0;
	if (sqlite3_column_type(st, 14) == SQLITE_NULL)
		return 0;
	const char *state = store_col_text(st, 4);
	const char *trigger = store_col_text(st, 3);
	enum slack_kind kind;
	if (strcmp(state, "succeeded") == 0) {
		if (strcmp(trigger, "revert") == 0)
			return 0; /* its rolled-back message said it already */
		kind = SLACK_RELEASE_LIVE;
	} else if (strcmp(state, "failed") == 0) {
		kind = SLACK_ROLLOUT_FAILED;
	} else if (strcmp(state, "rolled back") == 0) {
		kind = SLACK_ROLLED_BACK;
	} else {
		return 0; /* running (the transition did not commit) or superseded */
	}
	char app[64];
	snprintf(app, sizeof app, "%s", store_col_text(st, 0));
	int64_t started = sqlite3_column_int64(st, 6);
	int64_t ended = sqlite3_column_type(st, 7) != SQLITE_NULL ? sqlite3_column_int64(st, 7) : -1;
	int has_build = sqlite3_column_type(st, 12) != SQLITE_NULL;
	int64_t pushed = sqlite3_column_int64(st, 12);
	struct slack_note n = {
		.kind = kind,
		.app = app,
		.release = store_col_text(st, 1),
		.release_seq = sqlite3_column_int64(st, 8),
		.build = store_col_text(st, 9),
		.sha = store_col_text(st, 10),
		.author = store_col_text(st, 11),
		.ref = store_col_text(st, 13),
		.reason = store_col_text(st, 5),
		.back_to = store_col_text(st, 2),
		.took_ms = ended >= started ? ended - started : -1,
		.total_ms = has_build && strcmp(trigger, "build") == 0 && ended >= pushed
				    ? ended - pushed
				    : -1,
	};
	return note_out(tx, op, i, &n, st, 14);
}

static int note_tx(struct store_tx *tx, void *arg)
{
	struct note_op *op = arg;
	for (size_t i = 0; i < op->n; i++)
		if ((op->is_build ? build_note(tx, op, i) : rollout_note(tx, op, i)) < 0)
			return -1;
	return 0;
}

static void really_free(struct slack *s);

/* 1 when key was noted before; otherwise remembers it. */
static int seen_before(struct slack *s, const char *key)
{
	for (size_t i = 0; i < RECENT_MAX; i++)
		if (strcmp(s->recent[i], key) == 0)
			return 1;
	snprintf(s->recent[s->recent_next], sizeof s->recent[0], "%s", key);
	s->recent_next = (s->recent_next + 1) % RECENT_MAX;
	return 0;
}

static void note_done(int rc, void *arg)
{
	struct note_op *op = arg;
	struct slack *s = op->s;
	s->ops--;
	if (rc < 0)
		log_warn("slack.read_failed", "notes=%zu", op->n);
	for (size_t i = 0; rc == 0 && !s->closing && i < op->n; i++) {
		if (!op->out[i].url || !op->out[i].body)
			continue;
		char key[ID_MAX + 2];
		snprintf(key, sizeof key, "%c:%s", op->is_build ? 'b' : 'r', op->ids[i]);
		if (seen_before(s, key))
			continue;
		log_info("slack.notify", "%s=%s", op->is_build ? "build" : "rollout", op->ids[i]);
		slack_post(s, op->out[i].url, op->out[i].body);
	}
	note_op_free(op);
	if (s->closing && s->ops == 0)
		really_free(s);
}

/* Takes ids (n of them, freed here) into one store operation. */
static void submit_notes(struct slack *s, int is_build, char (*ids)[ID_MAX], size_t n)
{
	struct note_op *op = calloc(1, sizeof *op);
	if (op)
		op->out = calloc(n, sizeof *op->out);
	if (!op || !op->out) {
		free(op);
		free(ids);
		log_warn("slack.dropped", "reason=\"out of memory\" notes=%zu", n);
		return;
	}
	op->s = s;
	op->is_build = is_build;
	op->ids = ids;
	op->n = n;
	if (store_submit(s->c->store, note_tx, note_done, op) < 0) {
		note_op_free(op);
		log_warn("slack.dropped", "reason=\"store queue full\" notes=%zu", n);
		return;
	}
	s->ops++;
}

void slack_build_failed(struct coord *c, const char *build_id)
{
	struct slack *s = c->slack; /* set and cleared on this thread */
	if (!s || s->closing || !build_id || strlen(build_id) >= ID_MAX)
		return;
	char (*ids)[ID_MAX] = calloc(1, sizeof *ids);
	if (!ids)
		return;
	snprintf(ids[0], ID_MAX, "%s", build_id);
	submit_notes(s, 1, ids, 1);
}

void slack_rollout_ended(struct coord *c, const char *rollout_id)
{
	if (!rollout_id || strlen(rollout_id) >= ID_MAX)
		return;
	pthread_mutex_lock(&note_lock);
	struct slack *s = c->slack;
	if (s) {
		if (!s->pending)
			s->pending = calloc(SLACK_PENDING_MAX, sizeof *s->pending);
		if (s->pending && s->npending < SLACK_PENDING_MAX)
			snprintf(s->pending[s->npending++], ID_MAX, "%s", rollout_id);
		else
			s->stats.pending_dropped++;
		ev_async_send(s->loop, &s->wake);
	}
	pthread_mutex_unlock(&note_lock);
}

/* Loop thread: the noted rollouts go into one read. */
static void on_wake(struct ev_loop *loop, ev_async *w, int revents)
{
	(void)loop;
	(void)revents;
	struct slack *s = w->data;
	pthread_mutex_lock(&note_lock);
	char (*ids)[ID_MAX] = s->pending;
	size_t n = s->npending;
	s->pending = NULL;
	s->npending = 0;
	pthread_mutex_unlock(&note_lock);
	if (n == 0 || s->closing) {
		free(ids);
		return;
	}
	submit_notes(s, 0, ids, n);
}

/* ---- life ---- */

struct slack *slack_new(struct coord *c, const struct slack_opts *opts)
{
	struct slack *s = calloc(1, sizeof *s);
	if (!s)
		return NULL;
	s->c = c;
	s->loop = c->loop;
	s->queue_max = opts && opts->queue_max ? opts->queue_max : SLACK_QUEUE_MAX;
	s->in_flight_max = opts && opts->in_flight_max > 0 ? opts->in_flight_max
							   : SLACK_IN_FLIGHT_MAX;
	if (opts && (opts->retry.base_ms || opts->retry.max_attempts)) {
		s->retry = opts->retry;
	} else {
		s->retry.base_ms = SLACK_RETRY_BASE_MS;
		s->retry.cap_ms = SLACK_RETRY_CAP_MS;
		s->retry.max_attempts = SLACK_RETRY_ATTEMPTS;
	}
	s->timeout_ms = opts && opts->timeout_ms > 0 ? opts->timeout_ms : SLACK_TIMEOUT_MS;
	ev_async_init(&s->wake, on_wake);
	s->wake.data = s;
	ev_async_start(s->loop, &s->wake);
	ev_unref(s->loop); /* an idle notifier does not keep the loop running */
	pthread_mutex_lock(&note_lock);
	c->slack = s;
	pthread_mutex_unlock(&note_lock);
	return s;
}

static void really_free(struct slack *s)
{
	free(s->pending);
	free(s);
}

void slack_free(struct slack *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&note_lock);
	if (s->c->slack == s)
		s->c->slack = NULL; /* from here no store thread touches s */
	pthread_mutex_unlock(&note_lock);
	s->closing = 1;
	/* What was still waiting is lost (the queue is not durable): say so. */
	log_info("slack.stopped", "sent=%llu failed=%llu dropped=%llu lost=%zu",
		 (unsigned long long)s->stats.sent, (unsigned long long)s->stats.failed,
		 (unsigned long long)s->stats.dropped, s->queued + s->in_flight);
	ev_ref(s->loop);
	ev_async_stop(s->loop, &s->wake);
	while (s->flying) {
		struct msg *m = s->flying;
		s->flying = m->next;
		http_client_cancel(s->c->http, m->req);
		msg_free(m);
	}
	s->in_flight = 0;
	while (s->head) {
		struct msg *m = s->head;
		s->head = m->next;
		msg_free(m);
	}
	s->tail = NULL;
	s->queued = 0;
	if (s->ops == 0)
		really_free(s);
}

/* ---- PUT / GET / DELETE /v1/apps/{app}/slack ---- */

enum url_op { URL_SET, URL_GET, URL_CLEAR };

/* op->flag: the url_op; op->secret: the URL to set. */
static int url_tx(struct store_tx *tx, struct apiop *op)
{
	sqlite3_stmt *st;
	int rc = store_step_text(tx, "SELECT slack_url IS NOT NULL FROM apps WHERE name = ?",
				 op->app, &st);
	if (rc < 0)
		return -1;
	if (rc != SQLITE_ROW)
		return apiop_refuse(op, 404, "not_found", "unknown app %s", op->app);
	int configured = sqlite3_column_int(st, 0);
	sqlite3_reset(st);
	if (op->flag != URL_GET) {
		struct buf sealed;
		buf_init(&sealed, SLACK_URL_MAX + 256);
		if (op->flag == URL_SET &&
		    secrets_seal(op->c->master_key, "apps", op->app, "slack_url", op->secret,
				 strlen(op->secret), &sealed) < 0) {
			buf_free(&sealed);
			return err_set(&tx->err, "cannot seal the Slack URL");
		}
		st = store_stmt(tx, "UPDATE apps SET slack_url = ? WHERE name = ?");
		if (!st) {
			buf_free(&sealed);
			return -1;
		}
		if (op->flag == URL_SET)
			sqlite3_bind_blob(st, 1, sealed.data, (int)sealed.len, SQLITE_TRANSIENT);
		else
			sqlite3_bind_null(st, 1);
		sqlite3_bind_text(st, 2, op->app, -1, SQLITE_STATIC);
		rc = store_step(tx, st);
		buf_free(&sealed);
		if (rc != SQLITE_DONE)
			return -1;
		configured = op->flag == URL_SET;
		if (rollout_event_tx(tx, op->app, "slack.changed", "by=%s slack=%s",
				     op->who[0] ? op->who : "-", configured ? "set" : "removed") < 0)
			return -1;
	}
	op->out = cJSON_CreateObject();
	cJSON_AddStringToObject(op->out, "app", op->app);
	cJSON_AddBoolToObject(op->out, "slack", configured);
	return 0;
}

/* http(s)://host/..., printable, no spaces; Slack's are https://hooks.slack.com/services/... */
static int valid_slack_url(const char *url)
{
	size_t n = strlen(url);
	if (n == 0 || n > SLACK_URL_MAX)
		return 0;
	if (strncasecmp(url, "https://", 8) != 0 && strncasecmp(url, "http://", 7) != 0)
		return 0;
	const char *host = strstr(url, "://") + 3;
	if (*host == '/' || *host == '\0')
		return 0;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)url[i] <= 0x20 || (unsigned char)url[i] >= 0x7f)
			return 0;
	return 1;
}

static void url_route(struct server_req *r, enum url_op what)
{
	struct apiop *op = apiop_start(r, url_tx, what == URL_SET, 0);
	if (!op)
		return;
	op->flag = what;
	if (what == URL_SET) {
		static const char *const keys[] = {"url", NULL};
		struct err err;
		const char *url = NULL;
		if (json_check_keys(op->in, keys, "body", &err) < 0 ||
		    json_get_string(op->in, NULL, "url", SLACK_URL_MAX, &url, &err) < 0) {
			server_respond_error(r, 400, "bad_request", "%s", err.msg);
		} else if (!valid_slack_url(url)) {
			server_respond_error(r, 400, "bad_request",
					     "url: an incoming-webhook URL, https://hooks.slack.com/"
					     "services/... (http or https, at most %d bytes)",
					     SLACK_URL_MAX);
		} else if (!(op->secret = strdup(url))) {
			server_respond_error(r, 503, "unavailable", "out of memory");
		} else {
			log_redact_add(url);
		}
		if (!op->secret) {
			apiop_free(op);
			return;
		}
	}
	apiop_submit(op);
}

static void url_put(struct server_req *r, void *arg)
{
	(void)arg;
	url_route(r, URL_SET);
}

static void url_get(struct server_req *r, void *arg)
{
	(void)arg;
	url_route(r, URL_GET);
}

static void url_delete(struct server_req *r, void *arg)
{
	(void)arg;
	url_route(r, URL_CLEAR);
}

int slack_register_routes(struct slack *s, struct server *srv)
{
	if (server_add_route(srv, "PUT", "/v1/apps/{app}/slack", SERVER_AUTH_ADMIN, url_put, s) < 0 ||
	    server_add_route(srv, "GET", "/v1/apps/{app}/slack", SERVER_AUTH_READ, url_get, s) < 0 ||
	    server_add_route(srv, "DELETE", "/v1/apps/{app}/slack", SERVER_AUTH_ADMIN, url_delete,
			     s) < 0)
		return -1;
	return 0;
}
