#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "buf.h"
#include "manifest.h"

static cJSON *parse(const char *yaml, struct err *e)
{
	e->msg[0] = '\0';
	return manifest_parse(yaml, strlen(yaml), "slipway.yml", e);
}

static const cJSON *svc(const cJSON *m, const char *name)
{
	return cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(m, "services"),
						name);
}

static double num(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	assert_non_null(v);
	assert_true(cJSON_IsNumber(v));
	return v->valuedouble;
}

static const char *str(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	assert_non_null(v);
	assert_true(cJSON_IsString(v));
	return v->valuestring;
}

/* Expects an error containing `want` (which carries the line number). */
static void expect_error(const char *yaml, const char *want)
{
	struct err e;
	cJSON *m = parse(yaml, &e);
	if (m) {
		char *t = cJSON_Print(m);
		print_error("parsed, expected error '%s': %s\n", want, t);
		free(t);
		cJSON_Delete(m);
		fail();
	}
	if (!strstr(e.msg, want)) {
		print_error("error '%s' does not contain '%s'\n", e.msg, want);
		fail();
	}
}

static void test_full_service(void **state)
{
	(void)state;
	const char *y = "# the web app\n"
			"services:\n"
			"  web:\n"
			"    build: ./app/\n"
			"    command: [\"/srv/web\", \"--port\", \"8080\"]\n"
			"    environment:\n"
			"      LOG_LEVEL: info\n"
			"      WORKERS: 4\n"
			"      DEBUG: false\n"
			"    port: 8080\n"
			"    health: {path: /health, interval: 500ms, timeout: 3s, grace: 1m}\n"
			"    scale: {count: 3, memory: 512M}\n"
			"    stop_grace: 20s\n"
			"    proxy:\n"
			"      listen: 80\n"
			"      hosts: [Web.Example.com, \"*.example.org\"]\n"
			"  worker:\n"
			"    image: registry.local:5000/tools@sha256:"
			"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n"
			"    command: bin/worker --queue 'high prio' \"a\\\"b\"\n"
			"    environment: [\"A=1\", \"B=x=y\"]\n"
			"    scale: {memory: 1G}\n"
			"release: bin/migrate --yes\n";
	struct err e;
	cJSON *m = parse(y, &e);
	if (!m)
		print_error("%s\n", e.msg);
	assert_non_null(m);
	const cJSON *web = svc(m, "web");
	assert_non_null(web);
	const cJSON *b = cJSON_GetObjectItemCaseSensitive(web, "build");
	assert_string_equal(str(b, "context"), "app");
	assert_string_equal(str(b, "dockerfile"), "Dockerfile");
	assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(web, "image")));
	const cJSON *cmd = cJSON_GetObjectItemCaseSensitive(web, "command");
	assert_int_equal(cJSON_GetArraySize(cmd), 3);
	assert_string_equal(cJSON_GetArrayItem(cmd, 2)->valuestring, "8080");
	const cJSON *env = cJSON_GetObjectItemCaseSensitive(web, "environment");
	assert_string_equal(str(env, "WORKERS"), "4");
	assert_string_equal(str(env, "DEBUG"), "false");
	assert_int_equal((int)num(web, "port"), 8080);
	const cJSON *h = cJSON_GetObjectItemCaseSensitive(web, "health");
	assert_string_equal(str(h, "type"), "http");
	assert_string_equal(str(h, "path"), "/health");
	assert_int_equal((int)num(h, "interval_ms"), 500);
	assert_int_equal((int)num(h, "timeout_ms"), 3000);
	assert_int_equal((int)num(h, "grace_ms"), 60000);
	assert_int_equal((int)num(web, "count"), 3);
	assert_int_equal((int)num(web, "memory_mb"), 512);
	assert_int_equal((int)num(web, "stop_grace_ms"), 20000);
	const cJSON *px = cJSON_GetObjectItemCaseSensitive(web, "proxy");
	assert_int_equal((int)num(px, "listen"), 80);
	assert_string_equal(str(px, "protocol"), "http");
	const cJSON *hosts = cJSON_GetObjectItemCaseSensitive(px, "hosts");
	assert_int_equal(cJSON_GetArraySize(hosts), 2);
	assert_string_equal(cJSON_GetArrayItem(hosts, 0)->valuestring, "web.example.com");
	assert_string_equal(cJSON_GetArrayItem(hosts, 1)->valuestring, "*.example.org");

	const cJSON *w = svc(m, "worker");
	assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(w, "build")));
	assert_non_null(strstr(str(w, "image"), "@sha256:9f86"));
	cmd = cJSON_GetObjectItemCaseSensitive(w, "command");
	assert_int_equal(cJSON_GetArraySize(cmd), 4);
	assert_string_equal(cJSON_GetArrayItem(cmd, 2)->valuestring, "high prio");
	assert_string_equal(cJSON_GetArrayItem(cmd, 3)->valuestring, "a\"b");
	env = cJSON_GetObjectItemCaseSensitive(w, "environment");
	assert_string_equal(str(env, "B"), "x=y");
	assert_int_equal((int)num(w, "memory_mb"), 1024);
	/* No port: no proxy, a "running" check with its own grace. */
	assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(w, "port")));
	assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(w, "proxy")));
	h = cJSON_GetObjectItemCaseSensitive(w, "health");
	assert_string_equal(str(h, "type"), "running");
	assert_int_equal((int)num(h, "grace_ms"), MANIFEST_DEFAULT_RUNNING_GRACE_MS);

	const cJSON *rel = cJSON_GetObjectItemCaseSensitive(m, "release");
	assert_int_equal(cJSON_GetArraySize(rel), 2);
	assert_string_equal(cJSON_GetArrayItem(rel, 1)->valuestring, "--yes");
	/* Services keep the file's order. */
	assert_string_equal(cJSON_GetObjectItemCaseSensitive(m, "services")->child->string, "web");
	cJSON_Delete(m);
}

static void test_defaults(void **state)
{
	(void)state;
	struct err e;
	cJSON *m = parse("services:\n  web:\n    build: .\n    port: 3000\n", &e);
	assert_non_null(m);
	const cJSON *web = svc(m, "web");
	assert_string_equal(str(cJSON_GetObjectItemCaseSensitive(web, "build"), "context"), ".");
	assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(web, "command")));
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(web, "environment")),
			 0);
	const cJSON *h = cJSON_GetObjectItemCaseSensitive(web, "health");
	assert_string_equal(str(h, "type"), "tcp");
	assert_int_equal((int)num(h, "interval_ms"), MANIFEST_DEFAULT_INTERVAL_MS);
	assert_int_equal((int)num(h, "timeout_ms"), MANIFEST_DEFAULT_TIMEOUT_MS);
	assert_int_equal((int)num(h, "grace_ms"), MANIFEST_DEFAULT_GRACE_MS);
	const cJSON *px = cJSON_GetObjectItemCaseSensitive(web, "proxy");
	assert_int_equal((int)num(px, "listen"), 3000);
	assert_int_equal((int)num(web, "count"), 1);
	assert_int_equal((int)num(web, "memory_mb"), 0);
	assert_int_equal((int)num(web, "stop_grace_ms"), MANIFEST_DEFAULT_STOP_GRACE_MS);
	assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(m, "release")));
	cJSON_Delete(m);

	/* Other shapes: build as a mapping, proxy as a port, proxy off, tcp check. */
	m = parse("services:\n"
		  "  api:\n"
		  "    build: {context: services/api, dockerfile: docker/Dockerfile.prod}\n"
		  "    port: 9000\n"
		  "    proxy: 8443\n"
		  "    health: {tcp: true}\n"
		  "  db:\n"
		  "    image: postgres:16\n"
		  "    port: 5432\n"
		  "    proxy: false\n"
		  "    health: {type: docker}\n",
		  &e);
	if (!m)
		print_error("%s\n", e.msg);
	assert_non_null(m);
	const cJSON *api = svc(m, "api");
	const cJSON *b = cJSON_GetObjectItemCaseSensitive(api, "build");
	assert_string_equal(str(b, "context"), "services/api");
	assert_string_equal(str(b, "dockerfile"), "docker/Dockerfile.prod");
	assert_int_equal((int)num(cJSON_GetObjectItemCaseSensitive(api, "proxy"), "listen"), 8443);
	assert_string_equal(str(cJSON_GetObjectItemCaseSensitive(api, "health"), "type"), "tcp");
	assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(svc(m, "db"), "proxy")));
	assert_string_equal(str(cJSON_GetObjectItemCaseSensitive(svc(m, "db"), "health"), "type"),
			    "docker");
	cJSON_Delete(m);
}

/* Every error names the file, the line and the path. */
static void test_errors_with_lines(void **state)
{
	(void)state;
	expect_error("services:\n  web:\n    build: .\n    port: 70000\n",
		     "slipway.yml:4: services.web.port: expected an integer 1..65535");
	expect_error("services:\n  web:\n    build: .\n    port: \"80\"\n",
		     "slipway.yml:4: services.web.port: expected an integer");
	expect_error("services:\n  web:\n    build: .\n    colour: red\n",
		     "slipway.yml:4: services.web: unknown key 'colour'");
	expect_error("services:\n  web:\n    build: .\n    port: 80\n    port: 81\n",
		     "slipway.yml:5: services.web: duplicate key 'port' (first at line 4)");
	expect_error("version: 3\nservices:\n  web:\n    image: x\n",
		     "slipway.yml:1: (top level): unknown key 'version'");
	expect_error("services:\n  web:\n    image: nginx\n    build: .\n",
		     "slipway.yml:3: services.web: build and image exclude each other");
	expect_error("services:\n  web:\n    port: 80\n",
		     "slipway.yml:2: services.web: needs build");
	expect_error("services:\n  Web:\n    image: x\n", "slipway.yml:2: services.Web: a service");
	expect_error("services:\n  web:\n    image: x\n    stop_grace: 2d\n",
		     "slipway.yml:4: services.web.stop_grace: expected a duration");
	expect_error("services:\n  web:\n    image: x\n    scale: {count: 101}\n",
		     "slipway.yml:4: services.web.scale.count: expected an integer 0..100");
	expect_error("services:\n  web:\n    image: x\n    scale:\n      memory: 4M\n",
		     "slipway.yml:5: services.web.scale.memory: expected a memory limit");
	expect_error("services:\n  web:\n    image: x\n    environment:\n      1BAD: x\n",
		     "slipway.yml:5: services.web.environment.1BAD: not a valid variable name");
	expect_error("services:\n  web:\n    image: x\n    environment:\n      EMPTY:\n",
		     "slipway.yml:5: services.web.environment.EMPTY: has no value");
	expect_error("services:\n  web:\n    image: x\n    environment: [A=1, A=2]\n",
		     "slipway.yml:4: services.web.environment[1]: A is set twice");
	expect_error("services:\n  web:\n    image: x\n    command: \"a 'b\"\n",
		     "slipway.yml:4: services.web.command: unbalanced single quote");
	expect_error("services:\n  web:\n    image: x\n    command: [a, [b]]\n",
		     "slipway.yml:4: services.web.command[1]: expected a string, got a list");
	expect_error("services:\n  web:\n    image: x\n    command: []\n",
		     "slipway.yml:4: services.web.command: must not be empty");
	expect_error("services:\n  web:\n    build: ../outside\n",
		     "slipway.yml:3: services.web.build: must not contain '..'");
	expect_error("services:\n  web:\n    build: /abs\n",
		     "slipway.yml:3: services.web.build: must be relative");
	expect_error("services:\n  web:\n    image: x\n    health: {path: /h}\n",
		     "slipway.yml:4: services.web.health: an http check needs the service's port");
	expect_error("services:\n  web:\n    image: x\n    port: 80\n    health:\n"
		     "      path: health\n",
		     "slipway.yml:6: services.web.health.path: expected a request path");
	expect_error("services:\n  web:\n    image: x\n    port: 80\n    health:\n"
		     "      type: grpc\n",
		     "slipway.yml:6: services.web.health.type: expected http, tcp, docker or running");
	expect_error("services:\n  web:\n    image: x\n    port: 80\n    health:\n"
		     "      tcp: yes\n",
		     "slipway.yml:6: services.web.health.tcp: expected true or false");
	expect_error("services:\n  web:\n    image: x\n    proxy: 80\n",
		     "slipway.yml:4: services.web.proxy: a proxied service needs a port");
	expect_error("services:\n  web:\n    image: x\n    port: 80\n    proxy:\n"
		     "      hosts: [\"bad host\"]\n",
		     "slipway.yml:6: services.web.proxy.hosts[0]: 'bad host' is not a host name");
	expect_error("services:\n  a:\n    image: x\n    port: 80\n  b:\n    image: y\n"
		     "    port: 80\n",
		     "slipway.yml:5: services.b.proxy: listen port 80 is shared with services.a");
	expect_error("services:\n  a:\n    image: x\n    port: 80\n    proxy: {hosts: [a.io]}\n"
		     "  b:\n    image: y\n    port: 81\n    proxy: {listen: 80, hosts: [A.io]}\n",
		     "services.b.proxy: host a.io on port 80 also routes to services.a");
	expect_error("services:\n  web:\n    image: \"bad image\"\n",
		     "slipway.yml:3: services.web.image: 'bad image' is not an image reference");
	expect_error("services: {}\n", "slipway.yml:1: services: at least one service");
	expect_error("release: x\n", "slipway.yml:1: services: at least one service");
	expect_error("", "slipway.yml:1: the file is empty");
	expect_error("- a\n- b\n", "slipway.yml:1: (top level): expected a mapping, got a list");
}

static void test_yaml_level_errors(void **state)
{
	(void)state;
	expect_error("services:\n  web: &w\n    image: x\n  api: *w\n",
		     "slipway.yml:4: aliases (*w) are not supported");
	expect_error("services:\n  web:\n    image: !!binary aGk=\n",
		     "slipway.yml:3: YAML tags (tag:yaml.org,2002:binary) are not supported");
	expect_error("services:\n  web:\n    image: x\n---\nservices: {}\n",
		     "slipway.yml:4: only one YAML document is allowed");
	expect_error("services:\n  web:\n    image: [x\n", "slipway.yml:");
	expect_error("services:\n\tweb: {}\n", "invalid YAML");
	/* Invalid UTF-8 is refused by libyaml's reader. */
	expect_error("services:\n  web:\n    image: \xff\xfe\n", "invalid YAML");
	/* A quoted "!!str" port stays a string. */
	expect_error("services:\n  web:\n    image: x\n    port: !!str 80\n",
		     "services.web.port: expected an integer");

	/* Size cap. */
	size_t big = MANIFEST_MAX_BYTES + 10;
	char *text = malloc(big + 1);
	assert_non_null(text);
	memset(text, '#', big);
	text[big] = '\0';
	struct err e;
	assert_null(manifest_parse(text, big, "slipway.yml", &e));
	assert_non_null(strstr(e.msg, "larger than 256 KiB"));
	free(text);

	/* Depth cap. */
	char deep[512] = "services:\n  web:\n    environment: ";
	for (int i = 0; i < MANIFEST_DEPTH_MAX + 2; i++)
		strcat(deep, "[");
	assert_null(manifest_parse(deep, strlen(deep), "slipway.yml", &e));
	assert_non_null(strstr(e.msg, "nested deeper than"));

	/* Too many services. */
	struct buf b;
	buf_init(&b, 1 << 20);
	buf_append_str(&b, "services:\n");
	for (int i = 0; i <= MANIFEST_SERVICES_MAX; i++)
		buf_printf(&b, "  s%d: {image: x}\n", i);
	assert_null(manifest_parse(b.data, b.len, "slipway.yml", &e));
	assert_non_null(strstr(e.msg, "slipway.yml:1: services: more than 32 services"));
	buf_free(&b);
}

/* Several errors are all reported, one per line. */
static void test_many_errors(void **state)
{
	(void)state;
	struct err e;
	cJSON *m = parse("services:\n  web:\n    image: x\n    port: 0\n    stop_grace: x\n"
			 "  api:\n    colour: 1\n",
			 &e);
	assert_null(m);
	assert_non_null(strstr(e.msg, "slipway.yml:4: services.web.port"));
	assert_non_null(strstr(e.msg, "\nslipway.yml:5: services.web.stop_grace"));
	assert_non_null(strstr(e.msg, "slipway.yml:7: services.api: unknown key 'colour'"));

	/* Many more than fit: "... and N more". */
	struct buf b;
	buf_init(&b, 1 << 20);
	buf_append_str(&b, "services:\n  web:\n    image: x\n    environment:\n");
	for (int i = 0; i < 30; i++)
		buf_printf(&b, "      %dBAD: x\n", i);
	assert_null(manifest_parse(b.data, b.len, "slipway.yml", &e));
	assert_non_null(strstr(e.msg, "more"));
	assert_true(strlen(e.msg) < ERR_MSG_MAX);
	buf_free(&b);
}

static void test_split_words(void **state)
{
	(void)state;
	struct err e;
	cJSON *a = cJSON_CreateArray();
	assert_int_equal(manifest_split_words("  sh -c 'echo $HOME' \"x\\\\y\" a\\ b ''", a, &e), 0);
	assert_int_equal(cJSON_GetArraySize(a), 6);
	assert_string_equal(cJSON_GetArrayItem(a, 2)->valuestring, "echo $HOME");
	assert_string_equal(cJSON_GetArrayItem(a, 3)->valuestring, "x\\y");
	assert_string_equal(cJSON_GetArrayItem(a, 4)->valuestring, "a b");
	assert_string_equal(cJSON_GetArrayItem(a, 5)->valuestring, "");
	cJSON_Delete(a);
	a = cJSON_CreateArray();
	assert_int_equal(manifest_split_words("a \"b", a, &e), -1);
	assert_string_equal(e.msg, "unbalanced double quote");
	assert_int_equal(manifest_split_words("a\\", a, &e), -1);
	assert_string_equal(e.msg, "trailing backslash");
	cJSON_Delete(a);
}

static void test_load(void **state)
{
	(void)state;
	char dir[] = "/tmp/slipway-manifest-XXXXXX";
	assert_non_null(mkdtemp(dir));
	struct err e;
	assert_null(manifest_load(dir, &e));
	assert_non_null(strstr(e.msg, "slipway.yml: not found"));
	char path[128];
	snprintf(path, sizeof path, "%s/slipway.yml", dir);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs("services:\n  web:\n    image: nginx\n", f);
	fclose(f);
	cJSON *m = manifest_load(dir, &e);
	assert_non_null(m);
	assert_string_equal(str(svc(m, "web"), "image"), "nginx");
	cJSON_Delete(m);
	/* A symlink is refused (it could point out of the checkout). */
	unlink(path);
	assert_int_equal(symlink("/etc/passwd", path), 0);
	assert_null(manifest_load(dir, &e));
	assert_non_null(strstr(e.msg, "symbolic link"));
	unlink(path);
	rmdir(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_full_service),
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_errors_with_lines),
		cmocka_unit_test(test_yaml_level_errors),
		cmocka_unit_test(test_many_errors),
		cmocka_unit_test(test_split_words),
		cmocka_unit_test(test_load),
	};
	return cmocka_run_group_tests_name("manifest", tests, NULL, NULL);
}
