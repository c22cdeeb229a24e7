/*
 * The Deno SDK's create config (shared/deno-sandbox-protocol.md §2.2): the
 * x-deno-sandbox-config header, base64 of JSON whose bytes are Latin-1
 * code units (btoa), as kiln's create body. Pure, so that a fuzzer drives it
 * (tests/fuzz/fuzz_v3conf.c) with the parser of kiln's create body after it.
 */
#ifndef KILN_KD_V3CONF_H
#define KILN_KD_V3CONF_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

/*
 * hdr (len bytes, need not be NUL-terminated) to kiln's create body as a
 * JSON object (the caller decrefs it), with a stop_at_ms deadline made a
 * timeout from now_ms; NULL with a message for the SDK's user in msg.
 */
json_t *kd_v3_config_spec(const char *hdr, size_t len, uint64_t now_ms, char *msg, size_t n);

/*
 * Standard base64 with padding, the encoding of every byte string of the
 * protocol (§4.5): len characters at s into out, which has room for
 * len / 4 * 3 + 3 bytes. The byte count, or -1 if s is not base64.
 */
long kd_b64_decode(const char *s, size_t len, unsigned char *out);
/* n bytes as a base64 JSON string (NULL when out of memory). */
json_t *kd_b64_json(const void *p, size_t n);

#endif
