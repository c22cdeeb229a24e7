/* kiln agent client: guest TCP ports (connect, raw tunnels, list, wait). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent_proto.h"
#include "agent_client.h"
#include "ac_int.h"

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

	ac_op_start(c, &o, &w, KP_OP_PORT_CONNECT);
	o.in_fd = in_fd;
	o.in_credit = c->peer_window;
	o.out_fd[1] = out_fd;
	port_args(&w, port, addr);
	o.wait = OP_ALIVE;
	return ac_op_out_ret(&o, ac_op_send_run(c, &o, &w, -1, err), "the port's bytes", err);
}

/* Read exactly n bytes (the raw tunnel starts right after the RESPONSE: no read-ahead). */
static int read_exact(int fd, uint8_t *p, size_t n, int64_t deadline)
{
	struct pollfd pf = { .fd = fd, .events = POLLIN };
	ssize_t r;

	while (n) {
		int64_t left = deadline - ac_now_ms();

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
	uint32_t len, id = ac_new_id(c);
	size_t used;
	int64_t deadline = ac_now_ms() + 120000;
	int ret;

	if (err)
		err->code = 0;
	if (c->rpos != c->rlen || c->next_id != 1) {
		ret = ac_fail(err, EINVAL, "raw port connection: needs a fresh agent connection");
		goto out;
	}
	ac_req_begin(c, &w, KP_OP_PORT_CONNECT);
	port_args(&w, port, addr);
	kp_put_bool(&w, KT_RAW, 1);
	ret = ac_req_send(c, id, &w, err);
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
		ret = ac_fail(err, -ret, "raw port connection: %s", ret == -EPROTO ? "malformed answer" :
			      ret == -ECONNRESET ? "the agent closed the connection" : strerror(-ret));
		goto out;
	}
	kp_dec_init(&dec, c->dbuf, KP_MAX_PAYLOAD);
	if (kp_dec_feed(&dec, c->rbuf, KP_HDR_LEN + len - 8, &used, &f) != 1 || f.id != id) {
		ret = ac_fail(err, EPROTO, "raw port connection: malformed answer");
		goto out;
	}
	if (f.type == KP_ERROR) {
		ret = ac_error_frame(&f, err);
		goto out;
	}
	if (f.type != KP_RESPONSE) {
		ret = ac_fail(err, EPROTO, "raw port connection: %s instead of RESPONSE", kp_type_name(f.type));
		goto out;
	}
	/* The caller gets an ordinary (blocking) stream socket. */
	if (fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) & ~O_NONBLOCK) < 0) {
		ret = ac_fail(err, errno, "raw port connection: fcntl: %s", strerror(errno));
		goto out;
	}
	*fd = c->fd;
	c->fd = -1;
	ret = 0;
out:
	kac_close(c);
	return ret;
}

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

static int lst_entry(struct ac_list *l, const struct kp_field *fl)
{
	struct kac_listener li;
	struct kp_rec e;

	if (kp_field_rec(fl, &e))
		return 0;
	listener_of(&e, &li);
	l->ret = l->fn.lst(l->arg, &li);
	return 0;
}

int kac_port_list(struct kac *c, uint64_t pid, kac_listener_fn fn, void *arg, struct kac_err *err)
{
	struct ac_list a = { .tag = KT_ENTRY, .entry = lst_entry, .fn.lst = fn, .arg = arg };
	struct kp_recw w;
	struct op o;

	ac_op_start(c, &o, &w, KP_OP_PORT_LIST);
	if (pid)
		kp_put_u64(&w, KT_PID, pid);
	return ac_list_run(c, &o, &w, &a, "port list", NULL, err);
}

/* PORT_WAIT's LISTEN event: the listener's fields at the top level. */
static int listen_rec(struct op *o, const struct kp_frame *f)
{
	struct kp_rec e;

	kp_rec_open(&e, f->payload, f->len);
	listener_of(&e, o->arg);
	return 0;
}

int kac_port_wait(struct kac *c, uint16_t port, uint64_t pid, int timeout_ms, struct kac_listener *l,
		  struct kac_err *err)
{
	struct kp_recw w;
	struct op o;

	memset(l, 0, sizeof(*l));
	ac_op_start_rec(c, &o, &w, KP_OP_PORT_WAIT, listen_rec, l);
	if (port)
		kp_put_u64(&w, KT_PORT, port);
	if (pid)
		kp_put_u64(&w, KT_PID, pid);
	if (timeout_ms > 0)
		kp_put_u64(&w, KT_TIMEOUT_MS, (uint64_t)timeout_ms);
	o.wait = OP_ALIVE;
	return ac_simple(c, &o, &w, err);
}
