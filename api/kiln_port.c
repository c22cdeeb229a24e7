/* kiln connect, forward and ports: the guest's TCP ports. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "agent_proto.h"
#include "agent_client.h"
#include "kiln_cli.h"

/* ---- ports -------------------------------------------------------------------- */

static uint16_t parse_port(const char *s, const char *what)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *end || v < 1 || v > 65535)
		die_usage("%s %s: expected a TCP port, 1 to 65535", what, s);
	return (uint16_t)v;
}

/* Read what fd has into the empty buf: *n bytes, or *eof at its end. 0, or -errno. */
static int relay_read(int fd, char *buf, size_t cap, size_t *n, int *eof)
{
	ssize_t r = read(fd, buf, cap);

	if (r < 0 && errno != EINTR && errno != EAGAIN)
		return -errno;
	if (r == 0)
		*eof = 1;
	else if (r > 0)
		*n = (size_t)r;
	return 0;
}

/* Write what buf holds (*n bytes) to fd, sock: a socket (no SIGPIPE); the rest stays. 0, or -errno. */
static int relay_write(int fd, int sock, char *buf, size_t *n)
{
	ssize_t r = sock ? send(fd, buf, *n, MSG_NOSIGNAL) : write(fd, buf, *n);

	if (r < 0 && errno != EINTR && errno != EAGAIN)
		return -errno;
	if (r > 0) {
		memmove(buf, buf + r, *n - (size_t)r);
		*n -= (size_t)r;
	}
	return 0;
}

/*
 * Copy bytes both ways between (a_in, a_out) and b until both directions
 * have ended; an ended direction is passed on as a half-close
 * (shutdown(SHUT_WR) on a socket, close on a pipe). 0, or -errno.
 */
static int relay(int a_in, int a_out, int b)
{
	static char ab[65536], ba[65536];
	size_t abn = 0, ban = 0;
	int a_eof = 0, b_eof = 0, ab_done = 0, ba_done = 0, ret = 0;

	while (!ab_done || !ba_done) {
		struct pollfd p[3];
		int k = 0, ia = -1, ib = -1, iw = -1;

		if (!a_eof && !abn) {
			ia = k;
			p[k++] = (struct pollfd){ .fd = a_in, .events = POLLIN };
		}
		if ((!b_eof && !ban) || abn) {
			ib = k;
			p[k++] = (struct pollfd){ .fd = b, .events = (short)((!b_eof && !ban ? POLLIN : 0) |
									       (abn ? POLLOUT : 0)) };
		}
		if (ban) {
			iw = k;
			p[k++] = (struct pollfd){ .fd = a_out, .events = POLLOUT };
		}
		if (poll(p, (nfds_t)k, -1) < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (ia >= 0 && p[ia].revents)
			ret = relay_read(a_in, ab, sizeof(ab), &abn, &a_eof);
		if (!ret && ib >= 0 && (p[ib].revents & POLLOUT) && abn)
			ret = relay_write(b, 1, ab, &abn);
		if (!ret && ib >= 0 && (p[ib].revents & (POLLIN | POLLHUP | POLLERR)) && !b_eof && !ban)
			ret = relay_read(b, ba, sizeof(ba), &ban, &b_eof);
		if (!ret && iw >= 0 && p[iw].revents)
			ret = relay_write(a_out, 0, ba, &ban);
		if (ret)
			return ret;
		if (a_eof && !abn && !ab_done) {
			shutdown(b, SHUT_WR);
			ab_done = 1;
		}
		if (b_eof && !ban && !ba_done) {
			/* A half-close, passed on: our side may still send. */
			if (a_out != a_in)
				close(a_out);
			else
				shutdown(a_out, SHUT_WR);
			ba_done = 1;
		}
	}
	return 0;
}

int cmd_connect(int argc, char **argv)
{
	struct common o;
	struct kac_err err = { "", 0 };
	struct kac *c;
	uint16_t port;
	int i, ret, fd;

	i = parse_opts(argc, argv, &o);
	if (argc - i != 1)
		die_usage("connect: expected one guest PORT");
	port = parse_port(argv[i], "connect:");
	signal(SIGPIPE, SIG_IGN);
	c = connect_or_die(&o);
	if (!o.raw)
		return cmd_done(c, kac_port_connect(c, port, o.addr, 0, 1, &err), argv[i], &err);
	ret = kac_port_raw(c, port, o.addr, &fd, &err);
	if (ret)
		return op_fail(argv[i], &err);
	ret = relay(0, 1, fd);
	close(fd);
	if (ret) {
		fprintf(stderr, "%s: port %u: %s\n", prog, port, strerror(-ret));
		return EXIT_FAIL;
	}
	return 0;
}

int cmd_forward(int argc, char **argv)
{
	struct common o;
	struct sockaddr_in sa = { .sin_family = AF_INET };
	uint16_t lport, gport;
	char spec[32], *colon;
	int i, lfd, one = 1;

	i = parse_opts(argc, argv, &o);
	if (argc - i != 1 || strlen(argv[i]) >= sizeof(spec) || !(colon = strchr(argv[i], ':')))
		die_usage("forward: expected LOCALPORT:GUESTPORT");
	strcpy(spec, argv[i]);
	colon = spec + (colon - argv[i]);
	*colon = '\0';
	lport = parse_port(spec, "forward: local port");
	gport = parse_port(colon + 1, "forward: guest port");
	signal(SIGPIPE, SIG_IGN);
	signal(SIGCHLD, SIG_IGN);	/* one child per client, reaped by the kernel */
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sa.sin_port = htons(lport);
	if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(lfd, 64) < 0) {
		fprintf(stderr, "%s: forward: 127.0.0.1:%u: %s (pick another local port)\n", prog, lport,
			strerror(errno));
		return EXIT_FAIL;
	}
	fprintf(stderr, "%s: forwarding 127.0.0.1:%u to guest port %u\n", prog, lport, gport);
	for (;;) {
		int cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC), fd, ret;
		struct kac_err err = { "", 0 };
		struct kac *c;
		pid_t pid;

		if (cfd < 0) {
			if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE)
				continue;
			fprintf(stderr, "%s: forward: accept: %s\n", prog, strerror(errno));
			return EXIT_FAIL;
		}
		pid = fork();
		if (pid < 0) {
			fprintf(stderr, "%s: forward: fork: %s\n", prog, strerror(errno));
			close(cfd);
			continue;
		}
		if (pid > 0) {
			close(cfd);
			continue;
		}
		close(lfd);
		ret = agent_connect(&o, &c, &err);
		if (!ret)
			ret = kac_port_raw(c, gport, o.addr, &fd, &err);
		if (ret) {
			fprintf(stderr, "%s: forward: guest port %u: %s\n", prog, gport, err.msg);
			_exit(EXIT_FAIL);
		}
		ret = relay(cfd, cfd, fd);
		_exit(ret ? EXIT_FAIL : 0);
	}
}

static int port_entry(void *arg, const struct kac_listener *l)
{
	struct listing *s = arg;

	if (s->json) {
		printf("%s{\"port\":%u,\"pid\":%llu,\"addr\":", list_sep(s), l->port,
		       (unsigned long long)l->pid);
		json_str(l->addr);
		putchar('}');
	} else {
		printf("%u\t%llu\t%s\n", l->port, (unsigned long long)l->pid, l->addr);
	}
	return 0;
}

int cmd_ports(int argc, char **argv)
{
	struct common o;
	struct kac_err err = { "", 0 };
	struct kac_listener l;
	struct listing s = { 0, 0 };
	struct kac *c;
	int i, ret;

	i = parse_opts(argc, argv, &o);
	timeout_secs(&o);
	if (argc - i != 0 && !(argc - i == 2 && strcmp(argv[i], "wait") == 0))
		die_usage("ports: expected no argument, or wait PORT");
	c = connect_or_die(&o);
	if (argc - i == 2) {
		ret = kac_port_wait(c, parse_port(argv[i + 1], "ports wait"), 0, o.timeout_s * 1000, &l, &err);
		kac_close(c);
		if (ret)
			return op_fail("ports wait", &err);
		s.json = o.json;
		port_entry(&s, &l);
		if (o.json)
			putchar('\n');
		return 0;
	}
	list_begin(&s, &o);
	return list_end(&s, c, kac_port_list(c, 0, port_entry, &s, &err), "ports", &err);
}
