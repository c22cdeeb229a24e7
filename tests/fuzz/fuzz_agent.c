/*
 * libFuzzer target: the guest agent (guest/agent/) over whole request
 * sequences. Each input is one connection: its frames are written to a
 * socketpair that stands for the vsock connection, one at a time, with
 * turns of the agent's loop between them; the agent's answers are read and
 * decoded, and a frame the codec refuses is a bug (abort). Then the
 * connection closes and the agent is freed, so ASan sees any leak.
 *
 * The agent is built to be harmless on the host: host mode (no hostname,
 * clock or port I/O, signals only to its own processes), AGENT_NO_EXEC and
 * AGENT_NO_PORTS (nothing is started, nothing dialled), and AGENT_JAIL
 * (relative paths without "..") inside a fresh temporary directory per
 * input, under a file size limit.
 *
 * Input: [0] bit 0: the harness sends HELLO first; then frames as on the
 * wire (u32 length, then that many bytes; a short last one is sent as is).
 * Seeds: tests/fuzz/corpus/fuzz_agent/ (tests/fuzz/gen_agent_corpus.py).
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"
#include "agent_proto.h"

#define TURNS_PER_FRAME	4
#define TURNS_AT_END	32

static char base[64], work[80];
static int home = -1;		/* the fuzzer's own cwd: corpus paths are relative to it */
static struct kp_decoder dec;
static uint8_t dbuf[KP_MAX_PAYLOAD];
static uint8_t rbuf[1 << 16];

/* Read and decode what the agent sent; its frames must pass the codec's checks. */
static int drain(int fd)
{
	ssize_t n;

	while ((n = recv(fd, rbuf, sizeof(rbuf), MSG_DONTWAIT)) > 0) {
		size_t off = 0;

		while (off < (size_t)n) {
			struct kp_frame f;
			size_t used;
			int ret = kp_dec_feed(&dec, rbuf + off, (size_t)n - off, &used, &f);

			off += used;
			if (ret < 0) {
				fprintf(stderr, "fuzz_agent: the agent sent a bad frame: %s\n", kp_strerror(ret));
				abort();
			}
			if (ret == 0)
				break;
		}
	}
	return n == 0;	/* the agent closed the connection */
}

static void turns(struct agent *a, int fd, int k)
{
	while (k-- > 0) {
		agent_step(a, 0);
		drain(fd);
	}
}

/* Write all of p, turning the agent while the socket is full. */
static void put(struct agent *a, int fd, const uint8_t *p, size_t n)
{
	while (n) {
		ssize_t k = send(fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);

		if (k < 0 && errno == EAGAIN) {
			turns(a, fd, 1);
			continue;
		}
		if (k <= 0)
			return;		/* the agent closed it */
		p += k;
		n -= (size_t)k;
	}
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	if (flag == FTW_DP)
		rmdir(path);
	else
		unlink(path);
	return 0;
}

/* Directories the input made unreadable or unwritable are opened up first (the fuzzer may not be root). */
static int open_up(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)ftw;
	if (flag == FTW_D || flag == FTW_DNR || (flag == FTW_F && S_ISDIR(st->st_mode)))
		chmod(path, 0700);
	return 0;
}

static void cleanup(void)
{
	nftw(base, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	struct rlimit fsize = { 64 << 20, 64 << 20 };

	(void)argc;
	(void)argv;
	strcpy(base, "/tmp/kiln-fuzz-agent.XXXXXX");
	home = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (!mkdtemp(base) || home < 0)
		abort();
	snprintf(work, sizeof(work), "%s/w", base);
	atexit(cleanup);
	setrlimit(RLIMIT_FSIZE, &fsize);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct agent *a;
	uint8_t hello[256];
	size_t off = 1;
	int sv[2], n;

	if (size < 1)
		return 0;
	if (mkdir(work, 0700) < 0 || chdir(work) < 0)
		abort();
	umask(022);
	/* Past the file size limit a TRUNCATE or COPY fails with EFBIG (libFuzzer's own handler exits). */
	signal(SIGXFSZ, SIG_IGN);
	if (agent_new(&a, AGENT_HOST | AGENT_NO_EXEC | AGENT_NO_PORTS | AGENT_JAIL, NULL) < 0)
		abort();
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0 || agent_conn_add(a, sv[1], 0) < 0)
		abort();
	kp_dec_init(&dec, dbuf, sizeof(dbuf));
	if (data[0] & 1) {
		n = kp_enc_hello(hello, sizeof(hello), KP_DEFAULT_WINDOW, KP_MAX_PAYLOAD, "fuzz_agent");
		put(a, sv[0], hello, (size_t)n);
	}
	while (off < size) {
		size_t len = size - off;

		if (len >= 4) {
			uint32_t l = (uint32_t)data[off] | (uint32_t)data[off + 1] << 8 |
				     (uint32_t)data[off + 2] << 16 | (uint32_t)data[off + 3] << 24;

			if (l <= len - 4)
				len = 4 + (size_t)l;
		}
		put(a, sv[0], data + off, len);
		off += len;
		turns(a, sv[0], TURNS_PER_FRAME);
	}
	turns(a, sv[0], TURNS_AT_END);
	close(sv[0]);
	agent_step(a, 0);	/* the agent sees the close */
	agent_free(a);
	if (fchdir(home) < 0)
		abort();
	nftw(work, open_up, 16, FTW_PHYS);
	nftw(work, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	return 0;
}
