#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "cliconf.h"

static char dir[256];

static int setup(void **state)
{
	(void)state;
	snprintf(dir, sizeof dir, "/tmp/slipway-cliconf-XXXXXX");
	assert_non_null(mkdtemp(dir));
	char home[300];
	snprintf(home, sizeof home, "%s/home", dir);
	mkdir(home, 0700);
	setenv("HOME", home, 1);
	unsetenv("XDG_CONFIG_HOME");
	static const char *const vars[] = {"SLIPWAY_HOST", "SLIPWAY_API_KEY",
					   "SLIPWAY_API_KEY_FILE", "SLIPWAY_CA_FILE", "SLIPWAY_APP"};
	for (size_t i = 0; i < 5; i++)
		unsetenv(vars[i]);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	char cmd[300];
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
	return 0;
}

static void write_file(const char *path, const char *text, mode_t mode)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	chmod(path, mode);
}

static void test_path(void **state)
{
	(void)state;
	char p[CLICONF_PATH_MAX], want[400];
	struct err err;
	assert_int_equal(cliconf_path(p, sizeof p, &err), 0);
	snprintf(want, sizeof want, "%s/home/.config/slipway/config", dir);
	assert_string_equal(p, want);
	setenv("XDG_CONFIG_HOME", "/xdg/conf", 1);
	assert_int_equal(cliconf_path(p, sizeof p, &err), 0);
	assert_string_equal(p, "/xdg/conf/slipway/config");
	/* A relative XDG_CONFIG_HOME is invalid by the spec: ignored. */
	setenv("XDG_CONFIG_HOME", "rel/conf", 1);
	assert_int_equal(cliconf_path(p, sizeof p, &err), 0);
	assert_string_equal(p, want);
	unsetenv("XDG_CONFIG_HOME");
	unsetenv("HOME");
	assert_int_equal(cliconf_path(p, sizeof p, &err), -1);
}

static void test_host_normalize(void **state)
{
	(void)state;
	struct err err;
	char *h = cliconf_host_normalize("https://coord.example:8700/", &err);
	assert_string_equal(h, "https://coord.example:8700");
	free(h);
	h = cliconf_host_normalize("HTTP://ops.example/slipway//", &err);
	assert_string_equal(h, "HTTP://ops.example/slipway");
	free(h);
	static const char *const bad[] = {"coord.example", "ftp://x", "https://", "https:///x",
					  "https://user:pw@x", "https://x/a b", "https://x/?q=1",
					  "https://x/#f", ""};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		assert_null(cliconf_host_normalize(bad[i], &err));
		assert_true(strlen(err.msg) > 0);
	}
}

static void test_key_check(void **state)
{
	(void)state;
	struct err err;
	assert_int_equal(cliconf_key_check("slw_0123abcd", &err), 0);
	assert_int_equal(cliconf_key_check("", &err), -1);
	assert_int_equal(cliconf_key_check("slw_a b", &err), -1);
	assert_int_equal(cliconf_key_check("slw_\x7f", &err), -1);
	char big[CLICONF_KEY_MAX + 2];
	memset(big, 'a', sizeof big - 1);
	big[sizeof big - 1] = '\0';
	assert_int_equal(cliconf_key_check(big, &err), -1);
}

/* login's file: 0600 in a 0700 directory; loads back; env wins per setting. */
static void test_save_load_env(void **state)
{
	(void)state;
	struct cliconf c;
	struct err err;
	char path[CLICONF_PATH_MAX];
	assert_int_equal(cliconf_path(path, sizeof path, &err), 0);
	assert_int_equal(cliconf_load(&c, NULL, &err), 0);
	assert_null(c.host);
	assert_null(c.api_key);
	cliconf_free(&c);

	assert_int_equal(cliconf_save(path, "https://c.example", "slw_k\"ey\\1", NULL, &err), 0);
	struct stat st;
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	char d[CLICONF_PATH_MAX];
	snprintf(d, sizeof d, "%s/home/.config/slipway", dir);
	assert_int_equal(stat(d, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0700);

	assert_int_equal(cliconf_load(&c, NULL, &err), 0);
	assert_string_equal(c.host, "https://c.example");
	assert_string_equal(c.api_key, "slw_k\"ey\\1");
	assert_string_equal(c.key_from, "the config file");
	assert_null(c.ca_file);
	cliconf_free(&c);

	/* Saving again replaces the file (and keeps it private). */
	assert_int_equal(cliconf_save(path, "https://d.example", "slw_2", "/etc/ca.pem", &err), 0);
	setenv("SLIPWAY_HOST", "http://127.0.0.1:9/", 1);
	setenv("SLIPWAY_APP", "web", 1);
	assert_int_equal(cliconf_load(&c, NULL, &err), 0);
	assert_string_equal(c.host, "http://127.0.0.1:9");
	assert_string_equal(c.host_from, "SLIPWAY_HOST");
	assert_string_equal(c.api_key, "slw_2");
	assert_string_equal(c.ca_file, "/etc/ca.pem");
	assert_string_equal(c.app, "web");
	cliconf_free(&c);

	setenv("SLIPWAY_API_KEY", "slw_env", 1);
	assert_int_equal(cliconf_load(&c, NULL, &err), 0);
	assert_string_equal(c.api_key, "slw_env");
	assert_string_equal(c.key_from, "SLIPWAY_API_KEY");
	cliconf_free(&c);

	/* A GitLab "File" variable: the key in a file, one newline stripped. */
	char kf[300];
	snprintf(kf, sizeof kf, "%s/key", dir);
	write_file(kf, "slw_fromfile\n", 0600);
	setenv("SLIPWAY_API_KEY_FILE", kf, 1);
	assert_int_equal(cliconf_load(&c, NULL, &err), -1);
	assert_non_null(strstr(err.msg, "both SLIPWAY_API_KEY and SLIPWAY_API_KEY_FILE"));
	unsetenv("SLIPWAY_API_KEY");
	assert_int_equal(cliconf_load(&c, NULL, &err), 0);
	assert_string_equal(c.api_key, "slw_fromfile");
	cliconf_free(&c);
	setenv("SLIPWAY_API_KEY_FILE", "/nonexistent/key", 1);
	assert_int_equal(cliconf_load(&c, NULL, &err), -1);
	assert_non_null(strstr(err.msg, "SLIPWAY_API_KEY_FILE: /nonexistent/key"));

	setenv("SLIPWAY_API_KEY_FILE", "", 1);
	setenv("SLIPWAY_HOST", "coord:8700", 1);
	assert_int_equal(cliconf_load(&c, NULL, &err), -1);
	assert_non_null(strstr(err.msg, "SLIPWAY_HOST: coordinator URL"));
	unsetenv("SLIPWAY_HOST");
	unsetenv("SLIPWAY_API_KEY_FILE");
	unsetenv("SLIPWAY_APP");
}

/* A malformed file names itself and its line; a loose mode gets a warning. */
static void test_bad_file_and_mode(void **state)
{
	(void)state;
	char path[CLICONF_PATH_MAX];
	struct err err;
	struct cliconf c;
	assert_int_equal(cliconf_path(path, sizeof path, &err), 0);
	assert_int_equal(cliconf_save(path, "https://c.example", "slw_1", NULL, &err), 0);
	write_file(path, "host = \"https://c.example\"\ncolour = red\n", 0600);
	assert_int_equal(cliconf_load(&c, NULL, &err), -1);
	assert_non_null(strstr(err.msg, "config:2"));
	write_file(path, "host = \"https://c.example\"\napi_key = \"slw_1\"\n", 0644);
	char *text = NULL;
	size_t len = 0;
	FILE *warn = open_memstream(&text, &len);
	assert_int_equal(cliconf_load(&c, warn, &err), 0);
	fclose(warn);
	assert_non_null(strstr(text, "can be read by other users"));
	free(text);
	cliconf_free(&c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_path, setup, teardown),
		cmocka_unit_test_setup_teardown(test_host_normalize, setup, teardown),
		cmocka_unit_test_setup_teardown(test_key_check, setup, teardown),
		cmocka_unit_test_setup_teardown(test_save_load_env, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_file_and_mode, setup, teardown),
	};
	return cmocka_run_group_tests_name("cliconf", tests, NULL, NULL);
}
