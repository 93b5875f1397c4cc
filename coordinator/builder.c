#include "builder.h"

#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "buf.h"
#include "clock.h"
#include "config.h"
#include "context.h"
#include "coord.h"
#include "crypto.h"
#include "docker.h"
#include "ecr.h"
#include "ecrauth.h"
#include "json.h"
#include "log.h"
#include "manifest.h"
#include "proc.h"
#include "queue.h"
#include "releases.h"
#include "secrets.h"
#include "slack.h"
#include "store.h"
#include "worker.h"

extern char **environ;

#define SCAN_PAGE 100
#define SCAN_PAGES_MAX 20
#define APP_MAX 64
#define ID_MAX 32
#define SHA_MAX 65
#define GIT_OUTPUT_TAIL ((size_t)16 << 10)
#define KEY_MAX ((size_t)64 << 10)
#define DIR_PATH (PATH_MAX + 256)   /* workspace, mirror: a data dir path + a name */
#define FILE_PATH (PATH_MAX + 512)  /* a file in the workspace */

enum job_kind { JOB_DELIVERY, JOB_BUILD };
enum inflight { IF_NONE, IF_PROC, IF_DOCKER, IF_WAIT, IF_LOGIN };

struct chunk_mark {
	int64_t seq;
	size_t len;
};

struct job {
	struct builder *b;
	struct job *next;
	enum job_kind kind;
	int64_t delivery_id;
	char build_id[ID_MAX];      /* "" until the builds row exists */
	bool build_row;
	char app[APP_MAX];
	/* what to build (loaded by the scan) */
	char source[16];            /* push, tag, pipeline, upload */
	char ref[256];
	char sha[SHA_MAX];
	char author[128];
	char description[700];
	char url[1024];             /* what git fetches from */
	char *context_path;         /* upload: the tar.gz */
	struct buf key;             /* the opened deploy key (zeroed when freed) */
	char *known_hosts;          /* pinned host keys, NULL the first time */
	char last_sha[SHA_MAX];     /* the last complete build of this ref */
	char last_build[ID_MAX];
	cJSON *prev_images;         /* the app's last complete build's images */
	/* workspace */
	char ws[DIR_PATH];
	char mirror[DIR_PATH];
	char src[FILE_PATH];
	char key_file[FILE_PATH];
	char hosts_file[FILE_PATH];
	bool pin_hosts;             /* first contact: store what ssh learnt */
	bool mirror_exists;
	bool tried_ref;             /* fetched the ref after a fetch by id was refused */
	char *learnt_hosts;
	/* progress */
	enum inflight inflight;
	struct proc *proc;
	void (*proc_next)(struct job *j, int status, const char *tail);
	bool quiet;                 /* a probe: neither its command nor its output is logged */
	uint64_t docker_call;
	uint64_t login_call;        /* ECR: ecrauth_prepare in flight */
	bool push_retried;          /* ECR: a refused push was retried with a new token */
	struct context_job *ctx_job;
	cJSON *manifest;
	cJSON *images;
	const cJSON *service;       /* the service being built */
	char image_ref[600];        /* its tag */
	int64_t started_mono;
	ev_timer timeout;
	char *failing;              /* set: the job fails with this reason */
	bool ended;
	bool orphan;                /* the builder is gone: free on the next callback */
	/* log */
	struct buf pending;         /* timestamped lines not yet in the store */
	struct buf partial;         /* a line still being received */
	int64_t log_seq;
	uint64_t log_stored;
	struct chunk_mark *marks;
	size_t marks_head, marks_len, marks_cap;
	ev_timer flush;
};

struct builder {
	struct coord *c;
	int concurrency;
	int64_t timeout_ms;
	size_t log_max;
	uint64_t context_max, context_files_max;
	char registry[256];
	char *registry_auth;        /* {"username","password","serveraddress"} or NULL */
	char *registry_config;      /* {"<host>": {...}} or NULL */
	struct ecrauth *ecr;        /* registry.kind = ecr: logins and repositories */
	char prefix[129];           /* registry.repository_prefix */
	char ssh[PATH_MAX];
	char git_dir[PATH_MAX + 8];
	char work_dir[PATH_MAX + 8];
	struct job *jobs;
	size_t running;
	bool scanning, rescan;
	bool freed;                 /* builder_free ran while a scan was in flight */
};

static void job_fail(struct job *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void job_finish_failed(struct job *j);
static void timeout_cb(struct ev_loop *loop, ev_timer *w, int revents);

/* ---- small helpers ------------------------------------------------------- */

static void copy(char *out, size_t cap, const char *s)
{
	size_t n = s ? strnlen(s, cap - 1) : 0;
	if (n)
		memcpy(out, s, n);
	out[n] = '\0';
}

/* mkdir -p with mode for the missing parts. */
static int mkdirs(const char *path, mode_t mode, struct err *err)
{
	char tmp[PATH_MAX];
	if (strlen(path) >= sizeof tmp)
		return err_set(err, "%s: path too long", path);
	copy(tmp, sizeof tmp, path);
	for (char *p = tmp + 1;; p++) {
		if (*p == '/' || *p == '\0') {
			char c = *p;
			*p = '\0';
			if (mkdir(tmp, mode) < 0 && errno != EEXIST)
				return err_set(err, "mkdir %s: %s", tmp, strerror(errno));
			*p = c;
			if (!c)
				break;
		}
	}
	return 0;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)ftw;
	if (flag == FTW_DP)
		rmdir(path);
	else
		unlink(path);
	return 0;
}

/* rm -rf; blocking (worker threads, start-up). */
static void remove_tree(const char *path)
{
	nftw(path, rm_entry, 32, FTW_DEPTH | FTW_PHYS);
}

/* Appends s single-quoted for sh. */
static int shell_quote(struct buf *b, const char *s)
{
	if (buf_append_byte(b, '\'') < 0)
		return -1;
	for (; *s; s++) {
		if (*s == '\'') {
			if (buf_append_str(b, "'\\''") < 0)
				return -1;
		} else if (buf_append_byte(b, *s) < 0) {
			return -1;
		}
	}
	return buf_append_byte(b, '\'');
}

/* ---- the build log ------------------------------------------------------- */

static void log_flush(struct job *j);

/* Keeps the end of pending within log_max (output before the builds row
 * exists, or faster than the store takes it). */
static void pending_trim(struct job *j)
{
	size_t max = j->b->log_max;
	if (j->pending.len <= max)
		return;
	size_t drop = j->pending.len - max;
	const char *nl = memchr(j->pending.data + drop, '\n', j->pending.len - drop);
	if (nl && (size_t)(nl - j->pending.data) + 1 < j->pending.len)
		drop = (size_t)(nl - j->pending.data) + 1;
	buf_consume(&j->pending, drop);
}

/* One complete line (without its newline). */
static void log_line(struct job *j, const char *text, size_t len)
{
	char ts[25];
	clock_format_rfc3339(clock_wall_ms(), ts);
	if (len > BUILDER_LOG_CHUNK_MAX / 2)
		len = BUILDER_LOG_CHUNK_MAX / 2; /* one absurd line must not flood the log */
	if (buf_printf(&j->pending, "%s ", ts) < 0 || buf_append(&j->pending, text, len) < 0 ||
	    buf_append_byte(&j->pending, '\n') < 0) {
		pending_trim(j);
		return;
	}
	pending_trim(j);
	if (j->build_row && j->pending.len >= BUILDER_LOG_CHUNK_MAX)
		log_flush(j);
	else if (j->build_row && !ev_is_active(&j->flush))
		ev_timer_start(j->b->c->loop, &j->flush);
}

/* Output as it arrives: split into lines; '\r' ends a line too (progress). */
static void log_text(struct job *j, const char *text, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		char ch = text[i];
		if (ch == '\n' || ch == '\r') {
			if (j->partial.len)
				log_line(j, j->partial.data, j->partial.len);
			buf_reset(&j->partial);
		} else if (buf_append_byte(&j->partial, ch) < 0) {
			log_line(j, j->partial.data, j->partial.len);
			buf_reset(&j->partial);
			buf_append_byte(&j->partial, ch);
		}
	}
}

__attribute__((format(printf, 2, 3))) static void job_log(struct job *j, const char *fmt, ...)
{
	char line[2048];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (j->partial.len) {
		log_line(j, j->partial.data, j->partial.len);
		buf_reset(&j->partial);
	}
	log_line(j, line, strlen(line));
}

struct log_op {
	char build[ID_MAX];
	int64_t seq;
	int64_t delete_below;       /* > 0: chunks below this seq go */
	char *data;
	size_t len;
};

static const char SQL_LOG_INSERT[] = "INSERT INTO build_logs(build, seq, chunk) VALUES (?, ?, ?)";
static const char SQL_LOG_TRIM[] = "DELETE FROM build_logs WHERE build = ? AND seq < ?";

static int log_op_fn(struct store_tx *tx, void *arg)
{
	struct log_op *op = arg;
	sqlite3_stmt *st = store_stmt(tx, SQL_LOG_INSERT);
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, op->build, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, op->seq);
	sqlite3_bind_blob(st, 3, op->data, (int)op->len, SQLITE_STATIC);
	if (store_step(tx, st) != SQLITE_DONE)
		return -1;
	if (op->delete_below > 0) {
		st = store_stmt(tx, SQL_LOG_TRIM);
		if (!st)
			return -1;
		sqlite3_bind_text(st, 1, op->build, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 2, op->delete_below);
		if (store_step(tx, st) != SQLITE_DONE)
			return -1;
	}
	return 0;
}

static void log_op_done(int rc, void *arg)
{
	struct log_op *op = arg;
	if (rc < 0)
		log_warn("build.log_lost", "build=%s seq=%" PRId64 " bytes=%zu", op->build, op->seq,
			 op->len);
	free(op->data);
	free(op);
}

/* Hands what is pending to the store as one chunk. */
static void log_flush(struct job *j)
{
	ev_timer_stop(j->b->c->loop, &j->flush);
	if (!j->build_row || j->pending.len == 0)
		return;
	struct log_op *op = calloc(1, sizeof *op);
	size_t len = 0;
	char *data = op ? buf_detach(&j->pending, &len) : NULL;
	if (!data) {
		free(op);
		buf_reset(&j->pending);
		return;
	}
	copy(op->build, sizeof op->build, j->build_id);
	op->seq = ++j->log_seq;
	op->data = data;
	op->len = len;
	/* Remember the chunk; drop the oldest ones past log_max. */
	if (j->marks_len == j->marks_cap) {
		size_t cap = j->marks_cap ? j->marks_cap * 2 : 64;
		struct chunk_mark *m = malloc(cap * sizeof *m);
		if (m) {
			for (size_t i = 0; i < j->marks_len; i++)
				m[i] = j->marks[(j->marks_head + i) % j->marks_cap];
			free(j->marks);
			j->marks = m;
			j->marks_cap = cap;
			j->marks_head = 0;
		}
	}
	if (j->marks_len < j->marks_cap) {
		j->marks[(j->marks_head + j->marks_len) % j->marks_cap] =
			(struct chunk_mark){.seq = op->seq, .len = len};
		j->marks_len++;
	}
	j->log_stored += len;
	while (j->log_stored > j->b->log_max && j->marks_len > 1) {
		struct chunk_mark *m = &j->marks[j->marks_head];
		j->log_stored -= m->len;
		op->delete_below = m->seq + 1;
		j->marks_head = (j->marks_head + 1) % j->marks_cap;
		j->marks_len--;
	}
	if (store_submit(j->b->c->store, log_op_fn, log_op_done, op) < 0)
		log_op_done(-1, op);
}

static void flush_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	log_flush(w->data);
}

/* ---- finding work --------------------------------------------------------- */

struct scan {
	struct builder *b;
	char (*busy)[APP_MAX];      /* apps that have a job */
	size_t nbusy;
	struct job *job;            /* filled when work was found */
	bool found, again;
	int64_t now_ms;
};

static const char SQL_NEXT_DELIVERY[] =
	"SELECT id, app, received_ms FROM deliveries WHERE status = 'received' AND id > ? "
	"ORDER BY id LIMIT 100";
static const char SQL_NEXT_BUILD[] =
	"SELECT id, app, created_ms FROM builds WHERE status = 'created' AND created_ms >= ? "
	"ORDER BY created_ms, id LIMIT 100";
static const char SQL_CLAIM_BUILD[] =
	"UPDATE builds SET status = 'running', started_ms = ? WHERE id = ? AND status = 'created'";
static const char SQL_APP[] =
	"SELECT repo_url, deploy_key_private, known_hosts FROM apps WHERE name = ?";
static const char SQL_DELIVERY_SUMMARY[] = "SELECT summary FROM deliveries WHERE id = ?";
static const char SQL_DELIVERY_GONE[] =
	"UPDATE deliveries SET status = 'failed', note = ? WHERE id = ? AND status = 'received'";
static const char SQL_BUILD_ROW[] =
	"SELECT source, ref, sha, author, description, context_path FROM builds WHERE id = ?";
static const char SQL_LAST_OF_REF[] =
	"SELECT id, sha FROM builds WHERE app = ? AND status = 'complete' AND ref = ? "
	"AND source IN ('push', 'pipeline') AND sha IS NOT NULL ORDER BY ended_ms DESC LIMIT 1";
static const char SQL_LAST_TAG[] =
	"SELECT id, sha FROM builds WHERE app = ? AND status = 'complete' AND source = 'tag' "
	"AND sha IS NOT NULL ORDER BY ended_ms DESC LIMIT 1";
static const char SQL_PREV_IMAGES[] =
	"SELECT images FROM builds WHERE app = ? AND status = 'complete' AND images IS NOT NULL "
	"ORDER BY ended_ms DESC LIMIT 1";
static const char SQL_BUILD_FAIL_EARLY[] =
	"UPDATE builds SET status = 'failed', error = ?, ended_ms = ? WHERE id = ?";

static bool is_busy(const struct scan *s, const char *app)
{
	for (size_t i = 0; i < s->nbusy; i++)
		if (!strcmp(s->busy[i], app))
			return true;
	return false;
}

/* Loads the app's row: clone URL, opened deploy key, pinned host keys. -1 with
 * why in tx->err (which then fails the job, not the operation). */
static int load_app(struct store_tx *tx, struct scan *s, struct job *j)
{
	sqlite3_stmt *st;
	int rc = store_step_text(tx, SQL_APP, j->app, &st);
	if (rc != SQLITE_ROW)
		return rc < 0 ? -1 : err_set(&tx->err, "app %s does not exist", j->app);
	if (*store_col_text(st, 0))
		copy(j->url, sizeof j->url, store_col_text(st, 0));
	const void *sealed = sqlite3_column_blob(st, 1);
	int sealed_len = sqlite3_column_bytes(st, 1);
	if (sqlite3_column_type(st, 2) != SQLITE_NULL && *store_col_text(st, 2))
		j->known_hosts = strdup(store_col_text(st, 2));
	if (sealed && sealed_len > 0 &&
	    secrets_open(s->b->c->master_key, "apps", j->app, "deploy_key_private", sealed,
			 (size_t)sealed_len, &j->key, &tx->err) < 0)
		return err_prefix(&tx->err, "the app's deploy key does not open");
	return 0;
}

static void load_history(struct store_tx *tx, struct job *j)
{
	sqlite3_stmt *st;
	if (strcmp(j->source, "tag") == 0) {
		st = store_stmt(tx, SQL_LAST_TAG);
		if (st)
			sqlite3_bind_text(st, 1, j->app, -1, SQLITE_STATIC);
	} else {
		st = store_stmt(tx, SQL_LAST_OF_REF);
		if (st) {
			sqlite3_bind_text(st, 1, j->app, -1, SQLITE_STATIC);
			sqlite3_bind_text(st, 2, j->ref, -1, SQLITE_STATIC);
		}
	}
	if (st && store_step(tx, st) == SQLITE_ROW) {
		copy(j->last_build, sizeof j->last_build, store_col_text(st, 0));
		copy(j->last_sha, sizeof j->last_sha, store_col_text(st, 1));
	}
	st = store_stmt(tx, SQL_PREV_IMAGES);
	if (st) {
		sqlite3_bind_text(st, 1, j->app, -1, SQLITE_STATIC);
		if (store_step(tx, st) == SQLITE_ROW)
			j->prev_images = cJSON_Parse(store_col_text(st, 0));
	}
}

/* A delivery: its summary says what to fetch. 0 when loaded, 1 when it
 * turned out unusable (marked failed here), -1 on a store error. */
static int take_delivery(struct store_tx *tx, struct scan *s, int64_t id, const char *app)
{
	struct job *j = s->job;
	j->kind = JOB_DELIVERY;
	j->delivery_id = id;
	copy(j->app, sizeof j->app, app);
	sqlite3_stmt *st = store_stmt(tx, SQL_DELIVERY_SUMMARY);
	if (!st)
		return -1;
	sqlite3_bind_int64(st, 1, id);
	if (store_step(tx, st) != SQLITE_ROW)
		return -1;
	cJSON *sum = cJSON_Parse(store_col_text(st, 0));
	const char *kind = "", *ref = "", *sha = "", *author = "", *project = "", *url = "";
	if (sum) {
		json_get_string_opt(sum, NULL, "kind", 15, "", &kind, NULL);
		json_get_string_opt(sum, NULL, "ref", 255, "", &ref, NULL);
		json_get_string_opt(sum, NULL, "sha", SHA_MAX - 1, "", &sha, NULL);
		json_get_string_opt(sum, NULL, "author", 127, "", &author, NULL);
		json_get_string_opt(sum, NULL, "project", 255, "", &project, NULL);
		json_get_string_opt(sum, NULL, "ssh_url", 1023, "", &url, NULL);
	}
	copy(j->source, sizeof j->source, kind);
	copy(j->ref, sizeof j->ref, ref);
	copy(j->sha, sizeof j->sha, sha);
	copy(j->author, sizeof j->author, author);
	copy(j->url, sizeof j->url, url); /* the app's repo_url wins (load_app) */
	snprintf(j->description, sizeof j->description, "%s %s %s %s", kind, project, ref, sha);
	cJSON_Delete(sum);
	const char *why = !j->sha[0] ? "the delivery names no commit" : NULL;
	struct err saved = tx->err;
	if (!why && load_app(tx, s, j) < 0)
		why = tx->err.msg;
	if (why) {
		st = store_stmt(tx, SQL_DELIVERY_GONE);
		if (!st)
			return -1;
		sqlite3_bind_text(st, 1, why, -1, SQLITE_TRANSIENT);
		sqlite3_bind_int64(st, 2, id);
		log_warn("build.delivery_dropped", "app=%s delivery=%" PRId64 " reason=\"%s\"", app, id,
			 why);
		tx->err = saved;
		return store_step(tx, st) == SQLITE_DONE ? 1 : -1;
	}
	load_history(tx, j);
	return 0;
}

/* A created build (upload or rebuild): claimed by setting it running. */
static int take_build(struct store_tx *tx, struct scan *s, const char *id, const char *app)
{
	struct job *j = s->job;
	sqlite3_stmt *st = store_stmt(tx, SQL_CLAIM_BUILD);
	if (!st)
		return -1;
	sqlite3_bind_int64(st, 1, s->now_ms);
	sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
	if (store_step(tx, st) != SQLITE_DONE)
		return -1;
	if (sqlite3_changes(tx->db) != 1)
		return 1; /* cancelled meanwhile */
	j->kind = JOB_BUILD;
	j->build_row = true;
	copy(j->build_id, sizeof j->build_id, id);
	copy(j->app, sizeof j->app, app);
	st = store_stmt(tx, SQL_BUILD_ROW);
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	if (store_step(tx, st) != SQLITE_ROW)
		return -1;
	copy(j->source, sizeof j->source, store_col_text(st, 0));
	copy(j->ref, sizeof j->ref, store_col_text(st, 1));
	copy(j->sha, sizeof j->sha, store_col_text(st, 2));
	copy(j->author, sizeof j->author, store_col_text(st, 3));
	copy(j->description, sizeof j->description, store_col_text(st, 4));
	if (sqlite3_column_type(st, 5) != SQLITE_NULL && *store_col_text(st, 5))
		j->context_path = strdup(store_col_text(st, 5));
	const char *why = NULL;
	struct err saved = tx->err;
	if (!j->context_path && !*j->sha)
		why = "the build names neither a commit nor an uploaded context";
	else if (!j->context_path && load_app(tx, s, j) < 0)
		why = tx->err.msg;
	if (why) {
		st = store_stmt(tx, SQL_BUILD_FAIL_EARLY);
		if (!st)
			return -1;
		sqlite3_bind_text(st, 1, why, -1, SQLITE_TRANSIENT);
		sqlite3_bind_int64(st, 2, s->now_ms);
		sqlite3_bind_text(st, 3, id, -1, SQLITE_STATIC);
		tx->err = saved;
		return store_step(tx, st) == SQLITE_DONE ? 1 : -1;
	}
	load_history(tx, j);
	return 0;
}

static int scan_fn(struct store_tx *tx, void *arg)
{
	struct scan *s = arg;
	/* The oldest usable delivery... */
	int64_t after = 0, d_id = 0, d_ms = 0;
	char d_app[APP_MAX] = "";
	for (int page = 0; page < SCAN_PAGES_MAX && !d_id; page++) {
		sqlite3_stmt *st = store_stmt(tx, SQL_NEXT_DELIVERY);
		if (!st)
			return -1;
		sqlite3_bind_int64(st, 1, after);
		int rows = 0, rc;
		while ((rc = store_step(tx, st)) == SQLITE_ROW) {
			rows++;
			after = sqlite3_column_int64(st, 0);
			if (!d_id && !is_busy(s, store_col_text(st, 1))) {
				d_id = after;
				copy(d_app, sizeof d_app, store_col_text(st, 1));
				d_ms = sqlite3_column_int64(st, 2);
			}
		}
		if (rc < 0)
			return -1;
		if (rows < SCAN_PAGE)
			break;
	}
	/* ...and the oldest created build. */
	char b_id[ID_MAX] = "", b_app[APP_MAX] = "";
	int64_t b_ms = 0, since = 0;
	for (int page = 0; page < SCAN_PAGES_MAX && !*b_id; page++) {
		sqlite3_stmt *st = store_stmt(tx, SQL_NEXT_BUILD);
		if (!st)
			return -1;
		sqlite3_bind_int64(st, 1, since);
		int rows = 0, rc;
		while ((rc = store_step(tx, st)) == SQLITE_ROW) {
			rows++;
			since = sqlite3_column_int64(st, 2);
			if (!*b_id && !is_busy(s, store_col_text(st, 1))) {
				copy(b_id, sizeof b_id, store_col_text(st, 0));
				copy(b_app, sizeof b_app, store_col_text(st, 1));
				b_ms = sqlite3_column_int64(st, 2);
			}
		}
		if (rc < 0)
			return -1;
		if (rows < SCAN_PAGE)
			break;
		since++; /* a page of one millisecond's builds, all busy: move on */
	}
	int rc = 1;
	if (d_id && (!*b_id || d_ms <= b_ms))
		rc = take_delivery(tx, s, d_id, d_app);
	else if (*b_id)
		rc = take_build(tx, s, b_id, b_app);
	else
		return 0; /* nothing to do */
	if (rc < 0)
		return -1;
	s->found = rc == 0;
	s->again = rc == 1; /* an unusable row was retired: look again */
	return 0;
}

/* ---- jobs ------------------------------------------------------------------ */

static struct job *job_new(struct builder *b)
{
	struct job *j = calloc(1, sizeof *j);
	if (!j)
		return NULL;
	j->b = b;
	buf_init(&j->key, KEY_MAX);
	buf_init(&j->pending, b->log_max + BUILDER_LOG_CHUNK_MAX);
	buf_init(&j->partial, BUILDER_LOG_CHUNK_MAX / 2);
	ev_timer_init(&j->flush, flush_cb, BUILDER_LOG_FLUSH_MS / 1000.0, 0.);
	j->flush.data = j;
	ev_timer_init(&j->timeout, timeout_cb, 1., 0.);
	j->timeout.data = j;
	return j;
}

static void job_destroy(struct job *j)
{
	if (j->key.data)
		explicit_bzero(j->key.data, j->key.alloc);
	buf_free(&j->key);
	buf_free(&j->pending);
	buf_free(&j->partial);
	free(j->known_hosts);
	free(j->learnt_hosts);
	free(j->context_path);
	free(j->failing);
	free(j->marks);
	cJSON_Delete(j->prev_images);
	cJSON_Delete(j->manifest);
	cJSON_Delete(j->images);
	free(j);
}

static void cleanup_work(void *arg)
{
	remove_tree(arg);
}

static void cleanup_done(void *arg)
{
	free(arg);
}

/* The job is over (its rows are final): release its slot and workspace. */
static void job_end(struct job *j)
{
	struct builder *b = j->b;
	struct ev_loop *loop = b->c->loop;
	j->ended = true;
	ev_timer_stop(loop, &j->timeout);
	if (j->partial.len) {
		log_line(j, j->partial.data, j->partial.len);
		buf_reset(&j->partial);
	}
	log_flush(j);
	ev_timer_stop(loop, &j->flush);
	for (struct job **pp = &b->jobs; *pp; pp = &(*pp)->next) {
		if (*pp == j) {
			*pp = j->next;
			b->running--;
			break;
		}
	}
	if (j->ws[0]) {
		/* The key file goes at once; the rest on a worker thread. */
		if (j->key_file[0])
			unlink(j->key_file);
		char *ws = strdup(j->ws);
		if (ws && worker_submit(b->c->workers, cleanup_work, cleanup_done, ws) < 0)
			free(ws); /* left for the next start, which clears the work dir */
	}
	job_destroy(j);
	builder_kick(b);
}

/* Every async completion starts here: 1 when the job must not go on. */
static bool job_gone(struct job *j)
{
	j->inflight = IF_NONE;
	if (j->orphan) {
		job_destroy(j);
		return true;
	}
	if (j->failing) {
		job_finish_failed(j);
		return true;
	}
	return false;
}

static void job_fail(struct job *j, const char *fmt, ...)
{
	if (j->failing || j->ended)
		return;
	char why[ERR_MSG_MAX + 64];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, sizeof why, fmt, ap);
	va_end(ap);
	j->failing = strdup(why);
	if (!j->failing)
		j->failing = strdup("failed");
	job_log(j, "error: %s", why);
	switch (j->inflight) {
	case IF_PROC:
		proc_free(j->proc); /* kills the process group; no callback follows */
		j->proc = NULL;
		break;
	case IF_DOCKER:
		/* Closing the connection stops the engine's work too. */
		docker_cancel(j->b->c->docker, j->docker_call);
		j->docker_call = 0;
		break;
	case IF_WAIT:
		if (j->ctx_job)
			context_job_cancel(j->ctx_job);
		return; /* its callback finishes the job */
	case IF_LOGIN:
		ecrauth_cancel(j->b->ecr, j->login_call);
		j->login_call = 0;
		break;
	case IF_NONE:
		break;
	}
	j->inflight = IF_NONE;
	job_finish_failed(j);
}

static void timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	struct job *j = w->data;
	job_fail(j, "timed out after %" PRId64 " s", j->b->timeout_ms / 1000);
}

/* ---- final rows ------------------------------------------------------------ */

struct finish {
	struct job *j;
	const char *status;         /* builds.status (a refused release turns it to failed) */
	const char *delivery_status;
	char *error;
	char *images, *manifest;
	int64_t now_ms;
	bool insert;                /* the builds row does not exist yet */
	struct releases_result res; /* complete: the release made in the same transaction */
	struct queue_wake wake;     /* the agents its rollout gave jobs */
};

static const char SQL_BUILD_INSERT[] =
	"INSERT INTO builds(id, app, status, source, ref, sha, author, description, delivery, "
	"error, created_ms, started_ms, ended_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
static const char SQL_BUILD_FINISH[] =
	"UPDATE builds SET status = ?, error = ?, images = ?, manifest = ?, ended_ms = ? "
	"WHERE id = ? AND status = 'running'";
static const char SQL_DELIVERY_SET[] =
	"UPDATE deliveries SET status = ?, note = ?, build = ? WHERE id = ?";

/* Inserts the builds row (running, or failed when error is set). */
static int insert_build(struct store_tx *tx, struct job *j, const char *status, const char *error,
			int64_t now)
{
	sqlite3_stmt *st = store_stmt(tx, SQL_BUILD_INSERT);
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, j->build_id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, j->app, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, status, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, j->source, -1, SQLITE_STATIC);
	store_bind_text(st, 5, j->ref[0] ? j->ref : NULL);
	store_bind_text(st, 6, j->sha[0] ? j->sha : NULL);
	store_bind_text(st, 7, j->author[0] ? j->author : NULL);
	sqlite3_bind_text(st, 8, j->description, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 9, j->delivery_id);
	store_bind_text(st, 10, error);
	sqlite3_bind_int64(st, 11, now);
	sqlite3_bind_int64(st, 12, now);
	if (error)
		sqlite3_bind_int64(st, 13, now);
	else
		sqlite3_bind_null(st, 13);
	return store_step(tx, st) == SQLITE_DONE ? 0 : -1;
}

static int set_delivery(struct store_tx *tx, int64_t id, const char *status, const char *note,
			const char *build)
{
	if (id <= 0)
		return 0;
	sqlite3_stmt *st = store_stmt(tx, SQL_DELIVERY_SET);
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, status, -1, SQLITE_STATIC);
	store_bind_text(st, 2, note);
	store_bind_text(st, 3, build);
	sqlite3_bind_int64(st, 4, id);
	return store_step(tx, st) == SQLITE_DONE ? 0 : -1;
}

static const char SQL_BUILD_NO_RELEASE[] =
	"UPDATE builds SET status = 'failed', error = ? WHERE id = ?";

/* A complete build's release and its promotion, in the transaction that
 * completes it: nobody ever reads a complete build without its release. A
 * release that cannot be made fails the build instead (with why), so that
 * state never shows either. */
static int release_tx(struct store_tx *tx, struct finish *f)
{
	struct job *j = f->j;
	f->res.wake = &f->wake;
	if (store_exec(tx, "SAVEPOINT build_release") < 0)
		return -1;
	int rc = releases_create_from_build_tx(tx, j->b->c, j->build_id, &f->res);
	if (rc == 0 && f->res.status == 0)
		return store_exec(tx, "RELEASE build_release");
	char why[600];
	snprintf(why, sizeof why, "no release: %s", rc < 0 ? tx->err.msg : f->res.message);
	tx->err.msg[0] = '\0';
	if (store_exec(tx, "ROLLBACK TO build_release") < 0 ||
	    store_exec(tx, "RELEASE build_release") < 0)
		return -1;
	queue_wake_free(&f->wake);
	memset(&f->res, 0, sizeof f->res);
	free(f->error);
	if (!(f->error = strdup(why)))
		return err_set(&tx->err, "out of memory");
	f->status = "failed";
	f->delivery_status = "failed";
	sqlite3_stmt *st = store_stmt(tx, SQL_BUILD_NO_RELEASE);
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, f->error, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, j->build_id, -1, SQLITE_STATIC);
	return store_step(tx, st) == SQLITE_DONE ? 0 : -1;
}

static int finish_fn(struct store_tx *tx, void *arg)
{
	struct finish *f = arg;
	struct job *j = f->j;
	if (f->insert) {
		if (insert_build(tx, j, f->status, f->error, f->now_ms) < 0)
			return -1;
	} else {
		sqlite3_stmt *st = store_stmt(tx, SQL_BUILD_FINISH);
		if (!st)
			return -1;
		sqlite3_bind_text(st, 1, f->status, -1, SQLITE_STATIC);
		store_bind_text(st, 2, f->error);
		store_bind_text(st, 3, f->images);
		store_bind_text(st, 4, f->manifest);
		sqlite3_bind_int64(st, 5, f->now_ms);
		sqlite3_bind_text(st, 6, j->build_id, -1, SQLITE_STATIC);
		if (store_step(tx, st) != SQLITE_DONE)
			return -1;
		if (sqlite3_changes(tx->db) == 1 && !strcmp(f->status, "complete") &&
		    release_tx(tx, f) < 0)
			return -1;
	}
	return set_delivery(tx, j->delivery_id, f->delivery_status, f->error, j->build_id);
}

static void finish_free(struct finish *f)
{
	free(f->error);
	free(f->images);
	free(f->manifest);
	queue_wake_free(&f->wake);
	free(f);
}

static void finish_done(int rc, void *arg)
{
	struct finish *f = arg;
	struct job *j = f->j;
	bool complete = !strcmp(f->status, "complete");
	if (j->orphan) {
		finish_free(f);
		job_destroy(j);
		return;
	}
	j->inflight = IF_NONE;
	if (rc < 0)
		log_error("build.finish_failed", "app=%s build=%s status=%s", j->app, j->build_id,
			  f->status);
	if (f->insert)
		j->build_row = true; /* the log can go now */
	log_info(complete ? "build.complete" : "build.failed",
		 "app=%s build=%s sha=%s error=\"%s\"", j->app, j->build_id, j->sha,
		 f->error ? f->error : "");
	if (rc == 0 && complete) {
		if (j->b->c->queue)
			queue_wake(j->b->c->queue, &f->wake);
		job_log(j, "release %s created from build %s", f->res.release, j->build_id);
		log_info("build.released", "app=%s build=%s release=%s rollout=%s", j->app,
			 j->build_id, f->res.release, f->res.rollout);
	} else if (rc == 0 && f->error && !strncmp(f->error, "no release: ", 12)) {
		job_log(j, "error: %s", f->error);
		log_error("build.release_failed", "app=%s build=%s error=\"%s\"", j->app,
			  j->build_id, f->error);
	}
	finish_free(f);
	if (rc == 0 && !complete)
		slack_build_failed(j->b->c, j->build_id); /* slack: the failed row is committed */
	job_end(j);
}

static void submit_finish(struct job *j, struct finish *f)
{
	f->j = j;
	f->now_ms = clock_wall_ms();
	log_flush(j); /* the log chunks go before the final row: the store keeps the order */
	j->inflight = IF_WAIT;
	if (store_submit(j->b->c->store, finish_fn, finish_done, f) < 0) {
		log_error("build.finish_failed", "app=%s build=%s: store queue full", j->app,
			  j->build_id);
		j->inflight = IF_NONE;
		finish_free(f);
		job_end(j);
	}
}

static void job_finish_failed(struct job *j)
{
	if (j->ended)
		return;
	struct finish *f = calloc(1, sizeof *f);
	if (!f) {
		job_end(j);
		return;
	}
	f->status = "failed";
	f->delivery_status = "failed";
	f->error = strdup(j->failing ? j->failing : "failed");
	if (!j->build_row) {
		/* Failed before the builds row was made (fetch, key): make it failed,
		 * so the failure and its log are visible like any other. */
		f->insert = true;
		if (!j->build_id[0]) {
			char hex[13];
			crypto_random_hex(hex, 6);
			snprintf(j->build_id, sizeof j->build_id, "b_%s", hex);
		}
	}
	ev_timer_stop(j->b->c->loop, &j->timeout);
	submit_finish(j, f);
}

/* ---- running things ---------------------------------------------------- */

struct blocking {
	struct job *j;
	int (*fn)(struct job *j, struct err *err);
	void (*next)(struct job *j);
	int rc;
	struct err err;
};

static void blocking_work(void *arg)
{
	struct blocking *w = arg;
	w->err.msg[0] = '\0';
	w->rc = w->fn(w->j, &w->err);
}

static void blocking_done(void *arg)
{
	struct blocking *w = arg;
	struct job *j = w->j;
	if (!job_gone(j)) {
		if (w->rc < 0)
			job_fail(j, "%s", w->err.msg);
		else
			w->next(j);
	}
	free(w);
}

/* Runs fn(j) on a worker thread, then next(j) on the loop. fn may fill job
 * fields the loop does not touch meanwhile (paths, manifest), never the log. */
static void run_blocking(struct job *j, int (*fn)(struct job *j, struct err *err),
			 void (*next)(struct job *j))
{
	struct blocking *w = calloc(1, sizeof *w);
	if (!w) {
		job_fail(j, "out of memory");
		return;
	}
	w->j = j;
	w->fn = fn;
	w->next = next;
	j->inflight = IF_WAIT;
	if (worker_submit(j->b->c->workers, blocking_work, blocking_done, w) < 0) {
		j->inflight = IF_NONE;
		free(w);
		job_fail(j, "the worker pool is busy");
	}
}

static void proc_output(const char *chunk, size_t len, void *arg)
{
	struct job *j = arg;
	if (!j->quiet)
		log_text(j, chunk, len);
}

static void proc_exited(int status, const char *tail, size_t len, void *arg)
{
	(void)len;
	struct job *j = arg;
	proc_free(j->proc);
	j->proc = NULL;
	if (j->partial.len) {
		log_line(j, j->partial.data, j->partial.len);
		buf_reset(&j->partial);
	}
	if (job_gone(j))
		return;
	j->proc_next(j, status, tail);
}

/* Runs git with the job's SSH settings; next(j, exit status, output tail). */
static void run_git(struct job *j, const char *const *args, const char *index_file,
		    void (*next)(struct job *j, int status, const char *tail))
{
	j->quiet = args[0] && args[1] && args[2] && !strcmp(args[0], "--git-dir") &&
		   (!strcmp(args[2], "cat-file") || !strcmp(args[2], "merge-base"));
	struct builder *b = j->b;
	struct buf ssh;
	buf_init(&ssh, 16384);
	buf_append_str(&ssh, "GIT_SSH_COMMAND=");
	shell_quote(&ssh, b->ssh);
	buf_append_str(&ssh, " -F /dev/null -i ");
	shell_quote(&ssh, j->key_file);
	buf_append_str(&ssh, " -o IdentitiesOnly=yes -o IdentityAgent=none -o BatchMode=yes"
			     " -o GlobalKnownHostsFile=/dev/null -o UserKnownHostsFile=");
	shell_quote(&ssh, j->hosts_file);
	int rc = buf_printf(&ssh, " -o StrictHostKeyChecking=%s -o ConnectTimeout=30"
				  " -o ServerAliveInterval=15 -o ServerAliveCountMax=4",
			    j->known_hosts ? "yes" : "accept-new");
	char index_env[FILE_PATH + 32] = "";
	if (index_file)
		snprintf(index_env, sizeof index_env, "GIT_INDEX_FILE=%s", index_file);

	/* Our environment minus anything that steers git or ssh. */
	size_t n = 0;
	while (environ[n])
		n++;
	const char **envp = calloc(n + 16, sizeof *envp);
	const char *argv[32];
	size_t a = 0, e = 0;
	if (!envp || rc < 0) {
		free(envp);
		buf_free(&ssh);
		job_fail(j, "out of memory");
		return;
	}
	for (size_t i = 0; i < n; i++)
		if (strncmp(environ[i], "GIT_", 4) && strncmp(environ[i], "SSH_", 4) &&
		    strncmp(environ[i], "LC_ALL=", 7))
			envp[e++] = environ[i];
	envp[e++] = ssh.data;
	envp[e++] = "GIT_TERMINAL_PROMPT=0";
	envp[e++] = "GIT_CONFIG_NOSYSTEM=1";
	envp[e++] = "GIT_CONFIG_GLOBAL=/dev/null";
	envp[e++] = "GIT_ALLOW_PROTOCOL=ssh";
	envp[e++] = "GIT_CONFIG_COUNT=2";
	envp[e++] = "GIT_CONFIG_KEY_0=gc.auto";
	envp[e++] = "GIT_CONFIG_VALUE_0=0";
	envp[e++] = "GIT_CONFIG_KEY_1=protocol.version";
	envp[e++] = "GIT_CONFIG_VALUE_1=2";
	envp[e++] = "LC_ALL=C";
	if (index_file)
		envp[e++] = index_env;
	envp[e] = NULL;
	argv[a++] = "git";
	for (size_t i = 0; args[i] && a < 31; i++)
		argv[a++] = args[i];
	argv[a] = NULL;

	if (!j->quiet) {
		struct buf shown;
		buf_init(&shown, 2048);
		for (size_t i = 0; argv[i]; i++)
			buf_printf(&shown, "%s%s", i ? " " : "$ ", argv[i]);
		job_log(j, "%s", shown.data ? shown.data : "");
		buf_free(&shown);
	}

	struct proc_opts o = {
		.argv = argv,
		.envp = envp,
		.cwd = j->ws,
		.output_max = GIT_OUTPUT_TAIL,
		.on_output = proc_output,
		.on_exit = proc_exited,
		.arg = j,
	};
	struct err err;
	j->proc_next = next;
	j->proc = proc_spawn(b->c->loop, &o, &err);
	free(envp);
	buf_free(&ssh);
	if (!j->proc) {
		job_fail(j, "git: %s", err.msg);
		return;
	}
	j->inflight = IF_PROC;
}

/* ---- the pipeline ------------------------------------------------------------ */

static void step_prepared(struct job *j);
static void step_have_sha(struct job *j);
static void step_fetch(struct job *j);
static void step_fetched(struct job *j);
static void step_stale_check(struct job *j);
static void step_create_build(struct job *j);
static void step_checkout(struct job *j);
static void step_manifest(struct job *j);
static void step_service(struct job *j);
static void step_complete(struct job *j);

/* The last line of a command's output, for the error message. */
static void last_line(const char *tail, char *out, size_t cap)
{
	size_t n = strlen(tail);
	while (n > 0 && (tail[n - 1] == '\n' || tail[n - 1] == '\r' || tail[n - 1] == ' '))
		n--;
	size_t start = n;
	while (start > 0 && tail[start - 1] != '\n' && tail[start - 1] != '\r')
		start--;
	size_t len = n - start < cap - 1 ? n - start : cap - 1;
	memcpy(out, tail + start, len);
	out[len] = '\0';
}

static int write_private_file(const char *path, const char *data, size_t len, bool newline,
			      struct err *err)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return err_set(err, "%s: %s", path, strerror(errno));
	size_t off = 0;
	while (off < len) {
		ssize_t w = write(fd, data + off, len - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0) {
			close(fd);
			return err_set(err, "%s: %s", path, strerror(errno));
		}
		off += (size_t)w;
	}
	/* ssh refuses a key file without its final newline. */
	if (newline && len > 0 && data[len - 1] != '\n' && write(fd, "\n", 1) != 1) {
		close(fd);
		return err_set(err, "%s: %s", path, strerror(errno));
	}
	return close(fd) < 0 ? err_set(err, "%s: %s", path, strerror(errno)) : 0;
}

/* Worker thread: the private workspace, the key and host files, or the
 * uploaded context unpacked. */
static int prepare_fn(struct job *j, struct err *err)
{
	struct builder *b = j->b;
	if (mkdirs(b->work_dir, 0700, err) < 0 || mkdirs(b->git_dir, 0700, err) < 0)
		return -1;
	if ((size_t)snprintf(j->ws, sizeof j->ws, "%s/%s-XXXXXX", b->work_dir, j->app) >=
	    sizeof j->ws)
		return err_set(err, "workspace path too long");
	if (!mkdtemp(j->ws)) {
		int e = errno;
		j->ws[0] = '\0';
		return err_set(err, "workspace: %s", strerror(e));
	}
	snprintf(j->src, sizeof j->src, "%s/src", j->ws);
	if (mkdir(j->src, 0700) < 0)
		return err_set(err, "%s: %s", j->src, strerror(errno));
	if (j->context_path)
		return context_extract(j->context_path, j->src, b->context_max, b->context_files_max,
				       err);
	snprintf(j->key_file, sizeof j->key_file, "%s/deploy_key", j->ws);
	snprintf(j->hosts_file, sizeof j->hosts_file, "%s/known_hosts", j->ws);
	snprintf(j->mirror, sizeof j->mirror, "%s/%s.git", b->git_dir, j->app);
	if (write_private_file(j->key_file, j->key.data, j->key.len, true, err) < 0)
		return -1;
	const char *hosts = j->known_hosts ? j->known_hosts : "";
	if (write_private_file(j->hosts_file, hosts, strlen(hosts), true, err) < 0)
		return -1;
	char head[DIR_PATH + 16];
	struct stat sb;
	snprintf(head, sizeof head, "%s/HEAD", j->mirror);
	j->mirror_exists = stat(head, &sb) == 0;
	return 0;
}

static void step_inited(struct job *j, int status, const char *tail)
{
	char line[300];
	last_line(tail, line, sizeof line);
	if (status != 0) {
		job_fail(j, "git init failed (exit %d): %s", status, line);
		return;
	}
	step_have_sha(j);
}

static void step_prepared(struct job *j)
{
	if (j->context_path) {
		job_log(j, "uploaded context %s unpacked", j->context_path);
		step_manifest(j);
		return;
	}
	j->pin_hosts = !j->known_hosts;
	if (j->pin_hosts)
		job_log(j, "first contact with the git server: its host key is pinned after this "
			   "fetch");
	if (j->mirror_exists) {
		step_have_sha(j);
		return;
	}
	const char *args[] = {"init", "--bare", "-q", j->mirror, NULL};
	run_git(j, args, NULL, step_inited);
}

static void have_sha_done(struct job *j, int status, const char *tail)
{
	(void)tail;
	if (status == 0) {
		job_log(j, "commit %s is already in the mirror: no fetch", j->sha);
		step_fetched(j);
	} else {
		step_fetch(j);
	}
}

static void step_have_sha(struct job *j)
{
	char obj[SHA_MAX + 16];
	snprintf(obj, sizeof obj, "%s^{commit}", j->sha);
	const char *args[] = {"--git-dir", j->mirror, "cat-file", "-e", obj, NULL};
	run_git(j, args, NULL, have_sha_done);
}

static void fetch_ref_check_done(struct job *j, int status, const char *tail)
{
	(void)tail;
	if (status != 0) {
		job_fail(j, "commit %s is not on %s at %s (and the server refused to fetch it by id)",
			 j->sha, j->ref, j->url);
		return;
	}
	step_fetched(j);
}

static void fetch_done(struct job *j, int status, const char *tail)
{
	char line[300];
	last_line(tail, line, sizeof line);
	if (status == 0 && !j->tried_ref) {
		step_fetched(j);
		return;
	}
	if (status == 0) { /* the ref was fetched: is our commit there now? */
		char obj[SHA_MAX + 16];
		snprintf(obj, sizeof obj, "%s^{commit}", j->sha);
		const char *args[] = {"--git-dir", j->mirror, "cat-file", "-e", obj, NULL};
		run_git(j, args, NULL, fetch_ref_check_done);
		return;
	}
	/* Fetching a bare commit id needs protocol v2 or uploadpack settings on
	 * the server; try the ref the delivery named before giving up. */
	if (!j->tried_ref &&
	    (!strncmp(j->ref, "refs/heads/", 11) || !strncmp(j->ref, "refs/tags/", 10)) &&
	    !strstr(line, "Permission denied") && !strstr(line, "Host key verification failed") &&
	    !strstr(line, "Could not resolve")) {
		j->tried_ref = true;
		char spec[300];
		snprintf(spec, sizeof spec, "+%s:refs/slipway/fetched", j->ref);
		job_log(j, "fetching %s by id failed; fetching %s", j->sha, j->ref);
		const char *args[] = {"--git-dir",           j->mirror, "fetch", "--no-tags",
				      "--no-write-fetch-head", "--",      j->url,  spec,
				      NULL};
		run_git(j, args, NULL, fetch_done);
		return;
	}
	job_fail(j, "git fetch failed (exit %d): %s", status, line);
}

static void step_fetch(struct job *j)
{
	const char *args[] = {"--git-dir", j->mirror, "fetch", "--no-tags", "--no-write-fetch-head",
			      "--", j->url, j->sha, NULL};
	run_git(j, args, NULL, fetch_done);
}

/* ---- host key pinning ---- */

struct pin {
	char app[APP_MAX];
	char *hosts;
};

static const char SQL_PIN[] =
	"UPDATE apps SET known_hosts = ? WHERE name = ? AND (known_hosts IS NULL OR known_hosts = '')";

static int pin_fn(struct store_tx *tx, void *arg)
{
	struct pin *p = arg;
	sqlite3_stmt *st = store_stmt(tx, SQL_PIN);
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, p->hosts, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, p->app, -1, SQLITE_STATIC);
	return store_step(tx, st) == SQLITE_DONE ? 0 : -1;
}

static void pin_done(int rc, void *arg)
{
	struct pin *p = arg;
	if (rc == 0)
		log_info("build.host_key_pinned", "app=%s", p->app);
	free(p->hosts);
	free(p);
}

static int read_hosts_fn(struct job *j, struct err *err)
{
	FILE *f = fopen(j->hosts_file, "re");
	if (!f)
		return err_set(err, "%s: %s", j->hosts_file, strerror(errno));
	struct buf b;
	buf_init(&b, 64 << 10);
	char chunk[4096];
	size_t n;
	int rc = 0;
	while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
		if (buf_append(&b, chunk, n) < 0) {
			rc = err_set(err, "known_hosts: larger than 64 KiB");
			break;
		}
	fclose(f);
	if (rc == 0 && b.len > 0)
		j->learnt_hosts = buf_detach(&b, NULL);
	buf_free(&b);
	return rc;
}

static void step_pinned(struct job *j)
{
	if (j->learnt_hosts && *j->learnt_hosts) {
		struct pin *p = calloc(1, sizeof *p);
		if (p && (p->hosts = strdup(j->learnt_hosts))) {
			copy(p->app, sizeof p->app, j->app);
			if (store_submit(j->b->c->store, pin_fn, pin_done, p) < 0)
				pin_done(-1, p);
		} else {
			free(p);
		}
		free(j->known_hosts);
		j->known_hosts = j->learnt_hosts; /* from now on: StrictHostKeyChecking=yes */
		j->learnt_hosts = NULL;
		job_log(j, "host key of the git server pinned for app %s", j->app);
	}
	step_stale_check(j);
}

static void step_fetched(struct job *j)
{
	if (j->pin_hosts) {
		j->pin_hosts = false;
		run_blocking(j, read_hosts_fn, step_pinned);
		return;
	}
	step_stale_check(j);
}

/* ---- staleness ---- */

struct stale {
	struct job *j;
	char note[400];
};

static int stale_fn(struct store_tx *tx, void *arg)
{
	struct stale *s = arg;
	return set_delivery(tx, s->j->delivery_id, "stale", s->note, NULL);
}

static void stale_done(int rc, void *arg)
{
	struct stale *s = arg;
	struct job *j = s->j;
	if (!job_gone(j)) {
		log_info("build.stale", "app=%s delivery=%" PRId64 " sha=%s note=\"%s\"%s", j->app,
			 j->delivery_id, j->sha, s->note, rc < 0 ? " (not recorded)" : "");
		job_end(j);
	}
	free(s);
}

static void mark_stale(struct job *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void mark_stale(struct job *j, const char *fmt, ...)
{
	struct stale *s = calloc(1, sizeof *s);
	if (!s) {
		job_fail(j, "out of memory");
		return;
	}
	s->j = j;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(s->note, sizeof s->note, fmt, ap);
	va_end(ap);
	/* No build, no log: the delivery's note says why. */
	buf_reset(&j->pending);
	j->inflight = IF_WAIT;
	if (store_submit(j->b->c->store, stale_fn, stale_done, s) < 0) {
		j->inflight = IF_NONE;
		free(s);
		job_fail(j, "the store is busy");
	}
}

static void ancestry_done(struct job *j, int status, const char *tail)
{
	(void)tail;
	if (status == 0) {
		mark_stale(j, "stale: %s is an ancestor of %s, already built (build %s)", j->sha,
			   j->last_sha, j->last_build);
		return;
	}
	if (status == 1)
		job_log(j, "%s is not an ancestor of %s (build %s): a new head", j->sha, j->last_sha,
			j->last_build);
	else
		job_log(j, "cannot tell whether %s is an ancestor of %s (exit %d): building it",
			j->sha, j->last_sha, status);
	step_create_build(j);
}

static void step_ancestry(struct job *j)
{
	const char *args[] = {"--git-dir", j->mirror, "merge-base", "--is-ancestor", j->sha,
			      j->last_sha, NULL};
	run_git(j, args, NULL, ancestry_done);
}

static void last_fetched(struct job *j, int status, const char *tail)
{
	(void)status;
	(void)tail;
	step_ancestry(j); /* still missing: merge-base fails, and the push builds */
}

static void last_present(struct job *j, int status, const char *tail)
{
	(void)tail;
	if (status == 0) {
		step_ancestry(j);
		return;
	}
	job_log(j, "the last built commit %s is not in the mirror: fetching it", j->last_sha);
	const char *args[] = {"--git-dir", j->mirror, "fetch", "--no-tags", "--no-write-fetch-head",
			      "--", j->url, j->last_sha, NULL};
	run_git(j, args, NULL, last_fetched);
}

/* A delivery whose commit is the last complete build of its ref, or an
 * ancestor of it, is stale (docs/webhooks.md). */
static void step_stale_check(struct job *j)
{
	if (j->kind != JOB_DELIVERY || !j->last_sha[0]) {
		step_create_build(j);
		return;
	}
	if (!strcmp(j->sha, j->last_sha)) {
		mark_stale(j, "stale: %s is already built (build %s)", j->sha, j->last_build);
		return;
	}
	char obj[SHA_MAX + 16];
	snprintf(obj, sizeof obj, "%s^{commit}", j->last_sha);
	const char *args[] = {"--git-dir", j->mirror, "cat-file", "-e", obj, NULL};
	run_git(j, args, NULL, last_present);
}

/* ---- the builds row ---- */

struct create {
	struct job *j;
	int64_t now_ms;
};

static int create_fn(struct store_tx *tx, void *arg)
{
	struct create *c = arg;
	if (insert_build(tx, c->j, "running", NULL, c->now_ms) < 0)
		return -1;
	return set_delivery(tx, c->j->delivery_id, "building", NULL, c->j->build_id);
}

static void create_done(int rc, void *arg)
{
	struct create *c = arg;
	struct job *j = c->j;
	free(c);
	if (rc == 0 && !j->orphan)
		j->build_row = true;
	if (job_gone(j))
		return;
	if (rc < 0) {
		j->build_id[0] = '\0';
		job_fail(j, "the build could not be recorded");
		return;
	}
	log_info("build.start", "app=%s build=%s delivery=%" PRId64 " sha=%s", j->app, j->build_id,
		 j->delivery_id, j->sha);
	job_log(j, "build %s of %s", j->build_id, j->description);
	log_flush(j);
	step_checkout(j);
}

static void step_create_build(struct job *j)
{
	if (j->build_row) { /* a queued build: the row exists */
		step_checkout(j);
		return;
	}
	struct create *c = calloc(1, sizeof *c);
	if (!c) {
		job_fail(j, "out of memory");
		return;
	}
	char hex[13];
	crypto_random_hex(hex, 6);
	snprintf(j->build_id, sizeof j->build_id, "b_%s", hex);
	c->j = j;
	c->now_ms = clock_wall_ms();
	j->inflight = IF_WAIT;
	if (store_submit(j->b->c->store, create_fn, create_done, c) < 0) {
		j->inflight = IF_NONE;
		free(c);
		j->build_id[0] = '\0';
		job_fail(j, "the store is busy");
	}
}

/* ---- checkout and manifest ---- */

static void checkout_done(struct job *j, int status, const char *tail)
{
	char line[300];
	last_line(tail, line, sizeof line);
	if (status != 0) {
		job_fail(j, "git checkout of %s failed (exit %d): %s", j->sha, status, line);
		return;
	}
	step_manifest(j);
}

/* The exact commit into <ws>/src, through a private index: the mirror's own
 * HEAD and index are never touched. */
static void step_checkout(struct job *j)
{
	char index[FILE_PATH];
	snprintf(index, sizeof index, "%s/index", j->ws);
	const char *args[] = {"--git-dir", j->mirror, "--work-tree", j->src, "read-tree", "--reset",
			      "-u", j->sha, NULL};
	run_git(j, args, index, checkout_done);
}

static int manifest_fn(struct job *j, struct err *err)
{
	j->manifest = manifest_load(j->src, err);
	return j->manifest ? 0 : -1;
}

static void manifest_read(struct job *j)
{
	const cJSON *services = cJSON_GetObjectItemCaseSensitive(j->manifest, "services");
	struct buf names;
	buf_init(&names, 4096);
	const cJSON *s;
	cJSON_ArrayForEach(s, services)
	{
		const cJSON *b = cJSON_GetObjectItemCaseSensitive(s, "build");
		buf_printf(&names, "%s%s (%s)", names.len ? ", " : "", s->string,
			   cJSON_IsObject(b) ? "build" : "image");
	}
	job_log(j, "%s: %s", MANIFEST_FILE, names.data ? names.data : "");
	buf_free(&names);
	j->images = cJSON_CreateObject();
	if (!j->images) {
		job_fail(j, "out of memory");
		return;
	}
	j->service = services ? services->child : NULL;
	step_service(j);
}

static void step_manifest(struct job *j)
{
	run_blocking(j, manifest_fn, manifest_read);
}

/* ---- per service ---- */

static void next_service(struct job *j)
{
	j->service = j->service->next;
	step_service(j);
}

static void add_image(struct job *j, const char *image, const char *digest)
{
	cJSON *o = cJSON_CreateObject();
	if (!o)
		return;
	cJSON_AddStringToObject(o, "image", image);
	if (digest)
		cJSON_AddStringToObject(o, "digest", digest);
	cJSON_AddItemToObject(j->images, j->service->string, o);
}

static void step_push(struct job *j);

static void push_done(const struct docker_result *res, void *arg)
{
	struct job *j = arg;
	j->docker_call = 0;
	if (job_gone(j))
		return;
	if (res->error != DOCKER_OK && j->b->ecr && !j->push_retried &&
	    (res->error == DOCKER_ERR_DENIED || ecr_docker_denied(res->message))) {
		/* The token may have expired or been revoked early: once more with a new one. */
		j->push_retried = true;
		job_log(j, "push refused (%s): logging in to ECR again", res->message);
		ecrauth_invalidate(j->b->ecr);
		step_push(j);
		return;
	}
	if (res->error != DOCKER_OK) {
		job_fail(j, "service %s: docker push %s: %s%s", j->service->string, j->image_ref,
			 res->message, j->push_retried ? " (also with a new ECR token)" : "");
		return;
	}
	if (!res->digest) {
		job_fail(j, "service %s: the push of %s reported no digest", j->service->string,
			 j->image_ref);
		return;
	}
	job_log(j, "pushed %s (%s)", j->image_ref, res->digest);
	add_image(j, j->image_ref, res->digest);
	next_service(j);
}

static void push_progress(const cJSON *msg, void *arg)
{
	struct job *j = arg;
	const cJSON *status = cJSON_GetObjectItemCaseSensitive(msg, "status");
	const cJSON *id = cJSON_GetObjectItemCaseSensitive(msg, "id");
	/* Layer states, not the byte-by-byte progress. */
	if (cJSON_IsString(status) && !cJSON_GetObjectItemCaseSensitive(msg, "progressDetail"))
		job_log(j, "push: %s%s%s", cJSON_IsString(id) ? id->valuestring : "",
			cJSON_IsString(id) ? ": " : "", status->valuestring);
	else if (cJSON_IsString(status) && strcmp(status->valuestring, "Pushing") != 0)
		job_log(j, "push: %s%s%s", cJSON_IsString(id) ? id->valuestring : "",
			cJSON_IsString(id) ? ": " : "", status->valuestring);
}

static void build_output(const char *text, void *arg)
{
	log_text(arg, text, strlen(text));
}

static void build_progress(const cJSON *msg, void *arg)
{
	const cJSON *status = cJSON_GetObjectItemCaseSensitive(msg, "status");
	if (cJSON_IsString(status) && !cJSON_GetObjectItemCaseSensitive(msg, "progressDetail"))
		job_log(arg, "%s", status->valuestring);
}

static void build_done(const struct docker_result *res, void *arg)
{
	struct job *j = arg;
	j->docker_call = 0;
	if (job_gone(j))
		return;
	if (res->error != DOCKER_OK) {
		job_fail(j, "service %s: docker build: %s", j->service->string, res->message);
		return;
	}
	job_log(j, "built %s (%s)", j->image_ref, res->id ? res->id : "?");
	step_push(j);
}

static void start_push(struct job *j, const char *auth_json)
{
	j->docker_call = docker_image_push(j->b->c->docker, j->image_ref, auth_json, 0,
					   push_progress, push_done, j);
	if (!j->docker_call) {
		job_fail(j, "service %s: docker push could not start", j->service->string);
		return;
	}
	j->inflight = IF_DOCKER;
}

static void push_login_done(const struct ecrauth_login *login, const char *error, void *arg)
{
	struct job *j = arg;
	j->login_call = 0;
	if (job_gone(j))
		return;
	if (!login) {
		job_fail(j, "service %s: ECR login for the push: %s", j->service->string, error);
		return;
	}
	if (login->stale)
		job_log(j, "warning: ECR: a new token could not be fetched; the current one is used");
	start_push(j, login->auth_json);
}

/* ECR: the push logs in first (a cached token, or a new one when it is old
 * or was refused). */
static void step_push(struct job *j)
{
	if (!j->b->ecr) {
		start_push(j, j->b->registry_auth);
		return;
	}
	j->login_call = ecrauth_prepare(j->b->ecr, NULL, push_login_done, j);
	if (!j->login_call) {
		job_fail(j, "service %s: the ECR login could not start", j->service->string);
		return;
	}
	j->inflight = IF_LOGIN;
}

static void start_build(struct job *j, const char *registry_config)
{
	struct builder *b = j->b;
	const cJSON *svc = j->service;
	char context_file[FILE_PATH];
	snprintf(context_file, sizeof context_file, "%s/context-%s.tar.gz", j->ws, svc->string);
	const cJSON *build = cJSON_GetObjectItemCaseSensitive(svc, "build");
	const cJSON *df = cJSON_GetObjectItemCaseSensitive(build, "dockerfile");
	cJSON *labels = cJSON_CreateObject();
	if (!labels) {
		job_fail(j, "out of memory");
		return;
	}
	cJSON_AddStringToObject(labels, "slipway.app", j->app);
	cJSON_AddStringToObject(labels, "slipway.build", j->build_id);
	cJSON_AddStringToObject(labels, "slipway.service", svc->string);
	const char *tags[] = {j->image_ref, NULL};
	const char *cache[] = {NULL, NULL};
	const cJSON *prev = cJSON_GetObjectItemCaseSensitive(
		cJSON_GetObjectItemCaseSensitive(j->prev_images, svc->string), "image");
	if (cJSON_IsString(prev)) {
		cache[0] = prev->valuestring;
		job_log(j, "cache from %s", prev->valuestring);
	}
	struct docker_build_opts o = {
		.context_file = context_file,
		.tags = tags,
		.dockerfile = cJSON_IsString(df) ? df->valuestring : NULL,
		.labels = labels,
		.cache_from = cache[0] ? cache : NULL,
		.registry_config = registry_config,
		.on_output = build_output,
		.on_progress = build_progress,
	};
	job_log(j, "docker build of service %s as %s", svc->string, j->image_ref);
	j->docker_call = docker_image_build(b->c->docker, &o, build_done, j);
	cJSON_Delete(labels);
	if (!j->docker_call) {
		job_fail(j, "service %s: docker build could not start", svc->string);
		return;
	}
	j->inflight = IF_DOCKER;
}

static void build_login_done(const struct ecrauth_login *login, const char *error, void *arg)
{
	struct job *j = arg;
	j->login_call = 0;
	if (job_gone(j))
		return;
	if (!login) {
		job_fail(j, "service %s: ECR: %s", j->service->string, error);
		return;
	}
	if (login->stale)
		job_log(j, "warning: ECR: a new token could not be fetched; the current one is used");
	start_build(j, login->config_json);
}

/* ECR: the app's repository must exist before the push, and the build may
 * pull from the registry (FROM, cache): both before the build starts. */
static void step_docker_build(struct job *j)
{
	struct builder *b = j->b;
	if (!b->ecr) {
		start_build(j, b->registry_config);
		return;
	}
	char repo[ECR_REPOSITORY_NAME_MAX + 1];
	snprintf(repo, sizeof repo, "%s%s", b->prefix, j->app);
	if (!ecr_repository_name_valid(repo)) {
		job_fail(j, "service %s: \"%s\" is not a repository name ECR accepts (registry."
			 "repository_prefix)", j->service->string, repo);
		return;
	}
	j->login_call = ecrauth_prepare(b->ecr, repo, build_login_done, j);
	if (!j->login_call) {
		job_fail(j, "service %s: the ECR login could not start", j->service->string);
		return;
	}
	j->inflight = IF_LOGIN;
}

static void context_done(int rc, const char *error, const struct context_stats *st, void *arg)
{
	struct job *j = arg;
	j->ctx_job = NULL;
	if (job_gone(j))
		return;
	if (rc < 0) {
		job_fail(j, "service %s: build context: %s", j->service->string, error);
		return;
	}
	job_log(j, "build context of %s: %" PRIu64 " entries, %" PRIu64 " bytes (%" PRIu64
		   " left out), %" PRIu64 " bytes compressed",
		j->service->string, st->files, st->bytes, st->excluded, st->archive_bytes);
	step_docker_build(j);
}

static void pull_done(const struct docker_result *res, void *arg)
{
	struct job *j = arg;
	j->docker_call = 0;
	if (job_gone(j))
		return;
	const char *image = cJSON_GetObjectItemCaseSensitive(j->service, "image")->valuestring;
	if (res->error == DOCKER_OK && res->digest) {
		job_log(j, "service %s: %s is %s", j->service->string, image, res->digest);
		add_image(j, image, res->digest);
	} else {
		job_log(j, "warning: service %s: the digest of %s is unknown (%s): it is used as "
			   "given",
			j->service->string, image,
			res->error != DOCKER_OK ? res->message : "no digest");
		add_image(j, image, NULL);
	}
	next_service(j);
}

static void start_pull(struct job *j, const char *auth_json)
{
	const char *image = cJSON_GetObjectItemCaseSensitive(j->service, "image")->valuestring;
	j->docker_call = docker_image_pull(j->b->c->docker, image, auth_json, 10 * 60 * 1000, NULL,
					   pull_done, j);
	if (!j->docker_call) {
		job_fail(j, "service %s: docker pull could not start", j->service->string);
		return;
	}
	j->inflight = IF_DOCKER;
}

static void pull_login_done(const struct ecrauth_login *login, const char *error, void *arg)
{
	struct job *j = arg;
	j->login_call = 0;
	if (job_gone(j))
		return;
	if (!login) {
		job_fail(j, "service %s: ECR login for the pull: %s", j->service->string, error);
		return;
	}
	start_pull(j, login->auth_json);
}

static void step_service(struct job *j)
{
	struct builder *b = j->b;
	if (!j->service) {
		step_complete(j);
		return;
	}
	const cJSON *svc = j->service;
	const cJSON *build = cJSON_GetObjectItemCaseSensitive(svc, "build");
	if (!cJSON_IsObject(build)) {
		/* A prebuilt image: pulled to learn its digest (and to fail early when
		 * it does not exist). Our registry's credentials go only to it. */
		const char *image = cJSON_GetObjectItemCaseSensitive(svc, "image")->valuestring;
		size_t rl = strlen(b->registry);
		bool ours = !strncmp(image, b->registry, rl) && image[rl] == '/';
		job_log(j, "service %s: resolving %s", svc->string, image);
		if (ours && b->ecr) {
			j->login_call = ecrauth_prepare(b->ecr, NULL, pull_login_done, j);
			if (!j->login_call) {
				job_fail(j, "service %s: the ECR login could not start", svc->string);
				return;
			}
			j->inflight = IF_LOGIN;
			return;
		}
		start_pull(j, ours ? b->registry_auth : NULL);
		return;
	}
	j->push_retried = false;
	snprintf(j->image_ref, sizeof j->image_ref, "%s/%s%s:%s.%s", b->registry, b->prefix, j->app,
		 svc->string, j->build_id);
	char path[FILE_PATH];
	snprintf(path, sizeof path, "%s/context-%s.tar.gz", j->ws, svc->string);
	struct context_opts o = {
		.root = j->src,
		.context = cJSON_GetObjectItemCaseSensitive(build, "context")->valuestring,
		.dockerfile = cJSON_GetObjectItemCaseSensitive(build, "dockerfile")->valuestring,
		.out_path = path,
		.max_bytes = b->context_max,
		.max_files = b->context_files_max,
	};
	struct err err;
	j->ctx_job = context_build_async(b->c->workers, &o, context_done, j, &err);
	if (!j->ctx_job) {
		job_fail(j, "service %s: build context: %s", svc->string, err.msg);
		return;
	}
	j->inflight = IF_WAIT;
}

static void step_complete(struct job *j)
{
	struct finish *f = calloc(1, sizeof *f);
	if (!f) {
		job_fail(j, "out of memory");
		return;
	}
	f->status = "complete";
	f->delivery_status = "built";
	f->images = cJSON_PrintUnformatted(j->images);
	f->manifest = cJSON_PrintUnformatted(j->manifest);
	if (!f->images || !f->manifest) {
		finish_free(f);
		job_fail(j, "out of memory");
		return;
	}
	int64_t secs = (clock_mono_ms() - j->started_mono) / 1000;
	job_log(j, "build %s complete in %" PRId64 " s", j->build_id, secs);
	ev_timer_stop(j->b->c->loop, &j->timeout);
	submit_finish(j, f);
}

/* ---- the builder ------------------------------------------------------------ */

static void job_start(struct job *j)
{
	struct builder *b = j->b;
	j->next = b->jobs;
	b->jobs = j;
	b->running++;
	j->started_mono = clock_mono_ms();
	ev_timer_set(&j->timeout, (double)b->timeout_ms / 1000.0, 0.);
	ev_timer_start(b->c->loop, &j->timeout);
	if (j->kind == JOB_DELIVERY) {
		job_log(j, "delivery %" PRId64 ": %s", j->delivery_id, j->description);
		log_info("build.delivery", "app=%s delivery=%" PRId64 " sha=%s", j->app,
			 j->delivery_id, j->sha);
	} else {
		job_log(j, "build %s: %s", j->build_id, j->description);
		log_info("build.start", "app=%s build=%s sha=%s upload=%d", j->app, j->build_id,
			 j->sha, j->context_path != NULL);
	}
	if (!j->context_path) {
		if (j->key.len == 0) {
			job_fail(j, "app %s has no deploy key", j->app);
			return;
		}
		if (!j->url[0]) {
			job_fail(j, "app %s has no repository URL", j->app);
			return;
		}
		if (j->url[0] == '-') {
			job_fail(j, "the repository URL %s is not valid", j->url);
			return;
		}
	}
	run_blocking(j, prepare_fn, step_prepared);
}

static void scan_done(int rc, void *arg)
{
	struct scan *s = arg;
	struct builder *b = s->b;
	b->scanning = false;
	free(s->busy);
	bool again = b->rescan || (rc == 0 && (s->found || s->again));
	b->rescan = false;
	if (b->freed) { /* builder_free ran meanwhile: the claimed row waits for the next start */
		job_destroy(s->job);
		free(s);
		free(b);
		return;
	}
	if (rc == 0 && s->found)
		job_start(s->job);
	else
		job_destroy(s->job);
	free(s);
	if (again)
		builder_kick(b);
}

void builder_kick(struct builder *b)
{
	if (!b)
		return;
	if (b->scanning) {
		b->rescan = true;
		return;
	}
	if (b->running >= (size_t)b->concurrency)
		return; /* job_end kicks */
	struct scan *s = calloc(1, sizeof *s);
	if (!s)
		return;
	s->b = b;
	s->now_ms = clock_wall_ms();
	s->busy = calloc(b->running + 1, sizeof *s->busy);
	s->job = job_new(b);
	if (!s->busy || !s->job) {
		free(s->busy);
		if (s->job)
			job_destroy(s->job);
		free(s);
		return;
	}
	for (struct job *j = b->jobs; j; j = j->next)
		copy(s->busy[s->nbusy++], APP_MAX, j->app);
	b->scanning = true;
	if (store_submit(b->c->store, scan_fn, scan_done, s) < 0) {
		b->scanning = false;
		free(s->busy);
		job_destroy(s->job);
		free(s);
	}
}

static char *registry_json(const char *host, const char *user, const char *password,
			   bool config)
{
	cJSON *auth = cJSON_CreateObject();
	if (!auth)
		return NULL;
	cJSON_AddStringToObject(auth, "username", user);
	cJSON_AddStringToObject(auth, "password", password ? password : "");
	cJSON *doc = auth;
	if (config) {
		doc = cJSON_CreateObject();
		if (!doc) {
			cJSON_Delete(auth);
			return NULL;
		}
		cJSON_AddItemToObject(doc, host, auth);
	} else {
		cJSON_AddStringToObject(auth, "serveraddress", host);
	}
	char *s = cJSON_PrintUnformatted(doc);
	cJSON_Delete(doc);
	return s;
}

struct builder *builder_new(struct coord *c, struct err *err)
{
	struct builder *b = calloc(1, sizeof *b);
	if (!b) {
		err_set(err, "out of memory");
		return NULL;
	}
	b->c = c;
	b->concurrency = (int)config_int(c->cfg, "builds.concurrency");
	b->timeout_ms = config_ms(c->cfg, "builds.timeout");
	b->log_max = (size_t)config_size(c->cfg, "builds.log_max");
	b->context_max = (uint64_t)config_size(c->cfg, "builds.context_max");
	b->context_files_max = (uint64_t)config_int(c->cfg, "builds.context_files_max");
	if (b->concurrency < 1)
		b->concurrency = 1;
	if (b->timeout_ms <= 0)
		b->timeout_ms = 30 * 60 * 1000;
	if (b->log_max < 4096)
		b->log_max = 4096;
	copy(b->registry, sizeof b->registry, config_str(c->cfg, "registry.host"));
	int ecr = ecrauth_settings(c->cfg, b->registry, sizeof b->registry, err);
	if (ecr < 0 || (ecr && !(b->ecr = ecrauth_from_config(c->loop, c->http, c->cfg, err)))) {
		builder_free(b);
		return NULL;
	}
	copy(b->prefix, sizeof b->prefix, ecrauth_repository_prefix(c->cfg, ecr > 0));
	copy(b->ssh, sizeof b->ssh, config_str(c->cfg, "git.ssh"));
	const char *user = config_str(c->cfg, "registry.username");
	if (user && *user) {
		const char *pw = config_str(c->cfg, "registry.password");
		b->registry_auth = registry_json(b->registry, user, pw, false);
		b->registry_config = registry_json(b->registry, user, pw, true);
		if (!b->registry_auth || !b->registry_config) {
			builder_free(b);
			err_set(err, "out of memory");
			return NULL;
		}
	}
	snprintf(b->git_dir, sizeof b->git_dir, "%s/git", c->data_dir);
	snprintf(b->work_dir, sizeof b->work_dir, "%s/work", c->data_dir);
	/* Start-up: workspaces of a previous run are garbage (their builds were
	 * marked failed). */
	remove_tree(b->work_dir);
	if (mkdirs(b->git_dir, 0700, err) < 0 || mkdirs(b->work_dir, 0700, err) < 0) {
		builder_free(b);
		return NULL;
	}
	return b;
}

void builder_free(struct builder *b)
{
	if (!b)
		return;
	struct ev_loop *loop = b->c->loop;
	struct job *next;
	for (struct job *j = b->jobs; j; j = next) {
		next = j->next;
		ev_timer_stop(loop, &j->timeout);
		log_flush(j);
		ev_timer_stop(loop, &j->flush);
		switch (j->inflight) {
		case IF_PROC:
			proc_free(j->proc);
			j->proc = NULL;
			break;
		case IF_DOCKER:
			if (b->c->docker)
				docker_cancel(b->c->docker, j->docker_call);
			break;
		case IF_WAIT:
			if (j->ctx_job)
				context_job_cancel(j->ctx_job);
			j->orphan = true; /* its callback frees it */
			continue;
		case IF_LOGIN:
			ecrauth_cancel(b->ecr, j->login_call);
			break;
		case IF_NONE:
			break;
		}
		job_destroy(j);
	}
	b->jobs = NULL;
	b->running = 0;
	free(b->registry_auth);
	free(b->registry_config);
	b->registry_auth = b->registry_config = NULL;
	ecrauth_free(b->ecr);
	b->ecr = NULL;
	if (b->scanning) {
		b->freed = true; /* scan_done frees it */
		return;
	}
	free(b);
}

/* ---- crash recovery and cancelling queued builds ---- */

#define RECOVER_NOTIFY_MAX 256  /* Slack messages for builds a crash interrupted */

static const char SQL_RUNNING[] = "SELECT id FROM builds WHERE status = 'running' LIMIT ?";
static const char SQL_FAIL_RUNNING[] =
	"UPDATE builds SET status = 'failed', error = "
	"'the coordinator stopped while the build was running', ended_ms = ? "
	"WHERE status = 'running'";
static const char SQL_RECOVER[] =
	"UPDATE deliveries SET status = 'failed', note = 'the coordinator stopped during the build' "
	"WHERE status = 'building' AND build IN (SELECT id FROM builds WHERE status = 'failed')";

/* The builds of a store operation that failed and want a Slack message. */
struct failed_op {
	struct coord *c;
	int64_t now_ms;
	char ids[RECOVER_NOTIFY_MAX][ID_MAX];
	size_t n;          /* ids noted */
	int builds;        /* builds failed */
	int deliveries;    /* their deliveries failed */
};

static int exec_changes(struct store_tx *tx, const char *sql, int64_t now, const char *id,
			int *changes)
{
	sqlite3_stmt *st = store_stmt(tx, sql);
	if (!st)
		return -1;
	if (now)
		sqlite3_bind_int64(st, 1, now);
	if (id)
		sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
	if (store_step(tx, st) != SQLITE_DONE)
		return -1;
	*changes = sqlite3_changes(tx->db);
	return 0;
}

/* Builds that were running when the coordinator died can never finish: they
 * fail, with their deliveries. */
static int recover_fn(struct store_tx *tx, void *arg)
{
	struct failed_op *op = arg;
	sqlite3_stmt *st = store_stmt(tx, SQL_RUNNING);
	if (!st)
		return -1;
	sqlite3_bind_int(st, 1, RECOVER_NOTIFY_MAX);
	int rc;
	while ((rc = store_step(tx, st)) == SQLITE_ROW)
		copy(op->ids[op->n++], ID_MAX, store_col_text(st, 0));
	sqlite3_reset(st);
	if (rc < 0 || exec_changes(tx, SQL_FAIL_RUNNING, op->now_ms, NULL, &op->builds) < 0 ||
	    exec_changes(tx, SQL_RECOVER, 0, NULL, &op->deliveries) < 0)
		return -1;
	return 0;
}

/* The failed rows are committed: Slack is told, like for any failed build. */
static void failed_done(int rc, void *arg)
{
	struct failed_op *op = arg;
	for (size_t i = 0; rc == 0 && i < op->n; i++)
		slack_build_failed(op->c, op->ids[i]);
	free(op);
}

static void recover_done(int rc, void *arg)
{
	struct failed_op *op = arg;
	struct coord *c = op->c;
	if (rc < 0)
		log_error("build.recover_failed", "error=\"the store failed\"");
	else if (op->builds || op->deliveries)
		log_warn("coordinator.builds_interrupted", "failed=%d deliveries_failed=%d",
			 op->builds, op->deliveries);
	failed_done(rc, op);
	builder_kick(c->builder);
}

void builder_recover(struct coord *c)
{
	struct failed_op *op = calloc(1, sizeof *op);
	if (op) {
		op->c = c;
		op->now_ms = clock_wall_ms();
		if (store_submit(c->store, recover_fn, recover_done, op) == 0)
			return;
		free(op);
	}
	log_error("build.recover_failed", "error=\"out of memory or the store is busy\"");
	builder_kick(c->builder);
}

static const char SQL_CANCEL_CREATED[] =
	"UPDATE builds SET status = 'failed', error = 'cancelled', ended_ms = ? "
	"WHERE id = ? AND status = 'created'";

static int cancel_fn(struct store_tx *tx, void *arg)
{
	struct failed_op *op = arg;
	if (exec_changes(tx, SQL_CANCEL_CREATED, op->now_ms, op->ids[0], &op->builds) < 0)
		return -1;
	op->n = op->builds > 0; /* it was still queued: it failed now */
	return 0;
}

int builder_cancel(struct builder *b, const char *build_id)
{
	for (struct job *j = b->jobs; j; j = j->next) {
		if (j->build_id[0] && !strcmp(j->build_id, build_id) && !j->ended) {
			log_info("build.cancel", "app=%s build=%s", j->app, j->build_id);
			job_fail(j, "cancelled");
			return 1;
		}
	}
	struct failed_op *op = calloc(1, sizeof *op);
	if (!op)
		return -1;
	op->c = b->c;
	copy(op->ids[0], ID_MAX, build_id);
	op->now_ms = clock_wall_ms();
	if (store_submit(b->c->store, cancel_fn, failed_done, op) < 0) {
		free(op);
		return -1;
	}
	return 0;
}

size_t builder_running(const struct builder *b)
{
	return b ? b->running : 0;
}
