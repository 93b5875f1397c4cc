#include "commands_apps.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "table.h"

static const struct args_opt json_only[] = {CLI_OPT_JSON};

/* ---- apps (the list) ---- */

static const struct cli_cmd list_cmd = {
	.name = "apps",
	.synopsis = "apps [--json] | apps create|delete|info|link|unlink <app> ...",
	.description = "Lists the apps with the state of their latest rollout and the release "
		       "they should run.\nSub-commands: create, delete, info, link, unlink "
		       "(`slipway apps create --help`).",
	.opts = json_only,
	.nopts = 1,
	.min_pos = 0,
	.max_pos = 0,
};

static int apps_list(struct cli *cli, int argc, char **argv)
{
	struct args a;
	int rc;
	if (!cli_parse(cli, &list_cmd, argc, argv, &a, &rc))
		return rc;
	if ((rc = cli_connect(cli)) != CLI_OK)
		return rc;
	cJSON *doc;
	if ((rc = cli_get_shown(cli, &a, "/v1/apps", &doc)) >= 0)
		return rc;
	static const char *const head[] = {"APP", "STATUS", "RELEASE"};
	struct table *t = table_new(3, head);
	const cJSON *app;
	cJSON_ArrayForEach(app, cJSON_GetObjectItemCaseSensitive(doc, "apps"))
	{
		const char *row[] = {cli_str(app, "name"), cli_str(app, "status"),
				     cli_str(app, "release")};
		if (t)
			table_add(t, row);
	}
	cJSON_Delete(doc);
	return cli_print_table(cli, t);
}

/* ---- apps create ---- */

static const struct args_opt create_opts[] = {
	{"fleet", 0, ARGS_VALUE, "FLEET", "the agents' fleet that runs it (default: default)"},
	{"strategy", 0, ARGS_VALUE, "S", "all | one-at-a-time | canary (default: all)"},
	{"deploy", 0, ARGS_VALUE, "WHEN", "GitLab events that deploy: branch | tags | pipeline"},
	{"branch", 0, ARGS_VALUE, "BRANCH", "the branch that deploys (default: the project's)"},
	CLI_OPT_JSON,
};

static const struct cli_cmd create_cmd = {
	.name = "apps create",
	.synopsis = "apps create <app> [--fleet F] [--strategy S] [--deploy WHEN] [--branch B]",
	.description = "Creates an app. Names are 1-40 of a-z, 0-9 and '-', starting with a "
		       "letter. Needs an admin key.",
	.opts = create_opts,
	.nopts = sizeof create_opts / sizeof create_opts[0],
	.min_pos = 1,
	.max_pos = 1,
};

static int apps_create(struct cli *cli, int argc, char **argv)
{
	struct args a;
	int rc;
	const char *app = cli_parse_app(cli, &create_cmd, argc, argv, &a, &rc);
	if (!app)
		return rc;
	const char *strategy = args_get(&a, "strategy");
	if (strategy && strcmp(strategy, "all") && strcmp(strategy, "one-at-a-time") &&
	    strcmp(strategy, "canary"))
		return cli_usage_error(cli, &create_cmd,
				       "--strategy: one of all, one-at-a-time, canary");
	const char *deploy = args_get(&a, "deploy");
	if (deploy && strcmp(deploy, "branch") && strcmp(deploy, "tags") &&
	    strcmp(deploy, "pipeline"))
		return cli_usage_error(cli, &create_cmd, "--deploy: one of branch, tags, pipeline");
	if ((rc = cli_connect(cli)) != CLI_OK)
		return rc;
	cJSON *body = cJSON_CreateObject();
	cJSON_AddStringToObject(body, "name", app);
	static const char *const keys[] = {"fleet", "strategy", "deploy", "branch"};
	for (size_t i = 0; i < 4; i++) {
		if (args_get(&a, keys[i]))
			cJSON_AddStringToObject(body, keys[i], args_get(&a, keys[i]));
	}
	cJSON *doc;
	struct err err;
	rc = client_json(&cli->client, "POST", "/v1/apps", body, &doc, &err);
	cJSON_Delete(body);
	if (rc < 0) {
		if (cli->client.status == 409)
			err_set(&err, "app %s exists already", app);
		return cli_fail(cli, &err);
	}
	if (args_has(&a, "json")) {
		rc = cli_print_json(cli, doc);
	} else {
		char fleet[64], strat[32], dep[32];
		fprintf(cli->out, "Created app %s (fleet %s, strategy %s, GitLab deploys on %s).\n",
			app, table_clean(cli_str(doc, "fleet"), fleet, sizeof fleet),
			table_clean(cli_str(doc, "strategy"), strat, sizeof strat),
			table_clean(cli_str(doc, "deploy"), dep, sizeof dep));
	}
	cJSON_Delete(doc);
	return rc;
}

/* ---- apps delete ---- */

static const struct args_opt delete_opts[] = {
	{"confirm", 0, ARGS_VALUE, "APP", "the app's name again (needed when not on a terminal)"},
};

static const struct cli_cmd delete_cmd = {
	.name = "apps delete",
	.synopsis = "apps delete <app> [--confirm <app>]",
	.description = "Deletes an app with its builds, releases, rollouts and logs, and has "
		       "every agent remove its containers. Asks for the name on a terminal; "
		       "scripts pass --confirm with the same name. An app linked to GitLab is "
		       "refused: `apps unlink` it first. Needs an admin key.",
	.opts = delete_opts,
	.nopts = 1,
	.min_pos = 1,
	.max_pos = 1,
};

static int apps_delete(struct cli *cli, int argc, char **argv)
{
	struct args a;
	int rc;
	const char *app = cli_parse_app(cli, &delete_cmd, argc, argv, &a, &rc);
	if (!app)
		return rc;
	const char *confirm = args_get(&a, "confirm");
	char typed[64];
	if (!confirm) {
		if (!isatty(STDIN_FILENO))
			return cli_usage_error(cli, &delete_cmd,
					       "not on a terminal: confirm with --confirm %s", app);
		fprintf(stderr, "This deletes app %s with its builds, releases and logs, and "
				"stops it on every instance.\nType the app's name to confirm: ",
			app);
		fflush(stderr);
		if (!fgets(typed, sizeof typed, stdin))
			typed[0] = '\0';
		typed[strcspn(typed, "\r\n")] = '\0';
		confirm = typed;
	}
	if (strcmp(confirm, app) != 0)
		return cli_failf(cli, "the confirmation does not match %s: nothing deleted", app);
	if ((rc = cli_connect(cli)) != CLI_OK)
		return rc;
	char path[128];
	if (cli_path(path, sizeof path, "/v1/apps/%s", app) < 0)
		return cli_failf(cli, "app name too long");
	cJSON *doc;
	struct err err;
	if (client_json(&cli->client, "DELETE", path, NULL, &doc, &err) < 0)
		return cli_fail(cli, &err);
	int64_t n = cli_int(doc, "remove_jobs");
	fprintf(cli->out, "Deleted app %s (%lld instance%s told to remove it).\n", app,
		(long long)n, n == 1 ? "" : "s");
	cJSON_Delete(doc);
	return CLI_OK;
}

/* ---- apps info ---- */

static const struct cli_cmd info_cmd = {
	.name = "apps info",
	.synopsis = "apps info <app> [--json]",
	.description = "Shows an app: its status, desired release, settings, where its fleet "
		       "stands and its latest rollout.",
	.opts = json_only,
	.nopts = 1,
	.min_pos = 1,
	.max_pos = 1,
};

#define FIELD_W 12

static void print_info(struct cli *cli, const cJSON *doc)
{
	char buf[512], t1[TABLE_TIME_MAX], t2[TABLE_TIME_MAX];
	int64_t now = cli_now_ms();
	cli_field(cli, FIELD_W, "App", cli_str(doc, "name"));
	cli_field(cli, FIELD_W, "Status", cli_str(doc, "status"));
	cli_field(cli, FIELD_W, "Release", cli_str(doc, "release"));
	snprintf(buf, sizeof buf, "%lld", (long long)cli_int(doc, "generation"));
	cli_field(cli, FIELD_W, "Generation", buf);
	cli_field(cli, FIELD_W, "Fleet", cli_str(doc, "fleet"));
	cli_field(cli, FIELD_W, "Strategy", cli_str(doc, "strategy"));
	const char *branch = cli_str(doc, "branch");
	snprintf(buf, sizeof buf, "%s (%s)", cli_str(doc, "deploy") ? cli_str(doc, "deploy") : "?",
		 branch ? branch : "the project's default branch");
	cli_field(cli, FIELD_W, "Deploys on", buf);
	const cJSON *linked = cJSON_GetObjectItemCaseSensitive(doc, "linked");
	const char *project = cli_str(doc, "project");
	snprintf(buf, sizeof buf, "%s%s%s", cJSON_IsTrue(linked) ? "linked" : "not linked",
		 project ? " to " : "", project ? project : "");
	cli_field(cli, FIELD_W, "GitLab", buf);
	cli_field(cli, FIELD_W, "Repository", cli_str(doc, "repo_url"));
	cli_field(cli, FIELD_W, "Created", table_ago(cli_int(doc, "created_ms"), now, t1));
	const cJSON *agents = cJSON_GetObjectItemCaseSensitive(doc, "agents");
	snprintf(buf, sizeof buf, "%lld converged, %lld pending, %lld failed",
		 (long long)cli_int(agents, "converged"), (long long)cli_int(agents, "pending"),
		 (long long)cli_int(agents, "failed"));
	cli_field(cli, FIELD_W, "Agents", buf);
	struct buf sc;
	buf_init(&sc, 4096);
	const cJSON *s;
	cJSON_ArrayForEach(s, cJSON_GetObjectItemCaseSensitive(doc, "scale"))
	{
		buf_printf(&sc, "%s%s=%lld", sc.len ? " " : "", s->string,
			   (long long)cli_int(s, "count"));
		int64_t mem = cli_int(s, "memory_mb");
		if (mem > 0)
			buf_printf(&sc, "(%lldMB)", (long long)mem);
	}
	cli_field(cli, FIELD_W, "Scale", sc.len ? sc.data : "defaults from slipway.yml");
	buf_free(&sc);
	const cJSON *ro = cJSON_GetObjectItemCaseSensitive(doc, "rollout");
	if (cJSON_IsObject(ro)) {
		int64_t end = cli_int(ro, "ended_ms");
		int64_t start = cli_int(ro, "started_ms");
		const char *reason = cli_str(ro, "reason");
		snprintf(buf, sizeof buf, "%s of %s (%s): %s, started %s, %s %s%s%s",
			 cli_str(ro, "id") ? cli_str(ro, "id") : "?",
			 cli_str(ro, "release") ? cli_str(ro, "release") : "?",
			 cli_str(ro, "trigger") ? cli_str(ro, "trigger") : "?",
			 cli_str(ro, "state") ? cli_str(ro, "state") : "?",
			 table_ago(start, now, t1), end ? "took" : "running for",
			 table_duration((end ? end : now) - start, t2), reason ? ": " : "",
			 reason ? reason : "");
		cli_field(cli, FIELD_W, "Rollout", buf);
	} else {
		cli_field(cli, FIELD_W, "Rollout", "none yet");
	}
}

static int apps_info(struct cli *cli, int argc, char **argv)
{
	struct args a;
	int rc;
	const char *app = cli_parse_app(cli, &info_cmd, argc, argv, &a, &rc);
	if (!app)
		return rc;
	if ((rc = cli_connect(cli)) != CLI_OK)
		return rc;
	char path[128];
	if (cli_path(path, sizeof path, "/v1/apps/%s", app) < 0)
		return cli_failf(cli, "app name too long");
	cJSON *doc;
	struct err err;
	if (client_json(&cli->client, "GET", path, NULL, &doc, &err) < 0)
		return cli_fail(cli, &err);
	if (args_has(&a, "json"))
		rc = cli_print_json(cli, doc);
	else
		print_info(cli, doc);
	cJSON_Delete(doc);
	return rc;
}

/* ---- apps link / unlink ---- */

static const struct args_opt link_opts[] = {
	{"gitlab-url", 0, ARGS_VALUE, "URL", "the GitLab instance (https://gitlab.example.com)"},
	{"project", 0, ARGS_VALUE, "GROUP/NAME", "the project's path"},
	{"token-file", 0, ARGS_VALUE, "FILE",
	 "a file holding a GitLab token with the api scope (Maintainer)"},
	{"branch", 0, ARGS_VALUE, "BRANCH", "the branch that deploys (default: the project's)"},
	{"deploy", 0, ARGS_VALUE, "WHEN", "what deploys: branch | tags | pipeline"},
	CLI_OPT_JSON,
};

static const struct cli_cmd link_cmd = {
	.name = "apps link",
	.synopsis = "apps link <app> --gitlab-url URL --project GROUP/NAME --token-file FILE "
		    "[--branch B] [--deploy tags|branch|pipeline]",
	.description = "Links an app to a GitLab project: the coordinator registers a read-only "
		       "deploy key and a webhook (pushes, tags or pipelines) on the project, so "
		       "pushes deploy. The token is read from a file (never from the command "
		       "line, where `ps` would show it), sent once, and kept sealed by the "
		       "coordinator. Linking again is harmless. Needs an admin key.",
	.opts = link_opts,
	.nopts = sizeof link_opts / sizeof link_opts[0],
	.min_pos = 1,
	.max_pos = 1,
};

/* What POST /v1/apps/{app}/link answered (docs/api.md), for people. */
static void print_link(struct cli *cli, const char *app, const cJSON *doc)
{
	char project[300], url[300], buf[600];
	fprintf(cli->out, "Linked %s to %s on %s.\n", app,
		table_clean(cli_str(doc, "project"), project, sizeof project),
		table_clean(cli_str(doc, "gitlab_url"), url, sizeof url));
	cli_field(cli, FIELD_W, "Repository", cli_str(doc, "repo_url"));
	const char *deploy = cli_str(doc, "deploy"), *branch = cli_str(doc, "branch");
	const char *def = cli_str(doc, "default_branch");
	if (deploy && !strcmp(deploy, "branch"))
		snprintf(buf, sizeof buf, "pushes to %s%s", branch ? branch : def ? def : "?",
			 branch ? "" : " (the project's default branch)");
	else
		snprintf(buf, sizeof buf, "%s", deploy && !strcmp(deploy, "tags") ? "tags"
						: deploy ? "pipelines that succeed" : "-");
	cli_field(cli, FIELD_W, "Deploys on", buf);
	const cJSON *key = cJSON_GetObjectItemCaseSensitive(doc, "deploy_key");
	snprintf(buf, sizeof buf, "%s (GitLab id %lld, %s, read-only)",
		 cli_str(key, "fingerprint") ? cli_str(key, "fingerprint") : "?",
		 (long long)cli_int(key, "gitlab_id"),
		 cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(key, "created")) ? "added"
										: "already there");
	cli_field(cli, FIELD_W, "Deploy key", buf);
	const cJSON *hook = cJSON_GetObjectItemCaseSensitive(doc, "webhook");
	const char *filter = cli_str(hook, "branch_filter");
	snprintf(buf, sizeof buf, "GitLab id %lld, %s%s%s", (long long)cli_int(hook, "gitlab_id"),
		 cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(hook, "created")) ? "created"
										 : "brought up to date",
		 filter && *filter ? ", branch filter " : "", filter && *filter ? filter : "");
	cli_field(cli, FIELD_W, "Webhook", buf);
}

static int apps_link(struct cli *cli, int argc, char **argv)
{
	struct args a;
	int rc;
	const char *app = cli_parse_app(cli, &link_cmd, argc, argv, &a, &rc);
	if (!app)
		return rc;
	const char *url = args_get(&a, "gitlab-url"), *project = args_get(&a, "project");
	const char *token_file = args_get(&a, "token-file"), *deploy = args_get(&a, "deploy");
	if (!url || !project || !token_file)
		return cli_usage_error(cli, &link_cmd,
				       "--gitlab-url, --project and --token-file are required");
	if (deploy && strcmp(deploy, "branch") && strcmp(deploy, "tags") &&
	    strcmp(deploy, "pipeline"))
		return cli_usage_error(cli, &link_cmd, "--deploy: one of branch, tags, pipeline");
	struct err err;
	char *token = cliconf_read_key_file(token_file, &err);
	if (!token)
		return cli_fail(cli, &err);
	if ((rc = cli_connect(cli)) != CLI_OK) {
		free(token);
		return rc;
	}
	cJSON *body = cJSON_CreateObject();
	cJSON_AddStringToObject(body, "gitlab_url", url);
	cJSON_AddStringToObject(body, "project", project);
	cJSON_AddStringToObject(body, "token", token);
	if (args_get(&a, "branch"))
		cJSON_AddStringToObject(body, "branch", args_get(&a, "branch"));
	if (deploy)
		cJSON_AddStringToObject(body, "deploy", deploy);
	memset(token, 0, strlen(token));
	free(token);
	char path[128];
	cJSON *doc = NULL;
	if (cli_path(path, sizeof path, "/v1/apps/%s/link", app) < 0)
		rc = err_set(&err, "app name too long");
	else
		rc = client_json(&cli->client, "POST", path, body, &doc, &err);
	/* The request body held the token: clear it before it is freed. */
	cJSON *tok = cJSON_GetObjectItemCaseSensitive(body, "token");
	if (cJSON_IsString(tok))
		memset(tok->valuestring, 0, strlen(tok->valuestring));
	cJSON_Delete(body);
	if (rc < 0)
		return cli_fail(cli, &err);
	if (args_has(&a, "json")) {
		rc = cli_print_json(cli, doc);
		cJSON_Delete(doc);
		return rc;
	}
	print_link(cli, app, doc);
	cJSON_Delete(doc);
	return CLI_OK;
}

static const struct args_opt unlink_opts[] = {
	{"force", 0, ARGS_FLAG, NULL, "forget the link even when GitLab refuses to remove things"},
	CLI_OPT_JSON,
};

static const struct cli_cmd unlink_cmd = {
	.name = "apps unlink",
	.synopsis = "apps unlink <app> [--force]",
	.description = "Removes the app's GitLab webhook and deploy key (with the token stored "
		       "at link time) and forgets them. When GitLab refuses, nothing is forgotten "
		       "and the command can be repeated; --force forgets the link anyway and lists "
		       "what is left to remove by hand. Needs an admin key.",
	.opts = unlink_opts,
	.nopts = sizeof unlink_opts / sizeof unlink_opts[0],
	.min_pos = 1,
	.max_pos = 1,
};

static int apps_unlink(struct cli *cli, int argc, char **argv)
{
	struct args a;
	int rc;
	const char *app = cli_parse_app(cli, &unlink_cmd, argc, argv, &a, &rc);
	if (!app)
		return rc;
	if ((rc = cli_connect(cli)) != CLI_OK)
		return rc;
	char path[128];
	if (cli_path(path, sizeof path, args_has(&a, "force") ? "/v1/apps/%s/link?force=1"
							      : "/v1/apps/%s/link",
		     app) < 0)
		return cli_failf(cli, "app name too long");
	cJSON *doc;
	struct err err;
	if (client_json(&cli->client, "DELETE", path, NULL, &doc, &err) < 0)
		return cli_fail(cli, &err);
	if (args_has(&a, "json")) {
		rc = cli_print_json(cli, doc);
	} else if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(doc, "unlinked"))) {
		fprintf(cli->out, "%s was not linked to GitLab: nothing to do.\n", app);
	} else {
		int hook = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(doc, "webhook_removed"));
		int key = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(doc, "deploy_key_removed"));
		fprintf(cli->out, "Unlinked %s from GitLab (webhook %s, deploy key %s).\n", app,
			hook ? "removed" : "left", key ? "removed" : "left");
		const cJSON *w;
		cJSON_ArrayForEach(w, cJSON_GetObjectItemCaseSensitive(doc, "warnings"))
		{
			char clean[600];
			char *text = cJSON_IsString(w) ? NULL : cJSON_PrintUnformatted(w);
			fprintf(cli->out, "warning: %s\n",
				table_clean(text ? text : w->valuestring, clean, sizeof clean));
			free(text);
		}
	}
	cJSON_Delete(doc);
	return rc;
}

int commands_apps(struct cli *cli, int argc, char **argv)
{
	if (argc > 0) {
		if (!strcmp(argv[0], "create"))
			return apps_create(cli, argc - 1, argv + 1);
		if (!strcmp(argv[0], "delete"))
			return apps_delete(cli, argc - 1, argv + 1);
		if (!strcmp(argv[0], "info"))
			return apps_info(cli, argc - 1, argv + 1);
		if (!strcmp(argv[0], "link"))
			return apps_link(cli, argc - 1, argv + 1);
		if (!strcmp(argv[0], "unlink"))
			return apps_unlink(cli, argc - 1, argv + 1);
	}
	return apps_list(cli, argc, argv);
}
