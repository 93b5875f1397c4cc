/*
 * cliconf: where the CLI finds its coordinator and API key.
 *
 * Sources, each setting on its own, the first that has it wins:
 *   host:    SLIPWAY_HOST, then `host` in the config file;
 *   api key: SLIPWAY_API_KEY, then the file named by SLIPWAY_API_KEY_FILE
 *            (GitLab "File" variables), then `api_key` in the config file;
 *   CA file: SLIPWAY_CA_FILE, then `ca_file` in the config file;
 *   app:     SLIPWAY_APP (the default for --app).
 * The config file is $XDG_CONFIG_HOME/slipway/config, or
 * ~/.config/slipway/config without XDG_CONFIG_HOME; its format is the one of
 * common/config.h (`key = "value"` lines). `slipway login` writes it with
 * cliconf_save: mode 0600 in a 0700 directory, replaced atomically (a
 * temporary file renamed over it), never group- or world-readable at any
 * moment.
 *
 * A host must be http:// or https:// without credentials, query or fragment;
 * a trailing '/' is dropped (a path prefix is kept: a coordinator behind a
 * proxy at https://ops.example/slipway works). An API key is 1..512 printable
 * ASCII characters without blanks.
 *
 * Ownership: strings in struct cliconf are owned by it; cliconf_free releases
 * them (and accepts a zeroed struct). Nothing is allocated on error. Blocks
 * on reading small local files; main thread only (reads the environment).
 */
#ifndef SLIPWAY_CLI_CLICONF_H
#define SLIPWAY_CLI_CLICONF_H

#include <stddef.h>
#include <stdio.h>

#include "err.h"

#define CLICONF_PATH_MAX 4096
#define CLICONF_KEY_MAX 512

struct cliconf {
	char *host;          /* normalized, or NULL when nothing names one */
	char *api_key;       /* or NULL */
	char *ca_file;       /* or NULL (the system's CA bundle) */
	char *app;           /* SLIPWAY_APP, or NULL */
	const char *host_from; /* "SLIPWAY_HOST" or "the config file", for messages */
	const char *key_from;
	char path[CLICONF_PATH_MAX]; /* the config file, whether it exists or not */
};

/* The config file's path into out. -1 when neither XDG_CONFIG_HOME nor HOME
 * is set (or the path is too long). */
int cliconf_path(char *out, size_t cap, struct err *err);

/* Loads the environment and, when it exists, the config file. A config file
 * readable by others gets a warning on warn (may be NULL). -1 on a malformed
 * file, a bad SLIPWAY_HOST or key, an unreadable SLIPWAY_API_KEY_FILE. */
int cliconf_load(struct cliconf *c, FILE *warn, struct err *err);
void cliconf_free(struct cliconf *c);

/* Checks and normalizes a host URL into a new string (free it). NULL + err. */
char *cliconf_host_normalize(const char *host, struct err *err);

/* 0 when key looks like an API key (the rule above). */
int cliconf_key_check(const char *key, struct err *err);

/* Reads a key file: its content minus one trailing newline (and "\r"). */
char *cliconf_read_key_file(const char *path, struct err *err);

/* Writes host, api_key and ca_file (NULL: left out) to path as described
 * above, creating the directory (0700) when missing. */
int cliconf_save(const char *path, const char *host, const char *api_key, const char *ca_file,
		 struct err *err);

#endif
