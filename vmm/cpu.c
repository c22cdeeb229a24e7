/*
 * vCPUs: CPUID, MSRs, FPU and LAPIC set-up, the entry state for the PVH and
 * 64-bit boot protocols, and the KVM_RUN loop (exit handling is exit.c's).
 */
#include <cpuid.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vmm.h"

#define BOOT_STACK		0x8ff0ULL
#define SEL_CODE		0x10
#define SEL_DATA		0x18
#define SEL_TSS			0x20

#define CR0_PE			(1ULL << 0)
#define CR0_ET			(1ULL << 4)
#define CR0_PG			(1ULL << 31)
#define CR4_PAE			(1ULL << 5)
#define EFER_LME		(1ULL << 8)
#define EFER_LMA		(1ULL << 10)

#define APIC_LVT0		0x350
#define APIC_LVT1		0x360
#define APIC_MODE_NMI		4
#define APIC_MODE_EXTINT	7

static int order_base_2(int n)
{
	int s = 0;

	while ((1 << s) < n)
		s++;
	return s;
}

void cpuid_filter(struct kvm_cpuid2 *cpuid, int id, int nvcpus)
{
	uint32_t i;

	for (i = 0; i < cpuid->nent; i++) {
		struct kvm_cpuid_entry2 *e = &cpuid->entries[i];

		switch (e->function) {
		case 0x1:
			/* Initial APIC id, logical processor count, hypervisor present. */
			e->ebx = (e->ebx & 0x0000ffffu) | (uint32_t)id << 24 | (uint32_t)nvcpus << 16;
			e->ecx |= 1u << 31;
			if (nvcpus > 1)
				e->edx |= 1u << 28;	/* HTT: the count above is valid */
			break;
		case 0x4:
			/* Cores per package, for Intel's deterministic cache leaf. */
			if (e->eax & 0x1f)
				e->eax = (e->eax & 0x03ffffffu) | (uint32_t)(nvcpus - 1) << 26;
			break;
		case 0xa:
			/* No virtual PMU: the guest must not program counters. */
			e->eax = e->ebx = e->ecx = e->edx = 0;
			break;
		case 0xb:
		case 0x1f:
			/* x2APIC topology: one thread per core, nvcpus cores. */
			e->edx = (uint32_t)id;
			if (e->index == 0) {
				e->eax = 0;
				e->ebx = 1;
				e->ecx = 1u << 8;
			} else if (e->index == 1) {
				e->eax = (uint32_t)order_base_2(nvcpus);
				e->ebx = (uint32_t)nvcpus;
				e->ecx = 2u << 8 | 1;
			} else {
				e->eax = e->ebx = 0;
				e->ecx = e->index;
			}
			break;
		case 0x80000008:
			/* AMD: number of cores - 1. */
			e->ecx = (e->ecx & ~0xffu) | (uint32_t)(nvcpus - 1);
			break;
		case 0x8000001e:
			/* AMD extended APIC id and core id. */
			e->eax = (uint32_t)id;
			e->ebx = (e->ebx & ~0xffu) | (uint32_t)id;
			break;
		}
	}
}

/*
 * KVM emulates the TSC-deadline mode of the LAPIC timer but leaves its CPUID
 * bit (leaf 1, ECX bit 24) for the VMM to set once KVM_CAP_TSC_DEADLINE_TIMER
 * says so, as QEMU and Firecracker do. Without it Linux falls back to the
 * one-shot mode: it calibrates the emulated bus clock at boot (100 ms of
 * polling) and programs its timers as counts of it. In deadline mode it
 * programs TSC values, whose rate kvm-clock already gave it.
 */
void cpuid_set_tsc_deadline(struct kvm_cpuid2 *cpuid)
{
	uint32_t i;

	for (i = 0; i < cpuid->nent; i++)
		if (cpuid->entries[i].function == 0x1)
			cpuid->entries[i].ecx |= 1u << 24;
}

/*
 * Whether this host's CPU is QEMU's TCG emulator (its hypervisor leaf says
 * "TCGTCGTCGTCG"), as in the nested KVM host kiln's tests boot on machines
 * without /dev/kvm. The emulated SVM there (QEMU 7.2) saves a guest's
 * interrupt shadow at #VMEXIT but does not restore it at VMRUN, so an exit
 * that lands between the guest idle loop's STI and HLT lets KVM deliver the
 * wakeup interrupt before the HLT: the handler runs, the vCPU then halts
 * with a task waiting, and with its tick stopped nothing wakes it again.
 */
int host_cpu_is_tcg(void)
{
	unsigned int a, b, c, d;
	char sig[12];

	__cpuid(1, a, b, c, d);
	if (!(c & (1u << 31)))
		return 0;
	__cpuid(0x40000000, a, b, c, d);
	memcpy(sig, &b, 4);
	memcpy(sig + 4, &c, 4);
	memcpy(sig + 8, &d, 4);
	return memcmp(sig, "TCGTCGTCGTCG", 12) == 0;
}

int host_cpu_has_virt(void)
{
	unsigned int a, b, c, d;

	__cpuid(1, a, b, c, d);
	if (c & (1u << 5))			/* VMX */
		return 1;
	__cpuid(0x80000000, a, b, c, d);
	if (a < 0x80000001)
		return 0;
	__cpuid(0x80000001, a, b, c, d);
	return !!(c & (1u << 2));		/* SVM */
}

static int set_cpuid(struct vcpu *v, struct kiln_err *err)
{
	const struct kvm_cpuid2 *sup = v->vm->cpuid;
	size_t sz = sizeof(*sup) + sup->nent * sizeof(sup->entries[0]);
	struct kvm_cpuid2 *c = malloc(sz);
	int r;

	if (!c)
		return kiln_fail(err, ENOMEM, "out of memory");
	memcpy(c, sup, sz);
	cpuid_filter(c, v->id, v->vm->nvcpus);
	r = VCPU_IOCTL(v, KVM_SET_CPUID2, c, err);
	free(c);
	return r;
}

static int set_msrs(struct vcpu *v, struct kiln_err *err)
{
	static const struct { uint32_t index; uint64_t data; } boot_msrs[] = {
		{ 0x174, 0 },			/* IA32_SYSENTER_CS */
		{ 0x175, 0 },			/* IA32_SYSENTER_ESP */
		{ 0x176, 0 },			/* IA32_SYSENTER_EIP */
		{ 0xc0000081, 0 },		/* STAR */
		{ 0xc0000082, 0 },		/* LSTAR */
		{ 0xc0000083, 0 },		/* CSTAR */
		{ 0xc0000084, 0 },		/* SYSCALL_MASK */
		{ 0xc0000102, 0 },		/* KERNEL_GS_BASE */
		{ 0x10, 0 },			/* IA32_TSC */
		{ 0x1a0, 1 },			/* IA32_MISC_ENABLE: fast strings */
		{ 0x2ff, (1 << 11) | 6 },	/* MTRRdefType: enabled, write-back */
	};
	enum { N = sizeof(boot_msrs) / sizeof(boot_msrs[0]) };
	_Alignas(struct kvm_msrs) uint8_t buf[sizeof(struct kvm_msrs) + N * sizeof(struct kvm_msr_entry)];
	struct kvm_msrs *m = (struct kvm_msrs *)buf;
	int i, r;

	memset(buf, 0, sizeof(buf));
	m->nmsrs = N;
	for (i = 0; i < N; i++) {
		m->entries[i].index = boot_msrs[i].index;
		m->entries[i].data = boot_msrs[i].data;
	}
	r = VCPU_IOCTL(v, KVM_SET_MSRS, m, err);
	if (r < 0)
		return r;
	if (r < N)
		return kiln_fail(err, EINVAL, "vCPU %d: KVM_SET_MSRS refused MSR %#x", v->id, m->entries[r].index);
	return 0;
}

static int set_fpu_lapic(struct vcpu *v, struct kiln_err *err)
{
	struct kvm_fpu fpu = { .fcw = 0x37f, .mxcsr = 0x1f80 };
	struct kvm_lapic_state lapic;
	uint32_t lvt;
	int r;

	if ((r = VCPU_IOCTL(v, KVM_SET_FPU, &fpu, err)) < 0 ||
	    (r = VCPU_IOCTL(v, KVM_GET_LAPIC, &lapic, err)) < 0)
		return r;
	/* LINT0 delivers the 8259's ExtINT, LINT1 NMI, as the MP table says. */
	memcpy(&lvt, lapic.regs + APIC_LVT0, 4);
	lvt = (lvt & ~0x700u) | APIC_MODE_EXTINT << 8;
	memcpy(lapic.regs + APIC_LVT0, &lvt, 4);
	memcpy(&lvt, lapic.regs + APIC_LVT1, 4);
	lvt = (lvt & ~0x700u) | APIC_MODE_NMI << 8;
	memcpy(lapic.regs + APIC_LVT1, &lvt, 4);
	r = VCPU_IOCTL(v, KVM_SET_LAPIC, &lapic, err);
	return r < 0 ? r : 0;
}

static struct kvm_segment flat_segment(uint16_t sel, uint8_t type, int long_mode)
{
	struct kvm_segment s = {
		.base = 0,
		.limit = 0xffffffff,
		.selector = sel,
		.type = type,
		.present = 1,
		.dpl = 0,
		.db = long_mode ? 0 : 1,
		.s = 1,
		.l = long_mode ? 1 : 0,
		.g = 1,
	};
	return s;
}

/* vCPU 0's entry state: PVH enters in 32-bit protected mode, bzImage in long mode. */
static int set_entry_state(struct vcpu *v, const struct kernel_info *ki, struct kiln_err *err)
{
	int lm = ki->mode == BOOT_LINUX64;
	struct kvm_sregs sregs;
	struct kvm_regs regs;
	struct kvm_segment data = flat_segment(SEL_DATA, 0x3, 0);
	struct kvm_segment tss = {
		.limit = 0x67, .selector = SEL_TSS, .type = 0xb, .present = 1,
	};
	int r;

	if ((r = VCPU_IOCTL(v, KVM_GET_SREGS, &sregs, err)) < 0)
		return r;
	sregs.cs = flat_segment(SEL_CODE, 0xb, lm);
	sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
	sregs.tr = tss;
	sregs.gdt.base = GUEST_GDT;
	sregs.gdt.limit = 5 * 8 - 1;
	sregs.idt.base = 0;
	sregs.idt.limit = 0;
	sregs.cr0 = CR0_PE | CR0_ET;
	sregs.cr3 = 0;
	sregs.cr4 = 0;
	sregs.efer = 0;
	if (lm) {
		sregs.cr0 |= CR0_PG;
		sregs.cr3 = GUEST_PML4;
		sregs.cr4 = CR4_PAE;
		sregs.efer = EFER_LME | EFER_LMA;
	}
	if ((r = VCPU_IOCTL(v, KVM_SET_SREGS, &sregs, err)) < 0)
		return r;

	memset(&regs, 0, sizeof(regs));
	regs.rflags = 0x2;
	regs.rip = ki->entry;
	regs.rsp = regs.rbp = BOOT_STACK;
	if (lm)
		regs.rsi = GUEST_ZERO_PAGE;
	else
		regs.rbx = GUEST_START_INFO;
	r = VCPU_IOCTL(v, KVM_SET_REGS, &regs, err);
	return r < 0 ? r : 0;
}

int vcpu_create_bare(struct vm *vm, int id, struct kiln_err *err)
{
	struct vcpu *v = &vm->vcpus[id];
	int sz;

	memset(v, 0, sizeof(*v));
	v->vm = vm;
	v->id = id;
	v->ks.fd = -1;
	v->fd = KVM_IOCTL(vm->fd, KVM_CREATE_VCPU, (unsigned long)id, err);
	if (v->fd < 0)
		return kiln_err_prefix(err, v->fd, "vCPU %d", id);
	(void)kvm_stats_open(&v->ks, v->fd);	/* only for reports: a kernel without them reads zeros */
	sz = KVM_IOCTL(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0, err);
	if (sz < 0)
		return sz;
	if (sz < (int)sizeof(struct kvm_run))
		return kiln_fail(err, EINVAL, "KVM_GET_VCPU_MMAP_SIZE: %d bytes, less than a struct kvm_run", sz);
	v->run = mmap(NULL, (size_t)sz, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
	if (v->run == MAP_FAILED) {
		v->run = NULL;
		return kiln_fail(err, errno, "vCPU %d: mmap of kvm_run: %s", id, strerror(errno));
	}
	v->run_size = (size_t)sz;
	return 0;
}

int vcpu_create(struct vm *vm, int id, const struct kernel_info *ki, struct kiln_err *err)
{
	struct vcpu *v = &vm->vcpus[id];
	int r;

	if ((r = vcpu_create_bare(vm, id, err)) < 0)
		return r;
	if ((r = set_cpuid(v, err)) < 0 || (r = set_msrs(v, err)) < 0 ||
	    (r = set_fpu_lapic(v, err)) < 0)
		return r;
	/* Application processors wait in KVM for INIT/SIPI from vCPU 0. */
	if (id == 0)
		return set_entry_state(v, ki, err);
	return 0;
}

/* Wait outside KVM_RUN while the VM is paused (vm_pause). */
static void vcpu_park(struct vcpu *v)
{
	struct vm *vm = v->vm;

	pthread_mutex_lock(&vm->lock);
	if (vm->pause_req && !atomic_load(&vm->stop)) {
		vm->npaused++;
		pthread_cond_broadcast(&vm->pause_cv);
		while (vm->pause_req && !atomic_load(&vm->stop))
			pthread_cond_wait(&vm->resume_cv, &vm->lock);
		vm->npaused--;
	}
	pthread_mutex_unlock(&vm->lock);
}

void *vcpu_thread(void *arg)
{
	struct vcpu *v = arg;
	struct vm *vm = v->vm;
	char name[16];
	sigset_t kick;

	/* (top -H, perf and the kernel's traces name the thread) */
	snprintf(name, sizeof(name), "kiln-vcpu%d", v->id);
	pthread_setname_np(pthread_self(), name);
	sigemptyset(&kick);
	sigaddset(&kick, SIGUSR1);
	pthread_sigmask(SIG_UNBLOCK, &kick, NULL);

	while (!atomic_load(&vm->stop)) {
		if (ioctl(v->fd, KVM_RUN, 0) < 0) {
			char msg[128];

			if (errno == EINTR || errno == EAGAIN) {
				/*
				 * A kick. KVM_RUN with immediate_exit has completed any
				 * emulated I/O first, so the registers are whole: a
				 * pause may park here and a snapshot read them.
				 */
				__atomic_store_n(&v->run->immediate_exit, 0, __ATOMIC_SEQ_CST);
				if (__atomic_load_n(&vm->pause_req, __ATOMIC_SEQ_CST))
					vcpu_park(v);
				continue;
			}
			/* Never read kvm_run after a failed run. */
			snprintf(msg, sizeof(msg), "vCPU %d: KVM_RUN: %s", v->id, strerror(errno));
			vm_request_stop(vm, VM_STOP_ERROR, msg);
			break;
		}
		v->exits++;
		if (handle_exit(v, v->run) == EXIT_STOP)
			break;
	}
	return NULL;
}
