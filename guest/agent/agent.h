/*
 * kiln-agent: the guest side of the agent protocol (docs/agent-protocol.md),
 * run by the init as PID 1 when the kernel command line has kiln.agent.
 */
#ifndef KILN_AGENT_H
#define KILN_AGENT_H

#include <stdint.h>

/*
 * Whom a command runs as when its EXEC names no UID or GID: the image's
 * user (kiln.user=), with its groups. The agent itself stays root.
 */
#define AGENT_USER_GROUPS_MAX	32
struct agent_user {
	uint32_t uid, gid;
	uint32_t ngroups;
	uint32_t groups[AGENT_USER_GROUPS_MAX];
};

/*
 * Listen on vsock port KP_VSOCK_PORT and serve connections until the VM
 * stops. user: whom commands run as by default (NULL: root, the agent's own). Prints "kiln-agent: ready" on stderr once the listener is up.
 * stop is called, after SHUTDOWN has stopped every process, to sync and power
 * off (reboot 0) or reset (reboot 1) the VM; it must not return.
 * Returns only if the listener cannot be set up: a negative errno.
 */
int agent_main(void (*stop)(int reboot), const struct agent_user *user);

/*
 * Host mode, for tests of a sanitizer build on the host (build/asan/
 * kiln-agent-host): serve on a unix socket at path (created 0600) instead of
 * vsock. Each connection first gets the exchange kiln-vmm's vsock socket
 * gives ("CONNECT 1024\n", answered "OK 1024\n"), so build/kiln --uds path
 * works unchanged. Not PID 1: no port I/O, IDENTITY refuses HOSTNAME and
 * REALTIME_NS, SHUTDOWN signals only the processes the agent started and
 * then exits 0. Returns only if the listener cannot be set up: a negative errno.
 */
int agent_main_unix(const char *path);

/*
 * The agent as a library, for tests and fuzzers that drive it over a
 * connection of their own (a socketpair standing for vsock): create it,
 * hand it connections, turn its loop, free it.
 */
struct agent;

enum agent_flag {
	AGENT_HOST	= 1 << 0,	/* host mode, as agent_main_unix: touch nothing of the machine's */
	AGENT_NO_EXEC	= 1 << 1,	/* refuse EXEC (KP_ERR_OS, EPERM): no process is ever started */
	AGENT_NO_PORTS	= 1 << 2,	/* refuse PORT_CONNECT, PORT_WAIT, PORT_LIST (KP_ERR_OS, EPERM) */
	AGENT_JAIL	= 1 << 3,	/* paths must be relative and without "..": the agent stays below its cwd */
};

/*
 * A new agent with flags (AGENT_*): the default environment from environ,
 * SIGCHLD blocked and taken through a signalfd, no listener. stop is called
 * when a SHUTDOWN has finished (NULL: agent_step returns 1 instead).
 * Returns 0 with *out set, or a negative errno.
 */
int agent_new(struct agent **out, unsigned flags, void (*stop)(int reboot));

/*
 * Serve a connected socket fd (the agent owns it from now on; made
 * non-blocking). preamble: 1 when the peer first sends kiln-vmm's
 * "CONNECT 1024\n" line, 0 to send HELLO at once. Returns 0, or -EMFILE
 * when the connection table is full or -ENOMEM (fd is then closed).
 */
int agent_conn_add(struct agent *a, int fd, int preamble);

/*
 * One turn of the agent's loop: poll its descriptors for at most max_ms
 * (-1: as long as the agent needs) and handle what is ready. Returns 0, or
 * 1 once a SHUTDOWN has finished and stop (if any) returned.
 */
int agent_step(struct agent *a, int max_ms);

/* Free a: its connections close, its processes are forgotten (not signalled). */
void agent_free(struct agent *a);

#endif
