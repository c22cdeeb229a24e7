/*
 * libFuzzer target: a hostile guest driver and host clients against
 * virtio-vsock over the virtio-mmio transport, with real unix sockets and the
 * I/O loop run on this thread (ioloop_poll). The device must answer, reset a
 * connection or ask for a device reset; never crash, hang, leak or touch
 * memory outside the guest (ASan, UBSan and LeakSanitizer watch).
 *
 * Input: [0] log2 queue size (bit 7: EVENT_IDX), then commands, each a
 * byte and its operands:
 *   0 FIX LEN16 BYTES  a tx packet of LEN bytes over 1-4 descriptors (FIX's
 *                      low bits), with FIX's high bits forcing valid
 *                      addresses and ports so it reaches the connections
 *   1 N LEN16          post N rx buffers of LEN bytes
 *   2 K DESC*K HEAD    raw tx descriptors, then offer HEAD
 *   3 PORT             a host client sends "CONNECT <PORT>\n"
 *   4 WHO LEN BYTES    a host socket writes LEN bytes
 *   5 WHAT             run completions, close a host socket, kick the
 *                      event queue or post a transport reset
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "virtio.h"
#include "virtio_vsock.h"

#define BASE		0xd0000000ULL
#define RING(q)		(0x100000ULL + (uint64_t)(q) * 0x10000)
#define RXBUF		0x400000ULL
#define TXBUF		0x800000ULL
#define EVBUF		0xc00000ULL
#define GUEST_CID	3
#define SERVICE_PORT	1000
#define MAX_HOST	8

static struct guest_mem mem;
static struct ioloop loop;
static struct virtio_dev dev;
static char uds[96];
static int service_fd = -1;
static int host_fd[MAX_HOST];
static unsigned nhost;
static uint16_t next_avail[3];
static unsigned qsize;

static void w32(uint32_t off, uint32_t v)
{
	virtio_mmio_io(&dev, BASE + off, (uint8_t *)&v, 4, 1);
}

static char dir[] = "/tmp/kiln-fuzz-vsock-XXXXXX";

static void cleanup(void)
{
	char path[128];

	snprintf(path, sizeof(path), "%s_%d", uds, SERVICE_PORT);
	unlink(path);
	unlink(uds);
	rmdir(dir);
}

static void setup_once(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct kiln_err err;
	char spec[160];

	if (guest_mem_alloc(&mem, KILN_MIN_MEM_MIB * MIB, 0, &err) < 0 || ioloop_init(&loop, 256, &err) < 0 ||
	    !mkdtemp(dir))
		abort();
	atexit(cleanup);
	snprintf(uds, sizeof(uds), "%s/v.sock", dir);
	snprintf(spec, sizeof(spec), "cid=%d,uds=%s", GUEST_CID, uds);
	if (virtio_vsock_create(&dev, spec, NULL, &mem, &loop, BASE, 5, &err) < 0) {
		fprintf(stderr, "%s\n", err.msg);
		abort();
	}
	/* A host service the guest can reach at CID 2 port SERVICE_PORT. */
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s_%d", uds, SERVICE_PORT);
	service_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (service_fd < 0 || bind(service_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    listen(service_fd, 64) < 0)
		abort();
}

static void pump(void)
{
	int i, fd;

	for (i = 0; i < 4; i++)
		if (ioloop_poll(&loop, 0) <= 0)
			break;
	/* The service takes what the guest opened (and keeps a few to talk to). */
	while ((fd = accept4(service_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
		if (nhost < MAX_HOST)
			host_fd[nhost++] = fd;
		else
			close(fd);
	}
}

static void close_hosts(void)
{
	while (nhost)
		close(host_fd[--nhost]);
}

static void offer(unsigned q, uint16_t head)
{
	uint16_t *avail = GUEST_PTR(&mem, RING(q) + 0x1000, 4 + 2 * qsize);

	avail[2 + next_avail[q] % qsize] = head;
	avail[1] = ++next_avail[q];
}

static void set_desc(unsigned q, unsigned i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next)
{
	struct virtq_desc *d = GUEST_PTR(&mem, RING(q) + 16 * (i % qsize), 16);

	*d = (struct virtq_desc){ addr, len, flags, (uint16_t)(next % qsize) };
}

static void driver_init(int event_idx)
{
	unsigned q;

	w32(0x70, 0);
	memset(GUEST_PTR(&mem, RING(0), 0x30000), 0, 0x30000);
	memset(next_avail, 0, sizeof(next_avail));
	w32(0x70, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	w32(0x24, 1);
	w32(0x20, 1);				/* VIRTIO_F_VERSION_1 */
	w32(0x24, 0);
	w32(0x20, event_idx ? 1u << 29 | 1 : 1);	/* EVENT_IDX, F_STREAM */
	w32(0x70, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
	for (q = 0; q < 3; q++) {
		w32(0x30, q);
		w32(0x38, qsize);
		w32(0x80, (uint32_t)RING(q));
		w32(0x90, (uint32_t)(RING(q) + 0x1000));
		w32(0xa0, (uint32_t)(RING(q) + 0x2000));
		w32(0x44, 1);
	}
	w32(0x70, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
		  VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
}

/* A tx packet from input bytes over 1-4 descriptors. */
static void tx_packet(uint8_t fix, const uint8_t *p, size_t len)
{
	unsigned ndesc = (fix & 3) + 1, i, head = next_avail[1] * 4u;
	uint8_t *buf = GUEST_PTR(&mem, TXBUF, 0x20000);
	size_t off = 0;

	memcpy(buf, p, len);
	if ((fix & 0x80) && len >= 44) {
		uint64_t src = GUEST_CID, dst = 2;
		uint16_t type = 1;

		memcpy(buf, &src, 8);
		memcpy(buf + 8, &dst, 8);
		memcpy(buf + 36, &type, 2);
		if (fix & 0x40) {
			uint32_t port = SERVICE_PORT;	/* dst_port */

			memcpy(buf + 20, &port, 4);
		}
		if (fix & 0x20) {
			uint32_t plen = (uint32_t)(len - 44);	/* an honest len */

			memcpy(buf + 24, &plen, 4);
		}
	}
	for (i = 0; i < ndesc; i++) {
		size_t piece = i + 1 == ndesc ? len - off : len / ndesc;

		set_desc(1, head + i, TXBUF + off, (uint32_t)piece, i + 1 < ndesc ? VIRTQ_DESC_F_NEXT : 0,
			 (uint16_t)(head + i + 1));
		off += piece;
	}
	offer(1, (uint16_t)(head % qsize));
	virtio_kick(&dev, 1);
}

static void host_client(uint16_t port)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char line[32];
	int fd, n;

	if (nhost == MAX_HOST)
		return;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", uds);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(fd);
		return;
	}
	n = snprintf(line, sizeof(line), "CONNECT %u\n", port);
	(void)!write(fd, line, (size_t)n);
	host_fd[nhost++] = fd;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int ready;
	size_t i = 1;

	if (!ready) {
		setup_once();
		ready = 1;
	}
	if (size < 1)
		return 0;
	qsize = 1u << ((data[0] & 0x7f) % 9);	/* 1..256 */
	close_hosts();
	driver_init(data[0] & 0x80);
	pump();

	while (i < size) {
		uint8_t cmd = data[i++] % 6;

		switch (cmd) {
		case 0: {
			size_t len;

			if (size - i < 3)
				return 0;
			len = (size_t)(data[i + 1] | data[i + 2] << 8);
			if (len > size - i - 3)
				len = size - i - 3;
			tx_packet(data[i], data + i + 3, len);
			i += 3 + len;
			break;
		}
		case 1: {
			unsigned n, k;
			uint32_t len;

			if (size - i < 3)
				return 0;
			n = data[i] % 16;
			len = (uint32_t)(data[i + 1] | data[i + 2] << 8);
			i += 3;
			for (k = 0; k < n; k++) {
				unsigned slot = next_avail[0] % qsize;

				set_desc(0, slot, RXBUF + slot * 0x1000ULL, len % 0x1000, VIRTQ_DESC_F_WRITE, 0);
				offer(0, (uint16_t)slot);
			}
			virtio_kick(&dev, 0);
			break;
		}
		case 2: {
			unsigned k, n;

			if (size - i < 1)
				return 0;
			n = data[i++] % 8;
			if (size - i < 16 * n + 2)
				return 0;
			for (k = 0; k < n; k++)
				memcpy(GUEST_PTR(&mem, RING(1) + 16 * (k % qsize), 16), data + i + 16 * k, 16);
			i += 16 * n;
			offer(1, (uint16_t)(data[i] | data[i + 1] << 8));
			i += 2;
			virtio_kick(&dev, 1);
			break;
		}
		case 3:
			if (size - i < 1)
				return 0;
			host_client(data[i] & 1 ? SERVICE_PORT : data[i]);
			i++;
			break;
		case 4: {
			size_t len;

			if (size - i < 2)
				return 0;
			len = data[i + 1];
			if (len > size - i - 2)
				len = size - i - 2;
			if (nhost)
				(void)!send(host_fd[data[i] % nhost], data + i + 2, len, MSG_DONTWAIT | MSG_NOSIGNAL);
			i += 2 + len;
			break;
		}
		case 5:
			if (size - i < 1)
				return 0;
			switch (data[i] % 4) {
			case 0:
				break;
			case 1:
				if (nhost) {
					unsigned k = data[i] / 4 % nhost;

					close(host_fd[k]);
					host_fd[k] = host_fd[--nhost];
				}
				break;
			case 2:
				set_desc(2, 0, EVBUF, data[i] / 4, VIRTQ_DESC_F_WRITE, 0);
				offer(2, 0);
				virtio_kick(&dev, 2);
				break;
			case 3:
				virtio_vsock_transport_reset(&dev);
				break;
			}
			i++;
			break;
		}
		pump();
	}
	return 0;
}
