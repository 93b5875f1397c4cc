#include "proxy_main.h"

#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "agent.h"
#include "clock.h"
#include "config.h"
#include "httpd.h"
#include "json.h"
#include "log.h"
#include "proxy.h"
#include "proxy_ctl.h"
#include "sdnotify.h"
#include "settings.h"
#include "worker.h"

#define HANDOVER_IO_TIMEOUT_S 10
#define EXIT_CHECK_S 0.05

struct pmain {
	struct ev_loop *loop;
	struct config *cfg;
	struct proxy *proxy;
	struct proxy_ctl *ctl;
	struct worker_pool *workers;
	char control[PATH_MAX];
	char handover[PATH_MAX + 16];
	char routes_file[PATH_MAX];
	int64_t stop_timeout_ms;
	/* the hand-over listener (old side) */
	int ho_fd;
	ev_io ho_accept;
	int ho_conn;
	ev_io ho_conn_io;
	char ho_in[8];
	size_t ho_in_len;
	ev_signal sigterm, sigint;
	ev_timer exit_check;
	bool stopping;
	int64_t stop_started_ms;
};

/* ------------------------------------------------------------------ */
/* the hand-over message                                                */

static int write_all(int sock, const char *p, size_t len, const int *fds, size_t nfds,
		     struct err *err)
{
	bool first = true;
	while (len) {
		struct iovec iov = {(void *)p, len};
		union {
			char buf[CMSG_SPACE(sizeof(int) * (PROXY_LISTENERS_MAX + 1))];
			struct cmsghdr align;
		} u;
		struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
		if (first && nfds) {
			memset(&u, 0, sizeof u);
			mh.msg_control = u.buf;
			mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
			struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
			cm->cmsg_level = SOL_SOCKET;
			cm->cmsg_type = SCM_RIGHTS;
			cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
			memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
		}
		ssize_t n = sendmsg(sock, &mh, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return err_set(err, "handover send: %s", n < 0 ? strerror(errno) : "closed");
		first = false;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int proxy_handover_send(int sock, const cJSON *doc, const int *fds, size_t nfds,
			struct err *err)
{
	if (nfds > PROXY_LISTENERS_MAX + 1)
		return err_set(err, "handover: too many sockets (%zu)", nfds);
	char *text = json_print(doc, PROXY_HANDOVER_MAX, err);
	if (!text)
		return -1;
	size_t len = strlen(text);
	unsigned char hdr[4] = {(unsigned char)(len >> 24), (unsigned char)(len >> 16),
				(unsigned char)(len >> 8), (unsigned char)len};
	int rc = write_all(sock, (const char *)hdr, 4, fds, nfds, err);
	if (rc == 0)
		rc = write_all(sock, text, len, NULL, 0, err);
	free(text);
	return rc;
}

static void close_fds(int *fds, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (fds[i] >= 0)
			close(fds[i]);
}

cJSON *proxy_handover_recv(int sock, int *fds, size_t max_fds, size_t *nfds, struct err *err)
{
	unsigned char hdr[4];
	size_t got = 0;
	*nfds = 0;
	while (got < 4) {
		union {
			char buf[CMSG_SPACE(sizeof(int) * (PROXY_LISTENERS_MAX + 1))];
			struct cmsghdr align;
		} u;
		struct iovec iov = {hdr + got, 4 - got};
		struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
				    .msg_controllen = sizeof u.buf};
		ssize_t n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			close_fds(fds, *nfds);
			*nfds = 0;
			err_set(err, "handover receive: %s", n < 0 ? strerror(errno) : "closed");
			return NULL;
		}
		for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
			if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
				continue;
			size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			int *in = (int *)(void *)CMSG_DATA(cm);
			for (size_t i = 0; i < k; i++) {
				int fd;
				memcpy(&fd, in + i, sizeof fd);
				if (*nfds < max_fds)
					fds[(*nfds)++] = fd;
				else
					close(fd);
			}
		}
		got += (size_t)n;
	}
	size_t len = (size_t)hdr[0] << 24 | (size_t)hdr[1] << 16 | (size_t)hdr[2] << 8 | hdr[3];
	if (len > PROXY_HANDOVER_MAX) {
		close_fds(fds, *nfds);
		*nfds = 0;
		err_set(err, "handover: message of %zu bytes is too large", len);
		return NULL;
	}
	char *text = malloc(len + 1);
	size_t off = 0;
	while (text && off < len) {
		ssize_t n = read(sock, text + off, len - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			err_set(err, "handover receive: %s", n < 0 ? strerror(errno) : "closed");
			free(text);
			close_fds(fds, *nfds);
			*nfds = 0;
			return NULL;
		}
		off += (size_t)n;
	}
	if (!text) {
		close_fds(fds, *nfds);
		*nfds = 0;
		err_set(err, "out of memory");
		return NULL;
	}
	cJSON *doc = json_parse(text, len, PROXY_HANDOVER_MAX, err);
	free(text);
	if (!doc) {
		close_fds(fds, *nfds);
		*nfds = 0;
	}
	return doc;
}

/* ------------------------------------------------------------------ */
/* old side: hand everything to a newer process                          */

static void ho_accept_cb(struct ev_loop *loop, ev_io *w, int revents);

static void exit_check_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)revents;
	struct pmain *m = w->data;
	bool idle = proxy_connection_count(m->proxy) == 0 && proxy_ctl_requests(m->ctl) == 0;
	bool late = m->stop_timeout_ms > 0 &&
		    clock_mono_ms() - m->stop_started_ms > m->stop_timeout_ms + 2000;
	if (idle || late) {
		log_info("proxy.exit", "idle=%s", idle ? "true" : "false");
		ev_break(loop, EVBREAK_ALL);
	}
}

static void start_stopping(struct pmain *m, const char *why)
{
	if (m->stopping)
		return;
	m->stopping = true;
	m->stop_started_ms = clock_mono_ms();
	sdnotify_stopping();
	log_info("proxy.stop", "reason=%s connections=%zu", why, proxy_connection_count(m->proxy));
	proxy_ctl_stop_accepting(m->ctl);
	proxy_stop(m->proxy, m->stop_timeout_ms, NULL, NULL);
	if (m->ho_fd >= 0) {
		ev_io_stop(m->loop, &m->ho_accept);
		close(m->ho_fd);
		m->ho_fd = -1;
	}
	ev_timer_init(&m->exit_check, exit_check_cb, 0., EXIT_CHECK_S);
	m->exit_check.data = m;
	ev_timer_again(m->loop, &m->exit_check);
}

static void ho_conn_close(struct pmain *m)
{
	ev_io_stop(m->loop, &m->ho_conn_io);
	if (m->ho_conn >= 0)
		close(m->ho_conn);
	m->ho_conn = -1;
	m->ho_in_len = 0;
}

static void ho_conn_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	(void)loop;
	(void)revents;
	struct pmain *m = w->data;
	ssize_t n = read(m->ho_conn, m->ho_in + m->ho_in_len, sizeof m->ho_in - 1 - m->ho_in_len);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n > 0) {
		m->ho_in_len += (size_t)n;
		m->ho_in[m->ho_in_len] = '\0';
		if (!strchr(m->ho_in, '\n') && m->ho_in_len < sizeof m->ho_in - 1)
			return;
	}
	if (n > 0 && !strcmp(m->ho_in, "GO\n")) {
		log_info("proxy.handover_done", "role=old");
		start_stopping(m, "handover");
		if (write(m->ho_conn, "OK\n", 3) != 3)
			log_warn("proxy.handover_ack_failed", "error=%s", strerror(errno));
		ho_conn_close(m);
		return;
	}
	/* The new process died or said something else: keep serving. */
	log_warn("proxy.handover_aborted", "role=old");
	ho_conn_close(m);
	ev_io_start(m->loop, &m->ho_accept);
	proxy_ctl_resume(m->ctl);
}

static void ho_accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	(void)revents;
	struct pmain *m = w->data;
	int fd = accept4(m->ho_fd, NULL, NULL, SOCK_CLOEXEC);
	if (fd < 0)
		return;
	if (m->ho_conn >= 0 || m->stopping) {
		close(fd); /* one take-over at a time */
		return;
	}
	struct timeval tv = {.tv_sec = HANDOVER_IO_TIMEOUT_S};
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	/* Control requests arriving from now on wait in the backlog for the new
	 * process, so no route change can fall between the snapshot and it. */
	proxy_ctl_pause(m->ctl);
	struct proxy_listener_info ls[PROXY_LISTENERS_MAX];
	size_t n = proxy_listeners(m->proxy, ls, PROXY_LISTENERS_MAX);
	int fds[PROXY_LISTENERS_MAX + 1];
	fds[0] = proxy_ctl_listen_fd(m->ctl);
	cJSON *doc = proxy_routes_json(m->proxy, false);
	cJSON *arr = doc ? cJSON_AddArrayToObject(doc, "listeners") : NULL;
	for (size_t i = 0; arr && i < n; i++) {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddItemToArray(arr, o);
		cJSON_AddNumberToObject(o, "port", ls[i].port);
		cJSON_AddStringToObject(o, "protocol", ls[i].protocol == PROXY_TCP ? "tcp" : "http");
		fds[i + 1] = ls[i].fd;
	}
	if (doc)
		cJSON_AddNumberToObject(doc, "version", 1);
	struct err e = {{0}};
	if (!arr || proxy_handover_send(fd, doc, fds, n + 1, &e) < 0) {
		log_error("proxy.handover_failed", "role=old error=%s", arr ? e.msg : "out of memory");
		cJSON_Delete(doc);
		close(fd);
		proxy_ctl_resume(m->ctl);
		return;
	}
	cJSON_Delete(doc);
	log_info("proxy.handover_sent", "listeners=%zu routes=%zu", n, proxy_route_count(m->proxy));
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	m->ho_conn = fd;
	ev_io_stop(loop, &m->ho_accept);
	ev_io_init(&m->ho_conn_io, ho_conn_cb, fd, EV_READ);
	m->ho_conn_io.data = m;
	ev_io_start(loop, &m->ho_conn_io);
}

/* ------------------------------------------------------------------ */
/* new side: take over from a running proxy                              */

/* Connects to an older proxy's hand-over socket; -1 when none answers. */
static int ho_connect(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if (snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path) >= (int)sizeof sa.sun_path)
		return -1;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
		close(fd);
		return -1;
	}
	struct timeval tv = {.tv_sec = HANDOVER_IO_TIMEOUT_S};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	return fd;
}

/* Returns 1 when it took over, 0 when there was nobody to take over from,
 * -1 when a take-over started and failed (the old process keeps serving). */
static int take_over(struct pmain *m, const struct proxy_ctl_config *base, struct err *err)
{
	int sock = ho_connect(m->handover);
	if (sock < 0)
		return 0;
	int fds[PROXY_LISTENERS_MAX + 1];
	size_t nfds = 0;
	cJSON *doc = proxy_handover_recv(sock, fds, PROXY_LISTENERS_MAX + 1, &nfds, err);
	if (!doc) {
		close(sock);
		return -1;
	}
	const cJSON *ls;
	size_t n = 0;
	bool draining = false;
	if (nfds < 1 ||
	    json_get_array(doc, NULL, "listeners", PROXY_LISTENERS_MAX, &ls, &n, err) < 0 ||
	    json_get_bool_opt(doc, NULL, "draining", false, &draining, err) < 0 || nfds != n + 1) {
		if (nfds >= 1 && !err->msg[0])
			err_set(err, "handover: %zu sockets for %zu listeners", nfds, n);
		goto fail;
	}
	for (size_t i = 0; i < n; i++) {
		const cJSON *o = cJSON_GetArrayItem(ls, (int)i);
		int64_t port;
		const char *proto;
		if (json_get_int(o, "listeners[]", "port", 1, 65535, &port, err) < 0 ||
		    json_get_string(o, "listeners[]", "protocol", 8, &proto, err) < 0)
			goto fail;
		if (proxy_adopt_listener(m->proxy, (int)port,
					 strcmp(proto, "tcp") ? PROXY_HTTP : PROXY_TCP, fds[i + 1],
					 err) < 0)
			goto fail;
		fds[i + 1] = -1; /* the proxy's now */
	}
	int loaded = proxy_ctl_load_table(m->proxy, doc, err);
	if (loaded < 0)
		goto fail;
	proxy_set_draining(m->proxy, draining);
	proxy_prune_listeners(m->proxy);
	struct proxy_ctl_config cc = *base;
	cc.listen_fd = fds[0];
	m->ctl = proxy_ctl_new(m->loop, m->proxy, m->workers, &cc, err);
	if (!m->ctl)
		goto fail;
	fds[0] = -1;
	cJSON_Delete(doc);
	doc = NULL;
	/* Serving from here on; the old process may stop accepting. */
	char ack[8] = {0};
	if (write(sock, "GO\n", 3) != 3 || read(sock, ack, sizeof ack - 1) <= 0 ||
	    strcmp(ack, "OK\n") != 0)
		log_warn("proxy.handover_no_ack", "the old proxy did not confirm; serving anyway");
	close(sock);
	log_info("proxy.handover_done", "role=new listeners=%zu routes=%d", n, loaded);
	proxy_ctl_persist(m->ctl);
	return 1;
fail:
	close_fds(fds, nfds);
	cJSON_Delete(doc);
	close(sock); /* the old process sees EOF and keeps serving */
	err_prefix(err, "taking over from the running proxy");
	return -1;
}

static int ho_listen(struct pmain *m, struct err *err)
{
	int fd = proxy_ctl_listen_unix(m->handover, 4, "hand-over socket", err);
	if (fd < 0)
		return -1;
	m->ho_fd = fd;
	ev_io_init(&m->ho_accept, ho_accept_cb, fd, EV_READ);
	m->ho_accept.data = m;
	ev_io_start(m->loop, &m->ho_accept);
	return 0;
}

/* ------------------------------------------------------------------ */
/* the process                                                          */

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
	(void)loop;
	(void)revents;
	struct pmain *m = w->data;
	start_stopping(m, w->signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

static void usage(FILE *out)
{
	fprintf(out, "usage: slipway-agent proxy [--config FILE]\n"
		     "  Runs the proxy: the public ports and the control socket.\n"
		     "  Config: %s unless --config is given; %s* variables override.\n",
		     AGENT_DEFAULT_CONFIG, AGENT_ENV_PREFIX);
}

/* The agent's schema with nothing required: the proxy needs no coordinator
 * settings, but reads the same file and refuses the same unknown keys. */
static struct config *load_config(const char *path, struct config_key **schema_out,
				  struct err *err)
{
	struct config_key *schema = calloc(agent_settings_count, sizeof *schema);
	*schema_out = schema; /* the config refers to it: freed after config_free */
	if (!schema) {
		err_set(err, "out of memory");
		return NULL;
	}
	for (size_t i = 0; i < agent_settings_count; i++) {
		schema[i] = agent_settings[i];
		schema[i].required = false;
	}
	return config_load(schema, agent_settings_count, path, AGENT_ENV_PREFIX, err);
}

int proxy_main(int argc, char **argv)
{
	const char *config_path = NULL;
	bool explicit_config = false;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--config") && i + 1 < argc) {
			config_path = argv[++i];
			explicit_config = true;
		} else if (!strncmp(argv[i], "--config=", 9)) {
			config_path = argv[i] + 9;
			explicit_config = true;
		} else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			usage(stdout);
			return 0;
		} else if (strcmp(argv[i], "proxy") != 0) {
			usage(stderr);
			return 2;
		}
	}
	if (!explicit_config && access(AGENT_DEFAULT_CONFIG, R_OK) == 0)
		config_path = AGENT_DEFAULT_CONFIG;
	struct err err = {{0}};
	struct pmain m = {.ho_fd = -1, .ho_conn = -1};
	struct config_key *schema = NULL;
	m.cfg = load_config(config_path, &schema, &err);
	if (!m.cfg) {
		free(schema);
		fprintf(stderr, "slipway-agent proxy: %s\n", err.msg);
		return 1;
	}
	enum log_level level = LOG_LEVEL_INFO;
	log_level_parse(config_str(m.cfg, "log.level"), &level);
	log_init("slipway-proxy", level, config_bool(m.cfg, "log.syslog"));
	signal(SIGPIPE, SIG_IGN);
	if (sdnotify_init(&err) < 0) { /* systemd (Type=notify), before any thread */
		log_warn("proxy.sdnotify", "error=%s", err.msg);
		err.msg[0] = '\0';
	}
	if (httpd_raise_nofile_limit(&err) < 0)
		log_warn("proxy.nofile", "error=%s", err.msg);

	const char *state_dir = config_str(m.cfg, "agent.state_dir");
	if (mkdir(state_dir, 0700) < 0 && errno != EEXIST)
		log_warn("proxy.state_dir", "dir=%s error=%s", state_dir, strerror(errno));
	agent_settings_path(m.cfg, "proxy.control_socket", "proxy.sock", m.control,
			    sizeof m.control);
	snprintf(m.handover, sizeof m.handover, "%s.handover", m.control);
	snprintf(m.routes_file, sizeof m.routes_file, "%s/proxy-routes.json", state_dir);
	m.stop_timeout_ms = config_ms(m.cfg, "proxy.stop_timeout");

	int rc = 1;
	m.loop = ev_default_loop(0);
	m.workers = worker_pool_new(m.loop, 1, 64, &err);
	struct proxy_config pc = {
		.bind = config_str(m.cfg, "proxy.bind"),
		.health_path = config_str(m.cfg, "proxy.health_path"),
		.idle_timeout_ms = config_ms(m.cfg, "proxy.idle_timeout"),
		.header_timeout_ms = config_ms(m.cfg, "proxy.header_timeout"),
		.max_header_size = (size_t)config_size(m.cfg, "proxy.max_header_size"),
		.connect_timeout_ms = config_ms(m.cfg, "proxy.connect_timeout"),
		.upstream_timeout_ms = config_ms(m.cfg, "proxy.upstream_timeout"),
		.upstream_idle_timeout_ms = config_ms(m.cfg, "proxy.upstream_idle_timeout"),
	};
	if (m.workers)
		m.proxy = proxy_new(m.loop, &pc, &err);
	if (!m.proxy)
		goto out;
	struct proxy_ctl_config cc = {
		.socket_path = m.control,
		.listen_fd = -1,
		.routes_file = m.routes_file,
		.version = AGENT_VERSION,
	};
	int took = take_over(&m, &cc, &err);
	if (took < 0)
		goto out;
	if (took == 0) {
		int loaded = proxy_ctl_load_file(m.proxy, m.routes_file, &err);
		if (loaded < 0)
			log_error("proxy.routes_unreadable", "error=%s", err.msg);
		else
			log_info("proxy.routes_loaded", "file=%s routes=%d", m.routes_file, loaded);
		m.ctl = proxy_ctl_new(m.loop, m.proxy, m.workers, &cc, &err);
		if (!m.ctl)
			goto out;
	}
	if (ho_listen(&m, &err) < 0)
		log_warn("proxy.handover_unavailable", "error=%s", err.msg);
	ev_signal_init(&m.sigterm, on_signal, SIGTERM);
	ev_signal_init(&m.sigint, on_signal, SIGINT);
	m.sigterm.data = m.sigint.data = &m;
	ev_signal_start(m.loop, &m.sigterm);
	ev_signal_start(m.loop, &m.sigint);
	log_info("proxy.start", "pid=%ld version=%s control=%s routes=%zu took_over=%s",
		 (long)getpid(), AGENT_VERSION, m.control, proxy_route_count(m.proxy),
		 took ? "true" : "false");
	/* systemd: serving now (after a take-over: `systemctl start` of the new
	 * slot returns here); the loop pings the watchdog */
	char status[96];
	snprintf(status, sizeof status, "serving %zu routes%s", proxy_route_count(m.proxy),
		 took ? ", taken over from the previous proxy" : "");
	sdnotify_watchdog_start(m.loop);
	sdnotify_ready(status);
	ev_run(m.loop, 0);
	rc = 0;
	ev_signal_stop(m.loop, &m.sigterm);
	ev_signal_stop(m.loop, &m.sigint);
	ev_timer_stop(m.loop, &m.exit_check);
	ho_conn_close(&m);
	if (m.ho_fd >= 0) {
		ev_io_stop(m.loop, &m.ho_accept);
		close(m.ho_fd);
	}
out:
	sdnotify_watchdog_stop();
	if (rc)
		log_error("proxy.start_failed", "error=%s", err.msg);
	proxy_ctl_free(m.ctl);
	proxy_free(m.proxy);
	worker_pool_free(m.workers);
	config_free(m.cfg);
	free(schema);
	return rc;
}
