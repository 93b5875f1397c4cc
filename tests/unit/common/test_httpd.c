/*
 * httpd over real sockets on 127.0.0.1 (port 0) and a unix socket. Normal
 * requests come from common/http_client on the same loop; malformed, slow or
 * pipelined input comes from raw client sockets read through an ev_io on that
 * loop too, so no test needs a thread or a sleep. Raw answers are parsed with
 * http-parser (HTTP_RESPONSE), the same library the server uses.
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "buf.h"
#include "clock.h"
#include "crypto.h"
#include "gzip.h"
#include "http_client.h"
#include "httpd.h"

#define RAW_MAX ((size_t)64 << 20)

struct fix {
	struct ev_loop *loop;
	struct http_client *client;
	struct httpd *srv;
	char dir[64];
	int port;
	/* what the handlers saw */
	int handled;
	int headers_seen;
	int aborts;
	int abort_respond_rc;
	struct httpd_req *held;
	char last_path[256];
	/* /upload */
	char upload_path[256];
	size_t upload_len;
	char upload_sha[65];
	int upload_in_file;
	/* /hdr */
	int add_bad_crlf, add_reserved, add_bad_name, add_good;
	char seen_header[128];
	/* /flood */
	struct httpd_req *flood;
	ev_idle pump;
	size_t flood_queued, flood_total;
	int flood_refused, flood_drains, flood_ended;
	size_t flood_chunk;
};

/* ---- running the loop ---- */

static int guard_fired;

static void on_guard(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)w;
	(void)revents;
	guard_fired = 1;
}

static void run_until_count(struct fix *f, const int *flag, int want, double limit_s)
{
	ev_timer guard;
	ev_timer_init(&guard, on_guard, limit_s, 0.0);
	ev_timer_start(f->loop, &guard);
	guard_fired = 0;
	while (*flag < want && !guard_fired)
		ev_run(f->loop, EVRUN_ONCE);
	ev_timer_stop(f->loop, &guard);
	assert_false(guard_fired);
}

static void run_until(struct fix *f, const int *flag)
{
	run_until_count(f, flag, 1, 15.0);
}

/* Runs the loop while `cond` holds, failing the test after 15 s. */
#define RUN_WHILE(f, cond)                                                     \
	do {                                                                   \
		ev_timer guard_;                                               \
		ev_timer_init(&guard_, on_guard, 15.0, 0.0);                   \
		ev_timer_start((f)->loop, &guard_);                            \
		guard_fired = 0;                                               \
		while ((cond) && !guard_fired)                                 \
			ev_run((f)->loop, EVRUN_ONCE);                         \
		ev_timer_stop((f)->loop, &guard_);                             \
		assert_false(guard_fired);                                     \
	} while (0)

/* Lets the loop run for `s` seconds: only to show that nothing (more) happens. */
static void run_for(struct fix *f, double s)
{
	ev_timer guard;
	ev_timer_init(&guard, on_guard, s, 0.0);
	ev_timer_start(f->loop, &guard);
	guard_fired = 0;
	while (!guard_fired)
		ev_run(f->loop, EVRUN_ONCE);
}

/* A few non-blocking turns: lets the server take in what a raw client sent. */
static void spin(struct fix *f)
{
	for (int i = 0; i < 5; i++)
		ev_run(f->loop, EVRUN_NOWAIT);
}

/* ---- raw clients ---- */

struct raw {
	struct fix *f;
	int fd;
	ev_io io;
	struct buf got;
	int eof;
	int reset;
};

static void on_raw(struct ev_loop *loop, ev_io *w, int revents)
{
	(void)revents;
	struct raw *rc = w->data;
	char tmp[65536];
	for (;;) {
		ssize_t n = recv(rc->fd, tmp, sizeof tmp, MSG_DONTWAIT);
		if (n > 0) {
			assert_int_equal(buf_append(&rc->got, tmp, (size_t)n), 0);
			continue;
		}
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		if (n < 0)
			rc->reset = 1;
		rc->eof = 1;
		ev_io_stop(loop, w);
		return;
	}
}

static void raw_start_reading(struct raw *rc)
{
	ev_io_start(rc->f->loop, &rc->io);
}

static void raw_stop_reading(struct raw *rc)
{
	ev_io_stop(rc->f->loop, &rc->io);
}

static void raw_attach(struct fix *f, struct raw *rc, int fd)
{
	memset(rc, 0, sizeof *rc);
	rc->f = f;
	rc->fd = fd;
	buf_init(&rc->got, RAW_MAX);
	ev_io_init(&rc->io, on_raw, fd, EV_READ);
	rc->io.data = rc;
	raw_start_reading(rc);
}

static void raw_open(struct fix *f, struct raw *rc)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)f->port)};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
	raw_attach(f, rc, fd);
}

static void raw_send(struct raw *rc, const void *data, size_t len)
{
	const char *p = data;
	while (len > 0) {
		ssize_t n = send(rc->fd, p, len, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		assert_true(n > 0);
		p += n;
		len -= (size_t)n;
	}
}

static void raw_sends(struct raw *rc, const char *s)
{
	raw_send(rc, s, strlen(s));
}

static void raw_close(struct raw *rc)
{
	ev_io_stop(rc->f->loop, &rc->io);
	if (rc->fd >= 0)
		close(rc->fd);
	rc->fd = -1;
	buf_free(&rc->got);
}

static void raw_wait_eof(struct raw *rc)
{
	run_until(rc->f, &rc->eof);
}

/* ---- parsing raw answers ---- */

struct presp {
	int status;
	struct buf headers; /* "name: value\n" lines, as received */
	struct buf body;
	int complete;
};

struct pstate {
	struct presp *out;
	int max, count;
	int skip_body;        /* answers to HEAD */
	int last_was_value;
};

static int pr_begin(http_parser *p)
{
	struct pstate *ps = p->data;
	if (ps->count >= ps->max)
		return -1;
	struct presp *r = &ps->out[ps->count++];
	memset(r, 0, sizeof *r);
	buf_init(&r->headers, 1 << 20);
	buf_init(&r->body, RAW_MAX);
	ps->last_was_value = 0;
	return 0;
}

static int pr_field(http_parser *p, const char *at, size_t len)
{
	struct pstate *ps = p->data;
	struct presp *r = &ps->out[ps->count - 1];
	if (ps->last_was_value)
		buf_append_byte(&r->headers, '\n');
	ps->last_was_value = 0;
	buf_append(&r->headers, at, len);
	return 0;
}

static int pr_value(http_parser *p, const char *at, size_t len)
{
	struct pstate *ps = p->data;
	struct presp *r = &ps->out[ps->count - 1];
	if (!ps->last_was_value)
		buf_append_str(&r->headers, ": ");
	ps->last_was_value = 1;
	buf_append(&r->headers, at, len);
	return 0;
}

static int pr_headers_complete(http_parser *p)
{
	struct pstate *ps = p->data;
	struct presp *r = &ps->out[ps->count - 1];
	r->status = (int)p->status_code;
	buf_append_byte(&r->headers, '\n');
	return ps->skip_body ? 1 : 0;
}

static int pr_body(http_parser *p, const char *at, size_t len)
{
	struct pstate *ps = p->data;
	buf_append(&ps->out[ps->count - 1].body, at, len);
	return 0;
}

static int pr_complete(http_parser *p)
{
	struct pstate *ps = p->data;
	ps->out[ps->count - 1].complete = 1;
	return 0;
}

/* Parses every answer in data[0..len); returns how many started. */
static int parse_answers(const char *data, size_t len, struct presp *out, int max, int eof,
			 int skip_body)
{
	http_parser_settings st;
	http_parser_settings_init(&st);
	st.on_message_begin = pr_begin;
	st.on_header_field = pr_field;
	st.on_header_value = pr_value;
	st.on_headers_complete = pr_headers_complete;
	st.on_body = pr_body;
	st.on_message_complete = pr_complete;
	struct pstate ps = {.out = out, .max = max, .skip_body = skip_body};
	http_parser p;
	http_parser_init(&p, HTTP_RESPONSE);
	p.data = &ps;
	http_parser_execute(&p, &st, data, len);
	if (eof && HTTP_PARSER_ERRNO(&p) == HPE_OK)
		http_parser_execute(&p, &st, NULL, 0); /* ends a body framed by the close */
	return ps.count;
}

static void answers_free(struct presp *a, int n)
{
	for (int i = 0; i < n; i++) {
		buf_free(&a[i].headers);
		buf_free(&a[i].body);
	}
}

/* Runs the loop until rc holds `want` complete answers; returns how many were
 * parsed (the caller frees them). */
static int wait_answers(struct raw *rc, struct presp *a, int max, int want)
{
	ev_timer guard;
	ev_timer_init(&guard, on_guard, 15.0, 0.0);
	ev_timer_start(rc->f->loop, &guard);
	guard_fired = 0;
	for (;;) {
		int n = rc->got.len ? parse_answers(rc->got.data, rc->got.len, a, max, 0, 0) : 0;
		int complete = 0;
		for (int i = 0; i < n; i++)
			complete += a[i].complete;
		if (complete >= want) {
			ev_timer_stop(rc->f->loop, &guard);
			return n;
		}
		answers_free(a, n);
		assert_false(guard_fired);
		assert_false(rc->eof);
		ev_run(rc->f->loop, EVRUN_ONCE);
	}
}

/* Value of header `name` in a parsed answer, or NULL (static storage). */
static const char *ans_header(const struct presp *a, const char *name)
{
	static char value[512];
	const char *line = a->headers.data ? a->headers.data : "";
	size_t nlen = strlen(name);
	while (line && *line) {
		const char *end = strchr(line, '\n');
		if (!end)
			break;
		if (strncasecmp(line, name, nlen) == 0 && line[nlen] == ':') {
			snprintf(value, sizeof value, "%.*s", (int)(end - line - nlen - 2),
				 line + nlen + 2);
			return value;
		}
		line = end + 1;
	}
	return NULL;
}

/* ---- http_client calls ---- */

struct result {
	int done;
	enum http_error error;
	long status;
	struct buf body;
	struct buf streamed;
	char ctype[128], connection[64], protocol[16], date[64], x_good[64], x_bad[64];
};

static void result_init(struct result *r)
{
	memset(r, 0, sizeof *r);
	buf_init(&r->body, RAW_MAX);
	buf_init(&r->streamed, RAW_MAX);
}

static void result_free(struct result *r)
{
	buf_free(&r->body);
	buf_free(&r->streamed);
}

static void copy_header(const struct http_response *resp, const char *name, char *out,
			size_t size)
{
	const char *v = http_response_header(resp, name);
	snprintf(out, size, "%s", v ? v : "");
}

static void on_done(const struct http_response *resp, void *arg)
{
	struct result *r = arg;
	r->done++;
	r->error = resp->error;
	r->status = resp->status;
	buf_reset(&r->body);
	buf_append(&r->body, resp->body, resp->body_len);
	copy_header(resp, "Content-Type", r->ctype, sizeof r->ctype);
	copy_header(resp, "Connection", r->connection, sizeof r->connection);
	copy_header(resp, "Slipway-Protocol", r->protocol, sizeof r->protocol);
	copy_header(resp, "Date", r->date, sizeof r->date);
	copy_header(resp, "X-Good", r->x_good, sizeof r->x_good);
	copy_header(resp, "X-Bad", r->x_bad, sizeof r->x_bad);
}

static int on_data(const char *data, size_t len, void *arg)
{
	struct result *r = arg;
	return buf_append(&r->streamed, data, len);
}

struct call {
	const char *method;
	const char *path;
	const void *body;
	size_t body_len;
	const char *const *headers;
	int stream;          /* use on_data */
	const char *scheme;  /* NULL = http */
	const char *ca_file;
	const char *unix_socket;
};

static void call(struct fix *f, const struct call *c, struct result *r)
{
	char url[512];
	snprintf(url, sizeof url, "%s://%s:%d%s", c->scheme ? c->scheme : "http",
		 c->unix_socket ? "localhost" : "127.0.0.1", c->unix_socket ? 80 : f->port,
		 c->path);
	struct http_request req = {
		.method = c->method,
		.url = url,
		.unix_socket = c->unix_socket,
		.headers = c->headers,
		.body = c->body,
		.body_len = c->body_len,
		.timeout_ms = 20000,
		.max_body = RAW_MAX,
		.ca_file = c->ca_file,
		.on_data = c->stream ? on_data : NULL,
		.on_done = on_done,
		.arg = r,
	};
	assert_true(http_client_start(f->client, &req) > 0);
	run_until(f, &r->done);
}

static void get(struct fix *f, const char *path, struct result *r)
{
	struct call c = {.path = path};
	call(f, &c, r);
}

/* ---- the server side ---- */

struct later {
	ev_timer timer;
	struct httpd_req *req;
	struct fix *f;
};

static void later_fire(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	struct later *l = w->data;
	assert_int_equal(httpd_respond(l->req, 200, "text/plain", "later", 5), 0);
	free(l);
}

static void later_abort(struct httpd_req *req, void *arg)
{
	(void)req;
	struct later *l = arg;
	ev_timer_stop(l->f->loop, &l->timer);
	l->f->aborts++;
	free(l);
}

static void held_abort(struct httpd_req *req, void *arg)
{
	struct fix *f = arg;
	f->aborts++;
	/* The request is still readable here, but answering it is refused. */
	assert_non_null(req->path);
	f->abort_respond_rc = httpd_respond(req, 200, "text/plain", "late", 4);
	f->held = NULL;
}

static void flood_pump(struct ev_loop *loop, ev_idle *w, int revents)
{
	(void)revents;
	struct fix *f = w->data;
	static char chunk[65536];
	if (!f->flood) {
		ev_idle_stop(loop, w);
		return;
	}
	if (f->flood_queued >= f->flood_total) {
		assert_int_equal(httpd_stream_end(f->flood), 0);
		f->flood = NULL;
		f->flood_ended = 1;
		ev_idle_stop(loop, w);
		return;
	}
	size_t n = f->flood_total - f->flood_queued;
	if (n > f->flood_chunk)
		n = f->flood_chunk;
	memset(chunk, 'a' + (int)(f->flood_queued / f->flood_chunk % 26), n);
	if (httpd_stream_write(f->flood, chunk, n) < 0) {
		f->flood_refused++;
		ev_idle_stop(loop, w); /* until on_drain */
		return;
	}
	f->flood_queued += n;
}

static void flood_drain(struct httpd_req *req, void *arg)
{
	(void)req;
	struct fix *f = arg;
	f->flood_drains++;
	ev_idle_start(f->loop, &f->pump);
}

static void flood_abort(struct httpd_req *req, void *arg)
{
	(void)req;
	struct fix *f = arg;
	f->aborts++;
	f->flood = NULL;
	ev_idle_stop(f->loop, &f->pump);
}

static void sha256_file(const char *path, char out[65])
{
	FILE *fp = fopen(path, "rb");
	assert_non_null(fp);
	struct crypto_sha256_ctx ctx;
	crypto_sha256_init(&ctx);
	char tmp[65536];
	size_t n;
	while ((n = fread(tmp, 1, sizeof tmp, fp)) > 0)
		crypto_sha256_update(&ctx, tmp, n);
	fclose(fp);
	uint8_t d[CRYPTO_SHA256_LEN];
	crypto_sha256_final(&ctx, d);
	crypto_hex(d, sizeof d, out);
}

static size_t query_size(struct httpd_req *req, const char *name, size_t dflt)
{
	char v[32];
	return httpd_req_query_param(req, name, v, sizeof v) == 1 ? strtoul(v, NULL, 10) : dflt;
}

static void handler(struct httpd_req *req, void *arg)
{
	struct fix *f = arg;
	f->handled++;
	snprintf(f->last_path, sizeof f->last_path, "%s", req->path);
	const char *p = req->path;
	if (strcmp(p, "/hello") == 0) {
		assert_int_equal(httpd_respond(req, 200, "text/plain", "ok", 2), 0);
		/* the request stays readable until the loop waits; a second answer is refused */
		assert_string_equal(req->path, "/hello");
		assert_int_equal(httpd_respond(req, 200, "text/plain", "again", 5), -1);
	} else if (strcmp(p, "/echo") == 0) {
		char len[32];
		snprintf(len, sizeof len, "%zu", req->body_len);
		assert_int_equal(httpd_add_header(req, "X-Body-Len", len), 0);
		assert_int_equal(req->body[req->body_len], '\0');
		const char *ct = httpd_req_header(req, "content-type");
		httpd_respond(req, 200, ct ? ct : "application/octet-stream", req->body,
			      req->body_len);
	} else if (strcmp(p, "/later") == 0) {
		struct later *l = calloc(1, sizeof *l);
		l->req = req;
		l->f = f;
		ev_timer_init(&l->timer, later_fire, query_size(req, "ms", 30) / 1000.0, 0.);
		l->timer.data = l;
		ev_timer_start(f->loop, &l->timer);
		httpd_req_on_abort(req, later_abort, l);
	} else if (strcmp(p, "/defer") == 0) {
		f->held = req;
		httpd_req_on_abort(req, held_abort, f);
	} else if (strcmp(p, "/stream") == 0) {
		size_t n = query_size(req, "n", 10), size = query_size(req, "size", 100);
		char *chunk = malloc(size);
		assert_int_equal(httpd_stream_start(req, 200, "text/plain"), 0);
		assert_int_equal(httpd_respond(req, 200, NULL, NULL, 0), -1); /* streaming */
		for (size_t i = 0; i < n; i++) {
			memset(chunk, 'a' + (int)(i % 26), size);
			assert_int_equal(httpd_stream_write(req, chunk, size), 0);
		}
		free(chunk);
		assert_int_equal(httpd_stream_end(req), 0);
		assert_int_equal(httpd_stream_write(req, "x", 1), -1);
	} else if (strcmp(p, "/flood") == 0) {
		f->flood = req;
		assert_int_equal(httpd_stream_start(req, 200, "application/octet-stream"), 0);
		httpd_stream_on_drain(req, flood_drain, f);
		httpd_req_on_abort(req, flood_abort, f);
		ev_idle_start(f->loop, &f->pump);
	} else if (strcmp(p, "/upload") == 0) {
		f->upload_in_file = req->body_file != NULL;
		f->upload_len = req->body_len;
		if (req->body_file) {
			snprintf(f->upload_path, sizeof f->upload_path, "%s", req->body_file);
			sha256_file(req->body_file, f->upload_sha);
		}
		assert_string_equal(req->body, "");
		httpd_respond(req, 200, "text/plain", f->upload_sha, strlen(f->upload_sha));
	} else if (strcmp(p, "/query") == 0) {
		char a[64], b[64], out[256];
		int ra = httpd_req_query_param(req, "a", a, sizeof a);
		int rb = httpd_req_query_param(req, "b", b, sizeof b);
		int rm = httpd_req_query_param(req, "missing", out, sizeof out);
		snprintf(out, sizeof out, "%d:%s|%d:%s|%d", ra, a, rb, b, rm);
		httpd_respond(req, 200, "text/plain", out, strlen(out));
	} else if (strcmp(p, "/hdr") == 0) {
		const char *v = httpd_req_header(req, "x-TEST");
		snprintf(f->seen_header, sizeof f->seen_header, "%s", v ? v : "(none)");
		f->add_bad_crlf = httpd_add_header(req, "X-Bad", "a\r\nSet-Cookie: x=1");
		f->add_reserved = httpd_add_header(req, "content-length", "5");
		f->add_bad_name = httpd_add_header(req, "Bad Name", "v");
		f->add_good = httpd_add_header(req, "X-Good", "yes");
		httpd_respond(req, 200, "text/plain", "hdr", 3);
	} else if (strcmp(p, "/json") == 0) {
		cJSON *j = cJSON_CreateObject();
		cJSON_AddBoolToObject(j, "ok", 1);
		httpd_respond_json(req, 201, j);
		cJSON_Delete(j);
	} else if (strcmp(p, "/keep") == 0) {
		char *path = httpd_req_take_body_file(req);
		assert_non_null(path);
		assert_null(httpd_req_take_body_file(req)); /* once */
		snprintf(f->upload_path, sizeof f->upload_path, "%s", path);
		free(path);
		httpd_respond(req, 200, "text/plain", "kept", 4);
	} else if (strcmp(p, "/empty") == 0) {
		httpd_respond(req, 204, NULL, NULL, 0);
	} else {
		httpd_respond_error(req, 404, "not_found", "no such path");
	}
}

static void on_headers(struct httpd_req *req, void *arg)
{
	struct fix *f = arg;
	f->headers_seen++;
	if (strcmp(req->path, "/small") == 0) {
		httpd_req_set_body_max(req, 1000);
	} else if (strcmp(req->path, "/nobody") == 0) {
		httpd_req_set_body_max(req, 0);
	} else if (strcmp(req->path, "/upload") == 0 || strcmp(req->path, "/keep") == 0) {
		struct err e;
		httpd_req_set_body_max(req, (size_t)64 << 20);
		assert_int_equal(httpd_req_body_to_file(req, f->dir, &e), 0);
	} else if (strcmp(req->path, "/early") == 0) {
		assert_int_equal(httpd_respond_error(req, 401, "unauthorized", "no token"), 0);
	}
}

static const char *const default_headers[] = {"Slipway-Protocol: 1", NULL};

static void default_cfg(struct fix *f, struct httpd_config *cfg)
{
	memset(cfg, 0, sizeof *cfg);
	cfg->listen = "127.0.0.1:0";
	cfg->handler = handler;
	cfg->on_headers = on_headers;
	cfg->arg = f;
	cfg->default_headers = default_headers;
}

static void start_with(struct fix *f, const struct httpd_config *cfg)
{
	struct err e = {{0}};
	f->srv = httpd_new(f->loop, cfg, &e);
	if (!f->srv)
		fail_msg("httpd_new: %s", e.msg);
	f->port = httpd_port(f->srv);
}

static void start(struct fix *f)
{
	struct httpd_config cfg;
	default_cfg(f, &cfg);
	start_with(f, &cfg);
	assert_true(f->port > 0);
}

static int setup(void **state)
{
	struct fix *f = calloc(1, sizeof *f);
	f->loop = ev_loop_new(EVFLAG_AUTO);
	f->client = http_client_new(f->loop);
	snprintf(f->dir, sizeof f->dir, "/tmp/httpd-test-XXXXXX");
	if (!mkdtemp(f->dir))
		return -1;
	ev_idle_init(&f->pump, flood_pump);
	f->pump.data = f;
	f->flood_chunk = 65536;
	*state = f;
	return f->loop && f->client ? 0 : -1;
}

static int teardown(void **state)
{
	struct fix *f = *state;
	ev_idle_stop(f->loop, &f->pump);
	httpd_free(f->srv);
	http_client_free(f->client);
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
	if (system(cmd) != 0)
		return -1;
	ev_loop_destroy(f->loop);
	free(f);
	return 0;
}

/* ------------------------------------------------------------------ */
/* tests                                                               */

/* Sends `req` on a fresh raw connection and waits for the server to close it. */
static int raw_exchange(struct fix *f, const char *req, struct presp *a, int max)
{
	struct raw rc;
	raw_open(f, &rc);
	raw_sends(&rc, req);
	raw_wait_eof(&rc);
	int n = parse_answers(rc.got.data, rc.got.len, a, max, 1, 0);
	raw_close(&rc);
	return n;
}

/* The protocol's error body with the given code. */
static void assert_error_body(const struct presp *a, int status, const char *code)
{
	assert_int_equal(a->status, status);
	assert_non_null(a->body.data);
	cJSON *j = cJSON_Parse(a->body.data);
	assert_non_null(j);
	cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
	assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "code")), code);
	assert_true(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(e, "message")));
	cJSON_Delete(j);
	const char *ct = ans_header(a, "Content-Type");
	assert_non_null(ct);
	assert_string_equal(ct, "application/json");
	assert_string_equal(ans_header(a, "Connection"), "close");
	assert_string_equal(ans_header(a, "Slipway-Protocol"), "1");
}

static void test_get_keepalive_reuse(void **state)
{
	struct fix *f = *state;
	start(f);
	struct result r1, r2;
	result_init(&r1);
	result_init(&r2);
	get(f, "/hello", &r1);
	assert_int_equal(r1.error, HTTP_OK);
	assert_int_equal(r1.status, 200);
	assert_string_equal(r1.body.data, "ok");
	assert_string_equal(r1.ctype, "text/plain");
	assert_string_equal(r1.protocol, "1");
	assert_true(strlen(r1.date) == 29 && strcmp(r1.date + 25, " GMT") == 0);
	assert_int_equal(httpd_connection_count(f->srv), 1);
	get(f, "/json", &r2);
	assert_int_equal(r2.status, 201);
	assert_string_equal(r2.body.data, "{\"ok\":true}");
	assert_string_equal(r2.ctype, "application/json");
	/* the second request reused the first connection */
	assert_int_equal(httpd_connection_count(f->srv), 1);
	assert_int_equal(f->handled, 2);
	assert_int_equal(httpd_request_count(f->srv), 0);
	result_free(&r1);
	result_free(&r2);
}

static void test_http10_and_connection_close(void **state)
{
	struct fix *f = *state;
	start(f);
	struct presp a[4];
	/* HTTP/1.0 without keep-alive: answer, then close */
	int n = raw_exchange(f, "GET /hello HTTP/1.0\r\n\r\n", a, 4);
	assert_int_equal(n, 1);
	assert_int_equal(a[0].status, 200);
	assert_string_equal(a[0].body.data, "ok");
	assert_string_equal(ans_header(&a[0], "Connection"), "close");
	answers_free(a, n);
	/* HTTP/1.1 with Connection: close */
	n = raw_exchange(f, "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", a, 4);
	assert_int_equal(n, 1);
	assert_string_equal(ans_header(&a[0], "Connection"), "close");
	answers_free(a, n);
	/* HTTP/1.0 with keep-alive: the connection stays for a second request */
	struct raw rc;
	raw_open(f, &rc);
	raw_sends(&rc, "GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
	n = wait_answers(&rc, a, 4, 1);
	assert_int_equal(n, 1);
	assert_string_equal(ans_header(&a[0], "Connection"), "keep-alive");
	assert_string_equal(ans_header(&a[0], "Content-Length"), "2");
	answers_free(a, n);
	raw_sends(&rc, "GET /json HTTP/1.0\r\n\r\n");
	raw_wait_eof(&rc);
	n = parse_answers(rc.got.data, rc.got.len, a, 4, 1, 0);
	assert_int_equal(n, 2);
	assert_int_equal(a[1].status, 201);
	assert_string_equal(ans_header(&a[1], "Connection"), "close");
	answers_free(a, n);
	raw_close(&rc);
}

static void test_pipelining_in_order(void **state)
{
	struct fix *f = *state;
	start(f);
	struct raw rc;
	raw_open(f, &rc);
	/* The first answer comes 50 ms late; the others must wait behind it. */
	raw_sends(&rc, "GET /later?ms=50 HTTP/1.1\r\nHost: x\r\n\r\n"
		       "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
		       "HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\n"
		       "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
	raw_wait_eof(&rc);
	/* The HEAD answer has no body: parse the part before it, then the rest. */
	const char *head_at = strstr(rc.got.data, "HTTP/1.1 200 OK\r\nDate");
	assert_non_null(head_at);
	struct presp a[4];
	int n = parse_answers(rc.got.data, rc.got.len, a, 4, 1, 0);
	assert_true(n >= 2);
	assert_string_equal(a[0].body.data, "later");
	assert_string_equal(a[1].body.data, "abc");
	assert_string_equal(ans_header(&a[1], "X-Body-Len"), "3");
	answers_free(a, n);
	/* third answer: HEAD, Content-Length of the body it does not carry */
	const char *third = strstr(rc.got.data, "abcHTTP/1.1 ");
	assert_non_null(third);
	third += 3;
	n = parse_answers(third, rc.got.len - (size_t)(third - rc.got.data), a, 1, 0, 1);
	assert_int_equal(n, 1);
	assert_string_equal(ans_header(&a[0], "Content-Length"), "2");
	answers_free(a, n);
	const char *fourth = strstr(third, "\r\n\r\n");
	assert_non_null(fourth);
	fourth += 4;
	n = parse_answers(fourth, strlen(fourth), a, 2, 1, 0);
	assert_int_equal(n, 1);
	assert_string_equal(a[0].body.data, "ok");
	assert_string_equal(ans_header(&a[0], "Connection"), "close");
	answers_free(a, n);
	assert_int_equal(f->handled, 4);
	raw_close(&rc);
}

static void test_chunked_request_body(void **state)
{
	struct fix *f = *state;
	start(f);
	struct raw rc;
	raw_open(f, &rc);
	/* in pieces, with a chunk extension and a trailer */
	raw_sends(&rc, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
		       "Content-Type: text/plain\r\n\r\n5;ext=1\r\nhel");
	spin(f);
	raw_sends(&rc, "lo\r\n");
	spin(f);
	raw_sends(&rc, "6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n");
	struct presp a[2];
	int n = wait_answers(&rc, a, 2, 1);
	assert_int_equal(n, 1);
	assert_int_equal(a[0].status, 200);
	assert_string_equal(a[0].body.data, "hello world");
	assert_string_equal(ans_header(&a[0], "Content-Type"), "text/plain");
	assert_null(ans_header(&a[0], "Connection")); /* kept alive */
	answers_free(a, n);
	raw_close(&rc);
}

static void test_413_by_content_length(void **state)
{
	struct fix *f = *state;
	start(f);
	struct presp a[2];
	/* refused from the header alone: the body is never sent */
	int n = raw_exchange(f, "POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n",
			     a, 2);
	assert_int_equal(n, 1);
	assert_error_body(&a[0], 413, "too_large");
	answers_free(a, n);
	n = raw_exchange(f, "POST /nobody HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx", a, 2);
	assert_int_equal(n, 1);
	assert_int_equal(a[0].status, 413);
	answers_free(a, n);
	/* the default cap (1 MiB) applies without on_headers */
	n = raw_exchange(f, "PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1048577\r\n\r\n", a, 2);
	assert_int_equal(n, 1);
	assert_int_equal(a[0].status, 413);
	answers_free(a, n);
	assert_int_equal(f->handled, 0);
	assert_int_equal(f->headers_seen, 3);
}

static void test_413_by_chunked_overflow(void **state)
{
	struct fix *f = *state;
	start(f);
	char body[600];
	memset(body, 'z', sizeof body);
	struct raw rc;
	raw_open(f, &rc);
	raw_sends(&rc, "POST /small HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
	raw_sends(&rc, "258\r\n"); /* 600 */
	raw_send(&rc, body, sizeof body);
	raw_sends(&rc, "\r\n");
	spin(f);
	assert_int_equal(rc.got.len, 0); /* 600 of 1000: still reading */
	raw_sends(&rc, "258\r\n"); /* refused at the chunk header, before its data */
	raw_wait_eof(&rc);
	struct presp a[2];
	int n = parse_answers(rc.got.data, rc.got.len, a, 2, 1, 0);
	assert_int_equal(n, 1);
	assert_error_body(&a[0], 413, "too_large");
	answers_free(a, n);
	raw_close(&rc);
	assert_int_equal(f->handled, 0);
}

static void test_431_and_414(void **state)
{
	struct fix *f = *state;
	start(f);
	size_t big = 20000;
	char *req = malloc(64 << 10);
	int off = snprintf(req, 256, "GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: ");
	memset(req + off, 'b', big);
	strcpy(req + off + big, "\r\n\r\n");
	struct presp a[2];
	int n = raw_exchange(f, req, a, 2);
	assert_int_equal(n, 1);
	assert_error_body(&a[0], 431, "too_large");
	answers_free(a, n);
	/* many small headers count the same */
	off = snprintf(req, 256, "GET /hello HTTP/1.1\r\nHost: x\r\n");
	for (int i = 0; i < 2000; i++)
		off += snprintf(req + off, 32, "X-%d: v\r\n", i);
	strcpy(req + off, "\r\n");
	n = raw_exchange(f, req, a, 2);
	assert_int_equal(n, 1);
	assert_int_equal(a[0].status, 431);
	answers_free(a, n);
	/* the cap counts the request line too: 8000-byte URL + 8500 bytes of headers */
	off = snprintf(req, 256, "GET /");
	memset(req + off, 'u', 8000);
	off += 8000;
	off += snprintf(req + off, 256, " HTTP/1.1\r\nHost: x\r\nX-Big: ");
	memset(req + off, 'h', 8500);
	strcpy(req + off + 8500, "\r\n\r\n");
	n = raw_exchange(f, req, a, 2);
	assert_int_equal(n, 1);
	assert_int_equal(a[0].status, 431);
	answers_free(a, n);
	/* URL over 8 KiB */
	off = snprintf(req, 256, "GET /");
	memset(req + off, 'u', 9000);
	strcpy(req + off + 9000, " HTTP/1.1\r\nHost: x\r\n\r\n");
	n = raw_exchange(f, req, a, 2);
	assert_int_equal(n, 1);
	assert_error_body(&a[0], 414, "too_large");
	answers_free(a, n);
	free(req);
	assert_int_equal(f->handled, 0);
}

static void test_request_smuggling_refused(void **state)
{
	struct fix *f = *state;
	start(f);
	static const char *const cases[] = {
		"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
		"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
		"Content-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
		"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
		"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc",
		"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
		"3\r\nabc\r\n0\r\n\r\n",
		"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
		"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"
		"3\r\nabc\r\n0\r\n\r\n",
		"GET /hello HTTP/1.1\r\nHost: x\r\nX-Folded: one\r\n two\r\n\r\n",
		"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nX-A: a\r\n\tb\r\n\r\nabc",
		"GET /hello HTTP/1.1\r\n\r\n",
		"GET /hello HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
		"GET /hello HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
		"GET /hello HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n",
		"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n"
		"3\r\nabc\r\n0\r\n\r\n",
		"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length : 3\r\n\r\nabc",
		"GET /he\x01llo HTTP/1.1\r\nHost: x\r\n\r\n",
		"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct presp a[2];
		int n = raw_exchange(f, cases[i], a, 2);
		if (n != 1 || a[0].status != 400)
			fail_msg("case %zu: %d answers, status %d", i, n, n ? a[0].status : 0);
		assert_error_body(&a[0], 400, "bad_request");
		answers_free(a, n);
	}
	assert_int_equal(f->handled, 0);
	/* A folded line split across reads is caught as well. */
	struct raw rc;
	raw_open(f, &rc);
	const char *req = "GET /hello HTTP/1.1\r\nHost: x\r\nX-F: one\r\n two\r\n\r\n";
	for (const char *p = req; *p; p++) {
		raw_send(&rc, p, 1);
		spin(f);
	}
	raw_wait_eof(&rc);
	assert_memory_equal(rc.got.data, "HTTP/1.1 400 ", 13);
	raw_close(&rc);
	/* ...while a value split across reads without folding is fine. */
	raw_open(f, &rc);
	req = "GET /hdr HTTP/1.1\r\nHost: x\r\nX-Test: one two\r\nConnection: close\r\n\r\n";
	for (const char *p = req; *p; p++) {
		raw_send(&rc, p, 1);
		spin(f);
	}
	raw_wait_eof(&rc);
	assert_memory_equal(rc.got.data, "HTTP/1.1 200 ", 13);
	assert_string_equal(f->seen_header, "one two");
	raw_close(&rc);
}

static void test_slow_client_timeouts(void **state)
{
	struct fix *f = *state;
	struct httpd_config cfg;
	default_cfg(f, &cfg);
	cfg.header_timeout_ms = 200;
	cfg.body_timeout_ms = 200;
	cfg.idle_timeout_ms = 300;
	start_with(f, &cfg);
	/* headers that never end: 408 */
	struct raw rc;
	raw_open(f, &rc);
	int64_t t0 = clock_mono_ms();
	raw_sends(&rc, "GET /hello HTTP/1.1\r\nHost: x\r\n");
	raw_wait_eof(&rc);
	int64_t took = clock_mono_ms() - t0;
	assert_true(took >= 150 && took < 3000);
	struct presp a[2];
	int n = parse_answers(rc.got.data, rc.got.len, a, 2, 1, 0);
	assert_int_equal(n, 1);
	assert_error_body(&a[0], 408, "timeout");
	answers_free(a, n);
	raw_close(&rc);
	/* headers trickling in, each byte in time, still count from the first byte */
	raw_open(f, &rc);
	raw_sends(&rc, "GET /hello HTTP/1.1\r\n");
	t0 = clock_mono_ms();
	while (!rc.eof && clock_mono_ms() - t0 < 3000) {
		raw_sends(&rc, "X: y\r\n");
		run_for(f, 0.05);
	}
	assert_true(rc.eof);
	assert_memory_equal(rc.got.data, "HTTP/1.1 408 ", 13);
	raw_close(&rc);
	/* a body that stops: 408 after the body timeout */
	raw_open(f, &rc);
	raw_sends(&rc, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc");
	raw_wait_eof(&rc);
	assert_memory_equal(rc.got.data, "HTTP/1.1 408 ", 13);
	raw_close(&rc);
	/* a connection that never sends a byte is closed without an answer */
	raw_open(f, &rc);
	raw_wait_eof(&rc);
	assert_int_equal(rc.got.len, 0);
	raw_close(&rc);
	/* an idle keep-alive connection is closed after the idle timeout */
	raw_open(f, &rc);
	raw_sends(&rc, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
	t0 = clock_mono_ms();
	raw_wait_eof(&rc);
	took = clock_mono_ms() - t0;
	assert_true(took >= 250);
	n = parse_answers(rc.got.data, rc.got.len, a, 2, 1, 0);
	assert_int_equal(n, 1);
	assert_int_equal(a[0].status, 200);
	answers_free(a, n);
	raw_close(&rc);
	assert_int_equal(f->handled, 1);
	assert_int_equal(f->aborts, 0);
	assert_int_equal(httpd_connection_count(f->srv), 0);
}

static void test_deferred_response(void **state)
{
	struct fix *f = *state;
	start(f);
	struct result r;
	result_init(&r);
	get(f, "/later?ms=100", &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(r.body.data, "later");
	assert_int_equal(f->aborts, 0);
	/* a held request counts until answered, with no read timeout meanwhile */
	struct raw rc;
	raw_open(f, &rc);
	raw_sends(&rc, "GET /defer HTTP/1.1\r\nHost: x\r\n\r\n");
	RUN_WHILE(f, !f->held);
	assert_int_equal(httpd_request_count(f->srv), 1);
	assert_int_equal(httpd_respond(f->held, 202, "text/plain", "done", 4), 0);
	f->held = NULL;
	RUN_WHILE(f, rc.got.len < 10);
	assert_memory_equal(rc.got.data, "HTTP/1.1 202 Accepted", 21);
	assert_int_equal(httpd_request_count(f->srv), 0);
	raw_close(&rc);
	result_free(&r);
}

static void test_disconnect_during_deferred_aborts_once(void **state)
{
	struct fix *f = *state;
	start(f);
	struct raw rc;
	raw_open(f, &rc);
	/* a pipelined request behind the held one, never to be parsed */
	raw_sends(&rc, "GET /defer HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
	RUN_WHILE(f, !f->held);
	f->abort_respond_rc = 0;
	raw_close(&rc);
	run_until(f, &f->aborts);
	assert_int_equal(f->aborts, 1);
	assert_int_equal(f->abort_respond_rc, -1);
	assert_null(f->held);
	run_for(f, 0.1);
	assert_int_equal(f->aborts, 1);
	assert_int_equal(f->handled, 1);
	assert_int_equal(httpd_request_count(f->srv), 0);
	assert_int_equal(httpd_connection_count(f->srv), 0);
	/* a half-close counts as gone too */
	raw_open(f, &rc);
	raw_sends(&rc, "GET /defer HTTP/1.1\r\nHost: x\r\n\r\n");
	RUN_WHILE(f, !f->held);
	shutdown(rc.fd, SHUT_WR);
	run_until_count(f, &f->aborts, 2, 15.0);
	raw_wait_eof(&rc);
	assert_int_equal(rc.got.len, 0);
	raw_close(&rc);
}

static void test_streamed_response(void **state)
{
	struct fix *f = *state;
	start(f);
	struct result r;
	result_init(&r);
	struct call c = {.path = "/stream?n=50&size=1000", .stream = 1};
	call(f, &c, &r);
	assert_int_equal(r.error, HTTP_OK);
	assert_int_equal(r.status, 200);
	assert_int_equal(r.streamed.len, 50000);
	for (size_t i = 0; i < 50; i++)
		for (size_t j = 0; j < 1000; j += 250)
			assert_int_equal(r.streamed.data[i * 1000 + j], 'a' + (int)(i % 26));
	result_free(&r);
	/* chunked on the wire for HTTP/1.1 */
	struct presp a[2];
	int n = raw_exchange(f, "GET /stream?n=3&size=5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
			     a, 2);
	assert_int_equal(n, 1);
	assert_string_equal(ans_header(&a[0], "Transfer-Encoding"), "chunked");
	assert_null(ans_header(&a[0], "Content-Length"));
	assert_string_equal(a[0].body.data, "aaaaabbbbbccccc");
	assert_true(a[0].complete);
	answers_free(a, n);
	/* HTTP/1.0: no chunks, the close ends the body */
	n = raw_exchange(f, "GET /stream?n=2&size=3 HTTP/1.0\r\n\r\n", a, 2);
	assert_int_equal(n, 1);
	assert_null(ans_header(&a[0], "Transfer-Encoding"));
	assert_string_equal(ans_header(&a[0], "Connection"), "close");
	assert_string_equal(a[0].body.data, "aaabbb");
	answers_free(a, n);
}

/* Decodes the chunked body of the one answer in rc->got. */
static size_t flood_body_len(struct raw *rc, int *complete)
{
	struct presp a[1];
	int n = parse_answers(rc->got.data, rc->got.len, a, 1, 1, 0);
	assert_int_equal(n, 1);
	size_t len = a[0].body.len;
	*complete = a[0].complete;
	answers_free(a, n);
	return len;
}

static void test_slow_reader_hits_stream_cap(void **state)
{
	struct fix *f = *state;
	struct httpd_config cfg;
	default_cfg(f, &cfg);
	cfg.stream_max_pending = 256 << 10;
	start_with(f, &cfg);
	f->flood_total = (size_t)24 << 20; /* more than the socket buffers hold */
	struct raw rc;
	raw_open(f, &rc);
	raw_stop_reading(&rc);
	raw_sends(&rc, "GET /flood HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
	run_until(f, &f->flood_refused);
	/* refused once the unsent output passed the cap, not before */
	size_t at_refusal = f->flood_queued;
	assert_true(at_refusal >= cfg.stream_max_pending);
	assert_true(at_refusal < f->flood_total);
	run_for(f, 0.1);
	assert_int_equal(f->flood_queued, at_refusal); /* waits for on_drain */
	assert_int_equal(f->flood_drains, 0);
	raw_start_reading(&rc);
	raw_wait_eof(&rc);
	assert_true(f->flood_drains >= 1);
	assert_true(f->flood_ended);
	int complete;
	assert_int_equal(flood_body_len(&rc, &complete), f->flood_total);
	assert_true(complete);
	assert_int_equal(f->aborts, 0);
	raw_close(&rc);
}

static void test_write_timeout_aborts_stalled_reader(void **state)
{
	struct fix *f = *state;
	struct httpd_config cfg;
	default_cfg(f, &cfg);
	cfg.stream_max_pending = 64 << 10;
	cfg.write_timeout_ms = 300;
	start_with(f, &cfg);
	f->flood_total = (size_t)256 << 20;
	struct raw rc;
	raw_open(f, &rc);
	int small = 4096;
	setsockopt(rc.fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
	raw_stop_reading(&rc);
	raw_sends(&rc, "GET /flood HTTP/1.1\r\nHost: x\r\n\r\n");
	run_until(f, &f->aborts);
	assert_int_equal(f->aborts, 1);
	assert_null(f->flood);
	assert_false(f->flood_ended);
	assert_int_equal(httpd_connection_count(f->srv), 0);
	raw_close(&rc);
}

static void test_upload_20mb_to_file(void **state)
{
	struct fix *f = *state;
	start(f);
	size_t len = (size_t)20 << 20;
	char *body = malloc(len);
	uint32_t x = 12345;
	for (size_t i = 0; i < len; i++) {
		x = x * 1103515245u + 12345u;
		body[i] = (char)(x >> 16);
	}
	char want[65];
	crypto_sha256_hex(body, len, want);
	struct result r;
	result_init(&r);
	struct call c = {.method = "POST", .path = "/upload", .body = body, .body_len = len};
	call(f, &c, &r);
	free(body);
	assert_int_equal(r.error, HTTP_OK);
	assert_int_equal(r.status, 200);
	assert_true(f->upload_in_file);
	assert_int_equal(f->upload_len, len);
	assert_string_equal(f->upload_sha, want);
	assert_string_equal(r.body.data, want);
	assert_int_equal(strncmp(f->upload_path, f->dir, strlen(f->dir)), 0);
	/* removed once the request is finished (before the loop next waits) */
	spin(f);
	struct stat st;
	assert_int_equal(stat(f->upload_path, &st), -1);
	assert_int_equal(errno, ENOENT);
	result_free(&r);
}

static void test_expect_continue_and_kept_body_file(void **state)
{
	struct fix *f = *state;
	start(f);
	struct raw rc;
	raw_open(f, &rc);
	raw_sends(&rc, "PUT /keep HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
		       "Expect: 100-continue\r\n\r\n");
	RUN_WHILE(f, rc.got.len < 25);
	assert_memory_equal(rc.got.data, "HTTP/1.1 100 Continue\r\n\r\n", 25);
	buf_reset(&rc.got);
	raw_sends(&rc, "hello");
	struct presp a[1];
	int n = wait_answers(&rc, a, 1, 1);
	assert_int_equal(a[0].status, 200);
	assert_string_equal(a[0].body.data, "kept");
	answers_free(a, n);
	raw_close(&rc);
	spin(f);
	/* taken by the handler: still there after the request is gone */
	char content[16] = {0};
	FILE *fp = fopen(f->upload_path, "r");
	assert_non_null(fp);
	assert_int_equal(fread(content, 1, sizeof content - 1, fp), 5);
	fclose(fp);
	assert_string_equal(content, "hello");
	assert_int_equal(unlink(f->upload_path), 0);
	/* refused from the header: no 100 Continue, just the 413 */
	n = raw_exchange(f, "PUT /small HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n"
			    "Expect: 100-continue\r\n\r\n", a, 1);
	assert_int_equal(n, 1);
	assert_int_equal(a[0].status, 413);
	answers_free(a, n);
}

static void test_gzip_request_body(void **state)
{
	struct fix *f = *state;
	start(f);
	struct buf plain, gz;
	buf_init(&plain, 1 << 20);
	buf_init(&gz, 1 << 20);
	for (int i = 0; i < 2000; i++)
		buf_printf(&plain, "line %d of a compressible request body\n", i);
	struct err e;
	assert_int_equal(gzip_compress(plain.data, plain.len, 6, &gz, &e), 0);
	assert_true(gz.len < plain.len / 4);
	static const char *const gz_headers[] = {"Content-Encoding: gzip",
						 "Content-Type: text/plain", NULL};
	struct result r;
	result_init(&r);
	struct call c = {.method = "POST", .path = "/echo", .body = gz.data, .body_len = gz.len,
			 .headers = gz_headers};
	call(f, &c, &r);
	assert_int_equal(r.status, 200);
	assert_int_equal(r.body.len, plain.len);
	assert_memory_equal(r.body.data, plain.data, plain.len);
	result_free(&r);
	/* decompressed size obeys the cap: 2 MB of zeros into /small (1000 bytes) */
	buf_free(&plain);
	buf_reset(&gz);
	char *zeros = calloc(1, 2 << 20);
	assert_int_equal(gzip_compress(zeros, 2 << 20, 9, &gz, &e), 0);
	free(zeros);
	assert_true(gz.len < 4096);
	result_init(&r);
	struct call c2 = {.method = "POST", .path = "/small", .body = gz.data, .body_len = gz.len,
			  .headers = gz_headers};
	call(f, &c2, &r);
	assert_int_equal(r.status, 413);
	result_free(&r);
	/* broken gzip: 400; unknown encoding: 415 */
	static const char *const br_headers[] = {"Content-Encoding: br", NULL};
	result_init(&r);
	struct call c3 = {.method = "POST", .path = "/echo", .body = "not gzip", .body_len = 8,
			  .headers = gz_headers};
	call(f, &c3, &r);
	assert_int_equal(r.status, 400);
	result_free(&r);
	result_init(&r);
	struct call c4 = {.method = "POST", .path = "/echo", .body = "x", .body_len = 1,
			  .headers = br_headers};
	call(f, &c4, &r);
	assert_int_equal(r.status, 415);
	assert_non_null(strstr(r.body.data, "\"unsupported_encoding\""));
	result_free(&r);
	buf_free(&gz);
	assert_int_equal(f->handled, 1);
}

static void test_connection_cap(void **state)
{
	struct fix *f = *state;
	struct httpd_config cfg;
	default_cfg(f, &cfg);
	cfg.max_connections = 2;
	start_with(f, &cfg);
	struct raw r1, r2, r3;
	raw_open(f, &r1);
	raw_open(f, &r2);
	RUN_WHILE(f, httpd_connection_count(f->srv) < 2);
	raw_open(f, &r3);
	raw_wait_eof(&r3); /* answered and closed without sending anything */
	struct presp a[1];
	int n = parse_answers(r3.got.data, r3.got.len, a, 1, 1, 0);
	assert_int_equal(n, 1);
	assert_error_body(&a[0], 503, "unavailable");
	answers_free(a, n);
	raw_close(&r3);
	assert_int_equal(httpd_connection_count(f->srv), 2);
	/* the first two still work; once one goes, a new one is served */
	raw_sends(&r1, "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
	raw_wait_eof(&r1);
	assert_memory_equal(r1.got.data, "HTTP/1.1 200 ", 13);
	raw_close(&r1);
	RUN_WHILE(f, httpd_connection_count(f->srv) > 1);
	raw_open(f, &r3);
	raw_sends(&r3, "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
	raw_wait_eof(&r3);
	assert_memory_equal(r3.got.data, "HTTP/1.1 200 ", 13);
	raw_close(&r3);
	raw_close(&r2);
}

static void test_unix_socket(void **state)
{
	struct fix *f = *state;
	char path[128];
	snprintf(path, sizeof path, "%s/httpd.sock", f->dir);
	char listen[160];
	snprintf(listen, sizeof listen, "unix:%s", path);
	struct httpd_config cfg;
	default_cfg(f, &cfg);
	cfg.listen = listen;
	start_with(f, &cfg);
	assert_int_equal(httpd_port(f->srv), 0);
	struct stat st;
	assert_int_equal(stat(path, &st), 0);
	assert_true(S_ISSOCK(st.st_mode));
	assert_int_equal(st.st_mode & 0777, 0660);
	struct result r;
	result_init(&r);
	struct call c = {.path = "/hello", .unix_socket = path};
	call(f, &c, &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(r.body.data, "ok");
	result_free(&r);
	/* a live socket is not taken over */
	struct err e = {{0}};
	assert_null(httpd_new(f->loop, &cfg, &e));
	assert_non_null(strstr(e.msg, "in use"));
	/* a stale one is */
	httpd_free(f->srv);
	f->srv = NULL;
	assert_int_equal(stat(path, &st), -1); /* removed on shutdown */
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	assert_true(strlen(path) < sizeof sa.sun_path);
	memcpy(sa.sun_path, path, strlen(path));
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
	close(fd);
	start_with(f, &cfg);
	result_init(&r);
	call(f, &c, &r);
	assert_int_equal(r.status, 200);
	result_free(&r);
}

static int have_openssl(void)
{
	return system("command -v openssl >/dev/null 2>&1") == 0;
}

static void test_tls_round_trip(void **state)
{
	struct fix *f = *state;
	if (!have_openssl()) {
		print_message("openssl not found (Debian package openssl): skipped\n");
		skip();
	}
	char cert[128], key[128], cmd[1024];
	snprintf(cert, sizeof cert, "%s/cert.pem", f->dir);
	snprintf(key, sizeof key, "%s/key.pem", f->dir);
	snprintf(cmd, sizeof cmd,
		 "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
		 "-keyout '%s' -out '%s' -days 2 -subj /CN=localhost "
		 "-addext subjectAltName=IP:127.0.0.1,DNS:localhost >/dev/null 2>&1",
		 key, cert);
	assert_int_equal(system(cmd), 0);
	struct httpd_config cfg;
	default_cfg(f, &cfg);
	cfg.tls_cert_file = cert;
	cfg.tls_key_file = key;
	start_with(f, &cfg);
	struct result r;
	result_init(&r);
	struct call c = {.path = "/hello", .scheme = "https", .ca_file = cert};
	call(f, &c, &r);
	assert_int_equal(r.error, HTTP_OK);
	assert_int_equal(r.status, 200);
	assert_string_equal(r.body.data, "ok");
	result_free(&r);
	/* a larger body both ways, on the same connection */
	size_t len = 300000;
	char *body = malloc(len);
	for (size_t i = 0; i < len; i++)
		body[i] = (char)('a' + i % 23);
	result_init(&r);
	struct call c2 = {.method = "POST", .path = "/echo", .body = body, .body_len = len,
			  .scheme = "https", .ca_file = cert};
	call(f, &c2, &r);
	assert_int_equal(r.status, 200);
	assert_int_equal(r.body.len, len);
	assert_memory_equal(r.body.data, body, len);
	result_free(&r);
	free(body);
	assert_int_equal(httpd_connection_count(f->srv), 1);
	/* streamed over TLS */
	result_init(&r);
	struct call c3 = {.path = "/stream?n=20&size=5000", .stream = 1, .scheme = "https",
			  .ca_file = cert};
	call(f, &c3, &r);
	assert_int_equal(r.streamed.len, 100000);
	result_free(&r);
	/* plain HTTP at the TLS port is dropped, not left hanging */
	struct raw rc;
	raw_open(f, &rc);
	raw_sends(&rc, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
	raw_wait_eof(&rc);
	raw_close(&rc);
	/* a key that does not match the certificate is refused at start */
	char other[128];
	snprintf(other, sizeof other, "%s/other.pem", f->dir);
	snprintf(cmd, sizeof cmd,
		 "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 "
		 "-out '%s' >/dev/null 2>&1", other);
	assert_int_equal(system(cmd), 0);
	cfg.tls_key_file = other;
	struct err e = {{0}};
	assert_null(httpd_new(f->loop, &cfg, &e));
	assert_non_null(strstr(e.msg, "does not match"));
}

static void test_head_204_and_misc_answers(void **state)
{
	struct fix *f = *state;
	start(f);
	struct raw rc;
	raw_open(f, &rc);
	raw_sends(&rc, "HEAD /json HTTP/1.1\r\nHost: x\r\n\r\n");
	RUN_WHILE(f, !strstr(rc.got.data ? rc.got.data : "", "\r\n\r\n"));
	spin(f);
	struct presp a[2];
	int n = parse_answers(rc.got.data, rc.got.len, a, 1, 0, 1);
	assert_int_equal(n, 1);
	assert_int_equal(a[0].status, 201);
	assert_string_equal(ans_header(&a[0], "Content-Length"), "11");
	answers_free(a, n);
	/* nothing after the headers */
	assert_string_equal(strstr(rc.got.data, "\r\n\r\n"), "\r\n\r\n");
	buf_reset(&rc.got);
	raw_sends(&rc, "GET /empty HTTP/1.1\r\nHost: x\r\n\r\nGET /nowhere HTTP/1.1\r\nHost: x\r\n"
		       "Connection: close\r\n\r\n");
	raw_wait_eof(&rc);
	assert_memory_equal(rc.got.data, "HTTP/1.1 204 No Content\r\n", 25);
	const char *end204 = strstr(rc.got.data, "\r\n\r\n");
	assert_null(strstr(rc.got.data, "Content-Length: 0")); /* 204 has no framing header */
	n = parse_answers(end204 + 4, strlen(end204 + 4), a, 2, 1, 0);
	assert_int_equal(n, 1);
	assert_int_equal(a[0].status, 404);
	assert_non_null(strstr(a[0].body.data, "\"not_found\""));
	answers_free(a, n);
	raw_close(&rc);
	/* added headers: CR/LF, reserved names and bad names refused */
	struct result r;
	result_init(&r);
	static const char *const hdrs[] = {"X-Test: value with spaces  ", NULL};
	struct call c = {.path = "/hdr", .headers = hdrs};
	call(f, &c, &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(f->seen_header, "value with spaces");
	assert_int_equal(f->add_bad_crlf, -1);
	assert_int_equal(f->add_reserved, -1);
	assert_int_equal(f->add_bad_name, -1);
	assert_int_equal(f->add_good, 0);
	assert_string_equal(r.x_good, "yes");
	assert_string_equal(r.x_bad, "");
	result_free(&r);
	/* query parameters through the server */
	result_init(&r);
	get(f, "/query?b=x%2Fy+z&a=1&a=2", &r);
	assert_string_equal(r.body.data, "1:1|1:x/y z|0");
	result_free(&r);
}

static void test_query_param_and_header_lookup(void **state)
{
	(void)state;
	struct httpd_header h[] = {{"Host", "x"}, {"X-Multi", "1"}, {"x-multi", "2"}};
	struct httpd_req req = {.query = "a=1&b=hello%20world&c=%zz&d=%00x&e&=v&f=a+b&a=2"
					 "&long=0123456789&%61%62=decoded&g=%4",
				.headers = h, .header_count = 3};
	char out[8];
	assert_int_equal(httpd_req_query_param(&req, "a", out, sizeof out), 1);
	assert_string_equal(out, "1");
	assert_int_equal(httpd_req_query_param(&req, "b", out, sizeof out), -1); /* too long */
	assert_string_equal(out, "");
	char big[64];
	assert_int_equal(httpd_req_query_param(&req, "b", big, sizeof big), 1);
	assert_string_equal(big, "hello world");
	assert_int_equal(httpd_req_query_param(&req, "c", big, sizeof big), -1);
	assert_int_equal(httpd_req_query_param(&req, "d", big, sizeof big), -1);
	assert_int_equal(httpd_req_query_param(&req, "e", big, sizeof big), 1);
	assert_string_equal(big, "");
	assert_int_equal(httpd_req_query_param(&req, "f", big, sizeof big), 1);
	assert_string_equal(big, "a b");
	assert_int_equal(httpd_req_query_param(&req, "ab", big, sizeof big), 1);
	assert_string_equal(big, "decoded");
	assert_int_equal(httpd_req_query_param(&req, "g", big, sizeof big), -1);
	assert_int_equal(httpd_req_query_param(&req, "long", out, sizeof out), -1);
	assert_int_equal(httpd_req_query_param(&req, "long", big, 11), 1);
	assert_string_equal(big, "0123456789");
	assert_int_equal(httpd_req_query_param(&req, "zz", big, sizeof big), 0);
	assert_string_equal(httpd_req_header(&req, "HOST"), "x");
	assert_null(httpd_req_header(&req, "Hos"));
	size_t pos = 0;
	assert_string_equal(httpd_req_header_next(&req, "X-MULTI", &pos), "1");
	assert_string_equal(httpd_req_header_next(&req, "X-MULTI", &pos), "2");
	assert_null(httpd_req_header_next(&req, "X-MULTI", &pos));
}

static void test_early_answer_from_on_headers(void **state)
{
	struct fix *f = *state;
	start(f);
	/* without a body the connection stays usable */
	struct raw rc;
	raw_open(f, &rc);
	raw_sends(&rc, "GET /early HTTP/1.1\r\nHost: x\r\n\r\n"
		       "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
	raw_wait_eof(&rc);
	struct presp a[3];
	int n = parse_answers(rc.got.data, rc.got.len, a, 3, 1, 0);
	assert_int_equal(n, 2);
	assert_int_equal(a[0].status, 401);
	assert_non_null(strstr(a[0].body.data, "\"unauthorized\""));
	assert_null(ans_header(&a[0], "Connection"));
	assert_int_equal(a[1].status, 200);
	answers_free(a, n);
	raw_close(&rc);
	/* with a body it is not read: the connection closes after the answer */
	raw_open(f, &rc);
	raw_sends(&rc, "POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\nxyz");
	raw_wait_eof(&rc);
	n = parse_answers(rc.got.data, rc.got.len, a, 3, 1, 0);
	assert_int_equal(n, 1);
	assert_int_equal(a[0].status, 401);
	assert_string_equal(ans_header(&a[0], "Connection"), "close");
	answers_free(a, n);
	raw_close(&rc);
	assert_int_equal(f->handled, 1);
	assert_int_equal(f->aborts, 0);
}

static void test_graceful_shutdown(void **state)
{
	struct fix *f = *state;
	start(f);
	struct raw held, idle;
	raw_open(f, &held);
	raw_open(f, &idle);
	raw_sends(&idle, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
	raw_sends(&held, "GET /defer HTTP/1.1\r\nHost: x\r\n\r\n");
	RUN_WHILE(f, !f->held || idle.got.len == 0);
	httpd_stop_accepting(f->srv);
	raw_wait_eof(&idle); /* idle keep-alive connection closed */
	raw_close(&idle);
	/* no more connections */
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)f->port)};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), -1);
	close(fd);
	/* the request in flight is still answered, and its connection then closes */
	assert_int_equal(httpd_respond(f->held, 200, "text/plain", "bye", 3), 0);
	f->held = NULL;
	raw_wait_eof(&held);
	struct presp a[1];
	int n = parse_answers(held.got.data, held.got.len, a, 1, 1, 0);
	assert_int_equal(n, 1);
	assert_string_equal(a[0].body.data, "bye");
	assert_string_equal(ans_header(&a[0], "Connection"), "close");
	answers_free(a, n);
	raw_close(&held);
	assert_int_equal(f->aborts, 0);
}

static void test_free_aborts_requests_in_flight(void **state)
{
	struct fix *f = *state;
	start(f);
	struct raw r1, r2;
	raw_open(f, &r1);
	raw_open(f, &r2);
	raw_sends(&r1, "GET /defer HTTP/1.1\r\nHost: x\r\n\r\n");
	raw_sends(&r2, "GET /later?ms=10000 HTTP/1.1\r\nHost: x\r\n\r\n");
	RUN_WHILE(f, f->handled < 2);
	assert_int_equal(httpd_request_count(f->srv), 2);
	f->abort_respond_rc = 0;
	httpd_free(f->srv);
	f->srv = NULL;
	assert_int_equal(f->aborts, 2);
	assert_int_equal(f->abort_respond_rc, -1);
	raw_wait_eof(&r1);
	raw_wait_eof(&r2);
	raw_close(&r1);
	raw_close(&r2);
}

static void test_adopt_fd_and_bad_config(void **state)
{
	struct fix *f = *state;
	struct httpd_config cfg;
	default_cfg(f, &cfg);
	cfg.listen = NULL;
	start_with(f, &cfg);
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	struct err e;
	assert_int_equal(httpd_adopt_fd(f->srv, sv[0], "pair", &e), 0);
	struct raw rc;
	raw_attach(f, &rc, sv[1]);
	raw_sends(&rc, "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
	raw_wait_eof(&rc);
	assert_memory_equal(rc.got.data, "HTTP/1.1 200 ", 13);
	raw_close(&rc);

	static const char *const bad_listen[] = {"127.0.0.1", "localhost:80", "1.2.3.4:70000",
						 "::1:80", "[::1]80", "unix:", "*:-1"};
	for (size_t i = 0; i < sizeof bad_listen / sizeof bad_listen[0]; i++) {
		cfg.listen = bad_listen[i];
		memset(&e, 0, sizeof e);
		assert_null(httpd_new(f->loop, &cfg, &e));
		assert_true(e.msg[0] != '\0');
	}
	cfg.listen = "[::1]:0";
	struct httpd *v6 = httpd_new(f->loop, &cfg, &e);
	if (v6) /* hosts without IPv6 loopback skip this part */
		assert_true(httpd_port(v6) > 0);
	httpd_free(v6);
	cfg.listen = "*:0";
	struct httpd *any = httpd_new(f->loop, &cfg, &e);
	assert_non_null(any);
	httpd_free(any);
	static const char *const bad_default[] = {"X-Bad: a\r\nInjected: 1", NULL};
	cfg.default_headers = bad_default;
	assert_null(httpd_new(f->loop, &cfg, &e));
	cfg.default_headers = NULL;
	cfg.tls_cert_file = "/nonexistent";
	assert_null(httpd_new(f->loop, &cfg, &e));
}

static void test_raise_nofile_limit(void **state)
{
	(void)state;
	struct rlimit before;
	assert_int_equal(getrlimit(RLIMIT_NOFILE, &before), 0);
	struct err e;
	long got = httpd_raise_nofile_limit(&e);
	assert_true(got > 0);
	assert_true((rlim_t)got >= before.rlim_cur || before.rlim_cur == RLIM_INFINITY);
	struct rlimit after;
	assert_int_equal(getrlimit(RLIMIT_NOFILE, &after), 0);
	assert_true(after.rlim_cur == after.rlim_max || after.rlim_max == RLIM_INFINITY);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_get_keepalive_reuse),
		T(test_http10_and_connection_close),
		T(test_pipelining_in_order),
		T(test_chunked_request_body),
		T(test_413_by_content_length),
		T(test_413_by_chunked_overflow),
		T(test_431_and_414),
		T(test_request_smuggling_refused),
		T(test_slow_client_timeouts),
		T(test_deferred_response),
		T(test_disconnect_during_deferred_aborts_once),
		T(test_streamed_response),
		T(test_slow_reader_hits_stream_cap),
		T(test_write_timeout_aborts_stalled_reader),
		T(test_upload_20mb_to_file),
		T(test_expect_continue_and_kept_body_file),
		T(test_gzip_request_body),
		T(test_connection_cap),
		T(test_unix_socket),
		T(test_tls_round_trip),
		T(test_head_204_and_misc_answers),
		cmocka_unit_test(test_query_param_and_header_lookup),
		T(test_early_answer_from_on_headers),
		T(test_graceful_shutdown),
		T(test_free_aborts_requests_in_flight),
		T(test_adopt_fd_and_bad_config),
		cmocka_unit_test(test_raise_nofile_limit),
	};
	return cmocka_run_group_tests_name("httpd", tests, NULL, NULL);
}
