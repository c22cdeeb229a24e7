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
 *
 * The agent is not trusted: every frame is bounded by what we announced
 * (1 MiB + 8 payload, 256 KiB records) before it is buffered, output beyond
 * the credit we granted is a protocol violation, and no call waits on the
 * agent without a deadline (kac_set_timeout). A violation or a silent agent
 * closes the connection: that call and every later one on c fail.
 */
#ifndef KILN_AGENT_CLIENT_H
#define KILN_AGENT_CLIENT_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

struct kac_err {
	char msg[512];
	uint32_t code;		/* KP_ERR_* from the agent's ERROR, KAC_ERR_TIMEOUT, or 0 if local */
};

/* err->code of -ETIMEDOUT when the agent stayed silent past the connection's timeout. */
#define KAC_ERR_TIMEOUT		0x10000

#define KAC_TIMEOUT_DEFAULT_MS	30000

struct kac;

/*
 * Connect to the agent through the VMM's unix socket uds: CONNECT to the
 * agent's vsock port, then the HELLO exchange. The VM may still be booting:
 * a missing socket, a refused connect or a VMM that closes without "OK"
 * (nothing listens on the port yet) are retried until timeout_ms has passed
 * (a missing socket the moment inotify sees something made in its
 * directory, the others after 1, 2, 4 ... 50 ms).
 * Returns 0 with *out set, -ENOENT/-ECONNREFUSED when no VM listens on uds,
 * -ETIMEDOUT when the VM is there but the agent never answered, or another
 * -errno.
 */
int kac_connect(struct kac **out, const char *uds, int timeout_ms, struct kac_err *err);

/*
 * kac_connect without its round trips, for a VM known to be coming up with
 * its agent listening (a restore: the VMM holds a connection made while it
 * restores until the guest can take it). Connects to uds (waiting up to
 * timeout_ms for the socket to appear), writes the CONNECT line and HELLO,
 * and returns at once: requests made on the connection go out behind them,
 * and the VMM's "OK" and the agent's HELLO are read ahead of their answers.
 * A VM that refuses the connection fails the first request with
 * -ECONNREFUSED (connect again). Returns 0 with *out set, or -errno
 * (-ENOENT/-ECONNREFUSED: no VM listening on uds by timeout_ms).
 */
int kac_connect_early(struct kac **out, const char *uds, int timeout_ms, struct kac_err *err);

/*
 * One try at the agent's stream without the HELLO: connect to uds and
 * CONNECT to the agent's vsock port, for a caller that relays the stream
 * (kilnd's agent WebSocket). 0 with *fd (blocking, close-on-exec), or -errno.
 */
int kac_dial(const char *uds, int timeout_ms, int *fd, struct kac_err *err);

/*
 * The HELLO exchange only, on fd: a stream already connected to the agent
 * (the vsock CONNECT done, e.g. kilnd's agent WebSocket bridged to a
 * socketpair). fd is made non-blocking and consumed: kac_close closes it,
 * and so does a failure. The agent's HELLO is due within timeout_ms (<= 0:
 * KAC_TIMEOUT_DEFAULT_MS). Returns 0 with *out set, or -errno.
 */
int kac_connect_fd(struct kac **out, int fd, int timeout_ms, struct kac_err *err);

/* Close the connection (detaches, does not stop, its processes) and free c. */
void kac_close(struct kac *c);

/*
 * How long the agent may stay silent, in ms (0: no limit; default
 * KAC_TIMEOUT_DEFAULT_MS). A request that is answered at once (stat, mkdir,
 * env, the start of an exec ...) fails when its answer or next batch is that
 * late. A request that may take any time (an exec's or attach's stream, a
 * file transfer, wait, port wait and connect, copy, an FH lock) is only cut
 * off when the agent stops showing signs of life: when quiet for half the
 * timeout the client sends PING, and any frame by the end of it will do.
 * A send that finds no room in the socket for the timeout (the agent
 * stopped reading) fails too. Each of these is -ETIMEDOUT with err->code
 * KAC_ERR_TIMEOUT and closes the connection.
 */
void kac_set_timeout(struct kac *c, int timeout_ms);

/*
 * Run this connection's file operations (by path and by handle) as the
 * agent's default user (kiln.user=, the image's user) instead of root: its
 * permissions apply and what it creates is its own, as for its commands.
 * An agent without a default user, or one older than KT_AS_USER, stays root.
 */
void kac_set_fs_user(struct kac *c, int on);

/* The agent's name and build from its HELLO ("" if it sent none). */
const char *kac_agent_name(const struct kac *c);

/* Called with each piece of output of channel chan (1 stdout, 2 stderr). Return 0, or -errno to stop. */
typedef int (*kac_data_fn)(void *arg, int chan, const void *p, size_t n);

/* Called when the agent reports that bytes [from, to) of channel chan were lost (overwritten in its ring). */
typedef void (*kac_gap_fn)(void *arg, int chan, uint64_t from, uint64_t to);

/* Called once, when the agent reports that the process started (its pid in the guest). */
typedef void (*kac_started_fn)(void *arg, uint64_t pid);

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
	int detach;			/* return once the process started (ex->handle, ex->pid); its
					 * output stays in the agent's rings for kac_attach */
	int pty;			/* a pseudo-terminal of rows x cols (0: 24 x 80) for stdin,
					 * stdout and stderr; output arrives on channel 1 */
	unsigned rows, cols;
	int tty_fd;			/* with pty: SIGWINCH read from sig_fd resizes the guest's
					 * terminal to this terminal's size; -1: none */
	uint64_t ring;			/* output ring per channel in bytes, 0: the agent's 1 MiB */
	int overflow_drop;		/* a full ring overwrites its oldest bytes (gaps) instead of
					 * stopping the process */
	kac_gap_fn gap_fn;		/* NULL: gaps are not reported */
	void *gap_arg;
	kac_started_fn started_fn;	/* NULL: the start is not reported */
	void *started_arg;
	int set_ids;			/* run as uid/gid below, not the agent's default user */
	uint32_t uid, gid;
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

#define KAC_FROM_OLDEST	UINT64_MAX	/* attach from the oldest byte the ring still holds */

struct kac_attach_opts {
	uint64_t handle;
	uint64_t out_offset, err_offset;	/* replay from these offsets, or KAC_FROM_OLDEST */
	int stdin_fd;			/* -1, or take over the process's stdin and feed it from here */
	int stdout_fd, stderr_fd;
	int sig_fd;			/* as for kac_exec */
	int tty_fd;			/* as for kac_exec, when the process has a pty; -1: none */
	kac_gap_fn gap_fn;
	void *gap_arg;
};

/*
 * Attach to a running or exited process by handle: replay its output from the
 * given offsets, then stream it until it exits (ex filled in). Bytes the ring
 * no longer holds are reported through gap_fn. Another attach takes over and
 * this one fails with -EBUSY (err->code KP_ERR_DETACHED).
 */
int kac_attach(struct kac *c, const struct kac_attach_opts *o, struct kac_exit *ex, struct kac_err *err);

/* Wait for the process handle to exit (timeout_ms <= 0: no limit; else -ETIMEDOUT). */
int kac_wait(struct kac *c, uint64_t handle, int timeout_ms, struct kac_exit *ex, struct kac_err *err);

/* Forget an exited process and its output (-EBUSY while it runs). */
int kac_release(struct kac *c, uint64_t handle, struct kac_err *err);

/* Set the window size of a process's pty (the guest process gets SIGWINCH). */
int kac_resize(struct kac *c, uint64_t handle, unsigned rows, unsigned cols, struct kac_err *err);

#define KAC_PROC_ARGS	64

struct kac_proc {
	struct kac_exit exit;		/* handle and pid always; the rest when exited */
	int exited;
	int pty;
	uint64_t out_offset, err_offset;	/* bytes written so far on stdout, stderr */
	int argc;			/* argv, at most KAC_PROC_ARGS of them */
	const char *argv[KAC_PROC_ARGS];
	char argbuf[4200];
};

/* Called with each process the agent knows (valid during the call). Return 0, or -errno to stop. */
typedef int (*kac_proc_fn)(void *arg, const struct kac_proc *p);

/* The agent's processes, running and exited (until released). */
int kac_proc_list(struct kac *c, kac_proc_fn fn, void *arg, struct kac_err *err);

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

/*
 * chmod(2): set path's permission bits to mode (bits beyond 07777, such as
 * the S_IFMT bits of a kac_stat's mode, are dropped). A symlink is followed.
 */
int kac_chmod(struct kac *c, const char *path, uint32_t mode, struct kac_err *err);

/*
 * chown(2): path's owner to uid and group to gid; -1 leaves that one
 * unchanged. A symlink is followed: the agent has no lchown. Another
 * negative id is -EINVAL here; the agent refuses ids of 2^32 - 1 and more
 * (-EINVAL).
 */
int kac_chown(struct kac *c, const char *path, int64_t uid, int64_t gid, struct kac_err *err);

/* Hard link: path becomes a new name for the existing file target (-EEXIST if path exists). */
int kac_link(struct kac *c, const char *target, const char *path, struct kac_err *err);

/*
 * Symbolic link: path is created pointing to target, which is stored as
 * given, unchecked and unresolved (-EEXIST if path exists).
 */
int kac_symlink(struct kac *c, const char *target, const char *path, struct kac_err *err);

/*
 * readlink(2): the target of the symlink path, as it was stored, into *out
 * (malloc'd and NUL-terminated; the caller frees it; NULL on failure).
 * -EINVAL if path is no symlink.
 */
int kac_readlink(struct kac *c, const char *path, char **out, struct kac_err *err);

/*
 * realpath(3): path made absolute with every symlink, "." and ".." resolved
 * (it must exist), into *out (malloc'd, as for kac_readlink).
 */
int kac_realpath(struct kac *c, const char *path, char **out, struct kac_err *err);

/* truncate(2): cut or extend (with zeros) the file path to length bytes (2^63 or more: -EINVAL). */
int kac_truncate(struct kac *c, const char *path, uint64_t length, struct kac_err *err);

/*
 * Set path's access and modification times, in ns since the epoch
 * (negative before it). A symlink is followed; both times are always set.
 */
int kac_utime(struct kac *c, const char *path, int64_t atime_ns, int64_t mtime_ns, struct kac_err *err);

/*
 * Create a new file (mode 0600), or a directory (0700) with directory, both
 * less the agent's umask, named prefix + six random characters + suffix in
 * dir, and put its path, dir + "/" + name, into *out (malloc'd, as for
 * kac_readlink; absolute when dir is). NULL dir is /tmp (the agent does not
 * read $TMPDIR), NULL prefix "tmp", NULL suffix none. prefix and suffix are
 * at most 64 bytes without '/', and a directory takes no suffix (else
 * -EINVAL). The file is created, not left open.
 */
int kac_mktemp(struct kac *c, int directory, const char *dir, const char *prefix, const char *suffix,
	       char **out, struct kac_err *err);

/*
 * The agent's umask, which its later execs and file operations inherit:
 * *old (if not NULL) gets the mask in force before the call; with set, the
 * mask becomes mask & 0777 (as umask(2)), else it is only read.
 */
int kac_umask(struct kac *c, int set, uint32_t mask, uint32_t *old, struct kac_err *err);

/* ---- in-guest copy, walk, file handles (docs/agent-protocol.md, "Files") ---- */

/*
 * Copy the guest's regular file from to to, inside the guest: to is created
 * or truncated and gets from's permission bits. Returns the byte count, or
 * -errno (-EISDIR for a directory, -EINVAL for the same file or one that is
 * not regular).
 */
int64_t kac_copy(struct kac *c, const char *from, const char *to, struct kac_err *err);

#define KAC_WALK_ALL	UINT64_MAX	/* kac_walk without a depth limit */

/* Called with each entry of a walk: its path, its name and S_IFMT type bits. Return 0, or -errno to stop. */
typedef int (*kac_walk_fn)(void *arg, const char *path, const char *name, uint32_t type);

/*
 * Walk the guest tree under path, depth first: path itself (as a directory),
 * then each entry at most max_depth levels below it (KAC_WALK_ALL: any),
 * its path being path joined with the names on the way. follow: go down
 * into symlinks to directories too (one back to an ancestor is listed, not
 * entered). A callback's error cancels the walk and is returned.
 */
int kac_walk(struct kac *c, const char *path, uint64_t max_depth, int follow, kac_walk_fn fn, void *arg,
	     struct kac_err *err);

/*
 * File handles: open guest files by handle, the SDK's open/create/file*
 * calls. A handle belongs to this connection: kac_close closes them all.
 * The agent keeps at most 256 open per connection (-EAGAIN beyond); a
 * closed or unknown handle is -ESRCH.
 */
#define KAC_FH_READ		0x01
#define KAC_FH_WRITE		0x02
#define KAC_FH_APPEND		0x04
#define KAC_FH_TRUNCATE		0x08
#define KAC_FH_CREATE		0x10
#define KAC_FH_CREATE_NEW	0x20

/*
 * Open path with KAC_FH_* flags (0: read only; as Rust's OpenOptions,
 * TRUNCATE and CREATE* need WRITE or APPEND), creating it with permission
 * bits mode (less the agent's umask). *fh is the handle.
 */
int kac_fh_open(struct kac *c, const char *path, unsigned flags, uint32_t mode, uint64_t *fh,
		struct kac_err *err);

/* Read up to len bytes (at most 240 KiB a call) at the handle's offset: the count, 0 at the end, or -errno. */
int64_t kac_fh_read(struct kac *c, uint64_t fh, void *buf, size_t len, struct kac_err *err);

/* Write up to len bytes (at most 240 KiB a call): the count written, or -errno. */
int64_t kac_fh_write(struct kac *c, uint64_t fh, const void *buf, size_t len, struct kac_err *err);

/* lseek(2) with whence SEEK_SET, SEEK_CUR or SEEK_END: the new offset, or -errno. */
int64_t kac_fh_seek(struct kac *c, uint64_t fh, int64_t offset, int whence, struct kac_err *err);

/* fstat(2) of the handle's file. */
int kac_fh_stat(struct kac *c, uint64_t fh, struct kac_stat *st, struct kac_err *err);

/* fsync(2), or fdatasync(2) with data_only. */
int kac_fh_sync(struct kac *c, uint64_t fh, int data_only, struct kac_err *err);

/* ftruncate(2) to length bytes. */
int kac_fh_truncate(struct kac *c, uint64_t fh, uint64_t length, struct kac_err *err);

/* flock(2), shared or exclusive: returns once the lock is held (the agent waits, not blocking). */
int kac_fh_lock(struct kac *c, uint64_t fh, int exclusive, struct kac_err *err);

/* flock(2) LOCK_UN: release the handle's lock. */
int kac_fh_unlock(struct kac *c, uint64_t fh, struct kac_err *err);

/* futimens(2): access and modification times in ns since the epoch. */
int kac_fh_utime(struct kac *c, uint64_t fh, int64_t atime_ns, int64_t mtime_ns, struct kac_err *err);

/* Close the handle (its id is never given again on this connection). */
int kac_fh_close(struct kac *c, uint64_t fh, struct kac_err *err);

/* ---- control ------------------------------------------------------------------ */

/* What IDENTITY sets; NULL or 0 fields leave that part unchanged. */
struct kac_identity {
	const char *sandbox_id;		/* 1-128 of [A-Za-z0-9._:-]: KILN_SANDBOX_ID and /run/kiln/sandbox-id */
	const char *hostname;		/* 1-64 of [A-Za-z0-9.-]: sethostname and /etc/hostname */
	const char *const *env;		/* NULL-terminated KEY=VALUE list set in the default env, or NULL */
	int clear_env;			/* empty the default env first (KILN_SANDBOX_ID stays) */
	int set_clock;			/* set the guest's CLOCK_REALTIME to realtime_ns */
	uint64_t realtime_ns;		/* ns since the epoch; 0 with set_clock: the host's clock now */
};

/*
 * Set the sandbox's identity after a boot or a snapshot restore, before
 * anything else runs in it: validated whole before anything changes.
 */
int kac_identity(struct kac *c, const struct kac_identity *id, struct kac_err *err);

/*
 * IDENTITY without waiting for its answer: the request goes out now and
 * the requests after it on c follow at once, in the same round trip (the
 * agent handles a connection's requests in order, so an exec sent next
 * already runs as the new identity). kac_identity_wait then collects the
 * answer (at once if it came while another request ran): 0, or the
 * agent's error. One at a time per connection.
 */
int kac_identity_send(struct kac *c, const struct kac_identity *id, struct kac_err *err);
int kac_identity_wait(struct kac *c, struct kac_err *err);

/*
 * SHUTDOWN: the agent SIGTERMs every process, SIGKILLs what is left after
 * grace_ms (0: the agent's default, 5000), syncs and powers off the VM
 * (kiln-vmm then exits 0), or resets it with reboot. Returns 0 once the
 * connection closed (the VM stopped), -ETIMEDOUT if it was still open
 * grace_ms + 30 s later, or another -errno.
 */
int kac_shutdown(struct kac *c, int grace_ms, int reboot, struct kac_err *err);

/* The agent's uptime in ns and count of live processes (HEALTH). */
int kac_health(struct kac *c, uint64_t *uptime_ns, uint64_t *procs, struct kac_err *err);

/* The default environment (the base of every exec): */

/* The value of key in *value (a malloc'd copy, the caller frees it), or NULL when key is unset. */
int kac_env_get(struct kac *c, const char *key, char **value, struct kac_err *err);

/* Set key to value. */
int kac_env_set(struct kac *c, const char *key, const char *value, struct kac_err *err);

/* Remove key (not an error when it is unset). */
int kac_env_unset(struct kac *c, const char *key, struct kac_err *err);

/* Called with each KEY=VALUE entry. Return 0, or -errno to stop. */
typedef int (*kac_str_fn)(void *arg, const char *s);

/* Every KEY=VALUE entry, one call of fn each; fn's error stops the listing and is returned. */
int kac_env_list(struct kac *c, kac_str_fn fn, void *arg, struct kac_err *err);

/* ---- ports --------------------------------------------------------------------- */

/*
 * Connect to TCP port on addr (an IP literal; NULL: 127.0.0.1) from inside
 * the guest, multiplexed on c: bytes read from in_fd go to the socket, the
 * socket's bytes are written to out_fd. When in_fd ends, the guest socket's
 * write side is shut; when the guest peer ends its side, in_fd is no longer
 * read (as nc does) and the call returns. Returns 0, or -errno
 * (-ECONNREFUSED: nothing listens there).
 */
int kac_port_connect(struct kac *c, uint16_t port, const char *addr, int in_fd, int out_fd,
		     struct kac_err *err);

/*
 * A dedicated raw connection to a guest TCP port: c must be a new
 * connection with no request yet, and is consumed (freed) in all cases. On
 * success *fd is a stream socket carrying the TCP connection's bytes
 * unframed both ways (shutdown(SHUT_WR) is a half-close); the caller closes it.
 */
int kac_port_raw(struct kac *c, uint16_t port, const char *addr, int *fd, struct kac_err *err);

struct kac_listener {
	uint16_t port;
	uint64_t pid;			/* 0 if no owner was found */
	char addr[48];			/* the local address it listens on */
};

/* Called with each listening TCP socket. Return 0, or -errno to stop. */
typedef int (*kac_listener_fn)(void *arg, const struct kac_listener *l);

/* The guest's listening TCP sockets (of process pid and its descendants if pid != 0). */
int kac_port_list(struct kac *c, uint64_t pid, kac_listener_fn fn, void *arg, struct kac_err *err);

/*
 * Wait until something listens on port (or, port 0, until process pid or a
 * descendant listens on any port), at most timeout_ms (0: no limit).
 * Returns 0 with *l filled, -ETIMEDOUT, or another -errno.
 */
int kac_port_wait(struct kac *c, uint16_t port, uint64_t pid, int timeout_ms, struct kac_listener *l,
		  struct kac_err *err);

#endif
