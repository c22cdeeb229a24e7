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

#endif
