/* The checked guest-physical accessor: every boundary and overflow. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "unit.h"

START_TEST(low_memory_bounds)
{
	struct guest_mem m;

	unit_mem(&m, 128);
	ck_assert_ptr_eq(GUEST_PTR(&m, 0, 1), m.host);
	ck_assert_ptr_eq(GUEST_PTR(&m, 128 * MIB - 1, 1), m.host + 128 * MIB - 1);
	ck_assert_ptr_null(GUEST_PTR(&m, 128 * MIB - 1, 2));
	ck_assert_ptr_null(GUEST_PTR(&m, 128 * MIB, 1));
	ck_assert_ptr_null(GUEST_PTR(&m, 1, UINT64_MAX));
	ck_assert_ptr_null(GUEST_PTR(&m, UINT64_MAX, 1));
	ck_assert_ptr_null(GUEST_PTR(&m, UINT64_MAX, UINT64_MAX));
	ck_assert_uint_eq(guest_mem_end(&m), 128 * MIB);
	guest_mem_free(&m);
}
END_TEST

START_TEST(memory_above_the_gap)
{
	struct guest_mem m;

	unit_mem(&m, 4096);
	ck_assert_uint_eq(m.low_size, GUEST_MMIO_GAP_START);
	ck_assert_uint_eq(guest_mem_end(&m), GUEST_MMIO_GAP_END + 1 * GIB);
	/* The gap itself is not RAM, and no range may straddle it. */
	ck_assert_ptr_null(GUEST_PTR(&m, GUEST_IOAPIC, 4));
	ck_assert_ptr_null(GUEST_PTR(&m, GUEST_MMIO_GAP_START - 4, 8));
	ck_assert_ptr_eq(GUEST_PTR(&m, GUEST_MMIO_GAP_END, 8), m.host + GUEST_MMIO_GAP_START);
	ck_assert_ptr_eq(GUEST_PTR(&m, GUEST_MMIO_GAP_END + GIB - 8, 8), m.host + 4 * GIB - 8);
	ck_assert_ptr_null(GUEST_PTR(&m, GUEST_MMIO_GAP_END + GIB - 8, 9));
	ck_assert_ptr_null(GUEST_PTR(&m, GUEST_MMIO_GAP_END + GIB, 1));
	guest_mem_free(&m);
}
END_TEST

START_TEST(bad_sizes_refused)
{
	struct guest_mem m;
	struct kiln_err err;

	ck_assert_int_eq(guest_mem_alloc(&m, 64 * MIB, 0, &err), -EINVAL);
	ck_assert_int_eq(guest_mem_alloc(&m, 128 * MIB + 4096, 0, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "multiple of 2 MiB"));
}
END_TEST

/*
 * A clone's memory accounting: pages read from the snapshot's memory file
 * are touched but shared; pages written are its own.
 */
START_TEST(usage_of_a_private_file_mapping)
{
	char path[] = "/tmp/kiln-mem-XXXXXX";
	uint64_t touched, priv;
	struct guest_mem m;
	struct kiln_err err;
	volatile uint8_t sum = 0;
	size_t i;
	int fd = mkstemp(path);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, 128 * MIB), 0);
	close(fd);
	ck_assert_int_eq(guest_mem_map_file(&m, path, 128 * MIB, &err), 0);
	unlink(path);
	ck_assert_int_eq(guest_mem_usage(&m, &touched, &priv), 0);
	ck_assert_uint_eq(touched, 0);
	for (i = 0; i < 4 * MIB; i += 4096)
		sum += m.host[i];
	(void)sum;
	ck_assert_int_eq(guest_mem_usage(&m, &touched, &priv), 0);
	ck_assert_uint_ge(touched, 4 * MIB);
	ck_assert_uint_eq(priv, 0);
	memset(m.host + 8 * MIB, 1, 64 * 1024);
	ck_assert_int_eq(guest_mem_usage(&m, &touched, &priv), 0);
	ck_assert_uint_ge(touched, 4 * MIB + 64 * 1024);
	ck_assert_uint_ge(priv, 64 * 1024);
	ck_assert_uint_lt(priv, 4 * MIB);
	guest_mem_free(&m);
}
END_TEST

Suite *suite_memory(void)
{
	Suite *s = suite_create("memory");
	TCase *tc = tcase_create("bounds");

	tcase_add_test(tc, low_memory_bounds);
	tcase_add_test(tc, memory_above_the_gap);
	tcase_add_test(tc, bad_sizes_refused);
	tcase_add_test(tc, usage_of_a_private_file_mapping);
	suite_add_tcase(s, tc);
	return s;
}
