#include "proc.h"

#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define READS_PER_WAKEUP 16 /* then let other watchers run */

struct proc {
	struct ev_loop *loop;
	pid_t pid;
	int out_fd;
	ev_io io;
	ev_child child;
	ev_timer deadline;  /* timeout_ms, then the SIGKILL grace */
	ev_timer linger;    /* child gone, pipe still open */
	char *tail;         /* tail_max + 1 bytes */
	size_t tail_len, tail_max, dropped;
	proc_output_fn on_output;
	proc_exit_fn on_exit;
	void *arg;
	double grace_s;
	int status;
	int exited, eof, finished, timed_out, term_sent;
	int in_callback, free_requested;
};

static void stop_all(struct proc *p)
{
	ev_io_stop(p->loop, &p->io);
	ev_child_stop(p->loop, &p->child);
	ev_timer_stop(p->loop, &p->deadline);
	ev_timer_stop(p->loop, &p->linger);
	if (p->out_fd >= 0) {
		close(p->out_fd);
		p->out_fd = -1;
	}
}

static void destroy(struct proc *p)
{
	stop_all(p);
	free(p->tail);
	free(p);
}

static void signal_group(struct proc *p, int sig)
{
	/* The group outlives the child while its descendants run; once finished,
	 * the id may belong to someone else. */
	if (!p->finished)
		killpg(p->pid, sig);
}

/* Keeps the last tail_max bytes. */
static void keep_tail(struct proc *p, const char *data, size_t n)
{
	if (n >= p->tail_max) {
		p->dropped += p->tail_len + (n - p->tail_max);
		memcpy(p->tail, data + (n - p->tail_max), p->tail_max);
		p->tail_len = p->tail_max;
		return;
	}
	if (p->tail_len + n > p->tail_max) {
		size_t drop = p->tail_len + n - p->tail_max;
		memmove(p->tail, p->tail + drop, p->tail_len - drop);
		p->tail_len -= drop;
		p->dropped += drop;
	}
	memcpy(p->tail + p->tail_len, data, n);
	p->tail_len += n;
}

static void maybe_finish(struct proc *p)
{
	if (p->finished || !p->exited || !p->eof)
		return;
	p->finished = 1;
	stop_all(p);
	p->tail[p->tail_len] = '\0';
	p->in_callback++;
	p->on_exit(p->status, p->tail, p->tail_len, p->arg);
	p->in_callback--;
	if (p->free_requested)
		destroy(p);
}

static void pipe_done(struct proc *p)
{
	ev_io_stop(p->loop, &p->io);
	close(p->out_fd);
	p->out_fd = -1;
	p->eof = 1;
	ev_timer_stop(p->loop, &p->linger);
	maybe_finish(p);
}

static void on_readable(struct ev_loop *loop, ev_io *w, int revents)
{
	(void)loop;
	(void)revents;
	struct proc *p = (struct proc *)((char *)w - offsetof(struct proc, io));
	char chunk[16384];
	for (int i = 0; i < READS_PER_WAKEUP; i++) {
		ssize_t n = read(p->out_fd, chunk, sizeof chunk);
		if (n > 0) {
			keep_tail(p, chunk, (size_t)n);
			if (p->on_output) {
				p->in_callback++;
				p->on_output(chunk, (size_t)n, p->arg);
				p->in_callback--;
				if (p->free_requested) {
					destroy(p);
					return;
				}
			}
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		pipe_done(p); /* EOF, or an error that ends the stream all the same */
		return;
	}
}

static void on_child(struct ev_loop *loop, ev_child *w, int revents)
{
	(void)revents;
	struct proc *p = (struct proc *)((char *)w - offsetof(struct proc, child));
	ev_child_stop(loop, w);
	int st = w->rstatus;
	if (WIFEXITED(st))
		p->status = WEXITSTATUS(st);
	else if (WIFSIGNALED(st))
		p->status = 128 + WTERMSIG(st);
	else
		p->status = 255;
	p->exited = 1;
	if (!p->term_sent)
		ev_timer_stop(loop, &p->deadline);
	if (!p->eof) {
		/* Something the child started still holds the pipe: wait a little. */
		ev_timer_set(&p->linger, p->grace_s, 0.0);
		ev_timer_start(loop, &p->linger);
	}
	maybe_finish(p);
}

static void on_deadline(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)revents;
	struct proc *p = (struct proc *)((char *)w - offsetof(struct proc, deadline));
	if (!p->term_sent) {
		p->timed_out = 1;
		p->term_sent = 1;
		signal_group(p, SIGTERM);
		ev_timer_set(w, p->grace_s, 0.0);
		ev_timer_start(loop, w);
	} else {
		signal_group(p, SIGKILL);
	}
}

static void on_linger(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	struct proc *p = (struct proc *)((char *)w - offsetof(struct proc, linger));
	pipe_done(p);
}

struct proc *proc_spawn(struct ev_loop *loop, const struct proc_opts *opts, struct err *err)
{
	if (!loop || !ev_is_default_loop(loop)) {
		err_set(err, "proc: child processes need libev's default loop");
		return NULL;
	}
	if (!opts || !opts->argv || !opts->argv[0] || !opts->on_exit) {
		err_set(err, "proc: argv and on_exit are required");
		return NULL;
	}
	const char *prog = opts->argv[0];
	struct proc *p = calloc(1, sizeof *p);
	if (!p) {
		err_set(err, "proc: out of memory");
		return NULL;
	}
	p->loop = loop;
	p->out_fd = -1;
	p->tail_max = opts->output_max ? opts->output_max : PROC_DEFAULT_OUTPUT_MAX;
	p->tail = malloc(p->tail_max + 1);
	if (!p->tail) {
		free(p);
		err_set(err, "proc: out of memory");
		return NULL;
	}
	p->on_output = opts->on_output;
	p->on_exit = opts->on_exit;
	p->arg = opts->arg;
	int64_t grace = opts->kill_grace_ms > 0 ? opts->kill_grace_ms : PROC_DEFAULT_KILL_GRACE_MS;
	p->grace_s = (double)grace / 1000.0;
	ev_io_init(&p->io, on_readable, -1, EV_READ);
	ev_child_init(&p->child, on_child, 0, 0);
	ev_timer_init(&p->deadline, on_deadline, 0.0, 0.0);
	ev_timer_init(&p->linger, on_linger, 0.0, 0.0);

	int pipefd[2] = {-1, -1}, in_fd = -1, cwd_fd = -1;
	const char *in_path = opts->stdin_path ? opts->stdin_path : "/dev/null";
	if (pipe2(pipefd, O_CLOEXEC) < 0) {
		err_set(err, "spawn %s: pipe: %s", prog, strerror(errno));
		goto fail;
	}
	in_fd = open(in_path, O_RDONLY | O_CLOEXEC);
	if (in_fd < 0) {
		err_set(err, "spawn %s: stdin %s: %s", prog, in_path, strerror(errno));
		goto fail;
	}
	if (opts->cwd) {
		cwd_fd = open(opts->cwd, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (cwd_fd < 0) {
			err_set(err, "spawn %s: cwd %s: %s", prog, opts->cwd, strerror(errno));
			goto fail;
		}
	}

	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	posix_spawn_file_actions_init(&fa);
	posix_spawnattr_init(&attr);
	posix_spawn_file_actions_adddup2(&fa, in_fd, 0);
	posix_spawn_file_actions_adddup2(&fa, pipefd[1], 1);
	posix_spawn_file_actions_adddup2(&fa, pipefd[1], 2);
	if (cwd_fd >= 0)
		posix_spawn_file_actions_addfchdir_np(&fa, cwd_fd);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
	posix_spawn_file_actions_addclosefrom_np(&fa, 3);
#endif
	/* Own process group; default signal handling whatever the daemon ignores. */
	sigset_t none, all;
	sigemptyset(&none);
	sigfillset(&all);
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
					       POSIX_SPAWN_SETSIGDEF);
	posix_spawnattr_setpgroup(&attr, 0);
	posix_spawnattr_setsigmask(&attr, &none);
	posix_spawnattr_setsigdefault(&attr, &all);
	char *const *envp = opts->envp ? (char *const *)opts->envp : environ;
	int rc = posix_spawnp(&p->pid, prog, &fa, &attr, (char *const *)opts->argv, envp);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	if (rc != 0) {
		err_set(err, "spawn %s: %s", prog, strerror(rc));
		goto fail;
	}
	close(in_fd);
	if (cwd_fd >= 0)
		close(cwd_fd);
	close(pipefd[1]);
	p->out_fd = pipefd[0];
	fcntl(p->out_fd, F_SETFL, fcntl(p->out_fd, F_GETFL) | O_NONBLOCK);

	ev_io_set(&p->io, p->out_fd, EV_READ);
	ev_io_start(loop, &p->io);
	ev_child_set(&p->child, p->pid, 0);
	ev_child_start(loop, &p->child);
	if (opts->timeout_ms > 0) {
		ev_timer_set(&p->deadline, (double)opts->timeout_ms / 1000.0, 0.0);
		ev_timer_start(loop, &p->deadline);
	}
	return p;

fail:
	if (pipefd[0] >= 0)
		close(pipefd[0]);
	if (pipefd[1] >= 0)
		close(pipefd[1]);
	if (in_fd >= 0)
		close(in_fd);
	if (cwd_fd >= 0)
		close(cwd_fd);
	free(p->tail);
	free(p);
	return NULL;
}

void proc_kill(struct proc *p, int sig)
{
	if (p && !p->exited)
		signal_group(p, sig);
}

int proc_pid(const struct proc *p)
{
	return (int)p->pid;
}

int proc_timed_out(const struct proc *p)
{
	return p->timed_out;
}

size_t proc_output_dropped(const struct proc *p)
{
	return p->dropped;
}

void proc_free(struct proc *p)
{
	if (!p || p->free_requested)
		return;
	if (!p->finished)
		signal_group(p, SIGKILL); /* the child, or what it left holding the pipe */
	if (p->in_callback) {
		/* Inside on_output or on_exit: finish once it returns. */
		p->free_requested = 1;
		p->finished = 1; /* no on_exit any more */
		stop_all(p);
		return;
	}
	destroy(p);
}
