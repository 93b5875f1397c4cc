#include "checkpoint.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "journal.h"
#include "json.h"
#include "log.h"
#include "worker.h"

struct entry {
	char id[CHECKPOINT_ID_MAX + 1];
	struct logpos_mark mark;
};

struct checkpoint_store {
	char *path;
	struct worker_pool *workers;
	void (*on_durable)(void *arg);
	void *arg;
	struct entry *e;
	size_t n, cap;
	uint64_t gen;            /* of the latest change */
	uint64_t written_gen;    /* of the file as last written (or being written) */
	uint64_t durable_gen;
	uint64_t writes;
	int writing;             /* a write is on the pool */
};

struct write_job {
	struct checkpoint_store *cs;
	uint64_t gen;
	char *text;
	int rc;
	struct err err;
};

static struct entry *find(const struct checkpoint_store *cs, const char *id)
{
	for (size_t i = 0; i < cs->n; i++)
		if (strcmp(cs->e[i].id, id) == 0)
			return &cs->e[i];
	return NULL;
}

static int valid_id(const char *id)
{
	size_t n = strlen(id);
	if (n == 0 || n > CHECKPOINT_ID_MAX)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = id[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '-' || c == '.'))
			return 0;
	}
	return 1;
}

static struct entry *add(struct checkpoint_store *cs, const char *id)
{
	if (cs->n == cs->cap) {
		size_t nc = cs->cap ? cs->cap * 2 : 32;
		struct entry *e = realloc(cs->e, nc * sizeof *e);
		if (!e)
			return NULL;
		cs->e = e;
		cs->cap = nc;
	}
	struct entry *e = &cs->e[cs->n++];
	memset(e, 0, sizeof *e);
	snprintf(e->id, sizeof e->id, "%s", id);
	return e;
}

char *checkpoint_serialize(const struct checkpoint_store *cs)
{
	struct buf b;
	buf_init(&b, CHECKPOINT_FILE_MAX);
	int rc = buf_append_str(&b, "{\"version\":1,\"containers\":{");
	for (size_t i = 0; i < cs->n && rc == 0; i++) {
		/* Nanosecond timestamps pass 2^53: written as strings. */
		rc = buf_printf(&b, "%s\"%s\":{\"since_ns\":\"%" PRId64 "\",\"skip\":%" PRIu64 "}",
				i ? "," : "", cs->e[i].id, cs->e[i].mark.since_ns, cs->e[i].mark.skip);
	}
	if (rc == 0)
		rc = buf_append_str(&b, "}}\n");
	if (rc < 0) {
		buf_free(&b);
		return NULL;
	}
	return buf_detach(&b, NULL);
}

static int load(struct checkpoint_store *cs, struct err *err)
{
	int fd = open(cs->path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT)
			return 0;
		return err_set(err, "open %s: %s", cs->path, strerror(errno));
	}
	struct buf text;
	buf_init(&text, CHECKPOINT_FILE_MAX);
	char chunk[65536];
	ssize_t r;
	int rc = 0;
	while ((r = read(fd, chunk, sizeof chunk)) > 0) {
		if (buf_append(&text, chunk, (size_t)r) < 0) {
			rc = err_set(err, "%s: larger than %zu bytes", cs->path, CHECKPOINT_FILE_MAX);
			break;
		}
	}
	if (r < 0)
		rc = err_set(err, "read %s: %s", cs->path, strerror(errno));
	close(fd);
	cJSON *doc = NULL;
	const cJSON *conts = NULL;
	if (rc == 0) {
		doc = json_parse(text.data ? text.data : "", text.len, CHECKPOINT_FILE_MAX, err);
		if (!doc || json_get_object(doc, NULL, "containers", &conts, err) < 0)
			rc = err_prefix(err, "%s", cs->path);
	}
	const cJSON *it;
	if (rc < 0)
		conts = NULL;
	cJSON_ArrayForEach(it, conts) {
		const char *since;
		int64_t skip;
		char path[JSON_PATH_MAX];
		json_path_key(path, sizeof path, "containers", it->string);
		if (!valid_id(it->string) ||
		    json_get_string(it, path, "since_ns", 24, &since, err) < 0 ||
		    json_get_int(it, path, "skip", 0, JSON_INT_LIMIT, &skip, err) < 0) {
			log_warn("checkpoint.bad_entry", "path=%s entry=%s: ignored", cs->path, path);
			continue;
		}
		char *end;
		errno = 0;
		long long ns = strtoll(since, &end, 10);
		if (errno || *end || ns < 0)
			continue;
		struct entry *e = add(cs, it->string);
		if (!e) {
			rc = err_set(err, "out of memory");
			break;
		}
		e->mark.since_ns = ns;
		e->mark.skip = (uint64_t)skip;
	}
	cJSON_Delete(doc);
	buf_free(&text);
	return rc;
}

struct checkpoint_store *checkpoint_open(const char *path, struct worker_pool *workers,
					 void (*on_durable)(void *arg), void *arg,
					 struct err *err)
{
	struct checkpoint_store *cs = calloc(1, sizeof *cs);
	if (!cs || !(cs->path = strdup(path))) {
		free(cs);
		err_set(err, "out of memory");
		return NULL;
	}
	cs->workers = workers;
	cs->on_durable = on_durable;
	cs->arg = arg;
	struct err lerr = {{0}};
	if (load(cs, &lerr) < 0) {
		/* Starting over costs duplicates; refusing to start would cost logs. */
		log_error("checkpoint.unreadable", "error=\"%s\": every container is read from its "
			  "start again", lerr.msg);
		cs->n = 0;
	}
	return cs;
}

static void write_work(void *arg)
{
	struct write_job *j = arg;
	j->rc = journal_write_file(j->cs->path, j->text, strlen(j->text), 0600, &j->err);
}

static void schedule(struct checkpoint_store *cs);

static void write_done(void *arg)
{
	struct write_job *j = arg;
	struct checkpoint_store *cs = j->cs;
	cs->writing = 0;
	if (j->rc == 0) {
		cs->writes++;
	} else {
		/* Written again with the next change. Streams are not held back
		 * meanwhile: a checkpoint only bounds repeats, and a full disk must
		 * not stop the logs. */
		log_error("checkpoint.write_failed", "error=\"%s\"", j->err.msg);
		cs->written_gen = 0;
	}
	if (j->gen > cs->durable_gen)
		cs->durable_gen = j->gen;
	int failed = j->rc != 0;
	free(j->text);
	free(j);
	if (!failed && cs->gen > cs->written_gen)
		schedule(cs);
	if (cs->on_durable)
		cs->on_durable(cs->arg);
}

static void schedule(struct checkpoint_store *cs)
{
	if (cs->writing || !cs->workers)
		return;
	struct write_job *j = calloc(1, sizeof *j);
	if (!j)
		return;
	j->cs = cs;
	j->gen = cs->gen;
	j->text = checkpoint_serialize(cs);
	if (!j->text || worker_submit(cs->workers, write_work, write_done, j) < 0) {
		free(j->text);
		free(j);
		return; /* retried with the next change, or written at checkpoint_free */
	}
	cs->writing = 1;
	cs->written_gen = cs->gen;
}

void checkpoint_free(struct checkpoint_store *cs)
{
	if (!cs)
		return;
	if (cs->gen > cs->written_gen && !cs->writing) {
		char *text = checkpoint_serialize(cs);
		struct err err = {{0}};
		if (text && journal_write_file(cs->path, text, strlen(text), 0600, &err) < 0)
			log_error("checkpoint.write_failed", "error=\"%s\"", err.msg);
		free(text);
	}
	free(cs->e);
	free(cs->path);
	free(cs);
}

int checkpoint_get(const struct checkpoint_store *cs, const char *id, struct logpos_mark *out)
{
	const struct entry *e = find(cs, id);
	if (!e)
		return 0;
	*out = e->mark;
	return 1;
}

uint64_t checkpoint_set(struct checkpoint_store *cs, const char *id,
			const struct logpos_mark *mark)
{
	if (!valid_id(id))
		return 0;
	struct entry *e = find(cs, id);
	if (e && e->mark.since_ns == mark->since_ns && e->mark.skip == mark->skip)
		return cs->gen;
	if (!e && !(e = add(cs, id)))
		return 0;
	e->mark = *mark;
	cs->gen++;
	schedule(cs);
	return cs->gen;
}

void checkpoint_forget(struct checkpoint_store *cs, const char *id)
{
	struct entry *e = find(cs, id);
	if (!e)
		return;
	*e = cs->e[--cs->n];
	cs->gen++;
	schedule(cs);
}

uint64_t checkpoint_durable(const struct checkpoint_store *cs)
{
	return cs->durable_gen;
}

size_t checkpoint_count(const struct checkpoint_store *cs)
{
	return cs->n;
}

uint64_t checkpoint_writes(const struct checkpoint_store *cs)
{
	return cs->writes;
}

void checkpoint_each(const struct checkpoint_store *cs,
		     void (*fn)(const char *id, const struct logpos_mark *m, void *arg), void *arg)
{
	for (size_t i = 0; i < cs->n; i++)
		fn(cs->e[i].id, &cs->e[i].mark, arg);
}
