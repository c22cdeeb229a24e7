/*
 * A stand-in for kilnd around kd_egress (tests/egress/run.sh): starts the
 * egress thread in this process's namespace (the test's "host"), makes the
 * proxy's and resolver's sockets inside the sandbox's namespace the way
 * kd_netns does (setns there, socket, bind, setns back) and serves one
 * sandbox until SIGTERM, then removes it, stops and exits so LeakSanitizer
 * can look.
 *
 *   egress-test --netns /run/netns/sbx --dns IP[:PORT] [--id ID] [--ca-dir DIR --upstream-ca FILE]
 *               [--secret NAME,PLACEHOLDER,VALUE,HOST[,HOST...]]... ALLOW...
 *
 * With --ca-dir, the node CA is loaded or made there (kd_ca) and the
 * secrets are served: their values never appear in this program's output.
 *
 * SIGUSR1 prints the sandbox's counters; SIGUSR2 removes the sandbox (with
 * whatever it has open) and adds it again on new sockets. Events go to
 * stdout as "event ID KIND: DETAIL".
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "kd_ca.h"
#include "kd_egress.h"
#include "kd_netns.h"

static void on_event(void *arg, const char *id, const char *kind, const char *detail)
{
	(void)arg;
	printf("event %s %s: %s\n", id, kind, detail);
	fflush(stdout);
}

static int sock_in(int type, uint16_t port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
	int one = 1, fd;

	inet_pton(AF_INET, KD_NET_GW, &sa.sin_addr);
	fd = socket(AF_INET, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || (type == SOCK_STREAM && listen(fd, 4096) < 0)) {
		int r = -errno;

		close(fd);
		return r;
	}
	return fd;
}

/* kd_netns's trick: make the sockets in the sandbox's namespace, come back. */
static int socks_make(const char *nspath, int *tcp, int *udp)
{
	int self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
	int ns = open(nspath, O_RDONLY | O_CLOEXEC);
	int r = 0;

	if (self < 0 || ns < 0 || setns(ns, CLONE_NEWNET) < 0) {
		fprintf(stderr, "egress-test: %s: %s\n", nspath, strerror(errno));
		exit(2);
	}
	*tcp = sock_in(SOCK_STREAM, KD_NET_PROXY_PORT);
	*udp = sock_in(SOCK_DGRAM, KD_NET_DNS_PORT);
	if (*tcp < 0 || *udp < 0)
		r = -1;
	if (setns(self, CLONE_NEWNET) < 0) {
		fprintf(stderr, "egress-test: back to our namespace: %s\n", strerror(errno));
		exit(2);
	}
	close(self);
	close(ns);
	return r;
}

#define SECRETS_MAX 8
static struct kd_secret secrets[SECRETS_MAX];
static size_t nsecrets;

/* NAME,PLACEHOLDER,VALUE,HOST[,HOST...] */
static void secret_arg(char *a)
{
	struct kd_secret *x = &secrets[nsecrets];
	char **hosts = calloc(16, sizeof(*hosts));
	char *save = NULL, *t;
	size_t n = 0;

	if (nsecrets >= SECRETS_MAX || !hosts) {
		fprintf(stderr, "egress-test: too many secrets\n");
		exit(2);
	}
	x->name = strtok_r(a, ",", &save);
	x->placeholder = strtok_r(NULL, ",", &save);
	x->value = strtok_r(NULL, ",", &save);
	while (n < 16 && (t = strtok_r(NULL, ",", &save)))
		hosts[n++] = t;
	if (!x->name || !x->placeholder || !x->value || !n) {
		fprintf(stderr, "egress-test: --secret NAME,PLACEHOLDER,VALUE,HOST[,HOST...]\n");
		exit(2);
	}
	x->value_len = strlen(x->value);
	x->hosts = hosts;
	x->nhosts = n;
	nsecrets++;
}

static void add(struct kd_egress *e, const char *id, const char *nspath, char **allow, size_t nallow)
{
	struct kiln_err err = { "" };
	int tcp, udp;

	if (socks_make(nspath, &tcp, &udp) < 0) {
		fprintf(stderr, "egress-test: sockets in %s: %s / %s\n", nspath, strerror(-tcp), strerror(-udp));
		exit(2);
	}
	if (kd_egress_add(e, id, tcp, udp, allow, nallow, secrets, nsecrets, &err) < 0) {
		fprintf(stderr, "egress-test: %s\n", err.msg);
		exit(2);
	}
}

static void stats(struct kd_egress *e, const char *id)
{
	struct kd_egress_stats st;

	if (kd_egress_stats(e, id, &st) < 0) {
		printf("stats %s: not served\n", id);
	} else {
		printf("stats %s conns_ok=%llu conns_refused=%llu dns_ok=%llu dns_refused=%llu bytes_out=%llu bytes_in=%llu\n",
		       id, (unsigned long long)st.conns_ok, (unsigned long long)st.conns_refused,
		       (unsigned long long)st.dns_ok, (unsigned long long)st.dns_refused,
		       (unsigned long long)st.bytes_out, (unsigned long long)st.bytes_in);
	}
	fflush(stdout);
}

int main(int argc, char **argv)
{
	struct kd_egress_conf conf = { .event = on_event };
	struct kiln_err err = { "" };
	const char *nspath = NULL, *id = "sbx1", *ca_dir = NULL;
	struct kd_ca *ca = NULL;
	struct rlimit rl;
	struct kd_egress *e;
	sigset_t set;
	int i, sig;

	for (i = 1; i < argc && !strncmp(argv[i], "--", 2); i += 2) {
		if (i + 1 >= argc)
			break;
		if (!strcmp(argv[i], "--netns"))
			nspath = argv[i + 1];
		else if (!strcmp(argv[i], "--dns"))
			snprintf(conf.dns_upstream, sizeof(conf.dns_upstream), "%s", argv[i + 1]);
		else if (!strcmp(argv[i], "--id"))
			id = argv[i + 1];
		else if (!strcmp(argv[i], "--ca-dir"))
			ca_dir = argv[i + 1];
		else if (!strcmp(argv[i], "--upstream-ca"))
			snprintf(conf.upstream_ca, sizeof(conf.upstream_ca), "%s", argv[i + 1]);
		else if (!strcmp(argv[i], "--secret"))
			secret_arg(argv[i + 1]);
		else
			break;
	}
	if (!nspath) {
		fprintf(stderr, "usage: egress-test --netns /run/netns/NAME --dns IP[:PORT] [--id ID] ALLOW...\n");
		return 2;
	}
	/* Two descriptors per proxied connection. */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, SIGUSR2);
	sigprocmask(SIG_BLOCK, &set, NULL);

	if (ca_dir) {
		if (kd_ca_open(ca_dir, &ca, &err) < 0) {
			fprintf(stderr, "egress-test: %s\n", err.msg);
			return 1;
		}
		conf.ca = ca;
	}
	if (kd_egress_start(&conf, &e, &err) < 0) {
		fprintf(stderr, "egress-test: %s\n", err.msg);
		return 1;
	}
	add(e, id, nspath, argv + i, (size_t)(argc - i));
	printf("ready\n");
	fflush(stdout);
	for (;;) {
		if (sigwait(&set, &sig))
			continue;
		if (sig == SIGUSR1) {
			stats(e, id);
		} else if (sig == SIGUSR2) {
			kd_egress_remove(e, id);
			add(e, id, nspath, argv + i, (size_t)(argc - i));
			printf("readded\n");
			fflush(stdout);
		} else {
			break;
		}
	}
	stats(e, id);
	kd_egress_remove(e, id);
	stats(e, id);
	kd_egress_stop(e);
	kd_ca_free(ca);
	for (size_t k = 0; k < nsecrets; k++)
		free((void *)secrets[k].hosts);
	printf("stopped\n");
	fflush(stdout);
	return 0;
}
