#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include "client.h"

/* A one-connection-per-answer HTTP server on a thread: it answers the canned
 * responses in order and records each request (head and body). */
#define MAX_ANSWERS 8

struct fake {
	int fd;
	int port;
	const char *answers[MAX_ANSWERS];
	int nanswers;
	char requests[MAX_ANSWERS][8192];
	size_t body_len[MAX_ANSWERS];
	char body[MAX_ANSWERS][4096];
	int served;
	pthread_t thread;
};

static void *serve(void *arg)
{
	struct fake *f = arg;
	for (int i = 0; i < f->nanswers; i++) {
		int c = accept(f->fd, NULL, NULL);
		if (c < 0)
			break;
		char buf[16384];
		size_t len = 0;
		char *end = NULL;
		while (!end && len < sizeof buf - 1) {
			ssize_t r = read(c, buf + len, sizeof buf - 1 - len);
			if (r <= 0)
				break;
			len += (size_t)r;
			buf[len] = '\0';
			end = strstr(buf, "\r\n\r\n");
			if ((unsigned char)buf[0] == 0x16)
				break; /* a TLS ClientHello: answer in plain HTTP at once */
		}
		size_t head = end ? (size_t)(end - buf) + 4 : len;
		snprintf(f->requests[i], sizeof f->requests[i], "%.*s", (int)head, buf);
		size_t want = 0;
		const char *cl = strcasestr(f->requests[i], "\r\nContent-Length:");
		if (cl)
			want = strtoul(cl + 17, NULL, 10);
		size_t have = len - head;
		memcpy(f->body[i], buf + head, have < 4096 ? have : 4096);
		while (have < want && have < 4096) {
			ssize_t r = read(c, f->body[i] + have, 4096 - have);
			if (r <= 0)
				break;
			have += (size_t)r;
		}
		f->body_len[i] = have;
		size_t n = strlen(f->answers[i]);
		if (write(c, f->answers[i], n) != (ssize_t)n)
			break;
		close(c);
		f->served++;
	}
	return NULL;
}

static void fake_start(struct fake *f, int n, ...)
{
	memset(f, 0, sizeof *f);
	va_list ap;
	va_start(ap, n);
	for (int i = 0; i < n; i++)
		f->answers[i] = va_arg(ap, const char *);
	va_end(ap);
	f->nanswers = n;
	f->fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	assert_int_equal(bind(f->fd, (struct sockaddr *)&sa, sizeof sa), 0);
	assert_int_equal(listen(f->fd, 8), 0);
	socklen_t sl = sizeof sa;
	getsockname(f->fd, (struct sockaddr *)&sa, &sl);
	f->port = ntohs(sa.sin_port);
	assert_int_equal(pthread_create(&f->thread, NULL, serve, f), 0);
}

static void fake_stop(struct fake *f)
{
	shutdown(f->fd, SHUT_RDWR);
	pthread_join(f->thread, NULL);
	close(f->fd);
}

static void open_client(struct client *cl, int port, const char *scheme)
{
	char host[64];
	struct err err;
	snprintf(host, sizeof host, "%s://127.0.0.1:%d", scheme, port);
	assert_int_equal(client_init(cl, host, "slw_testkey", NULL, &err), 0);
}

/* "HTTP/1.1 STATUS" with the extra header lines, a correct Content-Length and body
 * (kept in a pool freed at exit by the OS: tests only). */
static const char *resp(const char *status, const char *headers, const char *body)
{
	static char pool[16][2048];
	static int next;
	char *out = pool[next++ % 16];
	snprintf(out, 2048, "HTTP/1.1 %s\r\n%sContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
		 status, headers, strlen(body), body);
	return out;
}

static void test_json_ok(void **state)
{
	(void)state;
	struct fake f;
	fake_start(&f, 1, resp("200 OK", "Content-Type: application/json\r\n",
			       "{\"apps\":[{\"name\":\"web\"}]}"));
	struct client cl;
	open_client(&cl, f.port, "http");
	cJSON *doc = NULL, *body = cJSON_CreateObject();
	cJSON_AddStringToObject(body, "name", "web");
	struct err err;
	assert_int_equal(client_json(&cl, "POST", "/v1/apps", body, &doc, &err), 0);
	cJSON_Delete(body);
	assert_int_equal(cl.status, 200);
	const cJSON *apps = cJSON_GetObjectItemCaseSensitive(doc, "apps");
	assert_string_equal(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(apps, 0),
							     "name")->valuestring, "web");
	cJSON_Delete(doc);
	client_close(&cl);
	fake_stop(&f);
	assert_non_null(strstr(f.requests[0], "POST /v1/apps HTTP/1.1\r\n"));
	assert_non_null(strstr(f.requests[0], "Authorization: Bearer slw_testkey\r\n"));
	assert_non_null(strstr(f.requests[0], "Slipway-Protocol: 1\r\n"));
	assert_non_null(strstr(f.requests[0], "Content-Type: application/json\r\n"));
	assert_int_equal(f.body_len[0], 14);
	assert_memory_equal(f.body[0], "{\"name\":\"web\"}", 14);
}

/* The coordinator's error document becomes the message; 401, 403 and 5xx get advice. */
static void test_error_documents(void **state)
{
	(void)state;
	struct fake f;
	fake_start(&f, 4,
		   resp("404 Not Found", "",
			"{\"error\":{\"code\":\"not_found\",\"message\":\"unknown app w\\u001beb\"}}"),
		   resp("401 Unauthorized", "",
			"{\"error\":{\"code\":\"unauthorized\",\"message\":\"unknown or revoked API "
			"key\"}}"),
		   resp("403 Forbidden", "",
			"{\"error\":{\"code\":\"forbidden\",\"message\":\"needs the admin role\"}}"),
		   resp("500 Internal", "Slipway-Request-Id: rq-42\r\n",
			"{\"error\":{\"code\":\"internal\",\"message\":\"store failed\"}}"));
	struct client cl;
	open_client(&cl, f.port, "http");
	cl.key_from = "SLIPWAY_API_KEY";
	struct err err;
	cJSON *doc = (cJSON *)1;
	assert_int_equal(client_json(&cl, "DELETE", "/v1/apps/web", NULL, &doc, &err), -1);
	assert_null(doc);
	assert_int_equal(cl.status, 404);
	assert_string_equal(cl.code, "not_found");
	assert_string_equal(err.msg, "unknown app w?eb"); /* no escape reaches the terminal */
	assert_int_equal(client_json(&cl, "DELETE", "/v1/apps/web", NULL, NULL, &err), -1);
	assert_string_equal(err.msg, "the coordinator refused the API key from SLIPWAY_API_KEY: "
				     "unknown or revoked API key (set SLIPWAY_API_KEY or run "
				     "`slipway login`)");
	assert_int_equal(client_json(&cl, "DELETE", "/v1/apps/web", NULL, NULL, &err), -1);
	assert_string_equal(err.msg, "needs the admin role (forbidden)");
	assert_int_equal(client_json(&cl, "DELETE", "/v1/apps/web", NULL, NULL, &err), -1);
	assert_string_equal(err.msg, "the coordinator failed: store failed (HTTP 500, request id "
				     "rq-42)");
	client_close(&cl);
	fake_stop(&f);
}

/* A GET is retried on 503; what answers is not our JSON: said so, with the status. */
static void test_retry_and_foreign_errors(void **state)
{
	(void)state;
	struct fake f;
	fake_start(&f, 3,
		   "HTTP/1.1 503 Busy\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
		   "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
		   "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: 24\r\n"
		   "Connection: close\r\n\r\n<html>bad gateway</html>");
	struct client cl;
	open_client(&cl, f.port, "http");
	struct err err;
	cJSON *doc = (cJSON *)1;
	assert_int_equal(client_json(&cl, "GET", "/v1/apps", NULL, &doc, &err), 0);
	assert_null(doc); /* empty 2xx body */
	assert_int_equal(client_json(&cl, "POST", "/v1/apps", NULL, NULL, &err), -1);
	char want[128];
	snprintf(want, sizeof want, "POST /v1/apps: HTTP 502 from http://127.0.0.1:%d: <html>bad "
				    "gateway</html>", f.port);
	assert_string_equal(err.msg, want);
	client_close(&cl);
	fake_stop(&f);
	assert_int_equal(f.served, 3);
}

static void test_connection_refused_and_tls(void **state)
{
	(void)state;
	/* A port nobody listens on: bound, then closed. */
	int s = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	bind(s, (struct sockaddr *)&sa, sizeof sa);
	socklen_t sl = sizeof sa;
	getsockname(s, (struct sockaddr *)&sa, &sl);
	int port = ntohs(sa.sin_port);
	close(s);
	struct client cl;
	open_client(&cl, port, "http");
	struct err err;
	assert_int_equal(client_json(&cl, "GET", "/v1/apps", NULL, NULL, &err), -1);
	assert_int_equal(cl.status, 0);
	char want[128];
	snprintf(want, sizeof want, "cannot reach the coordinator at http://127.0.0.1:%d: ", port);
	assert_non_null(strstr(err.msg, want));
	assert_non_null(strstr(err.msg, "SLIPWAY_HOST"));
	client_close(&cl);

	/* https:// to a server that speaks plain HTTP: the handshake fails. */
	struct fake f;
	fake_start(&f, 1, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
	open_client(&cl, f.port, "https");
	assert_int_equal(client_json(&cl, "POST", "/v1/apps", NULL, NULL, &err), -1);
	assert_non_null(strstr(err.msg, "TLS verification of https://127.0.0.1:"));
	assert_non_null(strstr(err.msg, "SLIPWAY_CA_FILE"));
	assert_non_null(strstr(err.msg, "cannot be turned off"));
	client_close(&cl);
	fake_stop(&f);
}

struct collected {
	char text[256];
	size_t len;
	int stop_after;
};

static int collect(const char *data, size_t len, void *arg)
{
	struct collected *c = arg;
	if (c->len + len < sizeof c->text) {
		memcpy(c->text + c->len, data, len);
		c->len += len;
		c->text[c->len] = '\0';
	}
	return c->stop_after && c->len >= (size_t)c->stop_after ? -1 : 0;
}

static void test_stream_and_upload(void **state)
{
	(void)state;
	struct fake f;
	fake_start(&f, 3,
		   "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
		   "Connection: close\r\n\r\n6\r\nstep 1\r\n7\r\n\nstep 2\r\n0\r\n\r\n",
		   "HTTP/1.1 200 OK\r\nContent-Length: 12\r\nConnection: close\r\n\r\nabcdefghijkl",
		   "HTTP/1.1 202 Accepted\r\nContent-Length: 17\r\nConnection: close\r\n\r\n"
		   "{\"build\":\"b_123\"}");
	struct client cl;
	open_client(&cl, f.port, "http");
	struct err err;
	struct collected c = {0};
	assert_int_equal(client_stream(&cl, "/v1/builds/b_1/log", 0, collect, &c, &err), 0);
	assert_string_equal(c.text, "step 1\nstep 2");
	/* on_data may stop the stream: that is not an error. */
	struct collected stop = {.stop_after = 1};
	assert_int_equal(client_stream(&cl, "/v1/x", 0, collect, &stop, &err), 0);

	char path[] = "/tmp/slipway-upload-XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "\x1f\x8b pretend tar.gz", 18), 18);
	close(fd);
	cJSON *doc = NULL;
	assert_int_equal(client_upload(&cl, "/v1/apps/web/builds", path, "application/gzip", &doc,
				       &err), 0);
	unlink(path);
	assert_string_equal(cJSON_GetObjectItemCaseSensitive(doc, "build")->valuestring, "b_123");
	cJSON_Delete(doc);
	client_close(&cl);
	fake_stop(&f);
	assert_non_null(strstr(f.requests[2], "Content-Type: application/gzip\r\n"));
	assert_non_null(strstr(f.requests[2], "Content-Length: 18\r\n"));
	assert_int_equal(f.body_len[2], 18);
	assert_memory_equal(f.body[2], "\x1f\x8b pretend tar.gz", 18);
}

static void test_sleep_and_interrupt(void **state)
{
	(void)state;
	struct client cl;
	open_client(&cl, 9, "http");
	struct err err;
	assert_int_equal(client_sleep(&cl, 10, &err), 0);
	client_interrupted = 2;
	assert_int_equal(client_sleep(&cl, 10000, &err), -1);
	assert_string_equal(err.msg, "interrupted");
	assert_int_equal(client_json(&cl, "GET", "/v1/apps", NULL, NULL, &err), -1);
	assert_string_equal(err.msg, "interrupted");
	client_interrupted = 0;
	char p[32] = "/v1/apps/";
	assert_int_equal(client_escape(p, sizeof p, "a b/c"), 0);
	assert_string_equal(p, "/v1/apps/a%20b%2Fc");
	assert_int_equal(client_escape(p, sizeof p, "0123456789abcdef"), -1);
	assert_string_equal(p, "/v1/apps/a%20b%2Fc"); /* unchanged */
	client_close(&cl);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_json_ok),
		cmocka_unit_test(test_error_documents),
		cmocka_unit_test(test_retry_and_foreign_errors),
		cmocka_unit_test(test_connection_refused_and_tls),
		cmocka_unit_test(test_stream_and_upload),
		cmocka_unit_test(test_sleep_and_interrupt),
	};
	return cmocka_run_group_tests_name("client", tests, NULL, NULL);
}
