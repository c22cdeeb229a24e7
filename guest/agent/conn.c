/* kiln-agent: connections: the send queue, frames out, accept, read and write. */
#include "agent_int.h"

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

void conn_put(struct conn *c, const void *p, int n)
{
	if (n <= 0 || c->closing > 1)
		return;
	if (outq_put(&c->out, p, (size_t)n) < 0)
		c->closing = 1;
}

void send_error(struct conn *c, uint32_t id, uint32_t code, int err_no, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	conn_put(c, c->ag->scratch, kp_enc_error(c->ag->scratch, sizeof(c->ag->scratch), id, code,
						 (uint32_t)err_no, msg));
}

void os_error(struct conn *c, uint32_t id, const char *op, const char *path, int err)
{
	send_error(c, id, KP_ERR_OS, err, "%s %s: %s", op, path ? path : "", strerror(err));
}

void rec_begin(struct conn *c, struct kp_recw *w)
{
	kp_recw_init(w, c->ag->scratch + KP_HDR_LEN, KP_MAX_CONTROL);
}

void rec_send(struct conn *c, uint8_t type, uint8_t flags, uint32_t id, struct kp_recw *w)
{
	uint8_t *b = c->ag->scratch;
	int n = kp_enc_rec_frame(b, sizeof(c->ag->scratch), type, flags, id, w);

	if (n < 0)
		send_error(c, id, KP_ERR_INTERNAL, 0, "reply: %s", kp_strerror(n));
	else
		conn_put(c, b, n);
}

void send_ok(struct conn *c, uint32_t id)
{
	struct kp_recw w;

	rec_begin(c, &w);
	rec_send(c, KP_RESPONSE, KP_F_END, id, &w);
}

void send_eof(struct conn *c, uint32_t id, uint16_t ch, uint8_t flags, uint64_t off)
{
	uint8_t e[KP_HDR_LEN + 8];

	conn_put(c, e, kp_enc_eof(e, id, ch, flags, off));
}

void send_window(struct conn *c, uint32_t id, uint16_t ch, uint32_t inc)
{
	uint8_t e[KP_HDR_LEN + 4];

	conn_put(c, e, kp_enc_window(e, id, ch, inc));
}

void send_data(struct conn *c, uint32_t id, uint16_t ch, uint64_t off, const uint8_t *p, uint32_t n)
{
	uint8_t hdr[KP_DATA_HDR_LEN];

	if (kp_enc_data_hdr(hdr, id, ch, off, n) < 0)
		return;
	conn_put(c, hdr, KP_DATA_HDR_LEN);
	conn_put(c, p, (int)n);
}

uint32_t max_data(const struct conn *c)
{
	uint32_t m = c->peer_max - 8;

	return m < READ_CHUNK ? m : READ_CHUNK;
}

/* ---- connections ------------------------------------------------------------------ */

void conn_free(struct conn *c)
{
	struct conn **pp;

	while (c->streams)
		stream_free(c, c->streams);
	fh_close_all(c);
	for (pp = &c->ag->conns; *pp; pp = &(*pp)->next)
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
	c->ag->nconns--;
	free(c);
}

/* Stop reading requests, flush the queue, then shutdown(SHUT_WR) (vsock's
 * close() would drop queued bytes) and wait for the host to close. */
void conn_close(struct conn *c)
{
	while (c->streams)
		stream_free(c, c->streams);
	fh_close_all(c);
	if (!c->closing)
		c->closing = 1;
}

/*
 * Only the host may drive the agent. The guest kernel's vsock loopback lets
 * any guest process connect to port 1024 too (CID 1, or the guest's own
 * CID), and the agent runs commands as root: such a connection is closed
 * before any frame, counted, and logged at powers of two. The listener
 * stays bound to VMADDR_CID_ANY: binding to the guest's CID would still
 * take loopback connections to that CID, so the peer check is what holds.
 */
static int conn_peer_ok(struct agent *a, const struct sockaddr_vm *peer, socklen_t len)
{
	if (agent_host_mode(a))
		return 1;	/* a unix socket, owner only */
	if (len >= sizeof(*peer) && peer->svm_family == AF_VSOCK && peer->svm_cid == VMADDR_CID_HOST)
		return 1;
	a->refused_peers++;
	if (!(a->refused_peers & (a->refused_peers - 1)))
		fprintf(stderr, "kiln-agent: refused a connection from CID %u port %u: only the host (CID %u) "
			"may connect (%lu refused so far)\n", len >= sizeof(*peer) ? peer->svm_cid : 0,
			len >= sizeof(*peer) ? peer->svm_port : 0, VMADDR_CID_HOST, a->refused_peers);
	return 0;
}

static void conn_hello(struct conn *c)
{
	uint8_t *b = c->ag->scratch;

	conn_put(c, b, kp_enc_hello(b, sizeof(c->ag->scratch), KP_DEFAULT_WINDOW, RX_CAP, AGENT_NAME));
}

int agent_conn_add(struct agent *a, int fd, int preamble)
{
	struct conn *c = NULL;

	if (a->nconns >= MAX_CONNS || !(c = calloc(1, sizeof(*c))) || !(c->rxbuf = malloc(RX_CAP))) {
		free(c);
		close(fd);
		return a->nconns >= MAX_CONNS ? -EMFILE : -ENOMEM;
	}
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	c->ag = a;
	c->fd = fd;
	c->raw_fd = -1;
	c->peer_window = KP_DEFAULT_WINDOW;
	c->peer_max = KP_MIN_PAYLOAD_CAP;
	kp_dec_init(&c->dec, c->rxbuf, RX_CAP);
	c->next = a->conns;
	a->conns = c;
	a->nconns++;
	c->preamble = preamble;	/* HELLO follows the OK line */
	if (!preamble)
		conn_hello(c);
	return 0;
}

void conn_accept(struct agent *a)
{
	struct sockaddr_vm peer;
	socklen_t plen = sizeof(peer);
	int fd = accept4(a->lfd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);

	if (fd < 0 && (errno == EMFILE || errno == ENFILE) && a->reserve_fd >= 0) {
		close(a->reserve_fd);
		fd = accept4(a->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd >= 0)
			close(fd);
		a->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
		return;
	}
	if (fd < 0)
		return;
	if (!conn_peer_ok(a, &peer, plen)) {
		close(fd);
		return;
	}
	agent_conn_add(a, fd, agent_host_mode(a));
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
		conn_hello(c);
		c->preamble = 0;
		return (ssize_t)i + 1;
	}
	if (i == n)
		return (ssize_t)n;
	conn_free(c);
	return -1;
}

void conn_read(struct conn *c)
{
	uint8_t *buf = c->ag->rx;
	ssize_t n = read(c->fd, buf, sizeof(c->ag->rx));
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

int conn_write(struct conn *c)
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

struct conn *conn_live(struct agent *a, void *o, int fd)
{
	struct conn *c;

	for (c = a->conns; c && c != o; c = c->next)
		;
	return c && c->fd == fd ? c : NULL;
}
