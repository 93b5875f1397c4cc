/*
 * proc: child processes on the libev loop (git clone, tar, ...), with their
 * combined stdout+stderr captured and a timeout that kills the whole tree.
 *
 *   struct proc_opts o = {.argv = argv, .cwd = dir, .timeout_ms = 600000,
 *                         .on_exit = cloned, .arg = job};
 *   struct proc *p = proc_spawn(ev_default_loop(0), &o, &err);
 *
 * The child runs in its own process group (so a timeout or proc_kill reaches
 * what it spawned, e.g. the ssh under git), with stdin from stdin_path or
 * /dev/null, stdout and stderr into one pipe, default signal dispositions, an
 * empty signal mask and no descriptors beyond 0-2 (glibc). The captured output
 * keeps the TAIL: past output_max the oldest bytes are dropped (the error is
 * usually at the end) and proc_output_dropped says how many.
 *
 * on_exit runs exactly once, on the loop thread, after BOTH the child exited
 * and its output pipe reached EOF, so the tail is complete. If the child exits
 * but something it left behind keeps the pipe open, on_exit runs anyway after
 * kill_grace_ms. Status: the exit code, or 128 + signal number.
 *
 * Only libev's default loop can watch children, so proc_spawn fails with an
 * error on any other loop. libev reaps every child of the process (waitpid(-1)),
 * so do not wait for children elsewhere in a process that uses this module.
 *
 * A program that cannot be started (missing, not executable, bad cwd or
 * stdin_path) makes proc_spawn return NULL with *err saying why; on_exit is
 * then never called. argv[0] without a '/' is looked up in the parent's PATH.
 *
 * Ownership: the caller owns the struct proc and frees it with proc_free,
 * before or after on_exit (inside on_exit too). opts and the strings in it are
 * only read during proc_spawn. Loop thread only; nothing blocks.
 */
#ifndef SLIPWAY_PROC_H
#define SLIPWAY_PROC_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

struct ev_loop;
struct proc;

#define PROC_DEFAULT_OUTPUT_MAX ((size_t)64 << 10)
#define PROC_DEFAULT_KILL_GRACE_MS 5000

typedef void (*proc_output_fn)(const char *chunk, size_t len, void *arg);
/* output_tail is NUL-terminated and lives only during the call. */
typedef void (*proc_exit_fn)(int status, const char *output_tail, size_t len, void *arg);

struct proc_opts {
	const char *const *argv;   /* NULL-terminated; argv[0] is the program */
	const char *const *envp;   /* NULL-terminated "NAME=value"; NULL = inherit ours */
	const char *cwd;           /* NULL = ours */
	const char *stdin_path;    /* NULL = /dev/null */
	size_t output_max;         /* cap on the captured tail; 0 = PROC_DEFAULT_OUTPUT_MAX */
	proc_output_fn on_output;  /* optional: every chunk as it arrives */
	proc_exit_fn on_exit;      /* required */
	int64_t timeout_ms;        /* 0 = none; then SIGTERM to the group, SIGKILL after grace */
	int64_t kill_grace_ms;     /* 0 = PROC_DEFAULT_KILL_GRACE_MS */
	void *arg;
};

struct proc *proc_spawn(struct ev_loop *loop, const struct proc_opts *opts, struct err *err);

/* Sends `sig` to the child's process group; ignored once the child was reaped. */
void proc_kill(struct proc *p, int sig);

/* The child's pid (also its process group id). */
int proc_pid(const struct proc *p);

/* 1 when timeout_ms ran out and the group was signalled (on_exit's status
 * then shows the signal: 143 for SIGTERM, 137 for SIGKILL). */
int proc_timed_out(const struct proc *p);

/* Bytes of output dropped from the front of the tail because of output_max. */
size_t proc_output_dropped(const struct proc *p);

/* Kills the group with SIGKILL if the child still runs, stops every watcher and
 * frees. No callback runs after this. NULL is ignored. */
void proc_free(struct proc *p);

#endif
