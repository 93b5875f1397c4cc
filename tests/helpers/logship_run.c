/*
 * logship_run: runs the log shipper and the health metrics (agent/logship.h,
 * agent/metrics.h) on their own against the real Docker engine, for the
 * integration tests and the throughput benchmark, without the rest of the
 * agent (deployer, proxy, coordinator client).
 *
 *   logship_run --state DIR --instance ID [--docker SOCK] [--label k=v]...
 *               [--cloudwatch URL --region R] | [--coordinator URL]
 *               [--flush-ms N] [--spool-max BYTES] [--memory-max BYTES]
 *               [--retention-days N] [--prefix P]
 *               [--metrics-listen ADDR] [--metrics-interval-ms N]
 *
 * CloudWatch credentials come from aws_credentials (environment, shared
 * file). With --coordinator, the agent id and token come from
 * DIR/identity.json (as a registered agent wrote it), read once at start.
 * SIGTERM or SIGINT stop it cleanly (last checkpoints written); SIGKILL is
 * what the crash tests use. Logs go to stderr.
 */
#include <ev.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "aws_credentials.h"
#include "coord_client.h"
#include "cwlogs.h"
#include "docker.h"
#include "http_client.h"
#include "json.h"
#include "log.h"
#include "logdest.h"
#include "logship.h"
#include "metrics.h"

struct identity {
	char agent_id[128];
	char token[600];
};

/* The identity file a registered agent keeps; "" when it is missing or bad. */
static void read_identity(const char *dir, struct identity *id)
{
	char path[4096], text[16384];
	snprintf(path, sizeof path, "%s/%s", dir, COORD_IDENTITY_FILE);
	FILE *f = fopen(path, "r");
	size_t n = f ? fread(text, 1, sizeof text, f) : 0;
	if (f)
		fclose(f);
	cJSON *doc = n ? json_parse(text, n, sizeof text, NULL) : NULL;
	const char *a = NULL, *t = NULL;
	if (doc && json_get_string(doc, NULL, "agent_id", sizeof id->agent_id - 1, &a, NULL) == 0 &&
	    json_get_string(doc, NULL, "token", sizeof id->token - 1, &t, NULL) == 0) {
		snprintf(id->agent_id, sizeof id->agent_id, "%s", a);
		snprintf(id->token, sizeof id->token, "%s", t);
		log_redact_add(id->token);
	}
	cJSON_Delete(doc);
}

static void identity_of(void *ctx, const char **agent_id, const char **token)
{
	const struct identity *id = ctx;
	*agent_id = id->agent_id;
	*token = id->token;
}

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
	(void)revents;
	log_info("logship_run.stop", "signal=%d", w->signum);
	ev_break(loop, EVBREAK_ALL);
}

int main(int argc, char **argv)
{
	const char *state = NULL, *instance = NULL, *sock = DOCKER_DEFAULT_SOCKET;
	const char *cw_url = NULL, *region = NULL, *coord = NULL, *prefix = NULL;
	const char *metrics_listen = NULL;
	const char *labels[AGENT_LABELS_MAX + 1] = {0};
	size_t nlabels = 0;
	int64_t flush_ms = 0, metrics_ms = 0, retention = 0;
	uint64_t spool_max = 0, memory_max = 0;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!v) {
			fprintf(stderr, "logship_run: %s needs a value\n", a);
			return 2;
		}
		i++;
		if (!strcmp(a, "--state"))
			state = v;
		else if (!strcmp(a, "--instance"))
			instance = v;
		else if (!strcmp(a, "--docker"))
			sock = v;
		else if (!strcmp(a, "--label") && nlabels < AGENT_LABELS_MAX)
			labels[nlabels++] = v;
		else if (!strcmp(a, "--cloudwatch"))
			cw_url = v;
		else if (!strcmp(a, "--region"))
			region = v;
		else if (!strcmp(a, "--coordinator"))
			coord = v;
		else if (!strcmp(a, "--prefix"))
			prefix = v;
		else if (!strcmp(a, "--flush-ms"))
			flush_ms = strtoll(v, NULL, 10);
		else if (!strcmp(a, "--spool-max"))
			spool_max = strtoull(v, NULL, 10);
		else if (!strcmp(a, "--memory-max"))
			memory_max = strtoull(v, NULL, 10);
		else if (!strcmp(a, "--retention-days"))
			retention = strtoll(v, NULL, 10);
		else if (!strcmp(a, "--metrics-listen"))
			metrics_listen = v;
		else if (!strcmp(a, "--metrics-interval-ms"))
			metrics_ms = strtoll(v, NULL, 10);
		else {
			fprintf(stderr, "logship_run: unknown option %s\n", a);
			return 2;
		}
	}
	if (!state || !instance || (!cw_url && !coord) || (cw_url && !region)) {
		fprintf(stderr, "usage: logship_run --state DIR --instance ID (--cloudwatch URL "
				"--region R | --coordinator URL) [options]\n");
		return 2;
	}
	const char *lvl = getenv("LOGSHIP_LOG_LEVEL");
	enum log_level level = LOG_LEVEL_INFO;
	if (lvl)
		log_level_parse(lvl, &level);
	log_init("logship_run", level, 0);
	signal(SIGPIPE, SIG_IGN);
	struct ev_loop *loop = ev_default_loop(0);
	const char *collect = getenv("LOGSHIP_IO_COLLECT_MS");
	if (collect)
		ev_set_io_collect_interval(loop, strtod(collect, NULL) / 1000.0);
	struct err err = {{0}};
	struct http_client *http = http_client_new(loop);
	struct docker_opts dopts = {.socket_path = sock};
	struct docker *docker = http ? docker_new(loop, http, &dopts) : NULL;
	struct aws_credentials_provider *creds = NULL;
	struct cwlogs *cw = NULL;
	struct logdest *dest = NULL;
	struct logship *ls = NULL;
	struct metrics *m = NULL;
	int rc = 1;
	if (!docker)
		goto out;
	if (cw_url) {
		struct aws_credentials_opts co = {.no_imds = 1};
		struct cwlogs_opts cwo = {.region = region, .endpoint = cw_url,
					  .retention_days = (int)retention, .timeout_ms = 10000};
		if (!(creds = aws_credentials_new(loop, http, &co, &err)) ||
		    !(cw = cwlogs_new(loop, http, creds, &cwo, &err)) || !(dest = logdest_cloudwatch(cw)))
			goto out;
	} else {
		static struct identity ident;
		read_identity(state, &ident);
		struct logdest_coord_opts lo = {.loop = loop, .http = http, .url = coord,
						.identity = identity_of, .identity_ctx = &ident,
						.retry_base_ms = 200, .retry_cap_ms = 2000};
		if (!(dest = logdest_coordinator(&lo, &err)))
			goto out;
	}
	struct logship_opts lo = {
		.loop = loop,
		.docker = docker,
		.dest = dest,
		.state_dir = state,
		.instance_id = instance,
		.group_prefix = prefix,
		.labels = labels,
		.flush_interval_ms = flush_ms,
		.spool_max = spool_max,
		.memory_max = memory_max,
		.max_age_ms = retention > 0 ? retention * 86400000 : 0,
		.retry_base_ms = 200,
		.retry_cap_ms = 2000,
	};
	if (!(ls = logship_new(&lo, &err)))
		goto out;
	struct metrics_opts mo = {
		.loop = loop,
		.docker = docker,
		.ship = ls,
		.coord = cw ? NULL : dest,
		.listen = metrics_listen,
		.interval_ms = metrics_ms,
		.instance_id = instance,
		.group_prefix = prefix,
		.labels = labels,
	};
	if (!(m = metrics_new(&mo, &err)))
		goto out;
	logship_start(ls);
	metrics_start(m);
	if (metrics_listen) {
		printf("metrics %d\n", metrics_port(m));
		fflush(stdout);
	}
	ev_signal sigterm, sigint;
	ev_signal_init(&sigterm, on_signal, SIGTERM);
	ev_signal_init(&sigint, on_signal, SIGINT);
	ev_signal_start(loop, &sigterm);
	ev_signal_start(loop, &sigint);
	log_info("logship_run.start", "instance=%s destination=%s", instance, cw_url ? cw_url : coord);
	ev_run(loop, 0);
	ev_signal_stop(loop, &sigterm);
	ev_signal_stop(loop, &sigint);
	rc = 0;
out:
	if (rc)
		log_error("logship_run.failed", "error=\"%s\"", err.msg[0] ? err.msg : "out of memory");
	metrics_free(m);
	logship_free(ls);
	logdest_free(dest);
	cwlogs_free(cw);
	aws_credentials_free(creds);
	docker_free(docker);
	http_client_free(http);
	return rc;
}
