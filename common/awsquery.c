#include "awsquery.h"

#include <ev.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backoff.h"
#include "crypto.h"
#include "http_client.h"
#include "json.h"
#include "log.h"
#include "sigv4.h"

/* ---- XML ---- */

/*
 * One pass over the document, keeping the stack of open element names. The
 * grammar accepted is the part of XML 1.0 a Query answer uses: an optional
 * BOM and <?xml ...?> declaration, comments, elements with attributes
 * (read and ignored), character data with the predefined and numeric
 * entities. Everything else is an error, which keeps the reader small enough
 * to check by eye and to fuzz.
 */
struct xml_walk {
	const char *start, *p, *end;
	struct err *err;
	/* the element asked for */
	const char *comp[AWSQUERY_XML_DEPTH];
	size_t comp_len[AWSQUERY_XML_DEPTH];
	size_t ncomp;
	char *out;
	size_t cap, out_len;
	int found;      /* elements at the path closed so far */
	bool in_target; /* the stack is exactly the path */
	/* the root's name, for awsquery_xml_root */
	char root[AWSQUERY_NAME_MAX + 1];
};

static int is_name_start(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_' || c == ':';
}

static int is_name_char(unsigned char c)
{
	return is_name_start(c) || (c >= '0' && c <= '9') || c == '-' || c == '.';
}

static int is_space(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Reads a name at w->p; sets name and len to its local part (after the last ':'). */
static int read_name(struct xml_walk *w, const char **name, size_t *len)
{
	const char *s = w->p;
	if (s >= w->end || !is_name_start((unsigned char)*s))
		return err_set(w->err, "xml: a name was expected at offset %zu",
			       (size_t)(s - w->start));
	const char *q = s;
	while (q < w->end && is_name_char((unsigned char)*q))
		q++;
	if ((size_t)(q - s) > AWSQUERY_NAME_MAX)
		return err_set(w->err, "xml: a name is longer than %d bytes", AWSQUERY_NAME_MAX);
	const char *local = s;
	for (const char *c = s; c < q; c++)
		if (*c == ':')
			local = c + 1;
	if (local == q)
		return err_set(w->err, "xml: a name ends with ':'");
	*name = local;
	*len = (size_t)(q - local);
	w->p = q;
	return 0;
}

static void skip_space(struct xml_walk *w)
{
	while (w->p < w->end && is_space((unsigned char)*w->p))
		w->p++;
}

static int starts(const struct xml_walk *w, const char *lit)
{
	size_t n = strlen(lit);
	return (size_t)(w->end - w->p) >= n && memcmp(w->p, lit, n) == 0;
}

/* Skips to just after `lit`; -1 when it never comes. */
static int skip_past(struct xml_walk *w, const char *lit, const char *what)
{
	size_t n = strlen(lit);
	for (const char *q = w->p; (size_t)(w->end - q) >= n; q++) {
		if (memcmp(q, lit, n) == 0) {
			w->p = q + n;
			return 0;
		}
	}
	return err_set(w->err, "xml: unterminated %s", what);
}

static int append_out(struct xml_walk *w, const char *s, size_t n)
{
	if (!w->in_target || !w->out)
		return 0;
	if (w->out_len + n >= w->cap)
		return err_set(w->err, "xml: the text of %.*s is longer than %zu bytes",
			       (int)w->comp_len[w->ncomp - 1], w->comp[w->ncomp - 1], w->cap - 1);
	memcpy(w->out + w->out_len, s, n);
	w->out_len += n;
	w->out[w->out_len] = '\0';
	return 0;
}

static size_t utf8_encode(uint32_t cp, char out[4])
{
	if (cp < 0x80) {
		out[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		out[0] = (char)(0xC0 | (cp >> 6));
		out[1] = (char)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		out[0] = (char)(0xE0 | (cp >> 12));
		out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
		out[2] = (char)(0x80 | (cp & 0x3F));
		return 3;
	}
	out[0] = (char)(0xF0 | (cp >> 18));
	out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
	out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
	out[3] = (char)(0x80 | (cp & 0x3F));
	return 4;
}

/* An entity at w->p ('&'), decoded into the target text. */
static int read_entity(struct xml_walk *w)
{
	const char *semi = memchr(w->p, ';', (size_t)(w->end - w->p) < 12 ? (size_t)(w->end - w->p)
									  : 12);
	if (!semi)
		return err_set(w->err, "xml: '&' that starts no entity");
	const char *name = w->p + 1;
	size_t n = (size_t)(semi - name);
	static const struct {
		const char *name;
		char c;
	} named[] = {{"lt", '<'}, {"gt", '>'}, {"amp", '&'}, {"quot", '"'}, {"apos", '\''}};
	for (size_t i = 0; i < sizeof named / sizeof named[0]; i++) {
		if (strlen(named[i].name) == n && memcmp(name, named[i].name, n) == 0) {
			w->p = semi + 1;
			return append_out(w, &named[i].c, 1);
		}
	}
	if (n < 2 || name[0] != '#')
		return err_set(w->err, "xml: unknown entity &%.*s;", (int)n, name);
	uint32_t cp = 0;
	bool hex = name[1] == 'x';
	const char *d = name + (hex ? 2 : 1);
	if (d == semi)
		return err_set(w->err, "xml: empty character reference");
	for (; d < semi; d++) {
		unsigned v;
		if (*d >= '0' && *d <= '9')
			v = (unsigned)(*d - '0');
		else if (hex && *d >= 'a' && *d <= 'f')
			v = (unsigned)(*d - 'a' + 10);
		else if (hex && *d >= 'A' && *d <= 'F')
			v = (unsigned)(*d - 'A' + 10);
		else
			return err_set(w->err, "xml: bad character reference &%.*s;", (int)n, name);
		cp = cp * (hex ? 16 : 10) + v;
		if (cp > 0x10FFFF)
			return err_set(w->err, "xml: character reference out of range");
	}
	/* XML 1.0 Char: no NUL, no other C0 control but tab and line ends, no surrogates. */
	if ((cp < 0x20 && cp != 0x9 && cp != 0xA && cp != 0xD) || (cp >= 0xD800 && cp <= 0xDFFF) ||
	    cp == 0xFFFE || cp == 0xFFFF)
		return err_set(w->err, "xml: character reference to a character XML forbids");
	char u[4];
	size_t un = utf8_encode(cp, u);
	w->p = semi + 1;
	return append_out(w, u, un);
}

/* Character data up to the next '<'. */
static int read_text(struct xml_walk *w, size_t depth)
{
	while (w->p < w->end && *w->p != '<') {
		unsigned char c = (unsigned char)*w->p;
		if (c == '&') {
			if (depth == 0)
				return err_set(w->err, "xml: text outside the root element");
			if (read_entity(w) < 0)
				return -1;
			continue;
		}
		if (c < 0x20 && !is_space(c))
			return err_set(w->err, "xml: control character 0x%02x", c);
		if (!is_space(c) && depth == 0)
			return err_set(w->err, "xml: text outside the root element");
		const char *run = w->p;
		while (w->p < w->end && *w->p != '<' && *w->p != '&' &&
		       ((unsigned char)*w->p >= 0x20 || is_space((unsigned char)*w->p)))
			w->p++;
		if (append_out(w, run, (size_t)(w->p - run)) < 0)
			return -1;
	}
	return 0;
}

/* Attributes up to '>' or "/>": read for well-formedness, then ignored. */
static int read_attributes(struct xml_walk *w, bool *empty)
{
	for (;;) {
		size_t before = (size_t)(w->end - w->p);
		skip_space(w);
		if (w->p >= w->end)
			return err_set(w->err, "xml: unterminated tag");
		if (*w->p == '>') {
			w->p++;
			*empty = false;
			return 0;
		}
		if (*w->p == '/') {
			if (w->p + 1 >= w->end || w->p[1] != '>')
				return err_set(w->err, "xml: '/' inside a tag");
			w->p += 2;
			*empty = true;
			return 0;
		}
		if ((size_t)(w->end - w->p) == before)
			return err_set(w->err, "xml: attributes must be separated by spaces");
		const char *name;
		size_t nlen;
		if (read_name(w, &name, &nlen) < 0)
			return -1;
		skip_space(w);
		if (w->p >= w->end || *w->p != '=')
			return err_set(w->err, "xml: attribute without a value");
		w->p++;
		skip_space(w);
		if (w->p >= w->end || (*w->p != '"' && *w->p != '\''))
			return err_set(w->err, "xml: attribute value without quotes");
		char q = *w->p++;
		while (w->p < w->end && *w->p != q) {
			if (*w->p == '<' || ((unsigned char)*w->p < 0x20 && !is_space((unsigned char)*w->p)))
				return err_set(w->err, "xml: bad character in an attribute value");
			w->p++;
		}
		if (w->p >= w->end)
			return err_set(w->err, "xml: unterminated attribute value");
		w->p++;
	}
}

static bool stack_is_target(const struct xml_walk *w, const char *const *names,
			    const size_t *lens, size_t depth)
{
	if (!w->ncomp || depth != w->ncomp)
		return false;
	for (size_t i = 0; i < depth; i++)
		if (lens[i] != w->comp_len[i] || memcmp(names[i], w->comp[i], lens[i]) != 0)
			return false;
	return true;
}

static int xml_walk_run(struct xml_walk *w)
{
	const char *names[AWSQUERY_XML_DEPTH];
	size_t lens[AWSQUERY_XML_DEPTH];
	size_t depth = 0;
	bool seen_root = false;
	if (w->end - w->p >= 3 && memcmp(w->p, "\xEF\xBB\xBF", 3) == 0)
		w->p += 3;
	if (starts(w, "<?xml") && w->p + 5 < w->end && is_space((unsigned char)w->p[5])) {
		if (skip_past(w, "?>", "XML declaration") < 0)
			return -1;
	}
	for (;;) {
		if (read_text(w, depth) < 0)
			return -1;
		if (w->p >= w->end)
			break;
		/* at '<' */
		if (starts(w, "<!--")) {
			w->p += 4;
			if (skip_past(w, "-->", "comment") < 0)
				return -1;
			continue;
		}
		if (starts(w, "<!"))
			return err_set(w->err, "xml: DTDs and CDATA sections are not accepted");
		if (starts(w, "<?"))
			return err_set(w->err, "xml: processing instructions are not accepted");
		if (starts(w, "</")) {
			w->p += 2;
			const char *name;
			size_t nlen;
			if (read_name(w, &name, &nlen) < 0)
				return -1;
			skip_space(w);
			if (w->p >= w->end || *w->p != '>')
				return err_set(w->err, "xml: unterminated end tag");
			w->p++;
			if (depth == 0 || lens[depth - 1] != nlen ||
			    memcmp(names[depth - 1], name, nlen) != 0)
				return err_set(w->err, "xml: end tag </%.*s> does not match", (int)nlen,
					       name);
			if (w->in_target) {
				w->found++;
				w->in_target = false;
				if (w->found > 1)
					return err_set(w->err, "xml: element %.*s appears more than once",
						       (int)nlen, name);
			}
			depth--;
			continue;
		}
		w->p++;
		const char *name;
		size_t nlen;
		if (read_name(w, &name, &nlen) < 0)
			return -1;
		if (depth == 0) {
			if (seen_root)
				return err_set(w->err, "xml: more than one root element");
			seen_root = true;
			snprintf(w->root, sizeof w->root, "%.*s", (int)nlen, name);
		}
		if (w->in_target)
			return err_set(w->err, "xml: element %.*s has child elements",
				       (int)w->comp_len[w->ncomp - 1], w->comp[w->ncomp - 1]);
		if (depth >= AWSQUERY_XML_DEPTH)
			return err_set(w->err, "xml: nested deeper than %d levels", AWSQUERY_XML_DEPTH);
		bool empty = false;
		if (read_attributes(w, &empty) < 0)
			return -1;
		names[depth] = name;
		lens[depth] = nlen;
		depth++;
		if (stack_is_target(w, names, lens, depth)) {
			if (w->found > 0)
				return err_set(w->err, "xml: element %.*s appears more than once", (int)nlen,
					       name);
			w->in_target = true;
			if (w->out) {
				w->out_len = 0;
				w->out[0] = '\0';
			}
		}
		if (empty) {
			if (w->in_target) {
				w->found++;
				w->in_target = false;
			}
			depth--;
		}
	}
	if (!seen_root)
		return err_set(w->err, "xml: no root element");
	if (depth != 0)
		return err_set(w->err, "xml: element %.*s is not closed", (int)lens[depth - 1],
			       names[depth - 1]);
	return 0;
}

static int xml_walk_init(struct xml_walk *w, const char *xml, size_t len, struct err *err)
{
	memset(w, 0, sizeof *w);
	w->err = err;
	if (!xml || len == 0)
		return err_set(err, "xml: empty document");
	if (len > AWSQUERY_XML_MAX)
		return err_set(err, "xml: document larger than %zu bytes", AWSQUERY_XML_MAX);
	if (memchr(xml, '\0', len))
		return err_set(err, "xml: NUL byte");
	size_t bad;
	if (json_utf8_check(xml, len, &bad) < 0)
		return err_set(err, "xml: invalid UTF-8 at offset %zu", bad);
	w->start = w->p = xml;
	w->end = xml + len;
	return 0;
}

int awsquery_xml_text(const char *xml, size_t len, const char *path, char *out, size_t cap,
		      struct err *err)
{
	if (!out || cap == 0 || !path || !*path)
		return err_set(err, "xml: bad arguments");
	out[0] = '\0';
	struct xml_walk w;
	if (xml_walk_init(&w, xml, len, err) < 0)
		return -1;
	const char *s = path;
	while (*s) {
		const char *slash = strchr(s, '/');
		size_t n = slash ? (size_t)(slash - s) : strlen(s);
		if (n == 0 || w.ncomp >= AWSQUERY_XML_DEPTH)
			return err_set(err, "xml: bad path \"%s\"", path);
		w.comp[w.ncomp] = s;
		w.comp_len[w.ncomp++] = n;
		s += n;
		if (*s == '/')
			s++;
	}
	w.out = out;
	w.cap = cap;
	if (xml_walk_run(&w) < 0) {
		out[0] = '\0';
		return -1;
	}
	if (!w.found)
		out[0] = '\0';
	return w.found ? 1 : 0;
}

int awsquery_xml_root(const char *xml, size_t len, char *out, size_t cap, struct err *err)
{
	struct xml_walk w;
	if (!out || cap == 0)
		return err_set(err, "xml: bad arguments");
	out[0] = '\0';
	if (xml_walk_init(&w, xml, len, err) < 0 || xml_walk_run(&w) < 0)
		return -1;
	snprintf(out, cap, "%s", w.root);
	return 1;
}

/* ---- errors ---- */

void awsquery_parse_error(const char *body, size_t len, char *code, size_t code_cap, char *msg,
			  size_t msg_cap)
{
	code[0] = '\0';
	msg[0] = '\0';
	if (!body || !len)
		return;
	static const char *const code_paths[] = {"ErrorResponse/Error/Code",
						 "Response/Errors/Error/Code"};
	static const char *const msg_paths[] = {"ErrorResponse/Error/Message",
						"Response/Errors/Error/Message"};
	for (size_t i = 0; i < 2; i++) {
		struct err e;
		if (awsquery_xml_text(body, len, code_paths[i], code, code_cap, &e) == 1) {
			awsquery_xml_text(body, len, msg_paths[i], msg, msg_cap, &e);
			return;
		}
	}
	code[0] = '\0';
	/* Not an AWS error document (a proxy's page): keep its start for the log. */
	size_t n = len < msg_cap - 1 ? len : msg_cap - 1;
	for (size_t i = 0; i < n; i++)
		msg[i] = (body[i] >= 0x20 && body[i] < 0x7f) ? body[i] : ' ';
	msg[n] = '\0';
}

static int code_is(const char *code, const char *name)
{
	return strcmp(code, name) == 0;
}

enum awsquery_error_class awsquery_classify(long status, const char *code, const char *message)
{
	if (!code)
		code = "";
	if (!message)
		message = "";
	if (code_is(code, "Throttling") || code_is(code, "ThrottlingException") ||
	    code_is(code, "RequestLimitExceeded") || code_is(code, "TooManyRequestsException") ||
	    code_is(code, "SlowDown") || status == 429)
		return AWSQUERY_CLASS_THROTTLE;
	if (code_is(code, "RequestTimeTooSkewed") || code_is(code, "RequestExpired") ||
	    code_is(code, "RequestInTheFuture") || strstr(message, "Signature expired") ||
	    strstr(message, "Signature not yet current"))
		return AWSQUERY_CLASS_SKEW;
	if (code_is(code, "ExpiredToken") || code_is(code, "ExpiredTokenException") ||
	    code_is(code, "InvalidClientTokenId") || code_is(code, "UnrecognizedClientException") ||
	    code_is(code, "SignatureDoesNotMatch") || code_is(code, "IncompleteSignature") ||
	    code_is(code, "InvalidSignatureException"))
		return AWSQUERY_CLASS_CREDENTIALS;
	/* ResourceContention: Auto Scaling is busy with the same group; it says to retry. */
	if (status >= 500 || code_is(code, "ServiceUnavailable") || code_is(code, "InternalFailure") ||
	    code_is(code, "InternalError") || code_is(code, "ResourceContention") ||
	    code_is(code, "RequestTimeout") || status == 408)
		return AWSQUERY_CLASS_RETRY;
	return AWSQUERY_CLASS_FINAL;
}

/* ---- form bodies ---- */

static int form_pair(struct buf *out, const char *name, const char *value)
{
	if (out->len && buf_append_byte(out, '&') < 0)
		return -1;
	if (http_url_encode(out, name, strlen(name)) < 0 || buf_append_byte(out, '=') < 0 ||
	    http_url_encode(out, value, strlen(value)) < 0)
		return -1;
	return 0;
}

int awsquery_form(struct buf *out, const char *action, const char *version,
		  const struct awsquery_param *params, size_t count)
{
	size_t old = out->len;
	int rc = form_pair(out, "Action", action);
	if (rc == 0)
		rc = form_pair(out, "Version", version);
	for (size_t i = 0; rc == 0 && i < count; i++)
		rc = form_pair(out, params[i].name, params[i].value ? params[i].value : "");
	if (rc < 0) {
		out->len = old;
		if (out->data)
			out->data[old] = '\0';
	}
	return rc;
}

int awsquery_split_endpoint(const char *url, char *host, size_t host_cap, char *path,
			    size_t path_cap, struct err *err)
{
	if (!url || (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0))
		return err_set(err, "endpoint \"%s\" is not an http(s) URL", url ? url : "");
	const char *p = strstr(url, "://") + 3;
	size_t hl = strcspn(p, "/?#");
	if (hl == 0 || hl >= host_cap || memchr(p, '@', hl))
		return err_set(err, "endpoint \"%s\" has no usable host", url);
	memcpy(host, p, hl);
	host[hl] = '\0';
	const char *rest = p + hl;
	if (*rest == '?' || *rest == '#')
		return err_set(err, "endpoint \"%s\": no query or fragment allowed", url);
	size_t pl = strlen(rest);
	if (pl == 0) {
		snprintf(path, path_cap, "/");
		return 0;
	}
	if (pl >= path_cap || strpbrk(rest, "?# "))
		return err_set(err, "endpoint \"%s\": unusable path", url);
	memcpy(path, rest, pl + 1);
	return 0;
}

/* ---- the client ---- */

#define DEFAULT_TIMEOUT_MS 10000
#define DEFAULT_RETRY_BASE_MS 200
#define DEFAULT_RETRY_CAP_MS 20000
#define DEFAULT_MAX_ATTEMPTS 8
#define HOST_MAX 256
#define PATH_MAX_LEN 512
#define BODY_MAX ((size_t)64 << 10)

struct qcall {
	struct awsquery_client *c;
	struct qcall *prev, *next;
	uint64_t id;
	char *body;             /* the form body, built once */
	size_t body_len;
	char action[64];
	int fails;              /* retryable failures so far */
	bool creds_retried;
	bool skew_retried;
	bool waiting_creds;
	bool timer_on;
	uint64_t http_id;
	ev_timer delay;
	const struct aws_credentials *used;
	struct awsquery_result res;
	char code[128];
	char msg[512];
	awsquery_done_fn done;
	void *arg;
};

struct awsquery_client {
	struct ev_loop *loop;
	struct http_client *http;
	struct aws_credentials_provider *creds;
	struct sigv4_signer signer;
	char *url;
	char host[HOST_MAX];
	char path[PATH_MAX_LEN];
	char *ca_file;
	char version[32];
	int64_t timeout_ms;
	struct backoff_policy retry;
	int max_attempts;
	struct qcall *calls;
	uint64_t next_id;
	size_t pending;
};

static void q_on_creds(const struct aws_credentials *creds, const char *error, void *arg);

static void qcall_free(struct qcall *q)
{
	struct awsquery_client *c = q->c;
	if (q->waiting_creds)
		aws_credentials_cancel(c->creds, q_on_creds, q);
	if (q->timer_on)
		ev_timer_stop(c->loop, &q->delay);
	if (q->http_id)
		http_client_cancel(c->http, q->http_id);
	if (q->used)
		aws_credentials_unref(q->used);
	if (q->prev)
		q->prev->next = q->next;
	else
		c->calls = q->next;
	if (q->next)
		q->next->prev = q->prev;
	c->pending--;
	free(q->body);
	free(q);
}

static void q_finish(struct qcall *q, enum awsquery_status st, const char *body, size_t len)
{
	awsquery_done_fn done = q->done;
	void *arg = q->arg;
	struct awsquery_result res = q->res;
	char code[sizeof q->code], msg[sizeof q->msg];
	memcpy(code, q->code, sizeof code);
	memcpy(msg, q->msg, sizeof msg);
	res.status = st;
	res.code = st == AWSQUERY_OK ? "" : code;
	res.message = st == AWSQUERY_OK ? "" : msg;
	res.body = body ? body : "";
	res.body_len = body ? len : 0;
	qcall_free(q);
	done(&res, arg);
}

static void q_attempt(struct qcall *q)
{
	q->waiting_creds = true;
	aws_credentials_get(q->c->creds, q_on_creds, q);
}

static void q_on_delay(struct ev_loop *loop, ev_timer *t, int revents)
{
	(void)loop;
	(void)revents;
	struct qcall *q = t->data;
	q->timer_on = false;
	q_attempt(q);
}

static void q_retry_after(struct qcall *q, int64_t delay_ms)
{
	if (delay_ms <= 0) {
		q_attempt(q);
		return;
	}
	ev_timer_set(&q->delay, (double)delay_ms / 1000.0, 0.0);
	ev_timer_start(q->c->loop, &q->delay);
	q->timer_on = true;
}

/* A failure worth another attempt (transport, 5xx, throttling), or the end. */
static void q_retryable(struct qcall *q, const char *body, size_t len, const char *code,
			const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void q_retryable(struct qcall *q, const char *body, size_t len, const char *code,
			const char *fmt, ...)
{
	if (code != q->code)
		snprintf(q->code, sizeof q->code, "%s", code);
	char m[sizeof q->msg];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(m, sizeof m, fmt, ap);
	va_end(ap);
	memcpy(q->msg, m, sizeof m);
	q->fails++;
	if (q->res.attempts >= q->c->max_attempts) {
		q_finish(q, AWSQUERY_UNREACHABLE, body, len);
		return;
	}
	q_retry_after(q, backoff_delay(&q->c->retry, q->fails));
}

static void q_on_http(const struct http_response *resp, void *arg);

static void q_send(struct qcall *q, const struct aws_credentials *creds)
{
	struct awsquery_client *c = q->c;
	struct sigv4_header sh[] = {
		{"Host", c->host},
		{"Content-Type", AWSQUERY_CONTENT_TYPE},
	};
	struct sigv4_request sreq = {
		.method = "POST",
		.path = c->path,
		.headers = sh,
		.header_count = 2,
		.payload_kind = SIGV4_PAYLOAD_BYTES,
		.payload = q->body,
		.payload_len = q->body_len,
	};
	struct sigv4_result sr;
	struct err err = {{0}};
	if (sigv4_sign(&c->signer, creds, &sreq, &sr, &err) < 0) {
		sigv4_result_free(&sr);
		snprintf(q->code, sizeof q->code, "SigningError");
		snprintf(q->msg, sizeof q->msg, "signing: %.400s", err.msg);
		q_finish(q, AWSQUERY_UNREACHABLE, NULL, 0);
		return;
	}
	struct buf lines;
	buf_init(&lines, 64 << 10);
	int rc = buf_printf(&lines, "Host: %s\r\nContent-Type: %s\r\n", c->host,
			    AWSQUERY_CONTENT_TYPE);
	if (rc == 0)
		rc = sigv4_result_append_headers(&sr, &lines);
	sigv4_result_free(&sr);
	/* "Name: value\r\n" lines into the NULL-terminated list http_client wants. */
	const char *hdrs[8];
	size_t nh = 0;
	for (char *s = lines.data; rc == 0 && s && *s && nh < 7;) {
		char *eol = strstr(s, "\r\n");
		if (!eol)
			break;
		*eol = '\0';
		hdrs[nh++] = s;
		s = eol + 2;
	}
	hdrs[nh] = NULL;
	struct http_request req = {
		.method = "POST",
		.url = c->url,
		.headers = hdrs,
		.body = q->body,
		.body_len = q->body_len,
		.timeout_ms = c->timeout_ms,
		.max_body = AWSQUERY_XML_MAX,
		.ca_file = c->ca_file,
		.on_done = q_on_http,
		.arg = q,
	};
	q->http_id = rc == 0 ? http_client_start(c->http, &req) : 0;
	if (lines.data)
		memset(lines.data, 0, lines.len); /* the token and signature */
	buf_free(&lines);
	if (!q->http_id) {
		snprintf(q->code, sizeof q->code, "InternalError");
		snprintf(q->msg, sizeof q->msg, "could not start the request");
		q_finish(q, AWSQUERY_UNREACHABLE, NULL, 0);
		return;
	}
	q->res.attempts++;
	if (q->used)
		aws_credentials_unref(q->used);
	q->used = aws_credentials_ref(creds);
}

static void q_on_creds(const struct aws_credentials *creds, const char *error, void *arg)
{
	struct qcall *q = arg;
	q->waiting_creds = false;
	if (!creds) {
		snprintf(q->code, sizeof q->code, "NoCredentials");
		snprintf(q->msg, sizeof q->msg, "credentials: %s", error ? error : "none");
		q_finish(q, AWSQUERY_UNREACHABLE, NULL, 0);
		return;
	}
	q_send(q, creds);
}

static void q_on_http(const struct http_response *resp, void *arg)
{
	struct qcall *q = arg;
	struct awsquery_client *c = q->c;
	q->http_id = 0;
	q->res.http_status = resp->status;
	if (resp->error != HTTP_OK) {
		q_retryable(q, NULL, 0, "Transport", "%s %s: %s", q->action,
			    http_error_name(resp->error), resp->error_msg);
		return;
	}
	if (resp->status >= 200 && resp->status < 300) {
		q_finish(q, AWSQUERY_OK, resp->body, resp->body_len);
		return;
	}
	awsquery_parse_error(resp->body, resp->body_len, q->code, sizeof q->code, q->msg,
			     sizeof q->msg);
	switch (awsquery_classify(resp->status, q->code, q->msg)) {
	case AWSQUERY_CLASS_THROTTLE:
		q->res.throttled++;
		/* fall through */
	case AWSQUERY_CLASS_RETRY: {
		char m[sizeof q->msg];
		memcpy(m, q->msg, sizeof m);
		q_retryable(q, resp->body, resp->body_len, q->code[0] ? q->code : "HTTP",
			    "%s: HTTP %ld %s", q->action, resp->status, m);
		return;
	}
	case AWSQUERY_CLASS_CREDENTIALS:
		if (q->creds_retried) {
			q_finish(q, AWSQUERY_UNREACHABLE, resp->body, resp->body_len);
			return;
		}
		q->creds_retried = true;
		log_warn("awsquery.credentials_refresh", "action=%s error=%s message=\"%s\": "
			 "refreshing the credentials and retrying once", q->action, q->code, q->msg);
		aws_credentials_invalidate(c->creds, q->used);
		q_retry_after(q, 0);
		return;
	case AWSQUERY_CLASS_SKEW:
		if (!q->skew_retried && sigv4_signer_note_skew(&c->signer, q->code, q->msg,
							       http_response_header(resp, "Date"))) {
			q->skew_retried = true;
			log_warn("awsquery.clock_skew", "action=%s offset_ms=%" PRId64 ": re-signing once",
				 q->action, c->signer.clock_offset_ms);
			q_retry_after(q, 0);
			return;
		}
		q_finish(q, AWSQUERY_UNREACHABLE, resp->body, resp->body_len);
		return;
	case AWSQUERY_CLASS_FINAL:
		q_finish(q, AWSQUERY_FAILED, resp->body, resp->body_len);
		return;
	}
}

static int name_ok(const char *s, size_t max)
{
	size_t n = s ? strlen(s) : 0;
	if (n == 0 || n > max)
		return 0;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '-' || *s == '.'))
			return 0;
	return 1;
}

struct awsquery_client *awsquery_client_new(struct ev_loop *loop, struct http_client *http,
					    struct aws_credentials_provider *creds,
					    const struct awsquery_client_opts *o, struct err *err)
{
	if (!loop || !http || !creds || !o || !o->region || !*o->region ||
	    !name_ok(o->service, 63) || !name_ok(o->version, 31)) {
		err_set(err, "awsquery: loop, http client, credentials, region, service and "
			"version are required");
		return NULL;
	}
	struct awsquery_client *c = calloc(1, sizeof *c);
	if (!c) {
		err_set(err, "awsquery: out of memory");
		return NULL;
	}
	c->loop = loop;
	c->http = http;
	c->creds = creds;
	if (sigv4_signer_init(&c->signer, o->region, o->service, NULL, err) < 0) {
		free(c);
		return NULL;
	}
	struct buf url;
	buf_init(&url, 4096);
	if (o->endpoint && *o->endpoint)
		buf_append_str(&url, o->endpoint);
	else
		buf_printf(&url, "https://%s.%s.amazonaws.com", o->service, o->region);
	if (!url.data ||
	    awsquery_split_endpoint(url.data, c->host, sizeof c->host, c->path, sizeof c->path,
				    err) < 0) {
		if (!url.data)
			err_set(err, "awsquery: out of memory");
		buf_free(&url);
		free(c);
		return NULL;
	}
	/* The URL we call: scheme and host as given, the path we sign. */
	const char *p = strstr(url.data, "://") + 3;
	url.len = (size_t)(p - url.data) + strlen(c->host);
	url.data[url.len] = '\0';
	buf_append_str(&url, c->path);
	c->url = buf_detach(&url, NULL);
	snprintf(c->version, sizeof c->version, "%s", o->version);
	c->ca_file = o->ca_file ? strdup(o->ca_file) : NULL;
	c->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : DEFAULT_TIMEOUT_MS;
	c->retry.base_ms = o->retry_base_ms > 0 ? o->retry_base_ms : DEFAULT_RETRY_BASE_MS;
	c->retry.cap_ms = o->retry_cap_ms > 0 ? o->retry_cap_ms : DEFAULT_RETRY_CAP_MS;
	c->max_attempts = o->max_attempts > 0 ? o->max_attempts : DEFAULT_MAX_ATTEMPTS;
	c->next_id = 1;
	if (!c->url || (o->ca_file && !c->ca_file)) {
		awsquery_client_free(c);
		err_set(err, "awsquery: out of memory");
		return NULL;
	}
	return c;
}

void awsquery_client_free(struct awsquery_client *c)
{
	if (!c)
		return;
	while (c->calls)
		qcall_free(c->calls);
	sigv4_signer_clear(&c->signer);
	free(c->url);
	free(c->ca_file);
	free(c);
}

uint64_t awsquery_call(struct awsquery_client *c, const char *action,
		       const struct awsquery_param *params, size_t count, awsquery_done_fn done,
		       void *arg)
{
	if (!c || !name_ok(action, 63) || (count && !params) || !done)
		return 0;
	for (size_t i = 0; i < count; i++)
		if (!params[i].name || !*params[i].name)
			return 0;
	struct qcall *q = calloc(1, sizeof *q);
	if (!q)
		return 0;
	struct buf body;
	buf_init(&body, BODY_MAX);
	if (awsquery_form(&body, action, c->version, params, count) < 0 || !body.data) {
		buf_free(&body);
		free(q);
		return 0;
	}
	q->body = buf_detach(&body, &q->body_len);
	q->c = c;
	q->id = c->next_id++;
	snprintf(q->action, sizeof q->action, "%s", action);
	q->done = done;
	q->arg = arg;
	ev_timer_init(&q->delay, q_on_delay, 0.0, 0.0);
	q->delay.data = q;
	q->next = c->calls;
	if (c->calls)
		c->calls->prev = q;
	c->calls = q;
	c->pending++;
	q_attempt(q);
	return q->id;
}

void awsquery_cancel(struct awsquery_client *c, uint64_t id)
{
	if (!c || !id)
		return;
	for (struct qcall *q = c->calls; q; q = q->next) {
		if (q->id == id) {
			qcall_free(q);
			return;
		}
	}
}

size_t awsquery_pending(const struct awsquery_client *c)
{
	return c ? c->pending : 0;
}
