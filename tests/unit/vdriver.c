/*
 * A guest driver for the device tests: register access and the driver's side
 * of device initialisation (virtio 1.2, 3.1.1) over the virtio-mmio transport.
 */
#include "unit.h"
#include "virtio.h"

void vdrv_write(struct virtio_dev *d, uint32_t off, uint32_t v)
{
	virtio_mmio_io(d, d->base + off, (uint8_t *)&v, 4, 1);
}

uint32_t vdrv_read(struct virtio_dev *d, uint32_t off)
{
	uint32_t v = 0;

	virtio_mmio_io(d, d->base + off, (uint8_t *)&v, 4, 0);
	return v;
}

uint64_t vdrv_init(struct virtio_dev *d, uint64_t want, unsigned nq, unsigned qsize,
		   uint64_t (*ring)(unsigned q))
{
	const uint32_t drv = VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER;
	uint64_t offered;
	unsigned q;

	vdrv_write(d, 0x70, 0);
	vdrv_write(d, 0x70, drv);
	vdrv_write(d, 0x14, 0);
	offered = vdrv_read(d, 0x10);
	vdrv_write(d, 0x14, 1);
	offered |= (uint64_t)vdrv_read(d, 0x10) << 32;
	want &= offered;
	vdrv_write(d, 0x24, 0);
	vdrv_write(d, 0x20, (uint32_t)want);
	vdrv_write(d, 0x24, 1);
	vdrv_write(d, 0x20, (uint32_t)(want >> 32));
	vdrv_write(d, 0x70, drv | VIRTIO_STATUS_FEATURES_OK);
	ck_assert_uint_ne(vdrv_read(d, 0x70) & VIRTIO_STATUS_FEATURES_OK, 0);
	for (q = 0; q < nq; q++) {
		vdrv_write(d, 0x30, q);
		ck_assert_uint_ge(vdrv_read(d, 0x34), qsize);
		vdrv_write(d, 0x38, qsize);
		vdrv_write(d, 0x80, (uint32_t)ring(q));
		vdrv_write(d, 0x90, (uint32_t)(ring(q) + 0x1000));
		vdrv_write(d, 0xa0, (uint32_t)(ring(q) + 0x2000));
		vdrv_write(d, 0x44, 1);
		ck_assert_uint_eq(vdrv_read(d, 0x44), 1);
	}
	vdrv_write(d, 0x70, drv | VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
	ck_assert_int_eq(virtio_running(d), 1);
	return want;
}
