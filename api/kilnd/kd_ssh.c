/*
 * kilnd's SSH gateway (kd_ssh.h): libssh's server API in front of the
 * sandboxes' agents.
 *
 * A connection's thread owns its ssh_session, its ssh_event and its
 * channels. A guest process (shell, exec, sftp-server) is one kac_exec on a
 * helper thread with pipes for stdin, stdout and stderr, a pipe of signal
 * numbers and a pipe that says it is done; a port connection (direct-tcpip)
 * is a helper that dials the agent and hands back kac_port_raw's socket.
 * The connection's thread pumps between each channel and those descriptors,
 * all non-blocking on its side, and reads a side only while the other can
 * take more: a pipe or socket only while the client's window is open, the
 * client's data only when the last batch has been written on (libssh then
 * holds the window shut). The helper's ends are blocking, so a slow client
 * stops kac_exec writing, which stops its credit to the agent, which stops
 * the guest process: back-pressure end to end.
 *
 * A job (a helper's state) is shared by the two threads and freed by the
 * last of them. A channel that ends before its process gets SIGHUP, then
 * SIGKILL, then its agent connection cut (shutdown(2) of a duplicate of the
 * helper's socket), so no helper waits on a guest for ever.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#include <libssh/callbacks.h>
#include <libssh/libssh.h>
#include <libssh/server.h>

#include "agent_client.h"
#include "err.h"
#include "io.h"
#include "kd_ssh.h"

#define SSH_CONNS		256		/* connections at once; more are closed at accept */
#define SSH_CHANS		32		/* channels open on one connection */
#define SSH_SESSIONS		10		/* of them session channels (OpenSSH's MaxSessions) */
#define SSH_USERS		64		/* credentials per sandbox */
#define SSH_AUTH_MS		30000		/* from accept to authenticated */
#define SSH_AUTH_TRIES		10		/* refused authentication requests per connection */
#define SSH_ENVS		32		/* env requests kept per channel */
#define SSH_ENV_VAL		1024
#define SSH_CMD_MAX		(64u << 10)
#define SSH_TICK_MS		250		/* how often a connection looks at kd_ssh_forget's flag */
#define SSH_HUP_MS		1000		/* SIGHUP to SIGKILL for a channel's orphaned process */
#define SSH_KILL_MS		500		/* SIGKILL to cutting its agent connection */
#define SSH_DIAL_MS		10000
#define SSH_IO			32768		/* bytes read from a pipe or socket at a time */
#define SSH_ROUNDS		8		/* pump rounds per channel before the others get a turn */
/*
 * libssh grants a channel 1,280,000 bytes of window and buffers what the
 * client sends in it; far more buffered is a client ignoring the window.
 */
#define SSH_IN_MAX		(4u << 20)
#define SSH_ID_MAX		128
#define SSH_VSOCK_MAX		108		/* sun_path */
#define SSH_USER_PREFIX		"kiln-"
#define SSH_USER_RAND		15		/* bytes: 120 bits, 24 base32 characters */
#define SSH_USER_LEN		(sizeof(SSH_USER_PREFIX) - 1 + SSH_USER_RAND * 8 / 5)
#define ALNUM			"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

_Static_assert(SSH_USER_LEN < KD_SSH_USER_MAX, "a username fits KD_SSH_USER_MAX");

/* A login shell: bash where the image has it. */
static const char shell_cmd[] = "command -v bash >/dev/null 2>&1 && exec bash -l; exec sh -l";
/* OpenSSH's sftp-server where distributions put it. */
static const char sftp_cmd[] =
	"for p in /usr/lib/openssh/sftp-server /usr/libexec/openssh/sftp-server /usr/lib/ssh/sftp-server "
	"/usr/libexec/sftp-server; do [ -x \"$p\" ] && exec \"$p\"; done; "
	"echo 'kiln: no sftp-server in this sandbox (Debian: apt-get install openssh-sftp-server)' >&2; exit 127";

struct cred {
	struct cred *next;
	char user[KD_SSH_USER_MAX];
	char id[SSH_ID_MAX];
	char vsock[SSH_VSOCK_MAX];
};

struct conn;

struct kd_ssh {
	int lfd;
	int wake[2];			/* to the accept thread: 'r' reap zombies, 'q' quit */
	ssh_bind bind;
	pthread_t th;
	pthread_mutex_t m;		/* creds, conns and each conn's fd, looping, id */
	pthread_cond_t idle;		/* nconn fell */
	struct cred *creds;
	struct conn *conns;
	struct conn *zombies;		/* ended, for the accept thread to join */
	unsigned nconn;
};

/* A helper's state: what it runs, and its result once done. */
enum job_kind { JOB_EXEC, JOB_TCP };

struct job {
	atomic_int refs;		/* the helper and the channel */
	enum job_kind kind;
	char vsock[SSH_VSOCK_MAX];
	char **argv, **env;
	int pty;
	unsigned rows, cols;
	int tty;			/* a pty master whose size kac_exec reads on SIGWINCH, or -1 */
	int in, out, err, sig, done;	/* the helper's ends: blocking, closed by it */
	uint16_t port;
	char addr[INET6_ADDRSTRLEN];	/* "": the guest's 127.0.0.1 */
	pthread_mutex_t m;		/* kill_fd, cancelled and the results */
	int kill_fd;			/* a duplicate of the agent socket, -1 outside kac calls */
	int cancelled;
	int ret;
	struct kac_exit ex;
	char msg[256];
	int sock;			/* kac_port_raw's, until the channel takes it */
};

struct watch {
	int fd;
	short ev;
};

enum chan_kind { CH_SESSION, CH_TCP };

struct chan {
	struct chan *next;
	struct conn *c;
	ssh_channel ch;			/* NULL once closed: the chan waits for its job (reaping) */
	enum chan_kind kind;
	struct ssh_channel_callbacks_struct cb;
	int pty;
	unsigned rows, cols;
	char term[64];
	char *env[SSH_ENVS];
	unsigned nenv;
	struct job *j;			/* NULL until the process or connection was asked for */
	int done;			/* j's result is in ret, ex, msg */
	int ret;
	struct kac_exit ex;
	char msg[256];
	int sock;			/* CH_TCP: the stream to the guest port (wfd and rfd[0]) */
	int wfd;			/* to the process's stdin or the port; -1 once ended */
	int rfd[2];			/* from its stdout and stderr, or the port; -1 once ended */
	int sigfd, donefd;
	struct watch w[4];
	unsigned nw;
	uint8_t *ib;			/* the client's bytes on their way to wfd */
	size_t icap, ilen, ioff;
	int cl_eof;			/* the client sent EOF */
	uint8_t ob[SSH_IO];		/* bytes on their way to the client */
	size_t olen, ooff;
	int ostream, next_stream;
	int kill_sent;
	int64_t reap_at;
};

struct conn {
	struct conn *next;
	struct kd_ssh *s;
	pthread_t th;			/* joined, not detached: OpenSSL frees its per-thread state at exit */
	ssh_session ss;
	ssh_event ev;
	int fd;				/* the socket, for kd_ssh_stop's shutdown; -1 once libssh may close it */
	int looping;			/* past the key exchange: kd_ssh_stop's flag ends it */
	atomic_int end;			/* kd_ssh_forget or kd_ssh_stop */
	char id[SSH_ID_MAX];		/* the sandbox, from authentication on */
	char vsock[SSH_VSOCK_MAX];
	int authed, tries;
	int busy;			/* a channel had more to do: poll again without waiting */
	int kick;			/* libssh took in a packet for some channel while the channels were stepped */
	struct chan *chans;
	struct chan *fresh;		/* opened in callbacks, joined to chans between steps */
	unsigned nchan, nsess;
	struct ssh_server_callbacks_struct scb;
};

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void fd_close(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

static int fd_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	return fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 ? -errno : 0;
}

/* A thread with every signal blocked: a write into a closed pipe is EPIPE, not SIGPIPE. */
static int thread_start(pthread_t *th, void *(*fn)(void *), void *arg, int detached)
{
	sigset_t all, old;
	pthread_attr_t a;
	int r;

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	pthread_attr_init(&a);
	if (detached)
		pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
	r = pthread_create(th, &a, fn, arg);
	pthread_attr_destroy(&a);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return -r;
}

/* ---- credentials ---------------------------------------------------------------- */

/* Whether the client's user is u: constant time over a username's length. */
static int user_is(const char *u, const char *user)
{
	unsigned char d = 0;
	size_t i;

	if (strnlen(user, SSH_USER_LEN + 1) != SSH_USER_LEN)
		return 0;
	for (i = 0; i < SSH_USER_LEN; i++)
		d |= (unsigned char)(u[i] ^ user[i]);
	return d == 0;
}

/* Whether user is a live credential; if so c learns its sandbox (under s->m, for kd_ssh_forget). */
static int cred_take(struct conn *c, const char *user)
{
	struct kd_ssh *s = c->s;
	struct cred *k;
	int found = 0;

	if (!user)
		return 0;
	pthread_mutex_lock(&s->m);
	for (k = s->creds; k; k = k->next) {
		if (user_is(k->user, user)) {
			memcpy(c->id, k->id, sizeof(c->id));
			memcpy(c->vsock, k->vsock, sizeof(c->vsock));
			found = 1;
			break;
		}
	}
	pthread_mutex_unlock(&s->m);
	return found;
}

static int cred_exists(struct kd_ssh *s, const char *user)
{
	for (struct cred *k = s->creds; k; k = k->next)
		if (!strcmp(k->user, user))
			return 1;
	return 0;
}

int kd_ssh_user_new(struct kd_ssh *s, const char *id, const char *vsock, char *username, size_t n,
		    struct kiln_err *err)
{
	static const char b32[] = "abcdefghijklmnopqrstuvwxyz234567";
	uint8_t r[SSH_USER_RAND];
	struct cred *k;
	unsigned count = 0, bits = 0, acc = 0;
	size_t i, o;
	int ret = 0;

	if (!id || !id[0] || strlen(id) >= SSH_ID_MAX)
		return kiln_fail(err, EINVAL, "ssh: a sandbox id of 1 to %d bytes is needed", SSH_ID_MAX - 1);
	if (!vsock || !vsock[0] || strlen(vsock) >= SSH_VSOCK_MAX)
		return kiln_fail(err, EINVAL, "ssh: sandbox %s: agent socket path too long (%d bytes at most)", id,
				 SSH_VSOCK_MAX - 1);
	if (n < KD_SSH_USER_MAX)
		return kiln_fail(err, EINVAL, "ssh: a username needs %d bytes", KD_SSH_USER_MAX);
	k = calloc(1, sizeof(*k));
	if (!k)
		return kiln_fail(err, ENOMEM, "ssh: out of memory");
	snprintf(k->id, sizeof(k->id), "%s", id);
	snprintf(k->vsock, sizeof(k->vsock), "%s", vsock);
	pthread_mutex_lock(&s->m);
	for (struct cred *x = s->creds; x; x = x->next)
		count += !strcmp(x->id, id);
	if (count >= SSH_USERS) {
		ret = kiln_fail(err, ENOSPC, "ssh: sandbox %s has %d SSH usernames already", id, SSH_USERS);
		goto out;
	}
	do {
		if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r)) {
			ret = kiln_fail(err, EIO, "ssh: getrandom: %s", strerror(errno));
			goto out;
		}
		o = sizeof(SSH_USER_PREFIX) - 1;
		memcpy(k->user, SSH_USER_PREFIX, o);
		for (i = 0, bits = 0; i < sizeof(r); i++) {
			acc = acc << 8 | r[i];
			for (bits += 8; bits >= 5; bits -= 5)
				k->user[o++] = b32[(acc >> (bits - 5)) & 31];
		}
		k->user[o] = '\0';
	} while (cred_exists(s, k->user));
	memcpy(username, k->user, o + 1);
	k->next = s->creds;
	s->creds = k;
	k = NULL;
out:
	pthread_mutex_unlock(&s->m);
	free(k);
	explicit_bzero(r, sizeof(r));
	return ret;
}

void kd_ssh_forget(struct kd_ssh *s, const char *id)
{
	struct cred **pp, *k;

	pthread_mutex_lock(&s->m);
	for (pp = &s->creds; (k = *pp);) {
		if (!strcmp(k->id, id)) {
			*pp = k->next;
			free(k);
		} else {
			pp = &k->next;
		}
	}
	for (struct conn *c = s->conns; c; c = c->next)
		if (!strcmp(c->id, id))
			atomic_store(&c->end, 1);
	pthread_mutex_unlock(&s->m);
}

/* ---- jobs: the helpers ---------------------------------------------------------- */

static void strv_free(char **v)
{
	for (size_t i = 0; v && v[i]; i++)
		free(v[i]);
	free(v);
}

static void job_put(struct job *j)
{
	if (!j || atomic_fetch_sub(&j->refs, 1) != 1)
		return;
	fd_close(&j->in);
	fd_close(&j->out);
	fd_close(&j->err);
	fd_close(&j->sig);
	fd_close(&j->done);
	fd_close(&j->tty);
	fd_close(&j->sock);
	strv_free(j->argv);
	strv_free(j->env);
	pthread_mutex_destroy(&j->m);
	free(j);
}

static struct job *job_new(enum job_kind kind, const char *vsock)
{
	struct job *j = calloc(1, sizeof(*j));

	if (!j)
		return NULL;
	atomic_init(&j->refs, 1);
	j->kind = kind;
	snprintf(j->vsock, sizeof(j->vsock), "%s", vsock);
	j->tty = j->in = j->out = j->err = j->sig = j->done = j->kill_fd = j->sock = -1;
	pthread_mutex_init(&j->m, NULL);
	return j;
}

static void *job_main(void *arg)
{
	struct job *j = arg;
	struct kac_err kerr = { .msg = "" };
	struct kac_exit ex = { .code = -1 };
	struct kac *k = NULL;
	int fd = -1, sock = -1, ret;

	ret = kac_dial(j->vsock, SSH_DIAL_MS, &fd, &kerr);
	if (!ret) {
		pthread_mutex_lock(&j->m);
		if (j->cancelled)
			ret = -ECANCELED;
		else
			j->kill_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
		pthread_mutex_unlock(&j->m);
		if (ret)
			close(fd);
		else
			ret = kac_connect_fd(&k, fd, SSH_DIAL_MS, &kerr);
	}
	if (ret) {
		/* The client hears that much, not the host's socket path. */
		snprintf(kerr.msg, sizeof(kerr.msg), "the sandbox's agent does not answer (%s)", strerror(-ret));
		ret = -EHOSTDOWN;
	} else if (j->kind == JOB_EXEC) {
		struct kac_exec_opts o = {
			.argv = (const char *const *)j->argv, .env = (const char *const *)j->env,
			.stdin_fd = j->in, .stdout_fd = j->out, .stderr_fd = j->err, .sig_fd = j->sig,
			.pty = j->pty, .rows = j->rows, .cols = j->cols, .tty_fd = j->tty,
		};

		ret = kac_exec(k, &o, &ex, &kerr);
	} else {
		ret = kac_port_raw(k, j->port, j->addr[0] ? j->addr : NULL, &sock, &kerr);
		k = NULL;
	}
	if (k)
		kac_close(k);
	/* Our ends close before "done": the channel meets the output's end before the result. */
	fd_close(&j->in);
	fd_close(&j->out);
	fd_close(&j->err);
	fd_close(&j->sig);
	pthread_mutex_lock(&j->m);
	fd_close(&j->kill_fd);
	j->ret = ret;
	j->ex = ex;
	snprintf(j->msg, sizeof(j->msg), "%.255s", ret && kerr.msg[0] ? kerr.msg : ret ? strerror(-ret) : "");
	j->sock = sock;
	pthread_mutex_unlock(&j->m);
	if (write(j->done, "", 1) < 0) {
		/* the channel is gone: nobody to tell */
	}
	fd_close(&j->done);
	job_put(j);
	return NULL;
}

/* Start j's helper; j's done pipe is made here, its read end into *donefd. */
static int job_start(struct job *j, int *donefd)
{
	pthread_t th;
	int p[2], r;

	if (pipe2(p, O_CLOEXEC) < 0)
		return -errno;
	j->done = p[1];
	*donefd = p[0];
	r = fd_nonblock(p[0]);
	if (r)
		return r;
	atomic_fetch_add(&j->refs, 1);
	r = thread_start(&th, job_main, j, 1);
	if (r)
		atomic_fetch_sub(&j->refs, 1);
	return r;
}

/* Cut the helper's agent connection: its kac call returns at once. */
static void job_cancel(struct job *j)
{
	pthread_mutex_lock(&j->m);
	j->cancelled = 1;
	if (j->kill_fd >= 0)
		shutdown(j->kill_fd, SHUT_RDWR);
	pthread_mutex_unlock(&j->m);
}

/* ---- channels: watching their descriptors -------------------------------------- */

static int on_fd(socket_t fd, int revents, void *arg)
{
	(void)fd;
	(void)revents;
	(void)arg;
	return 0;	/* the work is done after ssh_event_dopoll returns, outside libssh */
}

static void unwatch(struct chan *h, int fd)
{
	for (unsigned i = 0; i < h->nw; i++) {
		if (h->w[i].fd != fd)
			continue;
		if (h->c->ev)
			ssh_event_remove_fd(h->c->ev, fd);
		h->w[i] = h->w[--h->nw];
		return;
	}
}

static void unwatch_all(struct chan *h)
{
	while (h->nw)
		unwatch(h, h->w[0].fd);
}

/* Close *fd (unless it is the port's socket, closed last) after taking it out of the event. */
static void chan_close_fd(struct chan *h, int *fd)
{
	if (*fd < 0)
		return;
	unwatch(h, *fd);
	if (*fd != h->sock)
		close(*fd);
	*fd = -1;
}

static void want(struct watch *w, unsigned *n, int fd, short ev)
{
	for (unsigned i = 0; i < *n; i++) {
		if (w[i].fd == fd) {
			w[i].ev |= ev;
			return;
		}
	}
	w[(*n)++] = (struct watch){ fd, ev };
}

/*
 * Register what the channel waits for, and only that: a descriptor ready
 * for something we would not do now would wake ssh_event_dopoll at once,
 * again and again.
 */
static void chan_watch(struct chan *h)
{
	struct watch w[4];
	unsigned n = 0, i, k;
	uint32_t win = h->ch && !h->olen ? ssh_channel_window_size(h->ch) : 0;

	if (h->donefd >= 0)
		want(w, &n, h->donefd, POLLIN);
	for (i = 0; i < 2; i++)
		if (h->rfd[i] >= 0 && win)
			want(w, &n, h->rfd[i], POLLIN);
	if (h->wfd >= 0 && h->ilen)
		want(w, &n, h->wfd, POLLOUT);
	for (i = 0; i < h->nw;) {
		for (k = 0; k < n && (w[k].fd != h->w[i].fd || w[k].ev != h->w[i].ev); k++)
			;
		if (k == n)
			unwatch(h, h->w[i].fd);
		else
			i++;
	}
	for (k = 0; k < n; k++) {
		for (i = 0; i < h->nw && h->w[i].fd != w[k].fd; i++)
			;
		if (i < h->nw)
			continue;
		if (ssh_event_add_fd(h->c->ev, w[k].fd, w[k].ev, on_fd, h) == SSH_OK)
			h->w[h->nw++] = w[k];
	}
}

/* ---- channels: the bytes ---------------------------------------------------------- */

/* The client's next batch into ib, once the last one was written on. Returns progress, or -errno. */
static int chan_pull(struct chan *h)
{
	uint8_t junk[4096];
	int n, r;

	if (h->ilen || h->cl_eof)
		return 0;
	n = ssh_channel_poll(h->ch, 0);
	if (n == SSH_EOF) {
		h->cl_eof = 1;
		return 1;
	}
	if (n == SSH_ERROR)
		return -EIO;
	if (n > 0) {
		/*
		 * All of it at once: libssh opens the window again whenever a read
		 * finds it below half, whatever it still buffers, so reading in
		 * small pieces would let a client outrun the guest without bound.
		 */
		if ((size_t)n > h->icap) {
			uint8_t *b = realloc(h->ib, (size_t)n);

			if (!b)
				return -ENOMEM;
			h->ib = b;
			h->icap = (size_t)n;
		}
		r = ssh_channel_read_nonblocking(h->ch, h->ib, (uint32_t)n, 0);
		if (r == SSH_ERROR)
			return -EIO;
		if (r > 0) {
			h->ilen = (size_t)r;
			h->ioff = 0;
		}
	}
	/* Extended data from a client means nothing here; it still uses the window. */
	while (ssh_channel_poll(h->ch, 1) > 0)
		if (ssh_channel_read_nonblocking(h->ch, junk, sizeof(junk), 1) <= 0)
			break;
	return n > 0;
}

/* No more input: the process's stdin closes, the guest socket is half-closed. */
static void chan_end_input(struct chan *h)
{
	if (h->wfd < 0)
		return;
	if (h->kind == CH_TCP) {
		shutdown(h->sock, SHUT_WR);
		h->wfd = -1;
		return;
	}
	chan_close_fd(h, &h->wfd);
}

static int chan_push_in(struct chan *h)
{
	int progress = 0;
	ssize_t w;

	while (h->ilen) {
		if (h->wfd < 0) {
			h->ilen = 0;	/* the reader is gone: the client's bytes are dropped */
			break;
		}
		if (h->kind == CH_TCP)
			w = send(h->wfd, h->ib + h->ioff, h->ilen, MSG_NOSIGNAL);
		else
			w = write(h->wfd, h->ib + h->ioff, h->ilen);
		if (w > 0) {
			h->ioff += (size_t)w;
			h->ilen -= (size_t)w;
			progress = 1;
		} else if (w < 0 && errno == EINTR) {
			continue;
		} else if (w < 0 && errno == EAGAIN) {
			break;
		} else {
			chan_end_input(h);
		}
	}
	if (!h->ilen && h->cl_eof && h->wfd >= 0) {
		chan_end_input(h);
		progress = 1;
	}
	return progress;
}

/* The process's or port's output to the client, within its window. Returns progress, or -errno. */
static int chan_push_out(struct chan *h)
{
	uint32_t win;
	ssize_t r;
	int i, s, w;

	if (!h->olen) {
		win = ssh_channel_window_size(h->ch);
		if (!win)
			return 0;
		for (i = 0; i < 2 && !h->olen; i++) {
			s = (h->next_stream + i) & 1;
			if (h->rfd[s] < 0)
				continue;
			r = read(h->rfd[s], h->ob, win < sizeof(h->ob) ? win : sizeof(h->ob));
			if (r > 0) {
				h->olen = (size_t)r;
				h->ooff = 0;
				h->ostream = s;
				h->next_stream = !s;
			} else if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
				continue;
			} else {
				/* The end of that stream (or an error, which ends it as well). */
				if (h->kind == CH_TCP && ssh_channel_send_eof(h->ch) == SSH_ERROR)
					return -EIO;
				chan_close_fd(h, &h->rfd[s]);
				return 1;
			}
		}
		if (!h->olen)
			return 0;
	}
	if (h->ostream)
		w = ssh_channel_write_stderr(h->ch, h->ob + h->ooff, (uint32_t)h->olen);
	else
		w = ssh_channel_write(h->ch, h->ob + h->ooff, (uint32_t)h->olen);
	if (w < 0)
		return -EIO;
	/* 0: a key re-exchange holds writes back; the rest goes after it. */
	h->ooff += (size_t)w;
	h->olen -= (size_t)w;
	return w > 0;
}

/* Take the helper's result once it said it is done. */
static void chan_check_job(struct chan *h)
{
	char b;
	ssize_t r;

	if (h->donefd < 0)
		return;
	r = read(h->donefd, &b, 1);
	if (r < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	chan_close_fd(h, &h->donefd);
	pthread_mutex_lock(&h->j->m);
	h->ret = h->j->ret;
	h->ex = h->j->ex;
	memcpy(h->msg, h->j->msg, sizeof(h->msg));
	if (h->kind == CH_TCP) {
		h->sock = h->j->sock;
		h->j->sock = -1;
	}
	pthread_mutex_unlock(&h->j->m);
	h->done = 1;
	if (h->kind == CH_TCP && h->sock >= 0) {
		if (fd_nonblock(h->sock))
			h->ret = -errno;
		h->wfd = h->rfd[0] = h->sock;
	}
}

static void chan_signal(struct chan *h, int sig)
{
	uint8_t b = (uint8_t)sig;

	if (h->sigfd >= 0 && write(h->sigfd, &b, 1) < 0) {
		/* the helper is past kac_exec: nothing to signal */
	}
}

/*
 * The channel is over for the client (closed by either side, or the
 * connection ends): free it in libssh, close our ends, and leave a process
 * that still runs to chan_reap. The chan itself stays until its job is done.
 */
static void chan_close(struct chan *h, int64_t now)
{
	chan_close_fd(h, &h->wfd);
	chan_close_fd(h, &h->rfd[0]);
	chan_close_fd(h, &h->rfd[1]);
	if (!h->ch)
		return;		/* reaping already, or it never had a channel */
	ssh_remove_channel_callbacks(h->ch, &h->cb);
	if (!ssh_channel_is_closed(h->ch))
		ssh_channel_close(h->ch);
	ssh_channel_free(h->ch);
	h->ch = NULL;
	if (h->j && !h->done) {
		if (h->kind == CH_SESSION)
			chan_signal(h, SIGHUP);
		else
			job_cancel(h->j);
		h->reap_at = now + SSH_HUP_MS;
	}
}

/* A closed channel's process: SIGHUP was sent; then SIGKILL, then cut. 1 when the chan can go. */
static int chan_reap(struct chan *h, int64_t now)
{
	if (!h->j || h->done)
		return 1;
	chan_check_job(h);
	if (h->done)
		return 1;
	if (now < h->reap_at)
		return 0;
	if (h->kind == CH_SESSION && !h->kill_sent) {
		chan_signal(h, SIGKILL);
		h->kill_sent = 1;
		h->reap_at = now + SSH_KILL_MS;
		return 0;
	}
	job_cancel(h->j);
	return 1;	/* the helper ends on its own now, and frees the job */
}

static void chan_free(struct chan *h)
{
	struct conn *c = h->c;

	unwatch_all(h);
	if (h->wfd == h->sock)
		h->wfd = -1;
	if (h->rfd[0] == h->sock)
		h->rfd[0] = -1;
	fd_close(&h->wfd);
	fd_close(&h->rfd[0]);
	fd_close(&h->rfd[1]);
	fd_close(&h->sock);
	fd_close(&h->sigfd);
	fd_close(&h->donefd);
	for (unsigned i = 0; i < h->nenv; i++)
		free(h->env[i]);
	free(h->ib);
	job_put(h->j);
	c->nchan--;
	if (h->kind == CH_SESSION)
		c->nsess--;
	free(h);
}

/* The process is done and its output delivered: its status, EOF and CLOSE, as sshd sends them. */
static void chan_finish(struct chan *h)
{
	char m[300];
	int n;

	if (h->ret < 0) {
		n = snprintf(m, sizeof(m), "kiln: %s\r\n", h->msg);
		if (n > 0 && (uint32_t)n <= ssh_channel_window_size(h->ch))
			ssh_channel_write_stderr(h->ch, m, (uint32_t)n);
		ssh_channel_request_send_exit_status(h->ch, h->ret == -ENOENT ? 127 : h->ret == -EACCES ? 126 : 255);
	} else if (h->ex.signal) {
		const char *name = sigabbrev_np(h->ex.signal);

		ssh_channel_request_send_exit_signal(h->ch, name ? name : "KILL", h->ex.core, "", "");
	} else {
		ssh_channel_request_send_exit_status(h->ch, (int)(h->ex.code & 0xff));
	}
	ssh_channel_send_eof(h->ch);
}

/* One step of a live channel. 1 when it is over for the client. */
static int chan_step(struct chan *h)
{
	int i, p, r;

	if (ssh_channel_is_closed(h->ch))
		return 1;
	/* libssh buffers what a client sends past its window all the same: such a client is let go. */
	if (ssh_channel_poll(h->ch, 0) > (int)SSH_IN_MAX || ssh_channel_poll(h->ch, 1) > (int)SSH_IN_MAX) {
		atomic_store(&h->c->end, 1);
		return 1;
	}
	chan_check_job(h);
	if (!h->j)
		return 0;	/* a session channel before its shell, exec or subsystem */
	if (h->kind == CH_TCP && h->sock < 0)
		return h->done;	/* connecting; or it failed, and the channel closes */
	for (i = 0; i < SSH_ROUNDS; i++) {
		r = chan_pull(h);
		if (r < 0)
			return 1;
		p = r + chan_push_in(h);
		r = chan_push_out(h);
		if (r < 0)
			return 1;
		if (!(p + r))
			break;
	}
	if (i == SSH_ROUNDS)
		h->c->busy = 1;
	if (h->kind == CH_TCP)
		return h->cl_eof && h->wfd < 0 && h->rfd[0] < 0 && !h->olen;
	if (h->done && h->rfd[0] < 0 && h->rfd[1] < 0 && !h->olen) {
		chan_finish(h);
		return 1;
	}
	return 0;
}

/* ---- channels: requests (libssh callbacks, on the connection's thread) -------- */

static struct chan *chan_new(struct conn *c, enum chan_kind kind)
{
	struct chan *h;

	if (c->nchan >= SSH_CHANS || (kind == CH_SESSION && c->nsess >= SSH_SESSIONS))
		return NULL;
	h = calloc(1, sizeof(*h));
	if (!h)
		return NULL;
	h->c = c;
	h->kind = kind;
	h->sock = h->wfd = h->rfd[0] = h->rfd[1] = h->sigfd = h->donefd = -1;
	h->ex.code = -1;
	h->next = c->fresh;
	c->fresh = h;
	c->nchan++;
	if (kind == CH_SESSION)
		c->nsess++;
	return h;
}

static unsigned clamp_dim(int v, unsigned dflt)
{
	return v < 1 ? dflt : v > 65535 ? 65535 : (unsigned)v;
}

static char **strv_of(const char *const *v, unsigned n)
{
	char **o = calloc(n + 1, sizeof(*o));

	for (unsigned i = 0; o && i < n; i++) {
		o[i] = strdup(v[i]);
		if (!o[i]) {
			strv_free(o);
			return NULL;
		}
	}
	return o;
}

/* Start the guest process of a session channel: /bin/sh -c cmd, with a pty if one was asked for (pty). */
static int chan_exec(struct chan *h, const char *cmd, int pty)
{
	const char *argv[] = { "/bin/sh", "-c", cmd };
	const char *env[SSH_ENVS + 1];
	char term[80];
	int in[2] = { -1, -1 }, out[2] = { -1, -1 }, err[2] = { -1, -1 }, sig[2] = { -1, -1 };
	unsigned n = 0;
	struct job *j;
	struct winsize ws;
	int r = -ENOMEM;

	if (h->j)
		return -EBUSY;
	j = job_new(JOB_EXEC, h->c->vsock);
	if (!j)
		return -ENOMEM;
	if (pty && h->term[0]) {
		snprintf(term, sizeof(term), "TERM=%s", h->term);
		env[n++] = term;
	}
	for (unsigned i = 0; i < h->nenv && n < SSH_ENVS; i++)
		env[n++] = h->env[i];
	j->argv = strv_of(argv, 3);
	j->env = strv_of(env, n);
	if (!j->argv || !j->env)
		goto fail;
	j->pty = pty;
	j->rows = h->rows;
	j->cols = h->cols;
	if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 || pipe2(sig, O_CLOEXEC) < 0 ||
	    (!pty && pipe2(err, O_CLOEXEC) < 0)) {
		r = -errno;
		goto fail_fds;
	}
	if (fd_nonblock(in[1]) || fd_nonblock(out[0]) || fd_nonblock(sig[1]) || (!pty && fd_nonblock(err[0]))) {
		r = -errno;
		goto fail_fds;
	}
	if (pty) {
		/*
		 * kac_exec resizes the guest's terminal to a local terminal's size
		 * on SIGWINCH: a pty master of our own carries the client's size.
		 * Without one (no ptys left) the size stays the first one.
		 */
		j->tty = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
		ws = (struct winsize){ .ws_row = (unsigned short)j->rows, .ws_col = (unsigned short)j->cols };
		if (j->tty >= 0 && ioctl(j->tty, TIOCSWINSZ, &ws) < 0)
			fd_close(&j->tty);
	}
	j->in = in[0];
	j->out = out[1];
	j->err = err[1];
	j->sig = sig[0];
	h->wfd = in[1];
	h->rfd[0] = out[0];
	h->rfd[1] = err[0];
	h->sigfd = sig[1];
	h->pty = pty;
	h->j = j;
	h->c->kick = 1;		/* new descriptors to watch */
	r = job_start(j, &h->donefd);
	if (r) {
		h->j = NULL;
		chan_close_fd(h, &h->wfd);
		chan_close_fd(h, &h->rfd[0]);
		chan_close_fd(h, &h->rfd[1]);
		fd_close(&h->sigfd);
		fd_close(&h->donefd);
		job_put(j);
	}
	return r;
fail_fds:
	fd_close(&in[0]);
	fd_close(&in[1]);
	fd_close(&out[0]);
	fd_close(&out[1]);
	fd_close(&err[0]);
	fd_close(&err[1]);
	fd_close(&sig[0]);
	fd_close(&sig[1]);
fail:
	job_put(j);
	return r;
}

static int on_pty(ssh_session ss, ssh_channel ch, const char *term, int width, int height, int pxw, int pxh,
		  void *arg)
{
	struct chan *h = arg;
	size_t n = term ? strlen(term) : 0;

	(void)ss, (void)ch, (void)pxw, (void)pxh;
	if (h->j)
		return -1;
	h->pty = 1;
	h->cols = clamp_dim(width, 80);
	h->rows = clamp_dim(height, 24);
	/* TERM goes into the guest's environment: a plain name or none. */
	h->term[0] = '\0';
	if (n && n < sizeof(h->term) && strspn(term, ALNUM "-._+") == n)
		memcpy(h->term, term, n + 1);
	return 0;
}

static int on_window_change(ssh_session ss, ssh_channel ch, int width, int height, int pxw, int pxh, void *arg)
{
	struct chan *h = arg;
	struct winsize ws;

	(void)ss, (void)ch, (void)pxw, (void)pxh;
	if (!h->pty)
		return -1;
	h->cols = clamp_dim(width, h->cols);
	h->rows = clamp_dim(height, h->rows);
	if (h->j && h->j->pty && h->j->tty >= 0) {
		ws = (struct winsize){ .ws_row = (unsigned short)h->rows, .ws_col = (unsigned short)h->cols };
		if (ioctl(h->j->tty, TIOCSWINSZ, &ws) == 0)
			chan_signal(h, SIGWINCH);
	}
	return 0;
}

static int on_env(ssh_session ss, ssh_channel ch, const char *name, const char *value, void *arg)
{
	struct chan *h = arg;
	size_t n = name ? strlen(name) : 0;
	char *e;

	(void)ss, (void)ch;
	if (h->j || h->nenv >= SSH_ENVS || !n || n > 64 || strspn(name, ALNUM "_") != n ||
	    (name[0] >= '0' && name[0] <= '9') || !value || strlen(value) > SSH_ENV_VAL)
		return -1;
	if (asprintf(&e, "%s=%s", name, value) < 0)
		return -1;
	h->env[h->nenv++] = e;
	return 0;
}

static int on_exec(ssh_session ss, ssh_channel ch, const char *cmd, void *arg)
{
	struct chan *h = arg;

	(void)ss, (void)ch;
	if (!cmd || strlen(cmd) > SSH_CMD_MAX)
		return -1;
	return chan_exec(h, cmd, h->pty) ? -1 : 0;
}

static int on_shell(ssh_session ss, ssh_channel ch, void *arg)
{
	struct chan *h = arg;

	(void)ss, (void)ch;
	return chan_exec(h, shell_cmd, h->pty) ? -1 : 0;
}

static int on_subsystem(ssh_session ss, ssh_channel ch, const char *name, void *arg)
{
	struct chan *h = arg;

	(void)ss, (void)ch;
	if (!name || strcmp(name, "sftp"))
		return -1;
	return chan_exec(h, sftp_cmd, 0) ? -1 : 0;
}

/* RFC 4254 6.9: a signal by name, without "SIG". */
static void on_signal(ssh_session ss, ssh_channel ch, const char *name, void *arg)
{
	struct chan *h = arg;

	(void)ss, (void)ch;
	for (int sig = 1; name && sig < NSIG; sig++) {
		const char *a = sigabbrev_np(sig);

		if (a && !strcmp(a, name)) {
			chan_signal(h, sig);
			return;
		}
	}
}

/*
 * Whatever libssh takes in for a channel while the channels are being
 * stepped (in another channel's read or write) would otherwise wait for the
 * next tick: note it, and the channels are stepped again at once.
 */
static int on_data(ssh_session ss, ssh_channel ch, void *data, uint32_t len, int is_stderr, void *arg)
{
	(void)ss, (void)ch, (void)data, (void)len, (void)is_stderr;
	((struct chan *)arg)->c->kick = 1;
	return 0;	/* left in libssh's buffer for chan_pull, so the window stays shut meanwhile */
}

static void on_eof_close(ssh_session ss, ssh_channel ch, void *arg)
{
	(void)ss, (void)ch;
	((struct chan *)arg)->c->kick = 1;
}

static int on_window(ssh_session ss, ssh_channel ch, uint32_t bytes, void *arg)
{
	(void)ss, (void)ch, (void)bytes;
	((struct chan *)arg)->c->kick = 1;
	return 0;
}

static void chan_callbacks(struct chan *h)
{
	ssh_callbacks_init(&h->cb);
	h->cb.userdata = h;
	h->cb.channel_data_function = on_data;
	h->cb.channel_eof_function = on_eof_close;
	h->cb.channel_close_function = on_eof_close;
	h->cb.channel_write_wontblock_function = on_window;
	if (h->kind == CH_SESSION) {
		h->cb.channel_pty_request_function = on_pty;
		h->cb.channel_pty_window_change_function = on_window_change;
		h->cb.channel_env_request_function = on_env;
		h->cb.channel_exec_request_function = on_exec;
		h->cb.channel_shell_request_function = on_shell;
		h->cb.channel_subsystem_request_function = on_subsystem;
		h->cb.channel_signal_function = on_signal;
	}
	ssh_set_channel_callbacks(h->ch, &h->cb);
}

static ssh_channel on_session_open(ssh_session ss, void *arg)
{
	struct conn *c = arg;
	struct chan *h;

	if (!c->authed || !(h = chan_new(c, CH_SESSION)))
		return NULL;
	h->ch = ssh_channel_new(ss);
	if (!h->ch)
		return NULL;	/* the chan has no channel: the next step frees it */
	chan_callbacks(h);
	return h->ch;
}

/* direct-tcpip (ssh -L, -W): to a guest port by IP literal or "localhost". 0 when msg was answered. */
static int on_message(ssh_session ss, ssh_message msg, void *arg)
{
	struct conn *c = arg;
	const char *dest;
	struct in6_addr a6;
	struct in_addr a4;
	struct chan *h;
	struct job *j;
	int port;

	(void)ss;
	if (ssh_message_type(msg) == SSH_REQUEST_AUTH)
		c->tries++;	/* a method without a callback: keyboard-interactive, gssapi */
	if (ssh_message_type(msg) != SSH_REQUEST_CHANNEL_OPEN || ssh_message_subtype(msg) != SSH_CHANNEL_DIRECT_TCPIP ||
	    !c->authed)
		return 1;
	dest = ssh_message_channel_request_open_destination(msg);
	port = ssh_message_channel_request_open_destination_port(msg);
	if (!dest || port < 1 || port > 65535 || (strcmp(dest, "localhost") && inet_pton(AF_INET, dest, &a4) != 1 &&
						     inet_pton(AF_INET6, dest, &a6) != 1))
		return 1;	/* refused: a guest's names are not ours to resolve */
	h = chan_new(c, CH_TCP);
	if (!h)
		return 1;
	j = job_new(JOB_TCP, c->vsock);
	if (!j)
		return 1;	/* h has no channel and goes at the next step */
	j->port = (uint16_t)port;
	if (strcmp(dest, "localhost") && strcmp(dest, "127.0.0.1"))
		snprintf(j->addr, sizeof(j->addr), "%s", dest);
	h->j = j;
	if (job_start(j, &h->donefd)) {
		h->j = NULL;
		job_put(j);
		return 1;
	}
	/*
	 * Accepted before the guest connects (libssh answers an open within the
	 * callback): a guest port that refuses shows as a channel that closes.
	 */
	h->ch = ssh_message_channel_request_open_reply_accept(msg);
	if (h->ch)
		chan_callbacks(h);
	return 0;
}

/* ---- authentication: the username is the credential -------------------------- */

static int auth_user(struct conn *c, const char *user)
{
	if (!c->authed && cred_take(c, user)) {
		c->authed = 1;
		return SSH_AUTH_SUCCESS;
	}
	c->tries++;
	return SSH_AUTH_DENIED;
}

static int on_auth_none(ssh_session ss, const char *user, void *arg)
{
	(void)ss;
	return auth_user(arg, user);
}

static int on_auth_password(ssh_session ss, const char *user, const char *password, void *arg)
{
	(void)ss, (void)password;
	return auth_user(arg, user);
}

static int on_auth_pubkey(ssh_session ss, const char *user, struct ssh_key_struct *key, char state, void *arg)
{
	struct conn *c = arg;
	struct conn probe = { .s = c->s };

	(void)ss, (void)key;
	if (state == SSH_PUBLICKEY_STATE_NONE) {
		/* "Would this key do?": yes, for a live username. */
		if (cred_take(&probe, user))
			return SSH_AUTH_SUCCESS;
		c->tries++;
		return SSH_AUTH_DENIED;
	}
	if (state != SSH_PUBLICKEY_STATE_VALID) {
		c->tries++;
		return SSH_AUTH_DENIED;
	}
	return auth_user(c, user);
}

/* ---- connections --------------------------------------------------------------- */

static int conn_closed(struct conn *c)
{
	return !ssh_is_connected(c->ss) || (ssh_get_status(c->ss) & (SSH_CLOSED | SSH_CLOSED_ERROR));
}

static void conn_join_fresh(struct conn *c)
{
	while (c->fresh) {
		struct chan *h = c->fresh;

		c->fresh = h->next;
		h->next = c->chans;
		c->chans = h;
	}
}

/* One turn over the channels, after ssh_event_dopoll. */
static void conn_step(struct conn *c)
{
	struct chan **pp, *h;
	int64_t now = now_ms();
	int gone;

	c->busy = c->kick = 0;
	conn_join_fresh(c);
	for (pp = &c->chans; (h = *pp);) {
		if (!h->ch) {
			gone = chan_reap(h, now);
		} else if (chan_step(h)) {
			chan_close(h, now);
			gone = chan_reap(h, now);
		} else {
			gone = 0;
		}
		if (gone) {
			*pp = h->next;
			chan_free(h);
			continue;
		}
		chan_watch(h);
		pp = &h->next;
	}
	if (c->kick || c->fresh)
		c->busy = 1;
}

static void conn_serve(struct conn *c)
{
	while (!atomic_load(&c->end)) {
		if (ssh_event_dopoll(c->ev, c->busy ? 0 : SSH_TICK_MS) == SSH_ERROR || conn_closed(c))
			break;
		conn_step(c);
	}
}

/*
 * The end of a connection: the client is let go at once; processes still
 * running get SIGHUP, SIGKILL and their agent connections cut, within
 * SSH_HUP_MS + SSH_KILL_MS.
 */
static void conn_end(struct conn *c)
{
	struct kd_ssh *s = c->s;
	struct pollfd p[SSH_CHANS];
	struct chan **pp, *h;
	int64_t now = now_ms(), next;
	nfds_t n;

	pthread_mutex_lock(&s->m);
	c->fd = -1;
	pthread_mutex_unlock(&s->m);
	conn_join_fresh(c);
	for (h = c->chans; h; h = h->next)
		chan_close(h, now);
	/* chan_close freed every channel first: ssh_disconnect frees what is left of them. */
	ssh_disconnect(c->ss);
	if (c->ev) {
		/* ssh_event_free would leave the wrappers of our descriptors behind. */
		for (h = c->chans; h; h = h->next)
			unwatch_all(h);
		ssh_event_remove_session(c->ev, c->ss);
		ssh_event_free(c->ev);
		c->ev = NULL;
	}
	while (c->chans) {
		now = now_ms();
		next = now + SSH_TICK_MS;
		n = 0;
		for (pp = &c->chans; (h = *pp);) {
			if (chan_reap(h, now)) {
				*pp = h->next;
				chan_free(h);
				continue;
			}
			if (h->reap_at < next)
				next = h->reap_at;
			if (h->donefd >= 0 && n < SSH_CHANS)
				p[n++] = (struct pollfd){ .fd = h->donefd, .events = POLLIN };
			pp = &h->next;
		}
		if (c->chans)
			poll(p, n, next > now ? (int)(next - now) : 0);
	}
	ssh_free(c->ss);
	pthread_mutex_lock(&s->m);
	for (struct conn **cp = &s->conns; *cp; cp = &(*cp)->next) {
		if (*cp == c) {
			*cp = c->next;
			break;
		}
	}
	c->next = s->zombies;
	s->zombies = c;
	s->nconn--;
	pthread_cond_broadcast(&s->idle);
	pthread_mutex_unlock(&s->m);
	/* s outlives this: kd_ssh_stop joins every zombie before it frees s. */
	if (write(s->wake[1], "r", 1) < 0) {
		/* full: reaping is already due */
	}
}

/* Join the ended connections' threads and free them. */
static void conn_reap(struct kd_ssh *s)
{
	struct conn *c, *z;

	pthread_mutex_lock(&s->m);
	z = s->zombies;
	s->zombies = NULL;
	pthread_mutex_unlock(&s->m);
	while ((c = z)) {
		z = c->next;
		pthread_join(c->th, NULL);
		free(c);
	}
}

static void *conn_main(void *arg)
{
	struct conn *c = arg;
	long secs = SSH_AUTH_MS / 1000;
	int64_t deadline = now_ms() + SSH_AUTH_MS;

	ssh_callbacks_init(&c->scb);
	c->scb.userdata = c;
	c->scb.auth_none_function = on_auth_none;
	c->scb.auth_password_function = on_auth_password;
	c->scb.auth_pubkey_function = on_auth_pubkey;
	c->scb.channel_open_request_session_function = on_session_open;
	ssh_set_server_callbacks(c->ss, &c->scb);
	ssh_set_message_callback(c->ss, on_message, c);
	/* Refusals name publickey only: a client offered password would prompt for one in vain. */
	ssh_set_auth_methods(c->ss, SSH_AUTH_METHOD_PUBLICKEY);
	ssh_options_set(c->ss, SSH_OPTIONS_TIMEOUT, &secs);
	if (ssh_handle_key_exchange(c->ss) != SSH_OK)
		goto out;
	ssh_set_blocking(c->ss, 0);
	c->ev = ssh_event_new();
	if (!c->ev || ssh_event_add_session(c->ev, c->ss) != SSH_OK)
		goto out;
	pthread_mutex_lock(&c->s->m);
	c->looping = 1;
	pthread_mutex_unlock(&c->s->m);
	while (!c->authed) {
		if (atomic_load(&c->end) || c->tries >= SSH_AUTH_TRIES || now_ms() >= deadline)
			goto out;
		if (ssh_event_dopoll(c->ev, SSH_TICK_MS) == SSH_ERROR || conn_closed(c))
			goto out;
	}
	conn_serve(c);
out:
	conn_end(c);
	return NULL;
}

static void conn_accept(struct kd_ssh *s, int fd)
{
	int one = 1, idle = 60, intvl = 15, cnt = 4;
	struct conn *c;
	int full;

	pthread_mutex_lock(&s->m);
	full = s->nconn >= SSH_CONNS;
	pthread_mutex_unlock(&s->m);
	c = full ? NULL : calloc(1, sizeof(*c));
	if (!c) {
		close(fd);
		return;
	}
	/* Interactive keystrokes go at once; a vanished client is noticed within two minutes. */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
	c->s = s;
	c->fd = fd;
	atomic_init(&c->end, 0);
	c->ss = ssh_new();
	if (!c->ss || ssh_bind_accept_fd(s->bind, c->ss, fd) != SSH_OK) {
		/* Once libssh holds the socket, ssh_free closes it. */
		if (!c->ss || ssh_get_fd(c->ss) != fd)
			close(fd);
		ssh_free(c->ss);
		free(c);
		return;
	}
	pthread_mutex_lock(&s->m);
	c->next = s->conns;
	s->conns = c;
	s->nconn++;
	pthread_mutex_unlock(&s->m);
	if (thread_start(&c->th, conn_main, c, 0)) {
		pthread_mutex_lock(&s->m);
		s->conns = c->next;	/* still first: only this thread adds */
		s->nconn--;
		pthread_mutex_unlock(&s->m);
		ssh_free(c->ss);
		free(c);
	}
}

static void *accept_main(void *arg)
{
	struct kd_ssh *s = arg;

	for (;;) {
		struct pollfd p[2] = { { s->lfd, POLLIN, 0 }, { s->wake[0], POLLIN, 0 } };
		char b[64];
		ssize_t n;
		int fd;

		if (poll(p, 2, -1) < 0)
			continue;
		if (p[1].revents) {
			n = read(s->wake[0], b, sizeof(b));
			conn_reap(s);
			if (n > 0 && memchr(b, 'q', (size_t)n))
				break;
			continue;
		}
		fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd >= 0)
			conn_accept(s, fd);
		else if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
			poll(NULL, 0, 100);	/* out of descriptors: let some close */
	}
	return NULL;
}

/* ---- start and stop ---------------------------------------------------------------- */

/* STATE_DIR/ssh_host_ed25519_key: read, or made (0600) on the first start. */
static int host_key(const char *dir, ssh_key *key, struct kiln_err *err)
{
	char path[PATH_MAX], tmp[PATH_MAX + 8], buf[16384];
	char *b64 = NULL;
	struct stat st;
	ssize_t r;
	size_t n = 0;
	int fd, ret;

	if (snprintf(path, sizeof(path), "%s/%s", dir, KD_SSH_HOST_KEY) >= (int)sizeof(path))
		return kiln_fail(err, ENAMETOOLONG, "ssh: state dir %s: path too long", dir);
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd >= 0) {
		if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size >= (off_t)sizeof(buf)) {
			close(fd);
			return kiln_fail(err, EINVAL, "ssh: %s: not an OpenSSH private key file (move it away, and "
					 "kilnd makes a new host key)", path);
		}
		if ((st.st_mode & 077) && fchmod(fd, 0600) < 0) {
			ret = kiln_fail(err, errno, "ssh: %s is readable by others and chmod 600 failed: %s", path,
					strerror(errno));
			close(fd);
			return ret;
		}
		while (n < sizeof(buf) - 1 && (r = read(fd, buf + n, sizeof(buf) - 1 - n)) > 0)
			n += (size_t)r;
		close(fd);
		buf[n] = '\0';
		ret = ssh_pki_import_privkey_base64(buf, NULL, NULL, NULL, key);
		explicit_bzero(buf, sizeof(buf));
		if (ret != SSH_OK)
			return kiln_fail(err, EINVAL, "ssh: %s: not an unencrypted OpenSSH private key (move it away, "
					 "and kilnd makes a new host key)", path);
		if (ssh_key_type(*key) != SSH_KEYTYPE_ED25519) {
			ssh_key_free(*key);
			return kiln_fail(err, EINVAL, "ssh: %s: not an Ed25519 key", path);
		}
		return 0;
	}
	if (errno != ENOENT)
		return kiln_fail(err, errno, "ssh: %s: %s", path, strerror(errno));
	if (ssh_pki_generate(SSH_KEYTYPE_ED25519, 0, key) != SSH_OK)
		return kiln_fail(err, EIO, "ssh: making an Ed25519 host key failed");
	if (ssh_pki_export_privkey_base64(*key, NULL, NULL, NULL, &b64) != SSH_OK) {
		ret = kiln_fail(err, EIO, "ssh: exporting the new host key failed");
		goto fail;
	}
	/* Written whole under another name, then renamed: a crash leaves no half key. */
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	unlink(tmp);
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0) {
		ret = kiln_fail(err, errno, "ssh: %s: %s", tmp, strerror(errno));
		goto fail;
	}
	ret = write_full(fd, b64, strlen(b64));
	if (!ret && fsync(fd) < 0)
		ret = -errno;
	close(fd);
	if (!ret && rename(tmp, path) < 0)
		ret = -errno;
	if (ret) {
		unlink(tmp);
		ret = kiln_fail(err, -ret, "ssh: writing %s: %s", path, strerror(-ret));
		goto fail;
	}
	explicit_bzero(b64, strlen(b64));
	ssh_string_free_char(b64);
	return 0;
fail:
	if (b64) {
		explicit_bzero(b64, strlen(b64));
		ssh_string_free_char(b64);
	}
	ssh_key_free(*key);
	return ret;
}

static int parse_listen(const char *laddr, struct sockaddr_in *sa, struct kiln_err *err)
{
	char addr[INET_ADDRSTRLEN];
	const char *colon = laddr ? strrchr(laddr, ':') : NULL;
	char *end;
	long port;

	if (!colon || colon == laddr || (size_t)(colon - laddr) >= sizeof(addr))
		goto bad;
	memcpy(addr, laddr, (size_t)(colon - laddr));
	addr[colon - laddr] = '\0';
	errno = 0;
	port = strtol(colon + 1, &end, 10);
	if (errno || end == colon + 1 || *end || port < 1 || port > 65535)
		goto bad;
	*sa = (struct sockaddr_in){ .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	if (inet_pton(AF_INET, addr, &sa->sin_addr) != 1)
		goto bad;
	return 0;
bad:
	return kiln_fail(err, EINVAL, "ssh: listen address %s: want IPV4:PORT, e.g. 0.0.0.0:2222",
			 laddr ? laddr : "(none)");
}

int kd_ssh_start(const char *laddr, const char *state_dir, struct kd_ssh **out, struct kiln_err *err)
{
	struct sockaddr_in sa;
	struct kd_ssh *s;
	ssh_key key = NULL;
	bool no = false;
	int one = 1, ret, quiet = SSH_LOG_NOLOG;

	ret = parse_listen(laddr, &sa, err);
	if (ret)
		return ret;
	s = calloc(1, sizeof(*s));
	if (!s)
		return kiln_fail(err, ENOMEM, "ssh: out of memory");
	s->lfd = s->wake[0] = s->wake[1] = -1;
	pthread_mutex_init(&s->m, NULL);
	pthread_cond_init(&s->idle, NULL);
	if (ssh_init() != SSH_OK) {
		ret = kiln_fail(err, EIO, "ssh: libssh failed to initialise");
		goto fail_init;
	}
	ret = host_key(state_dir, &key, err);
	if (ret)
		goto fail;
	s->bind = ssh_bind_new();
	if (!s->bind) {
		ssh_key_free(key);
		ret = kiln_fail(err, ENOMEM, "ssh: out of memory");
		goto fail;
	}
	/* Our own settings only: nothing from /etc/ssh or /etc/libssh. */
	ssh_bind_options_set(s->bind, SSH_BIND_OPTIONS_PROCESS_CONFIG, &no);
	ssh_bind_options_set(s->bind, SSH_BIND_OPTIONS_LOG_VERBOSITY, &quiet);
	if (ssh_bind_options_set(s->bind, SSH_BIND_OPTIONS_IMPORT_KEY, key) != SSH_OK) {
		ssh_key_free(key);
		ret = kiln_fail(err, EINVAL, "ssh: the host key: %s", ssh_get_error(s->bind));
		goto fail;
	}
	s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s->lfd < 0) {
		ret = kiln_fail(err, errno, "ssh: socket: %s", strerror(errno));
		goto fail;
	}
	setsockopt(s->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(s->lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(s->lfd, 128) < 0) {
		ret = kiln_fail(err, errno, "ssh: listen on %s: %s%s", laddr, strerror(errno),
				errno == EADDRINUSE ? " (another sshd there? pick another port)" : "");
		goto fail;
	}
	if (pipe2(s->wake, O_CLOEXEC | O_NONBLOCK) < 0) {
		ret = kiln_fail(err, errno, "ssh: pipe: %s", strerror(errno));
		goto fail;
	}
	ret = thread_start(&s->th, accept_main, s, 0);
	if (ret) {
		ret = kiln_fail(err, -ret, "ssh: thread: %s", strerror(-ret));
		goto fail;
	}
	*out = s;
	return 0;
fail:
	fd_close(&s->lfd);
	fd_close(&s->wake[0]);
	fd_close(&s->wake[1]);
	if (s->bind)
		ssh_bind_free(s->bind);
	ssh_finalize();
fail_init:
	pthread_cond_destroy(&s->idle);
	pthread_mutex_destroy(&s->m);
	free(s);
	return ret;
}

void kd_ssh_stop(struct kd_ssh *s)
{
	struct cred *k;

	if (!s)
		return;
	while (write(s->wake[1], "q", 1) < 0 && errno == EAGAIN)
		poll(NULL, 0, 10);	/* full of 'r': the accept thread is reading */
	pthread_join(s->th, NULL);
	fd_close(&s->lfd);
	pthread_mutex_lock(&s->m);
	for (struct conn *c = s->conns; c; c = c->next) {
		atomic_store(&c->end, 1);
		/* A connection in its key exchange blocks in libssh: its socket ends it. */
		if (!c->looping && c->fd >= 0)
			shutdown(c->fd, SHUT_RDWR);
	}
	while (s->nconn)
		pthread_cond_wait(&s->idle, &s->m);
	pthread_mutex_unlock(&s->m);
	conn_reap(s);
	while ((k = s->creds)) {
		s->creds = k->next;
		free(k);
	}
	ssh_bind_free(s->bind);
	fd_close(&s->wake[0]);
	fd_close(&s->wake[1]);
	pthread_cond_destroy(&s->idle);
	pthread_mutex_destroy(&s->m);
	free(s);
	ssh_finalize();
}
