#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "buf.h"
#include "config.h"
#include "log.h"

#define PREFIX "SLIPWAY_TCFG_"

static const char *const levels[] = {"debug", "info", "warn", "error", NULL};

static const struct config_key schema[] = {
	{.name = "coordinator.url", .type = CONFIG_URL, .required = true,
	 .help = "Base URL of the coordinator."},
	{.name = "proxy.bind", .type = CONFIG_STRING, .default_value = "0.0.0.0:80",
	 .help = "Address the proxy listens on."},
	{.name = "proxy.max_conns", .type = CONFIG_INT, .default_value = "1024", .min = 1,
	 .max = 65535, .help = "Connections the proxy accepts at once."},
	{.name = "proxy.offset", .type = CONFIG_INT, .default_value = "-5"},
	{.name = "log.json", .type = CONFIG_BOOL, .default_value = "false"},
	{.name = "log.level", .type = CONFIG_ENUM, .default_value = "info", .choices = levels},
	{.name = "drain.timeout", .type = CONFIG_DURATION, .default_value = "30s", .min = 100,
	 .max = 3600000},
	{.name = "spool.max", .type = CONFIG_SIZE, .default_value = "16M", .min = 4096,
	 .max = (int64_t)1 << 30},
	{.name = "state.dir", .type = CONFIG_PATH, .default_value = "/var/lib/slipway"},
	{.name = "agent.bootstrap_token", .type = CONFIG_SECRET},
	{.name = "agent.name", .type = CONFIG_STRING, .max = 16},
};
#define N CONFIG_SCHEMA_LEN(schema)

/* Removes every variable under PREFIX, so no test leaks into the next. */
static int clean_env(void **state)
{
	(void)state;
	for (;;) {
		char name[256] = "";
		for (char **e = environ; *e; e++) {
			if (strncmp(*e, PREFIX, strlen(PREFIX)) == 0) {
				size_t l = strcspn(*e, "=");
				snprintf(name, sizeof name, "%.*s", (int)l, *e);
				break;
			}
		}
		if (!name[0])
			return 0;
		unsetenv(name);
	}
}

static struct config *load(const char *text, struct err *e)
{
	memset(e, 0, sizeof *e);
	return config_load_buffer(schema, N, text, strlen(text), "t.conf", PREFIX, e);
}

/* Loading must fail and the message must contain want. */
static void fails(const char *text, const char *want)
{
	struct err e;
	struct config *cfg = load(text, &e);
	if (cfg) {
		config_free(cfg);
		fail_msg("accepted: %s", text);
	}
	if (!strstr(e.msg, want))
		fail_msg("for [%s]: got \"%s\", want \"%s\"", text, e.msg, want);
}

#define URL "coordinator.url = http://coord\n"

/* Loads URL + one more line; must succeed. */
static struct config *with(const char *line)
{
	char text[8192];
	snprintf(text, sizeof text, URL "%s\n", line);
	struct err e;
	struct config *cfg = load(text, &e);
	if (!cfg)
		fail_msg("rejected [%s]: %s", line, e.msg);
	return cfg;
}

static void rejects(const char *line, const char *want)
{
	char text[8192];
	snprintf(text, sizeof text, URL "%s\n", line);
	fails(text, want);
}

static char *capture(void (*fn)(const struct config *, FILE *), const struct config *cfg)
{
	char *out = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&out, &len);
	assert_non_null(f);
	fn(cfg, f);
	fclose(f);
	return out;
}

static char *write_temp(const char *content, size_t len)
{
	char *path = strdup("/tmp/slipway-test-config-XXXXXX");
	assert_non_null(path);
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, content, len), (ssize_t)len);
	close(fd);
	return path;
}

static void test_defaults(void **state)
{
	(void)state;
	struct err e;
	struct config *cfg = load(URL, &e);
	assert_non_null(cfg);
	assert_string_equal(config_str(cfg, "coordinator.url"), "http://coord");
	assert_string_equal(config_source(cfg, "coordinator.url"), "file:1");
	assert_string_equal(config_str(cfg, "proxy.bind"), "0.0.0.0:80");
	assert_string_equal(config_source(cfg, "proxy.bind"), "default");
	assert_int_equal(config_int(cfg, "proxy.max_conns"), 1024);
	assert_int_equal(config_int(cfg, "proxy.offset"), -5);
	assert_false(config_bool(cfg, "log.json"));
	assert_string_equal(config_str(cfg, "log.level"), "info");
	assert_int_equal(config_ms(cfg, "drain.timeout"), 30000);
	assert_int_equal(config_size(cfg, "spool.max"), 16 << 20);
	assert_string_equal(config_str(cfg, "state.dir"), "/var/lib/slipway");
	assert_null(config_str(cfg, "agent.bootstrap_token"));
	assert_false(config_has(cfg, "agent.bootstrap_token"));
	assert_true(config_has(cfg, "proxy.bind"));
	assert_string_equal(config_source(cfg, "agent.name"), "unset");
	config_free(cfg);
	config_free(NULL);

	/* No file at all: defaults + env. */
	setenv(PREFIX "COORDINATOR_URL", "https://c.example", 1);
	cfg = config_load(schema, N, NULL, PREFIX, &e);
	assert_non_null(cfg);
	assert_string_equal(config_str(cfg, "coordinator.url"), "https://c.example");
	assert_string_equal(config_source(cfg, "coordinator.url"), "env");
	config_free(cfg);
}

static void test_every_type(void **state)
{
	(void)state;
	struct err e;
	const char *text =
		"# slipway agent\n"
		"coordinator.url = \"https://coord.example:8443/api\"\n"
		"proxy.bind = \"[::]:8080\"\n"
		"proxy.max_conns = 65535\n"
		"proxy.offset = -9223372036854775808\n"
		"log.json = yes\n"
		"log.level = debug\n"
		"drain.timeout = 500ms\n"
		"spool.max = 1G\n"
		"state.dir = /srv/slipway/state\n"
		"agent.bootstrap_token = \"tok-12345\"\n"
		"agent.name = web-1\n";
	struct config *cfg = load(text, &e);
	assert_non_null(cfg);
	assert_string_equal(config_str(cfg, "coordinator.url"), "https://coord.example:8443/api");
	assert_string_equal(config_str(cfg, "proxy.bind"), "[::]:8080");
	assert_int_equal(config_int(cfg, "proxy.max_conns"), 65535);
	assert_true(config_int(cfg, "proxy.offset") == INT64_MIN);
	assert_true(config_bool(cfg, "log.json"));
	assert_string_equal(config_str(cfg, "log.level"), "debug");
	assert_int_equal(config_ms(cfg, "drain.timeout"), 500);
	assert_int_equal(config_size(cfg, "spool.max"), 1 << 30);
	assert_string_equal(config_str(cfg, "state.dir"), "/srv/slipway/state");
	assert_string_equal(config_str(cfg, "agent.bootstrap_token"), "tok-12345");
	assert_string_equal(config_str(cfg, "agent.name"), "web-1");
	assert_string_equal(config_source(cfg, "agent.name"), "file:12");
	config_free(cfg);
}

static void test_bools(void **state)
{
	(void)state;
	static const struct {
		const char *word;
		bool want;
	} cases[] = {
		{"true", true},  {"yes", true}, {"on", true},   {"1", true},  {"TRUE", true},
		{"Yes", true},   {"false", false}, {"no", false}, {"off", false}, {"0", false},
		{"OFF", false},
	};
	char line[64];
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		snprintf(line, sizeof line, "log.json = %s", cases[i].word);
		struct config *cfg = with(line);
		assert_int_equal(config_bool(cfg, "log.json"), cases[i].want);
		config_free(cfg);
	}
	rejects("log.json = maybe", "t.conf:2: log.json: expected true/false, yes/no, on/off or "
		"1/0; got 'maybe'");
	rejects("log.json = 2", "got '2'");
	rejects("log.json = truee", "got 'truee'");
}

static void test_ints(void **state)
{
	(void)state;
	struct config *cfg = with("proxy.max_conns = 1");
	assert_int_equal(config_int(cfg, "proxy.max_conns"), 1);
	config_free(cfg);
	cfg = with("proxy.offset = 9223372036854775807");
	assert_true(config_int(cfg, "proxy.offset") == INT64_MAX);
	config_free(cfg);
	cfg = with("proxy.offset = -0");
	assert_int_equal(config_int(cfg, "proxy.offset"), 0);
	config_free(cfg);
	rejects("proxy.max_conns = 0", "t.conf:2: proxy.max_conns: expected an integer in "
		"1..65535, got 0");
	rejects("proxy.max_conns = 65536", "expected an integer in 1..65535, got 65536");
	rejects("proxy.max_conns = -1", "got -1");
	rejects("proxy.offset = 9223372036854775808", "expected an integer, got "
		"'9223372036854775808'");
	rejects("proxy.offset = -9223372036854775809", "expected an integer");
	rejects("proxy.offset = 99999999999999999999999", "expected an integer");
	rejects("proxy.offset = +5", "expected an integer, got '+5'");
	rejects("proxy.offset = 1.5", "expected an integer, got '1.5'");
	rejects("proxy.offset = 0x10", "expected an integer, got '0x10'");
	rejects("proxy.offset = -", "expected an integer, got '-'");
	rejects("proxy.offset = \"\"", "expected an integer, got ''");
}

static void test_durations(void **state)
{
	(void)state;
	static const struct {
		const char *text;
		int64_t ms;
	} good[] = {
		{"100ms", 100}, {"500ms", 500}, {"1s", 1000}, {"30s", 30000}, {"30", 30000},
		{"5m", 300000}, {"1h", 3600000}, {"60m", 3600000}, {"3600", 3600000},
	};
	char line[64];
	for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
		snprintf(line, sizeof line, "drain.timeout = %s", good[i].text);
		struct config *cfg = with(line);
		assert_int_equal(config_ms(cfg, "drain.timeout"), good[i].ms);
		config_free(cfg);
	}
	rejects("drain.timeout = 99ms", "t.conf:2: drain.timeout: expected a duration in "
		"100ms..1h, got '99ms'");
	rejects("drain.timeout = 2h", "expected a duration in 100ms..1h, got '2h'");
	rejects("drain.timeout = 3601", "got '3601'");
	rejects("drain.timeout = 1.5s", "expected a duration like 500ms, 30s, 5m or 1h; got '1.5s'");
	rejects("drain.timeout = -1s", "got '-1s'");
	rejects("drain.timeout = 10x", "got '10x'");
	rejects("drain.timeout = s", "got 's'");
	rejects("drain.timeout = 1S", "got '1S'");
	rejects("drain.timeout = 1h30m", "got '1h30m'");
	rejects("drain.timeout = 9999999999999999999h", "expected a duration like");
}

static void test_sizes(void **state)
{
	(void)state;
	static const struct {
		const char *text;
		int64_t bytes;
	} good[] = {
		{"4096", 4096}, {"4k", 4096}, {"64K", 65536}, {"16M", 16 << 20}, {"16m", 16 << 20},
		{"1G", 1 << 30}, {"1g", 1 << 30}, {"1024M", 1 << 30},
	};
	char line[64];
	for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
		snprintf(line, sizeof line, "spool.max = %s", good[i].text);
		struct config *cfg = with(line);
		assert_int_equal(config_size(cfg, "spool.max"), good[i].bytes);
		config_free(cfg);
	}
	rejects("spool.max = 4095", "t.conf:2: spool.max: expected a size in 4k..1G, got '4095'");
	rejects("spool.max = 2G", "expected a size in 4k..1G, got '2G'");
	rejects("spool.max = 1T", "got '1T'");
	rejects("spool.max = 16MB", "expected a size like 4096, 64k, 16M or 1G; got '16MB'");
	rejects("spool.max = 1.5M", "got '1.5M'");
	rejects("spool.max = -4k", "got '-4k'");
	rejects("spool.max = 99999999999T", "expected a size like");
}

static void test_enums_urls_paths_strings(void **state)
{
	(void)state;
	rejects("log.level = verbose", "t.conf:2: log.level: expected one of debug, info, warn, "
		"error; got 'verbose'");
	rejects("log.level = INFO", "got 'INFO'");

	static const char *const good_urls[] = {
		"http://c", "https://coord.example:8443/api/v1?x=1", "http://10.0.0.1:80",
		"http://[::1]:8080/", "https://[fe80::1]", "unix:///var/run/docker.sock",
		"http://my-host_1.internal",
	};
	char line[256];
	for (size_t i = 0; i < sizeof good_urls / sizeof good_urls[0]; i++) {
		struct err e;
		snprintf(line, sizeof line, "coordinator.url = \"%s\"\n", good_urls[i]);
		struct config *cfg = load(line, &e);
		if (!cfg)
			fail_msg("rejected %s: %s", good_urls[i], e.msg);
		assert_string_equal(config_str(cfg, "coordinator.url"), good_urls[i]);
		config_free(cfg);
	}
	static const struct {
		const char *url, *why;
	} bad_urls[] = {
		{"ftp://c", "expected an http://, https:// or unix:// URL"},
		{"coord:80", "expected an http://, https:// or unix:// URL"},
		{"HTTP://c", "expected an http://"},
		{"http://", "URL has no host"},
		{"http:///path", "URL has no host"},
		{"http://:80", "URL has no host"},
		{"https://user:pw@c", "credentials in a URL are refused"},
		{"http://c:0", "bad port"},
		{"http://c:65536", "bad port"},
		{"http://c:", "bad port"},
		{"http://c:8x", "bad port"},
		{"http://c/a b", "space or control character"},
		{"http://c d/", "bad character in the URL's host"},
		{"http://[::1", "unclosed '['"},
		{"http://[zz]/", "bad IPv6"},
		{"http://[::1]x/", "unexpected text after ']'"},
		{"unix://run/x.sock", "absolute socket path"},
		{"unix://", "absolute socket path"},
		{"unix:///", "absolute socket path"},
	};
	for (size_t i = 0; i < sizeof bad_urls / sizeof bad_urls[0]; i++) {
		snprintf(line, sizeof line, "coordinator.url = \"%s\"\n", bad_urls[i].url);
		fails(line, bad_urls[i].why);
	}
	/* The URL itself stays out of the message (it may hold a token). */
	fails("coordinator.url = \"https://c/?token=abcdefgh&x=1 \"\n",
	      "t.conf:1: coordinator.url: space or control character in the URL");

	rejects("state.dir = \"\"", "t.conf:2: state.dir: empty path");
	struct config *cfg = with("agent.name = \"\"");
	assert_string_equal(config_str(cfg, "agent.name"), "");
	assert_true(config_has(cfg, "agent.name"));
	config_free(cfg);
	rejects("agent.name = 12345678901234567", "t.conf:2: agent.name: value of 17 bytes, "
		"longer than 16");
	rejects("agent.bootstrap_token = \"\"", "t.conf:2: agent.bootstrap_token: empty secret");
}

static void test_syntax(void **state)
{
	(void)state;
	struct err e;
	const char *text =
		"\xef\xbb\xbf# BOM, comments and blank lines\n"
		"\n"
		"   \t  \n"
		"   # indented comment\n"
		"coordinator.url=http://c#no space needed before a comment\r\n"
		"\tproxy.bind\t=\t\"a # not a comment\"   # a comment\n"
		"agent.name = \"q\\\"b\\\\s\\n\\tx\"\n"
		"state.dir = /a=b\n"
		"log.level = warn   \n";
	struct config *cfg = load(text, &e);
	if (!cfg)
		fail_msg("%s", e.msg);
	assert_string_equal(config_str(cfg, "coordinator.url"), "http://c");
	assert_string_equal(config_source(cfg, "coordinator.url"), "file:5");
	assert_string_equal(config_str(cfg, "proxy.bind"), "a # not a comment");
	assert_string_equal(config_str(cfg, "agent.name"), "q\"b\\s\n\tx");
	assert_string_equal(config_str(cfg, "state.dir"), "/a=b");
	assert_string_equal(config_str(cfg, "log.level"), "warn");
	config_free(cfg);

	/* UTF-8 in a quoted value; a file without a final newline. */
	cfg = load(URL "proxy.bind = \"caf\xc3\xa9\"", &e);
	assert_non_null(cfg);
	assert_string_equal(config_str(cfg, "proxy.bind"), "caf\xc3\xa9");
	config_free(cfg);

	rejects("proxy.bind = \"abc", "t.conf:2: proxy.bind: unterminated quoted value");
	rejects("proxy.bind = \"abc\\", "t.conf:2: proxy.bind: unterminated quoted value");
	rejects("proxy.bind = \"a\\qb\"", "t.conf:2: proxy.bind: unknown escape");
	rejects("proxy.bind = \"a\" b", "t.conf:2: proxy.bind: unexpected text after the closing "
		"quote");
	rejects("proxy.bind = a b", "t.conf:2: proxy.bind: space in a bare value (quote the value)");
	rejects("proxy.bind = a\"b", "t.conf:2: proxy.bind: '\"' inside a bare value");
	rejects("proxy.bind =", "t.conf:2: proxy.bind: missing value (write \"\" for an empty "
		"string)");
	rejects("proxy.bind =   # nothing", "t.conf:2: proxy.bind: missing value");
	rejects("proxy.bind \"x\"", "t.conf:2: expected 'key = value'");
	rejects("proxy.bind", "t.conf:2: expected 'key = value'");
	rejects("= x", "t.conf:2: missing key before '='");
	rejects("Proxy.Bind = x", "t.conf:2: invalid key 'Proxy.Bind' (keys are lowercase dotted "
		"names like log.level)");
	rejects("proxy..bind = x", "invalid key 'proxy..bind'");
	rejects("proxy.bind. = x", "invalid key");
	rejects("[proxy]", "t.conf:2: expected 'key = value'");
	rejects("proxy.bind = \"a\x01" "b\"", "t.conf:2: proxy.bind: control character in quoted "
		"value");
	rejects("proxy.bind = a\rb", "t.conf:2: proxy.bind: control character in value");
	rejects("proxy.bind = caf\xe9", "t.conf:2: invalid UTF-8 at column 17");
	rejects("proxy.bind = \"\xed\xa0\x80\"", "t.conf:2: invalid UTF-8 at column 15");
	rejects("proxy.bind = \"\xc0\xaf\"", "t.conf:2: invalid UTF-8");

	/* A NUL byte, which strlen would hide. */
	const char nul[] = URL "proxy.bind = a\0b\n";
	cfg = config_load_buffer(schema, N, nul, sizeof nul - 1, "t.conf", NULL, &e);
	assert_null(cfg);
	assert_string_equal(e.msg, "t.conf:2: NUL byte");
}

static void test_unknown_and_duplicate_keys(void **state)
{
	(void)state;
	rejects("proxy.bnd = x", "t.conf:2: unknown key 'proxy.bnd' (did you mean proxy.bind?)");
	rejects("colour = red", "t.conf:2: unknown key 'colour'");
	struct err e;
	struct config *cfg = load(URL "colour = red\n", &e);
	assert_null(cfg);
	assert_string_equal(e.msg, "t.conf:2: unknown key 'colour'");
	fails(URL "proxy.bind = a\n\n# x\nproxy.bind = b\n",
	      "t.conf:5: proxy.bind given twice (first on line 2)");
	/* Twice is an error even when both say the same, and when the first was bad. */
	fails(URL "log.json = yes\nlog.json = yes\n", "t.conf:3: log.json given twice (first on "
	      "line 2)");
	fails(URL "log.json = maybe\nlog.json = yes\n", "t.conf:3: log.json given twice");
}

static void test_line_and_file_caps(void **state)
{
	(void)state;
	struct err e;
	/* A line of exactly CONFIG_LINE_MAX bytes is fine. */
	char *text = malloc(CONFIG_LINE_MAX + 200);
	assert_non_null(text);
	const char *head = URL "agent.name = \"";
	size_t hl = strlen(head);
	memcpy(text, head, hl);
	size_t line_start = strlen(URL);
	size_t quote_end = line_start + CONFIG_LINE_MAX - 1;
	memset(text + hl, 'x', quote_end - hl);
	text[quote_end] = '"';
	text[quote_end + 1] = '\n';
	text[quote_end + 2] = '\0';
	struct config_key big = {.name = "agent.name", .type = CONFIG_STRING};
	struct config_key two[] = {schema[0], big};
	struct config *cfg = config_load_buffer(two, 2, text, strlen(text), "t.conf", NULL, &e);
	if (!cfg)
		fail_msg("%s", e.msg);
	assert_int_equal(strlen(config_str(cfg, "agent.name")), CONFIG_LINE_MAX - 15);
	config_free(cfg);
	/* One byte more is not, and parsing goes on after it. */
	text[quote_end] = 'x';
	text[quote_end + 1] = '"';
	text[quote_end + 2] = '\n';
	strcpy(text + quote_end + 3, "colour = red\n");
	cfg = config_load_buffer(two, 2, text, strlen(text), "t.conf", NULL, &e);
	assert_null(cfg);
	assert_string_equal(e.msg, "t.conf:2: line longer than 4096 bytes\n"
			    "t.conf:3: unknown key 'colour'");
	free(text);

	size_t big_len = CONFIG_FILE_MAX + 1;
	char *huge = malloc(big_len);
	assert_non_null(huge);
	memset(huge, '\n', big_len);
	cfg = config_load_buffer(schema, N, huge, big_len, "big.conf", NULL, &e);
	assert_null(cfg);
	assert_string_equal(e.msg, "big.conf: 1048577 bytes, more than the limit of 1048576");
	char *path = write_temp(huge, big_len);
	cfg = config_load(schema, N, path, NULL, &e);
	assert_null(cfg);
	assert_non_null(strstr(e.msg, "larger than 1048576 bytes"));
	unlink(path);
	free(path);
	free(huge);
}

static void test_files(void **state)
{
	(void)state;
	struct err e;
	const char *text = URL "proxy.max_conns = 7\nnope = 1\n";
	char *path = write_temp(text, strlen(text));
	struct config *cfg = config_load(schema, N, path, PREFIX, &e);
	assert_null(cfg);
	char want[512];
	snprintf(want, sizeof want, "%s:3: unknown key 'nope'", path);
	assert_string_equal(e.msg, want);
	unlink(path);
	free(path);

	text = URL "proxy.max_conns = 7\n";
	path = write_temp(text, strlen(text));
	cfg = config_load(schema, N, path, PREFIX, &e);
	assert_non_null(cfg);
	assert_int_equal(config_int(cfg, "proxy.max_conns"), 7);
	assert_string_equal(config_source(cfg, "proxy.max_conns"), "file:2");
	config_free(cfg);
	unlink(path);

	/* A missing file is one error, not a cascade of missing keys. */
	cfg = config_load(schema, N, path, PREFIX, &e);
	assert_null(cfg);
	snprintf(want, sizeof want, "%s: cannot open: No such file or directory", path);
	assert_string_equal(e.msg, want);
	free(path);
	cfg = config_load(schema, N, "/tmp", PREFIX, &e);
	assert_null(cfg);
	assert_string_equal(e.msg, "/tmp: is a directory");
}

static void test_env_overrides(void **state)
{
	(void)state;
	struct err e;
	setenv(PREFIX "PROXY_MAX_CONNS", "77", 1);
	setenv(PREFIX "LOG_LEVEL", "error", 1);
	setenv(PREFIX "AGENT_NAME", "", 1);
	setenv(PREFIX "PROXY_BIND", "has \"quotes\" # and \\ raw", 1);
	struct config *cfg = load(URL "proxy.max_conns = 10\nlog.level = debug\n", &e);
	assert_non_null(cfg);
	assert_int_equal(config_int(cfg, "proxy.max_conns"), 77);
	assert_string_equal(config_source(cfg, "proxy.max_conns"), "env");
	assert_string_equal(config_str(cfg, "log.level"), "error");
	assert_string_equal(config_str(cfg, "agent.name"), "");
	assert_string_equal(config_source(cfg, "agent.name"), "env");
	assert_string_equal(config_str(cfg, "proxy.bind"), "has \"quotes\" # and \\ raw");
	assert_string_equal(config_source(cfg, "coordinator.url"), "file:1");
	config_free(cfg);

	/* Another prefix does not see them. */
	cfg = config_load_buffer(schema, N, URL, strlen(URL), "t.conf", "SLIPWAY_OTHER_", &e);
	assert_non_null(cfg);
	assert_int_equal(config_int(cfg, "proxy.max_conns"), 1024);
	config_free(cfg);

	setenv(PREFIX "PROXY_MAX_CONNS", "0", 1);
	fails(URL, "env SLIPWAY_TCFG_PROXY_MAX_CONNS: expected an integer in 1..65535, got 0");
	setenv(PREFIX "PROXY_MAX_CONNS", "12", 1);
	setenv(PREFIX "LOG_JSON", "sometimes", 1);
	fails(URL, "env SLIPWAY_TCFG_LOG_JSON: expected true/false");
	unsetenv(PREFIX "LOG_JSON");
	setenv(PREFIX "AGENT_NAME", "a\x01", 1);
	fails(URL, "env SLIPWAY_TCFG_AGENT_NAME: control character in value");
	setenv(PREFIX "AGENT_NAME", "caf\xe9", 1);
	fails(URL, "env SLIPWAY_TCFG_AGENT_NAME: invalid UTF-8 in value");
	char *long_value = malloc(CONFIG_LINE_MAX + 2);
	memset(long_value, 'a', CONFIG_LINE_MAX + 1);
	long_value[CONFIG_LINE_MAX + 1] = '\0';
	setenv(PREFIX "PROXY_BIND", long_value, 1);
	free(long_value);
	fails(URL, "env SLIPWAY_TCFG_PROXY_BIND: value longer than 4096 bytes");
	unsetenv(PREFIX "PROXY_BIND");
	unsetenv(PREFIX "AGENT_NAME");

	/* A bad file value stays an error even when env overrides it. */
	fails(URL "proxy.max_conns = lots\n", "t.conf:2: proxy.max_conns: expected an integer");
}

struct sink {
	char all[LOG_LINE_MAX];
	int count;
};

static void sink_fn(enum log_level level, const char *line, void *arg)
{
	(void)level;
	struct sink *s = arg;
	size_t used = strlen(s->all);
	snprintf(s->all + used, sizeof s->all - used, "%s\n", line);
	s->count++;
}

static void test_env_warnings(void **state)
{
	(void)state;
	setenv(PREFIX "COORDINATOR_URL", "http://c", 1);
	setenv(PREFIX "PROXY_BIDN", "x", 1);
	setenv(PREFIX "PROXY_BIND_FILE", "/dev/null", 1);
	struct err e;
	struct sink s = {{0}, 0};
	log_set_sink(sink_fn, &s);
	struct config *cfg = config_load(schema, N, NULL, PREFIX, &e);
	log_set_sink(NULL, NULL);
	assert_non_null(cfg); /* warnings do not stop a daemon, they are logged */
	config_free(cfg);
	assert_int_equal(s.count, 2);
	assert_non_null(strstr(s.all, "warn config.warning env 'SLIPWAY_TCFG_PROXY_BIDN': "
			       "ignored: no such configuration key"));
	assert_non_null(strstr(s.all, "proxy.bind is not a secret"));

	char *out = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&out, &len);
	assert_int_equal(config_check(schema, N, NULL, PREFIX, f), 0);
	fclose(f);
	assert_non_null(strstr(out, "warning: env 'SLIPWAY_TCFG_PROXY_BIDN': ignored: no such "
			       "configuration key\n"));
	assert_non_null(strstr(out, "warning: env 'SLIPWAY_TCFG_PROXY_BIND_FILE': ignored: "
			       "proxy.bind is not a secret"));
	assert_non_null(strstr(out, "coordinator.url"));
	free(out);
}

static void test_secret_files(void **state)
{
	(void)state;
	struct err e;
	char *path = write_temp("s3cr3t-from-file\n", 17);
	setenv(PREFIX "AGENT_BOOTSTRAP_TOKEN_FILE", path, 1);
	struct config *cfg = load(URL, &e);
	if (!cfg)
		fail_msg("%s", e.msg);
	assert_string_equal(config_str(cfg, "agent.bootstrap_token"), "s3cr3t-from-file");
	assert_string_equal(config_source(cfg, "agent.bootstrap_token"), "env");

	/* Registered for redaction. */
	struct sink s = {{0}, 0};
	log_set_sink(sink_fn, &s);
	log_info("test.secret", "token=%s", config_str(cfg, "agent.bootstrap_token"));
	log_set_sink(NULL, NULL);
	assert_non_null(strstr(s.all, "token=[redacted]"));
	assert_null(strstr(s.all, "s3cr3t"));

	/* The dump masks it. */
	char *dump = capture(config_dump, cfg);
	assert_non_null(strstr(dump, "agent.bootstrap_token = [secret]  # env\n"));
	assert_null(strstr(dump, "s3cr3t"));
	free(dump);
	config_free(cfg);
	unlink(path);
	free(path);

	/* CRLF and multi-line content (a PEM key) keep their inner newlines. */
	path = write_temp("line1\nline2\r\n", 13);
	setenv(PREFIX "AGENT_BOOTSTRAP_TOKEN_FILE", path, 1);
	cfg = load(URL, &e);
	assert_non_null(cfg);
	assert_string_equal(config_str(cfg, "agent.bootstrap_token"), "line1\nline2");
	config_free(cfg);
	unlink(path);
	free(path);

	/* Both the value and the file: ambiguous. */
	setenv(PREFIX "AGENT_BOOTSTRAP_TOKEN", "direct-value", 1);
	fails(URL, "env SLIPWAY_TCFG_AGENT_BOOTSTRAP_TOKEN: both SLIPWAY_TCFG_AGENT_BOOTSTRAP_TOKEN "
	      "and SLIPWAY_TCFG_AGENT_BOOTSTRAP_TOKEN_FILE are set; use one");
	unsetenv(PREFIX "AGENT_BOOTSTRAP_TOKEN_FILE");
	cfg = load(URL, &e);
	assert_non_null(cfg);
	assert_string_equal(config_str(cfg, "agent.bootstrap_token"), "direct-value");
	config_free(cfg);
	unsetenv(PREFIX "AGENT_BOOTSTRAP_TOKEN");

	setenv(PREFIX "AGENT_BOOTSTRAP_TOKEN_FILE", "/nonexistent/token", 1);
	fails(URL, "env SLIPWAY_TCFG_AGENT_BOOTSTRAP_TOKEN_FILE: /nonexistent/token: cannot open: "
	      "No such file or directory");

	path = write_temp("\n", 1);
	setenv(PREFIX "AGENT_BOOTSTRAP_TOKEN_FILE", path, 1);
	fails(URL, "env SLIPWAY_TCFG_AGENT_BOOTSTRAP_TOKEN_FILE: empty secret");
	unlink(path);
	free(path);

	path = write_temp("ab\0cd", 5);
	setenv(PREFIX "AGENT_BOOTSTRAP_TOKEN_FILE", path, 1);
	fails(URL, "NUL byte in the file");
	unlink(path);
	free(path);

	size_t big = CONFIG_SECRET_FILE_MAX + 1;
	char *content = malloc(big);
	memset(content, 'k', big);
	path = write_temp(content, big);
	setenv(PREFIX "AGENT_BOOTSTRAP_TOKEN_FILE", path, 1);
	fails(URL, "larger than 65536 bytes");
	unlink(path);
	free(path);
	/* Exactly the cap (newline included) is fine. */
	big = CONFIG_SECRET_FILE_MAX;
	content[big - 1] = '\n';
	path = write_temp(content, big);
	setenv(PREFIX "AGENT_BOOTSTRAP_TOKEN_FILE", path, 1);
	cfg = load(URL, &e);
	if (!cfg)
		fail_msg("%s", e.msg);
	assert_int_equal(strlen(config_str(cfg, "agent.bootstrap_token")), big - 1);
	config_free(cfg);
	unlink(path);
	free(path);
	free(content);
}

static const struct config_key secret_schema[] = {
	{.name = "token", .type = CONFIG_SECRET, .required = true, .help = "API token."},
	{.name = "url", .type = CONFIG_URL, .required = true},
	{.name = "level", .type = CONFIG_ENUM, .choices = levels},
};

static void test_required(void **state)
{
	(void)state;
	struct err e;
	struct config *cfg = config_load_buffer(secret_schema, 3, "", 0, "r.conf", PREFIX, &e);
	assert_null(cfg);
	assert_string_equal(e.msg,
			    "missing required key token (set it in the file or with env "
			    "SLIPWAY_TCFG_TOKEN or its _FILE variant)\n"
			    "missing required key url (set it in the file or with env "
			    "SLIPWAY_TCFG_URL)");
	cfg = config_load(secret_schema, 3, NULL, NULL, &e);
	assert_null(cfg);
	assert_string_equal(e.msg, "missing required key token\nmissing required key url");

	setenv(PREFIX "TOKEN", "tok-abcdef", 1);
	cfg = config_load_buffer(secret_schema, 3, "url = http://u\n", 15, "r.conf", PREFIX, &e);
	assert_non_null(cfg);
	assert_string_equal(config_str(cfg, "token"), "tok-abcdef");
	assert_null(config_str(cfg, "level")); /* optional enum without default */
	config_free(cfg);

	/* A bad value is reported as bad, not also as missing. */
	cfg = config_load_buffer(secret_schema, 3, "url = ftp://u\n", 14, "r.conf", PREFIX, &e);
	assert_null(cfg);
	assert_string_equal(e.msg, "r.conf:1: url: expected an http://, https:// or unix:// URL");
}

static void test_all_errors_together(void **state)
{
	(void)state;
	struct err e;
	setenv(PREFIX "LOG_JSON", "perhaps", 1);
	const char *text =
		"proxy.max_conns = 0\n"
		"colour = blue\n"
		"drain.timeout = forever\n"
		"proxy.max_conns = 5\n";
	struct config *cfg = load(text, &e);
	assert_null(cfg);
	assert_string_equal(e.msg,
			    "t.conf:1: proxy.max_conns: expected an integer in 1..65535, got 0\n"
			    "t.conf:2: unknown key 'colour'\n"
			    "t.conf:3: drain.timeout: expected a duration like 500ms, 30s, 5m or "
			    "1h; got 'forever'\n"
			    "t.conf:4: proxy.max_conns given twice (first on line 1)\n"
			    "env SLIPWAY_TCFG_LOG_JSON: expected true/false, yes/no, on/off or 1/0; "
			    "got 'perhaps'\n"
			    "missing required key coordinator.url (set it in the file or with env "
			    "SLIPWAY_TCFG_COORDINATOR_URL)");
	unsetenv(PREFIX "LOG_JSON");

	/* Many errors: struct err gets what fits, config_check lists CONFIG_ERRORS_MAX. */
	struct buf b;
	buf_init(&b, 0);
	for (int i = 0; i < 150; i++)
		buf_printf(&b, "bad.key%d = 1\n", i);
	cfg = load(b.data, &e);
	assert_null(cfg);
	assert_true(strlen(e.msg) < ERR_MSG_MAX);
	assert_non_null(strstr(e.msg, "t.conf:1: unknown key 'bad.key0'\n"));
	const char *more = strstr(e.msg, "\n... and ");
	assert_non_null(more);
	int shown_lines = 1;
	for (const char *p = e.msg; p < more; p++)
		shown_lines += *p == '\n';
	char tail[64];
	snprintf(tail, sizeof tail, "\n... and %d more", 151 - shown_lines);
	assert_string_equal(more, tail);

	char *path = write_temp(b.data, b.len);
	buf_free(&b);
	char *out = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&out, &len);
	assert_int_equal(config_check(schema, N, path, PREFIX, f), -1);
	fclose(f);
	int lines = 0;
	for (char *p = out; *p; p++)
		lines += *p == '\n';
	assert_int_equal(lines, CONFIG_ERRORS_MAX + 2);
	assert_non_null(strstr(out, ":100: unknown key 'bad.key99'\n... and 51 more\n"
			       "151 errors in the configuration\n"));
	free(out);
	unlink(path);
	free(path);
}

static void test_dump_and_usage(void **state)
{
	(void)state;
	struct err e;
	setenv(PREFIX "LOG_LEVEL", "warn", 1);
	struct config *cfg = load(URL "proxy.bind = \"a\\\"b\"\n# x\n"
				  "agent.bootstrap_token = supersecretvalue\n", &e);
	assert_non_null(cfg);
	char *dump = capture(config_dump, cfg);
	assert_string_equal(dump,
			    "coordinator.url       = \"http://coord\"  # file:1\n"
			    "proxy.bind            = \"a\\\"b\"  # file:2\n"
			    "proxy.max_conns       = 1024  # default\n"
			    "proxy.offset          = -5  # default\n"
			    "log.json              = false  # default\n"
			    "log.level             = \"warn\"  # env\n"
			    "drain.timeout         = 30s  # default\n"
			    "spool.max             = 16M  # default\n"
			    "state.dir             = \"/var/lib/slipway\"  # default\n"
			    "agent.bootstrap_token = [secret]  # file:4\n"
			    "agent.name            = (unset)\n");
	free(dump);
	config_free(cfg);

	/* config_check prints the same dump on success. */
	char *out = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&out, &len);
	setenv(PREFIX "COORDINATOR_URL", "http://c", 1);
	assert_int_equal(config_check(schema, N, NULL, PREFIX, f), 0);
	fclose(f);
	assert_non_null(strstr(out, "coordinator.url       = \"http://c\"  # env\n"));
	free(out);

	out = NULL;
	f = open_memstream(&out, &len);
	config_usage(schema, N, f);
	fclose(f);
	assert_non_null(strstr(out, "coordinator.url (url, required)\n"
			       "    Base URL of the coordinator.\n"));
	assert_non_null(strstr(out, "proxy.max_conns (int 1..65535, default 1024)\n"
			       "    Connections the proxy accepts at once.\n"));
	assert_non_null(strstr(out, "log.level (enum: debug|info|warn|error, default info)\n"));
	assert_non_null(strstr(out, "drain.timeout (duration 100ms..1h, default 30s)\n"));
	assert_non_null(strstr(out, "spool.max (size 4k..1G, default 16M)\n"));
	assert_non_null(strstr(out, "agent.bootstrap_token (secret, optional)\n"));
	assert_non_null(strstr(out, "agent.name (string, at most 16 bytes, optional)\n"));
	free(out);
}

/* Runs fn in a child and expects it to abort (a programming error). */
static void expect_abort(void (*fn)(void))
{
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		if (!freopen("/dev/null", "w", stderr))
			_exit(1);
		fn();
		_exit(0);
	}
	int status;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFSIGNALED(status));
	assert_int_equal(WTERMSIG(status), SIGABRT);
}

static struct config *good_config(void)
{
	return config_load_buffer(schema, N, URL, strlen(URL), "t.conf", NULL, NULL);
}

static void wrong_type(void)
{
	config_int(good_config(), "proxy.bind");
}

static void unknown_key(void)
{
	config_str(good_config(), "proxy.nope");
}

static void bad_default(void)
{
	static const struct config_key bad[] = {
		{.name = "a.b", .type = CONFIG_INT, .default_value = "ten"},
	};
	config_load_buffer(bad, 1, "", 0, "x", NULL, NULL);
}

static void env_clash(void)
{
	static const struct config_key bad[] = {
		{.name = "a.b_c", .type = CONFIG_INT},
		{.name = "a_b.c", .type = CONFIG_INT},
	};
	config_load_buffer(bad, 2, "", 0, "x", NULL, NULL);
}

static void file_clash(void)
{
	static const struct config_key bad[] = {
		{.name = "a.token_file", .type = CONFIG_PATH},
		{.name = "a.token", .type = CONFIG_SECRET},
	};
	config_load_buffer(bad, 2, "", 0, "x", NULL, NULL);
}

static void bad_name(void)
{
	static const struct config_key bad[] = {{.name = "A.b", .type = CONFIG_INT}};
	config_load_buffer(bad, 1, "", 0, "x", NULL, NULL);
}

static void test_programming_errors(void **state)
{
	(void)state;
	expect_abort(wrong_type);
	expect_abort(unknown_key);
	expect_abort(bad_default);
	expect_abort(env_clash);
	expect_abort(file_clash);
	expect_abort(bad_name);
	/* And a correct call in the same shape does not abort. */
	struct config *cfg = good_config();
	assert_non_null(cfg);
	assert_int_equal(config_int(cfg, "proxy.max_conns"), 1024);
	config_free(cfg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_defaults, clean_env),
		cmocka_unit_test_teardown(test_every_type, clean_env),
		cmocka_unit_test_teardown(test_bools, clean_env),
		cmocka_unit_test_teardown(test_ints, clean_env),
		cmocka_unit_test_teardown(test_durations, clean_env),
		cmocka_unit_test_teardown(test_sizes, clean_env),
		cmocka_unit_test_teardown(test_enums_urls_paths_strings, clean_env),
		cmocka_unit_test_teardown(test_syntax, clean_env),
		cmocka_unit_test_teardown(test_unknown_and_duplicate_keys, clean_env),
		cmocka_unit_test_teardown(test_line_and_file_caps, clean_env),
		cmocka_unit_test_teardown(test_files, clean_env),
		cmocka_unit_test_teardown(test_env_overrides, clean_env),
		cmocka_unit_test_teardown(test_env_warnings, clean_env),
		cmocka_unit_test_teardown(test_secret_files, clean_env),
		cmocka_unit_test_teardown(test_required, clean_env),
		cmocka_unit_test_teardown(test_all_errors_together, clean_env),
		cmocka_unit_test_teardown(test_dump_and_usage, clean_env),
		cmocka_unit_test_teardown(test_programming_errors, clean_env),
	};
	clean_env(NULL);
	return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
