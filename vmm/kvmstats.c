/* KVM's per-vCPU binary statistics, a few counters by name (kvmstats.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <linux/kvm.h>

#include "kvmstats.h"

#define STATS_MAX_DESC	1024	/* x86 has ~60; more is not a kernel we understand */
#define STATS_MAX_NAME	256
#define STATS_MAX_DATA	(16 * 1024)

/* KVM's name of each counter, and ours. */
static const struct {
	const char *kvm, *ours;
} names[KS_N] = {
	[KS_EXITS] = { "exits", "exits" },
	[KS_PF_TAKEN] = { "pf_taken", "npf" },
	[KS_HALT_EXITS] = { "halt_exits", "halt" },
	[KS_MMIO_EXITS] = { "mmio_exits", "mmio" },
	[KS_IO_EXITS] = { "io_exits", "pio" },
	[KS_IRQ_INJECTIONS] = { "irq_injections", "irqs" },
};

const char *kvm_stat_name(enum kvm_stat k)
{
	return (unsigned)k < KS_N ? names[k].ours : "?";
}

static int read_at(int fd, void *buf, size_t len, off_t off)
{
	ssize_t n = pread(fd, buf, len, off);

	if (n < 0)
		return -errno;
	return (size_t)n == len ? 0 : -EIO;
}

int kvm_stats_open(struct kvm_stats *s, int vcpu_fd)
{
	struct kvm_stats_header h;
	size_t dsz;
	uint8_t *d = NULL;
	uint32_t i, end = 0;
	int k, r;

	s->fd = -1;
	for (k = 0; k < KS_N; k++)
		s->idx[k] = -1;
	r = ioctl(vcpu_fd, KVM_GET_STATS_FD, NULL);
	if (r < 0)
		return -errno;
	s->fd = r;
	if ((r = read_at(s->fd, &h, sizeof(h), 0)) < 0)
		goto bad;
	r = -EPROTO;
	if (h.num_desc > STATS_MAX_DESC || h.name_size == 0 || h.name_size > STATS_MAX_NAME)
		goto bad;
	dsz = sizeof(struct kvm_stats_desc) + h.name_size;
	if (!(d = malloc(dsz * h.num_desc))) {
		r = -ENOMEM;
		goto bad;
	}
	if ((r = read_at(s->fd, d, dsz * h.num_desc, h.desc_offset)) < 0)
		goto bad;
	for (i = 0; i < h.num_desc; i++) {
		struct kvm_stats_desc *e = (struct kvm_stats_desc *)(d + i * dsz);
		uint64_t last = (uint64_t)e->offset + (uint64_t)e->size * 8;

		e->name[h.name_size - 1] = '\0';
		if (e->offset % 8 || last > STATS_MAX_DATA) {
			r = -EPROTO;
			goto bad;
		}
		if (last > end)
			end = (uint32_t)last;
		for (k = 0; k < KS_N; k++)
			if (e->size >= 1 && strcmp(e->name, names[k].kvm) == 0)
				s->idx[k] = (int32_t)(e->offset / 8);
	}
	free(d);
	s->data_off = h.data_offset;
	s->data_len = end;
	return 0;
bad:
	free(d);
	kvm_stats_close(s);
	return r;
}

void kvm_stats_close(struct kvm_stats *s)
{
	if (s->fd >= 0)
		close(s->fd);
	s->fd = -1;
}

int kvm_stats_add(const struct kvm_stats *s, uint64_t v[KS_N])
{
	uint64_t buf[STATS_MAX_DATA / 8];
	int k, r;

	if (s->fd < 0)
		return -EBADF;
	if ((r = read_at(s->fd, buf, s->data_len, s->data_off)) < 0)
		return r;
	for (k = 0; k < KS_N; k++)
		if (s->idx[k] >= 0)
			v[k] += buf[s->idx[k]];
	return 0;
}
