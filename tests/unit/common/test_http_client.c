/*
 * http_client against a scripted HTTP/1.1 server running in this process
 * (blocking sockets, one thread per connection) on 127.0.0.1 and on a unix
 * socket. The test thread only runs the libev loop until callbacks report.
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
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "crypto.h"
#include "http_client.h"

/* ------------------------------------------------------------------ */
/* the scripted server                                                 */

#define IN_MAX ((size_t)256 << 10)
#define FIREHOSE_LEN (4L << 20)
#define BODY_MAX ((size_t)8 << 20)

struct srv;

struct conn {
	struct srv *srv;
	int fd;
	pthread_t th;
	char *in;
	size_t in_len;
	struct conn *next;
};

struct hit {
	char path[128];
	int count;
};

struct srv {
	int tcp_fd, unix_fd, port;
	char dir[48], sock_path[96];
	int wake[2];
	pthread_t acceptor;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int stopping;
	struct conn *conns;
	struct hit hits[64];
	/* what the last /echo request looked like */
	char echo_method[16];
	char echo_ctype[64];
	int echo_expect;
	char attempts_seen[64]; /* X-Attempt values, comma-separated */
	/* /barrier */
	int barrier_target, barrier_waiting, barrier_max;
	/* counters the test thread polls after a notification */
	atomic_int hang_started, hang_closed;
	atomic_long fire_sent;  /* /firehose: bytes handed to the socket so far */
	atomic_int accepted, open_conns; /* connections accepted; not yet closed by the client */
	struct ev_loop *loop;
	ev_async notify;
};

struct req {
	char method[16];
	char path[256];
	char *head; /* header lines, "\r\n"-separated, starting after the request line */
	char *body;
	size_t body_len;
};

static int send_all(int fd, const void *data, size_t len)
{
	const char *p = data;
	while (len > 0) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int sendf(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int sendf(int fd, const char *fmt, ...)
{
	char tmp[4096];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
	va_end(ap);
	return send_all(fd, tmp, (size_t)n);
}

static int send_chunk(int fd, const char *data, size_t len)
{
	if (sendf(fd, "%zx\r\n", len) < 0 || send_all(fd, data, len) < 0)
		return -1;
	return send_all(fd, "\r\n", 2);
}

static void srv_notify(struct srv *s)
{
	ev_async_send(s->loop, &s->notify);
}

/* Copies the value of header `name` into out ("" when absent); 1 when present. */
static int req_header(const struct req *r, const char *name, char *out, size_t out_len)
{
	size_t n = strlen(name);
	out[0] = '\0';
	for (const char *line = r->head; line && *line;) {
		const char *eol = strstr(line, "\r\n");
		size_t len = eol ? (size_t)(eol - line) : strlen(line);
		if (len > n && strncasecmp(line, name, n) == 0 && line[n] == ':') {
			const char *v = line + n + 1;
			while (*v == ' ')
				v++;
			size_t vlen = (size_t)(line + len - v);
			if (vlen >= out_len)
				vlen = out_len - 1;
			memcpy(out, v, vlen);
			out[vlen] = '\0';
			return 1;
		}
		line = eol ? eol + 2 : line + len;
	}
	return 0;
}

static int conn_fill(struct conn *cn)
{
	if (cn->in_len >= IN_MAX)
		return -1;
	ssize_t n;
	do
		n = recv(cn->fd, cn->in + cn->in_len, IN_MAX - cn->in_len, 0);
	while (n < 0 && errno == EINTR);
	if (n <= 0)
		return -1;
	cn->in_len += (size_t)n;
	return 0;
}

static int read_request(struct conn *cn, struct req *r)
{
	memset(r, 0, sizeof *r);
	char *end;
	while (!(end = memmem(cn->in, cn->in_len, "\r\n\r\n", 4))) {
		if (conn_fill(cn) < 0)
			return -1;
		if (cn->in[0] < 'A' || cn->in[0] > 'Z')
			return -1; /* not HTTP (a TLS hello, say) */
	}
	size_t head_len = (size_t)(end - cn->in) + 4;
	char *line_end = memmem(cn->in, head_len, "\r\n", 2);
	char version[16];
	char *reqline = strndup(cn->in, (size_t)(line_end - cn->in));
	int ok = sscanf(reqline, "%15s %255s %15s", r->method, r->path, version) == 3;
	free(reqline);
	if (!ok)
		return -1;
	r->head = strndup(line_end + 2, head_len - (size_t)(line_end + 2 - cn->in));
	char cl[32];
	size_t body_len = 0;
	if (req_header(r, "Content-Length", cl, sizeof cl))
		body_len = strtoul(cl, NULL, 10);
	if (body_len > BODY_MAX)
		return -1;
	memmove(cn->in, cn->in + head_len, cn->in_len - head_len);
	cn->in_len -= head_len;
	r->body = malloc(body_len + 1);
	size_t got = 0;
	while (got < body_len) {
		if (cn->in_len == 0 && conn_fill(cn) < 0)
			return -1;
		size_t take = cn->in_len < body_len - got ? cn->in_len : body_len - got;
		memcpy(r->body + got, cn->in, take);
		memmove(cn->in, cn->in + take, cn->in_len - take);
		cn->in_len -= take;
		got += take;
	}
	r->body[body_len] = '\0';
	r->body_len = body_len;
	return 0;
}

static void free_request(struct req *r)
{
	free(r->head);
	free(r->body);
}

/* Blocks until the client closes the connection (or the server stops). */
static void wait_client_gone(struct conn *cn)
{
	for (;;) {
		struct pollfd pf[2] = {{cn->fd, POLLIN, 0}, {cn->srv->wake[0], POLLIN, 0}};
		if (poll(pf, 2, -1) < 0 && errno == EINTR)
			continue;
		if (pf[1].revents)
			return;
		if (pf[0].revents) {
			char tmp[4096];
			ssize_t n = recv(cn->fd, tmp, sizeof tmp, 0);
			if (n <= 0)
				return;
		}
	}
}

/* Sleeps ms on the server side unless the server stops. */
static void srv_pause(struct srv *s, int ms)
{
	struct pollfd pf = {s->wake[0], POLLIN, 0};
	poll(&pf, 1, ms);
}

static int count_hit(struct srv *s, const char *path)
{
	pthread_mutex_lock(&s->lock);
	int n = 0;
	for (size_t i = 0; i < sizeof s->hits / sizeof s->hits[0]; i++) {
		if (s->hits[i].count == 0 || strcmp(s->hits[i].path, path) == 0) {
			snprintf(s->hits[i].path, sizeof s->hits[i].path, "%s", path);
			n = ++s->hits[i].count;
			break;
		}
	}
	pthread_mutex_unlock(&s->lock);
	return n;
}

static void send_echo(int fd, const struct req *r)
{
	char sha[2 * CRYPTO_SHA256_LEN + 1];
	crypto_sha256_hex(r->body, r->body_len, sha);
	char body[160];
	int n = snprintf(body, sizeof body, "len=%zu sha=%s", r->body_len, sha);
	sendf(fd, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", n, body);
}

/* Answers one request; 0 when the connection must end. */
static int handle(struct conn *cn, struct req *r)
{
	struct srv *s = cn->srv;
	int fd = cn->fd;
	const char *path = r->path;
	if (strcmp(path, "/hello") == 0) {
		sendf(fd, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\n"
			  "hello world");
	} else if (strcmp(path, "/chunked") == 0) {
		sendf(fd, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
		send_chunk(fd, "abc", 3);
		send_chunk(fd, "defgh", 5);
		send_chunk(fd, "ijklmnop", 8);
		send_all(fd, "0\r\n\r\n", 5);
	} else if (strcmp(path, "/stream") == 0) {
		sendf(fd, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
		for (int i = 0; i < 5; i++) {
			char part[16];
			int n = snprintf(part, sizeof part, "part%d\n", i);
			if (send_chunk(fd, part, (size_t)n) < 0)
				return 0;
			srv_pause(s, 40);
		}
		send_all(fd, "0\r\n\r\n", 5);
	} else if (strcmp(path, "/stall") == 0) {
		sendf(fd, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
		send_chunk(fd, "first", 5);
		atomic_fetch_add(&s->hang_started, 1);
		srv_notify(s);
		wait_client_gone(cn);
		atomic_fetch_add(&s->hang_closed, 1);
		srv_notify(s);
		return 0;
	} else if (strcmp(path, "/firehose") == 0) {
		/* FIREHOSE_LEN bytes of a known pattern as fast as the client takes
		 * them; fire_sent tells how far the socket let the server get. */
		sendf(fd, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
		char part[8192];
		for (long off = 0; off < FIREHOSE_LEN; off += (long)sizeof part) {
			for (size_t i = 0; i < sizeof part; i++)
				part[i] = (char)((off + (long)i) % 251);
			if (send_chunk(fd, part, sizeof part) < 0)
				return 0;
			atomic_store(&s->fire_sent, off + (long)sizeof part);
		}
		send_all(fd, "0\r\n\r\n", 5);
	} else if (strcmp(path, "/notfound") == 0) {
		const char *json = "{\"message\":\"no such thing\"}";
		sendf(fd, "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
			  "Content-Length: %zu\r\n\r\n%s", strlen(json), json);
	} else if (strcmp(path, "/big") == 0) {
		size_t len = 100000;
		char *body = malloc(len);
		memset(body, 'x', len);
		sendf(fd, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", len);
		int rc = send_all(fd, body, len);
		free(body);
		if (rc < 0)
			return 0;
	} else if (strcmp(path, "/cut") == 0) {
		sendf(fd, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
		char part[100];
		memset(part, 'y', sizeof part);
		send_all(fd, part, sizeof part);
		return 0;
	} else if (strcmp(path, "/hang") == 0) {
		atomic_fetch_add(&s->hang_started, 1);
		srv_notify(s);
		wait_client_gone(cn);
		atomic_fetch_add(&s->hang_closed, 1);
		srv_notify(s);
		return 0;
	} else if (strncmp(path, "/flaky/", 7) == 0) {
		char attempt[16];
		req_header(r, "X-Attempt", attempt, sizeof attempt);
		pthread_mutex_lock(&s->lock);
		size_t used = strlen(s->attempts_seen);
		snprintf(s->attempts_seen + used, sizeof s->attempts_seen - used, "%s%s",
			 used ? "," : "", attempt);
		pthread_mutex_unlock(&s->lock);
		if (count_hit(s, path) <= 2)
			sendf(fd, "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy");
		else
			send_echo(fd, r);
	} else if (strncmp(path, "/ratelimit/", 11) == 0) {
		if (count_hit(s, path) == 1)
			sendf(fd, "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\n"
				  "Content-Length: 4\r\n\r\nslow");
		else
			sendf(fd, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
	} else if (strncmp(path, "/ratelimit-date/", 16) == 0) {
		if (count_hit(s, path) == 1) {
			/* an hour from now, as an IMF-fixdate (RFC 9110, 5.6.7) */
			time_t later = time(NULL) + 3600;
			struct tm tm;
			gmtime_r(&later, &tm);
			char date[64];
			strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
			sendf(fd, "HTTP/1.1 429 Too Many Requests\r\nRetry-After: %s\r\n"
				  "Content-Length: 4\r\n\r\nslow", date);
		} else {
			sendf(fd, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
		}
	} else if (strcmp(path, "/echo") == 0) {
		pthread_mutex_lock(&s->lock);
		snprintf(s->echo_method, sizeof s->echo_method, "%s", r->method);
		char tmp[64];
		req_header(r, "Content-Type", tmp, sizeof tmp);
		snprintf(s->echo_ctype, sizeof s->echo_ctype, "%s", tmp);
		s->echo_expect = req_header(r, "Expect", tmp, sizeof tmp);
		pthread_mutex_unlock(&s->lock);
		send_echo(fd, r);
	} else if (strcmp(path, "/headers") == 0) {
		/* A 1xx with its own header first: only the final answer's headers count. */
		sendf(fd, "HTTP/1.1 100 Continue\r\nX-Early: yes\r\n\r\n");
		sendf(fd, "HTTP/1.1 200 OK\r\nX-Custom-Thing:   Spaced Value  \r\n"
			  "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");
	} else if (strcmp(path, "/bigheaders") == 0) {
		sendf(fd, "HTTP/1.1 200 OK\r\n");
		char line[1100];
		memset(line, 'v', sizeof line);
		for (int i = 0; i < 70; i++) {
			if (sendf(fd, "X-Filler-%d: ", i) < 0 || send_all(fd, line, sizeof line) < 0 ||
			    send_all(fd, "\r\n", 2) < 0)
				return 0;
		}
		sendf(fd, "Content-Length: 0\r\n\r\n");
	} else if (strcmp(path, "/barrier") == 0) {
		pthread_mutex_lock(&s->lock);
		s->barrier_waiting++;
		if (s->barrier_waiting > s->barrier_max)
			s->barrier_max = s->barrier_waiting;
		pthread_cond_broadcast(&s->cond);
		struct timespec until;
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += 20; /* a broken client must not hang the test forever */
		while (s->barrier_max < s->barrier_target && !s->stopping)
			if (pthread_cond_timedwait(&s->cond, &s->lock, &until) == ETIMEDOUT)
				break;
		s->barrier_waiting--;
		pthread_mutex_unlock(&s->lock);
		sendf(fd, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
	} else {
		sendf(fd, "HTTP/1.1 404 Not Found\r\nContent-Length: 8\r\n\r\nno route");
	}
	return 1;
}

static void *conn_main(void *arg)
{
	struct conn *cn = arg;
	for (;;) {
		struct req r;
		if (read_request(cn, &r) < 0) {
			free_request(&r);
			break;
		}
		int keep = handle(cn, &r);
		free_request(&r);
		if (!keep)
			break;
	}
	/* The peer sees the end now; the descriptor is closed when the server stops,
	 * so its number cannot be reused under srv_stop's shutdown(). */
	shutdown(cn->fd, SHUT_RDWR);
	atomic_fetch_sub(&cn->srv->open_conns, 1);
	srv_notify(cn->srv);
	return NULL;
}

static void *acceptor_main(void *arg)
{
	struct srv *s = arg;
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, (size_t)1 << 20);
	for (;;) {
		struct pollfd pf[3] = {{s->tcp_fd, POLLIN, 0}, {s->unix_fd, POLLIN, 0},
				       {s->wake[0], POLLIN, 0}};
		if (poll(pf, 3, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (pf[2].revents)
			break;
		for (int i = 0; i < 2; i++) {
			if (!pf[i].revents)
				continue;
			int fd = accept4(pf[i].fd, NULL, NULL, SOCK_CLOEXEC);
			if (fd < 0)
				continue;
			atomic_fetch_add(&s->accepted, 1);
			atomic_fetch_add(&s->open_conns, 1);
			struct conn *cn = calloc(1, sizeof *cn);
			cn->srv = s;
			cn->fd = fd;
			cn->in = malloc(IN_MAX);
			pthread_mutex_lock(&s->lock);
			cn->next = s->conns;
			s->conns = cn;
			pthread_mutex_unlock(&s->lock);
			if (pthread_create(&cn->th, &attr, conn_main, cn) != 0)
				abort();
		}
	}
	pthread_attr_destroy(&attr);
	return NULL;
}

static void on_notify(struct ev_loop *loop, ev_async *w, int revents)
{
	(void)loop;
	(void)w;
	(void)revents; /* waking the loop is all it is for */
}

static struct srv *srv_start(struct ev_loop *loop)
{
	struct srv *s = calloc(1, sizeof *s);
	assert_non_null(s);
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	s->loop = loop;
	ev_async_init(&s->notify, on_notify);
	ev_async_start(loop, &s->notify);
	assert_int_equal(pipe2(s->wake, O_CLOEXEC), 0);

	s->tcp_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(s->tcp_fd >= 0);
	struct sockaddr_in in = {.sin_family = AF_INET};
	in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(s->tcp_fd, (struct sockaddr *)&in, sizeof in), 0);
	assert_int_equal(listen(s->tcp_fd, 512), 0);
	socklen_t alen = sizeof in;
	assert_int_equal(getsockname(s->tcp_fd, (struct sockaddr *)&in, &alen), 0);
	s->port = ntohs(in.sin_port);

	snprintf(s->dir, sizeof s->dir, "/tmp/slipway-http-XXXXXX");
	assert_non_null(mkdtemp(s->dir));
	snprintf(s->sock_path, sizeof s->sock_path, "%s/http.sock", s->dir);
	s->unix_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(s->unix_fd >= 0);
	struct sockaddr_un un = {.sun_family = AF_UNIX};
	snprintf(un.sun_path, sizeof un.sun_path, "%s", s->sock_path);
	assert_int_equal(bind(s->unix_fd, (struct sockaddr *)&un, sizeof un), 0);
	assert_int_equal(listen(s->unix_fd, 64), 0);

	assert_int_equal(pthread_create(&s->acceptor, NULL, acceptor_main, s), 0);
	return s;
}

static void srv_stop(struct srv *s)
{
	pthread_mutex_lock(&s->lock);
	s->stopping = 1;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	assert_int_equal(write(s->wake[1], "x", 1), 1);
	pthread_join(s->acceptor, NULL);
	for (struct conn *cn = s->conns; cn; cn = cn->next)
		shutdown(cn->fd, SHUT_RDWR);
	while (s->conns) {
		struct conn *cn = s->conns;
		s->conns = cn->next;
		pthread_join(cn->th, NULL);
		close(cn->fd);
		free(cn->in);
		free(cn);
	}
	close(s->tcp_fd);
	close(s->unix_fd);
	unlink(s->sock_path);
	rmdir(s->dir);
	close(s->wake[0]);
	close(s->wake[1]);
	ev_async_stop(s->loop, &s->notify);
	pthread_cond_destroy(&s->cond);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

/* ------------------------------------------------------------------ */
/* the client side                                                     */

struct fix {
	struct ev_loop *loop;
	struct http_client *client;
	struct srv *srv;
	char url[128];
};

struct result {
	struct fix *fix;
	int done;
	enum http_error error;
	char error_msg[256];
	long status;
	char *body;
	size_t body_len;
	int attempts;
	int64_t elapsed_ms;
	size_t header_count;
	char x_custom[64], ctype[64];
	int has_early;
	struct buf data;
	int data_calls;
	int data_result;       /* on_data returns this */
	int cancel_in_data;    /* on_data cancels its own request */
	int free_in_done;      /* on_done frees the client */
	uint64_t id;
	int prepare_calls;
	int prepare_attempts[8];
	int prepare_result;
};

static int setup(void **state)
{
	struct fix *f = calloc(1, sizeof *f);
	f->loop = ev_loop_new(EVFLAG_AUTO);
	f->client = http_client_new(f->loop);
	f->srv = srv_start(f->loop);
	snprintf(f->url, sizeof f->url, "http://127.0.0.1:%d", f->srv->port);
	*state = f;
	return f->loop && f->client ? 0 : -1;
}

static int teardown(void **state)
{
	struct fix *f = *state;
	http_client_free(f->client);
	srv_stop(f->srv);
	ev_loop_destroy(f->loop);
	free(f);
	return 0;
}

static void result_init(struct result *r, struct fix *f)
{
	memset(r, 0, sizeof *r);
	r->fix = f;
	buf_init(&r->data, (size_t)4 << 20);
}

static void result_free(struct result *r)
{
	free(r->body);
	buf_free(&r->data);
}

static void on_done(const struct http_response *resp, void *arg)
{
	struct result *r = arg;
	r->done++;
	r->error = resp->error;
	snprintf(r->error_msg, sizeof r->error_msg, "%s", resp->error_msg);
	r->status = resp->status;
	free(r->body);
	r->body = malloc(resp->body_len + 1);
	memcpy(r->body, resp->body, resp->body_len + 1); /* the NUL too */
	r->body_len = resp->body_len;
	r->attempts = resp->attempts;
	r->elapsed_ms = resp->elapsed_ms;
	r->header_count = resp->header_count;
	const char *v = http_response_header(resp, "x-custom-thing");
	snprintf(r->x_custom, sizeof r->x_custom, "%s", v ? v : "");
	v = http_response_header(resp, "CONTENT-TYPE");
	snprintf(r->ctype, sizeof r->ctype, "%s", v ? v : "");
	r->has_early = http_response_header(resp, "X-Early") != NULL;
	if (r->free_in_done) {
		http_client_free(r->fix->client);
		r->fix->client = NULL;
	}
}

static int on_data(const char *data, size_t len, void *arg)
{
	struct result *r = arg;
	r->data_calls++;
	buf_append(&r->data, data, len);
	if (r->cancel_in_data)
		http_client_cancel(r->fix->client, r->id);
	return r->data_result;
}

static int prepare(struct buf *headers, int attempt, void *arg)
{
	struct result *r = arg;
	if (r->prepare_calls < 8)
		r->prepare_attempts[r->prepare_calls] = attempt;
	r->prepare_calls++;
	if (r->prepare_result < 0)
		return -1;
	return buf_printf(headers, "X-Attempt: %d\r\n", attempt);
}

static int guard_fired;

static void on_guard(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)w;
	(void)revents;
	guard_fired = 1;
}

/* Runs the loop until *flag >= want, or fails the test after `limit_s`. */
static void run_until_count(struct ev_loop *loop, const int *flag, int want, double limit_s)
{
	ev_timer guard;
	ev_timer_init(&guard, on_guard, limit_s, 0.0);
	ev_timer_start(loop, &guard);
	guard_fired = 0;
	while (*flag < want && !guard_fired)
		ev_run(loop, EVRUN_ONCE);
	ev_timer_stop(loop, &guard);
	assert_false(guard_fired);
}

static void run_until(struct ev_loop *loop, const int *flag)
{
	run_until_count(loop, flag, 1, 15.0);
}

static void run_until_atomic(struct ev_loop *loop, atomic_int *v, int want)
{
	ev_timer guard;
	ev_timer_init(&guard, on_guard, 15.0, 0.0);
	ev_timer_start(loop, &guard);
	guard_fired = 0;
	while (atomic_load(v) < want && !guard_fired)
		ev_run(loop, EVRUN_ONCE);
	ev_timer_stop(loop, &guard);
	assert_false(guard_fired);
}

/* Lets the loop run for `s` seconds: used only to show that nothing happens. */
static void run_for(struct ev_loop *loop, double s)
{
	ev_timer guard;
	ev_timer_init(&guard, on_guard, s, 0.0);
	ev_timer_start(loop, &guard);
	guard_fired = 0;
	while (!guard_fired)
		ev_run(loop, EVRUN_ONCE);
}

static uint64_t start_get(struct fix *f, const char *path, struct result *r,
			  struct http_request *tmpl)
{
	char url[256];
	snprintf(url, sizeof url, "%s%s", f->url, path);
	struct http_request req = {0};
	if (tmpl)
		req = *tmpl;
	req.url = url;
	req.on_done = on_done;
	req.arg = r;
	uint64_t id = http_client_start(f->client, &req);
	r->id = id;
	return id;
}

/* ------------------------------------------------------------------ */
/* tests                                                               */

static void test_plain_200(void **state)
{
	struct fix *f = *state;
	struct result r;
	result_init(&r, f);
	assert_true(start_get(f, "/hello", &r, NULL) > 0);
	assert_int_equal(r.done, 0); /* never synchronously */
	assert_int_equal(http_client_pending(f->client), 1);
	run_until(f->loop, &r.done);
	assert_int_equal(r.done, 1);
	assert_int_equal(r.error, HTTP_OK);
	assert_string_equal(r.error_msg, "");
	assert_int_equal(r.status, 200);
	assert_string_equal(r.body, "hello world");
	assert_int_equal(r.body_len, 11);
	assert_string_equal(r.ctype, "text/plain");
	assert_int_equal(r.attempts, 1);
	assert_true(r.elapsed_ms >= 0);
	assert_int_equal(http_client_pending(f->client), 0);
	result_free(&r);
}

static void test_chunked_body(void **state)
{
	struct fix *f = *state;
	struct result r;
	result_init(&r, f);
	start_get(f, "/chunked", &r, NULL);
	run_until(f->loop, &r.done);
	assert_int_equal(r.error, HTTP_OK);
	assert_int_equal(r.status, 200);
	assert_string_equal(r.body, "abcdefghijklmnop");
	result_free(&r);
}

static void test_stream_chunks(void **state)
{
	struct fix *f = *state;
	struct result r;
	result_init(&r, f);
	struct http_request t = {.on_data = on_data};
	start_get(f, "/stream", &r, &t);
	run_until(f->loop, &r.done);
	assert_int_equal(r.error, HTTP_OK);
	assert_int_equal(r.status, 200);
	assert_string_equal(r.data.data, "part0\npart1\npart2\npart3\npart4\n");
	/* The server pauses between chunks, so they arrive one by one. */
	assert_true(r.data_calls >= 3);
	assert_int_equal(r.body_len, 0);
	assert_string_equal(r.body, "");
	result_free(&r);
}

static void test_stream_stall_timeout(void **state)
{
	struct fix *f = *state;
	struct result r;
	result_init(&r, f);
	struct backoff_policy retry = {.base_ms = 1, .cap_ms = 10, .max_attempts = 3};
	struct http_request t = {.on_data = on_data, .stall_timeout_ms = 300, .retry = &retry};
	start_get(f, "/stall", &r, &t);
	run_until(f->loop, &r.done);
	assert_int_equal(r.error, HTTP_ERR_TIMEOUT);
	assert_non_null(strstr(r.error_msg, "timeout"));
	assert_string_equal(r.data.data, "first");
	assert_int_equal(r.attempts, 1); /* data was seen: never retried */
	assert_true(r.elapsed_ms >= 290);
	assert_true(r.elapsed_ms < 5000);
	/* The connection was dropped, not left open. */
	run_until_atomic(f->loop, &f->srv->hang_closed, 1);
	result_free(&r);
}

static void test_stream_aborted_by_on_data(void **state)
{
	struct fix *f = *state;
	struct result r;
	result_init(&r, f);
	r.data_result = -1;
	struct http_request t = {.on_data = on_data};
	start_get(f, "/stream", &r, &t);
	run_until(f->loop, &r.done);
	assert_int_equal(r.error, HTTP_ERR_ABORTED);
	assert_int_equal(r.data_calls, 1);
	assert_int_equal(r.status, 200);
	result_free(&r);
}

static void test_404_buffered_while_streaming(void **state)
{
	struct fix *f = *state;
	struct result r;
	result_init(&r, f);
	struct http_request t = {.on_data = on_data};
	start_get(f, "/notfound", &r, &t);
	run_until(f->loop, &r.done);
	assert_int_equal(r.error, HTTP_OK);
	assert_int_equal(r.status, 404);
	assert_int_equal(r.data_calls, 0);
	assert_string_equal(r.body, "{\"message\":\"no such thing\"}");
	assert_string_equal(r.ctype, "application/json");
	result_free(&r);
}

static void test_body_over_max_body(void **state)
{
	struct fix *f = *state;
	struct result r;
	result_init(&r, f);
	struct http_request t = {.max_body = 10000};
	start_get(f, "/big", &r, &t);
	run_until(f->loop, &r.done);
	assert_int_equal(r.error, HTTP_ERR_TOO_LARGE);
	assert_int_equal(r.status, 200);
	assert_true(r.body_len <= 10000);
	result_free(&r);

	/* The cap is for buffered bodies: the same answer streams in full. */
	result_init(&r, f);
	struct http_request s = {.max_body = 10000, .on_data = on_data};
	start_get(f, "/big", &r, &s);
	run_until(f->loop, &r.done);
	assert_int_equal(r.error, HTTP_OK);
	assert_int_equal(r.data.len, 100000);
	result_free(&r);
}

static void test_connection_refused(void **state)
{
	struct fix *f = *state;
	/* A port bound but never listened on refuses connections. */
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in in = {.sin_family = AF_INET};
	in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&in, sizeof in), 0);
	socklen_t alen = sizeof in;
	getsockname(fd, (struct sockaddr *)&in, &alen);
	char url[64];
	snprintf(url, sizeof url, "http://127.0.0.1:%d/x", ntohs(in.sin_port));

	struct result r;
	result_init(&r, f);
	struct http_request req = {.url = url, .on_done = on_done, .arg = &r};
	assert_true(http_client_start(f->client, &req) > 0);
	run_until(f->loop, &r.done);
	close(fd);
	assert_int_equal(r.error, HTTP_ERR_CONNECT);
	assert_int_equal(r.status, 0);
	assert_true(strncmp(r.error_msg, "connect: ", 9) == 0);
	assert_int_equal(r.attempts, 1);
	result_free(&r);
}

static void test_closed_mid_body(void **state)
{
	struct fix *f = *state;
	struct result r;
	result_init(&r, f);
	start_get(f, "/cut", &r, NULL);
	run_until(f->loop, &r.done);
	assert_int_equal(r.error, HTTP_ERR_TRANSPORT);
	assert_int_equal(r.status, 200);
	result_free(&r);
}

static void test_timeout(void **state)
{
	struct fix *f = *state;
	struct result r;
	result_init(&r, f);
	struct http_request t = {.timeout_ms = 300};
	start_get(f, "/hang", &r, &t);
	run_until(f->loop, &r.done);
	assert_int_equal(r.error, HTTP_ERR_TIMEOUT);
	assert_int_equal(r.status, 0);
	assert_true(r.elapsed_ms >= 290);
	assert_true(r.elapsed_ms < 5000);
	result_free(&r);
}

static void test_retry_503_then_200(void **state)
{
	struct fix *f = *state;
	struct result r;
	result_init(&r, f);
	struct backoff_policy retry = {.base_ms = 5, .cap_ms = 20, .max_attempts = 5};
	struct http_request t = {.retry = &retry, .prepare = prepare};
	start_get(f, "/flaky/a", &r, &t);
	run_until(f->loop, &r.done);
	assert_int_equal(r.done, 1);
	assert_int_equal(r.error, HTTP_OK);
	assert_int_equal(r.status, 200);
	assert_int_equal(r.attempts, 3);
	assert_int_equal(r.prepare_calls, 3);
	assert_int_equal(r.prepare_attempts[0], 1);
	assert_int_equal(r.prepare_attempts[1], 2);
	assert_int_equal(r.prepare_attempts[2], 3);
	assert_string_equal(f->srv->attempts_seen, "1,2,3");
	result_free(&r);
}

static void test_retry_gives_up_at_max_attempts(void **state)
{
	struct fix *f = *state;
	struct result r;
	result_init(&r, f);
	struct backoff_policy retry = {.base_ms = 5, .cap_ms = 20, .max_attempts = 2};
	struct http_request t = {.retry = &retry};
	start_get(f, "/flaky/b", &r, &t);
	run_until(f->loop, &r.done);
	assert_int_equal(r.status, 503);
	assert_int_equal(r.attempts, 2);
	assert_string_equal(r.body, "busy");
	result_free(&r);

	/* No policy: one attempt, the 503 goes to on_done. */
	result_init(&r, f);
	start_get(f, "/flaky/c", &r, NULL);
	run_until(f->loop, &r.done);
	assert_int_equal(r.status, 503);
	assert_int_equal(r.attempts, 1);
	result_free(&r);
}

static void test_retry_post_resends_body(void **state)
{
	struct fix *f = *state;
	struct result r;
	result_init(&r, f);
	struct backoff_policy retry = {.base_ms = 1, .cap_ms = 5, .max_attempts = 3};
	const char *body = "{\"n\":1}";
	struct http_request t = {.method = "POST", .body = body, .body_len = strlen(body),
				 .retry = &retry};
	start_get(f, "/flaky/post", &r, &t);
	run_until(f->loop, &r.done);
	char sha[2 * CRYPTO_SHA256_LEN + 1], want[128];
	crypto_sha256_hex(body, strlen(body), sha);
	snprintf(want, sizeof want, "len=%zu sha=%s", strlen(body), sha);
	assert_int_equal(r.attempts, 3);
	assert_string_equal(r.body, want);
	result_free(&r);
}

static void test_retry_after_seconds(void **state)
{
	struct fix *f = *state;
	struct result r;
	result_init(&r, f);
	struct backoff_policy retry = {.base_ms = 1, .cap_ms = 1000, .max_attempts = 3};
	struct http_request t = {.retry = &retry};
	start_get(f, "/ratelimit/a", &r, &t);
	run_until(f->loop, &r.done);
	assert_int_equal(r.status, 200);
	assert_int_equal(r.attempts, 2);
	/* Full jitter alone would wait at most 1 ms; Retry-After says 1 s. */
	assert_true(r.elapsed_ms >= 990);
	assert_true(r.elapsed_ms < 4000);
	result_free(&r);
}

static void test_retry_after_date_capped(void **state)
{
	struct fix *f = *state;
	struct result r;
	result_init(&r, f);
	/* The server asks for an hour; the wait is capped at 4 x cap = 400 ms. */
	struct backoff_policy retry = {.base_ms = 1, .cap_ms = 100, .max_attempts = 3};
	struct http_request t = {.retry = &retry};
	start_get(f, "/ratelimit-date/a", &r, &t);
	run_until(f->loop, &r.done);
	assert_int_equal(r.status, 200);
	assert_int_equal(r.attempts, 2);
	assert_true(r.elapsed_ms >= 390);
	assert_true(r.elapsed_ms < 3000);
	result_free(&r);
}

static int retry_decisions;

/* Retries nothing but 429, and counts its calls. */
static int only_429(const struct http_response *resp, void *arg)
{
	(void)arg;
	retry_decisions++;
	return resp->error == HTTP_OK && resp->status == 429;
}

static void test_custom_should_retry_and_cancel_in_backoff(void **state)
{
	struct fix *f = *state;
	struct result r;
	result_init(&r, f);
	struct backoff_policy retry = {.base_ms = 1, .cap_ms = 5, .max_attempts = 5};
	struct http_request t = {.retry = &retry, .should_retry = only_429};
	retry_decisions = 0;
	start_get(f, "/flaky/custom", &r, &t);
	run_until(f->loop, &r.done);
	assert_int_equal(r.status, 503); /* our rule said no */
	assert_int_equal(r.attempts, 1);
	assert_int_equal(retry_decisions, 1);
	result_free(&r);

	/* The 429 asks for 1 s; cancel while waiting: no second attempt, no on_done. */
	result_init(&r, f);
	retry = (struct backoff_policy){.base_ms = 1, .cap_ms = 1000, .max_attempts = 5};
	retry_decisions = 0;
	uint64_t id = start_get(f, "/ratelimit/cancel", &r, &t);
	run_until_count(f->loop, &retry_decisions, 1, 15.0);
	assert_int_equal(http_client_pending(f->client), 1);
	http_client_cancel(f->client, id);
	assert_int_equal(http_client_pending(f->client), 0);
	run_for(f->loop, 1.3);
	assert_int_equal(r.done, 0);
	/* The server saw one request: counting this probe makes two. */
	assert_int_equal(count_hit(f->srv, "/ratelimit/cancel"), 2);
	result_free(&r);
}

static void test_prepare_failure(void **state)
{
	struct fix *f = *state;
	struct result r;
	result_init(&r, f);
	r.prepare_result = -1;
	struct http_request t = {.prepare = prepare};
	start_get(f, "/hello", &r, &t);
	assert_int_equal(r.done, 0);
	assert_int_equal(r.prepare_calls, 0); /* prepare runs with the attempt, later */
	run_until(f->loop, &r.done);
	assert_int_equal(r.error, HTTP_ERR_INTERNAL);
	assert_int_equal(r.prepare_calls, 1);
	assert_int_equal(r.status, 0);
	result_free(&r);
}

static void test_cancel_before_completion(void **state)
{
	struct fix *f = *state;
	struct result r;
	result_init(&r, f);
	uint64_t id = start_get(f, "/hang", &r, NULL);
	assert_true(id > 0);
	run_until_atomic(f->loop, &f->srv->hang_started, 1);
	http_client_cancel(f->client, id);
	assert_int_equal(http_client_pending(f->client), 0);
	http_client_cancel(f->client, id); /* unknown now: ignored */
	/* The connection goes away, and on_done never comes. */
	run_until_atomic(f->loop, &f->srv->hang_closed, 1);
	run_for(f->loop, 0.1);
	assert_int_equal(r.done, 0);
	result_free(&r);

	/* Cancelled before its first attempt even started. */
	result_init(&r, f);
	id = start_get(f, "/hello", &r, NULL);
	http_client_cancel(f->client, id);
	run_for(f->loop, 0.1);
	assert_int_equal(r.done, 0);
	result_free(&r);
}

static void test_cancel_inside_on_data(void **state)
{
	struct fix *f = *state;
	struct result r;
	result_init(&r, f);
	r.cancel_in_data = 1;
	struct http_request t = {.on_data = on_data};
	start_get(f, "/stall", &r, &t);
	run_until_atomic(f->loop, &f->srv->hang_closed, 1);
	run_for(f->loop, 0.1);
	assert_int_equal(r.data_calls, 1);
	assert_int_equal(r.done, 0);
	assert_int_equal(http_client_pending(f->client), 0);
	result_free(&r);
}

static void test_free_with_requests_in_flight(void **state)
{
	struct fix *f = *state;
	struct result r[3];
	for (int i = 0; i < 3; i++) {
		result_init(&r[i], f);
		start_get(f, "/hang", &r[i], NULL);
	}
	run_until_atomic(f->loop, &f->srv->hang_started, 3);
	http_client_free(f->client);
	f->client = NULL;
	run_until_atomic(f->loop, &f->srv->hang_closed, 3);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(r[i].done, 0);
		result_free(&r[i]);
	}
}

static void test_free_inside_on_done(void **state)
{
	struct fix *f = *state;
	struct result a, b;
	result_init(&a, f);
	result_init(&b, f);
	a.free_in_done = 1;
	start_get(f, "/hello", &a, NULL);
	start_get(f, "/hang", &b, NULL);
	run_until(f->loop, &a.done);
	assert_null(f->client);
	run_until_atomic(f->loop, &f->srv->hang_closed, 1);
	assert_int_equal(a.status, 200);
	assert_int_equal(b.done, 0);
	result_free(&a);
	result_free(&b);
}

static void test_post_body(void **state)
{
	struct fix *f = *state;
	struct result r;
	result_init(&r, f);
	char body[] = "{\"hello\":\"body\"}";
	const char *headers[] = {"Content-Type: application/json", NULL};
	struct http_request t = {.method = "POST", .body = body, .body_len = strlen(body),
				 .headers = headers};
	start_get(f, "/echo", &r, &t);
	memset(body, 'Z', strlen(body)); /* copied by http_client_start */
	run_until(f->loop, &r.done);
	char sha[2 * CRYPTO_SHA256_LEN + 1], want[128];
	crypto_sha256_hex("{\"hello\":\"body\"}", 16, sha);
	snprintf(want, sizeof want, "len=16 sha=%s", sha);
	assert_int_equal(r.status, 200);
	assert_string_equal(r.body, want);
	assert_string_equal(f->srv->echo_method, "POST");
	assert_string_equal(f->srv->echo_ctype, "application/json");
	assert_int_equal(f->srv->echo_expect, 0);
	result_free(&r);

	/* Other methods without a body. */
	result_init(&r, f);
	struct http_request d = {.method = "DELETE"};
	start_get(f, "/echo", &r, &d);
	run_until(f->loop, &r.done);
	assert_int_equal(r.status, 200);
	assert_string_equal(f->srv->echo_method, "DELETE");
	result_free(&r);
	result_init(&r, f);
	struct http_request h = {.method = "HEAD"};
	start_get(f, "/hello", &r, &h);
	run_until(f->loop, &r.done);
	assert_int_equal(r.status, 200);
	assert_int_equal(r.body_len, 0);
	result_free(&r);
}

static void test_put_body_file(void **state)
{
	struct fix *f = *state;
	char path[128];
	snprintf(path, sizeof path, "%s/body.bin", f->srv->dir);
	size_t len = (size_t)3 << 19; /* over 1 MiB: curl would send "Expect: 100-continue" */
	unsigned char *data = malloc(len);
	for (size_t i = 0; i < len; i++)
		data[i] = (unsigned char)(i * 7 + i / 251);
	FILE *fp = fopen(path, "wb");
	assert_non_null(fp);
	assert_int_equal(fwrite(data, 1, len, fp), len);
	fclose(fp);

	struct result r;
	result_init(&r, f);
	struct http_request t = {.method = "PUT", .body_file = path};
	start_get(f, "/echo", &r, &t);
	run_until(f->loop, &r.done);
	char sha[2 * CRYPTO_SHA256_LEN + 1], want[128];
	crypto_sha256_hex(data, len, sha);
	snprintf(want, sizeof want, "len=%zu sha=%s", len, sha);
	assert_int_equal(r.error, HTTP_OK);
	assert_string_equal(r.body, want);
	assert_string_equal(f->srv->echo_method, "PUT");
	assert_string_equal(f->srv->echo_ctype, ""); /* no made-up form type */
	assert_int_equal(f->srv->echo_expect, 0);
	result_free(&r);
	unlink(path);
	free(data);

	/* A body_file that is gone at send time fails the request. */
	result_init(&r, f);
	start_get(f, "/echo", &r, &t);
	run_until(f->loop, &r.done);
	assert_int_equal(r.error, HTTP_ERR_INTERNAL);
	assert_non_null(strstr(r.error_msg, "body.bin"));
	result_free(&r);
}

static void test_response_headers(void **state)
{
	struct fix *f = *state;
	struct result r;
	result_init(&r, f);
	start_get(f, "/headers", &r, NULL);
	run_until(f->loop, &r.done);
	assert_int_equal(r.status, 200);
	assert_string_equal(r.x_custom, "Spaced Value");
	assert_string_equal(r.ctype, "application/json");
	assert_int_equal(r.has_early, 0); /* the 100's header is not the answer's */
	assert_int_equal(r.header_count, 3);
	result_free(&r);
}

static void test_response_headers_cap(void **state)
{
	struct fix *f = *state;
	struct result r;
	result_init(&r, f);
	start_get(f, "/bigheaders", &r, NULL);
	run_until(f->loop, &r.done);
	assert_int_equal(r.error, HTTP_ERR_TRANSPORT);
	assert_non_null(strstr(r.error_msg, "64 KiB"));
	result_free(&r);
}

static void test_unix_socket(void **state)
{
	struct fix *f = *state;
	struct result r;
	result_init(&r, f);
	struct http_request req = {.url = "http://localhost/hello",
				   .unix_socket = f->srv->sock_path,
				   .on_done = on_done, .arg = &r};
	assert_true(http_client_start(f->client, &req) > 0);
	run_until(f->loop, &r.done);
	assert_int_equal(r.error, HTTP_OK);
	assert_int_equal(r.status, 200);
	assert_string_equal(r.body, "hello world");
	result_free(&r);

	char missing[160];
	snprintf(missing, sizeof missing, "%s/nope.sock", f->srv->dir);
	result_init(&r, f);
	req.unix_socket = missing;
	req.arg = &r;
	assert_true(http_client_start(f->client, &req) > 0);
	run_until(f->loop, &r.done);
	assert_int_equal(r.error, HTTP_ERR_CONNECT);
	result_free(&r);
}

static void test_tls_to_plain_server(void **state)
{
	struct fix *f = *state;
	struct result r;
	result_init(&r, f);
	char url[64];
	snprintf(url, sizeof url, "https://127.0.0.1:%d/hello", f->srv->port);
	struct http_request req = {.url = url, .on_done = on_done, .arg = &r};
	assert_true(http_client_start(f->client, &req) > 0);
	run_until(f->loop, &r.done);
	assert_int_equal(r.error, HTTP_ERR_TLS);
	result_free(&r);
}

static void test_many_concurrent(void **state)
{
	struct fix *f = *state;
	enum { N = 200 };
	f->srv->barrier_target = N; /* nobody is answered until all N wait at once */
	struct result *r = calloc(N, sizeof *r);
	int finished = 0;
	for (int i = 0; i < N; i++) {
		result_init(&r[i], f);
		assert_true(start_get(f, "/barrier", &r[i], NULL) > 0);
	}
	assert_int_equal(http_client_pending(f->client), N);
	ev_timer guard;
	ev_timer_init(&guard, on_guard, 30.0, 0.0);
	ev_timer_start(f->loop, &guard);
	guard_fired = 0;
	while (!guard_fired) {
		finished = 0;
		for (int i = 0; i < N; i++)
			finished += r[i].done;
		if (finished == N)
			break;
		ev_run(f->loop, EVRUN_ONCE);
	}
	ev_timer_stop(f->loop, &guard);
	assert_int_equal(finished, N);
	for (int i = 0; i < N; i++) {
		assert_int_equal(r[i].done, 1);
		assert_int_equal(r[i].status, 200);
		assert_string_equal(r[i].body, "ok");
		result_free(&r[i]);
	}
	assert_int_equal(f->srv->barrier_max, N);
	assert_int_equal(http_client_pending(f->client), 0);
	free(r);
}

static void test_bad_requests_rejected(void **state)
{
	struct fix *f = *state;
	struct result r;
	result_init(&r, f);
	struct http_request req = {.url = "http://127.0.0.1:1/", .arg = &r};
	assert_int_equal(http_client_start(f->client, &req), 0); /* no on_done */
	req.on_done = on_done;
	req.url = "ftp://127.0.0.1/x";
	assert_int_equal(http_client_start(f->client, &req), 0);
	req.url = "http://127.0.0.1:1/";
	const char *inject[] = {"X-A: 1\r\nX-B: 2", NULL};
	req.headers = inject;
	assert_int_equal(http_client_start(f->client, &req), 0);
	req.headers = NULL;
	req.method = "GET /x";
	assert_int_equal(http_client_start(f->client, &req), 0);
	req.method = NULL;
	req.body_len = 3; /* no body pointer */
	assert_int_equal(http_client_start(f->client, &req), 0);
	assert_int_equal(http_client_pending(f->client), 0);
	run_for(f->loop, 0.05);
	assert_int_equal(r.done, 0);
	result_free(&r);
}

static void test_url_encode(void **state)
{
	(void)state;
	struct buf b;
	buf_init(&b, 0);
	/* RFC 3986 section 2.3: unreserved characters stay as they are. */
	const char *plain = "ABCXYZabcxyz0189-._~";
	assert_int_equal(http_url_encode(&b, plain, strlen(plain)), 0);
	assert_string_equal(b.data, plain);
	buf_reset(&b);
	assert_int_equal(http_url_encode(&b, "a b&c=d/e?f+g", 13), 0);
	assert_string_equal(b.data, "a%20b%26c%3Dd%2Fe%3Ff%2Bg");
	buf_reset(&b);
	/* UTF-8 bytes one by one, upper-case hex (RFC 3986 section 2.1). */
	assert_int_equal(http_url_encode(&b, "\xc3\xa9\x00!", 4), 0);
	assert_string_equal(b.data, "%C3%A9%00%21");
	buf_reset(&b);
	assert_int_equal(http_url_encode(&b, "", 0), 0);
	assert_int_equal(b.len, 0);
	buf_free(&b);

	/* Over the cap: -1 and the buffer keeps what it had. */
	buf_init(&b, 8);
	assert_int_equal(buf_append_str(&b, "q="), 0);
	assert_int_equal(http_url_encode(&b, "a b c", 5), -1);
	assert_string_equal(b.data, "q=");
	assert_int_equal(b.len, 2);
	buf_free(&b);
}

static void test_default_should_retry(void **state)
{
	(void)state;
	struct http_response resp = {.error = HTTP_OK};
	long yes[] = {408, 429, 500, 502, 503, 504};
	long no[] = {200, 204, 301, 400, 401, 404, 409, 413, 501, 505};
	for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
		resp.status = yes[i];
		assert_int_equal(http_default_should_retry(&resp), 1);
	}
	for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) {
		resp.status = no[i];
		assert_int_equal(http_default_should_retry(&resp), 0);
	}
	resp.status = 0;
	enum http_error retried[] = {HTTP_ERR_CONNECT, HTTP_ERR_TRANSPORT, HTTP_ERR_TIMEOUT};
	enum http_error final[] = {HTTP_ERR_TLS, HTTP_ERR_TOO_LARGE, HTTP_ERR_ABORTED,
				   HTTP_ERR_INTERNAL};
	for (size_t i = 0; i < 3; i++) {
		resp.error = retried[i];
		assert_int_equal(http_default_should_retry(&resp), 1);
	}
	for (size_t i = 0; i < 4; i++) {
		resp.error = final[i];
		assert_int_equal(http_default_should_retry(&resp), 0);
	}
	assert_string_equal(http_error_name(HTTP_ERR_CONNECT), "connect");
	assert_string_equal(http_error_name(HTTP_ERR_TOO_LARGE), "too large");
	assert_string_not_equal(http_error_name(HTTP_ERR_TLS), http_error_name(HTTP_ERR_TIMEOUT));
}

/* ---- flow control ---- */

/* /firehose read through on_data, every byte checked against its pattern. */
struct hose {
	struct result r;        /* first: on_done gets the same arg */
	long got;
	int calls;
	int bad;
	size_t max_chunk;
	int pause_at_call;      /* pause inside on_data at this call (0: never) */
	int pause_every;        /* pause at every n-th call, resumed by a timer */
	int pauses;
	ev_timer resume;
};

static void on_hose_resume(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	struct hose *h = w->data;
	http_client_pause(h->r.fix->client, h->r.id, false);
}

static int on_hose_data(const char *data, size_t len, void *arg)
{
	struct hose *h = arg;
	h->calls++;
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)data[i] != (unsigned char)((h->got + (long)i) % 251))
			h->bad++;
	h->got += (long)len;
	if (len > h->max_chunk)
		h->max_chunk = len;
	if (h->calls == h->pause_at_call ||
	    (h->pause_every && h->calls % h->pause_every == 0)) {
		h->pauses++;
		http_client_pause(h->r.fix->client, h->r.id, true);
		if (h->pause_every) {
			ev_timer_set(&h->resume, 0.001, 0.0);
			ev_timer_start(h->r.fix->loop, &h->resume);
		}
	}
	return 0;
}

static void hose_start(struct fix *f, struct hose *h, const char *path, size_t recv_buffer)
{
	memset(h, 0, sizeof *h);
	result_init(&h->r, f);
	ev_timer_init(&h->resume, on_hose_resume, 0.0, 0.0);
	h->resume.data = h;
	/* A unix socket: its small buffers hold the server back soon. */
	struct http_request t = {.on_data = on_hose_data, .unix_socket = f->srv->sock_path,
				 .stall_timeout_ms = 100, .recv_buffer = recv_buffer};
	assert_true(start_get(f, path, &h->r, &t) > 0);
}

static void test_pause_inside_on_data(void **state)
{
	struct fix *f = *state;
	struct hose h;
	hose_start(f, &h, "/firehose", 0);
	h.pause_at_call = 1;
	run_until(f->loop, &h.calls);
	run_for(f->loop, 0.4); /* four stall timeouts long */
	assert_int_equal(h.calls, 1);
	assert_int_equal(h.r.done, 0);
	long sent = atomic_load(&f->srv->fire_sent);
	assert_true(sent < FIREHOSE_LEN); /* the server is held back, the connection open */
	assert_int_equal(f->srv->hang_closed, 0);
	http_client_pause(f->client, h.r.id, false);
	assert_int_equal(h.calls, 1); /* a resume never delivers inside the call */
	run_until(f->loop, &h.r.done);
	assert_int_equal(h.r.error, HTTP_OK);
	assert_int_equal(h.r.status, 200);
	assert_int_equal(h.got, FIREHOSE_LEN);
	assert_int_equal(h.bad, 0);
	assert_int_equal(h.r.attempts, 1);
	result_free(&h.r);
}

static void test_pause_before_any_data(void **state)
{
	struct fix *f = *state;
	struct hose h;
	hose_start(f, &h, "/firehose", 0);
	http_client_pause(f->client, h.r.id, true); /* not even connected yet */
	run_for(f->loop, 0.3);
	assert_int_equal(h.calls, 0);
	assert_int_equal(h.r.done, 0);
	assert_true(atomic_load(&f->srv->fire_sent) < FIREHOSE_LEN);
	http_client_pause(f->client, h.r.id, false);
	run_until(f->loop, &h.r.done);
	assert_int_equal(h.r.error, HTTP_OK);
	assert_int_equal(h.got, FIREHOSE_LEN);
	assert_int_equal(h.bad, 0);
	result_free(&h.r);
}

static void test_pause_resume_many_times(void **state)
{
	struct fix *f = *state;
	struct hose h;
	hose_start(f, &h, "/firehose", 4096);
	h.pause_every = 7;
	run_until(f->loop, &h.r.done);
	assert_int_equal(h.r.error, HTTP_OK);
	assert_int_equal(h.got, FIREHOSE_LEN);
	assert_int_equal(h.bad, 0); /* nothing lost, repeated or reordered */
	assert_true(h.pauses > 100);
	/* Bytes curl held across a pause may come back joined (seen under load),
	 * never more than a few receive buffers. */
	assert_true(h.max_chunk <= 4 * 4096);
	ev_timer_stop(f->loop, &h.resume);
	result_free(&h.r);
}

static void test_cancel_while_paused(void **state)
{
	struct fix *f = *state;
	struct hose h;
	hose_start(f, &h, "/firehose", 0);
	h.pause_at_call = 1;
	run_until(f->loop, &h.calls);
	http_client_pause(f->client, h.r.id, false);
	http_client_pause(f->client, h.r.id, true); /* the resume is taken back */
	http_client_cancel(f->client, h.r.id);
	http_client_pause(f->client, h.r.id, false); /* unknown now: ignored */
	run_for(f->loop, 0.2);
	assert_int_equal(h.calls, 1);
	assert_int_equal(h.r.done, 0);
	assert_int_equal(http_client_pending(f->client), 0);
	result_free(&h.r);
}

static void test_recv_buffer(void **state)
{
	struct fix *f = *state;
	struct hose h;
	hose_start(f, &h, "/firehose", 1024);
	run_until(f->loop, &h.r.done);
	assert_int_equal(h.got, FIREHOSE_LEN);
	assert_int_equal(h.bad, 0);
	assert_true(h.max_chunk <= 1024);
	result_free(&h.r);
	hose_start(f, &h, "/firehose", 0);
	run_until(f->loop, &h.r.done);
	assert_int_equal(h.got, FIREHOSE_LEN);
	assert_true(h.max_chunk > 1024); /* curl's default is 16 KiB */
	result_free(&h.r);
	/* Sizes curl would refuse are refused here. */
	struct result r;
	result_init(&r, f);
	struct http_request t = {.recv_buffer = 100};
	assert_int_equal(start_get(f, "/hello", &r, &t), 0);
	t.recv_buffer = HTTP_RECV_BUFFER_MAX + 1;
	assert_int_equal(start_get(f, "/hello", &r, &t), 0);
	result_free(&r);
}

/* Connections: reused for the next request unless no_reuse says otherwise;
 * idle ones beyond HTTP_IDLE_CONNECTIONS_MAX are closed. */
static void test_connection_reuse_and_idle_cap(void **state)
{
	struct fix *f = *state;
	struct result r;
	for (int i = 0; i < 3; i++) {
		result_init(&r, f);
		start_get(f, "/hello", &r, NULL);
		run_until(f->loop, &r.done);
		assert_int_equal(r.status, 200);
		result_free(&r);
	}
	assert_int_equal(atomic_load(&f->srv->accepted), 1); /* one kept-alive connection */
	struct http_request once = {.no_reuse = true};
	for (int i = 0; i < 3; i++) {
		result_init(&r, f);
		start_get(f, "/hello", &r, &once);
		run_until(f->loop, &r.done);
		assert_int_equal(r.status, 200);
		result_free(&r);
	}
	/* The kept connection served the first; each later one was new and closed. */
	assert_int_equal(atomic_load(&f->srv->accepted), 3);
	run_until_atomic(f->loop, &f->srv->accepted, 3);
	for (int i = 0; i < 100 && atomic_load(&f->srv->open_conns) > 0; i++)
		run_for(f->loop, 0.01);
	assert_int_equal(atomic_load(&f->srv->open_conns), 0);

	/* 20 at once need 20 connections; afterwards at most the cap stays open. */
	enum { N = 20 };
	f->srv->barrier_target = N;
	struct result rs[N];
	int finished = 0;
	for (int i = 0; i < N; i++) {
		result_init(&rs[i], f);
		start_get(f, "/barrier", &rs[i], NULL);
	}
	while (finished < N) {
		ev_run(f->loop, EVRUN_ONCE);
		finished = 0;
		for (int i = 0; i < N; i++)
			finished += rs[i].done;
	}
	for (int i = 0; i < N; i++) {
		assert_int_equal(rs[i].status, 200);
		result_free(&rs[i]);
	}
	assert_int_equal(atomic_load(&f->srv->accepted), 3 + N);
	for (int i = 0; i < 100 && atomic_load(&f->srv->open_conns) > HTTP_IDLE_CONNECTIONS_MAX; i++)
		run_for(f->loop, 0.01);
	assert_int_equal(atomic_load(&f->srv->open_conns), HTTP_IDLE_CONNECTIONS_MAX);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_plain_200),
		T(test_chunked_body),
		T(test_stream_chunks),
		T(test_stream_stall_timeout),
		T(test_stream_aborted_by_on_data),
		T(test_404_buffered_while_streaming),
		T(test_body_over_max_body),
		T(test_connection_refused),
		T(test_closed_mid_body),
		T(test_timeout),
		T(test_retry_503_then_200),
		T(test_retry_gives_up_at_max_attempts),
		T(test_retry_post_resends_body),
		T(test_retry_after_seconds),
		T(test_retry_after_date_capped),
		T(test_custom_should_retry_and_cancel_in_backoff),
		T(test_prepare_failure),
		T(test_cancel_before_completion),
		T(test_cancel_inside_on_data),
		T(test_free_with_requests_in_flight),
		T(test_free_inside_on_done),
		T(test_post_body),
		T(test_put_body_file),
		T(test_response_headers),
		T(test_response_headers_cap),
		T(test_unix_socket),
		T(test_tls_to_plain_server),
		T(test_many_concurrent),
		T(test_bad_requests_rejected),
		T(test_pause_inside_on_data),
		T(test_pause_before_any_data),
		T(test_pause_resume_many_times),
		T(test_cancel_while_paused),
		T(test_recv_buffer),
		T(test_connection_reuse_and_idle_cap),
		cmocka_unit_test(test_url_encode),
		cmocka_unit_test(test_default_should_retry),
	};
	return cmocka_run_group_tests_name("http_client", tests, NULL, NULL);
}
