/*
 * kiln agent client: file transfer, stat, directories, path operations
 * (chmod ... umask), in-guest copy and walk.
 */
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

/* ---- path operations: chmod, chown, links, truncate, utime, mktemp, umask ------ */

int kac_chmod(struct kac *c, const char *path, uint32_t mode, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;

	ac_op_start(c, &o, &w, KP_OP_CHMOD);
	kp_put_str(&w, KT_PATH, path);
	kp_put_u64(&w, KT_MODE, mode & 07777);
	return ac_simple(c, &o, &w, err);
}

int kac_chown(struct kac *c, const char *path, int64_t uid, int64_t gid, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;

	/* -1 is "unchanged", sent as an absent field; the agent checks the upper bound. */
	if (uid < -1 || gid < -1)
		return ac_fail(err, EINVAL, "chown %s: %s %lld is no id (-1 leaves it unchanged)", path,
			       uid < -1 ? "uid" : "gid", (long long)(uid < -1 ? uid : gid));
	ac_op_start(c, &o, &w, KP_OP_CHOWN);
	kp_put_str(&w, KT_PATH, path);
	if (uid >= 0)
		kp_put_u64(&w, KT_UID, (uint64_t)uid);
	if (gid >= 0)
		kp_put_u64(&w, KT_GID, (uint64_t)gid);
	return ac_simple(c, &o, &w, err);
}

/* LINK and SYMLINK: KT_PATH is what the link points to, KT_PATH2 the new name. */
int kac_link(struct kac *c, const char *target, const char *path, struct kac_err *err)
{
	return ac_simple_str(c, KP_OP_LINK, KT_PATH, target, KT_PATH2, path, err);
}

int kac_symlink(struct kac *c, const char *target, const char *path, struct kac_err *err)
{
	return ac_simple_str(c, KP_OP_SYMLINK, KT_PATH, target, KT_PATH2, path, err);
}

/* on_rec for READLINK, REALPATH and MKTEMP: the answer's KT_PATH, malloc'd, into *(char **)o->arg. */
static int path_rec(struct op *o, const struct kp_frame *f)
{
	char **out = o->arg;
	struct kp_field fl;

	if (kp_rec_find(f->payload, f->len, KT_PATH, &fl) != 1 || fl.kind != KP_K_STR)
		return -EPROTO;
	free(*out);
	*out = malloc(fl.len + 1);
	if (!*out)
		return -ENOMEM;
	kp_field_str(&fl, *out, fl.len + 1);
	return 0;
}

/* Run o, a request answered by one KT_PATH (path_rec), and hand the path over only on success. */
static int path_run(struct kac *c, struct op *o, struct kp_recw *w, char **out, struct kac_err *err)
{
	int ret = ac_simple(c, o, w, err);

	if (!ret && !*out)
		ret = ac_fail(err, EPROTO, "agent: an answer without its path");
	if (ret) {
		free(*out);
		*out = NULL;
	}
	return ret;
}

/* READLINK or REALPATH of path into *out. */
static int path_query(struct kac *c, uint64_t op, const char *path, char **out, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;

	*out = NULL;
	ac_op_start_rec(c, &o, &w, op, path_rec, out);
	kp_put_str(&w, KT_PATH, path);
	return path_run(c, &o, &w, out, err);
}

int kac_readlink(struct kac *c, const char *path, char **out, struct kac_err *err)
{
	return path_query(c, KP_OP_READLINK, path, out, err);
}

int kac_realpath(struct kac *c, const char *path, char **out, struct kac_err *err)
{
	return path_query(c, KP_OP_REALPATH, path, out, err);
}

int kac_truncate(struct kac *c, const char *path, uint64_t length, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;

	ac_op_start(c, &o, &w, KP_OP_TRUNCATE);
	kp_put_str(&w, KT_PATH, path);
	kp_put_u64(&w, KT_LENGTH, length);
	return ac_simple(c, &o, &w, err);
}

int kac_utime(struct kac *c, const char *path, int64_t atime_ns, int64_t mtime_ns, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;

	ac_op_start(c, &o, &w, KP_OP_UTIME);
	kp_put_str(&w, KT_PATH, path);
	kp_put_i64(&w, KT_ATIME, atime_ns);
	kp_put_i64(&w, KT_MTIME, mtime_ns);
	return ac_simple(c, &o, &w, err);
}

int kac_mktemp(struct kac *c, int directory, const char *dir, const char *prefix, const char *suffix,
	       char **out, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;

	*out = NULL;
	ac_op_start_rec(c, &o, &w, KP_OP_MKTEMP, path_rec, out);
	/* What is left out is the agent's default (/tmp, "tmp", no suffix). */
	if (dir)
		kp_put_str(&w, KT_PATH, dir);
	if (prefix)
		kp_put_str(&w, KT_PREFIX, prefix);
	if (suffix)
		kp_put_str(&w, KT_SUFFIX, suffix);
	if (directory)
		kp_put_bool(&w, KT_DIRECTORY, 1);
	return path_run(c, &o, &w, out, err);
}

int kac_umask(struct kac *c, int set, uint32_t mask, uint32_t *old, struct kac_err *err)
{
	struct kp_recw w;
	struct op o;
	int ret;

	ac_op_start_u64(c, &o, &w, KP_OP_UMASK, KT_MODE);
	if (set)
		kp_put_u64(&w, KT_MODE, mask & 0777);
	ret = ac_simple(c, &o, &w, err);
	if (ret)
		return ret;
	if (o.size < 0 || o.size > 0777)
		return ac_fail(err, EPROTO, "agent: a umask answer without a valid previous mask");
	if (old)
		*old = (uint32_t)o.size;
	return 0;
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
