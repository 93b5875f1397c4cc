/*
 * commands_builds: `slipway builds` (the app's builds) and `builds info <id>`
 * (its fields, then its log, followed while the build runs).
 *
 * argv holds the arguments after "builds". Returns the exit code (cli.h).
 * Main thread; blocks on the coordinator.
 */
#ifndef SLIPWAY_CLI_COMMANDS_BUILDS_H
#define SLIPWAY_CLI_COMMANDS_BUILDS_H

#include "cli.h"

int commands_builds(struct cli *cli, int argc, char **argv);

#endif
