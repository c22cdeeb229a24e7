/*
 * virtio-vsock driven as a guest driver would (register writes, rings in
 * guest memory) against real unix sockets in a scratch directory, with the
 * I/O loop run on the test's own thread (ioloop_poll), so no KVM and no
 * races. Host sockets are only ever read without blocking.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <grp.h>

#include "unit.h"
#include "virtio.h"
#include "virtio_vsock.h"

#define BASE		0xd0000000ULL
#define RING(q)		(0x100000ULL + (uint64_t)(q) * 0x10000)
#define RXBUF		0x1000000ULL
#define RXSTRIDE	0x11000ULL
#define TXBUF		0x3000000ULL
#define TXSTRIDE	0x20000ULL
#define EVBUF		0x5000000ULL
#define QSIZE		128
#define TXCHAINS	(QSIZE / 4)
#define GUEST_CID	3
#define BUF_ALLOC	(256 * 1024)	/* the device's advertised buffer */

#define OP_REQUEST	1
#define OP_RESPONSE	2
#define OP_RST		3
#define OP_SHUTDOWN	4
#define OP_RW		5
#define OP_CREDIT_UPDATE 6
#define OP_CREDIT_REQUEST 7

struct hdr {
	uint64_t src_cid, dst_cid;
	uint32_t src_port, dst_port, len;
	uint16_t type, op;
	uint32_t flags, buf_alloc, fwd_cnt;
} __attribute__((packed));

static struct guest_mem m;
static struct ioloop loop;
static struct virtio_dev dev;
static struct kiln_err err;
static char dir[64], uds[96];
static uint16_t next_avail[3], seen_used[3];

#define mmio_w(off, v) vdrv_write(&dev, (off), (v))
#define mmio_r(off) vdrv_read(&dev, (off))

static uint64_t ring_at(unsigned q)
{
	return RING(q);
}

static uint16_t *avail(unsigned q)
{
	return GUEST_PTR(&m, RING(q) + 0x1000, 4 + 2 * QSIZE);
}

static uint16_t *used(unsigned q)
{
	return GUEST_PTR(&m, RING(q) + 0x2000, 4 + 8 * QSIZE);
}

static void set_desc(unsigned q, unsigned i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next)
{
	struct virtq_desc *d = GUEST_PTR(&m, RING(q) + 16 * i, 16);

	*d = (struct virtq_desc){ addr, len, flags, next };
}

static void offer(unsigned q, uint16_t head)
{
	uint16_t *a = avail(q);

	a[2 + next_avail[q] % QSIZE] = head;
	__atomic_store_n(&a[1], ++next_avail[q], __ATOMIC_RELEASE);
}

/* The driver's side of 3.1.1 for the three queues. */
static void driver_init(void)
{
	mmio_w(0x70, 0);
	memset(GUEST_PTR(&m, RING(0), 0x30000), 0, 0x30000);
	memset(next_avail, 0, sizeof(next_avail));
	memset(seen_used, 0, sizeof(seen_used));
	/* VIRTIO_VSOCK_F_STREAM must be offered; accept only VERSION_1. */
	mmio_w(0x14, 0);
	ck_assert_uint_eq(mmio_r(0x10) & 1, 1);
	vdrv_init(&dev, 1ULL << VIRTIO_F_VERSION_1, 3, QSIZE, ring_at);
}

/* The device under test, with extra options (",opt=..." or ""), and its driver. */
static void dev_create(const char *extra)
{
	char spec[200];
	uint64_t cid = 0;

	snprintf(spec, sizeof(spec), "cid=%d,uds=%s%s", GUEST_CID, uds, extra);
	memset(&dev, 0, sizeof(dev));
	ck_assert_msg(virtio_vsock_create(&dev, spec, NULL, &m, &loop, BASE, 5, &err) == 0, "%s", err.msg);
	virtio_mmio_io(&dev, BASE + 0x100, (uint8_t *)&cid, 8, 0);
	ck_assert_uint_eq(cid, GUEST_CID);
	driver_init();
}

static void setup(void)
{
	unit_mem(&m, 128);
	ck_assert_int_eq(ioloop_init(&loop, 256, &err), 0);
	snprintf(dir, sizeof(dir), "/tmp/kiln-vsock-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(uds, sizeof(uds), "%s/v.sock", dir);
	dev_create("");
}

static void teardown(void)
{
	char cmd[128];

	virtio_mmio_destroy(&dev);
	ioloop_destroy(&loop);
	guest_mem_free(&m);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	ck_assert_int_eq(system(cmd), 0);
}

/* Run the I/O loop on this thread for about ms milliseconds. */
static void pump(int ms)
{
	int i;

	for (i = 0; i <= ms; i++) {
		ck_assert_int_ge(ioloop_poll(&loop, 0), 0);
		if (i < ms)
			usleep(1000);
	}
}

/* Give the device n rx buffers of len bytes (header included). */
static void rx_post(unsigned n, uint32_t len)
{
	unsigned i;

	ck_assert_uint_le(len, RXSTRIDE);
	for (i = 0; i < n; i++) {
		unsigned slot = next_avail[0] % QSIZE;

		set_desc(0, slot, RXBUF + slot * RXSTRIDE, len, VIRTQ_DESC_F_WRITE, 0);
		offer(0, (uint16_t)slot);
	}
	virtio_kick(&dev, 0);
}

/*
 * The guest sends h (len set from plen) and payload. split puts the header
 * in two descriptors (10 + 34 bytes) and the payload in a third.
 */
static void tx_send(struct hdr h, const void *payload, uint32_t plen, int split)
{
	unsigned slot = next_avail[1] % TXCHAINS, d0 = slot * 4;
	uint64_t buf = TXBUF + slot * TXSTRIDE;
	uint16_t before = used(1)[1];

	h.src_cid = h.src_cid ? h.src_cid : GUEST_CID;
	h.dst_cid = h.dst_cid ? h.dst_cid : 2;
	h.type = h.type ? h.type : 1;
	if (!h.len)
		h.len = plen;
	ck_assert_uint_le(plen, TXSTRIDE - 64);
	memcpy(GUEST_PTR(&m, buf, 44), &h, 44);
	if (plen)
		memcpy(GUEST_PTR(&m, buf + 64, plen), payload, plen);
	if (split) {
		set_desc(1, d0, buf, 10, VIRTQ_DESC_F_NEXT, (uint16_t)(d0 + 1));
		set_desc(1, d0 + 1, buf + 10, 34, plen ? VIRTQ_DESC_F_NEXT : 0, (uint16_t)(d0 + 2));
		set_desc(1, d0 + 2, buf + 64, plen, 0, 0);
	} else {
		/* One descriptor: the payload right behind the header. */
		if (plen)
			memmove(GUEST_PTR(&m, buf + 44, plen), GUEST_PTR(&m, buf + 64, plen), plen);
		set_desc(1, d0, buf, 44 + plen, 0, 0);
	}
	offer(1, (uint16_t)d0);
	virtio_kick(&dev, 1);
	ck_assert_uint_eq((uint16_t)(used(1)[1] - before), 1);	/* consumed at once */
	seen_used[1] = used(1)[1];
}

/* The next packet the device wrote to rx, waiting up to ms; its payload length or -1. */
static int rx_next(struct hdr *h, void *payload, uint32_t cap, int ms)
{
	int i;

	for (i = 0; i <= ms; i++) {
		uint16_t *u = used(0);

		if (__atomic_load_n(&u[1], __ATOMIC_ACQUIRE) != seen_used[0]) {
			struct virtq_used_elem e;
			struct virtq_desc *d;
			uint32_t plen;

			memcpy(&e, (uint8_t *)(u + 2) + 8 * (seen_used[0] % QSIZE), sizeof(e));
			seen_used[0]++;
			d = GUEST_PTR(&m, RING(0) + 16 * e.id, 16);
			ck_assert_uint_ge(e.len, 44);
			memcpy(h, GUEST_PTR(&m, d->addr, 44), 44);
			plen = e.len - 44;
			ck_assert_uint_eq(h->len, plen);
			ck_assert_uint_le(plen, cap);
			if (plen)
				memcpy(payload, GUEST_PTR(&m, d->addr + 44, plen), plen);
			return (int)plen;
		}
		ck_assert_int_ge(ioloop_poll(&loop, 0), 0);
		if (i < ms)
			usleep(1000);
	}
	return -1;
}

static void expect_pkt(struct hdr *h, uint16_t op, uint32_t host_port, uint32_t guest_port)
{
	static uint8_t junk[65536];

	ck_assert_msg(rx_next(h, junk, sizeof(junk), 2000) >= 0, "no packet (wanted op %u)", op);
	ck_assert_uint_eq(h->op, op);
	ck_assert_uint_eq(h->src_cid, 2);
	ck_assert_uint_eq(h->dst_cid, GUEST_CID);
	ck_assert_uint_eq(h->type, 1);
	if (host_port)
		ck_assert_uint_eq(h->src_port, host_port);
	ck_assert_uint_eq(h->dst_port, guest_port);
}

/* A unix listener at PATH_port, as a host service for guest connections. */
static int host_listen(uint32_t port)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s_%u", uds, port);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(listen(fd, 8), 0);
	return fd;
}

static int host_accept(int lfd)
{
	struct pollfd p = { .fd = lfd, .events = POLLIN };
	int fd;

	ck_assert_int_eq(poll(&p, 1, 2000), 1);
	fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	return fd;
}

/* A host client of the device's socket. */
static int host_connect(const char *line)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", uds);
	ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	if (line)
		ck_assert_int_eq(write(fd, line, strlen(line)), (ssize_t)strlen(line));
	return fd;
}

/*
 * Read up to want bytes from a host socket while the loop runs, for at most
 * ms. Returns bytes read; *eof says whether the device closed its end.
 */
static size_t host_read(int fd, void *buf, size_t want, int ms, int *eof)
{
	size_t got = 0;
	int i;

	*eof = 0;
	for (i = 0; i <= ms && got < want; i++) {
		ssize_t n = recv(fd, (uint8_t *)buf + got, want - got, MSG_DONTWAIT);

		if (n == 0 || (n < 0 && errno == ECONNRESET)) {
			*eof = 1;
			break;
		}
		if (n > 0) {
			got += (size_t)n;
			continue;
		}
		ck_assert_int_eq(errno, EAGAIN);
		pump(1);
	}
	return got;
}

/* A guest connection from guest port gport to host service port, accepted on the host. */
static int guest_conn(int lfd, uint32_t port, uint32_t gport)
{
	struct hdr h = { .src_port = gport, .dst_port = port, .op = OP_REQUEST, .buf_alloc = 65536 };

	tx_send(h, NULL, 0, 0);
	expect_pkt(&h, OP_RESPONSE, port, gport);
	return host_accept(lfd);
}

/* A host connection to guest port gport, accepted by the guest; returns the host fd. */
static int host_conn(uint32_t gport, uint32_t buf_alloc, uint32_t *host_port)
{
	char line[32], want[32];
	struct hdr h;
	int fd, eof;
	size_t n;

	snprintf(line, sizeof(line), "CONNECT %u\n", gport);
	fd = host_connect(line);
	expect_pkt(&h, OP_REQUEST, 0, gport);
	ck_assert_uint_ge(h.src_port, 1U << 30);
	ck_assert_uint_eq(h.buf_alloc, BUF_ALLOC);
	*host_port = h.src_port;
	tx_send((struct hdr){ .src_port = gport, .dst_port = *host_port, .op = OP_RESPONSE,
			      .buf_alloc = buf_alloc }, NULL, 0, 0);
	snprintf(want, sizeof(want), "OK %u\n", *host_port);
	n = host_read(fd, line, strlen(want), 2000, &eof);
	line[n] = '\0';
	ck_assert_str_eq(line, want);
	return fd;
}

START_TEST(guest_connects_to_host)
{
	int lfd = host_listen(5000), fd, eof;
	char buf[64];
	struct hdr h;

	rx_post(16, 4096 + 44);
	/* The REQUEST's header is split across two descriptors. */
	tx_send((struct hdr){ .src_port = 1234, .dst_port = 5000, .op = OP_REQUEST, .buf_alloc = 65536 },
		NULL, 0, 1);
	expect_pkt(&h, OP_RESPONSE, 5000, 1234);
	ck_assert_uint_eq(h.buf_alloc, BUF_ALLOC);
	ck_assert_uint_eq(h.fwd_cnt, 0);
	fd = host_accept(lfd);

	tx_send((struct hdr){ .src_port = 1234, .dst_port = 5000, .op = OP_RW, .buf_alloc = 65536 },
		"hello", 5, 1);
	ck_assert_uint_eq(host_read(fd, buf, 5, 2000, &eof), 5);
	ck_assert_int_eq(memcmp(buf, "hello", 5), 0);

	ck_assert_int_eq(write(fd, "world", 5), 5);
	pump(5);
	ck_assert_int_eq(rx_next(&h, buf, sizeof(buf), 2000), 5);
	ck_assert_uint_eq(h.op, OP_RW);
	ck_assert_int_eq(memcmp(buf, "world", 5), 0);

	/* Half-close from the guest: the host reads EOF, then closes its side. */
	tx_send((struct hdr){ .src_port = 1234, .dst_port = 5000, .op = OP_SHUTDOWN, .flags = 2,
			      .buf_alloc = 65536, .fwd_cnt = 5 }, NULL, 0, 0);
	ck_assert_uint_eq(host_read(fd, buf, 1, 2000, &eof), 0);
	ck_assert_int_eq(eof, 1);
	close(fd);
	expect_pkt(&h, OP_SHUTDOWN, 5000, 1234);
	ck_assert_uint_eq(h.flags, 2);
	/* The guest closes: the device finishes with a RST. */
	tx_send((struct hdr){ .src_port = 1234, .dst_port = 5000, .op = OP_SHUTDOWN, .flags = 3,
			      .buf_alloc = 65536, .fwd_cnt = 5 }, NULL, 0, 0);
	expect_pkt(&h, OP_RST, 5000, 1234);
	close(lfd);
}
END_TEST

START_TEST(guest_connect_refused)
{
	struct hdr h;

	rx_post(4, 4096 + 44);
	tx_send((struct hdr){ .src_port = 1234, .dst_port = 5001, .op = OP_REQUEST, .buf_alloc = 65536 },
		NULL, 0, 0);
	expect_pkt(&h, OP_RST, 5001, 1234);
}
END_TEST

START_TEST(host_connects_to_guest)
{
	uint32_t hport, hport2;
	char buf[64];
	struct hdr h;
	int fd, fd2, eof;

	rx_post(16, 4096 + 44);
	fd = host_conn(7000, 65536, &hport);
	/* A second connection to the same guest port gets its own host port. */
	fd2 = host_conn(7000, 65536, &hport2);
	ck_assert_uint_ne(hport, hport2);

	ck_assert_int_eq(write(fd, "ping", 4), 4);
	ck_assert_int_eq(rx_next(&h, buf, sizeof(buf), 2000), 4);
	ck_assert_uint_eq(h.op, OP_RW);
	ck_assert_uint_eq(h.src_port, hport);
	ck_assert_int_eq(memcmp(buf, "ping", 4), 0);
	tx_send((struct hdr){ .src_port = 7000, .dst_port = hport, .op = OP_RW, .buf_alloc = 65536,
			      .fwd_cnt = 4 }, "pong", 4, 1);
	ck_assert_uint_eq(host_read(fd, buf, 4, 2000, &eof), 4);
	ck_assert_int_eq(memcmp(buf, "pong", 4), 0);

	/* The host hangs up: the guest hears SHUTDOWN(SEND). */
	close(fd);
	expect_pkt(&h, OP_SHUTDOWN, hport, 7000);
	close(fd2);
}
END_TEST

START_TEST(host_data_pipelined_after_connect)
{
	char buf[64];
	struct hdr h;
	uint32_t hport;
	int fd;

	rx_post(8, 4096 + 44);
	fd = host_connect("CONNECT 7002\nearly");
	expect_pkt(&h, OP_REQUEST, 0, 7002);
	hport = h.src_port;
	tx_send((struct hdr){ .src_port = 7002, .dst_port = hport, .op = OP_RESPONSE, .buf_alloc = 65536 },
		NULL, 0, 0);
	ck_assert_int_eq(rx_next(&h, buf, sizeof(buf), 2000), 5);
	ck_assert_uint_eq(h.op, OP_RW);
	ck_assert_int_eq(memcmp(buf, "early", 5), 0);
	close(fd);
}
END_TEST

START_TEST(host_connect_refused)
{
	char buf[64];
	struct hdr h;
	int fd, eof;

	rx_post(4, 4096 + 44);
	fd = host_connect("CONNECT 7001\n");
	expect_pkt(&h, OP_REQUEST, 0, 7001);
	tx_send((struct hdr){ .src_port = 7001, .dst_port = h.src_port, .op = OP_RST }, NULL, 0, 0);
	/* Refused cleanly: EOF without an OK line. */
	ck_assert_uint_eq(host_read(fd, buf, sizeof(buf), 2000, &eof), 0);
	ck_assert_int_eq(eof, 1);
	close(fd);
}
END_TEST

START_TEST(host_connect_timeout)
{
	char buf[64];
	struct hdr h;
	uint32_t hport, live_port;
	int fd, live, eof;

	/* A device of its own, on a loop of its own (the old loop still watches the old one). */
	virtio_mmio_destroy(&dev);
	ioloop_destroy(&loop);
	ck_assert_int_eq(ioloop_init(&loop, 256, &err), 0);
	dev_create(",connect-timeout=200");
	rx_post(5, 4096 + 44);	/* 2 REQUESTs, 2 RSTs and a ping: then none left */
	live = host_conn(7000, 65536, &live_port);
	fd = host_connect("CONNECT 7003\n");
	expect_pkt(&h, OP_REQUEST, 0, 7003);
	hport = h.src_port;
	/* The guest never answers: the client sees EOF without an OK line, the guest a RST. */
	ck_assert_uint_eq(host_read(fd, buf, sizeof(buf), 2000, &eof), 0);
	ck_assert_int_eq(eof, 1);
	expect_pkt(&h, OP_RST, hport, 7003);
	close(fd);
	/* A late answer is for a connection that is gone. */
	tx_send((struct hdr){ .src_port = 7003, .dst_port = hport, .op = OP_RESPONSE, .buf_alloc = 65536 },
		NULL, 0, 0);
	expect_pkt(&h, OP_RST, hport, 7003);
	/* A connection the guest accepted in time lives on. */
	ck_assert_int_eq(write(live, "ping", 4), 4);
	ck_assert_int_eq(rx_next(&h, buf, sizeof(buf), 2000), 4);
	ck_assert_uint_eq(h.op, OP_RW);
	ck_assert_uint_eq(h.src_port, live_port);
	/* A guest that takes no REQUEST at all (no rx buffers) does not hold the client either... */
	fd = host_connect("CONNECT 7004\n");
	ck_assert_uint_eq(host_read(fd, buf, sizeof(buf), 2000, &eof), 0);
	ck_assert_int_eq(eof, 1);
	close(fd);
	/* ...and hears nothing of a connection it never saw. */
	rx_post(1, 4096 + 44);
	ck_assert_int_eq(rx_next(&h, buf, sizeof(buf), 300), -1);
	/* A client that never finishes its CONNECT line is closed too. */
	fd = host_connect("CONNECT 70");
	ck_assert_uint_eq(host_read(fd, buf, sizeof(buf), 2000, &eof), 0);
	ck_assert_int_eq(eof, 1);
	close(fd);
	ck_assert_int_eq(rx_next(&h, buf, sizeof(buf), 50), -1);
	close(live);
}
END_TEST

START_TEST(host_bad_handshake)
{
	static const char *const bad[] = {
		"HELLO 7000\n", "CONNECT\n", "CONNECT -1\n", "CONNECT 99999999999\n", "CONNECT 12x\n",
	};
	char buf[64];
	struct hdr h;
	unsigned i;
	int fd, eof;

	rx_post(4, 4096 + 44);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		fd = host_connect(bad[i]);
		ck_assert_msg(host_read(fd, buf, sizeof(buf), 2000, &eof) == 0 && eof, "%s", bad[i]);
		close(fd);
	}
	/* 64 bytes without a newline is not a CONNECT line either. */
	memset(buf, 'x', sizeof(buf));
	fd = host_connect(NULL);
	ck_assert_int_eq(write(fd, buf, sizeof(buf)), sizeof(buf));
	ck_assert_uint_eq(host_read(fd, buf, sizeof(buf), 2000, &eof), 0);
	ck_assert_int_eq(eof, 1);
	close(fd);
	ck_assert_int_eq(rx_next(&h, buf, sizeof(buf), 20), -1);	/* the guest heard nothing */
}
END_TEST

START_TEST(unknown_and_foreign_packets)
{
	char buf[64];
	struct hdr h;

	rx_post(16, 4096 + 44);
	/* A packet claiming another CID is dropped without an answer... */
	tx_send((struct hdr){ .src_cid = 5, .src_port = 1, .dst_port = 2, .op = OP_REQUEST }, NULL, 0, 0);
	/* ...data for no connection is answered with a RST... */
	tx_send((struct hdr){ .src_port = 10, .dst_port = 9999, .op = OP_RW }, "x", 1, 0);
	expect_pkt(&h, OP_RST, 9999, 10);
	/* ...and so is a RST? No: a RST is never answered. */
	tx_send((struct hdr){ .src_port = 11, .dst_port = 9999, .op = OP_RST }, NULL, 0, 0);
	/* Other socket types and other CIDs are refused. */
	tx_send((struct hdr){ .src_port = 12, .dst_port = 5000, .op = OP_REQUEST, .type = 2 }, NULL, 0, 0);
	expect_pkt(&h, OP_RST, 5000, 12);
	tx_send((struct hdr){ .src_port = 13, .dst_cid = 7, .dst_port = 5000, .op = OP_REQUEST }, NULL, 0, 0);
	ck_assert_int_eq(rx_next(&h, buf, sizeof(buf), 2000), 0);
	ck_assert_uint_eq(h.op, OP_RST);
	ck_assert_uint_eq(h.src_cid, 7);
	ck_assert_uint_eq(h.dst_port, 13);
	/* Unknown ops for no connection: RST. */
	tx_send((struct hdr){ .src_port = 14, .dst_port = 5000, .op = 99 }, NULL, 0, 0);
	expect_pkt(&h, OP_RST, 5000, 14);
	ck_assert_int_eq(rx_next(&h, buf, sizeof(buf), 20), -1);
	ck_assert_int_eq(virtio_running(&dev), 1);
}
END_TEST

START_TEST(bad_lengths_reset_the_connection)
{
	int lfd = host_listen(5000), fd, eof;
	char buf[64];
	struct hdr h;

	rx_post(16, 4096 + 44);
	fd = guest_conn(lfd, 5000, 1234);
	/* len says 100 bytes; the chain carries 10. */
	tx_send((struct hdr){ .src_port = 1234, .dst_port = 5000, .op = OP_RW, .len = 100 }, "0123456789", 10, 1);
	expect_pkt(&h, OP_RST, 5000, 1234);
	ck_assert_uint_eq(host_read(fd, buf, sizeof(buf), 2000, &eof), 0);
	ck_assert_int_eq(eof, 1);
	close(fd);
	/* An unknown op on a live connection resets it too. */
	fd = guest_conn(lfd, 5000, 1235);
	tx_send((struct hdr){ .src_port = 1235, .dst_port = 5000, .op = 42 }, NULL, 0, 0);
	expect_pkt(&h, OP_RST, 5000, 1235);
	close(fd);
	close(lfd);
	ck_assert_int_eq(virtio_running(&dev), 1);
}
END_TEST

START_TEST(chain_shorter_than_header)
{
	set_desc(1, 0, TXBUF, 20, 0, 0);
	offer(1, 0);
	virtio_kick(&dev, 1);
	ck_assert_uint_ne(mmio_r(0x70) & VIRTIO_STATUS_NEEDS_RESET, 0);
	/* The driver resets and starts over. */
	driver_init();
	ck_assert_int_eq(virtio_running(&dev), 1);
}
END_TEST

START_TEST(rx_buffer_shorter_than_header)
{
	int fd;

	rx_post(1, 16);
	fd = host_connect("CONNECT 7000\n");
	pump(20);
	ck_assert_uint_ne(mmio_r(0x70) & VIRTIO_STATUS_NEEDS_RESET, 0);
	close(fd);
}
END_TEST

START_TEST(credit_limits_what_the_guest_gets)
{
	static uint8_t data[20000], buf[8192];
	uint32_t hport, got = 0;
	struct hdr h;
	int fd, n;

	memset(data, 'd', sizeof(data));
	rx_post(64, 4096 + 44);
	fd = host_conn(7000, 8192, &hport);
	ck_assert_int_eq(write(fd, data, sizeof(data)), sizeof(data));
	while (got < 8192) {
		n = rx_next(&h, buf, sizeof(buf), 2000);
		ck_assert_int_gt(n, 0);
		ck_assert_uint_eq(h.op, OP_RW);
		got += (uint32_t)n;
	}
	ck_assert_uint_eq(got, 8192);
	/* Out of credit: the device asks for more, then waits. */
	expect_pkt(&h, OP_CREDIT_REQUEST, hport, 7000);
	ck_assert_int_eq(rx_next(&h, buf, sizeof(buf), 30), -1);
	tx_send((struct hdr){ .src_port = 7000, .dst_port = hport, .op = OP_CREDIT_UPDATE,
			      .buf_alloc = 8192, .fwd_cnt = 8192 }, NULL, 0, 0);
	while (got < 16384) {
		n = rx_next(&h, buf, sizeof(buf), 2000);
		ck_assert_int_gt(n, 0);
		got += (uint32_t)n;
	}
	ck_assert_uint_eq(got, 16384);
	/* A CREDIT_REQUEST from the guest gets our credit back. */
	tx_send((struct hdr){ .src_port = 7000, .dst_port = hport, .op = OP_CREDIT_REQUEST,
			      .buf_alloc = 8192, .fwd_cnt = 8192 }, NULL, 0, 0);
	n = rx_next(&h, buf, sizeof(buf), 2000);
	while (h.op == OP_RW || h.op == OP_CREDIT_REQUEST)
		n = rx_next(&h, buf, sizeof(buf), 2000);
	ck_assert_int_eq(n, 0);
	ck_assert_uint_eq(h.op, OP_CREDIT_UPDATE);
	ck_assert_uint_eq(h.buf_alloc, BUF_ALLOC);
	close(fd);
}
END_TEST

START_TEST(guest_credit_updates_and_overrun)
{
	static uint8_t data[65536], sink[65536];
	int lfd = host_listen(5000), fd, fd2, eof, i;
	size_t drained = 0;
	struct hdr h;

	memset(data, 'g', sizeof(data));
	rx_post(32, 4096 + 44);
	/* The host reads what the guest sends: the guest hears of the freed space. */
	fd = guest_conn(lfd, 5000, 1234);
	for (i = 0; i < 2; i++) {
		tx_send((struct hdr){ .src_port = 1234, .dst_port = 5000, .op = OP_RW }, data, sizeof(data), 0);
		drained += host_read(fd, sink, sizeof(sink), 2000, &eof);
	}
	while (drained < 2 * sizeof(data))
		drained += host_read(fd, sink, sizeof(sink), 2000, &eof);
	expect_pkt(&h, OP_CREDIT_UPDATE, 5000, 1234);
	ck_assert_uint_ge(h.fwd_cnt, BUF_ALLOC / 4);
	ck_assert_uint_eq(h.buf_alloc, BUF_ALLOC);
	while (rx_next(&h, sink, sizeof(sink), 20) >= 0)
		ck_assert_uint_eq(h.op, OP_CREDIT_UPDATE);
	ck_assert_uint_eq(h.fwd_cnt, 2 * sizeof(data));

	/* A guest that ignores our credit while the host does not read is reset. */
	fd2 = guest_conn(lfd, 5000, 1235);
	h.op = 0;
	for (i = 0; i < 16 && h.op != OP_RST; i++) {
		tx_send((struct hdr){ .src_port = 1235, .dst_port = 5000, .op = OP_RW }, data, sizeof(data), 0);
		while (rx_next(&h, sink, sizeof(sink), 0) >= 0 && h.op != OP_RST)
			ck_assert_uint_eq(h.op, OP_CREDIT_UPDATE);	/* what the socket took */
	}
	ck_assert_uint_eq(h.op, OP_RST);
	ck_assert_uint_eq(h.dst_port, 1235);
	/* The other connection is untouched. */
	tx_send((struct hdr){ .src_port = 1234, .dst_port = 5000, .op = OP_RW }, "ok", 2, 0);
	ck_assert_uint_eq(host_read(fd, sink, 2, 2000, &eof), 2);
	close(fd);
	close(fd2);
	close(lfd);
}
END_TEST

/* Open one connection of each kind, plus a host client still in its handshake. */
static void open_some(int lfd, int fds[3])
{
	uint32_t hport;

	rx_post(16, 4096 + 44);
	fds[0] = guest_conn(lfd, 5000, 1234);
	fds[1] = host_conn(7000, 65536, &hport);
	fds[2] = host_connect("CONN");
	pump(5);
	/* Data waiting in both directions. */
	ck_assert_int_eq(write(fds[1], "pending", 7), 7);
	tx_send((struct hdr){ .src_port = 1234, .dst_port = 5000, .op = OP_RW }, "x", 1, 0);
}

START_TEST(reset_closes_every_connection)
{
	int lfd = host_listen(5000), fds[3], i, eof;
	char buf[64];

	open_some(lfd, fds);
	mmio_w(0x70, 0);
	pump(20);
	for (i = 0; i < 3; i++) {
		host_read(fds[i], buf, sizeof(buf), 2000, &eof);
		ck_assert_msg(eof, "connection %d still open after reset", i);
		close(fds[i]);
	}
	/* The device works again after the driver comes back. */
	driver_init();
	rx_post(4, 4096 + 44);
	fds[0] = guest_conn(lfd, 5000, 1234);
	close(fds[0]);
	close(lfd);
}
END_TEST

START_TEST(destroy_with_open_connections)
{
	int lfd = host_listen(5000), fds[3], i;

	open_some(lfd, fds);
	virtio_mmio_destroy(&dev);	/* LeakSanitizer checks that nothing is left */
	for (i = 0; i < 3; i++)
		close(fds[i]);
	close(lfd);
	ck_assert_int_eq(access(uds, F_OK), -1);	/* the socket file is gone */
}
END_TEST

START_TEST(transport_reset_event)
{
	int lfd = host_listen(5000), fd, eof;
	uint32_t *ev = GUEST_PTR(&m, EVBUF, 8);
	char buf[8];

	rx_post(4, 4096 + 44);
	fd = guest_conn(lfd, 5000, 1234);
	ev[0] = 0xffffffff;
	set_desc(2, 0, EVBUF, 8, VIRTQ_DESC_F_WRITE, 0);
	offer(2, 0);
	virtio_kick(&dev, 2);
	ck_assert_uint_eq(used(2)[1], 0);		/* nothing to say yet */
	virtio_vsock_transport_reset(&dev);
	ck_assert_uint_eq(used(2)[1], 1);
	ck_assert_uint_eq(used(2)[4], 4);		/* len */
	ck_assert_uint_eq(ev[0], 0);			/* VIRTIO_VSOCK_EVENT_TRANSPORT_RESET */
	ck_assert_uint_eq(host_read(fd, buf, sizeof(buf), 2000, &eof), 0);
	ck_assert_int_eq(eof, 1);
	close(fd);
	close(lfd);
}
END_TEST

START_TEST(bad_options)
{
	static const struct { const char *spec, *msg; } bad[] = {
		{ "cid=2,uds=/tmp/x", "cid must be a number from 3" },
		{ "cid=4294967295,uds=/tmp/x", "cid must be a number from 3" },
		{ "cid=-3,uds=/tmp/x", "cid must be a number from 3" },
		{ "cid=abc,uds=/tmp/x", "cid must be a number from 3" },
		{ "uds=/tmp/x", "cid=N is required" },
		{ "cid=3", "uds=PATH is required" },
		{ "cid=3,uds=/tmp/x,port=1", "unknown option 'port=1'" },
		{ "cid=3,uds=/tmp/x,group=no-such-group-kiln", "group=no-such-group-kiln: no such group" },
		{ "cid=3,uds=/tmp/x,connect-timeout=0", "connect-timeout must be a number of milliseconds" },
		{ "cid=3,uds=/tmp/x,connect-timeout=3600001", "connect-timeout must be a number of milliseconds" },
		{ "cid=3,uds=/tmp/x,connect-timeout=5s", "connect-timeout must be a number of milliseconds" },
		{ "cid=3,uds=/tmp/x,connect-timeout=-1", "connect-timeout must be a number of milliseconds" },
		{ "cid=3,uds=/tmp/x,connect-timeout=99999999999999999999", "connect-timeout must be a number" },
		{ "", "cid=N is required" },
	};
	struct virtio_dev d2;
	char spec[300], path[256];
	unsigned i;
	int fd;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		memset(&d2, 0, sizeof(d2));
		ck_assert_int_lt(virtio_vsock_create(&d2, bad[i].spec, NULL, &m, &loop, BASE + 0x1000, 6, &err), 0);
		ck_assert_msg(strstr(err.msg, bad[i].msg) && strstr(err.msg, "--vsock"), "%s: %s", bad[i].spec, err.msg);
	}
	memset(path, 'a', 200);
	path[200] = '\0';
	snprintf(spec, sizeof(spec), "cid=3,uds=/tmp/%s", path);
	ck_assert_int_eq(virtio_vsock_create(&d2, spec, NULL, &m, &loop, BASE + 0x1000, 6, &err), -ENAMETOOLONG);
	ck_assert_ptr_nonnull(strstr(err.msg, "shorter"));
	/* A live socket (this test's device) is not stolen... */
	snprintf(spec, sizeof(spec), "cid=4,uds=%s", uds);
	ck_assert_int_eq(virtio_vsock_create(&d2, spec, NULL, &m, &loop, BASE + 0x1000, 6, &err), -EADDRINUSE);
	ck_assert_ptr_nonnull(strstr(err.msg, "another process"));
	/* ...a regular file in the way is not replaced; a stale socket is. */
	snprintf(path, sizeof(path), "%s/file", dir);
	fd = open(path, O_CREAT | O_WRONLY, 0600);
	ck_assert_int_ge(fd, 0);
	close(fd);
	snprintf(spec, sizeof(spec), "cid=4,uds=%s", path);
	ck_assert_int_eq(virtio_vsock_create(&d2, spec, NULL, &m, &loop, BASE + 0x1000, 6, &err), -EEXIST);
	ck_assert_ptr_nonnull(strstr(err.msg, "not a socket"));
	snprintf(path, sizeof(path), "%s/stale.sock", dir);
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	{
		struct sockaddr_un sa = { .sun_family = AF_UNIX };

		snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/stale.sock", dir);
		ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	}
	close(fd);
	snprintf(spec, sizeof(spec), "uds=%s,cid=4", path);
	memset(&d2, 0, sizeof(d2));
	ck_assert_msg(virtio_vsock_create(&d2, spec, NULL, &m, &loop, BASE + 0x1000, 6, &err) == 0, "%s", err.msg);
	virtio_mmio_destroy(&d2);
}
END_TEST

/*
 * The host socket is 0600 whatever the umask, and a client of another uid
 * is closed before the guest hears of it, even when a chmod lets it connect.
 */
START_TEST(host_socket_owner_only)
{
	struct stat st;
	struct hdr h;
	uint32_t hport;
	char buf[64];
	mode_t old;
	pid_t pid;
	int i, status = -1;

	/* Again, under umask 0 (and a new loop: the old one watches the old socket). */
	virtio_mmio_destroy(&dev);
	ioloop_destroy(&loop);
	ck_assert_int_eq(ioloop_init(&loop, 256, &err), 0);
	old = umask(0);
	dev_create("");
	umask(old);
	ck_assert_int_eq(lstat(uds, &st), 0);
	ck_assert_uint_eq(st.st_mode & 07777, 0600);
	if (geteuid() != 0)
		return;		/* a client of another uid needs root */
	ck_assert_int_eq(chmod(dir, 0755), 0);
	ck_assert_int_eq(chmod(uds, 0777), 0);
	rx_post(4, 4096 + 44);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		/* nobody: exit 0 if closed without a byte, 1 if answered, 2 if never closed. */
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		struct pollfd p;
		int fd;

		if (setgroups(0, NULL) < 0 || setresgid(65534, 65534, 65534) < 0 || setresuid(65534, 65534, 65534) < 0)
			_exit(3);
		snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", uds);
		fd = socket(AF_UNIX, SOCK_STREAM, 0);
		if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
			_exit(4);
		(void)!send(fd, "CONNECT 7000\n", 13, MSG_NOSIGNAL);
		p = (struct pollfd){ .fd = fd, .events = POLLIN };
		if (poll(&p, 1, 10000) != 1)
			_exit(2);
		_exit(recv(fd, buf, sizeof(buf), 0) > 0 ? 1 : 0);
	}
	for (i = 0; i < 15000 && waitpid(pid, &status, WNOHANG) == 0; i++)
		pump(1);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "another uid's client: status %#x", status);
	ck_assert_msg(rx_next(&h, buf, sizeof(buf), 100) < 0, "the guest heard of another uid's client (op %u)", h.op);
	/* The owner is served as ever. */
	close(host_conn(7000, 65536, &hport));
}
END_TEST

Suite *suite_vsock(void)
{
	Suite *s = suite_create("vsock");
	TCase *tc = tcase_create("device");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, guest_connects_to_host);
	tcase_add_test(tc, guest_connect_refused);
	tcase_add_test(tc, host_connects_to_guest);
	tcase_add_test(tc, host_data_pipelined_after_connect);
	tcase_add_test(tc, host_connect_refused);
	tcase_add_test(tc, host_connect_timeout);
	tcase_add_test(tc, host_bad_handshake);
	tcase_add_test(tc, unknown_and_foreign_packets);
	tcase_add_test(tc, bad_lengths_reset_the_connection);
	tcase_add_test(tc, chain_shorter_than_header);
	tcase_add_test(tc, rx_buffer_shorter_than_header);
	tcase_add_test(tc, credit_limits_what_the_guest_gets);
	tcase_add_test(tc, guest_credit_updates_and_overrun);
	tcase_add_test(tc, reset_closes_every_connection);
	tcase_add_test(tc, destroy_with_open_connections);
	tcase_add_test(tc, transport_reset_event);
	tcase_add_test(tc, bad_options);
	tcase_add_test(tc, host_socket_owner_only);
	suite_add_tcase(s, tc);
	return s;
}
