/*
 * kiln-vmm: boot a Linux guest on /dev/kvm and run one command in it.
 *
 *   kiln-vmm [options] [-- CMD ARGS...]
 *
 * The exit status is the guest command's; see usage() for kiln-vmm's own.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <termios.h>
#include <unistd.h>

#include "base64.h"
#include "i8042.h"
#include "serial.h"
#include "virtio.h"
#include "control.h"
#include "ioloop.h"
#include "snapshot.h"
#include "tcgkick.h"
#include "timeline.h"
#include "vmm.h"

#define KILN_VERSION "0.1.0"

/* kiln-vmm's own exit codes; anything else is the guest command's status. */
#define EXIT_GUEST_CRASH	123	/* the guest died without reporting a status */
#define EXIT_TIMEOUT		124	/* --timeout expired */
#define EXIT_VMM_ERROR		125	/* kiln-vmm itself failed: arguments, files, KVM */
#define EXIT_NOEXEC		126	/* the guest command is not executable */
#define EXIT_NOTFOUND		127	/* the guest command was not found */

#define DEFAULT_CMDLINE "console=ttyS0 reboot=k panic=-1 quiet no_timer_check"
#define ESCAPE_CHAR 0x01	/* Ctrl-A, then x: leave an interactive console */

struct opts {
	const char *kernel;
	const char *initrd;
	const char *cmdline;
	const char *console;
	const char *kvm_dev;
	uint64_t mem_mib;
	int vcpus;
	int hugepages;
	int verbose;
	double timeout_s;
	const char *control;	/* --control PATH */
	const char *control_group;	/* --control-group NAME: shares the control socket */
	const char *template_dir;	/* --template DIR: boot, wait for the agent, snapshot, stop */
	const char *restore;	/* --restore DIR or STATE, or a standby's "restore" line */
	int standby;		/* --standby: the snapshot comes on stdin */
	const char *memory;	/* --memory FILE (restore) */
	const char *clone_dir;	/* --clone-dir DIR (restore): keep the disks' copies there */
	enum snap_prefetch prefetch;	/* --prefetch (restore) */
	int kernel_set, mem_set, vcpus_set;	/* given explicitly: a restore checks them */
	int prefetch_set;
	char **cmd;		/* guest command, NULL for an interactive shell */
	int ncmd;
	const char *dev_kind[VIRTIO_MAX_DEVICES];	/* --disk, --net, --vsock in order: the kind */
	const char *dev_spec[VIRTIO_MAX_DEVICES];	/* and its SPEC */
	int ndevices;
};

static void usage(FILE *f)
{
	fprintf(f,
"Usage: kiln-vmm [OPTIONS] [-- CMD [ARGS...]]\n"
"Boot a Linux microVM on /dev/kvm and run CMD in it (an interactive shell on\n"
"the console without CMD). The guest's console is kiln-vmm's stdout.\n"
"\n"
"Options:\n"
"  --kernel PATH     guest kernel: a vmlinux with a PVH note, or a bzImage\n"
"                    (default: $KILN_KERNEL, else guest/vmlinux beside kiln-vmm)\n"
"  --initrd PATH     initramfs, or 'none' (default: $KILN_INITRD, else\n"
"                    guest/initramfs.cpio beside kiln-vmm)\n"
"  --mem MIB         guest memory in MiB, or with a G suffix (default 512;\n"
"                    %d MiB up to this host's memory)\n"
"  --vcpus N         virtual CPUs, 1 to %d (default 1)\n"
"  --cmdline STR     appended to the kernel command line\n"
"                    (kiln's defaults: \"" DEFAULT_CMDLINE "\")\n"
"  --console DEST    guest console: 'stdout' (default), 'none', or FILE[,max=SIZE]\n"
"                    (a file of at most SIZE bytes, K/M/G suffixes, default\n"
"                    16M, 0 for no cap; when full it starts over from a line\n"
"                    \"kiln-vmm: console truncated at N bytes\"); output the\n"
"                    reader of stdout leaves 64 KiB behind is dropped and\n"
"                    counted, never waited for\n"
"  --timeout SEC     stop the guest after SEC seconds (exit %d)\n"
"  --hugepages       back guest memory with 2 MiB huge pages\n"
"  --kvm PATH        the KVM device (default /dev/kvm)\n"
"  --disk PATH[,ro][,id=NAME]\n"
"                    a raw disk image as virtio-blk (/dev/vda, /dev/vdb, ...\n"
"                    in the order given); ro refuses the guest's writes\n"
"  --net tap=NAME[,mac=xx:xx:xx:xx:xx:xx]\n"
"                    virtio-net on tap NAME (the guest's eth0; MAC default\n"
"                    06:00:ac:10:00:02); address it with\n"
"                    --cmdline kiln.net=ADDR/PREFIX[,GATEWAY]\n"
"  --vsock cid=N,uds=PATH[,connect-timeout=MS][,group=NAME]\n"
"                    virtio-vsock as guest CID N (3 and up); host programs\n"
"                    connect to unix socket PATH and send \"CONNECT <port>\\n\",\n"
"                    and are closed if the guest has not answered within MS\n"
"                    (default 5000); guest connections to CID 2 port P reach\n"
"                    PATH_P\n"
"  --control PATH    serve pause, resume, snapshot DIR, shutdown and stats on\n"
"                    unix socket PATH (docs/snapshot.md)\n"
"  --control-group NAME\n"
"                    the control socket is mode 0600, for kiln-vmm's user and\n"
"                    root only; this makes it 0660 for group NAME's members\n"
"                    too (--vsock's group=NAME does the same for its socket)\n"
"  --template DIR    boot with the agent, snapshot the VM into DIR the moment\n"
"                    the agent is ready, and stop (needs --vsock)\n"
"  --restore DIR|STATE\n"
"                    start from a snapshot instead of booting; --disk, --net\n"
"                    and --vsock replace the snapshot's devices of that kind\n"
"                    in order; its vsock and net devices and read-only disks\n"
"                    must be given so (each clone its own uds and tap)\n"
"  --standby         make everything a restore needs but its snapshot (the VM,\n"
"                    its irqchip and PIT, with --vcpus its vCPUs, io_uring and\n"
"                    the console thread), say \"kiln-vmm: standby\" on stderr, then\n"
"                    wait for one line \"restore DIR|STATE\" on stdin and restore\n"
"                    it as --restore would; -v and the control socket's stats\n"
"                    count the restore from that line (end of input: exit 0)\n"
"  --memory FILE     the snapshot's memory file (default: beside STATE)\n"
"  --clone-dir DIR   keep the copies of the snapshot's writable disks in DIR\n"
"                    (default: unnamed files that vanish with the VM)\n"
"  --prefetch none|ws|all|auto\n"
"                    how a restore brings guest memory in before the vCPUs run:\n"
"                    none: a page at a time as the guest touches it; ws: the\n"
"                    working set recorded in the snapshot (control request\n"
"                    \"workingset\"); all: every page the memory file holds;\n"
"                    auto (default): ws if the snapshot has one, else none\n"
"  -v, --verbose     report boot timings and exit counts on stderr\n"
"  -h, --help        show this help\n"
"  --version         show the version\n"
"\n"
"Exit status: the guest command's exit code, or 128+N when signal N killed\n"
"it; %d: kiln-vmm failed (bad arguments, files, KVM); %d: --timeout expired;\n"
"%d: the guest crashed or reset without reporting a status; %d: the guest\n"
"command was not executable; %d: it was not found.\n",
		KILN_MIN_MEM_MIB, KILN_MAX_VCPUS, EXIT_TIMEOUT, EXIT_VMM_ERROR,
		EXIT_TIMEOUT, EXIT_GUEST_CRASH, EXIT_NOEXEC, EXIT_NOTFOUND);
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	va_list ap;

	fputs("kiln-vmm: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(EXIT_VMM_ERROR);
}

static uint64_t parse_mem(const char *s)
{
	char *end;
	unsigned long long v;
	struct sysinfo si;
	uint64_t host_mib;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s || *s == '-')
		die("--mem %s: not a number of MiB (e.g. --mem 512 or --mem 4G)", s);
	if (*end == 'G' || *end == 'g') {
		if (v > KILN_MAX_MEM_MIB / 1024)
			die("--mem %s: more than kiln's limit of %llu MiB", s, (unsigned long long)KILN_MAX_MEM_MIB);
		v *= 1024;
		end++;
	} else if (*end == 'M' || *end == 'm') {
		end++;
	}
	if (*end)
		die("--mem %s: not a number of MiB (e.g. --mem 512 or --mem 4G)", s);
	if (v < KILN_MIN_MEM_MIB || v > KILN_MAX_MEM_MIB)
		die("--mem %s: out of range (%d to %llu MiB)", s, KILN_MIN_MEM_MIB,
		    (unsigned long long)KILN_MAX_MEM_MIB);
	if (v % 2)
		die("--mem %s: must be a multiple of 2 MiB", s);
	if (sysinfo(&si) == 0) {
		host_mib = (uint64_t)si.totalram * si.mem_unit / MIB;
		if (v > host_mib)
			die("--mem %s: more than this host's %llu MiB of memory", s, (unsigned long long)host_mib);
	}
	return v;
}

static int parse_int(const char *opt, const char *s, int lo, int hi)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		die("%s %s: must be a whole number from %d to %d", opt, s, lo, hi);
	return (int)v;
}

/* Path of a file shipped beside the kiln-vmm binary. */
static const char *beside_exe(const char *rel)
{
	static char buf[2][PATH_MAX + 64];
	static int which;
	char exe[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	char *slash;

	if (n <= 0)
		return rel;
	exe[n] = '\0';
	slash = strrchr(exe, '/');
	if (slash)
		*slash = '\0';
	which ^= 1;
	snprintf(buf[which], sizeof(buf[which]), "%s/%s", exe, rel);
	return buf[which];
}

static void parse_args(int argc, char **argv, struct opts *o)
{
	enum { OPT_KERNEL = 256, OPT_INITRD, OPT_MEM, OPT_VCPUS, OPT_CMDLINE, OPT_CONSOLE,
	       OPT_TIMEOUT, OPT_HUGEPAGES, OPT_KVM, OPT_VERSION, OPT_DEVICE, OPT_CONTROL,
	       OPT_TEMPLATE, OPT_RESTORE, OPT_MEMORY, OPT_CLONE_DIR, OPT_PREFETCH,
	       OPT_CONTROL_GROUP, OPT_STANDBY };
	static const struct option longopts[] = {
		{ "kernel", required_argument, NULL, OPT_KERNEL },
		{ "initrd", required_argument, NULL, OPT_INITRD },
		{ "mem", required_argument, NULL, OPT_MEM },
		{ "vcpus", required_argument, NULL, OPT_VCPUS },
		{ "cmdline", required_argument, NULL, OPT_CMDLINE },
		{ "console", required_argument, NULL, OPT_CONSOLE },
		{ "timeout", required_argument, NULL, OPT_TIMEOUT },
		{ "hugepages", no_argument, NULL, OPT_HUGEPAGES },
		{ "kvm", required_argument, NULL, OPT_KVM },
		{ "disk", required_argument, NULL, OPT_DEVICE },
		{ "vsock", required_argument, NULL, OPT_DEVICE },
		{ "net", required_argument, NULL, OPT_DEVICE },
		{ "control", required_argument, NULL, OPT_CONTROL },
		{ "control-group", required_argument, NULL, OPT_CONTROL_GROUP },
		{ "template", required_argument, NULL, OPT_TEMPLATE },
		{ "restore", required_argument, NULL, OPT_RESTORE },
		{ "standby", no_argument, NULL, OPT_STANDBY },
		{ "prefetch", required_argument, NULL, OPT_PREFETCH },
		{ "memory", required_argument, NULL, OPT_MEMORY },
		{ "clone-dir", required_argument, NULL, OPT_CLONE_DIR },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, OPT_VERSION },
		{ NULL, 0, NULL, 0 },
	};
	int c, idx;

	memset(o, 0, sizeof(*o));
	o->kernel = getenv("KILN_KERNEL");
	o->initrd = getenv("KILN_INITRD");
	o->cmdline = "";
	o->console = "stdout";
	o->mem_mib = 512;
	o->vcpus = 1;
	/* '+': stop at the first non-option so that CMD's own flags are left alone. */
	while ((c = getopt_long(argc, argv, "+vh", longopts, &idx)) != -1) {
		switch (c) {
		case OPT_KERNEL: o->kernel = optarg; o->kernel_set = 1; break;
		case OPT_INITRD: o->initrd = optarg; break;
		case OPT_MEM: o->mem_mib = parse_mem(optarg); o->mem_set = 1; break;
		case OPT_VCPUS: o->vcpus = parse_int("--vcpus", optarg, 1, KILN_MAX_VCPUS); o->vcpus_set = 1; break;
		case OPT_CONTROL: o->control = optarg; break;
		case OPT_CONTROL_GROUP: o->control_group = optarg; break;
		case OPT_TEMPLATE: o->template_dir = optarg; break;
		case OPT_RESTORE: o->restore = optarg; break;
		case OPT_STANDBY: o->standby = 1; break;
		case OPT_MEMORY: o->memory = optarg; break;
		case OPT_CLONE_DIR: o->clone_dir = optarg; break;
		case OPT_PREFETCH:
			if (snap_prefetch_parse(optarg, &o->prefetch) < 0)
				die("--prefetch %s: none, ws, all or auto", optarg);
			o->prefetch_set = 1;
			break;
		case OPT_CMDLINE: o->cmdline = optarg; break;
		case OPT_CONSOLE: o->console = optarg; break;
		case OPT_TIMEOUT: {
			char *end;

			o->timeout_s = strtod(optarg, &end);
			if (end == optarg || *end || !(o->timeout_s > 0) || o->timeout_s > 1e7)
				die("--timeout %s: must be a positive number of seconds", optarg);
			break;
		}
		case OPT_HUGEPAGES: o->hugepages = 1; break;
		case OPT_KVM: o->kvm_dev = optarg; break;
		case OPT_DEVICE:
			if (o->ndevices == VIRTIO_MAX_DEVICES)
				die("at most %d devices", VIRTIO_MAX_DEVICES);
			o->dev_kind[o->ndevices] = longopts[idx].name;
			o->dev_spec[o->ndevices++] = optarg;
			break;
		case 'v': o->verbose = 1; break;
		case 'h': usage(stdout); exit(0);
		case OPT_VERSION: printf("kiln-vmm %s\n", KILN_VERSION); exit(0);
		default:
			fprintf(stderr, "Try 'kiln-vmm --help'.\n");
			exit(EXIT_VMM_ERROR);
		}
	}
	if (optind < argc) {
		o->cmd = argv + optind;
		o->ncmd = argc - optind;
	}
	if (o->template_dir && o->restore)
		die("--template and --restore: one or the other (a template boots; a restore starts from one)");
	if (o->standby && (o->restore || o->template_dir || o->memory))
		die("--standby takes its snapshot on stdin (\"restore DIR\"): drop --restore, --template and --memory");
	if (o->standby && (o->ncmd || *o->cmdline || o->hugepages))
		die("--standby restores a running guest: a command, --cmdline and --hugepages do not apply");
	if (o->template_dir && o->ncmd)
		die("--template runs the agent, not a command: drop the command after --");
	if (o->restore && (o->ncmd || *o->cmdline || o->hugepages))
		die("--restore resumes a running guest: a command, --cmdline and --hugepages do not apply");
	if (o->control_group && !o->control)
		die("--control-group goes with --control (the socket it lets the group use)");
	if ((o->memory || o->clone_dir || o->prefetch_set) && !o->restore && !o->standby)
		die("--memory, --clone-dir and --prefetch go with --restore (or --standby)");
	if (!o->kernel)
		o->kernel = beside_exe("guest/vmlinux");
	if (!o->initrd)
		o->initrd = beside_exe("guest/initramfs.cpio");
	if (strcmp(o->initrd, "none") == 0)
		o->initrd = NULL;
}

/* Map a whole regular file read-only; dies with a message naming it. */
static const uint8_t *map_file(const char *path, const char *what, size_t *len)
{
	struct stat st;
	void *p;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		die("%s: %s (the %s; build it with `make guest` or pass --%s PATH)",
		    path, strerror(errno), what, what);
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
		die("%s: not a regular file (the %s)", path, what);
	if (st.st_size == 0)
		die("%s: empty file (the %s)", path, what);
	p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (p == MAP_FAILED)
		die("%s: mmap: %s", path, strerror(errno));
	*len = (size_t)st.st_size;
	return p;
}

/* The kernel command line: kiln's defaults, devices, the user's, then kiln.cmd=. */
static char *build_cmdline(const struct opts *o, const struct virtio_dev *devs, int ndevs)
{
	size_t raw_len = 0, len;
	uint8_t *raw;
	char *out;
	int i;

	for (i = 0; i < o->ncmd; i++)
		raw_len += strlen(o->cmd[i]) + 1;
	len = strlen(DEFAULT_CMDLINE) + 1 + strlen(o->cmdline) + 1 + (size_t)ndevs * 64 +
	      sizeof(" " KILN_PARAM_AGENT) +
	      strlen(KILN_PARAM_CMD) + b64url_encoded_len(raw_len) + 1;
	raw = malloc(raw_len + 1);
	out = malloc(len);
	if (!raw || !out)
		die("out of memory");
	strcpy(out, DEFAULT_CMDLINE);
	for (i = 0; i < ndevs; i++) {
		strcat(out, " ");
		virtio_cmdline_arg(&devs[i], out + strlen(out), 64);
	}
	if (*o->cmdline) {
		strcat(out, " ");
		strcat(out, o->cmdline);
	}
	/* A template snapshots the moment the agent is ready, so it must run one. */
	if (o->template_dir && !strstr(o->cmdline, KILN_PARAM_AGENT))
		strcat(out, " " KILN_PARAM_AGENT);
	if (o->ncmd) {
		size_t off = 0;

		for (i = 0; i < o->ncmd; i++) {
			size_t l = strlen(o->cmd[i]) + 1;

			memcpy(raw + off, o->cmd[i], l);
			off += l;
		}
		strcat(out, " " KILN_PARAM_CMD);
		b64url_encode(raw, raw_len, out + strlen(out));
	}
	free(raw);
	return out;
}

#define CONSOLE_MAX_DEFAULT	(16 * MIB)

/* --console FILE[,max=SIZE]: the file's cap (SIZE bytes, with a K, M or G suffix). */
static uint64_t parse_console_max(const char *dest, const char *size)
{
	char *end;
	unsigned long long v;
	int shift = 0;

	errno = 0;
	v = strtoull(size, &end, 10);
	if (*end == 'K' || *end == 'k')
		shift = 10;
	else if (*end == 'M' || *end == 'm')
		shift = 20;
	else if (*end == 'G' || *end == 'g')
		shift = 30;
	if (shift)
		end++;
	if (errno || end == size || *size == '-' || *end || v > (1ULL << 50) >> shift)
		die("--console %s: max=%s is not a size (e.g. max=16M, or max=0 for no cap)", dest, size);
	v <<= shift;
	if (v && v < SERIAL_CONSOLE_MIN)
		die("--console %s: max=%s is below the smallest cap, %dK", dest, size, SERIAL_CONSOLE_MIN >> 10);
	return v;
}

static int open_console(const char *dest, uint64_t *max)
{
	const char *opt = strstr(dest, ",max=");
	char path[PATH_MAX];
	int fd;

	*max = 0;
	if (strcmp(dest, "stdout") == 0)
		return STDOUT_FILENO;
	if (strcmp(dest, "none") == 0)
		return -1;
	*max = CONSOLE_MAX_DEFAULT;
	if (opt) {
		*max = parse_console_max(dest, opt + strlen(",max="));
		if ((size_t)(opt - dest) >= sizeof(path))
			die("--console %s: path too long", dest);
		snprintf(path, sizeof(path), "%.*s", (int)(opt - dest), dest);
		dest = path;
	}
	fd = open(dest, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		die("--console %s: %s", dest, strerror(errno));
	return fd;
}

static void serial_irq(void *opaque, int level)
{
	vm_irq_line(opaque, SERIAL_COM1_IRQ, level);
}

static void guest_reset(void *opaque)
{
	vm_request_stop(opaque, VM_STOP_RESET, "the guest reset itself (a reboot, or a kernel panic)");
}

static void on_kick(int sig)
{
	(void)sig;	/* only interrupts KVM_RUN */
}

/* Console input for an interactive guest: stdin, raw when it is a terminal. */
struct console_in {
	int active;
	int tty;
	int saw_escape;
	struct termios saved;
	uint8_t buf[256];
	size_t off, len;
};

static struct console_in con_in;

static void console_restore(void)
{
	if (con_in.tty)
		tcsetattr(STDIN_FILENO, TCSANOW, &con_in.saved);
}

static void console_setup(void)
{
	struct termios t;

	con_in.active = 1;
	if (isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &con_in.saved) == 0) {
		t = con_in.saved;
		cfmakeraw(&t);
		t.c_oflag |= OPOST | ONLCR;
		tcsetattr(STDIN_FILENO, TCSANOW, &t);
		con_in.tty = 1;
		atexit(console_restore);
		fprintf(stderr, "kiln-vmm: console attached; Ctrl-A x leaves\r\n");
	}
}

/* Read stdin and feed the UART; returns 1 when the user asked to leave. */
static int console_pump(struct serial *s, int readable)
{
	if (readable && con_in.off == con_in.len) {
		ssize_t n = read(STDIN_FILENO, con_in.buf, sizeof(con_in.buf));

		if (n <= 0) {
			/* End of input: an EOF character ends the guest shell's input. */
			con_in.buf[0] = 0x04;
			n = 1;
			con_in.active = 0;
		}
		con_in.off = 0;
		con_in.len = (size_t)n;
		if (con_in.tty) {
			size_t i;

			for (i = 0; i < con_in.len; i++) {
				if (con_in.saw_escape && con_in.buf[i] == 'x')
					return 1;
				con_in.saw_escape = con_in.buf[i] == ESCAPE_CHAR;
			}
		}
	}
	con_in.off += serial_input(s, con_in.buf + con_in.off, con_in.len - con_in.off);
	return 0;
}

static const char *signal_name(int sig)
{
	const char *n = sigabbrev_np(sig);

	return n ? n : "?";
}

/* The agent is ready: snapshot the template and stop the VM. */
static void template_take(struct vm *vm, const struct snap_source *src, const struct opts *o)
{
	struct kiln_err err = { { 0 } };
	struct snap_result res;
	char detail[600];
	int r;

	if ((r = vm_pause(vm, 2000)) < 0) {
		vm_request_stop(vm, VM_STOP_ERROR, r == -ESHUTDOWN ? "the guest stopped before its snapshot"
				: "--template: the vCPUs did not pause within 2 s");
		return;
	}
	if (snapshot_take(src, o->template_dir, &res, &err) < 0) {
		snprintf(detail, sizeof(detail), "--template %s: %s", o->template_dir, err.msg);
		vm_request_stop(vm, VM_STOP_ERROR, detail);
		vm_resume(vm);
		return;
	}
	fprintf(stderr, "kiln-vmm: template %s: agent ready %.1f ms after start; state %llu KiB, memory %llu MiB of data (%llu MiB guest), disks %llu MiB; written in %.1f ms\n",
		o->template_dir, (double)(vm->t_agent_ns - src->t_start) / 1e6,
		(unsigned long long)(res.state_bytes >> 10), (unsigned long long)(res.memory_bytes >> 20),
		(unsigned long long)(vm->mem.size >> 20), (unsigned long long)(res.disk_bytes >> 20), res.total_ms);
	vm_request_stop(vm, VM_STOP_SHUTDOWN, NULL);
	vm_resume(vm);
}

/* Wait for the VM to stop, a signal, the timeout, console input, or (template) the agent. */
static int wait_for_stop(struct vm *vm, struct serial *uart, const struct opts *o,
			 const struct snap_source *src)
{
	uint64_t deadline = o->timeout_s > 0 ? now_ns() + (uint64_t)(o->timeout_s * 1e9) : 0;
	sigset_t sigs;
	int sfd, signo = 0;

	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGHUP);
	sfd = signalfd(-1, &sigs, SFD_CLOEXEC);
	while (!atomic_load(&vm->stop)) {
		struct pollfd p[4] = {
			{ .fd = vm->stop_efd, .events = POLLIN },
			{ .fd = sfd, .events = POLLIN },
			{ .fd = con_in.active && con_in.off == con_in.len ? STDIN_FILENO : -1, .events = POLLIN },
			{ .fd = o->template_dir ? vm->agent_efd : -1, .events = POLLIN },
		};
		int timeout = -1;

		if (deadline) {
			uint64_t now = now_ns();

			if (now >= deadline) {
				vm_request_stop(vm, VM_STOP_TIMEOUT, NULL);
				break;
			}
			timeout = (int)((deadline - now) / 1000000) + 1;
		}
		/* Input the UART could not take yet: retry shortly. */
		if (con_in.off < con_in.len && (timeout < 0 || timeout > 10))
			timeout = 10;
		if (poll(p, 4, timeout) < 0 && errno != EINTR)
			break;
		if (p[3].revents & POLLIN) {
			template_take(vm, src, o);
			continue;
		}
		if (p[1].revents & POLLIN) {
			struct signalfd_siginfo si;

			if (read(sfd, &si, sizeof(si)) == sizeof(si)) {
				signo = (int)si.ssi_signo;
				vm_request_stop(vm, VM_STOP_SIGNAL, NULL);
			}
		}
		if (con_in.active || con_in.off < con_in.len) {
			if (console_pump(uart, p[2].revents & (POLLIN | POLLHUP)))
				vm_request_stop(vm, VM_STOP_SIGNAL, NULL);
		}
	}
	if (sfd >= 0)
		close(sfd);
	return signo;
}

/* Map how the VM stopped to kiln-vmm's exit status, explaining on stderr. */
static int exit_status(const struct vm *vm, const struct opts *o, int signo)
{
	uint32_t st = vm->status;

	switch ((enum vm_stop)atomic_load(&vm->stop)) {
	case VM_STOP_STATUS:
		switch (KILN_STATUS_KIND(st)) {
		case KILN_STATUS_EXITED:
			return (int)KILN_STATUS_VAL(st);
		case KILN_STATUS_SIGNALED:
			fprintf(stderr, "kiln-vmm: the guest command was killed by signal %u (SIG%s)\n",
				KILN_STATUS_VAL(st), signal_name((int)KILN_STATUS_VAL(st)));
			return 128 + (int)KILN_STATUS_VAL(st);
		case KILN_STATUS_NOTFOUND:
			return EXIT_NOTFOUND;
		case KILN_STATUS_NOEXEC:
			return EXIT_NOEXEC;
		default:
			fprintf(stderr, "kiln-vmm: the guest init could not run the command (status %#x)\n", st);
			return EXIT_VMM_ERROR;
		}
	case VM_STOP_RESET:
		if (!o->ncmd) {
			/* An interactive or agent guest that rebooted is done; say how. */
			fprintf(stderr, "kiln-vmm: the VM stopped: %s\n", vm->stop_detail);
			return 0;
		}
		fprintf(stderr, "kiln-vmm: guest crashed: %s before reporting the command's status (see the console output)\n",
			vm->stop_detail);
		return EXIT_GUEST_CRASH;
	case VM_STOP_TIMEOUT:
		fprintf(stderr, "kiln-vmm: timed out after %g s; the guest was stopped\n", o->timeout_s);
		return EXIT_TIMEOUT;
	case VM_STOP_SIGNAL:
		return signo ? 128 + signo : 0;
	case VM_STOP_SHUTDOWN:
		return 0;
	case VM_STOP_ERROR:
	case VM_RUNNING:
		break;
	}
	fprintf(stderr, "kiln-vmm: %s\n", vm->stop_detail[0] ? vm->stop_detail : "the VM stopped unexpectedly");
	return EXIT_VMM_ERROR;
}

/* Everything a kiln-vmm process runs: one VM, its devices and its threads. */
static struct vm vm;
static struct serial uart;
static struct i8042 kbc;
static struct ioloop loop;
static struct tcg_kick kick;
static struct virtio_dev devs[VIRTIO_MAX_DEVICES];
static int ndevs;
static struct snap_source src;

/* Create device i of kind from spec at the address and IRQ kiln gives slot i. */
static void device_create(int i, const char *kind, const char *spec)
{
	const struct virtio_dev_ops *type = virtio_kind_find(kind);
	struct kiln_err err = { { 0 } };

	if (!type)
		die("unknown device kind %s", kind);
	if (snap_source_add(&src, i, type, spec, &err) < 0)
		die("%s", err.msg);
}

/* Boot: load the kernel and initrd, write the boot structures, create vCPUs. */
static void boot_prepare(const struct opts *o)
{
	struct kiln_err err = { { 0 } };
	struct boot_params_in bp = { 0 };
	struct kernel_info ki;
	const uint8_t *kimg, *iimg = NULL;
	size_t klen, ilen = 0;
	char *cmdline;
	int i;

	kimg = map_file(o->kernel, "kernel", &klen);
	if (o->initrd)
		iimg = map_file(o->initrd, "initrd", &ilen);
	/* Only snapshots need the kernel's identity; the CRC costs a pass over it. */
	if (o->control || o->template_dir) {
		src.kernel_crc = snap_crc32c(0, kimg, klen);
		src.kernel_size = klen;
	}
	for (i = 0; i < o->ndevices; i++)
		device_create(i, o->dev_kind[i], o->dev_spec[i]);
	ndevs = o->ndevices;
	cmdline = build_cmdline(o, devs, ndevs);
	if (kernel_load(&vm.mem, kimg, klen, &ki, &err) < 0)
		die("%s: %s", o->kernel, err.msg);
	if (iimg) {
		if (boot_place_initrd(&vm.mem, &ki, ilen, &bp.initrd_gpa, &err) < 0)
			die("%s: %s", o->initrd, err.msg);
		memcpy(GUEST_PTR(&vm.mem, bp.initrd_gpa, ilen), iimg, ilen);
		bp.initrd_size = ilen;
		munmap((void *)iimg, ilen);
	}
	munmap((void *)kimg, klen);
	bp.cmdline = cmdline;
	bp.vcpus = o->vcpus;
	if (boot_setup(&vm.mem, &ki, &bp, &err) < 0)
		die("%s", err.msg);
	free(cmdline);
	for (i = 0; i < o->vcpus; i++)
		if (vcpu_create(&vm, i, &ki, &err) < 0)
			die("%s", err.msg);
}

/*
 * --standby: the VM without memory (and with --vcpus its vCPUs) now, then
 * the snapshot's path from a line "restore DIR|STATE" on stdin. Exits 0 at
 * the end of input: the VMM was never needed.
 */
static void standby_wait(struct opts *o, int kvm_fd)
{
	static char line[PATH_MAX + 16];
	struct kiln_err err = { { 0 } };
	size_t n = 0;
	int i;

	if (vm_create_bare(&vm, kvm_fd, &err) < 0)
		die("%s", err.msg);
	for (i = 0; i < (o->vcpus_set ? o->vcpus : 0); i++)
		if (vcpu_create_bare(&vm, i, &err) < 0)
			die("%s", err.msg);
	vm.nvcpus_made = i;
	tl_mark(TL_STANDBY);
	fprintf(stderr, "kiln-vmm: standby\n");
	/* A byte at a time: what follows the line is not ours to read. */
	for (;;) {
		ssize_t r = read(STDIN_FILENO, line + n, 1);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			die("--standby: reading stdin: %s", strerror(errno));
		if (r == 0) {
			if (n)
				die("--standby: stdin ended inside a line (want \"restore DIR\\n\")");
			exit(0);
		}
		if (line[n] == '\n')
			break;
		if (++n == sizeof(line) - 1)
			die("--standby: a line of more than %zu bytes on stdin (want \"restore DIR\")", sizeof(line) - 2);
	}
	tl_mark(TL_REQUEST);
	line[n] = '\0';
	if (strncmp(line, "restore ", 8) != 0 || !line[8])
		die("--standby: \"%.80s\" on stdin: want \"restore DIR\" or \"restore STATE\"", line);
	o->restore = line + 8;
}

/*
 * Restore: the snapshot layer maps the memory file and brings back KVM,
 * vCPU and device state (snapshot/restore.c).
 */
static void restore_prepare(const struct opts *o)
{
	struct kiln_err err = { { 0 } };
	struct snap_restore_opts ro = {
		.path = o->restore,
		.memory = o->memory,
		.clone_dir = o->clone_dir,
		.prefetch = o->prefetch,
		.kernel = o->kernel_set ? o->kernel : NULL,
		.mem_size = o->mem_set ? o->mem_mib * MIB : 0,
		.vcpus = o->vcpus_set ? o->vcpus : 0,
		.ndevices = o->ndevices,
		.kinds = o->dev_kind,
		.specs = o->dev_spec,
	};

	if (snap_restore(&ro, &src, &err) < 0)
		die("%s", err.msg);
	ndevs = src.ndevs;
}

/*
 * kiln-vmm -v after a restore: "restored in MS ms" (start to vCPUs running),
 * then each step's share and the page faults the process took in it.
 */
static void print_restore_times(void)
{
	static const enum tl_mark steps[] = { TL_PARSED, TL_MAPPED, TL_KVM, TL_DEVICES, TL_PREFETCHED, TL_RUNNING };
	struct tl_point t0, prev, p;
	char buf[512];
	size_t n = 0;
	unsigned i;

	if (!tl_origin(&t0) || !tl_get(TL_RUNNING, &p))
		return;
	prev = t0;
	for (i = 0; i < sizeof(steps) / sizeof(steps[0]) && n < sizeof(buf); i++) {
		if (!tl_get(steps[i], &p))
			continue;
		n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s%s %.2f ms %llu/%llu", n ? ", " : "", tl_name(steps[i]),
				      (double)(p.ns - prev.ns) / 1e6, (unsigned long long)(p.minflt - prev.minflt),
				      (unsigned long long)(p.majflt - prev.majflt));
		prev = p;
	}
	fprintf(stderr, "kiln-vmm: restored in %.2f ms (%s; minor/major page faults)\n", (double)(p.ns - t0.ns) / 1e6, buf);
}

/* The timeline's KVM counters: every vCPU's (tl_set_kvm_counters, once they all exist). */
static void kvm_counters(uint64_t v[KS_N])
{
	int i;

	for (i = 0; i < vm.nvcpus; i++)
		(void)kvm_stats_add(&vm.vcpus[i].ks, v);
}

static void resume_device(void *arg)
{
	virtio_mmio_resumed(arg);
}

int main(int argc, char **argv)
{
	uint64_t t0 = now_ns(), t_loop;
	static struct control ctl;
	struct guest_mem mem;
	struct kiln_err err = { { 0 } };
	struct sigaction sa;
	sigset_t block;
	struct opts o;
	int kvm_fd, con_fd, i, signo, rc, kick_ms;
	uint64_t con_max;

	tl_mark(TL_START);
	parse_args(argc, argv, &o);
	con_fd = open_console(o.console, &con_max);
	src.t_start = t0;
	src.vmm_version = "kiln-vmm " KILN_VERSION;
	src.kernel_path = o.kernel;

	kvm_fd = kvm_open(o.kvm_dev, &err);
	if (kvm_fd < 0)
		die("%s", err.msg);
	t_loop = now_ns();
	if (ioloop_init(&loop, 256, &err) < 0)
		die("%s", err.msg);
	t_loop = now_ns() - t_loop;
	if ((rc = serial_init(&uart, con_fd, serial_irq, &vm)) < 0)
		die("cannot start the console's writer thread: %s", strerror(-rc));
	serial_set_console_max(&uart, con_max);
	src.vm = &vm;
	src.uart = &uart;
	src.loop = &loop;
	src.devs = devs;
	if (o.standby)
		standby_wait(&o, kvm_fd);
	if (o.restore) {
		vm.kvm_fd = kvm_fd;
		restore_prepare(&o);
	} else {
		if (guest_mem_alloc(&mem, o.mem_mib * MIB, o.hugepages, &err) < 0)
			die("%s", err.msg);
		if (vm_create(&vm, kvm_fd, &mem, &err) < 0)
			die("%s", err.msg);
		vm.nvcpus = o.vcpus;
		boot_prepare(&o);
	}
	src.ndevs = ndevs;

	kbc.reset = guest_reset;
	kbc.opaque = &vm;
	if (bus_add(&vm.pio, SERIAL_COM1_BASE, SERIAL_NPORTS, serial_io, &uart) < 0 ||
	    bus_add(&vm.pio, I8042_DATA_PORT, 1, i8042_io, &kbc) < 0 ||
	    bus_add(&vm.pio, I8042_CMD_PORT, 1, i8042_io, &kbc) < 0 ||
	    bus_add(&vm.pio, KILN_PORT_EXIT, 4, guest_port_io, &vm) < 0 ||
	    bus_add(&vm.pio, KILN_PORT_MARK, 1, guest_port_io, &vm) < 0)
		die("cannot register the port I/O devices");

	/* vCPU threads take SIGUSR1 (a kick out of KVM_RUN); the rest comes by signalfd. */
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_kick;
	sigaction(SIGUSR1, &sa, NULL);
	sigemptyset(&block);
	sigaddset(&block, SIGUSR1);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &block, NULL);
	signal(SIGPIPE, SIG_IGN);
	if ((rc = ioloop_start(&loop)) < 0)
		die("cannot start the I/O thread: %s", strerror(-rc));
	/* Queued work and lost kicks from before the snapshot, on the I/O thread. */
	if (o.restore)
		for (i = 0; i < ndevs; i++)
			ioloop_call_sync(&loop, resume_device, &devs[i]);
	if (o.control && control_start(&ctl, o.control, o.control_group, &src, &err) < 0)
		die("%s", err.msg);
	if (!o.ncmd && !o.restore && !o.template_dir)
		console_setup();
	if (o.restore && (rc = snap_prefetch_wait(&src)) < 0)
		fprintf(stderr, "kiln-vmm: prefetching the working set: %s (the guest faults its pages in itself)\n",
			strerror(-rc));
	tl_set_kvm_counters(kvm_counters);
	for (i = 0; i < vm.nvcpus; i++) {
		pthread_mutex_lock(&vm.lock);
		rc = pthread_create(&vm.vcpus[i].thread, NULL, vcpu_thread, &vm.vcpus[i]);
		vm.vcpus[i].started = rc == 0;
		pthread_mutex_unlock(&vm.lock);
		if (rc)
			die("cannot start vCPU thread %d: %s", i, strerror(rc));
	}
	tl_mark(TL_RUNNING);
	if (host_cpu_is_tcg() && (kick_ms = tcg_kick_period()) > 0) {
		if ((rc = tcg_kick_start(&kick, &vm, kick_ms)) < 0)
			die("cannot start the wakeup-kick thread: %s", strerror(-rc));
		if (o.verbose)
			fprintf(stderr, "kiln-vmm: the host CPU is QEMU's TCG emulator: every vCPU gets a wakeup kick every %d ms\n",
				kick_ms);
	}
	if (o.verbose && o.restore)
		print_restore_times();
	signo = wait_for_stop(&vm, &uart, &o, &src);
	vm_request_stop(&vm, VM_STOP_SIGNAL, NULL);	/* no-op if already stopped */
	tcg_kick_stop(&kick);
	if (o.control)
		control_stop(&ctl);
	for (i = 0; i < vm.nvcpus; i++)
		pthread_join(vm.vcpus[i].thread, NULL);
	ioloop_stop(&loop);
	/* The guest's last output, unless the reader of stdout stopped reading a second ago. */
	serial_flush(&uart, 1000);

	if (o.verbose) {
		uint64_t exits = 0;

		for (i = 0; i < vm.nvcpus; i++)
			exits += vm.vcpus[i].exits;
		if (vm.t_mark_ns)
			fprintf(stderr, "kiln-vmm: guest userspace reached %.2f ms after start\n",
				(double)(vm.t_mark_ns - t0) / 1e6);
		if (vm.t_agent_ns)
			fprintf(stderr, "kiln-vmm: guest agent ready %.2f ms after start\n",
				(double)(vm.t_agent_ns - t0) / 1e6);
		fprintf(stderr, "kiln-vmm: ran %.2f ms, %llu vCPU exits, %llu console bytes, %llu I/O completions; io_uring set up in %.1f us\n",
			(double)(now_ns() - t0) / 1e6, (unsigned long long)exits,
			(unsigned long long)uart.tx_bytes, (unsigned long long)loop.completions,
			(double)t_loop / 1e3);
		if (uart.rx_bytes || con_in.len)
			fprintf(stderr, "kiln-vmm: console input: %llu bytes to the UART, %llu read by the guest, %u held, %zu not taken; %llu saved from FIFO clears; RX interrupts %s\n",
				(unsigned long long)uart.rx_bytes, (unsigned long long)uart.rbr_reads, uart.nheld,
				con_in.len - con_in.off, (unsigned long long)uart.rx_requeued,
				uart.ier & 1 ? "on" : "off");
		if (kick.sent)
			fprintf(stderr, "kiln-vmm: %llu wakeup kicks (QEMU's TCG)\n", kick.sent);
		if (uart.tx_truncations)
			fprintf(stderr, "kiln-vmm: console file: started over %llu times at max=%llu bytes\n",
				(unsigned long long)uart.tx_truncations, (unsigned long long)con_max);
	}
	pthread_mutex_lock(&uart.lock);
	if (uart.tx_dropped || uart.tx_count)
		fprintf(stderr, "kiln-vmm: %llu of %llu bytes of console output were dropped: %s\n",
			(unsigned long long)(uart.tx_dropped + uart.tx_count), (unsigned long long)uart.tx_bytes,
			con_fd == STDOUT_FILENO ? "kiln-vmm's stdout was not read fast enough (or at all)"
			: "the console file could not be written");
	pthread_mutex_unlock(&uart.lock);
	rc = exit_status(&vm, &o, signo);
	log_flush();
	for (i = 0; i < ndevs; i++)
		virtio_mmio_destroy(&devs[i]);
	ioloop_destroy(&loop);
	serial_destroy(&uart);
	vm_destroy(&vm);
	close(kvm_fd);
	if (con_fd > STDOUT_FILENO)
		close(con_fd);
	return rc;
}
