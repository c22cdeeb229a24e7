/*
 * libFuzzer target: the Deno SDK's x-deno-sandbox-config header as a
 * hostile client sends it (any bytes), through kilnd's decoding
 * (kd_v3_config_spec: base64, Latin-1 to UTF-8, JSON, the translation to
 * kiln's create body) and then kiln's create-body parser, as kilnd runs
 * them before it admits a sandbox. Neither may crash, leak or accept a
 * body the parser then refuses without a message.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kd_v3conf.h"
#include "sched_core.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char msg[600];
	json_t *spec = kd_v3_config_spec((const char *)data, size, 1800000000000ull, msg, sizeof(msg));

	if (!spec) {
		if (!msg[0])
			abort();	/* a refusal always says why */
		return 0;
	}
	char *body = json_dumps(spec, JSON_COMPACT);

	json_decref(spec);
	if (body) {
		struct sched_spec s;
		struct kiln_err err;

		if (sched_spec_from_json(body, strlen(body), &s, &err) == 0)
			sched_spec_free(&s);
		else if (!err.msg[0])
			abort();
		free(body);
	}
	return 0;
}
