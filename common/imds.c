#include "imds.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "clock.h"
#include "http_client.h"
#include "log.h"

#define TOKEN_MAX 4096
#define PATH_MAX_LEN 512

struct imds {
	struct http_client *http;
	char *base;                  /* no trailing '/' */
	int64_t timeout_ms;
	struct backoff_policy retry;
	char *token;                 /* NULL: none yet, or given up */
	int64_t token_until_mono;
	/* the request in flight */
	uint64_t req;
	bool busy;
	bool token_retried;
	char path[PATH_MAX_LEN];
	imds_done_fn done;
	void *arg;
};

static void forget_token(struct imds *m)
{
	if (!m->token)
		return;
	log_redact_remove(m->token);
	explicit_bzero(m->token, strlen(m->token));
	free(m->token);
	m->token = NULL;
}

static void finish(struct imds *m, const char *error, const struct http_response *r)
{
	struct imds_result res = {.error = error, .body = ""};
	if (!error && r) {
		res.status = r->status;
		res.body = r->body;
		res.body_len = r->body_len;
	}
	m->busy = false;
	m->req = 0;
	imds_done_fn done = m->done;
	void *arg = m->arg;
	done(&res, arg);
}

/* "HTTP 403" or the transport error. */
static const char *describe(const struct http_response *r, char *out, size_t cap)
{
	if (r->error != HTTP_OK)
		snprintf(out, cap, "%s", r->error_msg && *r->error_msg ? r->error_msg
								 : http_error_name(r->error));
	else
		snprintf(out, cap, "HTTP %ld", r->status);
	return out;
}

static void on_get(const struct http_response *r, void *arg);
static void on_token(const struct http_response *r, void *arg);

static int start(struct imds *m, const char *method, const char *path, const char *header,
		 http_done_fn done)
{
	char url[1024];
	if (snprintf(url, sizeof url, "%s%s", m->base, path) >= (int)sizeof url)
		return -1;
	const char *headers[] = {header, NULL};
	struct http_request req = {
		.method = method,
		.url = url,
		.headers = headers,
		.timeout_ms = m->timeout_ms,
		.connect_timeout_ms = m->timeout_ms,
		.max_body = IMDS_BODY_MAX,
		.retry = &m->retry,
		.on_done = done,
		.arg = m,
	};
	m->req = http_client_start(m->http, &req);
	return m->req ? 0 : -1;
}

static int send_get(struct imds *m)
{
	char header[TOKEN_MAX + 64];
	snprintf(header, sizeof header, "X-aws-ec2-metadata-token: %s", m->token);
	int rc = start(m, "GET", m->path, header, on_get);
	explicit_bzero(header, sizeof header);
	return rc;
}

static int send_token(struct imds *m)
{
	char header[80];
	snprintf(header, sizeof header, "X-aws-ec2-metadata-token-ttl-seconds: %d",
		 IMDS_TOKEN_TTL_S);
	return start(m, "PUT", "/latest/api/token", header, on_token);
}

static void on_get(const struct http_response *r, void *arg)
{
	struct imds *m = arg;
	m->req = 0;
	if (r->error == HTTP_OK && r->status == 401 && !m->token_retried) {
		/* Our token is no longer accepted: a new one, once. */
		m->token_retried = true;
		forget_token(m);
		if (send_token(m) < 0)
			finish(m, "could not start a request", NULL);
		return;
	}
	char why[256];
	finish(m, r->error != HTTP_OK ? describe(r, why, sizeof why) : NULL, r);
}

static void on_token(const struct http_response *r, void *arg)
{
	struct imds *m = arg;
	m->req = 0;
	char why[256], msg[300];
	if (r->error != HTTP_OK || r->status != 200) {
		snprintf(msg, sizeof msg, "session token: %s", describe(r, why, sizeof why));
		finish(m, msg, NULL);
		return;
	}
	size_t n = r->body_len;
	while (n > 0 && (r->body[n - 1] == '\n' || r->body[n - 1] == '\r'))
		n--;
	if (n == 0 || n > TOKEN_MAX) {
		finish(m, "session token: empty or too long", NULL);
		return;
	}
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)r->body[i];
		if (c <= 0x20 || c == 0x7f) {
			finish(m, "session token: malformed", NULL);
			return;
		}
	}
	forget_token(m);
	if (!(m->token = strndup(r->body, n))) {
		finish(m, "out of memory", NULL);
		return;
	}
	log_redact_add(m->token);
	/* Reused for its TTL, less a minute of margin. */
	m->token_until_mono = clock_mono_ms() + (IMDS_TOKEN_TTL_S - 60) * 1000LL;
	if (send_get(m) < 0)
		finish(m, "could not start a request", NULL);
}

int imds_get(struct imds *m, const char *path, imds_done_fn done, void *arg)
{
	if (!m || m->busy || !path || path[0] != '/' || !done ||
	    strlen(path) >= sizeof m->path || strpbrk(path, " \r\n"))
		return -1;
	snprintf(m->path, sizeof m->path, "%s", path);
	m->done = done;
	m->arg = arg;
	m->token_retried = false;
	int rc;
	if (m->token && clock_mono_ms() < m->token_until_mono) {
		rc = send_get(m);
	} else {
		forget_token(m);
		rc = send_token(m);
	}
	if (rc < 0)
		return -1;
	m->busy = true;
	return 0;
}

void imds_cancel(struct imds *m)
{
	if (!m || !m->busy)
		return;
	if (m->req)
		http_client_cancel(m->http, m->req);
	m->req = 0;
	m->busy = false;
}

bool imds_disabled(void)
{
	const char *v = getenv("AWS_EC2_METADATA_DISABLED");
	return v && strcasecmp(v, "true") == 0;
}

const char *imds_endpoint(const struct imds *m)
{
	return m->base;
}

struct imds *imds_new(struct http_client *http, const struct imds_opts *opts, struct err *err)
{
	static const struct imds_opts none;
	if (!opts)
		opts = &none;
	if (!http) {
		err_set(err, "imds: an HTTP client is required");
		return NULL;
	}
	struct imds *m = calloc(1, sizeof *m);
	const char *env = getenv("AWS_EC2_METADATA_SERVICE_ENDPOINT");
	const char *ep = opts->endpoint ? opts->endpoint
			 : env && *env ? env : IMDS_DEFAULT_ENDPOINT;
	if (!m || !(m->base = strdup(ep))) {
		free(m);
		err_set(err, "imds: out of memory");
		return NULL;
	}
	size_t n = strlen(m->base);
	while (n > 0 && m->base[n - 1] == '/')
		m->base[--n] = '\0';
	if (strncmp(m->base, "http://", 7) != 0 && strncmp(m->base, "https://", 8) != 0) {
		err_set(err, "IMDS endpoint '%s' is not an http(s) URL", m->base);
		imds_free(m);
		return NULL;
	}
	m->http = http;
	m->timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : IMDS_DEFAULT_TIMEOUT_MS;
	m->retry = opts->retry ? *opts->retry : (struct backoff_policy){100, 1000, 3};
	return m;
}

void imds_free(struct imds *m)
{
	if (!m)
		return;
	imds_cancel(m);
	forget_token(m);
	free(m->base);
	free(m);
}
