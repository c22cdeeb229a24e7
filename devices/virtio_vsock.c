/*
 * virtio-vsock (virtio 1.2, 5.10) with Firecracker's host convention: the
 * guest's stream sockets meet unix sockets on the host.
 *
 *   host -> guest: a host program connects to the device's unix socket PATH
 *                  and writes "CONNECT <port>\n"; once the guest accepts, it
 *                  reads "OK <host_port>\n" and the stream follows.
 *   guest -> host: a guest connection to CID 2 port P is connected to the
 *                  unix socket "PATH_P"; if nobody listens there the guest
 *                  gets a RST.
 *
 * All socket I/O is non-blocking and driven by the I/O thread's io_uring
 * (one-shot polls, then read/send). Flow control is the spec's credit scheme
 * (5.10.6.3): nothing is sent to the guest beyond its advertised credit, and
 * what the guest sends is buffered up to our advertised buf_alloc; a guest
 * that overruns it is reset. A slow peer therefore stalls only its own
 * connection.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <unistd.h>

#include "usock.h"
#include "virtio.h"

#define VIRTIO_ID_VSOCK		19
#define VIRTIO_VSOCK_F_STREAM	0

#define VSOCK_RXQ		0
#define VSOCK_TXQ		1
#define VSOCK_EVQ		2
#define VSOCK_QUEUE_SIZE	256

#define VMADDR_CID_HOST		2
#define VSOCK_CID_MAX		0xfffffffeULL	/* 0xffffffff is VMADDR_CID_ANY */

#define VIRTIO_VSOCK_TYPE_STREAM	1

#define VIRTIO_VSOCK_OP_REQUEST		1
#define VIRTIO_VSOCK_OP_RESPONSE	2
#define VIRTIO_VSOCK_OP_RST		3
#define VIRTIO_VSOCK_OP_SHUTDOWN	4
#define VIRTIO_VSOCK_OP_RW		5
#define VIRTIO_VSOCK_OP_CREDIT_UPDATE	6
#define VIRTIO_VSOCK_OP_CREDIT_REQUEST	7

#define VIRTIO_VSOCK_SHUTDOWN_RCV	1
#define VIRTIO_VSOCK_SHUTDOWN_SEND	2
#define VIRTIO_VSOCK_SHUTDOWN_BOTH	3

#define VIRTIO_VSOCK_EVENT_TRANSPORT_RESET 0

#define VSOCK_BUF_ALLOC		(256 * 1024)	/* our receive buffer per connection */
#define VSOCK_RX_STAGE		(64 * 1024)	/* host bytes read ahead per connection */
#define VSOCK_MAX_PAYLOAD	(64 * 1024)	/* largest packet payload we accept */
#define VSOCK_MAX_CONNS		256
#define VSOCK_MAX_CTRL		(VSOCK_MAX_CONNS + 64)
/* How long the guest has to answer a host connection's REQUEST (connect-timeout=MS). */
#define VSOCK_CONNECT_TIMEOUT_MS	5000
#define VSOCK_CONNECT_TIMEOUT_MAX_MS	3600000
#define VSOCK_HOST_PORT_BASE	(1U << 30)	/* ports for host-initiated connections */
#define VSOCK_LINE_MAX		64		/* "CONNECT <port>\n" */
#define VSOCK_RESET_HOLD_S	2		/* longest a request waits on a TRANSPORT_RESET */

/* The packet header (5.10.6), little-endian like the host. */
struct vsock_hdr {
	uint64_t src_cid;
	uint64_t dst_cid;
	uint32_t src_port;
	uint32_t dst_port;
	uint32_t len;
	uint16_t type;
	uint16_t op;
	uint32_t flags;
	uint32_t buf_alloc;
	uint32_t fwd_cnt;
} __attribute__((packed));

_Static_assert(sizeof(struct vsock_hdr) == 44, "virtio_vsock_hdr is 44 bytes");

#define VSOCK_HDR	sizeof(struct vsock_hdr)

enum conn_state {
	CONN_HANDSHAKE,		/* host client: waiting for its CONNECT line */
	CONN_REQUESTED,		/* REQUEST sent or owed to the guest */
	CONN_CONNECTING,	/* guest-initiated: unix connect in progress */
	CONN_ESTABLISHED,
};

/* Control packets owed to the guest on a connection. */
#define PEND_REQUEST		1
#define PEND_RESPONSE		2
#define PEND_CREDIT_UPDATE	4
#define PEND_CREDIT_REQUEST	8

struct vsock;

struct vsock_conn {
	struct vsock *vs;
	struct vsock_conn *next;
	int fd;
	enum conn_state state;
	uint32_t host_port, guest_port;
	unsigned pending;
	uint64_t deadline;	/* host client: closed if not ESTABLISHED by then (ns, CLOCK_MONOTONIC) */
	int closing;		/* off the live list; freed when no poll is in flight */
	int need_cancel;	/* closed off the I/O thread: its polls still need cancelling */
	unsigned inflight;	/* polls submitted and not yet completed */
	struct io_op in_op, out_op;
	int in_armed, out_armed;

	/* host -> guest */
	uint8_t *rx;		/* VSOCK_RX_STAGE bytes read from the host socket */
	uint32_t rx_off, rx_len;
	int host_eof, eof_sent;
	uint32_t peer_buf_alloc, peer_fwd_cnt;	/* the guest's credit (5.10.6.3) */
	uint32_t tx_cnt;	/* payload bytes sent to the guest */
	int credit_asked;

	/* guest -> host */
	uint8_t *tx;		/* ring of VSOCK_BUF_ALLOC bytes not yet sent to the host */
	uint32_t tx_head, tx_len;
	uint32_t fwd_cnt;	/* guest bytes passed on to the host socket */
	uint32_t fwd_cnt_sent;	/* fwd_cnt the guest last heard from us */
	uint32_t guest_shut;	/* VIRTIO_VSOCK_SHUTDOWN_* the guest sent */
	int wr_shut;
	char hello[24];		/* "OK <port>\n" for a host client, sent before any data */
	uint32_t hello_off, hello_len;
};

struct vsock {
	struct virtio_dev *dev;
	uint64_t cid;
	/* Room left in sun_path for "_<port>": the guest-initiated sockets. */
	char uds[sizeof(((struct sockaddr_un *)0)->sun_path) - 11];
	int listen_fd;
	struct io_op listen_op;
	struct usock_acl acl;		/* who may connect to uds: its owner, root, group= */
	struct io_op cancel_op;		/* tags our cancel requests; its completions are ignored */
	struct vsock_conn *conns;	/* live connections */
	struct vsock_conn *dead;	/* closed, waiting for their polls to end */
	unsigned nconns;
	uint32_t next_port;
	/* RSTs owed to the guest for connections that no longer exist. */
	struct vsock_hdr ctrl[VSOCK_MAX_CTRL];
	unsigned ctrl_head, nctrl;
	/* An rx buffer taken from the ring but not yet filled. */
	struct virtq_chain rx_chain;
	int rx_held;
	uint32_t rx_gen;	/* the rx queue's gen when it was taken */
	int event_pending;	/* a TRANSPORT_RESET event waits for an event buffer */
	/*
	 * A TRANSPORT_RESET went to the guest and it has not yet handled it:
	 * a connection request sent now could be reset by it. The guest
	 * refills the event buffer after handling the event, so a new avail
	 * index on the event queue is the acknowledgement.
	 */
	int reset_unacked;
	uint16_t reset_avail;	/* the event queue's avail index when the event went */
	uint64_t reset_ns;
	int reset_tfd;		/* timerfd: the hold's deadline, should the guest never refill */
	struct io_op reset_op;
	int reset_on_resume;	/* restored from a device that had connections: reset them */
	uint32_t connect_timeout_ms;
	int req_tfd;		/* timerfd: the earliest host client's deadline */
	struct io_op req_op;
	uint64_t req_timer_at;	/* when req_tfd fires (ns, CLOCK_MONOTONIC); 0: disarmed */
	int reap_queued;	/* vsock_reap_call() is queued on the I/O thread */
	uint64_t rx_pkts, tx_pkts, resets_sent;
};

static void vsock_rx_run(struct vsock *vs);
static int vsock_reset_in_progress(struct vsock *vs);
static void conn_in_done(struct io_op *op, int res, unsigned flags);
static void conn_out_done(struct io_op *op, int res, unsigned flags);

/* A guest's mistake: logged, rate-limited so a guest cannot flood stderr. */
static void vsock_log(struct vsock *vs, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void vsock_log(struct vsock *vs, const char *fmt, ...)
{
	static struct log_limit lim = LOG_LIMIT("virtio-vsock");
	char msg[256];
	va_list ap;

	(void)vs;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_guest(&lim, "virtio-vsock: %s", msg);
}

static int rx_ready(const struct vsock *vs)
{
	return virtio_running(vs->dev) && vs->dev->queue_ready[VSOCK_RXQ];
}

/* Credit the guest has left for our data (5.10.6.3.1). */
static uint32_t conn_credit(const struct vsock_conn *c)
{
	uint32_t in_flight = c->tx_cnt - c->peer_fwd_cnt;

	return in_flight >= c->peer_buf_alloc ? 0 : c->peer_buf_alloc - in_flight;
}

static struct vsock_conn *conn_find(struct vsock *vs, uint32_t host_port, uint32_t guest_port)
{
	struct vsock_conn *c;

	for (c = vs->conns; c; c = c->next)
		if (c->host_port == host_port && c->guest_port == guest_port &&
		    c->state != CONN_HANDSHAKE)
			return c;
	return NULL;
}

static struct vsock_conn *conn_new(struct vsock *vs, int fd, enum conn_state state)
{
	struct vsock_conn *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->rx = malloc(VSOCK_RX_STAGE);
	if (!c->rx) {
		free(c);
		return NULL;
	}
	c->vs = vs;
	c->fd = fd;
	c->state = state;
	c->in_op.done = conn_in_done;
	c->out_op.done = conn_out_done;
	c->next = vs->conns;
	vs->conns = c;
	vs->nconns++;
	return c;
}

static void conn_free(struct vsock_conn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	free(c->rx);
	free(c->tx);
	free(c);
}

/* Owe the guest a control packet with no connection behind it. */
static void ctrl_push(struct vsock *vs, const struct vsock_hdr *h)
{
	if (vs->nctrl == VSOCK_MAX_CTRL)
		return;		/* the guest is not taking rx buffers: it loses RSTs */
	vs->ctrl[(vs->ctrl_head + vs->nctrl) % VSOCK_MAX_CTRL] = *h;
	vs->nctrl++;
}

/* Owe the guest a RST in answer to packet h (addresses swapped). */
static void reply_rst(struct vsock *vs, const struct vsock_hdr *h)
{
	struct vsock_hdr r = {
		.src_cid = h->dst_cid,
		.dst_cid = h->src_cid,
		.src_port = h->dst_port,
		.dst_port = h->src_port,
		.type = VIRTIO_VSOCK_TYPE_STREAM,
		.op = VIRTIO_VSOCK_OP_RST,
	};

	ctrl_push(vs, &r);
}

static void cancel_done(struct io_op *op, int res, unsigned flags)
{
	(void)op;
	(void)res;	/* -ENOENT or -EALREADY when the poll ended first: fine */
	(void)flags;
}

/* Cancel a poll; the poll itself still completes once (-ECANCELED or its result). */
static void conn_cancel(struct vsock *vs, struct io_op *op)
{
	struct io_uring_sqe *sqe = ioloop_sqe(vs->dev->loop, &vs->cancel_op);

	if (sqe)
		io_uring_prep_cancel(sqe, op, 0);
}

/*
 * Free closed connections whose polls have ended, and cancel the polls of
 * those closed off the I/O thread. I/O thread, device lock held.
 */
static void vsock_reap(struct vsock *vs)
{
	struct vsock_conn **p = &vs->dead, *c;

	while ((c = *p)) {
		if (c->need_cancel) {
			c->need_cancel = 0;
			if (c->in_armed)
				conn_cancel(vs, &c->in_op);
			if (c->out_armed)
				conn_cancel(vs, &c->out_op);
		}
		if (c->inflight == 0) {
			*p = c->next;
			conn_free(c);
		} else {
			p = &c->next;
		}
	}
}

static void vsock_reap_call(void *arg)
{
	struct vsock *vs = arg;

	pthread_mutex_lock(&vs->dev->lock);
	vs->reap_queued = 0;
	vsock_reap(vs);
	pthread_mutex_unlock(&vs->dev->lock);
}

/* Get vsock_reap() run on the I/O thread (from any thread, device lock held). */
static void vsock_reap_later(struct vsock *vs)
{
	if (!vs->dead || vs->reap_queued)
		return;
	if (ioloop_call(vs->dev->loop, vsock_reap_call, vs) == 0)
		vs->reap_queued = 1;
	/* Else the next kick or completion reaps them. */
}

/*
 * Take c off the live list and close the host side. The socket is shut down
 * at once (its peer sees EOF now, and pending polls wake); the fd and memory
 * go when its polls have completed. Any thread, device lock held; off the
 * I/O thread the caller must get vsock_reap() run there.
 */
static void conn_unlink(struct vsock_conn *c)
{
	struct vsock *vs = c->vs;
	struct vsock_conn **p;

	for (p = &vs->conns; *p; p = &(*p)->next) {
		if (*p == c) {
			*p = c->next;
			break;
		}
	}
	vs->nconns--;
	if (c->fd >= 0)
		shutdown(c->fd, SHUT_RDWR);
	c->closing = 1;
	c->need_cancel = 1;
	c->next = vs->dead;
	vs->dead = c;
}

/* Close c (I/O thread). */
static void conn_close(struct vsock_conn *c)
{
	conn_unlink(c);
	vsock_reap(c->vs);
}

/* Close c and tell the guest with a RST (I/O thread). */
static void conn_reset(struct vsock_conn *c)
{
	struct vsock_hdr h = {
		.src_cid = VMADDR_CID_HOST,
		.dst_cid = c->vs->cid,
		.src_port = c->host_port,
		.dst_port = c->guest_port,
		.type = VIRTIO_VSOCK_TYPE_STREAM,
		.op = VIRTIO_VSOCK_OP_RST,
	};

	/* A host client the guest never heard of needs no RST. */
	if (c->state != CONN_HANDSHAKE && !(c->state == CONN_REQUESTED && (c->pending & PEND_REQUEST))) {
		ctrl_push(c->vs, &h);
		c->vs->resets_sent++;
	}
	conn_close(c);
}

/* Close every connection: device reset, transport reset, destroy. */
static void vsock_close_all(struct vsock *vs)
{
	while (vs->conns)
		conn_unlink(vs->conns);
	vs->nctrl = 0;
}

/* Wait for fd to become readable (in) or writable (out): a one-shot poll. */
static void conn_arm(struct vsock_conn *c, int out)
{
	struct io_op *op = out ? &c->out_op : &c->in_op;
	int *armed = out ? &c->out_armed : &c->in_armed;
	struct io_uring_sqe *sqe;

	if (*armed || c->closing)
		return;
	sqe = ioloop_sqe(c->vs->dev->loop, op);
	if (!sqe)
		return;
	io_uring_prep_poll_add(sqe, c->fd, out ? POLLOUT : POLLIN);
	*armed = 1;
	c->inflight++;
}

/*
 * Pass what the guest sent on to the host socket, without blocking, and
 * finish a shutdown the guest asked for once everything is out. I/O thread.
 * Returns -1 if c was closed.
 */
static int conn_flush(struct vsock_conn *c)
{
	while (c->hello_off < c->hello_len) {
		ssize_t n = send(c->fd, c->hello + c->hello_off, c->hello_len - c->hello_off,
				 MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
			if (errno == EAGAIN)
				conn_arm(c, 1);
			return 0;
		}
		if (n < 0) {
			conn_reset(c);
			return -1;
		}
		c->hello_off += (uint32_t)n;
	}
	while (c->tx_len) {
		uint32_t first = VSOCK_BUF_ALLOC - c->tx_head;
		struct iovec iov[2];
		struct msghdr msg = { .msg_iov = iov, .msg_iovlen = 1 };
		ssize_t n;

		if (first > c->tx_len)
			first = c->tx_len;
		iov[0] = (struct iovec){ c->tx + c->tx_head, first };
		if (first < c->tx_len) {
			iov[1] = (struct iovec){ c->tx, c->tx_len - first };
			msg.msg_iovlen = 2;
		}
		n = sendmsg(c->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN) {
			conn_arm(c, 1);
			break;
		}
		if (n < 0) {
			conn_reset(c);	/* the host side went away */
			return -1;
		}
		c->tx_head = (uint32_t)((c->tx_head + (uint32_t)n) % VSOCK_BUF_ALLOC);
		c->tx_len -= (uint32_t)n;
		c->fwd_cnt += (uint32_t)n;
	}
	/*
	 * A guest that ran out of credit waits for our fwd_cnt; by the time
	 * it is stalled we have freed all VSOCK_BUF_ALLOC bytes, so telling it
	 * every quarter is enough and never deadlocks.
	 */
	if (c->fwd_cnt - c->fwd_cnt_sent >= VSOCK_BUF_ALLOC / 4)
		c->pending |= PEND_CREDIT_UPDATE;
	if (c->tx_len == 0 && c->hello_off == c->hello_len) {
		if ((c->guest_shut & VIRTIO_VSOCK_SHUTDOWN_SEND) && !c->wr_shut) {
			shutdown(c->fd, SHUT_WR);
			c->wr_shut = 1;
		}
		/* The guest closed its socket: the RST completes its close (5.10.6.5). */
		if (c->guest_shut == VIRTIO_VSOCK_SHUTDOWN_BOTH) {
			conn_reset(c);
			return -1;
		}
	}
	return 0;
}

/*
 * Read what the host sent, up to the guest's credit. I/O thread. Returns -1
 * if c was closed.
 */
static int conn_read(struct vsock_conn *c)
{
	uint32_t want = conn_credit(c);
	ssize_t n;

	if (want > VSOCK_RX_STAGE)
		want = VSOCK_RX_STAGE;
	if (want == 0)
		return 0;	/* wait for the guest's credit before reading more */
	n = recv(c->fd, c->rx, want, MSG_DONTWAIT);
	if (n < 0 && errno == EAGAIN) {
		conn_arm(c, 0);
		return 0;
	}
	if (n < 0 && errno == EINTR)
		return 0;
	if (n < 0) {
		conn_reset(c);
		return -1;
	}
	if (n == 0) {
		c->host_eof = 1;
		return 0;
	}
	c->rx_off = 0;
	c->rx_len = (uint32_t)n;
	return 0;
}

/* Does the host have bytes for the guest, read or not? */
static int conn_has_input(struct vsock_conn *c)
{
	char b;

	return c->rx_len || (!c->host_eof && recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 1);
}

/* Make sure an rx buffer is held; 0 when the guest has none to give. */
static int rx_take(struct vsock *vs)
{
	struct kiln_err err;
	int r;

	/* One held across a disabling of the queue went with its ring. */
	if (vs->rx_held && vs->rx_gen == vs->dev->vq[VSOCK_RXQ].gen)
		return 1;
	vs->rx_held = 0;
	r = virtq_pop(&vs->dev->vq[VSOCK_RXQ], vs->dev->mem, &vs->rx_chain, &err);
	if (r < 0) {
		virtio_needs_reset(vs->dev, err.msg);
		return 0;
	}
	if (r == 1 && vs->rx_chain.write_len < VSOCK_HDR) {
		virtio_needs_reset(vs->dev, "rx buffer shorter than a packet header");
		return 0;
	}
	vs->rx_held = r;
	vs->rx_gen = vs->dev->vq[VSOCK_RXQ].gen;
	return r;
}

/* Fill the held rx buffer with h and payload (at most what fits); returns payload bytes. */
static uint32_t rx_put(struct vsock *vs, struct vsock_hdr *h, const uint8_t *payload, uint32_t len)
{
	struct virtq_chain *ch = &vs->rx_chain;
	uint64_t room = ch->write_len - VSOCK_HDR;

	if (len > room)
		len = (uint32_t)room;
	h->len = len;
	iov_from_buf(ch->write, ch->nwrite, 0, h, VSOCK_HDR);
	if (len)
		iov_from_buf(ch->write, ch->nwrite, VSOCK_HDR, payload, len);
	virtq_push_gen(&vs->dev->vq[VSOCK_RXQ], vs->rx_gen, ch->head, (uint32_t)VSOCK_HDR + len);
	vs->rx_held = 0;
	vs->rx_pkts++;
	return len;
}

/* Have req_tfd fire by at (ns, CLOCK_MONOTONIC). Any thread, device lock held. */
static void req_timer_arm(struct vsock *vs, uint64_t at)
{
	struct itimerspec its = { .it_value = { .tv_sec = (time_t)(at / 1000000000ULL),
						.tv_nsec = (long)(at % 1000000000ULL) } };

	if (vs->req_tfd < 0 || (vs->req_timer_at && vs->req_timer_at <= at))
		return;
	if (timerfd_settime(vs->req_tfd, TFD_TIMER_ABSTIME, &its, NULL) == 0)
		vs->req_timer_at = at;
}

/*
 * Send the guest the next packet connection c owes it, into the held rx
 * buffer. Returns 1 if a packet went, 0 if c had nothing to send.
 */
static int conn_rx_one(struct vsock_conn *c)
{
	struct vsock *vs = c->vs;
	struct vsock_hdr h = {
		.src_cid = VMADDR_CID_HOST,
		.dst_cid = vs->cid,
		.src_port = c->host_port,
		.dst_port = c->guest_port,
		.type = VIRTIO_VSOCK_TYPE_STREAM,
		.buf_alloc = VSOCK_BUF_ALLOC,
		.fwd_cnt = c->fwd_cnt,
	};
	uint32_t n;

	if (c->pending & PEND_REQUEST) {
		if (vsock_reset_in_progress(vs))
			return 0;	/* sent once the guest has dropped its old connections */
		h.op = VIRTIO_VSOCK_OP_REQUEST;
		c->pending &= ~(unsigned)PEND_REQUEST;
	} else if (c->pending & PEND_RESPONSE) {
		h.op = VIRTIO_VSOCK_OP_RESPONSE;
		c->pending &= ~(unsigned)PEND_RESPONSE;
	} else if (c->state != CONN_ESTABLISHED) {
		return 0;
	} else {
		if (c->rx_len == 0 && !c->host_eof && !(c->guest_shut & VIRTIO_VSOCK_SHUTDOWN_RCV) &&
		    conn_read(c) < 0)
			return 0;
		if (c->rx_len && conn_credit(c)) {
			/* The guest may have shrunk its buffer since we read: obey it. */
			n = c->rx_len < conn_credit(c) ? c->rx_len : conn_credit(c);
			h.op = VIRTIO_VSOCK_OP_RW;
			n = rx_put(vs, &h, c->rx + c->rx_off, n);
			c->rx_off += n;
			c->rx_len -= n;
			c->tx_cnt += n;
			c->fwd_cnt_sent = c->fwd_cnt;
			c->pending &= ~(unsigned)PEND_CREDIT_UPDATE;
			return 1;
		}
		if (!c->credit_asked && !conn_credit(c) && conn_has_input(c)) {
			/* Starved with data waiting: ask (5.10.6.3.1); the guest also updates unasked. */
			h.op = VIRTIO_VSOCK_OP_CREDIT_REQUEST;
			c->credit_asked = 1;
		} else if (!c->rx_len && c->host_eof && !c->eof_sent) {
			h.op = VIRTIO_VSOCK_OP_SHUTDOWN;
			h.flags = VIRTIO_VSOCK_SHUTDOWN_SEND;
			c->eof_sent = 1;
		} else if (c->pending & PEND_CREDIT_UPDATE) {
			h.op = VIRTIO_VSOCK_OP_CREDIT_UPDATE;
		} else {
			return 0;
		}
	}
	c->pending &= ~(unsigned)PEND_CREDIT_UPDATE;
	c->fwd_cnt_sent = c->fwd_cnt;
	rx_put(vs, &h, NULL, 0);
	return 1;
}

/*
 * Fill the guest's rx buffers with what is owed: RSTs first, then one
 * packet per connection per round, so no connection starves the others.
 * I/O thread (or any thread for a device never started), device lock held.
 */
static void vsock_rx_run(struct vsock *vs)
{
	uint64_t before = vs->rx_pkts;
	int progress = 1;

	while (progress && rx_ready(vs)) {
		struct vsock_conn *c, *next;

		progress = 0;
		if (!rx_take(vs))
			break;
		if (vs->nctrl) {
			rx_put(vs, &vs->ctrl[vs->ctrl_head], NULL, 0);
			vs->ctrl_head = (vs->ctrl_head + 1) % VSOCK_MAX_CTRL;
			vs->nctrl--;
			progress = 1;
			continue;
		}
		for (c = vs->conns; c; c = next) {
			next = c->next;		/* conn_rx_one may close c, never another */
			if (!rx_take(vs))
				goto out;
			progress |= conn_rx_one(c);
		}
	}
out:
	if (vs->rx_pkts != before)
		virtio_signal_used(vs->dev, VSOCK_RXQ);
}

/* ---- host-initiated connections ------------------------------------------ */

static uint32_t alloc_host_port(struct vsock *vs, uint32_t guest_port)
{
	for (;;) {
		uint32_t p = vs->next_port++;

		if (vs->next_port == 0xffffffffU || vs->next_port < VSOCK_HOST_PORT_BASE)
			vs->next_port = VSOCK_HOST_PORT_BASE;
		if (!conn_find(vs, p, guest_port))
			return p;
	}
}

/* Parse "CONNECT <port>\n" from a host client. I/O thread. */
static void conn_handshake(struct vsock_conn *c)
{
	struct vsock *vs = c->vs;
	char line[VSOCK_LINE_MAX + 1], *nl, *end;
	unsigned long port;
	uint32_t used;
	ssize_t n;

	n = recv(c->fd, c->rx + c->rx_len, VSOCK_LINE_MAX - c->rx_len, MSG_DONTWAIT);
	if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
		conn_arm(c, 0);
		return;
	}
	if (n <= 0) {
		conn_close(c);
		return;
	}
	c->rx_len += (uint32_t)n;
	memcpy(line, c->rx, c->rx_len);
	line[c->rx_len] = '\0';
	nl = memchr(line, '\n', c->rx_len);
	if (!nl) {
		if (c->rx_len == VSOCK_LINE_MAX)
			conn_close(c);	/* not a CONNECT line */
		else
			conn_arm(c, 0);
		return;
	}
	used = (uint32_t)(nl - line) + 1;
	*nl = '\0';
	if (nl > line && nl[-1] == '\r')
		nl[-1] = '\0';
	errno = 0;
	if (strncmp(line, "CONNECT ", 8) != 0 || line[8] < '0' || line[8] > '9' ||
	    (port = strtoul(line + 8, &end, 10), errno) || *end || port > 0xffffffffUL ||
	    !rx_ready(vs)) {
		conn_close(c);	/* not our protocol, or no guest driver to ask */
		return;
	}
	/* Bytes after the line are the start of the stream. */
	c->rx_off = used;
	c->rx_len -= used;
	c->guest_port = (uint32_t)port;
	c->host_port = alloc_host_port(vs, c->guest_port);
	c->state = CONN_REQUESTED;
	c->pending |= PEND_REQUEST;
	vsock_rx_run(vs);
}

static void listen_done(struct io_op *op, int res, unsigned flags)
{
	struct vsock *vs = (struct vsock *)((char *)op - offsetof(struct vsock, listen_op));

	(void)flags;
	if (res < 0)
		return;
	pthread_mutex_lock(&vs->dev->lock);
	for (;;) {
		struct vsock_conn *c;
		int fd = accept4(vs->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0)
			break;
		/* Another user (whatever the file's mode now says) is closed before it can send a byte. */
		if (!usock_peer_check(&vs->acl, fd)) {
			close(fd);
			continue;
		}
		if (vs->nconns >= VSOCK_MAX_CONNS || !(c = conn_new(vs, fd, CONN_HANDSHAKE))) {
			close(fd);
			continue;
		}
		/* From here the client has connect-timeout to send its line and the guest to answer it. */
		c->deadline = now_ns() + (uint64_t)vs->connect_timeout_ms * 1000000ULL;
		req_timer_arm(vs, c->deadline);
		conn_handshake(c);
	}
	pthread_mutex_unlock(&vs->dev->lock);
}

/* The hold's deadline passed: send what waits, acknowledged or not. */
static void reset_timer_done(struct io_op *op, int res, unsigned flags)
{
	struct vsock *vs = (struct vsock *)((char *)op - offsetof(struct vsock, reset_op));
	uint64_t n;

	(void)flags;
	if (res < 0 || read(vs->reset_tfd, &n, sizeof(n)) != sizeof(n))
		return;
	pthread_mutex_lock(&vs->dev->lock);
	vsock_rx_run(vs);
	pthread_mutex_unlock(&vs->dev->lock);
}

/*
 * A host client's deadline passed. A guest that has not answered (or not
 * even taken) its REQUEST in time is treated as having refused it (RST to
 * the guest if it saw the REQUEST, EOF without an OK line to the client),
 * so a hung or hostile guest cannot hold host clients or connection slots
 * for ever; nor can a client that never sends its CONNECT line.
 */
static void req_timer_done(struct io_op *op, int res, unsigned flags)
{
	struct vsock *vs = (struct vsock *)((char *)op - offsetof(struct vsock, req_op));
	struct vsock_conn *c, *next;
	uint64_t n, now, soonest = 0;

	(void)flags;
	if (res < 0 || read(vs->req_tfd, &n, sizeof(n)) != sizeof(n))
		return;
	pthread_mutex_lock(&vs->dev->lock);
	vs->req_timer_at = 0;
	now = now_ns();
	for (c = vs->conns; c; c = next) {
		next = c->next;
		if (c->state != CONN_REQUESTED && c->state != CONN_HANDSHAKE)
			continue;
		if (c->deadline > now) {
			if (!soonest || c->deadline < soonest)
				soonest = c->deadline;
			continue;
		}
		if (c->state == CONN_REQUESTED)
			vsock_log(vs, "the guest did not %s a connection to its port %u in %u ms: closed (--vsock connect-timeout=MS)",
				  c->pending & PEND_REQUEST ? "take" : "answer", c->guest_port, vs->connect_timeout_ms);
		conn_reset(c);
	}
	if (soonest)
		req_timer_arm(vs, soonest);
	vsock_rx_run(vs);
	pthread_mutex_unlock(&vs->dev->lock);
}

/* ---- completions ------------------------------------------------------------ */

static void conn_in_done(struct io_op *op, int res, unsigned flags)
{
	struct vsock_conn *c = (struct vsock_conn *)((char *)op - offsetof(struct vsock_conn, in_op));
	struct vsock *vs = c->vs;

	(void)res;
	(void)flags;
	pthread_mutex_lock(&vs->dev->lock);
	c->in_armed = 0;
	c->inflight--;
	if (c->closing)
		vsock_reap(vs);
	else if (c->state == CONN_HANDSHAKE)
		conn_handshake(c);
	else
		vsock_rx_run(vs);
	pthread_mutex_unlock(&vs->dev->lock);
}

static void conn_out_done(struct io_op *op, int res, unsigned flags)
{
	struct vsock_conn *c = (struct vsock_conn *)((char *)op - offsetof(struct vsock_conn, out_op));
	struct vsock *vs = c->vs;

	(void)flags;
	pthread_mutex_lock(&vs->dev->lock);
	c->out_armed = 0;
	c->inflight--;
	if (c->closing) {
		vsock_reap(vs);
	} else if (c->state == CONN_CONNECTING) {
		int soerr = 0;
		socklen_t sl = sizeof(soerr);

		if (res < 0 || getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0 || soerr) {
			conn_reset(c);
		} else {
			c->state = CONN_ESTABLISHED;
			c->pending |= PEND_RESPONSE;
		}
		vsock_rx_run(vs);
	} else {
		conn_flush(c);
		vsock_rx_run(vs);
	}
	pthread_mutex_unlock(&vs->dev->lock);
}

/* ---- guest packets (tx queue) ---------------------------------------------- */

/* A guest connection to CID 2 port P: connect to the unix socket PATH_P. */
static void conn_from_guest(struct vsock *vs, const struct vsock_hdr *h)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct vsock_conn *c;
	int fd, r;

	if (vs->nconns >= VSOCK_MAX_CONNS) {
		vsock_log(vs, "guest opened more than %d connections; refusing", VSOCK_MAX_CONNS);
		reply_rst(vs, h);
		return;
	}
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s_%" PRIu32, vs->uds, h->dst_port);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		reply_rst(vs, h);
		return;
	}
	r = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
	if (r < 0 && errno != EINPROGRESS) {
		/* Nobody listens there (or its backlog is full): refuse. */
		close(fd);
		reply_rst(vs, h);
		return;
	}
	c = conn_new(vs, fd, r == 0 ? CONN_ESTABLISHED : CONN_CONNECTING);
	if (!c) {
		close(fd);
		reply_rst(vs, h);
		return;
	}
	c->host_port = h->dst_port;
	c->guest_port = h->src_port;
	c->peer_buf_alloc = h->buf_alloc;
	c->peer_fwd_cnt = h->fwd_cnt;
	if (r == 0)
		c->pending |= PEND_RESPONSE;
	else
		conn_arm(c, 1);
}

/* Guest bytes for the host: buffer them, at most our advertised buf_alloc. */
static void conn_rw(struct vsock_conn *c, const struct virtq_chain *ch, uint32_t len)
{
	uint32_t tail, first;

	if (c->state != CONN_ESTABLISHED || (c->guest_shut & VIRTIO_VSOCK_SHUTDOWN_SEND)) {
		conn_reset(c);
		return;
	}
	if (len == 0)
		return;
	if (c->tx_len + len > VSOCK_BUF_ALLOC) {
		vsock_log(c->vs, "guest sent %u bytes beyond its credit on port %u; resetting the connection",
			  c->tx_len + len - VSOCK_BUF_ALLOC, c->guest_port);
		conn_reset(c);
		return;
	}
	if (!c->tx && !(c->tx = malloc(VSOCK_BUF_ALLOC))) {
		conn_reset(c);
		return;
	}
	tail = (c->tx_head + c->tx_len) % VSOCK_BUF_ALLOC;
	first = VSOCK_BUF_ALLOC - tail < len ? VSOCK_BUF_ALLOC - tail : len;
	iov_to_buf(ch->read, ch->nread, VSOCK_HDR, c->tx + tail, first);
	if (first < len)
		iov_to_buf(ch->read, ch->nread, VSOCK_HDR + first, c->tx, len - first);
	c->tx_len += len;
	conn_flush(c);
}

/* One packet from the guest. Returns -1 if the device needs a reset. */
static int vsock_tx_packet(struct vsock *vs, const struct virtq_chain *ch)
{
	struct vsock_hdr h;
	struct vsock_conn *c;

	if (ch->read_len < VSOCK_HDR) {
		virtio_needs_reset(vs->dev, "tx packet shorter than its header");
		return -1;
	}
	iov_to_buf(ch->read, ch->nread, 0, &h, VSOCK_HDR);
	vs->tx_pkts++;
	if (h.src_cid != vs->cid) {
		vsock_log(vs, "dropped a packet from CID %" PRIu64 " (the guest is CID %" PRIu64 ")",
			  h.src_cid, vs->cid);
		return 0;
	}
	if (h.op == VIRTIO_VSOCK_OP_RST && !conn_find(vs, h.dst_port, h.src_port))
		return 0;	/* never answer a RST */
	if (h.dst_cid != VMADDR_CID_HOST || h.type != VIRTIO_VSOCK_TYPE_STREAM) {
		/* Only stream connections to the host exist here: refuse the rest. */
		reply_rst(vs, &h);
		return 0;
	}
	c = conn_find(vs, h.dst_port, h.src_port);
	if (h.len > ch->read_len - VSOCK_HDR || h.len > VSOCK_MAX_PAYLOAD) {
		vsock_log(vs, "packet length %" PRIu32 " beyond its %" PRIu64 "-byte buffer (at most %d); resetting",
			  h.len, ch->read_len - VSOCK_HDR, VSOCK_MAX_PAYLOAD);
		if (c)
			conn_reset(c);
		else
			reply_rst(vs, &h);
		return 0;
	}
	if (!c) {
		if (h.op == VIRTIO_VSOCK_OP_REQUEST)
			conn_from_guest(vs, &h);
		else
			reply_rst(vs, &h);
		return 0;
	}
	c->peer_buf_alloc = h.buf_alloc;
	c->peer_fwd_cnt = h.fwd_cnt;
	if (conn_credit(c))
		c->credit_asked = 0;
	switch (h.op) {
	case VIRTIO_VSOCK_OP_RESPONSE:
		if (c->state != CONN_REQUESTED || (c->pending & PEND_REQUEST)) {
			conn_reset(c);
			break;
		}
		c->state = CONN_ESTABLISHED;
		c->hello_len = (uint32_t)snprintf(c->hello, sizeof(c->hello), "OK %" PRIu32 "\n", c->host_port);
		conn_flush(c);
		break;
	case VIRTIO_VSOCK_OP_RST:
		conn_close(c);
		break;
	case VIRTIO_VSOCK_OP_SHUTDOWN:
		c->guest_shut |= h.flags & VIRTIO_VSOCK_SHUTDOWN_BOTH;
		if (c->guest_shut & VIRTIO_VSOCK_SHUTDOWN_RCV)
			c->rx_len = 0;	/* the guest reads no more: drop what it would get */
		conn_flush(c);
		break;
	case VIRTIO_VSOCK_OP_RW:
		conn_rw(c, ch, h.len);
		break;
	case VIRTIO_VSOCK_OP_CREDIT_UPDATE:
		break;		/* the credit was taken above; vsock_rx_run resumes sending */
	case VIRTIO_VSOCK_OP_CREDIT_REQUEST:
		c->pending |= PEND_CREDIT_UPDATE;
		break;
	default:	/* REQUEST on a live connection, or an op we do not know */
		vsock_log(vs, "unexpected op %u on port %" PRIu32 "; resetting the connection", h.op, h.src_port);
		conn_reset(c);
		break;
	}
	return 0;
}

/* Hold connection requests until the guest has handled a TRANSPORT_RESET (at most 2 s). */
static int vsock_reset_in_progress(struct vsock *vs)
{
	struct virtio_dev *d = vs->dev;

	if (!vs->reset_unacked)
		return 0;
	if (!d->queue_ready[VSOCK_EVQ] || !d->vq[VSOCK_EVQ].avail ||
	    __atomic_load_n(&d->vq[VSOCK_EVQ].avail[1], __ATOMIC_ACQUIRE) != vs->reset_avail ||
	    now_ns() - vs->reset_ns >= VSOCK_RESET_HOLD_S * 1000000000ULL)
		vs->reset_unacked = 0;
	return vs->reset_unacked;
}

/* Post a TRANSPORT_RESET event if one is owed and the guest gave a buffer. */
static void vsock_event_run(struct vsock *vs)
{
	static __thread struct virtq_chain chain;
	struct virtio_dev *d = vs->dev;
	struct virtq_chain *ch = &chain;
	struct kiln_err err;
	uint32_t id = VIRTIO_VSOCK_EVENT_TRANSPORT_RESET;
	int r;

	if (!vs->event_pending || !virtio_running(d) || !d->queue_ready[VSOCK_EVQ])
		return;
	r = virtq_pop(&d->vq[VSOCK_EVQ], d->mem, ch, &err);
	if (r < 0) {
		virtio_needs_reset(d, err.msg);
		return;
	}
	if (r == 0)
		return;
	if (ch->write_len < sizeof(id)) {
		virtio_needs_reset(d, "event buffer shorter than an event");
		return;
	}
	iov_from_buf(ch->write, ch->nwrite, 0, &id, sizeof(id));
	virtq_push(&d->vq[VSOCK_EVQ], ch->head, sizeof(id));
	vs->event_pending = 0;
	vs->reset_unacked = 1;
	vs->reset_avail = __atomic_load_n(&d->vq[VSOCK_EVQ].avail[1], __ATOMIC_ACQUIRE);
	vs->reset_ns = now_ns();
	/*
	 * The refill is the acknowledgement, so it must be kicked: the ring
	 * still holds spare event buffers, and with EVENT_IDX the driver would
	 * otherwise add one silently and held requests would wait for ever.
	 */
	virtq_kick_on_next(&d->vq[VSOCK_EVQ]);
	if (vs->reset_tfd >= 0) {
		struct itimerspec its = { .it_value = { .tv_sec = VSOCK_RESET_HOLD_S } };

		timerfd_settime(vs->reset_tfd, 0, &its, NULL);
	}
	virtio_signal_used(d, VSOCK_EVQ);
}

static void vsock_notify(struct virtio_dev *d, unsigned q)
{
	static __thread struct virtq_chain chain;
	struct vsock *vs = d->priv;
	struct kiln_err err;
	int r, pushed = 0;

	vsock_reap(vs);
	if (q == VSOCK_TXQ) {
		while ((r = virtq_pop(&d->vq[VSOCK_TXQ], d->mem, &chain, &err)) == 1) {
			if (vsock_tx_packet(vs, &chain) < 0)
				return;
			virtq_push(&d->vq[VSOCK_TXQ], chain.head, 0);
			pushed = 1;
		}
		if (r < 0)
			virtio_needs_reset(d, err.msg);
		if (pushed)
			virtio_signal_used(d, VSOCK_TXQ);
	} else if (q == VSOCK_EVQ) {
		vsock_event_run(vs);
	}
	vsock_rx_run(vs);
}

/* ---- transport callbacks ---------------------------------------------------- */

static void vsock_config_read(struct virtio_dev *d, uint32_t off, void *buf, uint32_t len)
{
	struct vsock *vs = d->priv;
	uint64_t cid = vs->cid;		/* struct virtio_vsock_config (5.10.4) */

	if (off < sizeof(cid) && len <= sizeof(cid) - off)
		memcpy(buf, (uint8_t *)&cid + off, len);
}

/* Device reset (vCPU thread): every connection goes; the I/O thread frees them. */
static void vsock_reset(struct virtio_dev *d)
{
	struct vsock *vs = d->priv;

	vsock_close_all(vs);
	vs->rx_held = 0;	/* the ring is gone with the reset */
	vs->event_pending = 0;
	vs->reset_unacked = 0;
	vsock_reap_later(vs);
}

/* Drop every connection and tell the guest (device lock held). */
static void vsock_transport_reset(struct vsock *vs)
{
	vsock_close_all(vs);
	vs->event_pending = 1;
	vsock_event_run(vs);
	vsock_reap_later(vs);
}

void virtio_vsock_transport_reset(struct virtio_dev *d)
{
	pthread_mutex_lock(&d->lock);
	vsock_transport_reset(d->priv);
	pthread_mutex_unlock(&d->lock);
}

/*
 * Nothing here writes guest memory except on the I/O thread in answer to a
 * completion, under the device lock, so a snapshot taken there with the
 * vCPUs paused has nothing to wait for: no inflight callback.
 */

static int vsock_save(struct virtio_dev *d, struct snap_buf *w)
{
	struct vsock *vs = d->priv;

	/*
	 * An rx buffer taken but not yet filled goes back to the ring, or a
	 * restored device would never fill or return it.
	 */
	if (vs->rx_held) {
		if (vs->rx_gen == d->vq[VSOCK_RXQ].gen)
			d->vq[VSOCK_RXQ].last_avail--;
		vs->rx_held = 0;
	}
	snapw_u64(w, vs->cid);
	/*
	 * Whether the guest may hold connections the next VMM knows nothing of:
	 * without any (a template, taken at agent-ready), a restore needs no
	 * TRANSPORT_RESET, and its first connection need not wait for one.
	 */
	snapw_u8(w, vs->nconns || vs->nctrl);
	return 0;
}

static int vsock_restore(struct virtio_dev *d, struct snap_rd *r, struct kiln_err *err)
{
	struct vsock *vs = d->priv;
	uint64_t cid = snapr_u64(r, "guest CID");
	/* (a state without the flag, from before it existed: reset to be safe) */
	uint8_t conns = snapr_left(r) ? snapr_u8(r, "connections flag") : 1;

	if (snapr_end(r, "virtio-vsock state") < 0)
		return kiln_fail(err, EINVAL, "virtio-vsock state: %s", r->err);
	/* The guest read its CID at probe time; its sockets are bound to it. */
	if (cid != vs->cid)
		return kiln_fail(err, EINVAL, "virtio-vsock state: the snapshot's guest has CID %" PRIu64 ", --vsock gives cid=%" PRIu64,
				 cid, vs->cid);
	if (conns > 1)
		return kiln_fail(err, EINVAL, "virtio-vsock state: connections flag %u, not 0 or 1", conns);
	vs->reset_on_resume = conns;
	return 0;
}

/* The guest's connections ended with the old VMM: make it drop them now. */
static void vsock_resumed(struct virtio_dev *d)
{
	struct vsock *vs = d->priv;

	if (vs->reset_on_resume)
		vsock_transport_reset(vs);
	vs->reset_on_resume = 0;
}

static int vsock_stats(struct virtio_dev *d, char *buf, size_t len)
{
	struct vsock *vs = d->priv;

	return snprintf(buf, len, ",\"rx_packets\":%" PRIu64 ",\"tx_packets\":%" PRIu64
			",\"resets_sent\":%" PRIu64 ",\"connections\":%u",
			vs->rx_pkts, vs->tx_pkts, vs->resets_sent, vs->nconns);
}

/* The I/O thread has stopped: close and free everything. */
static void vsock_destroy(struct virtio_dev *d)
{
	struct vsock *vs = d->priv;
	struct vsock_conn *c;

	if (!vs)
		return;
	vsock_close_all(vs);
	while ((c = vs->dead)) {
		vs->dead = c->next;
		conn_free(c);
	}
	if (vs->listen_fd >= 0) {
		close(vs->listen_fd);
		unlink(vs->uds);
	}
	if (vs->reset_tfd >= 0)
		close(vs->reset_tfd);
	if (vs->req_tfd >= 0)
		close(vs->req_tfd);
	free(vs);
	d->priv = NULL;
}

/* The CID in a vsock spec, for a message: digits after "cid=", or "N". */
static const char *spec_cid(const char *spec, char out[24])
{
	const char *p = strstr(spec, "cid=");
	size_t n = 0;

	if (p && (p == spec || p[-1] == ','))
		for (p += 4; n < 20 && p[n] >= '0' && p[n] <= '9'; n++)
			out[n] = p[n];
	if (!n)
		out[n++] = 'N';
	out[n] = '\0';
	return out;
}

/* The host socket is the host's: a restore never opens one the snapshot names. */
static void vsock_spec_needs(const char *spec, char *buf, size_t len)
{
	char cid[24];

	snprintf(buf, len, "a vsock device: pass --vsock cid=%s,uds=PATH for it (a restore takes host sockets from its command line, never from the snapshot)",
		 spec_cid(spec, cid));
}

const struct virtio_dev_ops virtio_vsock_ops = {
	.name = "virtio-vsock",
	.device_id = VIRTIO_ID_VSOCK,
	.num_queues = 3,
	.queue_max = VSOCK_QUEUE_SIZE,
	.config_size = 8,
	.features = 1ULL << VIRTIO_VSOCK_F_STREAM,
	.config_read = vsock_config_read,
	.notify = vsock_notify,
	.reset = vsock_reset,
	.destroy = vsock_destroy,
	.save = vsock_save,
	.restore = vsock_restore,
	.resumed = vsock_resumed,
	.stats = vsock_stats,
	.kind = "vsock",
	.create = virtio_vsock_create,
	.spec_needs = vsock_spec_needs,
};

/* ---- creation ------------------------------------------------------------------ */

/* The decimal number after "key=" (klen bytes) in option p (len bytes), from lo to hi; -1 if not. */
static int opt_num(const char *p, size_t len, size_t klen, unsigned long long lo, unsigned long long hi,
		   unsigned long long *v)
{
	char num[24], *end;

	if (len - klen >= sizeof(num))
		return -1;
	memcpy(num, p + klen, len - klen);
	num[len - klen] = '\0';
	errno = 0;
	*v = strtoull(num, &end, 10);
	return errno || *end || num[0] < '0' || num[0] > '9' || *v < lo || *v > hi ? -1 : 0;
}

/* Parse "cid=N,uds=PATH[,connect-timeout=MS][,group=NAME]" (any order) into vs. */
static int vsock_parse(struct vsock *vs, const char *spec, struct kiln_err *err)
{
	const char *p = spec;
	int have_cid = 0;

	while (*p) {
		const char *comma = strchr(p, ',');
		size_t len = comma ? (size_t)(comma - p) : strlen(p);
		unsigned long long v;

		if (len > 4 && strncmp(p, "cid=", 4) == 0) {
			if (opt_num(p, len, 4, 3, VSOCK_CID_MAX, &v) < 0)
				goto bad_cid;
			vs->cid = v;
			have_cid = 1;
		} else if (len > 4 && strncmp(p, "uds=", 4) == 0) {
			if (len - 4 >= sizeof(vs->uds))
				return kiln_fail(err, ENAMETOOLONG, "--vsock %s: uds path longer than %zu bytes (unix socket paths are short; use a shorter directory)",
						 spec, sizeof(vs->uds) - 1);
			memcpy(vs->uds, p + 4, len - 4);
			vs->uds[len - 4] = '\0';
		} else if (len > 6 && strncmp(p, "group=", 6) == 0) {
			char name[64], what[300];
			int r;

			if (len - 6 >= sizeof(name))
				return kiln_fail(err, ENAMETOOLONG, "--vsock %s: group name longer than %zu bytes",
						 spec, sizeof(name) - 1);
			memcpy(name, p + 6, len - 6);
			name[len - 6] = '\0';
			snprintf(what, sizeof(what), "--vsock %s: group=%s", spec, name);
			r = usock_group_lookup(name, what, &vs->acl.group, err);
			if (r < 0)
				return r;
		} else if (len > 16 && strncmp(p, "connect-timeout=", 16) == 0) {
			if (opt_num(p, len, 16, 1, VSOCK_CONNECT_TIMEOUT_MAX_MS, &v) < 0)
				goto bad_timeout;
			vs->connect_timeout_ms = (uint32_t)v;
		} else {
			return kiln_fail(err, EINVAL, "--vsock %s: unknown option '%.*s' (expected cid=N,uds=PATH[,connect-timeout=MS][,group=NAME])",
					 spec, (int)len, p);
		}
		p += len + (comma ? 1 : 0);
	}
	if (!have_cid)
		return kiln_fail(err, EINVAL, "--vsock %s: cid=N is required (the guest's CID, 3 to %llu)",
				 spec, VSOCK_CID_MAX);
	if (!vs->uds[0])
		return kiln_fail(err, EINVAL, "--vsock %s: uds=PATH is required (the unix socket host programs connect to)",
				 spec);
	return 0;
bad_cid:
	return kiln_fail(err, EINVAL, "--vsock %s: cid must be a number from 3 to %llu (0-2 are reserved)",
			 spec, VSOCK_CID_MAX);
bad_timeout:
	return kiln_fail(err, EINVAL, "--vsock %s: connect-timeout must be a number of milliseconds from 1 to %d",
			 spec, VSOCK_CONNECT_TIMEOUT_MAX_MS);
}

/*
 * Listen on vs->uds, replacing a stale socket left by an earlier run: mode
 * 0600, or 0660 for group= (whose members, the owner and root may connect).
 */
static int vsock_listen(struct vsock *vs, struct kiln_err *err)
{
	int fd;

	snprintf(vs->acl.what, sizeof(vs->acl.what), "--vsock uds=%s", vs->uds);
	vs->acl.hint = "(--vsock ...,group=GROUP admits a group's members)";
	fd = usock_listen(vs->uds, SOCK_NONBLOCK, 64, &vs->acl, err);
	if (fd < 0)
		return fd;
	vs->listen_fd = fd;
	return 0;
}

/* A timerfd in *tfd whose expiries the I/O loop hands to done. */
static int timer_watch(struct ioloop *loop, int *tfd, struct io_op *op,
		       void (*done)(struct io_op *, int, unsigned), struct kiln_err *err)
{
	int r;

	*tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (*tfd < 0)
		return kiln_fail(err, errno, "virtio-vsock: timerfd_create: %s", strerror(errno));
	op->done = done;
	r = ioloop_watch(loop, *tfd, op);
	if (r < 0)
		return kiln_fail(err, -r, "virtio-vsock: cannot watch its timer");
	return 0;
}

int virtio_vsock_create(struct virtio_dev *d, const char *spec, struct vm *vm,
			const struct guest_mem *mem, struct ioloop *loop,
			uint64_t base, uint32_t irq, struct kiln_err *err)
{
	struct vsock *vs = calloc(1, sizeof(*vs));
	int r;

	if (!vs)
		return kiln_fail(err, ENOMEM, "out of memory");
	vs->listen_fd = -1;
	vs->acl.group = USOCK_NO_GROUP;
	vs->reset_tfd = -1;
	vs->req_tfd = -1;
	vs->connect_timeout_ms = VSOCK_CONNECT_TIMEOUT_MS;
	vs->next_port = VSOCK_HOST_PORT_BASE;
	vs->dev = d;
	r = vsock_parse(vs, spec, err);
	if (r < 0)
		goto fail;
	r = vsock_listen(vs, err);
	if (r < 0)
		goto fail;
	r = virtio_mmio_init(d, &virtio_vsock_ops, vs, vm, mem, loop, base, irq, err);
	if (r < 0)
		goto fail_dev;
	vs->listen_op.done = listen_done;
	vs->cancel_op.done = cancel_done;
	r = ioloop_watch(loop, vs->listen_fd, &vs->listen_op);
	if (r < 0) {
		r = kiln_fail(err, -r, "--vsock: cannot watch %s", vs->uds);
		goto fail_dev;
	}
	r = timer_watch(loop, &vs->reset_tfd, &vs->reset_op, reset_timer_done, err);
	if (r < 0)
		goto fail_dev;
	r = timer_watch(loop, &vs->req_tfd, &vs->req_op, req_timer_done, err);
	if (r < 0)
		goto fail_dev;
	return 0;
fail:
	free(vs);
	return r;
fail_dev:
	/* virtio_mmio_init set d->ops: destroy closes the listener and frees vs. */
	d->priv = vs;
	return r;
}
