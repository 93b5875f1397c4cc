#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "clock.h"
#include "log.h"

/* 1700000000123 ms since the epoch. */
#define TS "2023-11-14T22:13:20.123Z"

/* Lines the sink received. The sink runs under the log lock, so no lock here. */
static struct {
	char **lines;
	enum log_level *levels;
	size_t count, alloc;
} cap;

static void capture(enum log_level level, const char *line, void *arg)
{
	assert_ptr_equal(arg, &cap);
	if (cap.count == cap.alloc) {
		cap.alloc = cap.alloc ? cap.alloc * 2 : 64;
		cap.lines = realloc(cap.lines, cap.alloc * sizeof *cap.lines);
		cap.levels = realloc(cap.levels, cap.alloc * sizeof *cap.levels);
		assert_non_null(cap.lines);
		assert_non_null(cap.levels);
	}
	cap.lines[cap.count] = strdup(line);
	cap.levels[cap.count] = level;
	cap.count++;
}

static void capture_clear(void)
{
	for (size_t i = 0; i < cap.count; i++)
		free(cap.lines[i]);
	cap.count = 0;
}

static const char *only_line(void)
{
	assert_int_equal(cap.count, 1);
	return cap.lines[0];
}

static int setup(void **state)
{
	(void)state;
	clock_fake_set(1700000000123, 5000);
	log_init("test", LOG_LEVEL_DEBUG, 0);
	log_set_sink(capture, &cap);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	capture_clear();
	log_set_level(LOG_LEVEL_DEBUG);
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	log_set_sink(NULL, NULL);
	clock_fake_off();
	capture_clear();
	free(cap.lines);
	free(cap.levels);
	return 0;
}

static void test_line_format(void **state)
{
	(void)state;
	log_info("swap.start", "app=%s release=%s", "web", "r42");
	assert_string_equal(only_line(), TS " info swap.start app=web release=r42");
	assert_int_equal(cap.levels[0], LOG_LEVEL_INFO);
	capture_clear();

	log_debug("a.b", "k=%d", 1);
	log_warn("a.b", "k=%d", 2);
	log_error("a.b", "k=%d", 3);
	assert_int_equal(cap.count, 3);
	assert_string_equal(cap.lines[0], TS " debug a.b k=1");
	assert_string_equal(cap.lines[1], TS " warn a.b k=2");
	assert_string_equal(cap.lines[2], TS " error a.b k=3");
	assert_int_equal(cap.levels[2], LOG_LEVEL_ERROR);
}

static void test_empty_body_has_no_trailing_space(void **state)
{
	(void)state;
	log_info("agent.ready", "%s", "");
	assert_string_equal(only_line(), TS " info agent.ready");
}

static void test_time_comes_from_clock(void **state)
{
	(void)state;
	clock_fake_advance(1877);
	log_info("tick", "n=1");
	assert_string_equal(only_line(), "2023-11-14T22:13:22.000Z info tick n=1");
	clock_fake_set(1700000000123, 5000);
}

static void test_control_chars_escaped(void **state)
{
	(void)state;
	log_info("http.req", "path=%s ua=%s", "/a\nFAKE 2023 error injected", "x\r\t\x01\x1b\x7fy");
	const char *line = only_line();
	assert_null(strchr(line, '\n'));
	assert_null(strchr(line, '\r'));
	assert_string_equal(line, TS " info http.req path=/a\\nFAKE 2023 error injected "
				     "ua=x\\r\\t\\x01\\x1b\\x7fy");
	/* Bytes >= 0x80 (UTF-8) pass through untouched. */
	capture_clear();
	log_info("u", "name=%s", "caf\xc3\xa9");
	assert_string_equal(only_line(), TS " info u name=caf\xc3\xa9");
}

static void test_event_name_escaped(void **state)
{
	(void)state;
	log_info("evil\nerror", "k=v");
	assert_string_equal(only_line(), TS " info evil\\nerror k=v");
}

static void test_redacts_every_occurrence(void **state)
{
	(void)state;
	log_redact_add("hunter2-secret");
	log_info("auth", "token=%s again=%s tail=%s", "hunter2-secret", "hunter2-secret",
		 "xhunter2-secretx");
	assert_string_equal(only_line(),
			    TS " info auth token=[redacted] again=[redacted] tail=x[redacted]x");
	log_redact_remove("hunter2-secret");
}

static void test_redacts_adjacent_and_overlapping(void **state)
{
	(void)state;
	log_redact_add("AAAA1111");
	log_redact_add("1111BBBB");
	/* Adjacent copies of one secret. */
	log_info("e", "k=%s%s end", "AAAA1111", "AAAA1111");
	assert_string_equal(cap.lines[0], TS " info e k=[redacted] end");
	/* Two secrets sharing bytes: nothing of either may remain. */
	log_info("e", "k=AAAA1111BBBB end");
	assert_string_equal(cap.lines[1], TS " info e k=[redacted] end");
	/* Self-overlapping occurrences of one secret. */
	log_redact_add("abab");
	log_info("e", "k=ababab end");
	assert_string_equal(cap.lines[2], TS " info e k=[redacted] end");
	log_redact_remove("AAAA1111");
	log_redact_remove("1111BBBB");
	log_redact_remove("abab");
}

/* A secret that begins with another one: replacing the short one first used to
 * leave the rest of the long one in the line. */
static void test_redacts_secret_with_secret_prefix(void **state)
{
	(void)state;
	log_redact_add("tok_1234");
	log_redact_add("tok_1234_and_the_rest");
	log_info("e", "a=tok_1234_and_the_rest b=tok_1234");
	assert_string_equal(only_line(), TS " info e a=[redacted] b=[redacted]");
	assert_null(strstr(only_line(), "the_rest"));
	log_redact_remove("tok_1234");
	log_redact_remove("tok_1234_and_the_rest");
}

static void test_redacts_in_event_name(void **state)
{
	(void)state;
	log_redact_add("sekrit-value");
	log_info("x.sekrit-value", "k=v");
	assert_string_equal(only_line(), TS " info x.[redacted] k=v");
	log_redact_remove("sekrit-value");
}

static void test_redact_remove_and_short(void **state)
{
	(void)state;
	log_redact_add("abc"); /* under 4 bytes: ignored */
	log_redact_add(NULL);
	log_redact_add("pass-word");
	log_redact_add("pass-word"); /* duplicate: one registration */
	log_info("e", "a=abc b=pass-word");
	assert_string_equal(cap.lines[0], TS " info e a=abc b=[redacted]");
	log_redact_remove("pass-word");
	log_redact_remove("never-added");
	log_redact_remove(NULL);
	log_info("e", "b=pass-word");
	assert_string_equal(cap.lines[1], TS " info e b=pass-word");
}

/* More than the old fixed table of 256: every one must still be hidden. */
static void test_redacts_many_secrets(void **state)
{
	(void)state;
	char s[32];
	for (int i = 0; i < 600; i++) {
		snprintf(s, sizeof s, "secret-%04d-x", i);
		log_redact_add(s);
	}
	log_info("e", "first=secret-0000-x last=secret-0599-x");
	assert_string_equal(only_line(), TS " info e first=[redacted] last=[redacted]");
	for (int i = 0; i < 600; i++) {
		snprintf(s, sizeof s, "secret-%04d-x", i);
		log_redact_remove(s);
	}
	log_info("e", "last=secret-0599-x");
	assert_string_equal(cap.lines[1], TS " info e last=secret-0599-x");
}

/* The line prefix "TS info e " is this long. */
#define PREFIX_LEN (sizeof(TS " info e ") - 1)

/* A short secret at the very end of a full line: replacing 4 bytes by 10 used to
 * underflow the tail length and memmove far past the buffer. */
static void test_redaction_at_line_end(void **state)
{
	(void)state;
	log_redact_add("abcd");
	size_t fill = LOG_LINE_MAX - 1 - PREFIX_LEN - 4;
	char *body = malloc(fill + 4 * 40 + 1);
	assert_non_null(body);
	memset(body, 'x', fill);
	strcpy(body + fill, "abcd");
	log_info("e", "%s", body);
	const char *line = only_line();
	assert_int_equal(strlen(line), PREFIX_LEN + fill); /* the marker did not fit */
	assert_null(strstr(line, "abcd"));
	assert_null(strstr(line, "abc"));
	capture_clear();

	/* Many copies spilling over the end. */
	memset(body, 'x', fill);
	for (int i = 0; i < 40; i++)
		memcpy(body + fill - 100 + 4 * i, "abcd", 4);
	body[fill - 100 + 160] = '\0';
	log_info("e", "%s", body);
	line = only_line();
	assert_true(strlen(line) <= LOG_LINE_MAX - 1);
	assert_null(strstr(line, "abc"));
	assert_non_null(strstr(line, "x[redacted]"));
	free(body);
	log_redact_remove("abcd");
}

/* Lines are cut at LOG_LINE_MAX - 1; a secret straddling the cut leaves nothing. */
static void test_long_line_cut_without_partial_secret(void **state)
{
	(void)state;
	char *body = malloc(3 * LOG_LINE_MAX);
	assert_non_null(body);
	memset(body, 'y', 3 * LOG_LINE_MAX - 1);
	body[3 * LOG_LINE_MAX - 1] = '\0';
	log_info("e", "%s", body);
	assert_int_equal(strlen(only_line()), LOG_LINE_MAX - 1);
	capture_clear();

	log_redact_add("SECRETVALUE");
	size_t fill = LOG_LINE_MAX - 1 - PREFIX_LEN - 5; /* "SECRE" would fit, the rest not */
	memset(body, 'y', fill);
	strcpy(body + fill, "SECRETVALUE and more text");
	log_info("e", "%s", body);
	const char *line = only_line();
	assert_true(strlen(line) <= LOG_LINE_MAX - 1);
	assert_null(strchr(line + PREFIX_LEN, 'S'));
	capture_clear();

	/* A secret far beyond the cut in a very long body: hidden there too (the cut
	 * happens after redaction, so this just must not crash or leak). */
	memset(body, 'y', 3 * LOG_LINE_MAX - 1);
	memcpy(body + 2 * LOG_LINE_MAX, "SECRETVALUE", 11);
	log_info("e", "%s", body);
	assert_null(strstr(only_line(), "SECRET"));
	free(body);
	log_redact_remove("SECRETVALUE");
}

/* Escaping can grow a line fourfold; the cut still holds. */
static void test_escaping_respects_cut(void **state)
{
	(void)state;
	char *body = malloc(LOG_LINE_MAX);
	assert_non_null(body);
	memset(body, '\x01', LOG_LINE_MAX - 1);
	body[LOG_LINE_MAX - 1] = '\0';
	log_info("e", "%s", body);
	const char *line = only_line();
	size_t len = strlen(line);
	assert_true(len <= LOG_LINE_MAX - 1);
	assert_true(len > LOG_LINE_MAX - 1 - 4);
	/* Escapes are never cut in half. */
	assert_int_equal((len - PREFIX_LEN) % 4, 0);
	free(body);
}

static void test_level_filter(void **state)
{
	(void)state;
	log_set_level(LOG_LEVEL_WARN);
	assert_false(log_enabled(LOG_LEVEL_DEBUG));
	assert_false(log_enabled(LOG_LEVEL_INFO));
	assert_true(log_enabled(LOG_LEVEL_WARN));
	assert_true(log_enabled(LOG_LEVEL_ERROR));
	log_debug("d", "k=1");
	log_info("i", "k=2");
	log_warn("w", "k=3");
	log_error("e", "k=4");
	assert_int_equal(cap.count, 2);
	assert_string_equal(cap.lines[0], TS " warn w k=3");
	assert_string_equal(cap.lines[1], TS " error e k=4");
	log_set_level(LOG_LEVEL_ERROR);
	log_warn("w", "k=5");
	assert_int_equal(cap.count, 2);
	log_set_level(LOG_LEVEL_DEBUG);
	log_debug("d", "k=6");
	assert_int_equal(cap.count, 3);
}

static void test_level_parse(void **state)
{
	(void)state;
	enum log_level l = LOG_LEVEL_ERROR;
	assert_int_equal(log_level_parse("debug", &l), 0);
	assert_int_equal(l, LOG_LEVEL_DEBUG);
	assert_int_equal(log_level_parse("info", &l), 0);
	assert_int_equal(l, LOG_LEVEL_INFO);
	assert_int_equal(log_level_parse("warn", &l), 0);
	assert_int_equal(l, LOG_LEVEL_WARN);
	assert_int_equal(log_level_parse("error", &l), 0);
	assert_int_equal(l, LOG_LEVEL_ERROR);
	l = LOG_LEVEL_INFO;
	assert_int_equal(log_level_parse("verbose", &l), -1);
	assert_int_equal(log_level_parse("", &l), -1);
	assert_int_equal(log_level_parse("INFO", &l), -1);
	assert_int_equal(l, LOG_LEVEL_INFO); /* untouched on failure */
}

static void test_out_of_range_level_is_error(void **state)
{
	(void)state;
	log_msg((enum log_level)42, "odd", "k=v");
	assert_string_equal(only_line(), TS " error odd k=v");
	assert_int_equal(cap.levels[0], LOG_LEVEL_ERROR);
}

/* Without a sink, lines go to stderr, one per event, newline-terminated. */
static void test_null_sink_writes_stderr(void **state)
{
	(void)state;
	FILE *tmp = tmpfile();
	assert_non_null(tmp);
	fflush(stderr);
	int saved = dup(2);
	assert_true(saved >= 0);
	assert_true(dup2(fileno(tmp), 2) >= 0);
	log_set_sink(NULL, NULL);
	log_redact_add("stderr-secret");
	log_info("to.stderr", "a=%s b=%s", "1\n2", "stderr-secret");
	log_set_sink(capture, &cap);
	fflush(stderr);
	assert_true(dup2(saved, 2) >= 0);
	close(saved);
	log_redact_remove("stderr-secret");

	char got[256] = {0};
	rewind(tmp);
	size_t n = fread(got, 1, sizeof got - 1, tmp);
	fclose(tmp);
	assert_string_equal(got, TS " info to.stderr a=1\\n2 b=[redacted]\n");
	assert_int_equal(n, strlen(got));
	assert_int_equal(cap.count, 0); /* the sink saw nothing meanwhile */
}

#define THREADS 8
#define PER_THREAD 1000

static void *log_thread(void *arg)
{
	int id = (int)(intptr_t)arg;
	for (int i = 0; i < PER_THREAD; i++)
		log_info("thread.tick", "t=%d seq=%d token=%s", id, i, "thread-shared-secret");
	return NULL;
}

/* Several threads log while another registers and drops secrets: every line
 * arrives whole, redacted, and each thread's lines in order. */
static void test_threads(void **state)
{
	(void)state;
	log_redact_add("thread-shared-secret");
	pthread_t th[THREADS];
	for (int i = 0; i < THREADS; i++)
		assert_int_equal(pthread_create(&th[i], NULL, log_thread, (void *)(intptr_t)i), 0);
	char s[32];
	for (int i = 0; i < 500; i++) {
		snprintf(s, sizeof s, "churn-%d-secret", i);
		log_redact_add(s);
		if (i >= 10) {
			snprintf(s, sizeof s, "churn-%d-secret", i - 10);
			log_redact_remove(s);
		}
	}
	for (int i = 0; i < THREADS; i++)
		assert_int_equal(pthread_join(th[i], NULL), 0);
	for (int i = 490; i < 500; i++) {
		snprintf(s, sizeof s, "churn-%d-secret", i);
		log_redact_remove(s);
	}
	log_redact_remove("thread-shared-secret");

	assert_int_equal(cap.count, THREADS * PER_THREAD);
	int next[THREADS] = {0};
	for (size_t i = 0; i < cap.count; i++) {
		int t = -1, seq = -1, end = 0;
		int n = sscanf(cap.lines[i], TS " info thread.tick t=%d seq=%d token=[redacted]%n",
			       &t, &seq, &end);
		assert_int_equal(n, 2);
		assert_int_equal(cap.lines[i][end], '\0');
		assert_true(t >= 0 && t < THREADS);
		assert_int_equal(seq, next[t]);
		next[t]++;
	}
	for (int i = 0; i < THREADS; i++)
		assert_int_equal(next[i], PER_THREAD);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_line_format, teardown),
		cmocka_unit_test_teardown(test_empty_body_has_no_trailing_space, teardown),
		cmocka_unit_test_teardown(test_time_comes_from_clock, teardown),
		cmocka_unit_test_teardown(test_control_chars_escaped, teardown),
		cmocka_unit_test_teardown(test_event_name_escaped, teardown),
		cmocka_unit_test_teardown(test_redacts_every_occurrence, teardown),
		cmocka_unit_test_teardown(test_redacts_adjacent_and_overlapping, teardown),
		cmocka_unit_test_teardown(test_redacts_secret_with_secret_prefix, teardown),
		cmocka_unit_test_teardown(test_redacts_in_event_name, teardown),
		cmocka_unit_test_teardown(test_redact_remove_and_short, teardown),
		cmocka_unit_test_teardown(test_redacts_many_secrets, teardown),
		cmocka_unit_test_teardown(test_redaction_at_line_end, teardown),
		cmocka_unit_test_teardown(test_long_line_cut_without_partial_secret, teardown),
		cmocka_unit_test_teardown(test_escaping_respects_cut, teardown),
		cmocka_unit_test_teardown(test_level_filter, teardown),
		cmocka_unit_test_teardown(test_level_parse, teardown),
		cmocka_unit_test_teardown(test_out_of_range_level_is_error, teardown),
		cmocka_unit_test_teardown(test_null_sink_writes_stderr, teardown),
		cmocka_unit_test_teardown(test_threads, teardown),
	};
	return cmocka_run_group_tests_name("log", tests, setup, group_teardown);
}
