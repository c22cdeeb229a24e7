/* What the scheduler core's test files share (tests/unit/sched/). */
#ifndef KILN_SCHED_UNIT_H
#define KILN_SCHED_UNIT_H

#include <check.h>

#include "sched_core.h"

#define SEC	1000ull
#define MIN	(60 * SEC)
#define HOUR	(60 * MIN)
#define DAY	(24 * HOUR)
#define NOW	1800000000000ull	/* 2027-01-15T08:00:00Z */

#define ROWS(t) ((int)(sizeof(t) / sizeof((t)[0])))

/* A message is one line of printable ASCII, whatever the input held. */
void assert_printable(const char *msg);

/* The create-body and duration cases (test_sched_spec.c). */
TCase *tcase_sched_spec(void);
TCase *tcase_sched_duration(void);

/* allow_net entries and special addresses (test_sched_net.c). */
TCase *tcase_sched_net(void);

#endif
