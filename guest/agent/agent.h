/*
 * kiln-agent: the guest side of the agent protocol (docs/agent-protocol.md),
 * run by the init as PID 1 when the kernel command line has kiln.agent.
 */
#ifndef KILN_AGENT_H
#define KILN_AGENT_H

/*
 * Listen on vsock port KP_VSOCK_PORT and serve connections until the VM
 * stops. Prints "kiln-agent: ready" on stderr once the listener is up.
 * stop is called, after SHUTDOWN has stopped every process, to sync and power
 * off (reboot 0) or reset (reboot 1) the VM; it must not return.
 * Returns only if the listener cannot be set up: a negative errno.
 */
int agent_main(void (*stop)(int reboot));

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

#endif
