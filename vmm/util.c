/* Small helpers shared by the VMM's parts. */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vmm.h"

uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

struct timespec deadline_after(clockid_t clock, unsigned ms)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	return ts;
}

/*
 * Log lines a guest can cause. One mutex for every limiter: these lines are
 * rare when the guest behaves, and the list is walked at exit.
 */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static struct log_limit *log_limits;

int log_limit_allow(struct log_limit *l, uint64_t now, uint64_t *held)
{
	uint64_t refill;

	if (!l->started) {
		l->started = 1;
		l->tokens = LOG_LIMIT_BURST;
		l->refill_ns = now;
	}
	refill = now > l->refill_ns ? (now - l->refill_ns) / LOG_LIMIT_PERIOD_NS : 0;
	if (refill) {
		l->tokens = refill >= LOG_LIMIT_BURST - l->tokens ? LOG_LIMIT_BURST : l->tokens + (unsigned)refill;
		l->refill_ns += refill * LOG_LIMIT_PERIOD_NS;
	}
	if (!l->tokens) {
		l->suppressed++;
		return 0;
	}
	l->tokens--;
	*held = l->suppressed;
	l->suppressed = 0;
	return 1;
}

static void log_summary(const struct log_limit *l, uint64_t held)
{
	fprintf(stderr, "kiln-vmm: %s: %llu similar message%s suppressed\n", l->who,
		(unsigned long long)held, held == 1 ? "" : "s");
}

void log_guest(struct log_limit *l, const char *fmt, ...)
{
	uint64_t held = 0;
	va_list ap;

	pthread_mutex_lock(&log_lock);
	if (!l->listed) {
		l->listed = 1;
		l->next = log_limits;
		log_limits = l;
	}
	if (log_limit_allow(l, now_ns(), &held)) {
		if (held)
			log_summary(l, held);
		fputs("kiln-vmm: ", stderr);
		va_start(ap, fmt);
		vfprintf(stderr, fmt, ap);
		va_end(ap);
		fputc('\n', stderr);
	}
	pthread_mutex_unlock(&log_lock);
}

void log_flush(void)
{
	struct log_limit *l;

	pthread_mutex_lock(&log_lock);
	for (l = log_limits; l; l = l->next) {
		if (l->suppressed)
			log_summary(l, l->suppressed);
		l->suppressed = 0;
	}
	pthread_mutex_unlock(&log_lock);
}

/* A hostile string made safe for a message: at most 60 bytes, the unprintable as '?'. */
const char *str_printable(const char *str, char out[64])
{
	size_t i;

	for (i = 0; str[i] && i < 60; i++)
		out[i] = str[i] >= 0x20 && str[i] < 0x7f ? str[i] : '?';
	out[i] = '\0';
	if (str[i])
		snprintf(out + 57, 4, "...");
	return out;
}

int name_is_local(const char *n)
{
	return n[0] && !strchr(n, '/') && strcmp(n, ".") && strcmp(n, "..");
}
