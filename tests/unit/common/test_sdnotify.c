#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"
#include "sdnotify.h"

/* The receiving end systemd would have: a datagram socket the test binds. */
struct receiver {
	int fd;
	char path[108];    /* file system socket; "" for an abstract one */
	char env[128];     /* the NOTIFY_SOCKET value naming it */
};

static void bind_path(struct receiver *r)
{
	char dir[] = "/tmp/slipway-sdnotify-XXXXXX";
	assert_non_null(mkdtemp(dir));
	snprintf(r->path, sizeof r->path, "%s/notify", dir);
	snprintf(r->env, sizeof r->env, "%s", r->path);
	r->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	assert_true(r->fd >= 0);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	snprintf(sa.sun_path, sizeof sa.sun_path, "%s", r->path);
	assert_int_equal(bind(r->fd, (struct sockaddr *)&sa, sizeof sa), 0);
}

static void bind_abstract(struct receiver *r)
{
	char name[64];
	snprintf(name, sizeof name, "slipway-test-sdnotify-%ld-%d", (long)getpid(), rand());
	r->path[0] = '\0';
	snprintf(r->env, sizeof r->env, "@%s", name);
	r->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	assert_true(r->fd >= 0);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	memcpy(sa.sun_path + 1, name, strlen(name));
	socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name));
	assert_int_equal(bind(r->fd, (struct sockaddr *)&sa, len), 0);
}

static void receiver_close(struct receiver *r)
{
	close(r->fd);
	if (r->path[0]) {
		unlink(r->path);
		char *slash = strrchr(r->path, '/');
		*slash = '\0';
		rmdir(r->path);
	}
}

/* One datagram, or "" when none is waiting. */
static void recv_one(struct receiver *r, char *out, size_t cap)
{
	ssize_t n = recv(r->fd, out, cap - 1, 0);
	if (n < 0) {
		assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
		n = 0;
	}
	out[n] = '\0';
}

static void env_clear(void)
{
	unsetenv("NOTIFY_SOCKET");
	unsetenv("WATCHDOG_USEC");
	unsetenv("WATCHDOG_PID");
}

static int setup(void **state)
{
	(void)state;
	env_clear();
	log_init("test_sdnotify", LOG_LEVEL_ERROR, 0);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	env_clear();
	struct err err;
	sdnotify_init(&err); /* back to "off", timer freed */
	return 0;
}

/* Not started by systemd: everything succeeds and nothing is sent. */
static void test_unset_is_a_noop(void **state)
{
	(void)state;
	struct err err = {{0}};
	assert_int_equal(sdnotify_init(&err), 0);
	assert_false(sdnotify_enabled());
	assert_int_equal(sdnotify_watchdog_usec(), 0);
	assert_int_equal(sdnotify_send("READY=1", &err), 0);
	assert_int_equal(sdnotify_sendf(&err, "STATUS=%d", 3), 0);
	sdnotify_ready("up");
	sdnotify_stopping();
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	assert_int_equal(sdnotify_watchdog_start(loop), 0);
	ev_loop_destroy(loop);
}

static void test_path_socket(void **state)
{
	(void)state;
	struct receiver r;
	bind_path(&r);
	setenv("NOTIFY_SOCKET", r.env, 1);
	struct err err = {{0}};
	assert_int_equal(sdnotify_init(&err), 0);
	assert_true(sdnotify_enabled());
	/* Gone from the environment: a child process cannot notify for us. */
	assert_null(getenv("NOTIFY_SOCKET"));
	char got[512];
	assert_int_equal(sdnotify_send("READY=1\nSTATUS=serving", &err), 0);
	recv_one(&r, got, sizeof got);
	assert_string_equal(got, "READY=1\nSTATUS=serving");
	sdnotify_ready("routes=3\nagents=2");
	recv_one(&r, got, sizeof got);
	assert_string_equal(got, "READY=1\nSTATUS=routes=3 agents=2");
	sdnotify_status("registered as a_1");
	recv_one(&r, got, sizeof got);
	assert_string_equal(got, "STATUS=registered as a_1");
	sdnotify_stopping();
	recv_one(&r, got, sizeof got);
	assert_string_equal(got, "STOPPING=1");
	assert_int_equal(sdnotify_sendf(&err, "STATUS=%s %d", "jobs", 7), 0);
	recv_one(&r, got, sizeof got);
	assert_string_equal(got, "STATUS=jobs 7");
	recv_one(&r, got, sizeof got);
	assert_string_equal(got, ""); /* one datagram per message, nothing more */
	receiver_close(&r);
}

static void test_abstract_socket(void **state)
{
	(void)state;
	struct receiver r;
	bind_abstract(&r);
	setenv("NOTIFY_SOCKET", r.env, 1);
	struct err err = {{0}};
	assert_int_equal(sdnotify_init(&err), 0);
	assert_true(sdnotify_enabled());
	assert_int_equal(sdnotify_send("READY=1", &err), 0);
	char got[64];
	recv_one(&r, got, sizeof got);
	assert_string_equal(got, "READY=1");
	receiver_close(&r);
}

static void test_bad_socket_names(void **state)
{
	(void)state;
	struct err err = {{0}};
	setenv("NOTIFY_SOCKET", "run/notify", 1);
	assert_int_equal(sdnotify_init(&err), -1);
	assert_non_null(strstr(err.msg, "absolute path"));
	assert_false(sdnotify_enabled());
	assert_int_equal(sdnotify_send("READY=1", &err), 0); /* off: a no-op */

	char longpath[200];
	memset(longpath, 'a', sizeof longpath - 1);
	longpath[0] = '/';
	longpath[sizeof longpath - 1] = '\0';
	setenv("NOTIFY_SOCKET", longpath, 1);
	assert_int_equal(sdnotify_init(&err), -1);
	assert_non_null(strstr(err.msg, "too long"));
	assert_false(sdnotify_enabled());

	setenv("NOTIFY_SOCKET", "@", 1);
	assert_int_equal(sdnotify_init(&err), -1);
	assert_false(sdnotify_enabled());
}

/* Nobody listens: an error the caller sees, not a crash or a hang. */
static void test_send_errors(void **state)
{
	(void)state;
	struct receiver r;
	bind_path(&r);
	setenv("NOTIFY_SOCKET", r.env, 1);
	struct err err = {{0}};
	assert_int_equal(sdnotify_init(&err), 0);
	char big[SDNOTIFY_MESSAGE_MAX + 2];
	memset(big, 'x', sizeof big - 1);
	big[sizeof big - 1] = '\0';
	assert_int_equal(sdnotify_send(big, &err), -1);
	assert_non_null(strstr(err.msg, "message of"));
	assert_int_equal(sdnotify_send("", &err), -1);
	receiver_close(&r); /* the socket file is gone */
	assert_int_equal(sdnotify_send("READY=1", &err), -1);
	assert_non_null(strstr(err.msg, "NOTIFY_SOCKET"));
	sdnotify_ready("x"); /* logged, not fatal */
}

static void test_watchdog_env(void **state)
{
	(void)state;
	struct receiver r;
	bind_path(&r);
	struct err err;
	char pid[32];
	snprintf(pid, sizeof pid, "%ld", (long)getpid());

	setenv("NOTIFY_SOCKET", r.env, 1);
	setenv("WATCHDOG_USEC", "30000000", 1);
	setenv("WATCHDOG_PID", pid, 1);
	assert_int_equal(sdnotify_init(&err), 0);
	assert_int_equal(sdnotify_watchdog_usec(), 30000000);
	assert_null(getenv("WATCHDOG_USEC"));
	assert_null(getenv("WATCHDOG_PID"));

	/* Meant for another process (our parent's watchdog). */
	setenv("NOTIFY_SOCKET", r.env, 1);
	setenv("WATCHDOG_USEC", "30000000", 1);
	setenv("WATCHDOG_PID", "1", 1);
	assert_int_equal(sdnotify_init(&err), 0);
	assert_int_equal(sdnotify_watchdog_usec(), 0);

	/* No WATCHDOG_PID: ours. */
	setenv("NOTIFY_SOCKET", r.env, 1);
	setenv("WATCHDOG_USEC", "5000000", 1);
	assert_int_equal(sdnotify_init(&err), 0);
	assert_int_equal(sdnotify_watchdog_usec(), 5000000);

	static const char *const bad[] = {"", "0", "-5", "12s", "99999999999999999999999", NULL};
	for (int i = 0; bad[i]; i++) {
		setenv("NOTIFY_SOCKET", r.env, 1);
		setenv("WATCHDOG_USEC", bad[i], 1);
		assert_int_equal(sdnotify_init(&err), 0);
		assert_int_equal(sdnotify_watchdog_usec(), 0);
	}

	/* A watchdog without a socket to ping is no watchdog. */
	setenv("WATCHDOG_USEC", "5000000", 1);
	assert_int_equal(sdnotify_init(&err), 0);
	assert_int_equal(sdnotify_watchdog_usec(), 0);
	receiver_close(&r);
}

struct wd_test {
	struct receiver *r;
	int pings;
	int other;
	ev_io io;
	ev_timer deadline;
	bool timed_out;
};

static void on_datagram(struct ev_loop *loop, ev_io *w, int revents)
{
	(void)revents;
	struct wd_test *t = w->data;
	char got[64];
	recv_one(t->r, got, sizeof got);
	if (strcmp(got, "WATCHDOG=1") == 0)
		t->pings++;
	else if (got[0])
		t->other++;
	if (t->pings >= 4)
		ev_break(loop, EVBREAK_ALL);
}

static void on_deadline(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)revents;
	struct wd_test *t = w->data;
	t->timed_out = true;
	ev_break(loop, EVBREAK_ALL);
}

/* The loop pings at half the interval: 4 pings of a 40 ms watchdog arrive
 * well within a second (the first at once), and nothing else is sent. */
static void test_watchdog_pings_from_the_loop(void **state)
{
	(void)state;
	struct receiver r;
	bind_abstract(&r);
	struct err err;
	setenv("NOTIFY_SOCKET", r.env, 1);
	setenv("WATCHDOG_USEC", "40000", 1);
	assert_int_equal(sdnotify_init(&err), 0);
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct wd_test t = {.r = &r};
	ev_io_init(&t.io, on_datagram, r.fd, EV_READ);
	t.io.data = &t;
	ev_io_start(loop, &t.io);
	ev_timer_init(&t.deadline, on_deadline, 5.0, 0.0);
	t.deadline.data = &t;
	ev_timer_start(loop, &t.deadline);

	ev_tstamp t0 = ev_time();
	assert_int_equal(sdnotify_watchdog_start(loop), 1);
	assert_int_equal(sdnotify_watchdog_start(loop), 0); /* one per process */
	ev_run(loop, 0);
	ev_tstamp took = ev_time() - t0;
	assert_false(t.timed_out);
	assert_int_equal(t.pings, 4);
	assert_int_equal(t.other, 0);
	/* at once, then 3 x 20 ms: not much faster (an interval is respected) */
	assert_true(took >= 0.055);
	assert_true(sdnotify_watchdog_pings() >= 4);

	/* Stopped: the loop has no watchdog left, nothing more arrives. */
	sdnotify_watchdog_stop();
	sdnotify_watchdog_stop();
	ev_timer_stop(loop, &t.deadline);
	ev_timer_set(&t.deadline, 0.1, 0.0);
	ev_timer_start(loop, &t.deadline);
	int before = t.pings;
	ev_run(loop, 0);
	assert_int_equal(t.pings, before);
	ev_io_stop(loop, &t.io);
	ev_loop_destroy(loop);
	receiver_close(&r);
}

/* The watchdog timer alone does not keep a loop running. */
static void test_watchdog_does_not_hold_the_loop(void **state)
{
	(void)state;
	struct receiver r;
	bind_path(&r);
	struct err err;
	setenv("NOTIFY_SOCKET", r.env, 1);
	setenv("WATCHDOG_USEC", "1000000", 1);
	assert_int_equal(sdnotify_init(&err), 0);
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	assert_int_equal(sdnotify_watchdog_start(loop), 1);
	ev_run(loop, 0); /* returns at once: nothing else is active */
	char got[64];
	recv_one(&r, got, sizeof got);
	assert_string_equal(got, "WATCHDOG=1");
	sdnotify_watchdog_stop();
	ev_loop_destroy(loop);
	receiver_close(&r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_unset_is_a_noop, setup, teardown),
		cmocka_unit_test_setup_teardown(test_path_socket, setup, teardown),
		cmocka_unit_test_setup_teardown(test_abstract_socket, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_socket_names, setup, teardown),
		cmocka_unit_test_setup_teardown(test_send_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_watchdog_env, setup, teardown),
		cmocka_unit_test_setup_teardown(test_watchdog_pings_from_the_loop, setup, teardown),
		cmocka_unit_test_setup_teardown(test_watchdog_does_not_hold_the_loop, setup,
						teardown),
	};
	return cmocka_run_group_tests_name("sdnotify", tests, NULL, NULL);
}
