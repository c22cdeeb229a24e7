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

#include "../devices/devices.h"
#include "../devices/virtio.h"
#include "base64.h"
#include "ioloop.h"
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

#define MAX_DEVICES	16
#define DEVICE_MMIO_BASE 0xd0000000ULL
#define DEVICE_MMIO_STEP 0x1000ULL
/* ISA-free IOAPIC pins for virtio devices (4 is COM1, 8 the RTC's). */
static const uint32_t device_irqs[MAX_DEVICES] = {
	5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
};

/* A virtio device asked for on the command line. */
struct device_spec {
	const char *option;
	virtio_create_fn *create;
	const char *spec;
};

static const struct {
	const char *option;
	virtio_create_fn *create;
} device_types[] = {
	{ "disk", virtio_blk_create },
	{ "vsock", virtio_vsock_create },
	{ "net", virtio_net_create },
};

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
	char **cmd;		/* guest command, NULL for an interactive shell */
	int ncmd;
	struct device_spec devices[MAX_DEVICES];
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
"  --console DEST    guest console: 'stdout' (default), 'none', or a file\n"
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
"  --vsock cid=N,uds=PATH\n"
"                    virtio-vsock as guest CID N (3 and up); host programs\n"
"                    connect to unix socket PATH and send \"CONNECT <port>\\n\",\n"
"                    guest connections to CID 2 port P reach PATH_P\n"
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
	       OPT_TIMEOUT, OPT_HUGEPAGES, OPT_KVM, OPT_VERSION, OPT_DEVICE };
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
		case OPT_KERNEL: o->kernel = optarg; break;
		case OPT_INITRD: o->initrd = optarg; break;
		case OPT_MEM: o->mem_mib = parse_mem(optarg); break;
		case OPT_VCPUS: o->vcpus = parse_int("--vcpus", optarg, 1, KILN_MAX_VCPUS); break;
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
		case OPT_DEVICE: {
			size_t t;

			if (o->ndevices == MAX_DEVICES)
				die("at most %d devices", MAX_DEVICES);
			for (t = 0; t < sizeof(device_types) / sizeof(device_types[0]); t++)
				if (strcmp(device_types[t].option, longopts[idx].name) == 0)
					break;
			o->devices[o->ndevices++] = (struct device_spec){
				device_types[t].option, device_types[t].create, optarg };
			break;
		}
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

static int open_console(const char *dest)
{
	int fd;

	if (strcmp(dest, "stdout") == 0)
		return STDOUT_FILENO;
	if (strcmp(dest, "none") == 0)
		return -1;
	fd = open(dest, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
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

/* Wait for the VM to stop, a signal, the timeout, or console input. */
static int wait_for_stop(struct vm *vm, struct serial *uart, const struct opts *o)
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
		struct pollfd p[3] = {
			{ .fd = vm->stop_efd, .events = POLLIN },
			{ .fd = sfd, .events = POLLIN },
			{ .fd = con_in.active && con_in.off == con_in.len ? STDIN_FILENO : -1, .events = POLLIN },
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
		if (poll(p, 3, timeout) < 0 && errno != EINTR)
			break;
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
		if (!o->ncmd)
			return 0;	/* an interactive guest that rebooted is done */
		fprintf(stderr, "kiln-vmm: guest crashed: %s before reporting the command's status (see the console output)\n",
			vm->stop_detail);
		return EXIT_GUEST_CRASH;
	case VM_STOP_TIMEOUT:
		fprintf(stderr, "kiln-vmm: timed out after %g s; the guest was stopped\n", o->timeout_s);
		return EXIT_TIMEOUT;
	case VM_STOP_SIGNAL:
		return signo ? 128 + signo : 0;
	case VM_STOP_ERROR:
	case VM_RUNNING:
		break;
	}
	fprintf(stderr, "kiln-vmm: %s\n", vm->stop_detail[0] ? vm->stop_detail : "the VM stopped unexpectedly");
	return EXIT_VMM_ERROR;
}

int main(int argc, char **argv)
{
	uint64_t t0 = now_ns(), t_loop;
	static struct vm vm;
	static struct serial uart;
	static struct i8042 kbc;
	static struct ioloop loop;
	static struct virtio_dev devs[MAX_DEVICES];
	struct kernel_info ki;
	struct guest_mem mem;
	struct kiln_err err = { { 0 } };
	struct boot_params_in bp = { 0 };
	struct sigaction sa;
	const uint8_t *kimg, *iimg = NULL;
	size_t klen, ilen = 0;
	sigset_t block;
	struct opts o;
	char *cmdline;
	int kvm_fd, con_fd, i, signo, rc;

	parse_args(argc, argv, &o);
	kimg = map_file(o.kernel, "kernel", &klen);
	if (o.initrd)
		iimg = map_file(o.initrd, "initrd", &ilen);
	con_fd = open_console(o.console);

	kvm_fd = kvm_open(o.kvm_dev, &err);
	if (kvm_fd < 0)
		die("%s", err.msg);
	if (guest_mem_alloc(&mem, o.mem_mib * MIB, o.hugepages, &err) < 0)
		die("%s", err.msg);
	if (vm_create(&vm, kvm_fd, &mem, &err) < 0)
		die("%s", err.msg);
	vm.nvcpus = o.vcpus;
	t_loop = now_ns();
	if (ioloop_init(&loop, 256, &err) < 0)
		die("%s", err.msg);
	t_loop = now_ns() - t_loop;
	for (i = 0; i < o.ndevices; i++) {
		if (o.devices[i].create(&devs[i], o.devices[i].spec, &vm, &vm.mem, &loop,
					DEVICE_MMIO_BASE + (uint64_t)i * DEVICE_MMIO_STEP,
					device_irqs[i], &err) < 0)
			die("%s", err.msg);
	}
	cmdline = build_cmdline(&o, devs, o.ndevices);
	if (kernel_load(&vm.mem, kimg, klen, &ki, &err) < 0)
		die("%s: %s", o.kernel, err.msg);
	if (iimg) {
		if (boot_place_initrd(&vm.mem, &ki, ilen, &bp.initrd_gpa, &err) < 0)
			die("%s: %s", o.initrd, err.msg);
		memcpy(GUEST_PTR(&vm.mem, bp.initrd_gpa, ilen), iimg, ilen);
		bp.initrd_size = ilen;
		munmap((void *)iimg, ilen);
	}
	munmap((void *)kimg, klen);
	bp.cmdline = cmdline;
	bp.vcpus = o.vcpus;
	if (boot_setup(&vm.mem, &ki, &bp, &err) < 0)
		die("%s", err.msg);
	free(cmdline);

	serial_init(&uart, con_fd, serial_irq, &vm);
	kbc.reset = guest_reset;
	kbc.opaque = &vm;
	if (bus_add(&vm.pio, SERIAL_COM1_BASE, SERIAL_NPORTS, serial_io, &uart) < 0 ||
	    bus_add(&vm.pio, I8042_DATA_PORT, 1, i8042_io, &kbc) < 0 ||
	    bus_add(&vm.pio, I8042_CMD_PORT, 1, i8042_io, &kbc) < 0 ||
	    bus_add(&vm.pio, KILN_PORT_EXIT, 4, guest_port_io, &vm) < 0 ||
	    bus_add(&vm.pio, KILN_PORT_MARK, 1, guest_port_io, &vm) < 0)
		die("cannot register the port I/O devices");
	for (i = 0; i < o.vcpus; i++)
		if (vcpu_create(&vm, i, &ki, &err) < 0)
			die("%s", err.msg);

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
	if (!o.ncmd)
		console_setup();
	for (i = 0; i < o.vcpus; i++) {
		pthread_mutex_lock(&vm.lock);
		rc = pthread_create(&vm.vcpus[i].thread, NULL, vcpu_thread, &vm.vcpus[i]);
		vm.vcpus[i].started = rc == 0;
		pthread_mutex_unlock(&vm.lock);
		if (rc)
			die("cannot start vCPU thread %d: %s", i, strerror(rc));
	}
	signo = wait_for_stop(&vm, &uart, &o);
	vm_request_stop(&vm, VM_STOP_SIGNAL, NULL);	/* no-op if already stopped */
	for (i = 0; i < o.vcpus; i++)
		pthread_join(vm.vcpus[i].thread, NULL);
	ioloop_stop(&loop);

	if (o.verbose) {
		uint64_t exits = 0;

		for (i = 0; i < o.vcpus; i++)
			exits += vm.vcpus[i].exits;
		if (vm.t_mark_ns)
			fprintf(stderr, "kiln-vmm: guest userspace reached %.2f ms after start\n",
				(double)(vm.t_mark_ns - t0) / 1e6);
		fprintf(stderr, "kiln-vmm: ran %.2f ms, %llu vCPU exits, %llu console bytes, %llu I/O completions; io_uring set up in %.1f us\n",
			(double)(now_ns() - t0) / 1e6, (unsigned long long)exits,
			(unsigned long long)uart.tx_bytes, (unsigned long long)loop.completions,
			(double)t_loop / 1e3);
	}
	rc = exit_status(&vm, &o, signo);
	for (i = 0; i < o.ndevices; i++)
		virtio_mmio_destroy(&devs[i]);
	ioloop_destroy(&loop);
	serial_destroy(&uart);
	vm_destroy(&vm);
	close(kvm_fd);
	if (con_fd > STDOUT_FILENO)
		close(con_fd);
	return rc;
}
