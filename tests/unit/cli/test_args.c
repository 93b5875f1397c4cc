#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "args.h"

static const struct args_opt opts[] = {
	{"app", 'a', ARGS_VALUE, "APP", "the app"},
	{"wait", 'w', ARGS_FLAG, NULL, "wait"},
	{"json", 0, ARGS_FLAG, NULL, "json"},
	{"count", 0, ARGS_VALUE, "N", "count"},
};
#define NOPTS (sizeof opts / sizeof opts[0])

/* Splits a space-separated line into argv (no quoting: tests only). */
static int split(char *line, char **argv)
{
	int n = 0;
	for (char *tok = strtok(line, " "); tok; tok = strtok(NULL, " "))
		argv[n++] = tok;
	argv[n] = NULL;
	return n;
}

static int parse(const char *text, struct args *a, struct err *err)
{
	static char line[512];
	static char *argv[64];
	snprintf(line, sizeof line, "%s", text);
	int argc = split(line, argv);
	return args_parse(opts, NOPTS, argc, argv, a, err);
}

static void test_long_short_and_mixed(void **state)
{
	(void)state;
	struct args a;
	struct err err;
	assert_int_equal(parse("dir --app web -w --count=3 extra", &a, &err), 0);
	assert_string_equal(args_get(&a, "app"), "web");
	assert_true(args_has(&a, "wait"));
	assert_false(args_has(&a, "json"));
	assert_null(args_get(&a, "json"));
	assert_string_equal(args_get(&a, "count"), "3");
	assert_int_equal(a.npos, 2);
	assert_string_equal(a.pos[0], "dir");
	assert_string_equal(a.pos[1], "extra");
	assert_int_equal(a.dashdash, -1);
	assert_false(a.help);

	assert_int_equal(parse("-a api --app=", &a, &err), -1);
	assert_string_equal(err.msg, "--app given twice");
	assert_int_equal(parse("--app=", &a, &err), 0);
	assert_string_equal(args_get(&a, "app"), ""); /* empty but given */
}

static void test_dashdash_and_dash(void **state)
{
	(void)state;
	struct args a;
	struct err err;
	assert_int_equal(parse("web - -- --json -w", &a, &err), 0);
	assert_false(args_has(&a, "json"));
	assert_int_equal(a.npos, 4);
	assert_string_equal(a.pos[1], "-");
	assert_int_equal(a.dashdash, 2);
	assert_string_equal(a.pos[2], "--json");
	assert_string_equal(a.pos[3], "-w");
}

static void test_errors(void **state)
{
	(void)state;
	struct args a;
	struct err err;
	assert_int_equal(parse("--colour red", &a, &err), -1);
	assert_string_equal(err.msg, "unknown option --colour");
	assert_int_equal(parse("-x", &a, &err), -1);
	assert_string_equal(err.msg, "unknown option -x");
	assert_int_equal(parse("-aw", &a, &err), -1);
	assert_non_null(strstr(err.msg, "unknown option -aw"));
	assert_int_equal(parse("--app", &a, &err), -1);
	assert_string_equal(err.msg, "--app needs a value (APP)");
	assert_int_equal(parse("--json=yes", &a, &err), -1);
	assert_string_equal(err.msg, "--json takes no value");
	assert_int_equal(parse("--wait -w", &a, &err), -1);
	assert_string_equal(err.msg, "-w given twice");
}

static void test_help(void **state)
{
	(void)state;
	struct args a;
	struct err err;
	assert_int_equal(parse("web --help", &a, &err), 0);
	assert_true(a.help);
	assert_int_equal(parse("-h", &a, &err), 0);
	assert_true(a.help);
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	args_usage(f, "thing <app>", "Does a thing.", opts, NOPTS);
	fclose(f);
	assert_non_null(strstr(text, "usage: slipway thing <app>\n\nDoes a thing.\n"));
	assert_non_null(strstr(text, "-a, --app APP"));
	assert_non_null(strstr(text, "--json "));
	assert_non_null(strstr(text, "-h, --help"));
	free(text);
}

static void test_values(void **state)
{
	(void)state;
	int64_t v;
	struct err err;
	assert_int_equal(args_int("--count", "3", 0, 100, &v, &err), 0);
	assert_int_equal(v, 3);
	assert_int_equal(args_int("--count", "101", 0, 100, &v, &err), -1);
	assert_string_equal(err.msg, "--count: expected a whole number 0..100, got '101'");
	assert_int_equal(args_int("--count", "3x", 0, 100, &v, &err), -1);
	assert_int_equal(args_int("--count", "", 0, 100, &v, &err), -1);
	assert_int_equal(args_int("--count", " 3", 0, 100, &v, &err), -1);

	assert_int_equal(args_duration_ms("--t", "10m", &v, &err), 0);
	assert_int_equal(v, 600000);
	assert_int_equal(args_duration_ms("--t", "500ms", &v, &err), 0);
	assert_int_equal(v, 500);
	assert_int_equal(args_duration_ms("--t", "45", &v, &err), 0);
	assert_int_equal(v, 45000);
	assert_int_equal(args_duration_ms("--t", "1d", &v, &err), 0);
	assert_int_equal(v, 86400000);
	assert_int_equal(args_duration_ms("--t", "5x", &v, &err), -1);
	assert_int_equal(args_duration_ms("--t", "-5s", &v, &err), -1);
	assert_int_equal(args_duration_ms("--t", "99999999999999999999h", &v, &err), -1);

	assert_int_equal(args_memory_mb("--m", "512", &v, &err), 0);
	assert_int_equal(v, 512);
	assert_int_equal(args_memory_mb("--m", "512M", &v, &err), 0);
	assert_int_equal(v, 512);
	assert_int_equal(args_memory_mb("--m", "1G", &v, &err), 0);
	assert_int_equal(v, 1024);
	assert_int_equal(args_memory_mb("--m", "2gb", &v, &err), 0);
	assert_int_equal(v, 2048);
	assert_int_equal(args_memory_mb("--m", "0", &v, &err), 0);
	assert_int_equal(v, 0);
	assert_int_equal(args_memory_mb("--m", "1T", &v, &err), -1);
	assert_int_equal(args_memory_mb("--m", "M", &v, &err), -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_long_short_and_mixed),
		cmocka_unit_test(test_dashdash_and_dash),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_help),
		cmocka_unit_test(test_values),
	};
	return cmocka_run_group_tests_name("args", tests, NULL, NULL);
}
