/*
 * virtio 1.x over MMIO: the split virtqueue (virtq.c) and the MMIO transport
 * (virtio_mmio.c). Spec references are to "Virtual I/O Device (VIRTIO)
 * Version 1.2".
 */
#ifndef KILN_VIRTIO_H
#define KILN_VIRTIO_H

#include <stdint.h>
#include <sys/uio.h>

#include "ioloop.h"
#include "snapfile.h"
#include "vmm.h"

#define VIRTQ_MAX_SIZE		256

#define VIRTQ_DESC_F_NEXT	1
#define VIRTQ_DESC_F_WRITE	2
#define VIRTQ_DESC_F_INDIRECT	4
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1

struct virtq_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

struct virtq_used_elem {
	uint32_t id;
	uint32_t len;
};

/* A split virtqueue (2.7) as the device sees it. */
struct virtq {
	uint16_t size;		/* QueueNum, a power of two <= VIRTQ_MAX_SIZE */
	uint16_t last_avail;	/* next avail ring slot to consume */
	uint16_t used_idx;	/* next used ring slot to fill */
	uint16_t signalled_used;/* used_idx when the driver was last notified */
	int event_idx;		/* VIRTIO_F_RING_EVENT_IDX negotiated */
	int broken;		/* the driver broke the ring: device needs reset */
	/*
	 * Which enabling of the queue this is: the transport gives every
	 * QueueReady=1 a new value and zeroes the whole struct when the
	 * driver disables or resets the queue. A request taken from the ring
	 * records it and is given back only while it still matches, so a
	 * completion never lands in a ring that was torn down or resized.
	 */
	uint32_t gen;
	uint64_t desc_gpa, avail_gpa, used_gpa;
	/* Host views, valid once virtq_enable() succeeded. */
	struct virtq_desc *desc;
	uint16_t *avail;	/* flags, idx, ring[size], used_event */
	uint16_t *used;		/* flags, idx, then used_elem ring, avail_event */
};

/* One request: its descriptors split into device-readable and -writable. */
struct virtq_chain {
	uint16_t head;
	uint16_t nread, nwrite;
	uint64_t read_len, write_len;
	struct iovec read[VIRTQ_MAX_SIZE];
	struct iovec write[VIRTQ_MAX_SIZE];
};

/*
 * Check the driver's ring addresses for size entries and map them. Returns 0,
 * or -EINVAL (with err) for a size that is not a power of two up to
 * VIRTQ_MAX_SIZE, misaligned rings, or rings outside guest RAM.
 */
int virtq_enable(struct virtq *q, const struct guest_mem *m, struct kiln_err *err);

/*
 * Take the next available request into c. Returns 1 when one was taken, 0
 * when the ring is empty, -EINVAL when the driver broke the ring (a loop, an
 * index out of range, a buffer outside guest RAM, a readable descriptor after
 * a writable one, an avail index that ran ahead); then q->broken is set, the
 * reason is in err, and the device must go to NEEDS_RESET.
 */
int virtq_pop(struct virtq *q, const struct guest_mem *m, struct virtq_chain *c,
	      struct kiln_err *err);

/*
 * Return request head to the driver with len bytes written. Nothing is
 * written while the queue is not enabled (rings unmapped).
 */
void virtq_push(struct virtq *q, uint16_t head, uint32_t len);

/*
 * Return request head, taken when the queue's gen was gen, unless the
 * driver has disabled, reset or re-enabled the queue since: then the
 * completion is dropped (the guest gave up the request with its ring).
 * Returns 1 when pushed, 0 when dropped.
 */
int virtq_push_gen(struct virtq *q, uint32_t gen, uint16_t head, uint32_t len);

/*
 * Ask the driver to kick on the very next buffer it adds (EVENT_IDX's
 * avail_event, 2.7.10), though the ring still holds unused ones: for a
 * queue whose buffers the device keeps in reserve, like vsock's events.
 */
void virtq_kick_on_next(struct virtq *q);

/*
 * Should the driver be interrupted for what was pushed since the last call?
 * Honours VIRTQ_AVAIL_F_NO_INTERRUPT and, when negotiated, used_event.
 */
int virtq_should_notify(struct virtq *q);

/* Copy up to len bytes out of iovecs (starting at byte off); returns bytes copied. */
size_t iov_to_buf(const struct iovec *iov, unsigned n, size_t off, void *buf, size_t len);
/* Copy up to len bytes into iovecs (starting at byte off); returns bytes copied. */
size_t iov_from_buf(const struct iovec *iov, unsigned n, size_t off, const void *buf, size_t len);

/* ---- virtio-mmio transport (virtio 1.2, 4.2.2) -------------------------- */

#define VIRTIO_MMIO_SIZE	0x200
#define VIRTIO_MMIO_CONFIG	0x100
#define VIRTIO_MAX_QUEUES	8

/* Device status (2.1). */
#define VIRTIO_STATUS_ACKNOWLEDGE	1
#define VIRTIO_STATUS_DRIVER		2
#define VIRTIO_STATUS_DRIVER_OK		4
#define VIRTIO_STATUS_FEATURES_OK	8
#define VIRTIO_STATUS_NEEDS_RESET	64
#define VIRTIO_STATUS_FAILED		128

/* Reserved feature bits (6). */
#define VIRTIO_F_RING_EVENT_IDX		29
#define VIRTIO_F_VERSION_1		32

#define VIRTIO_INT_USED		1
#define VIRTIO_INT_CONFIG	2

struct virtio_dev;
struct virtio_dev_ops;

/*
 * Device constructors for kiln-vmm's command-line options: each parses its
 * option's SPEC, opens what it needs, allocates its state and calls
 * virtio_mmio_init(). Return 0 or -errno with err naming the problem.
 */
typedef int virtio_create_fn(struct virtio_dev *d, const char *spec, struct vm *vm,
			     const struct guest_mem *mem, struct ioloop *loop,
			     uint64_t base, uint32_t irq, struct kiln_err *err);

/*
 * What snapshot code lends a device's persist hooks: the snapshot's own
 * directory, opened and written only under snapshot/'s rules (new files,
 * no links). The hooks decide what of a device goes into a snapshot.
 */
struct dev_persist {
	void *opaque;
	const char *dir;		/* the snapshot's directory, for messages */
	/* Taking: copy the host file path into a new file name in the snapshot; 0 or -errno with err. */
	int (*copy_in)(struct dev_persist *p, const char *path, const char *name, struct kiln_err *err);
	/*
	 * Restoring: a private writable copy of the snapshot's file name, named
	 * copy where the restorer keeps copies (--clone-dir), else unnamed;
	 * writes the path the device opens to out.
	 */
	int (*copy_out)(struct dev_persist *p, const char *name, const char *copy, char *out, size_t outlen,
			struct kiln_err *err);
	int slot;			/* restoring: the device's slot */
	unsigned nfiles;		/* files copy_in has written so far (hooks name files by it) */
	uint64_t bytes;			/* data copy_in copied */
};

/*
 * What a device type provides; each device file exports one as a
 * `static const` (kvmtool's pattern). Callbacks run with the device lock
 * held: config_*, activate and reset on a vCPU thread, notify on the I/O
 * thread. activate and reset must not touch the ring directly: use
 * ioloop_call() to get onto the I/O thread.
 */
struct virtio_dev_ops {
	const char *name;
	uint32_t device_id;		/* 5.x: 1 net, 2 block, 19 vsock */
	uint16_t num_queues;
	uint16_t queue_max;		/* largest QueueNum the device accepts */
	uint32_t config_size;
	/* Device-specific features offered (VERSION_1 and EVENT_IDX are added). */
	uint64_t features;
	void (*config_read)(struct virtio_dev *d, uint32_t off, void *buf, uint32_t len);
	void (*config_write)(struct virtio_dev *d, uint32_t off, const void *buf, uint32_t len);
	/* The driver set DRIVER_OK. Return -errno to put the device in NEEDS_RESET. */
	int (*activate)(struct virtio_dev *d);
	/* The driver kicked queue q (I/O thread). */
	void (*notify)(struct virtio_dev *d, unsigned q);
	/* The driver reset the device: drop in-flight state. */
	void (*reset)(struct virtio_dev *d);
	/* kiln-vmm is done with the device: free priv (I/O thread stopped). */
	void (*destroy)(struct virtio_dev *d);

	/*
	 * Snapshots (docs/snapshot.md). inflight: requests that may still read
	 * or write guest memory; a snapshot waits (vCPUs paused) until every
	 * device says 0. save: append the device-specific state (I/O thread,
	 * lock held, inflight 0). restore: validate state written by save, as
	 * strictly as guest input, and apply it to a device just created from
	 * the same kind of spec (before the VM runs; err names what is wrong).
	 * resumed: the restored VM is about to run (I/O thread): re-announce
	 * what the guest must learn, e.g. vsock's TRANSPORT_RESET.
	 * save runs before the transport's state is written and may give back
	 * ring entries the device took but never used. restore gets a reader
	 * over exactly the bytes save wrote and must consume all of them;
	 * it runs before the transport state is applied, and on failure leaves
	 * the device as it was.
	 */
	unsigned (*inflight)(struct virtio_dev *d);
	int (*save)(struct virtio_dev *d, struct snap_buf *w);
	int (*restore)(struct virtio_dev *d, struct snap_rd *r, struct kiln_err *err);
	void (*resumed)(struct virtio_dev *d);
	/* Append the device's counters as JSON members: `,"name":N...`; returns snprintf's count. */
	int (*stats)(struct virtio_dev *d, char *buf, size_t len);

	/*
	 * The device's kind: the kiln-vmm option that makes one ("disk" for
	 * --disk) and its constructor. A snapshot records each device's kind
	 * and the SPEC it was made from; the persist and clone hooks below are
	 * all that snapshot code knows of a kind (NULL: the spec as it is).
	 *
	 * spec_persist (taking): the spec to record for a device made from
	 * spec, after copying into the snapshot whatever it must keep (p's
	 * copy_in). spec_check (parsing a snapshot, hostile input): 0 if the
	 * recorded spec is one spec_persist could have written, and *own = 1
	 * if the snapshot holds the device's backing itself, else -EINVAL with
	 * err. spec_clone (restoring an own device without an option): the
	 * spec to create it from (p's copy_out). spec_needs (restoring a
	 * device that is not the snapshot's own, without an option): what the
	 * user must pass, for "device N is <it>". own_file: name is a file
	 * spec_persist may write into a snapshot's directory.
	 */
	const char *kind;
	virtio_create_fn *create;
	int (*spec_persist)(const char *spec, struct dev_persist *p, char *out, size_t outlen, struct kiln_err *err);
	int (*spec_check)(const char *spec, int *own, struct kiln_err *err);
	int (*spec_clone)(const char *spec, struct dev_persist *p, char *out, size_t outlen, struct kiln_err *err);
	void (*spec_needs)(const char *spec, char *buf, size_t len);
	int (*own_file)(const char *name);
};

struct virtio_dev {
	const struct virtio_dev_ops *ops;
	void *priv;			/* the device's own state */
	struct vm *vm;
	const struct guest_mem *mem;
	struct ioloop *loop;
	uint64_t base;			/* MMIO base address */
	uint32_t irq;			/* GSI */
	pthread_mutex_t lock;

	uint32_t status;
	uint32_t dev_feat_sel, drv_feat_sel, queue_sel, config_gen;
	_Atomic uint32_t isr;
	uint64_t offered, acked;
	int queue_ready[VIRTIO_MAX_QUEUES];
	/*
	 * What the driver wrote to QueueNum and the ring address registers.
	 * Only QueueReady=1 copies it into vq, after checking it: the live
	 * queue never sees a size or address it was not validated with.
	 */
	struct virtq_cfg {
		uint16_t num;
		uint64_t desc, avail, used;
	} qcfg[VIRTIO_MAX_QUEUES];
	uint32_t queue_epoch;		/* the last gen handed to an enabled queue */
	struct virtq vq[VIRTIO_MAX_QUEUES];

	int irqfd;			/* KVM_IRQFD: a write raises irq */
	int kick_fd[VIRTIO_MAX_QUEUES];	/* KVM_IOEVENTFD on QueueNotify, one per queue */
	struct virtio_kick {
		struct io_op op;	/* first: the loop hands this back */
		struct virtio_dev *dev;
		unsigned q;
	} kick[VIRTIO_MAX_QUEUES];
	uint64_t kicks, interrupts;
};

/*
 * Set up a virtio-mmio device at base (VIRTIO_MMIO_SIZE bytes) raising irq:
 * its irqfd, one ioeventfd per queue (watched on loop), and its MMIO region
 * on vm. vm may be NULL for unit tests (no KVM: nothing is registered, and
 * interrupts only set the ISR). Returns 0 or -errno with err.
 */
int virtio_mmio_init(struct virtio_dev *d, const struct virtio_dev_ops *ops, void *priv,
		     struct vm *vm, const struct guest_mem *mem, struct ioloop *loop,
		     uint64_t base, uint32_t irq, struct kiln_err *err);
/* Undo virtio_mmio_init and call ops->destroy. */
void virtio_mmio_destroy(struct virtio_dev *d);

/* MMIO handler for the device's register window (vCPU thread). */
void virtio_mmio_io(void *opaque, uint64_t addr, uint8_t *data, uint32_t size, int is_write);

/* Run notify for queue q as a kick would (I/O thread; used by tests too). */
void virtio_kick(struct virtio_dev *d, unsigned q);

/* Interrupt the driver if queue q's ring asks for it (device lock held). */
void virtio_signal_used(struct virtio_dev *d, unsigned q);

/* The device's config space changed (a disk's capacity): a new generation and a config interrupt. Under d->lock. */
void virtio_config_changed(struct virtio_dev *d);

/*
 * The driver broke the device's rules (a bad ring, a bad request): log why,
 * set DEVICE_NEEDS_RESET and tell the driver with a config interrupt (4.2.3.4).
 */
void virtio_needs_reset(struct virtio_dev *d, const char *why);

/* Is the device live (DRIVER_OK, no NEEDS_RESET)? */
int virtio_running(const struct virtio_dev *d);

/*
 * Snapshot the transport (status, features, selectors, ISR, every queue's
 * addresses and indices) and then the device's own state (ops->save). I/O
 * thread, device idle (virtio_mmio_inflight() 0, vCPUs paused); guest
 * memory must be captured before the I/O thread handles anything else, as
 * any later completion may write it. Returns 0 or -errno.
 */
int virtio_mmio_save(struct virtio_dev *d, struct snap_buf *w);

/*
 * Validate and apply state written by virtio_mmio_save to a device freshly
 * created by the same constructor, before the VM runs: features within the
 * offer, queue sizes and ring addresses as QueueReady would check them,
 * indices within the queue size, then ops->restore. r must cover exactly
 * what virtio_mmio_save wrote. Nothing is applied unless all of it is valid.
 * Returns 0, -EINVAL with err naming the problem, or -EBUSY if the driver
 * has already started the device.
 */
int virtio_mmio_restore(struct virtio_dev *d, struct snap_rd *r, struct kiln_err *err);

/*
 * The restored VM is about to run (I/O thread): ops->resumed, then process
 * anything the driver queued before the snapshot, and re-raise a pending
 * interrupt.
 */
void virtio_mmio_resumed(struct virtio_dev *d);

/*
 * Requests of the device that may still write guest memory (ops->inflight,
 * 0 if it has none). Any thread; takes the device lock.
 */
unsigned virtio_mmio_inflight(struct virtio_dev *d);

/*
 * One JSON object with the device's counters for the control socket, e.g.
 * {"type":"blk","status":15,"kicks":N,"interrupts":N,"reads":N,...}. Any
 * thread; takes the device lock. Returns its length, or -ENOSPC if len is
 * too small.
 */
int virtio_mmio_stats(struct virtio_dev *d, char *buf, size_t len);

/* "virtio_mmio.device=<size>@<base>:<irq>" for the kernel command line. */
int virtio_cmdline_arg(const struct virtio_dev *d, char *buf, size_t len);

/* ---- The device kinds, and where kiln-vmm puts devices (virtio_kinds.c) ---- */

#define VIRTIO_MAX_DEVICES	16
#define VIRTIO_MMIO_BASE	0xd0000000ULL
#define VIRTIO_MMIO_STEP	0x1000ULL

/* Every kind kiln-vmm can make, NULL-terminated. */
extern const struct virtio_dev_ops *const virtio_kinds[];

/* The kind whose option is name ("disk", "net", "vsock"), or NULL. */
const struct virtio_dev_ops *virtio_kind_find(const char *name);

/*
 * Create device slot (0 to VIRTIO_MAX_DEVICES - 1) of kind from spec at the
 * MMIO address and IRQ that slot always has, so a snapshot's devices come
 * back where the guest knew them. Returns 0 or -errno with err.
 */
int virtio_dev_create_at(struct virtio_dev *d, int slot, const struct virtio_dev_ops *kind, const char *spec,
			 struct vm *vm, const struct guest_mem *mem, struct ioloop *loop, struct kiln_err *err);

/* Slot's MMIO base and IRQ; -EINVAL for a slot out of range. */
int virtio_slot_place(int slot, uint64_t *base, uint32_t *irq);

#endif
