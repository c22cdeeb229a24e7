/* Kernel loaders against well-formed and hostile images built in memory. */
#include <elf.h>
#include <errno.h>
#include <string.h>

#include "unit.h"

#define IMG_SIZE	4096
#define NOTE_OFF	256
#define DATA_OFF	512

struct elf_spec {
	uint64_t paddr, filesz, memsz;
	uint32_t entry;
	int note;		/* 0: none, 1: PVH note, 2: note overrunning its segment */
};

static size_t make_elf(uint8_t *img, const struct elf_spec *sp)
{
	Elf64_Ehdr *eh = (Elf64_Ehdr *)img;
	Elf64_Phdr *ph = (Elf64_Phdr *)(img + sizeof(*eh));
	Elf64_Nhdr nh = { .n_namesz = 4, .n_descsz = 4, .n_type = 18 };
	uint64_t i;

	memset(img, 0, IMG_SIZE);
	memcpy(eh->e_ident, ELFMAG, SELFMAG);
	eh->e_ident[EI_CLASS] = ELFCLASS64;
	eh->e_ident[EI_DATA] = ELFDATA2LSB;
	eh->e_type = ET_EXEC;
	eh->e_machine = EM_X86_64;
	eh->e_phoff = sizeof(*eh);
	eh->e_phentsize = sizeof(Elf64_Phdr);
	eh->e_phnum = 2;
	ph[0].p_type = PT_NOTE;
	ph[0].p_offset = NOTE_OFF;
	ph[0].p_filesz = sp->note == 2 ? 16 : 20;
	ph[1].p_type = PT_LOAD;
	ph[1].p_offset = DATA_OFF;
	ph[1].p_paddr = sp->paddr;
	ph[1].p_filesz = sp->filesz;
	ph[1].p_memsz = sp->memsz;
	if (sp->note) {
		memcpy(img + NOTE_OFF, &nh, sizeof(nh));
		memcpy(img + NOTE_OFF + sizeof(nh), "Xen", 4);
		memcpy(img + NOTE_OFF + sizeof(nh) + 4, &sp->entry, 4);
	}
	for (i = 0; i < sp->filesz && DATA_OFF + i < IMG_SIZE; i++)
		img[DATA_OFF + i] = (uint8_t)(i * 7 + 1);
	return DATA_OFF + (sp->filesz < IMG_SIZE - DATA_OFF ? sp->filesz : IMG_SIZE - DATA_OFF);
}

static const struct elf_spec good = { 0x1000000, 1024, 8192, 0x1000100, 1 };

static int load(const uint8_t *img, size_t len, struct kernel_info *ki, struct kiln_err *err)
{
	struct guest_mem m;
	int r;

	unit_mem(&m, 128);
	memset(err, 0, sizeof(*err));
	r = kernel_load(&m, img, len, ki, err);
	guest_mem_free(&m);
	return r;
}

#define ck_assert_err(r, e, err, text)					\
	do {								\
		ck_assert_int_eq((r), -(e));				\
		ck_assert_msg(strstr((err).msg, (text)) != NULL,	\
			      "error \"%s\" lacks \"%s\"", (err).msg, (text)); \
	} while (0)

START_TEST(elf_pvh_loads)
{
	static uint8_t img[IMG_SIZE];
	struct kernel_info ki;
	struct kiln_err err;
	struct guest_mem m;
	size_t len = make_elf(img, &good);
	uint8_t *p;

	unit_mem(&m, 128);
	ck_assert_int_eq(kernel_load(&m, img, len, &ki, &err), 0);
	ck_assert_int_eq(ki.mode, BOOT_PVH);
	ck_assert_uint_eq(ki.entry, 0x1000100);
	ck_assert_uint_eq(ki.load_start, 0x1000000);
	ck_assert_uint_eq(ki.load_end, 0x1000000 + 8192);
	p = GUEST_PTR(&m, 0x1000000, 8192);
	ck_assert_int_eq(memcmp(p, img + DATA_OFF, 1024), 0);
	ck_assert_uint_eq(p[1024], 0);		/* bss zeroed */
	guest_mem_free(&m);
}
END_TEST

START_TEST(elf_hostile_headers)
{
	static uint8_t img[IMG_SIZE];
	struct kernel_info ki;
	struct kiln_err err;
	struct elf_spec sp = good;
	size_t len;
	int r;

	len = make_elf(img, &sp);
	r = load(img, 40, &ki, &err);
	ck_assert_err(r, ENOEXEC, err, "truncated");
	r = load(img, 100, &ki, &err);
	ck_assert_err(r, ENOEXEC, err, "program headers lie outside the file");

	((Elf64_Ehdr *)img)->e_phnum = 0;
	r = load(img, len, &ki, &err);
	ck_assert_err(r, ENOEXEC, err, "program header table is malformed");

	len = make_elf(img, &sp);
	((Elf64_Ehdr *)img)->e_phoff = UINT64_MAX - 8;
	r = load(img, len, &ki, &err);
	ck_assert_err(r, ENOEXEC, err, "outside the file");

	len = make_elf(img, &sp);
	((Elf64_Ehdr *)img)->e_machine = EM_AARCH64;
	r = load(img, len, &ki, &err);
	ck_assert_err(r, ENOEXEC, err, "not an x86-64 executable");

	len = make_elf(img, &sp);
	img[EI_CLASS] = ELFCLASS32;
	r = load(img, len, &ki, &err);
	ck_assert_err(r, ENOEXEC, err, "64-bit");
}
END_TEST

START_TEST(elf_hostile_segments)
{
	static uint8_t img[IMG_SIZE];
	struct kernel_info ki;
	struct kiln_err err;
	struct elf_spec sp;
	size_t len;
	int r;

	sp = good;
	sp.note = 0;
	len = make_elf(img, &sp);
	r = load(img, len, &ki, &err);
	ck_assert_err(r, ENOEXEC, err, "no PVH entry note");

	sp = good;
	sp.note = 2;
	len = make_elf(img, &sp);
	r = load(img, len, &ki, &err);
	ck_assert_err(r, ENOEXEC, err, "runs past its segment");

	/* A segment past the end of a 128 MiB guest. */
	sp = good;
	sp.paddr = 127 * MIB;
	sp.memsz = 2 * MIB;
	sp.entry = (uint32_t)sp.paddr;
	len = make_elf(img, &sp);
	r = load(img, len, &ki, &err);
	ck_assert_err(r, ERANGE, err, "outside guest RAM");

	/* Over the boot structures below 1 MiB. */
	sp = good;
	sp.paddr = 0x7000;
	sp.entry = 0x7000;
	len = make_elf(img, &sp);
	r = load(img, len, &ki, &err);
	ck_assert_err(r, ERANGE, err, "above 1 MiB");

	/* Address arithmetic that wraps. */
	sp = good;
	sp.paddr = UINT64_MAX - 10;
	sp.filesz = 50;
	sp.memsz = 100;
	len = make_elf(img, &sp);
	r = load(img, len, &ki, &err);
	ck_assert_err(r, ERANGE, err, "outside guest RAM");

	sp = good;
	sp.filesz = 2048;
	sp.memsz = 1024;
	len = make_elf(img, &sp);
	r = load(img, len, &ki, &err);
	ck_assert_err(r, ENOEXEC, err, "more file bytes");

	/* File bytes beyond the end of the (truncated) file. */
	sp = good;
	len = make_elf(img, &sp);
	r = load(img, DATA_OFF + 10, &ki, &err);
	ck_assert_err(r, ENOEXEC, err, "outside the file");

	sp = good;
	sp.entry = 0x2000000;
	len = make_elf(img, &sp);
	r = load(img, len, &ki, &err);
	ck_assert_err(r, ENOEXEC, err, "entry");
}
END_TEST

static size_t make_bzimage(uint8_t *img, uint16_t version, uint16_t xloadflags)
{
	uint64_t pref = 0x1000000;
	uint32_t init_size = 64 * 1024;

	memset(img, 0, IMG_SIZE);
	img[0x1f1] = 1;			/* setup_sects: 2 sectors of setup in all */
	img[0x201] = 0x66;		/* jump: header ends at 0x268 */
	memcpy(img + 0x202, "HdrS", 4);
	memcpy(img + 0x206, &version, 2);
	memcpy(img + 0x236, &xloadflags, 2);
	memcpy(img + 0x258, &pref, 8);
	memcpy(img + 0x260, &init_size, 4);
	memset(img + 1024, 0xcc, IMG_SIZE - 1024);
	return IMG_SIZE;
}

START_TEST(bzimage_loads)
{
	static uint8_t img[IMG_SIZE];
	struct kernel_info ki;
	struct kiln_err err;
	struct guest_mem m;
	size_t len = make_bzimage(img, 0x020f, 1);

	unit_mem(&m, 128);
	ck_assert_int_eq(kernel_load(&m, img, len, &ki, &err), 0);
	ck_assert_int_eq(ki.mode, BOOT_LINUX64);
	ck_assert_uint_eq(ki.entry, 0x1000200);
	ck_assert_uint_eq(ki.load_end, 0x1000000 + 64 * 1024);
	ck_assert_uint_eq(*(uint8_t *)GUEST_PTR(&m, 0x1000000, 1), 0xcc);
	ck_assert_uint_eq(ki.setup_hdr_len, 0x268 - 0x1f1);
	guest_mem_free(&m);
}
END_TEST

START_TEST(bzimage_hostile)
{
	static uint8_t img[IMG_SIZE];
	struct kernel_info ki;
	struct kiln_err err;
	size_t len;
	int r;

	len = make_bzimage(img, 0x0208, 1);
	r = load(img, len, &ki, &err);
	ck_assert_err(r, ENOEXEC, err, "boot protocol 2.08");

	len = make_bzimage(img, 0x020f, 0);
	r = load(img, len, &ki, &err);
	ck_assert_err(r, ENOEXEC, err, "64-bit entry");

	len = make_bzimage(img, 0x020f, 1);
	img[0x1f1] = 200;		/* setup larger than the file */
	r = load(img, len, &ki, &err);
	ck_assert_err(r, ENOEXEC, err, "truncated");

	len = make_bzimage(img, 0x020f, 1);
	memset(img + 0x260, 0xff, 4);	/* init_size 4 GiB */
	r = load(img, len, &ki, &err);
	ck_assert_err(r, ERANGE, err, "outside guest RAM");

	len = make_bzimage(img, 0x020f, 1);
	memset(img + 0x258, 0xff, 8);	/* pref_address wraps */
	r = load(img, len, &ki, &err);
	ck_assert_err(r, ERANGE, err, "outside guest RAM");

	len = make_bzimage(img, 0x020f, 1);
	img[0x201] = 0;			/* header shorter than 2.12's */
	r = load(img, len, &ki, &err);
	ck_assert_err(r, ENOEXEC, err, "bad length");

	r = load(img, 0x220, &ki, &err);
	ck_assert_err(r, ENOEXEC, err, "neither an ELF vmlinux nor a bzImage");
	memset(img, 0x5a, IMG_SIZE);
	r = load(img, IMG_SIZE, &ki, &err);
	ck_assert_err(r, ENOEXEC, err, "neither an ELF vmlinux nor a bzImage");
}
END_TEST

Suite *suite_loader(void)
{
	Suite *s = suite_create("loader");
	TCase *tc = tcase_create("images");

	tcase_add_test(tc, elf_pvh_loads);
	tcase_add_test(tc, elf_hostile_headers);
	tcase_add_test(tc, elf_hostile_segments);
	tcase_add_test(tc, bzimage_loads);
	tcase_add_test(tc, bzimage_hostile);
	suite_add_tcase(s, tc);
	return s;
}
