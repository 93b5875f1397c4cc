#include "context.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "buf.h"
#include "worker.h"

/* ---- .dockerignore ------------------------------------------------------- */

#define PATTERN_MAX 1024
#define MATCH_STEPS_MAX 200000 /* a pathological pattern stops matching */

struct pattern {
	char *text;        /* cleaned, without '!' */
	bool exception;
	size_t literal;    /* bytes before the first wildcard or escape */
};

struct context_ignore {
	struct pattern *p;
	size_t n, cap;
	bool exceptions;
};

/* Go's filepath.Clean on '/'-separated text, then a leading '/' dropped and
 * runs of "**" segments folded ("**" + "/" + "**" is just "**"). */
static void clean_pattern(const char *in, char *out, size_t cap)
{
	bool rooted = in[0] == '/';
	size_t o = 0;
	size_t seg_start[PATTERN_MAX];
	size_t nseg = 0;
	const char *s = in;
	while (*s) {
		while (*s == '/')
			s++;
		if (!*s)
			break;
		const char *e = strchr(s, '/');
		size_t len = e ? (size_t)(e - s) : strlen(s);
		if (len == 1 && s[0] == '.') {
			/* skip */
		} else if (len == 2 && s[0] == '.' && s[1] == '.') {
			bool prev_dotdot = nseg > 0 && o - seg_start[nseg - 1] == 2 &&
					   out[seg_start[nseg - 1]] == '.' &&
					   out[seg_start[nseg - 1] + 1] == '.';
			if (nseg > 0 && !prev_dotdot) {
				o = seg_start[--nseg];
				if (o > 0)
					o--; /* the '/' before it */
			} else if (!rooted && o + 3 < cap) {
				if (o)
					out[o++] = '/';
				seg_start[nseg++] = o;
				out[o++] = '.';
				out[o++] = '.';
			}
		} else if (len == 2 && s[0] == '*' && s[1] == '*' && nseg > 0 &&
			   o - seg_start[nseg - 1] == 2 && out[seg_start[nseg - 1]] == '*' &&
			   out[seg_start[nseg - 1] + 1] == '*') {
			/* "**" after "**": nothing more to match */
		} else if (o + len + 2 < cap && nseg < PATTERN_MAX) {
			if (o)
				out[o++] = '/';
			seg_start[nseg++] = o;
			memcpy(out + o, s, len);
			o += len;
		}
		s += len;
	}
	if (o == 0)
		out[o++] = '.';
	out[o] = '\0';
}

int context_ignore_add(struct context_ignore *ig, const char *line)
{
	bool exception = false;
	if (line[0] == '!') {
		exception = true;
		line++;
		while (*line == ' ' || *line == '\t')
			line++;
	}
	char cleaned[PATTERN_MAX + 8];
	clean_pattern(line, cleaned, sizeof cleaned);
	if (ig->n == ig->cap) {
		size_t cap = ig->cap ? ig->cap * 2 : 16;
		struct pattern *p = realloc(ig->p, cap * sizeof *p);
		if (!p)
			return -1;
		ig->p = p;
		ig->cap = cap;
	}
	char *text = strdup(cleaned);
	if (!text)
		return -1;
	size_t lit = strcspn(text, "*?[\\");
	ig->p[ig->n++] = (struct pattern){.text = text, .exception = exception, .literal = lit};
	if (exception)
		ig->exceptions = true;
	return 0;
}

struct context_ignore *context_ignore_parse(const char *text, size_t len, struct err *err)
{
	if (len > CONTEXT_IGNORE_MAX_BYTES) {
		err_set(err, ".dockerignore: larger than %zu KiB", CONTEXT_IGNORE_MAX_BYTES >> 10);
		return NULL;
	}
	struct context_ignore *ig = calloc(1, sizeof *ig);
	if (!ig) {
		err_set(err, "out of memory");
		return NULL;
	}
	size_t i = 0;
	while (i < len) {
		size_t e = i;
		while (e < len && text[e] != '\n')
			e++;
		size_t a = i, b = e;
		while (a < b && (text[a] == ' ' || text[a] == '\t' || text[a] == '\r'))
			a++;
		while (b > a && (text[b - 1] == ' ' || text[b - 1] == '\t' || text[b - 1] == '\r'))
			b--;
		i = e + 1;
		if (a == b || text[a] == '#')
			continue;
		if (b - a > PATTERN_MAX || memchr(text + a, '\0', b - a))
			continue; /* cannot match a real path anyway */
		if (ig->n >= CONTEXT_IGNORE_MAX_PATTERNS) {
			context_ignore_free(ig);
			err_set(err, ".dockerignore: more than %d patterns",
				CONTEXT_IGNORE_MAX_PATTERNS);
			return NULL;
		}
		char line[PATTERN_MAX + 1];
		memcpy(line, text + a, b - a);
		line[b - a] = '\0';
		if (strcmp(line, "!") == 0)
			continue;
		if (context_ignore_add(ig, line) < 0) {
			context_ignore_free(ig);
			err_set(err, "out of memory");
			return NULL;
		}
	}
	return ig;
}

void context_ignore_free(struct context_ignore *ig)
{
	if (!ig)
		return;
	for (size_t i = 0; i < ig->n; i++)
		free(ig->p[i].text);
	free(ig->p);
	free(ig);
}

int context_ignore_has_exceptions(const struct context_ignore *ig)
{
	return ig && ig->exceptions;
}

/* "[...]" at p (just after '['): 1 matched c, 0 did not, -1 not a class
 * (no closing bracket: then '[' is literal). *end is past the ']'. */
static int match_class(const char *p, char c, const char **end)
{
	bool negate = false, hit = false;
	if (*p == '^') {
		negate = true;
		p++;
	}
	bool first = true;
	while (*p && (*p != ']' || first)) {
		first = false;
		char lo = *p++;
		if (lo == '\\' && *p)
			lo = *p++;
		char hi = lo;
		if (*p == '-' && p[1] && p[1] != ']') {
			p++;
			hi = *p++;
			if (hi == '\\' && *p)
				hi = *p++;
		}
		if (c >= lo && c <= hi)
			hit = true;
	}
	if (*p != ']')
		return -1;
	*end = p + 1;
	return c != '/' && hit != negate;
}

static bool match_here(const char *p, const char *s, long *steps)
{
	for (;;) {
		if (++*steps > MATCH_STEPS_MAX)
			return false;
		switch (*p) {
		case '\0':
			return *s == '\0';
		case '*':
			if (p[1] == '*') {
				while (*p == '*')
					p++;
				if (*p == '/')
					p++;
				if (*p == '\0')
					return true;
				/* "(any/)*": here, or after any later '/'. */
				if (match_here(p, s, steps))
					return true;
				for (const char *t = s; *t; t++)
					if (*t == '/' && match_here(p, t + 1, steps))
						return true;
				return false;
			}
			p++;
			for (const char *t = s;; t++) {
				if (match_here(p, t, steps))
					return true;
				if (*t == '\0' || *t == '/')
					return false;
			}
		case '?':
			if (*s == '\0' || *s == '/')
				return false;
			p++;
			s++;
			break;
		case '[': {
			const char *end;
			int m = *s ? match_class(p + 1, *s, &end) : 0;
			if (m == 0)
				return false;
			if (m == 1) {
				p = end;
				s++;
				break;
			}
			if (*s != '[') /* not a class: a literal '[' */
				return false;
			p++;
			s++;
			break;
		}
		case '\\':
			if (p[1])
				p++;
			/* fallthrough */
		default:
			if (*p != *s)
				return false;
			p++;
			s++;
			break;
		}
	}
}

int context_pattern_match(const char *pattern, const char *path)
{
	long steps = 0;
	return match_here(pattern, path, &steps);
}

/* The pattern matches path or one of its parent directories. */
static bool matches_or_parent(const char *pattern, const char *path)
{
	if (context_pattern_match(pattern, path))
		return true;
	char buf[CONTEXT_PATH_MAX + 1];
	size_t len = strlen(path);
	if (len > CONTEXT_PATH_MAX)
		return false;
	memcpy(buf, path, len + 1);
	for (size_t i = 0; i < len; i++) {
		if (buf[i] != '/')
			continue;
		buf[i] = '\0';
		bool m = context_pattern_match(pattern, buf);
		buf[i] = '/';
		if (m)
			return true;
	}
	return false;
}

int context_ignore_excluded(const struct context_ignore *ig, const char *path)
{
	if (!ig)
		return 0;
	bool excluded = false;
	for (size_t i = 0; i < ig->n; i++)
		if (matches_or_parent(ig->p[i].text, path))
			excluded = !ig->p[i].exception;
	return excluded;
}

/* Could an exception re-include something under the excluded directory dir?
 * Compares the exception's literal prefix with the directory's path. */
static bool exceptions_reach(const struct context_ignore *ig, const char *dir)
{
	size_t dl = strlen(dir);
	for (size_t i = 0; i < ig->n; i++) {
		const struct pattern *p = &ig->p[i];
		if (!p->exception)
			continue;
		size_t n = p->literal < dl ? p->literal : dl;
		if (strncmp(p->text, dir, n) == 0)
			return true;
	}
	return false;
}

/* ---- the archive --------------------------------------------------------- */

struct walk {
	struct archive *a;
	const struct context_opts *o;
	struct context_ignore *ig;
	const char *dockerfile;   /* relative to the context */
	struct context_stats *st;
	uint64_t max_bytes, max_files;
	char *iobuf;
	struct err *err;
};

static int name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int add_entry(struct walk *w, const char *path, const struct stat *sb,
		     const char *link_target)
{
	if (++w->st->files > w->max_files)
		return err_set(w->err, "build context has more than %llu files (after .dockerignore)",
			       (unsigned long long)w->max_files);
	struct archive_entry *e = archive_entry_new();
	if (!e)
		return err_set(w->err, "out of memory");
	archive_entry_set_pathname(e, path);
	archive_entry_set_perm(e, sb->st_mode & 07777);
	archive_entry_set_mtime(e, sb->st_mtim.tv_sec, sb->st_mtim.tv_nsec);
	archive_entry_set_uid(e, 0);
	archive_entry_set_gid(e, 0);
	if (S_ISDIR(sb->st_mode)) {
		archive_entry_set_filetype(e, AE_IFDIR);
		archive_entry_set_size(e, 0);
	} else if (S_ISLNK(sb->st_mode)) {
		archive_entry_set_filetype(e, AE_IFLNK);
		archive_entry_set_symlink(e, link_target);
		archive_entry_set_size(e, 0);
	} else {
		archive_entry_set_filetype(e, AE_IFREG);
		archive_entry_set_size(e, sb->st_size);
	}
	int rc = archive_write_header(w->a, e);
	archive_entry_free(e);
	if (rc != ARCHIVE_OK)
		return err_set(w->err, "archive %s: %s", path, archive_error_string(w->a));
	return 0;
}

static int add_file(struct walk *w, int dirfd, const char *name, const char *path,
		    const struct stat *sb)
{
	if (w->st->bytes + (uint64_t)sb->st_size > w->max_bytes)
		return err_set(w->err, "build context is larger than %llu MiB (after .dockerignore)",
			       (unsigned long long)(w->max_bytes >> 20));
	int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return err_set(w->err, "%s: %s", path, strerror(errno));
	struct stat now;
	if (fstat(fd, &now) < 0 || !S_ISREG(now.st_mode) || now.st_size != sb->st_size) {
		close(fd);
		return err_set(w->err, "%s: changed while the context was written", path);
	}
	if (add_entry(w, path, sb, NULL) < 0) {
		close(fd);
		return -1;
	}
	off_t left = sb->st_size;
	while (left > 0) {
		size_t want = left > 65536 ? 65536 : (size_t)left;
		ssize_t r = read(fd, w->iobuf, want);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			close(fd);
			return err_set(w->err, "%s: %s", path,
				       r < 0 ? strerror(errno) : "shrank while read");
		}
		if (archive_write_data(w->a, w->iobuf, (size_t)r) != r) {
			close(fd);
			return err_set(w->err, "archive %s: %s", path, archive_error_string(w->a));
		}
		left -= r;
	}
	close(fd);
	w->st->bytes += (uint64_t)sb->st_size;
	return 0;
}

static int walk_dir(struct walk *w, int dirfd, const char *rel, int depth)
{
	if (depth > CONTEXT_DEPTH_MAX)
		return err_set(w->err, "%s: directories nested deeper than %d", rel, CONTEXT_DEPTH_MAX);
	int dupfd = dup(dirfd);
	DIR *d = dupfd >= 0 ? fdopendir(dupfd) : NULL;
	if (!d) {
		if (dupfd >= 0)
			close(dupfd);
		return err_set(w->err, "%s: %s", *rel ? rel : ".", strerror(errno));
	}
	char **names = NULL;
	size_t n = 0, cap = 0;
	int rc = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			char **nn = realloc(names, cap * sizeof *nn);
			if (!nn) {
				rc = err_set(w->err, "out of memory");
				break;
			}
			names = nn;
		}
		if (!(names[n] = strdup(de->d_name))) {
			rc = err_set(w->err, "out of memory");
			break;
		}
		n++;
		if (n > w->max_files * 2 + 1000) {
			rc = err_set(w->err, "%s: too many entries", *rel ? rel : ".");
			break;
		}
	}
	closedir(d);
	if (rc == 0)
		qsort(names, n, sizeof *names, name_cmp);
	char path[CONTEXT_PATH_MAX + 1];
	for (size_t i = 0; rc == 0 && i < n; i++) {
		const char *name = names[i];
		if (w->o->cancel && atomic_load(w->o->cancel)) {
			rc = err_set(w->err, "cancelled");
			break;
		}
		int pl = snprintf(path, sizeof path, "%s%s%s", rel, *rel ? "/" : "", name);
		if (pl < 0 || (size_t)pl >= sizeof path) {
			rc = err_set(w->err, "%s/%s: path longer than %d bytes", rel, name,
				     CONTEXT_PATH_MAX);
			break;
		}
		if (!strcmp(name, ".git")) {
			w->st->excluded++;
			continue;
		}
		struct stat sb;
		if (fstatat(dirfd, name, &sb, AT_SYMLINK_NOFOLLOW) < 0) {
			rc = err_set(w->err, "%s: %s", path, strerror(errno));
			break;
		}
		bool forced = !strcmp(path, w->dockerfile) || !strcmp(path, ".dockerignore");
		bool excluded = !forced && context_ignore_excluded(w->ig, path);
		if (S_ISDIR(sb.st_mode)) {
			if (excluded && !(w->ig->exceptions && exceptions_reach(w->ig, path))) {
				w->st->excluded++;
				continue;
			}
			if (excluded)
				w->st->excluded++;
			else if (add_entry(w, path, &sb, NULL) < 0) {
				rc = -1;
				break;
			}
			int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (fd < 0) {
				rc = err_set(w->err, "%s: %s", path, strerror(errno));
				break;
			}
			rc = walk_dir(w, fd, path, depth + 1);
			close(fd);
		} else if (excluded) {
			w->st->excluded++;
		} else if (S_ISREG(sb.st_mode)) {
			rc = add_file(w, dirfd, name, path, &sb);
		} else if (S_ISLNK(sb.st_mode)) {
			char target[CONTEXT_PATH_MAX + 1];
			ssize_t tl = readlinkat(dirfd, name, target, sizeof target - 1);
			if (tl < 0) {
				rc = err_set(w->err, "%s: %s", path, strerror(errno));
				break;
			}
			target[tl] = '\0';
			rc = add_entry(w, path, &sb, target);
		} else {
			w->st->excluded++; /* sockets, FIFOs, devices */
		}
	}
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	return rc;
}

/* Reads the context's .dockerignore (none is fine). */
static struct context_ignore *read_ignore(int ctxfd, struct err *err)
{
	int fd = openat(ctxfd, ".dockerignore", O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT) {
			struct context_ignore *ig = calloc(1, sizeof *ig);
			if (!ig)
				err_set(err, "out of memory");
			return ig;
		}
		err_set(err, ".dockerignore: %s", strerror(errno));
		return NULL;
	}
	struct buf b;
	buf_init(&b, CONTEXT_IGNORE_MAX_BYTES);
	char chunk[8192];
	ssize_t r;
	int rc = 0;
	while ((r = read(fd, chunk, sizeof chunk)) != 0) {
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			rc = err_set(err, ".dockerignore: %s", strerror(errno));
			break;
		}
		if (buf_append(&b, chunk, (size_t)r) < 0) {
			rc = err_set(err, ".dockerignore: larger than %zu KiB",
				     CONTEXT_IGNORE_MAX_BYTES >> 10);
			break;
		}
	}
	close(fd);
	struct context_ignore *ig = NULL;
	if (rc == 0)
		ig = context_ignore_parse(b.data ? b.data : "", b.len, err);
	buf_free(&b);
	return ig;
}

/* dir (resolved) is root or below it. */
static bool inside(const char *root, const char *dir)
{
	size_t rl = strlen(root);
	return strncmp(root, dir, rl) == 0 && (dir[rl] == '\0' || dir[rl] == '/' || rl == 1);
}

int context_build(const struct context_opts *o, struct context_stats *st, struct err *err)
{
	struct context_stats local;
	if (!st)
		st = &local;
	memset(st, 0, sizeof *st);
	const char *dockerfile = o->dockerfile && *o->dockerfile ? o->dockerfile : "Dockerfile";
	char ctx[PATH_MAX + 2], root[PATH_MAX], real_ctx[PATH_MAX], real_df[PATH_MAX];
	snprintf(ctx, sizeof ctx, "%s/%s", o->root, o->context && *o->context ? o->context : ".");
	if (!realpath(o->root, root))
		return err_set(err, "%s: %s", o->root, strerror(errno));
	if (!realpath(ctx, real_ctx))
		return err_set(err, "build context %s: %s", o->context, strerror(errno));
	if (!inside(root, real_ctx))
		return err_set(err, "build context %s: leads out of the repository", o->context);
	char dfpath[PATH_MAX * 2 + 2];
	snprintf(dfpath, sizeof dfpath, "%s/%s", real_ctx, dockerfile);
	struct stat dsb;
	if (!realpath(dfpath, real_df) || stat(real_df, &dsb) < 0 || !S_ISREG(dsb.st_mode))
		return err_set(err, "%s not found in the build context %s", dockerfile,
			       o->context && *o->context ? o->context : ".");
	if (!inside(real_ctx, real_df))
		return err_set(err, "%s: leads out of the build context", dockerfile);

	int ctxfd = open(real_ctx, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (ctxfd < 0)
		return err_set(err, "%s: %s", o->context, strerror(errno));
	struct context_ignore *ig = read_ignore(ctxfd, err);
	if (!ig) {
		close(ctxfd);
		return -1;
	}
	int outfd = open(o->out_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (outfd < 0) {
		context_ignore_free(ig);
		close(ctxfd);
		return err_set(err, "%s: %s", o->out_path, strerror(errno));
	}
	struct walk w = {
		.o = o,
		.ig = ig,
		.dockerfile = dockerfile,
		.st = st,
		.max_bytes = o->max_bytes ? o->max_bytes : CONTEXT_DEFAULT_MAX_BYTES,
		.max_files = o->max_files ? o->max_files : CONTEXT_DEFAULT_MAX_FILES,
		.iobuf = malloc(65536),
		.err = err,
	};
	w.a = archive_write_new();
	int rc = 0;
	if (!w.a || !w.iobuf) {
		rc = err_set(err, "out of memory");
	} else if (archive_write_add_filter_gzip(w.a) != ARCHIVE_OK ||
		   archive_write_set_filter_option(w.a, "gzip", "compression-level", "1") !=
			   ARCHIVE_OK ||
		   archive_write_set_format_pax_restricted(w.a) != ARCHIVE_OK ||
		   archive_write_open_fd(w.a, outfd) != ARCHIVE_OK) {
		rc = err_set(err, "archive: %s", archive_error_string(w.a));
	} else {
		rc = walk_dir(&w, ctxfd, "", 0);
		if (archive_write_close(w.a) != ARCHIVE_OK && rc == 0)
			rc = err_set(err, "archive: %s", archive_error_string(w.a));
	}
	if (w.a)
		archive_write_free(w.a);
	free(w.iobuf);
	context_ignore_free(ig);
	close(ctxfd);
	struct stat osb;
	if (rc == 0 && fstat(outfd, &osb) == 0)
		st->archive_bytes = (uint64_t)osb.st_size;
	if (close(outfd) < 0 && rc == 0)
		rc = err_set(err, "%s: %s", o->out_path, strerror(errno));
	if (rc < 0)
		unlink(o->out_path);
	return rc;
}

/* ---- on a worker thread -------------------------------------------------- */

struct context_job {
	struct context_opts o;
	char *root, *context, *dockerfile, *out_path;
	_Atomic int cancel;
	int rc;
	struct err err;
	struct context_stats st;
	context_done_fn done;
	void *arg;
};

static void job_free(struct context_job *j)
{
	free(j->root);
	free(j->context);
	free(j->dockerfile);
	free(j->out_path);
	free(j);
}

static void job_work(void *arg)
{
	struct context_job *j = arg;
	j->err.msg[0] = '\0';
	j->rc = context_build(&j->o, &j->st, &j->err);
}

static void job_done(void *arg)
{
	struct context_job *j = arg;
	if (j->rc == 0 && atomic_load(&j->cancel)) {
		j->rc = err_set(&j->err, "cancelled");
		unlink(j->out_path);
	}
	j->done(j->rc, j->rc == 0 ? "" : j->err.msg, &j->st, j->arg);
	job_free(j);
}

struct context_job *context_build_async(struct worker_pool *pool, const struct context_opts *o,
					context_done_fn done, void *arg, struct err *err)
{
	struct context_job *j = calloc(1, sizeof *j);
	if (!j) {
		err_set(err, "out of memory");
		return NULL;
	}
	j->root = strdup(o->root);
	j->context = strdup(o->context && *o->context ? o->context : ".");
	j->dockerfile = strdup(o->dockerfile && *o->dockerfile ? o->dockerfile : "Dockerfile");
	j->out_path = strdup(o->out_path);
	if (!j->root || !j->context || !j->dockerfile || !j->out_path) {
		job_free(j);
		err_set(err, "out of memory");
		return NULL;
	}
	j->o = (struct context_opts){.root = j->root,
				     .context = j->context,
				     .dockerfile = j->dockerfile,
				     .out_path = j->out_path,
				     .max_bytes = o->max_bytes,
				     .max_files = o->max_files,
				     .cancel = &j->cancel};
	j->done = done;
	j->arg = arg;
	if (worker_submit(pool, job_work, job_done, j) < 0) {
		job_free(j);
		err_set(err, "the worker pool is busy");
		return NULL;
	}
	return j;
}

void context_job_cancel(struct context_job *job)
{
	if (job)
		atomic_store(&job->cancel, 1);
}

/* ---- unpacking an upload ---------------------------------------------------- */

/* A member name that stays inside the target: relative, no "..". */
static bool safe_member(const char *name)
{
	if (!*name || name[0] == '/')
		return false;
	for (const char *s = name; *s;) {
		const char *e = strchr(s, '/');
		size_t len = e ? (size_t)(e - s) : strlen(s);
		if (len == 2 && s[0] == '.' && s[1] == '.')
			return false;
		s += len;
		while (*s == '/')
			s++;
	}
	return strlen(name) <= CONTEXT_PATH_MAX;
}

int context_extract(const char *archive_path, const char *dir, uint64_t max_bytes,
		    uint64_t max_files, struct err *err)
{
	if (!max_bytes)
		max_bytes = CONTEXT_DEFAULT_MAX_BYTES;
	if (!max_files)
		max_files = CONTEXT_DEFAULT_MAX_FILES;
	struct archive *in = archive_read_new();
	struct archive *out = archive_write_disk_new();
	if (!in || !out) {
		archive_read_free(in);
		archive_write_free(out);
		return err_set(err, "out of memory");
	}
	archive_read_support_filter_gzip(in);
	archive_read_support_filter_none(in);
	archive_read_support_format_tar(in);
	archive_write_disk_set_options(out, ARCHIVE_EXTRACT_TIME | ARCHIVE_EXTRACT_PERM |
						    ARCHIVE_EXTRACT_SECURE_SYMLINKS |
						    ARCHIVE_EXTRACT_SECURE_NODOTDOT);
	int rc = 0;
	if (archive_read_open_filename(in, archive_path, 65536) != ARCHIVE_OK) {
		rc = err_set(err, "%s: %s", archive_path, archive_error_string(in));
		goto done;
	}
	uint64_t files = 0, bytes = 0;
	struct archive_entry *e;
	char target[PATH_MAX + CONTEXT_PATH_MAX + 2];
	int r;
	while ((r = archive_read_next_header(in, &e)) == ARCHIVE_OK) {
		const char *name = archive_entry_pathname(e);
		mode_t type = archive_entry_filetype(e);
		if (!name || !safe_member(name)) {
			rc = err_set(err, "upload: member \"%.100s\" leaves the directory",
				     name ? name : "");
			break;
		}
		if (type != AE_IFREG && type != AE_IFDIR && type != AE_IFLNK) {
			archive_read_data_skip(in);
			continue;
		}
		if (archive_entry_hardlink(e)) {
			rc = err_set(err, "upload: hard links are not supported (%.100s)", name);
			break;
		}
		if (++files > max_files) {
			rc = err_set(err, "upload: more than %llu entries",
				     (unsigned long long)max_files);
			break;
		}
		int64_t size = archive_entry_size(e);
		if (size > 0 && (bytes += (uint64_t)size) > max_bytes) {
			rc = err_set(err, "upload: larger than %llu MiB",
				     (unsigned long long)(max_bytes >> 20));
			break;
		}
		snprintf(target, sizeof target, "%s/%s", dir, name);
		archive_entry_set_pathname(e, target);
		archive_entry_set_uid(e, getuid());
		archive_entry_set_gid(e, getgid());
		archive_entry_set_perm(e, archive_entry_perm(e) & 0777);
		if (archive_write_header(out, e) != ARCHIVE_OK) {
			rc = err_set(err, "upload: %s: %s", name, archive_error_string(out));
			break;
		}
		const void *block;
		size_t len;
		int64_t offset;
		while ((r = archive_read_data_block(in, &block, &len, &offset)) == ARCHIVE_OK) {
			if (archive_write_data_block(out, block, len, offset) != ARCHIVE_OK) {
				r = ARCHIVE_FATAL;
				break;
			}
		}
		if (r != ARCHIVE_EOF) {
			rc = err_set(err, "upload: %s: %s", name, archive_error_string(in));
			break;
		}
		if (archive_write_finish_entry(out) != ARCHIVE_OK) {
			rc = err_set(err, "upload: %s: %s", name, archive_error_string(out));
			break;
		}
	}
	if (rc == 0 && r != ARCHIVE_EOF)
		rc = err_set(err, "upload: %s", archive_error_string(in));
done:
	if (archive_write_close(out) != ARCHIVE_OK && rc == 0)
		rc = err_set(err, "upload: %s", archive_error_string(out));
	archive_read_free(in);
	archive_write_free(out);
	return rc;
}
