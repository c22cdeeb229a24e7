/*
 * KVM state for snapshots: the VM's irqchips, PIT and kvmclock, and each
 * vCPU's registers, FPU/XSAVE, XCRs, debug registers, LAPIC, MSRs, MP state,
 * pending events, TSC frequency and CPUID. Saving writes SNAP_SEC_VM and
 * SNAP_SEC_VCPU sections; restoring parses a section completely into a
 * struct (pure, fuzzed) before a single ioctl applies it.
 *
 * Ordering follows what KVM needs (and Firecracker documents): save MP state
 * first (KVM_GET_MP_STATE may accept pending LAPIC events) and events last;
 * restore CPUID first, REGS before EVENTS (SET_REGS clears pending
 * exceptions), LAPIC after SREGS (which carries the APIC base) and before
 * MSRs (the TSC deadline only sticks once the LAPIC is in deadline mode),
 * TSC before TSC_DEADLINE, and events last.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "snapfile.h"
#include "vmm.h"

#define MSR_IA32_TSC		0x10
#define MSR_IA32_TSC_DEADLINE	0x6e0
#define MSR_CHUNK		128	/* KVM takes fewer than 256 per KVM_{GET,SET}_MSRS */
#define VCPUEVENT_KNOWN_FLAGS	0x7fu	/* KVM_VCPUEVENT_VALID_* up to TRIPLE_FAULT */

/* ---- the VM ------------------------------------------------------------------ */

int vm_state_save(struct vm *vm, struct snap_buf *w, struct kiln_err *err)
{
	struct snap_vm s;
	size_t mark;
	int i, r;

	memset(&s, 0, sizeof(s));
	for (i = 0; i < 3; i++) {
		s.chip[i].chip_id = (uint32_t)i;	/* PIC master, PIC slave, IOAPIC */
		if ((r = KVM_IOCTL(vm->fd, KVM_GET_IRQCHIP, &s.chip[i], err)) < 0)
			return kiln_err_prefix(err, r, "irqchip %d", i);
	}
	if ((r = KVM_IOCTL(vm->fd, KVM_GET_PIT2, &s.pit, err)) < 0 ||
	    (r = KVM_IOCTL(vm->fd, KVM_GET_CLOCK, &s.clock, err)) < 0)
		return r;
	mark = snapw_section_begin(w, SNAP_SEC_VM);
	for (i = 0; i < 3; i++)
		snapw_blob(w, &s.chip[i], sizeof(s.chip[i]));
	snapw_blob(w, &s.pit, sizeof(s.pit));
	snapw_u64(w, s.clock.clock);
	snapw_section_end(w, mark);
	return 0;
}

/* A fixed-size kernel structure, stored as a blob of exactly its size. */
static void read_struct(struct snap_rd *r, void *dst, size_t size, const char *what)
{
	uint32_t n;
	const void *p = snapr_blob(r, (uint32_t)size, &n, what);

	memset(dst, 0, size);
	if (p && n != size) {
		snapr_fail(r, "%s: %u bytes, expected %zu (a snapshot from another kiln-vmm build?)", what, n, size);
		return;
	}
	if (p)
		memcpy(dst, p, size);
}

int vm_state_parse(struct snap_rd *r, struct snap_vm *s)
{
	int i;

	memset(s, 0, sizeof(*s));
	for (i = 0; i < 3; i++) {
		read_struct(r, &s->chip[i], sizeof(s->chip[i]), "irqchip");
		if (snapr_ok(r) && s->chip[i].chip_id != (uint32_t)i)
			return snapr_fail(r, "irqchip %d: chip id %u", i, s->chip[i].chip_id);
	}
	read_struct(r, &s->pit, sizeof(s->pit), "PIT");
	s->clock.clock = snapr_u64(r, "kvmclock");
	if (snapr_ok(r) && s->pit.flags & ~(uint32_t)KVM_PIT_FLAGS_HPET_LEGACY)
		return snapr_fail(r, "PIT: unknown flags %#x", s->pit.flags);
	return snapr_end(r, "VM state");
}

int vm_state_apply(struct vm *vm, const struct snap_vm *s, struct kiln_err *err)
{
	struct kvm_clock_data clock = { .clock = s->clock.clock };
	int i, r;

	if ((r = KVM_IOCTL(vm->fd, KVM_SET_PIT2, &s->pit, err)) < 0)
		return kiln_err_prefix(err, r, "the saved PIT");
	for (i = 0; i < 3; i++)
		if ((r = KVM_IOCTL(vm->fd, KVM_SET_IRQCHIP, &s->chip[i], err)) < 0)
			return kiln_err_prefix(err, r, "the saved irqchip %d", i);
	/* Guest time resumes where the snapshot left it; the wall clock is the agent's (IDENTITY). */
	r = KVM_IOCTL(vm->fd, KVM_SET_CLOCK, &clock, err);
	return r < 0 ? r : 0;
}

/* ---- vCPUs ------------------------------------------------------------------- */

/*
 * The MSRs worth saving: KVM's index list less those this vCPU cannot read
 * (KVM_GET_MSRS stops at the first it refuses), TSC_DEADLINE moved last.
 */
static int msr_list(struct vcpu *v, uint32_t *out, uint32_t max, uint32_t *n, struct kiln_err *err)
{
	struct kvm_msr_list probe = { .nmsrs = 0 };
	struct kvm_msr_list *list;
	_Alignas(struct kvm_msrs) uint8_t buf[sizeof(struct kvm_msrs) + sizeof(struct kvm_msr_entry)];
	struct kvm_msrs *one = (struct kvm_msrs *)buf;
	uint32_t i, k = 0;
	int deadline = 0, r;

	/* Asked for no entries, KVM says how many with E2BIG. */
	r = KVM_IOCTL(v->vm->kvm_fd, KVM_GET_MSR_INDEX_LIST, &probe, err);
	if (r < 0 && r != -E2BIG)
		return r;
	list = calloc(1, sizeof(*list) + probe.nmsrs * sizeof(list->indices[0]));
	if (!list)
		return kiln_fail(err, ENOMEM, "out of memory");
	list->nmsrs = probe.nmsrs;
	if ((r = KVM_IOCTL(v->vm->kvm_fd, KVM_GET_MSR_INDEX_LIST, list, err)) < 0) {
		free(list);
		return r;
	}
	for (i = 0; i < list->nmsrs && k < max; i++) {
		memset(buf, 0, sizeof(buf));
		one->nmsrs = 1;
		one->entries[0].index = list->indices[i];
		if (VCPU_IOCTL(v, KVM_GET_MSRS, one, NULL) != 1)
			continue;	/* not readable on this vCPU: not state */
		if (list->indices[i] == MSR_IA32_TSC_DEADLINE)
			deadline = 1;
		else
			out[k++] = list->indices[i];
	}
	if (deadline && k < max)
		out[k++] = MSR_IA32_TSC_DEADLINE;
	free(list);
	*n = k;
	return 0;
}

static int msrs_xfer(struct vcpu *v, unsigned long req, struct kvm_msr_entry *e, uint32_t n,
		     struct kiln_err *err)
{
	_Alignas(struct kvm_msrs) uint8_t buf[sizeof(struct kvm_msrs) + MSR_CHUNK * sizeof(struct kvm_msr_entry)];
	struct kvm_msrs *m = (struct kvm_msrs *)buf;
	uint32_t off, c;
	int r;

	for (off = 0; off < n; off += c) {
		c = n - off < MSR_CHUNK ? n - off : MSR_CHUNK;
		memset(buf, 0, sizeof(buf));
		m->nmsrs = c;
		memcpy(m->entries, e + off, c * sizeof(*e));
		r = vcpu_ioctl(v, req, m, req == KVM_GET_MSRS ? "KVM_GET_MSRS" : "KVM_SET_MSRS", err);
		if (r < 0)
			return r;
		if ((uint32_t)r < c)
			return kiln_fail(err, EINVAL, "vCPU %d: KVM refused MSR %#x of the saved state (another CPU model?)",
					 v->id, m->entries[r].index);
		memcpy(e + off, m->entries, c * sizeof(*e));
	}
	return 0;
}

int vcpu_state_save(struct vcpu *v, struct snap_buf *w, struct kiln_err *err)
{
	struct snap_vcpu *s = calloc(1, sizeof(*s));
	uint32_t idx[SNAP_MAX_MSRS], i;
	struct kvm_cpuid2 *cpuid = NULL;
	struct kvm_xsave *xsave = NULL;
	int xsave_size, r = 0;
	size_t mark;

	if (!s)
		return kiln_fail(err, ENOMEM, "out of memory");
	/* MP state first: getting it may change LAPIC state. */
	if ((r = VCPU_IOCTL(v, KVM_GET_MP_STATE, &s->mp, err)) < 0 ||
	    (r = VCPU_IOCTL(v, KVM_GET_REGS, &s->regs, err)) < 0 ||
	    (r = VCPU_IOCTL(v, KVM_GET_SREGS, &s->sregs, err)) < 0)
		goto out;
	xsave_size = KVM_IOCTL(v->vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2, NULL);
	if (xsave_size < (int)sizeof(struct kvm_xsave))
		xsave_size = sizeof(struct kvm_xsave);
	if (xsave_size > (int)SNAP_MAX_XSAVE) {
		r = kiln_fail(err, E2BIG, "vCPU %d: XSAVE state of %d bytes is more than kiln supports", v->id, xsave_size);
		goto out;
	}
	xsave = calloc(1, (size_t)xsave_size);
	if (!xsave) {
		r = kiln_fail(err, ENOMEM, "out of memory");
		goto out;
	}
	if (xsave_size > (int)sizeof(struct kvm_xsave))
		r = VCPU_IOCTL(v, KVM_GET_XSAVE2, xsave, err);
	else
		r = VCPU_IOCTL(v, KVM_GET_XSAVE, xsave, err);
	if (r < 0 ||
	    (r = VCPU_IOCTL(v, KVM_GET_XCRS, &s->xcrs, err)) < 0 ||
	    (r = VCPU_IOCTL(v, KVM_GET_DEBUGREGS, &s->dregs, err)) < 0 ||
	    (r = VCPU_IOCTL(v, KVM_GET_LAPIC, &s->lapic, err)) < 0)
		goto out;
	r = VCPU_IOCTL(v, KVM_GET_TSC_KHZ, 0, NULL);
	s->tsc_khz = r > 0 ? (uint32_t)r : 0;
	/*
	 * The CPUID kiln gave the vCPU, not KVM_GET_CPUID2's copy, whose
	 * runtime bits (OSXSAVE, XSAVE sizes) follow the guest's CR4 and XCR0:
	 * a restore compares it with what this host would give a new vCPU.
	 */
	if (v->vm->cpuid->nent > SNAP_MAX_CPUID) {
		r = kiln_fail(err, E2BIG, "vCPU %d: %u CPUID entries, more than kiln supports", v->id, v->vm->cpuid->nent);
		goto out;
	}
	cpuid = malloc(sizeof(*cpuid) + v->vm->cpuid->nent * sizeof(cpuid->entries[0]));
	if (!cpuid) {
		r = kiln_fail(err, ENOMEM, "out of memory");
		goto out;
	}
	memcpy(cpuid, v->vm->cpuid, sizeof(*cpuid) + v->vm->cpuid->nent * sizeof(cpuid->entries[0]));
	cpuid_filter(cpuid, v->id, v->vm->nvcpus);
	if ((r = msr_list(v, idx, SNAP_MAX_MSRS, &s->nmsrs, err)) < 0)
		goto out;
	for (i = 0; i < s->nmsrs; i++)
		s->msrs[i].index = idx[i];
	if ((r = msrs_xfer(v, KVM_GET_MSRS, s->msrs, s->nmsrs, err)) < 0)
		goto out;
	/*
	 * A zero TSC deadline with the timer armed elsewhere has been seen to
	 * leave a restored vCPU without timer interrupts (Firecracker's
	 * fix_zero_tsc_deadline_msr); an already expired deadline is harmless.
	 */
	for (i = 0; i < s->nmsrs; i++)
		if (s->msrs[i].index == MSR_IA32_TSC_DEADLINE && s->msrs[i].data == 0) {
			uint32_t j;

			for (j = 0; j < s->nmsrs; j++)
				if (s->msrs[j].index == MSR_IA32_TSC)
					s->msrs[i].data = s->msrs[j].data;
		}
	/* Events last: the GETs above may have changed what is pending. */
	if ((r = VCPU_IOCTL(v, KVM_GET_VCPU_EVENTS, &s->events, err)) < 0)
		goto out;
	r = 0;

	mark = snapw_section_begin(w, SNAP_SEC_VCPU);
	snapw_u32(w, (uint32_t)v->id);
	snapw_blob(w, &s->regs, sizeof(s->regs));
	snapw_blob(w, &s->sregs, sizeof(s->sregs));
	snapw_blob(w, xsave, (uint32_t)xsave_size);
	snapw_blob(w, &s->xcrs, sizeof(s->xcrs));
	snapw_blob(w, &s->dregs, sizeof(s->dregs));
	snapw_blob(w, &s->lapic, sizeof(s->lapic));
	snapw_u32(w, s->mp.mp_state);
	snapw_blob(w, &s->events, sizeof(s->events));
	snapw_u32(w, s->tsc_khz);
	snapw_blob(w, cpuid->entries, cpuid->nent * (uint32_t)sizeof(cpuid->entries[0]));
	snapw_blob(w, s->msrs, s->nmsrs * (uint32_t)sizeof(s->msrs[0]));
	snapw_section_end(w, mark);
out:
	free(cpuid);
	free(xsave);
	free(s);
	return r;
}

int vcpu_state_parse(struct snap_rd *r, struct snap_vcpu *s)
{
	const void *p;
	uint32_t n, i;

	memset(s, 0, sizeof(*s));
	s->id = snapr_u32(r, "vCPU id");
	if (snapr_ok(r) && s->id >= KILN_MAX_VCPUS)
		return snapr_fail(r, "vCPU id %u: at most %d vCPUs", s->id, KILN_MAX_VCPUS);
	read_struct(r, &s->regs, sizeof(s->regs), "vCPU registers");
	read_struct(r, &s->sregs, sizeof(s->sregs), "vCPU segment registers");
	p = snapr_blob(r, SNAP_MAX_XSAVE, &n, "vCPU XSAVE area");
	if (p && n < sizeof(struct kvm_xsave))
		return snapr_fail(r, "vCPU XSAVE area: %u bytes, at least %zu expected", n, sizeof(struct kvm_xsave));
	s->xsave = p;
	s->xsave_len = n;
	read_struct(r, &s->xcrs, sizeof(s->xcrs), "vCPU XCRs");
	if (snapr_ok(r) && s->xcrs.nr_xcrs > KVM_MAX_XCRS)
		return snapr_fail(r, "vCPU XCRs: %u entries, at most %d", s->xcrs.nr_xcrs, KVM_MAX_XCRS);
	read_struct(r, &s->dregs, sizeof(s->dregs), "vCPU debug registers");
	read_struct(r, &s->lapic, sizeof(s->lapic), "vCPU LAPIC");
	s->mp.mp_state = snapr_u32(r, "vCPU MP state");
	if (snapr_ok(r) && s->mp.mp_state > KVM_MP_STATE_SUSPENDED)
		return snapr_fail(r, "vCPU MP state %u is not a KVM MP state", s->mp.mp_state);
	read_struct(r, &s->events, sizeof(s->events), "vCPU events");
	if (snapr_ok(r) && s->events.flags & ~VCPUEVENT_KNOWN_FLAGS)
		return snapr_fail(r, "vCPU events: unknown flags %#x", s->events.flags);
	s->tsc_khz = snapr_u32(r, "vCPU TSC frequency");
	p = snapr_blob(r, SNAP_MAX_CPUID * (uint32_t)sizeof(s->cpuid[0]), &n, "vCPU CPUID");
	if (p && n % sizeof(s->cpuid[0]))
		return snapr_fail(r, "vCPU CPUID: %u bytes is not a whole number of entries", n);
	if (p) {
		s->ncpuid = n / (uint32_t)sizeof(s->cpuid[0]);
		memcpy(s->cpuid, p, n);
	}
	p = snapr_blob(r, SNAP_MAX_MSRS * (uint32_t)sizeof(s->msrs[0]), &n, "vCPU MSRs");
	if (p && n % sizeof(s->msrs[0]))
		return snapr_fail(r, "vCPU MSRs: %u bytes is not a whole number of entries", n);
	if (p) {
		s->nmsrs = n / (uint32_t)sizeof(s->msrs[0]);
		memcpy(s->msrs, p, n);
		for (i = 0; i < s->nmsrs; i++)
			s->msrs[i].reserved = 0;
	}
	return snapr_end(r, "vCPU state");
}

int vcpu_state_apply(struct vcpu *v, const struct snap_vcpu *s, struct kiln_err *err)
{
	struct kvm_cpuid2 *cpuid;
	struct kvm_xsave *xsave;
	struct kvm_vcpu_events ev = s->events;
	int host_xsave = KVM_IOCTL(v->vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2, NULL);
	size_t xsave_size = s->xsave_len;
	int r;

	/* KVM_SET_XSAVE reads as many bytes as this host's XSAVE2 size: never past our buffer. */
	if (host_xsave > 0 && (size_t)host_xsave > xsave_size)
		xsave_size = (size_t)host_xsave;
	cpuid = calloc(1, sizeof(*cpuid) + s->ncpuid * sizeof(cpuid->entries[0]));
	xsave = calloc(1, xsave_size);
	if (!cpuid || !xsave) {
		free(cpuid);
		free(xsave);
		return kiln_fail(err, ENOMEM, "out of memory");
	}
	cpuid->nent = s->ncpuid;
	memcpy(cpuid->entries, s->cpuid, s->ncpuid * sizeof(cpuid->entries[0]));
	memcpy(xsave, s->xsave, s->xsave_len);
	/* The TSC runs at the snapshot's rate, scaled by KVM if this host's differs. */
	if (s->tsc_khz && VCPU_IOCTL(v, KVM_GET_TSC_KHZ, 0, NULL) != (int)s->tsc_khz &&
	    (r = KVM_IOCTL(v->fd, KVM_SET_TSC_KHZ, (unsigned long)s->tsc_khz, err)) < 0)
		kiln_err_prefix(err, r, "vCPU %d: the snapshot's TSC runs at %u kHz and this host cannot scale to it",
				v->id, s->tsc_khz);
	else if ((r = VCPU_IOCTL(v, KVM_SET_CPUID2, cpuid, err)) < 0 ||
		 (r = VCPU_IOCTL(v, KVM_SET_MP_STATE, &s->mp, err)) < 0 ||
		 (r = VCPU_IOCTL(v, KVM_SET_REGS, &s->regs, err)) < 0 ||
		 (r = VCPU_IOCTL(v, KVM_SET_SREGS, &s->sregs, err)) < 0 ||
		 (r = VCPU_IOCTL(v, KVM_SET_XSAVE, xsave, err)) < 0 ||
		 (r = VCPU_IOCTL(v, KVM_SET_XCRS, &s->xcrs, err)) < 0 ||
		 (r = VCPU_IOCTL(v, KVM_SET_DEBUGREGS, &s->dregs, err)) < 0 ||
		 (r = VCPU_IOCTL(v, KVM_SET_LAPIC, &s->lapic, err)) < 0)
		kiln_err_prefix(err, r, "the saved state");
	else
		r = 0;
	if (r == 0) {
		struct kvm_msr_entry *e = malloc(s->nmsrs * sizeof(*e) + 1);

		if (!e) {
			r = kiln_fail(err, ENOMEM, "out of memory");
		} else {
			memcpy(e, s->msrs, s->nmsrs * sizeof(*e));
			r = msrs_xfer(v, KVM_SET_MSRS, e, s->nmsrs, err);
			free(e);
		}
	}
	if (r == 0) {
		/* Also restore a pending NMI and the SIPI vector, which GET reports but SET skips unless asked. */
		ev.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR;
		if ((r = VCPU_IOCTL(v, KVM_SET_VCPU_EVENTS, &ev, err)) < 0)
			kiln_err_prefix(err, r, "the saved state");
		else
			r = 0;
	}
	/* Tell a kvmclock guest it was paused, so its watchdogs do not fire (EINVAL without kvmclock). */
	if (r == 0)
		(void)VCPU_IOCTL(v, KVM_KVMCLOCK_CTRL, 0, NULL);
	free(cpuid);
	free(xsave);
	return r;
}
