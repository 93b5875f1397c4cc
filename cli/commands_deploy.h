/*
 * commands_deploy: `slipway deploy [dir] --app A [--wait]`: packs the
 * directory as tar.gz into a private temporary file (common/context: the
 * top-level .dockerignore with Docker's rules, never `.git`), uploads it
 * streamed from that file (POST /v1/apps/{app}/builds), streams the build
 * log, waits for the build's release and its rollout, and with --wait follows
 * the rollout to its end. Exit 0 only when each step worked and, with --wait,
 * the release is live on every instance (watch.h); 1 otherwise (the build
 * failed, the rollout failed, rolled back, was superseded or timed out).
 *
 * argv holds the arguments after "deploy". Returns the exit code (cli.h).
 * Main thread; blocks (packing, upload, waiting).
 */
#ifndef SLIPWAY_CLI_COMMANDS_DEPLOY_H
#define SLIPWAY_CLI_COMMANDS_DEPLOY_H

#include "cli.h"

int commands_deploy(struct cli *cli, int argc, char **argv);

#endif
