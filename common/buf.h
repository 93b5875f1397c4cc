/*
 * buf: a growable byte buffer with a hard cap.
 *
 * Every body, line and document slipway reads from outside goes through a buf,
 * so an oversized input fails with an error instead of growing without bound.
 * The data is always NUL-terminated (the NUL is not counted in len), so text
 * can be handed to string functions directly.
 *
 * Ownership: the struct is the caller's (usually embedded); buf_free releases
 * the storage. On error nothing is appended and the buffer is unchanged.
 */
#ifndef SLIPWAY_BUF_H
#define SLIPWAY_BUF_H

#include <stdarg.h>
#include <stddef.h>

struct buf {
	char *data;     /* NULL until the first append */
	size_t len;     /* bytes held, excluding the trailing NUL */
	size_t alloc;   /* bytes allocated */
	size_t max;     /* cap on len; 0 means the default cap (BUF_DEFAULT_MAX) */
};

#define BUF_DEFAULT_MAX ((size_t)1 << 20)

void buf_init(struct buf *b, size_t max);
void buf_free(struct buf *b);
void buf_reset(struct buf *b);           /* len = 0, keeps the storage */

/* -1 when the result would exceed the cap or memory is short. */
int buf_append(struct buf *b, const void *data, size_t len);
int buf_append_str(struct buf *b, const char *s);
int buf_append_byte(struct buf *b, char c);
int buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int buf_vprintf(struct buf *b, const char *fmt, va_list ap);

/* Drops the first n bytes (n > len drops everything). */
void buf_consume(struct buf *b, size_t n);

/* Hands the storage to the caller (free() it); the buf becomes empty.
 * Never NULL: an empty buf yields an allocated "". NULL only when out of memory. */
char *buf_detach(struct buf *b, size_t *len);

#endif
