/*
 * A snapshot's working set (snapshot/workingset.c): recorded from what a
 * process has mapped of a MAP_PRIVATE memory file, written and read back,
 * refused when it does not fit its snapshot, and brought in by prefetch
 * without turning pages the clone only reads into private copies.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "snapfile.h"
#include "workingset.h"
#include "unit.h"

#define WS_MEM (32ULL << 20)
static const uint8_t id_a[16] = { 0xa };
static const uint8_t id_b[16] = { 0xb };

/* A memory file of WS_MEM bytes, every page holding data, mapped as a restore maps it. */
static int map_file(struct guest_mem *m, char *path)
{
	static uint8_t page[SNAP_WS_PAGE];
	uint64_t off;
	int fd;

	strcpy(path, "/tmp/kiln-ws-XXXXXX");
	fd = mkstemp(path);
	ck_assert_int_ge(fd, 0);
	memset(page, 0x5a, sizeof(page));
	for (off = 0; off < WS_MEM; off += SNAP_WS_PAGE)
		ck_assert_int_eq(pwrite(fd, page, sizeof(page), (off_t)off), (ssize_t)sizeof(page));
	memset(m, 0, sizeof(*m));
	m->host = mmap(NULL, WS_MEM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
	ck_assert_ptr_ne(m->host, MAP_FAILED);
	m->size = WS_MEM;
	return fd;
}

/* Whether page p of m is the process's own (anonymous) copy, per pagemap. */
static int page_state(const struct guest_mem *m, uint64_t p, int *present, int *file)
{
	uint64_t e;
	int fd = open("/proc/self/pagemap", O_RDONLY);

	if (fd < 0)
		return -1;
	if (pread(fd, &e, 8, (off_t)(((uintptr_t)m->host / SNAP_WS_PAGE + p) * 8)) != 8) {
		close(fd);
		return -1;
	}
	close(fd);
	*present = !!(e >> 63 & 1);
	*file = !!(e >> 61 & 1);
	return 0;
}

START_TEST(ws_record_read_and_written)
{
	struct guest_mem m;
	struct snap_ws ws;
	struct kiln_err err;
	char path[64];
	volatile uint8_t sink;
	int fd = map_file(&m, path);
	uint32_t i;

	/* Fault-around may map neighbours of a read page: only check what was touched. */
	sink = m.host[100 * SNAP_WS_PAGE];
	sink = m.host[101 * SNAP_WS_PAGE];
	(void)sink;
	m.host[5000 * SNAP_WS_PAGE] = 1;
	m.host[5001 * SNAP_WS_PAGE] = 2;
	ck_assert_int_eq(snap_ws_record(&m, &ws, &err), 0);
	ck_assert_uint_ge(ws.pages[SNAP_WS_READ], 2);
	ck_assert_uint_eq(ws.pages[SNAP_WS_WRITE], 2);
	{
		int read_seen = 0, write_seen = 0;

		for (i = 0; i < ws.n; i++) {
			const struct snap_ws_range *r = &ws.r[i];

			if (r->flags == SNAP_WS_READ && r->page <= 100 && r->page + r->npages >= 102)
				read_seen = 1;
			if (r->flags == SNAP_WS_WRITE && r->page == 5000 && r->npages == 2)
				write_seen = 1;
			if (i)
				ck_assert_uint_ge(r->page, ws.r[i - 1].page + ws.r[i - 1].npages);
		}
		ck_assert(read_seen && write_seen);
	}
	snap_ws_free(&ws);
	munmap(m.host, WS_MEM);
	close(fd);
	unlink(path);
}
END_TEST

START_TEST(ws_roundtrip_and_refusals)
{
	struct snap_ws_range r[] = { { 0, 16, SNAP_WS_READ }, { 16, 4, SNAP_WS_WRITE }, { 8000, 192, SNAP_WS_READ } };
	struct snap_ws ws = { .r = r, .n = 3 }, got;
	uint8_t *buf;
	size_t len;
	char msg[256];
	uint32_t crc;

	ck_assert_int_eq(snap_ws_encode(&ws, id_a, WS_MEM, &buf, &len), 0);
	ck_assert_int_eq(snap_ws_parse(buf, len, id_a, WS_MEM, &got, msg, sizeof(msg)), 0);
	ck_assert_uint_eq(got.n, 3);
	ck_assert_uint_eq(got.pages[SNAP_WS_READ], 208);
	ck_assert_uint_eq(got.pages[SNAP_WS_WRITE], 4);
	ck_assert_uint_eq(got.r[2].page, 8000);
	snap_ws_free(&got);

	/* Another snapshot's, another memory size, a flipped bit. */
	ck_assert_int_eq(snap_ws_parse(buf, len, id_b, WS_MEM, &got, msg, sizeof(msg)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(msg, "another snapshot"));
	ck_assert_int_eq(snap_ws_parse(buf, len, id_a, WS_MEM * 2, &got, msg, sizeof(msg)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(msg, "memory size"));
	buf[50] ^= 1;
	ck_assert_int_eq(snap_ws_parse(buf, len, id_a, WS_MEM, &got, msg, sizeof(msg)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(msg, "CRC"));
	buf[50] ^= 1;
	ck_assert_int_eq(snap_ws_parse(buf, len - 1, id_a, WS_MEM, &got, msg, sizeof(msg)), -EINVAL);
	free(buf);

	/* Overlapping, beyond guest memory, bad flags: refused even with a right CRC. */
	{
		struct snap_ws_range bad[][2] = {
			{ { 0, 16, SNAP_WS_READ }, { 8, 4, SNAP_WS_WRITE } },
			{ { 0, 1, SNAP_WS_READ }, { WS_MEM / SNAP_WS_PAGE - 1, 2, SNAP_WS_READ } },
			{ { 0, 1, SNAP_WS_READ }, { 4, 1, 3 } },
			{ { 0, 1, SNAP_WS_READ }, { 4, 0, SNAP_WS_READ } },
		};
		unsigned k;

		for (k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
			struct snap_ws b = { .r = bad[k], .n = 2 };

			ck_assert_int_eq(snap_ws_encode(&b, id_a, WS_MEM, &buf, &len), 0);
			memcpy(&crc, buf + len - 4, 4);
			ck_assert_uint_eq(crc, snap_crc32c(0, buf, len - 4));
			ck_assert_int_eq(snap_ws_parse(buf, len, id_a, WS_MEM, &got, msg, sizeof(msg)), -EINVAL);
			ck_assert_ptr_nonnull(strstr(msg, "range 1"));
			free(buf);
		}
	}
}
END_TEST

START_TEST(ws_prefetch_keeps_read_pages_shared)
{
	struct snap_ws_range r[] = { { 10, 4, SNAP_WS_READ }, { 20, 2, SNAP_WS_WRITE } };
	struct snap_ws ws = { .r = r, .n = 2 };
	static struct vm vm;	/* no KVM here: the host side only */
	struct guest_mem m;
	char path[64];
	int fd = map_file(&m, path), present, file, pre = -1;

	vm.fd = -1;
	vm.mem = m;
	ck_assert_int_eq(page_state(&m, 11, &present, &file), 0);
	ck_assert_int_eq(present, 0);
	ck_assert_int_eq(snap_ws_prefetch(&vm, &ws, &pre), 0);
	ck_assert_int_eq(pre, 0);
	ck_assert_int_eq(page_state(&m, 11, &present, &file), 0);
	ck_assert(present && file);		/* the page cache's page: still shared */
	ck_assert_int_eq(page_state(&m, 21, &present, &file), 0);
	ck_assert(present && !file);		/* the clone's own copy */
	ck_assert_uint_eq(m.host[21 * SNAP_WS_PAGE], 0x5a);	/* with the file's bytes */
	munmap(m.host, WS_MEM);
	close(fd);
	unlink(path);
}
END_TEST

START_TEST(ws_from_extents_skips_holes)
{
	struct snap_ws ws;
	struct kiln_err err;
	uint8_t page[SNAP_WS_PAGE];
	char path[] = "/tmp/kiln-ws-XXXXXX";
	int fd = mkstemp(path);

	ck_assert_int_ge(fd, 0);
	memset(page, 1, sizeof(page));
	ck_assert_int_eq(ftruncate(fd, (off_t)WS_MEM + SNAP_WS_PAGE), 0);
	ck_assert_int_eq(pwrite(fd, page, sizeof(page), 0), (ssize_t)sizeof(page));
	ck_assert_int_eq(pwrite(fd, page, sizeof(page), 1 << 20), (ssize_t)sizeof(page));
	/* the trailer page past guest memory is not guest memory */
	ck_assert_int_eq(pwrite(fd, page, sizeof(page), (off_t)WS_MEM), (ssize_t)sizeof(page));
	ck_assert_int_eq(snap_ws_from_extents(fd, WS_MEM, &ws, &err), 0);
	ck_assert_uint_ge(ws.n, 1);
	ck_assert_uint_eq(ws.r[0].page, 0);
	/* A filesystem may report a hole as data, never data as a hole. */
	ck_assert_uint_le(ws.r[ws.n - 1].page + ws.r[ws.n - 1].npages, WS_MEM / SNAP_WS_PAGE);
	snap_ws_free(&ws);
	close(fd);
	unlink(path);
}
END_TEST

Suite *suite_workingset(void)
{
	Suite *s = suite_create("workingset");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, ws_record_read_and_written);
	tcase_add_test(tc, ws_roundtrip_and_refusals);
	tcase_add_test(tc, ws_prefetch_keeps_read_pages_shared);
	tcase_add_test(tc, ws_from_extents_skips_holes);
	suite_add_tcase(s, tc);
	return s;
}
