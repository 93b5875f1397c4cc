/*
 * proxy_client against the real control server: the proxy (data plane +
 * proxy_ctl) runs on its own loop in a thread; the client runs on the test
 * thread's loop through common/http_client, as the deployer uses it.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <ev.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http_client.h"
#include "log.h"
#include "proxy.h"
#include "proxy_client.h"
#include "proxy_ctl.h"
#include "worker.h"

/* ---- the proxy, in a thread ---- */

struct fx {
	char dir[48], sock[100];
	struct ev_loop *ploop;
	struct worker_pool *w;
	struct proxy *p;
	struct proxy_ctl *ctl;
	pthread_t th;
	ev_async stop;
	/* the client side */
	struct ev_loop *loop;
	struct http_client *http;
	struct proxy_client *pc;
};

static void stop_cb(struct ev_loop *loop, ev_async *w, int revents)
{
	(void)w;
	(void)revents;
	ev_break(loop, EVBREAK_ALL);
}

static void *run(void *arg)
{
	struct fx *f = arg;
	ev_run(f->ploop, 0);
	return NULL;
}

static int free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
	socklen_t sl = sizeof sa;
	getsockname(fd, (struct sockaddr *)&sa, &sl);
	close(fd);
	return ntohs(sa.sin_port);
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof *f);
	struct err err;
	snprintf(f->dir, sizeof f->dir, "/tmp/slipway-pc-test-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->sock, sizeof f->sock, "%s/proxy.sock", f->dir);
	f->ploop = ev_loop_new(EVFLAG_AUTO);
	f->w = worker_pool_new(f->ploop, 1, 16, &err);
	struct proxy_config pc = {
		.bind = "127.0.0.1", .health_path = "/_slipway/health",
		.idle_timeout_ms = 75000, .header_timeout_ms = 10000, .max_header_size = 16384,
		.connect_timeout_ms = 1000, .upstream_timeout_ms = 5000,
		.upstream_idle_timeout_ms = 30000,
	};
	f->p = proxy_new(f->ploop, &pc, &err);
	assert_non_null(f->p);
	struct proxy_ctl_config cc = {.socket_path = f->sock, .listen_fd = -1, .version = "test"};
	f->ctl = proxy_ctl_new(f->ploop, f->p, f->w, &cc, &err);
	assert_non_null(f->ctl);
	ev_async_init(&f->stop, stop_cb);
	ev_async_start(f->ploop, &f->stop);
	assert_int_equal(pthread_create(&f->th, NULL, run, f), 0);
	f->loop = ev_loop_new(EVFLAG_AUTO);
	f->http = http_client_new(f->loop);
	f->pc = proxy_client_new(f->http, f->sock);
	assert_non_null(f->pc);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	proxy_client_free(f->pc);
	http_client_free(f->http);
	ev_loop_destroy(f->loop);
	ev_async_send(f->ploop, &f->stop);
	pthread_join(f->th, NULL);
	ev_async_stop(f->ploop, &f->stop);
	proxy_ctl_free(f->ctl);
	proxy_free(f->p);
	worker_pool_free(f->w);
	ev_loop_destroy(f->ploop);
	unlink(f->sock);
	rmdir(f->dir);
	free(f);
	return 0;
}

/* ---- results land here ---- */

struct got {
	bool done;
	int status;
	char error[600];
	char code[64];
	size_t count;
	char ids[8][65];
	int64_t inflight[8];
	bool drained, draining;
	int64_t remaining, pid;
	char version[32];
	char release[65];
	int listen;
	size_t hosts;
};

static void got_res(struct got *g, const struct proxy_result *res)
{
	g->done = true;
	g->status = res->status;
	snprintf(g->error, sizeof g->error, "%s", res->error ? res->error : "");
	snprintf(g->code, sizeof g->code, "%s", res->code);
}

static void on_route(const struct proxy_result *res, const struct proxy_backend_state *prev,
		     size_t n, void *arg)
{
	struct got *g = arg;
	got_res(g, res);
	g->count = n;
	for (size_t i = 0; i < n && i < 8; i++) {
		snprintf(g->ids[i], sizeof g->ids[i], "%s", prev[i].id);
		g->inflight[i] = prev[i].inflight;
	}
}

static void on_drain(const struct proxy_result *res, bool drained, int64_t remaining,
		     int64_t waited_ms, void *arg)
{
	(void)waited_ms;
	struct got *g = arg;
	got_res(g, res);
	g->drained = drained;
	g->remaining = remaining;
}

static void on_done(const struct proxy_result *res, void *arg)
{
	got_res(arg, res);
}

static void on_routes(const struct proxy_result *res, const struct proxy_route_state *rs,
		      size_t n, bool draining, void *arg)
{
	struct got *g = arg;
	got_res(g, res);
	g->count = n;
	g->draining = draining;
	if (n) {
		snprintf(g->release, sizeof g->release, "%s", rs[0].release);
		g->listen = rs[0].listen;
		g->hosts = rs[0].host_count;
		for (size_t i = 0; i < rs[0].backend_count && i < 8; i++)
			snprintf(g->ids[i], sizeof g->ids[i], "%s", rs[0].backends[i].id);
	}
}

static void on_health(const struct proxy_result *res, const struct proxy_health *h, void *arg)
{
	struct got *g = arg;
	got_res(g, res);
	if (h) {
		g->pid = h->pid;
		snprintf(g->version, sizeof g->version, "%s", h->version);
	}
}

static void wait_for(struct fx *f, struct got *g)
{
	while (!g->done)
		ev_run(f->loop, EVRUN_ONCE);
}

static uint64_t set(struct fx *f, const char *app, int port, const char *host, const char *id,
		    const char *addr, struct got *g)
{
	const char *hosts[] = {host};
	struct proxy_backend_spec be[] = {{id, addr}};
	struct proxy_route_spec spec = {
		.app = app, .service = "web", .generation = 3, .release = "r_7", .listen = port,
		.protocol = PROXY_HTTP, .hosts = hosts, .host_count = 1, .backends = be,
		.backend_count = id ? 1 : 0,
	};
	memset(g, 0, sizeof *g);
	return proxy_client_set_route(f->pc, &spec, on_route, g);
}

static void test_calls(void **state)
{
	struct fx *f = *state;
	struct got g = {0};
	assert_true(proxy_client_health(f->pc, on_health, &g) > 0);
	wait_for(f, &g);
	assert_string_equal(g.error, "");
	assert_int_equal(g.pid, getpid());
	assert_string_equal(g.version, "test");

	int port = free_port();
	assert_true(set(f, "web", port, "web.example.com", "b1", "127.0.0.1:1", &g) > 0);
	wait_for(f, &g);
	assert_string_equal(g.error, "");
	assert_int_equal(g.status, 200);
	assert_int_equal(g.count, 0);
	set(f, "web", port, "web.example.com", "b2", "127.0.0.1:2", &g);
	wait_for(f, &g);
	assert_int_equal(g.count, 1);
	assert_string_equal(g.ids[0], "b1");
	assert_int_equal(g.inflight[0], 0);

	memset(&g, 0, sizeof g);
	assert_true(proxy_client_routes(f->pc, on_routes, &g) > 0);
	wait_for(f, &g);
	assert_string_equal(g.error, "");
	assert_int_equal(g.count, 1);
	assert_string_equal(g.release, "r_7");
	assert_int_equal(g.listen, port);
	assert_int_equal(g.hosts, 1);
	assert_string_equal(g.ids[0], "b2");

	/* another app on the same host and port: a 409 the caller can tell apart */
	set(f, "other", port, "web.example.com", "b3", "127.0.0.1:3", &g);
	wait_for(f, &g);
	assert_int_equal(g.status, 409);
	assert_string_equal(g.code, "conflict");
	assert_non_null(strstr(g.error, "HTTP 409 conflict: host web.example.com"));

	const char *ids[] = {"b1"};
	memset(&g, 0, sizeof g);
	assert_true(proxy_client_drain(f->pc, "web", "web", ids, 1, 1000, on_drain, &g) > 0);
	wait_for(f, &g);
	assert_string_equal(g.error, "");
	assert_true(g.drained);
	assert_int_equal(g.remaining, 0);
	const char *active[] = {"b2"};
	memset(&g, 0, sizeof g);
	proxy_client_drain(f->pc, "web", "web", active, 1, 1000, on_drain, &g);
	wait_for(f, &g);
	assert_int_equal(g.status, 409);

	memset(&g, 0, sizeof g);
	assert_true(proxy_client_set_draining(f->pc, true, on_done, &g) > 0);
	wait_for(f, &g);
	assert_string_equal(g.error, "");
	memset(&g, 0, sizeof g);
	proxy_client_routes(f->pc, on_routes, &g);
	wait_for(f, &g);
	assert_true(g.draining);

	memset(&g, 0, sizeof g);
	assert_true(proxy_client_remove_route(f->pc, "web", "web", on_done, &g) > 0);
	wait_for(f, &g);
	assert_string_equal(g.error, "");
	assert_int_equal(g.status, 200);
	memset(&g, 0, sizeof g);
	proxy_client_remove_route(f->pc, "web", "web", on_done, &g); /* gone already: fine */
	wait_for(f, &g);
	assert_string_equal(g.error, "");
	assert_int_equal(g.status, 404);

	/* a bad spec never leaves: 0, no callback */
	struct proxy_route_spec bad = {.app = NULL};
	assert_int_equal(proxy_client_set_route(f->pc, &bad, on_route, &g), 0);
}

static void test_cancel_and_transport_error(void **state)
{
	struct fx *f = *state;
	struct got cancelled = {0}, g = {0};
	uint64_t id = proxy_client_health(f->pc, on_health, &cancelled);
	assert_true(id > 0);
	proxy_client_cancel(f->pc, id);
	proxy_client_health(f->pc, on_health, &g);
	wait_for(f, &g);
	assert_false(cancelled.done);

	/* nobody at the socket: retried a few times, then a transport error */
	struct proxy_client *nowhere = proxy_client_new(f->http, "/nonexistent/proxy.sock");
	memset(&g, 0, sizeof g);
	assert_true(proxy_client_routes(nowhere, on_routes, &g) > 0);
	while (!g.done)
		ev_run(f->loop, EVRUN_ONCE);
	assert_int_equal(g.status, 0);
	assert_non_null(strstr(g.error, "proxy control:"));
	/* freeing with a call pending: no callback afterwards */
	struct got pend = {0};
	proxy_client_health(nowhere, on_health, &pend);
	proxy_client_free(nowhere);
	memset(&g, 0, sizeof g);
	proxy_client_health(f->pc, on_health, &g);
	wait_for(f, &g);
	assert_false(pend.done);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	log_init("test_proxy_client", LOG_LEVEL_ERROR, 0);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_calls, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cancel_and_transport_error, setup, teardown),
	};
	return cmocka_run_group_tests_name("proxy_client", tests, NULL, NULL);
}
