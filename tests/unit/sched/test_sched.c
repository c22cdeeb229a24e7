/*
 * The scheduler's core (scheduler/sched_core.h): admission, lifetimes and the
 * host's numbers here, create bodies and durations in test_sched_spec.c;
 * each rule a row in a table of inputs and the exact message a user would
 * read. No KVM, no daemon; the clock is a number, and the only files read
 * are the fixtures under fixtures/ (and the host's own, once).
 */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sched_unit.h"

#ifndef SCHED_FIXTURES
#define SCHED_FIXTURES "tests/unit/sched/fixtures"
#endif

void assert_printable(const char *msg)
{
	const unsigned char *p;

	ck_assert_msg(msg[0] != '\0', "empty message");
	for (p = (const unsigned char *)msg; *p; p++)
		ck_assert_msg(*p >= 0x20 && *p <= 0x7e, "byte 0x%02x in message: %s", *p, msg);
}

/* ---- admission --------------------------------------------------------------------- */

/* 9216 MiB less 1024 reserved: 8192 MiB for sandboxes, 4 CPUs. */
static struct sched_host host9g(void)
{
	struct sched_host h = {
		.mem_total_mb = 9216, .reserve_mb = 1024, .mem_overcommit = 1.0, .vcpu_overcommit = 2.0, .cpus = 4,
	};
	return h;
}

START_TEST(admit_fits_then_refuses)
{
	struct sched_host h = host9g();
	struct sched_admit a = { 0 };
	struct kiln_err err = { { 0 } };

	ck_assert_uint_eq(sched_capacity_mb(&h), 8192);
	ck_assert_int_eq(sched_admit(&a, &h, 4096, 2, &err), 0);
	ck_assert_int_eq(sched_admit(&a, &h, 2560, 4, &err), 0);
	ck_assert_uint_eq(a.mem_mb, 6656);
	ck_assert_uint_eq(a.vcpus, 6);
	ck_assert_uint_eq(a.sandboxes, 2);
	ck_assert_uint_eq(sched_free_mb(&a, &h), 1536);
	ck_assert_int_eq(sched_admit(&a, &h, 2048, 2, &err), -ENOSPC);
	ck_assert_str_eq(err.msg,
			 "no room for 2048 MiB: 1536 MiB of 8192 MiB free for sandboxes (kilnd --mem-reserve, --mem-overcommit)");
	/* Refused: nothing changed. */
	ck_assert_uint_eq(a.mem_mb, 6656);
	ck_assert_uint_eq(a.sandboxes, 2);
	/* It fits exactly once the first is released. */
	ck_assert_int_eq(sched_release(&a, 4096, 2), 0);
	ck_assert_int_eq(sched_admit(&a, &h, 2048, 2, &err), 0);
	ck_assert_int_eq(sched_admit(&a, &h, 3584, 2, &err), 0);
	ck_assert_uint_eq(sched_free_mb(&a, &h), 0);
	ck_assert_int_eq(sched_admit(&a, &h, 768, 1, &err), -ENOSPC);
	ck_assert_str_eq(err.msg,
			 "no room for 768 MiB: 0 MiB of 8192 MiB free for sandboxes (kilnd --mem-reserve, --mem-overcommit)");
}
END_TEST

START_TEST(admit_overcommit)
{
	struct sched_host h = { .mem_total_mb = 4096, .reserve_mb = 1024, .mem_overcommit = 1.5,
				.vcpu_overcommit = 1.0, .cpus = 2 };
	struct sched_admit a = { 0 };
	struct kiln_err err = { { 0 } };

	ck_assert_uint_eq(sched_capacity_mb(&h), 4608);
	ck_assert_int_eq(sched_admit(&a, &h, 4096, 2, &err), 0);
	ck_assert_int_eq(sched_admit(&a, &h, 768, 1, &err), -ENOSPC);
	ck_assert_str_eq(err.msg,
			 "no room for 768 MiB: 512 MiB of 4608 MiB free for sandboxes (kilnd --mem-reserve, --mem-overcommit)");
	/* A fraction of a MiB is floored. */
	h.mem_overcommit = 1.0001;
	ck_assert_uint_eq(sched_capacity_mb(&h), 3072);
	/* Memory overcommit below 1 leaves room unused. */
	h.mem_overcommit = 0.5;
	ck_assert_uint_eq(sched_capacity_mb(&h), 1536);
	ck_assert_uint_eq(sched_free_mb(&a, &h), 0);
}
END_TEST

START_TEST(admit_vcpus)
{
	struct sched_host h = { .mem_total_mb = 8192, .reserve_mb = 512, .mem_overcommit = 1.0,
				.vcpu_overcommit = 2.0, .cpus = 1 };
	struct sched_admit a = { 0 };
	struct kiln_err err = { { 0 } };

	/* The default sandbox (2 vCPUs) runs on a 1-CPU host with the default ratio. */
	ck_assert_uint_eq(sched_vcpus_limit(&h), 2);
	ck_assert_int_eq(sched_admit(&a, &h, 1280, 2, &err), 0);
	ck_assert_int_eq(sched_admit(&a, &h, 1280, 3, &err), -EINVAL);
	ck_assert_str_eq(err.msg,
			 "vcpus 3 is more than this node gives one sandbox: at most 2 (1 CPUs x vCPU overcommit 2; kilnd --vcpu-overcommit)");
	ck_assert_uint_eq(a.sandboxes, 1);
	/* vCPUs are not a shared pool: many 2-vCPU sandboxes fit one CPU. */
	ck_assert_int_eq(sched_admit(&a, &h, 1280, 2, &err), 0);
	ck_assert_int_eq(sched_admit(&a, &h, 1280, 2, &err), 0);
	ck_assert_uint_eq(a.vcpus, 6);
	/* The limit is floored but never below 1. */
	h.vcpu_overcommit = 0.5;
	ck_assert_uint_eq(sched_vcpus_limit(&h), 1);
	h.cpus = 3;
	h.vcpu_overcommit = 1.5;
	ck_assert_uint_eq(sched_vcpus_limit(&h), 4);
	ck_assert_int_eq(sched_admit(&a, &h, 1280, 0, &err), -EINVAL);
	ck_assert_str_eq(err.msg, "a sandbox needs memory and vCPUs (asked for 1280 MiB and 0 vCPUs)");
}
END_TEST

START_TEST(admit_bad_host)
{
	static const struct {
		struct sched_host h;
		const char *msg;
	} rows[] = {
		{ { 9216, 1024, 0.0, 2.0, 4 }, "--mem-overcommit 0 is out of range (above 0, at most 16)" },
		{ { 9216, 1024, -1.0, 2.0, 4 }, "--mem-overcommit -1 is out of range (above 0, at most 16)" },
		{ { 9216, 1024, 17.0, 2.0, 4 }, "--mem-overcommit 17 is out of range (above 0, at most 16)" },
		{ { 9216, 1024, NAN, 2.0, 4 }, "--mem-overcommit nan is out of range (above 0, at most 16)" },
		{ { 9216, 1024, 1.0, 0.0, 4 }, "--vcpu-overcommit 0 is out of range (above 0, at most 64)" },
		{ { 9216, 1024, 1.0, INFINITY, 4 }, "--vcpu-overcommit inf is out of range (above 0, at most 64)" },
		{ { 9216, 9216, 1.0, 2.0, 4 }, "--mem-reserve 9216 MiB leaves nothing of the host's 9216 MiB for sandboxes" },
		{ { 1024, 2048, 1.0, 2.0, 4 }, "--mem-reserve 2048 MiB leaves nothing of the host's 1024 MiB for sandboxes" },
		{ { 9216, 1024, 1.0, 2.0, 0 }, "the host has 0 CPUs" },
		{ { 0, 0, 1.0, 2.0, 4 }, "the host's MemTotal is 0 MiB" },
	};
	struct sched_admit a = { 0 };
	struct kiln_err err = { { 0 } };
	int i;

	for (i = 0; i < ROWS(rows); i++) {
		ck_assert_int_eq(sched_host_check(&rows[i].h, &err), -EINVAL);
		ck_assert_str_eq(err.msg, rows[i].msg);
		ck_assert_int_eq(sched_admit(&a, &rows[i].h, 1024, 1, &err), -EINVAL);
		ck_assert_str_eq(err.msg, rows[i].msg);
		ck_assert_uint_eq(sched_capacity_mb(&rows[i].h), 0);
		ck_assert_uint_eq(sched_vcpus_limit(&rows[i].h), 0);
	}
	ck_assert_uint_eq(a.sandboxes, 0);
}
END_TEST

START_TEST(admit_release)
{
	struct sched_host h = host9g();
	struct sched_admit a = { 0 };

	ck_assert_int_eq(sched_release(&a, 0, 0), -EINVAL);
	ck_assert_int_eq(sched_admit(&a, &h, 1024, 2, NULL), 0);
	ck_assert_int_eq(sched_release(&a, 2048, 2), -EINVAL);
	ck_assert_int_eq(sched_release(&a, 1024, 3), -EINVAL);
	ck_assert_uint_eq(a.mem_mb, 1024);
	ck_assert_uint_eq(a.vcpus, 2);
	ck_assert_int_eq(sched_release(&a, 1024, 2), 0);
	ck_assert_uint_eq(a.mem_mb, 0);
	ck_assert_uint_eq(a.sandboxes, 0);
	ck_assert_int_eq(sched_release(&a, 1024, 2), -EINVAL);
}
END_TEST

START_TEST(host_defaults)
{
	struct sched_host h;

	sched_host_init(&h, 16384, 8);
	ck_assert_uint_eq(h.reserve_mb, 1024);
	ck_assert(h.mem_overcommit == 1.0);
	ck_assert(h.vcpu_overcommit == 2.0);
	ck_assert_uint_eq(sched_capacity_mb(&h), 15360);
	ck_assert_uint_eq(sched_vcpus_limit(&h), 16);
	sched_host_init(&h, 2048, 1);
	ck_assert_uint_eq(h.reserve_mb, 512);
	ck_assert_int_eq(sched_host_check(&h, NULL), 0);
	ck_assert_uint_eq(sched_capacity_mb(&h), 1536);
}
END_TEST

/* ---- lifetimes ----------------------------------------------------------------------- */

static const struct sched_life_policy policy = { .max_life_ms = DAY, .session_grace_ms = 10 * SEC };

static struct sched_life life_for(const char *timeout, uint64_t now)
{
	struct kiln_err err = { { 0 } };
	struct sched_timeout t;
	struct sched_life l;

	ck_assert_msg(sched_parse_timeout(timeout, &t, &err) == 0, "%s", err.msg);
	ck_assert_msg(sched_life_init(&l, &policy, &t, now, &err) == 0, "%s", err.msg);
	return l;
}

START_TEST(life_duration)
{
	struct sched_life l = life_for("5m", NOW);

	ck_assert_uint_eq(l.created_ms, NOW);
	ck_assert_uint_eq(l.stop_at_ms, NOW + 5 * MIN);
	ck_assert_uint_eq(l.max_at_ms, NOW + DAY);
	ck_assert_uint_eq(sched_life_deadline(&l), NOW + 5 * MIN);
	ck_assert_int_eq(sched_life_check(&l, NOW), SCHED_LIVE);
	ck_assert_int_eq(sched_life_check(&l, NOW + 5 * MIN - 1), SCHED_LIVE);
	ck_assert_int_eq(sched_life_check(&l, NOW + 5 * MIN), SCHED_EXPIRED_TIMEOUT);
	ck_assert_int_eq(sched_life_check(&l, NOW + 2 * DAY), SCHED_EXPIRED_TIMEOUT);
	/* Disconnects do not matter to a duration sandbox. */
	sched_life_disconnect(&l, NOW + SEC);
	ck_assert_int_eq(l.creator_gone, 0);
	ck_assert_int_eq(sched_life_check(&l, NOW + 4 * MIN), SCHED_LIVE);
	ck_assert_int_eq(sched_life_reconnect(&l, NOW + 4 * MIN, NULL), 0);
}
END_TEST

START_TEST(life_init_limits)
{
	struct sched_timeout t = { SCHED_TIMEOUT_DURATION, 2 * DAY };
	struct sched_life_policy none = { 0, 5 * SEC };
	struct kiln_err err = { { 0 } };
	struct sched_life l;

	ck_assert_int_eq(sched_life_init(&l, &policy, &t, NOW, &err), -EINVAL);
	ck_assert_str_eq(err.msg, "timeout 2d is longer than this node's maximum lifetime of 1d (kilnd --max-lifetime)");
	t.ms = UINT64_MAX;	/* not from the parser, but still said in full */
	ck_assert_int_eq(sched_life_init(&l, &policy, &t, NOW, &err), -EINVAL);
	ck_assert_str_eq(err.msg,
			 "timeout 213503982334d14h25m51s615ms is longer than this node's maximum lifetime of 1d (kilnd --max-lifetime)");
	t.ms = DAY;
	ck_assert_int_eq(sched_life_init(&l, &policy, &t, NOW, &err), 0);
	ck_assert_uint_eq(l.stop_at_ms, l.max_at_ms);
	/* Reaching a stop_at that equals the cap reads "timed out". */
	ck_assert_int_eq(sched_life_check(&l, NOW + DAY), SCHED_EXPIRED_TIMEOUT);
	t.ms = 0;
	ck_assert_int_eq(sched_life_init(&l, &policy, &t, NOW, &err), -EINVAL);
	ck_assert_str_eq(err.msg, "timeout 0s is zero; it must be above zero, such as 5m");
	/* No maximum lifetime: 365 days is fine and nothing caps it. */
	t.ms = SCHED_DURATION_MAX_MS;
	ck_assert_int_eq(sched_life_init(&l, &none, &t, NOW, &err), 0);
	ck_assert_uint_eq(l.max_at_ms, UINT64_MAX);
	ck_assert_uint_eq(sched_life_deadline(&l), NOW + SCHED_DURATION_MAX_MS);
	/* Times near the end of the clock saturate rather than wrap. */
	ck_assert_int_eq(sched_life_init(&l, &policy, &t, UINT64_MAX - 5, &err), -EINVAL);
	t.ms = HOUR;
	ck_assert_int_eq(sched_life_init(&l, &policy, &t, UINT64_MAX - 5, &err), 0);
	ck_assert_uint_eq(l.stop_at_ms, UINT64_MAX);
	ck_assert_uint_eq(l.max_at_ms, UINT64_MAX);
}
END_TEST

START_TEST(life_extend)
{
	struct sched_life l = life_for("5m", NOW);
	struct kiln_err err = { { 0 } };

	/* An absolute target later than stop_at moves it. */
	ck_assert_int_eq(sched_life_extend_to(&l, NOW + 10 * MIN, NOW + MIN, &err), 0);
	ck_assert_uint_eq(l.stop_at_ms, NOW + 10 * MIN);
	/* An earlier one leaves it: extend never shortens. */
	ck_assert_int_eq(sched_life_extend_to(&l, NOW + 7 * MIN, NOW + MIN, &err), 0);
	ck_assert_uint_eq(l.stop_at_ms, NOW + 10 * MIN);
	ck_assert_int_eq(sched_life_extend_by(&l, MIN, NOW + 2 * MIN, &err), 0);
	ck_assert_uint_eq(l.stop_at_ms, NOW + 10 * MIN);
	/* A duration counts from now, not from stop_at. */
	ck_assert_int_eq(sched_life_extend_by(&l, 30 * MIN, NOW + 2 * MIN, &err), 0);
	ck_assert_uint_eq(l.stop_at_ms, NOW + 32 * MIN);
	ck_assert_uint_eq(sched_life_deadline(&l), NOW + 32 * MIN);
	ck_assert_int_eq(sched_life_check(&l, NOW + 31 * MIN), SCHED_LIVE);
	/* A target not after now is refused; in seconds, the message says so. */
	ck_assert_int_eq(sched_life_extend_to(&l, NOW + 3 * MIN, NOW + 3 * MIN, &err), -EINVAL);
	ck_assert_str_eq(err.msg, "stop_at 2027-01-15T08:03:00Z is not after now (2027-01-15T08:03:00Z)");
	ck_assert_int_eq(sched_life_extend_to(&l, NOW / 1000 + 600, NOW + 3 * MIN, &err), -EINVAL);
	ck_assert_str_eq(err.msg,
			 "stop_at 1970-01-21T20:00:00.600Z is not after now (2027-01-15T08:03:00Z); stop_at_ms counts milliseconds since the epoch, not seconds");
	ck_assert_uint_eq(l.stop_at_ms, NOW + 32 * MIN);
	ck_assert_int_eq(sched_life_extend_by(&l, 0, NOW + 3 * MIN, &err), -EINVAL);
	ck_assert_str_eq(err.msg, "an extension of 0s is zero; it must be above zero, such as 10m");
	/* Past the maximum lifetime: capped, and said. */
	ck_assert_int_eq(sched_life_extend_by(&l, 2 * DAY, NOW + 10 * MIN, &err), SCHED_EXTEND_CAPPED);
	ck_assert_uint_eq(l.stop_at_ms, NOW + DAY);
	ck_assert_str_eq(err.msg,
			 "stop_at capped at 2027-01-16T08:00:00Z, this node's maximum lifetime of 1d after the sandbox was created (kilnd --max-lifetime)");
	ck_assert_int_eq(sched_life_extend_to(&l, UINT64_MAX, NOW + HOUR, &err), SCHED_EXTEND_CAPPED);
	ck_assert_int_eq(sched_life_extend_to(&l, NOW + 2 * HOUR, NOW + HOUR, &err), 0);
	ck_assert_uint_eq(l.stop_at_ms, NOW + DAY);
	ck_assert_int_eq(sched_life_check(&l, NOW + DAY), SCHED_EXPIRED_TIMEOUT);
	/* Once over, too late. */
	ck_assert_int_eq(sched_life_extend_by(&l, MIN, NOW + DAY, &err), -ETIMEDOUT);
	ck_assert_str_eq(err.msg, "the sandbox is already over: timed out at 2027-01-16T08:00:00Z");
}
END_TEST

START_TEST(life_extend_expired)
{
	struct sched_life l = life_for("30s", NOW);
	struct kiln_err err = { { 0 } };

	ck_assert_int_eq(sched_life_extend_to(&l, NOW + HOUR, NOW + 30 * SEC, &err), -ETIMEDOUT);
	ck_assert_str_eq(err.msg, "the sandbox is already over: timed out at 2027-01-15T08:00:30Z");
	ck_assert_uint_eq(l.stop_at_ms, NOW + 30 * SEC);
	ck_assert_int_eq(sched_life_reconnect(&l, NOW + 31 * SEC, &err), -ETIMEDOUT);
}
END_TEST

START_TEST(life_session)
{
	struct sched_life l = life_for("session", NOW);
	struct kiln_err err = { { 0 } };

	ck_assert_int_eq(l.kind, SCHED_TIMEOUT_SESSION);
	ck_assert_uint_eq(l.grace_ms, 10 * SEC);
	/* While the creator is connected only the maximum lifetime bounds it. */
	ck_assert_uint_eq(sched_life_deadline(&l), NOW + DAY);
	ck_assert_int_eq(sched_life_check(&l, NOW + DAY - 1), SCHED_LIVE);
	ck_assert_int_eq(sched_life_check(&l, NOW + DAY), SCHED_EXPIRED_MAX_LIFE);
	/* The creator leaves: over after the grace unless it returns. */
	sched_life_disconnect(&l, NOW + HOUR);
	ck_assert_uint_eq(sched_life_deadline(&l), NOW + HOUR + 10 * SEC);
	ck_assert_int_eq(sched_life_check(&l, NOW + HOUR + 10 * SEC - 1), SCHED_LIVE);
	ck_assert_int_eq(sched_life_check(&l, NOW + HOUR + 10 * SEC), SCHED_EXPIRED_SESSION);
	/* A second disconnect does not restart the grace. */
	sched_life_disconnect(&l, NOW + HOUR + 5 * SEC);
	ck_assert_uint_eq(sched_life_deadline(&l), NOW + HOUR + 10 * SEC);
	/* Back in time: the grace is cancelled. */
	ck_assert_int_eq(sched_life_reconnect(&l, NOW + HOUR + 9 * SEC, &err), 0);
	ck_assert_uint_eq(sched_life_deadline(&l), NOW + DAY);
	ck_assert_int_eq(sched_life_check(&l, NOW + 2 * HOUR), SCHED_LIVE);
	/* Too late: the sandbox is over. */
	sched_life_disconnect(&l, NOW + 2 * HOUR);
	ck_assert_int_eq(sched_life_reconnect(&l, NOW + 2 * HOUR + 10 * SEC, &err), -ETIMEDOUT);
	ck_assert_str_eq(err.msg, "the sandbox is already over: creator disconnected at 2027-01-15T10:00:10Z");
	ck_assert_int_eq(l.creator_gone, 1);
	/* Session sandboxes have no stop_at to extend. */
	ck_assert_int_eq(sched_life_extend_by(&l, MIN, NOW + 2 * HOUR, &err), -EINVAL);
	ck_assert_str_eq(err.msg,
			 "a session sandbox lives while its creator is connected and has no stop_at to extend; create it with a timeout such as 5m");
}
END_TEST

START_TEST(life_session_grace_past_cap)
{
	struct sched_life l = life_for("session", NOW);

	/* Disconnected just before the cap: the cap comes first, and says so. */
	sched_life_disconnect(&l, NOW + DAY - SEC);
	ck_assert_uint_eq(sched_life_deadline(&l), NOW + DAY);
	ck_assert_int_eq(sched_life_check(&l, NOW + DAY + 20 * SEC), SCHED_EXPIRED_MAX_LIFE);
	/* Disconnected earlier: the grace ends first. */
	l = life_for("session", NOW);
	sched_life_disconnect(&l, NOW);
	ck_assert_int_eq(sched_life_check(&l, NOW + 2 * DAY), SCHED_EXPIRED_SESSION);
	/* Zero grace: over the moment the creator leaves. */
	l.grace_ms = 0;
	l.creator_gone = 0;
	sched_life_disconnect(&l, NOW + MIN);
	ck_assert_int_eq(sched_life_check(&l, NOW + MIN), SCHED_EXPIRED_SESSION);
}
END_TEST

START_TEST(life_names)
{
	ck_assert_str_eq(sched_expiry_name(SCHED_LIVE), "live");
	ck_assert_str_eq(sched_expiry_name(SCHED_EXPIRED_TIMEOUT), "timed out");
	ck_assert_str_eq(sched_expiry_name(SCHED_EXPIRED_SESSION), "creator disconnected");
	ck_assert_str_eq(sched_expiry_name(SCHED_EXPIRED_MAX_LIFE), "maximum lifetime reached");
	ck_assert_str_eq(sched_expiry_name((enum sched_expiry)99), "unknown");
}
END_TEST

/* ---- the host --------------------------------------------------------------------------- */

START_TEST(host_meminfo)
{
	static const struct {
		const char *text;
		int ret;
		uint64_t mb;
		const char *msg;
	} rows[] = {
		{ "MemTotal:       16303016 kB\nMemFree: 1 kB\n", 0, 15920, NULL },
		{ "MemFree:  1024 kB\nMemTotal:\t2097152 kB", 0, 2048, NULL },
		{ "MemTotal: 1024 kB\n", 0, 1, NULL },
		{ "MemTotalX: 2048 kB\n", -EINVAL, 0, "no MemTotal line" },
		{ "", -EINVAL, 0, "no MemTotal line" },
		{ "MemTotal: 1023 kB\n", -EINVAL, 0, "MemTotal of 1023 kB is below 1 MiB" },
		{ "MemTotal: 2048 MB\n", -EINVAL, 0, "the MemTotal line \"MemTotal: 2048 MB\" is not \"MemTotal: <number> kB\"" },
		{ "MemTotal: abc kB\n", -EINVAL, 0, "the MemTotal line \"MemTotal: abc kB\" is not \"MemTotal: <number> kB\"" },
		{ "MemTotal: 2048\n", -EINVAL, 0, "the MemTotal line \"MemTotal: 2048\" is not \"MemTotal: <number> kB\"" },
		{ "MemTotal: 2048 kB x\n", -EINVAL, 0,
		  "the MemTotal line \"MemTotal: 2048 kB x\" is not \"MemTotal: <number> kB\"" },
		{ "MemTotal: 99999999999999999999 kB\n", -EINVAL, 0,
		  "the MemTotal line \"MemTotal: 99999999999999999999 kB\" is not \"MemTotal: <number> kB\"" },
	};
	struct kiln_err err = { { 0 } };
	uint64_t mb;
	int i;

	for (i = 0; i < ROWS(rows); i++) {
		mb = 0;
		ck_assert_int_eq(sched_parse_meminfo(rows[i].text, strlen(rows[i].text), &mb, &err), rows[i].ret);
		if (rows[i].ret == 0)
			ck_assert_uint_eq(mb, rows[i].mb);
		else
			ck_assert_str_eq(err.msg, rows[i].msg);
	}
}
END_TEST

START_TEST(host_cpulist)
{
	static const struct {
		const char *text;
		int ret;
		unsigned cpus;
	} rows[] = {
		{ "0\n", 0, 1 }, { "0-3", 0, 4 }, { "0-3,6,8-11\n", 0, 9 }, { "1,3,5", 0, 3 },
		{ "0-65535", 0, 65536 },
		{ "", -EINVAL, 0 }, { "\n", -EINVAL, 0 }, { "3-1", -EINVAL, 0 }, { "0-3,2", -EINVAL, 0 },
		{ "0-3,3", -EINVAL, 0 }, { "0,,1", -EINVAL, 0 }, { "0-", -EINVAL, 0 }, { "0,", -EINVAL, 0 },
		{ "a", -EINVAL, 0 }, { "0-65536", -EINVAL, 0 }, { " 0", -EINVAL, 0 }, { "0\n\n", -EINVAL, 0 },
		{ "99999999999999999999", -EINVAL, 0 }, { "0--1", -EINVAL, 0 },
	};
	struct kiln_err err = { { 0 } };
	unsigned cpus;
	int i;

	for (i = 0; i < ROWS(rows); i++) {
		cpus = 0;
		ck_assert_msg(sched_parse_cpulist(rows[i].text, strlen(rows[i].text), &cpus, &err) == rows[i].ret,
			      "%s", rows[i].text);
		if (rows[i].ret == 0)
			ck_assert_uint_eq(cpus, rows[i].cpus);
		else
			assert_printable(err.msg);
	}
	ck_assert_int_eq(sched_parse_cpulist("0-3,2", 5, &cpus, &err), -EINVAL);
	ck_assert_str_eq(err.msg, "the CPU list \"0-3,2\" is not ascending ranges such as \"0-3,6,8-11\"");
	ck_assert_int_eq(sched_parse_cpulist("\n", 1, &cpus, &err), -EINVAL);
	ck_assert_str_eq(err.msg, "the CPU list is empty");
}
END_TEST

START_TEST(host_probe_fixtures)
{
	struct kiln_err err = { { 0 } };
	uint64_t mb = 0;
	unsigned cpus = 0;

	ck_assert_msg(sched_host_probe(SCHED_FIXTURES "/meminfo", SCHED_FIXTURES "/cpu-online", &mb, &cpus, &err) == 0,
		      "%s", err.msg);
	ck_assert_uint_eq(mb, 15920);		/* 16303016 kB */
	ck_assert_uint_eq(cpus, 6);		/* 0-3,6-7 */
	ck_assert_int_eq(sched_host_probe(SCHED_FIXTURES "/meminfo-no-total", SCHED_FIXTURES "/cpu-online", &mb,
					  &cpus, &err), -EINVAL);
	ck_assert_str_eq(err.msg, SCHED_FIXTURES "/meminfo-no-total: no MemTotal line");
	ck_assert_int_eq(sched_host_probe(SCHED_FIXTURES "/meminfo", SCHED_FIXTURES "/meminfo", &mb, &cpus, &err),
			 -EINVAL);
	ck_assert_uint_eq(strncmp(err.msg, SCHED_FIXTURES "/meminfo: the CPU list \"MemTotal:",
				  strlen(SCHED_FIXTURES "/meminfo: the CPU list \"MemTotal:")), 0);
	ck_assert_int_eq(sched_host_probe(SCHED_FIXTURES "/absent", NULL, &mb, &cpus, &err), -ENOENT);
	ck_assert_str_eq(err.msg, SCHED_FIXTURES "/absent: No such file or directory");
	ck_assert_int_eq(sched_host_probe(SCHED_FIXTURES, NULL, &mb, &cpus, &err), -EISDIR);
	ck_assert_str_eq(err.msg, SCHED_FIXTURES ": Is a directory");
	/* A file that never ends is cut at 64 KiB and refused. */
	ck_assert_int_eq(sched_host_probe("/dev/zero", NULL, &mb, &cpus, &err), -EFBIG);
	ck_assert_str_eq(err.msg, "/dev/zero: more than 65536 bytes; is it the right file?");
	/* The real host's files (the daemon's defaults) read too. */
	ck_assert_msg(sched_host_probe(NULL, NULL, &mb, &cpus, &err) == 0, "%s", err.msg);
	ck_assert_uint_gt(mb, 0);
	ck_assert_uint_gt(cpus, 0);
}
END_TEST

static Suite *suite_sched(void)
{
	Suite *s = suite_create("sched");
	TCase *tc;

	suite_add_tcase(s, tcase_sched_spec());
	suite_add_tcase(s, tcase_sched_duration());
	suite_add_tcase(s, tcase_sched_net());

	tc = tcase_create("admission");
	tcase_add_test(tc, admit_fits_then_refuses);
	tcase_add_test(tc, admit_overcommit);
	tcase_add_test(tc, admit_vcpus);
	tcase_add_test(tc, admit_bad_host);
	tcase_add_test(tc, admit_release);
	tcase_add_test(tc, host_defaults);
	suite_add_tcase(s, tc);

	tc = tcase_create("lifetime");
	tcase_add_test(tc, life_duration);
	tcase_add_test(tc, life_init_limits);
	tcase_add_test(tc, life_extend);
	tcase_add_test(tc, life_extend_expired);
	tcase_add_test(tc, life_session);
	tcase_add_test(tc, life_session_grace_past_cap);
	tcase_add_test(tc, life_names);
	suite_add_tcase(s, tc);

	tc = tcase_create("host");
	tcase_add_test(tc, host_meminfo);
	tcase_add_test(tc, host_cpulist);
	tcase_add_test(tc, host_probe_fixtures);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(suite_sched());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
