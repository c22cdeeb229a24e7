/*
 * Snapshots of a running kiln-vmm and the parsing half of restoring one.
 * A snapshot is a directory (docs/snapshot.md):
 *
 *   state        header, KVM and device state, CRC-32C   (snapfile.h)
 *   memory       guest RAM, sparse: untouched pages are holes; then a
 *                trailer page with the snapshot's id
 *   diskN.img    a copy of each writable disk as the guest saw it
 *
 * It is written into a fresh directory beside its target and renamed into
 * place whole. A state file names no host file outside its directory and
 * no host resource: read-only disks, taps and vsock sockets come from the
 * restorer's options (snap_plan_devices).
 */
#ifndef KILN_SNAPSHOT_H
#define KILN_SNAPSHOT_H

#include <pthread.h>
#include <stdint.h>

#include "i8042.h"
#include "serial.h"
#include "ioloop.h"
#include "snapfile.h"
#include "virtio.h"
#include "vmm.h"
#include "workingset.h"

#define SNAP_MAX_DEVICES	16
#define SNAP_STATE_FILE		"state"
#define SNAP_MEMORY_FILE	"memory"
#define SNAP_ID_LEN		16	/* random, one per snapshot taken */
#define SNAP_MEM_TRAILER	4096	/* the page after guest RAM in the memory file */
#define SNAP_MEM_MAGIC		"KILNMEM2"

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
	uint8_t id[SNAP_ID_LEN];	/* also in the memory file's trailer */
};

/* One virtio device as recorded: enough to recreate it, then its state. */
struct snap_device {
	char kind[8];			/* "disk", "net", "vsock": kiln-vmm's option */
	char spec[512];			/* the option's argument, as the kind's spec_persist wrote it */
	const struct virtio_dev_ops *type;	/* the kind, which checked spec */
	int own;			/* the snapshot holds its backing (a writable disk's copy) */
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
 * order, one SERIAL and meta.ndevices DEVICE sections. A writable disk must
 * be a file in the snapshot's directory (each kind's spec_check). Device state
 * is only located here; virtio_mmio_restore validates it. Returns 0 or
 * -EINVAL with err set; free with snap_state_free either way.
 */
int snap_parse(const void *p, size_t len, struct snap_state *s, char *err, size_t errlen);
void snap_state_free(struct snap_state *s);

/*
 * Match a restorer's device options to the snapshot's devices: the n-th
 * option of a kind replaces the snapshot's n-th device of that kind.
 * kinds[j] and specs[j] are option j's kind ("disk", "net", "vsock") and
 * argument. opt[i] gets the option for device i, or -1 where the device is
 * the snapshot's own disk copy. A net or vsock device and a read-only disk
 * must have an option: host resources come from the restorer, never from
 * the file. Returns 0, or -EINVAL with err naming the option to pass or the
 * option left over.
 */
int snap_plan_devices(const struct snap_state *s, const char *const *kinds, const char *const *specs,
		      int nopts, int *opt, struct kiln_err *err);

/* Is name one a snapshot directory holds (state, memory, diskN.img)? */
int snap_is_own_file(const char *name);

/*
 * The memory file's trailer for snapshot id and size bytes of guest RAM:
 * SNAP_MEM_TRAILER bytes, written at offset size.
 */
void snap_mem_trailer(uint8_t out[SNAP_MEM_TRAILER], const uint8_t id[SNAP_ID_LEN], uint64_t size);

/*
 * Is fd (name for messages) the whole memory file of the snapshot with id
 * and size bytes of RAM: size plus a trailer bytes long, and a trailer
 * naming that id? One pread, no pass over the data. Returns 0, or -EINVAL
 * with err saying what the file is instead.
 */
int snap_mem_check(int fd, const char *name, uint64_t size, const uint8_t id[SNAP_ID_LEN], struct kiln_err *err);

/* What a running kiln-vmm hands to snapshot_take. */
struct snap_source {
	struct vm *vm;
	struct serial *uart;
	struct ioloop *loop;
	struct virtio_dev *devs;	/* SNAP_MAX_DEVICES slots */
	int ndevs;
	const char *dev_spec[SNAP_MAX_DEVICES];	/* what each device was made from */
	uint32_t kernel_crc;
	uint64_t kernel_size;
	const char *kernel_path;
	const char *vmm_version;
	uint64_t t_start;		/* when kiln-vmm started (for messages) */
	char spec_buf[SNAP_MAX_DEVICES][4200];	/* dev_spec's storage (snap_source_add) */
	char kernel_buf[256];		/* kernel_path's after a restore */
	/* After a restore: the snapshot it came from (its working set is recorded there). */
	int restored;
	char restored_dir[4096];
	uint8_t restored_id[SNAP_ID_LEN];
	/* The working set being brought in while the restore goes on (snap_prefetch_wait). */
	enum snap_prefetch prefetch;
	struct snap_ws ws;
	pthread_t prefetch_thread;
	int prefetching, prefetch_err;
	uint64_t prefetched[3];		/* pages brought in, by SNAP_WS_READ/WRITE */
	int pre_faulted;		/* ... and mapped in KVM's page tables too */
};

/*
 * Create device slot of kind from spec (virtio_dev_create_at) into
 * src->devs[slot] on src's VM and I/O loop, and record spec for the
 * snapshots taken of it. Returns 0 or -errno with err.
 */
int snap_source_add(struct snap_source *src, int slot, const struct virtio_dev_ops *kind, const char *spec,
		    struct kiln_err *err);

struct snap_result {
	uint64_t state_bytes;
	uint64_t memory_bytes;		/* data written (holes excluded) */
	uint64_t disk_bytes;		/* data copied into diskN.img files */
	double quiesce_ms, total_ms;
};

/*
 * A snapshot directory being written: a fresh directory .NAME.partial-XXXXXX
 * (mode 0700) beside the target dir, renamed to dir when whole.
 */
struct snap_dir {
	int pfd, dfd;			/* dir's parent; the fresh directory */
	int kind;			/* what was at dir: nothing, empty, an older snapshot */
	char base[256], tmp[300];	/* dir's last component; the fresh one's name */
	const char *dir;		/* for messages */
};

/*
 * Start writing a snapshot for dir. dir may be missing, an empty directory,
 * or an older snapshot (nothing but regular files named as a snapshot's);
 * anything else (a link, other files) is refused. Returns 0 or -errno with err.
 */
int snap_dir_begin(struct snap_dir *d, const char *dir, struct kiln_err *err);

/* A new file name in it, O_EXCL|O_NOFOLLOW, mode 0600, open for writing; fd or -errno. */
int snap_dir_create(const struct snap_dir *d, const char *name, struct kiln_err *err);

/*
 * fsync the fresh directory and rename it to dir: an older snapshot there is
 * swapped out in one step (RENAME_EXCHANGE) and removed. On failure the
 * fresh directory is removed. Returns 0 or -errno with err.
 */
int snap_dir_commit(struct snap_dir *d, struct kiln_err *err);

/* Give up: remove the fresh directory and what is in it. */
void snap_dir_abort(struct snap_dir *d);

/*
 * Snapshot a paused VM (vm_pause) into directory dir: wait until no device
 * has I/O in flight (at most 5 s), then on the I/O thread write the
 * writable disks' copies, memory and state (last) into a fresh directory
 * .NAME.partial-XXXXXX beside dir, with O_EXCL|O_NOFOLLOW, fsync them and
 * the directory, and rename it to dir. dir may be missing, empty, or an
 * older snapshot (regular files named as a snapshot's only), which is
 * swapped out whole (RENAME_EXCHANGE) and removed; anything else is
 * refused. The VM stays paused. Returns 0 or -errno with err.
 */
int snapshot_take(const struct snap_source *src, const char *dir, struct snap_result *res,
		  struct kiln_err *err);

/*
 * Copy the open file in to out, an open empty file, as cheaply as the
 * filesystem allows: a reflink (FICLONE), else a sparse copy of the data
 * extents; then fsync out. src and dst name them in messages; *copied
 * (may be NULL) gets the bytes copied. Returns 0 or -errno with err.
 */
int snap_copy_fd(int in, const char *src, int out, const char *dst, uint64_t *copied, struct kiln_err *err);

/* The same from path src to path dst (created or truncated, mode 0600, never through a link). */
int snap_copy_file(const char *src, const char *dst, uint64_t *copied, struct kiln_err *err);

/* A restore as kiln-vmm's options ask for it (restore.c). */
struct snap_restore_opts {
	const char *path;		/* --restore DIR (its state file), or a STATE file */
	const char *memory;		/* --memory FILE, or NULL: the snapshot's own */
	const char *clone_dir;		/* --clone-dir DIR, or NULL: unnamed copies */
	const char *kernel;		/* --kernel given: must be the snapshot's; else NULL */
	uint64_t mem_size;		/* --mem given, in bytes; else 0 */
	int vcpus;			/* --vcpus given; else 0 */
	int ndevices;			/* device options (see snap_plan_devices) */
	const char *const *kinds;
	const char *const *specs;
	enum snap_prefetch prefetch;	/* --prefetch */
};

/*
 * Restore a snapshot into src: src->vm has its kvm_fd and nothing else,
 * src->uart and src->loop are initialised, src->devs has room. Check the
 * state file and the options against each other, map the memory file
 * (private: writes stay this VM's), apply KVM and vCPU state, create each
 * device at its slot (from its option, or from the snapshot's own copy
 * through the kind's spec_clone) and apply its state, then the UART's.
 * Returns 0, or -errno with err naming the file or option at fault; on
 * failure src's VM may be partly built (kiln-vmm exits). Marks the
 * timeline (vmm/timeline.h) at each step.
 */
int snap_restore(const struct snap_restore_opts *o, struct snap_source *src, struct kiln_err *err);

/*
 * Wait until the working set snap_restore started bringing in is in (before
 * the vCPUs run); marks TL_PREFETCHED. Nothing to wait for: returns at once.
 * 0, or -errno if prefetching failed (the guest then faults pages in itself).
 */
int snap_prefetch_wait(struct snap_source *src);

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
