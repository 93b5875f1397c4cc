/*
 * httpd: the inbound HTTP/1.1 server of both daemons (the coordinator's API and
 * webhooks, the agent's local health and metrics endpoint), on the daemon's
 * libev loop, optionally behind TLS (mbedTLS, TLS 1.2+). Requests are parsed by
 * http-parser 2.9; nothing here parses HTTP by hand.
 *
 * Flow of one request:
 *   1. request line and headers arrive (cap max_header_bytes -> 431, URL cap
 *      max_url_bytes -> 414, within header_timeout_ms -> 408);
 *   2. on_headers(req) runs, if configured. It may set the body cap
 *      (httpd_req_set_body_max), stream the body into a temporary file
 *      (httpd_req_body_to_file), set req->user, register on_abort, or answer
 *      at once without reading the body (an early 401/404);
 *   3. the body is read (Content-Length over the cap -> 413 before a byte is
 *      read; chunked bodies are checked chunk by chunk; gzip bodies are inflated
 *      under the same cap; at most body_timeout_ms between reads -> 408);
 *   4. handler(req) runs. It answers now or later (long polls, store queries):
 *      httpd_respond / httpd_respond_json / httpd_respond_error, or
 *      httpd_stream_start + httpd_stream_write... + httpd_stream_end.
 * Requests on one connection are answered in order: a pipelined request is
 * parsed only once the previous one has been answered. While the owner holds
 * a request the connection is still read (to notice a client that goes away),
 * buffering at most 64 KiB of pipelined input; beyond that reading pauses.
 *
 * Lifetime of a request (the part owners must get right):
 *   - The struct httpd_req is the module's. The owner (on_headers, then the
 *     handler and whoever it hands the request to) may use it until it has
 *     answered (httpd_respond*, httpd_stream_end, httpd_abort) or until
 *     on_abort has been called. After either, the pointer stays valid only
 *     until the loop next waits for events; calls made with it before then
 *     (a response racing an abort in the same loop iteration, a second
 *     response) are ignored and return -1. Later calls are use-after-free.
 *   - on_abort (httpd_req_on_abort) is called at most once, on the loop
 *     thread, when a request whose on_headers has run ends without the owner
 *     having answered: the client went away (EOF, reset, write error), a write
 *     stalled past write_timeout_ms, the module refused the body (413, 408,
 *     400 for bad gzip), or httpd_free ran. Not after httpd_abort (the owner
 *     asked for it). An owner that keeps a request across loop iterations must
 *     register on_abort and drop its pointer there.
 *   - A client that half-closes (shutdown(SHUT_WR)) is treated as gone: an
 *     answer still pending at that moment is aborted; answers already queued
 *     are still sent.
 *   - Callbacks (on_headers, handler, on_abort, on_drain) are never called
 *     from inside an httpd_* call the owner makes, except httpd_free (which
 *     calls on_abort for requests in flight).
 *
 * Responses: the module writes the status line, Date, the configured
 * default_headers, Content-Type, the framing (Content-Length, or chunked
 * Transfer-Encoding for streams; HTTP/1.0 streams end with the connection),
 * headers from httpd_add_header, and Connection as needed. HEAD gets the
 * headers of the answer without its body. 204 and 304 never carry a body.
 * Errors the module produces itself carry the protocol's body
 * {"error":{"code":..,"message":..}} (docs/protocol.md) and close the
 * connection: 400 bad_request (malformed, smuggling, bad gzip), 408 timeout,
 * 413/414/431 too_large, 415 unsupported_encoding (a Content-Encoding other
 * than gzip or identity), 500 internal (a body file write failed), 503
 * unavailable (connection cap).
 *
 * Limits and policies:
 *   - Request smuggling: a request with Content-Length and Transfer-Encoding,
 *     more than one Content-Length (equal values included), a Transfer-Encoding
 *     other than exactly "chunked" (one header), obsolete line folding, or (for
 *     HTTP/1.1) a missing or repeated Host gets 400 and the connection closes.
 *   - Connection cap (max_connections): a connection beyond it is accepted and
 *     answered "503 unavailable" + close at once (plain HTTP), or closed at once
 *     (TLS: a handshake is what an overloaded server cannot afford), so clients
 *     fail fast and retry with backoff instead of hanging in the backlog. When
 *     accept() itself fails for lack of descriptors, accepting pauses 100 ms.
 *   - Streams: httpd_stream_write returns -1 without queuing when the client's
 *     unsent output is over stream_max_pending, so a slow follower cannot make
 *     the server buffer without bound. Register on_drain to be told when the
 *     backlog has fallen to half the cap, or end/abort the stream.
 *   - Timeouts: one ev_timer per connection holding the earliest of its read
 *     deadline (header, body, idle or linger, by state) and its write deadline
 *     (no progress for write_timeout_ms while output is pending); deadlines
 *     that move later (every body read) are checked lazily when the timer
 *     fires, so a busy connection costs no heap operation per read. Times come
 *     from ev_now, which is right for I/O timeouts. A new connection must
 *     deliver its first request's headers within header_timeout_ms of accept
 *     (TLS handshake included); between keep-alive requests idle_timeout_ms
 *     applies. While the owner holds a request there is no read timeout.
 *   - After an answer that closes the connection, the write side is shut and
 *     the input drained for up to 2 s (lingering close), so the client reads
 *     the answer instead of a reset.
 *
 * Body files: httpd_req_body_to_file creates <dir>/slipway-body-XXXXXX (0600)
 * and the body (decompressed) is written to it with plain write() on the loop
 * thread: writes are sequential, at most 64 KiB each, land in the page cache
 * and are never fsynced, so they do not block in practice, and a worker hop
 * per piece would cost more than it saves. A failed write (disk full) is
 * answered 500 and aborts the request. The file is closed before the
 * handler runs and removed once the request is finished, unless the owner
 * took it with httpd_req_take_body_file.
 *
 * Threads: everything runs on the loop thread, including every callback;
 * nothing blocks (httpd_new reads the TLS files, once, at start-up).
 * httpd_raise_nofile_limit is for start-up.
 */
#ifndef SLIPWAY_HTTPD_H
#define SLIPWAY_HTTPD_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "err.h"

struct ev_loop;
struct httpd;

#define HTTPD_DEFAULT_MAX_CONNECTIONS 4096
#define HTTPD_DEFAULT_MAX_HEADER_BYTES ((size_t)16 << 10)
#define HTTPD_DEFAULT_MAX_URL_BYTES ((size_t)8 << 10)
#define HTTPD_MAX_URL_BYTES_LIMIT 65535 /* http-parser's URL offsets are 16 bits */
#define HTTPD_DEFAULT_BODY_MAX ((size_t)1 << 20)
#define HTTPD_DEFAULT_STREAM_MAX_PENDING ((size_t)4 << 20)
#define HTTPD_DEFAULT_HEADER_TIMEOUT_MS 10000
#define HTTPD_DEFAULT_BODY_TIMEOUT_MS 60000
#define HTTPD_DEFAULT_IDLE_TIMEOUT_MS 75000
#define HTTPD_DEFAULT_WRITE_TIMEOUT_MS 60000

struct httpd_header {
	const char *name;   /* as received */
	const char *value;  /* without surrounding whitespace */
};

/*
 * What the owner sees of a request. The fields are read-only except `user`;
 * the strings live as long as the request.
 */
struct httpd_req {
	const char *method;       /* "GET", "POST", ... */
	const char *target;       /* raw request target: "/v1/x?wait=30" */
	const char *path;         /* target without query, not percent-decoded */
	const char *query;        /* after '?', not decoded; "" when none */
	const struct httpd_header *headers;  /* in arrival order */
	size_t header_count;
	int http_minor;           /* 1 for HTTP/1.1, 0 for HTTP/1.0 */
	const char *body;         /* NUL-terminated (decompressed) body; "" when none or in a file */
	size_t body_len;          /* bytes of body, in memory or in the file */
	const char *body_file;    /* path of the body when httpd_req_body_to_file was used */
	const char *peer;         /* "192.0.2.7:51234", "[2001:db8::1]:51234", "unix" */
	void *user;               /* the owner's; NULL to start with */
};

/* Runs once the request is complete (body included). */
typedef void (*httpd_handler_fn)(struct httpd_req *req, void *arg);
/* Runs once the headers are in, before any body byte is read. */
typedef void (*httpd_headers_fn)(struct httpd_req *req, void *arg);
typedef void (*httpd_abort_fn)(struct httpd_req *req, void *arg);
typedef void (*httpd_drain_fn)(struct httpd_req *req, void *arg);

struct httpd_config {
	/* "127.0.0.1:8080", "[::1]:0", "*:8080" (all addresses, IPv6 and IPv4),
	 * "unix:/run/slipway.sock" or "/run/slipway.sock". Port 0 picks a free
	 * port (httpd_port tells which). NULL: no listener (httpd_adopt_fd only). */
	const char *listen;
	unsigned unix_mode;              /* mode of a unix socket; 0 = 0660 */
	httpd_handler_fn handler;        /* required */
	httpd_headers_fn on_headers;     /* optional */
	void *arg;                       /* for handler and on_headers */
	size_t max_connections;          /* 0 = HTTPD_DEFAULT_MAX_CONNECTIONS */
	size_t max_header_bytes;         /* request line + headers; 0 = 16 KiB */
	size_t max_url_bytes;            /* 0 = 8 KiB; at most 65535 */
	size_t body_max;                 /* body cap unless on_headers sets one; 0 = 1 MiB */
	size_t stream_max_pending;       /* unsent stream output cap; 0 = 4 MiB */
	int64_t header_timeout_ms;       /* 0 = 10 s */
	int64_t body_timeout_ms;         /* idle time between body reads; 0 = 60 s */
	int64_t idle_timeout_ms;         /* keep-alive between requests; 0 = 75 s */
	int64_t write_timeout_ms;        /* no write progress while output waits; 0 = 60 s */
	/* NULL-terminated "Name: value" lines added to every answer, the module's
	 * own errors included (e.g. "Slipway-Protocol: 1"); copied. */
	const char *const *default_headers;
	/* TLS when both are set: PEM certificate chain (leaf first) and PEM key. */
	const char *tls_cert_file;
	const char *tls_key_file;
};

/* Binds, listens and starts accepting on `loop`. NULL (err filled) on a bad
 * listen address, a busy port, a live unix socket at the path, or unreadable
 * TLS files; nothing is left behind then. The config is copied. */
struct httpd *httpd_new(struct ev_loop *loop, const struct httpd_config *cfg, struct err *err);

/* The bound TCP port (useful with port 0); 0 for unix sockets and no listener. */
int httpd_port(const struct httpd *srv);

/* Graceful shutdown, step 1: closes the listener (and removes a unix socket
 * path), closes idle keep-alive connections, and makes every later answer
 * close its connection. Requests in flight continue. */
void httpd_stop_accepting(struct httpd *srv);

/* Open connections / requests being read or waiting for their answer. */
size_t httpd_connection_count(const struct httpd *srv);
size_t httpd_request_count(const struct httpd *srv);

/* Step 2: closes every connection (requests in flight get their on_abort,
 * called from here), removes temporary body files, frees the server. Not from
 * inside this server's callbacks. NULL is fine. */
void httpd_free(struct httpd *srv);

/* Serves an already connected stream socket (made non-blocking and
 * close-on-exec here; owned by the server from now on, closed on error too).
 * For tests, fuzzing and inherited sockets; subject to max_connections. */
int httpd_adopt_fd(struct httpd *srv, int fd, const char *peer, struct err *err);

/* Raises RLIMIT_NOFILE's soft limit to the hard limit; returns the new soft
 * limit, or -1 (err filled). The coordinator holds thousands of long polls. */
long httpd_raise_nofile_limit(struct err *err);

/* ---- reading a request ---- */

/* First header named `name` (case-insensitive), or NULL. */
const char *httpd_req_header(const struct httpd_req *req, const char *name);
/* Repeated headers: *pos starts at 0; each call returns the next value of
 * `name` and advances *pos, NULL when there are no more. */
const char *httpd_req_header_next(const struct httpd_req *req, const char *name, size_t *pos);

/* Looks up query parameter `name` (names and values percent-decoded, '+' is a
 * space; the first occurrence wins). Returns 1 and the value in out
 * (NUL-terminated), 0 when absent, -1 when the value is malformed (bad %
 * escape, a decoded NUL) or does not fit in out_size - 1 bytes. out is ""
 * unless 1 is returned. */
int httpd_req_query_param(const struct httpd_req *req, const char *name, char *out,
			  size_t out_size);

/* ---- from on_headers only (ignored or -1 elsewhere) ---- */

/* Body cap for this request, after decompression; 0 allows no body. */
void httpd_req_set_body_max(struct httpd_req *req, size_t max);
/* Streams the body into a new temporary file in `dir` (see above). -1 when
 * the file cannot be created (answer 500 yourself then) or when not called
 * from on_headers. */
int httpd_req_body_to_file(struct httpd_req *req, const char *dir, struct err *err);

/* ---- any time the owner holds the request ---- */

/* Registers (or with fn NULL clears) the abort callback; see above. */
void httpd_req_on_abort(struct httpd_req *req, httpd_abort_fn fn, void *arg);

/* The body file becomes the caller's: it is no longer removed, and the
 * returned copy of its path is freed by the caller. NULL when there is none. */
char *httpd_req_take_body_file(struct httpd_req *req);

/* Adds a response header before httpd_respond / httpd_stream_start. -1 when the
 * name is not a token, the value holds CR, LF or other control bytes, the name
 * is one the module sets (Content-Length, Transfer-Encoding, Connection, Date),
 * or the headers pass 16 KiB; nothing is added then. */
int httpd_add_header(struct httpd_req *req, const char *name, const char *value);

/*
 * Answers the request (status 200..599); body is copied. content_type may be
 * NULL (no Content-Type). After the call the request is finished whatever the
 * result: bad arguments (status out of range, CR/LF in content_type) are
 * logged and answered 500; output past the 1 GiB per-connection cap drops the
 * connection and returns -1. -1 with nothing happening when the request was
 * already answered or aborted, or a stream was started on it.
 */
int httpd_respond(struct httpd_req *req, int status, const char *content_type,
		  const void *body, size_t len);
/* The same with cJSON_PrintUnformatted(json) and application/json. */
int httpd_respond_json(struct httpd_req *req, int status, const cJSON *json);
/* The protocol's error body {"error":{"code":code,"message":message}}. */
int httpd_respond_error(struct httpd_req *req, int status, const char *code,
			const char *message);

/* Streaming answer: chunked on HTTP/1.1, ended by closing on HTTP/1.0.
 * stream_start is for the handler phase (not on_headers); it returns -1, with
 * nothing sent and the request still the owner's, for a bad status (204 and
 * 304 included) or content type. stream_write queues one chunk (empty writes
 * are no-ops) and returns -1 when the unsent output is over
 * stream_max_pending (nothing queued: wait for on_drain, or end or abort the
 * stream) or the request is gone. stream_end finishes the answer and the
 * request. */
int httpd_stream_start(struct httpd_req *req, int status, const char *content_type);
int httpd_stream_write(struct httpd_req *req, const void *data, size_t len);
int httpd_stream_end(struct httpd_req *req);
/* Called (once per -1 from stream_write) when the unsent output has fallen to
 * half of stream_max_pending or less. */
void httpd_stream_on_drain(struct httpd_req *req, httpd_drain_fn fn, void *arg);

/* Drops the connection without (completing) an answer; on_abort is not called.
 * For streams that must end as incomplete, and for owners giving up. */
void httpd_abort(struct httpd_req *req);

#endif
