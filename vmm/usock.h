/*
 * The unix sockets kiln-vmm listens on (--control PATH, --vsock uds=PATH):
 * created owner-only (0600) or shared with one group (0660), and the peer
 * of every accepted connection checked against the same rule, so loosening
 * the file's mode afterwards lets nobody else in.
 */
#ifndef KILN_USOCK_H
#define KILN_USOCK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "vmm.h"

#define USOCK_NO_GROUP	((gid_t)-1)

/* Who may connect to one socket, and its refusal log's rate limit. */
struct usock_acl {
	uid_t owner;		/* kiln-vmm's effective uid when it bound the socket */
	gid_t group;		/* whose members may connect too; USOCK_NO_GROUP: none */
	char what[128];		/* the socket as the user named it: "--control PATH" */
	const char *hint;	/* how to admit a group, for the log line */
	uint64_t log_ns;	/* when a refusal was last logged */
	unsigned log_quiet;	/* refusals since then, not logged */
};

/*
 * The gid of group name (a name from the group database, or a number) in
 * *gid. Returns 0, or -errno with err naming what (e.g. "--control-group").
 */
int usock_group_lookup(const char *name, const char *what, gid_t *gid, struct kiln_err *err);

/*
 * Listen on a new unix stream socket at path (type flags such as
 * SOCK_NONBLOCK added to SOCK_STREAM | SOCK_CLOEXEC), owned by kiln-vmm's
 * uid with mode 0600, or 0660 and group acl->group. A stale socket at path
 * is replaced; a live one (something accepts there) or any other file is
 * refused. The caller fills acl's group, what and hint; this sets its
 * owner. Returns the listening fd, or -errno with err.
 */
int usock_listen(const char *path, int flags, int backlog, struct usock_acl *acl, struct kiln_err *err);

/*
 * Whether a peer with uid, gid and supplementary groups (ngroups of them)
 * may use a socket owned by owner and shared with group (USOCK_NO_GROUP:
 * none): root, the owner, and with a group its members. 1 or 0.
 */
int usock_peer_allowed(uid_t owner, gid_t group, uid_t uid, gid_t gid, const gid_t *groups, size_t ngroups);

/*
 * Check the peer of an accepted connection fd against acl (its credentials
 * as they were when it connected: SO_PEERCRED, SO_PEERGROUPS). A refused
 * peer is logged on stderr, at most one line a second per socket. Returns
 * 1 (admit it) or 0 (the caller closes fd at once).
 */
int usock_peer_check(struct usock_acl *acl, int fd);

#endif
