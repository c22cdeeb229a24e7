/*
 * GET /metrics: Prometheus' text format (version 0.0.4), what a placement
 * layer reads to pick a node (free memory) and what an operator graphs.
 */
#include <stdio.h>
#include <stdlib.h>

#include "kilnd.h"

/* Upper bounds of the create-latency buckets, in seconds. */
static const double hist_le[KD_HIST_BUCKETS] = { 0.001, 0.005, 0.01, 0.025, 0.05, 0.1,
						 0.25,  0.5,   1,    2.5,   5,    10 };

void kd_metrics_create(struct kilnd *kd, double seconds)
{
	unsigned i;

	for (i = 0; i < KD_HIST_BUCKETS && seconds > hist_le[i]; i++)
		;
	kd->m.hist[i]++;
	kd->m.hist_sum_s += seconds;
	kd->m.hist_count++;
	kd->m.creates++;
}

char *kd_metrics_text(struct kilnd *kd)
{
	uint64_t counts[REG_STATE_COUNT] = { 0 }, cum = 0;
	const struct sched_host *h = &kd->conf.host;
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	if (!f)
		return NULL;
	pthread_mutex_lock(&kd->reg_lock);
	reg_sandbox_count(kd->reg, counts, NULL);
	pthread_mutex_unlock(&kd->reg_lock);
	fprintf(f, "# HELP kiln_sandboxes Sandboxes in the registry by state.\n# TYPE kiln_sandboxes gauge\n");
	for (unsigned s = 0; s < REG_STATE_COUNT; s++)
		fprintf(f, "kiln_sandboxes{state=\"%s\"} %llu\n", reg_state_name(s), (unsigned long long)counts[s]);
	fprintf(f, "# HELP kiln_creates_total Sandboxes created since kilnd started.\n# TYPE kiln_creates_total counter\n"
		   "kiln_creates_total %llu\n", (unsigned long long)kd->m.creates);
	fprintf(f, "# HELP kiln_create_failures_total Creates that failed after admission.\n"
		   "# TYPE kiln_create_failures_total counter\nkiln_create_failures_total %llu\n",
		(unsigned long long)kd->m.create_failures);
	fprintf(f, "# HELP kiln_admission_refusals_total Creates refused for want of memory.\n"
		   "# TYPE kiln_admission_refusals_total counter\nkiln_admission_refusals_total %llu\n",
		(unsigned long long)kd->m.refusals);
	fprintf(f, "# HELP kiln_sandbox_ends_total Sandboxes ended, by reason.\n# TYPE kiln_sandbox_ends_total counter\n"
		   "kiln_sandbox_ends_total{reason=\"killed\"} %llu\nkiln_sandbox_ends_total{reason=\"timed_out\"} %llu\n"
		   "kiln_sandbox_ends_total{reason=\"vmm_crashed\"} %llu\n",
		(unsigned long long)kd->m.kills, (unsigned long long)kd->m.timeouts, (unsigned long long)kd->m.crashes);
	fprintf(f, "# HELP kiln_create_seconds Create latency, admission to identity handed over.\n"
		   "# TYPE kiln_create_seconds histogram\n");
	for (unsigned i = 0; i < KD_HIST_BUCKETS; i++) {
		cum += kd->m.hist[i];
		fprintf(f, "kiln_create_seconds_bucket{le=\"%g\"} %llu\n", hist_le[i], (unsigned long long)cum);
	}
	cum += kd->m.hist[KD_HIST_BUCKETS];
	fprintf(f, "kiln_create_seconds_bucket{le=\"+Inf\"} %llu\nkiln_create_seconds_sum %.6f\n"
		   "kiln_create_seconds_count %llu\n", (unsigned long long)cum, kd->m.hist_sum_s,
		(unsigned long long)kd->m.hist_count);
	fprintf(f, "# HELP kiln_memory_committed_mb Memory committed to sandboxes.\n# TYPE kiln_memory_committed_mb gauge\n"
		   "kiln_memory_committed_mb %llu\n", (unsigned long long)kd->admit.mem_mb);
	fprintf(f, "# HELP kiln_memory_capacity_mb Memory sandboxes may commit on this node.\n"
		   "# TYPE kiln_memory_capacity_mb gauge\nkiln_memory_capacity_mb %llu\n",
		(unsigned long long)sched_capacity_mb(h));
	fprintf(f, "# HELP kiln_memory_free_mb Memory still free for sandboxes.\n# TYPE kiln_memory_free_mb gauge\n"
		   "kiln_memory_free_mb %llu\n", (unsigned long long)sched_free_mb(&kd->admit, h));
	fprintf(f, "# HELP kiln_pool_ready Warm VMs ready per pool shape.\n# TYPE kiln_pool_ready gauge\n");
	for (unsigned i = 0; i < kd->npools; i++)
		fprintf(f, "kiln_pool_ready{memory_mb=\"%u\",vcpus=\"%u\"} %u\n", kd->pools[i].memory_mb,
			kd->pools[i].vcpus, kd->pools[i].nready);
	fprintf(f, "# HELP kiln_jobs_running Creates, template builds and agent dials in progress.\n"
		   "# TYPE kiln_jobs_running gauge\nkiln_jobs_running %u\n", kd->jobs_running);
	if (fclose(f)) {
		free(buf);
		return NULL;
	}
	return buf;
}
