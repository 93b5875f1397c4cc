#include "proxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <http_parser.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "clock.h"
#include "dlist.h"
#include "log.h"

/*
 * Layout of this file: buffers and timers; message parsing glue; the route
 * table (listeners, routes, backends, drains); client connections (request
 * side); upstream connections (response side, pool); tunnels; stop and free.
 *
 * Every connection's read buffer holds [0, fwd) bytes already forwarded (or,
 * for a request head, still needed by a retry), [fwd, pos) parsed and not yet
 * forwarded, [pos, len) read and not yet parsed (pipelined requests wait
 * there). Offsets in struct msg point into the same buffer, which never moves
 * while a message head is being used.
 */

#define BUF_MIN ((size_t)16 << 10)
#define BUF_FREE_MAX 1024        /* free buffers kept for reuse */
#define MAX_HEADERS 128          /* per message; more: 431 (request) / 502 (response) */
#define MAX_IOV (2 * MAX_HEADERS + 16)
#define POOL_DEFAULT 64
#define DOWN_S 2.0               /* a backend that refused a connect is skipped this long */
#define LINGER_S 2.0             /* input drained after our FIN before the close */
#define ACCEPT_BATCH 64
#define ACCEPT_PAUSE_S 0.1       /* out of descriptors: stop accepting this long */
#define MAX_ATTEMPTS 4           /* backends tried for one request */
#define CONN_TOKENS_MAX 8        /* header names a Connection header may list */
#define DRAIN_TIMEOUT_MAX_MS ((int64_t)24 * 3600 * 1000)

/* ------------------------------------------------------------------ */
/* types                                                               */

struct hdr {
	uint32_t name, name_len, value, value_len, end; /* end: after the line's LF */
};

struct msg {
	http_parser hp;
	char *base;              /* the buffer offsets refer to, set before parsing */
	uint32_t url, url_len;
	uint32_t nhdr;
	uint8_t last;            /* 0 nothing, 1 field, 2 value: the previous callback */
	bool overflow;           /* more than MAX_HEADERS */
	bool folded;             /* obsolete line folding or a broken header line */
	bool head_done, done;
	bool skip_body;          /* a response to HEAD */
	struct hdr hdr[MAX_HEADERS];
};

struct ltimer {
	ev_timer t;
	ev_tstamp deadline;      /* 0: none */
	ev_tstamp armed;         /* when the ev_timer fires */
};

struct upconn;
struct route;
struct listener;

struct backend {
	struct proxy *p;
	struct route *route;               /* NULL once the route is removed */
	struct backend *next, *prev;       /* in route->backends or p->orphans */
	char id[PROXY_ID_MAX + 1];
	char address[PROXY_ADDRESS_MAX + 1];
	struct sockaddr_storage sa;
	socklen_t salen;
	bool active;                       /* in its route's active set */
	int guard;                         /* > 0: being iterated, do not free */
	uint32_t inflight;                 /* requests in flight + tunnels */
	uint32_t conns;                    /* upstream connections open */
	uint64_t requests, errors;
	ev_tstamp down_until;
	struct upconn *idle;               /* pool, most recently used first */
	uint32_t nidle;
	struct upconn *ups;                /* every open upstream connection */
};

struct route {
	struct proxy *p;
	struct route *next, *prev;         /* p->routes */
	struct route *lnext;               /* listener's routes */
	struct listener *l;
	char app[PROXY_NAME_MAX + 1];
	char service[PROXY_NAME_MAX + 1];
	char release[PROXY_RELEASE_MAX + 1];
	int64_t generation;
	enum proxy_protocol protocol;
	char **hosts;
	size_t *host_len;
	size_t nhosts;
	struct backend **set;              /* the active set */
	size_t nset, rr;
	struct backend *backends;          /* every live backend object, active or retired */
};

struct listener {
	struct proxy *p;
	struct listener *next, *prev;      /* p->listeners while open */
	int port;
	enum proxy_protocol protocol;
	int fd;
	ev_io io;
	ev_timer pause;
	bool open;
	int refs;                          /* client connections + 1 while open */
	struct route *routes;
	char port_str[8];
};

struct cconn {
	struct proxy *p;
	struct cconn *next, *prev;
	struct listener *l;
	int fd;
	ev_io rio, wio;
	struct ltimer tm;
	char *buf;
	uint32_t len, pos, fwd, head_end;
	struct msg m;
	struct upconn *up;
	struct backend *be;                /* the request counts against it */
	struct route *route;               /* only valid inside one dispatch */
	bool active;                       /* a request is being handled */
	bool req_done;                     /* its message is complete */
	bool req_sent;                     /* and written upstream */
	bool has_body, retryable, upgrade, keep, is_head;
	bool stale_retried;
	bool eof;                          /* client sent FIN */
	bool tunnel, lingering, local, closing;
	bool timed_head;                   /* header deadline running */
	uint8_t attempts;
	struct backend *tried[MAX_ATTEMPTS];
	/* request head analysis */
	uint64_t drop[MAX_HEADERS / 64];
	int xff_last;
	bool has_xfp, has_xfport;
	uint32_t term;                     /* start of the head's terminating CRLF */
	/* bytes to write upstream */
	struct iovec wiov[MAX_IOV];
	int wn, wi;
	char gen[320];
	/* a response the proxy makes itself */
	char *lout;
	size_t lout_len, lout_off;
	char ip[INET6_ADDRSTRLEN];
	char host[PROXY_HOST_MAX + 1];
};

struct upconn {
	struct proxy *p;
	struct backend *be;
	struct upconn *bnext, *bprev;      /* be->ups */
	struct upconn *pnext, *pprev;      /* be->idle */
	int fd;
	ev_io rio, wio;
	struct ltimer tm;
	struct cconn *c;                   /* attached client; NULL when pooled */
	char *buf;
	uint32_t len, pos, fwd;
	struct msg m;
	bool connecting, reused, got_byte, head_sent, resp_done, pooled, eof, info;
	struct iovec wiov[MAX_IOV];
	int wn, wi;
	char gen[64];
};

struct drain {
	struct proxy *p;
	struct drain *next, *prev;
	uint64_t id;
	char app[PROXY_NAME_MAX + 1];
	char service[PROXY_NAME_MAX + 1];
	char **ids;
	size_t nids;
	int64_t started_ms;
	ev_timer timeout;
	proxy_drain_fn cb;
	void *arg;
};

struct proxy {
	struct ev_loop *loop;
	char *bind;
	char *health_path;
	size_t health_len;
	ev_tstamp idle_s, header_s, connect_s, upstream_s, up_idle_s, grace_s;
	size_t max_header, buf_size, pool_max;
	bool draining;
	bool stopping;
	struct listener *listeners;
	struct route *routes;
	size_t nroutes;
	struct backend *orphans;           /* backends of removed routes still in use */
	struct cconn *conns;
	size_t nconns;
	char *free_bufs;                   /* linked through their first bytes */
	size_t nfree_bufs;
	struct drain *drains;
	uint64_t next_drain_id;
	ev_timer drain_kick;
	ev_timer stop_deadline;
	proxy_idle_fn on_idle;
	void *on_idle_arg;
	ev_idle idle_notify;
	bool idle_notified;
};

/* ------------------------------------------------------------------ */
/* buffers, timers, small helpers                                      */

static char *pbuf_get(struct proxy *p)
{
	char *b = p->free_bufs;
	if (b) {
		memcpy(&p->free_bufs, b, sizeof(char *));
		p->nfree_bufs--;
		return b;
	}
	return malloc(p->buf_size);
}

static void pbuf_put(struct proxy *p, char *b)
{
	if (!b)
		return;
	if (p->nfree_bufs >= BUF_FREE_MAX) {
		free(b);
		return;
	}
	memcpy(b, &p->free_bufs, sizeof(char *));
	p->free_bufs = b;
	p->nfree_bufs++;
}

/* Lazy deadline: moving it later costs nothing (checked when the timer
 * fires); only an earlier deadline re-arms the ev_timer. */
static void lt_set(struct ev_loop *loop, struct ltimer *lt, ev_tstamp when)
{
	lt->deadline = when;
	if (when == 0)
		return;
	if (ev_is_active(&lt->t) && lt->armed <= when)
		return;
	ev_timer_stop(loop, &lt->t);
	ev_tstamp after = when - ev_now(loop);
	ev_timer_set(&lt->t, after > 0 ? after : 0., 0.);
	ev_timer_start(loop, &lt->t);
	lt->armed = when;
}

/* From the timer callback: true when the deadline has really passed. */
static bool lt_due(struct ev_loop *loop, struct ltimer *lt)
{
	if (lt->deadline == 0)
		return false;
	ev_tstamp now = ev_now(loop);
	if (lt->deadline > now + 0.0005) {
		ev_timer_set(&lt->t, lt->deadline - now, 0.);
		ev_timer_start(loop, &lt->t);
		lt->armed = lt->deadline;
		return false;
	}
	lt->deadline = 0;
	return true;
}

static void set_nodelay(int fd)
{
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static bool name_is(const char *b, const struct hdr *h, const char *lit, size_t len)
{
	return h->name_len == len && strncasecmp(b + h->name, lit, len) == 0;
}

#define NAME_IS(b, h, lit) name_is((b), (h), (lit), sizeof(lit) - 1)

static bool valid_name(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > PROXY_NAME_MAX || s[0] < 'a' || s[0] > 'z')
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
			return false;
	return true;
}

static bool valid_id(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > PROXY_ID_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
		      (s[i] >= '0' && s[i] <= '9') || s[i] == '-' || s[i] == '_'))
			return false;
	return true;
}

/* Host names as routes hold them: lowercase letters, digits, '-', '.', '_'. */
static bool valid_host(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > PROXY_HOST_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char ch = s[i];
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		      (ch >= '0' && ch <= '9') || ch == '-' || ch == '.' || ch == '_'))
			return false;
	}
	return true;
}

/* "1.2.3.4:80" or "[::1]:80" -> sockaddr. */
static int parse_address(const char *s, struct sockaddr_storage *ss, socklen_t *len)
{
	char host[PROXY_ADDRESS_MAX + 1];
	const char *port;
	if (strlen(s) > PROXY_ADDRESS_MAX)
		return -1;
	if (s[0] == '[') {
		const char *end = strchr(s, ']');
		if (!end || end[1] != ':')
			return -1;
		memcpy(host, s + 1, (size_t)(end - s - 1));
		host[end - s - 1] = '\0';
		port = end + 2;
	} else {
		const char *colon = strrchr(s, ':');
		if (!colon || strchr(s, ':') != colon)
			return -1;
		memcpy(host, s, (size_t)(colon - s));
		host[colon - s] = '\0';
		port = colon + 1;
	}
	char *endp;
	errno = 0;
	long pn = strtol(port, &endp, 10);
	if (!*port || *endp || errno || pn < 1 || pn > 65535 || port[0] == '+' || port[0] == '-')
		return -1;
	memset(ss, 0, sizeof *ss);
	struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
	if (s[0] != '[' && inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
		a4->sin_family = AF_INET;
		a4->sin_port = htons((uint16_t)pn);
		*len = sizeof *a4;
		return 0;
	}
	if (s[0] == '[' && inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
		a6->sin6_family = AF_INET6;
		a6->sin6_port = htons((uint16_t)pn);
		*len = sizeof *a6;
		return 0;
	}
	return -1;
}

/* ------------------------------------------------------------------ */
/* http-parser glue: records where the URL and each header are         */

static int m_begin(http_parser *hp)
{
	struct msg *m = hp->data;
	m->url = m->url_len = 0;
	m->nhdr = 0;
	m->last = 0;
	m->overflow = m->folded = false;
	m->head_done = m->done = false;
	return 0;
}

static int m_url(http_parser *hp, const char *at, size_t len)
{
	struct msg *m = hp->data;
	uint32_t off = (uint32_t)(at - m->base);
	if (m->url_len && m->url + m->url_len == off)
		m->url_len += (uint32_t)len;
	else if (!m->url_len) {
		m->url = off;
		m->url_len = (uint32_t)len;
	}
	return 0;
}

static int m_field(http_parser *hp, const char *at, size_t len)
{
	struct msg *m = hp->data;
	uint32_t off = (uint32_t)(at - m->base);
	if (m->last == 1) {
		struct hdr *h = &m->hdr[m->nhdr - 1];
		if (h->name + h->name_len != off) {
			m->folded = true;
			return -1;
		}
		h->name_len += (uint32_t)len;
		return 0;
	}
	if (m->nhdr == MAX_HEADERS) {
		m->overflow = true;
		return -1;
	}
	struct hdr *h = &m->hdr[m->nhdr++];
	h->name = off;
	h->name_len = (uint32_t)len;
	h->value = off + (uint32_t)len;
	h->value_len = 0;
	m->last = 1;
	return 0;
}

static int m_value(http_parser *hp, const char *at, size_t len)
{
	struct msg *m = hp->data;
	uint32_t off = (uint32_t)(at - m->base);
	if (m->nhdr == 0)
		return -1;
	struct hdr *h = &m->hdr[m->nhdr - 1];
	if (m->last == 2) {
		/* A second piece that does not continue the first is a folded line. */
		if (h->value + h->value_len != off) {
			m->folded = true;
			return -1;
		}
		h->value_len += (uint32_t)len;
		return 0;
	}
	h->value = off;
	h->value_len = (uint32_t)len;
	m->last = 2;
	return 0;
}

static int m_headers_done(http_parser *hp)
{
	struct msg *m = hp->data;
	m->head_done = true;
	http_parser_pause(hp, 1);
	return m->skip_body ? 1 : 0;
}

static int m_done(http_parser *hp)
{
	struct msg *m = hp->data;
	m->done = true;
	http_parser_pause(hp, 1);
	return 0;
}

static const http_parser_settings parser_settings = {
	.on_message_begin = m_begin,
	.on_url = m_url,
	.on_header_field = m_field,
	.on_header_value = m_value,
	.on_headers_complete = m_headers_done,
	.on_message_complete = m_done,
};

/* Parses [*pos, len) of base; returns the http_errno (HPE_PAUSED at a head's
 * or message's end, HPE_OK when all was consumed). */
static enum http_errno m_parse(struct msg *m, char *base, uint32_t *pos, uint32_t len)
{
	m->base = base;
	if (HTTP_PARSER_ERRNO(&m->hp) == HPE_PAUSED)
		http_parser_pause(&m->hp, 0);
	size_t n = http_parser_execute(&m->hp, &parser_settings, base + *pos, len - *pos);
	*pos += (uint32_t)n;
	return HTTP_PARSER_ERRNO(&m->hp);
}

/* Finds each header line's end and checks the head has no stray bytes between
 * lines (folding, junk). Returns the start of the terminating blank line, or
 * UINT32_MAX when the head is malformed. */
static uint32_t m_line_ends(struct msg *m, const char *b, uint32_t head_end)
{
	for (uint32_t i = 0; i < m->nhdr; i++) {
		struct hdr *h = &m->hdr[i];
		uint32_t from = h->value + h->value_len;
		const char *lf = memchr(b + from, '\n', head_end - from);
		if (!lf)
			return UINT32_MAX;
		h->end = (uint32_t)(lf - b) + 1;
		uint32_t next = i + 1 < m->nhdr ? m->hdr[i + 1].name : UINT32_MAX;
		if (next != UINT32_MAX && next != h->end)
			return UINT32_MAX;
	}
	uint32_t term = m->nhdr ? m->hdr[m->nhdr - 1].end : 0;
	if (!m->nhdr) {
		/* request/status line only: the blank line is the last 1 or 2 bytes */
		term = head_end - 1;
		if (term > 0 && b[term - 1] == '\r')
			term--;
		/* and the line before it must end right there */
		if (term == 0 || b[term - 1] != '\n')
			return UINT32_MAX;
		return term;
	}
	uint32_t rest = head_end - term;
	if (!((rest == 2 && b[term] == '\r') || rest == 1))
		return UINT32_MAX;
	return term;
}

/* Splits a Connection header value into tokens; calls back for each. */
static void conn_tokens(const char *v, uint32_t len, void (*fn)(const char *, size_t, void *),
			void *arg)
{
	uint32_t i = 0;
	while (i < len) {
		while (i < len && (v[i] == ',' || v[i] == ' ' || v[i] == '\t'))
			i++;
		uint32_t s = i;
		while (i < len && v[i] != ',' && v[i] != ' ' && v[i] != '\t')
			i++;
		if (i > s)
			fn(v + s, i - s, arg);
	}
}

struct tokset {
	const char *name[CONN_TOKENS_MAX];
	size_t len[CONN_TOKENS_MAX];
	size_t n;
};

static void tok_add(const char *t, size_t len, void *arg)
{
	struct tokset *ts = arg;
	if ((len == 5 && !strncasecmp(t, "close", 5)) ||
	    (len == 10 && !strncasecmp(t, "keep-alive", 10)) ||
	    (len == 7 && !strncasecmp(t, "upgrade", 7)))
		return;
	if (ts->n < CONN_TOKENS_MAX) {
		ts->name[ts->n] = t;
		ts->len[ts->n++] = len;
	}
}

static bool tok_has(const struct tokset *ts, const char *b, const struct hdr *h)
{
	for (size_t i = 0; i < ts->n; i++)
		if (ts->len[i] == h->name_len && !strncasecmp(ts->name[i], b + h->name, h->name_len))
			return true;
	return false;
}

/* ------------------------------------------------------------------ */
/* route table                                                          */

static void up_close(struct upconn *up);
static void up_kill(struct upconn *up, const char *why);
static void l_accept_cb(struct ev_loop *loop, ev_io *w, int revents);
static void l_pause_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void maybe_idle(struct proxy *p);

static void drain_kick(struct proxy *p)
{
	if (p->drains && !ev_is_active(&p->drain_kick)) {
		ev_timer_set(&p->drain_kick, 0., 0.);
		ev_timer_start(p->loop, &p->drain_kick);
	}
}

static void be_unlink(struct backend *be)
{
	struct backend **head = be->route ? &be->route->backends : &be->p->orphans;
	DLIST_UNLINK(*head, be);
}

static void be_link(struct backend *be, struct backend **head)
{
	DLIST_PUSH(*head, be);
}

static void be_maybe_free(struct backend *be)
{
	if (be->active || be->inflight || be->conns || be->guard)
		return;
	be_unlink(be);
	drain_kick(be->p);
	free(be);
}

/* A request or tunnel on be finished. */
static void be_release(struct backend *be)
{
	be->inflight--;
	if (!be->active) {
		if (be->inflight == 0)
			drain_kick(be->p);
		be_maybe_free(be);
	}
}

static void be_close_idle(struct backend *be)
{
	be->guard++;
	while (be->idle)
		up_close(be->idle);
	be->guard--;
}

/* Closes every connection to be (drain timeout). */
static void be_kill_all(struct backend *be, const char *why)
{
	be->guard++;
	while (be->idle)
		up_close(be->idle);
	while (be->ups)
		up_kill(be->ups, why);
	be->guard--;
}

static void be_retire(struct backend *be)
{
	be->active = false;
	be_close_idle(be);
	drain_kick(be->p);
	be_maybe_free(be);
}

static struct listener *listener_find(const struct proxy *p, int port)
{
	for (struct listener *l = p->listeners; l; l = l->next)
		if (l->port == port)
			return l;
	return NULL;
}

static void listener_unref(struct listener *l)
{
	if (--l->refs == 0)
		free(l);
}

static struct listener *listener_new(struct proxy *p, int port, enum proxy_protocol protocol, int fd)
{
	struct listener *l = calloc(1, sizeof *l);
	if (!l)
		return NULL;
	l->p = p;
	l->port = port;
	l->protocol = protocol;
	l->fd = fd;
	l->open = true;
	l->refs = 1;
	snprintf(l->port_str, sizeof l->port_str, "%d", port);
	ev_io_init(&l->io, l_accept_cb, fd, EV_READ);
	l->io.data = l;
	ev_timer_init(&l->pause, l_pause_cb, ACCEPT_PAUSE_S, 0.);
	l->pause.data = l;
	if (!p->stopping)
		ev_io_start(p->loop, &l->io);
	DLIST_PUSH(p->listeners, l);
	return l;
}

static void listener_close(struct listener *l)
{
	struct proxy *p = l->p;
	if (!l->open)
		return;
	ev_io_stop(p->loop, &l->io);
	ev_timer_stop(p->loop, &l->pause);
	if (l->fd >= 0)
		close(l->fd);
	l->fd = -1;
	l->open = false;
	DLIST_UNLINK(p->listeners, l);
	log_info("proxy.listener_closed", "port=%d", l->port);
	listener_unref(l);
}

static int listener_bind(struct proxy *p, int port, struct err *err)
{
	struct sockaddr_storage ss;
	socklen_t len;
	char addr[PROXY_ADDRESS_MAX + 16];
	if (strchr(p->bind, ':') && p->bind[0] != '[')
		snprintf(addr, sizeof addr, "[%s]:%d", p->bind, port);
	else
		snprintf(addr, sizeof addr, "%s:%d", p->bind, port);
	if (parse_address(addr, &ss, &len) < 0)
		return err_set(err, "proxy.bind '%s' is not an IP address", p->bind);
	int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return err_set(err, "socket: %s", strerror(errno));
	int one = 1, zero = 0;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (ss.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
	if (bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, 4096) < 0) {
		int e = errno;
		close(fd);
		return err_set(err, "listen on %s: %s", addr, strerror(e));
	}
	return fd;
}

static struct route *route_find(const struct proxy *p, const char *app, const char *service)
{
	for (struct route *r = p->routes; r; r = r->next)
		if (!strcmp(r->app, app) && !strcmp(r->service, service))
			return r;
	return NULL;
}

static void route_detach_listener(struct route *r)
{
	struct listener *l = r->l;
	if (!l)
		return;
	for (struct route **pp = &l->routes; *pp; pp = &(*pp)->lnext)
		if (*pp == r) {
			*pp = r->lnext;
			break;
		}
	r->lnext = NULL;
	r->l = NULL;
	if (!l->routes)
		listener_close(l);
}

static void free_hosts(char **hosts, size_t *lens, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(hosts[i]);
	free(hosts);
	free(lens);
}

static bool route_has_host(const struct route *r, const char *h)
{
	for (size_t i = 0; i < r->nhosts; i++)
		if (!strcasecmp(r->hosts[i], h))
			return true;
	return false;
}

static int check_spec(const struct proxy *p, const struct proxy_route_spec *s, struct err *err)
{
	(void)p;
	if (!s->app || !valid_name(s->app))
		return err_set(err, "app must match [a-z][a-z0-9-]{0,39}");
	if (!s->service || !valid_name(s->service))
		return err_set(err, "service must match [a-z][a-z0-9-]{0,39}");
	if (s->generation < 0)
		return err_set(err, "generation must be >= 0");
	if (s->release && strlen(s->release) > PROXY_RELEASE_MAX)
		return err_set(err, "release is longer than %d bytes", PROXY_RELEASE_MAX);
	if (s->listen < 1 || s->listen > 65535)
		return err_set(err, "listen must be a port 1..65535");
	if (s->protocol != PROXY_HTTP && s->protocol != PROXY_TCP)
		return err_set(err, "protocol must be http or tcp");
	if (s->host_count > PROXY_HOSTS_MAX)
		return err_set(err, "at most %d hosts", PROXY_HOSTS_MAX);
	if (s->protocol == PROXY_TCP && s->host_count)
		return err_set(err, "a tcp route has no hosts");
	for (size_t i = 0; i < s->host_count; i++) {
		if (!s->hosts[i] || !valid_host(s->hosts[i]))
			return err_set(err, "hosts[%zu]: not a host name", i);
		for (size_t j = 0; j < i; j++)
			if (!strcasecmp(s->hosts[i], s->hosts[j]))
				return err_set(err, "hosts[%zu]: duplicate", i);
	}
	if (s->backend_count > PROXY_BACKENDS_MAX)
		return err_set(err, "at most %d backends", PROXY_BACKENDS_MAX);
	for (size_t i = 0; i < s->backend_count; i++) {
		struct sockaddr_storage ss;
		socklen_t len;
		const struct proxy_backend_spec *b = &s->backends[i];
		if (!b->id || !valid_id(b->id))
			return err_set(err, "backends[%zu].id must match [A-Za-z0-9_-]{1,64}", i);
		if (!b->address || parse_address(b->address, &ss, &len) < 0)
			return err_set(err, "backends[%zu].address must be IP:port", i);
		for (size_t j = 0; j < i; j++)
			if (!strcmp(b->id, s->backends[j].id))
				return err_set(err, "backends[%zu].id: duplicate", i);
	}
	return 0;
}

/* 409 when another route holds what the spec asks for on its port. */
static int check_conflict(const struct listener *l, const struct route *self,
			  const struct proxy_route_spec *s, struct err *err)
{
	if (!l)
		return 0;
	for (const struct route *o = l->routes; o; o = o->lnext) {
		if (o == self)
			continue;
		if (s->protocol == PROXY_TCP || o->protocol == PROXY_TCP)
			return err_set(err, "port %d is used by %s/%s (a tcp port is not shared)",
				       l->port, o->app, o->service);
		if (!s->host_count && !o->nhosts)
			return err_set(err, "port %d already has a catch-all route: %s/%s", l->port,
				       o->app, o->service);
		for (size_t i = 0; i < s->host_count; i++)
			if (route_has_host(o, s->hosts[i]))
				return err_set(err, "host %s on port %d belongs to %s/%s", s->hosts[i],
					       l->port, o->app, o->service);
	}
	return 0;
}

static cJSON *backend_json(const struct backend *be, bool stats, bool inflight_only)
{
	cJSON *o = cJSON_CreateObject();
	if (!o)
		return NULL;
	cJSON_AddStringToObject(o, "id", be->id);
	cJSON_AddStringToObject(o, "address", be->address);
	if (stats || inflight_only)
		cJSON_AddNumberToObject(o, "inflight", be->inflight);
	if (stats) {
		cJSON_AddNumberToObject(o, "requests", (double)be->requests);
		cJSON_AddNumberToObject(o, "errors", (double)be->errors);
		cJSON_AddNumberToObject(o, "connections", be->conns);
	}
	return o;
}

static struct backend *backend_new(struct proxy *p, const struct proxy_backend_spec *b)
{
	struct backend *be = calloc(1, sizeof *be);
	if (!be)
		return NULL;
	be->p = p;
	snprintf(be->id, sizeof be->id, "%s", b->id);
	snprintf(be->address, sizeof be->address, "%s", b->address);
	parse_address(b->address, &be->sa, &be->salen);
	return be;
}

int proxy_set_route(struct proxy *p, const struct proxy_route_spec *s, cJSON **previous,
		    enum proxy_status *status, struct err *err)
{
	enum proxy_status dummy;
	if (!status)
		status = &dummy;
	*status = PROXY_EINVAL;
	if (previous)
		*previous = NULL;
	if (check_spec(p, s, err) < 0)
		return -1;
	struct route *r = route_find(p, s->app, s->service);
	struct listener *l = listener_find(p, s->listen);
	*status = PROXY_ECONFLICT;
	if (check_conflict(l, r, s, err) < 0)
		return -1;
	*status = PROXY_ELISTEN;

	/* Everything that can fail is allocated before the table changes. */
	bool new_route = !r;
	char **hosts = calloc(s->host_count + 1, sizeof *hosts);
	size_t *hlen = calloc(s->host_count + 1, sizeof *hlen);
	struct backend **set = calloc(s->backend_count + 1, sizeof *set);
	struct backend *fresh[PROXY_BACKENDS_MAX] = {0};
	cJSON *prev = previous ? cJSON_CreateArray() : NULL;
	if (new_route)
		r = calloc(1, sizeof *r);
	bool ok = hosts && hlen && set && r && (!previous || prev);
	for (size_t i = 0; ok && i < s->host_count; i++) {
		hosts[i] = strdup(s->hosts[i]);
		ok = hosts[i] != NULL;
		if (ok) {
			hlen[i] = strlen(hosts[i]);
			for (char *c = hosts[i]; *c; c++)
				if (*c >= 'A' && *c <= 'Z')
					*c = (char)(*c + 32);
		}
	}
	for (size_t i = 0; ok && i < s->backend_count; i++) {
		const struct proxy_backend_spec *b = &s->backends[i];
		struct backend *be = NULL;
		for (struct backend *o = new_route ? NULL : r->backends; o; o = o->next)
			if (!strcmp(o->id, b->id) && !strcmp(o->address, b->address)) {
				be = o;
				break;
			}
		if (!be) {
			be = fresh[i] = backend_new(p, b);
			ok = be != NULL;
		}
		set[i] = be;
	}
	for (size_t i = 0; ok && prev && !new_route && i < r->nset; i++) {
		cJSON *o = backend_json(r->set[i], false, true);
		ok = o && cJSON_AddItemToArray(prev, o);
	}
	int fd = -1;
	if (ok && !l) {
		fd = listener_bind(p, s->listen, err);
		if (fd < 0)
			goto fail_kept_err;
		l = listener_new(p, s->listen, s->protocol, fd);
		if (!l) {
			close(fd);
			ok = false;
		}
	}
	if (!ok) {
		err_set(err, "out of memory");
	fail_kept_err:
		free_hosts(hosts, hlen, s->host_count);
		free(set);
		for (size_t i = 0; i < PROXY_BACKENDS_MAX; i++)
			free(fresh[i]);
		cJSON_Delete(prev);
		if (new_route)
			free(r);
		return -1;
	}

	/* Commit. */
	if (new_route) {
		r->p = p;
		snprintf(r->app, sizeof r->app, "%s", s->app);
		snprintf(r->service, sizeof r->service, "%s", s->service);
		DLIST_PUSH(p->routes, r);
		p->nroutes++;
	}
	r->generation = s->generation;
	snprintf(r->release, sizeof r->release, "%s", s->release ? s->release : "");
	free_hosts(r->hosts, r->host_len, r->nhosts);
	r->hosts = hosts;
	r->host_len = hlen;
	r->nhosts = s->host_count;
	r->protocol = s->protocol;
	if (r->l != l) {
		/* moving to another port: the old one closes if nobody else uses it */
		if (r->l)
			route_detach_listener(r);
		r->l = l;
		r->lnext = l->routes;
		l->routes = r;
	}
	l->protocol = s->protocol; /* only routes of this one protocol are on it */
	for (size_t i = 0; i < s->backend_count; i++)
		if (fresh[i])
			be_link(fresh[i], &r->backends);
	for (size_t i = 0; i < s->backend_count; i++) {
		set[i]->route = r;
		set[i]->active = true;
	}
	struct backend **old = r->set;
	size_t nold = r->nset;
	r->set = set;
	r->nset = s->backend_count;
	if (r->rr >= r->nset)
		r->rr = 0;
	for (size_t i = 0; i < nold; i++) {
		bool kept = false;
		for (size_t j = 0; j < r->nset && !kept; j++)
			kept = r->set[j] == old[i];
		if (!kept)
			be_retire(old[i]);
	}
	free(old);
	if (previous)
		*previous = prev;
	*status = PROXY_OK;
	log_info("proxy.route_set", "app=%s service=%s generation=%lld release=%s listen=%d "
		 "backends=%zu", r->app, r->service, (long long)r->generation, r->release,
		 s->listen, r->nset);
	return 0;
}

static void route_free(struct route *r)
{
	struct proxy *p = r->p;
	route_detach_listener(r);
	for (size_t i = 0; i < r->nset; i++)
		r->set[i]->active = false;
	/* Backends still in use live on as orphans until their last connection. */
	while (r->backends) {
		struct backend *be = r->backends;
		be_unlink(be);
		be->route = NULL;
		be_link(be, &p->orphans);
		be_close_idle(be);
		be_maybe_free(be);
	}
	free(r->set);
	free_hosts(r->hosts, r->host_len, r->nhosts);
	DLIST_UNLINK(p->routes, r);
	p->nroutes--;
	free(r);
}

int proxy_remove_route(struct proxy *p, const char *app, const char *service,
		       enum proxy_status *status, struct err *err)
{
	struct route *r = route_find(p, app, service);
	if (!r) {
		if (status)
			*status = PROXY_ENOTFOUND;
		return err_set(err, "no route %s/%s", app, service);
	}
	log_info("proxy.route_removed", "app=%s service=%s", app, service);
	route_free(r);
	drain_kick(p);
	if (status)
		*status = PROXY_OK;
	return 0;
}

/* ---- drains ---- */

static bool drain_wants(const struct drain *d, const struct backend *be)
{
	if (be->active)
		return false;
	for (size_t i = 0; i < d->nids; i++)
		if (!strcmp(d->ids[i], be->id))
			return true;
	return false;
}

static uint64_t drain_remaining(const struct proxy *p, const struct drain *d)
{
	const struct route *r = route_find(p, d->app, d->service);
	uint64_t n = 0;
	for (const struct backend *be = r ? r->backends : NULL; be; be = be->next)
		if (drain_wants(d, be))
			n += be->inflight;
	return n;
}

static void drain_free(struct drain *d)
{
	struct proxy *p = d->p;
	ev_timer_stop(p->loop, &d->timeout);
	DLIST_UNLINK(p->drains, d);
	for (size_t i = 0; i < d->nids; i++)
		free(d->ids[i]);
	free(d->ids);
	free(d);
}

static void drain_finish(struct drain *d, bool drained, uint64_t remaining)
{
	proxy_drain_fn cb = d->cb;
	void *arg = d->arg;
	int64_t waited = clock_mono_ms() - d->started_ms;
	log_info("proxy.drained", "app=%s service=%s drained=%s remaining=%llu waited_ms=%lld",
		 d->app, d->service, drained ? "true" : "false", (unsigned long long)remaining,
		 (long long)waited);
	drain_free(d);
	cb(drained, remaining, waited, arg);
}

static void drain_kick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	struct proxy *p = w->data;
	struct drain *d = p->drains;
	while (d) {
		struct drain *next = d->next;
		if (drain_remaining(p, d) == 0) {
			/* the callback may start or cancel drains: restart the scan */
			drain_finish(d, true, 0);
			next = p->drains;
		}
		d = next;
	}
}

static void drain_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	struct drain *d = w->data;
	struct proxy *p = d->p;
	uint64_t remaining = drain_remaining(p, d);
	struct route *r = route_find(p, d->app, d->service);
	if (r && remaining) {
		/* Close what is left; guard the list while connections close. */
		for (struct backend *be = r->backends; be; be = be->next)
			be->guard++;
		for (struct backend *be = r->backends; be; be = be->next)
			if (drain_wants(d, be))
				be_kill_all(be, "drain timeout");
		struct backend *be = r->backends;
		while (be) {
			struct backend *next = be->next;
			be->guard--;
			be_maybe_free(be);
			be = next;
		}
	}
	drain_finish(d, remaining == 0, remaining);
}

uint64_t proxy_drain(struct proxy *p, const char *app, const char *service,
		     const char *const *ids, size_t id_count, int64_t timeout_ms,
		     proxy_drain_fn cb, void *arg, enum proxy_status *status, struct err *err)
{
	enum proxy_status dummy;
	if (!status)
		status = &dummy;
	*status = PROXY_EINVAL;
	if (timeout_ms < 0 || timeout_ms > DRAIN_TIMEOUT_MAX_MS) {
		err_set(err, "timeout_ms must be 0..%lld", (long long)DRAIN_TIMEOUT_MAX_MS);
		return 0;
	}
	if (id_count > PROXY_BACKENDS_MAX * 4) {
		err_set(err, "too many backends");
		return 0;
	}
	struct route *r = route_find(p, app, service);
	if (!r) {
		*status = PROXY_ENOTFOUND;
		err_set(err, "no route %s/%s", app, service);
		return 0;
	}
	for (size_t i = 0; i < id_count; i++) {
		if (!ids[i] || !valid_id(ids[i])) {
			err_set(err, "backends[%zu] is not a backend id", i);
			return 0;
		}
		for (size_t j = 0; j < r->nset; j++)
			if (!strcmp(r->set[j]->id, ids[i])) {
				*status = PROXY_ECONFLICT;
				err_set(err, "backend %s is still in the active set of %s/%s", ids[i],
					app, service);
				return 0;
			}
	}
	struct drain *d = calloc(1, sizeof *d);
	if (!d || !(d->ids = calloc(id_count + 1, sizeof *d->ids))) {
		free(d);
		*status = PROXY_ELISTEN;
		err_set(err, "out of memory");
		return 0;
	}
	for (size_t i = 0; i < id_count; i++) {
		if (!(d->ids[i] = strdup(ids[i]))) {
			d->nids = i;
			for (size_t k = 0; k < i; k++)
				free(d->ids[k]);
			free(d->ids);
			free(d);
			*status = PROXY_ELISTEN;
			err_set(err, "out of memory");
			return 0;
		}
	}
	d->nids = id_count;
	d->p = p;
	d->id = ++p->next_drain_id;
	snprintf(d->app, sizeof d->app, "%s", app);
	snprintf(d->service, sizeof d->service, "%s", service);
	d->started_ms = clock_mono_ms();
	d->cb = cb;
	d->arg = arg;
	ev_timer_init(&d->timeout, drain_timeout_cb, (double)timeout_ms / 1000.0, 0.);
	d->timeout.data = d;
	ev_timer_start(p->loop, &d->timeout);
	DLIST_PUSH(p->drains, d);
	for (struct backend *be = r->backends; be; be = be->next)
		if (drain_wants(d, be))
			be->guard++;
	for (struct backend *be = r->backends; be; be = be->next)
		if (drain_wants(d, be))
			be_close_idle(be);
	struct backend *be = r->backends;
	while (be) {
		struct backend *next = be->next;
		if (drain_wants(d, be)) {
			be->guard--;
			be_maybe_free(be);
		}
		be = next;
	}
	drain_kick(p);
	*status = PROXY_OK;
	return d->id;
}

void proxy_drain_cancel(struct proxy *p, uint64_t drain_id)
{
	for (struct drain *d = p->drains; d; d = d->next)
		if (d->id == drain_id) {
			drain_free(d);
			return;
		}
}

void proxy_set_draining(struct proxy *p, bool draining)
{
	if (p->draining != draining)
		log_info("proxy.draining", "draining=%s", draining ? "true" : "false");
	p->draining = draining;
}

bool proxy_draining(const struct proxy *p)
{
	return p->draining;
}

size_t proxy_route_count(const struct proxy *p)
{
	return p->nroutes;
}

cJSON *proxy_routes_json(const struct proxy *p, bool with_stats)
{
	cJSON *root = cJSON_CreateObject();
	cJSON *arr = root ? cJSON_AddArrayToObject(root, "routes") : NULL;
	if (!arr) {
		cJSON_Delete(root);
		return NULL;
	}
	for (const struct route *r = p->routes; r; r = r->next) {
		cJSON *o = cJSON_CreateObject();
		if (!o || !cJSON_AddItemToArray(arr, o))
			goto oom;
		cJSON_AddStringToObject(o, "app", r->app);
		cJSON_AddStringToObject(o, "service", r->service);
		cJSON_AddNumberToObject(o, "generation", (double)r->generation);
		cJSON_AddStringToObject(o, "release", r->release);
		cJSON_AddNumberToObject(o, "listen", r->l ? r->l->port : 0);
		cJSON_AddStringToObject(o, "protocol", r->protocol == PROXY_TCP ? "tcp" : "http");
		cJSON *hosts = cJSON_AddArrayToObject(o, "hosts");
		for (size_t i = 0; hosts && i < r->nhosts; i++)
			cJSON_AddItemToArray(hosts, cJSON_CreateString(r->hosts[i]));
		cJSON *bes = cJSON_AddArrayToObject(o, "backends");
		for (size_t i = 0; bes && i < r->nset; i++)
			cJSON_AddItemToArray(bes, backend_json(r->set[i], with_stats, false));
		if (with_stats) {
			cJSON *ret = cJSON_AddArrayToObject(o, "retired");
			for (const struct backend *be = r->backends; ret && be; be = be->next)
				if (!be->active)
					cJSON_AddItemToArray(ret, backend_json(be, true, false));
		}
		if (!hosts || !bes)
			goto oom;
	}
	cJSON_AddBoolToObject(root, "draining", p->draining);
	return root;
oom:
	cJSON_Delete(root);
	return NULL;
}

/* ------------------------------------------------------------------ */
/* client connections                                                   */

static void c_read_cb(struct ev_loop *loop, ev_io *w, int revents);
static void c_write_cb(struct ev_loop *loop, ev_io *w, int revents);
static void c_timer_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void c_close(struct cconn *c);
static void c_parse_head(struct cconn *c);
static void c_dispatch(struct cconn *c);
static void c_flush_up(struct cconn *c);
static void c_tunnel_start(struct cconn *c);
static void tunnel_half_closed(struct cconn *c);
static void up_attach(struct cconn *c, struct upconn *up);
static struct upconn *up_connect(struct backend *be);
static struct upconn *pool_take(struct backend *be);
static void up_flush_c(struct upconn *up);
static void up_fail(struct upconn *up, const char *why);
static struct route *route_for(const struct cconn *c);

static void iov_advance(struct iovec *iov, int *i, int n, size_t done)
{
	while (*i < n && done >= iov[*i].iov_len) {
		done -= iov[*i].iov_len;
		(*i)++;
	}
	if (*i < n && done) {
		iov[*i].iov_base = (char *)iov[*i].iov_base + done;
		iov[*i].iov_len -= done;
	}
}

static bool drop_get(const uint64_t *d, uint32_t i)
{
	return (d[i / 64] >> (i % 64)) & 1;
}

static void drop_set(uint64_t *d, uint32_t i)
{
	d[i / 64] |= (uint64_t)1 << (i % 64);
}

/* The client deadline for the state the connection is in. */
static void c_deadline(struct cconn *c)
{
	struct proxy *p = c->p;
	ev_tstamp now = ev_now(p->loop), when = 0;
	if (c->lingering)
		return; /* set once when lingering starts */
	if (!c->active)
		when = c->timed_head ? c->tm.deadline : now + (p->stopping ? p->grace_s : p->idle_s);
	else if (c->local || (c->up && c->up->wi < c->up->wn) || (!c->req_done && !c->tunnel))
		when = now + p->idle_s; /* a slow body or a client that stopped reading */
	lt_set(p->loop, &c->tm, when);
}

static void c_new(struct listener *l, int fd, const struct sockaddr_storage *sa)
{
	struct proxy *p = l->p;
	struct cconn *c = calloc(1, sizeof *c);
	if (!c) {
		close(fd);
		return;
	}
	c->p = p;
	c->l = l;
	l->refs++;
	c->fd = fd;
	set_nodelay(fd);
	if (sa->ss_family == AF_INET) {
		inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, c->ip, sizeof c->ip);
	} else {
		const struct in6_addr *a6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
		if (IN6_IS_ADDR_V4MAPPED(a6))
			inet_ntop(AF_INET, &a6->s6_addr[12], c->ip, sizeof c->ip);
		else
			inet_ntop(AF_INET6, a6, c->ip, sizeof c->ip);
	}
	c->m.hp.data = &c->m;
	http_parser_init(&c->m.hp, HTTP_REQUEST);
	ev_io_init(&c->rio, c_read_cb, fd, EV_READ);
	ev_io_init(&c->wio, c_write_cb, fd, EV_WRITE);
	c->rio.data = c->wio.data = c;
	ev_init(&c->tm.t, c_timer_cb);
	c->tm.t.data = c;
	DLIST_PUSH(p->conns, c);
	p->nconns++;
	if (l->protocol == PROXY_TCP) {
		int one = 1;
		setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
		c->active = c->tunnel = true;
		c->route = route_for(c);
		c_dispatch(c);
		return;
	}
	ev_io_start(p->loop, &c->rio);
	c_deadline(c);
}

static void l_pause_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)revents;
	struct listener *l = w->data;
	if (l->fd >= 0)
		ev_io_start(loop, &l->io);
}

static void l_accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	(void)revents;
	struct listener *l = w->data;
	for (int i = 0; i < ACCEPT_BATCH; i++) {
		struct sockaddr_storage sa;
		socklen_t len = sizeof sa;
		int fd = accept4(l->fd, (struct sockaddr *)&sa, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
				log_warn("proxy.accept_paused", "port=%d error=%s", l->port,
					 strerror(errno));
				ev_io_stop(loop, &l->io);
				ev_timer_start(loop, &l->pause);
			}
			return;
		}
		c_new(l, fd, &sa);
		if (!l->open || l->fd < 0)
			return;
	}
}

/* Closes now (resets if unread bytes remain). */
static void c_close(struct cconn *c)
{
	struct proxy *p = c->p;
	if (c->up) {
		struct upconn *up = c->up;
		c->up = NULL;
		up->c = NULL;
		up_close(up);
	}
	if (c->be) {
		struct backend *be = c->be;
		c->be = NULL;
		be_release(be);
	}
	ev_io_stop(p->loop, &c->rio);
	ev_io_stop(p->loop, &c->wio);
	ev_timer_stop(p->loop, &c->tm.t);
	close(c->fd);
	pbuf_put(p, c->buf);
	free(c->lout);
	DLIST_UNLINK(p->conns, c);
	p->nconns--;
	listener_unref(c->l);
	free(c);
	maybe_idle(p);
}

/* Sends our FIN and reads what the client still sends for a moment, so it
 * reads the last answer instead of a reset. */
static void c_close_graceful(struct cconn *c)
{
	struct proxy *p = c->p;
	if (c->eof) {
		c_close(c);
		return;
	}
	c->lingering = true;
	c->active = false;
	shutdown(c->fd, SHUT_WR);
	pbuf_put(p, c->buf);
	c->buf = NULL;
	c->len = c->pos = c->fwd = 0;
	ev_io_stop(p->loop, &c->wio);
	ev_io_start(p->loop, &c->rio);
	lt_set(p->loop, &c->tm, ev_now(p->loop) + LINGER_S);
}

static void c_next(struct cconn *c);

static void c_flush_local(struct cconn *c)
{
	struct proxy *p = c->p;
	while (c->lout_off < c->lout_len) {
		ssize_t n = send(c->fd, c->lout + c->lout_off, c->lout_len - c->lout_off,
				 MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				ev_io_start(p->loop, &c->wio);
				c_deadline(c);
				return;
			}
			c_close(c);
			return;
		}
		c->lout_off += (size_t)n;
	}
	ev_io_stop(p->loop, &c->wio);
	free(c->lout);
	c->lout = NULL;
	c->local = false;
	if (c->keep)
		c_next(c);
	else
		c_close_graceful(c);
}

/* An answer the proxy makes itself. The connection stays open only when the
 * request is complete and the client wants it. */
static void c_local(struct cconn *c, int status, const char *reason, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void c_local(struct cconn *c, int status, const char *reason, const char *fmt, ...)
{
	struct proxy *p = c->p;
	char body[512];
	va_list ap;
	va_start(ap, fmt);
	int blen = vsnprintf(body, sizeof body, fmt, ap);
	va_end(ap);
	if (blen < 0)
		blen = 0;
	if ((size_t)blen >= sizeof body)
		blen = sizeof body - 1;
	c->keep = c->keep && c->active && c->req_done && !c->upgrade && !p->stopping && !c->eof &&
		  !c->tunnel;
	c->local = true;
	c->active = true;
	size_t cap = (size_t)blen + 256;
	free(c->lout);
	c->lout = malloc(cap);
	if (!c->lout) {
		c_close(c);
		return;
	}
	bool minor0 = c->m.hp.http_minor == 0;
	int n = snprintf(c->lout, cap,
			 "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
			 "Content-Length: %d\r\nCache-Control: no-store\r\n%s\r\n",
			 status, reason, blen,
			 !c->keep ? "Connection: close\r\n" :
			 minor0 ? "Connection: keep-alive\r\n" : "");
	if (!c->is_head || !c->req_done) {
		memcpy(c->lout + n, body, (size_t)blen);
		n += blen;
	}
	c->lout_len = (size_t)n;
	c->lout_off = 0;
	c_flush_local(c);
}

/* RFC 9110 token: http-parser (not built strict) lets a space through. */
static bool is_token(const char *s, uint32_t len)
{
	static const char extra[] = "!#$%&'*+-.^_`|~";
	if (!len)
		return false;
	for (uint32_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)s[i];
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
		      (ch && strchr(extra, ch))))
			return false;
	}
	return true;
}

static bool is_idempotent(unsigned method)
{
	return method == HTTP_GET || method == HTTP_HEAD || method == HTTP_OPTIONS ||
	       method == HTTP_TRACE || method == HTTP_DELETE;
}

static struct route *route_lookup(const struct listener *l, const char *host, size_t len)
{
	struct route *any = NULL;
	for (struct route *r = l->routes; r; r = r->lnext) {
		if (!r->nhosts) {
			any = r;
			continue;
		}
		for (size_t i = 0; i < r->nhosts; i++)
			if (r->host_len[i] == len && !memcmp(r->hosts[i], host, len))
				return r;
	}
	return any;
}

static struct listener *c_listener(const struct cconn *c)
{
	return c->l->open ? c->l : listener_find(c->p, c->l->port);
}

static struct route *route_for(const struct cconn *c)
{
	const struct listener *l = c_listener(c);
	if (!l || l->protocol != c->l->protocol)
		return NULL;
	if (l->protocol == PROXY_TCP)
		return l->routes;
	return route_lookup(l, c->host, strlen(c->host));
}

static void c_health(struct cconn *c)
{
	struct proxy *p = c->p;
	const struct listener *l = c_listener(c);
	bool serving = false;
	for (const struct route *r = l ? l->routes : NULL; r && !serving; r = r->lnext)
		serving = r->nset > 0;
	/* A process stopping for a hand-over is not the instance leaving: its
	 * successor serves the same routes, so only the draining flag counts. */
	if (p->draining)
		c_local(c, 503, "Service Unavailable", "draining\n");
	else if (!serving)
		c_local(c, 503, "Service Unavailable", "no release serves on this port yet\n");
	else
		c_local(c, 200, "OK", "ok\n");
}

/* Host header -> lowercase name without the port, into c->host. */
static int c_set_host(struct cconn *c, const char *v, uint32_t len)
{
	uint32_t end = len;
	if (len && v[0] == '[') {
		const char *rb = memchr(v, ']', len);
		if (!rb)
			return -1;
		end = (uint32_t)(rb - v) + 1;
	} else {
		const char *colon = memchr(v, ':', len);
		if (colon)
			end = (uint32_t)(colon - v);
	}
	if (end > PROXY_HOST_MAX)
		return -1;
	for (uint32_t i = 0; i < end; i++) {
		char ch = v[i];
		if ((unsigned char)ch <= ' ' || ch == '/' || ch == '\\')
			return -1;
		c->host[i] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
	}
	c->host[end] = '\0';
	return 0;
}

/* The request head is complete: check it, decide what to drop and add,
 * then answer or route it. */
static void c_on_head(struct cconn *c)
{
	struct proxy *p = c->p;
	struct msg *m = &c->m;
	http_parser *hp = &m->hp;
	char *b = c->buf;
	c->timed_head = false;
	c->head_end = c->pos + 1;
	c->active = true;
	c->req_done = c->req_sent = false;
	c->attempts = 0;
	c->stale_retried = false;
	c->keep = false;
	c->host[0] = '\0';
	c->is_head = hp->method == HTTP_HEAD;
	if (c->head_end > p->max_header) {
		c_local(c, 431, "Request Header Fields Too Large",
			"slipway-proxy: request header too large\n");
		return;
	}
	c->term = m_line_ends(m, b, c->head_end);
	if (c->term == UINT32_MAX) {
		c_local(c, 400, "Bad Request", "slipway-proxy: malformed request head\n");
		return;
	}
	if (hp->http_major != 1 || hp->method == HTTP_CONNECT) {
		c_local(c, 400, "Bad Request", "slipway-proxy: unsupported request\n");
		return;
	}
	int nhost = 0, nte = 0;
	bool te_chunked = false;
	struct tokset toks = {.n = 0};
	memset(c->drop, 0, sizeof c->drop);
	c->xff_last = -1;
	c->has_xfp = c->has_xfport = false;
	for (uint32_t i = 0; i < m->nhdr; i++) {
		const struct hdr *h = &m->hdr[i];
		if (!is_token(b + h->name, h->name_len)) {
			c_local(c, 400, "Bad Request", "slipway-proxy: malformed header name\n");
			return;
		}
		switch (h->name_len) {
		case 2:
			if (NAME_IS(b, h, "te"))
				drop_set(c->drop, i);
			break;
		case 4:
			if (NAME_IS(b, h, "host") && nhost++ == 0 &&
			    c_set_host(c, b + h->value, h->value_len) < 0) {
				c_local(c, 400, "Bad Request", "slipway-proxy: bad Host header\n");
				return;
			}
			break;
		case 7:
			if (NAME_IS(b, h, "trailer") || (NAME_IS(b, h, "upgrade") && !hp->upgrade))
				drop_set(c->drop, i);
			break;
		case 10:
			if (NAME_IS(b, h, "connection")) {
				drop_set(c->drop, i);
				conn_tokens(b + h->value, h->value_len, tok_add, &toks);
			} else if (NAME_IS(b, h, "keep-alive")) {
				drop_set(c->drop, i);
			}
			break;
		case 15:
			if (NAME_IS(b, h, "x-forwarded-for"))
				c->xff_last = (int)i;
			break;
		case 16:
			if (NAME_IS(b, h, "proxy-connection"))
				drop_set(c->drop, i);
			else if (NAME_IS(b, h, "x-forwarded-port"))
				c->has_xfport = true;
			break;
		case 17:
			if (NAME_IS(b, h, "transfer-encoding")) {
				nte++;
				te_chunked = h->value_len == 7 &&
					     !strncasecmp(b + h->value, "chunked", 7);
			} else if (NAME_IS(b, h, "x-forwarded-proto")) {
				c->has_xfp = true;
			}
			break;
		}
	}
	if (toks.n)
		for (uint32_t i = 0; i < m->nhdr; i++)
			if (tok_has(&toks, b, &m->hdr[i]))
				drop_set(c->drop, i);
	/* Smuggling: one framing, stated once, in one spelling. http-parser has
	 * already refused Content-Length with Transfer-Encoding and a repeated
	 * Content-Length. */
	if (nte > 1 || (nte == 1 && !te_chunked)) {
		c_local(c, 400, "Bad Request", "slipway-proxy: unsupported Transfer-Encoding\n");
		return;
	}
	if (nhost > 1 || (nhost == 0 && hp->http_minor >= 1)) {
		c_local(c, 400, "Bad Request", "slipway-proxy: exactly one Host header is required\n");
		return;
	}
	c->keep = http_should_keep_alive(hp);
	c->upgrade = hp->upgrade;
	c->has_body = (hp->flags & F_CHUNKED) ||
		      (hp->content_length > 0 && hp->content_length != ULLONG_MAX);
	c->retryable = is_idempotent(hp->method) && !c->has_body && !c->upgrade;

	/* Take in the body bytes that came with the head (and see the end of a
	 * message without a body). */
	enum http_errno e = m_parse(m, b, &c->pos, c->len);
	if (e == HPE_PAUSED && m->done)
		c->req_done = true;
	else if (e != HPE_OK) {
		c->keep = false;
		c_local(c, 400, "Bad Request", "slipway-proxy: malformed request body framing\n");
		return;
	}
	lt_set(p->loop, &c->tm, 0);

	if (m->url_len >= p->health_len && !memcmp(b + m->url, p->health_path, p->health_len) &&
	    (m->url_len == p->health_len || b[m->url + p->health_len] == '?') &&
	    (hp->method == HTTP_GET || hp->method == HTTP_HEAD)) {
		c_health(c);
		return;
	}
	c->route = route_for(c);
	if (!c->route) {
		c_local(c, 404, "Not Found", "slipway-proxy: no route for host %s\n",
			c->host[0] ? c->host : "(none)");
		return;
	}
	c_dispatch(c);
}

static void c_parse_head(struct cconn *c)
{
	struct proxy *p = c->p;
	enum http_errno e = m_parse(&c->m, c->buf, &c->pos, c->len);
	if (e == HPE_PAUSED && c->m.head_done) {
		c_on_head(c);
		return;
	}
	if (e != HPE_OK) {
		c->keep = false;
		if (c->m.overflow || e == HPE_HEADER_OVERFLOW)
			c_local(c, 431, "Request Header Fields Too Large",
				"slipway-proxy: request header too large\n");
		else
			c_local(c, 400, "Bad Request", "slipway-proxy: malformed request (%s)\n",
				http_errno_name(e));
		return;
	}
	if (c->len >= p->max_header) {
		c->keep = false;
		c_local(c, 431, "Request Header Fields Too Large",
			"slipway-proxy: request header too large\n");
		return;
	}
	if (c->len == 0) {
		pbuf_put(p, c->buf);
		c->buf = NULL;
		return;
	}
	if (!c->timed_head) {
		c->timed_head = true;
		lt_set(p->loop, &c->tm, ev_now(p->loop) + p->header_s);
	}
}

/* Ready for the next request on a kept-alive connection. */
static void c_next(struct cconn *c)
{
	struct proxy *p = c->p;
	c->active = c->req_done = c->req_sent = c->local = false;
	c->route = NULL;
	if (c->buf && c->pos < c->len) {
		memmove(c->buf, c->buf + c->pos, c->len - c->pos);
		c->len -= c->pos;
	} else {
		c->len = 0;
	}
	c->pos = c->fwd = c->head_end = 0;
	if (!c->eof && !ev_is_active(&c->rio))
		ev_io_start(p->loop, &c->rio);
	c_deadline(c);
	if (c->len)
		c_parse_head(c);
	else if (c->buf) {
		pbuf_put(p, c->buf);
		c->buf = NULL;
	}
}

static bool c_tried(const struct cconn *c, const struct backend *be)
{
	for (int i = 0; i < c->attempts; i++)
		if (c->tried[i] == be)
			return true;
	return false;
}

/* Round robin over the active set; a backend whose connect just failed is
 * skipped while another one is left. */
static struct backend *pick(struct route *r, struct cconn *c)
{
	size_t n = r->nset;
	if (!n || c->attempts >= MAX_ATTEMPTS)
		return NULL;
	ev_tstamp now = ev_now(c->p->loop);
	struct backend *fallback = NULL;
	size_t fb_at = 0;
	for (size_t k = 0; k < n; k++) {
		size_t at = r->rr + k;
		if (at >= n)
			at -= n;
		struct backend *be = r->set[at];
		if (c_tried(c, be))
			continue;
		if (be->down_until > now) {
			if (!fallback) {
				fallback = be;
				fb_at = at;
			}
			continue;
		}
		r->rr = at + 1 < n ? at + 1 : 0;
		return be;
	}
	if (fallback)
		r->rr = fb_at + 1 < n ? fb_at + 1 : 0;
	return fallback;
}

/* Request head as it leaves: the original bytes minus the hop-by-hop lines,
 * our address appended to the last X-Forwarded-For, the X-Forwarded-* we add,
 * then the body bytes already here. */
static void c_build_head(struct cconn *c)
{
	const struct msg *m = &c->m;
	char *b = c->buf;
	struct iovec *iov = c->wiov;
	int n = 0;
	uint32_t run = 0;
	size_t g = 0;
	for (uint32_t i = 0; i < m->nhdr; i++) {
		const struct hdr *h = &m->hdr[i];
		if (drop_get(c->drop, i)) {
			if (h->name > run)
				iov[n++] = (struct iovec){b + run, h->name - run};
			run = h->end;
		} else if ((int)i == c->xff_last) {
			uint32_t vend = h->value + h->value_len;
			iov[n++] = (struct iovec){b + run, vend - run};
			int k = snprintf(c->gen, sizeof c->gen, ", %s\r\n", c->ip);
			iov[n++] = (struct iovec){c->gen, (size_t)k};
			g = (size_t)k;
			run = h->end;
		}
	}
	if (c->term > run)
		iov[n++] = (struct iovec){b + run, c->term - run};
	char *t = c->gen + g;
	size_t cap = sizeof c->gen - g, tl = 0;
	if (c->upgrade)
		tl += (size_t)snprintf(t + tl, cap - tl, "Connection: Upgrade\r\n");
	if (c->xff_last < 0)
		tl += (size_t)snprintf(t + tl, cap - tl, "X-Forwarded-For: %s\r\n", c->ip);
	if (!c->has_xfp)
		tl += (size_t)snprintf(t + tl, cap - tl, "X-Forwarded-Proto: http\r\n");
	if (!c->has_xfport)
		tl += (size_t)snprintf(t + tl, cap - tl, "X-Forwarded-Port: %s\r\n",
				       c->l->port_str);
	tl += (size_t)snprintf(t + tl, cap - tl, "\r\n");
	iov[n++] = (struct iovec){t, tl};
	if (c->pos > c->head_end)
		iov[n++] = (struct iovec){b + c->head_end, c->pos - c->head_end};
	c->fwd = c->pos;
	c->wn = n;
	c->wi = 0;
}

static void c_dispatch(struct cconn *c)
{
	struct proxy *p = c->p;
	struct route *r = c->route;
	for (;;) {
		struct backend *be = r ? pick(r, c) : NULL;
		if (!be) {
			if (c->be) {
				struct backend *old = c->be;
				c->be = NULL;
				be_release(old);
			}
			if (c->tunnel) {
				c_close(c);
			} else if (!r || (c->attempts == 0 && r->nset == 0)) {
				c_local(c, 503, "Service Unavailable",
					"slipway-proxy: no healthy backend for %s\n",
					c->host[0] ? c->host : "this port");
			} else {
				c->keep = false;
				c_local(c, 502, "Bad Gateway",
					"slipway-proxy: no backend for %s accepted the connection\n",
					c->host[0] ? c->host : "this port");
			}
			return;
		}
		c->tried[c->attempts++] = be;
		struct upconn *up = c->stale_retried ? NULL : pool_take(be);
		if (!up)
			up = up_connect(be);
		if (!up) {
			if (be->down_until <= ev_now(p->loop))
				log_warn("proxy.connect_failed", "backend=%s address=%s error=%s",
					 be->id, be->address, strerror(errno));
			be->down_until = ev_now(p->loop) + DOWN_S;
			be->errors++;
			continue;
		}
		if (c->be != be) {
			if (c->be) {
				struct backend *old = c->be;
				c->be = NULL;
				be_release(old);
			}
			be->inflight++;
			be->requests++;
			c->be = be;
		}
		up_attach(c, up);
		if (c->tunnel) {
			if (!up->connecting)
				c_tunnel_start(c);
			return;
		}
		c_build_head(c);
		if (up->connecting) {
			ev_io_stop(p->loop, &c->rio);
			return;
		}
		c_flush_up(c);
		return;
	}
}

/* After a connect failure or a stale pooled connection: route again. */
static void c_redispatch(struct cconn *c)
{
	c->route = route_for(c);
	c_dispatch(c);
}

/* Writes what is queued for the backend (request bytes or tunnel data). */
static void c_flush_up(struct cconn *c)
{
	struct proxy *p = c->p;
	struct upconn *up = c->up;
	while (c->wi < c->wn) {
		int cnt = c->wn - c->wi;
		struct msghdr mh = {.msg_iov = c->wiov + c->wi,
				    .msg_iovlen = (size_t)(cnt > IOV_MAX ? IOV_MAX : cnt)};
		ssize_t n = sendmsg(up->fd, &mh, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				ev_io_start(p->loop, &up->wio);
				ev_io_stop(p->loop, &c->rio);
				return;
			}
			up_fail(up, strerror(errno));
			return;
		}
		iov_advance(c->wiov, &c->wi, c->wn, (size_t)n);
	}
	c->wn = c->wi = 0;
	if (ev_is_active(&up->wio))
		ev_io_stop(p->loop, &up->wio);
	if (c->tunnel) {
		c->len = c->pos = c->fwd = 0;
		if (c->eof) {
			shutdown(up->fd, SHUT_WR);
			if (up->eof && up->wi == up->wn)
				c_close(c);
		} else {
			ev_io_start(p->loop, &c->rio);
		}
		return;
	}
	lt_set(p->loop, &up->tm, ev_now(p->loop) + p->upstream_s);
	if (c->req_done) {
		c->req_sent = true;
		if (up->resp_done && up->wi == up->wn) {
			/* the answer was complete before the request was: end now */
			up_flush_c(up);
			return;
		}
		if (!c->eof && c->len < p->buf_size && !ev_is_active(&c->rio))
			ev_io_start(p->loop, &c->rio);
		c_deadline(c);
		return;
	}
	/* Streaming a body: everything parsed has left; reuse the buffer. */
	if (c->fwd == c->len)
		c->len = c->pos = c->fwd = 0;
	if (!c->eof && !ev_is_active(&c->rio))
		ev_io_start(p->loop, &c->rio);
	c_deadline(c);
}

/* More request body arrived. */
static void c_body(struct cconn *c)
{
	struct msg *m = &c->m;
	enum http_errno e = m_parse(m, c->buf, &c->pos, c->len);
	if (e == HPE_PAUSED && m->done) {
		c->req_done = true;
	} else if (e != HPE_OK) {
		/* the request was partly sent: nothing to do but close */
		c_close(c);
		return;
	}
	if (c->pos > c->fwd) {
		c->wiov[0] = (struct iovec){c->buf + c->fwd, c->pos - c->fwd};
		c->wn = 1;
		c->wi = 0;
		c->fwd = c->pos;
		c_flush_up(c);
	}
}

static void c_tunnel_data(struct cconn *c)
{
	if (c->len > c->fwd) {
		c->wiov[0] = (struct iovec){c->buf + c->fwd, c->len - c->fwd};
		c->wn = 1;
		c->wi = 0;
		c->fwd = c->pos = c->len;
		c_flush_up(c);
	}
}

static void c_on_eof(struct cconn *c)
{
	struct proxy *p = c->p;
	c->eof = true;
	ev_io_stop(p->loop, &c->rio);
	if (c->tunnel) {
		if (!c->up) {
			c_close(c);
			return;
		}
		if (c->wi == c->wn) {
			shutdown(c->up->fd, SHUT_WR);
			if (c->up->eof && c->up->wi == c->up->wn) {
				c_close(c);
				return;
			}
		}
		tunnel_half_closed(c);
		return;
	}
	/* A client may half-close after a complete request and still read the
	 * answer; anything else means it is gone. */
	if (!c->active || !c->req_done)
		c_close(c);
}

static void c_read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	(void)revents;
	struct cconn *c = w->data;
	struct proxy *p = c->p;
	if (c->lingering) {
		char sink[4096];
		for (;;) {
			ssize_t n = read(c->fd, sink, sizeof sink);
			if (n > 0)
				continue;
			if (n < 0 && (errno == EAGAIN || errno == EINTR))
				return;
			c_close(c);
			return;
		}
	}
	if (!c->buf && !(c->buf = pbuf_get(p))) {
		c_close(c);
		return;
	}
	size_t room = p->buf_size - c->len;
	if (room == 0) {
		ev_io_stop(loop, &c->rio);
		return;
	}
	ssize_t n = read(c->fd, c->buf + c->len, room);
	if (n > 0) {
		c->len += (uint32_t)n;
		if (c->tunnel) {
			c_tunnel_data(c);
		} else if (!c->active) {
			c_parse_head(c);
		} else if (!c->req_done && !c->local && c->up && !c->up->connecting &&
			   c->wi == c->wn) {
			c_body(c);
		} else if (c->len == p->buf_size) {
			ev_io_stop(loop, &c->rio); /* pipelined bytes wait */
		}
		return;
	}
	if (n == 0) {
		c_on_eof(c);
		return;
	}
	if (errno == EAGAIN || errno == EINTR)
		return;
	c_close(c);
}

static void c_write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	(void)revents;
	struct cconn *c = w->data;
	if (c->local)
		c_flush_local(c);
	else if (c->up)
		up_flush_c(c->up);
	else
		ev_io_stop(loop, w);
}

static void c_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)revents;
	struct cconn *c = w->data;
	if (!lt_due(loop, &c->tm))
		return;
	if (!c->active && c->timed_head && !c->lingering) {
		c->keep = false;
		c_local(c, 408, "Request Timeout", "slipway-proxy: request header timeout\n");
		return;
	}
	c_close(c);
}

/* ------------------------------------------------------------------ */
/* upstream connections                                                 */

static void up_read_cb(struct ev_loop *loop, ev_io *w, int revents);
static void up_write_cb(struct ev_loop *loop, ev_io *w, int revents);
static void up_timer_cb(struct ev_loop *loop, ev_timer *w, int revents);

static struct upconn *up_connect(struct backend *be)
{
	struct proxy *p = be->p;
	int fd = socket(be->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return NULL;
	set_nodelay(fd);
	int rc = connect(fd, (struct sockaddr *)&be->sa, be->salen);
	if (rc < 0 && errno != EINPROGRESS) {
		int e = errno;
		close(fd);
		errno = e;
		return NULL;
	}
	struct upconn *up = calloc(1, sizeof *up);
	if (!up) {
		close(fd);
		errno = ENOMEM;
		return NULL;
	}
	up->p = p;
	up->be = be;
	up->fd = fd;
	up->m.hp.data = &up->m;
	ev_io_init(&up->rio, up_read_cb, fd, EV_READ);
	ev_io_init(&up->wio, up_write_cb, fd, EV_WRITE);
	up->rio.data = up->wio.data = up;
	ev_init(&up->tm.t, up_timer_cb);
	up->tm.t.data = up;
	up->bnext = be->ups;
	if (be->ups)
		be->ups->bprev = up;
	be->ups = up;
	be->conns++;
	up->connecting = rc < 0;
	if (up->connecting) {
		ev_io_start(p->loop, &up->wio);
		lt_set(p->loop, &up->tm, ev_now(p->loop) + p->connect_s);
	} else {
		ev_io_start(p->loop, &up->rio);
	}
	return up;
}

static void pool_unlink(struct upconn *up)
{
	struct backend *be = up->be;
	if (!up->pooled)
		return;
	if (up->pprev)
		up->pprev->pnext = up->pnext;
	else
		be->idle = up->pnext;
	if (up->pnext)
		up->pnext->pprev = up->pprev;
	up->pnext = up->pprev = NULL;
	up->pooled = false;
	be->nidle--;
}

static struct upconn *pool_take(struct backend *be)
{
	struct upconn *up = be->idle;
	if (!up)
		return NULL;
	pool_unlink(up);
	up->reused = true;
	return up;
}

static void up_close(struct upconn *up)
{
	struct proxy *p = up->p;
	struct backend *be = up->be;
	pool_unlink(up);
	ev_io_stop(p->loop, &up->rio);
	ev_io_stop(p->loop, &up->wio);
	ev_timer_stop(p->loop, &up->tm.t);
	close(up->fd);
	pbuf_put(p, up->buf);
	if (up->bprev)
		up->bprev->bnext = up->bnext;
	else
		be->ups = up->bnext;
	if (up->bnext)
		up->bnext->bprev = up->bprev;
	be->conns--;
	free(up);
	be_maybe_free(be);
}

static void pool_put(struct upconn *up)
{
	struct proxy *p = up->p;
	struct backend *be = up->be;
	if (be->nidle >= p->pool_max) {
		up_close(up);
		return;
	}
	pbuf_put(p, up->buf);
	up->buf = NULL;
	up->len = up->pos = up->fwd = 0;
	up->pooled = true;
	up->pprev = NULL;
	up->pnext = be->idle;
	if (be->idle)
		be->idle->pprev = up;
	be->idle = up;
	be->nidle++;
	if (!ev_is_active(&up->rio))
		ev_io_start(p->loop, &up->rio);
	lt_set(p->loop, &up->tm, ev_now(p->loop) + p->up_idle_s);
}

static void up_attach(struct cconn *c, struct upconn *up)
{
	struct proxy *p = c->p;
	up->c = c;
	c->up = up;
	http_parser_init(&up->m.hp, HTTP_RESPONSE);
	up->m.skip_body = c->is_head;
	up->got_byte = up->head_sent = up->resp_done = up->eof = up->info = false;
	up->len = up->pos = up->fwd = 0;
	up->wn = up->wi = 0;
	if (!up->connecting)
		lt_set(p->loop, &up->tm, c->tunnel ? 0 : ev_now(p->loop) + p->upstream_s);
}

/* Kills the connection for a reason outside the exchange (drain timeout). */
static void up_kill(struct upconn *up, const char *why)
{
	if (!up->c) {
		up_close(up);
		return;
	}
	if (up->c->tunnel || up->head_sent) {
		c_close(up->c);
		return;
	}
	up_fail(up, why);
}

/* The exchange on c is over (answer written, request sent). */
static void c_exchange_end(struct cconn *c)
{
	struct proxy *p = c->p;
	struct upconn *up = c->up;
	struct backend *be = c->be;
	c->up = NULL;
	c->be = NULL;
	if (up) {
		up->c = NULL;
		bool reuse = c->req_sent && up->resp_done && !c->upgrade && be && be->active &&
			     !p->stopping && up->pos == up->len &&
			     http_should_keep_alive(&up->m.hp);
		if (reuse)
			pool_put(up);
		else
			up_close(up);
	}
	if (be)
		be_release(be);
	if (c->keep && c->req_done)
		c_next(c);
	else
		c_close_graceful(c);
}

/* Something went wrong on the backend side of an exchange. */
static void up_fail(struct upconn *up, const char *why)
{
	struct proxy *p = up->p;
	struct cconn *c = up->c;
	struct backend *be = up->be;
	if (!c) {
		up_close(up);
		return;
	}
	bool connect_failed = up->connecting;
	bool stale = !up->got_byte && up->reused && !up->connecting;
	bool head_sent = up->head_sent;
	c->up = NULL;
	up->c = NULL;
	be->guard++;
	up_close(up);
	be->guard--;
	if (connect_failed) {
		if (be->down_until <= ev_now(p->loop))
			log_warn("proxy.connect_failed", "backend=%s address=%s error=%s", be->id,
				 be->address, why);
		be->down_until = ev_now(p->loop) + DOWN_S;
		be->errors++;
		be_maybe_free(be);
		c_redispatch(c);
		return;
	}
	if (stale && c->retryable && !c->stale_retried && !c->tunnel) {
		c->stale_retried = true;
		c->attempts = 0;
		be_maybe_free(be);
		c_redispatch(c);
		return;
	}
	be->errors++;
	be_maybe_free(be);
	if (head_sent || c->tunnel) {
		c_close(c);
		return;
	}
	log_info("proxy.bad_gateway", "backend=%s address=%s host=%s error=%s", be->id,
		 be->address, c->host, why);
	struct backend *cb = c->be;
	c->be = NULL;
	if (cb)
		be_release(cb);
	c->keep = false;
	c_local(c, 502, "Bad Gateway", "slipway-proxy: the backend for %s failed (%s)\n",
		c->host[0] ? c->host : "this port", why);
}

static void up_connected(struct upconn *up)
{
	struct proxy *p = up->p;
	int soerr = 0;
	socklen_t sl = sizeof soerr;
	if (getsockopt(up->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
		soerr = errno;
	if (soerr) {
		up_fail(up, strerror(soerr));
		return;
	}
	up->connecting = false;
	ev_io_stop(p->loop, &up->wio);
	ev_io_start(p->loop, &up->rio);
	struct cconn *c = up->c;
	if (!c) {
		up_close(up);
		return;
	}
	if (c->tunnel) {
		lt_set(p->loop, &up->tm, 0);
		c_tunnel_start(c);
		return;
	}
	lt_set(p->loop, &up->tm, ev_now(p->loop) + p->upstream_s);
	c_flush_up(c);
}

static void up_write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	(void)revents;
	struct upconn *up = w->data;
	if (up->connecting)
		up_connected(up);
	else if (up->c)
		c_flush_up(up->c);
	else
		ev_io_stop(loop, w);
}

static void up_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)revents;
	struct upconn *up = w->data;
	if (!lt_due(loop, &up->tm))
		return;
	struct cconn *c = up->c;
	if (!c) {
		up_close(up);
		return;
	}
	if (up->connecting) {
		up_fail(up, "connect timeout");
		return;
	}
	if (c->tunnel || up->head_sent) {
		c_close(c);
		return;
	}
	struct backend *be = up->be;
	log_info("proxy.gateway_timeout", "backend=%s address=%s host=%s", be->id, be->address,
		 c->host);
	be->errors++;
	c->up = NULL;
	up->c = NULL;
	up_close(up);
	struct backend *cb = c->be;
	c->be = NULL;
	if (cb)
		be_release(cb);
	c->keep = false;
	c_local(c, 504, "Gateway Timeout", "slipway-proxy: the backend for %s did not answer in time\n",
		c->host[0] ? c->host : "this port");
}

/* Response head as it leaves: hop-by-hop lines out, our Connection in. When
 * nothing changes the head stays one piece with the body bytes after it. */
static int up_build_head(struct upconn *up, uint32_t head_end)
{
	struct proxy *p = up->p;
	struct cconn *c = up->c;
	struct msg *m = &up->m;
	http_parser *hp = &m->hp;
	char *b = up->buf;
	uint32_t term = m_line_ends(m, b, head_end);
	if (term == UINT32_MAX)
		return -1;
	unsigned st = hp->status_code;
	bool upgrade = st == 101;
	uint64_t drop[MAX_HEADERS / 64] = {0};
	bool any_drop = false;
	struct tokset toks = {.n = 0};
	for (uint32_t i = 0; i < m->nhdr; i++) {
		const struct hdr *h = &m->hdr[i];
		bool d = false;
		switch (h->name_len) {
		case 2:
			d = NAME_IS(b, h, "te");
			break;
		case 7:
			d = NAME_IS(b, h, "trailer") || (!upgrade && NAME_IS(b, h, "upgrade"));
			break;
		case 10:
			if (NAME_IS(b, h, "connection")) {
				d = true;
				conn_tokens(b + h->value, h->value_len, tok_add, &toks);
			} else {
				d = NAME_IS(b, h, "keep-alive");
			}
			break;
		case 16:
			d = NAME_IS(b, h, "proxy-connection");
			break;
		}
		if (d) {
			drop_set(drop, i);
			any_drop = true;
		}
	}
	if (toks.n)
		for (uint32_t i = 0; i < m->nhdr; i++)
			if (tok_has(&toks, b, &m->hdr[i])) {
				drop_set(drop, i);
				any_drop = true;
			}
	const char *conn = "";
	if (upgrade) {
		conn = "Connection: Upgrade\r\n";
	} else if (st >= 200) {
		bool framed = (hp->flags & F_CHUNKED) || hp->content_length != ULLONG_MAX ||
			      st == 204 || st == 304 || c->is_head;
		bool c10 = c->m.hp.http_minor == 0;
		c->keep = c->keep && framed && c->req_done && !c->upgrade && !p->stopping &&
			  !c->eof && !(c10 && (hp->flags & F_CHUNKED));
		conn = !c->keep ? "Connection: close\r\n" : c10 ? "Connection: keep-alive\r\n" : "";
	}
	struct iovec *iov = up->wiov + up->wn;
	int n = 0;
	uint32_t run = up->fwd;
	if (!any_drop && !*conn) {
		iov[n++] = (struct iovec){b + run, head_end - run};
	} else {
		for (uint32_t i = 0; i < m->nhdr; i++) {
			const struct hdr *h = &m->hdr[i];
			if (drop_get(drop, i)) {
				if (h->name > run)
					iov[n++] = (struct iovec){b + run, h->name - run};
				run = h->end;
			}
		}
		if (term > run)
			iov[n++] = (struct iovec){b + run, term - run};
		int k = snprintf(up->gen, sizeof up->gen, "%s\r\n", conn);
		iov[n++] = (struct iovec){up->gen, (size_t)k};
	}
	up->wn += n;
	up->fwd = head_end;
	return 0;
}

/* Queues [fwd, pos) (body bytes as they came) for the client. */
static void up_queue_body(struct upconn *up)
{
	if (up->pos > up->fwd) {
		struct iovec *last = up->wn ? &up->wiov[up->wn - 1] : NULL;
		char *at = up->buf + up->fwd;
		if (last && (char *)last->iov_base + last->iov_len == at)
			last->iov_len += up->pos - up->fwd; /* one piece with the head */
		else
			up->wiov[up->wn++] = (struct iovec){at, up->pos - up->fwd};
		up->fwd = up->pos;
	}
}

static void up_bad_response(struct upconn *up, const char *why)
{
	if (up->head_sent) {
		c_close(up->c);
		return;
	}
	up->reused = false; /* never retried: the backend answered something */
	up_fail(up, why);
}

static void up_process(struct upconn *up)
{
	struct cconn *c = up->c;
	struct msg *m = &up->m;
	for (;;) {
		if (up->wn > MAX_IOV - MAX_HEADERS - 8)
			break; /* many 1xx heads: send these first, then go on */
		enum http_errno e = m_parse(m, up->buf, &up->pos, up->len);
		if (e == HPE_PAUSED && m->head_done && !m->done) {
			unsigned st = m->hp.status_code;
			uint32_t head_end = up->pos + 1;
			if (st == 101) {
				if (!c->upgrade) {
					up_bad_response(up, "unexpected 101 Switching Protocols");
					return;
				}
				if (up_build_head(up, head_end) < 0) {
					up_bad_response(up, "malformed response head");
					return;
				}
				/* what follows the head is the new protocol's */
				up->pos = up->len;
				up->head_sent = true;
				up->info = true;
				break;
			}
			if (st < 200) {
				/* 100 Continue, 103 Early Hints: forwarded as they are */
				up->wiov[up->wn++] = (struct iovec){up->buf + up->fwd,
								    head_end - up->fwd};
				up->fwd = head_end;
				continue;
			}
			if (up_build_head(up, head_end) < 0) {
				up_bad_response(up, "malformed response head");
				return;
			}
			up->head_sent = true;
			continue;
		}
		if (e == HPE_PAUSED && m->done) {
			up_queue_body(up);
			if (m->hp.status_code < 200) {
				m->head_done = m->done = false;
				continue;
			}
			up->resp_done = true;
			break;
		}
		if (e != HPE_OK) {
			up_bad_response(up, m->overflow ? "too many response headers" :
					    http_errno_name(e));
			return;
		}
		if (!up->head_sent && up->len == up->p->buf_size) {
			up_bad_response(up, "response head too large");
			return;
		}
		break;
	}
	up_queue_body(up);
	if (up->info && m->hp.status_code == 101 && up->len > up->fwd) {
		up->wiov[up->wn++] = (struct iovec){up->buf + up->fwd, up->len - up->fwd};
		up->fwd = up->len;
	}
	if (up->wn)
		up_flush_c(up);
}

/* A response whose body ends with the connection (no length, not chunked). */
static bool resp_needs_eof(const struct msg *m)
{
	const http_parser *hp = &m->hp;
	unsigned st = hp->status_code;
	if (m->skip_body || st / 100 == 1 || st == 204 || st == 304)
		return false;
	return !(hp->flags & F_CHUNKED) && hp->content_length == ULLONG_MAX;
}

static void up_on_eof(struct upconn *up)
{
	struct proxy *p = up->p;
	struct cconn *c = up->c;
	up->eof = true;
	ev_io_stop(p->loop, &up->rio);
	if (c->tunnel) {
		if (up->wi == up->wn) {
			shutdown(c->fd, SHUT_WR);
			if (c->eof && c->wi == c->wn) {
				c_close(c);
				return;
			}
		}
		tunnel_half_closed(c);
		return;
	}
	if (up->head_sent && !up->resp_done && resp_needs_eof(&up->m)) {
		/* a body that ends with the connection */
		enum http_errno e = m_parse(&up->m, up->buf, &up->pos, up->len);
		if (e == HPE_PAUSED && up->m.done) {
			up->resp_done = true;
			up_flush_c(up);
			return;
		}
	}
	up_fail(up, "the backend closed the connection");
}

static void up_read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	(void)revents;
	struct upconn *up = w->data;
	struct proxy *p = up->p;
	if (!up->c) {
		/* an idle pooled connection: EOF or stray bytes, either way it goes */
		up_close(up);
		return;
	}
	if (!up->buf && !(up->buf = pbuf_get(p))) {
		up_fail(up, "out of memory");
		return;
	}
	size_t room = p->buf_size - up->len;
	if (room == 0) {
		ev_io_stop(loop, &up->rio);
		return;
	}
	ssize_t n = read(up->fd, up->buf + up->len, room);
	if (n > 0) {
		up->got_byte = true;
		up->len += (uint32_t)n;
		if (up->c->tunnel) {
			up->wiov[0] = (struct iovec){up->buf + up->fwd, up->len - up->fwd};
			up->wn = 1;
			up->wi = 0;
			up->fwd = up->pos = up->len;
			up_flush_c(up);
			return;
		}
		lt_set(loop, &up->tm, ev_now(loop) + p->upstream_s);
		up_process(up);
		return;
	}
	if (n == 0) {
		up_on_eof(up);
		return;
	}
	if (errno == EAGAIN || errno == EINTR)
		return;
	up_fail(up, strerror(errno));
}

/* Writes what is queued for the client (response bytes or tunnel data). */
static void up_flush_c(struct upconn *up)
{
	struct proxy *p = up->p;
	struct cconn *c = up->c;
	while (up->wi < up->wn) {
		int cnt = up->wn - up->wi;
		struct msghdr mh = {.msg_iov = up->wiov + up->wi,
				    .msg_iovlen = (size_t)(cnt > IOV_MAX ? IOV_MAX : cnt)};
		ssize_t n = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				ev_io_start(p->loop, &c->wio);
				ev_io_stop(p->loop, &up->rio);
				c_deadline(c);
				return;
			}
			c_close(c);
			return;
		}
		iov_advance(up->wiov, &up->wi, up->wn, (size_t)n);
	}
	up->wn = up->wi = 0;
	if (ev_is_active(&c->wio))
		ev_io_stop(p->loop, &c->wio);
	if (up->fwd == up->len)
		up->len = up->pos = up->fwd = 0;
	if (c->tunnel) {
		if (up->eof) {
			shutdown(c->fd, SHUT_WR);
			if (c->eof && c->wi == c->wn)
				c_close(c);
		} else if (!ev_is_active(&up->rio)) {
			ev_io_start(p->loop, &up->rio);
		}
		return;
	}
	if (up->info && up->m.hp.status_code == 101) {
		c_tunnel_start(c);
		return;
	}
	if (up->resp_done) {
		if (c->req_sent) {
			c_exchange_end(c);
		} else if (!c->req_done) {
			/* answered before the whole body came: close both */
			c->keep = false;
			c_exchange_end(c);
		}
		/* else the last request bytes are still leaving: c_flush_up ends it */
		return;
	}
	if (!ev_is_active(&up->rio))
		ev_io_start(p->loop, &up->rio);
	lt_set(p->loop, &up->tm, ev_now(p->loop) + p->upstream_s);
	c_deadline(c);
	if (up->pos < up->len)
		up_process(up); /* parsing stopped early to send what it had */
}

/* One side of a tunnel has finished: the other gets idle_timeout to finish
 * too, so a peer that never closes cannot hold the connection forever. */
static void tunnel_half_closed(struct cconn *c)
{
	struct proxy *p = c->p;
	lt_set(p->loop, &c->tm, ev_now(p->loop) + p->idle_s);
}

/* After 101 or a TCP connect: bytes flow both ways as they are. An open
 * tunnel has no timeout (WebSockets idle for long); TCP keepalive finds
 * dead peers. */
static void c_tunnel_start(struct cconn *c)
{
	struct proxy *p = c->p;
	struct upconn *up = c->up;
	int one = 1;
	c->tunnel = true;
	setsockopt(c->fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
	setsockopt(up->fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
	lt_set(p->loop, &c->tm, 0);
	lt_set(p->loop, &up->tm, 0);
	if (!ev_is_active(&up->rio) && !up->eof)
		ev_io_start(p->loop, &up->rio);
	if (c->buf && c->len > c->pos) {
		c->fwd = c->pos;
		c_tunnel_data(c); /* passes our FIN on once sent, if the client sent one */
		return;
	}
	c->len = c->pos = c->fwd = 0;
	if (!c->eof) {
		ev_io_start(p->loop, &c->rio);
		return;
	}
	/* the client finished before the upgrade was answered */
	shutdown(up->fd, SHUT_WR);
	tunnel_half_closed(c);
}

/* ------------------------------------------------------------------ */
/* life cycle                                                           */

static void idle_notify_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
	(void)revents;
	struct proxy *p = w->data;
	ev_idle_stop(loop, w);
	if (p->stopping && p->nconns == 0 && p->on_idle && !p->idle_notified) {
		p->idle_notified = true;
		ev_timer_stop(loop, &p->stop_deadline);
		p->on_idle(p->on_idle_arg);
	}
}

static void maybe_idle(struct proxy *p)
{
	if (p->stopping && p->nconns == 0 && p->on_idle && !p->idle_notified)
		ev_idle_start(p->loop, &p->idle_notify);
}

static void stop_deadline_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	struct proxy *p = w->data;
	log_warn("proxy.stop_deadline", "closing=%zu", p->nconns);
	while (p->conns)
		c_close(p->conns);
}

struct proxy *proxy_new(struct ev_loop *loop, const struct proxy_config *cfg, struct err *err)
{
	if (!cfg->bind || !cfg->health_path || cfg->health_path[0] != '/') {
		err_set(err, "proxy: bind and an absolute health_path are required");
		return NULL;
	}
	if (cfg->idle_timeout_ms <= 0 || cfg->header_timeout_ms <= 0 ||
	    cfg->connect_timeout_ms <= 0 || cfg->upstream_timeout_ms <= 0 ||
	    cfg->upstream_idle_timeout_ms <= 0) {
		err_set(err, "proxy: every timeout must be positive");
		return NULL;
	}
	if (cfg->max_header_size < 1024 || cfg->max_header_size > ((size_t)1 << 20)) {
		err_set(err, "proxy: max_header_size must be 1 KiB..1 MiB");
		return NULL;
	}
	struct proxy *p = calloc(1, sizeof *p);
	if (!p || !(p->bind = strdup(cfg->bind)) || !(p->health_path = strdup(cfg->health_path))) {
		if (p)
			free(p->bind);
		free(p);
		err_set(err, "out of memory");
		return NULL;
	}
	p->loop = loop;
	p->health_len = strlen(p->health_path);
	p->idle_s = (double)cfg->idle_timeout_ms / 1000.0;
	p->header_s = (double)cfg->header_timeout_ms / 1000.0;
	p->connect_s = (double)cfg->connect_timeout_ms / 1000.0;
	p->upstream_s = (double)cfg->upstream_timeout_ms / 1000.0;
	p->up_idle_s = (double)cfg->upstream_idle_timeout_ms / 1000.0;
	p->grace_s = (double)(cfg->stop_idle_grace_ms > 0 ? cfg->stop_idle_grace_ms : 2000) / 1000.0;
	p->max_header = cfg->max_header_size;
	p->buf_size = cfg->max_header_size > BUF_MIN ? cfg->max_header_size : BUF_MIN;
	p->pool_max = cfg->pool_max_idle ? cfg->pool_max_idle : POOL_DEFAULT;
	ev_timer_init(&p->drain_kick, drain_kick_cb, 0., 0.);
	p->drain_kick.data = p;
	ev_timer_init(&p->stop_deadline, stop_deadline_cb, 0., 0.);
	p->stop_deadline.data = p;
	ev_idle_init(&p->idle_notify, idle_notify_cb);
	p->idle_notify.data = p;
	return p;
}

void proxy_free(struct proxy *p)
{
	if (!p)
		return;
	p->on_idle = NULL;
	while (p->conns)
		c_close(p->conns);
	while (p->drains)
		drain_free(p->drains);
	while (p->routes)
		route_free(p->routes);
	while (p->listeners)
		listener_close(p->listeners);
	/* Orphans have no connection left now; free whatever remains. */
	while (p->orphans) {
		struct backend *be = p->orphans;
		be_close_idle(be);
		be_unlink(be);
		free(be);
	}
	ev_timer_stop(p->loop, &p->drain_kick);
	ev_timer_stop(p->loop, &p->stop_deadline);
	ev_idle_stop(p->loop, &p->idle_notify);
	while (p->free_bufs) {
		char *b = p->free_bufs;
		memcpy(&p->free_bufs, b, sizeof(char *));
		free(b);
	}
	free(p->bind);
	free(p->health_path);
	free(p);
}

size_t proxy_listeners(const struct proxy *p, struct proxy_listener_info *out, size_t max)
{
	size_t n = 0;
	for (const struct listener *l = p->listeners; l && n < max; l = l->next)
		if (l->fd >= 0)
			out[n++] = (struct proxy_listener_info){l->port, l->protocol, l->fd};
	return n;
}

int proxy_adopt_listener(struct proxy *p, int port, enum proxy_protocol protocol, int fd,
			 struct err *err)
{
	if (port < 1 || port > 65535)
		return err_set(err, "bad port %d", port);
	if (listener_find(p, port))
		return err_set(err, "port %d already has a listener", port);
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
		return err_set(err, "fcntl: %s", strerror(errno));
	if (!listener_new(p, port, protocol, fd))
		return err_set(err, "out of memory");
	return 0;
}

void proxy_prune_listeners(struct proxy *p)
{
	struct listener *l = p->listeners;
	while (l) {
		struct listener *next = l->next;
		if (!l->routes)
			listener_close(l);
		l = next;
	}
}

void proxy_stop(struct proxy *p, int64_t deadline_ms, proxy_idle_fn on_idle, void *arg)
{
	p->stopping = true;
	p->on_idle = on_idle;
	p->on_idle_arg = arg;
	for (struct listener *l = p->listeners; l; l = l->next) {
		ev_io_stop(p->loop, &l->io);
		ev_timer_stop(p->loop, &l->pause);
		if (l->fd >= 0)
			close(l->fd);
		l->fd = -1;
	}
	/* Idle keep-alive clients get a moment to send one more request (it is
	 * answered with Connection: close); then they are closed. */
	for (struct cconn *c = p->conns; c; c = c->next)
		if (!c->active && !c->lingering && !c->timed_head)
			lt_set(p->loop, &c->tm, ev_now(p->loop) + p->grace_s);
	if (deadline_ms > 0) {
		ev_timer_stop(p->loop, &p->stop_deadline);
		ev_timer_set(&p->stop_deadline, (double)deadline_ms / 1000.0, 0.);
		ev_timer_start(p->loop, &p->stop_deadline);
	}
	log_info("proxy.stopping", "connections=%zu deadline_ms=%lld", p->nconns,
		 (long long)deadline_ms);
	maybe_idle(p);
}

size_t proxy_connection_count(const struct proxy *p)
{
	return p->nconns;
}
