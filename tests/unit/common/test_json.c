#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "json.h"

#define MAX (1 << 20)

static cJSON *parse(const char *text, struct err *e)
{
	memset(e, 0, sizeof *e);
	return json_parse(text, strlen(text), MAX, e);
}

/* Parsing must fail with a message containing `want`. */
static void parse_fails(const char *text, size_t len, const char *want)
{
	struct err e = {{0}};
	cJSON *v = json_parse(text, len, MAX, &e);
	if (v) {
		cJSON_Delete(v);
		fail_msg("accepted: %.*s", (int)len, text);
	}
	if (!strstr(e.msg, want))
		fail_msg("for %.*s: got \"%s\", want \"%s\"", (int)len, text, e.msg, want);
}

static void parse_ok(const char *text)
{
	struct err e = {{0}};
	cJSON *v = parse(text, &e);
	if (!v)
		fail_msg("rejected %s: %s", text, e.msg);
	cJSON_Delete(v);
}

static void test_valid_documents(void **state)
{
	(void)state;
	parse_ok("{}");
	parse_ok("[]");
	parse_ok("0");
	parse_ok("-0");
	parse_ok("1.5e-3");
	parse_ok("-12.25E+2");
	parse_ok("\"x\"");
	parse_ok("null");
	parse_ok(" \t\r\n{\"a\" : [1, 2, {\"b\": null}], \"c\": true} \n");
	parse_ok("\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x9a\x80\""); /* 2, 3 and 4-byte UTF-8 */
	parse_ok("\"\\u00e9 \\ud83d\\ude80 \\\" \\\\ \\/ \\b\\f\\n\\r\\t\"");
	parse_ok("\"[[[[{{{{\""); /* brackets in strings do not nest */

	struct err e;
	cJSON *v = parse("{\"name\":\"web\",\"n\":3}", &e);
	assert_non_null(v);
	const char *s;
	assert_int_equal(json_get_string(v, NULL, "name", 64, &s, &e), 0);
	assert_string_equal(s, "web");
	cJSON_Delete(v);

	/* Exactly len bytes are read: the text needs no terminator. */
	const char text[] = "[1,2]garbage";
	v = json_parse(text, 5, MAX, &e);
	assert_non_null(v);
	assert_int_equal(cJSON_GetArraySize(v), 2);
	cJSON_Delete(v);
}

static void test_invalid_documents(void **state)
{
	(void)state;
	parse_fails("", 0, "empty document");
	parse_fails(NULL, 0, "empty document");
	parse_fails("   ", 3, "syntax error at offset");
	parse_fails("{\"a\" 1}", 7, "syntax error at offset 5");
	parse_fails("[1,,2]", 6, "syntax error at offset 3");
	parse_fails("{'a':1}", 7, "syntax error at offset");
	parse_fails("[1,2", 4, "syntax error");
	parse_fails("{\"a\":1", 6, "syntax error");
	parse_fails("\"abc", 4, "unterminated string starting at offset 0");
	parse_fails("[\"abc\\", 6, "unterminated string starting at offset 1");
	parse_fails("tru", 3, "syntax error");
	parse_fails("{} x", 4, "unexpected data after the JSON value at offset 3");
	parse_fails("{}{}", 4, "unexpected data after the JSON value at offset 2");
	parse_fails("[1] 2", 5, "unexpected data after the JSON value at offset 4");
	/* Strict numbers: cJSON alone would take these. */
	parse_fails("+1", 2, "invalid number at offset 0");
	parse_fails("[01]", 4, "invalid number at offset 1");
	parse_fails(".5", 2, "invalid number at offset 0");
	parse_fails("1.", 2, "invalid number at offset 0");
	parse_fails("-", 1, "invalid number at offset 0");
	parse_fails("1e", 2, "invalid number");
	parse_fails("1e5e5", 5, "invalid number");
	parse_fails("[1.2.3]", 7, "invalid number at offset 1");
	parse_fails("[1e400]", 7, "number out of range at offset 1");
	parse_fails("-1e309", 6, "number out of range at offset 0");
	parse_ok("[1e-400, 1.7976931348623157e308]"); /* underflow to 0 is fine */
	char digits[80];
	memset(digits, '1', 63);
	digits[63] = '\0';
	parse_ok(digits);
	memset(digits, '1', 64);
	digits[64] = '\0';
	parse_fails(digits, 64, "number longer than 63 characters at offset 0");
	/* Strings. */
	parse_fails("\"a\tb\"", 5, "unescaped control character in string at offset 2");
	parse_fails("\"a\\qb\"", 6, "invalid escape at offset 2");
	parse_fails("\"a\\u0000b\"", 10, "\\u0000 in string at offset 2");
	parse_fails("\"\\ud800\"", 8, "syntax error");          /* lone high surrogate */
	parse_fails("\"\\udc00\"", 8, "syntax error");          /* lone low surrogate */
	parse_fails("\"\\u12g4\"", 8, "invalid \\u escape at offset 1");
	parse_fails("\"\\u12\"", 6, "invalid \\u escape at offset 1");
	parse_fails("\"\\ud800\\u00zz\"", 14, "invalid \\u escape at offset 7");
}

static void test_nul_bytes(void **state)
{
	(void)state;
	parse_fails("{\"a\":\"x\0y\"}", 11, "NUL byte in string at offset 7");
	parse_fails("{}\0", 3, "NUL byte at offset 2");
	parse_fails("[1,\0 2]", 6, "NUL byte at offset 3");
}

static void test_invalid_utf8(void **state)
{
	(void)state;
	parse_fails("\"\xc0\xaf\"", 4, "invalid UTF-8 at offset 1");          /* overlong '/' */
	parse_fails("\"\xc1\xbf\"", 4, "invalid UTF-8 at offset 1");          /* overlong */
	parse_fails("\"\xe0\x80\xaf\"", 5, "invalid UTF-8 at offset 1");      /* overlong 3-byte */
	parse_fails("\"\xf0\x80\x80\xaf\"", 6, "invalid UTF-8 at offset 1");  /* overlong 4-byte */
	parse_fails("\"\xed\xa0\x80\"", 5, "invalid UTF-8 at offset 1");      /* U+D800 */
	parse_fails("\"\xed\xbf\xbf\"", 5, "invalid UTF-8 at offset 1");      /* U+DFFF */
	parse_fails("\"\xf4\x90\x80\x80\"", 6, "invalid UTF-8 at offset 1");  /* U+110000 */
	parse_fails("\"\xf5\x80\x80\x80\"", 6, "invalid UTF-8 at offset 1");
	parse_fails("\"\xff\"", 3, "invalid UTF-8 at offset 1");
	parse_fails("\"a\x80\"", 4, "invalid UTF-8 at offset 2");             /* lone continuation */
	parse_fails("\"\xc3\"", 3, "invalid UTF-8 at offset 1");              /* cut sequence */
	parse_fails("\"\xe2\x82\"", 4, "invalid UTF-8 at offset 1");
	parse_fails("[\"ok\"]\xc3", 7, "invalid UTF-8 at offset 6");          /* cut at the end */
	parse_fails("{\"k\xe9y\":1}", 9, "invalid UTF-8 at offset 3");        /* Latin-1 in a key */

	/* The checker on its own, at the edges of each range. */
	size_t at = 99;
	assert_int_equal(json_utf8_check("\xed\x9f\xbf", 3, &at), 0);          /* U+D7FF */
	assert_int_equal(json_utf8_check("\xee\x80\x80", 3, &at), 0);          /* U+E000 */
	assert_int_equal(json_utf8_check("\xf4\x8f\xbf\xbf", 4, &at), 0);      /* U+10FFFF */
	assert_int_equal(json_utf8_check("\xc2\x80", 2, &at), 0);              /* U+0080 */
	assert_int_equal(json_utf8_check("\xe0\xa0\x80", 3, &at), 0);          /* U+0800 */
	assert_int_equal(json_utf8_check("\xf0\x90\x80\x80", 4, &at), 0);      /* U+10000 */
	assert_int_equal(json_utf8_check("ab\xe0\x9f\xbf", 5, &at), -1);       /* overlong */
	assert_int_equal(at, 2);
	assert_int_equal(json_utf8_check("\xc3\xa9\xc3", 3, &at), -1);
	assert_int_equal(at, 2);
	assert_int_equal(json_utf8_check("\xe2\x28\xa1", 3, &at), -1);
	assert_int_equal(at, 0);
}

static char *nested(int depth, const char *open, const char *inner, const char *close)
{
	size_t n = strlen(open) * (size_t)depth + strlen(inner) + strlen(close) * (size_t)depth;
	char *s = malloc(n + 1);
	assert_non_null(s);
	s[0] = '\0';
	for (int i = 0; i < depth; i++)
		strcat(s, open);
	strcat(s, inner);
	for (int i = 0; i < depth; i++)
		strcat(s, close);
	return s;
}

static void test_depth(void **state)
{
	(void)state;
	char *ok = nested(JSON_DEPTH_MAX, "[", "1", "]");
	parse_ok(ok);
	free(ok);
	char *deep = nested(JSON_DEPTH_MAX + 1, "[", "1", "]");
	parse_fails(deep, strlen(deep), "nesting deeper than 64 levels at offset 64");
	free(deep);
	char *objs = nested(JSON_DEPTH_MAX + 1, "{\"a\":", "1", "}");
	parse_fails(objs, strlen(objs), "nesting deeper than 64 levels");
	free(objs);
	/* Far beyond cJSON's own limit (1000) and still a clean error. */
	char *huge = nested(100000, "[", "", "]");
	parse_fails(huge, strlen(huge), "nesting deeper than 64 levels");
	free(huge);
}

static void test_too_long(void **state)
{
	(void)state;
	struct err e;
	const char *text = "[1,2,3]";
	assert_null(json_parse(text, 7, 6, &e));
	assert_string_equal(e.msg, "document is 7 bytes, more than the limit of 6");
	cJSON *v = json_parse(text, 7, 7, &e);
	assert_non_null(v);
	cJSON_Delete(v);
	/* NULL err is allowed. */
	assert_null(json_parse(text, 7, 6, NULL));
}

static void test_integers(void **state)
{
	(void)state;
	struct err e;
	cJSON *v = parse("{\"max\":9007199254740991,\"min\":-9007199254740991,"
			 "\"over\":9007199254740992,\"under\":-9007199254740993,"
			 "\"half\":1.5,\"big\":1e300,\"two\":2.0,\"exp\":1e3,\"s\":\"5\","
			 "\"t\":true,\"z\":-0,\"n\":null,\"inf\":1e308}", &e);
	assert_non_null(v);
	int64_t n = 0;
	assert_int_equal(json_get_int(v, NULL, "max", INT64_MIN, INT64_MAX, &n, &e), 0);
	assert_int_equal(n, 9007199254740991LL);
	assert_int_equal(json_get_int(v, NULL, "min", INT64_MIN, INT64_MAX, &n, &e), 0);
	assert_int_equal(n, -9007199254740991LL);
	assert_int_equal(json_get_int(v, NULL, "two", 0, 10, &n, &e), 0);
	assert_int_equal(n, 2);
	assert_int_equal(json_get_int(v, NULL, "exp", 0, 1000, &n, &e), 0);
	assert_int_equal(n, 1000);
	assert_int_equal(json_get_int(v, NULL, "z", 0, 0, &n, &e), 0);
	assert_int_equal(n, 0);

	n = 42;
	assert_int_equal(json_get_int(v, NULL, "over", INT64_MIN, INT64_MAX, &n, &e), -1);
	assert_non_null(strstr(e.msg, "over: expected integer"));
	assert_int_equal(n, 42); /* untouched on error */
	assert_int_equal(json_get_int(v, NULL, "under", INT64_MIN, INT64_MAX, &n, &e), -1);
	assert_int_equal(json_get_int(v, NULL, "half", 0, 10, &n, &e), -1);
	assert_string_equal(e.msg, "half: expected integer 0..10, got 1.5");
	assert_int_equal(json_get_int(v, NULL, "big", INT64_MIN, INT64_MAX, &n, &e), -1);
	assert_int_equal(json_get_int(v, NULL, "inf", INT64_MIN, INT64_MAX, &n, &e), -1);
	assert_int_equal(json_get_int(v, NULL, "s", 0, 10, &n, &e), -1);
	assert_string_equal(e.msg, "s: expected integer 0..10, got string");
	assert_int_equal(json_get_int(v, NULL, "t", 0, 10, &n, &e), -1);
	assert_string_equal(e.msg, "t: expected integer 0..10, got boolean");
	assert_int_equal(json_get_int(v, NULL, "n", 0, 10, &n, &e), -1);
	assert_string_equal(e.msg, "n: expected integer 0..10, got null");
	assert_int_equal(json_get_int(v, NULL, "absent", 0, 10, &n, &e), -1);
	assert_string_equal(e.msg, "absent: missing");
	assert_int_equal(json_get_int(v, NULL, "two", 3, 10, &n, &e), -1);
	assert_string_equal(e.msg, "two: expected integer 3..10, got 2");
	assert_int_equal(json_get_int(v, NULL, "two", 0, 1, &n, &e), -1);
	assert_int_equal(json_get_int(v, NULL, "two", 2, 2, &n, &e), 0);

	assert_int_equal(json_get_int_opt(v, NULL, "absent", 0, 10, 7, &n, &e), 0);
	assert_int_equal(n, 7);
	assert_int_equal(json_get_int_opt(v, NULL, "n", 0, 10, 8, &n, &e), 0);
	assert_int_equal(n, 8);
	assert_int_equal(json_get_int_opt(v, NULL, "two", 0, 10, 8, &n, &e), 0);
	assert_int_equal(n, 2);
	assert_int_equal(json_get_int_opt(v, NULL, "half", 0, 10, 8, &n, &e), -1);
	cJSON_Delete(v);

	/* Port range edges, as the agent checks them. */
	v = parse("[0,1,65535,65536]", &e);
	assert_non_null(v);
	int64_t want[] = {-1, 1, 65535, -1};
	int i = 0;
	char path[JSON_PATH_MAX];
	for (const cJSON *it = v->child; it; it = it->next, i++) {
		json_path_index(path, sizeof path, "ports", (size_t)i);
		int rc = json_get_int(it, path, NULL, 1, 65535, &n, &e);
		if (want[i] < 0) {
			assert_int_equal(rc, -1);
			assert_non_null(strstr(e.msg, path));
		} else {
			assert_int_equal(rc, 0);
			assert_int_equal(n, want[i]);
		}
	}
	assert_string_equal(e.msg, "ports[3]: expected integer 1..65535, got 65536");
	cJSON_Delete(v);
}

static void test_strings_bools(void **state)
{
	(void)state;
	struct err e;
	cJSON *v = parse("{\"s\":\"hello\",\"e\":\"\",\"n\":null,\"i\":1,\"b\":false,"
			 "\"t\":true,\"bs\":\"true\"}", &e);
	assert_non_null(v);
	const char *s = NULL;
	assert_int_equal(json_get_string(v, NULL, "s", 5, &s, &e), 0);
	assert_string_equal(s, "hello");
	assert_int_equal(json_get_string(v, NULL, "s", 4, &s, &e), -1);
	assert_string_equal(e.msg, "s: string of 5 bytes, longer than 4");
	assert_int_equal(json_get_string(v, NULL, "e", 0, &s, &e), 0);
	assert_string_equal(s, "");
	assert_int_equal(json_get_string(v, NULL, "n", 10, &s, &e), -1);
	assert_string_equal(e.msg, "n: expected string, got null");
	assert_int_equal(json_get_string(v, NULL, "i", 10, &s, &e), -1);
	assert_string_equal(e.msg, "i: expected string, got number");
	assert_int_equal(json_get_string(v, "", "nope", 10, &s, &e), -1);
	assert_string_equal(e.msg, "nope: missing");
	/* Keys are case-sensitive (cJSON_GetObjectItem would not be). */
	assert_int_equal(json_get_string(v, NULL, "S", 10, &s, &e), -1);

	assert_int_equal(json_get_string_opt(v, NULL, "nope", 10, "dflt", &s, &e), 0);
	assert_string_equal(s, "dflt");
	assert_int_equal(json_get_string_opt(v, NULL, "n", 10, NULL, &s, &e), 0);
	assert_null(s);
	assert_int_equal(json_get_string_opt(v, NULL, "s", 10, "dflt", &s, &e), 0);
	assert_string_equal(s, "hello");
	assert_int_equal(json_get_string_opt(v, NULL, "i", 10, "dflt", &s, &e), -1);

	bool b = true;
	assert_int_equal(json_get_bool(v, NULL, "b", &b, &e), 0);
	assert_false(b);
	assert_int_equal(json_get_bool(v, NULL, "t", &b, &e), 0);
	assert_true(b);
	assert_int_equal(json_get_bool(v, NULL, "bs", &b, &e), -1);
	assert_string_equal(e.msg, "bs: expected boolean, got string");
	assert_int_equal(json_get_bool(v, NULL, "i", &b, &e), -1);
	assert_int_equal(json_get_bool(v, NULL, "nope", &b, &e), -1);
	assert_int_equal(json_get_bool_opt(v, NULL, "nope", true, &b, &e), 0);
	assert_true(b);
	assert_int_equal(json_get_bool_opt(v, NULL, "n", false, &b, &e), 0);
	assert_false(b);
	assert_int_equal(json_get_bool_opt(v, NULL, "t", false, &b, &e), 0);
	assert_true(b);
	assert_int_equal(json_get_bool_opt(v, NULL, "s", false, &b, &e), -1);

	/* Getters on something that is not an object. */
	cJSON *arr = parse("[1]", &e);
	assert_int_equal(json_get_string(arr, "x.y", "k", 10, &s, &e), -1);
	assert_string_equal(e.msg, "x.y: expected object, got array");
	assert_int_equal(json_get_string(NULL, NULL, "k", 10, &s, &e), -1);
	assert_string_equal(e.msg, "(root): expected object, got nothing");
	cJSON_Delete(arr);
	cJSON_Delete(v);
}

static const char release_doc[] =
	"{\"release\":{\"id\":\"r42\",\"services\":["
	"{\"name\":\"web\",\"port\":8080},"
	"{\"name\":\"api\",\"port\":8081},"
	"{\"name\":\"worker\",\"port\":\"9000\"}],"
	"\"labels\":{\"team\":\"core\"},\"tags\":[]}}";

static void test_nested_paths(void **state)
{
	(void)state;
	struct err e;
	cJSON *root = parse(release_doc, &e);
	assert_non_null(root);
	const cJSON *rel, *services, *labels, *tags;
	size_t count = 99;
	assert_int_equal(json_get_object(root, NULL, "release", &rel, &e), 0);
	assert_int_equal(json_get_array(rel, "release", "services", 8, &services, &count, &e), 0);
	assert_int_equal(count, 3);
	assert_int_equal(json_get_array(rel, "release", "services", 2, &services, &count, &e), -1);
	assert_string_equal(e.msg, "release.services: more than 2 items");
	assert_int_equal(json_get_array(rel, "release", "tags", 0, &tags, &count, &e), 0);
	assert_int_equal(count, 0);
	assert_int_equal(json_get_array(rel, "release", "labels", 8, &tags, &count, &e), -1);
	assert_string_equal(e.msg, "release.labels: expected array, got object");
	assert_int_equal(json_get_object(rel, "release", "labels", &labels, &e), 0);
	assert_int_equal(json_get_object(rel, "release", "tags", &labels, &e), -1);
	assert_string_equal(e.msg, "release.tags: expected object, got array");
	assert_int_equal(json_get_object(rel, "release", "none", &labels, &e), -1);
	assert_string_equal(e.msg, "release.none: missing");
	assert_int_equal(json_get_object_opt(rel, "release", "none", &labels, &e), 0);
	assert_null(labels);
	assert_int_equal(json_get_array_opt(rel, "release", "none", 8, &tags, &count, &e), 0);
	assert_null(tags);
	assert_int_equal(count, 0);
	assert_int_equal(json_get_array_opt(rel, "release", "id", 8, &tags, &count, &e), -1);
	assert_string_equal(e.msg, "release.id: expected array, got string");

	char path[JSON_PATH_MAX];
	size_t i = 0;
	int failures = 0;
	for (const cJSON *svc = services->child; svc; svc = svc->next, i++) {
		json_path_index(path, sizeof path, "release.services", i);
		int64_t port;
		const char *name;
		assert_int_equal(json_get_string(svc, path, "name", 32, &name, &e), 0);
		if (json_get_int(svc, path, "port", 1, 65535, &port, &e) < 0)
			failures++;
	}
	assert_int_equal(failures, 1);
	assert_string_equal(e.msg, "release.services[2].port: expected integer 1..65535, got string");

	/* A NULL key checks the value itself. */
	const cJSON *first = services->child;
	assert_int_equal(json_get_object(first, "release.services[0]", NULL, &labels, &e), 0);
	assert_ptr_equal(labels, first);
	const char *str;
	assert_int_equal(json_get_string(first, "release.services[0]", NULL, 10, &str, &e), -1);
	assert_string_equal(e.msg, "release.services[0]: expected string, got object");

	/* Paths are cut, not overflowed. */
	char small[8];
	assert_string_equal(json_path_key(small, sizeof small, "release", "services"), "release");
	assert_string_equal(json_path_key(small, sizeof small, NULL, "ab"), "ab");
	assert_string_equal(json_path_index(small, sizeof small, "a", 12), "a[12]");
	assert_string_equal(json_path_index(small, sizeof small, "abcdef", 12), "abcdef[");
	cJSON_Delete(root);
}

static void test_check_keys(void **state)
{
	(void)state;
	struct err e;
	static const char *const allowed[] = {"name", "port", "env", NULL};
	cJSON *v = parse("{\"name\":\"web\",\"port\":80}", &e);
	assert_int_equal(json_check_keys(v, allowed, "svc", &e), 0);
	cJSON_Delete(v);
	v = parse("{}", &e);
	assert_int_equal(json_check_keys(v, allowed, "svc", &e), 0);
	cJSON_Delete(v);
	v = parse("{\"name\":\"web\",\"colour\":\"red\"}", &e);
	assert_int_equal(json_check_keys(v, allowed, "release.services[1]", &e), -1);
	assert_string_equal(e.msg, "release.services[1]: unknown key \"colour\"");
	cJSON_Delete(v);
	v = parse("{\"name\":\"web\",\"port\":1,\"name\":\"evil\"}", &e);
	assert_int_equal(json_check_keys(v, allowed, NULL, &e), -1);
	assert_string_equal(e.msg, "(root): duplicate key \"name\"");
	cJSON_Delete(v);
	/* Keys from outside are sanitised and cut in the message. */
	v = parse("{\"a\\nb\\\"c\":1}", &e);
	assert_int_equal(json_check_keys(v, allowed, "x", &e), -1);
	assert_string_equal(e.msg, "x: unknown key \"a?b?c\"");
	cJSON_Delete(v);
	char long_doc[300];
	snprintf(long_doc, sizeof long_doc, "{\"%0200d\":1}", 7);
	v = parse(long_doc, &e);
	assert_int_equal(json_check_keys(v, allowed, "x", &e), -1);
	assert_true(strlen(e.msg) < 100);
	assert_non_null(strstr(e.msg, "...\""));
	cJSON_Delete(v);
	v = parse("[]", &e);
	assert_int_equal(json_check_keys(v, allowed, "x", &e), -1);
	assert_string_equal(e.msg, "x: expected object, got array");
	cJSON_Delete(v);
}

static void test_print(void **state)
{
	(void)state;
	struct err e;
	cJSON *v = cJSON_CreateObject();
	cJSON_AddStringToObject(v, "a", "b\"c");
	cJSON_AddNumberToObject(v, "n", 12);
	char *s = json_print(v, 64, &e);
	assert_non_null(s);
	assert_string_equal(s, "{\"a\":\"b\\\"c\",\"n\":12}");
	size_t len = strlen(s);
	free(s);
	s = json_print(v, len, &e);
	assert_non_null(s);
	free(s);
	assert_null(json_print(v, len - 1, &e));
	assert_string_equal(e.msg, "JSON text of 19 bytes, longer than 18");
	assert_null(json_print(NULL, 10, &e));

	struct buf b;
	buf_init(&b, 25);
	assert_int_equal(buf_append_str(&b, "x="), 0);
	assert_int_equal(json_to_buf(v, &b), 0);
	assert_string_equal(b.data, "x={\"a\":\"b\\\"c\",\"n\":12}");
	assert_int_equal(json_to_buf(v, &b), -1); /* over the cap: unchanged */
	assert_int_equal(b.len, 21);
	buf_free(&b);

	/* Round trip through the strict parser. */
	s = json_print(v, 64, &e);
	cJSON *back = json_parse(s, strlen(s), 64, &e);
	assert_non_null(back);
	assert_true(cJSON_Compare(v, back, 1));
	cJSON_Delete(back);
	free(s);
	cJSON_Delete(v);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid_documents),
		cmocka_unit_test(test_invalid_documents),
		cmocka_unit_test(test_nul_bytes),
		cmocka_unit_test(test_invalid_utf8),
		cmocka_unit_test(test_depth),
		cmocka_unit_test(test_too_long),
		cmocka_unit_test(test_integers),
		cmocka_unit_test(test_strings_bools),
		cmocka_unit_test(test_nested_paths),
		cmocka_unit_test(test_check_keys),
		cmocka_unit_test(test_print),
	};
	return cmocka_run_group_tests_name("json", tests, NULL, NULL);
}
