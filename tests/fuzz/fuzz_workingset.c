/*
 * libFuzzer target: arbitrary bytes as a snapshot's working-set file.
 * snap_ws_parse must refuse or accept, never read past the buffer or leak,
 * and what it accepts must lie inside guest memory, sorted and disjoint (so
 * snap_ws_prefetch never touches a page outside the mapping). Like
 * fuzz_snapshot, each input is parsed again with its CRC made right, so the
 * range checks behind the CRC get fuzzed too.
 */
#include <stdlib.h>
#include <string.h>

#include "snapfile.h"
#include "workingset.h"

static const uint8_t id[16] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 };
#define MEM (256ULL << 20)

static void parse_one(const uint8_t *p, size_t n)
{
	struct snap_ws ws;
	char msg[256];
	uint64_t next = 0;
	uint32_t i;

	if (snap_ws_parse(p, n, id, MEM, &ws, msg, sizeof(msg)) < 0)
		return;
	for (i = 0; i < ws.n; i++) {
		if (ws.r[i].page < next || ws.r[i].npages == 0 ||
		    (ws.r[i].page + ws.r[i].npages) * SNAP_WS_PAGE > MEM)
			abort();
		next = ws.r[i].page + ws.r[i].npages;
	}
	snap_ws_free(&ws);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *copy;
	uint32_t crc;

	parse_one(data, size);
	if (size < 4 + 8 || !(copy = malloc(size)))
		return 0;
	memcpy(copy, data, size);
	/* Its own id and magic, and the right CRC: on to the ranges. */
	memcpy(copy, SNAP_WS_MAGIC, 8);
	if (size >= 12 + 16 + 4)
		memcpy(copy + 12, id, 16);
	crc = snap_crc32c(0, copy, size - 4);
	memcpy(copy + size - 4, &crc, 4);
	parse_one(copy, size);
	free(copy);
	return 0;
}
