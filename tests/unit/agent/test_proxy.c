/*
 * proxy (data plane) and proxy_ctl (control API), end to end in one process:
 * the proxy and its control server run on their own libev loop in a thread;
 * the test thread is the client (blocking sockets with timeouts) and drives
 * routes through the real control socket. Backends are scripted HTTP/TCP
 * servers in this process (a thread per connection) so each test controls
 * exactly what a backend does: answer slowly, drop a pooled connection,
 * answer chunked or without a length, upgrade, echo raw TCP.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "json.h"
#include "log.h"
#include "proxy.h"
#include "proxy_ctl.h"
#include "proxy_main.h"
#include "worker.h"

#define IO_TIMEOUT_S 10

/* ------------------------------------------------------------------ */
/* scripted backends                                                    */

enum { BE_HTTP, BE_TCP_ECHO };

struct fake {
	int fd, port, kind;
	char name[16];
	atomic_int conns, reqs;
	atomic_bool drop_second;   /* close without answering the 2nd request of a connection */
	atomic_int in_slow;        /* /slow requests being served */
	pthread_mutex_t lock;
	char last_head[8192];
	char last_body[65536];
	size_t last_body_len;
	bool used;
};

#define FAKES_MAX 16
static struct fake fakes[FAKES_MAX]; /* static: connection threads may outlive a test */

struct fconn {
	struct fake *f;
	int fd;
};

static void fake_send(int fd, const void *p, size_t len)
{
	const char *s = p;
	while (len) {
		ssize_t n = send(fd, s, len, MSG_NOSIGNAL);
		if (n <= 0)
			return;
		s += n;
		len -= (size_t)n;
	}
}

static void fake_sendf(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fake_sendf(int fd, const char *fmt, ...)
{
	char buf[80000];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	fake_send(fd, buf, (size_t)n);
}

/* Reads until "\r\n\r\n" is in in[0..*len); returns the head length or -1 on EOF. */
static long read_head(int fd, char *in, size_t cap, size_t *len)
{
	for (;;) {
		char *e = memmem(in, *len, "\r\n\r\n", 4);
		if (e)
			return e + 4 - in;
		if (*len >= cap)
			return -1;
		ssize_t n = recv(fd, in + *len, cap - *len, 0);
		if (n <= 0)
			return -1;
		*len += (size_t)n;
	}
}

static const char *hdr_val(const char *head, const char *name, char *out, size_t cap)
{
	size_t nl = strlen(name);
	for (const char *p = strstr(head, "\r\n"); p && p[2] != '\r'; p = strstr(p + 2, "\r\n")) {
		if (!strncasecmp(p + 2, name, nl) && p[2 + nl] == ':') {
			const char *v = p + 3 + nl;
			while (*v == ' ')
				v++;
			const char *end = strstr(v, "\r\n");
			size_t l = (size_t)(end - v) < cap - 1 ? (size_t)(end - v) : cap - 1;
			memcpy(out, v, l);
			out[l] = '\0';
			return out;
		}
	}
	return NULL;
}

static void *fake_conn_thread(void *arg)
{
	struct fconn *fc = arg;
	struct fake *f = fc->f;
	int fd = fc->fd;
	free(fc);
	enum { IN_CAP = 200000 };
	char *in = malloc(IN_CAP);
	size_t len = 0;
	int served = 0;
	if (f->kind == BE_TCP_ECHO) {
		for (;;) {
			ssize_t n = recv(fd, in, IN_CAP, 0);
			if (n <= 0)
				break;
			fake_send(fd, in, (size_t)n);
		}
		fake_send(fd, "bye", 3);
		shutdown(fd, SHUT_WR);
		close(fd);
		free(in);
		return NULL;
	}
	for (;;) {
		long hl = read_head(fd, in, IN_CAP - 1, &len);
		if (hl < 0)
			break;
		if (served == 1 && atomic_load(&f->drop_second))
			break;
		char head[8192];
		size_t hcopy = (size_t)hl < sizeof head - 1 ? (size_t)hl : sizeof head - 1;
		memcpy(head, in, hcopy);
		head[hcopy] = '\0';
		char method[16] = "", path[256] = "", v[64];
		sscanf(head, "%15s %255s", method, path);
		/* body */
		size_t blen = 0;
		bool chunked = hdr_val(head, "Transfer-Encoding", v, sizeof v) != NULL;
		if (hdr_val(head, "Expect", v, sizeof v) && !strcasecmp(v, "100-continue"))
			fake_sendf(fd, "HTTP/1.1 100 Continue\r\n\r\n");
		if (chunked) {
			/* good enough for test bodies: the last chunk, trailers, blank line */
			char *end = NULL;
			for (;;) {
				char *z = memmem(in + hl - 2, len - (size_t)hl + 2, "\r\n0\r\n", 5);
				end = z ? memmem(z + 3, len - (size_t)(z + 3 - in), "\r\n\r\n", 4) : NULL;
				if (end)
					break;
				ssize_t n = recv(fd, in + len, IN_CAP - 1 - len, 0);
				if (n <= 0)
					goto out;
				len += (size_t)n;
			}
			blen = (size_t)(end + 4 - (in + hl));
		} else if (hdr_val(head, "Content-Length", v, sizeof v)) {
			blen = (size_t)atol(v);
			while (len < (size_t)hl + blen) {
				ssize_t n = recv(fd, in + len, IN_CAP - 1 - len, 0);
				if (n <= 0)
					goto out;
				len += (size_t)n;
			}
		}
		pthread_mutex_lock(&f->lock);
		memcpy(f->last_head, head, hcopy + 1);
		f->last_body_len = blen < sizeof f->last_body ? blen : sizeof f->last_body;
		memcpy(f->last_body, in + hl, f->last_body_len);
		pthread_mutex_unlock(&f->lock);
		atomic_fetch_add(&f->reqs, 1);
		served++;
		bool is_head = !strcmp(method, "HEAD");
		if (!strncmp(path, "/slow", 5)) {
			int ms = atoi(strstr(path, "ms=") ? strstr(path, "ms=") + 3 : "100");
			atomic_fetch_add(&f->in_slow, 1);
			usleep((useconds_t)ms * 1000);
			atomic_fetch_sub(&f->in_slow, 1);
			fake_sendf(fd, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\nX-Release: %s\r\n\r\n"
				   "slow from %s", strlen(f->name) + 10, f->name, f->name);
		} else if (!strcmp(path, "/echo") && chunked) {
			fake_sendf(fd, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
				   "X-Release: %s\r\n\r\n", f->name);
			fake_send(fd, in + hl, blen);
		} else if (!strcmp(path, "/echo") || !strcmp(path, "/continue")) {
			fake_sendf(fd, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\nX-Release: %s\r\n\r\n",
				   blen, f->name);
			fake_send(fd, in + hl, blen);
		} else if (!strcmp(path, "/headers")) {
			fake_sendf(fd, "HTTP/1.1 200 OK\r\nContent-Length: %ld\r\nConnection: keep-alive"
				   "\r\nKeep-Alive: timeout=5\r\nX-Release: %s\r\n\r\n%s", hl,
				   f->name, head);
		} else if (!strcmp(path, "/nolen")) {
			fake_sendf(fd, "HTTP/1.1 200 OK\r\nX-Release: %s\r\n\r\nuntil the end", f->name);
			break;
		} else if (!strcmp(path, "/ws")) {
			fake_sendf(fd, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
				   "Connection: Upgrade\r\nX-Release: %s\r\n\r\n", f->name);
			/* bytes that came with the head, then echo until EOF */
			if (len > (size_t)hl)
				fake_send(fd, in + hl, len - (size_t)hl);
			for (;;) {
				ssize_t n = recv(fd, in, IN_CAP, 0);
				if (n <= 0)
					break;
				fake_send(fd, in, (size_t)n);
			}
			goto out;
		} else {
			char body[64];
			int bl = snprintf(body, sizeof body, "hello from %s", f->name);
			fake_sendf(fd, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Release: %s\r\n\r\n%s",
				   bl, f->name, is_head ? "" : body);
		}
		memmove(in, in + hl + blen, len - (size_t)hl - blen);
		len -= (size_t)hl + blen;
	}
out:
	close(fd);
	free(in);
	return NULL;
}

static void *fake_accept_thread(void *arg)
{
	struct fake *f = arg;
	for (;;) {
		int fd = accept(f->fd, NULL, NULL);
		if (fd < 0) {
			if (errno == EINTR)
				continue;
			return NULL;
		}
		atomic_fetch_add(&f->conns, 1);
		struct fconn *fc = malloc(sizeof *fc);
		fc->f = f;
		fc->fd = fd;
		pthread_t th;
		pthread_attr_t at;
		pthread_attr_init(&at);
		pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
		pthread_attr_setstacksize(&at, 512 << 10);
		if (pthread_create(&th, &at, fake_conn_thread, fc) != 0) {
			close(fd);
			free(fc);
		}
		pthread_attr_destroy(&at);
	}
}

static int listen_any(int *port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
	assert_int_equal(listen(fd, 128), 0);
	socklen_t sl = sizeof sa;
	getsockname(fd, (struct sockaddr *)&sa, &sl);
	*port = ntohs(sa.sin_port);
	return fd;
}

static struct fake *fake_start(const char *name, int kind)
{
	struct fake *f = NULL;
	for (int i = 0; i < FAKES_MAX && !f; i++)
		if (!fakes[i].used)
			f = &fakes[i];
	assert_non_null(f);
	memset(f, 0, sizeof *f);
	f->used = true;
	f->kind = kind;
	pthread_mutex_init(&f->lock, NULL);
	snprintf(f->name, sizeof f->name, "%s", name);
	f->fd = listen_any(&f->port);
	pthread_t th;
	pthread_attr_t at;
	pthread_attr_init(&at);
	pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
	assert_int_equal(pthread_create(&th, &at, fake_accept_thread, f), 0);
	pthread_attr_destroy(&at);
	return f;
}

/* Stops accepting (the accept thread ends); open connections go on. */
static void fake_stop(struct fake *f)
{
	shutdown(f->fd, SHUT_RDWR);
	close(f->fd);
	f->used = false;
}

/* A port nobody listens on (for "backend down"). */
static int dead_port(void)
{
	int port;
	int fd = listen_any(&port);
	close(fd);
	return port;
}

/* ------------------------------------------------------------------ */
/* blocking client                                                      */

static void set_timeouts(int fd)
{
	struct timeval tv = {.tv_sec = IO_TIMEOUT_S};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

static int tcp_connect(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
	set_timeouts(fd);
	return fd;
}

static void send_str(int fd, const char *s)
{
	size_t len = strlen(s);
	while (len) {
		ssize_t n = send(fd, s, len, MSG_NOSIGNAL);
		assert_true(n > 0);
		s += n;
		len -= (size_t)n;
	}
}

struct resp {
	int status;
	char head[8192];
	size_t head_len;
	char body[70000];
	size_t body_len;
	bool chunked, keep_alive, eof, complete;
	/* parser state */
	http_parser hp;
	bool head_req;
	char field[64];
};

static int r_field(http_parser *hp, const char *at, size_t len)
{
	(void)hp;
	(void)at;
	(void)len;
	return 0;
}

static int r_headers(http_parser *hp)
{
	struct resp *r = hp->data;
	r->status = (int)hp->status_code;
	r->chunked = (hp->flags & F_CHUNKED) != 0;
	return r->head_req ? 1 : 0;
}

static int r_body(http_parser *hp, const char *at, size_t len)
{
	struct resp *r = hp->data;
	if (r->body_len + len < sizeof r->body) {
		memcpy(r->body + r->body_len, at, len);
		r->body_len += len;
		r->body[r->body_len] = '\0';
	}
	return 0;
}

static int r_done(http_parser *hp)
{
	struct resp *r = hp->data;
	if (hp->status_code / 100 == 1 && hp->status_code != 101)
		return 0; /* an informational answer: keep reading */
	r->complete = true;
	r->keep_alive = http_should_keep_alive(hp);
	http_parser_pause(hp, 1);
	return 0;
}

static const http_parser_settings r_settings = {
	.on_header_field = r_field,
	.on_headers_complete = r_headers,
	.on_body = r_body,
	.on_message_complete = r_done,
};

/* Reads one response (the last one when 1xx come first) byte by byte, so
 * nothing of a following response or tunnel is consumed. */
static void read_resp(int fd, struct resp *r, bool head_req)
{
	memset(r, 0, sizeof *r);
	r->head_req = head_req;
	http_parser_init(&r->hp, HTTP_RESPONSE);
	r->hp.data = r;
	while (!r->complete) {
		char ch;
		ssize_t n = recv(fd, &ch, 1, 0);
		if (n <= 0) {
			r->eof = true;
			if (n == 0)
				http_parser_execute(&r->hp, &r_settings, NULL, 0);
			return;
		}
		if (r->head_len < sizeof r->head - 1 && !memmem(r->head, r->head_len, "\r\n\r\n", 4))
			r->head[r->head_len++] = ch;
		size_t k = http_parser_execute(&r->hp, &r_settings, &ch, 1);
		if (k != 1 && HTTP_PARSER_ERRNO(&r->hp) != HPE_PAUSED) {
			r->status = -1;
			return;
		}
		if (r->status == 101 && memmem(r->head, r->head_len, "\r\n\r\n", 4)) {
			r->complete = true;
			return;
		}
	}
}

static bool resp_has(const struct resp *r, const char *header_line)
{
	return strcasestr(r->head, header_line) != NULL;
}

/* True when the peer closed the connection (EOF or reset) within the timeout. */
static bool peer_closed(int fd)
{
	char ch;
	ssize_t n = recv(fd, &ch, 1, 0);
	return n == 0 || (n < 0 && errno == ECONNRESET);
}

static void http_get(int port, const char *host, const char *path, struct resp *r)
{
	int fd = tcp_connect(port);
	char req[512];
	snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", path,
		 host);
	send_str(fd, req);
	read_resp(fd, r, false);
	close(fd);
}

/* ------------------------------------------------------------------ */
/* the proxy under test, on its own loop thread                          */

struct fx {
	char dir[48], sock[100], routes[128];
	struct ev_loop *loop;
	struct worker_pool *w;
	struct proxy *p;
	struct proxy_ctl *ctl;
	pthread_t th;
	ev_async stop;
	ev_async hook;                   /* runs hook_fn on the proxy's loop */
	void (*hook_fn)(struct fx *f);
};

static void fx_stop_cb(struct ev_loop *loop, ev_async *w, int revents)
{
	(void)w;
	(void)revents;
	ev_break(loop, EVBREAK_ALL);
}

static void fx_hook_cb(struct ev_loop *loop, ev_async *w, int revents)
{
	(void)loop;
	(void)revents;
	struct fx *f = w->data;
	if (f->hook_fn)
		f->hook_fn(f);
}

static void *fx_thread(void *arg)
{
	struct fx *f = arg;
	ev_run(f->loop, 0);
	return NULL;
}

static struct proxy_config fx_default_config(void)
{
	return (struct proxy_config){
		.bind = "127.0.0.1",
		.health_path = "/_slipway/health",
		.idle_timeout_ms = 75000,
		.header_timeout_ms = 10000,
		.max_header_size = 16384,
		.connect_timeout_ms = 2000,
		.upstream_timeout_ms = 10000,
		.upstream_idle_timeout_ms = 30000,
		.stop_idle_grace_ms = 200,
	};
}

/* Starts a proxy; keeps f->dir when already set (a restart on the same state). */
static void fx_start(struct fx *f, const struct proxy_config *cfg)
{
	struct err err = {{0}};
	if (!f->dir[0]) {
		snprintf(f->dir, sizeof f->dir, "/tmp/slipway-proxy-test-XXXXXX");
		assert_non_null(mkdtemp(f->dir));
	}
	snprintf(f->sock, sizeof f->sock, "%s/proxy.sock", f->dir);
	snprintf(f->routes, sizeof f->routes, "%s/proxy-routes.json", f->dir);
	f->loop = ev_loop_new(EVFLAG_AUTO);
	f->w = worker_pool_new(f->loop, 1, 64, &err);
	assert_non_null(f->w);
	struct proxy_config def = fx_default_config();
	f->p = proxy_new(f->loop, cfg ? cfg : &def, &err);
	assert_non_null(f->p);
	assert_true(proxy_ctl_load_file(f->p, f->routes, &err) >= 0);
	struct proxy_ctl_config cc = {.socket_path = f->sock, .listen_fd = -1,
				      .routes_file = f->routes, .version = "test"};
	f->ctl = proxy_ctl_new(f->loop, f->p, f->w, &cc, &err);
	if (!f->ctl)
		fail_msg("proxy_ctl_new: %s", err.msg);
	ev_async_init(&f->stop, fx_stop_cb);
	ev_async_start(f->loop, &f->stop);
	ev_async_init(&f->hook, fx_hook_cb);
	f->hook.data = f;
	ev_async_start(f->loop, &f->hook);
	assert_int_equal(pthread_create(&f->th, NULL, fx_thread, f), 0);
}

static void fx_stop(struct fx *f)
{
	ev_async_send(f->loop, &f->stop);
	pthread_join(f->th, NULL);
	ev_async_stop(f->loop, &f->stop);
	ev_async_stop(f->loop, &f->hook);
	proxy_ctl_free(f->ctl);
	proxy_free(f->p);
	worker_pool_free(f->w); /* finishes a route write in flight */
	ev_loop_destroy(f->loop);
	f->ctl = NULL;
	f->p = NULL;
}

static void fx_remove_dir(struct fx *f)
{
	unlink(f->sock);
	unlink(f->routes);
	rmdir(f->dir);
	f->dir[0] = '\0';
}

static int ctl(struct fx *f, const char *method, const char *path, const char *body,
	       struct resp *r)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	snprintf(sa.sun_path, sizeof sa.sun_path, "%s", f->sock);
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
	set_timeouts(fd);
	char req[8192];
	snprintf(req, sizeof req,
		 "%s %s HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n"
		 "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
		 method, path, body ? strlen(body) : 0, body ? body : "");
	send_str(fd, req);
	read_resp(fd, r, false);
	close(fd);
	return r->status;
}

/* PUT a route whose backends are the given fakes (id = the fake's name). */
static int put_route(struct fx *f, const char *app, const char *service, int listen,
		     const char *hosts_json, struct fake *const *bes, int n, struct resp *r)
{
	char body[4096], path[256];
	int k = snprintf(body, sizeof body,
			 "{\"generation\":1,\"release\":\"r1\",\"listen\":%d,\"protocol\":\"http\","
			 "\"hosts\":%s,\"backends\":[", listen, hosts_json);
	for (int i = 0; i < n; i++)
		k += snprintf(body + k, sizeof body - (size_t)k,
			      "%s{\"id\":\"%s\",\"address\":\"127.0.0.1:%d\"}", i ? "," : "",
			      bes[i]->name, bes[i]->port);
	snprintf(body + k, sizeof body - (size_t)k, "]}");
	snprintf(path, sizeof path, "/v1/routes/%s/%s", app, service);
	return ctl(f, "PUT", path, body, r);
}

static cJSON *routes_doc(struct fx *f)
{
	struct resp r;
	assert_int_equal(ctl(f, "GET", "/v1/routes", NULL, &r), 200);
	cJSON *doc = json_parse(r.body, r.body_len, 1 << 20, NULL);
	assert_non_null(doc);
	return doc;
}

/* A backend counter from GET /v1/routes (active or retired); -1 when absent. */
static double be_stat(struct fx *f, const char *id, const char *counter)
{
	cJSON *doc = routes_doc(f);
	double v = -1;
	const cJSON *r;
	cJSON_ArrayForEach(r, cJSON_GetObjectItem(doc, "routes")) {
		const char *lists[] = {"backends", "retired"};
		for (int i = 0; i < 2; i++) {
			const cJSON *b;
			cJSON_ArrayForEach(b, cJSON_GetObjectItem(r, lists[i]))
				if (!strcmp(cJSON_GetObjectItem(b, "id")->valuestring, id))
					v = cJSON_GetObjectItem(b, counter)->valuedouble;
		}
	}
	cJSON_Delete(doc);
	return v;
}

/* Waits (bounded) until a fake backend has a /slow request in hand: it is
 * the backend's own signal that the request arrived, nothing to poll in the
 * proxy. */
static void wait_slow_started(struct fake *b)
{
	for (int i = 0; i < 5000 && atomic_load(&b->in_slow) == 0; i++)
		usleep(1000);
	assert_true(atomic_load(&b->in_slow) > 0);
}

/* ------------------------------------------------------------------ */
/* tests                                                                */

static void test_routing_by_host(void **state)
{
	(void)state;
	struct fx f = {0};
	fx_start(&f, NULL);
	struct fake *a = fake_start("a1", BE_HTTP), *b = fake_start("b1", BE_HTTP),
		    *c = fake_start("c1", BE_HTTP);
	int port = dead_port();
	struct resp r;
	assert_int_equal(put_route(&f, "web", "web", port, "[\"web.example.com\"]", &a, 1, &r), 200);
	assert_string_equal(r.body, "{\"previous\":[]}");
	assert_int_equal(put_route(&f, "api", "api", port, "[\"API.example.com\"]", &b, 1, &r), 200);

	http_get(port, "web.example.com", "/", &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(r.body, "hello from a1");
	http_get(port, "Api.Example.COM:8080", "/", &r); /* case and port do not matter */
	assert_string_equal(r.body, "hello from b1");
	http_get(port, "nobody.example.com", "/", &r);
	assert_int_equal(r.status, 404);
	assert_non_null(strstr(r.body, "no route for host nobody.example.com"));

	/* a catch-all takes unknown hosts; exact matches still win */
	assert_int_equal(put_route(&f, "any", "any", port, "[]", &c, 1, &r), 200);
	http_get(port, "nobody.example.com", "/", &r);
	assert_string_equal(r.body, "hello from c1");
	http_get(port, "web.example.com", "/", &r);
	assert_string_equal(r.body, "hello from a1");

	/* removing a route: its host falls to the catch-all */
	assert_int_equal(ctl(&f, "DELETE", "/v1/routes/web/web", NULL, &r), 200);
	http_get(port, "web.example.com", "/", &r);
	assert_string_equal(r.body, "hello from c1");
	assert_int_equal(ctl(&f, "GET", "/v1/health", NULL, &r), 200);
	assert_non_null(strstr(r.body, "\"routes\":2"));

	fx_stop(&f);
	fx_remove_dir(&f);
	fake_stop(a);
	fake_stop(b);
	fake_stop(c);
}

static void test_keepalive_and_headers(void **state)
{
	(void)state;
	struct fx f = {0};
	fx_start(&f, NULL);
	struct fake *a = fake_start("a1", BE_HTTP);
	int port = dead_port();
	struct resp r;
	assert_int_equal(put_route(&f, "web", "web", port, "[]", &a, 1, &r), 200);
	int fd = tcp_connect(port);
	for (int i = 0; i < 20; i++) {
		send_str(fd, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
		read_resp(fd, &r, false);
		assert_int_equal(r.status, 200);
		assert_true(r.keep_alive);
		assert_string_equal(r.body, "hello from a1");
	}
	/* HEAD: no body, connection kept */
	send_str(fd, "HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
	read_resp(fd, &r, true);
	assert_int_equal(r.status, 200);
	assert_int_equal(r.body_len, 0);
	/* two pipelined requests in one write: two answers in order */
	send_str(fd, "GET /slow?ms=50 HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n");
	read_resp(fd, &r, false);
	assert_string_equal(r.body, "slow from a1");
	read_resp(fd, &r, false);
	assert_string_equal(r.body, "hello from a1");
	/* one client connection, one pooled upstream connection */
	assert_int_equal(atomic_load(&a->conns), 1);

	/* hop-by-hop headers go, X-Forwarded-* come, the rest is untouched */
	send_str(fd, "GET /headers HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Hop\r\n"
		     "X-Hop: 1\r\nKeep-Alive: 300\r\nTE: trailers\r\nX-Forwarded-For: 10.1.1.1\r\n"
		     "X-Custom:   spaced  value\r\nProxy-Connection: keep-alive\r\n\r\n");
	read_resp(fd, &r, false);
	assert_int_equal(r.status, 200);
	assert_non_null(strstr(r.body, "GET /headers HTTP/1.1\r\nHost: x\r\n"));
	assert_null(strcasestr(r.body, "connection:"));
	assert_null(strcasestr(r.body, "x-hop"));
	assert_null(strcasestr(r.body, "keep-alive"));
	assert_null(strcasestr(r.body, "\nte:"));
	assert_non_null(strstr(r.body, "X-Forwarded-For: 10.1.1.1, 127.0.0.1\r\n"));
	assert_non_null(strstr(r.body, "X-Custom:   spaced  value\r\n"));
	assert_non_null(strstr(r.body, "X-Forwarded-Proto: http\r\n"));
	char xfp[64];
	snprintf(xfp, sizeof xfp, "X-Forwarded-Port: %d\r\n", port);
	assert_non_null(strstr(r.body, xfp));
	/* the response lost its Connection and Keep-Alive headers */
	assert_false(resp_has(&r, "keep-alive"));
	assert_true(resp_has(&r, "X-Release: a1"));

	/* HTTP/1.0 with keep-alive gets keep-alive back; without it, close */
	send_str(fd, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
	read_resp(fd, &r, false);
	assert_int_equal(r.status, 200);
	assert_true(resp_has(&r, "Connection: keep-alive"));
	send_str(fd, "GET / HTTP/1.0\r\n\r\n");
	read_resp(fd, &r, false);
	assert_int_equal(r.status, 200);
	assert_true(peer_closed(fd));
	close(fd);
	fx_stop(&f);
	fx_remove_dir(&f);
	fake_stop(a);
}

static void test_chunked_and_nolen(void **state)
{
	(void)state;
	struct fx f = {0};
	fx_start(&f, NULL);
	struct fake *a = fake_start("a1", BE_HTTP);
	int port = dead_port();
	struct resp r;
	assert_int_equal(put_route(&f, "web", "web", port, "[]", &a, 1, &r), 200);
	int fd = tcp_connect(port);
	/* chunked request passes as it is; the chunked answer too */
	const char *chunks = "5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n";
	char req[512];
	snprintf(req, sizeof req, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
		 "\r\n%s", chunks);
	send_str(fd, req);
	read_resp(fd, &r, false);
	assert_int_equal(r.status, 200);
	assert_true(r.chunked);
	assert_string_equal(r.body, "hello, world");
	pthread_mutex_lock(&a->lock);
	assert_int_equal(a->last_body_len, strlen(chunks));
	assert_memory_equal(a->last_body, chunks, strlen(chunks));
	pthread_mutex_unlock(&a->lock);
	/* a body sent in pieces, in several writes */
	send_str(fd, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234");
	usleep(20000);
	send_str(fd, "56789");
	read_resp(fd, &r, false);
	assert_string_equal(r.body, "0123456789");
	/* a big body (larger than the proxy's buffer) */
	static char big[60001];
	memset(big, 'x', sizeof big - 1);
	snprintf(req, sizeof req, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n",
		 sizeof big - 1);
	send_str(fd, req);
	send_str(fd, big);
	read_resp(fd, &r, false);
	assert_int_equal(r.body_len, sizeof big - 1);
	/* Expect: 100-continue: the 100 passes, then the body, then the answer */
	send_str(fd, "POST /continue HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
		     "Content-Length: 4\r\n\r\n");
	char buf[64] = {0};
	ssize_t n = recv(fd, buf, 25, MSG_WAITALL);
	assert_int_equal(n, 25);
	assert_string_equal(buf, "HTTP/1.1 100 Continue\r\n\r\n");
	send_str(fd, "data");
	read_resp(fd, &r, false);
	assert_string_equal(r.body, "data");
	/* an answer without a length ends with the connection: the client's too */
	send_str(fd, "GET /nolen HTTP/1.1\r\nHost: x\r\n\r\n");
	read_resp(fd, &r, false);
	assert_int_equal(r.status, 200);
	assert_true(resp_has(&r, "Connection: close"));
	assert_string_equal(r.body, "until the end");
	assert_true(peer_closed(fd));
	close(fd);
	fx_stop(&f);
	fx_remove_dir(&f);
	fake_stop(a);
}

static void test_websocket_tunnel(void **state)
{
	(void)state;
	struct fx f = {0};
	fx_start(&f, NULL);
	struct fake *a = fake_start("a1", BE_HTTP);
	int port = dead_port();
	struct resp r;
	assert_int_equal(put_route(&f, "web", "web", port, "[]", &a, 1, &r), 200);
	int fd = tcp_connect(port);
	send_str(fd, "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
		     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
		     "\r\nearly");
	read_resp(fd, &r, false);
	assert_int_equal(r.status, 101);
	assert_true(resp_has(&r, "Upgrade: websocket"));
	assert_true(resp_has(&r, "Connection: Upgrade"));
	char buf[64] = {0};
	assert_int_equal(recv(fd, buf, 5, MSG_WAITALL), 5);
	assert_memory_equal(buf, "early", 5);
	for (int i = 0; i < 5; i++) {
		send_str(fd, "ping-frame");
		memset(buf, 0, sizeof buf);
		assert_int_equal(recv(fd, buf, 10, MSG_WAITALL), 10);
		assert_string_equal(buf, "ping-frame");
	}
	/* the tunnel counts as in flight for drains */
	assert_true(be_stat(&f, "a1", "inflight") == 1);
	close(fd);
	/* a client that finishes (FIN) before the 101 arrives: its FIN still
	 * reaches the backend once the tunnel stands, and the backend's close
	 * comes back */
	fd = tcp_connect(port);
	send_str(fd, "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
		     "\r\nlast words");
	shutdown(fd, SHUT_WR);
	read_resp(fd, &r, false);
	assert_int_equal(r.status, 101);
	memset(buf, 0, sizeof buf);
	assert_int_equal(recv(fd, buf, 10, MSG_WAITALL), 10);
	assert_string_equal(buf, "last words");
	assert_true(peer_closed(fd));
	close(fd);
	fx_stop(&f);
	fx_remove_dir(&f);
	fake_stop(a);
}

static void expect_refused(int port, const char *req, int status)
{
	int fd = tcp_connect(port);
	send_str(fd, req);
	struct resp r;
	read_resp(fd, &r, false);
	if (r.status != status)
		fail_msg("expected %d, got %d for %s", status, r.status, req);
	assert_true(resp_has(&r, "Connection: close"));
	assert_true(peer_closed(fd));
	close(fd);
}

static void test_smuggling_and_limits(void **state)
{
	(void)state;
	struct proxy_config cfg = fx_default_config();
	cfg.max_header_size = 4096;
	cfg.header_timeout_ms = 300;
	struct fx f = {0};
	fx_start(&f, &cfg);
	struct fake *a = fake_start("a1", BE_HTTP);
	int port = dead_port();
	struct resp r;
	assert_int_equal(put_route(&f, "web", "web", port, "[]", &a, 1, &r), 200);
	expect_refused(port, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
			     "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400);
	expect_refused(port, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
			     "Content-Length: 5\r\n\r\nhello", 400);
	expect_refused(port, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
			     "Content-Length: 6\r\n\r\nhello!", 400);
	expect_refused(port, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400);
	expect_refused(port, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
			     "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400);
	expect_refused(port, "GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n", 400);
	expect_refused(port, "GET / HTTP/1.1\r\n\r\n", 400);               /* no Host */
	expect_refused(port, "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400);
	expect_refused(port, "GET / HTTP/1.1\r\nHost: x\r\nX-Bad Name: v\r\n\r\n", 400);
	assert_int_equal(atomic_load(&a->reqs), 0); /* none of them reached the backend */

	/* header block over the cap: 431 */
	char big[6000];
	int k = snprintf(big, sizeof big, "GET / HTTP/1.1\r\nHost: x\r\nX-Big: ");
	memset(big + k, 'a', 5000);
	snprintf(big + k + 5000, sizeof big - (size_t)k - 5000, "\r\n\r\n");
	expect_refused(port, big, 431);
	/* too many header lines: 431 as well */
	static char many[16000];
	k = snprintf(many, sizeof many, "GET / HTTP/1.1\r\nHost: x\r\n");
	for (int i = 0; i < 200 && k < 3900; i++)
		k += snprintf(many + k, sizeof many - (size_t)k, "X-%d: 1\r\n", i);
	snprintf(many + k, sizeof many - (size_t)k, "\r\n");
	expect_refused(port, many, 431);

	/* a slow client: part of a head, then nothing -> 408 after header_timeout */
	int fd = tcp_connect(port);
	send_str(fd, "GET / HTTP/1.1\r\nHo");
	int64_t t0 = clock_mono_ms();
	read_resp(fd, &r, false);
	assert_int_equal(r.status, 408);
	int64_t took = clock_mono_ms() - t0;
	assert_true(took >= 250 && took < 5000);
	assert_true(peer_closed(fd));
	close(fd);
	fx_stop(&f);
	fx_remove_dir(&f);
	fake_stop(a);
}

static void test_bad_gateway_and_timeout(void **state)
{
	(void)state;
	struct proxy_config cfg = fx_default_config();
	cfg.upstream_timeout_ms = 300;
	struct fx f = {0};
	fx_start(&f, &cfg);
	struct resp r;
	int port = dead_port();
	char body[512];
	/* backend down: connection refused -> 502 */
	snprintf(body, sizeof body, "{\"generation\":1,\"listen\":%d,\"hosts\":[\"web.example.com\"],"
		 "\"backends\":[{\"id\":\"down\",\"address\":\"127.0.0.1:%d\"}]}", port, dead_port());
	assert_int_equal(ctl(&f, "PUT", "/v1/routes/web/web", body, &r), 200);
	http_get(port, "web.example.com", "/", &r);
	assert_int_equal(r.status, 502);
	assert_non_null(strstr(r.body, "slipway-proxy:"));
	assert_non_null(strstr(r.body, "web.example.com"));
	assert_true(be_stat(&f, "down", "errors") >= 1);

	/* one down, one up: requests go to the live one */
	struct fake *a = fake_start("a1", BE_HTTP);
	snprintf(body, sizeof body, "{\"generation\":2,\"listen\":%d,\"hosts\":[\"web.example.com\"],"
		 "\"backends\":[{\"id\":\"down\",\"address\":\"127.0.0.1:%d\"},"
		 "{\"id\":\"a1\",\"address\":\"127.0.0.1:%d\"}]}", port, dead_port(), a->port);
	assert_int_equal(ctl(&f, "PUT", "/v1/routes/web/web", body, &r), 200);
	for (int i = 0; i < 6; i++) {
		http_get(port, "web.example.com", "/", &r);
		assert_int_equal(r.status, 200);
	}
	/* too slow: 504 after upstream_timeout */
	http_get(port, "web.example.com", "/slow?ms=1500", &r);
	assert_int_equal(r.status, 504);
	assert_non_null(strstr(r.body, "did not answer in time"));

	/* no backends: 503 */
	snprintf(body, sizeof body, "{\"generation\":3,\"listen\":%d,\"hosts\":[\"web.example.com\"],"
		 "\"backends\":[]}", port);
	assert_int_equal(ctl(&f, "PUT", "/v1/routes/web/web", body, &r), 200);
	http_get(port, "web.example.com", "/", &r);
	assert_int_equal(r.status, 503);
	assert_non_null(strstr(r.body, "no healthy backend for web.example.com"));
	fx_stop(&f);
	fx_remove_dir(&f);
	fake_stop(a);
}

static void test_stale_pooled_connection(void **state)
{
	(void)state;
	struct fx f = {0};
	fx_start(&f, NULL);
	struct fake *a = fake_start("a1", BE_HTTP);
	atomic_store(&a->drop_second, true);
	int port = dead_port();
	struct resp r;
	assert_int_equal(put_route(&f, "web", "web", port, "[]", &a, 1, &r), 200);
	int fd = tcp_connect(port);
	/* each upstream connection answers once, then drops the next request:
	 * a GET that meets the dropped connection is retried on a fresh one */
	for (int i = 0; i < 4; i++) {
		send_str(fd, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
		read_resp(fd, &r, false);
		assert_int_equal(r.status, 200);
	}
	/* a POST is not retried: 502 */
	send_str(fd, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi");
	read_resp(fd, &r, false);
	assert_int_equal(r.status, 502);
	close(fd);
	/* nor is a GET with a body (not strictly idempotent here) */
	fd = tcp_connect(port);
	send_str(fd, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
	read_resp(fd, &r, false);
	assert_int_equal(r.status, 200);
	send_str(fd, "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi");
	read_resp(fd, &r, false);
	assert_int_equal(r.status, 502);
	close(fd);
	fx_stop(&f);
	fx_remove_dir(&f);
	fake_stop(a);
}

static void test_atomic_switch_and_drain(void **state)
{
	(void)state;
	struct fx f = {0};
	fx_start(&f, NULL);
	struct fake *a = fake_start("a1", BE_HTTP), *a2 = fake_start("a2", BE_HTTP),
		    *b = fake_start("b1", BE_HTTP), *b2 = fake_start("b2", BE_HTTP);
	int port = dead_port();
	struct resp r;
	struct fake *old[] = {a, a2}, *new[] = {b, b2};
	assert_int_equal(put_route(&f, "web", "web", port, "[]", old, 2, &r), 200);
	/* a slow request reaches the old set before the switch */
	int slow = tcp_connect(port);
	send_str(slow, "GET /slow?ms=600 HTTP/1.1\r\nHost: x\r\n\r\n");
	struct fake *busy = NULL;
	for (int i = 0; i < 5000 && !busy; i++) {
		if (atomic_load(&a->in_slow))
			busy = a;
		else if (atomic_load(&a2->in_slow))
			busy = a2;
		else
			usleep(1000);
	}
	assert_non_null(busy);
	assert_int_equal(put_route(&f, "web", "web", port, "[]", new, 2, &r), 200);
	/* the answer lists the previous set with its requests in flight */
	char expect[128];
	snprintf(expect, sizeof expect, "{\"id\":\"%s\",\"address\":\"127.0.0.1:%d\",\"inflight\":1}",
		 busy->name, busy->port);
	assert_non_null(strstr(r.body, expect));
	/* every request after the PUT's answer hits the new set */
	int seen_b = 0, seen_b2 = 0;
	for (int i = 0; i < 20; i++) {
		http_get(port, "x", "/", &r);
		assert_int_equal(r.status, 200);
		seen_b += !strcmp(r.body, "hello from b1");
		seen_b2 += !strcmp(r.body, "hello from b2");
	}
	assert_int_equal(seen_b + seen_b2, 20);
	assert_true(seen_b > 0 && seen_b2 > 0); /* round robin over the set */
	/* draining an active backend is a conflict */
	assert_int_equal(ctl(&f, "POST", "/v1/routes/web/web/drain",
			     "{\"backends\":[\"b1\"],\"timeout_ms\":1000}", &r), 409);
	/* drain waits for the slow request, which completes on the old backend */
	int64_t t0 = clock_mono_ms();
	assert_int_equal(ctl(&f, "POST", "/v1/routes/web/web/drain",
			     "{\"backends\":[\"a1\",\"a2\"],\"timeout_ms\":5000}", &r), 200);
	int64_t took = clock_mono_ms() - t0;
	cJSON *d = json_parse(r.body, r.body_len, 4096, NULL);
	assert_non_null(d);
	assert_true(cJSON_IsTrue(cJSON_GetObjectItem(d, "drained")));
	assert_int_equal(cJSON_GetObjectItem(d, "remaining")->valueint, 0);
	assert_true(cJSON_GetObjectItem(d, "waited_ms")->valueint >= 100);
	assert_true(took >= 100);
	cJSON_Delete(d);
	read_resp(slow, &r, false);
	assert_int_equal(r.status, 200);
	char want[32];
	snprintf(want, sizeof want, "slow from %s", busy->name);
	assert_string_equal(r.body, want);
	close(slow);
	/* a drain of backends with nothing in flight answers at once */
	assert_int_equal(ctl(&f, "POST", "/v1/routes/web/web/drain",
			     "{\"backends\":[\"a1\"],\"timeout_ms\":5000}", &r), 200);
	assert_non_null(strstr(r.body, "\"drained\":true"));

	/* drain timeout: the request still running is cut, drained is false */
	struct fake *c = fake_start("c1", BE_HTTP);
	assert_int_equal(put_route(&f, "web", "web", port, "[]", &c, 1, &r), 200);
	slow = tcp_connect(port);
	send_str(slow, "GET /slow?ms=3000 HTTP/1.1\r\nHost: x\r\n\r\n");
	wait_slow_started(c);
	assert_int_equal(put_route(&f, "web", "web", port, "[]", new, 2, &r), 200);
	assert_int_equal(ctl(&f, "POST", "/v1/routes/web/web/drain",
			     "{\"backends\":[\"c1\"],\"timeout_ms\":200}", &r), 200);
	assert_non_null(strstr(r.body, "\"drained\":false,\"remaining\":1"));
	read_resp(slow, &r, false);
	assert_true(r.status == 502 || r.eof);
	close(slow);
	assert_true(be_stat(&f, "c1", "inflight") <= 0);
	/* unknown route: 404 */
	assert_int_equal(ctl(&f, "POST", "/v1/routes/nope/web/drain", "{\"backends\":[]}", &r), 404);
	fx_stop(&f);
	fx_remove_dir(&f);
	fake_stop(a);
	fake_stop(a2);
	fake_stop(b);
	fake_stop(b2);
	fake_stop(c);
}

static void test_health_endpoint(void **state)
{
	(void)state;
	struct fx f = {0};
	fx_start(&f, NULL);
	struct fake *a = fake_start("a1", BE_HTTP);
	int port = dead_port();
	struct resp r;
	char body[256];
	snprintf(body, sizeof body, "{\"generation\":1,\"listen\":%d,\"hosts\":[\"a.example\"],"
		 "\"backends\":[]}", port);
	assert_int_equal(ctl(&f, "PUT", "/v1/routes/web/web", body, &r), 200);
	http_get(port, "lb.internal", "/_slipway/health", &r); /* any Host */
	assert_int_equal(r.status, 503);
	assert_int_equal(put_route(&f, "web", "web", port, "[\"a.example\"]", &a, 1, &r), 200);
	http_get(port, "lb.internal", "/_slipway/health", &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(r.body, "ok\n");
	http_get(port, "lb.internal", "/_slipway/health?from=alb", &r);
	assert_int_equal(r.status, 200);
	assert_int_equal(ctl(&f, "PUT", "/v1/draining", "{\"draining\":true}", &r), 200);
	http_get(port, "lb.internal", "/_slipway/health", &r);
	assert_int_equal(r.status, 503);
	/* still serving traffic while the load balancer drains us */
	http_get(port, "a.example", "/", &r);
	assert_int_equal(r.status, 200);
	assert_int_equal(ctl(&f, "PUT", "/v1/draining", "{\"draining\":false}", &r), 200);
	http_get(port, "lb.internal", "/_slipway/health", &r);
	assert_int_equal(r.status, 200);
	/* keep-alive health checks */
	int fd = tcp_connect(port);
	for (int i = 0; i < 3; i++) {
		send_str(fd, "GET /_slipway/health HTTP/1.1\r\nHost: lb\r\n\r\n");
		read_resp(fd, &r, false);
		assert_int_equal(r.status, 200);
		assert_true(r.keep_alive);
	}
	close(fd);
	fx_stop(&f);
	fx_remove_dir(&f);
	fake_stop(a);
}

static void test_tcp_route(void **state)
{
	(void)state;
	struct fx f = {0};
	fx_start(&f, NULL);
	struct fake *e = fake_start("e1", BE_TCP_ECHO);
	int port = dead_port();
	struct resp r;
	char body[256];
	snprintf(body, sizeof body, "{\"generation\":1,\"listen\":%d,\"protocol\":\"tcp\","
		 "\"backends\":[{\"id\":\"e1\",\"address\":\"127.0.0.1:%d\"}]}", port, e->port);
	assert_int_equal(ctl(&f, "PUT", "/v1/routes/db/db", body, &r), 200);
	int fd = tcp_connect(port);
	const char *raw = "raw bytes \x01\x02 not http\r\n\r\n";
	send_str(fd, raw);
	char buf[64] = {0};
	assert_int_equal(recv(fd, buf, strlen(raw), MSG_WAITALL), strlen(raw));
	assert_memory_equal(buf, raw, strlen(raw));
	assert_true(be_stat(&f, "e1", "inflight") == 1);
	/* half-close: our FIN reaches the backend, its last bytes still reach us */
	shutdown(fd, SHUT_WR);
	memset(buf, 0, sizeof buf);
	assert_int_equal(recv(fd, buf, 3, MSG_WAITALL), 3);
	assert_string_equal(buf, "bye");
	assert_true(peer_closed(fd));
	close(fd);
	/* a tcp port is not shared, not even with an http route */
	snprintf(body, sizeof body, "{\"generation\":1,\"listen\":%d,\"hosts\":[\"x.example\"],"
		 "\"backends\":[]}", port);
	assert_int_equal(ctl(&f, "PUT", "/v1/routes/web/web", body, &r), 409);
	fx_stop(&f);
	fx_remove_dir(&f);
	fake_stop(e);
}

static void test_persistence_reload(void **state)
{
	(void)state;
	struct fx f = {0};
	fx_start(&f, NULL);
	struct fake *a = fake_start("a1", BE_HTTP);
	int port = dead_port(), port2 = dead_port();
	struct resp r;
	assert_int_equal(put_route(&f, "web", "web", port, "[\"a.example\",\"b.example\"]", &a, 1,
				   &r), 200);
	assert_int_equal(put_route(&f, "api", "api", port2, "[]", &a, 1, &r), 200);
	assert_int_equal(put_route(&f, "tmp", "tmp", port2, "[\"t.example\"]", &a, 1, &r), 200);
	assert_int_equal(ctl(&f, "DELETE", "/v1/routes/tmp/tmp", NULL, &r), 200);
	fx_stop(&f); /* waits for the route file write in flight */
	struct stat st;
	assert_int_equal(stat(f.routes, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);

	fx_start(&f, NULL); /* same state dir: loads the file */
	http_get(port, "b.example", "/", &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(r.body, "hello from a1");
	http_get(port2, "anything", "/", &r);
	assert_int_equal(r.status, 200);
	cJSON *doc = routes_doc(&f);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(doc, "routes")), 2);
	cJSON_Delete(doc);
	fx_stop(&f);
	fx_remove_dir(&f);
	fake_stop(a);
}

static void test_control_errors(void **state)
{
	(void)state;
	struct fx f = {0};
	fx_start(&f, NULL);
	int port = dead_port();
	struct resp r;
	char body[512];
	snprintf(body, sizeof body, "{\"generation\":1,\"listen\":%d,\"hosts\":[\"a.example\"],"
		 "\"backends\":[{\"id\":\"x1\",\"address\":\"127.0.0.1:1\"}]}", port);
	assert_int_equal(ctl(&f, "PUT", "/v1/routes/web/web", body, &r), 200);
	assert_int_equal(ctl(&f, "PUT", "/v1/routes/web/web", body, &r), 200); /* idempotent */
	assert_non_null(strstr(r.body, "\"id\":\"x1\""));
	/* the same host on the same port for another app */
	assert_int_equal(ctl(&f, "PUT", "/v1/routes/other/web", body, &r), 409);
	assert_non_null(strstr(r.body, "\"code\":\"conflict\""));
	assert_non_null(strstr(r.body, "a.example"));
	/* two catch-alls on one port */
	snprintf(body, sizeof body, "{\"generation\":1,\"listen\":%d,\"backends\":[]}", port);
	assert_int_equal(ctl(&f, "PUT", "/v1/routes/c1/web", body, &r), 200);
	assert_int_equal(ctl(&f, "PUT", "/v1/routes/c2/web", body, &r), 409);
	/* malformed requests */
	assert_int_equal(ctl(&f, "PUT", "/v1/routes/web/web", "{\"generation\":", &r), 400);
	assert_non_null(strstr(r.body, "\"code\":\"bad_request\""));
	assert_int_equal(ctl(&f, "PUT", "/v1/routes/web/web", "[]", &r), 400);
	snprintf(body, sizeof body, "{\"generation\":1,\"listen\":%d,\"colour\":1,\"backends\":[]}",
		 port);
	assert_int_equal(ctl(&f, "PUT", "/v1/routes/web/web", body, &r), 400);
	assert_non_null(strstr(r.body, "colour"));
	snprintf(body, sizeof body, "{\"generation\":1,\"listen\":%d,\"backends\":[{\"id\":\"x\","
		 "\"address\":\"backend.local:80\"}]}", port);
	assert_int_equal(ctl(&f, "PUT", "/v1/routes/web/web", body, &r), 400);
	snprintf(body, sizeof body, "{\"generation\":1,\"listen\":70000,\"backends\":[]}");
	assert_int_equal(ctl(&f, "PUT", "/v1/routes/web/web", body, &r), 400);
	snprintf(body, sizeof body, "{\"generation\":1,\"listen\":%d,\"protocol\":\"udp\","
		 "\"backends\":[]}", port);
	assert_int_equal(ctl(&f, "PUT", "/v1/routes/web/web", body, &r), 400);
	snprintf(body, sizeof body, "{\"generation\":1,\"listen\":%d,\"backends\":[]}", port);
	assert_int_equal(ctl(&f, "PUT", "/v1/routes/Bad_Name/web", body, &r), 400);
	assert_int_equal(ctl(&f, "PUT", "/v1/draining", "{\"draining\":\"yes\"}", &r), 400);
	assert_int_equal(ctl(&f, "DELETE", "/v1/routes/nope/web", NULL, &r), 404);
	assert_int_equal(ctl(&f, "GET", "/v1/nothing", NULL, &r), 404);
	assert_int_equal(ctl(&f, "POST", "/v1/routes", NULL, &r), 405);
	/* the table is what the successful calls made it */
	cJSON *doc = routes_doc(&f);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(doc, "routes")), 2);
	cJSON_Delete(doc);
	/* a port that cannot be bound: 500, nothing changes */
	int busy_port;
	int busy = listen_any(&busy_port);
	snprintf(body, sizeof body, "{\"generation\":1,\"listen\":%d,\"backends\":[]}", busy_port);
	assert_int_equal(ctl(&f, "PUT", "/v1/routes/z/z", body, &r), 500);
	close(busy);
	/* a second proxy on the same control socket refuses to start */
	struct err err;
	struct proxy_ctl_config cc = {.socket_path = f.sock, .listen_fd = -1};
	assert_null(proxy_ctl_new(f.loop, f.p, f.w, &cc, &err));
	assert_non_null(strstr(err.msg, "another proxy"));
	fx_stop(&f);
	fx_remove_dir(&f);
}

static void test_handover_message(void **state)
{
	(void)state;
	int sp[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
	int pipe_fds[2];
	assert_int_equal(pipe(pipe_fds), 0);
	cJSON *doc = cJSON_CreateObject();
	cJSON_AddNumberToObject(doc, "version", 1);
	cJSON_AddStringToObject(doc, "note", "listeners follow");
	struct err err;
	int fds[2] = {pipe_fds[0], pipe_fds[1]};
	assert_int_equal(proxy_handover_send(sp[0], doc, fds, 2, &err), 0);
	cJSON_Delete(doc);
	int got[4];
	size_t n = 0;
	cJSON *in = proxy_handover_recv(sp[1], got, 4, &n, &err);
	assert_non_null(in);
	assert_int_equal(n, 2);
	assert_string_equal(cJSON_GetObjectItem(in, "note")->valuestring, "listeners follow");
	cJSON_Delete(in);
	/* the received descriptors are the same pipe */
	assert_int_equal(write(got[1], "z", 1), 1);
	char ch = 0;
	assert_int_equal(read(pipe_fds[0], &ch, 1), 1);
	assert_int_equal(ch, 'z');
	for (int i = 0; i < 2; i++) {
		close(got[i]);
		close(pipe_fds[i]);
	}
	/* a truncated message is an error and leaves no descriptor open */
	unsigned char hdr[4] = {0, 0, 0, 50};
	assert_int_equal(write(sp[0], hdr, 4), 4);
	assert_int_equal(write(sp[0], "{\"a\":", 5), 5);
	close(sp[0]);
	assert_null(proxy_handover_recv(sp[1], got, 4, &n, &err));
	assert_int_equal(n, 0);
	close(sp[1]);
}

/* proxy_stop runs on the proxy's loop, asked through an ev_async. */
static atomic_bool stopped_idle;

static void on_proxy_idle(void *arg)
{
	(void)arg;
	atomic_store(&stopped_idle, true);
}

static void stop_hook(struct fx *f)
{
	proxy_stop(f->p, 5000, on_proxy_idle, NULL);
}

static void test_graceful_stop(void **state)
{
	(void)state;
	struct proxy_config cfg = fx_default_config();
	cfg.stop_idle_grace_ms = 1000;
	struct fx f = {0};
	fx_start(&f, &cfg);
	struct fake *a = fake_start("a1", BE_HTTP);
	int port = dead_port();
	struct resp r;
	assert_int_equal(put_route(&f, "web", "web", port, "[]", &a, 1, &r), 200);
	int idle = tcp_connect(port), lazy = tcp_connect(port), slow = tcp_connect(port);
	send_str(idle, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
	read_resp(idle, &r, false);
	send_str(lazy, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
	read_resp(lazy, &r, false);
	send_str(slow, "GET /slow?ms=400 HTTP/1.1\r\nHost: x\r\n\r\n");
	wait_slow_started(a);
	atomic_store(&stopped_idle, false);
	f.hook_fn = stop_hook;
	ev_async_send(f.loop, &f.hook);
	/* the request in flight completes, told to close */
	read_resp(slow, &r, false);
	assert_int_equal(r.status, 200);
	assert_true(resp_has(&r, "Connection: close"));
	assert_true(peer_closed(slow));
	/* an idle keep-alive client sending within the grace gets one answer + close */
	send_str(idle, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
	read_resp(idle, &r, false);
	assert_int_equal(r.status, 200);
	assert_true(resp_has(&r, "Connection: close"));
	assert_true(peer_closed(idle));
	/* one that stays quiet is closed after the grace */
	assert_true(peer_closed(lazy));
	/* nobody is accepted any more */
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), -1);
	close(fd);
	close(idle);
	close(lazy);
	close(slow);
	for (int i = 0; i < 5000 && !atomic_load(&stopped_idle); i++)
		usleep(1000);
	assert_true(atomic_load(&stopped_idle));
	fx_stop(&f);
	fx_remove_dir(&f);
	fake_stop(a);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	log_init("test_proxy", LOG_LEVEL_ERROR, 0);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_routing_by_host),
		cmocka_unit_test(test_keepalive_and_headers),
		cmocka_unit_test(test_chunked_and_nolen),
		cmocka_unit_test(test_websocket_tunnel),
		cmocka_unit_test(test_smuggling_and_limits),
		cmocka_unit_test(test_bad_gateway_and_timeout),
		cmocka_unit_test(test_stale_pooled_connection),
		cmocka_unit_test(test_atomic_switch_and_drain),
		cmocka_unit_test(test_health_endpoint),
		cmocka_unit_test(test_tcp_route),
		cmocka_unit_test(test_persistence_reload),
		cmocka_unit_test(test_control_errors),
		cmocka_unit_test(test_handover_message),
		cmocka_unit_test(test_graceful_stop),
	};
	return cmocka_run_group_tests_name("proxy", tests, NULL, NULL);
}
