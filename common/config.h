/*
 * config: the daemons' configuration, from one file plus environment overrides,
 * checked against a schema each program declares.
 *
 * File format (UTF-8 text; at most CONFIG_FILE_MAX bytes; lines at most
 * CONFIG_LINE_MAX bytes, "\n" or "\r\n" endings; a leading BOM is skipped):
 *
 *   # comment: '#' starts a comment anywhere outside double quotes
 *   coordinator.url = https://coord.example:8443
 *   proxy.bind      = "0.0.0.0:80"        # quoted: escapes \" \\ \n \t
 *   log.level       = info
 *
 * One `key = value` per line; blank lines are ignored; no sections, no includes.
 * Keys are lowercase dotted names ([a-z][a-z0-9_]* joined by '.'). A value is
 * either a bare word (no spaces, quotes, '#' or control characters; quote
 * anything else) or a double-quoted string; `key =` with nothing is an error
 * (write "" for an empty string). A key given twice, an unknown key and a bad
 * value are errors naming file:line.
 *
 * Value types: STRING; INT (decimal, within min..max); BOOL (true/false, yes/no,
 * on/off, 1/0, any case); DURATION ("500ms", "30s", "5m", "1h"; a bare number
 * is seconds; stored as milliseconds); SIZE ("64k", "16M", "1G", "1T", binary
 * units, any case; a bare number is bytes); ENUM (one of `choices`, exact
 * case); URL (http://host[:port][/...], https://... or unix:///abs/path.sock;
 * credentials in a URL are refused: keep them in a SECRET key); PATH
 * (non-empty); SECRET (non-empty string, registered with log_redact_add and
 * shown as [secret] in dumps and never in error messages). STRING and SECRET
 * values may hold tabs and newlines; no value holds other control characters.
 *
 * Environment: every key can be set by env_prefix + the key uppercased with
 * dots as underscores (prefix "SLIPWAY_AGENT_": proxy.bind ->
 * SLIPWAY_AGENT_PROXY_BIND). The variable's value is taken verbatim (no
 * quotes, no escapes; an empty value is an empty value, not "unset") and wins
 * over the file. A SECRET key also has a <NAME>_FILE variant naming a file
 * whose content is the value (one trailing newline stripped, at most
 * CONFIG_SECRET_FILE_MAX bytes); setting both is an error. A variable under the
 * prefix that names no key is a warning (logged, and shown by config_check),
 * not an error: the environment is shared with everything else the unit or CI
 * job runs, so a stray variable must not stop a daemon.
 *
 * Errors: loading collects every problem, one per line, so `--check` reports
 * them all at once; config_load puts as many lines as fit in struct err (and
 * "... and N more"), config_check prints all of them (up to CONFIG_ERRORS_MAX).
 * Required keys (required flag, no default) must be set by the file or env.
 *
 * Schemas are static tables written by programmers: a malformed schema (bad key
 * name, two keys with one env name, a default that does not parse, ...) and a
 * getter called with an unknown key or the wrong type are programming errors,
 * reported on stderr followed by abort(); the first test run catches them.
 *
 * Ownership: config_load returns a struct config the caller frees with
 * config_free; strings returned by getters live until then. Nothing is
 * allocated on error. Loading reads the environment and files, so call it at
 * start-up before threads start; getters may then be called from any thread.
 * Loading blocks on reading the file (small, local).
 */
#ifndef SLIPWAY_CONFIG_H
#define SLIPWAY_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "err.h"

#define CONFIG_FILE_MAX ((size_t)1 << 20)
#define CONFIG_LINE_MAX 4096              /* also caps an environment value */
#define CONFIG_SECRET_FILE_MAX ((size_t)64 << 10)
#define CONFIG_KEY_MAX 64
#define CONFIG_ERRORS_MAX 100             /* listed errors; the rest are counted */

enum config_type {
	CONFIG_STRING,
	CONFIG_INT,
	CONFIG_BOOL,
	CONFIG_DURATION,
	CONFIG_SIZE,
	CONFIG_ENUM,
	CONFIG_URL,
	CONFIG_PATH,
	CONFIG_SECRET,
};

struct config_key {
	const char *name;            /* "proxy.bind" */
	enum config_type type;
	const char *default_value;   /* written as in the file, unquoted; NULL: none */
	const char *help;            /* one sentence for config_usage */
	bool required;               /* must be set (only for keys without default) */
	/* INT: value range; DURATION: range in ms; SIZE: range in bytes; min == max
	 * == 0 means no range. STRING, PATH, URL, SECRET: max > 0 caps the length. */
	int64_t min, max;
	const char *const *choices;  /* ENUM: allowed words, NULL-terminated */
};

#define CONFIG_SCHEMA_LEN(schema) (sizeof(schema) / sizeof((schema)[0]))

struct config;

/* Loads path (NULL: defaults + environment only), then the environment under
 * env_prefix (NULL: none). NULL with every problem in err on failure. */
struct config *config_load(const struct config_key *schema, size_t n, const char *path,
			   const char *env_prefix, struct err *err);

/* The same from text in memory (what config_load uses after reading the file);
 * name is the file name used in messages ("agent.conf:12: ..."). */
struct config *config_load_buffer(const struct config_key *schema, size_t n, const char *text,
				  size_t len, const char *name, const char *env_prefix,
				  struct err *err);

/* The daemons' --check: loads like config_load and prints to out either every
 * error (one per line) or the config_dump; warnings are printed in both cases.
 * 0 when the configuration is valid, -1 otherwise. */
int config_check(const struct config_key *schema, size_t n, const char *path,
		 const char *env_prefix, FILE *out);

void config_free(struct config *cfg);

/* Typed getters. An unset key (optional, no default) reads as NULL / 0 / false;
 * config_has tells it apart. STRING, ENUM, URL, PATH and SECRET use config_str. */
const char *config_str(const struct config *cfg, const char *key);
int64_t config_int(const struct config *cfg, const char *key);
bool config_bool(const struct config *cfg, const char *key);
int64_t config_ms(const struct config *cfg, const char *key);
int64_t config_size(const struct config *cfg, const char *key);
bool config_has(const struct config *cfg, const char *key);

/* Where the value came from: "default", "file:12", "env" or "unset". */
const char *config_source(const struct config *cfg, const char *key);

/* Every key as `name = value  # source`, secrets as [secret]. */
void config_dump(const struct config *cfg, FILE *out);

/* Every key with its type, range or choices, default and help (for --help and
 * the generated docs/configuration.md). */
void config_usage(const struct config_key *schema, size_t n, FILE *out);

#endif
