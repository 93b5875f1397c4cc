/*
 * err: the one error convention. A function that can fail returns 0 or -1 and,
 * on -1, fills a caller-supplied struct err with a message the caller can log
 * or show ("config.conf:12: unknown key 'colour'"). The struct may be NULL when
 * the caller does not care.
 *
 *   if (bad) return err_set(err, "line %d: %s", line, why);
 */
#ifndef SLIPWAY_ERR_H
#define SLIPWAY_ERR_H

#define ERR_MSG_MAX 512

struct err {
	char msg[ERR_MSG_MAX];
};

/* Formats the message into *e (when e is not NULL) and returns -1. */
int err_set(struct err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Puts "prefix: " in front of the message already in *e; returns -1. */
int err_prefix(struct err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
