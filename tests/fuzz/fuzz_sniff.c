/*
 * libFuzzer target: what kilnd's egress proxy reads from a guest's new TCP
 * connection before it knows where it goes (api/kilnd/kd_sniff.c): a TLS
 * ClientHello's server name through OpenSSL, or an HTTP request's Host
 * through http-parser. Each input is the first bytes of one connection.
 * A name that comes out must be a lower-case host name or IP literal that
 * fits; a refusal must say why in one printable line; and the proxy calls
 * again as bytes arrive, so a prefix that already decided must decide the
 * same as the whole. Seeds (real ClientHellos, HTTP requests, garbage):
 * tests/fuzz/corpus/fuzz_sniff/.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kd_sniff.h"

#define CHECK(c)                                                                     \
	do {                                                                         \
		if (!(c)) {                                                          \
			fprintf(stderr, "fuzz_sniff: %s fails\n", #c);               \
			abort();                                                     \
		}                                                                    \
	} while (0)

struct result {
	enum kd_sniff r;
	char host[256];
	uint16_t port;
	char why[128];
};

static void sniff(const uint8_t *data, size_t size, struct result *out)
{
	const char *p;

	memset(out, 0x5a, sizeof(*out));
	out->r = kd_sniff(data, size, out->host, sizeof(out->host), &out->port, out->why, sizeof(out->why));
	switch (out->r) {
	case KD_SNIFF_TLS:
	case KD_SNIFF_HTTP:
		CHECK(out->host[0] != '\0' && strlen(out->host) <= 253);
		CHECK(out->host[strlen(out->host) - 1] != '.');
		for (p = out->host; *p; p++)
			CHECK((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '.' || *p == '-' ||
			      *p == '_' || *p == ':');
		CHECK(out->r == KD_SNIFF_HTTP || out->port == 0);
		break;
	case KD_SNIFF_MORE:
		CHECK(out->host[0] == '\0' && out->port == 0);
		break;
	case KD_SNIFF_NONE:
		CHECK(out->host[0] == '\0' && out->port == 0);
		CHECK(out->why[0] != '\0');
		for (p = out->why; *p; p++)
			CHECK(*p >= 0x20 && *p <= 0x7e);
		break;
	default:
		CHECK(!"kd_sniff returned no kd_sniff value");
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct result full, part;
	char tiny[4];
	uint16_t port;
	size_t k;

	sniff(data, size, &full);

	/* The proxy calls again as bytes come: a prefix that decided decides as the whole does. */
	for (k = 1; k < size; k = k * 2 + 1) {
		sniff(data, k, &part);
		if (part.r != KD_SNIFF_MORE) {
			CHECK(part.r == full.r);
			CHECK(strcmp(part.host, full.host) == 0 && part.port == full.port);
		}
	}
	if (size > 1) {
		sniff(data, size - 1, &part);
		CHECK(part.r == KD_SNIFF_MORE || (part.r == full.r && strcmp(part.host, full.host) == 0));
	}

	/* A host buffer too small and no why: never written past, never a name that does not fit. */
	memset(tiny, 0x5a, sizeof(tiny));
	switch (kd_sniff(data, size, tiny, sizeof(tiny), &port, NULL, 0)) {
	case KD_SNIFF_TLS:
	case KD_SNIFF_HTTP:
		CHECK(strlen(tiny) < sizeof(tiny) && strcmp(tiny, full.host) == 0);
		break;
	default:
		CHECK(tiny[0] == '\0');
	}
	return 0;
}
