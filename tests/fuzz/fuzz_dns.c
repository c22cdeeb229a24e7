/*
 * libFuzzer target for the question of a guest's DNS query, which kilnd's
 * resolver parses itself (api/kilnd/kd_sniff.c, kd_dns_question): any
 * bytes, any length; the name must fit its buffer and be one C string.
 */
#include <stdint.h>
#include <string.h>

#include "kd_sniff.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char name[256];
	uint16_t type, cls;
	size_t q;

	memset(name, 0x5a, sizeof(name));
	q = kd_dns_question(data, size, name, sizeof(name), &type, &cls);
	if (q) {
		if (KD_DNS_HDR + q > size || memchr(name, '\0', sizeof(name)) == NULL)
			__builtin_trap();
		if (strlen(name) == 0 || strlen(name) > 253)
			__builtin_trap();
	}
	return 0;
}
