#include "proxy_client.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backoff.h"
#include "buf.h"
#include "dlist.h"
#include "http_client.h"
#include "json.h"

#define CALL_TIMEOUT_MS 30000
#define DRAIN_MARGIN_MS 10000
#define ANSWER_MAX ((size_t)8 << 20)
#define ERR_MAX 600

enum call_kind { K_ROUTE, K_DRAIN, K_DONE, K_ROUTES, K_HEALTH };

struct call {
	struct proxy_client *pc;
	struct call *next, *prev;
	uint64_t id;
	uint64_t http_id;
	enum call_kind kind;
	bool not_found_ok;
	union {
		proxy_client_route_fn route;
		proxy_client_drain_fn drain;
		proxy_client_done_fn done;
		proxy_client_routes_fn routes;
		proxy_client_health_fn health;
	} cb;
	void *arg;
};

struct proxy_client {
	struct http_client *http;
	char *socket_path;
	struct call *calls;
	uint64_t next_id;
};

/* The proxy may be (re)starting: only "nobody listens" is worth a retry. */
static const struct backoff_policy connect_retry = {.base_ms = 50, .cap_ms = 1000,
						    .max_attempts = 8};

static int retry_connect_only(const struct http_response *resp, void *arg)
{
	(void)arg;
	return resp->error == HTTP_ERR_CONNECT;
}

struct proxy_client *proxy_client_new(struct http_client *http, const char *socket_path)
{
	struct proxy_client *pc = calloc(1, sizeof *pc);
	if (!pc || !(pc->socket_path = strdup(socket_path))) {
		free(pc);
		return NULL;
	}
	pc->http = http;
	return pc;
}

static void call_unlink(struct call *c)
{
	struct proxy_client *pc = c->pc;
	DLIST_UNLINK(pc->calls, c);
}

void proxy_client_free(struct proxy_client *pc)
{
	if (!pc)
		return;
	while (pc->calls) {
		struct call *c = pc->calls;
		call_unlink(c);
		http_client_cancel(pc->http, c->http_id);
		free(c);
	}
	free(pc->socket_path);
	free(pc);
}

void proxy_client_cancel(struct proxy_client *pc, uint64_t call_id)
{
	for (struct call *c = pc->calls; c; c = c->next)
		if (c->id == call_id) {
			call_unlink(c);
			http_client_cancel(pc->http, c->http_id);
			free(c);
			return;
		}
}

/* ---- answers ---- */

static void fail_call(struct call *c, const struct proxy_result *res)
{
	switch (c->kind) {
	case K_ROUTE:
		c->cb.route(res, NULL, 0, c->arg);
		break;
	case K_DRAIN:
		c->cb.drain(res, false, -1, 0, c->arg);
		break;
	case K_DONE:
		c->cb.done(res, c->arg);
		break;
	case K_ROUTES:
		c->cb.routes(res, NULL, 0, false, c->arg);
		break;
	case K_HEALTH:
		c->cb.health(res, NULL, c->arg);
		break;
	}
}

static int64_t num_or(const cJSON *o, const char *key, int64_t def)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	return cJSON_IsNumber(v) ? (int64_t)v->valuedouble : def;
}

static const char *str_or(const cJSON *o, const char *key, const char *def)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	return cJSON_IsString(v) ? v->valuestring : def;
}

/* Backends of an answer; NULL with *n = 0 for an empty or missing list. */
static struct proxy_backend_state *backends_of(const cJSON *arr, size_t *n, bool *ok)
{
	*n = 0;
	int count = cJSON_IsArray(arr) ? cJSON_GetArraySize(arr) : 0;
	if (count <= 0)
		return NULL;
	struct proxy_backend_state *b = calloc((size_t)count, sizeof *b);
	if (!b) {
		*ok = false;
		return NULL;
	}
	const cJSON *o;
	cJSON_ArrayForEach(o, arr) {
		struct proxy_backend_state *s = &b[(*n)++];
		s->id = str_or(o, "id", "");
		s->address = str_or(o, "address", "");
		s->inflight = num_or(o, "inflight", -1);
		s->requests = num_or(o, "requests", -1);
		s->errors = num_or(o, "errors", -1);
		s->connections = num_or(o, "connections", -1);
	}
	return b;
}

static bool deliver_routes(struct call *c, const cJSON *doc)
{
	const cJSON *arr = cJSON_GetObjectItemCaseSensitive(doc, "routes");
	if (!cJSON_IsArray(arr))
		return false;
	int n = cJSON_GetArraySize(arr);
	struct proxy_route_state *rs = n ? calloc((size_t)n, sizeof *rs) : NULL;
	const char **hosts_all = NULL;
	bool ok = !n || rs;
	size_t total_hosts = 0;
	const cJSON *r;
	cJSON_ArrayForEach(r, arr) {
		const cJSON *h = cJSON_GetObjectItemCaseSensitive(r, "hosts");
		total_hosts += cJSON_IsArray(h) ? (size_t)cJSON_GetArraySize(h) : 0;
	}
	if (ok && total_hosts && !(hosts_all = calloc(total_hosts, sizeof *hosts_all)))
		ok = false;
	size_t i = 0, hi = 0;
	cJSON_ArrayForEach(r, arr) {
		if (!ok)
			break;
		struct proxy_route_state *s = &rs[i++];
		s->app = str_or(r, "app", "");
		s->service = str_or(r, "service", "");
		s->generation = num_or(r, "generation", 0);
		s->release = str_or(r, "release", "");
		s->listen = (int)num_or(r, "listen", 0);
		s->protocol = !strcmp(str_or(r, "protocol", "http"), "tcp") ? PROXY_TCP : PROXY_HTTP;
		const cJSON *h = cJSON_GetObjectItemCaseSensitive(r, "hosts"), *hv;
		s->hosts = hosts_all ? hosts_all + hi : NULL;
		cJSON_ArrayForEach(hv, h) {
			if (cJSON_IsString(hv)) {
				hosts_all[hi++] = hv->valuestring;
				s->host_count++;
			}
		}
		s->backends = backends_of(cJSON_GetObjectItemCaseSensitive(r, "backends"),
					  &s->backend_count, &ok);
		s->retired = backends_of(cJSON_GetObjectItemCaseSensitive(r, "retired"),
					 &s->retired_count, &ok);
	}
	if (ok) {
		struct proxy_result res = {.error = NULL, .status = 200, .code = ""};
		c->cb.routes(&res, rs, (size_t)n, cJSON_IsTrue(cJSON_GetObjectItem(doc, "draining")),
			     c->arg);
	}
	for (size_t k = 0; k < i; k++) {
		free((void *)rs[k].backends);
		free((void *)rs[k].retired);
	}
	free(rs);
	free(hosts_all);
	if (!ok) {
		struct proxy_result res = {.error = "out of memory", .status = 200, .code = ""};
		fail_call(c, &res);
	}
	return true;
}

/* 2xx: reads the answer for the call's kind; false when it is not what the
 * contract says. */
static bool deliver(struct call *c, const struct http_response *resp)
{
	struct proxy_result ok = {.error = NULL, .status = (int)resp->status, .code = ""};
	if (c->kind == K_DONE) {
		c->cb.done(&ok, c->arg);
		return true;
	}
	cJSON *doc = json_parse(resp->body, resp->body_len, ANSWER_MAX, NULL);
	if (!cJSON_IsObject(doc)) {
		cJSON_Delete(doc);
		return false;
	}
	bool good = true;
	switch (c->kind) {
	case K_ROUTE: {
		const cJSON *prev = cJSON_GetObjectItemCaseSensitive(doc, "previous");
		if (!cJSON_IsArray(prev)) {
			good = false;
			break;
		}
		size_t n;
		bool mem = true;
		struct proxy_backend_state *b = backends_of(prev, &n, &mem);
		if (!mem) {
			ok.error = "out of memory";
			c->cb.route(&ok, NULL, 0, c->arg);
		} else {
			c->cb.route(&ok, b, n, c->arg);
		}
		free(b);
		break;
	}
	case K_DRAIN: {
		const cJSON *d = cJSON_GetObjectItemCaseSensitive(doc, "drained");
		if (!cJSON_IsBool(d)) {
			good = false;
			break;
		}
		c->cb.drain(&ok, cJSON_IsTrue(d), num_or(doc, "remaining", 0),
			    num_or(doc, "waited_ms", 0), c->arg);
		break;
	}
	case K_ROUTES:
		good = deliver_routes(c, doc);
		break;
	case K_HEALTH: {
		struct proxy_health h = {
			.pid = num_or(doc, "pid", 0),
			.version = str_or(doc, "version", ""),
			.uptime_s = num_or(doc, "uptime_s", 0),
			.routes = num_or(doc, "routes", 0),
		};
		if (!h.pid) {
			good = false;
			break;
		}
		c->cb.health(&ok, &h, c->arg);
		break;
	}
	case K_DONE:
		break;
	}
	cJSON_Delete(doc);
	return good;
}

static void on_done(const struct http_response *resp, void *arg)
{
	struct call *c = arg;
	call_unlink(c);
	char msg[ERR_MAX];
	struct proxy_result res = {.error = msg, .status = (int)resp->status, .code = ""};
	if (resp->error != HTTP_OK) {
		snprintf(msg, sizeof msg, "proxy control: %s", resp->error_msg);
		res.status = 0;
		fail_call(c, &res);
	} else if (resp->status / 100 == 2 || (resp->status == 404 && c->not_found_ok)) {
		if (!deliver(c, resp)) {
			snprintf(msg, sizeof msg, "proxy control: bad answer: %.200s", resp->body);
			fail_call(c, &res);
		}
	} else {
		/* {"error":{"code":..,"message":..}} */
		cJSON *doc = json_parse(resp->body, resp->body_len, ANSWER_MAX, NULL);
		const cJSON *e = cJSON_GetObjectItemCaseSensitive(doc, "error");
		const char *code = str_or(e, "code", "");
		const char *message = str_or(e, "message", resp->body);
		char codebuf[64];
		snprintf(codebuf, sizeof codebuf, "%s", code);
		res.code = codebuf;
		snprintf(msg, sizeof msg, "HTTP %ld%s%s: %.400s", resp->status, *code ? " " : "",
			 code, message);
		cJSON_Delete(doc);
		fail_call(c, &res);
	}
	free(c);
}

/* ---- calls ---- */

static uint64_t start(struct proxy_client *pc, struct call *c, const char *method,
		      const char *path, const cJSON *body, int64_t timeout_ms)
{
	static const char *const json_headers[] = {"Content-Type: application/json", NULL};
	char url[512];
	char *text = NULL;
	if (snprintf(url, sizeof url, "http://proxy%s", path) >= (int)sizeof url)
		goto fail;
	if (body && !(text = cJSON_PrintUnformatted(body)))
		goto fail;
	struct http_request req = {
		.method = method,
		.url = url,
		.unix_socket = pc->socket_path,
		.headers = body ? json_headers : NULL,
		.body = text,
		.body_len = text ? strlen(text) : 0,
		.timeout_ms = timeout_ms,
		.connect_timeout_ms = 2000,
		.max_body = ANSWER_MAX,
		.retry = &connect_retry,
		.should_retry = retry_connect_only,
		.on_done = on_done,
		.arg = c,
	};
	c->pc = pc;
	c->http_id = http_client_start(pc->http, &req);
	free(text);
	if (!c->http_id) {
		free(c);
		return 0;
	}
	c->id = ++pc->next_id;
	DLIST_PUSH(pc->calls, c);
	return c->id;
fail:
	free(text);
	free(c);
	return 0;
}

/* "/v1/routes/<app>/<service><suffix>" with both names escaped. */
static int route_path(char *out, size_t cap, const char *app, const char *service,
		      const char *suffix)
{
	struct buf b;
	buf_init(&b, 1024);
	int rc = -1;
	if (app && service && buf_append_str(&b, "/v1/routes/") == 0 &&
	    http_url_encode(&b, app, strlen(app)) == 0 && buf_append_byte(&b, '/') == 0 &&
	    http_url_encode(&b, service, strlen(service)) == 0 && buf_append_str(&b, suffix) == 0 &&
	    b.len < cap) {
		memcpy(out, b.data, b.len + 1);
		rc = 0;
	}
	buf_free(&b);
	return rc;
}

static struct call *call_new(enum call_kind kind, void *arg)
{
	struct call *c = calloc(1, sizeof *c);
	if (c) {
		c->kind = kind;
		c->arg = arg;
	}
	return c;
}

uint64_t proxy_client_set_route(struct proxy_client *pc, const struct proxy_route_spec *spec,
				proxy_client_route_fn cb, void *arg)
{
	char path[512];
	if (!cb || !spec || route_path(path, sizeof path, spec->app, spec->service, "") < 0)
		return 0;
	cJSON *body = cJSON_CreateObject();
	cJSON *hosts = body ? cJSON_AddArrayToObject(body, "hosts") : NULL;
	cJSON *bes = body ? cJSON_AddArrayToObject(body, "backends") : NULL;
	bool ok = hosts && bes;
	if (ok) {
		cJSON_AddNumberToObject(body, "generation", (double)spec->generation);
		cJSON_AddStringToObject(body, "release", spec->release ? spec->release : "");
		cJSON_AddNumberToObject(body, "listen", spec->listen);
		cJSON_AddStringToObject(body, "protocol",
					spec->protocol == PROXY_TCP ? "tcp" : "http");
	}
	for (size_t i = 0; ok && i < spec->host_count; i++)
		ok = cJSON_AddItemToArray(hosts, cJSON_CreateString(spec->hosts[i]));
	for (size_t i = 0; ok && i < spec->backend_count; i++) {
		cJSON *o = cJSON_CreateObject();
		ok = o && cJSON_AddItemToArray(bes, o) &&
		     cJSON_AddStringToObject(o, "id", spec->backends[i].id) &&
		     cJSON_AddStringToObject(o, "address", spec->backends[i].address);
	}
	struct call *c = ok ? call_new(K_ROUTE, arg) : NULL;
	uint64_t id = 0;
	if (c) {
		c->cb.route = cb;
		id = start(pc, c, "PUT", path, body, CALL_TIMEOUT_MS);
	}
	cJSON_Delete(body);
	return id;
}

uint64_t proxy_client_drain(struct proxy_client *pc, const char *app, const char *service,
			    const char *const *backend_ids, size_t count, int64_t timeout_ms,
			    proxy_client_drain_fn cb, void *arg)
{
	char path[512];
	if (!cb || timeout_ms < 0 ||
	    route_path(path, sizeof path, app, service, "/drain") < 0)
		return 0;
	cJSON *body = cJSON_CreateObject();
	cJSON *ids = body ? cJSON_AddArrayToObject(body, "backends") : NULL;
	bool ok = ids && cJSON_AddNumberToObject(body, "timeout_ms", (double)timeout_ms);
	for (size_t i = 0; ok && i < count; i++)
		ok = backend_ids[i] && cJSON_AddItemToArray(ids, cJSON_CreateString(backend_ids[i]));
	struct call *c = ok ? call_new(K_DRAIN, arg) : NULL;
	uint64_t id = 0;
	if (c) {
		c->cb.drain = cb;
		id = start(pc, c, "POST", path, body, timeout_ms + DRAIN_MARGIN_MS);
	}
	cJSON_Delete(body);
	return id;
}

uint64_t proxy_client_remove_route(struct proxy_client *pc, const char *app,
				   const char *service, proxy_client_done_fn cb, void *arg)
{
	char path[512];
	if (!cb || route_path(path, sizeof path, app, service, "") < 0)
		return 0;
	struct call *c = call_new(K_DONE, arg);
	if (!c)
		return 0;
	c->cb.done = cb;
	c->not_found_ok = true;
	return start(pc, c, "DELETE", path, NULL, CALL_TIMEOUT_MS);
}

uint64_t proxy_client_set_draining(struct proxy_client *pc, bool draining,
				   proxy_client_done_fn cb, void *arg)
{
	if (!cb)
		return 0;
	cJSON *body = cJSON_CreateObject();
	struct call *c = body && cJSON_AddBoolToObject(body, "draining", draining) ?
			 call_new(K_DONE, arg) : NULL;
	uint64_t id = 0;
	if (c) {
		c->cb.done = cb;
		id = start(pc, c, "PUT", "/v1/draining", body, CALL_TIMEOUT_MS);
	}
	cJSON_Delete(body);
	return id;
}

uint64_t proxy_client_routes(struct proxy_client *pc, proxy_client_routes_fn cb, void *arg)
{
	struct call *c = cb ? call_new(K_ROUTES, arg) : NULL;
	if (!c)
		return 0;
	c->cb.routes = cb;
	return start(pc, c, "GET", "/v1/routes", NULL, CALL_TIMEOUT_MS);
}

uint64_t proxy_client_health(struct proxy_client *pc, proxy_client_health_fn cb, void *arg)
{
	struct call *c = cb ? call_new(K_HEALTH, arg) : NULL;
	if (!c)
		return 0;
	c->cb.health = cb;
	return start(pc, c, "GET", "/v1/health", NULL, CALL_TIMEOUT_MS);
}
