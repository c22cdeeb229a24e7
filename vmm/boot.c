/*
 * Boot structures in low guest memory: command line, e820 map, Intel MP table
 * (how a guest without ACPI finds its CPUs and IOAPIC), GDT, identity page
 * tables, and the PVH start info or the Linux zero page.
 */
#include <errno.h>
#include <string.h>

#include "vmm.h"

/* Xen's hvm_start_info ABI (xen/include/public/arch-x86/hvm/start_info.h). */
#define HVM_START_MAGIC 0x336ec578
struct hvm_start_info {
	uint32_t magic;
	uint32_t version;
	uint32_t flags;
	uint32_t nr_modules;
	uint64_t modlist_paddr;
	uint64_t cmdline_paddr;
	uint64_t rsdp_paddr;
	uint64_t memmap_paddr;
	uint32_t memmap_entries;
	uint32_t reserved;
};
struct hvm_modlist_entry {
	uint64_t paddr;
	uint64_t size;
	uint64_t cmdline_paddr;
	uint64_t reserved;
};
struct hvm_memmap_entry {
	uint64_t addr;
	uint64_t size;
	uint32_t type;
	uint32_t reserved;
};
_Static_assert(sizeof(struct hvm_start_info) == 56, "hvm_start_info layout");
_Static_assert(sizeof(struct hvm_memmap_entry) == 24, "hvm_memmap_entry layout");
_Static_assert(sizeof(struct e820_entry) == 20, "e820 entry layout");

/* Linux boot_params (the zero page) offsets, Documentation/x86/zero-page.rst. */
#define ZP_EXT_RAMDISK_IMAGE	0x0c0
#define ZP_EXT_RAMDISK_SIZE	0x0c4
#define ZP_EXT_CMD_LINE_PTR	0x0c8
#define ZP_E820_ENTRIES		0x1e8
#define ZP_HDR			0x1f1
#define ZP_TYPE_OF_LOADER	0x210
#define ZP_RAMDISK_IMAGE	0x218
#define ZP_RAMDISK_SIZE		0x21c
#define ZP_CMD_LINE_PTR		0x228
#define ZP_E820_TABLE		0x2d0
#define ZP_SIZE			0x1000

/* Intel MultiProcessor Specification 1.4, chapter 4. */
struct mpf_intel {
	char signature[4];
	uint32_t physptr;
	uint8_t length;
	uint8_t specification;
	uint8_t checksum;
	uint8_t feature[5];
} __attribute__((packed));
struct mpc_table {
	char signature[4];
	uint16_t length;
	uint8_t spec;
	uint8_t checksum;
	char oem[8];
	char productid[12];
	uint32_t oemptr;
	uint16_t oemsize;
	uint16_t oemcount;
	uint32_t lapic;
	uint32_t reserved;
} __attribute__((packed));
struct mpc_cpu {
	uint8_t type;
	uint8_t apicid;
	uint8_t apicver;
	uint8_t cpuflag;
	uint32_t cpufeature;
	uint32_t featureflag;
	uint32_t reserved[2];
} __attribute__((packed));
struct mpc_bus {
	uint8_t type;
	uint8_t busid;
	char bustype[6];
} __attribute__((packed));
struct mpc_ioapic {
	uint8_t type;
	uint8_t apicid;
	uint8_t apicver;
	uint8_t flags;
	uint32_t apicaddr;
} __attribute__((packed));
struct mpc_intsrc {
	uint8_t type;
	uint8_t irqtype;
	uint16_t irqflag;
	uint8_t srcbus;
	uint8_t srcbusirq;
	uint8_t dstapic;
	uint8_t dstirq;
} __attribute__((packed));
_Static_assert(sizeof(struct mpf_intel) == 16 && sizeof(struct mpc_table) == 44 &&
	       sizeof(struct mpc_cpu) == 20 && sizeof(struct mpc_bus) == 8 &&
	       sizeof(struct mpc_ioapic) == 8 && sizeof(struct mpc_intsrc) == 8,
	       "MP table layout");

#define MP_PROCESSOR	0
#define MP_BUS		1
#define MP_IOAPIC	2
#define MP_INTSRC	3
#define MP_LINTSRC	4
#define MP_IRQ_INT	0
#define MP_IRQ_NMI	1
#define MP_IRQ_EXTINT	3
#define CPU_ENABLED	1
#define CPU_BSP		2
#define IOAPIC_PINS	24

static uint8_t mp_checksum(const void *p, size_t len)
{
	const uint8_t *b = p;
	uint8_t sum = 0;

	while (len--)
		sum += *b++;
	return (uint8_t)-sum;
}

int boot_write_mptable(struct guest_mem *m, int vcpus)
{
	size_t len = sizeof(struct mpc_table) + vcpus * sizeof(struct mpc_cpu) +
		     sizeof(struct mpc_bus) + sizeof(struct mpc_ioapic) +
		     (IOAPIC_PINS + 2) * sizeof(struct mpc_intsrc);
	uint64_t table_gpa = GUEST_MPTABLE + sizeof(struct mpf_intel);
	struct mpf_intel *mpf;
	struct mpc_table *mpc;
	uint8_t *p;
	int i;

	if (vcpus < 1 || vcpus > KILN_MAX_VCPUS || sizeof(*mpf) + len > GUEST_EBDA_END - GUEST_MPTABLE)
		return -EINVAL;
	mpf = GUEST_PTR(m, GUEST_MPTABLE, sizeof(*mpf) + len);
	if (!mpf)
		return -EFAULT;
	memset(mpf, 0, sizeof(*mpf) + len);
	memcpy(mpf->signature, "_MP_", 4);
	mpf->physptr = (uint32_t)table_gpa;
	mpf->length = 1;		/* in 16-byte units */
	mpf->specification = 4;

	mpc = (struct mpc_table *)(mpf + 1);
	memcpy(mpc->signature, "PCMP", 4);
	mpc->length = (uint16_t)len;
	mpc->spec = 4;
	memcpy(mpc->oem, "KILN    ", 8);
	memcpy(mpc->productid, "KILN-VMM    ", 12);
	mpc->lapic = (uint32_t)GUEST_LAPIC;
	p = (uint8_t *)(mpc + 1);

	for (i = 0; i < vcpus; i++) {
		struct mpc_cpu *c = (struct mpc_cpu *)p;

		c->type = MP_PROCESSOR;
		c->apicid = (uint8_t)i;
		c->apicver = 0x14;
		c->cpuflag = CPU_ENABLED | (i == 0 ? CPU_BSP : 0);
		c->cpufeature = 0x600;		/* family 6 */
		c->featureflag = 0x201;		/* FPU, APIC */
		p += sizeof(*c);
	}
	{
		struct mpc_bus *b = (struct mpc_bus *)p;

		b->type = MP_BUS;
		b->busid = 0;
		memcpy(b->bustype, "ISA   ", 6);
		p += sizeof(*b);
	}
	{
		struct mpc_ioapic *io = (struct mpc_ioapic *)p;

		io->type = MP_IOAPIC;
		io->apicid = (uint8_t)vcpus;
		io->apicver = 0x11;
		io->flags = 1;
		io->apicaddr = (uint32_t)GUEST_IOAPIC;
		p += sizeof(*io);
	}
	for (i = 0; i < IOAPIC_PINS; i++) {
		struct mpc_intsrc *s = (struct mpc_intsrc *)p;

		s->type = MP_INTSRC;
		s->irqtype = MP_IRQ_INT;
		s->srcbusirq = (uint8_t)i;
		s->dstapic = (uint8_t)vcpus;
		s->dstirq = (uint8_t)i;
		p += sizeof(*s);
	}
	{
		struct mpc_intsrc *s = (struct mpc_intsrc *)p;

		/* LINT0 takes the 8259's ExtINT, LINT1 NMI (MP spec 5.1). */
		s->type = MP_LINTSRC;
		s->irqtype = MP_IRQ_EXTINT;
		s->dstapic = 0;
		s->dstirq = 0;
		s[1].type = MP_LINTSRC;
		s[1].irqtype = MP_IRQ_NMI;
		s[1].dstapic = 0xff;
		s[1].dstirq = 1;
	}
	mpc->checksum = mp_checksum(mpc, len);
	mpf->checksum = mp_checksum(mpf, sizeof(*mpf));
	return 0;
}

int boot_e820(const struct guest_mem *m, struct e820_entry *map)
{
	int n = 0;

	map[n++] = (struct e820_entry){ 0, GUEST_MPTABLE, E820_RAM };
	map[n++] = (struct e820_entry){ GUEST_MPTABLE, GUEST_EBDA_END - GUEST_MPTABLE, E820_RESERVED };
	map[n++] = (struct e820_entry){ GUEST_HIGH_START, m->low_size - GUEST_HIGH_START, E820_RAM };
	if (m->size > m->low_size)
		map[n++] = (struct e820_entry){ GUEST_MMIO_GAP_END, m->size - m->low_size, E820_RAM };
	return n;
}

int boot_place_initrd(const struct guest_mem *m, const struct kernel_info *ki,
		      uint64_t size, uint64_t *gpa, struct kiln_err *err)
{
	uint64_t top = m->low_size;
	uint64_t floor = (ki->load_end + 0xfff) & ~0xfffULL;

	if (ki->initrd_addr_max && ki->initrd_addr_max + 1 < top)
		top = ki->initrd_addr_max + 1;
	if (size > top || ((top - size) & ~0xfffULL) < floor)
		return kiln_fail(err, ENOSPC, "the initrd (%llu KiB) does not fit in guest memory above the kernel (give the guest more --mem)",
				 (unsigned long long)(size / KIB));
	*gpa = (top - size) & ~0xfffULL;
	return 0;
}

static void write_gdt(struct guest_mem *m, enum boot_mode mode)
{
	uint64_t *gdt = GUEST_PTR(m, GUEST_GDT, 5 * sizeof(uint64_t));

	/* __BOOT_CS = 0x10, __BOOT_DS = 0x18 (boot.rst), TSS at 0x20. */
	gdt[0] = 0;
	gdt[1] = 0;
	gdt[2] = mode == BOOT_PVH ? 0x00cf9b000000ffffULL : 0x00af9b000000ffffULL;
	gdt[3] = 0x00cf93000000ffffULL;
	gdt[4] = 0x00008b0000000067ULL;
}

/* Identity-map the first 4 GiB with 2 MiB pages for the 64-bit entry. */
static void write_page_tables(struct guest_mem *m)
{
	uint64_t *pml4 = GUEST_PTR(m, GUEST_PML4, 0x1000);
	uint64_t *pdpt = GUEST_PTR(m, GUEST_PDPT, 0x1000);
	uint64_t *pd = GUEST_PTR(m, GUEST_PD, 4 * 0x1000);
	int i;

	memset(pml4, 0, 0x1000);
	memset(pdpt, 0, 0x1000);
	pml4[0] = GUEST_PDPT | 3;
	for (i = 0; i < 4; i++)
		pdpt[i] = (GUEST_PD + (uint64_t)i * 0x1000) | 3;
	for (i = 0; i < 4 * 512; i++)
		pd[i] = ((uint64_t)i << 21) | 0x83;	/* present, writable, 2 MiB */
}

static void write_start_info(struct guest_mem *m, const struct boot_params_in *in)
{
	struct hvm_start_info *si = GUEST_PTR(m, GUEST_START_INFO, 0x1000);
	struct hvm_memmap_entry *mm = (struct hvm_memmap_entry *)(si + 1);
	struct hvm_modlist_entry *mod = (struct hvm_modlist_entry *)(mm + E820_MAX);
	struct e820_entry map[E820_MAX];
	int i, n = boot_e820(m, map);

	memset(si, 0, 0x1000);
	si->magic = HVM_START_MAGIC;
	si->version = 1;
	si->cmdline_paddr = GUEST_CMDLINE;
	si->memmap_paddr = GUEST_START_INFO + sizeof(*si);
	si->memmap_entries = (uint32_t)n;
	for (i = 0; i < n; i++)
		mm[i] = (struct hvm_memmap_entry){ map[i].addr, map[i].size, map[i].type, 0 };
	if (in->initrd_gpa) {
		si->nr_modules = 1;
		si->modlist_paddr = GUEST_START_INFO + ((uint8_t *)mod - (uint8_t *)si);
		mod->paddr = in->initrd_gpa;
		mod->size = in->initrd_size;
	}
}

static void write_zero_page(struct guest_mem *m, const struct kernel_info *ki,
			    const struct boot_params_in *in)
{
	uint8_t *zp = GUEST_PTR(m, GUEST_ZERO_PAGE, ZP_SIZE);
	struct e820_entry map[E820_MAX];
	int n = boot_e820(m, map);
	uint32_t v;

	memset(zp, 0, ZP_SIZE);
	memcpy(zp + ZP_HDR, ki->setup_hdr, ki->setup_hdr_len);
	zp[ZP_TYPE_OF_LOADER] = 0xff;		/* undefined boot loader */
	v = (uint32_t)GUEST_CMDLINE;
	memcpy(zp + ZP_CMD_LINE_PTR, &v, 4);
	v = 0;
	memcpy(zp + ZP_EXT_CMD_LINE_PTR, &v, 4);
	v = (uint32_t)in->initrd_gpa;
	memcpy(zp + ZP_RAMDISK_IMAGE, &v, 4);
	v = (uint32_t)(in->initrd_gpa >> 32);
	memcpy(zp + ZP_EXT_RAMDISK_IMAGE, &v, 4);
	v = (uint32_t)in->initrd_size;
	memcpy(zp + ZP_RAMDISK_SIZE, &v, 4);
	v = (uint32_t)(in->initrd_size >> 32);
	memcpy(zp + ZP_EXT_RAMDISK_SIZE, &v, 4);
	zp[ZP_E820_ENTRIES] = (uint8_t)n;
	memcpy(zp + ZP_E820_TABLE, map, n * sizeof(map[0]));
}

int boot_setup(struct guest_mem *m, const struct kernel_info *ki,
	       const struct boot_params_in *in, struct kiln_err *err)
{
	size_t len = strlen(in->cmdline);
	char *cmdline;

	if (len > ki->cmdline_size)
		return kiln_fail(err, E2BIG, "the kernel command line is %zu bytes; this kernel takes at most %u (shorten --cmdline or the guest command)",
				 len, ki->cmdline_size);
	if (boot_write_mptable(m, in->vcpus) < 0)
		return kiln_fail(err, EINVAL, "cannot build an MP table for %d vCPUs", in->vcpus);
	cmdline = GUEST_PTR(m, GUEST_CMDLINE, len + 1);
	memcpy(cmdline, in->cmdline, len + 1);
	write_gdt(m, ki->mode);
	if (ki->mode == BOOT_PVH) {
		write_start_info(m, in);
	} else {
		write_page_tables(m);
		write_zero_page(m, ki, in);
	}
	return 0;
}
