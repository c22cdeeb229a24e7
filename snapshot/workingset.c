/* A snapshot's working set: recorded, saved, checked and prefetched (workingset.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "snapfile.h"
#include "workingset.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ	22
#define MADV_POPULATE_WRITE	23
#endif

#define PM_PRESENT	(1ULL << 63)
#define PM_SWAPPED	(1ULL << 62)
#define PM_FILE		(1ULL << 61)
#define WS_HEADER	(8 + 4 + 16 + 8 + 4 + 4)	/* magic, version, id, memory size, page size, count */
#define WS_RANGE	16			/* page u64, count u32, flags u32 */

static const char *const prefetch_names[] = {
	[SNAP_PREFETCH_AUTO] = "auto", [SNAP_PREFETCH_NONE] = "none",
	[SNAP_PREFETCH_WS] = "ws", [SNAP_PREFETCH_ALL] = "all",
};

int snap_prefetch_parse(const char *s, enum snap_prefetch *out)
{
	unsigned i;

	for (i = 0; i < sizeof(prefetch_names) / sizeof(prefetch_names[0]); i++)
		if (!strcmp(s, prefetch_names[i])) {
			*out = (enum snap_prefetch)i;
			return 0;
		}
	return -EINVAL;
}

const char *snap_prefetch_name(enum snap_prefetch p)
{
	return (unsigned)p < sizeof(prefetch_names) / sizeof(prefetch_names[0]) ? prefetch_names[p] : "?";
}

void snap_ws_free(struct snap_ws *ws)
{
	free(ws->r);
	memset(ws, 0, sizeof(*ws));
}

/* Append pages [page, page+n) marked flags, merging with the last range when they touch. */
static int ws_add(struct snap_ws *ws, uint64_t page, uint64_t n, uint32_t flags)
{
	struct snap_ws_range *last = ws->n ? &ws->r[ws->n - 1] : NULL;

	ws->pages[flags] += n;
	if (last && last->flags == flags && last->page + last->npages == page && last->npages + n <= UINT32_MAX) {
		last->npages += (uint32_t)n;
		return 0;
	}
	while (n) {
		uint32_t k = n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;

		if (ws->n == ws->cap) {
			uint32_t cap = ws->cap ? ws->cap * 2 : 256;
			struct snap_ws_range *r = realloc(ws->r, (size_t)cap * sizeof(*r));

			if (!r)
				return -ENOMEM;
			ws->r = r;
			ws->cap = cap;
		}
		ws->r[ws->n++] = (struct snap_ws_range){ .page = page, .npages = k, .flags = flags };
		page += k;
		n -= k;
	}
	return 0;
}

int snap_ws_record(const struct guest_mem *mem, struct snap_ws *ws, struct kiln_err *err)
{
	uint64_t npages = mem->size / SNAP_WS_PAGE, first = (uintptr_t)mem->host / SNAP_WS_PAGE, i = 0;
	static uint64_t buf[4096];
	int fd, r = 0;

	memset(ws, 0, sizeof(*ws));
	fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return kiln_fail(err, errno, "/proc/self/pagemap: %s", strerror(errno));
	while (i < npages && !r) {
		size_t want = npages - i < 4096 ? (size_t)(npages - i) : 4096, j;
		ssize_t n = pread(fd, buf, want * 8, (off_t)((first + i) * 8));

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0 || n % 8) {
			r = kiln_fail(err, n < 0 ? errno : EIO, "/proc/self/pagemap: %s", n < 0 ? strerror(errno) : "short read");
			break;
		}
		for (j = 0; j < (size_t)n / 8 && !r; j++) {
			uint64_t e = buf[j];

			if (e & PM_PRESENT)
				r = ws_add(ws, i + j, 1, e & PM_FILE ? SNAP_WS_READ : SNAP_WS_WRITE);
			else if (e & PM_SWAPPED)
				r = ws_add(ws, i + j, 1, SNAP_WS_WRITE);
		}
		if (r)
			r = kiln_fail(err, ENOMEM, "out of memory");
		i += (uint64_t)n / 8;
	}
	close(fd);
	if (r)
		snap_ws_free(ws);
	return r;
}

int snap_ws_from_extents(int fd, uint64_t mem_size, struct snap_ws *ws, struct kiln_err *err)
{
	off_t off = 0, end;

	memset(ws, 0, sizeof(*ws));
	while ((uint64_t)off < mem_size) {
		off = lseek(fd, off, SEEK_DATA);
		if (off < 0 && errno == ENXIO)
			break;
		end = off < 0 ? -1 : lseek(fd, off, SEEK_HOLE);
		if (off < 0 || end < 0) {
			snap_ws_free(ws);
			return kiln_fail(err, errno, "the memory file's extents: %s", strerror(errno));
		}
		if ((uint64_t)end > mem_size)
			end = (off_t)mem_size;
		if ((uint64_t)off >= mem_size)
			break;
		off -= off % SNAP_WS_PAGE;
		if (ws_add(ws, (uint64_t)off / SNAP_WS_PAGE, ((uint64_t)end - (uint64_t)off + SNAP_WS_PAGE - 1) / SNAP_WS_PAGE,
			   SNAP_WS_READ) < 0) {
			snap_ws_free(ws);
			return kiln_fail(err, ENOMEM, "out of memory");
		}
		off = end;
	}
	return 0;
}

int snap_ws_encode(const struct snap_ws *ws, const uint8_t id[16], uint64_t mem_size, uint8_t **out, size_t *len)
{
	struct snap_buf w;
	uint32_t i;

	snapw_init(&w);
	snapw_bytes(&w, SNAP_WS_MAGIC, 8);
	snapw_u32(&w, SNAP_WS_VERSION);
	snapw_bytes(&w, id, 16);
	snapw_u64(&w, mem_size);
	snapw_u32(&w, SNAP_WS_PAGE);
	snapw_u32(&w, ws->n);
	for (i = 0; i < ws->n; i++) {
		snapw_u64(&w, ws->r[i].page);
		snapw_u32(&w, ws->r[i].npages);
		snapw_u32(&w, ws->r[i].flags);
	}
	snapw_u32(&w, snap_crc32c(0, w.p, w.len));
	if (w.oom) {
		snapw_free(&w);
		return -ENOMEM;
	}
	*out = w.p;
	*len = w.len;
	return 0;
}

#define BAD(...) do { snprintf(msg, msglen, __VA_ARGS__); goto bad; } while (0)

int snap_ws_parse(const void *p, size_t len, const uint8_t id[16], uint64_t mem_size, struct snap_ws *ws,
		  char *msg, size_t msglen)
{
	uint64_t npages = mem_size / SNAP_WS_PAGE, next = 0;
	uint8_t got_id[16];
	struct snap_rd r;
	uint32_t n, i, crc;

	memset(ws, 0, sizeof(*ws));
	if (len < WS_HEADER + 4)
		BAD("%zu bytes, shorter than a working set's header", len);
	if (memcmp(p, SNAP_WS_MAGIC, 8))
		BAD("not a working-set file (no %s magic)", SNAP_WS_MAGIC);
	memcpy(&crc, (const uint8_t *)p + len - 4, 4);
	if (crc != snap_crc32c(0, p, len - 4))
		BAD("its CRC-32C does not match its contents (damaged)");
	snapr_init(&r, p, len - 4);
	snapr_bytes(&r, 8, "magic");
	if ((i = snapr_u32(&r, "version")) != SNAP_WS_VERSION)
		BAD("version %u, this kiln-vmm reads version %u", i, SNAP_WS_VERSION);
	snapr_copy(&r, got_id, 16, "snapshot id");
	if (memcmp(got_id, id, 16))
		BAD("recorded for another snapshot (its id is not the state's): record it again");
	if (snapr_u64(&r, "memory size") != mem_size)
		BAD("recorded for a guest with another memory size");
	if (snapr_u32(&r, "page size") != SNAP_WS_PAGE)
		BAD("page size is not %u", SNAP_WS_PAGE);
	n = snapr_u32(&r, "range count");
	if (!snapr_ok(&r) || (uint64_t)n * WS_RANGE != snapr_left(&r))
		BAD("%u ranges do not fill the file's %zu bytes", n, snapr_left(&r));
	if (n > npages)
		BAD("%u ranges, more than the guest's %llu pages", n, (unsigned long long)npages);
	if (n && !(ws->r = malloc((size_t)n * sizeof(*ws->r))))
		BAD("out of memory");
	for (i = 0; i < n; i++) {
		struct snap_ws_range *x = &ws->r[i];

		x->page = snapr_u64(&r, "range start");
		x->npages = snapr_u32(&r, "range length");
		x->flags = snapr_u32(&r, "range flags");
		if (x->flags != SNAP_WS_READ && x->flags != SNAP_WS_WRITE)
			BAD("range %u: flags %#x, not read (1) or written (2)", i, x->flags);
		if (!x->npages || x->page < next || x->page > npages || x->npages > npages - x->page)
			BAD("range %u (pages %llu+%u): empty, out of order, overlapping or beyond the guest's %llu pages",
			    i, (unsigned long long)x->page, x->npages, (unsigned long long)npages);
		next = x->page + x->npages;
		ws->pages[x->flags] += x->npages;
	}
	ws->n = ws->cap = n;
	return 0;
bad:
	snap_ws_free(ws);
	return -EINVAL;
}

int snap_ws_prefetch(const struct vm *vm, const struct snap_ws *ws, int *pre_faulted)
{
	const struct guest_mem *mem = &vm->mem;
	/* KVM's pre-fault brings a page into kiln-vmm's page tables itself, as a read. */
	int kvm_maps = vm->fd >= 0 && vm_can_pre_fault(vm);
	uint32_t i;
	int ret = 0;

	*pre_faulted = 0;

	for (i = 0; i < ws->n; i++) {
		const struct snap_ws_range *x = &ws->r[i];
		uint8_t *p = mem->host + x->page * SNAP_WS_PAGE;
		size_t len = (size_t)x->npages * SNAP_WS_PAGE;
		uint64_t k;

		if (x->page * SNAP_WS_PAGE + len > mem->size)
			return -EINVAL;	/* (snap_ws_parse refused such a range) */
		if (kvm_maps && x->flags != SNAP_WS_WRITE)
			continue;
		if (madvise(p, len, x->flags == SNAP_WS_WRITE ? MADV_POPULATE_WRITE : MADV_POPULATE_READ) == 0)
			continue;
		if (errno != EINVAL) {
			ret = -errno;
			continue;
		}
		/* A kernel before 5.14: touch each page (nothing runs in the guest yet). */
		for (k = 0; k < len; k += SNAP_WS_PAGE) {
			volatile uint8_t *b = p + k;
			uint8_t v = *b;

			if (x->flags == SNAP_WS_WRITE)
				*b = v;
		}
	}
	if (ret || !kvm_maps)
		return ret;
	for (i = 0; i < ws->n && !ret; i++)
		ret = vm_pre_fault(vm, ws->r[i].page * SNAP_WS_PAGE, (uint64_t)ws->r[i].npages * SNAP_WS_PAGE);
	*pre_faulted = !ret;
	return ret;
}

int snap_ws_save(const char *dir, const struct snap_ws *ws, const uint8_t id[16], uint64_t mem_size,
		 struct kiln_err *err)
{
	char tmp[4200], path[4200];
	uint8_t *buf = NULL;
	size_t len, off = 0;
	int fd, r = 0;

	if (snap_ws_encode(ws, id, mem_size, &buf, &len) < 0)
		return kiln_fail(err, ENOMEM, "out of memory");
	snprintf(path, sizeof(path), "%s/" SNAP_WS_FILE, dir);
	snprintf(tmp, sizeof(tmp), "%s/." SNAP_WS_FILE ".%d", dir, (int)getpid());
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		r = kiln_fail(err, errno, "%s: %s", tmp, strerror(errno));
		goto out;
	}
	while (off < len && !r) {
		ssize_t n = write(fd, buf + off, len - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			r = kiln_fail(err, n < 0 ? errno : EIO, "%s: %s", tmp, n < 0 ? strerror(errno) : "short write");
		else
			off += (size_t)n;
	}
	if (!r && fsync(fd) < 0)
		r = kiln_fail(err, errno, "%s: %s", tmp, strerror(errno));
	close(fd);
	if (!r && rename(tmp, path) < 0)
		r = kiln_fail(err, errno, "%s: %s", path, strerror(errno));
	if (r)
		unlink(tmp);
out:
	free(buf);
	return r;
}
