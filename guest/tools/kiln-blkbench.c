/*
 * kiln-blkbench: block I/O micro-benchmark run inside a guest or on a host
 * against a file or block device, with O_DIRECT so the page cache stays out.
 *
 *   kiln-blkbench randread PATH SECONDS QDEPTH   4 KiB random reads
 *   kiln-blkbench seqread  PATH SECONDS          1 MiB sequential reads
 *   kiln-blkbench seqwrite PATH SECONDS          1 MiB sequential writes
 *
 * Queue depth is QDEPTH threads each with one request outstanding. Prints one
 * line: "<mode> qd=<n> ops=<n> secs=<s> iops=<n> mbps=<n>".
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_QD 64

struct worker {
	pthread_t t;
	int fd;
	int id;
	uint64_t ops;
	uint64_t bytes;
};

static const char *mode;
static uint64_t size;
static double deadline;
static size_t bs;

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *work(void *arg)
{
	struct worker *w = arg;
	uint64_t blocks = size / bs, x = 0x9e3779b97f4a7c15ULL * (uint64_t)(w->id + 1);
	uint64_t next = 0;
	void *buf;

	if (posix_memalign(&buf, 4096, bs))
		return NULL;
	memset(buf, 0x5a, bs);
	while (now() < deadline) {
		uint64_t blk;
		ssize_t n;
		int i;

		for (i = 0; i < 16; i++) {
			if (strcmp(mode, "randread") == 0) {
				x ^= x << 13;
				x ^= x >> 7;
				x ^= x << 17;
				blk = x % blocks;
				n = pread(w->fd, buf, bs, (off_t)(blk * bs));
			} else {
				blk = next++ % blocks;
				if (strcmp(mode, "seqwrite") == 0)
					n = pwrite(w->fd, buf, bs, (off_t)(blk * bs));
				else
					n = pread(w->fd, buf, bs, (off_t)(blk * bs));
			}
			if (n != (ssize_t)bs) {
				fprintf(stderr, "kiln-blkbench: I/O at block %llu: %s\n",
					(unsigned long long)blk, n < 0 ? strerror(errno) : "short");
				exit(1);
			}
			w->ops++;
			w->bytes += bs;
		}
	}
	free(buf);
	return NULL;
}

int main(int argc, char **argv)
{
	static struct worker w[MAX_QD];
	double secs, t0, t1;
	uint64_t ops = 0, bytes = 0;
	struct stat st;
	int qd = 1, i, fd;

	if (argc < 4) {
		fprintf(stderr, "usage: kiln-blkbench randread|seqread|seqwrite PATH SECONDS [QDEPTH]\n");
		return 2;
	}
	mode = argv[1];
	secs = atof(argv[3]);
	if (argc > 4)
		qd = atoi(argv[4]);
	if (qd < 1 || qd > MAX_QD || secs <= 0) {
		fprintf(stderr, "kiln-blkbench: bad queue depth or duration\n");
		return 2;
	}
	bs = strcmp(mode, "randread") == 0 ? 4096 : 1 << 20;
	fd = open(argv[2], (strcmp(mode, "seqwrite") == 0 ? O_RDWR : O_RDONLY) | O_DIRECT);
	if (fd < 0 || fstat(fd, &st) < 0) {
		fprintf(stderr, "kiln-blkbench: %s: %s\n", argv[2], strerror(errno));
		return 1;
	}
	if (S_ISBLK(st.st_mode))
		ioctl(fd, BLKGETSIZE64, &size);
	else
		size = (uint64_t)st.st_size;
	if (size < bs) {
		fprintf(stderr, "kiln-blkbench: %s: too small\n", argv[2]);
		return 1;
	}
	t0 = now();
	deadline = t0 + secs;
	for (i = 0; i < qd; i++) {
		w[i].fd = fd;
		w[i].id = i;
		pthread_create(&w[i].t, NULL, work, &w[i]);
	}
	for (i = 0; i < qd; i++) {
		pthread_join(w[i].t, NULL);
		ops += w[i].ops;
		bytes += w[i].bytes;
	}
	t1 = now();
	printf("%s qd=%d ops=%llu secs=%.3f iops=%.0f mbps=%.1f\n", mode, qd,
	       (unsigned long long)ops, t1 - t0, (double)ops / (t1 - t0),
	       (double)bytes / (t1 - t0) / 1e6);
	return 0;
}
