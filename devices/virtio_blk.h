/* virtio-blk (virtio_blk.c): a disk image as the guest's /dev/vdX. */
#ifndef KILN_VIRTIO_BLK_H
#define KILN_VIRTIO_BLK_H

#include "virtio.h"

/* The kind: --disk PATH[,ro][,id=NAME]; a snapshot copies a writable disk into itself. */
extern const struct virtio_dev_ops virtio_blk_ops;
virtio_create_fn virtio_blk_create;

/* --disk's SPEC, taken apart. */
#define DISK_ID_BYTES	20		/* the serial the guest reads, at most */
struct disk_spec {
	char path[4096];
	char id[DISK_ID_BYTES + 1];	/* "kiln" unless id= */
	int ro;
	int slot;			/* a volume slot: its file is the restorer's, its size may change */
	const char *opts;		/* SPEC from its first comma on ("" if none) */
};

/* Parse PATH[,ro][,slot][,id=NAME]. Returns 0, or -EINVAL (-ENAMETOOLONG) with err naming the problem. */
int disk_spec_parse(const char *spec, struct disk_spec *ds, struct kiln_err *err);

#endif
