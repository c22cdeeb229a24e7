/*
 * kiln-firstexec: the client half of bench/snapshot.sh, started before the
 * VM so that its own start-up (exec, dynamic linking: slow in the nested
 * host) is not part of what is measured. It waits for "go" on stdin, the
 * moment its VM was started, then connects to the VM's vsock socket (as soon
 * as it exists and the agent answers), sends IDENTITY if asked (a clone
 * must have one before it is used), runs `true` through the agent and prints
 *
 *   ok MS RETRIES        milliseconds from "go" to the exit status of `true`
 *   error MESSAGE
 *
 * on stdout. What a daemon holding a client library would see, without a
 * CLI process started per request.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agent_client.h"

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: kiln-firstexec --uds PATH [--identity NAME] [--timeout SEC] [--verbose]\n"
		   "Waits for a line on stdin, then connects to the agent behind PATH, sends\n"
		   "IDENTITY NAME if given, runs `true`, and prints \"ok MS RETRIES\" or\n"
		   "\"error MESSAGE\" (MS: from the line to the exit status).\n");
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "uds", required_argument, NULL, 'u' },
		{ "identity", required_argument, NULL, 'i' },
		{ "timeout", required_argument, NULL, 't' },
		{ "verbose", no_argument, NULL, 'v' },
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
	int opt, r, retries = 0, verbose = 0;
	double t_conn = 0, t_id = 0;

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
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (!uds || optind != argc) {
		usage(stderr);
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!fgets(line, sizeof(line), stdin))
		return 1;	/* the benchmark went away before starting the VM */
	t0 = now_ms();
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
		r = kac_connect(&c, uds, left, &err);
		t_conn = now_ms();
		if (r == 0 && name) {
			struct kac_identity id = { .sandbox_id = name, .hostname = name, .set_clock = 1 };

			r = kac_identity(c, &id, &err);
		}
		t_id = now_ms();
		if (r == 0 && (r = kac_exec(c, &eo, &ex, &err)) == 0)
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
	if (ex.code != 0) {
		printf("error `true` exited %lld (signal %d)\n", (long long)ex.code, ex.signal);
		return 1;
	}
	if (verbose)
		fprintf(stderr, "kiln-firstexec: connected (HELLO done) %.1f ms, IDENTITY %.1f ms, exec %.1f ms\n",
			t_conn - t0, t_id - t_conn, now_ms() - t_id);
	printf("ok %.3f %d\n", now_ms() - t0, retries);
	kac_close(c);
	return 0;
}
