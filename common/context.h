/*
 * context: a service's Docker build context as a tar.gz file (libarchive),
 * honouring the context's .dockerignore the way Docker does, never holding a
 * `.git` entry, within caps on files and bytes.
 *
 * .dockerignore (what is supported; docs/manifest.md has the user's view):
 *   - one pattern per line; surrounding blanks are trimmed; blank lines and
 *     lines starting with '#' are skipped;
 *   - a leading '!' makes an exception (re-includes what matches);
 *   - patterns are cleaned like Go's filepath.Clean ("./a//b/" -> "a/b",
 *     "a/../b" -> "b") and a leading '/' is dropped: every pattern is
 *     relative to the context root;
 *   - '*' matches any run of characters but '/', '?' one character but '/',
 *     "[a-z]" / "[^a-z]" a class (never '/'), '\' escapes the next character;
 *     "**" matches any number of directories, zero included ("**" + "/" is
 *     "(any/)*"; a trailing "**" matches everything below);
 *   - a pattern that matches a directory excludes everything under it
 *     (a path is tested, then each of its parent directories);
 *   - the last pattern that matches decides; exceptions can re-include
 *     files inside an excluded directory (the walk enters excluded
 *     directories only when the file has exceptions);
 *   - the Dockerfile and .dockerignore are always sent (Docker needs them;
 *     COPY still skips them when they are ignored), and `.git` (a directory
 *     or a file, at any depth) never is, whatever the patterns say.
 *   Not supported: Dockerfile-specific ignore files (<Dockerfile>.dockerignore).
 *
 * The archive: entries sorted by name, owner root:root (0:0), modes and
 * modification times kept, symbolic links stored as links (never followed),
 * hard links stored as separate files, sockets/FIFOs/devices skipped. The
 * context directory and the Dockerfile must resolve inside `root` (a
 * symbolic link in the repository cannot point the build at the host).
 *
 * Ownership: context_ignore_parse returns a set freed by context_ignore_free.
 * context_build writes the file (0600, created exclusively) and removes it on
 * error. context_build_async copies its options; the job is freed by the
 * module after `done` has run.
 *
 * Threads: context_build blocks (disk I/O, compression): call it on a worker
 * thread. context_build_async and context_job_cancel are for the loop thread;
 * `done` runs there. The ignore functions are pure and thread-safe.
 */
#ifndef SLIPWAY_CONTEXT_H
#define SLIPWAY_CONTEXT_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

struct worker_pool;

#define CONTEXT_DEFAULT_MAX_BYTES ((uint64_t)1 << 30)   /* file contents, 1 GiB */
#define CONTEXT_DEFAULT_MAX_FILES 100000                 /* entries */
#define CONTEXT_IGNORE_MAX_BYTES ((size_t)1 << 20)       /* .dockerignore */
#define CONTEXT_IGNORE_MAX_PATTERNS 10000
#define CONTEXT_PATH_MAX 4096
#define CONTEXT_DEPTH_MAX 128

struct context_ignore;

/* Parses .dockerignore text. NULL (err) when it is over the caps or memory is
 * short; odd lines are never errors (Docker accepts them). */
struct context_ignore *context_ignore_parse(const char *text, size_t len, struct err *err);
void context_ignore_free(struct context_ignore *ig);

/* Adds one pattern at the end ("!Dockerfile"); -1 when memory is short. */
int context_ignore_add(struct context_ignore *ig, const char *pattern);

/* 1 when `path` (relative to the context root, '/'-separated, no leading
 * "./") is excluded, 0 when it is sent. NULL ig excludes nothing. */
int context_ignore_excluded(const struct context_ignore *ig, const char *path);

/* 1 when the set has at least one '!' exception. */
int context_ignore_has_exceptions(const struct context_ignore *ig);

/* Matches one cleaned pattern against a whole path (the rules above). */
int context_pattern_match(const char *pattern, const char *path);

struct context_opts {
	const char *root;         /* the checkout: context and Dockerfile stay inside */
	const char *context;      /* directory relative to root ("." for root itself) */
	const char *dockerfile;   /* relative to the context; NULL = "Dockerfile" */
	const char *out_path;     /* the .tar.gz to create */
	uint64_t max_bytes;       /* 0 = CONTEXT_DEFAULT_MAX_BYTES */
	uint64_t max_files;       /* 0 = CONTEXT_DEFAULT_MAX_FILES */
	const _Atomic int *cancel; /* checked between files; NULL = never */
};

struct context_stats {
	uint64_t files;           /* entries written (directories and links included) */
	uint64_t bytes;           /* file content bytes */
	uint64_t excluded;        /* entries left out by .dockerignore or .git */
	uint64_t archive_bytes;   /* size of the tar.gz */
};

/* Writes the archive. Blocks. 0, or -1 with err (the file is removed). */
int context_build(const struct context_opts *o, struct context_stats *st, struct err *err);

/* Unpacks a tar or tar.gz (an uploaded source directory) into dir, which
 * must exist: regular files, directories and symbolic links only; absolute
 * names, ".." components and writing through a symbolic link are refused;
 * owners are not restored. Caps as for context_build (0 = defaults). Blocks. */
int context_extract(const char *archive_path, const char *dir, uint64_t max_bytes,
		    uint64_t max_files, struct err *err);

struct context_job;
/* error is "" on success; both pointers live only during the call. */
typedef void (*context_done_fn)(int rc, const char *error, const struct context_stats *st,
				void *arg);

/* Runs context_build on the pool; done follows on the loop thread. NULL (err)
 * when the pool refuses the job; then done is never called. */
struct context_job *context_build_async(struct worker_pool *pool, const struct context_opts *o,
					context_done_fn done, void *arg, struct err *err);

/* Asks a running job to stop; done still comes (rc -1, "cancelled"). Only
 * before done has run. */
void context_job_cancel(struct context_job *job);

#endif
