/*
 * What the parts of virtio-vsock share: the device (vsock.c), its
 * connections (conn.c) and the unix-socket muxer (muxer.c).
 */
#ifndef KILN_VSOCK_INTERNAL_H
#define KILN_VSOCK_INTERNAL_H

#include <stdint.h>
#include <sys/un.h>

#include "usock.h"
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
#define VSOCK_LINE_MAX		64		/* "CONNECT <port>\n" */
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
	CONN_HANDSHAKE,		/* host client: waiting for its CONNECT line */
	CONN_REQUESTED,		/* REQUEST sent or owed to the guest */
	CONN_CONNECTING,	/* guest-initiated: unix connect in progress */
	CONN_ESTABLISHED,
};

/* Control packets owed to the guest on a connection. */
#define PEND_REQUEST		1
#define PEND_RESPONSE		2
#define PEND_CREDIT_UPDATE	4
#define PEND_CREDIT_REQUEST	8

struct vsock;

struct vsock_conn {
	struct vsock *vs;
	struct vsock_conn *next;
	int fd;
	enum conn_state state;
	uint32_t host_port, guest_port;
	unsigned pending;
	uint64_t deadline;	/* host client: closed if not ESTABLISHED by then (ns, CLOCK_MONOTONIC) */
	int closing;		/* off the live list; freed when no poll is in flight */
	int need_cancel;	/* closed off the I/O thread: its polls still need cancelling */
	unsigned inflight;	/* polls submitted and not yet completed */
	struct io_op in_op, out_op;
	int in_armed, out_armed;

	/* host -> guest */
	uint8_t *rx;		/* VSOCK_RX_STAGE bytes read from the host socket */
	uint32_t rx_off, rx_len;
	int host_eof, eof_sent;
	uint32_t peer_buf_alloc, peer_fwd_cnt;	/* the guest's credit (5.10.6.3) */
	uint32_t tx_cnt;	/* payload bytes sent to the guest */
	int credit_asked;

	/* guest -> host */
	uint8_t *tx;		/* ring of VSOCK_BUF_ALLOC bytes not yet sent to the host */
	uint32_t tx_head, tx_len;
	uint32_t fwd_cnt;	/* guest bytes passed on to the host socket */
	uint32_t fwd_cnt_sent;	/* fwd_cnt the guest last heard from us */
	uint32_t guest_shut;	/* VIRTIO_VSOCK_SHUTDOWN_* the guest sent */
	int wr_shut;
	char hello[24];		/* "OK <port>\n" for a host client, sent before any data */
	uint32_t hello_off, hello_len;
};

struct vsock {
	struct virtio_dev *dev;
	uint64_t cid;
	/* Room left in sun_path for "_<port>": the guest-initiated sockets. */
	char uds[sizeof(((struct sockaddr_un *)0)->sun_path) - 11];
	int listen_fd;
	struct io_op listen_op;
	struct usock_acl acl;		/* who may connect to uds: its owner, root, group= */
	struct io_op cancel_op;		/* tags our cancel requests; its completions are ignored */
	struct vsock_conn *conns;	/* live connections */
	struct vsock_conn *dead;	/* closed, waiting for their polls to end */
	unsigned nconns;
	uint32_t next_port;
	/* RSTs owed to the guest for connections that no longer exist. */
	struct vsock_hdr ctrl[VSOCK_MAX_CTRL];
	unsigned ctrl_head, nctrl;
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
	uint32_t connect_timeout_ms;
	int req_tfd;		/* timerfd: the earliest host client's deadline */
	struct io_op req_op;
	uint64_t req_timer_at;	/* when req_tfd fires (ns, CLOCK_MONOTONIC); 0: disarmed */
	int reap_queued;	/* vsock_reap_call() is queued on the I/O thread */
	uint64_t rx_pkts, tx_pkts, resets_sent;
};

/* vsock.c */
uint32_t rx_put(struct vsock *vs, struct vsock_hdr *h, const uint8_t *payload, uint32_t len);
int rx_ready(const struct vsock *vs);
void vsock_log(struct vsock *vs, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int vsock_reset_in_progress(struct vsock *vs);
void vsock_rx_run(struct vsock *vs);

/* conn.c */
uint32_t alloc_host_port(struct vsock *vs, uint32_t guest_port);
void conn_close(struct vsock_conn *c);
uint32_t conn_credit(const struct vsock_conn *c);
struct vsock_conn *conn_find(struct vsock *vs, uint32_t host_port, uint32_t guest_port);
int conn_flush(struct vsock_conn *c);
void conn_free(struct vsock_conn *c);
struct vsock_conn *conn_new(struct vsock *vs, int fd, enum conn_state state);
void conn_reset(struct vsock_conn *c);
void conn_rw(struct vsock_conn *c, const struct virtq_chain *ch, uint32_t len);
int conn_rx_one(struct vsock_conn *c);
void reply_rst(struct vsock *vs, const struct vsock_hdr *h);
void req_timer_arm(struct vsock *vs, uint64_t at);
void req_timer_done(struct io_op *op, int res, unsigned flags);
void vsock_close_all(struct vsock *vs);
void vsock_reap(struct vsock *vs);
void vsock_reap_later(struct vsock *vs);

/* muxer.c */
void cancel_done(struct io_op *op, int res, unsigned flags);
void conn_arm(struct vsock_conn *c, int out);
void conn_cancel(struct vsock *vs, struct io_op *op);
void conn_from_guest(struct vsock *vs, const struct vsock_hdr *h);
int conn_has_input(struct vsock_conn *c);
void conn_in_done(struct io_op *op, int res, unsigned flags);
void conn_out_done(struct io_op *op, int res, unsigned flags);
void listen_done(struct io_op *op, int res, unsigned flags);
int vsock_listen(struct vsock *vs, struct kiln_err *err);

#endif
