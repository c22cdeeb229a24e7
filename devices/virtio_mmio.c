/*
 * The virtio-mmio transport, version 2 (virtio 1.2, 4.2.2). Register accesses
 * arrive on vCPU threads; queue kicks arrive as ioeventfds on the I/O thread;
 * interrupts leave through an irqfd. Every driver-written selector is
 * range-checked before it indexes anything, and features the driver acks that
 * were never offered fail FEATURES_OK.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "virtio.h"

#define REG_MAGIC		0x000
#define REG_VERSION		0x004
#define REG_DEVICE_ID		0x008
#define REG_VENDOR_ID		0x00c
#define REG_DEVICE_FEATURES	0x010
#define REG_DEVICE_FEATURES_SEL	0x014
#define REG_DRIVER_FEATURES	0x020
#define REG_DRIVER_FEATURES_SEL	0x024
#define REG_QUEUE_SEL		0x030
#define REG_QUEUE_NUM_MAX	0x034
#define REG_QUEUE_NUM		0x038
#define REG_QUEUE_READY		0x044
#define REG_QUEUE_NOTIFY	0x050
#define REG_INTERRUPT_STATUS	0x060
#define REG_INTERRUPT_ACK	0x064
#define REG_STATUS		0x070
#define REG_QUEUE_DESC_LOW	0x080
#define REG_QUEUE_DESC_HIGH	0x084
#define REG_QUEUE_DRIVER_LOW	0x090
#define REG_QUEUE_DRIVER_HIGH	0x094
#define REG_QUEUE_DEVICE_LOW	0x0a0
#define REG_QUEUE_DEVICE_HIGH	0x0a4
#define REG_CONFIG_GENERATION	0x0fc

#define VIRTIO_MMIO_MAGIC	0x74726976	/* "virt" */
#define VIRTIO_MMIO_VERSION	2
#define KILN_VENDOR_ID		0x4e4c494b	/* "KILN" */

static void kick_done(struct io_op *op, int res, unsigned flags);

int virtio_mmio_init(struct virtio_dev *d, const struct virtio_dev_ops *ops, void *priv,
		     struct vm *vm, const struct guest_mem *mem, struct ioloop *loop,
		     uint64_t base, uint32_t irq, struct kiln_err *err)
{
	unsigned q;
	int r;

	memset(d, 0, sizeof(*d));
	d->ops = ops;
	d->priv = priv;
	d->vm = vm;
	d->mem = mem;
	d->loop = loop;
	d->base = base;
	d->irq = irq;
	d->irqfd = -1;
	for (q = 0; q < VIRTIO_MAX_QUEUES; q++)
		d->kick_fd[q] = -1;
	pthread_mutex_init(&d->lock, NULL);
	d->offered = ops->features | 1ULL << VIRTIO_F_VERSION_1 | 1ULL << VIRTIO_F_RING_EVENT_IDX;
	if (ops->num_queues > VIRTIO_MAX_QUEUES || ops->queue_max > VIRTQ_MAX_SIZE)
		return kiln_fail(err, EINVAL, "%s: too many or too large queues", ops->name);
	if (!vm)
		return 0;

	d->irqfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (d->irqfd < 0)
		return kiln_fail(err, errno, "%s: eventfd: %s", ops->name, strerror(errno));
	{
		struct kvm_irqfd ifd = { .fd = (uint32_t)d->irqfd, .gsi = irq };

		if (ioctl(vm->fd, KVM_IRQFD, &ifd) < 0)
			return kiln_fail(err, errno, "%s: KVM_IRQFD: %s", ops->name, strerror(errno));
	}
	for (q = 0; q < ops->num_queues; q++) {
		struct kvm_ioeventfd ioe = {
			.datamatch = q,
			.addr = base + REG_QUEUE_NOTIFY,
			.len = 4,
			.flags = KVM_IOEVENTFD_FLAG_DATAMATCH,
		};

		d->kick_fd[q] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (d->kick_fd[q] < 0)
			return kiln_fail(err, errno, "%s: eventfd: %s", ops->name, strerror(errno));
		ioe.fd = d->kick_fd[q];
		if (ioctl(vm->fd, KVM_IOEVENTFD, &ioe) < 0)
			return kiln_fail(err, errno, "%s: KVM_IOEVENTFD: %s", ops->name, strerror(errno));
		d->kick[q].op.done = kick_done;
		d->kick[q].dev = d;
		d->kick[q].q = q;
		r = ioloop_watch(loop, d->kick_fd[q], &d->kick[q].op);
		if (r < 0)
			return kiln_fail(err, -r, "%s: cannot watch its queue notifications", ops->name);
	}
	r = bus_add(&vm->mmio, base, VIRTIO_MMIO_SIZE, virtio_mmio_io, d);
	if (r < 0)
		return kiln_fail(err, -r, "%s: MMIO window at %#" PRIx64 " is taken", ops->name, base);
	return 0;
}

void virtio_mmio_destroy(struct virtio_dev *d)
{
	unsigned q;

	if (!d->ops)
		return;		/* never initialised */
	if (d->ops->destroy)
		d->ops->destroy(d);
	for (q = 0; q < VIRTIO_MAX_QUEUES; q++)
		if (d->kick_fd[q] >= 0)
			close(d->kick_fd[q]);
	if (d->irqfd >= 0)
		close(d->irqfd);
	d->irqfd = -1;
	pthread_mutex_destroy(&d->lock);
	d->ops = NULL;
}

int virtio_running(const struct virtio_dev *d)
{
	return (d->status & VIRTIO_STATUS_DRIVER_OK) && !(d->status & VIRTIO_STATUS_NEEDS_RESET);
}

static void raise_irq(struct virtio_dev *d, uint32_t why)
{
	uint64_t one = 1;

	atomic_fetch_or(&d->isr, why);
	d->interrupts++;
	if (d->irqfd >= 0)
		(void)!write(d->irqfd, &one, sizeof(one));
}

void virtio_signal_used(struct virtio_dev *d, unsigned q)
{
	if (q < d->ops->num_queues && virtq_should_notify(&d->vq[q]))
		raise_irq(d, VIRTIO_INT_USED);
}

void virtio_needs_reset(struct virtio_dev *d, const char *why)
{
	/* One line per reset cycle: a looping guest must not flood the log. */
	if (d->status & VIRTIO_STATUS_NEEDS_RESET)
		return;
	fprintf(stderr, "kiln-vmm: %s: the guest driver broke the device: %s (device needs reset)\n",
		d->ops->name, why);
	d->status |= VIRTIO_STATUS_NEEDS_RESET;
	if (d->status & VIRTIO_STATUS_DRIVER_OK)
		raise_irq(d, VIRTIO_INT_CONFIG);
}

int virtio_cmdline_arg(const struct virtio_dev *d, char *buf, size_t len)
{
	return snprintf(buf, len, "virtio_mmio.device=%u@%#" PRIx64 ":%u",
			VIRTIO_MMIO_SIZE, d->base, d->irq);
}

void virtio_kick(struct virtio_dev *d, unsigned q)
{
	pthread_mutex_lock(&d->lock);
	d->kicks++;
	if (q < d->ops->num_queues && d->queue_ready[q] && virtio_running(d))
		d->ops->notify(d, q);
	pthread_mutex_unlock(&d->lock);
}

static void kick_done(struct io_op *op, int res, unsigned flags)
{
	struct virtio_kick *k = (struct virtio_kick *)op;
	uint64_t v;

	(void)flags;
	if (res < 0 || read(k->dev->kick_fd[k->q], &v, sizeof(v)) != sizeof(v))
		return;
	virtio_kick(k->dev, k->q);
}

static void device_reset(struct virtio_dev *d)
{
	unsigned q;

	if (d->ops->reset)
		d->ops->reset(d);
	d->status = 0;
	d->acked = 0;
	d->dev_feat_sel = d->drv_feat_sel = d->queue_sel = 0;
	atomic_store(&d->isr, 0);
	for (q = 0; q < VIRTIO_MAX_QUEUES; q++) {
		d->queue_ready[q] = 0;
		memset(&d->vq[q], 0, sizeof(d->vq[q]));
	}
}

static void set_status(struct virtio_dev *d, uint32_t v)
{
	char why[160];
	uint32_t old = d->status;

	if (v == 0) {
		device_reset(d);
		return;
	}
	if ((v & VIRTIO_STATUS_FEATURES_OK) && !(old & VIRTIO_STATUS_FEATURES_OK)) {
		/* 3.1.1: the device refuses features it never offered. */
		if (d->acked & ~d->offered) {
			fprintf(stderr, "kiln-vmm: %s: driver acked features %#" PRIx64 " that were never offered; refusing FEATURES_OK\n",
				d->ops->name, d->acked & ~d->offered);
			v &= ~(uint32_t)VIRTIO_STATUS_FEATURES_OK;
		} else if (!(d->acked & 1ULL << VIRTIO_F_VERSION_1)) {
			fprintf(stderr, "kiln-vmm: %s: driver did not accept VIRTIO_F_VERSION_1 (a legacy driver?)\n",
				d->ops->name);
			v &= ~(uint32_t)VIRTIO_STATUS_FEATURES_OK;
		}
	}
	if ((v & VIRTIO_STATUS_DRIVER_OK) && !(old & VIRTIO_STATUS_DRIVER_OK)) {
		if (!(v & VIRTIO_STATUS_FEATURES_OK)) {
			d->status = v & ~(uint32_t)VIRTIO_STATUS_DRIVER_OK;
			virtio_needs_reset(d, "DRIVER_OK without FEATURES_OK");
			return;
		}
		d->status = v;
		if (d->ops->activate && d->ops->activate(d) < 0) {
			snprintf(why, sizeof(why), "activation failed");
			virtio_needs_reset(d, why);
		}
		return;
	}
	/* NEEDS_RESET is the device's to set, not the driver's to clear. */
	d->status = v | (old & VIRTIO_STATUS_NEEDS_RESET);
}

static void queue_ready(struct virtio_dev *d, unsigned q, uint32_t v)
{
	struct kiln_err err;

	if (!v) {
		d->queue_ready[q] = 0;
		return;
	}
	if (d->queue_ready[q])
		return;
	if (d->vq[q].size > d->ops->queue_max) {
		virtio_needs_reset(d, "queue size above QueueNumMax");
		return;
	}
	d->vq[q].event_idx = (d->acked >> VIRTIO_F_RING_EVENT_IDX) & 1;
	if (virtq_enable(&d->vq[q], d->mem, &err) < 0) {
		virtio_needs_reset(d, err.msg);
		return;
	}
	d->queue_ready[q] = 1;
}

static uint32_t reg_read(struct virtio_dev *d, uint32_t off)
{
	unsigned q = d->queue_sel;
	int qok = q < d->ops->num_queues;

	switch (off) {
	case REG_MAGIC:
		return VIRTIO_MMIO_MAGIC;
	case REG_VERSION:
		return VIRTIO_MMIO_VERSION;
	case REG_DEVICE_ID:
		return d->ops->device_id;
	case REG_VENDOR_ID:
		return KILN_VENDOR_ID;
	case REG_DEVICE_FEATURES:
		if (d->dev_feat_sel > 1)
			return 0;
		return (uint32_t)(d->offered >> (32 * d->dev_feat_sel));
	case REG_QUEUE_NUM_MAX:
		return qok ? d->ops->queue_max : 0;
	case REG_QUEUE_READY:
		return qok ? (uint32_t)d->queue_ready[q] : 0;
	case REG_INTERRUPT_STATUS:
		return atomic_load(&d->isr);
	case REG_STATUS:
		return d->status;
	case REG_CONFIG_GENERATION:
		return d->config_gen;
	}
	return 0;
}

static void set_half(uint64_t *v, int high, uint32_t val)
{
	if (high)
		*v = (*v & 0xffffffffULL) | (uint64_t)val << 32;
	else
		*v = (*v & ~0xffffffffULL) | val;
}

static void reg_write(struct virtio_dev *d, uint32_t off, uint32_t v)
{
	unsigned q = d->queue_sel;
	/* Queue registers are writable only for a real, not yet ready queue. */
	int qok = q < d->ops->num_queues && !d->queue_ready[q];

	switch (off) {
	case REG_DEVICE_FEATURES_SEL:
		d->dev_feat_sel = v;
		break;
	case REG_DRIVER_FEATURES_SEL:
		d->drv_feat_sel = v;
		break;
	case REG_DRIVER_FEATURES:
		if (d->drv_feat_sel <= 1 && !(d->status & VIRTIO_STATUS_FEATURES_OK))
			set_half(&d->acked, d->drv_feat_sel == 1, v);
		break;
	case REG_QUEUE_SEL:
		d->queue_sel = v;
		break;
	case REG_QUEUE_NUM:
		if (qok)
			d->vq[q].size = (uint16_t)(v > 0xffff ? 0 : v);
		break;
	case REG_QUEUE_READY:
		if (q < d->ops->num_queues)
			queue_ready(d, q, v);
		break;
	case REG_QUEUE_NOTIFY:
		/* Kicks come by ioeventfd; one landing here names no real queue. */
		break;
	case REG_INTERRUPT_ACK:
		atomic_fetch_and(&d->isr, ~v);
		break;
	case REG_STATUS:
		set_status(d, v);
		break;
	case REG_QUEUE_DESC_LOW:
	case REG_QUEUE_DESC_HIGH:
		if (qok)
			set_half(&d->vq[q].desc_gpa, off == REG_QUEUE_DESC_HIGH, v);
		break;
	case REG_QUEUE_DRIVER_LOW:
	case REG_QUEUE_DRIVER_HIGH:
		if (qok)
			set_half(&d->vq[q].avail_gpa, off == REG_QUEUE_DRIVER_HIGH, v);
		break;
	case REG_QUEUE_DEVICE_LOW:
	case REG_QUEUE_DEVICE_HIGH:
		if (qok)
			set_half(&d->vq[q].used_gpa, off == REG_QUEUE_DEVICE_HIGH, v);
		break;
	}
}

void virtio_mmio_io(void *opaque, uint64_t addr, uint8_t *data, uint32_t size, int is_write)
{
	struct virtio_dev *d = opaque;
	uint64_t off = addr - d->base;

	if (addr < d->base || off >= VIRTIO_MMIO_SIZE || size > 8)
		return;
	pthread_mutex_lock(&d->lock);
	if (off >= VIRTIO_MMIO_CONFIG) {
		uint32_t coff = (uint32_t)(off - VIRTIO_MMIO_CONFIG);

		/* Config space: device-defined widths, bounded by its size. */
		if (coff < d->ops->config_size && size <= d->ops->config_size - coff) {
			if (is_write && d->ops->config_write)
				d->ops->config_write(d, coff, data, size);
			else if (!is_write && d->ops->config_read)
				d->ops->config_read(d, coff, data, size);
		}
	} else if (size == 4 && off % 4 == 0) {
		/* 4.2.2.2: the register window takes 32-bit accesses only. */
		uint32_t v;

		if (is_write) {
			memcpy(&v, data, 4);
			reg_write(d, (uint32_t)off, v);
		} else {
			v = reg_read(d, (uint32_t)off);
			memcpy(data, &v, 4);
		}
	}
	pthread_mutex_unlock(&d->lock);
}
