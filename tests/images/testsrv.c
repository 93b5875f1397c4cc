/*
 * testsrv: the HTTP/1.1 server inside slipway's test image. Test code only; it
 * links nothing from slipway and is built with musl-gcc -static.
 *
 * One thread, one epoll loop, non-blocking sockets, keep-alive and pipelining,
 * timers for /slow (never a blocking sleep), so it is not the bottleneck of a
 * proxy benchmark.
 *
 * Environment: PORT (8080; 0 lets the kernel pick, the start-up line shows
 * the port), RELEASE ("dev"), HEALTH_DELAY_MS (/health is 503 until this long
 * after process start), HEALTH_FAIL=1 (/health always 503), STOP_DELAY_MS (after
 * SIGTERM keep serving open connections this long), START_DELAY_MS (sleep
 * before listening), TCP_ECHO_PORT (also a plain TCP echo listener).
 *
 * Endpoints (every response carries X-Release):
 *   GET  /                  200 "hello from $RELEASE\n"
 *   GET  /health            200 "ok" or 503 "unhealthy"
 *   GET  /slow?ms=N         answers "slow ms=N\n" after N ms
 *   POST /echo              echoes the body (Content-Length or chunked)
 *   GET  /ws                WebSocket (RFC 6455) echo
 *   GET  /log?n=N&size=S&stream=stdout|stderr   N lines of exactly S bytes plus
 *                           "\n" (longer if S is shorter than the prefix):
 *                           "testsrv log seq=K release=R stream=X xxxx..."; seq
 *                           counts from 1 over the process; answers
 *                           "logged n=N first=A last=B\n"
 *   GET  /logflood?seconds=S&size=B&stream=..   a forked child writes
 *                           "testsrv logflood seq=K ..." lines as fast as it
 *                           can for S seconds, then "testsrv logflood done lines=N"
 *   GET  /headers           the request's header lines, as received
 *   GET  /exit?code=N       answers, then exits with N at once
 *
 * SIGTERM/SIGINT: stop accepting (connections already queued are accepted),
 * serve open connections for STOP_DELAY_MS, then close idle ones, let in-flight
 * requests (slow ones too) finish with "Connection: close", exit 0.
 */
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_HEAD	(16 * 1024)
#define MAX_BODY	(16 * 1024 * 1024)
#define IN_CAP		(MAX_HEAD + MAX_BODY + 64 * 1024) /* chunk framing overhead */
#define OUT_HIGH	(1024 * 1024)	/* stop reading while this much is unsent */
#define MAX_SLOW_MS	3600000LL
#define MAX_LINE	(1024 * 1024)
#define WS_GUID		"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

enum kind { K_HTTP, K_WS, K_ECHO };

struct bytes {		/* live data is p[off..len) */
	char *p;
	size_t off, len, cap;
};

struct conn {
	struct conn *prev, *next;
	int fd;
	enum kind kind;
	struct bytes in, out;
	long long slow_at;	/* monotonic ms a pending /slow answer is due; 0: none */
	long long slow_ms;
	bool slow_keep, slow_http10;
	bool sent_continue;	/* "100 Continue" already sent for this request */
	bool closing;		/* close once out is flushed */
	bool peer_eof;
	uint32_t events;
};

struct str {
	const char *p;
	size_t n;
};

struct req {
	struct str method, path, query, headers, conn_hdr, upgrade, ws_key, ws_version, expect;
	bool http10, chunked, has_clen, has_host, keep_alive;
	unsigned long long clen;
};

static struct {
	const char *release;
	long long start_ms, health_delay, stop_delay;
	bool health_fail;
	int ep, sig_fd, http_fd, echo_fd;
	struct conn *conns;
	int nconns, nslow;
	bool draining, drain_done;
	long long drain_at;
	unsigned long long log_seq;
} S;

/* Distinct addresses tag the non-connection fds in epoll's data.ptr. */
static char TAG_HTTP, TAG_ECHO, TAG_SIG;

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void die(const char *what)
{
	fprintf(stderr, "testsrv: %s: %s\n", what, strerror(errno));
	exit(1);
}

static long long env_num(const char *name, long long def, long long max)
{
	const char *v = getenv(name);
	char *end;
	if (!v || !*v)
		return def;
	errno = 0;
	long long n = strtoll(v, &end, 10);
	if (errno || *end || n < 0 || n > max) {
		fprintf(stderr, "testsrv: %s=%s: want an integer 0..%lld\n", name, v, max);
		exit(2);
	}
	return n;
}

/* For stdout/stderr, which are blocking pipes or files. */
static void write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w > 0) {
			p += w;
			n -= (size_t)w;
		} else if (errno != EINTR && errno != EAGAIN) {
			return; /* the reader is gone; nothing useful left to do */
		}
	}
}

/* ---- SHA-1 (RFC 3174) and base64 (RFC 4648 section 4), for the WebSocket handshake ---- */

static uint32_t rol32(uint32_t x, int n)
{
	return (x << n) | (x >> (32 - n));
}

static void sha1_block(uint32_t h[5], const unsigned char *b)
{
	static const uint32_t k[4] = { 0x5A827999, 0x6ED9EBA1, 0x8F1BBCDC, 0xCA62C1D6 };
	uint32_t w[80], v[5]; /* v = a, b, c, d, e */
	memcpy(v, h, sizeof(v));
	for (int t = 0; t < 80; t++) {
		w[t] = t < 16 ? (uint32_t)b[4 * t] << 24 | (uint32_t)b[4 * t + 1] << 16 |
				(uint32_t)b[4 * t + 2] << 8 | b[4 * t + 3]
			      : rol32(w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16], 1);
		uint32_t f = t < 20 ? (v[1] & v[2]) | (~v[1] & v[3])
			   : t >= 40 && t < 60 ? (v[1] & v[2]) | (v[1] & v[3]) | (v[2] & v[3])
			   : v[1] ^ v[2] ^ v[3];
		uint32_t tmp = rol32(v[0], 5) + f + v[4] + w[t] + k[t / 20];
		memmove(v + 1, v, 4 * sizeof(v[0])); /* e = d, d = c, c = b, b = a */
		v[2] = rol32(v[2], 30);
		v[0] = tmp;
	}
	for (int i = 0; i < 5; i++)
		h[i] += v[i];
}

static void sha1(const unsigned char *msg, size_t len, unsigned char out[20])
{
	uint32_t h[5] = { 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0 };
	unsigned char blk[64];
	size_t i = 0;
	for (; i + 64 <= len; i += 64)
		sha1_block(h, msg + i);
	size_t rest = len - i;
	memset(blk, 0, sizeof(blk));
	memcpy(blk, msg + i, rest);
	blk[rest] = 0x80; /* padding: a 1 bit, zeros, then the 64-bit bit length */
	if (rest >= 56) {
		sha1_block(h, blk);
		memset(blk, 0, sizeof(blk));
	}
	uint64_t bits = (uint64_t)len * 8;
	for (int j = 0; j < 8; j++)
		blk[63 - j] = (unsigned char)(bits >> (8 * j));
	sha1_block(h, blk);
	for (int j = 0; j < 20; j++)
		out[j] = (unsigned char)(h[j / 4] >> (24 - 8 * (j % 4)));
}

static void base64(const unsigned char *in, size_t len, char *out)
{
	static const char tbl[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	for (size_t i = 0; i < len; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < len ? (uint32_t)in[i + 1] << 8 : 0) |
			     (i + 2 < len ? in[i + 2] : 0);
		*out++ = tbl[v >> 18];
		*out++ = tbl[(v >> 12) & 63];
		*out++ = i + 1 < len ? tbl[(v >> 6) & 63] : '=';
		*out++ = i + 2 < len ? tbl[v & 63] : '=';
	}
	*out = '\0';
}

/* ---- buffers and connections ---- */

static void bytes_add(struct bytes *b, const void *data, size_t n)
{
	if (b->off > 0 && b->off == b->len)
		b->off = b->len = 0;
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + n)
			cap *= 2;
		b->p = realloc(b->p, cap);
		if (!b->p)
			die("realloc");
		b->cap = cap;
	}
	memcpy(b->p + b->len, data, n);
	b->len += n;
}

static size_t pending(const struct bytes *b)
{
	return b->len - b->off;
}

static struct conn *conn_new(int fd, enum kind kind)
{
	struct conn *c = calloc(1, sizeof(*c));
	if (!c)
		die("calloc");
	c->fd = fd;
	c->kind = kind;
	c->events = EPOLLIN;
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
	if (epoll_ctl(S.ep, EPOLL_CTL_ADD, fd, &ev) < 0)
		die("epoll_ctl add");
	c->next = S.conns;
	if (S.conns)
		S.conns->prev = c;
	S.conns = c;
	S.nconns++;
	return c;
}

static void conn_close(struct conn *c)
{
	char sink[4096];
	/* Reading what already arrived makes close() send FIN, not RST, so the
	 * peer still gets our last response. */
	while (read(c->fd, sink, sizeof(sink)) > 0)
		;
	epoll_ctl(S.ep, EPOLL_CTL_DEL, c->fd, NULL); /* a forked child may share the fd */
	close(c->fd);
	if (c->slow_at)
		S.nslow--;
	if (c->prev)
		c->prev->next = c->next;
	else
		S.conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	S.nconns--;
	free(c->in.p);
	free(c->out.p);
	free(c);
}

static void conn_update(struct conn *c)
{
	uint32_t ev = 0;
	if (!c->closing && !c->peer_eof && !c->slow_at && pending(&c->out) < OUT_HIGH)
		ev |= EPOLLIN;
	if (pending(&c->out))
		ev |= EPOLLOUT;
	if (ev != c->events) {
		struct epoll_event e = { .events = ev, .data.ptr = c };
		epoll_ctl(S.ep, EPOLL_CTL_MOD, c->fd, &e);
		c->events = ev;
	}
}

/* Writes what it can; returns -1 if the connection is gone. */
static int conn_flush(struct conn *c)
{
	while (pending(&c->out)) {
		ssize_t n = send(c->fd, c->out.p + c->out.off, pending(&c->out), MSG_NOSIGNAL);
		if (n > 0) {
			c->out.off += (size_t)n;
		} else if (errno == EAGAIN) {
			break;
		} else if (errno != EINTR) {
			conn_close(c);
			return -1;
		}
	}
	if (!pending(&c->out)) {
		c->out.off = c->out.len = 0;
		if (c->closing && !c->slow_at) {
			conn_close(c);
			return -1;
		}
	}
	conn_update(c);
	return 0;
}

/* ---- HTTP ---- */

static const char *status_text(int status)
{
	switch (status) {
	case 100: return "Continue";
	case 200: return "OK";
	case 400: return "Bad Request";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 413: return "Content Too Large";
	case 431: return "Request Header Fields Too Large";
	case 503: return "Service Unavailable";
	default: return "Unknown";
	}
}

static void respond(struct conn *c, int status, bool keep, bool http10, const char *body, size_t len)
{
	char head[512];
	keep = keep && !S.drain_done;
	int n = snprintf(head, sizeof(head),
			 "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
			 "X-Release: %s\r\n%s\r\n", status, status_text(status), len, S.release,
			 !keep ? "Connection: close\r\n" : http10 ? "Connection: keep-alive\r\n" : "");
	bytes_add(&c->out, head, (size_t)n);
	bytes_add(&c->out, body, len);
	if (!keep)
		c->closing = true;
}

static void respond_str(struct conn *c, int status, const struct req *r, const char *body)
{
	respond(c, status, r->keep_alive, r->http10, body, strlen(body));
}

/* Malformed input: the framing is lost, so answer and close. Returns 0 (stop). */
static int http_error(struct conn *c, int status, const char *why)
{
	char body[128];
	snprintf(body, sizeof(body), "%s\n", why);
	respond(c, status, false, false, body, strlen(body));
	return 0;
}

static bool str_is(struct str s, const char *lit)
{
	return s.n == strlen(lit) && strncasecmp(s.p, lit, s.n) == 0;
}

/* Does a comma-separated header value contain token (case-insensitive)? */
static bool has_token(struct str v, const char *token)
{
	size_t tl = strlen(token), i = 0;
	while (i < v.n) {
		while (i < v.n && (v.p[i] == ' ' || v.p[i] == '\t' || v.p[i] == ','))
			i++;
		size_t s = i;
		while (i < v.n && v.p[i] != ',')
			i++;
		size_t e = i;
		while (e > s && (v.p[e - 1] == ' ' || v.p[e - 1] == '\t'))
			e--;
		if (e - s == tl && strncasecmp(v.p + s, token, tl) == 0)
			return true;
	}
	return false;
}

static bool is_tchar(char ch)
{
	return isalnum((unsigned char)ch) || (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

static bool parse_u64(const char *p, size_t n, unsigned long long max, unsigned long long *out)
{
	unsigned long long v = 0;
	if (n == 0 || n > 19)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return false;
		v = v * 10 + (unsigned long long)(p[i] - '0');
	}
	if (v > max)
		return false;
	*out = v;
	return true;
}

/* Parses the request line and headers (head ends with CRLF CRLF). NULL or an error text. */
static const char *parse_head(const char *head, size_t len, struct req *r)
{
	const char *end = head + len - 2, *p = head, *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
	memset(r, 0, sizeof(*r));
	r->method.p = p;
	while (p < eol && *p >= 'A' && *p <= 'Z')
		p++;
	r->method.n = (size_t)(p - r->method.p);
	if (r->method.n == 0 || p == eol || *p++ != ' ' || p == eol || *p != '/')
		return "bad request line";
	const char *target = p;
	while (p < eol && *p > ' ' && *p < 0x7f)
		p++;
	if (p == eol || *p != ' ' || eol - p != 9 || memcmp(p + 1, "HTTP/1.", 7) != 0 ||
	    (p[8] != '0' && p[8] != '1'))
		return "bad request line";
	r->http10 = p[8] == '0';
	const char *q = memchr(target, '?', (size_t)(p - target));
	r->path = (struct str){ target, (size_t)((q ? q : p) - target) };
	if (q)
		r->query = (struct str){ q + 1, (size_t)(p - q - 1) };
	bool conn_close = false, conn_keep = false, has_te = false;
	r->headers.p = eol + 2;
	r->headers.n = (size_t)(end - r->headers.p);
	for (p = eol + 2; p < end; p = eol + 2) {
		eol = memmem(p, (size_t)(end + 2 - p), "\r\n", 2);
		const char *name = p;
		while (p < eol && is_tchar(*p))
			p++;
		if (p == name || p == eol || *p != ':')
			return "bad header line";
		struct str n = { name, (size_t)(p - name) };
		for (p++; p < eol && (*p == ' ' || *p == '\t'); p++)
			;
		const char *ve = eol;
		while (ve > p && (ve[-1] == ' ' || ve[-1] == '\t'))
			ve--;
		struct str v = { p, (size_t)(ve - p) };
		for (const char *x = p; x < ve; x++)
			if (((unsigned char)*x < ' ' && *x != '\t') || *x == 0x7f)
				return "control character in header";
		if (str_is(n, "content-length")) {
			unsigned long long cl;
			if (!parse_u64(v.p, v.n, ~0ULL, &cl) || (r->has_clen && cl != r->clen))
				return "bad content-length";
			r->has_clen = true;
			r->clen = cl;
		} else if (str_is(n, "transfer-encoding")) {
			if (!str_is(v, "chunked") || has_te)
				return "unsupported transfer-encoding";
			has_te = r->chunked = true;
		} else if (str_is(n, "connection")) {
			r->conn_hdr = v;
			conn_close |= has_token(v, "close");
			conn_keep |= has_token(v, "keep-alive");
		} else if (str_is(n, "host")) {
			r->has_host = true;
		} else if (str_is(n, "upgrade")) {
			r->upgrade = v;
		} else if (str_is(n, "sec-websocket-key")) {
			r->ws_key = v;
		} else if (str_is(n, "sec-websocket-version")) {
			r->ws_version = v;
		} else if (str_is(n, "expect")) {
			r->expect = v;
		}
	}
	if (r->chunked && r->has_clen)
		return "both content-length and transfer-encoding";
	if (!r->http10 && !r->has_host)
		return "missing host";
	r->keep_alive = r->http10 ? conn_keep && !conn_close : !conn_close;
	return NULL;
}

/*
 * Walks a chunked body. Returns bytes consumed when complete, 0 if more input
 * is needed, -1 if malformed. With dst, copies the data there.
 */
static long long chunked(const char *p, size_t avail, char *dst, size_t *body_len)
{
	size_t i = 0, total = 0;
	for (;;) {
		unsigned long long size = 0;
		size_t digits = 0;
		for (; i < avail && isxdigit((unsigned char)p[i]); i++, digits++) {
			if (digits >= 8)
				return -1;
			int ch = tolower((unsigned char)p[i]);
			size = size * 16 + (unsigned long long)(ch <= '9' ? ch - '0' : ch - 'a' + 10);
		}
		if (i == avail)
			return 0;
		if (digits == 0 || (p[i] != '\r' && p[i] != ';'))
			return -1;
		const char *eol = memmem(p + i, avail - i, "\r\n", 2); /* skips chunk extensions */
		if (!eol)
			return avail - i > 1024 ? -1 : 0;
		i = (size_t)(eol - p) + 2;
		if (size == 0)
			break;
		if (total + size > MAX_BODY)
			return -1;
		if (avail - i < size + 2)
			return 0;
		if (p[i + size] != '\r' || p[i + size + 1] != '\n')
			return -1;
		if (dst)
			memcpy(dst + total, p + i, size);
		total += size;
		i += size + 2;
	}
	for (;;) { /* trailer fields, then the empty line */
		const char *eol = memmem(p + i, avail - i, "\r\n", 2);
		if (!eol)
			return avail - i > MAX_HEAD ? -1 : 0;
		size_t line = (size_t)(eol - (p + i));
		i += line + 2;
		if (line == 0)
			break;
	}
	*body_len = total;
	return (long long)i;
}

/* The value of key in the query string; false if absent. */
static bool query_get(const struct req *r, const char *key, struct str *out)
{
	size_t kl = strlen(key);
	const char *p = r->query.p, *end = r->query.p + r->query.n;
	while (p && p < end) {
		const char *amp = memchr(p, '&', (size_t)(end - p));
		const char *pe = amp ? amp : end;
		if ((size_t)(pe - p) > kl && memcmp(p, key, kl) == 0 && p[kl] == '=') {
			*out = (struct str){ p + kl + 1, (size_t)(pe - p) - kl - 1 };
			return true;
		}
		p = amp ? amp + 1 : NULL;
	}
	return false;
}

static bool query_num(const struct req *r, const char *key, unsigned long long def,
		      unsigned long long max, unsigned long long *out)
{
	struct str v;
	if (!query_get(r, key, &v)) {
		*out = def;
		return true;
	}
	return parse_u64(v.p, v.n, max, out);
}

/* stream=stdout|stderr (default stdout); returns the fd or -1. */
static int query_stream(const struct req *r, const char **name)
{
	struct str v = { "stdout", 6 };
	query_get(r, "stream", &v);
	*name = str_is(v, "stderr") ? "stderr" : "stdout";
	return str_is(v, "stdout") ? 1 : str_is(v, "stderr") ? 2 : -1;
}

/* Writes count lines (or until the monotonic deadline if until > 0); returns how many. */
static unsigned long long write_lines(int fd, const char *what, const char *stream, size_t size,
				      unsigned long long seq, unsigned long long count, long long until)
{
	size_t cap = 65536 + 2 * (size + 512);
	char *buf = malloc(cap);
	unsigned long long done = 0;
	if (!buf)
		die("malloc");
	while (until > 0 ? now_ms() < until : done < count) {
		size_t len = 0;
		while (len + size + 512 <= cap && (until > 0 || done < count)) {
			int n = snprintf(buf + len, 512, "testsrv %s seq=%llu release=%s stream=%s ",
					 what, seq + done, S.release, stream);
			size_t line = (size_t)n;
			if (line < size) {
				memset(buf + len + line, 'x', size - line);
				line = size;
			}
			buf[len + line] = '\n';
			len += line + 1;
			done++;
			if (len >= 65536)
				break;
		}
		write_all(fd, buf, len);
	}
	free(buf);
	return done;
}

static void logflood(int fd, const char *stream, size_t size, long long seconds)
{
	pid_t pid = fork();
	if (pid != 0) {
		if (pid < 0)
			perror("testsrv: fork");
		return;
	}
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	close(S.ep);
	close(S.sig_fd);
	if (S.http_fd >= 0)
		close(S.http_fd);
	if (S.echo_fd >= 0)
		close(S.echo_fd);
	for (struct conn *c = S.conns; c; c = c->next)
		close(c->fd);
	unsigned long long n = write_lines(fd, "logflood", stream, size, 1, 0,
					   now_ms() + seconds * 1000);
	char done[96];
	int len = snprintf(done, sizeof(done), "testsrv logflood done lines=%llu\n", n);
	write_all(fd, done, (size_t)len);
	_exit(0);
}

static void ws_send(struct conn *c, unsigned char b0, const char *payload, size_t len)
{
	unsigned char h[10] = { b0 };
	size_t hl = len < 126 ? 2 : len < 65536 ? 4 : 10;
	h[1] = (unsigned char)(hl == 2 ? len : hl == 4 ? 126 : 127);
	for (size_t i = 2; i < hl; i++) /* big-endian extended length */
		h[i] = (unsigned char)((uint64_t)len >> (8 * (hl - 1 - i)));
	bytes_add(&c->out, h, hl);
	bytes_add(&c->out, payload, len);
}

static void ws_close(struct conn *c, unsigned code)
{
	char p[2] = { (char)(code >> 8), (char)code };
	ws_send(c, 0x88, p, 2);
	c->closing = true;
}

static void ws_accept(struct conn *c, const struct req *r)
{
	if (!str_is(r->method, "GET") || r->http10 || !has_token(r->upgrade, "websocket") ||
	    !has_token(r->conn_hdr, "upgrade") || r->ws_key.n != 24 || !str_is(r->ws_version, "13")) {
		http_error(c, 400, "bad websocket handshake");
		return;
	}
	unsigned char key[24 + sizeof(WS_GUID)], digest[20];
	char accept[32], head[512];
	memcpy(key, r->ws_key.p, 24);
	memcpy(key + 24, WS_GUID, sizeof(WS_GUID) - 1);
	sha1(key, 24 + sizeof(WS_GUID) - 1, digest);
	base64(digest, 20, accept);
	int n = snprintf(head, sizeof(head),
			 "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
			 "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\nX-Release: %s\r\n\r\n",
			 accept, S.release);
	bytes_add(&c->out, head, (size_t)n);
	c->kind = K_WS;
	if (S.drain_done)
		ws_close(c, 1001);
}

static void route(struct conn *c, const struct req *r, const char *body, size_t body_len)
{
	bool get = str_is(r->method, "GET"), post = str_is(r->method, "POST");
	unsigned long long a = 0, b = 0;
	char msg[160];
	const char *stream = "stdout";
	int fd;

	if (str_is(r->path, "/") && get) {
		snprintf(msg, sizeof(msg), "hello from %s\n", S.release);
		respond_str(c, 200, r, msg);
	} else if (str_is(r->path, "/health")) {
		bool ok = !S.health_fail && now_ms() - S.start_ms >= S.health_delay;
		respond_str(c, ok ? 200 : 503, r, ok ? "ok" : "unhealthy");
	} else if (str_is(r->path, "/slow") && get) {
		if (!query_num(r, "ms", 0, MAX_SLOW_MS, &a)) {
			http_error(c, 400, "bad ms");
		} else {
			c->slow_at = now_ms() + (long long)a;
			c->slow_ms = (long long)a;
			c->slow_keep = r->keep_alive;
			c->slow_http10 = r->http10;
			S.nslow++;
		}
	} else if (str_is(r->path, "/echo") && post) {
		respond(c, 200, r->keep_alive, r->http10, body, body_len);
	} else if (str_is(r->path, "/ws")) {
		ws_accept(c, r);
	} else if ((str_is(r->path, "/log") || str_is(r->path, "/logflood")) && get) {
		bool flood = str_is(r->path, "/logflood");
		fd = query_stream(r, &stream);
		if (fd < 0 || !query_num(r, flood ? "seconds" : "n", 1, flood ? 3600 : 10000000, &a) ||
		    !query_num(r, "size", 100, MAX_LINE, &b)) {
			http_error(c, 400, "bad n, seconds, size or stream");
		} else if (flood) {
			logflood(fd, stream, (size_t)b, (long long)a);
			snprintf(msg, sizeof(msg), "logflood seconds=%llu size=%llu\n", a, b);
			respond_str(c, 200, r, msg);
		} else {
			write_lines(fd, "log", stream, (size_t)b, S.log_seq + 1, a, 0);
			snprintf(msg, sizeof(msg), "logged n=%llu first=%llu last=%llu\n", a,
				 S.log_seq + 1, S.log_seq + a);
			S.log_seq += a;
			respond_str(c, 200, r, msg);
		}
	} else if (str_is(r->path, "/headers") && get) {
		respond(c, 200, r->keep_alive, r->http10, r->headers.p, r->headers.n);
	} else if (str_is(r->path, "/exit") && get) {
		if (!query_num(r, "code", 0, 255, &a)) {
			http_error(c, 400, "bad code");
			return;
		}
		snprintf(msg, sizeof(msg), "exiting code=%llu\n", a);
		respond(c, 200, false, r->http10, msg, strlen(msg));
		send(c->fd, c->out.p + c->out.off, pending(&c->out), MSG_NOSIGNAL);
		_exit((int)a);
	} else if (str_is(r->path, "/") || str_is(r->path, "/echo")) {
		respond_str(c, 405, r, "method not allowed\n");
	} else {
		respond_str(c, 404, r, "not found\n");
	}
}

/* Handles one request if complete. Returns 1 if it consumed one, 0 to wait/stop. */
static int http_step(struct conn *c)
{
	char *base = c->in.p + c->in.off;
	size_t avail = pending(&c->in);
	char *end = memmem(base, avail < MAX_HEAD ? avail : MAX_HEAD, "\r\n\r\n", 4);
	if (!end)
		return avail >= MAX_HEAD ? http_error(c, 431, "header too large") : 0;
	size_t head_len = (size_t)(end - base) + 4, body_len = 0, used;
	struct req r;
	const char *why = parse_head(base, head_len, &r);
	if (why)
		return http_error(c, 400, why);
	char *body = base + head_len, *decoded = NULL;
	if (r.chunked) {
		long long n = chunked(body, avail - head_len, NULL, &body_len);
		if (n < 0)
			return http_error(c, 400, "bad chunked body");
		if (n == 0 && avail >= IN_CAP)
			return http_error(c, 413, "body too large");
		if (n > 0) {
			decoded = malloc(body_len + 1);
			if (!decoded)
				die("malloc");
			chunked(body, avail - head_len, decoded, &body_len);
			body = decoded;
		}
		used = head_len + (size_t)n;
		if (n == 0)
			used = 0;
	} else {
		if (r.clen > MAX_BODY)
			return http_error(c, 413, "body too large");
		body_len = (size_t)r.clen;
		used = avail - head_len >= body_len ? head_len + body_len : 0;
	}
	if (used == 0) {
		if (!c->sent_continue && str_is(r.expect, "100-continue")) {
			bytes_add(&c->out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
			c->sent_continue = true;
		}
		return 0;
	}
	c->sent_continue = false;
	route(c, &r, body, body_len);
	free(decoded);
	c->in.off += used;
	return 1;
}

/* Handles one complete client frame. Returns 1 if it consumed one, 0 to wait/stop. */
static int ws_step(struct conn *c)
{
	unsigned char *p = (unsigned char *)c->in.p + c->in.off;
	size_t avail = pending(&c->in);
	if (avail < 2)
		return 0;
	bool fin = p[0] & 0x80;
	unsigned op = p[0] & 0x0f;
	size_t hl = (p[1] & 0x7f) == 126 ? 4 : (p[1] & 0x7f) == 127 ? 10 : 2;
	if (avail < hl)
		return 0;
	uint64_t len = hl == 2 ? p[1] & 0x7f : 0;
	for (size_t i = 2; i < hl; i++)
		len = len << 8 | p[i];
	/* RFC 6455 5.1-5.5: client frames are masked, no RSV bits, small unfragmented controls */
	if ((p[0] & 0x70) || !(p[1] & 0x80) || (op > 2 && op < 8) || op > 10 ||
	    (op >= 8 && (!fin || len > 125))) {
		ws_close(c, 1002);
		return 0;
	}
	if (len > MAX_BODY) {
		ws_close(c, 1009);
		return 0;
	}
	if (avail < hl + 4 + len)
		return 0;
	unsigned char *mask = p + hl, *data = p + hl + 4;
	for (uint64_t i = 0; i < len; i++)
		data[i] ^= mask[i % 4];
	c->in.off += hl + 4 + (size_t)len;
	if (op == 8) {
		ws_send(c, 0x88, (char *)data, len >= 2 ? 2 : 0);
		c->closing = true;
		return 0;
	}
	if (op == 9)
		ws_send(c, 0x8A, (char *)data, (size_t)len);
	else if (op != 10)
		ws_send(c, (unsigned char)((fin ? 0x80 : 0) | op), (char *)data, (size_t)len);
	return 1;
}

static void conn_process(struct conn *c)
{
	while (!c->closing && !c->slow_at && pending(&c->out) < OUT_HIGH && pending(&c->in)) {
		int progressed;
		if (c->kind == K_ECHO) {
			bytes_add(&c->out, c->in.p + c->in.off, pending(&c->in));
			c->in.off = c->in.len;
			progressed = 0;
		} else {
			progressed = c->kind == K_HTTP ? http_step(c) : ws_step(c);
		}
		if (!progressed)
			break;
	}
	if (c->in.off == c->in.len)
		c->in.off = c->in.len = 0;
	if (c->peer_eof || (S.drain_done && c->kind == K_ECHO))
		c->closing = true;
	conn_flush(c);
}

static void conn_read(struct conn *c)
{
	if (c->in.off > 0 && c->in.cap - c->in.len < 16384) {
		memmove(c->in.p, c->in.p + c->in.off, pending(&c->in));
		c->in.len -= c->in.off;
		c->in.off = 0;
	}
	if (c->in.cap - c->in.len < 16384 && c->in.cap < IN_CAP) {
		size_t cap = c->in.cap ? c->in.cap * 2 : 16384;
		c->in.cap = cap < IN_CAP ? cap : IN_CAP;
		c->in.p = realloc(c->in.p, c->in.cap);
		if (!c->in.p)
			die("realloc");
	}
	if (c->in.len == c->in.cap) { /* no request or frame can ever complete */
		http_error(c, 413, "request too large");
		conn_flush(c);
		return;
	}
	ssize_t n = read(c->fd, c->in.p + c->in.len, c->in.cap - c->in.len);
	if (n > 0)
		c->in.len += (size_t)n;
	else if (n == 0)
		c->peer_eof = true;
	else if (errno != EAGAIN && errno != EINTR)
		c->peer_eof = true; /* a reset: close once anything pending is handled */
	else
		return;
	conn_process(c);
}

/* ---- listeners, signals, timers, main loop ---- */

/* IPv4 on all interfaces: containers are reached by their bridge address. */
static int listen_on(int port, int *bound)
{
	int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				 .sin_addr.s_addr = htonl(INADDR_ANY) };
	socklen_t al = sizeof(a);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, SOMAXCONN) < 0 ||
	    getsockname(fd, (struct sockaddr *)&a, &al) < 0)
		die("listen");
	*bound = ntohs(a.sin_port);
	return fd;
}

static void watch(int fd, void *tag)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = tag };
	if (epoll_ctl(S.ep, EPOLL_CTL_ADD, fd, &ev) < 0)
		die("epoll_ctl");
}

static void accept_all(int lfd, enum kind kind)
{
	int one = 1;
	for (;;) {
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			return;
		}
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		conn_new(fd, kind);
	}
}

static void stop_listening(int *fd, enum kind kind)
{
	if (*fd < 0)
		return;
	accept_all(*fd, kind); /* the kernel already completed these handshakes */
	epoll_ctl(S.ep, EPOLL_CTL_DEL, *fd, NULL);
	close(*fd);
	*fd = -1;
}

static void on_signal(void)
{
	struct signalfd_siginfo si;
	while (read(S.sig_fd, &si, sizeof(si)) == sizeof(si)) {
		if (si.ssi_signo == SIGCHLD) {
			while (waitpid(-1, NULL, WNOHANG) > 0)
				;
		} else if (!S.draining) {
			S.draining = true;
			S.drain_at = now_ms() + S.stop_delay;
			stop_listening(&S.http_fd, K_HTTP);
			stop_listening(&S.echo_fd, K_ECHO);
		}
	}
}

/* Has a request arrived that the loop has not read yet? Then it is in flight. */
static bool unread(struct conn *c)
{
	char ch;
	return recv(c->fd, &ch, 1, MSG_PEEK | MSG_DONTWAIT) > 0;
}

static void run_timers(void)
{
	long long now = now_ms();
	struct conn *c, *next;
	if (S.draining && !S.drain_done && now >= S.drain_at) {
		S.drain_done = true;
		for (c = S.conns; c; c = next) {
			next = c->next;
			if (c->kind == K_WS && !c->closing)
				ws_close(c, 1001);
			else if (c->kind == K_ECHO || (!c->slow_at && !pending(&c->in) && !unread(c)))
				c->closing = true; /* idle keep-alive connection */
			conn_flush(c);
		}
	}
	for (c = S.nslow ? S.conns : NULL; c; c = next) {
		next = c->next;
		if (c->slow_at && now >= c->slow_at) {
			char msg[64];
			snprintf(msg, sizeof(msg), "slow ms=%lld\n", c->slow_ms);
			c->slow_at = 0;
			S.nslow--;
			respond(c, 200, c->slow_keep, c->slow_http10, msg, strlen(msg));
			conn_process(c); /* pipelined requests may be waiting */
		}
	}
	if (S.drain_done && S.nconns == 0)
		exit(0);
}

static int next_timeout(void)
{
	long long now = now_ms(), due = -1;
	if (S.draining && !S.drain_done)
		due = S.drain_at;
	for (struct conn *c = S.nslow ? S.conns : NULL; c; c = c->next)
		if (c->slow_at && (due < 0 || c->slow_at < due))
			due = c->slow_at;
	if (due < 0)
		return -1;
	return due <= now ? 0 : (int)(due - now);
}

int main(void)
{
	S.start_ms = now_ms();
	S.release = getenv("RELEASE") && *getenv("RELEASE") ? getenv("RELEASE") : "dev";
	for (const char *p = S.release; *p; p++)
		if ((unsigned char)*p <= ' ' || *p == 0x7f || p - S.release > 200) {
			fprintf(stderr, "testsrv: RELEASE must be up to 200 printable bytes\n");
			return 2;
		}
	int port = (int)env_num("PORT", 8080, 65535);
	int echo_port = (int)env_num("TCP_ECHO_PORT", -1, 65535);
	S.health_delay = env_num("HEALTH_DELAY_MS", 0, 1LL << 40);
	S.health_fail = env_num("HEALTH_FAIL", 0, 1) == 1;
	S.stop_delay = env_num("STOP_DELAY_MS", 0, 1LL << 40);
	long long start_delay = env_num("START_DELAY_MS", 0, 1LL << 40);

	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGCHLD);
	sigprocmask(SIG_BLOCK, &set, NULL); /* delivered through the signalfd instead */
	signal(SIGPIPE, SIG_IGN);
	if (start_delay > 0) {
		struct timespec ts = { start_delay / 1000, (start_delay % 1000) * 1000000 };
		while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
			;
	}
	if ((S.ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
		die("epoll_create1");
	if ((S.sig_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC)) < 0)
		die("signalfd");
	watch(S.sig_fd, &TAG_SIG);
	S.echo_fd = -1;
	char line[320];
	if (echo_port >= 0) {
		S.echo_fd = listen_on(echo_port, &echo_port);
		watch(S.echo_fd, &TAG_ECHO);
		int n = snprintf(line, sizeof(line), "testsrv tcp-echo port=%d\n", echo_port);
		write_all(1, line, (size_t)n);
	}
	S.http_fd = listen_on(port, &port);
	watch(S.http_fd, &TAG_HTTP);
	int n = snprintf(line, sizeof(line), "testsrv release=%s listening port=%d\n", S.release, port);
	write_all(1, line, (size_t)n);

	struct epoll_event evs[256];
	for (;;) {
		int ready = epoll_wait(S.ep, evs, 256, next_timeout());
		if (ready < 0 && errno != EINTR)
			die("epoll_wait");
		for (int i = 0; i < ready; i++) {
			void *tag = evs[i].data.ptr;
			if (tag == &TAG_HTTP) {
				accept_all(S.http_fd, K_HTTP);
			} else if (tag == &TAG_ECHO) {
				accept_all(S.echo_fd, K_ECHO);
			} else if (tag == &TAG_SIG) {
				on_signal();
			} else {
				struct conn *c = tag;
				if (evs[i].events & EPOLLERR)
					conn_close(c);
				else if (evs[i].events & (EPOLLIN | EPOLLHUP))
					conn_read(c);
				else if (evs[i].events & EPOLLOUT)
					conn_flush(c);
			}
		}
		run_timers();
	}
}
