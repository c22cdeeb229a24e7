/* kiln-agent: the poll loop, shutdown and the entry points. */
#include "agent_int.h"

struct rlimit child_nofile;	/* the limit the agent was started with */
struct conn *conns;
unsigned nconns;
struct proc *procs;
unsigned nlive, nexited;
uint64_t exit_seq;
uint64_t ring_total, ring_limit;
uint64_t next_handle = 1;
unsigned nports;
unsigned nwalks;
char **envs;		/* the default environment: malloc'd "KEY=VALUE" strings */
size_t nenvs, env_bytes;
char sandbox_id[SANDBOX_ID_MAX + 1];
struct stopping stopping;
void (*agent_stop)(int reboot);
/*
 * Host mode (agent_main_unix): a test harness on a unix socket, not PID 1.
 * Nothing that belongs to the VM is touched: no port I/O, no clock or
 * hostname, and signals go only to the processes the agent started.
 */
int host_mode;
uint8_t scratch[KP_HDR_LEN + KP_MAX_CONTROL];
/*
 * A descriptor held in reserve: out of descriptors, the agent gives it up to
 * accept and close the waiting connection (the host sees it closed at once),
 * or the listening socket would stay readable and the main loop would spin.
 */
int reserve_fd = -1;
unsigned long refused_peers;	/* connections from anyone but the host */
static const char *host_path;

/* ---- shutdown ---------------------------------------------------------------------- */

/*
 * Called each loop turn while a SHUTDOWN is in progress: once every process
 * has gone (or the grace has ended) flush what the connections still hold,
 * for a short while, and hand over to the init, which does not return.
 */
void shutdown_step(void)
{
	struct timespec now, until;
	struct conn *c, *cn;
	int busy;

	clock_gettime(CLOCK_MONOTONIC, &now);
	if (!ts_after(&now, &stopping.deadline) && any_left())
		return;
	signal_all(SIGKILL);
	until = now;
	until.tv_sec += 1;
	do {
		busy = 0;
		for (c = conns; c; c = cn) {
			cn = c->next;
			if (c->out.len && conn_write(c) == 0 && c->out.len)
				busy = 1;
		}
		if (busy)
			usleep(10000);
		clock_gettime(CLOCK_MONOTONIC, &now);
	} while (busy && !ts_after(&now, &until));
	fprintf(stderr, "kiln-agent: %s\n", stopping.reboot ? "rebooting" : "powering off");
	if (agent_stop)
		agent_stop(stopping.reboot);
	_exit(0);	/* not reached: the init powers off */
}

/* ---- the loop --------------------------------------------------------------------- */

enum { PF_LISTEN, PF_SIGNAL, PF_CONN, PF_PROC, PF_PORT, PF_RAW };
/* The listener and signalfd; a connection and its raw TCP socket; three pipes a process; port streams. */
#define MAX_PFD	(2 + 2 * MAX_CONNS + 3 * MAX_PROC_OBJS + MAX_PORTS)

static struct pollfd pfd[MAX_PFD];
static void *obj[MAX_PFD];
static uint8_t kind[MAX_PFD], chan[MAX_PFD];
static unsigned long pfd_dropped;

/*
 * Add fd to the poll set. The limits that admit connections, processes and
 * port streams keep it within MAX_PFD; should they not, a descriptor goes
 * unpolled this turn (logged at powers of two) rather than past the array.
 */
void pfd_add(nfds_t *n, int fd, short events, uint8_t k, void *o, uint8_t ch)
{
	if (*n >= MAX_PFD) {
		pfd_dropped++;
		if (!(pfd_dropped & (pfd_dropped - 1)))
			fprintf(stderr, "kiln-agent: poll set full (%d): %lu descriptors left unpolled (a bug)\n",
				MAX_PFD, pfd_dropped);
		return;
	}
	pfd[*n] = (struct pollfd){ .fd = fd, .events = events };
	obj[*n] = o;
	kind[*n] = k;
	chan[*n] = ch;
	(*n)++;
}

struct conn *conn_live(void *o, int fd)
{
	struct conn *c;

	for (c = conns; c && c != o; c = c->next)
		;
	return c && c->fd == fd ? c : NULL;
}

/* What both modes set up before listening: descriptors, ring budget, environment, SIGCHLD. */
int agent_setup(int *sfd)
{
	struct sysinfo si;
	sigset_t chld;
	int ret;

	nofile_init();
	reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	ring_limit = RING_TOTAL_MAX;
	if (sysinfo(&si) == 0 && (uint64_t)si.totalram * si.mem_unit / 4 < ring_limit)
		ring_limit = (uint64_t)si.totalram * si.mem_unit / 4;
	ret = env_init();
	if (ret < 0) {
		fprintf(stderr, "kiln-agent: environment: %s\n", strerror(-ret));
		return ret;
	}
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, NULL);
	*sfd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
	if (*sfd < 0) {
		ret = -errno;
		fprintf(stderr, "kiln-agent: signalfd: %s\n", strerror(-ret));
		return ret;
	}
	return 0;
}

static _Noreturn void agent_loop(int lfd, int sfd);

int agent_main(void (*stop)(int reboot))
{
	struct sockaddr_vm addr = {
		.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = KP_VSOCK_PORT,
	};
	int lfd, sfd, ret;

	agent_stop = stop;
	ret = agent_setup(&sfd);
	if (ret < 0)
		return ret;
	lfd = socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(lfd, 64) < 0) {
		int err = errno;

		fprintf(stderr, "kiln-agent: vsock port %d: %s\n", KP_VSOCK_PORT, strerror(err));
		return -err;
	}
	fprintf(stderr, "kiln-agent: ready\n");
	/* Tell kiln-vmm (a template snapshots at this moment; the init has the port). */
	if (ioperm(KILN_PORT_MARK, 1, 1) == 0)
		outb(KILN_MARK_AGENT_READY, KILN_PORT_MARK);
	agent_loop(lfd, sfd);
}


/* Host mode's SHUTDOWN end: nothing to power off; the socket goes. */
void host_stop(int reboot)
{
	(void)reboot;
	unlink(host_path);
	_exit(0);
}

int agent_main_unix(const char *path)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	int lfd, sfd, ret;
	mode_t mask;

	if (strlen(path) >= sizeof(addr.sun_path)) {
		fprintf(stderr, "kiln-agent: %s: socket path too long (at most %zu bytes)\n", path,
			sizeof(addr.sun_path) - 1);
		return -ENAMETOOLONG;
	}
	memcpy(addr.sun_path, path, strlen(path));
	host_mode = 1;
	host_path = path;
	agent_stop = host_stop;
	ret = agent_setup(&sfd);
	if (ret < 0)
		return ret;
	unlink(path);
	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	/* Owner only (bound under umask 077): whoever connects runs commands as the agent's user. */
	mask = umask(077);
	ret = lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0 ? -1 : 0;
	umask(mask);
	if (ret < 0 || listen(lfd, 64) < 0) {
		int err = errno;

		fprintf(stderr, "kiln-agent: %s: %s\n", path, strerror(err));
		return -err;
	}
	fprintf(stderr, "kiln-agent: ready (host mode, %s)\n", path);
	agent_loop(lfd, sfd);
}

static _Noreturn void agent_loop(int lfd, int sfd)
{
	for (;;) {
		struct conn *c, *cn;
		struct proc *p;
		struct stream *s, *sn;
		nfds_t n = 0, i;
		unsigned nclosing, npwait = 0, nlock = 0, ncopy = 0;
		struct timespec now;
		int tmo;

		/* Producers without an fd to wait on: file reads and rings with credit. */
		for (c = conns; c; c = c->next)
			for (s = c->streams; s; s = sn) {
				sn = s->next;
				if (s->kind == ST_FREAD)
					fread_pump(c, s);
				else if (s->kind == ST_WALK)
					walk_pump(c, s);
				else if (s->kind == ST_COPY)
					copy_pump(c, s);
			}
		for (p = procs; p; p = p->next)
			proc_flush(p);

		pfd_add(&n, lfd, POLLIN, PF_LISTEN, NULL, 0);
		pfd_add(&n, sfd, POLLIN, PF_SIGNAL, NULL, 0);
		nclosing = 0;
		for (c = conns; c; c = c->next) {
			short ev = 0;

			nclosing += c->closing == 2;
			if (c->raw == 1) {
				ev = c->out.len ? POLLOUT : 0;
				pfd_add(&n, c->raw_fd, POLLOUT, PF_RAW, c, 0);
			} else if (c->raw == 2) {
				/* Only what can still happen: an ended side would poll ready forever. */
				short tev = (short)((!c->tcp_eof && c->out.len < RAW_BUF ? POLLIN : 0) |
						    (c->rawin_len ? POLLOUT : 0));

				if (!c->rd_eof && c->rawin_len < RAW_BUF)
					ev |= POLLIN;
				if (c->out.len)
					ev |= POLLOUT;
				if (tev)
					pfd_add(&n, c->raw_fd, tev, PF_RAW, c, 0);
				if (!ev && c->rd_eof && c->vs_wr_shut)
					continue;
			} else {
				if (c->out.len < OUTQ_HIGH || c->closing)
					ev |= POLLIN;
				if (c->out.len)
					ev |= POLLOUT;
			}
			pfd_add(&n, c->fd, ev, PF_CONN, c, 0);
			for (s = c->streams; s; s = s->next) {
				short pev = 0;

				npwait += s->kind == ST_PWAIT;
				nlock += s->kind == ST_LOCK;
				ncopy += s->kind == ST_COPY;
				if (s->kind != ST_PORT)
					continue;
				if (s->connecting)
					pev = POLLOUT;
				else {
					if (!s->out_eof && s->out_credit && c->out.len < OUTQ_HIGH)
						pev |= POLLIN;
					if (s->inlen)
						pev |= POLLOUT;
				}
				if (pev)
					pfd_add(&n, s->fd, pev, PF_PORT, s, 0);
			}
		}
		for (p = procs; p; p = p->next) {
			for (int ch = 0; ch < 3; ch++) {
				short ev = 0;

				if (p->fd[ch] < 0)
					continue;
				if (ch == 0 && p->inlen)
					ev = POLLOUT;
				else if (ch && proc_out_room(p, ch))
					ev = POLLIN;
				if (ev)
					pfd_add(&n, p->fd[ch], ev, PF_PROC, p, (uint8_t)ch);
			}
		}

		tmo = nclosing ? 1000 : -1;
		if (npwait)
			tmo = PORT_POLL_MS;
		if (nlock && (tmo < 0 || tmo > LOCK_POLL_MS))
			tmo = LOCK_POLL_MS;
		if (stopping.active)
			tmo = 20;
		if (ncopy)
			tmo = 0;	/* a COPY goes on next turn */
		if (poll(pfd, n, tmo) < 0)
			continue;

		/*
		 * Objects may be freed while handling: connections, streams and
		 * processes are looked up again by pointer before use.
		 */
		for (i = 0; i < n; i++) {
			if (!pfd[i].revents)
				continue;
			switch (kind[i]) {
			case PF_LISTEN:
				conn_accept(lfd);
				break;
			case PF_SIGNAL:
				break;	/* below, after the pipes are drained */
			case PF_CONN:
				c = conn_live(obj[i], pfd[i].fd);
				if (!c)
					break;
				if (c->raw == 1) {
					/* Connecting: no frames are read; the host may already send raw bytes. */
					if (pfd[i].revents & (POLLERR | POLLHUP))
						conn_free(c);
					else if (pfd[i].revents & POLLOUT)
						conn_write(c);
					break;
				}
				if (c->raw == 2) {
					if (pfd[i].revents & POLLERR)
						conn_free(c);	/* the host reset the connection */
					else
						raw_step(c, !!(pfd[i].revents & (POLLIN | POLLHUP)), 0, 0);
					break;
				}
				if ((pfd[i].revents & POLLOUT) && conn_write(c) < 0)
					break;
				if (pfd[i].revents & (POLLIN | POLLHUP | POLLERR))
					conn_read(c);
				break;
			case PF_RAW:
				for (c = conns; c && c != obj[i]; c = c->next)
					;
				if (!c || c->raw_fd != pfd[i].fd)
					break;
				if (c->raw == 1)
					raw_connected(c);
				else
					raw_step(c, 0, !!(pfd[i].revents & (POLLIN | POLLHUP | POLLERR)),
						 !!(pfd[i].revents & (POLLOUT | POLLERR)));
				break;
			case PF_PORT:
				s = obj[i];
				c = stream_conn(s);
				if (!c || s->fd != pfd[i].fd)
					break;
				if (s->connecting) {
					port_connected(c, s);
					break;
				}
				if (pfd[i].revents & (POLLIN | POLLHUP | POLLERR))
					port_pump_out(c, s);
				if ((pfd[i].revents & (POLLOUT | POLLERR)) && stream_conn(s) == c)
					port_pump_in(c, s);
				break;
			case PF_PROC:
				for (p = procs; p && p != obj[i]; p = p->next)
					;
				if (!p || p->fd[chan[i]] != pfd[i].fd)
					break;
				if (chan[i] == 0)
					proc_pump_in(p);
				else
					proc_pump_out(p, chan[i]);
				break;
			}
		}
		reap(sfd);
		if (npwait)
			pwait_poll();
		if (nlock)
			lock_poll();
		clock_gettime(CLOCK_MONOTONIC, &now);
		for (c = conns; c; c = cn) {
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
		if (stopping.active)
			shutdown_step();
	}
}
