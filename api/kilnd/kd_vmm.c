/*
 * kiln-vmm processes as kilnd starts, watches and ends them.
 *
 * A VMM runs in its own session (setsid), so a Ctrl-C meant for kilnd in a
 * terminal does not reach the sandboxes, and it outlives kilnd: a kill -9
 * and restart of kilnd finds it again (node.c, kd_readopt). It inherits no
 * descriptor of kilnd's but its log on stdout and stderr.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kilnd.h"

int kd_pidfd_open(pid_t pid)
{
	return (int)syscall(SYS_pidfd_open, pid, 0);
}

/* Close every descriptor from 3 up, in a child between fork and exec. */
static void close_from_3(void)
{
	if (syscall(SYS_close_range, 3u, ~0u, 0u) == 0)
		return;
	for (int fd = 3; fd < 4096; fd++)
		close(fd);
}

int kd_argv_add(char **argv, size_t max, char *opt, char *val)
{
	size_t i = 0;

	while (i < max && argv[i])
		i++;
	if (i + 3 > max)
		return -E2BIG;
	argv[i] = opt;
	argv[i + 1] = val;
	argv[i + 2] = NULL;
	return 0;
}

int kd_vmm_spawn(const struct kilnd *kd, char *const argv[], const char *log, int nsfd, pid_t *pid,
		 struct kiln_err *err)
{
	int lfd, nfd, e;
	pid_t p;

	lfd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (lfd < 0)
		return kiln_fail(err, errno, "cannot create %s: %s", log, strerror(errno));
	nfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (nfd < 0) {
		e = errno;
		close(lfd);
		return kiln_fail(err, e, "cannot open /dev/null: %s", strerror(e));
	}
	p = fork();
	if (p < 0) {
		e = errno;
		close(lfd);
		close(nfd);
		return kiln_fail(err, e, "cannot start %s: fork: %s", kd->conf.vmm, strerror(e));
	}
	if (p == 0) {
		sigset_t none;

		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		signal(SIGPIPE, SIG_DFL);
		setsid();
		if (dup2(nfd, 0) < 0 || dup2(lfd, 1) < 0 || dup2(lfd, 2) < 0)
			_exit(125);
		/* The sandbox's namespace: its tap is there, and nothing else is reachable. */
		if (nsfd >= 0 && setns(nsfd, CLONE_NEWNET) < 0) {
			dprintf(2, "kilnd: cannot enter the sandbox's network namespace: %s\n", strerror(errno));
			_exit(125);
		}
		close_from_3();
		execv(kd->conf.vmm, argv);
		dprintf(2, "kilnd: cannot run %s: %s\n", kd->conf.vmm, strerror(errno));
		_exit(125);
	}
	close(lfd);
	close(nfd);
	*pid = p;
	return 0;
}

int kd_vmm_wait(pid_t pid, int ms, int *status)
{
	struct timespec d = { 0, 10 * 1000 * 1000 };

	for (int waited = 0;; waited += 10) {
		pid_t r = waitpid(pid, status, WNOHANG);

		if (r == pid)
			return 0;
		if (r < 0 && errno != EINTR)
			return -errno;
		if (ms >= 0 && waited >= ms)
			return -ETIMEDOUT;
		nanosleep(&d, NULL);
	}
}

void kd_vmm_kill(pid_t pid, int pidfd, int is_child)
{
	int st;

	if (pid <= 0)
		return;
	if (pidfd >= 0) {
		struct pollfd p = { .fd = pidfd, .events = POLLIN };

		syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
		while (poll(&p, 1, KD_KILL_WAIT_MS) < 0 && errno == EINTR)
			;
	} else {
		kill(pid, SIGKILL);
	}
	if (is_child)
		kd_vmm_wait(pid, KD_KILL_WAIT_MS, &st);
}

uint64_t kd_proc_cpu_ns(pid_t pid)
{
	long hz = sysconf(_SC_CLK_TCK);
	uint64_t ticks;

	if (pid <= 0 || hz <= 0 || reg_proc_cpu_ticks(pid, &ticks, NULL))
		return 0;
	return ticks * (1000000000ull / (uint64_t)hz);
}

int kd_vmm_control(const char *path, const char *req, char *reply, size_t n, int ms)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	uint64_t deadline = kd_mono_ns() + (uint64_t)ms * 1000000ULL;
	size_t len = 0;
	int fd, r = 0;

	if (strlen(path) >= sizeof(sa.sun_path) || n < 2)
		return -ENAMETOOLONG;
	memcpy(sa.sun_path, path, strlen(path) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || dprintf(fd, "%s\n", req) < 0) {
		r = -errno;
		goto out;
	}
	/* One line of JSON comes back; a VMM that says nothing in ms is given up on. */
	while (len < n - 1 && !memchr(reply, '\n', len)) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		uint64_t now = kd_mono_ns();
		ssize_t got;

		if (now >= deadline || poll(&p, 1, (int)((deadline - now) / 1000000ULL) + 1) == 0) {
			r = -ETIMEDOUT;
			goto out;
		}
		got = read(fd, reply + len, n - 1 - len);
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0) {
			r = got < 0 ? -errno : -ECONNRESET;
			goto out;
		}
		len += (size_t)got;
	}
	reply[len] = '\0';
	if (memchr(reply, '\n', len))
		*(char *)memchr(reply, '\n', len) = '\0';
out:
	close(fd);
	return r;
}
