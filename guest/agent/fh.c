/* kiln-agent: file handles (FH_*). */
#include "agent_int.h"

/* ---- file handles --------------------------------------------------------------------- */

static const char *const fh_op_name[] = {
	[KP_OP_FH_READ - KP_OP_FH_READ] = "read", [KP_OP_FH_WRITE - KP_OP_FH_READ] = "write",
	[KP_OP_FH_SEEK - KP_OP_FH_READ] = "seek", [KP_OP_FH_STAT - KP_OP_FH_READ] = "stat",
	[KP_OP_FH_SYNC - KP_OP_FH_READ] = "sync", [KP_OP_FH_TRUNCATE - KP_OP_FH_READ] = "truncate",
	[KP_OP_FH_LOCK - KP_OP_FH_READ] = "lock", [KP_OP_FH_UNLOCK - KP_OP_FH_READ] = "unlock",
	[KP_OP_FH_UTIME - KP_OP_FH_READ] = "utime", [KP_OP_FH_CLOSE - KP_OP_FH_READ] = "close",
};
_Static_assert(sizeof(fh_op_name) / sizeof(fh_op_name[0]) == KP_OP_FH_CLOSE - KP_OP_FH_READ + 1,
	       "a name for every FH_* op");

struct fh *fh_find(struct conn *c, uint64_t id)
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
int fh_open_flags(unsigned fl)
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

void op_fh_open(struct conn *c, const struct kp_frame *f)
{
	struct kp_open_args a;
	struct kp_recw w;
	const char *why;
	char *path;
	int fd;

	if (kp_args_fh_open(f->payload, f->len, &a, &why) < 0) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "%s", why);
		return;
	}
	if (c->nfh >= KP_FH_MAX) {
		send_error(c, f->id, KP_ERR_LIMIT, 0, "fh open: %d file handles are open on this connection "
			   "already (FH_CLOSE one)", KP_FH_MAX);
		return;
	}
	if (!c->fh)
		c->fh = calloc(KP_FH_MAX, sizeof(*c->fh));
	path = malloc(a.path.len + 1);
	if (!c->fh || !path) {
		free(path);
		send_error(c, f->id, KP_ERR_OS, ENOMEM, "fh open: out of memory");
		return;
	}
	kp_field_str(&a.path, path, a.path.len + 1);
	fd = open_nonblock(c, f->id, path, fh_open_flags(a.flags), (mode_t)a.mode);
	free(path);
	if (fd < 0)
		return;
	c->fh[c->nfh].id = ++c->fh_next;
	c->fh[c->nfh].fd = fd;
	c->nfh++;
	rec_begin(&w);
	kp_put_u64(&w, KT_FH, c->fh_next);
	rec_send(c, KP_RESPONSE, KP_F_END, f->id, &w);
}

/* FH_READ .. FH_CLOSE on a handle of this connection. */
void op_fh(struct conn *c, const struct kp_frame *f, uint64_t op)
{
	static uint8_t buf[KP_FH_IO_MAX];
	const char *name = fh_op_name[op - KP_OP_FH_READ], *why;
	struct kp_fh_args a;
	struct kp_recw w;
	struct stream *s, *sn;
	struct statx sx;
	struct fh *h;
	ssize_t n = 0;
	size_t done = 0;
	off_t off;
	int ret = 0;

	if (kp_args_fh(f->payload, f->len, op, &a, &why) < 0) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "%s", why);
		return;
	}
	h = fh_find(c, a.fh);
	if (!h) {
		send_error(c, f->id, KP_ERR_NO_SUCH, 0, "fh %s: no file handle %llu on this connection "
			   "(closed, or never opened here)", name, (unsigned long long)a.fh);
		return;
	}
	rec_begin(&w);
	switch (op) {
	case KP_OP_FH_READ:
		do
			n = read(h->fd, buf, (size_t)a.length);
		while (n < 0 && errno == EINTR);
		if (n < 0)
			goto fail;
		if (n == 0 && a.length)
			kp_put_bool(&w, KT_EOF, 1);
		else
			kp_put_bytes(&w, KT_DATA, buf, (uint32_t)n);
		break;
	case KP_OP_FH_WRITE:
		while (done < a.data_len) {
			n = write(h->fd, a.data + done, a.data_len - done);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				break;
			done += (size_t)n;
		}
		/* Like write(2): what was written is the answer; an error only when nothing was. */
		if (!done && a.data_len) {
			if (n == 0)
				errno = ENOSPC;
			goto fail;
		}
		kp_put_u64(&w, KT_LENGTH, done);
		break;
	case KP_OP_FH_SEEK:
		off = lseek(h->fd, (off_t)a.offset, a.whence == 0 ? SEEK_SET : a.whence == 1 ? SEEK_CUR : SEEK_END);
		if (off < 0)
			goto fail;
		kp_put_u64(&w, KT_OFFSET, (uint64_t)off);
		break;
	case KP_OP_FH_STAT:
		if (statx(h->fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS | STATX_BTIME, &sx) < 0)
			goto fail;
		send_statx(c, f->id, &sx);
		return;
	case KP_OP_FH_SYNC:
		ret = a.data_only ? fdatasync(h->fd) : fsync(h->fd);
		break;
	case KP_OP_FH_TRUNCATE:
		ret = ftruncate(h->fd, (off_t)a.length);
		break;
	case KP_OP_FH_LOCK:
		ret = flock(h->fd, (a.exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB);
		if (ret < 0 && errno == EWOULDBLOCK) {
			/* Held elsewhere: wait for it without blocking the agent (lock_poll). */
			s = stream_new(c, ST_LOCK, f->id);
			if (!s) {
				send_error(c, f->id, KP_ERR_OS, ENOMEM, "fh lock: out of memory");
				return;
			}
			s->fh = a.fh;
			s->exclusive = a.exclusive;
			s->in_credit = 0;
			return;
		}
		break;
	case KP_OP_FH_UNLOCK:
		ret = flock(h->fd, LOCK_UN);
		break;
	case KP_OP_FH_UTIME: {
		struct timespec ts[2] = { ns_timespec(a.atime), ns_timespec(a.mtime) };

		ret = futimens(h->fd, ts);
		break;
	}
	case KP_OP_FH_CLOSE:
		for (s = c->streams; s; s = sn) {
			sn = s->next;
			if (s->kind == ST_LOCK && s->fh == a.fh) {
				send_error(c, s->id, KP_ERR_NO_SUCH, 0, "fh lock: file handle %llu was closed",
					   (unsigned long long)a.fh);
				stream_free(c, s);
			}
		}
		ret = close(h->fd);
		*h = c->fh[--c->nfh];	/* the handle is gone even if close(2) reports an error */
		if (ret < 0 && errno == EINTR)
			ret = 0;
		break;
	}
	if (ret < 0)
		goto fail;
	rec_send(c, KP_RESPONSE, KP_F_END, f->id, &w);
	return;
fail:
	send_error(c, f->id, KP_ERR_OS, errno, "fh %s %llu: %s", name, (unsigned long long)a.fh, strerror(errno));
}

/* Retry every waiting FH_LOCK (flock(2) has no fd to poll for). */
void lock_poll(void)
{
	struct conn *c;
	struct stream *s, *sn;
	struct fh *h;

	for (c = conns; c; c = c->next)
		for (s = c->streams; s; s = sn) {
			sn = s->next;
			if (s->kind != ST_LOCK)
				continue;
			h = fh_find(c, s->fh);
			if (!h)
				send_error(c, s->id, KP_ERR_NO_SUCH, 0, "fh lock: file handle %llu was closed",
					   (unsigned long long)s->fh);
			else if (flock(h->fd, (s->exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) == 0)
				send_ok(c, s->id);
			else if (errno == EWOULDBLOCK || errno == EINTR)
				continue;
			else
				send_error(c, s->id, KP_ERR_OS, errno, "fh lock %llu: %s", (unsigned long long)s->fh,
					   strerror(errno));
			stream_free(c, s);
		}
}
