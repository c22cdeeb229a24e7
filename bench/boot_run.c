/*
 * One boot of one VMM for bench-boot: spawn it with its console on a pipe,
 * find the guest's marks in that console as they arrive, sample the VMM's CPU
 * time and memory at them, and kill it.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_boot.h"

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
void tail_show(const char *what, const struct tail *t, int max_lines)
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

int devnull_fd = -1;

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
void boot_once(char *const argv[], const struct opts *o, int want_ready, struct run *r)
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
char *capture(char *const argv[])
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
