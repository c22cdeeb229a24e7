/* kiln agent client: file transfer, stat, directories, in-guest copy and walk. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "agent_proto.h"
#include "agent_client.h"
#include "ac_int.h"

/* ---- files -------------------------------------------------------------------- */

/* The U64 result field o->res_tag (a size, a handle, an offset) into o->size. */
static int u64_rec(struct op *o, const struct kp_frame *f)
{
	struct kp_field fl;
	uint64_t v;

	if (kp_rec_find(f->payload, f->len, o->res_tag, &fl) == 1 && !kp_field_u64(&fl, &v) &&
	    v <= (uint64_t)INT64_MAX)
		o->size = (int64_t)v;
	return 0;
}

/* An op whose answer is the U64 field tag (u64_rec). */
void ac_op_init_u64(struct op *o, uint32_t id, uint8_t tag)
{
	ac_op_init(o, id);
	o->on_rec = u64_rec;
	o->res_tag = tag;
	o->size = -1;
}

int64_t kac_file_write(struct kac *c, const char *path, int fd, uint32_t mode, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;
	int ret;

	if (err)
		err->code = 0;
	ac_op_init_u64(&o, ac_new_id(c), KT_SIZE);
	o.in_fd = fd;
	o.in_credit = c->peer_window;
	ac_req_begin(c, &w, KP_OP_FILE_WRITE);
	kp_put_str(&w, KT_PATH, path);
	kp_put_u64(&w, KT_MODE, mode & 07777);
	kp_put_bool(&w, KT_CREATE, 1);
	kp_put_bool(&w, KT_TRUNCATE, 1);
	o.wait = OP_ALIVE;
	ret = ac_op_send_run(c, &o, &w, -1, err);
	if (ret)
		return ret;
	return o.size >= 0 ? o.size : (int64_t)o.in_off;
}

int64_t kac_file_read(struct kac *c, const char *path, int fd, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;
	int ret;

	if (err)
		err->code = 0;
	ac_op_init_u64(&o, ac_new_id(c), KT_SIZE);
	o.out_fd[1] = fd;
	ac_req_begin(c, &w, KP_OP_FILE_READ);
	kp_put_str(&w, KT_PATH, path);
	o.wait = OP_ALIVE;
	ret = ac_op_send_run(c, &o, &w, -1, err);
	if (o.out_err)
		return ac_fail(err, -o.out_err, "writing the contents of %s: %s", path, strerror(-o.out_err));
	if (ret)
		return ret;
	return (int64_t)o.out_off[1];
}

int ac_stat_rec(struct op *o, const struct kp_frame *f)
{
	struct kac_stat *st = o->arg;
	struct kp_rec r;
	struct kp_field fl;
	uint64_t v;
	int64_t t;
	int ret;

	kp_rec_open(&r, f->payload, f->len);
	while ((ret = kp_rec_next(&r, &fl)) == 1) {
		if (fl.kind == KP_K_I64) {
			if (kp_field_i64(&fl, &t))
				continue;
			if (fl.tag == KT_ATIME) st->atime_ns = t;
			else if (fl.tag == KT_MTIME) st->mtime_ns = t;
			else if (fl.tag == KT_CTIME) st->ctime_ns = t;
			continue;
		}
		if (kp_field_u64(&fl, &v))
			continue;
		switch (fl.tag) {
		case KT_TYPE: st->type = (uint32_t)v; break;
		case KT_MODE: st->mode = (uint32_t)v; break;
		case KT_SIZE: st->size = v; break;
		case KT_INO: st->ino = v; break;
		case KT_NLINK: st->nlink = v; break;
		case KT_UID: st->uid = v; break;
		case KT_GID: st->gid = v; break;
		case KT_DEV: st->dev = v; break;
		case KT_RDEV: st->rdev = v; break;
		case KT_BLKSIZE: st->blksize = v; break;
		case KT_BLOCKS: st->blocks = v; break;
		}
	}
	if (!st->type)
		st->type = st->mode & S_IFMT;
	return ret < 0 ? -EPROTO : 0;
}

int kac_stat(struct kac *c, const char *path, int nofollow, struct kac_stat *st, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;

	memset(st, 0, sizeof(*st));
	ac_op_start(c, &o, &w, KP_OP_STAT);
	o.on_rec = ac_stat_rec;
	o.arg = st;
	kp_put_str(&w, KT_PATH, path);
	if (nofollow)
		kp_put_bool(&w, KT_NOFOLLOW, 1);
	return ac_simple(c, &o, &w, err);
}

struct dir_arg {
	kac_dirent_fn fn;
	void *arg;
	int ret;
};

static int dir_rec(struct op *o, const struct kp_frame *f)
{
	struct dir_arg *d = o->arg;
	struct kp_rec r, e;
	struct kp_field fl, ef;
	char name[4096];
	uint64_t type;
	int ret;

	kp_rec_open(&r, f->payload, f->len);
	while ((ret = kp_rec_next(&r, &fl)) == 1) {
		if (fl.tag != KT_ENTRY || kp_field_rec(&fl, &e))
			continue;
		name[0] = '\0';
		type = 0;
		while (kp_rec_next(&e, &ef) == 1) {
			if (ef.tag == KT_NAME)
				kp_field_str(&ef, name, sizeof(name));
			else if (ef.tag == KT_TYPE)
				kp_field_u64(&ef, &type);
		}
		if (!d->ret && name[0])
			d->ret = d->fn(d->arg, name, (uint32_t)type);
	}
	return ret < 0 ? -EPROTO : 0;
}

int kac_readdir(struct kac *c, const char *path, kac_dirent_fn fn, void *arg, struct kac_err *err)
{
	struct dir_arg d = { fn, arg, 0 };
	struct kp_recw w;
	struct op o;
	int ret;

	ac_op_start(c, &o, &w, KP_OP_READDIR);
	o.on_rec = dir_rec;
	o.arg = &d;
	kp_put_str(&w, KT_PATH, path);
	ret = ac_simple(c, &o, &w, err);
	if (ret)
		return ret;
	if (d.ret)
		return ac_fail(err, -d.ret, "listing %s: %s", path, strerror(-d.ret));
	return 0;
}

int kac_mkdir(struct kac *c, const char *path, uint32_t mode, int recursive, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;

	ac_op_start(c, &o, &w, KP_OP_MKDIR);
	kp_put_str(&w, KT_PATH, path);
	kp_put_u64(&w, KT_MODE, mode & 07777);
	if (recursive)
		kp_put_bool(&w, KT_RECURSIVE, 1);
	return ac_simple(c, &o, &w, err);
}

int kac_remove(struct kac *c, const char *path, int recursive, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;

	ac_op_start(c, &o, &w, KP_OP_REMOVE);
	kp_put_str(&w, KT_PATH, path);
	if (recursive)
		kp_put_bool(&w, KT_RECURSIVE, 1);
	return ac_simple(c, &o, &w, err);
}

int kac_rename(struct kac *c, const char *from, const char *to, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;

	ac_op_start(c, &o, &w, KP_OP_RENAME);
	kp_put_str(&w, KT_PATH, from);
	kp_put_str(&w, KT_PATH2, to);
	return ac_simple(c, &o, &w, err);
}

/* ---- in-guest copy, walk, file handles --------------------------------------- */

int64_t kac_copy(struct kac *c, const char *from, const char *to, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;
	int ret;

	ac_op_init_u64(&o, ac_new_id(c), KT_SIZE);
	o.wait = OP_ALIVE;	/* the agent copies 1 MiB a turn, answering PINGs meanwhile */
	ac_req_begin(c, &w, KP_OP_COPY);
	kp_put_str(&w, KT_PATH, from);
	kp_put_str(&w, KT_PATH2, to);
	ret = ac_simple(c, &o, &w, err);
	if (ret)
		return ret;
	return o.size >= 0 ? o.size : 0;
}

struct walk_arg {
	struct kac *c;
	kac_walk_fn fn;
	void *arg;
	int ret;		/* the callback's error: the walk was cancelled */
};

static int walk_rec(struct op *o, const struct kp_frame *f)
{
	struct walk_arg *a = o->arg;
	struct kp_rec r, e;
	struct kp_field fl, ef;
	char path[4096], name[256];
	uint8_t cancel[KP_HDR_LEN];
	uint64_t type;
	int ret;

	kp_rec_open(&r, f->payload, f->len);
	while ((ret = kp_rec_next(&r, &fl)) == 1) {
		if (fl.tag != KT_ENTRY || kp_field_rec(&fl, &e) || a->ret)
			continue;
		path[0] = name[0] = '\0';
		type = 0;
		while (kp_rec_next(&e, &ef) == 1) {
			if (ef.tag == KT_PATH)
				kp_field_str(&ef, path, sizeof(path));
			else if (ef.tag == KT_NAME)
				kp_field_str(&ef, name, sizeof(name));
			else if (ef.tag == KT_TYPE)
				kp_field_u64(&ef, &type);
		}
		if (!path[0])
			continue;
		a->ret = a->fn(a->arg, path, name, (uint32_t)type);
		/* The caller has had enough: stop the agent's walk, drain what is in flight. */
		if (a->ret && !(f->flags & KP_F_END))
			ac_send_frame(a->c, cancel, (size_t)kp_enc_cancel(cancel, o->id, KP_CHAN_ALL), NULL);
	}
	return ret < 0 ? -EPROTO : 0;
}

int kac_walk(struct kac *c, const char *path, uint64_t max_depth, int follow, kac_walk_fn fn, void *arg,
	     struct kac_err *err)
{
	struct walk_arg a = { c, fn, arg, 0 };
	struct kp_recw w;
	struct op o;
	int ret;

	ac_op_start(c, &o, &w, KP_OP_WALK);
	o.on_rec = walk_rec;
	o.arg = &a;
	kp_put_str(&w, KT_PATH, path);
	if (max_depth != KAC_WALK_ALL)
		kp_put_u64(&w, KT_MAX_DEPTH, max_depth);
	if (!follow)
		kp_put_bool(&w, KT_NOFOLLOW, 1);
	ret = ac_simple(c, &o, &w, err);
	if (a.ret)
		return ac_fail(err, -a.ret, "walking %s: %s", path, strerror(-a.ret));
	return ret;
}
