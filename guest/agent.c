/*
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

static struct rlimit child_nofile;	/* the limit the agent was started with */

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

static struct conn *conns;
static unsigned nconns;
static struct proc *procs;
static unsigned nlive, nexited;
static uint64_t exit_seq;
static uint64_t ring_total, ring_limit;
static uint64_t next_handle = 1;
static unsigned nports;
static unsigned nwalks;
static char **envs;		/* the default environment: malloc'd "KEY=VALUE" strings */
static size_t nenvs, env_bytes;
static char sandbox_id[SANDBOX_ID_MAX + 1];
static struct {
	int active;
	int reboot;
	struct timespec deadline;
} stopping;
static void (*agent_stop)(int reboot);
/*
 * Host mode (agent_main_unix): a test harness on a unix socket, not PID 1.
 * Nothing that belongs to the VM is touched: no port I/O, no clock or
 * hostname, and signals go only to the processes the agent started.
 */
static int host_mode;
static uint8_t scratch[KP_HDR_LEN + KP_MAX_CONTROL];

/* ---- send queue --------------------------------------------------------------- */

static int outq_put(struct outq *q, const void *p, size_t n)
{
	if (q->head && q->head + q->len + n > q->cap) {
		memmove(q->p, q->p + q->head, q->len);
		q->head = 0;
	}
	if (q->len + n > q->cap) {
		size_t cap = q->cap ? q->cap : 65536;
		uint8_t *np;

		while (cap < q->len + n)
			cap *= 2;
		np = realloc(q->p, cap);
		if (!np)
			return -ENOMEM;
		q->p = np;
		q->cap = cap;
	}
	memcpy(q->p + q->head + q->len, p, n);
	q->len += n;
	return 0;
}

static void conn_put(struct conn *c, const void *p, int n)
{
	if (n <= 0 || c->closing > 1)
		return;
	if (outq_put(&c->out, p, (size_t)n) < 0)
		c->closing = 1;
}

static void send_error(struct conn *c, uint32_t id, uint32_t code, int err_no, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
static void send_error(struct conn *c, uint32_t id, uint32_t code, int err_no, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	conn_put(c, scratch, kp_enc_error(scratch, sizeof(scratch), id, code, (uint32_t)err_no, msg));
}

static void rec_begin(struct kp_recw *w)
{
	kp_recw_init(w, scratch + KP_HDR_LEN, KP_MAX_CONTROL);
}

static void rec_send(struct conn *c, uint8_t type, uint8_t flags, uint32_t id, struct kp_recw *w)
{
	int n = kp_enc_rec_frame(scratch, sizeof(scratch), type, flags, id, w);

	if (n < 0)
		send_error(c, id, KP_ERR_INTERNAL, 0, "reply: %s", kp_strerror(n));
	else
		conn_put(c, scratch, n);
}

static void send_ok(struct conn *c, uint32_t id)
{
	struct kp_recw w;

	rec_begin(&w);
	rec_send(c, KP_RESPONSE, KP_F_END, id, &w);
}

static void send_data(struct conn *c, uint32_t id, uint16_t ch, uint64_t off, const uint8_t *p, uint32_t n)
{
	uint8_t hdr[KP_DATA_HDR_LEN];

	if (kp_enc_data_hdr(hdr, id, ch, off, n) < 0)
		return;
	conn_put(c, hdr, KP_DATA_HDR_LEN);
	conn_put(c, p, (int)n);
}

static uint32_t max_data(const struct conn *c)
{
	uint32_t m = c->peer_max - 8;

	return m < READ_CHUNK ? m : READ_CHUNK;
}

/* ---- streams and processes ------------------------------------------------------ */

static void fd_close(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}


static void walk_free(struct walk *wk);

static struct stream *stream_find(struct conn *c, uint32_t id)
{
	struct stream *s;

	for (s = c->streams; s; s = s->next)
		if (s->id == id)
			return s;
	return NULL;
}

static struct stream *stream_new(struct conn *c, enum stream_kind kind, uint32_t id)
{
	struct stream *s = calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	s->kind = kind;
	s->conn = c;
	s->id = id;
	s->fd = -1;
	s->fd2 = -1;
	s->in_credit = KP_DEFAULT_WINDOW;
	s->out_credit = c->peer_window;
	s->credit[1] = s->credit[2] = c->peer_window;
	s->next = c->streams;
	c->streams = s;
	c->nstreams++;
	return s;
}

/*
 * Forget stream s. An exec stream's process is detached, not stopped: its
 * output goes on into the rings and its stdin stays open for a later ATTACH;
 * stdin bytes queued but not yet written are dropped with the stream.
 */
static void stream_free(struct conn *c, struct stream *s)
{
	struct stream **pp;

	for (pp = &c->streams; *pp; pp = &(*pp)->next)
		if (*pp == s) {
			*pp = s->next;
			break;
		}
	c->nstreams--;
	if (s->kind == ST_EXEC && s->proc) {
		s->proc->st = NULL;
		s->proc->inlen = 0;
	}
	if (s->kind == ST_PORT)
		nports--;
	if (s->kind == ST_WALK)
		walk_free(s->walk);
	if (s->fd >= 0)
		close(s->fd);
	if (s->fd2 >= 0)
		close(s->fd2);
	free(s->inbuf);
	free(s);
}

static struct conn *stream_conn(const struct stream *s)
{
	struct conn *c;
	struct stream *t;

	for (c = conns; c; c = c->next)
		for (t = c->streams; t; t = t->next)
			if (t == s)
				return c;
	return NULL;
}

/* ---- output rings ---------------------------------------------------------------- */

static void ring_copy_in(struct ring *r, uint64_t off, const uint8_t *p, size_t n)
{
	size_t i = (size_t)(off % r->alloc), k = r->alloc - i < n ? r->alloc - i : n;

	memcpy(r->buf + i, p, k);
	memcpy(r->buf, p + k, n - k);
}

/* Copy n bytes at offset off (within [start, end)) out of the ring. */
static void ring_read(const struct ring *r, uint64_t off, uint8_t *p, size_t n)
{
	size_t i = (size_t)(off % r->alloc), k = r->alloc - i < n ? r->alloc - i : n;

	memcpy(p, r->buf + i, k);
	memcpy(p + k, r->buf, n - k);
}

/* Append n bytes, overwriting the oldest ones when the ring is full. */
static void ring_write(struct ring *r, const uint8_t *p, size_t n)
{
	if (n > r->alloc) {	/* only the last alloc bytes can be kept */
		r->end += n - r->alloc;
		p += n - r->alloc;
		n = r->alloc;
		r->start = r->end;
	}
	if (!n)
		return;
	if (r->end + n - r->start > r->alloc)
		r->start = r->end + n - r->alloc;
	ring_copy_in(r, r->end, p, n);
	r->end += n;
}


/*
 * Make room for need more ring bytes within ring_limit by dropping the rings
 * of exited processes whose output and exit were delivered, oldest first.
 */
static void ring_reclaim(uint64_t need)
{
	while (ring_total + need > ring_limit) {
		struct proc *p, *v = NULL;

		for (p = procs; p; p = p->next)
			if (p->exited && p->reported && !p->st && (p->ring[1].alloc || p->ring[2].alloc) &&
			    (!v || p->exit_seq < v->exit_seq))
				v = p;
		if (!v)
			return;
		for (int ch = 1; ch <= 2; ch++) {
			ring_total -= v->ring[ch].alloc;
			free(v->ring[ch].buf);
			v->ring[ch].buf = NULL;
			v->ring[ch].alloc = 0;
			v->ring[ch].start = v->ring[ch].end;
		}
	}
}

/*
 * Grow r toward cap so that it holds at least want bytes: doubling from
 * RING_FLOOR, within ring_limit for all rings together (a ring may always
 * reach RING_FLOOR). Returns 1 when it grew.
 */
static int ring_grow(struct ring *r, size_t cap, uint64_t want)
{
	size_t sz = r->alloc ? r->alloc : RING_FLOOR / 2;
	uint8_t *nb;
	struct ring old = *r;
	uint64_t off;

	if (r->alloc >= cap)
		return 0;
	do
		sz *= 2;
	while (sz < want && sz < cap);
	if (sz > cap)
		sz = cap;
	if (sz > RING_FLOOR && ring_total + sz - r->alloc > ring_limit)
		ring_reclaim(sz - r->alloc);
	if (sz > RING_FLOOR && ring_total + sz - r->alloc > ring_limit) {
		sz = r->alloc * 2;
		if (sz <= r->alloc || sz > cap || ring_total + sz - r->alloc > ring_limit)
			return 0;
	}
	nb = malloc(sz);
	if (!nb)
		return 0;
	r->buf = nb;
	r->alloc = sz;
	for (off = old.start; off < old.end; ) {
		uint8_t chunk[4096];
		size_t n = old.end - off < sizeof(chunk) ? (size_t)(old.end - off) : sizeof(chunk);

		ring_read(&old, off, chunk, n);
		ring_copy_in(r, off, chunk, n);
		off += n;
	}
	ring_total += sz - old.alloc;
	free(old.buf);
	return 1;
}

/*
 * How many bytes of channel ch may be read from the pipe now: in block mode
 * what fits without overwriting bytes no host consumed; in drop mode a chunk
 * (the ring overwrites its oldest bytes).
 */
static size_t proc_out_room(struct proc *p, int ch)
{
	struct ring *r = &p->ring[ch];
	uint64_t keep = p->keep[ch] > r->start ? p->keep[ch] : r->start, used = r->end - keep;

	if (p->drop) {
		if (r->end - r->start + READ_CHUNK > r->alloc)
			ring_grow(r, p->ring_cap, r->end - r->start + READ_CHUNK);
		return READ_CHUNK;
	}
	if (used >= r->alloc && !ring_grow(r, p->ring_cap, used + 1))
		return 0;
	return r->alloc - used < READ_CHUNK ? (size_t)(r->alloc - used) : READ_CHUNK;
}

/* ---- processes and their streams --------------------------------------------------- */

static void put_exit(struct kp_recw *w, const struct proc *p)
{
	kp_put_i64(w, KT_CODE, WIFEXITED(p->status) ? WEXITSTATUS(p->status) : -1);
	kp_put_u64(w, KT_SIGNAL, WIFSIGNALED(p->status) ? (uint64_t)WTERMSIG(p->status) : 0);
	kp_put_bool(w, KT_CORE, WIFSIGNALED(p->status) && WCOREDUMP(p->status));
	kp_put_bool(w, KT_OOM, 0);
}

/*
 * Send what the attached stream may have of p's output: GAP events where it
 * fell behind the ring, DATA within its credit, EOF on a finished channel,
 * and once the process is done the EXIT event, which ends the stream.
 */
static void proc_flush(struct proc *p)
{
	static uint8_t buf[READ_CHUNK];
	struct stream *s = p->st;
	struct conn *c;
	struct kp_recw w;
	int ch;

	if (!s)
		return;
	c = s->conn;
	for (ch = 1; ch <= 2; ch++) {
		struct ring *r = &p->ring[ch];

		while (!s->eof_sent[ch] && !s->cancelled[ch] && c->out.len < OUTQ_HIGH && !c->closing) {
			uint64_t avail;
			size_t n;

			if (s->sent[ch] < r->start) {
				rec_begin(&w);
				kp_put_u64(&w, KT_EVENT, KP_EV_GAP);
				kp_put_u64(&w, KT_CHANNEL, (uint64_t)ch);
				kp_put_u64(&w, KT_LOST_FROM, s->sent[ch]);
				kp_put_u64(&w, KT_LOST_TO, r->start);
				rec_send(c, KP_EVENT, 0, s->id, &w);
				s->sent[ch] = r->start;
				if (s->acked[ch] < r->start)
					s->acked[ch] = r->start;
			}
			avail = r->end - s->sent[ch];
			if (!avail) {
				if (p->fd[ch] < 0) {
					uint8_t e[KP_HDR_LEN + 8];

					conn_put(c, e, kp_enc_eof(e, s->id, (uint16_t)ch, 0, r->end));
					s->eof_sent[ch] = 1;
				}
				break;
			}
			n = max_data(c);
			if (n > avail)
				n = (size_t)avail;
			if (n > s->credit[ch])
				n = (size_t)s->credit[ch];
			if (!n)
				break;
			ring_read(r, s->sent[ch], buf, n);
			send_data(c, s->id, (uint16_t)ch, s->sent[ch], buf, (uint32_t)n);
			s->sent[ch] += n;
			s->credit[ch] -= n;
		}
	}
	if (!p->done || !(s->eof_sent[1] || s->cancelled[1]) || !(s->eof_sent[2] || s->cancelled[2]))
		return;
	rec_begin(&w);
	kp_put_u64(&w, KT_EVENT, KP_EV_EXIT);
	put_exit(&w, p);
	rec_send(c, KP_EVENT, KP_F_END, s->id, &w);
	p->reported = 1;
	stream_free(c, s);
}

static void proc_free(struct proc *p)
{
	struct proc **pp;
	int ch;

	for (pp = &procs; *pp; pp = &(*pp)->next)
		if (*pp == p) {
			*pp = p->next;
			break;
		}
	if (p->st) {
		send_error(p->st->conn, p->st->id, KP_ERR_DETACHED, 0, "process %llu was released",
			   (unsigned long long)p->handle);
		stream_free(p->st->conn, p->st);
	}
	fd_close(&p->fd[0]);
	fd_close(&p->fd[1]);
	fd_close(&p->fd[2]);
	for (ch = 1; ch <= 2; ch++) {
		ring_total -= p->ring[ch].alloc;
		free(p->ring[ch].buf);
	}
	if (p->exited)
		nexited--;
	else
		nlive--;
	free(p->inbuf);
	free(p->cmd);
	free(p);
}

/* Keep at most MAX_EXITED exited processes: forget the oldest, those already reported first. */
static void proc_evict(void)
{
	while (nexited > MAX_EXITED) {
		struct proc *p, *v = NULL;

		for (p = procs; p; p = p->next) {
			if (!p->exited || p->st)
				continue;
			if (!v || (p->reported > v->reported) ||
			    (p->reported == v->reported && p->exit_seq < v->exit_seq))
				v = p;
		}
		if (!v)
			return;
		proc_free(v);
	}
}

static void proc_check_done(struct proc *p)
{
	if (p->exited && p->fd[1] < 0 && p->fd[2] < 0)
		p->done = 1;
	proc_flush(p);
}

/* Read one chunk of channel ch (1 or 2) of p into its ring, then pass it on. */
static void proc_pump_out(struct proc *p, int ch)
{
	static uint8_t buf[READ_CHUNK];
	size_t want = proc_out_room(p, ch);
	ssize_t n;

	if (!want)
		return;
	n = read(p->fd[ch], buf, want);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {		/* a pty master reads EIO once the terminal's last user closed it */
		fd_close(&p->fd[ch]);
		proc_check_done(p);
		return;
	}
	ring_write(&p->ring[ch], buf, (size_t)n);
	proc_flush(p);
}

/* Write queued stdin; grant the written bytes back as credit. */
static void proc_pump_in(struct proc *p)
{
	struct conn *c = p->st ? p->st->conn : NULL;
	ssize_t n = 0;

	if (p->fd[0] >= 0 && p->inlen) {
		n = write(p->fd[0], p->inbuf, p->inlen);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		if (n < 0) {		/* EPIPE: the process closed stdin; drop the rest */
			n = (ssize_t)p->inlen;
			fd_close(&p->fd[0]);
		}
		memmove(p->inbuf, p->inbuf + n, p->inlen - (size_t)n);
		p->inlen -= (size_t)n;
	}
	if (n > 0 && c) {
		uint8_t f[KP_HDR_LEN + 4];

		p->st->in_credit += (uint64_t)n;
		conn_put(c, f, kp_enc_window(f, p->st->id, 0, (uint32_t)n));
	}
	if (p->in_eof && !p->inlen && p->fd[0] >= 0) {
		if (p->pty) {
			/* A terminal has no end of input: type its EOF character (^D) instead. */
			struct termios t;

			if (tcgetattr(p->fd[0], &t) == 0 && t.c_cc[VEOF])
				(void)!write(p->fd[0], &t.c_cc[VEOF], 1);
		}
		fd_close(&p->fd[0]);
	}
}

static struct proc *proc_by_handle(uint64_t h)
{
	struct proc *p;

	for (p = procs; p; p = p->next)
		if (p->handle == h)
			return p;
	return NULL;
}

/* Answer every WAIT on p: it has exited. */
static void wait_answer(struct proc *p)
{
	struct conn *c;
	struct stream *s, *sn;
	struct kp_recw w;

	for (c = conns; c; c = c->next)
		for (s = c->streams; s; s = sn) {
			sn = s->next;
			if (s->kind != ST_WAIT || s->proc != p)
				continue;
			rec_begin(&w);
			put_exit(&w, p);
			rec_send(c, KP_RESPONSE, KP_F_END, s->id, &w);
			stream_free(c, s);
		}
}

static void reap(int sfd)
{
	struct signalfd_siginfo si;
	struct proc *p;
	pid_t pid;
	int st;

	while (read(sfd, &si, sizeof(si)) == sizeof(si))
		;
	while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
		for (p = procs; p; p = p->next)
			if (p->pid == pid && !p->exited)
				break;
		if (!p)
			continue;	/* an orphan reparented to PID 1 */
		p->exited = 1;
		p->status = st;
		p->exit_seq = ++exit_seq;
		nlive--;
		nexited++;
		wait_answer(p);
		proc_check_done(p);
	}
	proc_evict();
}

/* ---- request arguments ----------------------------------------------------------- */

/* A copy of the first STR field tag, NUL-terminated (malloc), or NULL. */
static char *arg_str(const struct kp_frame *f, uint8_t tag, int *bad)
{
	struct kp_field fl;
	char *s;

	if (kp_rec_find(f->payload, f->len, tag, &fl) != 1)
		return NULL;
	if (fl.kind != KP_K_STR) {
		*bad = 1;
		return NULL;
	}
	s = malloc(fl.len + 1);
	if (s)
		kp_field_str(&fl, s, fl.len + 1);
	else
		*bad = 1;
	return s;
}

static uint64_t arg_u64(const struct kp_frame *f, uint8_t tag, uint64_t dflt, int *bad)
{
	struct kp_field fl;
	uint64_t v;
	int b;

	if (kp_rec_find(f->payload, f->len, tag, &fl) != 1)
		return dflt;
	if (fl.kind == KP_K_BOOL && kp_field_bool(&fl, &b) == 0)
		return (uint64_t)b;
	if (kp_field_u64(&fl, &v) == 0)
		return v;
	*bad = 1;
	return dflt;
}

/* Every STR field tag into a NULL-terminated malloc'd vector; count in *n. */
static char **arg_list(const struct kp_frame *f, uint8_t tag, size_t *n, int *bad)
{
	struct kp_rec r;
	struct kp_field fl;
	char **v;
	size_t k = 0;

	*n = 0;
	kp_rec_open(&r, f->payload, f->len);
	while (kp_rec_next(&r, &fl) == 1)
		if (fl.tag == tag)
			k++;
	if (k > MAX_ARGV) {
		*bad = 1;
		return NULL;
	}
	v = calloc(k + 1, sizeof(*v));
	if (!v) {
		*bad = 1;
		return NULL;
	}
	kp_rec_open(&r, f->payload, f->len);
	while (kp_rec_next(&r, &fl) == 1) {
		if (fl.tag != tag)
			continue;
		if (fl.kind != KP_K_STR || !(v[*n] = malloc(fl.len + 1))) {
			*bad = 1;
			break;
		}
		kp_field_str(&fl, v[*n], fl.len + 1);
		(*n)++;
	}
	return v;
}

static void strv_free(char **v)
{
	size_t i;

	for (i = 0; v && v[i]; i++)
		free(v[i]);
	free(v);
}

/* ---- processes -------------------------------------------------------------------- */

/* The child's environment: the default one, with extra KEY=VALUE entries on top. */
static char **build_env(char **extra, size_t nextra, int clear)
{
	size_t n = clear ? 0 : nenvs, i, j, k = 0;
	char **e;

	e = calloc(n + nextra + 1, sizeof(*e));
	if (!e)
		return NULL;
	for (i = 0; i < n; i++) {
		size_t kl = strcspn(envs[i], "=");

		for (j = 0; j < nextra; j++)
			if (strncmp(extra[j], envs[i], kl) == 0 && extra[j][kl] == '=')
				break;
		if (j == nextra)
			e[k++] = envs[i];
	}
	for (j = 0; j < nextra; j++)
		e[k++] = extra[j];
	return e;
}

/* argv (or the shell line) as NUL-separated strings for PROC_LIST, cut at CMD_MAX bytes. */
static char *cmd_copy(char **argv, size_t argc, const char *shell, size_t *len)
{
	const char *sh[] = { "/bin/sh", "-c", shell };
	char *b = malloc(CMD_MAX);
	size_t i, n = 0, k = shell ? 3 : argc;

	*len = 0;
	if (!b)
		return NULL;
	for (i = 0; i < k; i++) {
		const char *a = shell ? sh[i] : argv[i];
		size_t l = strlen(a) + 1;

		if (n + l > CMD_MAX)
			break;
		memcpy(b + n, a, l);
		n += l;
	}
	*len = n;
	return b;
}

/* A pseudo-terminal of rows x cols: the master (non-blocking) in *master, the terminal in *term. */
static int pty_open(unsigned rows, unsigned cols, int *master, int *term)
{
	struct winsize ws = { .ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols };
	char name[64];
	int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC), t, err;

	if (m < 0)
		return -errno;
	if (grantpt(m) < 0 || unlockpt(m) < 0 || ptsname_r(m, name, sizeof(name)) != 0)
		goto fail;
	t = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (t < 0)
		goto fail;
	if (ioctl(t, TIOCSWINSZ, &ws) < 0) {
		err = errno;
		close(t);
		close(m);
		return -err;
	}
	*master = m;
	*term = t;
	return 0;
fail:
	err = errno;
	close(m);
	return -err;
}

static void op_exec(struct conn *c, const struct kp_frame *f)
{
	int bad = 0, io_in, io_out, io_err, p_in[2] = { -1, -1 }, p_out[2] = { -1, -1 };
	int p_err[2] = { -1, -1 }, p_ex[2] = { -1, -1 }, child[3], nul = -1, ex[2] = { 0, 0 };
	int pty_m = -1, pty_t = -1, ret;
	size_t argc = 0, nenv = 0;
	char **argv = arg_list(f, KT_ARG, &argc, &bad), **envv = arg_list(f, KT_ENV, &nenv, &bad);
	char *shell = arg_str(f, KT_SHELL, &bad), *cwd = arg_str(f, KT_CWD, &bad), **envp = NULL;
	char *sh[] = { "/bin/sh", "-c", shell, NULL };
	uint64_t uid = arg_u64(f, KT_UID, 0, &bad), gid = arg_u64(f, KT_GID, 0, &bad);
	int clear = (int)arg_u64(f, KT_CLEAR_ENV, 0, &bad);
	int pty = (int)arg_u64(f, KT_PTY, 0, &bad);
	uint64_t rows = arg_u64(f, KT_ROWS, 24, &bad), cols = arg_u64(f, KT_COLS, 80, &bad);
	uint64_t ring = arg_u64(f, KT_RING, RING_DEFAULT, &bad), ovf = arg_u64(f, KT_OVERFLOW, KP_OVF_BLOCK, &bad);
	struct proc *p = NULL;
	struct stream *s;
	struct kp_recw w;
	sigset_t none;
	pid_t pid;
	ssize_t n;

	io_in = (int)arg_u64(f, KT_STDIN, KP_IO_NULL, &bad);
	io_out = (int)arg_u64(f, KT_STDOUT, KP_IO_PIPE, &bad);
	io_err = (int)arg_u64(f, KT_STDERR, KP_IO_PIPE, &bad);
	if (bad || (!shell && argc == 0) || io_in > KP_IO_PIPE || io_out > KP_IO_PIPE ||
	    io_err > KP_IO_MERGE || uid > 0xffffffffu || gid > 0xffffffffu) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "exec: wants ARG* or SHELL; STDIN/STDOUT NULL or PIPE, STDERR NULL, PIPE or MERGE");
		goto out;
	}
	if (ring < RING_MIN || ring > RING_MAX || ovf > KP_OVF_DROP) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "exec: RING must be %u to %u bytes, OVERFLOW BLOCK (0) or DROP (1)",
			   RING_MIN, RING_MAX);
		goto out;
	}
	if (pty && (rows < 1 || rows > 65535 || cols < 1 || cols > 65535)) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "exec: ROWS and COLS must be 1 to 65535");
		goto out;
	}
	proc_evict();		/* those a closed connection detached since the last exit */
	if (nlive >= MAX_PROCS) {
		send_error(c, f->id, KP_ERR_LIMIT, 0, "exec: %d processes already (SIGNAL some, or wait for them)",
			   MAX_PROCS);
		goto out;
	}
	if (nlive + nexited >= MAX_PROC_OBJS) {
		send_error(c, f->id, KP_ERR_LIMIT, 0, "exec: %d processes held already (%u exited, their pipes "
			   "still open or kept for WAIT): end their streams (CANCEL) or RELEASE some",
			   MAX_PROC_OBJS, nexited);
		goto out;
	}
	if (stopping.active) {
		send_error(c, f->id, KP_ERR_OS, ESHUTDOWN, "exec: the sandbox is shutting down");
		goto out;
	}
	envp = build_env(envv, nenv, clear);
	p = calloc(1, sizeof(*p));
	nul = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (!envp || !p || nul < 0 || pipe2(p_ex, O_CLOEXEC) < 0 ||
	    (!pty && io_in == KP_IO_PIPE && pipe2(p_in, O_CLOEXEC) < 0) ||
	    (!pty && io_out == KP_IO_PIPE && pipe2(p_out, O_CLOEXEC) < 0) ||
	    (!pty && io_err == KP_IO_PIPE && pipe2(p_err, O_CLOEXEC) < 0)) {
		send_error(c, f->id, KP_ERR_OS, errno, "exec: %s", strerror(errno));
		goto out;
	}
	if (pty) {
		ret = pty_open((unsigned)rows, (unsigned)cols, &pty_m, &pty_t);
		if (ret == 0 && (p_in[1] = fcntl(pty_m, F_DUPFD_CLOEXEC, 3)) < 0)
			ret = -errno;
		if (ret < 0) {
			send_error(c, f->id, KP_ERR_OS, -ret, "exec: pseudo-terminal: %s", strerror(-ret));
			goto out;
		}
		p_out[0] = pty_m;
		pty_m = -1;
		child[0] = child[1] = child[2] = pty_t;
	} else {
		child[0] = io_in == KP_IO_PIPE ? p_in[0] : nul;
		child[1] = io_out == KP_IO_PIPE ? p_out[1] : nul;
		child[2] = io_err == KP_IO_PIPE ? p_err[1] : io_err == KP_IO_MERGE ? child[1] : nul;
	}
	pid = fork();
	if (pid < 0) {
		send_error(c, f->id, KP_ERR_OS, errno, "exec: fork: %s", strerror(errno));
		goto out;
	}
	if (pid == 0) {
		int i, fds[3];

		/* dup first: a later dup2 must not overwrite a source still needed. */
		for (i = 0; i < 3; i++)
			fds[i] = fcntl(child[i], F_DUPFD_CLOEXEC, 3);
		for (i = 0; i < 3; i++)
			dup2(fds[i], i);
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		if (child_nofile.rlim_max)
			(void)setrlimit(RLIMIT_NOFILE, &child_nofile);
		setsid();
		/* The terminal becomes the new session's controlling tty: job control, SIGWINCH. */
		if (pty)
			ioctl(0, TIOCSCTTY, 0);
		ex[0] = 1;
		if (cwd && chdir(cwd) < 0)
			goto child_fail;
		ex[0] = 2;
		if ((gid && setgid((gid_t)gid) < 0) || (uid && setuid((uid_t)uid) < 0))
			goto child_fail;
		ex[0] = 3;
		if (shell)
			execve(sh[0], sh, envp);
		else
			execvpe(argv[0], argv, envp);
child_fail:
		ex[1] = errno;
		(void)!write(p_ex[1], ex, sizeof(ex));
		_exit(127);
	}
	close(p_ex[1]);
	p_ex[1] = -1;
	do
		n = read(p_ex[0], ex, sizeof(ex));
	while (n < 0 && errno == EINTR);
	if (n == sizeof(ex)) {
		/* The child is reaped by the SIGCHLD handler as an unknown pid. */
		send_error(c, f->id, KP_ERR_OS, ex[1], "exec: %s: %s",
			   ex[0] == 1 ? cwd : ex[0] == 2 ? "setuid/setgid" : shell ? sh[0] : argv[0],
			   strerror(ex[1]));
		goto out;
	}
	s = stream_new(c, ST_EXEC, f->id);
	if (!s) {
		kill(pid, SIGKILL);
		send_error(c, f->id, KP_ERR_OS, ENOMEM, "exec: out of memory");
		goto out;
	}
	p->pid = pid;
	p->handle = next_handle++;
	p->pty = pty;
	p->drop = ovf == KP_OVF_DROP;
	p->ring_cap = (size_t)ring;
	p->cmd = cmd_copy(argv, argc, shell, &p->cmdlen);
	p->fd[0] = p_in[1];
	p->fd[1] = p_out[0];
	p->fd[2] = p_err[0];
	p_in[1] = p_out[0] = p_err[0] = -1;
	for (int i = 0; i < 3; i++)
		if (p->fd[i] >= 0)
			fcntl(p->fd[i], F_SETFL, O_NONBLOCK);
	p->st = s;
	s->proc = p;
	if (p->fd[0] < 0)
		s->in_credit = 0;
	p->next = procs;
	procs = p;
	nlive++;
	rec_begin(&w);
	kp_put_u64(&w, KT_HANDLE, p->handle);
	kp_put_u64(&w, KT_PID, (uint64_t)pid);
	rec_send(c, KP_RESPONSE, 0, f->id, &w);
	proc_flush(p);		/* channels the process does not have end at once */
	p = NULL;
out:
	fd_close(&p_in[0]);
	fd_close(&p_in[1]);
	fd_close(&p_out[0]);
	fd_close(&p_out[1]);
	fd_close(&p_err[0]);
	fd_close(&p_err[1]);
	fd_close(&p_ex[0]);
	fd_close(&p_ex[1]);
	fd_close(&pty_m);
	fd_close(&pty_t);
	fd_close(&nul);
	free(p);
	free(envp);
	strv_free(argv);
	strv_free(envv);
	free(shell);
	free(cwd);
}

static struct proc *proc_arg(struct conn *c, const struct kp_frame *f, const char *op, int *bad)
{
	uint64_t h = arg_u64(f, KT_HANDLE, 0, bad);
	struct proc *p;

	if (*bad || !h) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "%s: wants HANDLE (U64)", op);
		return NULL;
	}
	p = proc_by_handle(h);
	if (!p)
		send_error(c, f->id, KP_ERR_NO_SUCH, 0, "%s: no process with handle %llu (see PROC_LIST)", op,
			   (unsigned long long)h);
	return p;
}

/*
 * ATTACH: take over the output of a process from the given offsets (absent:
 * the oldest byte the ring holds), and optionally its stdin. A stream already
 * attached ends with ERROR DETACHED.
 */
static void op_attach(struct conn *c, const struct kp_frame *f)
{
	int bad = 0, ch;
	struct proc *p = proc_arg(c, f, "attach", &bad);
	uint64_t off[3] = { 0, arg_u64(f, KT_OUT_OFFSET, UINT64_MAX, &bad), arg_u64(f, KT_ERR_OFFSET, UINT64_MAX, &bad) };
	uint64_t io_in = arg_u64(f, KT_STDIN, KP_IO_NULL, &bad);
	struct stream *s;
	struct kp_recw w;

	if (!p)
		return;
	if (bad || io_in > KP_IO_PIPE) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "attach: OUT_OFFSET and ERR_OFFSET U64, STDIN NULL or PIPE");
		return;
	}
	for (ch = 1; ch <= 2; ch++)
		if (off[ch] != UINT64_MAX && off[ch] > p->ring[ch].end) {
			send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "attach: %s offset %llu is beyond the %llu bytes written",
				   ch == 1 ? "stdout" : "stderr", (unsigned long long)off[ch],
				   (unsigned long long)p->ring[ch].end);
			return;
		}
	if (io_in == KP_IO_PIPE && (p->fd[0] < 0 || p->in_eof)) {
		send_error(c, f->id, KP_ERR_OS, EPIPE, "attach: the stdin of process %llu is closed",
			   (unsigned long long)p->handle);
		return;
	}
	s = stream_new(c, ST_EXEC, f->id);
	if (!s) {
		send_error(c, f->id, KP_ERR_OS, ENOMEM, "attach: out of memory");
		return;
	}
	if (p->st) {
		struct stream *old = p->st;

		send_error(old->conn, old->id, KP_ERR_DETACHED, 0, "process %llu: another ATTACH took over",
			   (unsigned long long)p->handle);
		stream_free(old->conn, old);
	}
	p->st = s;
	s->proc = p;
	s->in_credit = io_in == KP_IO_PIPE ? KP_DEFAULT_WINDOW : 0;
	for (ch = 1; ch <= 2; ch++) {
		s->sent[ch] = s->acked[ch] = off[ch] == UINT64_MAX ? p->ring[ch].start : off[ch];
		/* The host says it has what lies below its offset: block mode may overwrite it. */
		if (off[ch] != UINT64_MAX && off[ch] > p->keep[ch])
			p->keep[ch] = off[ch];
	}
	rec_begin(&w);
	kp_put_u64(&w, KT_HANDLE, p->handle);
	kp_put_u64(&w, KT_PID, (uint64_t)p->pid);
	kp_put_u64(&w, KT_OUT_OFFSET, p->ring[1].end);
	kp_put_u64(&w, KT_ERR_OFFSET, p->ring[2].end);
	kp_put_bool(&w, KT_PTY, p->pty);
	rec_send(c, KP_RESPONSE, 0, f->id, &w);
	proc_flush(p);
}

static void op_wait(struct conn *c, const struct kp_frame *f)
{
	int bad = 0;
	struct proc *p = proc_arg(c, f, "wait", &bad);
	struct stream *s;
	struct kp_recw w;

	if (!p)
		return;
	if (p->exited) {
		rec_begin(&w);
		put_exit(&w, p);
		rec_send(c, KP_RESPONSE, KP_F_END, f->id, &w);
		return;
	}
	s = stream_new(c, ST_WAIT, f->id);
	if (!s) {
		send_error(c, f->id, KP_ERR_OS, ENOMEM, "wait: out of memory");
		return;
	}
	s->proc = p;
	s->in_credit = 0;
}

static void op_release(struct conn *c, const struct kp_frame *f)
{
	int bad = 0;
	struct proc *p = proc_arg(c, f, "release", &bad);

	if (!p)
		return;
	if (!p->exited) {
		send_error(c, f->id, KP_ERR_OS, EBUSY, "release: process %llu is still running (SIGNAL it, then WAIT)",
			   (unsigned long long)p->handle);
		return;
	}
	proc_free(p);
	send_ok(c, f->id);
}

static void op_proc_list(struct conn *c, const struct kp_frame *f)
{
	struct kp_recw w;
	struct proc *p;

	rec_begin(&w);
	for (p = procs; p; p = p->next) {
		uint32_t mark;
		size_t i;

		if (w.len > KP_MAX_CONTROL - CMD_MAX - 1024) {	/* a batch is full */
			rec_send(c, KP_RESPONSE, 0, f->id, &w);
			rec_begin(&w);
		}
		mark = kp_nest_begin(&w, KT_ENTRY);
		kp_put_u64(&w, KT_HANDLE, p->handle);
		kp_put_u64(&w, KT_PID, (uint64_t)p->pid);
		for (i = 0; i < p->cmdlen; i += strlen(p->cmd + i) + 1)
			kp_put_str(&w, KT_ARG, p->cmd + i);
		kp_put_u64(&w, KT_OUT_OFFSET, p->ring[1].end);
		kp_put_u64(&w, KT_ERR_OFFSET, p->ring[2].end);
		kp_put_bool(&w, KT_PTY, p->pty);
		if (p->exited)
			put_exit(&w, p);
		kp_nest_end(&w, mark);
	}
	rec_send(c, KP_RESPONSE, KP_F_END, f->id, &w);
}

static void op_resize(struct conn *c, const struct kp_frame *f)
{
	int bad = 0;
	struct proc *p = proc_arg(c, f, "resize", &bad);
	uint64_t rows = arg_u64(f, KT_ROWS, 0, &bad), cols = arg_u64(f, KT_COLS, 0, &bad);
	struct winsize ws = { .ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols };
	int fd;

	if (!p)
		return;
	if (bad || rows < 1 || rows > 65535 || cols < 1 || cols > 65535) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "resize: wants ROWS and COLS, 1 to 65535");
		return;
	}
	fd = p->fd[1] >= 0 ? p->fd[1] : p->fd[0];
	if (!p->pty || fd < 0) {
		send_error(c, f->id, KP_ERR_OS, ENOTTY, "resize: process %llu has %s", (unsigned long long)p->handle,
			   p->pty ? "closed its terminal" : "no terminal (exec it with PTY)");
		return;
	}
	/* The kernel sends SIGWINCH to the terminal's foreground process group. */
	if (ioctl(fd, TIOCSWINSZ, &ws) < 0)
		send_error(c, f->id, KP_ERR_OS, errno, "resize: %s", strerror(errno));
	else
		send_ok(c, f->id);
}

static void op_signal(struct conn *c, const struct kp_frame *f)
{
	int bad = 0;
	uint64_t h = arg_u64(f, KT_HANDLE, 0, &bad), sig = arg_u64(f, KT_SIGNAL, SIGTERM, &bad);
	int group = (int)arg_u64(f, KT_GROUP, 0, &bad);
	struct proc *p = proc_by_handle(h);

	if (bad || sig > 64) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "signal: wants HANDLE and SIGNAL (0-64)");
		return;
	}
	if (!p) {
		send_error(c, f->id, KP_ERR_NO_SUCH, 0, "signal: no process with handle %llu",
			   (unsigned long long)h);
		return;
	}
	if (!p->exited && kill(group ? -p->pid : p->pid, (int)sig) < 0) {
		send_error(c, f->id, KP_ERR_OS, errno, "signal: %s", strerror(errno));
		return;
	}
	send_ok(c, f->id);
}

static void op_health(struct conn *c, const struct kp_frame *f)
{
	struct timespec ts;
	struct kp_recw w;

	clock_gettime(CLOCK_BOOTTIME, &ts);
	rec_begin(&w);
	kp_put_u64(&w, KT_UPTIME_NS, (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec);
	kp_put_u64(&w, KT_PROCS, nlive);
	rec_send(c, KP_RESPONSE, KP_F_END, f->id, &w);
}

/* ---- files ------------------------------------------------------------------------ */

static void os_error(struct conn *c, uint32_t id, const char *op, const char *path, int err)
{
	send_error(c, id, KP_ERR_OS, err, "%s %s: %s", op, path ? path : "", strerror(err));
}

static int64_t ts_ns(const struct statx_timestamp *t)
{
	return (int64_t)t->tv_sec * 1000000000 + t->tv_nsec;
}

/* ns since the epoch as a timespec; before the epoch: a negative second, a positive fraction. */
static struct timespec ns_timespec(int64_t ns)
{
	struct timespec ts = { .tv_sec = ns / 1000000000, .tv_nsec = ns % 1000000000 };

	if (ts.tv_nsec < 0) {
		ts.tv_sec--;
		ts.tv_nsec += 1000000000;
	}
	return ts;
}

/* The stat record (STAT, FH_STAT) of sx, as the terminal RESPONSE of id. */
static void send_statx(struct conn *c, uint32_t id, const struct statx *sx)
{
	struct kp_recw w;

	rec_begin(&w);
	kp_put_u64(&w, KT_TYPE, sx->stx_mode & S_IFMT);
	kp_put_u64(&w, KT_MODE, sx->stx_mode & 07777);
	kp_put_u64(&w, KT_SIZE, sx->stx_size);
	kp_put_u64(&w, KT_DEV, makedev(sx->stx_dev_major, sx->stx_dev_minor));
	kp_put_u64(&w, KT_INO, sx->stx_ino);
	kp_put_u64(&w, KT_NLINK, sx->stx_nlink);
	kp_put_u64(&w, KT_UID, sx->stx_uid);
	kp_put_u64(&w, KT_GID, sx->stx_gid);
	kp_put_u64(&w, KT_RDEV, makedev(sx->stx_rdev_major, sx->stx_rdev_minor));
	kp_put_u64(&w, KT_BLKSIZE, sx->stx_blksize);
	kp_put_u64(&w, KT_BLOCKS, sx->stx_blocks);
	kp_put_i64(&w, KT_ATIME, ts_ns(&sx->stx_atime));
	kp_put_i64(&w, KT_MTIME, ts_ns(&sx->stx_mtime));
	kp_put_i64(&w, KT_CTIME, ts_ns(&sx->stx_ctime));
	if (sx->stx_mask & STATX_BTIME)
		kp_put_i64(&w, KT_BTIME, ts_ns(&sx->stx_btime));
	rec_send(c, KP_RESPONSE, KP_F_END, id, &w);
}

static void op_stat(struct conn *c, const struct kp_frame *f)
{
	int bad = 0;
	char *path = arg_str(f, KT_PATH, &bad);
	int nofollow = (int)arg_u64(f, KT_NOFOLLOW, 0, &bad);
	struct statx sx;

	if (bad || !path)
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "stat: wants PATH");
	else if (statx(AT_FDCWD, path, nofollow ? AT_SYMLINK_NOFOLLOW : 0,
		       STATX_BASIC_STATS | STATX_BTIME, &sx) < 0)
		os_error(c, f->id, "stat", path, errno);
	else
		send_statx(c, f->id, &sx);
	free(path);
}

static void op_readdir(struct conn *c, const struct kp_frame *f)
{
	int bad = 0;
	char *path = arg_str(f, KT_PATH, &bad);
	struct dirent *de;
	struct kp_recw w;
	DIR *d;

	if (bad || !path) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "readdir: wants PATH");
		goto out;
	}
	d = opendir(path);
	if (!d) {
		os_error(c, f->id, "readdir", path, errno);
		goto out;
	}
	rec_begin(&w);
	while ((de = readdir(d)) != NULL) {
		unsigned type = DTTOIF(de->d_type);
		uint32_t mark;

		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (de->d_type == DT_UNKNOWN) {
			struct stat st;

			type = fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 ?
			       (st.st_mode & S_IFMT) : 0;
		}
		if (w.len > KP_MAX_CONTROL - 1024) {	/* a batch is full */
			rec_send(c, KP_RESPONSE, 0, f->id, &w);
			rec_begin(&w);
		}
		mark = kp_nest_begin(&w, KT_ENTRY);
		kp_put_str(&w, KT_NAME, de->d_name);
		kp_put_u64(&w, KT_TYPE, type);
		kp_nest_end(&w, mark);
	}
	closedir(d);
	rec_send(c, KP_RESPONSE, KP_F_END, f->id, &w);
out:
	free(path);
}

/* mkdir -p: every missing component of path. */
static int mkdir_p(char *path, mode_t mode)
{
	char *p = path;
	struct stat st;

	for (;;) {
		p += strspn(p, "/");
		p += strcspn(p, "/");
		if (!*p)
			break;
		*p = '\0';
		if (mkdir(path, mode) < 0 && errno != EEXIST) {
			*p = '/';
			return -errno;
		}
		*p = '/';
	}
	if (mkdir(path, mode) < 0) {
		if (errno != EEXIST)
			return -errno;
		if (stat(path, &st) < 0 || !S_ISDIR(st.st_mode))
			return -EEXIST;
	}
	return 0;
}

static void op_mkdir(struct conn *c, const struct kp_frame *f)
{
	int bad = 0, ret;
	char *path = arg_str(f, KT_PATH, &bad);
	mode_t mode = (mode_t)arg_u64(f, KT_MODE, 0777, &bad) & 07777;
	int rec = (int)arg_u64(f, KT_RECURSIVE, 0, &bad);

	if (bad || !path)
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "mkdir: wants PATH");
	else if ((ret = rec ? mkdir_p(path, mode) : mkdir(path, mode) < 0 ? -errno : 0) < 0)
		os_error(c, f->id, "mkdir", path, -ret);
	else
		send_ok(c, f->id);
	free(path);
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	return (flag == FTW_DP ? rmdir(path) : unlink(path)) < 0 ? errno : 0;
}

static void op_remove(struct conn *c, const struct kp_frame *f)
{
	int bad = 0, ret = 0;
	char *path = arg_str(f, KT_PATH, &bad);
	int rec = (int)arg_u64(f, KT_RECURSIVE, 0, &bad);
	struct stat st;

	if (bad || !path) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "remove: wants PATH");
		goto out;
	}
	if (lstat(path, &st) < 0)
		ret = errno;
	else if (rec && S_ISDIR(st.st_mode))
		ret = nftw(path, rm_one, 32, FTW_DEPTH | FTW_PHYS) < 0 ? errno : 0;
	else if (remove(path) < 0)
		ret = errno;
	/* nftw returns rm_one's errno as is */
	if (ret > 0)
		os_error(c, f->id, "remove", path, ret);
	else
		send_ok(c, f->id);
out:
	free(path);
}

static void op_rename(struct conn *c, const struct kp_frame *f)
{
	int bad = 0;
	char *from = arg_str(f, KT_PATH, &bad), *to = arg_str(f, KT_PATH2, &bad);

	if (bad || !from || !to)
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "rename: wants PATH and PATH2");
	else if (rename(from, to) < 0)
		os_error(c, f->id, "rename", from, errno);
	else
		send_ok(c, f->id);
	free(from);
	free(to);
}

/* CHMOD, CHOWN, LINK, SYMLINK, TRUNCATE, UTIME: one system call on one or two paths. */
static void op_path_simple(struct conn *c, const struct kp_frame *f, uint64_t op)
{
	int bad = 0, ret = 0, has_mode, has_len;
	char *path = arg_str(f, KT_PATH, &bad), *path2 = arg_str(f, KT_PATH2, &bad);
	uint64_t mode = arg_u64(f, KT_MODE, UINT64_MAX, &bad), len = arg_u64(f, KT_LENGTH, 0, &bad);
	uint64_t uid = arg_u64(f, KT_UID, UINT64_MAX, &bad), gid = arg_u64(f, KT_GID, UINT64_MAX, &bad);
	struct kp_field fl;
	int64_t at = 0, mt = 0;
	const char *name = op == KP_OP_CHMOD ? "chmod" : op == KP_OP_CHOWN ? "chown" : op == KP_OP_LINK ? "link" :
			   op == KP_OP_SYMLINK ? "symlink" : op == KP_OP_TRUNCATE ? "truncate" : "utime";

	has_mode = mode != UINT64_MAX;
	has_len = len <= (uint64_t)INT64_MAX;
	if (op == KP_OP_UTIME) {
		if (kp_rec_find(f->payload, f->len, KT_ATIME, &fl) != 1 || kp_field_i64(&fl, &at) ||
		    kp_rec_find(f->payload, f->len, KT_MTIME, &fl) != 1 || kp_field_i64(&fl, &mt))
			bad = 1;
	}
	if (bad || !path || ((op == KP_OP_LINK || op == KP_OP_SYMLINK) && !path2) ||
	    (op == KP_OP_CHMOD && (!has_mode || mode > 07777)) || (op == KP_OP_TRUNCATE && !has_len) ||
	    (op == KP_OP_CHOWN && ((uid != UINT64_MAX && uid >= 0xffffffffu) || (gid != UINT64_MAX && gid >= 0xffffffffu)))) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "%s: wants PATH%s", name,
			   op == KP_OP_CHMOD ? " and MODE (at most 07777)" :
			   op == KP_OP_CHOWN ? ", UID? and GID? (below 2^32 - 1)" :
			   op == KP_OP_LINK || op == KP_OP_SYMLINK ? " (the target) and PATH2 (the new name)" :
			   op == KP_OP_TRUNCATE ? " and LENGTH? (below 2^63)" : ", ATIME and MTIME (I64 ns)");
		goto out;
	}
	switch (op) {
	case KP_OP_CHMOD:	ret = chmod(path, (mode_t)mode); break;
	case KP_OP_CHOWN:	ret = chown(path, (uid_t)uid, (gid_t)gid); break;	/* -1: unchanged */
	case KP_OP_LINK:	ret = link(path, path2); break;
	case KP_OP_SYMLINK:	ret = symlink(path, path2); break;
	case KP_OP_TRUNCATE:	ret = truncate(path, (off_t)len); break;
	case KP_OP_UTIME: {
		struct timespec ts[2] = { ns_timespec(at), ns_timespec(mt) };

		ret = utimensat(AT_FDCWD, path, ts, 0);
		break;
	}
	}
	if (ret < 0)
		os_error(c, f->id, name, path, errno);
	else
		send_ok(c, f->id);
out:
	free(path);
	free(path2);
}

/* READLINK, REALPATH: a path in, a path out. */
static void op_path_query(struct conn *c, const struct kp_frame *f, uint64_t op)
{
	int bad = 0;
	char *path = arg_str(f, KT_PATH, &bad), *res = NULL;
	const char *name = op == KP_OP_READLINK ? "readlink" : "realpath";
	struct kp_recw w;
	ssize_t n;

	if (bad || !path) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "%s: wants PATH", name);
		goto out;
	}
	res = malloc(PATH_MAX + 1);
	if (!res) {
		send_error(c, f->id, KP_ERR_OS, ENOMEM, "%s: out of memory", name);
		goto out;
	}
	if (op == KP_OP_READLINK) {
		n = readlink(path, res, PATH_MAX);
		if (n >= 0)
			res[n] = '\0';
	} else {
		n = realpath(path, res) ? 0 : -1;
	}
	if (n < 0) {
		os_error(c, f->id, name, path, errno);
		goto out;
	}
	rec_begin(&w);
	kp_put_str(&w, KT_PATH, res);
	rec_send(c, KP_RESPONSE, KP_F_END, f->id, &w);
out:
	free(path);
	free(res);
}

static void op_umask(struct conn *c, const struct kp_frame *f)
{
	int bad = 0;
	uint64_t mode = arg_u64(f, KT_MODE, UINT64_MAX, &bad);
	struct kp_recw w;
	mode_t old;

	if (bad || (mode != UINT64_MAX && mode > 0777)) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "umask: MODE? at most 0777");
		return;
	}
	/* The agent's umask is what its processes and file operations inherit. */
	old = umask(mode == UINT64_MAX ? 022 : (mode_t)mode);
	if (mode == UINT64_MAX)
		umask(old);
	rec_begin(&w);
	kp_put_u64(&w, KT_MODE, old);
	rec_send(c, KP_RESPONSE, KP_F_END, f->id, &w);
}

/* A name component for MKTEMP: no '/', not too long. */
static int tmp_part_ok(const char *s)
{
	return !s || (strlen(s) <= 64 && !strchr(s, '/'));
}

static void op_mktemp(struct conn *c, const struct kp_frame *f)
{
	int bad = 0, fd;
	char *dir = arg_str(f, KT_PATH, &bad), *pre = arg_str(f, KT_PREFIX, &bad), *suf = arg_str(f, KT_SUFFIX, &bad);
	int is_dir = (int)arg_u64(f, KT_DIRECTORY, 0, &bad);
	char path[PATH_MAX];
	struct kp_recw w;
	size_t sl = suf ? strlen(suf) : 0;

	if (bad || !tmp_part_ok(pre) || !tmp_part_ok(suf)) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "mktemp: PATH? (a directory), PREFIX? and SUFFIX? "
			   "(at most 64 bytes, no '/'), DIRECTORY BOOL?");
		goto out;
	}
	if ((size_t)snprintf(path, sizeof(path), "%s/%sXXXXXX%s", dir ? dir : "/tmp", pre ? pre : "tmp",
			     suf ? suf : "") >= sizeof(path)) {
		send_error(c, f->id, KP_ERR_OS, ENAMETOOLONG, "mktemp: %s: %s", dir, strerror(ENAMETOOLONG));
		goto out;
	}
	if (is_dir) {
		if (sl) {	/* mkdtemp takes no suffix: the template must end in XXXXXX */
			send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "mktemp: SUFFIX is for files only");
			goto out;
		}
		if (!mkdtemp(path)) {
			os_error(c, f->id, "mktemp", dir ? dir : "/tmp", errno);
			goto out;
		}
	} else {
		fd = mkostemps(path, (int)sl, O_CLOEXEC);
		if (fd < 0) {
			os_error(c, f->id, "mktemp", dir ? dir : "/tmp", errno);
			goto out;
		}
		close(fd);
	}
	rec_begin(&w);
	kp_put_str(&w, KT_PATH, path);
	rec_send(c, KP_RESPONSE, KP_F_END, f->id, &w);
out:
	free(dir);
	free(pre);
	free(suf);
}

/*
 * open(2) that cannot block the agent: a FIFO or socket is refused (its
 * reads and writes would stall PID 1); other non-regular files stay
 * non-blocking, so a terminal that has nothing to read is an error, not a hang.
 * Returns the fd, or -1 after sending the ERROR.
 */
static int open_nonblock(struct conn *c, uint32_t id, const char *path, int flags, mode_t mode)
{
	int fd = open(path, flags | O_NONBLOCK, mode);
	struct stat st;

	if (fd < 0 || fstat(fd, &st) < 0) {
		os_error(c, id, "open", path, errno);
		if (fd >= 0)
			close(fd);
		return -1;
	}
	if (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode)) {
		send_error(c, id, KP_ERR_OS, EINVAL, "open %s: a FIFO or socket cannot be streamed", path);
		close(fd);
		return -1;
	}
	if (S_ISREG(st.st_mode))
		fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
	return fd;
}

static void op_file_write(struct conn *c, const struct kp_frame *f)
{
	int bad = 0, flags = O_WRONLY | O_CLOEXEC, fd;
	char *path = arg_str(f, KT_PATH, &bad);
	mode_t mode = (mode_t)arg_u64(f, KT_MODE, 0644, &bad) & 07777;
	uint64_t off = arg_u64(f, KT_OFFSET, UINT64_MAX, &bad);
	struct kp_recw w;
	struct stream *s;

	if (arg_u64(f, KT_APPEND, 0, &bad))
		flags |= O_APPEND;
	if (arg_u64(f, KT_CREATE, 1, &bad))
		flags |= O_CREAT;
	if (arg_u64(f, KT_CREATE_NEW, 0, &bad))
		flags |= O_CREAT | O_EXCL;
	if (arg_u64(f, KT_TRUNCATE, !(flags & O_APPEND) && off == UINT64_MAX, &bad))
		flags |= O_TRUNC;
	if (bad || !path) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "file write: wants PATH");
		goto out;
	}
	fd = open_nonblock(c, f->id, path, flags, mode);
	if (fd < 0)
		goto out;
	if (off != UINT64_MAX && lseek(fd, (off_t)off, SEEK_SET) < 0) {
		os_error(c, f->id, "seek", path, errno);
		close(fd);
		goto out;
	}
	s = stream_new(c, ST_FWRITE, f->id);
	if (!s) {
		close(fd);
		send_error(c, f->id, KP_ERR_OS, ENOMEM, "file write: out of memory");
		goto out;
	}
	s->fd = fd;
	rec_begin(&w);
	rec_send(c, KP_RESPONSE, 0, f->id, &w);
out:
	free(path);
}

static void op_file_read(struct conn *c, const struct kp_frame *f)
{
	int bad = 0, fd;
	char *path = arg_str(f, KT_PATH, &bad);
	uint64_t off = arg_u64(f, KT_OFFSET, 0, &bad), len = arg_u64(f, KT_LENGTH, UINT64_MAX, &bad);
	struct kp_recw w;
	struct stream *s;
	struct stat st;

	if (bad || !path) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "file read: wants PATH");
		goto out;
	}
	fd = open_nonblock(c, f->id, path, O_RDONLY | O_CLOEXEC, 0);
	if (fd < 0)
		goto out;
	if (fstat(fd, &st) < 0 || (off && lseek(fd, (off_t)off, SEEK_SET) < 0)) {
		os_error(c, f->id, "read", path, errno);
		if (fd >= 0)
			close(fd);
		goto out;
	}
	if (S_ISDIR(st.st_mode)) {
		os_error(c, f->id, "read", path, EISDIR);
		close(fd);
		goto out;
	}
	s = stream_new(c, ST_FREAD, f->id);
	if (!s) {
		close(fd);
		send_error(c, f->id, KP_ERR_OS, ENOMEM, "file read: out of memory");
		goto out;
	}
	s->fd = fd;
	s->remain = len;
	s->out_off = off;
	s->in_credit = 0;
	rec_begin(&w);
	kp_put_u64(&w, KT_SIZE, (uint64_t)st.st_size);
	rec_send(c, KP_RESPONSE, 0, f->id, &w);
out:
	free(path);
}

/* Send what credit allows of a file read; EOF|END at the end. */
static void fread_pump(struct conn *c, struct stream *s)
{
	static uint8_t buf[READ_CHUNK];

	while (s->out_credit && c->out.len < OUTQ_HIGH) {
		size_t want = max_data(c);
		ssize_t n;

		if (want > s->out_credit)
			want = (size_t)s->out_credit;
		if (want > s->remain)
			want = (size_t)s->remain;
		n = want ? read(s->fd, buf, want) : 0;
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			os_error(c, s->id, "read", "", errno);
			stream_free(c, s);
			return;
		}
		if (n == 0) {
			uint8_t e[KP_HDR_LEN + 8];

			conn_put(c, e, kp_enc_eof(e, s->id, KP_CHAN_OUT, KP_F_END, s->out_off));
			stream_free(c, s);
			return;
		}
		send_data(c, s->id, KP_CHAN_OUT, s->out_off, buf, (uint32_t)n);
		s->out_off += (uint64_t)n;
		s->out_credit -= (uint64_t)n;
		s->remain -= (uint64_t)n;
	}
}

/* ---- COPY --------------------------------------------------------------------------- */

/*
 * COPY: a regular file's bytes and permission bits to PATH2 (created, or
 * truncated), as Rust's fs::copy behind Deno's copyFile. The bytes move in
 * the main loop, COPY_CHUNK a turn (copy_pump), so a large copy does not
 * stall the agent's other work; the request ends with RESPONSE|END KT_SIZE.
 */
static void op_copy(struct conn *c, const struct kp_frame *f)
{
	int bad = 0, src = -1, dst = -1;
	char *from = arg_str(f, KT_PATH, &bad), *to = arg_str(f, KT_PATH2, &bad);
	struct stat ss, ds;
	struct stream *s;

	if (bad || !from || !to) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "copy: wants PATH (the file) and PATH2 (the copy)");
		goto out;
	}
	/* O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below). */
	src = open(from, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (src < 0 || fstat(src, &ss) < 0) {
		os_error(c, f->id, "copy", from, errno);
		goto out;
	}
	if (!S_ISREG(ss.st_mode)) {
		send_error(c, f->id, KP_ERR_OS, S_ISDIR(ss.st_mode) ? EISDIR : EINVAL,
			   "copy %s: %s (COPY copies one regular file)", from,
			   S_ISDIR(ss.st_mode) ? "is a directory" : "not a regular file");
		goto out;
	}
	dst = open_nonblock(c, f->id, to, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOCTTY, ss.st_mode & 07777);
	if (dst < 0)
		goto out;
	if (fstat(dst, &ds) < 0) {
		os_error(c, f->id, "copy", to, errno);
		goto out;
	}
	if (ds.st_dev == ss.st_dev && ds.st_ino == ss.st_ino) {
		/* Truncating the copy would empty the original. */
		send_error(c, f->id, KP_ERR_OS, EINVAL, "copy %s to %s: the same file", from, to);
		goto out;
	}
	/* An existing file gets the source's mode too; a new one had it masked by the umask. */
	if (S_ISREG(ds.st_mode) && (ftruncate(dst, 0) < 0 || fchmod(dst, ss.st_mode & 07777) < 0)) {
		os_error(c, f->id, "copy", to, errno);
		goto out;
	}
	s = stream_new(c, ST_COPY, f->id);
	if (!s) {
		send_error(c, f->id, KP_ERR_OS, ENOMEM, "copy: out of memory");
		goto out;
	}
	s->fd = src;
	s->fd2 = dst;
	s->in_credit = 0;
	src = dst = -1;
out:
	fd_close(&src);
	fd_close(&dst);
	free(from);
	free(to);
}

/* Write all n bytes to fd: 0, or -1 with errno (EIO for a device that takes no more). */
static int write_full(int fd, const uint8_t *p, size_t n)
{
	while (n) {
		ssize_t k = write(fd, p, n);

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0) {
			if (k == 0 || errno == EAGAIN)
				errno = EIO;
			return -1;
		}
		p += k;
		n -= (size_t)k;
	}
	return 0;
}

/* Move up to COPY_CHUNK bytes of a COPY; at the end of the file, the terminal RESPONSE. */
static void copy_pump(struct conn *c, struct stream *s)
{
	static uint8_t buf[READ_CHUNK];
	struct kp_recw w;
	size_t moved = 0;
	ssize_t n;

	while (moved < COPY_CHUNK) {
		if (!s->plain) {
			n = copy_file_range(s->fd, NULL, s->fd2, NULL, COPY_CHUNK - moved, 0);
			if (n < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)) {
				s->plain = 1;	/* not between these two files (a device, an old kernel) */
				continue;
			}
		} else {
			n = read(s->fd, buf, sizeof(buf));
			if (n > 0 && write_full(s->fd2, buf, (size_t)n) < 0)
				n = -1;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			send_error(c, s->id, KP_ERR_OS, errno, "copy: %s", strerror(errno));
			stream_free(c, s);
			return;
		}
		if (n == 0) {
			rec_begin(&w);
			kp_put_u64(&w, KT_SIZE, s->copied);
			rec_send(c, KP_RESPONSE, KP_F_END, s->id, &w);
			stream_free(c, s);
			return;
		}
		moved += (size_t)n;
		s->copied += (uint64_t)n;
	}
}

/* ---- WALK --------------------------------------------------------------------------- */

/* One directory on a walk's way down: where to resume reading it, and which it is. */
struct walk_level {
	long pos;		/* telldir() past the entry being descended into */
	size_t len;		/* its path's length in walk.path */
	dev_t dev;		/* a followed symlink back to an ancestor is a loop */
	ino_t ino;
};

/*
 * A WALK in progress. Only the directory being read is open: going down
 * closes it (its telldir kept), coming back reopens it by path and seeks, so
 * a walk holds one DIR whatever its depth, and its memory is one path of
 * PATH_MAX bytes and a level per directory on the way down (at most
 * PATH_MAX / 2 of them).
 */
struct walk {
	DIR *d;			/* the directory at level depth; NULL once it vanished */
	unsigned depth;		/* 0: the root */
	uint64_t max_depth;
	int nofollow;
	int started;		/* the root's own entry was sent */
	struct walk_level *lv;
	unsigned nlv;
	char path[PATH_MAX];
};

#define WALK_BATCH	(KP_MAX_CONTROL - 2 * PATH_MAX - 1024)	/* a batch is full beyond this */

static void walk_free(struct walk *wk)
{
	if (!wk)
		return;
	if (wk->d)
		closedir(wk->d);
	free(wk->lv);
	free(wk);
	nwalks--;
}

static void walk_put(struct kp_recw *w, const char *path, const char *name, unsigned type)
{
	uint32_t mark = kp_nest_begin(w, KT_ENTRY);

	kp_put_str(w, KT_PATH, path);
	kp_put_str(w, KT_NAME, name);
	kp_put_u64(w, KT_TYPE, type);
	kp_nest_end(w, mark);
}

/*
 * Go down into entry name of the current directory (its path in wk->path,
 * plen bytes): 1 when the walk is now in it, 0 when it is not a directory to
 * enter (gone, a symlink to something else, a loop), or -errno.
 */
static int walk_down(struct walk *wk, const char *name, size_t plen, int is_link)
{
	int fd = openat(dirfd(wk->d), name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | (is_link ? 0 : O_NOFOLLOW));
	struct stat st;
	unsigned i;
	DIR *nd;

	if (fd < 0)
		return errno == ENOENT || errno == ENOTDIR || errno == ELOOP ? 0 : -errno;
	if (fstat(fd, &st) < 0)
		goto fail;
	for (i = 0; i <= wk->depth; i++)
		if (wk->lv[i].dev == st.st_dev && wk->lv[i].ino == st.st_ino) {
			close(fd);
			return 0;
		}
	if (wk->depth + 1 >= wk->nlv) {
		struct walk_level *nl = realloc(wk->lv, 2 * wk->nlv * sizeof(*nl));

		if (!nl) {
			errno = ENOMEM;
			goto fail;
		}
		wk->lv = nl;
		wk->nlv *= 2;
	}
	wk->lv[wk->depth].pos = telldir(wk->d);
	nd = fdopendir(fd);
	if (!nd)
		goto fail;
	closedir(wk->d);
	wk->d = nd;
	wk->depth++;
	wk->lv[wk->depth] = (struct walk_level){ .len = plen, .dev = st.st_dev, .ino = st.st_ino };
	return 1;
fail:
	i = (unsigned)errno;
	close(fd);
	return -(int)i;
}

/*
 * Send the walk's next entries, in batches of one RESPONSE each, while the
 * connection's send queue is below half of OUTQ_HIGH: a host that stops
 * reading stops the walk, whose state stays the same size. Half: the queue
 * stays below OUTQ_HIGH, so the connection is still read (a CANCEL, other
 * requests) while a walk has more to send. The last batch carries END.
 */
static void walk_pump(struct conn *c, struct stream *s)
{
	struct walk *wk = s->walk;
	struct kp_recw w;
	struct stat st;
	int err = 0;

	rec_begin(&w);
	if (!wk->started) {
		const char *b = strrchr(wk->path, '/');

		walk_put(&w, wk->path, b && b[1] ? b + 1 : wk->path, S_IFDIR);
		wk->started = 1;
		if (!wk->max_depth)
			goto done;
	}
	while (c->out.len < OUTQ_HIGH / 2) {
		size_t len = wk->lv[wk->depth].len, cl = len, nl;
		struct dirent *de = NULL;
		unsigned type;
		int ret;

		if (w.len > WALK_BATCH) {
			rec_send(c, KP_RESPONSE, 0, s->id, &w);
			rec_begin(&w);
			continue;
		}
		errno = 0;
		if (wk->d)
			de = readdir(wk->d);
		if (!de && errno) {
			err = errno;
			break;
		}
		if (!de) {
			/* This directory is done: back up to its parent, where we left it. */
			if (wk->depth == 0)
				goto done;
			if (wk->d)
				closedir(wk->d);
			wk->depth--;
			wk->path[wk->lv[wk->depth].len] = '\0';
			wk->d = opendir(wk->path);
			if (!wk->d && errno != ENOENT) {
				err = errno;
				break;
			}
			if (wk->d)	/* a parent that vanished meanwhile has nothing left to list */
				seekdir(wk->d, wk->lv[wk->depth].pos);
			continue;
		}
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		nl = strlen(de->d_name);
		if (len + 1 + nl >= PATH_MAX) {
			err = ENAMETOOLONG;
			break;
		}
		if (wk->path[cl - 1] != '/')
			wk->path[cl++] = '/';
		memcpy(wk->path + cl, de->d_name, nl + 1);
		cl += nl;
		type = DTTOIF(de->d_type);
		if (de->d_type == DT_UNKNOWN)
			type = fstatat(dirfd(wk->d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 ? (st.st_mode & S_IFMT) : 0;
		walk_put(&w, wk->path, de->d_name, type);
		ret = 0;
		/* Entries of a directory at depth d are at d + 1: go down while that stays within max_depth. */
		if (wk->depth + 1 < wk->max_depth && (S_ISDIR(type) || (S_ISLNK(type) && !wk->nofollow)))
			ret = walk_down(wk, de->d_name, cl, S_ISLNK(type));
		if (ret < 0) {
			err = -ret;
			break;
		}
		if (!ret)
			wk->path[len] = '\0';
	}
	if (err) {
		/* The batch first: the ERROR is built in the same scratch buffer. */
		if (w.len)
			rec_send(c, KP_RESPONSE, 0, s->id, &w);
		send_error(c, s->id, KP_ERR_OS, err, "walk %s: %s", wk->path, strerror(err));
		stream_free(c, s);
		return;
	}
	if (w.len)
		rec_send(c, KP_RESPONSE, 0, s->id, &w);
	return;
done:
	rec_send(c, KP_RESPONSE, KP_F_END, s->id, &w);
	stream_free(c, s);
}

static void op_walk(struct conn *c, const struct kp_frame *f)
{
	struct kp_walk_args a;
	const char *why;
	struct walk *wk;
	struct stream *s;
	struct stat st;
	size_t n;

	if (kp_args_walk(f->payload, f->len, &a, &why) < 0) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "%s", why);
		return;
	}
	if (nwalks >= MAX_WALKS) {
		send_error(c, f->id, KP_ERR_LIMIT, 0, "walk: %d walks in progress already", MAX_WALKS);
		return;
	}
	if (a.path.len >= PATH_MAX) {
		send_error(c, f->id, KP_ERR_OS, ENAMETOOLONG, "walk: %s", strerror(ENAMETOOLONG));
		return;
	}
	wk = calloc(1, sizeof(*wk));
	if (!wk || !(wk->lv = calloc(16, sizeof(*wk->lv)))) {
		free(wk);
		send_error(c, f->id, KP_ERR_OS, ENOMEM, "walk: out of memory");
		return;
	}
	nwalks++;
	wk->nlv = 16;
	wk->max_depth = a.max_depth;
	wk->nofollow = a.nofollow;
	kp_field_str(&a.path, wk->path, sizeof(wk->path));
	for (n = a.path.len; n > 1 && wk->path[n - 1] == '/'; )
		wk->path[--n] = '\0';
	/* The root itself is entered whatever it is: a symlink to a directory is followed. */
	wk->d = opendir(wk->path);
	if (!wk->d || fstat(dirfd(wk->d), &st) < 0) {
		os_error(c, f->id, "walk", wk->path, errno);
		walk_free(wk);
		return;
	}
	wk->lv[0] = (struct walk_level){ .len = n, .dev = st.st_dev, .ino = st.st_ino };
	s = stream_new(c, ST_WALK, f->id);
	if (!s) {
		walk_free(wk);
		send_error(c, f->id, KP_ERR_OS, ENOMEM, "walk: out of memory");
		return;
	}
	s->walk = wk;
	s->in_credit = 0;
}

/* ---- file handles --------------------------------------------------------------------- */

static const char *const fh_op_name[] = {
	[KP_OP_FH_READ - KP_OP_FH_READ] = "read", [KP_OP_FH_WRITE - KP_OP_FH_READ] = "write",
	[KP_OP_FH_SEEK - KP_OP_FH_READ] = "seek", [KP_OP_FH_STAT - KP_OP_FH_READ] = "stat",
	[KP_OP_FH_SYNC - KP_OP_FH_READ] = "sync", [KP_OP_FH_TRUNCATE - KP_OP_FH_READ] = "truncate",
	[KP_OP_FH_LOCK - KP_OP_FH_READ] = "lock", [KP_OP_FH_UNLOCK - KP_OP_FH_READ] = "unlock",
	[KP_OP_FH_UTIME - KP_OP_FH_READ] = "utime", [KP_OP_FH_CLOSE - KP_OP_FH_READ] = "close",
};
_Static_assert(sizeof(fh_op_name) / sizeof(fh_op_name[0]) == KP_OP_FH_CLOSE - KP_OP_FH_READ + 1,
	       "a name for every FH_* op");

static struct fh *fh_find(struct conn *c, uint64_t id)
{
	unsigned i;

	for (i = 0; i < c->nfh; i++)
		if (c->fh[i].id == id)
			return &c->fh[i];
	return NULL;
}

/* Close every handle of c: handles belong to the connection that opened them. */
static void fh_close_all(struct conn *c)
{
	while (c->nfh)
		close(c->fh[--c->nfh].fd);
	free(c->fh);
	c->fh = NULL;
}

/* open(2) flags for checked KP_OPEN_* flags (kp_args_fh_open). */
static int fh_open_flags(unsigned fl)
{
	int flags = O_CLOEXEC | O_NOCTTY, wr = fl & (KP_OPEN_WRITE | KP_OPEN_APPEND);

	flags |= !wr ? O_RDONLY : (fl & KP_OPEN_READ) ? O_RDWR : O_WRONLY;
	if (fl & KP_OPEN_APPEND)
		flags |= O_APPEND;
	if (fl & KP_OPEN_CREATE_NEW)
		return flags | O_CREAT | O_EXCL;
	if (fl & KP_OPEN_CREATE)
		flags |= O_CREAT;
	if (fl & KP_OPEN_TRUNCATE)
		flags |= O_TRUNC;
	return flags;
}

static void op_fh_open(struct conn *c, const struct kp_frame *f)
{
	struct kp_open_args a;
	struct kp_recw w;
	const char *why;
	char *path;
	int fd;

	if (kp_args_fh_open(f->payload, f->len, &a, &why) < 0) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "%s", why);
		return;
	}
	if (c->nfh >= KP_FH_MAX) {
		send_error(c, f->id, KP_ERR_LIMIT, 0, "fh open: %d file handles are open on this connection "
			   "already (FH_CLOSE one)", KP_FH_MAX);
		return;
	}
	if (!c->fh)
		c->fh = calloc(KP_FH_MAX, sizeof(*c->fh));
	path = malloc(a.path.len + 1);
	if (!c->fh || !path) {
		free(path);
		send_error(c, f->id, KP_ERR_OS, ENOMEM, "fh open: out of memory");
		return;
	}
	kp_field_str(&a.path, path, a.path.len + 1);
	fd = open_nonblock(c, f->id, path, fh_open_flags(a.flags), (mode_t)a.mode);
	free(path);
	if (fd < 0)
		return;
	c->fh[c->nfh].id = ++c->fh_next;
	c->fh[c->nfh].fd = fd;
	c->nfh++;
	rec_begin(&w);
	kp_put_u64(&w, KT_FH, c->fh_next);
	rec_send(c, KP_RESPONSE, KP_F_END, f->id, &w);
}

/* FH_READ .. FH_CLOSE on a handle of this connection. */
static void op_fh(struct conn *c, const struct kp_frame *f, uint64_t op)
{
	static uint8_t buf[KP_FH_IO_MAX];
	const char *name = fh_op_name[op - KP_OP_FH_READ], *why;
	struct kp_fh_args a;
	struct kp_recw w;
	struct stream *s, *sn;
	struct statx sx;
	struct fh *h;
	ssize_t n = 0;
	size_t done = 0;
	off_t off;
	int ret = 0;

	if (kp_args_fh(f->payload, f->len, op, &a, &why) < 0) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "%s", why);
		return;
	}
	h = fh_find(c, a.fh);
	if (!h) {
		send_error(c, f->id, KP_ERR_NO_SUCH, 0, "fh %s: no file handle %llu on this connection "
			   "(closed, or never opened here)", name, (unsigned long long)a.fh);
		return;
	}
	rec_begin(&w);
	switch (op) {
	case KP_OP_FH_READ:
		do
			n = read(h->fd, buf, (size_t)a.length);
		while (n < 0 && errno == EINTR);
		if (n < 0)
			goto fail;
		if (n == 0 && a.length)
			kp_put_bool(&w, KT_EOF, 1);
		else
			kp_put_bytes(&w, KT_DATA, buf, (uint32_t)n);
		break;
	case KP_OP_FH_WRITE:
		while (done < a.data_len) {
			n = write(h->fd, a.data + done, a.data_len - done);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				break;
			done += (size_t)n;
		}
		/* Like write(2): what was written is the answer; an error only when nothing was. */
		if (!done && a.data_len) {
			if (n == 0)
				errno = ENOSPC;
			goto fail;
		}
		kp_put_u64(&w, KT_LENGTH, done);
		break;
	case KP_OP_FH_SEEK:
		off = lseek(h->fd, (off_t)a.offset, a.whence == 0 ? SEEK_SET : a.whence == 1 ? SEEK_CUR : SEEK_END);
		if (off < 0)
			goto fail;
		kp_put_u64(&w, KT_OFFSET, (uint64_t)off);
		break;
	case KP_OP_FH_STAT:
		if (statx(h->fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS | STATX_BTIME, &sx) < 0)
			goto fail;
		send_statx(c, f->id, &sx);
		return;
	case KP_OP_FH_SYNC:
		ret = a.data_only ? fdatasync(h->fd) : fsync(h->fd);
		break;
	case KP_OP_FH_TRUNCATE:
		ret = ftruncate(h->fd, (off_t)a.length);
		break;
	case KP_OP_FH_LOCK:
		ret = flock(h->fd, (a.exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB);
		if (ret < 0 && errno == EWOULDBLOCK) {
			/* Held elsewhere: wait for it without blocking the agent (lock_poll). */
			s = stream_new(c, ST_LOCK, f->id);
			if (!s) {
				send_error(c, f->id, KP_ERR_OS, ENOMEM, "fh lock: out of memory");
				return;
			}
			s->fh = a.fh;
			s->exclusive = a.exclusive;
			s->in_credit = 0;
			return;
		}
		break;
	case KP_OP_FH_UNLOCK:
		ret = flock(h->fd, LOCK_UN);
		break;
	case KP_OP_FH_UTIME: {
		struct timespec ts[2] = { ns_timespec(a.atime), ns_timespec(a.mtime) };

		ret = futimens(h->fd, ts);
		break;
	}
	case KP_OP_FH_CLOSE:
		for (s = c->streams; s; s = sn) {
			sn = s->next;
			if (s->kind == ST_LOCK && s->fh == a.fh) {
				send_error(c, s->id, KP_ERR_NO_SUCH, 0, "fh lock: file handle %llu was closed",
					   (unsigned long long)a.fh);
				stream_free(c, s);
			}
		}
		ret = close(h->fd);
		*h = c->fh[--c->nfh];	/* the handle is gone even if close(2) reports an error */
		if (ret < 0 && errno == EINTR)
			ret = 0;
		break;
	}
	if (ret < 0)
		goto fail;
	rec_send(c, KP_RESPONSE, KP_F_END, f->id, &w);
	return;
fail:
	send_error(c, f->id, KP_ERR_OS, errno, "fh %s %llu: %s", name, (unsigned long long)a.fh, strerror(errno));
}

/* Retry every waiting FH_LOCK (flock(2) has no fd to poll for). */
static void lock_poll(void)
{
	struct conn *c;
	struct stream *s, *sn;
	struct fh *h;

	for (c = conns; c; c = c->next)
		for (s = c->streams; s; s = sn) {
			sn = s->next;
			if (s->kind != ST_LOCK)
				continue;
			h = fh_find(c, s->fh);
			if (!h)
				send_error(c, s->id, KP_ERR_NO_SUCH, 0, "fh lock: file handle %llu was closed",
					   (unsigned long long)s->fh);
			else if (flock(h->fd, (s->exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) == 0)
				send_ok(c, s->id);
			else if (errno == EWOULDBLOCK || errno == EINTR)
				continue;
			else
				send_error(c, s->id, KP_ERR_OS, errno, "fh lock %llu: %s", (unsigned long long)s->fh,
					   strerror(errno));
			stream_free(c, s);
		}
}

/* ---- control: identity, environment, shutdown --------------------------------------- */

/*
 * The default environment (the base of every exec, what ENV_* edit) is kept
 * here rather than in environ: setenv(3) leaks the strings it replaces, and a
 * host may set variables forever. Bounded by MAX_ENV entries and MAX_ENV_BYTES.
 */
static int env_init(void)
{
	size_t i;

	envs = calloc(MAX_ENV + 1, sizeof(*envs));
	if (!envs)
		return -ENOMEM;
	for (i = 0; environ[i] && nenvs < MAX_ENV; i++) {
		size_t n = strlen(environ[i]);

		if (!strchr(environ[i], '=') || env_bytes + n > MAX_ENV_BYTES)
			continue;
		envs[nenvs] = strdup(environ[i]);
		if (!envs[nenvs])
			return -ENOMEM;
		env_bytes += n;
		nenvs++;
	}
	return 0;
}

/* Index of the entry for key (kl bytes), or -1. */
static ssize_t env_find(const char *key, size_t kl)
{
	size_t i;

	for (i = 0; i < nenvs; i++)
		if (strncmp(envs[i], key, kl) == 0 && envs[i][kl] == '=')
			return (ssize_t)i;
	return -1;
}

static void env_unset(const char *key, size_t kl)
{
	ssize_t i = env_find(key, kl);

	if (i < 0)
		return;
	env_bytes -= strlen(envs[i]);
	free(envs[i]);
	envs[i] = envs[--nenvs];
	envs[nenvs] = NULL;
}

static void env_clear(void)
{
	while (nenvs)
		env_unset(envs[0], strcspn(envs[0], "="));
}

/* Set key (kl bytes) to val. 0, -E2BIG past the limits, -ENOMEM. */
static int env_set(const char *key, size_t kl, const char *val)
{
	size_t n = kl + 1 + strlen(val);
	ssize_t i = env_find(key, kl);
	size_t old = i >= 0 ? strlen(envs[i]) : 0;
	char *e;

	if ((i < 0 && nenvs >= MAX_ENV) || env_bytes - old + n > MAX_ENV_BYTES)
		return -E2BIG;
	e = malloc(n + 1);
	if (!e)
		return -ENOMEM;
	memcpy(e, key, kl);
	e[kl] = '=';
	strcpy(e + kl + 1, val);
	if (i >= 0) {
		free(envs[i]);
		envs[i] = e;
	} else {
		envs[nenvs++] = e;
	}
	env_bytes = env_bytes - old + n;
	return 0;
}

/* A variable name: non-empty, no '=' (the bytes are otherwise the caller's business). */
static int env_key_ok(const char *k, size_t kl)
{
	return kl > 0 && kl < MAX_ENV_BYTES && !memchr(k, '=', kl);
}

/* An entry "KEY=VALUE" with a valid key. */
static int env_entry_ok(const char *e)
{
	const char *eq = strchr(e, '=');

	return eq && env_key_ok(e, (size_t)(eq - e));
}

/* Sandbox ids and hostnames: letters, digits and . _ - : only (they land in files and prompts). */
static int name_ok(const char *s, size_t max, const char *extra)
{
	size_t n = strlen(s), i;

	if (n == 0 || n > max)
		return 0;
	for (i = 0; i < n; i++)
		if (!isalnum((unsigned char)s[i]) && !strchr(extra, s[i]))
			return 0;
	return 1;
}

/* Write path atomically (a temporary file renamed over it), creating its directory. */
static int write_small_file(const char *dir, const char *path, const char *text)
{
	char tmp[256];
	size_t n = strlen(text);
	int fd, ret = 0;

	if (mkdir(dir, 0755) < 0 && errno != EEXIST)
		return -errno;
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	if (write(fd, text, n) != (ssize_t)n)
		ret = -EIO;
	if (close(fd) < 0 && !ret)
		ret = -errno;
	if (!ret && rename(tmp, path) < 0)
		ret = -errno;
	if (ret)
		unlink(tmp);
	return ret;
}

static void op_identity(struct conn *c, const struct kp_frame *f)
{
	int bad = 0, ret, clear = (int)arg_u64(f, KT_CLEAR_ENV, 0, &bad);
	char *id = arg_str(f, KT_SANDBOX_ID, &bad), *host = arg_str(f, KT_HOSTNAME, &bad);
	size_t n = 0, i, add = 0;
	char **ev = arg_list(f, KT_ENV, &n, &bad);
	struct kp_field fl;
	uint64_t rt = 0;
	int has_rt = kp_rec_find(f->payload, f->len, KT_REALTIME_NS, &fl) == 1;
	char line[SANDBOX_ID_MAX + 2];

	if (has_rt && kp_field_u64(&fl, &rt) < 0)
		bad = 1;
	if (bad) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "identity: SANDBOX_ID and HOSTNAME are STR, ENV STR*, "
			   "CLEAR_ENV BOOL, REALTIME_NS U64");
		goto out;
	}
	/* Validate everything before changing anything. */
	if (host_mode && (host || has_rt)) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "identity: HOSTNAME and REALTIME_NS would change the host's; "
			   "not in host mode (a test agent)");
		goto out;
	}
	if (id && !name_ok(id, SANDBOX_ID_MAX, "._-:")) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "identity: sandbox id must be 1-%d letters, digits or . _ - :",
			   SANDBOX_ID_MAX);
		goto out;
	}
	if (host && !name_ok(host, 64, ".-")) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "identity: hostname must be 1-64 letters, digits, . or -");
		goto out;
	}
	for (i = 0; i < n; i++) {
		if (!env_entry_ok(ev[i])) {
			send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "identity: env entry %zu is not KEY=VALUE", i);
			goto out;
		}
		add += strlen(ev[i]);
	}
	if ((clear ? 0 : nenvs) + n + 1 > MAX_ENV ||
	    (clear ? 0 : env_bytes) + add + SANDBOX_ID_MAX + 16 > MAX_ENV_BYTES) {
		send_error(c, f->id, KP_ERR_LIMIT, 0, "identity: the environment would exceed %d entries or %u bytes",
			   MAX_ENV, MAX_ENV_BYTES);
		goto out;
	}
	if (has_rt && (rt == 0 || rt > (uint64_t)INT64_MAX)) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "identity: REALTIME_NS %llu is not a time",
			   (unsigned long long)rt);
		goto out;
	}
	/* The clock first: what follows (files written) carries the right times. */
	if (has_rt) {
		struct timespec ts = { .tv_sec = (time_t)(rt / 1000000000u), .tv_nsec = (long)(rt % 1000000000u) };

		if (clock_settime(CLOCK_REALTIME, &ts) < 0) {
			os_error(c, f->id, "identity: clock_settime", "", errno);
			goto out;
		}
	}
	if (host) {
		if (sethostname(host, strlen(host)) < 0) {
			os_error(c, f->id, "identity: sethostname", host, errno);
			goto out;
		}
		snprintf(line, sizeof(line), "%s\n", host);
		write_small_file("/etc", "/etc/hostname", line);
	}
	if (id) {
		snprintf(line, sizeof(line), "%s\n", id);
		ret = host_mode ? 0 : write_small_file("/run/kiln", SANDBOX_ID_FILE, line);
		if (ret < 0) {
			os_error(c, f->id, "identity: write", SANDBOX_ID_FILE, -ret);
			goto out;
		}
		strcpy(sandbox_id, id);
	}
	if (clear)
		env_clear();
	for (i = 0; i < n; i++) {
		size_t kl = strcspn(ev[i], "=");

		if (env_set(ev[i], kl, ev[i] + kl + 1) < 0) {
			send_error(c, f->id, KP_ERR_OS, ENOMEM, "identity: out of memory");
			goto out;
		}
	}
	/* The id survives CLEAR_ENV: processes can always find out where they run. */
	if (sandbox_id[0] && env_set("KILN_SANDBOX_ID", 15, sandbox_id) < 0) {
		send_error(c, f->id, KP_ERR_OS, ENOMEM, "identity: out of memory");
		goto out;
	}
	send_ok(c, f->id);
out:
	free(id);
	free(host);
	strv_free(ev);
}

static void op_env(struct conn *c, const struct kp_frame *f, uint64_t op)
{
	int bad = 0, ret;
	char *key = arg_str(f, KT_KEY, &bad), *val = arg_str(f, KT_VALUE, &bad);
	struct kp_recw w;
	ssize_t i;
	size_t k;

	if (bad || (op != KP_OP_ENV_LIST && (!key || !env_key_ok(key, strlen(key)))) ||
	    (op == KP_OP_ENV_SET && !val)) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "env: wants KEY (STR, non-empty, no '=')%s",
			   op == KP_OP_ENV_SET ? " and VALUE (STR)" : "");
		goto out;
	}
	rec_begin(&w);
	switch (op) {
	case KP_OP_ENV_GET:
		i = env_find(key, strlen(key));
		if (i >= 0)
			kp_put_str(&w, KT_VALUE, envs[i] + strlen(key) + 1);
		break;
	case KP_OP_ENV_SET:
		ret = env_set(key, strlen(key), val);
		if (ret == -E2BIG) {
			send_error(c, f->id, KP_ERR_LIMIT, 0, "env: the environment would exceed %d entries or %u bytes",
				   MAX_ENV, MAX_ENV_BYTES);
			goto out;
		} else if (ret < 0) {
			send_error(c, f->id, KP_ERR_OS, -ret, "env: %s", strerror(-ret));
			goto out;
		}
		break;
	case KP_OP_ENV_DELETE:
		env_unset(key, strlen(key));
		break;
	case KP_OP_ENV_LIST:
		for (k = 0; k < nenvs; k++)
			kp_put_str(&w, KT_ENV, envs[k]);
		break;
	}
	rec_send(c, KP_RESPONSE, KP_F_END, f->id, &w);
out:
	free(key);
	free(val);
}

/*
 * Signal every process of the sandbox: in the guest all of them (kill -1
 * spares PID 1, the agent); in host mode only the process groups of the
 * processes the agent started (each leads its own session), never the host's.
 */
static void signal_all(int sig)
{
	struct proc *p;

	if (!host_mode) {
		kill(-1, sig);
		return;
	}
	/* An exited one whose pipes are open has children left in its group. */
	for (p = procs; p; p = p->next)
		if (!p->done)
			kill(-p->pid, sig);
}

/* Whether any process signal_all would reach is left. */
static int any_left(void)
{
	if (!host_mode)
		return !(kill(-1, 0) < 0 && errno == ESRCH);
	return nlive > 0;
}

/*
 * SHUTDOWN answers at once, then SIGTERMs every process; the main loop
 * SIGKILLs what is left when they are all gone or the grace ends, flushes the
 * connections and hands over to the init (agent_stop: sync, power off).
 */
static void op_shutdown(struct conn *c, const struct kp_frame *f)
{
	int bad = 0;
	uint64_t ms = arg_u64(f, KT_TIMEOUT_MS, SHUTDOWN_MS, &bad);
	int reboot = (int)arg_u64(f, KT_REBOOT, 0, &bad);
	struct timespec now;
	int64_t ns;

	if (bad || ms > 600000) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "shutdown: TIMEOUT_MS at most 600000, REBOOT BOOL");
		return;
	}
	clock_gettime(CLOCK_MONOTONIC, &now);
	ns = (int64_t)now.tv_nsec + (int64_t)(ms % 1000) * 1000000;
	now.tv_sec += (time_t)(ms / 1000) + (time_t)(ns / 1000000000);
	now.tv_nsec = (long)(ns % 1000000000);
	/* A second SHUTDOWN may shorten the grace, never lengthen it. */
	if (!stopping.active || now.tv_sec < stopping.deadline.tv_sec ||
	    (now.tv_sec == stopping.deadline.tv_sec && now.tv_nsec < stopping.deadline.tv_nsec))
		stopping.deadline = now;
	stopping.reboot |= reboot;
	if (!stopping.active) {
		stopping.active = 1;
		fprintf(stderr, "kiln-agent: shutdown requested (%llu ms grace)\n", (unsigned long long)ms);
		signal_all(SIGTERM);
	}
	send_ok(c, f->id);
}

/* ---- ports ------------------------------------------------------------------------ */

/*
 * A non-blocking TCP connect to addr (an IPv4 or IPv6 literal; NULL:
 * 127.0.0.1) and port. Returns the socket (connect in progress or done) or
 * -errno; -EINVAL for an address that is not an IP literal.
 */
static int port_dial(const char *addr, uint16_t port)
{
	struct sockaddr_in6 s6 = { .sin6_family = AF_INET6, .sin6_port = htons(port) };
	struct sockaddr_in s4 = { .sin_family = AF_INET, .sin_port = htons(port) };
	struct sockaddr *sa;
	socklen_t len;
	int fd;

	if (!addr)
		addr = "127.0.0.1";
	if (inet_pton(AF_INET, addr, &s4.sin_addr) == 1) {
		sa = (struct sockaddr *)&s4;
		len = sizeof(s4);
	} else if (inet_pton(AF_INET6, addr, &s6.sin6_addr) == 1) {
		sa = (struct sockaddr *)&s6;
		len = sizeof(s6);
	} else {
		return -EINVAL;
	}
	fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, sa, len) < 0 && errno != EINPROGRESS) {
		int err = errno;

		close(fd);
		return -err;
	}
	return fd;
}

/* The outcome of a non-blocking connect once fd is writable: 0 or an errno. */
static int dial_result(int fd)
{
	int soerr = 0;
	socklen_t sl = sizeof(soerr);

	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
		return errno;
	return soerr;
}

static void op_port_connect(struct conn *c, const struct kp_frame *f)
{
	int bad = 0, fd;
	uint64_t port = arg_u64(f, KT_PORT, 0, &bad);
	char *addr = arg_str(f, KT_ADDR, &bad);
	int raw = (int)arg_u64(f, KT_RAW, 0, &bad);
	struct stream *s;

	if (bad || port == 0 || port > 65535) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "port connect: wants PORT (1-65535), ADDR STR?, RAW BOOL?");
		goto out;
	}
	if (raw && (c->nreq != 1 || c->nstreams)) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0,
			   "port connect: RAW must be the first request of a connection of its own");
		goto out;
	}
	if (!raw && nports >= MAX_PORTS) {
		send_error(c, f->id, KP_ERR_LIMIT, 0, "port connect: %d port streams already", MAX_PORTS);
		goto out;
	}
	if (stopping.active) {
		send_error(c, f->id, KP_ERR_OS, ESHUTDOWN, "port connect: the sandbox is shutting down");
		goto out;
	}
	fd = port_dial(addr, (uint16_t)port);
	if (fd == -EINVAL) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "port connect: ADDR %s is not an IPv4 or IPv6 address", addr);
		goto out;
	}
	if (fd < 0) {
		send_error(c, f->id, KP_ERR_OS, -fd, "connect to port %llu: %s", (unsigned long long)port,
			   strerror(-fd));
		goto out;
	}
	if (raw) {
		c->rawin = malloc(RAW_BUF);
		if (!c->rawin) {
			close(fd);
			send_error(c, f->id, KP_ERR_OS, ENOMEM, "port connect: out of memory");
			goto out;
		}
		c->raw = 1;
		c->raw_fd = fd;
		c->raw_id = f->id;
		goto out;
	}
	s = stream_new(c, ST_PORT, f->id);
	if (!s) {
		close(fd);
		send_error(c, f->id, KP_ERR_OS, ENOMEM, "port connect: out of memory");
		goto out;
	}
	nports++;
	s->fd = fd;
	s->connecting = 1;
	s->in_credit = KP_DEFAULT_WINDOW;
out:
	free(addr);
}

static void port_pump_in(struct conn *c, struct stream *s);

/* The connect of a port stream finished: RESPONSE, or ERROR and the stream ends. */
static void port_connected(struct conn *c, struct stream *s)
{
	int err = dial_result(s->fd);
	struct kp_recw w;

	s->connecting = 0;
	if (err) {
		send_error(c, s->id, KP_ERR_OS, err, "connect: %s", strerror(err));
		stream_free(c, s);
		return;
	}
	rec_begin(&w);
	rec_send(c, KP_RESPONSE, 0, s->id, &w);
	port_pump_in(c, s);
}

/* Both directions of a port stream are finished: the terminal RESPONSE|END. */
static void port_maybe_done(struct conn *c, struct stream *s)
{
	struct kp_recw w;

	if (!s->out_eof || !s->in_eof || s->inlen)
		return;
	rec_begin(&w);
	rec_send(c, KP_RESPONSE, KP_F_END, s->id, &w);
	stream_free(c, s);
}

/* Socket to host: what credit allows, EOF when the peer shuts its side. */
static void port_pump_out(struct conn *c, struct stream *s)
{
	static uint8_t buf[READ_CHUNK];
	size_t want = max_data(c);
	ssize_t n;

	if (want > s->out_credit)
		want = (size_t)s->out_credit;
	if (!want || s->out_eof)
		return;
	n = recv(s->fd, buf, want, MSG_DONTWAIT);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		uint8_t e[KP_HDR_LEN + 8];

		/* A reset counts as the end: the host sees EOF, then the stream's end. */
		conn_put(c, e, kp_enc_eof(e, s->id, KP_CHAN_OUT, 0, s->out_off));
		s->out_eof = 1;
		port_maybe_done(c, s);
		return;
	}
	send_data(c, s->id, KP_CHAN_OUT, s->out_off, buf, (uint32_t)n);
	s->out_off += (uint64_t)n;
	s->out_credit -= (uint64_t)n;
}

/* Host to socket: write queued bytes, grant them back; half-close after EOF. */
static void port_pump_in(struct conn *c, struct stream *s)
{
	uint8_t e[KP_HDR_LEN + 4];
	ssize_t n = 0;

	if (s->connecting)
		return;		/* bytes sent before the RESPONSE wait for the connection */
	if (s->inlen) {
		n = send(s->fd, s->inbuf, s->inlen, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		if (n < 0) {
			/* The peer is gone with bytes still to deliver: say so, end the stream. */
			send_error(c, s->id, KP_ERR_OS, errno, "port: send: %s", strerror(errno));
			stream_free(c, s);
			return;
		}
		memmove(s->inbuf, s->inbuf + n, s->inlen - (size_t)n);
		s->inlen -= (size_t)n;
		s->in_credit += (uint64_t)n;
		conn_put(c, e, kp_enc_window(e, s->id, 0, (uint32_t)n));
	}
	if (s->in_eof && !s->inlen && !s->wr_shut) {
		shutdown(s->fd, SHUT_WR);
		s->wr_shut = 1;
	}
	port_maybe_done(c, s);
}

struct listener {
	uint16_t port;
	uint64_t inode;
	pid_t pid;		/* 0 until found */
	char addr[INET6_ADDRSTRLEN];
};

/* Append the LISTEN sockets of /proc/net/tcp or tcp6 to l (at most max in all). */
static size_t listeners_read(const char *path, int v6, struct listener *l, size_t n, size_t max)
{
	char line[512], hex[33];
	unsigned port, st;
	unsigned long long ino;
	FILE *fp = fopen(path, "re");

	if (!fp)
		return n;	/* no IPv6 in the kernel: no tcp6 */
	if (!fgets(line, sizeof(line), fp)) {	/* the header */
		fclose(fp);
		return n;
	}
	while (n < max && fgets(line, sizeof(line), fp)) {
		uint32_t w[4];
		size_t i, j;

		if (sscanf(line, " %*u: %32[0-9A-Fa-f]:%x %*s %x %*s %*s %*s %*u %*u %llu",
			   hex, &port, &st, &ino) != 4 || st != 0x0a)
			continue;
		if (strlen(hex) != (v6 ? 32u : 8u))
			continue;
		/* The kernel prints each 32-bit word of the address in host order. */
		for (i = 0; i < (v6 ? 4u : 1u); i++) {
			char word[9];

			memcpy(word, hex + 8 * i, 8);
			word[8] = '\0';
			w[i] = (uint32_t)strtoul(word, NULL, 16);
		}
		memset(&l[n], 0, sizeof(l[n]));
		l[n].port = (uint16_t)port;
		l[n].inode = ino;
		inet_ntop(v6 ? AF_INET6 : AF_INET, w, l[n].addr, sizeof(l[n].addr));
		/* One entry per port and inode: a dual-stack socket shows once. */
		for (j = 0; j < n; j++)
			if (l[j].inode == ino)
				break;
		if (j == n)
			n++;
	}
	fclose(fp);
	return n;
}

/* The parent of pid from /proc/PID/stat, or 0. */
static pid_t proc_ppid(pid_t pid)
{
	char path[64], buf[512], *p;
	int fd, ppid = 0;
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	p = strrchr(buf, ')');	/* the command name may hold anything but ends at the last ')' */
	if (!p || sscanf(p + 1, " %*c %d", &ppid) != 1)
		return 0;
	return (pid_t)ppid;
}

/* pid is root or one of its descendants. */
static int pid_under(pid_t pid, pid_t root)
{
	int depth;

	for (depth = 0; pid > 1 && depth < 64; depth++, pid = proc_ppid(pid))
		if (pid == root)
			return 1;
	return pid == root;
}

/* Fill in the owning pid of each listener by scanning /proc/PID/fd once. */
static void listeners_owners(struct listener *l, size_t n)
{
	DIR *pd = opendir("/proc"), *fdd;
	struct dirent *pe, *fe;
	char path[64], link[64];
	size_t i, found = 0;

	if (!pd)
		return;
	while (found < n && (pe = readdir(pd)) != NULL) {
		pid_t pid = (pid_t)atoi(pe->d_name);

		if (pid <= 0)
			continue;
		snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
		fdd = opendir(path);
		if (!fdd)
			continue;
		while ((fe = readdir(fdd)) != NULL) {
			unsigned long long ino;
			ssize_t k;

			if (fe->d_name[0] == '.')
				continue;
			k = readlinkat(dirfd(fdd), fe->d_name, link, sizeof(link) - 1);
			if (k <= 0)
				continue;
			link[k] = '\0';
			if (sscanf(link, "socket:[%llu]", &ino) != 1)
				continue;
			for (i = 0; i < n; i++)
				if (l[i].inode == ino && !l[i].pid) {
					l[i].pid = pid;
					found++;
				}
		}
		closedir(fdd);
	}
	closedir(pd);
}

/* The listening TCP sockets (with owners when want_pid), at most MAX_LISTEN. Returns the count or -ENOMEM. */
static ssize_t listeners_scan(struct listener **out, int want_pid)
{
	struct listener *l = calloc(MAX_LISTEN, sizeof(*l));
	size_t n;

	if (!l)
		return -ENOMEM;
	n = listeners_read("/proc/net/tcp", 0, l, 0, MAX_LISTEN);
	n = listeners_read("/proc/net/tcp6", 1, l, n, MAX_LISTEN);
	if (want_pid)
		listeners_owners(l, n);
	*out = l;
	return (ssize_t)n;
}

static void op_port_list(struct conn *c, const struct kp_frame *f)
{
	int bad = 0;
	uint64_t pid = arg_u64(f, KT_PID, 0, &bad);
	struct listener *l;
	struct kp_recw w;
	ssize_t n, i;

	if (bad || pid > INT32_MAX) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "port list: PID is a U64 process id");
		return;
	}
	n = listeners_scan(&l, 1);
	if (n < 0) {
		send_error(c, f->id, KP_ERR_OS, ENOMEM, "port list: out of memory");
		return;
	}
	rec_begin(&w);
	for (i = 0; i < n; i++) {
		uint32_t mark;

		if (pid && (!l[i].pid || !pid_under(l[i].pid, (pid_t)pid)))
			continue;
		mark = kp_nest_begin(&w, KT_ENTRY);
		kp_put_u64(&w, KT_PORT, l[i].port);
		if (l[i].pid)
			kp_put_u64(&w, KT_PID, (uint64_t)l[i].pid);
		kp_put_str(&w, KT_ADDR, l[i].addr);
		kp_nest_end(&w, mark);
	}
	free(l);
	rec_send(c, KP_RESPONSE, KP_F_END, f->id, &w);
}

/* PORT_WAIT: 1 when its port (or a port of its process) listens, sending the EVENT|END. */
static int pwait_check(struct conn *c, struct stream *s, const struct listener *l, ssize_t n)
{
	struct kp_recw w;
	ssize_t i;

	for (i = 0; i < n; i++) {
		if (s->wport && l[i].port != s->wport)
			continue;
		if (s->wpid && (!l[i].pid || !pid_under(l[i].pid, s->wpid)))
			continue;
		rec_begin(&w);
		kp_put_u64(&w, KT_EVENT, KP_EV_LISTEN);
		kp_put_u64(&w, KT_PORT, l[i].port);
		if (l[i].pid)
			kp_put_u64(&w, KT_PID, (uint64_t)l[i].pid);
		kp_put_str(&w, KT_ADDR, l[i].addr);
		rec_send(c, KP_EVENT, KP_F_END, s->id, &w);
		stream_free(c, s);
		return 1;
	}
	return 0;
}

static int ts_after(const struct timespec *a, const struct timespec *b)
{
	return a->tv_sec > b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec >= b->tv_nsec);
}

/* Rescan for every waiting PORT_WAIT; expire those past their deadline. */
static void pwait_poll(void)
{
	struct listener *l = NULL;
	ssize_t n = -1;
	struct conn *c;
	struct stream *s, *sn;
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	for (c = conns; c; c = c->next)
		for (s = c->streams; s; s = sn) {
			sn = s->next;
			if (s->kind != ST_PWAIT)
				continue;
			if (n < 0 && (n = listeners_scan(&l, 1)) < 0)
				return;
			if (pwait_check(c, s, l, n))
				continue;
			if (s->deadline.tv_sec && ts_after(&now, &s->deadline)) {
				send_error(c, s->id, KP_ERR_OS, ETIMEDOUT, "port wait: nothing listened in time");
				stream_free(c, s);
			}
		}
	free(l);
}

static void op_port_wait(struct conn *c, const struct kp_frame *f)
{
	int bad = 0;
	uint64_t port = arg_u64(f, KT_PORT, 0, &bad), pid = arg_u64(f, KT_PID, 0, &bad);
	uint64_t ms = arg_u64(f, KT_TIMEOUT_MS, 0, &bad);
	struct stream *s;
	struct listener *l;
	ssize_t n;

	if (bad || port > 65535 || pid > INT32_MAX || (!port && !pid) || ms > 24ull * 3600 * 1000) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "port wait: wants PORT (1-65535) or PID, TIMEOUT_MS? (at most a day)");
		return;
	}
	s = stream_new(c, ST_PWAIT, f->id);
	if (!s) {
		send_error(c, f->id, KP_ERR_OS, ENOMEM, "port wait: out of memory");
		return;
	}
	s->wport = (uint16_t)port;
	s->wpid = (pid_t)pid;
	s->in_credit = 0;
	if (ms) {
		clock_gettime(CLOCK_MONOTONIC, &s->deadline);
		s->deadline.tv_sec += (time_t)(ms / 1000);
		s->deadline.tv_nsec += (long)(ms % 1000) * 1000000;
		if (s->deadline.tv_nsec >= 1000000000) {
			s->deadline.tv_sec++;
			s->deadline.tv_nsec -= 1000000000;
		}
	}
	n = listeners_scan(&l, 1);
	if (n >= 0) {
		pwait_check(c, s, l, n);
		free(l);
	}
}

/* ---- frames from the host ----------------------------------------------------------- */

static void handle_request(struct conn *c, const struct kp_frame *f)
{
	int bad = 0;
	uint64_t op = arg_u64(f, KT_OP, 0, &bad);

	if (stream_find(c, f->id)) {
		send_error(c, f->id, KP_ERR_ID_IN_USE, 0, "request id %u is live", f->id);
		return;
	}
	if (c->nstreams >= MAX_IDS) {
		send_error(c, f->id, KP_ERR_LIMIT, 0, "%d live requests already", MAX_IDS);
		return;
	}
	c->nreq++;
	if (bad || !op) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "request without a U64 OP");
		return;
	}
	switch (op) {
	case KP_OP_HEALTH:	op_health(c, f); break;
	case KP_OP_IDENTITY:	op_identity(c, f); break;
	case KP_OP_SHUTDOWN:	op_shutdown(c, f); break;
	case KP_OP_ENV_GET:
	case KP_OP_ENV_SET:
	case KP_OP_ENV_DELETE:
	case KP_OP_ENV_LIST:	op_env(c, f, op); break;
	case KP_OP_PORT_CONNECT: op_port_connect(c, f); break;
	case KP_OP_PORT_WAIT:	op_port_wait(c, f); break;
	case KP_OP_PORT_LIST:	op_port_list(c, f); break;
	case KP_OP_EXEC:	op_exec(c, f); break;
	case KP_OP_SIGNAL:	op_signal(c, f); break;
	case KP_OP_ATTACH:	op_attach(c, f); break;
	case KP_OP_RESIZE:	op_resize(c, f); break;
	case KP_OP_WAIT:	op_wait(c, f); break;
	case KP_OP_RELEASE:	op_release(c, f); break;
	case KP_OP_PROC_LIST:	op_proc_list(c, f); break;
	case KP_OP_STAT:	op_stat(c, f); break;
	case KP_OP_READDIR:	op_readdir(c, f); break;
	case KP_OP_MKDIR:	op_mkdir(c, f); break;
	case KP_OP_REMOVE:	op_remove(c, f); break;
	case KP_OP_RENAME:	op_rename(c, f); break;
	case KP_OP_FILE_WRITE:	op_file_write(c, f); break;
	case KP_OP_FILE_READ:	op_file_read(c, f); break;
	case KP_OP_CHMOD:
	case KP_OP_CHOWN:
	case KP_OP_LINK:
	case KP_OP_SYMLINK:
	case KP_OP_TRUNCATE:
	case KP_OP_UTIME:	op_path_simple(c, f, op); break;
	case KP_OP_READLINK:
	case KP_OP_REALPATH:	op_path_query(c, f, op); break;
	case KP_OP_UMASK:	op_umask(c, f); break;
	case KP_OP_MKTEMP:	op_mktemp(c, f); break;
	case KP_OP_COPY:	op_copy(c, f); break;
	case KP_OP_WALK:	op_walk(c, f); break;
	case KP_OP_FH_OPEN:	op_fh_open(c, f); break;
	case KP_OP_FH_READ:
	case KP_OP_FH_WRITE:
	case KP_OP_FH_SEEK:
	case KP_OP_FH_STAT:
	case KP_OP_FH_SYNC:
	case KP_OP_FH_TRUNCATE:
	case KP_OP_FH_LOCK:
	case KP_OP_FH_UNLOCK:
	case KP_OP_FH_UTIME:
	case KP_OP_FH_CLOSE:	op_fh(c, f, op); break;
	default:
		send_error(c, f->id, KP_ERR_UNKNOWN_OP, 0, "unknown op 0x%llx", (unsigned long long)op);
	}
}

/* DATA or EOF on channel 0 of stream s. */
static void stream_input(struct conn *c, struct stream *s, const struct kp_frame *f)
{
	const uint8_t *data = NULL;
	uint64_t off;
	uint32_t n = 0;
	uint8_t e[KP_HDR_LEN + 8];

	if (f->type == KP_DATA) {
		kp_parse_data(f, &off, &data, &n);
	} else {
		kp_parse_u64(f, &off);
	}
	if (f->channel != KP_CHAN_IN || (s->kind != ST_EXEC && s->kind != ST_FWRITE && s->kind != ST_PORT) ||
	    (s->kind == ST_EXEC && s->proc->in_eof) || (s->kind == ST_PORT && s->in_eof)) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "no input channel %u on this stream", f->channel);
		goto end;
	}
	if (off != s->in_off) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "channel 0 offset %llu, expected %llu",
			   (unsigned long long)off, (unsigned long long)s->in_off);
		goto end;
	}
	if (n > s->in_credit) {
		send_error(c, f->id, KP_ERR_CREDIT, 0, "%u bytes beyond the window", n);
		goto end;
	}
	s->in_off += n;
	s->in_credit -= n;
	if (s->kind == ST_FWRITE) {
		while (n) {
			ssize_t w = write(s->fd, data, n);

			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0) {
				os_error(c, f->id, "write", "", w < 0 ? errno : ENOSPC);
				goto end;
			}
			data += w;
			n -= (uint32_t)w;
		}
		if (f->type == KP_DATA) {
			s->in_credit += f->len - 8;
			conn_put(c, e, kp_enc_window(e, f->id, 0, f->len - 8));
		} else {
			struct kp_recw w;
			struct stat st;

			if (fsync(s->fd) < 0 || fstat(s->fd, &st) < 0) {
				os_error(c, f->id, "fsync", "", errno);
				goto end;
			}
			rec_begin(&w);
			kp_put_u64(&w, KT_SIZE, (uint64_t)st.st_size);
			rec_send(c, KP_RESPONSE, KP_F_END, f->id, &w);
			goto end_quiet;
		}
		return;
	}
	if (s->kind == ST_PORT) {
		/* queue for the socket (bounded by the window granted) */
		if (n) {
			uint8_t *nb = realloc(s->inbuf, s->inlen + n);

			if (!nb) {
				send_error(c, f->id, KP_ERR_OS, ENOMEM, "port: out of memory");
				goto end;
			}
			s->inbuf = nb;
			memcpy(s->inbuf + s->inlen, data, n);
			s->inlen += n;
		}
		if (f->type == KP_EOF)
			s->in_eof = 1;
		port_pump_in(c, s);
		return;
	}
	/* exec: queue for the process's stdin (bounded by the window granted) */
	if (n) {
		struct proc *p = s->proc;
		uint8_t *nb = realloc(p->inbuf, p->inlen + n);

		if (!nb) {
			send_error(c, f->id, KP_ERR_OS, ENOMEM, "stdin: out of memory");
			goto end;
		}
		p->inbuf = nb;
		memcpy(p->inbuf + p->inlen, data, n);
		p->inlen += n;
		if (p->fd[0] < 0) {	/* stdin already gone: the bytes are consumed */
			s->in_credit += p->inlen;
			conn_put(c, e, kp_enc_window(e, f->id, 0, (uint32_t)p->inlen));
			p->inlen = 0;
		}
	}
	if (f->type == KP_EOF)
		s->proc->in_eof = 1;
	proc_pump_in(s->proc);
	return;
end:
	/* ERROR ends the id; an exec's process runs on, detached. */
end_quiet:
	stream_free(c, s);
}

/*
 * CANCEL: the whole request (KP_CHAN_ALL) ends with ERROR CANCELLED (an exec
 * stream detaches; the process runs on); one channel stops: output channels
 * send nothing more (their unsent bytes stay in the ring for a later
 * ATTACH), an input channel ends as with EOF, its queued bytes dropped.
 */
static void stream_cancel(struct conn *c, struct stream *s, uint16_t ch)
{
	if (ch != KP_CHAN_ALL && s->kind == ST_EXEC) {
		struct proc *p = s->proc;

		if (ch == KP_CHAN_IN) {
			p->inlen = 0;
			p->in_eof = 1;
			s->in_credit = 0;
			proc_pump_in(p);
		} else {
			s->cancelled[ch] = 1;
			proc_flush(p);
		}
		return;
	}
	if (ch != KP_CHAN_ALL && s->kind == ST_PORT) {
		if (ch == KP_CHAN_IN) {
			s->inlen = 0;
			s->in_eof = 1;
			s->in_credit = 0;
			port_pump_in(c, s);
		} else if (!s->out_eof) {
			shutdown(s->fd, SHUT_RD);
			s->out_eof = 1;
			port_maybe_done(c, s);
		}
		return;
	}
	/* A file stream has one channel, a wait none: cancelling any is cancelling it. */
	send_error(c, s->id, KP_ERR_CANCELLED, 0, "cancelled");
	stream_free(c, s);
}

/* Returns -1 when the connection must close after flushing. */
static int handle_frame(struct conn *c, const struct kp_frame *f)
{
	struct stream *s;
	uint8_t b[KP_HDR_LEN + 8];

	if (!c->got_hello) {
		struct kp_field fl;
		uint64_t v;

		if (f->type != KP_HELLO) {
			send_error(c, 0, KP_ERR_PROTO, 0, "%s before HELLO", kp_type_name(f->type));
			return -1;
		}
		c->got_hello = 1;
		if (kp_rec_find(f->payload, f->len, KT_VERSION, &fl) == 1 &&
		    (kp_field_u64(&fl, &v) || v < 1)) {
			send_error(c, 0, KP_ERR_VERSION, 0, "no common protocol version (agent speaks %d)", KP_VERSION);
			return -1;
		}
		if (kp_rec_find(f->payload, f->len, KT_WINDOW, &fl) == 1 && kp_field_u64(&fl, &v) == 0 &&
		    v <= 0xffffffffu)
			c->peer_window = (uint32_t)v;
		if (kp_rec_find(f->payload, f->len, KT_MAX_FRAME, &fl) == 1 && kp_field_u64(&fl, &v) == 0) {
			if (v < KP_MIN_PAYLOAD_CAP) {
				send_error(c, 0, KP_ERR_PROTO, 0, "max_frame %llu below %u",
					   (unsigned long long)v, KP_MIN_PAYLOAD_CAP);
				return -1;
			}
			c->peer_max = v > KP_MAX_PAYLOAD ? KP_MAX_PAYLOAD : (uint32_t)v;
		}
		return 0;
	}
	switch (f->type) {
	case KP_HELLO:
		send_error(c, 0, KP_ERR_PROTO, 0, "second HELLO");
		return -1;
	case KP_PING: {
		uint64_t v;

		kp_parse_u64(f, &v);
		conn_put(c, b, kp_enc_ping(b, KP_PONG, v));
		return 0;
	}
	case KP_PONG:
		return 0;
	case KP_REQUEST:
		handle_request(c, f);
		return 0;
	case KP_CANCEL:
		s = stream_find(c, f->id);
		if (s)
			stream_cancel(c, s, f->channel);
		return 0;	/* no stream: raced with the request's end */
	case KP_DATA:
	case KP_EOF:
		/* A stream that already ended: drop, the bytes may have been in flight. */
		s = stream_find(c, f->id);
		if (s)
			stream_input(c, s, f);
		return 0;
	case KP_WINDOW: {
		uint32_t inc;
		uint64_t *cr = NULL;

		kp_parse_window(f, &inc);
		s = stream_find(c, f->id);
		if (!s)
			return 0;
		if (s->kind == ST_EXEC && f->channel)
			cr = &s->credit[f->channel];
		else if ((s->kind == ST_FREAD || s->kind == ST_PORT) && f->channel == KP_CHAN_OUT)
			cr = &s->out_credit;
		if (!cr)
			return 0;
		if (inc == 0 || *cr + inc > 0xffffffffu) {
			send_error(c, 0, KP_ERR_PROTO, 0, "WINDOW increment %u on id %u overflows", inc, f->id);
			return -1;
		}
		*cr += inc;
		if (s->kind == ST_EXEC && f->channel) {
			struct proc *p = s->proc;
			uint64_t *a = &s->acked[f->channel];

			/* Consumed by the host: block mode may now overwrite it. */
			*a = *a + inc < s->sent[f->channel] ? *a + inc : s->sent[f->channel];
			if (*a > p->keep[f->channel])
				p->keep[f->channel] = *a;
		}
		return 0;
	}
	default:	/* RESPONSE, ERROR, EVENT: only the agent sends those */
		send_error(c, 0, KP_ERR_PROTO, 0, "%s from the host", kp_type_name(f->type));
		return -1;
	}
}

/* ---- connections ------------------------------------------------------------------ */

static void conn_free(struct conn *c)
{
	struct conn **pp;

	while (c->streams)
		stream_free(c, c->streams);
	fh_close_all(c);
	for (pp = &conns; *pp; pp = &(*pp)->next)
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	close(c->fd);
	if (c->raw)
		close(c->raw_fd);
	free(c->rawin);
	free(c->rxbuf);
	free(c->out.p);
	free(c);
	nconns--;
}

/* Stop reading requests, flush the queue, then shutdown(SHUT_WR) (vsock's
 * close() would drop queued bytes) and wait for the host to close. */
static void conn_close(struct conn *c)
{
	while (c->streams)
		stream_free(c, c->streams);
	fh_close_all(c);
	if (!c->closing)
		c->closing = 1;
}

/*
 * A descriptor held in reserve: out of descriptors, the agent gives it up to
 * accept and close the waiting connection (the host sees it closed at once),
 * or the listening socket would stay readable and the main loop would spin.
 */
static int reserve_fd = -1;

/* Raise the agent's own descriptor limit; remember the one its processes get. */
static void nofile_init(void)
{
	struct rlimit r;

	if (getrlimit(RLIMIT_NOFILE, &child_nofile) < 0)
		return;
	r.rlim_cur = r.rlim_max = child_nofile.rlim_max > AGENT_NOFILE ? child_nofile.rlim_max : AGENT_NOFILE;
	/* Raising the hard limit needs CAP_SYS_RESOURCE: without it, up to the hard one. */
	if (setrlimit(RLIMIT_NOFILE, &r) < 0) {
		r.rlim_cur = r.rlim_max = child_nofile.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &r);
	}
}

static unsigned long refused_peers;	/* connections from anyone but the host */

/*
 * Only the host may drive the agent. The guest kernel's vsock loopback lets
 * any guest process connect to port 1024 too (CID 1, or the guest's own
 * CID), and the agent runs commands as root: such a connection is closed
 * before any frame, counted, and logged at powers of two. The listener
 * stays bound to VMADDR_CID_ANY: binding to the guest's CID would still
 * take loopback connections to that CID, so the peer check is what holds.
 */
static int conn_peer_ok(const struct sockaddr_vm *peer, socklen_t len)
{
	if (host_mode)
		return 1;	/* a unix socket, owner only */
	if (len >= sizeof(*peer) && peer->svm_family == AF_VSOCK && peer->svm_cid == VMADDR_CID_HOST)
		return 1;
	refused_peers++;
	if (!(refused_peers & (refused_peers - 1)))
		fprintf(stderr, "kiln-agent: refused a connection from CID %u port %u: only the host (CID %u) "
			"may connect (%lu refused so far)\n", len >= sizeof(*peer) ? peer->svm_cid : 0,
			len >= sizeof(*peer) ? peer->svm_port : 0, VMADDR_CID_HOST, refused_peers);
	return 0;
}

static void conn_accept(int lfd)
{
	struct conn *c;
	struct sockaddr_vm peer;
	socklen_t plen = sizeof(peer);
	int fd = accept4(lfd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);

	if (fd < 0 && (errno == EMFILE || errno == ENFILE) && reserve_fd >= 0) {
		close(reserve_fd);
		fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd >= 0)
			close(fd);
		reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
		return;
	}
	if (fd < 0)
		return;
	if (!conn_peer_ok(&peer, plen)) {
		close(fd);
		return;
	}
	if (nconns >= MAX_CONNS || !(c = calloc(1, sizeof(*c))) || !(c->rxbuf = malloc(RX_CAP))) {
		if (nconns < MAX_CONNS)
			free(c);
		close(fd);
		return;
	}
	c->fd = fd;
	c->raw_fd = -1;
	c->peer_window = KP_DEFAULT_WINDOW;
	c->peer_max = KP_MIN_PAYLOAD_CAP;
	kp_dec_init(&c->dec, c->rxbuf, RX_CAP);
	c->next = conns;
	conns = c;
	nconns++;
	if (host_mode)
		c->preamble = 1;	/* HELLO follows the OK line */
	else
		conn_put(c, scratch, kp_enc_hello(scratch, sizeof(scratch), KP_DEFAULT_WINDOW, RX_CAP, AGENT_NAME));
}

/*
 * Host mode: take the "CONNECT PORT\n" line kiln-vmm's vsock socket expects
 * and answer as it does ("OK PORT\n"), then HELLO, so build/kiln --uds talks
 * to the agent unchanged. Returns the bytes of buf used, or -1 when c was
 * freed (not the agent's port, or a line too long).
 */
static ssize_t conn_preamble(struct conn *c, const uint8_t *buf, size_t n)
{
	char want[sizeof(c->line)];
	size_t i;
	int k;

	for (i = 0; i < n; i++) {
		if (buf[i] != '\n') {
			if (c->linelen + 1 >= sizeof(c->line))
				break;
			c->line[c->linelen++] = (char)buf[i];
			continue;
		}
		c->line[c->linelen] = '\0';
		snprintf(want, sizeof(want), "CONNECT %u", KP_VSOCK_PORT);
		if (strcmp(c->line, want) != 0)
			break;
		k = snprintf(want, sizeof(want), "OK %u\n", KP_VSOCK_PORT);
		conn_put(c, want, k);
		conn_put(c, scratch, kp_enc_hello(scratch, sizeof(scratch), KP_DEFAULT_WINDOW, RX_CAP, AGENT_NAME));
		c->preamble = 0;
		return (ssize_t)i + 1;
	}
	if (i == n)
		return (ssize_t)n;
	conn_free(c);
	return -1;
}

static void conn_read(struct conn *c)
{
	static uint8_t buf[65536];
	ssize_t n = read(c->fd, buf, sizeof(buf));
	size_t off = 0;

	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		/* The host went away: its streams end, its processes run on. */
		conn_free(c);
		return;
	}
	if (c->closing)
		return;		/* discard input while flushing */
	if (c->preamble) {
		ssize_t used = conn_preamble(c, buf, (size_t)n);

		if (used < 0)
			return;
		off = (size_t)used;
	}
	while (off < (size_t)n && !c->closing) {
		struct kp_frame f;
		size_t used;
		int ret = kp_dec_feed(&c->dec, buf + off, (size_t)n - off, &used, &f);

		off += used;
		if (ret < 0) {
			send_error(c, 0, KP_ERR_PROTO, 0, "bad frame: %s", kp_strerror(ret));
			conn_close(c);
		} else if (ret == 1 && handle_frame(c, &f) < 0) {
			conn_close(c);
		} else if (ret == 0) {
			break;
		}
		if (c->raw) {
			/* Bytes after a raw PORT_CONNECT are already the tunnel's (buf < RAW_BUF). */
			memcpy(c->rawin, buf + off, (size_t)n - off);
			c->rawin_len = (size_t)n - off;
			break;
		}
	}
}

/* Returns -1 when c was freed. */
static int conn_write(struct conn *c)
{
	while (c->out.len) {
		ssize_t n = send(c->fd, c->out.p + c->out.head, c->out.len, MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return 0;
		if (n <= 0) {
			conn_free(c);
			return -1;
		}
		c->out.head += (size_t)n;
		c->out.len -= (size_t)n;
	}
	c->out.head = 0;
	if (c->closing == 1) {
		shutdown(c->fd, SHUT_WR);
		c->closing = 2;
		clock_gettime(CLOCK_MONOTONIC, &c->closed_at);
	}
	return 0;
}

/* ---- raw port connections ------------------------------------------------------------ */

/* The raw connect finished: RESPONSE and unframed bytes from now on, or ERROR and close. */
static void raw_connected(struct conn *c)
{
	int err = dial_result(c->raw_fd);
	struct kp_recw w;

	if (err) {
		send_error(c, c->raw_id, KP_ERR_OS, err, "connect: %s", strerror(err));
		close(c->raw_fd);
		c->raw = 0;
		c->raw_fd = -1;
		conn_close(c);
		return;
	}
	rec_begin(&w);
	rec_send(c, KP_RESPONSE, KP_F_END, c->raw_id, &w);
	c->raw = 2;
}

/*
 * One step of a raw relay on the events seen: host bytes (rawin) to the TCP
 * socket, TCP bytes to the host (the send queue, written by conn_write).
 * Each side's end is passed on as a half-close; once both ends are through,
 * the connection closes like any other. Returns -1 when c was freed.
 */
static int raw_step(struct conn *c, int vsock_in, int tcp_in, int tcp_out)
{
	static uint8_t buf[RAW_BUF];
	ssize_t n;

	if (vsock_in && !c->rd_eof && c->rawin_len < RAW_BUF) {
		n = read(c->fd, c->rawin + c->rawin_len, RAW_BUF - c->rawin_len);
		if (n == 0)
			c->rd_eof = 1;
		else if (n > 0)
			c->rawin_len += (size_t)n;
		else if (errno != EAGAIN && errno != EINTR)
			goto fail;
	}
	if ((tcp_out || c->rawin_len) && c->rawin_len) {
		n = send(c->raw_fd, c->rawin, c->rawin_len, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n > 0) {
			memmove(c->rawin, c->rawin + n, c->rawin_len - (size_t)n);
			c->rawin_len -= (size_t)n;
		} else if (n < 0 && errno != EAGAIN && errno != EINTR) {
			goto fail;
		}
	}
	if (c->rd_eof && !c->rawin_len && !c->tcp_wr_shut) {
		shutdown(c->raw_fd, SHUT_WR);
		c->tcp_wr_shut = 1;
	}
	if (tcp_in && !c->tcp_eof && c->out.len < RAW_BUF) {
		n = recv(c->raw_fd, buf, RAW_BUF - c->out.len, MSG_DONTWAIT);
		if (n == 0)
			c->tcp_eof = 1;
		else if (n > 0)
			conn_put(c, buf, (int)n);
		else if (errno != EAGAIN && errno != EINTR)
			goto fail;
	}
	if (c->out.len && conn_write(c) < 0)
		return -1;
	if (c->tcp_eof && !c->out.len && !c->vs_wr_shut) {
		/* The TCP peer is done sending: pass the half-close on to the host. */
		shutdown(c->fd, SHUT_WR);
		c->vs_wr_shut = 1;
	}
	if (c->vs_wr_shut && c->tcp_wr_shut) {
		/*
		 * Both ways are through and both ends shut: close. The close's
		 * vsock SHUTDOWN follows our data, which the VMM delivers first.
		 */
		conn_free(c);
		return -1;
	}
	return 0;
fail:
	conn_free(c);
	return -1;
}

/* ---- shutdown ---------------------------------------------------------------------- */

/*
 * Called each loop turn while a SHUTDOWN is in progress: once every process
 * has gone (or the grace has ended) flush what the connections still hold,
 * for a short while, and hand over to the init, which does not return.
 */
static void shutdown_step(void)
{
	struct timespec now, until;
	struct conn *c, *cn;
	int busy;

	clock_gettime(CLOCK_MONOTONIC, &now);
	if (!ts_after(&now, &stopping.deadline) && any_left())
		return;
	signal_all(SIGKILL);
	until = now;
	until.tv_sec += 1;
	do {
		busy = 0;
		for (c = conns; c; c = cn) {
			cn = c->next;
			if (c->out.len && conn_write(c) == 0 && c->out.len)
				busy = 1;
		}
		if (busy)
			usleep(10000);
		clock_gettime(CLOCK_MONOTONIC, &now);
	} while (busy && !ts_after(&now, &until));
	fprintf(stderr, "kiln-agent: %s\n", stopping.reboot ? "rebooting" : "powering off");
	if (agent_stop)
		agent_stop(stopping.reboot);
	_exit(0);	/* not reached: the init powers off */
}

/* ---- the loop --------------------------------------------------------------------- */

enum { PF_LISTEN, PF_SIGNAL, PF_CONN, PF_PROC, PF_PORT, PF_RAW };
/* The listener and signalfd; a connection and its raw TCP socket; three pipes a process; port streams. */
#define MAX_PFD	(2 + 2 * MAX_CONNS + 3 * MAX_PROC_OBJS + MAX_PORTS)

static struct pollfd pfd[MAX_PFD];
static void *obj[MAX_PFD];
static uint8_t kind[MAX_PFD], chan[MAX_PFD];
static unsigned long pfd_dropped;

/*
 * Add fd to the poll set. The limits that admit connections, processes and
 * port streams keep it within MAX_PFD; should they not, a descriptor goes
 * unpolled this turn (logged at powers of two) rather than past the array.
 */
static void pfd_add(nfds_t *n, int fd, short events, uint8_t k, void *o, uint8_t ch)
{
	if (*n >= MAX_PFD) {
		pfd_dropped++;
		if (!(pfd_dropped & (pfd_dropped - 1)))
			fprintf(stderr, "kiln-agent: poll set full (%d): %lu descriptors left unpolled (a bug)\n",
				MAX_PFD, pfd_dropped);
		return;
	}
	pfd[*n] = (struct pollfd){ .fd = fd, .events = events };
	obj[*n] = o;
	kind[*n] = k;
	chan[*n] = ch;
	(*n)++;
}

static struct conn *conn_live(void *o, int fd)
{
	struct conn *c;

	for (c = conns; c && c != o; c = c->next)
		;
	return c && c->fd == fd ? c : NULL;
}

/* What both modes set up before listening: descriptors, ring budget, environment, SIGCHLD. */
static int agent_setup(int *sfd)
{
	struct sysinfo si;
	sigset_t chld;
	int ret;

	nofile_init();
	reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	ring_limit = RING_TOTAL_MAX;
	if (sysinfo(&si) == 0 && (uint64_t)si.totalram * si.mem_unit / 4 < ring_limit)
		ring_limit = (uint64_t)si.totalram * si.mem_unit / 4;
	ret = env_init();
	if (ret < 0) {
		fprintf(stderr, "kiln-agent: environment: %s\n", strerror(-ret));
		return ret;
	}
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, NULL);
	*sfd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
	if (*sfd < 0) {
		ret = -errno;
		fprintf(stderr, "kiln-agent: signalfd: %s\n", strerror(-ret));
		return ret;
	}
	return 0;
}

static _Noreturn void agent_loop(int lfd, int sfd);

int agent_main(void (*stop)(int reboot))
{
	struct sockaddr_vm addr = {
		.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = KP_VSOCK_PORT,
	};
	int lfd, sfd, ret;

	agent_stop = stop;
	ret = agent_setup(&sfd);
	if (ret < 0)
		return ret;
	lfd = socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(lfd, 64) < 0) {
		int err = errno;

		fprintf(stderr, "kiln-agent: vsock port %d: %s\n", KP_VSOCK_PORT, strerror(err));
		return -err;
	}
	fprintf(stderr, "kiln-agent: ready\n");
	/* Tell kiln-vmm (a template snapshots at this moment; the init has the port). */
	if (ioperm(KILN_PORT_MARK, 1, 1) == 0)
		outb(KILN_MARK_AGENT_READY, KILN_PORT_MARK);
	agent_loop(lfd, sfd);
}

static const char *host_path;

/* Host mode's SHUTDOWN end: nothing to power off; the socket goes. */
static void host_stop(int reboot)
{
	(void)reboot;
	unlink(host_path);
	_exit(0);
}

int agent_main_unix(const char *path)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	int lfd, sfd, ret;
	mode_t mask;

	if (strlen(path) >= sizeof(addr.sun_path)) {
		fprintf(stderr, "kiln-agent: %s: socket path too long (at most %zu bytes)\n", path,
			sizeof(addr.sun_path) - 1);
		return -ENAMETOOLONG;
	}
	memcpy(addr.sun_path, path, strlen(path));
	host_mode = 1;
	host_path = path;
	agent_stop = host_stop;
	ret = agent_setup(&sfd);
	if (ret < 0)
		return ret;
	unlink(path);
	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	/* Owner only (bound under umask 077): whoever connects runs commands as the agent's user. */
	mask = umask(077);
	ret = lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0 ? -1 : 0;
	umask(mask);
	if (ret < 0 || listen(lfd, 64) < 0) {
		int err = errno;

		fprintf(stderr, "kiln-agent: %s: %s\n", path, strerror(err));
		return -err;
	}
	fprintf(stderr, "kiln-agent: ready (host mode, %s)\n", path);
	agent_loop(lfd, sfd);
}

static _Noreturn void agent_loop(int lfd, int sfd)
{
	for (;;) {
		struct conn *c, *cn;
		struct proc *p;
		struct stream *s, *sn;
		nfds_t n = 0, i;
		unsigned nclosing, npwait = 0, nlock = 0, ncopy = 0;
		struct timespec now;
		int tmo;

		/* Producers without an fd to wait on: file reads and rings with credit. */
		for (c = conns; c; c = c->next)
			for (s = c->streams; s; s = sn) {
				sn = s->next;
				if (s->kind == ST_FREAD)
					fread_pump(c, s);
				else if (s->kind == ST_WALK)
					walk_pump(c, s);
				else if (s->kind == ST_COPY)
					copy_pump(c, s);
			}
		for (p = procs; p; p = p->next)
			proc_flush(p);

		pfd_add(&n, lfd, POLLIN, PF_LISTEN, NULL, 0);
		pfd_add(&n, sfd, POLLIN, PF_SIGNAL, NULL, 0);
		nclosing = 0;
		for (c = conns; c; c = c->next) {
			short ev = 0;

			nclosing += c->closing == 2;
			if (c->raw == 1) {
				ev = c->out.len ? POLLOUT : 0;
				pfd_add(&n, c->raw_fd, POLLOUT, PF_RAW, c, 0);
			} else if (c->raw == 2) {
				/* Only what can still happen: an ended side would poll ready forever. */
				short tev = (short)((!c->tcp_eof && c->out.len < RAW_BUF ? POLLIN : 0) |
						    (c->rawin_len ? POLLOUT : 0));

				if (!c->rd_eof && c->rawin_len < RAW_BUF)
					ev |= POLLIN;
				if (c->out.len)
					ev |= POLLOUT;
				if (tev)
					pfd_add(&n, c->raw_fd, tev, PF_RAW, c, 0);
				if (!ev && c->rd_eof && c->vs_wr_shut)
					continue;
			} else {
				if (c->out.len < OUTQ_HIGH || c->closing)
					ev |= POLLIN;
				if (c->out.len)
					ev |= POLLOUT;
			}
			pfd_add(&n, c->fd, ev, PF_CONN, c, 0);
			for (s = c->streams; s; s = s->next) {
				short pev = 0;

				npwait += s->kind == ST_PWAIT;
				nlock += s->kind == ST_LOCK;
				ncopy += s->kind == ST_COPY;
				if (s->kind != ST_PORT)
					continue;
				if (s->connecting)
					pev = POLLOUT;
				else {
					if (!s->out_eof && s->out_credit && c->out.len < OUTQ_HIGH)
						pev |= POLLIN;
					if (s->inlen)
						pev |= POLLOUT;
				}
				if (pev)
					pfd_add(&n, s->fd, pev, PF_PORT, s, 0);
			}
		}
		for (p = procs; p; p = p->next) {
			for (int ch = 0; ch < 3; ch++) {
				short ev = 0;

				if (p->fd[ch] < 0)
					continue;
				if (ch == 0 && p->inlen)
					ev = POLLOUT;
				else if (ch && proc_out_room(p, ch))
					ev = POLLIN;
				if (ev)
					pfd_add(&n, p->fd[ch], ev, PF_PROC, p, (uint8_t)ch);
			}
		}

		tmo = nclosing ? 1000 : -1;
		if (npwait)
			tmo = PORT_POLL_MS;
		if (nlock && (tmo < 0 || tmo > LOCK_POLL_MS))
			tmo = LOCK_POLL_MS;
		if (stopping.active)
			tmo = 20;
		if (ncopy)
			tmo = 0;	/* a COPY goes on next turn */
		if (poll(pfd, n, tmo) < 0)
			continue;

		/*
		 * Objects may be freed while handling: connections, streams and
		 * processes are looked up again by pointer before use.
		 */
		for (i = 0; i < n; i++) {
			if (!pfd[i].revents)
				continue;
			switch (kind[i]) {
			case PF_LISTEN:
				conn_accept(lfd);
				break;
			case PF_SIGNAL:
				break;	/* below, after the pipes are drained */
			case PF_CONN:
				c = conn_live(obj[i], pfd[i].fd);
				if (!c)
					break;
				if (c->raw == 1) {
					/* Connecting: no frames are read; the host may already send raw bytes. */
					if (pfd[i].revents & (POLLERR | POLLHUP))
						conn_free(c);
					else if (pfd[i].revents & POLLOUT)
						conn_write(c);
					break;
				}
				if (c->raw == 2) {
					if (pfd[i].revents & POLLERR)
						conn_free(c);	/* the host reset the connection */
					else
						raw_step(c, !!(pfd[i].revents & (POLLIN | POLLHUP)), 0, 0);
					break;
				}
				if ((pfd[i].revents & POLLOUT) && conn_write(c) < 0)
					break;
				if (pfd[i].revents & (POLLIN | POLLHUP | POLLERR))
					conn_read(c);
				break;
			case PF_RAW:
				for (c = conns; c && c != obj[i]; c = c->next)
					;
				if (!c || c->raw_fd != pfd[i].fd)
					break;
				if (c->raw == 1)
					raw_connected(c);
				else
					raw_step(c, 0, !!(pfd[i].revents & (POLLIN | POLLHUP | POLLERR)),
						 !!(pfd[i].revents & (POLLOUT | POLLERR)));
				break;
			case PF_PORT:
				s = obj[i];
				c = stream_conn(s);
				if (!c || s->fd != pfd[i].fd)
					break;
				if (s->connecting) {
					port_connected(c, s);
					break;
				}
				if (pfd[i].revents & (POLLIN | POLLHUP | POLLERR))
					port_pump_out(c, s);
				if ((pfd[i].revents & (POLLOUT | POLLERR)) && stream_conn(s) == c)
					port_pump_in(c, s);
				break;
			case PF_PROC:
				for (p = procs; p && p != obj[i]; p = p->next)
					;
				if (!p || p->fd[chan[i]] != pfd[i].fd)
					break;
				if (chan[i] == 0)
					proc_pump_in(p);
				else
					proc_pump_out(p, chan[i]);
				break;
			}
		}
		reap(sfd);
		if (npwait)
			pwait_poll();
		if (nlock)
			lock_poll();
		clock_gettime(CLOCK_MONOTONIC, &now);
		for (c = conns; c; c = cn) {
			cn = c->next;
			if (c->raw == 2) {
				raw_step(c, 0, 0, 0);
				continue;
			}
			if (c->out.len || c->closing == 1)
				conn_write(c);
			else if (c->closing == 2 && now.tv_sec - c->closed_at.tv_sec > CLOSE_GRACE_S)
				conn_free(c);	/* the host never closed its end */
		}
		if (stopping.active)
			shutdown_step();
	}
}
