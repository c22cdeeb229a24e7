/* CPUID filtering per vCPU: APIC ids, topology, hypervisor bit, no PMU. */
#include <stdlib.h>

#include "unit.h"

static struct kvm_cpuid2 *sample(void)
{
	struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + 6 * sizeof(c->entries[0]));

	c->nent = 6;
	c->entries[0] = (struct kvm_cpuid_entry2){ .function = 1, .ebx = 0xffff0800, .ecx = 0x1, .edx = 0 };
	c->entries[1] = (struct kvm_cpuid_entry2){ .function = 0xa, .eax = 0x7300402, .ebx = 1 };
	c->entries[2] = (struct kvm_cpuid_entry2){ .function = 0xb, .index = 0 };
	c->entries[3] = (struct kvm_cpuid_entry2){ .function = 0xb, .index = 1 };
	c->entries[4] = (struct kvm_cpuid_entry2){ .function = 0x80000008, .ecx = 0x3f };
	c->entries[5] = (struct kvm_cpuid_entry2){ .function = 4, .eax = 0xfc004121 };
	return c;
}

START_TEST(apic_ids_and_topology)
{
	struct kvm_cpuid2 *c = sample();

	cpuid_filter(c, 3, 4);
	ck_assert_uint_eq(c->entries[0].ebx >> 24, 3);
	ck_assert_uint_eq((c->entries[0].ebx >> 16) & 0xff, 4);
	ck_assert_uint_eq(c->entries[0].ebx & 0xffff, 0x0800);
	ck_assert_uint_ne(c->entries[0].ecx & (1u << 31), 0);
	ck_assert_uint_ne(c->entries[0].edx & (1u << 28), 0);
	ck_assert_uint_eq(c->entries[1].eax, 0);
	ck_assert_uint_eq(c->entries[2].edx, 3);
	ck_assert_uint_eq(c->entries[3].ebx, 4);
	ck_assert_uint_eq(c->entries[3].eax, 2);
	ck_assert_uint_eq(c->entries[4].ecx & 0xff, 3);
	ck_assert_uint_eq(c->entries[5].eax >> 26, 3);
	free(c);
}
END_TEST

START_TEST(single_vcpu)
{
	struct kvm_cpuid2 *c = sample();

	cpuid_filter(c, 0, 1);
	ck_assert_uint_eq(c->entries[0].ebx >> 24, 0);
	ck_assert_uint_eq(c->entries[0].edx & (1u << 28), 0);
	ck_assert_uint_eq(c->entries[3].eax, 0);
	free(c);
}
END_TEST

/* Leaf 1 gains the TSC-deadline bit; nothing else changes. */
START_TEST(tsc_deadline_bit)
{
	struct kvm_cpuid2 *c = sample();

	cpuid_set_tsc_deadline(c);
	ck_assert_uint_eq(c->entries[0].ecx, 0x1 | 1u << 24);
	ck_assert_uint_eq(c->entries[0].ebx, 0xffff0800);
	ck_assert_uint_eq(c->entries[4].ecx, 0x3f);
	cpuid_filter(c, 1, 2);
	ck_assert_uint_ne(c->entries[0].ecx & (1u << 24), 0);
	free(c);
}
END_TEST

Suite *suite_cpuid(void)
{
	Suite *s = suite_create("cpuid");
	TCase *tc = tcase_create("filter");

	tcase_add_test(tc, apic_ids_and_topology);
	tcase_add_test(tc, single_vcpu);
	tcase_add_test(tc, tsc_deadline_bit);
	suite_add_tcase(s, tc);
	return s;
}
