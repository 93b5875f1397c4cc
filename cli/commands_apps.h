/*
 * commands_apps: `slipway apps` and its sub-commands create, delete, info,
 * link and unlink (docs/cli.md shows each with its output).
 *
 * argv holds the arguments after "apps". Returns the exit code (cli.h).
 * Main thread; blocks on the coordinator.
 */
#ifndef SLIPWAY_CLI_COMMANDS_APPS_H
#define SLIPWAY_CLI_COMMANDS_APPS_H

#include "cli.h"

int commands_apps(struct cli *cli, int argc, char **argv);

#endif
