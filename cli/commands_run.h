/*
 * commands_run: `slipway run <app> <service> [--release R] -- CMD...`: a
 * one-off container of a release's service on one instance (the coordinator
 * picks a live agent; docs/api.md "Runs").
 *
 * The command starts the run (POST /v1/apps/<app>/runs), then prints its
 * output as it arrives (the log sink's events of service = the run id, polled
 * with ?after=; stdout lines to stdout, stderr lines to stderr, unchanged)
 * until the run has ended and its last output line has arrived (or
 * RUN_DRAIN_MS passed after the end), and exits with the container's exit
 * status: 0, the command's non-zero status, or 1 when it could not run (the
 * reason on stderr). --json prints the run's final document instead of the
 * output. An interrupt (130) leaves the run going on the instance.
 *
 * argv holds the arguments after "run". Returns the exit code. Main thread;
 * blocks on the coordinator.
 */
#ifndef SLIPWAY_CLI_COMMANDS_RUN_H
#define SLIPWAY_CLI_COMMANDS_RUN_H

#include <stdbool.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "cli.h"

#define RUN_POLL_MS 300
#define RUN_DRAIN_MS 5000

int commands_run(struct cli *cli, int argc, char **argv);

/* The exit status for a run document: 0 succeeded, its exit_code when it
 * failed with one (1..255), else 1. -1 while it has not ended. */
int commands_run_exit_status(const cJSON *run);

/* True when the last output line printed (last, may be NULL) is the last
 * line of the run's output_tail, or the tail is empty: nothing more to wait
 * for. */
bool commands_run_output_complete(const cJSON *run, const char *last);

#endif
