/* kiln-agent: ports: PORT_CONNECT (framed and raw), PORT_LIST, PORT_WAIT. */
#include "agent_int.h"

/* ---- ports ------------------------------------------------------------------------ */

/* A framed PORT_CONNECT: fd is the TCP socket. */
struct port_stream {
	struct stream s;
	int fd;
	int connecting;		/* connect(2) in progress: RESPONSE when it completes */
	uint64_t out_off, out_credit;	/* channel 1 */
	uint8_t *inbuf;		/* channel 0 bytes received, not yet written */
	size_t inlen;
	int in_eof;		/* the host sent EOF on channel 0 */
	int wr_shut;		/* shutdown(SHUT_WR) done on the socket */
	int out_eof;		/* the socket's read side ended; EOF sent */
};

/* A PORT_WAIT: wport (0: any) or a port of process wpid (0: any) must listen. */
struct pwait_stream {
	struct stream s;
	uint16_t wport;
	pid_t wpid;
	struct timespec deadline;
};

static const struct stream_ops port_ops, pwait_ops;

static void port_pump_in(struct conn *c, struct port_stream *s);

/*
 * A non-blocking TCP connect to addr (an IPv4 or IPv6 literal; NULL:
 * 127.0.0.1) and port. Returns the socket (connect in progress or done) or
 * -errno; -EINVAL for an address that is not an IP literal.
 */
static int port_dial(const char *addr, uint16_t port)
{
	struct sockaddr_in6 s6 = { .sin6_family = AF_INET6, .sin6_port = htons(port) };
	struct sockaddr_in s4 = { .sin_family = AF_INET, .sin_port = htons(port) };
	struct sockaddr *sa;
	socklen_t len;
	int fd;

	if (!addr)
		addr = "127.0.0.1";
	if (inet_pton(AF_INET, addr, &s4.sin_addr) == 1) {
		sa = (struct sockaddr *)&s4;
		len = sizeof(s4);
	} else if (inet_pton(AF_INET6, addr, &s6.sin6_addr) == 1) {
		sa = (struct sockaddr *)&s6;
		len = sizeof(s6);
	} else {
		return -EINVAL;
	}
	fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, sa, len) < 0 && errno != EINPROGRESS) {
		int err = errno;

		close(fd);
		return -err;
	}
	return fd;
}

/* The outcome of a non-blocking connect once fd is writable: 0 or an errno. */
static int dial_result(int fd)
{
	int soerr = 0;
	socklen_t sl = sizeof(soerr);

	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
		return errno;
	return soerr;
}

void op_port_connect(struct conn *c, const struct req *r)
{
	const struct kp_frame *f = r->f;
	int bad = 0, fd;
	uint64_t port = arg_u64(f, KT_PORT, 0, &bad);
	char *addr = arg_str(f, KT_ADDR, &bad);
	int raw = (int)arg_u64(f, KT_RAW, 0, &bad);
	struct agent *a = c->ag;
	struct port_stream *s;

	if (bad || port == 0 || port > 65535) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "port connect: wants PORT (1-65535), ADDR STR?, RAW BOOL?");
		goto out;
	}
	if (raw && (c->nreq != 1 || c->nstreams)) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0,
			   "port connect: RAW must be the first request of a connection of its own");
		goto out;
	}
	if (!raw && a->nports >= MAX_PORTS) {
		send_error(c, f->id, KP_ERR_LIMIT, 0, "port connect: %d port streams already", MAX_PORTS);
		goto out;
	}
	if (a->stopping.active) {
		send_error(c, f->id, KP_ERR_OS, ESHUTDOWN, "port connect: the sandbox is shutting down");
		goto out;
	}
	fd = port_dial(addr, (uint16_t)port);
	if (fd == -EINVAL) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "port connect: ADDR %s is not an IPv4 or IPv6 address", addr);
		goto out;
	}
	if (fd < 0) {
		send_error(c, f->id, KP_ERR_OS, -fd, "connect to port %llu: %s", (unsigned long long)port,
			   strerror(-fd));
		goto out;
	}
	if (raw) {
		c->rawin = malloc(RAW_BUF);
		if (!c->rawin) {
			close(fd);
			send_error(c, f->id, KP_ERR_OS, ENOMEM, "port connect: out of memory");
			goto out;
		}
		c->raw = 1;
		c->raw_fd = fd;
		c->raw_id = f->id;
		goto out;
	}
	s = (struct port_stream *)stream_new(c, &port_ops, f->id, "port connect");
	if (!s) {
		close(fd);
		goto out;
	}
	a->nports++;
	s->fd = fd;
	s->connecting = 1;
	s->out_credit = c->peer_window;
	s->s.in_credit = KP_DEFAULT_WINDOW;
out:
	free(addr);
}


/* The connect of a port stream finished: RESPONSE, or ERROR and the stream ends. */
static void port_connected(struct conn *c, struct port_stream *s)
{
	int err = dial_result(s->fd);
	struct kp_recw w;

	s->connecting = 0;
	if (err) {
		send_error(c, s->s.id, KP_ERR_OS, err, "connect: %s", strerror(err));
		stream_free(c, &s->s);
		return;
	}
	rec_begin(c, &w);
	rec_send(c, KP_RESPONSE, 0, s->s.id, &w);
	port_pump_in(c, s);
}

/* Both directions of a port stream are finished: the terminal RESPONSE|END. */
static void port_maybe_done(struct conn *c, struct port_stream *s)
{
	struct kp_recw w;

	if (!s->out_eof || !s->in_eof || s->inlen)
		return;
	rec_begin(c, &w);
	rec_send(c, KP_RESPONSE, KP_F_END, s->s.id, &w);
	stream_free(c, &s->s);
}

/* Socket to host: what credit allows, EOF when the peer shuts its side. */
static void port_pump_out(struct conn *c, struct port_stream *s)
{
	uint8_t *buf = c->ag->io;
	size_t want = max_data(c);
	ssize_t n;

	if (want > s->out_credit)
		want = (size_t)s->out_credit;
	if (!want || s->out_eof)
		return;
	n = recv(s->fd, buf, want, MSG_DONTWAIT);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		/* A reset counts as the end: the host sees EOF, then the stream's end. */
		send_eof(c, s->s.id, KP_CHAN_OUT, 0, s->out_off);
		s->out_eof = 1;
		port_maybe_done(c, s);
		return;
	}
	send_data(c, s->s.id, KP_CHAN_OUT, s->out_off, buf, (uint32_t)n);
	s->out_off += (uint64_t)n;
	s->out_credit -= (uint64_t)n;
}

/* Host to socket: write queued bytes, grant them back; half-close after EOF. */
static void port_pump_in(struct conn *c, struct port_stream *s)
{
	ssize_t n = 0;

	if (s->connecting)
		return;		/* bytes sent before the RESPONSE wait for the connection */
	if (s->inlen) {
		n = send(s->fd, s->inbuf, s->inlen, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		if (n < 0) {
			/* The peer is gone with bytes still to deliver: say so, end the stream. */
			send_error(c, s->s.id, KP_ERR_OS, errno, "port: send: %s", strerror(errno));
			stream_free(c, &s->s);
			return;
		}
		memmove(s->inbuf, s->inbuf + n, s->inlen - (size_t)n);
		s->inlen -= (size_t)n;
		s->s.in_credit += (uint64_t)n;
		send_window(c, s->s.id, 0, (uint32_t)n);
	}
	if (s->in_eof && !s->inlen && !s->wr_shut) {
		shutdown(s->fd, SHUT_WR);
		s->wr_shut = 1;
	}
	port_maybe_done(c, s);
}

/* Queue host bytes for the socket (bounded by the window granted). */
static void port_input(struct conn *c, struct stream *st, const struct kp_frame *f, const uint8_t *data,
		       uint32_t n)
{
	struct port_stream *s = (struct port_stream *)st;

	if (n && buf_append(&s->inbuf, &s->inlen, data, n) < 0) {
		send_error(c, f->id, KP_ERR_OS, ENOMEM, "port: out of memory");
		stream_free(c, st);
		return;
	}
	if (f->type == KP_EOF)
		s->in_eof = 1;
	port_pump_in(c, s);
}

static int port_input_ended(const struct stream *s)
{
	return ((const struct port_stream *)s)->in_eof;
}

static void port_cancel_channel(struct conn *c, struct stream *st, uint16_t ch)
{
	struct port_stream *s = (struct port_stream *)st;

	if (ch == KP_CHAN_IN) {
		s->inlen = 0;
		s->in_eof = 1;
		st->in_credit = 0;
		port_pump_in(c, s);
	} else if (!s->out_eof) {
		shutdown(s->fd, SHUT_RD);
		s->out_eof = 1;
		port_maybe_done(c, s);
	}
}

static int port_window(struct stream *s, uint16_t ch, uint32_t inc)
{
	return ch == KP_CHAN_OUT ? credit_add(&((struct port_stream *)s)->out_credit, inc) : 0;
}

static void port_poll_add(struct agent *a, struct conn *c, struct stream *st)
{
	struct port_stream *s = (struct port_stream *)st;
	short ev = 0;

	if (s->connecting) {
		ev = POLLOUT;
	} else {
		if (!s->out_eof && s->out_credit && c->out.len < OUTQ_HIGH)
			ev |= POLLIN;
		if (s->inlen)
			ev |= POLLOUT;
	}
	if (ev)
		agent_poll_add(a, s->fd, ev, PF_STREAM, st, 0);
}

static void port_poll_event(struct conn *c, struct stream *st, int fd, short revents)
{
	struct port_stream *s = (struct port_stream *)st;

	if (s->fd != fd)
		return;
	if (s->connecting) {
		port_connected(c, s);
		return;
	}
	if (revents & (POLLIN | POLLHUP | POLLERR))
		port_pump_out(c, s);
	if ((revents & (POLLOUT | POLLERR)) && stream_conn(c->ag, st) == c)
		port_pump_in(c, s);
}

static void port_release(struct agent *a, struct stream *st)
{
	struct port_stream *s = (struct port_stream *)st;

	a->nports--;
	fd_close(&s->fd);
	free(s->inbuf);
}

static const struct stream_ops port_ops = {
	.name = "port",
	.size = sizeof(struct port_stream),
	.input = port_input,
	.input_ended = port_input_ended,
	.cancel_channel = port_cancel_channel,
	.window = port_window,
	.poll_add = port_poll_add,
	.poll_event = port_poll_event,
	.release = port_release,
};

struct listener {
	uint16_t port;
	uint64_t inode;
	pid_t pid;		/* 0 until found */
	char addr[INET6_ADDRSTRLEN];
};

/* Append the LISTEN sockets of /proc/net/tcp or tcp6 to l (at most max in all). */
static size_t listeners_read(const char *path, int v6, struct listener *l, size_t n, size_t max)
{
	char line[512], hex[33];
	unsigned port, st;
	unsigned long long ino;
	FILE *fp = fopen(path, "re");

	if (!fp)
		return n;	/* no IPv6 in the kernel: no tcp6 */
	if (!fgets(line, sizeof(line), fp)) {	/* the header */
		fclose(fp);
		return n;
	}
	while (n < max && fgets(line, sizeof(line), fp)) {
		uint32_t w[4];
		size_t i, j;

		if (sscanf(line, " %*u: %32[0-9A-Fa-f]:%x %*s %x %*s %*s %*s %*u %*u %llu",
			   hex, &port, &st, &ino) != 4 || st != 0x0a)
			continue;
		if (strlen(hex) != (v6 ? 32u : 8u))
			continue;
		/* The kernel prints each 32-bit word of the address in host order. */
		for (i = 0; i < (v6 ? 4u : 1u); i++) {
			char word[9];

			memcpy(word, hex + 8 * i, 8);
			word[8] = '\0';
			w[i] = (uint32_t)strtoul(word, NULL, 16);
		}
		memset(&l[n], 0, sizeof(l[n]));
		l[n].port = (uint16_t)port;
		l[n].inode = ino;
		inet_ntop(v6 ? AF_INET6 : AF_INET, w, l[n].addr, sizeof(l[n].addr));
		/* One entry per port and inode: a dual-stack socket shows once. */
		for (j = 0; j < n; j++)
			if (l[j].inode == ino)
				break;
		if (j == n)
			n++;
	}
	fclose(fp);
	return n;
}

/* The parent of pid from /proc/PID/stat, or 0. */
static pid_t proc_ppid(pid_t pid)
{
	char path[64], buf[512], *p;
	int fd, ppid = 0;
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	p = strrchr(buf, ')');	/* the command name may hold anything but ends at the last ')' */
	if (!p || sscanf(p + 1, " %*c %d", &ppid) != 1)
		return 0;
	return (pid_t)ppid;
}

/* pid is root or one of its descendants. */
static int pid_under(pid_t pid, pid_t root)
{
	int depth;

	for (depth = 0; pid > 1 && depth < 64; depth++, pid = proc_ppid(pid))
		if (pid == root)
			return 1;
	return pid == root;
}

/* Fill in the owning pid of each listener by scanning /proc/PID/fd once. */
static void listeners_owners(struct listener *l, size_t n)
{
	DIR *pd = opendir("/proc"), *fdd;
	struct dirent *pe, *fe;
	char path[64], link[64];
	size_t i, found = 0;

	if (!pd)
		return;
	while (found < n && (pe = readdir(pd)) != NULL) {
		pid_t pid = (pid_t)atoi(pe->d_name);

		if (pid <= 0)
			continue;
		snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
		fdd = opendir(path);
		if (!fdd)
			continue;
		while ((fe = readdir(fdd)) != NULL) {
			unsigned long long ino;
			ssize_t k;

			if (fe->d_name[0] == '.')
				continue;
			k = readlinkat(dirfd(fdd), fe->d_name, link, sizeof(link) - 1);
			if (k <= 0)
				continue;
			link[k] = '\0';
			if (sscanf(link, "socket:[%llu]", &ino) != 1)
				continue;
			for (i = 0; i < n; i++)
				if (l[i].inode == ino && !l[i].pid) {
					l[i].pid = pid;
					found++;
				}
		}
		closedir(fdd);
	}
	closedir(pd);
}

/* The listening TCP sockets (with owners when want_pid), at most MAX_LISTEN. Returns the count or -ENOMEM. */
static ssize_t listeners_scan(struct listener **out, int want_pid)
{
	struct listener *l = calloc(MAX_LISTEN, sizeof(*l));
	size_t n;

	if (!l)
		return -ENOMEM;
	n = listeners_read("/proc/net/tcp", 0, l, 0, MAX_LISTEN);
	n = listeners_read("/proc/net/tcp6", 1, l, n, MAX_LISTEN);
	if (want_pid)
		listeners_owners(l, n);
	*out = l;
	return (ssize_t)n;
}

void op_port_list(struct conn *c, const struct req *r)
{
	const struct kp_frame *f = r->f;
	int bad = 0;
	uint64_t pid = arg_u64(f, KT_PID, 0, &bad);
	struct listener *l;
	struct kp_recw w;
	ssize_t n, i;

	if (bad || pid > INT32_MAX) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "port list: PID is a U64 process id");
		return;
	}
	n = listeners_scan(&l, 1);
	if (n < 0) {
		send_error(c, f->id, KP_ERR_OS, ENOMEM, "port list: out of memory");
		return;
	}
	rec_begin(c, &w);
	for (i = 0; i < n; i++) {
		uint32_t mark;

		if (pid && (!l[i].pid || !pid_under(l[i].pid, (pid_t)pid)))
			continue;
		mark = kp_nest_begin(&w, KT_ENTRY);
		kp_put_u64(&w, KT_PORT, l[i].port);
		if (l[i].pid)
			kp_put_u64(&w, KT_PID, (uint64_t)l[i].pid);
		kp_put_str(&w, KT_ADDR, l[i].addr);
		kp_nest_end(&w, mark);
	}
	free(l);
	rec_send(c, KP_RESPONSE, KP_F_END, f->id, &w);
}

/* PORT_WAIT: 1 when its port (or a port of its process) listens, sending the EVENT|END. */
static int pwait_check(struct conn *c, struct pwait_stream *s, const struct listener *l, ssize_t n)
{
	struct kp_recw w;
	ssize_t i;

	for (i = 0; i < n; i++) {
		if (s->wport && l[i].port != s->wport)
			continue;
		if (s->wpid && (!l[i].pid || !pid_under(l[i].pid, s->wpid)))
			continue;
		rec_begin(c, &w);
		kp_put_u64(&w, KT_EVENT, KP_EV_LISTEN);
		kp_put_u64(&w, KT_PORT, l[i].port);
		if (l[i].pid)
			kp_put_u64(&w, KT_PID, (uint64_t)l[i].pid);
		kp_put_str(&w, KT_ADDR, l[i].addr);
		rec_send(c, KP_EVENT, KP_F_END, s->s.id, &w);
		stream_free(c, &s->s);
		return 1;
	}
	return 0;
}

int ts_after(const struct timespec *a, const struct timespec *b)
{
	return a->tv_sec > b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec >= b->tv_nsec);
}

/* Rescan for a waiting PORT_WAIT (one scan a loop turn serves them all); expire it past its deadline. */
static void pwait_tick(struct conn *c, struct stream *st)
{
	struct pwait_stream *s = (struct pwait_stream *)st;
	struct agent *a = c->ag;
	struct timespec now;

	if (a->lis_turn != a->turn || a->nlis < 0) {
		free(a->lis);
		a->lis = NULL;
		a->lis_turn = a->turn;
		a->nlis = listeners_scan(&a->lis, 1);
		if (a->nlis < 0)
			return;
	}
	if (pwait_check(c, s, a->lis, a->nlis))
		return;
	clock_gettime(CLOCK_MONOTONIC, &now);
	if (s->deadline.tv_sec && ts_after(&now, &s->deadline)) {
		send_error(c, st->id, KP_ERR_OS, ETIMEDOUT, "port wait: nothing listened in time");
		stream_free(c, st);
	}
}

static const struct stream_ops pwait_ops = {
	.name = "port wait",
	.size = sizeof(struct pwait_stream),
	.tick = pwait_tick,
	.tick_ms = PORT_POLL_MS,
};

void op_port_wait(struct conn *c, const struct req *r)
{
	const struct kp_frame *f = r->f;
	int bad = 0;
	uint64_t port = arg_u64(f, KT_PORT, 0, &bad), pid = arg_u64(f, KT_PID, 0, &bad);
	uint64_t ms = arg_u64(f, KT_TIMEOUT_MS, 0, &bad);
	struct pwait_stream *s;
	struct listener *l;
	ssize_t n;

	if (bad || port > 65535 || pid > INT32_MAX || (!port && !pid) || ms > 24ull * 3600 * 1000) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "port wait: wants PORT (1-65535) or PID, TIMEOUT_MS? (at most a day)");
		return;
	}
	s = (struct pwait_stream *)stream_new(c, &pwait_ops, f->id, "port wait");
	if (!s)
		return;
	s->wport = (uint16_t)port;
	s->wpid = (pid_t)pid;
	s->s.in_credit = 0;
	if (ms) {
		clock_gettime(CLOCK_MONOTONIC, &s->deadline);
		s->deadline.tv_sec += (time_t)(ms / 1000);
		s->deadline.tv_nsec += (long)(ms % 1000) * 1000000;
		if (s->deadline.tv_nsec >= 1000000000) {
			s->deadline.tv_sec++;
			s->deadline.tv_nsec -= 1000000000;
		}
	}
	n = listeners_scan(&l, 1);
	if (n >= 0) {
		pwait_check(c, s, l, n);
		free(l);
	}
}


/* ---- raw port connections ------------------------------------------------------------ */

/* The raw connect finished: RESPONSE and unframed bytes from now on, or ERROR and close. */
void raw_connected(struct conn *c)
{
	int err = dial_result(c->raw_fd);
	struct kp_recw w;

	if (err) {
		send_error(c, c->raw_id, KP_ERR_OS, err, "connect: %s", strerror(err));
		close(c->raw_fd);
		c->raw = 0;
		c->raw_fd = -1;
		conn_close(c);
		return;
	}
	rec_begin(c, &w);
	rec_send(c, KP_RESPONSE, KP_F_END, c->raw_id, &w);
	c->raw = 2;
}

/*
 * One step of a raw relay on the events seen: host bytes (rawin) to the TCP
 * socket, TCP bytes to the host (the send queue, written by conn_write).
 * Each side's end is passed on as a half-close; once both ends are through,
 * the connection closes like any other. Returns -1 when c was freed.
 */
int raw_step(struct conn *c, int vsock_in, int tcp_in, int tcp_out)
{
	uint8_t *buf = c->ag->io;
	ssize_t n;

	if (vsock_in && !c->rd_eof && c->rawin_len < RAW_BUF) {
		n = read(c->fd, c->rawin + c->rawin_len, RAW_BUF - c->rawin_len);
		if (n == 0)
			c->rd_eof = 1;
		else if (n > 0)
			c->rawin_len += (size_t)n;
		else if (errno != EAGAIN && errno != EINTR)
			goto fail;
	}
	if ((tcp_out || c->rawin_len) && c->rawin_len) {
		n = send(c->raw_fd, c->rawin, c->rawin_len, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n > 0) {
			memmove(c->rawin, c->rawin + n, c->rawin_len - (size_t)n);
			c->rawin_len -= (size_t)n;
		} else if (n < 0 && errno != EAGAIN && errno != EINTR) {
			goto fail;
		}
	}
	if (c->rd_eof && !c->rawin_len && !c->tcp_wr_shut) {
		shutdown(c->raw_fd, SHUT_WR);
		c->tcp_wr_shut = 1;
	}
	if (tcp_in && !c->tcp_eof && c->out.len < RAW_BUF) {
		n = recv(c->raw_fd, buf, RAW_BUF - c->out.len, MSG_DONTWAIT);
		if (n == 0)
			c->tcp_eof = 1;
		else if (n > 0)
			conn_put(c, buf, (int)n);
		else if (errno != EAGAIN && errno != EINTR)
			goto fail;
	}
	if (c->out.len && conn_write(c) < 0)
		return -1;
	if (c->tcp_eof && !c->out.len && !c->vs_wr_shut) {
		/* The TCP peer is done sending: pass the half-close on to the host. */
		shutdown(c->fd, SHUT_WR);
		c->vs_wr_shut = 1;
	}
	if (c->vs_wr_shut && c->tcp_wr_shut) {
		/*
		 * Both ways are through and both ends shut: close. The close's
		 * vsock SHUTDOWN follows our data, which the VMM delivers first.
		 */
		conn_free(c);
		return -1;
	}
	return 0;
fail:
	conn_free(c);
	return -1;
}
