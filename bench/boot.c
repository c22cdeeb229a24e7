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
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#include <dirent.h>

#include "abi.h"

/*
 * kiln-vmm's default kernel command line (DEFAULT_CMDLINE in vmm/main.c). At
 * start-up it is read back from `kiln-vmm --help`, so that QEMU gets exactly
 * what kiln-vmm would use even if this copy has drifted; this one is the
 * fallback.
 */
#define KILN_DEFAULT_CMDLINE	"console=ttyS0 reboot=k panic=-1 quiet no_timer_check"
/* What kiln-agent prints on its console once it listens (guest/agent/loop.c). */
#define AGENT_READY_MARK	"kiln-agent: ready"
#define GUEST_PARAMS		KILN_PARAM_BOOTMARK " " KILN_PARAM_AGENT
#define VHOST_VSOCK		"/dev/vhost-vsock"

#define DEFAULT_RUNS		10
#define DEFAULT_WARMUP		1
#define DEFAULT_MEM_MIB		512
#define DEFAULT_TIMEOUT_S	60.0
#define TAIL_MAX		4096	/* console/stderr bytes kept for diagnostics */

enum { VMM_KILN, VMM_QEMU, NVMM };
static const char *const vmm_label[NVMM] = { "kiln", "qemu" };

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

/* Finds a mark (KILN_BOOT_MARK, AGENT_READY_MARK) at the end of a console line, across reads. */
struct marker {
	const char *mark;
	size_t mlen;
	char last[64];		/* last mlen bytes of the current line */
	size_t n;
	int candidate;		/* the current line so far ends with the marker */
	double t_candidate;	/* when the marker's last byte arrived */
	int found;
	double t_found;
};

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

static const char *prog = "bench-boot";

static void vmsg(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));
static void vmsg(const char *fmt, va_list ap)
{
	fprintf(stderr, "%s: ", prog);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
}

static void msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void msg(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vmsg(fmt, ap);
	va_end(ap);
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vmsg(fmt, ap);
	va_end(ap);
	exit(2);
}

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (!p)
		die("out of memory");
	return p;
}

static char *xstrdup(const char *s)
{
	size_t n = strlen(s) + 1;

	return memcpy(xmalloc(n), s, n);
}

static void tail_add(struct tail *t, const char *p, size_t n)
{
	t->total += n;
	if (n >= TAIL_MAX) {
		memcpy(t->buf, p + n - TAIL_MAX, TAIL_MAX);
		t->len = TAIL_MAX;
		return;
	}
	if (t->len + n > TAIL_MAX) {
		size_t drop = t->len + n - TAIL_MAX;

		memmove(t->buf, t->buf + drop, t->len - drop);
		t->len -= drop;
	}
	memcpy(t->buf + t->len, p, n);
	t->len += n;
}

/* Print the last lines of a tail to stderr, indented, control bytes shown as '?'. */
static void tail_show(const char *what, const struct tail *t, int max_lines)
{
	size_t start = t->len, i;
	int lines = 0;

	if (!t->len)
		return;
	while (start > 0) {
		if (t->buf[start - 1] == '\n' && start != t->len && ++lines >= max_lines)
			break;
		start--;
	}
	fprintf(stderr, "    last %s output:\n      ", what);
	for (i = start; i < t->len; i++) {
		unsigned char c = (unsigned char)t->buf[i];

		if (c == '\n') {
			if (i + 1 < t->len)
				fputs("\n      ", stderr);
		} else if (c == '\r') {
			continue;
		} else {
			fputc(c >= 0x20 && c < 0x7f ? c : '?', stderr);
		}
	}
	fputc('\n', stderr);
}

/*
 * Feed console bytes, read at time t. The marker counts when a line ends with
 * it (whatever the line started with: a kernel message the init's write cut
 * into still leaves the marker at the end of the line); it is timed by the
 * read that brought its last byte, and confirmed by the end of the line.
 */
static void marker_init(struct marker *m, const char *mark)
{
	memset(m, 0, sizeof(*m));
	m->mark = mark;
	m->mlen = strlen(mark);
	if (m->mlen > sizeof(m->last))
		die("internal error: console mark \"%s\" too long", mark);
}

static void marker_feed(struct marker *m, const char *p, size_t n, double t)
{
	const size_t mlen = m->mlen;
	size_t i;

	for (i = 0; i < n && !m->found; i++) {
		char c = p[i];

		if (c == '\n') {
			if (m->candidate) {
				m->found = 1;
				m->t_found = m->t_candidate;
			}
			m->n = 0;
			m->candidate = 0;
			continue;
		}
		if (c == '\r' || c == '\0')
			continue;	/* CRLF consoles; NUL padding */
		if (m->n == mlen) {
			memmove(m->last, m->last + 1, mlen - 1);
			m->n--;
		}
		m->last[m->n++] = c;
		m->candidate = m->n == mlen && memcmp(m->last, m->mark, mlen) == 0;
		if (m->candidate)
			m->t_candidate = t;
	}
}

/*
 * RSS of the VMM without its guest RAM, from /proc/PID/smaps: the sum of Rss
 * over every mapping except the guest RAM, which is taken to be the smallest
 * anonymous mapping (no file, no [name]) at least as big as guest memory.
 * Both kiln-vmm and QEMU (memory-backend-ram) mmap guest RAM as one anonymous
 * mapping of exactly that size; "smallest" rather than "largest" keeps bigger
 * anonymous reservations (QEMU's 1 GiB TCG code buffer, were it ever run
 * without KVM) from being mistaken for it.
 */
static int sample_rss(pid_t pid, uint64_t guest_bytes, struct run *r)
{
	char path[32];
	char *line = NULL;
	size_t cap = 0;
	FILE *f;
	uint64_t size = 0, best_size = 0;
	long total = 0, best_rss = -1;
	int anon = 0, nmaps = 0;

	snprintf(path, sizeof(path), "/proc/%d/smaps", (int)pid);
	f = fopen(path, "re");
	if (!f) {
		snprintf(r->rss_why, sizeof(r->rss_why), "%s: %s", path, strerror(errno));
		return -1;
	}
	while (getline(&line, &cap, f) > 0) {
		unsigned long long start, end, off, inode;
		unsigned maj, min;
		char perms[8];
		int pos = 0;
		long kib;

		if (sscanf(line, "%llx-%llx %7s %llx %x:%x %llu %n",
			   &start, &end, perms, &off, &maj, &min, &inode, &pos) >= 7 && pos > 0) {
			const char *name = line + pos;

			size = end - start;
			anon = inode == 0 && (*name == '\0' || *name == '\n');
			nmaps++;
		} else if (sscanf(line, "Rss: %ld kB", &kib) == 1) {
			total += kib;
			if (anon && size >= guest_bytes && (best_rss < 0 || size < best_size)) {
				best_size = size;
				best_rss = kib;
			}
		}
	}
	free(line);
	fclose(f);
	if (nmaps == 0) {
		snprintf(r->rss_why, sizeof(r->rss_why), "%s: empty (the VMM had already exited)", path);
		return -1;
	}
	if (best_rss < 0) {
		snprintf(r->rss_why, sizeof(r->rss_why),
			 "no anonymous mapping of at least %" PRIu64 " MiB (the guest RAM) in %s",
			 guest_bytes >> 20, path);
		return -1;
	}
	r->rss_vmm_kib = total - best_rss;
	r->rss_guest_kib = best_rss;
	r->rss_ok = 1;
	return 0;
}

/*
 * CPU time of every thread of pid so far, in ms: the sum of the first field
 * of /proc/PID/task/TID/schedstat (run time in ns; a vCPU thread's guest time
 * included), else utime+stime from /proc/PID/stat (clock ticks). NAN if
 * neither can be read. The VMM keeps running: it is killed after the last mark.
 */
static double sample_cpu_ms(pid_t pid)
{
	char path[64], buf[512];
	unsigned long long ns, sum = 0;
	unsigned long ut, st;
	struct dirent *d;
	int n = 0, fd;
	ssize_t len;
	DIR *dir;
	char *p;

	snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
	dir = opendir(path);
	if (dir) {
		while ((d = readdir(dir)) != NULL) {
			FILE *f;

			if (d->d_name[0] == '.')
				continue;
			snprintf(path, sizeof(path), "/proc/%d/task/%.16s/schedstat", (int)pid, d->d_name);
			f = fopen(path, "re");
			if (!f)
				continue;
			if (fscanf(f, "%llu", &ns) == 1) {
				sum += ns;
				n++;
			}
			fclose(f);
		}
		closedir(dir);
		if (n)
			return (double)sum / 1e6;
	}
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NAN;
	len = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (len <= 0)
		return NAN;
	buf[len] = '\0';
	p = strrchr(buf, ')');	/* the command name may hold spaces */
	if (!p || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
		return NAN;
	return (double)(ut + st) * 1e3 / (double)sysconf(_SC_CLK_TCK);
}

/* ---- processes ----------------------------------------------------------------- */

static int devnull_fd = -1;

static void set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl >= 0)
		fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* dup2 that also works when fd == target (clearing close-on-exec). */
static int move_fd(int fd, int target)
{
	if (fd == target)
		return fcntl(fd, F_SETFD, 0);
	return dup2(fd, target);
}

/*
 * fork + execvp argv with stdin from /dev/null and stdout/stderr to out/err.
 * Returns the pid, or -1 with *exec_errno set when it could not be started.
 * The child dies with us (PR_SET_PDEATHSIG).
 */
static pid_t spawn(char *const argv[], int out, int err, int *exec_errno)
{
	int ep[2], e = 0;
	pid_t parent = getpid(), pid;
	ssize_t n;

	*exec_errno = 0;
	if (pipe2(ep, O_CLOEXEC) < 0) {
		*exec_errno = errno;
		return -1;
	}
	pid = fork();
	if (pid < 0) {
		*exec_errno = errno;
		close(ep[0]);
		close(ep[1]);
		return -1;
	}
	if (pid == 0) {
		sigset_t all;

		sigemptyset(&all);
		sigprocmask(SIG_SETMASK, &all, NULL);
		signal(SIGPIPE, SIG_DFL);
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127);
		/* out/err are never 0-2 here unless ours were closed; move stdin first. */
		if (move_fd(devnull_fd, STDIN_FILENO) < 0 || move_fd(out, STDOUT_FILENO) < 0 ||
		    move_fd(err, STDERR_FILENO) < 0) {
			e = errno;
		} else {
			/* Nothing else we inherited goes to the VMM either (Linux >= 5.11). */
			close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);
			execvp(argv[0], argv);
			e = errno;
		}
		(void)!write(ep[1], &e, sizeof(e));
		_exit(127);
	}
	close(ep[1]);
	do
		n = read(ep[0], &e, sizeof(e));
	while (n < 0 && errno == EINTR);
	close(ep[0]);
	if (n == (ssize_t)sizeof(e)) {
		*exec_errno = e ? e : EIO;
		while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
			;
		return -1;
	}
	return pid;
}

static int open_pidfd(pid_t pid)
{
#ifdef SYS_pidfd_open
	int fd = (int)syscall(SYS_pidfd_open, pid, 0);

	if (fd >= 0)
		fcntl(fd, F_SETFD, FD_CLOEXEC);	/* pidfds are close-on-exec, but be sure */
	return fd;
#else
	(void)pid;
	return -1;
#endif
}

/* Has pid exited (a zombie now)? Leaves it for wait4. */
static int has_exited(pid_t pid)
{
	siginfo_t si;

	memset(&si, 0, sizeof(si));
	if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) < 0)
		return errno == ECHILD;
	return si.si_pid == pid;
}

/* Read what is there; returns bytes read, 0 at EOF (or error), -1 for "try later". */
static ssize_t read_some(int fd, char *buf, size_t len)
{
	ssize_t n;

	do
		n = read(fd, buf, len);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return errno == EAGAIN || errno == EWOULDBLOCK ? -1 : 0;
	return n;
}

/* Feed console bytes to both marks; take the timings and samples each one calls for. */
static void console_feed(struct marker m[2], const char *p, size_t n, pid_t pid, int alive,
			 double t0, struct run *r)
{
	marker_feed(&m[0], p, n, now_ms());
	marker_feed(&m[1], p, n, now_ms());
	if (m[0].found && !r->marker) {
		r->marker = 1;
		r->t_mark_ms = m[0].t_found - t0;
		r->cpu_mark_ms = alive ? sample_cpu_ms(pid) : NAN;
	}
	if (m[1].found && !r->ready) {
		r->ready = 1;
		r->t_ready_ms = m[1].t_found - t0;
		r->cpu_ready_ms = alive ? sample_cpu_ms(pid) : NAN;
	}
}

/*
 * One boot: exec argv and read its console until the last mark expected of
 * it (AGENT_READY_MARK when the VMM has a vsock device, else KILN_BOOT_MARK),
 * sample its memory there and kill it, all under the timeout. A VMM that
 * exits before that mark failed.
 */
static void boot_once(char *const argv[], const struct opts *o, int want_ready, struct run *r)
{
	static char buf[65536];
	int outp[2], errp[2], pidfd, exec_errno, timed_out = 0;
	int out_open = 1, err_open = 1, exited = 0, done = 0;
	double t0, deadline;
	struct marker m[2];
	struct rusage ru;
	pid_t pid;
	int st;

	memset(r, 0, sizeof(*r));
	r->cpu_mark_ms = r->cpu_ready_ms = NAN;
	marker_init(&m[0], KILN_BOOT_MARK);
	marker_init(&m[1], AGENT_READY_MARK);
	if (pipe2(outp, O_CLOEXEC) < 0 || pipe2(errp, O_CLOEXEC) < 0)
		die("pipe: %s", strerror(errno));
	/* A roomier pipe: the console never waits on us while we read smaps. */
	fcntl(outp[0], F_SETPIPE_SZ, 1 << 20);

	t0 = now_ms();
	pid = spawn(argv, outp[1], errp[1], &exec_errno);
	close(outp[1]);
	close(errp[1]);
	if (pid < 0) {
		snprintf(r->why, sizeof(r->why), "cannot run %s: %s", argv[0], strerror(exec_errno));
		close(outp[0]);
		close(errp[0]);
		return;
	}
	pidfd = open_pidfd(pid);
	set_nonblock(outp[0]);
	set_nonblock(errp[0]);
	deadline = t0 + o->timeout_s * 1e3;

	while (!exited && !done) {
		struct pollfd p[3] = {
			{ .fd = out_open ? outp[0] : -1, .events = POLLIN },
			{ .fd = err_open ? errp[0] : -1, .events = POLLIN },
			{ .fd = pidfd, .events = POLLIN },
		};
		double now = now_ms();
		int timeout_ms, reads;
		ssize_t n;

		if (now >= deadline) {
			timed_out = 1;
			break;
		}
		timeout_ms = (int)(deadline - now) + 1;
		/* Without a pidfd, look for the exit every millisecond. */
		if (pidfd < 0 && timeout_ms > 1)
			timeout_ms = 1;
		if (poll(p, 3, timeout_ms) < 0 && errno != EINTR)
			die("poll: %s", strerror(errno));

		/* (a bounded number of reads: a flood of output must not starve the
		 * exit and the deadline) */
		for (reads = 0; reads < 64 && out_open && !done &&
				(n = read_some(outp[0], buf, sizeof(buf))) != -1; reads++) {
			if (n == 0) {
				out_open = 0;
				break;
			}
			console_feed(m, buf, (size_t)n, pid, 1, t0, r);
			tail_add(&r->con, buf, (size_t)n);
			done = want_ready ? r->ready : r->marker;
		}
		for (reads = 0; reads < 64 && err_open &&
				(n = read_some(errp[0], buf, sizeof(buf))) != -1; reads++) {
			if (n == 0) {
				err_open = 0;
				break;
			}
			tail_add(&r->err, buf, (size_t)n);
		}
		if (!done && (pidfd >= 0 ? (p[2].revents & (POLLIN | POLLHUP)) != 0 : has_exited(pid)))
			exited = 1;
	}
	if (done)
		sample_rss(pid, (uint64_t)o->mem_mib << 20, r);
	if (!exited)
		kill(pid, SIGKILL);
	while (wait4(pid, &st, 0, &ru) < 0) {
		if (errno != EINTR)
			die("wait4: %s", strerror(errno));
	}
	/* What the VMM wrote before it ended is in the pipes (a descendant could
	 * keep them open: take what is there, do not wait for EOF). */
	for (;;) {
		ssize_t n = out_open ? read_some(outp[0], buf, sizeof(buf)) : 0;

		if (n <= 0)
			break;
		if (!done) {
			console_feed(m, buf, (size_t)n, pid, 0, t0, r);
			done = want_ready ? r->ready : r->marker;
			if (done)
				snprintf(r->rss_why, sizeof(r->rss_why),
					 "the mark was read only after the VMM had exited");
		}
		tail_add(&r->con, buf, (size_t)n);
	}
	for (;;) {
		ssize_t n = err_open ? read_some(errp[0], buf, sizeof(buf)) : 0;

		if (n <= 0)
			break;
		tail_add(&r->err, buf, (size_t)n);
	}
	close(outp[0]);
	close(errp[0]);
	if (pidfd >= 0)
		close(pidfd);

	r->exited = exited;
	r->status = st;
	r->maxrss_kib = ru.ru_maxrss;
	r->console_bytes = r->con.total;

	if (done) {
		r->ok = 1;
	} else if (timed_out) {
		snprintf(r->why, sizeof(r->why), "timed out after %g s (%s); killed", o->timeout_s,
			 r->marker ? "in userspace, the agent never got ready" : "no userspace mark");
	} else if (WIFSIGNALED(st)) {
		snprintf(r->why, sizeof(r->why), "the VMM was killed by signal %d before %s", WTERMSIG(st),
			 want_ready ? AGENT_READY_MARK : KILN_BOOT_MARK);
	} else {
		snprintf(r->why, sizeof(r->why), "exited with status %d without printing %s",
			 WEXITSTATUS(st), want_ready ? AGENT_READY_MARK : KILN_BOOT_MARK);
	}
}

/* Run argv to completion (10 s at most) and return its stdout, NULL on failure. */
static char *capture(char *const argv[])
{
	static char buf[4096];
	int p[2], exec_errno, st;
	size_t len = 0, cap = 8192;
	char *out = xmalloc(cap);
	double deadline = now_ms() + 10e3;
	pid_t pid;

	if (pipe2(p, O_CLOEXEC) < 0) {
		free(out);
		return NULL;
	}
	pid = spawn(argv, p[1], devnull_fd, &exec_errno);
	close(p[1]);
	if (pid < 0) {
		close(p[0]);
		free(out);
		return NULL;
	}
	set_nonblock(p[0]);
	for (;;) {
		struct pollfd pfd = { .fd = p[0], .events = POLLIN };
		double left = deadline - now_ms();
		ssize_t n;

		if (left <= 0) {
			kill(pid, SIGKILL);
			break;
		}
		poll(&pfd, 1, (int)left + 1);
		n = read_some(p[0], buf, sizeof(buf));
		if (n == 0)
			break;
		if (n < 0)
			continue;
		if (len + (size_t)n + 1 > cap) {
			cap = (len + (size_t)n + 1) * 2;
			out = realloc(out, cap);
			if (!out)
				die("out of memory");
		}
		memcpy(out + len, buf, (size_t)n);
		len += (size_t)n;
	}
	close(p[0]);
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	out[len] = '\0';
	return out;
}

/* ---- where we run ---------------------------------------------------------------- */

struct host {
	const char *kind;	/* "nested-tcg", "vm", "bare-metal" */
	char hv[13];		/* CPUID 0x40000000 signature, "" if none */
	int env_nested;		/* KILN_NESTED=1 */
	char line[256];
};

static void detect_host(struct host *h)
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

static int count_ok(const struct run *runs, int n)
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

static void print_table(const struct opts *o, const struct host *h, const char *qemu_version,
			const char *qemu_vsock, struct run *runs[NVMM], int n)
{
	static const char *const vmm_title[NVMM] = { "kiln-vmm", "QEMU microvm" };
	char a[32], b[32], c[32], st[2][96];
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
		fmt_val(a, sizeof(a), s[0].median, metric_info[m].unit);
		fmt_val(b, sizeof(b), s[1].median, metric_info[m].unit);
		fmt_ratio(c, sizeof(c), s[0].median, s[1].median);
		printf("%-30s %-6s %14s %14s %10s\n", metric_info[m].label, "median", a, b, c);
		fmt_val(a, sizeof(a), s[0].p90, metric_info[m].unit);
		fmt_val(b, sizeof(b), s[1].p90, metric_info[m].unit);
		fmt_ratio(c, sizeof(c), s[0].p90, s[1].p90);
		printf("%-30s %-6s %14s %14s %10s\n", "", "p90", a, b, c);
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

static void print_json(const struct opts *o, const struct host *h, const char *qemu_version,
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
	printf(", \"initrd\": ");
	json_str(o->initrd);
	printf(", \"kiln_vmm\": ");
	json_str(o->vmm);
	printf(", \"qemu\": ");
	json_str(o->qemu);
	printf(", \"qemu_version\": ");
	if (qemu_version)
		json_str(qemu_version);
	else
		fputs("null", stdout);
	printf(", \"cmdline\": ");
	json_str(cmdline);
	printf(", \"qemu_vsock\": ");
	if (qemu_vsock)
		json_str(qemu_vsock);
	else
		fputs("null", stdout);
	printf("},\n");
	for (v = 0; v < NVMM; v++) {
		printf("  \"%s\": {\n    \"ok\": %d,\n", vmm_label[v], count_ok(runs[v], n));
		for (m = 0; m < NMETRIC; m++) {
			struct stat2 s = metric_stats(runs[v], n, (enum metric)m);

			printf("    \"%s\": {\"n\": %d, \"median\": ", metric_info[m].key, s.n);
			json_num(s.median);
			printf(", \"p90\": ");
			json_num(s.p90);
			printf(", \"min\": ");
			json_num(s.min);
			printf(", \"max\": ");
			json_num(s.max);
			printf("},\n");
		}
		printf("    \"runs\": [\n");
		for (i = 0; i < n; i++) {
			const struct run *r = &runs[v][i];

			printf("      {\"ok\": %s, \"marker\": %s, \"ready\": %s, \"exec_to_userspace_ms\": ",
			       r->ok ? "true" : "false", r->marker ? "true" : "false",
			       r->ready ? "true" : "false");
			json_num(r->marker ? r->t_mark_ms : NAN);
			printf(", \"exec_to_agent_ready_ms\": ");
			json_num(r->ready ? r->t_ready_ms : NAN);
			printf(", \"cpu_to_userspace_ms\": ");
			json_num(r->marker ? r->cpu_mark_ms : NAN);
			printf(", \"cpu_to_agent_ready_ms\": ");
			json_num(r->ready ? r->cpu_ready_ms : NAN);
			printf(", \"rss_excl_guest_kib\": ");
			json_num(r->rss_ok ? (double)r->rss_vmm_kib : NAN);
			printf(", \"rss_guest_kib\": ");
			json_num(r->rss_ok ? (double)r->rss_guest_kib : NAN);
			printf(", \"rss_error\": ");
			if (r->rss_ok || !r->marker)
				fputs("null", stdout);
			else
				json_str(r->rss_why);
			printf(", \"peak_rss_kib\": %ld, \"console_bytes\": %" PRIu64 ", \"exit_status\": ",
			       r->maxrss_kib, r->console_bytes);
			if (r->exited && WIFEXITED(r->status))
				printf("%d", WEXITSTATUS(r->status));
			else
				fputs("null", stdout);
			printf(", \"signal\": ");
			if (r->exited && WIFSIGNALED(r->status))
				printf("%d", WTERMSIG(r->status));
			else
				fputs("null", stdout);
			printf(", \"error\": ");
			if (r->ok)
				fputs("null", stdout);
			else
				json_str(r->why);
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
		printf(", \"p90\": ");
		json_num(q.p90 > 0 ? k.p90 / q.p90 : NAN);
		printf("}");
	}
	printf("}\n}\n");
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
	/*
	 * kiln-vmm adds nohz=off where the host CPU is QEMU's TCG emulator,
	 * which the nested test host (KILN_NESTED_HOST) always is.
	 */
	const char *tcg = getenv("KILN_NESTED_HOST") ? " nohz=off" : "";
	size_t len = strlen(defaults) + strlen(tcg) + 1 + strlen(GUEST_PARAMS) + 1;
	char *out = xmalloc(len);

	snprintf(out, len, "%s%s %s", defaults, tcg, GUEST_PARAMS);
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
	char *vmm_argv[24], *qemu_argv[48];
	char **argvs[NVMM];
	int i, v, k, rc = 0;

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

	k = 0;
	vmm_argv[k++] = (char *)o.vmm;
	vmm_argv[k++] = "--kernel";
	vmm_argv[k++] = (char *)o.kernel;
	vmm_argv[k++] = "--initrd";
	vmm_argv[k++] = (char *)o.initrd;
	vmm_argv[k++] = "--mem";
	vmm_argv[k++] = mem;
	vmm_argv[k++] = "--vcpus";
	vmm_argv[k++] = smp;
	vmm_argv[k++] = "--vsock";
	vmm_argv[k++] = vsock;
	vmm_argv[k++] = "--cmdline";
	vmm_argv[k++] = GUEST_PARAMS;
	vmm_argv[k] = NULL;

	k = 0;
	qemu_argv[k++] = (char *)o.qemu;
	qemu_argv[k++] = "-M";
	qemu_argv[k++] = "microvm,acpi=off";
	qemu_argv[k++] = "-accel";
	qemu_argv[k++] = "kvm";
	qemu_argv[k++] = "-cpu";
	qemu_argv[k++] = "host";
	qemu_argv[k++] = "-m";
	qemu_argv[k++] = mem;
	qemu_argv[k++] = "-smp";
	qemu_argv[k++] = smp;
	qemu_argv[k++] = "-nodefaults";
	qemu_argv[k++] = "-no-user-config";
	/* Not -nographic: that can multiplex QEMU's monitor onto stdio too. */
	qemu_argv[k++] = "-display";
	qemu_argv[k++] = "none";
	qemu_argv[k++] = "-serial";
	qemu_argv[k++] = "stdio";
	qemu_argv[k++] = "-no-reboot";
	qemu_argv[k++] = "-kernel";
	qemu_argv[k++] = (char *)o.kernel;
	qemu_argv[k++] = "-initrd";
	qemu_argv[k++] = (char *)o.initrd;
	qemu_argv[k++] = "-append";
	qemu_argv[k++] = cmdline;
	/* The init's status write (KILN_PORT_EXIT) ends QEMU, as it ends kiln-vmm. */
	qemu_argv[k++] = "-device";
	qemu_argv[k++] = "isa-debug-exit,iobase=0xf4,iosize=0x04";
	/*
	 * kiln-vmm emulates an i8042 so that reboot=k resets the guest; microvm
	 * has none. Without it a guest that cannot report a status (no ioperm)
	 * never gets QEMU to exit under KVM: the kernel's reboot falls through to
	 * a BIOS restart.
	 */
	qemu_argv[k++] = "-device";
	qemu_argv[k++] = "i8042";
	if (qvsock) {
		qemu_argv[k++] = "-device";
		qemu_argv[k++] = qvsock;
	}
	qemu_argv[k] = NULL;
	argvs[VMM_KILN] = vmm_argv;
	argvs[VMM_QEMU] = qemu_argv;

	if (o.verbose) {
		print_argv("kiln", vmm_argv);
		print_argv("qemu", qemu_argv);
	}

	for (v = 0; v < NVMM; v++)
		runs[v] = calloc((size_t)o.runs, sizeof(struct run));
	if (!runs[0] || !runs[1])
		die("out of memory");

	for (i = 0; i < o.warmup; i++) {
		for (v = 0; v < NVMM; v++) {
			boot_once(argvs[v], &o, v == VMM_KILN || qvsock, &scratch);
			unlink(sockpath);
			report_run("warm-up", v, &scratch, o.verbose);
		}
	}
	for (i = 0; i < o.runs; i++) {
		char tag[32];

		snprintf(tag, sizeof(tag), "run %d/%d", i + 1, o.runs);
		for (v = 0; v < NVMM; v++) {
			boot_once(argvs[v], &o, v == VMM_KILN || qvsock, &runs[v][i]);
			unlink(sockpath);
			report_run(tag, v, &runs[v][i], o.verbose);
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
