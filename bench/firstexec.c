/*
 * kiln-firstexec: the client half of bench/snapshot.sh, started before the
 * VM so that its own start-up (exec, dynamic linking: slow in the nested
 * host) is not part of what is measured. It says "ready" on stdout once
 * started (so that nothing of its start-up shares the CPU with what is
 * measured), then waits for "go" on stdin, the
 * moment its VM was started, then connects to the VM's vsock socket (as soon
 * as it exists and the agent answers), sends IDENTITY if asked (a clone
 * must have one before it is used), runs `true` through the agent and prints
 *
 *   ok MS RETRIES t_go=NS t_hello=NS t_identity=NS t_started=NS t_exit=NS [again_ms=MS]
 *   error MESSAGE
 *
 * on stdout: MS from "go" to the exit status of `true`, then the moments
 * (CLOCK_MONOTONIC ns, comparable with kiln-vmm's timeline) at which "go"
 * came, HELLO and IDENTITY were answered (with --pipeline, IDENTITY sent:
 * the exec follows it in the same round trip), the agent said `true` started
 * and its exit status arrived; with --again, a second `true` on the same
 * connection (the steady-state cost of an exec). With --early the connection
 * is kac_connect_early's: CONNECT, HELLO and the requests go out together,
 * so t_hello is only the moment they were sent. What a daemon holding a
 * client library would see, without a CLI process started per request.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <time.h>

#include "agent_client.h"

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void on_started(void *arg, uint64_t pid)
{
	(void)pid;
	*(uint64_t *)arg = mono_ns();
}

static void usage(FILE *f)
{
	fprintf(f, "usage: kiln-firstexec --uds PATH [--identity NAME [--pipeline]] [--early] [--again] [--timeout SEC] [--verbose]\n"
		   "Says \"ready\", waits for a line on stdin, then connects to the agent behind PATH, sends\n"
		   "IDENTITY NAME if given (with --pipeline, the exec follows it without waiting\n"
		   "for its answer), runs `true` (twice with --again), and prints\n"
		   "(--early: CONNECT and HELLO are not waited for, kac_connect_early)\n"
		   "\"ok MS RETRIES t_go=NS t_hello=NS t_identity=NS t_started=NS t_exit=NS [again_ms=MS]\"\n"
		   "or \"error MESSAGE\" (MS: from the line to the exit status).\n");
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "uds", required_argument, NULL, 'u' },
		{ "identity", required_argument, NULL, 'i' },
		{ "timeout", required_argument, NULL, 't' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "again", no_argument, NULL, 'a' },
		{ "pipeline", no_argument, NULL, 'p' },
		{ "early", no_argument, NULL, 'e' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *uds = NULL, *name = NULL;
	const char *const argv_true[] = { "true", NULL };
	struct kac_exec_opts eo = { .argv = argv_true, .stdin_fd = -1, .stdout_fd = -1, .stderr_fd = -1, .sig_fd = -1,
				    .tty_fd = -1 };
	struct kac_err err = { 0 };
	struct kac_exit ex;
	struct kac *c = NULL;
	char line[64];
	double t0, deadline;
	long timeout_s = 120;
	int opt, r, retries = 0, verbose = 0, again = 0, pipeline = 0, early = 0;
	double t_conn = 0, t_id = 0, t_exit, again_ms = 0;
	uint64_t ns_go, ns_hello = 0, ns_id = 0, ns_started = 0, ns_exit;

	while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (opt) {
		case 'u': uds = optarg; break;
		case 'i': name = optarg; break;
		case 't':
			timeout_s = strtol(optarg, NULL, 10);
			if (timeout_s <= 0 || timeout_s > 3600) {
				fprintf(stderr, "kiln-firstexec: --timeout %s: 1 to 3600 seconds\n", optarg);
				return 2;
			}
			break;
		case 'v': verbose = 1; break;
		case 'a': again = 1; break;
		case 'p': pipeline = 1; break;
		case 'e': early = 1; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (!uds || optind != argc) {
		usage(stderr);
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("ready\n");
	if (!fgets(line, sizeof(line), stdin))
		return 1;	/* the benchmark went away before starting the VM */
	t0 = now_ms();
	ns_go = mono_ns();
	eo.started_fn = on_started;
	eo.started_arg = &ns_started;
	deadline = t0 + (double)timeout_s * 1e3;

	/*
	 * A guest still booting (or a clone whose guest has not yet handled
	 * the vsock reset) may close a connection it just accepted: connect
	 * again, as any client would.
	 */
	for (;;) {
		int left = (int)(deadline - now_ms());

		if (left <= 0) {
			printf("error no answer from the agent within %ld s (%d retries): %s\n", timeout_s, retries,
			       err.msg[0] ? err.msg : "-");
			return 1;
		}
		r = early ? kac_connect_early(&c, uds, left, &err) : kac_connect(&c, uds, left, &err);
		t_conn = now_ms();
		ns_hello = mono_ns();
		if (r == 0 && name) {
			struct kac_identity id = { .sandbox_id = name, .hostname = name, .set_clock = 1 };

			r = pipeline ? kac_identity_send(c, &id, &err) : kac_identity(c, &id, &err);
		}
		t_id = now_ms();
		ns_id = mono_ns();
		if (r == 0 && (r = kac_exec(c, &eo, &ex, &err)) == 0 && (!pipeline || !name ||
									 (r = kac_identity_wait(c, &err)) == 0))
			break;
		if (c)
			kac_close(c);
		c = NULL;
		if (r != -ECONNRESET && r != -EPIPE && r != -EAGAIN && r != -ECONNREFUSED && r != -ENOENT) {
			printf("error %s\n", err.msg[0] ? err.msg : strerror(-r));
			return 1;
		}
		retries++;
	}
	t_exit = now_ms();
	ns_exit = mono_ns();
	if (ex.code != 0) {
		printf("error `true` exited %lld (signal %d)\n", (long long)ex.code, ex.signal);
		return 1;
	}
	if (again) {
		double t = now_ms();

		eo.started_fn = NULL;
		if ((r = kac_exec(c, &eo, &ex, &err)) < 0 || ex.code != 0) {
			printf("error the second `true`: %s\n", r < 0 ? err.msg : "it failed");
			return 1;
		}
		again_ms = now_ms() - t;
	}
	if (verbose)
		fprintf(stderr, "kiln-firstexec: connected (HELLO done) %.1f ms, IDENTITY %.1f ms, exec %.1f ms\n",
			t_conn - t0, t_id - t_conn, t_exit - t_id);
	printf("ok %.3f %d t_go=%llu t_hello=%llu t_identity=%llu t_started=%llu t_exit=%llu", t_exit - t0, retries,
	       (unsigned long long)ns_go, (unsigned long long)ns_hello, (unsigned long long)ns_id,
	       (unsigned long long)ns_started, (unsigned long long)ns_exit);
	if (again)
		printf(" again_ms=%.3f", again_ms);
	printf("\n");
	kac_close(c);
	return 0;
}
