#include "client.h"

#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "buf.h"
#include "cli.h"
#include "http_client.h"
#include "json.h"
#include "table.h"

_Atomic int client_interrupted;
static int wake_fd = -1;

static void on_signal(int sig)
{
	if (client_interrupted)
		_exit(128 + sig); /* a second Ctrl-C: the user means it */
	client_interrupted = sig;
	int saved = errno;
	if (wake_fd >= 0) {
		ssize_t w = write(wake_fd, "!", 1);
		(void)w;
	}
	errno = saved;
}

static void on_wake(struct ev_loop *loop, ev_io *w, int revents)
{
	(void)loop;
	(void)revents;
	char drain[16];
	while (read(w->fd, drain, sizeof drain) > 0)
		;
}

int client_init(struct client *cl, const char *host, const char *api_key, const char *ca_file,
		struct err *err)
{
	memset(cl, 0, sizeof *cl);
	cl->pipe_fd[0] = cl->pipe_fd[1] = -1;
	cl->base = strdup(host);
	cl->ca_file = ca_file ? strdup(ca_file) : NULL;
	if (api_key) {
		size_t n = strlen(api_key) + 32;
		cl->auth = malloc(n);
		if (cl->auth)
			snprintf(cl->auth, n, "Authorization: Bearer %s", api_key);
	}
	if (!cl->base || (ca_file && !cl->ca_file) || (api_key && !cl->auth)) {
		client_close(cl);
		return err_set(err, "out of memory");
	}
	if (pipe2(cl->pipe_fd, O_NONBLOCK | O_CLOEXEC) < 0) {
		client_close(cl);
		return err_set(err, "pipe: %s", strerror(errno));
	}
	cl->loop = ev_loop_new(EVFLAG_AUTO);
	cl->http = cl->loop ? http_client_new(cl->loop) : NULL;
	ev_io *w = malloc(sizeof *w);
	if (!cl->http || !w) {
		free(w);
		client_close(cl);
		return err_set(err, "could not set up the HTTP client");
	}
	ev_io_init(w, on_wake, cl->pipe_fd[0], EV_READ);
	ev_io_start(cl->loop, w);
	cl->intr_watcher = w;
	wake_fd = cl->pipe_fd[1];
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN); /* `slipway logs | head` ends with EPIPE, not a signal */
	return 0;
}

void client_close(struct client *cl)
{
	if (cl->http)
		http_client_free(cl->http);
	if (cl->intr_watcher) {
		ev_io_stop(cl->loop, cl->intr_watcher);
		free(cl->intr_watcher);
	}
	if (cl->loop)
		ev_loop_destroy(cl->loop);
	if (wake_fd == cl->pipe_fd[1])
		wake_fd = -1;
	for (int i = 0; i < 2; i++) {
		if (cl->pipe_fd[i] >= 0)
			close(cl->pipe_fd[i]);
	}
	if (cl->auth) {
		/* Do not leave the key lying around in freed memory. */
		memset(cl->auth, 0, strlen(cl->auth));
		free(cl->auth);
	}
	free(cl->base);
	free(cl->ca_file);
	memset(cl, 0, sizeof *cl);
	cl->pipe_fd[0] = cl->pipe_fd[1] = -1;
}

/* ---- one call ---- */

struct call {
	struct client *cl;
	int done;
	int stopped;             /* on_data asked to stop */
	enum http_error error;
	char error_msg[256];
	long status;
	struct buf body;         /* buffered answers */
	char request_id[96];
	client_data_fn on_data;
	void *arg;
};

static void call_done(const struct http_response *resp, void *arg)
{
	struct call *c = arg;
	c->done = 1;
	c->error = resp->error;
	c->status = resp->status;
	snprintf(c->error_msg, sizeof c->error_msg, "%s", resp->error_msg ? resp->error_msg : "");
	const char *rid = http_response_header(resp, "Slipway-Request-Id");
	snprintf(c->request_id, sizeof c->request_id, "%s", rid ? rid : "");
	if (resp->body_len && buf_append(&c->body, resp->body, resp->body_len) < 0) {
		c->error = HTTP_ERR_TOO_LARGE;
		snprintf(c->error_msg, sizeof c->error_msg, "answer too large");
	}
}

static int call_data(const char *data, size_t len, void *arg)
{
	struct call *c = arg;
	if (c->on_data(data, len, c->arg) < 0) {
		c->stopped = 1;
		return -1;
	}
	return 0;
}

static int cli_should_retry(const struct http_response *resp, void *arg)
{
	(void)arg;
	if (resp->error == HTTP_ERR_CONNECT || resp->error == HTTP_ERR_TRANSPORT)
		return 1;
	return resp->error == HTTP_OK &&
	       (resp->status == 502 || resp->status == 503 || resp->status == 504);
}

static const struct backoff_policy get_retry = {.base_ms = 200, .cap_ms = 2000,
						.max_attempts = 3};

/* The error document's code and message, when the body is one. */
static void error_doc(const struct call *c, char *code, size_t code_cap, char *msg,
		      size_t msg_cap)
{
	code[0] = msg[0] = '\0';
	cJSON *doc = json_parse(c->body.data ? c->body.data : "", c->body.len, (size_t)1 << 20,
				NULL);
	const cJSON *e = cJSON_GetObjectItemCaseSensitive(doc, "error");
	const cJSON *cd = cJSON_GetObjectItemCaseSensitive(e, "code");
	const cJSON *m = cJSON_GetObjectItemCaseSensitive(e, "message");
	if (cJSON_IsString(cd))
		table_clean(cd->valuestring, code, code_cap);
	if (cJSON_IsString(m))
		table_clean(m->valuestring, msg, msg_cap);
	cJSON_Delete(doc);
}

/* The one-line message for a call that did not end in 2xx. */
static int describe(struct client *cl, struct call *c, const char *method, const char *path,
		    struct err *err)
{
	char detail[300];
	table_clean(c->error_msg, detail, sizeof detail);
	switch (c->error) {
	case HTTP_OK:
		break;
	case HTTP_ERR_CONNECT:
		return err_set(err, "cannot reach the coordinator at %s: %s (is it running, and is "
				    "SLIPWAY_HOST right?)", cl->base, detail);
	case HTTP_ERR_TLS:
		if (strstr(detail, "name"))
			return err_set(err, "TLS verification of %s failed: %s (the certificate "
					    "was issued for another name: use that name in "
					    "SLIPWAY_HOST)", cl->base, detail);
		return err_set(err, "TLS verification of %s failed: %s. If the coordinator's "
				    "certificate comes from a private CA, set SLIPWAY_CA_FILE to "
				    "that CA's certificate (verification cannot be turned off)",
			       cl->base, detail);
	case HTTP_ERR_TIMEOUT:
		return err_set(err, "%s %s: no answer from %s in time (%s)", method, path, cl->base,
			       detail);
	case HTTP_ERR_TRANSPORT:
		return err_set(err, "%s %s: the connection to %s broke (%s)%s", method, path,
			       cl->base, detail,
			       strncmp(cl->base, "http://", 7) == 0 && c->status == 0
				       ? "; if the coordinator serves TLS, use https://"
				       : "");
	case HTTP_ERR_TOO_LARGE:
		return err_set(err, "%s %s: the answer is larger than %zu MiB", method, path,
			       CLIENT_MAX_ANSWER >> 20);
	default:
		return err_set(err, "%s %s: %s", method, path, detail[0] ? detail : "failed");
	}
	char code[48], msg[400];
	error_doc(c, code, sizeof code, msg, sizeof msg);
	snprintf(cl->code, sizeof cl->code, "%s", code);
	if (!msg[0]) {
		/* Not the coordinator's error document: a proxy or something else. */
		char snippet[120];
		table_clean(c->body.data ? c->body.data : "", snippet, sizeof snippet);
		return err_set(err, "%s %s: HTTP %ld from %s%s%s", method, path, c->status, cl->base,
			       snippet[0] ? ": " : "", snippet);
	}
	if (c->status == 401)
		return err_set(err, "the coordinator refused the API key%s%s: %s (set "
				    "SLIPWAY_API_KEY or run `slipway login`)",
			       cl->key_from ? " from " : "", cl->key_from ? cl->key_from : "", msg);
	if (c->status == 403)
		return err_set(err, "%s (forbidden)", msg);
	if (c->status == 503)
		return err_set(err, "the coordinator is busy: %s; try again", msg);
	if (c->status == 500)
		return err_set(err, "the coordinator failed: %s (HTTP 500, request id %s)", msg,
			       c->request_id[0] ? c->request_id : "?");
	/* Everything else (404 unknown app, 409, 502 gitlab_error ...) is a sentence
	 * written for the user already. */
	return err_set(err, "%s", msg);
}

static int run(struct client *cl, struct call *c, uint64_t id, struct err *err)
{
	while (!c->done) {
		if (client_interrupted) {
			http_client_cancel(cl->http, id);
			return err_set(err, "interrupted");
		}
		ev_run(cl->loop, EVRUN_ONCE);
	}
	return 0;
}

static char *make_url(struct client *cl, const char *path)
{
	size_t n = strlen(cl->base) + strlen(path) + 1;
	char *url = malloc(n);
	if (url)
		snprintf(url, n, "%s%s", cl->base, path);
	return url;
}

struct call_opts {
	const char *method;
	const char *path;
	const char *body;
	size_t body_len;
	const char *body_file;
	const char *content_type;
	int64_t timeout_ms;
	int64_t stall_ms;
	client_data_fn on_data;
	void *arg;
};

/* Runs one request; 0 with c filled for a 2xx answer (or a stopped stream). */
static int perform(struct client *cl, const struct call_opts *o, struct call *c, struct err *err)
{
	memset(c, 0, sizeof *c);
	c->cl = cl;
	c->on_data = o->on_data;
	c->arg = o->arg;
	buf_init(&c->body, CLIENT_MAX_ANSWER);
	cl->status = 0;
	cl->code[0] = cl->request_id[0] = '\0';
	char ctype[128];
	snprintf(ctype, sizeof ctype, "Content-Type: %s",
		 o->content_type ? o->content_type : "application/json");
	const char *headers[6];
	size_t nh = 0;
	if (cl->auth)
		headers[nh++] = cl->auth;
	headers[nh++] = "Slipway-Protocol: 1";
	headers[nh++] = "User-Agent: slipway-cli/" CLI_VERSION;
	headers[nh++] = "Accept: application/json";
	if (o->body || o->body_file)
		headers[nh++] = ctype;
	headers[nh] = NULL;
	char *url = make_url(cl, o->path);
	if (!url)
		return err_set(err, "out of memory");
	int is_get = strcmp(o->method, "GET") == 0;
	struct http_request req = {
		.method = o->method,
		.url = url,
		.headers = headers,
		.body = o->body,
		.body_len = o->body_len,
		.body_file = o->body_file,
		.timeout_ms = o->timeout_ms,
		.stall_timeout_ms = o->stall_ms,
		.max_body = CLIENT_MAX_ANSWER,
		.ca_file = cl->ca_file,
		.retry = is_get ? &get_retry : NULL,
		.should_retry = is_get ? cli_should_retry : NULL,
		.on_data = o->on_data ? call_data : NULL,
		.on_done = call_done,
		.arg = c,
	};
	uint64_t id = http_client_start(cl->http, &req);
	free(url);
	if (id == 0)
		return err_set(err, "%s %s: the request could not be made (bad URL?)", o->method,
			       o->path);
	if (run(cl, c, id, err) < 0)
		return -1;
	cl->status = c->status;
	snprintf(cl->request_id, sizeof cl->request_id, "%s", c->request_id);
	if (c->stopped)
		return 0;
	if (c->error == HTTP_OK && c->status >= 200 && c->status < 300)
		return 0;
	return describe(cl, c, o->method, o->path, err);
}

static int parse_answer(struct call *c, const char *method, const char *path, cJSON **out,
			struct err *err)
{
	if (!out)
		return 0;
	*out = NULL;
	if (c->body.len == 0)
		return 0;
	struct err perr;
	*out = json_parse(c->body.data, c->body.len, CLIENT_MAX_ANSWER, &perr);
	if (!*out)
		return err_set(err, "%s %s: the answer is not valid JSON (%s)", method, path,
			       perr.msg);
	return 0;
}

int client_json(struct client *cl, const char *method, const char *path, const cJSON *body,
		cJSON **out, struct err *err)
{
	if (out)
		*out = NULL;
	char *text = NULL;
	if (body) {
		text = cJSON_PrintUnformatted(body);
		if (!text)
			return err_set(err, "out of memory");
	}
	struct call_opts o = {.method = method, .path = path, .body = text,
			      .body_len = text ? strlen(text) : 0, .timeout_ms = CLIENT_TIMEOUT_MS};
	struct call c;
	int rc = perform(cl, &o, &c, err);
	free(text);
	if (rc == 0)
		rc = parse_answer(&c, method, path, out, err);
	buf_free(&c.body);
	return rc;
}

int client_stream(struct client *cl, const char *path, int64_t stall_ms, client_data_fn on_data,
		  void *arg, struct err *err)
{
	struct call_opts o = {.method = "GET", .path = path, .stall_ms = stall_ms,
			      .on_data = on_data, .arg = arg};
	struct call c;
	int rc = perform(cl, &o, &c, err);
	buf_free(&c.body);
	return rc;
}

int client_upload(struct client *cl, const char *path, const char *file,
		  const char *content_type, cJSON **out, struct err *err)
{
	if (out)
		*out = NULL;
	/* No overall limit (a big context on a slow link); a stalled one fails. */
	struct call_opts o = {.method = "POST", .path = path, .body_file = file,
			      .content_type = content_type, .stall_ms = 120000};
	struct call c;
	int rc = perform(cl, &o, &c, err);
	if (rc == 0)
		rc = parse_answer(&c, "POST", path, out, err);
	buf_free(&c.body);
	return rc;
}

static void on_sleep(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	*(int *)w->data = 1;
}

int client_sleep(struct client *cl, int64_t ms, struct err *err)
{
	int done = 0;
	ev_timer t;
	ev_now_update(cl->loop); /* the loop may have been idle for a while */
	ev_timer_init(&t, on_sleep, (double)ms / 1000.0, 0.0);
	t.data = &done;
	ev_timer_start(cl->loop, &t);
	while (!done && !client_interrupted)
		ev_run(cl->loop, EVRUN_ONCE);
	ev_timer_stop(cl->loop, &t);
	return done ? 0 : err_set(err, "interrupted");
}

int client_escape(char *out, size_t cap, const char *s)
{
	struct buf b;
	buf_init(&b, cap);
	size_t have = strlen(out);
	int rc = buf_append(&b, out, have);
	if (rc == 0)
		rc = http_url_encode(&b, s, strlen(s));
	if (rc == 0 && b.len < cap)
		memcpy(out, b.data, b.len + 1);
	else
		rc = -1;
	buf_free(&b);
	return rc;
}
