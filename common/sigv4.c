#include "sigv4.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "crypto.h"
#include "log.h"

/* Cap on every string the signer builds (canonical request, query, ...). */
#define SIGV4_TEXT_MAX ((size_t)1 << 20)

static int is_alnum_ascii(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static int is_unreserved(unsigned char c)
{
	return is_alnum_ascii(c) || c == '-' || c == '.' || c == '_' || c == '~';
}

/* RFC 7230 tchar: what a method or header name may consist of. */
static int is_tchar(unsigned char c)
{
	return is_alnum_ascii(c) || (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static int is_token(const char *s)
{
	if (!s || !*s)
		return 0;
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (!is_tchar(*p))
			return 0;
	}
	return 1;
}

static int has_ctl(const char *s)
{
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p < 0x20 || *p == 0x7f)
			return 1;
	}
	return 0;
}

static int hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static char lower_ascii(char c)
{
	return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

static void wipe(void *p, size_t n)
{
	explicit_bzero(p, n);
}

int sigv4_uri_encode(struct buf *out, const char *s, size_t len, int keep_slash)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t start = out->len;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		int rc;
		if (is_unreserved(c) || (keep_slash && c == '/')) {
			rc = buf_append_byte(out, (char)c);
		} else {
			char esc[3] = {'%', hex[c >> 4], hex[c & 15]};
			rc = buf_append(out, esc, 3);
		}
		if (rc < 0) {
			out->len = start;
			if (out->data)
				out->data[start] = '\0';
			return -1;
		}
	}
	return 0;
}

/* Appends s with every valid %XX decoded; anything else is kept literally. */
static int percent_decode(struct buf *out, const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		if (c == '%' && i + 2 < len) {
			int hi = hexval((unsigned char)s[i + 1]), lo = hexval((unsigned char)s[i + 2]);
			if (hi >= 0 && lo >= 0) {
				c = (char)(hi << 4 | lo);
				i += 2;
			}
		}
		if (buf_append_byte(out, c) < 0)
			return -1;
	}
	return 0;
}

/* Decodes then encodes (no '/' kept): the canonical form of one name, value or
 * S3 path segment whatever encoding the caller used. */
static int reencode(struct buf *out, const char *s, size_t len)
{
	struct buf tmp;
	buf_init(&tmp, SIGV4_TEXT_MAX);
	int rc = percent_decode(&tmp, s, len);
	if (rc == 0)
		rc = sigv4_uri_encode(out, tmp.data ? tmp.data : "", tmp.len, 0);
	buf_free(&tmp);
	return rc;
}

int sigv4_normalize_path(struct buf *out, const char *path)
{
	size_t base = out->len;
	size_t n = strlen(path);
	/* The result names a directory (ends in '/') when the input ends in '/',
	 * "/." or "/.." (RFC 3986 section 5.2.4). */
	const char *last = strrchr(path, '/');
	last = last ? last + 1 : path;
	int dir = *last == '\0' || strcmp(last, ".") == 0 || strcmp(last, "..") == 0;

	size_t i = 0;
	while (i <= n) {
		size_t j = i;
		while (j < n && path[j] != '/')
			j++;
		const char *seg = path + i;
		size_t sl = j - i;
		if (sl == 0 || (sl == 1 && seg[0] == '.')) {
			/* empty segment (repeated slash) or "." : nothing */
		} else if (sl == 2 && seg[0] == '.' && seg[1] == '.') {
			size_t k = out->len;
			while (k > base && out->data[k - 1] != '/')
				k--;
			if (k > base)
				k--; /* drop the '/' too */
			out->len = k;
			out->data[k] = '\0';
		} else {
			if (buf_append_byte(out, '/') < 0 || buf_append(out, seg, sl) < 0)
				goto fail;
		}
		i = j + 1;
	}
	if (out->len == base || dir) {
		if (buf_append_byte(out, '/') < 0)
			goto fail;
	}
	return 0;
fail:
	out->len = base;
	if (out->data)
		out->data[base] = '\0';
	return -1;
}

static int canonical_uri(struct buf *out, const char *path, const struct sigv4_options *o,
			 struct err *err)
{
	if (!path || !*path)
		path = "/";
	if (path[0] != '/')
		return err_set(err, "sigv4: path must start with '/'");
	if (strchr(path, '?') || strchr(path, '#'))
		return err_set(err, "sigv4: path contains '?' or '#' (pass the query separately)");
	if (has_ctl(path))
		return err_set(err, "sigv4: control character in path");

	struct buf norm;
	buf_init(&norm, SIGV4_TEXT_MAX);
	const char *p = path;
	if (o->normalize_path) {
		if (sigv4_normalize_path(&norm, path) < 0) {
			buf_free(&norm);
			return err_set(err, "sigv4: path too long");
		}
		p = norm.data;
	}
	int rc = 0;
	size_t n = strlen(p), i = 0;
	while (rc == 0 && i <= n) {
		size_t j = i;
		while (j < n && p[j] != '/')
			j++;
		if (i > 0)
			rc = buf_append_byte(out, '/');
		if (rc == 0)
			rc = o->double_encode_path ? sigv4_uri_encode(out, p + i, j - i, 0)
						   : reencode(out, p + i, j - i);
		i = j + 1;
	}
	buf_free(&norm);
	if (rc < 0)
		return err_set(err, "sigv4: path too long");
	return 0;
}

/* ---- query parameters ---- */

struct qparam {
	char *name;  /* canonical (encoded) */
	char *value; /* canonical (encoded) */
};

struct qlist {
	struct qparam *v;
	size_t n, cap;
};

static void qlist_free(struct qlist *q)
{
	for (size_t i = 0; i < q->n; i++) {
		free(q->v[i].name);
		free(q->v[i].value);
	}
	free(q->v);
	memset(q, 0, sizeof *q);
}

/* Adds a parameter; `raw` says the caller's bytes may hold %XX to decode first. */
static int qlist_add(struct qlist *q, const char *name, size_t nlen, const char *value,
		     size_t vlen, int raw)
{
	if (q->n == q->cap) {
		size_t cap = q->cap ? q->cap * 2 : 8;
		struct qparam *v = realloc(q->v, cap * sizeof *v);
		if (!v)
			return -1;
		q->v = v;
		q->cap = cap;
	}
	struct buf bn, bv;
	buf_init(&bn, SIGV4_TEXT_MAX);
	buf_init(&bv, SIGV4_TEXT_MAX);
	int rc = raw ? reencode(&bn, name, nlen) : sigv4_uri_encode(&bn, name, nlen, 0);
	if (rc == 0)
		rc = raw ? reencode(&bv, value, vlen) : sigv4_uri_encode(&bv, value, vlen, 0);
	if (rc < 0) {
		buf_free(&bn);
		buf_free(&bv);
		return -1;
	}
	char *n = buf_detach(&bn, NULL), *v = buf_detach(&bv, NULL);
	if (!n || !v) {
		free(n);
		free(v);
		return -1;
	}
	q->v[q->n].name = n;
	q->v[q->n].value = v;
	q->n++;
	return 0;
}

static int qlist_parse(struct qlist *q, const char *query)
{
	if (!query)
		return 0;
	const char *p = query;
	while (*p) {
		const char *amp = strchr(p, '&');
		size_t len = amp ? (size_t)(amp - p) : strlen(p);
		if (len > 0) {
			const char *eq = memchr(p, '=', len);
			size_t nlen = eq ? (size_t)(eq - p) : len;
			const char *val = eq ? eq + 1 : "";
			size_t vlen = eq ? len - nlen - 1 : 0;
			if (qlist_add(q, p, nlen, val, vlen, 1) < 0)
				return -1;
		}
		p += len;
		if (*p == '&')
			p++;
	}
	return 0;
}

static int qparam_cmp(const void *a, const void *b)
{
	const struct qparam *x = a, *y = b;
	int c = strcmp(x->name, y->name);
	return c ? c : strcmp(x->value, y->value);
}

static int qlist_has(const struct qlist *q, const char *encoded_name)
{
	for (size_t i = 0; i < q->n; i++) {
		if (strcmp(q->v[i].name, encoded_name) == 0)
			return 1;
	}
	return 0;
}

static int qlist_join(struct qlist *q, struct buf *out)
{
	if (q->n)
		qsort(q->v, q->n, sizeof *q->v, qparam_cmp);
	for (size_t i = 0; i < q->n; i++) {
		if ((i && buf_append_byte(out, '&') < 0) || buf_append_str(out, q->v[i].name) < 0 ||
		    buf_append_byte(out, '=') < 0 || buf_append_str(out, q->v[i].value) < 0)
			return -1;
	}
	return 0;
}

/* ---- headers ---- */

struct hentry {
	char *name;  /* lowercase */
	char *value; /* trimmed, whitespace runs collapsed, obs-fold lines joined by ',' */
	size_t order;
};

struct hlist {
	struct hentry *v;
	size_t n, cap;
};

static void hlist_free(struct hlist *h)
{
	for (size_t i = 0; i < h->n; i++) {
		free(h->v[i].name);
		free(h->v[i].value);
	}
	free(h->v);
	memset(h, 0, sizeof *h);
}

/*
 * Canonical header value: trimmed, each run of spaces/tabs turned into one
 * space, and obs-fold continuation lines (CRLF or LF followed by space or tab)
 * treated as separate values of the same header, joined with ','. A line break
 * that is not a continuation, and other control bytes, are errors: they would
 * forge a header.
 */
static int canonical_value(struct buf *out, const char *v, const char *name, struct err *err)
{
	const unsigned char *p = (const unsigned char *)v;
	int part_has = 0, any = 0, pending_space = 0;
	while (*p) {
		if (*p == '\r' || *p == '\n') {
			const unsigned char *q = p;
			if (*q == '\r')
				q++;
			if (*q != '\n' || (q[1] != ' ' && q[1] != '\t'))
				return err_set(err, "sigv4: header %s: line break that is not "
						    "a continuation", name);
			p = q + 1;
			part_has = 0;
			pending_space = 0;
			continue;
		}
		if (*p == ' ' || *p == '\t') {
			if (part_has)
				pending_space = 1;
			p++;
			continue;
		}
		if (*p < 0x20 || *p == 0x7f)
			return err_set(err, "sigv4: header %s: control character in value", name);
		int rc = 0;
		if (!part_has && any)
			rc = buf_append_byte(out, ',');
		else if (pending_space)
			rc = buf_append_byte(out, ' ');
		if (rc == 0)
			rc = buf_append_byte(out, (char)*p);
		if (rc < 0)
			return err_set(err, "sigv4: header %s too long", name);
		pending_space = 0;
		part_has = 1;
		any = 1;
		p++;
	}
	return 0;
}

static int hlist_add(struct hlist *h, const char *name, const char *value, struct err *err)
{
	if (!is_token(name))
		return err_set(err, "sigv4: bad header name '%s'", name ? name : "(null)");
	if (!value)
		value = "";
	if (h->n == h->cap) {
		size_t cap = h->cap ? h->cap * 2 : 16;
		struct hentry *v = realloc(h->v, cap * sizeof *v);
		if (!v)
			return err_set(err, "sigv4: out of memory");
		h->v = v;
		h->cap = cap;
	}
	char *lname = strdup(name);
	if (!lname)
		return err_set(err, "sigv4: out of memory");
	for (char *c = lname; *c; c++)
		*c = lower_ascii(*c);
	struct buf bv;
	buf_init(&bv, SIGV4_TEXT_MAX);
	if (canonical_value(&bv, value, lname, err) < 0) {
		buf_free(&bv);
		free(lname);
		return -1;
	}
	char *cv = buf_detach(&bv, NULL);
	if (!cv) {
		free(lname);
		return err_set(err, "sigv4: out of memory");
	}
	h->v[h->n].name = lname;
	h->v[h->n].value = cv;
	h->v[h->n].order = h->n;
	h->n++;
	return 0;
}

static int hentry_cmp(const void *a, const void *b)
{
	const struct hentry *x = a, *y = b;
	int c = strcmp(x->name, y->name);
	if (c)
		return c;
	return x->order < y->order ? -1 : x->order > y->order;
}

static int hlist_find(const struct hlist *h, const char *lname)
{
	for (size_t i = 0; i < h->n; i++) {
		if (strcmp(h->v[i].name, lname) == 0)
			return 1;
	}
	return 0;
}

/* Appends the canonical header block ("name:v1,v2\n" per name) and the signed
 * header list. Duplicates keep the order they were given in. */
static int hlist_canonical(struct hlist *h, struct buf *block, struct buf *signed_headers)
{
	qsort(h->v, h->n, sizeof *h->v, hentry_cmp);
	for (size_t i = 0; i < h->n; i++) {
		int same = i > 0 && strcmp(h->v[i].name, h->v[i - 1].name) == 0;
		int rc;
		if (same) {
			rc = buf_append_byte(block, ',');
		} else {
			rc = (i > 0 ? buf_append_byte(block, '\n') : 0);
			if (rc == 0)
				rc = buf_printf(block, "%s:", h->v[i].name);
			if (rc == 0 && signed_headers->len)
				rc = buf_append_byte(signed_headers, ';');
			if (rc == 0)
				rc = buf_append_str(signed_headers, h->v[i].name);
		}
		if (rc == 0)
			rc = buf_append_str(block, h->v[i].value);
		if (rc < 0)
			return -1;
	}
	if (h->n && buf_append_byte(block, '\n') < 0)
		return -1;
	return 0;
}

/* ---- time ---- */

static int format_amz_date(int64_t ms, char out[17])
{
	if (ms < 0)
		return -1;
	time_t t = (time_t)(ms / 1000);
	struct tm tm;
	if (!gmtime_r(&t, &tm) || tm.tm_year + 1900 > 9999)
		return -1;
	return strftime(out, 17, "%Y%m%dT%H%M%SZ", &tm) == 16 ? 0 : -1;
}

static int take_num(const char **p, int digits, int *out)
{
	int v = 0;
	for (int i = 0; i < digits; i++) {
		unsigned char c = (unsigned char)(*p)[i];
		if (c < '0' || c > '9')
			return -1;
		v = v * 10 + (c - '0');
	}
	*p += digits;
	*out = v;
	return 0;
}

static int64_t tm_to_ms(int y, int mo, int d, int h, int mi, int s)
{
	struct tm tm = {0};
	tm.tm_year = y - 1900;
	tm.tm_mon = mo - 1;
	tm.tm_mday = d;
	tm.tm_hour = h;
	tm.tm_min = mi;
	tm.tm_sec = s;
	return (int64_t)timegm(&tm) * 1000;
}

int sigv4_parse_http_date(const char *s, int64_t *wall_ms)
{
	static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
					     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
	if (!s)
		return -1;
	const char *p = s;
	while (*p == ' ')
		p++;
	/* "Sun, " */
	for (int i = 0; i < 3; i++) {
		if (!((p[i] >= 'A' && p[i] <= 'Z') || (p[i] >= 'a' && p[i] <= 'z')))
			return -1;
	}
	p += 3;
	if (p[0] != ',' || p[1] != ' ')
		return -1;
	p += 2;
	int d, y, h, mi, sec, mo = -1;
	if (take_num(&p, 2, &d) < 0 || *p++ != ' ')
		return -1;
	for (int i = 0; i < 12; i++) {
		if (strncmp(p, months[i], 3) == 0)
			mo = i + 1;
	}
	if (mo < 0)
		return -1;
	p += 3;
	if (*p++ != ' ' || take_num(&p, 4, &y) < 0 || *p++ != ' ' || take_num(&p, 2, &h) < 0 ||
	    *p++ != ':' || take_num(&p, 2, &mi) < 0 || *p++ != ':' || take_num(&p, 2, &sec) < 0)
		return -1;
	if (strcmp(p, " GMT") != 0)
		return -1;
	if (d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
		return -1;
	*wall_ms = tm_to_ms(y, mo, d, h, mi, sec);
	return 0;
}

/* "20150830T123600Z" at p (exactly); -1 otherwise. */
static int parse_amz_date(const char *p, int64_t *wall_ms)
{
	int y, mo, d, h, mi, s;
	if (take_num(&p, 4, &y) < 0 || take_num(&p, 2, &mo) < 0 || take_num(&p, 2, &d) < 0 ||
	    *p++ != 'T' || take_num(&p, 2, &h) < 0 || take_num(&p, 2, &mi) < 0 ||
	    take_num(&p, 2, &s) < 0 || *p != 'Z')
		return -1;
	if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || s > 60)
		return -1;
	*wall_ms = tm_to_ms(y, mo, d, h, mi, s);
	return 0;
}

/* AWS says "Signature expired: 20150830T123600Z is now earlier than
 * 20150830T125100Z (20150830T130600Z - 15 min.)": the time in parentheses is
 * the server's clock. */
static int server_time_from_message(const char *msg, int64_t *wall_ms)
{
	for (const char *p = strchr(msg, '('); p; p = strchr(p + 1, '(')) {
		if (parse_amz_date(p + 1, wall_ms) == 0 && p[17] == ' ' &&
		    (p[18] == '-' || p[18] == '+'))
			return 0;
	}
	return -1;
}

/* ---- signer ---- */

static int scope_part_ok(const char *s, size_t cap)
{
	if (!s || !*s || strlen(s) >= cap)
		return 0;
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (!is_alnum_ascii(*p) && *p != '-' && *p != '_' && *p != '.')
			return 0;
	}
	return 1;
}

int sigv4_signer_init(struct sigv4_signer *s, const char *region, const char *service,
		      const struct sigv4_options *opts, struct err *err)
{
	memset(s, 0, sizeof *s);
	if (!scope_part_ok(region, sizeof s->region))
		return err_set(err, "sigv4: bad region '%s'", region ? region : "(null)");
	if (!scope_part_ok(service, sizeof s->service))
		return err_set(err, "sigv4: bad service '%s'", service ? service : "(null)");
	strcpy(s->region, region);
	strcpy(s->service, service);
	s->opts = opts ? *opts : SIGV4_OPTIONS_DEFAULT;
	return 0;
}

void sigv4_signer_clear(struct sigv4_signer *s)
{
	wipe(s->key, sizeof s->key);
	wipe(s->key_id, sizeof s->key_id);
	s->key_valid = 0;
}

int64_t sigv4_signer_now(const struct sigv4_signer *s)
{
	return clock_wall_ms() + s->clock_offset_ms;
}

/* kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request"),
 * cached for the fingerprint of its inputs. */
static int signing_key(struct sigv4_signer *s, const char *secret, const char date[9],
		       uint8_t out[32])
{
	uint8_t id[32];
	struct crypto_sha256_ctx ctx;
	crypto_sha256_init(&ctx);
	crypto_sha256_update(&ctx, "slipway-sigv4-key\0", 18);
	crypto_sha256_update(&ctx, secret, strlen(secret) + 1);
	crypto_sha256_update(&ctx, date, 9);
	crypto_sha256_update(&ctx, s->region, strlen(s->region) + 1);
	crypto_sha256_update(&ctx, s->service, strlen(s->service) + 1);
	crypto_sha256_final(&ctx, id);
	if (s->key_valid && crypto_equal(id, sizeof id, s->key_id, sizeof s->key_id)) {
		memcpy(out, s->key, 32);
		return 0;
	}
	size_t sl = strlen(secret);
	char *k = malloc(sl + 4);
	if (!k)
		return -1;
	memcpy(k, "AWS4", 4);
	memcpy(k + 4, secret, sl);
	uint8_t a[32], b[32];
	crypto_hmac_sha256(k, sl + 4, date, 8, a);
	wipe(k, sl + 4);
	free(k);
	crypto_hmac_sha256(a, 32, s->region, strlen(s->region), b);
	crypto_hmac_sha256(b, 32, s->service, strlen(s->service), a);
	crypto_hmac_sha256(a, 32, "aws4_request", 12, out);
	wipe(a, sizeof a);
	wipe(b, sizeof b);
	memcpy(s->key, out, 32);
	memcpy(s->key_id, id, 32);
	s->key_valid = 1;
	return 0;
}

static int payload_hash(const struct sigv4_request *req, char out[65], struct err *err)
{
	switch (req->payload_kind) {
	case SIGV4_PAYLOAD_BYTES:
		if (!req->payload && req->payload_len)
			return err_set(err, "sigv4: payload is NULL");
		crypto_sha256_hex(req->payload ? req->payload : "", req->payload_len, out);
		return 0;
	case SIGV4_PAYLOAD_HASH: {
		const char *h = req->payload_sha256_hex;
		if (!h || strlen(h) != 64)
			return err_set(err, "sigv4: payload hash must be 64 hex digits");
		for (int i = 0; i < 64; i++) {
			if (hexval((unsigned char)h[i]) < 0)
				return err_set(err, "sigv4: payload hash must be 64 hex digits");
			out[i] = lower_ascii(h[i]);
		}
		out[64] = '\0';
		return 0;
	}
	case SIGV4_PAYLOAD_UNSIGNED:
		strcpy(out, SIGV4_UNSIGNED_PAYLOAD);
		return 0;
	}
	return err_set(err, "sigv4: bad payload kind");
}

static int creds_ok(const struct aws_credentials *c, struct err *err)
{
	if (!c || !c->access_key_id || !*c->access_key_id || !c->secret_access_key ||
	    !*c->secret_access_key)
		return err_set(err, "sigv4: credentials incomplete");
	if (has_ctl(c->access_key_id) || strchr(c->access_key_id, '/') ||
	    strchr(c->access_key_id, ' ') || strchr(c->access_key_id, ','))
		return err_set(err, "sigv4: bad access key id");
	if (c->session_token && (!*c->session_token || has_ctl(c->session_token)))
		return err_set(err, "sigv4: bad session token");
	return 0;
}

static char *detach_or_null(struct buf *b)
{
	return buf_detach(b, NULL);
}

static int sign_core(struct sigv4_signer *s, const struct aws_credentials *creds,
		     const struct sigv4_request *req, int presign, int64_t expires_s,
		     struct sigv4_result *out, struct err *err)
{
	memset(out, 0, sizeof *out);
	if (!req)
		return err_set(err, "sigv4: no request");
	if (creds_ok(creds, err) < 0)
		return -1;
	if (!is_token(req->method))
		return err_set(err, "sigv4: bad method");
	if (presign && (expires_s < 1 || expires_s > SIGV4_MAX_EXPIRES_S))
		return err_set(err, "sigv4: expiry must be 1..%d seconds", SIGV4_MAX_EXPIRES_S);
	const char *token = creds->session_token;
	int sign_token = token && s->opts.sign_session_token;
	int add_sha = !presign && s->opts.add_content_sha256_header;

	int64_t t = req->time_ms ? req->time_ms : sigv4_signer_now(s);
	if (format_amz_date(t, out->amz_date) < 0) {
		memset(out, 0, sizeof *out);
		return err_set(err, "sigv4: time out of range");
	}
	char date[9];
	memcpy(date, out->amz_date, 8);
	date[8] = '\0';
	if (payload_hash(req, out->payload_hash, err) < 0) {
		memset(out, 0, sizeof *out);
		return -1;
	}

	struct hlist h = {0};
	struct qlist q = {0};
	struct buf creq, sts, hblock, shdr, query, scope, tmp;
	buf_init(&creq, SIGV4_TEXT_MAX);
	buf_init(&sts, SIGV4_TEXT_MAX);
	buf_init(&hblock, SIGV4_TEXT_MAX);
	buf_init(&shdr, SIGV4_TEXT_MAX);
	buf_init(&query, SIGV4_TEXT_MAX);
	buf_init(&scope, 512);
	buf_init(&tmp, SIGV4_TEXT_MAX);
	int rc = -1;

	if (req->header_count && !req->headers) {
		err_set(err, "sigv4: headers missing");
		goto done;
	}
	for (size_t i = 0; i < req->header_count; i++) {
		if (hlist_add(&h, req->headers[i].name, req->headers[i].value, err) < 0)
			goto done;
	}
	const char *reserved = NULL;
	if (hlist_find(&h, "authorization"))
		reserved = "Authorization";
	else if (hlist_find(&h, "x-amz-date"))
		reserved = "X-Amz-Date";
	else if (!presign && token && hlist_find(&h, "x-amz-security-token"))
		reserved = "X-Amz-Security-Token";
	else if (add_sha && hlist_find(&h, "x-amz-content-sha256"))
		reserved = "X-Amz-Content-Sha256";
	if (reserved) {
		err_set(err, "sigv4: header %s is set by the signer", reserved);
		goto done;
	}
	if (!hlist_find(&h, "host")) {
		err_set(err, "sigv4: the Host header must be signed");
		goto done;
	}
	if (!presign) {
		if (hlist_add(&h, "X-Amz-Date", out->amz_date, err) < 0 ||
		    (sign_token && hlist_add(&h, "X-Amz-Security-Token", token, err) < 0) ||
		    (add_sha && hlist_add(&h, "X-Amz-Content-Sha256", out->payload_hash, err) < 0))
			goto done;
	}
	if (buf_printf(&scope, "%s/%s/%s/aws4_request", date, s->region, s->service) < 0) {
		err_set(err, "sigv4: scope too long");
		goto done;
	}
	if (hlist_canonical(&h, &hblock, &shdr) < 0) {
		err_set(err, "sigv4: headers too long");
		goto done;
	}

	if (qlist_parse(&q, req->query) < 0) {
		err_set(err, "sigv4: query too long");
		goto done;
	}
	if (presign) {
		static const char *const ours[] = {"X-Amz-Algorithm", "X-Amz-Credential",
						   "X-Amz-Date", "X-Amz-Expires",
						   "X-Amz-SignedHeaders", "X-Amz-Signature",
						   "X-Amz-Security-Token"};
		for (size_t i = 0; i < sizeof ours / sizeof ours[0]; i++) {
			if (qlist_has(&q, ours[i])) {
				err_set(err, "sigv4: query parameter %s is set by the signer", ours[i]);
				goto done;
			}
		}
		char expires[24];
		snprintf(expires, sizeof expires, "%lld", (long long)expires_s);
		buf_reset(&tmp);
		if (buf_printf(&tmp, "%s/%s", creds->access_key_id, scope.data) < 0 ||
		    qlist_add(&q, "X-Amz-Algorithm", 15, SIGV4_ALGORITHM, strlen(SIGV4_ALGORITHM), 0) ||
		    qlist_add(&q, "X-Amz-Credential", 16, tmp.data, tmp.len, 0) ||
		    qlist_add(&q, "X-Amz-Date", 10, out->amz_date, 16, 0) ||
		    qlist_add(&q, "X-Amz-Expires", 13, expires, strlen(expires), 0) ||
		    qlist_add(&q, "X-Amz-SignedHeaders", 19, shdr.data, shdr.len, 0) ||
		    (sign_token &&
		     qlist_add(&q, "X-Amz-Security-Token", 20, token, strlen(token), 0))) {
			err_set(err, "sigv4: query too long");
			goto done;
		}
	}
	if (qlist_join(&q, &query) < 0) {
		err_set(err, "sigv4: query too long");
		goto done;
	}

	/* Canonical request: method, URI, query, headers, signed headers, payload hash. */
	if (buf_printf(&creq, "%s\n", req->method) < 0)
		goto too_long;
	if (canonical_uri(&creq, req->path, &s->opts, err) < 0)
		goto done;
	if (buf_printf(&creq, "\n%s\n", query.data ? query.data : "") < 0 ||
	    buf_append(&creq, hblock.data ? hblock.data : "", hblock.len) < 0 ||
	    buf_printf(&creq, "\n%s\n%s", shdr.data, out->payload_hash) < 0)
		goto too_long;

	char creq_hash[65];
	crypto_sha256_hex(creq.data, creq.len, creq_hash);
	if (buf_printf(&sts, "%s\n%s\n%s\n%s", SIGV4_ALGORITHM, out->amz_date, scope.data,
		       creq_hash) < 0)
		goto too_long;

	uint8_t key[32], mac[32];
	if (signing_key(s, creds->secret_access_key, date, key) < 0) {
		err_set(err, "sigv4: out of memory");
		goto done;
	}
	crypto_hmac_sha256(key, sizeof key, sts.data, sts.len, mac);
	wipe(key, sizeof key);
	crypto_hex(mac, sizeof mac, out->signature);

	buf_reset(&tmp);
	if (presign) {
		if (buf_printf(&tmp, "%s&X-Amz-Signature=%s", query.data, out->signature) < 0)
			goto too_long;
		if (token && !sign_token) {
			if (buf_append_str(&tmp, "&X-Amz-Security-Token=") < 0 ||
			    sigv4_uri_encode(&tmp, token, strlen(token), 0) < 0)
				goto too_long;
		}
		out->presigned_query = detach_or_null(&tmp);
	} else {
		if (buf_printf(&tmp, "%s Credential=%s/%s, SignedHeaders=%s, Signature=%s",
			       SIGV4_ALGORITHM, creds->access_key_id, scope.data, shdr.data,
			       out->signature) < 0)
			goto too_long;
		out->authorization = detach_or_null(&tmp);
		out->add[out->add_count++] = (struct sigv4_header){"X-Amz-Date", out->amz_date};
		if (token) {
			out->token_copy = strdup(token);
			out->add[out->add_count++] =
				(struct sigv4_header){"X-Amz-Security-Token", out->token_copy};
		}
		if (add_sha)
			out->add[out->add_count++] =
				(struct sigv4_header){"X-Amz-Content-Sha256", out->payload_hash};
	}
	out->canonical_request = detach_or_null(&creq);
	out->string_to_sign = detach_or_null(&sts);
	out->signed_headers = detach_or_null(&shdr);
	if (!out->canonical_request || !out->string_to_sign || !out->signed_headers ||
	    (presign ? !out->presigned_query : !out->authorization) ||
	    (token && !presign && !out->token_copy)) {
		err_set(err, "sigv4: out of memory");
		sigv4_result_free(out);
		goto done;
	}
	rc = 0;
	goto done;
too_long:
	err_set(err, "sigv4: request too large to sign");
done:
	if (rc < 0) {
		/* keep the fixed-size fields consistent with "nothing signed" */
		sigv4_result_free(out);
	}
	hlist_free(&h);
	qlist_free(&q);
	buf_free(&creq);
	buf_free(&sts);
	buf_free(&hblock);
	buf_free(&shdr);
	buf_free(&query);
	buf_free(&scope);
	buf_free(&tmp);
	return rc;
}

int sigv4_sign(struct sigv4_signer *s, const struct aws_credentials *creds,
	       const struct sigv4_request *req, struct sigv4_result *out, struct err *err)
{
	return sign_core(s, creds, req, 0, 0, out, err);
}

int sigv4_presign(struct sigv4_signer *s, const struct aws_credentials *creds,
		  const struct sigv4_request *req, int64_t expires_s, struct sigv4_result *out,
		  struct err *err)
{
	return sign_core(s, creds, req, 1, expires_s, out, err);
}

void sigv4_result_free(struct sigv4_result *r)
{
	free(r->canonical_request);
	free(r->string_to_sign);
	free(r->signed_headers);
	free(r->authorization);
	free(r->presigned_query);
	if (r->token_copy) {
		wipe(r->token_copy, strlen(r->token_copy));
		free(r->token_copy);
	}
	memset(r, 0, sizeof *r);
}

int sigv4_result_append_headers(const struct sigv4_result *r, struct buf *headers)
{
	size_t start = headers->len;
	for (size_t i = 0; i < r->add_count; i++) {
		if (buf_printf(headers, "%s: %s\r\n", r->add[i].name, r->add[i].value) < 0)
			goto fail;
	}
	if (r->authorization && buf_printf(headers, "Authorization: %s\r\n", r->authorization) < 0)
		goto fail;
	return 0;
fail:
	headers->len = start;
	if (headers->data)
		headers->data[start] = '\0';
	return -1;
}

/* ---- clock skew ---- */

static int is_skew_error(const char *code, const char *msg)
{
	static const char *const codes[] = {"RequestTimeTooSkewed", "RequestExpired",
					    "RequestInTheFuture"};
	if (code) {
		for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
			if (strcmp(code, codes[i]) == 0)
				return 1;
		}
	}
	/* InvalidSignatureException / SignatureDoesNotMatch / AuthFailure carry
	 * the time problem in the message only. */
	return msg && (strstr(msg, "Signature expired") || strstr(msg, "Signature not yet current"));
}

int sigv4_signer_note_skew(struct sigv4_signer *s, const char *error_code,
			   const char *error_message, const char *date_header)
{
	if (!is_skew_error(error_code, error_message))
		return 0;
	int64_t server;
	if (sigv4_parse_http_date(date_header, &server) < 0 &&
	    (!error_message || server_time_from_message(error_message, &server) < 0)) {
		log_warn("sigv4.clock_skew_unknown", "service=%s code=%s: no server time in the answer",
			 s->service, error_code ? error_code : "-");
		return 0;
	}
	int64_t offset = server - clock_wall_ms();
	log_warn("sigv4.clock_skew", "service=%s code=%s offset_ms=%lld previous_ms=%lld",
		 s->service, error_code ? error_code : "-", (long long)offset,
		 (long long)s->clock_offset_ms);
	s->clock_offset_ms = offset;
	return 1;
}
