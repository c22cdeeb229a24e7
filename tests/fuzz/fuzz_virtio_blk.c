/*
 * libFuzzer target: a hostile driver for virtio-blk over the virtio-mmio
 * transport. The input is a queue size, the descriptor table, the avail ring
 * and request bytes in guest memory; the device must refuse, fail the
 * request or ask for a reset, never crash, hang or touch memory outside the
 * guest (ASan and UBSan watch).
 *
 * Input layout: [0] log2 queue size, [1] number of requests offered,
 * [2..] descriptor table (16 bytes each), then avail ring entries (2 bytes
 * each), then up to 4 KiB copied to the request area at REQ.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "virtio.h"
#include "virtio_blk.h"

#define BASE	0xd0000000ULL
#define DESC	0x100000ULL
#define AVAIL	0x101000ULL
#define USED	0x102000ULL
#define REQ	0x200000ULL

static struct guest_mem mem;
static struct ioloop loop;
static struct virtio_dev dev;

static void w32(uint32_t off, uint32_t v)
{
	virtio_mmio_io(&dev, BASE + off, (uint8_t *)&v, 4, 1);
}

static void setup_once(void)
{
	struct kiln_err err;
	char path[64];
	int fd;

	if (guest_mem_alloc(&mem, 128 * MIB, 0, &err) < 0 || ioloop_init(&loop, 64, &err) < 0)
		abort();
	fd = memfd_create("kiln-fuzz-disk", 0);
	if (fd < 0 || ftruncate(fd, 64 * 1024) < 0)
		abort();
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	if (virtio_blk_create(&dev, path, NULL, &mem, &loop, BASE, 5, &err) < 0) {
		fprintf(stderr, "%s\n", err.msg);
		abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int ready;
	unsigned qsize, n, i;
	uint16_t *avail;
	size_t off = 2;

	if (!ready) {
		setup_once();
		ready = 1;
	}
	if (size < 2)
		return 0;
	qsize = 1u << (data[0] % 9);			/* 1..256 */
	n = data[1];

	/* A fresh driver: reset, zeroed rings, features, one queue. */
	w32(0x70, 0);
	memset(GUEST_PTR(&mem, DESC, 0x3000), 0, 0x3000);
	w32(0x70, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	w32(0x24, 1);
	w32(0x20, 1);					/* VIRTIO_F_VERSION_1 */
	w32(0x24, 0);
	w32(0x20, data[0] & 0x80 ? 1u << 29 : 0);	/* EVENT_IDX, sometimes */
	w32(0x70, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
	w32(0x30, 0);
	w32(0x38, qsize);
	w32(0x80, (uint32_t)DESC);
	w32(0x90, (uint32_t)AVAIL);
	w32(0xa0, (uint32_t)USED);
	w32(0x44, 1);
	w32(0x70, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
		  VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);

	for (i = 0; i < qsize && off + 16 <= size; i++, off += 16)
		memcpy(GUEST_PTR(&mem, DESC + 16 * i, 16), data + off, 16);
	avail = GUEST_PTR(&mem, AVAIL, 6 + 2 * 256);
	for (i = 0; i < qsize && off + 2 <= size; i++, off += 2)
		memcpy(&avail[2 + i], data + off, 2);
	if (off < size)
		memcpy(GUEST_PTR(&mem, REQ, 4096), data + off, size - off < 4096 ? size - off : 4096);
	avail[1] = (uint16_t)n;

	virtio_kick(&dev, 0);
	while (loop.inflight)
		ioloop_poll(&loop, 1);
	return 0;
}
