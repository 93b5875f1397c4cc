#include "server.h"

#include <errno.h>
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "agents.h"
#include "clock.h"
#include "config.h"
#include "coord.h"
#include "crypto.h"
#include "json.h"
#include "log.h"

#define ROUTES_MAX 128
#define SEGMENTS_MAX 12
#define BODY_SMALL ((size_t)1 << 20)
#define BODY_LOGS ((size_t)4 << 20)

struct route {
	struct server_route r;
	size_t nseg;
	char *seg[SEGMENTS_MAX];  /* literal text, or the parameter name when param[i] */
	int param[SEGMENTS_MAX];
};

struct server {
	struct coord *c;
	struct httpd *httpd;
	struct route routes[ROUTES_MAX];
	size_t nroutes;
	char uploads_dir[4200];
	uint8_t bootstrap_hash[CRYPTO_SHA256_LEN];
	int have_bootstrap;
	uint32_t id_base;
	uint32_t id_next;
	size_t in_flight;
};

/* The server's view of a request: the public part first. */
struct sreq {
	struct server_req pub;
	struct server *srv;
	const struct route *route;
	server_abort_fn abort_fn;
	void *abort_arg;
	server_drain_fn drain_fn;
	void *drain_arg;
	int64_t t0;
	int status;
	int streaming;
	int64_t last_write_ms;  /* streams: clock_mono_ms of the last bytes out */
	int auth_pending;   /* an API key the cache did not know: ask the store */
	int lookup_busy;    /* that store lookup is running */
	int gone;           /* the client went away during the lookup */
	char token[AUTH_TOKEN_MAX + 1];
};

static struct sreq *priv(struct server_req *r)
{
	return (struct sreq *)r;
}

/* ---- ids, names ---- */

int server_valid_name(const char *s)
{
	if (!s || !(s[0] >= 'a' && s[0] <= 'z'))
		return 0;
	size_t n = 1;
	for (const char *p = s + 1; *p; p++, n++) {
		if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-'))
			return 0;
	}
	return n <= 40;
}

int server_valid_id(const char *s)
{
	if (!s || !*s)
		return 0;
	size_t n = 0;
	for (const char *p = s; *p; p++, n++) {
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		      (*p >= '0' && *p <= '9') || *p == '_' || *p == '-'))
			return 0;
	}
	return n <= 64;
}

/* ---- finishing ---- */

static const char *who_text(const struct sreq *s, char *out, size_t cap)
{
	const struct auth_principal *w = &s->pub.who;
	if (w->agent_id[0])
		snprintf(out, cap, "agent:%s", w->agent_id);
	else if (w->key_id[0])
		snprintf(out, cap, "key:%s", w->key_name);
	else
		snprintf(out, cap, "-");
	return out;
}

static void log_done(struct sreq *s, const char *outcome)
{
	char who[128];
	int agent = s->route && s->route->r.auth == SERVER_AUTH_AGENT;
	int hook = s->route && s->route->r.auth == SERVER_AUTH_WEBHOOK;
	enum log_level lvl = agent && s->status < 500 ? LOG_LEVEL_DEBUG : LOG_LEVEL_INFO;
	if (!log_enabled(lvl))
		return;
	/* Webhook paths carry the hook secret: log the pattern instead. */
	const char *path = hook ? s->route->r.pattern : s->pub.http->path;
	log_msg(lvl, "http.request", "id=%s method=%s path=%s status=%d ms=%lld who=%s%s%s",
		s->pub.id, s->pub.http->method, path, s->status,
		(long long)(clock_mono_ms() - s->t0), who_text(s, who, sizeof who),
		outcome ? " outcome=" : "", outcome ? outcome : "");
}

static void release(struct sreq *s)
{
	if (s->srv->in_flight > 0)
		s->srv->in_flight--;
	free(s);
}

static void finish(struct sreq *s, const char *outcome)
{
	log_done(s, outcome);
	httpd_req_on_abort(s->pub.http, NULL, NULL);
	httpd_stream_on_drain(s->pub.http, NULL, NULL);
	s->pub.http->user = NULL;
	release(s);
}

static void on_http_abort(struct httpd_req *req, void *arg)
{
	(void)req;
	struct sreq *s = arg;
	server_abort_fn fn = s->abort_fn;
	s->abort_fn = NULL;
	if (fn)
		fn(&s->pub, s->abort_arg);
	if (s->status == 0)
		s->status = 499; /* nginx's "client closed request", for the log only */
	log_done(s, "aborted");
	if (s->lookup_busy) {
		s->gone = 1; /* the store lookup frees it */
		return;
	}
	release(s);
}

static void on_http_drain(struct httpd_req *req, void *arg)
{
	(void)req;
	struct sreq *s = arg;
	if (s->drain_fn)
		s->drain_fn(&s->pub, s->drain_arg);
}

int server_respond(struct server_req *r, int status, const char *content_type, const void *body,
		   size_t len)
{
	struct sreq *s = priv(r);
	s->status = status;
	int rc = httpd_respond(r->http, status, content_type, body, len);
	finish(s, NULL);
	return rc;
}

int server_respond_json(struct server_req *r, int status, const cJSON *json)
{
	struct sreq *s = priv(r);
	s->status = status;
	int rc = httpd_respond_json(r->http, status, json);
	finish(s, NULL);
	return rc;
}

int server_respond_json_take(struct server_req *r, int status, cJSON *json)
{
	if (!json)
		return server_respond_error(r, 500, "internal", "out of memory");
	int rc = server_respond_json(r, status, json);
	cJSON_Delete(json);
	return rc;
}

int server_respond_error(struct server_req *r, int status, const char *code, const char *fmt,
			 ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	struct sreq *s = priv(r);
	s->status = status;
	if (status == 401)
		httpd_add_header(r->http, "WWW-Authenticate", "Bearer");
	int rc = httpd_respond_error(r->http, status, code, msg);
	finish(s, status >= 500 ? msg : NULL);
	return rc;
}

int server_respond_internal(struct server_req *r, const char *what, const char *detail)
{
	log_error("http.internal_error", "id=%s what=%s error=\"%s\"", r->id, what,
		  detail ? detail : "");
	return server_respond_error(r, 500, "internal", "%s failed (request %s)", what, r->id);
}

int server_add_header(struct server_req *r, const char *name, const char *value)
{
	return httpd_add_header(r->http, name, value);
}

int server_stream_start(struct server_req *r, int status, const char *content_type)
{
	struct sreq *s = priv(r);
	s->status = status;
	s->streaming = 1;
	s->last_write_ms = clock_mono_ms();
	return httpd_stream_start(r->http, status, content_type);
}

int server_stream_write(struct server_req *r, const void *data, size_t len)
{
	int rc = httpd_stream_write(r->http, data, len);
	if (rc == 0 && len)
		priv(r)->last_write_ms = clock_mono_ms();
	return rc;
}

int server_stream_keepalive(struct server_req *r)
{
	if (clock_mono_ms() - priv(r)->last_write_ms < SERVER_STREAM_KEEPALIVE_MS)
		return 0;
	return server_stream_write(r, "\n", 1) < 0 ? -1 : 1;
}

int server_stream_end(struct server_req *r)
{
	struct sreq *s = priv(r);
	int rc = httpd_stream_end(r->http);
	finish(s, NULL);
	return rc;
}

void server_stream_on_drain(struct server_req *r, server_drain_fn fn, void *arg)
{
	struct sreq *s = priv(r);
	s->drain_fn = fn;
	s->drain_arg = arg;
	httpd_stream_on_drain(r->http, fn ? on_http_drain : NULL, fn ? s : NULL);
}

void server_abort(struct server_req *r)
{
	struct sreq *s = priv(r);
	if (!s->status)
		s->status = 499;
	httpd_abort(r->http);
	finish(s, "dropped");
}

void server_on_abort(struct server_req *r, server_abort_fn fn, void *arg)
{
	struct sreq *s = priv(r);
	s->abort_fn = fn;
	s->abort_arg = arg;
}

char *server_take_body_file(struct server_req *r)
{
	return httpd_req_take_body_file(r->http);
}

/* ---- reading ---- */

const char *server_param(const struct server_req *r, const char *name)
{
	for (size_t i = 0; i < r->param_count; i++)
		if (strcmp(r->param_names[i], name) == 0)
			return r->param_values[i];
	return NULL;
}

int server_query(const struct server_req *r, const char *name, char *out, size_t cap)
{
	return httpd_req_query_param(r->http, name, out, cap);
}

cJSON *server_json_body(struct server_req *r)
{
	struct err err;
	if (r->http->body_file)
		return server_respond_error(r, 400, "bad_request", "expected a JSON body"), NULL;
	cJSON *json = json_parse(r->http->body, r->http->body_len, r->http->body_len + 1, &err);
	if (!json) {
		server_respond_error(r, 400, "bad_request", "body: %s", err.msg);
		return NULL;
	}
	if (!cJSON_IsObject(json)) {
		cJSON_Delete(json);
		server_respond_error(r, 400, "bad_request", "body: expected a JSON object");
		return NULL;
	}
	return json;
}

int server_check_app_scope(struct server_req *r, const char *app)
{
	if (!r->who.app[0] || (app && strcmp(r->who.app, app) == 0))
		return 1;
	server_respond_error(r, 403, "forbidden", "this API key is limited to app %s", r->who.app);
	return 0;
}

/* ---- routing ---- */

static int split_pattern(struct route *rt, const char *pattern)
{
	if (pattern[0] != '/')
		return -1;
	const char *p = pattern + 1;
	size_t params = 0;
	while (*p) {
		if (rt->nseg == SEGMENTS_MAX)
			return -1;
		const char *slash = strchr(p, '/');
		size_t n = slash ? (size_t)(slash - p) : strlen(p);
		if (n == 0)
			return -1;
		int is_param = p[0] == '{' && p[n - 1] == '}';
		if (is_param) {
			if (n < 3 || ++params > SERVER_PARAMS_MAX)
				return -1;
			rt->seg[rt->nseg] = strndup(p + 1, n - 2);
		} else {
			if (memchr(p, '{', n) || memchr(p, '}', n))
				return -1;
			rt->seg[rt->nseg] = strndup(p, n);
		}
		if (!rt->seg[rt->nseg])
			return -1;
		rt->param[rt->nseg] = is_param;
		rt->nseg++;
		p += n;
		if (*p == '/')
			p++;
	}
	return 0;
}

static void route_clear(struct route *rt)
{
	for (size_t i = 0; i < rt->nseg; i++)
		free(rt->seg[i]);
	memset(rt, 0, sizeof *rt);
}

int server_add_route_ex(struct server *srv, const struct server_route *route)
{
	if (!route || !route->method || !route->pattern || !route->fn)
		return -1;
	if (srv->nroutes == ROUTES_MAX) {
		log_error("server.route_refused", "pattern=%s reason=\"too many routes\"",
			  route->pattern);
		return -1;
	}
	struct route *rt = &srv->routes[srv->nroutes];
	memset(rt, 0, sizeof *rt);
	if (split_pattern(rt, route->pattern) < 0) {
		route_clear(rt);
		log_error("server.route_refused", "pattern=%s reason=\"malformed\"", route->pattern);
		return -1;
	}
	for (size_t i = 0; i < srv->nroutes; i++) {
		if (strcmp(srv->routes[i].r.method, route->method) == 0 &&
		    strcmp(srv->routes[i].r.pattern, route->pattern) == 0) {
			route_clear(rt);
			log_error("server.route_refused", "pattern=%s reason=\"registered twice\"",
				  route->pattern);
			return -1;
		}
	}
	rt->r = *route;
	srv->nroutes++;
	return 0;
}

int server_add_route(struct server *srv, const char *method, const char *pattern,
		     enum server_auth auth, server_handler_fn fn, void *arg)
{
	struct server_route r = {.method = method, .pattern = pattern, .auth = auth, .fn = fn,
				 .arg = arg};
	return server_add_route_ex(srv, &r);
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Percent-decodes one path segment into out; -1 when malformed, too long, or
 * holding a slash, NUL or control byte once decoded. */
static int decode_segment(const char *in, size_t n, char *out, size_t cap)
{
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)in[i];
		if (ch == '%') {
			if (i + 2 >= n)
				return -1;
			int hi = hexval(in[i + 1]), lo = hexval(in[i + 2]);
			if (hi < 0 || lo < 0)
				return -1;
			ch = (unsigned char)(hi * 16 + lo);
			i += 2;
		}
		if (ch < 0x20 || ch == 0x7f || ch == '/')
			return -1;
		if (o + 1 >= cap)
			return -1;
		out[o++] = (char)ch;
	}
	out[o] = '\0';
	return 0;
}

/* 1 when path matches rt (params filled into r), else 0. */
static int route_match(const struct route *rt, const char *path, struct server_req *r)
{
	if (path[0] != '/')
		return 0;
	const char *p = path + 1;
	size_t np = 0;
	for (size_t i = 0; i < rt->nseg; i++) {
		if (!*p && i < rt->nseg)
			return 0;
		const char *slash = strchr(p, '/');
		size_t n = slash ? (size_t)(slash - p) : strlen(p);
		if (n == 0)
			return 0;
		if (rt->param[i]) {
			if (decode_segment(p, n, r->param_values[np], sizeof r->param_values[np]) < 0)
				return 0;
			r->param_names[np++] = rt->seg[i];
		} else if (strlen(rt->seg[i]) != n || memcmp(rt->seg[i], p, n) != 0) {
			return 0;
		}
		p += n;
		if (*p == '/') {
			p++;
			if (!*p)
				return 0; /* trailing slash */
		}
	}
	if (*p)
		return 0;
	r->param_count = np;
	return 1;
}

static size_t body_cap(const struct server *srv, const struct route *rt, enum server_body *kind)
{
	enum server_body b = rt->r.body;
	if (b == SERVER_BODY_DEFAULT)
		b = rt->r.auth == SERVER_AUTH_WEBHOOK ? SERVER_BODY_WEBHOOK : SERVER_BODY_SMALL;
	*kind = b;
	switch (b) {
	case SERVER_BODY_NONE:
		return 0;
	case SERVER_BODY_LOGS:
		return BODY_LOGS;
	case SERVER_BODY_WEBHOOK:
		return (size_t)config_size(srv->c->cfg, "webhooks.max_body");
	case SERVER_BODY_UPLOAD:
		return (size_t)config_size(srv->c->cfg, "builds.upload_max");
	default:
		return BODY_SMALL;
	}
}

static enum auth_role needed_role(enum server_auth a)
{
	switch (a) {
	case SERVER_AUTH_READ:
		return AUTH_ROLE_READ;
	case SERVER_AUTH_DEPLOY:
		return AUTH_ROLE_DEPLOY;
	case SERVER_AUTH_ADMIN:
		return AUTH_ROLE_ADMIN;
	default:
		return AUTH_ROLE_NONE;
	}
}

/* Role and scope of an API key against the route; answers and returns 0 when refused. */
static int key_allowed(struct sreq *s)
{
	const struct route *rt = s->route;
	struct server_req *r = &s->pub;
	enum auth_role need = needed_role(rt->r.auth);
	if (r->who.role < need) {
		server_respond_error(r, 403, "forbidden", "this API key's role is %s; %s needed",
				     auth_role_name(r->who.role), auth_role_name(need));
		return 0;
	}
	if (r->who.app[0]) {
		const char *app = server_param(r, "app");
		if (app)
			return server_check_app_scope(r, app);
		if (!(rt->r.flags & SERVER_ROUTE_SCOPED_OK)) {
			server_respond_error(r, 403, "forbidden",
					     "this API key is limited to app %s", r->who.app);
			return 0;
		}
	}
	return 1;
}

/* Authenticates from on_headers; 1 to go on, 0 when answered. */
static int authenticate(struct sreq *s)
{
	struct server *srv = s->srv;
	struct server_req *r = &s->pub;
	const struct route *rt = s->route;
	const char *token = auth_bearer(httpd_req_header(r->http, "Authorization"));
	switch (rt->r.auth) {
	case SERVER_AUTH_NONE:
	case SERVER_AUTH_WEBHOOK:
		return 1;
	case SERVER_AUTH_BOOTSTRAP:
		/* No token at all: the body must carry an AWS identity proof, which the
		 * handler verifies (agents.c), when this coordinator accepts those. */
		if (!token && srv->c->agents && agents_aws_identity(srv->c->agents))
			return 1;
		if (!token || !srv->have_bootstrap || !auth_token_matches(token, srv->bootstrap_hash)) {
			server_respond_error(r, 401, "unauthorized", "bootstrap token missing or wrong");
			return 0;
		}
		return 1;
	case SERVER_AUTH_AGENT: {
		const char *proto = httpd_req_header(r->http, "Slipway-Protocol");
		if (proto && strcmp(proto, "1") != 0) {
			server_respond_error(r, 400, "protocol_unsupported",
					     "this coordinator speaks protocol 1, not %.16s", proto);
			return 0;
		}
		const char *id = server_param(r, "agent_id");
		int rc = id && srv->c->agents ? agents_authenticate(srv->c->agents, id, token ? token : "")
					      : 0;
		if (rc == 0) {
			server_respond_error(r, 404, "not_found", "unknown agent: register again");
			return 0;
		}
		if (rc < 0 || !token) {
			server_respond_error(r, 401, "unauthorized", "agent token missing or wrong");
			return 0;
		}
		snprintf(r->who.agent_id, sizeof r->who.agent_id, "%s", id);
		return 1;
	}
	default:
		break;
	}
	if (!token || !srv->c->auth) {
		server_respond_error(r, 401, "unauthorized", "an API key is required");
		return 0;
	}
	int rc = auth_lookup_cached(srv->c->auth, token, &r->who);
	if (rc < 0) {
		server_respond_error(r, 401, "unauthorized", "unknown or revoked API key");
		return 0;
	}
	if (rc == 0) {
		s->auth_pending = 1;
		snprintf(s->token, sizeof s->token, "%s", token);
		return 1;
	}
	return key_allowed(s);
}

static void collect_allowed(struct server *srv, const char *path, char *out, size_t cap)
{
	struct server_req tmp;
	out[0] = '\0';
	for (size_t i = 0; i < srv->nroutes; i++) {
		memset(&tmp, 0, sizeof tmp);
		if (!route_match(&srv->routes[i], path, &tmp))
			continue;
		const char *m = srv->routes[i].r.method;
		if (strstr(out, m))
			continue;
		size_t len = strlen(out);
		snprintf(out + len, cap - len, "%s%s", len ? ", " : "", m);
		if (strcmp(m, "GET") == 0 && !strstr(out, "HEAD")) {
			len = strlen(out);
			snprintf(out + len, cap - len, ", HEAD");
		}
	}
}

static void on_headers(struct httpd_req *req, void *arg)
{
	struct server *srv = arg;
	struct sreq *s = calloc(1, sizeof *s);
	if (!s) {
		httpd_respond_error(req, 503, "unavailable", "out of memory");
		return;
	}
	s->srv = srv;
	s->t0 = clock_mono_ms();
	s->pub.http = req;
	s->pub.coord = srv->c;
	snprintf(s->pub.id, sizeof s->pub.id, "rq_%08x%08x", srv->id_base, srv->id_next++);
	srv->in_flight++;
	req->user = s;
	httpd_req_on_abort(req, on_http_abort, s);
	httpd_add_header(req, "Slipway-Request-Id", s->pub.id);

	const char *method = strcmp(req->method, "HEAD") == 0 ? "GET" : req->method;
	for (size_t i = 0; i < srv->nroutes; i++) {
		const struct route *rt = &srv->routes[i];
		if (strcmp(rt->r.method, method) != 0)
			continue;
		memset(s->pub.param_values, 0, sizeof s->pub.param_values);
		if (route_match(rt, req->path, &s->pub)) {
			s->route = rt;
			break;
		}
	}
	if (!s->route) {
		char allow[128];
		collect_allowed(srv, req->path, allow, sizeof allow);
		if (allow[0]) {
			httpd_add_header(req, "Allow", allow);
			server_respond_error(&s->pub, 405, "method_not_allowed",
					     "%s is not allowed here (allowed: %s)", req->method, allow);
		} else {
			server_respond_error(&s->pub, 404, "not_found", "no such endpoint");
		}
		return;
	}
	enum server_body kind;
	size_t cap = body_cap(srv, s->route, &kind);
	httpd_req_set_body_max(req, cap);
	if (!authenticate(s))
		return;
	if (kind == SERVER_BODY_UPLOAD) {
		struct err err;
		if (httpd_req_body_to_file(req, srv->uploads_dir, &err) < 0)
			server_respond_internal(&s->pub, "upload", err.msg);
	}
}

static void dispatch(struct sreq *s)
{
	s->route->r.fn(&s->pub, s->route->r.arg);
}

static void lookup_done(int found, const struct auth_principal *who, void *arg)
{
	struct sreq *s = arg;
	s->lookup_busy = 0;
	if (s->gone) {
		release(s);
		return;
	}
	if (found < 0) {
		server_respond_error(&s->pub, 503, "unavailable", "the store is busy; retry");
		return;
	}
	if (found == 0) {
		server_respond_error(&s->pub, 401, "unauthorized", "unknown or revoked API key");
		return;
	}
	s->pub.who = *who;
	if (key_allowed(s))
		dispatch(s);
}

static void on_request(struct httpd_req *req, void *arg)
{
	(void)arg;
	struct sreq *s = req->user;
	if (!s)
		return;
	if (s->auth_pending) {
		s->auth_pending = 0;
		s->lookup_busy = 1;
		if (auth_lookup_store(s->srv->c->auth, s->token, lookup_done, s) < 0) {
			s->lookup_busy = 0;
			server_respond_error(&s->pub, 503, "unavailable", "the store is busy; retry");
		}
		return;
	}
	dispatch(s);
}

/* ---- life cycle ---- */

struct server *server_new(struct coord *c, const char *listen_override, struct err *err)
{
	struct server *srv = calloc(1, sizeof *srv);
	if (!srv) {
		err_set(err, "out of memory");
		return NULL;
	}
	srv->c = c;
	crypto_random(&srv->id_base, sizeof srv->id_base);
	const char *boot = config_str(c->cfg, "agents.bootstrap_token");
	if (boot && *boot) {
		crypto_sha256(boot, strlen(boot), srv->bootstrap_hash);
		srv->have_bootstrap = 1;
	}
	snprintf(srv->uploads_dir, sizeof srv->uploads_dir, "%s/uploads", c->data_dir);
	/* A missing uploads directory only fails upload routes, with a clear error. */
	if (mkdir(srv->uploads_dir, 0700) < 0 && errno != EEXIST)
		log_warn("server.uploads_dir", "dir=%s error=\"%s\"", srv->uploads_dir,
			 strerror(errno));
	static const char *const headers[] = {"Slipway-Protocol: 1", NULL};
	struct httpd_config hc = {
		.listen = listen_override ? listen_override : config_str(c->cfg, "server.listen"),
		.handler = on_request,
		.on_headers = on_headers,
		.arg = srv,
		.max_connections = (size_t)config_int(c->cfg, "server.max_connections"),
		.body_max = BODY_SMALL,
		.default_headers = headers,
		.tls_cert_file = config_str(c->cfg, "server.tls_cert"),
		.tls_key_file = config_str(c->cfg, "server.tls_key"),
	};
	if ((hc.tls_cert_file != NULL) != (hc.tls_key_file != NULL)) {
		err_set(err, "server.tls_cert and server.tls_key go together");
		free(srv);
		return NULL;
	}
	srv->httpd = httpd_new(c->loop, &hc, err);
	if (!srv->httpd) {
		free(srv);
		return NULL;
	}
	c->httpd = srv->httpd;
	return srv;
}

int server_port(const struct server *srv)
{
	return httpd_port(srv->httpd);
}

size_t server_request_count(const struct server *srv)
{
	return srv->in_flight;
}

void server_stop_accepting(struct server *srv)
{
	if (srv)
		httpd_stop_accepting(srv->httpd);
}

void server_free(struct server *srv)
{
	if (!srv)
		return;
	httpd_free(srv->httpd);
	if (srv->c->httpd == srv->httpd)
		srv->c->httpd = NULL;
	for (size_t i = 0; i < srv->nroutes; i++)
		route_clear(&srv->routes[i]);
	free(srv);
}
