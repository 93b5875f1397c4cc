/*
 * libFuzzer target for common/httpd: arbitrary bytes as the input of one
 * connection. The server adopts one end of a socketpair, so the real read,
 * parse, answer and write paths run; the input goes in pieces with loop turns
 * between them, and the answers are read and dropped.
 *
 *   make build/fuzz/fuzz_httpd
 *   build/fuzz/fuzz_httpd -max_total_time=60 tests/fuzz/seeds/httpd
 *
 * The handler answers at once, streams, defers (answered a few turns later),
 * or stores the body in a file, depending on the path, so the fuzzer reaches
 * each of those states. Broken promises call abort(): a request held across
 * turns that is neither answered nor aborted by httpd_free, a body file left
 * behind, or a module answer that is not HTTP.
 */
#include <dirent.h>
#include <errno.h>
#include <ev.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "httpd.h"
#include "log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define HELD_MAX 4

static struct ev_loop *loop;
static char body_dir[64];
static struct httpd_req *held[HELD_MAX];
static size_t out_seen;
static int out_checked;
static char out_head[8];

static void check(int ok)
{
	if (!ok)
		abort();
}

static void on_held_abort(struct httpd_req *req, void *arg)
{
	(void)arg;
	for (int i = 0; i < HELD_MAX; i++)
		if (held[i] == req)
			held[i] = NULL;
	check(httpd_respond(req, 200, NULL, "x", 1) == -1);
}

static void handler(struct httpd_req *req, void *arg)
{
	(void)arg;
	const char *p = req->path;
	/* in memory: NUL-terminated; in a file: body is "" and body_len the file's size */
	check(req->body_file ? req->body[0] == '\0' : req->body[req->body_len] == '\0');
	if (strncmp(p, "/defer", 6) == 0) {
		for (int i = 0; i < HELD_MAX; i++) {
			if (!held[i]) {
				held[i] = req;
				httpd_req_on_abort(req, on_held_abort, NULL);
				return;
			}
		}
		httpd_respond(req, 503, NULL, NULL, 0);
	} else if (strncmp(p, "/stream", 7) == 0) {
		if (httpd_stream_start(req, 200, "text/plain") == 0) {
			for (size_t i = 0; i < req->body_len % 5 + 1; i++)
				httpd_stream_write(req, req->target, strlen(req->target));
			httpd_stream_end(req);
		}
	} else if (strncmp(p, "/q", 2) == 0) {
		char v[32];
		char name[2] = {req->query[0] ? req->query[0] : 'a', '\0'};
		int rc = httpd_req_query_param(req, name, v, sizeof v);
		/* header values from the request, echoed: refused when not clean */
		for (size_t i = 0; i < req->header_count && i < 4; i++)
			httpd_add_header(req, req->headers[i].name, req->headers[i].value);
		const char *h = httpd_req_header(req, "x-fuzz");
		httpd_respond(req, rc == 1 ? 200 : 400, h, v, strlen(v));
	} else if (strncmp(p, "/json", 5) == 0) {
		cJSON *j = cJSON_CreateObject();
		cJSON_AddStringToObject(j, "path", req->path);
		httpd_respond_json(req, 200, j);
		cJSON_Delete(j);
	} else if (strncmp(p, "/abort", 6) == 0) {
		httpd_abort(req);
	} else {
		httpd_respond(req, 200, "application/octet-stream", req->body,
			      req->body_file ? 0 : req->body_len);
	}
}

static void on_headers(struct httpd_req *req, void *arg)
{
	(void)arg;
	if (strncmp(req->path, "/file", 5) == 0) {
		httpd_req_set_body_max(req, 1 << 16);
		check(httpd_req_body_to_file(req, body_dir, NULL) == 0);
	} else if (strncmp(req->path, "/small", 6) == 0) {
		httpd_req_set_body_max(req, 16);
	} else if (strncmp(req->path, "/early", 6) == 0) {
		httpd_respond_error(req, 401, "unauthorized", "early");
	}
}

/* Reads and drops the server's output; the first bytes must be a status line. */
static void drain(int fd)
{
	char tmp[65536];
	ssize_t n;
	while ((n = recv(fd, tmp, sizeof tmp, MSG_DONTWAIT)) > 0) {
		for (ssize_t i = 0; i < n && out_seen < sizeof out_head; i++)
			out_head[out_seen++] = tmp[i];
		if (!out_checked && out_seen >= sizeof out_head) {
			check(memcmp(out_head, "HTTP/1.1", 8) == 0);
			out_checked = 1;
		}
	}
}

static void answer_one_held(void)
{
	for (int i = 0; i < HELD_MAX; i++) {
		if (held[i]) {
			struct httpd_req *req = held[i];
			held[i] = NULL;
			check(httpd_respond(req, 200, "text/plain", "late", 4) == 0);
			return;
		}
	}
}

static void remove_body_dir(void)
{
	rmdir(body_dir); /* empty: every input checks that */
}

static void init_once(void)
{
	if (loop)
		return;
	loop = ev_loop_new(EVFLAG_AUTO);
	log_set_level(LOG_LEVEL_ERROR);
	snprintf(body_dir, sizeof body_dir, "/tmp/fuzz-httpd-XXXXXX");
	check(loop && mkdtemp(body_dir));
	atexit(remove_body_dir);
}

static int dir_is_empty(void)
{
	DIR *d = opendir(body_dir);
	check(d != NULL);
	struct dirent *e;
	int n = 0;
	while ((e = readdir(d)))
		n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
	closedir(d);
	return n == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	init_once();
	struct httpd_config cfg = {
		.handler = handler,
		.on_headers = on_headers,
		.max_header_bytes = 4096,
		.max_url_bytes = 1024,
		.body_max = 1 << 16,
		.stream_max_pending = 1 << 12,
	};
	static const char *const defaults[] = {"Slipway-Protocol: 1", NULL};
	cfg.default_headers = defaults;
	struct httpd *srv = httpd_new(loop, &cfg, NULL);
	check(srv != NULL);
	int sv[2];
	check(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
	check(httpd_adopt_fd(srv, sv[0], "fuzz", NULL) == 0);
	out_seen = 0;
	out_checked = 0;

	/* The piece size depends on the length, so the fuzzer explores splits too. */
	size_t piece = 1 + (size * 7919) % 301;
	size_t off = 0;
	int turns = 0;
	while (off < size && turns < 100000) {
		size_t n = size - off < piece ? size - off : piece;
		ssize_t w = send(sv[1], data + off, n, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (w > 0)
			off += (size_t)w;
		else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
			break; /* the server closed the connection */
		ev_run(loop, EVRUN_NOWAIT);
		drain(sv[1]);
		if (++turns % 3 == 0)
			answer_one_held();
	}
	for (int i = 0; i < 8; i++) {
		ev_run(loop, EVRUN_NOWAIT);
		drain(sv[1]);
		answer_one_held();
	}
	httpd_free(srv);
	for (int i = 0; i < HELD_MAX; i++)
		check(held[i] == NULL); /* every held request got its on_abort */
	check(dir_is_empty());
	drain(sv[1]);
	close(sv[1]);
	return 0;
}
