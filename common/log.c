#include "log.h"

#include "clock.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#define REDACTED "[redacted]"

struct secret {
	char *s;
	size_t len;
};

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static enum log_level log_min = LOG_LEVEL_INFO;
static int log_syslog;
static char log_ident[64];
static log_sink_fn log_sink;
static void *log_sink_arg;
/* Registered secrets; the first-byte counts let the scan skip most positions cheaply. */
static struct secret *redact;
static size_t redact_count, redact_alloc;
static unsigned redact_first[256];

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_init(const char *ident, enum log_level min_level, int use_syslog)
{
	pthread_mutex_lock(&log_lock);
	log_min = min_level;
	log_syslog = use_syslog;
	if (use_syslog) {
		/* openlog keeps the pointer, so it gets a copy that lives as long as we do. */
		snprintf(log_ident, sizeof log_ident, "%s", ident ? ident : "slipway");
		openlog(log_ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
	}
	pthread_mutex_unlock(&log_lock);
}

void log_set_level(enum log_level min_level)
{
	pthread_mutex_lock(&log_lock);
	log_min = min_level;
	pthread_mutex_unlock(&log_lock);
}

int log_level_parse(const char *name, enum log_level *out)
{
	for (int i = 0; i < 4; i++) {
		if (strcmp(name, level_names[i]) == 0) {
			*out = (enum log_level)i;
			return 0;
		}
	}
	return -1;
}

int log_enabled(enum log_level level)
{
	pthread_mutex_lock(&log_lock);
	int on = level >= log_min;
	pthread_mutex_unlock(&log_lock);
	return on;
}

void log_set_sink(log_sink_fn sink, void *arg)
{
	pthread_mutex_lock(&log_lock);
	log_sink = sink;
	log_sink_arg = arg;
	pthread_mutex_unlock(&log_lock);
}

void log_redact_add(const char *secret)
{
	if (!secret || strlen(secret) < 4)
		return;
	pthread_mutex_lock(&log_lock);
	for (size_t i = 0; i < redact_count; i++) {
		if (strcmp(redact[i].s, secret) == 0)
			goto out;
	}
	if (redact_count == redact_alloc) {
		size_t n = redact_alloc ? redact_alloc * 2 : 16;
		struct secret *p = realloc(redact, n * sizeof *p);
		if (!p)
			goto out;
		redact = p;
		redact_alloc = n;
	}
	char *copy = strdup(secret);
	if (!copy)
		goto out;
	redact[redact_count].s = copy;
	redact[redact_count].len = strlen(copy);
	redact_count++;
	redact_first[(unsigned char)copy[0]]++;
out:
	pthread_mutex_unlock(&log_lock);
}

void log_redact_remove(const char *secret)
{
	if (!secret)
		return;
	pthread_mutex_lock(&log_lock);
	for (size_t i = 0; i < redact_count; i++) {
		if (strcmp(redact[i].s, secret) == 0) {
			redact_first[(unsigned char)redact[i].s[0]]--;
			free(redact[i].s);
			redact[i] = redact[--redact_count];
			break;
		}
	}
	pthread_mutex_unlock(&log_lock);
}

/* The line being built; pieces that do not fit whole are dropped (the line is cut). */
struct line {
	char text[LOG_LINE_MAX];
	size_t used;
	int full;
};

static void put(struct line *l, const char *s, size_t n)
{
	if (l->full || n > LOG_LINE_MAX - 1 - l->used) {
		l->full = 1;
		return;
	}
	memcpy(l->text + l->used, s, n);
	l->used += n;
	l->text[l->used] = '\0';
}

/* One byte, with control characters escaped so one event stays one line. */
static void put_escaped(struct line *l, unsigned char c)
{
	char esc[5];
	switch (c) {
	case '\n': put(l, "\\n", 2); return;
	case '\r': put(l, "\\r", 2); return;
	case '\t': put(l, "\\t", 2); return;
	default: break;
	}
	if (c < 0x20 || c == 0x7f) {
		snprintf(esc, sizeof esc, "\\x%02x", c);
		put(l, esc, 4);
	} else {
		put(l, (const char *)&c, 1);
	}
}

/*
 * Appends s[0..n) with every byte that belongs to an occurrence of a registered
 * secret hidden: each run of such bytes becomes one "[redacted]". Matching runs on
 * the raw text, before escaping and before the line is cut, so neither overlapping
 * secrets, a secret that is a prefix of another, nor the cut can expose a part of
 * one. Lock held.
 */
static void put_redacted(struct line *l, const char *s, size_t n)
{
	size_t cover_end = 0;
	int hiding = 0;
	for (size_t i = 0; i < n && !l->full; i++) {
		if (redact_first[(unsigned char)s[i]]) {
			for (size_t k = 0; k < redact_count; k++) {
				const struct secret *sec = &redact[k];
				if (sec->len <= n - i && i + sec->len > cover_end &&
				    memcmp(s + i, sec->s, sec->len) == 0)
					cover_end = i + sec->len;
			}
		}
		if (i < cover_end) {
			if (!hiding)
				put(l, REDACTED, sizeof REDACTED - 1);
			hiding = 1;
			continue;
		}
		hiding = 0;
		put_escaped(l, (unsigned char)s[i]);
	}
}

void log_vmsg(enum log_level level, const char *event, const char *fmt, va_list ap)
{
	if ((int)level < 0 || level > LOG_LEVEL_ERROR)
		level = LOG_LEVEL_ERROR;
	if (!log_enabled(level))
		return;

	/* The whole body is formatted (on the heap when long) so redaction sees every
	 * secret whole; only the finished line is cut to LOG_LINE_MAX. */
	char small[LOG_LINE_MAX];
	char *heap = NULL;
	const char *body = small;
	va_list ap2;
	va_copy(ap2, ap);
	int n = vsnprintf(small, sizeof small, fmt, ap);
	if (n < 0) {
		body = "[log format error]";
		n = (int)strlen(body);
	} else if ((size_t)n >= sizeof small) {
		heap = malloc((size_t)n + 1);
		if (heap) {
			vsnprintf(heap, (size_t)n + 1, fmt, ap2);
			body = heap;
		} else {
			body = "[log line dropped: out of memory]";
			n = (int)strlen(body);
		}
	}
	va_end(ap2);

	char ts[25];
	clock_format_rfc3339(clock_wall_ms(), ts);

	struct line line;
	struct line *l = &line;
	l->used = 0;
	l->full = 0;
	l->text[0] = '\0';
	pthread_mutex_lock(&log_lock);
	if (!log_syslog || log_sink) {
		put(l, ts, strlen(ts));
		put(l, " ", 1);
		put(l, level_names[level], strlen(level_names[level]));
		put(l, " ", 1);
	}
	put_redacted(l, event, strlen(event));
	if (n > 0) {
		put(l, " ", 1);
		put_redacted(l, body, (size_t)n);
	}
	if (log_sink) {
		log_sink(level, l->text, log_sink_arg);
	} else if (log_syslog) {
		static const int prio[] = {LOG_DEBUG, LOG_INFO, LOG_WARNING, LOG_ERR};
		syslog(prio[level], "%s", l->text);
	} else {
		fprintf(stderr, "%s\n", l->text);
	}
	pthread_mutex_unlock(&log_lock);
	free(heap);
}

void log_msg(enum log_level level, const char *event, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_vmsg(level, event, fmt, ap);
	va_end(ap);
}
