/* kiln-agent: processes: output rings, pumping pipes, reaping. */
#include "agent_int.h"

/* ---- output rings ---------------------------------------------------------------- */

void ring_copy_in(struct ring *r, uint64_t off, const uint8_t *p, size_t n)
{
	size_t i = (size_t)(off % r->alloc), k = r->alloc - i < n ? r->alloc - i : n;

	memcpy(r->buf + i, p, k);
	memcpy(r->buf, p + k, n - k);
}

/* Copy n bytes at offset off (within [start, end)) out of the ring. */
void ring_read(const struct ring *r, uint64_t off, uint8_t *p, size_t n)
{
	size_t i = (size_t)(off % r->alloc), k = r->alloc - i < n ? r->alloc - i : n;

	memcpy(p, r->buf + i, k);
	memcpy(p + k, r->buf, n - k);
}

/* Append n bytes, overwriting the oldest ones when the ring is full. */
void ring_write(struct ring *r, const uint8_t *p, size_t n)
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
void ring_reclaim(uint64_t need)
{
	while (ring_total + need > ring_limit) {
		struct proc *p, *v = NULL;

		for (p = procs; p; p = p->next)
			if (p->exited && p->reported && !p->st && (p->ring[1].alloc || p->ring[2].alloc) &&
			    (!v || p->exit_seq < v->exit_seq))
				v = p;
		if (!v)
			return;
		for (int ch = 1; ch <= 2; ch++) {
			ring_total -= v->ring[ch].alloc;
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
int ring_grow(struct ring *r, size_t cap, uint64_t want)
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
	if (sz > RING_FLOOR && ring_total + sz - r->alloc > ring_limit)
		ring_reclaim(sz - r->alloc);
	if (sz > RING_FLOOR && ring_total + sz - r->alloc > ring_limit) {
		sz = r->alloc * 2;
		if (sz <= r->alloc || sz > cap || ring_total + sz - r->alloc > ring_limit)
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
	ring_total += sz - old.alloc;
	free(old.buf);
	return 1;
}

/*
 * How many bytes of channel ch may be read from the pipe now: in block mode
 * what fits without overwriting bytes no host consumed; in drop mode a chunk
 * (the ring overwrites its oldest bytes).
 */
size_t proc_out_room(struct proc *p, int ch)
{
	struct ring *r = &p->ring[ch];
	uint64_t keep = p->keep[ch] > r->start ? p->keep[ch] : r->start, used = r->end - keep;

	if (p->drop) {
		if (r->end - r->start + READ_CHUNK > r->alloc)
			ring_grow(r, p->ring_cap, r->end - r->start + READ_CHUNK);
		return READ_CHUNK;
	}
	if (used >= r->alloc && !ring_grow(r, p->ring_cap, used + 1))
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
	static uint8_t buf[READ_CHUNK];
	struct stream *s = p->st;
	struct conn *c;
	struct kp_recw w;
	int ch;

	if (!s)
		return;
	c = s->conn;
	for (ch = 1; ch <= 2; ch++) {
		struct ring *r = &p->ring[ch];

		while (!s->eof_sent[ch] && !s->cancelled[ch] && c->out.len < OUTQ_HIGH && !c->closing) {
			uint64_t avail;
			size_t n;

			if (s->sent[ch] < r->start) {
				rec_begin(&w);
				kp_put_u64(&w, KT_EVENT, KP_EV_GAP);
				kp_put_u64(&w, KT_CHANNEL, (uint64_t)ch);
				kp_put_u64(&w, KT_LOST_FROM, s->sent[ch]);
				kp_put_u64(&w, KT_LOST_TO, r->start);
				rec_send(c, KP_EVENT, 0, s->id, &w);
				s->sent[ch] = r->start;
				if (s->acked[ch] < r->start)
					s->acked[ch] = r->start;
			}
			avail = r->end - s->sent[ch];
			if (!avail) {
				if (p->fd[ch] < 0) {
					uint8_t e[KP_HDR_LEN + 8];

					conn_put(c, e, kp_enc_eof(e, s->id, (uint16_t)ch, 0, r->end));
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
			send_data(c, s->id, (uint16_t)ch, s->sent[ch], buf, (uint32_t)n);
			s->sent[ch] += n;
			s->credit[ch] -= n;
		}
	}
	if (!p->done || !(s->eof_sent[1] || s->cancelled[1]) || !(s->eof_sent[2] || s->cancelled[2]))
		return;
	rec_begin(&w);
	kp_put_u64(&w, KT_EVENT, KP_EV_EXIT);
	put_exit(&w, p);
	rec_send(c, KP_EVENT, KP_F_END, s->id, &w);
	p->reported = 1;
	stream_free(c, s);
}

void proc_free(struct proc *p)
{
	struct proc **pp;
	int ch;

	for (pp = &procs; *pp; pp = &(*pp)->next)
		if (*pp == p) {
			*pp = p->next;
			break;
		}
	if (p->st) {
		send_error(p->st->conn, p->st->id, KP_ERR_DETACHED, 0, "process %llu was released",
			   (unsigned long long)p->handle);
		stream_free(p->st->conn, p->st);
	}
	fd_close(&p->fd[0]);
	fd_close(&p->fd[1]);
	fd_close(&p->fd[2]);
	for (ch = 1; ch <= 2; ch++) {
		ring_total -= p->ring[ch].alloc;
		free(p->ring[ch].buf);
	}
	if (p->exited)
		nexited--;
	else
		nlive--;
	free(p->inbuf);
	free(p->cmd);
	free(p);
}

/* Keep at most MAX_EXITED exited processes: forget the oldest, those already reported first. */
void proc_evict(void)
{
	while (nexited > MAX_EXITED) {
		struct proc *p, *v = NULL;

		for (p = procs; p; p = p->next) {
			if (!p->exited || p->st)
				continue;
			if (!v || (p->reported > v->reported) ||
			    (p->reported == v->reported && p->exit_seq < v->exit_seq))
				v = p;
		}
		if (!v)
			return;
		proc_free(v);
	}
}

void proc_check_done(struct proc *p)
{
	if (p->exited && p->fd[1] < 0 && p->fd[2] < 0)
		p->done = 1;
	proc_flush(p);
}

/* Read one chunk of channel ch (1 or 2) of p into its ring, then pass it on. */
void proc_pump_out(struct proc *p, int ch)
{
	static uint8_t buf[READ_CHUNK];
	size_t want = proc_out_room(p, ch);
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
	struct conn *c = p->st ? p->st->conn : NULL;
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
		uint8_t f[KP_HDR_LEN + 4];

		p->st->in_credit += (uint64_t)n;
		conn_put(c, f, kp_enc_window(f, p->st->id, 0, (uint32_t)n));
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

struct proc *proc_by_handle(uint64_t h)
{
	struct proc *p;

	for (p = procs; p; p = p->next)
		if (p->handle == h)
			return p;
	return NULL;
}

/* Answer every WAIT on p: it has exited. */
void wait_answer(struct proc *p)
{
	struct conn *c;
	struct stream *s, *sn;
	struct kp_recw w;

	for (c = conns; c; c = c->next)
		for (s = c->streams; s; s = sn) {
			sn = s->next;
			if (s->kind != ST_WAIT || s->proc != p)
				continue;
			rec_begin(&w);
			put_exit(&w, p);
			rec_send(c, KP_RESPONSE, KP_F_END, s->id, &w);
			stream_free(c, s);
		}
}

void reap(int sfd)
{
	struct signalfd_siginfo si;
	struct proc *p;
	pid_t pid;
	int st;

	while (read(sfd, &si, sizeof(si)) == sizeof(si))
		;
	while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
		for (p = procs; p; p = p->next)
			if (p->pid == pid && !p->exited)
				break;
		if (!p)
			continue;	/* an orphan reparented to PID 1 */
		p->exited = 1;
		p->status = st;
		p->exit_seq = ++exit_seq;
		nlive--;
		nexited++;
		wait_answer(p);
		proc_check_done(p);
	}
	proc_evict();
}
