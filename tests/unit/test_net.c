/*
 * virtio-net driven as a guest driver would (register writes, rings in guest
 * memory) with a real io_uring, but no KVM and no tap: the device's fd is one
 * end of a datagram socketpair, and the test plays the host network on the
 * other. One tap test runs where /dev/net/tun can be used (root in CI).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "unit.h"
#include "virtio.h"
#include "virtio_net.h"

#define BASE	0xd0000000ULL
#define QSIZE	16
#define RING(q)	(0x100000ULL + (q) * 0x10000ULL)	/* desc; avail +0x1000; used +0x2000 */
#define RXBUF	0x400000ULL				/* rx buffers, 0x20000 apart */
#define TXBUF	0x800000ULL
#define HDR_LEN	12

#define F_CSUM		(1ULL << 0)
#define F_GUEST_CSUM	(1ULL << 1)
#define F_MAC		(1ULL << 5)
#define F_GUEST_TSO4	(1ULL << 7)
#define F_MRG_RXBUF	(1ULL << 15)
#define F_STATUS	(1ULL << 16)
#define F_EVENT_IDX	(1ULL << 29)
#define F_VERSION_1	(1ULL << 32)

static struct guest_mem m;
static struct ioloop loop;
static struct virtio_dev dev;
static struct kiln_err err;
static int peer = -1;			/* the host network's end of the socketpair */
static const uint8_t mac[6] = { 0x06, 0x00, 0xac, 0x10, 0x00, 0x02 };

#define mmio_w(off, v) vdrv_write(&dev, (off), (v))
#define mmio_r(off) vdrv_read(&dev, (off))

#include "vrings.h"

/* Run the I/O loop on this thread until cond holds or about 2 s pass. */
#define settle(cond)								\
	do {									\
		int spins_;							\
		for (spins_ = 0; !(cond) && spins_ < 2000; spins_++) {		\
			ioloop_poll(&loop, 0);					\
			if (!(cond))						\
				usleep(1000);					\
		}								\
	} while (0)

/* Run the I/O loop for about n milliseconds. */
static void spin_loop(unsigned n)
{
	while (n--) {
		ioloop_poll(&loop, 0);
		usleep(1000);
	}
}

/* The driver's side of 3.1.1, accepting the offered features in want. */
static void driver_init(uint64_t want)
{
	unsigned q;

	mmio_w(0x70, 0);
	for (q = 0; q < 2; q++)
		vdrv_rings_clear(&rings, q);
	vdrv_init(&dev, want, 2, QSIZE, ring_at);
	/* Let activation's hop onto the I/O thread run. */
	ioloop_poll(&loop, 0);
}

static void open_net(uint64_t features)
{
	int sv[2];

	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
	peer = sv[1];
	ck_assert_msg(virtio_net_create_fd(&dev, sv[0], mac, NULL, &m, &loop, BASE, 5, &err) == 0,
		      "%s", err.msg);
	driver_init(features);
}

static void setup(void)
{
	unit_mem(&m, 128);
	ck_assert_int_eq(ioloop_init(&loop, 64, &err), 0);
	memset(&dev, 0, sizeof(dev));
	peer = -1;
}

static void teardown(void)
{
	virtio_mmio_destroy(&dev);
	ioloop_destroy(&loop);
	if (peer >= 0)
		close(peer);
	guest_mem_free(&m);
}

/* A frame of len bytes (after the header) with a recognisable pattern. */
static void fill_frame(uint8_t *p, size_t len, unsigned seed)
{
	size_t i;

	for (i = 0; i < len; i++)
		p[i] = (uint8_t)(i * 7 + seed);
}

/* The host network sends a frame: a zeroed vnet header, then len bytes. */
static void host_send(size_t len, unsigned seed)
{
	static uint8_t buf[HDR_LEN + 65550];

	memset(buf, 0, HDR_LEN);
	fill_frame(buf + HDR_LEN, len, seed);
	ck_assert_int_eq(send(peer, buf, HDR_LEN + len, 0), (ssize_t)(HDR_LEN + len));
}

/* Post rx buffer head (one descriptor of len bytes) and kick. */
static void post_rx(uint16_t head, uint32_t len)
{
	set_desc(0, head, RXBUF + head * 0x20000ULL, len, VIRTQ_DESC_F_WRITE, 0);
	offer(0, head);
	virtio_kick(&dev, 0);
}

/* Queue a tx chain of a header and a frame of len bytes at TXBUF. */
static void send_tx(uint16_t head, uint32_t len, unsigned seed)
{
	uint8_t *hdr = GUEST_PTR(&m, TXBUF + head * 0x20000ULL, HDR_LEN + len);

	memset(hdr, 0, HDR_LEN);
	hdr[0] = 1;			/* NEEDS_CSUM: passes through untouched */
	hdr[6] = 34;			/* csum_start */
	fill_frame(hdr + HDR_LEN, len, seed);
	set_desc(1, head, TXBUF + head * 0x20000ULL, HDR_LEN, VIRTQ_DESC_F_NEXT, (uint16_t)(head + 1));
	set_desc(1, head + 1, TXBUF + head * 0x20000ULL + HDR_LEN, len, 0, 0);
	offer(1, head);
	virtio_kick(&dev, 1);
}

START_TEST(tx_frame_reaches_the_tap)
{
	uint8_t got[HDR_LEN + 2000], want[2000];

	open_net(~0ULL);
	mmio_w(0x64, 0xffffffff);
	send_tx(0, 1514, 3);
	send_tx(2, 60, 4);
	settle(used_idx(1) == 2);
	ck_assert_uint_eq(used_idx(1), 2);
	ck_assert_uint_eq(used_elem(1, 0).len, 0);
	ck_assert_uint_ne(mmio_r(0x60) & VIRTIO_INT_USED, 0);
	/* Header and frame arrive as one datagram, header untouched. */
	ck_assert_int_eq(recv(peer, got, sizeof(got), 0), HDR_LEN + 1514);
	ck_assert_uint_eq(got[0], 1);
	ck_assert_uint_eq(got[6], 34);
	fill_frame(want, 1514, 3);
	ck_assert_int_eq(memcmp(got + HDR_LEN, want, 1514), 0);
	ck_assert_int_eq(recv(peer, got, sizeof(got), 0), HDR_LEN + 60);
	fill_frame(want, 60, 4);
	ck_assert_int_eq(memcmp(got + HDR_LEN, want, 60), 0);
	ck_assert_int_eq(recv(peer, got, sizeof(got), 0), -1);
}
END_TEST

/*
 * A driver that disables its tx queue and writes a larger QueueNum while a
 * frame is being written (issue 11): the completion must be dropped, not
 * pushed through the old ring with the new size. Before the fix used slot
 * 20 % 256 landed 160 bytes into a ring validated for 16 entries.
 */
START_TEST(tx_queue_disabled_in_flight)
{
	const uint64_t used_gpa = RING(1) + 0x2000, ring_len = 6 + 8 * QSIZE;
	uint8_t got[HDR_LEN + 100], *canary;
	unsigned i;

	open_net(~0ULL);
	for (i = 0; i < 20; i++) {
		send_tx(0, 60, i);
		settle(used_idx(1) == i + 1);
		ck_assert_int_eq(recv(peer, got, sizeof(got), 0), HDR_LEN + 60);
	}
	canary = GUEST_PTR(&m, used_gpa + ring_len, 4096);
	memset(canary, 0xa5, 4096);
	send_tx(0, 60, 99);
	mmio_w(0x30, 1);
	mmio_w(0x44, 0);
	mmio_w(0x38, 256);
	spin_loop(20);
	ck_assert_int_eq(recv(peer, got, sizeof(got), 0), HDR_LEN + 60);	/* it was sent */
	ck_assert_uint_eq(used_idx(1), 20);					/* but not returned */
	for (i = 0; i < 4096; i++)
		ck_assert_msg(canary[i] == 0xa5, "tx completion wrote past the validated used ring");
	/* Enabled again with fresh rings, the queue carries frames. */
	mmio_w(0x38, QSIZE);
	vdrv_rings_clear(&rings, 1);
	mmio_w(0x44, 1);
	send_tx(0, 60, 7);
	settle(used_idx(1) == 1);
	ck_assert_uint_eq(used_idx(1), 1);
}
END_TEST

START_TEST(tx_hostile_chains_are_dropped)
{
	uint8_t got[64];

	open_net(~0ULL);
	/* Shorter than the virtio-net header. */
	set_desc(1, 0, TXBUF, 8, 0, 0);
	offer(1, 0);
	/* A frame over 64 KiB + headers. */
	set_desc(1, 1, TXBUF, HDR_LEN, VIRTQ_DESC_F_NEXT, 2);
	set_desc(1, 2, TXBUF + 0x1000, 65551, 0, 0);
	offer(1, 1);
	/* A device-writable buffer in a tx chain. */
	set_desc(1, 3, TXBUF, HDR_LEN + 60, VIRTQ_DESC_F_WRITE, 0);
	offer(1, 3);
	virtio_kick(&dev, 1);
	settle(used_idx(1) == 3);
	ck_assert_uint_eq(used_idx(1), 3);
	ck_assert_int_eq(recv(peer, got, sizeof(got), 0), -1);
	ck_assert_int_eq(virtio_running(&dev), 1);
	/* The device still works. */
	send_tx(4, 100, 1);
	settle(used_idx(1) == 4);
	ck_assert_int_eq(recv(peer, got, sizeof(got), 0), 64);	/* truncated to our buffer */
	/* A descriptor loop breaks the ring: NEEDS_RESET, not a hang. */
	set_desc(1, 6, TXBUF, HDR_LEN, VIRTQ_DESC_F_NEXT, 7);
	set_desc(1, 7, TXBUF, HDR_LEN, VIRTQ_DESC_F_NEXT, 6);
	offer(1, 6);
	virtio_kick(&dev, 1);
	ck_assert_uint_ne(mmio_r(0x70) & VIRTIO_STATUS_NEEDS_RESET, 0);
}
END_TEST

START_TEST(rx_one_buffer_per_frame)
{
	uint8_t want[1514], *buf = GUEST_PTR(&m, RXBUF, 2048);
	uint16_t nb;

	open_net(~0ULL & ~F_MRG_RXBUF);
	post_rx(0, 2048);
	host_send(1514, 9);
	settle(used_idx(0) == 1);
	ck_assert_uint_eq(used_idx(0), 1);
	ck_assert_uint_eq(used_elem(0, 0).id, 0);
	ck_assert_uint_eq(used_elem(0, 0).len, HDR_LEN + 1514);
	memcpy(&nb, buf + 10, 2);
	ck_assert_uint_eq(nb, 1);
	fill_frame(want, 1514, 9);
	ck_assert_int_eq(memcmp(buf + HDR_LEN, want, 1514), 0);
	/* Too big for the next buffer: dropped, and the buffer comes back empty. */
	post_rx(1, 100);
	host_send(200, 1);
	settle(used_idx(0) == 2);
	ck_assert_uint_eq(used_elem(0, 1).len, 0);
	ck_assert_int_eq(virtio_running(&dev), 1);
}
END_TEST

START_TEST(rx_mergeable_split)
{
	uint8_t frame[HDR_LEN + 300], want[300];
	uint16_t nb;
	unsigned i;

	open_net(~0ULL);
	/* Two 100-byte buffers: not enough for 12 + 300 bytes. */
	post_rx(0, 100);
	post_rx(1, 100);
	host_send(300, 5);
	spin_loop(20);
	ck_assert_uint_eq(used_idx(0), 0);		/* nothing returned half-filled */
	post_rx(2, 100);
	post_rx(3, 500);
	settle(used_idx(0) == 4);
	ck_assert_uint_eq(used_idx(0), 4);
	for (i = 0; i < 4; i++) {
		struct virtq_used_elem e = used_elem(0, i);

		ck_assert_uint_eq(e.id, i);
		ck_assert_uint_eq(e.len, i < 3 ? 100 : HDR_LEN + 300 - 3 * 100);
		memcpy(frame + 100 * i, GUEST_PTR(&m, RXBUF + i * 0x20000ULL, e.len), e.len);
	}
	memcpy(&nb, frame + 10, 2);
	ck_assert_uint_eq(nb, 4);
	fill_frame(want, 300, 5);
	ck_assert_int_eq(memcmp(frame + HDR_LEN, want, 300), 0);
}
END_TEST

START_TEST(rx_waits_for_buffers_without_loss_or_spin)
{
	uint64_t before;
	unsigned i;

	open_net(~0ULL);
	for (i = 0; i < 3; i++)
		host_send(100 + i, i);
	spin_loop(5);
	before = loop.completions;
	spin_loop(50);
	/* One frame read and held; no more reads, no busy loop. */
	ck_assert_uint_le(loop.completions - before, 2);
	ck_assert_uint_eq(used_idx(0), 0);
	for (i = 0; i < 3; i++)
		post_rx((uint16_t)i, 1000);
	settle(used_idx(0) == 3);
	ck_assert_uint_eq(used_idx(0), 3);
	for (i = 0; i < 3; i++)
		ck_assert_uint_eq(used_elem(0, i).len, HDR_LEN + 100 + i);
	/* Then the tap is empty: the device waits on a poll, not a loop. */
	before = loop.completions;
	spin_loop(50);
	ck_assert_uint_le(loop.completions - before, 2);
	host_send(64, 7);
	post_rx(3, 1000);
	settle(used_idx(0) == 4);
	ck_assert_uint_eq(used_elem(0, 3).len, HDR_LEN + 64);
}
END_TEST

START_TEST(rx_hostile_buffers)
{
	open_net(~0ULL);
	/* A readable descriptor is not an rx buffer. */
	set_desc(0, 0, RXBUF, 1000, 0, 0);
	offer(0, 0);
	virtio_kick(&dev, 0);
	host_send(100, 1);
	settle(mmio_r(0x70) & VIRTIO_STATUS_NEEDS_RESET);
	ck_assert_uint_ne(mmio_r(0x70) & VIRTIO_STATUS_NEEDS_RESET, 0);
	/* The driver resets; a buffer smaller than the header is refused too. */
	driver_init(~0ULL);
	post_rx(0, 4);
	host_send(100, 1);
	settle(mmio_r(0x70) & VIRTIO_STATUS_NEEDS_RESET);
	ck_assert_uint_ne(mmio_r(0x70) & VIRTIO_STATUS_NEEDS_RESET, 0);
	/* One head offered again and again: never more buffers than the ring. */
	driver_init(~0ULL);
	set_desc(0, 0, RXBUF, 12, VIRTQ_DESC_F_WRITE, 0);
	host_send(65000, 1);
	{
		unsigned i;

		for (i = 0; i < 40; i++) {
			offer(0, 0);
			virtio_kick(&dev, 0);
			ioloop_poll(&loop, 0);
		}
	}
	settle(mmio_r(0x70) & VIRTIO_STATUS_NEEDS_RESET);
	ck_assert_uint_ne(mmio_r(0x70) & VIRTIO_STATUS_NEEDS_RESET, 0);
	ck_assert_uint_eq(used_idx(0), 0);
}
END_TEST

START_TEST(reset_with_frames_in_flight)
{
	uint8_t got[256];

	open_net(~0ULL);
	/* tx submitted but not yet completed, an rx frame held for buffers. */
	send_tx(0, 100, 1);
	host_send(100, 2);
	mmio_w(0x70, 0);
	spin_loop(5);
	ck_assert_uint_eq(used_idx(1), 0);		/* a stale completion is not pushed */
	ck_assert_int_eq(recv(peer, got, sizeof(got), 0), HDR_LEN + 100);
	/* A new driver: the device works, nothing stale leaks into its rings. */
	driver_init(~0ULL);
	post_rx(0, 1000);
	host_send(80, 3);
	settle(used_idx(0) == 1);
	ck_assert_uint_eq(used_idx(0), 1);
	send_tx(2, 50, 1);
	settle(used_idx(1) == 1);
	ck_assert_uint_eq(used_idx(1), 1);
	/* Destroy with a frame held and reads outstanding (teardown; LSan checks). */
	host_send(80, 4);
	host_send(80, 5);
	send_tx(4, 50, 1);
}
END_TEST

START_TEST(config_and_features)
{
	uint8_t cfg[10];
	uint16_t status;
	unsigned i;

	open_net(~0ULL);
	for (i = 0; i < sizeof(cfg); i++)
		virtio_mmio_io(&dev, BASE + 0x100 + i, &cfg[i], 1, 0);
	ck_assert_int_eq(memcmp(cfg, mac, 6), 0);
	memcpy(&status, cfg + 6, 2);
	ck_assert_uint_eq(status, 1);			/* link up */
	ck_assert_uint_eq(mmio_r(0x008), 1);		/* a network device */
	mmio_w(0x14, 0);
	ck_assert_uint_eq(mmio_r(0x10) & (F_CSUM | F_GUEST_CSUM | F_MAC | F_GUEST_TSO4 | F_MRG_RXBUF | F_STATUS),
			  F_CSUM | F_GUEST_CSUM | F_MAC | F_GUEST_TSO4 | F_MRG_RXBUF | F_STATUS);
	/* Reads past the config space leave the buffer alone. */
	cfg[0] = 0xaa;
	virtio_mmio_io(&dev, BASE + 0x100 + 8, cfg, 4, 0);
	ck_assert_uint_eq(cfg[0], 0xaa);
}
END_TEST

START_TEST(bad_net_options)
{
	ck_assert_int_eq(virtio_net_create(&dev, "", NULL, &m, &loop, BASE, 5, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "no tap given"));
	ck_assert_int_eq(virtio_net_create(&dev, "tap=", NULL, &m, &loop, BASE, 5, &err), -EINVAL);
	ck_assert_int_eq(virtio_net_create(&dev, "tap=a-very-long-tap-name", NULL, &m, &loop, BASE, 5, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "1 to 15 characters"));
	ck_assert_int_eq(virtio_net_create(&dev, "tap=kt%d", NULL, &m, &loop, BASE, 5, &err), -EINVAL);
	ck_assert_int_eq(virtio_net_create(&dev, "tap=kt0,mac=06:00:ac:10:00", NULL, &m, &loop, BASE, 5, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "--net tap=kt0,mac=06:00:ac:10:00: mac=06:00:ac:10:00: expected six hex bytes"));
	ck_assert_int_eq(virtio_net_create(&dev, "tap=kt0,mac=06:00:ac:10:00:zz", NULL, &m, &loop, BASE, 5, &err), -EINVAL);
	ck_assert_int_eq(virtio_net_create(&dev, "tap=kt0,mac=01:00:5e:00:00:01", NULL, &m, &loop, BASE, 5, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "multicast"));
	ck_assert_int_eq(virtio_net_create(&dev, "tap=kt0,vhost=on", NULL, &m, &loop, BASE, 5, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "unknown option 'vhost=on'"));
}
END_TEST

/* A real tap where this process may make one: offloads set at activation. */
START_TEST(real_tap)
{
	char spec[64];
	int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
	int r;

	if (fd < 0)
		return;		/* no tun here, or not allowed: covered by the socketpair tests */
	close(fd);
	snprintf(spec, sizeof(spec), "tap=kut%d,mac=06:00:00:00:00:01", (int)(getpid() % 100000));
	r = virtio_net_create(&dev, spec, NULL, &m, &loop, BASE, 5, &err);
	if (r == -EPERM || r == -EACCES)
		return;
	ck_assert_msg(r == 0, "%s", err.msg);
	driver_init(~0ULL);
	driver_init(F_VERSION_1 | F_MAC | F_EVENT_IDX);
	send_tx(0, 60, 1);		/* the tap is down: the kernel drops it */
	settle(used_idx(1) == 1);
	ck_assert_uint_eq(used_idx(1), 1);
	/* Busy: one VM per tap. */
	{
		struct virtio_dev other;

		memset(&other, 0, sizeof(other));
		snprintf(spec, sizeof(spec), "tap=kut%d", (int)(getpid() % 100000));
		ck_assert_int_eq(virtio_net_create(&other, spec, NULL, &m, &loop, BASE + 0x200, 6, &err), -EBUSY);
		ck_assert_ptr_nonnull(strstr(err.msg, "in use"));
	}
}
END_TEST

Suite *suite_net(void)
{
	Suite *s = suite_create("net");
	TCase *tc = tcase_create("virtio-net");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, tx_frame_reaches_the_tap);
	tcase_add_test(tc, tx_hostile_chains_are_dropped);
	tcase_add_test(tc, tx_queue_disabled_in_flight);
	tcase_add_test(tc, rx_one_buffer_per_frame);
	tcase_add_test(tc, rx_mergeable_split);
	tcase_add_test(tc, rx_waits_for_buffers_without_loss_or_spin);
	tcase_add_test(tc, rx_hostile_buffers);
	tcase_add_test(tc, reset_with_frames_in_flight);
	tcase_add_test(tc, config_and_features);
	tcase_add_test(tc, bad_net_options);
	tcase_add_test(tc, real_tap);
	suite_add_tcase(s, tc);
	return s;
}
