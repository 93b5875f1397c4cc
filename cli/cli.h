/*
 * cli: what every slipway command shares: the exit codes, parsing a
 * command's arguments against its spec (with --help), connecting to the
 * coordinator on first use, printing errors, JSON and single fields.
 *
 * Exit codes (docs/cli.md): 0 success; 1 failure (the coordinator refused,
 * could not be reached, a build or rollout failed); 2 usage (bad arguments,
 * nothing to connect to); 130 interrupted (SIGINT/SIGTERM).
 *
 * Output: results on stdout (tables, `--json`, logs), errors and progress
 * notes on stderr as "slipway: error: ..." so scripts can read stdout as data.
 *
 * Ownership: struct cli owns its config and client; cli_close frees them.
 * Strings from cli_str point into the cJSON tree. Main thread only; calls
 * that talk to the coordinator block.
 */
#ifndef SLIPWAY_CLI_CLI_H
#define SLIPWAY_CLI_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "args.h"
#include "cliconf.h"
#include "client.h"
#include "err.h"

#define CLI_VERSION "0.1.0"

enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2, CLI_INTERRUPTED = 130 };

struct cli {
	struct cliconf conf;
	bool conf_loaded;
	struct client client;
	bool connected;
	FILE *out;           /* stdout */
	FILE *err;           /* stderr */
};

/* What a command accepts, for parsing and --help. */
struct cli_cmd {
	const char *name;         /* "apps create" (for messages) */
	const char *synopsis;     /* "apps create <app> [--fleet F]" */
	const char *description;  /* a paragraph for --help */
	const struct args_opt *opts;
	size_t nopts;
	int min_pos, max_pos;     /* positional arguments allowed; max -1: any */
};

void cli_init(struct cli *cli);
void cli_close(struct cli *cli);

/* Parses argv against spec. true: go on. false: stop and exit with *rc
 * (0 after --help, 2 after a usage error, both already printed). */
bool cli_parse(struct cli *cli, const struct cli_cmd *spec, int argc, char **argv,
	       struct args *a, int *rc);

/* Loads the config (once). Returns CLI_OK or the exit code (printed). */
int cli_load_config(struct cli *cli);

/* Loads the config and opens the client (once). CLI_OK, or the exit code
 * after printing why (no host / no key: 2; bad config: 1). */
int cli_connect(struct cli *cli);

/* Prints "slipway: error: MSG" and returns CLI_FAIL, or CLI_INTERRUPTED when
 * a signal arrived. */
int cli_fail(struct cli *cli, const struct err *err);
int cli_failf(struct cli *cli, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prints "slipway CMD: MSG" and a pointer to --help; returns CLI_USAGE. */
int cli_usage_error(struct cli *cli, const struct cli_cmd *spec, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Prints "slipway: note" lines on stderr (progress for people). */
void cli_note(struct cli *cli, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Pretty-prints a JSON document on stdout; CLI_OK or CLI_FAIL. */
int cli_print_json(struct cli *cli, const cJSON *doc);

/* Option rows many commands share. */
#define CLI_OPT_JSON {"json", 0, ARGS_FLAG, NULL, "print the coordinator's JSON answer"}
#define CLI_OPT_APP {"app", 'a', ARGS_VALUE, "APP", "the app (default: $SLIPWAY_APP)"}
#define CLI_OPT_LIMIT {"limit", 'n', ARGS_VALUE, "N", "how many, newest first (1-1000, default 50)"}
#define CLI_OPT_TIMEOUT \
	{"timeout", 0, ARGS_VALUE, "DURATION", "give up waiting after this long (default 30m)"}

/* GET path for something to show. Returns -1 with *doc to print (the caller
 * deletes it), or the exit code when there is nothing left to do: the
 * request failed (printed), or --json was given and the answer is printed. */
int cli_get_shown(struct cli *cli, const struct args *a, const char *path, cJSON **doc);

/* For `NAME [<app>] [--app APP] [--limit N]` listings: checks the arguments,
 * connects and writes /v1/apps/<app>/<what>?limit=N into path. The app, or
 * NULL after printing why (*rc the exit code). */
const char *cli_app_listing(struct cli *cli, const struct cli_cmd *spec, const struct args *a,
			    const char *what, char *path, size_t cap, int *rc);

struct table;
/* Prints t on stdout and frees it (NULL: out of memory); CLI_OK or CLI_FAIL. */
int cli_print_table(struct cli *cli, struct table *t);

/* The app: --app (or the given positional), else SLIPWAY_APP; checked
 * against the name rule. NULL after printing a usage error (*rc = 2). */
const char *cli_app(struct cli *cli, const struct cli_cmd *spec, const char *given, int *rc);

/* For commands whose first argument is the app: cli_parse, then cli_app on
 * it. The app, or NULL with *rc the exit code (0 after --help). */
const char *cli_parse_app(struct cli *cli, const struct cli_cmd *spec, int argc, char **argv,
			  struct args *a, int *rc);

/* 0 when name matches [a-z][a-z0-9-]{0,39}. */
int cli_name_check(const char *what, const char *name, struct err *err);

/* Getters tolerant of missing keys and nulls: NULL / 0. */
const char *cli_str(const cJSON *obj, const char *key);
int64_t cli_int(const cJSON *obj, const char *key);

/* "Label:" padded to width, then the value (cleaned; "-" when empty). */
void cli_field(struct cli *cli, int width, const char *label, const char *value);

/* Formats an API path: every "%s" in fmt takes the next argument
 * percent-encoded (a path segment or query value); nothing else is special.
 * -1 when the result does not fit in cap bytes. */
int cli_path(char *out, size_t cap, const char *fmt, ...);

/* Milliseconds since the epoch, now (common/clock.h). */
int64_t cli_now_ms(void);

#endif
