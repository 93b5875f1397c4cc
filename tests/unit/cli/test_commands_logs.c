#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "commands_logs.h"
#include "json.h"

static char *printed(const char *event_json)
{
	static char out[512];
	cJSON *ev = json_parse(event_json, strlen(event_json), 4096, NULL);
	assert_non_null(ev);
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	commands_logs_print_event(f, ev);
	fclose(f);
	cJSON_Delete(ev);
	snprintf(out, sizeof out, "%s", text);
	free(text);
	return out;
}

static void test_event_line(void **state)
{
	(void)state;
	assert_string_equal(
		printed("{\"id\":7,\"ts_ms\":1795600000123,\"app\":\"web\",\"service\":\"web\","
			"\"container\":\"3f9a1c2b7d0e11aa\",\"release\":\"r_1\",\"agent\":\"ag_1\","
			"\"stream\":\"stdout\",\"message\":\"GET / 200\"}"),
		"2026-11-25T09:46:40.123Z web[3f9a1c2b7d0e]: GET / 200\n");
	/* Output from a container cannot drive the terminal or fake a second line. */
	assert_string_equal(
		printed("{\"ts_ms\":1795600000000,\"service\":\"worker\",\"container\":\"ab\","
			"\"message\":\"\\u001b[31mred\\nfake 2026 line\"}"),
		"2026-11-25T09:46:40.000Z worker[ab]: ?[31mred fake 2026 line\n");
	/* Missing fields do not crash it. */
	assert_string_equal(printed("{}"), "1970-01-01T00:00:00.000Z ?[]: \n");
	/* A long message is printed whole. */
	char big[3000];
	char doc[3200];
	memset(big, 'x', 2999);
	big[2999] = '\0';
	snprintf(doc, sizeof doc, "{\"ts_ms\":0,\"service\":\"s\",\"message\":\"%s\"}", big);
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	cJSON *ev = json_parse(doc, strlen(doc), 8192, NULL);
	commands_logs_print_event(f, ev);
	fclose(f);
	cJSON_Delete(ev);
	assert_int_equal(len, strlen("1970-01-01T00:00:00.000Z s[]: ") + 2999 + 1);
	free(text);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_event_line),
	};
	return cmocka_run_group_tests_name("commands_logs", tests, NULL, NULL);
}
