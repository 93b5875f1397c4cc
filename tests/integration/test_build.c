/*
 * GitLab push -> webhook -> clone over SSH (a real sshd with the app's deploy
 * key) -> Docker build -> push to the harness registry -> release, through
 * the webhook, builder, server, store and releases modules in one process.
 * Also: duplicate deliveries, a stale push, a force-push, a failing
 * Dockerfile, cancel, timeout, 401/404/413, and a build whose release cannot be
 * made (it fails: a complete build always has its release).
 *
 * Needs the environment of tests/integration/harness.sh (tests/run sources
 * it): SLIPWAY_TEST_REGISTRY, SLIPWAY_TEST_BASE_IMAGE, SLIPWAY_TEST_RUN_ID;
 * /usr/sbin/sshd and git. Everything it makes in Docker carries the labels
 * slipway.app=<its app> (and slipway.test through the base image) and is
 * removed at the end.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <ev.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "buf.h"
#include "builder.h"
#include "clock.h"
#include "config.h"
#include "coord.h"
#include "crypto.h"
#include "docker.h"
#include "http_client.h"
#include "log.h"
#include "secrets.h"
#include "server.h"
#include "../../coordinator/settings.h" /* agent/ has a settings.h too */
#include "store.h"
#include "webhook.h"
#include "worker.h"

#define HOOK "hk_int0123456789abcdef0123456789"
#define TOKEN "integration-token"
#define FIXTURE_SHA "2adc9465c4edfc33834e173fe89436a7cb899a1d"
#define FIXTURE_URL "git@gitlab.com:gitlab-org/hello-world.git"

static struct {
	char dir[128];
	char app[32];
	char url[256];
	char registry[128];
	char base_image[256];
	pid_t sshd;
	int ssh_port;
	struct ev_loop *loop;
	struct config *cfg;
	struct coord c;
	struct http_client *http;
	ev_timer tick;
	char base[64];
	int key_seq;
} T;

/* ---- shell helpers ---- */

__attribute__((format(printf, 1, 2))) static int sh(const char *fmt, ...)
{
	char cmd[8192];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof cmd, fmt, ap);
	va_end(ap);
	int rc = system(cmd);
	if (rc != 0)
		print_message("# command failed (%d): %s\n", rc, cmd);
	return rc;
}

/* First line of a command's output. */
__attribute__((format(printf, 1, 2))) static const char *out(const char *fmt, ...)
{
	static char line[1024];
	char cmd[4096];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof cmd, fmt, ap);
	va_end(ap);
	line[0] = '\0';
	FILE *p = popen(cmd, "r");
	if (p) {
		if (!fgets(line, sizeof line, p))
			line[0] = '\0';
		pclose(p);
	}
	line[strcspn(line, "\n")] = '\0';
	return line;
}

static char *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	struct buf b;
	buf_init(&b, 1 << 20);
	char chunk[4096];
	size_t n;
	while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
		buf_append(&b, chunk, n);
	fclose(f);
	if (len)
		*len = b.len;
	return buf_detach(&b, NULL);
}

static int free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t l = sizeof a;
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 ||
	    getsockname(fd, (struct sockaddr *)&a, &l) < 0)
		return -1;
	close(fd);
	return ntohs(a.sin_port);
}

static int port_open(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
	if (fd >= 0)
		close(fd);
	return ok;
}

/* ---- sshd serving the bare repository to the deploy key ---- */

static int start_sshd(void)
{
	if (mkdir("/run/sshd", 0755) < 0 && access("/run/sshd", F_OK) < 0)
		return -1;
	for (int attempt = 0; attempt < 3; attempt++) {
		T.ssh_port = free_port();
		char conf[512];
		snprintf(conf, sizeof conf, "%s/sshd_config", T.dir);
		FILE *f = fopen(conf, "w");
		if (!f)
			return -1;
		fprintf(f,
			"ListenAddress 127.0.0.1\nPort %d\nHostKey %s/host_key\n"
			"AuthorizedKeysFile %s/authorized_keys\nPidFile %s/sshd.pid\n"
			"StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
			"KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
			"PermitRootLogin prohibit-password\nAcceptEnv GIT_PROTOCOL\n"
			"LogLevel ERROR\n",
			T.ssh_port, T.dir, T.dir, T.dir);
		fclose(f);
		pid_t pid = fork();
		if (pid == 0) {
			/* Dies with the test, and holds none of its output pipes. */
			prctl(PR_SET_PDEATHSIG, SIGTERM);
			int devnull = open("/dev/null", O_RDWR);
			dup2(devnull, 0);
			dup2(devnull, 1);
			dup2(devnull, 2);
			char log[512];
			snprintf(log, sizeof log, "%s/sshd.log", T.dir);
			execl("/usr/sbin/sshd", "/usr/sbin/sshd", "-D", "-f", conf, "-E", log,
			      (char *)NULL);
			_exit(127);
		}
		T.sshd = pid;
		int64_t deadline = clock_mono_ms() + 5000;
		while (clock_mono_ms() < deadline) {
			if (port_open(T.ssh_port))
				return 0;
			if (waitpid(pid, NULL, WNOHANG) == pid)
				break;
			usleep(20000);
		}
		kill(pid, SIGTERM);
		waitpid(pid, NULL, 0);
		T.sshd = 0;
	}
	return -1;
}

/* ---- the coordinator's pieces ---- */

static struct config *load_config(const char *extra)
{
	char text[2048];
	snprintf(text, sizeof text,
		 "agents.bootstrap_token = integration-boot-token\n"
		 "registry.host = %s\n"
		 "builds.concurrency = 2\n"
		 "%s",
		 T.registry, extra ? extra : "");
	struct err e;
	struct config *cfg = config_load_buffer(coord_settings, coord_settings_count, text,
						strlen(text), "test.conf", NULL, &e);
	if (!cfg)
		print_error("config: %s\n", e.msg);
	return cfg;
}

struct app_row {
	const char *key;
};

static int insert_app(struct store_tx *tx, void *arg)
{
	const char *private_key = arg;
	struct buf token, key;
	buf_init(&token, 4096);
	buf_init(&key, 65536);
	if (secrets_seal(T.c.master_key, "apps", T.app, "hook_token", TOKEN, strlen(TOKEN),
			 &token) < 0 ||
	    secrets_seal(T.c.master_key, "apps", T.app, "deploy_key_private", private_key,
			 strlen(private_key), &key) < 0)
		return err_set(&tx->err, "seal");
	sqlite3_stmt *st = store_stmt(tx, "INSERT INTO apps(name, created_ms, hook_id, hook_token, "
					  "deploy_key_private, deploy) VALUES (?, 1, ?, ?, ?, "
					  "'branch')");
	sqlite3_bind_text(st, 1, T.app, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, HOOK, -1, SQLITE_STATIC);
	sqlite3_bind_blob(st, 3, token.data, (int)token.len, SQLITE_TRANSIENT);
	sqlite3_bind_blob(st, 4, key.data, (int)key.len, SQLITE_TRANSIENT);
	int rc = store_step(tx, st) == SQLITE_DONE ? 0 : -1;
	buf_free(&token);
	buf_free(&key);
	return rc;
}

static void tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)w;
	(void)revents;
}

static int group_setup(void **state)
{
	(void)state;
	const char *reg = getenv("SLIPWAY_TEST_REGISTRY"), *base = getenv("SLIPWAY_TEST_BASE_IMAGE");
	if (!reg || !*reg || !base || !*base) {
		print_error("run through tests/run (SLIPWAY_TEST_REGISTRY, SLIPWAY_TEST_BASE_IMAGE)\n");
		return -1;
	}
	snprintf(T.registry, sizeof T.registry, "%s", reg);
	snprintf(T.base_image, sizeof T.base_image, "%s", base);
	char hex[7];
	crypto_random_hex(hex, 3);
	snprintf(T.app, sizeof T.app, "it-%s", hex);
	snprintf(T.dir, sizeof T.dir, "/tmp/slipway-itbuild-XXXXXX");
	if (!mkdtemp(T.dir))
		return -1;
	log_init("test_build", LOG_LEVEL_WARN, 0);

	/* Keys: the sshd host key, and the app's deploy key, authorized for git
	 * only (git-shell). */
	if (sh("ssh-keygen -q -t ed25519 -N '' -f %s/host_key && "
	       "ssh-keygen -q -t ed25519 -N '' -C deploy -f %s/deploy_key && "
	       "printf 'command=\"git-shell -c \\\\\"$SSH_ORIGINAL_COMMAND\\\\\"\",no-port-forwarding,"
	       "no-pty,no-agent-forwarding %%s\\n' \"$(cat %s/deploy_key.pub)\" > %s/authorized_keys",
	       T.dir, T.dir, T.dir, T.dir) != 0)
		return -1;
	/* The repository: a bare repo, and a work tree that pushes to it. */
	if (sh("set -e; cd %s; git init -q --bare repo/app.git; git init -q -b master work; cd work;"
	       "git config user.email t@example.com; git config user.name test;"
	       "printf 'FROM %s\\nCOPY app.txt /app.txt\\n' > Dockerfile;"
	       "printf 'services:\\n  web:\\n    build: .\\n    port: 8080\\n"
	       "    health: {path: /health}\\n' > slipway.yml;"
	       "printf 'secret.txt\\n' > .dockerignore; echo hush > secret.txt; echo v1 > app.txt;"
	       "git add -A; git commit -qm A; git push -q ../repo/app.git master",
	       T.dir, T.base_image) != 0)
		return -1;
	if (start_sshd() < 0) {
		print_error("sshd did not start (see %s/sshd.log)\n", T.dir);
		return -1;
	}
	snprintf(T.url, sizeof T.url, "ssh://root@127.0.0.1:%d%s/repo/app.git", T.ssh_port, T.dir);

	T.loop = ev_default_loop(0);
	T.cfg = load_config(NULL);
	if (!T.cfg)
		return -1;
	struct err e;
	T.c.loop = T.loop;
	T.c.cfg = T.cfg;
	snprintf(T.c.data_dir, sizeof T.c.data_dir, "%s/data", T.dir);
	mkdir(T.c.data_dir, 0700);
	crypto_random(T.c.master_key, sizeof T.c.master_key);
	char db[256];
	snprintf(db, sizeof db, "%s/data/coordinator.db", T.dir);
	if (!(T.c.store = store_open(T.loop, db, &e)) ||
	    !(T.c.workers = worker_pool_new(T.loop, 2, 64, &e)) ||
	    !(T.c.server = server_new(&T.c, "127.0.0.1:0", &e))) {
		print_error("%s\n", e.msg);
		return -1;
	}
	T.http = http_client_new(T.loop);
	T.c.http = http_client_new(T.loop);
	const char *sock = getenv("SLIPWAY_DOCKER_SOCKET");
	struct docker_opts dopts = {.socket_path = sock && *sock ? sock : NULL};
	T.c.docker = docker_new(T.loop, T.c.http, &dopts);
	T.c.builder = builder_new(&T.c, &e);
	if (!T.c.builder) {
		print_error("%s\n", e.msg);
		return -1;
	}
	webhook_register(&T.c);
	snprintf(T.base, sizeof T.base, "http://127.0.0.1:%d", server_port(T.c.server));
	char keypath[256];
	snprintf(keypath, sizeof keypath, "%s/deploy_key", T.dir);
	char *key = read_file(keypath, NULL);
	if (!key || store_run(T.c.store, insert_app, key, &e) < 0) {
		print_error("app: %s\n", e.msg);
		free(key);
		return -1;
	}
	free(key);
	ev_timer_init(&T.tick, tick_cb, 0.05, 0.05);
	ev_timer_start(T.loop, &T.tick);
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	ev_timer_stop(T.loop, &T.tick);
	builder_free(T.c.builder);
	server_free(T.c.server);
	docker_free(T.c.docker);
	http_client_free(T.c.http);
	http_client_free(T.http);
	worker_pool_free(T.c.workers);
	store_close(T.c.store);
	config_free(T.cfg);
	if (T.sshd > 0) {
		kill(T.sshd, SIGTERM);
		waitpid(T.sshd, NULL, 0);
	}
	sh("ids=$(docker images -q --filter label=slipway.app=%s | sort -u); "
	   "[ -z \"$ids\" ] || docker rmi -f $ids >/dev/null",
	   T.app);
	if (!getenv("SLIPWAY_KEEP_TEST_DIR"))
		sh("rm -rf %s", T.dir);
	return 0;
}

/* ---- talking to the endpoint ---- */

struct answer {
	int done;
	long status;
	char body[2048];
	char digest[128];
};

static void answered(const struct http_response *resp, void *arg)
{
	struct answer *a = arg;
	a->done = 1;
	a->status = resp->status;
	snprintf(a->body, sizeof a->body, "%s", resp->body ? resp->body : "");
	const char *d = http_response_header(resp, "Docker-Content-Digest");
	snprintf(a->digest, sizeof a->digest, "%s", d ? d : "");
}

static struct answer request(const char *method, const char *url, const char *const *headers,
			     const char *body, size_t len)
{
	static struct answer a;
	memset(&a, 0, sizeof a);
	struct http_request req = {.method = method,
				   .url = url,
				   .headers = headers,
				   .body = body,
				   .body_len = len,
				   .timeout_ms = 30000,
				   .max_body = 1 << 20,
				   .on_done = answered,
				   .arg = &a};
	assert_true(http_client_start(T.http, &req) > 0);
	while (!a.done)
		ev_run(T.loop, EVRUN_ONCE);
	return a;
}

/* The push fixture, rewritten to name sha and our repository. */
static char *push_payload(const char *sha, size_t *len)
{
	const char *base = getenv("SLIPWAY_FIXTURES");
	char path[512];
	snprintf(path, sizeof path, "%s/gitlab/push_hook.json",
		 base && *base ? base : "/work/shared/fixtures");
	size_t flen;
	char *orig = read_file(path, &flen);
	assert_non_null(orig);
	struct buf b;
	buf_init(&b, 1 << 20);
	for (const char *p = orig; *p;) {
		if (!strncmp(p, FIXTURE_SHA, strlen(FIXTURE_SHA))) {
			buf_append_str(&b, sha);
			p += strlen(FIXTURE_SHA);
		} else if (!strncmp(p, FIXTURE_URL, strlen(FIXTURE_URL))) {
			buf_append_str(&b, T.url);
			p += strlen(FIXTURE_URL);
		} else {
			buf_append_byte(&b, *p++);
		}
	}
	free(orig);
	*len = b.len;
	return buf_detach(&b, NULL);
}

/* Delivers a push of sha under a new Idempotency-Key (or `key`). */
static struct answer deliver(const char *sha, const char *key, char *key_out)
{
	char k[64];
	if (key)
		snprintf(k, sizeof k, "%s", key);
	else
		snprintf(k, sizeof k, "it-key-%d", ++T.key_seq);
	if (key_out)
		strcpy(key_out, k);
	size_t len;
	char *body = push_payload(sha, &len);
	char idem[96], url[256];
	snprintf(idem, sizeof idem, "Idempotency-Key: %s", k);
	snprintf(url, sizeof url, "%s/hooks/gitlab/%s", T.base, HOOK);
	const char *headers[] = {"X-Gitlab-Event: Push Hook", "X-Gitlab-Token: " TOKEN, idem,
				 "Content-Type: application/json", NULL};
	struct answer a = request("POST", url, headers, body, len);
	free(body);
	return a;
}

static int query_fn(struct store_tx *tx, void *arg)
{
	char **q = arg;
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(tx->db, q[0], -1, &st, NULL) != SQLITE_OK)
		return err_set(&tx->err, "%s", sqlite3_errmsg(tx->db));
	int rc = sqlite3_step(st);
	snprintf(q[1], 4096, "%s", rc == SQLITE_ROW && sqlite3_column_text(st, 0)
					   ? (const char *)sqlite3_column_text(st, 0)
					   : "");
	sqlite3_finalize(st);
	return 0;
}

__attribute__((format(printf, 1, 2))) static const char *query(const char *fmt, ...)
{
	static char result[4096];
	char sql[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(sql, sizeof sql, fmt, ap);
	va_end(ap);
	char *q[2] = {sql, result};
	struct err e;
	assert_int_equal(store_run(T.c.store, query_fn, q, &e), 0);
	return result;
}

/* Runs the loop until the delivery is settled and the builder idle. */
static const char *wait_delivery(const char *key, int timeout_s)
{
	static char status[32];
	int64_t deadline = clock_mono_ms() + timeout_s * 1000;
	for (;;) {
		snprintf(status, sizeof status, "%s",
			 query("SELECT status FROM deliveries WHERE dedup_key = '%s:idem:%s'", T.app,
			       key));
		bool final = !strcmp(status, "built") || !strcmp(status, "failed") ||
			     !strcmp(status, "stale") || !strcmp(status, "ignored");
		if (final && builder_running(T.c.builder) == 0)
			return status;
		if (clock_mono_ms() > deadline)
			return status;
		ev_run(T.loop, EVRUN_ONCE);
	}
}

static const char *build_of(const char *key)
{
	static char id[64];
	snprintf(id, sizeof id, "%s",
		 query("SELECT build FROM deliveries WHERE dedup_key = '%s:idem:%s'", T.app, key));
	return id;
}

/* The whole log of a build. */
static const char *build_log(const char *build)
{
	return query("SELECT group_concat(chunk, '') FROM (SELECT CAST(chunk AS TEXT) AS chunk "
		     "FROM build_logs WHERE build = '%s' ORDER BY seq)",
		     build);
}

static const char *commit(const char *script)
{
	static char sha[64];
	if (sh("set -e; cd %s/work; %s; git add -A; git commit -qm change; "
	       "git push -q -f ../repo/app.git HEAD:master",
	       T.dir, script) != 0)
		return "";
	snprintf(sha, sizeof sha, "%s", out("git -C %s/work rev-parse HEAD", T.dir));
	return sha;
}

/* ---- the tests, in order (each builds on the previous ones' state) ---- */

static char sha_a[64], sha_b[64], build_a[64], build_b[64];

static void test_push_builds_and_releases(void **state)
{
	(void)state;
	snprintf(sha_a, sizeof sha_a, "%s", out("git -C %s/work rev-parse HEAD", T.dir));
	char key[64];
	struct answer a = deliver(sha_a, NULL, key);
	assert_int_equal(a.status, 202);
	const char *status = wait_delivery(key, 300);
	snprintf(build_a, sizeof build_a, "%s", build_of(key));
	if (strcmp(status, "built") != 0)
		print_error("delivery %s, build %s: %s\nlog:\n%s\n", status, build_a,
			    query("SELECT error FROM builds WHERE id = '%s'", build_a),
			    build_log(build_a));
	assert_string_equal(status, "built");
	assert_string_equal(query("SELECT status FROM builds WHERE id = '%s'", build_a), "complete");
	assert_string_equal(query("SELECT sha FROM builds WHERE id = '%s'", build_a), sha_a);
	char desc[256];
	snprintf(desc, sizeof desc, "push gitlab-org/hello-world refs/heads/master %s", sha_a);
	assert_string_equal(query("SELECT description FROM builds WHERE id = '%s'", build_a), desc);

	/* The image is in the registry under <registry>/<app>:web.<build>, and the
	 * recorded digest is the registry's. */
	char image[256];
	snprintf(image, sizeof image, "%s/%s:web.%s", T.registry, T.app, build_a);
	assert_string_equal(query("SELECT json_extract(images, '$.web.image') FROM builds WHERE "
				  "id = '%s'",
				  build_a),
			    image);
	char digest[128];
	snprintf(digest, sizeof digest, "%s",
		 query("SELECT json_extract(images, '$.web.digest') FROM builds WHERE id = '%s'",
		       build_a));
	assert_int_equal(strncmp(digest, "sha256:", 7), 0);
	assert_int_equal(strlen(digest), 7 + 64);
	char url[512];
	snprintf(url, sizeof url, "http://%s/v2/%s/manifests/web.%s", T.registry, T.app, build_a);
	const char *accept[] = {"Accept: application/vnd.docker.distribution.manifest.v2+json, "
				"application/vnd.oci.image.manifest.v1+json",
				NULL};
	struct answer m = request("GET", url, accept, NULL, 0);
	assert_int_equal(m.status, 200);
	assert_string_equal(m.digest, digest);

	/* The manifest is stored normalized; the labels are on the image. */
	assert_string_equal(query("SELECT json_extract(manifest, '$.services.web.health.path') "
				  "FROM builds WHERE id = '%s'",
				  build_a),
			    "/health");
	assert_string_equal(out("docker image inspect -f '{{index .Config.Labels "
				"\"slipway.build\"}}' %s",
				image),
			    build_a);
	/* .dockerignore kept secret.txt out, .git never goes in. */
	assert_string_equal(out("docker run --rm --label slipway.app=%s --label %s %s sh -c "
				"'test -f /app.txt && test ! -e /secret.txt && test ! -e /.git && "
				"echo clean'",
				T.app, getenv("SLIPWAY_TEST_LABEL") ? getenv("SLIPWAY_TEST_LABEL")
								   : "slipway.test=none",
				image),
			    "clean");

	/* The log: git and docker lines, each with a time stamp. */
	const char *log = build_log(build_a);
	assert_non_null(strstr(log, "fetch --no-tags"));
	assert_non_null(strstr(log, ": COPY app.txt /app.txt"));
	assert_non_null(strstr(log, "pushed "));
	assert_true(log[0] == '2' && log[4] == '-' && log[10] == 'T');

	/* The host key was pinned on first contact. */
	assert_non_null(strstr(query("SELECT known_hosts FROM apps WHERE name = '%s'", T.app),
			       "ssh-ed25519"));
	/* And a release was made from the build. */
	assert_string_equal(query("SELECT count(*) FROM releases WHERE build = '%s'", build_a),
			    "1");
	assert_int_equal(strncmp(query("SELECT release FROM builds WHERE id = '%s'", build_a), "r_",
				 2),
			 0);
}

static void test_duplicate_delivery(void **state)
{
	(void)state;
	struct answer a = deliver(sha_a, "it-key-1", NULL);
	assert_int_equal(a.status, 200);
	assert_non_null(strstr(a.body, "\"duplicate\":true"));
	assert_string_equal(query("SELECT count(*) FROM builds WHERE app = '%s'", T.app), "1");
}

static void test_descendant_builds(void **state)
{
	(void)state;
	snprintf(sha_b, sizeof sha_b, "%s", commit("echo v2 > app.txt"));
	char key[64];
	assert_int_equal(deliver(sha_b, NULL, key).status, 202);
	assert_string_equal(wait_delivery(key, 300), "built");
	snprintf(build_b, sizeof build_b, "%s", build_of(key));
	/* The previous image of the service was offered as cache. */
	assert_non_null(strstr(build_log(build_b), "cache from "));
	/* Already in the mirror's history: fetched incrementally, same mirror. */
	assert_string_equal(query("SELECT count(*) FROM releases WHERE app = '%s'", T.app), "2");
}

static void test_stale_push_does_not_roll_back(void **state)
{
	(void)state;
	const char *releases = "2";
	/* A, delivered late under a new key: an ancestor of B, already built. */
	char key[64];
	assert_int_equal(deliver(sha_a, NULL, key).status, 202);
	assert_string_equal(wait_delivery(key, 120), "stale");
	assert_non_null(strstr(query("SELECT note FROM deliveries WHERE dedup_key = '%s:idem:%s'",
				     T.app, key),
			       "is an ancestor of"));
	/* B again under another key: already built. */
	assert_int_equal(deliver(sha_b, NULL, key).status, 202);
	assert_string_equal(wait_delivery(key, 120), "stale");
	assert_string_equal(query("SELECT count(*) FROM builds WHERE app = '%s'", T.app), "2");
	assert_string_equal(query("SELECT count(*) FROM releases WHERE app = '%s'", T.app),
			    releases);
}

static void test_force_push_builds(void **state)
{
	(void)state;
	/* C: from A, not a descendant of B; the branch is forced to it. */
	char script[256];
	snprintf(script, sizeof script, "git checkout -q --detach %s && echo v3 > app.txt", sha_a);
	const char *c = commit(script);
	assert_int_equal(strlen(c), 40);
	char key[64];
	assert_int_equal(deliver(c, NULL, key).status, 202);
	assert_string_equal(wait_delivery(key, 300), "built");
	assert_non_null(strstr(build_log(build_of(key)), "is not an ancestor of"));
	assert_string_equal(query("SELECT count(*) FROM releases WHERE app = '%s'", T.app), "3");
}

static void test_failing_dockerfile(void **state)
{
	(void)state;
	const char *d = commit("printf 'RUN echo about to fail && exit 3\\n' >> Dockerfile");
	char key[64];
	assert_int_equal(deliver(d, NULL, key).status, 202);
	assert_string_equal(wait_delivery(key, 300), "failed");
	const char *build = build_of(key);
	assert_string_equal(query("SELECT status FROM builds WHERE id = '%s'", build), "failed");
	const char *error = query("SELECT error FROM builds WHERE id = '%s'", build);
	assert_non_null(strstr(error, "docker build"));
	assert_non_null(strstr(error, "non-zero code: 3"));
	const char *log = build_log(build);
	assert_non_null(strstr(log, "about to fail"));
	assert_non_null(strstr(log, "non-zero code: 3"));
	assert_string_equal(query("SELECT count(*) FROM releases WHERE app = '%s'", T.app), "3");
}

static void test_cancel(void **state)
{
	(void)state;
	const char *e = commit("sed -i '/exit 3/d' Dockerfile && "
			       "printf 'RUN echo sleeping-for-cancel && sleep 120\\n' >> Dockerfile");
	char key[64];
	assert_int_equal(deliver(e, NULL, key).status, 202);
	/* Wait until the slow step runs, then cancel. */
	int64_t deadline = clock_mono_ms() + 120000;
	char build[64] = "";
	while (clock_mono_ms() < deadline) {
		snprintf(build, sizeof build, "%s", build_of(key));
		if (*build && strstr(build_log(build), "sleeping-for-cancel"))
			break;
		ev_run(T.loop, EVRUN_ONCE);
	}
	assert_non_null(strstr(build_log(build), "sleeping-for-cancel"));
	int64_t t0 = clock_mono_ms();
	assert_int_equal(builder_cancel(T.c.builder, build), 1);
	assert_string_equal(wait_delivery(key, 60), "failed");
	assert_true(clock_mono_ms() - t0 < 30000);
	assert_string_equal(query("SELECT error FROM builds WHERE id = '%s'", build), "cancelled");
	assert_non_null(strstr(build_log(build), "error: cancelled"));
	/* Cancelling it again: not running here any more. */
	assert_int_equal(builder_cancel(T.c.builder, build), 0);
}

static void test_timeout(void **state)
{
	(void)state;
	/* A builder with a 3 s limit. */
	builder_free(T.c.builder);
	struct config *cfg = load_config("builds.timeout = 3s\n");
	assert_non_null(cfg);
	const struct config *old = T.c.cfg;
	T.c.cfg = cfg;
	struct err err;
	T.c.builder = builder_new(&T.c, &err);
	assert_non_null(T.c.builder);
	const char *f = commit("printf 'RUN echo sleeping-for-timeout && sleep 120\\n' >> Dockerfile");
	char key[64];
	assert_int_equal(deliver(f, NULL, key).status, 202);
	int64_t t0 = clock_mono_ms();
	assert_string_equal(wait_delivery(key, 120), "failed");
	assert_true(clock_mono_ms() - t0 < 60000);
	const char *build = build_of(key);
	assert_non_null(strstr(query("SELECT error FROM builds WHERE id = '%s'", build),
			       "timed out after 3 s"));
	builder_free(T.c.builder);
	T.c.cfg = old;
	T.c.builder = builder_new(&T.c, &err);
	config_free(cfg);
	assert_non_null(T.c.builder);
}

static void test_http_errors(void **state)
{
	(void)state;
	size_t len;
	char *body = push_payload(sha_a, &len);
	char url[256];
	snprintf(url, sizeof url, "%s/hooks/gitlab/%s", T.base, HOOK);
	const char *wrong[] = {"X-Gitlab-Event: Push Hook", "X-Gitlab-Token: nope",
			       "Idempotency-Key: it-wrong", NULL};
	assert_int_equal(request("POST", url, wrong, body, len).status, 401);
	char unknown[256];
	snprintf(unknown, sizeof unknown, "%s/hooks/gitlab/hk_unknown", T.base);
	const char *right[] = {"X-Gitlab-Event: Push Hook", "X-Gitlab-Token: " TOKEN,
			       "Idempotency-Key: it-unknown", NULL};
	assert_int_equal(request("POST", unknown, right, body, len).status, 404);
	/* 26 MB: over the 25 MB cap. */
	size_t huge = (size_t)26 << 20;
	char *big = malloc(huge);
	assert_non_null(big);
	memset(big, ' ', huge);
	memcpy(big, body, len);
	const char *h[] = {"X-Gitlab-Event: Push Hook", "X-Gitlab-Token: " TOKEN,
			   "Idempotency-Key: it-huge", NULL};
	assert_int_equal(request("POST", url, h, big, huge).status, 413);
	free(big);
	free(body);
	assert_string_equal(query("SELECT count(*) FROM deliveries WHERE dedup_key LIKE '%%it-wrong' "
				  "OR dedup_key LIKE '%%it-unknown' OR dedup_key LIKE '%%it-huge'"),
			    "0");
}

struct upload {
	const char *id, *path;
};

static int insert_upload(struct store_tx *tx, void *arg)
{
	struct upload *u = arg;
	sqlite3_stmt *st = store_stmt(tx, "INSERT INTO builds(id, app, status, source, description, "
					  "context_path, created_ms) VALUES (?, ?, 'created', "
					  "'upload', 'upload test', ?, ?)");
	sqlite3_bind_text(st, 1, u->id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, T.app, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, u->path, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 4, clock_wall_ms());
	return store_step(tx, st) == SQLITE_DONE ? 0 : -1;
}

/* A build queued with an uploaded context (slipway deploy): no git at all. */
static void test_upload_builds(void **state)
{
	(void)state;
	char path[512];
	snprintf(path, sizeof path, "%s/upload.tar.gz", T.dir);
	assert_int_equal(sh("set -e; mkdir -p %s/up; cd %s/up; "
			    "printf 'FROM %s\\nCOPY up.txt /up.txt\\n' > Dockerfile; "
			    "printf 'services:\\n  web:\\n    build: .\\n' > slipway.yml; "
			    "echo uploaded > up.txt; tar czf %s .",
			    T.dir, T.dir, T.base_image, path),
			 0);
	struct upload u = {"b_upload0001", path};
	struct err e;
	assert_int_equal(store_run(T.c.store, insert_upload, &u, &e), 0);
	builder_kick(T.c.builder);
	int64_t deadline = clock_mono_ms() + 300000;
	const char *status = "";
	while (clock_mono_ms() < deadline) {
		status = query("SELECT status FROM builds WHERE id = 'b_upload0001'");
		if ((!strcmp(status, "complete") || !strcmp(status, "failed")) &&
		    builder_running(T.c.builder) == 0)
			break;
		ev_run(T.loop, EVRUN_ONCE);
	}
	if (strcmp(status, "complete") != 0)
		print_error("%s\n%s\n", query("SELECT error FROM builds WHERE id = 'b_upload0001'"),
			    build_log("b_upload0001"));
	assert_string_equal(status, "complete");
	const char *log = build_log("b_upload0001");
	assert_non_null(strstr(log, "unpacked"));
	assert_null(strstr(log, "git "));
	assert_non_null(strstr(query("SELECT json_extract(images, '$.web.digest') FROM builds "
				     "WHERE id = 'b_upload0001'"),
			       "sha256:"));
}

/* The build completes and its release is made in ONE transaction: when the
 * release cannot be made (here: the app's sealed environment does not open),
 * the build fails with why, and a complete build without a release is never
 * seen. */
static void test_release_refused_fails_build(void **state)
{
	(void)state;
	char path[512];
	snprintf(path, sizeof path, "%s/upload2.tar.gz", T.dir);
	assert_int_equal(sh("set -e; mkdir -p %s/up2; cd %s/up2; "
			    "printf 'FROM %s\\nCOPY up.txt /up.txt\\n' > Dockerfile; "
			    "printf 'services:\\n  web:\\n    build: .\\n' > slipway.yml; "
			    "echo uploaded > up.txt; tar czf %s .",
			    T.dir, T.dir, T.base_image, path),
			 0);
	char env[4096];
	snprintf(env, sizeof env, "%s",
		 query("SELECT hex(environment) FROM apps WHERE name = '%s'", T.app));
	query("UPDATE apps SET environment = X'00' WHERE name = '%s'", T.app);
	struct upload u = {"b_upload0002", path};
	struct err e;
	assert_int_equal(store_run(T.c.store, insert_upload, &u, &e), 0);
	builder_kick(T.c.builder);
	int64_t deadline = clock_mono_ms() + 300000;
	char status[32] = "";
	int seen_complete = 0;
	while (clock_mono_ms() < deadline) {
		snprintf(status, sizeof status, "%s",
			 query("SELECT status FROM builds WHERE id = 'b_upload0002'"));
		seen_complete |= !strcmp(status, "complete");
		if (!strcmp(status, "failed") && builder_running(T.c.builder) == 0)
			break;
		ev_run(T.loop, EVRUN_ONCE);
	}
	if (env[0])
		query("UPDATE apps SET environment = X'%s' WHERE name = '%s'", env, T.app);
	else
		query("UPDATE apps SET environment = NULL WHERE name = '%s'", T.app);
	assert_false(seen_complete);
	assert_string_equal(status, "failed");
	const char *error = query("SELECT error FROM builds WHERE id = 'b_upload0002'");
	if (strncmp(error, "no release: ", 12) != 0)
		print_error("error: %s\n", error);
	assert_int_equal(strncmp(error, "no release: ", 12), 0);
	assert_string_equal(query("SELECT coalesce(release, '-') FROM builds WHERE id = "
				  "'b_upload0002'"),
			    "-");
	assert_string_equal(query("SELECT count(*) FROM releases WHERE build = 'b_upload0002'"),
			    "0");
	/* The builds that did complete all have their release. */
	assert_string_equal(query("SELECT count(*) FROM builds WHERE status = 'complete' AND "
				  "release IS NULL"),
			    "0");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_push_builds_and_releases),
		cmocka_unit_test(test_duplicate_delivery),
		cmocka_unit_test(test_descendant_builds),
		cmocka_unit_test(test_stale_push_does_not_roll_back),
		cmocka_unit_test(test_force_push_builds),
		cmocka_unit_test(test_failing_dockerfile),
		cmocka_unit_test(test_cancel),
		cmocka_unit_test(test_timeout),
		cmocka_unit_test(test_http_errors),
		cmocka_unit_test(test_upload_builds),
		cmocka_unit_test(test_release_refused_fails_build),
	};
	return cmocka_run_group_tests_name("build", tests, group_setup, group_teardown);
}
