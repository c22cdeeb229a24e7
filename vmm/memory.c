/*
 * Guest RAM and the one checked guest-physical-to-host translation. Every
 * other part of kiln reaches guest memory through GUEST_PTR.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include "vmm.h"

#ifndef MAP_HUGE_2MB
#define MAP_HUGE_2MB (21 << 26)
#endif

int guest_mem_alloc(struct guest_mem *m, uint64_t size, int hugepages, struct kiln_err *err)
{
	int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
	void *p;

	memset(m, 0, sizeof(*m));
	if (size < KILN_MIN_MEM_MIB * MIB || size % (2 * MIB))
		return kiln_fail(err, EINVAL, "guest memory of %llu bytes: must be a multiple of 2 MiB, at least %llu MiB",
				 (unsigned long long)size, (unsigned long long)KILN_MIN_MEM_MIB);
	/*
	 * Huge pages are reserved at mmap time (no MAP_NORESERVE): a shortfall
	 * is then an error here, not a SIGBUS when the guest touches memory.
	 */
	if (hugepages)
		flags = (flags & ~MAP_NORESERVE) | MAP_HUGETLB | MAP_HUGE_2MB;
	p = mmap(NULL, size, PROT_READ | PROT_WRITE, flags, -1, 0);
	if (p == MAP_FAILED) {
		int e = errno;

		if (hugepages)
			return kiln_fail(err, e, "cannot map %llu MiB of 2 MiB huge pages: %s (reserve them: echo N > /proc/sys/vm/nr_hugepages)",
					 (unsigned long long)(size / MIB), strerror(e));
		return kiln_fail(err, e, "cannot map %llu MiB of guest memory: %s",
				 (unsigned long long)(size / MIB), strerror(e));
	}
	/* Guest memory never belongs in a core dump of the VMM. */
	madvise(p, size, MADV_DONTDUMP);
	m->host = p;
	m->size = size;
	m->low_size = size < GUEST_MMIO_GAP_START ? size : GUEST_MMIO_GAP_START;
	m->hugepages = hugepages;
	return 0;
}

void guest_mem_free(struct guest_mem *m)
{
	if (m->host)
		munmap(m->host, m->size);
	m->host = NULL;
	m->size = 0;
}

uint64_t guest_mem_end(const struct guest_mem *m)
{
	if (m->size > m->low_size)
		return GUEST_MMIO_GAP_END + (m->size - m->low_size);
	return m->low_size;
}

/* Offset into the host mapping of [gpa, gpa+len), or -1 if not wholly RAM. */
static int64_t guest_range_offset(const struct guest_mem *m, uint64_t gpa, uint64_t len)
{
	if (!m->host)
		return -1;
	if (gpa < m->low_size)
		return len <= m->low_size - gpa ? (int64_t)gpa : -1;
	if (gpa >= GUEST_MMIO_GAP_END && m->size > m->low_size) {
		uint64_t high = m->size - m->low_size;
		uint64_t off = gpa - GUEST_MMIO_GAP_END;

		if (off < high && len <= high - off)
			return (int64_t)(off + m->low_size);
	}
	return -1;
}

int guest_range_valid(const struct guest_mem *m, uint64_t gpa, uint64_t len)
{
	return guest_range_offset(m, gpa, len) >= 0;
}

void *guest_ptr_checked(const struct guest_mem *m, uint64_t gpa, uint64_t len,
			const char *file, int line)
{
	int64_t off = guest_range_offset(m, gpa, len);

	if (off >= 0)
		return m->host + off;
	fprintf(stderr, "kiln-vmm: %s:%d: guest range [%#llx, +%#llx) is outside guest RAM\n",
		file, line, (unsigned long long)gpa, (unsigned long long)len);
	return NULL;
}
