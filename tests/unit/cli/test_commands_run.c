/*
 * commands_run: the exit status a run document gives the CLI (0, the
 * container's status, 1 when it could not run, -1 while it goes on) and when
 * the shipped output is complete (its last line is the tail's last line).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "commands_run.h"

static int status_of(const char *json)
{
	cJSON *d = cJSON_Parse(json);
	assert_non_null(d);
	int rc = commands_run_exit_status(d);
	cJSON_Delete(d);
	return rc;
}

static void exit_status(void **state)
{
	(void)state;
	assert_int_equal(status_of("{\"state\":\"queued\"}"), -1);
	assert_int_equal(status_of("{\"state\":\"running\",\"exit_code\":null}"), -1);
	assert_int_equal(status_of("{\"state\":\"succeeded\",\"exit_code\":0}"), 0);
	assert_int_equal(status_of("{\"state\":\"failed\",\"exit_code\":7}"), 7);
	assert_int_equal(status_of("{\"state\":\"failed\",\"exit_code\":137}"), 137);
	assert_int_equal(status_of("{\"state\":\"failed\",\"exit_code\":null,"
				   "\"reason\":\"pulling the image: denied\"}"), 1);
	/* a failure never exits 0, whatever the document says */
	assert_int_equal(status_of("{\"state\":\"failed\",\"exit_code\":0}"), 1);
	assert_int_equal(status_of("{}"), -1);
}

static bool complete(const char *json, const char *last)
{
	cJSON *d = cJSON_Parse(json);
	assert_non_null(d);
	bool ok = commands_run_output_complete(d, last);
	cJSON_Delete(d);
	return ok;
}

static void output_complete(void **state)
{
	(void)state;
	assert_true(complete("{\"output_tail\":null}", NULL));
	assert_true(complete("{\"output_tail\":\"\"}", NULL));
	assert_false(complete("{\"output_tail\":\"a\\nb\"}", NULL));
	assert_false(complete("{\"output_tail\":\"a\\nb\"}", "a"));
	assert_true(complete("{\"output_tail\":\"a\\nb\"}", "b"));
	assert_true(complete("{\"output_tail\":\"only\"}", "only"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(exit_status),
		cmocka_unit_test(output_complete),
	};
	return cmocka_run_group_tests_name("commands_run", tests, NULL, NULL);
}
