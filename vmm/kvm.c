/*
 * /dev/kvm and the VM: capability checks, the in-kernel irqchip and PIT,
 * memory slots, and stopping the VM from any thread.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "vmm.h"

#define KVM_API_EXPECTED 12

int kvm_ioctl(int fd, unsigned long req, void *arg, const char *name, struct kiln_err *err)
{
	int r = ioctl(fd, req, arg);
	int e = errno;

	return r < 0 ? kiln_fail(err, e, "%s: %s", name, strerror(e)) : r;
}

int vcpu_ioctl(const struct vcpu *v, unsigned long req, void *arg, const char *name, struct kiln_err *err)
{
	int r = ioctl(v->fd, req, arg);
	int e = errno;

	return r < 0 ? kiln_fail(err, e, "vCPU %d: %s: %s", v->id, name, strerror(e)) : r;
}

static const struct {
	int cap;
	const char *name;
} required_caps[] = {
#define CAP(c) { c, #c }
	CAP(KVM_CAP_IRQCHIP),
	CAP(KVM_CAP_USER_MEMORY),
	CAP(KVM_CAP_SET_TSS_ADDR),
	CAP(KVM_CAP_SET_IDENTITY_MAP_ADDR),
	CAP(KVM_CAP_PIT2),
	CAP(KVM_CAP_EXT_CPUID),
	CAP(KVM_CAP_MP_STATE),
	CAP(KVM_CAP_IMMEDIATE_EXIT),
	CAP(KVM_CAP_IRQ_INJECT_STATUS),
#undef CAP
};

int kvm_open(const char *path, struct kiln_err *err)
{
	const char *extra = getenv("KILN_VMM_REQUIRE_CAP");
	size_t i;
	int fd, v;

	if (!path)
		path = "/dev/kvm";
	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;

		if (e == ENOENT)
			return kiln_fail(err, e, "%s: not found (load kvm_intel or kvm_amd, or enable nested virtualisation on this VM)", path);
		if (e == EACCES || e == EPERM)
			return kiln_fail(err, e, "%s: permission denied (add yourself to group kvm)", path);
		return kiln_fail(err, e, "%s: %s", path, strerror(e));
	}
	v = KVM_IOCTL(fd, KVM_GET_API_VERSION, 0, NULL);
	if (v < 0) {
		close(fd);
		return kiln_fail(err, ENOTTY, "%s: not a KVM device (KVM_GET_API_VERSION failed)", path);
	}
	if (v != KVM_API_EXPECTED) {
		close(fd);
		return kiln_fail(err, EPROTO, "%s: KVM API version %d, kiln needs %d", path, v, KVM_API_EXPECTED);
	}
	if (!host_cpu_has_virt() && !getenv("KILN_VMM_ALLOW_NO_VIRT")) {
		close(fd);
		return kiln_fail(err, ENODEV, "%s: this CPU has no VT-x or AMD-V, so this is not hardware KVM (PVM's kvm_pvm?), which stops kiln's guests with emulation errors; run on a host with VT-x/AMD-V or nested virtualisation, or through tests/nested/kvm-host.sh (KILN_VMM_ALLOW_NO_VIRT=1 tries anyway)", path);
	}
	for (i = 0; i < sizeof(required_caps) / sizeof(required_caps[0]); i++) {
		if (KVM_IOCTL(fd, KVM_CHECK_EXTENSION, required_caps[i].cap, NULL) <= 0) {
			close(fd);
			return kiln_fail(err, ENOSYS, "%s lacks %s (a newer host kernel is needed)", path, required_caps[i].name);
		}
	}
	/* A test hook: demand one more capability, by number, to exercise the error. */
	if (extra) {
		long cap = strtol(extra, NULL, 0);

		if (KVM_IOCTL(fd, KVM_CHECK_EXTENSION, cap, NULL) <= 0) {
			close(fd);
			return kiln_fail(err, ENOSYS, "%s lacks capability %ld (KILN_VMM_REQUIRE_CAP; a newer host kernel is needed)", path, cap);
		}
	}
	return fd;
}

static int get_supported_cpuid(struct vm *vm, struct kiln_err *err)
{
	int n = 64, r;

	for (;;) {
		struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + n * sizeof(c->entries[0]));

		if (!c)
			return kiln_fail(err, ENOMEM, "out of memory");
		c->nent = (uint32_t)n;
		r = KVM_IOCTL(vm->kvm_fd, KVM_GET_SUPPORTED_CPUID, c, err);
		if (r == 0) {
			if (KVM_IOCTL(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_TSC_DEADLINE_TIMER, NULL) > 0)
				cpuid_set_tsc_deadline(c);
			vm->cpuid = c;
			return 0;
		}
		free(c);
		if (r != -E2BIG || n >= 4096)
			return r;
		n *= 2;
	}
}

static int set_memory_slot(struct vm *vm, uint32_t slot, uint64_t gpa, uint64_t size,
			   void *host, struct kiln_err *err)
{
	struct kvm_userspace_memory_region r = {
		.slot = slot,
		.guest_phys_addr = gpa,
		.memory_size = size,
		.userspace_addr = (uint64_t)(uintptr_t)host,
	};

	return KVM_IOCTL(vm->fd, KVM_SET_USER_MEMORY_REGION, &r, err);
}

int vm_create_bare(struct vm *vm, int kvm_fd, struct kiln_err *err)
{
	struct kvm_pit_config pit = { .flags = 0 };
	uint64_t ident = GUEST_IDENTITY_MAP;
	int r;

	memset(vm, 0, sizeof(*vm));
	vm->kvm_fd = kvm_fd;
	vm->fd = -1;
	pthread_mutex_init(&vm->lock, NULL);
	pthread_cond_init(&vm->pause_cv, NULL);
	pthread_cond_init(&vm->resume_cv, NULL);
	vm->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	vm->agent_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (vm->stop_efd < 0 || vm->agent_efd < 0)
		return kiln_fail(err, errno, "eventfd: %s", strerror(errno));

	vm->fd = KVM_IOCTL(kvm_fd, KVM_CREATE_VM, 0, err);
	if (vm->fd < 0)
		return vm->fd;
	r = KVM_IOCTL(vm->fd, KVM_SET_TSS_ADDR, (unsigned long)GUEST_TSS, err);
	if (r < 0)
		return r;
	r = KVM_IOCTL(vm->fd, KVM_SET_IDENTITY_MAP_ADDR, &ident, err);
	if (r < 0)
		return r;
	r = KVM_IOCTL(vm->fd, KVM_CREATE_IRQCHIP, 0, err);
	if (r < 0)
		return r;
	r = KVM_IOCTL(vm->fd, KVM_CREATE_PIT2, &pit, err);
	if (r < 0)
		return r;
	r = get_supported_cpuid(vm, err);
	vm->made = r == 0;
	return r;
}

int vm_set_memory(struct vm *vm, struct guest_mem *m, struct kiln_err *err)
{
	int r;

	vm->mem = *m;
	memset(m, 0, sizeof(*m));
	r = set_memory_slot(vm, 0, 0, vm->mem.low_size, vm->mem.host, err);
	if (r < 0 || vm->mem.size <= vm->mem.low_size)
		return r;
	return set_memory_slot(vm, 1, GUEST_MMIO_GAP_END, vm->mem.size - vm->mem.low_size,
			       vm->mem.host + vm->mem.low_size, err);
}

int vm_create(struct vm *vm, int kvm_fd, struct guest_mem *m, struct kiln_err *err)
{
	int r = vm_create_bare(vm, kvm_fd, err);

	return r < 0 ? r : vm_set_memory(vm, m, err);
}

void vm_destroy(struct vm *vm)
{
	int i;

	for (i = 0; i < vm->nvcpus; i++) {
		if (vm->vcpus[i].run)
			munmap(vm->vcpus[i].run, vm->vcpus[i].run_size);
		if (vm->vcpus[i].fd >= 0)
			close(vm->vcpus[i].fd);
		kvm_stats_close(&vm->vcpus[i].ks);
	}
	vm->nvcpus = 0;
	if (vm->fd >= 0)
		close(vm->fd);
	vm->fd = -1;
	if (vm->stop_efd >= 0)
		close(vm->stop_efd);
	vm->stop_efd = -1;
	if (vm->agent_efd >= 0)
		close(vm->agent_efd);
	vm->agent_efd = -1;
	guest_mem_free(&vm->mem);
	free(vm->cpuid);
	vm->cpuid = NULL;
	pthread_cond_destroy(&vm->pause_cv);
	pthread_cond_destroy(&vm->resume_cv);
	pthread_mutex_destroy(&vm->lock);
}

int vm_irq_line(struct vm *vm, uint32_t irq, int level)
{
	struct kvm_irq_level l = { .irq = irq, .level = (uint32_t)level };

	int r = KVM_IOCTL(vm->fd, KVM_IRQ_LINE, &l, NULL);

	return r < 0 ? r : 0;
}

/* Kick every vCPU out of KVM_RUN (vm->lock held). */
static void vm_kick_all(struct vm *vm)
{
	int i;

	for (i = 0; i < vm->nvcpus; i++) {
		struct vcpu *v = &vm->vcpus[i];

		/* immediate_exit closes the race with a vCPU about to enter KVM_RUN. */
		if (v->run)
			__atomic_store_n(&v->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
		if (v->started && !pthread_equal(v->thread, pthread_self()))
			pthread_kill(v->thread, SIGUSR1);
	}
}

int vm_pause(struct vm *vm, int timeout_ms)
{
	struct timespec until = deadline_after(CLOCK_REALTIME, (unsigned)timeout_ms);
	int r = 0, started = 0, i;

	pthread_mutex_lock(&vm->lock);
	/* pause_req before immediate_exit: a vCPU that sees the kick sees the request. */
	__atomic_store_n(&vm->pause_req, 1, __ATOMIC_SEQ_CST);
	vm_kick_all(vm);
	for (i = 0; i < vm->nvcpus; i++)
		started += vm->vcpus[i].started;
	while (vm->npaused < started && !atomic_load(&vm->stop) && r == 0)
		r = pthread_cond_timedwait(&vm->pause_cv, &vm->lock, &until);
	if (atomic_load(&vm->stop))
		r = -ESHUTDOWN;
	else if (vm->npaused < started)
		r = -ETIMEDOUT;
	else
		r = 0;
	pthread_mutex_unlock(&vm->lock);
	if (r)
		vm_resume(vm);
	return r;
}

void vm_resume(struct vm *vm)
{
	pthread_mutex_lock(&vm->lock);
	__atomic_store_n(&vm->pause_req, 0, __ATOMIC_SEQ_CST);
	pthread_cond_broadcast(&vm->resume_cv);
	pthread_mutex_unlock(&vm->lock);
}

void vm_request_stop(struct vm *vm, enum vm_stop reason, const char *detail)
{
	uint64_t one = 1;
	int expected = VM_RUNNING;

	pthread_mutex_lock(&vm->lock);
	if (atomic_compare_exchange_strong(&vm->stop, &expected, (int)reason) && detail)
		snprintf(vm->stop_detail, sizeof(vm->stop_detail), "%s", detail);
	vm_kick_all(vm);
	/* Parked vCPUs and a waiting vm_pause must see the stop too. */
	pthread_cond_broadcast(&vm->resume_cv);
	pthread_cond_broadcast(&vm->pause_cv);
	pthread_mutex_unlock(&vm->lock);
	if (vm->stop_efd >= 0)
		(void)!write(vm->stop_efd, &one, sizeof(one));
}

/* KVM_PRE_FAULT_MEMORY (Linux 6.10): the headers kiln builds with may predate it. */
#ifndef KVM_CAP_PRE_FAULT_MEMORY
#define KVM_CAP_PRE_FAULT_MEMORY 236
struct kvm_pre_fault_memory {
	__u64 gpa;
	__u64 size;
	__u64 flags;
	__u64 padding[5];
};
#define KVM_PRE_FAULT_MEMORY _IOWR(KVMIO, 0xd5, struct kvm_pre_fault_memory)
#endif

int vm_can_pre_fault(const struct vm *vm)
{
	return vm->nvcpus > 0 && vm->vcpus[0].fd >= 0 &&
	       KVM_IOCTL(vm->fd, KVM_CHECK_EXTENSION, KVM_CAP_PRE_FAULT_MEMORY, NULL) > 0;
}

int vm_pre_fault(const struct vm *vm, uint64_t off, uint64_t len)
{
	const struct guest_mem *m = &vm->mem;

	if (off > m->size || len > m->size - off)
		return -EINVAL;
	while (len) {
		/* The memory file is guest RAM in order: below the MMIO gap, then from 4 GiB. */
		uint64_t gpa = off < m->low_size ? off : GUEST_MMIO_GAP_END + (off - m->low_size);
		uint64_t n = off < m->low_size && len > m->low_size - off ? m->low_size - off : len;
		struct kvm_pre_fault_memory pf = { .gpa = gpa, .size = n };

		while (pf.size) {
			if (ioctl(vm->vcpus[0].fd, KVM_PRE_FAULT_MEMORY, &pf) < 0 && errno != EINTR && errno != EAGAIN)
				return -errno;
		}
		off += n;
		len -= n;
	}
	return 0;
}
