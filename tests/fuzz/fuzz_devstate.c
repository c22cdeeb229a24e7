/*
 * libFuzzer target: hostile device state from a snapshot file, fed to
 * virtio_mmio_restore for virtio-blk, virtio-net or virtio-vsock. A state
 * must be refused with a message or restore a device that then runs against
 * hostile rings without crashing, hanging, leaking or touching memory
 * outside the guest (ASan, UBSan and LeakSanitizer watch).
 *
 * Input: [0] the device (mod 3: blk, net, vsock), [1..2] little-endian
 * length L, then L bytes of state (what virtio_mmio_save writes), then
 * guest-memory writes applied before the restore, each [gpa: 3 bytes LE]
 * [len: 1 byte][len bytes], so rings named by the state can hold anything.
 *
 * The devices are created once and reused: after each input the device is
 * reset through its status register and its in-flight I/O drained, which
 * leaves it as a restore expects it (status 0). They match the devices of
 * tests/unit/test_devsnap.c, which writes the seeds in
 * tests/fuzz/corpus/fuzz_devstate/ (KILN_DEVSNAP_CORPUS=DIR).
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "virtio.h"
#include "virtio_net.h"
#include "virtio_blk.h"

#define BASE		0xd0000000ULL
#define IMG_SIZE	(1024 * 1024)
#define SCRIPT_SPAN	(16 * MIB)	/* guest memory the input may write */

enum { DEV_BLK, DEV_NET, DEV_VSOCK, NDEV };

static struct guest_mem mem;
static struct ioloop loop;
static struct virtio_dev dev[NDEV];
static int peer = -1;			/* the host network's end of virtio-net's socketpair */
static char dir[] = "/tmp/kiln-fuzz-devstate-XXXXXX";
static char img[64], uds[96];

static void cleanup(void)
{
	unlink(img);
	unlink(uds);
	rmdir(dir);
}

static void setup_once(void)
{
	static const uint8_t mac[6] = { 0x06, 0x00, 0xac, 0x10, 0x00, 0x07 };
	struct kiln_err err;
	char spec[160];
	int fd, sv[2];

	if (guest_mem_alloc(&mem, 128 * MIB, 0, &err) < 0 || ioloop_init(&loop, 256, &err) < 0 || !mkdtemp(dir))
		abort();
	atexit(cleanup);
	snprintf(img, sizeof(img), "%s/disk.img", dir);
	snprintf(uds, sizeof(uds), "%s/v.sock", dir);
	fd = open(img, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || ftruncate(fd, IMG_SIZE) < 0)
		abort();
	close(fd);
	if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
		abort();
	peer = sv[1];
	snprintf(spec, sizeof(spec), "cid=3,uds=%s", uds);
	if (virtio_blk_create(&dev[DEV_BLK], img, NULL, &mem, &loop, BASE, 5, &err) < 0 ||
	    virtio_net_create_fd(&dev[DEV_NET], sv[0], mac, NULL, &mem, &loop, BASE + 0x1000, 6, &err) < 0 ||
	    virtio_vsock_create(&dev[DEV_VSOCK], spec, NULL, &mem, &loop, BASE + 0x2000, 7, &err) < 0) {
		fprintf(stderr, "%s\n", err.msg);
		abort();
	}
}

/* Run the loop a little, and take whatever the guest sent to the network. */
static void pump(void)
{
	uint8_t frame[65562];
	int i;

	for (i = 0; i < 4; i++)
		if (ioloop_poll(&loop, 0) <= 0)
			break;
	while (recv(peer, frame, sizeof(frame), MSG_DONTWAIT) > 0)
		;
}

/* A host program knocks on the vsock device's socket. */
static int vsock_client(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", uds);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || write(fd, "CONNECT 52\n", 11) != 11) {
		close(fd);
		return -1;
	}
	return fd;
}

/* Run the restored device: resume, traffic from the host, a kick on every queue. */
static void run_restored(struct virtio_dev *d, unsigned which)
{
	static const uint8_t frame[12 + 60] = { [12] = 0xff, [13] = 0xff };
	unsigned q;
	int fd = -1;

	virtio_mmio_resumed(d);
	pump();
	if (which == DEV_NET)
		(void)!send(peer, frame, sizeof(frame), MSG_DONTWAIT);
	else if (which == DEV_VSOCK)
		fd = vsock_client();
	pump();
	for (q = 0; q < d->ops->num_queues; q++)
		virtio_kick(d, q);
	pump();
	if (fd >= 0)
		close(fd);
}

/* Back to status 0 with nothing in flight, as a restore expects. */
static void reset_device(struct virtio_dev *d)
{
	uint32_t zero = 0;
	int i;

	virtio_mmio_io(d, d->base + 0x70, (uint8_t *)&zero, 4, 1);
	for (i = 0; i < 2000; i++) {
		pump();
		if (virtio_mmio_inflight(d) == 0)
			break;
		usleep(100);
	}
	if (virtio_mmio_inflight(d) != 0)
		abort();	/* a hang: the device never finished its I/O */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int ready;
	struct kiln_err err;
	struct snap_rd r;
	struct virtio_dev *d;
	unsigned which;
	size_t len, i;

	if (!ready) {
		setup_once();
		ready = 1;
	}
	if (size < 3)
		return 0;
	which = data[0] % NDEV;
	d = &dev[which];
	len = (size_t)(data[1] | data[2] << 8);
	if (len > size - 3)
		len = size - 3;

	/* Fresh guest memory: zero pages again, so each input stands alone. */
	madvise(mem.host, mem.size, MADV_DONTNEED);
	for (i = 3 + len; size - i >= 4;) {
		uint64_t gpa = (uint64_t)data[i] | (uint64_t)data[i + 1] << 8 | (uint64_t)data[i + 2] << 16;
		size_t n = data[i + 3];

		i += 4;
		if (n > size - i)
			n = size - i;
		memcpy(GUEST_PTR(&mem, gpa, n ? n : 1), data + i, n);
		i += n;
	}

	snapr_init(&r, data + 3, len);
	err.msg[0] = '\0';
	if (virtio_mmio_restore(d, &r, &err) == 0)
		run_restored(d, which);
	else if (!err.msg[0])
		abort();	/* every refusal says why */
	reset_device(d);
	return 0;
}
