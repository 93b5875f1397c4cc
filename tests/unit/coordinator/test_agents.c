/*
 * agents: registration with the bootstrap token, token rotation on
 * re-registration, heartbeats, loss and return with a frozen clock, draining,
 * inventory and desired state; and the long poll (wake on a new job, one poll
 * per agent) through the real HTTP server.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "coord_fixture.h"

#define T0 1800000000000LL

static int setup(void **state)
{
	static struct fx f;
	clock_fake_set(T0, 1000);
	fx_init(&f, NULL, 1);
	*state = &f;
	return 0;
}

static int teardown(void **state)
{
	fx_free(*state);
	clock_fake_off();
	return 0;
}

struct reg {
	char id[72];
	char token[128];
};

static long do_register(struct fx *f, const char *boot, const char *body, struct reg *out)
{
	cJSON *j = NULL;
	long st = fx_req(f, "POST", "/v1/agents/register", boot, body, &j, NULL);
	if (st == 200 && out) {
		snprintf(out->id, sizeof out->id, "%s", fx_str(j, "agent_id"));
		snprintf(out->token, sizeof out->token, "%s", fx_str(j, "token"));
		assert_int_equal((int)fx_num(j, "heartbeat_interval_s"), 10);
		assert_int_equal((int)fx_num(j, "lost_after_s"), 45);
		assert_int_equal((int)fx_num(j, "lease_s"), 60);
		assert_int_equal((int)fx_num(j, "poll_wait_s"), 30);
	}
	cJSON_Delete(j);
	return st;
}

static const char *REG = "{\"instance_id\":\"i-0a1b2c\",\"hostname\":\"ip-10-0-1-17\","
			 "\"fleet\":\"default\",\"version\":\"0.1.0\",\"arch\":\"x86_64\","
			 "\"protocol\":1,\"capabilities\":[\"deploy\"]}";

static long agent_call(struct fx *f, const struct reg *g, const char *method, const char *what,
		       const char *body, cJSON **out)
{
	char path[256];
	snprintf(path, sizeof path, "/v1/agents/%s/%s", g->id, what);
	return fx_req(f, method, path, g->token, body, out, NULL);
}

static void registration(void **state)
{
	struct fx *f = *state;
	struct reg g, g2;
	assert_int_equal(do_register(f, "wrong-token", REG, NULL), 401);
	assert_int_equal(do_register(f, NULL, REG, NULL), 401);
	assert_int_equal(do_register(f, FX_BOOT, "{\"hostname\":\"x\"}", NULL), 400);
	assert_int_equal(do_register(f, FX_BOOT, "{\"instance_id\":\"i-1\",\"protocol\":2}", NULL),
			 400);
	assert_int_equal(do_register(f, FX_BOOT, "[1,2]", NULL), 400);
	assert_int_equal(do_register(f, FX_BOOT, REG, &g), 200);
	assert_int_equal(strlen(g.token), AUTH_AGENT_TOKEN_LEN);
	assert_int_equal(strncmp(g.id, "ag_", 3), 0);
	/* The store keeps the hash, never the token. */
	assert_int_equal(fx_int(f, "SELECT count(*) FROM agents WHERE instr(token_hash, '%s') > 0",
				g.token),
			 0);
	assert_int_equal(fx_int(f, "SELECT length(token_hash) FROM agents WHERE id = '%s'", g.id), 32);
	assert_int_equal(agent_call(f, &g, "POST", "heartbeat", "{\"uptime_s\":5}", NULL), 200);
	/* Again with the same instance: same id, new token, old token dead. */
	assert_int_equal(do_register(f, FX_BOOT, REG, &g2), 200);
	assert_string_equal(g.id, g2.id);
	assert_string_not_equal(g.token, g2.token);
	assert_int_equal(agent_call(f, &g, "POST", "heartbeat", "{}", NULL), 401);
	assert_int_equal(agent_call(f, &g2, "POST", "heartbeat", "{}", NULL), 200);
	assert_int_equal(fx_int(f, "SELECT count(*) FROM agents"), 1);
	/* Unknown agent: 404 (register again). */
	struct reg nobody = {.id = "ag_nobody", .token = "x"};
	assert_int_equal(agent_call(f, &nobody, "POST", "heartbeat", "{}", NULL), 404);
	assert_int_equal(fx_int(f, "SELECT count(*) FROM events WHERE kind = 'agent.reregistered'"),
			 1);
}

static void heartbeat_and_reports(void **state)
{
	struct fx *f = *state;
	struct reg g;
	cJSON *j = NULL;
	assert_int_equal(do_register(f, FX_BOOT, REG, &g), 200);
	assert_int_equal(agent_call(f, &g, "POST", "heartbeat", "{\"apps\":\"nope\"}", NULL), 400);
	assert_int_equal(agent_call(f, &g, "POST", "heartbeat", "{\"uptime_s\":10}", &j), 200);
	assert_int_equal((int64_t)fx_num(j, "server_time_ms"), T0);
	cJSON_Delete(j);
	fx_app(f, "web", "all");
	assert_int_equal(agent_call(f, &g, "POST", "heartbeat",
				    "{\"apps\":[{\"app\":\"web\",\"generation\":4,\"release\":\"r_1\","
				    "\"state\":\"running\"},{\"app\":\"gone\",\"generation\":1}]}",
				    NULL),
			 200);
	assert_int_equal(fx_int(f, "SELECT applied_generation FROM agent_apps WHERE agent = '%s'",
				g.id),
			 4);
	assert_int_equal(agent_call(f, &g, "PUT", "inventory",
				    "{\"containers\":[{\"id\":\"3f9a\",\"app\":\"web\","
				    "\"service\":\"web\",\"state\":\"running\"}]}",
				    NULL),
			 200);
	assert_int_equal(agent_call(f, &g, "PUT", "inventory", "{\"containers\":[1]}", NULL), 400);
	long st = fx_req(f, "GET", "/v1/ps", f->admin_key, NULL, &j, NULL);
	assert_int_equal(st, 200);
	cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "containers"), 0);
	assert_string_equal(fx_str(c0, "id"), "3f9a");
	assert_string_equal(fx_str(c0, "agent"), g.id);
	assert_string_equal(fx_str(c0, "instance_id"), "i-0a1b2c");
	cJSON_Delete(j);
	char r1[72];
	fx_release(f, "web", "reg/web:v1", "promote", r1, sizeof r1);
	fx_drain(f);
	assert_int_equal(agent_call(f, &g, "GET", "desired", NULL, &j), 200);
	cJSON *a0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "apps"), 0);
	assert_string_equal(fx_str(a0, "app"), "web");
	assert_string_equal(fx_str(a0, "release"), r1);
	/* Above the generation 4 the agent reported it runs, or it would be old news. */
	assert_int_equal((int)fx_num(a0, "generation"), 5);
	cJSON_Delete(j);
}

static void loss_and_return(void **state)
{
	struct fx *f = *state;
	struct reg a, b;
	char r1[72], r2[72];
	assert_int_equal(do_register(f, FX_BOOT, REG, &a), 200);
	assert_int_equal(do_register(f, FX_BOOT, "{\"instance_id\":\"i-b\"}", &b), 200);
	fx_app(f, "web", "all");
	fx_release(f, "web", "reg/web:v1", NULL, r1, sizeof r1);
	fx_release(f, "web", "reg/web:v2", "promote", r2, sizeof r2);
	fx_drain(f);
	struct agent *ag = agents_find(f->c.agents, b.id);
	assert_non_null(ag);
	/* a keeps calling; b goes silent. */
	clock_fake_advance(30000);
	assert_int_equal(agent_call(f, &a, "POST", "heartbeat", "{}", NULL), 200);
	clock_fake_advance(15000); /* b: 45 s silent */
	agents_check_lost(f->c.agents);
	fx_drain(f);
	assert_int_equal(ag->state, AGENT_LOST);
	assert_int_equal(agents_find(f->c.agents, a.id)->state, AGENT_LIVE);
	assert_string_equal(fx_text(f, "SELECT state FROM agents WHERE id = '%s'", b.id), "lost");
	/* The rollout no longer waits for b: a acks and it is done. */
	cJSON *j = NULL;
	assert_int_equal(agent_call(f, &a, "GET", "jobs?wait=0", NULL, &j), 200);
	cJSON *job = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "jobs"), 0);
	assert_non_null(job);
	char body[256], what[128];
	snprintf(body, sizeof body, "{\"lease_id\":\"%s\",\"result\":\"succeeded\"}",
		 fx_str(job, "lease_id"));
	snprintf(what, sizeof what, "jobs/%s/ack", fx_str(job, "id"));
	cJSON_Delete(j);
	assert_int_equal(agent_call(f, &a, "POST", what, body, NULL), 200);
	assert_string_equal(fx_text(f, "SELECT state FROM rollouts ORDER BY started_ms DESC, rowid "
				       "DESC LIMIT 1"),
			    "succeeded");
	/* b calls again: live, and its deploy job is there. */
	assert_int_equal(agent_call(f, &b, "GET", "jobs?wait=0", NULL, &j), 200);
	assert_int_equal(ag->state, AGENT_LIVE);
	cJSON *jobs = cJSON_GetObjectItem(j, "jobs");
	assert_int_equal(cJSON_GetArraySize(jobs), 1);
	assert_string_equal(fx_str(cJSON_GetArrayItem(jobs, 0), "app"), "web");
	cJSON_Delete(j);
	assert_int_equal(fx_int(f, "SELECT count(*) FROM events WHERE kind = 'agent.returned'"), 1);
}

static void draining_gets_no_jobs(void **state)
{
	struct fx *f = *state;
	struct reg a;
	assert_int_equal(do_register(f, FX_BOOT, REG, &a), 200);
	assert_int_equal(agent_call(f, &a, "POST", "heartbeat", "{\"draining\":true}", NULL), 200);
	assert_string_equal(fx_text(f, "SELECT state FROM agents"), "draining");
	fx_app(f, "web", "all");
	char r1[72];
	fx_release(f, "web", "reg/web:v1", "promote", r1, sizeof r1);
	assert_int_equal(fx_int(f, "SELECT count(*) FROM jobs"), 0);
	assert_string_equal(fx_text(f, "SELECT state FROM rollouts"), "succeeded");
	assert_int_equal(agent_call(f, &a, "POST", "heartbeat", "{\"draining\":false}", NULL), 200);
	assert_string_equal(fx_text(f, "SELECT state FROM agents"), "live");
	/* Back in service: it gets what it does not run. */
	assert_int_equal(fx_int(f, "SELECT count(*) FROM jobs WHERE state = 'queued'"), 1);
}

/* ---- long polls ---- */

struct pending {
	int done;
	long status;
	struct buf body;
	int64_t t_done;
};

static void pending_done(const struct http_response *resp, void *arg)
{
	struct pending *p = arg;
	p->status = resp->status;
	buf_append(&p->body, resp->body, resp->body_len);
	p->done = 1;
	p->t_done = (int64_t)(ev_time() * 1000);
}

static void start_poll(struct fx *f, const struct reg *g, int wait, struct pending *p)
{
	char url[256], auth[256];
	snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/agents/%s/jobs?wait=%d", f->port, g->id,
		 wait);
	snprintf(auth, sizeof auth, "Authorization: Bearer %s", g->token);
	const char *headers[] = {auth, NULL};
	memset(p, 0, sizeof *p);
	buf_init(&p->body, 1 << 20);
	struct http_request req = {.url = url, .headers = headers, .timeout_ms = 60000,
				   .on_done = pending_done, .arg = p};
	assert_true(http_client_start(f->http, &req) > 0);
}

static void long_poll_wakes_on_job(void **state)
{
	struct fx *f = *state;
	struct reg a;
	assert_int_equal(do_register(f, FX_BOOT, REG, &a), 200);
	struct pending p1, p2;
	start_poll(f, &a, 30, &p1);
	/* Let the poll arrive and park. */
	for (int i = 0; i < 200 && queue_waiting(f->c.queue) == 0; i++)
		ev_run(f->loop, EVRUN_ONCE);
	assert_int_equal(queue_waiting(f->c.queue), 1);
	/* A second poll from the same agent ends the first, empty. */
	start_poll(f, &a, 30, &p2);
	while (!p1.done)
		ev_run(f->loop, EVRUN_ONCE);
	assert_int_equal(p1.status, 200);
	assert_string_equal(p1.body.data, "{\"jobs\":[]}");
	assert_false(p2.done);
	/* A promoted release reaches the waiting poll at once. */
	fx_app(f, "web", "all");
	int64_t t0 = (int64_t)(ev_time() * 1000);
	struct fx_rel r = {.c = &f->c, .app = "web", .image = "reg/web:v1", .trigger = "promote"};
	struct err err;
	assert_int_equal(store_run(f->c.store, fx_release_tx, &r, &err), 0);
	queue_wake(f->c.queue, &r.wake);
	queue_wake_free(&r.wake);
	while (!p2.done)
		ev_run(f->loop, EVRUN_ONCE);
	assert_int_equal(p2.status, 200);
	assert_true(p2.t_done - t0 < 1000);
	cJSON *j = json_parse(p2.body.data, p2.body.len, p2.body.len + 1, NULL);
	cJSON *job = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "jobs"), 0);
	assert_string_equal(fx_str(job, "app"), "web");
	assert_int_equal((int)fx_num(job, "attempt"), 1);
	cJSON *rel = cJSON_GetObjectItem(job, "release");
	assert_string_equal(fx_str(rel, "id"), r.res.release);
	cJSON_Delete(j);
	buf_free(&p1.body);
	buf_free(&p2.body);
	assert_int_equal(queue_waiting(f->c.queue), 0);
}

static void poll_times_out_empty(void **state)
{
	struct fx *f = *state;
	struct reg a;
	assert_int_equal(do_register(f, FX_BOOT, REG, &a), 200);
	char *raw = NULL;
	double t0 = ev_time();
	char path[128];
	snprintf(path, sizeof path, "/v1/agents/%s/jobs?wait=1", a.id);
	assert_int_equal(fx_req(f, "GET", path, a.token, NULL, NULL, &raw), 200);
	assert_string_equal(raw, "{\"jobs\":[]}");
	free(raw);
	assert_true(ev_time() - t0 >= 0.9);
	snprintf(path, sizeof path, "/v1/agents/%s/jobs?wait=-1", a.id);
	assert_int_equal(fx_req(f, "GET", path, a.token, NULL, NULL, NULL), 400);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(registration, setup, teardown),
		cmocka_unit_test_setup_teardown(heartbeat_and_reports, setup, teardown),
		cmocka_unit_test_setup_teardown(loss_and_return, setup, teardown),
		cmocka_unit_test_setup_teardown(draining_gets_no_jobs, setup, teardown),
		cmocka_unit_test_setup_teardown(long_poll_wakes_on_job, setup, teardown),
		cmocka_unit_test_setup_teardown(poll_times_out_empty, setup, teardown),
	};
	return cmocka_run_group_tests_name("agents", tests, NULL, NULL);
}
