#include "autoscaling.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

struct ascall {
	struct autoscaling *as;
	struct ascall *prev, *next;
	uint64_t id;
	char want_root[64];
	autoscaling_done_fn done;
	void *arg;
};

struct autoscaling {
	struct awsquery_client *q;
	struct ascall *calls;   /* the argument blocks of calls in flight */
};

static void unlink_call(struct ascall *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else
		c->as->calls = c->next;
	if (c->next)
		c->next->prev = c->prev;
}

struct autoscaling *autoscaling_new(struct ev_loop *loop, struct http_client *http,
				    struct aws_credentials_provider *creds,
				    const struct autoscaling_opts *o, struct err *err)
{
	if (!o) {
		err_set(err, "autoscaling: options are required");
		return NULL;
	}
	struct autoscaling *as = calloc(1, sizeof *as);
	if (!as) {
		err_set(err, "autoscaling: out of memory");
		return NULL;
	}
	struct awsquery_client_opts qo = {
		.service = AUTOSCALING_SERVICE,
		.version = AUTOSCALING_VERSION,
		.region = o->region,
		.endpoint = o->endpoint,
		.ca_file = o->ca_file,
		.timeout_ms = o->timeout_ms,
		.retry_base_ms = o->retry_base_ms,
		.retry_cap_ms = o->retry_cap_ms,
		.max_attempts = o->max_attempts,
	};
	as->q = awsquery_client_new(loop, http, creds, &qo, err);
	if (!as->q) {
		free(as);
		err_prefix(err, "autoscaling");
		return NULL;
	}
	return as;
}

void autoscaling_free(struct autoscaling *as)
{
	if (!as)
		return;
	awsquery_client_free(as->q); /* no callback comes after this */
	while (as->calls) {
		struct ascall *c = as->calls;
		unlink_call(c);
		free(c);
	}
	free(as);
}

static bool chars_ok(const char *s, size_t max, const char *extra, bool lower_only)
{
	size_t n = s ? strlen(s) : 0;
	if (n == 0 || n > max)
		return false;
	for (; *s; s++) {
		char c = *s;
		bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
			  (!lower_only && c >= 'A' && c <= 'Z') || (extra && strchr(extra, c));
		if (!ok)
			return false;
	}
	return true;
}

static bool printable(const char *s, size_t max)
{
	size_t n = s ? strlen(s) : 0;
	if (n == 0 || n > max)
		return false;
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s == 0x7f)
			return false;
	return true;
}

static bool uuid_ok(const char *s)
{
	if (strlen(s) != 36)
		return false;
	for (int i = 0; i < 36; i++) {
		char c = s[i];
		if (i == 8 || i == 13 || i == 18 || i == 23) {
			if (c != '-')
				return false;
		} else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
			     (c >= 'A' && c <= 'F'))) {
			return false;
		}
	}
	return true;
}

int autoscaling_check_lifecycle(const struct autoscaling_lifecycle *l, int complete,
				struct err *err)
{
	if (!l)
		return err_set(err, "autoscaling: no lifecycle action");
	if (!printable(l->group, 255))
		return err_set(err, "autoscaling: group name: 1..255 printable characters");
	if (!chars_ok(l->hook, 255, "_-/", false))
		return err_set(err, "autoscaling: hook name: 1..255 of [A-Za-z0-9_/-]");
	if (!chars_ok(l->instance_id, 19, "-", true))
		return err_set(err, "autoscaling: instance id: 1..19 of [a-z0-9-]");
	if (l->token && !uuid_ok(l->token))
		return err_set(err, "autoscaling: the lifecycle action token is not a UUID");
	if (complete && l->result && strcmp(l->result, "CONTINUE") != 0 &&
	    strcmp(l->result, "ABANDON") != 0)
		return err_set(err, "autoscaling: result must be CONTINUE or ABANDON");
	return 0;
}

static void on_answer(const struct awsquery_result *res, void *arg)
{
	struct ascall *c = arg;
	autoscaling_done_fn done = c->done;
	void *darg = c->arg;
	struct awsquery_result r = *res;
	char root[AWSQUERY_NAME_MAX + 1];
	struct err err = {{0}};
	if (r.status == AWSQUERY_OK &&
	    (awsquery_xml_root(r.body, r.body_len, root, sizeof root, &err) < 0 ||
	     strcmp(root, c->want_root) != 0)) {
		/* A 200 that is not the answer asked for (a captive proxy, a wrong
		 * endpoint): nothing says the action happened. */
		r.status = AWSQUERY_UNREACHABLE;
		r.code = "BadAnswer";
		r.message = err.msg[0] ? err.msg : "the answer is not the operation's";
	}
	unlink_call(c);
	free(c);
	done(&r, darg);
}

static uint64_t call(struct autoscaling *as, const char *action,
		     const struct autoscaling_lifecycle *l, int complete, autoscaling_done_fn done,
		     void *arg, struct err *err)
{
	if (!as || !done)
		return err_set(err, "autoscaling: bad arguments"), 0;
	if (autoscaling_check_lifecycle(l, complete, err) < 0)
		return 0;
	struct awsquery_param p[5];
	size_t n = 0;
	p[n++] = (struct awsquery_param){"AutoScalingGroupName", l->group};
	p[n++] = (struct awsquery_param){"InstanceId", l->instance_id};
	if (complete)
		p[n++] = (struct awsquery_param){"LifecycleActionResult",
						 l->result ? l->result : "CONTINUE"};
	if (l->token)
		p[n++] = (struct awsquery_param){"LifecycleActionToken", l->token};
	p[n++] = (struct awsquery_param){"LifecycleHookName", l->hook};
	struct ascall *c = calloc(1, sizeof *c);
	if (!c)
		return err_set(err, "autoscaling: out of memory"), 0;
	c->as = as;
	snprintf(c->want_root, sizeof c->want_root, "%sResponse", action);
	c->done = done;
	c->arg = arg;
	c->next = as->calls;
	if (as->calls)
		as->calls->prev = c;
	as->calls = c;
	uint64_t id = awsquery_call(as->q, action, p, n, on_answer, c);
	if (!id) {
		unlink_call(c);
		free(c);
		err_set(err, "autoscaling: could not start %s", action);
		return 0;
	}
	c->id = id;
	return id;
}

uint64_t autoscaling_complete_lifecycle_action(struct autoscaling *as,
					       const struct autoscaling_lifecycle *l,
					       autoscaling_done_fn done, void *arg, struct err *err)
{
	return call(as, "CompleteLifecycleAction", l, 1, done, arg, err);
}

uint64_t autoscaling_record_lifecycle_heartbeat(struct autoscaling *as,
						const struct autoscaling_lifecycle *l,
						autoscaling_done_fn done, void *arg, struct err *err)
{
	return call(as, "RecordLifecycleActionHeartbeat", l, 0, done, arg, err);
}

void autoscaling_cancel(struct autoscaling *as, uint64_t id)
{
	if (!as || !id)
		return;
	for (struct ascall *c = as->calls; c; c = c->next) {
		if (c->id == id) {
			awsquery_cancel(as->q, id);
			unlink_call(c);
			free(c);
			return;
		}
	}
}

size_t autoscaling_pending(const struct autoscaling *as)
{
	return as ? awsquery_pending(as->q) : 0;
}
