/*
 * virtio-vsock connections: the connection table, the credit accounting
 * (5.10.6.3) and the close, shutdown and RST paths.
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

#include "vsock_internal.h"

/* Credit the guest has left for our data (5.10.6.3.1). */
uint32_t conn_credit(const struct vsock_conn *c)
{
	uint32_t in_flight = c->tx_cnt - c->peer_fwd_cnt;

	return in_flight >= c->peer_buf_alloc ? 0 : c->peer_buf_alloc - in_flight;
}

struct vsock_conn *conn_find(struct vsock *vs, uint32_t host_port, uint32_t guest_port)
{
	struct vsock_conn *c;

	for (c = vs->conns; c; c = c->next)
		if (c->host_port == host_port && c->guest_port == guest_port &&
		    c->state != CONN_HANDSHAKE)
			return c;
	return NULL;
}

struct vsock_conn *conn_new(struct vsock *vs, int fd, enum conn_state state)
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

void conn_free(struct vsock_conn *c)
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
void reply_rst(struct vsock *vs, const struct vsock_hdr *h)
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

/*
 * Free closed connections whose polls have ended, and cancel the polls of
 * those closed off the I/O thread. I/O thread, device lock held.
 */
void vsock_reap(struct vsock *vs)
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
void vsock_reap_later(struct vsock *vs)
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
void conn_close(struct vsock_conn *c)
{
	conn_unlink(c);
	vsock_reap(c->vs);
}

/* Close c and tell the guest with a RST (I/O thread). */
void conn_reset(struct vsock_conn *c)
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
void vsock_close_all(struct vsock *vs)
{
	while (vs->conns)
		conn_unlink(vs->conns);
	vs->nctrl = 0;
}

/*
 * Pass what the guest sent on to the host socket, without blocking, and
 * finish a shutdown the guest asked for once everything is out. I/O thread.
 * Returns -1 if c was closed.
 */
int conn_flush(struct vsock_conn *c)
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

/* Have req_tfd fire by at (ns, CLOCK_MONOTONIC). Any thread, device lock held. */
void req_timer_arm(struct vsock *vs, uint64_t at)
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
int conn_rx_one(struct vsock_conn *c)
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

uint32_t alloc_host_port(struct vsock *vs, uint32_t guest_port)
{
	for (;;) {
		uint32_t p = vs->next_port++;

		if (vs->next_port == 0xffffffffU || vs->next_port < VSOCK_HOST_PORT_BASE)
			vs->next_port = VSOCK_HOST_PORT_BASE;
		if (!conn_find(vs, p, guest_port))
			return p;
	}
}

/*
 * A host client's deadline passed. A guest that has not answered (or not
 * even taken) its REQUEST in time is treated as having refused it (RST to
 * the guest if it saw the REQUEST, EOF without an OK line to the client),
 * so a hung or hostile guest cannot hold host clients or connection slots
 * for ever; nor can a client that never sends its CONNECT line.
 */
void req_timer_done(struct io_op *op, int res, unsigned flags)
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

/* Guest bytes for the host: buffer them, at most our advertised buf_alloc. */
void conn_rw(struct vsock_conn *c, const struct virtq_chain *ch, uint32_t len)
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
