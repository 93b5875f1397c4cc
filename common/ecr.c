#include "ecr.h"

#include <ev.h>
#include <mbedtls/base64.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "awsjson.h"
#include "clock.h"
#include "json.h"
#include "log.h"

#define TOKEN_MAX 16384
#define REGISTRY_ID_MAX 13

enum op { OP_CREATE, OP_DESCRIBE, OP_TOKEN };

static const char *const op_action[] = {
	[OP_CREATE] = "CreateRepository",
	[OP_DESCRIBE] = "DescribeRepositories",
	[OP_TOKEN] = "GetAuthorizationToken",
};

struct ecall {
	struct ecr *e;
	struct ecall *prev, *next;
	uint64_t id;
	enum op op;
	uint64_t jid;
	struct token *tok;       /* OP_TOKEN: the cache entry it fills */
	ecr_done_fn done;
	void *arg;
};

/* A caller waiting for a token. */
struct waiter {
	struct waiter *next;
	uint64_t id;
	ecr_auth_fn cb;
	void *arg;
};

/* One cached token per registry. */
struct token {
	struct ecr *e;
	struct token *next;
	char registry_id[REGISTRY_ID_MAX];
	char *username, *password, *proxy_endpoint, *registry_host;
	char *auth_json, *config_json;
	int64_t fetched_ms, expires_ms, refresh_ms;
	bool valid;
	struct ecall *fetch;     /* the GetAuthorizationToken in flight */
	struct waiter *waiters;
	ev_timer later;          /* answers waiters from a cached token on the next turn */
	bool later_on;
};

struct ecr {
	struct ev_loop *loop;
	struct awsjson *j;
	struct ecall *calls;
	struct token *tokens;
	uint64_t next_id;
	size_t pending;
	uint64_t fetches;
};

/* ---- building blocks ---- */

int ecr_repository_name_valid(const char *name)
{
	/* ECR's rule: components split by '/', each runs of [a-z0-9] joined by
	 * single '.', '_' or '-'. */
	size_t n = name ? strlen(name) : 0;
	if (n < 2 || n > ECR_REPOSITORY_NAME_MAX)
		return 0;
	char prev = '/';
	for (const char *p = name; *p; p++) {
		char c = *p;
		int alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
		if (!alnum && c != '.' && c != '_' && c != '-' && c != '/')
			return 0;
		int prev_alnum = (prev >= 'a' && prev <= 'z') || (prev >= '0' && prev <= '9');
		if (!alnum && !prev_alnum)
			return 0; /* a separator must follow a letter or digit */
		prev = c;
	}
	return (prev >= 'a' && prev <= 'z') || (prev >= '0' && prev <= '9');
}

int ecr_image_registry(const char *image, char *registry_id, char *region)
{
	if (!image)
		return 0;
	size_t hl = strcspn(image, "/");
	if (image[hl] != '/' || hl < 12)
		return 0;
	char host[256];
	if (hl >= sizeof host)
		return 0;
	memcpy(host, image, hl);
	host[hl] = '\0';
	for (int i = 0; i < 12; i++)
		if (host[i] < '0' || host[i] > '9')
			return 0;
	const char *p = host + 12;
	if (strncmp(p, ".dkr.ecr.", 9) == 0)
		p += 9;
	else if (strncmp(p, ".dkr.ecr-fips.", 14) == 0)
		p += 14;
	else
		return 0;
	const char *dot = strchr(p, '.');
	if (!dot || dot == p || (size_t)(dot - p) >= 32)
		return 0;
	if (strcmp(dot, ".amazonaws.com") != 0 && strcmp(dot, ".amazonaws.com.cn") != 0)
		return 0;
	for (const char *r = p; r < dot; r++)
		if (!((*r >= 'a' && *r <= 'z') || (*r >= '0' && *r <= '9') || *r == '-'))
			return 0;
	memcpy(registry_id, host, 12);
	registry_id[12] = '\0';
	memcpy(region, p, (size_t)(dot - p));
	region[dot - p] = '\0';
	return 1;
}

int ecr_docker_auth(const char *username, const char *password, const char *proxy_endpoint,
		    char **auth_json, char **config_json)
{
	*auth_json = *config_json = NULL;
	const char *host = strstr(proxy_endpoint, "://");
	host = host ? host + 3 : proxy_endpoint;
	size_t hl = strcspn(host, "/");
	char *h = strndup(host, hl);
	cJSON *a = cJSON_CreateObject();
	cJSON *cfg = cJSON_CreateObject();
	cJSON *inner = cJSON_CreateObject();
	int ok = h && a && cfg && inner && cJSON_AddStringToObject(a, "username", username) &&
		 cJSON_AddStringToObject(a, "password", password) &&
		 cJSON_AddStringToObject(a, "serveraddress", proxy_endpoint) &&
		 cJSON_AddStringToObject(inner, "username", username) &&
		 cJSON_AddStringToObject(inner, "password", password) &&
		 cJSON_AddStringToObject(inner, "serveraddress", proxy_endpoint);
	if (ok) {
		cJSON_AddItemToObject(cfg, h, inner);
		inner = NULL;
		*auth_json = cJSON_PrintUnformatted(a);
		*config_json = cJSON_PrintUnformatted(cfg);
	}
	cJSON_Delete(a);
	cJSON_Delete(cfg);
	cJSON_Delete(inner);
	free(h);
	if (!*auth_json || !*config_json) {
		free(*auth_json);
		free(*config_json);
		*auth_json = *config_json = NULL;
		return -1;
	}
	return 0;
}

int ecr_decode_token(const char *token, char **user, char **password, struct err *err)
{
	*user = *password = NULL;
	size_t n = token ? strlen(token) : 0;
	if (n == 0 || n > TOKEN_MAX)
		return err_set(err, "authorizationToken: empty or longer than %d bytes", TOKEN_MAX);
	unsigned char *out = malloc(n + 1);
	size_t olen = 0;
	if (!out)
		return err_set(err, "out of memory");
	if (mbedtls_base64_decode(out, n, &olen, (const unsigned char *)token, n) != 0) {
		free(out);
		return err_set(err, "authorizationToken: not base64");
	}
	out[olen] = '\0';
	char *colon = memchr(out, ':', olen);
	int bad = !colon || colon == (char *)out || memchr(out, '\0', olen) != NULL;
	if (bad) {
		memset(out, 0, olen);
		free(out);
		return err_set(err, "authorizationToken: expected base64 of \"user:password\"");
	}
	*colon = '\0';
	*user = strdup((char *)out);
	*password = strdup(colon + 1);
	memset(out, 0, olen);
	free(out);
	if (!*user || !*password || !**password) {
		free(*user);
		if (*password)
			memset(*password, 0, strlen(*password));
		free(*password);
		*user = *password = NULL;
		return err_set(err, "authorizationToken: empty password or out of memory");
	}
	return 0;
}

int64_t ecr_refresh_at(int64_t fetched_ms, int64_t expires_ms)
{
	int64_t half = fetched_ms + (expires_ms - fetched_ms) / 2;
	int64_t before = expires_ms - ECR_REFRESH_BEFORE_MS;
	int64_t at = half < before ? half : before;
	return at < fetched_ms ? fetched_ms : at;
}

int ecr_docker_denied(const char *message)
{
	/* What Docker and registries say when credentials are missing, wrong or
	 * expired (ECR: "Your authorization token has expired"; distribution:
	 * "unauthorized: authentication required"; the engine itself: "no basic
	 * auth credentials", "pull access denied"). */
	static const char *const says[] = {
		"no basic auth credentials", "unauthorized", "authentication required",
		"authorization token has expired", "denied", "401 unauthorized", "403 forbidden",
	};
	if (!message)
		return 0;
	for (size_t i = 0; i < sizeof says / sizeof says[0]; i++)
		if (strcasestr(message, says[i]))
			return 1;
	return 0;
}

/* ---- calls ---- */

static void call_free(struct ecall *c)
{
	struct ecr *e = c->e;
	if (c->jid)
		awsjson_cancel(e->j, c->jid);
	if (c->tok && c->tok->fetch == c)
		c->tok->fetch = NULL;
	if (c->prev)
		c->prev->next = c->next;
	else
		e->calls = c->next;
	if (c->next)
		c->next->prev = c->prev;
	e->pending--;
	free(c);
}

static void on_json(const struct awsjson_result *r, void *arg);

static struct ecall *call_start(struct ecr *e, enum op op, cJSON *req, ecr_done_fn done,
				void *arg)
{
	char *text = req ? cJSON_PrintUnformatted(req) : NULL;
	cJSON_Delete(req);
	struct ecall *c = text ? calloc(1, sizeof *c) : NULL;
	if (!c) {
		free(text);
		return NULL;
	}
	c->e = e;
	c->op = op;
	c->id = e->next_id++;
	c->done = done;
	c->arg = arg;
	c->next = e->calls;
	if (e->calls)
		e->calls->prev = c;
	e->calls = c;
	e->pending++;
	c->jid = awsjson_call(e->j, op_action[op], text, strlen(text), 0, on_json, c);
	free(text);
	if (!c->jid) {
		call_free(c);
		return NULL;
	}
	return c;
}

static enum ecr_status map_status(const struct awsjson_result *r)
{
	switch (r->status) {
	case AWSJSON_OK:
		return ECR_OK;
	case AWSJSON_UNREACHABLE:
		return ECR_UNREACHABLE;
	case AWSJSON_ERROR:
		break;
	}
	return awsjson_error_is(r, "RepositoryNotFoundException") ? ECR_NOT_FOUND : ECR_REFUSED;
}

static const char *str_at(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* "createdAt"/"expiresAt": epoch seconds as a number (fractions allowed). */
static int64_t time_at(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 9.0e12)
		return 0;
	return (int64_t)(v->valuedouble * 1000.0);
}

static void repo_from(const cJSON *o, struct ecr_repository *r)
{
	r->name = str_at(o, "repositoryName");
	r->uri = str_at(o, "repositoryUri");
	r->arn = str_at(o, "repositoryArn");
	r->registry_id = str_at(o, "registryId");
	r->created_ms = time_at(o, "createdAt");
	if (!r->name)
		r->name = "";
	if (!r->uri)
		r->uri = "";
	if (!r->arn)
		r->arn = "";
	if (!r->registry_id)
		r->registry_id = "";
}

static void report(struct ecall *c, const struct ecr_result *res)
{
	ecr_done_fn done = c->done;
	void *arg = c->arg;
	c->jid = 0;
	call_free(c);
	done(res, arg);
}

static void token_done(struct ecall *c, const struct awsjson_result *r);

static void on_json(const struct awsjson_result *r, void *arg)
{
	struct ecall *c = arg;
	c->jid = 0;
	if (c->op == OP_TOKEN) {
		token_done(c, r);
		return;
	}
	struct ecr_result res = {
		.status = map_status(r),
		.http_status = r->http_status,
		.error_code = r->code,
		.message = r->message,
		.attempts = r->attempts,
	};
	if (c->op == OP_CREATE) {
		struct ecr_repository repo;
		if (res.status == ECR_REFUSED && awsjson_error_is(r, "RepositoryAlreadyExistsException")) {
			res.status = ECR_OK;
			res.existed = true;
			res.error_code = res.message = "";
		} else if (res.status == ECR_OK) {
			repo_from(cJSON_GetObjectItemCaseSensitive(r->doc, "repository"), &repo);
			res.repository = &repo;
		}
		report(c, &res);
		return;
	}
	/* OP_DESCRIBE */
	const cJSON *arr = cJSON_GetObjectItemCaseSensitive(r->doc, "repositories");
	size_t n = cJSON_IsArray(arr) ? (size_t)cJSON_GetArraySize(arr) : 0;
	struct ecr_repository *repos = n ? calloc(n, sizeof *repos) : NULL;
	if (n && !repos) {
		res.status = ECR_UNREACHABLE;
		res.error_code = "InternalError";
		res.message = "out of memory";
		report(c, &res);
		return;
	}
	size_t k = 0;
	const cJSON *o;
	cJSON_ArrayForEach(o, arr)
	{
		if (cJSON_IsObject(o))
			repo_from(o, &repos[k++]);
	}
	res.repositories = repos;
	res.repository_count = k;
	const char *next = str_at(r->doc, "nextToken");
	res.next_token = next && *next ? next : NULL;
	report(c, &res);
	free(repos);
}

uint64_t ecr_create_repository(struct ecr *e, const char *name, const struct ecr_tag *tags,
			       size_t ntags, bool scan_on_push, ecr_done_fn done, void *arg)
{
	if (!e || !done || !ecr_repository_name_valid(name) || ntags > 50)
		return 0;
	cJSON *req = cJSON_CreateObject();
	cJSON *scan = cJSON_CreateObject();
	cJSON *tl = ntags ? cJSON_CreateArray() : NULL;
	if (!req || !scan || (ntags && !tl) ||
	    !cJSON_AddStringToObject(req, "repositoryName", name) ||
	    !cJSON_AddStringToObject(req, "imageTagMutability", "MUTABLE") ||
	    !cJSON_AddBoolToObject(scan, "scanOnPush", scan_on_push)) {
		cJSON_Delete(req);
		cJSON_Delete(scan);
		cJSON_Delete(tl);
		return 0;
	}
	cJSON_AddItemToObject(req, "imageScanningConfiguration", scan);
	for (size_t i = 0; i < ntags; i++) {
		cJSON *t = cJSON_CreateObject();
		if (!t || !tags[i].key || !*tags[i].key || !tags[i].value ||
		    !cJSON_AddStringToObject(t, "Key", tags[i].key) ||
		    !cJSON_AddStringToObject(t, "Value", tags[i].value)) {
			cJSON_Delete(t);
			cJSON_Delete(tl);
			cJSON_Delete(req);
			return 0;
		}
		cJSON_AddItemToArray(tl, t);
	}
	if (tl)
		cJSON_AddItemToObject(req, "tags", tl);
	struct ecall *c = call_start(e, OP_CREATE, req, done, arg);
	return c ? c->id : 0;
}

uint64_t ecr_describe_repositories(struct ecr *e, const char *const *names, size_t count,
				   const char *next_token, ecr_done_fn done, void *arg)
{
	if (!e || !done || count > 100 || (count && !names) || (next_token && !*next_token))
		return 0;
	cJSON *req = cJSON_CreateObject();
	if (!req)
		return 0;
	if (count) {
		cJSON *arr = cJSON_AddArrayToObject(req, "repositoryNames");
		for (size_t i = 0; arr && i < count; i++) {
			if (!ecr_repository_name_valid(names[i])) {
				cJSON_Delete(req);
				return 0;
			}
			cJSON_AddItemToArray(arr, cJSON_CreateString(names[i]));
		}
	}
	if (next_token)
		cJSON_AddStringToObject(req, "nextToken", next_token);
	struct ecall *c = call_start(e, OP_DESCRIBE, req, done, arg);
	return c ? c->id : 0;
}

/* ---- authorization tokens ---- */

static void wipe_free(char *s)
{
	if (s) {
		memset(s, 0, strlen(s));
		free(s);
	}
}

static void token_clear(struct token *t)
{
	if (t->password)
		log_redact_remove(t->password);
	wipe_free(t->password);
	wipe_free(t->auth_json);
	wipe_free(t->config_json);
	free(t->username);
	free(t->proxy_endpoint);
	free(t->registry_host);
	t->password = t->auth_json = t->config_json = t->username = NULL;
	t->proxy_endpoint = t->registry_host = NULL;
	t->valid = false;
}

static void on_later(struct ev_loop *loop, ev_timer *w, int revents);

static struct token *token_find(struct ecr *e, const char *rid, bool create)
{
	for (struct token *t = e->tokens; t; t = t->next)
		if (strcmp(t->registry_id, rid) == 0)
			return t;
	if (!create)
		return NULL;
	struct token *t = calloc(1, sizeof *t);
	if (!t)
		return NULL;
	t->e = e;
	snprintf(t->registry_id, sizeof t->registry_id, "%s", rid);
	ev_timer_init(&t->later, on_later, 0.0, 0.0);
	t->later.data = t;
	t->next = e->tokens;
	e->tokens = t;
	return t;
}

/* Answers every waiter: with the token when usable, else with error. */
static void answer_waiters(struct token *t, bool stale, const char *error)
{
	struct waiter *w = t->waiters;
	t->waiters = NULL;
	struct ecr_auth a = {
		.registry_id = t->registry_id,
		.username = t->username,
		.password = t->password,
		.proxy_endpoint = t->proxy_endpoint,
		.registry_host = t->registry_host,
		.auth_json = t->auth_json,
		.config_json = t->config_json,
		.expires_ms = t->expires_ms,
		.refresh_ms = t->refresh_ms,
		.stale = stale,
	};
	while (w) {
		struct waiter *next = w->next;
		w->cb(t->valid && !error ? &a : NULL, error, w->arg);
		free(w);
		w = next;
	}
}

static void start_fetch(struct ecr *e, struct token *t);

static void on_later(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	struct token *t = w->data;
	t->later_on = false;
	if (t->fetch)
		return; /* a fetch answers them */
	if (t->valid && clock_wall_ms() < t->refresh_ms) {
		answer_waiters(t, false, NULL);
		return;
	}
	start_fetch(t->e, t);
}

static void token_done(struct ecall *c, const struct awsjson_result *r)
{
	struct ecr *e = c->e;
	struct token *t = c->tok;
	t->fetch = NULL;
	call_free(c);
	char error[600] = "";
	const cJSON *arr = cJSON_GetObjectItemCaseSensitive(r->doc, "authorizationData");
	const cJSON *d = cJSON_IsArray(arr) ? cJSON_GetArrayItem(arr, 0) : NULL;
	if (r->status != AWSJSON_OK) {
		snprintf(error, sizeof error, "GetAuthorizationToken: %s%s%s",
			 r->code[0] ? r->code : "error", r->message[0] ? ": " : "", r->message);
	} else if (!cJSON_IsObject(d)) {
		snprintf(error, sizeof error, "GetAuthorizationToken: no authorizationData");
	} else {
		const char *tok = str_at(d, "authorizationToken");
		const char *proxy = str_at(d, "proxyEndpoint");
		int64_t expires = time_at(d, "expiresAt");
		int64_t now = clock_wall_ms();
		char *user = NULL, *pw = NULL, *aj = NULL, *cj = NULL;
		struct err err = {{0}};
		if (!tok || !proxy || (strncmp(proxy, "https://", 8) && strncmp(proxy, "http://", 7))) {
			snprintf(error, sizeof error, "GetAuthorizationToken: the answer lacks "
				 "authorizationToken or an http(s) proxyEndpoint");
		} else if (expires <= now) {
			snprintf(error, sizeof error, "GetAuthorizationToken: the token expires at %lld, "
				 "which is not in the future", (long long)expires);
		} else if (ecr_decode_token(tok, &user, &pw, &err) < 0) {
			snprintf(error, sizeof error, "GetAuthorizationToken: %s", err.msg);
		} else if (ecr_docker_auth(user, pw, proxy, &aj, &cj) < 0) {
			snprintf(error, sizeof error, "GetAuthorizationToken: out of memory");
			free(user);
			wipe_free(pw);
		} else {
			token_clear(t);
			t->username = user;
			t->password = pw;
			t->auth_json = aj;
			t->config_json = cj;
			t->proxy_endpoint = strdup(proxy);
			const char *h = strstr(proxy, "://") + 3;
			t->registry_host = strndup(h, strcspn(h, "/"));
			t->fetched_ms = now;
			t->expires_ms = expires;
			t->refresh_ms = ecr_refresh_at(now, expires);
			t->valid = t->proxy_endpoint && t->registry_host;
			log_redact_add(pw);
			if (!t->valid) {
				token_clear(t);
				snprintf(error, sizeof error, "GetAuthorizationToken: out of memory");
			} else {
				log_info("ecr.token", "registry=%s endpoint=%s expires_in_s=%lld "
					 "refresh_in_s=%lld", t->registry_id[0] ? t->registry_id : "default",
					 t->proxy_endpoint, (long long)((expires - now) / 1000),
					 (long long)((t->refresh_ms - now) / 1000));
			}
		}
	}
	if (!error[0]) {
		answer_waiters(t, false, NULL);
		return;
	}
	if (t->valid && t->expires_ms - clock_wall_ms() > ECR_USABLE_MARGIN_MS) {
		log_warn("ecr.token_refresh_failed", "registry=%s error=\"%s\": the current token is "
			 "used until it expires", t->registry_id[0] ? t->registry_id : "default", error);
		answer_waiters(t, true, NULL);
		return;
	}
	log_warn("ecr.token_failed", "registry=%s error=\"%s\"",
		 t->registry_id[0] ? t->registry_id : "default", error);
	(void)e;
	answer_waiters(t, false, error);
}

static void fetch_failed_now(struct ecr *e, struct token *t)
{
	(void)e;
	answer_waiters(t, false, "GetAuthorizationToken could not be started (out of memory)");
}

static void start_fetch(struct ecr *e, struct token *t)
{
	if (!e || t->fetch)
		return;
	cJSON *req = cJSON_CreateObject();
	if (req && t->registry_id[0]) {
		cJSON *ids = cJSON_AddArrayToObject(req, "registryIds");
		if (ids)
			cJSON_AddItemToArray(ids, cJSON_CreateString(t->registry_id));
	}
	struct ecall *c = call_start(e, OP_TOKEN, req, NULL, NULL);
	if (!c) {
		fetch_failed_now(e, t);
		return;
	}
	c->tok = t;
	t->fetch = c;
	e->fetches++;
}

uint64_t ecr_auth_get(struct ecr *e, const char *registry_id, ecr_auth_fn cb, void *arg)
{
	if (!e || !cb)
		return 0;
	if (!registry_id)
		registry_id = "";
	size_t n = strlen(registry_id);
	if (n != 0 && n != 12)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (registry_id[i] < '0' || registry_id[i] > '9')
			return 0;
	struct token *t = token_find(e, registry_id, true);
	struct waiter *w = t ? calloc(1, sizeof *w) : NULL;
	if (!w)
		return 0;
	w->id = e->next_id++;
	w->cb = cb;
	w->arg = arg;
	/* FIFO: append. */
	struct waiter **pp = &t->waiters;
	while (*pp)
		pp = &(*pp)->next;
	*pp = w;
	if (t->fetch)
		return w->id;
	if (t->valid && clock_wall_ms() < t->refresh_ms) {
		/* Cached: answered on the next loop turn, never from inside this call. */
		if (!t->later_on) {
			ev_timer_set(&t->later, 0.0, 0.0);
			ev_timer_start(e->loop, &t->later);
			t->later_on = true;
		}
		return w->id;
	}
	start_fetch(e, t);
	return w->id;
}

void ecr_auth_cancel(struct ecr *e, uint64_t id)
{
	if (!e || !id)
		return;
	for (struct token *t = e->tokens; t; t = t->next) {
		for (struct waiter **pp = &t->waiters; *pp; pp = &(*pp)->next) {
			if ((*pp)->id == id) {
				struct waiter *w = *pp;
				*pp = w->next;
				free(w);
				return;
			}
		}
	}
}

void ecr_auth_invalidate(struct ecr *e, const char *registry_id)
{
	struct token *t = e ? token_find(e, registry_id ? registry_id : "", false) : NULL;
	if (t && t->valid) {
		log_info("ecr.token_invalidated", "registry=%s",
			 t->registry_id[0] ? t->registry_id : "default");
		t->refresh_ms = 0; /* kept as a fallback, replaced by the next get */
	}
}

uint64_t ecr_auth_fetches(const struct ecr *e)
{
	return e ? e->fetches : 0;
}

/* ---- the client ---- */

struct ecr *ecr_new(struct ev_loop *loop, struct http_client *http,
		    struct aws_credentials_provider *creds, const struct ecr_opts *o, struct err *err)
{
	if (!o) {
		err_set(err, "ecr: options are required");
		return NULL;
	}
	struct ecr *e = calloc(1, sizeof *e);
	if (!e) {
		err_set(err, "ecr: out of memory");
		return NULL;
	}
	struct awsjson_opts jo = {
		.region = o->region,
		.service = ECR_SERVICE,
		.endpoint = o->endpoint,
		.default_endpoint = "https://api.ecr.%s.amazonaws.com",
		.target_prefix = ECR_TARGET_PREFIX,
		.content_type = ECR_CONTENT_TYPE,
		.ca_file = o->ca_file,
		.timeout_ms = o->timeout_ms,
		.retry_base_ms = o->retry_base_ms,
		.retry_cap_ms = o->retry_cap_ms,
		.max_attempts = o->max_attempts,
		.throttle_attempts = o->throttle_attempts,
	};
	e->j = awsjson_new(loop, http, creds, &jo, err);
	if (!e->j) {
		err_prefix(err, "ecr");
		free(e);
		return NULL;
	}
	e->loop = loop;
	e->next_id = 1;
	return e;
}

void ecr_free(struct ecr *e)
{
	if (!e)
		return;
	while (e->calls)
		call_free(e->calls);
	while (e->tokens) {
		struct token *t = e->tokens;
		e->tokens = t->next;
		if (t->later_on)
			ev_timer_stop(e->loop, &t->later);
		while (t->waiters) {
			struct waiter *w = t->waiters;
			t->waiters = w->next;
			free(w);
		}
		token_clear(t);
		free(t);
	}
	awsjson_free(e->j);
	free(e);
}

void ecr_cancel(struct ecr *e, uint64_t id)
{
	if (!e || !id)
		return;
	for (struct ecall *c = e->calls; c; c = c->next) {
		if (c->id == id && c->op != OP_TOKEN) {
			call_free(c);
			return;
		}
	}
}

size_t ecr_pending(const struct ecr *e)
{
	return e ? e->pending : 0;
}
