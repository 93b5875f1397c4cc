/*
 * slipway: the command line client of the coordinator's /v1 API.
 * This file only dispatches; the commands live in cli/commands_*.c.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "commands_apps.h"
#include "commands_builds.h"
#include "commands_deploy.h"
#include "commands_env.h"
#include "commands_fleet.h"
#include "commands_login.h"
#include "commands_logs.h"
#include "commands_releases.h"
#include "commands_run.h"
#include "log.h"

struct command {
	const char *name;
	int (*run)(struct cli *cli, int argc, char **argv);
	const char *summary;
};

static const struct command commands[] = {
	{"login", commands_login, "check a coordinator URL and API key, and save them"},
	{"apps", commands_apps, "list apps; apps create|delete|info|link|unlink"},
	{"deploy", commands_deploy, "pack a directory, build it, and roll it out (--wait)"},
	{"builds", commands_builds, "list an app's builds; builds info <id> shows one and its log"},
	{"releases", commands_releases, "list an app's releases; releases promote|rollback <id>"},
	{"ps", commands_ps, "list the containers on every instance"},
	{"agents", commands_agents, "list the agents (one per instance)"},
	{"logs", commands_logs, "print or follow an app's container output"},
	{"env", commands_env, "show an app's environment; env set|unset make a new release"},
	{"scale", commands_scale, "set a service's count and memory"},
	{"run", commands_run, "run a one-off command in a new container of a service"},
};

#define NCOMMANDS (sizeof commands / sizeof commands[0])

static void usage(FILE *out)
{
	fprintf(out, "usage: slipway <command> [arguments]\n\n"
		     "slipway talks to a slipway coordinator: SLIPWAY_HOST and SLIPWAY_API_KEY, or\n"
		     "what `slipway login` saved. Commands:\n\n");
	for (size_t i = 0; i < NCOMMANDS; i++)
		fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
	fprintf(out, "\n`slipway help <command>` or `slipway <command> --help` tells more.\n"
		     "Listings take --json. Exit status: 0 ok, 1 failure, 2 usage, 130 "
		     "interrupted.\n");
}

static const struct command *find(const char *name)
{
	for (size_t i = 0; i < NCOMMANDS; i++) {
		if (strcmp(commands[i].name, name) == 0)
			return &commands[i];
	}
	return NULL;
}

int main(int argc, char **argv)
{
	/* The CLI's own messages are its output; library logging stays quiet. */
	log_init("slipway", LOG_LEVEL_ERROR, 0);
	if (argc < 2) {
		usage(stderr);
		return CLI_USAGE;
	}
	const char *name = argv[1];
	if (!strcmp(name, "--version") || !strcmp(name, "version")) {
		printf("slipway %s\n", CLI_VERSION);
		return CLI_OK;
	}
	if (!strcmp(name, "help") || !strcmp(name, "--help") || !strcmp(name, "-h")) {
		if (argc < 3 || name[0] == '-') {
			usage(stdout);
			return CLI_OK;
		}
		const struct command *c = find(argv[2]);
		if (!c) {
			fprintf(stderr, "slipway: no command '%.40s'\n", argv[2]);
			usage(stderr);
			return CLI_USAGE;
		}
		/* `help apps create` shows the sub-command's help. */
		char *args[8];
		int n = 0;
		for (int i = 3; i < argc && n < 6; i++)
			args[n++] = argv[i];
		args[n++] = "--help";
		args[n] = NULL;
		struct cli cli;
		cli_init(&cli);
		int rc = c->run(&cli, n, args);
		cli_close(&cli);
		return rc;
	}
	const struct command *c = find(name);
	if (!c) {
		fprintf(stderr, "slipway: no command '%.40s'\n\n", name);
		usage(stderr);
		return CLI_USAGE;
	}
	struct cli cli;
	cli_init(&cli);
	int rc = c->run(&cli, argc - 2, argv + 2);
	cli_close(&cli);
	if (fflush(stdout) != 0 && rc == CLI_OK) {
		fprintf(stderr, "slipway: error: writing the output failed\n");
		rc = CLI_FAIL;
	}
	return rc;
}
