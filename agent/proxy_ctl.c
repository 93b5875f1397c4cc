#include "proxy_ctl.h"

#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "buf.h"
#include "clock.h"
#include "dlist.h"
#include "httpd.h"
#include "json.h"
#include "log.h"
#include "proxy.h"
#include "worker.h"

#define CTL_MAX_CONNECTIONS 64
#define ACCEPT_BATCH 16

struct proxy_ctl {
	struct ev_loop *loop;
	struct proxy *proxy;
	struct worker_pool *workers;
	struct httpd *srv;
	int listen_fd;
	ev_io accept_io;
	char *socket_path;
	char *version;
	int64_t started_ms;
	/* persistence */
	struct persister *ps;      /* NULL: no routes file */
	uint64_t persisted;
	struct persist_job *job;   /* the one in flight, disowned on free */
	struct pending *pending;   /* drains waiting for the proxy */
};

/* A drain request waiting for its answer. */
struct pending {
	struct proxy_ctl *ctl;
	struct pending *next, *prev;
	struct httpd_req *req;
	uint64_t drain_id;
};

struct persister;

struct persist_job {
	struct proxy_ctl *ctl;     /* NULL once the ctl is gone */
	struct persister *ps;
	uint64_t writes;
	struct err err;
	int rc;
};

static void proxy_ctl_persist_kick(struct proxy_ctl *ctl);

/* ------------------------------------------------------------------ */
/* route documents                                                      */

struct route_doc {
	struct proxy_route_spec spec;
	const char *hosts[PROXY_HOSTS_MAX];
	struct proxy_backend_spec backends[PROXY_BACKENDS_MAX];
};

/* Reads a route object. app/service come from the URL (PUT) or from the
 * object itself (a stored table: app and service required there). */
static int route_doc_parse(const cJSON *o, const char *path, const char *app,
			   const char *service, struct route_doc *d, struct err *err)
{
	static const char *const put_keys[] = {"generation", "release", "listen", "protocol",
					      "hosts", "backends", NULL};
	static const char *const file_keys[] = {"app", "service", "generation", "release",
					       "listen", "protocol", "hosts", "backends", NULL};
	static const char *const be_keys[] = {"id", "address", NULL};
	char sub[JSON_PATH_MAX];
	memset(d, 0, sizeof *d);
	if (!cJSON_IsObject(o))
		return err_set(err, "%s: expected an object", path && *path ? path : "body");
	if (json_check_keys(o, app ? put_keys : file_keys, path, err) < 0)
		return -1;
	if (!app) {
		if (json_get_string(o, path, "app", PROXY_NAME_MAX, &app, err) < 0 ||
		    json_get_string(o, path, "service", PROXY_NAME_MAX, &service, err) < 0)
			return -1;
	}
	d->spec.app = app;
	d->spec.service = service;
	const char *protocol;
	int64_t listen;
	const cJSON *hosts, *backends;
	size_t nh, nb;
	if (json_get_int(o, path, "generation", 0, JSON_INT_LIMIT, &d->spec.generation, err) < 0 ||
	    json_get_string_opt(o, path, "release", PROXY_RELEASE_MAX, "", &d->spec.release,
				err) < 0 ||
	    json_get_int(o, path, "listen", 1, 65535, &listen, err) < 0 ||
	    json_get_string_opt(o, path, "protocol", 8, "http", &protocol, err) < 0 ||
	    json_get_array_opt(o, path, "hosts", PROXY_HOSTS_MAX, &hosts, &nh, err) < 0 ||
	    json_get_array(o, path, "backends", PROXY_BACKENDS_MAX, &backends, &nb, err) < 0)
		return -1;
	d->spec.listen = (int)listen;
	if (!strcmp(protocol, "http"))
		d->spec.protocol = PROXY_HTTP;
	else if (!strcmp(protocol, "tcp"))
		d->spec.protocol = PROXY_TCP;
	else
		return err_set(err, "%s: expected \"http\" or \"tcp\"",
			       json_path_key(sub, sizeof sub, path, "protocol"));
	char hpath[JSON_PATH_MAX];
	json_path_key(hpath, sizeof hpath, path, "hosts");
	for (size_t i = 0; i < nh; i++) {
		json_path_index(sub, sizeof sub, hpath, i);
		if (json_get_string(cJSON_GetArrayItem(hosts, (int)i), sub, NULL, PROXY_HOST_MAX,
				    &d->hosts[i], err) < 0)
			return -1;
	}
	d->spec.hosts = d->hosts;
	d->spec.host_count = nh;
	char bpath[JSON_PATH_MAX];
	json_path_key(bpath, sizeof bpath, path, "backends");
	for (size_t i = 0; i < nb; i++) {
		const cJSON *b = cJSON_GetArrayItem(backends, (int)i);
		json_path_index(sub, sizeof sub, bpath, i);
		if (!cJSON_IsObject(b))
			return err_set(err, "%s: expected an object", sub);
		if (json_check_keys(b, be_keys, sub, err) < 0 ||
		    json_get_string(b, sub, "id", PROXY_ID_MAX, &d->backends[i].id, err) < 0 ||
		    json_get_string(b, sub, "address", PROXY_ADDRESS_MAX, &d->backends[i].address,
				    err) < 0)
			return -1;
	}
	d->spec.backends = d->backends;
	d->spec.backend_count = nb;
	return 0;
}

int proxy_ctl_load_table(struct proxy *proxy, const cJSON *table, struct err *err)
{
	const cJSON *routes;
	size_t n;
	if (!cJSON_IsObject(table))
		return err_set(err, "route table: expected an object");
	if (json_get_array(table, NULL, "routes", 100000, &routes, &n, err) < 0)
		return -1;
	int loaded = 0;
	for (size_t i = 0; i < n; i++) {
		struct route_doc d;
		struct err e;
		char path[JSON_PATH_MAX];
		json_path_index(path, sizeof path, "routes", i);
		if (route_doc_parse(cJSON_GetArrayItem(routes, (int)i), path, NULL, NULL, &d, &e) < 0 ||
		    proxy_set_route(proxy, &d.spec, NULL, NULL, &e) < 0) {
			log_error("proxy.route_load_failed", "error=%s", e.msg);
			continue;
		}
		loaded++;
	}
	return loaded;
}

int proxy_ctl_load_file(struct proxy *proxy, const char *path, struct err *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT)
			return 0;
		return err_set(err, "%s: %s", path, strerror(errno));
	}
	struct buf b;
	buf_init(&b, PROXY_ROUTES_FILE_MAX);
	char chunk[65536];
	for (;;) {
		ssize_t n = read(fd, chunk, sizeof chunk);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 || (n > 0 && buf_append(&b, chunk, (size_t)n) < 0)) {
			int e = n < 0 ? errno : EFBIG;
			close(fd);
			buf_free(&b);
			return err_set(err, "%s: %s", path, strerror(e));
		}
		if (n == 0)
			break;
	}
	close(fd);
	cJSON *doc = json_parse(b.data ? b.data : "", b.len, PROXY_ROUTES_FILE_MAX, err);
	buf_free(&b);
	if (!doc)
		return err_prefix(err, "%s", path);
	int rc = proxy_ctl_load_table(proxy, doc, err);
	cJSON_Delete(doc);
	if (rc < 0)
		return err_prefix(err, "%s", path);
	return rc;
}

/* ------------------------------------------------------------------ */
/* persistence (off the loop)                                           */

/*
 * Every change puts a fresh snapshot of the table into the persister (on the
 * loop, a cheap print); one worker job at a time writes snapshots until the
 * newest one is on disk. The persister outlives the ctl while a job runs, so
 * the last change made before proxy_ctl_free still reaches the disk (the
 * owner's worker_pool_free waits for it).
 */
struct persister {
	pthread_mutex_t mu;
	char *path;
	char *latest;              /* newest snapshot */
	uint64_t gen_latest, gen_written;
	bool job_running;          /* loop thread only */
	bool orphan;               /* the ctl is gone: free after the job */
};

static int write_file(const char *path, const char *text, size_t len, struct err *err)
{
	char tmp[PATH_MAX];
	if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
		return err_set(err, "path too long");
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return err_set(err, "%s: %s", tmp, strerror(errno));
	size_t off = 0;
	while (off < len) {
		ssize_t n = write(fd, text + off, len - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			err_set(err, "%s: %s", tmp, strerror(errno));
			close(fd);
			unlink(tmp);
			return -1;
		}
		off += (size_t)n;
	}
	if (fsync(fd) < 0 || close(fd) < 0) {
		err_set(err, "%s: fsync: %s", tmp, strerror(errno));
		unlink(tmp);
		return -1;
	}
	if (rename(tmp, path) < 0) {
		err_set(err, "rename %s: %s", tmp, strerror(errno));
		unlink(tmp);
		return -1;
	}
	char dir[PATH_MAX];
	snprintf(dir, sizeof dir, "%s", path);
	int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0) {
		fsync(dfd);
		close(dfd);
	}
	return 0;
}

static void persist_work(void *arg)
{
	struct persist_job *j = arg;
	struct persister *ps = j->ps;
	for (;;) {
		pthread_mutex_lock(&ps->mu);
		uint64_t gen = ps->gen_latest;
		bool done = gen == ps->gen_written;
		char *text = done ? NULL : strdup(ps->latest);
		pthread_mutex_unlock(&ps->mu);
		if (done)
			return;
		if (!text) {
			err_set(&j->err, "out of memory");
			j->rc = -1;
			return;
		}
		j->rc = write_file(ps->path, text, strlen(text), &j->err);
		free(text);
		pthread_mutex_lock(&ps->mu);
		ps->gen_written = gen; /* a failed write is not retried until the next change */
		pthread_mutex_unlock(&ps->mu);
		if (j->rc == 0)
			j->writes++;
	}
}

static void persister_free(struct persister *ps)
{
	pthread_mutex_destroy(&ps->mu);
	free(ps->path);
	free(ps->latest);
	free(ps);
}

static void persist_done(void *arg)
{
	struct persist_job *j = arg;
	struct persister *ps = j->ps;
	struct proxy_ctl *ctl = j->ctl;
	ps->job_running = false;
	if (j->rc < 0)
		log_error("proxy.routes_write_failed", "error=%s", j->err.msg);
	if (ctl) {
		ctl->job = NULL;
		ctl->persisted += j->writes;
	}
	free(j);
	if (ps->orphan) {
		persister_free(ps);
		return;
	}
	pthread_mutex_lock(&ps->mu);
	bool behind = ps->gen_latest != ps->gen_written;
	pthread_mutex_unlock(&ps->mu);
	if (behind && ctl)
		proxy_ctl_persist_kick(ctl);
}

static void proxy_ctl_persist_kick(struct proxy_ctl *ctl)
{
	struct persister *ps = ctl->ps;
	if (ps->job_running)
		return; /* the running job picks the newest snapshot up */
	struct persist_job *j = calloc(1, sizeof *j);
	if (!j) {
		log_error("proxy.routes_write_failed", "error=out of memory");
		return;
	}
	j->ctl = ctl;
	j->ps = ps;
	if (worker_submit(ctl->workers, persist_work, persist_done, j) < 0) {
		log_error("proxy.routes_write_failed", "error=worker queue full");
		free(j);
		return;
	}
	ps->job_running = true;
	ctl->job = j;
}

void proxy_ctl_persist(struct proxy_ctl *ctl)
{
	struct persister *ps = ctl->ps;
	if (!ps)
		return;
	cJSON *doc = proxy_routes_json(ctl->proxy, false);
	if (doc)
		cJSON_DeleteItemFromObject(doc, "draining"); /* a new process starts serving */
	char *text = doc ? cJSON_PrintUnformatted(doc) : NULL;
	cJSON_Delete(doc);
	if (!text) {
		log_error("proxy.routes_write_failed", "error=out of memory");
		return;
	}
	pthread_mutex_lock(&ps->mu);
	free(ps->latest);
	ps->latest = text;
	ps->gen_latest++;
	pthread_mutex_unlock(&ps->mu);
	proxy_ctl_persist_kick(ctl);
}

uint64_t proxy_ctl_persisted(const struct proxy_ctl *ctl)
{
	return ctl->persisted;
}

bool proxy_ctl_persist_busy(const struct proxy_ctl *ctl)
{
	return ctl->ps && ctl->ps->job_running;
}

/* ------------------------------------------------------------------ */
/* handlers                                                             */

static int status_http(enum proxy_status st)
{
	switch (st) {
	case PROXY_EINVAL:
		return 400;
	case PROXY_ECONFLICT:
		return 409;
	case PROXY_ENOTFOUND:
		return 404;
	default:
		return 500;
	}
}

static const char *status_code(enum proxy_status st)
{
	switch (st) {
	case PROXY_EINVAL:
		return "bad_request";
	case PROXY_ECONFLICT:
		return "conflict";
	case PROXY_ENOTFOUND:
		return "not_found";
	case PROXY_ELISTEN:
		return "listen_failed";
	default:
		return "internal";
	}
}

static void respond_status(struct httpd_req *req, enum proxy_status st, const struct err *e)
{
	httpd_respond_error(req, status_http(st), status_code(st), e->msg);
}

static cJSON *parse_body(struct httpd_req *req)
{
	struct err e;
	cJSON *doc = json_parse(req->body, req->body_len, PROXY_CTL_BODY_MAX, &e);
	if (!doc)
		httpd_respond_error(req, 400, "bad_request", e.msg);
	return doc;
}

static void put_route(struct proxy_ctl *ctl, struct httpd_req *req, const char *app,
		      const char *service)
{
	cJSON *doc = parse_body(req);
	if (!doc)
		return;
	struct route_doc d;
	struct err e;
	enum proxy_status st = PROXY_EINVAL;
	cJSON *previous = NULL;
	if (route_doc_parse(doc, "", app, service, &d, &e) < 0 ||
	    proxy_set_route(ctl->proxy, &d.spec, &previous, &st, &e) < 0) {
		cJSON_Delete(doc);
		respond_status(req, st, &e);
		return;
	}
	cJSON_Delete(doc);
	proxy_ctl_persist(ctl);
	cJSON *ans = cJSON_CreateObject();
	if (!ans || !cJSON_AddItemToObject(ans, "previous", previous)) {
		cJSON_Delete(previous);
		cJSON_Delete(ans);
		httpd_respond_error(req, 500, "internal", "out of memory");
		return;
	}
	httpd_respond_json(req, 200, ans);
	cJSON_Delete(ans);
}

static void delete_route(struct proxy_ctl *ctl, struct httpd_req *req, const char *app,
			 const char *service)
{
	struct err e;
	enum proxy_status st;
	if (proxy_remove_route(ctl->proxy, app, service, &st, &e) < 0) {
		respond_status(req, st, &e);
		return;
	}
	proxy_ctl_persist(ctl);
	httpd_respond(req, 200, "application/json", "{}", 2);
}

static void pending_free(struct pending *pd)
{
	struct proxy_ctl *ctl = pd->ctl;
	DLIST_UNLINK(ctl->pending, pd);
	free(pd);
}

static void drain_answer(bool drained, uint64_t remaining, int64_t waited_ms, void *arg)
{
	struct pending *pd = arg;
	struct httpd_req *req = pd->req;
	httpd_req_on_abort(req, NULL, NULL);
	pending_free(pd);
	char body[128];
	int n = snprintf(body, sizeof body, "{\"drained\":%s,\"remaining\":%llu,\"waited_ms\":%lld}",
			 drained ? "true" : "false", (unsigned long long)remaining,
			 (long long)waited_ms);
	httpd_respond(req, 200, "application/json", body, (size_t)n);
}

static void drain_abort(struct httpd_req *req, void *arg)
{
	(void)req;
	struct pending *pd = arg;
	proxy_drain_cancel(pd->ctl->proxy, pd->drain_id);
	pending_free(pd);
}

static void post_drain(struct proxy_ctl *ctl, struct httpd_req *req, const char *app,
		       const char *service)
{
	static const char *const keys[] = {"backends", "timeout_ms", NULL};
	cJSON *doc = parse_body(req);
	if (!doc)
		return;
	struct err e;
	const cJSON *arr;
	size_t n;
	int64_t timeout_ms;
	const char *ids[PROXY_BACKENDS_MAX * 4];
	if (!cJSON_IsObject(doc)) {
		err_set(&e, "body: expected an object");
		goto bad;
	}
	if (json_check_keys(doc, keys, "", &e) < 0 ||
	    json_get_array(doc, NULL, "backends", PROXY_BACKENDS_MAX * 4, &arr, &n, &e) < 0 ||
	    json_get_int_opt(doc, NULL, "timeout_ms", 0, 24LL * 3600 * 1000, 30000, &timeout_ms,
			     &e) < 0)
		goto bad;
	for (size_t i = 0; i < n; i++) {
		char path[JSON_PATH_MAX];
		json_path_index(path, sizeof path, "backends", i);
		if (json_get_string(cJSON_GetArrayItem(arr, (int)i), path, NULL, PROXY_ID_MAX,
				    &ids[i], &e) < 0)
			goto bad;
	}
	struct pending *pd = calloc(1, sizeof *pd);
	if (!pd) {
		cJSON_Delete(doc);
		httpd_respond_error(req, 500, "internal", "out of memory");
		return;
	}
	enum proxy_status st;
	pd->drain_id = proxy_drain(ctl->proxy, app, service, ids, n, timeout_ms, drain_answer, pd,
				   &st, &e);
	cJSON_Delete(doc);
	if (!pd->drain_id) {
		free(pd);
		respond_status(req, st, &e);
		return;
	}
	pd->ctl = ctl;
	pd->req = req;
	DLIST_PUSH(ctl->pending, pd);
	httpd_req_on_abort(req, drain_abort, pd);
	return;
bad:
	cJSON_Delete(doc);
	httpd_respond_error(req, 400, "bad_request", e.msg);
}

static void put_draining(struct proxy_ctl *ctl, struct httpd_req *req)
{
	static const char *const keys[] = {"draining", NULL};
	cJSON *doc = parse_body(req);
	if (!doc)
		return;
	struct err e;
	bool draining;
	if (!cJSON_IsObject(doc) || json_check_keys(doc, keys, "", &e) < 0 ||
	    json_get_bool(doc, NULL, "draining", &draining, &e) < 0) {
		if (!cJSON_IsObject(doc))
			err_set(&e, "body: expected an object");
		cJSON_Delete(doc);
		httpd_respond_error(req, 400, "bad_request", e.msg);
		return;
	}
	cJSON_Delete(doc);
	proxy_set_draining(ctl->proxy, draining);
	char body[32];
	int n = snprintf(body, sizeof body, "{\"draining\":%s}", draining ? "true" : "false");
	httpd_respond(req, 200, "application/json", body, (size_t)n);
}

static void get_routes(struct proxy_ctl *ctl, struct httpd_req *req)
{
	cJSON *doc = proxy_routes_json(ctl->proxy, true);
	if (!doc) {
		httpd_respond_error(req, 500, "internal", "out of memory");
		return;
	}
	httpd_respond_json(req, 200, doc);
	cJSON_Delete(doc);
}

static void get_health(struct proxy_ctl *ctl, struct httpd_req *req)
{
	char body[256];
	int n = snprintf(body, sizeof body,
			 "{\"pid\":%ld,\"version\":\"%s\",\"uptime_s\":%lld,\"routes\":%zu}",
			 (long)getpid(), ctl->version,
			 (long long)((clock_mono_ms() - ctl->started_ms) / 1000),
			 proxy_route_count(ctl->proxy));
	httpd_respond(req, 200, "application/json", body, (size_t)n);
}

/* Splits "/v1/routes/app/service[/drain]" into at most 5 segments. */
static size_t split_path(const char *path, char seg[5][PROXY_NAME_MAX + 2])
{
	size_t n = 0;
	const char *s = path;
	while (*s == '/' && n < 5) {
		s++;
		const char *e = strchr(s, '/');
		size_t len = e ? (size_t)(e - s) : strlen(s);
		if (len == 0 || len > PROXY_NAME_MAX)
			return 0;
		memcpy(seg[n], s, len);
		seg[n][len] = '\0';
		n++;
		s += len;
	}
	return *s ? 0 : n;
}

static void ctl_handler(struct httpd_req *req, void *arg)
{
	struct proxy_ctl *ctl = arg;
	char seg[5][PROXY_NAME_MAX + 2];
	size_t n = split_path(req->path, seg);
	const char *m = req->method;
	bool v1 = n >= 2 && !strcmp(seg[0], "v1");
	if (v1 && n == 2 && !strcmp(seg[1], "health")) {
		if (!strcmp(m, "GET"))
			get_health(ctl, req);
		else
			httpd_respond_error(req, 405, "method_not_allowed", "use GET");
		return;
	}
	if (v1 && n == 2 && !strcmp(seg[1], "draining")) {
		if (!strcmp(m, "PUT"))
			put_draining(ctl, req);
		else
			httpd_respond_error(req, 405, "method_not_allowed", "use PUT");
		return;
	}
	if (v1 && !strcmp(seg[1], "routes")) {
		if (n == 2) {
			if (!strcmp(m, "GET"))
				get_routes(ctl, req);
			else
				httpd_respond_error(req, 405, "method_not_allowed", "use GET");
			return;
		}
		if (n == 4) {
			if (!strcmp(m, "PUT"))
				put_route(ctl, req, seg[2], seg[3]);
			else if (!strcmp(m, "DELETE"))
				delete_route(ctl, req, seg[2], seg[3]);
			else
				httpd_respond_error(req, 405, "method_not_allowed", "use PUT or DELETE");
			return;
		}
		if (n == 5 && !strcmp(seg[4], "drain")) {
			if (!strcmp(m, "POST"))
				post_drain(ctl, req, seg[2], seg[3]);
			else
				httpd_respond_error(req, 405, "method_not_allowed", "use POST");
			return;
		}
	}
	httpd_respond_error(req, 404, "not_found", "no such endpoint");
}

/* ------------------------------------------------------------------ */
/* the control socket                                                   */

static void ctl_accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	(void)loop;
	(void)revents;
	struct proxy_ctl *ctl = w->data;
	for (int i = 0; i < ACCEPT_BATCH; i++) {
		int fd = accept4(ctl->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0)
			return;
		struct err e;
		if (httpd_adopt_fd(ctl->srv, fd, "unix", &e) < 0)
			log_warn("proxy.ctl_refused", "error=%s", e.msg);
	}
}

/* A live socket answers connect(); a stale file from a dead process does not. */
static bool socket_alive(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return false;
	bool alive = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
	close(fd);
	return alive;
}

int proxy_ctl_listen_unix(const char *path, int backlog, const char *what, struct err *err)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	char tmp[sizeof sa.sun_path];
	if (snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid()) >= (int)sizeof tmp)
		return err_set(err, "%s path too long: %s", what, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return err_set(err, "socket: %s", strerror(errno));
	snprintf(sa.sun_path, sizeof sa.sun_path, "%s", tmp);
	unlink(tmp);
	if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || chmod(tmp, 0600) < 0 ||
	    listen(fd, backlog) < 0 || rename(tmp, path) < 0) {
		int e = errno;
		close(fd);
		unlink(tmp);
		return err_set(err, "%s %s: %s", what, path, strerror(e));
	}
	return fd;
}

static int bind_control(const char *path, struct err *err)
{
	if (socket_alive(path))
		return err_set(err, "%s: another proxy answers there", path);
	return proxy_ctl_listen_unix(path, 64, "control socket", err);
}

struct proxy_ctl *proxy_ctl_new(struct ev_loop *loop, struct proxy *proxy,
				struct worker_pool *workers, const struct proxy_ctl_config *cfg,
				struct err *err)
{
	struct proxy_ctl *ctl = calloc(1, sizeof *ctl);
	if (!ctl) {
		err_set(err, "out of memory");
		return NULL;
	}
	ctl->loop = loop;
	ctl->proxy = proxy;
	ctl->workers = workers;
	ctl->listen_fd = -1;
	ctl->started_ms = clock_mono_ms();
	ctl->socket_path = strdup(cfg->socket_path);
	ctl->version = strdup(cfg->version ? cfg->version : "dev");
	if (cfg->routes_file) {
		ctl->ps = calloc(1, sizeof *ctl->ps);
		if (ctl->ps) {
			pthread_mutex_init(&ctl->ps->mu, NULL);
			ctl->ps->path = strdup(cfg->routes_file);
		}
	}
	bool ps_ok = !cfg->routes_file || (ctl->ps && ctl->ps->path);
	if (!ctl->socket_path || !ctl->version || !ps_ok) {
		err_set(err, "out of memory");
		goto fail;
	}
	struct httpd_config hc = {
		.listen = NULL,
		.handler = ctl_handler,
		.arg = ctl,
		.max_connections = CTL_MAX_CONNECTIONS,
		.body_max = PROXY_CTL_BODY_MAX,
		.idle_timeout_ms = 60000,
	};
	ctl->srv = httpd_new(loop, &hc, err);
	if (!ctl->srv)
		goto fail;
	if (cfg->listen_fd >= 0) {
		ctl->listen_fd = cfg->listen_fd;
		int fl = fcntl(ctl->listen_fd, F_GETFL);
		if (fl >= 0)
			fcntl(ctl->listen_fd, F_SETFL, fl | O_NONBLOCK);
		fcntl(ctl->listen_fd, F_SETFD, FD_CLOEXEC);
	} else {
		ctl->listen_fd = bind_control(cfg->socket_path, err);
		if (ctl->listen_fd < 0)
			goto fail;
	}
	ev_io_init(&ctl->accept_io, ctl_accept_cb, ctl->listen_fd, EV_READ);
	ctl->accept_io.data = ctl;
	ev_io_start(loop, &ctl->accept_io);
	log_info("proxy.ctl_listen", "socket=%s inherited=%s", cfg->socket_path,
		 cfg->listen_fd >= 0 ? "true" : "false");
	return ctl;
fail:
	httpd_free(ctl->srv);
	if (ctl->ps)
		persister_free(ctl->ps);
	free(ctl->socket_path);
	free(ctl->version);
	free(ctl);
	return NULL;
}

int proxy_ctl_listen_fd(const struct proxy_ctl *ctl)
{
	return ctl->listen_fd;
}

void proxy_ctl_pause(struct proxy_ctl *ctl)
{
	ev_io_stop(ctl->loop, &ctl->accept_io);
}

void proxy_ctl_resume(struct proxy_ctl *ctl)
{
	if (ctl->listen_fd >= 0)
		ev_io_start(ctl->loop, &ctl->accept_io);
}

size_t proxy_ctl_requests(const struct proxy_ctl *ctl)
{
	return httpd_request_count(ctl->srv);
}

void proxy_ctl_stop_accepting(struct proxy_ctl *ctl)
{
	ev_io_stop(ctl->loop, &ctl->accept_io);
	if (ctl->listen_fd >= 0)
		close(ctl->listen_fd);
	ctl->listen_fd = -1;
	httpd_stop_accepting(ctl->srv);
}

void proxy_ctl_free(struct proxy_ctl *ctl)
{
	if (!ctl)
		return;
	ev_io_stop(ctl->loop, &ctl->accept_io);
	if (ctl->listen_fd >= 0)
		close(ctl->listen_fd);
	/* drains first: httpd_free aborts their requests and drain_abort would
	 * cancel them anyway */
	while (ctl->pending) {
		struct pending *pd = ctl->pending;
		httpd_req_on_abort(pd->req, NULL, NULL);
		proxy_drain_cancel(ctl->proxy, pd->drain_id);
		pending_free(pd);
	}
	httpd_free(ctl->srv);
	if (ctl->job)
		ctl->job->ctl = NULL;
	if (ctl->ps) {
		if (ctl->ps->job_running)
			ctl->ps->orphan = true; /* the job writes the newest snapshot, then frees it */
		else
			persister_free(ctl->ps);
	}
	free(ctl->socket_path);
	free(ctl->version);
	free(ctl);
}
