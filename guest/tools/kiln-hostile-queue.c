/*
 * kiln-hostile-queue: a hostile virtio-blk driver in guest user space, for
 * the test of issue 11's finding 1. It drives the register window of a
 * virtio-mmio block device through /dev/mem (unbind the kernel's driver
 * first) with rings in its own locked pages, found through
 * /proc/self/pagemap. Each round it completes 20 flushes on a 16-entry
 * queue, so that the next used slot (20 % 256) lies beyond what a 16-entry
 * ring holds, fills the rest of the used ring's page with a canary, submits
 * a write and a flush, and at once disables the queue and writes
 * QueueNum=256. A VMM that completed them through the old ring with the new
 * size wrote into the canary.
 *
 * Usage: kiln-hostile-queue BASE [ROUNDS]   (BASE: the device's MMIO base)
 * Prints "rounds R, in flight at disable N, canary intact" and exits 0, or
 * names what went wrong and exits 1.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define QSIZE		16
#define USED_BYTES	(6 + 8 * QSIZE)
#define PAGE		4096

#define REG_DRIVER_FEATURES	0x020
#define REG_DRIVER_FEATURES_SEL	0x024
#define REG_QUEUE_SEL		0x030
#define REG_QUEUE_NUM		0x038
#define REG_QUEUE_READY		0x044
#define REG_QUEUE_NOTIFY	0x050
#define REG_STATUS		0x070
#define REG_QUEUE_DESC_LOW	0x080
#define REG_QUEUE_DESC_HIGH	0x084
#define REG_QUEUE_DRIVER_LOW	0x090
#define REG_QUEUE_DRIVER_HIGH	0x094
#define REG_QUEUE_DEVICE_LOW	0x0a0
#define REG_QUEUE_DEVICE_HIGH	0x0a4

struct desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

static volatile uint32_t *regs;
static uint8_t *page[4];		/* desc table + requests, avail, used, data */
static uint64_t phys[4];

static void die(const char *what)
{
	fprintf(stderr, "kiln-hostile-queue: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void w32(uint32_t off, uint32_t v)
{
	regs[off / 4] = v;
	__sync_synchronize();
}

static uint32_t r32(uint32_t off)
{
	__sync_synchronize();
	return regs[off / 4];
}

static uint64_t virt_to_phys(void *p)
{
	uint64_t entry;
	int fd = open("/proc/self/pagemap", O_RDONLY);

	if (fd < 0)
		die("/proc/self/pagemap");
	if (pread(fd, &entry, 8, (off_t)((uintptr_t)p / PAGE * 8)) != 8)
		die("pagemap read");
	close(fd);
	if (!(entry >> 63) || !(entry & ((1ULL << 55) - 1))) {
		fprintf(stderr, "kiln-hostile-queue: no physical address for a page (not root?)\n");
		exit(1);
	}
	return (entry & ((1ULL << 55) - 1)) * PAGE;
}

static void queue_addr(uint32_t lo, uint64_t a)
{
	w32(lo, (uint32_t)a);
	w32(lo + 4, (uint32_t)(a >> 32));
}

/* The driver's side of 3.1.1 with one queue of QSIZE entries. */
static void dev_init(void)
{
	w32(REG_STATUS, 0);
	memset(page[0], 0, PAGE);
	memset(page[1], 0, PAGE);
	memset(page[2], 0, PAGE);
	w32(REG_STATUS, 1 | 2);
	w32(REG_DRIVER_FEATURES_SEL, 1);
	w32(REG_DRIVER_FEATURES, 1);		/* VIRTIO_F_VERSION_1 */
	w32(REG_DRIVER_FEATURES_SEL, 0);
	w32(REG_DRIVER_FEATURES, 0);
	w32(REG_STATUS, 1 | 2 | 8);
	if (!(r32(REG_STATUS) & 8)) {
		fprintf(stderr, "kiln-hostile-queue: FEATURES_OK refused\n");
		exit(1);
	}
	w32(REG_QUEUE_SEL, 0);
	w32(REG_QUEUE_NUM, QSIZE);
	queue_addr(REG_QUEUE_DESC_LOW, phys[0]);
	queue_addr(REG_QUEUE_DRIVER_LOW, phys[1]);
	queue_addr(REG_QUEUE_DEVICE_LOW, phys[2]);
	w32(REG_QUEUE_READY, 1);
	w32(REG_STATUS, 1 | 2 | 8 | 4);
	if (r32(REG_STATUS) & 0x40) {
		fprintf(stderr, "kiln-hostile-queue: the device needs a reset right after set-up\n");
		exit(1);
	}
}

static volatile uint16_t *used_idx(void)
{
	return (volatile uint16_t *)(page[2] + 2);
}

/*
 * Offer a request at descriptors head..head+n-1: a 16-byte header at
 * 2048 + 32*k of page 0, for a write the data page, and a status byte.
 */
static void offer(uint16_t *avail_next, uint16_t head, uint32_t type, int k)
{
	struct desc *d = (struct desc *)page[0];
	uint16_t *avail = (uint16_t *)page[1];
	uint32_t *hdr = (uint32_t *)(page[0] + 2048 + 32 * k);
	uint16_t i = head;

	hdr[0] = type;
	hdr[1] = hdr[2] = hdr[3] = 0;
	page[0][2048 + 32 * k + 16] = 0xee;
	d[i] = (struct desc){ phys[0] + 2048 + 32 * k, 16, 1, (uint16_t)(i + 1) };
	if (type == 1) {
		i++;
		d[i] = (struct desc){ phys[3], PAGE, 1, (uint16_t)(i + 1) };
	}
	i++;
	d[i] = (struct desc){ phys[0] + 2048 + 32 * k + 16, 1, 2, 0 };
	avail[2 + *avail_next % QSIZE] = head;
	__sync_synchronize();
	__atomic_store_n(&avail[1], ++*avail_next, __ATOMIC_RELEASE);
}

static int wait_used(uint16_t want)
{
	struct timespec t0, t;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	while (*used_idx() != want) {
		clock_gettime(CLOCK_MONOTONIC, &t);
		if (t.tv_sec - t0.tv_sec > 30)
			return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	unsigned long long base;
	int rounds, r, raced = 0, fd, i;

	if (argc < 2 || sscanf(argv[1], "%llx", &base) != 1 || base % PAGE) {
		fprintf(stderr, "usage: kiln-hostile-queue BASE [ROUNDS]\n");
		return 2;
	}
	rounds = argc > 2 ? atoi(argv[2]) : 20;
	fd = open("/dev/mem", O_RDWR | O_SYNC);
	if (fd < 0)
		die("/dev/mem");
	regs = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)base);
	if (regs == MAP_FAILED)
		die("mmap /dev/mem");
	if (r32(0) != 0x74726976 || r32(8) != 2) {
		fprintf(stderr, "kiln-hostile-queue: no virtio-mmio block device at %#llx\n", base);
		return 1;
	}
	for (i = 0; i < 4; i++) {
		page[i] = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_LOCKED, -1, 0);
		if (page[i] == MAP_FAILED)
			die("mmap");
		memset(page[i], 0, PAGE);
		phys[i] = virt_to_phys(page[i]);
	}

	for (r = 0; r < rounds; r++) {
		uint16_t next = 0, before;
		int j;

		dev_init();
		for (j = 0; j < 20; j++) {
			offer(&next, 0, 4, 0);			/* flush */
			w32(REG_QUEUE_NOTIFY, 0);
			if (wait_used((uint16_t)(j + 1)) < 0) {
				fprintf(stderr, "kiln-hostile-queue: round %d: flush %d never completed\n", r, j);
				return 1;
			}
		}
		memset(page[2] + USED_BYTES, 0xa5, PAGE - USED_BYTES);
		offer(&next, 4, 1, 1);				/* write, descriptors 4-6 */
		offer(&next, 8, 4, 2);				/* flush, descriptors 8-9 */
		w32(REG_QUEUE_NOTIFY, 0);
		w32(REG_QUEUE_READY, 0);
		before = *used_idx();
		w32(REG_QUEUE_NUM, 256);
		if (before < 22)
			raced++;
		usleep(50000);		/* let what was in flight finish */
		for (j = USED_BYTES; j < PAGE; j++)
			if (page[2][j] != 0xa5) {
				printf("round %d: the device wrote at byte %d of the used ring's page, beyond the %d bytes of a %d-entry ring\n",
				       r, j, USED_BYTES, QSIZE);
				return 1;
			}
		if (*used_idx() > 22) {
			printf("round %d: used index %u after 22 requests\n", r, *used_idx());
			return 1;
		}
	}
	w32(REG_STATUS, 0);
	printf("rounds %d, in flight at disable %d, canary intact\n", rounds, raced);
	return 0;
}
