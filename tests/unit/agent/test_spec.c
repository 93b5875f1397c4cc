#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "spec.h"

/* A valid job; the tests mutate a parsed copy of it. */
static const char base_job[] =
	"{\"id\":\"j_7f3a\",\"type\":\"deploy\",\"app\":\"web\",\"generation\":8,"
	"\"lease_id\":\"l_91c2\",\"lease_expires_in_s\":60,\"attempt\":1,"
	"\"release\":{\"id\":\"r_12\",\"app\":\"web\",\"build\":\"b_34\",\"created_ms\":1795600000000,"
	"\"services\":[{\"name\":\"web\","
	"\"image\":\"registry.local:5000/web@sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\","
	"\"command\":[\"/srv/web\",\"--port\",\"8080\"],"
	"\"environment\":{\"DATABASE_URL\":\"postgres://x\"},\"port\":8080,"
	"\"proxy\":{\"listen\":80,\"hosts\":[\"web.example.com\"],\"protocol\":\"http\"},"
	"\"health\":{\"type\":\"http\",\"path\":\"/health\",\"interval_ms\":1000,"
	"\"timeout_ms\":2000,\"grace_ms\":30000},"
	"\"count\":2,\"memory_mb\":256,\"stop_grace_ms\":10000}]}}";

static cJSON *job_doc(void)
{
	struct err err;
	cJSON *d = json_parse(base_job, strlen(base_job), SPEC_POLL_MAX, &err);
	assert_non_null(d);
	return d;
}

static cJSON *release_of(cJSON *job) { return cJSON_GetObjectItemCaseSensitive(job, "release"); }

static cJSON *service_of(cJSON *job)
{
	return cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(release_of(job), "services"), 0);
}

/* Parses doc, expects a refusal whose message contains want; frees doc. */
static void expect_refused(cJSON *doc, const char *want, bool ackable)
{
	struct spec_job job;
	struct err err = {{0}};
	int rc = spec_job_parse(doc, &job, &err);
	if (rc == 0)
		spec_job_clear(&job);
	cJSON_Delete(doc);
	if (rc != -1 || !strstr(err.msg, want))
		fail_msg("wanted a refusal mentioning \"%s\", got rc=%d \"%s\"", want, rc, err.msg);
	assert_null(job.release);
	assert_int_equal(job.ackable, ackable);
}

static void set(cJSON *obj, const char *key, cJSON *value)
{
	if (cJSON_GetObjectItemCaseSensitive(obj, key))
		cJSON_ReplaceItemInObjectCaseSensitive(obj, key, value);
	else
		cJSON_AddItemToObject(obj, key, value);
}

static void test_valid_job(void **state)
{
	(void)state;
	cJSON *doc = job_doc();
	struct spec_job job;
	struct err err;
	assert_int_equal(spec_job_parse(doc, &job, &err), 0);
	cJSON_Delete(doc);
	assert_true(job.ackable);
	assert_string_equal(job.id, "j_7f3a");
	assert_string_equal(job.lease_id, "l_91c2");
	assert_int_equal(job.generation, 8);
	assert_int_equal(job.type, SPEC_JOB_DEPLOY);
	const struct spec_release *r = job.release;
	assert_non_null(r);
	assert_string_equal(r->id, "r_12");
	assert_string_equal(r->build, "b_34");
	assert_int_equal(r->service_count, 1);
	const struct spec_service *s = &r->services[0];
	assert_string_equal(s->name, "web");
	assert_string_equal(s->command[1], "--port");
	assert_null(s->command[3]);
	assert_string_equal(s->env[0], "DATABASE_URL=postgres://x");
	assert_int_equal(s->env_count, 1);
	assert_int_equal(s->port, 8080);
	assert_true(s->has_proxy);
	assert_int_equal(s->proxy.listen, 80);
	assert_string_equal(s->proxy.hosts[0], "web.example.com");
	assert_int_equal(s->health.type, SPEC_HEALTH_HTTP);
	assert_string_equal(s->health.path, "/health");
	assert_int_equal(s->count, 2);
	assert_int_equal(s->memory_mb, 256);
	spec_job_clear(&job);
}

static void test_defaults_and_workers(void **state)
{
	(void)state;
	const char *text =
		"{\"id\":\"j\",\"type\":\"deploy\",\"app\":\"worker\",\"generation\":1,"
		"\"lease_id\":\"l\",\"lease_expires_in_s\":5,\"attempt\":2,\"release\":{\"id\":\"r\","
		"\"app\":\"worker\",\"build\":null,\"services\":[{\"name\":\"jobs\",\"image\":\"busybox\","
		"\"command\":null,\"environment\":null,\"port\":null,\"proxy\":null,"
		"\"health\":{\"type\":\"running\",\"grace_ms\":500},\"count\":0}]}}";
	struct err err;
	cJSON *doc = json_parse(text, strlen(text), SPEC_POLL_MAX, &err);
	struct spec_job job;
	assert_int_equal(spec_job_parse(doc, &job, &err), 0);
	cJSON_Delete(doc);
	const struct spec_service *s = &job.release->services[0];
	assert_null(s->command);
	assert_non_null(s->env);
	assert_null(s->env[0]);
	assert_int_equal(s->port, 0);
	assert_false(s->has_proxy);
	assert_int_equal(s->health.interval_ms, 1000);
	assert_int_equal(s->health.timeout_ms, 2000);
	assert_int_equal(s->health.grace_ms, 500);
	assert_int_equal(s->stop_grace_ms, 10000);
	assert_int_equal(s->memory_mb, 0);
	assert_string_equal(job.release->build, "");
	spec_job_clear(&job);
}

static void test_remove_job(void **state)
{
	(void)state;
	const char *text = "{\"id\":\"j9\",\"type\":\"remove\",\"app\":\"web\",\"generation\":9,"
			   "\"lease_id\":\"l\",\"lease_expires_in_s\":60,\"attempt\":1,"
			   "\"release\":null}";
	struct err err;
	cJSON *doc = json_parse(text, strlen(text), SPEC_POLL_MAX, &err);
	struct spec_job job;
	assert_int_equal(spec_job_parse(doc, &job, &err), 0);
	assert_int_equal(job.type, SPEC_JOB_REMOVE);
	assert_null(job.release);
	cJSON_Delete(doc);
	/* A remove job carrying a release is malformed. */
	cJSON *d = job_doc();
	set(d, "type", cJSON_CreateString("remove"));
	expect_refused(d, "job.release: a remove job carries no release", true);
}

static void test_envelope_rejections(void **state)
{
	(void)state;
	cJSON *d;
	d = job_doc();
	cJSON_DeleteItemFromObject(d, "id");
	expect_refused(d, "job.id: missing", false);
	d = job_doc();
	set(d, "id", cJSON_CreateString("has space"));
	expect_refused(d, "job.id: not a valid id", false);
	d = job_doc();
	cJSON_DeleteItemFromObject(d, "lease_id");
	expect_refused(d, "job.lease_id: missing", false);
	d = job_doc();
	set(d, "lease_id", cJSON_CreateNumber(5));
	expect_refused(d, "job.lease_id: expected string, got number", false);
	d = job_doc();
	set(d, "colour", cJSON_CreateString("blue"));
	expect_refused(d, "job: unknown key \"colour\"", true);
	d = job_doc();
	cJSON_DeleteItemFromObject(d, "type");
	expect_refused(d, "job.type: missing", true);
	d = job_doc();
	set(d, "type", cJSON_CreateString("restart"));
	expect_refused(d, "job.type: expected deploy or remove", true);
	d = job_doc();
	set(d, "app", cJSON_CreateString("Web"));
	expect_refused(d, "job.app: \"Web\" is not a valid name", true);
	d = job_doc();
	set(d, "generation", cJSON_CreateNumber(0));
	expect_refused(d, "job.generation: expected integer 1..", true);
	d = job_doc();
	set(d, "generation", cJSON_CreateNumber(1.5));
	expect_refused(d, "job.generation: expected integer", true);
	d = job_doc();
	set(d, "generation", cJSON_CreateString("8"));
	expect_refused(d, "job.generation: expected integer 1..9007199254740991, got string", true);
	d = job_doc();
	set(d, "lease_expires_in_s", cJSON_CreateNumber(0));
	expect_refused(d, "job.lease_expires_in_s", true);
	d = job_doc();
	cJSON_DeleteItemFromObject(d, "attempt");
	expect_refused(d, "job.attempt: missing", true);
	d = job_doc();
	cJSON_DeleteItemFromObject(d, "release");
	expect_refused(d, "job.release: missing", true);
	d = job_doc();
	set(d, "release", cJSON_CreateString("r_12"));
	expect_refused(d, "release: expected object", true);
	d = job_doc();
	set(release_of(d), "app", cJSON_CreateString("api"));
	expect_refused(d, "release.app: \"api\" differs from the job's app \"web\"", true);
	/* Not an object at all. */
	expect_refused(cJSON_CreateArray(), "job: expected object", false);
}

static void test_envelope_best_effort(void **state)
{
	(void)state;
	cJSON *d = job_doc();
	set(release_of(d), "colour", cJSON_CreateString("red"));
	struct spec_job job;
	struct err err;
	assert_int_equal(spec_job_parse(d, &job, &err), -1);
	cJSON_Delete(d);
	/* What the ack and the logs need was still read. */
	assert_true(job.ackable);
	assert_string_equal(job.app, "web");
	assert_int_equal(job.generation, 8);
	assert_non_null(strstr(err.msg, "release: unknown key \"colour\""));
}

static void test_release_rejections(void **state)
{
	(void)state;
	cJSON *d;
	d = job_doc();
	cJSON_DeleteItemFromObject(release_of(d), "id");
	expect_refused(d, "release.id: missing", true);
	d = job_doc();
	set(release_of(d), "build", cJSON_CreateString("b/34"));
	expect_refused(d, "release.build: not a valid id", true);
	d = job_doc();
	set(release_of(d), "created_ms", cJSON_CreateNumber(-1));
	expect_refused(d, "release.created_ms: expected integer 0..", true);
	d = job_doc();
	set(release_of(d), "services", cJSON_CreateArray());
	expect_refused(d, "release.services: empty", true);
	d = job_doc();
	cJSON_DeleteItemFromObject(release_of(d), "services");
	expect_refused(d, "release.services: missing", true);
	d = job_doc();
	cJSON *many = cJSON_CreateArray();
	for (int i = 0; i < 33; i++)
		cJSON_AddItemToArray(many, cJSON_Duplicate(service_of(d), 1));
	set(release_of(d), "services", many);
	expect_refused(d, "release.services: more than 32 items", true);
	d = job_doc();
	cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(release_of(d), "services"),
			     cJSON_Duplicate(service_of(d), 1));
	expect_refused(d, "release.services[1].name: service \"web\" listed twice", true);
	d = job_doc();
	cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(release_of(d), "services"),
			     cJSON_CreateString("web"));
	expect_refused(d, "release.services[1]: expected object", true);
}

static void test_service_rejections(void **state)
{
	(void)state;
	static const struct {
		const char *key;
		const char *json;  /* NULL: delete the key */
		const char *want;
	} cases[] = {
		{"name", NULL, "release.services[0].name: missing"},
		{"name", "\"-web\"", "is not a valid name"},
		{"name", "\"abcdefghijabcdefghijabcdefghijabcdefghijx\"", "longer than 40"},
		{"image", NULL, "release.services[0].image: missing"},
		{"image", "42", "release.services[0].image: expected string, got number"},
		{"colour", "\"red\"", "release.services[0]: unknown key \"colour\""},
		{"command", "[]", "release.services[0].command: empty"},
		{"command", "[\"ok\", 3]", "release.services[0].command[1]: expected string"},
		{"command", "\"/srv/web\"", "release.services[0].command: expected array"},
		{"environment", "[]", "release.services[0].environment: expected object"},
		{"environment", "{\"A\": 1}", "release.services[0].environment.A: expected string"},
		{"environment", "{\"1A\": \"x\"}", "\"1A\" is not a valid variable name"},
		{"environment", "{\"A-B\": \"x\"}", "\"A-B\" is not a valid variable name"},
		{"environment", "{\"A\": \"x\", \"A\": \"y\"}", "variable \"A\" given twice"},
		{"port", "0", "release.services[0].port: expected integer 1..65535, got 0"},
		{"port", "65536", "release.services[0].port: expected integer 1..65535"},
		{"port", "null", "release.services[0].proxy: a proxied service needs a port"},
		{"count", NULL, "release.services[0].count: missing"},
		{"count", "101", "release.services[0].count: expected integer 0..100, got 101"},
		{"count", "-1", "release.services[0].count: expected integer 0..100"},
		{"memory_mb", "5", "release.services[0].memory_mb: expected 0 (no limit) or 6..1048576"},
		{"memory_mb", "1048577", "release.services[0].memory_mb: expected integer"},
		{"stop_grace_ms", "3600001", "release.services[0].stop_grace_ms: expected integer"},
		{"health", NULL, "release.services[0].health: missing"},
		{"health", "\"http\"", "release.services[0].health: expected object"},
		{"proxy", "{\"listen\": 0}", "release.services[0].proxy.listen: expected integer 1..65535"},
		{"proxy", "{}", "release.services[0].proxy.listen: missing"},
		{"proxy", "{\"listen\": 80, \"protocol\": \"udp\"}", "proxy.protocol: expected http or tcp"},
		{"proxy", "{\"listen\": 80, \"protocol\": \"tcp\", \"hosts\": [\"a.b\"]}",
		 "proxy.hosts: a tcp route takes no hosts"},
		{"proxy", "{\"listen\": 80, \"hosts\": [\"bad_host\"]}", "\"bad_host\" is not a valid host"},
		{"proxy", "{\"listen\": 80, \"hosts\": [\"a.b\", \"A.B\"]}", "host \"a.b\" listed twice"},
		{"proxy", "{\"listen\": 80, \"tls\": true}", "proxy: unknown key \"tls\""},
		{"proxy", "{\"listen\": 80, \"hosts\": \"a.b\"}", "proxy.hosts: expected array"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		cJSON *d = job_doc();
		cJSON *svc = service_of(d);
		if (cases[i].json) {
			/* Duplicate keys cannot be built with cJSON: parse text. */
			cJSON *v = cJSON_Parse(cases[i].json);
			assert_non_null(v);
			set(svc, cases[i].key, v);
		} else {
			cJSON_DeleteItemFromObject(svc, cases[i].key);
		}
		expect_refused(d, cases[i].want, true);
	}
}

static void test_health_rejections(void **state)
{
	(void)state;
	static const struct {
		const char *json;
		const char *want;
	} cases[] = {
		{"{\"path\": \"/health\"}", "health.type: missing"},
		{"{\"type\": \"exec\"}", "health.type: expected http, tcp, docker or running"},
		{"{\"type\": \"http\"}", "health.path: missing"},
		{"{\"type\": \"http\", \"path\": \"health\"}", "health.path: must start with '/'"},
		{"{\"type\": \"http\", \"path\": \"/a b\"}", "health.path: holds a space"},
		{"{\"type\": \"tcp\", \"path\": \"/x\"}", "health.path: only health type http takes a path"},
		{"{\"type\": \"http\", \"path\": \"/\", \"interval_ms\": 5}", "health.interval_ms: expected integer 10..600000"},
		{"{\"type\": \"http\", \"path\": \"/\", \"timeout_ms\": 600001}", "health.timeout_ms"},
		{"{\"type\": \"http\", \"path\": \"/\", \"grace_ms\": -1}", "health.grace_ms"},
		{"{\"type\": \"http\", \"path\": \"/\", \"retries\": 3}", "health: unknown key \"retries\""},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		cJSON *d = job_doc();
		set(service_of(d), "health", cJSON_Parse(cases[i].json));
		expect_refused(d, cases[i].want, true);
	}
	/* http and tcp checks need a port (a worker has none). */
	cJSON *d = job_doc();
	set(service_of(d), "proxy", cJSON_CreateNull());
	set(service_of(d), "port", cJSON_CreateNull());
	expect_refused(d, "health.type: http checks need a port", true);
}

static void test_environment_cap(void **state)
{
	(void)state;
	/* 256 KiB is allowed (NAME=value summed), one byte more is not. */
	size_t value_len = SPEC_ENV_MAX - strlen("BIG=");
	char *value = malloc(value_len + 1);
	memset(value, 'x', value_len);
	value[value_len] = '\0';
	cJSON *d = job_doc();
	cJSON *env = cJSON_CreateObject();
	cJSON_AddStringToObject(env, "BIG", value);
	set(service_of(d), "environment", env);
	struct spec_job job;
	struct err err;
	assert_int_equal(spec_job_parse(d, &job, &err), 0);
	assert_int_equal(job.release->services[0].env_bytes, SPEC_ENV_MAX);
	spec_job_clear(&job);
	cJSON_Delete(d);
	value[value_len - 1] = '\0';
	d = job_doc();
	env = cJSON_CreateObject();
	cJSON_AddStringToObject(env, "BIG", value);
	cJSON_AddStringToObject(env, "AB", "");
	set(service_of(d), "environment", env);
	expect_refused(d, "environment: more than 262144 bytes", true);
	free(value);
	/* A 1 MB environment from many small variables. */
	d = job_doc();
	env = cJSON_CreateObject();
	char name[32];
	for (int i = 0; i < 20000; i++) {
		snprintf(name, sizeof name, "VAR_%d", i);
		cJSON_AddStringToObject(env, name, "0123456789012345678901234567890123456789");
	}
	set(service_of(d), "environment", env);
	expect_refused(d, "environment: more than 262144 bytes", true);
}

static void test_route_conflicts(void **state)
{
	(void)state;
	const char *second[] = {
		/* same port, both catch-all */
		"{\"name\":\"api\",\"image\":\"api:1\",\"port\":9000,\"proxy\":{\"listen\":80},"
		"\"health\":{\"type\":\"tcp\"},\"count\":1}",
		/* same port and host */
		"{\"name\":\"api\",\"image\":\"api:1\",\"port\":9000,\"proxy\":{\"listen\":80,"
		"\"hosts\":[\"web.example.com\"]},\"health\":{\"type\":\"tcp\"},\"count\":1}",
		/* tcp on an http port */
		"{\"name\":\"api\",\"image\":\"api:1\",\"port\":9000,\"proxy\":{\"listen\":80,"
		"\"protocol\":\"tcp\"},\"health\":{\"type\":\"tcp\"},\"count\":1}",
	};
	for (size_t i = 0; i < 3; i++) {
		cJSON *d = job_doc();
		if (i == 0)
			set(service_of(d), "proxy", cJSON_Parse("{\"listen\":80}"));
		cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(release_of(d), "services"),
				     cJSON_Parse(second[i]));
		expect_refused(d, "release.services: web and api both claim port 80", true);
	}
	/* Different hosts on one port are fine. */
	cJSON *d = job_doc();
	cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(release_of(d), "services"),
			     cJSON_Parse("{\"name\":\"api\",\"image\":\"api:1\",\"port\":9000,"
					 "\"proxy\":{\"listen\":80,\"hosts\":[\"api.example.com\"]},"
					 "\"health\":{\"type\":\"tcp\"},\"count\":1}"));
	struct spec_job job;
	struct err err;
	assert_int_equal(spec_job_parse(d, &job, &err), 0);
	spec_job_clear(&job);
	cJSON_Delete(d);
}

static void test_image_references(void **state)
{
	(void)state;
	const char *good[] = {
		"busybox", "busybox:1.36", "library/busybox", "docker.io/library/busybox:latest",
		"127.0.0.1:5000/slipway-test/testsrv:v1", "localhost/a", "localhost:5000/a/b_c__d.e-f",
		"registry.local:5000/web@sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
		"web:v1@sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
		"a---b", "Host-1.example.com/x",
	};
	const char *bad[] = {
		"", "UPPER", "busybox:", ":tag", "a//b", "a/", "/a", "a b", "a:b:c", "-a", "a-",
		"a..b", "a___b", "busybox@sha256:abc", "busybox@md5:9f86d081884c7d659a2feaa0c55ad015",
		"busybox@sha256:9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08",
		"reg:99999/a", "reg:/a", "-reg.io/a", "busybox:-x", "a\nb",
	};
	for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
		const char *why = "";
		if (!spec_valid_image(good[i], &why))
			fail_msg("\"%s\" refused: %s", good[i], why);
	}
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		if (spec_valid_image(bad[i], NULL))
			fail_msg("\"%s\" accepted", bad[i]);
	}
	char long_ref[600];
	memset(long_ref, 'a', sizeof long_ref - 1);
	long_ref[sizeof long_ref - 1] = '\0';
	const char *why;
	assert_false(spec_valid_image(long_ref, &why));
	assert_string_equal(why, "longer than 512 bytes");
	assert_true(spec_image_has_digest(good[7]));
	assert_false(spec_image_has_digest(good[1]));
	/* Through the parser, with the field named. */
	cJSON *d = job_doc();
	set(service_of(d), "image", cJSON_CreateString("Registry.local/WEB:v1"));
	expect_refused(d, "release.services[0].image: not a valid image reference", true);
}

static void test_names_hosts_ids(void **state)
{
	(void)state;
	assert_true(spec_valid_name("web"));
	assert_true(spec_valid_name("a0-b"));
	assert_false(spec_valid_name("0web"));
	assert_false(spec_valid_name(""));
	assert_false(spec_valid_name("web_1"));
	assert_true(spec_valid_id("j_7f3a-B"));
	assert_false(spec_valid_id("j.1"));
	assert_true(spec_valid_host("web.example.com"));
	assert_true(spec_valid_host("localhost"));
	assert_false(spec_valid_host("-a.com"));
	assert_false(spec_valid_host("a..com"));
	assert_false(spec_valid_host("a.com."));
	assert_false(spec_valid_host("a.com:80"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid_job),
		cmocka_unit_test(test_defaults_and_workers),
		cmocka_unit_test(test_remove_job),
		cmocka_unit_test(test_envelope_rejections),
		cmocka_unit_test(test_envelope_best_effort),
		cmocka_unit_test(test_release_rejections),
		cmocka_unit_test(test_service_rejections),
		cmocka_unit_test(test_health_rejections),
		cmocka_unit_test(test_environment_cap),
		cmocka_unit_test(test_route_conflicts),
		cmocka_unit_test(test_image_references),
		cmocka_unit_test(test_names_hosts_ids),
	};
	return cmocka_run_group_tests_name("spec", tests, NULL, NULL);
}
