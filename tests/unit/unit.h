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
Suite *suite_cpuid(void);
Suite *suite_base64(void);
Suite *suite_virtq(void);
Suite *suite_vsock(void);
Suite *suite_blk(void);
Suite *suite_net(void);
Suite *suite_proto(void);
Suite *suite_devsnap(void);
Suite *suite_snapshot(void);

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

/* Guest memory of mib MiB for a test (fails the test if it cannot map). */
void unit_mem(struct guest_mem *m, uint64_t mib);

#endif
