/*
 * The snapshot state file: its container (snapfile.c) and the parser that
 * runs before a restore touches KVM (snapshot.c, vmstate.c). Every damaged
 * file must be refused with a message, never read past its end.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "snapshot.h"
#include "virtio_blk.h"
#include "unit.h"

/* What to break while building a state file. */
enum fault {
	F_NONE,
	F_VCPUS_9,		/* header says 9 vCPUs */
	F_DEVICES_17,		/* header says 17 devices */
	F_MEM_ODD,		/* memory size not a multiple of 2 MiB */
	F_VCPU_ID,		/* vCPU section with the wrong id */
	F_CPUID_PARTIAL,	/* CPUID blob not a whole number of entries */
	F_MSRS_OVER,		/* more MSRs than SNAP_MAX_MSRS */
	F_REGS_SHORT,		/* kvm_regs blob one byte short */
	F_MP_STATE,		/* MP state out of range */
	F_NO_SERIAL,		/* serial section missing */
	F_TWO_META,		/* a second header */
	F_CHIP_ID,		/* irqchip with the wrong chip id */
	F_DEV_KIND,		/* unknown device kind */
	F_META_TRAILING,	/* a stray byte after the header's fields */
	F_XSAVE_HUGE,		/* XSAVE blob over the limit */
	F_DISK_ABS,		/* a disk named by an absolute host path */
	F_DISK_DOTDOT,		/* a disk named ../x, outside the snapshot */
	F_DISK_SUBDIR,		/* a disk in a subdirectory (a link could lead anywhere) */
	F_DISK_DOT,		/* a disk named by the snapshot directory itself */
	F_DISK_COPY,		/* valid: the snapshot's own copy of a writable disk */
	F_DISK_RO,		/* valid: a read-only disk the snapshot shared */
	F_NET,			/* valid: a net device */
};

/* The disk path a fault puts in the state, or NULL for the default vsock device. */
static const char *fault_disk(enum fault f)
{
	switch (f) {
	case F_DISK_ABS: return "/etc/passwd";
	case F_DISK_DOTDOT: return "../x";
	case F_DISK_SUBDIR: return "sub/disk0.img";
	case F_DISK_DOT: return ".,id=x";
	case F_DISK_COPY: return "disk0.img,id=data";
	case F_DISK_RO: return "/srv/rootfs.img,ro";
	default: return NULL;
	}
}

static void put_meta(struct snap_buf *w, enum fault f)
{
	size_t m = snapw_section_begin(w, SNAP_SEC_META);

	snapw_blob(w, "AuthenticAMD", 12);
	snapw_blob(w, "kiln-vmm test", 13);
	snapw_u64(w, f == F_MEM_ODD ? 256 * MIB + 4096 : 256 * MIB);
	snapw_u32(w, f == F_VCPUS_9 ? 9 : 2);
	snapw_u32(w, 0x12345678);
	snapw_u64(w, 1 << 20);
	snapw_blob(w, "/boot/vmlinux", 13);
	snapw_u64(w, 1700000000ULL * 1000000000ULL);
	snapw_u32(w, f == F_DEVICES_17 ? 17 : 1);
	snapw_bytes(w, "0123456789abcdef", SNAP_ID_LEN);
	if (f == F_META_TRAILING)
		snapw_u8(w, 0);
	snapw_section_end(w, m);
}

static void put_vm(struct snap_buf *w, enum fault f)
{
	struct kvm_irqchip chip;
	struct kvm_pit_state2 pit;
	size_t m = snapw_section_begin(w, SNAP_SEC_VM);
	int i;

	for (i = 0; i < 3; i++) {
		memset(&chip, 0, sizeof(chip));
		chip.chip_id = (uint32_t)(f == F_CHIP_ID && i == 2 ? 7 : i);
		snapw_blob(w, &chip, sizeof(chip));
	}
	memset(&pit, 0, sizeof(pit));
	snapw_blob(w, &pit, sizeof(pit));
	snapw_u64(w, 123456789);
	snapw_section_end(w, m);
}

static void put_vcpu(struct snap_buf *w, uint32_t id, enum fault f)
{
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	struct kvm_xcrs xcrs;
	struct kvm_debugregs dregs;
	struct kvm_lapic_state lapic;
	struct kvm_vcpu_events ev;
	struct kvm_cpuid_entry2 cpuid[3];
	static struct kvm_msr_entry msrs[SNAP_MAX_MSRS + 1];
	static uint8_t xsave[SNAP_MAX_XSAVE + 1];
	size_t m = snapw_section_begin(w, SNAP_SEC_VCPU);

	memset(&regs, 0, sizeof(regs));
	regs.rip = 0x1000000 + id;
	memset(&sregs, 0, sizeof(sregs));
	memset(&xcrs, 0, sizeof(xcrs));
	memset(&dregs, 0, sizeof(dregs));
	memset(&lapic, 0, sizeof(lapic));
	memset(&ev, 0, sizeof(ev));
	memset(cpuid, 0, sizeof(cpuid));
	cpuid[1].function = 1;
	cpuid[1].eax = 0x800f12;
	memset(msrs, 0, sizeof(msrs));
	msrs[0].index = 0x10;
	msrs[0].data = 42;
	snapw_u32(w, f == F_VCPU_ID && id == 1 ? 0 : id);
	snapw_blob(w, &regs, f == F_REGS_SHORT ? sizeof(regs) - 1 : sizeof(regs));
	snapw_blob(w, &sregs, sizeof(sregs));
	snapw_blob(w, xsave, f == F_XSAVE_HUGE ? SNAP_MAX_XSAVE + 1 : 4096);
	snapw_blob(w, &xcrs, sizeof(xcrs));
	snapw_blob(w, &dregs, sizeof(dregs));
	snapw_blob(w, &lapic, sizeof(lapic));
	snapw_u32(w, f == F_MP_STATE ? 99 : KVM_MP_STATE_RUNNABLE);
	snapw_blob(w, &ev, sizeof(ev));
	snapw_u32(w, 2400000);
	snapw_blob(w, cpuid, f == F_CPUID_PARTIAL ? sizeof(cpuid) - 1 : sizeof(cpuid));
	snapw_blob(w, msrs, (uint32_t)((f == F_MSRS_OVER ? SNAP_MAX_MSRS + 1 : 1) * sizeof(msrs[0])));
	snapw_section_end(w, m);
}

/* A whole state file: 2 vCPUs, one vsock device. Caller frees w. */
static void build(struct snap_buf *w, enum fault f)
{
	size_t m;

	snapw_init(w);
	snapw_begin_file(w);
	put_meta(w, f);
	if (f == F_TWO_META)
		put_meta(w, F_NONE);
	put_vm(w, f);
	put_vcpu(w, 0, f);
	put_vcpu(w, 1, f);
	if (f != F_NO_SERIAL) {
		m = snapw_section_begin(w, SNAP_SEC_SERIAL);
		snapw_u64(w, 0);
		snapw_section_end(w, m);
	}
	m = snapw_section_begin(w, SNAP_SEC_DEVICE);
	if (fault_disk(f)) {
		snapw_blob(w, "disk", 4);
		snapw_blob(w, fault_disk(f), (uint32_t)strlen(fault_disk(f)));
	} else if (f == F_NET) {
		snapw_blob(w, "net", 3);
		snapw_blob(w, "tap=kt0", 7);
	} else {
		snapw_blob(w, f == F_DEV_KIND ? "gpu" : "vsock", f == F_DEV_KIND ? 3 : 5);
		snapw_blob(w, "cid=3,uds=/tmp/v.sock", 21);
	}
	snapw_u64(w, 0xd0000000);
	snapw_u32(w, 5);
	snapw_u32(w, 0xdeadbeef);	/* the device's own bytes */
	snapw_section_end(w, m);
	ck_assert_int_eq(snapw_finish(w), 0);
}

static int parse(const struct snap_buf *w, char *err, size_t len)
{
	struct snap_state s;
	int r = snap_parse(w->p, w->len, &s, err, len);

	snap_state_free(&s);
	return r;
}

START_TEST(crc32c_known_value)
{
	/* The check value of CRC-32C (RFC 3720, and every CRC catalogue). */
	ck_assert_uint_eq(snap_crc32c(0, "123456789", 9), 0xe3069283u);
	ck_assert_uint_eq(snap_crc32c(0, "", 0), 0);
	/* Incremental equals one pass, across the 8-byte slicing boundary. */
	ck_assert_uint_eq(snap_crc32c(snap_crc32c(0, "12345", 5), "6789", 4), 0xe3069283u);
}
END_TEST

START_TEST(valid_file_parses)
{
	struct snap_buf w;
	struct snap_state s;
	char err[256] = "";

	build(&w, F_NONE);
	ck_assert_msg(snap_parse(w.p, w.len, &s, err, sizeof(err)) == 0, "%s", err);
	ck_assert_str_eq(s.meta.vendor, "AuthenticAMD");
	ck_assert_uint_eq(s.meta.mem_size, 256 * MIB);
	ck_assert_uint_eq(s.meta.vcpus, 2);
	ck_assert_uint_eq(s.meta.kernel_crc, 0x12345678);
	ck_assert_uint_eq(s.vcpu[1].regs.rip, 0x1000001);
	ck_assert_uint_eq(s.vcpu[0].ncpuid, 3);
	ck_assert_uint_eq(s.vcpu[0].cpuid[1].eax, 0x800f12);
	ck_assert_uint_eq(s.vcpu[0].nmsrs, 1);
	ck_assert_uint_eq(s.vcpu[0].msrs[0].data, 42);
	ck_assert_uint_eq(s.vcpu[0].xsave_len, 4096);
	ck_assert_uint_eq(s.vm.clock.clock, 123456789);
	ck_assert_str_eq(s.dev[0].kind, "vsock");
	ck_assert_str_eq(s.dev[0].spec, "cid=3,uds=/tmp/v.sock");
	ck_assert_uint_eq(s.dev[0].irq, 5);
	ck_assert_uint_eq(snapr_left(&s.dev[0].state), 4);
	ck_assert_uint_eq(snapr_u32(&s.dev[0].state, "x"), 0xdeadbeef);
	snap_state_free(&s);
	snapw_free(&w);
}
END_TEST

START_TEST(every_truncation_refused)
{
	struct snap_buf w;
	char err[256];
	size_t n;

	build(&w, F_NONE);
	for (n = 0; n < w.len; n++) {
		struct snap_state s;

		err[0] = '\0';
		ck_assert_int_eq(snap_parse(w.p, n, &s, err, sizeof(err)), -EINVAL);
		ck_assert_msg(err[0], "no message for a file cut at %zu", n);
		snap_state_free(&s);
	}
	snapw_free(&w);
}
END_TEST

START_TEST(every_bit_flip_refused)
{
	struct snap_buf w;
	char err[256];
	size_t n;

	build(&w, F_NONE);
	/* The CRC covers every byte: a flip anywhere is damage, named as such. */
	for (n = SNAP_MAGIC_LEN + 8; n < w.len; n += 7) {
		w.p[n] ^= 0x10;
		ck_assert_int_eq(parse(&w, err, sizeof(err)), -EINVAL);
		ck_assert_msg(strstr(err, "checksum") || strstr(err, "truncated") || strstr(err, "sections"),
			      "byte %zu: %s", n, err);
		w.p[n] ^= 0x10;
	}
	ck_assert_int_eq(parse(&w, err, sizeof(err)), 0);
	snapw_free(&w);
}
END_TEST

/* Rewrite the CRC after editing a built file, so the parser gets past it. */
static void reseal(struct snap_buf *w)
{
	uint32_t crc = snap_crc32c(0, w->p, w->len - 4);

	memcpy(w->p + w->len - 4, &crc, 4);
}

START_TEST(bad_magic_and_version)
{
	struct snap_buf w;
	char err[256];

	build(&w, F_NONE);
	w.p[0] = 'X';
	ck_assert_int_eq(parse(&w, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "not a kiln snapshot"));
	w.p[0] = 'K';
	w.p[8] = SNAP_VERSION + 1;
	reseal(&w);
	ck_assert_int_eq(parse(&w, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "version 3"));
	/* Version 1 had no snapshot id to bind its memory file: taken again, not read. */
	w.p[8] = 1;
	reseal(&w);
	ck_assert_int_eq(parse(&w, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "version 1, this kiln-vmm reads version 2 (take the snapshot again"));
	w.p[8] = SNAP_VERSION;
	w.p[12] = 200;	/* section count */
	reseal(&w);
	ck_assert_int_eq(parse(&w, err, sizeof(err)), -EINVAL);
	snapw_free(&w);
}
END_TEST

static const struct {
	enum fault f;
	const char *want;
} faults[] = {
	{ F_VCPUS_9, "9 vCPUs" },
	{ F_DEVICES_17, "17 devices" },
	{ F_MEM_ODD, "multiple of 2 MiB" },
	{ F_VCPU_ID, "is for vCPU 0" },
	{ F_CPUID_PARTIAL, "whole number of entries" },
	{ F_MSRS_OVER, "more than the limit" },
	{ F_REGS_SHORT, "vCPU registers" },
	{ F_MP_STATE, "MP state 99" },
	{ F_NO_SERIAL, "no serial section" },
	{ F_TWO_META, "two headers" },
	{ F_CHIP_ID, "chip id 7" },
	{ F_DEV_KIND, "unknown device kind" },
	{ F_META_TRAILING, "trailing" },
	{ F_XSAVE_HUGE, "XSAVE" },
	/* A crafted state must not hand the guest a host file as its disk. */
	{ F_DISK_ABS, "disk path \"/etc/passwd\" is not a file in the snapshot's directory" },
	{ F_DISK_DOTDOT, "disk path \"../x\" is not a file in the snapshot's directory" },
	{ F_DISK_SUBDIR, "is not a file in the snapshot's directory" },
	{ F_DISK_DOT, "is not a file in the snapshot's directory" },
};

START_TEST(inconsistent_content_refused)
{
	struct snap_buf w;
	char err[256] = "";

	build(&w, faults[_i].f);
	ck_assert_int_eq(parse(&w, err, sizeof(err)), -EINVAL);
	ck_assert_msg(strstr(err, faults[_i].want), "fault %d: got \"%s\", want \"%s\"",
		      faults[_i].f, err, faults[_i].want);
	snapw_free(&w);
}
END_TEST

START_TEST(section_past_end_refused)
{
	struct snap_buf w;
	char err[256];

	build(&w, F_NONE);
	/* The first section's length field (after the 24-byte header and its tag). */
	w.p[SNAP_HEADER_LEN + 4 + 5] = 0x7f;
	reseal(&w);
	ck_assert_int_eq(parse(&w, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "past the end"));
	snapw_free(&w);
}
END_TEST

START_TEST(reader_is_bounded)
{
	uint8_t b[6] = { 1, 2, 3, 4, 5, 6 };
	struct snap_rd r;
	char s[8];

	snapr_init(&r, b, sizeof(b));
	ck_assert_uint_eq(snapr_u32(&r, "a"), 0x04030201);
	ck_assert_uint_eq(snapr_u32(&r, "b"), 0);	/* only 2 left */
	ck_assert(!snapr_ok(&r));
	ck_assert_ptr_nonnull(strstr(r.err, "b: truncated"));
	/* The first error sticks. */
	snapr_u8(&r, "c");
	ck_assert_ptr_nonnull(strstr(r.err, "b: truncated"));

	/* A string blob longer than its buffer, and one with a NUL. */
	{
		uint8_t blob[4 + 9] = { 9, 0, 0, 0, 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i' };

		snapr_init(&r, blob, sizeof(blob));
		ck_assert_int_eq(snapr_str(&r, s, sizeof(s), "name"), -EINVAL);
		ck_assert_ptr_nonnull(strstr(r.err, "limit"));
		blob[0] = 3;
		blob[5] = 0;
		snapr_init(&r, blob, 7);
		ck_assert_int_eq(snapr_str(&r, s, sizeof(s), "name"), -EINVAL);
		ck_assert_ptr_nonnull(strstr(r.err, "NUL"));
	}
}
END_TEST

START_TEST(writer_limit_is_sticky)
{
	struct snap_buf w;

	snapw_init(&w);
	snapw_begin_file(&w);
	snapw_bytes(&w, NULL, SNAP_MAX_FILE);	/* refused before anything is copied */
	snapw_u32(&w, 1);
	ck_assert_int_eq(snapw_finish(&w), -ENOMEM);
	snapw_free(&w);
}
END_TEST

START_TEST(disk_spec_split)
{
	struct disk_spec ds;
	struct kiln_err err;
	char long_path[5000];

	ck_assert_int_eq(disk_spec_parse("/d/a.img", &ds, &err), 0);
	ck_assert_str_eq(ds.path, "/d/a.img");
	ck_assert_str_eq(ds.opts, "");
	ck_assert_str_eq(ds.id, "kiln");
	ck_assert_int_eq(ds.ro, 0);
	ck_assert_int_eq(disk_spec_parse("a.img,ro,id=x", &ds, &err), 0);
	ck_assert_str_eq(ds.path, "a.img");
	ck_assert_str_eq(ds.opts, ",ro,id=x");
	ck_assert_str_eq(ds.id, "x");
	ck_assert_int_eq(ds.ro, 1);
	ck_assert_int_eq(disk_spec_parse("a.img,id=ro", &ds, &err), 0);
	ck_assert_int_eq(ds.ro, 0);
	ck_assert_int_eq(disk_spec_parse("a,id=x,ro", &ds, &err), 0);
	ck_assert_int_eq(ds.ro, 1);
	/* A state file's spec is hostile: refused, never truncated. */
	ck_assert_int_eq(disk_spec_parse("a,rw", &ds, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "unknown option 'rw'"));
	ck_assert_int_eq(disk_spec_parse(",ro", &ds, &err), -EINVAL);
	ck_assert_int_eq(disk_spec_parse("a,id=123456789012345678901", &ds, &err), -EINVAL);
	memset(long_path, 'a', sizeof(long_path) - 1);
	long_path[sizeof(long_path) - 1] = '\0';
	ck_assert_int_eq(disk_spec_parse(long_path, &ds, &err), -ENAMETOOLONG);
	ck_assert_ptr_nonnull(strstr(err.msg, "at most 4095 bytes"));
}
END_TEST

START_TEST(copy_file_keeps_holes_and_data)
{
	char dir[] = "/tmp/kiln-snapcopy-XXXXXX", a[64], b[64], buf[8];
	struct kiln_err err;
	struct stat st;
	uint64_t copied = 0;
	int fd;

	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(a, sizeof(a), "%s/a", dir);
	snprintf(b, sizeof(b), "%s/b", dir);
	fd = open(a, O_WRONLY | O_CREAT, 0600);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, 64 << 20), 0);
	ck_assert_int_eq(pwrite(fd, "start", 5, 0), 5);
	ck_assert_int_eq(pwrite(fd, "end!!", 5, (64 << 20) - 5), 5);
	close(fd);
	ck_assert_msg(snap_copy_file(a, b, &copied, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(stat(b, &st), 0);
	ck_assert_int_eq(st.st_size, 64 << 20);
	/* Sparse: far fewer blocks than 64 MiB (a reflink shares them, a copy skips holes). */
	ck_assert_int_lt(st.st_blocks * 512, 8 << 20);
	fd = open(b, O_RDONLY);
	ck_assert_int_eq(pread(fd, buf, 5, 0), 5);
	ck_assert_int_eq(memcmp(buf, "start", 5), 0);
	ck_assert_int_eq(pread(fd, buf, 5, (64 << 20) - 5), 5);
	ck_assert_int_eq(memcmp(buf, "end!!", 5), 0);
	close(fd);
	/* A missing source is an error naming it. */
	ck_assert_int_lt(snap_copy_file("/nonexistent/x", b, NULL, &err), 0);
	ck_assert_ptr_nonnull(strstr(err.msg, "/nonexistent/x"));
	unlink(a);
	unlink(b);
	rmdir(dir);
}
END_TEST

START_TEST(cpuid_check_names_the_leaf)
{
	struct kvm_cpuid2 *host = calloc(1, sizeof(*host) + 2 * sizeof(host->entries[0]));
	static struct snap_vcpu s;
	struct kiln_err err;

	host->nent = 2;
	host->entries[0].function = 0;
	host->entries[0].ebx = 0x68747541;	/* "Auth" */
	host->entries[1].function = 7;
	host->entries[1].ebx = 0x209c01a9;
	memset(&s, 0, sizeof(s));
	s.id = 0;
	s.ncpuid = 2;
	memcpy(s.cpuid, host->entries, 2 * sizeof(s.cpuid[0]));
	ck_assert_msg(snap_check_cpuid(host, &s, 1, &err) == 0, "%s", err.msg);
	s.cpuid[1].ebx ^= 1u << 5;	/* one feature bit */
	ck_assert_int_eq(snap_check_cpuid(host, &s, 1, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "leaf 0x7.0 differs"));
	s.ncpuid = 1;
	ck_assert_int_eq(snap_check_cpuid(host, &s, 1, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "CPUID leaves"));
	free(host);
}
END_TEST

/* Parse a built state with one device of fault f's kind, and plan it against options. */
static int plan(enum fault f, int nopts, const char *const *kinds, const char *const *specs, int *opt,
		struct kiln_err *err)
{
	struct snap_buf w;
	struct snap_state s;
	char msg[256] = "";
	int r;

	build(&w, f);
	ck_assert_msg(snap_parse(w.p, w.len, &s, msg, sizeof(msg)) == 0, "%s", msg);
	r = snap_plan_devices(&s, kinds, specs, nopts, opt, err);
	snap_state_free(&s);
	snapw_free(&w);
	return r;
}

START_TEST(restore_takes_host_resources_from_options)
{
	const char *vk[] = { "vsock" }, *vs[] = { "cid=3,uds=/run/mine.sock" };
	const char *nk[] = { "net" }, *ns[] = { "tap=mine0" };
	const char *dk[] = { "disk" }, *ds[] = { "/srv/rootfs.img,ro" };
	struct kiln_err err;
	int opt[SNAP_MAX_DEVICES];

	/* The state's uds=/tmp/v.sock is never used: the restorer names a socket or is refused. */
	err.msg[0] = '\0';
	ck_assert_int_eq(plan(F_NONE, 0, NULL, NULL, opt, &err), -EINVAL);
	ck_assert_msg(strstr(err.msg, "device 0 is a vsock device: pass --vsock cid=3,uds=PATH"), "%s", err.msg);
	ck_assert_msg(plan(F_NONE, 1, vk, vs, opt, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(opt[0], 0);
	/* A tap, likewise. */
	ck_assert_int_eq(plan(F_NET, 0, NULL, NULL, opt, &err), -EINVAL);
	ck_assert_msg(strstr(err.msg, "net device: pass --net tap=NAME"), "%s", err.msg);
	ck_assert_msg(plan(F_NET, 1, nk, ns, opt, &err) == 0, "%s", err.msg);
	/* A read-only disk is a host file: the restorer names it. */
	ck_assert_int_eq(plan(F_DISK_RO, 0, NULL, NULL, opt, &err), -EINVAL);
	ck_assert_msg(strstr(err.msg, "pass --disk PATH,ro"), "%s", err.msg);
	ck_assert_msg(plan(F_DISK_RO, 1, dk, ds, opt, &err) == 0, "%s", err.msg);
	/* The snapshot's own disk copy needs no option. */
	ck_assert_msg(plan(F_DISK_COPY, 0, NULL, NULL, opt, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(opt[0], -1);
	/* An option with nothing to replace is refused, before anything is missing. */
	ck_assert_int_eq(plan(F_NONE, 1, nk, ns, opt, &err), -EINVAL);
	ck_assert_msg(strstr(err.msg, "--net tap=mine0: the snapshot has no further net device"), "%s", err.msg);
}
END_TEST

/* A scratch directory for the file tests; path must hold 64 bytes. */
static void scratch(char *path)
{
	strcpy(path, "/tmp/kiln-snapdir-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(path));
}

static void put_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
}

static void get_file(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY);
	ssize_t n;

	buf[0] = '\0';
	if (fd < 0)
		return;
	n = read(fd, buf, len - 1);
	buf[n > 0 ? n : 0] = '\0';
	close(fd);
}

START_TEST(memory_trailer_binds_memory_to_state)
{
	const uint8_t id[SNAP_ID_LEN] = "0123456789abcdef", other[SNAP_ID_LEN] = "fedcba9876543210";
	static uint8_t trailer[SNAP_MEM_TRAILER];
	const uint64_t size = 2 * MIB;
	char dir[64], path[128];
	struct kiln_err err;
	int fd;

	scratch(dir);
	snprintf(path, sizeof(path), "%s/memory", dir);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, (off_t)size), 0);
	/* RAM without a trailer: a memory file cut short (or from kiln before version 2). */
	ck_assert_int_eq(snap_mem_check(fd, path, size, id, &err), -EINVAL);
	ck_assert_msg(strstr(err.msg, "but the snapshot's guest has 2 MiB"), "%s", err.msg);
	ck_assert_int_eq(ftruncate(fd, (off_t)(size + SNAP_MEM_TRAILER)), 0);
	ck_assert_int_eq(snap_mem_check(fd, path, size, id, &err), -EINVAL);
	ck_assert_msg(strstr(err.msg, "no snapshot trailer"), "%s", err.msg);
	snap_mem_trailer(trailer, id, size);
	ck_assert_int_eq(pwrite(fd, trailer, sizeof(trailer), (off_t)size), (ssize_t)sizeof(trailer));
	ck_assert_msg(snap_mem_check(fd, path, size, id, &err) == 0, "%s", err.msg);
	/* The state of another snapshot beside this memory file. */
	ck_assert_int_eq(snap_mem_check(fd, path, size, other, &err), -EINVAL);
	ck_assert_msg(strstr(err.msg, "the memory file of another snapshot"), "%s", err.msg);
	close(fd);
	unlink(path);
	rmdir(dir);
}
END_TEST

/* Write a one-file snapshot "snap" into parent through snap_dir; 0 or -errno. */
static int dir_write(const char *parent, const char *text, struct kiln_err *err)
{
	char dir[128];
	struct snap_dir d;
	int fd, r;

	snprintf(dir, sizeof(dir), "%s/snap", parent);
	if ((r = snap_dir_begin(&d, dir, err)) < 0)
		return r;
	fd = snap_dir_create(&d, SNAP_MEMORY_FILE, err);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	/* Never over a file already there, even in the fresh directory. */
	ck_assert_int_eq(snap_dir_create(&d, SNAP_MEMORY_FILE, err), -EEXIST);
	fd = snap_dir_create(&d, SNAP_STATE_FILE, err);
	ck_assert_int_ge(fd, 0);
	close(fd);
	return snap_dir_commit(&d, err);
}

/* Entries in dir other than . and .., space-separated and sorted, into out. */
static void list_dir(const char *dir, char *out, size_t len)
{
	char cmd[200];
	FILE *f;
	size_t n;

	snprintf(cmd, sizeof(cmd), "ls -A %s | tr '\\n' ' '", dir);
	f = popen(cmd, "r");
	ck_assert_ptr_nonnull(f);
	n = fread(out, 1, len - 1, f);
	out[n] = '\0';
	pclose(f);
}

START_TEST(snapshot_dir_never_writes_through_links)
{
	char dir[64], path[128], victim[128], buf[64];
	struct kiln_err err;

	scratch(dir);
	snprintf(victim, sizeof(victim), "%s/victim", dir);
	put_file(victim, "precious");
	snprintf(path, sizeof(path), "%s/snap", dir);
	ck_assert_int_eq(mkdir(path, 0700), 0);
	snprintf(path, sizeof(path), "%s/snap/memory", dir);
	ck_assert_int_eq(symlink(victim, path), 0);
	/* A planted link is refused, and the file it points to is untouched. */
	ck_assert_int_lt(dir_write(dir, "guest bytes", &err), 0);
	ck_assert_msg(strstr(err.msg, "snap/memory is not a regular file"), "%s", err.msg);
	get_file(victim, buf, sizeof(buf));
	ck_assert_str_eq(buf, "precious");
	list_dir(dir, buf, sizeof(buf));
	ck_assert_str_eq(buf, "snap victim ");
	unlink(path);
	/* The target itself a link: refused. */
	snprintf(path, sizeof(path), "%s/snap", dir);
	ck_assert_int_eq(rmdir(path), 0);
	ck_assert_int_eq(symlink(dir, path), 0);
	ck_assert_int_lt(dir_write(dir, "guest bytes", &err), 0);
	ck_assert_msg(strstr(err.msg, "is a symbolic link"), "%s", err.msg);
	unlink(path);
	unlink(victim);
	rmdir(dir);
}
END_TEST

START_TEST(snapshot_dir_is_replaced_whole)
{
	char dir[64], path[128], buf[128];
	struct kiln_err err;
	struct snap_dir d;

	scratch(dir);
	/* New, then an older snapshot replaced: no partial directory left beside it. */
	ck_assert_msg(dir_write(dir, "first", &err) == 0, "%s", err.msg);
	ck_assert_msg(dir_write(dir, "second", &err) == 0, "%s", err.msg);
	snprintf(path, sizeof(path), "%s/snap/memory", dir);
	get_file(path, buf, sizeof(buf));
	ck_assert_str_eq(buf, "second");
	list_dir(dir, buf, sizeof(buf));
	ck_assert_str_eq(buf, "snap ");
	snprintf(path, sizeof(path), "%s/snap", dir);
	list_dir(path, buf, sizeof(buf));
	ck_assert_str_eq(buf, "memory state ");
	/* Given up half way (a failed or killed snapshot): the old one stays whole. */
	ck_assert_int_eq(snap_dir_begin(&d, path, &err), 0);
	close(snap_dir_create(&d, SNAP_MEMORY_FILE, &err));
	snap_dir_abort(&d);
	list_dir(dir, buf, sizeof(buf));
	ck_assert_str_eq(buf, "snap ");
	snprintf(path, sizeof(path), "%s/snap/memory", dir);
	get_file(path, buf, sizeof(buf));
	ck_assert_str_eq(buf, "second");
	/* A directory that holds other files is not a snapshot to replace. */
	snprintf(path, sizeof(path), "%s/snap/notes.txt", dir);
	put_file(path, "mine");
	ck_assert_int_lt(dir_write(dir, "third", &err), 0);
	ck_assert_msg(strstr(err.msg, "holds notes.txt, which is not part of a snapshot"), "%s", err.msg);
	unlink(path);
	snprintf(buf, sizeof(buf), "rm -rf %s", dir);
	ck_assert_int_eq(system(buf), 0);
}
END_TEST

START_TEST(own_file_names)
{
	ck_assert(snap_is_own_file("state"));
	ck_assert(snap_is_own_file("memory"));
	ck_assert(snap_is_own_file("disk0.img"));
	ck_assert(snap_is_own_file("disk15.img"));
	ck_assert(!snap_is_own_file("disk.img"));
	ck_assert(!snap_is_own_file("disk0.img.bak"));
	ck_assert(!snap_is_own_file("disk-1.img"));
	ck_assert(!snap_is_own_file("notes"));
}
END_TEST

START_TEST(copy_file_never_writes_through_a_link)
{
	char dir[64], a[128], b[128], victim[128], buf[64];
	struct kiln_err err;

	scratch(dir);
	snprintf(a, sizeof(a), "%s/a", dir);
	snprintf(b, sizeof(b), "%s/b", dir);
	snprintf(victim, sizeof(victim), "%s/victim", dir);
	put_file(a, "disk bytes");
	put_file(victim, "precious");
	ck_assert_int_eq(symlink(victim, b), 0);
	ck_assert_int_lt(snap_copy_file(a, b, NULL, &err), 0);
	ck_assert_msg(strstr(err.msg, "symbolic link"), "%s", err.msg);
	get_file(victim, buf, sizeof(buf));
	ck_assert_str_eq(buf, "precious");
	unlink(a);
	unlink(b);
	unlink(victim);
	rmdir(dir);
}
END_TEST

Suite *suite_snapshot(void)
{
	Suite *s = suite_create("snapshot");
	TCase *tc = tcase_create("state file");

	tcase_add_test(tc, crc32c_known_value);
	tcase_add_test(tc, valid_file_parses);
	tcase_add_test(tc, every_truncation_refused);
	tcase_add_test(tc, every_bit_flip_refused);
	tcase_add_test(tc, bad_magic_and_version);
	tcase_add_loop_test(tc, inconsistent_content_refused, 0, sizeof(faults) / sizeof(faults[0]));
	tcase_add_test(tc, section_past_end_refused);
	tcase_add_test(tc, reader_is_bounded);
	tcase_add_test(tc, writer_limit_is_sticky);
	tcase_add_test(tc, disk_spec_split);
	tcase_add_test(tc, copy_file_keeps_holes_and_data);
	tcase_add_test(tc, cpuid_check_names_the_leaf);
	tcase_add_test(tc, restore_takes_host_resources_from_options);
	tcase_add_test(tc, memory_trailer_binds_memory_to_state);
	tcase_add_test(tc, snapshot_dir_never_writes_through_links);
	tcase_add_test(tc, snapshot_dir_is_replaced_whole);
	tcase_add_test(tc, own_file_names);
	tcase_add_test(tc, copy_file_never_writes_through_a_link);
	suite_add_tcase(s, tc);
	return s;
}
