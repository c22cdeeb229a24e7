/*
 * kiln-vmm's core: KVM, guest memory, kernel loading, boot structures, vCPUs
 * and the exit dispatch. Library code here returns 0 or -errno and, where a
 * user needs to know what went wrong, writes one line into an error buffer;
 * only main.c prints.
 */
#ifndef KILN_VMM_H
#define KILN_VMM_H

#include <linux/kvm.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include "abi.h"
#include "err.h"
#include "kvmstats.h"

#define KIB (1ULL << 10)
#define MIB (1ULL << 20)
#define GIB (1ULL << 30)

#define KILN_MAX_VCPUS	8
#define KILN_MAX_BUS	16
#define KILN_MIN_MEM_MIB 128
#define KILN_MAX_MEM_MIB (1024ULL * 1024)


/* ---- Guest physical memory map (x86-64) ------------------------------- */

/*
 * Below 1 MiB live the boot structures; RAM runs from 0 to the MMIO gap and
 * continues above 4 GiB. Devices (IOAPIC, LAPIC, virtio-mmio) sit in the gap.
 */
#define GUEST_GDT		0x500ULL
#define GUEST_START_INFO	0x6000ULL	/* PVH hvm_start_info + tables */
#define GUEST_ZERO_PAGE		0x7000ULL	/* Linux boot_params */
#define GUEST_PML4		0x9000ULL
#define GUEST_PDPT		0xa000ULL
#define GUEST_PD		0xb000ULL	/* 4 pages: identity map of 4 GiB */
#define GUEST_CMDLINE		0x20000ULL
#define GUEST_MPTABLE		0x9fc00ULL	/* last KiB of base memory */
#define GUEST_EBDA_END		0xa0000ULL
#define GUEST_HIGH_START	0x100000ULL	/* kernels load at or above 1 MiB */
#define GUEST_MMIO_GAP_START	0xc0000000ULL
#define GUEST_MMIO_GAP_END	0x100000000ULL
#define GUEST_IOAPIC		0xfec00000ULL
#define GUEST_LAPIC		0xfee00000ULL
#define GUEST_TSS		0xfffbd000ULL	/* KVM_SET_TSS_ADDR: 3 pages */
#define GUEST_IDENTITY_MAP	0xfffbc000ULL

/* Guest RAM: one host mapping, seen by the guest as one or two regions. */
struct guest_mem {
	uint8_t *host;		/* base of the host mapping */
	uint64_t size;		/* bytes of guest RAM */
	uint64_t low_size;	/* bytes at GPA 0; the rest starts at 4 GiB */
	int hugepages;
};

/*
 * Map size bytes of anonymous guest RAM (2 MiB huge pages if hugepages).
 * Returns 0 or -errno with err set.
 */
int guest_mem_alloc(struct guest_mem *m, uint64_t size, int hugepages, struct kiln_err *err);
void guest_mem_free(struct guest_mem *m);

/*
 * The one checked translation from a guest physical range to a host pointer:
 * NULL (and a log line naming the caller) unless [gpa, gpa+len) lies wholly
 * inside one RAM region. Use through GUEST_PTR so the log names the caller.
 */
void *guest_ptr_checked(const struct guest_mem *m, uint64_t gpa, uint64_t len,
			const char *file, int line);
#define GUEST_PTR(m, gpa, len) guest_ptr_checked((m), (gpa), (len), __FILE__, __LINE__)

/* Does [gpa, gpa+len) lie wholly inside one RAM region? (no pointer, no log) */
int guest_range_valid(const struct guest_mem *m, uint64_t gpa, uint64_t len);

/*
 * Map guest RAM of size bytes from a snapshot's memory file, MAP_PRIVATE:
 * clean pages come from the page cache shared by every clone, writes stay
 * private. The file must be exactly size bytes. Returns 0 or -errno with err.
 */
int guest_mem_map_file(struct guest_mem *m, const char *path, uint64_t size, struct kiln_err *err);

/*
 * The same from an open file (name for messages) of at least size bytes:
 * its first size bytes become guest RAM. fd may be closed afterwards.
 */
int guest_mem_map_fd(struct guest_mem *m, int fd, const char *name, uint64_t size, struct kiln_err *err);

/*
 * Write guest RAM to fd, an empty file open for writing (name for
 * messages), as a sparse file: all-zero pages become holes. *written gets
 * the bytes of data written. No fsync: the caller decides when. Returns 0
 * or -errno with err.
 */
int guest_mem_save(const struct guest_mem *m, int fd, const char *name, uint64_t *written, struct kiln_err *err);

/*
 * Guest RAM this process has mapped in (*touched: the guest or a device
 * used the page) and, of that, its own copies (*private: anonymous pages;
 * for a clone, the pages it wrote, the rest are shared through the page
 * cache), from /proc/self/smaps. Returns 0 or -errno.
 */
int guest_mem_usage(const struct guest_mem *m, uint64_t *touched, uint64_t *private_bytes);

/* Highest guest physical address of RAM, plus one. */
uint64_t guest_mem_end(const struct guest_mem *m);

/* ---- Kernel loading (loader.c) ----------------------------------------- */

enum boot_mode {
	BOOT_PVH,	/* vmlinux ELF with XEN_ELFNOTE_PHYS32_ENTRY: 32-bit entry */
	BOOT_LINUX64,	/* bzImage: 64-bit boot protocol entry */
};

struct kernel_info {
	enum boot_mode mode;
	uint64_t entry;		/* guest physical entry point */
	uint64_t load_start;	/* lowest byte the kernel occupies */
	uint64_t load_end;	/* one past the highest (incl. bss/init_size) */
	/* bzImage only: the setup header to copy into boot_params. */
	uint8_t setup_hdr[0x290 - 0x1f1];
	size_t setup_hdr_len;
	uint64_t initrd_addr_max;
	uint32_t cmdline_size;
};

/*
 * Load a kernel image (vmlinux ELF with a PVH note, or bzImage) from img into
 * guest memory. Every segment must lie in RAM at or above GUEST_HIGH_START.
 * Returns 0 or -errno (-ENOEXEC for an unusable image) with err set.
 */
int kernel_load(struct guest_mem *m, const uint8_t *img, size_t len,
		struct kernel_info *ki, struct kiln_err *err);

/* ---- Boot structures (boot.c) ------------------------------------------ */

/* An e820 entry as the boot protocol and PVH's memmap both lay it out. */
struct e820_entry {
	uint64_t addr;
	uint64_t size;
	uint32_t type;
} __attribute__((packed));

#define E820_RAM	1
#define E820_RESERVED	2
#define E820_MAX	8

/* Fill map with the guest's memory map; returns the number of entries. */
int boot_e820(const struct guest_mem *m, struct e820_entry *map);

struct boot_params_in {
	const char *cmdline;
	uint64_t initrd_gpa;	/* 0 when there is no initrd */
	uint64_t initrd_size;
	int vcpus;
};

/*
 * Choose where the initrd of size bytes goes: page aligned, as high as the
 * kernel allows, above the kernel. Returns 0 and *gpa, or -ENOSPC with err.
 */
int boot_place_initrd(const struct guest_mem *m, const struct kernel_info *ki,
		      uint64_t size, uint64_t *gpa, struct kiln_err *err);

/*
 * Write the command line, e820 map, MP table, GDT and page tables, and the
 * PVH start info or Linux zero page. Returns 0 or -errno with err set.
 */
int boot_setup(struct guest_mem *m, const struct kernel_info *ki,
	       const struct boot_params_in *in, struct kiln_err *err);

/* Write an Intel MP table for vcpus CPUs at GUEST_MPTABLE (exposed for tests). */
int boot_write_mptable(struct guest_mem *m, int vcpus);

/* ---- KVM and the VM (kvm.c, cpu.c) ------------------------------------- */

struct vm;

struct vcpu {
	struct vm *vm;
	int id;
	int fd;
	struct kvm_run *run;
	size_t run_size;
	pthread_t thread;
	int started;		/* thread is running */
	uint64_t exits;
	struct kvm_stats ks;	/* KVM's own counters (fd -1 on kernels without them) */
};

/* Why the VM stopped. */
enum vm_stop {
	VM_RUNNING = 0,
	VM_STOP_STATUS,		/* the init reported the command's status */
	VM_STOP_RESET,		/* the guest reset (reboot, panic, triple fault) */
	VM_STOP_ERROR,		/* KVM or the VMM failed */
	VM_STOP_TIMEOUT,	/* --timeout expired */
	VM_STOP_SIGNAL,		/* kiln-vmm was told to stop */
	VM_STOP_SHUTDOWN,	/* the control socket or a template asked for it: exit 0 */
};

/* A device on the port I/O or MMIO bus: handler for [base, base+len). */
struct bus_dev {
	uint64_t base;
	uint64_t len;
	/* data holds size bytes (1, 2, 4 or 8); reads come pre-zeroed. */
	void (*io)(void *opaque, uint64_t addr, uint8_t *data, uint32_t size, int is_write);
	void *opaque;
};

struct bus {
	struct bus_dev dev[KILN_MAX_BUS];
	int n;
};

/* Add a device to a bus; returns 0, -ENOSPC when full, -EEXIST on overlap. */
int bus_add(struct bus *b, uint64_t base, uint64_t len,
	    void (*io)(void *, uint64_t, uint8_t *, uint32_t, int), void *opaque);

/* The device covering addr, or NULL. */
const struct bus_dev *bus_find(const struct bus *b, uint64_t addr);

struct vm {
	int kvm_fd;
	int fd;
	int made;			/* vm_create_bare done (a standby VMM's VM) */
	struct guest_mem mem;
	int nvcpus;
	int nvcpus_made;		/* vCPUs created ahead of their state (standby) */
	struct vcpu vcpus[KILN_MAX_VCPUS];
	struct kvm_cpuid2 *cpuid;	/* supported CPUID, filtered per vCPU */
	struct bus pio;			/* port I/O devices, see exit.c */
	struct bus mmio;		/* MMIO devices (virtio-mmio) */

	pthread_mutex_t lock;
	int stop_efd;			/* eventfd: signalled when the VM stops */
	_Atomic int stop;		/* enum vm_stop once stopped */
	uint32_t status;		/* KILN_STATUS_* word for VM_STOP_STATUS */
	char stop_detail[256];		/* what went wrong, for VM_STOP_ERROR */
	uint64_t t_mark_ns;		/* when the init reached userspace */
	uint64_t t_agent_ns;		/* when the agent started listening */
	int agent_efd;			/* eventfd: signalled when the agent is ready */

	/* Pausing (vm_pause): vCPUs park outside KVM_RUN until resumed. */
	pthread_cond_t pause_cv;	/* a vCPU parked, or the VM stopped */
	pthread_cond_t resume_cv;	/* pause_req cleared, or the VM stopped */
	int pause_req;
	int npaused;
};

/*
 * Open /dev/kvm (path may be NULL for the default) and check the API version
 * and every capability kiln relies on. Returns the fd or -errno with err.
 */
int kvm_open(const char *path, struct kiln_err *err);

/*
 * Create the VM: irqchip, PIT, TSS and identity map, guest memory slots for
 * m (ownership moves to vm), supported CPUID. Returns 0 or -errno with err.
 */
int vm_create(struct vm *vm, int kvm_fd, struct guest_mem *m, struct kiln_err *err);
/*
 * vm_create in two steps: the VM without memory (what a standby VMM makes
 * before it knows its snapshot), then the memory slots for m (ownership
 * moves to vm).
 */
int vm_create_bare(struct vm *vm, int kvm_fd, struct kiln_err *err);
int vm_set_memory(struct vm *vm, struct guest_mem *m, struct kiln_err *err);
void vm_destroy(struct vm *vm);

/* Assert (level 1) or deassert (0) an interrupt line of the in-kernel irqchip. */
int vm_irq_line(struct vm *vm, uint32_t irq, int level);

/*
 * Stop the VM with reason (the first reason wins) and kick every vCPU out of
 * KVM_RUN. Safe from any thread.
 */
void vm_request_stop(struct vm *vm, enum vm_stop reason, const char *detail);

/*
 * Create vCPU id with its CPUID, MSRs, FPU and LAPIC set up; vCPU 0 also gets
 * the entry registers for ki. Returns 0 or -errno with err.
 */
int vcpu_create(struct vm *vm, int id, const struct kernel_info *ki, struct kiln_err *err);

/*
 * Adjust KVM's supported CPUID for vCPU id of nvcpus: hypervisor bit, APIC
 * ids, topology, no PMU. Exposed for unit tests.
 */
void cpuid_filter(struct kvm_cpuid2 *cpuid, int id, int nvcpus);
void cpuid_set_tsc_deadline(struct kvm_cpuid2 *cpuid);
/* Whether the host CPU is QEMU's TCG emulator (see cpu.c for why it matters). */
int host_cpu_is_tcg(void);

/*
 * Does this CPU have hardware virtualisation (VMX or SVM)? A /dev/kvm
 * without it is not KVM proper (e.g. PVM's kvm_pvm, which runs only
 * PVM-enabled guest kernels).
 */
int host_cpu_has_virt(void);

/* Run vCPU until the VM stops (thread body). */
void *vcpu_thread(void *arg);

/*
 * Create vCPU id with only its fd and kvm_run mapping, for a restore that
 * sets every register from a snapshot. Returns 0 or -errno with err.
 */
int vcpu_create_bare(struct vm *vm, int id, struct kiln_err *err);

/*
 * Stop every vCPU outside KVM_RUN, with any emulated instruction completed,
 * and wait (at most timeout_ms) until all are parked. Returns 0, -ETIMEDOUT,
 * or -ESHUTDOWN if the VM stopped meanwhile. Not from a vCPU thread.
 */
int vm_pause(struct vm *vm, int timeout_ms);
/* Let paused vCPUs run again. */
void vm_resume(struct vm *vm);

/* ---- ioctls that name themselves in the error (kvm.c) ---------------------- */

/*
 * Issue ioctl req with arg on fd (/dev/kvm, a VM or a device fd). On failure
 * err (may be NULL) reads "NAME: strerror" with name the request's name, as
 * the KVM selftests' vm_ioctl does. Returns the ioctl's result (>= 0: some
 * requests return a count, a size or an fd) or -errno. Use it through
 * KVM_IOCTL, which names req itself: KVM_IOCTL(vm->fd, KVM_GET_PIT2, &pit, err).
 */
int kvm_ioctl(int fd, unsigned long req, void *arg, const char *name, struct kiln_err *err);
#define KVM_IOCTL(fd, req, arg, err) \
	kvm_ioctl((fd), (req), (void *)(uintptr_t)(arg), #req, (err))

/*
 * Whether KVM can map guest memory into its page tables ahead of the guest
 * (KVM_PRE_FAULT_MEMORY, Linux 6.10) for this VM, whose vCPU 0 exists.
 */
int vm_can_pre_fault(const struct vm *vm);

/*
 * Map bytes [off, off+len) of guest RAM (offsets in the host mapping, as in
 * a snapshot's memory file) into KVM's page tables now, so the guest's
 * first touches of them take no exit; the host pages must be in already
 * (the mapping's permissions are kept: a page only read stays shared).
 * Before the vCPUs run. 0, or -errno.
 */
int vm_pre_fault(const struct vm *vm, uint64_t off, uint64_t len);

/* The same on vCPU v's fd; the error reads "vCPU N: NAME: strerror". */
int vcpu_ioctl(const struct vcpu *v, unsigned long req, void *arg, const char *name, struct kiln_err *err);
#define VCPU_IOCTL(v, req, arg, err) \
	vcpu_ioctl((v), (req), (void *)(uintptr_t)(arg), #req, (err))


/* ---- Snapshots of KVM state (vmstate.c; layout in docs/snapshot.md) ---- */

struct snap_buf;
struct snap_rd;

#define SNAP_MAX_CPUID	256
#define SNAP_MAX_MSRS	512
#define SNAP_MAX_XSAVE	(64u << 10)

struct snap_vm {
	struct kvm_irqchip chip[3];	/* PIC master, PIC slave, IOAPIC */
	struct kvm_pit_state2 pit;
	struct kvm_clock_data clock;
};

struct snap_vcpu {
	uint32_t id;
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	const void *xsave;		/* points into the state file */
	uint32_t xsave_len;
	struct kvm_xcrs xcrs;
	struct kvm_debugregs dregs;
	struct kvm_lapic_state lapic;
	struct kvm_mp_state mp;
	struct kvm_vcpu_events events;
	uint32_t tsc_khz;
	uint32_t ncpuid, nmsrs;
	struct kvm_cpuid_entry2 cpuid[SNAP_MAX_CPUID];
	struct kvm_msr_entry msrs[SNAP_MAX_MSRS];
};

/* Append the VM's irqchips, PIT and clock as a SNAP_SEC_VM section (vCPUs paused). */
int vm_state_save(struct vm *vm, struct snap_buf *w, struct kiln_err *err);
/* Parse a SNAP_SEC_VM section (no KVM); 0 or -EINVAL with r->err. */
int vm_state_parse(struct snap_rd *r, struct snap_vm *s);
/* Apply parsed VM state to a VM created with vm_create. */
int vm_state_apply(struct vm *vm, const struct snap_vm *s, struct kiln_err *err);

/* Append a paused vCPU's whole state as a SNAP_SEC_VCPU section. */
int vcpu_state_save(struct vcpu *v, struct snap_buf *w, struct kiln_err *err);
/* Parse a SNAP_SEC_VCPU section (no KVM); 0 or -EINVAL with r->err. */
int vcpu_state_parse(struct snap_rd *r, struct snap_vcpu *s);
/* Apply parsed state to a vCPU from vcpu_create_bare, in the order KVM needs. */
int vcpu_state_apply(struct vcpu *v, const struct snap_vcpu *s, struct kiln_err *err);

/* ---- Exits (exit.c) ------------------------------------------------------ */

enum exit_action {
	EXIT_CONTINUE,
	EXIT_STOP,
};

/*
 * Handle one exit of vcpu described by run (pure with respect to KVM: tests
 * drive it with a made-up kvm_run). Returns EXIT_STOP once the VM is stopping.
 */
enum exit_action handle_exit(struct vcpu *vcpu, struct kvm_run *run);

/* The guest ABI ports (abi.h): the command's status and the boot mark. */
void guest_port_io(void *opaque, uint64_t port, uint8_t *data, uint32_t size, int is_write);

/* Nanoseconds on CLOCK_MONOTONIC. */
uint64_t now_ns(void);

/* The time ms milliseconds from now on clock, for timed waits. */
struct timespec deadline_after(clockid_t clock, unsigned ms);

/*
 * A hostile string made safe for a message: its first 60 bytes, each
 * unprintable one as '?', "..." if it goes on. Returns out.
 */
const char *str_printable(const char *str, char out[64]);

/* Is n a name within a directory: not empty, no '/', not . or ..? */
int name_is_local(const char *n);

/* ---- Log lines a guest can cause (util.c) ------------------------------- */

/*
 * A token bucket for one kind of log line a guest can cause: LOG_LIMIT_BURST
 * lines at once, then one per LOG_LIMIT_PERIOD_NS; what it holds back is
 * counted and summarised ("kiln-vmm: WHO: N similar messages suppressed")
 * before its next line, or by log_flush() at exit. One per call site:
 *     static struct log_limit lim = LOG_LIMIT("virtio-blk");
 */
#define LOG_LIMIT_BURST		10
#define LOG_LIMIT_PERIOD_NS	1000000000ULL
#define LOG_LIMIT(who_)		{ .who = (who_) }

struct log_limit {
	const char *who;	/* names the summary line; a string that lives for ever */
	int started, listed;
	unsigned tokens;
	uint64_t refill_ns;	/* when the bucket last gained a token */
	uint64_t suppressed;	/* lines held back since the last one printed */
	struct log_limit *next;	/* the limiters log_flush() walks */
};

/*
 * May a line go out at now (ns)? Returns 1 and sets *held to the lines held
 * back before it (then forgotten), or 0 and counts this one. Pure: no lock,
 * no clock, for tests; log_guest() is what devices call.
 */
int log_limit_allow(struct log_limit *l, uint64_t now, uint64_t *held);

/*
 * Print "kiln-vmm: " fmt "\n" on stderr if l allows it now, after a summary
 * of the lines l held back. Safe from any thread.
 */
void log_guest(struct log_limit *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Print the summary of every limiter still holding lines back (at exit). */
void log_flush(void);

#endif
