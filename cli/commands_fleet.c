#include "commands_fleet.h"

#include <string.h>

#include "table.h"

static const struct args_opt ps_opts[] = {
	{"app", 'a', ARGS_VALUE, "APP", "only this app's containers"},
	CLI_OPT_JSON,
};

static const struct cli_cmd ps_cmd = {
	.name = "ps",
	.synopsis = "ps [<app>] [--app APP] [--json]",
	.description = "Lists the containers every agent reported (its last inventory, at most a "
		       "minute old), stopped ones kept for rollback included. Without an app: "
		       "every app the key may see.",
	.opts = ps_opts,
	.nopts = sizeof ps_opts / sizeof ps_opts[0],
	.min_pos = 0,
	.max_pos = 1,
};

int commands_ps(struct cli *cli, int argc, char **argv)
{
	struct args a;
	int rc;
	if (!cli_parse(cli, &ps_cmd, argc, argv, &a, &rc))
		return rc;
	if (a.npos && args_has(&a, "app"))
		return cli_usage_error(cli, &ps_cmd, "give the app once");
	const char *app = a.npos ? a.pos[0] : args_get(&a, "app");
	struct err err;
	if (app && cli_name_check("app", app, &err) < 0)
		return cli_usage_error(cli, &ps_cmd, "%s", err.msg);
	if ((rc = cli_connect(cli)) != CLI_OK)
		return rc;
	char path[160] = "/v1/ps";
	if (app)
		cli_path(path, sizeof path, "/v1/ps?app=%s", app);
	cJSON *doc;
	if ((rc = cli_get_shown(cli, &a, path, &doc)) >= 0)
		return rc;
	static const char *const head[] = {"ID",	"APP",	  "SERVICE", "RELEASE",
					   "INSTANCE", "STATUS", "STARTED", "COMMAND"};
	struct table *t = table_new(8, head);
	int64_t now = cli_now_ms();
	const cJSON *c;
	cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(doc, "containers"))
	{
		char id[13], status[96], started[TABLE_TIME_MAX];
		snprintf(id, sizeof id, "%s", cli_str(c, "id") ? cli_str(c, "id") : "");
		const char *state = cli_str(c, "state"), *health = cli_str(c, "health");
		if (health && *health && strcmp(health, "none"))
			snprintf(status, sizeof status, "%s (%s)", state ? state : "?", health);
		else
			snprintf(status, sizeof status, "%s", state ? state : "");
		const char *row[] = {id,
				     cli_str(c, "app"),
				     cli_str(c, "service"),
				     cli_str(c, "release"),
				     cli_str(c, "instance_id"),
				     status,
				     table_ago(cli_int(c, "started_ms"), now, started),
				     cli_str(c, "command")};
		if (t)
			table_add(t, row);
	}
	cJSON_Delete(doc);
	return cli_print_table(cli, t);
}

static const struct args_opt agents_opts[] = {CLI_OPT_JSON};

static const struct cli_cmd agents_cmd = {
	.name = "agents",
	.synopsis = "agents [--json]",
	.description = "Lists the agents (one per instance): state, version, when last heard "
		       "from, and each app's state on them (converged, pending, failed).",
	.opts = agents_opts,
	.nopts = 1,
	.min_pos = 0,
	.max_pos = 0,
};

int commands_agents(struct cli *cli, int argc, char **argv)
{
	struct args a;
	int rc;
	if (!cli_parse(cli, &agents_cmd, argc, argv, &a, &rc))
		return rc;
	if ((rc = cli_connect(cli)) != CLI_OK)
		return rc;
	cJSON *doc;
	if ((rc = cli_get_shown(cli, &a, "/v1/agents", &doc)) >= 0)
		return rc;
	static const char *const head[] = {"ID",    "INSTANCE", "HOSTNAME", "FLEET",
					   "STATE", "VERSION",  "SEEN",     "APPS"};
	struct table *t = table_new(8, head);
	int64_t now = cli_now_ms();
	const cJSON *ag;
	cJSON_ArrayForEach(ag, cJSON_GetObjectItemCaseSensitive(doc, "agents"))
	{
		char seen[TABLE_TIME_MAX];
		struct buf apps;
		buf_init(&apps, 8192);
		const cJSON *ap;
		cJSON_ArrayForEach(ap, cJSON_GetObjectItemCaseSensitive(ag, "apps"))
		{
			buf_printf(&apps, "%s%s:%s", apps.len ? "," : "",
				   cli_str(ap, "app") ? cli_str(ap, "app") : "?",
				   cli_str(ap, "state") ? cli_str(ap, "state") : "?");
		}
		const char *row[] = {cli_str(ag, "id"),
				     cli_str(ag, "instance_id"),
				     cli_str(ag, "hostname"),
				     cli_str(ag, "fleet"),
				     cli_str(ag, "state"),
				     cli_str(ag, "version"),
				     table_ago(cli_int(ag, "last_seen_ms"), now, seen),
				     apps.data};
		if (t)
			table_add(t, row);
		buf_free(&apps);
	}
	cJSON_Delete(doc);
	return cli_print_table(cli, t);
}
