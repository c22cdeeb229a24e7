/*
 * A guest driver for the device tests: register access and the driver's side
 * of device initialisation (virtio 1.2, 3.1.1) over the virtio-mmio transport.
 */
#include <string.h>

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

void vdrv_rings_clear(struct vdrv_rings *r, unsigned q)
{
	ck_assert_uint_lt(q, VDRV_MAX_QUEUES);
	memset(GUEST_PTR(r->m, r->ring(q), 16 * r->qsize), 0, 16 * r->qsize);
	memset(vdrv_avail(r, q), 0, 6 + 2 * r->qsize);
	memset(vdrv_used(r, q), 0, 6 + 8 * r->qsize);
	r->next_avail[q] = 0;
}

uint16_t *vdrv_avail(struct vdrv_rings *r, unsigned q)
{
	uint16_t *p = GUEST_PTR(r->m, r->ring(q) + 0x1000, 6 + 2 * r->qsize);

	ck_assert_ptr_nonnull(p);
	return p;
}

uint16_t *vdrv_used(struct vdrv_rings *r, unsigned q)
{
	uint16_t *p = GUEST_PTR(r->m, r->ring(q) + 0x2000, 6 + 8 * r->qsize);

	ck_assert_ptr_nonnull(p);
	return p;
}

uint16_t vdrv_used_idx(struct vdrv_rings *r, unsigned q)
{
	return __atomic_load_n(&vdrv_used(r, q)[1], __ATOMIC_ACQUIRE);
}

void vdrv_used_elem(struct vdrv_rings *r, unsigned q, unsigned i, struct virtq_used_elem *e)
{
	memcpy(e, (uint8_t *)vdrv_used(r, q) + 4 + 8 * (i % r->qsize), sizeof(*e));
}

void vdrv_set_desc(struct vdrv_rings *r, unsigned q, unsigned i, uint64_t addr, uint32_t len,
		   uint16_t flags, uint16_t next)
{
	struct virtq_desc *d = GUEST_PTR(r->m, r->ring(q) + 16 * i, 16);

	ck_assert_ptr_nonnull(d);
	*d = (struct virtq_desc){ addr, len, flags, next };
}

void vdrv_offer(struct vdrv_rings *r, unsigned q, uint16_t head)
{
	uint16_t *avail = vdrv_avail(r, q);

	ck_assert_uint_lt(q, VDRV_MAX_QUEUES);
	avail[2 + r->next_avail[q] % r->qsize] = head;
	__atomic_store_n(&avail[1], ++r->next_avail[q], __ATOMIC_RELEASE);
}
