#include "spec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

static bool is_lower(char c) { return c >= 'a' && c <= 'z'; }
static bool is_digit(char c) { return c >= '0' && c <= '9'; }
static bool is_alpha(char c) { return is_lower(c) || (c >= 'A' && c <= 'Z'); }
static bool is_hex_lower(char c) { return is_digit(c) || (c >= 'a' && c <= 'f'); }

bool spec_valid_name(const char *s)
{
	if (!s || !is_lower(s[0]))
		return false;
	size_t n = 1;
	for (; s[n]; n++) {
		if (!is_lower(s[n]) && !is_digit(s[n]) && s[n] != '-')
			return false;
	}
	return n <= SPEC_NAME_MAX;
}

bool spec_valid_id(const char *s)
{
	if (!s || !s[0])
		return false;
	size_t n = 0;
	for (; s[n]; n++) {
		char c = s[n];
		if (!is_alpha(c) && !is_digit(c) && c != '_' && c != '-')
			return false;
	}
	return n <= SPEC_ID_MAX;
}

/* RFC 1123 host name, lowercase (the parser lowercases first). */
bool spec_valid_host(const char *s)
{
	size_t n = s ? strlen(s) : 0;
	if (n == 0 || n > SPEC_HOST_MAX)
		return false;
	size_t label = 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (c == '.') {
			if (label == 0 || s[i - 1] == '-')
				return false;
			label = 0;
			continue;
		}
		if (!is_lower(c) && !is_digit(c) && c != '-')
			return false;
		if (c == '-' && label == 0)
			return false;
		if (++label > 63)
			return false;
	}
	return label > 0 && s[n - 1] != '-';
}

/* A path component of an image name: [a-z0-9]+ joined by '.', '_', "__" or '-'+. */
static bool valid_path_component(const char *s, size_t n)
{
	size_t i = 0;
	for (;;) {
		size_t run = 0;
		while (i < n && (is_lower(s[i]) || is_digit(s[i])))
			i++, run++;
		if (run == 0)
			return false;
		if (i == n)
			return true;
		if (s[i] == '.') {
			i++;
		} else if (s[i] == '_') {
			i += (i + 1 < n && s[i + 1] == '_') ? 2 : 1;
		} else if (s[i] == '-') {
			while (i < n && s[i] == '-')
				i++;
		} else {
			return false;
		}
	}
}

/* A registry host: DNS-ish labels ([A-Za-z0-9-]) joined by dots, optional :port. */
static bool valid_domain(const char *s, size_t n)
{
	size_t host_end = n;
	const char *colon = memchr(s, ':', n);
	if (colon) {
		host_end = (size_t)(colon - s);
		size_t pn = n - host_end - 1;
		if (pn == 0 || pn > 5)
			return false;
		long port = 0;
		for (size_t i = host_end + 1; i < n; i++) {
			if (!is_digit(s[i]))
				return false;
			port = port * 10 + (s[i] - '0');
		}
		if (port < 1 || port > 65535)
			return false;
	}
	if (host_end == 0)
		return false;
	size_t label = 0;
	for (size_t i = 0; i < host_end; i++) {
		char c = s[i];
		if (c == '.') {
			if (label == 0 || s[i - 1] == '-')
				return false;
			label = 0;
		} else if (is_alpha(c) || is_digit(c) || (c == '-' && label > 0)) {
			label++;
		} else {
			return false;
		}
	}
	return label > 0 && s[host_end - 1] != '-';
}

bool spec_image_has_digest(const char *s)
{
	return s && strstr(s, "@sha256:") != NULL;
}

bool spec_valid_image(const char *s, const char **why)
{
	const char *dummy;
	if (!why)
		why = &dummy;
	size_t n = s ? strlen(s) : 0;
	if (n == 0)
		return *why = "empty", false;
	if (n > SPEC_IMAGE_MAX)
		return *why = "longer than 512 bytes", false;
	size_t name_end = n;
	const char *at = strchr(s, '@');
	if (at) {
		name_end = (size_t)(at - s);
		const char *d = at + 1;
		if (strncmp(d, "sha256:", 7) != 0)
			return *why = "digest is not sha256:<64 hex>", false;
		d += 7;
		size_t dn = strlen(d);
		if (dn != 64)
			return *why = "digest is not sha256:<64 hex>", false;
		for (size_t i = 0; i < dn; i++) {
			if (!is_hex_lower(d[i]))
				return *why = "digest is not sha256:<64 hex>", false;
		}
	}
	/* A tag follows the last ':' that comes after the last '/'. */
	const char *last_slash = NULL;
	for (size_t i = 0; i < name_end; i++) {
		if (s[i] == '/')
			last_slash = s + i;
	}
	size_t path_end = name_end;
	const char *colon = memchr(last_slash ? last_slash : s, ':',
				   name_end - (size_t)((last_slash ? last_slash : s) - s));
	if (colon) {
		path_end = (size_t)(colon - s);
		const char *t = colon + 1;
		size_t tn = name_end - path_end - 1;
		if (tn == 0 || tn > 128)
			return *why = "tag must be 1-128 characters", false;
		if (!(is_alpha(t[0]) || is_digit(t[0]) || t[0] == '_'))
			return *why = "tag must start with a letter, digit or '_'", false;
		for (size_t i = 1; i < tn; i++) {
			char c = t[i];
			if (!(is_alpha(c) || is_digit(c) || c == '_' || c == '.' || c == '-'))
				return *why = "tag holds a character other than [A-Za-z0-9_.-]", false;
		}
	}
	if (path_end == 0)
		return *why = "no repository name", false;
	if (path_end > 255)
		return *why = "repository name longer than 255 bytes", false;
	/* The first component is a registry when it has '.' or ':' or is localhost. */
	size_t start = 0;
	const char *slash = memchr(s, '/', path_end);
	if (slash) {
		size_t fn = (size_t)(slash - s);
		bool domain = memchr(s, '.', fn) || memchr(s, ':', fn) ||
			      (fn == 9 && memcmp(s, "localhost", 9) == 0);
		if (domain) {
			if (!valid_domain(s, fn))
				return *why = "bad registry host", false;
			start = fn + 1;
		}
	}
	while (start <= path_end) {
		const char *p = s + start;
		const char *e = memchr(p, '/', path_end - start);
		size_t cn = e ? (size_t)(e - p) : path_end - start;
		if (!valid_path_component(p, cn))
			return *why = "repository path must be lowercase [a-z0-9] joined by . _ __ or -",
			       false;
		start += cn + 1;
		if (!e)
			break;
	}
	return true;
}

const char *spec_health_type_name(enum spec_health_type t)
{
	switch (t) {
	case SPEC_HEALTH_HTTP: return "http";
	case SPEC_HEALTH_TCP: return "tcp";
	case SPEC_HEALTH_DOCKER: return "docker";
	case SPEC_HEALTH_RUNNING: return "running";
	}
	return "?";
}

/* ---- freeing ---- */

static void free_strv(char **v)
{
	if (!v)
		return;
	for (char **p = v; *p; p++)
		free(*p);
	free(v);
}

static void free_service(struct spec_service *s)
{
	free(s->image);
	free_strv(s->command);
	free_strv(s->env);
	for (size_t i = 0; i < s->proxy.host_count; i++)
		free(s->proxy.hosts[i]);
	free(s->proxy.hosts);
	free(s->health.path);
}

void spec_release_free(struct spec_release *r)
{
	if (!r)
		return;
	for (size_t i = 0; i < r->service_count; i++)
		free_service(&r->services[i]);
	free(r->services);
	free(r);
}

void spec_job_clear(struct spec_job *job)
{
	spec_release_free(job->release);
	job->release = NULL;
}

/* ---- parsing ---- */

static char *dup_or_fail(const char *s, struct err *err)
{
	char *d = strdup(s);
	if (!d)
		err_set(err, "out of memory");
	return d;
}

static int get_name(const cJSON *o, const char *path, const char *key, char *out,
		    struct err *err)
{
	const char *v;
	if (json_get_string(o, path, key, SPEC_NAME_MAX, &v, err) < 0)
		return -1;
	if (!spec_valid_name(v)) {
		char where[JSON_PATH_MAX];
		return err_set(err, "%s: \"%s\" is not a valid name ([a-z][a-z0-9-]{0,39})",
			       json_path_key(where, sizeof where, path, key), v);
	}
	snprintf(out, SPEC_NAME_MAX + 1, "%s", v);
	return 0;
}

static int check_id(const char *v, const char *path, const char *key, struct err *err)
{
	if (spec_valid_id(v))
		return 0;
	char where[JSON_PATH_MAX];
	return err_set(err, "%s: not a valid id (1-64 of [A-Za-z0-9_-])",
		       json_path_key(where, sizeof where, path, key));
}

static int get_id(const cJSON *o, const char *path, const char *key, char *out, struct err *err)
{
	const char *v;
	if (json_get_string(o, path, key, SPEC_ID_MAX, &v, err) < 0 ||
	    check_id(v, path, key, err) < 0)
		return -1;
	snprintf(out, SPEC_ID_MAX + 1, "%s", v);
	return 0;
}

static const char *const health_keys[] = {"type", "path", "interval_ms", "timeout_ms",
					  "grace_ms", NULL};

static int parse_health(const cJSON *o, const char *path, struct spec_health *h,
			struct err *err)
{
	const char *type;
	if (json_check_keys(o, health_keys, path, err) < 0 ||
	    json_get_string(o, path, "type", 16, &type, err) < 0)
		return -1;
	if (strcmp(type, "http") == 0)
		h->type = SPEC_HEALTH_HTTP;
	else if (strcmp(type, "tcp") == 0)
		h->type = SPEC_HEALTH_TCP;
	else if (strcmp(type, "docker") == 0)
		h->type = SPEC_HEALTH_DOCKER;
	else if (strcmp(type, "running") == 0)
		h->type = SPEC_HEALTH_RUNNING;
	else
		return err_set(err, "%s.type: expected http, tcp, docker or running, got \"%s\"",
			       path, type);
	char where[JSON_PATH_MAX];
	json_path_key(where, sizeof where, path, "path");
	const char *p = NULL;
	if (h->type == SPEC_HEALTH_HTTP) {
		if (json_get_string(o, path, "path", SPEC_PATH_MAX, &p, err) < 0)
			return -1;
		if (p[0] != '/')
			return err_set(err, "%s: must start with '/'", where);
		for (const unsigned char *c = (const unsigned char *)p; *c; c++) {
			if (*c <= 0x20 || *c >= 0x7f)
				return err_set(err, "%s: holds a space, control or non-ASCII byte",
					       where);
		}
		if (!(h->path = dup_or_fail(p, err)))
			return -1;
	} else {
		const cJSON *pv = cJSON_GetObjectItemCaseSensitive(o, "path");
		if (pv && !cJSON_IsNull(pv))
			return err_set(err, "%s: only health type http takes a path", where);
	}
	if (json_get_int_opt(o, path, "interval_ms", 10, 600000, 1000, &h->interval_ms, err) < 0 ||
	    json_get_int_opt(o, path, "timeout_ms", 10, 600000, 2000, &h->timeout_ms, err) < 0 ||
	    json_get_int_opt(o, path, "grace_ms", 0, 3600000, 30000, &h->grace_ms, err) < 0)
		return -1;
	return 0;
}

static const char *const proxy_keys[] = {"listen", "hosts", "protocol", NULL};

static int parse_proxy(const cJSON *o, const char *path, struct spec_proxy *px,
		       struct err *err)
{
	int64_t listen;
	const char *proto;
	const cJSON *hosts;
	size_t n;
	if (json_check_keys(o, proxy_keys, path, err) < 0 ||
	    json_get_int(o, path, "listen", 1, 65535, &listen, err) < 0 ||
	    json_get_string_opt(o, path, "protocol", 8, "http", &proto, err) < 0 ||
	    json_get_array_opt(o, path, "hosts", SPEC_HOSTS_MAX, &hosts, &n, err) < 0)
		return -1;
	px->listen = (int)listen;
	if (strcmp(proto, "http") == 0)
		px->protocol = SPEC_PROTO_HTTP;
	else if (strcmp(proto, "tcp") == 0)
		px->protocol = SPEC_PROTO_TCP;
	else
		return err_set(err, "%s.protocol: expected http or tcp, got \"%s\"", path, proto);
	if (n && px->protocol == SPEC_PROTO_TCP)
		return err_set(err, "%s.hosts: a tcp route takes no hosts", path);
	if (!n)
		return 0;
	if (!(px->hosts = calloc(n, sizeof *px->hosts)))
		return err_set(err, "out of memory");
	char where[JSON_PATH_MAX], hpath[JSON_PATH_MAX];
	json_path_key(hpath, sizeof hpath, path, "hosts");
	size_t i = 0;
	for (const cJSON *it = hosts->child; it; it = it->next, i++) {
		const char *h;
		json_path_index(where, sizeof where, hpath, i);
		if (json_get_string(it, where, NULL, SPEC_HOST_MAX, &h, err) < 0)
			return -1;
		char *low = dup_or_fail(h, err);
		if (!low)
			return -1;
		for (char *c = low; *c; c++) {
			if (*c >= 'A' && *c <= 'Z')
				*c = (char)(*c - 'A' + 'a');
		}
		px->hosts[px->host_count++] = low;
		if (!spec_valid_host(low))
			return err_set(err, "%s: \"%s\" is not a valid host name", where, low);
		for (size_t j = 0; j + 1 < px->host_count; j++) {
			if (strcmp(px->hosts[j], low) == 0)
				return err_set(err, "%s: host \"%s\" listed twice", where, low);
		}
	}
	return 0;
}

static int cmp_env_name(const void *a, const void *b)
{
	const char *x = *(const char *const *)a, *y = *(const char *const *)b;
	for (;; x++, y++) {
		char cx = *x == '=' ? '\0' : *x, cy = *y == '=' ? '\0' : *y;
		if (cx != cy)
			return (unsigned char)cx < (unsigned char)cy ? -1 : 1;
		if (!cx)
			return 0;
	}
}

static bool valid_env_name(const char *s)
{
	if (!(is_alpha(s[0]) || s[0] == '_'))
		return false;
	for (size_t i = 1; s[i]; i++) {
		if (!(is_alpha(s[i]) || is_digit(s[i]) || s[i] == '_'))
			return false;
	}
	return true;
}

static int parse_env(const cJSON *o, const char *path, struct spec_service *s, struct err *err)
{
	if (!cJSON_IsObject(o))
		return err_set(err, "%s: expected object, got %s", path,
			       cJSON_IsArray(o) ? "array" : cJSON_IsString(o) ? "string" : "value");
	/* Size first, so a huge environment costs one scan and no copies. */
	size_t n = 0, bytes = 0;
	for (const cJSON *it = o->child; it; it = it->next) {
		if (!cJSON_IsString(it) || !it->valuestring) {
			char shown[72];
			snprintf(shown, sizeof shown, "%.64s", it->string ? it->string : "");
			return err_set(err, "%s.%s: expected string value", path, shown);
		}
		n++;
		bytes += strlen(it->string ? it->string : "") + 1 + strlen(it->valuestring);
		if (bytes > SPEC_ENV_MAX)
			return err_set(err, "%s: more than %zu bytes (NAME=value summed)", path,
				       SPEC_ENV_MAX);
	}
	if (!(s->env = calloc(n + 1, sizeof *s->env)))
		return err_set(err, "out of memory");
	for (const cJSON *it = o->child; it; it = it->next) {
		const char *name = it->string ? it->string : "";
		if (!valid_env_name(name)) {
			char shown[72];
			snprintf(shown, sizeof shown, "%.64s", name);
			for (char *c = shown; *c; c++) {
				if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f)
					*c = '?';
			}
			return err_set(err, "%s: \"%s\" is not a valid variable name "
				       "([A-Za-z_][A-Za-z0-9_]*)", path, shown);
		}
		size_t nl = strlen(name), vl = strlen(it->valuestring);
		char *kv = malloc(nl + vl + 2);
		if (!kv)
			return err_set(err, "out of memory");
		memcpy(kv, name, nl);
		kv[nl] = '=';
		memcpy(kv + nl + 1, it->valuestring, vl + 1);
		s->env[s->env_count++] = kv;
	}
	s->env_bytes = bytes;
	if (n > 1) {
		/* Duplicates: sort a copy of the pointers (O(n log n) for big environments). */
		char **sorted = malloc(n * sizeof *sorted);
		if (!sorted)
			return err_set(err, "out of memory");
		memcpy(sorted, s->env, n * sizeof *sorted);
		qsort(sorted, n, sizeof *sorted, cmp_env_name);
		for (size_t i = 1; i < n; i++) {
			if (cmp_env_name(&sorted[i - 1], &sorted[i]) == 0) {
				size_t l = strcspn(sorted[i], "=");
				err_set(err, "%s: variable \"%.*s\" given twice", path,
					(int)(l > 64 ? 64 : l), sorted[i]);
				free(sorted);
				return -1;
			}
		}
		free(sorted);
	}
	return 0;
}

static int parse_command(const cJSON *arr, size_t n, const char *path, struct spec_service *s,
			 struct err *err)
{
	if (n == 0)
		return err_set(err, "%s: empty (use null for the image's default command)", path);
	if (!(s->command = calloc(n + 1, sizeof *s->command)))
		return err_set(err, "out of memory");
	size_t i = 0;
	char where[JSON_PATH_MAX];
	for (const cJSON *it = arr->child; it; it = it->next, i++) {
		const char *a;
		json_path_index(where, sizeof where, path, i);
		if (json_get_string(it, where, NULL, SPEC_ARG_MAX, &a, err) < 0)
			return -1;
		if (!(s->command[i] = dup_or_fail(a, err)))
			return -1;
	}
	return 0;
}

static const char *const service_keys[] = {
	"name", "image", "command", "environment", "port", "proxy", "health", "count",
	"memory_mb", "stop_grace_ms", "metadata_access", NULL};

static int parse_service(const cJSON *o, const char *path, struct spec_service *s,
			 struct err *err)
{
	const char *image, *why = "";
	const cJSON *cmd, *env, *px, *health;
	size_t ncmd;
	int64_t port, count;
	char where[JSON_PATH_MAX];
	if (json_check_keys(o, service_keys, path, err) < 0 ||
	    get_name(o, path, "name", s->name, err) < 0 ||
	    json_get_string(o, path, "image", SPEC_IMAGE_MAX, &image, err) < 0)
		return -1;
	if (!spec_valid_image(image, &why))
		return err_set(err, "%s: not a valid image reference (%s)",
			       json_path_key(where, sizeof where, path, "image"), why);
	if (!(s->image = dup_or_fail(image, err)))
		return -1;
	if (json_get_array_opt(o, path, "command", SPEC_COMMAND_MAX, &cmd, &ncmd, err) < 0)
		return -1;
	if (cmd && parse_command(cmd, ncmd, json_path_key(where, sizeof where, path, "command"),
				 s, err) < 0)
		return -1;
	env = cJSON_GetObjectItemCaseSensitive(o, "environment");
	if (env && !cJSON_IsNull(env)) {
		if (parse_env(env, json_path_key(where, sizeof where, path, "environment"), s,
			      err) < 0)
			return -1;
	} else if (!(s->env = calloc(1, sizeof *s->env))) {
		return err_set(err, "out of memory");
	}
	if (json_get_int_opt(o, path, "port", 1, 65535, 0, &port, err) < 0)
		return -1;
	s->port = (int)port;
	if (json_get_object_opt(o, path, "proxy", &px, err) < 0)
		return -1;
	if (px) {
		if (parse_proxy(px, json_path_key(where, sizeof where, path, "proxy"), &s->proxy,
				err) < 0)
			return -1;
		s->has_proxy = true;
		if (!s->port)
			return err_set(err, "%s: a proxied service needs a port", where);
	}
	if (json_get_object(o, path, "health", &health, err) < 0 ||
	    parse_health(health, json_path_key(where, sizeof where, path, "health"), &s->health,
			 err) < 0)
		return -1;
	if ((s->health.type == SPEC_HEALTH_HTTP || s->health.type == SPEC_HEALTH_TCP) && !s->port)
		return err_set(err, "%s.type: %s checks need a port", where,
			       spec_health_type_name(s->health.type));
	if (json_get_int(o, path, "count", 0, SPEC_COUNT_MAX, &count, err) < 0 ||
	    json_get_int_opt(o, path, "memory_mb", 0, 1048576, 0, &s->memory_mb, err) < 0 ||
	    json_get_int_opt(o, path, "stop_grace_ms", 0, 3600000, 10000, &s->stop_grace_ms,
			     err) < 0 ||
	    json_get_bool_opt(o, path, "metadata_access", false, &s->metadata_access, err) < 0)
		return -1;
	s->count = (int)count;
	if (s->memory_mb > 0 && s->memory_mb < 6)
		return err_set(err, "%s: expected 0 (no limit) or 6..1048576, got %lld",
			       json_path_key(where, sizeof where, path, "memory_mb"),
			       (long long)s->memory_mb);
	return 0;
}

/* Two routes of one release may share a port only as HTTP with disjoint host
 * lists, at most one of them a catch-all (the proxy's rules). */
static int check_routes(const struct spec_release *r, const char *path, struct err *err)
{
	for (size_t i = 0; i < r->service_count; i++) {
		const struct spec_service *a = &r->services[i];
		if (!a->has_proxy)
			continue;
		for (size_t j = i + 1; j < r->service_count; j++) {
			const struct spec_service *b = &r->services[j];
			if (!b->has_proxy || a->proxy.listen != b->proxy.listen)
				continue;
			bool clash = a->proxy.protocol == SPEC_PROTO_TCP ||
				     b->proxy.protocol == SPEC_PROTO_TCP ||
				     (a->proxy.host_count == 0 && b->proxy.host_count == 0);
			for (size_t x = 0; !clash && x < a->proxy.host_count; x++) {
				for (size_t y = 0; y < b->proxy.host_count; y++) {
					if (strcmp(a->proxy.hosts[x], b->proxy.hosts[y]) == 0)
						clash = true;
				}
			}
			if (clash)
				return err_set(err, "%s.services: %s and %s both claim port %d",
					       path, a->name, b->name, a->proxy.listen);
		}
	}
	return 0;
}

static const char *const release_keys[] = {"id", "app", "build", "created_ms", "services", NULL};

struct spec_release *spec_release_parse(const cJSON *json, const char *path, struct err *err)
{
	struct spec_release *r = calloc(1, sizeof *r);
	const cJSON *services;
	const char *build;
	size_t n;
	char where[JSON_PATH_MAX];
	if (!r) {
		err_set(err, "out of memory");
		return NULL;
	}
	if (!cJSON_IsObject(json)) {
		err_set(err, "%s: expected object", path);
		goto fail;
	}
	if (json_check_keys(json, release_keys, path, err) < 0 ||
	    get_id(json, path, "id", r->id, err) < 0 ||
	    get_name(json, path, "app", r->app, err) < 0 ||
	    json_get_string_opt(json, path, "build", SPEC_ID_MAX, "", &build, err) < 0 ||
	    json_get_int_opt(json, path, "created_ms", 0, JSON_INT_LIMIT, 0, &r->created_ms,
			     err) < 0 ||
	    json_get_array(json, path, "services", SPEC_SERVICES_MAX, &services, &n, err) < 0)
		goto fail;
	if (*build && check_id(build, path, "build", err) < 0)
		goto fail;
	snprintf(r->build, sizeof r->build, "%s", build);
	if (n == 0) {
		err_set(err, "%s.services: empty", path);
		goto fail;
	}
	if (!(r->services = calloc(n, sizeof *r->services))) {
		err_set(err, "out of memory");
		goto fail;
	}
	char spath[JSON_PATH_MAX];
	json_path_key(spath, sizeof spath, path, "services");
	for (const cJSON *it = services->child; it; it = it->next) {
		struct spec_service *s = &r->services[r->service_count++];
		json_path_index(where, sizeof where, spath, r->service_count - 1);
		if (!cJSON_IsObject(it)) {
			err_set(err, "%s: expected object", where);
			goto fail;
		}
		if (parse_service(it, where, s, err) < 0)
			goto fail;
		for (size_t j = 0; j + 1 < r->service_count; j++) {
			if (strcmp(r->services[j].name, s->name) == 0) {
				err_set(err, "%s.name: service \"%s\" listed twice", where,
					s->name);
				goto fail;
			}
		}
	}
	if (check_routes(r, path, err) < 0)
		goto fail;
	return r;
fail:
	spec_release_free(r);
	return NULL;
}

static const char *const job_keys[] = {"id", "type", "app", "generation", "lease_id",
				       "lease_expires_in_s", "attempt", "release", NULL};

int spec_job_parse(const cJSON *json, struct spec_job *job, struct err *err)
{
	memset(job, 0, sizeof *job);
	job->generation = -1;
	const char *type;
	const cJSON *rel;
	if (!cJSON_IsObject(json))
		return err_set(err, "job: expected object");
	/* id and lease first: with them the job can be acknowledged as failed. */
	if (get_id(json, "job", "id", job->id, err) < 0 ||
	    get_id(json, "job", "lease_id", job->lease_id, err) < 0)
		return -1;
	job->ackable = true;
	/* Best effort, for the ack and the logs, before the strict checks. */
	const cJSON *g = cJSON_GetObjectItemCaseSensitive(json, "generation");
	if (cJSON_IsNumber(g) && g->valuedouble >= 1 && g->valuedouble <= (double)JSON_INT_LIMIT)
		job->generation = (int64_t)g->valuedouble;
	const cJSON *a = cJSON_GetObjectItemCaseSensitive(json, "app");
	if (cJSON_IsString(a) && spec_valid_name(a->valuestring))
		snprintf(job->app, sizeof job->app, "%s", a->valuestring);
	if (json_check_keys(json, job_keys, "job", err) < 0 ||
	    json_get_string(json, "job", "type", 16, &type, err) < 0)
		return -1;
	if (strcmp(type, "deploy") == 0)
		job->type = SPEC_JOB_DEPLOY;
	else if (strcmp(type, "remove") == 0)
		job->type = SPEC_JOB_REMOVE;
	else
		return err_set(err, "job.type: expected deploy or remove, got \"%s\"", type);
	if (get_name(json, "job", "app", job->app, err) < 0 ||
	    json_get_int(json, "job", "generation", 1, JSON_INT_LIMIT, &job->generation, err) < 0 ||
	    json_get_int(json, "job", "lease_expires_in_s", 1, 86400, &job->lease_expires_in_s,
			 err) < 0 ||
	    json_get_int(json, "job", "attempt", 1, 1000, &job->attempt, err) < 0)
		return -1;
	rel = cJSON_GetObjectItemCaseSensitive(json, "release");
	if (job->type == SPEC_JOB_REMOVE) {
		if (rel && !cJSON_IsNull(rel))
			return err_set(err, "job.release: a remove job carries no release");
		return 0;
	}
	if (!rel || cJSON_IsNull(rel))
		return err_set(err, "job.release: missing");
	struct spec_release *r = spec_release_parse(rel, "release", err);
	if (!r)
		return -1;
	if (strcmp(r->app, job->app) != 0) {
		err_set(err, "release.app: \"%s\" differs from the job's app \"%s\"", r->app,
			job->app);
		spec_release_free(r);
		return -1;
	}
	job->release = r;
	return 0;
}
