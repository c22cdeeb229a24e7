/* kiln's Check unit tests: one suite per part, run by test_main.c. */
#ifndef KILN_UNIT_H
#define KILN_UNIT_H

#include <check.h>

#include "vmm.h"

Suite *suite_memory(void);
Suite *suite_loader(void);
Suite *suite_boot(void);
Suite *suite_exit(void);
Suite *suite_serial(void);
Suite *suite_log(void);
Suite *suite_cpuid(void);
Suite *suite_base64(void);
Suite *suite_virtq(void);
Suite *suite_vsock(void);
Suite *suite_blk(void);
Suite *suite_net(void);
Suite *suite_proto(void);
Suite *suite_devsnap(void);
Suite *suite_snapshot(void);
Suite *suite_workingset(void);
Suite *suite_usock(void);

struct virtio_dev;

/* Register access to a virtio-mmio device at d->base, as its driver. */
void vdrv_write(struct virtio_dev *d, uint32_t off, uint32_t v);
uint32_t vdrv_read(struct virtio_dev *d, uint32_t off);

/*
 * The driver's side of virtio 1.2 3.1.1: reset, accept want & offered
 * (failing the test unless FEATURES_OK sticks), set up nq queues of qsize
 * with desc at ring(q), avail at +0x1000 and used at +0x2000, DRIVER_OK.
 * Returns the features accepted.
 */
uint64_t vdrv_init(struct virtio_dev *d, uint64_t want, unsigned nq, unsigned qsize,
		   uint64_t (*ring)(unsigned q));

/*
 * The driver's side of split virtqueues laid out as vdrv_init sets them up
 * (desc at ring(q), avail at +0x1000, used at +0x2000), in guest memory m.
 */
#define VDRV_MAX_QUEUES	4
struct virtq_used_elem;
struct vdrv_rings {
	const struct guest_mem *m;
	uint64_t (*ring)(unsigned q);
	unsigned qsize;
	uint16_t next_avail[VDRV_MAX_QUEUES];	/* the driver's avail index per queue */
};

/* Clear queue q's rings and the driver's index (before vdrv_init). */
void vdrv_rings_clear(struct vdrv_rings *r, unsigned q);
uint16_t *vdrv_avail(struct vdrv_rings *r, unsigned q);	/* flags, idx, ring[], used_event */
uint16_t *vdrv_used(struct vdrv_rings *r, unsigned q);	/* flags, idx, elems, avail_event */
uint16_t vdrv_used_idx(struct vdrv_rings *r, unsigned q);
/* The used element in slot i (mod the queue size) of queue q. */
void vdrv_used_elem(struct vdrv_rings *r, unsigned q, unsigned i, struct virtq_used_elem *e);
void vdrv_set_desc(struct vdrv_rings *r, unsigned q, unsigned i, uint64_t addr, uint32_t len,
		   uint16_t flags, uint16_t next);
/* Make head available on queue q, without a kick. */
void vdrv_offer(struct vdrv_rings *r, unsigned q, uint16_t head);

/* Guest memory of mib MiB for a test (fails the test if it cannot map). */
void unit_mem(struct guest_mem *m, uint64_t mib);

#endif
