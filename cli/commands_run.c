#include "commands_run.h"

#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "clock.h"

static const struct args_opt run_opts[] = {
	{"release", 'r', ARGS_VALUE, "RELEASE", "run this release (default: the app's desired one)"},
	{"timeout", 0, ARGS_VALUE, "DURATION",
	 "kill the container after this long (default 1h, at most 24h)"},
	{"json", 0, ARGS_FLAG, NULL, "print the run's final JSON instead of its output"},
};

static const struct cli_cmd run_cmd = {
	.name = "run",
	.synopsis = "run <app> <service> [--release R] [--timeout 10m] [--json] -- CMD [ARG...]",
	.description = "Runs CMD once in a new container of the service (its image, environment "
		       "and memory limit) on one instance, prints its output and exits with its "
		       "exit status. Without CMD the service's own command runs. The container "
		       "gets no traffic and is removed afterwards.",
	.opts = run_opts,
	.nopts = sizeof run_opts / sizeof run_opts[0],
	.min_pos = 2,
	.max_pos = -1,
};

int commands_run_exit_status(const cJSON *run)
{
	const char *state = cli_str(run, "state");
	if (!state || (strcmp(state, "succeeded") != 0 && strcmp(state, "failed") != 0))
		return -1;
	if (strcmp(state, "succeeded") == 0)
		return 0;
	const cJSON *code = cJSON_GetObjectItemCaseSensitive(run, "exit_code");
	if (cJSON_IsNumber(code) && code->valuedouble >= 1 && code->valuedouble <= 255)
		return (int)code->valuedouble;
	return 1;
}

bool commands_run_output_complete(const cJSON *run, const char *last)
{
	const char *tail = cli_str(run, "output_tail");
	if (!tail || !*tail)
		return true;
	const char *nl = strrchr(tail, '\n');
	const char *tail_last = nl ? nl + 1 : tail;
	return last && strcmp(last, tail_last) == 0;
}

struct printer {
	struct cli *cli;
	char *after;      /* the log sink's next id, as text */
	char *last;       /* the last message printed */
	int64_t events;
};

/* Prints the events after p->after; 0, or -1 with err. */
static int print_new(struct printer *p, const char *app, const char *run_id, struct err *err)
{
	char path[512];
	if (cli_path(path, sizeof path, "/v1/apps/%s/logs?service=%s&limit=1000&after=%s", app,
		     run_id, p->after) < 0)
		return err_set(err, "arguments too long");
	cJSON *doc = NULL;
	if (client_json(&p->cli->client, "GET", path, NULL, &doc, err) < 0)
		return -1;
	const cJSON *ev;
	cJSON_ArrayForEach(ev, cJSON_GetObjectItemCaseSensitive(doc, "events"))
	{
		const char *msg = cli_str(ev, "message");
		const char *stream = cli_str(ev, "stream");
		if (!msg)
			continue;
		FILE *out = stream && strcmp(stream, "stderr") == 0 ? p->cli->err : p->cli->out;
		fputs(msg, out);
		fputc('\n', out);
		free(p->last);
		p->last = strdup(msg);
		p->events++;
	}
	const cJSON *next = cJSON_GetObjectItemCaseSensitive(doc, "next");
	if (cJSON_IsNumber(next)) {
		char n[32];
		snprintf(n, sizeof n, "%.0f", next->valuedouble);
		free(p->after);
		p->after = strdup(n);
	}
	cJSON_Delete(doc);
	fflush(p->cli->out);
	fflush(p->cli->err);
	if (!p->after)
		return err_set(err, "out of memory");
	return 0;
}

static int get_run(struct cli *cli, const char *app, const char *run_id, cJSON **doc,
		   struct err *err)
{
	char path[256];
	if (cli_path(path, sizeof path, "/v1/apps/%s/runs/%s", app, run_id) < 0)
		return err_set(err, "run id too long");
	return client_json(&cli->client, "GET", path, NULL, doc, err);
}

int commands_run(struct cli *cli, int argc, char **argv)
{
	struct args a;
	int rc;
	const char *app = cli_parse_app(cli, &run_cmd, argc, argv, &a, &rc);
	if (!app)
		return rc;
	struct err err;
	if (a.dashdash >= 0 && a.dashdash < 2)
		return cli_usage_error(cli, &run_cmd, "give <app> and <service> before --");
	const char *service = a.pos[1];
	if (cli_name_check("service", service, &err) < 0)
		return cli_usage_error(cli, &run_cmd, "%s", err.msg);
	int64_t timeout_ms = 0;
	if (args_get(&a, "timeout") &&
	    (args_duration_ms("--timeout", args_get(&a, "timeout"), &timeout_ms, &err) < 0 ||
	     timeout_ms < 1000 || timeout_ms > (int64_t)86400 * 1000))
		return cli_usage_error(cli, &run_cmd, "%s",
				       err.msg[0] ? err.msg : "--timeout: 1s to 24h");
	cJSON *body = cJSON_CreateObject();
	if (!body)
		return cli_failf(cli, "out of memory");
	cJSON_AddStringToObject(body, "service", service);
	if (args_get(&a, "release"))
		cJSON_AddStringToObject(body, "release", args_get(&a, "release"));
	if (timeout_ms)
		cJSON_AddNumberToObject(body, "timeout_s", (double)((timeout_ms + 999) / 1000));
	if (a.npos > 2) {
		cJSON *cmd = cJSON_AddArrayToObject(body, "command");
		for (int i = 2; i < a.npos; i++)
			cJSON_AddItemToArray(cmd, cJSON_CreateString(a.pos[i]));
	}
	if ((rc = cli_connect(cli)) != CLI_OK) {
		cJSON_Delete(body);
		return rc;
	}
	char path[256];
	cli_path(path, sizeof path, "/v1/apps/%s/runs", app);
	cJSON *answer = NULL;
	rc = client_json(&cli->client, "POST", path, body, &answer, &err);
	cJSON_Delete(body);
	if (rc < 0)
		return cli_fail(cli, &err);
	const cJSON *run = cJSON_GetObjectItemCaseSensitive(answer, "run");
	char run_id[64];
	snprintf(run_id, sizeof run_id, "%s", cli_str(run, "id") ? cli_str(run, "id") : "");
	if (!run_id[0]) {
		cJSON_Delete(answer);
		return cli_failf(cli, "the coordinator's answer names no run");
	}
	bool json = args_has(&a, "json");
	if (!json)
		cli_note(cli, "slipway: running %s of %s (release %s) on agent %s", run_id, app,
			 cli_str(run, "release") ? cli_str(run, "release") : "?",
			 cli_str(run, "agent") ? cli_str(run, "agent") : "?");
	cJSON_Delete(answer);

	struct printer p = {.cli = cli, .after = strdup("0")};
	cJSON *doc = NULL;
	int64_t ended_at = 0;
	for (;;) {
		if (!json && print_new(&p, app, run_id, &err) < 0)
			break;
		cJSON_Delete(doc);
		doc = NULL;
		if (get_run(cli, app, run_id, &doc, &err) < 0)
			break;
		int status = commands_run_exit_status(doc);
		if (status >= 0) {
			/* The output travels separately: wait for its last line. */
			if (!ended_at)
				ended_at = cli_now_ms();
			if (json || commands_run_output_complete(doc, p.last) ||
			    cli_now_ms() - ended_at >= RUN_DRAIN_MS) {
				if (!json && !commands_run_output_complete(doc, p.last) &&
				    p.events == 0 && cli_str(doc, "output_tail")) {
					/* No shipped output (CloudWatch mode, a slow shipper):
					 * the tail the agent kept is all we have. */
					fputs(cli_str(doc, "output_tail"), cli->out);
					fputc('\n', cli->out);
				}
				rc = status;
				if (json)
					rc = cli_print_json(cli, doc) == CLI_OK ? status : CLI_FAIL;
				else if (status != 0 && cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(
							  doc, "exit_code")))
					cli_note(cli, "slipway: %s exited with status %d", run_id,
						 status);
				else if (status != 0)
					cli_note(cli, "slipway: error: %s failed: %s", run_id,
						 cli_str(doc, "reason") ? cli_str(doc, "reason")
									: "no reason given");
				cJSON_Delete(doc);
				free(p.after);
				free(p.last);
				return rc;
			}
		}
		if (client_sleep(&cli->client, RUN_POLL_MS, &err) < 0)
			break;
	}
	cJSON_Delete(doc);
	free(p.after);
	free(p.last);
	if (client_interrupted)
		cli_note(cli, "slipway: %s goes on on the instance (GET /v1/apps/%s/runs/%s "
			 "shows how it ends)", run_id, app, run_id);
	return cli_fail(cli, &err);
}
