/*
 * releases: the spec from the builder's normalized manifest (manifest.h) and
 * its validation, releases from builds (once per build), immutability (only
 * the status changes; env, scale and rollback make new releases), and the
 * environment sealed at rest (no plaintext in any row, bound to its row).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "coord_fixture.h"
#include "manifest.h"

#define SECRET "correct-horse-battery-staple"

static int setup(void **state)
{
	static struct fx f;
	fx_init(&f, NULL, 0);
	fx_app(&f, "web", "all");
	*state = &f;
	return 0;
}

static int teardown(void **state)
{
	fx_free(*state);
	return 0;
}

static cJSON *parse(const char *s)
{
	cJSON *j = json_parse(s, strlen(s), strlen(s) + 1, NULL);
	assert_non_null(j);
	return j;
}

static void spec_from_builder_manifest(void **state)
{
	(void)state;
	const char *yml = "services:\n"
			  "  web:\n"
			  "    build: .\n"
			  "    command: [\"/srv/web\", \"--port\", \"8080\"]\n"
			  "    environment: {LOG_LEVEL: info}\n"
			  "    port: 8080\n"
			  "    health: {path: /health, interval: 1s, timeout: 2s, grace: 30s}\n"
			  "    scale: {count: 2, memory: 256M}\n"
			  "    stop_grace: 10s\n"
			  "    proxy: {listen: 80, hosts: [web.example.com]}\n"
			  "  worker:\n"
			  "    image: busybox:1.36\n";
	struct err err;
	cJSON *m = manifest_parse(yml, strlen(yml), "slipway.yml", &err);
	if (!m)
		fail_msg("manifest: %s", err.msg);
	cJSON *images = parse("{\"web\":{\"image\":\"127.0.0.1:5000/web:web.b_1\",\"digest\":"
			      "\"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"}}");
	cJSON *scale = parse("{\"worker\":{\"count\":0}}");
	cJSON *svcs = releases_services_from_manifest(m, images, scale, &err);
	if (!svcs)
		fail_msg("services: %s", err.msg);
	assert_int_equal(cJSON_GetArraySize(svcs), 2);
	cJSON *web = NULL, *worker = NULL, *s;
	cJSON_ArrayForEach(s, svcs)
	{
		if (strcmp(fx_str(s, "name"), "web") == 0)
			web = s;
		else
			worker = s;
	}
	assert_non_null(web);
	assert_non_null(worker);
	assert_string_equal(fx_str(web, "image"),
			    "127.0.0.1:5000/web@sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b82"
			    "2cd15d6c15b0f00a08");
	assert_int_equal((int)fx_num(web, "port"), 8080);
	assert_int_equal((int)fx_num(web, "count"), 2);
	assert_int_equal((int)fx_num(web, "memory_mb"), 256);
	assert_int_equal((int)fx_num(web, "stop_grace_ms"), 10000);
	cJSON *h = cJSON_GetObjectItem(web, "health");
	assert_string_equal(fx_str(h, "type"), "http");
	assert_string_equal(fx_str(h, "path"), "/health");
	assert_int_equal((int)fx_num(h, "grace_ms"), 30000);
	cJSON *p = cJSON_GetObjectItem(web, "proxy");
	assert_int_equal((int)fx_num(p, "listen"), 80);
	assert_string_equal(fx_str(p, "protocol"), "http");
	assert_string_equal(fx_str(cJSON_GetObjectItem(web, "environment"), "LOG_LEVEL"), "info");
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(web, "command")), 3);
	/* the prebuilt image is used as given; the scale override wins */
	assert_string_equal(fx_str(worker, "image"), "busybox:1.36");
	assert_int_equal((int)fx_num(worker, "count"), 0);
	assert_true(cJSON_IsNull(cJSON_GetObjectItem(worker, "port")));
	assert_true(cJSON_IsNull(cJSON_GetObjectItem(worker, "command")));
	cJSON_Delete(svcs);
	cJSON_Delete(scale);
	cJSON_Delete(images);
	cJSON_Delete(m);
}

static void spec_validation(void **state)
{
	(void)state;
	static const char *const bad[] = {
		"{}",
		"{\"services\":{}}",
		"{\"services\":{\"web\":{}}}",                                        /* no image */
		"{\"services\":{\"Web\":{\"image\":\"x\"}}}",                         /* name */
		"{\"services\":{\"web\":{\"image\":\"x\",\"port\":0}}}",
		"{\"services\":{\"web\":{\"image\":\"x\",\"count\":101}}}",
		"{\"services\":{\"web\":{\"image\":\"x\",\"memory_mb\":3}}}",
		"{\"services\":{\"web\":{\"image\":\"x\",\"health\":{\"type\":\"ping\"}}}}",
		"{\"services\":{\"web\":{\"image\":\"x\",\"health\":{\"type\":\"http\"}}}}",
		"{\"services\":{\"web\":{\"image\":\"x\",\"command\":\"ls\"}}}",
		"{\"services\":{\"web\":{\"image\":\"x\",\"environment\":{\"A-B\":\"1\"}}}}",
		"{\"services\":{\"web\":{\"image\":\"x\",\"environment\":{\"A\":1}}}}",
		"{\"services\":{\"web\":{\"image\":\"a b\"}}}",
		"{\"services\":{\"web\":{\"image\":\"x\",\"proxy\":{\"listen\":80,"
		"\"protocol\":\"udp\"}}}}",
		"{\"services\":[{\"name\":\"web\",\"image\":\"x\"},{\"name\":\"web\",\"image\":\"y\"}]}",
		/* what the agent would refuse (agent/spec.c) is refused here already */
		"{\"services\":{\"web\":{\"image\":\"x\",\"proxy\":{\"listen\":80}}}}",
		"{\"services\":{\"web\":{\"image\":\"x\",\"health\":{\"type\":\"tcp\"}}}}",
		"{\"services\":{\"web\":{\"image\":\"x\",\"port\":80,\"health\":{\"type\":"
		"\"tcp\",\"path\":\"/h\"}}}}",
		"{\"services\":{\"web\":{\"image\":\"x\",\"health\":{\"interval_ms\":600001}}}}",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		cJSON *m = parse(bad[i]);
		struct err err = {{0}};
		cJSON *s = releases_services_from_manifest(m, NULL, NULL, &err);
		if (s)
			fail_msg("accepted: %s", bad[i]);
		assert_true(err.msg[0] != '\0');
		cJSON_Delete(m);
	}
	/* 33 services */
	cJSON *m = cJSON_CreateObject(), *svcs = cJSON_AddObjectToObject(m, "services");
	for (int i = 0; i < 33; i++) {
		char n[16];
		snprintf(n, sizeof n, "s%d", i);
		cJSON *o = cJSON_AddObjectToObject(svcs, n);
		cJSON_AddStringToObject(o, "image", "x");
	}
	struct err err;
	assert_null(releases_services_from_manifest(m, NULL, NULL, &err));
	cJSON_Delete(m);
}

struct done {
	int called;
	int rc;
	char release[72];
	char error[512];
};

static void on_done(int rc, const char *release, const char *error, void *arg)
{
	struct done *d = arg;
	d->called++;
	d->rc = rc;
	snprintf(d->release, sizeof d->release, "%s", release ? release : "");
	snprintf(d->error, sizeof d->error, "%s", error ? error : "");
}

static void from_build(struct fx *f, const char *build, struct done *d)
{
	memset(d, 0, sizeof *d);
	assert_int_equal(releases_create_from_build(&f->c, build, on_done, d), 0);
	assert_int_equal(d->called, 0); /* never from inside the call */
	fx_drain(f);
	assert_int_equal(d->called, 1);
}

static void release_from_build_once(void **state)
{
	struct fx *f = *state;
	fx_exec(f, "INSERT INTO builds(id, app, status, source, description, manifest, images, "
		   "created_ms) VALUES ('b_1', 'web', 'complete', 'push', 'push g/web refs/heads/main "
		   "abc', '{\"services\":{\"web\":{\"build\":{\"context\":\".\"},\"port\":8080,"
		   "\"count\":1}}}', '{\"web\":{\"image\":\"reg/web:web.b_1\",\"digest\":\"sha256:"
		   "%s\"}}', 1)",
		"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
	fx_exec(f, "INSERT INTO builds(id, app, status, source, created_ms) VALUES ('b_2', 'web', "
		   "'running', 'push', 2)");
	struct done d;
	from_build(f, "b_1", &d);
	assert_int_equal(d.rc, 0);
	assert_int_equal(strncmp(d.release, "r_", 2), 0);
	assert_string_equal(fx_text(f, "SELECT release FROM builds WHERE id = 'b_1'"), d.release);
	assert_string_equal(fx_text(f, "SELECT build FROM releases WHERE id = '%s'", d.release),
			    "b_1");
	assert_string_equal(fx_text(f, "SELECT description FROM releases WHERE id = '%s'",
				    d.release),
			    "push g/web refs/heads/main abc");
	assert_string_equal(fx_text(f, "SELECT trigger FROM rollouts"), "build");
	assert_int_equal(fx_int(f, "SELECT generation FROM apps WHERE name = 'web'"), 1);
	/* Again: the same release, no second rollout. */
	char first[72];
	strcpy(first, d.release);
	from_build(f, "b_1", &d);
	assert_int_equal(d.rc, 0);
	assert_string_equal(d.release, first);
	assert_int_equal(fx_int(f, "SELECT count(*) FROM rollouts"), 1);
	from_build(f, "b_2", &d);
	assert_int_equal(d.rc, -1);
	assert_non_null(strstr(d.error, "not complete"));
	from_build(f, "b_nope", &d);
	assert_int_equal(d.rc, -1);
	assert_non_null(strstr(d.error, "unknown build"));
	assert_int_equal(fx_int(f, "SELECT count(*) FROM releases"), 1);
}

static void env_change(struct fx *f, const char *set_json, int promote, struct done *d)
{
	cJSON *set = parse(set_json);
	memset(d, 0, sizeof *d);
	assert_int_equal(releases_env_change(&f->c, "web", set, NULL, promote, "tester", on_done, d),
			 0);
	cJSON_Delete(set);
	fx_drain(f);
	assert_int_equal(d->called, 1);
}

static void sealed_and_immutable(void **state)
{
	struct fx *f = *state;
	char r1[72];
	struct done d;
	/* Environment before the first release: kept for it. */
	env_change(f, "{\"DB_PASSWORD\":\"" SECRET "\"}", 0, &d);
	assert_int_equal(d.rc, 0);
	assert_string_equal(d.release, "");
	fx_release(f, "web", "reg/web:v1", "promote", r1, sizeof r1);
	/* no plaintext anywhere in the rows */
	assert_int_equal(fx_int(f, "SELECT count(*) FROM releases WHERE instr(spec, '%s') OR "
				   "instr(CAST(environment AS TEXT), '%s') OR instr(coalesce(manifest, "
				   "''), '%s') OR instr(description, '%s')",
				SECRET, SECRET, SECRET, SECRET),
			 0);
	assert_int_equal(fx_int(f, "SELECT count(*) FROM apps WHERE instr(CAST(environment AS "
				   "BLOB), CAST('%s' AS BLOB))",
				SECRET),
			 0);
	assert_true(fx_int(f, "SELECT length(environment) FROM releases WHERE id = '%s'", r1) >
		    (int64_t)strlen(SECRET));
	/* Keep r1's row to compare after later changes. */
	char spec1[4096], env1[4096];
	snprintf(spec1, sizeof spec1, "%s", fx_text(f, "SELECT spec FROM releases WHERE id = '%s'", r1));
	snprintf(env1, sizeof env1, "%s",
		 fx_text(f, "SELECT hex(environment) FROM releases WHERE id = '%s'", r1));
	env_change(f, "{\"DB_PASSWORD\":\"other\",\"MODE\":\"x\"}", 1, &d);
	assert_int_equal(d.rc, 0);
	char r2[72];
	strcpy(r2, d.release);
	assert_string_not_equal(r1, r2);
	assert_string_equal(fx_text(f, "SELECT spec FROM releases WHERE id = '%s'", r1), spec1);
	assert_string_equal(fx_text(f, "SELECT hex(environment) FROM releases WHERE id = '%s'", r1),
			    env1);
	assert_int_equal(fx_int(f, "SELECT seq FROM releases WHERE id = '%s'", r2), 2);
	/* Rollback to r1: a third release with r1's image and r1's environment. */
	memset(&d, 0, sizeof d);
	assert_int_equal(releases_rollback(&f->c, "web", r1, on_done, &d), 0);
	fx_drain(f);
	assert_int_equal(d.rc, 0);
	char r3[72];
	strcpy(r3, d.release);
	assert_string_not_equal(r3, r1);
	assert_int_equal(fx_int(f, "SELECT seq FROM releases WHERE id = '%s'", r3), 3);
	assert_non_null(strstr(fx_text(f, "SELECT spec FROM releases WHERE id = '%s'", r3),
			       "reg/web:v1"));
	char want[128];
	snprintf(want, sizeof want, "rollback to %s", r1);
	assert_string_equal(fx_text(f, "SELECT description FROM releases WHERE id = '%s'", r3), want);
	assert_string_equal(fx_text(f, "SELECT spec FROM releases WHERE id = '%s'", r1), spec1);
	assert_int_equal(fx_int(f, "SELECT count(*) FROM releases"), 3);
}

struct spec_q {
	struct coord *c;
	const char *id;
	cJSON *spec;
};

static int spec_q_tx(struct store_tx *tx, void *arg)
{
	struct spec_q *q = arg;
	q->spec = releases_spec_tx(tx, q->c->master_key, q->id);
	return q->spec ? 0 : -1;
}

static void sealed_env_bound_to_row(void **state)
{
	struct fx *f = *state;
	struct done d;
	char r1[72], r2[72];
	fx_release(f, "web", "reg/web:v1", NULL, r1, sizeof r1);
	env_change(f, "{\"TOKEN\":\"" SECRET "\"}", 0, &d);
	strcpy(r2, d.release);
	struct spec_q q = {.c = &f->c, .id = r2};
	struct err err;
	assert_int_equal(store_run(f->c.store, spec_q_tx, &q, &err), 0);
	cJSON *svc = cJSON_GetArrayItem(cJSON_GetObjectItem(q.spec, "services"), 0);
	assert_string_equal(fx_str(cJSON_GetObjectItem(svc, "environment"), "TOKEN"), SECRET);
	cJSON_Delete(q.spec);
	/* r2's sealed environment copied into r1's row does not open there. */
	fx_exec(f, "UPDATE releases SET environment = (SELECT environment FROM releases WHERE "
		   "id = '%s') WHERE id = '%s'",
		r2, r1);
	q.id = r1;
	q.spec = NULL;
	assert_int_equal(store_run(f->c.store, spec_q_tx, &q, &err), -1);
	assert_non_null(strstr(err.msg, "does not open"));
	/* Nor with another master key. */
	q.id = r2;
	f->c.master_key[0] ^= 1;
	assert_int_equal(store_run(f->c.store, spec_q_tx, &q, &err), -1);
	f->c.master_key[0] ^= 1;
}

static void scale_makes_a_release(void **state)
{
	struct fx *f = *state;
	char r1[72];
	struct done d = {0};
	fx_release(f, "web", "reg/web:v1", "promote", r1, sizeof r1);
	assert_int_equal(releases_scale(&f->c, "web", "web", 5, -1, "tester", on_done, &d), 0);
	fx_drain(f);
	assert_int_equal(d.rc, 0);
	assert_string_not_equal(d.release, r1);
	assert_non_null(strstr(fx_text(f, "SELECT spec FROM releases WHERE id = '%s'", d.release),
			       "\"count\":5"));
	assert_non_null(strstr(fx_text(f, "SELECT spec FROM releases WHERE id = '%s'", r1),
			       "\"count\":2"));
	assert_string_equal(fx_text(f, "SELECT scale FROM apps WHERE name = 'web'"),
			    "{\"web\":{\"count\":5}}");
	memset(&d, 0, sizeof d);
	assert_int_equal(releases_scale(&f->c, "web", "db", 1, -1, "tester", on_done, &d), 0);
	fx_drain(f);
	assert_int_equal(d.rc, -1);
	assert_non_null(strstr(d.error, "no service db"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(spec_from_builder_manifest),
		cmocka_unit_test(spec_validation),
		cmocka_unit_test_setup_teardown(release_from_build_once, setup, teardown),
		cmocka_unit_test_setup_teardown(sealed_and_immutable, setup, teardown),
		cmocka_unit_test_setup_teardown(sealed_env_bound_to_row, setup, teardown),
		cmocka_unit_test_setup_teardown(scale_makes_a_release, setup, teardown),
	};
	return cmocka_run_group_tests_name("releases", tests, NULL, NULL);
}
