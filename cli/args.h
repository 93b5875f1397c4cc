/*
 * args: the command line of one slipway command, parsed against a table of
 * the options it takes.
 *
 * Rules (the same for every command, so `slipway X --help` reads alike):
 *   - long options `--name value` and `--name=value`; a short alias `-a value`
 *     where the table gives one; flags take no value (`--json=1` is an error);
 *   - options and positional arguments may be mixed in any order;
 *   - `--` ends the options: everything after it is positional, `--x` too;
 *   - a lone `-` is a positional argument (stdin, by convention);
 *   - an unknown option, a value option without its value, and an option
 *     given twice are errors naming the option;
 *   - `-h` and `--help` are always accepted and set `help`.
 *
 * Ownership: struct args points into argv and into the option table; it owns
 * nothing and needs no freeing. Pure: no I/O, any thread.
 */
#ifndef SLIPWAY_CLI_ARGS_H
#define SLIPWAY_CLI_ARGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "err.h"

#define ARGS_OPTS_MAX 24
#define ARGS_POS_MAX 256

enum args_kind { ARGS_FLAG, ARGS_VALUE };

struct args_opt {
	const char *name;      /* long name without dashes: "app" */
	char short_name;       /* 'a', or 0 for none */
	enum args_kind kind;
	const char *metavar;   /* for --help: "APP" */
	const char *help;      /* one line for --help */
};

struct args {
	const struct args_opt *opts;
	size_t nopts;
	const char *values[ARGS_OPTS_MAX]; /* value options: the value, or NULL */
	bool seen[ARGS_OPTS_MAX];
	char *pos[ARGS_POS_MAX];           /* positional arguments in order */
	int npos;
	int dashdash;                      /* index in pos of the first after `--`, or -1 */
	bool help;
};

/* Parses argv[0..argc) (argv[0] is the first argument, not the program).
 * -1 with a one-line message in err on a usage error. */
int args_parse(const struct args_opt *opts, size_t nopts, int argc, char **argv,
	       struct args *out, struct err *err);

/* The value of a value option, or NULL when not given. */
const char *args_get(const struct args *a, const char *name);
/* Whether an option (flag or value) was given. */
bool args_has(const struct args *a, const char *name);

/* Prints "usage: slipway SYNOPSIS", the description and the option table. */
void args_usage(FILE *out, const char *synopsis, const char *description,
		const struct args_opt *opts, size_t nopts);

/* Value parsers for option values; each -1 with "NAME: why" in err. */
int args_int(const char *name, const char *s, int64_t min, int64_t max, int64_t *out,
	     struct err *err);
/* "500ms", "30s", "10m", "2h", "1d"; a bare number is seconds. */
int args_duration_ms(const char *name, const char *s, int64_t *out, struct err *err);
/* Memory in MiB: "512", "512M", "512MB", "1G", "1GB", "0" (no limit). */
int args_memory_mb(const char *name, const char *s, int64_t *out, struct err *err);

#endif
