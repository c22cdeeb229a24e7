/*
 * The snapshot state file's container: a header, tagged sections, and a
 * CRC-32C over everything. Writers append little-endian fields to a growing
 * buffer; readers walk a byte range with every read bounds-checked, so a
 * truncated or hostile file is an error, never an overrun. The layout of the
 * sections themselves belongs to whoever saves them (vmm/vmstate.c for KVM
 * state, devices/ for device state); docs/snapshot.md describes the whole.
 */
#ifndef KILN_SNAPFILE_H
#define KILN_SNAPFILE_H

#include <stddef.h>
#include <stdint.h>

#define SNAP_MAGIC		"KILNSNAP"
#define SNAP_MAGIC_LEN		8
#define SNAP_VERSION		2	/* 2: the snapshot id in META, the memory file's trailer */
#define SNAP_HEADER_LEN		24	/* magic, version, section count, body length */
#define SNAP_SECTION_HDR	12	/* tag, length */
#define SNAP_TRAILER_LEN	4	/* CRC-32C of every byte before it */
#define SNAP_MAX_FILE		(64u << 20)
#define SNAP_MAX_SECTIONS	256

/* Section tags (u32). Unknown tags are refused: a newer format is a new version. */
enum snap_tag {
	SNAP_SEC_META = 1,	/* host CPU, memory size, vCPU count, kernel digest */
	SNAP_SEC_VM = 2,	/* PIC, IOAPIC, PIT, kvmclock */
	SNAP_SEC_VCPU = 3,	/* one per vCPU, in order */
	SNAP_SEC_SERIAL = 4,	/* the 16550A */
	SNAP_SEC_DEVICE = 5,	/* one per virtio device, in MMIO order */
};

/* A growing output buffer. Allocation failure is sticky: checked once at the end. */
struct snap_buf {
	uint8_t *p;
	size_t len, cap;
	int oom;
};

void snapw_init(struct snap_buf *w);
void snapw_free(struct snap_buf *w);
void snapw_bytes(struct snap_buf *w, const void *p, size_t n);
void snapw_u8(struct snap_buf *w, uint8_t v);
void snapw_u16(struct snap_buf *w, uint16_t v);
void snapw_u32(struct snap_buf *w, uint32_t v);
void snapw_u64(struct snap_buf *w, uint64_t v);
/* A u32 length, then the bytes: for strings and variable blobs. */
void snapw_blob(struct snap_buf *w, const void *p, uint32_t n);

/* Start a file: the header, with counts patched by snapw_finish. */
void snapw_begin_file(struct snap_buf *w);
/* Start a section; returns a mark for snapw_section_end. */
size_t snapw_section_begin(struct snap_buf *w, uint32_t tag);
void snapw_section_end(struct snap_buf *w, size_t mark);
/* Patch the header and append the CRC. Returns 0, or -ENOMEM if any append failed. */
int snapw_finish(struct snap_buf *w);

/*
 * A bounded reader. The first failed read sets err (a message naming what
 * was being read) and every later read fails too, so a parser may check
 * once at the end of a group of reads.
 */
struct snap_rd {
	const uint8_t *p;
	size_t len, off;
	char err[256];
};

void snapr_init(struct snap_rd *r, const void *p, size_t len);
int snapr_ok(const struct snap_rd *r);
/* Record the first error (what, and why) and make the reader fail from now on. */
int snapr_fail(struct snap_rd *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Bytes left to read. */
size_t snapr_left(const struct snap_rd *r);
/* Pointer to the next n bytes (NULL and an error naming what if fewer are left). */
const void *snapr_bytes(struct snap_rd *r, size_t n, const char *what);
int snapr_copy(struct snap_rd *r, void *dst, size_t n, const char *what);
uint8_t snapr_u8(struct snap_rd *r, const char *what);
uint16_t snapr_u16(struct snap_rd *r, const char *what);
uint32_t snapr_u32(struct snap_rd *r, const char *what);
uint64_t snapr_u64(struct snap_rd *r, const char *what);
/* A blob written by snapw_blob, at most max bytes; *n gets its length. */
const void *snapr_blob(struct snap_rd *r, uint32_t max, uint32_t *n, const char *what);
/* A blob that must be a string of at most max-1 bytes without NUL; copied with a NUL. */
int snapr_str(struct snap_rd *r, char *dst, size_t max, const char *what);
/* Every byte consumed? Otherwise an error: trailing bytes in what. */
int snapr_end(struct snap_rd *r, const char *what);

/*
 * Check a whole state file: length, magic, version, CRC, and that the
 * sections tile the body exactly. On success *body covers the sections and
 * *nsections their count. Returns 0, or -EINVAL with err set.
 */
int snap_file_open(const void *p, size_t len, struct snap_rd *body, uint32_t *nsections,
		   char *err, size_t errlen);

/* The next section: its tag and a reader over exactly its bytes. 0, or -EINVAL. */
int snap_next_section(struct snap_rd *body, uint32_t *tag, struct snap_rd *sec);

/* CRC-32C (Castagnoli), as iSCSI and ext4 use it. */
uint32_t snap_crc32c(uint32_t crc, const void *p, size_t n);

#endif
