/*
 * libFuzzer target: a hostile driver that rewrites the transport's queue
 * registers (QueueSel, QueueNum, QueueReady, ring addresses, Status) while
 * requests are in flight on virtio-blk, virtio-net and virtio-vsock at once
 * (issue 11). Guest RAM is followed by an unmapped guard of 1 MiB, and a
 * ring can be placed so that it ends at the last byte of RAM: a completion
 * that indexed a ring with a size it was not validated for, or wrote
 * anywhere outside guest RAM, faults (and ASan, UBSan and LeakSanitizer
 * watch the rest).
 *
 * Input: commands, each a byte and its operands:
 *   0 DEV LOG2 END   the driver's whole set-up of DEV: every queue with
 *                    2^LOG2 entries; queue (END & 3)'s used ring ends at
 *                    the end of RAM
 *   1 DEV REG V32    one register write, REG picked from the transport's
 *                    writable registers (ring addresses land near the end)
 *   2 DEV Q          kick queue Q
 *   3 N              run the I/O loop N times without waiting
 *   4 DEV Q K        offer K requests on queue Q, built from templates
 *   5 LEN            a frame from the tap's side (net rx)
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "virtio.h"
#include "virtio_net.h"
#include "virtio_blk.h"

#define RAM		(2 * MIB)
#define GUARD		MIB
#define BASE(dev)	(0xd0000000ULL + (uint64_t)(dev) * 0x1000)
#define RINGS(dev, q)	(0x40000ULL + ((uint64_t)(dev) * 4 + (q)) * 0x4000)
#define BUFS(dev)	(0x100000ULL + (uint64_t)(dev) * 0x40000)
#define NDEV		3
#define MAXQ		3

static struct guest_mem mem;
static struct ioloop loop;
static struct virtio_dev dev[NDEV];
static int tap_peer = -1;
static uint16_t next_avail[NDEV][MAXQ];
static unsigned qsize[NDEV];
static char dir[] = "/tmp/kiln-fuzz-queue-XXXXXX";
static char uds[128];

static void w32(unsigned d, uint32_t off, uint32_t v)
{
	virtio_mmio_io(&dev[d], BASE(d) + off, (uint8_t *)&v, 4, 1);
}

static void cleanup(void)
{
	unlink(uds);
	rmdir(dir);
}

static void setup_once(void)
{
	static const uint8_t mac[6] = { 6, 0, 0xac, 0x10, 0, 2 };
	struct kiln_err err;
	char spec[256], path[64];
	uint8_t *p;
	int fd, sv[2];

	/* Guest RAM, then a guard nothing may touch. */
	p = mmap(NULL, RAM + GUARD, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED || mprotect(p, RAM, PROT_READ | PROT_WRITE) < 0)
		abort();
	mem = (struct guest_mem){ .host = p, .size = RAM, .low_size = RAM };
	if (ioloop_init(&loop, 256, &err) < 0)
		abort();

	fd = memfd_create("kiln-fuzz-disk", 0);
	if (fd < 0 || ftruncate(fd, 64 * 1024) < 0)
		abort();
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	if (virtio_blk_create(&dev[0], path, NULL, &mem, &loop, BASE(0), 5, &err) < 0)
		goto fail;

	if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
		abort();
	tap_peer = sv[1];
	if (virtio_net_create_fd(&dev[1], sv[0], mac, NULL, &mem, &loop, BASE(1), 6, &err) < 0)
		goto fail;

	if (!mkdtemp(dir))
		abort();
	atexit(cleanup);
	snprintf(uds, sizeof(uds), "%s/v.sock", dir);
	snprintf(spec, sizeof(spec), "cid=3,uds=%s", uds);
	if (virtio_vsock_create(&dev[2], spec, NULL, &mem, &loop, BASE(2), 7, &err) < 0)
		goto fail;
	return;
fail:
	fprintf(stderr, "%s\n", err.msg);
	abort();
}

static uint64_t used_len(unsigned n)
{
	return (6 + 8 * (uint64_t)n + 3) & ~3ULL;
}

/* The driver's side of 3.1.1, queues of 2^log2 entries. */
static void driver_init(unsigned d, unsigned log2, unsigned end_q)
{
	const uint32_t drv = VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER;
	unsigned n = 1u << (log2 % 9), q;

	w32(d, 0x70, 0);
	memset(GUEST_PTR(&mem, RINGS(d, 0), MAXQ * 0x4000), 0, MAXQ * 0x4000);
	memset(next_avail[d], 0, sizeof(next_avail[d]));
	qsize[d] = n;
	w32(d, 0x70, drv);
	w32(d, 0x24, 1);
	w32(d, 0x20, 1);				/* VIRTIO_F_VERSION_1 */
	w32(d, 0x24, 0);
	w32(d, 0x20, log2 & 0x80 ? 1u << 29 : 0);	/* EVENT_IDX, sometimes */
	w32(d, 0x70, drv | VIRTIO_STATUS_FEATURES_OK);
	for (q = 0; q < dev[d].ops->num_queues && q < MAXQ; q++) {
		uint64_t used = q == end_q ? RAM - used_len(n) : RINGS(d, q) + 0x2000;

		if (q == end_q)
			memset(GUEST_PTR(&mem, used, used_len(n)), 0, used_len(n));
		w32(d, 0x30, q);
		w32(d, 0x38, n);
		w32(d, 0x80, (uint32_t)RINGS(d, q));
		w32(d, 0x90, (uint32_t)(RINGS(d, q) + 0x1000));
		w32(d, 0xa0, (uint32_t)used);
		w32(d, 0x44, 1);
	}
	w32(d, 0x70, drv | VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
}

/* One register write; addresses point into the last 64 KiB of RAM or the rings. */
static void reg_write(unsigned d, uint8_t which, uint32_t v)
{
	static const uint32_t regs[] = { 0x30, 0x38, 0x44, 0x70, 0x80, 0x90, 0xa0, 0x84, 0x20, 0x24, 0x64 };
	uint32_t off = regs[which % (sizeof(regs) / sizeof(regs[0]))];

	if (off == 0x80 || off == 0x90 || off == 0xa0)
		v = v & 1 ? (uint32_t)(RAM - 8 * (v >> 1 & 0x1fff)) : (uint32_t)(RINGS(d, v >> 1 & 3) + (v & 0x3000));
	else if (off == 0x38)
		v = v & 0x100 ? v : 1u << (v % 9);
	w32(d, off, v);
}

/* Put a request in the ring: two descriptors at 2i and 2i+1 (mod the size). */
static void offer(unsigned d, unsigned q, unsigned k)
{
	unsigned n = qsize[d];
	uint64_t buf = BUFS(d) + (uint64_t)(k % 8) * 0x2000;
	uint16_t a = (uint16_t)(2 * next_avail[d][q] % n), b = (uint16_t)((2 * next_avail[d][q] + 1) % n);
	struct virtq_desc *desc;
	uint16_t *avail;
	int readable_first = d == 0 || (d == 1 && q == 1) || (d == 2 && q == 1);

	if (!n || q >= dev[d].ops->num_queues || q >= MAXQ)
		return;
	desc = GUEST_PTR(&mem, RINGS(d, q), 16 * (uint64_t)n);
	avail = GUEST_PTR(&mem, RINGS(d, q) + 0x1000, 6 + 2 * (uint64_t)n);
	if (!desc || !avail)
		return;
	if (d == 0) {
		uint32_t hdr[4] = { k & 1 ? 1 : k & 2 ? 4 : 0, 0, k % 64, 0 };

		memcpy(GUEST_PTR(&mem, buf, 16), hdr, 16);
	} else if (d == 2 && q == 1) {
		/* A vsock REQUEST from the guest to host port 5000+k (no one listens). */
		uint8_t pkt[44] = { 0 };
		uint64_t src = 3, dst = 2;
		uint32_t sport = 1024 + k, dport = 5000 + k % 4, op = 1, type = 1, bufalloc = 65536;

		memcpy(pkt, &src, 8);
		memcpy(pkt + 8, &dst, 8);
		memcpy(pkt + 16, &sport, 4);
		memcpy(pkt + 20, &dport, 4);
		memcpy(pkt + 28, &type, 2);
		memcpy(pkt + 30, &op, 2);
		memcpy(pkt + 36, &bufalloc, 4);
		memcpy(GUEST_PTR(&mem, buf, 44), pkt, 44);
	}
	if (readable_first) {
		desc[a] = (struct virtq_desc){ buf, d == 0 ? 16 : d == 1 ? 72 : 44,
					       (uint16_t)(d == 0 ? VIRTQ_DESC_F_NEXT : 0), b };
		if (d == 0)
			desc[b] = (struct virtq_desc){ buf + 0x20, 4097, VIRTQ_DESC_F_WRITE, 0 };
	} else {
		desc[a] = (struct virtq_desc){ buf, 4096, VIRTQ_DESC_F_WRITE, 0 };
	}
	avail[2 + next_avail[d][q] % n] = a;
	__atomic_store_n(&avail[1], ++next_avail[d][q], __ATOMIC_RELEASE);
}

static void run_loop(unsigned rounds)
{
	while (rounds--)
		if (ioloop_poll(&loop, 0) <= 0)
			break;
}

/* Let every request the devices submitted complete (bounded: never hang). */
static void drain(void)
{
	static uint8_t frame[65536];
	unsigned d, busy, tries = 0;

	do {
		while (read(tap_peer, frame, sizeof(frame)) > 0)
			;	/* the tap's side takes what the guest sent */
		ioloop_poll(&loop, 0);
		for (busy = 0, d = 0; d < NDEV; d++)
			busy += virtio_mmio_inflight(&dev[d]);
	} while (busy && ++tries < 100000);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int ready;
	uint8_t frame[1600];
	size_t off = 0;
	unsigned d;

	if (!ready) {
		setup_once();
		ready = 1;
	}
	for (d = 0; d < NDEV; d++)
		driver_init(d, 4, 9);
	while (off < size) {
		uint8_t cmd = data[off++] % 6;
		uint32_t v;

		switch (cmd) {
		case 0:
			if (off + 3 > size)
				goto out;
			driver_init(data[off] % NDEV, data[off + 1], data[off + 2] & 3);
			off += 3;
			break;
		case 1:
			if (off + 6 > size)
				goto out;
			memcpy(&v, data + off + 2, 4);
			reg_write(data[off] % NDEV, data[off + 1], v);
			off += 6;
			break;
		case 2:
			if (off + 2 > size)
				goto out;
			virtio_kick(&dev[data[off] % NDEV], data[off + 1] % MAXQ);
			off += 2;
			break;
		case 3:
			if (off + 1 > size)
				goto out;
			run_loop(data[off++] % 8);
			break;
		case 4:
			if (off + 3 > size)
				goto out;
			for (v = 0; v < data[off + 2] % 8u; v++)
				offer(data[off] % NDEV, data[off + 1] % MAXQ, data[off + 2] + v);
			off += 3;
			break;
		case 5:
			if (off + 1 > size)
				goto out;
			memset(frame, data[off], sizeof(frame));
			memset(frame, 0, 12);		/* a plain virtio-net header */
			(void)!write(tap_peer, frame, 12 + 60 + data[off] * 4u);
			off++;
			break;
		}
	}
out:
	/* Finish what is in flight, then leave every device reset for the next input. */
	drain();
	for (d = 0; d < NDEV; d++)
		w32(d, 0x70, 0);
	drain();
	return 0;
}
