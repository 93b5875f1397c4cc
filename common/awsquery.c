#include "awsquery.h"

#include <ev.h>
#include <expat.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "awsretry.h"
#include "backoff.h"
#include "crypto.h"
#include "http_client.h"
#include "json.h"
#include "log.h"
#include "sigv4.h"

/* ---- XML ---- */

/*
 * Debian's libexpat does the XML 1.0 parsing (well-formedness, entities,
 * character references, UTF-8); the handlers below keep the stack of open
 * element names and refuse, by stopping the parser, everything a Query answer
 * never holds: a DOCTYPE (before its internal subset is read, so no entity is
 * ever declared, let alone expanded), CDATA sections, processing
 * instructions, an encoding declaration other than UTF-8, nesting deeper than
 * AWSQUERY_XML_DEPTH. Without a DTD the only entities expat knows are the
 * five predefined ones, so any other is an "undefined entity" error; expat
 * never loads external entities unless given a handler, and none is set.
 *
 * Expat's billion-laughs limits (XML_SetBillionLaughsAttackProtection*, 2.4.0)
 * are declared only when XML_DTD is defined, which its installed header leaves
 * to the library's own build; they guard entity expansion, which the DOCTYPE
 * refusal already rules out, and their defaults are on in Debian's build.
 *
 * Before expat sees the document, a byte scan refuses what XML forbids anyway
 * but deserves a plain message: NUL, other control bytes, invalid UTF-8.
 */
struct xml_walk {
	XML_Parser parser;
	struct err *err;
	bool failed;    /* a handler refused: err says why, the parser is stopped */
	/* the element asked for */
	const char *comp[AWSQUERY_XML_DEPTH];
	size_t comp_len[AWSQUERY_XML_DEPTH];
	size_t ncomp;
	char *out;
	size_t cap, out_len;
	int found;      /* elements at the path closed so far */
	bool in_target; /* the stack is exactly the path */
	/* how much of the stack matches the path (a prefix of it) */
	size_t depth, matched;
	/* the root's name, for awsquery_xml_root */
	char root[AWSQUERY_NAME_MAX + 1];
};

/* Records a refusal and stops expat; later callbacks (expat may still make
 * some) do nothing. */
static void xml_fail(struct xml_walk *w, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void xml_fail(struct xml_walk *w, const char *fmt, ...)
{
	if (w->failed)
		return;
	w->failed = true;
	if (w->err) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(w->err->msg, sizeof w->err->msg, fmt, ap);
		va_end(ap);
	}
	XML_StopParser(w->parser, XML_FALSE);
}

/* The local part of a name (after the last ':'); NULL when there is none. */
static const char *local_name(const XML_Char *name, size_t *len)
{
	const char *local = name;
	for (const char *c = name; *c; c++)
		if (*c == ':')
			local = c + 1;
	*len = strlen(local);
	return *len ? local : NULL;
}

static void XMLCALL on_start(void *ud, const XML_Char *name, const XML_Char **attrs)
{
	(void)attrs; /* read for well-formedness by expat, then ignored */
	struct xml_walk *w = ud;
	if (w->failed)
		return;
	size_t nlen;
	const char *local = local_name(name, &nlen);
	if (strlen(name) > AWSQUERY_NAME_MAX) {
		xml_fail(w, "xml: a name is longer than %d bytes", AWSQUERY_NAME_MAX);
		return;
	}
	if (!local) {
		xml_fail(w, "xml: a name ends with ':'");
		return;
	}
	if (w->in_target) {
		xml_fail(w, "xml: element %.*s has child elements",
			 (int)w->comp_len[w->ncomp - 1], w->comp[w->ncomp - 1]);
		return;
	}
	if (w->depth >= AWSQUERY_XML_DEPTH) {
		xml_fail(w, "xml: nested deeper than %d levels", AWSQUERY_XML_DEPTH);
		return;
	}
	if (w->depth == 0)
		snprintf(w->root, sizeof w->root, "%s", local);
	/* The stack matches the path so far, and this element is the next part. */
	if (w->matched == w->depth && w->depth < w->ncomp && w->comp_len[w->depth] == nlen &&
	    memcmp(w->comp[w->depth], local, nlen) == 0)
		w->matched++;
	w->depth++;
	if (w->ncomp && w->matched == w->ncomp && w->depth == w->ncomp) {
		if (w->found > 0) {
			xml_fail(w, "xml: element %s appears more than once", local);
			return;
		}
		w->in_target = true;
		if (w->out) {
			w->out_len = 0;
			w->out[0] = '\0';
		}
	}
}

static void XMLCALL on_end(void *ud, const XML_Char *name)
{
	(void)name; /* expat has checked that it matches the start tag */
	struct xml_walk *w = ud;
	if (w->failed)
		return;
	if (w->in_target) {
		w->in_target = false;
		w->found++;
	}
	if (w->matched == w->depth)
		w->matched--;
	w->depth--;
}

static void XMLCALL on_text(void *ud, const XML_Char *s, int len)
{
	struct xml_walk *w = ud;
	if (w->failed || !w->in_target || !w->out || len <= 0)
		return;
	if (w->out_len + (size_t)len >= w->cap) {
		xml_fail(w, "xml: the text of %.*s is longer than %zu bytes",
			 (int)w->comp_len[w->ncomp - 1], w->comp[w->ncomp - 1], w->cap - 1);
		return;
	}
	memcpy(w->out + w->out_len, s, (size_t)len);
	w->out_len += (size_t)len;
	w->out[w->out_len] = '\0';
}

static void XMLCALL on_doctype(void *ud, const XML_Char *name, const XML_Char *sysid,
			       const XML_Char *pubid, int has_internal_subset)
{
	(void)name;
	(void)sysid;
	(void)pubid;
	(void)has_internal_subset;
	xml_fail(ud, "xml: DTDs are not accepted");
}

/* Unreachable while DOCTYPEs are refused; kept so an entity declaration can
 * never be taken even if that changed. */
static void XMLCALL on_entity_decl(void *ud, const XML_Char *name, int is_param,
				   const XML_Char *value, int value_len, const XML_Char *base,
				   const XML_Char *sysid, const XML_Char *pubid,
				   const XML_Char *notation)
{
	(void)name;
	(void)is_param;
	(void)value;
	(void)value_len;
	(void)base;
	(void)sysid;
	(void)pubid;
	(void)notation;
	xml_fail(ud, "xml: DTDs and entity declarations are not accepted");
}

static void XMLCALL on_cdata(void *ud)
{
	xml_fail(ud, "xml: CDATA sections are not accepted");
}

static void XMLCALL on_pi(void *ud, const XML_Char *target, const XML_Char *data)
{
	(void)target;
	(void)data;
	xml_fail(ud, "xml: processing instructions are not accepted");
}

/* The parser reads UTF-8 whatever the document says; one that says something
 * else is mislabelled, and refused rather than read as what it is not. */
static void XMLCALL on_xml_decl(void *ud, const XML_Char *version, const XML_Char *encoding,
				int standalone)
{
	(void)version;
	(void)standalone;
	if (encoding && strcasecmp(encoding, "UTF-8") != 0)
		xml_fail(ud, "xml: encoding \"%.40s\" is not accepted (UTF-8 only)", encoding);
}

static int xml_check_bytes(const char *xml, size_t len, struct err *err)
{
	if (!xml || len == 0)
		return err_set(err, "xml: empty document");
	if (len > AWSQUERY_XML_MAX)
		return err_set(err, "xml: document larger than %zu bytes", AWSQUERY_XML_MAX);
	if (memchr(xml, '\0', len))
		return err_set(err, "xml: NUL byte");
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)xml[i];
		if (c < 0x20 && c != '\t' && c != '\n' && c != '\r')
			return err_set(err, "xml: control character 0x%02x at offset %zu", c, i);
	}
	size_t bad;
	if (json_utf8_check(xml, len, &bad) < 0)
		return err_set(err, "xml: invalid UTF-8 at offset %zu", bad);
	return 0;
}

/* Parses the whole document with the walk's path (ncomp may be 0). */
static int xml_walk_run(struct xml_walk *w, const char *xml, size_t len)
{
	if (xml_check_bytes(xml, len, w->err) < 0)
		return -1;
	/* "UTF-8" here overrides any encoding declaration (on_xml_decl refuses
	 * another one) and rules out UTF-16 and the rest. */
	XML_Parser p = XML_ParserCreate("UTF-8");
	if (!p)
		return err_set(w->err, "xml: out of memory");
	w->parser = p;
	XML_SetUserData(p, w);
	XML_SetElementHandler(p, on_start, on_end);
	XML_SetCharacterDataHandler(p, on_text);
	XML_SetStartDoctypeDeclHandler(p, on_doctype);
	XML_SetEntityDeclHandler(p, on_entity_decl);
	XML_SetStartCdataSectionHandler(p, on_cdata);
	XML_SetProcessingInstructionHandler(p, on_pi);
	XML_SetXmlDeclHandler(p, on_xml_decl);
	XML_SetParamEntityParsing(p, XML_PARAM_ENTITY_PARSING_NEVER);
	int rc = 0;
	/* len <= AWSQUERY_XML_MAX: fits an int. */
	if (XML_Parse(p, xml, (int)len, XML_TRUE) != XML_STATUS_OK) {
		if (!w->failed)
			err_set(w->err, "xml: %s at line %lu, column %lu",
				XML_ErrorString(XML_GetErrorCode(p)),
				(unsigned long)XML_GetCurrentLineNumber(p),
				(unsigned long)XML_GetCurrentColumnNumber(p) + 1);
		rc = -1;
	} else if (w->failed) {
		rc = -1; /* stopped, yet expat called it a success: never take the result */
	}
	XML_ParserFree(p);
	w->parser = NULL;
	return rc;
}

int awsquery_xml_text(const char *xml, size_t len, const char *path, char *out, size_t cap,
		      struct err *err)
{
	if (!out || cap == 0 || !path || !*path)
		return err_set(err, "xml: bad arguments");
	out[0] = '\0';
	struct xml_walk w;
	memset(&w, 0, sizeof w);
	w.err = err;
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
	if (xml_walk_run(&w, xml, len) < 0) {
		out[0] = '\0';
		return -1;
	}
	if (!w.found)
		out[0] = '\0';
	return w.found ? 1 : 0;
}

int awsquery_xml_root(const char *xml, size_t len, char *out, size_t cap, struct err *err)
{
	if (!out || cap == 0)
		return err_set(err, "xml: bad arguments");
	out[0] = '\0';
	struct xml_walk w;
	memset(&w, 0, sizeof w);
	w.err = err;
	if (xml_walk_run(&w, xml, len) < 0)
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

/* The Query protocol's error names beyond those every AWS protocol shares.
 * ResourceContention: Auto Scaling is busy with the same group; it says to retry. */
static const char *const query_throttle[] = {"SlowDown", NULL};
static const char *const query_retry[] = {"ResourceContention", NULL};
static const struct awsretry_names query_names = {query_throttle, NULL, query_retry};

enum awsquery_error_class awsquery_classify(long status, const char *code, const char *message)
{
	switch (awsretry_classify(status, code, NULL, message, &query_names)) {
	case AWSRETRY_THROTTLE:
		return AWSQUERY_CLASS_THROTTLE;
	case AWSRETRY_RETRY:
		return AWSQUERY_CLASS_RETRY;
	case AWSRETRY_CREDENTIALS:
		return AWSQUERY_CLASS_CREDENTIALS;
	case AWSRETRY_SKEW:
		return AWSQUERY_CLASS_SKEW;
	case AWSRETRY_SERVICE:
		break;
	}
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
	struct awsretry rs;
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
	struct awsretry_limits lim; /* max_requests: max_attempts */
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
	res.throttled = q->rs.throttled;
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

static void q_set_msg(struct qcall *q, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The message of a failure (fmt may read the old one: written through a copy). */
static void q_set_msg(struct qcall *q, const char *fmt, ...)
{
	char m[sizeof q->msg];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(m, sizeof m, fmt, ap);
	va_end(ap);
	memcpy(q->msg, m, sizeof m);
}

/* After a failure of class cls: another attempt, or the end (with the
 * answer's body, when one came). */
static void q_retry_or_stop(struct qcall *q, enum awsretry_class cls,
			    const struct http_response *resp)
{
	struct awsquery_client *c = q->c;
	const char *body = resp ? resp->body : NULL;
	size_t len = resp ? resp->body_len : 0;
	int64_t delay_ms = 0;
	switch (awsretry_next(&q->rs, &c->lim, cls, q->res.attempts, &c->signer, q->code, q->msg,
			      resp ? http_response_header(resp, "Date") : NULL, &delay_ms)) {
	case AWSRETRY_STOP:
		q_finish(q, AWSQUERY_UNREACHABLE, body, len);
		return;
	case AWSRETRY_WAIT:
		q_retry_after(q, delay_ms);
		return;
	case AWSRETRY_REFRESH:
		log_warn("awsquery.credentials_refresh", "action=%s error=%s message=\"%s\": "
			 "refreshing the credentials and retrying once", q->action, q->code, q->msg);
		aws_credentials_invalidate(c->creds, q->used);
		q_retry_after(q, 0);
		return;
	case AWSRETRY_RESIGN:
		log_warn("awsquery.clock_skew", "action=%s offset_ms=%" PRId64 ": re-signing once",
			 q->action, c->signer.clock_offset_ms);
		q_retry_after(q, 0);
		return;
	}
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
	q->http_id = 0;
	q->res.http_status = resp->status;
	if (resp->error != HTTP_OK) {
		snprintf(q->code, sizeof q->code, "Transport");
		q_set_msg(q, "%s %s: %s", q->action, http_error_name(resp->error), resp->error_msg);
		q_retry_or_stop(q, AWSRETRY_RETRY, NULL);
		return;
	}
	if (resp->status >= 200 && resp->status < 300) {
		q_finish(q, AWSQUERY_OK, resp->body, resp->body_len);
		return;
	}
	awsquery_parse_error(resp->body, resp->body_len, q->code, sizeof q->code, q->msg,
			     sizeof q->msg);
	enum awsretry_class cls = awsretry_classify(resp->status, q->code, NULL, q->msg,
						    &query_names);
	if (cls == AWSRETRY_SERVICE) {
		q_finish(q, AWSQUERY_FAILED, resp->body, resp->body_len);
		return;
	}
	if (cls == AWSRETRY_THROTTLE || cls == AWSRETRY_RETRY) {
		if (!q->code[0])
			snprintf(q->code, sizeof q->code, "HTTP");
		q_set_msg(q, "%s: HTTP %ld %s", q->action, resp->status, q->msg);
	}
	q_retry_or_stop(q, cls, resp);
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
	/* Throttling and failures share one budget of requests in all. */
	c->lim.backoff.base_ms = o->retry_base_ms > 0 ? o->retry_base_ms : DEFAULT_RETRY_BASE_MS;
	c->lim.backoff.cap_ms = o->retry_cap_ms > 0 ? o->retry_cap_ms : DEFAULT_RETRY_CAP_MS;
	c->lim.max_requests = o->max_attempts > 0 ? o->max_attempts : DEFAULT_MAX_ATTEMPTS;
	c->lim.throttle_is_failure = true;
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
