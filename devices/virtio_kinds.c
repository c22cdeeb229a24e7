/*
 * The device kinds kiln-vmm makes, and the fixed place of each device slot:
 * the one list of kinds, so that option parsing and snapshot code go
 * through the kinds' own hooks and name none of them.
 */
#include <errno.h>
#include <stddef.h>
#include <string.h>

#include "virtio.h"
#include "virtio_blk.h"
#include "virtio_net.h"

const struct virtio_dev_ops *const virtio_kinds[] = {
	&virtio_blk_ops,
	&virtio_vsock_ops,
	&virtio_net_ops,
	NULL,
};

/* ISA-free IOAPIC pins for virtio devices (4 is COM1, 8 the RTC's). */
static const uint32_t slot_irqs[VIRTIO_MAX_DEVICES] = {
	5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
};

const struct virtio_dev_ops *virtio_kind_find(const char *name)
{
	int i;

	for (i = 0; virtio_kinds[i]; i++)
		if (!strcmp(virtio_kinds[i]->kind, name))
			return virtio_kinds[i];
	return NULL;
}

int virtio_slot_place(int slot, uint64_t *base, uint32_t *irq)
{
	if (slot < 0 || slot >= VIRTIO_MAX_DEVICES)
		return -EINVAL;
	*base = VIRTIO_MMIO_BASE + (uint64_t)slot * VIRTIO_MMIO_STEP;
	*irq = slot_irqs[slot];
	return 0;
}

int virtio_dev_create_at(struct virtio_dev *d, int slot, const struct virtio_dev_ops *kind, const char *spec,
			 struct vm *vm, const struct guest_mem *mem, struct ioloop *loop, struct kiln_err *err)
{
	uint64_t base;
	uint32_t irq;

	if (virtio_slot_place(slot, &base, &irq) < 0)
		return kiln_fail(err, EINVAL, "device %d: kiln-vmm has %d device slots", slot, VIRTIO_MAX_DEVICES);
	return kind->create(d, spec, vm, mem, loop, base, irq, err);
}
