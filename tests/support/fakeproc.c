/* fakeproc: a Python fake as a child process of a unit test (see fakeproc.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <curl/curl.h>

#include "buf.h"
#include "fakeproc.h"

#define ARGS_MAX 16
#define FIRST_LINE_WAIT_MS 20000
#define ANSWER_MAX ((size_t)64 << 20)

/* Reads one line a byte at a time (so nothing after it is taken), waiting at
 * most FIRST_LINE_WAIT_MS for each byte; 0 once a whole line is in. */
static int read_first_line(int fd, char *line, size_t cap, const char *script)
{
	size_t n = 0;
	while (n + 1 < cap) {
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		if (poll(&pfd, 1, FIRST_LINE_WAIT_MS) <= 0) {
			print_error("fakeproc: %s did not print its port\n", script);
			return -1;
		}
		if (read(fd, line + n, 1) != 1) {
			print_error("fakeproc: %s exited before printing its port\n", script);
			return -1;
		}
		if (line[n] == '\n')
			break;
		n++;
	}
	line[n] = '\0';
	return 0;
}

int fakeproc_start(struct fakeproc *f, const char *script, const char *const *args)
{
	f->pid = 0;
	f->in = -1;
	f->port = 0;
	f->base[0] = '\0';
	const char *top = getenv("SLIPWAY_TOP");
	char path[1024];
	snprintf(path, sizeof path, "%s/tests/fakes/%s", top && *top ? top : ".", script);
	const char *argv[ARGS_MAX] = {"python3", path};
	size_t n = 2;
	for (; args && *args; args++) {
		if (n + 1 >= ARGS_MAX) {
			print_error("fakeproc: too many arguments for %s\n", script);
			return -1;
		}
		argv[n++] = *args;
	}
	argv[n] = NULL;
	int in[2], out[2];
	if (pipe2(in, O_CLOEXEC) != 0)
		return -1;
	if (pipe2(out, O_CLOEXEC) != 0) {
		close(in[0]);
		close(in[1]);
		return -1;
	}
	pid_t pid = fork();
	if (pid < 0) {
		close(in[0]);
		close(in[1]);
		close(out[0]);
		close(out[1]);
		return -1;
	}
	if (pid == 0) {
		/* dup2 clears close-on-exec on 0 and 1 only. */
		dup2(in[0], 0);
		dup2(out[1], 1);
		execvp("python3", (char *const *)argv);
		_exit(127);
	}
	close(in[0]);
	close(out[1]);
	f->pid = pid;
	f->in = in[1];
	char line[64];
	int rc = read_first_line(out[0], line, sizeof line, path);
	close(out[0]);
	if (rc < 0) {
		fakeproc_stop(f);
		return -1;
	}
	if (strncmp(line, "ready", 5) == 0)
		return 0;
	f->port = atoi(line);
	if (f->port <= 0 || f->port > 65535) {
		print_error("fakeproc: %s printed \"%s\", not a port\n", path, line);
		fakeproc_stop(f);
		return -1;
	}
	snprintf(f->base, sizeof f->base, "http://127.0.0.1:%d", f->port);
	return 0;
}

static void reap(struct fakeproc *f, int sig)
{
	/* pid first: a zeroed struct that never ran must not close fd 0. */
	if (f->pid <= 0)
		return;
	if (f->in >= 0)
		close(f->in);
	f->in = -1;
	if (sig)
		kill(f->pid, sig);
	waitpid(f->pid, NULL, 0);
	f->pid = 0;
}

void fakeproc_stop(struct fakeproc *f)
{
	reap(f, SIGTERM);
}

void fakeproc_finish(struct fakeproc *f)
{
	reap(f, 0);
}

char *fakeproc_http(const struct fakeproc *f, const char *method, const char *path,
		    const char *body)
{
	assert_true(f->port > 0);
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(s >= 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)f->port)};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(connect(s, (struct sockaddr *)&a, sizeof a), 0);
	char req[4096];
	size_t bl = body ? strlen(body) : 0;
	int n = snprintf(req, sizeof req,
			 "%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %zu\r\n"
			 "\r\n%s",
			 method, path, bl, body ? body : "");
	assert_true(n > 0 && (size_t)n < sizeof req);
	assert_true(write(s, req, (size_t)n) == n);
	struct buf b;
	buf_init(&b, 1 << 20);
	char chunk[4096];
	ssize_t r;
	while ((r = read(s, chunk, sizeof chunk)) > 0)
		buf_append(&b, chunk, (size_t)r);
	close(s);
	assert_non_null(b.data);
	char *sep = strstr(b.data, "\r\n\r\n");
	assert_non_null(sep);
	char *out = strdup(sep + 4);
	buf_free(&b);
	assert_non_null(out);
	return out;
}

static size_t curl_sink(char *data, size_t size, size_t n, void *arg)
{
	buf_append(arg, data, size * n);
	return size * n;
}

cJSON *fakeproc_json(const struct fakeproc *f, const char *method, const char *path,
		     const char *body)
{
	CURL *c = curl_easy_init();
	assert_non_null(c);
	char url[1024];
	if (f->sock[0]) {
		snprintf(url, sizeof url, "http://localhost%s", path);
		curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, f->sock);
	} else {
		snprintf(url, sizeof url, "http://127.0.0.1:%d%s", f->port, path);
	}
	struct buf out;
	buf_init(&out, ANSWER_MAX);
	struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	if (body)
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, curl_sink);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &out);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, 20L);
	CURLcode rc = curl_easy_perform(c);
	long status = 0;
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
	curl_slist_free_all(h);
	curl_easy_cleanup(c);
	if (rc != CURLE_OK || status != 200) {
		buf_free(&out);
		fail_msg("fake %s %s: %s, HTTP %ld", method, path, curl_easy_strerror(rc), status);
	}
	cJSON *doc = cJSON_ParseWithLength(out.data ? out.data : "", out.len);
	buf_free(&out);
	assert_non_null(doc);
	return doc;
}
