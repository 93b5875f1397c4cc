/*
 * client: the CLI's calls to the coordinator's /v1 API, made blocking.
 *
 * Underneath is common/http_client (libcurl multi on a libev loop): each call
 * starts one request and runs the client's private loop until it is done, so
 * the CLI shares the daemons' TLS settings (peer and host verification always
 * on, SLIPWAY_CA_FILE as the CA bundle), their body_file streaming for
 * uploads and their error classification, and a streamed answer (a build log,
 * `logs --follow`) arrives chunk by chunk on the same loop.
 *
 * Errors become one line a person can act on, in err:
 *   - the coordinator's {"error": {"code", "message"}}: the message, with
 *     advice for 401 (login / SLIPWAY_API_KEY), 403 (the key's role or app)
 *     and 5xx (the request id from Slipway-Request-Id);
 *   - connection refused / DNS: "cannot reach the coordinator at URL ...";
 *   - TLS: "TLS verification of URL failed: ...", pointing at SLIPWAY_CA_FILE
 *     (there is no way to turn verification off);
 *   - timeouts and broken connections say so, with the URL.
 * The status and error code of the last answer stay in cl->status and
 * cl->code for callers that branch on them (404 while waiting, 409 ...).
 *
 * GETs are retried (3 attempts, full-jitter backoff from 200 ms) on 503,
 * 502, 504 and dropped connections; nothing else is, so a POST never runs
 * twice. Interrupts: client_init installs SIGINT/SIGTERM handlers that set
 * client_interrupted and wake the loop; a call in progress is then cancelled
 * and returns -1 with "interrupted" (the caller exits 130).
 *
 * Ownership: struct client is the caller's; client_close frees what
 * client_init made. JSON answers handed out are the caller's (cJSON_Delete).
 * One thread (the main one); every call blocks.
 */
#ifndef SLIPWAY_CLI_CLIENT_H
#define SLIPWAY_CLI_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "err.h"

struct ev_loop;
struct http_client;

#define CLIENT_MAX_ANSWER ((size_t)64 << 20)
#define CLIENT_TIMEOUT_MS 120000          /* one ordinary call */

struct client {
	struct ev_loop *loop;
	struct http_client *http;
	char *base;          /* "https://coord.example:8443" */
	char *auth;          /* "Authorization: Bearer ..." (NULL without a key) */
	char *ca_file;
	int pipe_fd[2];      /* the signal handler's wake-up */
	void *intr_watcher;  /* ev_io on pipe_fd[0] */
	/* the last answer */
	long status;         /* 0 when none arrived */
	char code[48];       /* the coordinator's error code, "" for 2xx */
	char request_id[96];
	const char *key_from; /* where the key came from, for 401 advice (may be NULL) */
};

/* Set by SIGINT/SIGTERM once client_init ran (the signal number); an atomic
 * int, so it doubles as the cancel flag of blocking work (context_build). A
 * second signal ends the process at once (exit 128 + signal). */
extern _Atomic int client_interrupted;

/* host: a normalized URL (cliconf); api_key may be NULL (health only). */
int client_init(struct client *cl, const char *host, const char *api_key, const char *ca_file,
		struct err *err);
void client_close(struct client *cl);

/* One JSON call. path starts with "/v1/" and is already URL-encoded. body may
 * be NULL. On a 2xx answer *out (when out is not NULL) gets the parsed body,
 * or NULL for an empty one. -1 (err) for any other outcome. */
int client_json(struct client *cl, const char *method, const char *path, const cJSON *body,
		cJSON **out, struct err *err);

/* A streamed GET: every chunk of a 2xx body goes to on_data (return -1 to
 * stop: the call then returns 0). No overall timeout; stall_ms > 0 fails the
 * call when nothing arrives for that long. */
typedef int (*client_data_fn)(const char *data, size_t len, void *arg);
int client_stream(struct client *cl, const char *path, int64_t stall_ms, client_data_fn on_data,
		  void *arg, struct err *err);

/* POST of a file as the body (read at send time, never held in memory). */
int client_upload(struct client *cl, const char *path, const char *file,
		  const char *content_type, cJSON **out, struct err *err);

/* Waits ms on the loop. 0, or -1 (err "interrupted") on a signal. */
int client_sleep(struct client *cl, int64_t ms, struct err *err);

/* Appends s percent-encoded (a path segment or query value) to the string
 * already in out, which holds cap bytes; -1 (out unchanged) when it does not
 * fit. */
int client_escape(char *out, size_t cap, const char *s);

#endif
