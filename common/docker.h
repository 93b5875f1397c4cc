/*
 * docker: a Docker Engine API client over the engine's unix socket, fully
 * asynchronous on the daemon's libev loop (every request goes through
 * http_client). It speaks the API and nothing more: slipway's ownership
 * labels (slipway.app, slipway.release, slipway.service, slipway.generation)
 * are passed through like any other label; the policy lives in the callers.
 *
 * Version negotiation: before its first request the client asks the engine
 * GET /_ping and GET /version (unversioned paths) and uses
 * min(engine ApiVersion, 1.51) on every later path (/v1.xx/...). It refuses
 * an engine whose ApiVersion is below 1.41 (engine 20.10 speaks 1.41) or
 * whose MinAPIVersion is above 1.51 (Docker 29 refuses anything below 1.44);
 * every call then fails with DOCKER_ERR_VERSION.
 * Calls made while the negotiation runs wait for it, in order. A dropped or
 * refused connection, or an engine answering that our version is too old,
 * marks the result stale, so the next call negotiates again (an engine that
 * restarted may have been upgraded). Features by version:
 *   1.41  everything here: one-shot stats (one-shot=true), since= with
 *         nanoseconds on logs and events, wait conditions, build labels
 *   1.42  docker_container_stop with a signal (DOCKER_ERR_UNSUPPORTED below)
 *   1.44+ nothing new needed; this is the floor of Docker 29, up to 1.51.
 *
 * Results: every call copies what it is given (strings, cJSON bodies, option
 * structs) and returns an id (> 0) at once, or 0 when its arguments are
 * invalid or memory is short (then nothing is kept and no callback comes;
 * failures found later, such as an unreadable build context, come through
 * the callback). The done callback is called exactly once, later, on the
 * loop thread, unless the call is cancelled first (docker_cancel: then
 * nothing more is called). A cJSON tree, an id or a digest handed to a
 * callback belongs to this module and is valid only during the callback:
 * copy what must outlive it.
 *
 * Errors: 404 gives DOCKER_ERR_NOT_FOUND and 409 DOCKER_ERR_CONFLICT so
 * callers can tell "no such container" and "name in use / not running" from
 * real failures; 304 (start or stop of a container already in that state) is
 * success. Pull, push and build answer 200 and then report failures inside
 * the JSON stream (an "error"/"errorDetail" object): those give
 * DOCKER_ERR_STREAM with the engine's message (engine 20.10 answers a
 * missing manifest with a plain 404 before the stream, a missing layer blob
 * inside it). A stream that breaks its format
 * (invalid JSON, a line over the cap, a bad or truncated log frame) gives
 * DOCKER_ERR_PROTOCOL.
 *
 * Timeouts: timeout_ms bounds a whole call; 0 means DOCKER_DEFAULT_TIMEOUT_MS
 * for one-answer calls and no limit for streams (pull, push, build, logs,
 * wait, events). Pull and push also fail when no byte arrives for
 * progress_stall_ms; build has no stall limit (a RUN step may be silent for
 * minutes); logs and events may be idle for hours.
 *
 * Thread: the loop thread only. Never blocks. docker_free must not be called
 * from inside one of this module's callbacks.
 */
#ifndef SLIPWAY_DOCKER_H
#define SLIPWAY_DOCKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "logframe.h"

struct ev_loop;
struct http_client;
struct docker;

#define DOCKER_DEFAULT_SOCKET "/var/run/docker.sock"
#define DOCKER_API_MIN_MINOR 41    /* API 1.41: engine 20.10 */
#define DOCKER_API_MAX_MINOR 51    /* API 1.51: Docker 28.3 */
#define DOCKER_DEFAULT_TIMEOUT_MS 60000
#define DOCKER_DEFAULT_NEGOTIATE_TIMEOUT_MS 10000
#define DOCKER_DEFAULT_STALL_MS 300000
#define DOCKER_DEFAULT_MAX_BODY ((size_t)16 << 20)
/* Receive buffer of log and events streams: they live as long as their
 * container or the agent, mostly idle, one per followed container. */
#define DOCKER_STREAM_RECV_BUFFER ((size_t)4 << 10)

enum docker_error {
	DOCKER_OK = 0,
	DOCKER_ERR_NOT_FOUND,    /* 404: no such container / image */
	DOCKER_ERR_CONFLICT,     /* 409: name in use, container not running, ... */
	DOCKER_ERR_BAD_REQUEST,  /* 400: bad parameter */
	DOCKER_ERR_DENIED,       /* 401, 403 */
	DOCKER_ERR_ENGINE,       /* any other non-2xx answer (500 ...) */
	DOCKER_ERR_STREAM,       /* an error object inside a 200 stream */
	DOCKER_ERR_CONNECT,      /* the socket is missing or refuses connections */
	DOCKER_ERR_TRANSPORT,    /* the connection broke, or the answer was not HTTP */
	DOCKER_ERR_TIMEOUT,
	DOCKER_ERR_PROTOCOL,     /* invalid JSON, over a cap, bad or truncated frames */
	DOCKER_ERR_VERSION,      /* no API version both sides speak */
	DOCKER_ERR_UNSUPPORTED,  /* needs a newer API version than negotiated */
	DOCKER_ERR_INTERNAL,     /* out of memory, context file unreadable */
};

const char *docker_error_name(enum docker_error e);

struct docker_result {
	enum docker_error error;
	long status;             /* HTTP status, 0 when no answer arrived */
	const char *message;     /* "" on success; the engine's message or ours */
	const cJSON *json;       /* the parsed answer when there is one, else NULL */
	const char *id;          /* create: container id; build, image inspect: image id */
	const char *digest;      /* pull, push, image inspect: "sha256:..."; else NULL */
};

typedef void (*docker_done_fn)(const struct docker_result *res, void *arg);
/* One JSON object of a pull, push or build stream (not the error ones). */
typedef void (*docker_progress_fn)(const cJSON *msg, void *arg);
/* Build output ("stream" lines), as the engine sends it (may lack a newline). */
typedef void (*docker_text_fn)(const char *text, void *arg);

struct docker_opts {
	const char *socket_path;        /* NULL = DOCKER_DEFAULT_SOCKET */
	int64_t negotiate_timeout_ms;   /* 0 = DOCKER_DEFAULT_NEGOTIATE_TIMEOUT_MS */
	int64_t progress_stall_ms;      /* pull/push; 0 = DOCKER_DEFAULT_STALL_MS */
	size_t max_body;                /* cap on a buffered answer; 0 = DOCKER_DEFAULT_MAX_BODY */
	size_t max_line;                /* cap on a JSON or log line; 0 = 1 MiB */
};

/* http is the caller's and must outlive the docker client. opts may be NULL.
 * Nothing is sent until the first call. NULL when out of memory. */
struct docker *docker_new(struct ev_loop *loop, struct http_client *http,
			  const struct docker_opts *opts);
/* Cancels every call and subscription (no callbacks) and frees. */
void docker_free(struct docker *d);

/* Stops a call or an events subscription; nothing more is called for it.
 * Unknown or finished ids are ignored. Safe inside callbacks. */
void docker_cancel(struct docker *d, uint64_t id);

/* (Re)negotiates now; res->json is the engine's /version document. */
uint64_t docker_negotiate(struct docker *d, docker_done_fn done, void *arg);
/* "1.41" once negotiated, NULL before (or after the result went stale). */
const char *docker_api_version(const struct docker *d);

/* ---- containers ---- */

/* POST /containers/create?name=: body is the caller's create document
 * (Image, Env, Labels, HostConfig ...), not kept. res->id is the new id. */
uint64_t docker_container_create(struct docker *d, const char *name, const cJSON *body,
				 int64_t timeout_ms, docker_done_fn done, void *arg);
uint64_t docker_container_start(struct docker *d, const char *id, int64_t timeout_ms,
				docker_done_fn done, void *arg);
/* stop_timeout_s: seconds before SIGKILL, -1 for the container's own; signal
 * NULL for its StopSignal (a name needs API 1.42). timeout_ms 0 allows the
 * grace period plus DOCKER_DEFAULT_TIMEOUT_MS. */
uint64_t docker_container_stop(struct docker *d, const char *id, int stop_timeout_s,
			       const char *signal, int64_t timeout_ms, docker_done_fn done,
			       void *arg);
/* signal NULL = SIGKILL. 409 when the container is not running. */
uint64_t docker_container_kill(struct docker *d, const char *id, const char *signal,
			       int64_t timeout_ms, docker_done_fn done, void *arg);
uint64_t docker_container_remove(struct docker *d, const char *id, int force, int volumes,
				 int64_t timeout_ms, docker_done_fn done, void *arg);
uint64_t docker_container_inspect(struct docker *d, const char *id, int64_t timeout_ms,
				  docker_done_fn done, void *arg);
/* GET /containers/json: all = stopped ones too; labels is a NULL-terminated
 * list of "key" or "key=value" filters (all must match), or NULL.
 * res->json is the array. */
uint64_t docker_container_list(struct docker *d, int all, const char *const *labels,
			       int64_t timeout_ms, docker_done_fn done, void *arg);
/* POST /containers/{id}/wait?condition= ("not-running" when NULL, "next-exit",
 * "removed"); res->json is {"StatusCode":..,"Error":..}. */
uint64_t docker_container_wait(struct docker *d, const char *id, const char *condition,
			       int64_t timeout_ms, docker_done_fn done, void *arg);
/* One-shot stats: GET /containers/{id}/stats?stream=false&one-shot=true. */
uint64_t docker_container_stats(struct docker *d, const char *id, int64_t timeout_ms,
				docker_done_fn done, void *arg);

/* GET /containers/{id}/logs with timestamps=1, demultiplexed by logframe.
 * Each line goes to on_line (struct linesplit_line: stream 1 stdout or 2
 * stderr, ts_ns, text); its -1 stops the stream (done: DOCKER_ERR_INTERNAL,
 * "stopped by the line callback"). done is the end of the stream: DOCKER_OK
 * when the engine ended it (the container stopped, or follow was off),
 * DOCKER_ERR_TRANSPORT when the connection broke (engine restart),
 * DOCKER_ERR_PROTOCOL for a bad or truncated frame. */
struct docker_logs_opts {
	int tty;              /* the container has a TTY (inspect: Config.Tty): raw stream */
	int follow;           /* keep streaming until the container stops */
	int64_t since_ns;     /* only lines at or after this time; 0 = from the start */
	int tail;             /* only the last N lines; <= 0 = all */
	int no_stdout, no_stderr;
	size_t recv_buffer;   /* bytes read at a time; 0 = DOCKER_STREAM_RECV_BUFFER */
};
uint64_t docker_container_logs(struct docker *d, const char *id,
			       const struct docker_logs_opts *opts, linesplit_fn on_line,
			       docker_done_fn done, void *arg);
/* Holds a docker_container_logs stream back (paused true) or lets it go on,
 * without closing it: backpressure for a reader that cannot keep up. The
 * engine waits meanwhile (the container's output stays in its log file), and
 * a resume continues exactly where the stream stopped, without the scan of
 * the log file a new request with since= costs the engine. The lines of the
 * read in progress when the pause comes (at most recv_buffer bytes, or the
 * rest of a long line being joined) still reach on_line; nothing after them
 * until the resume, which takes effect from the loop, never inside this call.
 * Unknown, finished or non-log ids are ignored. Safe inside callbacks. */
void docker_logs_pause(struct docker *d, uint64_t id, bool paused);

/* ---- the engine and networks ---- */

/* GET /info: res->json is the engine's document (DockerRootDir, ...). */
uint64_t docker_info(struct docker *d, int64_t timeout_ms, docker_done_fn done, void *arg);

/* POST /networks/create: body is the caller's document (Name, Driver, Labels,
 * ...), not kept. res->id is the new network's id; a name already taken is
 * DOCKER_ERR_CONFLICT. */
uint64_t docker_network_create(struct docker *d, const cJSON *body, int64_t timeout_ms,
			       docker_done_fn done, void *arg);
/* GET /networks/{id or name}; res->json the network, res->id its id. */
uint64_t docker_network_inspect(struct docker *d, const char *id, int64_t timeout_ms,
				docker_done_fn done, void *arg);
/* GET /networks with a name filter (the engine matches substrings: compare
 * Name yourself) and label filters ("key" or "key=value", NULL-terminated);
 * either may be NULL. res->json is the array. */
uint64_t docker_network_list(struct docker *d, const char *name, const char *const *labels,
			     int64_t timeout_ms, docker_done_fn done, void *arg);
/* DELETE /networks/{id or name}; DOCKER_ERR_NOT_FOUND when there is none;
 * while containers use it the engine refuses (403 or 409 by version:
 * DOCKER_ERR_DENIED or DOCKER_ERR_CONFLICT). */
uint64_t docker_network_remove(struct docker *d, const char *id, int64_t timeout_ms,
			       docker_done_fn done, void *arg);

/* ---- events ---- */

enum docker_events_state {
	DOCKER_EVENTS_CONNECTED,    /* the first stream was requested from the engine */
	DOCKER_EVENTS_DISCONNECTED, /* the stream dropped; reconnecting with backoff */
	DOCKER_EVENTS_RECONNECTED,  /* the engine answers again and the stream was
				     * requested anew: re-list to fill any gap */
	DOCKER_EVENTS_FAILED,       /* the engine refused the request (4xx): given up */
};

/* event is one object of the stream; time_ns its exact timeNano. */
typedef void (*docker_event_fn)(const cJSON *event, int64_t time_ns, void *arg);
typedef void (*docker_events_state_fn)(enum docker_events_state state, const char *message,
				       void *arg);

struct docker_events_opts {
	const char *type;               /* "container", ...; NULL = every type */
	const char *const *labels;      /* NULL-terminated label filters, or NULL */
	int64_t since_ns;               /* replay from this time; 0 = new events only */
	int64_t backoff_base_ms;        /* reconnect delays; 0 = 250 ms */
	int64_t backoff_cap_ms;         /* 0 = 30 s */
	docker_event_fn on_event;       /* required */
	docker_events_state_fn on_state; /* may be NULL */
	void *arg;
};

/* GET /events, held open for as long as the subscription lives. When the
 * connection drops or the engine restarts it negotiates again and reconnects
 * with full-jitter backoff, asking since= the last event's exact timeNano
 * (before any event: since_ns, or the time of the first connection). The
 * engine replays from that time inclusive; replayed events already delivered
 * are dropped (same timeNano and same bytes, or older than the last event
 * while replaying), so nothing is delivered twice. The engine keeps only its
 * last events in memory and loses them when it restarts: re-list on
 * DOCKER_EVENTS_RECONNECTED. A 4xx answer or a version refusal ends the
 * subscription (DOCKER_EVENTS_FAILED). Stop with docker_cancel. */
uint64_t docker_events_subscribe(struct docker *d, const struct docker_events_opts *opts);

/* ---- images ---- */

/* POST /images/create?fromImage=&tag=: image is "repo[:tag]" or "repo@digest"
 * (no tag means "latest", never every tag). auth_json is the registry
 * credential document ({"username","password","serveraddress"} or
 * {"identitytoken"}) or NULL; it is sent base64url-encoded in X-Registry-Auth.
 * res->digest comes from the "Digest: sha256:..." status line. */
uint64_t docker_image_pull(struct docker *d, const char *image, const char *auth_json,
			   int64_t timeout_ms, docker_progress_fn progress, docker_done_fn done,
			   void *arg);
/* POST /images/{name}/push?tag=: image is "registry/repo:tag". X-Registry-Auth
 * is always sent (base64url of "{}" when auth_json is NULL). res->digest from
 * the final aux.Digest or the "digest: sha256:..." status line. */
uint64_t docker_image_push(struct docker *d, const char *image, const char *auth_json,
			   int64_t timeout_ms, docker_progress_fn progress, docker_done_fn done,
			   void *arg);
/* POST /images/{source}/tag?repo=&tag= with target "repo[:tag]". */
uint64_t docker_image_tag(struct docker *d, const char *source, const char *target,
			  int64_t timeout_ms, docker_done_fn done, void *arg);
/* DELETE /images/{name}; res->json is the list of what was untagged/deleted. */
uint64_t docker_image_remove(struct docker *d, const char *name, int force, int noprune,
			     int64_t timeout_ms, docker_done_fn done, void *arg);
/* GET /images/json with reference and label filters (either may be NULL). */
uint64_t docker_image_list(struct docker *d, const char *reference, const char *const *labels,
			   int64_t timeout_ms, docker_done_fn done, void *arg);
/* GET /images/{name}/json; res->id the image id, res->digest the digest of
 * the first RepoDigests entry (NULL for an image never pushed or pulled). */
uint64_t docker_image_inspect(struct docker *d, const char *name, int64_t timeout_ms,
			      docker_done_fn done, void *arg);

/* POST /build with a tar (or tar.gz) context read from context_file at send
 * time. The answer is a JSON stream: "stream" text goes to on_output, "aux.ID"
 * is the image id (res->id), an error object fails with DOCKER_ERR_STREAM. */
struct docker_build_opts {
	const char *context_file;       /* required */
	const char *const *tags;        /* t=, NULL-terminated, or NULL */
	const char *dockerfile;         /* path inside the context; NULL = "Dockerfile" */
	const cJSON *labels;            /* object: label -> value, or NULL */
	const cJSON *build_args;        /* object: ARG -> value, or NULL */
	const char *const *cache_from;  /* images, NULL-terminated, or NULL */
	const char *registry_config;    /* JSON map registry -> auth document, or NULL */
	int pull;                       /* always pull the FROM image */
	int no_cache;
	int64_t timeout_ms;             /* 0 = no limit */
	docker_text_fn on_output;       /* may be NULL */
	docker_progress_fn on_progress; /* other objects (pull status of FROM); may be NULL */
};
uint64_t docker_image_build(struct docker *d, const struct docker_build_opts *opts,
			    docker_done_fn done, void *arg);

/* ---- helpers (exposed for tests) ---- */

/* Appends base64url (RFC 4648 section 5, with '=' padding, as the engine's
 * decoder wants) of len bytes. */
int docker_base64url(struct buf *out, const void *data, size_t len);
/* Splits "host:port/repo:tag" / "repo@sha256:..." into repo and tag-or-digest
 * ("latest" when there is neither), appending to the two bufs. */
int docker_split_ref(const char *image, struct buf *repo, struct buf *tag);

#endif
