/*
 * kiln-agent: the poll loop, shutdown and the entry points. One poll(2) loop,
 * no threads: each turn runs the streams that have work without a
 * descriptor, polls the listener, the SIGCHLD signalfd, each connection, the
 * pipes of each process and the sockets of port streams, handles what is
 * ready, reaps, retries the streams that wait on a timer and flushes.
 */
#include "agent_int.h"

/* Raise the agent's own descriptor limit; remember the one its processes get. */
static void nofile_init(struct agent *a)
{
	struct rlimit r;

	if (getrlimit(RLIMIT_NOFILE, &a->child_nofile) < 0)
		return;
	r.rlim_cur = r.rlim_max = a->child_nofile.rlim_max > AGENT_NOFILE ? a->child_nofile.rlim_max : AGENT_NOFILE;
	/* Raising the hard limit needs CAP_SYS_RESOURCE: without it, up to the hard one. */
	if (setrlimit(RLIMIT_NOFILE, &r) < 0) {
		r.rlim_cur = r.rlim_max = a->child_nofile.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &r);
	}
}

/* ---- shutdown ---------------------------------------------------------------------- */

/*
 * Called each loop turn while a SHUTDOWN is in progress: once every process
 * has gone (or the grace has ended) flush what the connections still hold,
 * for a short while, and hand over to stop (the init's: sync, power off).
 * Returns 1 once that is done.
 */
static int shutdown_step(struct agent *a)
{
	struct timespec now, until;
	struct conn *c, *cn;
	int busy;

	clock_gettime(CLOCK_MONOTONIC, &now);
	if (!ts_after(&now, &a->stopping.deadline) && any_left(a))
		return 0;
	signal_all(a, SIGKILL);
	until = now;
	until.tv_sec += 1;
	do {
		busy = 0;
		for (c = a->conns; c; c = cn) {
			cn = c->next;
			if (c->out.len && conn_write(c) == 0 && c->out.len)
				busy = 1;
		}
		if (busy)
			usleep(10000);
		clock_gettime(CLOCK_MONOTONIC, &now);
	} while (busy && !ts_after(&now, &until));
	fprintf(stderr, "kiln-agent: %s\n", a->stopping.reboot ? "rebooting" : "powering off");
	if (a->stop)
		a->stop(a->stopping.reboot);
	return 1;
}

/* ---- the loop --------------------------------------------------------------------- */

/*
 * The limits that admit connections, processes and port streams keep the
 * poll set within MAX_PFD; should they not, a descriptor goes unpolled this
 * turn (logged at powers of two) rather than past the array.
 */
void agent_poll_add(struct agent *a, int fd, short events, uint8_t k, void *o, uint8_t ch)
{
	nfds_t n = a->npfd;

	if (n >= MAX_PFD) {
		a->pfd_dropped++;
		if (!(a->pfd_dropped & (a->pfd_dropped - 1)))
			fprintf(stderr, "kiln-agent: poll set full (%d): %lu descriptors left unpolled (a bug)\n",
				MAX_PFD, a->pfd_dropped);
		return;
	}
	a->pfd[n] = (struct pollfd){ .fd = fd, .events = events };
	a->obj[n] = o;
	a->kind[n] = k;
	a->chan[n] = ch;
	a->npfd = n + 1;
}

/* Producers without an fd to wait on: file reads, walks, copies, and rings with credit. */
static void loop_produce(struct agent *a)
{
	struct conn *c;
	struct stream *s, *sn;
	struct proc *p;

	for (c = a->conns; c; c = c->next)
		for (s = c->streams; s; s = sn) {
			sn = s->next;
			if (s->ops->pump)
				s->ops->pump(c, s);
		}
	for (p = a->procs; p; p = p->next)
		proc_flush(p);
}

/* A connection's descriptors: framed, or a raw relay (its TCP socket too). 0 to skip it. */
static short conn_events(struct agent *a, struct conn *c)
{
	short ev = 0;

	if (c->raw == 1) {
		ev = c->out.len ? POLLOUT : 0;
		agent_poll_add(a, c->raw_fd, POLLOUT, PF_RAW, c, 0);
	} else if (c->raw == 2) {
		/* Only what can still happen: an ended side would poll ready forever. */
		short tev = (short)((!c->tcp_eof && c->out.len < RAW_BUF ? POLLIN : 0) |
				    (c->rawin_len ? POLLOUT : 0));

		if (!c->rd_eof && c->rawin_len < RAW_BUF)
			ev |= POLLIN;
		if (c->out.len)
			ev |= POLLOUT;
		if (tev)
			agent_poll_add(a, c->raw_fd, tev, PF_RAW, c, 0);
	} else {
		if (c->out.len < OUTQ_HIGH || c->closing)
			ev |= POLLIN;
		if (c->out.len)
			ev |= POLLOUT;
	}
	return ev;
}

/* Build this turn's poll set; returns the poll timeout (ms, -1: none) the agent needs. */
static int loop_poll_set(struct agent *a, int *ticking)
{
	struct conn *c;
	struct stream *s;
	struct proc *p;
	int tmo = -1, ch;

	a->npfd = 0;
	*ticking = 0;
	if (a->lfd >= 0)
		agent_poll_add(a, a->lfd, POLLIN, PF_LISTEN, NULL, 0);
	agent_poll_add(a, a->sfd, POLLIN, PF_SIGNAL, NULL, 0);
	for (c = a->conns; c; c = c->next) {
		short ev = conn_events(a, c);

		if (c->closing == 2 && (tmo < 0 || tmo > 1000))
			tmo = 1000;
		if (c->raw == 2 && !ev && c->rd_eof && c->vs_wr_shut)
			continue;
		agent_poll_add(a, c->fd, ev, PF_CONN, c, 0);
		for (s = c->streams; s; s = s->next) {
			if (s->ops->tick) {
				*ticking = 1;
				if (tmo < 0 || tmo > s->ops->tick_ms)
					tmo = s->ops->tick_ms;
			}
			if (s->ops->busy)
				tmo = 0;
			if (s->ops->poll_add)
				s->ops->poll_add(a, c, s);
		}
	}
	for (p = a->procs; p; p = p->next)
		for (ch = 0; ch < 3; ch++) {
			short ev = 0;

			if (p->fd[ch] < 0)
				continue;
			if (ch == 0 && p->inlen)
				ev = POLLOUT;
			else if (ch && proc_out_room(a, p, ch))
				ev = POLLIN;
			if (ev)
				agent_poll_add(a, p->fd[ch], ev, PF_PROC, p, (uint8_t)ch);
		}
	if (a->stopping.active && (tmo < 0 || tmo > 20))
		tmo = 20;
	return tmo;
}

/* Events on a connection's own descriptor. */
static void loop_conn_event(struct conn *c, short revents)
{
	if (c->raw == 1) {
		/* Connecting: no frames are read; the host may already send raw bytes. */
		if (revents & (POLLERR | POLLHUP))
			conn_free(c);
		else if (revents & POLLOUT)
			conn_write(c);
		return;
	}
	if (c->raw == 2) {
		if (revents & POLLERR)
			conn_free(c);	/* the host reset the connection */
		else
			raw_step(c, !!(revents & (POLLIN | POLLHUP)), 0, 0);
		return;
	}
	if ((revents & POLLOUT) && conn_write(c) < 0)
		return;
	if (revents & (POLLIN | POLLHUP | POLLERR))
		conn_read(c);
}

/*
 * Hand out the events of this turn's poll. Objects may be freed while
 * handling: connections, streams and processes are looked up again by
 * pointer before use.
 */
static void loop_events(struct agent *a)
{
	nfds_t i;

	for (i = 0; i < a->npfd; i++) {
		struct pollfd *pf = &a->pfd[i];
		struct conn *c;
		struct proc *p;
		struct stream *s;

		if (!pf->revents)
			continue;
		switch (a->kind[i]) {
		case PF_LISTEN:
			conn_accept(a);
			break;
		case PF_SIGNAL:
			break;	/* after the pipes are drained */
		case PF_CONN:
			c = conn_live(a, a->obj[i], pf->fd);
			if (c)
				loop_conn_event(c, pf->revents);
			break;
		case PF_RAW:
			for (c = a->conns; c && c != a->obj[i]; c = c->next)
				;
			if (!c || c->raw_fd != pf->fd)
				break;
			if (c->raw == 1)
				raw_connected(c);
			else
				raw_step(c, 0, !!(pf->revents & (POLLIN | POLLHUP | POLLERR)),
					 !!(pf->revents & (POLLOUT | POLLERR)));
			break;
		case PF_STREAM:
			s = a->obj[i];
			c = stream_conn(a, s);
			if (c)
				s->ops->poll_event(c, s, pf->fd, pf->revents);
			break;
		case PF_PROC:
			for (p = a->procs; p && p != a->obj[i]; p = p->next)
				;
			if (!p || p->fd[a->chan[i]] != pf->fd)
				break;
			if (a->chan[i] == 0)
				proc_pump_in(p);
			else
				proc_pump_out(a, p, a->chan[i]);
			break;
		}
	}
}

/* Streams that wait on a timer (PORT_WAIT, FH_LOCK) try again. */
static void loop_ticks(struct agent *a)
{
	struct conn *c;
	struct stream *s, *sn;

	for (c = a->conns; c; c = c->next)
		for (s = c->streams; s; s = sn) {
			sn = s->next;
			if (s->ops->tick)
				s->ops->tick(c, s);
		}
}

/* Flush the send queues; close the connections the host never closed after ours. */
static void loop_flush(struct agent *a)
{
	struct timespec now;
	struct conn *c, *cn;

	clock_gettime(CLOCK_MONOTONIC, &now);
	for (c = a->conns; c; c = cn) {
		cn = c->next;
		if (c->raw == 2) {
			raw_step(c, 0, 0, 0);
			continue;
		}
		if (c->out.len || c->closing == 1)
			conn_write(c);
		else if (c->closing == 2 && now.tv_sec - c->closed_at.tv_sec > CLOSE_GRACE_S)
			conn_free(c);	/* the host never closed its end */
	}
}

int agent_step(struct agent *a, int max_ms)
{
	int tmo, ticking;

	a->turn++;
	loop_produce(a);
	tmo = loop_poll_set(a, &ticking);
	if (max_ms >= 0 && (tmo < 0 || tmo > max_ms))
		tmo = max_ms;
	if (poll(a->pfd, a->npfd, tmo) < 0)
		return 0;
	loop_events(a);
	proc_reap(a);
	if (ticking)
		loop_ticks(a);
	loop_flush(a);
	return a->stopping.active ? shutdown_step(a) : 0;
}

/* ---- the agent's life ------------------------------------------------------------- */

int agent_new(struct agent **out, unsigned flags, void (*stop)(int reboot))
{
	struct agent *a = calloc(1, sizeof(*a));
	struct sysinfo si;
	sigset_t chld;
	int ret;

	if (!a)
		return -ENOMEM;
	a->flags = flags;
	a->stop = stop;
	a->lfd = -1;
	a->next_handle = 1;
	a->nlis = -1;
	nofile_init(a);
	a->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	a->ring_limit = RING_TOTAL_MAX;
	if (sysinfo(&si) == 0 && (uint64_t)si.totalram * si.mem_unit / 4 < a->ring_limit)
		a->ring_limit = (uint64_t)si.totalram * si.mem_unit / 4;
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, NULL);
	a->sfd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
	if (a->sfd < 0) {
		ret = -errno;
		fprintf(stderr, "kiln-agent: signalfd: %s\n", strerror(-ret));
		goto fail;
	}
	ret = env_init(a);
	if (ret < 0) {
		fprintf(stderr, "kiln-agent: environment: %s\n", strerror(-ret));
		goto fail;
	}
	*out = a;
	return 0;
fail:
	agent_free(a);
	return ret;
}

void agent_free(struct agent *a)
{
	if (!a)
		return;
	while (a->conns)
		conn_free(a->conns);
	while (a->procs)
		proc_free(a, a->procs);
	env_free(a);
	free(a->lis);
	fd_close(&a->lfd);
	fd_close(&a->sfd);
	fd_close(&a->reserve_fd);
	free(a);
}

int agent_main(void (*stop)(int reboot), const struct agent_user *user)
{
	struct sockaddr_vm addr = {
		.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = KP_VSOCK_PORT,
	};
	struct agent *a;
	int ret = agent_new(&a, 0, stop);

	if (ret < 0)
		return ret;
	if (user) {
		a->user = *user;
		a->has_user = 1;
	}
	a->lfd = socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (a->lfd < 0 || bind(a->lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(a->lfd, 64) < 0) {
		ret = -errno;
		fprintf(stderr, "kiln-agent: vsock port %d: %s\n", KP_VSOCK_PORT, strerror(-ret));
		agent_free(a);
		return ret;
	}
	fprintf(stderr, "kiln-agent: ready\n");
	/* Tell kiln-vmm (a template snapshots at this moment; the init has the port). */
	if (ioperm(KILN_PORT_MARK, 1, 1) == 0)
		outb(KILN_MARK_AGENT_READY, KILN_PORT_MARK);
	while (!agent_step(a, -1))
		;
	_exit(0);	/* not reached: stop powers off */
}

/* An owner-only unix socket listening at path (bound under umask 077), or -errno. */
static int listen_unix(const char *path)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	int fd, ret;
	mode_t mask;

	if (strlen(path) >= sizeof(addr.sun_path)) {
		fprintf(stderr, "kiln-agent: %s: socket path too long (at most %zu bytes)\n", path,
			sizeof(addr.sun_path) - 1);
		return -ENAMETOOLONG;
	}
	memcpy(addr.sun_path, path, strlen(path));
	unlink(path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	/* Owner only: whoever connects runs commands as the agent's user. */
	mask = umask(077);
	ret = fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 ? -1 : 0;
	umask(mask);
	if (ret < 0 || listen(fd, 64) < 0) {
		ret = -errno;
		fprintf(stderr, "kiln-agent: %s: %s\n", path, strerror(-ret));
		if (fd >= 0)
			close(fd);
		return ret;
	}
	return fd;
}

int agent_main_unix(const char *path)
{
	struct agent *a;
	int ret;

	if (strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
		return listen_unix(path);	/* says why */
	ret = agent_new(&a, AGENT_HOST, NULL);
	if (ret < 0)
		return ret;
	a->lfd = listen_unix(path);
	if (a->lfd < 0) {
		ret = a->lfd;
		agent_free(a);
		return ret;
	}
	fprintf(stderr, "kiln-agent: ready (host mode, %s)\n", path);
	while (!agent_step(a, -1))
		;
	/* SHUTDOWN in host mode: nothing to power off; the socket goes. */
	unlink(path);
	_exit(0);
}
