/*
 * Drives api/kilnd/kd_netns.c without a VM (tests/netns/run.sh runs it, as
 * root). Modes:
 *   probe            kd_netns_probe
 *   exec CMD...      make a namespace, run CMD inside it, tear it down and
 *                    check it is gone
 *   traffic          a "guest" namespace joined to kt0 through a relay of two
 *                    taps checks the policy with real packets
 *   thread           create on a worker thread; the main thread never moves
 *   adopt            a child holds a namespace; its sockets are closed and
 *                    kd_netns_adopt finds it again; adopting our own is refused
 *   cycles N         N create/close cycles: no namespace, no descriptor left;
 *                    prints the median create and close times
 * Prints "ok ..." lines; exits non-zero on the first failure.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <linux/netfilter_ipv4.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kd_netns.h"

#define FAIL(...) do { fprintf(stderr, "FAIL: " __VA_ARGS__); fputc('\n', stderr); exit(1); } while (0)

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static ino_t fd_ino(int fd)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		FAIL("fstat: %s", strerror(errno));
	return st.st_ino;
}

/* Does any task on the system still have the namespace with inode ino? */
static int ns_alive(ino_t ino)
{
	char want[64], path[600], link[64];
	DIR *d = opendir("/proc"), *t;
	struct dirent *e, *te;
	int found = 0;
	ssize_t n;

	snprintf(want, sizeof(want), "net:[%lu]", (unsigned long)ino);
	if (!d)
		FAIL("opendir /proc");
	while (!found && (e = readdir(d))) {
		if (e->d_name[0] < '0' || e->d_name[0] > '9')
			continue;
		snprintf(path, sizeof(path), "/proc/%s/task", e->d_name);
		if (!(t = opendir(path)))
			continue;
		while (!found && (te = readdir(t))) {
			if (te->d_name[0] == '.')
				continue;
			snprintf(path, sizeof(path), "/proc/%s/task/%s/ns/net", e->d_name, te->d_name);
			n = readlink(path, link, sizeof(link) - 1);
			if (n > 0) {
				link[n] = '\0';
				found = !strcmp(link, want);
			}
		}
		closedir(t);
	}
	closedir(d);
	return found;
}

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n - 1;	/* the DIR's own */
}

static void must_create(struct kd_netns *n)
{
	struct kiln_err err = { "" };

	if (kd_netns_create(n, 0, 0, &err) < 0)
		FAIL("%s", err.msg);
	if (n->nsfd < 0 || n->tcp_fd < 0 || n->udp_fd < 0)
		FAIL("kd_netns_create returned 0 without three descriptors");
}

/* We must be back home after every call. */
static void check_home(ino_t home)
{
	int fd = open("/proc/thread-self/ns/net", O_RDONLY);

	if (fd < 0 || fd_ino(fd) != home)
		FAIL("the thread was left in another network namespace");
	close(fd);
}

static void check_gone(ino_t ino)
{
	if (ns_alive(ino))
		FAIL("namespace net:[%lu] still held by some task", (unsigned long)ino);
	usleep(100000);	/* namespace teardown runs on a kernel workqueue */
	if (if_nametoindex(KD_NET_TAP))
		FAIL("%s appeared in the host's namespace", KD_NET_TAP);
}

static int mode_exec(char **argv, ino_t home)
{
	struct kd_netns n;
	ino_t ino;
	pid_t pid;
	int st;

	must_create(&n);
	check_home(home);
	ino = fd_ino(n.nsfd);
	printf("namespace net:[%lu]\n", (unsigned long)ino);
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		if (setns(n.nsfd, CLONE_NEWNET) < 0)
			FAIL("setns: %s", strerror(errno));
		execvp(argv[0], argv);
		FAIL("exec %s: %s", argv[0], strerror(errno));
	}
	if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st))
		FAIL("%s failed", argv[0]);
	kd_netns_close(&n);
	check_gone(ino);
	printf("ok exec: net:[%lu] gone after close\n", (unsigned long)ino);
	return 0;
}

/* ---- traffic ---- */

static void must_setns(int fd)
{
	if (setns(fd, CLONE_NEWNET) < 0)
		FAIL("setns: %s", strerror(errno));
}

static int tap_attach(const char *name)
{
	struct ifreq ifr = { 0 };
	int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);

	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
	ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
	if (fd < 0 || ioctl(fd, TUNSETIFF, &ifr) < 0)
		FAIL("attach to tap %s: %s", name, strerror(errno));
	return fd;
}

/* Copy frames (vnet header and all) between the two taps until killed. */
static void relay(int a, int b)
{
	static char buf[70000];
	struct pollfd p[2] = { { .fd = a, .events = POLLIN }, { .fd = b, .events = POLLIN } };

	for (;;) {
		if (poll(p, 2, -1) < 0)
			continue;
		for (int i = 0; i < 2; i++) {
			if (p[i].revents & POLLIN) {
				ssize_t len = read(p[i].fd, buf, sizeof(buf));

				if (len > 0 && write(p[!i].fd, buf, (size_t)len) < 0) {
					/* dropped, like a wire */
				}
			}
		}
	}
}

static struct sockaddr_in sin_of(const char *ip, uint16_t port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };

	inet_pton(AF_INET, ip, &sa.sin_addr);
	return sa;
}

/* A socket made in namespace ns, the thread back home after. */
static int sock_in(int ns, int home, int type)
{
	int fd;

	must_setns(ns);
	fd = socket(AF_INET, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	must_setns(home);
	if (fd < 0)
		FAIL("socket: %s", strerror(errno));
	return fd;
}

/* Connect from the guest; returns 0 or the errno it failed with. */
static int guest_connect(int g, int home, const char *ip, uint16_t port, int *out)
{
	struct sockaddr_in sa = sin_of(ip, port);
	struct pollfd p;
	int fd = sock_in(g, home, SOCK_STREAM), e = 0;
	socklen_t l = sizeof(e);
	double t0 = now_us();

	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 && errno != EINPROGRESS)
		FAIL("connect %s:%u: %s", ip, port, strerror(errno));
	p = (struct pollfd){ .fd = fd, .events = POLLOUT };
	if (poll(&p, 1, 3000) != 1)
		e = ETIMEDOUT;
	else
		getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &l);
	printf("   guest connect %s:%u -> %s in %.1f ms\n", ip, port, e ? strerror(e) : "connected",
	       (now_us() - t0) / 1000);
	if (out)
		*out = fd;
	else
		close(fd);
	return e;
}

static int mode_traffic(int home)
{
	struct kd_netns n;
	struct sockaddr_in sa, orig, from;
	socklen_t l;
	struct pollfd p;
	char buf[64];
	int g, gtap, ktap, cfd, afd, gu, e;
	pid_t relay_pid;

	must_create(&n);
	/* The guest: its own namespace, tap g0 at KD_NET_GUEST, routed via KD_NET_GW. */
	if (unshare(CLONE_NEWNET) < 0)
		FAIL("unshare: %s", strerror(errno));
	g = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
	gtap = tap_attach("g0");
	if (system("sysctl -qw net.ipv6.conf.g0.disable_ipv6=1; ip link set lo up && ip link set g0 up && "
		   "ip addr add " KD_NET_GUEST "/30 dev g0 && ip route add default via " KD_NET_GW))
		FAIL("setting up the guest's g0");
	must_setns(n.nsfd);
	ktap = tap_attach(KD_NET_TAP);	/* what kiln-vmm does */
	must_setns(home);
	relay_pid = fork();
	if (relay_pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		relay(gtap, ktap);
		_exit(0);
	}
	close(gtap);
	close(ktap);

	/* Any public address: redirected to the proxy, which learns the original. */
	if (guest_connect(g, home, "1.1.1.1", 80, &cfd))
		FAIL("TCP to 1.1.1.1:80 was not redirected to the proxy");
	p = (struct pollfd){ .fd = n.tcp_fd, .events = POLLIN };
	if (poll(&p, 1, 2000) != 1 || (afd = accept(n.tcp_fd, NULL, NULL)) < 0)
		FAIL("the proxy socket got no connection");
	l = sizeof(orig);
	if (getsockopt(afd, SOL_IP, SO_ORIGINAL_DST, &orig, &l) < 0)
		FAIL("SO_ORIGINAL_DST: %s", strerror(errno));
	inet_ntop(AF_INET, &orig.sin_addr, buf, sizeof(buf));
	if (strcmp(buf, "1.1.1.1") || ntohs(orig.sin_port) != 80)
		FAIL("SO_ORIGINAL_DST says %s:%u", buf, ntohs(orig.sin_port));
	if (write(cfd, "hi", 2) != 2)
		FAIL("write");
	usleep(50000);
	if (read(afd, buf, sizeof(buf)) != 2)
		FAIL("the proxy read nothing");
	printf("ok traffic: TCP 1.1.1.1:80 -> proxy, SO_ORIGINAL_DST 1.1.1.1:80, bytes flow\n");
	close(afd);
	close(cfd);

	/* Special destinations, the gateway included: reset at once. */
	/* (127/8 and 224/4 the guest's own kernel keeps to itself.) */
	const char *special[] = { "10.1.2.3", "169.254.169.254", "192.168.1.1", "100.64.0.1", "172.16.0.1",
				  KD_NET_GW, "240.0.0.1", "0.1.2.3" };
	for (size_t i = 0; i < sizeof(special) / sizeof(special[0]); i++)
		if ((e = guest_connect(g, home, special[i], 80, NULL)) != ECONNREFUSED)
			FAIL("TCP to %s:80: %s, not refused", special[i], strerror(e));
	if ((e = guest_connect(g, home, KD_NET_GW, KD_NET_PROXY_PORT, NULL)) != ECONNREFUSED)
		FAIL("TCP to the proxy port directly: %s, not refused", strerror(e));
	p = (struct pollfd){ .fd = n.tcp_fd, .events = POLLIN };
	if (poll(&p, 1, 0) != 0)
		FAIL("a refused connection reached the proxy anyway");
	printf("ok traffic: TCP to special addresses and to the gateway refused\n");

	/* DNS to any server reaches the resolver socket, and its answer comes back from that server. */
	gu = sock_in(g, home, SOCK_DGRAM);
	sa = sin_of("8.8.8.8", 53);
	if (sendto(gu, "query", 5, 0, (struct sockaddr *)&sa, sizeof(sa)) != 5)
		FAIL("sendto: %s", strerror(errno));
	p = (struct pollfd){ .fd = n.udp_fd, .events = POLLIN };
	l = sizeof(from);
	if (poll(&p, 1, 2000) != 1 || recvfrom(n.udp_fd, buf, sizeof(buf), 0, (struct sockaddr *)&from, &l) != 5)
		FAIL("the resolver socket got no query");
	if (sendto(n.udp_fd, "answer", 6, 0, (struct sockaddr *)&from, l) != 6)
		FAIL("resolver sendto: %s", strerror(errno));
	p = (struct pollfd){ .fd = gu, .events = POLLIN };
	l = sizeof(from);
	if (poll(&p, 1, 2000) != 1 || recvfrom(gu, buf, sizeof(buf), 0, (struct sockaddr *)&from, &l) != 6)
		FAIL("the guest got no answer");
	inet_ntop(AF_INET, &from.sin_addr, buf, sizeof(buf));
	if (strcmp(buf, "8.8.8.8") || ntohs(from.sin_port) != 53)
		FAIL("the answer came from %s:%u", buf, ntohs(from.sin_port));
	printf("ok traffic: UDP 8.8.8.8:53 -> resolver socket, answer from 8.8.8.8:53\n");

	/* Other UDP goes nowhere: a bound socket at the gateway on that port hears nothing. */
	{
		int probe;
		struct sockaddr_in b = sin_of(KD_NET_GW, 123);

		must_setns(n.nsfd);
		probe = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
		must_setns(home);
		if (bind(probe, (struct sockaddr *)&b, sizeof(b)) < 0)
			FAIL("bind :123: %s", strerror(errno));
		sa = sin_of(KD_NET_GW, 123);
		sendto(gu, "ntp", 3, 0, (struct sockaddr *)&sa, sizeof(sa));
		p = (struct pollfd){ .fd = probe, .events = POLLIN };
		if (poll(&p, 1, 300) != 0)
			FAIL("UDP to the gateway's port 123 got through");
		close(probe);
	}
	printf("ok traffic: UDP to another port dropped\n");
	close(gu);

	kill(relay_pid, SIGKILL);
	waitpid(relay_pid, NULL, 0);
	close(g);
	kd_netns_close(&n);
	return 0;
}

/* ---- adopt ---- */

static int mode_adopt(ino_t home)
{
	struct kd_netns n, m;
	struct kiln_err err = { "" };
	int pipefd[2], r;
	pid_t vmm;
	char c;

	must_create(&n);
	if (pipe(pipefd) < 0)
		FAIL("pipe");
	vmm = fork();
	if (vmm == 0) {	/* plays kiln-vmm: lives in the namespace, holds nothing of kilnd's */
		must_setns(n.nsfd);
		close(n.nsfd);
		close(n.tcp_fd);
		close(n.udp_fd);
		close(pipefd[1]);
		if (read(pipefd[0], &c, 1) < 0)
			_exit(1);
		_exit(0);
	}
	close(pipefd[0]);
	usleep(50000);
	kd_netns_close(&n);	/* kilnd "dies": its sockets go */
	r = kd_netns_adopt(&m, vmm, &err);
	if (r < 0)
		FAIL("%s", err.msg);
	check_home(home);
	if (m.tcp_fd < 0 || m.udp_fd < 0 || m.nsfd < 0)
		FAIL("adopt returned 0 without three descriptors");
	printf("ok adopt: VMM %d's namespace net:[%lu] adopted, sockets rebound, table reinstalled\n", (int)vmm,
	       (unsigned long)fd_ino(m.nsfd));
	if (kd_netns_adopt(&n, getpid(), &err) != -ESRCH)
		FAIL("adopting kilnd's own namespace was not refused");
	if (n.nsfd != -1 || n.tcp_fd != -1 || n.udp_fd != -1)
		FAIL("a refused adopt left descriptors");
	check_home(home);
	printf("ok adopt: own namespace refused: %s\n", err.msg);
	{
		pid_t pid = fork();

		if (pid == 0) {
			must_setns(m.nsfd);
			execlp("sh", "sh", "-c", "test \"$(nft list table inet kiln | grep -c 'reject with tcp reset')\" = 9", (char *)NULL);
			_exit(127);
		}
		if (waitpid(pid, &r, 0) < 0 || !WIFEXITED(r) || WEXITSTATUS(r))
			FAIL("the adopted namespace's table is not the whole policy");
	}
	close(pipefd[1]);
	waitpid(vmm, NULL, 0);
	kd_netns_close(&m);
	return 0;
}

/* ---- thread: kilnd calls this on a worker thread; the others must never move ---- */

struct worker {
	struct kd_netns n;
	int stop;
};

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct kd_netns n;

	for (int i = 0; i < 50; i++) {
		must_create(&n);
		kd_netns_close(&n);
	}
	must_create(&w->n);
	__atomic_store_n(&w->stop, 1, __ATOMIC_RELEASE);
	return NULL;
}

static int mode_thread(ino_t home)
{
	struct worker w = { .stop = 0 };
	pthread_t t;
	long checks = 0;
	pid_t pid;
	int st;

	if (pthread_create(&t, NULL, worker_main, &w))
		FAIL("pthread_create");
	while (!__atomic_load_n(&w.stop, __ATOMIC_ACQUIRE)) {
		check_home(home);
		checks++;
	}
	pthread_join(t, NULL);
	check_home(home);
	/* What the worker set through /proc/sys landed in the sandbox's namespace. */
	pid = fork();
	if (pid == 0) {
		must_setns(w.n.nsfd);
		execlp("sh", "sh", "-c", "test \"$(cat /proc/sys/net/ipv6/conf/kt0/disable_ipv6)\" = 1", (char *)NULL);
		_exit(127);
	}
	if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st))
		FAIL("IPv6 is not disabled on %s when made from a worker thread", KD_NET_TAP);
	kd_netns_close(&w.n);
	printf("ok thread: 51 creates on a worker thread, the main thread stayed home (%ld checks), disable_ipv6 in the sandbox's namespace\n",
	       checks);
	return 0;
}

/* ---- cycles ---- */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static int mode_cycles(int cycles, ino_t home)
{
	double *tc = calloc((size_t)cycles, sizeof(double)), *tx = calloc((size_t)cycles, sizeof(double));
	ino_t *inos = calloc((size_t)cycles, sizeof(ino_t));
	int fds0 = count_fds(), alive = 0;
	struct kd_netns n;
	double t0;

	for (int i = 0; i < cycles; i++) {
		t0 = now_us();
		must_create(&n);
		tc[i] = now_us() - t0;
		inos[i] = fd_ino(n.nsfd);
		t0 = now_us();
		kd_netns_close(&n);
		tx[i] = now_us() - t0;
	}
	check_home(home);
	if (count_fds() != fds0)
		FAIL("%d descriptors before, %d after %d cycles", fds0, count_fds(), cycles);
	for (int i = 0; i < cycles; i++)
		alive += ns_alive(inos[i]);
	if (alive)
		FAIL("%d of %d namespaces still held", alive, cycles);
	qsort(tc, (size_t)cycles, sizeof(double), cmp_double);
	qsort(tx, (size_t)cycles, sizeof(double), cmp_double);
	printf("ok cycles: %d create/close, %d descriptors before and after, no namespace left\n", cycles, fds0);
	printf("   kd_netns_create  p50 %8.1f us  p90 %8.1f us  max %8.1f us\n", tc[cycles / 2],
	       tc[cycles * 9 / 10], tc[cycles - 1]);
	printf("   kd_netns_close   p50 %8.1f us  p90 %8.1f us  max %8.1f us\n", tx[cycles / 2],
	       tx[cycles * 9 / 10], tx[cycles - 1]);
	free(tc);
	free(tx);
	free(inos);
	return 0;
}

int main(int argc, char **argv)
{
	struct kiln_err err = { "" };
	int home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
	ino_t home_ino = fd_ino(home);

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc < 2)
		FAIL("usage: netns-test probe | exec CMD... | traffic | thread | adopt | cycles N");
	if (!strcmp(argv[1], "probe")) {
		if (kd_netns_probe(&err) < 0) {
			check_home(home_ino);
			printf("probe: %s\n", err.msg);
			return 2;
		}
		check_home(home_ino);
		printf("ok probe\n");
		return 0;
	}
	if (!strcmp(argv[1], "exec") && argc > 2)
		return mode_exec(argv + 2, home_ino);
	if (!strcmp(argv[1], "traffic"))
		return mode_traffic(home);
	if (!strcmp(argv[1], "thread"))
		return mode_thread(home_ino);
	if (!strcmp(argv[1], "adopt"))
		return mode_adopt(home_ino);
	if (!strcmp(argv[1], "cycles") && argc > 2)
		return mode_cycles(atoi(argv[2]), home_ino);
	FAIL("unknown mode %s", argv[1]);
}
