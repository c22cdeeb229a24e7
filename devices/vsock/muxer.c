/*
 * virtio-vsock's unix-socket backend, in Firecracker's convention (the
 * --vsock option):
 *
 *   host -> guest: a host program connects to the device's unix socket PATH
 *                  and writes "CONNECT <port>\n"; once the guest accepts, it
 *                  reads "OK <host_port>\n" and the stream follows.
 *   guest -> host: a guest connection to CID 2 port P is connected to the
 *                  unix socket "PATH_P"; if nobody listens there the guest
 *                  gets a RST.
 *
 * All socket I/O is non-blocking and driven by the I/O thread's io_uring:
 * one-shot polls whose completions call the connections back.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "usock.h"
#include "virtio_vsock.h"
#include "vsock_internal.h"

#define MUX_LINE_MAX		64		/* "CONNECT <port>\n" */

struct vsock_mux {
	/* Room left in sun_path for "_<port>": the guest-initiated sockets. */
	char uds[sizeof(((struct sockaddr_un *)0)->sun_path) - 11];
	int listen_fd;
	struct io_op listen_op;
	struct usock_acl acl;		/* who may connect to uds: its owner, root, group= */
	struct io_op cancel_op;		/* tags our cancel requests; its completions are ignored */
	struct vsock *vs;
};

/* A connection's host end: a unix socket. */
struct mux_conn {
	struct vsock_conn c;	/* first: what conn.c keeps */
	int fd;
	int need_cancel;	/* closed off the I/O thread: its polls still need cancelling */
	unsigned inflight;	/* polls submitted and not yet completed */
	struct io_op in_op, out_op;
	int in_armed, out_armed;
	char line[MUX_LINE_MAX];	/* a host client's CONNECT line as it arrives */
	uint32_t line_len;
};

static struct mux_conn *mux_conn(struct vsock_conn *c)
{
	return (struct mux_conn *)c;
}

static struct vsock_mux *mux_of(const struct vsock *vs)
{
	return vs->be_priv;
}

static void mux_in_done(struct io_op *op, int res, unsigned flags);
static void mux_out_done(struct io_op *op, int res, unsigned flags);

/* c's host end is the socket fd (non-blocking), from now on. */
static void mux_attach(struct vsock_conn *c, int fd)
{
	struct mux_conn *m = mux_conn(c);

	m->fd = fd;
	m->in_op.done = mux_in_done;
	m->out_op.done = mux_out_done;
}

static void cancel_done(struct io_op *op, int res, unsigned flags)
{
	(void)op;
	(void)res;	/* -ENOENT or -EALREADY when the poll ended first: fine */
	(void)flags;
}

/* Cancel a poll; the poll itself still completes once (-ECANCELED or its result). */
static void mux_cancel(struct vsock *vs, struct io_op *op)
{
	struct io_uring_sqe *sqe = ioloop_sqe(vs->dev->loop, &mux_of(vs)->cancel_op);

	if (sqe)
		io_uring_prep_cancel(sqe, op, 0);
}

/* Wait for c's socket to become readable (in) or writable (out): a one-shot poll. */
static void mux_arm(struct vsock_conn *c, int out)
{
	struct mux_conn *m = mux_conn(c);
	struct io_op *op = out ? &m->out_op : &m->in_op;
	int *armed = out ? &m->out_armed : &m->in_armed;
	struct io_uring_sqe *sqe;

	if (*armed || c->closing)
		return;
	sqe = ioloop_sqe(c->vs->dev->loop, op);
	if (!sqe)
		return;
	io_uring_prep_poll_add(sqe, m->fd, out ? POLLOUT : POLLIN);
	*armed = 1;
	m->inflight++;
}

/* Parse "CONNECT <port>\n" from a host client. */
static void mux_handshake(struct vsock_conn *c)
{
	struct mux_conn *m = mux_conn(c);
	char line[MUX_LINE_MAX + 1], *nl, *end;
	unsigned long port;
	uint32_t used;
	ssize_t n;

	n = recv(m->fd, m->line + m->line_len, MUX_LINE_MAX - m->line_len, MSG_DONTWAIT);
	if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
		mux_arm(c, 0);
		return;
	}
	if (n <= 0) {
		vsock_conn_close(c);
		return;
	}
	m->line_len += (uint32_t)n;
	memcpy(line, m->line, m->line_len);
	line[m->line_len] = '\0';
	nl = memchr(line, '\n', m->line_len);
	if (!nl) {
		if (m->line_len == MUX_LINE_MAX)
			vsock_conn_close(c);	/* not a CONNECT line */
		else
			mux_arm(c, 0);
		return;
	}
	used = (uint32_t)(nl - line) + 1;
	*nl = '\0';
	if (nl > line && nl[-1] == '\r')
		nl[-1] = '\0';
	errno = 0;
	/* Bytes after the line are the start of the stream. */
	if (strncmp(line, "CONNECT ", 8) != 0 || line[8] < '0' || line[8] > '9' ||
	    (port = strtoul(line + 8, &end, 10), errno) || *end || port > 0xffffffffUL ||
	    vsock_conn_request(c, (uint32_t)port, m->line + used, m->line_len - used) < 0)
		vsock_conn_close(c);	/* not our protocol, or no guest driver to ask */
}

static void listen_done(struct io_op *op, int res, unsigned flags)
{
	struct vsock_mux *mx = (struct vsock_mux *)((char *)op - offsetof(struct vsock_mux, listen_op));
	struct vsock *vs = mx->vs;

	(void)flags;
	if (res < 0)
		return;
	pthread_mutex_lock(&vs->dev->lock);
	for (;;) {
		struct vsock_conn *c;
		int fd = accept4(mx->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0)
			break;
		/* Another user (whatever the file's mode now says) is closed before it can send a byte. */
		if (!usock_peer_check(&mx->acl, fd)) {
			close(fd);
			continue;
		}
		c = vsock_conn_open(vs);
		if (!c) {
			close(fd);
			continue;
		}
		mux_attach(c, fd);
		mux_handshake(c);
	}
	pthread_mutex_unlock(&vs->dev->lock);
}

/* One of m's polls completed: it is armed no more. Returns m's device, its lock taken. */
static struct vsock *mux_poll_done(struct mux_conn *m, int *armed)
{
	struct vsock *vs = m->c.vs;

	pthread_mutex_lock(&vs->dev->lock);
	*armed = 0;
	m->inflight--;
	return vs;
}

static void mux_in_done(struct io_op *op, int res, unsigned flags)
{
	struct mux_conn *m = (struct mux_conn *)((char *)op - offsetof(struct mux_conn, in_op));
	struct vsock *vs = mux_poll_done(m, &m->in_armed);

	(void)res;
	(void)flags;
	if (!m->c.closing && m->c.state == CONN_HANDSHAKE)
		mux_handshake(&m->c);
	else
		vsock_conn_readable(&m->c);
	pthread_mutex_unlock(&vs->dev->lock);
}

static void mux_out_done(struct io_op *op, int res, unsigned flags)
{
	struct mux_conn *m = (struct mux_conn *)((char *)op - offsetof(struct mux_conn, out_op));
	struct vsock *vs = mux_poll_done(m, &m->out_armed);

	(void)flags;
	if (!m->c.closing && m->c.state == CONN_CONNECTING) {
		int soerr = 0;
		socklen_t sl = sizeof(soerr);

		vsock_conn_connected(&m->c, res >= 0 &&
				     getsockopt(m->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && !soerr);
	} else {
		vsock_conn_writable(&m->c);
	}
	pthread_mutex_unlock(&vs->dev->lock);
}

/* ---- the connections' calls ----------------------------------------------- */

/* A guest connection to CID 2 port P: connect to the unix socket PATH_P. */
static int mux_connect(struct vsock_conn *c, uint32_t port)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd, r;

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s_%" PRIu32, mux_of(c->vs)->uds, port);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	mux_attach(c, fd);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
		return 0;
	r = -errno;
	if (r == -EINPROGRESS) {
		mux_arm(c, 1);
		return r;
	}
	/* Nobody listens there (or its backlog is full): refuse. */
	close(fd);
	mux_conn(c)->fd = -1;
	return r;
}

/* n from a non-blocking send (out) or recv on c's socket, or -errno; a poll waits on -EAGAIN. */
static ssize_t mux_io_result(struct vsock_conn *c, ssize_t n, int out)
{
	if (n >= 0)
		return n;
	n = -errno;
	if (n == -EAGAIN)
		mux_arm(c, out);
	return n;
}

static ssize_t mux_send(struct vsock_conn *c, const struct iovec *iov, int iovcnt)
{
	struct msghdr msg = { .msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)iovcnt };

	return mux_io_result(c, sendmsg(mux_conn(c)->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT), 1);
}

static ssize_t mux_recv(struct vsock_conn *c, void *buf, size_t len)
{
	return mux_io_result(c, recv(mux_conn(c)->fd, buf, len, MSG_DONTWAIT), 0);
}

static int mux_peek(struct vsock_conn *c)
{
	char b;

	return recv(mux_conn(c)->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 1;
}

static uint32_t mux_greeting(const struct vsock_conn *c, char *buf, size_t size)
{
	return (uint32_t)snprintf(buf, size, "OK %" PRIu32 "\n", c->host_port);
}

static void mux_shut_write(struct vsock_conn *c)
{
	shutdown(mux_conn(c)->fd, SHUT_WR);
}

/* The socket is shut down at once: its peer sees EOF, and pending polls wake. */
static void mux_hangup(struct vsock_conn *c)
{
	struct mux_conn *m = mux_conn(c);

	if (m->fd >= 0)
		shutdown(m->fd, SHUT_RDWR);
	m->need_cancel = 1;
}

/* The fd goes when c's polls have completed; cancel those of a close off the I/O thread. */
static int mux_reap(struct vsock_conn *c)
{
	struct mux_conn *m = mux_conn(c);

	if (m->need_cancel) {
		m->need_cancel = 0;
		if (m->in_armed)
			mux_cancel(c->vs, &m->in_op);
		if (m->out_armed)
			mux_cancel(c->vs, &m->out_op);
	}
	return m->inflight != 0;
}

static void mux_release(struct vsock_conn *c)
{
	struct mux_conn *m = mux_conn(c);

	if (m->fd >= 0)
		close(m->fd);
}

/* ---- setting up ------------------------------------------------------------ */

static int mux_init(struct vsock *vs)
{
	struct vsock_mux *mx = calloc(1, sizeof(*mx));

	if (!mx)
		return -ENOMEM;
	mx->listen_fd = -1;
	mx->acl.group = USOCK_NO_GROUP;
	mx->vs = vs;
	vs->be_priv = mx;
	return 0;
}

/* uds=PATH and group=NAME. */
static int mux_option(struct vsock *vs, const char *p, size_t len, const char *spec, struct kiln_err *err)
{
	struct vsock_mux *mx = mux_of(vs);

	if (len > 4 && strncmp(p, "uds=", 4) == 0) {
		if (len - 4 >= sizeof(mx->uds))
			return kiln_fail(err, ENAMETOOLONG, "--vsock %s: uds path longer than %zu bytes (unix socket paths are short; use a shorter directory)",
					 spec, sizeof(mx->uds) - 1);
		memcpy(mx->uds, p + 4, len - 4);
		mx->uds[len - 4] = '\0';
		return 1;
	}
	if (len > 6 && strncmp(p, "group=", 6) == 0) {
		char name[64], what[300];
		int r;

		if (len - 6 >= sizeof(name))
			return kiln_fail(err, ENAMETOOLONG, "--vsock %s: group name longer than %zu bytes",
					 spec, sizeof(name) - 1);
		memcpy(name, p + 6, len - 6);
		name[len - 6] = '\0';
		snprintf(what, sizeof(what), "--vsock %s: group=%s", spec, name);
		r = usock_group_lookup(name, what, &mx->acl.group, err);
		return r < 0 ? r : 1;
	}
	return 0;
}

/*
 * Listen on uds, replacing a stale socket left by an earlier run: mode
 * 0600, or 0660 for group= (whose members, the owner and root may connect).
 */
static int mux_open(struct vsock *vs, const char *spec, struct kiln_err *err)
{
	struct vsock_mux *mx = mux_of(vs);
	int fd;

	if (!mx->uds[0])
		return kiln_fail(err, EINVAL, "--vsock %s: uds=PATH is required (the unix socket host programs connect to)",
				 spec);
	snprintf(mx->acl.what, sizeof(mx->acl.what), "--vsock uds=%s", mx->uds);
	mx->acl.hint = "(--vsock ...,group=GROUP admits a group's members)";
	fd = usock_listen(mx->uds, SOCK_NONBLOCK, 64, &mx->acl, err);
	if (fd < 0)
		return fd;
	mx->listen_fd = fd;
	return 0;
}

static int mux_start(struct vsock *vs, struct ioloop *loop, struct kiln_err *err)
{
	struct vsock_mux *mx = mux_of(vs);
	int r;

	mx->listen_op.done = listen_done;
	mx->cancel_op.done = cancel_done;
	r = ioloop_watch(loop, mx->listen_fd, &mx->listen_op);
	if (r < 0)
		return kiln_fail(err, -r, "--vsock: cannot watch %s", mx->uds);
	return 0;
}

static void mux_destroy(struct vsock *vs)
{
	struct vsock_mux *mx = mux_of(vs);

	if (!mx)
		return;
	if (mx->listen_fd >= 0) {
		close(mx->listen_fd);
		unlink(mx->uds);
	}
	free(mx);
	vs->be_priv = NULL;
}

const struct vsock_backend_ops vsock_mux_ops = {
	.usage = "cid=N,uds=PATH[,connect-timeout=MS][,group=NAME]",
	.conn_size = sizeof(struct mux_conn),
	.init = mux_init,
	.option = mux_option,
	.open = mux_open,
	.start = mux_start,
	.destroy = mux_destroy,
	.connect = mux_connect,
	.send = mux_send,
	.recv = mux_recv,
	.peek = mux_peek,
	.greeting = mux_greeting,
	.shut_write = mux_shut_write,
	.hangup = mux_hangup,
	.reap = mux_reap,
	.release = mux_release,
};

int virtio_vsock_create(struct virtio_dev *d, const char *spec, struct vm *vm,
			const struct guest_mem *mem, struct ioloop *loop,
			uint64_t base, uint32_t irq, struct kiln_err *err)
{
	return vsock_create(d, spec, &vsock_mux_ops, vm, mem, loop, base, irq, err);
}
