/* kiln's Check unit tests: one suite per part, run by test_main.c. */
#ifndef KILN_UNIT_H
#define KILN_UNIT_H

#include <check.h>

#include "vmm.h"

Suite *suite_memory(void);
Suite *suite_loader(void);
Suite *suite_boot(void);
Suite *suite_exit(void);
Suite *suite_serial(void);
Suite *suite_cpuid(void);
Suite *suite_base64(void);
Suite *suite_virtq(void);
Suite *suite_vsock(void);
Suite *suite_blk(void);
Suite *suite_net(void);
Suite *suite_proto(void);

/* Guest memory of mib MiB for a test (fails the test if it cannot map). */
void unit_mem(struct guest_mem *m, uint64_t mib);

#endif
