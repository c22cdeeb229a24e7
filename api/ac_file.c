/* kiln agent client: file transfer, stat, directories, in-guest copy and walk. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "agent_proto.h"
#include "agent_client.h"
#include "ac_int.h"

/* ---- files -------------------------------------------------------------------- */

int64_t kac_file_write(struct kac *c, const char *path, int fd, uint32_t mode, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;
	int ret;

	ac_op_start_u64(c, &o, &w, KP_OP_FILE_WRITE, KT_SIZE);
	o.in_fd = fd;
	o.in_credit = c->peer_window;
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

	ac_op_start_u64(c, &o, &w, KP_OP_FILE_READ, KT_SIZE);
	o.out_fd[1] = fd;
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
	ac_op_start_rec(c, &o, &w, KP_OP_STAT, ac_stat_rec, st);
	kp_put_str(&w, KT_PATH, path);
	if (nofollow)
		kp_put_bool(&w, KT_NOFOLLOW, 1);
	return ac_simple(c, &o, &w, err);
}

/*
 * A READDIR or WALK entry: its KT_PATH (when path is not NULL), KT_NAME and
 * KT_TYPE, or -1 when fl is no record.
 */
static int dirent_of(const struct kp_field *fl, char *path, size_t path_cap, char *name, size_t name_cap,
		     uint64_t *type)
{
	struct kp_rec e;
	struct kp_field ef;

	if (kp_field_rec(fl, &e))
		return -1;
	if (path)
		path[0] = '\0';
	name[0] = '\0';
	*type = 0;
	while (kp_rec_next(&e, &ef) == 1) {
		if (ef.tag == KT_PATH && path)
			kp_field_str(&ef, path, path_cap);
		else if (ef.tag == KT_NAME)
			kp_field_str(&ef, name, name_cap);
		else if (ef.tag == KT_TYPE)
			kp_field_u64(&ef, type);
	}
	return 0;
}

static int dir_entry(struct ac_list *l, const struct kp_field *fl)
{
	char name[4096];
	uint64_t type;

	if (!dirent_of(fl, NULL, 0, name, sizeof(name), &type) && name[0])
		l->ret = l->fn.dir(l->arg, name, (uint32_t)type);
	return 0;
}

int kac_readdir(struct kac *c, const char *path, kac_dirent_fn fn, void *arg, struct kac_err *err)
{
	struct ac_list d = { .tag = KT_ENTRY, .entry = dir_entry, .fn.dir = fn, .arg = arg };
	struct kp_recw w;
	struct op o;

	ac_op_start(c, &o, &w, KP_OP_READDIR);
	kp_put_str(&w, KT_PATH, path);
	return ac_list_run(c, &o, &w, &d, "listing", path, err);
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
	return ac_simple_str(c, KP_OP_RENAME, KT_PATH, from, KT_PATH2, to, err);
}

/* ---- in-guest copy, walk, file handles --------------------------------------- */

int64_t kac_copy(struct kac *c, const char *from, const char *to, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;
	int ret;

	ac_op_start_u64(c, &o, &w, KP_OP_COPY, KT_SIZE);
	o.wait = OP_ALIVE;	/* the agent copies 1 MiB a turn, answering PINGs meanwhile */
	kp_put_str(&w, KT_PATH, from);
	kp_put_str(&w, KT_PATH2, to);
	ret = ac_simple(c, &o, &w, err);
	if (ret)
		return ret;
	return o.size >= 0 ? o.size : 0;
}

static int walk_entry(struct ac_list *l, const struct kp_field *fl)
{
	char path[4096], name[256];
	uint64_t type;

	if (!dirent_of(fl, path, sizeof(path), name, sizeof(name), &type) && path[0])
		l->ret = l->fn.walk(l->arg, path, name, (uint32_t)type);
	return 0;
}

int kac_walk(struct kac *c, const char *path, uint64_t max_depth, int follow, kac_walk_fn fn, void *arg,
	     struct kac_err *err)
{
	/* The callback's error cancels the walk. */
	struct ac_list a = { .tag = KT_ENTRY, .cancel = 1, .entry = walk_entry, .fn.walk = fn, .arg = arg };
	struct kp_recw w;
	struct op o;

	ac_op_start(c, &o, &w, KP_OP_WALK);
	kp_put_str(&w, KT_PATH, path);
	if (max_depth != KAC_WALK_ALL)
		kp_put_u64(&w, KT_MAX_DEPTH, max_depth);
	if (!follow)
		kp_put_bool(&w, KT_NOFOLLOW, 1);
	return ac_list_run(c, &o, &w, &a, "walking", path, err);
}
