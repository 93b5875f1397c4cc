/*
 * slipway-coordinator: the daemon, and its offline commands.
 *
 *   slipway-coordinator [--config FILE]          run
 *   slipway-coordinator --check [--config FILE]  validate the configuration
 *   slipway-coordinator version
 *   slipway-coordinator apikey create --name N --role admin|deploy|read [--app A]
 *   slipway-coordinator secrets rotate
 */
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agents.h"
#include "api.h"
#include "auth.h"
#include "builder.h"
#include "clock.h"
#include "config.h"
#include "coord.h"
#include "docker.h"
#include "http_client.h"
#include "httpd.h"
#include "link.h"
#include "log.h"
#include "logcw.h"
#include "logsink.h"
#include "queue.h"
#include "rollout.h"
#include "sdnotify.h"
#include "secrets.h"
#include "server.h"
#include "settings.h"
#include "sqsqueue.h"
#include "store.h"
#include "webhook.h"
#include "worker.h"

#define SHUTDOWN_GRACE_S 10.0

static void usage(FILE *out)
{
	fprintf(out,
		"usage: slipway-coordinator [--config FILE]          run the coordinator\n"
		"       slipway-coordinator --check [--config FILE]  check the configuration\n"
		"       slipway-coordinator version\n"
		"       slipway-coordinator apikey create --name NAME --role admin|deploy|read "
		"[--app APP] [--config FILE]\n"
		"       slipway-coordinator secrets rotate [--config FILE]  (coordinator stopped)\n"
		"Without --config, %s is read when it exists.\n"
		"Every key can also be set as %s<KEY> (dots as underscores, upper case).\n",
		COORD_DEFAULT_CONFIG, COORD_ENV_PREFIX);
}

static const char *default_config(void)
{
	return access(COORD_DEFAULT_CONFIG, F_OK) == 0 ? COORD_DEFAULT_CONFIG : NULL;
}

static struct config *load_config(const char *path)
{
	struct err err;
	struct config *cfg = config_load(coord_settings, coord_settings_count, path,
					 COORD_ENV_PREFIX, &err);
	if (!cfg) {
		fprintf(stderr, "slipway-coordinator: configuration:\n%s\n", err.msg);
		return NULL;
	}
	enum log_level lvl = LOG_LEVEL_INFO;
	log_level_parse(config_str(cfg, "log.level"), &lvl);
	log_init("slipway-coordinator", lvl, config_bool(cfg, "log.syslog"));
	return cfg;
}

/* mkdir -p with mode 0700 for what it creates. */
static int make_dirs(const char *path, struct err *err)
{
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s", path);
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(tmp, 0700) < 0 && errno != EEXIST)
			return err_set(err, "mkdir %s: %s", tmp, strerror(errno));
		*p = '/';
	}
	if (mkdir(tmp, 0700) < 0 && errno != EEXIST)
		return err_set(err, "mkdir %s: %s", tmp, strerror(errno));
	return 0;
}

/* One coordinator per data directory: an flock held for the process's life. */
static int lock_data_dir(const char *dir, struct err *err)
{
	char path[4200];
	snprintf(path, sizeof path, "%s/coordinator.lock", dir);
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return err_set(err, "open %s: %s", path, strerror(errno));
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		close(fd);
		return err_set(err, "%s is in use by another slipway-coordinator", dir);
	}
	return fd; /* kept open: the lock lives as long as the process */
}

static struct store *open_store(struct ev_loop *loop, const struct config *cfg, struct err *err)
{
	char path[4200];
	coord_settings_path(cfg, "store.path", "coordinator.db", path, sizeof path);
	return store_open(loop, path, err);
}

/* ---- offline commands ---- */

struct key_args {
	const char *name;
	enum auth_role role;
	const char *app;
	char id[40];
	char key[AUTH_API_KEY_LEN + 1];
};

static int key_create_tx(struct store_tx *tx, void *arg)
{
	struct key_args *k = arg;
	return auth_key_create_tx(tx, k->name, k->role, k->app, k->id, k->key);
}

static int cmd_apikey(int argc, char **argv, const char *config_path)
{
	struct key_args k = {.role = AUTH_ROLE_NONE};
	if (argc < 1 || strcmp(argv[0], "create") != 0) {
		usage(stderr);
		return 2;
	}
	for (int i = 1; i < argc; i++) {
		if (i + 1 < argc && strcmp(argv[i], "--name") == 0)
			k.name = argv[++i];
		else if (i + 1 < argc && strcmp(argv[i], "--role") == 0) {
			if (auth_role_parse(argv[++i], &k.role) < 0) {
				fprintf(stderr, "--role: admin, deploy or read\n");
				return 2;
			}
		} else if (i + 1 < argc && strcmp(argv[i], "--app") == 0)
			k.app = argv[++i];
		else {
			usage(stderr);
			return 2;
		}
	}
	if (!k.name || k.role == AUTH_ROLE_NONE || !server_valid_id(k.name) ||
	    (k.app && !server_valid_name(k.app))) {
		fprintf(stderr, "apikey create needs --name (1..63 of [A-Za-z0-9_-]) and --role; "
				"--app is an app name\n");
		return 2;
	}
	struct config *cfg = load_config(config_path);
	if (!cfg)
		return 1;
	struct err err;
	int rc = 1;
	struct store *s = NULL;
	if (make_dirs(config_str(cfg, "data.dir"), &err) < 0 ||
	    !(s = open_store(EV_DEFAULT, cfg, &err)) || store_run(s, key_create_tx, &k, &err) < 0) {
		fprintf(stderr, "slipway-coordinator: %s\n", err.msg);
	} else {
		printf("API key %s (%s, role %s%s%s), shown once:\n%s\n", k.id, k.name,
		       auth_role_name(k.role), k.app ? ", app " : "", k.app ? k.app : "", k.key);
		rc = 0;
	}
	memset(k.key, 0, sizeof k.key);
	store_close(s);
	config_free(cfg);
	return rc;
}

static int cmd_secrets(int argc, char **argv, const char *config_path)
{
	if (argc != 1 || strcmp(argv[0], "rotate") != 0) {
		usage(stderr);
		return 2;
	}
	struct config *cfg = load_config(config_path);
	if (!cfg)
		return 1;
	struct err err;
	uint8_t key[CRYPTO_KEY_LEN];
	char key_file[4200];
	struct store *s = NULL;
	int rc = 1;
	size_t n = 0;
	const char *dir = config_str(cfg, "data.dir");
	if (make_dirs(dir, &err) < 0 || lock_data_dir(dir, &err) < 0 ||
	    secrets_load_master(cfg, key, key_file, sizeof key_file, &err) < 0 ||
	    !(s = open_store(EV_DEFAULT, cfg, &err)) ||
	    secrets_check_canary(s, key, key_file, &err) < 0 ||
	    secrets_rotate(s, key, key_file, stdout, &n, &err) < 0) {
		fprintf(stderr, "slipway-coordinator: secrets rotate: %s\n", err.msg);
	} else {
		printf("re-sealed %zu secret%s under a new master key%s%s\n", n, n == 1 ? "" : "s",
		       key_file[0] ? " in " : "", key_file);
		rc = 0;
	}
	memset(key, 0, sizeof key);
	store_close(s);
	config_free(cfg);
	return rc;
}

/* ---- the daemon ---- */

struct daemon {
	struct coord c;
	ev_signal sigterm, sigint;
	ev_timer grace;
	double stop_deadline;
	int stopping;
};

static void grace_tick(struct ev_loop *loop, ev_timer *t, int revents)
{
	(void)revents;
	struct daemon *d = t->data;
	if (server_request_count(d->c.server) == 0 || ev_now(loop) >= d->stop_deadline) {
		ev_timer_stop(loop, t);
		ev_break(loop, EVBREAK_ALL);
	}
}

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
	(void)revents;
	struct daemon *d = w->data;
	if (d->stopping) {
		log_warn("coordinator.stop_now", "signal=%d", w->signum);
		ev_break(loop, EVBREAK_ALL);
		return;
	}
	d->stopping = 1;
	sdnotify_stopping();
	log_info("coordinator.stopping", "signal=%d in_flight=%zu", w->signum,
		 server_request_count(d->c.server));
	server_stop_accepting(d->c.server);
	queue_shutdown(d->c.queue); /* long polls end empty: agents poll again elsewhere */
	logsink_shutdown(d->c.logsink);
	logcw_shutdown(d->c.logcw);
	api_shutdown(&d->c);
	d->stop_deadline = ev_now(loop) + SHUTDOWN_GRACE_S;
	ev_timer_init(&d->grace, grace_tick, 0.0, 0.1);
	d->grace.data = d;
	ev_timer_start(loop, &d->grace);
}

static int run(const char *config_path)
{
	static struct daemon d;
	struct coord *c = &d.c;
	struct err err;
	struct config *cfg = load_config(config_path);
	if (!cfg)
		return 1;
	c->cfg = cfg;
	c->loop = EV_DEFAULT;
	/* systemd (Type=notify): before any thread starts, as it edits the environment */
	if (sdnotify_init(&err) < 0)
		log_warn("coordinator.sdnotify", "error=\"%s\"", err.msg);
	c->started_ms = clock_wall_ms();
	const char *dir = config_str(cfg, "data.dir");
	snprintf(c->data_dir, sizeof c->data_dir, "%s", dir);
	signal(SIGPIPE, SIG_IGN);
	char key_file[4200];
	int rc = 1;
	if (make_dirs(dir, &err) < 0 || lock_data_dir(dir, &err) < 0 ||
	    secrets_load_master(cfg, c->master_key, key_file, sizeof key_file, &err) < 0 ||
	    !(c->store = open_store(c->loop, cfg, &err)) ||
	    secrets_check_canary(c->store, c->master_key, key_file, &err) < 0)
		goto out;
	long nofile = httpd_raise_nofile_limit(&err);
	if (nofile < 0)
		log_warn("coordinator.nofile", "error=\"%s\"", err.msg);
	struct docker_opts dopts = {.socket_path = config_str(cfg, "docker.socket")};
	c->http = http_client_new(c->loop);
	c->workers = worker_pool_new(c->loop, 2, 4096, &err);
	if (!c->http || !c->workers)
		goto out;
	c->docker = docker_new(c->loop, c->http, &dopts);
	c->auth = auth_new(c);
	c->agents = agents_new(c);
	c->queue = queue_new(c);
	c->logsink = logsink_new(c);
	if (!c->docker || !c->auth || !c->agents || !c->queue || !c->logsink) {
		err_set(&err, "out of memory");
		goto out;
	}
	if (auth_load(c->auth, &err) < 0 || agents_load(c->agents, &err) < 0 ||
	    agents_identity_init(c->agents, &err) < 0)
		goto out;
	if (logcw_enabled(cfg) && !(c->logcw = logcw_new(c, &err)))
		goto out;
	if (sqsqueue_enabled(cfg) && !(c->sqsqueue = sqsqueue_new(c, &err)))
		goto out;
	c->server = server_new(c, NULL, &err);
	if (!c->server)
		goto out;
	if (agents_register_routes(c->agents, c->server) < 0 ||
	    queue_register_routes(c->queue, c->server) < 0 ||
	    logsink_register_routes(c->logsink, c->server) < 0 ||
	    (c->logcw && logcw_register_routes(c->logcw, c->server) < 0) || api_register(c) < 0 ||
	    link_register(c) < 0) {
		err_set(&err, "cannot register the routes");
		goto out;
	}
	webhook_register(c);
	c->builder = builder_new(c, &err);
	if (!c->builder)
		goto out;
	builder_recover(c); /* builds a crash interrupted fail (Slack is told): before any runs */
	rollout_recover(c);
	agents_start(c->agents);
	queue_start(c->queue);
	sqsqueue_start(c->sqsqueue); /* NULL (embedded backend): nothing */

	ev_signal_init(&d.sigterm, on_signal, SIGTERM);
	ev_signal_init(&d.sigint, on_signal, SIGINT);
	d.sigterm.data = d.sigint.data = &d;
	ev_signal_start(c->loop, &d.sigterm);
	ev_signal_start(c->loop, &d.sigint);
	log_info("coordinator.started", "version=%s listen=%s port=%d data=%s agents=%zu nofile=%ld",
		 SLIPWAY_VERSION, config_str(cfg, "server.listen"), server_port(c->server), dir,
		 agents_count(c->agents), nofile);
	char status[64];
	snprintf(status, sizeof status, "serving on port %d", server_port(c->server));
	sdnotify_watchdog_start(c->loop); /* pings from the loop: a stuck loop gets restarted */
	sdnotify_ready(status);
	ev_run(c->loop, 0);
	sdnotify_watchdog_stop();
	ev_signal_stop(c->loop, &d.sigterm);
	ev_signal_stop(c->loop, &d.sigint);
	log_info("coordinator.stopped", "uptime_ms=%lld", (long long)(clock_wall_ms() - c->started_ms));
	rc = 0;
out:
	if (rc != 0)
		fprintf(stderr, "slipway-coordinator: %s\n", err.msg);
	/* Order: nothing new reaches the store after it closes, and the store's
	 * last done callbacks still find the modules they call. */
	builder_free(c->builder);
	server_free(c->server);
	store_close(c->store);
	link_free(c); /* and Slack: before http_client_free, which its requests use */
	logsink_free(c->logsink);
	logcw_free(c->logcw); /* after server_free: its readers' requests are gone */
	sqsqueue_free(c->sqsqueue); /* after store_close: no store callback still to come */
	queue_free(c->queue);
	agents_free(c->agents);
	auth_free(c->auth);
	docker_free(c->docker);
	worker_pool_free(c->workers);
	if (c->http)
		http_client_free(c->http);
	memset(c->master_key, 0, sizeof c->master_key);
	config_free(cfg);
	return rc;
}

int main(int argc, char **argv)
{
	/* The store holds sealed secrets and token hashes, the key file the key:
	 * nothing the coordinator creates is for other users. */
	umask(077);
	const char *config_path = NULL;
	int check = 0, config_given = 0;
	int i = 1;
	for (; i < argc; i++) {
		if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
			config_path = argv[++i];
			config_given = 1;
		} else if (strcmp(argv[i], "--check") == 0) {
			check = 1;
		} else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			usage(stdout);
			config_usage(coord_settings, coord_settings_count, stdout);
			return 0;
		} else {
			break;
		}
	}
	if (!config_given)
		config_path = default_config();
	if (check)
		return config_check(coord_settings, coord_settings_count, config_path,
				    COORD_ENV_PREFIX, stdout) == 0
			       ? 0
			       : 1;
	if (i == argc)
		return run(config_path);
	const char *cmd = argv[i++];
	/* Options may also follow the command: apikey create --name x --config f */
	int n = 0;
	char *rest[64];
	for (; i < argc && n < 63; i++) {
		if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
			config_path = argv[++i];
		else
			rest[n++] = argv[i];
	}
	rest[n] = NULL;
	if (strcmp(cmd, "version") == 0) {
		printf("slipway-coordinator %s (protocol 1)\n", SLIPWAY_VERSION);
		return 0;
	}
	if (strcmp(cmd, "apikey") == 0)
		return cmd_apikey(n, rest, config_path);
	if (strcmp(cmd, "secrets") == 0)
		return cmd_secrets(n, rest, config_path);
	usage(stderr);
	return 2;
}
