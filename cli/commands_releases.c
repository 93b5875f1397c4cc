#include "commands_releases.h"

#include <string.h>

#include "table.h"
#include "watch.h"

static const struct args_opt list_opts[] = {CLI_OPT_APP, CLI_OPT_LIMIT, CLI_OPT_JSON};

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
	char path[160];
	if (!cli_app_listing(cli, &list_cmd, &a, "releases", path, sizeof path, &rc))
		return rc;
	cJSON *doc;
	if ((rc = cli_get_shown(cli, &a, path, &doc)) >= 0)
		return rc;
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
	return cli_print_table(cli, t);
}

/* ---- promote and rollback ---- */

static const struct args_opt change_opts[] = {
	CLI_OPT_APP,
	{"wait", 'w', ARGS_FLAG, NULL, "follow the rollout; exit 0 only when it is live everywhere"},
	CLI_OPT_TIMEOUT,
	CLI_OPT_JSON,
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
	int64_t timeout;
	if ((rc = watch_timeout(cli, spec, &a, &timeout)) != CLI_OK ||
	    (rc = cli_connect(cli)) != CLI_OK)
		return rc;
	char path[256];
	if (cli_path(path, sizeof path, rollback ? "/v1/apps/%s/releases/%s/rollback"
						 : "/v1/apps/%s/releases/%s/promote",
		     app, id) < 0)
		return cli_usage_error(cli, spec, "release id too long");
	cJSON *doc;
	struct err err;
	if (client_json(&cli->client, "POST", path, NULL, &doc, &err) < 0)
		return cli_fail(cli, &err);
	char what[200], shown[80];
	table_clean(id, shown, sizeof shown);
	if (rollback)
		snprintf(what, sizeof what, "Rolled %s back to %s", app, shown);
	else
		snprintf(what, sizeof what, "Promoted %s on %s", shown, app);
	return watch_answer(cli, &a, app, doc, what, timeout);
}

int commands_releases(struct cli *cli, int argc, char **argv)
{
	if (argc > 0 && !strcmp(argv[0], "promote"))
		return change(cli, &promote_cmd, 0, argc - 1, argv + 1);
	if (argc > 0 && !strcmp(argv[0], "rollback"))
		return change(cli, &rollback_cmd, 1, argc - 1, argv + 1);
	return releases_list(cli, argc, argv);
}
