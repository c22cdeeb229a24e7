/*
 * The host's MemTotal and CPU count (sched_core.h): the one part of the
 * scheduler's core that reads files, split into a bounded read and two pure
 * parsers so that the parsers are tested on fixtures.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sched_core.h"
#include "sched_int.h"

#define HOST_FILE_MAX	(64 * 1024u)
#define CPU_ID_MAX	65535u

static int is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* Read a decimal number of at most 19 digits at text[*p]. 0 or -EINVAL (no digits, too long). */
static int read_num(const char *text, size_t len, size_t *p, uint64_t *v)
{
	size_t start = *p;

	*v = 0;
	while (*p < len && is_digit(text[*p])) {
		if (*p - start == 19)
			return -EINVAL;
		*v = *v * 10 + (uint64_t)(text[*p] - '0');
		(*p)++;
	}
	return *p > start ? 0 : -EINVAL;
}

int sched_parse_meminfo(const char *text, size_t len, uint64_t *mem_total_mb, struct kiln_err *err)
{
	static const char key[] = "MemTotal:";
	char q[SCHED_QUOTE_MAX];
	size_t p = 0;

	while (p < len) {
		const char *nl = memchr(text + p, '\n', len - p);
		size_t end = nl ? (size_t)(nl - text) : len, line = p;
		uint64_t kb;

		if (end - p < sizeof(key) - 1 || memcmp(text + p, key, sizeof(key) - 1)) {
			p = end + 1;
			continue;
		}
		p += sizeof(key) - 1;
		while (p < end && (text[p] == ' ' || text[p] == '\t'))
			p++;
		if (read_num(text, end, &p, &kb) < 0)
			goto bad;
		while (p < end && text[p] == ' ')
			p++;
		if (end - p != 2 || memcmp(text + p, "kB", 2))
			goto bad;
		if (kb < 1024)
			return kiln_fail(err, EINVAL, "MemTotal of %llu kB is below 1 MiB", (unsigned long long)kb);
		*mem_total_mb = kb / 1024;
		return 0;
bad:
		return kiln_fail(err, EINVAL, "the MemTotal line %s is not \"MemTotal: <number> kB\"",
				 sched_quote(text + line, end - line, q));
	}
	return kiln_fail(err, EINVAL, "no MemTotal line");
}

int sched_parse_cpulist(const char *text, size_t len, unsigned *cpus, struct kiln_err *err)
{
	char q[SCHED_QUOTE_MAX];
	uint64_t n = 0, a, b, next = 0;
	size_t p = 0;

	if (len && text[len - 1] == '\n')
		len--;
	sched_quote(text, len, q);
	if (len == 0)
		return kiln_fail(err, EINVAL, "the CPU list is empty");
	while (p < len) {
		if (read_num(text, len, &p, &a) < 0)
			goto bad;
		b = a;
		if (p < len && text[p] == '-') {
			p++;
			if (read_num(text, len, &p, &b) < 0)
				goto bad;
		}
		/* Ascending and apart, as the kernel writes it: nothing counted twice. */
		if (b < a || b > CPU_ID_MAX || a < next)
			goto bad;
		n += b - a + 1;
		next = b + 1;
		if (p < len) {
			if (text[p] != ',' || p + 1 == len)
				goto bad;
			p++;
		}
	}
	*cpus = (unsigned)n;
	return 0;
bad:
	return kiln_fail(err, EINVAL, "the CPU list %s is not ascending ranges such as \"0-3,6,8-11\"", q);
}

/* Read all of path, at most HOST_FILE_MAX bytes, into buf (HOST_FILE_MAX bytes). */
static int read_small(const char *path, char *buf, size_t *len, struct kiln_err *err)
{
	size_t n = 0;
	int fd, r = 0;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		r = errno;
		return kiln_fail(err, r, "%s: %s", path, strerror(r));
	}
	for (;;) {
		ssize_t k = read(fd, buf + n, HOST_FILE_MAX - n);

		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			r = errno;
			r = kiln_fail(err, r, "%s: %s", path, strerror(r));
			break;
		}
		if (k == 0)
			break;
		n += (size_t)k;
		if (n == HOST_FILE_MAX) {
			r = kiln_fail(err, EFBIG, "%s: more than %u bytes; is it the right file?", path, HOST_FILE_MAX);
			break;
		}
	}
	close(fd);
	*len = n;
	return r;
}

int sched_host_probe(const char *meminfo, const char *cpulist, uint64_t *mem_total_mb, unsigned *cpus,
		     struct kiln_err *err)
{
	size_t len;
	char *buf;
	int r;

	if (!meminfo)
		meminfo = "/proc/meminfo";
	if (!cpulist)
		cpulist = "/sys/devices/system/cpu/online";
	buf = malloc(HOST_FILE_MAX);
	if (!buf)
		return kiln_fail(err, ENOMEM, "out of memory");
	r = read_small(meminfo, buf, &len, err);
	if (r == 0) {
		r = sched_parse_meminfo(buf, len, mem_total_mb, err);
		if (r < 0)
			kiln_err_prefix(err, r, "%s", meminfo);
	}
	if (r == 0)
		r = read_small(cpulist, buf, &len, err);
	if (r == 0) {
		r = sched_parse_cpulist(buf, len, cpus, err);
		if (r < 0)
			kiln_err_prefix(err, r, "%s", cpulist);
	}
	free(buf);
	return r;
}
