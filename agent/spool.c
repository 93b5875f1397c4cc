#include "spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gzip.h"
#include "journal.h"
#include "log.h"
#include "worker.h"

#define DEFAULT_MAX ((uint64_t)256 << 20)
#define FILE_MAX ((size_t)32 << 20) /* compressed file read cap */
#define SEQ_STEP 1024               /* room below each entry for batches put before it */

struct spool {
	char dir[PATH_MAX - 256];
	uint64_t max_bytes;
	struct worker_pool *workers;
	void (*on_dropped)(uint64_t files, uint64_t events, void *arg);
	void *arg;
	struct spool_entry *e;     /* in seq order */
	size_t n, cap;
	uint64_t next_seq;
	uint64_t bytes;
	uint64_t events;
	uint64_t dropped_events;
	size_t writing;
};

enum job_kind { J_WRITE, J_READ, J_UNLINK };

struct job {
	enum job_kind kind;
	struct spool *sp;
	uint64_t seq, key, events;
	char path[PATH_MAX];
	char *header;
	struct logbatch batch;
	int rc;
	uint64_t size;
	struct err err;
	spool_written_fn written;
	spool_read_fn read;
	void *arg;
};

/* ---- record coding ---- */

static void put32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)(v >> 24);
	p[1] = (unsigned char)(v >> 16);
	p[2] = (unsigned char)(v >> 8);
	p[3] = (unsigned char)v;
}

static uint32_t get32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

int spool_encode(const char *header, const struct logbatch *b, struct buf *out)
{
	size_t hl = strlen(header);
	if (hl > SPOOL_HEADER_MAX)
		return -1;
	unsigned char n4[4];
	int rc = buf_append(out, SPOOL_MAGIC, 8);
	put32(n4, (uint32_t)hl);
	rc |= buf_append(out, n4, 4);
	rc |= buf_append(out, header, hl);
	put32(n4, (uint32_t)b->n);
	rc |= buf_append(out, n4, 4);
	for (size_t i = 0; i < b->n && rc == 0; i++) {
		const struct logbatch_event *e = &b->ev[i];
		unsigned char h[13];
		uint64_t ts = (uint64_t)e->ts_ms;
		put32(h, (uint32_t)(ts >> 32));
		put32(h + 4, (uint32_t)ts);
		h[8] = e->stream;
		put32(h + 9, e->len);
		rc |= buf_append(out, h, sizeof h);
		rc |= buf_append(out, b->text.data + e->off, e->len);
	}
	return rc ? -1 : 0;
}

int spool_decode(const char *data, size_t len, struct logbatch *b, char **header,
		 struct err *err)
{
	const unsigned char *p = (const unsigned char *)data, *end = p + len;
	*header = NULL;
	if (len < 16 || memcmp(p, SPOOL_MAGIC, 8) != 0)
		return err_set(err, "not a spool record");
	p += 8;
	uint32_t hl = get32(p);
	p += 4;
	if (hl > SPOOL_HEADER_MAX || (size_t)(end - p) < (size_t)hl + 4)
		return err_set(err, "bad header length");
	*header = strndup((const char *)p, hl);
	if (!*header)
		return err_set(err, "out of memory");
	p += hl;
	uint32_t count = get32(p);
	p += 4;
	if (count > LOGBATCH_MAX_EVENTS)
		goto bad;
	for (uint32_t i = 0; i < count; i++) {
		if (end - p < 13)
			goto bad;
		uint64_t ts = (uint64_t)get32(p) << 32 | get32(p + 4);
		int stream = p[8];
		uint32_t ml = get32(p + 9);
		p += 13;
		if (ml == 0 || ml > LOGBATCH_EVENT_MAX || (size_t)(end - p) < ml)
			goto bad;
		/* The escaped size only matters while a batch is being filled. */
		if (logbatch_add(b, (int64_t)ts, stream, (const char *)p, ml, 0, 0) < 0) {
			free(*header);
			*header = NULL;
			return err_set(err, "out of memory");
		}
		p += ml;
	}
	if (p != end)
		goto bad;
	return 0;
bad:
	free(*header);
	*header = NULL;
	logbatch_reset(b);
	return err_set(err, "truncated or malformed record");
}

/* ---- index ---- */

static void file_path(const struct spool *sp, const struct spool_entry *e, char *out, size_t cap)
{
	snprintf(out, cap, "%s/%016" PRIx64 "-%" PRIu64 "-%016" PRIx64 ".gz", sp->dir, e->seq,
		 e->events, e->key);
}

static struct spool_entry *find(const struct spool *sp, uint64_t seq)
{
	size_t lo = 0, hi = sp->n;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (sp->e[mid].seq < seq)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < sp->n && sp->e[lo].seq == seq ? &sp->e[lo] : NULL;
}

static int insert(struct spool *sp, const struct spool_entry *e)
{
	if (sp->n == sp->cap) {
		size_t nc = sp->cap ? sp->cap * 2 : 64;
		struct spool_entry *ne = realloc(sp->e, nc * sizeof *ne);
		if (!ne)
			return -1;
		sp->e = ne;
		sp->cap = nc;
	}
	size_t i = sp->n;
	while (i > 0 && sp->e[i - 1].seq > e->seq) {
		sp->e[i] = sp->e[i - 1];
		i--;
	}
	sp->e[i] = *e;
	sp->n++;
	return 0;
}

static void erase(struct spool *sp, struct spool_entry *e)
{
	sp->bytes -= e->bytes;
	sp->events -= e->events;
	size_t i = (size_t)(e - sp->e);
	memmove(&sp->e[i], &sp->e[i + 1], (sp->n - i - 1) * sizeof *e);
	sp->n--;
}

static int cmp_seq(const void *a, const void *b)
{
	const struct spool_entry *x = a, *y = b;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static int scan(struct spool *sp, struct err *err)
{
	DIR *d = opendir(sp->dir);
	if (!d)
		return err_set(err, "open %s: %s", sp->dir, strerror(errno));
	struct dirent *de;
	while ((de = readdir(d))) {
		const char *name = de->d_name;
		if (name[0] == '.')
			continue;
		char path[PATH_MAX + 512];
		snprintf(path, sizeof path, "%s/%s", sp->dir, name);
		size_t nl = strlen(name);
		if (nl > 4 && strcmp(name + nl - 4, ".tmp") == 0) {
			unlink(path); /* a write the last run did not finish */
			continue;
		}
		uint64_t seq, events, key;
		int used = 0;
		if (sscanf(name, "%16" SCNx64 "-%" SCNu64 "-%16" SCNx64 ".gz%n", &seq, &events, &key,
			   &used) != 3 || (size_t)used != nl) {
			log_warn("spool.unknown_file", "path=%s: ignored", path);
			continue;
		}
		struct stat st;
		if (stat(path, &st) < 0)
			continue;
		struct spool_entry e = {.seq = seq, .key = key, .events = events,
					.bytes = (uint64_t)st.st_size};
		if (sp->n == sp->cap) {
			size_t nc = sp->cap ? sp->cap * 2 : 64;
			struct spool_entry *ne = realloc(sp->e, nc * sizeof *ne);
			if (!ne) {
				closedir(d);
				return err_set(err, "out of memory");
			}
			sp->e = ne;
			sp->cap = nc;
		}
		sp->e[sp->n++] = e;
		sp->bytes += e.bytes;
		sp->events += e.events;
		if (seq >= sp->next_seq)
			sp->next_seq = seq + SEQ_STEP;
	}
	closedir(d);
	if (sp->n)
		qsort(sp->e, sp->n, sizeof *sp->e, cmp_seq);
	return 0;
}

static int mkdir_p(const char *path, struct err *err)
{
	char tmp[PATH_MAX];
	snprintf(tmp, sizeof tmp, "%s", path);
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(tmp, 0700) < 0 && errno != EEXIST)
			return err_set(err, "mkdir %s: %s", tmp, strerror(errno));
		*p = '/';
	}
	if (mkdir(tmp, 0700) < 0 && errno != EEXIST)
		return err_set(err, "mkdir %s: %s", tmp, strerror(errno));
	return 0;
}

struct spool *spool_open(const struct spool_opts *o, struct err *err)
{
	if (!o || !o->dir || !o->workers) {
		err_set(err, "spool: dir and workers are required");
		return NULL;
	}
	struct spool *sp = calloc(1, sizeof *sp);
	if (!sp) {
		err_set(err, "out of memory");
		return NULL;
	}
	if (snprintf(sp->dir, sizeof sp->dir, "%s", o->dir) >= (int)sizeof sp->dir) {
		free(sp);
		err_set(err, "spool: path too long");
		return NULL;
	}
	sp->max_bytes = o->max_bytes ? o->max_bytes : DEFAULT_MAX;
	sp->workers = o->workers;
	sp->on_dropped = o->on_dropped;
	sp->arg = o->arg;
	sp->next_seq = SEQ_STEP;
	if (mkdir_p(sp->dir, err) < 0 || scan(sp, err) < 0) {
		free(sp->e);
		free(sp);
		return NULL;
	}
	if (sp->n)
		log_info("spool.found", "dir=%s files=%zu bytes=%" PRIu64 " events=%" PRIu64
			 ": sent before newer output of the same streams", sp->dir, sp->n, sp->bytes,
			 sp->events);
	return sp;
}

void spool_free(struct spool *sp)
{
	if (!sp)
		return;
	free(sp->e);
	free(sp);
}

/* ---- cap ---- */

static void unlink_later(struct spool *sp, const struct spool_entry *e);

static void enforce_cap(struct spool *sp)
{
	uint64_t files = 0, events = 0;
	size_t i = 0;
	while (sp->bytes > sp->max_bytes && i < sp->n) {
		struct spool_entry *e = &sp->e[i];
		if (e->writing || e->busy) {
			i++;
			continue;
		}
		files++;
		events += e->events;
		unlink_later(sp, e);
		erase(sp, e);
	}
	if (files) {
		sp->dropped_events += events;
		log_error("spool.dropped", "files=%" PRIu64 " events=%" PRIu64 " spool_max=%" PRIu64
			  ": the oldest spooled logs were deleted to stay under the cap", files,
			  events, sp->max_bytes);
		if (sp->on_dropped)
			sp->on_dropped(files, events, sp->arg);
	}
}

/* ---- jobs ---- */

static void job_free(struct job *j)
{
	free(j->header);
	logbatch_free(&j->batch);
	free(j);
}

static void write_work(void *arg)
{
	struct job *j = arg;
	struct buf rec, gz;
	buf_init(&rec, SPOOL_RECORD_MAX);
	buf_init(&gz, FILE_MAX);
	j->rc = -1;
	if (spool_encode(j->header, &j->batch, &rec) < 0) {
		err_set(&j->err, "encoding the record failed (out of memory)");
	} else if (gzip_compress(rec.data, rec.len, 1, &gz, &j->err) == 0 &&
		   journal_write_file(j->path, gz.data, gz.len, 0600, &j->err) == 0) {
		j->rc = 0;
		j->size = gz.len;
	}
	buf_free(&rec);
	buf_free(&gz);
}

static void write_done(void *arg)
{
	struct job *j = arg;
	struct spool *sp = j->sp;
	struct spool_entry *e = find(sp, j->seq);
	struct logbatch *back = NULL;
	sp->writing--;
	if (j->rc == 0 && e) {
		e->writing = 0;
		e->bytes = j->size;
		sp->bytes += j->size;
	} else {
		if (j->rc < 0)
			log_error("spool.write_failed", "path=%s error=\"%s\"", j->path, j->err.msg);
		if (e)
			erase(sp, e);
		back = &j->batch;
	}
	if (j->written)
		j->written(j->rc == 0, j->seq, back, j->arg);
	job_free(j);
	enforce_cap(sp);
}

int spool_write(struct spool *sp, uint64_t key, const char *header, struct logbatch *b,
		int first, spool_written_fn done, void *arg)
{
	if (strlen(header) > SPOOL_HEADER_MAX || b->n == 0)
		return -1;
	struct job *j = calloc(1, sizeof *j);
	if (!j)
		return -1;
	j->kind = J_WRITE;
	j->sp = sp;
	j->seq = sp->next_seq;
	if (first) {
		for (size_t i = 0; i < sp->n; i++) {
			if (sp->e[i].key != key)
				continue;
			/* Just below the key's oldest entry, unless that slot is taken. */
			uint64_t s = sp->e[i].seq - 1;
			if (sp->e[i].seq > 1 && !find(sp, s))
				j->seq = s;
			else
				log_warn("spool.order", "key=%016" PRIx64 ": no room before its oldest "
					 "batch; this one is sent after it", key);
			break;
		}
	}
	j->key = key;
	j->events = b->n;
	j->written = done;
	j->arg = arg;
	logbatch_init(&j->batch);
	struct spool_entry e = {.seq = j->seq, .key = key, .events = b->n, .writing = 1};
	file_path(sp, &e, j->path, sizeof j->path);
	if (!(j->header = strdup(header)) || insert(sp, &e) < 0) {
		free(j->header);
		free(j);
		return -1;
	}
	sp->events += e.events;
	logbatch_move(&j->batch, b);
	if (worker_submit(sp->workers, write_work, write_done, j) < 0) {
		logbatch_move(b, &j->batch);
		erase(sp, find(sp, e.seq));
		free(j->header);
		free(j);
		return -1;
	}
	if (j->seq == sp->next_seq)
		sp->next_seq += SEQ_STEP;
	sp->writing++;
	return 0;
}

size_t spool_pending_writes(const struct spool *sp)
{
	return sp->writing;
}

struct read_sink {
	struct buf *out;
};

static int read_sink_fn(const void *data, size_t len, void *arg, struct err *err)
{
	struct read_sink *s = arg;
	if (buf_append(s->out, data, len) < 0)
		return err_set(err, "record over %zu bytes", SPOOL_RECORD_MAX);
	return 0;
}

static void read_work(void *arg)
{
	struct job *j = arg;
	j->rc = -1;
	int fd = open(j->path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		err_set(&j->err, "open %s: %s", j->path, strerror(errno));
		return;
	}
	struct buf rec;
	buf_init(&rec, SPOOL_RECORD_MAX);
	struct read_sink sink = {&rec};
	struct gzip_decoder *d = gzip_decoder_new(SPOOL_RECORD_MAX, read_sink_fn, &sink, &j->err);
	char chunk[65536];
	ssize_t r = 0;
	int ok = d != NULL;
	while (ok && (r = read(fd, chunk, sizeof chunk)) > 0)
		ok = gzip_decoder_feed(d, chunk, (size_t)r, &j->err) == 0;
	if (ok && r < 0) {
		ok = 0;
		err_set(&j->err, "read %s: %s", j->path, strerror(errno));
	}
	if (ok)
		ok = gzip_decoder_finish(d, &j->err) == 0;
	gzip_decoder_free(d);
	close(fd);
	if (ok && spool_decode(rec.data, rec.len, &j->batch, &j->header, &j->err) == 0)
		j->rc = 0;
	buf_free(&rec);
}

static void read_done(void *arg)
{
	struct job *j = arg;
	struct spool *sp = j->sp;
	struct spool_entry *e = find(sp, j->seq);
	if (!e) {
		/* Removed meanwhile (it cannot be dropped while busy): nothing to hand over. */
		job_free(j);
		return;
	}
	struct logbatch *b = malloc(sizeof *b);
	if (j->rc == 0 && b) {
		logbatch_move(b, &j->batch);
		j->read(1, j->seq, b, j->header, "", j->arg);
	} else {
		free(b);
		j->read(0, j->seq, NULL, NULL, j->rc == 0 ? "out of memory" : j->err.msg, j->arg);
	}
	job_free(j);
}

int spool_read(struct spool *sp, uint64_t seq, spool_read_fn done, void *arg)
{
	struct spool_entry *e = find(sp, seq);
	if (!e || e->writing || e->busy)
		return -1;
	struct job *j = calloc(1, sizeof *j);
	if (!j)
		return -1;
	j->kind = J_READ;
	j->sp = sp;
	j->seq = seq;
	j->read = done;
	j->arg = arg;
	logbatch_init(&j->batch);
	file_path(sp, e, j->path, sizeof j->path);
	if (worker_submit(sp->workers, read_work, read_done, j) < 0) {
		free(j);
		return -1;
	}
	e->busy = 1;
	return 0;
}

void spool_release(struct spool *sp, uint64_t seq)
{
	struct spool_entry *e = find(sp, seq);
	if (e)
		e->busy = 0;
}

static void unlink_work(void *arg)
{
	struct job *j = arg;
	if (unlink(j->path) < 0 && errno != ENOENT) {
		log_error("spool.unlink_failed", "path=%s error=\"%s\"", j->path, strerror(errno));
		return;
	}
	/* Durable, so a delivered batch is not delivered again after a crash. */
	int fd = open(j->sp->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		fsync(fd);
		close(fd);
	}
}

static void unlink_done(void *arg)
{
	job_free(arg);
}

static void unlink_later(struct spool *sp, const struct spool_entry *e)
{
	struct job *j = calloc(1, sizeof *j);
	if (!j)
		return;
	j->kind = J_UNLINK;
	j->sp = sp;
	logbatch_init(&j->batch);
	file_path(sp, e, j->path, sizeof j->path);
	if (worker_submit(sp->workers, unlink_work, unlink_done, j) < 0) {
		/* The pool is full or stopping: do it here, it is one syscall. */
		unlink(j->path);
		free(j);
	}
}

void spool_remove(struct spool *sp, uint64_t seq)
{
	struct spool_entry *e = find(sp, seq);
	if (!e || e->writing)
		return;
	unlink_later(sp, e);
	erase(sp, e);
}

const struct spool_entry *spool_next(const struct spool *sp, int (*skip)(uint64_t key, void *arg),
				     void *arg)
{
	for (size_t i = 0; i < sp->n; i++) {
		const struct spool_entry *e = &sp->e[i];
		int blocked = 0;
		/* The oldest entry of a key goes first, and alone. */
		for (size_t k = 0; k < i && !blocked; k++)
			blocked = sp->e[k].key == e->key;
		if (blocked || e->writing || e->busy)
			continue;
		if (skip && skip(e->key, arg))
			continue;
		return e;
	}
	return NULL;
}

size_t spool_count(const struct spool *sp)
{
	return sp->n;
}

uint64_t spool_bytes(const struct spool *sp)
{
	return sp->bytes;
}

uint64_t spool_events(const struct spool *sp)
{
	return sp->events;
}

size_t spool_key_count(const struct spool *sp, uint64_t key)
{
	size_t n = 0;
	for (size_t i = 0; i < sp->n; i++)
		n += sp->e[i].key == key;
	return n;
}

uint64_t spool_dropped_events(const struct spool *sp)
{
	return sp->dropped_events;
}
