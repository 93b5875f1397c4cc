#include "commands_logs.h"

#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "clock.h"
#include "json.h"
#include "table.h"

#define LINE_MAX_BYTES ((size_t)4 << 20)

static const struct args_opt logs_opts[] = {
	{"service", 's', ARGS_VALUE, "SERVICE", "only this service"},
	{"since", 0, ARGS_VALUE, "WHEN", "10m, 2h, 1d, epoch milliseconds or an RFC 3339 time"},
	{"follow", 'f', ARGS_FLAG, NULL, "keep printing new output until interrupted"},
	{"limit", 'n', ARGS_VALUE, "N", "at most the newest N events first (1-10000, default 1000)"},
	{"json", 0, ARGS_FLAG, NULL, "the coordinator's JSON (NDJSON with --follow)"},
};

static const struct cli_cmd logs_cmd = {
	.name = "logs",
	.synopsis = "logs <app> [--service S] [--since 10m] [--follow] [--limit N] [--json]",
	.description = "Prints an app's container output (stdout and stderr) as shipped by the "
		       "agents, oldest first.",
	.opts = logs_opts,
	.nopts = sizeof logs_opts / sizeof logs_opts[0],
	.min_pos = 1,
	.max_pos = 1,
};

void commands_logs_print_event(FILE *out, const cJSON *ev)
{
	char ts[25], service[64], raw[16], container[16];
	clock_format_rfc3339(cli_int(ev, "ts_ms"), ts);
	table_clean(cli_str(ev, "service"), service, sizeof service);
	snprintf(raw, sizeof raw, "%.12s", cli_str(ev, "container") ? cli_str(ev, "container") : "");
	table_clean(raw, container, sizeof container);
	const char *msg = cli_str(ev, "message");
	size_t n = msg ? strlen(msg) : 0;
	char small[512];
	char *clean = n < sizeof small ? small : malloc(n + 1);
	if (!clean)
		return;
	table_clean(msg, clean, n + 1);
	fprintf(out, "%s %s[%s]: %s\n", ts, service[0] ? service : "?", container, clean);
	if (clean != small)
		free(clean);
}

struct follow {
	struct cli *cli;
	struct buf line;
	bool json;
	bool failed;
};

static int follow_line(struct follow *f, const char *line, size_t len)
{
	if (len == 0)
		return 0;
	if (f->json) {
		fwrite(line, 1, len, f->cli->out);
		fputc('\n', f->cli->out);
	} else {
		cJSON *ev = json_parse(line, len, LINE_MAX_BYTES, NULL);
		if (ev)
			commands_logs_print_event(f->cli->out, ev);
		cJSON_Delete(ev);
	}
	return 0;
}

static int follow_data(const char *data, size_t len, void *arg)
{
	struct follow *f = arg;
	size_t start = 0;
	for (size_t i = 0; i < len; i++) {
		if (data[i] != '\n')
			continue;
		if (f->line.len) {
			if (buf_append(&f->line, data + start, i - start) < 0)
				goto too_long;
			follow_line(f, f->line.data, f->line.len);
			buf_reset(&f->line);
		} else {
			follow_line(f, data + start, i - start);
		}
		start = i + 1;
	}
	if (start < len && buf_append(&f->line, data + start, len - start) < 0)
		goto too_long;
	fflush(f->cli->out);
	if (ferror(f->cli->out)) {
		f->failed = true; /* stdout went away (`| head`): stop quietly */
		return -1;
	}
	return 0;
too_long:
	buf_reset(&f->line);
	cli_note(f->cli, "slipway: warning: an event longer than %zu bytes was skipped",
		 LINE_MAX_BYTES);
	return 0;
}

static int append_param(char *path, size_t cap, const char *name, const char *value)
{
	size_t n = strlen(path);
	int w = snprintf(path + n, cap - n, "%s%s=", strchr(path, '?') ? "&" : "?", name);
	if (w < 0 || (size_t)w >= cap - n)
		return -1;
	return client_escape(path, cap, value);
}

int commands_logs(struct cli *cli, int argc, char **argv)
{
	struct args a;
	int rc;
	const char *app = cli_parse_app(cli, &logs_cmd, argc, argv, &a, &rc);
	if (!app)
		return rc;
	struct err err;
	const char *service = args_get(&a, "service");
	if (service && cli_name_check("service", service, &err) < 0)
		return cli_usage_error(cli, &logs_cmd, "%s", err.msg);
	int64_t limit = 0;
	if (args_get(&a, "limit") &&
	    args_int("--limit", args_get(&a, "limit"), 1, 10000, &limit, &err) < 0)
		return cli_usage_error(cli, &logs_cmd, "%s", err.msg);
	if ((rc = cli_connect(cli)) != CLI_OK)
		return rc;
	char path[512];
	/* The log route answers an unknown app with no events: ask about the app first. */
	if (cli_path(path, sizeof path, "/v1/apps/%s", app) < 0)
		return cli_failf(cli, "app name too long");
	if (client_json(&cli->client, "GET", path, NULL, NULL, &err) < 0)
		return cli_fail(cli, &err);
	cli_path(path, sizeof path, "/v1/apps/%s/logs", app);
	char lim[24];
	snprintf(lim, sizeof lim, "%lld", (long long)limit);
	if ((service && append_param(path, sizeof path, "service", service) < 0) ||
	    (args_get(&a, "since") &&
	     append_param(path, sizeof path, "since", args_get(&a, "since")) < 0) ||
	    (limit && append_param(path, sizeof path, "limit", lim) < 0))
		return cli_usage_error(cli, &logs_cmd, "arguments too long");
	bool json = args_has(&a, "json");
	if (args_has(&a, "follow")) {
		if (append_param(path, sizeof path, "follow", "1") < 0)
			return cli_usage_error(cli, &logs_cmd, "arguments too long");
		struct follow f = {.cli = cli, .json = json};
		buf_init(&f.line, LINE_MAX_BYTES);
		rc = client_stream(&cli->client, path, 0, follow_data, &f, &err);
		buf_free(&f.line);
		if (rc < 0)
			return cli_fail(cli, &err);
		if (f.failed)
			return CLI_OK;
		return cli_failf(cli, "the coordinator ended the log stream");
	}
	cJSON *doc;
	if (client_json(&cli->client, "GET", path, NULL, &doc, &err) < 0)
		return cli_fail(cli, &err);
	if (json) {
		rc = cli_print_json(cli, doc);
	} else {
		const cJSON *ev;
		cJSON_ArrayForEach(ev, cJSON_GetObjectItemCaseSensitive(doc, "events"))
			commands_logs_print_event(cli->out, ev);
	}
	cJSON_Delete(doc);
	return rc;
}
