/* Errors a user reads (err.h). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "err.h"

int kiln_fail(struct kiln_err *err, int errnum, const char *fmt, ...)
{
	va_list ap;

	if (err) {
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
		va_end(ap);
	}
	return -errnum;
}

int kiln_err_prefix(struct kiln_err *err, int r, const char *fmt, ...)
{
	char head[sizeof(err->msg)];
	size_t h, t, room;
	va_list ap;

	if (!err)
		return r;
	va_start(ap, fmt);
	vsnprintf(head, sizeof(head), fmt, ap);
	va_end(ap);
	h = strlen(head);
	if (h > sizeof(err->msg) - 3)
		h = sizeof(err->msg) - 3;
	room = sizeof(err->msg) - 3 - h;
	t = strnlen(err->msg, sizeof(err->msg) - 1);
	if (t > room)
		t = room;
	memmove(err->msg + h + 2, err->msg, t);
	memcpy(err->msg, head, h);
	memcpy(err->msg + h, ": ", 2);
	err->msg[h + 2 + t] = '\0';
	return r;
}
