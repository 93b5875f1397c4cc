/*
 * commands_login: `slipway login`: checks a coordinator URL and API key with
 * GET /v1/whoami and, only when they work, saves them to the config file
 * (cliconf_save: 0600, atomic). The key comes from --api-key-file,
 * SLIPWAY_API_KEY(_FILE), a terminal prompt with echo off, or one line of
 * stdin; it is never echoed or printed.
 *
 * argv holds the arguments after "login". Returns the exit code (cli.h).
 * Main thread; blocks on the terminal and the coordinator.
 */
#ifndef SLIPWAY_CLI_COMMANDS_LOGIN_H
#define SLIPWAY_CLI_COMMANDS_LOGIN_H

#include "cli.h"

int commands_login(struct cli *cli, int argc, char **argv);

#endif
