/*
 * kiln-pingpong: cross-CPU wakeups, as many as it can, for finding lost
 * interrupts in a guest.
 *
 *   kiln-pingpong ROUNDS [CPU_A CPU_B]
 *
 * Two processes, pinned to CPU_A and CPU_B (default 0 and 1), pass one byte
 * back and forth over two pipes ROUNDS times. Each waits in read() while the
 * other runs, so its CPU goes idle, and every round needs the other CPU to
 * wake it: two reschedule or function-call IPIs to a halted vCPU per round.
 * A lost wakeup stops the count; the last progress line (every 2000 rounds,
 * on stderr) says where. At the end, stdout gets "ROUNDS rounds in S s, U us
 * per round". Exit status 0 on success, 1 on an error, 2 for bad usage.
 */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void pin(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set) < 0) {
		fprintf(stderr, "kiln-pingpong: CPU %d: %s\n", cpu, strerror(errno));
		exit(1);
	}
}

static int xfer(int in, int out)
{
	char b = 'x';

	if (out >= 0 && write(out, &b, 1) != 1)
		return -1;
	if (in >= 0 && read(in, &b, 1) != 1)
		return -1;
	return 0;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	long rounds, i;
	int a = 0, b = 1, ping[2], pong[2], st;
	double t0;
	pid_t pid;

	if (argc != 2 && argc != 4) {
		fprintf(stderr, "usage: kiln-pingpong ROUNDS [CPU_A CPU_B]\n");
		return 2;
	}
	rounds = strtol(argv[1], NULL, 10);
	if (argc == 4) {
		a = atoi(argv[2]);
		b = atoi(argv[3]);
	}
	if (rounds <= 0 || pipe(ping) < 0 || pipe(pong) < 0) {
		fprintf(stderr, "kiln-pingpong: bad ROUNDS or no pipes\n");
		return rounds <= 0 ? 2 : 1;
	}
	pid = fork();
	if (pid < 0) {
		perror("kiln-pingpong: fork");
		return 1;
	}
	if (pid == 0) {
		pin(b);
		for (i = 0; i < rounds; i++)
			if (xfer(ping[0], -1) < 0 || xfer(-1, pong[1]) < 0)
				_exit(1);
		_exit(0);
	}
	pin(a);
	t0 = now_s();
	for (i = 0; i < rounds; i++) {
		if (xfer(pong[0], ping[1]) < 0) {
			fprintf(stderr, "kiln-pingpong: round %ld: %s\n", i, strerror(errno));
			return 1;
		}
		if ((i + 1) % 2000 == 0)
			fprintf(stderr, "kiln-pingpong: %ld rounds\n", i + 1);
	}
	if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st)) {
		fprintf(stderr, "kiln-pingpong: the other side failed\n");
		return 1;
	}
	t0 = now_s() - t0;
	printf("%ld rounds in %.2f s, %.1f us per round\n", rounds, t0, t0 * 1e6 / (double)rounds);
	return 0;
}
