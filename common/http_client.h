/*
 * http_client: asynchronous HTTP on the daemon's libev loop, through libcurl's
 * multi-socket API. Every outbound call goes through here: AWS, the
 * coordinator, GitLab, Slack, and the Docker Engine over its unix socket.
 *
 * Model: http_client_start() queues a request and returns at once; on_done is
 * called exactly once, later, on the loop thread (never from inside
 * http_client_start), unless the request is cancelled first. Callbacks may
 * start and cancel requests.
 *
 * Bodies: by default the response body is buffered up to max_body and handed
 * to on_done. With on_data set, a 2xx body is streamed to on_data chunk by
 * chunk instead (Docker logs and events, long polls); a non-2xx body is still
 * buffered so the caller can read the error document.
 *
 * Flow control: http_client_pause() holds a running request's receiving
 * side back (nothing more reaches on_data, the peer is slowed by TCP) until
 * it is resumed, without closing the connection. recv_buffer sets curl's
 * receive buffer per request (the most a single on_data call gets, except
 * that bytes curl held across a pause may come back joined in one call), so
 * a long-lived, mostly idle stream need not cost curl's 16 KiB default.
 *
 * Connections: kept open after an answer for the next request to the same
 * place, but a client keeps at most HTTP_IDLE_CONNECTIONS_MAX idle ones
 * (the oldest goes first): a daemon that talks to many places once in a
 * while must not hold a connection to each. no_reuse closes the connection
 * after the answer (health probes of containers that come and go).
 *
 * Retry: with `retry` set, an attempt that failed to connect, was dropped,
 * timed out, or answered 408, 429, 500, 502, 503 or 504 (or whatever
 * should_retry says) is repeated after a full-jitter backoff delay, or after
 * Retry-After when the server sent one (never longer than the policy's cap
 * times four). A streamed request is never retried once on_data has seen data.
 * `prepare` runs before every attempt to add headers that must be fresh
 * (SigV4 signs the current time).
 *
 * Ownership: everything in struct http_request is copied by
 * http_client_start (the body included, unless body_file is used), so the
 * caller may free it on return. The struct http_response and everything it
 * points to live only for the duration of on_done.
 */
#ifndef SLIPWAY_HTTP_CLIENT_H
#define SLIPWAY_HTTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backoff.h"
#include "buf.h"

struct ev_loop;
struct http_client;

enum http_error {
	HTTP_OK = 0,        /* an HTTP answer arrived, whatever its status */
	HTTP_ERR_CONNECT,   /* no connection: refused, unreachable, no such socket, DNS */
	HTTP_ERR_TRANSPORT, /* the connection broke or the answer was not valid HTTP */
	HTTP_ERR_TIMEOUT,   /* timeout_ms, connect_timeout_ms or stall_timeout_ms ran out */
	HTTP_ERR_TLS,       /* handshake or certificate verification failed */
	HTTP_ERR_TOO_LARGE, /* the buffered body went past max_body */
	HTTP_ERR_ABORTED,   /* on_data returned -1 */
	HTTP_ERR_INTERNAL,  /* out of memory, bad request options */
};

struct http_header {
	const char *name;   /* as received */
	const char *value;  /* trimmed */
};

struct http_response {
	enum http_error error;
	const char *error_msg;   /* "" for HTTP_OK; otherwise a short human message */
	long status;             /* 0 when no answer arrived */
	const char *body;        /* NUL-terminated, "" when streamed or empty */
	size_t body_len;
	const struct http_header *headers; /* of the final answer */
	size_t header_count;
	int attempts;            /* attempts made, >= 1 */
	int64_t elapsed_ms;      /* from start to done, backoff delays included */
};

/* Value of the first header named `name` (case-insensitive), or NULL. */
const char *http_response_header(const struct http_response *resp, const char *name);

/* A readable one-line summary ("HTTP 503", "connect: Connection refused"). */
const char *http_error_name(enum http_error err);

typedef int (*http_data_fn)(const char *data, size_t len, void *arg);  /* -1 aborts */
typedef void (*http_done_fn)(const struct http_response *resp, void *arg);
/* Appends "Name: value\r\n" lines to `headers` for this attempt (1-based); -1 fails the
 * request with HTTP_ERR_INTERNAL. */
typedef int (*http_prepare_fn)(struct buf *headers, int attempt, void *arg);
/* 1 to retry this finished attempt, 0 to hand it to on_done. */
typedef int (*http_retry_fn)(const struct http_response *resp, void *arg);

#define HTTP_DEFAULT_MAX_BODY ((size_t)1 << 20)
#define HTTP_DEFAULT_CONNECT_TIMEOUT_MS 10000
#define HTTP_RECV_BUFFER_MIN ((size_t)1024)    /* curl refuses smaller */
#define HTTP_IDLE_CONNECTIONS_MAX 8
#define HTTP_RECV_BUFFER_MAX ((size_t)512 << 10)

struct http_request {
	const char *method;             /* NULL = "GET" */
	const char *url;                /* unix sockets too: "http://localhost/v1.41/info" */
	const char *unix_socket;        /* path of a unix socket to connect to, or NULL */
	const char *const *headers;     /* NULL-terminated "Name: value" strings, or NULL */
	const void *body;               /* copied; NULL with body_len 0 for none */
	size_t body_len;
	const char *body_file;          /* instead of body: stream this file (read at send time) */
	int64_t timeout_ms;             /* whole attempt; 0 = no limit (streams) */
	int64_t connect_timeout_ms;     /* 0 = HTTP_DEFAULT_CONNECT_TIMEOUT_MS */
	int64_t stall_timeout_ms;       /* fail when no byte arrives for this long; 0 = off */
	size_t max_body;                /* cap on a buffered body; 0 = HTTP_DEFAULT_MAX_BODY */
	size_t recv_buffer;             /* curl's receive buffer, HTTP_RECV_BUFFER_MIN and up;
					 * 0 = curl's default (16 KiB) */
	bool no_reuse;                  /* close the connection after the answer */
	const char *ca_file;            /* CA bundle for https; NULL = the system default */
	const struct backoff_policy *retry; /* NULL = one attempt */
	http_retry_fn should_retry;     /* NULL = the default rule above */
	http_prepare_fn prepare;        /* NULL = nothing to add */
	http_data_fn on_data;           /* NULL = buffer the body */
	http_done_fn on_done;           /* required */
	void *arg;
};

struct http_client *http_client_new(struct ev_loop *loop);
/* Cancels every request still running (their on_done is not called) and frees. */
void http_client_free(struct http_client *client);

/* Returns a request id (> 0), or 0 when the request could not even be queued
 * (bad options, out of memory): then on_done is never called. */
uint64_t http_client_start(struct http_client *client, const struct http_request *req);

/* Stops a request; its on_done is not called. Unknown or finished ids are ignored. */
void http_client_cancel(struct http_client *client, uint64_t id);

/* Pauses (true) or resumes (false) receiving on a request. While paused,
 * on_data is not called for it, its stall timeout does not run and the
 * connection stays open (timeout_ms, the limit on the whole request, still
 * runs). Safe anywhere on the loop thread, inside
 * on_data of the same request too: bytes already read when the pause came
 * are kept and handed over after the resume, in order. A resume never
 * delivers inside this call: the transfer is kicked from the loop on its next
 * iteration. Pausing a request between attempts applies from its next data.
 * Unknown or finished ids are ignored. */
void http_client_pause(struct http_client *client, uint64_t id, bool paused);

/* Requests started and not yet done. */
size_t http_client_pending(const struct http_client *client);

/* Appends `s` percent-encoded as RFC 3986 requires for a query value or path
 * segment (everything but A-Z a-z 0-9 - . _ ~ is escaped). */
int http_url_encode(struct buf *out, const char *s, size_t len);

/* Default retry decision (see above); for should_retry callbacks to fall back on. */
int http_default_should_retry(const struct http_response *resp);

#endif
