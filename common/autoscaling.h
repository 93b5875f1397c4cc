/*
 * autoscaling: the two Auto Scaling calls an instance makes about its own
 * termination lifecycle hook (docs/operations.md "Scale-in"):
 * CompleteLifecycleAction (the instance is drained: CONTINUE, terminate it)
 * and RecordLifecycleActionHeartbeat (still draining: restart the hook's
 * timeout). Query protocol, API version 2011-01-01, SigV4 service
 * "autoscaling", through common/awsquery (which owns the retry rules:
 * Throttling and 5xx with full-jitter backoff up to max_attempts,
 * credentials refreshed once, clock skew corrected once).
 *
 * A ValidationError ("No active Lifecycle Action found with instance ID
 * ...") is final: the hook already ended (timed out, or completed by an
 * earlier attempt whose answer was lost), so there is nothing left to do.
 *
 * Ownership: arguments are copied; the result lives for the callback.
 * Threads: the loop thread only; nothing blocks.
 */
#ifndef SLIPWAY_AUTOSCALING_H
#define SLIPWAY_AUTOSCALING_H

#include <stdint.h>

#include "awsquery.h"

struct autoscaling;

#define AUTOSCALING_SERVICE "autoscaling"
#define AUTOSCALING_VERSION "2011-01-01"

struct autoscaling_opts {
	const char *region;         /* required */
	const char *endpoint;       /* NULL: https://autoscaling.<region>.amazonaws.com */
	const char *ca_file;
	int64_t timeout_ms;         /* per attempt; 0 = 10000 */
	int64_t retry_base_ms;      /* 0 = 200 */
	int64_t retry_cap_ms;       /* 0 = 20000 */
	int max_attempts;           /* 0 = 8 */
};

struct autoscaling_lifecycle {
	const char *group;          /* AutoScalingGroupName, required */
	const char *hook;           /* LifecycleHookName, required */
	const char *instance_id;    /* InstanceId, required */
	const char *token;          /* LifecycleActionToken: NULL = not sent */
	const char *result;         /* Complete only: "CONTINUE" (NULL) or "ABANDON" */
};

/* status AWSQUERY_OK: done; AWSQUERY_FAILED: refused for good (code says
 * why); AWSQUERY_UNREACHABLE: try again later. */
typedef void (*autoscaling_done_fn)(const struct awsquery_result *res, void *arg);

struct autoscaling *autoscaling_new(struct ev_loop *loop, struct http_client *http,
				    struct aws_credentials_provider *creds,
				    const struct autoscaling_opts *opts, struct err *err);
/* Cancels every call (no callbacks) and frees. NULL is fine. */
void autoscaling_free(struct autoscaling *as);

/* Both return a call id, or 0 (err filled, no callback) on bad arguments. */
uint64_t autoscaling_complete_lifecycle_action(struct autoscaling *as,
					       const struct autoscaling_lifecycle *l,
					       autoscaling_done_fn done, void *arg, struct err *err);
uint64_t autoscaling_record_lifecycle_heartbeat(struct autoscaling *as,
						const struct autoscaling_lifecycle *l,
						autoscaling_done_fn done, void *arg,
						struct err *err);
void autoscaling_cancel(struct autoscaling *as, uint64_t id);
size_t autoscaling_pending(const struct autoscaling *as);

/* The arguments' rules (exposed for tests and for checking configuration):
 * group 1..255 printable characters, hook 1..255 of [A-Za-z0-9_/-], instance
 * id 1..19 of [a-z0-9-], token a UUID, result CONTINUE or ABANDON. */
int autoscaling_check_lifecycle(const struct autoscaling_lifecycle *l, int complete,
				struct err *err);

#endif
