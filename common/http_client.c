/*
 * http_client: libcurl's multi-socket API on a libev loop (see http_client.h).
 *
 * Every entry from the loop (socket readiness, curl's timer, a call's start or
 * backoff timer, a call's stall timer) goes through enter()/leave(). While one
 * is on the stack, a cancelled call is only marked and parked in the graveyard
 * (curl forbids removing a handle from inside its callbacks, and our own code
 * may still hold the call); leave() reaps the graveyard, and performs a
 * deferred http_client_free, once the outermost entry returns.
 *
 * Attempts never start inside http_client_start: each call has a timer that
 * fires at once for the first attempt and after the backoff delay for the
 * others, so on_done can never run synchronously and `prepare` always runs on
 * a clean stack.
 *
 * Pausing (flow control for streams) uses curl_easy_pause, which curl allows
 * inside its own callbacks: a pause asked for inside on_data takes effect at
 * once, and anything curl still delivers in that same read is refused with
 * CURL_WRITEFUNC_PAUSE, which makes curl keep it for later. Resuming may make
 * curl deliver the kept bytes at once, so it never runs in the caller's stack:
 * a zero timer of the client resumes every call waiting for it and then kicks
 * the multi handle (curl_multi_socket_action with CURL_SOCKET_TIMEOUT), as the
 * multi-socket API wants after an unpause.
 *
 * stall_timeout_ms is our own lazy ev_timer rather than CURLOPT_LOW_SPEED_*
 * (whole seconds only): any byte received, or body byte handed to curl, counts
 * as activity. Request bodies, in memory or body_file, go through a read
 * callback with a seek callback, so every attempt (and curl's own rewinds)
 * sends them from the start.
 */
#include "http_client.h"

#include <curl/curl.h>
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <mbedtls/ssl.h>
#include <mbedtls/version.h>
#include <mbedtls/x509_crt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clock.h"

#define HEADERS_MAX ((size_t)64 << 10) /* response header lines of one answer */
#define PREPARE_MAX ((size_t)64 << 10) /* headers `prepare` may add */

#ifndef CURL_WRITEFUNC_ERROR
#define CURL_WRITEFUNC_ERROR 0xFFFFFFFF
#endif

struct http_sock {
	ev_io io;
	struct http_client *client;
	struct http_sock *prev, *next;
};

struct http_call {
	struct http_client *client;
	struct http_call *prev, *next; /* in client->calls, or client->graveyard */
	uint64_t id;
	CURL *easy;
	int in_multi;
	int cancelled;
	bool paused;         /* the caller wants no data now */
	bool curl_paused;    /* curl holds the receiving side */
	bool resume_pending; /* the client's resume timer will lift curl's pause */

	/* the request, copied */
	struct curl_slist *base_headers;
	char *body;
	size_t body_len;
	char *body_file;
	int has_body;
	int has_content_type;
	double stall_s;
	size_t max_body;
	struct backoff_policy retry;
	int has_retry;
	http_retry_fn should_retry;
	http_prepare_fn prepare;
	http_data_fn on_data;
	http_done_fn on_done;
	void *arg;
	int64_t started_ms;

	/* the current attempt */
	int attempt;
	ev_timer delay;    /* starts the next attempt */
	ev_timer stall;
	ev_tstamp last_activity;
	struct curl_slist *attempt_headers;
	int body_fd;
	size_t body_off;
	long status;
	size_t header_bytes;
	struct buf hdrs;   /* "name\0value\0" per header of the latest answer */
	size_t hdr_count;
	struct buf body_buf;
	int streaming;     /* -1 until the first body byte, then 0 or 1 */
	int streamed;      /* on_data has seen data: no retry any more */
	enum http_error abort_error; /* why one of our callbacks stopped curl */
	char abort_msg[128];
	char curl_err[CURL_ERROR_SIZE];
	char msg[CURL_ERROR_SIZE + 64];
};

struct http_client {
	struct ev_loop *loop;
	CURLM *multi;
	ev_timer timer;               /* curl's one timeout */
	ev_timer resume;              /* lifts curl's pause of calls resumed meanwhile */
	struct http_call *calls;      /* started, not done, not cancelled */
	struct http_call *graveyard;  /* cancelled while an entry was on the stack */
	struct http_sock *socks;
	size_t pending;
	uint64_t next_id;
	int depth;
	int free_requested;
};

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc;
static const char *default_ca_file; /* NULL: libcurl's own default */

/* Where distributions keep their CA bundle. The static agent's libcurl
 * (cross/) has no default compiled in, so it uses the first of these present
 * at run time and one binary works on Debian, Amazon Linux, Alpine alike. */
static const char *const ca_bundles[] = {
	"/etc/ssl/certs/ca-certificates.crt",                /* Debian, Ubuntu, Alpine */
	"/etc/pki/tls/certs/ca-bundle.crt",                  /* Amazon Linux, Fedora, RHEL */
	"/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", /* RHEL, CentOS */
	"/etc/ssl/ca-bundle.pem",                            /* openSUSE */
	"/etc/ssl/cert.pem",                                 /* Alpine, the BSDs */
};

/* A libcurl on our own mbedTLS (the static agent) would parse the CA file
 * again for every connection: some 300 KB for a system bundle, times every
 * connection open (the log shipper keeps one per stream in flight). There each
 * file is parsed once, on first use, and handed to every connection through
 * CURLOPT_SSL_CTX_FUNCTION. Parsed chains stay until exit (connections may
 * hold them to the end), so a changed file is read again at the next start. */
struct ca_chain {
	struct ca_chain *next;
	mbedtls_x509_crt crt;
	char path[];
};
static int share_ca_chains;
static pthread_mutex_t ca_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ca_chain *ca_chains;

/* The parsed chain of `path`, or NULL when it cannot be read (curl then reads
 * it itself and reports the error). */
static mbedtls_x509_crt *ca_chain_get(const char *path)
{
	pthread_mutex_lock(&ca_lock);
	struct ca_chain *c = ca_chains;
	while (c && strcmp(c->path, path) != 0)
		c = c->next;
	if (!c && (c = calloc(1, sizeof *c + strlen(path) + 1))) {
		memcpy(c->path, path, strlen(path) + 1);
		mbedtls_x509_crt_init(&c->crt);
		if (mbedtls_x509_crt_parse_file(&c->crt, path) < 0) { /* > 0: some skipped, as curl */
			mbedtls_x509_crt_free(&c->crt);
			free(c);
			c = NULL;
		} else {
			c->next = ca_chains;
			ca_chains = c;
		}
	}
	pthread_mutex_unlock(&ca_lock);
	return c ? &c->crt : NULL;
}

static CURLcode use_ca_chain(CURL *easy, void *ssl_config, void *chain)
{
	(void)easy;
	mbedtls_ssl_conf_ca_chain(ssl_config, chain, NULL);
	return CURLE_OK;
}

static void global_init(void)
{
	global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
	const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
	share_ca_chains = v->ssl_version &&
			  strcmp(v->ssl_version, "mbedTLS/" MBEDTLS_VERSION_STRING) == 0;
	if (v->age >= CURLVERSION_NINTH && (v->cainfo || v->capath))
		return;
	for (size_t i = 0; i < sizeof ca_bundles / sizeof ca_bundles[0]; i++) {
		if (access(ca_bundles[i], R_OK) == 0) {
			default_ca_file = ca_bundles[i];
			return;
		}
	}
}

/* ---- lists ---- */

static void list_push(struct http_call **head, struct http_call *call)
{
	call->prev = NULL;
	call->next = *head;
	if (*head)
		(*head)->prev = call;
	*head = call;
}

static void list_unlink(struct http_call **head, struct http_call *call)
{
	if (call->prev)
		call->prev->next = call->next;
	else
		*head = call->next;
	if (call->next)
		call->next->prev = call->prev;
	call->prev = call->next = NULL;
}

/* ---- call lifetime ---- */

static void close_body_file(struct http_call *call)
{
	if (call->body_fd >= 0) {
		close(call->body_fd);
		call->body_fd = -1;
	}
}

static void destroy_call(struct http_call *call)
{
	struct http_client *c = call->client;
	ev_timer_stop(c->loop, &call->delay);
	ev_timer_stop(c->loop, &call->stall);
	if (call->in_multi)
		curl_multi_remove_handle(c->multi, call->easy);
	if (call->easy)
		curl_easy_cleanup(call->easy);
	curl_slist_free_all(call->base_headers);
	curl_slist_free_all(call->attempt_headers);
	close_body_file(call);
	buf_free(&call->hdrs);
	buf_free(&call->body_buf);
	free(call->body);
	free(call->body_file);
	free(call);
}

/* curl closes the oldest idle connection when a finished transfer brings
 * its cache over CURLMOPT_MAXCONNECTS. The finishing call still counts in
 * pending then, so with one connection per other call in flight this keeps
 * at most HTTP_IDLE_CONNECTIONS_MAX idle. curl refuses the option inside
 * its callbacks; the next change of pending sets it. */
static void set_pending(struct http_client *c, size_t pending)
{
	c->pending = pending;
	curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS,
			  (long)(pending + HTTP_IDLE_CONNECTIONS_MAX - 1));
}

static void cancel_call(struct http_call *call)
{
	struct http_client *c = call->client;
	list_unlink(&c->calls, call);
	set_pending(c, c->pending - 1);
	call->cancelled = 1;
	ev_timer_stop(c->loop, &call->delay);
	ev_timer_stop(c->loop, &call->stall);
	if (c->depth > 0)
		list_push(&c->graveyard, call);
	else
		destroy_call(call);
}

static void destroy_client(struct http_client *c)
{
	while (c->calls)
		cancel_call(c->calls);
	while (c->graveyard) {
		struct http_call *call = c->graveyard;
		list_unlink(&c->graveyard, call);
		destroy_call(call);
	}
	/* curl may still report sockets and timers while it closes connections. */
	curl_multi_cleanup(c->multi);
	ev_timer_stop(c->loop, &c->timer);
	ev_timer_stop(c->loop, &c->resume);
	while (c->socks) {
		struct http_sock *s = c->socks;
		c->socks = s->next;
		ev_io_stop(c->loop, &s->io);
		free(s);
	}
	free(c);
}

static void enter(struct http_client *c)
{
	c->depth++;
}

static void leave(struct http_client *c)
{
	if (--c->depth > 0)
		return;
	while (c->graveyard) {
		struct http_call *call = c->graveyard;
		list_unlink(&c->graveyard, call);
		destroy_call(call);
	}
	if (c->free_requested)
		destroy_client(c);
}

/* ---- errors ---- */

const char *http_error_name(enum http_error err)
{
	switch (err) {
	case HTTP_OK: return "ok";
	case HTTP_ERR_CONNECT: return "connect";
	case HTTP_ERR_TRANSPORT: return "transport";
	case HTTP_ERR_TIMEOUT: return "timeout";
	case HTTP_ERR_TLS: return "tls";
	case HTTP_ERR_TOO_LARGE: return "too large";
	case HTTP_ERR_ABORTED: return "aborted";
	case HTTP_ERR_INTERNAL: return "internal";
	}
	return "unknown";
}

static enum http_error map_curl_error(CURLcode rc)
{
	switch (rc) {
	case CURLE_OK:
		return HTTP_OK;
	case CURLE_COULDNT_CONNECT:
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_RESOLVE_PROXY:
		return HTTP_ERR_CONNECT;
	case CURLE_OPERATION_TIMEDOUT:
		return HTTP_ERR_TIMEOUT;
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CIPHER:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_CRL_BADFILE:
	case CURLE_SSL_ISSUER_ERROR:
	case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
	case CURLE_SSL_INVALIDCERTSTATUS:
	case CURLE_SSL_SHUTDOWN_FAILED:
	case CURLE_SSL_ENGINE_NOTFOUND:
	case CURLE_SSL_ENGINE_SETFAILED:
	case CURLE_SSL_ENGINE_INITFAILED:
	case CURLE_USE_SSL_FAILED:
		return HTTP_ERR_TLS;
	case CURLE_ABORTED_BY_CALLBACK:
		return HTTP_ERR_ABORTED;
	case CURLE_OUT_OF_MEMORY:
	case CURLE_URL_MALFORMAT:
	case CURLE_BAD_FUNCTION_ARGUMENT:
	case CURLE_FAILED_INIT:
	case CURLE_NOT_BUILT_IN:
	case CURLE_UNKNOWN_OPTION:
	case CURLE_READ_ERROR:
		return HTTP_ERR_INTERNAL;
	default:
		/* RECV/SEND_ERROR, GOT_NOTHING, PARTIAL_FILE, WEIRD_SERVER_REPLY, ... */
		return HTTP_ERR_TRANSPORT;
	}
}

static void set_abort(struct http_call *call, enum http_error e, const char *msg)
{
	if (call->abort_error != HTTP_OK)
		return;
	call->abort_error = e;
	snprintf(call->abort_msg, sizeof call->abort_msg, "%s", msg);
}

/* ---- responses and retries ---- */

const char *http_response_header(const struct http_response *resp, const char *name)
{
	for (size_t i = 0; i < resp->header_count; i++) {
		if (strcasecmp(resp->headers[i].name, name) == 0)
			return resp->headers[i].value;
	}
	return NULL;
}

int http_default_should_retry(const struct http_response *resp)
{
	switch (resp->error) {
	case HTTP_ERR_CONNECT:
	case HTTP_ERR_TRANSPORT:
	case HTTP_ERR_TIMEOUT:
		return 1;
	case HTTP_OK:
		switch (resp->status) {
		case 408: case 429: case 500: case 502: case 503: case 504:
			return 1;
		}
		return 0;
	default:
		return 0;
	}
}

/* Milliseconds the server asked us to wait, or -1 when it did not say (or said
 * something unreadable). Retry-After is delay-seconds or an HTTP-date. */
static int64_t retry_after_ms(const struct http_response *resp)
{
	const char *v = http_response_header(resp, "Retry-After");
	if (!v || !*v)
		return -1;
	if (strspn(v, "0123456789") == strlen(v)) {
		int64_t secs = 0;
		for (const char *p = v; *p; p++) {
			secs = secs * 10 + (*p - '0');
			if (secs > 100000000)
				break; /* far beyond any cap; stop before overflow */
		}
		return secs * 1000;
	}
	time_t when = curl_getdate(v, NULL);
	if (when == (time_t)-1)
		return -1;
	int64_t delay = (int64_t)when * 1000 - clock_wall_ms();
	return delay < 0 ? 0 : delay;
}

static int64_t retry_delay_ms(const struct http_call *call, const struct http_response *resp)
{
	int64_t server = retry_after_ms(resp);
	if (server < 0)
		return backoff_delay(&call->retry, call->attempt);
	int64_t cap = call->retry.cap_ms > 0 ? call->retry.cap_ms : call->retry.base_ms;
	int64_t limit = cap > 0 ? cap * 4 : 0;
	return server < limit ? server : limit;
}

/* Fills resp from the finished attempt; *hdrs is allocated for the header array. */
static void build_response(struct http_call *call, enum http_error error, const char *detail,
			   struct http_response *resp, struct http_header **hdrs)
{
	memset(resp, 0, sizeof *resp);
	resp->error = error;
	if (error == HTTP_OK) {
		call->msg[0] = '\0';
	} else {
		snprintf(call->msg, sizeof call->msg, "%s: %s", http_error_name(error),
			 detail && *detail ? detail : "failed");
	}
	resp->error_msg = call->msg;
	resp->status = call->status;
	if (call->streaming == 1 || !call->body_buf.data) {
		resp->body = "";
		resp->body_len = 0;
	} else {
		resp->body = call->body_buf.data;
		resp->body_len = call->body_buf.len;
	}
	*hdrs = NULL;
	if (call->hdr_count > 0)
		*hdrs = calloc(call->hdr_count, sizeof **hdrs);
	if (*hdrs) {
		const char *p = call->hdrs.data;
		for (size_t i = 0; i < call->hdr_count; i++) {
			(*hdrs)[i].name = p;
			p += strlen(p) + 1;
			(*hdrs)[i].value = p;
			p += strlen(p) + 1;
		}
		resp->header_count = call->hdr_count;
	}
	resp->headers = *hdrs;
	resp->attempts = call->attempt;
	resp->elapsed_ms = clock_mono_ms() - call->started_ms;
}

/* The attempt is over and its easy handle is out of the multi: retry or deliver. */
static void conclude(struct http_call *call, enum http_error error, const char *detail)
{
	struct http_client *c = call->client;
	ev_timer_stop(c->loop, &call->stall);
	call->curl_paused = call->resume_pending = false; /* a next attempt starts afresh */
	close_body_file(call);
	curl_easy_setopt(call->easy, CURLOPT_HTTPHEADER, NULL);
	curl_slist_free_all(call->attempt_headers);
	call->attempt_headers = NULL;

	struct http_response resp;
	struct http_header *hdrs;
	build_response(call, error, detail, &resp, &hdrs);

	if (call->has_retry && !call->streamed && error != HTTP_ERR_INTERNAL &&
	    backoff_may_retry(&call->retry, call->attempt)) {
		int again = call->should_retry ? call->should_retry(&resp, call->arg)
					       : http_default_should_retry(&resp);
		if (call->cancelled) { /* should_retry cancelled it; leave() reaps it */
			free(hdrs);
			return;
		}
		if (again) {
			int64_t delay = retry_delay_ms(call, &resp);
			free(hdrs);
			ev_timer_set(&call->delay, (double)delay / 1000.0, 0.0);
			ev_timer_start(c->loop, &call->delay);
			return;
		}
	}
	list_unlink(&c->calls, call);
	set_pending(c, c->pending - 1);
	call->on_done(&resp, call->arg);
	free(hdrs);
	destroy_call(call);
}

/* ---- curl callbacks (inside curl: never remove handles or call on_done here) ---- */

static void touch(struct http_call *call)
{
	call->last_activity = ev_now(call->client->loop);
}

static size_t on_curl_header(char *data, size_t size, size_t n, void *userp)
{
	struct http_call *call = userp;
	size_t len = size * n;
	if (call->cancelled)
		return 0;
	touch(call);
	if (len >= 5 && memcmp(data, "HTTP/", 5) == 0) {
		/* A new answer (after 1xx, or the only one): only the last one counts. */
		buf_reset(&call->hdrs);
		call->hdr_count = 0;
		call->header_bytes = len;
		call->status = 0;
		const char *sp = memchr(data, ' ', len);
		if (sp) {
			long st = 0;
			for (const char *p = sp + 1; p < data + len && *p >= '0' && *p <= '9'; p++)
				st = st * 10 + (*p - '0');
			if (st < 1000)
				call->status = st;
		}
		return len;
	}
	call->header_bytes += len;
	if (call->header_bytes > HEADERS_MAX) {
		set_abort(call, HTTP_ERR_TRANSPORT, "response headers over 64 KiB");
		return 0;
	}
	size_t end = len;
	while (end > 0 && (data[end - 1] == '\r' || data[end - 1] == '\n'))
		end--;
	const char *colon = memchr(data, ':', end);
	if (!colon || colon == data)
		return len; /* the blank line ending the block, or a line we cannot use */
	size_t name_len = (size_t)(colon - data);
	const char *v = colon + 1, *v_end = data + end;
	while (v < v_end && (*v == ' ' || *v == '\t'))
		v++;
	while (v_end > v && (v_end[-1] == ' ' || v_end[-1] == '\t'))
		v_end--;
	if (memchr(data, '\0', end)) {
		set_abort(call, HTTP_ERR_TRANSPORT, "NUL byte in a response header");
		return 0;
	}
	size_t old = call->hdrs.len;
	if (buf_append(&call->hdrs, data, name_len) < 0 || buf_append_byte(&call->hdrs, '\0') < 0 ||
	    buf_append(&call->hdrs, v, (size_t)(v_end - v)) < 0 ||
	    buf_append_byte(&call->hdrs, '\0') < 0) {
		call->hdrs.len = old;
		set_abort(call, HTTP_ERR_INTERNAL, "out of memory for response headers");
		return 0;
	}
	call->hdr_count++;
	return len;
}

static size_t on_curl_write(char *data, size_t size, size_t n, void *userp)
{
	struct http_call *call = userp;
	size_t len = size * n;
	if (call->cancelled)
		return CURL_WRITEFUNC_ERROR;
	if (call->paused) {
		/* Read before the pause took hold: curl keeps it until the resume. */
		call->curl_paused = true;
		return CURL_WRITEFUNC_PAUSE;
	}
	touch(call);
	if (call->streaming < 0)
		call->streaming = call->on_data && call->status >= 200 && call->status < 300;
	if (call->streaming) {
		if (len == 0)
			return 0;
		call->streamed = 1;
		int rc = call->on_data(data, len, call->arg);
		if (call->cancelled)
			return CURL_WRITEFUNC_ERROR;
		if (rc < 0) {
			set_abort(call, HTTP_ERR_ABORTED, "on_data stopped the transfer");
			return CURL_WRITEFUNC_ERROR;
		}
		return len;
	}
	if (len > call->max_body - call->body_buf.len) {
		char msg[96];
		snprintf(msg, sizeof msg, "response body over %zu bytes", call->max_body);
		set_abort(call, HTTP_ERR_TOO_LARGE, msg);
		return CURL_WRITEFUNC_ERROR;
	}
	if (buf_append(&call->body_buf, data, len) < 0) {
		set_abort(call, HTTP_ERR_INTERNAL, "out of memory for the response body");
		return CURL_WRITEFUNC_ERROR;
	}
	return len;
}

static size_t on_curl_read(char *dst, size_t size, size_t n, void *userp)
{
	struct http_call *call = userp;
	size_t want = size * n;
	if (call->cancelled)
		return CURL_READFUNC_ABORT;
	touch(call);
	if (call->body_fd >= 0) {
		ssize_t got;
		do
			got = read(call->body_fd, dst, want);
		while (got < 0 && errno == EINTR);
		if (got < 0) {
			char msg[96];
			snprintf(msg, sizeof msg, "reading body_file: %s", strerror(errno));
			set_abort(call, HTTP_ERR_INTERNAL, msg);
			return CURL_READFUNC_ABORT;
		}
		return (size_t)got;
	}
	size_t left = call->body_len - call->body_off;
	if (want > left)
		want = left;
	if (want)
		memcpy(dst, call->body + call->body_off, want);
	call->body_off += want;
	return want;
}

/* curl rewinds the body when it must send it again on a fresh connection. */
static int on_curl_seek(void *userp, curl_off_t offset, int origin)
{
	struct http_call *call = userp;
	if (origin != SEEK_SET || offset < 0)
		return CURL_SEEKFUNC_CANTSEEK;
	if (call->body_fd >= 0)
		return lseek(call->body_fd, (off_t)offset, SEEK_SET) < 0 ? CURL_SEEKFUNC_FAIL
									 : CURL_SEEKFUNC_OK;
	if ((size_t)offset > call->body_len)
		return CURL_SEEKFUNC_FAIL;
	call->body_off = (size_t)offset;
	return CURL_SEEKFUNC_OK;
}

/* ---- driving curl from libev ---- */

static void process_done(struct http_client *c)
{
	CURLMsg *m;
	int left;
	while (!c->free_requested && (m = curl_multi_info_read(c->multi, &left))) {
		if (m->msg != CURLMSG_DONE)
			continue;
		CURL *easy = m->easy_handle;
		CURLcode rc = m->data.result; /* m dies with the handle's removal */
		char *priv = NULL;
		curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv);
		struct http_call *call = (struct http_call *)(void *)priv;
		curl_multi_remove_handle(c->multi, easy);
		call->in_multi = 0;
		if (call->cancelled)
			continue;
		if (call->abort_error != HTTP_OK) {
			conclude(call, call->abort_error, call->abort_msg);
		} else if (rc != CURLE_OK) {
			const char *detail = call->curl_err[0] ? call->curl_err : curl_easy_strerror(rc);
			conclude(call, map_curl_error(rc), detail);
		} else {
			if (call->status == 0) {
				long st = 0;
				curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &st);
				call->status = st;
			}
			conclude(call, HTTP_OK, NULL);
		}
	}
}

static void drive(struct http_client *c, curl_socket_t fd, int action)
{
	int running = 0;
	enter(c);
	curl_multi_socket_action(c->multi, fd, action, &running);
	process_done(c);
	leave(c);
}

static void on_io(struct ev_loop *loop, ev_io *w, int revents)
{
	(void)loop;
	struct http_sock *s = (struct http_sock *)w;
	int action = (revents & EV_READ ? CURL_CSELECT_IN : 0) |
		     (revents & EV_WRITE ? CURL_CSELECT_OUT : 0);
	drive(s->client, w->fd, action);
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	struct http_client *c = (struct http_client *)((char *)w - offsetof(struct http_client, timer));
	drive(c, CURL_SOCKET_TIMEOUT, 0);
}

static int curl_socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	(void)easy;
	struct http_client *c = userp;
	struct http_sock *s = socketp;
	if (what == CURL_POLL_REMOVE) {
		if (s) {
			ev_io_stop(c->loop, &s->io);
			if (s->prev)
				s->prev->next = s->next;
			else
				c->socks = s->next;
			if (s->next)
				s->next->prev = s->prev;
			free(s);
			curl_multi_assign(c->multi, fd, NULL);
		}
		return 0;
	}
	int events = (what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0);
	if (!s) {
		s = calloc(1, sizeof *s);
		if (!s)
			return -1;
		s->client = c;
		s->next = c->socks;
		if (c->socks)
			c->socks->prev = s;
		c->socks = s;
		ev_io_init(&s->io, on_io, fd, events);
		curl_multi_assign(c->multi, fd, s);
	} else {
		ev_io_stop(c->loop, &s->io);
		ev_io_set(&s->io, fd, events);
	}
	ev_io_start(c->loop, &s->io);
	return 0;
}

static int curl_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
	(void)multi;
	struct http_client *c = userp;
	ev_timer_stop(c->loop, &c->timer);
	if (timeout_ms >= 0) {
		/* Never call curl from here: a zero timeout fires on the next iteration. */
		ev_timer_set(&c->timer, (double)timeout_ms / 1000.0, 0.0);
		ev_timer_start(c->loop, &c->timer);
	}
	return 0;
}

/* Lifts curl's pause of every call resumed since the timer was armed. A call
 * is looked up from the head each time: the data curl hands over on resuming
 * reaches on_data, which may cancel or finish calls. */
static void on_resume(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	struct http_client *c = (struct http_client *)((char *)w - offsetof(struct http_client, resume));
	enter(c);
	for (;;) {
		struct http_call *call = c->calls;
		while (call && !call->resume_pending)
			call = call->next;
		if (!call || c->free_requested)
			break;
		call->resume_pending = false;
		if (call->paused || !call->curl_paused)
			continue;
		call->curl_paused = false;
		touch(call);
		if (!call->in_multi)
			continue;
		CURLcode rc = curl_easy_pause(call->easy, CURLPAUSE_CONT);
		if (rc != CURLE_OK && !call->cancelled && !call->curl_paused) {
			/* on_data refused the held data (or curl failed): end the attempt. */
			curl_multi_remove_handle(c->multi, call->easy);
			call->in_multi = 0;
			conclude(call, call->abort_error != HTTP_OK ? call->abort_error
								   : map_curl_error(rc),
				 call->abort_error != HTTP_OK ? call->abort_msg
							      : curl_easy_strerror(rc));
		}
	}
	if (!c->free_requested) {
		int running = 0;
		curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
		process_done(c);
	}
	leave(c);
}

/* ---- attempts ---- */

static int header_named(const char *line, const char *name)
{
	size_t n = strlen(name);
	return strncasecmp(line, name, n) == 0 && (line[n] == ':' || line[n] == ';');
}

/* Appends the lines of `extra` ("Name: value\r\n"...) to *list; -1 on a bad line. */
static int add_prepared(struct curl_slist **list, const struct buf *extra, int *has_ctype)
{
	const char *p = extra->data ? extra->data : "";
	const char *end = p + extra->len;
	while (p < end) {
		const char *eol = memchr(p, '\n', (size_t)(end - p));
		const char *line_end = eol ? eol : end;
		const char *text_end = line_end;
		if (text_end > p && text_end[-1] == '\r')
			text_end--;
		size_t n = (size_t)(text_end - p);
		if (n > 0) {
			if (memchr(p, '\r', n) || memchr(p, '\0', n) || !memchr(p, ':', n))
				return -1;
			char *line = strndup(p, n);
			if (!line)
				return -1;
			if (header_named(line, "Content-Type"))
				*has_ctype = 1;
			struct curl_slist *next = curl_slist_append(*list, line);
			free(line);
			if (!next)
				return -1;
			*list = next;
		}
		p = eol ? eol + 1 : end;
	}
	return 0;
}

static void begin_attempt(struct http_call *call)
{
	struct http_client *c = call->client;
	call->attempt++;
	call->status = 0;
	call->header_bytes = 0;
	call->hdr_count = 0;
	buf_reset(&call->hdrs);
	buf_reset(&call->body_buf);
	call->streaming = -1;
	call->abort_error = HTTP_OK;
	call->abort_msg[0] = '\0';
	call->curl_err[0] = '\0';
	call->body_off = 0;

	struct curl_slist *list = NULL;
	int has_ctype = call->has_content_type;
	for (struct curl_slist *h = call->base_headers; h; h = h->next) {
		struct curl_slist *next = curl_slist_append(list, h->data);
		if (!next)
			goto oom;
		list = next;
	}
	if (call->prepare) {
		struct buf extra;
		buf_init(&extra, PREPARE_MAX);
		int rc = call->prepare(&extra, call->attempt, call->arg);
		if (call->cancelled) {
			buf_free(&extra);
			curl_slist_free_all(list);
			return;
		}
		if (rc < 0 || add_prepared(&list, &extra, &has_ctype) < 0) {
			buf_free(&extra);
			curl_slist_free_all(list);
			conclude(call, HTTP_ERR_INTERNAL,
				 rc < 0 ? "prepare failed" : "prepare added a malformed header");
			return;
		}
		buf_free(&extra);
	}
	/* No "Expect: 100-continue" round trip; no made-up form Content-Type. */
	struct curl_slist *next = curl_slist_append(list, "Expect:");
	if (!next)
		goto oom;
	list = next;
	if (call->has_body && !has_ctype) {
		next = curl_slist_append(list, "Content-Type:");
		if (!next)
			goto oom;
		list = next;
	}
	call->attempt_headers = list;
	curl_easy_setopt(call->easy, CURLOPT_HTTPHEADER, list);

	if (call->body_file) {
		call->body_fd = open(call->body_file, O_RDONLY | O_CLOEXEC);
		struct stat st;
		if (call->body_fd < 0 || fstat(call->body_fd, &st) < 0) {
			char msg[CURL_ERROR_SIZE];
			snprintf(msg, sizeof msg, "body_file %s: %s", call->body_file, strerror(errno));
			conclude(call, HTTP_ERR_INTERNAL, msg);
			return;
		}
		curl_easy_setopt(call->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)st.st_size);
	}
	if (curl_multi_add_handle(c->multi, call->easy) != CURLM_OK) {
		conclude(call, HTTP_ERR_INTERNAL, "curl_multi_add_handle failed");
		return;
	}
	call->in_multi = 1;
	if (call->stall_s > 0) {
		touch(call);
		ev_timer_set(&call->stall, call->stall_s, 0.0);
		ev_timer_start(c->loop, &call->stall);
	}
	return;
oom:
	curl_slist_free_all(list);
	conclude(call, HTTP_ERR_INTERNAL, "out of memory");
}

static void on_delay(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	struct http_call *call = (struct http_call *)((char *)w - offsetof(struct http_call, delay));
	struct http_client *c = call->client;
	enter(c);
	begin_attempt(call);
	leave(c);
}

/* Lazy inactivity timer: data only records the time, the timer re-arms itself. */
static void on_stall(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)revents;
	struct http_call *call = (struct http_call *)((char *)w - offsetof(struct http_call, stall));
	struct http_client *c = call->client;
	if (call->paused)
		touch(call); /* holding back is not stalling */
	ev_tstamp idle = ev_now(loop) - call->last_activity;
	if (idle < call->stall_s) {
		ev_timer_set(w, call->stall_s - idle, 0.0);
		ev_timer_start(loop, w);
		return;
	}
	enter(c);
	curl_multi_remove_handle(c->multi, call->easy);
	call->in_multi = 0;
	char msg[64];
	snprintf(msg, sizeof msg, "no data for %lld ms", (long long)(call->stall_s * 1000.0 + 0.5));
	conclude(call, HTTP_ERR_TIMEOUT, msg);
	leave(c);
}

/* ---- public API ---- */

struct http_client *http_client_new(struct ev_loop *loop)
{
	pthread_once(&global_once, global_init);
	if (global_rc != CURLE_OK || !loop)
		return NULL;
	struct http_client *c = calloc(1, sizeof *c);
	if (!c)
		return NULL;
	c->loop = loop;
	c->next_id = 1;
	c->multi = curl_multi_init();
	if (!c->multi) {
		free(c);
		return NULL;
	}
	ev_timer_init(&c->timer, on_timer, 0.0, 0.0);
	ev_timer_init(&c->resume, on_resume, 0.0, 0.0);
	curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, curl_socket_cb);
	curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
	curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, curl_timer_cb);
	curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
	set_pending(c, 0);
	return c;
}

void http_client_free(struct http_client *c)
{
	if (!c || c->free_requested)
		return;
	if (c->depth > 0) {
		/* Called from one of our callbacks: finish when the stack unwinds. */
		while (c->calls)
			cancel_call(c->calls);
		c->free_requested = 1;
		return;
	}
	destroy_client(c);
}

static int valid_method(const char *m)
{
	if (!*m || strlen(m) > 32)
		return 0;
	for (const char *p = m; *p; p++) {
		if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || *p == '-' || *p == '_'))
			return 0;
	}
	return 1;
}

static int valid_url(const char *url)
{
	if (strncasecmp(url, "http://", 7) != 0 && strncasecmp(url, "https://", 8) != 0)
		return 0;
	return strpbrk(url, " \r\n\t") == NULL;
}

#define SETOPT(opt, val)                                          \
	do {                                                      \
		if (curl_easy_setopt(easy, opt, val) != CURLE_OK) \
			goto fail;                                \
	} while (0)

uint64_t http_client_start(struct http_client *c, const struct http_request *req)
{
	if (!c || c->free_requested || !req || !req->url || !req->on_done)
		return 0;
	const char *method = req->method ? req->method : "GET";
	if (!valid_method(method) || !valid_url(req->url))
		return 0;
	if ((req->body_len > 0 && !req->body) || (req->body_file && req->body_len > 0))
		return 0;
	if (req->recv_buffer &&
	    (req->recv_buffer < HTTP_RECV_BUFFER_MIN || req->recv_buffer > HTTP_RECV_BUFFER_MAX))
		return 0;

	struct http_call *call = calloc(1, sizeof *call);
	if (!call)
		return 0;
	call->client = c;
	call->body_fd = -1;
	call->max_body = req->max_body ? req->max_body : HTTP_DEFAULT_MAX_BODY;
	buf_init(&call->hdrs, HEADERS_MAX);
	buf_init(&call->body_buf, call->max_body);
	ev_timer_init(&call->delay, on_delay, 0.0, 0.0);
	ev_timer_init(&call->stall, on_stall, 0.0, 0.0);
	call->stall_s = req->stall_timeout_ms > 0 ? (double)req->stall_timeout_ms / 1000.0 : 0.0;
	if (req->retry) {
		call->retry = *req->retry;
		call->has_retry = 1;
	}
	call->should_retry = req->should_retry;
	call->prepare = req->prepare;
	call->on_data = req->on_data;
	call->on_done = req->on_done;
	call->arg = req->arg;

	for (const char *const *h = req->headers; h && *h; h++) {
		if (strpbrk(*h, "\r\n") || !strchr(*h, ':'))
			goto fail;
		if (header_named(*h, "Content-Type"))
			call->has_content_type = 1;
		struct curl_slist *next = curl_slist_append(call->base_headers, *h);
		if (!next)
			goto fail;
		call->base_headers = next;
	}
	if (req->body_len > 0) {
		call->body = malloc(req->body_len);
		if (!call->body)
			goto fail;
		memcpy(call->body, req->body, req->body_len);
		call->body_len = req->body_len;
	}
	if (req->body_file && !(call->body_file = strdup(req->body_file)))
		goto fail;
	call->has_body = call->body_len > 0 || call->body_file;

	CURL *easy = call->easy = curl_easy_init();
	if (!easy)
		goto fail;
	SETOPT(CURLOPT_PRIVATE, (void *)call);
	SETOPT(CURLOPT_URL, req->url);
#if LIBCURL_VERSION_NUM >= 0x075500
	SETOPT(CURLOPT_PROTOCOLS_STR, "http,https");
#else
	SETOPT(CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
	SETOPT(CURLOPT_NOSIGNAL, 1L);
	SETOPT(CURLOPT_ERRORBUFFER, call->curl_err);
	SETOPT(CURLOPT_FOLLOWLOCATION, 0L);
	SETOPT(CURLOPT_SSL_VERIFYPEER, 1L);
	SETOPT(CURLOPT_SSL_VERIFYHOST, 2L);
	const char *ca_file = req->ca_file ? req->ca_file : default_ca_file;
	mbedtls_x509_crt *chain = ca_file && share_ca_chains &&
				  strncasecmp(req->url, "https:", 6) == 0 ? ca_chain_get(ca_file) : NULL;
	if (chain) {
		SETOPT(CURLOPT_SSL_CTX_FUNCTION, use_ca_chain);
		SETOPT(CURLOPT_SSL_CTX_DATA, (void *)chain);
	} else if (ca_file) {
		SETOPT(CURLOPT_CAINFO, ca_file);
	}
	if (req->unix_socket)
		SETOPT(CURLOPT_UNIX_SOCKET_PATH, req->unix_socket);
	SETOPT(CURLOPT_TIMEOUT_MS, (long)(req->timeout_ms > 0 ? req->timeout_ms : 0));
	SETOPT(CURLOPT_CONNECTTIMEOUT_MS, (long)(req->connect_timeout_ms > 0
						 ? req->connect_timeout_ms
						 : HTTP_DEFAULT_CONNECT_TIMEOUT_MS));
	SETOPT(CURLOPT_HEADERFUNCTION, on_curl_header);
	SETOPT(CURLOPT_HEADERDATA, (void *)call);
	SETOPT(CURLOPT_WRITEFUNCTION, on_curl_write);
	SETOPT(CURLOPT_WRITEDATA, (void *)call);
	if (req->recv_buffer)
		SETOPT(CURLOPT_BUFFERSIZE, (long)req->recv_buffer);
	if (req->no_reuse)
		SETOPT(CURLOPT_FORBID_REUSE, 1L);

	int is_get = strcmp(method, "GET") == 0, is_head = strcmp(method, "HEAD") == 0;
	if (call->has_body || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 ||
	    strcmp(method, "PATCH") == 0) {
		SETOPT(CURLOPT_POST, 1L);
		SETOPT(CURLOPT_READFUNCTION, on_curl_read);
		SETOPT(CURLOPT_READDATA, (void *)call);
		SETOPT(CURLOPT_SEEKFUNCTION, on_curl_seek);
		SETOPT(CURLOPT_SEEKDATA, (void *)call);
		SETOPT(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)call->body_len);
		if (strcmp(method, "POST") != 0)
			SETOPT(CURLOPT_CUSTOMREQUEST, method);
	} else if (is_head) {
		SETOPT(CURLOPT_NOBODY, 1L);
	} else if (!is_get) {
		SETOPT(CURLOPT_CUSTOMREQUEST, method);
	}

	call->id = c->next_id++;
	call->started_ms = clock_mono_ms();
	list_push(&c->calls, call);
	set_pending(c, c->pending + 1);
	ev_timer_start(c->loop, &call->delay); /* first attempt on the next iteration */
	return call->id;

fail:
	destroy_call(call);
	return 0;
}

void http_client_cancel(struct http_client *c, uint64_t id)
{
	if (!c || id == 0)
		return;
	for (struct http_call *call = c->calls; call; call = call->next) {
		if (call->id == id) {
			cancel_call(call);
			return;
		}
	}
}

void http_client_pause(struct http_client *c, uint64_t id, bool paused)
{
	if (!c || id == 0)
		return;
	struct http_call *call = c->calls;
	while (call && call->id != id)
		call = call->next;
	if (!call || call->paused == paused)
		return;
	call->paused = paused;
	if (paused) {
		call->resume_pending = false;
		/* curl refuses a handle without a connection yet: then the first data
		 * pauses it (on_curl_write). */
		if (call->in_multi && !call->curl_paused &&
		    curl_easy_pause(call->easy, CURLPAUSE_RECV) == CURLE_OK)
			call->curl_paused = true;
		return;
	}
	touch(call);
	if (call->curl_paused) {
		call->resume_pending = true;
		if (!ev_is_active(&c->resume)) {
			ev_timer_set(&c->resume, 0.0, 0.0);
			ev_timer_start(c->loop, &c->resume);
		}
	}
}

size_t http_client_pending(const struct http_client *c)
{
	return c ? c->pending : 0;
}

int http_url_encode(struct buf *out, const char *s, size_t len)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t old = out->len;
	for (size_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)s[i];
		int plain = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
			    (ch >= '0' && ch <= '9') || ch == '-' || ch == '.' || ch == '_' ||
			    ch == '~';
		int rc;
		if (plain) {
			rc = buf_append_byte(out, (char)ch);
		} else {
			char esc[3] = {'%', hex[ch >> 4], hex[ch & 15]};
			rc = buf_append(out, esc, 3);
		}
		if (rc < 0) {
			out->len = old; /* leave the buffer as it was */
			if (out->data)
				out->data[old] = '\0';
			return -1;
		}
	}
	return 0;
}
