#include "cwlogs.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "awsjson.h"
#include "crypto.h"
#include "json.h"
#include "log.h"

#define DEFAULT_RETRY_BASE_MS 200
#define DEFAULT_UNREACHABLE_ATTEMPTS 2
#define BODY_MAX ((size_t)64 << 20) /* 1 MiB of messages, escaped, fits easily */

/* The steps of a put: awsjson carries out each one as an action. */
enum step { ST_PUT, ST_CREATE_STREAM, ST_CREATE_GROUP, ST_RETENTION };

static const char *const step_target[] = {
	[ST_PUT] = "PutLogEvents",
	[ST_CREATE_STREAM] = "CreateLogStream",
	[ST_CREATE_GROUP] = "CreateLogGroup",
	[ST_RETENTION] = "PutRetentionPolicy",
};

enum read_kind { RD_FILTER, RD_GET };

/* A put (one batch, its steps) or a read (one request). */
struct cwcall {
	struct cwlogs *cw;
	struct cwcall *prev, *next;
	uint64_t id;
	uint64_t jid;            /* the awsjson call of the current step */
	/* puts */
	char *group;
	char *stream;            /* reads: GetLogEvents' stream, names its events */
	const struct cwlogs_event *ev;
	size_t n;
	enum step step;
	int rounds;              /* create rounds so far */
	bool creds_retried;      /* the one refresh, across the steps */
	bool skew_retried;
	struct cwlogs_result res;
	cwlogs_done_fn done;
	/* reads */
	cwlogs_read_fn read_done;
	void *arg;
};

struct cwlogs {
	struct awsjson *j;
	int retention_days;
	struct cwcall *calls;
	uint64_t next_id;
	size_t pending;
};

/* ---- payload hash ---- */

/*
 * SHA-256 of the request body with the x86 SHA extensions when the CPU has
 * them (FIPS 180-4; the SHA-NI instructions as Intel documents them). The body
 * is hashed for every signature, and mbedTLS 2.28 has no SHA-NI path: at full
 * log rate this hash was the largest single cost of the agent. Elsewhere,
 * crypto_sha256.
 */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <immintrin.h>

static const uint32_t sha256_k[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
	0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
	0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
	0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
	0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
	0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
	0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
	0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
	0xc67178f2,
};

__attribute__((target("sha,sse4.1,ssse3"))) static void sha256_ni_blocks(uint32_t st[8],
									 const uint8_t *p,
									 size_t blocks)
{
	/* Words are big-endian in the message: swap the bytes of each. */
	const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
	/* The instructions keep the state as ABEF and CDGH. */
	__m128i t = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&st[0]), 0xB1); /* CDAB */
	__m128i s1 = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&st[4]), 0x1B); /* EFGH */
	__m128i s0 = _mm_alignr_epi8(t, s1, 8);                                         /* ABEF */
	s1 = _mm_blend_epi16(s1, t, 0xF0);                                               /* CDGH */
	for (; blocks > 0; blocks--, p += 64) {
		__m128i abef = s0, cdgh = s1, m[4];
		for (int i = 0; i < 16; i++) {
			__m128i w;
			if (i < 4) {
				w = m[i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16 * i)),
							    bswap);
			} else {
				/* W[t] = s1(W[t-2]) + W[t-7] + s0(W[t-15]) + W[t-16], four at a time. */
				__m128i x = _mm_sha256msg1_epu32(m[i & 3], m[(i + 1) & 3]);
				x = _mm_add_epi32(x, _mm_alignr_epi8(m[(i + 3) & 3], m[(i + 2) & 3], 4));
				w = m[i & 3] = _mm_sha256msg2_epu32(x, m[(i + 3) & 3]);
			}
			__m128i k = _mm_add_epi32(w, _mm_loadu_si128((const __m128i *)&sha256_k[4 * i]));
			s1 = _mm_sha256rnds2_epu32(s1, s0, k);
			s0 = _mm_sha256rnds2_epu32(s0, s1, _mm_shuffle_epi32(k, 0x0E));
		}
		s0 = _mm_add_epi32(s0, abef);
		s1 = _mm_add_epi32(s1, cdgh);
	}
	t = _mm_shuffle_epi32(s0, 0x1B);    /* FEBA */
	s1 = _mm_shuffle_epi32(s1, 0xB1);   /* DCHG */
	s0 = _mm_blend_epi16(t, s1, 0xF0);  /* DCBA */
	s1 = _mm_alignr_epi8(s1, t, 8);     /* HGFE */
	_mm_storeu_si128((__m128i *)&st[0], s0);
	_mm_storeu_si128((__m128i *)&st[4], s1);
}

static int have_sha_ni(void)
{
	static int known = -1;
	if (known < 0) {
		unsigned a = 0, b = 0, c = 0, d = 0;
		known = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b >> 29) & 1;
	}
	return known;
}

static void sha256_ni(const void *data, size_t len, uint8_t out[32])
{
	uint32_t st[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
			  0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
	const uint8_t *p = data;
	size_t full = len / 64;
	sha256_ni_blocks(st, p, full);
	uint8_t tail[128] = {0};
	size_t rest = len - full * 64;
	memcpy(tail, p + full * 64, rest);
	tail[rest] = 0x80;
	size_t tl = rest + 9 <= 64 ? 64 : 128;
	uint64_t bits = (uint64_t)len * 8;
	for (int i = 0; i < 8; i++)
		tail[tl - 1 - i] = (uint8_t)(bits >> (8 * i));
	sha256_ni_blocks(st, tail, tl / 64);
	for (int i = 0; i < 8; i++) {
		out[4 * i] = (uint8_t)(st[i] >> 24);
		out[4 * i + 1] = (uint8_t)(st[i] >> 16);
		out[4 * i + 2] = (uint8_t)(st[i] >> 8);
		out[4 * i + 3] = (uint8_t)st[i];
	}
}
#endif

void cwlogs_sha256_hex(const void *data, size_t len, char out[65], int allow_fast)
{
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
	if (allow_fast && have_sha_ni()) {
		uint8_t d[32];
		sha256_ni(data, len, d);
		crypto_hex(d, 32, out);
		return;
	}
#endif
	(void)allow_fast;
	crypto_sha256_hex(data, len, out);
}

/* ---- JSON building ---- */

static const char hexdig[] = "0123456789abcdef";

static inline int needs_escape(unsigned char c)
{
	return c < 0x20 || c == '"' || c == '\\';
}

size_t cwlogs_json_string_len(const char *s, size_t len)
{
	size_t n = 2;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (!needs_escape(c))
			n++;
		else if (c == '"' || c == '\\' || c == '\n' || c == '\r' || c == '\t' || c == '\b' ||
			 c == '\f')
			n += 2;
		else
			n += 6;
	}
	return n;
}

int cwlogs_json_string(struct buf *out, const char *s, size_t len)
{
	if (buf_append_byte(out, '"') < 0)
		return -1;
	size_t run = 0;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (!needs_escape(c))
			continue;
		if (i > run && buf_append(out, s + run, i - run) < 0)
			return -1;
		run = i + 1;
		char esc[6] = {'\\', 0};
		size_t el = 2;
		switch (c) {
		case '"': esc[1] = '"'; break;
		case '\\': esc[1] = '\\'; break;
		case '\n': esc[1] = 'n'; break;
		case '\r': esc[1] = 'r'; break;
		case '\t': esc[1] = 't'; break;
		case '\b': esc[1] = 'b'; break;
		case '\f': esc[1] = 'f'; break;
		default:
			esc[1] = 'u';
			esc[2] = '0';
			esc[3] = '0';
			esc[4] = hexdig[c >> 4];
			esc[5] = hexdig[c & 15];
			el = 6;
		}
		if (buf_append(out, esc, el) < 0)
			return -1;
	}
	if (len > run && buf_append(out, s + run, len - run) < 0)
		return -1;
	return buf_append_byte(out, '"');
}

int cwlogs_put_body(struct buf *out, const char *group, const char *stream,
		    const struct cwlogs_event *events, size_t count)
{
	size_t old = out->len;
	int rc = buf_append_str(out, "{\"logGroupName\":");
	rc |= cwlogs_json_string(out, group, strlen(group));
	rc |= buf_append_str(out, ",\"logStreamName\":");
	rc |= cwlogs_json_string(out, stream, strlen(stream));
	rc |= buf_append_str(out, ",\"logEvents\":[");
	for (size_t i = 0; rc == 0 && i < count; i++) {
		char num[48];
		int k = snprintf(num, sizeof num, "%s{\"timestamp\":%" PRId64 ",\"message\":",
				 i ? "," : "", events[i].ts_ms);
		rc |= buf_append(out, num, (size_t)k);
		rc |= cwlogs_json_string(out, events[i].message, events[i].len);
		rc |= buf_append_byte(out, '}');
	}
	rc |= buf_append_str(out, "]}");
	if (rc) {
		out->len = old;
		if (out->data)
			out->data[old] = '\0';
		return -1;
	}
	return 0;
}


/* ---- answers ---- */

void cwlogs_parse_error(const char *body, size_t len, const char *error_type_header,
			char *code, size_t code_cap, char *msg, size_t msg_cap)
{
	char qcode[8]; /* CloudWatch Logs sends no x-amzn-query-error */
	awsjson_parse_error(body, len, error_type_header, NULL, code, code_cap, qcode, sizeof qcode,
			    NULL, msg, msg_cap);
}

static int64_t opt_index(const cJSON *info, const char *key, int64_t max)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(info, key);
	if (!cJSON_IsNumber(v) || v->valuedouble < 0)
		return -1;
	double d = v->valuedouble;
	return d > (double)max ? max : (int64_t)d;
}

int cwlogs_parse_rejected(const char *body, size_t len, size_t count, struct cwlogs_result *res)
{
	res->too_new_start = res->too_old_end = res->expired_end = -1;
	res->rejected = 0;
	if (!len)
		return 0;
	cJSON *doc = json_parse(body, len, CWLOGS_MAX_ANSWER, NULL);
	if (!doc)
		return -1;
	const cJSON *info = cJSON_GetObjectItemCaseSensitive(doc, "rejectedLogEventsInfo");
	if (cJSON_IsObject(info)) {
		int64_t n = (int64_t)count;
		res->too_new_start = opt_index(info, "tooNewLogEventStartIndex", n);
		res->too_old_end = opt_index(info, "tooOldLogEventEndIndex", n);
		res->expired_end = opt_index(info, "expiredLogEventEndIndex", n);
		/* Too old and expired both cut from the front; count the union once. */
		int64_t front = res->too_old_end > res->expired_end ? res->too_old_end
								      : res->expired_end;
		if (front < 0)
			front = 0;
		int64_t back = res->too_new_start >= 0 ? n - res->too_new_start : 0;
		if (front + back > n)
			back = n - front;
		res->rejected = (size_t)(front + back);
	}
	cJSON_Delete(doc);
	return 0;
}

static int code_is(const char *code, const char *name)
{
	return strcmp(code, name) == 0;
}

/* Throttling to CloudWatch Logs beyond awsjson's list (a put waits it out). */
static const char *const throttle_codes[] = {"LimitExceededException", NULL};

/* Refusals: the request as it is will never be accepted. */
static int refused(long status, const char *code)
{
	return code_is(code, "InvalidParameterException") ||
	       code_is(code, "SerializationException") || code_is(code, "ValidationException") ||
	       code_is(code, "InvalidParameterValue") || status == 413;
}

enum cwlogs_error_class cwlogs_classify(long status, const char *code, const char *message)
{
	if (!code)
		code = "";
	if (code_is(code, "ResourceNotFoundException"))
		return CWLOGS_CLASS_NOT_FOUND;
	if (code_is(code, "ResourceAlreadyExistsException") ||
	    code_is(code, "DataAlreadyAcceptedException"))
		return CWLOGS_CLASS_EXISTS;
	for (const char *const *t = throttle_codes; *t; t++)
		if (code_is(code, *t))
			return CWLOGS_CLASS_THROTTLE;
	switch (awsjson_classify(status, code, NULL, message)) {
	case AWSJSON_CLASS_THROTTLE:
		return CWLOGS_CLASS_THROTTLE;
	case AWSJSON_CLASS_SKEW:
		return CWLOGS_CLASS_SKEW;
	case AWSJSON_CLASS_CREDENTIALS:
		return CWLOGS_CLASS_CREDENTIALS;
	case AWSJSON_CLASS_RETRY:
		return refused(status, code) ? CWLOGS_CLASS_REFUSED : CWLOGS_CLASS_RETRY;
	case AWSJSON_CLASS_SERVICE:
		break;
	}
	return refused(status, code) ? CWLOGS_CLASS_REFUSED : CWLOGS_CLASS_OTHER;
}

/* ---- calls ---- */

static void call_free(struct cwcall *c)
{
	struct cwlogs *cw = c->cw;
	if (c->jid)
		awsjson_cancel(cw->j, c->jid);
	if (c->prev)
		c->prev->next = c->next;
	else
		cw->calls = c->next;
	if (c->next)
		c->next->prev = c->prev;
	cw->pending--;
	free(c->group);
	free(c->stream);
	free(c);
}

static struct cwcall *call_add(struct cwlogs *cw)
{
	struct cwcall *c = calloc(1, sizeof *c);
	if (!c)
		return NULL;
	c->cw = cw;
	c->id = cw->next_id++;
	c->next = cw->calls;
	if (cw->calls)
		cw->calls->prev = c;
	cw->calls = c;
	cw->pending++;
	return c;
}

/* code and msg may point into an awsjson result: done runs before it ends. */
static void finish(struct cwcall *c, enum cwlogs_status st, const char *code, const char *msg)
{
	struct cwlogs_result res = c->res;
	res.status = st;
	res.error_code = st == CWLOGS_OK ? "" : code;
	res.message = st == CWLOGS_OK ? "" : msg;
	cwlogs_done_fn done = c->done;
	void *arg = c->arg;
	call_free(c);
	done(&res, arg);
}

static int build_body(struct cwcall *c, struct buf *body)
{
	struct cwlogs *cw = c->cw;
	int rc = 0;
	switch (c->step) {
	case ST_PUT:
		return cwlogs_put_body(body, c->group, c->stream, c->ev, c->n);
	case ST_CREATE_STREAM:
		rc |= buf_append_str(body, "{\"logGroupName\":");
		rc |= cwlogs_json_string(body, c->group, strlen(c->group));
		rc |= buf_append_str(body, ",\"logStreamName\":");
		rc |= cwlogs_json_string(body, c->stream, strlen(c->stream));
		rc |= buf_append_byte(body, '}');
		return rc;
	case ST_CREATE_GROUP:
		rc |= buf_append_str(body, "{\"logGroupName\":");
		rc |= cwlogs_json_string(body, c->group, strlen(c->group));
		rc |= buf_append_byte(body, '}');
		return rc;
	case ST_RETENTION:
		rc |= buf_append_str(body, "{\"logGroupName\":");
		rc |= cwlogs_json_string(body, c->group, strlen(c->group));
		rc |= buf_printf(body, ",\"retentionInDays\":%d}", cw->retention_days);
		return rc;
	}
	return -1;
}

static void on_step(const struct awsjson_result *r, void *arg);

/* Sends the current step. -1 (nothing started) when out of memory. */
static int send_step(struct cwcall *c)
{
	struct buf body;
	buf_init(&body, BODY_MAX);
	if (build_body(c, &body) < 0) {
		buf_free(&body);
		return -1;
	}
	/* Throttling lasts as long as it lasts: the caller's stream waits (its
	 * backpressure). The one credentials refresh and skew re-sign span the
	 * steps. Answers of 2xx are not parsed as a document: a put's is read
	 * for rejectedLogEventsInfo only, and an accepted batch is never sent
	 * again because of how its answer looks. */
	struct awsjson_call_opts o = {
		.throttle_attempts = -1,
		.max_answer = CWLOGS_MAX_ANSWER,
		.raw_answer = true,
		.creds_retried = c->creds_retried,
		.skew_retried = c->skew_retried,
	};
	c->jid = awsjson_call_ex(c->cw->j, step_target[c->step], body.data ? body.data : "",
				 body.len, &o, on_step, c);
	buf_free(&body);
	return c->jid ? 0 : -1;
}

/* Moves to step s, or ends the call when it cannot start. */
static void go(struct cwcall *c, enum step s)
{
	c->step = s;
	if (send_step(c) < 0) {
		char msg[96];
		snprintf(msg, sizeof msg, "could not build the %s body (out of memory)",
			 step_target[s]);
		finish(c, CWLOGS_REFUSED, "InternalError", msg);
	}
}

/* The next step after a create-step success. */
static void advance_after_create(struct cwcall *c)
{
	switch (c->step) {
	case ST_CREATE_GROUP:
		go(c, c->cw->retention_days > 0 ? ST_RETENTION : ST_CREATE_STREAM);
		return;
	case ST_RETENTION:
	case ST_PUT:
		go(c, ST_CREATE_STREAM);
		return;
	case ST_CREATE_STREAM:
		go(c, ST_PUT);
		return;
	}
}

static void on_step(const struct awsjson_result *r, void *arg)
{
	struct cwcall *c = arg;
	c->jid = 0;
	c->res.http_status = r->http_status;
	if (c->step == ST_PUT)
		c->res.attempts += r->attempts;
	c->res.retries += r->retries;
	c->res.throttled += r->throttled;
	c->creds_retried = r->creds_retried;
	c->skew_retried = r->skew_retried;
	if (r->status == AWSJSON_UNREACHABLE) {
		finish(c, CWLOGS_UNREACHABLE, r->code, r->message);
		return;
	}
	if (r->status == AWSJSON_OK) {
		if (c->step == ST_PUT) {
			cwlogs_parse_rejected(r->body, r->body_len, c->n, &c->res);
			finish(c, CWLOGS_OK, "", "");
			return;
		}
		if (c->step == ST_CREATE_GROUP || c->step == ST_CREATE_STREAM)
			c->res.created++;
		if (c->step == ST_CREATE_GROUP)
			log_info("cwlogs.group_created", "group=%s", c->group);
		advance_after_create(c);
		return;
	}
	/* awsjson retried what it retries: the service's own answers are left. */
	switch (cwlogs_classify(r->http_status, r->code, r->message)) {
	case CWLOGS_CLASS_NOT_FOUND:
		if (c->step == ST_PUT) {
			if (c->rounds >= CWLOGS_CREATE_ROUNDS) {
				finish(c, CWLOGS_UNREACHABLE, r->code, r->message);
				return;
			}
			c->rounds++;
			go(c, ST_CREATE_STREAM);
		} else if (c->step == ST_CREATE_STREAM || c->step == ST_RETENTION) {
			/* No group (or it vanished again): start over with it. */
			go(c, ST_CREATE_GROUP);
		} else {
			finish(c, CWLOGS_UNREACHABLE, r->code, r->message);
		}
		return;
	case CWLOGS_CLASS_EXISTS:
		if (c->step == ST_PUT) {
			finish(c, CWLOGS_OK, "", "");
			return;
		}
		if (c->step == ST_CREATE_GROUP) {
			go(c, ST_CREATE_STREAM); /* someone else made it: keep its retention */
			return;
		}
		advance_after_create(c);
		return;
	case CWLOGS_CLASS_REFUSED:
		if (c->step == ST_RETENTION) {
			log_warn("cwlogs.retention_refused", "group=%s error=%s message=\"%s\"", c->group,
				 r->code, r->message);
			advance_after_create(c);
			return;
		}
		finish(c, CWLOGS_REFUSED, r->code, r->message);
		return;
	case CWLOGS_CLASS_THROTTLE:
	case CWLOGS_CLASS_RETRY:
	case CWLOGS_CLASS_CREDENTIALS:
	case CWLOGS_CLASS_SKEW:
	case CWLOGS_CLASS_OTHER:
		finish(c, CWLOGS_UNREACHABLE, r->code, r->message);
		return;
	}
}

/* ---- the client ---- */

static void payload_hash(const void *data, size_t len, char out[65])
{
	cwlogs_sha256_hex(data, len, out, 1);
}

struct cwlogs *cwlogs_new(struct ev_loop *loop, struct http_client *http,
			  struct aws_credentials_provider *creds, const struct cwlogs_opts *o,
			  struct err *err)
{
	if (!loop || !http || !creds || !o || !o->region || !*o->region) {
		err_set(err, "cwlogs: loop, http client, credentials and region are required");
		return NULL;
	}
	struct cwlogs *cw = calloc(1, sizeof *cw);
	if (!cw) {
		err_set(err, "cwlogs: out of memory");
		return NULL;
	}
	struct awsjson_opts jo = {
		.region = o->region,
		.service = CWLOGS_SERVICE,
		.endpoint = o->endpoint,
		.default_endpoint = "https://logs.%s.amazonaws.com",
		.target_prefix = "Logs_20140328",
		.content_type = CWLOGS_CONTENT_TYPE,
		.ca_file = o->ca_file,
		.timeout_ms = o->timeout_ms,
		.retry_base_ms = o->retry_base_ms > 0 ? o->retry_base_ms : DEFAULT_RETRY_BASE_MS,
		.retry_cap_ms = o->retry_cap_ms,
		.max_attempts = o->unreachable_attempts > 0 ? o->unreachable_attempts
							    : DEFAULT_UNREACHABLE_ATTEMPTS,
		.max_answer = CWLOGS_MAX_ANSWER,
		.payload_hash = payload_hash,
		.throttle_codes = throttle_codes,
		.log_prefix = "cwlogs",
	};
	cw->j = awsjson_new(loop, http, creds, &jo, err);
	if (!cw->j) {
		free(cw);
		return NULL;
	}
	cw->retention_days = o->retention_days > 0 ? o->retention_days : 0;
	cw->next_id = 1;
	return cw;
}

void cwlogs_free(struct cwlogs *cw)
{
	if (!cw)
		return;
	while (cw->calls)
		call_free(cw->calls);
	awsjson_free(cw->j);
	free(cw);
}

uint64_t cwlogs_put_events(struct cwlogs *cw, const char *group, const char *stream,
			   const struct cwlogs_event *events, size_t count, cwlogs_done_fn done,
			   void *arg)
{
	if (!cw || !group || !*group || !stream || !*stream || !events || !count || !done)
		return 0;
	struct cwcall *c = call_add(cw);
	if (!c)
		return 0;
	c->group = strdup(group);
	c->stream = strdup(stream);
	c->ev = events;
	c->n = count;
	c->step = ST_PUT;
	c->done = done;
	c->arg = arg;
	c->res.too_new_start = c->res.too_old_end = c->res.expired_end = -1;
	if (!c->group || !c->stream || send_step(c) < 0) {
		call_free(c);
		return 0;
	}
	return c->id;
}

void cwlogs_cancel(struct cwlogs *cw, uint64_t id)
{
	if (!cw || !id)
		return;
	for (struct cwcall *c = cw->calls; c; c = c->next) {
		if (c->id == id) {
			call_free(c);
			return;
		}
	}
}

size_t cwlogs_pending(const struct cwlogs *cw)
{
	return cw ? cw->pending : 0;
}

/* ---- reading: FilterLogEvents, GetLogEvents ---- */

static int add_str(struct buf *b, const char *key, const char *v)
{
	if (!v)
		return 0;
	int rc = buf_printf(b, "%s\"%s\":", b->len > 1 ? "," : "", key);
	return rc | cwlogs_json_string(b, v, strlen(v));
}

static int add_int(struct buf *b, const char *key, int64_t v)
{
	return buf_printf(b, "%s\"%s\":%" PRId64, b->len > 1 ? "," : "", key, v);
}

int cwlogs_filter_body(struct buf *out, const struct cwlogs_filter *f)
{
	if (!f || !f->group || !*f->group || f->limit < 0 || f->limit > 10000)
		return -1;
	int rc = buf_append_byte(out, '{');
	rc |= add_str(out, "logGroupName", f->group);
	if (f->stream_prefix && *f->stream_prefix)
		rc |= add_str(out, "logStreamNamePrefix", f->stream_prefix);
	if (f->start_ms > 0)
		rc |= add_int(out, "startTime", f->start_ms);
	if (f->end_ms > 0)
		rc |= add_int(out, "endTime", f->end_ms);
	if (f->limit > 0)
		rc |= add_int(out, "limit", f->limit);
	if (f->filter_pattern && *f->filter_pattern)
		rc |= add_str(out, "filterPattern", f->filter_pattern);
	if (f->next_token && *f->next_token)
		rc |= add_str(out, "nextToken", f->next_token);
	rc |= buf_append_byte(out, '}');
	return rc ? -1 : 0;
}

int cwlogs_get_body(struct buf *out, const struct cwlogs_get *g)
{
	if (!g || !g->group || !*g->group || !g->stream || !*g->stream || g->limit < 0 ||
	    g->limit > 10000)
		return -1;
	int rc = buf_append_byte(out, '{');
	rc |= add_str(out, "logGroupName", g->group);
	rc |= add_str(out, "logStreamName", g->stream);
	if (g->start_ms > 0)
		rc |= add_int(out, "startTime", g->start_ms);
	if (g->end_ms > 0)
		rc |= add_int(out, "endTime", g->end_ms);
	if (g->limit > 0)
		rc |= add_int(out, "limit", g->limit);
	rc |= buf_printf(out, ",\"startFromHead\":%s", g->start_from_head ? "true" : "false");
	if (g->next_token && *g->next_token)
		rc |= add_str(out, "nextToken", g->next_token);
	rc |= buf_append_byte(out, '}');
	return rc ? -1 : 0;
}

static const char *opt_string(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	return cJSON_IsString(v) ? v->valuestring : NULL;
}

int cwlogs_parse_events(const char *body, size_t len, const char *default_stream,
			struct cJSON **doc_out, struct cwlogs_read_event **events, size_t *count,
			const char **next_token, const char **backward_token, struct err *err)
{
	*doc_out = NULL;
	*events = NULL;
	*count = 0;
	*next_token = *backward_token = NULL;
	cJSON *doc = json_parse(body, len, CWLOGS_READ_MAX_ANSWER, err);
	if (!doc)
		return err_prefix(err, "cwlogs: answer");
	const cJSON *arr = cJSON_GetObjectItemCaseSensitive(doc, "events");
	if (!cJSON_IsObject(doc) || (arr && !cJSON_IsArray(arr))) {
		cJSON_Delete(doc);
		return err_set(err, "cwlogs: answer without an events array");
	}
	size_t n = (size_t)cJSON_GetArraySize(arr);
	struct cwlogs_read_event *ev = n ? calloc(n, sizeof *ev) : NULL;
	if (n && !ev) {
		cJSON_Delete(doc);
		return err_set(err, "cwlogs: out of memory");
	}
	size_t i = 0;
	const cJSON *e;
	cJSON_ArrayForEach(e, arr)
	{
		char path[JSON_PATH_MAX];
		json_path_index(path, sizeof path, "events", i);
		int64_t ts, ing;
		const char *msg, *stream, *id;
		if (json_get_int(e, path, "timestamp", 0, JSON_INT_LIMIT, &ts, err) < 0 ||
		    json_get_int_opt(e, path, "ingestionTime", 0, JSON_INT_LIMIT, 0, &ing, err) < 0 ||
		    json_get_string(e, path, "message", (size_t)1 << 20, &msg, err) < 0 ||
		    json_get_string_opt(e, path, "logStreamName", 512, default_stream, &stream, err) <
			    0 ||
		    json_get_string_opt(e, path, "eventId", 256, "", &id, err) < 0) {
			free(ev);
			cJSON_Delete(doc);
			return err_prefix(err, "cwlogs: answer");
		}
		ev[i++] = (struct cwlogs_read_event){ts, ing, stream, msg, id};
	}
	*next_token = opt_string(doc, "nextToken");
	if (!*next_token)
		*next_token = opt_string(doc, "nextForwardToken");
	*backward_token = opt_string(doc, "nextBackwardToken");
	*doc_out = doc;
	*events = ev;
	*count = i;
	return 0;
}


/* Ends a read: events (and what they point into) are freed after done. */
static void read_finish(struct cwcall *c, const struct awsjson_result *r,
			enum cwlogs_status st, bool not_found, const char *code, const char *msg)
{
	struct cwlogs_read_result res = {
		.status = st,
		.not_found = not_found,
		.http_status = r->http_status,
		.error_code = st == CWLOGS_OK ? "" : code,
		.message = st == CWLOGS_OK ? "" : msg,
		.attempts = r->attempts,
	};
	cwlogs_read_fn done = c->read_done;
	void *arg = c->arg;
	cJSON *doc = NULL;
	struct cwlogs_read_event *ev = NULL;
	struct err err = {{0}};
	if (st == CWLOGS_OK && !not_found &&
	    cwlogs_parse_events(r->body, r->body_len, c->stream ? c->stream : "", &doc, &ev,
				&res.count, &res.next_token, &res.backward_token, &err) < 0) {
		res.status = CWLOGS_UNREACHABLE;
		res.error_code = "BadAnswer";
		res.message = err.msg;
	}
	res.events = ev;
	char *stream = c->stream; /* GetLogEvents' events point at it */
	c->stream = NULL;
	call_free(c);
	done(&res, arg);
	free(ev);
	free(stream);
	cJSON_Delete(doc);
}

static void on_read(const struct awsjson_result *r, void *arg)
{
	struct cwcall *c = arg;
	c->jid = 0;
	if (r->status == AWSJSON_OK) {
		read_finish(c, r, CWLOGS_OK, false, "", "");
		return;
	}
	if (r->status == AWSJSON_ERROR) {
		switch (cwlogs_classify(r->http_status, r->code, r->message)) {
		case CWLOGS_CLASS_NOT_FOUND: /* nothing was ever shipped there */
			read_finish(c, r, CWLOGS_OK, true, "", "");
			return;
		case CWLOGS_CLASS_REFUSED:
			read_finish(c, r, CWLOGS_REFUSED, false, r->code, r->message);
			return;
		default:
			break;
		}
	}
	read_finish(c, r, CWLOGS_UNREACHABLE, false, r->code, r->message);
}

static uint64_t read_start(struct cwlogs *cw, enum read_kind kind, struct buf *body,
			   const char *stream, cwlogs_read_fn done, void *arg)
{
	struct cwcall *c = call_add(cw);
	if (!c) {
		buf_free(body);
		return 0;
	}
	c->read_done = done;
	c->arg = arg;
	c->stream = stream ? strdup(stream) : NULL;
	/* A person is waiting: a few attempts in all, then the caller answers. */
	struct awsjson_call_opts o = {
		.max_answer = CWLOGS_READ_MAX_ANSWER,
		.max_attempts = CWLOGS_READ_ATTEMPTS,
		.throttle_attempts = -1,
		.max_requests = CWLOGS_READ_ATTEMPTS,
		.raw_answer = true,
	};
	if (!stream || c->stream)
		c->jid = awsjson_call_ex(cw->j, kind == RD_FILTER ? "FilterLogEvents" : "GetLogEvents",
					 body->data ? body->data : "", body->len, &o, on_read, c);
	buf_free(body);
	if (!c->jid) {
		call_free(c);
		return 0;
	}
	return c->id;
}

uint64_t cwlogs_filter_events(struct cwlogs *cw, const struct cwlogs_filter *f,
			      cwlogs_read_fn done, void *arg)
{
	if (!cw || !done)
		return 0;
	struct buf body;
	buf_init(&body, 64 << 10);
	if (cwlogs_filter_body(&body, f) < 0) {
		buf_free(&body);
		return 0;
	}
	return read_start(cw, RD_FILTER, &body, NULL, done, arg);
}

uint64_t cwlogs_get_events(struct cwlogs *cw, const struct cwlogs_get *g, cwlogs_read_fn done,
			   void *arg)
{
	if (!cw || !done)
		return 0;
	struct buf body;
	buf_init(&body, 64 << 10);
	if (cwlogs_get_body(&body, g) < 0) {
		buf_free(&body);
		return 0;
	}
	return read_start(cw, RD_GET, &body, g->stream, done, arg);
}
