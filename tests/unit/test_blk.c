/*
 * virtio-blk and the virtio-mmio transport, driven as a guest driver would
 * (register writes, rings in guest memory) with a real io_uring and image
 * file, but no KVM.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "unit.h"
#include "virtio.h"
#include "virtio_blk.h"

#define BASE	0xd0000000ULL
#define DESC	0x100000ULL
#define AVAIL	0x101000ULL
#define USED	0x102000ULL
#define HDR	0x200000ULL
#define DATA	0x201000ULL
#define STATUS	0x209000ULL
#define QSIZE	16
#define IMG_SIZE (1024 * 1024)

static struct guest_mem m;
static struct ioloop loop;
static struct virtio_dev dev;
static char path[64];
static struct kiln_err err;
static uint16_t next_avail;

#define mmio_w(off, v) vdrv_write(&dev, (off), (v))
#define mmio_r(off) vdrv_read(&dev, (off))

static uint64_t ring_at(unsigned q)
{
	(void)q;
	return DESC;
}

/* The driver's side of 3.1.1, accepting every offered feature. */
static void driver_init(void)
{
	mmio_w(0x70, 0);
	/* A driver starts with fresh rings. */
	memset(GUEST_PTR(&m, AVAIL, 4 + 2 * QSIZE), 0, 4 + 2 * QSIZE);
	memset(GUEST_PTR(&m, USED, 4 + 8 * QSIZE), 0, 4 + 8 * QSIZE);
	next_avail = 0;
	vdrv_init(&dev, ~0ULL, 1, QSIZE, ring_at);
}

static void open_disk(const char *opts)
{
	char spec[128];

	snprintf(spec, sizeof(spec), "%s%s", path, opts);
	ck_assert_msg(virtio_blk_create(&dev, spec, NULL, &m, &loop, BASE, 5, &err) == 0, "%s", err.msg);
	driver_init();
}

static void setup(void)
{
	int fd;

	unit_mem(&m, 128);
	ck_assert_int_eq(ioloop_init(&loop, 64, &err), 0);
	snprintf(path, sizeof(path), "/tmp/kiln-blk-test-XXXXXX");
	fd = mkstemp(path);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, IMG_SIZE), 0);
	close(fd);
}

static void teardown(void)
{
	virtio_mmio_destroy(&dev);
	ioloop_destroy(&loop);
	guest_mem_free(&m);
	unlink(path);
}

static void set_desc(unsigned i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next)
{
	struct virtq_desc *d = GUEST_PTR(&m, DESC + 16 * i, 16);

	*d = (struct virtq_desc){ addr, len, flags, next };
}

/* Queue a request: header, optional data, status; returns the used length. */
static uint32_t submit(uint32_t type, uint64_t sector, uint32_t len, int data_writable)
{
	uint32_t hdr[4] = { type, 0, (uint32_t)sector, (uint32_t)(sector >> 32) };
	uint16_t *avail = GUEST_PTR(&m, AVAIL, 4 + 2 * QSIZE);
	uint16_t *used = GUEST_PTR(&m, USED, 4 + 8 * QSIZE);
	uint16_t before = used[1];
	uint32_t used_len;
	int spins = 0;

	memcpy(GUEST_PTR(&m, HDR, 16), hdr, 16);
	*(uint8_t *)GUEST_PTR(&m, STATUS, 1) = 0xee;
	if (len) {
		set_desc(0, HDR, 16, VIRTQ_DESC_F_NEXT, 1);
		set_desc(1, DATA, len, VIRTQ_DESC_F_NEXT | (data_writable ? VIRTQ_DESC_F_WRITE : 0), 2);
		set_desc(2, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
	} else {
		set_desc(0, HDR, 16, VIRTQ_DESC_F_NEXT, 2);
		set_desc(2, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
	}
	avail[2 + next_avail % QSIZE] = 0;
	avail[1] = ++next_avail;
	virtio_kick(&dev, 0);
	while (used[1] == before && spins++ < 100)
		ioloop_poll(&loop, 1);
	ck_assert_uint_eq(used[1], (uint16_t)(before + 1));
	memcpy(&used_len, (uint8_t *)used + 4 + 8 * (before % QSIZE) + 4, 4);
	return used_len;
}

static uint8_t status(void)
{
	return *(uint8_t *)GUEST_PTR(&m, STATUS, 1);
}

START_TEST(write_read_round_trip)
{
	uint8_t *data = GUEST_PTR(&m, DATA, 8192), check[8192];
	int fd, i;

	open_disk("");
	for (i = 0; i < 8192; i++)
		data[i] = (uint8_t)(i * 13 + 7);
	ck_assert_uint_eq(submit(1, 100, 8192, 0), 1);
	ck_assert_uint_eq(status(), 0);
	ck_assert_uint_eq(submit(4, 0, 0, 0), 1);		/* flush */
	ck_assert_uint_eq(status(), 0);
	fd = open(path, O_RDONLY);
	ck_assert_int_eq(pread(fd, check, 8192, 100 * 512), 8192);
	close(fd);
	ck_assert_int_eq(memcmp(check, data, 8192), 0);
	memset(data, 0, 8192);
	ck_assert_uint_eq(submit(0, 100, 8192, 1), 8193);
	ck_assert_uint_eq(status(), 0);
	ck_assert_int_eq(memcmp(check, data, 8192), 0);
	ck_assert_uint_eq(mmio_r(0x60) & VIRTIO_INT_USED, VIRTIO_INT_USED);
	mmio_w(0x64, VIRTIO_INT_USED);
	ck_assert_uint_eq(mmio_r(0x60), 0);
}
END_TEST

START_TEST(out_of_range_refused)
{
	open_disk("");
	/* The last sector is fine; one past it, or straddling the end, is not. */
	ck_assert_uint_eq(submit(0, IMG_SIZE / 512 - 1, 512, 1), 513);
	ck_assert_uint_eq(status(), 0);
	submit(0, IMG_SIZE / 512, 512, 1);
	ck_assert_uint_eq(status(), 1);
	submit(0, IMG_SIZE / 512 - 1, 1024, 1);
	ck_assert_uint_eq(status(), 1);
	submit(1, UINT64_MAX - 1, 1024, 0);
	ck_assert_uint_eq(status(), 1);
	submit(0, 0, 100, 1);				/* not whole sectors */
	ck_assert_uint_eq(status(), 1);
	ck_assert_int_eq(virtio_running(&dev), 1);
}
END_TEST

START_TEST(read_only_refuses_writes)
{
	open_disk(",ro,id=base-image");
	mmio_w(0x14, 0);
	ck_assert_uint_ne(mmio_r(0x10) & (1u << 5), 0);	/* VIRTIO_BLK_F_RO offered */
	submit(1, 0, 512, 0);
	ck_assert_uint_eq(status(), 1);
	ck_assert_uint_eq(submit(8, 0, 20, 1), 21);	/* GET_ID: 20 bytes, NUL padded */
	ck_assert_int_eq(memcmp(GUEST_PTR(&m, DATA, 10), "base-image", 10), 0);
	submit(0, 0, 512, 1);
	ck_assert_uint_eq(status(), 0);
}
END_TEST

START_TEST(unsupported_and_short_requests)
{
	open_disk("");
	submit(11, 0, 0, 0);				/* an unknown type */
	ck_assert_uint_eq(status(), 2);
	/* A header shorter than 16 bytes. */
	set_desc(0, HDR, 8, VIRTQ_DESC_F_NEXT, 2);
	set_desc(2, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
	{
		uint16_t *avail = GUEST_PTR(&m, AVAIL, 4 + 2 * QSIZE);

		avail[2 + next_avail % QSIZE] = 0;
		avail[1] = ++next_avail;
		virtio_kick(&dev, 0);
	}
	ck_assert_uint_eq(status(), 1);
	ck_assert_int_eq(virtio_running(&dev), 1);
}
END_TEST

START_TEST(no_status_byte_needs_reset)
{
	uint16_t *avail;

	open_disk("");
	avail = GUEST_PTR(&m, AVAIL, 4 + 2 * QSIZE);
	set_desc(0, HDR, 16, 0, 0);
	avail[2] = 0;
	avail[1] = ++next_avail;
	virtio_kick(&dev, 0);
	ck_assert_uint_ne(mmio_r(0x70) & VIRTIO_STATUS_NEEDS_RESET, 0);
	ck_assert_uint_ne(mmio_r(0x60) & VIRTIO_INT_CONFIG, 0);
	/* The driver resets and starts over: the device works again. */
	driver_init();
	ck_assert_uint_eq(submit(0, 0, 512, 1), 513);
}
END_TEST

START_TEST(broken_ring_needs_reset)
{
	uint16_t *avail;

	open_disk("");
	avail = GUEST_PTR(&m, AVAIL, 4 + 2 * QSIZE);
	set_desc(0, HDR, 16, VIRTQ_DESC_F_NEXT, 0);	/* a loop */
	avail[2] = 0;
	avail[1] = ++next_avail;
	virtio_kick(&dev, 0);
	ck_assert_uint_ne(mmio_r(0x70) & VIRTIO_STATUS_NEEDS_RESET, 0);
}
END_TEST

/* Queue one request without waiting for it: a read of 4 KiB from sector 0. */
static void submit_read_nowait(void)
{
	uint32_t hdr[4] = { 0, 0, 0, 0 };
	uint16_t *avail = GUEST_PTR(&m, AVAIL, 4 + 2 * QSIZE);

	memcpy(GUEST_PTR(&m, HDR, 16), hdr, 16);
	*(uint8_t *)GUEST_PTR(&m, STATUS, 1) = 0xee;
	set_desc(0, HDR, 16, VIRTQ_DESC_F_NEXT, 1);
	set_desc(1, DATA, 4096, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2);
	set_desc(2, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
	avail[2 + next_avail % QSIZE] = 0;
	avail[1] = ++next_avail;
	virtio_kick(&dev, 0);
}

static int canary_intact(uint64_t gpa, size_t len)
{
	const uint8_t *p = GUEST_PTR(&m, gpa, len);
	size_t i;

	for (i = 0; i < len; i++)
		if (p[i] != 0xa5)
			return 0;
	return 1;
}

/*
 * A driver that disables its queue while a request is in flight and writes
 * a larger QueueNum (issue 11): the completion must not index the used ring
 * with the new, never-validated size through the old mapping, nor land in
 * the ring at all. Before the fix, used slot 20 % 256 was written 160 bytes
 * into a ring validated for 16 entries (134 bytes).
 */
START_TEST(queue_disabled_during_io_drops_completion)
{
	const size_t ring_len = 6 + 8 * QSIZE;
	uint16_t *used;
	unsigned i;
	int spins;

	open_disk("");
	used = GUEST_PTR(&m, USED, ring_len);
	for (i = 0; i < 20; i++)
		ck_assert_uint_eq(submit(4, 0, 0, 0), 1);	/* used_idx 20 */
	memset(GUEST_PTR(&m, USED + ring_len, 4096), 0xa5, 4096);

	/* Disable, resize, complete. */
	submit_read_nowait();
	mmio_w(0x44, 0);
	ck_assert_uint_eq(mmio_r(0x44), 0);
	mmio_w(0x38, 256);
	for (spins = 0; loop.inflight && spins < 1000; spins++)
		ioloop_poll(&loop, 1);
	ck_assert_uint_eq(loop.inflight, 0);
	ck_assert_msg(canary_intact(USED + ring_len, 4096), "a completion wrote past the validated used ring");
	ck_assert_uint_eq(used[1], 20);
	ck_assert_uint_eq(status(), 0xee);

	/* Re-enabled (same size as before) while a request is in flight: dropped too. */
	mmio_w(0x38, QSIZE);
	memset(GUEST_PTR(&m, AVAIL, 4 + 2 * QSIZE), 0, 4 + 2 * QSIZE);
	memset(used, 0, ring_len);
	next_avail = 0;
	mmio_w(0x44, 1);
	ck_assert_uint_eq(mmio_r(0x44), 1);
	submit_read_nowait();
	mmio_w(0x44, 0);
	mmio_w(0x44, 1);
	memset(GUEST_PTR(&m, AVAIL, 4 + 2 * QSIZE), 0, 4 + 2 * QSIZE);
	next_avail = 0;
	for (spins = 0; loop.inflight && spins < 1000; spins++)
		ioloop_poll(&loop, 1);
	ck_assert_uint_eq(used[1], 0);
	/* The new incarnation of the queue works. */
	ck_assert_uint_eq(submit(4, 0, 0, 0), 1);
	ck_assert_uint_eq(status(), 0);
	ck_assert_uint_eq(used[1], 1);

	/* A device reset during I/O drops the completion as well. */
	submit_read_nowait();
	mmio_w(0x70, 0);
	for (spins = 0; loop.inflight && spins < 1000; spins++)
		ioloop_poll(&loop, 1);
	ck_assert_uint_eq(used[1], 1);
	ck_assert_uint_eq(mmio_r(0x70), 0);
}
END_TEST

START_TEST(transport_refuses_unoffered_features)
{
	open_disk("");
	mmio_w(0x70, 0);
	mmio_w(0x70, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	mmio_w(0x24, 1);
	mmio_w(0x20, 1u | 1u << 30);			/* VERSION_1 and bit 62 */
	mmio_w(0x70, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
	ck_assert_uint_eq(mmio_r(0x70) & VIRTIO_STATUS_FEATURES_OK, 0);
}
END_TEST

START_TEST(transport_selectors_are_checked)
{
	open_disk("");
	ck_assert_uint_eq(mmio_r(0x000), 0x74726976);
	ck_assert_uint_eq(mmio_r(0x004), 2);
	ck_assert_uint_eq(mmio_r(0x008), 2);
	mmio_w(0x30, 7);				/* no queue 7 */
	ck_assert_uint_eq(mmio_r(0x34), 0);
	mmio_w(0x38, 64);
	mmio_w(0x44, 1);
	ck_assert_uint_eq(mmio_r(0x44), 0);
	mmio_w(0x30, 0xffffffff);
	mmio_w(0x80, 0x1234);
	mmio_w(0x14, 0xffffffff);
	ck_assert_uint_eq(mmio_r(0x10), 0);
	/* Narrow or misaligned register accesses are ignored. */
	{
		uint8_t b = 0x55;

		virtio_mmio_io(&dev, BASE + 0x70, &b, 1, 1);
		virtio_mmio_io(&dev, BASE + 0x71, &b, 1, 0);
		ck_assert_uint_eq(b, 0x55);
	}
	ck_assert_int_eq(virtio_running(&dev), 1);
	/* A queue size that is not a power of two fails QueueReady. */
	mmio_w(0x70, 0);
	mmio_w(0x70, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	mmio_w(0x30, 0);
	mmio_w(0x38, 100);
	mmio_w(0x44, 1);
	ck_assert_uint_eq(mmio_r(0x44), 0);
	ck_assert_uint_ne(mmio_r(0x70) & VIRTIO_STATUS_NEEDS_RESET, 0);
}
END_TEST

START_TEST(config_space)
{
	uint64_t cap = 0;
	uint8_t big[16];

	open_disk("");
	virtio_mmio_io(&dev, BASE + 0x100, (uint8_t *)&cap, 8, 0);
	ck_assert_uint_eq(cap, IMG_SIZE / 512);
	memset(big, 0xaa, sizeof(big));
	virtio_mmio_io(&dev, BASE + 0x100 + 60, big, 8, 0);	/* runs past the end */
	ck_assert_uint_eq(big[0], 0xaa);
}
END_TEST

START_TEST(bad_disk_options)
{
	char spec[128];
	int fd, lockfd;

	ck_assert_int_eq(virtio_blk_create(&dev, "/nonexistent/img", NULL, &m, &loop, BASE, 5, &err), -ENOENT);
	ck_assert_ptr_nonnull(strstr(err.msg, "--disk /nonexistent/img: No such file"));
	snprintf(spec, sizeof(spec), "%s,rw", path);
	ck_assert_int_eq(virtio_blk_create(&dev, spec, NULL, &m, &loop, BASE, 5, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "unknown option 'rw'"));
	snprintf(spec, sizeof(spec), "%s,id=123456789012345678901", path);
	ck_assert_int_eq(virtio_blk_create(&dev, spec, NULL, &m, &loop, BASE, 5, &err), -EINVAL);
	ck_assert_int_eq(virtio_blk_create(&dev, "", NULL, &m, &loop, BASE, 5, &err), -EINVAL);
	/* An image of 1000 bytes is not whole sectors. */
	fd = open(path, O_RDWR);
	ck_assert_int_eq(ftruncate(fd, 1000), 0);
	ck_assert_int_eq(virtio_blk_create(&dev, path, NULL, &m, &loop, BASE, 5, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "multiple of 512"));
	ck_assert_int_eq(ftruncate(fd, IMG_SIZE), 0);
	close(fd);
	/* Another process holds the image. */
	lockfd = open(path, O_RDONLY);
	ck_assert_int_eq(flock(lockfd, LOCK_EX), 0);
	ck_assert_int_eq(virtio_blk_create(&dev, path, NULL, &m, &loop, BASE, 5, &err), -EBUSY);
	ck_assert_ptr_nonnull(strstr(err.msg, "in use"));
	close(lockfd);
}
END_TEST

Suite *suite_blk(void)
{
	Suite *s = suite_create("blk");
	TCase *tc = tcase_create("virtio-blk");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, write_read_round_trip);
	tcase_add_test(tc, out_of_range_refused);
	tcase_add_test(tc, read_only_refuses_writes);
	tcase_add_test(tc, unsupported_and_short_requests);
	tcase_add_test(tc, no_status_byte_needs_reset);
	tcase_add_test(tc, broken_ring_needs_reset);
	tcase_add_test(tc, queue_disabled_during_io_drops_completion);
	tcase_add_test(tc, transport_refuses_unoffered_features);
	tcase_add_test(tc, transport_selectors_are_checked);
	tcase_add_test(tc, config_space);
	tcase_add_test(tc, bad_disk_options);
	suite_add_tcase(s, tc);
	return s;
}
