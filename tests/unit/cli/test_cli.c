#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "cli.h"
#include "json.h"

struct capture {
	char *out_text, *err_text;
	size_t out_len, err_len;
};

static void capture_start(struct cli *cli, struct capture *c)
{
	memset(c, 0, sizeof *c);
	cli_init(cli);
	cli->out = open_memstream(&c->out_text, &c->out_len);
	cli->err = open_memstream(&c->err_text, &c->err_len);
}

static void capture_end(struct cli *cli, struct capture *c)
{
	fclose(cli->out);
	fclose(cli->err);
	cli_close(cli);
	(void)c;
}

static void capture_free(struct capture *c)
{
	free(c->out_text);
	free(c->err_text);
}

static void test_path(void **state)
{
	(void)state;
	char p[64];
	assert_int_equal(cli_path(p, sizeof p, "/v1/apps/%s/releases/%s/promote", "web", "r_1"), 0);
	assert_string_equal(p, "/v1/apps/web/releases/r_1/promote");
	/* Arguments are path segments: '/', '?', '%' and blanks are escaped. */
	assert_int_equal(cli_path(p, sizeof p, "/v1/builds/%s", "../x?y=1 %"), 0);
	assert_string_equal(p, "/v1/builds/..%2Fx%3Fy%3D1%20%25");
	assert_int_equal(cli_path(p, sizeof p, "/v1/ps?app=%s", "web"), 0);
	assert_string_equal(p, "/v1/ps?app=web");
	assert_int_equal(cli_path(p, 12, "/v1/apps/%s", "web"), -1);
	assert_int_equal(cli_path(p, 8, "/v1/apps", NULL), -1);
}

static void test_name_check(void **state)
{
	(void)state;
	struct err err;
	assert_int_equal(cli_name_check("app", "web", &err), 0);
	assert_int_equal(cli_name_check("app", "a-1", &err), 0);
	assert_int_equal(cli_name_check("app", "1a", &err), -1);
	assert_int_equal(cli_name_check("app", "Web", &err), -1);
	assert_int_equal(cli_name_check("app", "", &err), -1);
	assert_int_equal(cli_name_check("app", "web_1", &err), -1);
	assert_int_equal(cli_name_check("app", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", &err), -1);
	assert_non_null(strstr(err.msg, "app 'aaaa"));
}

/* --json output: two-space indentation, parses back to the same document. */
static void test_print_json(void **state)
{
	(void)state;
	struct cli cli;
	struct capture c;
	const char *doc_text = "{\"apps\":[{\"name\":\"web\",\"n\":1795600000000,\"linked\":false,"
			       "\"branch\":null,\"scale\":{},\"tags\":[]}],\"s\":\"a\\nb\"}";
	cJSON *doc = json_parse(doc_text, strlen(doc_text), 4096, NULL);
	assert_non_null(doc);
	capture_start(&cli, &c);
	assert_int_equal(cli_print_json(&cli, doc), CLI_OK);
	capture_end(&cli, &c);
	assert_string_equal(c.out_text, "{\n"
					"  \"apps\": [\n"
					"    {\n"
					"      \"name\": \"web\",\n"
					"      \"n\": 1795600000000,\n"
					"      \"linked\": false,\n"
					"      \"branch\": null,\n"
					"      \"scale\": {},\n"
					"      \"tags\": []\n"
					"    }\n"
					"  ],\n"
					"  \"s\": \"a\\nb\"\n"
					"}\n");
	cJSON *back = json_parse(c.out_text, c.out_len, 4096, NULL);
	assert_true(cJSON_Compare(doc, back, 1));
	cJSON_Delete(back);
	cJSON_Delete(doc);
	capture_free(&c);
}

static const struct args_opt opts[] = {
	{"app", 'a', ARGS_VALUE, "APP", "the app"},
};
static const struct cli_cmd spec = {
	.name = "thing", .synopsis = "thing <x> [--app APP]", .description = "Does it.",
	.opts = opts, .nopts = 1, .min_pos = 1, .max_pos = 1,
};

static void test_parse_and_app(void **state)
{
	(void)state;
	struct cli cli;
	struct capture c;
	struct args a;
	int rc = -1;
	char *ok[] = {"x", "--app", "web"};
	char *help[] = {"--help"};
	char *missing[] = {"--app", "web"};
	char *extra[] = {"x", "y"};
	char *bad[] = {"x", "--nope"};

	capture_start(&cli, &c);
	assert_true(cli_parse(&cli, &spec, 3, ok, &a, &rc));
	assert_false(cli_parse(&cli, &spec, 1, help, &a, &rc));
	assert_int_equal(rc, CLI_OK);
	assert_false(cli_parse(&cli, &spec, 2, missing, &a, &rc));
	assert_int_equal(rc, CLI_USAGE);
	assert_false(cli_parse(&cli, &spec, 2, extra, &a, &rc));
	assert_int_equal(rc, CLI_USAGE);
	assert_false(cli_parse(&cli, &spec, 2, bad, &a, &rc));
	assert_int_equal(rc, CLI_USAGE);
	capture_end(&cli, &c);
	assert_non_null(strstr(c.out_text, "usage: slipway thing <x> [--app APP]"));
	assert_non_null(strstr(c.err_text, "slipway thing: missing arguments"));
	assert_non_null(strstr(c.err_text, "slipway thing: unexpected argument 'y'"));
	assert_non_null(strstr(c.err_text, "slipway thing: unknown option --nope"));
	capture_free(&c);

	/* The app: given, else SLIPWAY_APP, else a usage error. */
	unsetenv("SLIPWAY_HOST");
	unsetenv("SLIPWAY_API_KEY");
	unsetenv("SLIPWAY_API_KEY_FILE");
	setenv("HOME", "/nonexistent-home", 1);
	unsetenv("XDG_CONFIG_HOME");
	capture_start(&cli, &c);
	setenv("SLIPWAY_APP", "from-env", 1);
	assert_string_equal(cli_app(&cli, &spec, "given", &rc), "given");
	assert_string_equal(cli_app(&cli, &spec, NULL, &rc), "from-env");
	assert_null(cli_app(&cli, &spec, "Bad", &rc));
	assert_int_equal(rc, CLI_USAGE);
	capture_end(&cli, &c);
	capture_free(&c);

	unsetenv("SLIPWAY_APP");
	capture_start(&cli, &c);
	assert_null(cli_app(&cli, &spec, NULL, &rc));
	assert_int_equal(rc, CLI_USAGE);
	/* Nothing to connect to: a usage-class failure, said plainly. */
	assert_int_equal(cli_connect(&cli), CLI_USAGE);
	capture_end(&cli, &c);
	assert_non_null(strstr(c.err_text, "which app? give --app APP or set SLIPWAY_APP"));
	assert_non_null(strstr(c.err_text, "no coordinator: set SLIPWAY_HOST"));
	capture_free(&c);
}

static void test_field(void **state)
{
	(void)state;
	struct cli cli;
	struct capture c;
	capture_start(&cli, &c);
	cli_field(&cli, 10, "App", "web");
	cli_field(&cli, 10, "Release", NULL);
	cli_field(&cli, 10, "", "more\x1b");
	cli_field(&cli, 3, "Generation", "7");
	capture_end(&cli, &c);
	assert_string_equal(c.out_text, "App:       web\n"
					"Release:   -\n"
					"           more?\n"
					"Generation: 7\n");
	capture_free(&c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_path),
		cmocka_unit_test(test_name_check),
		cmocka_unit_test(test_print_json),
		cmocka_unit_test(test_parse_and_app),
		cmocka_unit_test(test_field),
	};
	return cmocka_run_group_tests_name("cli", tests, NULL, NULL);
}
