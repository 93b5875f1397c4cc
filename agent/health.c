#include "health.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "buf.h"
#include "clock.h"
#include "docker.h"
#include "http_client.h"
#include "log.h"

#define DETAIL_MAX 256
#define INSPECT_EVERY 3

struct health_probe {
	struct ev_loop *loop;
	struct http_client *http;
	struct docker *docker;
	struct spec_health spec;
	char path[SPEC_PATH_MAX + 1];
	char id[80];
	char address[80];
	health_done_fn done;
	void *arg;
	int64_t start_ms;
	int64_t deadline_ms;
	int failures;
	ev_timer timer;           /* next probe */
	ev_timer probe_timeout;   /* tcp */
	ev_io io;                 /* tcp connect */
	int fd;
	uint64_t http_id;
	uint64_t docker_id;
	uint64_t inspect_id;      /* the every-third-failure check */
	bool finished;
	char detail[DETAIL_MAX];
};

static void probe(struct health_probe *p);

static void stop_probe(struct health_probe *p)
{
	ev_timer_stop(p->loop, &p->probe_timeout);
	if (p->fd >= 0) {
		ev_io_stop(p->loop, &p->io);
		close(p->fd);
		p->fd = -1;
	}
	if (p->http_id) {
		http_client_cancel(p->http, p->http_id);
		p->http_id = 0;
	}
	if (p->docker_id) {
		docker_cancel(p->docker, p->docker_id);
		p->docker_id = 0;
	}
}

static void finish(struct health_probe *p, bool ok, const char *detail)
{
	if (p->finished)
		return;
	p->finished = true;
	stop_probe(p);
	ev_timer_stop(p->loop, &p->timer);
	if (p->inspect_id) {
		docker_cancel(p->docker, p->inspect_id);
		p->inspect_id = 0;
	}
	int64_t now = clock_mono_ms();
	if (ok)
		log_info("health.pass", "container=%.12s type=%s after_ms=%lld at_ms=%lld", p->id,
			 spec_health_type_name(p->spec.type), (long long)(now - p->start_ms),
			 (long long)clock_wall_ms());
	else
		log_warn("health.fail", "container=%.12s type=%s after_ms=%lld detail=\"%s\"", p->id,
			 spec_health_type_name(p->spec.type), (long long)(now - p->start_ms),
			 detail);
	p->done(ok, detail, p->arg);
}

static void on_inspect(const struct docker_result *res, void *arg)
{
	struct health_probe *p = arg;
	p->inspect_id = 0;
	if (res->error != DOCKER_OK || p->finished)
		return;
	const cJSON *st = cJSON_GetObjectItemCaseSensitive(res->json, "State");
	const cJSON *status = cJSON_GetObjectItemCaseSensitive(st, "Status");
	const cJSON *code = cJSON_GetObjectItemCaseSensitive(st, "ExitCode");
	const cJSON *restarts = cJSON_GetObjectItemCaseSensitive(res->json, "RestartCount");
	const char *s = cJSON_IsString(status) ? status->valuestring : "";
	int exit_code = cJSON_IsNumber(code) ? code->valueint : 0;
	char why[DETAIL_MAX + 64];
	if (strcmp(s, "exited") == 0 || strcmp(s, "dead") == 0 || strcmp(s, "restarting") == 0 ||
	    (cJSON_IsNumber(restarts) && restarts->valueint > 0)) {
		snprintf(why, sizeof why, "container %s (exit code %d, %d restarts); last probe: %s",
			 s, exit_code, cJSON_IsNumber(restarts) ? restarts->valueint : 0, p->detail);
		finish(p, false, why);
	}
}

/* A probe failed: try again after the interval, or give up at the deadline. */
static void failed(struct health_probe *p, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void failed(struct health_probe *p, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(p->detail, sizeof p->detail, fmt, ap);
	va_end(ap);
	stop_probe(p);
	int64_t now = clock_mono_ms();
	p->failures++;
	if (now >= p->deadline_ms) {
		char why[DETAIL_MAX + 64];
		snprintf(why, sizeof why, "%s (not healthy within %lld ms)", p->detail,
			 (long long)p->spec.grace_ms);
		finish(p, false, why);
		return;
	}
	if (p->failures % INSPECT_EVERY == 0 && !p->inspect_id && p->docker)
		p->inspect_id = docker_container_inspect(p->docker, p->id, 0, on_inspect, p);
	int64_t wait = p->spec.interval_ms;
	if (now + wait > p->deadline_ms)
		wait = p->deadline_ms - now;
	ev_timer_set(&p->timer, (double)(wait > 0 ? wait : 0) / 1000.0, 0.0);
	ev_timer_start(p->loop, &p->timer);
}

/* ---- http ---- */

static void on_http(const struct http_response *resp, void *arg)
{
	struct health_probe *p = arg;
	p->http_id = 0;
	if (resp->error != HTTP_OK) {
		failed(p, "GET %s: %s", p->path, resp->error_msg);
		return;
	}
	if (resp->status >= 200 && resp->status < 400) {
		finish(p, true, "");
		return;
	}
	failed(p, "GET %s: %ld", p->path, resp->status);
}

static void probe_http(struct health_probe *p)
{
	char url[SPEC_PATH_MAX + 128];
	snprintf(url, sizeof url, "http://%s%s", p->address, p->path);
	const char *headers[] = {"User-Agent: slipway-agent health", NULL};
	struct http_request req = {
		.url = url,
		.headers = headers,
		.timeout_ms = p->spec.timeout_ms,
		.connect_timeout_ms = p->spec.timeout_ms,
		.max_body = (size_t)64 << 10,
		/* Probes end with the swap and the containers go: keep no connection. */
		.no_reuse = true,
		.on_done = on_http,
		.arg = p,
	};
	p->http_id = http_client_start(p->http, &req);
	if (!p->http_id)
		failed(p, "GET %s: could not start the request", p->path);
}

/* ---- tcp ---- */

static int parse_address(const char *a, struct sockaddr_storage *ss, socklen_t *len)
{
	char host[64];
	const char *colon = strrchr(a, ':');
	if (!colon || colon == a)
		return -1;
	size_t hl = (size_t)(colon - a);
	const char *h = a;
	if (a[0] == '[' && hl >= 2 && a[hl - 1] == ']') {
		h = a + 1;
		hl -= 2;
	}
	if (hl >= sizeof host)
		return -1;
	memcpy(host, h, hl);
	host[hl] = '\0';
	long port = strtol(colon + 1, NULL, 10);
	if (port < 1 || port > 65535)
		return -1;
	memset(ss, 0, sizeof *ss);
	struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
		v4->sin_family = AF_INET;
		v4->sin_port = htons((uint16_t)port);
		*len = sizeof *v4;
		return 0;
	}
	if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
		v6->sin6_family = AF_INET6;
		v6->sin6_port = htons((uint16_t)port);
		*len = sizeof *v6;
		return 0;
	}
	return -1;
}

static void on_connect(struct ev_loop *loop, ev_io *w, int revents)
{
	(void)loop;
	(void)revents;
	struct health_probe *p = w->data;
	int e = 0;
	socklen_t l = sizeof e;
	if (getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &e, &l) < 0)
		e = errno;
	if (e == 0)
		finish(p, true, "");
	else
		failed(p, "tcp %s: %s", p->address, strerror(e));
}

static void on_probe_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	struct health_probe *p = w->data;
	failed(p, "tcp %s: no connection within %lld ms", p->address,
	       (long long)p->spec.timeout_ms);
}

static void probe_tcp(struct health_probe *p)
{
	struct sockaddr_storage ss;
	socklen_t len;
	if (parse_address(p->address, &ss, &len) < 0) {
		failed(p, "tcp %s: not an address", p->address);
		return;
	}
	p->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (p->fd < 0) {
		failed(p, "tcp %s: socket: %s", p->address, strerror(errno));
		return;
	}
	if (connect(p->fd, (struct sockaddr *)&ss, len) == 0) {
		finish(p, true, "");
		return;
	}
	if (errno != EINPROGRESS) {
		failed(p, "tcp %s: %s", p->address, strerror(errno));
		return;
	}
	ev_io_init(&p->io, on_connect, p->fd, EV_WRITE);
	p->io.data = p;
	ev_io_start(p->loop, &p->io);
	ev_timer_set(&p->probe_timeout, (double)p->spec.timeout_ms / 1000.0, 0.0);
	ev_timer_start(p->loop, &p->probe_timeout);
}

/* ---- docker and running ---- */

static void on_state(const struct docker_result *res, void *arg)
{
	struct health_probe *p = arg;
	p->docker_id = 0;
	if (res->error != DOCKER_OK) {
		failed(p, "inspect: %s", res->message);
		return;
	}
	const cJSON *st = cJSON_GetObjectItemCaseSensitive(res->json, "State");
	const cJSON *status = cJSON_GetObjectItemCaseSensitive(st, "Status");
	const cJSON *running = cJSON_GetObjectItemCaseSensitive(st, "Running");
	const cJSON *code = cJSON_GetObjectItemCaseSensitive(st, "ExitCode");
	const cJSON *restarts = cJSON_GetObjectItemCaseSensitive(res->json, "RestartCount");
	const char *s = cJSON_IsString(status) ? status->valuestring : "?";
	int nrestarts = cJSON_IsNumber(restarts) ? restarts->valueint : 0;
	if (!cJSON_IsTrue(running) || nrestarts > 0) {
		char why[DETAIL_MAX];
		snprintf(why, sizeof why, "container %s (exit code %d, %d restarts)", s,
			 cJSON_IsNumber(code) ? code->valueint : 0, nrestarts);
		finish(p, false, why);
		return;
	}
	if (p->spec.type == SPEC_HEALTH_RUNNING) {
		if (clock_mono_ms() >= p->start_ms + p->spec.grace_ms) {
			finish(p, true, "");
			return;
		}
		/* Still in its grace period: look again (exits fail fast). */
		snprintf(p->detail, sizeof p->detail, "running");
		int64_t wait = p->start_ms + p->spec.grace_ms - clock_mono_ms();
		if (wait > p->spec.interval_ms)
			wait = p->spec.interval_ms;
		ev_timer_set(&p->timer, (double)(wait > 0 ? wait : 0) / 1000.0, 0.0);
		ev_timer_start(p->loop, &p->timer);
		return;
	}
	const cJSON *h = cJSON_GetObjectItemCaseSensitive(st, "Health");
	const cJSON *hs = cJSON_GetObjectItemCaseSensitive(h, "Status");
	if (!cJSON_IsString(hs)) {
		finish(p, false, "health type docker, but the image has no HEALTHCHECK");
		return;
	}
	if (strcmp(hs->valuestring, "healthy") == 0) {
		finish(p, true, "");
		return;
	}
	if (strcmp(hs->valuestring, "unhealthy") == 0) {
		finish(p, false, "docker health: unhealthy");
		return;
	}
	failed(p, "docker health: %s", hs->valuestring);
}

static void probe(struct health_probe *p)
{
	switch (p->spec.type) {
	case SPEC_HEALTH_HTTP:
		probe_http(p);
		break;
	case SPEC_HEALTH_TCP:
		probe_tcp(p);
		break;
	case SPEC_HEALTH_DOCKER:
	case SPEC_HEALTH_RUNNING:
		p->docker_id = docker_container_inspect(p->docker, p->id, p->spec.timeout_ms,
							on_state, p);
		if (!p->docker_id)
			failed(p, "inspect: could not start the request");
		break;
	}
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	probe(w->data);
}

struct health_probe *health_start(struct ev_loop *loop, struct http_client *http,
				  struct docker *docker, const struct health_target *t,
				  health_done_fn done, void *arg)
{
	struct health_probe *p = calloc(1, sizeof *p);
	if (!p)
		return NULL;
	p->loop = loop;
	p->http = http;
	p->docker = docker;
	p->spec = *t->spec;
	p->spec.path = NULL;
	snprintf(p->path, sizeof p->path, "%s", t->spec->path ? t->spec->path : "/");
	snprintf(p->id, sizeof p->id, "%s", t->container_id ? t->container_id : "");
	snprintf(p->address, sizeof p->address, "%s", t->address ? t->address : "");
	p->done = done;
	p->arg = arg;
	p->fd = -1;
	p->start_ms = clock_mono_ms();
	p->deadline_ms = p->start_ms + p->spec.grace_ms;
	snprintf(p->detail, sizeof p->detail, "no probe finished");
	ev_timer_init(&p->timer, on_timer, 0.0, 0.0);
	p->timer.data = p;
	ev_timer_init(&p->probe_timeout, on_probe_timeout, 0.0, 0.0);
	p->probe_timeout.data = p;
	/* The first probe on the next loop turn: done never runs inside this call. */
	ev_timer_start(loop, &p->timer);
	return p;
}

void health_free(struct health_probe *p)
{
	if (!p)
		return;
	p->finished = true;
	stop_probe(p);
	ev_timer_stop(p->loop, &p->timer);
	if (p->inspect_id)
		docker_cancel(p->docker, p->inspect_id);
	free(p);
}
