/*
 * A device test's guest driver rings, as short names over vdriver.c. Include
 * after defining RING(q) (queue q's descriptor table address), QSIZE and the
 * test's guest memory `static struct guest_mem m`.
 */
#ifndef KILN_TEST_VRINGS_H
#define KILN_TEST_VRINGS_H

#include "unit.h"
#include "virtio.h"

static uint64_t ring_at(unsigned q)
{
	return RING(q);
}

static struct vdrv_rings rings = { &m, ring_at, QSIZE, { 0 } };

#define next_avail		rings.next_avail
#define avail(q)		vdrv_avail(&rings, (q))
#define used(q)			vdrv_used(&rings, (q))
#define used_idx(q)		vdrv_used_idx(&rings, (q))
#define set_desc(q, i, a, l, f, n)	vdrv_set_desc(&rings, (q), (i), (a), (l), (f), (n))
#define offer(q, head)		vdrv_offer(&rings, (q), (head))

/* The used element at slot i of queue q. */
static inline struct virtq_used_elem used_elem(unsigned q, unsigned i)
{
	struct virtq_used_elem e;

	vdrv_used_elem(&rings, q, i, &e);
	return e;
}

#endif
