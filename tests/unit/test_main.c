#include <stdlib.h>

#include "unit.h"

void unit_mem(struct guest_mem *m, uint64_t mib)
{
	struct kiln_err err;

	ck_assert_int_eq(guest_mem_alloc(m, mib * MIB, 0, &err), 0);
}

int main(void)
{
	SRunner *sr = srunner_create(suite_memory());
	int failed;

	srunner_add_suite(sr, suite_loader());
	srunner_add_suite(sr, suite_boot());
	srunner_add_suite(sr, suite_exit());
	srunner_add_suite(sr, suite_serial());
	srunner_add_suite(sr, suite_log());
	srunner_add_suite(sr, suite_cpuid());
	srunner_add_suite(sr, suite_base64());
	srunner_add_suite(sr, suite_virtq());
	srunner_add_suite(sr, suite_vsock());
	srunner_add_suite(sr, suite_blk());
	srunner_add_suite(sr, suite_net());
	srunner_add_suite(sr, suite_proto());
	srunner_add_suite(sr, suite_devsnap());
	srunner_add_suite(sr, suite_snapshot());
	srunner_add_suite(sr, suite_workingset());
	srunner_add_suite(sr, suite_usock());
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
