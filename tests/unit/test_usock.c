/*
 * Who may use kiln-vmm's unix sockets (vmm/usock.c) and how the control
 * socket serves its clients (vmm/kiln-vmm/control.c), against real sockets in a
 * scratch directory. Clients of another uid are forked children that drop
 * to it, which needs root: those checks are skipped otherwise.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "unit.h"
#include "control.h"
#include "usock.h"

#define NOBODY		65534
#define GROUP		4242	/* a gid nobody else uses: no group database needed */

static char dir[64], path[96];
static struct kiln_err err;

static void setup(void)
{
	snprintf(dir, sizeof(dir), "/tmp/kiln-usock-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	ck_assert_int_eq(chmod(dir, 0755), 0);	/* other uids may reach the socket */
	snprintf(path, sizeof(path), "%s/s.sock", dir);
}

static void teardown(void)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	ck_assert_int_eq(system(cmd), 0);
}

static int conn(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	return fd;
}

/* Read one line (at most cap-1 bytes), waiting up to ms for each byte: its length, 0 at EOF, -1 on timeout. */
static int read_line(int fd, char *buf, size_t cap, int ms)
{
	size_t got = 0;

	while (got + 1 < cap) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		ssize_t n;

		if (poll(&p, 1, ms) != 1)
			return -1;
		n = recv(fd, buf + got, 1, 0);	/* a byte at a time: the next line stays for the next call */
		if (n < 0 && errno == ECONNRESET)
			n = 0;
		if (n <= 0)
			break;
		got += (size_t)n;
		if (buf[got - 1] == '\n')
			break;
	}
	buf[got] = '\0';
	return (int)got;
}

/*
 * In a child that is uid and gid with the one supplementary group sup (0:
 * none), connect to path and send req. Exit status: 0 answered, 1 closed
 * without an answer, 2 could not connect, 3 no answer in 10 s, 4 setup.
 */
static pid_t peer_start(uid_t uid, gid_t gid, gid_t sup, const char *req)
{
	pid_t pid = fork();
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char buf[256];
	int fd, n;

	ck_assert_int_ge(pid, 0);
	if (pid)
		return pid;
	if (setgroups(sup ? 1 : 0, &sup) < 0 || setresgid(gid, gid, gid) < 0 || setresuid(uid, uid, uid) < 0)
		_exit(4);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		_exit(2);
	(void)!send(fd, req, strlen(req), MSG_NOSIGNAL);
	n = read_line(fd, buf, sizeof(buf), 10000);
	_exit(n > 0 ? 0 : n == 0 ? 1 : 3);
}

static int peer_wait(pid_t pid)
{
	int status;

	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFEXITED(status));
	return WEXITSTATUS(status);
}

START_TEST(peer_allowed)
{
	const gid_t g[] = { 5, GROUP, 7 };

	/* Without a group: root and the owner, nobody else, whatever their groups. */
	ck_assert_int_eq(usock_peer_allowed(1000, USOCK_NO_GROUP, 0, 0, NULL, 0), 1);
	ck_assert_int_eq(usock_peer_allowed(1000, USOCK_NO_GROUP, 1000, 1000, NULL, 0), 1);
	ck_assert_int_eq(usock_peer_allowed(1000, USOCK_NO_GROUP, 1001, 1000, g, 3), 0);
	ck_assert_int_eq(usock_peer_allowed(0, USOCK_NO_GROUP, 1000, 0, NULL, 0), 0);	/* gid 0 is not root */
	ck_assert_int_eq(usock_peer_allowed(0, USOCK_NO_GROUP, 0, 1000, NULL, 0), 1);
	/* With a group: its members, by primary or supplementary gid. */
	ck_assert_int_eq(usock_peer_allowed(1000, GROUP, 1001, GROUP, NULL, 0), 1);
	ck_assert_int_eq(usock_peer_allowed(1000, GROUP, 1001, 1001, g, 3), 1);
	ck_assert_int_eq(usock_peer_allowed(1000, GROUP, 1001, 1001, g, 1), 0);
	ck_assert_int_eq(usock_peer_allowed(1000, GROUP, 1001, 1001, NULL, 0), 0);
	ck_assert_int_eq(usock_peer_allowed(1000, GROUP, 1000, 1, NULL, 0), 1);
	ck_assert_int_eq(usock_peer_allowed(1000, GROUP, 0, 1, NULL, 0), 1);
}
END_TEST

START_TEST(group_lookup)
{
	gid_t g = 0;

	ck_assert_int_eq(usock_group_lookup("root", "--x root", &g, &err), 0);
	ck_assert_uint_eq(g, 0);
	ck_assert_int_eq(usock_group_lookup("4242", "--x 4242", &g, &err), 0);
	ck_assert_uint_eq(g, 4242);
	ck_assert_int_eq(usock_group_lookup("no-such-group-kiln", "--x no-such-group-kiln", &g, &err), -ENOENT);
	ck_assert_ptr_nonnull(strstr(err.msg, "--x no-such-group-kiln: no such group"));
	ck_assert_int_lt(usock_group_lookup("", "--x", &g, &err), 0);
	ck_assert_int_lt(usock_group_lookup("12x", "--x 12x", &g, &err), 0);
	ck_assert_int_lt(usock_group_lookup("4294967295", "--x", &g, &err), 0);
}
END_TEST

/* Owner-only under any umask; 0660 for a group; stale sockets replaced, live ones and files not. */
START_TEST(listen_modes)
{
	struct usock_acl acl = { .group = USOCK_NO_GROUP, .what = "--test" };
	struct stat st;
	mode_t old = umask(0);
	int fd, fd2;

	fd = usock_listen(path, 0, 8, &acl, &err);
	umask(old);
	ck_assert_msg(fd >= 0, "%s", err.msg);
	ck_assert_int_eq(lstat(path, &st), 0);
	ck_assert(S_ISSOCK(st.st_mode));
	ck_assert_uint_eq(st.st_mode & 07777, 0600);
	ck_assert_uint_eq(st.st_uid, geteuid());
	ck_assert_uint_eq(acl.owner, geteuid());
	/* Live: refused. */
	ck_assert_int_eq(usock_listen(path, 0, 8, &acl, &err), -EADDRINUSE);
	ck_assert_ptr_nonnull(strstr(err.msg, "--test: another process is listening there"));
	close(fd);
	/* Stale: replaced, now shared with a group. */
	acl.group = geteuid() == 0 ? GROUP : getgid();
	old = umask(0);
	fd = usock_listen(path, 0, 8, &acl, &err);
	umask(old);
	ck_assert_msg(fd >= 0, "%s", err.msg);
	ck_assert_int_eq(lstat(path, &st), 0);
	ck_assert_uint_eq(st.st_mode & 07777, 0660);
	ck_assert_uint_eq(st.st_gid, acl.group);
	close(fd);
	/* Not a socket: left alone. */
	snprintf(path, sizeof(path), "%s/file", dir);
	fd2 = open(path, O_CREAT | O_WRONLY, 0600);
	ck_assert_int_ge(fd2, 0);
	close(fd2);
	ck_assert_int_eq(usock_listen(path, 0, 8, &acl, &err), -EEXIST);
	ck_assert_ptr_nonnull(strstr(err.msg, "not a socket"));
}
END_TEST

/* usock_peer_check on connections from other uids, with the file's mode opened wide. */
START_TEST(peer_check_other_users)
{
	struct usock_acl acl = { .group = USOCK_NO_GROUP, .what = "--test" };
	const struct { gid_t group; uid_t uid; gid_t gid, sup; int admitted; } cases[] = {
		{ USOCK_NO_GROUP, NOBODY, NOBODY, 0, 0 },
		{ USOCK_NO_GROUP, NOBODY, NOBODY, GROUP, 0 },
		{ USOCK_NO_GROUP, 0, NOBODY, 0, 1 },
		{ GROUP, NOBODY, NOBODY, 0, 0 },
		{ GROUP, NOBODY, NOBODY, GROUP, 1 },	/* supplementary */
		{ GROUP, NOBODY, GROUP, 0, 1 },		/* primary */
	};
	size_t i;

	if (geteuid() != 0)
		return;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct pollfd p;
		pid_t pid;
		int lfd, fd;

		acl.group = cases[i].group;
		lfd = usock_listen(path, 0, 8, &acl, &err);
		ck_assert_msg(lfd >= 0, "%s", err.msg);
		ck_assert_int_eq(chmod(path, 0777), 0);
		pid = peer_start(cases[i].uid, cases[i].gid, cases[i].sup, "hello\n");
		p = (struct pollfd){ .fd = lfd, .events = POLLIN };
		ck_assert_int_eq(poll(&p, 1, 10000), 1);
		fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		ck_assert_int_ge(fd, 0);
		ck_assert_int_eq(usock_peer_check(&acl, fd), cases[i].admitted);
		if (cases[i].admitted)
			ck_assert_int_eq(write(fd, "yes\n", 4), 4);
		close(fd);
		ck_assert_int_eq(peer_wait(pid), cases[i].admitted ? 0 : 1);
		close(lfd);
		unlink(path);
	}
}
END_TEST

/* A control socket on no VM: "help" is the one request that needs none. */
static const struct snap_source no_vm;

/*
 * One client that sends nothing, and one that never ends its line, hold up
 * no other; at most CONTROL_MAX_CLIENTS are served; and both are closed at
 * their deadline while a client that has had an answer stays.
 */
START_TEST(control_clients_side_by_side)
{
	static struct control ctl;
	int idle, part, b, more[CONTROL_MAX_CLIENTS], extra, i;
	char buf[512], big[5000];
	struct stat st;
	mode_t old = umask(0);

	i = control_start(&ctl, path, NULL, &no_vm, &err);
	umask(old);
	ck_assert_msg(i == 0, "%s", err.msg);
	ck_assert_int_eq(lstat(path, &st), 0);
	ck_assert_uint_eq(st.st_mode & 07777, 0600);

	idle = conn();
	part = conn();
	ck_assert_int_eq(write(part, "he", 2), 2);
	b = conn();
	ck_assert_int_eq(write(b, "help\n", 5), 5);
	ck_assert_int_gt(read_line(b, buf, sizeof(buf), 10000), 0);
	ck_assert_msg(strncmp(buf, "{\"ok\":true,\"requests\"", 21) == 0, "%s", buf);
	/* Requests sent together are answered in order. */
	ck_assert_int_eq(write(b, "help\nhelp\n", 10), 10);
	ck_assert_int_gt(read_line(b, buf, sizeof(buf), 10000), 0);
	ck_assert_int_gt(read_line(b, buf, sizeof(buf), 10000), 0);
	ck_assert_msg(strncmp(buf, "{\"ok\":true,\"requests\"", 21) == 0, "%s", buf);
	/* A line too long is answered with an error, and the client served on. */
	memset(big, 'x', sizeof(big));
	big[sizeof(big) - 1] = '\n';
	ck_assert_int_eq(write(b, big, sizeof(big)), (ssize_t)sizeof(big));
	ck_assert_int_gt(read_line(b, buf, sizeof(buf), 10000), 0);
	ck_assert_msg(strstr(buf, "longer than 4096"), "%s", buf);

	/* 3 clients so far: fill the rest of the slots; one more is turned away. */
	for (i = 0; i < CONTROL_MAX_CLIENTS - 3; i++)
		more[i] = conn();
	extra = conn();
	ck_assert_int_gt(read_line(extra, buf, sizeof(buf), 10000), 0);
	ck_assert_msg(strstr(buf, "too many control clients"), "%s", buf);
	ck_assert_int_eq(read_line(extra, buf, sizeof(buf), 10000), 0);
	close(extra);

	/* The silent and the unfinished are closed at their deadline; b, answered, stays. */
	ck_assert_int_eq(read_line(idle, buf, sizeof(buf), 20000), 0);
	ck_assert_int_eq(read_line(part, buf, sizeof(buf), 20000), 0);
	ck_assert_int_eq(write(b, "help\n", 5), 5);
	ck_assert_int_gt(read_line(b, buf, sizeof(buf), 10000), 0);
	for (i = 0; i < CONTROL_MAX_CLIENTS - 3; i++)
		close(more[i]);
	close(idle);
	close(part);
	close(b);
	control_stop(&ctl);
	ck_assert_int_eq(access(path, F_OK), -1);	/* removed */
}
END_TEST

/* Another user is closed unanswered even with the mode opened; --control-group admits members. */
START_TEST(control_other_users)
{
	static struct control ctl;
	struct stat st;
	char group[16];

	if (geteuid() != 0)
		return;
	ck_assert_msg(control_start(&ctl, path, NULL, &no_vm, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(chmod(path, 0777), 0);
	ck_assert_int_eq(peer_wait(peer_start(NOBODY, NOBODY, GROUP, "help\n")), 1);
	ck_assert_int_eq(peer_wait(peer_start(0, NOBODY, 0, "help\n")), 0);
	control_stop(&ctl);

	snprintf(group, sizeof(group), "%d", GROUP);
	ck_assert_msg(control_start(&ctl, path, group, &no_vm, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(lstat(path, &st), 0);
	ck_assert_uint_eq(st.st_mode & 07777, 0660);
	ck_assert_uint_eq(st.st_gid, GROUP);
	ck_assert_int_eq(peer_wait(peer_start(NOBODY, NOBODY, GROUP, "help\n")), 0);
	ck_assert_int_eq(peer_wait(peer_start(NOBODY, GROUP, 0, "help\n")), 0);
	ck_assert_int_eq(chmod(path, 0777), 0);
	ck_assert_int_eq(peer_wait(peer_start(NOBODY, NOBODY, 0, "help\n")), 1);
	control_stop(&ctl);

	ck_assert_int_eq(control_start(&ctl, path, "no-such-group-kiln", &no_vm, &err), -ENOENT);
	ck_assert_ptr_nonnull(strstr(err.msg, "--control-group no-such-group-kiln: no such group"));
}
END_TEST

Suite *suite_usock(void)
{
	Suite *s = suite_create("usock");
	TCase *tc = tcase_create("usock");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, peer_allowed);
	tcase_add_test(tc, group_lookup);
	tcase_add_test(tc, listen_modes);
	tcase_add_test(tc, peer_check_other_users);
	tcase_add_test(tc, control_clients_side_by_side);
	tcase_add_test(tc, control_other_users);
	suite_add_tcase(s, tc);
	return s;
}
