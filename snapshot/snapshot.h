/*
 * Snapshots of a running kiln-vmm and the parsing half of restoring one.
 * A snapshot is a directory (docs/snapshot.md):
 *
 *   state        header, KVM and device state, CRC-32C   (snapfile.h)
 *   memory       guest RAM, sparse: untouched pages are holes
 *   diskN.img    a copy of each writable disk as the guest saw it
 *
 * Read-only disks are recorded by path and shared, never copied.
 */
#ifndef KILN_SNAPSHOT_H
#define KILN_SNAPSHOT_H

#include <stdint.h>

#include "devices.h"
#include "ioloop.h"
#include "snapfile.h"
#include "virtio.h"
#include "vmm.h"

#define SNAP_MAX_DEVICES	16
#define SNAP_STATE_FILE		"state"
#define SNAP_MEMORY_FILE	"memory"

/* What the state file says about the machine it was taken on. */
struct snap_meta {
	char vendor[13];		/* CPUID leaf 0, e.g. "AuthenticAMD" */
	char vmm_version[32];
	uint64_t mem_size;		/* bytes of guest RAM */
	uint32_t vcpus;
	uint32_t kernel_crc;		/* CRC-32C of the kernel image booted */
	uint64_t kernel_size;
	char kernel[256];		/* its path then, for messages */
	uint64_t created_ns;		/* CLOCK_REALTIME when taken */
	uint32_t ndevices;
};

/* One virtio device as recorded: enough to recreate it, then its state. */
struct snap_device {
	char kind[8];			/* "disk", "net", "vsock": kiln-vmm's option */
	char spec[512];			/* the option's argument (disk paths relative to the snapshot) */
	uint64_t base;
	uint32_t irq;
	struct snap_rd state;		/* virtio_mmio_save's bytes */
};

/* A parsed state file. Pointers refer into the buffer given to snap_parse. */
struct snap_state {
	struct snap_meta meta;
	struct snap_vm vm;
	struct snap_vcpu *vcpu;		/* meta.vcpus of them */
	struct snap_rd serial;
	struct snap_device dev[SNAP_MAX_DEVICES];
};

/*
 * Parse and validate a whole state file (no KVM, no files: fuzzed): the
 * container, then one META, one VM, meta.vcpus VCPU sections with ids in
 * order, one SERIAL and meta.ndevices DEVICE sections. Device state is only
 * located here; virtio_mmio_restore validates it. Returns 0 or -EINVAL with
 * err set; free with snap_state_free either way.
 */
int snap_parse(const void *p, size_t len, struct snap_state *s, char *err, size_t errlen);
void snap_state_free(struct snap_state *s);

/* What a running kiln-vmm hands to snapshot_take. */
struct snap_source {
	struct vm *vm;
	struct serial *uart;
	struct ioloop *loop;
	struct virtio_dev *devs;
	int ndevs;
	const char *dev_kind[SNAP_MAX_DEVICES];
	const char *dev_spec[SNAP_MAX_DEVICES];
	uint32_t kernel_crc;
	uint64_t kernel_size;
	const char *kernel_path;
	const char *vmm_version;
	uint64_t t_start;		/* when kiln-vmm started (for messages) */
};

struct snap_result {
	uint64_t state_bytes;
	uint64_t memory_bytes;		/* data written (holes excluded) */
	uint64_t disk_bytes;		/* data copied into diskN.img files */
	double quiesce_ms, total_ms;
};

/*
 * Snapshot a paused VM (vm_pause) into directory dir (created if missing):
 * wait until no device has I/O in flight (at most 5 s), then on the I/O
 * thread write state, memory and the writable disks' copies. The VM stays
 * paused. Returns 0 or -errno with err.
 */
int snapshot_take(const struct snap_source *src, const char *dir, struct snap_result *res,
		  struct kiln_err *err);

/*
 * Copy file src to dst (created, mode 0600) as cheaply as the filesystem
 * allows: a reflink (FICLONE), else a sparse copy of the data extents.
 * dst may be NULL with dst_fd >= 0 to fill an open file. Returns 0 or
 * -errno with err.
 */
int snap_copy_file(const char *src, const char *dst, int dst_fd, uint64_t *copied, struct kiln_err *err);

/* The vendor string of a CPUID table (leaf 0), NUL-terminated into out[13]. */
void snap_cpuid_vendor(const struct kvm_cpuid2 *c, char out[13]);

/*
 * Does vCPU state s carry the CPUID this host would give that vCPU of
 * nvcpus? Returns 0, or -EINVAL with err naming the first leaf that differs.
 */
int snap_check_cpuid(const struct kvm_cpuid2 *host, const struct snap_vcpu *s, int nvcpus,
		     struct kiln_err *err);


/* CRC-32C and size of a file (the kernel image); 0 or -errno. */
int snap_file_crc(const char *path, uint32_t *crc, uint64_t *size);

#endif
