#include "cli.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "clock.h"
#include "table.h"

void cli_init(struct cli *cli)
{
	memset(cli, 0, sizeof *cli);
	cli->out = stdout;
	cli->err = stderr;
	cli->client.pipe_fd[0] = cli->client.pipe_fd[1] = -1;
}

void cli_close(struct cli *cli)
{
	if (cli->connected)
		client_close(&cli->client);
	cli->connected = false;
	cliconf_free(&cli->conf);
}

bool cli_parse(struct cli *cli, const struct cli_cmd *spec, int argc, char **argv,
	       struct args *a, int *rc)
{
	struct err err;
	if (args_parse(spec->opts, spec->nopts, argc, argv, a, &err) < 0) {
		*rc = cli_usage_error(cli, spec, "%s", err.msg);
		return false;
	}
	if (a->help) {
		args_usage(cli->out, spec->synopsis, spec->description, spec->opts, spec->nopts);
		*rc = CLI_OK;
		return false;
	}
	if (a->npos < spec->min_pos) {
		*rc = cli_usage_error(cli, spec, "missing arguments");
		return false;
	}
	if (spec->max_pos >= 0 && a->npos > spec->max_pos) {
		char shown[64];
		*rc = cli_usage_error(cli, spec, "unexpected argument '%s'",
				      table_clean(a->pos[spec->max_pos], shown, sizeof shown));
		return false;
	}
	return true;
}

int cli_load_config(struct cli *cli)
{
	if (cli->conf_loaded)
		return CLI_OK;
	struct err err;
	if (cliconf_load(&cli->conf, cli->err, &err) < 0)
		return cli_fail(cli, &err);
	cli->conf_loaded = true;
	return CLI_OK;
}

int cli_connect(struct cli *cli)
{
	if (cli->connected)
		return CLI_OK;
	int rc = cli_load_config(cli);
	if (rc != CLI_OK)
		return rc;
	if (!cli->conf.host) {
		fprintf(cli->err, "slipway: error: no coordinator: set SLIPWAY_HOST "
				  "(https://coordinator.example:8700) or run `slipway login`\n");
		return CLI_USAGE;
	}
	if (!cli->conf.api_key) {
		fprintf(cli->err, "slipway: error: no API key: set SLIPWAY_API_KEY (or "
				  "SLIPWAY_API_KEY_FILE) or run `slipway login`\n");
		return CLI_USAGE;
	}
	struct err err;
	if (client_init(&cli->client, cli->conf.host, cli->conf.api_key, cli->conf.ca_file,
			&err) < 0)
		return cli_fail(cli, &err);
	cli->client.key_from = cli->conf.key_from;
	cli->connected = true;
	return CLI_OK;
}

int cli_fail(struct cli *cli, const struct err *err)
{
	fflush(cli->out);
	if (client_interrupted) {
		fprintf(cli->err, "slipway: interrupted\n");
		return CLI_INTERRUPTED;
	}
	fprintf(cli->err, "slipway: error: %s\n", err->msg);
	return CLI_FAIL;
}

int cli_failf(struct cli *cli, const char *fmt, ...)
{
	struct err err;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err.msg, sizeof err.msg, fmt, ap);
	va_end(ap);
	return cli_fail(cli, &err);
}

int cli_usage_error(struct cli *cli, const struct cli_cmd *spec, const char *fmt, ...)
{
	char msg[ERR_MSG_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	fprintf(cli->err, "slipway %s: %s\nusage: slipway %s\n(see `slipway %s --help`)\n",
		spec->name, msg, spec->synopsis, spec->name);
	return CLI_USAGE;
}

void cli_note(struct cli *cli, const char *fmt, ...)
{
	fflush(cli->out);
	va_list ap;
	va_start(ap, fmt);
	vfprintf(cli->err, fmt, ap);
	va_end(ap);
	fputc('\n', cli->err);
	fflush(cli->err);
}

/* Two-space indentation and "key": value, like most tools print JSON (cJSON's
 * own formatting uses tabs). Scalars and keys are escaped by cJSON. */
static int pretty(struct buf *b, const cJSON *v, int depth)
{
	int is_obj = cJSON_IsObject(v);
	if (!is_obj && !cJSON_IsArray(v)) {
		char *text = cJSON_PrintUnformatted(v);
		int rc = text ? buf_append_str(b, text) : -1;
		free(text);
		return rc;
	}
	if (!v->child)
		return buf_append_str(b, is_obj ? "{}" : "[]");
	if (buf_append_str(b, is_obj ? "{\n" : "[\n") < 0)
		return -1;
	for (const cJSON *c = v->child; c; c = c->next) {
		if (buf_printf(b, "%*s", (depth + 1) * 2, "") < 0)
			return -1;
		if (is_obj) {
			cJSON *key = cJSON_CreateString(c->string ? c->string : "");
			char *k = key ? cJSON_PrintUnformatted(key) : NULL;
			int rc = k ? buf_printf(b, "%s: ", k) : -1;
			free(k);
			cJSON_Delete(key);
			if (rc < 0)
				return -1;
		}
		if (pretty(b, c, depth + 1) < 0 || buf_append_str(b, c->next ? ",\n" : "\n") < 0)
			return -1;
	}
	return buf_printf(b, "%*s%s", depth * 2, "", is_obj ? "}" : "]");
}

int cli_print_json(struct cli *cli, const cJSON *doc)
{
	struct buf b;
	buf_init(&b, CLIENT_MAX_ANSWER * 4);
	if (pretty(&b, doc, 0) < 0 || buf_append_byte(&b, '\n') < 0) {
		buf_free(&b);
		return cli_failf(cli, "out of memory");
	}
	fwrite(b.data, 1, b.len, cli->out);
	buf_free(&b);
	return CLI_OK;
}

const char *cli_parse_app(struct cli *cli, const struct cli_cmd *spec, int argc, char **argv,
			  struct args *a, int *rc)
{
	if (!cli_parse(cli, spec, argc, argv, a, rc))
		return NULL;
	return cli_app(cli, spec, a->pos[0], rc);
}

int cli_get_shown(struct cli *cli, const struct args *a, const char *path, cJSON **doc)
{
	struct err err;
	*doc = NULL;
	if (client_json(&cli->client, "GET", path, NULL, doc, &err) < 0)
		return cli_fail(cli, &err);
	if (!args_has(a, "json"))
		return -1;
	int rc = cli_print_json(cli, *doc);
	cJSON_Delete(*doc);
	*doc = NULL;
	return rc;
}

const char *cli_app_listing(struct cli *cli, const struct cli_cmd *spec, const struct args *a,
			    const char *what, char *path, size_t cap, int *rc)
{
	if (a->npos && args_has(a, "app")) {
		*rc = cli_usage_error(cli, spec, "give the app once");
		return NULL;
	}
	const char *app = cli_app(cli, spec, a->npos ? a->pos[0] : args_get(a, "app"), rc);
	if (!app)
		return NULL;
	int64_t limit = 50;
	struct err err;
	if (args_get(a, "limit") &&
	    args_int("--limit", args_get(a, "limit"), 1, 1000, &limit, &err) < 0) {
		*rc = cli_usage_error(cli, spec, "%s", err.msg);
		return NULL;
	}
	if ((*rc = cli_connect(cli)) != CLI_OK)
		return NULL;
	char lim[24], fmt[64];
	snprintf(lim, sizeof lim, "%lld", (long long)limit);
	snprintf(fmt, sizeof fmt, "/v1/apps/%%s/%s?limit=%%s", what);
	if (cli_path(path, cap, fmt, app, lim) < 0) {
		*rc = cli_failf(cli, "app name too long");
		return NULL;
	}
	return app;
}

int cli_print_table(struct cli *cli, struct table *t)
{
	int rc = t && table_print(t, cli->out) == 0 ? CLI_OK : cli_failf(cli, "could not print");
	table_free(t);
	return rc;
}

int cli_name_check(const char *what, const char *name, struct err *err)
{
	size_t n = strlen(name);
	int ok = n >= 1 && n <= 40 && name[0] >= 'a' && name[0] <= 'z';
	for (size_t i = 1; ok && i < n; i++)
		ok = (name[i] >= 'a' && name[i] <= 'z') || (name[i] >= '0' && name[i] <= '9') ||
		     name[i] == '-';
	if (!ok) {
		char shown[64];
		return err_set(err, "%s '%s': names are 1-40 of a-z, 0-9 and '-', starting with a "
				    "letter", what, table_clean(name, shown, sizeof shown));
	}
	return 0;
}

const char *cli_app(struct cli *cli, const struct cli_cmd *spec, const char *given, int *rc)
{
	const char *app = given;
	if (!app) {
		if ((*rc = cli_load_config(cli)) != CLI_OK)
			return NULL;
		app = cli->conf.app;
	}
	if (!app) {
		*rc = cli_usage_error(cli, spec, "which app? give --app APP or set SLIPWAY_APP");
		return NULL;
	}
	struct err err;
	if (cli_name_check("app", app, &err) < 0) {
		*rc = cli_usage_error(cli, spec, "%s", err.msg);
		return NULL;
	}
	return app;
}

const char *cli_str(const cJSON *obj, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
	return cJSON_IsString(v) ? v->valuestring : NULL;
}

int64_t cli_int(const cJSON *obj, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
	return cJSON_IsNumber(v) ? (int64_t)v->valuedouble : 0;
}

void cli_field(struct cli *cli, int width, const char *label, const char *value)
{
	char clean[1024];
	table_clean(value && *value ? value : "-", clean, sizeof clean);
	if (!*label) { /* a continuation line */
		fprintf(cli->out, "%*s%s\n", width + 1, "", clean);
		return;
	}
	int pad = width - (int)strlen(label);
	fprintf(cli->out, "%s:%*s%s\n", label, pad < 1 ? 1 : pad, "", clean);
}

int64_t cli_now_ms(void)
{
	return clock_wall_ms();
}

int cli_path(char *out, size_t cap, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	size_t o = 0;
	int rc = 0;
	if (cap == 0)
		rc = -1;
	else
		out[0] = '\0';
	for (const char *p = fmt; rc == 0 && *p; p++) {
		if (p[0] == '%' && p[1] == 's') {
			const char *seg = va_arg(ap, const char *);
			rc = client_escape(out, cap, seg ? seg : "");
			o = strlen(out);
			p++;
			continue;
		}
		if (o + 1 >= cap) {
			rc = -1;
			break;
		}
		out[o++] = *p;
		out[o] = '\0';
	}
	va_end(ap);
	return rc;
}
