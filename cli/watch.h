/*
 * watch: following things that take a while, for `deploy`, `builds info`
 * and the `--wait` of promote, rollback, env and scale.
 *
 * A build log is streamed (GET /v1/builds/{id}/log answers until the build
 * ends) and written as it arrives, with terminal control characters other
 * than newline and tab replaced and empty lines (the coordinator's keepalive
 * on a quiet stream; every log line carries a time) left out. A rollout is
 * polled (GET
 * /v1/apps/{app}/rollouts/{id}, every WATCH_POLL_MS): each job's change is
 * printed once ("i-0abc (ag_1): live after 4.2s"), and the end decides the
 * result: only `succeeded` is success, which the coordinator declares when
 * every live agent of the fleet acknowledged the release, i.e. it is live on
 * every instance. `failed`, `rolled back` and `superseded` are failures, as
 * is the deadline passing (the rollout itself goes on). A poll that fails on
 * the way (connection, 5xx) is retried until the deadline; 4xx ends the wait.
 *
 * Progress goes to cli->out; the failure message to err. Main thread; blocks.
 */
#ifndef SLIPWAY_CLI_WATCH_H
#define SLIPWAY_CLI_WATCH_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "cli.h"
#include "err.h"

#define WATCH_POLL_MS 1000
#define WATCH_DEFAULT_TIMEOUT_MS (30LL * 60 * 1000)

/* Streams the log of build to out until the build ends. 0, or -1 (err). */
int watch_build_log(struct cli *cli, const char *build, FILE *out, struct err *err);

/* Follows rollout of app to its end or the deadline (timeout_ms 0: none).
 * 0 when it succeeded, -1 with err otherwise. */
int watch_rollout(struct cli *cli, const char *app, const char *rollout, int64_t timeout_ms,
		  struct err *err);

/* --timeout (default WATCH_DEFAULT_TIMEOUT_MS) into *ms; CLI_OK or the exit
 * code after a usage error. */
int watch_timeout(struct cli *cli, const struct cli_cmd *spec, const struct args *a,
		  int64_t *ms);

/* The end of promote, rollback, env and scale: with --json (and no --wait)
 * prints the answer, else watch_promoted (--wait follows). Deletes doc;
 * returns the exit code. */
int watch_answer(struct cli *cli, const struct args *a, const char *app, cJSON *doc,
		 const char *what, int64_t timeout_ms);

/* After an answer of the PROMOTED shape ({"release", "rollout", "generation"}):
 * prints what happened and, with wait, follows the rollout. Returns the exit
 * code. what says what made the release ("Set FOO on web"). */
int watch_promoted(struct cli *cli, const char *app, const cJSON *answer, const char *what,
		   bool wait, int64_t timeout_ms);

#endif
