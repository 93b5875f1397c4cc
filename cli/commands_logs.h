/*
 * commands_logs: `slipway logs <app>`: the app's container output kept by
 * the coordinator's log sink, once or followed (--follow streams NDJSON and
 * prints each event as it arrives, until interrupted).
 *
 * Each event prints as "TIME SERVICE[CONTAINER]: MESSAGE" (UTC, RFC 3339
 * with milliseconds; the container id cut to 12), control characters
 * replaced. --json prints the coordinator's document, or with --follow its
 * NDJSON lines as they come.
 *
 * argv holds the arguments after "logs". Returns the exit code (cli.h).
 * Main thread; blocks on the coordinator.
 */
#ifndef SLIPWAY_CLI_COMMANDS_LOGS_H
#define SLIPWAY_CLI_COMMANDS_LOGS_H

#include <stdio.h>

#include <cjson/cJSON.h>

#include "cli.h"

int commands_logs(struct cli *cli, int argc, char **argv);

/* Writes one event as a line (the format above); for tests. */
void commands_logs_print_event(FILE *out, const cJSON *event);

#endif
