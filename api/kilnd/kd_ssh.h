/*
 * kilnd's SSH gateway (the SDK's exposeSsh): one listener for every
 * sandbox, on libssh's server API. A credential is a random username,
 * "kiln-" and 24 base32 characters (120 bits), that stands for one sandbox
 * while it lives: `ssh kiln-...@HOST` gets in with any authentication
 * method (none, any password, any key), and what the client asks for runs
 * in that sandbox through its agent: a shell or a command (with a pty if
 * asked), the sftp subsystem (so sftp and scp work; the guest needs
 * /usr/lib/openssh/sftp-server), and direct-tcpip channels (ssh -L) to
 * guest ports. Agent forwarding, X11, ssh -R and ssh -D's names are refused.
 *
 * Threads: one accepts; each connection has a thread of its own that alone
 * calls into libssh for it (libssh sessions are not thread-safe), and each
 * guest process or port connection a helper thread blocked in the agent
 * client, joined to the connection's thread by pipes. Every thread runs with
 * all signals blocked (a write into a closed pipe is EPIPE, never SIGPIPE).
 */
#ifndef KILN_KD_SSH_H
#define KILN_KD_SSH_H

#include <stddef.h>

#include "err.h"

#define KD_SSH_USER_MAX		32	/* a username and its NUL */
#define KD_SSH_HOST_KEY		"ssh_host_ed25519_key"

struct kd_ssh;

/*
 * Listen on listen, "ADDR:PORT" (an IPv4 address, port 1 to 65535), with
 * the host key STATE_DIR/ssh_host_ed25519_key (made, mode 0600, on the
 * first start; a key others could read is made 0600) and serve on threads
 * of its own. 0 with *out set, or -errno with err.
 */
int kd_ssh_start(const char *listen, const char *state_dir, struct kd_ssh **out, struct kiln_err *err);

/*
 * A new credential for sandbox id whose agent is reached at vsock (the
 * VMM's vsock unix socket, as kac_connect takes): its username is written
 * to username (n >= KD_SSH_USER_MAX). At most 64 per sandbox (-ENOSPC).
 * Thread-safe. 0, or -errno with err.
 */
int kd_ssh_user_new(struct kd_ssh *s, const char *id, const char *vsock, char *username, size_t n,
		    struct kiln_err *err);

/*
 * The sandbox ended: its usernames stop working at once and its open
 * connections are closed within about a second (their guest processes get
 * SIGHUP, then SIGKILL). Thread-safe.
 */
void kd_ssh_forget(struct kd_ssh *s, const char *id);

/* Stop listening, end every connection, and free s (at kilnd's exit). */
void kd_ssh_stop(struct kd_ssh *s);

#endif
