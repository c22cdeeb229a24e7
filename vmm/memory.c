/*
 * Guest RAM and the one checked guest-physical-to-host translation. Every
 * other part of kiln reaches guest memory through GUEST_PTR.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

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
	static struct log_limit lim = LOG_LIMIT("guest ranges outside guest RAM");
	int64_t off = guest_range_offset(m, gpa, len);

	if (off >= 0)
		return m->host + off;
	log_guest(&lim, "%s:%d: guest range [%#llx, +%#llx) is outside guest RAM",
		  file, line, (unsigned long long)gpa, (unsigned long long)len);
	return NULL;
}

int guest_mem_map_fd(struct guest_mem *m, int fd, const char *name, uint64_t size, struct kiln_err *err)
{
	struct stat st;
	void *p;

	memset(m, 0, sizeof(*m));
	if (size < KILN_MIN_MEM_MIB * MIB || size % (2 * MIB))
		return kiln_fail(err, EINVAL, "guest memory of %llu bytes: must be a multiple of 2 MiB, at least %llu MiB",
				 (unsigned long long)size, (unsigned long long)KILN_MIN_MEM_MIB);
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
		return kiln_fail(err, EINVAL, "%s: not a regular file (the snapshot's memory file)", name);
	if ((uint64_t)st.st_size < size)
		return kiln_fail(err, EINVAL, "%s: %llu bytes, but the snapshot's guest has %llu MiB of memory (truncated, or the memory file of another snapshot)",
				 name, (unsigned long long)st.st_size, (unsigned long long)(size / MIB));
	/* Writable but private: the file itself is never written through this mapping. */
	p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
	if (p == MAP_FAILED)
		return kiln_fail(err, errno, "%s: mmap: %s", name, strerror(errno));
	madvise(p, size, MADV_DONTDUMP);
	m->host = p;
	m->size = size;
	m->low_size = size < GUEST_MMIO_GAP_START ? size : GUEST_MMIO_GAP_START;
	return 0;
}

int guest_mem_map_file(struct guest_mem *m, const char *path, uint64_t size, struct kiln_err *err)
{
	struct stat st;
	int fd, r;

	memset(m, 0, sizeof(*m));
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return kiln_fail(err, errno, "%s: %s (the snapshot's memory file)", path, strerror(errno));
	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size > size) {
		close(fd);
		return kiln_fail(err, EINVAL, "%s: %llu bytes, but the snapshot's guest has %llu MiB of memory (the memory file of another snapshot)",
				 path, (unsigned long long)st.st_size, (unsigned long long)(size / MIB));
	}
	r = guest_mem_map_fd(m, fd, path, size, err);
	close(fd);
	return r;
}

static int page_is_zero(const uint8_t *p, size_t len)
{
	const uint64_t *w = (const uint64_t *)p;
	size_t i;

	for (i = 0; i < len / 8; i++)
		if (w[i])
			return 0;
	return 1;
}

int guest_mem_save(const struct guest_mem *m, int fd, const char *name, uint64_t *written, struct kiln_err *err)
{
	const size_t page = 4096;
	uint64_t off = 0, total = 0;
	int e;

	if (ftruncate(fd, (off_t)m->size) < 0)
		goto fail;
	/* Runs of non-zero pages, each one pwrite: untouched memory costs a scan, not disk. */
	while (off < m->size) {
		uint64_t start, end;

		while (off < m->size && page_is_zero(m->host + off, page))
			off += page;
		start = off;
		while (off < m->size && off - start < 64 * MIB && !page_is_zero(m->host + off, page))
			off += page;
		end = off;
		while (start < end) {
			ssize_t n = pwrite(fd, m->host + start, end - start, (off_t)start);

			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				goto fail;
			start += (uint64_t)n;
			total += (uint64_t)n;
		}
	}
	*written = total;
	return 0;
fail:
	e = errno ? errno : EIO;
	return kiln_fail(err, e, "%s: writing guest memory: %s", name, strerror(e));
}

int guest_mem_usage(const struct guest_mem *m, uint64_t *touched, uint64_t *private_bytes)
{
	uintptr_t lo = (uintptr_t)m->host, hi = lo + m->size;
	unsigned long long kb;
	char line[512];
	int inside = 0;
	FILE *f;

	*touched = *private_bytes = 0;
	f = fopen("/proc/self/smaps", "re");
	if (!f)
		return -errno;
	/* The guest's mapping may have been split into several areas: sum them. */
	while (fgets(line, sizeof(line), f)) {
		uintptr_t start, end;

		if (sscanf(line, "%" SCNxPTR "-%" SCNxPTR " ", &start, &end) == 2)
			inside = start >= lo && end <= hi;
		else if (!inside)
			continue;
		else if (sscanf(line, "Rss: %llu kB", &kb) == 1)
			*touched += kb * 1024;
		else if (sscanf(line, "Anonymous: %llu kB", &kb) == 1)
			*private_bytes += kb * 1024;
	}
	fclose(f);
	return 0;
}
