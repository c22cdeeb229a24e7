/*
 * Unix sockets that only their owner (and root, and optionally one group)
 * may use: the file's mode says so, and so does a check of every peer's
 * credentials on accept, which no chmod or inherited descriptor gets past.
 */
#include <errno.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "usock.h"

#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS	59	/* Linux 4.13 */
#endif

#define USOCK_LOG_INTERVAL_NS	1000000000ULL

int usock_group_lookup(const char *name, const char *what, gid_t *gid, struct kiln_err *err)
{
	struct group gr, *res = NULL;
	size_t size = 4096;
	char *buf = NULL, *end;
	unsigned long long v;
	int r;

	if (!*name)
		return kiln_fail(err, EINVAL, "%s: which group? (a group name or number)", what);
	do {
		char *nbuf = realloc(buf, size);

		if (!nbuf) {
			free(buf);
			return kiln_fail(err, ENOMEM, "out of memory");
		}
		buf = nbuf;
		r = getgrnam_r(name, &gr, buf, size, &res);
		size *= 2;
	} while (r == ERANGE && size <= (1 << 20));
	if (res) {
		*gid = gr.gr_gid;
		free(buf);
		return 0;
	}
	free(buf);
	errno = 0;
	v = strtoull(name, &end, 10);
	if (!errno && !*end && name[0] >= '0' && name[0] <= '9' && v < (unsigned long long)USOCK_NO_GROUP) {
		*gid = (gid_t)v;
		return 0;
	}
	return kiln_fail(err, ENOENT, "%s: no such group (name one from the group database, e.g. /etc/group, or give its number)",
			 what);
}

/* Whether something accepts connections on the socket file at sa. */
static int usock_live(const struct sockaddr_un *sa)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int live;

	if (fd < 0)
		return 0;
	/* EAGAIN: a listener whose backlog is full is alive too. */
	live = connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) == 0 || errno == EAGAIN;
	close(fd);
	return live;
}

int usock_listen(const char *path, int flags, int backlog, struct usock_acl *acl, struct kiln_err *err)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct stat st;
	mode_t old;
	int fd, r, e;

	acl->owner = geteuid();
	acl->log_ns = 0;
	acl->log_quiet = 0;
	if (strlen(path) >= sizeof(sa.sun_path))
		return kiln_fail(err, ENAMETOOLONG, "%s: longer than %zu bytes (unix socket paths are short; use a shorter directory)",
				 acl->what, sizeof(sa.sun_path) - 1);
	memcpy(sa.sun_path, path, strlen(path) + 1);
	/* Replace a stale socket left by an earlier run, never a live one or another file. */
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode))
			return kiln_fail(err, EEXIST, "%s: exists and is not a socket (remove it or pick another path)",
					 acl->what);
		if (usock_live(&sa))
			return kiln_fail(err, EADDRINUSE, "%s: another process is listening there (give each VM its own socket)",
					 acl->what);
		unlink(path);
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | flags, 0);
	if (fd < 0)
		return kiln_fail(err, errno, "%s: socket: %s", acl->what, strerror(errno));
	/*
	 * The umask, not a chmod after bind(): a unix socket takes connections
	 * from the moment it is bound, and one made before a chmod would stay.
	 * The umask is the process's, but no other kiln-vmm thread creates files
	 * meanwhile (vsock binds before any thread starts, --control before the
	 * vCPUs, and the I/O thread creates none), and for an instant a tighter
	 * umask could only make a file more private (ssh-agent does the same).
	 * A group gets the socket 0600 first and 0660 only once it is theirs.
	 */
	old = umask(0177);
	r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
	e = errno;
	umask(old);
	if (r < 0) {
		close(fd);
		return kiln_fail(err, e, "%s: %s (is its directory there and writable?)", acl->what, strerror(e));
	}
	/*
	 * By path: a socket's fd has no say over its file. Only someone who may
	 * replace the file in its directory could redirect the chmod, and they
	 * could as well replace the socket: the directory is the boundary.
	 */
	if (acl->group != USOCK_NO_GROUP && (lchown(path, (uid_t)-1, acl->group) < 0 || chmod(path, 0660) < 0)) {
		e = errno;
		r = kiln_fail(err, e, "%s: cannot give it to group %u: %s (kiln-vmm must run as root or as a member of the group)",
			      acl->what, (unsigned)acl->group, strerror(e));
		goto fail;
	}
	if (listen(fd, backlog) < 0) {
		e = errno;
		r = kiln_fail(err, e, "%s: listen: %s", acl->what, strerror(e));
		goto fail;
	}
	return fd;
fail:
	close(fd);
	unlink(path);
	return r;
}

int usock_peer_allowed(uid_t owner, gid_t group, uid_t uid, gid_t gid, const gid_t *groups, size_t ngroups)
{
	size_t i;

	if (uid == 0 || uid == owner)
		return 1;
	if (group == USOCK_NO_GROUP)
		return 0;
	if (gid == group)
		return 1;
	for (i = 0; i < ngroups; i++)
		if (groups[i] == group)
			return 1;
	return 0;
}

/* One line per refused peer, at most one a second: a local user cannot flood stderr. */
static void usock_log_refusal(struct usock_acl *acl, const struct ucred *cr)
{
	uint64_t now = now_ns();
	char who[80], allowed[80];

	if (acl->log_ns && now - acl->log_ns < USOCK_LOG_INTERVAL_NS) {
		acl->log_quiet++;
		return;
	}
	acl->log_ns = now;
	if (cr)
		snprintf(who, sizeof(who), "uid %u (gid %u, pid %d)", (unsigned)cr->uid, (unsigned)cr->gid, (int)cr->pid);
	else
		snprintf(who, sizeof(who), "a peer whose credentials are unknown");
	if (acl->owner == 0)
		snprintf(allowed, sizeof(allowed), "root");
	else
		snprintf(allowed, sizeof(allowed), "root and uid %u", (unsigned)acl->owner);
	if (acl->group != USOCK_NO_GROUP)
		snprintf(allowed + strlen(allowed), sizeof(allowed) - strlen(allowed), " and group %u", (unsigned)acl->group);
	fprintf(stderr, "kiln-vmm: %s: refused %s: only %s may connect%s%s",
		acl->what, who, allowed, acl->group == USOCK_NO_GROUP && acl->hint ? " " : "",
		acl->group == USOCK_NO_GROUP && acl->hint ? acl->hint : "");
	if (acl->log_quiet)
		fprintf(stderr, " (%u more refused since the last line)", acl->log_quiet);
	fputc('\n', stderr);
	acl->log_quiet = 0;
}

int usock_peer_check(struct usock_acl *acl, int fd)
{
	gid_t small[64], *big = NULL;
	const gid_t *groups = small;
	struct ucred cr;
	socklen_t len = sizeof(cr);
	size_t ngroups = 0;
	int ok, r;

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0 || len != sizeof(cr)) {
		usock_log_refusal(acl, NULL);
		return 0;
	}
	if (usock_peer_allowed(acl->owner, acl->group, cr.uid, cr.gid, NULL, 0))
		return 1;
	if (acl->group != USOCK_NO_GROUP) {
		/* The peer's supplementary groups as they were at connect(), not as /proc says now. */
		len = sizeof(small);
		r = getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, small, &len);
		if (r < 0 && errno == ERANGE && len > sizeof(small) && (big = malloc(len))) {
			groups = big;
			r = getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, big, &len);
		}
		if (r == 0)
			ngroups = len / sizeof(gid_t);
		ok = usock_peer_allowed(acl->owner, acl->group, cr.uid, cr.gid, groups, ngroups);
		free(big);
		if (ok)
			return 1;
	}
	usock_log_refusal(acl, &cr);
	return 0;
}
