#include "releases.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "clock.h"
#include "coord.h"
#include "json.h"
#include "log.h"
#include "queue.h"
#include "rollout.h"
#include "secrets.h"
#include "server.h"
#include "store.h"

#define SERVICES_MAX 32
#define ENV_MAX_BYTES ((size_t)256 << 10)
#define ENV_VARS_MAX 1000
#define IMAGE_MAX 512
#define SPEC_MAX ((size_t)4 << 20)
#define SEALED_MAX ((size_t)8 << 20)

/* ---- the spec ---- */

static int env_name_ok(const char *s)
{
	if (!s || !((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || *s == '_'))
		return 0;
	for (s++; *s; s++)
		if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') ||
		      (*s >= '0' && *s <= '9') || *s == '_'))
			return 0;
	return 1;
}

/* Checks an environment object; *bytes (may be NULL) gets names + values. */
static int env_check(const cJSON *env, const char *path, size_t *bytes, struct err *err)
{
	if (!cJSON_IsObject(env))
		return err_set(err, "%s: expected an object of strings", path);
	size_t total = 0, n = 0;
	const cJSON *v;
	cJSON_ArrayForEach(v, env)
	{
		if (!env_name_ok(v->string))
			return err_set(err, "%s: bad variable name \"%.64s\"", path, v->string);
		if (!cJSON_IsString(v))
			return err_set(err, "%s.%s: expected a string", path, v->string);
		total += strlen(v->string) + 1 + strlen(v->valuestring); /* NAME=value */
		if (++n > ENV_VARS_MAX)
			return err_set(err, "%s: more than %d variables", path, ENV_VARS_MAX);
	}
	if (total > ENV_MAX_BYTES)
		return err_set(err, "%s: %zu bytes, at most %zu", path, total, ENV_MAX_BYTES);
	if (bytes)
		*bytes = total;
	return 0;
}

static int copy_health(const cJSON *h, const char *path, cJSON *out, struct err *err)
{
	static const char *const types[] = {"http", "tcp", "docker", "running", NULL};
	const char *type = "running", *hpath = NULL;
	int64_t interval, timeout, grace;
	cJSON *none = NULL;
	if (!h || cJSON_IsNull(h))
		h = none = cJSON_CreateObject(); /* every default */
	if (!cJSON_IsObject(h))
		return err_set(err, "%s: expected an object", path);
	if (json_get_string_opt(h, path, "type", 16, "running", &type, err) < 0 ||
	    json_get_string_opt(h, path, "path", 1024, NULL, &hpath, err) < 0) {
		cJSON_Delete(none);
		return -1;
	}
	int known = 0, rc = 0;
	for (size_t i = 0; types[i]; i++)
		known |= strcmp(types[i], type) == 0;
	int64_t def_grace = strcmp(type, "running") == 0 ? 5000 : 30000;
	if (!known)
		rc = err_set(err, "%s.type: expected http, tcp, docker or running", path);
	else if (strcmp(type, "http") == 0 && (!hpath || hpath[0] != '/'))
		rc = err_set(err, "%s.path: an http check needs a path starting with /", path);
	else if (strcmp(type, "http") != 0 && hpath)
		rc = err_set(err, "%s.path: only an http check takes a path", path);
	/* The agent's ranges (agent/spec.c): never send what it would refuse. */
	else if (json_get_int_opt(h, path, "interval_ms", 10, 600000, 1000, &interval, err) < 0 ||
		 json_get_int_opt(h, path, "timeout_ms", 10, 600000, 2000, &timeout, err) < 0 ||
		 json_get_int_opt(h, path, "grace_ms", 0, 3600000, def_grace, &grace, err) < 0)
		rc = -1;
	cJSON *o = rc == 0 ? cJSON_AddObjectToObject(out, "health") : NULL;
	if (rc == 0 && !o)
		rc = err_set(err, "out of memory");
	if (rc < 0) {
		cJSON_Delete(none);
		return -1;
	}
	cJSON_AddStringToObject(o, "type", type);
	if (hpath)
		cJSON_AddStringToObject(o, "path", hpath);
	cJSON_AddNumberToObject(o, "interval_ms", (double)interval);
	cJSON_AddNumberToObject(o, "timeout_ms", (double)timeout);
	cJSON_AddNumberToObject(o, "grace_ms", (double)grace);
	cJSON_Delete(none); /* after the copies: type and hpath point into it */
	return 0;
}

static int copy_proxy(const cJSON *p, const char *path, cJSON *out, struct err *err)
{
	if (!p || cJSON_IsNull(p)) {
		cJSON_AddNullToObject(out, "proxy");
		return 0;
	}
	if (!cJSON_IsObject(p))
		return err_set(err, "%s: expected an object or null", path);
	int64_t listen;
	const char *proto;
	const cJSON *hosts;
	size_t nhosts;
	if (json_get_int(p, path, "listen", 1, 65535, &listen, err) < 0 ||
	    json_get_string_opt(p, path, "protocol", 8, "http", &proto, err) < 0 ||
	    json_get_array_opt(p, path, "hosts", 64, &hosts, &nhosts, err) < 0)
		return -1;
	if (strcmp(proto, "http") != 0 && strcmp(proto, "tcp") != 0)
		return err_set(err, "%s.protocol: expected http or tcp", path);
	cJSON *o = cJSON_AddObjectToObject(out, "proxy");
	cJSON *arr = o ? cJSON_AddArrayToObject(o, "hosts") : NULL;
	if (!arr)
		return err_set(err, "out of memory");
	cJSON_AddNumberToObject(o, "listen", (double)listen);
	cJSON_AddStringToObject(o, "protocol", proto);
	const cJSON *h;
	size_t i = 0;
	cJSON_ArrayForEach(h, hosts)
	{
		char hp[JSON_PATH_MAX];
		json_path_index(hp, sizeof hp, path, i++);
		if (!cJSON_IsString(h) || !h->valuestring[0] || strlen(h->valuestring) > 253)
			return err_set(err, "%s.hosts: expected host names", path);
		cJSON_AddItemToArray(arr, cJSON_CreateString(h->valuestring));
	}
	return 0;
}

static int image_ref(const cJSON *images, const char *name, const cJSON *svc, char *out,
		     size_t cap, const char *path, struct err *err)
{
	const cJSON *img = images ? cJSON_GetObjectItemCaseSensitive(images, name) : NULL;
	if (img && cJSON_IsObject(img)) {
		const cJSON *ref = cJSON_GetObjectItemCaseSensitive(img, "image");
		const cJSON *dig = cJSON_GetObjectItemCaseSensitive(img, "digest");
		if (!cJSON_IsString(ref) || !ref->valuestring[0])
			return err_set(err, "images.%s.image: expected a string", name);
		const char *r = ref->valuestring;
		if (cJSON_IsString(dig) && dig->valuestring[0] && !strchr(r, '@')) {
			/* name@digest: drop the tag, the digest pins the content. */
			const char *slash = strrchr(r, '/');
			const char *colon = strrchr(slash ? slash : r, ':');
			size_t base = colon ? (size_t)(colon - r) : strlen(r);
			if (strncmp(dig->valuestring, "sha256:", 7) != 0 ||
			    strlen(dig->valuestring) != 71)
				return err_set(err, "images.%s.digest: expected sha256:<64 hex>", name);
			snprintf(out, cap, "%.*s@%s", (int)base, r, dig->valuestring);
		} else {
			snprintf(out, cap, "%s", r);
		}
	} else {
		const cJSON *ref = cJSON_GetObjectItemCaseSensitive(svc, "image");
		if (!cJSON_IsString(ref) || !ref->valuestring[0])
			return err_set(err, "%s: no image for service %s", path, name);
		snprintf(out, cap, "%s", ref->valuestring);
	}
	if (strlen(out) > IMAGE_MAX || strpbrk(out, " \t\r\n"))
		return err_set(err, "%s.image: not a usable image reference", path);
	return 0;
}

/* One service in spec form. */
static cJSON *service_spec(const char *name, const cJSON *svc, const cJSON *images,
			   const cJSON *scale, const char *path, struct err *err)
{
	if (!server_valid_name(name))
		return err_set(err, "%s: service names match [a-z][a-z0-9-]{0,39}", path), NULL;
	if (!cJSON_IsObject(svc))
		return err_set(err, "%s: expected an object", path), NULL;
	cJSON *o = cJSON_CreateObject();
	if (!o)
		return err_set(err, "out of memory"), NULL;
	char image[IMAGE_MAX + 80];
	char p[JSON_PATH_MAX];
	const cJSON *cmd = cJSON_GetObjectItemCaseSensitive(svc, "command");
	const cJSON *env = cJSON_GetObjectItemCaseSensitive(svc, "environment");
	const cJSON *port = cJSON_GetObjectItemCaseSensitive(svc, "port");
	const cJSON *sc = scale ? cJSON_GetObjectItemCaseSensitive(scale, name) : NULL;
	int64_t count, memory, stop_grace, port_v = 0;
	if (image_ref(images, name, svc, image, sizeof image, path, err) < 0)
		goto fail;
	cJSON_AddStringToObject(o, "name", name);
	cJSON_AddStringToObject(o, "image", image);
	if (cmd && !cJSON_IsNull(cmd)) {
		if (!cJSON_IsArray(cmd) || cJSON_GetArraySize(cmd) > 256) {
			err_set(err, "%s: expected an array of strings or null",
				json_path_key(p, sizeof p, path, "command"));
			goto fail;
		}
		const cJSON *a;
		cJSON_ArrayForEach(a, cmd)
		{
			if (!cJSON_IsString(a) || strlen(a->valuestring) > 8192) {
				err_set(err, "%s: expected an array of strings",
					json_path_key(p, sizeof p, path, "command"));
				goto fail;
			}
		}
		cJSON_AddItemToObject(o, "command", cJSON_Duplicate(cmd, 1));
	} else {
		cJSON_AddNullToObject(o, "command");
	}
	if (env && !cJSON_IsNull(env)) {
		if (env_check(env, json_path_key(p, sizeof p, path, "environment"), NULL, err) < 0)
			goto fail;
		cJSON_AddItemToObject(o, "environment", cJSON_Duplicate(env, 1));
	} else {
		cJSON_AddObjectToObject(o, "environment");
	}
	if (port && !cJSON_IsNull(port)) {
		if (json_get_int(svc, path, "port", 1, 65535, &port_v, err) < 0)
			goto fail;
		cJSON_AddNumberToObject(o, "port", (double)port_v);
	} else {
		cJSON_AddNullToObject(o, "port");
	}
	if (copy_proxy(cJSON_GetObjectItemCaseSensitive(svc, "proxy"),
		       json_path_key(p, sizeof p, path, "proxy"), o, err) < 0 ||
	    copy_health(cJSON_GetObjectItemCaseSensitive(svc, "health"),
			json_path_key(p, sizeof p, path, "health"), o, err) < 0)
		goto fail;
	if (json_get_int_opt(svc, path, "count", 0, 100, 1, &count, err) < 0 ||
	    json_get_int_opt(svc, path, "memory_mb", 0, 1048576, 0, &memory, err) < 0 ||
	    json_get_int_opt(svc, path, "stop_grace_ms", 0, 3600000, 10000, &stop_grace, err) < 0)
		goto fail;
	if (sc && cJSON_IsObject(sc)) {
		char sp[JSON_PATH_MAX];
		json_path_key(sp, sizeof sp, "scale", name);
		if (json_get_int_opt(sc, sp, "count", 0, 100, count, &count, err) < 0 ||
		    json_get_int_opt(sc, sp, "memory_mb", 0, 1048576, memory, &memory, err) < 0)
			goto fail;
	}
	if (memory != 0 && memory < 6) {
		err_set(err, "%s.memory_mb: 0 (no limit) or 6..1048576", path);
		goto fail;
	}
	if (!port_v && !cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(o, "proxy"))) {
		err_set(err, "%s: a proxied service needs a port", path);
		goto fail;
	}
	const char *htype = cJSON_GetObjectItemCaseSensitive(
				    cJSON_GetObjectItemCaseSensitive(o, "health"), "type")->valuestring;
	if (!port_v && (strcmp(htype, "http") == 0 || strcmp(htype, "tcp") == 0)) {
		err_set(err, "%s.health: %s checks need a port", path, htype);
		goto fail;
	}
	cJSON_AddNumberToObject(o, "count", (double)count);
	cJSON_AddNumberToObject(o, "memory_mb", (double)memory);
	cJSON_AddNumberToObject(o, "stop_grace_ms", (double)stop_grace);
	/* Only when true: an agent without the field refuses it (docs/protocol.md). */
	const cJSON *md = cJSON_GetObjectItemCaseSensitive(svc, "metadata_access");
	if (md && !cJSON_IsNull(md) && !cJSON_IsBool(md)) {
		err_set(err, "%s: expected true or false",
			json_path_key(p, sizeof p, path, "metadata_access"));
		goto fail;
	}
	if (cJSON_IsTrue(md))
		cJSON_AddTrueToObject(o, "metadata_access");
	return o;
fail:
	cJSON_Delete(o);
	return NULL;
}

cJSON *releases_services_from_manifest(const cJSON *manifest, const cJSON *images,
				       const cJSON *scale, struct err *err)
{
	const cJSON *svcs = manifest ? cJSON_GetObjectItemCaseSensitive(manifest, "services") : NULL;
	if (!svcs || (!cJSON_IsObject(svcs) && !cJSON_IsArray(svcs)) ||
	    cJSON_GetArraySize(svcs) == 0)
		return err_set(err, "manifest: no services"), NULL;
	if (cJSON_GetArraySize(svcs) > SERVICES_MAX)
		return err_set(err, "manifest: more than %d services", SERVICES_MAX), NULL;
	cJSON *out = cJSON_CreateArray();
	if (!out)
		return err_set(err, "out of memory"), NULL;
	const cJSON *svc;
	size_t i = 0;
	cJSON_ArrayForEach(svc, svcs)
	{
		char path[JSON_PATH_MAX];
		const char *name;
		if (cJSON_IsArray(svcs)) {
			json_path_index(path, sizeof path, "services", i);
			const cJSON *n = cJSON_GetObjectItemCaseSensitive(svc, "name");
			name = cJSON_IsString(n) ? n->valuestring : "";
		} else {
			json_path_key(path, sizeof path, "services", svc->string);
			name = svc->string;
		}
		i++;
		const cJSON *prev;
		cJSON_ArrayForEach(prev, out)
		{
			const cJSON *pn = cJSON_GetObjectItemCaseSensitive(prev, "name");
			if (cJSON_IsString(pn) && strcmp(pn->valuestring, name) == 0) {
				cJSON_Delete(out);
				return err_set(err, "%s: service %s appears twice", path, name), NULL;
			}
		}
		cJSON *s = service_spec(name, svc, images, scale, path, err);
		if (!s) {
			cJSON_Delete(out);
			return NULL;
		}
		cJSON_AddItemToArray(out, s);
	}
	return out;
}

/* ---- environments ---- */

static cJSON *open_env(const uint8_t *key, const char *table, const char *row, const void *blob,
		       size_t len, struct err *err)
{
	if (!blob || len == 0)
		return cJSON_CreateObject();
	struct buf plain;
	buf_init(&plain, SEALED_MAX);
	if (secrets_open(key, table, row, "environment", blob, len, &plain, err) < 0) {
		buf_free(&plain);
		return NULL;
	}
	cJSON *env = json_parse(plain.data ? plain.data : "{}", plain.data ? plain.len : 2,
				SEALED_MAX, err);
	/* The plaintext held secrets: do not leave it in freed memory. */
	if (plain.data)
		memset(plain.data, 0, plain.alloc);
	buf_free(&plain);
	if (env && !cJSON_IsObject(env)) {
		cJSON_Delete(env);
		err_set(err, "%s %s: environment is not an object", table, row);
		return NULL;
	}
	return env;
}

/* Seals env into *out (a buf the caller frees). */
static int seal_env(const uint8_t *key, const char *table, const char *row, const cJSON *env,
		    struct buf *out, struct err *err)
{
	char *text = cJSON_PrintUnformatted(env);
	if (!text)
		return err_set(err, "out of memory");
	size_t len = strlen(text);
	int rc = secrets_seal(key, table, row, "environment", text, len, out);
	memset(text, 0, len);
	free(text);
	return rc < 0 ? err_set(err, "cannot seal the environment") : 0;
}

cJSON *releases_app_env_tx(struct store_tx *tx, const uint8_t *master_key, const char *app)
{
	sqlite3_stmt *st = store_stmt(tx, "SELECT environment FROM apps WHERE name = ?");
	if (!st)
		return NULL;
	sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
	int rc = store_step(tx, st);
	if (rc != SQLITE_ROW) {
		if (rc == SQLITE_DONE)
			err_set(&tx->err, "unknown app %s", app);
		return NULL;
	}
	return open_env(master_key, "apps", app, sqlite3_column_blob(st, 0),
			(size_t)sqlite3_column_bytes(st, 0), &tx->err);
}

cJSON *releases_spec_tx(struct store_tx *tx, const uint8_t *master_key, const char *release_id)
{
	sqlite3_stmt *st = store_stmt(tx, "SELECT spec, environment FROM releases WHERE id = ?");
	if (!st)
		return NULL;
	sqlite3_bind_text(st, 1, release_id, -1, SQLITE_STATIC);
	int rc = store_step(tx, st);
	if (rc != SQLITE_ROW) {
		if (rc == SQLITE_DONE)
			err_set(&tx->err, "unknown release %s", release_id);
		return NULL;
	}
	const char *text = store_col_text(st, 0);
	cJSON *spec = json_parse(text, strlen(text), SPEC_MAX, &tx->err);
	cJSON *env = spec ? open_env(master_key, "releases", release_id, sqlite3_column_blob(st, 1),
				     (size_t)sqlite3_column_bytes(st, 1), &tx->err)
			  : NULL;
	sqlite3_reset(st);
	if (!spec || !env) {
		cJSON_Delete(spec);
		return NULL;
	}
	cJSON *svcs = cJSON_GetObjectItemCaseSensitive(spec, "services");
	cJSON *svc;
	cJSON_ArrayForEach(svc, svcs)
	{
		cJSON *senv = cJSON_GetObjectItemCaseSensitive(svc, "environment");
		if (!cJSON_IsObject(senv)) {
			cJSON_DeleteItemFromObjectCaseSensitive(svc, "environment");
			senv = cJSON_AddObjectToObject(svc, "environment");
		}
		const cJSON *v;
		cJSON_ArrayForEach(v, env)
		{
			/* The app's environment wins over the manifest's. */
			cJSON_DeleteItemFromObjectCaseSensitive(senv, v->string);
			cJSON_AddItemToObject(senv, v->string, cJSON_CreateString(v->valuestring));
		}
	}
	cJSON_Delete(env);
	return spec;
}

/* ---- making releases ---- */

static int refuse(struct releases_result *res, int status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int refuse(struct releases_result *res, int status, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(res->message, sizeof res->message, fmt, ap);
	va_end(ap);
	res->status = status;
	return 0;
}

int releases_create_tx(struct store_tx *tx, struct coord *c, const char *app, const char *build,
		       const cJSON *services, const cJSON *env, const char *manifest,
		       const char *description, const char *trigger, struct releases_result *res)
{
	int ex = store_app_exists(tx, app);
	if (ex <= 0)
		return ex < 0 ? -1 : refuse(res, 404, "unknown app %s", app);
	if (!cJSON_IsArray(services) || cJSON_GetArraySize(services) == 0)
		return refuse(res, 400, "a release needs at least one service");
	size_t app_env_bytes = 0;
	struct err e;
	if (env && env_check(env, "environment", &app_env_bytes, &e) < 0)
		return refuse(res, 400, "%s", e.msg);
	const cJSON *svc;
	cJSON_ArrayForEach(svc, services)
	{
		size_t own = 0;
		const cJSON *senv = cJSON_GetObjectItemCaseSensitive(svc, "environment");
		if (senv && env_check(senv, "services.environment", &own, &e) < 0)
			return refuse(res, 400, "%s", e.msg);
		if (own + app_env_bytes > ENV_MAX_BYTES)
			return refuse(res, 400, "the environment of a service is over %zu bytes",
				      ENV_MAX_BYTES);
	}
	char id[32];
	if (auth_new_id(id, sizeof id, "r_") < 0)
		return err_set(&tx->err, "no randomness");
	int64_t now = clock_wall_ms();
	cJSON *spec = cJSON_CreateObject();
	if (!spec)
		return err_set(&tx->err, "out of memory");
	cJSON_AddStringToObject(spec, "id", id);
	cJSON_AddStringToObject(spec, "app", app);
	if (build && *build)
		cJSON_AddStringToObject(spec, "build", build);
	else
		cJSON_AddNullToObject(spec, "build");
	cJSON_AddNumberToObject(spec, "created_ms", (double)now);
	cJSON_AddItemToObject(spec, "services", cJSON_Duplicate(services, 1));
	char *text = json_print(spec, SPEC_MAX, &tx->err);
	cJSON_Delete(spec);
	if (!text)
		return -1;
	struct buf sealed;
	buf_init(&sealed, SEALED_MAX);
	int have_env = env && cJSON_GetArraySize(env) > 0;
	if (have_env && seal_env(c->master_key, "releases", id, env, &sealed, &tx->err) < 0) {
		free(text);
		buf_free(&sealed);
		return -1;
	}
	int rc = -1;
	sqlite3_stmt *st = store_stmt(
		tx, "INSERT INTO releases(id, app, seq, build, spec, environment, manifest, "
		    "description, status, created_ms) VALUES (?1, ?2, (SELECT coalesce(max(seq), 0) "
		    "+ 1 FROM releases WHERE app = ?2), ?3, ?4, ?5, ?6, ?7, 'pending', ?8)");
	if (st) {
		sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, app, -1, SQLITE_STATIC);
		if (build && *build)
			sqlite3_bind_text(st, 3, build, -1, SQLITE_STATIC);
		else
			sqlite3_bind_null(st, 3);
		sqlite3_bind_text(st, 4, text, -1, SQLITE_STATIC);
		if (have_env)
			sqlite3_bind_blob(st, 5, sealed.data, (int)sealed.len, SQLITE_STATIC);
		else
			sqlite3_bind_null(st, 5);
		store_bind_text(st, 6, manifest);
		sqlite3_bind_text(st, 7, description ? description : "", -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 8, now);
		rc = store_step(tx, st) == SQLITE_DONE ? 0 : -1;
		sqlite3_reset(st);
	}
	free(text);
	buf_free(&sealed);
	if (rc < 0 || rollout_event_tx(tx, app, "release.created", "release=%s build=%s \"%.200s\"",
				       id, build && *build ? build : "-",
				       description ? description : "") < 0)
		return -1;
	snprintf(res->release, sizeof res->release, "%s", id);
	if (trigger)
		return rollout_start_tx(tx, c, app, id, trigger, res->rollout, &res->generation,
					res->wake);
	return 0;
}

static cJSON *load_json_col(sqlite3_stmt *st, int col, struct err *err)
{
	const char *t = (const char *)sqlite3_column_text(st, col);
	if (!t || !*t)
		return NULL;
	return json_parse(t, strlen(t), SPEC_MAX, err);
}

cJSON *releases_app_scale_tx(struct store_tx *tx, const char *app)
{
	sqlite3_stmt *st = store_stmt(tx, "SELECT scale FROM apps WHERE name = ?");
	if (!st)
		return NULL;
	sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
	cJSON *scale = NULL;
	if (store_step(tx, st) == SQLITE_ROW)
		scale = load_json_col(st, 0, &tx->err);
	sqlite3_reset(st);
	if (!scale || !cJSON_IsObject(scale)) {
		cJSON_Delete(scale);
		scale = cJSON_CreateObject();
	}
	return scale;
}

int releases_create_from_build_tx(struct store_tx *tx, struct coord *c, const char *build_id,
				  struct releases_result *res)
{
	sqlite3_stmt *st;
	int rc = store_step_text(tx, "SELECT app, status, coalesce(release, ''), images, "
				     "manifest, description FROM builds WHERE id = ?",
				 build_id, &st);
	if (rc != SQLITE_ROW)
		return rc < 0 ? -1 : refuse(res, 404, "unknown build %s", build_id);
	char app[48], status[16], release[72], description[256];
	snprintf(app, sizeof app, "%s", store_col_text(st, 0));
	snprintf(status, sizeof status, "%s", store_col_text(st, 1));
	snprintf(release, sizeof release, "%s", store_col_text(st, 2));
	snprintf(description, sizeof description, "%s", store_col_text(st, 5));
	if (release[0]) {
		sqlite3_reset(st);
		snprintf(res->release, sizeof res->release, "%s", release);
		return 0; /* released once already */
	}
	if (strcmp(status, "complete") != 0) {
		sqlite3_reset(st);
		return refuse(res, 409, "build %s is %s, not complete", build_id, status);
	}
	struct err e = {{0}};
	cJSON *images = load_json_col(st, 3, &e);
	cJSON *manifest = e.msg[0] ? NULL : load_json_col(st, 4, &e);
	char *manifest_text = strdup(store_col_text(st, 4));
	sqlite3_reset(st);
	cJSON *scale = NULL, *env = NULL, *services = NULL;
	rc = 0;
	if (e.msg[0] || !manifest || !manifest_text) {
		rc = refuse(res, 400, "build %s: unusable manifest or images%s%s", build_id,
			    e.msg[0] ? ": " : "", e.msg);
		goto out;
	}
	scale = releases_app_scale_tx(tx, app);
	env = releases_app_env_tx(tx, c->master_key, app);
	if (!env) {
		rc = -1;
		goto out;
	}
	services = releases_services_from_manifest(manifest, images, scale, &e);
	if (!services) {
		rc = refuse(res, 400, "build %s: %s", build_id, e.msg);
		goto out;
	}
	rc = releases_create_tx(tx, c, app, build_id, services, env, manifest_text, description,
				"build", res);
	if (rc == 0 && res->status == 0) {
		st = store_stmt(tx, "UPDATE builds SET release = ? WHERE id = ?");
		if (!st) {
			rc = -1;
			goto out;
		}
		sqlite3_bind_text(st, 1, res->release, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, build_id, -1, SQLITE_STATIC);
		rc = store_step(tx, st) == SQLITE_DONE ? 0 : -1;
	}
out:
	cJSON_Delete(images);
	cJSON_Delete(manifest);
	free(manifest_text);
	cJSON_Delete(scale);
	cJSON_Delete(env);
	cJSON_Delete(services);
	return rc;
}

int releases_promote_tx(struct store_tx *tx, struct coord *c, const char *app,
			const char *release_id, const char *trigger, struct releases_result *res)
{
	sqlite3_stmt *st = store_stmt(tx, "SELECT 1 FROM releases WHERE id = ? AND app = ?");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, release_id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, app, -1, SQLITE_STATIC);
	int rc = store_step(tx, st);
	sqlite3_reset(st);
	if (rc != SQLITE_ROW)
		return rc < 0 ? -1 : refuse(res, 404, "app %s has no release %s", app, release_id);
	snprintf(res->release, sizeof res->release, "%s", release_id);
	return rollout_start_tx(tx, c, app, release_id, trigger, res->rollout, &res->generation,
				res->wake);
}

struct old_release {
	cJSON *services;
	cJSON *env;
	char build[72];
	char *manifest;
};

static void old_release_free(struct old_release *o)
{
	cJSON_Delete(o->services);
	cJSON_Delete(o->env);
	free(o->manifest);
	memset(o, 0, sizeof *o);
}

/* 1 loaded, 0 no such release of app, -1 error. */
static int old_release_load(struct store_tx *tx, struct coord *c, const char *app,
			    const char *id, struct old_release *o)
{
	memset(o, 0, sizeof *o);
	sqlite3_stmt *st = store_stmt(tx, "SELECT spec, environment, coalesce(build, ''), "
					  "manifest FROM releases WHERE id = ? AND app = ?");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, app, -1, SQLITE_STATIC);
	int rc = store_step(tx, st);
	if (rc != SQLITE_ROW)
		return rc < 0 ? -1 : 0;
	cJSON *spec = load_json_col(st, 0, &tx->err);
	o->env = open_env(c->master_key, "releases", id, sqlite3_column_blob(st, 1),
			  (size_t)sqlite3_column_bytes(st, 1), &tx->err);
	snprintf(o->build, sizeof o->build, "%s", store_col_text(st, 2));
	if (sqlite3_column_type(st, 3) != SQLITE_NULL)
		o->manifest = strdup(store_col_text(st, 3));
	sqlite3_reset(st);
	cJSON *svcs = spec ? cJSON_DetachItemFromObjectCaseSensitive(spec, "services") : NULL;
	cJSON_Delete(spec);
	o->services = svcs;
	if (!o->services || !o->env) {
		if (!tx->err.msg[0])
			err_set(&tx->err, "release %s is unreadable", id);
		old_release_free(o);
		return -1;
	}
	return 1;
}

static void apply_scale(cJSON *services, const cJSON *scale)
{
	cJSON *svc;
	cJSON_ArrayForEach(svc, services)
	{
		const cJSON *n = cJSON_GetObjectItemCaseSensitive(svc, "name");
		const cJSON *sc = cJSON_IsString(n) ? cJSON_GetObjectItemCaseSensitive(scale,
										       n->valuestring)
						    : NULL;
		if (!cJSON_IsObject(sc))
			continue;
		const cJSON *count = cJSON_GetObjectItemCaseSensitive(sc, "count");
		const cJSON *mem = cJSON_GetObjectItemCaseSensitive(sc, "memory_mb");
		if (cJSON_IsNumber(count))
			cJSON_ReplaceItemInObjectCaseSensitive(svc, "count",
							       cJSON_CreateNumber(count->valuedouble));
		if (cJSON_IsNumber(mem))
			cJSON_ReplaceItemInObjectCaseSensitive(svc, "memory_mb",
							       cJSON_CreateNumber(mem->valuedouble));
	}
}

int releases_rollback_tx(struct store_tx *tx, struct coord *c, const char *app,
			 const char *release_id, struct releases_result *res)
{
	struct old_release o;
	int rc = old_release_load(tx, c, app, release_id, &o);
	if (rc <= 0)
		return rc < 0 ? -1 : refuse(res, 404, "app %s has no release %s", app, release_id);
	cJSON *scale = releases_app_scale_tx(tx, app);
	apply_scale(o.services, scale);
	cJSON_Delete(scale);
	char desc[128];
	snprintf(desc, sizeof desc, "rollback to %s", release_id);
	rc = releases_create_tx(tx, c, app, o.build, o.services, o.env, o.manifest, desc,
				"rollback", res);
	old_release_free(&o);
	return rc;
}

/* The release new ones start from: the desired one, else the newest. */
static int base_release(struct store_tx *tx, const char *app, char *out, size_t cap)
{
	out[0] = '\0';
	sqlite3_stmt *st = store_stmt(tx, "SELECT coalesce((SELECT release FROM apps WHERE name = ?1),"
					  " (SELECT id FROM releases WHERE app = ?1 ORDER BY seq DESC "
					  "LIMIT 1), '')");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, app, -1, SQLITE_STATIC);
	if (store_step(tx, st) != SQLITE_ROW)
		return -1;
	snprintf(out, cap, "%s", store_col_text(st, 0));
	sqlite3_reset(st);
	return 0;
}

static int store_app_env(struct store_tx *tx, struct coord *c, const char *app, const cJSON *env)
{
	struct buf sealed;
	buf_init(&sealed, SEALED_MAX);
	int empty = cJSON_GetArraySize(env) == 0;
	if (!empty && seal_env(c->master_key, "apps", app, env, &sealed, &tx->err) < 0) {
		buf_free(&sealed);
		return -1;
	}
	sqlite3_stmt *st = store_stmt(tx, "UPDATE apps SET environment = ? WHERE name = ?");
	int rc = -1;
	if (st) {
		if (empty)
			sqlite3_bind_null(st, 1);
		else
			sqlite3_bind_blob(st, 1, sealed.data, (int)sealed.len, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, app, -1, SQLITE_STATIC);
		rc = store_step(tx, st) == SQLITE_DONE ? 0 : -1;
	}
	buf_free(&sealed);
	return rc;
}

/* A new release from the base release with env and scale as they are now. */
static int rerelease(struct store_tx *tx, struct coord *c, const char *app, const char *base,
		     const cJSON *env, const char *desc, const char *trigger,
		     struct releases_result *res)
{
	struct old_release o;
	int rc = old_release_load(tx, c, app, base, &o);
	if (rc <= 0)
		return rc < 0 ? -1 : refuse(res, 404, "app %s has no release %s", app, base);
	cJSON *scale = releases_app_scale_tx(tx, app);
	apply_scale(o.services, scale);
	cJSON_Delete(scale);
	rc = releases_create_tx(tx, c, app, o.build, o.services, env, o.manifest, desc, trigger,
				res);
	old_release_free(&o);
	return rc;
}

int releases_env_change_tx(struct store_tx *tx, struct coord *c, const char *app,
			   const cJSON *set, const cJSON *unset, int promote, const char *who,
			   struct releases_result *res)
{
	int ex = store_app_exists(tx, app);
	if (ex <= 0)
		return ex < 0 ? -1 : refuse(res, 404, "unknown app %s", app);
	struct err e;
	if (set && !cJSON_IsNull(set) && env_check(set, "set", NULL, &e) < 0)
		return refuse(res, 400, "%s", e.msg);
	if (unset && !cJSON_IsNull(unset)) {
		if (!cJSON_IsArray(unset) || cJSON_GetArraySize(unset) > ENV_VARS_MAX)
			return refuse(res, 400, "unset: expected an array of names");
		const cJSON *n;
		cJSON_ArrayForEach(n, unset)
		{
			if (!cJSON_IsString(n) || !env_name_ok(n->valuestring))
				return refuse(res, 400, "unset: expected variable names");
		}
	}
	cJSON *env = releases_app_env_tx(tx, c->master_key, app);
	if (!env)
		return -1;
	char desc[256];
	struct buf d;
	buf_init(&d, sizeof desc - 1);
	buf_append_str(&d, "env");
	const cJSON *v;
	if (set && cJSON_IsObject(set)) {
		buf_append_str(&d, " set");
		cJSON_ArrayForEach(v, set)
		{
			cJSON_DeleteItemFromObjectCaseSensitive(env, v->string);
			cJSON_AddItemToObject(env, v->string, cJSON_CreateString(v->valuestring));
			buf_printf(&d, " %s", v->string);
		}
	}
	if (unset && cJSON_IsArray(unset)) {
		buf_append_str(&d, " unset");
		cJSON_ArrayForEach(v, unset)
		{
			cJSON_DeleteItemFromObjectCaseSensitive(env, v->valuestring);
			buf_printf(&d, " %s", v->valuestring);
		}
	}
	snprintf(desc, sizeof desc, "%s%s%s", d.data ? d.data : "env", who && *who ? " by " : "",
		 who && *who ? who : "");
	buf_free(&d);
	int rc;
	if (env_check(env, "environment", NULL, &e) < 0) {
		rc = refuse(res, 400, "%s", e.msg);
	} else if (store_app_env(tx, c, app, env) < 0) {
		rc = -1;
	} else {
		char base[72];
		rc = base_release(tx, app, base, sizeof base);
		if (rc == 0 && base[0])
			rc = rerelease(tx, c, app, base, env, desc, promote ? "env" : NULL, res);
		else if (rc == 0)
			rc = rollout_event_tx(tx, app, "env.changed", "%s (no release yet)", desc);
	}
	cJSON_Delete(env);
	return rc;
}

int releases_scale_tx(struct store_tx *tx, struct coord *c, const char *app, const char *service,
		      int64_t count, int64_t memory_mb, const char *who,
		      struct releases_result *res)
{
	int ex = store_app_exists(tx, app);
	if (ex <= 0)
		return ex < 0 ? -1 : refuse(res, 404, "unknown app %s", app);
	if (!server_valid_name(service))
		return refuse(res, 400, "service: names match [a-z][a-z0-9-]{0,39}");
	if (count < 0 || count > 100)
		return refuse(res, 400, "count: 0..100");
	if (memory_mb != -1 && memory_mb != 0 && (memory_mb < 6 || memory_mb > 1048576))
		return refuse(res, 400, "memory_mb: 0 (no limit) or 6..1048576");
	char base[72];
	if (base_release(tx, app, base, sizeof base) < 0)
		return -1;
	if (base[0]) {
		/* The service must exist in what the app runs. */
		struct old_release o;
		int rc = old_release_load(tx, c, app, base, &o);
		if (rc <= 0)
			return rc < 0 ? -1 : refuse(res, 404, "release %s is gone", base);
		int found = 0;
		const cJSON *svc;
		cJSON_ArrayForEach(svc, o.services)
		{
			const cJSON *n = cJSON_GetObjectItemCaseSensitive(svc, "name");
			found |= cJSON_IsString(n) && strcmp(n->valuestring, service) == 0;
		}
		old_release_free(&o);
		if (!found)
			return refuse(res, 404, "app %s has no service %s", app, service);
	}
	cJSON *scale = releases_app_scale_tx(tx, app);
	if (!scale)
		return err_set(&tx->err, "out of memory");
	cJSON *entry = cJSON_GetObjectItemCaseSensitive(scale, service);
	if (!cJSON_IsObject(entry)) {
		cJSON_DeleteItemFromObjectCaseSensitive(scale, service);
		entry = cJSON_AddObjectToObject(scale, service);
	}
	cJSON_DeleteItemFromObjectCaseSensitive(entry, "count");
	cJSON_AddNumberToObject(entry, "count", (double)count);
	if (memory_mb >= 0) {
		cJSON_DeleteItemFromObjectCaseSensitive(entry, "memory_mb");
		cJSON_AddNumberToObject(entry, "memory_mb", (double)memory_mb);
	}
	char *text = json_print(scale, (size_t)64 << 10, &tx->err);
	cJSON_Delete(scale);
	if (!text)
		return -1;
	sqlite3_stmt *st = store_stmt(tx, "UPDATE apps SET scale = ? WHERE name = ?");
	int rc = -1;
	if (st) {
		sqlite3_bind_text(st, 1, text, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, app, -1, SQLITE_STATIC);
		rc = store_step(tx, st) == SQLITE_DONE ? 0 : -1;
	}
	free(text);
	if (rc < 0)
		return -1;
	char desc[200];
	if (memory_mb >= 0)
		snprintf(desc, sizeof desc, "scale %s=%lld memory=%lldM%s%s", service,
			 (long long)count, (long long)memory_mb, who && *who ? " by " : "",
			 who && *who ? who : "");
	else
		snprintf(desc, sizeof desc, "scale %s=%lld%s%s", service, (long long)count,
			 who && *who ? " by " : "", who && *who ? who : "");
	if (!base[0])
		return rollout_event_tx(tx, app, "scale.changed", "%s (no release yet)", desc);
	cJSON *env = releases_app_env_tx(tx, c->master_key, app);
	if (!env)
		return -1;
	rc = rerelease(tx, c, app, base, env, desc, "scale", res);
	cJSON_Delete(env);
	return rc;
}

/* ---- the asynchronous calls ---- */

enum call_kind { CALL_FROM_BUILD, CALL_PROMOTE, CALL_ROLLBACK, CALL_ENV, CALL_SCALE };

struct call {
	struct coord *c;
	enum call_kind kind;
	char app[48];
	char id[72];       /* build or release */
	char trigger[24];
	char service[48];
	char who[64];
	cJSON *set, *unset;
	int promote;
	int64_t count, memory_mb;
	struct queue_wake wake;
	struct releases_result res;
	releases_done_fn done;
	void *arg;
};

static int call_tx(struct store_tx *tx, void *arg)
{
	struct call *k = arg;
	int rc;
	switch (k->kind) {
	case CALL_FROM_BUILD:
		rc = releases_create_from_build_tx(tx, k->c, k->id, &k->res);
		break;
	case CALL_PROMOTE:
		rc = releases_promote_tx(tx, k->c, k->app, k->id, k->trigger, &k->res);
		break;
	case CALL_ROLLBACK:
		rc = releases_rollback_tx(tx, k->c, k->app, k->id, &k->res);
		break;
	case CALL_ENV:
		rc = releases_env_change_tx(tx, k->c, k->app, k->set, k->unset, k->promote, k->who,
					    &k->res);
		break;
	default:
		rc = releases_scale_tx(tx, k->c, k->app, k->service, k->count, k->memory_mb, k->who,
				       &k->res);
		break;
	}
	if (rc < 0)
		snprintf(k->res.message, sizeof k->res.message, "%s", tx->err.msg);
	/* A refusal must leave nothing behind: roll the savepoint back. */
	return rc < 0 || k->res.status != 0 ? -1 : 0;
}

static void call_done(int rc, void *arg)
{
	struct call *k = arg;
	if (rc == 0 && k->c->queue)
		queue_wake(k->c->queue, &k->wake);
	if (rc < 0 && !k->res.message[0])
		snprintf(k->res.message, sizeof k->res.message, "the store failed");
	if (rc < 0)
		log_warn("releases.call_failed", "app=%s id=%s error=\"%s\"", k->app, k->id,
			 k->res.message);
	k->done(rc < 0 ? -1 : 0, k->res.release, rc < 0 ? k->res.message : NULL, k->arg);
	queue_wake_free(&k->wake);
	cJSON_Delete(k->set);
	cJSON_Delete(k->unset);
	free(k);
}

static struct call *call_new(struct coord *c, enum call_kind kind, const char *app,
			     const char *id, releases_done_fn done, void *arg)
{
	struct call *k = calloc(1, sizeof *k);
	if (!k)
		return NULL;
	k->c = c;
	k->kind = kind;
	snprintf(k->app, sizeof k->app, "%s", app ? app : "");
	snprintf(k->id, sizeof k->id, "%s", id ? id : "");
	k->res.wake = &k->wake;
	k->done = done;
	k->arg = arg;
	return k;
}

static int call_submit(struct call *k)
{
	if (store_submit(k->c->store, call_tx, call_done, k) < 0) {
		cJSON_Delete(k->set);
		cJSON_Delete(k->unset);
		free(k);
		return -1;
	}
	return 0;
}

int releases_create_from_build(struct coord *c, const char *build_id, releases_done_fn done,
			       void *arg)
{
	struct call *k = call_new(c, CALL_FROM_BUILD, NULL, build_id, done, arg);
	return k ? call_submit(k) : -1;
}

int releases_promote(struct coord *c, const char *app, const char *release_id,
		     const char *trigger, releases_done_fn done, void *arg)
{
	struct call *k = call_new(c, CALL_PROMOTE, app, release_id, done, arg);
	if (!k)
		return -1;
	snprintf(k->trigger, sizeof k->trigger, "%s", trigger ? trigger : "promote");
	return call_submit(k);
}

int releases_rollback(struct coord *c, const char *app, const char *release_id,
		      releases_done_fn done, void *arg)
{
	struct call *k = call_new(c, CALL_ROLLBACK, app, release_id, done, arg);
	return k ? call_submit(k) : -1;
}

int releases_env_change(struct coord *c, const char *app, const cJSON *set, const cJSON *unset,
			int promote, const char *who, releases_done_fn done, void *arg)
{
	struct call *k = call_new(c, CALL_ENV, app, NULL, done, arg);
	if (!k)
		return -1;
	k->set = set ? cJSON_Duplicate(set, 1) : NULL;
	k->unset = unset ? cJSON_Duplicate(unset, 1) : NULL;
	k->promote = promote;
	snprintf(k->who, sizeof k->who, "%s", who ? who : "");
	return call_submit(k);
}

int releases_scale(struct coord *c, const char *app, const char *service, int64_t count,
		   int64_t memory_mb, const char *who, releases_done_fn done, void *arg)
{
	struct call *k = call_new(c, CALL_SCALE, app, NULL, done, arg);
	if (!k)
		return -1;
	snprintf(k->service, sizeof k->service, "%s", service ? service : "");
	k->count = count;
	k->memory_mb = memory_mb;
	snprintf(k->who, sizeof k->who, "%s", who ? who : "");
	return call_submit(k);
}
