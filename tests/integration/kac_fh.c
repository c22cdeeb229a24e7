/*
 * kac-fh-test: the C client's file-handle calls (kac_fh_* in
 * api/agent_client.h) against a live guest agent, end to end.
 *
 *   kac-fh-test UDS [GUEST_DIR]
 *
 * Connects through the VMM's vsock socket UDS and works on files under
 * GUEST_DIR (default /tmp): open with each flag, write and read back more
 * than one call's 240 KiB, seek from each origin, stat, truncate, sync,
 * utime, shared and exclusive locks, close; then the refusals: a read-only
 * handle written, CREATE_NEW on a file that exists, a missing file, a closed
 * handle, another connection's handle. Prints one "ok NAME" line per check
 * and exits 0, or names the first check that failed and exits 1 (2: usage
 * or no connection). Built with ASan by make, so the client's buffers are
 * checked too.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent_client.h"

#define BIG		(300 * 1024)	/* more than one FH_READ or FH_WRITE carries */

static int checks;

static void check(int ok, const char *name, const char *fmt, ...)
{
	va_list ap;

	if (ok) {
		printf("ok %s\n", name);
		checks++;
		return;
	}
	fprintf(stderr, "kac-fh-test: %s: ", name);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

/* Write all of buf through fh, as many calls as it takes; the total or -errno. */
static int64_t write_all(struct kac *c, uint64_t fh, const uint8_t *buf, size_t len, struct kac_err *err)
{
	size_t off = 0;

	while (off < len) {
		int64_t n = kac_fh_write(c, fh, buf + off, len - off, err);

		if (n <= 0)
			return n < 0 ? n : -EIO;
		off += (size_t)n;
	}
	return (int64_t)off;
}

/* Read until EOF or cap bytes; the total or -errno. */
static int64_t read_all(struct kac *c, uint64_t fh, uint8_t *buf, size_t cap, int *calls, struct kac_err *err)
{
	size_t off = 0;

	*calls = 0;
	while (off < cap) {
		int64_t n = kac_fh_read(c, fh, buf + off, cap - off, err);

		if (n < 0)
			return n;
		++*calls;
		if (n == 0)
			break;
		off += (size_t)n;
	}
	return (int64_t)off;
}

int main(int argc, char **argv)
{
	static uint8_t data[BIG], back[BIG + 16];
	struct kac_err err = { { 0 }, 0 };
	struct kac *c, *c2;
	struct kac_stat st, pst;
	char path[256], ro_path[256];
	const char *dir = argc > 2 ? argv[2] : "/tmp";
	uint64_t fh, fh2, ro, theirs;
	int64_t n;
	int calls, r;
	size_t i;

	if (argc < 2 || argc > 3) {
		fprintf(stderr, "usage: kac-fh-test UDS [GUEST_DIR]\n");
		return 2;
	}
	if (kac_connect(&c, argv[1], 60000, &err) < 0 || kac_connect(&c2, argv[1], 10000, &err) < 0) {
		fprintf(stderr, "kac-fh-test: %s: %s\n", argv[1], err.msg);
		return 2;
	}
	if (strlen(dir) > 200) {
		fprintf(stderr, "kac-fh-test: %s: a directory name that long is not needed\n", dir);
		return 2;
	}
	snprintf(path, sizeof(path), "%s/kac-fh-%d", dir, (int)getpid());
	snprintf(ro_path, sizeof(ro_path), "%s/kac-fh-%d.ro", dir, (int)getpid());
	for (i = 0; i < BIG; i++)
		data[i] = (uint8_t)(i * 131 + (i >> 9));

	r = kac_fh_open(c, path, KAC_FH_READ | KAC_FH_WRITE | KAC_FH_CREATE | KAC_FH_TRUNCATE, 0640, &fh, &err);
	check(r == 0 && fh != 0, "open-create", "%d %s", r, err.msg);
	n = write_all(c, fh, data, BIG, &err);
	check(n == BIG, "write-300k", "wrote %lld: %s", (long long)n, err.msg);
	n = kac_fh_seek(c, fh, 0, SEEK_CUR, &err);
	check(n == BIG, "seek-cur", "offset %lld: %s", (long long)n, err.msg);
	n = kac_fh_seek(c, fh, 0, SEEK_SET, &err);
	check(n == 0, "seek-set", "offset %lld: %s", (long long)n, err.msg);
	n = read_all(c, fh, back, sizeof(back), &calls, &err);
	check(n == BIG && memcmp(back, data, BIG) == 0 && calls >= 3, "read-back-eof",
	      "read %lld in %d calls (%s)", (long long)n, calls, n == BIG ? "bytes differ" : err.msg);
	n = kac_fh_seek(c, fh, -10, SEEK_END, &err);
	check(n == BIG - 10, "seek-end", "offset %lld: %s", (long long)n, err.msg);
	n = kac_fh_read(c, fh, back, sizeof(back), &err);
	check(n == 10 && memcmp(back, data + BIG - 10, 10) == 0, "read-tail", "%lld: %s", (long long)n, err.msg);
	n = kac_fh_seek(c, fh, -1, SEEK_SET, &err);
	check(n == -EINVAL, "seek-negative-refused", "%lld: %s", (long long)n, err.msg);

	r = kac_fh_stat(c, fh, &st, &err);
	check(r == 0 && st.type == S_IFREG && st.size == BIG && (st.mode & 07777) == 0640, "fh-stat",
	      "%d type %o size %llu mode %o: %s", r, st.type, (unsigned long long)st.size, st.mode, err.msg);
	r = kac_stat(c, path, 0, &pst, &err);
	check(r == 0 && pst.ino == st.ino && pst.size == st.size, "fh-stat-is-path-stat",
	      "%d ino %llu/%llu: %s", r, (unsigned long long)pst.ino, (unsigned long long)st.ino, err.msg);

	r = kac_fh_truncate(c, fh, 1000, &err);
	check(r == 0, "truncate", "%d: %s", r, err.msg);
	r = kac_fh_sync(c, fh, 0, &err);
	check(r == 0, "fsync", "%d: %s", r, err.msg);
	r = kac_fh_sync(c, fh, 1, &err);
	check(r == 0, "fdatasync", "%d: %s", r, err.msg);
	r = kac_fh_stat(c, fh, &st, &err);
	check(r == 0 && st.size == 1000, "truncated-size", "%d size %llu: %s", r,
	      (unsigned long long)st.size, err.msg);

	r = kac_fh_utime(c, fh, 1000000000LL * 1000000000 + 5, 1600000000LL * 1000000000 + 123456789, &err);
	check(r == 0, "utime", "%d: %s", r, err.msg);
	r = kac_fh_stat(c, fh, &st, &err);
	check(r == 0 && st.mtime_ns == 1600000000LL * 1000000000 + 123456789 &&
	      st.atime_ns == 1000000000LL * 1000000000 + 5, "utime-read-back",
	      "%d atime %lld mtime %lld: %s", r, (long long)st.atime_ns, (long long)st.mtime_ns, err.msg);

	r = kac_fh_lock(c, fh, 1, &err);
	check(r == 0, "lock-exclusive", "%d: %s", r, err.msg);
	r = kac_fh_unlock(c, fh, &err);
	check(r == 0, "unlock", "%d: %s", r, err.msg);
	r = kac_fh_lock(c, fh, 0, &err);
	check(r == 0, "lock-shared", "%d: %s", r, err.msg);
	r = kac_fh_open(c2, path, 0, 0, &theirs, &err);
	check(r == 0, "open-second-connection", "%d: %s", r, err.msg);
	r = kac_fh_lock(c2, theirs, 0, &err);
	check(r == 0, "shared-locks-coexist", "%d: %s", r, err.msg);
	r = kac_fh_unlock(c2, theirs, &err);
	check(r == 0 && kac_fh_unlock(c, fh, &err) == 0, "unlock-both", "%d: %s", r, err.msg);

	/* Refusals: each a clear error, and the connection goes on working. */
	r = kac_fh_open(c, path, KAC_FH_WRITE | KAC_FH_CREATE_NEW, 0600, &ro, &err);
	check(r == -EEXIST, "create-new-exists", "%d: %s", r, err.msg);
	r = kac_fh_open(c, ro_path, 0, 0, &ro, &err);
	check(r == -ENOENT, "open-missing", "%d: %s", r, err.msg);
	r = kac_fh_open(c, ro_path, KAC_FH_WRITE | KAC_FH_CREATE_NEW, 0600, &ro, &err);
	check(r == 0 && kac_fh_write(c, ro, "x", 1, &err) == 1 && kac_fh_close(c, ro, &err) == 0,
	      "create-new", "%d: %s", r, err.msg);
	r = kac_fh_open(c, ro_path, KAC_FH_READ, 0, &ro, &err);
	check(r == 0, "open-read-only", "%d: %s", r, err.msg);
	n = kac_fh_write(c, ro, "y", 1, &err);
	check(n == -EBADF, "write-read-only-refused", "%lld: %s", (long long)n, err.msg);
	n = kac_fh_read(c, ro, back, 16, &err);
	check(n == 1 && back[0] == 'x', "read-only-reads", "%lld: %s", (long long)n, err.msg);
	r = kac_fh_open(c, ro_path, KAC_FH_WRITE | KAC_FH_APPEND, 0, &fh2, &err);
	check(r == 0 && kac_fh_write(c, fh2, "z", 1, &err) == 1 && kac_fh_close(c, fh2, &err) == 0 &&
	      kac_stat(c, ro_path, 0, &pst, &err) == 0 && pst.size == 2, "append",
	      "%d size %llu: %s", r, (unsigned long long)pst.size, err.msg);
	/* Handle ids are per connection: c2 has only its own first one. */
	r = kac_fh_stat(c2, ro, &st, &err);
	check(ro != theirs && r == -ESRCH, "other-connections-handle-refused", "%d: %s", r, err.msg);
	r = kac_fh_close(c, ro, &err);
	check(r == 0, "close", "%d: %s", r, err.msg);
	n = kac_fh_read(c, ro, back, 16, &err);
	check(n == -ESRCH, "closed-handle-refused", "%lld: %s", (long long)n, err.msg);
	r = kac_fh_stat(c, fh, &st, &err);
	check(r == 0 && st.size == 1000, "connection-still-works", "%d: %s", r, err.msg);

	r = kac_fh_close(c, fh, &err);
	check(r == 0 && kac_remove(c, path, 0, &err) == 0 && kac_remove(c, ro_path, 0, &err) == 0,
	      "close-and-remove", "%d: %s", r, err.msg);
	kac_close(c2);
	kac_close(c);
	printf("kac-fh-test: %d checks passed\n", checks);
	return 0;
}
