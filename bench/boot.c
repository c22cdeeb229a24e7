/*
 * bench-boot: boot the same kernel and initramfs N times with kiln-vmm and
 * with QEMU's microvm machine, and compare how fast each gets its guest agent
 * ready to take a command, how much CPU and memory the VMM itself uses. See
 * bench/README.md.
 *
 *   bench-boot --vmm PATH --kernel VMLINUX --initrd CPIO [--runs N] [--mem MIB]
 *              [--qemu PATH] [--json]
 *
 * Both VMMs boot with kiln.bootmark and kiln.agent on the kernel command line
 * and a vsock device; kiln's init prints KILN_BOOT_MARK on the serial console
 * (the VMM's stdout, read here through a pipe) as the first thing it does in
 * userspace, and kiln-agent prints AGENT_READY_MARK once it listens on vsock.
 * The boot clock stops there (issue 4) and the VMM is killed. No shell is
 * involved anywhere: the VMMs are fork/exec'd directly, every descriptor of
 * ours is close-on-exec.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bench_boot.h"

/*
 * kiln-vmm's default kernel command line (DEFAULT_CMDLINE in vmm/main.c). At
 * start-up it is read back from `kiln-vmm --help`, so that QEMU gets exactly
 * what kiln-vmm would use even if this copy has drifted; this one is the
 * fallback.
 */
#define KILN_DEFAULT_CMDLINE	"console=ttyS0 reboot=k panic=-1 quiet no_timer_check"

#define DEFAULT_RUNS		10
#define DEFAULT_WARMUP		1
#define DEFAULT_MEM_MIB		512
#define DEFAULT_TIMEOUT_S	60.0

const char *const vmm_label[NVMM] = { "kiln", "qemu" };

static const char *prog = "bench-boot";

static void vmsg(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));
static void vmsg(const char *fmt, va_list ap)
{
	fprintf(stderr, "%s: ", prog);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
}

void msg(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vmsg(fmt, ap);
	va_end(ap);
}

void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vmsg(fmt, ap);
	va_end(ap);
	exit(2);
}

double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (!p)
		die("out of memory");
	return p;
}

char *xstrdup(const char *s)
{
	size_t n = strlen(s) + 1;

	return memcpy(xmalloc(n), s, n);
}

/* ---- main ---------------------------------------------------------------------------- */

static void usage(FILE *f)
{
	fprintf(f,
"Usage: bench-boot --vmm PATH --kernel VMLINUX --initrd CPIO [OPTIONS]\n"
"Boot the same guest N times with kiln-vmm and with QEMU's microvm machine\n"
"(interleaved), both with the guest agent and a vsock device, and compare the\n"
"time to guest userspace and to agent ready, VMM CPU time and VMM memory. Needs\n"
"a working /dev/kvm (tests/nested/kvm-host.sh provides one); QEMU's vsock needs\n"
"/dev/vhost-vsock (without it QEMU's agent-ready column is empty).\n"
"\n"
"  --runs N        measured boots per VMM (default %d)\n"
"  --warmup N      unmeasured boots per VMM first (default %d)\n"
"  --vmm PATH      kiln-vmm binary\n"
"  --kernel PATH   guest vmlinux (PVH ELF; both VMMs boot it)\n"
"  --initrd PATH   guest initramfs with kiln's init\n"
"  --mem MIB       guest memory (default %d)\n"
"  --vcpus N       guest vCPUs (default 1)\n"
"  --qemu PATH     qemu-system-x86_64 binary (default: from PATH)\n"
"  --timeout SEC   per boot; a VMM whose agent is not ready by then is killed (default %g)\n"
"  --json          results as JSON on stdout (messages stay on stderr)\n"
"  -v, --verbose   print the command lines and every failed run's output\n"
"  -h, --help      this help\n"
"\n"
"Exit status: 0; 1 when every boot of either VMM failed; 2 when it could not\n"
"start (bad usage, missing files, no /dev/kvm).\n",
		DEFAULT_RUNS, DEFAULT_WARMUP, DEFAULT_MEM_MIB, DEFAULT_TIMEOUT_S);
}

static long parse_long(const char *opt, const char *s, long lo, long hi)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		die("%s %s: must be a whole number from %ld to %ld", opt, s, lo, hi);
	return v;
}

static void parse_args(int argc, char **argv, struct opts *o)
{
	enum { O_RUNS = 256, O_WARMUP, O_VMM, O_KERNEL, O_INITRD, O_MEM, O_VCPUS, O_QEMU,
	       O_TIMEOUT, O_JSON };
	static const struct option longopts[] = {
		{ "runs", required_argument, NULL, O_RUNS },
		{ "warmup", required_argument, NULL, O_WARMUP },
		{ "vmm", required_argument, NULL, O_VMM },
		{ "kernel", required_argument, NULL, O_KERNEL },
		{ "initrd", required_argument, NULL, O_INITRD },
		{ "mem", required_argument, NULL, O_MEM },
		{ "vcpus", required_argument, NULL, O_VCPUS },
		{ "qemu", required_argument, NULL, O_QEMU },
		{ "timeout", required_argument, NULL, O_TIMEOUT },
		{ "json", no_argument, NULL, O_JSON },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	memset(o, 0, sizeof(*o));
	o->runs = DEFAULT_RUNS;
	o->warmup = DEFAULT_WARMUP;
	o->mem_mib = DEFAULT_MEM_MIB;
	o->vcpus = 1;
	o->timeout_s = DEFAULT_TIMEOUT_S;
	o->qemu = "qemu-system-x86_64";
	while ((c = getopt_long(argc, argv, "vh", longopts, NULL)) != -1) {
		switch (c) {
		case O_RUNS: o->runs = (int)parse_long("--runs", optarg, 1, 100000); break;
		case O_WARMUP: o->warmup = (int)parse_long("--warmup", optarg, 0, 1000); break;
		case O_VMM: o->vmm = optarg; break;
		case O_KERNEL: o->kernel = optarg; break;
		case O_INITRD: o->initrd = optarg; break;
		case O_MEM:
			o->mem_mib = (unsigned)parse_long("--mem", optarg, 128, 1024 * 1024);
			if (o->mem_mib % 2)
				die("--mem %s: must be a multiple of 2 MiB", optarg);
			break;
		case O_VCPUS: o->vcpus = (int)parse_long("--vcpus", optarg, 1, 8); break;
		case O_QEMU: o->qemu = optarg; break;
		case O_TIMEOUT: {
			char *end;

			o->timeout_s = strtod(optarg, &end);
			if (end == optarg || *end || !(o->timeout_s > 0) || o->timeout_s > 86400)
				die("--timeout %s: must be a positive number of seconds", optarg);
			break;
		}
		case O_JSON: o->json = 1; break;
		case 'v': o->verbose = 1; break;
		case 'h': usage(stdout); exit(0);
		default:
			fprintf(stderr, "Try '%s --help'.\n", prog);
			exit(2);
		}
	}
	if (optind < argc)
		die("unexpected argument '%s' (try --help)", argv[optind]);
	if (!o->vmm || !o->kernel || !o->initrd)
		die("--vmm, --kernel and --initrd are required (try --help)");
}

static void check_file(const char *path, const char *what, int exec)
{
	struct stat st;

	if (stat(path, &st) < 0)
		die("%s %s: %s", what, path, strerror(errno));
	if (!S_ISREG(st.st_mode))
		die("%s %s: not a regular file", what, path);
	if (access(path, exec ? X_OK : R_OK) < 0)
		die("%s %s: %s", what, path, strerror(errno));
}

/* kiln-vmm's default command line, as its --help states it. */
static char *vmm_default_cmdline(const char *vmm)
{
	static const char key[] = "kiln's defaults: \"";
	char *argv[] = { (char *)vmm, "--help", NULL };
	char *help = capture(argv), *p, *q, *res = NULL;

	if (help && (p = strstr(help, key)) != NULL) {
		p += strlen(key);
		q = strchr(p, '"');
		if (q && q > p) {
			*q = '\0';
			res = xstrdup(p);
		}
	}
	free(help);
	if (!res) {
		msg("warning: could not read the default command line from `%s --help`; using \"%s\"",
		    vmm, KILN_DEFAULT_CMDLINE);
		res = xstrdup(KILN_DEFAULT_CMDLINE);
	} else if (strcmp(res, KILN_DEFAULT_CMDLINE) != 0) {
		msg("note: %s's default command line is \"%s\" (bench-boot's copy: \"%s\"); using kiln-vmm's",
		    vmm, res, KILN_DEFAULT_CMDLINE);
	}
	return res;
}

static char *qemu_version_of(const char *qemu)
{
	char *argv[] = { (char *)qemu, "--version", NULL };
	char *out = capture(argv), *nl;

	if (!out || !*out) {
		free(out);
		return NULL;
	}
	nl = strchr(out, '\n');
	if (nl)
		*nl = '\0';
	return out;
}

/* The kernel command line kiln-vmm builds: its defaults, then --cmdline (no command). */
static char *guest_cmdline(const char *defaults)
{
	size_t len = strlen(defaults) + 1 + strlen(GUEST_PARAMS) + 1;
	char *out = xmalloc(len);

	snprintf(out, len, "%s %s", defaults, GUEST_PARAMS);
	if (strlen(out) >= KILN_CMDLINE_MAX)
		die("the kernel command line is too long (%zu bytes)", strlen(out));
	return out;
}

/*
 * QEMU's vsock device for its guest agent: vhost-vsock-device needs the host
 * kernel's /dev/vhost-vsock (module vhost_vsock; the nested test host does not
 * load it, so as root we try modprobe once). Returns the -device argument, or
 * NULL when there is none: QEMU then gets no vsock and only its userspace mark
 * is comparable. The guest CID is host-wide: pick one unlikely to be in use.
 */
static char *qemu_vsock_device(void)
{
	static char dev[64];

	if (access(VHOST_VSOCK, R_OK | W_OK) < 0 && geteuid() == 0) {
		char *argv[] = { "modprobe", "-q", "vhost_vsock", NULL };

		free(capture(argv));
	}
	if (access(VHOST_VSOCK, R_OK | W_OK) < 0) {
		msg("note: %s: %s; QEMU gets no vsock device, its agent cannot get ready "
		    "(compare the userspace mark)", VHOST_VSOCK, strerror(errno));
		return NULL;
	}
	snprintf(dev, sizeof(dev), "vhost-vsock-device,guest-cid=%u",
		 1000u + (unsigned)getpid() % 1000000u);
	return dev;
}

/* A command line for execvp, NULL-terminated. */
struct cmd {
	char *argv[48];
	int argc;
};

/* Append the arguments up to a NULL to c. */
static void cmd_add(struct cmd *c, ...) __attribute__((sentinel));
static void cmd_add(struct cmd *c, ...)
{
	const char *arg;
	va_list ap;

	va_start(ap, c);
	while ((arg = va_arg(ap, const char *)) != NULL) {
		if (c->argc + 1 >= (int)(sizeof(c->argv) / sizeof(c->argv[0])))
			die("internal error: too many arguments for %s", c->argv[0]);
		c->argv[c->argc++] = (char *)arg;
	}
	c->argv[c->argc] = NULL;
	va_end(ap);
}

static void print_argv(const char *what, char *const argv[])
{
	int i;

	fprintf(stderr, "%s: %s:", prog, what);
	for (i = 0; argv[i]; i++)
		fprintf(stderr, strpbrk(argv[i], " \"'") ? " '%s'" : " %s", argv[i]);
	fputc('\n', stderr);
}

static void report_run(const char *tag, int v, const struct run *r, int verbose)
{
	if (r->ok) {
		fprintf(stderr, "%s: %s %-4s userspace %8.1f ms  agent ready ", prog, tag, vmm_label[v],
			r->marker ? r->t_mark_ms : NAN);
		if (r->ready)
			fprintf(stderr, "%8.1f ms  cpu %8.1f ms  rss ", r->t_ready_ms, r->cpu_ready_ms);
		else
			fprintf(stderr, "%8s     cpu %8.1f ms  rss ", "n/a", r->cpu_mark_ms);
		if (r->rss_ok)
			fprintf(stderr, "%6.1f MiB (+%.1f MiB guest)\n", r->rss_vmm_kib / 1024.0,
				r->rss_guest_kib / 1024.0);
		else
			fprintf(stderr, "n/a (%s)\n", r->rss_why);
		return;
	}
	fprintf(stderr, "%s: %s %-4s FAILED: %s\n", prog, tag, vmm_label[v], r->why);
	if (verbose || !r->marker) {
		tail_show("console", &r->con, 8);
		tail_show("stderr", &r->err, 8);
	}
}

/* kiln-vmm's vsock unix socket lives in a directory of ours, removed however we end. */
static char sockdir[] = "/tmp/bench-boot.XXXXXX";
static char sockpath[sizeof(sockdir) + 16];

static void sockdir_remove(void)
{
	if (sockpath[0])
		unlink(sockpath);
	if (sockdir[sizeof(sockdir) - 7] != 'X')
		rmdir(sockdir);
}

static void on_fatal_signal(int sig)
{
	sockdir_remove();	/* unlink and rmdir are async-signal-safe */
	signal(sig, SIG_DFL);
	raise(sig);		/* our VMM dies with us (PR_SET_PDEATHSIG) */
}

int main(int argc, char **argv)
{
	struct opts o;
	struct host h;
	struct run *runs[NVMM], scratch;
	char *defaults, *cmdline, *qver, *qvsock, mem[16], smp[16], vsock[sizeof(sockpath) + 16];
	struct cmd cmds[NVMM] = { { .argc = 0 } };
	int i, v, rc = 0;

	parse_args(argc, argv, &o);
	devnull_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (devnull_fd < 0)
		die("/dev/null: %s", strerror(errno));
	check_file(o.vmm, "--vmm", 1);
	check_file(o.kernel, "--kernel", 0);
	check_file(o.initrd, "--initrd", 0);
	signal(SIGPIPE, SIG_IGN);
	detect_host(&h);
	if (access("/dev/kvm", R_OK | W_OK) < 0)
		die("/dev/kvm: %s: both VMMs need KVM; where there is none, run this under "
		    "tests/nested/kvm-host.sh (make bench-boot does)", strerror(errno));

	defaults = vmm_default_cmdline(o.vmm);
	cmdline = guest_cmdline(defaults);
	qver = qemu_version_of(o.qemu);
	if (!qver)
		msg("warning: `%s --version` failed; is QEMU installed (qemu-system-x86)?", o.qemu);
	snprintf(mem, sizeof(mem), "%u", o.mem_mib);
	snprintf(smp, sizeof(smp), "%d", o.vcpus);
	qvsock = qemu_vsock_device();
	if (!mkdtemp(sockdir))
		die("mkdtemp %s: %s", sockdir, strerror(errno));
	atexit(sockdir_remove);
	signal(SIGINT, on_fatal_signal);
	signal(SIGTERM, on_fatal_signal);
	signal(SIGHUP, on_fatal_signal);
	snprintf(sockpath, sizeof(sockpath), "%s/vsock", sockdir);
	snprintf(vsock, sizeof(vsock), "cid=3,uds=%s", sockpath);

	cmd_add(&cmds[VMM_KILN], o.vmm, "--kernel", o.kernel, "--initrd", o.initrd, "--mem", mem,
		"--vcpus", smp, "--vsock", vsock, "--cmdline", GUEST_PARAMS, NULL);
	cmd_add(&cmds[VMM_QEMU], o.qemu, "-M", "microvm,acpi=off", "-accel", "kvm", "-cpu", "host",
		"-m", mem, "-smp", smp, "-nodefaults", "-no-user-config", NULL);
	/* Not -nographic: that can multiplex QEMU's monitor onto stdio too. */
	cmd_add(&cmds[VMM_QEMU], "-display", "none", "-serial", "stdio", "-no-reboot",
		"-kernel", o.kernel, "-initrd", o.initrd, "-append", cmdline, NULL);
	/* The init's status write (KILN_PORT_EXIT) ends QEMU, as it ends kiln-vmm. */
	cmd_add(&cmds[VMM_QEMU], "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", NULL);
	/*
	 * kiln-vmm emulates an i8042 so that reboot=k resets the guest; microvm
	 * has none. Without it a guest that cannot report a status (no ioperm)
	 * never gets QEMU to exit under KVM: the kernel's reboot falls through to
	 * a BIOS restart.
	 */
	cmd_add(&cmds[VMM_QEMU], "-device", "i8042", NULL);
	if (qvsock)
		cmd_add(&cmds[VMM_QEMU], "-device", qvsock, NULL);

	if (o.verbose) {
		print_argv("kiln", cmds[VMM_KILN].argv);
		print_argv("qemu", cmds[VMM_QEMU].argv);
	}

	for (v = 0; v < NVMM; v++)
		runs[v] = calloc((size_t)o.runs, sizeof(struct run));
	if (!runs[0] || !runs[1])
		die("out of memory");

	/* The warm-up boots (i < 0) first, then the measured ones; kiln and QEMU take turns. */
	for (i = -o.warmup; i < o.runs; i++) {
		char tag[32];

		if (i < 0)
			snprintf(tag, sizeof(tag), "warm-up");
		else
			snprintf(tag, sizeof(tag), "run %d/%d", i + 1, o.runs);
		for (v = 0; v < NVMM; v++) {
			struct run *r = i < 0 ? &scratch : &runs[v][i];

			boot_once(cmds[v].argv, &o, v == VMM_KILN || qvsock, r);
			unlink(sockpath);
			report_run(tag, v, r, o.verbose);
		}
	}

	if (o.json)
		print_json(&o, &h, qver, qvsock, cmdline, runs, o.runs);
	else
		print_table(&o, &h, qver, qvsock, runs, o.runs);
	fflush(stdout);
	for (v = 0; v < NVMM; v++) {
		if (count_ok(runs[v], o.runs) == 0) {
			msg("every %s boot failed", v == VMM_KILN ? "kiln-vmm" : "QEMU");
			rc = 1;
		}
	}
	for (v = 0; v < NVMM; v++)
		free(runs[v]);
	free(defaults);
	free(cmdline);
	free(qver);
	return rc;
}
