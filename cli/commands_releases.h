/*
 * commands_releases: `slipway releases` (an app's releases), `releases
 * promote <id>` and `releases rollback <id>` (a new release with the old
 * build and environment, promoted), both with --wait to follow the rollout.
 *
 * argv holds the arguments after "releases". Returns the exit code (cli.h).
 * Main thread; blocks on the coordinator.
 */
#ifndef SLIPWAY_CLI_COMMANDS_RELEASES_H
#define SLIPWAY_CLI_COMMANDS_RELEASES_H

#include "cli.h"

int commands_releases(struct cli *cli, int argc, char **argv);

#endif
