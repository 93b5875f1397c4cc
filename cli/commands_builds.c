#include "commands_builds.h"

#include <stdlib.h>
#include <string.h>

#include "table.h"
#include "watch.h"

static const struct args_opt list_opts[] = {CLI_OPT_APP, CLI_OPT_LIMIT, CLI_OPT_JSON};

static const struct cli_cmd list_cmd = {
	.name = "builds",
	.synopsis = "builds [<app>] [--app APP] [--limit N] [--json] | builds info <id>",
	.description = "Lists an app's builds, newest first: GitLab pushes and `slipway deploy` "
		       "uploads.",
	.opts = list_opts,
	.nopts = sizeof list_opts / sizeof list_opts[0],
	.min_pos = 0,
	.max_pos = 1,
};

static int builds_list(struct cli *cli, int argc, char **argv)
{
	struct args a;
	int rc;
	if (!cli_parse(cli, &list_cmd, argc, argv, &a, &rc))
		return rc;
	char path[160];
	if (!cli_app_listing(cli, &list_cmd, &a, "builds", path, sizeof path, &rc))
		return rc;
	cJSON *doc;
	if ((rc = cli_get_shown(cli, &a, path, &doc)) >= 0)
		return rc;
	static const char *const head[] = {"ID", "STATUS", "RELEASE", "STARTED", "ELAPSED",
					   "DESCRIPTION"};
	struct table *t = table_new(6, head);
	int64_t now = cli_now_ms();
	const cJSON *b;
	cJSON_ArrayForEach(b, cJSON_GetObjectItemCaseSensitive(doc, "builds"))
	{
		char started[TABLE_TIME_MAX], elapsed[TABLE_TIME_MAX];
		int64_t s = cli_int(b, "started_ms"), e = cli_int(b, "ended_ms");
		table_ago(s, now, started);
		if (s > 0)
			table_duration((e ? e : now) - s, elapsed);
		else
			snprintf(elapsed, sizeof elapsed, "-");
		const char *row[] = {cli_str(b, "id"), cli_str(b, "status"), cli_str(b, "release"),
				     started, elapsed, cli_str(b, "description")};
		if (t)
			table_add(t, row);
	}
	cJSON_Delete(doc);
	return cli_print_table(cli, t);
}

/* ---- builds info ---- */

static const struct args_opt info_opts[] = {
	{"json", 0, ARGS_FLAG, NULL, "print the build's JSON (no log)"},
	{"no-log", 0, ARGS_FLAG, NULL, "the fields only"},
};

static const struct cli_cmd info_cmd = {
	.name = "builds info",
	.synopsis = "builds info <id> [--no-log] [--json]",
	.description = "Shows a build's fields, then its log. The log of a running build is "
		       "followed until the build ends.",
	.opts = info_opts,
	.nopts = sizeof info_opts / sizeof info_opts[0],
	.min_pos = 1,
	.max_pos = 1,
};

#define FIELD_W 13

static int is_running(const cJSON *b)
{
	const char *s = cli_str(b, "status");
	return s && (!strcmp(s, "created") || !strcmp(s, "running"));
}

static void print_build(struct cli *cli, const cJSON *b)
{
	char t[TABLE_TIME_MAX], buf[1024];
	int64_t now = cli_now_ms();
	int64_t s = cli_int(b, "started_ms"), e = cli_int(b, "ended_ms");
	cli_field(cli, FIELD_W, "Build", cli_str(b, "id"));
	cli_field(cli, FIELD_W, "App", cli_str(b, "app"));
	cli_field(cli, FIELD_W, "Status", cli_str(b, "status"));
	cli_field(cli, FIELD_W, "Source", cli_str(b, "source"));
	cli_field(cli, FIELD_W, "Ref", cli_str(b, "ref"));
	cli_field(cli, FIELD_W, "Commit", cli_str(b, "sha"));
	cli_field(cli, FIELD_W, "Author", cli_str(b, "author"));
	cli_field(cli, FIELD_W, "Description", cli_str(b, "description"));
	cli_field(cli, FIELD_W, "Release", cli_str(b, "release"));
	cli_field(cli, FIELD_W, "Rollout", cli_str(b, "rollout"));
	cli_field(cli, FIELD_W, "Error", cli_str(b, "error"));
	cli_field(cli, FIELD_W, "Created", table_ago(cli_int(b, "created_ms"), now, t));
	cli_field(cli, FIELD_W, "Started", table_ago(s, now, t));
	cli_field(cli, FIELD_W, "Elapsed", s > 0 ? table_duration((e ? e : now) - s, t) : NULL);
	const cJSON *img;
	int first = 1;
	cJSON_ArrayForEach(img, cJSON_GetObjectItemCaseSensitive(b, "images"))
	{
		const char *ref = cli_str(img, "image"), *digest = cli_str(img, "digest");
		snprintf(buf, sizeof buf, "%s: %s%s%s", img->string, ref ? ref : "?",
			 digest && !(ref && strstr(ref, digest)) ? "@" : "",
			 digest && !(ref && strstr(ref, digest)) ? digest : "");
		cli_field(cli, FIELD_W, first ? "Images" : "", buf);
		first = 0;
	}
	if (first)
		cli_field(cli, FIELD_W, "Images", NULL);
}

static int builds_info(struct cli *cli, int argc, char **argv)
{
	struct args a;
	int rc;
	if (!cli_parse(cli, &info_cmd, argc, argv, &a, &rc))
		return rc;
	const char *id = a.pos[0];
	if ((rc = cli_connect(cli)) != CLI_OK)
		return rc;
	char path[200];
	if (cli_path(path, sizeof path, "/v1/builds/%s", id) < 0)
		return cli_usage_error(cli, &info_cmd, "build id too long");
	cJSON *doc;
	struct err err;
	if ((rc = cli_get_shown(cli, &a, path, &doc)) >= 0)
		return rc;
	print_build(cli, doc);
	int running = is_running(doc);
	cJSON_Delete(doc);
	if (args_has(&a, "no-log"))
		return CLI_OK;
	fputc('\n', cli->out);
	fflush(cli->out);
	if (watch_build_log(cli, id, cli->out, &err) < 0)
		return cli_fail(cli, &err);
	if (!running)
		return CLI_OK;
	/* It ran while we followed: say how it ended. */
	if (client_json(&cli->client, "GET", path, NULL, &doc, &err) < 0)
		return cli_fail(cli, &err);
	char status[32], msg[300], dur[TABLE_TIME_MAX];
	table_clean(cli_str(doc, "status"), status, sizeof status);
	table_clean(cli_str(doc, "error"), msg, sizeof msg);
	int64_t s = cli_int(doc, "started_ms"), e = cli_int(doc, "ended_ms");
	fprintf(cli->out, "\nBuild %s %s after %s%s%s\n", id, status,
		table_duration((e ? e : cli_now_ms()) - s, dur), msg[0] ? ": " : ".", msg);
	cJSON_Delete(doc);
	return CLI_OK;
}

int commands_builds(struct cli *cli, int argc, char **argv)
{
	if (argc > 0 && !strcmp(argv[0], "info"))
		return builds_info(cli, argc - 1, argv + 1);
	return builds_list(cli, argc, argv);
}
