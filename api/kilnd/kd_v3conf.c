/*
 * The Deno SDK's create config as kiln's create body (kd_v3conf.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "kd_v3conf.h"

/* ISO-8859-1 bytes to UTF-8 (btoa's input is Latin-1 code units, §2.2). */
static char *latin1_to_utf8(const unsigned char *p, size_t n)
{
	char *o = malloc(2 * n + 1), *q = o;

	if (!o)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		if (p[i] < 0x80) {
			*q++ = (char)p[i];
		} else {
			*q++ = (char)(0xc0 | p[i] >> 6);
			*q++ = (char)(0x80 | (p[i] & 0x3f));
		}
	}
	*q = '\0';
	return o;
}

/*
 * The SDK's config (§2.2) as kiln's create body (sched_spec_from_json):
 * memory_mb, labels, allow_net and secrets as they are; volumes from
 * [{volume, path}] to {path: volume}; root's volume as the image; and
 * stop_at_ms, a deadline on the client's clock, as a timeout from now.
 * Keys kiln does not know are left out, so a newer SDK still creates.
 */
static json_t *config_to_spec(json_t *c, uint64_t now_ms, char *msg, size_t n)
{
	json_t *o = json_object(), *v;

	if (!json_is_object(c)) {
		snprintf(msg, n, "x-deno-sandbox-config must hold a JSON object");
		json_decref(o);
		return NULL;
	}
	static const char *const same[] = { "memory_mb", "labels", "allow_net", "secrets" };
	for (size_t i = 0; i < sizeof(same) / sizeof(same[0]); i++)
		if ((v = json_object_get(c, same[i])) && !json_is_null(v))
			json_object_set(o, same[i], v);
	if ((v = json_object_get(c, "volumes")) && !json_is_null(v)) {
		json_t *vols, *e;
		size_t i;

		if (!json_is_array(v)) {
			snprintf(msg, n, "volumes must be an array of {\"volume\", \"path\"}");
			goto bad;
		}
		vols = json_object();
		json_array_foreach(v, i, e) {
			json_t *vol = json_object_get(e, "volume"), *path = json_object_get(e, "path");

			if (!json_is_string(vol) || !json_is_string(path)) {
				snprintf(msg, n, "volumes[%zu] must be {\"volume\": NAME, \"path\": MOUNT_PATH}", i);
				json_decref(vols);
				goto bad;
			}
			json_object_set(vols, json_string_value(path), vol);
		}
		if (json_object_size(vols))
			json_object_set_new(o, "volumes", vols);
		else
			json_decref(vols);
	}
	if ((v = json_object_get(c, "root")) && !json_is_null(v)) {
		json_t *vol = json_object_get(v, "volume");

		if (!json_is_string(vol)) {
			snprintf(msg, n, "root must be {\"volume\": IMAGE}");
			goto bad;
		}
		json_object_set(o, "root", vol);
	}
	v = json_object_get(c, "stop_at_ms");
	if (v && !json_is_null(v)) {
		int64_t now = (int64_t)now_ms, at;
		char t[32];

		if (!json_is_integer(v) && !json_is_real(v)) {
			snprintf(msg, n, "stop_at_ms must be a number (ms since the epoch)");
			goto bad;
		}
		at = json_is_integer(v) ? json_integer_value(v) : (int64_t)json_real_value(v);
		if (at <= now) {
			snprintf(msg, n, "stop_at_ms %lld is not in the future (kilnd's clock says %lld): check the "
				 "client's clock", (long long)at, (long long)now);
			goto bad;
		}
		snprintf(t, sizeof(t), "%lldms", (long long)(at - now));
		json_object_set_new(o, "timeout", json_string(t));
	} else {
		json_object_set_new(o, "timeout", json_string("session"));
	}
	return o;
bad:
	json_decref(o);
	return NULL;
}

long kd_b64_decode(const char *s, size_t len, unsigned char *out)
{
	int k;

	if (len % 4 || len > (size_t)1 << 30)
		return -1;
	k = len ? EVP_DecodeBlock(out, (const unsigned char *)s, (int)len) : 0;
	if (k < 0)
		return -1;
	/* EVP_DecodeBlock counts the padding as zero bytes. */
	return k - (len >= 1 && s[len - 1] == '=') - (len >= 2 && s[len - 2] == '=');
}

json_t *kd_b64_json(const void *p, size_t n)
{
	char *b = malloc(4 * ((n + 2) / 3) + 1);
	json_t *j;

	if (!b)
		return NULL;
	EVP_EncodeBlock((unsigned char *)b, p, (int)n);
	j = json_string(b);
	free(b);
	return j;
}

json_t *kd_v3_config_spec(const char *hdr, size_t len, uint64_t now_ms, char *msg, size_t n)
{
	unsigned char *raw = malloc(len / 4 * 3 + 3);
	char *text = NULL;
	json_error_t je;
	json_t *cfg = NULL, *spec = NULL;
	long k;

	if (!raw) {
		snprintf(msg, n, "out of memory");
		return NULL;
	}
	k = kd_b64_decode(hdr, len, raw);
	if (k < 0) {
		snprintf(msg, n, "x-deno-sandbox-config is not base64");
		goto out;
	}
	text = latin1_to_utf8(raw, (size_t)k);
	cfg = text ? json_loadb(text, strlen(text), JSON_REJECT_DUPLICATES, &je) : NULL;
	if (!cfg) {
		snprintf(msg, n, "x-deno-sandbox-config is not JSON: %s", text ? je.text : "out of memory");
		goto out;
	}
	/* A NUL inside is the end of the text for JSON: what follows it is not the config. */
	if (strlen(text) != (size_t)k) {
		snprintf(msg, n, "x-deno-sandbox-config holds a NUL byte");
		goto out;
	}
	spec = config_to_spec(cfg, now_ms, msg, n);
out:
	json_decref(cfg);
	free(text);
	free(raw);
	return spec;
}
