/*
 * httpd: the inbound HTTP/1.1 server (see httpd.h for the contract).
 *
 * Structure. Each connection owns one http_parser, paused at two points of
 * every message: after the headers (so on_headers runs, and the body limits
 * are decided, outside the parser's callbacks) and after the message (so the
 * handler runs outside them, and a pipelined request waits until this one is
 * answered). At most one request per connection exists at a time; input that
 * arrives while the owner holds a request waits in `pend`.
 *
 * Deferred work. Answers given later (long polls) and aborts never act inside
 * the owner's call: they queue the connection on the server's work list,
 * which an ev_prepare watcher drains right before the loop waits (an ev_idle
 * watcher keeps that wait from blocking when work is queued from another
 * prepare watcher). The same watcher frees finished requests and closed
 * connections, which is what keeps a request pointer valid until the loop
 * next waits, whatever happened to it in this iteration.
 *
 * Time. One ev_timer per connection holds the earliest of its read and write
 * deadlines. Deadlines that move later (every body read, every write) only
 * update a number; the timer notices when it fires and re-arms itself.
 */
#include "httpd.h"

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
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>

#include "buf.h"
#include "clock.h"
#include "crypto.h"
#include "gzip.h"
#include "log.h"

#define READ_CHUNK ((size_t)64 << 10)      /* one read from a socket */
#define PEND_MAX ((size_t)64 << 10)        /* unparsed input kept per connection */
#define OUT_MAX ((size_t)1 << 30)          /* queued output per connection */
#define OUT_KEEP ((size_t)64 << 10)        /* output storage kept between answers */
#define RESP_HEADERS_MAX ((size_t)16 << 10)
#define TLS_WRITE_MAX ((size_t)16 << 10)   /* one TLS record */
#define LINGER_S 2.0
#define ACCEPT_PAUSE_S 0.1
#define ACCEPT_BATCH 64
#define TLS_READS_PER_EVENT 16
#define WARN_INTERVAL_S 60.0
#define PEER_MAX 64

enum req_state { RQ_HEADERS, RQ_BODY, RQ_OWNED };
enum frame { FRAME_LENGTH, FRAME_CHUNKED, FRAME_CLOSE, FRAME_NONE };
enum parse_event { PE_NONE, PE_HEADERS, PE_MESSAGE };
enum last_cb { CB_NONE, CB_FIELD, CB_VALUE };

struct conn;

struct hreq {
	struct httpd_req pub;      /* first member: the owner's pointer is &pub */
	struct httpd *srv;
	struct conn *conn;         /* NULL once the connection has let go */
	struct hreq *next_dead;    /* srv->graveyard */
	enum req_state state;
	unsigned attached : 1;     /* conn->req points here */
	unsigned finished : 1;     /* answered, aborted or refused: the owner let go */
	unsigned owner_knows : 1;  /* on_headers ran: on_abort applies */
	unsigned in_on_headers : 1;
	unsigned streaming : 1;
	unsigned is_head : 1;
	unsigned keep_alive : 1;
	unsigned expects_body : 1;
	unsigned gzip : 1;
	unsigned body_file_kept : 1;
	unsigned drain_wanted : 1;
	enum frame frame;          /* of a stream */
	struct buf url;
	struct buf hraw;           /* "name\0value\0" per header, in arrival order */
	struct buf pathq;          /* "path\0query\0" */
	struct httpd_header *hdrs;
	size_t body_max;
	uint64_t wire_max, wire_len; /* body bytes as sent (compressed, unchunked) */
	uint64_t body_len;
	struct gzip_decoder *gz;
	struct buf body;
	char *body_file;
	int body_fd;
	struct buf resp_hdrs;      /* lines from httpd_add_header */
	httpd_abort_fn on_abort;
	void *abort_arg;
	httpd_drain_fn on_drain;
	void *drain_arg;
	char peer[PEER_MAX];
};

struct conn_tls {
	mbedtls_ssl_context ssl;
	size_t wlen;               /* length of a write that returned WANT_WRITE */
	int handshaking;
	int want;                  /* EV_READ / EV_WRITE the handshake waits for */
	int maybe_pending;         /* decrypted input may wait inside mbedTLS */
};

struct conn {
	struct httpd *srv;
	struct conn *prev, *next;  /* srv->conns */
	struct conn *work_next;    /* srv->work_head */
	struct conn *dead_next;    /* srv->dead */
	int fd;
	ev_io io;
	ev_timer timer;
	int io_events;
	ev_tstamp timer_at;        /* when the timer fires; 0 when it is not armed */
	ev_tstamp read_deadline, write_deadline; /* 0 = none */
	char peer[PEER_MAX];
	http_parser parser;
	enum parse_event event;    /* why the parser paused */
	int err_status;            /* set by a parser callback that failed */
	const char *err_msg;
	uint64_t fed;              /* bytes given to the parser so far */
	uint64_t exec_base;        /* fed at the start of the current execute */
	const char *exec_data;     /* its data pointer */
	uint64_t value_end;        /* stream offset just past the last value piece */
	enum last_cb last_cb;
	int value_seen;            /* the current header value has a non-empty piece */
	size_t head_bytes;         /* request line + header bytes of this message */
	size_t trailer_bytes;
	unsigned requests;         /* messages begun on this connection */
	struct hreq *req;
	struct buf pend;           /* input read but not parsed yet */
	struct buf out;            /* output not yet written, from out_off */
	size_t out_off;
	struct conn_tls *tls;
	unsigned queued : 1;       /* on the work list */
	unsigned dead : 1;         /* closed; freed by the next reap */
	unsigned closing : 1;      /* close once the output is written */
	unsigned no_more : 1;      /* parse no further requests */
	unsigned drop : 1;         /* close at once (httpd_abort) */
	unsigned lingering : 1;
	unsigned peer_eof : 1;
	unsigned busy : 1;         /* inside its own I/O, timer or work turn */
};

struct httpd_tls {
	mbedtls_ssl_config conf;
	mbedtls_x509_crt crt;
	mbedtls_pk_context key;
};

struct httpd {
	struct ev_loop *loop;
	struct httpd_config cfg;   /* copied; strings below */
	char *listen_copy;
	struct buf default_headers; /* "Name: value\r\n" lines */
	int listen_fd;
	int port;
	char *unix_path;           /* removed at stop if still our socket */
	dev_t unix_dev;
	ino_t unix_ino;
	ev_io accept_io;
	ev_timer accept_pause;
	ev_prepare prepare;
	ev_idle idle;
	struct conn *conns;
	size_t nconns, nreqs;
	struct conn *work_head, *work_tail;
	struct conn *dead;
	struct hreq *graveyard;
	struct httpd_tls *tls;
	int stopping;
	int64_t date_sec;
	char date[40];
	ev_tstamp last_cap_warn, last_fd_warn;
};

static const http_parser_settings parser_settings;

static void conn_close(struct conn *c);
static void conn_flush(struct conn *c);
static void conn_settle(struct conn *c);
static size_t conn_parse(struct conn *c, const char *data, size_t len);
static void send_error(struct conn *c, int status, const char *message);
static int token_ok(const char *s);

static struct hreq *req_of(struct httpd_req *pub)
{
	/* pub is the first member of struct hreq */
	return (struct hreq *)(void *)pub;
}

static size_t out_pending(const struct conn *c)
{
	return c->out.len - c->out_off;
}

/* ---- time ---- */

static const char *http_date(struct httpd *s)
{
	static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
	static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
					   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
	int64_t sec = clock_wall_ms() / 1000;
	if (sec != s->date_sec || !s->date[0]) {
		time_t t = (time_t)sec;
		struct tm tm;
		gmtime_r(&t, &tm);
		/* Fixed English names: strftime's %a and %b follow the locale. */
		snprintf(s->date, sizeof s->date, "%s, %02d %s %04d %02d:%02d:%02d GMT",
			 days[tm.tm_wday % 7], tm.tm_mday, months[tm.tm_mon % 12],
			 tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
		s->date_sec = sec;
	}
	return s->date;
}

static ev_tstamp after_ms(struct httpd *s, int64_t ms)
{
	return ev_now(s->loop) + (ev_tstamp)ms / 1000.0;
}

/* ---- deferred work and reaping ---- */

static void srv_kick(struct httpd *s)
{
	if (!ev_is_active(&s->prepare))
		ev_prepare_start(s->loop, &s->prepare);
	if (!ev_is_active(&s->idle))
		ev_idle_start(s->loop, &s->idle);
}

static void conn_schedule(struct conn *c)
{
	struct httpd *s = c->srv;
	/* A turn in progress writes and settles on its way out anyway. */
	if (c->queued || c->dead || c->busy)
		return;
	c->queued = 1;
	c->work_next = NULL;
	if (s->work_tail)
		s->work_tail->work_next = c;
	else
		s->work_head = c;
	s->work_tail = c;
	srv_kick(s);
}

static void req_free(struct hreq *r)
{
	buf_free(&r->url);
	buf_free(&r->hraw);
	buf_free(&r->pathq);
	buf_free(&r->body);
	buf_free(&r->resp_hdrs);
	free(r->hdrs);
	gzip_decoder_free(r->gz);
	if (r->body_fd >= 0)
		close(r->body_fd);
	if (r->body_file) {
		if (!r->body_file_kept)
			unlink(r->body_file);
		free(r->body_file);
	}
	free(r);
}

static void conn_free(struct conn *c)
{
	buf_free(&c->pend);
	buf_free(&c->out);
	free(c);
}

/* Frees finished requests and closed connections: nobody may hold them now. */
static void srv_reap(struct httpd *s)
{
	while (s->graveyard) {
		struct hreq *r = s->graveyard;
		s->graveyard = r->next_dead;
		req_free(r);
	}
	while (s->dead) {
		struct conn *c = s->dead;
		s->dead = c->dead_next;
		conn_free(c);
	}
}

static void conn_work(struct conn *c);

static void srv_run_work(struct httpd *s)
{
	struct conn *c;
	while ((c = s->work_head)) {
		s->work_head = c->work_next;
		if (!s->work_head)
			s->work_tail = NULL;
		c->queued = 0;
		if (!c->dead)
			conn_work(c);
	}
}

static void on_prepare(struct ev_loop *loop, ev_prepare *w, int revents)
{
	(void)revents;
	struct httpd *s = w->data;
	srv_run_work(s);
	srv_reap(s);
	ev_prepare_stop(loop, &s->prepare);
	ev_idle_stop(loop, &s->idle);
}

static void on_idle(struct ev_loop *loop, ev_idle *w, int revents)
{
	(void)revents;
	struct httpd *s = w->data;
	srv_run_work(s);
	/* The prepare watcher, still active, reaps before the loop waits. */
	ev_idle_stop(loop, &s->idle);
}

/* ---- request lifetime ---- */

static struct hreq *req_new(struct conn *c)
{
	struct httpd *s = c->srv;
	struct hreq *r = calloc(1, sizeof *r);
	if (!r)
		return NULL;
	r->srv = s;
	r->conn = c;
	r->state = RQ_HEADERS;
	r->attached = 1;
	r->body_fd = -1;
	r->body_max = s->cfg.body_max;
	buf_init(&r->url, s->cfg.max_url_bytes);
	buf_init(&r->hraw, s->cfg.max_header_bytes);
	buf_init(&r->pathq, s->cfg.max_url_bytes * 2 + 4);
	buf_init(&r->body, 1);
	buf_init(&r->resp_hdrs, RESP_HEADERS_MAX);
	snprintf(r->peer, sizeof r->peer, "%s", c->peer);
	r->pub.method = "";
	r->pub.target = "";
	r->pub.path = "";
	r->pub.query = "";
	r->pub.body = "";
	r->pub.peer = r->peer;
	s->nreqs++;
	return r;
}

/* Hands a request that is finished and no longer on its connection to the
 * graveyard; it is freed before the loop next waits. */
static void req_release(struct hreq *r)
{
	if (!r->finished || r->attached)
		return;
	r->conn = NULL;
	r->next_dead = r->srv->graveyard;
	r->srv->graveyard = r;
	srv_kick(r->srv);
}

static void req_set_finished(struct hreq *r)
{
	if (r->finished)
		return;
	r->finished = 1;
	r->srv->nreqs--;
}

/* The connection stops pointing at its request. */
static void conn_detach(struct conn *c)
{
	struct hreq *r = c->req;
	if (!r)
		return;
	c->req = NULL;
	r->attached = 0;
	req_release(r);
}

/* Ends a request the owner did not answer; on_abort runs if the owner knows it. */
static void req_abort(struct hreq *r)
{
	if (r->finished) {
		req_release(r);
		return;
	}
	req_set_finished(r);
	if (r->owner_knows && r->on_abort) {
		httpd_abort_fn fn = r->on_abort;
		r->on_abort = NULL;
		fn(&r->pub, r->abort_arg);
	}
	req_release(r);
}

/* The connection's request (if any) ends without an answer. */
static void conn_abort_req(struct conn *c)
{
	struct hreq *r = c->req;
	if (!r)
		return;
	c->req = NULL;
	r->attached = 0;
	req_abort(r);
}

/* ---- socket I/O, plain and TLS ---- */

static int tls_bio_send(void *ctx, const unsigned char *data, size_t len)
{
	struct conn *c = ctx;
	ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
	if (n >= 0)
		return (int)n;
	if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
		return MBEDTLS_ERR_SSL_WANT_WRITE;
	if (errno == EPIPE || errno == ECONNRESET)
		return MBEDTLS_ERR_NET_CONN_RESET;
	return MBEDTLS_ERR_NET_SEND_FAILED;
}

static int tls_bio_recv(void *ctx, unsigned char *data, size_t len)
{
	struct conn *c = ctx;
	ssize_t n = recv(c->fd, data, len, 0);
	if (n >= 0)
		return (int)n;
	if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
		return MBEDTLS_ERR_SSL_WANT_READ;
	if (errno == ECONNRESET)
		return MBEDTLS_ERR_NET_CONN_RESET;
	return MBEDTLS_ERR_NET_RECV_FAILED;
}

/* > 0 bytes read, 0 end of input, -1 nothing now, -2 broken. */
static ssize_t conn_recv(struct conn *c, char *data, size_t len)
{
	if (!c->tls) {
		for (;;) {
			ssize_t n = recv(c->fd, data, len, 0);
			if (n >= 0)
				return n;
			if (errno == EINTR)
				continue;
			return errno == EAGAIN || errno == EWOULDBLOCK ? -1 : -2;
		}
	}
	int rc = mbedtls_ssl_read(&c->tls->ssl, (unsigned char *)data, len);
	if (rc > 0) {
		c->tls->maybe_pending = 1;
		return rc;
	}
	c->tls->maybe_pending = 0;
	if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE)
		return -1;
	if (rc == 0 || rc == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY || rc == MBEDTLS_ERR_SSL_CONN_EOF)
		return 0;
	return -2;
}

/* > 0 bytes written, -1 nothing now, -2 broken. */
static ssize_t conn_send(struct conn *c, const char *data, size_t len)
{
	if (!c->tls) {
		for (;;) {
			ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
			if (n >= 0)
				return n;
			if (errno == EINTR)
				continue;
			return errno == EAGAIN || errno == EWOULDBLOCK ? -1 : -2;
		}
	}
	/* After WANT_WRITE mbedTLS must be called again with the same length: the
	 * record is already sealed. The bytes at out_off are unchanged until then. */
	struct conn_tls *t = c->tls;
	size_t n = t->wlen ? t->wlen : (len < TLS_WRITE_MAX ? len : TLS_WRITE_MAX);
	int rc = mbedtls_ssl_write(&t->ssl, (const unsigned char *)data, n);
	if (rc > 0) {
		t->wlen = 0;
		return rc;
	}
	if (rc == MBEDTLS_ERR_SSL_WANT_WRITE || rc == MBEDTLS_ERR_SSL_WANT_READ) {
		t->wlen = n;
		return -1;
	}
	return -2;
}

/* ---- connection lifetime ---- */

static void on_conn_io(struct ev_loop *loop, ev_io *w, int revents);
static void on_conn_timer(struct ev_loop *loop, ev_timer *w, int revents);

static struct conn *conn_new(struct httpd *s, int fd, const char *peer)
{
	struct conn *c = calloc(1, sizeof *c);
	if (!c)
		return NULL;
	c->srv = s;
	c->fd = fd;
	snprintf(c->peer, sizeof c->peer, "%s", peer);
	http_parser_init(&c->parser, HTTP_REQUEST);
	c->parser.data = c;
	buf_init(&c->pend, PEND_MAX);
	buf_init(&c->out, OUT_MAX);
	if (s->tls) {
		c->tls = calloc(1, sizeof *c->tls);
		if (!c->tls) {
			free(c);
			return NULL;
		}
		mbedtls_ssl_init(&c->tls->ssl);
		if (mbedtls_ssl_setup(&c->tls->ssl, &s->tls->conf) != 0) {
			mbedtls_ssl_free(&c->tls->ssl);
			free(c->tls);
			free(c);
			return NULL;
		}
		mbedtls_ssl_set_bio(&c->tls->ssl, c, tls_bio_send, tls_bio_recv, NULL);
		c->tls->handshaking = 1;
		c->tls->want = EV_READ;
	}
	ev_io_init(&c->io, on_conn_io, fd, 0);
	c->io.data = c;
	ev_init(&c->timer, on_conn_timer);
	c->timer.data = c;
	/* The first request's headers (and the TLS handshake) are due within the
	 * header timeout of the accept. */
	c->read_deadline = after_ms(s, s->cfg.header_timeout_ms);
	c->next = s->conns;
	if (s->conns)
		s->conns->prev = c;
	s->conns = c;
	s->nconns++;
	conn_settle(c);
	return c;
}

/* Closes at once: the request in flight (if any) is aborted. */
static void conn_close(struct conn *c)
{
	struct httpd *s = c->srv;
	if (c->dead)
		return;
	c->dead = 1;
	ev_io_stop(s->loop, &c->io);
	ev_timer_stop(s->loop, &c->timer);
	if (c->tls) {
		mbedtls_ssl_free(&c->tls->ssl);
		free(c->tls);
		c->tls = NULL;
	}
	close(c->fd);
	c->fd = -1;
	if (c->prev)
		c->prev->next = c->next;
	else
		s->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	s->nconns--;
	c->dead_next = s->dead;
	s->dead = c;
	srv_kick(s);
	/* Last, so that on_abort sees the connection gone. */
	conn_abort_req(c);
}

/* After the final answer: shut our side, read and drop what the client still
 * sends for a while, so it reads the answer instead of a reset. */
static void conn_linger(struct conn *c)
{
	if (c->tls)
		mbedtls_ssl_close_notify(&c->tls->ssl); /* best effort */
	if (c->peer_eof || shutdown(c->fd, SHUT_WR) < 0) {
		conn_close(c);
		return;
	}
	c->lingering = 1;
	buf_free(&c->pend);
	buf_free(&c->out);
	c->out_off = 0;
	c->write_deadline = 0;
	c->read_deadline = after_ms(c->srv, (int64_t)(LINGER_S * 1000));
}

static void conn_arm_timer(struct conn *c)
{
	struct httpd *s = c->srv;
	ev_tstamp next = c->read_deadline;
	if (c->write_deadline && (!next || c->write_deadline < next))
		next = c->write_deadline;
	/* No deadline: a timer already armed fires, finds nothing and stops. */
	if (!next || (c->timer_at && c->timer_at <= next))
		return;
	ev_timer_stop(s->loop, &c->timer);
	ev_tstamp delay = next - ev_now(s->loop);
	ev_timer_set(&c->timer, delay > 0 ? delay : 0, 0.);
	ev_timer_start(s->loop, &c->timer);
	c->timer_at = next;
}

/* Brings the watchers and deadlines in line with the connection's state. */
static void conn_settle(struct conn *c)
{
	struct httpd *s = c->srv;
	if (c->dead)
		return;
	if (c->closing && !c->lingering && !out_pending(c) && (!c->req || c->req->finished)) {
		conn_linger(c);
		if (c->dead)
			return;
	}
	if (c->closing && !c->lingering)
		buf_free(&c->pend);
	int handshaking = c->tls && c->tls->handshaking;
	if (!c->req && !c->closing && !c->lingering && !handshaking) {
		/* Between requests: the idle timeout runs once the answer is out. */
		if (out_pending(c))
			c->read_deadline = 0;
		else if (!c->read_deadline)
			c->read_deadline = after_ms(s, s->cfg.idle_timeout_ms);
	}
	int want = 0;
	if (handshaking) {
		want = c->tls->want;
	} else {
		if (!c->peer_eof && (!c->closing || c->lingering) && c->pend.len < PEND_MAX)
			want |= EV_READ;
		if (out_pending(c))
			want |= EV_WRITE;
	}
	if (want != c->io_events) {
		ev_io_stop(s->loop, &c->io);
		ev_io_set(&c->io, c->fd, want);
		if (want)
			ev_io_start(s->loop, &c->io);
		c->io_events = want;
	}
	/* Input mbedTLS already holds raises no socket event. (It fetches one
	 * record at a time, so a busy socket is left to epoll: no starvation.) */
	if (c->tls && !handshaking && (want & EV_READ) && c->tls->maybe_pending &&
	    (mbedtls_ssl_get_bytes_avail(&c->tls->ssl) > 0 ||
	     mbedtls_ssl_check_pending(&c->tls->ssl)))
		ev_feed_event(s->loop, &c->io, EV_READ);
	conn_arm_timer(c);
}

static void conn_flush(struct conn *c)
{
	struct httpd *s = c->srv;
	if (c->dead || (c->tls && c->tls->handshaking))
		return;
	size_t pending = out_pending(c);
	int progressed = 0;
	while (pending > 0) {
		ssize_t n = conn_send(c, c->out.data + c->out_off, pending);
		if (n == -1)
			break;
		if (n < 0) {
			log_debug("httpd.write_failed", "peer=%s", c->peer);
			conn_close(c);
			return;
		}
		c->out_off += (size_t)n;
		pending -= (size_t)n;
		progressed = 1;
	}
	if (pending == 0) {
		c->out_off = 0;
		if (c->out.alloc > OUT_KEEP)
			buf_free(&c->out);
		else
			buf_reset(&c->out);
		c->write_deadline = 0;
	} else {
		if (progressed || !c->write_deadline)
			c->write_deadline = after_ms(s, s->cfg.write_timeout_ms);
		if (c->out_off >= OUT_KEEP && c->out_off * 2 >= c->out.len) {
			buf_consume(&c->out, c->out_off);
			c->out_off = 0;
		}
	}
	struct hreq *r = c->req;
	if (r && r->drain_wanted && !r->finished && pending <= s->cfg.stream_max_pending / 2) {
		r->drain_wanted = 0;
		if (r->on_drain)
			r->on_drain(&r->pub, r->drain_arg);
	}
}

/* The client closed its side (or the connection broke quietly). */
static void conn_peer_eof(struct conn *c)
{
	c->peer_eof = 1;
	if (c->lingering) {
		conn_close(c);
		return;
	}
	/* Whatever it was sending or waiting for is off; answers already queued
	 * still go out. */
	conn_abort_req(c);
	if (c->dead)
		return;
	c->closing = 1;
	c->no_more = 1;
	if (!out_pending(c))
		conn_close(c);
}

static void conn_readable(struct conn *c)
{
	struct httpd *s = c->srv;
	char data[READ_CHUNK];
	if (c->lingering) { /* raw bytes, TLS or not: they are dropped */
		for (int i = 0; i < 4; i++) {
			ssize_t n = recv(c->fd, data, sizeof data, 0);
			if (n > 0)
				continue;
			if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
				return;
			conn_close(c);
			return;
		}
		return;
	}
	int rounds = c->tls ? TLS_READS_PER_EVENT : 1;
	for (int i = 0; i < rounds && !c->dead; i++) {
		int buffering = c->pend.len > 0 || (c->req && c->req->state == RQ_OWNED);
		size_t room = READ_CHUNK;
		if (buffering && !c->no_more) {
			room = PEND_MAX - c->pend.len;
			if (room == 0)
				return;
			if (room > READ_CHUNK)
				room = READ_CHUNK;
		}
		ssize_t n = conn_recv(c, data, room);
		if (n == -1)
			return;
		if (n == -2) {
			log_debug("httpd.read_failed", "peer=%s", c->peer);
			conn_close(c);
			return;
		}
		if (n == 0) {
			conn_peer_eof(c);
			return;
		}
		if (c->no_more)
			continue; /* dropped */
		if (c->req && c->req->state == RQ_BODY)
			c->read_deadline = after_ms(s, s->cfg.body_timeout_ms);
		if (!buffering) {
			size_t used = conn_parse(c, data, (size_t)n);
			if (!c->dead && !c->no_more && !c->closing && used < (size_t)n &&
			    buf_append(&c->pend, data + used, (size_t)n - used) < 0) {
				conn_close(c);
				return;
			}
		} else {
			if (buf_append(&c->pend, data, (size_t)n) < 0) {
				conn_close(c);
				return;
			}
			if (!c->req || c->req->state != RQ_OWNED) {
				size_t used = conn_parse(c, c->pend.data, c->pend.len);
				if (!c->dead)
					buf_consume(&c->pend, used);
			}
		}
	}
}

static void tls_handshake(struct conn *c)
{
	int rc = mbedtls_ssl_handshake(&c->tls->ssl);
	if (rc == 0) {
		c->tls->handshaking = 0;
		c->tls->maybe_pending = 1; /* the request may have come with the last flight */
		return;
	}
	if (rc == MBEDTLS_ERR_SSL_WANT_READ) {
		c->tls->want = EV_READ;
		return;
	}
	if (rc == MBEDTLS_ERR_SSL_WANT_WRITE) {
		c->tls->want = EV_WRITE;
		return;
	}
	if (log_enabled(LOG_LEVEL_DEBUG)) {
		char msg[128];
		mbedtls_strerror(rc, msg, sizeof msg);
		log_debug("httpd.tls_handshake_failed", "peer=%s error=%s", c->peer, msg);
	}
	conn_close(c);
}

/* The end of every turn on a connection: close it, or write and settle. */
static void conn_finish_turn(struct conn *c)
{
	c->busy = 0;
	if (c->dead)
		return;
	if (c->drop) {
		conn_close(c);
		return;
	}
	conn_flush(c);
	conn_settle(c);
}

static void on_conn_io(struct ev_loop *loop, ev_io *w, int revents)
{
	(void)loop;
	struct conn *c = w->data;
	c->busy = 1;
	if (c->tls && c->tls->handshaking) {
		tls_handshake(c);
		if (!c->dead && !c->tls->handshaking)
			conn_readable(c);
	} else {
		if (revents & EV_WRITE)
			conn_flush(c);
		if (!c->dead && (revents & EV_READ))
			conn_readable(c);
	}
	conn_finish_turn(c);
}

static void on_conn_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)revents;
	struct conn *c = w->data;
	ev_tstamp now = ev_now(loop) + 0.001; /* a timer may fire a hair early */
	c->timer_at = 0;
	c->busy = 1;
	if (c->write_deadline && c->write_deadline <= now) {
		log_debug("httpd.write_timeout", "peer=%s", c->peer);
		conn_close(c);
		return;
	}
	if (c->read_deadline && c->read_deadline <= now) {
		c->read_deadline = 0;
		struct hreq *r = c->req;
		if (c->lingering || !r || r->finished || (c->tls && c->tls->handshaking)) {
			conn_close(c); /* idle, lingering or stuck in the handshake */
			return;
		}
		log_debug("httpd.read_timeout", "peer=%s state=%s", c->peer,
			  r->state == RQ_HEADERS ? "headers" : "body");
		send_error(c, 408, r->state == RQ_HEADERS ? "request headers took too long"
							  : "request body took too long");
	}
	conn_finish_turn(c);
}

/* Deferred work: parse what waited behind an answered request, write, settle. */
static void conn_work(struct conn *c)
{
	c->busy = 1;
	if (!c->drop && !c->req && !c->no_more && !c->closing && !c->lingering && c->pend.len) {
		size_t used = conn_parse(c, c->pend.data, c->pend.len);
		if (!c->dead)
			buf_consume(&c->pend, used);
	}
	conn_finish_turn(c);
}

/* ---- the module's own error answers ---- */

static const char *error_code(int status)
{
	switch (status) {
	case 408: return "timeout";
	case 413: case 414: case 431: return "too_large";
	case 415: return "unsupported_encoding";
	case 503: return "unavailable";
	default: return status >= 500 ? "internal" : "bad_request";
	}
}

/* {"error":{"code":..,"message":..}}; NULL when memory is short. */
static char *error_body(const char *code, const char *message)
{
	cJSON *root = cJSON_CreateObject();
	cJSON *e = root ? cJSON_AddObjectToObject(root, "error") : NULL;
	char *text = NULL;
	if (e && cJSON_AddStringToObject(e, "code", code) &&
	    cJSON_AddStringToObject(e, "message", message))
		text = cJSON_PrintUnformatted(root);
	cJSON_Delete(root);
	return text;
}

static void out_truncate(struct conn *c, size_t len)
{
	if (c->out.len > len) {
		c->out.len = len;
		if (c->out.data)
			c->out.data[len] = '\0';
	}
}

/* Appends the status line and headers of an answer; len is the body length
 * for FRAME_LENGTH. -1 (output unchanged) when the output cap is reached. */
static int render_head(struct conn *c, const struct hreq *r, int status, const char *ctype,
		       enum frame frame, size_t len, int closes)
{
	struct httpd *s = c->srv;
	struct buf *o = &c->out;
	size_t mark = o->len;
	const char *reason = http_status_str((enum http_status)status);
	if (!reason || reason[0] == '<')
		reason = "Unknown";
	int rc = buf_printf(o, "HTTP/1.1 %d %s\r\nDate: %s\r\n", status, reason, http_date(s));
	if (rc == 0 && s->default_headers.len)
		rc = buf_append(o, s->default_headers.data, s->default_headers.len);
	if (rc == 0 && ctype)
		rc = buf_printf(o, "Content-Type: %s\r\n", ctype);
	if (rc == 0 && r && r->resp_hdrs.len)
		rc = buf_append(o, r->resp_hdrs.data, r->resp_hdrs.len);
	if (rc == 0 && frame == FRAME_LENGTH)
		rc = buf_printf(o, "Content-Length: %zu\r\n", len);
	if (rc == 0 && frame == FRAME_CHUNKED)
		rc = buf_append_str(o, "Transfer-Encoding: chunked\r\n");
	if (rc == 0 && closes)
		rc = buf_append_str(o, "Connection: close\r\n");
	else if (rc == 0 && r && r->pub.http_minor == 0)
		rc = buf_append_str(o, "Connection: keep-alive\r\n");
	if (rc == 0)
		rc = buf_append(o, "\r\n", 2);
	if (rc < 0)
		out_truncate(c, mark);
	return rc;
}

/* Answers with the protocol's error body and closes the connection once it is
 * out. The request being read (if any) is aborted. */
static void send_error(struct conn *c, int status, const char *message)
{
	struct hreq *r = c->req;
	int head = r && r->is_head;
	log_debug("httpd.reject", "peer=%s status=%d why=%s", c->peer, status, message);
	conn_abort_req(c);
	if (c->dead)
		return;
	c->closing = 1;
	c->no_more = 1;
	char *body = error_body(error_code(status), message);
	size_t len = body ? strlen(body) : 0;
	if (render_head(c, NULL, status, body ? "application/json" : NULL, FRAME_LENGTH, len,
			1) == 0 && !head && len)
		buf_append(&c->out, body, len);
	free(body);
}

static int parse_fail(struct conn *c, int status, const char *message)
{
	if (!c->err_status) {
		c->err_status = status;
		c->err_msg = message;
	}
	return -1;
}

/* ---- body ---- */

static int body_store(struct hreq *r, const char *data, size_t len)
{
	struct conn *c = r->conn;
	if (r->body_fd >= 0) {
		while (len > 0) {
			ssize_t n = write(r->body_fd, data, len);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0) {
				log_error("httpd.body_file_write_failed", "file=%s error=%s",
					  r->body_file, n < 0 ? strerror(errno) : "short write");
				return parse_fail(c, 500, "cannot store the request body");
			}
			data += n;
			len -= (size_t)n;
			r->body_len += (uint64_t)n;
		}
		return 0;
	}
	if (buf_append(&r->body, data, len) < 0)
		return parse_fail(c, 413, "request body too large");
	r->body_len += len;
	return 0;
}

static int gz_sink(const void *data, size_t len, void *arg, struct err *err)
{
	if (body_store(arg, data, len) < 0)
		return err_set(err, "body sink failed");
	return 0;
}

static int gz_failed(struct conn *c, struct hreq *r)
{
	switch (gzip_decoder_error(r->gz)) {
	case GZIP_ERR_SINK:
		return parse_fail(c, 500, "cannot store the request body"); /* already set */
	case GZIP_ERR_TOO_LARGE:
	case GZIP_ERR_RATIO:
		return parse_fail(c, 413, "request body too large once decompressed");
	case GZIP_ERR_NOMEM:
		return parse_fail(c, 503, "out of memory");
	default:
		return parse_fail(c, 400, "request body is not valid gzip");
	}
}

/* ---- parser callbacks (inside http_parser_execute) ---- */

static int cb_message_begin(http_parser *p)
{
	struct conn *c = p->data;
	struct httpd *s = c->srv;
	if (c->req)
		return parse_fail(c, 400, "request out of order");
	struct hreq *r = req_new(c);
	if (!r)
		return parse_fail(c, 503, "out of memory");
	c->req = r;
	c->last_cb = CB_NONE;
	c->value_seen = 0;
	c->trailer_bytes = 0;
	/* The first request's headers are due within the header timeout of the
	 * accept; later ones within the header timeout of their first byte. */
	if (c->requests++ > 0)
		c->read_deadline = after_ms(s, s->cfg.header_timeout_ms);
	return 0;
}

static int cb_url(http_parser *p, const char *at, size_t len)
{
	struct conn *c = p->data;
	if (buf_append(&c->req->url, at, len) < 0)
		return parse_fail(c, 414, "request target too long");
	return 0;
}

static int count_trailer(struct conn *c, size_t len)
{
	c->trailer_bytes += len;
	if (c->trailer_bytes > c->srv->cfg.max_header_bytes)
		return parse_fail(c, 431, "trailer fields too large");
	return 0; /* trailers are read and dropped */
}

static int cb_header_field(http_parser *p, const char *at, size_t len)
{
	struct conn *c = p->data;
	struct hreq *r = c->req;
	if (r->state != RQ_HEADERS)
		return count_trailer(c, len);
	if (c->last_cb == CB_VALUE && buf_append_byte(&r->hraw, '\0') < 0)
		return parse_fail(c, 431, "request headers too large");
	if (c->last_cb != CB_FIELD)
		c->value_seen = 0;
	c->last_cb = CB_FIELD;
	if (buf_append(&r->hraw, at, len) < 0)
		return parse_fail(c, 431, "request headers too large");
	return 0;
}

static int cb_header_value(http_parser *p, const char *at, size_t len)
{
	struct conn *c = p->data;
	struct hreq *r = c->req;
	if (r->state != RQ_HEADERS)
		return count_trailer(c, len);
	if (c->last_cb == CB_FIELD && buf_append_byte(&r->hraw, '\0') < 0)
		return parse_fail(c, 431, "request headers too large");
	c->last_cb = CB_VALUE;
	if (len == 0)
		return 0;
	/* http-parser accepts obsolete line folding and hands the continuation over
	 * as another piece of the same value. A piece that merely continues after
	 * a read boundary starts exactly where the previous one ended in the byte
	 * stream; a folded one starts after the skipped CRLF. */
	uint64_t start = c->exec_base + (uint64_t)(at - c->exec_data);
	if (c->value_seen && start != c->value_end)
		return parse_fail(c, 400, "obsolete line folding in a header");
	c->value_seen = 1;
	c->value_end = start + len;
	if (buf_append(&r->hraw, at, len) < 0)
		return parse_fail(c, 431, "request headers too large");
	return 0;
}

static int cb_headers_complete(http_parser *p)
{
	struct conn *c = p->data;
	struct hreq *r = c->req;
	int rc = 0;
	if (c->last_cb == CB_VALUE)
		rc = buf_append_byte(&r->hraw, '\0');
	else if (c->last_cb == CB_FIELD)
		rc = buf_append(&r->hraw, "\0", 2); /* a name without a value */
	if (rc < 0)
		return parse_fail(c, 431, "request headers too large");
	c->event = PE_HEADERS;
	http_parser_pause(p, 1);
	return 0;
}

static int cb_body(http_parser *p, const char *at, size_t len)
{
	struct conn *c = p->data;
	struct hreq *r = c->req;
	if (!r || r->finished)
		return 0;
	if (len > r->wire_max - r->wire_len)
		return parse_fail(c, 413, "request body too large");
	r->wire_len += len;
	if (r->gz) {
		struct err e;
		if (gzip_decoder_feed(r->gz, at, len, &e) < 0)
			return gz_failed(c, r);
		return 0;
	}
	return body_store(r, at, len);
}

static int cb_chunk_header(http_parser *p)
{
	struct conn *c = p->data;
	struct hreq *r = c->req;
	/* Refuse an oversized chunk before reading it. */
	if (r && r->state == RQ_BODY && p->content_length > r->wire_max - r->wire_len)
		return parse_fail(c, 413, "request body too large");
	return 0;
}

static int cb_message_complete(http_parser *p)
{
	struct conn *c = p->data;
	c->event = PE_MESSAGE;
	http_parser_pause(p, 1);
	return 0;
}

static const http_parser_settings parser_settings = {
	.on_message_begin = cb_message_begin,
	.on_url = cb_url,
	.on_header_field = cb_header_field,
	.on_header_value = cb_header_value,
	.on_headers_complete = cb_headers_complete,
	.on_body = cb_body,
	.on_message_complete = cb_message_complete,
	.on_chunk_header = cb_chunk_header,
};

/* ---- between the parser's pauses ---- */

static size_t header_count(const struct hreq *r, const char *name, const char **first)
{
	size_t n = 0;
	*first = NULL;
	for (size_t i = 0; i < r->pub.header_count; i++) {
		if (strcasecmp(r->hdrs[i].name, name) == 0) {
			if (!n)
				*first = r->hdrs[i].value;
			n++;
		}
	}
	return n;
}

/* Fills the owner's view of a request whose headers are in, and applies the
 * framing rules. -1 after answering an error. */
static int req_build(struct conn *c, struct hreq *r)
{
	http_parser *p = &c->parser;
	r->pub.method = http_method_str((enum http_method)p->method);
	r->pub.http_minor = p->http_minor;
	r->is_head = p->method == HTTP_HEAD;
	if (p->http_major != 1) {
		send_error(c, 400, "unsupported HTTP version");
		return -1;
	}

	/* target, path, query */
	struct http_parser_url u;
	http_parser_url_init(&u);
	if (!r->url.len || http_parser_parse_url(r->url.data, r->url.len,
						 p->method == HTTP_CONNECT, &u) != 0) {
		send_error(c, 400, "malformed request target");
		return -1;
	}
	r->pub.target = r->url.data;
	const char *path = "/";
	size_t path_len = 1;
	if (u.field_set & (1 << UF_PATH)) {
		path = r->url.data + u.field_data[UF_PATH].off;
		path_len = u.field_data[UF_PATH].len;
	} else if (p->method == HTTP_CONNECT) {
		path = r->url.data;
		path_len = r->url.len;
	}
	const char *query = "";
	size_t query_len = 0;
	if (u.field_set & (1 << UF_QUERY)) {
		query = r->url.data + u.field_data[UF_QUERY].off;
		query_len = u.field_data[UF_QUERY].len;
	}
	if (buf_append(&r->pathq, path, path_len) < 0 || buf_append_byte(&r->pathq, '\0') < 0 ||
	    buf_append(&r->pathq, query, query_len) < 0) {
		send_error(c, 503, "out of memory");
		return -1;
	}
	r->pub.path = r->pathq.data;
	r->pub.query = r->pathq.data + path_len + 1;

	/* headers: "name\0value\0" pairs; values lose trailing blanks */
	size_t n = 0;
	for (size_t i = 0; i < r->hraw.len; i++)
		n += r->hraw.data[i] == '\0';
	n /= 2;
	r->hdrs = calloc(n ? n : 1, sizeof *r->hdrs);
	if (!r->hdrs) {
		send_error(c, 503, "out of memory");
		return -1;
	}
	char *at = r->hraw.data;
	for (size_t i = 0; i < n; i++) {
		r->hdrs[i].name = at;
		at += strlen(at) + 1;
		size_t vlen = strlen(at);
		r->hdrs[i].value = at;
		char *next = at + vlen + 1;
		while (vlen > 0 && (at[vlen - 1] == ' ' || at[vlen - 1] == '\t'))
			at[--vlen] = '\0';
		at = next;
	}
	r->pub.headers = r->hdrs;
	r->pub.header_count = n;
	/* http-parser lets blanks into names ("Transfer-Encoding : chunked"),
	 * which another server could read differently. */
	for (size_t i = 0; i < n; i++) {
		if (!token_ok(r->hdrs[i].name)) {
			send_error(c, 400, "malformed header name");
			return -1;
		}
	}

	/* Framing: anything two parties could read differently is refused
	 * (request smuggling). http-parser refuses some of it already. */
	const char *te, *cl, *ce, *host;
	size_t n_te = header_count(r, "Transfer-Encoding", &te);
	size_t n_cl = header_count(r, "Content-Length", &cl);
	size_t n_ce = header_count(r, "Content-Encoding", &ce);
	size_t n_host = header_count(r, "Host", &host);
	const char *why = NULL;
	if (n_te && n_cl)
		why = "both Content-Length and Transfer-Encoding";
	else if (n_cl > 1)
		why = "more than one Content-Length";
	else if (n_te > 1 || (n_te && strcasecmp(te, "chunked") != 0))
		why = "Transfer-Encoding other than chunked";
	else if (p->http_minor >= 1 && n_host != 1)
		why = n_host ? "more than one Host" : "missing Host";
	if (why) {
		send_error(c, 400, why);
		return -1;
	}
	if (n_ce > 1 || (n_ce && strcasecmp(ce, "gzip") != 0 && strcasecmp(ce, "identity") != 0)) {
		send_error(c, 415, "Content-Encoding other than gzip");
		return -1;
	}
	r->gzip = n_ce && strcasecmp(ce, "gzip") == 0;
	r->keep_alive = http_should_keep_alive(p) && !p->upgrade;
	r->expects_body = (p->flags & F_CHUNKED) ||
			  ((p->flags & F_CONTENTLENGTH) && p->content_length > 0);
	return 0;
}

static void headers_done(struct conn *c)
{
	struct httpd *s = c->srv;
	struct hreq *r = c->req;
	if (req_build(c, r) < 0)
		return;
	r->owner_knows = 1;
	if (s->cfg.on_headers) {
		r->in_on_headers = 1;
		s->cfg.on_headers(&r->pub, s->cfg.arg);
		r->in_on_headers = 0;
	}
	/* Answered (or dropped) from on_headers: without a body the message ends
	 * with the next byte; with one, the connection closes (httpd_respond). */
	if (c->dead || c->drop || c->req != r || r->finished)
		return;
	r->state = RQ_BODY;
	if (!r->expects_body)
		return;
	r->wire_max = r->body_max;
	if (r->gzip) {
		/* gzip adds a little to data that does not compress */
		uint64_t slack = r->body_max / 64 + 4096;
		r->wire_max = r->body_max > UINT64_MAX - slack ? UINT64_MAX : r->body_max + slack;
	}
	if ((c->parser.flags & F_CONTENTLENGTH) && c->parser.content_length > r->wire_max) {
		send_error(c, 413, "request body too large");
		return;
	}
	r->body.max = r->body_max ? r->body_max : 1; /* a buf max of 0 means the default */
	if (r->gzip) {
		struct err e;
		r->gz = gzip_decoder_new(r->body_max, gz_sink, r, &e);
		if (!r->gz) {
			send_error(c, 503, "out of memory");
			return;
		}
	}
	const char *expect = httpd_req_header(&r->pub, "Expect");
	if (expect && r->pub.http_minor >= 1 && strcasecmp(expect, "100-continue") == 0)
		buf_append_str(&c->out, "HTTP/1.1 100 Continue\r\n\r\n");
	c->read_deadline = after_ms(s, s->cfg.body_timeout_ms);
}

static void message_done(struct conn *c)
{
	struct httpd *s = c->srv;
	struct hreq *r = c->req;
	c->head_bytes = 0;
	c->read_deadline = 0;
	if (!r)
		return;
	if (!r->keep_alive)
		c->no_more = 1;
	if (r->finished) { /* answered from on_headers */
		conn_detach(c);
		return;
	}
	if (r->gz) {
		struct err e;
		if (gzip_decoder_finish(r->gz, &e) < 0) {
			c->err_status = 0;
			gz_failed(c, r);
			send_error(c, c->err_status, c->err_msg);
			return;
		}
	}
	if (r->body_fd >= 0) {
		int rc = close(r->body_fd);
		r->body_fd = -1;
		if (rc < 0) {
			log_error("httpd.body_file_write_failed", "file=%s error=%s", r->body_file,
				  strerror(errno));
			send_error(c, 500, "cannot store the request body");
			return;
		}
		r->pub.body_file = r->body_file;
	} else if (r->body.data) {
		r->pub.body = r->body.data;
	}
	r->pub.body_len = (size_t)r->body_len;
	r->state = RQ_OWNED;
	s->cfg.handler(&r->pub, s->cfg.arg);
}

/* Feeds input to the parser until it is used up, the owner holds a request, or
 * the connection stops reading requests. Returns the bytes consumed. */
static size_t conn_parse(struct conn *c, const char *data, size_t len)
{
	struct httpd *s = c->srv;
	size_t off = 0;
	while (off < len && !c->dead && !c->drop && !c->closing && !c->no_more) {
		struct hreq *r = c->req;
		if (r && r->state == RQ_OWNED)
			break;
		int in_head = !r || r->state == RQ_HEADERS;
		size_t n = len - off;
		if (in_head) {
			/* Never hand the parser more header bytes than allowed. */
			size_t room = s->cfg.max_header_bytes - c->head_bytes;
			if (n > room)
				n = room;
		}
		c->event = PE_NONE;
		c->err_status = 0;
		c->err_msg = NULL;
		c->exec_base = c->fed;
		c->exec_data = data + off;
		size_t got = n ? http_parser_execute(&c->parser, &parser_settings, data + off, n) : 0;
		c->fed += got;
		off += got;
		if (in_head)
			c->head_bytes += got;
		enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
		if (e == HPE_PAUSED) {
			http_parser_pause(&c->parser, 0);
			if (c->event == PE_HEADERS)
				headers_done(c);
			else if (c->event == PE_MESSAGE)
				message_done(c);
			continue;
		}
		if (e != HPE_OK) {
			int status = c->err_status ? c->err_status
				   : e == HPE_HEADER_OVERFLOW ? 431 : 400;
			send_error(c, status, c->err_msg ? c->err_msg : http_errno_description(e));
			break;
		}
		if (in_head && c->head_bytes >= s->cfg.max_header_bytes) {
			send_error(c, 431, "request headers too large");
			break;
		}
		if (!got) { /* no progress and no error: never loop on it */
			send_error(c, 400, "unparsable request");
			break;
		}
	}
	return off;
}

/* ---- answering ---- */

static int is_tchar(unsigned char ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
	       (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

static int token_ok(const char *s)
{
	if (!s || !*s)
		return 0;
	for (; *s; s++)
		if (!is_tchar((unsigned char)*s))
			return 0;
	return 1;
}

/* Printable bytes, blanks and UTF-8; no CR, LF or other control bytes. */
static int field_value_ok(const char *s)
{
	if (!s)
		return 0;
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
			return 0;
	}
	return 1;
}

/* Whether the connection must close after answering r now. */
static int answer_closes(const struct conn *c, const struct hreq *r)
{
	/* An answer given before the body was read leaves the body unread. */
	int body_unread = r->state != RQ_OWNED && r->expects_body;
	return !r->keep_alive || c->srv->stopping || body_unread;
}

/* The answer is queued in full: the request is the owner's no more. */
static void answer_done(struct conn *c, struct hreq *r, int closes)
{
	req_set_finished(r);
	if (closes) {
		c->closing = 1;
		c->no_more = 1;
	}
	/* An early answer to a request without a body stays attached until the
	 * parser has seen the end of the message. */
	if (c->req == r && (r->state == RQ_OWNED || closes))
		conn_detach(c);
	else if (c->req != r)
		req_release(r);
	conn_schedule(c);
}

/* Output cap reached: the connection goes, the request is finished. */
static int answer_failed(struct conn *c, struct hreq *r)
{
	log_error("httpd.answer_too_large", "peer=%s path=%s", c->peer, r->pub.path);
	req_set_finished(r);
	c->drop = 1;
	if (c->req == r)
		conn_detach(c);
	else
		req_release(r);
	conn_schedule(c);
	return -1;
}

int httpd_respond(struct httpd_req *req, int status, const char *content_type, const void *body,
		  size_t len)
{
	if (!req)
		return -1;
	struct hreq *r = req_of(req);
	if (r->finished || r->streaming || !r->conn)
		return -1;
	struct conn *c = r->conn;
	static const char internal[] =
		"{\"error\":{\"code\":\"internal\",\"message\":\"internal error\"}}";
	if (status < 200 || status > 599 || (content_type && !field_value_ok(content_type)) ||
	    (!body && len)) {
		log_error("httpd.bad_answer", "path=%s status=%d", r->pub.path, status);
		status = 500;
		content_type = "application/json";
		body = internal;
		len = sizeof internal - 1;
	}
	int closes = answer_closes(c, r);
	enum frame frame = status == 204 || status == 304 ? FRAME_NONE : FRAME_LENGTH;
	size_t mark = c->out.len;
	if (render_head(c, r, status, content_type, frame, len, closes) < 0)
		return answer_failed(c, r);
	if (frame == FRAME_LENGTH && !r->is_head && len && buf_append(&c->out, body, len) < 0) {
		out_truncate(c, mark);
		return answer_failed(c, r);
	}
	answer_done(c, r, closes);
	return 0;
}

int httpd_respond_json(struct httpd_req *req, int status, const cJSON *json)
{
	char *text = json ? cJSON_PrintUnformatted(json) : NULL;
	if (!text)
		return httpd_respond_error(req, 500, "internal", "cannot render the answer");
	int rc = httpd_respond(req, status, "application/json", text, strlen(text));
	cJSON_free(text);
	return rc;
}

int httpd_respond_error(struct httpd_req *req, int status, const char *code, const char *message)
{
	char *text = error_body(code ? code : error_code(status), message ? message : "");
	if (!text)
		return httpd_respond(req, 503, NULL, NULL, 0);
	int rc = httpd_respond(req, status, "application/json", text, strlen(text));
	cJSON_free(text);
	return rc;
}

int httpd_stream_start(struct httpd_req *req, int status, const char *content_type)
{
	if (!req)
		return -1;
	struct hreq *r = req_of(req);
	if (r->finished || r->streaming || !r->conn || r->state != RQ_OWNED)
		return -1;
	if (status < 200 || status > 599 || status == 204 || status == 304 ||
	    (content_type && !field_value_ok(content_type)))
		return -1;
	struct conn *c = r->conn;
	/* HTTP/1.0 has no chunked encoding: the end of the connection ends the body. */
	r->frame = r->pub.http_minor >= 1 ? FRAME_CHUNKED : FRAME_CLOSE;
	int closes = answer_closes(c, r) || r->frame == FRAME_CLOSE;
	if (render_head(c, r, status, content_type, r->frame, 0, closes) < 0)
		return -1;
	r->streaming = 1;
	if (closes) {
		c->no_more = 1;
		r->keep_alive = 0;
	}
	conn_schedule(c);
	return 0;
}

int httpd_stream_write(struct httpd_req *req, const void *data, size_t len)
{
	if (!req)
		return -1;
	struct hreq *r = req_of(req);
	if (!r->streaming || r->finished || !r->conn || (!data && len))
		return -1;
	struct conn *c = r->conn;
	if (out_pending(c) > c->srv->cfg.stream_max_pending) {
		r->drain_wanted = 1;
		return -1;
	}
	if (!len || r->is_head)
		return 0;
	size_t mark = c->out.len;
	int rc = 0;
	if (r->frame == FRAME_CHUNKED)
		rc = buf_printf(&c->out, "%zx\r\n", len);
	if (rc == 0)
		rc = buf_append(&c->out, data, len);
	if (rc == 0 && r->frame == FRAME_CHUNKED)
		rc = buf_append(&c->out, "\r\n", 2);
	if (rc < 0) {
		out_truncate(c, mark);
		r->drain_wanted = 1;
		return -1;
	}
	conn_schedule(c);
	return 0;
}

int httpd_stream_end(struct httpd_req *req)
{
	if (!req)
		return -1;
	struct hreq *r = req_of(req);
	if (!r->streaming || r->finished || !r->conn)
		return -1;
	struct conn *c = r->conn;
	if (r->frame == FRAME_CHUNKED && !r->is_head &&
	    buf_append(&c->out, "0\r\n\r\n", 5) < 0)
		return answer_failed(c, r);
	answer_done(c, r, !r->keep_alive || r->frame == FRAME_CLOSE || c->srv->stopping);
	return 0;
}

void httpd_stream_on_drain(struct httpd_req *req, httpd_drain_fn fn, void *arg)
{
	if (!req)
		return;
	struct hreq *r = req_of(req);
	r->on_drain = fn;
	r->drain_arg = arg;
}

void httpd_abort(struct httpd_req *req)
{
	if (!req)
		return;
	struct hreq *r = req_of(req);
	if (r->finished || !r->conn)
		return;
	struct conn *c = r->conn;
	req_set_finished(r);
	c->drop = 1;
	if (c->req == r)
		conn_detach(c);
	else
		req_release(r);
	conn_schedule(c);
}

int httpd_add_header(struct httpd_req *req, const char *name, const char *value)
{
	if (!req)
		return -1;
	struct hreq *r = req_of(req);
	static const char *const reserved[] = {"Content-Length", "Transfer-Encoding", "Connection",
					       "Date"};
	if (r->finished || r->streaming || !token_ok(name) || !field_value_ok(value))
		return -1;
	for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++)
		if (strcasecmp(name, reserved[i]) == 0)
			return -1;
	size_t mark = r->resp_hdrs.len;
	if (buf_printf(&r->resp_hdrs, "%s: %s\r\n", name, value) < 0) {
		r->resp_hdrs.len = mark;
		if (r->resp_hdrs.data)
			r->resp_hdrs.data[mark] = '\0';
		return -1;
	}
	return 0;
}

/* ---- reading a request ---- */

const char *httpd_req_header(const struct httpd_req *req, const char *name)
{
	size_t pos = 0;
	return httpd_req_header_next(req, name, &pos);
}

const char *httpd_req_header_next(const struct httpd_req *req, const char *name, size_t *pos)
{
	if (!req || !name || !pos)
		return NULL;
	for (size_t i = *pos; i < req->header_count; i++) {
		if (strcasecmp(req->headers[i].name, name) == 0) {
			*pos = i + 1;
			return req->headers[i].value;
		}
	}
	*pos = req->header_count;
	return NULL;
}

static int hex_val(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

/* Decodes a form-encoded component into out (cap bytes plus the NUL).
 * -1 on a bad escape, a decoded NUL, or when it does not fit. */
static int form_decode(const char *s, size_t len, char *out, size_t cap)
{
	size_t o = 0;
	for (size_t i = 0; i < len; i++) {
		char ch = s[i];
		if (ch == '+') {
			ch = ' ';
		} else if (ch == '%') {
			if (len - i < 3)
				return -1;
			int hi = hex_val(s[i + 1]), lo = hex_val(s[i + 2]);
			if (hi < 0 || lo < 0)
				return -1;
			ch = (char)(hi << 4 | lo);
			if (!ch)
				return -1;
			i += 2;
		}
		if (o >= cap)
			return -1;
		out[o++] = ch;
	}
	out[o] = '\0';
	return 0;
}

int httpd_req_query_param(const struct httpd_req *req, const char *name, char *out,
			  size_t out_size)
{
	if (!out || !out_size)
		return -1;
	out[0] = '\0';
	if (!req || !name)
		return -1;
	size_t name_len = strlen(name);
	char key[256];
	if (name_len >= sizeof key)
		return 0;
	const char *q = req->query ? req->query : "";
	while (*q) {
		const char *amp = strchr(q, '&');
		size_t pair_len = amp ? (size_t)(amp - q) : strlen(q);
		const char *eq = memchr(q, '=', pair_len);
		size_t key_len = eq ? (size_t)(eq - q) : pair_len;
		/* An encoded key is at most three times longer than the name it encodes. */
		if (key_len <= name_len * 3 && form_decode(q, key_len, key, name_len) == 0 &&
		    strcmp(key, name) == 0) {
			const char *value = eq ? eq + 1 : q + pair_len;
			size_t value_len = eq ? pair_len - key_len - 1 : 0;
			if (form_decode(value, value_len, out, out_size - 1) < 0) {
				out[0] = '\0';
				return -1;
			}
			return 1;
		}
		q += pair_len;
		if (*q == '&')
			q++;
	}
	return 0;
}

void httpd_req_set_body_max(struct httpd_req *req, size_t max)
{
	if (!req)
		return;
	struct hreq *r = req_of(req);
	if (r->in_on_headers && !r->finished)
		r->body_max = max;
}

int httpd_req_body_to_file(struct httpd_req *req, const char *dir, struct err *err)
{
	if (!req || !dir)
		return err_set(err, "httpd_req_body_to_file: no request or directory");
	struct hreq *r = req_of(req);
	if (!r->in_on_headers || r->finished)
		return err_set(err, "httpd_req_body_to_file: only from on_headers");
	if (r->body_file)
		return err_set(err, "httpd_req_body_to_file: already streaming to %s", r->body_file);
	size_t len = strlen(dir) + sizeof "/slipway-body-XXXXXX";
	char *path = malloc(len);
	if (!path)
		return err_set(err, "out of memory");
	snprintf(path, len, "%s/slipway-body-XXXXXX", dir);
	int fd = mkostemp(path, O_CLOEXEC);
	if (fd < 0) {
		err_set(err, "cannot create a body file in %s: %s", dir, strerror(errno));
		free(path);
		return -1;
	}
	r->body_file = path;
	r->body_fd = fd;
	return 0;
}

void httpd_req_on_abort(struct httpd_req *req, httpd_abort_fn fn, void *arg)
{
	if (!req)
		return;
	struct hreq *r = req_of(req);
	r->on_abort = fn;
	r->abort_arg = arg;
}

char *httpd_req_take_body_file(struct httpd_req *req)
{
	if (!req)
		return NULL;
	struct hreq *r = req_of(req);
	if (!r->body_file || r->body_file_kept)
		return NULL;
	char *copy = strdup(r->body_file);
	if (copy)
		r->body_file_kept = 1;
	return copy;
}

/* ---- accepting ---- */

static void format_peer(const struct sockaddr_storage *ss, char out[PEER_MAX], int *tcp)
{
	char addr[INET6_ADDRSTRLEN];
	*tcp = 1;
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
		inet_ntop(AF_INET, &in->sin_addr, addr, sizeof addr);
		snprintf(out, PEER_MAX, "%s:%u", addr, ntohs(in->sin_port));
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
		if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) { /* a dual-stack listener */
			inet_ntop(AF_INET, &in6->sin6_addr.s6_addr[12], addr, sizeof addr);
			snprintf(out, PEER_MAX, "%s:%u", addr, ntohs(in6->sin6_port));
		} else {
			inet_ntop(AF_INET6, &in6->sin6_addr, addr, sizeof addr);
			snprintf(out, PEER_MAX, "[%s]:%u", addr, ntohs(in6->sin6_port));
		}
	} else {
		*tcp = 0;
		snprintf(out, PEER_MAX, "unix");
	}
}

/* Over the connection cap: answer 503 at once (plain HTTP) and close. */
static void refuse(struct httpd *s, int fd)
{
	if (!s->tls) {
		static const char body[] =
			"{\"error\":{\"code\":\"unavailable\",\"message\":\"too many connections\"}}";
		struct buf b;
		buf_init(&b, RESP_HEADERS_MAX + s->default_headers.len);
		if (buf_printf(&b, "HTTP/1.1 503 Service Unavailable\r\nDate: %s\r\n",
			       http_date(s)) == 0 &&
		    (!s->default_headers.len ||
		     buf_append(&b, s->default_headers.data, s->default_headers.len) == 0) &&
		    buf_printf(&b, "Content-Type: application/json\r\nContent-Length: %zu\r\n"
				   "Connection: close\r\n\r\n%s", sizeof body - 1, body) == 0)
			(void)!send(fd, b.data, b.len, MSG_NOSIGNAL | MSG_DONTWAIT);
		buf_free(&b);
		/* Unread input makes close() send a reset that may destroy the answer. */
		char sink[4096];
		for (int i = 0; i < 16 && recv(fd, sink, sizeof sink, MSG_DONTWAIT) > 0; i++)
			;
		shutdown(fd, SHUT_WR);
	}
	close(fd);
}

static int srv_take_fd(struct httpd *s, int fd, const char *peer, int tcp)
{
	if (s->nconns >= s->cfg.max_connections) {
		ev_tstamp now = ev_now(s->loop);
		if (now - s->last_cap_warn >= WARN_INTERVAL_S) {
			s->last_cap_warn = now;
			log_warn("httpd.connection_cap", "max_connections=%zu peer=%s",
				 s->cfg.max_connections, peer);
		}
		refuse(s, fd);
		return -1;
	}
	if (tcp) {
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	}
	if (!conn_new(s, fd, peer)) {
		close(fd);
		return -1;
	}
	return 0;
}

static void on_accept_resume(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)revents;
	struct httpd *s = w->data;
	if (s->listen_fd >= 0)
		ev_io_start(loop, &s->accept_io);
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
	(void)revents;
	struct httpd *s = w->data;
	for (int i = 0; i < ACCEPT_BATCH && s->listen_fd >= 0; i++) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof ss;
		memset(&ss, 0, sizeof ss);
		int fd = accept4(s->listen_fd, (struct sockaddr *)&ss, &sl,
				 SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
				continue;
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
			    errno == ENOMEM) {
				/* Out of descriptors: the backlog waits a moment instead of
				 * spinning the loop on a listener that stays readable. */
				ev_tstamp now = ev_now(loop);
				if (now - s->last_fd_warn >= WARN_INTERVAL_S) {
					s->last_fd_warn = now;
					log_warn("httpd.accept_failed", "error=%s open=%zu",
						 strerror(errno), s->nconns);
				}
				ev_io_stop(loop, &s->accept_io);
				ev_timer_set(&s->accept_pause, ACCEPT_PAUSE_S, 0.);
				ev_timer_start(loop, &s->accept_pause);
			}
			return;
		}
		char peer[PEER_MAX];
		int tcp;
		format_peer(&ss, peer, &tcp);
		srv_take_fd(s, fd, peer, tcp);
	}
}

/* ---- listening ---- */

static int parse_port(const char *s, int *port)
{
	long v = 0;
	if (!*s || strlen(s) > 5)
		return -1;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return -1;
		v = v * 10 + (*s - '0');
	}
	if (v > 65535)
		return -1;
	*port = (int)v;
	return 0;
}

static int listen_tcp(struct httpd *s, const char *spec, struct err *err)
{
	char host[INET6_ADDRSTRLEN + 2];
	const char *port_s;
	int bracketed = spec[0] == '[';
	if (bracketed) {
		const char *close_b = strchr(spec, ']');
		if (!close_b || close_b[1] != ':' || (size_t)(close_b - spec - 1) >= sizeof host)
			return err_set(err, "listen '%s': expected [address]:port", spec);
		memcpy(host, spec + 1, (size_t)(close_b - spec - 1));
		host[close_b - spec - 1] = '\0';
		port_s = close_b + 2;
	} else {
		const char *colon = strrchr(spec, ':');
		if (!colon || (size_t)(colon - spec) >= sizeof host)
			return err_set(err, "listen '%s': expected address:port", spec);
		memcpy(host, spec, (size_t)(colon - spec));
		host[colon - spec] = '\0';
		port_s = colon + 1;
	}
	int port;
	if (parse_port(port_s, &port) < 0)
		return err_set(err, "listen '%s': bad port", spec);

	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof ss);
	struct sockaddr_in *in4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
	int any = strcmp(host, "*") == 0;
	if (any) {
		in6->sin6_family = AF_INET6;
		in6->sin6_addr = in6addr_any;
		in6->sin6_port = htons((uint16_t)port);
	} else if (!bracketed && inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons((uint16_t)port);
	} else if (bracketed && inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)port);
	} else {
		return err_set(err, "listen '%s': not an IP address literal (or '*')", spec);
	}
	int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0 && any && errno == EAFNOSUPPORT) { /* no IPv6 here: IPv4 only */
		memset(&ss, 0, sizeof ss);
		in4->sin_family = AF_INET;
		in4->sin_addr.s_addr = htonl(INADDR_ANY);
		in4->sin_port = htons((uint16_t)port);
		fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	}
	if (fd < 0)
		return err_set(err, "listen '%s': socket: %s", spec, strerror(errno));
	int one = 1, v6only = !any;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (ss.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only);
	socklen_t sl = ss.ss_family == AF_INET6 ? sizeof *in6 : sizeof *in4;
	if (bind(fd, (struct sockaddr *)&ss, sl) < 0 || listen(fd, SOMAXCONN) < 0) {
		err_set(err, "listen '%s': %s", spec, strerror(errno));
		close(fd);
		return -1;
	}
	struct sockaddr_storage bound;
	socklen_t bl = sizeof bound;
	if (getsockname(fd, (struct sockaddr *)&bound, &bl) == 0)
		s->port = ntohs(bound.ss_family == AF_INET6
					? ((struct sockaddr_in6 *)&bound)->sin6_port
					: ((struct sockaddr_in *)&bound)->sin_port);
	s->listen_fd = fd;
	return 0;
}

static int listen_unix(struct httpd *s, const char *path, struct err *err)
{
	struct sockaddr_un sa;
	memset(&sa, 0, sizeof sa);
	sa.sun_family = AF_UNIX;
	if (!*path || strlen(path) >= sizeof sa.sun_path)
		return err_set(err, "listen unix:%s: path empty or too long", path);
	memcpy(sa.sun_path, path, strlen(path));
	struct stat st;
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode))
			return err_set(err, "listen unix:%s: exists and is not a socket", path);
		/* A socket file left by a dead process is replaced; a live one is not. */
		int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (probe < 0)
			return err_set(err, "listen unix:%s: socket: %s", path, strerror(errno));
		int rc = connect(probe, (struct sockaddr *)&sa, sizeof sa);
		int e = errno;
		close(probe);
		if (rc == 0 || e != ECONNREFUSED)
			return err_set(err, "listen unix:%s: in use by another process", path);
		unlink(path);
	}
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return err_set(err, "listen unix:%s: socket: %s", path, strerror(errno));
	if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
		err_set(err, "listen unix:%s: bind: %s", path, strerror(errno));
		close(fd);
		return -1;
	}
	if (chmod(path, s->cfg.unix_mode ? s->cfg.unix_mode : 0660) < 0 ||
	    listen(fd, SOMAXCONN) < 0 || stat(path, &st) < 0) {
		err_set(err, "listen unix:%s: %s", path, strerror(errno));
		close(fd);
		unlink(path);
		return -1;
	}
	s->unix_path = strdup(path);
	if (!s->unix_path) {
		close(fd);
		unlink(path);
		return err_set(err, "out of memory");
	}
	s->unix_dev = st.st_dev;
	s->unix_ino = st.st_ino;
	s->listen_fd = fd;
	return 0;
}

static void close_listener(struct httpd *s)
{
	if (s->listen_fd >= 0) {
		ev_io_stop(s->loop, &s->accept_io);
		ev_timer_stop(s->loop, &s->accept_pause);
		close(s->listen_fd);
		s->listen_fd = -1;
	}
	if (s->unix_path) {
		/* Only our own socket: another server may have taken the path since. */
		struct stat st;
		if (lstat(s->unix_path, &st) == 0 && st.st_dev == s->unix_dev &&
		    st.st_ino == s->unix_ino)
			unlink(s->unix_path);
		free(s->unix_path);
		s->unix_path = NULL;
	}
}

/* ---- TLS ---- */

static int tls_rng(void *ctx, unsigned char *out, size_t len)
{
	(void)ctx;
	return crypto_random(out, len) == 0 ? 0 : MBEDTLS_ERR_CTR_DRBG_ENTROPY_SOURCE_FAILED;
}

static void tls_free(struct httpd_tls *t)
{
	if (!t)
		return;
	mbedtls_ssl_config_free(&t->conf);
	mbedtls_x509_crt_free(&t->crt);
	mbedtls_pk_free(&t->key);
	free(t);
}

static struct httpd_tls *tls_new(const char *cert_file, const char *key_file, struct err *err)
{
	struct httpd_tls *t = calloc(1, sizeof *t);
	if (!t) {
		err_set(err, "out of memory");
		return NULL;
	}
	mbedtls_ssl_config_init(&t->conf);
	mbedtls_x509_crt_init(&t->crt);
	mbedtls_pk_init(&t->key);
	char msg[160];
	int rc = mbedtls_x509_crt_parse_file(&t->crt, cert_file);
	if (rc != 0) {
		mbedtls_strerror(rc, msg, sizeof msg);
		err_set(err, "tls_cert_file %s: %s", cert_file, msg);
		goto fail;
	}
	rc = mbedtls_pk_parse_keyfile(&t->key, key_file, NULL);
	if (rc != 0) {
		mbedtls_strerror(rc, msg, sizeof msg);
		err_set(err, "tls_key_file %s: %s", key_file, msg);
		goto fail;
	}
	rc = mbedtls_pk_check_pair(&t->crt.pk, &t->key);
	if (rc != 0) {
		err_set(err, "tls_key_file %s does not match the certificate in %s", key_file,
			cert_file);
		goto fail;
	}
	rc = mbedtls_ssl_config_defaults(&t->conf, MBEDTLS_SSL_IS_SERVER,
					 MBEDTLS_SSL_TRANSPORT_STREAM, MBEDTLS_SSL_PRESET_DEFAULT);
	if (rc == 0)
		rc = mbedtls_ssl_conf_own_cert(&t->conf, &t->crt, &t->key);
	if (rc != 0) {
		mbedtls_strerror(rc, msg, sizeof msg);
		err_set(err, "tls setup: %s", msg);
		goto fail;
	}
	mbedtls_ssl_conf_min_version(&t->conf, MBEDTLS_SSL_MAJOR_VERSION_3,
				     MBEDTLS_SSL_MINOR_VERSION_3); /* TLS 1.2 */
	mbedtls_ssl_conf_rng(&t->conf, tls_rng, NULL);
	return t;
fail:
	tls_free(t);
	return NULL;
}

/* ---- the server ---- */

/* "Name: value" lines, each checked like httpd_add_header, as CRLF lines. */
static int copy_default_headers(struct httpd *s, const char *const *lines, struct err *err)
{
	buf_init(&s->default_headers, RESP_HEADERS_MAX);
	for (size_t i = 0; lines && lines[i]; i++) {
		const char *colon = strchr(lines[i], ':');
		char name[128];
		size_t name_len = colon ? (size_t)(colon - lines[i]) : 0;
		if (!colon || name_len >= sizeof name)
			return err_set(err, "default header '%s': expected 'Name: value'", lines[i]);
		memcpy(name, lines[i], name_len);
		name[name_len] = '\0';
		const char *value = colon + 1;
		while (*value == ' ' || *value == '\t')
			value++;
		if (!token_ok(name) || !field_value_ok(value))
			return err_set(err, "default header '%s': bad name or value", lines[i]);
		if (buf_printf(&s->default_headers, "%s: %s\r\n", name, value) < 0)
			return err_set(err, "default headers: more than %zu bytes", RESP_HEADERS_MAX);
	}
	return 0;
}

struct httpd *httpd_new(struct ev_loop *loop, const struct httpd_config *cfg, struct err *err)
{
	if (!loop || !cfg || !cfg->handler) {
		err_set(err, "httpd_new: a loop and a handler are required");
		return NULL;
	}
	if (cfg->max_url_bytes > HTTPD_MAX_URL_BYTES_LIMIT) {
		err_set(err, "httpd_new: max_url_bytes is at most %d", HTTPD_MAX_URL_BYTES_LIMIT);
		return NULL;
	}
	if (!cfg->tls_cert_file != !cfg->tls_key_file) {
		err_set(err, "httpd_new: TLS needs both tls_cert_file and tls_key_file");
		return NULL;
	}
	struct httpd *s = calloc(1, sizeof *s);
	if (!s) {
		err_set(err, "out of memory");
		return NULL;
	}
	s->loop = loop;
	s->listen_fd = -1;
	s->cfg = *cfg;
	struct httpd_config *c = &s->cfg;
	c->listen = NULL;
	c->default_headers = NULL;
	c->tls_cert_file = c->tls_key_file = NULL;
	if (!c->max_connections)
		c->max_connections = HTTPD_DEFAULT_MAX_CONNECTIONS;
	if (!c->max_header_bytes)
		c->max_header_bytes = HTTPD_DEFAULT_MAX_HEADER_BYTES;
	if (!c->max_url_bytes)
		c->max_url_bytes = HTTPD_DEFAULT_MAX_URL_BYTES;
	if (!c->body_max)
		c->body_max = HTTPD_DEFAULT_BODY_MAX;
	if (!c->stream_max_pending)
		c->stream_max_pending = HTTPD_DEFAULT_STREAM_MAX_PENDING;
	if (c->header_timeout_ms <= 0)
		c->header_timeout_ms = HTTPD_DEFAULT_HEADER_TIMEOUT_MS;
	if (c->body_timeout_ms <= 0)
		c->body_timeout_ms = HTTPD_DEFAULT_BODY_TIMEOUT_MS;
	if (c->idle_timeout_ms <= 0)
		c->idle_timeout_ms = HTTPD_DEFAULT_IDLE_TIMEOUT_MS;
	if (c->write_timeout_ms <= 0)
		c->write_timeout_ms = HTTPD_DEFAULT_WRITE_TIMEOUT_MS;
	ev_prepare_init(&s->prepare, on_prepare);
	s->prepare.data = s;
	ev_idle_init(&s->idle, on_idle);
	s->idle.data = s;
	ev_io_init(&s->accept_io, on_accept, -1, EV_READ);
	s->accept_io.data = s;
	ev_init(&s->accept_pause, on_accept_resume);
	s->accept_pause.data = s;

	if (copy_default_headers(s, cfg->default_headers, err) < 0)
		goto fail;
	if (cfg->tls_cert_file) {
		s->tls = tls_new(cfg->tls_cert_file, cfg->tls_key_file, err);
		if (!s->tls)
			goto fail;
	}
	if (cfg->listen) {
		const char *l = cfg->listen;
		int rc = strncmp(l, "unix:", 5) == 0 ? listen_unix(s, l + 5, err)
			 : l[0] == '/'               ? listen_unix(s, l, err)
						     : listen_tcp(s, l, err);
		if (rc < 0)
			goto fail;
		s->listen_copy = strdup(l);
		ev_io_set(&s->accept_io, s->listen_fd, EV_READ);
		ev_io_start(loop, &s->accept_io);
		log_info("httpd.listen", "listen=%s port=%d tls=%s", l, s->port,
			 s->tls ? "on" : "off");
	}
	return s;
fail:
	close_listener(s);
	tls_free(s->tls);
	buf_free(&s->default_headers);
	free(s);
	return NULL;
}

int httpd_port(const struct httpd *srv)
{
	return srv ? srv->port : 0;
}

size_t httpd_connection_count(const struct httpd *srv)
{
	return srv ? srv->nconns : 0;
}

size_t httpd_request_count(const struct httpd *srv)
{
	return srv ? srv->nreqs : 0;
}

void httpd_stop_accepting(struct httpd *srv)
{
	if (!srv)
		return;
	close_listener(srv);
	srv->stopping = 1;
	struct conn *next;
	for (struct conn *c = srv->conns; c; c = next) {
		next = c->next;
		int handshaking = c->tls && c->tls->handshaking;
		if (!c->req && !out_pending(c) && !c->pend.len && !handshaking && !c->lingering)
			conn_close(c); /* idle keep-alive: nothing to lose */
	}
}

void httpd_free(struct httpd *srv)
{
	if (!srv)
		return;
	close_listener(srv);
	srv->stopping = 1;
	while (srv->conns)
		conn_close(srv->conns); /* requests in flight get their on_abort */
	srv->work_head = srv->work_tail = NULL;
	srv_reap(srv);
	ev_prepare_stop(srv->loop, &srv->prepare);
	ev_idle_stop(srv->loop, &srv->idle);
	tls_free(srv->tls);
	buf_free(&srv->default_headers);
	if (srv->listen_copy)
		log_info("httpd.stopped", "listen=%s", srv->listen_copy);
	free(srv->listen_copy);
	free(srv);
}

int httpd_adopt_fd(struct httpd *srv, int fd, const char *peer, struct err *err)
{
	if (!srv || fd < 0) {
		if (fd >= 0)
			close(fd);
		return err_set(err, "httpd_adopt_fd: no server or descriptor");
	}
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 ||
	    fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
		err_set(err, "httpd_adopt_fd: fcntl: %s", strerror(errno));
		close(fd);
		return -1;
	}
	if (srv->nconns >= srv->cfg.max_connections) {
		refuse(srv, fd);
		return err_set(err, "httpd_adopt_fd: connection cap reached");
	}
	if (!conn_new(srv, fd, peer ? peer : "adopted")) {
		close(fd);
		return err_set(err, "out of memory");
	}
	return 0;
}

long httpd_raise_nofile_limit(struct err *err)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return err_set(err, "getrlimit(RLIMIT_NOFILE): %s", strerror(errno));
	rlim_t want = rl.rlim_max;
	if (want == RLIM_INFINITY) {
		/* The kernel refuses an infinite soft limit; nr_open is the real ceiling. */
		want = 1048576;
		FILE *f = fopen("/proc/sys/fs/nr_open", "r");
		if (f) {
			unsigned long v;
			if (fscanf(f, "%lu", &v) == 1 && v > 0)
				want = (rlim_t)v;
			fclose(f);
		}
	}
	if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
		rl.rlim_cur = want;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			return err_set(err, "setrlimit(RLIMIT_NOFILE, %lu): %s",
				       (unsigned long)want, strerror(errno));
	}
	if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > (rlim_t)LONG_MAX)
		return LONG_MAX;
	return (long)rl.rlim_cur;
}
