/*
 * base64url without padding (RFC 4648 section 5): how kiln-vmm hands the
 * guest command to the init through the kernel command line. Header-only so
 * that the static init and the VMM share one implementation.
 */
#ifndef KILN_BASE64_H
#define KILN_BASE64_H

#include <stddef.h>
#include <stdint.h>

static const char b64url_alphabet[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* Length of the encoding of n bytes, without the terminating NUL. */
static inline size_t b64url_encoded_len(size_t n)
{
	return n / 3 * 4 + (n % 3 ? n % 3 + 1 : 0);
}

/* Encode n bytes of src into dst (b64url_encoded_len(n) + 1 bytes). */
static inline void b64url_encode(const uint8_t *src, size_t n, char *dst)
{
	size_t i, o = 0;

	for (i = 0; i + 2 < n; i += 3) {
		uint32_t v = (uint32_t)src[i] << 16 | (uint32_t)src[i + 1] << 8 | src[i + 2];
		dst[o++] = b64url_alphabet[v >> 18 & 63];
		dst[o++] = b64url_alphabet[v >> 12 & 63];
		dst[o++] = b64url_alphabet[v >> 6 & 63];
		dst[o++] = b64url_alphabet[v & 63];
	}
	if (n - i == 1) {
		uint32_t v = (uint32_t)src[i] << 16;
		dst[o++] = b64url_alphabet[v >> 18 & 63];
		dst[o++] = b64url_alphabet[v >> 12 & 63];
	} else if (n - i == 2) {
		uint32_t v = (uint32_t)src[i] << 16 | (uint32_t)src[i + 1] << 8;
		dst[o++] = b64url_alphabet[v >> 18 & 63];
		dst[o++] = b64url_alphabet[v >> 12 & 63];
		dst[o++] = b64url_alphabet[v >> 6 & 63];
	}
	dst[o] = '\0';
}

static inline int b64url_value(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '-')
		return 62;
	if (c == '_')
		return 63;
	return -1;
}

/*
 * Decode n characters of src into dst (room for n * 3 / 4 bytes). Returns the
 * number of bytes written, or -1 on a character outside the alphabet or an
 * impossible length.
 */
static inline long b64url_decode(const char *src, size_t n, uint8_t *dst)
{
	uint32_t acc = 0;
	size_t i, bits = 0, o = 0;

	if (n % 4 == 1)
		return -1;
	for (i = 0; i < n; i++) {
		int v = b64url_value(src[i]);

		if (v < 0)
			return -1;
		acc = acc << 6 | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			dst[o++] = (uint8_t)(acc >> bits);
		}
	}
	return (long)o;
}

#endif
