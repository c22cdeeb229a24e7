/*
 * libFuzzer target: arbitrary bytes as a kernel image (ELF or bzImage) loaded
 * into a 128 MiB guest. The loader must refuse or load, never crash, read out
 * of bounds or write outside guest RAM (ASan watches both).
 */
#include <stdlib.h>
#include <string.h>

#include "vmm.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct guest_mem mem;
	struct kernel_info ki;
	struct kiln_err err;
	uint8_t *copy;

	if (!mem.host && guest_mem_alloc(&mem, 128 * MIB, 0, &err) < 0)
		abort();
	/* An exact-size heap copy, so ASan sees any read past the image. */
	copy = malloc(size ? size : 1);
	if (!copy)
		return 0;
	memcpy(copy, data, size);
	kernel_load(&mem, copy, size, &ki, &err);
	free(copy);
	return 0;
}
