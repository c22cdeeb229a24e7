/*
 * kiln-agent-probe: try to drive the guest agent from inside the guest, as
 * a hostile guest process would (tests/integration/agent.sh).
 *
 *   kiln-agent-probe [--uid N] CID [PORT]
 *       drop to uid and gid N (as root: setgid, setgroups, setuid), connect
 *       to vsock CID:PORT (default 1024, the agent's), send HELLO and an
 *       EXEC of `id -u`, and print one line:
 *         refused: REASON      the connect failed
 *         closed               the peer closed without running anything
 *         exec-ran: OUTPUT     the agent ran the command (its stdout)
 *
 * Exit status 0 for refused or closed, 1 when the command ran, 2 for bad
 * usage or a failed setuid. The frames are written by hand from
 * agent_proto.h's constants (docs/agent-protocol.md), nothing else linked.
 */
#include <errno.h>
#include <grp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#include "agent_proto.h"

#define WAIT_MS	5000	/* an agent that answers does so at once */

static uint8_t out[4096];
static size_t outlen;

static void put(const void *p, size_t n)
{
	memcpy(out + outlen, p, n);
	outlen += n;
}

static void put_le(uint64_t v, int bytes)
{
	uint8_t b[8];

	for (int i = 0; i < bytes; i++)
		b[i] = (uint8_t)(v >> (8 * i));
	put(b, (size_t)bytes);
}

/* A frame header for a payload of n bytes to follow. */
static void put_hdr(uint8_t type, uint32_t id, size_t n)
{
	put_le(8 + n, 4);
	put_le(type, 1);
	put_le(0, 1);
	put_le(0, 2);
	put_le(id, 4);
}

static void put_field(uint8_t tag, uint8_t kind, const void *v, size_t n)
{
	put_le(tag, 1);
	put_le(kind, 1);
	put_le(n, 4);
	put(v, n);
}

static void put_u64(uint8_t tag, uint64_t v)
{
	uint8_t b[8];

	for (int i = 0; i < 8; i++)
		b[i] = (uint8_t)(v >> (8 * i));
	put_field(tag, KP_K_U64, b, 8);
}

static uint32_t get_le(const uint8_t *p, int bytes)
{
	uint32_t v = 0;

	for (int i = bytes - 1; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

int main(int argc, char **argv)
{
	struct sockaddr_vm sa = { .svm_family = AF_VSOCK, .svm_port = KP_VSOCK_PORT };
	static uint8_t in[1 << 20];
	const char *args[] = { "id", "-u" };
	size_t inlen = 0, n;
	long uid = -1;
	int i = 1, fd;
	char *end;

	if (argc > 2 && strcmp(argv[1], "--uid") == 0) {
		uid = strtol(argv[2], &end, 10);
		if (*end || uid < 0)
			goto usage;
		i = 3;
	}
	if (argc - i < 1 || argc - i > 2)
		goto usage;
	sa.svm_cid = (unsigned)strtoul(argv[i], &end, 10);
	if (*end)
		goto usage;
	if (argc - i == 2)
		sa.svm_port = (unsigned)strtoul(argv[i + 1], NULL, 10);
	if (uid >= 0 && (setgroups(0, NULL) < 0 || setgid((gid_t)uid) < 0 || setuid((uid_t)uid) < 0)) {
		fprintf(stderr, "kiln-agent-probe: uid %ld: %s\n", uid, strerror(errno));
		return 2;
	}
	fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		printf("refused: %s\n", strerror(errno));
		return 0;
	}
	/* HELLO: version 1, a window and max frame the agent accepts. */
	put_hdr(KP_HELLO, 0, 3 * (KP_FIELD_HDR + 8));
	put_u64(KT_VERSION, 1);
	put_u64(KT_WINDOW, 65536);
	put_u64(KT_MAX_FRAME, 65536);
	/* REQUEST 1: EXEC id -u, stdout a pipe. */
	n = (KP_FIELD_HDR + 8) * 2;
	for (size_t k = 0; k < 2; k++)
		n += KP_FIELD_HDR + strlen(args[k]);
	put_hdr(KP_REQUEST, 1, n);
	put_u64(KT_OP, KP_OP_EXEC);
	for (size_t k = 0; k < 2; k++)
		put_field(KT_ARG, KP_K_STR, args[k], strlen(args[k]));
	put_u64(KT_STDOUT, KP_IO_PIPE);
	if (send(fd, out, outlen, MSG_NOSIGNAL) != (ssize_t)outlen) {
		printf("closed\n");
		return 0;
	}
	/* Read frames until stdout's DATA for request 1, or the end. */
	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		ssize_t r;

		while (inlen >= KP_HDR_LEN) {
			uint32_t len = get_le(in, 4), id = get_le(in + 8, 4);
			uint8_t type = in[4];

			if (len < 8 || len + 4 > sizeof(in))
				goto closed;
			if (inlen < len + 4)
				break;
			if (type == KP_DATA && id == 1 && len >= 16) {
				printf("exec-ran: %.*s", (int)(len - 16), (const char *)in + KP_DATA_HDR_LEN);
				return 1;
			}
			memmove(in, in + len + 4, inlen - len - 4);
			inlen -= len + 4;
		}
		if (poll(&p, 1, WAIT_MS) <= 0)
			goto closed;	/* nothing more: nothing ran */
		r = read(fd, in + inlen, sizeof(in) - inlen);
		if (r <= 0)
			goto closed;
		inlen += (size_t)r;
	}
closed:
	printf("closed\n");
	return 0;
usage:
	fprintf(stderr, "usage: kiln-agent-probe [--uid N] CID [PORT]\n");
	return 2;
}
