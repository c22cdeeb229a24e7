/*
 * Wakeup kicks for guests on QEMU's TCG emulator: see tcgkick.h for why.
 * A kick is a fixed, edge-triggered MSI to one vCPU's APIC id (its vCPU
 * index; cpu.c) with Linux's reschedule vector. Linux takes a reschedule
 * IPI that wakes nothing as a no-op (scheduler_ipi), counted in
 * /proc/interrupts' RES line, which is how the tests see the kicks.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include "tcgkick.h"
#include "vmm.h"

static void kick_all(struct tcg_kick *k)
{
	struct vm *vm = k->vm;

	/* Under the lock vm_pause takes: no kick lands in a paused VM's LAPICs. */
	pthread_mutex_lock(&vm->lock);
	for (int i = 0; !vm->pause_req && i < vm->nvcpus; i++) {
		struct kvm_msi msi;

		memset(&msi, 0, sizeof(msi));
		msi.address_lo = (uint32_t)GUEST_LAPIC | (uint32_t)i << 12;
		msi.data = TCG_KICK_VECTOR;	/* fixed delivery, edge */
		/* 0: the guest's LAPIC is not enabled yet (early boot); nothing to wake. */
		if (ioctl(vm->fd, KVM_SIGNAL_MSI, &msi) > 0)
			k->sent++;
	}
	pthread_mutex_unlock(&vm->lock);
}

static void *kick_thread(void *arg)
{
	struct tcg_kick *k = arg;

	pthread_setname_np(pthread_self(), "kiln-kick");
	pthread_mutex_lock(&k->lock);
	while (!k->stop && !atomic_load(&k->vm->stop)) {
		struct timespec at = deadline_after(CLOCK_MONOTONIC, (unsigned)k->period_ms);

		if (pthread_cond_timedwait(&k->cv, &k->lock, &at) != ETIMEDOUT)
			continue;
		pthread_mutex_unlock(&k->lock);
		kick_all(k);
		pthread_mutex_lock(&k->lock);
	}
	pthread_mutex_unlock(&k->lock);
	return NULL;
}

int tcg_kick_period(void)
{
	const char *e = getenv("KILN_TCG_KICK_MS");
	char *end;
	long ms;

	if (!e || !*e)
		return TCG_KICK_MS;
	ms = strtol(e, &end, 10);
	return *end || ms < 0 || ms > 10000 ? TCG_KICK_MS : (int)ms;
}

int tcg_kick_start(struct tcg_kick *k, struct vm *vm, int period_ms)
{
	pthread_condattr_t ca;
	int r;

	memset(k, 0, sizeof(*k));
	k->vm = vm;
	k->period_ms = period_ms;
	pthread_mutex_init(&k->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&k->cv, &ca);
	pthread_condattr_destroy(&ca);
	r = pthread_create(&k->thread, NULL, kick_thread, k);
	if (r)
		return -r;
	k->started = 1;
	return 0;
}

void tcg_kick_stop(struct tcg_kick *k)
{
	if (!k->started)
		return;
	pthread_mutex_lock(&k->lock);
	k->stop = 1;
	pthread_cond_signal(&k->cv);
	pthread_mutex_unlock(&k->lock);
	pthread_join(k->thread, NULL);
	k->started = 0;
	pthread_cond_destroy(&k->cv);
	pthread_mutex_destroy(&k->lock);
}
