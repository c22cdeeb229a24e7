/*
 * A snapshot's working set (docs/snapshot.md, "workingset"): the pages of
 * guest memory a clone touches between its restore and its first exec,
 * recorded once per template, so that the next restores can bring them in
 * as one batch before the vCPUs run instead of one fault at a time.
 *
 *   workingset   "KILNWSET", version, the snapshot's id, guest memory size,
 *                page size, then sorted ranges of pages, each marked read
 *                (shared with the page cache) or written (the clone's own
 *                copy), and a CRC-32C
 *
 * The file is hostile input like every snapshot file: one that does not
 * match its state (id, memory size) or whose ranges are unsorted,
 * overlapping or outside guest memory is refused.
 */
#ifndef KILN_WORKINGSET_H
#define KILN_WORKINGSET_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "vmm.h"

#define SNAP_WS_FILE		"workingset"
#define SNAP_WS_MAGIC		"KILNWSET"
#define SNAP_WS_VERSION		1
#define SNAP_WS_PAGE		4096u
#define SNAP_WS_READ		1u	/* the page was only read: map the file's page */
#define SNAP_WS_WRITE		2u	/* the page was written: the clone's own copy */

/* How a restore brings guest memory in (kiln-vmm --prefetch). */
enum snap_prefetch {
	SNAP_PREFETCH_AUTO,	/* the working set if the snapshot has one, else none */
	SNAP_PREFETCH_NONE,	/* fault each page in when the guest first touches it */
	SNAP_PREFETCH_WS,	/* the recorded working set (an error if there is none) */
	SNAP_PREFETCH_ALL,	/* every page the memory file holds data for */
};

struct snap_ws_range {
	uint64_t page;		/* first page: offset in the memory file / 4096 */
	uint32_t npages;
	uint32_t flags;		/* SNAP_WS_READ or SNAP_WS_WRITE */
};

struct snap_ws {
	struct snap_ws_range *r;
	uint32_t n, cap;
	uint64_t pages[3];	/* pages by flag: [SNAP_WS_READ], [SNAP_WS_WRITE] */
};

/* Parse --prefetch's argument: 0, or -EINVAL. */
int snap_prefetch_parse(const char *s, enum snap_prefetch *out);
const char *snap_prefetch_name(enum snap_prefetch p);

/*
 * The pages of mem this process has mapped now (/proc/self/pagemap): a
 * private page (the guest wrote it) is SNAP_WS_WRITE, a page of the file
 * SNAP_WS_READ. Fills ws (free with snap_ws_free). 0, or -errno with err.
 */
int snap_ws_record(const struct guest_mem *mem, struct snap_ws *ws, struct kiln_err *err);

/*
 * The data extents of the memory file fd (SEEK_DATA/SEEK_HOLE) below
 * mem_size, as SNAP_WS_READ ranges: what --prefetch all brings in.
 */
int snap_ws_from_extents(int fd, uint64_t mem_size, struct snap_ws *ws, struct kiln_err *err);

/* ws as a working-set file's bytes for snapshot id with mem_size of RAM. 0, or -ENOMEM. */
int snap_ws_encode(const struct snap_ws *ws, const uint8_t id[16], uint64_t mem_size, uint8_t **out, size_t *len);

/*
 * Check and parse a working-set file's bytes against its snapshot (id,
 * mem_size). 0, or -EINVAL with msg saying what is wrong.
 */
int snap_ws_parse(const void *p, size_t len, const uint8_t id[16], uint64_t mem_size, struct snap_ws *ws,
		  char *msg, size_t msglen);

/*
 * Bring ws's pages of vm's memory in: written ranges as the clone's own
 * copies (MADV_POPULATE_WRITE), read ranges mapped from the page cache
 * (MADV_POPULATE_READ), so memory the clones only read stays shared; then,
 * where KVM can (vm_can_pre_fault), into KVM's page tables too, so the
 * guest's first touches take no exit. Before the vCPUs run. 0, or -errno
 * (the guest then faults the pages in itself). *pre_faulted: whether KVM's
 * page tables were filled.
 */
int snap_ws_prefetch(const struct vm *vm, const struct snap_ws *ws, int *pre_faulted);

/*
 * Write ws as DIR/workingset for snapshot id (mem_size of RAM), owner-only,
 * whole or not at all (a temporary file renamed into place). 0, or -errno.
 */
int snap_ws_save(const char *dir, const struct snap_ws *ws, const uint8_t id[16], uint64_t mem_size,
		 struct kiln_err *err);

void snap_ws_free(struct snap_ws *ws);

#endif
