#include "cwlogs.h"

#include <ev.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "backoff.h"
#include "crypto.h"
#include "http_client.h"
#include "json.h"
#include "log.h"
#include "sigv4.h"

#define DEFAULT_TIMEOUT_MS 30000
#define DEFAULT_RETRY_BASE_MS 200
#define DEFAULT_RETRY_CAP_MS 20000
#define DEFAULT_UNREACHABLE_ATTEMPTS 2
#define BODY_MAX ((size_t)64 << 20) /* 1 MiB of messages, escaped, fits easily */
#define HOST_MAX 256

enum step { ST_PUT, ST_CREATE_STREAM, ST_CREATE_GROUP, ST_RETENTION };

static const char *const step_target[] = {
	[ST_PUT] = "PutLogEvents",
	[ST_CREATE_STREAM] = "CreateLogStream",
	[ST_CREATE_GROUP] = "CreateLogGroup",
	[ST_RETENTION] = "PutRetentionPolicy",
};

struct cwcall {
	struct cwlogs *cw;
	struct cwcall *prev, *next;
	uint64_t id;
	char *group;
	char *stream;
	const struct cwlogs_event *ev;
	size_t n;
	enum step step;
	int rounds;              /* create rounds so far */
	int fails;               /* unreachable failures in a row */
	int requests;            /* requests sent, all steps */
	bool creds_retried;
	bool skew_retried;
	bool waiting_creds;
	bool timer_on;
	uint64_t http_id;
	ev_timer delay;
	const struct aws_credentials *used; /* referenced while a request is out */
	struct cwlogs_result res;
	char code[128];
	char msg[512];
	cwlogs_done_fn done;
	void *arg;
};

struct cwlogs {
	struct ev_loop *loop;
	struct http_client *http;
	struct aws_credentials_provider *creds;
	struct sigv4_signer signer;
	char *url;
	char host[HOST_MAX];
	char path[HOST_MAX];
	char *ca_file;
	int64_t timeout_ms;
	struct backoff_policy retry;
	int unreachable_attempts;
	int retention_days;
	struct cwcall *calls;
	struct cwread *reads;     /* FilterLogEvents / GetLogEvents calls */
	uint64_t next_id;
	size_t pending;
};

struct cwread;
static void read_free(struct cwread *r);
static struct cwread *read_find(struct cwlogs *cw, uint64_t id);

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
	code[0] = '\0';
	msg[0] = '\0';
	const char *type = NULL;
	cJSON *doc = len ? json_parse(body, len, CWLOGS_MAX_ANSWER, NULL) : NULL;
	if (cJSON_IsObject(doc)) {
		const cJSON *t = cJSON_GetObjectItemCaseSensitive(doc, "__type");
		if (cJSON_IsString(t))
			type = t->valuestring;
		const cJSON *m = cJSON_GetObjectItemCaseSensitive(doc, "message");
		if (!cJSON_IsString(m))
			m = cJSON_GetObjectItemCaseSensitive(doc, "Message");
		if (cJSON_IsString(m))
			snprintf(msg, msg_cap, "%s", m->valuestring);
	}
	if (!type || !*type)
		type = error_type_header;
	if (type) {
		/* "com.amazonaws.logs#ResourceNotFoundException" and
		 * "ThrottlingException:http://internal.amazon.com/..." both name the code. */
		const char *hash = strrchr(type, '#');
		const char *start = hash ? hash + 1 : type;
		size_t n = strcspn(start, ":");
		if (n >= code_cap)
			n = code_cap - 1;
		memcpy(code, start, n);
		code[n] = '\0';
	}
	if (!msg[0] && len && !doc) {
		/* Not JSON (a proxy's error page): keep the start for the log. */
		size_t n = len < msg_cap - 1 ? len : msg_cap - 1;
		for (size_t i = 0; i < n; i++)
			msg[i] = (body[i] >= 0x20 && body[i] < 0x7f) ? body[i] : ' ';
		msg[n] = '\0';
	}
	cJSON_Delete(doc);
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

enum cwlogs_error_class cwlogs_classify(long status, const char *code, const char *message)
{
	if (!code)
		code = "";
	if (!message)
		message = "";
	if (code_is(code, "ResourceNotFoundException"))
		return CWLOGS_CLASS_NOT_FOUND;
	if (code_is(code, "ResourceAlreadyExistsException") ||
	    code_is(code, "DataAlreadyAcceptedException"))
		return CWLOGS_CLASS_EXISTS;
	if (code_is(code, "ThrottlingException") || code_is(code, "Throttling") ||
	    code_is(code, "TooManyRequestsException") || code_is(code, "LimitExceededException") ||
	    status == 429)
		return CWLOGS_CLASS_THROTTLE;
	if (code_is(code, "RequestTimeTooSkewed") || code_is(code, "RequestExpired") ||
	    code_is(code, "RequestInTheFuture") || strstr(message, "Signature expired") ||
	    strstr(message, "Signature not yet current"))
		return CWLOGS_CLASS_SKEW;
	if (code_is(code, "ExpiredToken") || code_is(code, "ExpiredTokenException") ||
	    code_is(code, "UnrecognizedClientException") || code_is(code, "InvalidClientTokenId") ||
	    code_is(code, "InvalidSignatureException") || code_is(code, "SignatureDoesNotMatch") ||
	    code_is(code, "IncompleteSignature") || code_is(code, "IncompleteSignatureException"))
		return CWLOGS_CLASS_CREDENTIALS;
	if (code_is(code, "InvalidParameterException") || code_is(code, "SerializationException") ||
	    code_is(code, "ValidationException") || code_is(code, "InvalidParameterValue") ||
	    status == 413)
		return CWLOGS_CLASS_REFUSED;
	if (status >= 500 || code_is(code, "ServiceUnavailableException") ||
	    code_is(code, "ServiceUnavailable") || code_is(code, "InternalFailure") ||
	    code_is(code, "RequestTimeout") || code_is(code, "RequestTimeoutException") ||
	    status == 408)
		return CWLOGS_CLASS_RETRY;
	return CWLOGS_CLASS_OTHER;
}

/* ---- calls ---- */

static void on_creds(const struct aws_credentials *creds, const char *error, void *arg);

static void call_free(struct cwcall *c)
{
	struct cwlogs *cw = c->cw;
	if (c->waiting_creds)
		aws_credentials_cancel(cw->creds, on_creds, c);
	if (c->timer_on)
		ev_timer_stop(cw->loop, &c->delay);
	if (c->http_id)
		http_client_cancel(cw->http, c->http_id);
	if (c->used)
		aws_credentials_unref(c->used);
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

static void finish(struct cwcall *c, enum cwlogs_status st)
{
	c->res.status = st;
	cwlogs_done_fn done = c->done;
	void *arg = c->arg;
	struct cwlogs_result res = c->res;
	char code[sizeof c->code], msg[sizeof c->msg];
	memcpy(code, c->code, sizeof code);
	memcpy(msg, c->msg, sizeof msg);
	res.error_code = st == CWLOGS_OK ? "" : code;
	res.message = st == CWLOGS_OK ? "" : msg;
	call_free(c);
	done(&res, arg);
}

static void start_attempt(struct cwcall *c);

static void on_delay(struct ev_loop *loop, ev_timer *t, int revents)
{
	(void)loop;
	(void)revents;
	struct cwcall *c = t->data;
	c->timer_on = false;
	start_attempt(c);
}

static void retry_after(struct cwcall *c, int64_t delay_ms)
{
	c->res.retries++;
	if (delay_ms <= 0) {
		start_attempt(c);
		return;
	}
	ev_timer_set(&c->delay, (double)delay_ms / 1000.0, 0.0);
	ev_timer_start(c->cw->loop, &c->delay);
	c->timer_on = true;
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

static void unreachable(struct cwcall *c, const char *code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* A failure that says nothing about the batch: retry, or give up for now. */
static void unreachable(struct cwcall *c, const char *code, const char *fmt, ...)
{
	snprintf(c->code, sizeof c->code, "%s", code);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->msg, sizeof c->msg, fmt, ap);
	va_end(ap);
	c->fails++;
	if (c->fails >= c->cw->unreachable_attempts) {
		finish(c, CWLOGS_UNREACHABLE);
		return;
	}
	retry_after(c, backoff_delay(&c->cw->retry, c->fails));
}

static void on_http(const struct http_response *resp, void *arg);

static void send_signed(struct cwcall *c, const struct aws_credentials *creds)
{
	struct cwlogs *cw = c->cw;
	struct buf body;
	buf_init(&body, BODY_MAX);
	if (build_body(c, &body) < 0) {
		buf_free(&body);
		snprintf(c->code, sizeof c->code, "InternalError");
		snprintf(c->msg, sizeof c->msg, "could not build the %s body (out of memory)",
			 step_target[c->step]);
		finish(c, CWLOGS_REFUSED);
		return;
	}
	char target[96];
	snprintf(target, sizeof target, CWLOGS_TARGET_PREFIX "%s", step_target[c->step]);
	struct sigv4_header sh[] = {
		{"Host", cw->host},
		{"Content-Type", CWLOGS_CONTENT_TYPE},
		{"X-Amz-Target", target},
	};
	char hash[65];
	cwlogs_sha256_hex(body.data ? body.data : "", body.len, hash, 1);
	struct sigv4_request sreq = {
		.method = "POST",
		.path = cw->path,
		.headers = sh,
		.header_count = 3,
		.payload_kind = SIGV4_PAYLOAD_HASH,
		.payload_sha256_hex = hash,
	};
	struct sigv4_result sr;
	struct err err = {{0}};
	if (sigv4_sign(&cw->signer, creds, &sreq, &sr, &err) < 0) {
		buf_free(&body);
		sigv4_result_free(&sr);
		unreachable(c, "SigningError", "signing: %s", err.msg);
		return;
	}
	/* Header lines: ours, then what the signer adds, then Authorization. */
	char lines[6][8192];
	const char *hdrs[8];
	size_t nh = 0;
	snprintf(lines[nh], sizeof lines[nh], "Host: %s", cw->host);
	hdrs[nh] = lines[nh];
	nh++;
	snprintf(lines[nh], sizeof lines[nh], "Content-Type: %s", CWLOGS_CONTENT_TYPE);
	hdrs[nh] = lines[nh];
	nh++;
	snprintf(lines[nh], sizeof lines[nh], "X-Amz-Target: %s", target);
	hdrs[nh] = lines[nh];
	nh++;
	for (size_t i = 0; i < sr.add_count && nh < 5; i++) {
		snprintf(lines[nh], sizeof lines[nh], "%s: %s", sr.add[i].name, sr.add[i].value);
		hdrs[nh] = lines[nh];
		nh++;
	}
	snprintf(lines[nh], sizeof lines[nh], "Authorization: %s", sr.authorization);
	hdrs[nh] = lines[nh];
	nh++;
	hdrs[nh] = NULL;
	struct http_request req = {
		.method = "POST",
		.url = cw->url,
		.headers = hdrs,
		.body = body.data,
		.body_len = body.len,
		.timeout_ms = cw->timeout_ms,
		.max_body = CWLOGS_MAX_ANSWER,
		.ca_file = cw->ca_file,
		.on_done = on_http,
		.arg = c,
	};
	c->http_id = http_client_start(cw->http, &req);
	/* http_client copied the body and the headers: ours can go now. */
	memset(lines, 0, sizeof lines);
	sigv4_result_free(&sr);
	buf_free(&body);
	if (!c->http_id) {
		unreachable(c, "InternalError", "could not start the request");
		return;
	}
	c->requests++;
	if (c->step == ST_PUT)
		c->res.attempts++;
	if (c->used)
		aws_credentials_unref(c->used);
	c->used = aws_credentials_ref(creds);
}

static void on_creds(const struct aws_credentials *creds, const char *error, void *arg)
{
	struct cwcall *c = arg;
	c->waiting_creds = false;
	if (!creds) {
		unreachable(c, "NoCredentials", "credentials: %s", error ? error : "none");
		return;
	}
	send_signed(c, creds);
}

static void start_attempt(struct cwcall *c)
{
	c->waiting_creds = true;
	aws_credentials_get(c->cw->creds, on_creds, c);
}

/* The next step after a create-step success. */
static void advance_after_create(struct cwcall *c)
{
	struct cwlogs *cw = c->cw;
	switch (c->step) {
	case ST_CREATE_GROUP:
		c->step = cw->retention_days > 0 ? ST_RETENTION : ST_CREATE_STREAM;
		break;
	case ST_RETENTION:
	case ST_PUT:
		c->step = ST_CREATE_STREAM;
		break;
	case ST_CREATE_STREAM:
		c->step = ST_PUT;
		break;
	}
	start_attempt(c);
}

static void on_http(const struct http_response *resp, void *arg)
{
	struct cwcall *c = arg;
	struct cwlogs *cw = c->cw;
	c->http_id = 0;
	c->res.http_status = resp->status;
	if (resp->error != HTTP_OK) {
		unreachable(c, "Transport", "%s %s: %s", step_target[c->step],
			    http_error_name(resp->error), resp->error_msg);
		return;
	}
	if (resp->status >= 200 && resp->status < 300) {
		c->fails = 0;
		if (c->step == ST_PUT) {
			cwlogs_parse_rejected(resp->body, resp->body_len, c->n, &c->res);
			finish(c, CWLOGS_OK);
			return;
		}
		if (c->step == ST_CREATE_GROUP || c->step == ST_CREATE_STREAM)
			c->res.created++;
		if (c->step == ST_CREATE_GROUP)
			log_info("cwlogs.group_created", "group=%s", c->group);
		advance_after_create(c);
		return;
	}
	cwlogs_parse_error(resp->body, resp->body_len, http_response_header(resp, "x-amzn-ErrorType"),
			   c->code, sizeof c->code, c->msg, sizeof c->msg);
	enum cwlogs_error_class cls = cwlogs_classify(resp->status, c->code, c->msg);
	if (cls != CWLOGS_CLASS_RETRY && cls != CWLOGS_CLASS_THROTTLE)
		c->fails = 0;
	switch (cls) {
	case CWLOGS_CLASS_THROTTLE:
		c->res.throttled++;
		retry_after(c, backoff_delay(&cw->retry, c->res.throttled));
		return;
	case CWLOGS_CLASS_RETRY: {
		char code[sizeof c->code], msg[sizeof c->msg];
		memcpy(code, c->code, sizeof code);
		memcpy(msg, c->msg, sizeof msg);
		unreachable(c, code[0] ? code : "HTTP", "%s: HTTP %ld %s", step_target[c->step],
			    resp->status, msg);
		return;
	}
	case CWLOGS_CLASS_NOT_FOUND:
		if (c->step == ST_PUT) {
			if (c->rounds >= CWLOGS_CREATE_ROUNDS) {
				finish(c, CWLOGS_UNREACHABLE);
				return;
			}
			c->rounds++;
			c->step = ST_CREATE_STREAM;
			start_attempt(c);
		} else if (c->step == ST_CREATE_STREAM) {
			c->step = ST_CREATE_GROUP;
			start_attempt(c);
		} else if (c->step == ST_RETENTION) {
			/* The group vanished again: start over with it. */
			c->step = ST_CREATE_GROUP;
			start_attempt(c);
		} else {
			finish(c, CWLOGS_UNREACHABLE);
		}
		return;
	case CWLOGS_CLASS_EXISTS:
		if (c->step == ST_PUT) {
			finish(c, CWLOGS_OK);
			return;
		}
		if (c->step == ST_CREATE_GROUP) {
			c->step = ST_CREATE_STREAM; /* someone else made it: keep its retention */
			start_attempt(c);
			return;
		}
		advance_after_create(c);
		return;
	case CWLOGS_CLASS_CREDENTIALS:
		if (c->creds_retried) {
			finish(c, CWLOGS_UNREACHABLE);
			return;
		}
		c->creds_retried = true;
		log_warn("cwlogs.credentials_refresh", "error=%s message=\"%s\": refreshing the "
			 "credentials and retrying once", c->code, c->msg);
		aws_credentials_invalidate(cw->creds, c->used);
		retry_after(c, 0);
		return;
	case CWLOGS_CLASS_SKEW:
		if (!c->skew_retried && sigv4_signer_note_skew(&cw->signer, c->code, c->msg,
							       http_response_header(resp, "Date"))) {
			c->skew_retried = true;
			log_warn("cwlogs.clock_skew", "offset_ms=%" PRId64 ": re-signing once",
				 cw->signer.clock_offset_ms);
			retry_after(c, 0);
			return;
		}
		finish(c, CWLOGS_UNREACHABLE);
		return;
	case CWLOGS_CLASS_REFUSED:
		if (c->step == ST_RETENTION) {
			log_warn("cwlogs.retention_refused", "group=%s error=%s message=\"%s\"", c->group,
				 c->code, c->msg);
			advance_after_create(c);
			return;
		}
		finish(c, CWLOGS_REFUSED);
		return;
	case CWLOGS_CLASS_OTHER:
		finish(c, CWLOGS_UNREACHABLE);
		return;
	}
}

/* ---- the client ---- */

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
	cw->loop = loop;
	cw->http = http;
	cw->creds = creds;
	if (sigv4_signer_init(&cw->signer, o->region, CWLOGS_SERVICE, NULL, err) < 0) {
		free(cw);
		return NULL;
	}
	struct buf url;
	buf_init(&url, 4096);
	if (o->endpoint && *o->endpoint)
		buf_append_str(&url, o->endpoint);
	else
		buf_printf(&url, "https://logs.%s.amazonaws.com", o->region);
	const char *p = url.data ? strstr(url.data, "://") : NULL;
	if (!p || (strncmp(url.data, "http://", 7) != 0 && strncmp(url.data, "https://", 8) != 0)) {
		err_set(err, "cwlogs: endpoint \"%s\" is not an http(s) URL", url.data ? url.data : "");
		buf_free(&url);
		free(cw);
		return NULL;
	}
	p += 3;
	size_t hl = strcspn(p, "/?#");
	if (hl == 0 || hl >= sizeof cw->host) {
		err_set(err, "cwlogs: endpoint \"%s\" has no usable host", url.data);
		buf_free(&url);
		free(cw);
		return NULL;
	}
	memcpy(cw->host, p, hl);
	cw->host[hl] = '\0';
	const char *path = p + hl;
	size_t pl = strcspn(path, "?#");
	if (pl == 0) {
		snprintf(cw->path, sizeof cw->path, "/");
		url.len = (size_t)(path - url.data);
		buf_append_byte(&url, '/');
	} else if (pl < sizeof cw->path) {
		memcpy(cw->path, path, pl);
		cw->path[pl] = '\0';
		url.len = (size_t)(path - url.data) + pl;
		url.data[url.len] = '\0';
	} else {
		err_set(err, "cwlogs: endpoint path too long");
		buf_free(&url);
		free(cw);
		return NULL;
	}
	cw->url = buf_detach(&url, NULL);
	cw->ca_file = o->ca_file ? strdup(o->ca_file) : NULL;
	cw->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : DEFAULT_TIMEOUT_MS;
	cw->retry.base_ms = o->retry_base_ms > 0 ? o->retry_base_ms : DEFAULT_RETRY_BASE_MS;
	cw->retry.cap_ms = o->retry_cap_ms > 0 ? o->retry_cap_ms : DEFAULT_RETRY_CAP_MS;
	cw->retry.max_attempts = 0;
	cw->unreachable_attempts = o->unreachable_attempts > 0 ? o->unreachable_attempts
							       : DEFAULT_UNREACHABLE_ATTEMPTS;
	cw->retention_days = o->retention_days > 0 ? o->retention_days : 0;
	cw->next_id = 1;
	if (!cw->url || (o->ca_file && !cw->ca_file)) {
		cwlogs_free(cw);
		err_set(err, "cwlogs: out of memory");
		return NULL;
	}
	return cw;
}

void cwlogs_free(struct cwlogs *cw)
{
	if (!cw)
		return;
	while (cw->calls)
		call_free(cw->calls);
	while (cw->reads)
		read_free(cw->reads);
	sigv4_signer_clear(&cw->signer);
	free(cw->url);
	free(cw->ca_file);
	free(cw);
}

uint64_t cwlogs_put_events(struct cwlogs *cw, const char *group, const char *stream,
			   const struct cwlogs_event *events, size_t count, cwlogs_done_fn done,
			   void *arg)
{
	if (!cw || !group || !*group || !stream || !*stream || !events || !count || !done)
		return 0;
	struct cwcall *c = calloc(1, sizeof *c);
	if (!c)
		return 0;
	c->group = strdup(group);
	c->stream = strdup(stream);
	if (!c->group || !c->stream) {
		free(c->group);
		free(c->stream);
		free(c);
		return 0;
	}
	c->cw = cw;
	c->id = cw->next_id++;
	c->ev = events;
	c->n = count;
	c->step = ST_PUT;
	c->done = done;
	c->arg = arg;
	c->res.too_new_start = c->res.too_old_end = c->res.expired_end = -1;
	ev_timer_init(&c->delay, on_delay, 0.0, 0.0);
	c->delay.data = c;
	c->next = cw->calls;
	if (cw->calls)
		cw->calls->prev = c;
	cw->calls = c;
	cw->pending++;
	start_attempt(c);
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
	struct cwread *r = read_find(cw, id);
	if (r)
		read_free(r);
}

size_t cwlogs_pending(const struct cwlogs *cw)
{
	return cw ? cw->pending : 0;
}

/* ---- reading: FilterLogEvents, GetLogEvents ---- */

enum read_kind { RD_FILTER, RD_GET };

struct cwread {
	struct cwlogs *cw;
	struct cwread *prev, *next;
	uint64_t id;
	enum read_kind kind;
	char *body;
	size_t body_len;
	char *stream;            /* GetLogEvents: names its events */
	int attempts;
	bool creds_retried, skew_retried, waiting_creds, timer_on;
	uint64_t http_id;
	ev_timer delay;
	const struct aws_credentials *used;
	char code[128];
	char msg[512];
	long http_status;
	cwlogs_read_fn done;
	void *arg;
};

static struct cwread *read_find(struct cwlogs *cw, uint64_t id)
{
	for (struct cwread *r = cw->reads; r; r = r->next)
		if (r->id == id)
			return r;
	return NULL;
}

static void read_on_creds(const struct aws_credentials *creds, const char *error, void *arg);

static void read_free(struct cwread *r)
{
	struct cwlogs *cw = r->cw;
	if (r->waiting_creds)
		aws_credentials_cancel(cw->creds, read_on_creds, r);
	if (r->timer_on)
		ev_timer_stop(cw->loop, &r->delay);
	if (r->http_id)
		http_client_cancel(cw->http, r->http_id);
	if (r->used)
		aws_credentials_unref(r->used);
	if (r->prev)
		r->prev->next = r->next;
	else
		cw->reads = r->next;
	if (r->next)
		r->next->prev = r->prev;
	cw->pending--;
	free(r->body);
	free(r->stream);
	free(r);
}

/* Ends the call with a failure (or a not-found, which is an empty success). */
static void read_fail(struct cwread *r, enum cwlogs_status st, bool not_found)
{
	struct cwlogs_read_result res = {
		.status = st,
		.not_found = not_found,
		.http_status = r->http_status,
		.attempts = r->attempts,
	};
	char code[sizeof r->code], msg[sizeof r->msg];
	memcpy(code, r->code, sizeof code);
	memcpy(msg, r->msg, sizeof msg);
	res.error_code = st == CWLOGS_OK ? "" : code;
	res.message = st == CWLOGS_OK ? "" : msg;
	cwlogs_read_fn done = r->done;
	void *arg = r->arg;
	read_free(r);
	done(&res, arg);
}

static void read_attempt(struct cwread *r)
{
	r->waiting_creds = true;
	aws_credentials_get(r->cw->creds, read_on_creds, r);
}

static void read_on_delay(struct ev_loop *loop, ev_timer *t, int revents)
{
	(void)loop;
	(void)revents;
	struct cwread *r = t->data;
	r->timer_on = false;
	read_attempt(r);
}

static void read_retry(struct cwread *r, int64_t delay_ms)
{
	if (delay_ms <= 0) {
		read_attempt(r);
		return;
	}
	ev_timer_set(&r->delay, (double)delay_ms / 1000.0, 0.0);
	ev_timer_start(r->cw->loop, &r->delay);
	r->timer_on = true;
}

/* A failure another attempt may cure, while attempts last. */
static void read_retryable(struct cwread *r)
{
	if (r->attempts >= CWLOGS_READ_ATTEMPTS) {
		read_fail(r, CWLOGS_UNREACHABLE, false);
		return;
	}
	read_retry(r, backoff_delay(&r->cw->retry, r->attempts));
}

static void read_on_http(const struct http_response *resp, void *arg);

static void read_on_creds(const struct aws_credentials *creds, const char *error, void *arg)
{
	struct cwread *r = arg;
	struct cwlogs *cw = r->cw;
	r->waiting_creds = false;
	if (!creds) {
		snprintf(r->code, sizeof r->code, "NoCredentials");
		snprintf(r->msg, sizeof r->msg, "credentials: %s", error ? error : "none");
		read_fail(r, CWLOGS_UNREACHABLE, false);
		return;
	}
	const char *op = r->kind == RD_FILTER ? "FilterLogEvents" : "GetLogEvents";
	char target[96];
	snprintf(target, sizeof target, CWLOGS_TARGET_PREFIX "%s", op);
	struct sigv4_header sh[] = {
		{"Host", cw->host},
		{"Content-Type", CWLOGS_CONTENT_TYPE},
		{"X-Amz-Target", target},
	};
	struct sigv4_request sreq = {
		.method = "POST",
		.path = cw->path,
		.headers = sh,
		.header_count = 3,
		.payload_kind = SIGV4_PAYLOAD_BYTES,
		.payload = r->body,
		.payload_len = r->body_len,
	};
	struct sigv4_result sr;
	struct err err = {{0}};
	if (sigv4_sign(&cw->signer, creds, &sreq, &sr, &err) < 0) {
		sigv4_result_free(&sr);
		snprintf(r->code, sizeof r->code, "SigningError");
		snprintf(r->msg, sizeof r->msg, "signing: %.400s", err.msg);
		read_fail(r, CWLOGS_UNREACHABLE, false);
		return;
	}
	struct buf lines;
	buf_init(&lines, 64 << 10);
	int rc = buf_printf(&lines, "Host: %s\r\nContent-Type: %s\r\nX-Amz-Target: %s\r\n",
			    cw->host, CWLOGS_CONTENT_TYPE, target);
	if (rc == 0)
		rc = sigv4_result_append_headers(&sr, &lines);
	sigv4_result_free(&sr);
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
		.url = cw->url,
		.headers = hdrs,
		.body = r->body,
		.body_len = r->body_len,
		.timeout_ms = cw->timeout_ms,
		.max_body = CWLOGS_READ_MAX_ANSWER,
		.ca_file = cw->ca_file,
		.on_done = read_on_http,
		.arg = r,
	};
	r->http_id = rc == 0 ? http_client_start(cw->http, &req) : 0;
	if (lines.data)
		memset(lines.data, 0, lines.len);
	buf_free(&lines);
	if (!r->http_id) {
		snprintf(r->code, sizeof r->code, "InternalError");
		snprintf(r->msg, sizeof r->msg, "could not start the request");
		read_fail(r, CWLOGS_UNREACHABLE, false);
		return;
	}
	r->attempts++;
	if (r->used)
		aws_credentials_unref(r->used);
	r->used = aws_credentials_ref(creds);
}

static void read_on_http(const struct http_response *resp, void *arg)
{
	struct cwread *r = arg;
	struct cwlogs *cw = r->cw;
	r->http_id = 0;
	r->http_status = resp->status;
	if (resp->error != HTTP_OK) {
		snprintf(r->code, sizeof r->code, "Transport");
		snprintf(r->msg, sizeof r->msg, "%s: %s", http_error_name(resp->error),
			 resp->error_msg);
		read_retryable(r);
		return;
	}
	if (resp->status >= 200 && resp->status < 300) {
		cJSON *doc = NULL;
		struct cwlogs_read_event *ev = NULL;
		size_t n = 0;
		const char *next = NULL, *back = NULL;
		struct err err = {{0}};
		if (cwlogs_parse_events(resp->body, resp->body_len, r->stream ? r->stream : "", &doc,
					&ev, &n, &next, &back, &err) < 0) {
			snprintf(r->code, sizeof r->code, "BadAnswer");
			snprintf(r->msg, sizeof r->msg, "%s", err.msg);
			read_fail(r, CWLOGS_UNREACHABLE, false);
			return;
		}
		struct cwlogs_read_result res = {
			.status = CWLOGS_OK,
			.http_status = resp->status,
			.error_code = "",
			.message = "",
			.events = ev,
			.count = n,
			.next_token = next,
			.backward_token = back,
			.attempts = r->attempts,
		};
		cwlogs_read_fn done = r->done;
		void *darg = r->arg;
		char *stream = r->stream; /* GetLogEvents' events point at it */
		r->stream = NULL;
		read_free(r);
		done(&res, darg);
		free(ev);
		free(stream);
		cJSON_Delete(doc);
		return;
	}
	cwlogs_parse_error(resp->body, resp->body_len, http_response_header(resp, "x-amzn-ErrorType"),
			   r->code, sizeof r->code, r->msg, sizeof r->msg);
	switch (cwlogs_classify(resp->status, r->code, r->msg)) {
	case CWLOGS_CLASS_NOT_FOUND:
		read_fail(r, CWLOGS_OK, true);
		return;
	case CWLOGS_CLASS_THROTTLE:
	case CWLOGS_CLASS_RETRY:
		read_retryable(r);
		return;
	case CWLOGS_CLASS_CREDENTIALS:
		if (r->creds_retried) {
			read_fail(r, CWLOGS_UNREACHABLE, false);
			return;
		}
		r->creds_retried = true;
		aws_credentials_invalidate(cw->creds, r->used);
		read_retry(r, 0);
		return;
	case CWLOGS_CLASS_SKEW:
		if (!r->skew_retried && sigv4_signer_note_skew(&cw->signer, r->code, r->msg,
							       http_response_header(resp, "Date"))) {
			r->skew_retried = true;
			read_retry(r, 0);
			return;
		}
		read_fail(r, CWLOGS_UNREACHABLE, false);
		return;
	case CWLOGS_CLASS_REFUSED:
		read_fail(r, CWLOGS_REFUSED, false);
		return;
	case CWLOGS_CLASS_EXISTS:
	case CWLOGS_CLASS_OTHER:
		read_fail(r, CWLOGS_UNREACHABLE, false);
		return;
	}
}

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

static uint64_t read_start(struct cwlogs *cw, enum read_kind kind, struct buf *body,
			   const char *stream, cwlogs_read_fn done, void *arg)
{
	struct cwread *r = calloc(1, sizeof *r);
	if (!r) {
		buf_free(body);
		return 0;
	}
	r->body = buf_detach(body, &r->body_len);
	r->stream = stream ? strdup(stream) : NULL;
	if (!r->body || (stream && !r->stream)) {
		free(r->body);
		free(r->stream);
		free(r);
		return 0;
	}
	r->cw = cw;
	r->id = cw->next_id++;
	r->kind = kind;
	r->done = done;
	r->arg = arg;
	ev_timer_init(&r->delay, read_on_delay, 0.0, 0.0);
	r->delay.data = r;
	r->next = cw->reads;
	if (cw->reads)
		cw->reads->prev = r;
	cw->reads = r;
	cw->pending++;
	read_attempt(r);
	return r->id;
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
