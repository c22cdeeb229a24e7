/*
 * virtio-vsock's host side: unix sockets in Firecracker's convention (see
 * vsock.c), driven by one-shot polls on the I/O thread's io_uring.
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

void cancel_done(struct io_op *op, int res, unsigned flags)
{
	(void)op;
	(void)res;	/* -ENOENT or -EALREADY when the poll ended first: fine */
	(void)flags;
}

/* Cancel a poll; the poll itself still completes once (-ECANCELED or its result). */
void conn_cancel(struct vsock *vs, struct io_op *op)
{
	struct io_uring_sqe *sqe = ioloop_sqe(vs->dev->loop, &vs->cancel_op);

	if (sqe)
		io_uring_prep_cancel(sqe, op, 0);
}

/* Wait for fd to become readable (in) or writable (out): a one-shot poll. */
void conn_arm(struct vsock_conn *c, int out)
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

/* Does the host have bytes for the guest, read or not? */
int conn_has_input(struct vsock_conn *c)
{
	char b;

	return c->rx_len || (!c->host_eof && recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 1);
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

void listen_done(struct io_op *op, int res, unsigned flags)
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

void conn_in_done(struct io_op *op, int res, unsigned flags)
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

void conn_out_done(struct io_op *op, int res, unsigned flags)
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

/* A guest connection to CID 2 port P: connect to the unix socket PATH_P. */
void conn_from_guest(struct vsock *vs, const struct vsock_hdr *h)
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

/*
 * Listen on vs->uds, replacing a stale socket left by an earlier run: mode
 * 0600, or 0660 for group= (whose members, the owner and root may connect).
 */
int vsock_listen(struct vsock *vs, struct kiln_err *err)
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
