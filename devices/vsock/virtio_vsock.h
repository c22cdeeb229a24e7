/*
 * virtio-vsock (virtio 1.2, 5.10): the guest's stream sockets, met on the
 * host by unix sockets in Firecracker's convention (--vsock cid=N,uds=PATH).
 * The device is in vsock.c, its connections in conn.c, the unix-socket
 * muxer (and with it virtio_vsock_create) in muxer.c; vsock_internal.h is
 * what they share, the backend interface among it.
 */
#ifndef KILN_VIRTIO_VSOCK_H
#define KILN_VIRTIO_VSOCK_H

#include "virtio.h"

/* The kind: --vsock cid=N,uds=PATH; a restore takes its socket from the command line. */
extern const struct virtio_dev_ops virtio_vsock_ops;

/*
 * --vsock cid=N,uds=PATH[,connect-timeout=MS][,group=NAME]: parse SPEC,
 * listen on PATH and set d up as virtio-vsock for guest CID N (a
 * virtio_create_fn). Returns 0 or -errno with err naming the problem.
 */
virtio_create_fn virtio_vsock_create;

/*
 * Tell the guest's vsock driver that every connection is gone
 * (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, 5.10.6.7), e.g. after a snapshot is
 * restored, and close them on the host side. d: a device made by
 * virtio_vsock_create. Any thread.
 */
void virtio_vsock_transport_reset(struct virtio_dev *d);

#endif
