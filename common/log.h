/*
 * log: one line per event, "TIME LEVEL EVENT key=value ...", to stderr or syslog.
 *
 *   log_info("swap.start", "app=%s release=%s", app, release);
 *   -> 2026-11-26T05:39:11.123Z info swap.start app=web release=r42
 *
 * Secrets never reach the output: every string registered with log_redact_add
 * is hidden wherever it appears in the event name or the body (each run of bytes
 * covered by one or more secret occurrences, overlapping or adjacent, becomes one
 * "[redacted]"); matching runs on the whole formatted text before it is escaped or
 * cut, so no part of a secret survives. Control characters are escaped (\n, \r,
 * \t, \xNN) so a value cannot forge a second line.
 * Thread-safe (worker threads log too); never blocks except on the stderr/syslog
 * write itself. Lines are cut at LOG_LINE_MAX - 1 bytes.
 */
#ifndef SLIPWAY_LOG_H
#define SLIPWAY_LOG_H

#include <stdarg.h>

enum log_level { LOG_LEVEL_DEBUG, LOG_LEVEL_INFO, LOG_LEVEL_WARN, LOG_LEVEL_ERROR };

#define LOG_LINE_MAX 8192

/* ident names the program in syslog; use_syslog 0 writes to stderr. */
void log_init(const char *ident, enum log_level min_level, int use_syslog);
void log_set_level(enum log_level min_level);
int log_level_parse(const char *name, enum log_level *out); /* "debug".."error" */
int log_enabled(enum log_level level);

void log_msg(enum log_level level, const char *event, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void log_vmsg(enum log_level level, const char *event, const char *fmt, va_list ap);

#define log_debug(event, ...) log_msg(LOG_LEVEL_DEBUG, event, __VA_ARGS__)
#define log_info(event, ...) log_msg(LOG_LEVEL_INFO, event, __VA_ARGS__)
#define log_warn(event, ...) log_msg(LOG_LEVEL_WARN, event, __VA_ARGS__)
#define log_error(event, ...) log_msg(LOG_LEVEL_ERROR, event, __VA_ARGS__)

/* Registers a secret (copied, no limit on the count; strings under 4 bytes are
 * ignored) / forgets it. */
void log_redact_add(const char *secret);
void log_redact_remove(const char *secret);

/* Tests: receive each finished line (no trailing newline) instead of the normal
 * output (NULL restores). The sink runs under the log lock, one line at a time: it
 * must not log itself. */
typedef void (*log_sink_fn)(enum log_level level, const char *line, void *arg);
void log_set_sink(log_sink_fn sink, void *arg);

#endif
