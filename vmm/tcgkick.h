/*
 * Wakeup kicks for guests on QEMU's TCG emulator (host_cpu_is_tcg).
 *
 * There, the emulated SVM drops a guest's interrupt shadow at VMRUN, so a
 * vCPU can halt with its wakeup already spent (tests/nested/README.md). A
 * periodic guest tick (nohz=off) bounds the stall to one tick but costs
 * every idle vCPU about 1,200 exits a second, and several idle guests on
 * the nested host's one CPU then starve each other: six idle guests took
 * 14,000 exits a second each. Instead the guest keeps its tickless idle and
 * a thread here sends every vCPU a reschedule IPI (vector 0xfd, what
 * Linux's own CPUs send each other to wake one) every period: a spent
 * wakeup costs at most one period, and an idle guest some 80 exits a second
 * (200 each with six at once).
 * Real hardware never needs it, and kiln-vmm starts it only on TCG.
 */
#ifndef KILN_TCGKICK_H
#define KILN_TCGKICK_H

#include <pthread.h>

struct vm;

#define TCG_KICK_MS		50	/* a spent wakeup waits at most this long */
#define TCG_KICK_VECTOR		0xfd	/* Linux's RESCHEDULE_VECTOR (x86) */

struct tcg_kick {
	struct vm *vm;
	int period_ms;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cv;	/* signalled by tcg_kick_stop */
	int stop;
	int started;
	unsigned long long sent;	/* MSIs KVM accepted */
};

/*
 * The period: TCG_KICK_MS, or $KILN_TCG_KICK_MS (0 switches the kicks off,
 * to see the lost wakeups; at most 10000).
 */
int tcg_kick_period(void);

/*
 * Kick vm's vCPUs every period_ms from a thread of its own; none while the
 * VM is paused (a snapshot takes the LAPICs as the guest left them).
 * Returns 0 or -errno.
 */
int tcg_kick_start(struct tcg_kick *k, struct vm *vm, int period_ms);
/* Stop and join the thread (at once, not after a period); safe if never started. */
void tcg_kick_stop(struct tcg_kick *k);

#endif
