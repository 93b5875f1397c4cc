#include "aws_credentials.h"

#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "buf.h"
#include "clock.h"
#include "http_client.h"
#include "imds.h"
#include "json.h"
#include "log.h"
/* After a refresh that failed or left credentials that are not fresh, wait this
 * long before trying again while the old ones are still usable. */
#define RETRY_THROTTLE_MS 30000

/* ---- secrets in the log redaction list, counted ---- */

/* log_redact_add keeps one entry per string; two live sets can share a string
 * (the same environment read twice), so removal waits for the last holder. */
struct held_secret {
	char *s;
	int count;
	struct held_secret *next;
};

static pthread_mutex_t held_lock = PTHREAD_MUTEX_INITIALIZER;
static struct held_secret *held;

static void secret_hold(const char *s)
{
	if (!s || strlen(s) < 4)
		return;
	pthread_mutex_lock(&held_lock);
	struct held_secret *h;
	for (h = held; h; h = h->next) {
		if (strcmp(h->s, s) == 0) {
			h->count++;
			goto out;
		}
	}
	h = calloc(1, sizeof *h);
	if (h && (h->s = strdup(s)) != NULL) {
		h->count = 1;
		h->next = held;
		held = h;
	} else {
		free(h);
	}
	log_redact_add(s);
out:
	pthread_mutex_unlock(&held_lock);
}

static void secret_release(const char *s)
{
	if (!s || strlen(s) < 4)
		return;
	pthread_mutex_lock(&held_lock);
	for (struct held_secret **pp = &held; *pp; pp = &(*pp)->next) {
		struct held_secret *h = *pp;
		if (strcmp(h->s, s) != 0)
			continue;
		if (--h->count == 0) {
			*pp = h->next;
			log_redact_remove(s);
			explicit_bzero(h->s, strlen(h->s));
			free(h->s);
			free(h);
		}
		break;
	}
	pthread_mutex_unlock(&held_lock);
}

static void wipe_free(char *s)
{
	if (s) {
		explicit_bzero(s, strlen(s));
		free(s);
	}
}

/* ---- credential sets ---- */

struct creds_box {
	struct aws_credentials pub; /* first: a pub pointer is a box pointer */
	atomic_int refs;
	size_t storage_len;
	char storage[];
};

static int value_ok(const char *s)
{
	if (!s || !*s)
		return 0;
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p <= 0x20 || *p == 0x7f)
			return 0;
	}
	return 1;
}

const struct aws_credentials *aws_credentials_make(const char *access_key_id,
						   const char *secret_access_key,
						   const char *session_token, int64_t expiration_ms,
						   const char *source)
{
	if (!value_ok(access_key_id) || strchr(access_key_id, '/') ||
	    strchr(access_key_id, ',') || !value_ok(secret_access_key))
		return NULL;
	if (session_token && !*session_token)
		session_token = NULL;
	if (session_token && !value_ok(session_token))
		return NULL;
	if (!source)
		source = "unknown";
	size_t la = strlen(access_key_id) + 1, ls = strlen(secret_access_key) + 1;
	size_t lt = session_token ? strlen(session_token) + 1 : 0, lsrc = strlen(source) + 1;
	struct creds_box *b = malloc(sizeof *b + la + ls + lt + lsrc);
	if (!b)
		return NULL;
	char *p = b->storage;
	b->storage_len = la + ls + lt + lsrc;
	memcpy(p, access_key_id, la);
	b->pub.access_key_id = p;
	p += la;
	memcpy(p, secret_access_key, ls);
	b->pub.secret_access_key = p;
	p += ls;
	b->pub.session_token = NULL;
	if (session_token) {
		memcpy(p, session_token, lt);
		b->pub.session_token = p;
		p += lt;
	}
	memcpy(p, source, lsrc);
	b->pub.source = p;
	b->pub.expiration_ms = expiration_ms;
	atomic_init(&b->refs, 1);
	secret_hold(b->pub.access_key_id);
	secret_hold(b->pub.secret_access_key);
	secret_hold(b->pub.session_token);
	return &b->pub;
}

const struct aws_credentials *aws_credentials_ref(const struct aws_credentials *c)
{
	if (c)
		atomic_fetch_add(&((struct creds_box *)(void *)c)->refs, 1);
	return c;
}

void aws_credentials_unref(const struct aws_credentials *c)
{
	if (!c)
		return;
	struct creds_box *b = (struct creds_box *)(void *)c;
	if (atomic_fetch_sub(&b->refs, 1) != 1)
		return;
	secret_release(b->pub.access_key_id);
	secret_release(b->pub.secret_access_key);
	secret_release(b->pub.session_token);
	explicit_bzero(b->storage, b->storage_len);
	free(b);
}

enum aws_credentials_freshness aws_credentials_freshness_at(const struct aws_credentials *c,
							    int64_t now_ms)
{
	if (!c->expiration_ms)
		return AWS_CREDENTIALS_FRESH;
	int64_t left = c->expiration_ms - now_ms;
	if (left <= 0)
		return AWS_CREDENTIALS_EXPIRED;
	if (left <= AWS_CREDENTIALS_REFRESH_NOW_MS)
		return AWS_CREDENTIALS_REFRESH_NOW;
	if (left <= AWS_CREDENTIALS_REFRESH_SOON_MS)
		return AWS_CREDENTIALS_REFRESH_SOON;
	return AWS_CREDENTIALS_FRESH;
}

/* ---- environment ---- */

static const char *env_nonempty(const char *name)
{
	const char *v = getenv(name);
	return v && *v ? v : NULL;
}

int aws_credentials_from_env(const struct aws_credentials **out, struct err *err)
{
	const char *id = env_nonempty("AWS_ACCESS_KEY_ID");
	const char *secret = env_nonempty("AWS_SECRET_ACCESS_KEY");
	const char *token = env_nonempty("AWS_SESSION_TOKEN");
	if (!id && !secret) {
		if (token)
			return err_set(err, "environment: AWS_SESSION_TOKEN is set without "
					    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY");
		return 0;
	}
	if (!id)
		return err_set(err, "environment: AWS_SECRET_ACCESS_KEY is set but "
				    "AWS_ACCESS_KEY_ID is not");
	if (!secret)
		return err_set(err, "environment: AWS_ACCESS_KEY_ID is set but "
				    "AWS_SECRET_ACCESS_KEY is not");
	const struct aws_credentials *c = aws_credentials_make(id, secret, token, 0, "environment");
	if (!c)
		return err_set(err, "environment: AWS credentials contain spaces or control "
				    "characters (or out of memory)");
	*out = c;
	return 1;
}

/* ---- the shared credentials file ---- */

struct ini_name {
	const char *s; /* into the text, not NUL-terminated */
	size_t len;
	int line;
	size_t section; /* for keys: index of their section */
};

struct ini_names {
	struct ini_name *v;
	size_t n, cap;
};

static int names_push(struct ini_names *a, const char *s, size_t len, int line, size_t section)
{
	if (a->n == a->cap) {
		size_t cap = a->cap ? a->cap * 2 : 16;
		struct ini_name *v = realloc(a->v, cap * sizeof *v);
		if (!v)
			return -1;
		a->v = v;
		a->cap = cap;
	}
	a->v[a->n++] = (struct ini_name){s, len, line, section};
	return 0;
}

static int name_cmp(const void *x, const void *y)
{
	const struct ini_name *a = x, *b = y;
	if (a->section != b->section)
		return a->section < b->section ? -1 : 1;
	size_t n = a->len < b->len ? a->len : b->len;
	int c = strncasecmp(a->s, b->s, n);
	if (c)
		return c;
	if (a->len != b->len)
		return a->len < b->len ? -1 : 1;
	return a->line - b->line;
}

/* Sorted, a duplicate sits next to its twin; returns the later line or 0. */
static int find_duplicate(struct ini_names *a, const struct ini_name **first)
{
	if (a->n < 2)
		return 0;
	qsort(a->v, a->n, sizeof *a->v, name_cmp);
	int worst = 0;
	for (size_t i = 1; i < a->n; i++) {
		const struct ini_name *x = &a->v[i - 1], *y = &a->v[i];
		if (x->section == y->section && x->len == y->len &&
		    strncasecmp(x->s, y->s, x->len) == 0 && (worst == 0 || y->line < worst)) {
			worst = y->line;
			*first = x;
		}
	}
	return worst;
}

static int is_key_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '_' || c == '-' || c == '.';
}

static void trim(const char **s, const char **e)
{
	while (*s < *e && (**s == ' ' || **s == '\t'))
		(*s)++;
	while (*e > *s && ((*e)[-1] == ' ' || (*e)[-1] == '\t'))
		(*e)--;
}

static int key_is(const char *k, size_t len, const char *name)
{
	return strlen(name) == len && strncasecmp(k, name, len) == 0;
}

int aws_credentials_parse_file(const char *text, size_t len, const char *profile,
			       int profile_explicit, const struct aws_credentials **out,
			       struct err *err)
{
	if (len > AWS_CREDENTIALS_FILE_MAX)
		return err_set(err, "larger than %d bytes", AWS_CREDENTIALS_FILE_MAX);
	if (!profile || !*profile)
		profile = "default";
	struct ini_names sections = {0}, keys = {0};
	const char *id = NULL, *secret = NULL, *token = NULL;
	size_t id_len = 0, secret_len = 0, token_len = 0;
	int id_line = 0, secret_line = 0, found_line = 0;
	int in_target = 0, rc = -1;
	int line = 0;
	const char *p = text, *end = text + len;

	while (p < end) {
		line++;
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *le = nl ? nl : end;
		const char *s = p, *e = le;
		p = nl ? nl + 1 : end;
		if (memchr(s, '\0', (size_t)(e - s))) {
			err_set(err, "line %d: NUL byte", line);
			goto done;
		}
		if (e > s && e[-1] == '\r')
			e--;
		trim(&s, &e);
		if (s == e || *s == '#' || *s == ';')
			continue;
		if (*s == '[') {
			if (e[-1] != ']') {
				err_set(err, "line %d: section header must end with ']'", line);
				goto done;
			}
			const char *ns = s + 1, *ne = e - 1;
			trim(&ns, &ne);
			if (ns == ne || memchr(ns, '[', (size_t)(ne - ns)) ||
			    memchr(ns, ']', (size_t)(ne - ns))) {
				err_set(err, "line %d: bad section name", line);
				goto done;
			}
			if (names_push(&sections, ns, (size_t)(ne - ns), line, 0) < 0) {
				err_set(err, "out of memory");
				goto done;
			}
			in_target = strlen(profile) == (size_t)(ne - ns) &&
				    memcmp(profile, ns, (size_t)(ne - ns)) == 0;
			if (in_target)
				found_line = line;
			continue;
		}
		const char *eq = memchr(s, '=', (size_t)(e - s));
		if (!eq) {
			err_set(err, "line %d: expected '[profile]' or 'key = value'", line);
			goto done;
		}
		const char *ks = s, *ke = eq, *vs = eq + 1, *ve = e;
		trim(&ks, &ke);
		trim(&vs, &ve);
		if (ks == ke) {
			err_set(err, "line %d: missing key before '='", line);
			goto done;
		}
		for (const char *c = ks; c < ke; c++) {
			if (!is_key_char(*c)) {
				err_set(err, "line %d: bad key '%.*s'", line, (int)(ke - ks), ks);
				goto done;
			}
		}
		if (sections.n == 0) {
			err_set(err, "line %d: key outside a [profile] section", line);
			goto done;
		}
		if (names_push(&keys, ks, (size_t)(ke - ks), line, sections.n) < 0) {
			err_set(err, "out of memory");
			goto done;
		}
		if (!in_target)
			continue;
		size_t kl = (size_t)(ke - ks);
		if (key_is(ks, kl, "aws_access_key_id")) {
			id = vs;
			id_len = (size_t)(ve - vs);
			id_line = line;
		} else if (key_is(ks, kl, "aws_secret_access_key")) {
			secret = vs;
			secret_len = (size_t)(ve - vs);
			secret_line = line;
		} else if (key_is(ks, kl, "aws_session_token") ||
			   key_is(ks, kl, "aws_security_token")) {
			token = vs;
			token_len = (size_t)(ve - vs);
		}
	}

	const struct ini_name *twin = NULL;
	int dup = find_duplicate(&sections, &twin);
	if (dup) {
		err_set(err, "line %d: section [%.*s] already started on line %d", dup,
			(int)twin->len, twin->s, twin->line);
		goto done;
	}
	dup = find_duplicate(&keys, &twin);
	if (dup) {
		err_set(err, "line %d: key '%.*s' already set on line %d", dup, (int)twin->len,
			twin->s, twin->line);
		goto done;
	}
	if (!found_line) {
		if (profile_explicit)
			err_set(err, "profile '%s' not found", profile);
		else
			rc = 0;
		goto done;
	}
	if (!id_len && !secret_len) {
		if (profile_explicit)
			err_set(err, "line %d: profile '%s' has no aws_access_key_id and "
				     "aws_secret_access_key", found_line, profile);
		else
			rc = 0;
		goto done;
	}
	if (!id_len || !secret_len) {
		err_set(err, "line %d: profile '%s' has %s but no %s", id_len ? id_line : secret_line,
			profile, id_len ? "aws_access_key_id" : "aws_secret_access_key",
			id_len ? "aws_secret_access_key" : "aws_access_key_id");
		goto done;
	}
	char *sid = strndup(id, id_len), *ssec = strndup(secret, secret_len);
	char *stok = token_len ? strndup(token, token_len) : NULL;
	const struct aws_credentials *c = NULL;
	if (sid && ssec && (!token_len || stok))
		c = aws_credentials_make(sid, ssec, stok, 0, "shared-file");
	wipe_free(sid);
	wipe_free(ssec);
	wipe_free(stok);
	if (!c) {
		err_set(err, "line %d: profile '%s': keys contain spaces or control characters",
			id_line, profile);
		goto done;
	}
	*out = c;
	rc = 1;
done:
	free(sections.v);
	free(keys.v);
	return rc;
}

int aws_credentials_from_file(const char *path, const char *profile, int profile_explicit,
			      const struct aws_credentials **out, struct err *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT || errno == ENOTDIR) {
			if (profile_explicit)
				return err_set(err, "%s: profile '%s' requested but the file does "
						    "not exist", path, profile);
			return 0;
		}
		return err_set(err, "%s: %s", path, strerror(errno));
	}
	struct buf b;
	buf_init(&b, AWS_CREDENTIALS_FILE_MAX);
	char chunk[4096];
	int rc = 0;
	for (;;) {
		ssize_t n = read(fd, chunk, sizeof chunk);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			rc = err_set(err, "%s: %s", path, strerror(errno));
			break;
		}
		if (n == 0)
			break;
		if (buf_append(&b, chunk, (size_t)n) < 0) {
			rc = err_set(err, "%s: larger than %d bytes", path, AWS_CREDENTIALS_FILE_MAX);
			break;
		}
	}
	close(fd);
	explicit_bzero(chunk, sizeof chunk);
	if (rc == 0) {
		rc = aws_credentials_parse_file(b.data ? b.data : "", b.len, profile,
						profile_explicit, out, err);
		if (rc < 0)
			err_prefix(err, "%s", path);
	}
	if (b.data)
		explicit_bzero(b.data, b.len);
	buf_free(&b);
	return rc;
}

/* ---- the provider ---- */

struct waiter {
	aws_credentials_fn cb;
	void *arg;
	int cancelled;
	struct waiter *next;
};

struct aws_credentials_provider {
	struct ev_loop *loop;
	struct http_client *http;
	char *profile;
	int profile_explicit;
	char *file_path; /* NULL = no file to look at */
	struct imds *imds; /* NULL when that source is off */
	int use_env, use_file, use_imds;

	const struct aws_credentials *current;
	int invalidated;
	int64_t next_try_mono; /* throttle for refreshes while the old set is usable */

	int refreshing;
	char *role;
	char error[ERR_MSG_MAX]; /* why the last refresh failed */

	struct waiter *waiters, **waiters_tail;
	struct waiter *delivering; /* the batch being answered (cancel looks here too) */
	ev_timer deliver;
	int depth;          /* > 0 while callbacks run */
	int free_requested; /* aws_credentials_free from inside a callback */
};

static void destroy(struct aws_credentials_provider *p);
static void refresh_done(struct aws_credentials_provider *p, const struct aws_credentials *c,
			 const char *error);

static void schedule_deliver(struct aws_credentials_provider *p)
{
	if (!ev_is_active(&p->deliver)) {
		ev_timer_set(&p->deliver, 0.0, 0.0);
		ev_timer_start(p->loop, &p->deliver);
	}
}

/* The set callers may be handed right now without waiting, or NULL. */
static const struct aws_credentials *usable(struct aws_credentials_provider *p, int refreshing)
{
	if (!p->current || p->invalidated)
		return NULL;
	enum aws_credentials_freshness f = aws_credentials_freshness_at(p->current, clock_wall_ms());
	if (f == AWS_CREDENTIALS_FRESH || f == AWS_CREDENTIALS_REFRESH_SOON)
		return p->current;
	/* Under 5 minutes left: wait for a running refresh; with none running (it
	 * failed or is throttled) the old set is still better than nothing. */
	if (f == AWS_CREDENTIALS_REFRESH_NOW && !refreshing)
		return p->current;
	return NULL;
}

static void failure_message(struct aws_credentials_provider *p, char *out, size_t cap)
{
	if (p->current && p->invalidated) {
		snprintf(out, cap, "AWS credentials were rejected and getting new ones failed: %s",
			 p->error);
	} else if (p->current && !p->error[0]) {
		/* The refresh worked but brought nothing newer. */
		char when[25];
		clock_format_rfc3339(p->current->expiration_ms, when);
		snprintf(out, cap, "AWS credentials from %s expired at %s and it has no newer ones "
			 "(is this machine's clock right?)", p->current->source, when);
	} else if (p->current) {
		char when[25];
		clock_format_rfc3339(p->current->expiration_ms, when);
		snprintf(out, cap, "AWS credentials expired at %s and the refresh failed: %s", when,
			 p->error);
	} else {
		snprintf(out, cap, "no AWS credentials: %s", p->error);
	}
}

static void on_deliver(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	struct aws_credentials_provider *p = w->data;
	const struct aws_credentials *c = usable(p, p->refreshing);
	if (!c && p->refreshing)
		return; /* refresh_done schedules the answer */
	char msg[ERR_MSG_MAX + 128];
	if (!c)
		failure_message(p, msg, sizeof msg);

	struct waiter *batch = p->waiters;
	p->waiters = NULL;
	p->waiters_tail = &p->waiters;
	p->delivering = batch;
	aws_credentials_ref(c);
	p->depth++;
	for (struct waiter *x = batch; x; x = x->next) {
		if (!x->cancelled && !p->free_requested)
			x->cb(c, c ? NULL : msg, x->arg);
	}
	p->depth--;
	p->delivering = NULL;
	aws_credentials_unref(c);
	while (batch) {
		struct waiter *next = batch->next;
		free(batch);
		batch = next;
	}
	if (p->free_requested && p->depth == 0)
		destroy(p);
}

/* ---- IMDSv2 (common/imds: the token dance) ---- */

static void imds_fail(struct aws_credentials_provider *p, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void imds_fail(struct aws_credentials_provider *p, const char *fmt, ...)
{
	char msg[ERR_MSG_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	refresh_done(p, NULL, msg);
}

/* Why a step got no usable answer: IMDS's error ("session token: ...",
 * "connect: ...") or the status. */
static bool imds_step_failed(struct aws_credentials_provider *p, const char *step,
			     const struct imds_result *r)
{
	if (r->error && strncmp(r->error, "session token", 13) == 0)
		imds_fail(p, "IMDS: %s", r->error);
	else if (r->error)
		imds_fail(p, "IMDS: %s: %s", step, r->error);
	else if (r->status != 200)
		imds_fail(p, "IMDS: %s: HTTP %ld", step, r->status);
	else
		return false;
	return true;
}

static void on_imds_creds(const struct imds_result *r, void *arg)
{
	struct aws_credentials_provider *p = arg;
	char step[128];
	snprintf(step, sizeof step, "credentials of role '%s'", p->role);
	if (imds_step_failed(p, step, r))
		return;
	struct err e = {{0}};
	cJSON *doc = json_parse(r->body, r->body_len, IMDS_BODY_MAX, &e);
	if (!doc) {
		imds_fail(p, "IMDS: %s: %s", step, e.msg);
		return;
	}
	const char *code = NULL, *id = NULL, *secret = NULL, *token = NULL, *exp = NULL;
	int64_t exp_ms = 0;
	const struct aws_credentials *c = NULL;
	if (json_get_string_opt(doc, NULL, "Code", 256, "Success", &code, &e) < 0 ||
	    json_get_string(doc, NULL, "AccessKeyId", 1024, &id, &e) < 0 ||
	    json_get_string(doc, NULL, "SecretAccessKey", 1024, &secret, &e) < 0 ||
	    json_get_string(doc, NULL, "Token", 16384, &token, &e) < 0 ||
	    json_get_string(doc, NULL, "Expiration", 64, &exp, &e) < 0) {
		imds_fail(p, "IMDS: %s: %s", step, e.msg);
	} else if (strcmp(code, "Success") != 0) {
		imds_fail(p, "IMDS: %s: Code is '%s'", step, code);
	} else if (clock_parse_rfc3339(exp, &exp_ms) < 0) {
		imds_fail(p, "IMDS: %s: bad Expiration '%s'", step, exp);
	} else if (!(c = aws_credentials_make(id, secret, token, exp_ms, "imds"))) {
		imds_fail(p, "IMDS: %s: empty or malformed keys", step);
	} else {
		refresh_done(p, c, NULL);
		aws_credentials_unref(c);
	}
	/* The tree held the secrets too. */
	cJSON *node = cJSON_GetObjectItemCaseSensitive(doc, "SecretAccessKey");
	if (cJSON_IsString(node))
		explicit_bzero(node->valuestring, strlen(node->valuestring));
	node = cJSON_GetObjectItemCaseSensitive(doc, "Token");
	if (cJSON_IsString(node))
		explicit_bzero(node->valuestring, strlen(node->valuestring));
	cJSON_Delete(doc);
}

/* IAM role names: letters, digits and +=,.@_- (at most 64). */
static int role_ok(const char *s, size_t len)
{
	if (len == 0 || len > 64)
		return 0;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      strchr("+=,.@_-", c)))
			return 0;
	}
	return 1;
}

static void on_imds_role(const struct imds_result *r, void *arg)
{
	struct aws_credentials_provider *p = arg;
	if (!r->error && r->status == 404) {
		imds_fail(p, "IMDS: no IAM role is attached to this instance (HTTP 404)");
		return;
	}
	if (imds_step_failed(p, "role name", r))
		return;
	/* One role per instance profile: the first line. */
	const char *s = r->body, *e = s + strcspn(s, "\r\n");
	while (s < e && (*s == ' ' || *s == '\t'))
		s++;
	while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
		e--;
	if (!role_ok(s, (size_t)(e - s))) {
		imds_fail(p, "IMDS: malformed role name");
		return;
	}
	free(p->role);
	p->role = strndup(s, (size_t)(e - s));
	if (!p->role) {
		imds_fail(p, "IMDS: out of memory");
		return;
	}
	char path[256];
	snprintf(path, sizeof path, "/latest/meta-data/iam/security-credentials/%s", p->role);
	if (imds_get(p->imds, path, on_imds_creds, p) < 0)
		imds_fail(p, "IMDS: could not start a request to %s%s", imds_endpoint(p->imds),
			  path);
}

static void imds_start(struct aws_credentials_provider *p)
{
	static const char path[] = "/latest/meta-data/iam/security-credentials/";
	if (imds_get(p->imds, path, on_imds_role, p) < 0)
		imds_fail(p, "IMDS: could not start a request to %s%s", imds_endpoint(p->imds),
			  path);
}

/* ---- refresh ---- */

static void refresh_done(struct aws_credentials_provider *p, const struct aws_credentials *c,
			 const char *error)
{
	p->refreshing = 0;
	if (c) {
		const struct aws_credentials *old = p->current;
		p->current = aws_credentials_ref(c);
		p->invalidated = 0;
		p->error[0] = '\0';
		aws_credentials_unref(old);
		char when[25] = "never";
		if (c->expiration_ms)
			clock_format_rfc3339(c->expiration_ms, when);
		log_info("aws.credentials.loaded", "source=%s%s%s expires=%s", c->source,
			 p->role && strcmp(c->source, "imds") == 0 ? " role=" : "",
			 p->role && strcmp(c->source, "imds") == 0 ? p->role : "", when);
	} else {
		snprintf(p->error, sizeof p->error, "%s", error);
		log_warn("aws.credentials.refresh_failed", "error=\"%s\"", error);
	}
	/* Do not hammer the sources while an older set can still be used. */
	if (!p->current ||
	    aws_credentials_freshness_at(p->current, clock_wall_ms()) != AWS_CREDENTIALS_FRESH)
		p->next_try_mono = clock_mono_ms() + RETRY_THROTTLE_MS;
	schedule_deliver(p);
}

static void start_refresh(struct aws_credentials_provider *p)
{
	if (p->refreshing)
		return;
	p->refreshing = 1;
	struct err e = {{0}};
	const struct aws_credentials *c = NULL;
	int rc = 0;
	char tried[ERR_MSG_MAX] = "";

	if (p->use_env) {
		rc = aws_credentials_from_env(&c, &e);
		if (rc != 0)
			goto sync_done;
		snprintf(tried, sizeof tried, "environment: not set");
	}
	if (p->use_file && p->file_path) {
		rc = aws_credentials_from_file(p->file_path, p->profile, p->profile_explicit, &c, &e);
		if (rc != 0)
			goto sync_done;
		size_t n = strlen(tried);
		snprintf(tried + n, sizeof tried - n, "%s%s: no credentials for profile '%s'",
			 n ? "; " : "", p->file_path, p->profile);
	}
	if (p->use_imds) {
		imds_start(p);
		return;
	}
	snprintf(e.msg, sizeof e.msg, "%s", *tried ? tried : "every source is disabled");
	rc = -1;
sync_done:
	refresh_done(p, rc > 0 ? c : NULL, rc > 0 ? NULL : e.msg);
	aws_credentials_unref(c);
}

void aws_credentials_get(struct aws_credentials_provider *p, aws_credentials_fn cb, void *arg)
{
	if (!p || !cb || p->free_requested)
		return;
	struct waiter *w = calloc(1, sizeof *w);
	if (!w) {
		log_error("aws.credentials.oom", "cannot queue a credentials request");
		return;
	}
	w->cb = cb;
	w->arg = arg;
	*p->waiters_tail = w;
	p->waiters_tail = &w->next;

	enum aws_credentials_freshness f = AWS_CREDENTIALS_EXPIRED;
	if (p->current && !p->invalidated)
		f = aws_credentials_freshness_at(p->current, clock_wall_ms());
	int throttled = clock_mono_ms() < p->next_try_mono;
	switch (f) {
	case AWS_CREDENTIALS_FRESH:
		break;
	case AWS_CREDENTIALS_REFRESH_SOON:   /* background: the cached set is answered now */
	case AWS_CREDENTIALS_REFRESH_NOW:    /* callers wait, unless a failure is fresh */
		if (!throttled)
			start_refresh(p);
		break;
	case AWS_CREDENTIALS_EXPIRED:        /* or none, or invalidated */
		start_refresh(p);
		break;
	}
	schedule_deliver(p);
}

size_t aws_credentials_cancel(struct aws_credentials_provider *p, aws_credentials_fn cb,
			      void *arg)
{
	size_t n = 0;
	for (struct waiter *x = p->delivering; x; x = x->next) {
		if (!x->cancelled && x->cb == cb && x->arg == arg) {
			x->cancelled = 1;
			n++;
		}
	}
	struct waiter **pp = &p->waiters;
	while (*pp) {
		struct waiter *x = *pp;
		if (x->cb == cb && x->arg == arg) {
			*pp = x->next;
			free(x);
			n++;
		} else {
			pp = &x->next;
		}
	}
	p->waiters_tail = &p->waiters;
	while (*p->waiters_tail)
		p->waiters_tail = &(*p->waiters_tail)->next;
	return n;
}

void aws_credentials_invalidate(struct aws_credentials_provider *p,
				const struct aws_credentials *used)
{
	if (!p->current || (used && used != p->current))
		return; /* already replaced: the caller's retry gets the new set */
	p->invalidated = 1;
	p->next_try_mono = 0;
	log_info("aws.credentials.invalidated", "source=%s", p->current->source);
}

int aws_credentials_refreshing(const struct aws_credentials_provider *p)
{
	return p->refreshing;
}

/* "~/x" -> "$HOME/x"; NULL when there is no home to expand. */
static char *expand_home(const char *path)
{
	if (path[0] != '~' || (path[1] != '/' && path[1] != '\0'))
		return strdup(path);
	const char *home = env_nonempty("HOME");
	if (!home)
		return NULL;
	size_t n = strlen(home) + strlen(path);
	char *out = malloc(n);
	if (out)
		snprintf(out, n, "%s%s", home, path + 1);
	return out;
}

struct aws_credentials_provider *aws_credentials_new(struct ev_loop *loop,
						     struct http_client *client,
						     const struct aws_credentials_opts *opts,
						     struct err *err)
{
	static const struct aws_credentials_opts none = {0};
	if (!opts)
		opts = &none;
	if (!loop || (!client && !opts->no_imds)) {
		err_set(err, "aws credentials: a loop and an HTTP client are required");
		return NULL;
	}
	struct aws_credentials_provider *p = calloc(1, sizeof *p);
	if (!p) {
		err_set(err, "aws credentials: out of memory");
		return NULL;
	}
	p->loop = loop;
	p->http = client;
	p->waiters_tail = &p->waiters;
	ev_timer_init(&p->deliver, on_deliver, 0.0, 0.0);
	p->deliver.data = p;
	p->use_env = !opts->no_env;
	p->use_file = !opts->no_file;
	p->use_imds = !opts->no_imds && !imds_disabled();

	const char *profile = opts->profile ? opts->profile : env_nonempty("AWS_PROFILE");
	p->profile_explicit = profile != NULL;
	p->profile = strdup(profile ? profile : "default");

	const char *file = opts->shared_file ? opts->shared_file
					     : env_nonempty("AWS_SHARED_CREDENTIALS_FILE");
	p->file_path = expand_home(file ? file : "~/.aws/credentials");

	if (!p->profile || (file && !p->file_path && file[0] != '~')) {
		err_set(err, "aws credentials: out of memory");
		goto fail;
	}
	/* A bad endpoint is an error even while the source is switched off. */
	if (client) {
		struct imds_opts io = {.endpoint = opts->imds_endpoint,
				       .timeout_ms = opts->imds_timeout_ms,
				       .retry = opts->imds_retry};
		if (!(p->imds = imds_new(client, &io, err))) {
			err_prefix(err, "aws credentials");
			goto fail;
		}
	}
	return p;
fail:
	destroy(p);
	return NULL;
}

static void destroy(struct aws_credentials_provider *p)
{
	imds_free(p->imds);
	ev_timer_stop(p->loop, &p->deliver);
	while (p->waiters) {
		struct waiter *next = p->waiters->next;
		free(p->waiters);
		p->waiters = next;
	}
	aws_credentials_unref(p->current);
	free(p->role);
	free(p->profile);
	free(p->file_path);
	free(p);
}

void aws_credentials_free(struct aws_credentials_provider *p)
{
	if (!p)
		return;
	if (p->depth > 0) {
		p->free_requested = 1; /* on_deliver finishes the job */
		return;
	}
	destroy(p);
}
