/* Boot structures: e820, initrd placement, command line, MP table, zero page. */
#include <errno.h>
#include <string.h>

#include "unit.h"

static uint8_t sum_bytes(const uint8_t *p, size_t n)
{
	uint8_t s = 0;

	while (n--)
		s += *p++;
	return s;
}

START_TEST(e820_small_and_large)
{
	struct guest_mem m;
	struct e820_entry map[E820_MAX];
	int n;

	unit_mem(&m, 512);
	n = boot_e820(&m, map);
	ck_assert_int_eq(n, 3);
	ck_assert_uint_eq(map[2].addr, GUEST_HIGH_START);
	ck_assert_uint_eq(map[2].addr + map[2].size, 512 * MIB);
	ck_assert_uint_eq(map[1].type, E820_RESERVED);
	guest_mem_free(&m);

	unit_mem(&m, 4096);
	n = boot_e820(&m, map);
	ck_assert_int_eq(n, 4);
	ck_assert_uint_eq(map[2].addr + map[2].size, GUEST_MMIO_GAP_START);
	ck_assert_uint_eq(map[3].addr, GUEST_MMIO_GAP_END);
	ck_assert_uint_eq(map[3].size, 1 * GIB);
	guest_mem_free(&m);
}
END_TEST

START_TEST(initrd_placement)
{
	struct guest_mem m;
	struct kernel_info ki = { .load_end = 0x2000000, .initrd_addr_max = 0x7fffffff };
	struct kiln_err err;
	uint64_t gpa;

	unit_mem(&m, 128);
	ck_assert_int_eq(boot_place_initrd(&m, &ki, 3 * MIB + 5, &gpa, &err), 0);
	ck_assert_uint_eq(gpa % 4096, 0);
	ck_assert_uint_ge(gpa, ki.load_end);
	ck_assert_uint_le(gpa + 3 * MIB + 5, 128 * MIB);
	/* Too big to fit above the kernel. */
	ck_assert_int_eq(boot_place_initrd(&m, &ki, 100 * MIB, &gpa, &err), -ENOSPC);
	ck_assert_ptr_nonnull(strstr(err.msg, "--mem"));
	ck_assert_int_eq(boot_place_initrd(&m, &ki, UINT64_MAX, &gpa, &err), -ENOSPC);
	guest_mem_free(&m);

	/* A 4 GiB guest keeps the initrd below the MMIO gap and initrd_addr_max. */
	unit_mem(&m, 4096);
	ck_assert_int_eq(boot_place_initrd(&m, &ki, 3 * MIB, &gpa, &err), 0);
	ck_assert_uint_le(gpa + 3 * MIB, 0x80000000ULL);
	guest_mem_free(&m);
}
END_TEST

START_TEST(mptable_is_valid)
{
	struct guest_mem m;
	const uint8_t *mpf, *mpc;
	uint32_t table;
	uint16_t len;
	int ncpu = 0, bsp = 0, i;

	unit_mem(&m, 128);
	ck_assert_int_eq(boot_write_mptable(&m, 4), 0);
	mpf = GUEST_PTR(&m, GUEST_MPTABLE, 16);
	ck_assert_int_eq(memcmp(mpf, "_MP_", 4), 0);
	ck_assert_uint_eq(sum_bytes(mpf, 16), 0);
	memcpy(&table, mpf + 4, 4);
	mpc = GUEST_PTR(&m, table, 44);
	ck_assert_int_eq(memcmp(mpc, "PCMP", 4), 0);
	memcpy(&len, mpc + 4, 2);
	ck_assert_uint_eq(sum_bytes(mpc, len), 0);
	ck_assert_uint_le(table + len, GUEST_EBDA_END);
	for (i = 44; i < len;) {
		if (mpc[i] == 0) {
			ncpu++;
			bsp += (mpc[i + 3] & 2) != 0;
			i += 20;
		} else {
			i += 8;
		}
	}
	ck_assert_int_eq(ncpu, 4);
	ck_assert_int_eq(bsp, 1);
	ck_assert_int_eq(boot_write_mptable(&m, 0), -EINVAL);
	ck_assert_int_eq(boot_write_mptable(&m, KILN_MAX_VCPUS + 1), -EINVAL);
	ck_assert_int_eq(boot_write_mptable(&m, KILN_MAX_VCPUS), 0);
	guest_mem_free(&m);
}
END_TEST

START_TEST(cmdline_limit)
{
	static char line[KILN_CMDLINE_MAX + 16];
	struct guest_mem m;
	struct kernel_info ki = { .mode = BOOT_PVH, .cmdline_size = KILN_CMDLINE_MAX - 1 };
	struct boot_params_in in = { .cmdline = line, .vcpus = 1 };
	struct kiln_err err;

	unit_mem(&m, 128);
	memset(line, 'a', KILN_CMDLINE_MAX - 1);
	ck_assert_int_eq(boot_setup(&m, &ki, &in, &err), 0);
	ck_assert_int_eq(memcmp(GUEST_PTR(&m, GUEST_CMDLINE, 4), "aaaa", 4), 0);
	line[KILN_CMDLINE_MAX - 1] = 'a';
	ck_assert_int_eq(boot_setup(&m, &ki, &in, &err), -E2BIG);
	ck_assert_ptr_nonnull(strstr(err.msg, "2048 bytes"));
	guest_mem_free(&m);
}
END_TEST

START_TEST(pvh_start_info)
{
	struct guest_mem m;
	struct kernel_info ki = { .mode = BOOT_PVH, .cmdline_size = 2047 };
	struct boot_params_in in = { .cmdline = "console=ttyS0", .vcpus = 2,
				     .initrd_gpa = 0x4000000, .initrd_size = 12345 };
	struct kiln_err err;
	const uint32_t *si;
	uint64_t modlist, paddr, size;

	unit_mem(&m, 128);
	ck_assert_int_eq(boot_setup(&m, &ki, &in, &err), 0);
	si = GUEST_PTR(&m, GUEST_START_INFO, 56);
	ck_assert_uint_eq(si[0], 0x336ec578);
	ck_assert_uint_eq(si[3], 1);		/* one module: the initrd */
	memcpy(&modlist, si + 4, 8);
	memcpy(&paddr, GUEST_PTR(&m, modlist, 8), 8);
	memcpy(&size, GUEST_PTR(&m, modlist + 8, 8), 8);
	ck_assert_uint_eq(paddr, 0x4000000);
	ck_assert_uint_eq(size, 12345);
	guest_mem_free(&m);
}
END_TEST

START_TEST(linux64_zero_page)
{
	struct guest_mem m;
	struct kernel_info ki = { .mode = BOOT_LINUX64, .cmdline_size = 2047, .setup_hdr_len = 0x77 };
	struct boot_params_in in = { .cmdline = "quiet", .vcpus = 1,
				     .initrd_gpa = 0x4000000, .initrd_size = 4096 };
	struct kiln_err err;
	const uint8_t *zp;
	const uint64_t *pd;
	uint32_t v;

	ki.setup_hdr[0x202 - 0x1f1] = 'H';
	unit_mem(&m, 4096);
	ck_assert_int_eq(boot_setup(&m, &ki, &in, &err), 0);
	zp = GUEST_PTR(&m, GUEST_ZERO_PAGE, 4096);
	ck_assert_uint_eq(zp[0x202], 'H');
	ck_assert_uint_eq(zp[0x210], 0xff);
	memcpy(&v, zp + 0x228, 4);
	ck_assert_uint_eq(v, GUEST_CMDLINE);
	memcpy(&v, zp + 0x218, 4);
	ck_assert_uint_eq(v, 0x4000000);
	ck_assert_uint_eq(zp[0x1e8], 4);	/* e820 entries: 4 GiB spans the gap */
	pd = GUEST_PTR(&m, GUEST_PD, 4 * 4096);
	ck_assert_uint_eq(pd[2047], (2047ULL << 21) | 0x83);
	guest_mem_free(&m);
}
END_TEST

Suite *suite_boot(void)
{
	Suite *s = suite_create("boot");
	TCase *tc = tcase_create("structures");

	tcase_add_test(tc, e820_small_and_large);
	tcase_add_test(tc, initrd_placement);
	tcase_add_test(tc, mptable_is_valid);
	tcase_add_test(tc, cmdline_limit);
	tcase_add_test(tc, pvh_start_info);
	tcase_add_test(tc, linux64_zero_page);
	suite_add_tcase(s, tc);
	return s;
}
