/*
 * The snapshot container (snapfile.h): little-endian writers into a growing
 * buffer, bounds-checked readers, and the file-level checks that run before
 * any section is interpreted.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "snapfile.h"

/* ---- CRC-32C --------------------------------------------------------------- */

static uint32_t crc_table[8][256];

static void crc_init(void)
{
	uint32_t i, j, c;

	for (i = 0; i < 256; i++) {
		c = i;
		for (j = 0; j < 8; j++)
			c = (c >> 1) ^ (0x82f63b78u & (0u - (c & 1)));
		crc_table[0][i] = c;
	}
	for (i = 0; i < 256; i++)
		for (j = 1; j < 8; j++)
			crc_table[j][i] = (crc_table[j - 1][i] >> 8) ^ crc_table[0][crc_table[j - 1][i] & 0xff];
}

uint32_t snap_crc32c(uint32_t crc, const void *p, size_t n)
{
	static int ready;
	const uint8_t *b = p;

	if (!__atomic_load_n(&ready, __ATOMIC_ACQUIRE)) {
		crc_init();	/* idempotent: a race computes the same table twice */
		__atomic_store_n(&ready, 1, __ATOMIC_RELEASE);
	}
	crc = ~crc;
	/* Slicing by 8: a state file of a few hundred KiB checks in well under a millisecond. */
	while (n >= 8) {
		uint32_t lo = crc ^ ((uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24);

		crc = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
		      crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^
		      crc_table[3][b[4]] ^ crc_table[2][b[5]] ^ crc_table[1][b[6]] ^ crc_table[0][b[7]];
		b += 8;
		n -= 8;
	}
	while (n--)
		crc = (crc >> 8) ^ crc_table[0][(crc ^ *b++) & 0xff];
	return ~crc;
}

/* ---- Writing ----------------------------------------------------------------- */

void snapw_init(struct snap_buf *w)
{
	memset(w, 0, sizeof(*w));
}

void snapw_free(struct snap_buf *w)
{
	free(w->p);
	memset(w, 0, sizeof(*w));
}

static uint8_t *snapw_room(struct snap_buf *w, size_t n)
{
	if (w->oom)
		return NULL;
	if (n > SNAP_MAX_FILE || w->len + n > SNAP_MAX_FILE) {
		w->oom = 1;
		return NULL;
	}
	if (w->len + n > w->cap) {
		size_t cap = w->cap ? w->cap : 4096;
		uint8_t *p;

		while (cap < w->len + n)
			cap *= 2;
		p = realloc(w->p, cap);
		if (!p) {
			w->oom = 1;
			return NULL;
		}
		w->p = p;
		w->cap = cap;
	}
	w->len += n;
	return w->p + w->len - n;
}

void snapw_bytes(struct snap_buf *w, const void *p, size_t n)
{
	uint8_t *d = snapw_room(w, n);

	if (d && n)
		memcpy(d, p, n);
}

static void put_le(uint8_t *d, uint64_t v, int n)
{
	int i;

	for (i = 0; i < n; i++)
		d[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *s, int n)
{
	uint64_t v = 0;
	int i;

	for (i = n - 1; i >= 0; i--)
		v = v << 8 | s[i];
	return v;
}

#define SNAPW_INT(name, type, n)				\
	void name(struct snap_buf *w, type v)			\
	{							\
		uint8_t *d = snapw_room(w, n);			\
		if (d)						\
			put_le(d, v, n);			\
	}
SNAPW_INT(snapw_u8, uint8_t, 1)
SNAPW_INT(snapw_u16, uint16_t, 2)
SNAPW_INT(snapw_u32, uint32_t, 4)
SNAPW_INT(snapw_u64, uint64_t, 8)

void snapw_blob(struct snap_buf *w, const void *p, uint32_t n)
{
	snapw_u32(w, n);
	snapw_bytes(w, p, n);
}

void snapw_begin_file(struct snap_buf *w)
{
	snapw_bytes(w, SNAP_MAGIC, SNAP_MAGIC_LEN);
	snapw_u32(w, SNAP_VERSION);
	snapw_u32(w, 0);	/* sections: patched by snapw_finish */
	snapw_u64(w, 0);	/* body length: patched */
}

size_t snapw_section_begin(struct snap_buf *w, uint32_t tag)
{
	size_t mark = w->len;

	snapw_u32(w, tag);
	snapw_u64(w, 0);
	return mark;
}

void snapw_section_end(struct snap_buf *w, size_t mark)
{
	if (w->oom || mark + SNAP_SECTION_HDR > w->len)
		return;
	put_le(w->p + mark + 4, w->len - mark - SNAP_SECTION_HDR, 8);
	/* The section count lives in the header. */
	put_le(w->p + 12, get_le(w->p + 12, 4) + 1, 4);
}

int snapw_finish(struct snap_buf *w)
{
	if (!w->oom && w->len >= SNAP_HEADER_LEN)
		put_le(w->p + 16, w->len - SNAP_HEADER_LEN, 8);
	if (!w->oom && w->len >= SNAP_HEADER_LEN)
		snapw_u32(w, snap_crc32c(0, w->p, w->len));
	return w->oom || w->len < SNAP_HEADER_LEN ? -ENOMEM : 0;
}

/* ---- Reading ----------------------------------------------------------------- */

void snapr_init(struct snap_rd *r, const void *p, size_t len)
{
	r->p = p;
	r->len = len;
	r->off = 0;
	r->err[0] = '\0';
}

int snapr_ok(const struct snap_rd *r)
{
	return r->err[0] == '\0';
}

int snapr_fail(struct snap_rd *r, const char *fmt, ...)
{
	va_list ap;

	if (snapr_ok(r)) {
		va_start(ap, fmt);
		vsnprintf(r->err, sizeof(r->err), fmt, ap);
		va_end(ap);
		if (!r->err[0])
			snprintf(r->err, sizeof(r->err), "invalid");
	}
	r->off = r->len;
	return -EINVAL;
}

size_t snapr_left(const struct snap_rd *r)
{
	return r->len - r->off;
}

const void *snapr_bytes(struct snap_rd *r, size_t n, const char *what)
{
	const uint8_t *p;

	if (!snapr_ok(r))
		return NULL;
	if (n > r->len - r->off) {
		snapr_fail(r, "%s: truncated (%zu bytes needed, %zu left)", what, n, r->len - r->off);
		return NULL;
	}
	p = r->p + r->off;
	r->off += n;
	return p;
}

int snapr_copy(struct snap_rd *r, void *dst, size_t n, const char *what)
{
	const void *p = snapr_bytes(r, n, what);

	if (!p) {
		memset(dst, 0, n);
		return -EINVAL;
	}
	memcpy(dst, p, n);
	return 0;
}

#define SNAPR_INT(name, type, n)					\
	type name(struct snap_rd *r, const char *what)			\
	{								\
		const uint8_t *p = snapr_bytes(r, n, what);		\
		return p ? (type)get_le(p, n) : 0;			\
	}
SNAPR_INT(snapr_u8, uint8_t, 1)
SNAPR_INT(snapr_u16, uint16_t, 2)
SNAPR_INT(snapr_u32, uint32_t, 4)
SNAPR_INT(snapr_u64, uint64_t, 8)

const void *snapr_blob(struct snap_rd *r, uint32_t max, uint32_t *n, const char *what)
{
	uint32_t len = snapr_u32(r, what);

	*n = 0;
	if (!snapr_ok(r))
		return NULL;
	if (len > max) {
		snapr_fail(r, "%s: %u bytes, more than the limit of %u", what, len, max);
		return NULL;
	}
	*n = len;
	return snapr_bytes(r, len, what);
}

int snapr_str(struct snap_rd *r, char *dst, size_t max, const char *what)
{
	uint32_t n;
	const char *p = snapr_blob(r, max ? (uint32_t)(max - 1) : 0, &n, what);

	dst[0] = '\0';
	if (!p)
		return -EINVAL;
	if (memchr(p, '\0', n))
		return snapr_fail(r, "%s: contains a NUL byte", what);
	memcpy(dst, p, n);
	dst[n] = '\0';
	return 0;
}

int snapr_end(struct snap_rd *r, const char *what)
{
	if (!snapr_ok(r))
		return -EINVAL;
	if (r->off != r->len)
		return snapr_fail(r, "%s: %zu unexpected trailing bytes", what, r->len - r->off);
	return 0;
}

int snap_file_open(const void *p, size_t len, struct snap_rd *body, uint32_t *nsections,
		   char *err, size_t errlen)
{
	const uint8_t *b = p;
	uint32_t version, crc, n;
	uint64_t body_len;

	if (len < SNAP_HEADER_LEN + SNAP_TRAILER_LEN || memcmp(b, SNAP_MAGIC, SNAP_MAGIC_LEN) != 0) {
		if (len >= SNAP_MAGIC_LEN && memcmp(b, SNAP_MAGIC, SNAP_MAGIC_LEN) == 0)
			snprintf(err, errlen, "truncated: %zu bytes, shorter than the header", len);
		else
			snprintf(err, errlen, "not a kiln snapshot state file (bad magic)");
		return -EINVAL;
	}
	version = (uint32_t)get_le(b + 8, 4);
	if (version != SNAP_VERSION) {
		snprintf(err, errlen, "format version %u, this kiln-vmm reads version %u (take the snapshot again with this kiln-vmm)",
			 version, SNAP_VERSION);
		return -EINVAL;
	}
	if (len > SNAP_MAX_FILE) {
		snprintf(err, errlen, "%zu bytes, more than the limit of %u", len, SNAP_MAX_FILE);
		return -EINVAL;
	}
	n = (uint32_t)get_le(b + 12, 4);
	body_len = get_le(b + 16, 8);
	if (body_len != len - SNAP_HEADER_LEN - SNAP_TRAILER_LEN) {
		snprintf(err, errlen, "truncated or padded: the header says %llu bytes of sections, the file has %zu",
			 (unsigned long long)body_len, len - SNAP_HEADER_LEN - SNAP_TRAILER_LEN);
		return -EINVAL;
	}
	crc = (uint32_t)get_le(b + len - SNAP_TRAILER_LEN, 4);
	if (snap_crc32c(0, b, len - SNAP_TRAILER_LEN) != crc) {
		snprintf(err, errlen, "checksum mismatch: the file is damaged");
		return -EINVAL;
	}
	if (n > SNAP_MAX_SECTIONS) {
		snprintf(err, errlen, "%u sections, more than the limit of %u", n, SNAP_MAX_SECTIONS);
		return -EINVAL;
	}
	snapr_init(body, b + SNAP_HEADER_LEN, (size_t)body_len);
	/* The sections must tile the body exactly, before anything reads them. */
	{
		struct snap_rd walk = *body, sec;
		uint32_t tag, i;

		for (i = 0; i < n; i++)
			if (snap_next_section(&walk, &tag, &sec) < 0) {
				snprintf(err, errlen, "section %u: %s", i, walk.err);
				return -EINVAL;
			}
		if (snapr_left(&walk)) {
			snprintf(err, errlen, "%zu bytes after the last of %u sections", snapr_left(&walk), n);
			return -EINVAL;
		}
	}
	*nsections = n;
	return 0;
}

int snap_next_section(struct snap_rd *body, uint32_t *tag, struct snap_rd *sec)
{
	uint64_t n;
	const void *p;

	*tag = snapr_u32(body, "section header");
	n = snapr_u64(body, "section header");
	if (!snapr_ok(body))
		return -EINVAL;
	if (*tag < SNAP_SEC_META || *tag > SNAP_SEC_DEVICE)
		return snapr_fail(body, "unknown section tag %u", *tag);
	if (n > snapr_left(body))
		return snapr_fail(body, "section of %llu bytes runs past the end of the file",
				  (unsigned long long)n);
	p = snapr_bytes(body, (size_t)n, "section");
	snapr_init(sec, p, (size_t)n);
	return p || n == 0 ? 0 : -EINVAL;
}
