/* kiln-agent: file operations by path, FILE_READ and FILE_WRITE. */
#include "agent_int.h"

/* A FILE_READ or FILE_WRITE stream: the file, and for a read what is left to send. */
struct file_stream {
	struct stream s;
	int fd;
	uint64_t remain;	/* FILE_READ: bytes left to send */
	uint64_t out_off, out_credit;
};

static const struct stream_ops fwrite_ops, fread_ops;

static int64_t ts_ns(const struct statx_timestamp *t)
{
	return (int64_t)t->tv_sec * 1000000000 + t->tv_nsec;
}

/* ns since the epoch as a timespec; before the epoch: a negative second, a positive fraction. */
struct timespec ns_timespec(int64_t ns)
{
	struct timespec ts = { .tv_sec = ns / 1000000000, .tv_nsec = ns % 1000000000 };

	if (ts.tv_nsec < 0) {
		ts.tv_sec--;
		ts.tv_nsec += 1000000000;
	}
	return ts;
}

/* The stat record (STAT, FH_STAT) of sx, as the terminal RESPONSE of id. */
void send_statx(struct conn *c, uint32_t id, const struct statx *sx)
{
	struct kp_recw w;

	rec_begin(c, &w);
	kp_put_u64(&w, KT_TYPE, sx->stx_mode & S_IFMT);
	kp_put_u64(&w, KT_MODE, sx->stx_mode & 07777);
	kp_put_u64(&w, KT_SIZE, sx->stx_size);
	kp_put_u64(&w, KT_DEV, makedev(sx->stx_dev_major, sx->stx_dev_minor));
	kp_put_u64(&w, KT_INO, sx->stx_ino);
	kp_put_u64(&w, KT_NLINK, sx->stx_nlink);
	kp_put_u64(&w, KT_UID, sx->stx_uid);
	kp_put_u64(&w, KT_GID, sx->stx_gid);
	kp_put_u64(&w, KT_RDEV, makedev(sx->stx_rdev_major, sx->stx_rdev_minor));
	kp_put_u64(&w, KT_BLKSIZE, sx->stx_blksize);
	kp_put_u64(&w, KT_BLOCKS, sx->stx_blocks);
	kp_put_i64(&w, KT_ATIME, ts_ns(&sx->stx_atime));
	kp_put_i64(&w, KT_MTIME, ts_ns(&sx->stx_mtime));
	kp_put_i64(&w, KT_CTIME, ts_ns(&sx->stx_ctime));
	if (sx->stx_mask & STATX_BTIME)
		kp_put_i64(&w, KT_BTIME, ts_ns(&sx->stx_btime));
	rec_send(c, KP_RESPONSE, KP_F_END, id, &w);
}

void op_stat(struct conn *c, const struct req *r)
{
	const struct kp_frame *f = r->f;
	int bad = 0;
	char *path = arg_str(f, KT_PATH, &bad);
	int nofollow = (int)arg_u64(f, KT_NOFOLLOW, 0, &bad);
	struct statx sx;

	if (bad || !path)
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "stat: wants PATH");
	else if (statx(AT_FDCWD, path, nofollow ? AT_SYMLINK_NOFOLLOW : 0,
		       STATX_BASIC_STATS | STATX_BTIME, &sx) < 0)
		os_error(c, f->id, "stat", path, errno);
	else
		send_statx(c, f->id, &sx);
	free(path);
}

void op_readdir(struct conn *c, const struct req *r)
{
	const struct kp_frame *f = r->f;
	int bad = 0;
	char *path = arg_str(f, KT_PATH, &bad);
	struct dirent *de;
	struct kp_recw w;
	DIR *d;

	if (bad || !path) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "readdir: wants PATH");
		goto out;
	}
	d = opendir(path);
	if (!d) {
		os_error(c, f->id, "readdir", path, errno);
		goto out;
	}
	rec_begin(c, &w);
	while ((de = readdir(d)) != NULL) {
		unsigned type = DTTOIF(de->d_type);
		uint32_t mark;

		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (de->d_type == DT_UNKNOWN) {
			struct stat st;

			type = fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 ?
			       (st.st_mode & S_IFMT) : 0;
		}
		if (w.len > KP_MAX_CONTROL - 1024) {	/* a batch is full */
			rec_send(c, KP_RESPONSE, 0, f->id, &w);
			rec_begin(c, &w);
		}
		mark = kp_nest_begin(&w, KT_ENTRY);
		kp_put_str(&w, KT_NAME, de->d_name);
		kp_put_u64(&w, KT_TYPE, type);
		kp_nest_end(&w, mark);
	}
	closedir(d);
	rec_send(c, KP_RESPONSE, KP_F_END, f->id, &w);
out:
	free(path);
}

/* mkdir -p: every missing component of path. */
static int mkdir_p(char *path, mode_t mode)
{
	char *p = path;
	struct stat st;

	for (;;) {
		p += strspn(p, "/");
		p += strcspn(p, "/");
		if (!*p)
			break;
		*p = '\0';
		if (mkdir(path, mode) < 0 && errno != EEXIST) {
			*p = '/';
			return -errno;
		}
		*p = '/';
	}
	if (mkdir(path, mode) < 0) {
		if (errno != EEXIST)
			return -errno;
		if (stat(path, &st) < 0 || !S_ISDIR(st.st_mode))
			return -EEXIST;
	}
	return 0;
}

void op_mkdir(struct conn *c, const struct req *r)
{
	const struct kp_frame *f = r->f;
	int bad = 0, ret;
	char *path = arg_str(f, KT_PATH, &bad);
	mode_t mode = (mode_t)arg_u64(f, KT_MODE, 0777, &bad) & 07777;
	int rec = (int)arg_u64(f, KT_RECURSIVE, 0, &bad);

	if (bad || !path)
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "mkdir: wants PATH");
	else if ((ret = rec ? mkdir_p(path, mode) : mkdir(path, mode) < 0 ? -errno : 0) < 0)
		os_error(c, f->id, "mkdir", path, -ret);
	else
		send_ok(c, f->id);
	free(path);
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	return (flag == FTW_DP ? rmdir(path) : unlink(path)) < 0 ? errno : 0;
}

void op_remove(struct conn *c, const struct req *r)
{
	const struct kp_frame *f = r->f;
	int bad = 0, ret = 0;
	char *path = arg_str(f, KT_PATH, &bad);
	int rec = (int)arg_u64(f, KT_RECURSIVE, 0, &bad);
	struct stat st;

	if (bad || !path) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "remove: wants PATH");
		goto out;
	}
	if (lstat(path, &st) < 0)
		ret = errno;
	else if (rec && S_ISDIR(st.st_mode))
		ret = nftw(path, rm_one, 32, FTW_DEPTH | FTW_PHYS) < 0 ? errno : 0;
	else if (remove(path) < 0)
		ret = errno;
	/* nftw returns rm_one's errno as is */
	if (ret > 0)
		os_error(c, f->id, "remove", path, ret);
	else
		send_ok(c, f->id);
out:
	free(path);
}

void op_rename(struct conn *c, const struct req *r)
{
	const struct kp_frame *f = r->f;
	int bad = 0;
	char *from = arg_str(f, KT_PATH, &bad), *to = arg_str(f, KT_PATH2, &bad);

	if (bad || !from || !to)
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "rename: wants PATH and PATH2");
	else if (rename(from, to) < 0)
		os_error(c, f->id, "rename", from, errno);
	else
		send_ok(c, f->id);
	free(from);
	free(to);
}

/* CHMOD, CHOWN, LINK, SYMLINK, TRUNCATE, UTIME: one system call on one or two paths. */
void op_path_simple(struct conn *c, const struct req *r)
{
	const struct kp_frame *f = r->f;
	uint64_t op = r->op;
	int bad = 0, ret = 0, has_mode, has_len;
	char *path = arg_str(f, KT_PATH, &bad), *path2 = arg_str(f, KT_PATH2, &bad);
	uint64_t mode = arg_u64(f, KT_MODE, UINT64_MAX, &bad), len = arg_u64(f, KT_LENGTH, 0, &bad);
	uint64_t uid = arg_u64(f, KT_UID, UINT64_MAX, &bad), gid = arg_u64(f, KT_GID, UINT64_MAX, &bad);
	struct kp_field fl;
	int64_t at = 0, mt = 0;
	const char *name = op == KP_OP_CHMOD ? "chmod" : op == KP_OP_CHOWN ? "chown" : op == KP_OP_LINK ? "link" :
			   op == KP_OP_SYMLINK ? "symlink" : op == KP_OP_TRUNCATE ? "truncate" : "utime";

	has_mode = mode != UINT64_MAX;
	has_len = len <= (uint64_t)INT64_MAX;
	if (op == KP_OP_UTIME) {
		if (kp_rec_find(f->payload, f->len, KT_ATIME, &fl) != 1 || kp_field_i64(&fl, &at) ||
		    kp_rec_find(f->payload, f->len, KT_MTIME, &fl) != 1 || kp_field_i64(&fl, &mt))
			bad = 1;
	}
	if (bad || !path || ((op == KP_OP_LINK || op == KP_OP_SYMLINK) && !path2) ||
	    (op == KP_OP_CHMOD && (!has_mode || mode > 07777)) || (op == KP_OP_TRUNCATE && !has_len) ||
	    (op == KP_OP_CHOWN && ((uid != UINT64_MAX && uid >= 0xffffffffu) || (gid != UINT64_MAX && gid >= 0xffffffffu)))) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "%s: wants PATH%s", name,
			   op == KP_OP_CHMOD ? " and MODE (at most 07777)" :
			   op == KP_OP_CHOWN ? ", UID? and GID? (below 2^32 - 1)" :
			   op == KP_OP_LINK || op == KP_OP_SYMLINK ? " (the target) and PATH2 (the new name)" :
			   op == KP_OP_TRUNCATE ? " and LENGTH? (below 2^63)" : ", ATIME and MTIME (I64 ns)");
		goto out;
	}
	switch (op) {
	case KP_OP_CHMOD:	ret = chmod(path, (mode_t)mode); break;
	case KP_OP_CHOWN:	ret = chown(path, (uid_t)uid, (gid_t)gid); break;	/* -1: unchanged */
	case KP_OP_LINK:	ret = link(path, path2); break;
	case KP_OP_SYMLINK:	ret = symlink(path, path2); break;
	case KP_OP_TRUNCATE:	ret = truncate(path, (off_t)len); break;
	case KP_OP_UTIME: {
		struct timespec ts[2] = { ns_timespec(at), ns_timespec(mt) };

		ret = utimensat(AT_FDCWD, path, ts, 0);
		break;
	}
	}
	if (ret < 0)
		os_error(c, f->id, name, path, errno);
	else
		send_ok(c, f->id);
out:
	free(path);
	free(path2);
}

/* RESPONSE|END with one KT_PATH (READLINK, REALPATH, MKTEMP). */
static void send_path(struct conn *c, uint32_t id, const char *path)
{
	struct kp_recw w;

	rec_begin(c, &w);
	kp_put_str(&w, KT_PATH, path);
	rec_send(c, KP_RESPONSE, KP_F_END, id, &w);
}

/* READLINK, REALPATH: a path in, a path out. */
void op_path_query(struct conn *c, const struct req *r)
{
	const struct kp_frame *f = r->f;
	uint64_t op = r->op;
	int bad = 0;
	char *path = arg_str(f, KT_PATH, &bad), *res = NULL;
	const char *name = op == KP_OP_READLINK ? "readlink" : "realpath";
	ssize_t n;

	if (bad || !path) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "%s: wants PATH", name);
		goto out;
	}
	res = malloc(PATH_MAX + 1);
	if (!res) {
		send_error(c, f->id, KP_ERR_OS, ENOMEM, "%s: out of memory", name);
		goto out;
	}
	if (op == KP_OP_READLINK) {
		n = readlink(path, res, PATH_MAX);
		if (n >= 0)
			res[n] = '\0';
	} else {
		n = realpath(path, res) ? 0 : -1;
	}
	if (n < 0) {
		os_error(c, f->id, name, path, errno);
		goto out;
	}
	send_path(c, f->id, res);
out:
	free(path);
	free(res);
}

void op_umask(struct conn *c, const struct req *r)
{
	const struct kp_frame *f = r->f;
	int bad = 0;
	uint64_t mode = arg_u64(f, KT_MODE, UINT64_MAX, &bad);
	struct kp_recw w;
	mode_t old;

	if (bad || (mode != UINT64_MAX && mode > 0777)) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "umask: MODE? at most 0777");
		return;
	}
	/* The agent's umask is what its processes and file operations inherit. */
	old = umask(mode == UINT64_MAX ? 022 : (mode_t)mode);
	if (mode == UINT64_MAX)
		umask(old);
	rec_begin(c, &w);
	kp_put_u64(&w, KT_MODE, old);
	rec_send(c, KP_RESPONSE, KP_F_END, f->id, &w);
}

/* A name component for MKTEMP: no '/', not too long. */
static int tmp_part_ok(const char *s)
{
	return !s || (strlen(s) <= 64 && !strchr(s, '/'));
}

void op_mktemp(struct conn *c, const struct req *r)
{
	const struct kp_frame *f = r->f;
	int bad = 0, fd;
	char *dir = arg_str(f, KT_PATH, &bad), *pre = arg_str(f, KT_PREFIX, &bad), *suf = arg_str(f, KT_SUFFIX, &bad);
	int is_dir = (int)arg_u64(f, KT_DIRECTORY, 0, &bad);
	char path[PATH_MAX];
	size_t sl = suf ? strlen(suf) : 0;
	const char *tmp = c->ag->flags & AGENT_JAIL ? "." : "/tmp";	/* a jailed agent stays in its cwd */

	if (bad || !tmp_part_ok(pre) || !tmp_part_ok(suf)) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "mktemp: PATH? (a directory), PREFIX? and SUFFIX? "
			   "(at most 64 bytes, no '/'), DIRECTORY BOOL?");
		goto out;
	}
	if ((size_t)snprintf(path, sizeof(path), "%s/%sXXXXXX%s", dir ? dir : tmp, pre ? pre : "tmp",
			     suf ? suf : "") >= sizeof(path)) {
		send_error(c, f->id, KP_ERR_OS, ENAMETOOLONG, "mktemp: %s: %s", dir, strerror(ENAMETOOLONG));
		goto out;
	}
	if (is_dir) {
		if (sl) {	/* mkdtemp takes no suffix: the template must end in XXXXXX */
			send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "mktemp: SUFFIX is for files only");
			goto out;
		}
		if (!mkdtemp(path)) {
			os_error(c, f->id, "mktemp", dir ? dir : tmp, errno);
			goto out;
		}
	} else {
		fd = mkostemps(path, (int)sl, O_CLOEXEC);
		if (fd < 0) {
			os_error(c, f->id, "mktemp", dir ? dir : tmp, errno);
			goto out;
		}
		close(fd);
	}
	send_path(c, f->id, path);
out:
	free(dir);
	free(pre);
	free(suf);
}

/*
 * open(2) that cannot block the agent: a FIFO or socket is refused (its
 * reads and writes would stall PID 1); other non-regular files stay
 * non-blocking, so a terminal that has nothing to read is an error, not a hang.
 * Returns the fd, or -1 after sending the ERROR.
 */
int open_nonblock(struct conn *c, uint32_t id, const char *path, int flags, mode_t mode)
{
	int fd = open(path, flags | O_NONBLOCK, mode);
	struct stat st;

	if (fd < 0 || fstat(fd, &st) < 0) {
		os_error(c, id, "open", path, errno);
		if (fd >= 0)
			close(fd);
		return -1;
	}
	if (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode)) {
		send_error(c, id, KP_ERR_OS, EINVAL, "open %s: a FIFO or socket cannot be streamed", path);
		close(fd);
		return -1;
	}
	if (S_ISREG(st.st_mode))
		fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
	return fd;
}

/* A file stream of kind ops on fd (closed if there is no memory for it). */
static struct file_stream *file_stream_new(struct conn *c, const struct stream_ops *ops, uint32_t id, int fd)
{
	struct file_stream *s = (struct file_stream *)stream_new(c, ops, id, ops->name);

	if (!s) {
		close(fd);
		return NULL;
	}
	s->fd = fd;
	return s;
}

void op_file_write(struct conn *c, const struct req *r)
{
	const struct kp_frame *f = r->f;
	int bad = 0, flags = O_WRONLY | O_CLOEXEC, fd;
	char *path = arg_str(f, KT_PATH, &bad);
	mode_t mode = (mode_t)arg_u64(f, KT_MODE, 0644, &bad) & 07777;
	uint64_t off = arg_u64(f, KT_OFFSET, UINT64_MAX, &bad);
	struct kp_recw w;

	if (arg_u64(f, KT_APPEND, 0, &bad))
		flags |= O_APPEND;
	if (arg_u64(f, KT_CREATE, 1, &bad))
		flags |= O_CREAT;
	if (arg_u64(f, KT_CREATE_NEW, 0, &bad))
		flags |= O_CREAT | O_EXCL;
	if (arg_u64(f, KT_TRUNCATE, !(flags & O_APPEND) && off == UINT64_MAX, &bad))
		flags |= O_TRUNC;
	if (bad || !path) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "file write: wants PATH");
		goto out;
	}
	fd = open_nonblock(c, f->id, path, flags, mode);
	if (fd < 0)
		goto out;
	if (off != UINT64_MAX && lseek(fd, (off_t)off, SEEK_SET) < 0) {
		os_error(c, f->id, "seek", path, errno);
		close(fd);
		goto out;
	}
	if (!file_stream_new(c, &fwrite_ops, f->id, fd))
		goto out;
	rec_begin(c, &w);
	rec_send(c, KP_RESPONSE, 0, f->id, &w);
out:
	free(path);
}

void op_file_read(struct conn *c, const struct req *r)
{
	const struct kp_frame *f = r->f;
	int bad = 0, fd;
	char *path = arg_str(f, KT_PATH, &bad);
	uint64_t off = arg_u64(f, KT_OFFSET, 0, &bad), len = arg_u64(f, KT_LENGTH, UINT64_MAX, &bad);
	struct kp_recw w;
	struct file_stream *s;
	struct stat st;

	if (bad || !path) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "file read: wants PATH");
		goto out;
	}
	fd = open_nonblock(c, f->id, path, O_RDONLY | O_CLOEXEC, 0);
	if (fd < 0)
		goto out;
	if (fstat(fd, &st) < 0 || (off && lseek(fd, (off_t)off, SEEK_SET) < 0)) {
		os_error(c, f->id, "read", path, errno);
		if (fd >= 0)
			close(fd);
		goto out;
	}
	if (S_ISDIR(st.st_mode)) {
		os_error(c, f->id, "read", path, EISDIR);
		close(fd);
		goto out;
	}
	s = file_stream_new(c, &fread_ops, f->id, fd);
	if (!s)
		goto out;
	s->remain = len;
	s->out_off = off;
	s->out_credit = c->peer_window;
	s->s.in_credit = 0;
	rec_begin(c, &w);
	kp_put_u64(&w, KT_SIZE, (uint64_t)st.st_size);
	rec_send(c, KP_RESPONSE, 0, f->id, &w);
out:
	free(path);
}

/* Send what credit allows of a file read; EOF|END at the end. */
static void fread_pump(struct conn *c, struct stream *st)
{
	struct file_stream *s = (struct file_stream *)st;
	uint8_t *buf = c->ag->io;

	while (s->out_credit && c->out.len < OUTQ_HIGH) {
		size_t want = max_data(c);
		ssize_t n;

		if (want > s->out_credit)
			want = (size_t)s->out_credit;
		if (want > s->remain)
			want = (size_t)s->remain;
		n = want ? read(s->fd, buf, want) : 0;
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			os_error(c, st->id, "read", "", errno);
			stream_free(c, st);
			return;
		}
		if (n == 0) {
			send_eof(c, st->id, KP_CHAN_OUT, KP_F_END, s->out_off);
			stream_free(c, st);
			return;
		}
		send_data(c, st->id, KP_CHAN_OUT, s->out_off, buf, (uint32_t)n);
		s->out_off += (uint64_t)n;
		s->out_credit -= (uint64_t)n;
		s->remain -= (uint64_t)n;
	}
}

static int fread_window(struct stream *s, uint16_t ch, uint32_t inc)
{
	return ch == KP_CHAN_OUT ? credit_add(&((struct file_stream *)s)->out_credit, inc) : 0;
}

/* Bytes to write: written at once (a file does not block), credit granted back; EOF syncs and ends. */
static void fwrite_input(struct conn *c, struct stream *st, const struct kp_frame *f, const uint8_t *data,
			 uint32_t n)
{
	struct file_stream *s = (struct file_stream *)st;
	struct kp_recw w;
	struct stat sb;

	while (n) {
		ssize_t k = write(s->fd, data, n);

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0) {
			os_error(c, f->id, "write", "", k < 0 ? errno : ENOSPC);
			goto end;
		}
		data += k;
		n -= (uint32_t)k;
	}
	if (f->type == KP_DATA) {
		st->in_credit += f->len - 8;
		send_window(c, f->id, 0, f->len - 8);
		return;
	}
	if (fsync(s->fd) < 0 || fstat(s->fd, &sb) < 0) {
		os_error(c, f->id, "fsync", "", errno);
		goto end;
	}
	rec_begin(c, &w);
	kp_put_u64(&w, KT_SIZE, (uint64_t)sb.st_size);
	rec_send(c, KP_RESPONSE, KP_F_END, f->id, &w);
end:
	stream_free(c, st);
}

static void file_release(struct agent *a, struct stream *s)
{
	(void)a;
	fd_close(&((struct file_stream *)s)->fd);
}

static const struct stream_ops fwrite_ops = {
	.name = "file write",
	.size = sizeof(struct file_stream),
	.input = fwrite_input,
	.release = file_release,
};

static const struct stream_ops fread_ops = {
	.name = "file read",
	.size = sizeof(struct file_stream),
	.window = fread_window,
	.pump = fread_pump,
	.release = file_release,
};
