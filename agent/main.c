/*
 * slipway-agent: the instance agent.
 *
 *   slipway-agent [--config FILE]           run the agent
 *   slipway-agent --check [--config FILE]   validate the configuration
 *   slipway-agent proxy [--config FILE]     run the proxy process (agent/proxy_main.h)
 *   slipway-agent version
 *   slipway-agent selftest                  internal checks that need no Docker
 *
 * Start-up order: configuration, state directory, the loop and its clients,
 * the journal (replayed into the deployer), then the proxy (spawned when none
 * answers and proxy.spawn is true), then recovery, the coordinator and the
 * inventory. SIGTERM/SIGINT stop the loop; swaps in progress stay as they are
 * and the next start finishes or undoes them from the journal.
 */
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"
#include "aws_credentials.h"
#include "awsmode.h"
#include "clock.h"
#include "config.h"
#include "coord_client.h"
#include "crypto.h"
#include "cwlogs.h"
#include "deployer.h"
#include "docker.h"
#include "http_client.h"
#include "imds.h"
#include "inventory.h"
#include "journal.h"
#include "json.h"
#include "log.h"
#include "logdest.h"
#include "logship.h"
#include "metrics.h"
#include "proxy_client.h"
#include "registryauth.h"
#include "proxy_main.h"
#include "runjob.h"
#include "sdnotify.h"
#include "settings.h"
#include "spec.h"
#include "sqsqueue.h"
#include "swap.h"
#include "worker.h"

#define PROXY_WAIT_S 10.0

static char labels_store[1025];

static int usage(FILE *out)
{
	fprintf(out, "usage: slipway-agent [--config FILE]\n"
		     "       slipway-agent --check [--config FILE]\n"
		     "       slipway-agent proxy [--config FILE]\n"
		     "       slipway-agent version\n"
		     "       slipway-agent selftest\n");
	return out == stdout ? 0 : 2;
}

/* mkdir -p with mode for the last component. */
static int make_dirs(const char *path, mode_t mode, struct err *err)
{
	char tmp[PATH_MAX];
	if (snprintf(tmp, sizeof tmp, "%s", path) >= (int)sizeof tmp)
		return err_set(err, "%s: path too long", path);
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(tmp, 0755) < 0 && errno != EEXIST)
			return err_set(err, "mkdir %s: %s", tmp, strerror(errno));
		*p = '/';
	}
	if (mkdir(tmp, mode) < 0 && errno != EEXIST)
		return err_set(err, "mkdir %s: %s", tmp, strerror(errno));
	return 0;
}

/* deploy.labels "k=v,k2=v2" into a NULL-terminated list. */
static int parse_labels(const char *text, const char **out, struct err *err)
{
	snprintf(labels_store, sizeof labels_store, "%s", text);
	size_t n = 0;
	char *save = NULL;
	for (char *tok = strtok_r(labels_store, ",", &save); tok;
	     tok = strtok_r(NULL, ",", &save)) {
		while (*tok == ' ')
			tok++;
		char *eq = strchr(tok, '=');
		if (!eq || eq == tok)
			return err_set(err, "deploy.labels: \"%s\" is not key=value", tok);
		if (strncmp(tok, "slipway.app", 11) == 0 || strncmp(tok, "slipway.release", 15) == 0 ||
		    strncmp(tok, "slipway.service", 15) == 0 ||
		    strncmp(tok, "slipway.generation", 18) == 0)
			return err_set(err, "deploy.labels: %.*s is the agent's own label",
				       (int)(eq - tok), tok);
		if (n >= AGENT_LABELS_MAX)
			return err_set(err, "deploy.labels: more than %d labels", AGENT_LABELS_MAX);
		out[n++] = tok;
	}
	out[n] = NULL;
	return 0;
}

static int valid_docker_name(const char *s)
{
	if (!s[0])
		return 0;
	for (const char *p = s; *p; p++) {
		char c = *p;
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      (p != s && (c == '_' || c == '.' || c == '-'))))
			return 0;
	}
	return 1;
}

static int load_settings(struct agent *a, struct err *err)
{
	const struct config *c = a->cfg;
	struct agent_settings *s = &a->set;
	snprintf(s->state_dir, sizeof s->state_dir, "%s", config_str(c, "agent.state_dir"));
	agent_settings_path(c, "proxy.control_socket", "proxy.sock", s->control_socket,
			    sizeof s->control_socket);
	s->docker_socket = config_str(c, "docker.socket");
	s->network = config_str(c, "docker.network");
	s->name_prefix = config_str(c, "deploy.name_prefix");
	s->keep_releases = (int)config_int(c, "deploy.keep_releases");
	s->min_free_disk = config_size(c, "deploy.min_free_disk");
	s->pull_timeout_ms = config_ms(c, "deploy.pull_timeout");
	s->drain_timeout_ms = config_ms(c, "deploy.drain_timeout");
	s->log_max_size = config_size(c, "deploy.log_max_size");
	s->log_max_files = (int)config_int(c, "deploy.log_max_files");
	s->output_tail_lines = (int)config_int(c, "deploy.output_tail_lines");
	s->inventory_interval_ms = config_ms(c, "agent.inventory_interval");
	s->crash_at = config_has(c, "debug.crash_at") ? config_str(c, "debug.crash_at") : NULL;
	if (!valid_docker_name(s->network))
		return err_set(err, "docker.network: \"%s\" is not a valid network name", s->network);
	if (!valid_docker_name(s->name_prefix))
		return err_set(err, "deploy.name_prefix: \"%s\" is not a valid name prefix",
			       s->name_prefix);
	return parse_labels(config_str(c, "deploy.labels"), s->labels, err);
}

/* --check: the schema (config_check), then what load_settings checks. */
static int check_config(const char *config_path)
{
	if (config_check(agent_settings, agent_settings_count, config_path, AGENT_ENV_PREFIX,
			 stdout) < 0)
		return 1;
	struct err err;
	struct agent a = {0};
	struct config *cfg = config_load(agent_settings, agent_settings_count, config_path,
					 AGENT_ENV_PREFIX, &err);
	if (!cfg)
		return 1;
	a.cfg = cfg;
	int rc = load_settings(&a, &err);
	if (rc == 0)
		rc = awsmode_check(cfg, &err);
	if (rc < 0)
		printf("%s\n", err.msg);
	config_free(cfg);
	return rc < 0 ? 1 : 0;
}

/* ---- glue between the modules ---- */

static void *runner_start(void *ctx, const struct swap_request *req, const struct swap_hooks *h)
{
	return swap_start(ctx, req, h);
}

static void runner_proceed(void *handle) { swap_proceed(handle); }
static void runner_cancel(void *handle) { swap_free(handle); }

static void runner_resync(void *ctx, const char *app, const cJSON *routes)
{
	swap_resync(ctx, app, routes);
}

static void on_jobs(const cJSON *jobs, void *arg)
{
	struct agent *a = arg;
	const cJSON *it;
	cJSON_ArrayForEach(it, jobs) {
		if (runjob_is_run(it)) /* one-off containers: not generations (runjob.h) */
			runjob_offer(a->runjobs, it);
		else
			deployer_offer(a->deployer, it);
	}
}

/* ---- the SQS queue backend (agent/sqsqueue.h) ---- */

static void on_sqs_job(const cJSON *job, void *arg)
{
	struct agent *a = arg;
	if (runjob_is_run(job)) /* as on_jobs does */
		runjob_offer(a->runjobs, job);
	else
		deployer_offer(a->deployer, job);
}

static void on_sqs_queue_gone(void *arg)
{
	struct agent *a = arg;
	coord_client_register_again(a->coord);
}

static void on_queue(const char *url, const char *region, void *arg)
{
	struct agent *a = arg;
	struct err err = {{0}};
	if (*url && agent_sqs_set_queue(a->sqs, url, region, a->aws, &err) < 0)
		log_error("agent.sqs", "error=\"%s\" (jobs wait in the queue)", err.msg);
}

static cJSON *heartbeat_apps(void *arg)
{
	struct agent *a = arg;
	return deployer_apps_json(a->deployer);
}

static void on_desired(const cJSON *apps, void *arg)
{
	struct agent *a = arg;
	const cJSON *it;
	cJSON_ArrayForEach(it, apps) {
		const cJSON *app = cJSON_GetObjectItemCaseSensitive(it, "app");
		const cJSON *gen = cJSON_GetObjectItemCaseSensitive(it, "generation");
		if (!cJSON_IsString(app) || !cJSON_IsNumber(gen))
			continue;
		int64_t have = deployer_applied_generation(a->deployer, app->valuestring);
		if (have < (int64_t)gen->valuedouble && !deployer_busy(a->deployer, app->valuestring))
			log_info("agent.behind", "app=%s generation=%lld desired=%.0f (the coordinator "
				 "queues the job)", app->valuestring, (long long)have, gen->valuedouble);
	}
}

static void on_registered(void *arg)
{
	struct agent *a = arg;
	coord_client_get_desired(a->coord, on_desired, a);
	sdnotify_status("running; registered with the coordinator");
	if (a->inventory)
		inventory_changed(a->inventory);
}

static void on_inventory(const cJSON *containers, void *arg)
{
	struct agent *a = arg;
	coord_client_put_inventory(a->coord, containers);
	/* A listing follows every swap and every interval: a good moment to hand
	 * the heap's free pages back (the footprint target is 8 MB, proxy
	 * included). */
#ifdef __GLIBC__
	malloc_trim(0);
#endif
}

/* Per swap: outcome and duration, for the health metrics (a->metrics is NULL
 * with metrics.enabled false: metrics_swap ignores it). */
static void on_swap_end(void *arg, const char *app, const char *outcome, int64_t duration_ms)
{
	struct agent *a = arg;
	metrics_swap(a->metrics, app, outcome, duration_ms);
}

static void on_engine_back(void *arg)
{
	struct agent *a = arg;
	deployer_resync(a->deployer);
}

/* ---- logs and health data ---- */

static bool hook_logs_drained(const char *container_id, void *arg)
{
	struct agent *a = arg;
	return logship_drained(a->logship, container_id);
}

static void hook_container_started(const struct agent_container *c, void *arg)
{
	struct agent *a = arg;
	logship_follow(a->logship, c->id);
	awsmode_container_started(a->awsmode, c->id);
}

static void hook_container_stopped(const struct agent_container *c, void *arg)
{
	struct agent *a = arg;
	awsmode_container_stopped(a->awsmode, c->id);
}

static const int retention_days[] = {1,   3,   5,   7,    14,   30,   60,   90,   120,  150, 180,
				     365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653};

/* The log shipper and the health metrics, with their destination: CloudWatch
 * when cloudwatch.region is set, else the coordinator's embedded sink. */
static int start_logs(struct agent *a, const char *instance_id, struct err *err)
{
	const struct config *c = a->cfg;
	bool logs = config_bool(c, "logs.enabled"), metrics = config_bool(c, "metrics.enabled");
	if (!logs && !metrics)
		return 0;
	int retention = (int)config_int(c, "cloudwatch.retention_days");
	bool valid = retention == 0;
	for (size_t i = 0; i < sizeof retention_days / sizeof retention_days[0]; i++)
		valid |= retention == retention_days[i];
	if (!valid)
		return err_set(err, "cloudwatch.retention_days: %d is not a value CloudWatch Logs "
			       "accepts (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, ...)", retention);
	if (config_has(c, "cloudwatch.region") && *config_str(c, "cloudwatch.region")) {
		struct aws_credentials_opts ao = {0};
		struct cwlogs_opts cwo = {
			.region = config_str(c, "cloudwatch.region"),
			.endpoint = config_has(c, "cloudwatch.endpoint")
					    ? config_str(c, "cloudwatch.endpoint") : NULL,
			.ca_file = config_has(c, "cloudwatch.ca_file")
					   ? config_str(c, "cloudwatch.ca_file") : NULL,
			.timeout_ms = config_ms(c, "logs.request_timeout"),
			.retry_base_ms = config_ms(c, "logs.retry_base"),
			.retry_cap_ms = config_ms(c, "logs.retry_cap"),
			.retention_days = retention,
		};
		/* a->aws: made already when AWS mode needs credentials too (agent/awsmode.h) */
		if ((!a->aws && !(a->aws = aws_credentials_new(a->loop, a->http, &ao, err))) ||
		    !(a->cwlogs = cwlogs_new(a->loop, a->http, a->aws, &cwo, err)))
			return -1;
		a->logdest = logdest_cloudwatch(a->cwlogs);
	} else {
		struct logdest_coord_opts lo = {
			.loop = a->loop,
			.http = a->http,
			.url = config_str(c, "coordinator.url"),
			.ca_file = config_has(c, "coordinator.ca_file")
					   ? config_str(c, "coordinator.ca_file") : NULL,
			.identity = coord_client_identity,
			.identity_ctx = a->coord,
			.timeout_ms = config_ms(c, "logs.request_timeout"),
			.retry_base_ms = config_ms(c, "logs.retry_base"),
			.retry_cap_ms = config_ms(c, "logs.retry_cap"),
		};
		a->logdest = logdest_coordinator(&lo, err);
	}
	if (!a->logdest)
		return err->msg[0] ? -1 : err_set(err, "out of memory");
	if (logs) {
		struct logship_opts so = {
			.loop = a->loop,
			.docker = a->docker,
			.dest = a->logdest,
			.state_dir = a->set.state_dir,
			.instance_id = instance_id,
			.group_prefix = config_str(c, "logs.group_prefix"),
			.labels = a->set.labels,
			.flush_interval_ms = config_ms(c, "logs.flush_interval"),
			.spool_max = (uint64_t)config_size(c, "logs.spool_max"),
			.memory_max = (uint64_t)config_size(c, "logs.memory_max"),
			.max_age_ms = retention > 0 ? (int64_t)retention * 86400000 : 0,
			.retry_base_ms = config_ms(c, "logs.retry_base"),
			.retry_cap_ms = config_ms(c, "logs.retry_cap"),
		};
		if (!(a->logship = logship_new(&so, err)))
			return -1;
		a->hooks.logs_drained = hook_logs_drained;
		a->hooks.container_started = hook_container_started;
		a->hooks.arg = a;
		/* Docker writes each log line on its own: gather a couple of
		 * milliseconds of I/O per wake-up instead of waking for every line. */
		ev_set_io_collect_interval(a->loop, 0.002);
	}
	if (metrics) {
		struct metrics_opts mo = {
			.loop = a->loop,
			.docker = a->docker,
			.ship = a->logship,
			.coord = a->cwlogs || !a->logship ? NULL : a->logdest,
			.workers = a->workers,
			.listen = config_str(c, "metrics.listen"),
			.interval_ms = config_ms(c, "metrics.interval"),
			.namespace_ = config_str(c, "metrics.namespace"),
			.dimensions = config_str(c, "metrics.dimensions"),
			.instance_id = instance_id,
			.group_prefix = config_str(c, "logs.group_prefix"),
			.labels = a->set.labels,
			.docker_root = config_str(c, "metrics.docker_root"),
		};
		/* Without the shipper, EMF has no way out: the coordinator gets them. */
		if (!a->logship)
			mo.coord = a->cwlogs ? NULL : a->logdest;
		if (!(a->metrics = metrics_new(&mo, err)))
			return -1;
	}
	log_info("agent.logs", "destination=%s logs=%s metrics=%s", a->cwlogs ? "cloudwatch"
		 : "coordinator", logs ? "on" : "off", metrics ? "on" : "off");
	return 0;
}

static void stop_logs(struct agent *a)
{
	metrics_free(a->metrics);
	logship_free(a->logship);
	logdest_free(a->logdest);
	cwlogs_free(a->cwlogs);
	a->metrics = NULL;
	a->logship = NULL;
	a->logdest = NULL;
	a->cwlogs = NULL;
	memset(&a->hooks, 0, sizeof a->hooks);
}

/* ---- the proxy process ---- */

/* Starts `/proc/self/exe proxy --config FILE` detached (own session, not our
 * child once started), so it outlives the agent. */
static int spawn_proxy(struct agent *a)
{
	const char *argv[5] = {"slipway-agent", "proxy", NULL, NULL, NULL};
	if (a->config_path) {
		argv[2] = "--config";
		argv[3] = a->config_path;
	}
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		setsid();
		pid_t grandchild = fork();
		if (grandchild != 0)
			_exit(grandchild < 0 ? 1 : 0);
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		signal(SIGPIPE, SIG_DFL);
		int null = open("/dev/null", O_RDONLY);
		if (null >= 0) {
			dup2(null, 0);
			if (null > 2)
				close(null);
		}
		for (int fd = 3; fd < 4096; fd++)
			close(fd);
		execv("/proc/self/exe", (char *const *)argv);
		_exit(127);
	}
	int status;
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

struct proxy_wait {
	struct agent *a;
	ev_timer timer;
	int64_t deadline;
	bool spawned;
	void (*ready)(struct agent *a);
};

static void proxy_check(struct proxy_wait *w);
static struct proxy_wait *proxy_waiting; /* freed at shutdown if still waiting */
static bool proxy_answered;               /* for systemd's STATUS= */

static void on_proxy_health(const struct proxy_result *res, const struct proxy_health *h,
			    void *arg)
{
	struct proxy_wait *w = arg;
	struct agent *a = w->a;
	if (!res->error) {
		log_info("agent.proxy", "pid=%lld version=%s routes=%lld%s", (long long)h->pid,
			 h->version ? h->version : "?", (long long)h->routes,
			 w->spawned ? " (started by this agent)" : "");
		proxy_answered = true;
		void (*ready)(struct agent *) = w->ready;
		free(w);
		proxy_waiting = NULL;
		ready(a);
		return;
	}
	if (!w->spawned && config_bool(a->cfg, "proxy.spawn")) {
		log_info("agent.proxy_spawn", "no proxy answers on %s (%s): starting one",
			 a->set.control_socket, res->error);
		w->spawned = true;
		if (spawn_proxy(a) < 0)
			log_error("agent.proxy_spawn_failed", "error=\"%s\"", strerror(errno));
	}
	if (clock_mono_ms() >= w->deadline) {
		log_error("agent.proxy_missing", "no proxy answers on %s (%s); continuing: routes "
			  "are sent when it appears", a->set.control_socket, res->error);
		void (*ready)(struct agent *) = w->ready;
		free(w);
		proxy_waiting = NULL;
		ready(a);
		return;
	}
	ev_timer_set(&w->timer, 0.1, 0.0);
	ev_timer_start(a->loop, &w->timer);
}

static void on_proxy_timer(struct ev_loop *loop, ev_timer *t, int revents)
{
	(void)loop;
	(void)revents;
	proxy_check(t->data);
}

static void proxy_check(struct proxy_wait *w)
{
	if (!proxy_client_health(w->a->proxy, on_proxy_health, w)) {
		struct proxy_result r = {.error = "could not start the request"};
		on_proxy_health(&r, NULL, w);
	}
}

static int ensure_proxy(struct agent *a, void (*ready)(struct agent *a))
{
	struct proxy_wait *w = calloc(1, sizeof *w);
	if (!w)
		return -1;
	w->a = a;
	w->ready = ready;
	w->deadline = clock_mono_ms() + (int64_t)(PROXY_WAIT_S * 1000);
	ev_timer_init(&w->timer, on_proxy_timer, 0.0, 0.0);
	w->timer.data = w;
	proxy_waiting = w;
	proxy_check(w);
	return 0;
}

static void start_rest(struct agent *a)
{
	deployer_start(a->deployer);
	runjob_start(a->runjobs);
	coord_client_start(a->coord);
	if (a->logship)
		logship_start(a->logship);
	metrics_start(a->metrics);
	inventory_start(a->inventory);
	awsmode_start(a->awsmode); /* the metadata block, the scale-in watcher */
	/* systemd (Type=notify): serving, once the proxy answered or the wait for it ended */
	sdnotify_ready(proxy_answered ? "running; the proxy answers"
				      : "running; no proxy answers on the control socket yet");
}

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
	(void)revents;
	log_info("agent.stop", "signal=%d", w->signum);
	sdnotify_stopping();
	ev_break(loop, EVBREAK_ALL);
}

/* ---- the instance id ---- */

struct instance_lookup {
	bool done;
	char id[129];
	char why[ERR_MSG_MAX + 64];
};

/* The protocol's instance_id: 1-128 bytes of [A-Za-z0-9._:-]. */
static bool valid_instance_id(const char *s, size_t len)
{
	if (len == 0 || len > 128)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == ':' || c == '-'))
			return false;
	}
	return true;
}

static void on_instance_id(const struct imds_result *r, void *arg)
{
	struct instance_lookup *l = arg;
	l->done = true;
	size_t n = r->body_len;
	while (n > 0 && (r->body[n - 1] == '\n' || r->body[n - 1] == '\r' || r->body[n - 1] == ' '))
		n--;
	if (r->error)
		snprintf(l->why, sizeof l->why, "%s", r->error);
	else if (r->status != 200)
		snprintf(l->why, sizeof l->why, "HTTP %ld", r->status);
	else if (!valid_instance_id(r->body, n))
		snprintf(l->why, sizeof l->why, "not an instance id: \"%.64s\"", r->body);
	else
		snprintf(l->id, sizeof l->id, "%.*s", (int)n, r->body);
}

/* agent.instance_id, else the instance's id from IMDSv2 (short timeouts: off
 * EC2 nothing answers there), else the hostname. Runs the loop until IMDS has
 * answered or given up: start-up only, before anything else uses the loop. */
static const char *resolve_instance_id(struct agent *a, const char *hostname, char *out,
				       size_t cap)
{
	if (config_has(a->cfg, "agent.instance_id")) {
		snprintf(out, cap, "%s", config_str(a->cfg, "agent.instance_id"));
		return "configuration";
	}
	struct instance_lookup l = {0};
	if (imds_disabled()) {
		snprintf(l.why, sizeof l.why, "AWS_EC2_METADATA_DISABLED is true");
	} else {
		struct err err = {{0}};
		const struct backoff_policy retry = {.base_ms = 100, .cap_ms = 500, .max_attempts = 2};
		struct imds_opts io = {.timeout_ms = 1000, .retry = &retry};
		struct imds *m = imds_new(a->http, &io, &err);
		if (!m)
			snprintf(l.why, sizeof l.why, "%s", err.msg);
		else if (imds_get(m, "/latest/meta-data/instance-id", on_instance_id, &l) < 0)
			snprintf(l.why, sizeof l.why, "could not start the request");
		else
			while (!l.done)
				ev_run(a->loop, EVRUN_ONCE);
		imds_free(m);
	}
	if (l.id[0]) {
		snprintf(out, cap, "%s", l.id);
		return "instance metadata";
	}
	snprintf(out, cap, "%s", hostname);
	log_info("agent.instance_id", "source=hostname instance_id=%s (the instance metadata "
		 "service did not tell: %s)", out, l.why);
	return "hostname";
}

/* ---- running ---- */

static int run_agent(const char *config_path)
{
	struct err err = {{0}};
	struct agent a = {0};
	int rc = 1;
	a.config_path = config_path;
	struct config *cfg = config_load(agent_settings, agent_settings_count, config_path,
					 AGENT_ENV_PREFIX, &err);
	if (!cfg) {
		fprintf(stderr, "slipway-agent: %s\n", err.msg);
		return 1;
	}
	a.cfg = cfg;
	enum log_level level = LOG_LEVEL_INFO;
	log_level_parse(config_str(cfg, "log.level"), &level);
	log_init("slipway-agent", level, config_bool(cfg, "log.syslog"));
	if (load_settings(&a, &err) < 0 || make_dirs(a.set.state_dir, 0700, &err) < 0) {
		log_error("agent.config", "error=\"%s\"", err.msg);
		config_free(cfg);
		return 1;
	}
	if (a.set.crash_at)
		log_warn("agent.test_hook", "debug.crash_at=%s: this agent kills itself at that step "
			 "(a test hook)", a.set.crash_at);
	signal(SIGPIPE, SIG_IGN);
	/* systemd: before any thread starts, as it edits the environment (the
	 * proxy this agent may spawn must not inherit NOTIFY_SOCKET) */
	if (sdnotify_init(&err) < 0) {
		log_warn("agent.sdnotify", "error=\"%s\"", err.msg);
		err.msg[0] = '\0';
	}
#ifdef __GLIBC__
	/* One arena for the few worker threads: each arena costs its own pages. */
	mallopt(M_ARENA_MAX, 1);
#endif
	a.loop = ev_default_loop(0);
	a.started_mono_ms = clock_mono_ms();
	char instance_id[256], hostname[256] = "unknown";
	gethostname(hostname, sizeof hostname - 1);
	struct docker_opts dopts = {.socket_path = a.set.docker_socket};
	if (!(a.http = http_client_new(a.loop))) {
		log_error("agent.start", "error=\"out of memory\"");
		goto out;
	}
	const char *id_source = resolve_instance_id(&a, hostname, instance_id, sizeof instance_id);
	if (!(a.docker = docker_new(a.loop, a.http, &dopts)) ||
	    !(a.workers = worker_pool_new(a.loop, 1, 256, &err)) ||
	    !(a.proxy = proxy_client_new(a.http, a.set.control_socket))) {
		log_error("agent.start", "error=\"%s\"", err.msg[0] ? err.msg : "out of memory");
		goto out;
	}
	if (awsmode_new(&a, instance_id, strcmp(id_source, "instance metadata") == 0, &err) < 0) {
		log_error("agent.aws", "error=\"%s\"", err.msg);
		goto out;
	}
	struct coord_client_opts co = {
		.loop = a.loop,
		.http = a.http,
		.workers = a.workers,
		.url = config_str(cfg, "coordinator.url"),
		.ca_file = config_has(cfg, "coordinator.ca_file") ? config_str(cfg, "coordinator.ca_file")
								  : NULL,
		.bootstrap_token = config_str(cfg, "coordinator.bootstrap_token"),
		.prover = awsmode_prover(a.awsmode),
		.state_dir = a.set.state_dir,
		.instance_id = instance_id,
		.hostname = hostname,
		.fleet = config_str(cfg, "agent.fleet"),
		.version = AGENT_VERSION,
		.retry_base_ms = config_ms(cfg, "coordinator.retry_base"),
		.retry_cap_ms = config_ms(cfg, "coordinator.retry_cap"),
		.on_jobs = on_jobs,
		.heartbeat_apps = heartbeat_apps,
		.on_registered = on_registered,
		.on_queue = on_queue,
		.arg = &a,
	};
	if (!(a.coord = coord_client_new(&co, &err))) {
		log_error("agent.start", "error=\"%s\"", err.msg);
		goto out;
	}
	/* Acks and extends pass through it: with an SQS queue they also delete
	 * and extend the job's messages. */
	struct agent_sqs_opts sqo = {
		.loop = a.loop,
		.http = a.http,
		.coord = {.ack = coord_client_ack, .extend = coord_client_extend, .ctx = a.coord},
		.on_job = on_sqs_job,
		.on_queue_gone = on_sqs_queue_gone,
		.arg = &a,
		.retry_base_ms = config_ms(cfg, "coordinator.retry_base"),
		.retry_cap_ms = config_ms(cfg, "coordinator.retry_cap"),
	};
	if (!(a.sqs = agent_sqs_new(&sqo, &err))) {
		log_error("agent.start", "error=\"%s\"", err.msg);
		goto out;
	}
	struct deployer_opts dpo = {
		.loop = a.loop,
		.coord = {.ack = agent_sqs_ack, .extend = agent_sqs_extend, .ctx = a.sqs},
		.runner = {.start = runner_start, .proceed = runner_proceed, .cancel = runner_cancel,
			   .resync = runner_resync, .ctx = &a},
		.on_swap_end = on_swap_end,
		.swap_end_arg = &a,
		.crash_at = a.set.crash_at,
	};
	if (!(a.deployer = deployer_new(&dpo, &err))) {
		log_error("agent.start", "error=\"%s\"", err.msg);
		goto out;
	}
	struct journal_opts jo = {
		.dir = a.set.state_dir,
		.max_bytes = (size_t)config_size(cfg, "agent.journal_max_size"),
		.replay = deployer_replay,
		.snapshot = deployer_snapshot,
		.arg = a.deployer,
	};
	if (!(a.journal = journal_open(a.loop, &jo, &err))) {
		log_error("agent.journal", "error=\"%s\"", err.msg);
		goto out;
	}
	deployer_set_journal(a.deployer, a.journal);
	struct runjob_opts ro = {
		.a = &a,
		/* through agent/sqsqueue.h like the deployer's: SQS messages end with the ack */
		.coord = {.ack = agent_sqs_ack, .extend = agent_sqs_extend, .ctx = a.sqs},
	};
	if (!(a.runjobs = runjob_new(&ro, &err))) {
		log_error("agent.start", "error=\"%s\"", err.msg);
		goto out;
	}
	struct inventory_opts io = {
		.report = on_inventory,
		.engine_back = on_engine_back,
		.arg = &a,
		.interval_ms = a.set.inventory_interval_ms,
	};
	if (!(a.inventory = inventory_new(&a, &io, &err))) {
		log_error("agent.start", "error=\"%s\"", err.msg);
		goto out;
	}
	if (start_logs(&a, instance_id, &err) < 0) {
		log_error("agent.logs", "error=\"%s\"", err.msg);
		goto out;
	}
	/* Containers starting and stopping: the log shipper and the metadata block */
	a.hooks.container_started = hook_container_started;
	a.hooks.container_stopped = hook_container_stopped;
	a.hooks.arg = &a;
	/* ECR logins for pulls; shares the CloudWatch credentials when there are some */
	if (!(a.registryauth = registryauth_from_config(cfg, a.loop, a.http, a.docker, a.aws,
							&err))) {
		log_error("agent.config", "error=\"%s\"", err.msg);
		goto out;
	}
	log_info("agent.start", "version=%s instance_id=%s (from the %s) state_dir=%s proxy=%s",
		 AGENT_VERSION, instance_id, id_source, a.set.state_dir, a.set.control_socket);
	ev_signal sigterm, sigint;
	ev_signal_init(&sigterm, on_signal, SIGTERM);
	ev_signal_init(&sigint, on_signal, SIGINT);
	ev_signal_start(a.loop, &sigterm);
	ev_signal_start(a.loop, &sigint);
	sdnotify_watchdog_start(a.loop); /* pings from the loop: a stuck loop gets restarted */
	if (ensure_proxy(&a, start_rest) < 0)
		goto out;
	ev_run(a.loop, 0);
	ev_signal_stop(a.loop, &sigterm);
	ev_signal_stop(a.loop, &sigint);
	rc = 0;
out:
	sdnotify_watchdog_stop();
	if (proxy_waiting) {
		ev_timer_stop(a.loop, &proxy_waiting->timer);
		free(proxy_waiting);
		proxy_waiting = NULL;
	}
	deployer_stop(a.deployer);
	inventory_free(a.inventory);
	registryauth_free(a.registryauth); /* after the swaps (their pulls), before a.aws */
	a.registryauth = NULL;
	stop_logs(&a);
	if (a.loop)
		swap_resync_cancel_all(&a);
	journal_free(a.journal);
	coord_client_free(a.coord);
	agent_sqs_free(a.sqs); /* after the client (acks call back here), before a.aws */
	awsmode_free(a.awsmode); /* after the client (its proof asks), before proxy and docker */
	a.awsmode = NULL;
	aws_credentials_free(a.aws);
	a.aws = NULL;
	deployer_free(a.deployer);
	runjob_free(a.runjobs); /* after the client: its callbacks point there */
	proxy_client_free(a.proxy);
	docker_free(a.docker);
	worker_pool_free(a.workers);
	http_client_free(a.http);
	config_free(cfg);
	return rc;
}

/* ---- selftest: what must work on any build, no Docker needed ---- */

static int checks, failures;

static void check(bool ok, const char *what)
{
	checks++;
	if (!ok)
		failures++;
	printf("%s %s\n", ok ? "ok    " : "FAILED", what);
}

static const char selftest_job[] =
	"{\"id\":\"j_1\",\"type\":\"deploy\",\"app\":\"web\",\"generation\":3,\"lease_id\":\"l_1\","
	"\"lease_expires_in_s\":60,\"attempt\":1,\"release\":{\"id\":\"r_1\",\"app\":\"web\","
	"\"services\":[{\"name\":\"web\",\"image\":\"registry.local:5000/web@sha256:"
	"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\","
	"\"command\":[\"/srv/web\"],\"environment\":{\"A\":\"1\"},\"port\":8080,"
	"\"proxy\":{\"listen\":80,\"hosts\":[\"Web.Example.com\"],\"protocol\":\"http\"},"
	"\"health\":{\"type\":\"http\",\"path\":\"/health\"},\"count\":2}]}}";

static int count_records(const cJSON *rec, void *arg, struct err *err)
{
	(void)rec;
	(void)err;
	(*(int *)arg)++;
	return 0;
}

static void count_done(void *arg) { (*(int *)arg)++; }

static void selftest_spec(void)
{
	struct err err;
	cJSON *doc = json_parse(selftest_job, strlen(selftest_job), SPEC_POLL_MAX, &err);
	struct spec_job job;
	int rc = doc ? spec_job_parse(doc, &job, &err) : -1;
	check(rc == 0 && job.release && job.release->services[0].count == 2 &&
	      strcmp(job.release->services[0].proxy.hosts[0], "web.example.com") == 0,
	      "spec: a valid deploy job parses");
	if (rc == 0)
		spec_job_clear(&job);
	cJSON_Delete(doc);
	check(!spec_valid_image("Registry/UPPER:tag", NULL) && spec_valid_image("busybox", NULL) &&
	      spec_valid_image("localhost:5000/a/b:v1", NULL), "spec: image references");
	const char *bad = "{\"id\":\"j_2\",\"lease_id\":\"l\",\"type\":\"deploy\",\"app\":\"web\","
			  "\"generation\":1,\"lease_expires_in_s\":60,\"attempt\":1,\"colour\":1}";
	doc = json_parse(bad, strlen(bad), SPEC_POLL_MAX, &err);
	rc = doc ? spec_job_parse(doc, &job, &err) : 0;
	check(rc == -1 && job.ackable && strstr(err.msg, "colour"),
	      "spec: an unknown field is refused, the job stays ackable");
	cJSON_Delete(doc);
}

static void selftest_journal(void)
{
	char dir[] = "/tmp/slipway-selftest-XXXXXX";
	if (!mkdtemp(dir)) {
		check(false, "journal: temp dir");
		return;
	}
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct err err;
	int replayed = 0, written = 0;
	struct journal_opts o = {.dir = dir, .replay = count_records, .arg = &replayed};
	struct journal *j = journal_open(loop, &o, &err);
	check(j != NULL, "journal: opens in an empty directory");
	for (int i = 0; j && i < 3; i++) {
		cJSON *r = cJSON_CreateObject();
		cJSON_AddNumberToObject(r, "n", i);
		journal_append(j, r, count_done, &written, &err);
		cJSON_Delete(r);
	}
	ev_run(loop, 0);
	check(written == 3, "journal: three records are durable");
	journal_free(j);
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s/%s", dir, JOURNAL_FILE);
	FILE *f = fopen(path, "a");
	if (f) {
		fputs("{\"n\":", f); /* a torn last line */
		fclose(f);
	}
	j = journal_open(loop, &o, &err);
	check(j && replayed == 3, "journal: replay reads the three and skips a torn line");
	journal_free(j);
	struct stat st;
	check(stat(path, &st) == 0 && st.st_size == 3 * 8 && (st.st_mode & 0777) == 0600,
	      "journal: the torn tail is cut; the file is 0600");
	unlink(path);
	rmdir(dir);
	ev_loop_destroy(loop);
}

static void selftest_crypto_config(void)
{
	char hex[2 * CRYPTO_SHA256_LEN + 1];
	crypto_sha256_hex("abc", 3, hex); /* FIPS 180-2, appendix B.1 */
	check(strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") == 0,
	      "crypto: SHA-256(\"abc\")");
	const char text[] = "coordinator.url = http://127.0.0.1:1\n"
			    "coordinator.bootstrap_token = selftest-token\n"
			    "deploy.keep_releases = 2\n";
	struct err err;
	struct config *c = config_load_buffer(agent_settings, agent_settings_count, text,
					      strlen(text), "selftest.conf", NULL, &err);
	check(c && config_int(c, "deploy.keep_releases") == 2 &&
	      config_ms(c, "deploy.drain_timeout") == 30000, "config: the agent's schema loads");
	config_free(c);
	const char bad[] = "coordinator.url = http://127.0.0.1:1\ncolour = blue\n";
	c = config_load_buffer(agent_settings, agent_settings_count, bad, strlen(bad),
			       "selftest.conf", NULL, &err);
	check(!c, "config: an unknown key is refused");
	config_free(c);
}

static int selftest(void)
{
	log_init("slipway-agent", LOG_LEVEL_ERROR, 0);
	selftest_spec();
	selftest_journal();
	selftest_crypto_config();
	printf("selftest: %d checks, %d failed\n", checks, failures);
	return failures ? 1 : 0;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "proxy") == 0)
		return proxy_main(argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "version") == 0) {
		printf("slipway-agent %s (protocol %d)\n", AGENT_VERSION, COORD_PROTOCOL);
		return 0;
	}
	if (argc >= 2 && strcmp(argv[1], "selftest") == 0)
		return selftest();
	const char *config_path = NULL;
	bool check_only = false;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
			config_path = argv[++i];
		} else if (strncmp(argv[i], "--config=", 9) == 0) {
			config_path = argv[i] + 9;
		} else if (strcmp(argv[i], "--check") == 0) {
			check_only = true;
		} else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			usage(stdout);
			config_usage(agent_settings, agent_settings_count, stdout);
			return 0;
		} else {
			return usage(stderr);
		}
	}
	if (!config_path && access(AGENT_DEFAULT_CONFIG, R_OK) == 0)
		config_path = AGENT_DEFAULT_CONFIG;
	if (check_only)
		return check_config(config_path);
	return run_agent(config_path);
}
