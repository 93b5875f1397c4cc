#include "sdnotify.h"

#include <errno.h>
#include <ev.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"

static struct {
	bool enabled;
	struct sockaddr_un addr;
	socklen_t addr_len;
	uint64_t watchdog_usec;
} st;

struct watchdog {
	struct ev_loop *loop;
	ev_timer timer;
	uint64_t pings;
	bool failing; /* log a failure once, not at every ping */
};

static struct watchdog *wd;
static uint64_t wd_pings; /* kept after stop, for the tests */

/* Decimal digits only, no sign, no overflow; 0 on success. */
static int parse_u64(const char *s, uint64_t *out)
{
	if (!s || !*s)
		return -1;
	uint64_t v = 0;
	for (const char *p = s; *p; p++) {
		if (*p < '0' || *p > '9')
			return -1;
		unsigned d = (unsigned)(*p - '0');
		if (v > (UINT64_MAX - d) / 10)
			return -1;
		v = v * 10 + d;
	}
	*out = v;
	return 0;
}

static int parse_socket(const char *name, struct err *err)
{
	size_t len = strlen(name);
	memset(&st.addr, 0, sizeof st.addr);
	st.addr.sun_family = AF_UNIX;
	if (name[0] == '@') {
		/* Abstract: a NUL, then the name; the length says where it ends. */
		if (len < 2 || len > sizeof st.addr.sun_path)
			return err_set(err, "NOTIFY_SOCKET: abstract name of %zu bytes", len - 1);
		memcpy(st.addr.sun_path + 1, name + 1, len - 1);
		st.addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
		return 0;
	}
	if (name[0] != '/')
		return err_set(err, "NOTIFY_SOCKET: \"%s\" is neither an absolute path nor an "
			       "abstract name (@...)", name);
	if (len >= sizeof st.addr.sun_path)
		return err_set(err, "NOTIFY_SOCKET: path of %zu bytes is too long", len);
	memcpy(st.addr.sun_path, name, len + 1);
	st.addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
	return 0;
}

int sdnotify_init(struct err *err)
{
	sdnotify_watchdog_stop();
	memset(&st, 0, sizeof st);
	wd_pings = 0;
	const char *sock = getenv("NOTIFY_SOCKET");
	const char *usec = getenv("WATCHDOG_USEC");
	const char *pid = getenv("WATCHDOG_PID");
	int rc = 0;
	if (sock && *sock) {
		if (parse_socket(sock, err) == 0)
			st.enabled = true;
		else
			rc = -1;
	}
	uint64_t v = 0, p = 0;
	if (st.enabled && parse_u64(usec, &v) == 0 && v > 0 &&
	    (!pid || (parse_u64(pid, &p) == 0 && p == (uint64_t)getpid())))
		st.watchdog_usec = v;
	/* Our children must not speak for us. */
	unsetenv("NOTIFY_SOCKET");
	unsetenv("WATCHDOG_USEC");
	unsetenv("WATCHDOG_PID");
	return rc;
}

bool sdnotify_enabled(void)
{
	return st.enabled;
}

uint64_t sdnotify_watchdog_usec(void)
{
	return st.watchdog_usec;
}

int sdnotify_send(const char *msg, struct err *err)
{
	if (!st.enabled)
		return 0;
	size_t len = strlen(msg);
	if (len == 0 || len > SDNOTIFY_MESSAGE_MAX)
		return err_set(err, "sd_notify: message of %zu bytes", len);
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return err_set(err, "sd_notify: socket: %s", strerror(errno));
	ssize_t n;
	do
		n = sendto(fd, msg, len, MSG_NOSIGNAL, (const struct sockaddr *)&st.addr, st.addr_len);
	while (n < 0 && errno == EINTR);
	int e = errno;
	close(fd);
	if (n < 0)
		return err_set(err, "sd_notify: send to NOTIFY_SOCKET: %s", strerror(e));
	if ((size_t)n != len)
		return err_set(err, "sd_notify: short send (%zd of %zu bytes)", n, len);
	return 0;
}

int sdnotify_sendf(struct err *err, const char *fmt, ...)
{
	if (!st.enabled)
		return 0;
	char msg[SDNOTIFY_MESSAGE_MAX + 1];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n > SDNOTIFY_MESSAGE_MAX)
		return err_set(err, "sd_notify: message over %d bytes", SDNOTIFY_MESSAGE_MAX);
	return sdnotify_send(msg, err);
}

/* STATUS= is one line: a newline in the text would start another field. */
static void one_line(const char *in, char *out, size_t cap)
{
	size_t i = 0;
	for (; in[i] && i + 1 < cap; i++)
		out[i] = in[i] == '\n' || in[i] == '\r' ? ' ' : in[i];
	out[i] = '\0';
}

static void send_logged(const char *what, const char *extra, const char *status)
{
	if (!st.enabled)
		return;
	char line[1024] = "";
	if (status)
		one_line(status, line, sizeof line);
	struct err err;
	int rc = status ? sdnotify_sendf(&err, "%s%sSTATUS=%s", extra, *extra ? "\n" : "", line)
			: sdnotify_send(extra, &err);
	if (rc < 0)
		log_warn("sdnotify.failed", "message=%s error=\"%s\"", what, err.msg);
}

void sdnotify_ready(const char *status)
{
	send_logged("READY", "READY=1", status);
}

void sdnotify_status(const char *status)
{
	send_logged("STATUS", "", status ? status : "");
}

void sdnotify_stopping(void)
{
	send_logged("STOPPING", "STOPPING=1", NULL);
}

static void ping(struct watchdog *w)
{
	struct err err;
	if (sdnotify_send("WATCHDOG=1", &err) < 0) {
		if (!w->failing)
			log_warn("sdnotify.watchdog_failed", "error=\"%s\"", err.msg);
		w->failing = true;
		return;
	}
	w->failing = false;
	w->pings++;
	wd_pings = w->pings;
}

static void on_watchdog(struct ev_loop *loop, ev_timer *t, int revents)
{
	(void)loop;
	(void)revents;
	ping(t->data);
}

int sdnotify_watchdog_start(struct ev_loop *loop)
{
	if (!st.enabled || st.watchdog_usec == 0 || wd)
		return 0;
	wd = calloc(1, sizeof *wd);
	if (!wd)
		return -1;
	wd->loop = loop;
	double half = (double)st.watchdog_usec / 2e6;
	ev_timer_init(&wd->timer, on_watchdog, half, half);
	wd->timer.data = wd;
	ev_timer_start(loop, &wd->timer);
	/* An unreferenced timer: the watchdog alone must not keep a loop running
	 * that has nothing else to do. */
	ev_unref(loop);
	ping(wd);
	log_info("sdnotify.watchdog", "interval_ms=%llu ping_ms=%.0f",
		 (unsigned long long)(st.watchdog_usec / 1000), half * 1000);
	return 1;
}

void sdnotify_watchdog_stop(void)
{
	if (!wd)
		return;
	ev_ref(wd->loop);
	ev_timer_stop(wd->loop, &wd->timer);
	free(wd);
	wd = NULL;
}

uint64_t sdnotify_watchdog_pings(void)
{
	return wd ? wd->pings : wd_pings;
}
