#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int err_set(struct err *e, const char *fmt, ...)
{
	if (!e)
		return -1;
	/* Format into a scratch copy first: callers write err_set(e, "x: %s", e->msg),
	 * and vsnprintf into the buffer it is reading from is undefined behaviour. */
	char msg[ERR_MSG_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	memcpy(e->msg, msg, sizeof msg);
	return -1;
}

int err_prefix(struct err *e, const char *fmt, ...)
{
	if (!e)
		return -1;
	char prefix[ERR_MSG_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(prefix, sizeof prefix, fmt, ap);
	va_end(ap);
	char old[ERR_MSG_MAX];
	memcpy(old, e->msg, sizeof old);
	old[sizeof old - 1] = '\0';
	/* The prefix names where the error happened, so it wins; the old message is cut. */
	size_t room = sizeof e->msg - 1, used = 0;
	const char *parts[] = {prefix, ": ", old};
	for (size_t i = 0; i < 3; i++) {
		size_t n = strnlen(parts[i], room - used);
		memcpy(e->msg + used, parts[i], n);
		used += n;
	}
	e->msg[used] = '\0';
	return -1;
}
