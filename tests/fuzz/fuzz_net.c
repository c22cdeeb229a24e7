/*
 * libFuzzer target: virtio-net's tx and rx paths against a hostile driver
 * and a hostile network. The input picks the negotiated features and queue
 * sizes, fills both descriptor tables and avail rings in guest memory, and
 * supplies the frames the host side sends; the device runs on a real
 * io_uring against a socketpair (no KVM, no tap). It must refuse or carry
 * every frame, never crash, touch memory outside guest RAM, leak or hang.
 *
 * Input: a 16-byte header (u64 features, u8 rx and tx queue size as log2,
 * u8 flags, u8 pad, u16 rx and tx avail index), the rx descriptor table and
 * avail ring, the tx descriptor table and avail ring, then frames for the
 * host side as [u16 length][bytes]. Descriptor addresses and lengths are
 * folded into guest RAM unless their top bit is set, so most chains get past
 * the ring checks into the device.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "virtio.h"
#include "virtio_net.h"

#define BASE		0xd0000000ULL
#define RING(q)		(0x100000ULL + (q) * 0x10000ULL)	/* desc; avail +0x1000; used +0x2000 */
#define DATA		0x400000ULL
#define DATA_WINDOW	(4 * MIB)

#define FLAG_RESET	1	/* the driver resets with I/O in flight */
#define FLAG_TWICE	2	/* kick both queues a second time after the frames */

struct fuzz_hdr {
	uint64_t features;
	uint8_t rx_log, tx_log, flags, pad;
	uint16_t rx_idx, tx_idx;
};

static struct guest_mem mem;

static void mmio_w(struct virtio_dev *d, uint32_t off, uint32_t v)
{
	virtio_mmio_io(d, BASE + off, (uint8_t *)&v, 4, 1);
}

static uint32_t mmio_r(struct virtio_dev *d, uint32_t off)
{
	uint32_t v = 0;

	virtio_mmio_io(d, BASE + off, (uint8_t *)&v, 4, 0);
	return v;
}

/* Copy up to len bytes of input into guest memory at gpa; returns bytes used. */
static size_t take(const uint8_t **data, size_t *size, uint64_t gpa, size_t len)
{
	size_t n = len < *size ? len : *size;

	memset(GUEST_PTR(&mem, gpa, len), 0, len);
	memcpy(GUEST_PTR(&mem, gpa, len), *data, n);
	*data += n;
	*size -= n;
	return n;
}

/* Lay out queue q of size entries from the input, folding addresses into RAM. */
static void ring_fill(unsigned q, unsigned size, uint16_t idx, const uint8_t **data, size_t *size_left)
{
	struct virtq_desc *desc = GUEST_PTR(&mem, RING(q), 16 * size);
	uint16_t *avail = GUEST_PTR(&mem, RING(q) + 0x1000, 6 + 2 * size);
	unsigned i;

	take(data, size_left, RING(q), 16 * size);
	for (i = 0; i < size; i++) {
		if (!(desc[i].addr >> 63))
			desc[i].addr = DATA + desc[i].addr % DATA_WINDOW;
		if (!(desc[i].len >> 31))
			desc[i].len %= 0x20000;
	}
	memset(avail, 0, 6 + 2 * size);
	memcpy(avail + 2, *data, *size_left < 2 * size ? *size_left : 2 * size);
	*data += *size_left < 2 * size ? *size_left : 2 * size;
	*size_left -= *size_left < 2 * size ? *size_left : 2 * size;
	avail[1] = (uint16_t)(idx % (2 * size + 1));
	memset(GUEST_PTR(&mem, RING(q) + 0x2000, 6 + 8 * size), 0, 6 + 8 * size);
}

static void driver_init(struct virtio_dev *d, const struct fuzz_hdr *h)
{
	uint64_t offered;
	unsigned q;

	mmio_w(d, 0x70, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	mmio_w(d, 0x14, 0);
	offered = mmio_r(d, 0x10);
	mmio_w(d, 0x14, 1);
	offered |= (uint64_t)mmio_r(d, 0x10) << 32;
	mmio_w(d, 0x24, 0);
	mmio_w(d, 0x20, (uint32_t)(h->features & offered));
	mmio_w(d, 0x24, 1);
	mmio_w(d, 0x20, (uint32_t)((h->features & offered) >> 32) | 1);	/* VERSION_1 */
	mmio_w(d, 0x70, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
	for (q = 0; q < 2; q++) {
		mmio_w(d, 0x30, q);
		mmio_w(d, 0x38, 1u << ((q ? h->tx_log : h->rx_log) % 9));
		mmio_w(d, 0x80, (uint32_t)RING(q));
		mmio_w(d, 0x90, (uint32_t)(RING(q) + 0x1000));
		mmio_w(d, 0xa0, (uint32_t)(RING(q) + 0x2000));
		mmio_w(d, 0x44, 1);
	}
	mmio_w(d, 0x70, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
			VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
}

static void run_loop(struct ioloop *l, int rounds)
{
	while (rounds--)
		ioloop_poll(l, 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint8_t mac[6] = { 0x06, 0, 0xac, 0x10, 0, 2 };
	static uint8_t sink[70000];
	struct virtio_dev dev;
	struct ioloop loop;
	struct kiln_err err;
	struct fuzz_hdr h;
	int sv[2];

	if (!mem.host && guest_mem_alloc(&mem, 128 * MIB, 0, &err) < 0)
		abort();
	if (size < sizeof(h))
		return 0;
	memcpy(&h, data, sizeof(h));
	data += sizeof(h);
	size -= sizeof(h);
	ring_fill(0, 1u << (h.rx_log % 9), h.rx_idx, &data, &size);
	ring_fill(1, 1u << (h.tx_log % 9), h.tx_idx, &data, &size);

	if (ioloop_init(&loop, 64, &err) < 0)
		abort();
	if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
		abort();
	memset(&dev, 0, sizeof(dev));
	if (virtio_net_create_fd(&dev, sv[0], mac, NULL, &mem, &loop, BASE, 5, &err) < 0)
		abort();
	driver_init(&dev, &h);
	run_loop(&loop, 2);
	virtio_kick(&dev, 1);
	virtio_kick(&dev, 0);
	while (size >= 2) {
		size_t len = (size_t)(data[0] | data[1] << 8);

		data += 2;
		size -= 2;
		if (len > size)
			len = size;
		(void)!send(sv[1], data, len, 0);
		data += len;
		size -= len;
		run_loop(&loop, 1);
	}
	run_loop(&loop, 2);
	if (h.flags & FLAG_TWICE) {
		virtio_kick(&dev, 1);
		virtio_kick(&dev, 0);
		run_loop(&loop, 2);
	}
	while (recv(sv[1], sink, sizeof(sink), 0) > 0)
		;
	if (h.flags & FLAG_RESET) {
		virtio_kick(&dev, 1);
		mmio_w(&dev, 0x70, 0);
		run_loop(&loop, 1);
	}
	virtio_mmio_destroy(&dev);
	ioloop_destroy(&loop);
	close(sv[1]);
	return 0;
}
