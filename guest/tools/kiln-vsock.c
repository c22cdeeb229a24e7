/*
 * kiln-vsock: a small AF_VSOCK client and server for kiln's guest tests.
 *
 *   kiln-vsock listen PORT [--count N] [--sum]
 *       accept connections (N of them, then exit; default forever), each in
 *       its own process: echo what arrives, or with --sum read to EOF and
 *       answer "<bytes> <crc32>\n"
 *   kiln-vsock connect CID PORT
 *       stdin to the socket (half-closing it at stdin's EOF), the socket to
 *       stdout, until the peer closes
 *   kiln-vsock sum
 *       print "<bytes> <crc32>" of stdin, as listen --sum would answer
 *
 * The checksum is zlib's CRC-32, so a host script computes the same at C
 * speed (python3's zlib.crc32). Exit status 0 on success, 1 on any error
 * (with a line on stderr), 2 for bad usage.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#define BUF_SIZE 65536

static uint32_t crc_table[256];

static void crc_init(void)
{
	uint32_t i, j, c;

	for (i = 0; i < 256; i++) {
		for (c = i, j = 0; j < 8; j++)
			c = c & 1 ? 0xedb88320U ^ (c >> 1) : c >> 1;
		crc_table[i] = c;
	}
}

static uint32_t crc_update(uint32_t crc, const uint8_t *p, size_t n)
{
	crc = ~crc;
	while (n--)
		crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
	return ~crc;
}

static int usage(void)
{
	fprintf(stderr, "usage: kiln-vsock listen PORT [--count N] [--sum]\n"
			"       kiln-vsock connect CID PORT\n"
			"       kiln-vsock sum\n");
	return 2;
}

static int parse_u32(const char *s, uint32_t *v)
{
	char *end;
	unsigned long x;

	errno = 0;
	x = strtoul(s, &end, 10);
	if (errno || end == s || *end || *s == '-' || x > 0xffffffffUL)
		return -1;
	*v = (uint32_t)x;
	return 0;
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/*
 * Close fd once the peer has everything. A plain close() returns while the
 * transport still holds the data, and the VM may end (with this test) before
 * it leaves; with SO_LINGER, close() waits for the peer's final RST.
 */
static void close_delivered(int fd)
{
	struct linger lg = { .l_onoff = 1, .l_linger = 10 };

	shutdown(fd, SHUT_WR);
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(fd);
}

/* Read fd to EOF; count and checksum what came. */
static int sum_fd(int fd, unsigned long long *bytes, uint32_t *crc)
{
	static uint8_t buf[BUF_SIZE];
	ssize_t n;

	*bytes = 0;
	*crc = 0;
	while ((n = read(fd, buf, sizeof(buf))) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		*crc = crc_update(*crc, buf, (size_t)n);
		*bytes += (unsigned long long)n;
	}
	return 0;
}

/* One accepted connection, in its own process. */
static int serve(int fd, int sum)
{
	static uint8_t buf[BUF_SIZE];
	unsigned long long bytes;
	uint32_t crc;
	ssize_t n;

	if (sum) {
		char line[64];
		int len;

		if (sum_fd(fd, &bytes, &crc) < 0) {
			perror("kiln-vsock: read");
			return 1;
		}
		len = snprintf(line, sizeof(line), "%llu %08x\n", bytes, crc);
		if (write_all(fd, (uint8_t *)line, (size_t)len) < 0) {
			perror("kiln-vsock: write");
			return 1;
		}
	} else {
		while ((n = read(fd, buf, sizeof(buf))) != 0) {
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0 || write_all(fd, buf, (size_t)n) < 0) {
				perror("kiln-vsock: echo");
				return 1;
			}
		}
	}
	close_delivered(fd);
	return 0;
}

static int do_listen(uint32_t port, long count, int sum)
{
	struct sockaddr_vm sa = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port };
	int lfd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0), status, failed = 0;
	long accepted = 0, running = 0;

	if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(lfd, 64) < 0) {
		fprintf(stderr, "kiln-vsock: listen on port %u: %s\n", port, strerror(errno));
		return 1;
	}
	fprintf(stderr, "kiln-vsock: listening on port %u\n", port);
	while (count < 0 || accepted < count) {
		int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		pid_t pid;

		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			fprintf(stderr, "kiln-vsock: accept: %s\n", strerror(errno));
			return 1;
		}
		accepted++;
		pid = fork();
		if (pid == 0) {
			close(lfd);
			_exit(serve(fd, sum));
		}
		close(fd);
		if (pid < 0) {
			perror("kiln-vsock: fork");
			failed = 1;
			continue;
		}
		running++;
		while (running && waitpid(-1, &status, WNOHANG) > 0) {
			running--;
			failed |= !WIFEXITED(status) || WEXITSTATUS(status);
		}
	}
	close(lfd);
	while (running && wait(&status) > 0) {
		running--;
		failed |= !WIFEXITED(status) || WEXITSTATUS(status);
	}
	return failed;
}

static int do_connect(uint32_t cid, uint32_t port)
{
	static uint8_t in[BUF_SIZE], out[BUF_SIZE];
	struct sockaddr_vm sa = { .svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port };
	size_t in_off = 0, in_len = 0;
	int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0), stdin_open = 1;

	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		fprintf(stderr, "kiln-vsock: connect to %u:%u: %s\n", cid, port, strerror(errno));
		return 1;
	}
	for (;;) {
		/* Never block writing to the peer while it waits for us to read. */
		struct pollfd p[2] = {
			{ .fd = stdin_open && in_len == 0 ? STDIN_FILENO : -1, .events = POLLIN },
			{ .fd = fd, .events = POLLIN | (in_len ? POLLOUT : 0) },
		};
		ssize_t n;

		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			perror("kiln-vsock: poll");
			return 1;
		}
		if (p[0].revents) {
			n = read(STDIN_FILENO, in, sizeof(in));
			if (n < 0 && errno != EINTR) {
				perror("kiln-vsock: stdin");
				return 1;
			}
			if (n == 0) {
				stdin_open = 0;
				shutdown(fd, SHUT_WR);
			} else if (n > 0) {
				in_off = 0;
				in_len = (size_t)n;
			}
		}
		if (in_len && (p[1].revents & POLLOUT)) {
			n = send(fd, in + in_off, in_len, MSG_DONTWAIT | MSG_NOSIGNAL);
			if (n < 0 && errno != EAGAIN && errno != EINTR) {
				perror("kiln-vsock: send");
				return 1;
			}
			if (n > 0) {
				in_off += (size_t)n;
				in_len -= (size_t)n;
			}
		}
		if (p[1].revents & (POLLIN | POLLHUP | POLLERR)) {
			n = recv(fd, out, sizeof(out), MSG_DONTWAIT);
			if (n == 0)
				break;		/* the peer is done */
			if (n < 0 && errno != EAGAIN && errno != EINTR) {
				perror("kiln-vsock: recv");
				return 1;
			}
			if (n > 0 && write_all(STDOUT_FILENO, out, (size_t)n) < 0) {
				perror("kiln-vsock: stdout");
				return 1;
			}
		}
	}
	close_delivered(fd);
	return 0;
}

int main(int argc, char **argv)
{
	uint32_t port, cid;

	crc_init();
	signal(SIGPIPE, SIG_IGN);
	if (argc >= 3 && strcmp(argv[1], "listen") == 0) {
		long count = -1;
		int sum = 0, i;

		if (parse_u32(argv[2], &port) < 0)
			return usage();
		for (i = 3; i < argc; i++) {
			uint32_t n;

			if (strcmp(argv[i], "--sum") == 0)
				sum = 1;
			else if (strcmp(argv[i], "--count") == 0 && i + 1 < argc && parse_u32(argv[i + 1], &n) == 0)
				count = n, i++;
			else
				return usage();
		}
		return do_listen(port, count, sum);
	}
	if (argc == 4 && strcmp(argv[1], "connect") == 0) {
		if (parse_u32(argv[2], &cid) < 0 || parse_u32(argv[3], &port) < 0)
			return usage();
		return do_connect(cid, port);
	}
	if (argc == 2 && strcmp(argv[1], "sum") == 0) {
		unsigned long long bytes;
		uint32_t crc;

		if (sum_fd(STDIN_FILENO, &bytes, &crc) < 0) {
			perror("kiln-vsock: stdin");
			return 1;
		}
		printf("%llu %08x\n", bytes, crc);
		return 0;
	}
	return usage();
}
