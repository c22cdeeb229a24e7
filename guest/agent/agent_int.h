/*
 * kiln-agent internals, shared by the files of guest/agent/.
 *
 * kiln-agent: serves the agent protocol (docs/agent-protocol.md) over vsock
 * from PID 1. One poll(2) loop, no threads: a vsock listener, a signalfd for
 * SIGCHLD, each connection, and the pipes of each process it started.
 *
 * Memory is bounded: a process's output pipes are read into per-channel
 * rings (KT_RING bytes each, grown on demand, RING_TOTAL in all) and sent
 * from the ring to the attached stream while it has credit and its
 * connection's send queue is below OUTQ_HIGH; a connection whose send queue
 * is above OUTQ_HIGH is not read from; stdin bytes queue only up to the
 * window the agent granted.
 *
 * The ring is what lets a process outlive its connection: while nobody is
 * attached its output goes on into the ring, and ATTACH replays it from an
 * offset. In KP_OVF_BLOCK mode the ring never overwrites bytes a host has
 * not consumed (returned credit for): a full ring stops reading the pipe and
 * the process blocks in write(2). In KP_OVF_DROP mode the pipe is always
 * read and the oldest bytes are overwritten; a reader behind the ring gets a
 * GAP event. Exited processes keep their status and rings until RELEASE or
 * until MAX_EXITED newer ones evict them.
 *
 * Port streams (PORT_CONNECT) are polled like pipes; a raw PORT_CONNECT turns
 * its connection into an unframed relay between the vsock and the TCP socket.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <sys/io.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/sysinfo.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <netinet/in.h>
#include <linux/vm_sockets.h>

#ifndef KILN_AGENT_INT_H
#define KILN_AGENT_INT_H

#include "agent.h"
#include "abi.h"
#include "agent_proto.h"

#define AGENT_NAME	"kiln-agent 0.1"
#define MAX_CONNS	64
#define MAX_PROCS	1024
#define MAX_IDS		1024		/* live streams per connection */
#define MAX_ARGV	4096
#define RX_CAP		KP_MAX_CONTROL	/* our max_frame: records and DATA */
#define OUTQ_HIGH	(1u << 20)	/* stop producing for a connection above this */
#define READ_CHUNK	(64u << 10)
#define CLOSE_GRACE_S	5		/* wait for the host to close after our shutdown */
#define MAX_PORTS	256		/* framed port streams, all connections */
#define RAW_BUF		(64u << 10)	/* each direction of a raw port connection */
#define MAX_ENV		1024		/* entries of the default environment */
#define MAX_ENV_BYTES	(128u << 10)	/* and their bytes: one ENV_LIST record */
#define MAX_LISTEN	1024		/* listening sockets PORT_LIST reports */
#define SANDBOX_ID_MAX	128
#define SANDBOX_ID_FILE	"/run/kiln/sandbox-id"
#define SHUTDOWN_MS	5000		/* default grace between SIGTERM and SIGKILL */
#define PORT_POLL_MS	50		/* PORT_WAIT rescans the socket tables this often */
#define MAX_EXITED	64		/* exited processes kept for WAIT, ATTACH and PROC_LIST */
/*
 * Every process object at once: running, or exited and still held (kept for
 * WAIT, or attached with output to deliver while a background child keeps
 * its pipes open). EXEC admits against this total, so the poll set (three
 * descriptors a process) is sized by construction.
 */
#define MAX_PROC_OBJS	(MAX_PROCS + MAX_EXITED)
#define RING_DEFAULT	(1u << 20)	/* output ring per channel */
#define RING_MIN	(4u << 10)
#define RING_MAX	(16u << 20)
#define RING_FLOOR	(16u << 10)	/* a ring may always grow this far, whatever the total */
#define RING_TOTAL_MAX	(256ull << 20)	/* all rings together, at most a quarter of RAM */
#define CMD_MAX		4096		/* bytes of argv kept for PROC_LIST */
#define MAX_WALKS	64		/* WALKs in progress, all connections */
/*
 * The agent's own descriptor limit: MAX_CONNS connections of KP_FH_MAX handles
 * each, three pipes a process, and the walks' directories fit with room to
 * spare. The processes it starts get back the limit it was given.
 */
#define AGENT_NOFILE	65536
#define COPY_CHUNK	(1u << 20)	/* bytes a COPY moves per loop turn */
#define LOCK_POLL_MS	50		/* a waiting FH_LOCK retries this often */


extern char **environ;

struct outq {
	uint8_t *p;
	size_t head, len, cap;
};

struct conn;

/* The last bytes of one output channel: offsets [start, end) live at buf[off % alloc]. */
struct ring {
	uint8_t *buf;
	size_t alloc;
	uint64_t start, end;
};

struct proc {
	struct proc *next;
	pid_t pid;
	uint64_t handle;
	int fd[3];		/* stdin (write end), stdout, stderr (read ends); -1 closed */
	int pty;		/* fd[0] and fd[1] are the pty master */
	int drop;		/* KP_OVF_DROP */
	size_t ring_cap;	/* KT_RING */
	struct ring ring[3];	/* channels 1 and 2 */
	uint64_t keep[3];	/* block mode: a host consumed the bytes below keep */
	uint8_t *inbuf;		/* stdin bytes received, not yet written */
	size_t inlen;
	int in_eof;		/* host sent EOF on channel 0 */
	int exited, status;
	int done;		/* exited and both output pipes closed: the EXIT event may go */
	int reported;		/* an attached stream delivered the EXIT event */
	uint64_t exit_seq;	/* order of exit, for eviction */
	char *cmd;		/* argv, NUL-separated, at most CMD_MAX bytes */
	size_t cmdlen;
	struct stream *st;	/* attached stream, NULL when detached */
};

enum stream_kind { ST_EXEC, ST_FWRITE, ST_FREAD, ST_PORT, ST_PWAIT, ST_WAIT, ST_WALK, ST_COPY, ST_LOCK };

struct walk;

struct stream {
	struct stream *next;
	enum stream_kind kind;
	struct conn *conn;
	uint32_t id;
	uint64_t in_off;	/* channel 0 bytes received */
	uint64_t in_credit;	/* channel 0 bytes the host may still send */
	struct proc *proc;	/* ST_EXEC (attached) and ST_WAIT */
	/* ST_EXEC output channels 1 and 2 */
	uint64_t sent[3];	/* next offset to send */
	uint64_t acked[3];	/* offset the host returned credit up to */
	uint64_t credit[3];
	int eof_sent[3];
	int cancelled[3];	/* CANCEL on the channel: no more output */
	int fd;			/* ST_FWRITE, ST_FREAD; ST_COPY: the source */
	int fd2;		/* ST_COPY: the destination */
	uint64_t copied;	/* ST_COPY */
	int plain;		/* ST_COPY: read and write, copy_file_range cannot */
	struct walk *walk;	/* ST_WALK */
	uint64_t fh;		/* ST_LOCK: the handle waiting for its lock */
	int exclusive;
	uint64_t remain;	/* ST_FREAD: bytes left to send */
	uint64_t out_off, out_credit;	/* ST_FREAD, ST_PORT channel 1 */
	/* ST_PORT: fd is the TCP socket */
	int connecting;		/* connect(2) in progress: RESPONSE when it completes */
	uint8_t *inbuf;		/* channel 0 bytes received, not yet written */
	size_t inlen;
	int in_eof;		/* the host sent EOF on channel 0 */
	int wr_shut;		/* shutdown(SHUT_WR) done on the socket */
	int out_eof;		/* the socket's read side ended; EOF sent */
	/* ST_PWAIT */
	uint16_t wport;		/* 0: any port */
	pid_t wpid;		/* 0: any process */
	struct timespec deadline;
};

/* An open file handle (FH_OPEN): it belongs to the connection that opened it. */
struct fh {
	uint64_t id;
	int fd;
};

struct conn {
	struct conn *next;
	int fd;
	int preamble;		/* host mode: the "CONNECT PORT\n" line is still to come */
	char line[32];
	size_t linelen;
	int closing;		/* 1 flushing, 2 shutdown(SHUT_WR) sent, waiting for the host */
	struct timespec closed_at;
	int got_hello;
	uint32_t peer_window, peer_max;
	struct kp_decoder dec;
	uint8_t *rxbuf;
	struct outq out;
	struct stream *streams;
	unsigned nstreams;
	unsigned nreq;		/* requests received */
	struct fh *fh;		/* open file handles (KP_FH_MAX slots once the first is opened) */
	unsigned nfh;
	uint64_t fh_next;	/* the last handle id given: ids are never reused on a connection */
	/*
	 * Raw port mode (PORT_CONNECT with KT_RAW): 1 while connecting, 2 once
	 * bytes are relayed between fd and raw_fd unframed: out carries
	 * TCP-to-host bytes, rawin host-to-TCP bytes.
	 */
	int raw;
	int raw_fd;
	uint32_t raw_id;
	uint8_t *rawin;
	size_t rawin_len;
	int rd_eof;		/* the host shut its side: shut the TCP write side */
	int tcp_eof;		/* the TCP peer shut its side: shut ours to the host */
	int tcp_wr_shut;
	int vs_wr_shut;		/* shutdown(SHUT_WR) done on the vsock side */
};

struct listener;

/* The agent's state (defined in loop.c). */
extern struct rlimit child_nofile;	/* the limit the agent was started with */
extern struct conn *conns;
extern unsigned nconns;
extern struct proc *procs;
extern unsigned nlive, nexited;
extern uint64_t exit_seq;
extern uint64_t ring_total, ring_limit;
extern uint64_t next_handle;
extern unsigned nports;
extern unsigned nwalks;
extern char **envs;
extern size_t nenvs, env_bytes;
extern char sandbox_id[SANDBOX_ID_MAX + 1];
struct stopping {
	int active;
	int reboot;
	struct timespec deadline;
};
extern struct stopping stopping;
extern void (*agent_stop)(int reboot);
extern int host_mode;
extern uint8_t scratch[KP_HDR_LEN + KP_MAX_CONTROL];
extern int reserve_fd;
extern unsigned long refused_peers;

void send_error(struct conn *c, uint32_t id, uint32_t code, int err_no, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
int outq_put(struct outq *q, const void *p, size_t n);
void conn_put(struct conn *c, const void *p, int n);
void rec_begin(struct kp_recw *w);
void rec_send(struct conn *c, uint8_t type, uint8_t flags, uint32_t id, struct kp_recw *w);
void send_ok(struct conn *c, uint32_t id);
void send_data(struct conn *c, uint32_t id, uint16_t ch, uint64_t off, const uint8_t *p, uint32_t n);
uint32_t max_data(const struct conn *c);
void conn_free(struct conn *c);
void conn_close(struct conn *c);
void nofile_init(void);
int conn_peer_ok(const struct sockaddr_vm *peer, socklen_t len);
void conn_accept(int lfd);
ssize_t conn_preamble(struct conn *c, const uint8_t *buf, size_t n);
void conn_read(struct conn *c);
int conn_write(struct conn *c);
void fd_close(int *fd);
struct stream *stream_find(struct conn *c, uint32_t id);
struct stream *stream_new(struct conn *c, enum stream_kind kind, uint32_t id);
void stream_free(struct conn *c, struct stream *s);
struct conn *stream_conn(const struct stream *s);
void ring_copy_in(struct ring *r, uint64_t off, const uint8_t *p, size_t n);
void ring_read(const struct ring *r, uint64_t off, uint8_t *p, size_t n);
void ring_write(struct ring *r, const uint8_t *p, size_t n);
void ring_reclaim(uint64_t need);
int ring_grow(struct ring *r, size_t cap, uint64_t want);
size_t proc_out_room(struct proc *p, int ch);
void put_exit(struct kp_recw *w, const struct proc *p);
void proc_flush(struct proc *p);
void proc_free(struct proc *p);
void proc_evict(void);
void proc_check_done(struct proc *p);
void proc_pump_out(struct proc *p, int ch);
void proc_pump_in(struct proc *p);
struct proc *proc_by_handle(uint64_t h);
void wait_answer(struct proc *p);
void reap(int sfd);
char *arg_str(const struct kp_frame *f, uint8_t tag, int *bad);
uint64_t arg_u64(const struct kp_frame *f, uint8_t tag, uint64_t dflt, int *bad);
char **arg_list(const struct kp_frame *f, uint8_t tag, size_t *n, int *bad);
void strv_free(char **v);
void handle_request(struct conn *c, const struct kp_frame *f);
void stream_input(struct conn *c, struct stream *s, const struct kp_frame *f);
void stream_cancel(struct conn *c, struct stream *s, uint16_t ch);
int handle_frame(struct conn *c, const struct kp_frame *f);
char **build_env(char **extra, size_t nextra, int clear);
char *cmd_copy(char **argv, size_t argc, const char *shell, size_t *len);
int pty_open(unsigned rows, unsigned cols, int *master, int *term);
void op_exec(struct conn *c, const struct kp_frame *f);
struct proc *proc_arg(struct conn *c, const struct kp_frame *f, const char *op, int *bad);
void op_attach(struct conn *c, const struct kp_frame *f);
void op_wait(struct conn *c, const struct kp_frame *f);
void op_release(struct conn *c, const struct kp_frame *f);
void op_proc_list(struct conn *c, const struct kp_frame *f);
void op_resize(struct conn *c, const struct kp_frame *f);
void op_signal(struct conn *c, const struct kp_frame *f);
void os_error(struct conn *c, uint32_t id, const char *op, const char *path, int err);
int64_t ts_ns(const struct statx_timestamp *t);
struct timespec ns_timespec(int64_t ns);
void send_statx(struct conn *c, uint32_t id, const struct statx *sx);
void op_stat(struct conn *c, const struct kp_frame *f);
void op_readdir(struct conn *c, const struct kp_frame *f);
int mkdir_p(char *path, mode_t mode);
void op_mkdir(struct conn *c, const struct kp_frame *f);
int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw);
void op_remove(struct conn *c, const struct kp_frame *f);
void op_rename(struct conn *c, const struct kp_frame *f);
void op_path_simple(struct conn *c, const struct kp_frame *f, uint64_t op);
void op_path_query(struct conn *c, const struct kp_frame *f, uint64_t op);
void op_umask(struct conn *c, const struct kp_frame *f);
int tmp_part_ok(const char *s);
void op_mktemp(struct conn *c, const struct kp_frame *f);
int open_nonblock(struct conn *c, uint32_t id, const char *path, int flags, mode_t mode);
void op_file_write(struct conn *c, const struct kp_frame *f);
void op_file_read(struct conn *c, const struct kp_frame *f);
void fread_pump(struct conn *c, struct stream *s);
void op_copy(struct conn *c, const struct kp_frame *f);
int write_full(int fd, const uint8_t *p, size_t n);
void copy_pump(struct conn *c, struct stream *s);
void walk_free(struct walk *wk);
void walk_put(struct kp_recw *w, const char *path, const char *name, unsigned type);
int walk_down(struct walk *wk, const char *name, size_t plen, int is_link);
void walk_pump(struct conn *c, struct stream *s);
void op_walk(struct conn *c, const struct kp_frame *f);
struct fh *fh_find(struct conn *c, uint64_t id);
void fh_close_all(struct conn *c);
int fh_open_flags(unsigned fl);
void op_fh_open(struct conn *c, const struct kp_frame *f);
void op_fh(struct conn *c, const struct kp_frame *f, uint64_t op);
void lock_poll(void);
void op_health(struct conn *c, const struct kp_frame *f);
int env_init(void);
ssize_t env_find(const char *key, size_t kl);
void env_unset(const char *key, size_t kl);
void env_clear(void);
int env_set(const char *key, size_t kl, const char *val);
int env_key_ok(const char *k, size_t kl);
int env_entry_ok(const char *e);
int name_ok(const char *s, size_t max, const char *extra);
int write_small_file(const char *dir, const char *path, const char *text);
void op_identity(struct conn *c, const struct kp_frame *f);
void op_env(struct conn *c, const struct kp_frame *f, uint64_t op);
void signal_all(int sig);
int any_left(void);
void op_shutdown(struct conn *c, const struct kp_frame *f);
int port_dial(const char *addr, uint16_t port);
int dial_result(int fd);
void op_port_connect(struct conn *c, const struct kp_frame *f);
void port_connected(struct conn *c, struct stream *s);
void port_maybe_done(struct conn *c, struct stream *s);
void port_pump_out(struct conn *c, struct stream *s);
void port_pump_in(struct conn *c, struct stream *s);
size_t listeners_read(const char *path, int v6, struct listener *l, size_t n, size_t max);
pid_t proc_ppid(pid_t pid);
int pid_under(pid_t pid, pid_t root);
void listeners_owners(struct listener *l, size_t n);
ssize_t listeners_scan(struct listener **out, int want_pid);
void op_port_list(struct conn *c, const struct kp_frame *f);
int pwait_check(struct conn *c, struct stream *s, const struct listener *l, ssize_t n);
int ts_after(const struct timespec *a, const struct timespec *b);
void pwait_poll(void);
void op_port_wait(struct conn *c, const struct kp_frame *f);
void raw_connected(struct conn *c);
int raw_step(struct conn *c, int vsock_in, int tcp_in, int tcp_out);
void shutdown_step(void);
void pfd_add(nfds_t *n, int fd, short events, uint8_t k, void *o, uint8_t ch);
struct conn *conn_live(void *o, int fd);
int agent_setup(int *sfd);
void host_stop(int reboot);

#endif
