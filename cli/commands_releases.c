#include "commands_releases.h"

#include <string.h>

#include "table.h"
#include "watch.h"

static const struct args_opt list_opts[] = {
	{"app", 'a', ARGS_VALUE, "APP", "the app (default: $SLIPWAY_APP)"},
	{"limit", 'n', ARGS_VALUE, "N", "how many, newest first (1-1000, default 50)"},
	{"json", 0, ARGS_FLAG, NULL, "print the coordinator's JSON answer"},
};

static const struct cli_cmd list_cmd = {
	.name = "releases",
	.synopsis = "releases [<app>] [--app APP] [--limit N] [--json] | releases promote|rollback "
		    "<id>",
	.description = "Lists an app's releases, newest first. A release is a build plus an "
		       "environment and scale; `env set`, `scale` and `rollback` each make one.",
	.opts = list_opts,
	.nopts = sizeof list_opts / sizeof list_opts[0],
	.min_pos = 0,
	.max_pos = 1,
};

static int releases_list(struct cli *cli, int argc, char **argv)
{
	struct args a;
	int rc;
	if (!cli_parse(cli, &list_cmd, argc, argv, &a, &rc))
		return rc;
	if (a.npos && args_has(&a, "app"))
		return cli_usage_error(cli, &list_cmd, "give the app once");
	const char *app = cli_app(cli, &list_cmd, a.npos ? a.pos[0] : args_get(&a, "app"), &rc);
	if (!app)
		return rc;
	int64_t limit = 50;
	struct err err;
	if (args_get(&a, "limit") &&
	    args_int("--limit", args_get(&a, "limit"), 1, 1000, &limit, &err) < 0)
		return cli_usage_error(cli, &list_cmd, "%s", err.msg);
	if ((rc = cli_connect(cli)) != CLI_OK)
		return rc;
	char path[160], lim[24];
	snprintf(lim, sizeof lim, "%lld", (long long)limit);
	if (cli_path(path, sizeof path, "/v1/apps/%s/releases?limit=%s", app, lim) < 0)
		return cli_failf(cli, "app name too long");
	cJSON *doc;
	if (client_json(&cli->client, "GET", path, NULL, &doc, &err) < 0)
		return cli_fail(cli, &err);
	if (args_has(&a, "json")) {
		rc = cli_print_json(cli, doc);
		cJSON_Delete(doc);
		return rc;
	}
	static const char *const head[] = {"ID", "STATUS", "BUILD", "CREATED", "DESCRIPTION"};
	struct table *t = table_new(5, head);
	int64_t now = cli_now_ms();
	const cJSON *r;
	cJSON_ArrayForEach(r, cJSON_GetObjectItemCaseSensitive(doc, "releases"))
	{
		char created[TABLE_TIME_MAX];
		const char *row[] = {cli_str(r, "id"), cli_str(r, "status"), cli_str(r, "build"),
				     table_ago(cli_int(r, "created_ms"), now, created),
				     cli_str(r, "description")};
		if (t)
			table_add(t, row);
	}
	cJSON_Delete(doc);
	rc = t && table_print(t, cli->out) == 0 ? CLI_OK : cli_failf(cli, "could not print");
	table_free(t);
	return rc;
}

/* ---- promote and rollback ---- */

static const struct args_opt change_opts[] = {
	{"app", 'a', ARGS_VALUE, "APP", "the app (default: $SLIPWAY_APP)"},
	{"wait", 'w', ARGS_FLAG, NULL, "follow the rollout; exit 0 only when it is live everywhere"},
	{"timeout", 0, ARGS_VALUE, "DURATION", "give up waiting after this long (default 30m)"},
	{"json", 0, ARGS_FLAG, NULL, "print the coordinator's JSON answer"},
};

static const struct cli_cmd promote_cmd = {
	.name = "releases promote",
	.synopsis = "releases promote <id> [--app APP] [--wait [--timeout 30m]]",
	.description = "Makes a release the app's desired release: every instance of the fleet "
		       "switches to it with zero downtime. Needs a deploy key.",
	.opts = change_opts,
	.nopts = sizeof change_opts / sizeof change_opts[0],
	.min_pos = 1,
	.max_pos = 1,
};

static const struct cli_cmd rollback_cmd = {
	.name = "releases rollback",
	.synopsis = "releases rollback <id> [--app APP] [--wait [--timeout 30m]]",
	.description = "Rolls the app back to an earlier release: a NEW release with that "
		       "release's build, images and environment (and today's scale), promoted. "
		       "Needs a deploy key.",
	.opts = change_opts,
	.nopts = sizeof change_opts / sizeof change_opts[0],
	.min_pos = 1,
	.max_pos = 1,
};

static int change(struct cli *cli, const struct cli_cmd *spec, int rollback, int argc,
		  char **argv)
{
	struct args a;
	int rc;
	if (!cli_parse(cli, spec, argc, argv, &a, &rc))
		return rc;
	const char *app = cli_app(cli, spec, args_get(&a, "app"), &rc);
	if (!app)
		return rc;
	const char *id = a.pos[0];
	int64_t timeout = WATCH_DEFAULT_TIMEOUT_MS;
	struct err err;
	if (args_get(&a, "timeout") &&
	    args_duration_ms("--timeout", args_get(&a, "timeout"), &timeout, &err) < 0)
		return cli_usage_error(cli, spec, "%s", err.msg);
	if ((rc = cli_connect(cli)) != CLI_OK)
		return rc;
	char path[256];
	if (cli_path(path, sizeof path, rollback ? "/v1/apps/%s/releases/%s/rollback"
						 : "/v1/apps/%s/releases/%s/promote",
		     app, id) < 0)
		return cli_usage_error(cli, spec, "release id too long");
	cJSON *doc;
	if (client_json(&cli->client, "POST", path, NULL, &doc, &err) < 0)
		return cli_fail(cli, &err);
	if (args_has(&a, "json") && !args_has(&a, "wait")) {
		rc = cli_print_json(cli, doc);
		cJSON_Delete(doc);
		return rc;
	}
	char what[200], shown[80];
	table_clean(id, shown, sizeof shown);
	if (rollback)
		snprintf(what, sizeof what, "Rolled %s back to %s", app, shown);
	else
		snprintf(what, sizeof what, "Promoted %s on %s", shown, app);
	rc = watch_promoted(cli, app, doc, what, args_has(&a, "wait"), timeout);
	cJSON_Delete(doc);
	return rc;
}

int commands_releases(struct cli *cli, int argc, char **argv)
{
	if (argc > 0 && !strcmp(argv[0], "promote"))
		return change(cli, &promote_cmd, 0, argc - 1, argv + 1);
	if (argc > 0 && !strcmp(argv[0], "rollback"))
		return change(cli, &rollback_cmd, 1, argc - 1, argv + 1);
	return releases_list(cli, argc, argv);
}
