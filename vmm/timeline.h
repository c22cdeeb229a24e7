/*
 * Where a VMM's start went: the first moment each milestone of a restore
 * (or a cold boot) was reached, with the process's page faults at that
 * moment, so a phase's time and the guest memory it faulted in can be told
 * apart. A kiln-vmm runs one VM, so the timeline is the process's own;
 * every thread may mark it, and the first mark of a milestone wins.
 */
#ifndef KILN_TIMELINE_H
#define KILN_TIMELINE_H

#include <stddef.h>
#include <stdint.h>

#include "kvmstats.h"

enum tl_mark {
	TL_START,		/* main() entered */
	TL_STANDBY,		/* --standby: VM made, waiting for its snapshot */
	TL_REQUEST,		/* --standby: the restore was asked for */
	TL_PARSED,		/* restore: state file read and checked */
	TL_MAPPED,		/* restore: memory file mapped */
	TL_KVM,			/* restore: VM, irqchip, clock and vCPU state applied */
	TL_DEVICES,		/* restore: devices recreated with their state */
	TL_PREFETCHED,		/* restore: the working set is in (--prefetch) */
	TL_RUNNING,		/* vCPU threads started */
	TL_USERSPACE,		/* cold boot: the guest's init reached userspace */
	TL_AGENT_READY,		/* cold boot: the agent said it is ready */
	TL_VSOCK_RESET,		/* a TRANSPORT_RESET was delivered to the guest */
	TL_ACCEPT,		/* the guest accepted its first vsock connection */
	TL_N
};

struct tl_point {
	uint64_t ns;		/* CLOCK_MONOTONIC */
	uint64_t minflt, majflt;	/* the process's page faults so far (getrusage) */
	uint64_t kvm[KS_N];	/* KVM's counters so far, all vCPUs (tl_set_kvm_counters) */
};

/*
 * Where points read KVM's counters: fn adds every vCPU's into v (kvmstats.h).
 * Without it (or before it is set) they read zeros.
 */
void tl_set_kvm_counters(void (*fn)(uint64_t v[KS_N]));

/* Record milestone m now, unless it was reached before. Any thread. */
void tl_mark(enum tl_mark m);

/*
 * Add a point to the trace of the first TL_SAMPLES guest-to-host data
 * packets (vsock), after which it does nothing: a client that knows when
 * each reply reached it finds the faults each of its requests cost in the
 * last sample before that moment. Any thread.
 */
#define TL_SAMPLES 32
void tl_sample(void);

/* Milestone m's point into p: 1 if it was reached, else 0. */
int tl_get(enum tl_mark m, struct tl_point *p);

/*
 * Where a start's clock begins: TL_REQUEST for a standby VMM (its restore
 * was asked for), else TL_START. 0 if neither was marked.
 */
int tl_origin(struct tl_point *p);

/* m's name in tl_json and -v output ("parsed", "accept", ...). */
const char *tl_name(enum tl_mark m);

/*
 * The timeline as a JSON object into buf (len bytes, NUL-terminated):
 * {"t0_ns":N,"marks":[{"name":"parsed","ms":F,"minflt":N,"majflt":N,
 *  "kvm":{"exits":N,"npf":N,...}},...], "samples":[[MS,MINFLT,MAJFLT,EXITS,NPF,...],...]}
 * (the samples' KVM counters in enum kvm_stat's order)
 * with ms counted from tl_origin (t0_ns), only the milestones reached, in order (a
 * standby VMM's "start" and "standby" before t0, so negative), and
 * the samples taken so far.
 * Returns the length it needed (as snprintf).
 */
int tl_json(char *buf, size_t len);

#endif
