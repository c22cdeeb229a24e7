/*
 * kac-path-test: the C client's path operations (kac_chmod, kac_chown,
 * kac_link, kac_symlink, kac_readlink, kac_realpath, kac_truncate,
 * kac_utime, kac_mktemp, kac_umask in api/agent_client.h) end to end
 * against kiln-agent-host.
 *
 *   kac-path-test AGENT
 *
 * Starts AGENT (build/asan/kiln-agent-host) on a socket in a temporary
 * directory of its own, so the umask it changes is no other test's, and
 * works on files there. The agent runs on this host, so each result is
 * checked with the host's own system calls, not with the client. Each call
 * is made to succeed and to fail (ENOENT, EEXIST, EINVAL ...) with a message;
 * at the end the agent is shut down, and every call on a second connection
 * to the agent now gone must fail cleanly. Prints "ok NAME" per check and
 * exits 0, or names the first failure and exits 1 (2: usage or no agent).
 * Built with ASan by make, and the agent's log must hold no sanitizer report.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent_client.h"

static char work[64];
static pid_t agent_pid;

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(p);
	return 0;
}

static void cleanup(void)
{
	if (agent_pid > 0) {
		kill(agent_pid, SIGKILL);
		waitpid(agent_pid, NULL, 0);
		agent_pid = 0;
	}
	if (work[0])
		nftw(work, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* The agent's stderr, for a failure's report. */
static void show_agent_log(void)
{
	char p[PATH_MAX], line[512];
	FILE *f;

	snprintf(p, sizeof(p), "%s/agent.log", work);
	f = fopen(p, "r");
	if (!f)
		return;
	while (fgets(line, sizeof(line), f))
		fprintf(stderr, "#   agent: %s", line);
	fclose(f);
}

static void check(int ok, const char *name, const char *fmt, ...)
{
	va_list ap;

	if (ok) {
		printf("ok %s\n", name);
		return;
	}
	fprintf(stderr, "kac-path-test: %s: ", name);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	show_agent_log();
	cleanup();
	exit(1);
}

/* A call that must fail with -want and a message naming what. */
static void check_err(int ret, int want, const struct kac_err *err, const char *what, const char *name)
{
	check(ret == -want && err->msg[0] && (!what || strstr(err->msg, what)), name,
	      "returned %d (%s), want %d (%s); message \"%s\"", ret, ret < 0 ? strerror(-ret) : "success",
	      -want, strerror(want), err->msg);
}

/* work/name into buf. */
static const char *at(char *buf, const char *name)
{
	snprintf(buf, PATH_MAX, "%s/%s", work, name);
	return buf;
}

/* Run AGENT on work/a.sock, its stderr into work/agent.log. */
static void start_agent(const char *agent, const char *sock)
{
	char listen[PATH_MAX + 8], log[PATH_MAX];
	int fd;

	snprintf(listen, sizeof(listen), "unix:%s", sock);
	agent_pid = fork();
	if (agent_pid < 0) {
		perror("kac-path-test: fork");
		exit(2);
	}
	if (agent_pid == 0) {
		fd = open(at(log, "agent.log"), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (fd >= 0)
			dup2(fd, 2);
		setenv("ASAN_OPTIONS", "detect_leaks=0", 1);
		execl(agent, agent, "--listen", listen, (char *)NULL);
		fprintf(stderr, "exec %s: %s\n", agent, strerror(errno));
		_exit(127);
	}
}

static void test_chmod(struct kac *c)
{
	struct kac_err err = { 0 };
	struct stat st = { 0 };
	char f[PATH_MAX], m[PATH_MAX];
	int r;

	close(open(at(f, "mode"), O_WRONLY | O_CREAT, 0644));
	/* A kac_stat-style mode with its S_IFMT bits: only the permission bits count. */
	r = kac_chmod(c, f, S_IFREG | 04751, &err);
	check(r == 0 && stat(f, &st) == 0 && (st.st_mode & 07777) == 04751, "chmod sets the permission bits",
	      "returned %d (%s), mode %o", r, err.msg, st.st_mode & 07777);
	r = kac_chmod(c, at(m, "missing"), 0600, &err);
	check_err(r, ENOENT, &err, m, "chmod of a missing file: -ENOENT naming it");
}

static void test_chown(struct kac *c)
{
	struct kac_err err = { 0 };
	struct stat st = { 0 };
	char f[PATH_MAX], l[PATH_MAX], m[PATH_MAX];
	int r;

	close(open(at(f, "owned"), O_WRONLY | O_CREAT, 0644));
	if (geteuid() == 0) {
		r = kac_chown(c, f, 1234, 5678, &err);
		check(r == 0 && stat(f, &st) == 0 && st.st_uid == 1234 && st.st_gid == 5678,
		      "chown sets owner and group", "returned %d (%s), %u:%u", r, err.msg, st.st_uid, st.st_gid);
		r = kac_chown(c, f, -1, 4321, &err);
		check(r == 0 && stat(f, &st) == 0 && st.st_uid == 1234 && st.st_gid == 4321,
		      "chown with uid -1 leaves the owner", "returned %d (%s), %u:%u", r, err.msg, st.st_uid,
		      st.st_gid);
		/* The agent has no lchown: a symlink's target changes. */
		symlink("owned", at(l, "owned-link"));
		r = kac_chown(c, l, 1111, -1, &err);
		check(r == 0 && stat(f, &st) == 0 && st.st_uid == 1111 && st.st_gid == 4321,
		      "chown follows a symlink", "returned %d (%s), target %u:%u", r, err.msg, st.st_uid,
		      st.st_gid);
	} else {
		r = kac_chown(c, f, getuid(), -1, &err);
		check(r == 0 && stat(f, &st) == 0 && st.st_uid == getuid(), "chown to our own uid",
		      "returned %d (%s)", r, err.msg);
		r = kac_chown(c, f, 0, -1, &err);
		check_err(r, EPERM, &err, f, "chown to root as a user: -EPERM");
	}
	r = kac_chown(c, at(m, "missing"), -1, -1, &err);
	check_err(r, ENOENT, &err, m, "chown of a missing file: -ENOENT naming it");
	r = kac_chown(c, f, -2, -1, &err);
	check_err(r, EINVAL, &err, "uid -2", "chown with uid -2: -EINVAL from the client");
	r = kac_chown(c, f, -1, 0xffffffffLL, &err);
	check_err(r, EINVAL, &err, "chown", "chown with gid 2^32 - 1: -EINVAL from the agent");
}

static void test_links(struct kac *c)
{
	struct kac_err err = { 0 };
	struct stat st = { 0 }, st2 = { 0 };
	char f[PATH_MAX], h[PATH_MAX], s[PATH_MAX], m[PATH_MAX], buf[PATH_MAX];
	ssize_t n;
	int r;

	close(open(at(f, "linked"), O_WRONLY | O_CREAT, 0644));
	r = kac_link(c, f, at(h, "hard"), &err);
	check(r == 0 && stat(f, &st) == 0 && stat(h, &st2) == 0 && st.st_ino == st2.st_ino && st.st_nlink == 2,
	      "link: a second name for the file", "returned %d (%s), nlink %lu", r, err.msg,
	      (unsigned long)st.st_nlink);
	r = kac_link(c, f, h, &err);
	check_err(r, EEXIST, &err, NULL, "link onto a name that exists: -EEXIST");
	r = kac_link(c, at(m, "missing"), at(buf, "hard2"), &err);
	check_err(r, ENOENT, &err, m, "link to a missing file: -ENOENT naming it");

	/* The target is stored as given: relative, and need not exist. */
	r = kac_symlink(c, "no/such/../target", at(s, "soft"), &err);
	n = readlink(s, buf, sizeof(buf) - 1);
	if (n >= 0)
		buf[n] = '\0';
	check(r == 0 && n >= 0 && strcmp(buf, "no/such/../target") == 0, "symlink stores its target as given",
	      "returned %d (%s), target \"%s\"", r, err.msg, n >= 0 ? buf : "");
	r = kac_symlink(c, "elsewhere", s, &err);
	check_err(r, EEXIST, &err, NULL, "symlink onto a name that exists: -EEXIST");
	r = kac_symlink(c, "x", at(buf, "missing-dir/soft"), &err);
	check_err(r, ENOENT, &err, NULL, "symlink in a missing directory: -ENOENT");
}

static void test_readlink_realpath(struct kac *c)
{
	struct kac_err err = { 0 };
	char s[PATH_MAX], f[PATH_MAX], p[PATH_MAX], want[PATH_MAX];
	char *out = NULL;
	int r;

	r = kac_readlink(c, at(s, "soft"), &out, &err);
	check(r == 0 && out && strcmp(out, "no/such/../target") == 0, "readlink: the target as stored",
	      "returned %d (%s), \"%s\"", r, err.msg, out ? out : "(null)");
	free(out);
	out = (char *)1;	/* a failure must leave NULL */
	r = kac_readlink(c, at(f, "linked"), &out, &err);
	check_err(r, EINVAL, &err, f, "readlink of a regular file: -EINVAL");
	check(out == NULL, "readlink: *out is NULL after a failure", "%p", (void *)out);
	r = kac_readlink(c, at(f, "missing"), &out, &err);
	check_err(r, ENOENT, &err, f, "readlink of a missing path: -ENOENT naming it");

	/* Through "." , ".." and a symlink to a directory. */
	mkdir(at(p, "real"), 0755);
	close(open(at(p, "real/file"), O_WRONLY | O_CREAT, 0644));
	symlink("real", at(p, "real-link"));
	snprintf(p, sizeof(p), "%s/./real-link/../real-link/file", work);
	if (!realpath(p, want))
		check(0, "realpath on the host", "%s: %s", p, strerror(errno));
	r = kac_realpath(c, p, &out, &err);
	check(r == 0 && out && out[0] == '/' && strcmp(out, want) == 0 && !strstr(out, "real-link"),
	      "realpath resolves . .. and symlinks", "returned %d (%s), \"%s\", want \"%s\"", r, err.msg,
	      out ? out : "(null)", want);
	free(out);
	r = kac_realpath(c, at(s, "soft"), &out, &err);
	check_err(r, ENOENT, &err, s, "realpath through a dangling symlink: -ENOENT");
	check(out == NULL, "realpath: *out is NULL after a failure", "%p", (void *)out);
}

static void test_truncate_utime(struct kac *c)
{
	struct kac_err err = { 0 };
	struct stat st = { 0 };
	char f[PATH_MAX], l[PATH_MAX], m[PATH_MAX];
	int r;

	close(open(at(f, "sized"), O_WRONLY | O_CREAT, 0644));
	r = kac_truncate(c, f, 123457, &err);
	check(r == 0 && stat(f, &st) == 0 && st.st_size == 123457, "truncate extends", "returned %d (%s), size %lld",
	      r, err.msg, (long long)st.st_size);
	r = kac_truncate(c, f, 10, &err);
	check(r == 0 && stat(f, &st) == 0 && st.st_size == 10, "truncate cuts", "returned %d (%s), size %lld", r,
	      err.msg, (long long)st.st_size);
	r = kac_truncate(c, at(m, "missing"), 0, &err);
	check_err(r, ENOENT, &err, m, "truncate of a missing file: -ENOENT naming it");
	r = kac_truncate(c, work, 0, &err);
	check_err(r, EISDIR, &err, NULL, "truncate of a directory: -EISDIR");
	r = kac_truncate(c, f, 1ULL << 63, &err);
	check_err(r, EINVAL, &err, NULL, "truncate to 2^63: -EINVAL");

	/* Through a symlink (utime follows it), and before the epoch. */
	symlink("sized", at(l, "sized-link"));
	r = kac_utime(c, l, -1500000000LL, 1234567890123456789LL, &err);
	check(r == 0 && stat(f, &st) == 0 && st.st_atim.tv_sec == -2 && st.st_atim.tv_nsec == 500000000 &&
	      st.st_mtim.tv_sec == 1234567890 && st.st_mtim.tv_nsec == 123456789,
	      "utime sets both times in ns, through a symlink", "returned %d (%s), atime %lld.%09ld mtime %lld.%09ld",
	      r, err.msg, (long long)st.st_atim.tv_sec, st.st_atim.tv_nsec, (long long)st.st_mtim.tv_sec,
	      st.st_mtim.tv_nsec);
	r = kac_utime(c, m, 0, 0, &err);
	check_err(r, ENOENT, &err, m, "utime of a missing file: -ENOENT naming it");
}

/* Whether s is dir + "/" + prefix + six characters + suffix. */
static int tmp_name_ok(const char *s, const char *dir, const char *prefix, const char *suffix)
{
	size_t d = strlen(dir), p = strlen(prefix), x = strlen(suffix), n = strlen(s);

	return n == d + 1 + p + 6 + x && !strncmp(s, dir, d) && s[d] == '/' && !strncmp(s + d + 1, prefix, p) &&
	       !strcmp(s + n - x, suffix) && !memchr(s + d + 1 + p, '/', 6);
}

static void test_mktemp_umask(struct kac *c)
{
	struct kac_err err = { 0 };
	struct stat st = { 0 };
	char m[PATH_MAX], d[PATH_MAX];
	char *out = NULL, *out2 = NULL;
	uint32_t old = 0, now = 0;
	int r;

	/* The agent inherited our umask, 022. */
	r = kac_umask(c, 0, 0, &old, &err);
	check(r == 0 && old == 022, "umask reads the agent's mask", "returned %d (%s), %o", r, err.msg, old);
	r = kac_umask(c, 1, 077, &old, &err);
	check(r == 0 && old == 022, "umask sets, answering the mask before", "returned %d (%s), %o", r, err.msg,
	      old);
	r = kac_umask(c, 0, 0, &now, &err);
	check(r == 0 && now == 077, "umask: the new mask holds", "returned %d (%s), %o", r, err.msg, now);
	r = kac_mkdir(c, at(d, "masked"), 0777, 0, &err);
	check(r == 0 && stat(d, &st) == 0 && (st.st_mode & 0777) == 0700, "umask applies to the agent's mkdir",
	      "returned %d (%s), mode %o", r, err.msg, st.st_mode & 0777);
	r = kac_umask(c, 1, 01022, &old, &err);
	check(r == 0 && old == 077 && kac_umask(c, 0, 0, &now, &err) == 0 && now == 022,
	      "umask keeps only mask & 0777", "returned %d (%s), old %o, now %o", r, err.msg, old, now);
	r = kac_umask(c, 1, 022, NULL, &err);
	check(r == 0, "umask with old NULL", "returned %d (%s)", r, err.msg);

	r = kac_mktemp(c, 0, work, "pre-", ".txt", &out, &err);
	check(r == 0 && out && tmp_name_ok(out, work, "pre-", ".txt") && stat(out, &st) == 0 && S_ISREG(st.st_mode) &&
	      (st.st_mode & 0777) == 0600 && st.st_size == 0,
	      "mktemp: an empty file dir/prefix+XXXXXX+suffix, mode 0600", "returned %d (%s), \"%s\" mode %o", r,
	      err.msg, out ? out : "(null)", st.st_mode);
	r = kac_mktemp(c, 0, work, "pre-", ".txt", &out2, &err);
	check(r == 0 && out2 && strcmp(out, out2) != 0, "mktemp twice: two names", "returned %d (%s), %s and %s",
	      r, err.msg, out, out2 ? out2 : "(null)");
	free(out);
	free(out2);
	r = kac_mktemp(c, 1, work, "d-", NULL, &out, &err);
	check(r == 0 && out && tmp_name_ok(out, work, "d-", "") && stat(out, &st) == 0 && S_ISDIR(st.st_mode) &&
	      (st.st_mode & 0777) == 0700, "mktemp directory: mode 0700", "returned %d (%s), \"%s\" mode %o", r,
	      err.msg, out ? out : "(null)", st.st_mode);
	free(out);
	/* The defaults: /tmp and "tmp". */
	r = kac_mktemp(c, 0, NULL, NULL, NULL, &out, &err);
	check(r == 0 && out && tmp_name_ok(out, "/tmp", "tmp", "") && stat(out, &st) == 0 && S_ISREG(st.st_mode),
	      "mktemp with dir NULL: /tmp/tmpXXXXXX", "returned %d (%s), \"%s\"", r, err.msg, out ? out : "(null)");
	if (out)
		unlink(out);
	free(out);

	out = (char *)1;
	r = kac_mktemp(c, 0, at(m, "missing"), NULL, NULL, &out, &err);
	check_err(r, ENOENT, &err, m, "mktemp in a missing directory: -ENOENT naming it");
	check(out == NULL, "mktemp: *out is NULL after a failure", "%p", (void *)out);
	r = kac_mktemp(c, 1, work, NULL, ".d", &out, &err);
	check_err(r, EINVAL, &err, "SUFFIX", "mktemp directory with a suffix: -EINVAL");
	r = kac_mktemp(c, 0, work, "a/b", NULL, &out, &err);
	check_err(r, EINVAL, &err, NULL, "mktemp with a '/' in the prefix: -EINVAL");
}

/* Every call on c, whose agent is gone, fails with a message and leaves *out NULL. */
static void test_gone(struct kac *c)
{
	struct kac_err err = { 0 };
	char *out = (char *)1;
	uint32_t old = 12345;
	int r;

#define GONE(call, name)						\
	do {								\
		err.msg[0] = '\0';					\
		r = (call);						\
		check(r < 0 && err.msg[0], name ": fails once the agent is gone", \
		      "returned %d, message \"%s\"", r, err.msg);	\
	} while (0)
	GONE(kac_umask(c, 0, 0, &old, &err), "umask");
	check(old == 12345, "umask: *old untouched by a failure", "%o", old);
	GONE(kac_chmod(c, "/", 0755, &err), "chmod");
	GONE(kac_chown(c, "/", -1, -1, &err), "chown");
	GONE(kac_link(c, "/a", "/b", &err), "link");
	GONE(kac_symlink(c, "/a", "/b", &err), "symlink");
	GONE(kac_readlink(c, "/a", &out, &err), "readlink");
	check(out == NULL, "readlink: *out NULL on a lost connection", "%p", (void *)out);
	GONE(kac_realpath(c, "/", &out, &err), "realpath");
	GONE(kac_truncate(c, "/a", 0, &err), "truncate");
	GONE(kac_utime(c, "/a", 0, 0, &err), "utime");
	out = (char *)1;
	GONE(kac_mktemp(c, 0, NULL, NULL, NULL, &out, &err), "mktemp");
	check(out == NULL, "mktemp: *out NULL on a lost connection", "%p", (void *)out);
#undef GONE
}

int main(int argc, char **argv)
{
	struct kac_err err = { 0 };
	struct kac *c, *c2;
	char sock[PATH_MAX], line[512];
	int st, r, dirty = 0;
	FILE *log;

	if (argc != 2) {
		fprintf(stderr, "usage: kac-path-test AGENT\n");
		return 2;
	}
	umask(022);
	snprintf(work, sizeof(work), "/tmp/kac-path.XXXXXX");
	if (!mkdtemp(work)) {
		perror("kac-path-test: mkdtemp");
		return 2;
	}
	start_agent(argv[1], at(sock, "a.sock"));
	/* kac_connect retries while the socket is not there yet. */
	if (kac_connect(&c, sock, 30000, &err) || kac_connect(&c2, sock, 30000, &err)) {
		fprintf(stderr, "kac-path-test: %s\n", err.msg);
		show_agent_log();
		cleanup();
		return 2;
	}

	test_chmod(c);
	test_chown(c);
	test_links(c);
	test_readlink_realpath(c);
	test_truncate_utime(c);
	test_mktemp_umask(c);

	r = kac_shutdown(c, 2000, 0, &err);
	kac_close(c);
	check(r == 0, "SHUTDOWN", "returned %d (%s)", r, err.msg);
	r = waitpid(agent_pid, &st, 0);
	agent_pid = 0;
	check(r > 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "the agent exits 0", "status %#x", st);
	test_gone(c2);
	kac_close(c2);

	snprintf(sock, sizeof(sock), "%s/agent.log", work);
	log = fopen(sock, "r");
	while (log && fgets(line, sizeof(line), log))
		if (strstr(line, "Sanitizer") || strstr(line, "runtime error"))
			dirty = 1;
	if (log)
		fclose(log);
	check(!dirty, "no sanitizer report from the agent", "see its log");
	cleanup();
	return 0;
}
