/*
 * bench-boot's report: what kind of KVM it ran on, the statistics of each
 * metric over the runs, and the table (or JSON) that compares the two VMMs.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "bench_boot.h"

/* ---- where we run ---------------------------------------------------------------- */

void detect_host(struct host *h)
{
	const char *env = getenv("KILN_NESTED");
	int hypervisor = 0;

	memset(h, 0, sizeof(*h));
	h->env_nested = env && strcmp(env, "1") == 0;
#if defined(__x86_64__) || defined(__i386__)
	{
		unsigned a, b, c, d;

		if (__get_cpuid(1, &a, &b, &c, &d))
			hypervisor = (c >> 31) & 1;
		if (hypervisor) {
			__cpuid(0x40000000, a, b, c, d);
			memcpy(h->hv, &b, 4);
			memcpy(h->hv + 4, &c, 4);
			memcpy(h->hv + 8, &d, 4);
			for (a = 0; a < 12; a++)
				if (h->hv[a] && (h->hv[a] < 0x20 || h->hv[a] > 0x7e))
					h->hv[a] = '?';
		}
	}
#endif
	/* QEMU's TCG advertises itself as "TCGTCGTCGTCG" (its tcg-cpuid property). */
	if (h->env_nested || strcmp(h->hv, "TCGTCGTCGTCG") == 0) {
		h->kind = "nested-tcg";
		snprintf(h->line, sizeof(h->line),
			 "host: NESTED - /dev/kvm of a KVM host that is itself emulated by QEMU TCG "
			 "(%s); absolute times are far slower than real KVM, compare the ratios",
			 h->env_nested ? "KILN_NESTED=1" : "CPUID hypervisor signature TCGTCGTCGTCG");
	} else if (hypervisor) {
		h->kind = "vm";
		snprintf(h->line, sizeof(h->line),
			 "host: real KVM inside a hardware-virtualized VM (hypervisor \"%s\"): "
			 "nested virtualization, expect some overhead on VM exits",
			 h->hv[0] ? h->hv : "unknown");
	} else {
		h->kind = "bare-metal";
		snprintf(h->line, sizeof(h->line), "host: real KVM on bare metal");
	}
}

/* ---- statistics and output --------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

struct stat2 {
	int n;
	double median, p90, min, max;
};

static struct stat2 stats(double *v, int n)
{
	struct stat2 s = { n, NAN, NAN, NAN, NAN };
	int rank;

	if (n == 0)
		return s;
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	s.median = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
	rank = (9 * n + 9) / 10;	/* nearest rank: ceil(0.9 n), without libm */
	s.p90 = v[rank < 1 ? 0 : rank - 1];
	s.min = v[0];
	s.max = v[n - 1];
	return s;
}

enum metric { M_READY, M_MARK, M_CPU_READY, M_CPU_MARK, M_RSS, M_MAXRSS, NMETRIC };

static const struct {
	const char *key, *label, *unit;
} metric_info[NMETRIC] = {
	[M_READY] = { "exec_to_agent_ready_ms", "exec -> agent ready", "ms" },
	[M_MARK] = { "exec_to_userspace_ms", "exec -> guest userspace", "ms" },
	[M_CPU_READY] = { "cpu_to_agent_ready_ms", "VMM CPU time to agent ready", "ms" },
	[M_CPU_MARK] = { "cpu_to_userspace_ms", "VMM CPU time to userspace", "ms" },
	[M_RSS] = { "rss_excl_guest_kib", "VMM RSS excl. guest RAM", "KiB" },
	[M_MAXRSS] = { "peak_rss_kib", "peak RSS incl. guest (info)", "KiB" },
};

static double metric_of(const struct run *r, enum metric m)
{
	switch (m) {
	case M_READY: return r->ready ? r->t_ready_ms : NAN;
	case M_MARK: return r->marker ? r->t_mark_ms : NAN;
	case M_CPU_READY: return r->ready ? r->cpu_ready_ms : NAN;
	case M_CPU_MARK: return r->marker ? r->cpu_mark_ms : NAN;
	case M_RSS: return r->rss_ok ? (double)r->rss_vmm_kib : NAN;
	case M_MAXRSS: return (double)r->maxrss_kib;
	case NMETRIC: break;
	}
	return NAN;
}

static struct stat2 metric_stats(const struct run *runs, int n, enum metric m)
{
	double *v = xmalloc(sizeof(double) * (size_t)(n ? n : 1));
	struct stat2 s;
	int i, k = 0;

	for (i = 0; i < n; i++) {
		double x = metric_of(&runs[i], m);

		if (runs[i].ok && !isnan(x))
			v[k++] = x;
	}
	s = stats(v, k);
	free(v);
	return s;
}

int count_ok(const struct run *runs, int n)
{
	int i, k = 0;

	for (i = 0; i < n; i++)
		k += runs[i].ok;
	return k;
}

static void fmt_val(char *b, size_t len, double v, const char *unit)
{
	if (isnan(v))
		snprintf(b, len, "n/a");
	else if (strcmp(unit, "KiB") == 0)
		snprintf(b, len, "%.1f MiB", v / 1024);
	else if (v >= 10000)
		snprintf(b, len, "%.0f ms", v);
	else
		snprintf(b, len, "%.1f ms", v);
}

static void fmt_ratio(char *b, size_t len, double k, double q)
{
	if (isnan(k) || isnan(q) || q <= 0)
		snprintf(b, len, "n/a");
	else
		snprintf(b, len, "%.2f", k / q);
}

/* "0 x3, 123 x1" for the exit statuses of the failed runs. */
static void fmt_statuses(char *b, size_t len, const struct run *runs, int n)
{
	int seen[64][2], nseen = 0, i, j, killed = 0;	/* exit code, count */
	size_t off = 0;

	for (i = 0; i < n; i++) {
		int code;

		if (runs[i].ok)
			continue;
		if (!runs[i].exited) {
			killed++;
			continue;
		}
		code = WIFEXITED(runs[i].status) ? WEXITSTATUS(runs[i].status) : 128 + WTERMSIG(runs[i].status);
		for (j = 0; j < nseen && seen[j][0] != code; j++)
			;
		if (j == nseen) {
			if (nseen == 64)
				continue;
			seen[nseen][0] = code;
			seen[nseen][1] = 0;
			nseen++;
		}
		seen[j][1]++;
	}
	b[0] = '\0';
	for (j = 0; j < nseen && off < len; j++)
		off += (size_t)snprintf(b + off, len - off, "%s%d x%d", j ? ", " : "", seen[j][0], seen[j][1]);
	if (killed && off < len)
		snprintf(b + off, len - off, "%stimed out x%d", nseen ? ", " : "", killed);
	if (!nseen && !killed)
		snprintf(b, len, "-");
}

/* One row of the table: kiln's figure, QEMU's and their ratio. */
static void print_row(const char *label, const char *what, double k, double q, const char *unit)
{
	char a[32], b[32], c[32];

	fmt_val(a, sizeof(a), k, unit);
	fmt_val(b, sizeof(b), q, unit);
	fmt_ratio(c, sizeof(c), k, q);
	printf("%-30s %-6s %14s %14s %10s\n", label, what, a, b, c);
}

void print_table(const struct opts *o, const struct host *h, const char *qemu_version,
			const char *qemu_vsock, struct run *runs[NVMM], int n)
{
	static const char *const vmm_title[NVMM] = { "kiln-vmm", "QEMU microvm" };
	char a[32], b[32], st[2][96];
	int v, m;

	printf("%s\n", h->line);
	printf("%d boots each (after %d warm-up), interleaved kiln/QEMU; %u MiB, %d vCPU, guest agent (%s)\n",
	       n, o->warmup, o->mem_mib, o->vcpus, GUEST_PARAMS);
	printf("kiln: %s --vsock cid=3,uds=...\nqemu: %s (%s) -M microvm,acpi=off %s\n", o->vmm, o->qemu,
	       qemu_version ? qemu_version : "version unknown",
	       qemu_vsock ? "-device vhost-vsock-device" : "(no vsock device)");
	if (!qemu_vsock)
		printf("NOTE: no usable %s here, so QEMU's guest agent cannot listen: the agent-ready rows\n"
		       "      have no QEMU column; compare the userspace rows. QEMU's RSS is sampled at its\n"
		       "      userspace mark, kiln's at agent ready.\n", VHOST_VSOCK);
	printf("\n%-30s %-6s %14s %14s %10s\n", "metric", "", vmm_title[0], vmm_title[1], "kiln/QEMU");
	for (m = 0; m < NMETRIC; m++) {
		struct stat2 s[NVMM];

		for (v = 0; v < NVMM; v++)
			s[v] = metric_stats(runs[v], n, (enum metric)m);
		print_row(metric_info[m].label, "median", s[0].median, s[1].median, metric_info[m].unit);
		print_row("", "p90", s[0].p90, s[1].p90, metric_info[m].unit);
	}
	snprintf(a, sizeof(a), "%d/%d", count_ok(runs[0], n), n);
	snprintf(b, sizeof(b), "%d/%d", count_ok(runs[1], n), n);
	printf("%-30s %-6s %14s %14s\n", "successful boots", "", a, b);
	if (count_ok(runs[0], n) < n || count_ok(runs[1], n) < n) {
		for (v = 0; v < NVMM; v++)
			fmt_statuses(st[v], sizeof(st[v]), runs[v], n);
		printf("failed boots' exit statuses: kiln-vmm %s; QEMU %s\n", st[0], st[1]);
	}
	printf("(each VMM is killed once its last mark is on the console; CPU time is the sum over\n"
	       " the VMM's threads at the mark, vCPU time included; QEMU's vhost worker is a kernel\n"
	       " thread and not counted)\n");
}

static void json_str(const char *s)
{
	putchar('"');
	for (; s && *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c == '\n')
			fputs("\\n", stdout);
		else if (c < 0x20 || c == 0x7f)
			printf("\\u%04x", c);
		else
			putchar(c);
	}
	putchar('"');
}

static void json_num(double v)
{
	if (isnan(v) || isinf(v))
		fputs("null", stdout);
	else
		printf("%.3f", v);
}

/* A member after the first, `, "key": value`: a string or null, a number, a whole number or null. */
static void json_str_member(const char *key, const char *s)
{
	printf(", \"%s\": ", key);
	if (s)
		json_str(s);
	else
		fputs("null", stdout);
}

static void json_num_member(const char *key, double v)
{
	printf(", \"%s\": ", key);
	json_num(v);
}

static void json_int_member(const char *key, int have, int v)
{
	if (have)
		printf(", \"%s\": %d", key, v);
	else
		printf(", \"%s\": null", key);
}

void print_json(const struct opts *o, const struct host *h, const char *qemu_version,
		       const char *qemu_vsock, const char *cmdline, struct run *runs[NVMM], int n)
{
	int v, m, i;

	printf("{\n  \"host\": {\"kind\": ");
	json_str(h->kind);
	printf(", \"nested\": %s, \"hypervisor_signature\": ", strcmp(h->kind, "nested-tcg") == 0 ? "true" : "false");
	json_str(h->hv);
	printf(", \"kiln_nested_env\": %s},\n", h->env_nested ? "true" : "false");
	printf("  \"config\": {\"runs\": %d, \"warmup\": %d, \"mem_mib\": %u, \"vcpus\": %d, \"timeout_s\": %g, ",
	       n, o->warmup, o->mem_mib, o->vcpus, o->timeout_s);
	printf("\"kernel\": ");
	json_str(o->kernel);
	json_str_member("initrd", o->initrd);
	json_str_member("kiln_vmm", o->vmm);
	json_str_member("qemu", o->qemu);
	json_str_member("qemu_version", qemu_version);
	json_str_member("cmdline", cmdline);
	json_str_member("qemu_vsock", qemu_vsock);
	printf("},\n");
	for (v = 0; v < NVMM; v++) {
		printf("  \"%s\": {\n    \"ok\": %d,\n", vmm_label[v], count_ok(runs[v], n));
		for (m = 0; m < NMETRIC; m++) {
			struct stat2 s = metric_stats(runs[v], n, (enum metric)m);

			printf("    \"%s\": {\"n\": %d", metric_info[m].key, s.n);
			json_num_member("median", s.median);
			json_num_member("p90", s.p90);
			json_num_member("min", s.min);
			json_num_member("max", s.max);
			printf("},\n");
		}
		printf("    \"runs\": [\n");
		for (i = 0; i < n; i++) {
			const struct run *r = &runs[v][i];

			printf("      {\"ok\": %s, \"marker\": %s, \"ready\": %s",
			       r->ok ? "true" : "false", r->marker ? "true" : "false",
			       r->ready ? "true" : "false");
			json_num_member("exec_to_userspace_ms", r->marker ? r->t_mark_ms : NAN);
			json_num_member("exec_to_agent_ready_ms", r->ready ? r->t_ready_ms : NAN);
			json_num_member("cpu_to_userspace_ms", r->marker ? r->cpu_mark_ms : NAN);
			json_num_member("cpu_to_agent_ready_ms", r->ready ? r->cpu_ready_ms : NAN);
			json_num_member("rss_excl_guest_kib", r->rss_ok ? (double)r->rss_vmm_kib : NAN);
			json_num_member("rss_guest_kib", r->rss_ok ? (double)r->rss_guest_kib : NAN);
			json_str_member("rss_error", r->rss_ok || !r->marker ? NULL : r->rss_why);
			printf(", \"peak_rss_kib\": %ld, \"console_bytes\": %" PRIu64, r->maxrss_kib, r->console_bytes);
			json_int_member("exit_status", r->exited && WIFEXITED(r->status), WEXITSTATUS(r->status));
			json_int_member("signal", r->exited && WIFSIGNALED(r->status), WTERMSIG(r->status));
			json_str_member("error", r->ok ? NULL : r->why);
			printf("}%s\n", i + 1 < n ? "," : "");
		}
		printf("    ]\n  },\n");
	}
	printf("  \"ratio_kiln_over_qemu\": {");
	for (m = 0; m < NMETRIC; m++) {
		struct stat2 k = metric_stats(runs[0], n, (enum metric)m);
		struct stat2 q = metric_stats(runs[1], n, (enum metric)m);

		printf("%s\"%s\": {\"median\": ", m ? ", " : "", metric_info[m].key);
		json_num(q.median > 0 ? k.median / q.median : NAN);
		json_num_member("p90", q.p90 > 0 ? k.p90 / q.p90 : NAN);
		printf("}");
	}
	printf("}\n}\n");
}
