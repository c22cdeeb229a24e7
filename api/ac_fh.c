/* kiln agent client: file handles (FH_*; docs/agent-protocol.md, "Files"). */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "agent_proto.h"
#include "agent_client.h"
#include "ac_int.h"

/* ---- file handles ------------------------------------------------------------ */

/* A request on file handle fh: o opened (its result the U64 field res_tag, unless 0), w begun with op and KT_FH. */
static void fh_begin(struct kac *c, struct op *o, struct kp_recw *w, uint64_t op, uint64_t fh, uint8_t res_tag)
{
	if (res_tag)
		ac_op_start_u64(c, o, w, op, res_tag);
	else
		ac_op_start(c, o, w, op);
	kp_put_u64(w, KT_FH, fh);
}

int kac_fh_open(struct kac *c, const char *path, unsigned flags, uint32_t mode, uint64_t *fh,
		struct kac_err *err)
{
	static const struct { unsigned flag; uint8_t tag; } bools[] = {
		{ KAC_FH_READ, KT_READ }, { KAC_FH_WRITE, KT_WRITE }, { KAC_FH_APPEND, KT_APPEND },
		{ KAC_FH_TRUNCATE, KT_TRUNCATE }, { KAC_FH_CREATE, KT_CREATE }, { KAC_FH_CREATE_NEW, KT_CREATE_NEW },
	};
	struct kp_recw w;
	struct op o;
	size_t i;
	int ret;

	*fh = 0;
	ac_op_start_u64(c, &o, &w, KP_OP_FH_OPEN, KT_FH);
	kp_put_str(&w, KT_PATH, path);
	for (i = 0; i < sizeof(bools) / sizeof(bools[0]); i++)
		if (flags & bools[i].flag)
			kp_put_bool(&w, bools[i].tag, 1);
	kp_put_u64(&w, KT_MODE, mode & 07777);
	ret = ac_simple(c, &o, &w, err);
	if (ret)
		return ret;
	if (o.size <= 0)
		return ac_fail(err, EPROTO, "agent: FH_OPEN answered without a handle");
	*fh = (uint64_t)o.size;
	return 0;
}

struct fh_read_arg {
	void *buf;
	size_t cap;
	int64_t n;
};

static int fh_read_rec(struct op *o, const struct kp_frame *f)
{
	struct fh_read_arg *a = o->arg;
	struct kp_field fl;

	if (kp_rec_find(f->payload, f->len, KT_DATA, &fl) == 1) {
		if (fl.kind != KP_K_BYTES || fl.len > a->cap)
			return -EPROTO;
		memcpy(a->buf, fl.val, fl.len);
		a->n = fl.len;
	} else if (kp_rec_find(f->payload, f->len, KT_EOF, &fl) == 1) {
		a->n = 0;
	}
	return 0;
}

int64_t kac_fh_read(struct kac *c, uint64_t fh, void *buf, size_t len, struct kac_err *err)
{
	struct fh_read_arg a = { buf, len > KP_FH_IO_MAX ? KP_FH_IO_MAX : len, -1 };
	struct kp_recw w;
	struct op o;
	int ret;

	fh_begin(c, &o, &w, KP_OP_FH_READ, fh, 0);
	o.on_rec = fh_read_rec;
	o.arg = &a;
	kp_put_u64(&w, KT_LENGTH, a.cap);
	ret = ac_simple(c, &o, &w, err);
	if (ret)
		return ret;
	return a.n >= 0 ? a.n : ac_fail(err, EPROTO, "agent: FH_READ answered without DATA or EOF");
}

/* An FH_* request whose answer is the U64 field tag, sent with w already filled. */
static int64_t fh_u64(struct kac *c, struct op *o, struct kp_recw *w, const char *what, struct kac_err *err)
{
	int ret = ac_simple(c, o, w, err);

	if (ret)
		return ret;
	return o->size >= 0 ? o->size : ac_fail(err, EPROTO, "agent: %s answered without a result", what);
}

int64_t kac_fh_write(struct kac *c, uint64_t fh, const void *buf, size_t len, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;

	fh_begin(c, &o, &w, KP_OP_FH_WRITE, fh, KT_LENGTH);
	kp_put_bytes(&w, KT_DATA, buf, (uint32_t)(len > KP_FH_IO_MAX ? KP_FH_IO_MAX : len));
	return fh_u64(c, &o, &w, "FH_WRITE", err);
}

int64_t kac_fh_seek(struct kac *c, uint64_t fh, int64_t offset, int whence, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;

	if (whence != SEEK_SET && whence != SEEK_CUR && whence != SEEK_END)
		return ac_fail(err, EINVAL, "fh seek: whence must be SEEK_SET, SEEK_CUR or SEEK_END");
	fh_begin(c, &o, &w, KP_OP_FH_SEEK, fh, KT_OFFSET);
	kp_put_i64(&w, KT_OFFSET, offset);
	kp_put_u64(&w, KT_WHENCE, whence == SEEK_SET ? 0 : whence == SEEK_CUR ? 1 : 2);
	return fh_u64(c, &o, &w, "FH_SEEK", err);
}

int kac_fh_stat(struct kac *c, uint64_t fh, struct kac_stat *st, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;

	memset(st, 0, sizeof(*st));
	fh_begin(c, &o, &w, KP_OP_FH_STAT, fh, 0);
	o.on_rec = ac_stat_rec;
	o.arg = st;
	return ac_simple(c, &o, &w, err);
}

/* FH_SYNC, FH_TRUNCATE, FH_LOCK, FH_UNLOCK, FH_CLOSE: one optional argument, no result. */
static int fh_simple(struct kac *c, uint64_t op, uint64_t fh, uint8_t tag, uint64_t v, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;

	fh_begin(c, &o, &w, op, fh, 0);
	if (op == KP_OP_FH_LOCK)
		o.wait = OP_ALIVE;	/* held until the lock is had */
	if (tag == KT_LENGTH)
		kp_put_u64(&w, tag, v);
	else if (tag)
		kp_put_bool(&w, tag, (int)v);
	return ac_simple(c, &o, &w, err);
}

int kac_fh_sync(struct kac *c, uint64_t fh, int data_only, struct kac_err *err)
{
	return fh_simple(c, KP_OP_FH_SYNC, fh, data_only ? KT_DATA_ONLY : 0, 1, err);
}

int kac_fh_truncate(struct kac *c, uint64_t fh, uint64_t length, struct kac_err *err)
{
	return fh_simple(c, KP_OP_FH_TRUNCATE, fh, KT_LENGTH, length, err);
}

int kac_fh_lock(struct kac *c, uint64_t fh, int exclusive, struct kac_err *err)
{
	return fh_simple(c, KP_OP_FH_LOCK, fh, exclusive ? KT_EXCLUSIVE : 0, 1, err);
}

int kac_fh_unlock(struct kac *c, uint64_t fh, struct kac_err *err)
{
	return fh_simple(c, KP_OP_FH_UNLOCK, fh, 0, 0, err);
}

int kac_fh_close(struct kac *c, uint64_t fh, struct kac_err *err)
{
	return fh_simple(c, KP_OP_FH_CLOSE, fh, 0, 0, err);
}

int kac_fh_utime(struct kac *c, uint64_t fh, int64_t atime_ns, int64_t mtime_ns, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;

	fh_begin(c, &o, &w, KP_OP_FH_UTIME, fh, 0);
	kp_put_i64(&w, KT_ATIME, atime_ns);
	kp_put_i64(&w, KT_MTIME, mtime_ns);
	return ac_simple(c, &o, &w, err);
}
