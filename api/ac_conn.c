/*
 * kiln agent client: the connection (docs/agent-protocol.md, host side):
 * connecting and HELLO, sending whole frames, reading and decoding the
 * agent's frames, and closing the connection when it misbehaves.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "agent_proto.h"
#include "io.h"
#include "agent_client.h"
#include "ac_int.h"

int ac_fail(struct kac_err *err, int errnum, const char *fmt, ...)
{
	va_list ap;

	if (err) {
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
		va_end(ap);
	}
	return -errnum;
}

int64_t ac_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* "30 s" or "1500 ms": a timeout as the messages name it. */
static const char *span(char *buf, size_t cap, int ms)
{
	if (ms % 1000 == 0)
		snprintf(buf, cap, "%d s", ms / 1000);
	else
		snprintf(buf, cap, "%d ms", ms);
	return buf;
}

/*
 * The connection is unusable from here on (a protocol violation, a stall, a
 * send cut short, the agent gone): remember why, so every later call fails
 * at once with it, tell a misbehaving agent (ERROR KP_ERR_PROTO on id 0, if
 * the socket takes it now) and hang up. Returns ret.
 */
int ac_conn_lost(struct kac *c, int ret, const struct kac_err *err)
{
	uint8_t buf[KP_HDR_LEN + 512];
	int n;

	if (c->broken)
		return ret;
	c->broken = ret;
	snprintf(c->why, sizeof(c->why), "%s", err && err->msg[0] ? err->msg : strerror(-ret));
	if (ret == -EPROTO && (!err || !err->code)) {
		n = kp_enc_error(buf, sizeof(buf), 0, KP_ERR_PROTO, 0, c->why);
		if (n > 0 && send(c->fd, buf, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
			/* best effort: we are closing anyway */
		}
	}
	shutdown(c->fd, SHUT_RDWR);
	return ret;
}

/* The agent fell silent: -ETIMEDOUT, err->code KAC_ERR_TIMEOUT, the connection closed. */
int ac_conn_stalled(struct kac *c, struct kac_err *err, const char *what)
{
	char t[32];

	ac_fail(err, ETIMEDOUT, "%s %s", what, span(t, sizeof(t), c->timeout_ms));
	if (err)
		err->code = KAC_ERR_TIMEOUT;
	return ac_conn_lost(c, -ETIMEDOUT, err);
}

/*
 * Send a whole frame. The socket is non-blocking: an agent that stops
 * reading leaves us waiting at most the timeout for room, then the
 * connection is closed (a frame cut short cannot be taken back).
 */
int ac_send_frame(struct kac *c, const void *p, size_t n, struct kac_err *err)
{
	struct pollfd pf = { .fd = c->fd, .events = POLLOUT };
	struct kac_err local;
	const uint8_t *b = p;
	int64_t due = -1, left;
	ssize_t w;

	if (!err)
		err = &local;
	if (c->broken)
		return ac_fail(err, -c->broken, "agent connection closed earlier: %s", c->why);
	while (n) {
		w = send(c->fd, b, n, MSG_NOSIGNAL);
		if (w > 0) {
			b += w;
			n -= (size_t)w;
			due = -1;
			continue;
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && errno != EAGAIN)
			return ac_conn_lost(c, ac_fail(err, errno, "agent connection: send: %s", strerror(errno)), err);
		if (c->timeout_ms > 0 && due < 0)
			due = ac_now_ms() + c->timeout_ms;
		left = due < 0 ? -1 : due - ac_now_ms();
		if (due >= 0 && left <= 0)
			return ac_conn_stalled(c, err, "the agent stopped reading: nothing could be sent for");
		if (poll(&pf, 1, left < 0 || left > 60000 ? 60000 : (int)left) < 0 && errno != EINTR)
			return ac_conn_lost(c, ac_fail(err, errno, "poll: %s", strerror(errno)), err);
	}
	return 0;
}

uint32_t ac_new_id(struct kac *c)
{
	if (++c->next_id == 0)
		c->next_id = 1;
	return c->next_id;
}

/* ---- connecting ------------------------------------------------------------- */

/* 0, or ENAMETOOLONG with err set when uds does not fit a unix socket address. */
static int uds_check(const char *uds, struct kac_err *err)
{
	size_t max = sizeof(((struct sockaddr_un *)0)->sun_path) - 1;

	if (strlen(uds) > max)
		return ac_fail(err, ENAMETOOLONG, "%s: socket path too long (at most %zu bytes)", uds, max);
	return 0;
}

/*
 * Connect to the VMM's socket uds (its length checked by the caller) and
 * write the CONNECT line for the agent's port: 0 with *fdp (blocking), or
 * -errno from the connect (-ENOENT, -ECONNREFUSED: nobody listens yet) or,
 * as -EAGAIN, from a VMM that closed before taking the line.
 */
static int vsock_dial_line(const char *uds, int *fdp)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char line[32];
	int fd, ret;

	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	memcpy(sa.sun_path, uds, strlen(uds));
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		ret = -errno;
		close(fd);
		return ret;
	}
	snprintf(line, sizeof(line), "CONNECT %u\n", KP_VSOCK_PORT);
	ret = write_full(fd, line, strlen(line));
	if (ret) {
		close(fd);
		return ret == -EPIPE || ret == -ECONNRESET ? -EAGAIN : ret;
	}
	*fdp = fd;
	return 0;
}

/*
 * One attempt: connect, CONNECT, read the OK line a byte at a time (the
 * agent's HELLO may follow it at once). Returns 0, -EAGAIN when worth
 * retrying (socket missing or refused, or closed without OK), or -errno.
 */
static int vsock_connect_once(const char *uds, int64_t deadline, int *fdp)
{
	char line[64];
	size_t n = 0;
	int fd, ret;
	struct pollfd p;

	if ((ret = vsock_dial_line(uds, &fd)) < 0)
		return ret;
	for (;;) {
		int64_t left = deadline - ac_now_ms();
		ssize_t r;

		if (left <= 0) {
			close(fd);
			return -ETIMEDOUT;
		}
		p.fd = fd;
		p.events = POLLIN;
		ret = poll(&p, 1, (int)(left > 1000 ? 1000 : left));
		if (ret < 0 && errno == EINTR)
			continue;
		if (ret <= 0)
			continue;
		r = read(fd, line + n, 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			close(fd);
			return -EAGAIN;
		}
		if (line[n] == '\n')
			break;
		if (++n == sizeof(line) - 1) {
			close(fd);
			return -EPROTO;
		}
	}
	line[n] = '\0';
	if (strncmp(line, "OK ", 3) != 0) {
		close(fd);
		return -EPROTO;
	}
	*fdp = fd;
	return 0;
}

int kac_dial(const char *uds, int timeout_ms, int *fd, struct kac_err *err)
{
	int ret;

	if (err)
		err->code = 0;
	if ((ret = uds_check(uds, err)) < 0)
		return ret;
	ret = vsock_connect_once(uds, ac_now_ms() + (timeout_ms > 0 ? timeout_ms : 0), fd);
	if (ret == -EAGAIN)
		return ac_fail(err, ECONNREFUSED, "%s: the VM did not accept a connection to the agent's port %u",
			       uds, KP_VSOCK_PORT);
	if (ret)
		return ac_fail(err, -ret, "%s: %s", uds, strerror(-ret));
	return 0;
}

/* c and its buffers (its fd closed, or never opened). */
static void conn_free(struct kac *c)
{
	free(c->chunk);
	free(c->sbuf);
	free(c->rbuf);
	free(c->dbuf);
	free(c);
}

/* A connection with its buffers and no fd yet, or NULL. */
static struct kac *conn_new(void)
{
	struct kac *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->fd = -1;
	c->timeout_ms = KAC_TIMEOUT_DEFAULT_MS;
	c->dbuf = malloc(KP_MAX_PAYLOAD);
	c->rbuf = malloc(KAC_RBUF);
	c->sbuf = malloc(KAC_SBUF);
	c->chunk = malloc(KP_DATA_HDR_LEN + KAC_CHUNK);
	if (!c->dbuf || !c->rbuf || !c->sbuf || !c->chunk) {
		conn_free(c);
		return NULL;
	}
	kp_dec_init(&c->dec, c->dbuf, KP_MAX_PAYLOAD);
	return c;
}

static int hello_take(struct kac *c, const struct kp_frame *f, struct kac_err *err);

/* Send HELLO on c's (non-blocking from now) socket; the answer is the caller's to read. */
static int hello_send(struct kac *c, const char *name, struct kac_err *err)
{
	int n;

	if (fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK) < 0)
		return ac_fail(err, errno, "%s: fcntl: %s", name, strerror(errno));
	n = kp_enc_hello(c->sbuf, KAC_SBUF, KAC_WINDOW, KP_MAX_PAYLOAD, "kiln 0.1");
	if (n < 0)
		return ac_fail(err, EINVAL, "HELLO: %s", kp_strerror(n));
	return ac_send_frame(c, c->sbuf, (size_t)n, err);
}

/*
 * The HELLO exchange on c's connected stream, which it makes non-blocking;
 * the agent's HELLO is due by deadline. Returns 0 or -errno with err set.
 */
static int conn_hello(struct kac *c, const char *name, int64_t deadline, struct kac_err *err)
{
	struct kp_frame f;
	int ret = hello_send(c, name, err);

	if (ret)
		return ret;
	ret = ac_read_frame(c, &f, deadline, err);
	return ret ? ret : hello_take(c, &f, err);
}

/* The agent's HELLO: its version, credit and frame size into c. */
static int hello_take(struct kac *c, const struct kp_frame *f, struct kac_err *err)
{
	struct kp_rec r;
	struct kp_field fl;
	uint64_t v, version = 0;

	if (f->type != KP_HELLO)
		return ac_fail(err, EPROTO, "agent: sent %s before HELLO", kp_type_name(f->type));
	c->peer_window = KP_DEFAULT_WINDOW;
	c->peer_max = KP_MAX_PAYLOAD;
	kp_rec_open(&r, f->payload, f->len);
	while (kp_rec_next(&r, &fl) == 1) {
		if (fl.tag == KT_VERSION && !kp_field_u64(&fl, &v))
			version = v;
		else if (fl.tag == KT_WINDOW && !kp_field_u64(&fl, &v))
			c->peer_window = v > 0xffffffffu ? 0xffffffffu : (uint32_t)v;
		else if (fl.tag == KT_MAX_FRAME && !kp_field_u64(&fl, &v))
			c->peer_max = v > KP_MAX_PAYLOAD ? KP_MAX_PAYLOAD : (uint32_t)v;
		else if (fl.tag == KT_AGENT)
			kp_field_str(&fl, c->agent, sizeof(c->agent));
	}
	if (version < 1)
		return ac_fail(err, EPROTO, "agent: HELLO without a protocol version");
	if (c->peer_max < KP_MIN_PAYLOAD_CAP)
		return ac_fail(err, EPROTO, "agent: HELLO max_frame %u below the minimum %u",
			       c->peer_max, KP_MIN_PAYLOAD_CAP);
	return 0;
}

/*
 * Wait (at most until deadline) for something to be made in uds's directory,
 * with inotify where it can watch it: polling the path instead would take the
 * CPU from the VMM that is restoring the VM (in a one-CPU host, most of it).
 * *ifd is the inotify fd, made on the first call (-1: cannot watch; sleep).
 */
static void wait_for_socket(const char *uds, int *ifd, int64_t deadline)
{
	char dir[sizeof(((struct sockaddr_un *)0)->sun_path)], buf[4096];
	int64_t left = deadline - ac_now_ms();
	struct pollfd p;
	char *slash;

	if (left <= 0)
		return;
	if (*ifd == -2) {
		snprintf(dir, sizeof(dir), "%s", uds);
		slash = strrchr(dir, '/');
		if (slash == dir)
			dir[1] = '\0';
		else if (slash)
			*slash = '\0';
		else
			snprintf(dir, sizeof(dir), ".");
		*ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
		if (*ifd >= 0 && inotify_add_watch(*ifd, dir, IN_CREATE | IN_MOVED_TO) < 0) {
			close(*ifd);
			*ifd = -1;
		}
		return;		/* watching now: the caller tries once more before waiting */
	}
	if (*ifd < 0) {
		usleep(KAC_EARLY_POLL_US);
		return;
	}
	p = (struct pollfd){ .fd = *ifd, .events = POLLIN };
	/* (a bound on the wait, so a missed event costs at most that) */
	if (poll(&p, 1, (int)(left < KAC_EARLY_WAIT_MS ? left : KAC_EARLY_WAIT_MS)) > 0)
		while (read(*ifd, buf, sizeof(buf)) > 0)
			;
}

int kac_connect(struct kac **out, const char *uds, int timeout_ms, struct kac_err *err)
{
	int64_t deadline = ac_now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
	struct kac *c;
	int ret, last = 0, ifd = -2;
	useconds_t backoff_us = 1000;

	if (err)
		err->code = 0;
	if ((ret = uds_check(uds, err)) < 0)
		return ret;
	c = conn_new();
	if (!c)
		return ac_fail(err, ENOMEM, "out of memory");

	for (;;) {
		ret = vsock_connect_once(uds, deadline, &c->fd);
		if (ret == 0)
			break;
		if (ret == -ENOENT || ret == -ECONNREFUSED || ret == -EAGAIN)
			last = ret;
		else if (ret != -ETIMEDOUT)
			goto err_conn;
		if (ret == -ETIMEDOUT || ac_now_ms() >= deadline) {
			if (last == -ENOENT || last == -ECONNREFUSED) {
				ret = last;
				goto err_conn;
			}
			ret = ac_fail(err, ETIMEDOUT, "%s: the VM is up but no agent answered on vsock port %u "
				      "within %d ms (boot the guest with --cmdline kiln.agent)",
				      uds, KP_VSOCK_PORT, timeout_ms);
			goto err_free;
		}
		/*
		 * No socket yet: until the VMM makes it, watched with inotify (a
		 * restore makes it milliseconds after its start; a growing sleep
		 * could miss that by tens). Otherwise, and where the directory
		 * cannot be watched: quick at first, then every 50 ms.
		 */
		if (ret == -ENOENT && ifd != -1) {
			wait_for_socket(uds, &ifd, deadline);
			continue;
		}
		usleep(backoff_us);
		if (backoff_us < 50 * 1000)
			backoff_us *= 2;
	}
	if (ifd >= 0)
		close(ifd);
	ifd = -1;
	ret = conn_hello(c, uds, deadline + 10000, err);
	if (ret)
		goto err_close;
	*out = c;
	return 0;

err_conn:
	if (ret == -ENOENT || ret == -ECONNREFUSED)
		ret = ac_fail(err, -ret, "%s: no VM listening (start kiln-vmm with --vsock cid=3,uds=%s "
			      "--cmdline kiln.agent)", uds, uds);
	else
		ret = ac_fail(err, -ret, "%s: %s", uds, strerror(-ret));
	goto err_free;
err_close:
	close(c->fd);
err_free:
	if (ifd >= 0)
		close(ifd);
	conn_free(c);
	return ret;
}

int kac_connect_early(struct kac **out, const char *uds, int timeout_ms, struct kac_err *err)
{
	int64_t deadline = ac_now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
	struct kac *c;
	int ret, ifd = -2;

	if (err)
		err->code = 0;
	if ((ret = uds_check(uds, err)) < 0)
		return ret;
	if (!(c = conn_new()))
		return ac_fail(err, ENOMEM, "out of memory");
	/* The VMM may not have made its socket yet: a restore does so within milliseconds. */
	for (;;) {
		if ((ret = vsock_dial_line(uds, &c->fd)) == 0)
			break;
		c->fd = -1;
		if ((ret != -ENOENT && ret != -ECONNREFUSED) || ac_now_ms() >= deadline) {
			ret = ac_fail(err, -ret, "%s: %s%s", uds, strerror(-ret), ret == -ENOENT || ret == -ECONNREFUSED ?
				      " (no VM listening: start kiln-vmm with --vsock cid=3,uds=PATH)" : "");
			goto fail;
		}
		/* Bound but not yet listening: a moment. Not there: until it is made. */
		if (ret == -ECONNREFUSED)
			usleep(KAC_EARLY_POLL_US);
		else
			wait_for_socket(uds, &ifd, deadline);
	}
	if (ifd >= 0)
		close(ifd);
	ifd = -1;
	if ((ret = hello_send(c, uds, err)) < 0)
		goto fail;
	/* Until the agent's HELLO says otherwise: the smallest frame every agent takes. */
	c->peer_window = KP_DEFAULT_WINDOW;
	c->peer_max = KP_MIN_PAYLOAD_CAP;
	c->greet = KAC_GREET_OK | KAC_GREET_HELLO;
	*out = c;
	return 0;
fail:
	if (ifd >= 0)
		close(ifd);
	if (c->fd >= 0)
		close(c->fd);
	conn_free(c);
	return ret;
}

/*
 * kac_connect_early's greeting, ahead of the first frame: the VMM's
 * "OK <port>\n", consumed from the bytes read. 1 once it is all in, 0 when
 * more must be read, or -errno.
 */
static int greet_ok(struct kac *c, struct kac_err *err)
{
	while (c->rpos < c->rlen) {
		char ch = (char)c->rbuf[c->rpos++];

		if (ch == '\n') {
			c->okline[c->okn] = '\0';
			if (strncmp(c->okline, "OK ", 3) != 0)
				return ac_fail(err, EPROTO, "vsock socket: \"%s\" instead of \"OK <port>\"", c->okline);
			c->greet &= ~KAC_GREET_OK;
			return 1;
		}
		if (c->okn == sizeof(c->okline) - 1)
			return ac_fail(err, EPROTO, "vsock socket: a greeting line longer than %zu bytes", sizeof(c->okline));
		c->okline[c->okn++] = ch;
	}
	return 0;
}

int kac_connect_fd(struct kac **out, int fd, int timeout_ms, struct kac_err *err)
{
	struct kac *c;
	int ret;

	if (err)
		err->code = 0;
	c = conn_new();
	if (!c) {
		close(fd);
		return ac_fail(err, ENOMEM, "out of memory");
	}
	c->fd = fd;
	ret = conn_hello(c, "agent connection", ac_now_ms() + (timeout_ms > 0 ? timeout_ms : KAC_TIMEOUT_DEFAULT_MS), err);
	if (ret) {
		close(fd);
		conn_free(c);
		return ret;
	}
	*out = c;
	return 0;
}

void kac_close(struct kac *c)
{
	if (!c)
		return;
	close(c->fd);
	conn_free(c);
}

const char *kac_agent_name(const struct kac *c)
{
	return c->agent;
}

void kac_set_timeout(struct kac *c, int timeout_ms)
{
	c->timeout_ms = timeout_ms > 0 ? timeout_ms : 0;
}

/* ---- frames in ---------------------------------------------------------------- */

/*
 * The next frame from the buffered bytes, reading the socket when they run
 * out. Without may_read, returns -EAGAIN instead of reading.
 * f's payload stays valid until the next call.
 */
int ac_next_frame(struct kac *c, struct kp_frame *f, int may_read, struct kac_err *err)
{
	size_t used;
	ssize_t r;
	int ret;

	for (;;) {
		if ((c->greet & KAC_GREET_OK) && (ret = greet_ok(c, err)) < 0)
			return ret;
		if (!(c->greet & KAC_GREET_OK) && c->rpos < c->rlen) {
			ret = kp_dec_feed(&c->dec, c->rbuf + c->rpos, c->rlen - c->rpos, &used, f);
			c->rpos += (uint32_t)used;
			if (ret < 0)
				return ac_fail(err, EPROTO, "agent: malformed frame: %s", kp_strerror(ret));
			if (ret == 1 && (c->greet & KAC_GREET_HELLO)) {
				c->greet &= ~KAC_GREET_HELLO;
				if ((ret = hello_take(c, f, err)) < 0)
					return ret;
				continue;
			}
			if (ret == 1)
				return 0;
		}
		if (!may_read)
			return -EAGAIN;
		/* The decoder copied any partial frame; the read buffer is free. */
		c->rpos = c->rlen = 0;
		r = read(c->fd, c->rbuf, KAC_RBUF);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && errno == EAGAIN)
			return -EAGAIN;
		if (r < 0)
			return ac_fail(err, errno, "agent connection: %s", strerror(errno));
		if (r == 0 && (c->greet & KAC_GREET_OK))
			return ac_fail(err, ECONNREFUSED, "the VM did not accept a connection to the agent's port %u (not listening yet?)",
				       KP_VSOCK_PORT);
		if (r == 0)
			return ac_fail(err, ECONNRESET, "agent closed the connection (did the VM stop?)");
		c->rlen = (uint32_t)r;
		may_read = 0;
	}
}

/* Block (until deadline) for the next frame. */
int ac_read_frame(struct kac *c, struct kp_frame *f, int64_t deadline, struct kac_err *err)
{
	struct pollfd p = { .fd = c->fd, .events = POLLIN };
	int ret;

	for (;;) {
		ret = ac_next_frame(c, f, 0, err);
		if (ret != -EAGAIN)
			return ret;
		int64_t left = deadline - ac_now_ms();
		if (left <= 0)
			return ac_fail(err, ETIMEDOUT, "agent: no answer in time");
		ret = poll(&p, 1, (int)(left > 60000 ? 60000 : left));
		if (ret < 0 && errno != EINTR)
			return ac_fail(err, errno, "poll: %s", strerror(errno));
		if (ret > 0) {
			ret = ac_next_frame(c, f, 1, err);
			if (ret != -EAGAIN)
				return ret;
		}
	}
}

/* An ERROR record into -errno and a message. */
int ac_error_frame(const struct kp_frame *f, struct kac_err *err)
{
	struct kp_rec r;
	struct kp_field fl;
	uint64_t code = 0, eno = 0;
	char msg[256] = "", path[200] = "";
	int e;

	kp_rec_open(&r, f->payload, f->len);
	while (kp_rec_next(&r, &fl) == 1) {
		if (fl.tag == KT_CODE)
			kp_field_u64(&fl, &code);
		else if (fl.tag == KT_ERRNO)
			kp_field_u64(&fl, &eno);
		else if (fl.tag == KT_MESSAGE)
			kp_field_str(&fl, msg, sizeof(msg));
		else if (fl.tag == KT_PATH)
			kp_field_str(&fl, path, sizeof(path));
	}
	switch (code) {
	case KP_ERR_OS:		e = eno && eno < 4096 ? (int)eno : EIO; break;
	case KP_ERR_NO_SUCH:	e = ESRCH; break;
	case KP_ERR_BAD_ARGS:	e = EINVAL; break;
	case KP_ERR_UNKNOWN_OP:	e = EOPNOTSUPP; break;
	case KP_ERR_LIMIT:	e = EAGAIN; break;
	case KP_ERR_CANCELLED:	e = ECANCELED; break;
	case KP_ERR_DETACHED:	e = EBUSY; break;
	case KP_ERR_ID_IN_USE:	e = EEXIST; break;
	case KP_ERR_VERSION:
	case KP_ERR_PROTO:
	case KP_ERR_CREDIT:	e = EPROTO; break;
	default:		e = EIO; break;
	}
	if (err)
		err->code = (uint32_t)code;
	if (!msg[0])
		snprintf(msg, sizeof(msg), "%s", strerror(e));
	if (path[0])
		return ac_fail(err, e, "%s: %s", path, msg);
	return ac_fail(err, e, "%s", msg);
}
