/*
 * libFuzzer target: arbitrary bytes as a snapshot state file. snap_parse must
 * refuse or accept, never read past the buffer or leak. The CRC would stop
 * almost every mutation at the door, so each input is also parsed a second
 * time with its trailer rewritten to the right CRC: the section parsers get
 * fuzzed too. A state that parses is then matched against restorers'
 * device options (snap_plan_devices), as a restore would before it opens
 * any file the state names.
 */
#include <stdlib.h>
#include <string.h>

#include "snapshot.h"

static void parse_one(const uint8_t *p, size_t n)
{
	struct snap_state s;
	char err[256];

	if (snap_parse(p, n, &s, err, sizeof(err)) == 0) {
		uint32_t i;

		/* Walk what the parser located, as a restore would. */
		for (i = 0; i < s.meta.ndevices; i++) {
			struct snap_rd r = s.dev[i].state;

			while (snapr_left(&r))
				snapr_u8(&r, "device state");
		}
		if (s.vcpu && s.meta.vcpus && s.vcpu[0].xsave_len)
			(void)snap_crc32c(0, s.vcpu[0].xsave, s.vcpu[0].xsave_len);
		{
			static const char *const kinds[] = { "vsock", "net", "disk", "disk" };
			static const char *const specs[] = { "cid=3,uds=/x.sock", "tap=t0", "/d.img,ro", "/e.img" };
			struct kiln_err kerr;
			int opt[SNAP_MAX_DEVICES], n;

			for (n = 0; n <= 4; n++)
				(void)snap_plan_devices(&s, kinds, specs, n, opt, &kerr);
		}
	}
	snap_state_free(&s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *copy = malloc(size ? size : 1);

	if (!copy)
		return 0;
	memcpy(copy, data, size);
	parse_one(copy, size);
	if (size >= SNAP_HEADER_LEN + SNAP_TRAILER_LEN) {
		uint32_t crc = snap_crc32c(0, copy, size - SNAP_TRAILER_LEN);

		memcpy(copy + size - SNAP_TRAILER_LEN, &crc, 4);
		parse_one(copy, size);
	}
	free(copy);
	return 0;
}
