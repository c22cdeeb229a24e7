/* What the scheduler's files share and nobody else needs (not part of sched_core.h's API). */
#ifndef KILN_SCHED_INT_H
#define KILN_SCHED_INT_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "sched_core.h"

/* Room for sched_quote's output of any input: the quotes, 48 escaped bytes, "..." and NUL. */
#define SCHED_QUOTE_MAX	(2 + 48 * 4 + 3 + 1)

/*
 * Quote len bytes of s for a message: "..." with bytes outside printable
 * ASCII, the quote and the backslash escaped (\xNN, \", \\), cut after 48
 * bytes with "..." after the closing quote. Returns buf (SCHED_QUOTE_MAX bytes).
 */
const char *sched_quote(const char *s, size_t len, char *buf);

/* Write the duration parser's message for `what` ("timeout", "duration"); as sched_parse_duration. */
int sched_parse_duration_as(const char *what, const char *s, size_t len, uint64_t *ms, struct kiln_err *err);

/* sched_parse_timeout over len bytes (which may hold a NUL: refused). */
int sched_parse_timeout_n(const char *s, size_t len, struct sched_timeout *out, struct kiln_err *err);

#endif
