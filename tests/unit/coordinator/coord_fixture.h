/*
 * A coordinator in-process for the coordinator's unit tests: a temporary data
 * directory, a store, the master key, and optionally the whole HTTP side
 * (server on 127.0.0.1:0 with agents, queue, logsink and API routes) reached
 * through common/http_client on the same loop. Header-only (static functions)
 * so each test file includes what it uses.
 */
#ifndef SLIPWAY_TEST_COORD_FIXTURE_H
#define SLIPWAY_TEST_COORD_FIXTURE_H

#include <ev.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agents.h"
#include "api.h"
#include "auth.h"
#include "buf.h"
#include "clock.h"
#include "config.h"
#include "coord.h"
#include "http_client.h"
#include "json.h"
#include "logsink.h"
#include "queue.h"
#include "releases.h"
#include "rollout.h"
#include "server.h"
#include "../../../coordinator/settings.h" /* agent/ has a settings.h too */
#include "store.h"

#define FX_UNUSED __attribute__((unused))
#define FX_BOOT "boot-token-for-tests-0123456789"

struct fx {
	char dir[128];
	struct ev_loop *loop;
	struct config *cfg;
	struct coord c;
	struct http_client *http;
	int port;
	char admin_key[AUTH_API_KEY_LEN + 1];
};

static FX_UNUSED void fx_fail(const char *what, const char *why)
{
	fprintf(stderr, "fixture: %s: %s\n", what, why);
	abort();
}

static FX_UNUSED int fx_key_tx(struct store_tx *tx, void *arg)
{
	char *key = arg;
	char id[40];
	return auth_key_create_tx(tx, "admin", AUTH_ROLE_ADMIN, NULL, id, key);
}

/* extra: more config lines ("queue.lease = 2s\n"), may be NULL. */
static FX_UNUSED void fx_init(struct fx *f, const char *extra, int with_server)
{
	memset(f, 0, sizeof *f);
	snprintf(f->dir, sizeof f->dir, "/tmp/slipway-coord-test-XXXXXX");
	if (!mkdtemp(f->dir))
		fx_fail("mkdtemp", "failed");
	char conf[2048];
	snprintf(conf, sizeof conf,
		 "data.dir = %s\nagents.bootstrap_token = " FX_BOOT "\nserver.listen = 127.0.0.1:0\n"
		 "%s",
		 f->dir, extra ? extra : "");
	struct err err;
	f->cfg = config_load_buffer(coord_settings, coord_settings_count, conf, strlen(conf),
				    "test.conf", NULL, &err);
	if (!f->cfg)
		fx_fail("config", err.msg);
	f->loop = ev_loop_new(EVFLAG_AUTO);
	struct coord *c = &f->c;
	c->loop = f->loop;
	c->cfg = f->cfg;
	c->started_ms = clock_wall_ms();
	snprintf(c->data_dir, sizeof c->data_dir, "%s", f->dir);
	crypto_random(c->master_key, sizeof c->master_key);
	char db[256];
	snprintf(db, sizeof db, "%s/coordinator.db", f->dir);
	c->store = store_open(f->loop, db, &err);
	if (!c->store)
		fx_fail("store", err.msg);
	c->auth = auth_new(c);
	c->agents = agents_new(c);
	c->queue = queue_new(c);
	c->logsink = logsink_new(c);
	if (store_run(c->store, fx_key_tx, f->admin_key, &err) < 0)
		fx_fail("admin key", err.msg);
	if (auth_load(c->auth, &err) < 0 || agents_load(c->agents, &err) < 0)
		fx_fail("load", err.msg);
	if (!with_server)
		return;
	c->server = server_new(c, NULL, &err);
	if (!c->server)
		fx_fail("server", err.msg);
	if (agents_register_routes(c->agents, c->server) < 0 ||
	    queue_register_routes(c->queue, c->server) < 0 ||
	    logsink_register_routes(c->logsink, c->server) < 0 || api_register(c) < 0)
		fx_fail("routes", "refused");
	f->port = server_port(c->server);
	f->http = http_client_new(f->loop);
}

static FX_UNUSED void fx_free(struct fx *f)
{
	struct coord *c = &f->c;
	if (f->http)
		http_client_free(f->http);
	server_free(c->server);
	store_close(c->store);
	logsink_free(c->logsink);
	queue_free(c->queue);
	agents_free(c->agents);
	auth_free(c->auth);
	ev_loop_destroy(f->loop);
	config_free(f->cfg);
	char cmd[256];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
	if (system(cmd) != 0)
		fprintf(stderr, "fixture: could not remove %s\n", f->dir);
}

/* ---- waiting for the store ---- */

static FX_UNUSED void fx_flag_done(int rc, void *arg)
{
	(void)rc;
	*(int *)arg = 1;
}

static FX_UNUSED int fx_nop_tx(struct store_tx *tx, void *arg)
{
	(void)tx;
	(void)arg;
	return 0;
}

/* Runs the loop until every store operation submitted so far has delivered. */
static FX_UNUSED void fx_drain(struct fx *f)
{
	int done = 0;
	if (store_submit(f->c.store, fx_nop_tx, fx_flag_done, &done) < 0)
		fx_fail("drain", "store queue full");
	while (!done)
		ev_run(f->loop, EVRUN_ONCE);
}

/* ---- SQL shortcuts ---- */

struct fx_sql {
	const char *sql;
	int64_t value;
	char text[4096];
	int rows;
};

static FX_UNUSED int fx_sql_tx(struct store_tx *tx, void *arg)
{
	struct fx_sql *q = arg;
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(tx->db, q->sql, -1, &st, NULL) != SQLITE_OK)
		return err_set(&tx->err, "%s: %s", q->sql, sqlite3_errmsg(tx->db));
	int rc;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (q->rows++ == 0) {
			q->value = sqlite3_column_int64(st, 0);
			const unsigned char *t = sqlite3_column_text(st, 0);
			snprintf(q->text, sizeof q->text, "%s", t ? (const char *)t : "");
		}
	}
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		return err_set(&tx->err, "%s: %s", q->sql, sqlite3_errmsg(tx->db));
	return 0;
}

/* The first column of the first row as an integer (0 when no row). */
static int64_t fx_int(struct fx *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static FX_UNUSED int64_t fx_int(struct fx *f, const char *fmt, ...)
{
	char sql[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(sql, sizeof sql, fmt, ap);
	va_end(ap);
	struct fx_sql q = {.sql = sql};
	struct err err;
	if (store_run(f->c.store, fx_sql_tx, &q, &err) < 0)
		fx_fail("sql", err.msg);
	return q.value;
}

/* The same as text (static buffer, valid until the next call). */
static const char *fx_text(struct fx *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static FX_UNUSED const char *fx_text(struct fx *f, const char *fmt, ...)
{
	static struct fx_sql q;
	char sql[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(sql, sizeof sql, fmt, ap);
	va_end(ap);
	memset(&q, 0, sizeof q);
	q.sql = sql;
	struct err err;
	if (store_run(f->c.store, fx_sql_tx, &q, &err) < 0)
		fx_fail("sql", err.msg);
	return q.text;
}

static void fx_exec(struct fx *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static FX_UNUSED void fx_exec(struct fx *f, const char *fmt, ...)
{
	char sql[4096];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(sql, sizeof sql, fmt, ap);
	va_end(ap);
	struct fx_sql q = {.sql = sql};
	struct err err;
	if (store_run(f->c.store, fx_sql_tx, &q, &err) < 0)
		fx_fail("sql", err.msg);
}

/* ---- HTTP ---- */

struct fx_resp {
	int done;
	long status;
	struct buf body;
};

static FX_UNUSED void fx_http_done(const struct http_response *resp, void *arg)
{
	struct fx_resp *r = arg;
	r->status = resp->error == HTTP_OK ? resp->status : -1;
	buf_append(&r->body, resp->body, resp->body_len);
	r->done = 1;
}

/* One request; returns the status, the parsed body in *out (may be NULL; NULL
 * when not JSON), the raw body in raw (may be NULL; caller frees). */
static FX_UNUSED long fx_req(struct fx *f, const char *method, const char *path, const char *token,
		   const char *body, cJSON **out, char **raw)
{
	char url[512], auth[512];
	snprintf(url, sizeof url, "http://127.0.0.1:%d%s", f->port, path);
	snprintf(auth, sizeof auth, "Authorization: Bearer %s", token ? token : "");
	const char *headers[] = {"Content-Type: application/json", "Slipway-Protocol: 1",
				 token ? auth : NULL, NULL};
	struct fx_resp r = {0};
	buf_init(&r.body, (size_t)32 << 20);
	struct http_request req = {.method = method, .url = url, .headers = headers,
				   .body = body, .body_len = body ? strlen(body) : 0,
				   .timeout_ms = 60000, .max_body = (size_t)32 << 20,
				   .on_done = fx_http_done, .arg = &r};
	if (!http_client_start(f->http, &req))
		fx_fail("http", "cannot start");
	while (!r.done)
		ev_run(f->loop, EVRUN_ONCE);
	if (out)
		*out = r.body.len ? json_parse(r.body.data, r.body.len, r.body.len + 1, NULL) : NULL;
	if (raw)
		*raw = buf_detach(&r.body, NULL);
	buf_free(&r.body);
	return r.status;
}

/* A string member of a JSON object ("" when missing). */
static FX_UNUSED const char *fx_str(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	return cJSON_IsString(v) ? v->valuestring : "";
}

static FX_UNUSED double fx_num(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

/* ---- store-level setup ---- */

/* An app with a release from one image, not promoted. Returns the release id. */
struct fx_rel {
	struct coord *c;
	const char *app;
	const char *image;
	const char *trigger;
	const cJSON *env;
	struct releases_result res;
	struct queue_wake wake;
};

static FX_UNUSED int fx_release_tx(struct store_tx *tx, void *arg)
{
	struct fx_rel *r = arg;
	r->res.wake = &r->wake;
	char svc[512];
	snprintf(svc, sizeof svc,
		 "{\"services\":{\"web\":{\"image\":\"%s\",\"port\":8080,\"count\":2}}}", r->image);
	cJSON *m = json_parse(svc, strlen(svc), sizeof svc, &tx->err);
	struct err err;
	cJSON *services = m ? releases_services_from_manifest(m, NULL, NULL, &err) : NULL;
	cJSON_Delete(m);
	if (!services)
		return err_set(&tx->err, "services: %s", err.msg);
	/* Like every real path: the app's current environment goes in. */
	cJSON *env = r->env ? NULL : releases_app_env_tx(tx, r->c->master_key, r->app);
	int rc = releases_create_tx(tx, r->c, r->app, NULL, services, r->env ? r->env : env, NULL,
				    "test", r->trigger, &r->res);
	cJSON_Delete(env);
	cJSON_Delete(services);
	if (rc == 0 && r->res.status)
		return err_set(&tx->err, "refused: %s", r->res.message);
	return rc;
}

/* Makes a release of app (promoted with trigger unless NULL); its id into out. */
static FX_UNUSED void fx_release(struct fx *f, const char *app, const char *image, const char *trigger,
		       char *out, size_t cap)
{
	struct fx_rel r = {.c = &f->c, .app = app, .image = image, .trigger = trigger};
	struct err err;
	if (store_run(f->c.store, fx_release_tx, &r, &err) < 0)
		fx_fail("release", err.msg);
	snprintf(out, cap, "%s", r.res.release);
	queue_wake_free(&r.wake);
}

static FX_UNUSED void fx_app(struct fx *f, const char *name, const char *strategy)
{
	fx_exec(f, "INSERT INTO apps(name, created_ms, strategy) VALUES ('%s', 1, '%s')", name,
		strategy);
}

/* An agent row (no token use), registered at `order` ms. */
static FX_UNUSED void fx_agent(struct fx *f, const char *id, int order)
{
	fx_exec(f,
		"INSERT INTO agents(id, instance_id, token_hash, registered_ms, last_seen_ms) "
		"VALUES ('%s', 'i-%s', x'00', %d, %lld)",
		id, id, order, (long long)clock_wall_ms());
}

#endif
