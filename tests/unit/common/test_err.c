#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "err.h"

static void test_set_formats_and_returns_minus_one(void **state)
{
	(void)state;
	struct err e;
	assert_int_equal(err_set(&e, "line %d: %s", 12, "unknown key 'colour'"), -1);
	assert_string_equal(e.msg, "line 12: unknown key 'colour'");
	assert_int_equal(err_set(&e, "%s", ""), -1);
	assert_string_equal(e.msg, "");
}

static void test_null_err_is_allowed(void **state)
{
	(void)state;
	assert_int_equal(err_set(NULL, "x %d", 1), -1);
	assert_int_equal(err_prefix(NULL, "ctx"), -1);
}

static void test_set_truncates(void **state)
{
	(void)state;
	struct err e;
	char long_msg[ERR_MSG_MAX * 2];
	memset(long_msg, 'm', sizeof long_msg - 1);
	long_msg[sizeof long_msg - 1] = '\0';
	assert_int_equal(err_set(&e, "%s", long_msg), -1);
	assert_int_equal(strlen(e.msg), ERR_MSG_MAX - 1);
	assert_int_equal(e.msg[0], 'm');
}

/* Callers add context with err_set(e, "...: %s", e->msg); the source and target
 * overlap, which vsnprintf does not allow. */
static void test_set_may_reuse_own_message(void **state)
{
	(void)state;
	struct err e;
	err_set(&e, "connection refused");
	assert_int_equal(err_set(&e, "docker: %s (after %d tries)", e.msg, 3), -1);
	assert_string_equal(e.msg, "docker: connection refused (after 3 tries)");
}

static void test_prefix(void **state)
{
	(void)state;
	struct err e;
	err_set(&e, "unknown key 'colour'");
	assert_int_equal(err_prefix(&e, "%s:%d", "config.conf", 12), -1);
	assert_string_equal(e.msg, "config.conf:12: unknown key 'colour'");
	err_prefix(&e, "agent");
	assert_string_equal(e.msg, "agent: config.conf:12: unknown key 'colour'");

	err_set(&e, "%s", "");
	err_prefix(&e, "ctx");
	assert_string_equal(e.msg, "ctx: ");
}

static void test_prefix_cuts_old_message(void **state)
{
	(void)state;
	struct err e;
	memset(e.msg, 'o', sizeof e.msg - 1);
	e.msg[sizeof e.msg - 1] = '\0';
	err_prefix(&e, "p");
	assert_int_equal(strlen(e.msg), ERR_MSG_MAX - 1);
	assert_memory_equal(e.msg, "p: ooo", 6);
	assert_int_equal(e.msg[ERR_MSG_MAX - 2], 'o');
}

/* A prefix too long for the buffer used to be dropped silently, leaving the old
 * message without any context; now the prefix is kept and cut. */
static void test_prefix_too_long(void **state)
{
	(void)state;
	struct err e;
	err_set(&e, "old");
	char p[ERR_MSG_MAX + 10];
	memset(p, 'p', sizeof p - 1);
	p[sizeof p - 1] = '\0';
	err_prefix(&e, "%s", p);
	assert_int_equal(strlen(e.msg), ERR_MSG_MAX - 1);
	assert_int_equal(e.msg[0], 'p');
	assert_int_equal(e.msg[ERR_MSG_MAX - 2], 'p');

	/* Exactly filling: prefix of ERR_MSG_MAX - 3 leaves room for ": " only. */
	char q[ERR_MSG_MAX - 2];
	memset(q, 'q', sizeof q - 1);
	q[sizeof q - 1] = '\0';
	err_set(&e, "old");
	err_prefix(&e, "%s", q);
	assert_int_equal(strlen(e.msg), ERR_MSG_MAX - 1);
	assert_memory_equal(e.msg + ERR_MSG_MAX - 3, ": ", 2);
}

/* An unterminated message (garbage in a fresh struct) must not be read past its end. */
static void test_prefix_on_unterminated(void **state)
{
	(void)state;
	struct err e;
	memset(e.msg, 'z', sizeof e.msg);
	err_prefix(&e, "ctx");
	assert_int_equal(strlen(e.msg), ERR_MSG_MAX - 1);
	assert_memory_equal(e.msg, "ctx: zz", 7);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_set_formats_and_returns_minus_one),
		cmocka_unit_test(test_null_err_is_allowed),
		cmocka_unit_test(test_set_truncates),
		cmocka_unit_test(test_set_may_reuse_own_message),
		cmocka_unit_test(test_prefix),
		cmocka_unit_test(test_prefix_cuts_old_message),
		cmocka_unit_test(test_prefix_too_long),
		cmocka_unit_test(test_prefix_on_unterminated),
	};
	return cmocka_run_group_tests_name("err", tests, NULL, NULL);
}
