/*
 * virtio-vsock (virtio 1.2, 5.10): the device. It takes the guest's packets
 * off the tx queue and hands them to its connections (conn.c), fills the
 * rx queue with what the connections owe the guest, posts the
 * TRANSPORT_RESET event, and saves and restores its state for snapshots.
 * Where the host ends of the connections live is a backend's business
 * (vsock_internal.h); --vsock's is the unix-socket muxer (muxer.c).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "virtio_vsock.h"
#include "timeline.h"
#include "vsock_internal.h"

/* A guest's mistake: rate-limited so a guest cannot flood stderr. */
void vsock_log(struct vsock *vs, const char *fmt, ...)
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

int vsock_rx_ready(const struct vsock *vs)
{
	return virtio_running(vs->dev) && vs->dev->queue_ready[VSOCK_RXQ];
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

uint32_t vsock_rx_put(struct vsock *vs, struct vsock_hdr *h, const uint8_t *payload, uint32_t len)
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

/* One packet per connection per round, so no connection starves the others. */
void vsock_rx_run(struct vsock *vs)
{
	uint64_t before = vs->rx_pkts;
	int progress = 1;

	while (progress && vsock_rx_ready(vs)) {
		struct vsock_conn *c, *next;

		progress = 0;
		if (!rx_take(vs))
			break;
		if (vs->nctrl) {
			vsock_rx_put(vs, &vs->ctrl[vs->ctrl_head], NULL, 0);
			vs->ctrl_head = (vs->ctrl_head + 1) % VSOCK_MAX_CTRL;
			vs->nctrl--;
			progress = 1;
			continue;
		}
		for (c = vs->conns; c; c = next) {
			next = c->next;		/* vsock_conn_rx_one may close c, never another */
			if (!rx_take(vs))
				goto out;
			progress |= vsock_conn_rx_one(c);
		}
	}
out:
	if (vs->rx_pkts != before)
		virtio_signal_used(vs->dev, VSOCK_RXQ);
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

/* One packet from the guest. Returns -1 if the device needs a reset. */
static int vsock_tx_packet(struct vsock *vs, const struct virtq_chain *ch)
{
	struct vsock_hdr h;

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
	vsock_conn_input(vs, &h, ch);
	return 0;
}

/* Hold connection requests until the guest has handled a TRANSPORT_RESET (at most 2 s). */
int vsock_reset_in_progress(struct vsock *vs)
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
	tl_mark(TL_VSOCK_RESET);
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

	vsock_conn_reap(vs);
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

	vsock_conn_close_all(vs);
	vs->rx_held = 0;	/* the ring is gone with the reset */
	vs->event_pending = 0;
	vs->reset_unacked = 0;
	vsock_conn_reap_later(vs);
}

/* Drop every connection and tell the guest (device lock held). */
static void vsock_transport_reset(struct vsock *vs)
{
	vsock_conn_close_all(vs);
	vs->event_pending = 1;
	vsock_event_run(vs);
	vsock_conn_reap_later(vs);
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

	if (!vs)
		return;
	vsock_conn_free_all(vs);
	vs->be->destroy(vs);
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

/* Parse "cid=N[,connect-timeout=MS]" and the backend's options (any order) into vs. */
static int vsock_parse(struct vsock *vs, const char *spec, struct kiln_err *err)
{
	const char *p = spec;
	int have_cid = 0;

	while (*p) {
		const char *comma = strchr(p, ',');
		size_t len = comma ? (size_t)(comma - p) : strlen(p);
		unsigned long long v;
		int r;

		if (len > 4 && strncmp(p, "cid=", 4) == 0) {
			if (opt_num(p, len, 4, 3, VSOCK_CID_MAX, &v) < 0)
				goto bad_cid;
			vs->cid = v;
			have_cid = 1;
		} else if (len > 16 && strncmp(p, "connect-timeout=", 16) == 0) {
			if (opt_num(p, len, 16, 1, VSOCK_CONNECT_TIMEOUT_MAX_MS, &v) < 0)
				goto bad_timeout;
			vs->connect_timeout_ms = (uint32_t)v;
		} else if ((r = vs->be->option(vs, p, len, spec, err)) <= 0) {
			if (r < 0)
				return r;
			return kiln_fail(err, EINVAL, "--vsock %s: unknown option '%.*s' (expected %s)",
					 spec, (int)len, p, vs->be->usage);
		}
		p += len + (comma ? 1 : 0);
	}
	if (!have_cid)
		return kiln_fail(err, EINVAL, "--vsock %s: cid=N is required (the guest's CID, 3 to %llu)",
				 spec, VSOCK_CID_MAX);
	return 0;
bad_cid:
	return kiln_fail(err, EINVAL, "--vsock %s: cid must be a number from 3 to %llu (0-2 are reserved)",
			 spec, VSOCK_CID_MAX);
bad_timeout:
	return kiln_fail(err, EINVAL, "--vsock %s: connect-timeout must be a number of milliseconds from 1 to %d",
			 spec, VSOCK_CONNECT_TIMEOUT_MAX_MS);
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

int vsock_create(struct virtio_dev *d, const char *spec, const struct vsock_backend_ops *be,
		 struct vm *vm, const struct guest_mem *mem, struct ioloop *loop,
		 uint64_t base, uint32_t irq, struct kiln_err *err)
{
	struct vsock *vs = calloc(1, sizeof(*vs));
	int r;

	if (!vs)
		return kiln_fail(err, ENOMEM, "out of memory");
	vs->reset_tfd = -1;
	vs->req_tfd = -1;
	vs->connect_timeout_ms = VSOCK_CONNECT_TIMEOUT_MS;
	vs->next_port = VSOCK_HOST_PORT_BASE;
	vs->dev = d;
	vs->be = be;
	r = be->init(vs);
	if (r < 0) {
		free(vs);
		return kiln_fail(err, -r, "out of memory");
	}
	r = vsock_parse(vs, spec, err);
	if (r < 0)
		goto fail;
	r = be->open(vs, spec, err);
	if (r < 0)
		goto fail;
	r = virtio_mmio_init(d, &virtio_vsock_ops, vs, vm, mem, loop, base, irq, err);
	if (r < 0)
		goto fail_dev;
	r = be->start(vs, loop, err);
	if (r < 0)
		goto fail_dev;
	r = timer_watch(loop, &vs->reset_tfd, &vs->reset_op, reset_timer_done, err);
	if (r < 0)
		goto fail_dev;
	r = timer_watch(loop, &vs->req_tfd, &vs->req_op, vsock_conn_deadline_done, err);
	if (r < 0)
		goto fail_dev;
	return 0;
fail:
	be->destroy(vs);
	free(vs);
	return r;
fail_dev:
	/* virtio_mmio_init set d->ops: destroy closes the backend and frees vs. */
	d->priv = vs;
	return r;
}
