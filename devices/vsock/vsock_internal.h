/*
 * What the three parts of virtio-vsock share.
 *
 *   vsock.c  the device: its queues, packets in and out of guest memory,
 *            the TRANSPORT_RESET event, snapshot save and restore.
 *   conn.c   the connections: their table and states, the credit scheme
 *            (5.10.6.3), shutdown and RST.
 *   muxer.c  a backend: the host ends of the connections as unix sockets
 *            (--vsock uds=PATH).
 *
 * The device and the connections never touch a host fd: a backend opens,
 * reads, writes and closes the host ends through struct vsock_backend_ops
 * and calls back (vsock_conn_open, vsock_conn_readable, ...) when one is
 * ready, so another backend can replace the muxer.
 *
 * Unless said otherwise every function here runs on the I/O thread with the
 * device lock (vs->dev->lock) held.
 */
#ifndef KILN_VSOCK_INTERNAL_H
#define KILN_VSOCK_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "virtio.h"

#define VIRTIO_ID_VSOCK		19
#define VIRTIO_VSOCK_F_STREAM	0

#define VSOCK_RXQ		0
#define VSOCK_TXQ		1
#define VSOCK_EVQ		2
#define VSOCK_QUEUE_SIZE	256

#define VMADDR_CID_HOST		2
#define VSOCK_CID_MAX		0xfffffffeULL	/* 0xffffffff is VMADDR_CID_ANY */

#define VIRTIO_VSOCK_TYPE_STREAM	1

#define VIRTIO_VSOCK_OP_REQUEST		1
#define VIRTIO_VSOCK_OP_RESPONSE	2
#define VIRTIO_VSOCK_OP_RST		3
#define VIRTIO_VSOCK_OP_SHUTDOWN	4
#define VIRTIO_VSOCK_OP_RW		5
#define VIRTIO_VSOCK_OP_CREDIT_UPDATE	6
#define VIRTIO_VSOCK_OP_CREDIT_REQUEST	7

#define VIRTIO_VSOCK_SHUTDOWN_RCV	1
#define VIRTIO_VSOCK_SHUTDOWN_SEND	2
#define VIRTIO_VSOCK_SHUTDOWN_BOTH	3

#define VIRTIO_VSOCK_EVENT_TRANSPORT_RESET 0

#define VSOCK_BUF_ALLOC		(256 * 1024)	/* our receive buffer per connection */
#define VSOCK_RX_STAGE		(64 * 1024)	/* host bytes read ahead per connection */
#define VSOCK_MAX_PAYLOAD	(64 * 1024)	/* largest packet payload we accept */
#define VSOCK_MAX_CONNS		256
#define VSOCK_MAX_CTRL		(VSOCK_MAX_CONNS + 64)
/* How long the guest has to answer a host connection's REQUEST (connect-timeout=MS). */
#define VSOCK_CONNECT_TIMEOUT_MS	5000
#define VSOCK_CONNECT_TIMEOUT_MAX_MS	3600000
#define VSOCK_HOST_PORT_BASE	(1U << 30)	/* ports for host-initiated connections */
#define VSOCK_RESET_HOLD_S	2		/* longest a request waits on a TRANSPORT_RESET */

/* The packet header (5.10.6), little-endian like the host. */
struct vsock_hdr {
	uint64_t src_cid;
	uint64_t dst_cid;
	uint32_t src_port;
	uint32_t dst_port;
	uint32_t len;
	uint16_t type;
	uint16_t op;
	uint32_t flags;
	uint32_t buf_alloc;
	uint32_t fwd_cnt;
} __attribute__((packed));

_Static_assert(sizeof(struct vsock_hdr) == 44, "virtio_vsock_hdr is 44 bytes");

#define VSOCK_HDR	sizeof(struct vsock_hdr)

enum conn_state {
	CONN_HANDSHAKE,		/* host end open, its guest port not yet known */
	CONN_REQUESTED,		/* REQUEST sent or owed to the guest */
	CONN_CONNECTING,	/* guest-initiated: the backend's connect in progress */
	CONN_ESTABLISHED,
};

/* Control packets owed to the guest on a connection. */
#define PEND_REQUEST		1
#define PEND_RESPONSE		2
#define PEND_CREDIT_UPDATE	4
#define PEND_CREDIT_REQUEST	8

struct vsock;

/*
 * One connection. A backend allocates more than this (its conn_size) and
 * keeps its own state for the host end after it.
 */
struct vsock_conn {
	struct vsock *vs;
	struct vsock_conn *next;
	enum conn_state state;
	uint32_t host_port, guest_port;
	unsigned pending;
	uint64_t deadline;	/* host client: closed if not ESTABLISHED by then (ns, CLOCK_MONOTONIC) */
	int closing;		/* off the live list; freed once the backend is done with it */

	/* host -> guest */
	uint8_t *rx;		/* VSOCK_RX_STAGE bytes read from the host end */
	uint32_t rx_off, rx_len;
	int host_eof, eof_sent;
	uint32_t peer_buf_alloc, peer_fwd_cnt;	/* the guest's credit (5.10.6.3) */
	uint32_t tx_cnt;	/* payload bytes sent to the guest */
	int credit_asked;

	/* guest -> host */
	uint8_t *tx;		/* ring of VSOCK_BUF_ALLOC bytes not yet sent to the host */
	uint32_t tx_head, tx_len;
	uint32_t fwd_cnt;	/* guest bytes passed on to the host end */
	uint32_t fwd_cnt_sent;	/* fwd_cnt the guest last heard from us */
	uint32_t guest_shut;	/* VIRTIO_VSOCK_SHUTDOWN_* the guest sent */
	int wr_shut;
	char hello[24];		/* the backend's greeting for a host client, sent before any data */
	uint32_t hello_off, hello_len;
};

/*
 * A backend: where the host ends of the connections live. The setting-up
 * calls run once, from the device's constructor; the others with the
 * device lock held. A call that would wait returns -EAGAIN (or
 * -EINPROGRESS) and the backend calls vsock_conn_readable(),
 * vsock_conn_writable() or vsock_conn_connected() when the host end is
 * ready.
 */
struct vsock_backend_ops {
	/* The option's syntax, for error messages: "cid=N,uds=PATH[,...]". */
	const char *usage;
	/* Bytes per connection: a struct vsock_conn first, the backend's after. */
	size_t conn_size;

	/* Allocate the backend's state into vs->be_priv. Returns 0 or -ENOMEM. */
	int (*init)(struct vsock *vs);
	/*
	 * One option of SPEC (opt, len bytes) the device does not know.
	 * Returns 1 if taken, 0 if unknown, or -errno with err set.
	 */
	int (*option)(struct vsock *vs, const char *opt, size_t len, const char *spec,
		      struct kiln_err *err);
	/* Options parsed, device not yet up: open host resources. 0 or -errno with err. */
	int (*open)(struct vsock *vs, const char *spec, struct kiln_err *err);
	/* The device is up: start taking host connections on loop. 0 or -errno with err. */
	int (*start)(struct vsock *vs, struct ioloop *loop, struct kiln_err *err);
	/* Close and free the backend's state (the I/O thread has stopped). */
	void (*destroy)(struct vsock *vs);

	/*
	 * Open the host end of a guest connection to host port port. Returns
	 * 0 if connected, -EINPROGRESS if vsock_conn_connected() follows, or
	 * another -errno if refused.
	 */
	int (*connect)(struct vsock_conn *c, uint32_t port);
	/*
	 * Send iovcnt buffers to the host end without blocking. Returns the
	 * bytes taken, -EAGAIN if it is full (vsock_conn_writable() follows),
	 * -EINTR to try again, or another -errno if the host end is gone.
	 */
	ssize_t (*send)(struct vsock_conn *c, const struct iovec *iov, int iovcnt);
	/*
	 * Read at most len bytes from the host end without blocking. Returns
	 * the bytes read, 0 at its EOF, -EAGAIN if none wait
	 * (vsock_conn_readable() follows), -EINTR, or another -errno if gone.
	 */
	ssize_t (*recv)(struct vsock_conn *c, void *buf, size_t len);
	/* Whether a byte waits to be read from the host end: 1 or 0. */
	int (*peek)(struct vsock_conn *c);
	/*
	 * The guest accepted host client c: what the client gets before the
	 * stream, into buf (size bytes). Returns its length.
	 */
	uint32_t (*greeting)(const struct vsock_conn *c, char *buf, size_t size);
	/* The guest sends no more: end the host end's input (its EOF). */
	void (*shut_write)(struct vsock_conn *c);
	/* c was closed: end its host end now, its peer sees EOF. Any thread. */
	void (*hangup)(struct vsock_conn *c);
	/*
	 * Finish closing c, on the I/O thread. Returns 1 while the backend
	 * still has work in flight for c (asked again later), 0 once c may go.
	 */
	int (*reap)(struct vsock_conn *c);
	/* Free what the backend holds for c, just before c is freed. */
	void (*release)(struct vsock_conn *c);
};

struct vsock {
	struct virtio_dev *dev;
	uint64_t cid;
	const struct vsock_backend_ops *be;
	void *be_priv;		/* the backend's state */

	/* The connections (conn.c). */
	struct vsock_conn *conns;	/* live connections */
	struct vsock_conn *dead;	/* closed, waiting for their backend to finish */
	unsigned nconns;
	uint32_t next_port;
	/* RSTs owed to the guest for connections that no longer exist. */
	struct vsock_hdr ctrl[VSOCK_MAX_CTRL];
	unsigned ctrl_head, nctrl;
	uint32_t connect_timeout_ms;
	int req_tfd;		/* timerfd: the earliest host client's deadline */
	struct io_op req_op;
	uint64_t req_timer_at;	/* when req_tfd fires (ns, CLOCK_MONOTONIC); 0: disarmed */
	int reap_queued;	/* vsock_conn_reap() is queued on the I/O thread */

	/* The device (vsock.c). */
	/* An rx buffer taken from the ring but not yet filled. */
	struct virtq_chain rx_chain;
	int rx_held;
	uint32_t rx_gen;	/* the rx queue's gen when it was taken */
	int event_pending;	/* a TRANSPORT_RESET event waits for an event buffer */
	/*
	 * A TRANSPORT_RESET went to the guest and it has not yet handled it:
	 * a connection request sent now could be reset by it. The guest
	 * refills the event buffer after handling the event, so a new avail
	 * index on the event queue is the acknowledgement.
	 */
	int reset_unacked;
	uint16_t reset_avail;	/* the event queue's avail index when the event went */
	uint64_t reset_ns;
	int reset_tfd;		/* timerfd: the hold's deadline, should the guest never refill */
	struct io_op reset_op;
	int reset_on_resume;	/* restored from a device that had connections: reset them */
	uint64_t rx_pkts, tx_pkts, resets_sent;
};

/* ---- vsock.c: the device ------------------------------------------------- */

/*
 * Set d up as virtio-vsock with backend be: parse SPEC (cid=, connect-timeout=
 * and be's own options), open be, and register the device. The arguments
 * are a virtio_create_fn's. Returns 0 or -errno with err naming the problem.
 */
int vsock_create(struct virtio_dev *d, const char *spec, const struct vsock_backend_ops *be,
		 struct vm *vm, const struct guest_mem *mem, struct ioloop *loop,
		 uint64_t base, uint32_t irq, struct kiln_err *err);

/* Log a guest's mistake (printf-style), rate-limited. Any thread. */
void vsock_log(struct vsock *vs, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Whether the guest's driver runs and its rx queue is ready: 1 or 0. Any thread. */
int vsock_rx_ready(const struct vsock *vs);

/*
 * Fill the rx buffer vsock_rx_run() holds with header h and up to len bytes
 * of payload (h->len is set). Returns the payload bytes that fit.
 */
uint32_t vsock_rx_put(struct vsock *vs, struct vsock_hdr *h, const uint8_t *payload, uint32_t len);

/*
 * Fill the guest's rx buffers with what is owed: RSTs first, then one
 * packet per connection per round. Any thread for a device never started.
 */
void vsock_rx_run(struct vsock *vs);

/*
 * Whether connection requests must wait: a TRANSPORT_RESET went to the guest
 * and it has not yet handled it (for at most VSOCK_RESET_HOLD_S). 1 or 0.
 */
int vsock_reset_in_progress(struct vsock *vs);

/* ---- conn.c: the connections --------------------------------------------- */

/*
 * A host client connected (a backend's call): a new connection in
 * CONN_HANDSHAKE with connect-timeout to be asked for and answered.
 * Returns it, or NULL at VSOCK_MAX_CONNS or without memory.
 */
struct vsock_conn *vsock_conn_open(struct vsock *vs);

/*
 * Host client c asks for the guest's port guest_port; its first len bytes
 * of stream (early) are already read. Sends the guest a REQUEST. Returns 0,
 * or -ENOTCONN if the guest has no driver to ask (the caller closes c).
 */
int vsock_conn_request(struct vsock_conn *c, uint32_t guest_port, const void *early, uint32_t len);

/* The backend's connect for c ended: ok 1 if connected, 0 if refused. */
void vsock_conn_connected(struct vsock_conn *c, int ok);

/* c's host end may have bytes or EOF for the guest (or c is closing). */
void vsock_conn_readable(struct vsock_conn *c);

/* c's host end has room for the guest's bytes (or c is closing). */
void vsock_conn_writable(struct vsock_conn *c);

/* Close c without telling the guest (it never heard of c, or sent a RST). */
void vsock_conn_close(struct vsock_conn *c);

/*
 * A packet from the guest, its header h read and its source CID checked;
 * ch is its chain (the payload follows the header).
 */
void vsock_conn_input(struct vsock *vs, const struct vsock_hdr *h, const struct virtq_chain *ch);

/*
 * Put the next packet c owes the guest into the held rx buffer. Returns 1
 * if one went, 0 if c had nothing to send. Closes c, never another, if its
 * host end failed.
 */
int vsock_conn_rx_one(struct vsock_conn *c);

/* Close every connection and forget the RSTs owed. Any thread. */
void vsock_conn_close_all(struct vsock *vs);

/* Free closed connections their backend is done with (see be->reap). */
void vsock_conn_reap(struct vsock *vs);

/* Get vsock_conn_reap() run on the I/O thread. Any thread. */
void vsock_conn_reap_later(struct vsock *vs);

/* Close and free every connection at once: the I/O thread has stopped. */
void vsock_conn_free_all(struct vsock *vs);

/* req_tfd fired (an io_op's done): close the host clients past their deadline. */
void vsock_conn_deadline_done(struct io_op *op, int res, unsigned flags);

/* ---- muxer.c: the unix-socket backend ------------------------------------ */

/* The unix-socket backend of --vsock cid=N,uds=PATH. */
extern const struct vsock_backend_ops vsock_mux_ops;

#endif
