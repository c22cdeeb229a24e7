/*
 * libFuzzer target: kiln's REST create body (scheduler/sched_spec.c), the
 * first thing kilnd parses from a network client. Each input is one body.
 * A body that parses must hold only what the rules allow (ranges, label and
 * env checks, the env's size); one that does not must come with a one-line
 * message of printable ASCII. ASan sees any leak of the spec's strings.
 * Seeds: tests/fuzz/corpus/fuzz_sched_spec/.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sched_core.h"

#define CHECK(c)                                                                     \
	do {                                                                         \
		if (!(c)) {                                                          \
			fprintf(stderr, "fuzz_sched_spec: %s fails\n", #c);          \
			abort();                                                     \
		}                                                                    \
	} while (0)

static void check_spec(const struct sched_spec *s)
{
	size_t i, bytes = 0;

	CHECK(s->memory_mb >= SCHED_MEM_MIN_MB && s->memory_mb <= SCHED_MEM_MAX_MB);
	CHECK(s->vcpus >= SCHED_VCPUS_MIN && s->vcpus <= SCHED_VCPUS_MAX);
	if (s->timeout.kind == SCHED_TIMEOUT_DURATION)
		CHECK(s->timeout.ms > 0 && s->timeout.ms <= SCHED_DURATION_MAX_MS);
	else
		CHECK(s->timeout.kind == SCHED_TIMEOUT_SESSION && s->timeout.ms == 0);
	CHECK(s->nlabels <= SCHED_LABELS_MAX && (s->nlabels == 0) == (s->labels == NULL));
	for (i = 0; i < s->nlabels; i++)
		CHECK(sched_label_check(s->labels[i].key, strlen(s->labels[i].key), s->labels[i].value,
					strlen(s->labels[i].value), NULL) == 0);
	CHECK(s->nenv <= SCHED_ENV_MAX && (s->nenv == 0) == (s->env == NULL));
	for (i = 0; i < s->nenv; i++) {
		size_t k = strlen(s->env[i].key), v = strlen(s->env[i].value);

		CHECK(sched_env_check(s->env[i].key, k, s->env[i].value, v, NULL) == 0);
		bytes += k + v + 2;
	}
	CHECK(bytes <= SCHED_ENV_BYTES_MAX);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct kiln_err err;
	struct sched_spec s;
	const char *p;
	int r;

	memset(&err, 0, sizeof(err));
	r = sched_spec_from_json((const char *)data, size, &s, &err);
	if (r == 0) {
		check_spec(&s);
	} else {
		CHECK(r == -EINVAL || r == -E2BIG || r == -ENOMEM);
		CHECK(err.msg[0] != '\0');
		for (p = err.msg; *p; p++)
			CHECK(*p >= 0x20 && *p <= 0x7e);
		CHECK(s.labels == NULL && s.env == NULL);
	}
	sched_spec_free(&s);
	return 0;
}
