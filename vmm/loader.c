/*
 * Kernel loaders: an uncompressed vmlinux through its PVH entry
 * (XEN_ELFNOTE_PHYS32_ENTRY, Xen's hvm_start_info ABI) and a bzImage through
 * the 64-bit Linux boot protocol (Documentation/x86/boot.rst). The image is
 * hostile input: every offset and size is checked against the file and every
 * destination against guest RAM before anything is copied.
 */
#include <elf.h>
#include <errno.h>
#include <string.h>

#include "vmm.h"

#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define MAX_NOTES 256

/* bzImage setup header offsets (boot.rst, "The real-mode kernel header"). */
#define HDR_SETUP_SECTS		0x1f1
#define HDR_START		0x1f1
#define HDR_JUMP		0x200
#define HDR_MAGIC		0x202
#define HDR_VERSION		0x206
#define HDR_INITRD_ADDR_MAX	0x22c
#define HDR_XLOADFLAGS		0x236
#define HDR_CMDLINE_SIZE	0x238
#define HDR_PREF_ADDRESS	0x258
#define HDR_INIT_SIZE		0x260
#define HDR_END_MIN		0x268
#define XLF_KERNEL_64		(1 << 0)
#define BOOT_PROTO_MIN		0x020c	/* 2.12: xloadflags, 64-bit entry */

static uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* Is [off, off+len) inside a file of size bytes? */
static int in_file(uint64_t off, uint64_t len, size_t size)
{
	return off <= size && len <= size - off;
}

/* Is [gpa, gpa+len) RAM at or above GUEST_HIGH_START (clear of boot data)? */
static int load_range_ok(const struct guest_mem *m, uint64_t gpa, uint64_t len)
{
	return gpa >= GUEST_HIGH_START && guest_range_valid(m, gpa, len ? len : 1);
}

/* Find the PVH entry in the PT_NOTE segments; 0 if there is none. */
static int elf_pvh_entry(const uint8_t *img, size_t len, const Elf64_Phdr *ph,
			 unsigned phnum, uint64_t *entry, struct kiln_err *err)
{
	unsigned i, seen = 0;

	for (i = 0; i < phnum; i++) {
		uint64_t off, end;

		if (ph[i].p_type != PT_NOTE)
			continue;
		if (!in_file(ph[i].p_offset, ph[i].p_filesz, len))
			return kiln_fail(err, ENOEXEC, "PT_NOTE segment %u lies outside the file (truncated vmlinux?)", i);
		off = ph[i].p_offset;
		end = off + ph[i].p_filesz;
		while (end - off >= sizeof(Elf64_Nhdr)) {
			Elf64_Nhdr nh;
			uint64_t name_len, desc_len;

			if (++seen > MAX_NOTES)
				return kiln_fail(err, ENOEXEC, "more than %d ELF notes", MAX_NOTES);
			memcpy(&nh, img + off, sizeof(nh));
			name_len = ((uint64_t)nh.n_namesz + 3) & ~3ULL;
			desc_len = ((uint64_t)nh.n_descsz + 3) & ~3ULL;
			off += sizeof(nh);
			if (name_len > end - off || desc_len > end - off - name_len)
				return kiln_fail(err, ENOEXEC, "ELF note at offset %#llx runs past its segment",
						 (unsigned long long)off);
			if (nh.n_type == XEN_ELFNOTE_PHYS32_ENTRY && nh.n_namesz == 4 &&
			    memcmp(img + off, "Xen", 4) == 0 && nh.n_descsz >= 4) {
				*entry = rd32(img + off + name_len);
				return 1;
			}
			off += name_len + desc_len;
		}
	}
	return 0;
}

static int load_elf(struct guest_mem *m, const uint8_t *img, size_t len,
		    struct kernel_info *ki, struct kiln_err *err)
{
	const Elf64_Ehdr *eh = (const Elf64_Ehdr *)img;
	Elf64_Phdr ph[64];
	uint64_t lo = UINT64_MAX, hi = 0, entry = 0;
	unsigned i, nload = 0;
	int r;

	if (len < sizeof(*eh))
		return kiln_fail(err, ENOEXEC, "ELF header truncated (%zu bytes)", len);
	if (eh->e_ident[EI_CLASS] != ELFCLASS64 || eh->e_ident[EI_DATA] != ELFDATA2LSB)
		return kiln_fail(err, ENOEXEC, "not a 64-bit little-endian ELF (an x86-64 vmlinux is needed)");
	if (eh->e_machine != EM_X86_64 || eh->e_type != ET_EXEC)
		return kiln_fail(err, ENOEXEC, "ELF is not an x86-64 executable (machine %u, type %u)",
				 eh->e_machine, eh->e_type);
	if (eh->e_phentsize != sizeof(Elf64_Phdr) || eh->e_phnum == 0 || eh->e_phnum > 64)
		return kiln_fail(err, ENOEXEC, "ELF program header table is malformed (%u entries of %u bytes)",
				 eh->e_phnum, eh->e_phentsize);
	if (!in_file(eh->e_phoff, (uint64_t)eh->e_phnum * sizeof(Elf64_Phdr), len))
		return kiln_fail(err, ENOEXEC, "ELF program headers lie outside the file (truncated vmlinux?)");
	memcpy(ph, img + eh->e_phoff, eh->e_phnum * sizeof(Elf64_Phdr));

	r = elf_pvh_entry(img, len, ph, eh->e_phnum, &entry, err);
	if (r < 0)
		return r;
	if (r == 0)
		return kiln_fail(err, ENOEXEC, "vmlinux has no PVH entry note (build the kernel with CONFIG_PVH=y, or use its bzImage)");

	/* Check every segment before copying any. */
	for (i = 0; i < eh->e_phnum; i++) {
		if (ph[i].p_type != PT_LOAD)
			continue;
		if (!in_file(ph[i].p_offset, ph[i].p_filesz, len))
			return kiln_fail(err, ENOEXEC, "segment %u lies outside the file (truncated vmlinux?)", i);
		if (ph[i].p_filesz > ph[i].p_memsz)
			return kiln_fail(err, ENOEXEC, "segment %u has more file bytes than memory bytes", i);
		if (ph[i].p_paddr > UINT64_MAX - ph[i].p_memsz || !load_range_ok(m, ph[i].p_paddr, ph[i].p_memsz))
			return kiln_fail(err, ERANGE, "segment %u at [%#llx, +%#llx) is outside guest RAM above 1 MiB (more --mem, or a kernel linked elsewhere)",
					 i, (unsigned long long)ph[i].p_paddr, (unsigned long long)ph[i].p_memsz);
		if (ph[i].p_paddr < lo)
			lo = ph[i].p_paddr;
		if (ph[i].p_paddr + ph[i].p_memsz > hi)
			hi = ph[i].p_paddr + ph[i].p_memsz;
		nload++;
	}
	if (nload == 0)
		return kiln_fail(err, ENOEXEC, "ELF has no loadable segments");
	if (entry < lo || entry >= hi)
		return kiln_fail(err, ENOEXEC, "PVH entry %#llx is outside the loaded kernel", (unsigned long long)entry);

	for (i = 0; i < eh->e_phnum; i++) {
		uint8_t *dst;

		if (ph[i].p_type != PT_LOAD)
			continue;
		dst = GUEST_PTR(m, ph[i].p_paddr, ph[i].p_memsz ? ph[i].p_memsz : 1);
		if (!dst)
			return kiln_fail(err, EFAULT, "segment %u: guest range check failed", i);
		memcpy(dst, img + ph[i].p_offset, ph[i].p_filesz);
		memset(dst + ph[i].p_filesz, 0, ph[i].p_memsz - ph[i].p_filesz);
	}
	ki->mode = BOOT_PVH;
	ki->entry = entry;
	ki->load_start = lo;
	ki->load_end = hi;
	ki->initrd_addr_max = GUEST_MMIO_GAP_START - 1;
	ki->cmdline_size = KILN_CMDLINE_MAX - 1;
	return 0;
}

static int load_bzimage(struct guest_mem *m, const uint8_t *img, size_t len,
			struct kernel_info *ki, struct kiln_err *err)
{
	uint16_t version = rd16(img + HDR_VERSION);
	uint64_t setup_sects, koff, ksize, load, init_size, span;
	size_t hdr_end;
	uint8_t *dst;

	if (version < BOOT_PROTO_MIN)
		return kiln_fail(err, ENOEXEC, "bzImage uses boot protocol %u.%02u; kiln needs %u.%02u or later (a kernel from Linux 3.8 on)",
				 version >> 8, version & 0xff, BOOT_PROTO_MIN >> 8, BOOT_PROTO_MIN & 0xff);
	if (!(rd16(img + HDR_XLOADFLAGS) & XLF_KERNEL_64))
		return kiln_fail(err, ENOEXEC, "bzImage has no 64-bit entry point (XLF_KERNEL_64 is clear: a 32-bit kernel?)");
	setup_sects = img[HDR_SETUP_SECTS] ? img[HDR_SETUP_SECTS] : 4;
	koff = (setup_sects + 1) * 512;
	if (koff >= len)
		return kiln_fail(err, ENOEXEC, "bzImage is truncated: its setup (%llu bytes) fills the whole file",
				 (unsigned long long)koff);
	ksize = len - koff;
	load = rd64(img + HDR_PREF_ADDRESS);
	init_size = rd32(img + HDR_INIT_SIZE);
	span = init_size > ksize ? init_size : ksize;
	if (load > UINT64_MAX - span || !load_range_ok(m, load, span))
		return kiln_fail(err, ERANGE, "bzImage wants [%#llx, +%#llx), outside guest RAM above 1 MiB (more --mem?)",
				 (unsigned long long)load, (unsigned long long)span);

	hdr_end = HDR_JUMP + 2 + img[HDR_JUMP + 1];
	if (hdr_end < HDR_END_MIN || hdr_end > HDR_START + sizeof(ki->setup_hdr) || hdr_end > len)
		return kiln_fail(err, ENOEXEC, "bzImage setup header has a bad length (%zu)", hdr_end);

	dst = GUEST_PTR(m, load, span);
	if (!dst)
		return kiln_fail(err, EFAULT, "bzImage: guest range check failed");
	memcpy(dst, img + koff, ksize);
	memset(dst + ksize, 0, span - ksize);

	memset(ki->setup_hdr, 0, sizeof(ki->setup_hdr));
	memcpy(ki->setup_hdr, img + HDR_START, hdr_end - HDR_START);
	ki->setup_hdr_len = hdr_end - HDR_START;
	ki->mode = BOOT_LINUX64;
	ki->entry = load + 0x200;	/* startup_64 */
	ki->load_start = load;
	ki->load_end = load + span;
	ki->initrd_addr_max = rd32(img + HDR_INITRD_ADDR_MAX);
	ki->cmdline_size = rd32(img + HDR_CMDLINE_SIZE);
	if (ki->cmdline_size == 0 || ki->cmdline_size > KILN_CMDLINE_MAX - 1)
		ki->cmdline_size = KILN_CMDLINE_MAX - 1;
	return 0;
}

int kernel_load(struct guest_mem *m, const uint8_t *img, size_t len,
		struct kernel_info *ki, struct kiln_err *err)
{
	memset(ki, 0, sizeof(*ki));
	if (len >= SELFMAG && memcmp(img, ELFMAG, SELFMAG) == 0)
		return load_elf(m, img, len, ki, err);
	if (len >= HDR_END_MIN && memcmp(img + HDR_MAGIC, "HdrS", 4) == 0)
		return load_bzimage(m, img, len, ki, err);
	return kiln_fail(err, ENOEXEC, "neither an ELF vmlinux nor a bzImage (no ELF magic, no \"HdrS\" setup header)");
}
