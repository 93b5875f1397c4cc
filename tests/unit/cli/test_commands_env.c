#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "commands_env.h"

static char *printed(const char *name, const char *value)
{
	static char out[256];
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	commands_env_print_var(f, name, value);
	fclose(f);
	snprintf(out, sizeof out, "%s", text);
	free(text);
	return out;
}

/* One variable is always one line: values that could break that are quoted. */
static void test_print_var(void **state)
{
	(void)state;
	assert_string_equal(printed("LOG_LEVEL", "info"), "LOG_LEVEL=info\n");
	assert_string_equal(printed("EMPTY", ""), "EMPTY=\n");
	assert_string_equal(printed("URL", "postgres://u@h/db?x=1 y"),
			    "URL=postgres://u@h/db?x=1 y\n");
	assert_string_equal(printed("KEY", "line1\nline2"), "KEY=\"line1\\nline2\"\n");
	assert_string_equal(printed("Q", "\"quoted\""), "Q=\"\\\"quoted\\\"\"\n");
	assert_string_equal(printed("ESC", "a\x1b[0m"), "ESC=\"a\\u001b[0m\"\n");
	assert_string_equal(printed("U", "caf\xc3\xa9"), "U=caf\xc3\xa9\n");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_print_var),
	};
	return cmocka_run_group_tests_name("commands_env", tests, NULL, NULL);
}
