/*
 * runjob: the strict parser of run jobs (envelope, release, "run" object) and
 * what it refuses with a message naming the field, the container create
 * document (the service's image, environment and memory with the run's
 * command, ownership labels, the log stream named after the run, no restart
 * policy, no port, no route), and the bounded output tail.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "json.h"
#include "runjob.h"

/* A valid run job; the tests mutate a parsed copy of it. */
static const char base_job[] =
	"{\"id\":\"j_7f3a\",\"type\":\"run\",\"app\":\"web\",\"generation\":8,"
	"\"lease_id\":\"l_91c2\",\"lease_expires_in_s\":60,\"attempt\":1,"
	"\"release\":{\"id\":\"r_12\",\"app\":\"web\",\"build\":\"b_34\",\"created_ms\":1795600000000,"
	"\"services\":[{\"name\":\"web\",\"image\":\"registry.local:5000/web:v1\","
	"\"command\":[\"/srv/web\",\"--port\",\"8080\"],"
	"\"environment\":{\"DATABASE_URL\":\"postgres://x\"},\"port\":8080,"
	"\"proxy\":{\"listen\":80,\"hosts\":[],\"protocol\":\"http\"},"
	"\"health\":{\"type\":\"running\"},\"count\":2,\"memory_mb\":256},"
	"{\"name\":\"worker\",\"image\":\"registry.local:5000/worker:v1\","
	"\"health\":{\"type\":\"running\"},\"count\":1}]},"
	"\"run\":{\"id\":\"run-0123456789ab\",\"service\":\"web\","
	"\"command\":[\"bin/migrate\",\"--yes\"],\"timeout_s\":600}}";

static cJSON *job_doc(void)
{
	struct err err;
	cJSON *d = json_parse(base_job, strlen(base_job), 1 << 20, &err);
	assert_non_null(d);
	return d;
}

static cJSON *run_of(cJSON *job)
{
	return cJSON_GetObjectItemCaseSensitive(job, "run");
}

static void set(cJSON *obj, const char *key, cJSON *value)
{
	if (cJSON_GetObjectItemCaseSensitive(obj, key))
		cJSON_ReplaceItemInObjectCaseSensitive(obj, key, value);
	else
		cJSON_AddItemToObject(obj, key, value);
}

/* Parses doc, expects a refusal mentioning want; frees doc. */
static void expect_refused(cJSON *doc, const char *want, bool ackable)
{
	struct runjob_req req;
	struct err err = {{0}};
	int rc = runjob_parse(doc, &req, &err);
	runjob_req_clear(&req);
	cJSON_Delete(doc);
	if (rc != -1 || !strstr(err.msg, want))
		fail_msg("wanted a refusal mentioning \"%s\", got rc=%d \"%s\"", want, rc, err.msg);
	assert_int_equal(req.ackable, ackable);
	assert_null(req.release);
}

static void parses_a_valid_job(void **state)
{
	(void)state;
	cJSON *d = job_doc();
	assert_true(runjob_is_run(d));
	struct runjob_req req;
	struct err err = {{0}};
	assert_int_equal(runjob_parse(d, &req, &err), 0);
	assert_true(req.ackable);
	assert_string_equal(req.job, "j_7f3a");
	assert_string_equal(req.lease, "l_91c2");
	assert_string_equal(req.app, "web");
	assert_int_equal(req.generation, 8);
	assert_int_equal(req.lease_s, 60);
	assert_string_equal(req.run_id, "run-0123456789ab");
	assert_string_equal(req.service, "web");
	assert_int_equal(req.timeout_s, 600);
	assert_string_equal(req.command[0], "bin/migrate");
	assert_string_equal(req.command[1], "--yes");
	assert_null(req.command[2]);
	assert_non_null(req.svc);
	assert_string_equal(req.svc->name, "web");
	runjob_req_clear(&req);

	/* command null: the service's own; another service of the release */
	set(run_of(d), "command", cJSON_CreateNull());
	set(run_of(d), "service", cJSON_CreateString("worker"));
	assert_int_equal(runjob_parse(d, &req, &err), 0);
	assert_null(req.command);
	assert_string_equal(req.svc->name, "worker");
	runjob_req_clear(&req);
	cJSON_Delete(d);

	cJSON *deploy = cJSON_Parse("{\"type\":\"deploy\"}");
	assert_false(runjob_is_run(deploy));
	cJSON_Delete(deploy);
}

static void refuses_what_is_wrong(void **state)
{
	(void)state;
	cJSON *d = job_doc();
	cJSON_DeleteItemFromObject(d, "lease_id");
	expect_refused(d, "lease_id", false);

	d = job_doc();
	set(d, "surprise", cJSON_CreateTrue());
	expect_refused(d, "surprise", true);

	d = job_doc();
	cJSON_DeleteItemFromObject(d, "run");
	expect_refused(d, "run", true);

	d = job_doc();
	set(run_of(d), "id", cJSON_CreateString("Run_1"));
	expect_refused(d, "run.id: not a valid name", true);

	d = job_doc();
	set(run_of(d), "service", cJSON_CreateString("db"));
	expect_refused(d, "run.service: release r_12 has no service db", true);

	d = job_doc();
	set(run_of(d), "command", cJSON_CreateArray());
	expect_refused(d, "run.command", true);

	d = job_doc();
	set(run_of(d), "command", cJSON_CreateString("bin/migrate"));
	expect_refused(d, "run.command", true);

	d = job_doc();
	set(run_of(d), "timeout_s", cJSON_CreateNumber(0));
	expect_refused(d, "timeout_s", true);

	d = job_doc();
	set(run_of(d), "extra", cJSON_CreateNumber(1));
	expect_refused(d, "extra", true);

	d = job_doc();
	set(d, "app", cJSON_CreateString("api"));
	expect_refused(d, "release.app", true);

	d = job_doc();
	set(d, "type", cJSON_CreateString("deploy"));
	expect_refused(d, "type", true);

	d = job_doc();
	cJSON *svc = cJSON_GetArrayItem(
		cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(d, "release"),
						 "services"),
		0);
	set(svc, "image", cJSON_CreateString("Not An Image"));
	expect_refused(d, "release.services[0].image", true);
}

static const char *label(const cJSON *body, const char *key)
{
	const cJSON *l = cJSON_GetObjectItemCaseSensitive(body, "Labels");
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(l, key);
	return cJSON_IsString(v) ? v->valuestring : NULL;
}

static void create_body(void **state)
{
	(void)state;
	struct agent a;
	memset(&a, 0, sizeof a);
	a.set.network = "slipway";
	a.set.labels[0] = "slipway.test=t1";
	a.set.labels[1] = NULL;
	a.set.log_max_size = 10 << 20;
	a.set.log_max_files = 3;
	cJSON *d = job_doc();
	struct runjob_req req;
	struct err err = {{0}};
	assert_int_equal(runjob_parse(d, &req, &err), 0);
	cJSON *b = runjob_create_body(&a, &req);
	assert_non_null(b);
	assert_string_equal(cJSON_GetObjectItemCaseSensitive(b, "Image")->valuestring,
			    "registry.local:5000/web:v1");
	cJSON *cmd = cJSON_GetObjectItemCaseSensitive(b, "Cmd");
	assert_int_equal(cJSON_GetArraySize(cmd), 2);
	assert_string_equal(cJSON_GetArrayItem(cmd, 0)->valuestring, "bin/migrate");
	cJSON *env = cJSON_GetObjectItemCaseSensitive(b, "Env");
	assert_int_equal(cJSON_GetArraySize(env), 1);
	assert_string_equal(cJSON_GetArrayItem(env, 0)->valuestring, "DATABASE_URL=postgres://x");
	assert_string_equal(label(b, "slipway.app"), "web");
	assert_string_equal(label(b, "slipway.release"), "r_12");
	assert_string_equal(label(b, "slipway.run"), "run-0123456789ab");
	assert_string_equal(label(b, "slipway.service"), "run-0123456789ab");
	assert_string_equal(label(b, "slipway.run.service"), "web");
	assert_string_equal(label(b, "slipway.job"), "j_7f3a");
	assert_string_equal(label(b, "slipway.test"), "t1");
	assert_null(label(b, "slipway.port")); /* never routed */
	cJSON *hc = cJSON_GetObjectItemCaseSensitive(b, "HostConfig");
	assert_int_equal((int64_t)cJSON_GetObjectItemCaseSensitive(hc, "Memory")->valuedouble,
			 (int64_t)256 << 20);
	assert_null(cJSON_GetObjectItemCaseSensitive(hc, "RestartPolicy"));
	assert_null(cJSON_GetObjectItemCaseSensitive(hc, "PortBindings"));
	assert_string_equal(cJSON_GetObjectItemCaseSensitive(hc, "NetworkMode")->valuestring,
			    "slipway");
	cJSON_Delete(b);
	runjob_req_clear(&req);

	/* Without a command of its own, the service's runs. */
	set(run_of(d), "command", cJSON_CreateNull());
	assert_int_equal(runjob_parse(d, &req, &err), 0);
	b = runjob_create_body(&a, &req);
	cmd = cJSON_GetObjectItemCaseSensitive(b, "Cmd");
	assert_int_equal(cJSON_GetArraySize(cmd), 3);
	assert_string_equal(cJSON_GetArrayItem(cmd, 0)->valuestring, "/srv/web");
	cJSON_Delete(b);
	runjob_req_clear(&req);
	cJSON_Delete(d);
}

static void tail_keeps_the_last_lines(void **state)
{
	(void)state;
	struct runjob_tail t;
	assert_int_equal(runjob_tail_init(&t, 3), 0);
	char *s = runjob_tail_text(&t);
	assert_string_equal(s, "");
	free(s);
	runjob_tail_add(&t, "one", 3);
	runjob_tail_add(&t, "two", 3);
	s = runjob_tail_text(&t);
	assert_string_equal(s, "one\ntwo");
	free(s);
	runjob_tail_add(&t, "three", 5);
	runjob_tail_add(&t, "four", 4);
	runjob_tail_add(&t, "five", 4);
	s = runjob_tail_text(&t);
	assert_string_equal(s, "three\nfour\nfive");
	free(s);
	char *big = malloc(RUNJOB_LINE_MAX * 2);
	memset(big, 'x', RUNJOB_LINE_MAX * 2);
	runjob_tail_add(&t, big, RUNJOB_LINE_MAX * 2);
	free(big);
	s = runjob_tail_text(&t);
	assert_int_equal(strlen(s), strlen("four\nfive\n") + RUNJOB_LINE_MAX);
	free(s);
	runjob_tail_free(&t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(parses_a_valid_job),
		cmocka_unit_test(refuses_what_is_wrong),
		cmocka_unit_test(create_body),
		cmocka_unit_test(tail_keeps_the_last_lines),
	};
	return cmocka_run_group_tests_name("runjob", tests, NULL, NULL);
}
