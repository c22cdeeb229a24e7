/* kiln-agent: COPY and WALK: file work spread over loop turns. */
#include "agent_int.h"

/* ---- COPY --------------------------------------------------------------------------- */

/* A COPY in progress. */
struct copy_stream {
	struct stream s;
	int src, dst;
	uint64_t copied;
	int plain;		/* read and write: copy_file_range cannot */
};

static const struct stream_ops copy_ops;

/*
 * COPY: a regular file's bytes and permission bits to PATH2 (created, or
 * truncated), as Rust's fs::copy behind Deno's copyFile. The bytes move in
 * the main loop, COPY_CHUNK a turn (copy_pump), so a large copy does not
 * stall the agent's other work; the request ends with RESPONSE|END KT_SIZE.
 */
void op_copy(struct conn *c, const struct req *r)
{
	const struct kp_frame *f = r->f;
	int bad = 0, src = -1, dst = -1;
	char *from = arg_str(f, KT_PATH, &bad), *to = arg_str(f, KT_PATH2, &bad);
	struct stat ss, ds;
	struct copy_stream *s;

	if (bad || !from || !to) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "copy: wants PATH (the file) and PATH2 (the copy)");
		goto out;
	}
	/* O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below). */
	src = open(from, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (src < 0 || fstat(src, &ss) < 0) {
		os_error(c, f->id, "copy", from, errno);
		goto out;
	}
	if (!S_ISREG(ss.st_mode)) {
		send_error(c, f->id, KP_ERR_OS, S_ISDIR(ss.st_mode) ? EISDIR : EINVAL,
			   "copy %s: %s (COPY copies one regular file)", from,
			   S_ISDIR(ss.st_mode) ? "is a directory" : "not a regular file");
		goto out;
	}
	dst = open_nonblock(c, f->id, to, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOCTTY, ss.st_mode & 07777);
	if (dst < 0)
		goto out;
	if (fstat(dst, &ds) < 0) {
		os_error(c, f->id, "copy", to, errno);
		goto out;
	}
	if (ds.st_dev == ss.st_dev && ds.st_ino == ss.st_ino) {
		/* Truncating the copy would empty the original. */
		send_error(c, f->id, KP_ERR_OS, EINVAL, "copy %s to %s: the same file", from, to);
		goto out;
	}
	/* An existing file gets the source's mode too; a new one had it masked by the umask. */
	if (S_ISREG(ds.st_mode) && (ftruncate(dst, 0) < 0 || fchmod(dst, ss.st_mode & 07777) < 0)) {
		os_error(c, f->id, "copy", to, errno);
		goto out;
	}
	s = (struct copy_stream *)stream_new(c, &copy_ops, f->id, "copy");
	if (!s)
		goto out;
	s->src = src;
	s->dst = dst;
	s->s.in_credit = 0;
	src = dst = -1;
out:
	fd_close(&src);
	fd_close(&dst);
	free(from);
	free(to);
}

/* Move up to COPY_CHUNK bytes of a COPY; at the end of the file, the terminal RESPONSE. */
static void copy_pump(struct conn *c, struct stream *st)
{
	struct copy_stream *s = (struct copy_stream *)st;
	uint8_t *buf = c->ag->io;
	struct kp_recw w;
	size_t moved = 0;
	int ret;
	ssize_t n;

	while (moved < COPY_CHUNK) {
		if (!s->plain) {
			n = copy_file_range(s->src, NULL, s->dst, NULL, COPY_CHUNK - moved, 0);
			if (n < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)) {
				s->plain = 1;	/* not between these two files (a device, an old kernel) */
				continue;
			}
		} else {
			n = read(s->src, buf, READ_CHUNK);
			if (n > 0 && (ret = write_full(s->dst, buf, (size_t)n)) < 0) {
				/* A non-blocking device that takes no more is EIO, as one that takes 0 bytes. */
				errno = ret == -EAGAIN ? EIO : -ret;
				n = -1;
			}
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			send_error(c, st->id, KP_ERR_OS, errno, "copy: %s", strerror(errno));
			stream_free(c, st);
			return;
		}
		if (n == 0) {
			rec_begin(c, &w);
			kp_put_u64(&w, KT_SIZE, s->copied);
			rec_send(c, KP_RESPONSE, KP_F_END, st->id, &w);
			stream_free(c, st);
			return;
		}
		moved += (size_t)n;
		s->copied += (uint64_t)n;
	}
}

static void copy_release(struct agent *a, struct stream *st)
{
	struct copy_stream *s = (struct copy_stream *)st;

	(void)a;
	fd_close(&s->src);
	fd_close(&s->dst);
}

static const struct stream_ops copy_ops = {
	.name = "copy",
	.size = sizeof(struct copy_stream),
	.pump = copy_pump,
	.busy = 1,		/* a COPY goes on next turn: the loop does not sleep */
	.release = copy_release,
};

/* ---- WALK --------------------------------------------------------------------------- */

/* One directory on a walk's way down: where to resume reading it, and which it is. */
struct walk_level {
	long pos;		/* telldir() past the entry being descended into */
	size_t len;		/* its path's length in walk.path */
	dev_t dev;		/* a followed symlink back to an ancestor is a loop */
	ino_t ino;
};

/*
 * A WALK in progress. Only the directory being read is open: going down
 * closes it (its telldir kept), coming back reopens it by path and seeks, so
 * a walk holds one DIR whatever its depth, and its memory is one path of
 * PATH_MAX bytes and a level per directory on the way down (at most
 * PATH_MAX / 2 of them).
 */
struct walk {
	DIR *d;			/* the directory at level depth; NULL once it vanished */
	unsigned depth;		/* 0: the root */
	uint64_t max_depth;
	int nofollow;
	int started;		/* the root's own entry was sent */
	struct walk_level *lv;
	unsigned nlv;
	char path[PATH_MAX];
};

struct walk_stream {
	struct stream s;
	struct walk *wk;
};

#define WALK_BATCH	(KP_MAX_CONTROL - 2 * PATH_MAX - 1024)	/* a batch is full beyond this */

static void walk_free(struct agent *a, struct walk *wk)
{
	if (!wk)
		return;
	if (wk->d)
		closedir(wk->d);
	free(wk->lv);
	free(wk);
	a->nwalks--;
}

static void walk_put(struct kp_recw *w, const char *path, const char *name, unsigned type)
{
	uint32_t mark = kp_nest_begin(w, KT_ENTRY);

	kp_put_str(w, KT_PATH, path);
	kp_put_str(w, KT_NAME, name);
	kp_put_u64(w, KT_TYPE, type);
	kp_nest_end(w, mark);
}

/*
 * Go down into entry name of the current directory (its path in wk->path,
 * plen bytes): 1 when the walk is now in it, 0 when it is not a directory to
 * enter (gone, a symlink to something else, a loop), or -errno.
 */
static int walk_down(struct walk *wk, const char *name, size_t plen, int is_link)
{
	int fd = openat(dirfd(wk->d), name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | (is_link ? 0 : O_NOFOLLOW));
	struct stat st;
	unsigned i;
	DIR *nd;

	if (fd < 0)
		return errno == ENOENT || errno == ENOTDIR || errno == ELOOP ? 0 : -errno;
	if (fstat(fd, &st) < 0)
		goto fail;
	for (i = 0; i <= wk->depth; i++)
		if (wk->lv[i].dev == st.st_dev && wk->lv[i].ino == st.st_ino) {
			close(fd);
			return 0;
		}
	if (wk->depth + 1 >= wk->nlv) {
		struct walk_level *nl = realloc(wk->lv, 2 * wk->nlv * sizeof(*nl));

		if (!nl) {
			errno = ENOMEM;
			goto fail;
		}
		wk->lv = nl;
		wk->nlv *= 2;
	}
	wk->lv[wk->depth].pos = telldir(wk->d);
	nd = fdopendir(fd);
	if (!nd)
		goto fail;
	closedir(wk->d);
	wk->d = nd;
	wk->depth++;
	wk->lv[wk->depth] = (struct walk_level){ .len = plen, .dev = st.st_dev, .ino = st.st_ino };
	return 1;
fail:
	i = (unsigned)errno;
	close(fd);
	return -(int)i;
}

/*
 * Send the walk's next entries, in batches of one RESPONSE each, while the
 * connection's send queue is below half of OUTQ_HIGH: a host that stops
 * reading stops the walk, whose state stays the same size. Half: the queue
 * stays below OUTQ_HIGH, so the connection is still read (a CANCEL, other
 * requests) while a walk has more to send. The last batch carries END.
 */
static void walk_pump(struct conn *c, struct stream *s)
{
	struct walk *wk = ((struct walk_stream *)s)->wk;
	struct kp_recw w;
	struct stat st;
	int err = 0;

	rec_begin(c, &w);
	if (!wk->started) {
		const char *b = strrchr(wk->path, '/');

		walk_put(&w, wk->path, b && b[1] ? b + 1 : wk->path, S_IFDIR);
		wk->started = 1;
		if (!wk->max_depth)
			goto done;
	}
	while (c->out.len < OUTQ_HIGH / 2) {
		size_t len = wk->lv[wk->depth].len, cl = len, nl;
		struct dirent *de = NULL;
		unsigned type;
		int ret;

		if (w.len > WALK_BATCH) {
			rec_send(c, KP_RESPONSE, 0, s->id, &w);
			rec_begin(c, &w);
			continue;
		}
		errno = 0;
		if (wk->d)
			de = readdir(wk->d);
		if (!de && errno) {
			err = errno;
			break;
		}
		if (!de) {
			/* This directory is done: back up to its parent, where we left it. */
			if (wk->depth == 0)
				goto done;
			if (wk->d)
				closedir(wk->d);
			wk->depth--;
			wk->path[wk->lv[wk->depth].len] = '\0';
			wk->d = opendir(wk->path);
			if (!wk->d && errno != ENOENT) {
				err = errno;
				break;
			}
			if (wk->d)	/* a parent that vanished meanwhile has nothing left to list */
				seekdir(wk->d, wk->lv[wk->depth].pos);
			continue;
		}
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		nl = strlen(de->d_name);
		if (len + 1 + nl >= PATH_MAX) {
			err = ENAMETOOLONG;
			break;
		}
		if (wk->path[cl - 1] != '/')
			wk->path[cl++] = '/';
		memcpy(wk->path + cl, de->d_name, nl + 1);
		cl += nl;
		type = DTTOIF(de->d_type);
		if (de->d_type == DT_UNKNOWN)
			type = fstatat(dirfd(wk->d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 ? (st.st_mode & S_IFMT) : 0;
		walk_put(&w, wk->path, de->d_name, type);
		ret = 0;
		/* Entries of a directory at depth d are at d + 1: go down while that stays within max_depth. */
		if (wk->depth + 1 < wk->max_depth && (S_ISDIR(type) || (S_ISLNK(type) && !wk->nofollow)))
			ret = walk_down(wk, de->d_name, cl, S_ISLNK(type));
		if (ret < 0) {
			err = -ret;
			break;
		}
		if (!ret)
			wk->path[len] = '\0';
	}
	if (err) {
		/* The batch first: the ERROR is built in the same scratch buffer. */
		if (w.len)
			rec_send(c, KP_RESPONSE, 0, s->id, &w);
		send_error(c, s->id, KP_ERR_OS, err, "walk %s: %s", wk->path, strerror(err));
		stream_free(c, s);
		return;
	}
	if (w.len)
		rec_send(c, KP_RESPONSE, 0, s->id, &w);
	return;
done:
	rec_send(c, KP_RESPONSE, KP_F_END, s->id, &w);
	stream_free(c, s);
}

static void walk_release(struct agent *a, struct stream *s)
{
	walk_free(a, ((struct walk_stream *)s)->wk);
}

static const struct stream_ops walk_ops = {
	.name = "walk",
	.size = sizeof(struct walk_stream),
	.pump = walk_pump,
	.release = walk_release,
};

void op_walk(struct conn *c, const struct req *r)
{
	const struct kp_frame *f = r->f;
	const struct kp_walk_args *a = &r->args.walk;
	struct agent *ag = c->ag;
	struct walk_stream *s;
	struct walk *wk;
	struct stat st;
	size_t n;

	if (ag->nwalks >= MAX_WALKS) {
		send_error(c, f->id, KP_ERR_LIMIT, 0, "walk: %d walks in progress already", MAX_WALKS);
		return;
	}
	if (a->path.len >= PATH_MAX) {
		send_error(c, f->id, KP_ERR_OS, ENAMETOOLONG, "walk: %s", strerror(ENAMETOOLONG));
		return;
	}
	wk = calloc(1, sizeof(*wk));
	if (!wk || !(wk->lv = calloc(16, sizeof(*wk->lv)))) {
		free(wk);
		send_error(c, f->id, KP_ERR_OS, ENOMEM, "walk: out of memory");
		return;
	}
	ag->nwalks++;
	wk->nlv = 16;
	wk->max_depth = a->max_depth;
	wk->nofollow = a->nofollow;
	kp_field_str(&a->path, wk->path, sizeof(wk->path));
	for (n = a->path.len; n > 1 && wk->path[n - 1] == '/'; )
		wk->path[--n] = '\0';
	/* The root itself is entered whatever it is: a symlink to a directory is followed. */
	wk->d = opendir(wk->path);
	if (!wk->d || fstat(dirfd(wk->d), &st) < 0) {
		os_error(c, f->id, "walk", wk->path, errno);
		walk_free(ag, wk);
		return;
	}
	wk->lv[0] = (struct walk_level){ .len = n, .dev = st.st_dev, .ino = st.st_ino };
	s = (struct walk_stream *)stream_new(c, &walk_ops, f->id, "walk");
	if (!s) {
		walk_free(ag, wk);
		return;
	}
	s->wk = wk;
	s->s.in_credit = 0;
}
