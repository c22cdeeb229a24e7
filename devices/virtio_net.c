/*
 * virtio-net (virtio 1.2, 5.1) on a Linux tap device. Frames cross as they
 * are: the tap speaks the same 12-byte virtio_net_hdr_v1 (IFF_VNET_HDR with
 * TUNSETVNETHDRSZ), so tx gathers a chain straight into a writev and rx reads
 * one frame into a bounce buffer and scatters it over as many mergeable rx
 * buffers as it needs. Every read and write is an io_uring submission on the
 * I/O thread; nothing here blocks and nothing runs on a vCPU thread but the
 * offload ioctl at activation.
 *
 * Back-pressure: rx holds at most one frame. When the guest has no rx buffers
 * the frame waits in the bounce buffer and no further reads are submitted, so
 * later frames wait in the tap's own queue (nothing is dropped here) until
 * the driver posts buffers and kicks.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "virtio_net.h"

#define VIRTIO_ID_NET		1

/* Feature bits (5.1.3). */
#define VIRTIO_NET_F_CSUM	0
#define VIRTIO_NET_F_GUEST_CSUM	1
#define VIRTIO_NET_F_MAC	5
#define VIRTIO_NET_F_GUEST_TSO4	7
#define VIRTIO_NET_F_GUEST_TSO6	8
#define VIRTIO_NET_F_HOST_TSO4	11
#define VIRTIO_NET_F_HOST_TSO6	12
#define VIRTIO_NET_F_MRG_RXBUF	15
#define VIRTIO_NET_F_STATUS	16

#define VIRTIO_NET_S_LINK_UP	1

/* virtio_net_hdr flags and gso_type (5.1.6). */
#define VIRTIO_NET_HDR_F_NEEDS_CSUM	1
#define VIRTIO_NET_HDR_F_DATA_VALID	2
#define VIRTIO_NET_HDR_GSO_NONE		0
#define VIRTIO_NET_HDR_GSO_TCPV4	1
#define VIRTIO_NET_HDR_GSO_TCPV6	4

#define NET_RXQ		0
#define NET_TXQ		1
#define NET_QUEUE_SIZE	256

/*
 * virtio_net_hdr_v1 (5.1.6): VIRTIO_F_VERSION_1 always carries num_buffers,
 * so the header is 12 bytes whether or not MRG_RXBUF is negotiated.
 */
struct virtio_net_hdr_v1 {
	uint8_t flags;
	uint8_t gso_type;
	uint16_t hdr_len;
	uint16_t gso_size;
	uint16_t csum_start;
	uint16_t csum_offset;
	uint16_t num_buffers;
};

#define NET_HDR_LEN	((uint32_t)sizeof(struct virtio_net_hdr_v1))
/* The largest frame either way: 64 KiB of GSO payload plus Ethernet and VLAN headers. */
#define NET_FRAME_MAX	65550u
#define NET_BOUNCE_LEN	(NET_HDR_LEN + NET_FRAME_MAX)

_Static_assert(sizeof(struct virtio_net_hdr_v1) == 12, "virtio_net_hdr_v1 is 12 bytes");

struct net_config {
	uint8_t mac[6];
	uint16_t status;
	uint16_t max_virtqueue_pairs;
} __attribute__((packed));

enum net_rx_state {
	RX_IDLE,	/* nothing in flight, bounce buffer empty */
	RX_READING,	/* a read into the bounce buffer is in flight */
	RX_POLLING,	/* the tap was empty: waiting for it to become readable */
	RX_HELD,	/* a frame waits in the bounce buffer for rx buffers */
	RX_DEAD,	/* the tap failed: rx stays off (no busy retry) */
};

struct net_tx;

struct net {
	struct virtio_dev *dev;
	int fd;
	int is_tap;
	uint8_t mac[6];
	int mac_given;			/* the spec named the MAC: a restore must not change it */
	char spec[32];			/* for messages: "tap=NAME" */

	enum net_rx_state rx_state;
	struct io_op rx_read_op, rx_poll_op;
	uint8_t *rx_buf;		/* NET_BOUNCE_LEN: vnet header then frame */
	uint32_t rx_len;		/* bytes of the held frame, header included */
	uint32_t rx_off;		/* bytes of it already copied into rx buffers */
	uint16_t rx_nused;		/* rx buffers it has filled so far */
	uint32_t rx_gen;		/* the rx queue's gen when they were taken */
	struct virtq_used_elem rx_used[VIRTQ_MAX_SIZE];
	/* Where num_buffers goes: the first buffer's first NET_HDR_LEN bytes. */
	struct iovec rx_hdr_iov[NET_HDR_LEN];
	unsigned rx_hdr_niov;

	struct net_tx *tx_inflight;	/* writes submitted, not yet completed */
	struct virtq_chain chain;	/* scratch for virtq_pop (device lock held) */

	uint64_t tx_frames, tx_bytes, tx_dropped, tx_errors;
	uint64_t rx_frames, rx_bytes, rx_dropped, rx_errors;
};

/* One tx frame being written to the tap. */
struct net_tx {
	struct io_op op;
	struct net *net;
	struct net_tx *prev, *next;
	uint32_t gen;			/* the tx queue's gen when it was taken */
	uint16_t head;
	unsigned niov;
	struct iovec iov[];
};

static void net_rx_pump(struct net *n);

static void net_log(struct net *n, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void net_log(struct net *n, const char *fmt, ...)
{
	static struct log_limit lim = LOG_LIMIT("virtio-net");
	char msg[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_guest(&lim, "virtio-net %s: %s", n->spec, msg);
}

static int net_has(const struct net *n, unsigned bit)
{
	return (n->dev->acked >> bit) & 1;
}

/* What the tap may hand us, given what the driver accepted (5.1.3.1). */
static unsigned net_offloads(uint64_t acked)
{
	unsigned off = 0;

	if (!(acked & 1ULL << VIRTIO_NET_F_GUEST_CSUM))
		return 0;
	off |= TUN_F_CSUM;
	if (acked & 1ULL << VIRTIO_NET_F_GUEST_TSO4)
		off |= TUN_F_TSO4;
	if (acked & 1ULL << VIRTIO_NET_F_GUEST_TSO6)
		off |= TUN_F_TSO6;
	return off;
}

/* ---- tx ------------------------------------------------------------------ */

static void net_tx_unlink(struct net *n, struct net_tx *t)
{
	if (t->prev)
		t->prev->next = t->next;
	else
		n->tx_inflight = t->next;
	if (t->next)
		t->next->prev = t->prev;
}

static void net_tx_done(struct io_op *op, int res, unsigned flags)
{
	struct net_tx *t = (struct net_tx *)op;
	struct net *n = t->net;
	struct virtio_dev *d = n->dev;

	(void)flags;
	pthread_mutex_lock(&d->lock);
	net_tx_unlink(n, t);
	if (res < 0) {
		/* The tap refused it (a malformed vnet header, the link gone). */
		n->tx_errors++;
		net_log(n, "tx write: %s", strerror(-res));
	} else {
		n->tx_frames++;
		n->tx_bytes += (uint64_t)res;
	}
	/* Not if the driver reset or disabled the queue meanwhile. */
	if (virtio_running(d) && virtq_push_gen(&d->vq[NET_TXQ], t->gen, t->head, 0))
		virtio_signal_used(d, NET_TXQ);
	pthread_mutex_unlock(&d->lock);
	free(t);
}

/* Give a tx chain back unsent. */
static void net_tx_drop(struct net *n, uint16_t head)
{
	n->tx_dropped++;
	virtq_push(&n->dev->vq[NET_TXQ], head, 0);
}

/* Submit one tx chain (header then frame) as a writev to the tap. */
static void net_tx_submit(struct net *n, const struct virtq_chain *c)
{
	struct io_uring_sqe *sqe;
	struct net_tx *t;
	unsigned i;

	if (c->nwrite) {
		net_log(n, "tx chain %u has device-writable buffers; dropped", c->head);
		net_tx_drop(n, c->head);
		return;
	}
	if (c->read_len < NET_HDR_LEN) {
		net_log(n, "tx chain %u of %" PRIu64 " bytes lacks the %u-byte virtio-net header; dropped",
			c->head, c->read_len, NET_HDR_LEN);
		net_tx_drop(n, c->head);
		return;
	}
	if (c->read_len - NET_HDR_LEN > NET_FRAME_MAX) {
		net_log(n, "tx frame of %" PRIu64 " bytes is over %u; dropped",
			c->read_len - NET_HDR_LEN, NET_FRAME_MAX);
		net_tx_drop(n, c->head);
		return;
	}
	t = malloc(sizeof(*t) + c->nread * sizeof(struct iovec));
	if (!t) {
		net_tx_drop(n, c->head);
		return;
	}
	t->op = (struct io_op){ .done = net_tx_done };
	t->net = n;
	t->gen = n->dev->vq[NET_TXQ].gen;
	t->head = c->head;
	t->niov = 0;
	for (i = 0; i < c->nread; i++)
		if (c->read[i].iov_len)
			t->iov[t->niov++] = c->read[i];
	sqe = ioloop_sqe(n->dev->loop, &t->op);
	if (!sqe) {
		free(t);
		net_tx_drop(n, c->head);
		return;
	}
	io_uring_prep_writev(sqe, n->fd, t->iov, t->niov, 0);
	t->prev = NULL;
	t->next = n->tx_inflight;
	if (t->next)
		t->next->prev = t;
	n->tx_inflight = t;
}

static void net_tx(struct net *n)
{
	struct virtio_dev *d = n->dev;
	uint16_t before = d->vq[NET_TXQ].used_idx;
	struct kiln_err err;
	int r;

	while ((r = virtq_pop(&d->vq[NET_TXQ], d->mem, &n->chain, &err)) == 1)
		net_tx_submit(n, &n->chain);
	if (r < 0)
		virtio_needs_reset(d, err.msg);
	else if (d->vq[NET_TXQ].used_idx != before)
		virtio_signal_used(d, NET_TXQ);		/* drops */
}

/* ---- rx ------------------------------------------------------------------ */

/*
 * May the driver see the held frame's header as it is? The tap honours the
 * offloads set at activation, but a frame read before a reset and
 * renegotiation may carry ones the new driver refused (5.1.6.4.1).
 */
static int net_rx_acceptable(struct net *n)
{
	struct virtio_net_hdr_v1 *h = (struct virtio_net_hdr_v1 *)n->rx_buf;

	if (!net_has(n, VIRTIO_NET_F_GUEST_CSUM)) {
		if (h->flags & VIRTIO_NET_HDR_F_NEEDS_CSUM)
			return 0;
		h->flags = 0;
	}
	switch (h->gso_type) {
	case VIRTIO_NET_HDR_GSO_NONE:
		return 1;
	case VIRTIO_NET_HDR_GSO_TCPV4:
		return net_has(n, VIRTIO_NET_F_GUEST_TSO4) && net_has(n, VIRTIO_NET_F_GUEST_CSUM);
	case VIRTIO_NET_HDR_GSO_TCPV6:
		return net_has(n, VIRTIO_NET_F_GUEST_TSO6) && net_has(n, VIRTIO_NET_F_GUEST_CSUM);
	}
	return 0;
}

static void net_rx_clear(struct net *n)
{
	n->rx_len = n->rx_off = 0;
	n->rx_nused = 0;
	n->rx_hdr_niov = 0;
}

/* Remember where the first buffer's header lies, skipping empty segments. */
static void net_rx_save_hdr(struct net *n, const struct virtq_chain *c)
{
	uint32_t need = NET_HDR_LEN;
	unsigned i;

	n->rx_hdr_niov = 0;
	for (i = 0; i < c->nwrite && need; i++) {
		size_t len = c->write[i].iov_len < need ? c->write[i].iov_len : need;

		if (!len)
			continue;
		n->rx_hdr_iov[n->rx_hdr_niov++] = (struct iovec){ c->write[i].iov_base, len };
		need -= (uint32_t)len;
	}
}

/*
 * Copy the held frame into the driver's rx buffers (5.1.6.4). Returns 1 when
 * the frame is gone (delivered or dropped), 0 when the driver must post more
 * buffers first (what was filled so far is kept), -1 when the driver broke
 * the queue. Buffers are returned only once the whole frame is in them.
 */
static int net_rx_deliver(struct net *n)
{
	struct virtio_dev *d = n->dev;
	struct virtq *q = &d->vq[NET_RXQ];
	struct virtq_chain *c = &n->chain;
	int mrg = net_has(n, VIRTIO_NET_F_MRG_RXBUF);
	struct kiln_err err;
	uint16_t nbuf;
	unsigned i;
	int r;

	if (n->rx_nused && n->rx_gen != q->gen) {
		/* The buffers filled so far went with a ring the driver took down. */
		n->rx_off = 0;
		n->rx_nused = 0;
		n->rx_hdr_niov = 0;
	}
	if (n->rx_off == 0 && !net_rx_acceptable(n)) {
		n->rx_dropped++;
		net_rx_clear(n);
		return 1;
	}
	while (n->rx_off < n->rx_len) {
		uint64_t take;

		r = virtq_pop(q, d->mem, c, &err);
		if (r < 0) {
			virtio_needs_reset(d, err.msg);
			return -1;
		}
		if (r == 0)
			return 0;
		if (c->nread || c->write_len < NET_HDR_LEN) {
			virtio_needs_reset(d, "rx buffer is not a writable buffer of at least 12 bytes (virtio 1.2, 5.1.6.3.1)");
			return -1;
		}
		if (!mrg) {
			if (c->write_len < n->rx_len) {
				/* Without MRG_RXBUF one buffer takes one frame: too small, drop. */
				virtq_push(q, c->head, 0);
				n->rx_dropped++;
				net_rx_clear(n);
				return 1;
			}
			nbuf = 1;
			memcpy(n->rx_buf + offsetof(struct virtio_net_hdr_v1, num_buffers), &nbuf, 2);
			iov_from_buf(c->write, c->nwrite, 0, n->rx_buf, n->rx_len);
			virtq_push(q, c->head, n->rx_len);
			goto delivered;
		}
		/* The driver cannot have more buffers outstanding than the ring holds. */
		if (n->rx_nused >= q->size) {
			virtio_needs_reset(d, "one rx frame took more buffers than the queue holds");
			return -1;
		}
		take = c->write_len < n->rx_len - n->rx_off ? c->write_len : n->rx_len - n->rx_off;
		if (n->rx_nused == 0) {
			net_rx_save_hdr(n, c);
			n->rx_gen = q->gen;
		}
		iov_from_buf(c->write, c->nwrite, 0, n->rx_buf + n->rx_off, take);
		n->rx_used[n->rx_nused++] = (struct virtq_used_elem){ c->head, (uint32_t)take };
		n->rx_off += (uint32_t)take;
	}
	nbuf = n->rx_nused;
	iov_from_buf(n->rx_hdr_iov, n->rx_hdr_niov, offsetof(struct virtio_net_hdr_v1, num_buffers), &nbuf, 2);
	for (i = 0; i < n->rx_nused; i++)
		virtq_push(q, (uint16_t)n->rx_used[i].id, n->rx_used[i].len);
delivered:
	n->rx_frames++;
	n->rx_bytes += n->rx_len - NET_HDR_LEN;
	net_rx_clear(n);
	return 1;
}

static void net_rx_read_done(struct io_op *op, int res, unsigned flags)
{
	struct net *n = (struct net *)((char *)op - offsetof(struct net, rx_read_op));
	struct virtio_dev *d = n->dev;
	struct io_uring_sqe *sqe;

	(void)flags;
	pthread_mutex_lock(&d->lock);
	n->rx_state = RX_IDLE;
	if (res == -EAGAIN) {
		/* Nothing queued: wait for the tap, one poll at a time. */
		sqe = ioloop_sqe(d->loop, &n->rx_poll_op);
		if (sqe) {
			io_uring_prep_poll_add(sqe, n->fd, POLLIN);
			n->rx_state = RX_POLLING;
		}
	} else if (res == -EINTR) {
		/* Retried by the pump. */
	} else if (res <= 0) {
		n->rx_errors++;
		n->rx_state = RX_DEAD;
		fprintf(stderr, "kiln-vmm: virtio-net %s: rx read: %s; receiving stops\n",
			n->spec, res ? strerror(-res) : "end of file");
	} else if ((uint32_t)res < NET_HDR_LEN + 14) {
		n->rx_dropped++;	/* shorter than a header and an Ethernet header */
	} else {
		n->rx_len = (uint32_t)res;
		n->rx_off = 0;
		n->rx_state = RX_HELD;
	}
	net_rx_pump(n);
	pthread_mutex_unlock(&d->lock);
}

static void net_rx_poll_done(struct io_op *op, int res, unsigned flags)
{
	struct net *n = (struct net *)((char *)op - offsetof(struct net, rx_poll_op));
	struct virtio_dev *d = n->dev;

	(void)flags;
	pthread_mutex_lock(&d->lock);
	n->rx_state = RX_IDLE;
	if (res < 0 || (res & (POLLERR | POLLHUP | POLLNVAL))) {
		n->rx_errors++;
		n->rx_state = RX_DEAD;
		fprintf(stderr, "kiln-vmm: virtio-net %s: the tap %s; receiving stops\n", n->spec,
			res < 0 ? strerror(-res) : "hung up");
	}
	net_rx_pump(n);
	pthread_mutex_unlock(&d->lock);
}

/*
 * Move rx along (I/O thread, device lock held): hand a held frame to the
 * driver, then read the next one, but only while the driver is live.
 */
static void net_rx_pump(struct net *n)
{
	struct virtio_dev *d = n->dev;
	struct io_uring_sqe *sqe;
	uint16_t before = d->vq[NET_RXQ].used_idx;

	if (!virtio_running(d) || !d->queue_ready[NET_RXQ])
		return;
	if (n->rx_state == RX_HELD) {
		if (net_rx_deliver(n) == 1)
			n->rx_state = RX_IDLE;
		if (d->vq[NET_RXQ].used_idx != before)
			virtio_signal_used(d, NET_RXQ);
	}
	if (n->rx_state != RX_IDLE || !virtio_running(d))
		return;
	sqe = ioloop_sqe(d->loop, &n->rx_read_op);
	if (!sqe)
		return;		/* the ring is wedged; the next kick tries again */
	io_uring_prep_read(sqe, n->fd, n->rx_buf, NET_BOUNCE_LEN, 0);
	n->rx_state = RX_READING;
}

/* ---- transport callbacks --------------------------------------------------- */

static void net_notify(struct virtio_dev *d, unsigned q)
{
	struct net *n = d->priv;

	if (q == NET_RXQ)
		net_rx_pump(n);
	else if (q == NET_TXQ)
		net_tx(n);
}

/* On the I/O thread after DRIVER_OK: start rx, and send what was queued before. */
static void net_start(void *arg)
{
	struct net *n = arg;
	struct virtio_dev *d = n->dev;

	pthread_mutex_lock(&d->lock);
	if (virtio_running(d)) {
		if (d->queue_ready[NET_TXQ])
			net_tx(n);
		net_rx_pump(n);
	}
	pthread_mutex_unlock(&d->lock);
}

static int net_activate(struct virtio_dev *d)
{
	struct net *n = d->priv;

	if (n->is_tap && ioctl(n->fd, TUNSETOFFLOAD, net_offloads(d->acked)) < 0) {
		int e = errno;

		net_log(n, "TUNSETOFFLOAD %#x: %s", net_offloads(d->acked), strerror(e));
		return -e;
	}
	return ioloop_call(d->loop, net_start, n);
}

static void net_reset(struct virtio_dev *d)
{
	struct net *n = d->priv;

	/* In-flight I/O finishes on its own; the queues' gens drop its results. */
	if (n->rx_state == RX_HELD)
		n->rx_state = RX_IDLE;
	net_rx_clear(n);
	if (n->is_tap)
		(void)ioctl(n->fd, TUNSETOFFLOAD, 0);
}

static void net_config_read(struct virtio_dev *d, uint32_t off, void *buf, uint32_t len)
{
	struct net *n = d->priv;
	struct net_config c = {
		.status = VIRTIO_NET_S_LINK_UP,
		.max_virtqueue_pairs = 1,
	};

	memcpy(c.mac, n->mac, sizeof(c.mac));
	if (off < sizeof(c) && len <= sizeof(c) - off)
		memcpy(buf, (uint8_t *)&c + off, len);
}

static void net_destroy(struct virtio_dev *d)
{
	struct net *n = d->priv;

	if (!n)
		return;
	/*
	 * The I/O thread is gone, but reads and writes it submitted may still
	 * sit in the kernel pointing at our buffers: cancel them and wait.
	 */
	if (n->fd >= 0 && d->loop && d->loop->ready) {
		struct io_uring_sync_cancel_reg reg = {
			.fd = n->fd,
			.flags = IORING_ASYNC_CANCEL_FD | IORING_ASYNC_CANCEL_ALL,
			.timeout = { .tv_sec = -1, .tv_nsec = -1 },
		};

		(void)io_uring_register_sync_cancel(&d->loop->ring, &reg);
	}
	while (n->tx_inflight) {
		struct net_tx *t = n->tx_inflight;

		n->tx_inflight = t->next;
		free(t);
	}
	if (n->fd >= 0)
		close(n->fd);
	free(n->rx_buf);
	free(n);
	d->priv = NULL;
}

/* ---- snapshots ------------------------------------------------------------- */

static unsigned net_inflight(struct virtio_dev *d)
{
	struct net *n = d->priv;
	struct net_tx *t;
	unsigned count = 0;

	/*
	 * Only tx writes read guest memory from the kernel. An rx read fills
	 * the bounce buffer; its frame reaches the guest in the completion
	 * handler on the I/O thread, and on an idle tap it never completes,
	 * so it must not hold a snapshot up.
	 */
	for (t = n->tx_inflight; t; t = t->next)
		count++;
	return count;
}

static int net_save(struct virtio_dev *d, struct snap_buf *w)
{
	struct net *n = d->priv;

	/*
	 * A frame spread over some rx buffers and waiting for more: give those
	 * buffers back to the ring (they were never used, so the driver has not
	 * touched their avail entries) and start the frame over. The snapshot
	 * then holds a consistent ring; this VM delivers the frame in full later,
	 * a restored one never sees it, as if the tap had dropped it.
	 */
	if (n->rx_state == RX_HELD && n->rx_nused) {
		if (n->rx_gen == d->vq[NET_RXQ].gen)
			d->vq[NET_RXQ].last_avail = (uint16_t)(d->vq[NET_RXQ].last_avail - n->rx_nused);
		n->rx_off = 0;
		n->rx_nused = 0;
		n->rx_hdr_niov = 0;
	}
	snapw_bytes(w, n->mac, sizeof(n->mac));
	return 0;
}

static int net_restore(struct virtio_dev *d, struct snap_rd *r, struct kiln_err *err)
{
	struct net *n = d->priv;
	uint8_t mac[6];

	snapr_copy(r, mac, sizeof(mac), "MAC address");
	if (snapr_end(r, "virtio-net state") < 0)
		return kiln_fail(err, EINVAL, "virtio-net state: %s", r->err);
	if (mac[0] & 1)
		return kiln_fail(err, EINVAL, "virtio-net state: MAC %02x:%02x:%02x:%02x:%02x:%02x is a multicast address",
				 mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
	/* The guest read its MAC at probe time and will not read it again. */
	if (n->mac_given && memcmp(mac, n->mac, sizeof(mac)) != 0)
		return kiln_fail(err, EINVAL, "virtio-net state: the snapshot's guest has MAC %02x:%02x:%02x:%02x:%02x:%02x, %s gives another (leave mac= out to keep it)",
				 mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], n->spec);
	memcpy(n->mac, mac, sizeof(mac));
	return 0;
}

/* A new tap knows nothing of the offloads the driver negotiated with the old one. */
static void net_resumed(struct virtio_dev *d)
{
	struct net *n = d->priv;

	if (n->is_tap && virtio_running(d) && ioctl(n->fd, TUNSETOFFLOAD, net_offloads(d->acked)) < 0) {
		char why[96];

		snprintf(why, sizeof(why), "TUNSETOFFLOAD %#x on the restored tap: %s",
			 net_offloads(d->acked), strerror(errno));
		virtio_needs_reset(d, why);
	}
}

static int net_stats(struct virtio_dev *d, char *buf, size_t len)
{
	struct net *n = d->priv;

	return snprintf(buf, len, ",\"tx_frames\":%" PRIu64 ",\"tx_bytes\":%" PRIu64 ",\"tx_dropped\":%" PRIu64
			",\"tx_errors\":%" PRIu64 ",\"rx_frames\":%" PRIu64 ",\"rx_bytes\":%" PRIu64
			",\"rx_dropped\":%" PRIu64 ",\"rx_errors\":%" PRIu64,
			n->tx_frames, n->tx_bytes, n->tx_dropped, n->tx_errors,
			n->rx_frames, n->rx_bytes, n->rx_dropped, n->rx_errors);
}

/* A tap is the host's: a restore never opens one the snapshot names. */
static void net_spec_needs(const char *spec, char *buf, size_t len)
{
	(void)spec;
	snprintf(buf, len, "a net device: pass --net tap=NAME for it (a restore takes taps from its command line, never from the snapshot)");
}

const struct virtio_dev_ops virtio_net_ops = {
	.name = "virtio-net",
	.device_id = VIRTIO_ID_NET,
	.num_queues = 2,
	.queue_max = NET_QUEUE_SIZE,
	.config_size = sizeof(struct net_config),
	.features = 1ULL << VIRTIO_NET_F_CSUM | 1ULL << VIRTIO_NET_F_GUEST_CSUM |
		    1ULL << VIRTIO_NET_F_MAC | 1ULL << VIRTIO_NET_F_GUEST_TSO4 |
		    1ULL << VIRTIO_NET_F_GUEST_TSO6 | 1ULL << VIRTIO_NET_F_HOST_TSO4 |
		    1ULL << VIRTIO_NET_F_HOST_TSO6 | 1ULL << VIRTIO_NET_F_MRG_RXBUF |
		    1ULL << VIRTIO_NET_F_STATUS,
	.config_read = net_config_read,
	.activate = net_activate,
	.notify = net_notify,
	.reset = net_reset,
	.destroy = net_destroy,
	.inflight = net_inflight,
	.save = net_save,
	.restore = net_restore,
	.resumed = net_resumed,
	.stats = net_stats,
	.kind = "net",
	.create = virtio_net_create,
	.spec_needs = net_spec_needs,
};

/* ---- construction -------------------------------------------------------- */

/* All guests share one address and MAC (ARCHITECTURE.md): a locally administered one. */
static const uint8_t net_default_mac[6] = { 0x06, 0x00, 0xac, 0x10, 0x00, 0x02 };

static int net_parse_mac(const char *spec, const char *s, size_t len, uint8_t mac[6],
			 struct kiln_err *err)
{
	char buf[18];
	int end = 0;

	if (len == 17) {
		memcpy(buf, s, len);
		buf[len] = '\0';
		if (sscanf(buf, "%2hhx:%2hhx:%2hhx:%2hhx:%2hhx:%2hhx%n", &mac[0], &mac[1], &mac[2],
			   &mac[3], &mac[4], &mac[5], &end) == 6 && end == 17) {
			if (mac[0] & 1)
				return kiln_fail(err, EINVAL, "--net %s: mac=%s is a multicast address (the first byte must be even, e.g. 06:...)",
						 spec, buf);
			return 0;
		}
	}
	return kiln_fail(err, EINVAL, "--net %s: mac=%.*s: expected six hex bytes like 06:00:ac:10:00:02",
			 spec, (int)len, s);
}

/* Parse "tap=NAME[,mac=xx:xx:xx:xx:xx:xx]" into ifname and mac. */
static int net_parse(const char *spec, char ifname[IFNAMSIZ], uint8_t mac[6], int *mac_given,
		     struct kiln_err *err)
{
	const char *opt = spec;

	ifname[0] = '\0';
	memcpy(mac, net_default_mac, 6);
	*mac_given = 0;
	while (*opt) {
		const char *comma = strchr(opt, ',');
		size_t olen = comma ? (size_t)(comma - opt) : strlen(opt);
		int r;

		if (olen > 4 && strncmp(opt, "tap=", 4) == 0) {
			size_t nlen = olen - 4;

			if (nlen >= IFNAMSIZ || memchr(opt + 4, '/', nlen) || memchr(opt + 4, '%', nlen))
				return kiln_fail(err, EINVAL, "--net %s: tap name '%.*s' must be 1 to %d characters without '/' or '%%'",
						 spec, (int)nlen, opt + 4, IFNAMSIZ - 1);
			memcpy(ifname, opt + 4, nlen);
			ifname[nlen] = '\0';
		} else if (olen > 4 && strncmp(opt, "mac=", 4) == 0) {
			r = net_parse_mac(spec, opt + 4, olen - 4, mac, err);
			if (r < 0)
				return r;
			*mac_given = 1;
		} else {
			return kiln_fail(err, EINVAL, "--net %s: unknown option '%.*s' (expected tap=NAME[,mac=xx:xx:xx:xx:xx:xx])",
					 spec, (int)olen, opt);
		}
		if (!comma)
			break;
		opt = comma + 1;
	}
	if (!ifname[0])
		return kiln_fail(err, EINVAL, "--net %s: no tap given (expected tap=NAME[,mac=xx:xx:xx:xx:xx:xx])", spec);
	return 0;
}

/* Attach to tap ifname with 12-byte vnet headers, non-blocking. Returns the fd or -errno. */
static int net_open_tap(const char *ifname, struct kiln_err *err)
{
	struct ifreq ifr;
	unsigned features = 0;
	int hdr = NET_HDR_LEN, fd, e;

	fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		e = errno;
		if (e == ENOENT || e == ENODEV || e == ENXIO)
			return kiln_fail(err, e, "--net tap=%s: /dev/net/tun: not found (load the tun module: modprobe tun)",
					 ifname);
		if (e == EACCES || e == EPERM)
			return kiln_fail(err, e, "--net tap=%s: /dev/net/tun: permission denied (needs CAP_NET_ADMIN; run as root or create the tap with `ip tuntap add %s mode tap user $USER`)",
					 ifname, ifname);
		return kiln_fail(err, e, "--net tap=%s: /dev/net/tun: %s", ifname, strerror(e));
	}
	if (ioctl(fd, TUNGETFEATURES, &features) == 0 && !(features & IFF_VNET_HDR)) {
		close(fd);
		return kiln_fail(err, ENOTSUP, "--net tap=%s: this kernel's tun driver lacks IFF_VNET_HDR", ifname);
	}
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", ifname);
	ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
	if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
		e = errno;
		close(fd);
		if (e == EPERM || e == EACCES)
			return kiln_fail(err, e, "--net tap=%s: permission denied (needs CAP_NET_ADMIN; run as root or create the tap with `ip tuntap add %s mode tap user $USER`)",
					 ifname, ifname);
		if (e == EBUSY)
			return kiln_fail(err, e, "--net tap=%s: in use by another process (give each VM its own tap)", ifname);
		if (e == EINVAL)
			return kiln_fail(err, e, "--net tap=%s: %s exists but is not a single-queue tap (see `ip -d link show %s`)",
					 ifname, ifname, ifname);
		return kiln_fail(err, e, "--net tap=%s: TUNSETIFF: %s", ifname, strerror(e));
	}
	if (ioctl(fd, TUNSETVNETHDRSZ, &hdr) < 0 || ioctl(fd, TUNSETOFFLOAD, 0) < 0) {
		e = errno;
		close(fd);
		return kiln_fail(err, e, "--net tap=%s: setting up vnet headers: %s", ifname, strerror(e));
	}
	return fd;
}

/* Build the device around fd (taken over, closed on failure). */
static int net_create(struct virtio_dev *d, int fd, int is_tap, const char *label,
		      const uint8_t mac[6], int mac_given, struct vm *vm, const struct guest_mem *mem,
		      struct ioloop *loop, uint64_t base, uint32_t irq, struct kiln_err *err)
{
	struct net *n = calloc(1, sizeof(*n));

	if (!n || !(n->rx_buf = malloc(NET_BOUNCE_LEN))) {
		free(n);
		close(fd);
		return kiln_fail(err, ENOMEM, "out of memory");
	}
	n->fd = fd;
	n->is_tap = is_tap;
	n->dev = d;
	memcpy(n->mac, mac, 6);
	n->mac_given = mac_given;
	snprintf(n->spec, sizeof(n->spec), "%s", label);
	n->rx_read_op.done = net_rx_read_done;
	n->rx_poll_op.done = net_rx_poll_done;
	/* On failure virtio_mmio_init has set d->ops: virtio_mmio_destroy() frees n. */
	return virtio_mmio_init(d, &virtio_net_ops, n, vm, mem, loop, base, irq, err);
}

int virtio_net_create_fd(struct virtio_dev *d, int fd, const uint8_t mac[6], struct vm *vm,
			 const struct guest_mem *mem, struct ioloop *loop,
			 uint64_t base, uint32_t irq, struct kiln_err *err)
{
	char label[32];

	snprintf(label, sizeof(label), "fd=%d", fd);
	return net_create(d, fd, 0, label, mac, 1, vm, mem, loop, base, irq, err);
}

int virtio_net_create(struct virtio_dev *d, const char *spec, struct vm *vm,
		      const struct guest_mem *mem, struct ioloop *loop,
		      uint64_t base, uint32_t irq, struct kiln_err *err)
{
	char ifname[IFNAMSIZ], label[IFNAMSIZ + 8];
	uint8_t mac[6];
	int fd, r, mac_given;

	r = net_parse(spec, ifname, mac, &mac_given, err);
	if (r < 0)
		return r;
	fd = net_open_tap(ifname, err);
	if (fd < 0)
		return fd;
	snprintf(label, sizeof(label), "tap=%s", ifname);
	return net_create(d, fd, 1, label, mac, mac_given, vm, mem, loop, base, irq, err);
}
