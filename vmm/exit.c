/*
 * Exit dispatch: a table keyed by exit reason, and the port I/O bus. Pure with
 * respect to KVM so that unit tests drive it with a made-up kvm_run.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "vmm.h"
#include "timeline.h"

#define EXIT_TABLE_SIZE 64
_Static_assert(KVM_EXIT_NOTIFY < EXIT_TABLE_SIZE, "exit table covers every KVM exit reason");

typedef enum exit_action (*exit_fn)(struct vcpu *, struct kvm_run *);

int bus_add(struct bus *b, uint64_t base, uint64_t len,
	    void (*io)(void *, uint64_t, uint8_t *, uint32_t, int), void *opaque)
{
	int i;

	if (b->n >= KILN_MAX_BUS)
		return -ENOSPC;
	if (len == 0 || base + len < base)
		return -EINVAL;
	for (i = 0; i < b->n; i++) {
		const struct bus_dev *d = &b->dev[i];

		if (base < d->base + d->len && d->base < base + len)
			return -EEXIST;
	}
	b->dev[b->n++] = (struct bus_dev){ base, len, io, opaque };
	return 0;
}

const struct bus_dev *bus_find(const struct bus *b, uint64_t addr)
{
	int i;

	for (i = 0; i < b->n; i++)
		if (addr >= b->dev[i].base && addr - b->dev[i].base < b->dev[i].len)
			return &b->dev[i];
	return NULL;
}

void guest_port_io(void *opaque, uint64_t port, uint8_t *data, uint32_t size, int is_write)
{
	struct vm *vm = opaque;
	uint32_t status = 0;

	if (!is_write)
		return;
	if (port == KILN_PORT_MARK) {
		if (data[0] == KILN_MARK_AGENT_READY) {
			uint64_t one = 1;

			if (!vm->t_agent_ns)
				vm->t_agent_ns = now_ns();
			tl_mark(TL_AGENT_READY);
			if (vm->agent_efd >= 0)
				(void)!write(vm->agent_efd, &one, sizeof(one));
		} else if (!vm->t_mark_ns) {
			vm->t_mark_ns = now_ns();
			tl_mark(TL_USERSPACE);
		}
		return;
	}
	if (port == KILN_PORT_EXIT) {
		memcpy(&status, data, size < 4 ? size : 4);
		vm->status = status;
		vm_request_stop(vm, VM_STOP_STATUS, NULL);
	}
}

static enum exit_action exit_io(struct vcpu *v, struct kvm_run *run)
{
	uint32_t size = run->io.size, count = run->io.count, i;
	int is_write = run->io.direction == KVM_EXIT_IO_OUT;
	const struct bus_dev *d = bus_find(&v->vm->pio, run->io.port);
	uint8_t *data = (uint8_t *)run + run->io.data_offset;

	if ((size != 1 && size != 2 && size != 4) || count == 0 ||
	    run->io.data_offset < sizeof(*run) ||
	    (uint64_t)size * count > v->run_size - run->io.data_offset) {
		vm_request_stop(v->vm, VM_STOP_ERROR, "KVM reported a malformed port I/O exit");
		return EXIT_STOP;
	}
	for (i = 0; i < count; i++, data += size) {
		if (!is_write)
			memset(data, d ? 0 : 0xff, size);	/* unclaimed ports read all ones */
		if (d)
			d->io(d->opaque, run->io.port, data, size, is_write);
	}
	return atomic_load(&v->vm->stop) ? EXIT_STOP : EXIT_CONTINUE;
}

static enum exit_action exit_mmio(struct vcpu *v, struct kvm_run *run)
{
	const struct bus_dev *d = bus_find(&v->vm->mmio, run->mmio.phys_addr);
	uint32_t len = run->mmio.len;

	if (len == 0 || len > sizeof(run->mmio.data)) {
		vm_request_stop(v->vm, VM_STOP_ERROR, "KVM reported a malformed MMIO exit");
		return EXIT_STOP;
	}
	/* Reads start zeroed; an address no device claims reads zeros, writes vanish. */
	if (!run->mmio.is_write)
		memset(run->mmio.data, 0, sizeof(run->mmio.data));
	if (d)
		d->io(d->opaque, run->mmio.phys_addr, run->mmio.data, len, run->mmio.is_write);
	return atomic_load(&v->vm->stop) ? EXIT_STOP : EXIT_CONTINUE;
}

static enum exit_action exit_continue(struct vcpu *v, struct kvm_run *run)
{
	(void)run;
	return atomic_load(&v->vm->stop) ? EXIT_STOP : EXIT_CONTINUE;
}

static enum exit_action exit_reset(struct vcpu *v, struct kvm_run *run)
{
	const char *why = "the guest reset (triple fault)";

	if (run->exit_reason == KVM_EXIT_HLT)
		why = "the guest halted with interrupts off";
	else if (run->exit_reason == KVM_EXIT_SYSTEM_EVENT)
		why = "the guest asked for a system reset or shutdown";
	vm_request_stop(v->vm, VM_STOP_RESET, why);
	return EXIT_STOP;
}

static enum exit_action exit_fail_entry(struct vcpu *v, struct kvm_run *run)
{
	char msg[128];

	snprintf(msg, sizeof(msg), "vCPU %d: KVM could not enter the guest (hardware reason %#llx)",
		 v->id, (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
	vm_request_stop(v->vm, VM_STOP_ERROR, msg);
	return EXIT_STOP;
}

static enum exit_action exit_internal_error(struct vcpu *v, struct kvm_run *run)
{
	char msg[256];
	uint32_t i, n = run->internal.ndata;
	int len;

	/* The data words say where it happened (for emulation: the exit and the instruction). */
	len = snprintf(msg, sizeof(msg), "vCPU %d: KVM internal error (suberror %u)",
		       v->id, run->internal.suberror);
	if (n > 6)
		n = 6;
	for (i = 0; i < n && len > 0 && (size_t)len < sizeof(msg); i++)
		len += snprintf(msg + len, sizeof(msg) - (size_t)len, "%s%#llx", i ? " " : ", data ",
				(unsigned long long)run->internal.data[i]);
	vm_request_stop(v->vm, VM_STOP_ERROR, msg);
	return EXIT_STOP;
}

static const exit_fn exit_handlers[EXIT_TABLE_SIZE] = {
	[KVM_EXIT_IO] = exit_io,
	[KVM_EXIT_MMIO] = exit_mmio,
	[KVM_EXIT_INTR] = exit_continue,
	[KVM_EXIT_HLT] = exit_reset,
	[KVM_EXIT_SHUTDOWN] = exit_reset,
	[KVM_EXIT_SYSTEM_EVENT] = exit_reset,
	[KVM_EXIT_FAIL_ENTRY] = exit_fail_entry,
	[KVM_EXIT_INTERNAL_ERROR] = exit_internal_error,
};

enum exit_action handle_exit(struct vcpu *v, struct kvm_run *run)
{
	exit_fn fn = run->exit_reason < EXIT_TABLE_SIZE ? exit_handlers[run->exit_reason] : NULL;
	char msg[96];

	if (fn)
		return fn(v, run);
	snprintf(msg, sizeof(msg), "vCPU %d: unhandled KVM exit reason %u", v->id, run->exit_reason);
	vm_request_stop(v->vm, VM_STOP_ERROR, msg);
	return EXIT_STOP;
}
