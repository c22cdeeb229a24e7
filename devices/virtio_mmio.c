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

#define STATUS_KNOWN	(VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_DRIVER_OK | \
			 VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED)

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

		if ((r = KVM_IOCTL(vm->fd, KVM_IRQFD, &ifd, err)) < 0)
			return kiln_err_prefix(err, r, "%s", ops->name);
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
		if ((r = KVM_IOCTL(vm->fd, KVM_IOEVENTFD, &ioe, err)) < 0)
			return kiln_err_prefix(err, r, "%s", ops->name);
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

void virtio_config_changed(struct virtio_dev *d)
{
	d->config_gen++;
	if (d->status & VIRTIO_STATUS_DRIVER_OK)
		raise_irq(d, VIRTIO_INT_CONFIG);
}

void virtio_needs_reset(struct virtio_dev *d, const char *why)
{
	static struct log_limit lim = LOG_LIMIT("virtio devices broken by their drivers");

	/* One line per reset cycle at most, and a looping guest is rate-limited. */
	if (d->status & VIRTIO_STATUS_NEEDS_RESET)
		return;
	log_guest(&lim, "%s: the guest driver broke the device: %s (device needs reset)", d->ops->name, why);
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
		memset(&d->qcfg[q], 0, sizeof(d->qcfg[q]));
	}
}

static void set_status(struct virtio_dev *d, uint32_t v)
{
	static struct log_limit lim = LOG_LIMIT("virtio features refused");
	char why[160];
	uint32_t old = d->status;

	if (v == 0) {
		device_reset(d);
		return;
	}
	if ((v & VIRTIO_STATUS_FEATURES_OK) && !(old & VIRTIO_STATUS_FEATURES_OK)) {
		/* 3.1.1: the device refuses features it never offered. */
		if (d->acked & ~d->offered) {
			log_guest(&lim, "%s: driver acked features %#" PRIx64 " that were never offered; refusing FEATURES_OK",
				  d->ops->name, d->acked & ~d->offered);
			v &= ~(uint32_t)VIRTIO_STATUS_FEATURES_OK;
		} else if (!(d->acked & 1ULL << VIRTIO_F_VERSION_1)) {
			log_guest(&lim, "%s: driver did not accept VIRTIO_F_VERSION_1 (a legacy driver?)", d->ops->name);
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

/* A gen no enabling of any of the device's queues has had yet; never 0. */
static uint32_t queue_next_gen(struct virtio_dev *d)
{
	if (++d->queue_epoch == 0)
		d->queue_epoch = 1;
	return d->queue_epoch;
}

/*
 * QueueReady (4.2.2.2). Enabling checks what the driver wrote and maps the
 * rings; disabling unmaps them at once, so requests still in flight find
 * no ring to complete into (virtq_push_gen drops them) and a new QueueNum
 * can only take effect through the checks of the next enabling.
 */
static void queue_ready(struct virtio_dev *d, unsigned q, uint32_t v)
{
	const struct virtq_cfg *cfg = &d->qcfg[q];
	struct virtq vq;
	struct kiln_err err;

	if (!v) {
		d->queue_ready[q] = 0;
		memset(&d->vq[q], 0, sizeof(d->vq[q]));
		return;
	}
	if (d->queue_ready[q])
		return;
	if (cfg->num > d->ops->queue_max) {
		virtio_needs_reset(d, "queue size above QueueNumMax");
		return;
	}
	memset(&vq, 0, sizeof(vq));
	vq.size = cfg->num;
	vq.desc_gpa = cfg->desc;
	vq.avail_gpa = cfg->avail;
	vq.used_gpa = cfg->used;
	vq.event_idx = (d->acked >> VIRTIO_F_RING_EVENT_IDX) & 1;
	if (virtq_enable(&vq, d->mem, &err) < 0) {
		virtio_needs_reset(d, err.msg);
		return;
	}
	vq.gen = queue_next_gen(d);
	d->vq[q] = vq;
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
			d->qcfg[q].num = (uint16_t)(v > 0xffff ? 0 : v);
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
		/* Bits 2.1 does not define are dropped, so a snapshot never holds them. */
		set_status(d, v & STATUS_KNOWN);
		break;
	case REG_QUEUE_DESC_LOW:
	case REG_QUEUE_DESC_HIGH:
		if (qok)
			set_half(&d->qcfg[q].desc, off == REG_QUEUE_DESC_HIGH, v);
		break;
	case REG_QUEUE_DRIVER_LOW:
	case REG_QUEUE_DRIVER_HIGH:
		if (qok)
			set_half(&d->qcfg[q].avail, off == REG_QUEUE_DRIVER_HIGH, v);
		break;
	case REG_QUEUE_DEVICE_LOW:
	case REG_QUEUE_DEVICE_HIGH:
		if (qok)
			set_half(&d->qcfg[q].used, off == REG_QUEUE_DEVICE_HIGH, v);
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

/* ---- snapshots ------------------------------------------------------------ */

/*
 * The transport's part of a device's state. The device's own part follows
 * as a length-prefixed blob, so that it gets a reader bounded to exactly its
 * bytes and the transport can check the whole layout before either part is
 * applied. A new layout is a new version, refused by an older kiln-vmm.
 */
#define DEVSTATE_VERSION	1
#define DEVSTATE_DEV_MAX	4096	/* bytes of device-specific state */

int virtio_mmio_save(struct virtio_dev *d, struct snap_buf *w)
{
	struct snap_buf dev;
	unsigned q;
	int r = 0;

	snapw_init(&dev);
	pthread_mutex_lock(&d->lock);
	/*
	 * The device's part first: saving may hand back ring entries it took
	 * but never used (moving last_avail back), which the queue state
	 * written below must already show.
	 */
	if (d->ops->save)
		r = d->ops->save(d, &dev);
	snapw_u16(w, DEVSTATE_VERSION);
	snapw_u32(w, d->ops->device_id);
	snapw_u16(w, d->ops->num_queues);
	snapw_u32(w, d->status);
	snapw_u32(w, d->dev_feat_sel);
	snapw_u32(w, d->drv_feat_sel);
	snapw_u32(w, d->queue_sel);
	snapw_u32(w, d->config_gen);
	snapw_u32(w, atomic_load(&d->isr));
	snapw_u64(w, d->offered);
	snapw_u64(w, d->acked);
	for (q = 0; q < d->ops->num_queues; q++) {
		const struct virtq *vq = &d->vq[q];
		const struct virtq_cfg *cfg = &d->qcfg[q];	/* vq's own values once ready */

		snapw_u8(w, (uint8_t)d->queue_ready[q]);
		snapw_u16(w, cfg->num);
		snapw_u16(w, vq->last_avail);
		snapw_u16(w, vq->used_idx);
		snapw_u16(w, vq->signalled_used);
		snapw_u8(w, (uint8_t)vq->event_idx);
		snapw_u8(w, (uint8_t)vq->broken);
		snapw_u64(w, cfg->desc);
		snapw_u64(w, cfg->avail);
		snapw_u64(w, cfg->used);
	}
	pthread_mutex_unlock(&d->lock);
	if (dev.len > DEVSTATE_DEV_MAX)
		r = -E2BIG;
	snapw_blob(w, dev.p, (uint32_t)dev.len);
	if (dev.oom || w->oom)
		r = -ENOMEM;
	snapw_free(&dev);
	return r;
}

/* The transport state as read, applied only once all of it is valid. */
struct devstate {
	uint32_t status, dev_feat_sel, drv_feat_sel, queue_sel, config_gen, isr;
	uint64_t offered, acked;
	int ready[VIRTIO_MAX_QUEUES];
	struct virtq vq[VIRTIO_MAX_QUEUES];
};

/* Read and check one queue; a ready one is mapped as QueueReady would. */
static int restore_queue(struct virtio_dev *d, struct snap_rd *r, unsigned q, struct devstate *s,
			 struct kiln_err *err)
{
	const char *name = d->ops->name;
	struct virtq *vq = &s->vq[q];
	uint8_t ready, event_idx, broken;
	uint16_t last_avail, used_idx, signalled;
	struct kiln_err why;

	ready = snapr_u8(r, "queue ready");
	vq->size = snapr_u16(r, "queue size");
	last_avail = snapr_u16(r, "queue last_avail");
	used_idx = snapr_u16(r, "queue used_idx");
	signalled = snapr_u16(r, "queue signalled_used");
	event_idx = snapr_u8(r, "queue event_idx");
	broken = snapr_u8(r, "queue broken");
	vq->desc_gpa = snapr_u64(r, "queue desc address");
	vq->avail_gpa = snapr_u64(r, "queue driver address");
	vq->used_gpa = snapr_u64(r, "queue device address");
	if (!snapr_ok(r))
		return kiln_fail(err, EINVAL, "%s state: queue %u: %s", name, q, r->err);
	if (ready > 1 || event_idx > 1 || broken > 1)
		return kiln_fail(err, EINVAL, "%s state: queue %u: flags (ready %u, event_idx %u, broken %u) are not 0 or 1",
				 name, q, ready, event_idx, broken);
	s->ready[q] = ready;
	vq->event_idx = event_idx;
	if (!ready) {
		/*
		 * A queue being set up keeps what the driver wrote; QueueReady
		 * checks it and zeroes the indices when the driver enables it.
		 */
		return 0;
	}
	if (vq->size == 0 || vq->size > d->ops->queue_max || (vq->size & (vq->size - 1)))
		return kiln_fail(err, EINVAL, "%s state: queue %u size %u is not a power of two up to %u",
				 name, q, vq->size, d->ops->queue_max);
	if (virtq_enable(vq, d->mem, &why) < 0)
		return kiln_fail(err, EINVAL, "%s state: queue %u: %s", name, q, why.msg);
	/* The device never has more requests taken, or used entries unsignalled, than the ring holds. */
	if ((uint16_t)(last_avail - used_idx) > vq->size)
		return kiln_fail(err, EINVAL, "%s state: queue %u last_avail %u is more than its size %u ahead of used_idx %u",
				 name, q, last_avail, vq->size, used_idx);
	if ((uint16_t)(used_idx - signalled) > vq->size)
		return kiln_fail(err, EINVAL, "%s state: queue %u used_idx %u is more than its size %u ahead of signalled_used %u",
				 name, q, used_idx, vq->size, signalled);
	vq->last_avail = last_avail;
	vq->used_idx = used_idx;
	vq->signalled_used = signalled;
	vq->broken = broken;
	return 0;
}

int virtio_mmio_restore(struct virtio_dev *d, struct snap_rd *r, struct kiln_err *err)
{
	const struct virtio_dev_ops *ops = d->ops;
	struct devstate s;
	struct snap_rd dr;
	const void *dev_part;
	uint32_t dev_len, device_id;
	uint16_t version, nq;
	unsigned q;
	int ret;

	memset(&s, 0, sizeof(s));
	version = snapr_u16(r, "version");
	device_id = snapr_u32(r, "device id");
	nq = snapr_u16(r, "queue count");
	if (!snapr_ok(r))
		return kiln_fail(err, EINVAL, "%s state: %s", ops->name, r->err);
	if (version != DEVSTATE_VERSION)
		return kiln_fail(err, EINVAL, "%s state: format version %u, this kiln-vmm reads version %u",
				 ops->name, version, DEVSTATE_VERSION);
	if (device_id != ops->device_id || nq != ops->num_queues)
		return kiln_fail(err, EINVAL, "%s state: saved from virtio device type %u with %u queues, this is type %u with %u",
				 ops->name, device_id, nq, ops->device_id, ops->num_queues);
	s.status = snapr_u32(r, "status");
	s.dev_feat_sel = snapr_u32(r, "device features select");
	s.drv_feat_sel = snapr_u32(r, "driver features select");
	s.queue_sel = snapr_u32(r, "queue select");
	s.config_gen = snapr_u32(r, "config generation");
	s.isr = snapr_u32(r, "interrupt status");
	s.offered = snapr_u64(r, "offered features");
	s.acked = snapr_u64(r, "acked features");
	if (!snapr_ok(r))
		return kiln_fail(err, EINVAL, "%s state: %s", ops->name, r->err);
	if (s.offered != d->offered)
		return kiln_fail(err, EINVAL, "%s state: the saved device offered features %#" PRIx64 ", this one offers %#" PRIx64 " (created with other options?)",
				 ops->name, s.offered, d->offered);
	if (s.acked & ~s.offered)
		return kiln_fail(err, EINVAL, "%s state: acked features %#" PRIx64 " were never offered",
				 ops->name, s.acked & ~s.offered);
	if (s.status & ~(uint32_t)STATUS_KNOWN)
		return kiln_fail(err, EINVAL, "%s state: status %#x has unknown bits", ops->name, s.status);
	if ((s.status & VIRTIO_STATUS_DRIVER_OK) && !(s.status & VIRTIO_STATUS_FEATURES_OK))
		return kiln_fail(err, EINVAL, "%s state: status %#x has DRIVER_OK without FEATURES_OK",
				 ops->name, s.status);
	if ((s.status & VIRTIO_STATUS_FEATURES_OK) && !(s.acked & 1ULL << VIRTIO_F_VERSION_1))
		return kiln_fail(err, EINVAL, "%s state: FEATURES_OK without VIRTIO_F_VERSION_1 acked", ops->name);
	if (s.dev_feat_sel > 1 || s.drv_feat_sel > 1)
		return kiln_fail(err, EINVAL, "%s state: feature selects %u and %u, not 0 or 1",
				 ops->name, s.dev_feat_sel, s.drv_feat_sel);
	if (s.queue_sel >= ops->num_queues)
		return kiln_fail(err, EINVAL, "%s state: queue select %u, the device has %u queues",
				 ops->name, s.queue_sel, ops->num_queues);
	if (s.isr > (VIRTIO_INT_USED | VIRTIO_INT_CONFIG))
		return kiln_fail(err, EINVAL, "%s state: interrupt status %#x has unknown bits", ops->name, s.isr);
	for (q = 0; q < nq; q++) {
		ret = restore_queue(d, r, q, &s, err);
		if (ret < 0)
			return ret;
	}
	dev_part = snapr_blob(r, DEVSTATE_DEV_MAX, &dev_len, "device-specific state");
	if (snapr_end(r, "device state") < 0)
		return kiln_fail(err, EINVAL, "%s state: %s", ops->name, r->err);
	snapr_init(&dr, dev_part, dev_len);

	pthread_mutex_lock(&d->lock);
	if (d->status != 0) {
		pthread_mutex_unlock(&d->lock);
		return kiln_fail(err, EBUSY, "%s: cannot restore state into a device the driver is using", ops->name);
	}
	/* The device validates its part before it applies any of it. */
	ret = 0;
	if (ops->restore)
		ret = ops->restore(d, &dr, err);
	else if (dev_len)
		ret = kiln_fail(err, EINVAL, "%s state: %u bytes of device state, this device keeps none",
				ops->name, dev_len);
	if (ret == 0) {
		d->status = s.status;
		d->dev_feat_sel = s.dev_feat_sel;
		d->drv_feat_sel = s.drv_feat_sel;
		d->queue_sel = s.queue_sel;
		d->config_gen = s.config_gen;
		atomic_store(&d->isr, s.isr);
		d->acked = s.acked;
		for (q = 0; q < VIRTIO_MAX_QUEUES; q++) {
			const struct virtq *vq = &s.vq[q];

			d->queue_ready[q] = s.ready[q];
			d->qcfg[q] = (struct virtq_cfg){ vq->size, vq->desc_gpa, vq->avail_gpa, vq->used_gpa };
			memset(&d->vq[q], 0, sizeof(d->vq[q]));
			if (s.ready[q]) {
				d->vq[q] = *vq;
				d->vq[q].gen = queue_next_gen(d);
			}
		}
	}
	pthread_mutex_unlock(&d->lock);
	return ret;
}

void virtio_mmio_resumed(struct virtio_dev *d)
{
	uint64_t one = 1;
	uint32_t isr;
	unsigned q;

	pthread_mutex_lock(&d->lock);
	isr = atomic_load(&d->isr);
	if (d->ops->resumed)
		d->ops->resumed(d);
	/* Kicks the driver sent before the snapshot died with the old VMM's ioeventfds. */
	for (q = 0; q < d->ops->num_queues; q++)
		if (d->queue_ready[q] && virtio_running(d))
			d->ops->notify(d, q);
	/* The driver may not have seen the interrupt behind a pending ISR yet. */
	if (isr && d->irqfd >= 0)
		(void)!write(d->irqfd, &one, sizeof(one));
	pthread_mutex_unlock(&d->lock);
}

unsigned virtio_mmio_inflight(struct virtio_dev *d)
{
	unsigned n = 0;

	pthread_mutex_lock(&d->lock);
	if (d->ops->inflight)
		n = d->ops->inflight(d);
	pthread_mutex_unlock(&d->lock);
	return n;
}

int virtio_mmio_stats(struct virtio_dev *d, char *buf, size_t len)
{
	const char *type = d->ops->name;
	size_t n;
	int r;

	if (strncmp(type, "virtio-", 7) == 0)
		type += 7;
	pthread_mutex_lock(&d->lock);
	r = snprintf(buf, len, "{\"type\":\"%s\",\"status\":%u,\"kicks\":%" PRIu64 ",\"interrupts\":%" PRIu64,
		     type, d->status, d->kicks, d->interrupts);
	n = r < 0 ? len : (size_t)r;
	if (n < len && d->ops->stats) {
		r = d->ops->stats(d, buf + n, len - n);
		n += r < 0 ? len : (size_t)r;
	}
	pthread_mutex_unlock(&d->lock);
	if (n + 1 >= len)
		return -ENOSPC;
	buf[n++] = '}';
	buf[n] = '\0';
	return (int)n;
}
