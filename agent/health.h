/*
 * health: waits until one container passes its health check, or gives up.
 *
 * Checks (spec.h, struct spec_health):
 *   http     GET <path> on the container's address answers 2xx or 3xx
 *   tcp      a TCP connection to the address succeeds
 *   docker   the image's HEALTHCHECK reports "healthy" (an image without one
 *            fails at once: nothing would ever report)
 *   running  the container still runs, never restarted, once grace_ms passed
 * A probe runs at once and then every interval_ms (each bounded by
 * timeout_ms) until one passes or grace_ms has passed since the start (then
 * the last failure is the reason). Every third failed probe also inspects the
 * container: one that exited or was restarted fails at once instead of
 * waiting out the grace period.
 *
 * The first passing probe is logged as health.pass with its wall-clock time
 * (at_ms): the switch-latency benchmark measures from it.
 *
 * Ownership: the target's strings are copied. The detail handed to done
 * lives for the call. After done the probe is finished: free it with
 * health_free (also to cancel it earlier: then done is not called).
 * Threads: loop thread only; never blocks.
 */
#ifndef SLIPWAY_AGENT_HEALTH_H
#define SLIPWAY_AGENT_HEALTH_H

#include <stdbool.h>
#include <stdint.h>

#include "spec.h"

struct ev_loop;
struct http_client;
struct docker;
struct health_probe;

struct health_target {
	const struct spec_health *spec;
	const char *container_id;
	const char *address;      /* "ip:port" or "[v6]:port"; http and tcp */
};

typedef void (*health_done_fn)(bool ok, const char *detail, void *arg);

struct health_probe *health_start(struct ev_loop *loop, struct http_client *http,
				  struct docker *docker, const struct health_target *t,
				  health_done_fn done, void *arg);
/* Cancels (no callback) and frees. NULL is fine. */
void health_free(struct health_probe *p);

#endif
