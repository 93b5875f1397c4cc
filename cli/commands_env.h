/*
 * commands_env: `slipway env <app>` (the app's environment), `env set <app>
 * K=V...`, `env unset <app> K...` (each makes a new release; --promote
 * deploys it) and `slipway scale <app> <service> --count N [--memory MB]`
 * (a new release with the new scale, deployed at once).
 *
 * argv holds the arguments after the command's name. Returns the exit code
 * (cli.h). Main thread; blocks on the coordinator.
 */
#ifndef SLIPWAY_CLI_COMMANDS_ENV_H
#define SLIPWAY_CLI_COMMANDS_ENV_H

#include <stdio.h>

#include "cli.h"

int commands_env(struct cli *cli, int argc, char **argv);
int commands_scale(struct cli *cli, int argc, char **argv);

/* Prints NAME=value; a value holding control characters or quotes is
 * printed as a JSON string ("a\nb"), so one variable is always one line. */
void commands_env_print_var(FILE *out, const char *name, const char *value);

#endif
