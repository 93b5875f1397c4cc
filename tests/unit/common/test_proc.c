#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <ev.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "buf.h"
#include "proc.h"

struct outcome {
	int exits;
	int status;
	char *tail;
	size_t tail_len;
	struct buf streamed;
	int chunks;
	struct proc *self;       /* for callbacks that free it */
	int free_in_exit;
	int free_in_output;
	size_t dropped;
	int timed_out;
};

static void outcome_init(struct outcome *o)
{
	memset(o, 0, sizeof *o);
	buf_init(&o->streamed, (size_t)1 << 20);
}

static void outcome_free(struct outcome *o)
{
	free(o->tail);
	buf_free(&o->streamed);
}

static void on_output(const char *chunk, size_t len, void *arg)
{
	struct outcome *o = arg;
	o->chunks++;
	buf_append(&o->streamed, chunk, len);
	if (o->free_in_output) {
		proc_free(o->self);
		o->self = NULL;
	}
}

static void on_exit_cb(int status, const char *tail, size_t len, void *arg)
{
	struct outcome *o = arg;
	o->exits++;
	o->status = status;
	o->tail = malloc(len + 1);
	memcpy(o->tail, tail, len + 1); /* NUL-terminated */
	o->tail_len = len;
	if (o->self) {
		o->dropped = proc_output_dropped(o->self);
		o->timed_out = proc_timed_out(o->self);
	}
	if (o->free_in_exit) {
		proc_free(o->self);
		o->self = NULL;
	}
}

static int guard_fired;

static void on_guard(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)w;
	(void)revents;
	guard_fired = 1;
}

/* Runs the default loop until the child reported (or fails after limit_s). */
static void run_until_exit(struct outcome *o, double limit_s)
{
	struct ev_loop *loop = ev_default_loop(0);
	ev_timer guard;
	ev_timer_init(&guard, on_guard, limit_s, 0.0);
	ev_timer_start(loop, &guard);
	guard_fired = 0;
	while (!o->exits && !guard_fired)
		ev_run(loop, EVRUN_ONCE);
	ev_timer_stop(loop, &guard);
	assert_false(guard_fired);
}

static struct proc *spawn(struct outcome *o, struct proc_opts *opts)
{
	opts->on_exit = on_exit_cb;
	opts->arg = o;
	struct err err;
	struct proc *p = proc_spawn(ev_default_loop(0), opts, &err);
	if (!p)
		fail_msg("proc_spawn: %s", err.msg);
	o->self = p;
	return p;
}

static void test_exit_code(void **state)
{
	(void)state;
	struct outcome o;
	outcome_init(&o);
	const char *argv[] = {"sh", "-c", "echo out; echo err >&2; exit 3", NULL};
	struct proc_opts opts = {.argv = argv, .on_output = on_output};
	struct proc *p = spawn(&o, &opts);
	assert_true(proc_pid(p) > 0);
	run_until_exit(&o, 10);
	assert_int_equal(o.exits, 1);
	assert_int_equal(o.status, 3);
	assert_string_equal(o.tail, "out\nerr\n"); /* stdout and stderr in one stream */
	assert_int_equal(o.tail_len, 8);
	assert_string_equal(o.streamed.data, "out\nerr\n");
	assert_int_equal(o.timed_out, 0);
	assert_int_equal(o.dropped, 0);
	proc_free(p);
	outcome_free(&o);
}

static void test_signal_exit(void **state)
{
	(void)state;
	struct outcome o;
	outcome_init(&o);
	const char *argv[] = {"sh", "-c", "kill -9 $$", NULL};
	struct proc_opts opts = {.argv = argv};
	struct proc *p = spawn(&o, &opts);
	run_until_exit(&o, 10);
	assert_int_equal(o.status, 128 + SIGKILL);
	proc_free(p);
	outcome_free(&o);

	/* proc_kill reaches the child; free inside on_exit is allowed. */
	outcome_init(&o);
	const char *sleeper[] = {"sleep", "100", NULL};
	struct proc_opts sopts = {.argv = sleeper};
	p = spawn(&o, &sopts);
	o.free_in_exit = 1;
	proc_kill(p, SIGINT);
	run_until_exit(&o, 10);
	assert_int_equal(o.status, 128 + SIGINT);
	assert_null(o.self);
	outcome_free(&o);
}

static void test_output_tail_over_cap(void **state)
{
	(void)state;
	struct outcome o;
	outcome_init(&o);
	const char *argv[] = {"sh", "-c",
			      "i=0; while [ $i -lt 3000 ]; do echo line$i; i=$((i+1)); done; "
			      "echo the-error >&2; exit 1",
			      NULL};
	struct proc_opts opts = {.argv = argv, .output_max = 100, .on_output = on_output};
	struct proc *p = spawn(&o, &opts);
	run_until_exit(&o, 20);
	size_t total = 0;
	for (int i = 0; i < 3000; i++)
		total += (size_t)snprintf(NULL, 0, "line%d\n", i);
	total += strlen("the-error\n");
	assert_int_equal(o.status, 1);
	assert_int_equal(o.streamed.len, total); /* on_output saw everything */
	assert_int_equal(o.tail_len, 100);
	assert_int_equal(o.dropped, total - 100);
	assert_int_equal(proc_output_dropped(p), total - 100);
	/* The tail is the last 100 bytes, ending with the error. */
	assert_memory_equal(o.tail, o.streamed.data + total - 100, 100);
	assert_non_null(strstr(o.tail, "line2999\nthe-error\n"));
	proc_free(p);
	outcome_free(&o);
}

static void test_timeout_kills_group(void **state)
{
	(void)state;
	struct outcome o;
	outcome_init(&o);
	/* The background sleep holds the output pipe: on_exit can only come once
	 * it died too, so a kill that missed the group would hang here. */
	const char *argv[] = {"sh", "-c", "sleep 100 & sleep 100", NULL};
	struct proc_opts opts = {.argv = argv, .timeout_ms = 200, .kill_grace_ms = 5000};
	struct proc *p = spawn(&o, &opts);
	run_until_exit(&o, 4); /* well before the grace period would SIGKILL */
	assert_int_equal(o.status, 128 + SIGTERM);
	assert_int_equal(o.timed_out, 1);
	assert_int_equal(proc_timed_out(p), 1);
	proc_free(p);
	outcome_free(&o);
}

static void test_timeout_escalates_to_sigkill(void **state)
{
	(void)state;
	struct outcome o;
	outcome_init(&o);
	/* SIGTERM is ignored (and stays ignored in the exec'd sleep). */
	const char *argv[] = {"sh", "-c", "trap '' TERM; sleep 100", NULL};
	struct proc_opts opts = {.argv = argv, .timeout_ms = 100, .kill_grace_ms = 200};
	struct proc *p = spawn(&o, &opts);
	run_until_exit(&o, 10);
	assert_int_equal(o.status, 128 + SIGKILL);
	assert_int_equal(o.timed_out, 1);
	proc_free(p);
	outcome_free(&o);
}

static void test_env_cwd_stdin(void **state)
{
	(void)state;
	char dir[] = "/tmp/slipway-proc-XXXXXX";
	assert_non_null(mkdtemp(dir));
	char real[PATH_MAX];
	assert_non_null(realpath(dir, real));
	char input[PATH_MAX + 16];
	snprintf(input, sizeof input, "%s/in.txt", real);
	FILE *fp = fopen(input, "w");
	assert_non_null(fp);
	fputs("from-stdin\n", fp);
	fclose(fp);

	struct outcome o;
	outcome_init(&o);
	const char *argv[] = {"/bin/sh", "-c", "echo \"$FOO|${HOME:-nohome}\"; pwd; cat", NULL};
	const char *envp[] = {"FOO=bar baz", NULL};
	struct proc_opts opts = {.argv = argv, .envp = envp, .cwd = real, .stdin_path = input};
	struct proc *p = spawn(&o, &opts);
	run_until_exit(&o, 10);
	char want[PATH_MAX + 64];
	snprintf(want, sizeof want, "bar baz|nohome\n%s\nfrom-stdin\n", real);
	assert_int_equal(o.status, 0);
	assert_string_equal(o.tail, want);
	proc_free(p);
	outcome_free(&o);

	/* Default stdin is /dev/null: cat ends at once. */
	outcome_init(&o);
	const char *cat[] = {"cat", NULL};
	struct proc_opts copts = {.argv = cat};
	p = spawn(&o, &copts);
	run_until_exit(&o, 10);
	assert_int_equal(o.status, 0);
	assert_int_equal(o.tail_len, 0);
	proc_free(p);
	outcome_free(&o);

	unlink(input);
	rmdir(dir);
}

static void test_spawn_failures(void **state)
{
	(void)state;
	struct outcome o;
	outcome_init(&o);
	struct err err;
	/* A missing program: proc_spawn fails (no exit 127 later). */
	const char *missing[] = {"slipway-no-such-program", NULL};
	struct proc_opts opts = {.argv = missing, .on_exit = on_exit_cb, .arg = &o};
	assert_null(proc_spawn(ev_default_loop(0), &opts, &err));
	assert_non_null(strstr(err.msg, "slipway-no-such-program"));
	assert_non_null(strstr(err.msg, "No such file"));

	const char *ok[] = {"true", NULL};
	opts.argv = ok;
	opts.cwd = "/nonexistent-slipway-dir";
	assert_null(proc_spawn(ev_default_loop(0), &opts, &err));
	assert_non_null(strstr(err.msg, "cwd /nonexistent-slipway-dir"));
	opts.cwd = NULL;
	opts.stdin_path = "/nonexistent-slipway-file";
	assert_null(proc_spawn(ev_default_loop(0), &opts, &err));
	assert_non_null(strstr(err.msg, "stdin /nonexistent-slipway-file"));
	opts.stdin_path = NULL;

	/* Only the default loop can watch children. */
	struct ev_loop *other = ev_loop_new(EVFLAG_AUTO);
	assert_null(proc_spawn(other, &opts, &err));
	assert_non_null(strstr(err.msg, "default loop"));
	ev_loop_destroy(other);

	opts.on_exit = NULL;
	assert_null(proc_spawn(ev_default_loop(0), &opts, &err));

	/* Nothing was started, so nothing reports. */
	ev_run(ev_default_loop(0), EVRUN_NOWAIT);
	assert_int_equal(o.exits, 0);
	outcome_free(&o);
}

static void test_free_while_running(void **state)
{
	(void)state;
	struct outcome o;
	outcome_init(&o);
	const char *argv[] = {"sleep", "100", NULL};
	struct proc_opts opts = {.argv = argv};
	struct proc *p = spawn(&o, &opts);
	pid_t pid = proc_pid(p);
	proc_free(p);
	/* The child dies and libev reaps it; nothing calls back. Wait for the
	 * kernel to forget the pid, turning the loop so libev's SIGCHLD handler runs. */
	struct ev_loop *loop = ev_default_loop(0);
	ev_timer tick;
	int gone = 0;
	for (int i = 0; i < 200 && !gone; i++) {
		ev_timer_init(&tick, on_guard, 0.02, 0.0);
		ev_timer_start(loop, &tick);
		ev_run(loop, EVRUN_ONCE);
		ev_timer_stop(loop, &tick);
		gone = kill(pid, 0) < 0 && errno == ESRCH;
	}
	assert_true(gone);
	assert_int_equal(o.exits, 0);
	outcome_free(&o);

	/* Freed from inside on_output: no on_exit afterwards. */
	outcome_init(&o);
	const char *chatty[] = {"sh", "-c", "echo hi; exec sleep 100", NULL};
	struct proc_opts copts = {.argv = chatty, .on_output = on_output};
	spawn(&o, &copts);
	o.free_in_output = 1;
	ev_timer_init(&tick, on_guard, 10.0, 0.0);
	ev_timer_start(loop, &tick);
	guard_fired = 0;
	while (o.chunks == 0 && !guard_fired)
		ev_run(loop, EVRUN_ONCE);
	ev_timer_stop(loop, &tick);
	assert_int_equal(o.chunks, 1);
	assert_null(o.self);
	ev_run(loop, EVRUN_NOWAIT);
	assert_int_equal(o.exits, 0);
	outcome_free(&o);
}

static void test_exit_waits_for_pipe_eof(void **state)
{
	(void)state;
	struct outcome o;
	outcome_init(&o);
	/* The shell exits at once; its background job (same group) writes later. */
	const char *argv[] = {"sh", "-c", "(sleep 0.3; echo late) & echo early", NULL};
	struct proc_opts opts = {.argv = argv};
	struct proc *p = spawn(&o, &opts);
	run_until_exit(&o, 10);
	assert_int_equal(o.status, 0);
	assert_string_equal(o.tail, "early\nlate\n");
	proc_free(p);
	outcome_free(&o);
}

static void test_exit_linger_is_capped(void **state)
{
	(void)state;
	char dir[] = "/tmp/slipway-proc-XXXXXX";
	assert_non_null(mkdtemp(dir));
	char pidfile[64];
	snprintf(pidfile, sizeof pidfile, "%s/pid", dir);
	struct outcome o;
	outcome_init(&o);
	/* The child exits at once but leaves a process in a new session (out of
	 * reach of the group kill) holding the pipe: on_exit still comes after
	 * kill_grace_ms instead of waiting for it. */
	const char *argv[] = {"sh", "-c",
			      "setsid sh -c 'echo $$ > \"$0\"; exec sleep 30' \"$1\" & echo bye",
			      "sh", pidfile, NULL};
	struct proc_opts opts = {.argv = argv, .kill_grace_ms = 300};
	ev_tstamp t0 = ev_time();
	struct proc *p = spawn(&o, &opts);
	run_until_exit(&o, 10);
	ev_tstamp took = ev_time() - t0;
	assert_int_equal(o.status, 0);
	assert_string_equal(o.tail, "bye\n");
	assert_int_equal(o.timed_out, 0);
	assert_true(took >= 0.25);
	assert_true(took < 5.0);
	proc_free(p);
	outcome_free(&o);

	FILE *fp = fopen(pidfile, "r");
	assert_non_null(fp);
	int pid = 0;
	assert_int_equal(fscanf(fp, "%d", &pid), 1);
	fclose(fp);
	assert_true(pid > 1);
	kill(pid, SIGKILL); /* clean up the straggler */
	unlink(pidfile);
	rmdir(dir);
}

int main(void)
{
	ev_default_loop(0);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_exit_code),
		cmocka_unit_test(test_signal_exit),
		cmocka_unit_test(test_output_tail_over_cap),
		cmocka_unit_test(test_timeout_kills_group),
		cmocka_unit_test(test_timeout_escalates_to_sigkill),
		cmocka_unit_test(test_env_cwd_stdin),
		cmocka_unit_test(test_spawn_failures),
		cmocka_unit_test(test_free_while_running),
		cmocka_unit_test(test_exit_waits_for_pipe_eof),
		cmocka_unit_test(test_exit_linger_is_capped),
	};
	return cmocka_run_group_tests_name("proc", tests, NULL, NULL);
}
