/*
 * virtio-blk (virtio 1.2, 5.2) on a raw image file, with reads, writes and
 * flushes submitted to the I/O thread's io_uring. Requests past the end of
 * the image are refused, not truncated; a read-only disk refuses writes.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "virtio_blk.h"

#define VIRTIO_ID_BLOCK		2
#define VIRTIO_BLK_F_SEG_MAX	2
#define VIRTIO_BLK_F_RO		5
#define VIRTIO_BLK_F_BLK_SIZE	6
#define VIRTIO_BLK_F_FLUSH	9

#define VIRTIO_BLK_T_IN		0
#define VIRTIO_BLK_T_OUT	1
#define VIRTIO_BLK_T_FLUSH	4
#define VIRTIO_BLK_T_GET_ID	8

#define VIRTIO_BLK_S_OK		0
#define VIRTIO_BLK_S_IOERR	1
#define VIRTIO_BLK_S_UNSUPP	2

#define SECTOR		512
#define BLK_QUEUE_SIZE	256
#define BLK_SEG_MAX	(BLK_QUEUE_SIZE - 2)

struct blk_req_hdr {
	uint32_t type;
	uint32_t reserved;
	uint64_t sector;
};

struct blk_config {
	uint64_t capacity;
	uint32_t size_max;
	uint32_t seg_max;
	uint16_t cylinders;
	uint8_t heads;
	uint8_t sectors;
	uint32_t blk_size;
} __attribute__((packed));

struct blk {
	struct virtio_dev *dev;
	int fd;
	int ro;
	int slot;		/* a volume slot (,slot): never offered read-only, may be empty */
	int resized;		/* restored with another size than the snapshot's: tell the driver */
	uint64_t sectors;
	char id[DISK_ID_BYTES + 1];
	char path[sizeof(((struct disk_spec *)0)->path)];
	unsigned inflight;
	uint64_t reads, writes, flushes, errors;
};

/* One request in flight on the ring. */
struct blk_req {
	struct io_op op;
	struct blk *blk;
	uint32_t gen;		/* the queue's gen when the request was taken */
	uint16_t head;
	uint8_t type;
	uint8_t *status;
	uint64_t expect;	/* bytes the I/O must move */
	unsigned niov;
	struct iovec iov[];
};

/*
 * Complete a request. Callers hold the device lock with the queue in the
 * incarnation (gen) the request was taken from: blk_request right after
 * virtq_pop, blk_io_done only once it has checked the gen.
 */
static void blk_finish(struct blk *b, uint16_t head, uint8_t *status, uint8_t st, uint32_t len)
{
	*status = st;
	if (st != VIRTIO_BLK_S_OK)
		b->errors++;
	virtq_push(&b->dev->vq[0], head, len + 1);
	virtio_signal_used(b->dev, 0);
}

static void blk_io_done(struct io_op *op, int res, unsigned flags)
{
	struct blk_req *r = (struct blk_req *)op;
	struct blk *b = r->blk;
	uint8_t st = VIRTIO_BLK_S_OK;
	uint32_t len = 0;

	(void)flags;
	pthread_mutex_lock(&b->dev->lock);
	b->inflight--;
	if (r->gen == b->dev->vq[0].gen && virtio_running(b->dev)) {
		if (res < 0 || (uint64_t)res != r->expect) {
			static struct log_limit lim = LOG_LIMIT("virtio-blk");

			log_guest(&lim, "%s: %s failed: %s", b->path,
				  r->type == VIRTIO_BLK_T_IN ? "read" : r->type == VIRTIO_BLK_T_OUT ? "write" : "flush",
				  res < 0 ? strerror(-res) : "short transfer");
			st = VIRTIO_BLK_S_IOERR;
		} else if (r->type == VIRTIO_BLK_T_IN) {
			len = (uint32_t)res;
		}
		blk_finish(b, r->head, r->status, st, len);
	}
	pthread_mutex_unlock(&b->dev->lock);
	free(r);
}

/*
 * The data segments of a request: readable bytes after the 16-byte header
 * for a write, writable bytes before the status byte for a read.
 */
static unsigned data_iov(const struct virtq_chain *c, int is_read, struct iovec *out)
{
	const struct iovec *src = is_read ? c->write : c->read;
	unsigned n = is_read ? c->nwrite : c->nread, i, k = 0;
	uint64_t skip = is_read ? 0 : sizeof(struct blk_req_hdr);
	uint64_t keep = is_read ? c->write_len - 1 : c->read_len - skip;

	for (i = 0; i < n && keep; i++) {
		uint8_t *base = src[i].iov_base;
		uint64_t len = src[i].iov_len;

		if (skip >= len) {
			skip -= len;
			continue;
		}
		base += skip;
		len -= skip;
		skip = 0;
		if (len > keep)
			len = keep;
		out[k++] = (struct iovec){ base, len };
		keep -= len;
	}
	return k;
}

/* Handle one request; returns -1 if the chain cannot even carry a status. */
static int blk_request(struct blk *b, struct virtq_chain *c)
{
	struct blk_req_hdr h;
	struct blk_req *r;
	struct io_uring_sqe *sqe;
	uint8_t *status;
	uint64_t bytes;
	int is_read;
	unsigned niov;

	/* The status byte is the last byte the device may write (5.2.6). */
	if (c->write_len == 0 || c->nwrite == 0 || c->write[c->nwrite - 1].iov_len == 0)
		return -1;
	status = (uint8_t *)c->write[c->nwrite - 1].iov_base + c->write[c->nwrite - 1].iov_len - 1;
	if (iov_to_buf(c->read, c->nread, 0, &h, sizeof(h)) != sizeof(h)) {
		blk_finish(b, c->head, status, VIRTIO_BLK_S_IOERR, 0);
		return 0;
	}
	switch (h.type) {
	case VIRTIO_BLK_T_GET_ID: {
		size_t n = c->write_len - 1 < DISK_ID_BYTES ? c->write_len - 1 : DISK_ID_BYTES;
		size_t done = iov_from_buf(c->write, c->nwrite, 0, b->id, n);

		blk_finish(b, c->head, status, VIRTIO_BLK_S_OK, (uint32_t)done);
		return 0;
	}
	case VIRTIO_BLK_T_FLUSH:
		r = calloc(1, sizeof(*r));
		if (!r)
			goto ioerr;
		r->type = VIRTIO_BLK_T_FLUSH;
		r->expect = 0;
		sqe = ioloop_sqe(b->dev->loop, &r->op);
		if (!sqe) {
			free(r);
			goto ioerr;
		}
		io_uring_prep_fsync(sqe, b->fd, IORING_FSYNC_DATASYNC);
		b->flushes++;
		break;
	case VIRTIO_BLK_T_IN:
	case VIRTIO_BLK_T_OUT:
		is_read = h.type == VIRTIO_BLK_T_IN;
		if (!is_read && b->ro)
			goto ioerr;
		bytes = is_read ? c->write_len - 1 : c->read_len - sizeof(h);
		/* Whole sectors, wholly inside the image: refuse, never truncate. */
		if (bytes % SECTOR || h.sector > b->sectors || bytes / SECTOR > b->sectors - h.sector ||
		    bytes > INT32_MAX)
			goto ioerr;
		r = calloc(1, sizeof(*r) + (is_read ? c->nwrite : c->nread) * sizeof(struct iovec));
		if (!r)
			goto ioerr;
		niov = data_iov(c, is_read, r->iov);
		r->niov = niov;
		r->type = (uint8_t)h.type;
		r->expect = bytes;
		sqe = ioloop_sqe(b->dev->loop, &r->op);
		if (!sqe) {
			free(r);
			goto ioerr;
		}
		if (is_read) {
			io_uring_prep_readv(sqe, b->fd, r->iov, niov, h.sector * SECTOR);
			b->reads++;
		} else {
			io_uring_prep_writev(sqe, b->fd, r->iov, niov, h.sector * SECTOR);
			b->writes++;
		}
		break;
	default:
		blk_finish(b, c->head, status, VIRTIO_BLK_S_UNSUPP, 0);
		return 0;
	}
	r->op.done = blk_io_done;
	r->blk = b;
	r->gen = b->dev->vq[0].gen;
	r->head = c->head;
	r->status = status;
	b->inflight++;
	return 0;
ioerr:
	blk_finish(b, c->head, status, VIRTIO_BLK_S_IOERR, 0);
	return 0;
}

static void blk_notify(struct virtio_dev *d, unsigned q)
{
	struct blk *b = d->priv;
	static __thread struct virtq_chain chain;
	struct kiln_err err;
	int r;

	if (q != 0)
		return;
	while ((r = virtq_pop(&d->vq[0], d->mem, &chain, &err)) == 1) {
		if (blk_request(b, &chain) < 0) {
			virtio_needs_reset(d, "block request without a status byte");
			return;
		}
	}
	if (r < 0)
		virtio_needs_reset(d, err.msg);
}

static void blk_config_read(struct virtio_dev *d, uint32_t off, void *buf, uint32_t len)
{
	struct blk *b = d->priv;
	uint8_t cfg[64] = { 0 };
	struct blk_config c = {
		.capacity = b->sectors,
		.seg_max = BLK_SEG_MAX,
		.blk_size = SECTOR,
	};

	memcpy(cfg, &c, sizeof(c));
	if (off < sizeof(cfg) && len <= sizeof(cfg) - off)
		memcpy(buf, cfg + off, len);
}

static void blk_destroy(struct virtio_dev *d)
{
	struct blk *b = d->priv;

	if (!b)
		return;
	if (b->fd >= 0)
		close(b->fd);
	free(b);
	d->priv = NULL;
}

static unsigned blk_inflight(struct virtio_dev *d)
{
	struct blk *b = d->priv;

	return b->inflight;
}

/* What the guest has seen of the disk: its size, read-only flag and serial. */
static int blk_save(struct virtio_dev *d, struct snap_buf *w)
{
	struct blk *b = d->priv;

	snapw_u64(w, b->sectors);
	/* 0 writable, 1 read-only, 2 a volume slot (whatever its file was). */
	snapw_u8(w, b->slot ? 2 : (uint8_t)b->ro);
	snapw_blob(w, b->id, (uint32_t)strlen(b->id));
	return 0;
}

/*
 * The disk under a restored guest must look like the one it booted with: its
 * page cache and filesystem already know the size and serial. The contents
 * are the caller's business (a copy of the image the snapshot saw). A volume
 * slot is the exception: nothing in the guest used it (it was empty, or held
 * a volume the guest had let go of), so the restorer may put any file of any
 * size there, read-only or not, and the driver is told its new capacity.
 */
static int blk_restore(struct virtio_dev *d, struct snap_rd *r, struct kiln_err *err)
{
	struct blk *b = d->priv;
	char id[DISK_ID_BYTES + 1];
	uint64_t sectors;
	uint8_t ro;

	sectors = snapr_u64(r, "sectors");
	ro = snapr_u8(r, "read-only flag");
	snapr_str(r, id, sizeof(id), "disk id");
	if (snapr_end(r, "virtio-blk state") < 0)
		return kiln_fail(err, EINVAL, "virtio-blk state: %s", r->err);
	if (ro == 2 || b->slot) {
		if (ro != 2 || !b->slot)
			return kiln_fail(err, EINVAL, "virtio-blk state: the snapshot's disk %s a volume slot, %s %s (give ,slot %s)",
					 ro == 2 ? "was" : "was not", b->path, b->slot ? "is one" : "is not",
					 ro == 2 ? "for it" : "only for slots");
		if (strcmp(id, b->id) != 0)
			return kiln_fail(err, EINVAL, "virtio-blk state: the snapshot's slot had id '%s', %s has '%s' (give the same id=)",
					 id, b->path, b->id);
		b->resized = sectors != b->sectors;
		return 0;
	}
	if (sectors != b->sectors)
		return kiln_fail(err, EINVAL, "virtio-blk state: the snapshot's disk had %" PRIu64 " sectors, %s has %" PRIu64,
				 sectors, b->path, b->sectors);
	if (ro > 1 || ro != b->ro)
		return kiln_fail(err, EINVAL, "virtio-blk state: the snapshot's disk was %s, %s is %s",
				 ro ? "read-only" : "writable", b->path, b->ro ? "read-only" : "writable");
	if (strcmp(id, b->id) != 0)
		return kiln_fail(err, EINVAL, "virtio-blk state: the snapshot's disk had id '%s', %s has '%s' (give the same id=)",
				 id, b->path, b->id);
	return 0;
}

/* A slot restored with another file than the snapshot's: the driver re-reads the capacity. */
static void blk_resumed(struct virtio_dev *d)
{
	struct blk *b = d->priv;

	if (b->resized) {
		b->resized = 0;
		virtio_config_changed(d);
	}
}

static int blk_stats(struct virtio_dev *d, char *buf, size_t len)
{
	struct blk *b = d->priv;

	return snprintf(buf, len, ",\"reads\":%" PRIu64 ",\"writes\":%" PRIu64 ",\"flushes\":%" PRIu64
			",\"errors\":%" PRIu64 ",\"inflight\":%u",
			b->reads, b->writes, b->flushes, b->errors, b->inflight);
}


int disk_spec_parse(const char *spec, struct disk_spec *ds, struct kiln_err *err)
{
	const char *comma = strchr(spec, ',');
	size_t plen = comma ? (size_t)(comma - spec) : strlen(spec);

	memset(ds, 0, sizeof(*ds));
	if (plen == 0)
		return kiln_fail(err, EINVAL, "--disk %s: expected PATH[,ro][,id=NAME]", spec);
	if (plen >= sizeof(ds->path))
		return kiln_fail(err, ENAMETOOLONG, "--disk %.40s...: a path of %zu bytes, at most %zu bytes",
				 spec, plen, sizeof(ds->path) - 1);
	memcpy(ds->path, spec, plen);
	snprintf(ds->id, sizeof(ds->id), "kiln");
	ds->opts = comma ? comma : "";
	while (comma) {
		const char *opt = comma + 1;
		size_t olen;

		comma = strchr(opt, ',');
		olen = comma ? (size_t)(comma - opt) : strlen(opt);
		if (olen == 2 && strncmp(opt, "ro", 2) == 0) {
			ds->ro = 1;
		} else if (olen == 4 && strncmp(opt, "slot", 4) == 0) {
			ds->slot = 1;
		} else if (olen > 3 && strncmp(opt, "id=", 3) == 0 && olen - 3 <= DISK_ID_BYTES) {
			memcpy(ds->id, opt + 3, olen - 3);
			ds->id[olen - 3] = '\0';
		} else {
			return kiln_fail(err, EINVAL, "--disk %s: unknown option '%.*s' (expected ro, slot or id=NAME of at most %d bytes)",
					 spec, (int)olen, opt, DISK_ID_BYTES);
		}
	}
	return 0;
}

/* Parse "PATH[,ro][,slot][,id=NAME]" into b. */
static int blk_parse(struct blk *b, const char *spec, struct kiln_err *err)
{
	struct disk_spec ds;
	int r = disk_spec_parse(spec, &ds, err);

	if (r < 0)
		return r;
	memcpy(b->path, ds.path, sizeof(b->path));
	memcpy(b->id, ds.id, sizeof(b->id));
	b->ro = ds.ro;
	b->slot = ds.slot;
	return 0;
}

int virtio_blk_create(struct virtio_dev *d, const char *spec, struct vm *vm,
		      const struct guest_mem *mem, struct ioloop *loop,
		      uint64_t base, uint32_t irq, struct kiln_err *err)
{
	struct blk *b = calloc(1, sizeof(*b));
	struct stat st;
	uint64_t size;
	int r;

	if (!b)
		return kiln_fail(err, ENOMEM, "out of memory");
	b->fd = -1;
	r = blk_parse(b, spec, err);
	if (r < 0)
		goto fail;
	b->fd = open(b->path, (b->ro ? O_RDONLY : O_RDWR) | O_CLOEXEC);
	if (b->fd < 0) {
		r = kiln_fail(err, errno, "--disk %s: %s", b->path, strerror(errno));
		goto fail;
	}
	/* Two VMMs writing one image corrupt it: take a lock for our lifetime. */
	if (flock(b->fd, (b->ro ? LOCK_SH : LOCK_EX) | LOCK_NB) < 0) {
		r = kiln_fail(err, EBUSY, "--disk %s: in use by another process (give each VM its own writable image, or add ,ro)",
			      b->path);
		goto fail;
	}
	if (fstat(b->fd, &st) < 0) {
		r = kiln_fail(err, errno, "--disk %s: %s", b->path, strerror(errno));
		goto fail;
	}
	if (S_ISBLK(st.st_mode)) {
		if (ioctl(b->fd, BLKGETSIZE64, &size) < 0) {
			r = kiln_fail(err, errno, "--disk %s: BLKGETSIZE64: %s", b->path, strerror(errno));
			goto fail;
		}
	} else if (S_ISREG(st.st_mode)) {
		size = (uint64_t)st.st_size;
	} else {
		r = kiln_fail(err, EINVAL, "--disk %s: not a regular file or block device", b->path);
		goto fail;
	}
	if ((size == 0 && !b->slot) || size % SECTOR) {
		r = kiln_fail(err, EINVAL, "--disk %s: size %" PRIu64 " is not a positive multiple of 512 bytes (truncate -s to fix)",
			      b->path, size);
		goto fail;
	}
	b->sectors = size / SECTOR;
	b->dev = d;
	r = virtio_mmio_init(d, &virtio_blk_ops, b, vm, mem, loop, base, irq, err);
	if (r < 0)
		goto fail_dev;
	/* A slot keeps its features whatever it holds: read-only is enforced per request. */
	if (b->ro && !b->slot)
		d->offered |= 1ULL << VIRTIO_BLK_F_RO;
	return 0;
fail:
	if (b->fd >= 0)
		close(b->fd);
	free(b);
	return r;
fail_dev:
	/* virtio_mmio_init set d->ops: destroy frees b. */
	d->priv = b;
	return r;
}

/* ---- What a snapshot keeps of a disk (the persist and clone hooks) ---- */

/*
 * A read-only disk is shared, recorded by absolute path: a restore must be
 * given it again. A writable one is copied into the snapshot as diskN.img,
 * and each restore writes to a private copy of that.
 */
static int blk_spec_persist(const char *spec, struct dev_persist *p, char *out, size_t outlen,
			    struct kiln_err *err)
{
	struct disk_spec ds;
	char abs[4096], name[32];
	int r;

	if ((r = disk_spec_parse(spec, &ds, err)) < 0)
		return r;
	if (ds.ro || ds.slot) {
		if (!realpath(ds.path, abs))
			return kiln_fail(err, errno, "%s: %s", ds.path, strerror(errno));
		if (snprintf(out, outlen, "%s%s", abs, ds.opts) >= (int)outlen)
			return kiln_fail(err, ENAMETOOLONG, "%s: path too long for a snapshot (at most %zu bytes)",
					 abs, outlen - 1);
		return 0;
	}
	snprintf(name, sizeof(name), "disk%u.img", p->nfiles);
	if ((r = p->copy_in(p, ds.path, name, err)) < 0)
		return r;
	p->nfiles++;
	snprintf(out, outlen, "%s%s", name, ds.opts);
	return 0;
}

/* A writable disk's name must be a file in the snapshot: a path anywhere else would hand the guest a host file. */
static int blk_spec_check(const char *spec, int *own, struct kiln_err *err)
{
	struct disk_spec ds;
	struct kiln_err e;
	char shown[64];

	if (disk_spec_parse(spec, &ds, &e) < 0)
		return kiln_fail(err, EINVAL, "disk: %s", e.msg);
	*own = !ds.ro && !ds.slot;
	if (*own && !name_is_local(ds.path))
		return kiln_fail(err, EINVAL, "disk path \"%s\" is not a file in the snapshot's directory (a snapshot names only its own files; give a host disk with --disk)",
				 str_printable(ds.path, shown));
	return 0;
}

static int blk_spec_clone(const char *spec, struct dev_persist *p, char *out, size_t outlen,
			  struct kiln_err *err)
{
	struct disk_spec ds;
	char copy[4096], name[32];
	int r;

	if ((r = disk_spec_parse(spec, &ds, err)) < 0)
		return r;
	snprintf(name, sizeof(name), "disk%d.img", p->slot);
	if ((r = p->copy_out(p, ds.path, name, copy, sizeof(copy), err)) < 0)
		return r;
	if (snprintf(out, outlen, "%s%s", copy, ds.opts) >= (int)outlen)
		return kiln_fail(err, ENAMETOOLONG, "%s: disk path too long", p->dir);
	return 0;
}

static void blk_spec_needs(const char *spec, char *buf, size_t len)
{
	char shown[64];
	struct disk_spec ds;
	struct kiln_err e;

	if (disk_spec_parse(spec, &ds, &e) == 0 && ds.slot) {
		snprintf(buf, len, "a volume slot (\"%s\"): pass --disk PATH,slot[,ro] for it (an empty file leaves it empty), after a --disk for each disk before it",
			 str_printable(spec, shown));
		return;
	}
	snprintf(buf, len, "a read-only disk the snapshot shared (\"%s\"): pass --disk PATH,ro for it, after a --disk for each disk before it (a snapshot opens no host file outside its directory)",
		 str_printable(spec, shown));
}

/* diskN.img, N in decimal: the copies blk_spec_persist writes. */
static int blk_own_file(const char *name)
{
	unsigned n;
	int end = 0;

	return sscanf(name, "disk%u.img%n", &n, &end) == 1 && end > 0 && name[end] == '\0' &&
	       name[4] >= '0' && name[4] <= '9';
}

const struct virtio_dev_ops virtio_blk_ops = {
	.name = "virtio-blk",
	.device_id = VIRTIO_ID_BLOCK,
	.num_queues = 1,
	.queue_max = BLK_QUEUE_SIZE,
	.config_size = 64,
	.features = 1ULL << VIRTIO_BLK_F_SEG_MAX | 1ULL << VIRTIO_BLK_F_BLK_SIZE |
		    1ULL << VIRTIO_BLK_F_FLUSH,
	.config_read = blk_config_read,
	.notify = blk_notify,
	.destroy = blk_destroy,
	.inflight = blk_inflight,
	.save = blk_save,
	.restore = blk_restore,
	.resumed = blk_resumed,
	.stats = blk_stats,
	.kind = "disk",
	.create = virtio_blk_create,
	.spec_persist = blk_spec_persist,
	.spec_check = blk_spec_check,
	.spec_clone = blk_spec_clone,
	.spec_needs = blk_spec_needs,
	.own_file = blk_own_file,
};
