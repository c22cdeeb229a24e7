/*
 * The split virtqueue (virtio 1.2, 2.7), device side. The driver is hostile:
 * chain walks are bounded by the queue size, every index is range-checked,
 * every buffer goes through the checked guest accessor, and a violation marks
 * the queue broken instead of crashing or spinning.
 */
#include <errno.h>
#include <string.h>

#include "virtio.h"

#define AVAIL_FLAGS	0
#define AVAIL_IDX	1
#define AVAIL_RING	2
#define USED_FLAGS	0
#define USED_IDX	1

static uint16_t load_acquire16(const uint16_t *p)
{
	return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

int virtq_enable(struct virtq *q, const struct guest_mem *m, struct kiln_err *err)
{
	uint64_t n = q->size;
	uint64_t desc_len = 16 * n, avail_len = 6 + 2 * n, used_len = 6 + 8 * n;

	q->desc = NULL;
	q->avail = q->used = NULL;
	if (n == 0 || n > VIRTQ_MAX_SIZE || (n & (n - 1)))
		return kiln_fail(err, EINVAL, "queue size %llu is not a power of two up to %d",
				 (unsigned long long)n, VIRTQ_MAX_SIZE);
	if (q->desc_gpa % 16 || q->avail_gpa % 2 || q->used_gpa % 4)
		return kiln_fail(err, EINVAL, "misaligned ring (desc %#llx, avail %#llx, used %#llx)",
				 (unsigned long long)q->desc_gpa, (unsigned long long)q->avail_gpa,
				 (unsigned long long)q->used_gpa);
	if (!guest_range_valid(m, q->desc_gpa, desc_len) ||
	    !guest_range_valid(m, q->avail_gpa, avail_len) ||
	    !guest_range_valid(m, q->used_gpa, used_len))
		return kiln_fail(err, EINVAL, "ring outside guest RAM (desc %#llx, avail %#llx, used %#llx)",
				 (unsigned long long)q->desc_gpa, (unsigned long long)q->avail_gpa,
				 (unsigned long long)q->used_gpa);
	q->desc = GUEST_PTR(m, q->desc_gpa, desc_len);
	q->avail = GUEST_PTR(m, q->avail_gpa, avail_len);
	q->used = GUEST_PTR(m, q->used_gpa, used_len);
	q->last_avail = 0;
	q->used_idx = 0;
	q->signalled_used = 0;
	q->broken = 0;
	return 0;
}

/* Mark the ring broken (the device needs a reset) and say why. */
#define chain_broken(q, err, ...) ((q)->broken = 1, kiln_fail((err), EINVAL, __VA_ARGS__))

/* Ask the driver to kick once its avail index passes idx (avail_event, 2.7.10). */
static void set_avail_event(struct virtq *q, uint16_t idx)
{
	__atomic_store_n(&q->used[2 + 4 * q->size], idx, __ATOMIC_RELEASE);
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
}

int virtq_pop(struct virtq *q, const struct guest_mem *m, struct virtq_chain *c,
	      struct kiln_err *err)
{
	uint16_t avail_idx, head, i;
	unsigned count = 0;

	if (q->broken || !q->desc)
		return 0;
	avail_idx = load_acquire16(&q->avail[AVAIL_IDX]);
	if (avail_idx == q->last_avail) {
		if (!q->event_idx)
			return 0;
		/*
		 * Ask for a kick on the very next request, then look again: one
		 * the driver added before it could see the new avail_event would
		 * otherwise never be kicked.
		 */
		set_avail_event(q, q->last_avail);
		avail_idx = load_acquire16(&q->avail[AVAIL_IDX]);
		if (avail_idx == q->last_avail)
			return 0;
	}
	if ((uint16_t)(avail_idx - q->last_avail) > q->size)
		return chain_broken(q, err, "avail index ran %u entries ahead of the device",
				    (uint16_t)(avail_idx - q->last_avail));
	head = q->avail[AVAIL_RING + q->last_avail % q->size];
	if (head >= q->size)
		return chain_broken(q, err, "avail ring names descriptor %u, beyond the queue", head);

	c->head = head;
	c->nread = c->nwrite = 0;
	c->read_len = c->write_len = 0;
	for (i = head;;) {
		struct virtq_desc d;
		void *p;

		if (++count > q->size)
			return chain_broken(q, err, "descriptor chain longer than the queue (%u): a loop?", q->size);
		memcpy(&d, &q->desc[i], sizeof(d));
		if (d.flags & VIRTQ_DESC_F_INDIRECT)
			return chain_broken(q, err, "indirect descriptor %u, a feature never offered", i);
		p = d.len ? GUEST_PTR(m, d.addr, d.len) : NULL;
		if (d.len && !p)
			return chain_broken(q, err, "descriptor %u points outside guest RAM", i);
		if (d.flags & VIRTQ_DESC_F_WRITE) {
			c->write[c->nwrite++] = (struct iovec){ p, d.len };
			c->write_len += d.len;
		} else {
			if (c->nwrite)
				return chain_broken(q, err, "readable descriptor %u after a writable one", i);
			c->read[c->nread++] = (struct iovec){ p, d.len };
			c->read_len += d.len;
		}
		if (!(d.flags & VIRTQ_DESC_F_NEXT))
			break;
		if (d.next >= q->size)
			return chain_broken(q, err, "descriptor chains to %u, beyond the queue", d.next);
		i = d.next;
	}
	q->last_avail++;
	return 1;
}

void virtq_push(struct virtq *q, uint16_t head, uint32_t len)
{
	struct virtq_used_elem *ring = (struct virtq_used_elem *)(q->used + 2);
	struct virtq_used_elem e = { head, len };

	if (!q->used)
		return;
	memcpy(&ring[q->used_idx % q->size], &e, sizeof(e));
	q->used_idx++;
	/* The element must be visible before the index that publishes it. */
	__atomic_store_n(&q->used[USED_IDX], q->used_idx, __ATOMIC_RELEASE);
}

int virtq_push_gen(struct virtq *q, uint32_t gen, uint16_t head, uint32_t len)
{
	if (!q->used || q->gen != gen)
		return 0;
	virtq_push(q, head, len);
	return 1;
}

void virtq_kick_on_next(struct virtq *q)
{
	if (q->event_idx && q->avail && q->used)
		set_avail_event(q, load_acquire16(&q->avail[AVAIL_IDX]));
}

int virtq_should_notify(struct virtq *q)
{
	uint16_t old = q->signalled_used, new = q->used_idx;

	if (!q->avail || old == new)
		return 0;
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	q->signalled_used = new;
	if (q->event_idx) {
		uint16_t event = load_acquire16(&q->avail[AVAIL_RING + q->size]);

		/* vring_need_event(): did used_idx cross used_event? (2.7.10) */
		return (uint16_t)(new - event - 1) < (uint16_t)(new - old);
	}
	return !(load_acquire16(&q->avail[AVAIL_FLAGS]) & VIRTQ_AVAIL_F_NO_INTERRUPT);
}

/* Copy between iovecs (from byte off on) and a flat buffer, either way. */
static size_t iov_copy(const struct iovec *iov, unsigned n, size_t off, uint8_t *buf,
		       size_t len, int into_iov)
{
	size_t done = 0;
	unsigned i;

	for (i = 0; i < n && done < len; i++) {
		uint8_t *p;
		size_t take;

		if (off >= iov[i].iov_len) {
			off -= iov[i].iov_len;
			continue;
		}
		p = (uint8_t *)iov[i].iov_base + off;
		take = iov[i].iov_len - off;
		if (take > len - done)
			take = len - done;
		if (into_iov)
			memcpy(p, buf + done, take);
		else
			memcpy(buf + done, p, take);
		done += take;
		off = 0;
	}
	return done;
}

size_t iov_to_buf(const struct iovec *iov, unsigned n, size_t off, void *buf, size_t len)
{
	return iov_copy(iov, n, off, buf, len, 0);
}

size_t iov_from_buf(const struct iovec *iov, unsigned n, size_t off, const void *buf, size_t len)
{
	return iov_copy(iov, n, off, (uint8_t *)(uintptr_t)buf, len, 1);
}
