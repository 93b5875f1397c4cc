#include "commands_env.h"

#include <stdlib.h>
#include <string.h>

#include "table.h"
#include "watch.h"

/* ---- env (show) ---- */

static const struct args_opt show_opts[] = {CLI_OPT_JSON};

static const struct cli_cmd show_cmd = {
	.name = "env",
	.synopsis = "env <app> [--json] | env set <app> K=V... | env unset <app> K...",
	.description = "Prints the app's environment, one NAME=value per line, sorted. The "
		       "values are secrets: this needs a deploy key.",
	.opts = show_opts,
	.nopts = 1,
	.min_pos = 1,
	.max_pos = 1,
};

void commands_env_print_var(FILE *out, const char *name, const char *value)
{
	int plain = value[0] != '"';
	for (const unsigned char *p = (const unsigned char *)value; plain && *p; p++)
		plain = *p >= 0x20 && *p != 0x7F;
	if (plain) {
		fprintf(out, "%s=%s\n", name, value);
		return;
	}
	cJSON *s = cJSON_CreateString(value);
	char *quoted = s ? cJSON_PrintUnformatted(s) : NULL;
	fprintf(out, "%s=%s\n", name, quoted ? quoted : "\"?\"");
	free(quoted);
	cJSON_Delete(s);
}

static int by_name(const void *a, const void *b)
{
	const cJSON *x = *(const cJSON *const *)a, *y = *(const cJSON *const *)b;
	return strcmp(x->string, y->string);
}

static int env_show(struct cli *cli, int argc, char **argv)
{
	struct args a;
	int rc;
	const char *app = cli_parse_app(cli, &show_cmd, argc, argv, &a, &rc);
	if (!app)
		return rc;
	if ((rc = cli_connect(cli)) != CLI_OK)
		return rc;
	char path[128];
	if (cli_path(path, sizeof path, "/v1/apps/%s/env", app) < 0)
		return cli_failf(cli, "app name too long");
	cJSON *doc;
	if ((rc = cli_get_shown(cli, &a, path, &doc)) >= 0)
		return rc;
	const cJSON *env = cJSON_GetObjectItemCaseSensitive(doc, "environment");
	int n = cJSON_GetArraySize(env);
	const cJSON **vars = calloc((size_t)n + 1, sizeof *vars);
	if (!vars) {
		cJSON_Delete(doc);
		return cli_failf(cli, "out of memory");
	}
	int k = 0;
	const cJSON *v;
	cJSON_ArrayForEach(v, env)
	{
		if (cJSON_IsString(v) && k < n)
			vars[k++] = v;
	}
	qsort(vars, (size_t)k, sizeof *vars, by_name);
	for (int i = 0; i < k; i++)
		commands_env_print_var(cli->out, vars[i]->string, vars[i]->valuestring);
	free(vars);
	cJSON_Delete(doc);
	return CLI_OK;
}

/* ---- env set / unset ---- */

static const struct args_opt change_opts[] = {
	{"promote", 'p', ARGS_FLAG, NULL, "deploy the new release at once"},
	{"wait", 'w', ARGS_FLAG, NULL, "with --promote: follow the rollout to its end"},
	CLI_OPT_TIMEOUT,
	CLI_OPT_JSON,
};

static const struct cli_cmd set_cmd = {
	.name = "env set",
	.synopsis = "env set <app> NAME=value... [--promote [--wait]]",
	.description = "Sets variables. Makes a new release from the desired one with the new "
		       "environment; --promote deploys it. Names: [A-Za-z_][A-Za-z0-9_]*. Needs "
		       "a deploy key.",
	.opts = change_opts,
	.nopts = sizeof change_opts / sizeof change_opts[0],
	.min_pos = 2,
	.max_pos = -1,
};

static const struct cli_cmd unset_cmd = {
	.name = "env unset",
	.synopsis = "env unset <app> NAME... [--promote [--wait]]",
	.description = "Removes variables. Makes a new release from the desired one without them; "
		       "--promote deploys it. Needs a deploy key.",
	.opts = change_opts,
	.nopts = sizeof change_opts / sizeof change_opts[0],
	.min_pos = 2,
	.max_pos = -1,
};

static int valid_var_name(const char *s, size_t len)
{
	if (len == 0 || !((s[0] >= 'A' && s[0] <= 'Z') || (s[0] >= 'a' && s[0] <= 'z') ||
			  s[0] == '_'))
		return 0;
	for (size_t i = 1; i < len; i++) {
		char c = s[i];
		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '_'))
			return 0;
	}
	return 1;
}

static int env_change(struct cli *cli, const struct cli_cmd *spec, int set, int argc,
		      char **argv)
{
	struct args a;
	int rc;
	const char *app = cli_parse_app(cli, spec, argc, argv, &a, &rc);
	if (!app)
		return rc;
	int64_t timeout;
	struct err err;
	if ((rc = watch_timeout(cli, spec, &a, &timeout)) != CLI_OK)
		return rc;
	if (args_has(&a, "wait") && !args_has(&a, "promote"))
		return cli_usage_error(cli, spec, "--wait needs --promote (nothing rolls out "
						  "without it)");
	cJSON *body = cJSON_CreateObject();
	cJSON *vars = set ? cJSON_AddObjectToObject(body, "set") : cJSON_AddArrayToObject(body,
											     "unset");
	struct buf names;
	buf_init(&names, 4096);
	for (int i = 1; i < a.npos; i++) {
		const char *arg = a.pos[i];
		const char *eq = strchr(arg, '=');
		size_t nlen = set ? (eq ? (size_t)(eq - arg) : 0) : strlen(arg);
		char shown[80];
		if ((set && !eq) || !valid_var_name(arg, nlen) || (!set && eq)) {
			cJSON_Delete(body);
			buf_free(&names);
			return cli_usage_error(cli, spec, "'%s': expected %s", table_clean(arg, shown,
											sizeof shown),
					       set ? "NAME=value" : "NAME");
		}
		char *name = strndup(arg, nlen);
		if (!name) {
			cJSON_Delete(body);
			buf_free(&names);
			return cli_failf(cli, "out of memory");
		}
		if (set) {
			cJSON_DeleteItemFromObjectCaseSensitive(vars, name); /* the last one wins */
			cJSON_AddStringToObject(vars, name, eq + 1);
		} else {
			cJSON_AddItemToArray(vars, cJSON_CreateString(name));
		}
		buf_printf(&names, "%s%s", names.len ? ", " : "", name);
		free(name);
	}
	cJSON_AddBoolToObject(body, "promote", args_has(&a, "promote"));
	if ((rc = cli_connect(cli)) != CLI_OK) {
		cJSON_Delete(body);
		buf_free(&names);
		return rc;
	}
	char path[128];
	cJSON *doc = NULL;
	if (cli_path(path, sizeof path, "/v1/apps/%s/env", app) < 0)
		rc = err_set(&err, "app name too long");
	else
		rc = client_json(&cli->client, "PATCH", path, body, &doc, &err);
	cJSON_Delete(body);
	if (rc < 0) {
		buf_free(&names);
		return cli_fail(cli, &err);
	}
	char what[600];
	snprintf(what, sizeof what, "%s %s on %s", set ? "Set" : "Unset",
		 names.data ? names.data : "", app);
	buf_free(&names);
	return watch_answer(cli, &a, app, doc, what, timeout);
}

int commands_env(struct cli *cli, int argc, char **argv)
{
	if (argc > 0 && !strcmp(argv[0], "set"))
		return env_change(cli, &set_cmd, 1, argc - 1, argv + 1);
	if (argc > 0 && !strcmp(argv[0], "unset"))
		return env_change(cli, &unset_cmd, 0, argc - 1, argv + 1);
	return env_show(cli, argc, argv);
}

/* ---- scale ---- */

static const struct args_opt scale_opts[] = {
	{"count", 'c', ARGS_VALUE, "N", "containers of the service on each instance (0-100)"},
	{"memory", 'm', ARGS_VALUE, "MB", "memory limit per container: 512, 512M, 1G; 0: none"},
	{"wait", 'w', ARGS_FLAG, NULL, "follow the rollout to its end"},
	CLI_OPT_TIMEOUT,
	CLI_OPT_JSON,
};

static const struct cli_cmd scale_cmd = {
	.name = "scale",
	.synopsis = "scale <app> <service> --count N [--memory MB] [--wait]",
	.description = "Sets a service's count (per instance) and memory limit. Kept for every "
		       "later release and applied at once by a new release. Needs a deploy key.",
	.opts = scale_opts,
	.nopts = sizeof scale_opts / sizeof scale_opts[0],
	.min_pos = 2,
	.max_pos = 2,
};

int commands_scale(struct cli *cli, int argc, char **argv)
{
	struct args a;
	int rc;
	const char *app = cli_parse_app(cli, &scale_cmd, argc, argv, &a, &rc);
	if (!app)
		return rc;
	const char *service = a.pos[1];
	struct err err;
	if (cli_name_check("service", service, &err) < 0)
		return cli_usage_error(cli, &scale_cmd, "%s", err.msg);
	int64_t count, memory = -1, timeout;
	if (!args_get(&a, "count"))
		return cli_usage_error(cli, &scale_cmd, "--count is required");
	if (args_int("--count", args_get(&a, "count"), 0, 100, &count, &err) < 0 ||
	    (args_get(&a, "memory") &&
	     args_memory_mb("--memory", args_get(&a, "memory"), &memory, &err) < 0))
		return cli_usage_error(cli, &scale_cmd, "%s", err.msg);
	if ((rc = watch_timeout(cli, &scale_cmd, &a, &timeout)) != CLI_OK)
		return rc;
	if (memory > 1048576 || (memory > 0 && memory < 6))
		return cli_usage_error(cli, &scale_cmd, "--memory: 0 (no limit) or 6M..1024G");
	if ((rc = cli_connect(cli)) != CLI_OK)
		return rc;
	cJSON *body = cJSON_CreateObject();
	cJSON_AddStringToObject(body, "service", service);
	cJSON_AddNumberToObject(body, "count", (double)count);
	if (memory >= 0)
		cJSON_AddNumberToObject(body, "memory_mb", (double)memory);
	char path[128];
	cJSON *doc = NULL;
	if (cli_path(path, sizeof path, "/v1/apps/%s/scale", app) < 0)
		rc = err_set(&err, "app name too long");
	else
		rc = client_json(&cli->client, "POST", path, body, &doc, &err);
	cJSON_Delete(body);
	if (rc < 0)
		return cli_fail(cli, &err);
	char what[256], mem[64] = "";
	if (memory > 0)
		snprintf(mem, sizeof mem, " with %lld MB each", (long long)memory);
	else if (memory == 0)
		snprintf(mem, sizeof mem, " without a memory limit");
	snprintf(what, sizeof what, "Scaled %s/%s to %lld%s", app, service, (long long)count, mem);
	return watch_answer(cli, &a, app, doc, what, timeout);
}
