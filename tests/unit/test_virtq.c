/* The split virtqueue against well-behaved and hostile drivers. */
#include <errno.h>
#include <string.h>

#include "unit.h"
#include "virtio.h"

#define QSIZE	8
#define DESC	0x100000ULL
#define AVAIL	0x101000ULL
#define USED	0x102000ULL
#define BUF	0x200000ULL

static struct guest_mem m;
static struct virtq q;
static struct virtq_chain chain;
static struct kiln_err err;

static struct virtq_desc *desc(unsigned i)
{
	return (struct virtq_desc *)GUEST_PTR(&m, DESC + 16 * i, 16);
}

static uint16_t *avail16(unsigned i)
{
	return GUEST_PTR(&m, AVAIL + 2 * i, 2);
}

static void set_desc(unsigned i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next)
{
	*desc(i) = (struct virtq_desc){ addr, len, flags, next };
}

/* Offer head as the next available request. */
static void offer(uint16_t head)
{
	uint16_t idx = *avail16(1);

	*avail16(2 + idx % QSIZE) = head;
	*avail16(1) = (uint16_t)(idx + 1);
}

static void setup(void)
{
	unit_mem(&m, 128);
	memset(&q, 0, sizeof(q));
	q.size = QSIZE;
	q.desc_gpa = DESC;
	q.avail_gpa = AVAIL;
	q.used_gpa = USED;
	ck_assert_int_eq(virtq_enable(&q, &m, &err), 0);
}

static void teardown(void)
{
	guest_mem_free(&m);
}

START_TEST(request_round_trip)
{
	uint16_t *used;

	set_desc(0, BUF, 16, VIRTQ_DESC_F_NEXT, 1);
	set_desc(1, BUF + 4096, 512, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2);
	set_desc(2, BUF + 8192, 1, VIRTQ_DESC_F_WRITE, 0);
	ck_assert_int_eq(virtq_pop(&q, &m, &chain, &err), 0);
	offer(0);
	ck_assert_int_eq(virtq_pop(&q, &m, &chain, &err), 1);
	ck_assert_uint_eq(chain.head, 0);
	ck_assert_uint_eq(chain.nread, 1);
	ck_assert_uint_eq(chain.nwrite, 2);
	ck_assert_uint_eq(chain.read_len, 16);
	ck_assert_uint_eq(chain.write_len, 513);
	ck_assert_ptr_eq(chain.read[0].iov_base, GUEST_PTR(&m, BUF, 16));
	ck_assert_int_eq(virtq_pop(&q, &m, &chain, &err), 0);
	virtq_push(&q, 0, 513);
	used = GUEST_PTR(&m, USED, 16);
	ck_assert_uint_eq(used[1], 1);
	ck_assert_uint_eq(used[2], 0);			/* id */
	ck_assert_uint_eq(used[4], 513);		/* len */
	ck_assert_int_eq(virtq_should_notify(&q), 1);
	ck_assert_int_eq(virtq_should_notify(&q), 0);	/* nothing new */
}
END_TEST

START_TEST(no_interrupt_flag_and_event_idx)
{
	set_desc(0, BUF, 16, 0, 0);
	*avail16(0) = VIRTQ_AVAIL_F_NO_INTERRUPT;
	offer(0);
	ck_assert_int_eq(virtq_pop(&q, &m, &chain, &err), 1);
	virtq_push(&q, 0, 0);
	ck_assert_int_eq(virtq_should_notify(&q), 0);

	/* EVENT_IDX: notify only when used_idx passes used_event. */
	q.event_idx = 1;
	*avail16(2 + QSIZE) = 2;			/* used_event */
	offer(0);
	ck_assert_int_eq(virtq_pop(&q, &m, &chain, &err), 1);
	virtq_push(&q, 0, 0);				/* used_idx 2 */
	ck_assert_int_eq(virtq_should_notify(&q), 0);
	offer(0);
	ck_assert_int_eq(virtq_pop(&q, &m, &chain, &err), 1);
	virtq_push(&q, 0, 0);				/* used_idx 3 crosses 2 */
	ck_assert_int_eq(virtq_should_notify(&q), 1);
}
END_TEST

START_TEST(descriptor_loop)
{
	set_desc(0, BUF, 16, VIRTQ_DESC_F_NEXT, 1);
	set_desc(1, BUF, 16, VIRTQ_DESC_F_NEXT, 0);
	offer(0);
	ck_assert_int_eq(virtq_pop(&q, &m, &chain, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "loop"));
	ck_assert_int_eq(q.broken, 1);
	/* A broken queue stays quiet until reset. */
	ck_assert_int_eq(virtq_pop(&q, &m, &chain, &err), 0);
}
END_TEST

START_TEST(self_loop)
{
	set_desc(3, BUF, 16, VIRTQ_DESC_F_NEXT, 3);
	offer(3);
	ck_assert_int_eq(virtq_pop(&q, &m, &chain, &err), -EINVAL);
}
END_TEST

START_TEST(next_beyond_queue)
{
	set_desc(0, BUF, 16, VIRTQ_DESC_F_NEXT, QSIZE);
	offer(0);
	ck_assert_int_eq(virtq_pop(&q, &m, &chain, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "beyond the queue"));
}
END_TEST

START_TEST(head_beyond_queue)
{
	offer(0xffff);
	ck_assert_int_eq(virtq_pop(&q, &m, &chain, &err), -EINVAL);
}
END_TEST

START_TEST(buffer_outside_memory)
{
	set_desc(0, 127 * MIB, 2 * MIB, 0, 0);
	offer(0);
	ck_assert_int_eq(virtq_pop(&q, &m, &chain, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "outside guest RAM"));
}
END_TEST

START_TEST(length_overflow)
{
	set_desc(0, UINT64_MAX - 8, 0xffffffff, 0, 0);
	offer(0);
	ck_assert_int_eq(virtq_pop(&q, &m, &chain, &err), -EINVAL);
}
END_TEST

START_TEST(readable_after_writable)
{
	set_desc(0, BUF, 16, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 1);
	set_desc(1, BUF, 16, 0, 0);
	offer(0);
	ck_assert_int_eq(virtq_pop(&q, &m, &chain, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "after a writable"));
}
END_TEST

START_TEST(indirect_refused)
{
	set_desc(0, BUF, 16, VIRTQ_DESC_F_INDIRECT, 0);
	offer(0);
	ck_assert_int_eq(virtq_pop(&q, &m, &chain, &err), -EINVAL);
}
END_TEST

START_TEST(avail_index_runs_ahead)
{
	*avail16(1) = QSIZE + 1;
	ck_assert_int_eq(virtq_pop(&q, &m, &chain, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "ahead"));
}
END_TEST

START_TEST(full_ring_is_fine)
{
	unsigned i;

	for (i = 0; i < QSIZE; i++) {
		set_desc(i, BUF + i * 64, 64, 0, 0);
		offer((uint16_t)i);
	}
	for (i = 0; i < QSIZE; i++)
		ck_assert_int_eq(virtq_pop(&q, &m, &chain, &err), 1);
	ck_assert_int_eq(virtq_pop(&q, &m, &chain, &err), 0);
}
END_TEST

START_TEST(bad_rings_refused)
{
	struct virtq b = { .size = 6, .desc_gpa = DESC, .avail_gpa = AVAIL, .used_gpa = USED };

	ck_assert_int_eq(virtq_enable(&b, &m, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "power of two"));
	b.size = 512;
	ck_assert_int_eq(virtq_enable(&b, &m, &err), -EINVAL);
	b.size = 0;
	ck_assert_int_eq(virtq_enable(&b, &m, &err), -EINVAL);
	b.size = 8;
	b.desc_gpa = DESC + 8;
	ck_assert_int_eq(virtq_enable(&b, &m, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "misaligned"));
	b.desc_gpa = 128 * MIB - 64;
	ck_assert_int_eq(virtq_enable(&b, &m, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "outside guest RAM"));
}
END_TEST

START_TEST(iov_copies)
{
	char a[3], b[5], out[8] = { 0 };
	struct iovec iov[2] = { { a, 3 }, { b, 5 } };

	ck_assert_uint_eq(iov_from_buf(iov, 2, 2, "hello!", 6), 6);
	ck_assert_uint_eq(iov_to_buf(iov, 2, 2, out, 8), 6);
	ck_assert_str_eq(out, "hello!");
	ck_assert_uint_eq(iov_to_buf(iov, 2, 9, out, 8), 0);
}
END_TEST

Suite *suite_virtq(void)
{
	Suite *s = suite_create("virtq");
	TCase *tc = tcase_create("split");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, request_round_trip);
	tcase_add_test(tc, no_interrupt_flag_and_event_idx);
	tcase_add_test(tc, descriptor_loop);
	tcase_add_test(tc, self_loop);
	tcase_add_test(tc, next_beyond_queue);
	tcase_add_test(tc, head_beyond_queue);
	tcase_add_test(tc, buffer_outside_memory);
	tcase_add_test(tc, length_overflow);
	tcase_add_test(tc, readable_after_writable);
	tcase_add_test(tc, indirect_refused);
	tcase_add_test(tc, avail_index_runs_ahead);
	tcase_add_test(tc, full_ring_is_fine);
	tcase_add_test(tc, bad_rings_refused);
	tcase_add_test(tc, iov_copies);
	suite_add_tcase(s, tc);
	return s;
}
