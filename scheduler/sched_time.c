/* Durations, timeouts and times as users write and read them (sched_core.h). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "sched_core.h"
#include "sched_int.h"

/* Largest first: a duration names them in this order, each at most once. */
static const struct {
	const char *name;
	uint64_t ms;
} units[] = {
	{ "d", 24 * 3600 * 1000ull },
	{ "h", 3600 * 1000ull },
	{ "m", 60 * 1000ull },
	{ "s", 1000ull },
	{ "ms", 1ull },
};
#define NUNITS (sizeof(units) / sizeof(units[0]))

#define DURATION_EXAMPLES "30s, 5m, 1h30m or 500ms"

const char *sched_quote(const char *s, size_t len, char *buf)
{
	static const char hex[] = "0123456789abcdef";
	size_t i, o = 0, shown = len > 48 ? 48 : len;

	buf[o++] = '"';
	for (i = 0; i < shown; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '"' || c == '\\') {
			buf[o++] = '\\';
			buf[o++] = (char)c;
		} else if (c < 0x20 || c > 0x7e) {
			buf[o++] = '\\';
			buf[o++] = 'x';
			buf[o++] = hex[c >> 4];
			buf[o++] = hex[c & 15];
		} else {
			buf[o++] = (char)c;
		}
	}
	buf[o++] = '"';
	if (shown < len) {
		memcpy(buf + o, "...", 3);
		o += 3;
	}
	buf[o] = '\0';
	return buf;
}

static int is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static int is_alpha(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* Explain the byte at s[p] where a number was expected. */
static int bad_start(const char *what, const char *s, size_t len, size_t p, struct kiln_err *err)
{
	char q[SCHED_QUOTE_MAX];
	char c = s[p];

	sched_quote(s, len, q);
	if (c == '-' || c == '+')
		return kiln_fail(err, EINVAL, "%s %s has a sign; write a positive duration such as %s",
				 what, q, DURATION_EXAMPLES);
	if (c == ' ' || c == '\t' || c == '\n' || c == '\r')
		return kiln_fail(err, EINVAL, "%s %s has a space; write it without, such as 1h30m", what, q);
	if (c == '\0')
		return kiln_fail(err, EINVAL, "%s %s has a NUL byte", what, q);
	if (p == 0 && is_alpha(c) && !strcmp(what, "timeout"))
		return kiln_fail(err, EINVAL, "%s %s is neither \"session\" nor a duration such as %s",
				 what, q, DURATION_EXAMPLES);
	return kiln_fail(err, EINVAL, "%s %s is not a duration; write a number and a unit, such as %s",
			 what, q, DURATION_EXAMPLES);
}

int sched_parse_duration_as(const char *what, const char *s, size_t len, uint64_t *ms, struct kiln_err *err)
{
	char q[SCHED_QUOTE_MAX], uq[SCHED_QUOTE_MAX];
	uint64_t total = 0;
	size_t p = 0;
	int last = -1;

	if (len == 0)
		return kiln_fail(err, EINVAL, "%s is empty; write a duration such as %s", what, DURATION_EXAMPLES);
	if (len > SCHED_DURATION_TEXT_MAX)
		return kiln_fail(err, EINVAL, "%s %s is %zu bytes long (at most %u)", what, sched_quote(s, len, q),
				 len, SCHED_DURATION_TEXT_MAX);
	sched_quote(s, len, q);
	while (p < len) {
		uint64_t v = 0;
		size_t u;
		int i;

		if (!is_digit(s[p]))
			return bad_start(what, s, len, p, err);
		for (; p < len && is_digit(s[p]); p++) {
			v = v * 10 + (uint64_t)(s[p] - '0');
			if (v > SCHED_DURATION_MAX_MS)
				goto too_long;
		}
		if (p == len)
			return kiln_fail(err, EINVAL, "%s %s has no unit after %llu; write d, h, m, s or ms, such as %s",
					 what, q, (unsigned long long)v, DURATION_EXAMPLES);
		if (s[p] == '.' || s[p] == ',')
			return kiln_fail(err, EINVAL, "%s %s has a fraction; write whole units, such as 1h30m or 1500ms",
					 what, q);
		for (u = p; u < len && is_alpha(s[u]); u++)
			;
		if (u == p)
			return bad_start(what, s, len, p, err);
		for (i = 0; i < (int)NUNITS; i++)
			if (strlen(units[i].name) == u - p && !memcmp(s + p, units[i].name, u - p))
				break;
		if (i == (int)NUNITS)
			return kiln_fail(err, EINVAL, "%s %s has an unknown unit %s; use d, h, m, s or ms", what, q,
					 sched_quote(s + p, u - p, uq));
		if (i <= last)
			return kiln_fail(err, EINVAL,
					 "%s %s repeats a unit or puts a smaller one first; write each once, largest first, such as 1h30m",
					 what, q);
		last = i;
		if (v > SCHED_DURATION_MAX_MS / units[i].ms)
			goto too_long;
		total += v * units[i].ms;
		if (total > SCHED_DURATION_MAX_MS)
			goto too_long;
		p = u;
	}
	if (total == 0)
		return kiln_fail(err, EINVAL, "%s %s is zero; it must be above zero, such as %s", what, q,
				 DURATION_EXAMPLES);
	*ms = total;
	return 0;
too_long:
	return kiln_fail(err, EINVAL, "%s %s is too long (at most 365d)", what, q);
}

int sched_parse_duration(const char *s, uint64_t *ms, struct kiln_err *err)
{
	return sched_parse_duration_as("duration", s, strlen(s), ms, err);
}

int sched_parse_timeout_n(const char *s, size_t len, struct sched_timeout *out, struct kiln_err *err)
{
	uint64_t ms;
	int r;

	if (len == 7 && !memcmp(s, "session", 7)) {
		out->kind = SCHED_TIMEOUT_SESSION;
		out->ms = 0;
		return 0;
	}
	r = sched_parse_duration_as("timeout", s, len, &ms, err);
	if (r < 0)
		return r;
	out->kind = SCHED_TIMEOUT_DURATION;
	out->ms = ms;
	return 0;
}

int sched_parse_timeout(const char *s, struct sched_timeout *out, struct kiln_err *err)
{
	return sched_parse_timeout_n(s, strlen(s), out, err);
}

char *sched_format_duration(uint64_t ms, char *buf, size_t n)
{
	size_t o = 0;
	unsigned i;

	if (!n)
		return buf;
	buf[0] = '\0';
	if (ms == 0) {
		snprintf(buf, n, "0s");
		return buf;
	}
	for (i = 0; i < NUNITS && o < n; i++) {
		uint64_t v = ms / units[i].ms;
		int k;

		if (!v)
			continue;
		ms -= v * units[i].ms;
		k = snprintf(buf + o, n - o, "%llu%s", (unsigned long long)v, units[i].name);
		if (k < 0)
			break;
		o += (size_t)k;
	}
	return buf;
}

char *sched_format_time(uint64_t ms, char *buf, size_t n)
{
	time_t t = (time_t)(ms / 1000);
	struct tm tm;
	size_t k;

	if (!n)
		return buf;
	if (ms / 1000 > (uint64_t)253402300799ull || !gmtime_r(&t, &tm)) {
		/* Past 9999-12-31: no date a user would read; say the number. */
		snprintf(buf, n, "@%llu ms", (unsigned long long)ms);
		return buf;
	}
	k = strftime(buf, n, "%Y-%m-%dT%H:%M:%S", &tm);
	if (ms % 1000)
		snprintf(buf + k, n - k, ".%03uZ", (unsigned)(ms % 1000));
	else
		snprintf(buf + k, n - k, "Z");
	return buf;
}
