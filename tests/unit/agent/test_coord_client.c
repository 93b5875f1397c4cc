/*
 * coord_client: the token accessor other senders of agent requests use
 * (coord_client_token, coord_client_identity), across a registration and a
 * second one after a 401, and logdest asking it per request. Against a
 * scripted coordinator in this process (common/httpd); long polls are held
 * open until the test ends.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "coord_client.h"
#include "http_client.h"
#include "httpd.h"
#include "log.h"
#include "logbatch.h"
#include "logdest.h"
#include "worker.h"

struct fix {
	struct ev_loop *loop;
	struct http_client *http;
	struct worker_pool *workers;
	struct httpd *srv;
	struct coord_client *cc;
	char dir[64];
	char url[64];
	int registrations;
	int heartbeats;
	int refuse_heartbeats;     /* answer this many heartbeats 401 */
	int registered_calls;
	char logs_auth[128];
	int logs_posts;
	int sent;
};

static void on_poll_gone(struct httpd_req *req, void *arg)
{
	(void)req;
	(void)arg; /* a held poll: nothing to drop */
}

static void handler(struct httpd_req *req, void *arg)
{
	struct fix *f = arg;
	const char *auth = httpd_req_header(req, "Authorization");
	char want[64];
	snprintf(want, sizeof want, "Bearer tok-%d", f->registrations);
	if (strcmp(req->path, "/v1/agents/register") == 0) {
		f->registrations++;
		char body[256];
		snprintf(body, sizeof body, "{\"agent_id\":\"ag_1\",\"token\":\"tok-%d\","
			 "\"heartbeat_interval_s\":1,\"lost_after_s\":5,\"lease_s\":60,"
			 "\"poll_wait_s\":30}", f->registrations);
		httpd_respond(req, 200, "application/json", body, strlen(body));
		return;
	}
	if (strcmp(req->path, "/v1/agents/ag_1/jobs") == 0) {
		httpd_req_on_abort(req, on_poll_gone, f); /* held: a long poll */
		return;
	}
	if (!auth || strcmp(auth, want) != 0) {
		const char *e = "{\"error\":{\"code\":\"unauthorized\",\"message\":\"token\"}}";
		httpd_respond(req, 401, "application/json", e, strlen(e));
		return;
	}
	if (strcmp(req->path, "/v1/agents/ag_1/heartbeat") == 0) {
		f->heartbeats++;
		if (f->refuse_heartbeats > 0) {
			f->refuse_heartbeats--;
			const char *e = "{\"error\":{\"code\":\"unauthorized\",\"message\":\"rotated\"}}";
			httpd_respond(req, 401, "application/json", e, strlen(e));
			return;
		}
		httpd_respond(req, 200, "application/json", "{\"server_time_ms\":1}", 20);
		return;
	}
	if (strcmp(req->path, "/v1/agents/ag_1/logs") == 0) {
		f->logs_posts++;
		snprintf(f->logs_auth, sizeof f->logs_auth, "%s", auth);
		const char *ok = "{\"accepted\":1,\"rejected\":0}";
		httpd_respond(req, 200, "application/json", ok, strlen(ok));
		return;
	}
	httpd_respond(req, 404, "application/json", "{}", 2);
}

static void on_registered(void *arg)
{
	struct fix *f = arg;
	f->registered_calls++;
}

static int setup(void **state)
{
	struct fix *f = calloc(1, sizeof *f);
	log_init("test", LOG_LEVEL_ERROR, 0);
	f->loop = ev_loop_new(EVFLAG_AUTO);
	f->http = http_client_new(f->loop);
	f->workers = worker_pool_new(f->loop, 1, 16, NULL);
	assert_non_null(f->workers);
	struct httpd_config hc = {.listen = "127.0.0.1:0", .handler = handler, .arg = f};
	f->srv = httpd_new(f->loop, &hc, NULL);
	assert_non_null(f->srv);
	snprintf(f->url, sizeof f->url, "http://127.0.0.1:%d", httpd_port(f->srv));
	snprintf(f->dir, sizeof f->dir, "/tmp/slipway-coord-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	struct coord_client_opts o = {
		.loop = f->loop, .http = f->http, .workers = f->workers, .url = f->url,
		.bootstrap_token = "boot", .state_dir = f->dir, .instance_id = "i-1",
		.retry_base_ms = 10, .retry_cap_ms = 50, .on_registered = on_registered, .arg = f,
	};
	f->cc = coord_client_new(&o, NULL);
	assert_non_null(f->cc);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fix *f = *state;
	coord_client_free(f->cc);
	httpd_free(f->srv);
	worker_pool_free(f->workers);
	http_client_free(f->http);
	ev_loop_destroy(f->loop);
	char path[128];
	snprintf(path, sizeof path, "%s/%s", f->dir, COORD_IDENTITY_FILE);
	unlink(path);
	rmdir(f->dir);
	free(f);
	return 0;
}

static void run_until(struct fix *f, const int *v, int want)
{
	for (int i = 0; i < 20000 && *v < want; i++)
		ev_run(f->loop, EVRUN_ONCE);
	assert_true(*v >= want);
}

static void test_token_follows_registrations(void **state)
{
	struct fix *f = *state;
	const char *id = "x", *tok = "x";
	coord_client_identity(f->cc, &id, &tok);
	assert_string_equal(id, "");
	assert_string_equal(tok, "");
	assert_string_equal(coord_client_token(f->cc), "");
	coord_client_start(f->cc);
	run_until(f, &f->registered_calls, 1);
	assert_string_equal(coord_client_token(f->cc), "tok-1");
	coord_client_identity(f->cc, &id, &tok);
	assert_string_equal(id, "ag_1");
	assert_string_equal(tok, "tok-1");

	/* The coordinator refuses the token (rotated elsewhere): the client
	 * registers again and the accessor gives the new one. */
	f->refuse_heartbeats = 1;
	run_until(f, &f->registered_calls, 2);
	assert_int_equal(f->registrations, 2);
	assert_string_equal(coord_client_token(f->cc), "tok-2");
	coord_client_identity(f->cc, &id, &tok);
	assert_string_equal(tok, "tok-2");
}

static void on_sent(const struct logdest_result *res, void *arg)
{
	struct fix *f = arg;
	assert_int_equal(res->status, LOGDEST_OK);
	f->sent++;
}

/* logdest asks the coordinator client for the token per request: after the
 * second registration it sends the new one, without any file in between. */
static void test_logdest_uses_current_token(void **state)
{
	struct fix *f = *state;
	struct logdest_coord_opts lo = {.loop = f->loop, .http = f->http, .url = f->url,
					.identity = coord_client_identity, .identity_ctx = f->cc,
					.retry_base_ms = 10, .retry_cap_ms = 50};
	struct logdest *d = logdest_coordinator(&lo, NULL);
	assert_non_null(d);
	coord_client_start(f->cc);
	run_until(f, &f->registered_calls, 1);
	f->refuse_heartbeats = 1;
	run_until(f, &f->registered_calls, 2);
	struct logbatch b;
	logbatch_init(&b);
	assert_int_equal(logbatch_add(&b, 1795600000000, 1, "hello", 5, 0, 0), 0);
	struct logdest_stream names = {.group = "g", .stream = "s", .app = "web",
				       .service = "web", .container = "3f9a1c2b4d5e"};
	assert_true(logdest_send(d, &names, &b, on_sent, f) > 0);
	run_until(f, &f->sent, 1);
	assert_int_equal(f->logs_posts, 1);
	assert_string_equal(f->logs_auth, "Bearer tok-2");
	logbatch_free(&b);
	logdest_free(d);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_token_follows_registrations),
		T(test_logdest_uses_current_token),
	};
	return cmocka_run_group_tests_name("coord_client", tests, NULL, NULL);
}
