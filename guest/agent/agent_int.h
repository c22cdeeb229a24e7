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
#include <grp.h>
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
#include <sys/fsuid.h>
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
#include "io.h"

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

struct agent;
struct conn;
struct stream;

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
	struct exec_stream *st;	/* attached stream, NULL when detached */
};

/*
 * What the generic frame handling asks of one kind of stream. A kind's own
 * state follows its struct stream (the first member of the kind's struct,
 * size bytes in all). A NULL operation is one the kind does not have.
 */
struct stream_ops {
	const char *name;
	size_t size;
	/* DATA (data, n bytes) or EOF (f->type) on channel 0, offset and credit checked */
	void (*input)(struct conn *c, struct stream *s, const struct kp_frame *f, const uint8_t *data, uint32_t n);
	/* 1 once channel 0 has ended (more input is refused) */
	int (*input_ended)(const struct stream *s);
	/* CANCEL of channel ch alone; without it any channel cancels the request */
	void (*cancel_channel)(struct conn *c, struct stream *s, uint16_t ch);
	/* WINDOW of inc on channel ch: 0, or -1 when the credit would overflow */
	int (*window)(struct stream *s, uint16_t ch, uint32_t inc);
	/* work without a descriptor to wait on, once a loop turn (file reads, walks, copies) */
	void (*pump)(struct conn *c, struct stream *s);
	/* the stream's descriptors into the poll set, and their events */
	void (*poll_add)(struct agent *a, struct conn *c, struct stream *s);
	void (*poll_event)(struct conn *c, struct stream *s, int fd, short revents);
	/* retried after each poll, which waits at most tick_ms while such a stream exists */
	void (*tick)(struct conn *c, struct stream *s);
	int tick_ms;
	/* more work next turn: the poll does not wait while such a stream exists (COPY) */
	int busy;
	/* what the kind holds, when the stream ends */
	void (*release)(struct agent *a, struct stream *s);
};

struct stream {
	struct stream *next;
	const struct stream_ops *ops;
	struct conn *conn;
	uint32_t id;
	uint64_t in_off;	/* channel 0 bytes received */
	uint64_t in_credit;	/* channel 0 bytes the host may still send */
};

/* An EXEC or ATTACH stream: the output channels 1 and 2 of its process. */
struct exec_stream {
	struct stream s;
	struct proc *proc;
	uint64_t sent[3];	/* next offset to send */
	uint64_t acked[3];	/* offset the host returned credit up to */
	uint64_t credit[3];
	int eof_sent[3];
	int cancelled[3];	/* CANCEL on the channel: no more output */
};

/* An open file handle (FH_OPEN): it belongs to the connection that opened it. */
struct fh {
	uint64_t id;
	int fd;
};

struct conn {
	struct conn *next;
	struct agent *ag;
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

enum { PF_LISTEN, PF_SIGNAL, PF_CONN, PF_PROC, PF_STREAM, PF_RAW };
/* The listener and signalfd; a connection and its raw TCP socket; three pipes a process; port streams. */
#define MAX_PFD	(2 + 2 * MAX_CONNS + 3 * MAX_PROC_OBJS + MAX_PORTS)

struct listener;

/* The agent: all its state, one per process (the guest's PID 1) or per test. */
struct agent {
	unsigned flags;		/* AGENT_* (agent.h) */
	void (*stop)(int reboot);
	int lfd, sfd;		/* the listener (-1: none), the SIGCHLD signalfd */
	struct conn *conns;
	unsigned nconns;
	struct proc *procs;
	unsigned nlive, nexited;
	uint64_t exit_seq;
	uint64_t ring_total, ring_limit;
	uint64_t next_handle;
	unsigned nports;	/* framed port streams */
	unsigned nwalks;
	struct agent_user user;	/* EXEC's default credentials, when has_user */
	int has_user;
	char **envs;		/* the default environment: malloc'd "KEY=VALUE" strings */
	size_t nenvs, env_bytes;
	char sandbox_id[SANDBOX_ID_MAX + 1];
	struct {
		int active;
		int reboot;
		struct timespec deadline;
	} stopping;
	struct rlimit child_nofile;	/* the limit the agent was started with */
	/*
	 * A descriptor held in reserve: out of descriptors, the agent gives it up to
	 * accept and close the waiting connection (the host sees it closed at once),
	 * or the listening socket would stay readable and the main loop would spin.
	 */
	int reserve_fd;
	unsigned long refused_peers;	/* connections from anyone but the host */
	uint64_t turn;		/* loop turns so far */
	struct listener *lis;	/* the listening sockets PORT_WAIT found on turn lis_turn */
	ssize_t nlis;
	uint64_t lis_turn;
	/* the poll set of one loop turn */
	struct pollfd pfd[MAX_PFD];
	nfds_t npfd;
	void *obj[MAX_PFD];
	uint8_t kind[MAX_PFD], chan[MAX_PFD];
	unsigned long pfd_dropped;
	uint8_t scratch[KP_HDR_LEN + KP_MAX_CONTROL];	/* a record frame being built */
	uint8_t io[KP_FH_IO_MAX];	/* bytes on their way between a descriptor and a frame */
	uint8_t rx[65536];		/* bytes read from a connection */
};
_Static_assert(KP_FH_IO_MAX >= READ_CHUNK && KP_FH_IO_MAX >= RAW_BUF, "the I/O buffer holds a chunk");

/* Host mode: a test harness on a unix socket, not PID 1 (agent_main_unix). */
static inline int agent_host_mode(const struct agent *a)
{
	return a->flags & AGENT_HOST;
}

/* ---- loop.c ---- */

/* Add fd to this turn's poll set: events, and what to hand its revents (PF_*, object o, channel ch). */
void agent_poll_add(struct agent *a, int fd, short events, uint8_t kind, void *o, uint8_t ch);

/* ---- conn.c: frames out, connections ---- */

/* Queue n bytes at p to c (n <= 0: nothing); out of memory closes c. */
void conn_put(struct conn *c, const void *p, int n);
/* ERROR for id with code, errno (0: none) and a message. */
void send_error(struct conn *c, uint32_t id, uint32_t code, int err_no, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
/* KP_ERR_OS for id: "op path: strerror(err)". */
void os_error(struct conn *c, uint32_t id, const char *op, const char *path, int err);
/* Start a record in c's scratch buffer; send it as a frame of type, flags, id. */
void rec_begin(struct conn *c, struct kp_recw *w);
void rec_send(struct conn *c, uint8_t type, uint8_t flags, uint32_t id, struct kp_recw *w);
/* An empty RESPONSE|END. */
void send_ok(struct conn *c, uint32_t id);
/* A DATA frame of n bytes at p, offset off, on channel ch of id. */
void send_data(struct conn *c, uint32_t id, uint16_t ch, uint64_t off, const uint8_t *p, uint32_t n);
/* EOF (final offset off, flags) and WINDOW (inc) frames of id on channel ch. */
void send_eof(struct conn *c, uint32_t id, uint16_t ch, uint8_t flags, uint64_t off);
void send_window(struct conn *c, uint32_t id, uint16_t ch, uint32_t inc);
/* The largest DATA payload to send c. */
uint32_t max_data(const struct conn *c);
/* Forget c at once: its streams end, its processes run on. */
void conn_free(struct conn *c);
/* Stop reading c, flush its queue, then close it. */
void conn_close(struct conn *c);
/* Accept a connection on the listener. */
void conn_accept(struct agent *a);
/* Read what c has; write what c's queue holds (-1: c was freed). */
void conn_read(struct conn *c);
int conn_write(struct conn *c);
/* c if it is still a connection of a with descriptor fd, else NULL. */
struct conn *conn_live(struct agent *a, void *o, int fd);

/* ---- stream.c ---- */

/* close(*fd) if open; *fd becomes -1. */
void fd_close(int *fd);
/* The live stream of request id on c, or NULL. */
struct stream *stream_find(struct conn *c, uint32_t id);
/* A new stream of kind ops for request id on c (ops->size bytes, zeroed), or NULL after "what: out of memory". */
struct stream *stream_new(struct conn *c, const struct stream_ops *ops, uint32_t id, const char *what);
/* End stream s of c: its kind releases what it holds (an exec's process runs on, detached). */
void stream_free(struct conn *c, struct stream *s);
/* The connection s belongs to, or NULL when s is gone. */
struct conn *stream_conn(struct agent *a, const struct stream *s);
/* Append n bytes at data to the malloc'd *buf of *len bytes: 0 or -ENOMEM. */
int buf_append(uint8_t **buf, size_t *len, const uint8_t *data, uint32_t n);
/* Add inc to a credit counter: -1 for an increment of 0 or past 2^32 - 1. */
int credit_add(uint64_t *cr, uint32_t inc);
/* DATA or EOF, CANCEL and WINDOW on a stream of c. WINDOW returns -1 to close c. */
void stream_input(struct conn *c, struct stream *s, const struct kp_frame *f);
void stream_cancel(struct conn *c, struct stream *s, uint16_t ch);
int stream_window(struct conn *c, struct stream *s, const struct kp_frame *f);

/* ---- proc.c: processes, their output rings and exec streams ---- */

/* The stream kind of EXEC and ATTACH. */
extern const struct stream_ops exec_stream_ops;
/* The exit status fields of p (KT_CODE, KT_SIGNAL, KT_CORE, KT_OOM) into w. */
void put_exit(struct kp_recw *w, const struct proc *p);
/* Send p's attached stream what its credit allows: GAP, DATA, EOF, and EXIT at the end. */
void proc_flush(struct proc *p);
/* Forget p: its stream ends with ERROR DETACHED, its pipes and rings are freed. */
void proc_free(struct agent *a, struct proc *p);
/* Keep at most MAX_EXITED exited processes. */
void proc_evict(struct agent *a);
/* Bytes of output channel ch (1, 2) that may be read from the pipe now (0: do not poll it). */
size_t proc_out_room(struct agent *a, struct proc *p, int ch);
/* Read a chunk of channel ch into its ring and pass it on; write queued stdin. */
void proc_pump_out(struct agent *a, struct proc *p, int ch);
void proc_pump_in(struct proc *p);
/* The process with handle h, or NULL. */
struct proc *proc_by_handle(struct agent *a, uint64_t h);
/* Reap exited children (the SIGCHLD signalfd is readable). */
void proc_reap(struct agent *a);

/* ---- exec.c ---- */

/* Answer every WAIT on p: it has exited. */
void proc_wait_answer(struct agent *a, struct proc *p);

/* ---- dispatch.c: request arguments and the op table ---- */

/* A copy of the first STR field tag (malloc), or NULL; *bad set on a wrong kind. */
char *arg_str(const struct kp_frame *f, uint8_t tag, int *bad);
/* The U64 (or BOOL) field tag, or dflt when absent; *bad set on a wrong kind. */
uint64_t arg_u64(const struct kp_frame *f, uint8_t tag, uint64_t dflt, int *bad);
/* Every STR field tag into a NULL-terminated malloc'd vector; count in *n. */
char **arg_list(const struct kp_frame *f, uint8_t tag, size_t *n, int *bad);
/* Free a vector from arg_list (NULL is fine). */
void strv_free(char **v);
/* A frame from the host on c: -1 when c must close after flushing. */
int handle_frame(struct conn *c, const struct kp_frame *f);

/* A request as its handler gets it: the frame and the arguments checked for it. */
struct req {
	const struct kp_frame *f;
	uint64_t op;
	union {
		struct kp_open_args open;
		struct kp_fh_args fh;
		struct kp_walk_args walk;
	} args;
};

/* ---- the handlers of the op table (dispatch.c), by file ---- */

/*
 * Each serves one or more ops of docs/agent-protocol.md, "Operations", for
 * request r on c, and answers it: a RESPONSE (END, or a stream opened) or an
 * ERROR. They return nothing: a failure is the ERROR sent.
 */

void op_health(struct conn *c, const struct req *r);
void op_identity(struct conn *c, const struct req *r);
void op_shutdown(struct conn *c, const struct req *r);
void op_env(struct conn *c, const struct req *r);
void op_exec(struct conn *c, const struct req *r);
void op_attach(struct conn *c, const struct req *r);
void op_signal(struct conn *c, const struct req *r);
void op_resize(struct conn *c, const struct req *r);
void op_wait(struct conn *c, const struct req *r);
void op_release(struct conn *c, const struct req *r);
void op_proc_list(struct conn *c, const struct req *r);
void op_stat(struct conn *c, const struct req *r);
void op_readdir(struct conn *c, const struct req *r);
void op_mkdir(struct conn *c, const struct req *r);
void op_remove(struct conn *c, const struct req *r);
void op_rename(struct conn *c, const struct req *r);
void op_file_write(struct conn *c, const struct req *r);
void op_file_read(struct conn *c, const struct req *r);
void op_path_simple(struct conn *c, const struct req *r);
void op_path_query(struct conn *c, const struct req *r);
void op_umask(struct conn *c, const struct req *r);
void op_mktemp(struct conn *c, const struct req *r);
void op_copy(struct conn *c, const struct req *r);
void op_walk(struct conn *c, const struct req *r);
void op_fh_open(struct conn *c, const struct req *r);
void op_fh(struct conn *c, const struct req *r);
void op_port_connect(struct conn *c, const struct req *r);
void op_port_wait(struct conn *c, const struct req *r);
void op_port_list(struct conn *c, const struct req *r);

/* ---- file.c, fh.c, walk.c, control.c, port.c: what others use ---- */

/* The stat record of sx as the terminal RESPONSE of id (STAT, FH_STAT). */
void send_statx(struct conn *c, uint32_t id, const struct statx *sx);
/* ns since the epoch as a timespec. */
struct timespec ns_timespec(int64_t ns);
/* open(2) that cannot block the agent; -1 after sending the ERROR. */
int open_nonblock(struct conn *c, uint32_t id, const char *path, int flags, mode_t mode);
/* Close every file handle of c. */
void fh_close_all(struct conn *c);
/* The default environment, from environ; freed by env_free. */
int env_init(struct agent *a);
void env_free(struct agent *a);
/* Signal every process of the sandbox (host mode: those the agent started). */
void signal_all(struct agent *a, int sig);
/* Whether any process signal_all would reach is left. */
int any_left(struct agent *a);
/* a >= b. */
int ts_after(const struct timespec *a, const struct timespec *b);
/* A raw port connection: the connect finished; one relay step (-1: c was freed). */
void raw_connected(struct conn *c);
int raw_step(struct conn *c, int vsock_in, int tcp_in, int tcp_out);

#endif
