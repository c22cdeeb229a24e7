/*
 * kiln-vmm's control socket: pause, resume, snapshot, shutdown and stats
 * over a unix socket, one request per line, one JSON line per answer
 * (docs/snapshot.md, "Control socket").
 */
#ifndef KILN_CONTROL_H
#define KILN_CONTROL_H

#include <pthread.h>
#include <stdint.h>

#include "snapshot.h"
#include "usock.h"

#define CONTROL_MAX_CLIENTS	16

struct control_client;

struct control {
	const struct snap_source *src;
	int lfd, quit_efd;
	int bound, started;
	int paused;		/* paused by a request (only the control thread changes it) */
	uint64_t t_start;
	uint64_t accept_after;	/* out of descriptors: accept nothing before this (ns) */
	struct usock_acl acl;	/* who may connect */
	struct control_client *clients[CONTROL_MAX_CLIENTS];
	pthread_t thread;
	char path[108];
};

/*
 * Listen on path (a stale socket there is replaced), owner-only, or shared
 * with group (a name or number; NULL: none), and serve up to
 * CONTROL_MAX_CLIENTS clients at once on a thread of its own. src must
 * outlive control_stop. Returns 0 or -errno with err.
 */
int control_start(struct control *c, const char *path, const char *group, const struct snap_source *src,
		  struct kiln_err *err);

/* Stop serving, resume a VM the control socket paused, remove the socket. */
void control_stop(struct control *c);

#endif
