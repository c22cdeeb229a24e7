/*
 * kiln agent client: the host side of docs/agent-protocol.md over the VMM's
 * vsock unix socket (--vsock cid=N,uds=PATH). Built on the shared codec in
 * guest/agent_proto.{h,c}.
 *
 * One struct kac is one agent connection. Its operations are blocking and
 * run one at a time (the connection is single-threaded; open more
 * connections for concurrency, the agent takes up to 64). Memory is bounded:
 * one receive buffer of the largest frame we announce, one read-ahead buffer
 * and one send buffer, whatever the size of the streams. Output is written to
 * the caller's fds (or callback) as DATA arrives and credit is returned only
 * after it was written, so a slow consumer stalls only the guest process.
 *
 * Every function returns 0 (or a count) on success and -errno on failure with
 * a message for people in err->msg; nothing here prints.
 */
#ifndef KILN_AGENT_CLIENT_H
#define KILN_AGENT_CLIENT_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

struct kac_err {
	char msg[512];
	uint32_t code;		/* KP_ERR_* from the agent's ERROR, 0 if local */
};

struct kac;

/*
 * Connect to the agent through the VMM's unix socket uds: CONNECT to the
 * agent's vsock port, then the HELLO exchange. The VM may still be booting:
 * a missing socket, a refused connect or a VMM that closes without "OK"
 * (nothing listens on the port yet) are retried until timeout_ms has passed.
 * Returns 0 with *out set, -ENOENT/-ECONNREFUSED when no VM listens on uds,
 * -ETIMEDOUT when the VM is there but the agent never answered, or another
 * -errno.
 */
int kac_connect(struct kac **out, const char *uds, int timeout_ms, struct kac_err *err);

/* Close the connection (detaches, does not stop, its processes) and free c. */
void kac_close(struct kac *c);

/* The agent's name and build from its HELLO ("" if it sent none). */
const char *kac_agent_name(const struct kac *c);

/* Called with each piece of output of channel chan (1 stdout, 2 stderr). Return 0, or -errno to stop. */
typedef int (*kac_data_fn)(void *arg, int chan, const void *p, size_t n);

struct kac_exec_opts {
	const char *const *argv;	/* NULL-terminated; argv[0] looked up in PATH */
	const char *const *env;		/* NULL-terminated KEY=VALUE list, or NULL */
	const char *cwd;		/* NULL: the agent's default (/) */
	int stdin_fd;			/* forwarded to the process's stdin; -1: /dev/null */
	int stdout_fd, stderr_fd;	/* where output goes when out_fn is NULL */
	kac_data_fn out_fn;		/* or a callback for both channels */
	void *out_arg;
	int sig_fd;			/* -1, or a pipe whose bytes are signal numbers to forward */
	int timeout_ms;			/* <= 0: none; on expiry SIGKILL is sent, -ETIMEDOUT returned */
};

struct kac_exit {
	int64_t code;		/* exit status, or -1 if killed by a signal */
	int signal;		/* terminating signal, 0 if none */
	int core;
	int oom;
	uint64_t handle;	/* the agent's process handle */
	uint64_t pid;		/* the process's pid in the guest */
};

/* Run a process and stream its output until it exits. A failed exec (no such command) is -ENOENT/-EACCES. */
int kac_exec(struct kac *c, const struct kac_exec_opts *o, struct kac_exit *ex, struct kac_err *err);

/* Send signal sig to the process with agent handle handle. */
int kac_signal(struct kac *c, uint64_t handle, int sig, struct kac_err *err);

/*
 * Write the guest file path from fd (read to its end), creating it with mode
 * (permission bits) or truncating it. Returns the byte count written (>= 0) as
 * reported by the agent after its fsync, or -errno.
 */
int64_t kac_file_write(struct kac *c, const char *path, int fd, uint32_t mode, struct kac_err *err);

/* Read the guest file path into fd. Returns the byte count, or -errno. */
int64_t kac_file_read(struct kac *c, const char *path, int fd, struct kac_err *err);

struct kac_stat {
	uint32_t type;		/* S_IFMT bits */
	uint32_t mode;		/* permission bits (and the type bits if the agent sends them) */
	uint64_t size, ino, nlink, uid, gid, dev, rdev, blksize, blocks;
	int64_t atime_ns, mtime_ns, ctime_ns;
};

/* stat(2) (lstat with nofollow) of a guest path. */
int kac_stat(struct kac *c, const char *path, int nofollow, struct kac_stat *st, struct kac_err *err);

/* Called with each directory entry: name and S_IFMT type bits. Return 0, or -errno to stop. */
typedef int (*kac_dirent_fn)(void *arg, const char *name, uint32_t type);

/* List a guest directory, one call of fn per entry. */
int kac_readdir(struct kac *c, const char *path, kac_dirent_fn fn, void *arg, struct kac_err *err);

/* mkdir (recursive: -p) with mode permission bits. */
int kac_mkdir(struct kac *c, const char *path, uint32_t mode, int recursive, struct kac_err *err);

/* Remove a file or an empty directory (recursive: a whole tree). */
int kac_remove(struct kac *c, const char *path, int recursive, struct kac_err *err);

/* rename(2) within the guest. */
int kac_rename(struct kac *c, const char *from, const char *to, struct kac_err *err);

#endif
