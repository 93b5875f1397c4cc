/*
 * commands_fleet: `slipway ps` (the containers the agents reported) and
 * `slipway agents` (the instances and where each app stands on them).
 *
 * argv holds the arguments after the command's name. Returns the exit code
 * (cli.h). Main thread; blocks on the coordinator.
 */
#ifndef SLIPWAY_CLI_COMMANDS_FLEET_H
#define SLIPWAY_CLI_COMMANDS_FLEET_H

#include "cli.h"

int commands_ps(struct cli *cli, int argc, char **argv);
int commands_agents(struct cli *cli, int argc, char **argv);

#endif
