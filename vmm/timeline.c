/* The process's start-up timeline (timeline.h). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "timeline.h"

static const char *const names[] = {
	[TL_START] = "start",
	[TL_STANDBY] = "standby",
	[TL_REQUEST] = "request",
	[TL_PARSED] = "parsed",
	[TL_MAPPED] = "mapped",
	[TL_KVM] = "kvm_state",
	[TL_DEVICES] = "devices",
	[TL_PREFETCHED] = "prefetched",
	[TL_RUNNING] = "running",
	[TL_USERSPACE] = "userspace",
	[TL_AGENT_READY] = "agent_ready",
	[TL_VSOCK_RESET] = "vsock_reset",
	[TL_ACCEPT] = "accept",
};
_Static_assert(sizeof(names) / sizeof(names[0]) == TL_N, "a name for every milestone");

static struct tl_point points[TL_N], samples[TL_SAMPLES];
static void (*kvm_counters)(uint64_t v[KS_N]);
static int claimed[TL_N], done[TL_N], sample_done[TL_SAMPLES];
static unsigned nsamples;

static void take(struct tl_point *p)
{
	struct timespec ts;
	struct rusage ru;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	p->ns = (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
	if (getrusage(RUSAGE_SELF, &ru) == 0) {
		p->minflt = (uint64_t)ru.ru_minflt;
		p->majflt = (uint64_t)ru.ru_majflt;
	}
	void (*fn)(uint64_t v[KS_N]) = __atomic_load_n(&kvm_counters, __ATOMIC_ACQUIRE);

	memset(p->kvm, 0, sizeof(p->kvm));
	if (fn)
		fn(p->kvm);
}

void tl_set_kvm_counters(void (*fn)(uint64_t v[KS_N]))
{
	__atomic_store_n(&kvm_counters, fn, __ATOMIC_RELEASE);
}

void tl_mark(enum tl_mark m)
{
	if ((unsigned)m >= TL_N || __atomic_exchange_n(&claimed[m], 1, __ATOMIC_ACQ_REL))
		return;
	take(&points[m]);
	__atomic_store_n(&done[m], 1, __ATOMIC_RELEASE);
}

void tl_sample(void)
{
	unsigned i;

	if (__atomic_load_n(&nsamples, __ATOMIC_RELAXED) >= TL_SAMPLES)
		return;
	i = __atomic_fetch_add(&nsamples, 1, __ATOMIC_ACQ_REL);
	if (i >= TL_SAMPLES)
		return;
	take(&samples[i]);
	__atomic_store_n(&sample_done[i], 1, __ATOMIC_RELEASE);
}

int tl_get(enum tl_mark m, struct tl_point *p)
{
	if ((unsigned)m >= TL_N || !__atomic_load_n(&done[m], __ATOMIC_ACQUIRE))
		return 0;
	*p = points[m];
	return 1;
}

int tl_origin(struct tl_point *p)
{
	return tl_get(TL_REQUEST, p) || tl_get(TL_START, p);
}

const char *tl_name(enum tl_mark m)
{
	return (unsigned)m < TL_N ? names[m] : "?";
}

/* Append to buf (len bytes) at *n, as snprintf: *n counts what was needed. */
static void app(char *buf, size_t len, size_t *n, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void app(char *buf, size_t len, size_t *n, const char *fmt, ...)
{
	va_list ap;
	int w;

	va_start(ap, fmt);
	w = vsnprintf(*n < len ? buf + *n : NULL, *n < len ? len - *n : 0, fmt, ap);
	va_end(ap);
	if (w > 0)
		*n += (size_t)w;
}

int tl_json(char *buf, size_t len)
{
	struct tl_point t0, p;
	size_t n = 0;
	int i, k, first = 1;

	if (!tl_origin(&t0))
		memset(&t0, 0, sizeof(t0));
	app(buf, len, &n, "{\"t0_ns\":%llu,\"marks\":[", (unsigned long long)t0.ns);
	for (i = 0; i < TL_N; i++) {
		if (!tl_get((enum tl_mark)i, &p))
			continue;
		app(buf, len, &n, "%s{\"name\":\"%s\",\"ms\":%.3f,\"minflt\":%llu,\"majflt\":%llu,\"kvm\":{",
		    first ? "" : ",", names[i], (double)(int64_t)(p.ns - t0.ns) / 1e6,
		    (unsigned long long)p.minflt, (unsigned long long)p.majflt);
		for (k = 0; k < KS_N; k++)
			app(buf, len, &n, "%s\"%s\":%llu", k ? "," : "", kvm_stat_name((enum kvm_stat)k),
			    (unsigned long long)p.kvm[k]);
		app(buf, len, &n, "}}");
		first = 0;
	}
	app(buf, len, &n, "],\"samples\":[");
	for (i = 0; i < TL_SAMPLES; i++) {
		if (!__atomic_load_n(&sample_done[i], __ATOMIC_ACQUIRE))
			break;
		p = samples[i];
		app(buf, len, &n, "%s[%.3f,%llu,%llu", i ? "," : "", (double)(int64_t)(p.ns - t0.ns) / 1e6,
		    (unsigned long long)p.minflt, (unsigned long long)p.majflt);
		for (k = 0; k < KS_N; k++)
			app(buf, len, &n, ",%llu", (unsigned long long)p.kvm[k]);
		app(buf, len, &n, "]");
	}
	app(buf, len, &n, "]}");
	return (int)n;
}
