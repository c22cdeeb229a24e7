/*
 * A few of KVM's own per-vCPU counters (KVM_GET_STATS_FD, Linux 5.14+),
 * looked up by name: how many times the guest left KVM's fast path after a
 * restore, and why. The counters explain where a restored guest's first
 * milliseconds go (docs/snapshot.md, "The working set"): each nested page
 * fault (pf_taken) is a page of guest memory mapped into KVM's page tables
 * on first touch, which prefetching host pages does not avoid.
 */
#ifndef KILN_KVMSTATS_H
#define KILN_KVMSTATS_H

#include <stdint.h>

enum kvm_stat {
	KS_EXITS,		/* every exit from the guest */
	KS_PF_TAKEN,		/* nested page faults KVM handled (TDP: the guest touched an unmapped page) */
	KS_HALT_EXITS,		/* the guest idled (HLT) */
	KS_MMIO_EXITS,		/* to kiln-vmm for MMIO (virtio notifications, config) */
	KS_IO_EXITS,		/* to kiln-vmm for port I/O (serial) */
	KS_IRQ_INJECTIONS,	/* interrupts delivered */
	KS_N
};

struct kvm_stats {
	int fd;			/* the vCPU's stats fd, -1 without one */
	uint32_t data_off, data_len;	/* the data block: data_len bytes at data_off */
	int32_t idx[KS_N];	/* each counter's u64 index in the data block, -1 if the kernel has none */
};

/* The stats of vCPU fd vcpu_fd into s: 0, or -errno (s->fd is then -1 and reads give zeros). */
int kvm_stats_open(struct kvm_stats *s, int vcpu_fd);
void kvm_stats_close(struct kvm_stats *s);

/* Add the counters' current values to v[KS_N] (one pread). 0, or -errno with v unchanged. */
int kvm_stats_add(const struct kvm_stats *s, uint64_t v[KS_N]);

/* A counter's name in JSON and -v output ("exits", "npf", ...). */
const char *kvm_stat_name(enum kvm_stat k);

#endif
