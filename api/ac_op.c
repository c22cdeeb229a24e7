/*
 * kiln agent client: the engine that runs every operation. Send a REQUEST,
 * then poll the socket (and, for streams, the input fd while the agent has
 * granted credit, and the signal pipe) and dispatch the agent's frames until
 * the request's terminal frame.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "agent_proto.h"
#include "io.h"
#include "agent_client.h"
#include "ac_int.h"

/* ---- the engine ------------------------------------------------------------- */

void ac_op_init(struct op *o, uint32_t id)
{
	memset(o, 0, sizeof(*o));
	o->id = id;
	o->in_fd = -1;
	o->out_fd[0] = o->out_fd[1] = o->out_fd[2] = -1;
	o->sig_fd = -1;
	o->tty_fd = -1;
	o->out_credit[1] = o->out_credit[2] = KAC_WINDOW;
}

/* A request record: the caller fills w (opened by ac_req_begin) after KT_OP. */
void ac_req_begin(struct kac *c, struct kp_recw *w, uint64_t op)
{
	kp_recw_init(w, c->sbuf + KP_HDR_LEN, KAC_SBUF - KP_HDR_LEN);
	kp_put_u64(w, KT_OP, op);
	if (c->as_user && op >= KP_OP_STAT && op <= KP_OP_FH_CLOSE)
		kp_put_bool(w, KT_AS_USER, 1);
}

void kac_set_fs_user(struct kac *c, int on)
{
	c->as_user = !!on;
}

int ac_req_send(struct kac *c, uint32_t id, struct kp_recw *w, struct kac_err *err)
{
	int n = kp_enc_rec_frame(c->sbuf, KAC_SBUF, KP_REQUEST, 0, id, w);

	if (n < 0)
		return ac_fail(err, n == -KP_ENOSPC || n == -KP_EOVERSIZE ? E2BIG : EINVAL,
			       "request: %s", n == -KP_EREC ? "an argument contains a NUL byte" :
			       n == -KP_ENOSPC || n == -KP_EOVERSIZE ? "arguments too long (256 KiB at most)" :
			       kp_strerror(n));
	return ac_send_frame(c, c->sbuf, (size_t)n, err);
}

/* A new request o of operation op, answered soon (OP_ANSWER): w opened for its arguments. */
void ac_op_start(struct kac *c, struct op *o, struct kp_recw *w, uint64_t op)
{
	ac_op_init(o, ac_new_id(c));
	ac_req_begin(c, w, op);
}

void ac_op_start_rec(struct kac *c, struct op *o, struct kp_recw *w, uint64_t op,
		     int (*on_rec)(struct op *o, const struct kp_frame *f), void *arg)
{
	ac_op_start(c, o, w, op);
	o->on_rec = on_rec;
	o->arg = arg;
}

int ac_send_signal(struct kac *c, struct op *o, uint64_t handle, int sig, struct kac_err *err)
{
	struct kp_recw w;
	uint32_t id = ac_new_id(c);

	ac_req_begin(c, &w, KP_OP_SIGNAL);
	kp_put_u64(&w, KT_HANDLE, handle);
	kp_put_u64(&w, KT_SIGNAL, (uint64_t)sig);
	if (o) {
		memmove(o->sig_ids + 1, o->sig_ids, sizeof(o->sig_ids) - sizeof(o->sig_ids[0]));
		o->sig_ids[0] = id;
	}
	return ac_req_send(c, id, &w, err);
}

/* A signal from sig_fd: SIGWINCH becomes RESIZE to tty_fd's size, others SIGNAL. */
static int forward_sig(struct kac *c, struct op *o, int sig, struct kac_err *err)
{
	struct winsize ws;
	struct kp_recw w;
	uint32_t id;

	if (sig != SIGWINCH)
		return ac_send_signal(c, o, o->ex->handle, sig, err);
	if (o->tty_fd < 0 || ioctl(o->tty_fd, TIOCGWINSZ, &ws) < 0 || !ws.ws_row || !ws.ws_col)
		return 0;
	id = ac_new_id(c);
	ac_req_begin(c, &w, KP_OP_RESIZE);
	kp_put_u64(&w, KT_HANDLE, o->ex->handle);
	kp_put_u64(&w, KT_ROWS, ws.ws_row);
	kp_put_u64(&w, KT_COLS, ws.ws_col);
	memmove(o->sig_ids + 1, o->sig_ids, sizeof(o->sig_ids) - sizeof(o->sig_ids[0]));
	o->sig_ids[0] = id;
	return ac_req_send(c, id, &w, err);
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
	return ac_send_frame(c, win, sizeof(win), err);
}

/* Deliver DATA for channel ch to the op's sink, then return the credit. */
static int on_data(struct kac *c, struct op *o, const struct kp_frame *f, struct kac_err *err)
{
	uint64_t off;
	const uint8_t *p;
	uint32_t n;
	int ch = f->channel, ret = 0;

	if (ch == KP_CHAN_IN || kp_parse_data(f, &off, &p, &n))
		return ac_fail(err, EPROTO, "agent: DATA on channel %d of request %u", ch, f->id);
	if (n > o->out_credit[ch])
		return ac_fail(err, EPROTO, "the agent sent more than the credit it was granted (%u bytes of %s "
			       "on request %u, %llu granted): protocol violation, connection closed", n,
			       ch == KP_CHAN_OUT ? "stdout" : "stderr", f->id, (unsigned long long)o->out_credit[ch]);
	o->out_credit[ch] -= n;
	/* A gap (only under KP_OVF_DROP, which we never ask for) is not an error. */
	o->out_off[ch] = off + n;
	if (!o->out_dead[ch] && n) {
		if (o->out_fn)
			ret = o->out_fn(o->out_arg, ch, p, n);
		else if (o->out_fd[ch] >= 0)
			ret = write_full(o->out_fd[ch], p, n);
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
				ret = ac_send_signal(c, o, o->ex->handle, SIGPIPE, err);
			else if (!o->ex)
				ret = ac_send_cancel(c, f->id, err);
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
			return ac_send_frame(c, pong, sizeof(pong), err);
		case KP_PONG:
			return 0;
		case KP_ERROR:
			ret = ac_error_frame(f, err);
			if (err) {
				char m[sizeof(err->msg)];

				snprintf(m, sizeof(m), "agent closed the connection: %.400s", err->msg);
				memcpy(err->msg, m, sizeof(m));
			}
			return ret;
		default:
			return ac_fail(err, EPROTO, "agent: unexpected %s on id 0", kp_type_name(f->type));
		}
	}
	if (f->id != o->id && f->id == c->pend_id) {
		/* The answer to an IDENTITY sent ahead (kac_identity_send). */
		if (f->type == KP_ERROR) {
			struct kac_err e;

			c->pend_ret = ac_error_frame(f, &e);
			memcpy(c->pend_msg, e.msg, sizeof(c->pend_msg));
			c->pend_done = 1;
		} else if (f->type == KP_RESPONSE && (f->flags & KP_F_END)) {
			c->pend_done = 1;
		}
		return 0;
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
				return ac_fail(err, -ret, "agent: malformed %s record", kp_type_name(f->type));
		}
		if ((f->flags & KP_F_END) || (o->detach && f->type == KP_RESPONSE))
			o->done = 1;
		return 0;
	case KP_ERROR:
		o->ret = ac_error_frame(f, err);
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
			return ac_fail(err, EPROTO, "agent: bad WINDOW on request %u", f->id);
		o->in_credit += inc;
		return 0;
	default:
		return ac_fail(err, EPROTO, "agent: unexpected %s on request %u", kp_type_name(f->type), f->id);
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
		return ac_fail(err, errno, "reading input: %s", strerror(errno));
	}
	if (r == 0) {
		kp_enc_eof(eof, o->id, KP_CHAN_IN, 0, o->in_off);
		o->in_eof_sent = 1;
		return ac_send_frame(c, eof, sizeof(eof), err);
	}
	ret = kp_enc_data_hdr(c->chunk, o->id, KP_CHAN_IN, o->in_off, (uint32_t)r);
	if (ret < 0)
		return ac_fail(err, EINVAL, "DATA: %s", kp_strerror(ret));
	o->in_off += (uint64_t)r;
	o->in_credit -= (uint64_t)r;
	return ac_send_frame(c, c->chunk, KP_DATA_HDR_LEN + (size_t)r, err);
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
	int ret = ac_next_frame(c, &f, may_read, err);

	if (ret == 0)
		ret = dispatch(c, o, &f, err);
	if (ret == -EAGAIN)
		return ret;
	if (ret)
		return ac_conn_lost(c, ret, err);
	if (f.id == o->id || op_alive(o)) {
		*heard = ac_now_ms();	/* after dispatch: time our consumer took is not the agent's */
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
	int64_t now = ac_now_ms(), quiet = now - heard, half = c->timeout_ms / 2;
	int ret;

	if (c->timeout_ms <= 0)
		return -1;
	if (quiet >= c->timeout_ms)
		return ac_conn_stalled(c, err, "the agent did not answer within");
	if (!op_alive(o))
		return (int)(c->timeout_ms - quiet);
	if (!*pinged && quiet >= half) {
		kp_enc_ping(ping, KP_PING, ++c->pings);
		ret = ac_send_frame(c, ping, sizeof(ping), err);
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
	int64_t heard = ac_now_ms();
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
			int64_t left = deadline - ac_now_ms();

			if (left <= 0)
				return ac_fail(err, ETIMEDOUT, "timed out");
			if (tmo < 0 || left < tmo)
				tmo = left > 60000 ? 60000 : (int)left;
		}
		ret = poll(p, (nfds_t)n, tmo);
		if (ret < 0) {
			if (errno == EINTR)
				continue;
			return ac_fail(err, errno, "poll: %s", strerror(errno));
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
				heard = ac_now_ms();	/* the agent took what we sent */
		}
		if (p[0].revents) {
			ret = op_step(c, o, 1, &heard, &pinged, err);
			if (ret && ret != -EAGAIN)
				return ret;
		}
	}
	return o->ret;
}

int64_t ac_deadline_of(int timeout_ms)
{
	return timeout_ms > 0 ? ac_now_ms() + timeout_ms : -1;
}

int ac_op_run(struct kac *c, struct op *o, int64_t deadline, struct kac_err *err)
{
	if (err)
		err->code = 0;
	return op_run(c, o, deadline, err);
}

/* Send o's REQUEST (its record w) and run it to its end (op_run). */
int ac_op_send_run(struct kac *c, struct op *o, struct kp_recw *w, int64_t deadline, struct kac_err *err)
{
	int ret;

	if (err)
		err->code = 0;
	ret = ac_req_send(c, o->id, w, err);
	if (ret)
		return ret;
	return op_run(c, o, deadline, err);
}

/* A simple request: one REQUEST, RESPONSE|END or ERROR. */
int ac_simple(struct kac *c, struct op *o, struct kp_recw *w, struct kac_err *err)
{
	return ac_op_send_run(c, o, w, -1, err);
}

int ac_simple_str(struct kac *c, uint64_t op, uint8_t tag, const char *s, uint8_t tag2, const char *s2,
		  struct kac_err *err)
{
	struct kp_recw w;
	struct op o;

	ac_op_start(c, &o, &w, op);
	kp_put_str(&w, tag, s);
	if (tag2)
		kp_put_str(&w, tag2, s2);
	return ac_simple(c, &o, &w, err);
}

int ac_send_cancel(struct kac *c, uint32_t id, struct kac_err *err)
{
	uint8_t cancel[KP_HDR_LEN];

	kp_enc_cancel(cancel, id, KP_CHAN_ALL);
	return ac_send_frame(c, cancel, sizeof(cancel), err);
}

int ac_op_out_ret(const struct op *o, int ret, const char *what, struct kac_err *err)
{
	if (ret == 0 && o->out_err && o->out_err != -EPIPE)
		return ac_fail(err, -o->out_err, "writing %s: %s", what, strerror(-o->out_err));
	return ret;
}

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

void ac_op_start_u64(struct kac *c, struct op *o, struct kp_recw *w, uint64_t op, uint8_t tag)
{
	ac_op_start(c, o, w, op);
	o->on_rec = u64_rec;
	o->res_tag = tag;
	o->size = -1;
}

/* ---- listings ------------------------------------------------------------------ */

/* Each of an answer's fields of the listing's tag to its entry(), until the caller's callback fails. */
static int list_rec(struct op *o, const struct kp_frame *f)
{
	struct ac_list *l = o->arg;
	struct kp_rec r;
	struct kp_field fl;
	int ret, e;

	kp_rec_open(&r, f->payload, f->len);
	while ((ret = kp_rec_next(&r, &fl)) == 1) {
		if (fl.tag != l->tag || l->ret)
			continue;
		e = l->entry(l, &fl);
		if (e)
			return e;
		/* The caller has had enough: stop the agent's listing, drain what is in flight. */
		if (l->ret && l->cancel && !(f->flags & KP_F_END))
			ac_send_cancel(l->c, o->id, NULL);
	}
	return ret < 0 ? -EPROTO : 0;
}

int ac_list_run(struct kac *c, struct op *o, struct kp_recw *w, struct ac_list *l, const char *what,
		const char *path, struct kac_err *err)
{
	int ret;

	l->c = c;
	o->on_rec = list_rec;
	o->arg = l;
	ret = ac_simple(c, o, w, err);
	if (l->ret && (l->cancel || !ret))
		return ac_fail(err, -l->ret, "%s%s%s: %s", what, path ? " " : "", path ? path : "",
			       strerror(-l->ret));
	return ret;
}
