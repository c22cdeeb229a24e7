/* virtio-net (virtio_net.c): a tap device as the guest's eth0. */
#ifndef KILN_VIRTIO_NET_H
#define KILN_VIRTIO_NET_H

#include "virtio.h"

/* The kind: --net tap=NAME[,mac=xx:xx:xx:xx:xx:xx]; a restore takes its tap from the command line. */
extern const struct virtio_dev_ops virtio_net_ops;
virtio_create_fn virtio_net_create;

/*
 * virtio-net over an already open fd instead of a tap (tests, fuzzing): each
 * read or write is one frame behind a 12-byte virtio_net_hdr_v1, as on a
 * tap with IFF_VNET_HDR. fd must be non-blocking and is taken over. mac
 * counts as given explicitly: a restore refuses state with another MAC.
 */
int virtio_net_create_fd(struct virtio_dev *d, int fd, const uint8_t mac[6], struct vm *vm,
			 const struct guest_mem *mem, struct ioloop *loop,
			 uint64_t base, uint32_t irq, struct kiln_err *err);

#endif
