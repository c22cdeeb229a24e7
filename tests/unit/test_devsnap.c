/*
 * Device snapshots: a device driven as a guest driver would, saved with
 * virtio_mmio_save, then a fresh device over the same guest memory restored
 * with virtio_mmio_restore and resumed, must carry on where the first left
 * off. Hostile states are refused with a message and change nothing.
 *
 * With KILN_DEVSNAP_CORPUS=DIR set, the states saved here are also written
 * to DIR as seeds for tests/fuzz/fuzz_devstate.c (type byte, u16 length,
 * state).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "i8042.h"
#include "serial.h"
#include "unit.h"
#include "virtio.h"
#include "virtio_blk.h"
#include "virtio_net.h"
#include "virtio_vsock.h"


#define BASE		0xd0000000ULL
#define QSIZE		16
#define RING(q)		(0x100000ULL + (uint64_t)(q) * 0x10000)	/* desc; avail +0x1000; used +0x2000 */
#define BUF(q, i)	(0x400000ULL + (uint64_t)(q) * 0x100000 + (uint64_t)(i) * 0x10000)
#define IMG_SECTORS	2048
#define HDR_LEN		12	/* virtio_net_hdr_v1 */
#define VSOCK_HDR	44
#define GUEST_CID	3

/*
 * The transport's layout (virtio_mmio_save), pinned here so the hostile
 * cases below can damage one field at a time.
 */
#define OFF_VERSION	0
#define OFF_DEVICE_ID	2
#define OFF_NQ		6
#define OFF_STATUS	8
#define OFF_DEV_SEL	12
#define OFF_DRV_SEL	16
#define OFF_QUEUE_SEL	20
#define OFF_ISR		28
#define OFF_OFFERED	32
#define OFF_ACKED	40
#define OFF_Q(q)	(48 + 35 * (q))
#define Q_READY		0
#define Q_SIZE		1
#define Q_LAST_AVAIL	3
#define Q_USED_IDX	5
#define Q_SIGNALLED	7
#define Q_EVENT_IDX	9
#define Q_DESC		11
#define Q_AVAIL		19
#define Q_USED		27
#define OFF_DEV(nq)	(48 + 35 * (nq))	/* u32 length, then the device's part */

static struct guest_mem m;
static struct ioloop loop;
static struct virtio_dev a, b, c;	/* the original, its restored successor, a spare */
static struct kiln_err err;
static struct snap_buf state;
static char dir[64];
static unsigned nqueues;

static void setup(void)
{
	unit_mem(&m, 128);
	ck_assert_int_eq(ioloop_init(&loop, 256, &err), 0);
	memset(&a, 0, sizeof(a));
	memset(&b, 0, sizeof(b));
	memset(&c, 0, sizeof(c));
	snapw_init(&state);
	snprintf(dir, sizeof(dir), "/tmp/kiln-devsnap-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void teardown(void)
{
	char cmd[128];

	virtio_mmio_destroy(&a);
	virtio_mmio_destroy(&b);
	virtio_mmio_destroy(&c);
	ioloop_destroy(&loop);
	guest_mem_free(&m);
	snapw_free(&state);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	ck_assert_int_eq(system(cmd), 0);
}

/* ---- a guest driver over any of the devices -------------------------------- */

#include "vrings.h"

/* Run the I/O loop on this thread until cond holds or about 2 s pass. */
#define settle(cond)								\
	do {									\
		int spins_;							\
		for (spins_ = 0; !(cond) && spins_ < 2000; spins_++) {		\
			ck_assert_int_ge(ioloop_poll(&loop, 0), 0);		\
			if (!(cond))						\
				usleep(1000);					\
		}								\
		ck_assert_msg((cond), "timed out waiting for " #cond);		\
	} while (0)

static void spin(unsigned ms)
{
	while (ms--) {
		ck_assert_int_ge(ioloop_poll(&loop, 0), 0);
		usleep(1000);
	}
}

static void driver_init(struct virtio_dev *d, uint64_t want, unsigned nq)
{
	unsigned q;

	vdrv_write(d, 0x70, 0);
	memset(GUEST_PTR(&m, RING(0), 0x10000 * nq), 0, 0x10000 * nq);
	memset(next_avail, 0, sizeof(next_avail));
	nqueues = nq;
	vdrv_init(d, want, nq, QSIZE, ring_at);
	for (q = 0; q < nq; q++)
		ck_assert_int_eq(d->queue_ready[q], 1);
	ioloop_poll(&loop, 0);	/* activation's hop onto the I/O thread */
}

/* ---- saving and restoring -------------------------------------------------- */

/* Write the last saved state as a fuzz seed (see the header comment). */
static void corpus_write(const char *name, uint8_t type)
{
	const char *out = getenv("KILN_DEVSNAP_CORPUS");
	uint8_t hdr[3] = { type, (uint8_t)state.len, (uint8_t)(state.len >> 8) };
	char path[512];
	FILE *f;

	if (!out)
		return;
	snprintf(path, sizeof(path), "%s/%s", out, name);
	f = fopen(path, "wb");
	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(fwrite(hdr, 1, 3, f), 3);
	ck_assert_uint_eq(fwrite(state.p, 1, state.len, f), state.len);
	ck_assert_int_eq(fclose(f), 0);
}

static void save(struct virtio_dev *d)
{
	ck_assert_uint_eq(virtio_mmio_inflight(d), 0);
	snapw_free(&state);
	ck_assert_int_eq(virtio_mmio_save(d, &state), 0);
	ck_assert_uint_gt(state.len, OFF_DEV(d->ops->num_queues));
	/* The layout the hostile cases rely on. */
	ck_assert_uint_eq(state.p[OFF_DEVICE_ID], d->ops->device_id);
	ck_assert_uint_eq(state.p[OFF_NQ], d->ops->num_queues);
}

/*
 * The snapshotted VMM exits: its device goes, with its I/O loop (whatever
 * was still armed there dies with it), and the restored device gets a new
 * loop, as a new kiln-vmm would.
 */
static void old_vmm_exits(void)
{
	virtio_mmio_destroy(&a);
	ioloop_destroy(&loop);
	ck_assert_int_eq(ioloop_init(&loop, 256, &err), 0);
}

static int restore(struct virtio_dev *d, const void *p, size_t len)
{
	struct snap_rd r;

	memset(&err, 0, sizeof(err));
	snapr_init(&r, p, len);
	return virtio_mmio_restore(d, &r, &err);
}

static void put_le(uint8_t *p, uint64_t v, int n)
{
	int i;

	for (i = 0; i < n; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* The device untouched by a refused restore: nothing of the state applied. */
static void assert_pristine(struct virtio_dev *d)
{
	unsigned q;

	ck_assert_uint_eq(d->status, 0);
	ck_assert_uint_eq(d->acked, 0);
	ck_assert_uint_eq(d->queue_sel, 0);
	ck_assert_uint_eq(vdrv_read(d, 0x60), 0);
	for (q = 0; q < VIRTIO_MAX_QUEUES; q++) {
		ck_assert_int_eq(d->queue_ready[q], 0);
		ck_assert_uint_eq(d->vq[q].size, 0);
		ck_assert_uint_eq(d->vq[q].last_avail, 0);
		ck_assert_ptr_null(d->vq[q].desc);
	}
}

/* Restore the saved state with n bytes at off replaced by v: refused, saying why. */
static void refuse_patched(struct virtio_dev *d, size_t off, int n, uint64_t v, const char *why)
{
	uint8_t *p = malloc(state.len);

	ck_assert_ptr_nonnull(p);
	ck_assert_uint_le(off + (size_t)n, state.len);
	memcpy(p, state.p, state.len);
	put_le(p + off, v, n);
	ck_assert_int_eq(restore(d, p, state.len), -EINVAL);
	free(p);
	ck_assert_msg(strstr(err.msg, why) != NULL, "wanted \"%s\", got \"%s\"", why, err.msg);
	ck_assert_msg(strstr(err.msg, d->ops->name) != NULL, "message does not name the device: %s", err.msg);
	assert_pristine(d);
}

/* ---- virtio-blk ---------------------------------------------------------------- */

static uint8_t pattern(uint64_t off)
{
	return (uint8_t)(off * 31 + off / 512);
}

static void make_image(const char *path, uint64_t sectors)
{
	static uint8_t buf[IMG_SECTORS * 512];
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	uint64_t i;

	ck_assert_int_ge(fd, 0);
	for (i = 0; i < sizeof(buf); i++)
		buf[i] = pattern(i);
	ck_assert_int_eq(ftruncate(fd, (off_t)(sectors * 512)), 0);
	ck_assert_int_eq(pwrite(fd, buf, sizeof(buf), 0), (ssize_t)sizeof(buf));
	close(fd);
}

static void open_blk(struct virtio_dev *d, const char *name, const char *opts)
{
	char spec[160];

	snprintf(spec, sizeof(spec), "%s/%s%s", dir, name, opts);
	ck_assert_msg(virtio_blk_create(d, spec, NULL, &m, &loop, BASE, 5, &err) == 0, "%s", err.msg);
}

/* Offer a read of len bytes from sector as request k (descriptors 3k..3k+2), no kick. */
static void blk_offer_read(unsigned k, uint64_t sector, uint32_t len)
{
	uint32_t hdr[4] = { 0, 0, (uint32_t)sector, (uint32_t)(sector >> 32) };
	uint64_t at = BUF(0, k);

	memcpy(GUEST_PTR(&m, at, 16), hdr, 16);
	memset(GUEST_PTR(&m, at + 0x1000, len), 0, len);
	*(uint8_t *)GUEST_PTR(&m, at + 0xf000, 1) = 0xee;
	set_desc(0, 3 * k, at, 16, VIRTQ_DESC_F_NEXT, (uint16_t)(3 * k + 1));
	set_desc(0, 3 * k + 1, at + 0x1000, len, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, (uint16_t)(3 * k + 2));
	set_desc(0, 3 * k + 2, at + 0xf000, 1, VIRTQ_DESC_F_WRITE, 0);
	offer(0, (uint16_t)(3 * k));
}

/* Request k read sector's bytes correctly and landed in used slot i. */
static void blk_check_read(unsigned k, unsigned i, uint64_t sector, uint32_t len)
{
	const uint8_t *data = GUEST_PTR(&m, BUF(0, k) + 0x1000, len);
	uint32_t j;

	ck_assert_uint_eq(used_elem(0, i).id, 3 * k);
	ck_assert_uint_eq(used_elem(0, i).len, len + 1);
	ck_assert_uint_eq(*(uint8_t *)GUEST_PTR(&m, BUF(0, k) + 0xf000, 1), 0);
	for (j = 0; j < len; j++)
		ck_assert_uint_eq(data[j], pattern(sector * 512 + j));
}

/* A blk device that has done two reads and has a third queued whose kick was lost. */
static void blk_busy_original(void)
{
	char path[128];

	snprintf(path, sizeof(path), "%s/disk.img", dir);
	make_image(path, IMG_SECTORS);
	open_blk(&a, "disk.img", "");
	driver_init(&a, ~0ULL, 1);
	blk_offer_read(0, 0, 4096);
	virtio_kick(&a, 0);
	/* Submitted to io_uring, not yet completed: a snapshot must wait. */
	ck_assert_uint_eq(virtio_mmio_inflight(&a), 1);
	settle(used_idx(0) == 1);
	ck_assert_uint_eq(virtio_mmio_inflight(&a), 0);
	blk_offer_read(1, 8, 512);
	virtio_kick(&a, 0);
	settle(used_idx(0) == 2);
	blk_check_read(1, 1, 8, 512);
	blk_offer_read(2, 100, 1024);
}

START_TEST(blk_restored_device_carries_on)
{
	char from[128], to[128], cmd[300], stats[512];
	uint32_t status;

	blk_busy_original();
	status = vdrv_read(&a, 0x70);
	ck_assert_uint_eq(vdrv_read(&a, 0x60), VIRTIO_INT_USED);	/* not yet acknowledged */
	save(&a);
	corpus_write("blk-busy", 0);
	old_vmm_exits();
	/* The clone runs on its own copy of the disk. */
	snprintf(from, sizeof(from), "%s/disk.img", dir);
	snprintf(to, sizeof(to), "%s/clone.img", dir);
	snprintf(cmd, sizeof(cmd), "cp %s %s", from, to);
	ck_assert_int_eq(system(cmd), 0);
	open_blk(&b, "clone.img", "");
	ck_assert_msg(restore(&b, state.p, state.len) == 0, "%s", err.msg);
	ck_assert_uint_eq(vdrv_read(&b, 0x70), status);
	ck_assert_uint_eq(vdrv_read(&b, 0x60), VIRTIO_INT_USED);
	vdrv_write(&b, 0x30, 0);
	ck_assert_uint_eq(vdrv_read(&b, 0x44), 1);
	ck_assert_uint_eq(b.vq[0].last_avail, 2);
	ck_assert_uint_eq(b.vq[0].used_idx, 2);

	/* The read queued before the snapshot, whose kick was lost, is done on resume. */
	virtio_mmio_resumed(&b);
	settle(used_idx(0) == 3);
	blk_check_read(2, 2, 100, 1024);
	/* And the ring keeps going. */
	blk_offer_read(3, IMG_SECTORS - 1, 512);
	virtio_kick(&b, 0);
	settle(used_idx(0) == 4);
	blk_check_read(3, 3, IMG_SECTORS - 1, 512);
	ck_assert_int_eq(virtio_running(&b), 1);

	ck_assert_int_gt(virtio_mmio_stats(&b, stats, sizeof(stats)), 0);
	ck_assert_msg(strstr(stats, "{\"type\":\"blk\",") == stats, "%s", stats);
	ck_assert_msg(strstr(stats, "\"reads\":2,") != NULL, "%s", stats);
	ck_assert_msg(strstr(stats, "\"kicks\":1,") != NULL, "%s", stats);
	ck_assert_uint_eq(stats[strlen(stats) - 1], '}');
	ck_assert_int_eq(virtio_mmio_stats(&b, stats, 20), -ENOSPC);
}
END_TEST

START_TEST(blk_hostile_states_refused)
{
	size_t len, dev = OFF_DEV(1);
	uint8_t *longer;

	blk_busy_original();
	save(&a);
	old_vmm_exits();
	open_blk(&b, "disk.img", "");

	for (len = 0; len < state.len; len++) {
		ck_assert_int_eq(restore(&b, state.p, len), -EINVAL);
		ck_assert_msg(strstr(err.msg, "virtio-blk state: ") == err.msg, "%s", err.msg);
		assert_pristine(&b);
	}
	longer = malloc(state.len + 1);
	ck_assert_ptr_nonnull(longer);
	memcpy(longer, state.p, state.len);
	longer[state.len] = 0;
	ck_assert_int_eq(restore(&b, longer, state.len + 1), -EINVAL);
	free(longer);
	ck_assert_msg(strstr(err.msg, "trailing") != NULL, "%s", err.msg);

	refuse_patched(&b, OFF_VERSION, 2, 2, "format version 2");
	refuse_patched(&b, OFF_DEVICE_ID, 4, 1, "type 1");
	refuse_patched(&b, OFF_NQ, 2, 2, "with 2 queues");
	refuse_patched(&b, OFF_STATUS, 4, 0x0f | 0x10, "unknown bits");
	refuse_patched(&b, OFF_STATUS, 4, 0x07, "DRIVER_OK without FEATURES_OK");
	refuse_patched(&b, OFF_DEV_SEL, 4, 2, "feature selects");
	refuse_patched(&b, OFF_DRV_SEL, 4, 0xffffffff, "feature selects");
	refuse_patched(&b, OFF_QUEUE_SEL, 4, 1, "queue select 1");
	refuse_patched(&b, OFF_ISR, 4, 4, "interrupt status");
	refuse_patched(&b, OFF_ACKED, 8, 1ULL << 32 | 1ULL << 62, "never offered");
	refuse_patched(&b, OFF_ACKED, 8, 1ULL << 9, "VERSION_1");
	refuse_patched(&b, OFF_OFFERED, 8, 1ULL << 32, "offered features");
	refuse_patched(&b, OFF_Q(0) + Q_READY, 1, 2, "not 0 or 1");
	refuse_patched(&b, OFF_Q(0) + Q_EVENT_IDX, 1, 7, "not 0 or 1");
	refuse_patched(&b, OFF_Q(0) + Q_SIZE, 2, 300, "queue 0 size 300 is not a power of two up to 256");
	refuse_patched(&b, OFF_Q(0) + Q_SIZE, 2, 512, "size 512");
	refuse_patched(&b, OFF_Q(0) + Q_SIZE, 2, 0, "size 0");
	/* used_idx is 2: a last_avail more than QSIZE ahead of it cannot be. */
	refuse_patched(&b, OFF_Q(0) + Q_LAST_AVAIL, 2, 2 + QSIZE + 1, "last_avail 19");
	refuse_patched(&b, OFF_Q(0) + Q_LAST_AVAIL, 2, 1, "last_avail 1");
	refuse_patched(&b, OFF_Q(0) + Q_SIGNALLED, 2, 0xfff0, "signalled_used");
	refuse_patched(&b, OFF_Q(0) + Q_DESC, 8, 0x10000000000ULL, "outside guest RAM");
	refuse_patched(&b, OFF_Q(0) + Q_USED, 8, 128 * MIB - 64, "outside guest RAM");
	refuse_patched(&b, OFF_Q(0) + Q_AVAIL, 8, RING(0) + 0x1001, "misaligned");
	refuse_patched(&b, dev, 4, 4097, "limit");
	refuse_patched(&b, dev + 4, 8, IMG_SECTORS + 1, "had 2049 sectors");
	refuse_patched(&b, dev + 4 + 8, 1, 1, "was read-only");
	refuse_patched(&b, dev + 4 + 8 + 1, 4, 5, "disk id: truncated");	/* "kiln" claims 5 bytes */
	refuse_patched(&b, dev + 4 + 8 + 1, 4, 3, "trailing");		/* "kil", then a stray byte */
	refuse_patched(&b, dev + 4 + 8 + 1 + 4, 1, 'K', "id 'Kiln'");

	/* All of that changed nothing: the real state still restores. */
	ck_assert_msg(restore(&b, state.p, state.len) == 0, "%s", err.msg);
	/* And once the driver runs, a second restore is refused. */
	ck_assert_int_eq(restore(&b, state.p, state.len), -EBUSY);
}
END_TEST

START_TEST(blk_other_disk_refused)
{
	char path[128];

	blk_busy_original();
	save(&a);
	old_vmm_exits();
	snprintf(path, sizeof(path), "%s/big.img", dir);
	make_image(path, 2 * IMG_SECTORS);
	open_blk(&b, "big.img", "");
	ck_assert_int_eq(restore(&b, state.p, state.len), -EINVAL);
	ck_assert_msg(strstr(err.msg, "virtio-blk state: the snapshot's disk had 2048 sectors") != NULL &&
		      strstr(err.msg, "big.img has 4096") != NULL, "%s", err.msg);
	assert_pristine(&b);
	virtio_mmio_destroy(&b);
	open_blk(&b, "disk.img", ",id=other");
	ck_assert_int_eq(restore(&b, state.p, state.len), -EINVAL);
	ck_assert_msg(strstr(err.msg, "id 'kiln'") != NULL, "%s", err.msg);
	virtio_mmio_destroy(&b);
	/* A read-only disk offers VIRTIO_BLK_F_RO: the guest negotiated without it. */
	open_blk(&b, "disk.img", ",ro");
	ck_assert_int_eq(restore(&b, state.p, state.len), -EINVAL);
	ck_assert_msg(strstr(err.msg, "offered features") != NULL, "%s", err.msg);
	assert_pristine(&b);
}
END_TEST

/* A volume slot takes another file at restore (kilnd's volumes), and the driver is told its new size. */
START_TEST(blk_slot_takes_another_file)
{
	char path[128];
	uint8_t cfg[8];
	uint64_t cap;
	uint32_t gen;
	int fd;

	snprintf(path, sizeof(path), "%s/empty.img", dir);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	ck_assert_int_ge(fd, 0);
	close(fd);
	open_blk(&a, "empty.img", ",slot,ro");
	ck_assert_uint_eq(a.offered & (1ULL << 5), 0);	/* a slot is never offered read-only */
	driver_init(&a, ~0ULL, 1);
	save(&a);
	old_vmm_exits();
	snprintf(path, sizeof(path), "%s/big.img", dir);
	make_image(path, 2 * IMG_SECTORS);
	/* A plain disk cannot stand in for a slot. */
	open_blk(&b, "big.img", "");
	ck_assert_int_eq(restore(&b, state.p, state.len), -EINVAL);
	ck_assert_msg(strstr(err.msg, "was a volume slot") != NULL, "%s", err.msg);
	virtio_mmio_destroy(&b);
	open_blk(&b, "big.img", ",slot");
	ck_assert_msg(restore(&b, state.p, state.len) == 0, "%s", err.msg);
	gen = vdrv_read(&b, 0xfc);
	virtio_mmio_resumed(&b);
	ck_assert_uint_eq(vdrv_read(&b, 0xfc), gen + 1);
	ck_assert_uint_ne(vdrv_read(&b, 0x60) & 2, 0);	/* a config interrupt */
	virtio_mmio_io(&b, BASE + 0x100, cfg, 8, 0);
	memcpy(&cap, cfg, sizeof(cap));
	ck_assert_uint_eq(cap, 2 * IMG_SECTORS);
}
END_TEST

/* A slot cannot stand in for a plain disk either. */
START_TEST(blk_slot_not_for_a_disk)
{
	blk_busy_original();
	save(&a);
	old_vmm_exits();
	open_blk(&b, "disk.img", ",slot");
	ck_assert_int_eq(restore(&b, state.p, state.len), -EINVAL);
	ck_assert_msg(strstr(err.msg, "was not a volume slot") != NULL, "%s", err.msg);
	assert_pristine(&b);
}
END_TEST

/* ---- virtio-net ---------------------------------------------------------------- */

#define NET_RXQ	0
#define NET_TXQ	1

static const uint8_t mac[6] = { 0x06, 0x00, 0xac, 0x10, 0x00, 0x07 };

static int open_net(struct virtio_dev *d, const uint8_t *addr)
{
	int sv[2];

	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
	ck_assert_msg(virtio_net_create_fd(d, sv[0], addr, NULL, &m, &loop, BASE, 5, &err) == 0, "%s", err.msg);
	return sv[1];
}

static void frame_fill(uint8_t *p, size_t len, unsigned seed)
{
	size_t i;

	for (i = 0; i < len; i++)
		p[i] = (uint8_t)(i * 7 + seed);
}

static void host_send(int peer, size_t len, unsigned seed)
{
	static uint8_t buf[HDR_LEN + 4096];

	memset(buf, 0, HDR_LEN);
	frame_fill(buf + HDR_LEN, len, seed);
	ck_assert_int_eq(send(peer, buf, HDR_LEN + len, 0), (ssize_t)(HDR_LEN + len));
}

static void net_post_rx(struct virtio_dev *d, uint16_t head, uint32_t len)
{
	set_desc(NET_RXQ, head, BUF(NET_RXQ, head), len, VIRTQ_DESC_F_WRITE, 0);
	offer(NET_RXQ, head);
	virtio_kick(d, NET_RXQ);
}

/* The guest sends a frame of len bytes as chain head (descriptors head, head+1). */
static void net_send_tx(struct virtio_dev *d, uint16_t head, uint32_t len, unsigned seed)
{
	uint8_t *p = GUEST_PTR(&m, BUF(NET_TXQ, head), HDR_LEN + len);

	memset(p, 0, HDR_LEN);
	frame_fill(p + HDR_LEN, len, seed);
	set_desc(NET_TXQ, head, BUF(NET_TXQ, head), HDR_LEN, VIRTQ_DESC_F_NEXT, (uint16_t)(head + 1));
	set_desc(NET_TXQ, head + 1, BUF(NET_TXQ, head) + HDR_LEN, len, 0, 0);
	offer(NET_TXQ, head);
	virtio_kick(d, NET_TXQ);
}

/* The host receives the frame the guest sent. */
static void host_expect(int peer, size_t len, unsigned seed)
{
	uint8_t got[HDR_LEN + 4096], want[4096];
	ssize_t n = -1;
	int i;

	for (i = 0; i < 2000 && n < 0; i++) {
		n = recv(peer, got, sizeof(got), MSG_DONTWAIT);
		if (n < 0)
			spin(1);
	}
	ck_assert_int_eq(n, (ssize_t)(HDR_LEN + len));
	frame_fill(want, len, seed);
	ck_assert_int_eq(memcmp(got + HDR_LEN, want, len), 0);
}

/*
 * A net device mid-frame: one frame delivered, and a second spread over a
 * 100-byte rx buffer while it waits for the driver to post more.
 */
static int net_busy_original(void)
{
	int peer = open_net(&a, mac);

	driver_init(&a, ~0ULL, 2);
	net_send_tx(&a, 0, 60, 1);
	/* The write reads guest memory until it completes: a snapshot must wait. */
	ck_assert_uint_eq(virtio_mmio_inflight(&a), 1);
	host_expect(peer, 60, 1);
	settle(used_idx(NET_TXQ) == 1);
	net_post_rx(&a, 0, 2048);
	host_send(peer, 100, 2);
	settle(used_idx(NET_RXQ) == 1);
	net_post_rx(&a, 1, 100);
	host_send(peer, 1000, 3);
	settle(a.vq[NET_RXQ].last_avail == 2);
	spin(5);
	ck_assert_uint_eq(used_idx(NET_RXQ), 1);
	return peer;
}

/* Frame seed of len bytes arrived in used slots i.. (MRG_RXBUF: 100-byte first buffer). */
static void net_check_split_frame(unsigned i, uint16_t first, uint16_t second, size_t len, unsigned seed)
{
	uint8_t frame[HDR_LEN + 4096], want[4096];
	struct virtq_used_elem e0 = used_elem(NET_RXQ, i), e1 = used_elem(NET_RXQ, i + 1);
	uint16_t nb;

	ck_assert_uint_eq(e0.id, first);
	ck_assert_uint_eq(e0.len, 100);
	ck_assert_uint_eq(e1.id, second);
	ck_assert_uint_eq(e1.len, HDR_LEN + len - 100);
	memcpy(frame, GUEST_PTR(&m, BUF(NET_RXQ, first), 100), 100);
	memcpy(frame + 100, GUEST_PTR(&m, BUF(NET_RXQ, second), e1.len), e1.len);
	memcpy(&nb, frame + 10, 2);
	ck_assert_uint_eq(nb, 2);
	frame_fill(want, len, seed);
	ck_assert_int_eq(memcmp(frame + HDR_LEN, want, len), 0);
}

START_TEST(net_partial_frame_given_back)
{
	int peer = net_busy_original();

	save(&a);
	/* The buffer the frame had started to fill is back on the ring... */
	ck_assert_uint_eq(a.vq[NET_RXQ].last_avail, 1);
	ck_assert_uint_eq(a.vq[NET_RXQ].used_idx, 1);
	/* ...and this VM, running on, delivers the whole frame once buffers come. */
	net_post_rx(&a, 2, 2048);
	settle(used_idx(NET_RXQ) == 3);
	net_check_split_frame(1, 1, 2, 1000, 3);
	ck_assert_int_eq(virtio_running(&a), 1);
	close(peer);
}
END_TEST

START_TEST(net_restored_device_carries_on)
{
	static const uint8_t other[6] = { 0x06, 0, 0, 0, 0, 9 };
	int peer = net_busy_original(), peer2;
	uint8_t cfg[6];
	char stats[512];

	save(&a);
	corpus_write("net-busy", 1);
	old_vmm_exits();
	close(peer);

	peer = open_net(&c, other);
	ck_assert_int_eq(restore(&c, state.p, state.len), -EINVAL);
	ck_assert_msg(strstr(err.msg, "virtio-net state: the snapshot's guest has MAC 06:00:ac:10:00:07") != NULL,
		      "%s", err.msg);
	assert_pristine(&c);
	close(peer);

	peer2 = open_net(&b, mac);
	ck_assert_msg(restore(&b, state.p, state.len) == 0, "%s", err.msg);
	virtio_mmio_io(&b, BASE + 0x100, cfg, 6, 0);
	ck_assert_int_eq(memcmp(cfg, mac, 6), 0);
	ck_assert_uint_eq(b.vq[NET_RXQ].last_avail, 1);
	ck_assert_uint_eq(b.vq[NET_TXQ].used_idx, 1);
	virtio_mmio_resumed(&b);
	spin(5);
	/* The buffer given back takes the first 100 bytes of the next frame. */
	host_send(peer2, 500, 4);
	net_post_rx(&b, 2, 2048);
	settle(used_idx(NET_RXQ) == 3);
	net_check_split_frame(1, 1, 2, 500, 4);
	/* tx carries on at used slot 1. */
	net_send_tx(&b, 2, 80, 5);
	host_expect(peer2, 80, 5);
	settle(used_idx(NET_TXQ) == 2);
	ck_assert_uint_eq(used_elem(NET_TXQ, 1).id, 2);
	ck_assert_int_gt(virtio_mmio_stats(&b, stats, sizeof(stats)), 0);
	ck_assert_msg(strstr(stats, "\"type\":\"net\"") && strstr(stats, "\"rx_frames\":1,") &&
		      strstr(stats, "\"tx_frames\":1,"), "%s", stats);
	close(peer2);
}
END_TEST

static void open_vsock(struct virtio_dev *d, unsigned cid, const char *sock);

START_TEST(wrong_device_type_refused)
{
	int peer = open_net(&a, mac);
	char path[128];

	driver_init(&a, ~0ULL, 2);
	save(&a);
	corpus_write("net-idle", 1);
	close(peer);
	snprintf(path, sizeof(path), "%s/disk.img", dir);
	make_image(path, IMG_SECTORS);
	open_blk(&b, "disk.img", "");
	ck_assert_int_eq(restore(&b, state.p, state.len), -EINVAL);
	ck_assert_msg(strstr(err.msg, "virtio-blk state: saved from virtio device type 1 with 2 queues") == err.msg,
		      "%s", err.msg);
	assert_pristine(&b);
	open_vsock(&c, GUEST_CID, "c.sock");
	ck_assert_int_eq(restore(&c, state.p, state.len), -EINVAL);
	ck_assert_msg(strstr(err.msg, "virtio-vsock state: saved from virtio device type 1") == err.msg,
		      "%s", err.msg);
	assert_pristine(&c);
}
END_TEST

/* ---- virtio-vsock -------------------------------------------------------------- */

#define VS_RXQ	0
#define VS_TXQ	1
#define VS_EVQ	2
struct vhdr {
	uint64_t src_cid, dst_cid;
	uint32_t src_port, dst_port, len;
	uint16_t type, op;
	uint32_t flags, buf_alloc, fwd_cnt;
} __attribute__((packed));

static void open_vsock(struct virtio_dev *d, unsigned cid, const char *sock)
{
	char spec[200];

	snprintf(spec, sizeof(spec), "cid=%u,uds=%s/%s", cid, dir, sock);
	ck_assert_msg(virtio_vsock_create(d, spec, NULL, &m, &loop, BASE, 5, &err) == 0, "%s", err.msg);
}

static void vs_post_rx(struct virtio_dev *d, unsigned n)
{
	unsigned i;

	for (i = 0; i < n; i++) {
		uint16_t slot = next_avail[VS_RXQ] % QSIZE;

		set_desc(VS_RXQ, slot, BUF(VS_RXQ, slot), 4096, VIRTQ_DESC_F_WRITE, 0);
		offer(VS_RXQ, slot);
	}
	virtio_kick(d, VS_RXQ);
}

static void vs_send(struct virtio_dev *d, struct vhdr h)
{
	uint16_t slot = next_avail[VS_TXQ] % QSIZE;

	h.src_cid = GUEST_CID;
	h.dst_cid = 2;
	h.type = 1;
	memcpy(GUEST_PTR(&m, BUF(VS_TXQ, slot), VSOCK_HDR), &h, VSOCK_HDR);
	set_desc(VS_TXQ, slot, BUF(VS_TXQ, slot), VSOCK_HDR, 0, 0);
	offer(VS_TXQ, slot);
	virtio_kick(d, VS_TXQ);
}

/* The packet in rx used slot i. */
static struct vhdr vs_rx_at(unsigned i)
{
	struct virtq_used_elem e = used_elem(VS_RXQ, i);
	struct vhdr h;

	ck_assert_uint_ge(e.len, VSOCK_HDR);
	memcpy(&h, GUEST_PTR(&m, BUF(VS_RXQ, e.id), VSOCK_HDR), VSOCK_HDR);
	return h;
}

static int host_client(unsigned port)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char line[32];
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), n;

	ck_assert_int_ge(fd, 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/v.sock", dir);
	ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	n = snprintf(line, sizeof(line), "CONNECT %u\n", port);
	ck_assert_int_eq(write(fd, line, (size_t)n), n);
	return fd;
}

START_TEST(vsock_restored_device_resets_and_accepts)
{
	struct vhdr h;
	char line[32];
	int fd, fd2, i;
	ssize_t n = -1;

	open_vsock(&a, GUEST_CID, "v.sock");
	driver_init(&a, 1ULL << VIRTIO_F_VERSION_1, 3);
	set_desc(VS_EVQ, 0, BUF(VS_EVQ, 0), 8, VIRTQ_DESC_F_WRITE, 0);
	offer(VS_EVQ, 0);
	virtio_kick(&a, VS_EVQ);
	vs_post_rx(&a, 4);
	/* A host program connects to guest port 7000 and the guest accepts. */
	fd = host_client(7000);
	settle(used_idx(VS_RXQ) == 1);
	h = vs_rx_at(0);
	ck_assert_uint_eq(h.op, 1);	/* REQUEST */
	vs_send(&a, (struct vhdr){ .src_port = 7000, .dst_port = h.src_port, .op = 2, .buf_alloc = 65536 });
	for (i = 0; i < 2000 && n <= 0; i++) {
		n = recv(fd, line, sizeof(line) - 1, MSG_DONTWAIT);
		if (n <= 0)
			spin(1);
	}
	ck_assert_int_gt(n, 0);
	ck_assert_int_eq(memcmp(line, "OK ", 3), 0);
	/* Idle, the device holds one rx buffer it took for the next packet. */
	ck_assert_uint_eq(a.vq[VS_RXQ].last_avail, 2);
	vdrv_write(&a, 0x64, VIRTIO_INT_USED | VIRTIO_INT_CONFIG);

	save(&a);
	corpus_write("vsock-connected", 2);
	ck_assert_uint_eq(a.vq[VS_RXQ].last_avail, 1);	/* given back */
	old_vmm_exits();
	close(fd);

	open_vsock(&c, GUEST_CID + 1, "c.sock");
	ck_assert_int_eq(restore(&c, state.p, state.len), -EINVAL);
	ck_assert_msg(strstr(err.msg, "virtio-vsock state: the snapshot's guest has CID 3, --vsock gives cid=4") != NULL,
		      "%s", err.msg);
	assert_pristine(&c);

	open_vsock(&b, GUEST_CID, "v.sock");
	ck_assert_msg(restore(&b, state.p, state.len) == 0, "%s", err.msg);
	ck_assert_uint_eq(used_idx(VS_EVQ), 0);
	virtio_mmio_resumed(&b);
	/* The guest learns its connections are gone. */
	ck_assert_uint_eq(used_idx(VS_EVQ), 1);
	ck_assert_uint_eq(used_elem(VS_EVQ, 0).id, 0);
	ck_assert_uint_eq(used_elem(VS_EVQ, 0).len, 4);
	ck_assert_uint_eq(*(uint32_t *)GUEST_PTR(&m, BUF(VS_EVQ, 0), 4), 0);	/* TRANSPORT_RESET */
	ck_assert_uint_ne(vdrv_read(&b, 0x60) & VIRTIO_INT_USED, 0);
	/*
	 * A host connection made before the guest has handled the reset is
	 * held: the reset would kill it. The guest refills the event buffer
	 * once it has handled the event; then the request goes, in rx slot 1
	 * with the buffer given back.
	 */
	fd2 = host_client(7001);
	spin(50);
	ck_assert_uint_eq(used_idx(VS_RXQ), 1);
	offer(VS_EVQ, 0);
	virtio_kick(&b, VS_EVQ);
	settle(used_idx(VS_RXQ) == 2);
	ck_assert_uint_eq(used_elem(VS_RXQ, 1).id, 1);
	h = vs_rx_at(1);
	ck_assert_uint_eq(h.op, 1);
	ck_assert_uint_eq(h.dst_port, 7001);
	ck_assert_uint_eq(h.dst_cid, GUEST_CID);
	close(fd2);
}
END_TEST

/*
 * A guest with EVENT_IDX (Linux's) kicks the event queue only when the
 * device asks through avail_event. Its refill after a TRANSPORT_RESET is
 * the device's acknowledgement, so the device must ask for that kick
 * though it still holds spare event buffers; and a guest that never
 * refills costs a held request at most the hold's deadline.
 */
START_TEST(vsock_reset_refill_is_kicked_with_event_idx)
{
	uint16_t old, ev;
	int fd;

	open_vsock(&a, GUEST_CID, "v.sock");
	driver_init(&a, 1ULL << VIRTIO_F_VERSION_1 | 1ULL << VIRTIO_F_RING_EVENT_IDX, 3);
	set_desc(VS_EVQ, 0, BUF(VS_EVQ, 0), 8, VIRTQ_DESC_F_WRITE, 0);
	set_desc(VS_EVQ, 1, BUF(VS_EVQ, 1), 8, VIRTQ_DESC_F_WRITE, 0);
	offer(VS_EVQ, 0);
	offer(VS_EVQ, 1);
	virtio_kick(&a, VS_EVQ);
	vs_post_rx(&a, 4);
	spin(5);
	save(&a);
	old_vmm_exits();

	/*
	 * A state from before the connections flag (its last byte) is reset
	 * on resume, whether or not the device had connections.
	 */
	ck_assert_uint_eq(state.len, OFF_DEV(3) + 4 + 9);
	put_le(state.p + OFF_DEV(3), 8, 4);
	open_vsock(&b, GUEST_CID, "v.sock");
	ck_assert_msg(restore(&b, state.p, state.len - 1) == 0, "%s", err.msg);
	virtio_mmio_resumed(&b);
	ck_assert_uint_eq(used_idx(VS_EVQ), 1);
	/* vring_need_event(avail_event, new, old) for the guest's refill. */
	old = next_avail[VS_EVQ];
	ev = __atomic_load_n(&used(VS_EVQ)[2 + 4 * QSIZE], __ATOMIC_ACQUIRE);
	ck_assert_msg((uint16_t)(old + 1 - ev - 1) < (uint16_t)1,
		      "avail_event %u: the refill from avail index %u would not be kicked", ev, old);

	/* The guest never refills: the request goes when the hold ends. */
	fd = host_client(7002);
	spin(200);
	ck_assert_uint_eq(used_idx(VS_RXQ), 0);
	settle(used_idx(VS_RXQ) == 1);
	ck_assert_uint_eq(vs_rx_at(0).op, 1);
	ck_assert_uint_eq(vs_rx_at(0).dst_port, 7002);
	close(fd);
}
END_TEST

/*
 * A device without connections (a template, taken when the agent is ready)
 * comes back without a TRANSPORT_RESET: the guest has nothing to drop, and
 * the first host connection goes at once.
 */
START_TEST(vsock_quiet_device_resumes_without_reset)
{
	int fd;

	open_vsock(&a, GUEST_CID, "v.sock");
	driver_init(&a, 1ULL << VIRTIO_F_VERSION_1 | 1ULL << VIRTIO_F_RING_EVENT_IDX, 3);
	set_desc(VS_EVQ, 0, BUF(VS_EVQ, 0), 8, VIRTQ_DESC_F_WRITE, 0);
	offer(VS_EVQ, 0);
	virtio_kick(&a, VS_EVQ);
	vs_post_rx(&a, 4);
	spin(5);
	save(&a);
	ck_assert_uint_eq(state.p[state.len - 1], 0);	/* no connections */
	old_vmm_exits();

	open_vsock(&b, GUEST_CID, "v.sock");
	ck_assert_msg(restore(&b, state.p, state.len) == 0, "%s", err.msg);
	virtio_mmio_resumed(&b);
	spin(5);
	ck_assert_uint_eq(used_idx(VS_EVQ), 0);
	fd = host_client(7003);
	settle(used_idx(VS_RXQ) == 1);
	ck_assert_uint_eq(vs_rx_at(0).op, 1);
	ck_assert_uint_eq(vs_rx_at(0).dst_port, 7003);
	close(fd);

	/* A flag that is neither 0 nor 1 is refused. */
	state.p[state.len - 1] = 2;
	open_vsock(&c, GUEST_CID, "c.sock");
	ck_assert_int_eq(restore(&c, state.p, state.len), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "connections flag 2"));
}
END_TEST

/* ---- 16550A -------------------------------------------------------------------- */

static int irq_level = -1;

static void record_irq(void *opaque, int level)
{
	(void)opaque;
	irq_level = level;
}

static void uart_w(struct serial *s, unsigned reg, uint8_t v)
{
	serial_io(s, SERIAL_COM1_BASE + reg, &v, 1, 1);
}

static uint8_t uart_r(struct serial *s, unsigned reg)
{
	uint8_t v = 0;

	serial_io(s, SERIAL_COM1_BASE + reg, &v, 1, 0);
	return v;
}

START_TEST(serial_registers_round_trip)
{
	struct serial s1, s2;
	struct snap_rd r;
	struct snap_buf w;
	uint8_t bad[16];
	size_t len;
	uint8_t in = 'x';

	serial_init(&s1, -1, NULL, NULL);
	uart_w(&s1, 3, 0x80);		/* DLAB */
	uart_w(&s1, 0, 0x01);
	uart_w(&s1, 1, 0x00);
	uart_w(&s1, 3, 0x03);
	uart_w(&s1, 2, 0xc1);
	uart_w(&s1, 4, 0x0b);
	uart_w(&s1, 7, 0x5a);
	uart_w(&s1, 1, 0x03);		/* RX and THRE interrupts: THRE pending now */
	ck_assert_uint_eq(serial_input(&s1, &in, 1), 1);
	snapw_init(&w);
	serial_save(&s1, &w);
	ck_assert_int_eq(w.oom, 0);
	serial_destroy(&s1);

	for (len = 0; len < w.len; len++) {
		serial_init(&s2, -1, record_irq, NULL);
		snapr_init(&r, w.p, len);
		ck_assert_int_eq(serial_restore(&s2, &r, &err), -EINVAL);
		ck_assert_msg(strstr(err.msg, "serial state: ") == err.msg, "%s", err.msg);
		ck_assert_uint_eq(s2.ier, 0);
		serial_destroy(&s2);
	}
	ck_assert_uint_le(w.len, sizeof(bad));
	memcpy(bad, w.p, w.len);
	bad[0] = 0xff;			/* IER bits the chip does not have */
	serial_init(&s2, -1, record_irq, NULL);
	snapr_init(&r, bad, w.len);
	ck_assert_int_eq(serial_restore(&s2, &r, &err), -EINVAL);
	ck_assert_msg(strstr(err.msg, "IER 0xff") != NULL, "%s", err.msg);
	ck_assert_uint_eq(s2.ier, 0);

	irq_level = -1;
	snapr_init(&r, w.p, w.len);
	ck_assert_msg(serial_restore(&s2, &r, &err) == 0, "%s", err.msg);
	snapw_free(&w);
	/* The THRE interrupt the driver had not taken is raised again. */
	ck_assert_int_eq(irq_level, 1);
	ck_assert_uint_eq(uart_r(&s2, 2), 0xc2);	/* FIFO on, THRE; the RX byte was dropped */
	ck_assert_uint_eq(uart_r(&s2, 5) & 1, 0);
	ck_assert_uint_eq(uart_r(&s2, 3), 0x03);
	ck_assert_uint_eq(uart_r(&s2, 4), 0x0b);
	ck_assert_uint_eq(uart_r(&s2, 7), 0x5a);
	ck_assert_uint_eq(uart_r(&s2, 1), 0x03);
	uart_w(&s2, 3, 0x83);
	ck_assert_uint_eq(uart_r(&s2, 0), 0x01);
	ck_assert_uint_eq(uart_r(&s2, 1), 0x00);
	serial_destroy(&s2);
}
END_TEST

Suite *suite_devsnap(void)
{
	Suite *s = suite_create("devsnap");
	TCase *tc = tcase_create("device snapshots");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, blk_restored_device_carries_on);
	tcase_add_test(tc, blk_hostile_states_refused);
	tcase_add_test(tc, blk_other_disk_refused);
	tcase_add_test(tc, blk_slot_takes_another_file);
	tcase_add_test(tc, blk_slot_not_for_a_disk);
	tcase_add_test(tc, net_partial_frame_given_back);
	tcase_add_test(tc, net_restored_device_carries_on);
	tcase_add_test(tc, wrong_device_type_refused);
	tcase_add_test(tc, vsock_restored_device_resets_and_accepts);
	tcase_add_test(tc, vsock_reset_refill_is_kicked_with_event_idx);
	tcase_add_test(tc, vsock_quiet_device_resumes_without_reset);
	tcase_add_test(tc, serial_registers_round_trip);
	suite_add_tcase(s, tc);
	return s;
}
