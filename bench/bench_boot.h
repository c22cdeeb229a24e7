/*
 * What the parts of bench-boot share: the options, one boot's results, the
 * host it runs on, and the functions each part offers the others.
 *
 *   boot.c         main: options, the two VMMs' command lines, the runs
 *   boot_run.c     one boot: spawn a VMM, time its console marks, sample it
 *   boot_report.c  the host, statistics, and the table or JSON
 */
#ifndef KILN_BENCH_BOOT_H
#define KILN_BENCH_BOOT_H

#include <stdint.h>
#include <stdio.h>

#include "abi.h"

/* What kiln-agent prints on its console once it listens (guest/agent.c). */
#define AGENT_READY_MARK	"kiln-agent: ready"
#define GUEST_PARAMS		KILN_PARAM_BOOTMARK " " KILN_PARAM_AGENT
#define VHOST_VSOCK		"/dev/vhost-vsock"
#define TAIL_MAX		4096	/* console/stderr bytes kept for diagnostics */

enum { VMM_KILN, VMM_QEMU, NVMM };
extern const char *const vmm_label[NVMM];

/* The command line. */
struct opts {
	int runs;
	int warmup;
	unsigned mem_mib;
	int vcpus;
	double timeout_s;
	const char *vmm;
	const char *qemu;
	const char *kernel;
	const char *initrd;
	int json;
	int verbose;
};

/* The last TAIL_MAX bytes of a stream. */
struct tail {
	char buf[TAIL_MAX];
	size_t len;
	uint64_t total;
};

/* One boot of one VMM: what it reached, when, and what it cost. */
struct run {
	int ok;			/* the last mark expected of this VMM seen in time */
	char why[160];		/* why not */
	int marker;		/* KILN_BOOT_MARK seen */
	int ready;		/* AGENT_READY_MARK seen */
	double t_mark_ms;	/* exec -> KILN_BOOT_MARK on the console */
	double t_ready_ms;	/* exec -> AGENT_READY_MARK on the console */
	double cpu_mark_ms;	/* VMM CPU time (all its threads) at each mark */
	double cpu_ready_ms;
	int exited;		/* it ended by itself (a failure): status is valid */
	int status;		/* wait status */
	int rss_ok;
	long rss_vmm_kib;	/* RSS without guest RAM, at the last mark */
	long rss_guest_kib;	/* RSS of the guest RAM mapping, at the last mark */
	char rss_why[192];
	long maxrss_kib;	/* ru_maxrss: peak, guest RAM included */
	uint64_t console_bytes;
	struct tail con, err;
};

/* The KVM this runs on (detect_host). */
struct host {
	const char *kind;	/* "nested-tcg", "vm", "bare-metal" */
	char hv[13];		/* CPUID 0x40000000 signature, "" if none */
	int env_nested;		/* KILN_NESTED=1 */
	char line[256];
};

/* ---- boot.c ---- */

/* Print "bench-boot: " fmt on stderr; die() then exits 2. */
void msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/* Milliseconds on CLOCK_MONOTONIC. */
double now_ms(void);
/* malloc and strdup that die when out of memory. */
void *xmalloc(size_t n);
char *xstrdup(const char *s);

/* ---- boot_run.c ---- */

/* /dev/null, open for every child's stdin (main opens it). */
extern int devnull_fd;

/* Print the last max_lines lines of t to stderr, indented, as what's output. */
void tail_show(const char *what, const struct tail *t, int max_lines);

/*
 * One boot of argv, timed to its console marks (to AGENT_READY_MARK when
 * want_ready, else KILN_BOOT_MARK) under o->timeout_s; fills r.
 */
void boot_once(char *const argv[], const struct opts *o, int want_ready, struct run *r);

/* Run argv to completion (10 s at most); its stdout (free it), NULL on failure. */
char *capture(char *const argv[]);

/* ---- boot_report.c ---- */

/* Fill h with what kind of KVM this is, and the line saying so. */
void detect_host(struct host *h);

/* How many of the n runs succeeded. */
int count_ok(const struct run *runs, int n);

/* The results of n runs per VMM as a table, or as JSON, on stdout. */
void print_table(const struct opts *o, const struct host *h, const char *qemu_version,
		 const char *qemu_vsock, struct run *runs[NVMM], int n);
void print_json(const struct opts *o, const struct host *h, const char *qemu_version,
		const char *qemu_vsock, const char *cmdline, struct run *runs[NVMM], int n);

#endif
