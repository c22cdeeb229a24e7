/*
 * kiln-agent: processes: their output rings, their pipes pumped to and from
 * the attached exec stream (the exec stream kind), reaping.
 */
#include "agent_int.h"

/* ---- output rings ---------------------------------------------------------------- */

static void ring_copy_in(struct ring *r, uint64_t off, const uint8_t *p, size_t n)
{
	size_t i = (size_t)(off % r->alloc), k = r->alloc - i < n ? r->alloc - i : n;

	memcpy(r->buf + i, p, k);
	memcpy(r->buf, p + k, n - k);
}

/* Copy n bytes at offset off (within [start, end)) out of the ring. */
static void ring_read(const struct ring *r, uint64_t off, uint8_t *p, size_t n)
{
	size_t i = (size_t)(off % r->alloc), k = r->alloc - i < n ? r->alloc - i : n;

	memcpy(p, r->buf + i, k);
	memcpy(p + k, r->buf, n - k);
}

/* Append n bytes, overwriting the oldest ones when the ring is full. */
static void ring_write(struct ring *r, const uint8_t *p, size_t n)
{
	if (n > r->alloc) {	/* only the last alloc bytes can be kept */
		r->end += n - r->alloc;
		p += n - r->alloc;
		n = r->alloc;
		r->start = r->end;
	}
	if (!n)
		return;
	if (r->end + n - r->start > r->alloc)
		r->start = r->end + n - r->alloc;
	ring_copy_in(r, r->end, p, n);
	r->end += n;
}


/*
 * Make room for need more ring bytes within ring_limit by dropping the rings
 * of exited processes whose output and exit were delivered, oldest first.
 */
static void ring_reclaim(struct agent *a, uint64_t need)
{
	while (a->ring_total + need > a->ring_limit) {
		struct proc *p, *v = NULL;

		for (p = a->procs; p; p = p->next)
			if (p->exited && p->reported && !p->st && (p->ring[1].alloc || p->ring[2].alloc) &&
			    (!v || p->exit_seq < v->exit_seq))
				v = p;
		if (!v)
			return;
		for (int ch = 1; ch <= 2; ch++) {
			a->ring_total -= v->ring[ch].alloc;
			free(v->ring[ch].buf);
			v->ring[ch].buf = NULL;
			v->ring[ch].alloc = 0;
			v->ring[ch].start = v->ring[ch].end;
		}
	}
}

/*
 * Grow r toward cap so that it holds at least want bytes: doubling from
 * RING_FLOOR, within ring_limit for all rings together (a ring may always
 * reach RING_FLOOR). Returns 1 when it grew.
 */
static int ring_grow(struct agent *a, struct ring *r, size_t cap, uint64_t want)
{
	size_t sz = r->alloc ? r->alloc : RING_FLOOR / 2;
	uint8_t *nb;
	struct ring old = *r;
	uint64_t off;

	if (r->alloc >= cap)
		return 0;
	do
		sz *= 2;
	while (sz < want && sz < cap);
	if (sz > cap)
		sz = cap;
	if (sz > RING_FLOOR && a->ring_total + sz - r->alloc > a->ring_limit)
		ring_reclaim(a, sz - r->alloc);
	if (sz > RING_FLOOR && a->ring_total + sz - r->alloc > a->ring_limit) {
		sz = r->alloc * 2;
		if (sz <= r->alloc || sz > cap || a->ring_total + sz - r->alloc > a->ring_limit)
			return 0;
	}
	nb = malloc(sz);
	if (!nb)
		return 0;
	r->buf = nb;
	r->alloc = sz;
	for (off = old.start; off < old.end; ) {
		uint8_t chunk[4096];
		size_t n = old.end - off < sizeof(chunk) ? (size_t)(old.end - off) : sizeof(chunk);

		ring_read(&old, off, chunk, n);
		ring_copy_in(r, off, chunk, n);
		off += n;
	}
	a->ring_total += sz - old.alloc;
	free(old.buf);
	return 1;
}

/*
 * How many bytes of channel ch may be read from the pipe now: in block mode
 * what fits without overwriting bytes no host consumed; in drop mode a chunk
 * (the ring overwrites its oldest bytes).
 */
size_t proc_out_room(struct agent *a, struct proc *p, int ch)
{
	struct ring *r = &p->ring[ch];
	uint64_t keep = p->keep[ch] > r->start ? p->keep[ch] : r->start, used = r->end - keep;

	if (p->drop) {
		if (r->end - r->start + READ_CHUNK > r->alloc)
			ring_grow(a, r, p->ring_cap, r->end - r->start + READ_CHUNK);
		return READ_CHUNK;
	}
	if (used >= r->alloc && !ring_grow(a, r, p->ring_cap, used + 1))
		return 0;
	return r->alloc - used < READ_CHUNK ? (size_t)(r->alloc - used) : READ_CHUNK;
}

/* ---- processes and their streams --------------------------------------------------- */

void put_exit(struct kp_recw *w, const struct proc *p)
{
	kp_put_i64(w, KT_CODE, WIFEXITED(p->status) ? WEXITSTATUS(p->status) : -1);
	kp_put_u64(w, KT_SIGNAL, WIFSIGNALED(p->status) ? (uint64_t)WTERMSIG(p->status) : 0);
	kp_put_bool(w, KT_CORE, WIFSIGNALED(p->status) && WCOREDUMP(p->status));
	kp_put_bool(w, KT_OOM, 0);
}

/*
 * Send what the attached stream may have of p's output: GAP events where it
 * fell behind the ring, DATA within its credit, EOF on a finished channel,
 * and once the process is done the EXIT event, which ends the stream.
 */
void proc_flush(struct proc *p)
{
	struct exec_stream *s = p->st;
	struct conn *c;
	uint8_t *buf;
	struct kp_recw w;
	int ch;

	if (!s)
		return;
	c = s->s.conn;
	buf = c->ag->io;
	for (ch = 1; ch <= 2; ch++) {
		struct ring *r = &p->ring[ch];

		while (!s->eof_sent[ch] && !s->cancelled[ch] && c->out.len < OUTQ_HIGH && !c->closing) {
			uint64_t avail;
			size_t n;

			if (s->sent[ch] < r->start) {
				rec_begin(c, &w);
				kp_put_u64(&w, KT_EVENT, KP_EV_GAP);
				kp_put_u64(&w, KT_CHANNEL, (uint64_t)ch);
				kp_put_u64(&w, KT_LOST_FROM, s->sent[ch]);
				kp_put_u64(&w, KT_LOST_TO, r->start);
				rec_send(c, KP_EVENT, 0, s->s.id, &w);
				s->sent[ch] = r->start;
				if (s->acked[ch] < r->start)
					s->acked[ch] = r->start;
			}
			avail = r->end - s->sent[ch];
			if (!avail) {
				if (p->fd[ch] < 0) {
					send_eof(c, s->s.id, (uint16_t)ch, 0, r->end);
					s->eof_sent[ch] = 1;
				}
				break;
			}
			n = max_data(c);
			if (n > avail)
				n = (size_t)avail;
			if (n > s->credit[ch])
				n = (size_t)s->credit[ch];
			if (!n)
				break;
			ring_read(r, s->sent[ch], buf, n);
			send_data(c, s->s.id, (uint16_t)ch, s->sent[ch], buf, (uint32_t)n);
			s->sent[ch] += n;
			s->credit[ch] -= n;
		}
	}
	if (!p->done || !(s->eof_sent[1] || s->cancelled[1]) || !(s->eof_sent[2] || s->cancelled[2]))
		return;
	rec_begin(c, &w);
	kp_put_u64(&w, KT_EVENT, KP_EV_EXIT);
	put_exit(&w, p);
	rec_send(c, KP_EVENT, KP_F_END, s->s.id, &w);
	p->reported = 1;
	stream_free(c, &s->s);
}

void proc_free(struct agent *a, struct proc *p)
{
	struct proc **pp;
	int ch;

	for (pp = &a->procs; *pp; pp = &(*pp)->next)
		if (*pp == p) {
			*pp = p->next;
			break;
		}
	if (p->st) {
		struct conn *c = p->st->s.conn;

		send_error(c, p->st->s.id, KP_ERR_DETACHED, 0, "process %llu was released",
			   (unsigned long long)p->handle);
		stream_free(c, &p->st->s);
	}
	fd_close(&p->fd[0]);
	fd_close(&p->fd[1]);
	fd_close(&p->fd[2]);
	for (ch = 1; ch <= 2; ch++) {
		a->ring_total -= p->ring[ch].alloc;
		free(p->ring[ch].buf);
	}
	if (p->exited)
		a->nexited--;
	else
		a->nlive--;
	free(p->inbuf);
	free(p->cmd);
	free(p);
}

/* Keep at most MAX_EXITED exited processes: forget the oldest, those already reported first. */
void proc_evict(struct agent *a)
{
	while (a->nexited > MAX_EXITED) {
		struct proc *p, *v = NULL;

		for (p = a->procs; p; p = p->next) {
			if (!p->exited || p->st)
				continue;
			if (!v || (p->reported > v->reported) ||
			    (p->reported == v->reported && p->exit_seq < v->exit_seq))
				v = p;
		}
		if (!v)
			return;
		proc_free(a, v);
	}
}

static void proc_check_done(struct proc *p)
{
	if (p->exited && p->fd[1] < 0 && p->fd[2] < 0)
		p->done = 1;
	proc_flush(p);
}

/* Read one chunk of channel ch (1 or 2) of p into its ring, then pass it on. */
void proc_pump_out(struct agent *a, struct proc *p, int ch)
{
	uint8_t *buf = a->io;
	size_t want = proc_out_room(a, p, ch);
	ssize_t n;

	if (!want)
		return;
	n = read(p->fd[ch], buf, want);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {		/* a pty master reads EIO once the terminal's last user closed it */
		fd_close(&p->fd[ch]);
		proc_check_done(p);
		return;
	}
	ring_write(&p->ring[ch], buf, (size_t)n);
	proc_flush(p);
}

/* Write queued stdin; grant the written bytes back as credit. */
void proc_pump_in(struct proc *p)
{
	struct conn *c = p->st ? p->st->s.conn : NULL;
	ssize_t n = 0;

	if (p->fd[0] >= 0 && p->inlen) {
		n = write(p->fd[0], p->inbuf, p->inlen);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		if (n < 0) {		/* EPIPE: the process closed stdin; drop the rest */
			n = (ssize_t)p->inlen;
			fd_close(&p->fd[0]);
		}
		memmove(p->inbuf, p->inbuf + n, p->inlen - (size_t)n);
		p->inlen -= (size_t)n;
	}
	if (n > 0 && c) {
		p->st->s.in_credit += (uint64_t)n;
		send_window(c, p->st->s.id, 0, (uint32_t)n);
	}
	if (p->in_eof && !p->inlen && p->fd[0] >= 0) {
		if (p->pty) {
			/* A terminal has no end of input: type its EOF character (^D) instead. */
			struct termios t;

			if (tcgetattr(p->fd[0], &t) == 0 && t.c_cc[VEOF])
				(void)!write(p->fd[0], &t.c_cc[VEOF], 1);
		}
		fd_close(&p->fd[0]);
	}
}

struct proc *proc_by_handle(struct agent *a, uint64_t h)
{
	struct proc *p;

	for (p = a->procs; p; p = p->next)
		if (p->handle == h)
			return p;
	return NULL;
}

void proc_reap(struct agent *a)
{
	struct signalfd_siginfo si;
	struct proc *p;
	pid_t pid;
	int st;

	while (read(a->sfd, &si, sizeof(si)) == sizeof(si))
		;
	while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
		for (p = a->procs; p; p = p->next)
			if (p->pid == pid && !p->exited)
				break;
		if (!p)
			continue;	/* an orphan reparented to PID 1 */
		p->exited = 1;
		p->status = st;
		p->exit_seq = ++a->exit_seq;
		a->nlive--;
		a->nexited++;
		proc_wait_answer(a, p);
		proc_check_done(p);
	}
	proc_evict(a);
}

/* ---- the exec stream: a process's stdin in, its output out ------------------------- */

static struct exec_stream *exec_stream(struct stream *s)
{
	return (struct exec_stream *)s;
}

/* Queue stdin for the process (bounded by the window granted). */
static void exec_input(struct conn *c, struct stream *s, const struct kp_frame *f, const uint8_t *data,
		       uint32_t n)
{
	struct proc *p = exec_stream(s)->proc;

	if (n) {
		if (buf_append(&p->inbuf, &p->inlen, data, n) < 0) {
			send_error(c, f->id, KP_ERR_OS, ENOMEM, "stdin: out of memory");
			stream_free(c, s);
			return;
		}
		if (p->fd[0] < 0) {	/* stdin already gone: the bytes are consumed */
			s->in_credit += p->inlen;
			send_window(c, f->id, 0, (uint32_t)p->inlen);
			p->inlen = 0;
		}
	}
	if (f->type == KP_EOF)
		p->in_eof = 1;
	proc_pump_in(p);
}

static int exec_input_ended(const struct stream *s)
{
	return ((const struct exec_stream *)s)->proc->in_eof;
}

static void exec_cancel_channel(struct conn *c, struct stream *s, uint16_t ch)
{
	struct exec_stream *es = exec_stream(s);
	struct proc *p = es->proc;

	(void)c;
	if (ch == KP_CHAN_IN) {
		p->inlen = 0;
		p->in_eof = 1;
		s->in_credit = 0;
		proc_pump_in(p);
	} else {
		es->cancelled[ch] = 1;
		proc_flush(p);
	}
}

static int exec_window(struct stream *s, uint16_t ch, uint32_t inc)
{
	struct exec_stream *es = exec_stream(s);
	uint64_t *acked = &es->acked[ch];

	if (!ch)
		return 0;
	if (credit_add(&es->credit[ch], inc) < 0)
		return -1;
	/* Consumed by the host: block mode may now overwrite it. */
	*acked = *acked + inc < es->sent[ch] ? *acked + inc : es->sent[ch];
	if (*acked > es->proc->keep[ch])
		es->proc->keep[ch] = *acked;
	return 0;
}

/* Detach the process: it runs on; stdin bytes queued but not yet written are dropped. */
static void exec_release(struct agent *a, struct stream *s)
{
	struct proc *p = exec_stream(s)->proc;

	(void)a;
	if (p) {
		p->st = NULL;
		p->inlen = 0;
	}
}

const struct stream_ops exec_stream_ops = {
	.name = "exec",
	.size = sizeof(struct exec_stream),
	.input = exec_input,
	.input_ended = exec_input_ended,
	.cancel_channel = exec_cancel_channel,
	.window = exec_window,
	.release = exec_release,
};
