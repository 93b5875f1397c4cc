#include "commands_login.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "table.h"

static const struct args_opt login_opts[] = {
	{"host", 0, ARGS_VALUE, "URL", "the coordinator (https://coordinator.example:8700)"},
	{"api-key-file", 0, ARGS_VALUE, "FILE", "read the API key from FILE (else: prompt/stdin)"},
	{"ca-file", 0, ARGS_VALUE, "FILE", "CA certificate(s) for a coordinator with a private CA"},
};

static const struct cli_cmd login_cmd = {
	.name = "login",
	.synopsis = "login [--host URL] [--api-key-file FILE] [--ca-file FILE]",
	.description = "Checks the coordinator URL and API key (GET /v1/whoami) and saves them to "
		       "$XDG_CONFIG_HOME/slipway/config (~/.config/slipway/config), mode 0600. "
		       "The key is read from --api-key-file, SLIPWAY_API_KEY, a prompt that does "
		       "not echo, or stdin (`slipway login --host URL < key.txt`). "
		       "SLIPWAY_HOST and SLIPWAY_API_KEY still win over the saved values.",
	.opts = login_opts,
	.nopts = sizeof login_opts / sizeof login_opts[0],
	.min_pos = 0,
	.max_pos = 0,
};

static struct termios saved_tty;
static volatile sig_atomic_t tty_changed;

static void restore_tty(void)
{
	if (tty_changed) {
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved_tty);
		tty_changed = 0;
	}
}

static void on_prompt_signal(int sig)
{
	restore_tty();
	_exit(128 + sig);
}

/* One line from stdin, without its newline; echo off when asked and on a tty. */
static char *read_line(const char *prompt, int hidden)
{
	int tty = isatty(STDIN_FILENO);
	struct sigaction sa, old_int, old_term;
	if (tty) {
		fputs(prompt, stderr);
		fflush(stderr);
	}
	if (tty && hidden && tcgetattr(STDIN_FILENO, &saved_tty) == 0) {
		memset(&sa, 0, sizeof sa);
		sa.sa_handler = on_prompt_signal;
		sigemptyset(&sa.sa_mask);
		sigaction(SIGINT, &sa, &old_int);
		sigaction(SIGTERM, &sa, &old_term);
		struct termios t = saved_tty;
		t.c_lflag &= ~(tcflag_t)ECHO;
		t.c_lflag |= ECHONL;
		if (tcsetattr(STDIN_FILENO, TCSAFLUSH, &t) == 0)
			tty_changed = 1;
	}
	char *line = NULL;
	size_t cap = 0;
	ssize_t n = getline(&line, &cap, stdin);
	if (tty_changed) {
		restore_tty();
		sigaction(SIGINT, &old_int, NULL);
		sigaction(SIGTERM, &old_term, NULL);
	}
	if (n < 0) {
		free(line);
		return NULL;
	}
	line[strcspn(line, "\r\n")] = '\0';
	return line;
}

static void wipe(char *s)
{
	if (s) {
		memset(s, 0, strlen(s));
		free(s);
	}
}

int commands_login(struct cli *cli, int argc, char **argv)
{
	struct args a;
	int rc;
	if (!cli_parse(cli, &login_cmd, argc, argv, &a, &rc))
		return rc;
	if ((rc = cli_load_config(cli)) != CLI_OK)
		return rc;
	if (!cli->conf.path[0])
		return cli_failf(cli, "no place for the config file: set HOME or XDG_CONFIG_HOME");
	struct err err;
	char *host = NULL, *key = NULL, *typed = NULL;
	const char *host_in = args_get(&a, "host");
	if (!host_in)
		host_in = cli->conf.host;
	if (!host_in) {
		if (!isatty(STDIN_FILENO))
			return cli_usage_error(cli, &login_cmd, "give --host URL");
		typed = read_line("Coordinator URL: ", 0);
		host_in = typed;
	}
	host = host_in ? cliconf_host_normalize(host_in, &err) : NULL;
	free(typed);
	if (!host)
		return host_in ? cli_usage_error(cli, &login_cmd, "%s", err.msg)
			       : cli_failf(cli, "no coordinator URL given");
	if (args_get(&a, "api-key-file")) {
		key = cliconf_read_key_file(args_get(&a, "api-key-file"), &err);
	} else if (cli->conf.key_from && strcmp(cli->conf.key_from, "the config file") != 0) {
		key = strdup(cli->conf.api_key); /* SLIPWAY_API_KEY or SLIPWAY_API_KEY_FILE */
	} else {
		key = read_line("API key (not shown): ", 1);
		if (!key)
			err_set(&err, "no API key given");
		else if (cliconf_key_check(key, &err) < 0) {
			wipe(key);
			key = NULL;
		}
	}
	if (!key) {
		free(host);
		return cli_fail(cli, &err);
	}
	const char *ca = args_get(&a, "ca-file") ? args_get(&a, "ca-file") : cli->conf.ca_file;
	if (ca && access(ca, R_OK) < 0) {
		wipe(key);
		free(host);
		return cli_failf(cli, "CA file %s cannot be read", ca);
	}
	rc = client_init(&cli->client, host, key, ca, &err);
	if (rc == 0) {
		cli->connected = true;
		cli->client.key_from = args_get(&a, "api-key-file") ? "the key file" : NULL;
	}
	cJSON *who = NULL;
	if (rc == 0)
		rc = client_json(&cli->client, "GET", "/v1/whoami", NULL, &who, &err);
	if (rc == 0)
		rc = cliconf_save(cli->conf.path, host, key, ca, &err);
	wipe(key);
	if (rc < 0) {
		free(host);
		cJSON_Delete(who);
		return cli_fail(cli, &err);
	}
	char name[128], role[32], app[64];
	table_clean(cli_str(who, "name"), name, sizeof name);
	table_clean(cli_str(who, "role"), role, sizeof role);
	table_clean(cli_str(who, "app"), app, sizeof app);
	fprintf(cli->out, "Logged in to %s as %s (role %s%s%s). Saved to %s.\n", host, name, role,
		app[0] ? ", app " : "", app, cli->conf.path);
	if (getenv("SLIPWAY_HOST") || getenv("SLIPWAY_API_KEY"))
		cli_note(cli, "slipway: note: SLIPWAY_HOST / SLIPWAY_API_KEY are set and win over "
			      "the saved values");
	free(host);
	cJSON_Delete(who);
	return CLI_OK;
}
