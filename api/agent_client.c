/*
 * kiln agent client (docs/agent-protocol.md, host side). One engine runs every
 * operation: send a REQUEST, then poll the socket (and, for streams, the
 * input fd while the agent has granted credit, and the signal pipe) and
 * dispatch the agent's frames until the request's terminal frame.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "agent_proto.h"
#include "agent_client.h"

#define KAC_WINDOW	KP_DEFAULT_WINDOW	/* credit we grant per channel */
#define KAC_RBUF	(256u << 10)		/* socket read-ahead */
#define KAC_CHUNK	(256u << 10)		/* largest DATA we send */
#define KAC_SBUF	(KP_MAX_CONTROL + KP_HDR_LEN)

struct kac {
	int fd;				/* non-blocking: every wait is a poll with a deadline */
	int timeout_ms;			/* kac_set_timeout; 0: no limit */
	int broken;			/* -errno once the connection is unusable (why says why) */
	char why[sizeof(((struct kac_err *)0)->msg)];
	uint64_t pings;			/* PINGs sent (their opaque values) */
	uint32_t next_id;
	uint32_t peer_window;		/* the agent's initial credit per channel */
	uint32_t peer_max;		/* the agent's max payload */
	char agent[128];
	struct kp_decoder dec;
	uint8_t *dbuf;			/* decoder payload buffer, KP_MAX_PAYLOAD */
	uint8_t *rbuf;			/* bytes read, not yet decoded: rbuf[rpos..rlen) */
	uint32_t rpos, rlen;
	uint8_t *sbuf;			/* record frames we send */
	uint8_t *chunk;			/* stream input bytes we send */
};

/* How long a request may go without a frame (kac_set_timeout). */
enum op_wait {
	OP_ANSWER,		/* answered soon: its next frame is due within the timeout */
	OP_ALIVE,		/* any time while the agent is alive: a PING when quiet, any frame counts */
	OP_ALIVE_STARTED,	/* OP_ANSWER until its first RESPONSE (a process started), then OP_ALIVE */
};

/* One running request and what to do with its frames. */
struct op {
	uint32_t id;
	int done;
	enum op_wait wait;
	int started;			/* its first RESPONSE came */
	int ret;			/* -errno from an ERROR, else 0 */
	/* records: called for RESPONSE and EVENT payloads */
	int (*on_rec)(struct op *o, const struct kp_frame *f);
	void *arg;
	/* channel 0 (host to guest) */
	int in_fd;
	int in_eof_sent;
	uint64_t in_off;
	uint64_t in_credit;
	/* channels 1 and 2 (guest to host) */
	int out_fd[3];
	kac_data_fn out_fn;
	void *out_arg;
	uint64_t out_off[3];
	uint64_t out_credit[3];
	uint32_t out_pend[3];		/* consumed, credit not yet returned */
	int out_dead[3];		/* our consumer failed: discard */
	int out_err;
	/* exec */
	struct kac_exit *ex;
	int sig_fd;
	int sig_pending[8];
	int nsig;
	uint32_t sig_ids[8];		/* SIGNAL requests in flight, answers ignored */
	int64_t size;			/* the U64 result field res_tag (u64_rec), -1 if absent */
	uint8_t res_tag;
	int detach;			/* exec: done at the RESPONSE */
	int tty_fd;			/* SIGWINCH on sig_fd: RESIZE to this terminal's size */
	kac_gap_fn gap_fn;
	void *gap_arg;
};

static int fail(struct kac_err *err, int errnum, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int fail(struct kac_err *err, int errnum, const char *fmt, ...)
{
	va_list ap;

	if (err) {
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
		va_end(ap);
	}
	return -errnum;
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int write_all(int fd, const void *p, size_t n)
{
	const uint8_t *b = p;
	ssize_t w;

	while (n) {
		w = write(fd, b, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -errno;
		b += w;
		n -= (size_t)w;
	}
	return 0;
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
static int conn_lost(struct kac *c, int ret, const struct kac_err *err)
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
static int conn_stalled(struct kac *c, struct kac_err *err, const char *what)
{
	char t[32];

	fail(err, ETIMEDOUT, "%s %s", what, span(t, sizeof(t), c->timeout_ms));
	if (err)
		err->code = KAC_ERR_TIMEOUT;
	return conn_lost(c, -ETIMEDOUT, err);
}

/*
 * Send a whole frame. The socket is non-blocking: an agent that stops
 * reading leaves us waiting at most the timeout for room, then the
 * connection is closed (a frame cut short cannot be taken back).
 */
static int send_frame(struct kac *c, const void *p, size_t n, struct kac_err *err)
{
	struct pollfd pf = { .fd = c->fd, .events = POLLOUT };
	struct kac_err local;
	const uint8_t *b = p;
	int64_t due = -1, left;
	ssize_t w;

	if (!err)
		err = &local;
	if (c->broken)
		return fail(err, -c->broken, "agent connection closed earlier: %s", c->why);
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
			return conn_lost(c, fail(err, errno, "agent connection: send: %s", strerror(errno)), err);
		if (c->timeout_ms > 0 && due < 0)
			due = now_ms() + c->timeout_ms;
		left = due < 0 ? -1 : due - now_ms();
		if (due >= 0 && left <= 0)
			return conn_stalled(c, err, "the agent stopped reading: nothing could be sent for");
		if (poll(&pf, 1, left < 0 || left > 60000 ? 60000 : (int)left) < 0 && errno != EINTR)
			return conn_lost(c, fail(err, errno, "poll: %s", strerror(errno)), err);
	}
	return 0;
}

static uint32_t new_id(struct kac *c)
{
	if (++c->next_id == 0)
		c->next_id = 1;
	return c->next_id;
}

/* ---- connecting ------------------------------------------------------------- */

/*
 * One attempt: connect, CONNECT, read the OK line a byte at a time (the
 * agent's HELLO may follow it at once). Returns 0, -EAGAIN when worth
 * retrying (socket missing or refused, or closed without OK), or -errno.
 */
static int vsock_connect_once(const char *uds, int64_t deadline, int *fdp)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char line[64];
	size_t n = 0;
	int fd, ret;
	struct pollfd p;

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
	ret = write_all(fd, line, strlen(line));
	if (ret) {
		close(fd);
		return ret == -EPIPE || ret == -ECONNRESET ? -EAGAIN : ret;
	}
	for (;;) {
		int64_t left = deadline - now_ms();
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

static int read_frame(struct kac *c, struct kp_frame *f, int64_t deadline, struct kac_err *err);

int kac_connect(struct kac **out, const char *uds, int timeout_ms, struct kac_err *err)
{
	int64_t deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
	struct kac *c;
	struct kp_frame f;
	struct kp_rec r;
	struct kp_field fl;
	uint64_t v, version = 0;
	int ret, last = 0, n;
	useconds_t backoff_us = 1000;

	if (err)
		err->code = 0;
	if (strlen(uds) >= sizeof(((struct sockaddr_un *)0)->sun_path))
		return fail(err, ENAMETOOLONG, "%s: socket path too long (at most %zu bytes)", uds,
			    sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
	c = calloc(1, sizeof(*c));
	if (!c)
		return fail(err, ENOMEM, "out of memory");
	c->fd = -1;
	c->timeout_ms = KAC_TIMEOUT_DEFAULT_MS;
	c->dbuf = malloc(KP_MAX_PAYLOAD);
	c->rbuf = malloc(KAC_RBUF);
	c->sbuf = malloc(KAC_SBUF);
	c->chunk = malloc(KP_DATA_HDR_LEN + KAC_CHUNK);
	if (!c->dbuf || !c->rbuf || !c->sbuf || !c->chunk) {
		ret = fail(err, ENOMEM, "out of memory");
		goto err_free;
	}
	kp_dec_init(&c->dec, c->dbuf, KP_MAX_PAYLOAD);

	for (;;) {
		ret = vsock_connect_once(uds, deadline, &c->fd);
		if (ret == 0)
			break;
		if (ret == -ENOENT || ret == -ECONNREFUSED || ret == -EAGAIN)
			last = ret;
		else if (ret != -ETIMEDOUT)
			goto err_conn;
		if (ret == -ETIMEDOUT || now_ms() >= deadline) {
			if (last == -ENOENT || last == -ECONNREFUSED) {
				ret = last;
				goto err_conn;
			}
			ret = fail(err, ETIMEDOUT, "%s: the VM is up but no agent answered on vsock port %u "
				   "within %d ms (boot the guest with --cmdline kiln.agent)",
				   uds, KP_VSOCK_PORT, timeout_ms);
			goto err_free;
		}
		/* Quick at first (a VM being restored is up in milliseconds), then every 50 ms. */
		usleep(backoff_us);
		if (backoff_us < 50 * 1000)
			backoff_us *= 2;
	}
	if (fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK) < 0) {
		ret = fail(err, errno, "%s: fcntl: %s", uds, strerror(errno));
		goto err_close;
	}

	n = kp_enc_hello(c->sbuf, KAC_SBUF, KAC_WINDOW, KP_MAX_PAYLOAD, "kiln 0.1");
	if (n < 0) {
		ret = fail(err, EINVAL, "HELLO: %s", kp_strerror(n));
		goto err_close;
	}
	ret = send_frame(c, c->sbuf, (size_t)n, err);
	if (ret)
		goto err_close;
	ret = read_frame(c, &f, deadline + 10000, err);
	if (ret)
		goto err_close;
	if (f.type != KP_HELLO) {
		ret = fail(err, EPROTO, "agent: sent %s before HELLO", kp_type_name(f.type));
		goto err_close;
	}
	c->peer_window = KP_DEFAULT_WINDOW;
	c->peer_max = KP_MAX_PAYLOAD;
	kp_rec_open(&r, f.payload, f.len);
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
	if (version < 1) {
		ret = fail(err, EPROTO, "agent: HELLO without a protocol version");
		goto err_close;
	}
	if (c->peer_max < KP_MIN_PAYLOAD_CAP) {
		ret = fail(err, EPROTO, "agent: HELLO max_frame %u below the minimum %u",
			   c->peer_max, KP_MIN_PAYLOAD_CAP);
		goto err_close;
	}
	*out = c;
	return 0;

err_conn:
	if (ret == -ENOENT || ret == -ECONNREFUSED)
		ret = fail(err, -ret, "%s: no VM listening (start kiln-vmm with --vsock cid=3,uds=%s "
			   "--cmdline kiln.agent)", uds, uds);
	else
		ret = fail(err, -ret, "%s: %s", uds, strerror(-ret));
	goto err_free;
err_close:
	close(c->fd);
err_free:
	free(c->chunk);
	free(c->sbuf);
	free(c->rbuf);
	free(c->dbuf);
	free(c);
	return ret;
}

void kac_close(struct kac *c)
{
	if (!c)
		return;
	close(c->fd);
	free(c->chunk);
	free(c->sbuf);
	free(c->rbuf);
	free(c->dbuf);
	free(c);
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
static int next_frame(struct kac *c, struct kp_frame *f, int may_read, struct kac_err *err)
{
	size_t used;
	ssize_t r;
	int ret;

	for (;;) {
		if (c->rpos < c->rlen) {
			ret = kp_dec_feed(&c->dec, c->rbuf + c->rpos, c->rlen - c->rpos, &used, f);
			c->rpos += (uint32_t)used;
			if (ret < 0)
				return fail(err, EPROTO, "agent: malformed frame: %s", kp_strerror(ret));
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
			return fail(err, errno, "agent connection: %s", strerror(errno));
		if (r == 0)
			return fail(err, ECONNRESET, "agent closed the connection (did the VM stop?)");
		c->rlen = (uint32_t)r;
		may_read = 0;
	}
}

/* Block (until deadline) for the next frame. */
static int read_frame(struct kac *c, struct kp_frame *f, int64_t deadline, struct kac_err *err)
{
	struct pollfd p = { .fd = c->fd, .events = POLLIN };
	int ret;

	for (;;) {
		ret = next_frame(c, f, 0, err);
		if (ret != -EAGAIN)
			return ret;
		int64_t left = deadline - now_ms();
		if (left <= 0)
			return fail(err, ETIMEDOUT, "agent: no answer in time");
		ret = poll(&p, 1, (int)(left > 60000 ? 60000 : left));
		if (ret < 0 && errno != EINTR)
			return fail(err, errno, "poll: %s", strerror(errno));
		if (ret > 0) {
			ret = next_frame(c, f, 1, err);
			if (ret != -EAGAIN)
				return ret;
		}
	}
}

/* An ERROR record into -errno and a message. */
static int error_frame(const struct kp_frame *f, struct kac_err *err)
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
		return fail(err, e, "%s: %s", path, msg);
	return fail(err, e, "%s", msg);
}

/* ---- the engine ------------------------------------------------------------- */

static void op_init(struct op *o, uint32_t id)
{
	memset(o, 0, sizeof(*o));
	o->id = id;
	o->in_fd = -1;
	o->out_fd[0] = o->out_fd[1] = o->out_fd[2] = -1;
	o->sig_fd = -1;
	o->tty_fd = -1;
	o->out_credit[1] = o->out_credit[2] = KAC_WINDOW;
}

/* A request record: the caller fills w (opened by req_begin) after KT_OP. */
static void req_begin(struct kac *c, struct kp_recw *w, uint64_t op)
{
	kp_recw_init(w, c->sbuf + KP_HDR_LEN, KAC_SBUF - KP_HDR_LEN);
	kp_put_u64(w, KT_OP, op);
}

static int req_send(struct kac *c, uint32_t id, struct kp_recw *w, struct kac_err *err)
{
	int n = kp_enc_rec_frame(c->sbuf, KAC_SBUF, KP_REQUEST, 0, id, w);

	if (n < 0)
		return fail(err, n == -KP_ENOSPC || n == -KP_EOVERSIZE ? E2BIG : EINVAL,
			    "request: %s", n == -KP_EREC ? "an argument contains a NUL byte" :
			    n == -KP_ENOSPC || n == -KP_EOVERSIZE ? "arguments too long (256 KiB at most)" :
			    kp_strerror(n));
	return send_frame(c, c->sbuf, (size_t)n, err);
}

/* A new request o of operation op, answered soon (OP_ANSWER): w opened for its arguments. */
static void op_start(struct kac *c, struct op *o, struct kp_recw *w, uint64_t op)
{
	op_init(o, new_id(c));
	req_begin(c, w, op);
}

static int send_signal_req(struct kac *c, struct op *o, uint64_t handle, int sig, struct kac_err *err)
{
	struct kp_recw w;
	uint32_t id = new_id(c);

	req_begin(c, &w, KP_OP_SIGNAL);
	kp_put_u64(&w, KT_HANDLE, handle);
	kp_put_u64(&w, KT_SIGNAL, (uint64_t)sig);
	if (o) {
		memmove(o->sig_ids + 1, o->sig_ids, sizeof(o->sig_ids) - sizeof(o->sig_ids[0]));
		o->sig_ids[0] = id;
	}
	return req_send(c, id, &w, err);
}

/* A signal from sig_fd: SIGWINCH becomes RESIZE to tty_fd's size, others SIGNAL. */
static int forward_sig(struct kac *c, struct op *o, int sig, struct kac_err *err)
{
	struct winsize ws;
	struct kp_recw w;
	uint32_t id;

	if (sig != SIGWINCH)
		return send_signal_req(c, o, o->ex->handle, sig, err);
	if (o->tty_fd < 0 || ioctl(o->tty_fd, TIOCGWINSZ, &ws) < 0 || !ws.ws_row || !ws.ws_col)
		return 0;
	id = new_id(c);
	req_begin(c, &w, KP_OP_RESIZE);
	kp_put_u64(&w, KT_HANDLE, o->ex->handle);
	kp_put_u64(&w, KT_ROWS, ws.ws_row);
	kp_put_u64(&w, KT_COLS, ws.ws_col);
	memmove(o->sig_ids + 1, o->sig_ids, sizeof(o->sig_ids) - sizeof(o->sig_ids[0]));
	o->sig_ids[0] = id;
	return req_send(c, id, &w, err);
}

static int flush_credit(struct kac *c, struct op *o, int ch, struct kac_err *err)
{
	uint8_t win[KP_HDR_LEN + 4];
	uint32_t n = o->out_pend[ch];

	if (!n)
		return 0;
	o->out_pend[ch] = 0;
	o->out_credit[ch] += n;
	kp_enc_window(win, o->id, (uint16_t)ch, n);
	return send_frame(c, win, sizeof(win), err);
}

/* Deliver DATA for channel ch to the op's sink, then return the credit. */
static int on_data(struct kac *c, struct op *o, const struct kp_frame *f, struct kac_err *err)
{
	uint64_t off;
	const uint8_t *p;
	uint32_t n;
	uint8_t win[KP_HDR_LEN + 4];
	int ch = f->channel, ret = 0;

	if (ch == KP_CHAN_IN || kp_parse_data(f, &off, &p, &n))
		return fail(err, EPROTO, "agent: DATA on channel %d of request %u", ch, f->id);
	if (n > o->out_credit[ch])
		return fail(err, EPROTO, "the agent sent more than the credit it was granted (%u bytes of %s "
			    "on request %u, %llu granted): protocol violation, connection closed", n,
			    ch == KP_CHAN_OUT ? "stdout" : "stderr", f->id, (unsigned long long)o->out_credit[ch]);
	o->out_credit[ch] -= n;
	/* A gap (only under KP_OVF_DROP, which we never ask for) is not an error. */
	o->out_off[ch] = off + n;
	if (!o->out_dead[ch] && n) {
		if (o->out_fn)
			ret = o->out_fn(o->out_arg, ch, p, n);
		else if (o->out_fd[ch] >= 0)
			ret = write_all(o->out_fd[ch], p, n);
		if (ret) {
			/*
			 * Our consumer is gone. A process gets SIGPIPE, as it would
			 * writing into a closed pipe on the host (`kiln exec -- yes |
			 * head` ends); other streams are cancelled. The channel's
			 * later output is discarded, its credit still returned.
			 */
			o->out_dead[ch] = 1;
			if (!o->out_err)
				o->out_err = ret;
			if (o->ex && o->ex->handle)
				ret = send_signal_req(c, o, o->ex->handle, SIGPIPE, err);
			else if (!o->ex)
				ret = send_frame(c, win, (size_t)kp_enc_cancel(win, f->id, KP_CHAN_ALL), err);
			else
				ret = 0;
			if (ret)
				return ret;
		}
	}
	/* Credit goes back in batches: at half the window, or before we wait. */
	o->out_pend[ch] += n;
	if (o->out_pend[ch] >= KAC_WINDOW / 2)
		return flush_credit(c, o, ch, err);
	return 0;
}

static int dispatch(struct kac *c, struct op *o, const struct kp_frame *f, struct kac_err *err)
{
	uint8_t pong[KP_HDR_LEN + 8];
	uint64_t v;
	uint32_t inc;
	int i, ret;

	if (f->id == 0) {
		switch (f->type) {
		case KP_PING:
			kp_parse_u64(f, &v);
			kp_enc_ping(pong, KP_PONG, v);
			return send_frame(c, pong, sizeof(pong), err);
		case KP_PONG:
			return 0;
		case KP_ERROR:
			ret = error_frame(f, err);
			if (err) {
				char m[sizeof(err->msg)];

				snprintf(m, sizeof(m), "agent closed the connection: %.400s", err->msg);
				memcpy(err->msg, m, sizeof(m));
			}
			return ret;
		default:
			return fail(err, EPROTO, "agent: unexpected %s on id 0", kp_type_name(f->type));
		}
	}
	if (f->id != o->id) {
		for (i = 0; i < 8; i++)
			if (o->sig_ids[i] == f->id)
				return 0;	/* answer to a forwarded signal */
		return 0;			/* a late frame of an earlier request */
	}
	switch (f->type) {
	case KP_RESPONSE:
	case KP_EVENT:
		if (f->type == KP_RESPONSE)
			o->started = 1;
		if (o->on_rec) {
			ret = o->on_rec(o, f);
			if (ret)
				return fail(err, -ret, "agent: malformed %s record", kp_type_name(f->type));
		}
		if ((f->flags & KP_F_END) || (o->detach && f->type == KP_RESPONSE))
			o->done = 1;
		return 0;
	case KP_ERROR:
		o->ret = error_frame(f, err);
		o->done = 1;
		return 0;
	case KP_DATA:
		return on_data(c, o, f, err);
	case KP_EOF:
		if (f->flags & KP_F_END)
			o->done = 1;
		return 0;
	case KP_WINDOW:
		if (f->channel != KP_CHAN_IN || kp_parse_window(f, &inc) || inc == 0 ||
		    o->in_credit + inc > 0xffffffffu)
			return fail(err, EPROTO, "agent: bad WINDOW on request %u", f->id);
		o->in_credit += inc;
		return 0;
	default:
		return fail(err, EPROTO, "agent: unexpected %s on request %u", kp_type_name(f->type), f->id);
	}
}

/* Read up to the credit from in_fd and send it as DATA, or EOF at its end. */
static int pump_in(struct kac *c, struct op *o, struct kac_err *err)
{
	uint32_t max = c->peer_max - 8, want = KAC_CHUNK;
	uint8_t eof[KP_HDR_LEN + 8];
	ssize_t r;
	int ret;

	if (want > max)
		want = max;
	if (want > o->in_credit)
		want = (uint32_t)o->in_credit;
	do
		r = read(o->in_fd, c->chunk + KP_DATA_HDR_LEN, want);
	while (r < 0 && errno == EINTR);
	if (r < 0) {
		if (errno == EAGAIN)
			return 0;
		return fail(err, errno, "reading input: %s", strerror(errno));
	}
	if (r == 0) {
		kp_enc_eof(eof, o->id, KP_CHAN_IN, 0, o->in_off);
		o->in_eof_sent = 1;
		return send_frame(c, eof, sizeof(eof), err);
	}
	ret = kp_enc_data_hdr(c->chunk, o->id, KP_CHAN_IN, o->in_off, (uint32_t)r);
	if (ret < 0)
		return fail(err, EINVAL, "DATA: %s", kp_strerror(ret));
	o->in_off += (uint64_t)r;
	o->in_credit -= (uint64_t)r;
	return send_frame(c, c->chunk, KP_DATA_HDR_LEN + (size_t)r, err);
}

/* Whether any frame of the agent's (a PONG too) shows progress for o, or only o's own. */
static int op_alive(const struct op *o)
{
	return o->wait == OP_ALIVE || (o->wait == OP_ALIVE_STARTED && o->started);
}

/*
 * The next frame, dispatched: 0 when one was, -EAGAIN when none is there
 * without reading (may_read 0) or none came of the bytes read, else -errno
 * with the connection closed (malformed frame, protocol violation, agent
 * gone). *heard is set to now (and *pinged cleared) when the frame shows
 * progress for o.
 */
static int op_step(struct kac *c, struct op *o, int may_read, int64_t *heard, int *pinged,
		   struct kac_err *err)
{
	struct kp_frame f;
	int ret = next_frame(c, &f, may_read, err);

	if (ret == 0)
		ret = dispatch(c, o, &f, err);
	if (ret == -EAGAIN)
		return ret;
	if (ret)
		return conn_lost(c, ret, err);
	if (f.id == o->id || op_alive(o)) {
		*heard = now_ms();	/* after dispatch: time our consumer took is not the agent's */
		*pinged = 0;
	}
	return 0;
}

/*
 * How long to poll before the agent has been silent too long (c->timeout_ms
 * since *heard), -1 without a limit. An alive op sends a PING half way, so a
 * live agent answers in time however long the request takes. Returns the
 * poll timeout in ms, or -errno (the connection closed) once silent too long.
 */
static int op_quiet(struct kac *c, struct op *o, int64_t heard, int *pinged, struct kac_err *err)
{
	uint8_t ping[KP_HDR_LEN + 8];
	int64_t now = now_ms(), quiet = now - heard, half = c->timeout_ms / 2;
	int ret;

	if (c->timeout_ms <= 0)
		return -1;
	if (quiet >= c->timeout_ms)
		return conn_stalled(c, err, "the agent did not answer within");
	if (!op_alive(o))
		return (int)(c->timeout_ms - quiet);
	if (!*pinged && quiet >= half) {
		kp_enc_ping(ping, KP_PING, ++c->pings);
		ret = send_frame(c, ping, sizeof(ping), err);
		if (ret)
			return ret < -1 ? ret : -EIO;	/* -1 is "no limit" to the caller */
		*pinged = 1;
	}
	return (int)((*pinged ? c->timeout_ms : half) - quiet);
}

/*
 * Run o until its terminal frame. deadline < 0: none. On the deadline,
 * returns -ETIMEDOUT (the caller decides what to do about the request).
 * Whatever the deadline, an agent silent for longer than the connection's
 * timeout (op_quiet) closes the connection.
 */
static int op_run(struct kac *c, struct op *o, int64_t deadline, struct kac_err *err)
{
	struct pollfd p[3];
	int64_t heard = now_ms();
	int ret, n, i, tmo, pinged = 0;
	uint8_t sig;

	while (!o->done) {
		/* Drain frames already buffered before polling. */
		ret = op_step(c, o, 0, &heard, &pinged, err);
		if (ret == 0)
			continue;
		if (ret != -EAGAIN)
			return ret;
		for (i = KP_CHAN_OUT; i <= KP_CHAN_ERR; i++) {
			ret = flush_credit(c, o, i, err);
			if (ret)
				return ret;
		}
		/* Signals that waited for the process handle. */
		if (o->ex && o->ex->handle && o->nsig) {
			for (i = 0; i < o->nsig; i++) {
				ret = forward_sig(c, o, o->sig_pending[i], err);
				if (ret)
					return ret;
			}
			o->nsig = 0;
		}
		n = 0;
		p[n++] = (struct pollfd){ .fd = c->fd, .events = POLLIN };
		int in_slot = -1, sig_slot = -1;
		if (o->in_fd >= 0 && !o->in_eof_sent && o->in_credit > 0) {
			in_slot = n;
			p[n++] = (struct pollfd){ .fd = o->in_fd, .events = POLLIN };
		}
		if (o->sig_fd >= 0) {
			sig_slot = n;
			p[n++] = (struct pollfd){ .fd = o->sig_fd, .events = POLLIN };
		}
		tmo = op_quiet(c, o, heard, &pinged, err);
		if (tmo < -1)
			return tmo;
		if (deadline >= 0) {
			int64_t left = deadline - now_ms();

			if (left <= 0)
				return fail(err, ETIMEDOUT, "timed out");
			if (tmo < 0 || left < tmo)
				tmo = left > 60000 ? 60000 : (int)left;
		}
		ret = poll(p, (nfds_t)n, tmo);
		if (ret < 0) {
			if (errno == EINTR)
				continue;
			return fail(err, errno, "poll: %s", strerror(errno));
		}
		if (sig_slot >= 0 && p[sig_slot].revents) {
			if (read(o->sig_fd, &sig, 1) == 1) {
				if (o->ex && o->ex->handle) {
					ret = forward_sig(c, o, sig, err);
					if (ret)
						return ret;
				} else if (o->nsig < 8) {
					o->sig_pending[o->nsig++] = sig;
				}
			}
		}
		if (in_slot >= 0 && p[in_slot].revents) {
			ret = pump_in(c, o, err);
			if (ret)
				return ret;
			if (op_alive(o))
				heard = now_ms();	/* the agent took what we sent */
		}
		if (p[0].revents) {
			ret = op_step(c, o, 1, &heard, &pinged, err);
			if (ret && ret != -EAGAIN)
				return ret;
		}
	}
	return o->ret;
}

static int64_t deadline_of(int timeout_ms)
{
	return timeout_ms > 0 ? now_ms() + timeout_ms : -1;
}

/* Send o's REQUEST (its record w) and run it to its end (op_run). */
static int op_send_run(struct kac *c, struct op *o, struct kp_recw *w, int64_t deadline, struct kac_err *err)
{
	int ret;

	if (err)
		err->code = 0;
	ret = req_send(c, o->id, w, err);
	if (ret)
		return ret;
	return op_run(c, o, deadline, err);
}

/* A simple request: one REQUEST, RESPONSE|END or ERROR. */
static int simple(struct kac *c, struct op *o, struct kp_recw *w, struct kac_err *err)
{
	return op_send_run(c, o, w, -1, err);
}

/* ---- exec ------------------------------------------------------------------- */

static int exec_rec(struct op *o, const struct kp_frame *f)
{
	struct kac_exit *ex = o->ex;
	struct kp_rec r;
	struct kp_field fl;
	uint64_t v;
	int64_t i;
	int b, ret;

	if (kp_rec_find(f->payload, f->len, KT_EVENT, &fl) == 1 && !kp_field_u64(&fl, &v) && v == KP_EV_GAP) {
		uint64_t ch = 0, from = 0, to = 0;

		kp_rec_open(&r, f->payload, f->len);
		while ((ret = kp_rec_next(&r, &fl)) == 1) {
			if (fl.tag == KT_CHANNEL)
				kp_field_u64(&fl, &ch);
			else if (fl.tag == KT_LOST_FROM)
				kp_field_u64(&fl, &from);
			else if (fl.tag == KT_LOST_TO)
				kp_field_u64(&fl, &to);
		}
		if (ret < 0 || ch < 1 || ch > 2 || to < from)
			return -EPROTO;
		if (o->gap_fn)
			o->gap_fn(o->gap_arg, (int)ch, from, to);
		return 0;
	}
	kp_rec_open(&r, f->payload, f->len);
	while ((ret = kp_rec_next(&r, &fl)) == 1) {
		switch (fl.tag) {
		case KT_HANDLE: if (!kp_field_u64(&fl, &v)) ex->handle = v; break;
		case KT_PID: if (!kp_field_u64(&fl, &v)) ex->pid = v; break;
		case KT_CODE:
			if (!kp_field_i64(&fl, &i))
				ex->code = i;
			else if (!kp_field_u64(&fl, &v))
				ex->code = (int64_t)v;
			break;
		case KT_SIGNAL: if (!kp_field_u64(&fl, &v)) ex->signal = (int)v; break;
		case KT_CORE: if (!kp_field_bool(&fl, &b)) ex->core = b; break;
		case KT_OOM: if (!kp_field_bool(&fl, &b)) ex->oom = b; break;
		}
	}
	return ret < 0 ? -EPROTO : 0;
}

int kac_exec(struct kac *c, const struct kac_exec_opts *eo, struct kac_exit *ex, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;
	int ret, i;

	if (err)
		err->code = 0;
	if (!eo->argv || !eo->argv[0])
		return fail(err, EINVAL, "exec: no command given");
	memset(ex, 0, sizeof(*ex));
	ex->code = -1;
	op_start(c, &o, &w, KP_OP_EXEC);
	o.on_rec = exec_rec;
	o.ex = ex;
	o.in_fd = eo->stdin_fd;
	o.in_credit = c->peer_window;
	o.out_fd[1] = eo->stdout_fd;
	o.out_fd[2] = eo->stderr_fd;
	o.out_fn = eo->out_fn;
	o.out_arg = eo->out_arg;
	o.sig_fd = eo->sig_fd;
	o.tty_fd = eo->pty ? eo->tty_fd : -1;
	o.detach = eo->detach;
	o.gap_fn = eo->gap_fn;
	o.gap_arg = eo->gap_arg;
	if (eo->detach) {
		o.in_fd = -1;
		o.sig_fd = -1;
	}

	for (i = 0; eo->argv[i]; i++)
		kp_put_str(&w, KT_ARG, eo->argv[i]);
	for (i = 0; eo->env && eo->env[i]; i++)
		kp_put_str(&w, KT_ENV, eo->env[i]);
	if (eo->cwd)
		kp_put_str(&w, KT_CWD, eo->cwd);
	kp_put_u64(&w, KT_STDIN, eo->stdin_fd >= 0 && !eo->detach ? KP_IO_PIPE : KP_IO_NULL);
	kp_put_u64(&w, KT_STDOUT, KP_IO_PIPE);
	kp_put_u64(&w, KT_STDERR, KP_IO_PIPE);
	if (eo->pty) {
		kp_put_bool(&w, KT_PTY, 1);
		kp_put_u64(&w, KT_ROWS, eo->rows ? eo->rows : 24);
		kp_put_u64(&w, KT_COLS, eo->cols ? eo->cols : 80);
	}
	if (eo->ring)
		kp_put_u64(&w, KT_RING, eo->ring);
	if (eo->overflow_drop)
		kp_put_u64(&w, KT_OVERFLOW, KP_OVF_DROP);
	o.wait = OP_ALIVE_STARTED;
	ret = op_send_run(c, &o, &w, deadline_of(eo->timeout_ms), err);
	if (ret == 0 && eo->detach) {
		uint8_t cancel[KP_HDR_LEN];

		/* Leave the process running, its output going into its ring. */
		kp_enc_cancel(cancel, o.id, KP_CHAN_ALL);
		return send_frame(c, cancel, sizeof(cancel), err);
	}
	if (ret == -ETIMEDOUT && !o.done && ex->handle && !c->broken) {
		struct kac_err e2;

		send_signal_req(c, NULL, ex->handle, SIGKILL, &e2);
		return fail(err, ETIMEDOUT, "timed out after %d ms; the process (pid %llu) was killed",
			    eo->timeout_ms, (unsigned long long)ex->pid);
	}
	if (ret == 0 && o.out_err && o.out_err != -EPIPE)
		return fail(err, -o.out_err, "writing the process's output: %s", strerror(-o.out_err));
	return ret;
}

int kac_signal(struct kac *c, uint64_t handle, int sig, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;

	op_start(c, &o, &w, KP_OP_SIGNAL);
	kp_put_u64(&w, KT_HANDLE, handle);
	kp_put_u64(&w, KT_SIGNAL, (uint64_t)sig);
	return simple(c, &o, &w, err);
}

int kac_attach(struct kac *c, const struct kac_attach_opts *ao, struct kac_exit *ex, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;
	int ret;

	if (err)
		err->code = 0;
	memset(ex, 0, sizeof(*ex));
	ex->code = -1;
	op_start(c, &o, &w, KP_OP_ATTACH);
	o.on_rec = exec_rec;
	o.ex = ex;
	o.in_fd = ao->stdin_fd;
	o.in_credit = ao->stdin_fd >= 0 ? c->peer_window : 0;
	o.out_fd[1] = ao->stdout_fd;
	o.out_fd[2] = ao->stderr_fd;
	o.sig_fd = ao->sig_fd;
	o.tty_fd = ao->tty_fd;
	o.gap_fn = ao->gap_fn;
	o.gap_arg = ao->gap_arg;
	kp_put_u64(&w, KT_HANDLE, ao->handle);
	if (ao->out_offset != KAC_FROM_OLDEST)
		kp_put_u64(&w, KT_OUT_OFFSET, ao->out_offset);
	if (ao->err_offset != KAC_FROM_OLDEST)
		kp_put_u64(&w, KT_ERR_OFFSET, ao->err_offset);
	if (ao->stdin_fd >= 0)
		kp_put_u64(&w, KT_STDIN, KP_IO_PIPE);
	o.wait = OP_ALIVE_STARTED;
	ret = op_send_run(c, &o, &w, -1, err);
	if (ret == 0 && o.out_err && o.out_err != -EPIPE)
		return fail(err, -o.out_err, "writing the process's output: %s", strerror(-o.out_err));
	return ret;
}

int kac_wait(struct kac *c, uint64_t handle, int timeout_ms, struct kac_exit *ex, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;
	int ret;

	if (err)
		err->code = 0;
	memset(ex, 0, sizeof(*ex));
	ex->code = -1;
	ex->handle = handle;
	op_start(c, &o, &w, KP_OP_WAIT);
	o.on_rec = exec_rec;
	o.ex = ex;
	kp_put_u64(&w, KT_HANDLE, handle);
	o.wait = OP_ALIVE;
	ret = op_send_run(c, &o, &w, deadline_of(timeout_ms), err);
	if (ret == -ETIMEDOUT && !o.done && !c->broken) {
		uint8_t cancel[KP_HDR_LEN];

		kp_enc_cancel(cancel, o.id, KP_CHAN_ALL);
		send_frame(c, cancel, sizeof(cancel), NULL);
		return fail(err, ETIMEDOUT, "process %llu still running after %d ms", (unsigned long long)handle,
			    timeout_ms);
	}
	return ret;
}

int kac_release(struct kac *c, uint64_t handle, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;

	op_start(c, &o, &w, KP_OP_RELEASE);
	kp_put_u64(&w, KT_HANDLE, handle);
	return simple(c, &o, &w, err);
}

int kac_resize(struct kac *c, uint64_t handle, unsigned rows, unsigned cols, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;

	op_start(c, &o, &w, KP_OP_RESIZE);
	kp_put_u64(&w, KT_HANDLE, handle);
	kp_put_u64(&w, KT_ROWS, rows);
	kp_put_u64(&w, KT_COLS, cols);
	return simple(c, &o, &w, err);
}

struct ps_state {
	kac_proc_fn fn;
	void *arg;
	struct kac_proc pr;
};

static int ps_rec(struct op *o, const struct kp_frame *f)
{
	struct ps_state *st = o->arg;
	struct kp_rec r, e;
	struct kp_field fl, ef;
	uint64_t v;
	int64_t i;
	int b, ret;

	kp_rec_open(&r, f->payload, f->len);
	while ((ret = kp_rec_next(&r, &fl)) == 1) {
		struct kac_proc *p = &st->pr;
		size_t used = 0;

		if (fl.tag != KT_ENTRY || fl.kind != KP_K_REC)
			continue;
		memset(p, 0, sizeof(*p));
		p->exit.code = -1;
		kp_rec_open(&e, fl.val, fl.len);
		while ((ret = kp_rec_next(&e, &ef)) == 1) {
			switch (ef.tag) {
			case KT_HANDLE: if (!kp_field_u64(&ef, &v)) p->exit.handle = v; break;
			case KT_PID: if (!kp_field_u64(&ef, &v)) p->exit.pid = v; break;
			case KT_OUT_OFFSET: if (!kp_field_u64(&ef, &v)) p->out_offset = v; break;
			case KT_ERR_OFFSET: if (!kp_field_u64(&ef, &v)) p->err_offset = v; break;
			case KT_PTY: if (!kp_field_bool(&ef, &b)) p->pty = b; break;
			case KT_CODE:
				p->exited = 1;
				if (!kp_field_i64(&ef, &i))
					p->exit.code = i;
				break;
			case KT_SIGNAL: if (!kp_field_u64(&ef, &v)) p->exit.signal = (int)v; break;
			case KT_CORE: if (!kp_field_bool(&ef, &b)) p->exit.core = b; break;
			case KT_OOM: if (!kp_field_bool(&ef, &b)) p->exit.oom = b; break;
			case KT_ARG:
				if (p->argc < KAC_PROC_ARGS && ef.kind == KP_K_STR && used + ef.len + 1 <= sizeof(p->argbuf)) {
					kp_field_str(&ef, p->argbuf + used, ef.len + 1);
					p->argv[p->argc++] = p->argbuf + used;
					used += ef.len + 1;
				}
				break;
			}
		}
		if (ret < 0)
			return -EPROTO;
		ret = st->fn(st->arg, p);
		if (ret)
			return ret;
	}
	return ret < 0 ? -EPROTO : 0;
}

int kac_proc_list(struct kac *c, kac_proc_fn fn, void *arg, struct kac_err *err)
{
	struct ps_state *st = calloc(1, sizeof(*st));
	struct kp_recw w;
	struct op o;
	int ret;

	if (!st)
		return fail(err, ENOMEM, "out of memory");
	st->fn = fn;
	st->arg = arg;
	op_start(c, &o, &w, KP_OP_PROC_LIST);
	o.on_rec = ps_rec;
	o.arg = st;
	ret = simple(c, &o, &w, err);
	free(st);
	return ret;
}

/* ---- files -------------------------------------------------------------------- */

/* The U64 result field o->res_tag (a size, a handle, an offset) into o->size. */
static int u64_rec(struct op *o, const struct kp_frame *f)
{
	struct kp_field fl;
	uint64_t v;

	if (kp_rec_find(f->payload, f->len, o->res_tag, &fl) == 1 && !kp_field_u64(&fl, &v) &&
	    v <= (uint64_t)INT64_MAX)
		o->size = (int64_t)v;
	return 0;
}

/* An op whose answer is the U64 field tag (u64_rec). */
static void op_init_u64(struct op *o, uint32_t id, uint8_t tag)
{
	op_init(o, id);
	o->on_rec = u64_rec;
	o->res_tag = tag;
	o->size = -1;
}

int64_t kac_file_write(struct kac *c, const char *path, int fd, uint32_t mode, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;
	int ret;

	if (err)
		err->code = 0;
	op_init_u64(&o, new_id(c), KT_SIZE);
	o.in_fd = fd;
	o.in_credit = c->peer_window;
	req_begin(c, &w, KP_OP_FILE_WRITE);
	kp_put_str(&w, KT_PATH, path);
	kp_put_u64(&w, KT_MODE, mode & 07777);
	kp_put_bool(&w, KT_CREATE, 1);
	kp_put_bool(&w, KT_TRUNCATE, 1);
	o.wait = OP_ALIVE;
	ret = op_send_run(c, &o, &w, -1, err);
	if (ret)
		return ret;
	return o.size >= 0 ? o.size : (int64_t)o.in_off;
}

int64_t kac_file_read(struct kac *c, const char *path, int fd, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;
	int ret;

	if (err)
		err->code = 0;
	op_init_u64(&o, new_id(c), KT_SIZE);
	o.out_fd[1] = fd;
	req_begin(c, &w, KP_OP_FILE_READ);
	kp_put_str(&w, KT_PATH, path);
	o.wait = OP_ALIVE;
	ret = op_send_run(c, &o, &w, -1, err);
	if (o.out_err)
		return fail(err, -o.out_err, "writing the contents of %s: %s", path, strerror(-o.out_err));
	if (ret)
		return ret;
	return (int64_t)o.out_off[1];
}

static int stat_rec(struct op *o, const struct kp_frame *f)
{
	struct kac_stat *st = o->arg;
	struct kp_rec r;
	struct kp_field fl;
	uint64_t v;
	int64_t t;
	int ret;

	kp_rec_open(&r, f->payload, f->len);
	while ((ret = kp_rec_next(&r, &fl)) == 1) {
		if (fl.kind == KP_K_I64) {
			if (kp_field_i64(&fl, &t))
				continue;
			if (fl.tag == KT_ATIME) st->atime_ns = t;
			else if (fl.tag == KT_MTIME) st->mtime_ns = t;
			else if (fl.tag == KT_CTIME) st->ctime_ns = t;
			continue;
		}
		if (kp_field_u64(&fl, &v))
			continue;
		switch (fl.tag) {
		case KT_TYPE: st->type = (uint32_t)v; break;
		case KT_MODE: st->mode = (uint32_t)v; break;
		case KT_SIZE: st->size = v; break;
		case KT_INO: st->ino = v; break;
		case KT_NLINK: st->nlink = v; break;
		case KT_UID: st->uid = v; break;
		case KT_GID: st->gid = v; break;
		case KT_DEV: st->dev = v; break;
		case KT_RDEV: st->rdev = v; break;
		case KT_BLKSIZE: st->blksize = v; break;
		case KT_BLOCKS: st->blocks = v; break;
		}
	}
	if (!st->type)
		st->type = st->mode & S_IFMT;
	return ret < 0 ? -EPROTO : 0;
}

int kac_stat(struct kac *c, const char *path, int nofollow, struct kac_stat *st, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;

	memset(st, 0, sizeof(*st));
	op_start(c, &o, &w, KP_OP_STAT);
	o.on_rec = stat_rec;
	o.arg = st;
	kp_put_str(&w, KT_PATH, path);
	if (nofollow)
		kp_put_bool(&w, KT_NOFOLLOW, 1);
	return simple(c, &o, &w, err);
}

struct dir_arg {
	kac_dirent_fn fn;
	void *arg;
	int ret;
};

static int dir_rec(struct op *o, const struct kp_frame *f)
{
	struct dir_arg *d = o->arg;
	struct kp_rec r, e;
	struct kp_field fl, ef;
	char name[4096];
	uint64_t type;
	int ret;

	kp_rec_open(&r, f->payload, f->len);
	while ((ret = kp_rec_next(&r, &fl)) == 1) {
		if (fl.tag != KT_ENTRY || kp_field_rec(&fl, &e))
			continue;
		name[0] = '\0';
		type = 0;
		while (kp_rec_next(&e, &ef) == 1) {
			if (ef.tag == KT_NAME)
				kp_field_str(&ef, name, sizeof(name));
			else if (ef.tag == KT_TYPE)
				kp_field_u64(&ef, &type);
		}
		if (!d->ret && name[0])
			d->ret = d->fn(d->arg, name, (uint32_t)type);
	}
	return ret < 0 ? -EPROTO : 0;
}

int kac_readdir(struct kac *c, const char *path, kac_dirent_fn fn, void *arg, struct kac_err *err)
{
	struct dir_arg d = { fn, arg, 0 };
	struct kp_recw w;
	struct op o;
	int ret;

	op_start(c, &o, &w, KP_OP_READDIR);
	o.on_rec = dir_rec;
	o.arg = &d;
	kp_put_str(&w, KT_PATH, path);
	ret = simple(c, &o, &w, err);
	if (ret)
		return ret;
	if (d.ret)
		return fail(err, -d.ret, "listing %s: %s", path, strerror(-d.ret));
	return 0;
}

int kac_mkdir(struct kac *c, const char *path, uint32_t mode, int recursive, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;

	op_start(c, &o, &w, KP_OP_MKDIR);
	kp_put_str(&w, KT_PATH, path);
	kp_put_u64(&w, KT_MODE, mode & 07777);
	if (recursive)
		kp_put_bool(&w, KT_RECURSIVE, 1);
	return simple(c, &o, &w, err);
}

int kac_remove(struct kac *c, const char *path, int recursive, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;

	op_start(c, &o, &w, KP_OP_REMOVE);
	kp_put_str(&w, KT_PATH, path);
	if (recursive)
		kp_put_bool(&w, KT_RECURSIVE, 1);
	return simple(c, &o, &w, err);
}

int kac_rename(struct kac *c, const char *from, const char *to, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;

	op_start(c, &o, &w, KP_OP_RENAME);
	kp_put_str(&w, KT_PATH, from);
	kp_put_str(&w, KT_PATH2, to);
	return simple(c, &o, &w, err);
}

/* ---- in-guest copy, walk, file handles --------------------------------------- */

int64_t kac_copy(struct kac *c, const char *from, const char *to, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;
	int ret;

	op_init_u64(&o, new_id(c), KT_SIZE);
	o.wait = OP_ALIVE;	/* the agent copies 1 MiB a turn, answering PINGs meanwhile */
	req_begin(c, &w, KP_OP_COPY);
	kp_put_str(&w, KT_PATH, from);
	kp_put_str(&w, KT_PATH2, to);
	ret = simple(c, &o, &w, err);
	if (ret)
		return ret;
	return o.size >= 0 ? o.size : 0;
}

struct walk_arg {
	struct kac *c;
	kac_walk_fn fn;
	void *arg;
	int ret;		/* the callback's error: the walk was cancelled */
};

static int walk_rec(struct op *o, const struct kp_frame *f)
{
	struct walk_arg *a = o->arg;
	struct kp_rec r, e;
	struct kp_field fl, ef;
	char path[4096], name[256];
	uint8_t cancel[KP_HDR_LEN];
	uint64_t type;
	int ret;

	kp_rec_open(&r, f->payload, f->len);
	while ((ret = kp_rec_next(&r, &fl)) == 1) {
		if (fl.tag != KT_ENTRY || kp_field_rec(&fl, &e) || a->ret)
			continue;
		path[0] = name[0] = '\0';
		type = 0;
		while (kp_rec_next(&e, &ef) == 1) {
			if (ef.tag == KT_PATH)
				kp_field_str(&ef, path, sizeof(path));
			else if (ef.tag == KT_NAME)
				kp_field_str(&ef, name, sizeof(name));
			else if (ef.tag == KT_TYPE)
				kp_field_u64(&ef, &type);
		}
		if (!path[0])
			continue;
		a->ret = a->fn(a->arg, path, name, (uint32_t)type);
		/* The caller has had enough: stop the agent's walk, drain what is in flight. */
		if (a->ret && !(f->flags & KP_F_END))
			send_frame(a->c, cancel, (size_t)kp_enc_cancel(cancel, o->id, KP_CHAN_ALL), NULL);
	}
	return ret < 0 ? -EPROTO : 0;
}

int kac_walk(struct kac *c, const char *path, uint64_t max_depth, int follow, kac_walk_fn fn, void *arg,
	     struct kac_err *err)
{
	struct walk_arg a = { c, fn, arg, 0 };
	struct kp_recw w;
	struct op o;
	int ret;

	op_start(c, &o, &w, KP_OP_WALK);
	o.on_rec = walk_rec;
	o.arg = &a;
	kp_put_str(&w, KT_PATH, path);
	if (max_depth != KAC_WALK_ALL)
		kp_put_u64(&w, KT_MAX_DEPTH, max_depth);
	if (!follow)
		kp_put_bool(&w, KT_NOFOLLOW, 1);
	ret = simple(c, &o, &w, err);
	if (a.ret)
		return fail(err, -a.ret, "walking %s: %s", path, strerror(-a.ret));
	return ret;
}

/* A request on file handle fh: o opened (its result the U64 field res_tag, unless 0), w begun with op and KT_FH. */
static void fh_begin(struct kac *c, struct op *o, struct kp_recw *w, uint64_t op, uint64_t fh, uint8_t res_tag)
{
	if (res_tag)
		op_init_u64(o, new_id(c), res_tag);
	else
		op_init(o, new_id(c));
	req_begin(c, w, op);
	kp_put_u64(w, KT_FH, fh);
}

int kac_fh_open(struct kac *c, const char *path, unsigned flags, uint32_t mode, uint64_t *fh,
		struct kac_err *err)
{
	static const struct { unsigned flag; uint8_t tag; } bools[] = {
		{ KAC_FH_READ, KT_READ }, { KAC_FH_WRITE, KT_WRITE }, { KAC_FH_APPEND, KT_APPEND },
		{ KAC_FH_TRUNCATE, KT_TRUNCATE }, { KAC_FH_CREATE, KT_CREATE }, { KAC_FH_CREATE_NEW, KT_CREATE_NEW },
	};
	struct kp_recw w;
	struct op o;
	size_t i;
	int ret;

	*fh = 0;
	op_init_u64(&o, new_id(c), KT_FH);
	req_begin(c, &w, KP_OP_FH_OPEN);
	kp_put_str(&w, KT_PATH, path);
	for (i = 0; i < sizeof(bools) / sizeof(bools[0]); i++)
		if (flags & bools[i].flag)
			kp_put_bool(&w, bools[i].tag, 1);
	kp_put_u64(&w, KT_MODE, mode & 07777);
	ret = simple(c, &o, &w, err);
	if (ret)
		return ret;
	if (o.size <= 0)
		return fail(err, EPROTO, "agent: FH_OPEN answered without a handle");
	*fh = (uint64_t)o.size;
	return 0;
}

struct fh_read_arg {
	void *buf;
	size_t cap;
	int64_t n;
};

static int fh_read_rec(struct op *o, const struct kp_frame *f)
{
	struct fh_read_arg *a = o->arg;
	struct kp_field fl;

	if (kp_rec_find(f->payload, f->len, KT_DATA, &fl) == 1) {
		if (fl.kind != KP_K_BYTES || fl.len > a->cap)
			return -EPROTO;
		memcpy(a->buf, fl.val, fl.len);
		a->n = fl.len;
	} else if (kp_rec_find(f->payload, f->len, KT_EOF, &fl) == 1) {
		a->n = 0;
	}
	return 0;
}

int64_t kac_fh_read(struct kac *c, uint64_t fh, void *buf, size_t len, struct kac_err *err)
{
	struct fh_read_arg a = { buf, len > KP_FH_IO_MAX ? KP_FH_IO_MAX : len, -1 };
	struct kp_recw w;
	struct op o;
	int ret;

	fh_begin(c, &o, &w, KP_OP_FH_READ, fh, 0);
	o.on_rec = fh_read_rec;
	o.arg = &a;
	kp_put_u64(&w, KT_LENGTH, a.cap);
	ret = simple(c, &o, &w, err);
	if (ret)
		return ret;
	return a.n >= 0 ? a.n : fail(err, EPROTO, "agent: FH_READ answered without DATA or EOF");
}

/* An FH_* request whose answer is the U64 field tag, sent with w already filled. */
static int64_t fh_u64(struct kac *c, struct op *o, struct kp_recw *w, const char *what, struct kac_err *err)
{
	int ret = simple(c, o, w, err);

	if (ret)
		return ret;
	return o->size >= 0 ? o->size : fail(err, EPROTO, "agent: %s answered without a result", what);
}

int64_t kac_fh_write(struct kac *c, uint64_t fh, const void *buf, size_t len, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;

	fh_begin(c, &o, &w, KP_OP_FH_WRITE, fh, KT_LENGTH);
	kp_put_bytes(&w, KT_DATA, buf, (uint32_t)(len > KP_FH_IO_MAX ? KP_FH_IO_MAX : len));
	return fh_u64(c, &o, &w, "FH_WRITE", err);
}

int64_t kac_fh_seek(struct kac *c, uint64_t fh, int64_t offset, int whence, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;

	if (whence != SEEK_SET && whence != SEEK_CUR && whence != SEEK_END)
		return fail(err, EINVAL, "fh seek: whence must be SEEK_SET, SEEK_CUR or SEEK_END");
	fh_begin(c, &o, &w, KP_OP_FH_SEEK, fh, KT_OFFSET);
	kp_put_i64(&w, KT_OFFSET, offset);
	kp_put_u64(&w, KT_WHENCE, whence == SEEK_SET ? 0 : whence == SEEK_CUR ? 1 : 2);
	return fh_u64(c, &o, &w, "FH_SEEK", err);
}

int kac_fh_stat(struct kac *c, uint64_t fh, struct kac_stat *st, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;

	memset(st, 0, sizeof(*st));
	fh_begin(c, &o, &w, KP_OP_FH_STAT, fh, 0);
	o.on_rec = stat_rec;
	o.arg = st;
	return simple(c, &o, &w, err);
}

/* FH_SYNC, FH_TRUNCATE, FH_LOCK, FH_UNLOCK, FH_CLOSE: one optional argument, no result. */
static int fh_simple(struct kac *c, uint64_t op, uint64_t fh, uint8_t tag, uint64_t v, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;

	fh_begin(c, &o, &w, op, fh, 0);
	if (op == KP_OP_FH_LOCK)
		o.wait = OP_ALIVE;	/* held until the lock is had */
	if (tag == KT_LENGTH)
		kp_put_u64(&w, tag, v);
	else if (tag)
		kp_put_bool(&w, tag, (int)v);
	return simple(c, &o, &w, err);
}

int kac_fh_sync(struct kac *c, uint64_t fh, int data_only, struct kac_err *err)
{
	return fh_simple(c, KP_OP_FH_SYNC, fh, data_only ? KT_DATA_ONLY : 0, 1, err);
}

int kac_fh_truncate(struct kac *c, uint64_t fh, uint64_t length, struct kac_err *err)
{
	return fh_simple(c, KP_OP_FH_TRUNCATE, fh, KT_LENGTH, length, err);
}

int kac_fh_lock(struct kac *c, uint64_t fh, int exclusive, struct kac_err *err)
{
	return fh_simple(c, KP_OP_FH_LOCK, fh, exclusive ? KT_EXCLUSIVE : 0, 1, err);
}

int kac_fh_unlock(struct kac *c, uint64_t fh, struct kac_err *err)
{
	return fh_simple(c, KP_OP_FH_UNLOCK, fh, 0, 0, err);
}

int kac_fh_close(struct kac *c, uint64_t fh, struct kac_err *err)
{
	return fh_simple(c, KP_OP_FH_CLOSE, fh, 0, 0, err);
}

int kac_fh_utime(struct kac *c, uint64_t fh, int64_t atime_ns, int64_t mtime_ns, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;

	fh_begin(c, &o, &w, KP_OP_FH_UTIME, fh, 0);
	kp_put_i64(&w, KT_ATIME, atime_ns);
	kp_put_i64(&w, KT_MTIME, mtime_ns);
	return simple(c, &o, &w, err);
}

/* ---- control -------------------------------------------------------------------- */

int kac_identity(struct kac *c, const struct kac_identity *id, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;
	int i;

	op_start(c, &o, &w, KP_OP_IDENTITY);
	if (id->sandbox_id)
		kp_put_str(&w, KT_SANDBOX_ID, id->sandbox_id);
	if (id->hostname)
		kp_put_str(&w, KT_HOSTNAME, id->hostname);
	if (id->clear_env)
		kp_put_bool(&w, KT_CLEAR_ENV, 1);
	for (i = 0; id->env && id->env[i]; i++)
		kp_put_str(&w, KT_ENV, id->env[i]);
	if (id->set_clock) {
		uint64_t ns = id->realtime_ns;

		if (!ns) {
			struct timespec ts;

			clock_gettime(CLOCK_REALTIME, &ts);
			ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
		}
		kp_put_u64(&w, KT_REALTIME_NS, ns);
	}
	return simple(c, &o, &w, err);
}

int kac_shutdown(struct kac *c, int grace_ms, int reboot, struct kac_err *err)
{
	struct kp_recw w;
	struct kp_frame f;
	struct op o;
	int64_t deadline;
	int ret;

	op_start(c, &o, &w, KP_OP_SHUTDOWN);
	if (grace_ms > 0)
		kp_put_u64(&w, KT_TIMEOUT_MS, (uint64_t)grace_ms);
	if (reboot)
		kp_put_bool(&w, KT_REBOOT, 1);
	ret = simple(c, &o, &w, err);
	if (ret)
		return ret;
	/* Accepted: wait for the VM to stop, which closes the connection. */
	deadline = now_ms() + (grace_ms > 0 ? grace_ms : 5000) + 30000;
	for (;;) {
		ret = read_frame(c, &f, deadline, err);
		if (ret == -ECONNRESET)
			return 0;
		if (ret == -ETIMEDOUT)
			return fail(err, ETIMEDOUT, "the agent accepted the shutdown but the VM was still up "
				    "%d s later", (int)((grace_ms > 0 ? grace_ms : 5000) / 1000 + 30));
		if (ret)
			return ret;
	}
}

struct health_arg {
	uint64_t *uptime, *procs;
};

static int health_rec(struct op *o, const struct kp_frame *f)
{
	struct health_arg *h = o->arg;
	struct kp_field fl;

	if (kp_rec_find(f->payload, f->len, KT_UPTIME_NS, &fl) == 1)
		kp_field_u64(&fl, h->uptime);
	if (kp_rec_find(f->payload, f->len, KT_PROCS, &fl) == 1)
		kp_field_u64(&fl, h->procs);
	return 0;
}

int kac_health(struct kac *c, uint64_t *uptime_ns, uint64_t *procs, struct kac_err *err)
{
	struct health_arg h = { uptime_ns, procs };
	struct kp_recw w;
	struct op o;

	*uptime_ns = *procs = 0;
	op_start(c, &o, &w, KP_OP_HEALTH);
	o.on_rec = health_rec;
	o.arg = &h;
	return simple(c, &o, &w, err);
}

static int env_get_rec(struct op *o, const struct kp_frame *f)
{
	char **v = o->arg;
	struct kp_field fl;

	if (kp_rec_find(f->payload, f->len, KT_VALUE, &fl) != 1 || fl.kind != KP_K_STR)
		return 0;
	free(*v);
	*v = malloc(fl.len + 1);
	if (!*v)
		return -ENOMEM;
	kp_field_str(&fl, *v, fl.len + 1);
	return 0;
}

int kac_env_get(struct kac *c, const char *key, char **value, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;
	int ret;

	*value = NULL;
	op_start(c, &o, &w, KP_OP_ENV_GET);
	o.on_rec = env_get_rec;
	o.arg = value;
	kp_put_str(&w, KT_KEY, key);
	ret = simple(c, &o, &w, err);
	if (ret) {
		free(*value);
		*value = NULL;
	}
	return ret;
}

int kac_env_set(struct kac *c, const char *key, const char *value, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;

	op_start(c, &o, &w, KP_OP_ENV_SET);
	kp_put_str(&w, KT_KEY, key);
	kp_put_str(&w, KT_VALUE, value);
	return simple(c, &o, &w, err);
}

int kac_env_unset(struct kac *c, const char *key, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;

	op_start(c, &o, &w, KP_OP_ENV_DELETE);
	kp_put_str(&w, KT_KEY, key);
	return simple(c, &o, &w, err);
}

struct str_arg {
	kac_str_fn fn;
	void *arg;
	int ret;
};

static int env_list_rec(struct op *o, const struct kp_frame *f)
{
	struct str_arg *a = o->arg;
	struct kp_rec r;
	struct kp_field fl;
	char *e;
	int ret;

	kp_rec_open(&r, f->payload, f->len);
	while ((ret = kp_rec_next(&r, &fl)) == 1) {
		if (fl.tag != KT_ENV || fl.kind != KP_K_STR || a->ret)
			continue;
		e = malloc(fl.len + 1);
		if (!e)
			return -ENOMEM;
		kp_field_str(&fl, e, fl.len + 1);
		a->ret = a->fn(a->arg, e);
		free(e);
	}
	return ret < 0 ? -EPROTO : 0;
}

int kac_env_list(struct kac *c, kac_str_fn fn, void *arg, struct kac_err *err)
{
	struct str_arg a = { fn, arg, 0 };
	struct kp_recw w;
	struct op o;
	int ret;

	op_start(c, &o, &w, KP_OP_ENV_LIST);
	o.on_rec = env_list_rec;
	o.arg = &a;
	ret = simple(c, &o, &w, err);
	if (ret)
		return ret;
	return a.ret ? fail(err, -a.ret, "env list: %s", strerror(-a.ret)) : 0;
}

/* ---- ports ---------------------------------------------------------------------- */

static void port_args(struct kp_recw *w, uint16_t port, const char *addr)
{
	kp_put_u64(w, KT_PORT, port);
	if (addr)
		kp_put_str(w, KT_ADDR, addr);
}

int kac_port_connect(struct kac *c, uint16_t port, const char *addr, int in_fd, int out_fd,
		     struct kac_err *err)
{
	struct kp_recw w;
	struct op o;
	int ret;

	if (err)
		err->code = 0;
	op_start(c, &o, &w, KP_OP_PORT_CONNECT);
	o.in_fd = in_fd;
	o.in_credit = c->peer_window;
	o.out_fd[1] = out_fd;
	port_args(&w, port, addr);
	o.wait = OP_ALIVE;
	ret = op_send_run(c, &o, &w, -1, err);
	if (ret == 0 && o.out_err && o.out_err != -EPIPE)
		return fail(err, -o.out_err, "writing the port's bytes: %s", strerror(-o.out_err));
	return ret;
}

/* Read exactly n bytes (the raw tunnel starts right after the RESPONSE: no read-ahead). */
static int read_exact(int fd, uint8_t *p, size_t n, int64_t deadline)
{
	struct pollfd pf = { .fd = fd, .events = POLLIN };
	ssize_t r;

	while (n) {
		int64_t left = deadline - now_ms();

		if (left <= 0)
			return -ETIMEDOUT;
		if (poll(&pf, 1, (int)(left > 60000 ? 60000 : left)) <= 0)
			continue;
		r = read(fd, p, n);
		if (r < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -ECONNRESET;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

int kac_port_raw(struct kac *c, uint16_t port, const char *addr, int *fd, struct kac_err *err)
{
	struct kp_recw w;
	struct kp_frame f;
	struct kp_decoder dec;
	uint8_t hdr[KP_HDR_LEN];
	uint32_t len, id = new_id(c);
	size_t used;
	int64_t deadline = now_ms() + 120000;
	int ret;

	if (err)
		err->code = 0;
	if (c->rpos != c->rlen || c->next_id != 1) {
		ret = fail(err, EINVAL, "raw port connection: needs a fresh agent connection");
		goto out;
	}
	req_begin(c, &w, KP_OP_PORT_CONNECT);
	port_args(&w, port, addr);
	kp_put_bool(&w, KT_RAW, 1);
	ret = req_send(c, id, &w, err);
	if (ret)
		goto out;
	/* One frame, read by hand: the tunnel's bytes may follow it at once. */
	ret = read_exact(c->fd, hdr, sizeof(hdr), deadline);
	len = (uint32_t)hdr[0] | (uint32_t)hdr[1] << 8 | (uint32_t)hdr[2] << 16 | (uint32_t)hdr[3] << 24;
	if (!ret && (len < 8 || len - 8 > KAC_RBUF - KP_HDR_LEN))
		ret = -EPROTO;
	memcpy(c->rbuf, hdr, sizeof(hdr));
	if (!ret)
		ret = read_exact(c->fd, c->rbuf + KP_HDR_LEN, len - 8, deadline);
	if (ret) {
		ret = fail(err, -ret, "raw port connection: %s", ret == -EPROTO ? "malformed answer" :
			   ret == -ECONNRESET ? "the agent closed the connection" : strerror(-ret));
		goto out;
	}
	kp_dec_init(&dec, c->dbuf, KP_MAX_PAYLOAD);
	if (kp_dec_feed(&dec, c->rbuf, KP_HDR_LEN + len - 8, &used, &f) != 1 || f.id != id) {
		ret = fail(err, EPROTO, "raw port connection: malformed answer");
		goto out;
	}
	if (f.type == KP_ERROR) {
		ret = error_frame(&f, err);
		goto out;
	}
	if (f.type != KP_RESPONSE) {
		ret = fail(err, EPROTO, "raw port connection: %s instead of RESPONSE", kp_type_name(f.type));
		goto out;
	}
	/* The caller gets an ordinary (blocking) stream socket. */
	if (fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) & ~O_NONBLOCK) < 0) {
		ret = fail(err, errno, "raw port connection: fcntl: %s", strerror(errno));
		goto out;
	}
	*fd = c->fd;
	c->fd = -1;
	ret = 0;
out:
	kac_close(c);
	return ret;
}

struct lst_arg {
	kac_listener_fn fn;
	void *arg;
	int ret;
	struct kac_listener *one;	/* PORT_WAIT */
};

static void listener_of(struct kp_rec *e, struct kac_listener *l)
{
	struct kp_field ef;
	uint64_t v;

	memset(l, 0, sizeof(*l));
	while (kp_rec_next(e, &ef) == 1) {
		if (ef.tag == KT_PORT && !kp_field_u64(&ef, &v) && v <= 65535)
			l->port = (uint16_t)v;
		else if (ef.tag == KT_PID && !kp_field_u64(&ef, &v))
			l->pid = v;
		else if (ef.tag == KT_ADDR)
			kp_field_str(&ef, l->addr, sizeof(l->addr));
	}
}

static int lst_rec(struct op *o, const struct kp_frame *f)
{
	struct lst_arg *a = o->arg;
	struct kp_rec r, e;
	struct kp_field fl;
	struct kac_listener l;
	int ret;

	if (a->one) {		/* the LISTEN event: its fields at the top level */
		kp_rec_open(&e, f->payload, f->len);
		listener_of(&e, a->one);
		return 0;
	}
	kp_rec_open(&r, f->payload, f->len);
	while ((ret = kp_rec_next(&r, &fl)) == 1) {
		if (fl.tag != KT_ENTRY || kp_field_rec(&fl, &e) || a->ret)
			continue;
		listener_of(&e, &l);
		a->ret = a->fn(a->arg, &l);
	}
	return ret < 0 ? -EPROTO : 0;
}

int kac_port_list(struct kac *c, uint64_t pid, kac_listener_fn fn, void *arg, struct kac_err *err)
{
	struct lst_arg a = { fn, arg, 0, NULL };
	struct kp_recw w;
	struct op o;
	int ret;

	op_start(c, &o, &w, KP_OP_PORT_LIST);
	o.on_rec = lst_rec;
	o.arg = &a;
	if (pid)
		kp_put_u64(&w, KT_PID, pid);
	ret = simple(c, &o, &w, err);
	if (ret)
		return ret;
	return a.ret ? fail(err, -a.ret, "port list: %s", strerror(-a.ret)) : 0;
}

int kac_port_wait(struct kac *c, uint16_t port, uint64_t pid, int timeout_ms, struct kac_listener *l,
		  struct kac_err *err)
{
	struct lst_arg a = { NULL, NULL, 0, l };
	struct kp_recw w;
	struct op o;

	memset(l, 0, sizeof(*l));
	op_start(c, &o, &w, KP_OP_PORT_WAIT);
	o.on_rec = lst_rec;
	o.arg = &a;
	if (port)
		kp_put_u64(&w, KT_PORT, port);
	if (pid)
		kp_put_u64(&w, KT_PID, pid);
	if (timeout_ms > 0)
		kp_put_u64(&w, KT_TIMEOUT_MS, (uint64_t)timeout_ms);
	o.wait = OP_ALIVE;
	return simple(c, &o, &w, err);
}
