/*
 * virtio-vsock connections: the connection table, their states (5.10.6.2
 * to 5.10.6.6) and the credit scheme (5.10.6.3): nothing is sent to the
 * guest beyond its advertised credit, and what the guest sends is buffered
 * up to our advertised buf_alloc; a guest that overruns it is reset. A slow
 * peer therefore stalls only its own connection.
 *
 * The host end of each connection is the backend's (vs->be): this file
 * moves bytes between the guest's packets and the backend and never
 * touches a host fd itself.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "timeline.h"
#include "vsock_internal.h"

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

/* A new connection in state on the live list (the backend's conn_size); NULL without memory. */
static struct vsock_conn *conn_new(struct vsock *vs, enum conn_state state)
{
	struct vsock_conn *c = calloc(1, vs->be->conn_size);

	if (!c)
		return NULL;
	c->rx = malloc(VSOCK_RX_STAGE);
	if (!c->rx) {
		free(c);
		return NULL;
	}
	c->vs = vs;
	c->state = state;
	c->next = vs->conns;
	vs->conns = c;
	vs->nconns++;
	return c;
}

static void conn_free(struct vsock_conn *c)
{
	c->vs->be->release(c);
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

void vsock_conn_reap(struct vsock *vs)
{
	struct vsock_conn **p = &vs->dead, *c;

	while ((c = *p)) {
		if (!vs->be->reap(c)) {
			*p = c->next;
			conn_free(c);
		} else {
			p = &c->next;
		}
	}
}

static void conn_reap_call(void *arg)
{
	struct vsock *vs = arg;

	pthread_mutex_lock(&vs->dev->lock);
	vs->reap_queued = 0;
	vsock_conn_reap(vs);
	pthread_mutex_unlock(&vs->dev->lock);
}

void vsock_conn_reap_later(struct vsock *vs)
{
	if (!vs->dead || vs->reap_queued)
		return;
	if (ioloop_call(vs->dev->loop, conn_reap_call, vs) == 0)
		vs->reap_queued = 1;
	/* Else the next kick or completion reaps them. */
}

/*
 * Take c off the live list and close the host side. The backend ends the
 * host end at once (its peer sees EOF now); c's memory goes once the
 * backend is done with it. Any thread, device lock held; off the I/O
 * thread the caller must get vsock_conn_reap() run there.
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
	c->closing = 1;
	vs->be->hangup(c);
	c->next = vs->dead;
	vs->dead = c;
}

void vsock_conn_close(struct vsock_conn *c)
{
	conn_unlink(c);
	vsock_conn_reap(c->vs);
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
	vsock_conn_close(c);
}

/* Device reset, transport reset, destroy. */
void vsock_conn_close_all(struct vsock *vs)
{
	while (vs->conns)
		conn_unlink(vs->conns);
	vs->nctrl = 0;
}

void vsock_conn_free_all(struct vsock *vs)
{
	struct vsock_conn *c;

	vsock_conn_close_all(vs);
	while ((c = vs->dead)) {
		vs->dead = c->next;
		conn_free(c);
	}
}

/* ---- bytes between the guest and the host end --------------------------------- */

/*
 * Pass what the guest sent on to the host end, without blocking, and
 * finish a shutdown the guest asked for once everything is out. The
 * backend's greeting goes first. Returns -1 if c was closed.
 */
static int conn_flush(struct vsock_conn *c)
{
	const struct vsock_backend_ops *be = c->vs->be;

	while (c->hello_off < c->hello_len) {
		struct iovec iov = { c->hello + c->hello_off, c->hello_len - c->hello_off };
		ssize_t n = be->send(c, &iov, 1);

		if (n == -EAGAIN || n == -EINTR)
			return 0;	/* the backend calls vsock_conn_writable() on room */
		if (n < 0) {
			conn_reset(c);
			return -1;
		}
		c->hello_off += (uint32_t)n;
	}
	while (c->tx_len) {
		uint32_t first = VSOCK_BUF_ALLOC - c->tx_head;
		struct iovec iov[2];
		int iovcnt = 1;
		ssize_t n;

		if (first > c->tx_len)
			first = c->tx_len;
		iov[0] = (struct iovec){ c->tx + c->tx_head, first };
		if (first < c->tx_len) {
			iov[1] = (struct iovec){ c->tx, c->tx_len - first };
			iovcnt = 2;
		}
		n = be->send(c, iov, iovcnt);
		if (n == -EINTR)
			continue;
		if (n == -EAGAIN)
			break;
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
			be->shut_write(c);
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

/* Read what the host end sent, up to the guest's credit. Returns -1 if c was closed. */
static int conn_read(struct vsock_conn *c)
{
	uint32_t want = conn_credit(c);
	ssize_t n;

	if (want > VSOCK_RX_STAGE)
		want = VSOCK_RX_STAGE;
	if (want == 0)
		return 0;	/* wait for the guest's credit before reading more */
	n = c->vs->be->recv(c, c->rx, want);
	if (n == -EAGAIN || n == -EINTR)
		return 0;	/* the backend calls vsock_conn_readable() on more */
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

/* Does the host end have bytes for the guest, read or not? */
static int conn_has_input(struct vsock_conn *c)
{
	return c->rx_len || (!c->host_eof && c->vs->be->peek(c));
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

int vsock_conn_rx_one(struct vsock_conn *c)
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
			n = vsock_rx_put(vs, &h, c->rx + c->rx_off, n);
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
	vsock_rx_put(vs, &h, NULL, 0);
	return 1;
}

/* ---- host-initiated connections ---------------------------------------------- */

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

struct vsock_conn *vsock_conn_open(struct vsock *vs)
{
	struct vsock_conn *c;

	if (vs->nconns >= VSOCK_MAX_CONNS || !(c = conn_new(vs, CONN_HANDSHAKE)))
		return NULL;
	/* From here the client has connect-timeout to ask and the guest to answer. */
	c->deadline = now_ns() + (uint64_t)vs->connect_timeout_ms * 1000000ULL;
	req_timer_arm(vs, c->deadline);
	return c;
}

int vsock_conn_request(struct vsock_conn *c, uint32_t guest_port, const void *early, uint32_t len)
{
	struct vsock *vs = c->vs;

	if (!vsock_rx_ready(vs) || len > VSOCK_RX_STAGE)
		return -ENOTCONN;	/* no guest driver to ask */
	/* Bytes after the client's request are the start of the stream. */
	if (len)
		memcpy(c->rx, early, len);
	c->rx_off = 0;
	c->rx_len = len;
	c->guest_port = guest_port;
	c->host_port = alloc_host_port(vs, c->guest_port);
	c->state = CONN_REQUESTED;
	c->pending |= PEND_REQUEST;
	vsock_rx_run(vs);
	return 0;
}

/*
 * A host client's deadline passed. A guest that has not answered (or not
 * even taken) its REQUEST in time is treated as having refused it (RST to
 * the guest if it saw the REQUEST, EOF without a greeting to the client),
 * so a hung or hostile guest cannot hold host clients or connection slots
 * for ever; nor can a client that never asks for a port (the muxer's
 * CONNECT line).
 */
void vsock_conn_deadline_done(struct io_op *op, int res, unsigned flags)
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

/* ---- the backend's calls --------------------------------------------------- */

void vsock_conn_connected(struct vsock_conn *c, int ok)
{
	struct vsock *vs = c->vs;

	if (c->closing) {
		vsock_conn_reap(vs);
		return;
	}
	if (!ok) {
		conn_reset(c);
	} else {
		c->state = CONN_ESTABLISHED;
		c->pending |= PEND_RESPONSE;
	}
	vsock_rx_run(vs);
}

void vsock_conn_readable(struct vsock_conn *c)
{
	if (c->closing)
		vsock_conn_reap(c->vs);
	else
		vsock_rx_run(c->vs);	/* vsock_conn_rx_one reads what the guest has credit for */
}

void vsock_conn_writable(struct vsock_conn *c)
{
	struct vsock *vs = c->vs;

	if (c->closing) {
		vsock_conn_reap(vs);
		return;
	}
	conn_flush(c);
	vsock_rx_run(vs);
}

/* ---- guest packets ------------------------------------------------------------ */

/* A guest connection to the host's port h->dst_port: the backend opens its host end. */
static void conn_from_guest(struct vsock *vs, const struct vsock_hdr *h)
{
	struct vsock_conn *c;
	int r;

	if (vs->nconns >= VSOCK_MAX_CONNS) {
		vsock_log(vs, "guest opened more than %d connections; refusing", VSOCK_MAX_CONNS);
		reply_rst(vs, h);
		return;
	}
	c = conn_new(vs, CONN_CONNECTING);
	if (!c) {
		reply_rst(vs, h);
		return;
	}
	c->host_port = h->dst_port;
	c->guest_port = h->src_port;
	c->peer_buf_alloc = h->buf_alloc;
	c->peer_fwd_cnt = h->fwd_cnt;
	r = vs->be->connect(c, h->dst_port);
	if (r == 0) {
		c->state = CONN_ESTABLISHED;
		c->pending |= PEND_RESPONSE;
	} else if (r != -EINPROGRESS) {
		vsock_conn_close(c);	/* nobody there: refuse */
		reply_rst(vs, h);
	}
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

void vsock_conn_input(struct vsock *vs, const struct vsock_hdr *h, const struct virtq_chain *ch)
{
	struct vsock_conn *c;

	if (h->op == VIRTIO_VSOCK_OP_RST && !conn_find(vs, h->dst_port, h->src_port))
		return;		/* never answer a RST */
	if (h->dst_cid != VMADDR_CID_HOST || h->type != VIRTIO_VSOCK_TYPE_STREAM) {
		/* Only stream connections to the host exist here: refuse the rest. */
		reply_rst(vs, h);
		return;
	}
	c = conn_find(vs, h->dst_port, h->src_port);
	if (h->len > ch->read_len - VSOCK_HDR || h->len > VSOCK_MAX_PAYLOAD) {
		vsock_log(vs, "packet length %" PRIu32 " beyond its %" PRIu64 "-byte buffer (at most %d); resetting",
			  h->len, ch->read_len - VSOCK_HDR, VSOCK_MAX_PAYLOAD);
		if (c)
			conn_reset(c);
		else
			reply_rst(vs, h);
		return;
	}
	if (!c) {
		if (h->op == VIRTIO_VSOCK_OP_REQUEST)
			conn_from_guest(vs, h);
		else
			reply_rst(vs, h);
		return;
	}
	c->peer_buf_alloc = h->buf_alloc;
	c->peer_fwd_cnt = h->fwd_cnt;
	if (conn_credit(c))
		c->credit_asked = 0;
	switch (h->op) {
	case VIRTIO_VSOCK_OP_RESPONSE:
		if (c->state != CONN_REQUESTED || (c->pending & PEND_REQUEST)) {
			conn_reset(c);
			break;
		}
		c->state = CONN_ESTABLISHED;
		tl_mark(TL_ACCEPT);
		c->hello_len = vs->be->greeting(c, c->hello, sizeof(c->hello));
		conn_flush(c);
		break;
	case VIRTIO_VSOCK_OP_RST:
		vsock_conn_close(c);
		break;
	case VIRTIO_VSOCK_OP_SHUTDOWN:
		c->guest_shut |= h->flags & VIRTIO_VSOCK_SHUTDOWN_BOTH;
		if (c->guest_shut & VIRTIO_VSOCK_SHUTDOWN_RCV)
			c->rx_len = 0;	/* the guest reads no more: drop what it would get */
		conn_flush(c);
		break;
	case VIRTIO_VSOCK_OP_RW:
		tl_sample();
		conn_rw(c, ch, h->len);
		break;
	case VIRTIO_VSOCK_OP_CREDIT_UPDATE:
		break;		/* the credit was taken above; vsock_rx_run resumes sending */
	case VIRTIO_VSOCK_OP_CREDIT_REQUEST:
		c->pending |= PEND_CREDIT_UPDATE;
		break;
	default:	/* REQUEST on a live connection, or an op we do not know */
		vsock_log(vs, "unexpected op %u on port %" PRIu32 "; resetting the connection", h->op, h->src_port);
		conn_reset(c);
		break;
	}
}
