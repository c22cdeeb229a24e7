/*
 * Admission and lifetimes (sched_core.h): arithmetic on numbers kilnd hands in,
 * with the clock injected, so every rule is a unit test.
 */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "sched_core.h"

/* ---- admission ------------------------------------------------------------- */

void sched_host_init(struct sched_host *h, uint64_t mem_total_mb, unsigned cpus)
{
	memset(h, 0, sizeof(*h));
	h->mem_total_mb = mem_total_mb;
	h->reserve_mb = mem_total_mb / 4 < 1024 ? mem_total_mb / 4 : 1024;
	h->mem_overcommit = SCHED_MEM_OVERCOMMIT_DEFAULT;
	h->vcpu_overcommit = SCHED_VCPU_OVERCOMMIT_DEFAULT;
	h->cpus = cpus;
}

int sched_host_check(const struct sched_host *h, struct kiln_err *err)
{
	if (h->cpus == 0)
		return kiln_fail(err, EINVAL, "the host has 0 CPUs");
	if (h->mem_total_mb == 0)
		return kiln_fail(err, EINVAL, "the host's MemTotal is 0 MiB");
	/* Written so that NaN fails too. */
	if (!(h->mem_overcommit > 0 && h->mem_overcommit <= SCHED_MEM_OVERCOMMIT_MAX))
		return kiln_fail(err, EINVAL, "--mem-overcommit %g is out of range (above 0, at most %g)",
				 h->mem_overcommit, SCHED_MEM_OVERCOMMIT_MAX);
	if (!(h->vcpu_overcommit > 0 && h->vcpu_overcommit <= SCHED_VCPU_OVERCOMMIT_MAX))
		return kiln_fail(err, EINVAL, "--vcpu-overcommit %g is out of range (above 0, at most %g)",
				 h->vcpu_overcommit, SCHED_VCPU_OVERCOMMIT_MAX);
	if (h->reserve_mb >= h->mem_total_mb)
		return kiln_fail(err, EINVAL,
				 "--mem-reserve %llu MiB leaves nothing of the host's %llu MiB for sandboxes",
				 (unsigned long long)h->reserve_mb, (unsigned long long)h->mem_total_mb);
	return 0;
}

uint64_t sched_capacity_mb(const struct sched_host *h)
{
	double c;

	if (sched_host_check(h, NULL) < 0)
		return 0;
	c = floor((double)(h->mem_total_mb - h->reserve_mb) * h->mem_overcommit);
	return c >= 0x1p63 ? (uint64_t)1 << 63 : (uint64_t)c;
}

unsigned sched_vcpus_limit(const struct sched_host *h)
{
	double v;

	if (sched_host_check(h, NULL) < 0)
		return 0;
	v = floor((double)h->cpus * h->vcpu_overcommit);
	if (v < 1)
		return 1;
	return v >= 0x1p31 ? 1u << 31 : (unsigned)v;
}

uint64_t sched_free_mb(const struct sched_admit *a, const struct sched_host *h)
{
	uint64_t cap = sched_capacity_mb(h);

	return a->mem_mb >= cap ? 0 : cap - a->mem_mb;
}

int sched_admit(struct sched_admit *a, const struct sched_host *h, unsigned memory_mb, unsigned vcpus,
		struct kiln_err *err)
{
	unsigned limit;
	int r;

	r = sched_host_check(h, err);
	if (r < 0)
		return r;
	if (memory_mb == 0 || vcpus == 0)
		return kiln_fail(err, EINVAL, "a sandbox needs memory and vCPUs (asked for %u MiB and %u vCPUs)",
				 memory_mb, vcpus);
	limit = sched_vcpus_limit(h);
	if (vcpus > limit)
		return kiln_fail(err, EINVAL,
				 "vcpus %u is more than this node gives one sandbox: at most %u (%u CPUs x vCPU overcommit %g; kilnd --vcpu-overcommit)",
				 vcpus, limit, h->cpus, h->vcpu_overcommit);
	if (memory_mb > sched_free_mb(a, h))
		return kiln_fail(err, ENOSPC,
				 "no room for %u MiB: %llu MiB of %llu MiB free for sandboxes (kilnd --mem-reserve, --mem-overcommit)",
				 memory_mb, (unsigned long long)sched_free_mb(a, h),
				 (unsigned long long)sched_capacity_mb(h));
	a->mem_mb += memory_mb;
	a->vcpus += vcpus;
	a->sandboxes++;
	return 0;
}

int sched_release(struct sched_admit *a, unsigned memory_mb, unsigned vcpus)
{
	if (a->sandboxes == 0 || a->mem_mb < memory_mb || a->vcpus < vcpus)
		return -EINVAL;
	a->mem_mb -= memory_mb;
	a->vcpus -= vcpus;
	a->sandboxes--;
	return 0;
}

/* ---- lifetimes ------------------------------------------------------------------ */

static uint64_t add_sat(uint64_t a, uint64_t b)
{
	return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

const char *sched_expiry_name(enum sched_expiry e)
{
	switch (e) {
	case SCHED_LIVE:
		return "live";
	case SCHED_EXPIRED_TIMEOUT:
		return "timed out";
	case SCHED_EXPIRED_SESSION:
		return "creator disconnected";
	case SCHED_EXPIRED_MAX_LIFE:
		return "maximum lifetime reached";
	}
	return "unknown";
}

int sched_life_init(struct sched_life *l, const struct sched_life_policy *p, const struct sched_timeout *t,
		    uint64_t now_ms, struct kiln_err *err)
{
	char a[32], b[32];

	if (t->kind == SCHED_TIMEOUT_DURATION) {
		if (t->ms == 0)
			return kiln_fail(err, EINVAL, "timeout 0s is zero; it must be above zero, such as 5m");
		if (p->max_life_ms && t->ms > p->max_life_ms)
			return kiln_fail(err, EINVAL,
					 "timeout %s is longer than this node's maximum lifetime of %s (kilnd --max-lifetime)",
					 sched_format_duration(t->ms, a, sizeof(a)),
					 sched_format_duration(p->max_life_ms, b, sizeof(b)));
	}
	memset(l, 0, sizeof(*l));
	l->kind = t->kind;
	l->created_ms = now_ms;
	l->max_at_ms = p->max_life_ms ? add_sat(now_ms, p->max_life_ms) : UINT64_MAX;
	if (t->kind == SCHED_TIMEOUT_DURATION)
		l->stop_at_ms = add_sat(now_ms, t->ms);
	else
		l->grace_ms = p->session_grace_ms;
	return 0;
}

/* When l ends for reason e (UINT64_MAX: never for that reason). */
static uint64_t reason_at(const struct sched_life *l, enum sched_expiry e)
{
	switch (e) {
	case SCHED_EXPIRED_TIMEOUT:
		return l->kind == SCHED_TIMEOUT_DURATION ? l->stop_at_ms : UINT64_MAX;
	case SCHED_EXPIRED_SESSION:
		return l->kind == SCHED_TIMEOUT_SESSION && l->creator_gone ? add_sat(l->gone_ms, l->grace_ms)
									   : UINT64_MAX;
	case SCHED_EXPIRED_MAX_LIFE:
		return l->max_at_ms;
	case SCHED_LIVE:
		break;
	}
	return UINT64_MAX;
}

/* Ties go to the first: a stop_at capped to the maximum lifetime reads "timed out". */
static const enum sched_expiry reasons[] = {
	SCHED_EXPIRED_TIMEOUT, SCHED_EXPIRED_SESSION, SCHED_EXPIRED_MAX_LIFE,
};

enum sched_expiry sched_life_check(const struct sched_life *l, uint64_t now_ms)
{
	enum sched_expiry best = SCHED_LIVE;
	uint64_t best_at = UINT64_MAX;
	unsigned i;

	for (i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++) {
		uint64_t at = reason_at(l, reasons[i]);

		if (at <= now_ms && (best == SCHED_LIVE || at < best_at)) {
			best = reasons[i];
			best_at = at;
		}
	}
	return best;
}

uint64_t sched_life_deadline(const struct sched_life *l)
{
	uint64_t d = UINT64_MAX;
	unsigned i;

	for (i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++) {
		uint64_t at = reason_at(l, reasons[i]);

		if (at < d)
			d = at;
	}
	return d;
}

/* The -ETIMEDOUT message for a sandbox already over at now_ms. */
static int already_over(const struct sched_life *l, uint64_t now_ms, struct kiln_err *err)
{
	enum sched_expiry e = sched_life_check(l, now_ms);
	char t[40];

	return kiln_fail(err, ETIMEDOUT, "the sandbox is already over: %s at %s", sched_expiry_name(e),
			 sched_format_time(reason_at(l, e), t, sizeof(t)));
}

int sched_life_extend_to(struct sched_life *l, uint64_t target_ms, uint64_t now_ms, struct kiln_err *err)
{
	char a[40], b[40], d[32];

	if (l->kind == SCHED_TIMEOUT_SESSION)
		return kiln_fail(err, EINVAL,
				 "a session sandbox lives while its creator is connected and has no stop_at to extend; create it with a timeout such as 5m");
	if (sched_life_check(l, now_ms) != SCHED_LIVE)
		return already_over(l, now_ms, err);
	if (target_ms <= now_ms)
		return kiln_fail(err, EINVAL, "stop_at %s is not after now (%s)%s", sched_format_time(target_ms, a, sizeof(a)),
				 sched_format_time(now_ms, b, sizeof(b)),
				 target_ms < 100000000000ull ? "; stop_at_ms counts milliseconds since the epoch, not seconds" : "");
	if (target_ms <= l->stop_at_ms)
		return 0;	/* never shortens */
	if (target_ms > l->max_at_ms) {
		l->stop_at_ms = l->max_at_ms;
		kiln_fail(err, 0, "stop_at capped at %s, this node's maximum lifetime of %s after the sandbox was created (kilnd --max-lifetime)",
			  sched_format_time(l->max_at_ms, a, sizeof(a)),
			  sched_format_duration(l->max_at_ms - l->created_ms, d, sizeof(d)));
		return SCHED_EXTEND_CAPPED;
	}
	l->stop_at_ms = target_ms;
	return 0;
}

int sched_life_extend_by(struct sched_life *l, uint64_t dur_ms, uint64_t now_ms, struct kiln_err *err)
{
	if (dur_ms == 0)
		return kiln_fail(err, EINVAL, "an extension of 0s is zero; it must be above zero, such as 10m");
	return sched_life_extend_to(l, add_sat(now_ms, dur_ms), now_ms, err);
}

void sched_life_disconnect(struct sched_life *l, uint64_t now_ms)
{
	if (l->kind != SCHED_TIMEOUT_SESSION || l->creator_gone)
		return;		/* the grace runs from the first disconnect */
	l->creator_gone = 1;
	l->gone_ms = now_ms;
}

int sched_life_reconnect(struct sched_life *l, uint64_t now_ms, struct kiln_err *err)
{
	if (sched_life_check(l, now_ms) != SCHED_LIVE)
		return already_over(l, now_ms, err);
	l->creator_gone = 0;
	l->gone_ms = 0;
	return 0;
}
