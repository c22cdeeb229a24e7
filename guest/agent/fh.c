/* kiln-agent: file handles (FH_*). */
#include "agent_int.h"

/* ---- file handles --------------------------------------------------------------------- */

static struct fh *fh_find(struct conn *c, uint64_t id)
{
	unsigned i;

	for (i = 0; i < c->nfh; i++)
		if (c->fh[i].id == id)
			return &c->fh[i];
	return NULL;
}

/* Close every handle of c: handles belong to the connection that opened them. */
void fh_close_all(struct conn *c)
{
	while (c->nfh)
		close(c->fh[--c->nfh].fd);
	free(c->fh);
	c->fh = NULL;
}

/* open(2) flags for checked KP_OPEN_* flags (kp_args_fh_open). */
static int fh_open_flags(unsigned fl)
{
	int flags = O_CLOEXEC | O_NOCTTY, wr = fl & (KP_OPEN_WRITE | KP_OPEN_APPEND);

	flags |= !wr ? O_RDONLY : (fl & KP_OPEN_READ) ? O_RDWR : O_WRONLY;
	if (fl & KP_OPEN_APPEND)
		flags |= O_APPEND;
	if (fl & KP_OPEN_CREATE_NEW)
		return flags | O_CREAT | O_EXCL;
	if (fl & KP_OPEN_CREATE)
		flags |= O_CREAT;
	if (fl & KP_OPEN_TRUNCATE)
		flags |= O_TRUNC;
	return flags;
}

void op_fh_open(struct conn *c, const struct req *r)
{
	const struct kp_frame *f = r->f;
	const struct kp_open_args *a = &r->args.open;
	struct kp_recw w;
	char *path;
	int fd;

	if (c->nfh >= KP_FH_MAX) {
		send_error(c, f->id, KP_ERR_LIMIT, 0, "fh open: %d file handles are open on this connection "
			   "already (FH_CLOSE one)", KP_FH_MAX);
		return;
	}
	if (!c->fh)
		c->fh = calloc(KP_FH_MAX, sizeof(*c->fh));
	path = malloc(a->path.len + 1);
	if (!c->fh || !path) {
		free(path);
		send_error(c, f->id, KP_ERR_OS, ENOMEM, "fh open: out of memory");
		return;
	}
	kp_field_str(&a->path, path, a->path.len + 1);
	fd = open_nonblock(c, f->id, path, fh_open_flags(a->flags), (mode_t)a->mode);
	free(path);
	if (fd < 0)
		return;
	c->fh[c->nfh].id = ++c->fh_next;
	c->fh[c->nfh].fd = fd;
	c->nfh++;
	rec_begin(c, &w);
	kp_put_u64(&w, KT_FH, c->fh_next);
	rec_send(c, KP_RESPONSE, KP_F_END, f->id, &w);
}

/* An FH_LOCK waiting for a lock held elsewhere: retried every LOCK_POLL_MS. */
struct lock_stream {
	struct stream s;
	uint64_t fh;
	int exclusive;
};

/* Retry a waiting FH_LOCK (flock(2) has no fd to poll for). */
static void lock_tick(struct conn *c, struct stream *st)
{
	struct lock_stream *s = (struct lock_stream *)st;
	struct fh *h = fh_find(c, s->fh);

	if (!h)
		send_error(c, st->id, KP_ERR_NO_SUCH, 0, "fh lock: file handle %llu was closed",
			   (unsigned long long)s->fh);
	else if (flock(h->fd, (s->exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) == 0)
		send_ok(c, st->id);
	else if (errno == EWOULDBLOCK || errno == EINTR)
		return;
	else
		send_error(c, st->id, KP_ERR_OS, errno, "fh lock %llu: %s", (unsigned long long)s->fh,
			   strerror(errno));
	stream_free(c, st);
}

static const struct stream_ops lock_ops = {
	.name = "fh lock",
	.size = sizeof(struct lock_stream),
	.tick = lock_tick,
	.tick_ms = LOCK_POLL_MS,
};

/*
 * One FH_* operation on handle h with checked arguments a: 0 to answer w as
 * the RESPONSE|END, 1 when it answered itself, -1 with errno for KP_ERR_OS.
 */
typedef int fh_fn(struct conn *c, const struct req *r, struct fh *h, struct kp_recw *w);

static int fh_read(struct conn *c, const struct req *r, struct fh *h, struct kp_recw *w)
{
	const struct kp_fh_args *a = &r->args.fh;
	ssize_t n;

	do
		n = read(h->fd, c->ag->io, (size_t)a->length);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -1;
	if (n == 0 && a->length)
		kp_put_bool(w, KT_EOF, 1);
	else
		kp_put_bytes(w, KT_DATA, c->ag->io, (uint32_t)n);
	return 0;
}

static int fh_write(struct conn *c, const struct req *r, struct fh *h, struct kp_recw *w)
{
	const struct kp_fh_args *a = &r->args.fh;
	size_t done = 0;
	ssize_t n = 0;

	(void)c;
	while (done < a->data_len) {
		n = write(h->fd, a->data + done, a->data_len - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		done += (size_t)n;
	}
	/* Like write(2): what was written is the answer; an error only when nothing was. */
	if (!done && a->data_len) {
		if (n == 0)
			errno = ENOSPC;
		return -1;
	}
	kp_put_u64(w, KT_LENGTH, done);
	return 0;
}

static int fh_seek(struct conn *c, const struct req *r, struct fh *h, struct kp_recw *w)
{
	const struct kp_fh_args *a = &r->args.fh;
	off_t off = lseek(h->fd, (off_t)a->offset, a->whence == 0 ? SEEK_SET : a->whence == 1 ? SEEK_CUR : SEEK_END);

	(void)c;
	if (off < 0)
		return -1;
	kp_put_u64(w, KT_OFFSET, (uint64_t)off);
	return 0;
}

static int fh_stat(struct conn *c, const struct req *r, struct fh *h, struct kp_recw *w)
{
	struct statx sx;

	(void)w;
	if (statx(h->fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS | STATX_BTIME, &sx) < 0)
		return -1;
	send_statx(c, r->f->id, &sx);
	return 1;
}

static int fh_sync(struct conn *c, const struct req *r, struct fh *h, struct kp_recw *w)
{
	(void)c;
	(void)w;
	return r->args.fh.data_only ? fdatasync(h->fd) : fsync(h->fd);
}

static int fh_truncate(struct conn *c, const struct req *r, struct fh *h, struct kp_recw *w)
{
	(void)c;
	(void)w;
	return ftruncate(h->fd, (off_t)r->args.fh.length);
}

static int fh_lock(struct conn *c, const struct req *r, struct fh *h, struct kp_recw *w)
{
	const struct kp_fh_args *a = &r->args.fh;
	struct lock_stream *s;

	(void)w;
	if (flock(h->fd, (a->exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) == 0)
		return 0;
	if (errno != EWOULDBLOCK)
		return -1;
	/* Held elsewhere: wait for it without blocking the agent (lock_tick). */
	s = (struct lock_stream *)stream_new(c, &lock_ops, r->f->id, "fh lock");
	if (!s)
		return 1;
	s->fh = a->fh;
	s->exclusive = a->exclusive;
	s->s.in_credit = 0;
	return 1;
}

static int fh_unlock(struct conn *c, const struct req *r, struct fh *h, struct kp_recw *w)
{
	(void)c;
	(void)r;
	(void)w;
	return flock(h->fd, LOCK_UN);
}

static int fh_utime(struct conn *c, const struct req *r, struct fh *h, struct kp_recw *w)
{
	struct timespec ts[2] = { ns_timespec(r->args.fh.atime), ns_timespec(r->args.fh.mtime) };

	(void)c;
	(void)w;
	return futimens(h->fd, ts);
}

static int fh_close(struct conn *c, const struct req *r, struct fh *h, struct kp_recw *w)
{
	uint64_t id = r->args.fh.fh;
	struct stream *s, *sn;
	int ret;

	(void)w;
	for (s = c->streams; s; s = sn) {
		sn = s->next;
		if (s->ops == &lock_ops && ((struct lock_stream *)s)->fh == id) {
			send_error(c, s->id, KP_ERR_NO_SUCH, 0, "fh lock: file handle %llu was closed",
				   (unsigned long long)id);
			stream_free(c, s);
		}
	}
	ret = close(h->fd);
	*h = c->fh[--c->nfh];	/* the handle is gone even if close(2) reports an error */
	return ret < 0 && errno == EINTR ? 0 : ret;
}

static const struct {
	const char *name;
	fh_fn *fn;
} fh_ops[] = {
	[KP_OP_FH_READ - KP_OP_FH_READ] = { "read", fh_read },
	[KP_OP_FH_WRITE - KP_OP_FH_READ] = { "write", fh_write },
	[KP_OP_FH_SEEK - KP_OP_FH_READ] = { "seek", fh_seek },
	[KP_OP_FH_STAT - KP_OP_FH_READ] = { "stat", fh_stat },
	[KP_OP_FH_SYNC - KP_OP_FH_READ] = { "sync", fh_sync },
	[KP_OP_FH_TRUNCATE - KP_OP_FH_READ] = { "truncate", fh_truncate },
	[KP_OP_FH_LOCK - KP_OP_FH_READ] = { "lock", fh_lock },
	[KP_OP_FH_UNLOCK - KP_OP_FH_READ] = { "unlock", fh_unlock },
	[KP_OP_FH_UTIME - KP_OP_FH_READ] = { "utime", fh_utime },
	[KP_OP_FH_CLOSE - KP_OP_FH_READ] = { "close", fh_close },
};
_Static_assert(sizeof(fh_ops) / sizeof(fh_ops[0]) == KP_OP_FH_CLOSE - KP_OP_FH_READ + 1,
	       "an entry for every FH_* op");

/* FH_READ .. FH_CLOSE on a handle of this connection (arguments checked by kp_args_fh). */
void op_fh(struct conn *c, const struct req *r)
{
	const char *name = fh_ops[r->op - KP_OP_FH_READ].name;
	uint64_t id = r->args.fh.fh;
	struct kp_recw w;
	struct fh *h = fh_find(c, id);
	int ret;

	if (!h) {
		send_error(c, r->f->id, KP_ERR_NO_SUCH, 0, "fh %s: no file handle %llu on this connection "
			   "(closed, or never opened here)", name, (unsigned long long)id);
		return;
	}
	rec_begin(c, &w);
	ret = fh_ops[r->op - KP_OP_FH_READ].fn(c, r, h, &w);
	if (ret < 0)
		send_error(c, r->f->id, KP_ERR_OS, errno, "fh %s %llu: %s", name, (unsigned long long)id,
			   strerror(errno));
	else if (ret == 0)
		rec_send(c, KP_RESPONSE, KP_F_END, r->f->id, &w);
}
