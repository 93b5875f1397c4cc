#include "journal.h"

#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backoff.h"
#include "buf.h"
#include "json.h"
#include "log.h"
#include "worker.h"

/* Replay reads at most this much (a journal that failed to compact for long). */
#define REPLAY_MAX ((size_t)256 << 20)
#define COMPACT_RETRY_MS 10000

struct pending {
	char *line;             /* with its '\n' */
	size_t len;
	journal_done_fn done;
	void *arg;
	struct pending *next;
};

enum batch_kind { BATCH_APPEND, BATCH_COMPACT };

/* One job on the worker thread: an append batch or a compaction. */
struct batch {
	struct journal *j;
	enum batch_kind kind;
	struct pending *head;   /* the records (append) */
	struct buf data;        /* bytes to write */
	int fd;                 /* append: the file; compact: the new file's fd out */
	uint64_t good;          /* append: offset to write at */
	int rc;
	char error[ERR_MSG_MAX];
};

struct journal {
	struct ev_loop *loop;
	struct worker_pool *pool;
	char path[PATH_MAX];
	char tmp_path[PATH_MAX];
	char dir[PATH_MAX];
	int fd;
	uint64_t size;              /* durable bytes in the file */
	size_t max_bytes;
	journal_snapshot_fn snapshot;
	void *arg;
	struct pending *head, *tail; /* not yet handed to the worker */
	size_t npending;             /* queued + in flight */
	bool busy;                   /* a batch is on the worker */
	bool closing;                /* journal_free runs: no new batch */
	struct backoff_state retry;
	ev_timer retry_timer;
	int64_t next_compact_ms;     /* after a failed compaction */
	unsigned compactions;
};

static int fsync_dir(const char *dir, struct err *err)
{
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return err_set(err, "open %s: %s", dir, strerror(errno));
	int rc = fsync(dfd);
	int e = errno;
	close(dfd);
	if (rc < 0)
		return err_set(err, "fsync %s: %s", dir, strerror(e));
	return 0;
}

static int write_all(int fd, const char *p, size_t n, off_t off)
{
	while (n > 0) {
		ssize_t w = off >= 0 ? pwrite(fd, p, n, off) : write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += w;
		n -= (size_t)w;
		if (off >= 0)
			off += w;
	}
	return 0;
}

int journal_write_file(const char *path, const void *data, size_t len, unsigned mode,
		       struct err *err)
{
	char tmp[PATH_MAX], dir[PATH_MAX];
	if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
		return err_set(err, "%s: path too long", path);
	snprintf(dir, sizeof dir, "%s", path);
	char *slash = strrchr(dir, '/');
	if (slash == dir)
		dir[1] = '\0';
	else if (slash)
		*slash = '\0';
	else
		snprintf(dir, sizeof dir, ".");
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	if (fd < 0)
		return err_set(err, "create %s: %s", tmp, strerror(errno));
	if (fchmod(fd, mode) < 0 || write_all(fd, data, len, -1) < 0 || fsync(fd) < 0) {
		int e = errno;
		close(fd);
		unlink(tmp);
		return err_set(err, "write %s: %s", tmp, strerror(e));
	}
	if (close(fd) < 0) {
		int e = errno;
		unlink(tmp);
		return err_set(err, "close %s: %s", tmp, strerror(e));
	}
	if (rename(tmp, path) < 0) {
		int e = errno;
		unlink(tmp);
		return err_set(err, "rename %s: %s", tmp, strerror(e));
	}
	return fsync_dir(dir, err);
}

/* ---- worker thread ---- */

static void batch_work(void *arg)
{
	struct batch *b = arg;
	struct err err = {{0}};
	b->rc = 0;
	if (b->kind == BATCH_APPEND) {
		if (write_all(b->fd, b->data.data, b->data.len, (off_t)b->good) < 0 ||
		    fdatasync(b->fd) < 0) {
			int e = errno;
			snprintf(b->error, sizeof b->error, "write %.300s: %s", b->j->path, strerror(e));
			/* Cut the partial write off so the retry starts on a clean line. */
			if (ftruncate(b->fd, (off_t)b->good) == 0)
				fdatasync(b->fd);
			b->rc = -1;
		}
		return;
	}
	if (journal_write_file(b->j->path, b->data.data, b->data.len, 0600, &err) < 0) {
		snprintf(b->error, sizeof b->error, "%s", err.msg);
		b->rc = -1;
		return;
	}
	b->fd = open(b->j->path, O_WRONLY | O_CLOEXEC);
	if (b->fd < 0) {
		/* The compacted file is in place; the old fd points to the unlinked one. */
		snprintf(b->error, sizeof b->error, "reopen %.300s: %s", b->j->path, strerror(errno));
		b->rc = -2;
	}
}

/* ---- loop thread ---- */

static void kick(struct journal *j);

static void finish_records(struct pending *p)
{
	while (p) {
		struct pending *next = p->next;
		if (p->done)
			p->done(p->arg);
		free(p->line);
		free(p);
		p = next;
	}
}

static void on_retry_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	struct journal *j = w->data;
	kick(j);
}

static void batch_done(void *arg)
{
	struct batch *b = arg;
	struct journal *j = b->j;
	j->busy = false;
	if (b->kind == BATCH_APPEND) {
		if (b->rc < 0) {
			/* Put the records back in front and retry later. */
			struct pending *last = b->head;
			while (last->next)
				last = last->next;
			last->next = j->head;
			j->head = b->head;
			if (!j->tail)
				j->tail = last;
			int64_t delay = backoff_state_next(&j->retry);
			log_error("journal.write_failed", "error=\"%s\" retry_ms=%lld", b->error,
				  (long long)delay);
			ev_timer_set(&j->retry_timer, (double)delay / 1000.0, 0.0);
			ev_timer_start(j->loop, &j->retry_timer);
			buf_free(&b->data);
			free(b);
			return;
		}
		backoff_state_reset(&j->retry);
		j->size = b->good + b->data.len;
		size_t n = 0;
		for (struct pending *p = b->head; p; p = p->next)
			n++;
		j->npending -= n;
		buf_free(&b->data);
		struct pending *head = b->head;
		free(b);
		finish_records(head);
	} else {
		if (b->rc == 0 || b->rc == -2) {
			close(j->fd);
			j->fd = b->fd;
			j->size = b->data.len;
			j->compactions++;
			log_info("journal.compacted", "bytes=%zu", b->data.len);
		}
		if (b->rc < 0) {
			log_error("journal.compact_failed", "error=\"%s\"", b->error);
			j->next_compact_ms = (int64_t)(ev_now(j->loop) * 1000) + COMPACT_RETRY_MS;
		}
		buf_free(&b->data);
		free(b);
		if (j->fd < 0) {
			/* Cannot append any more: retry opening through the append path. */
			j->fd = open(j->path, O_WRONLY | O_CLOEXEC);
		}
	}
	kick(j);
}

static int start_compaction(struct journal *j)
{
	cJSON *arr = cJSON_CreateArray();
	if (!arr || j->snapshot(arr, j->arg) < 0) {
		cJSON_Delete(arr);
		return -1;
	}
	struct batch *b = calloc(1, sizeof *b);
	if (!b) {
		cJSON_Delete(arr);
		return -1;
	}
	b->j = j;
	b->kind = BATCH_COMPACT;
	buf_init(&b->data, REPLAY_MAX);
	int rc = 0;
	for (cJSON *it = arr->child; it && rc == 0; it = it->next)
		rc = json_to_buf(it, &b->data) < 0 || buf_append_byte(&b->data, '\n') < 0 ? -1 : 0;
	cJSON_Delete(arr);
	if (rc < 0 || worker_submit(j->pool, batch_work, batch_done, b) < 0) {
		buf_free(&b->data);
		free(b);
		return -1;
	}
	j->busy = true;
	return 0;
}

/* Hands the next batch to the worker when it is free. */
static void kick(struct journal *j)
{
	if (j->busy || j->closing || ev_is_active(&j->retry_timer))
		return;
	if (!j->head) {
		int64_t now = (int64_t)(ev_now(j->loop) * 1000);
		if (j->snapshot && j->size > j->max_bytes && now >= j->next_compact_ms &&
		    start_compaction(j) < 0)
			j->next_compact_ms = now + COMPACT_RETRY_MS;
		return;
	}
	struct batch *b = calloc(1, sizeof *b);
	if (!b)
		goto later;
	b->j = j;
	b->kind = BATCH_APPEND;
	b->fd = j->fd;
	b->good = j->size;
	buf_init(&b->data, SIZE_MAX / 2);
	for (struct pending *p = j->head; p; p = p->next) {
		if (buf_append(&b->data, p->line, p->len) < 0) {
			buf_free(&b->data);
			free(b);
			goto later;
		}
	}
	b->head = j->head;
	j->head = j->tail = NULL;
	if (j->fd < 0 || worker_submit(j->pool, batch_work, batch_done, b) < 0) {
		j->head = b->head;
		for (j->tail = j->head; j->tail->next; j->tail = j->tail->next)
			;
		buf_free(&b->data);
		free(b);
		goto later;
	}
	j->busy = true;
	return;
later:
	ev_timer_set(&j->retry_timer, 1.0, 0.0);
	ev_timer_start(j->loop, &j->retry_timer);
}

int journal_append(struct journal *j, const cJSON *rec, journal_done_fn done, void *arg,
		   struct err *err)
{
	if (!cJSON_IsObject(rec))
		return err_set(err, "journal: a record must be an object");
	char *text = json_print(rec, JOURNAL_RECORD_MAX - 1, err);
	if (!text)
		return err_prefix(err, "journal");
	struct pending *p = calloc(1, sizeof *p);
	size_t n = strlen(text);
	char *line = malloc(n + 1);
	if (!p || !line) {
		free(p);
		free(line);
		cJSON_free(text);
		return err_set(err, "journal: out of memory");
	}
	memcpy(line, text, n);
	line[n] = '\n';
	cJSON_free(text);
	p->line = line;
	p->len = n + 1;
	p->done = done;
	p->arg = arg;
	if (j->tail)
		j->tail->next = p;
	else
		j->head = p;
	j->tail = p;
	j->npending++;
	kick(j);
	return 0;
}

size_t journal_pending(const struct journal *j) { return j->npending; }
uint64_t journal_size(const struct journal *j) { return j->size; }
unsigned journal_compactions(const struct journal *j) { return j->compactions; }

/* ---- open and replay ---- */

static int read_file(int fd, struct buf *out, struct err *err)
{
	char chunk[65536];
	for (;;) {
		ssize_t r = read(fd, chunk, sizeof chunk);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return err_set(err, "read: %s", strerror(errno));
		}
		if (r == 0)
			return 0;
		if (buf_append(out, chunk, (size_t)r) < 0)
			return err_set(err, "journal larger than %zu bytes", out->max);
	}
}

/* Replays the lines of text; *good gets the length of the clean prefix. */
static int replay(struct journal *j, const char *text, size_t len, journal_record_fn fn,
		  void *arg, uint64_t *good, struct err *err)
{
	size_t pos = 0, lineno = 0, records = 0, skipped = 0;
	*good = 0;
	while (pos < len) {
		const char *nl = memchr(text + pos, '\n', len - pos);
		lineno++;
		if (!nl) {
			log_warn("journal.torn_tail", "line=%zu bytes=%zu", lineno, len - pos);
			break;
		}
		size_t n = (size_t)(nl - (text + pos));
		bool last = (size_t)(nl - text) + 1 == len;
		struct err perr;
		cJSON *rec = n == 0 || n >= JOURNAL_RECORD_MAX ? NULL
				 : json_parse(text + pos, n, JOURNAL_RECORD_MAX, &perr);
		if (!rec || !cJSON_IsObject(rec)) {
			cJSON_Delete(rec);
			if (last) {
				log_warn("journal.torn_tail", "line=%zu bytes=%zu", lineno, n);
				break;
			}
			log_error("journal.bad_line", "line=%zu bytes=%zu (skipped)", lineno, n);
			skipped++;
		} else {
			records++;
			int rc = fn ? fn(rec, arg, err) : 0;
			cJSON_Delete(rec);
			if (rc < 0)
				return err_prefix(err, "%s line %zu", j->path, lineno);
		}
		pos += n + 1;
		*good = pos;
	}
	log_info("journal.replayed", "records=%zu skipped=%zu bytes=%llu", records, skipped,
		 (unsigned long long)*good);
	return 0;
}

struct journal *journal_open(struct ev_loop *loop, const struct journal_opts *opts,
			     struct err *err)
{
	struct journal *j = calloc(1, sizeof *j);
	if (!j) {
		err_set(err, "journal: out of memory");
		return NULL;
	}
	j->loop = loop;
	j->fd = -1;
	j->max_bytes = opts->max_bytes ? opts->max_bytes : JOURNAL_DEFAULT_MAX_BYTES;
	j->snapshot = opts->snapshot;
	j->arg = opts->arg;
	backoff_state_init(&j->retry, 1000, 30000);
	ev_timer_init(&j->retry_timer, on_retry_timer, 0.0, 0.0);
	j->retry_timer.data = j;
	if (snprintf(j->path, sizeof j->path, "%s/%s", opts->dir, JOURNAL_FILE) >=
	    (int)sizeof j->path) {
		err_set(err, "journal: state directory path too long");
		goto fail;
	}
	snprintf(j->dir, sizeof j->dir, "%s", opts->dir);
	/* A crash during compaction may leave the temp file: the real one is intact. */
	if (snprintf(j->tmp_path, sizeof j->tmp_path, "%s.tmp", j->path) < (int)sizeof j->tmp_path)
		unlink(j->tmp_path);
	j->fd = open(j->path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (j->fd < 0) {
		err_set(err, "journal: open %s: %s", j->path, strerror(errno));
		goto fail;
	}
	struct buf text;
	buf_init(&text, REPLAY_MAX);
	uint64_t good = 0;
	if (read_file(j->fd, &text, err) < 0 ||
	    replay(j, text.data ? text.data : "", text.len, opts->replay, opts->arg, &good,
		   err) < 0) {
		buf_free(&text);
		err_prefix(err, "journal");
		goto fail;
	}
	if (good < text.len) {
		if (ftruncate(j->fd, (off_t)good) < 0 || fsync(j->fd) < 0) {
			err_set(err, "journal: cutting the torn tail of %s: %s", j->path,
				strerror(errno));
			buf_free(&text);
			goto fail;
		}
	}
	buf_free(&text);
	j->size = good;
	if (!(j->pool = worker_pool_new(loop, 1, 1024, err))) {
		err_prefix(err, "journal");
		goto fail;
	}
	return j;
fail:
	if (j->fd >= 0)
		close(j->fd);
	free(j);
	return NULL;
}

void journal_free(struct journal *j)
{
	if (!j)
		return;
	ev_timer_stop(j->loop, &j->retry_timer);
	/* Finishes the batch in flight (its callback may queue no new batch now). */
	j->closing = true;
	worker_pool_free(j->pool);
	j->pool = NULL;
	ev_timer_stop(j->loop, &j->retry_timer);
	/* What is left is written here, on this thread. */
	struct pending *head = j->head;
	j->head = j->tail = NULL;
	if (head && j->fd >= 0) {
		bool ok = true;
		for (struct pending *p = head; p && ok; p = p->next)
			ok = write_all(j->fd, p->line, p->len, (off_t)j->size) == 0 &&
			     (j->size += p->len, true);
		if (!ok || fdatasync(j->fd) < 0)
			log_error("journal.write_failed", "error=\"%s\" at=shutdown", strerror(errno));
	}
	finish_records(head);
	if (j->fd >= 0)
		close(j->fd);
	free(j);
}
