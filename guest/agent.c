/*
 * kiln-agent: serves the agent protocol (docs/agent-protocol.md) over vsock
 * from PID 1. One poll(2) loop, no threads: a vsock listener, a signalfd for
 * SIGCHLD, each connection, and the pipes of each process it started.
 *
 * Memory is bounded: a process's output pipe is read only while its channel
 * has credit and its connection's send queue is below OUTQ_HIGH; a connection
 * whose send queue is above OUTQ_HIGH is not read from; stdin bytes queue only
 * up to the window the agent granted.
 *
 * This slice has no output ring: while no connection is attached (its
 * connection closed), a process's output is read and discarded, so it keeps
 * running, and its stdin is closed. ATTACH, WAIT and the ring come later.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#include "agent.h"
#include "agent_proto.h"

#define AGENT_NAME	"kiln-agent 0.1"
#define MAX_CONNS	64
#define MAX_PROCS	1024
#define MAX_IDS		1024		/* live streams per connection */
#define MAX_ARGV	4096
#define RX_CAP		KP_MAX_CONTROL	/* our max_frame: records and DATA */
#define OUTQ_HIGH	(1u << 20)	/* stop producing for a connection above this */
#define READ_CHUNK	(64u << 10)
#define CLOSE_GRACE_S	5		/* wait for the host to close after our shutdown */

extern char **environ;

struct outq {
	uint8_t *p;
	size_t head, len, cap;
};

struct conn;

struct proc {
	struct proc *next;
	pid_t pid;
	uint64_t handle;
	int fd[3];		/* stdin (write end), stdout, stderr (read ends); -1 closed */
	uint64_t off[3];	/* bytes moved on each channel */
	uint64_t credit[3];	/* output credit the host granted on channels 1, 2 */
	uint8_t *inbuf;		/* stdin bytes received, not yet written */
	size_t inlen;
	int in_eof;		/* host sent EOF on channel 0 */
	int exited, status;
	struct stream *st;	/* attached stream, NULL when detached */
};

enum stream_kind { ST_EXEC, ST_FWRITE, ST_FREAD };

struct stream {
	struct stream *next;
	enum stream_kind kind;
	uint32_t id;
	uint64_t in_off;	/* channel 0 bytes received */
	uint64_t in_credit;	/* channel 0 bytes the host may still send */
	struct proc *proc;	/* ST_EXEC */
	int fd;			/* ST_FWRITE, ST_FREAD */
	uint64_t remain;	/* ST_FREAD: bytes left to send */
	uint64_t out_off, out_credit;	/* ST_FREAD channel 1 */
};

struct conn {
	struct conn *next;
	int fd;
	int closing;		/* 1 flushing, 2 shutdown(SHUT_WR) sent, waiting for the host */
	struct timespec closed_at;
	int got_hello;
	uint32_t peer_window, peer_max;
	struct kp_decoder dec;
	uint8_t *rxbuf;
	struct outq out;
	struct stream *streams;
	unsigned nstreams;
};

static struct conn *conns;
static unsigned nconns;
static struct proc *procs;
static unsigned nprocs;
static uint64_t next_handle = 1;
static uint8_t scratch[KP_HDR_LEN + KP_MAX_CONTROL];

/* ---- send queue --------------------------------------------------------------- */

static int outq_put(struct outq *q, const void *p, size_t n)
{
	if (q->head && q->head + q->len + n > q->cap) {
		memmove(q->p, q->p + q->head, q->len);
		q->head = 0;
	}
	if (q->len + n > q->cap) {
		size_t cap = q->cap ? q->cap : 65536;
		uint8_t *np;

		while (cap < q->len + n)
			cap *= 2;
		np = realloc(q->p, cap);
		if (!np)
			return -ENOMEM;
		q->p = np;
		q->cap = cap;
	}
	memcpy(q->p + q->head + q->len, p, n);
	q->len += n;
	return 0;
}

static void conn_put(struct conn *c, const void *p, int n)
{
	if (n <= 0 || c->closing > 1)
		return;
	if (outq_put(&c->out, p, (size_t)n) < 0)
		c->closing = 1;
}

static void send_error(struct conn *c, uint32_t id, uint32_t code, int err_no, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
static void send_error(struct conn *c, uint32_t id, uint32_t code, int err_no, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	conn_put(c, scratch, kp_enc_error(scratch, sizeof(scratch), id, code, (uint32_t)err_no, msg));
}

static void rec_begin(struct kp_recw *w)
{
	kp_recw_init(w, scratch + KP_HDR_LEN, KP_MAX_CONTROL);
}

static void rec_send(struct conn *c, uint8_t type, uint8_t flags, uint32_t id, struct kp_recw *w)
{
	int n = kp_enc_rec_frame(scratch, sizeof(scratch), type, flags, id, w);

	if (n < 0)
		send_error(c, id, KP_ERR_INTERNAL, 0, "reply: %s", kp_strerror(n));
	else
		conn_put(c, scratch, n);
}

static void send_ok(struct conn *c, uint32_t id)
{
	struct kp_recw w;

	rec_begin(&w);
	rec_send(c, KP_RESPONSE, KP_F_END, id, &w);
}

static void send_data(struct conn *c, uint32_t id, uint16_t ch, uint64_t off, const uint8_t *p, uint32_t n)
{
	uint8_t hdr[KP_DATA_HDR_LEN];

	if (kp_enc_data_hdr(hdr, id, ch, off, n) < 0)
		return;
	conn_put(c, hdr, KP_DATA_HDR_LEN);
	conn_put(c, p, (int)n);
}

static uint32_t max_data(const struct conn *c)
{
	uint32_t m = c->peer_max - 8;

	return m < READ_CHUNK ? m : READ_CHUNK;
}

/* ---- streams and processes ------------------------------------------------------ */

static void fd_close(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}


static struct stream *stream_find(struct conn *c, uint32_t id)
{
	struct stream *s;

	for (s = c->streams; s; s = s->next)
		if (s->id == id)
			return s;
	return NULL;
}

static struct stream *stream_new(struct conn *c, enum stream_kind kind, uint32_t id)
{
	struct stream *s = calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	s->kind = kind;
	s->id = id;
	s->fd = -1;
	s->in_credit = KP_DEFAULT_WINDOW;
	s->out_credit = c->peer_window;
	s->next = c->streams;
	c->streams = s;
	c->nstreams++;
	return s;
}

/* Forget stream s; an exec stream's process is detached, not stopped. */
static void stream_free(struct conn *c, struct stream *s)
{
	struct stream **pp;

	for (pp = &c->streams; *pp; pp = &(*pp)->next)
		if (*pp == s) {
			*pp = s->next;
			break;
		}
	c->nstreams--;
	if (s->proc) {
		/* Detached: nobody can feed stdin any more. */
		s->proc->st = NULL;
		fd_close(&s->proc->fd[0]);
		s->proc->inlen = 0;
	}
	if (s->fd >= 0)
		close(s->fd);
	free(s);
}

static struct conn *stream_conn(const struct stream *s)
{
	struct conn *c;
	struct stream *t;

	for (c = conns; c; c = c->next)
		for (t = c->streams; t; t = t->next)
			if (t == s)
				return c;
	return NULL;
}

static void proc_free(struct proc *p)
{
	struct proc **pp;

	for (pp = &procs; *pp; pp = &(*pp)->next)
		if (*pp == p) {
			*pp = p->next;
			break;
		}
	fd_close(&p->fd[0]);
	fd_close(&p->fd[1]);
	fd_close(&p->fd[2]);
	free(p->inbuf);
	free(p);
	nprocs--;
}

/* Once the process has exited and its output channels are closed: EXIT, END. */
static void proc_maybe_done(struct proc *p)
{
	struct stream *s = p->st;
	struct kp_recw w;
	struct conn *c;

	if (!p->exited || p->fd[1] >= 0 || p->fd[2] >= 0)
		return;
	if (s && (c = stream_conn(s)) != NULL) {
		rec_begin(&w);
		kp_put_u64(&w, KT_EVENT, KP_EV_EXIT);
		kp_put_i64(&w, KT_CODE, WIFEXITED(p->status) ? WEXITSTATUS(p->status) : -1);
		kp_put_u64(&w, KT_SIGNAL, WIFSIGNALED(p->status) ? (uint64_t)WTERMSIG(p->status) : 0);
		kp_put_bool(&w, KT_CORE, WIFSIGNALED(p->status) && WCOREDUMP(p->status));
		kp_put_bool(&w, KT_OOM, 0);
		rec_send(c, KP_EVENT, KP_F_END, s->id, &w);
		stream_free(c, s);
	}
	proc_free(p);
}

/* Read one chunk of channel ch (1 or 2) of p: DATA while attached, dropped while not. */
static void proc_pump_out(struct proc *p, int ch)
{
	static uint8_t buf[READ_CHUNK];
	struct conn *c = p->st ? stream_conn(p->st) : NULL;
	size_t want = sizeof(buf);
	ssize_t n;

	if (c) {
		if (p->credit[ch] < want)
			want = (size_t)p->credit[ch];
		if (max_data(c) < want)
			want = max_data(c);
		if (!want)
			return;
	}
	n = read(p->fd[ch], buf, want);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		fd_close(&p->fd[ch]);
		if (c) {
			uint8_t f[KP_HDR_LEN + 8];

			conn_put(c, f, kp_enc_eof(f, p->st->id, (uint16_t)ch, 0, p->off[ch]));
		}
		proc_maybe_done(p);
		return;
	}
	if (c) {
		send_data(c, p->st->id, (uint16_t)ch, p->off[ch], buf, (uint32_t)n);
		p->credit[ch] -= (uint64_t)n;
	}
	p->off[ch] += (uint64_t)n;
}

/* Write queued stdin; grant the written bytes back as credit. */
static void proc_pump_in(struct proc *p)
{
	struct conn *c = p->st ? stream_conn(p->st) : NULL;
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
	if (p->in_eof && !p->inlen)
		fd_close(&p->fd[0]);
}

static struct proc *proc_by_handle(uint64_t h)
{
	struct proc *p;

	for (p = procs; p; p = p->next)
		if (p->handle == h)
			return p;
	return NULL;
}

static void reap(int sfd)
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
		proc_maybe_done(p);
	}
}

/* ---- request arguments ----------------------------------------------------------- */

/* A copy of the first STR field tag, NUL-terminated (malloc), or NULL. */
static char *arg_str(const struct kp_frame *f, uint8_t tag, int *bad)
{
	struct kp_field fl;
	char *s;

	if (kp_rec_find(f->payload, f->len, tag, &fl) != 1)
		return NULL;
	if (fl.kind != KP_K_STR) {
		*bad = 1;
		return NULL;
	}
	s = malloc(fl.len + 1);
	if (s)
		kp_field_str(&fl, s, fl.len + 1);
	else
		*bad = 1;
	return s;
}

static uint64_t arg_u64(const struct kp_frame *f, uint8_t tag, uint64_t dflt, int *bad)
{
	struct kp_field fl;
	uint64_t v;
	int b;

	if (kp_rec_find(f->payload, f->len, tag, &fl) != 1)
		return dflt;
	if (fl.kind == KP_K_BOOL && kp_field_bool(&fl, &b) == 0)
		return (uint64_t)b;
	if (kp_field_u64(&fl, &v) == 0)
		return v;
	*bad = 1;
	return dflt;
}

/* Every STR field tag into a NULL-terminated malloc'd vector; count in *n. */
static char **arg_list(const struct kp_frame *f, uint8_t tag, size_t *n, int *bad)
{
	struct kp_rec r;
	struct kp_field fl;
	char **v;
	size_t k = 0;

	*n = 0;
	kp_rec_open(&r, f->payload, f->len);
	while (kp_rec_next(&r, &fl) == 1)
		if (fl.tag == tag)
			k++;
	if (k > MAX_ARGV) {
		*bad = 1;
		return NULL;
	}
	v = calloc(k + 1, sizeof(*v));
	if (!v) {
		*bad = 1;
		return NULL;
	}
	kp_rec_open(&r, f->payload, f->len);
	while (kp_rec_next(&r, &fl) == 1) {
		if (fl.tag != tag)
			continue;
		if (fl.kind != KP_K_STR || !(v[*n] = malloc(fl.len + 1))) {
			*bad = 1;
			break;
		}
		kp_field_str(&fl, v[*n], fl.len + 1);
		(*n)++;
	}
	return v;
}

static void strv_free(char **v)
{
	size_t i;

	for (i = 0; v && v[i]; i++)
		free(v[i]);
	free(v);
}

/* ---- processes -------------------------------------------------------------------- */

/* The child's environment: the agent's, with extra KEY=VALUE entries on top. */
static char **build_env(char **extra, size_t nextra, int clear)
{
	size_t n = 0, i, j, k = 0;
	char **e;

	for (i = 0; !clear && environ[i]; i++)
		n++;
	e = calloc(n + nextra + 1, sizeof(*e));
	if (!e)
		return NULL;
	for (i = 0; !clear && environ[i]; i++) {
		size_t kl = strcspn(environ[i], "=");

		for (j = 0; j < nextra; j++)
			if (strncmp(extra[j], environ[i], kl) == 0 && extra[j][kl] == '=')
				break;
		if (j == nextra)
			e[k++] = environ[i];
	}
	for (j = 0; j < nextra; j++)
		e[k++] = extra[j];
	return e;
}

static void op_exec(struct conn *c, const struct kp_frame *f)
{
	int bad = 0, io_in, io_out, io_err, p_in[2] = { -1, -1 }, p_out[2] = { -1, -1 };
	int p_err[2] = { -1, -1 }, p_ex[2] = { -1, -1 }, child[3], nul = -1, ex[2] = { 0, 0 };
	size_t argc = 0, nenv = 0;
	char **argv = arg_list(f, KT_ARG, &argc, &bad), **envv = arg_list(f, KT_ENV, &nenv, &bad);
	char *shell = arg_str(f, KT_SHELL, &bad), *cwd = arg_str(f, KT_CWD, &bad), **envp = NULL;
	char *sh[] = { "/bin/sh", "-c", shell, NULL };
	uint64_t uid = arg_u64(f, KT_UID, 0, &bad), gid = arg_u64(f, KT_GID, 0, &bad);
	int clear = (int)arg_u64(f, KT_CLEAR_ENV, 0, &bad);
	struct proc *p = NULL;
	struct stream *s;
	struct kp_recw w;
	sigset_t none;
	pid_t pid;
	ssize_t n;

	io_in = (int)arg_u64(f, KT_STDIN, KP_IO_NULL, &bad);
	io_out = (int)arg_u64(f, KT_STDOUT, KP_IO_PIPE, &bad);
	io_err = (int)arg_u64(f, KT_STDERR, KP_IO_PIPE, &bad);
	if (arg_u64(f, KT_PTY, 0, &bad)) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "exec: pty mode is not implemented yet");
		goto out;
	}
	if (bad || (!shell && argc == 0) || io_in > KP_IO_PIPE || io_out > KP_IO_PIPE ||
	    io_err > KP_IO_MERGE || uid > 0xffffffffu || gid > 0xffffffffu) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "exec: wants ARG* or SHELL; STDIN/STDOUT NULL or PIPE, STDERR NULL, PIPE or MERGE");
		goto out;
	}
	if (nprocs >= MAX_PROCS) {
		send_error(c, f->id, KP_ERR_LIMIT, 0, "exec: %d processes already", MAX_PROCS);
		goto out;
	}
	envp = build_env(envv, nenv, clear);
	p = calloc(1, sizeof(*p));
	nul = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (!envp || !p || nul < 0 || pipe2(p_ex, O_CLOEXEC) < 0 ||
	    (io_in == KP_IO_PIPE && pipe2(p_in, O_CLOEXEC) < 0) ||
	    (io_out == KP_IO_PIPE && pipe2(p_out, O_CLOEXEC) < 0) ||
	    (io_err == KP_IO_PIPE && pipe2(p_err, O_CLOEXEC) < 0)) {
		send_error(c, f->id, KP_ERR_OS, errno, "exec: %s", strerror(errno));
		goto out;
	}
	child[0] = io_in == KP_IO_PIPE ? p_in[0] : nul;
	child[1] = io_out == KP_IO_PIPE ? p_out[1] : nul;
	child[2] = io_err == KP_IO_PIPE ? p_err[1] : io_err == KP_IO_MERGE ? child[1] : nul;
	pid = fork();
	if (pid < 0) {
		send_error(c, f->id, KP_ERR_OS, errno, "exec: fork: %s", strerror(errno));
		goto out;
	}
	if (pid == 0) {
		int i, fds[3];

		/* dup first: a later dup2 must not overwrite a source still needed. */
		for (i = 0; i < 3; i++)
			fds[i] = fcntl(child[i], F_DUPFD_CLOEXEC, 3);
		for (i = 0; i < 3; i++)
			dup2(fds[i], i);
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		setsid();
		ex[0] = 1;
		if (cwd && chdir(cwd) < 0)
			goto child_fail;
		ex[0] = 2;
		if ((gid && setgid((gid_t)gid) < 0) || (uid && setuid((uid_t)uid) < 0))
			goto child_fail;
		ex[0] = 3;
		if (shell)
			execve(sh[0], sh, envp);
		else
			execvpe(argv[0], argv, envp);
child_fail:
		ex[1] = errno;
		(void)!write(p_ex[1], ex, sizeof(ex));
		_exit(127);
	}
	close(p_ex[1]);
	p_ex[1] = -1;
	do
		n = read(p_ex[0], ex, sizeof(ex));
	while (n < 0 && errno == EINTR);
	if (n == sizeof(ex)) {
		/* The child is reaped by the SIGCHLD handler as an unknown pid. */
		send_error(c, f->id, KP_ERR_OS, ex[1], "exec: %s: %s",
			   ex[0] == 1 ? cwd : ex[0] == 2 ? "setuid/setgid" : shell ? sh[0] : argv[0],
			   strerror(ex[1]));
		goto out;
	}
	s = stream_new(c, ST_EXEC, f->id);
	if (!s) {
		kill(pid, SIGKILL);
		send_error(c, f->id, KP_ERR_OS, ENOMEM, "exec: out of memory");
		goto out;
	}
	p->pid = pid;
	p->handle = next_handle++;
	p->fd[0] = p_in[1];
	p->fd[1] = p_out[0];
	p->fd[2] = p_err[0];
	p_in[1] = p_out[0] = p_err[0] = -1;
	for (int i = 0; i < 3; i++)
		if (p->fd[i] >= 0)
			fcntl(p->fd[i], F_SETFL, O_NONBLOCK);
	p->credit[1] = p->credit[2] = c->peer_window;
	p->st = s;
	s->proc = p;
	if (p->fd[0] < 0)
		s->in_credit = 0;
	p->next = procs;
	procs = p;
	nprocs++;
	p = NULL;
	rec_begin(&w);
	kp_put_u64(&w, KT_HANDLE, s->proc->handle);
	kp_put_u64(&w, KT_PID, (uint64_t)pid);
	rec_send(c, KP_RESPONSE, 0, f->id, &w);
	/* Channels the process does not have end at once. */
	for (int ch = 1; ch <= 2; ch++)
		if (s->proc->fd[ch] < 0) {
			uint8_t e[KP_HDR_LEN + 8];

			conn_put(c, e, kp_enc_eof(e, f->id, (uint16_t)ch, 0, 0));
		}
out:
	fd_close(&p_in[0]);
	fd_close(&p_in[1]);
	fd_close(&p_out[0]);
	fd_close(&p_out[1]);
	fd_close(&p_err[0]);
	fd_close(&p_err[1]);
	fd_close(&p_ex[0]);
	fd_close(&p_ex[1]);
	fd_close(&nul);
	free(p);
	free(envp);
	strv_free(argv);
	strv_free(envv);
	free(shell);
	free(cwd);
}

static void op_signal(struct conn *c, const struct kp_frame *f)
{
	int bad = 0;
	uint64_t h = arg_u64(f, KT_HANDLE, 0, &bad), sig = arg_u64(f, KT_SIGNAL, SIGTERM, &bad);
	int group = (int)arg_u64(f, KT_GROUP, 0, &bad);
	struct proc *p = proc_by_handle(h);

	if (bad || sig > 64) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "signal: wants HANDLE and SIGNAL (0-64)");
		return;
	}
	if (!p) {
		send_error(c, f->id, KP_ERR_NO_SUCH, 0, "signal: no process with handle %llu",
			   (unsigned long long)h);
		return;
	}
	if (!p->exited && kill(group ? -p->pid : p->pid, (int)sig) < 0) {
		send_error(c, f->id, KP_ERR_OS, errno, "signal: %s", strerror(errno));
		return;
	}
	send_ok(c, f->id);
}

static void op_health(struct conn *c, const struct kp_frame *f)
{
	struct timespec ts;
	struct kp_recw w;

	clock_gettime(CLOCK_BOOTTIME, &ts);
	rec_begin(&w);
	kp_put_u64(&w, KT_UPTIME_NS, (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec);
	kp_put_u64(&w, KT_PROCS, nprocs);
	rec_send(c, KP_RESPONSE, KP_F_END, f->id, &w);
}

/* ---- files ------------------------------------------------------------------------ */

static void os_error(struct conn *c, uint32_t id, const char *op, const char *path, int err)
{
	send_error(c, id, KP_ERR_OS, err, "%s %s: %s", op, path ? path : "", strerror(err));
}

static int64_t ts_ns(const struct statx_timestamp *t)
{
	return (int64_t)t->tv_sec * 1000000000 + t->tv_nsec;
}

static void op_stat(struct conn *c, const struct kp_frame *f)
{
	int bad = 0;
	char *path = arg_str(f, KT_PATH, &bad);
	int nofollow = (int)arg_u64(f, KT_NOFOLLOW, 0, &bad);
	struct statx sx;
	struct kp_recw w;

	if (bad || !path) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "stat: wants PATH");
	} else if (statx(AT_FDCWD, path, nofollow ? AT_SYMLINK_NOFOLLOW : 0,
			 STATX_BASIC_STATS | STATX_BTIME, &sx) < 0) {
		os_error(c, f->id, "stat", path, errno);
	} else {
		rec_begin(&w);
		kp_put_u64(&w, KT_TYPE, sx.stx_mode & S_IFMT);
		kp_put_u64(&w, KT_MODE, sx.stx_mode & 07777);
		kp_put_u64(&w, KT_SIZE, sx.stx_size);
		kp_put_u64(&w, KT_DEV, makedev(sx.stx_dev_major, sx.stx_dev_minor));
		kp_put_u64(&w, KT_INO, sx.stx_ino);
		kp_put_u64(&w, KT_NLINK, sx.stx_nlink);
		kp_put_u64(&w, KT_UID, sx.stx_uid);
		kp_put_u64(&w, KT_GID, sx.stx_gid);
		kp_put_u64(&w, KT_RDEV, makedev(sx.stx_rdev_major, sx.stx_rdev_minor));
		kp_put_u64(&w, KT_BLKSIZE, sx.stx_blksize);
		kp_put_u64(&w, KT_BLOCKS, sx.stx_blocks);
		kp_put_i64(&w, KT_ATIME, ts_ns(&sx.stx_atime));
		kp_put_i64(&w, KT_MTIME, ts_ns(&sx.stx_mtime));
		kp_put_i64(&w, KT_CTIME, ts_ns(&sx.stx_ctime));
		if (sx.stx_mask & STATX_BTIME)
			kp_put_i64(&w, KT_BTIME, ts_ns(&sx.stx_btime));
		rec_send(c, KP_RESPONSE, KP_F_END, f->id, &w);
	}
	free(path);
}

static void op_readdir(struct conn *c, const struct kp_frame *f)
{
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
	rec_begin(&w);
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
			rec_begin(&w);
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

static void op_mkdir(struct conn *c, const struct kp_frame *f)
{
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

static void op_remove(struct conn *c, const struct kp_frame *f)
{
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

static void op_rename(struct conn *c, const struct kp_frame *f)
{
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

/*
 * open(2) that cannot block the agent: a FIFO or socket is refused (its
 * reads and writes would stall PID 1); other non-regular files stay
 * non-blocking, so a terminal that has nothing to read is an error, not a hang.
 * Returns the fd, or -1 after sending the ERROR.
 */
static int open_nonblock(struct conn *c, uint32_t id, const char *path, int flags, mode_t mode)
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

static void op_file_write(struct conn *c, const struct kp_frame *f)
{
	int bad = 0, flags = O_WRONLY | O_CLOEXEC, fd;
	char *path = arg_str(f, KT_PATH, &bad);
	mode_t mode = (mode_t)arg_u64(f, KT_MODE, 0644, &bad) & 07777;
	uint64_t off = arg_u64(f, KT_OFFSET, UINT64_MAX, &bad);
	struct kp_recw w;
	struct stream *s;

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
	s = stream_new(c, ST_FWRITE, f->id);
	if (!s) {
		close(fd);
		send_error(c, f->id, KP_ERR_OS, ENOMEM, "file write: out of memory");
		goto out;
	}
	s->fd = fd;
	rec_begin(&w);
	rec_send(c, KP_RESPONSE, 0, f->id, &w);
out:
	free(path);
}

static void op_file_read(struct conn *c, const struct kp_frame *f)
{
	int bad = 0, fd;
	char *path = arg_str(f, KT_PATH, &bad);
	uint64_t off = arg_u64(f, KT_OFFSET, 0, &bad), len = arg_u64(f, KT_LENGTH, UINT64_MAX, &bad);
	struct kp_recw w;
	struct stream *s;
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
	s = stream_new(c, ST_FREAD, f->id);
	if (!s) {
		close(fd);
		send_error(c, f->id, KP_ERR_OS, ENOMEM, "file read: out of memory");
		goto out;
	}
	s->fd = fd;
	s->remain = len;
	s->out_off = off;
	s->in_credit = 0;
	rec_begin(&w);
	kp_put_u64(&w, KT_SIZE, (uint64_t)st.st_size);
	rec_send(c, KP_RESPONSE, 0, f->id, &w);
out:
	free(path);
}

/* Send what credit allows of a file read; EOF|END at the end. */
static void fread_pump(struct conn *c, struct stream *s)
{
	static uint8_t buf[READ_CHUNK];

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
			os_error(c, s->id, "read", "", errno);
			stream_free(c, s);
			return;
		}
		if (n == 0) {
			uint8_t e[KP_HDR_LEN + 8];

			conn_put(c, e, kp_enc_eof(e, s->id, KP_CHAN_OUT, KP_F_END, s->out_off));
			stream_free(c, s);
			return;
		}
		send_data(c, s->id, KP_CHAN_OUT, s->out_off, buf, (uint32_t)n);
		s->out_off += (uint64_t)n;
		s->out_credit -= (uint64_t)n;
		s->remain -= (uint64_t)n;
	}
}

/* ---- frames from the host ----------------------------------------------------------- */

static void handle_request(struct conn *c, const struct kp_frame *f)
{
	int bad = 0;
	uint64_t op = arg_u64(f, KT_OP, 0, &bad);

	if (stream_find(c, f->id)) {
		send_error(c, f->id, KP_ERR_ID_IN_USE, 0, "request id %u is live", f->id);
		return;
	}
	if (c->nstreams >= MAX_IDS) {
		send_error(c, f->id, KP_ERR_LIMIT, 0, "%d live requests already", MAX_IDS);
		return;
	}
	if (bad || !op) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "request without a U64 OP");
		return;
	}
	switch (op) {
	case KP_OP_HEALTH:	op_health(c, f); break;
	case KP_OP_EXEC:	op_exec(c, f); break;
	case KP_OP_SIGNAL:	op_signal(c, f); break;
	case KP_OP_STAT:	op_stat(c, f); break;
	case KP_OP_READDIR:	op_readdir(c, f); break;
	case KP_OP_MKDIR:	op_mkdir(c, f); break;
	case KP_OP_REMOVE:	op_remove(c, f); break;
	case KP_OP_RENAME:	op_rename(c, f); break;
	case KP_OP_FILE_WRITE:	op_file_write(c, f); break;
	case KP_OP_FILE_READ:	op_file_read(c, f); break;
	default:
		send_error(c, f->id, KP_ERR_UNKNOWN_OP, 0, "unknown op 0x%llx", (unsigned long long)op);
	}
}

/* DATA or EOF on channel 0 of stream s. */
static void stream_input(struct conn *c, struct stream *s, const struct kp_frame *f)
{
	const uint8_t *data = NULL;
	uint64_t off;
	uint32_t n = 0;
	uint8_t e[KP_HDR_LEN + 8];

	if (f->type == KP_DATA) {
		kp_parse_data(f, &off, &data, &n);
	} else {
		kp_parse_u64(f, &off);
	}
	if (f->channel != KP_CHAN_IN || s->kind == ST_FREAD || (s->kind == ST_EXEC && s->proc->in_eof)) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "no input channel %u on this stream", f->channel);
		goto end;
	}
	if (off != s->in_off) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "channel 0 offset %llu, expected %llu",
			   (unsigned long long)off, (unsigned long long)s->in_off);
		goto end;
	}
	if (n > s->in_credit) {
		send_error(c, f->id, KP_ERR_CREDIT, 0, "%u bytes beyond the window", n);
		goto end;
	}
	s->in_off += n;
	s->in_credit -= n;
	if (s->kind == ST_FWRITE) {
		while (n) {
			ssize_t w = write(s->fd, data, n);

			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0) {
				os_error(c, f->id, "write", "", w < 0 ? errno : ENOSPC);
				goto end;
			}
			data += w;
			n -= (uint32_t)w;
		}
		if (f->type == KP_DATA) {
			s->in_credit += f->len - 8;
			conn_put(c, e, kp_enc_window(e, f->id, 0, f->len - 8));
		} else {
			struct kp_recw w;
			struct stat st;

			if (fsync(s->fd) < 0 || fstat(s->fd, &st) < 0) {
				os_error(c, f->id, "fsync", "", errno);
				goto end;
			}
			rec_begin(&w);
			kp_put_u64(&w, KT_SIZE, (uint64_t)st.st_size);
			rec_send(c, KP_RESPONSE, KP_F_END, f->id, &w);
			goto end_quiet;
		}
		return;
	}
	/* exec: queue for the process's stdin (bounded by the window granted) */
	if (n) {
		struct proc *p = s->proc;
		uint8_t *nb = realloc(p->inbuf, p->inlen + n);

		if (!nb) {
			send_error(c, f->id, KP_ERR_OS, ENOMEM, "stdin: out of memory");
			goto end;
		}
		p->inbuf = nb;
		memcpy(p->inbuf + p->inlen, data, n);
		p->inlen += n;
		if (p->fd[0] < 0) {	/* stdin already gone: the bytes are consumed */
			s->in_credit += p->inlen;
			conn_put(c, e, kp_enc_window(e, f->id, 0, (uint32_t)p->inlen));
			p->inlen = 0;
		}
	}
	if (f->type == KP_EOF)
		s->proc->in_eof = 1;
	proc_pump_in(s->proc);
	return;
end:
	/* ERROR ends the id; an exec's process runs on, detached. */
end_quiet:
	stream_free(c, s);
}

/* Returns -1 when the connection must close after flushing. */
static int handle_frame(struct conn *c, const struct kp_frame *f)
{
	struct stream *s;
	uint8_t b[KP_HDR_LEN + 8];

	if (!c->got_hello) {
		struct kp_field fl;
		uint64_t v;

		if (f->type != KP_HELLO) {
			send_error(c, 0, KP_ERR_PROTO, 0, "%s before HELLO", kp_type_name(f->type));
			return -1;
		}
		c->got_hello = 1;
		if (kp_rec_find(f->payload, f->len, KT_VERSION, &fl) == 1 &&
		    (kp_field_u64(&fl, &v) || v < 1)) {
			send_error(c, 0, KP_ERR_VERSION, 0, "no common protocol version (agent speaks %d)", KP_VERSION);
			return -1;
		}
		if (kp_rec_find(f->payload, f->len, KT_WINDOW, &fl) == 1 && kp_field_u64(&fl, &v) == 0 &&
		    v <= 0xffffffffu)
			c->peer_window = (uint32_t)v;
		if (kp_rec_find(f->payload, f->len, KT_MAX_FRAME, &fl) == 1 && kp_field_u64(&fl, &v) == 0) {
			if (v < KP_MIN_PAYLOAD_CAP) {
				send_error(c, 0, KP_ERR_PROTO, 0, "max_frame %llu below %u",
					   (unsigned long long)v, KP_MIN_PAYLOAD_CAP);
				return -1;
			}
			c->peer_max = v > KP_MAX_PAYLOAD ? KP_MAX_PAYLOAD : (uint32_t)v;
		}
		return 0;
	}
	switch (f->type) {
	case KP_HELLO:
		send_error(c, 0, KP_ERR_PROTO, 0, "second HELLO");
		return -1;
	case KP_PING: {
		uint64_t v;

		kp_parse_u64(f, &v);
		conn_put(c, b, kp_enc_ping(b, KP_PONG, v));
		return 0;
	}
	case KP_PONG:
		return 0;
	case KP_REQUEST:
		handle_request(c, f);
		return 0;
	case KP_CANCEL:
		s = stream_find(c, f->id);
		if (!s)
			return 0;	/* raced with the request's end */
		if (f->channel == KP_CHAN_ALL) {
			send_error(c, f->id, KP_ERR_CANCELLED, 0, "cancelled");
			stream_free(c, s);
		}
		return 0;	/* cancelling one channel: not yet (the output keeps its credit) */
	case KP_DATA:
	case KP_EOF:
		/* A stream that already ended: drop, the bytes may have been in flight. */
		s = stream_find(c, f->id);
		if (s)
			stream_input(c, s, f);
		return 0;
	case KP_WINDOW: {
		uint32_t inc;
		uint64_t *cr = NULL;

		kp_parse_window(f, &inc);
		s = stream_find(c, f->id);
		if (!s)
			return 0;
		if (s->kind == ST_EXEC && f->channel)
			cr = &s->proc->credit[f->channel];
		else if (s->kind == ST_FREAD && f->channel == KP_CHAN_OUT)
			cr = &s->out_credit;
		if (!cr)
			return 0;
		if (inc == 0 || *cr + inc > 0xffffffffu) {
			send_error(c, 0, KP_ERR_PROTO, 0, "WINDOW increment %u on id %u overflows", inc, f->id);
			return -1;
		}
		*cr += inc;
		return 0;
	}
	default:	/* RESPONSE, ERROR, EVENT: only the agent sends those */
		send_error(c, 0, KP_ERR_PROTO, 0, "%s from the host", kp_type_name(f->type));
		return -1;
	}
}

/* ---- connections ------------------------------------------------------------------ */

static void conn_free(struct conn *c)
{
	struct conn **pp;

	while (c->streams)
		stream_free(c, c->streams);
	for (pp = &conns; *pp; pp = &(*pp)->next)
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	close(c->fd);
	free(c->rxbuf);
	free(c->out.p);
	free(c);
	nconns--;
}

/* Stop reading requests, flush the queue, then shutdown(SHUT_WR) (vsock's
 * close() would drop queued bytes) and wait for the host to close. */
static void conn_close(struct conn *c)
{
	while (c->streams)
		stream_free(c, c->streams);
	if (!c->closing)
		c->closing = 1;
}

static void conn_accept(int lfd)
{
	struct conn *c;
	int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

	if (fd < 0)
		return;
	if (nconns >= MAX_CONNS || !(c = calloc(1, sizeof(*c))) || !(c->rxbuf = malloc(RX_CAP))) {
		if (nconns < MAX_CONNS)
			free(c);
		close(fd);
		return;
	}
	c->fd = fd;
	c->peer_window = KP_DEFAULT_WINDOW;
	c->peer_max = KP_MIN_PAYLOAD_CAP;
	kp_dec_init(&c->dec, c->rxbuf, RX_CAP);
	c->next = conns;
	conns = c;
	nconns++;
	conn_put(c, scratch, kp_enc_hello(scratch, sizeof(scratch), KP_DEFAULT_WINDOW, RX_CAP, AGENT_NAME));
}

static void conn_read(struct conn *c)
{
	static uint8_t buf[65536];
	ssize_t n = read(c->fd, buf, sizeof(buf));
	size_t off = 0;

	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		/* The host went away: its streams end, its processes run on. */
		conn_free(c);
		return;
	}
	if (c->closing)
		return;		/* discard input while flushing */
	while (off < (size_t)n && !c->closing) {
		struct kp_frame f;
		size_t used;
		int ret = kp_dec_feed(&c->dec, buf + off, (size_t)n - off, &used, &f);

		off += used;
		if (ret < 0) {
			send_error(c, 0, KP_ERR_PROTO, 0, "bad frame: %s", kp_strerror(ret));
			conn_close(c);
		} else if (ret == 1 && handle_frame(c, &f) < 0) {
			conn_close(c);
		} else if (ret == 0) {
			break;
		}
	}
}

/* Returns -1 when c was freed. */
static int conn_write(struct conn *c)
{
	while (c->out.len) {
		ssize_t n = send(c->fd, c->out.p + c->out.head, c->out.len, MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return 0;
		if (n <= 0) {
			conn_free(c);
			return -1;
		}
		c->out.head += (size_t)n;
		c->out.len -= (size_t)n;
	}
	c->out.head = 0;
	if (c->closing == 1) {
		shutdown(c->fd, SHUT_WR);
		c->closing = 2;
		clock_gettime(CLOCK_MONOTONIC, &c->closed_at);
	}
	return 0;
}

/* ---- the loop --------------------------------------------------------------------- */

enum { PF_LISTEN, PF_SIGNAL, PF_CONN, PF_PROC };

int agent_main(void)
{
	struct sockaddr_vm addr = {
		.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = KP_VSOCK_PORT,
	};
	static struct pollfd pfd[2 + MAX_CONNS + 3 * MAX_PROCS];
	static void *obj[2 + MAX_CONNS + 3 * MAX_PROCS];
	static uint8_t kind[2 + MAX_CONNS + 3 * MAX_PROCS], chan[2 + MAX_CONNS + 3 * MAX_PROCS];
	sigset_t chld;
	int lfd, sfd;

	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, NULL);
	sfd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
	lfd = socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (sfd < 0 || lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0 ||
	    listen(lfd, 64) < 0) {
		int err = errno;

		fprintf(stderr, "kiln-agent: vsock port %d: %s\n", KP_VSOCK_PORT, strerror(err));
		return -err;
	}
	fprintf(stderr, "kiln-agent: ready\n");

	for (;;) {
		struct conn *c, *cn;
		struct proc *p;
		struct stream *s, *sn;
		nfds_t n = 0, i;
		unsigned nclosing;
		struct timespec now;

		/* Producers without an fd to wait on: file reads with credit. */
		for (c = conns; c; c = c->next)
			for (s = c->streams; s; s = sn) {
				sn = s->next;
				if (s->kind == ST_FREAD)
					fread_pump(c, s);
			}

		pfd[n] = (struct pollfd){ .fd = lfd, .events = POLLIN };
		kind[n++] = PF_LISTEN;
		pfd[n] = (struct pollfd){ .fd = sfd, .events = POLLIN };
		kind[n++] = PF_SIGNAL;
		nclosing = 0;
		for (c = conns; c; c = c->next) {
			short ev = 0;

			nclosing += c->closing == 2;
			if (c->out.len < OUTQ_HIGH || c->closing)
				ev |= POLLIN;
			if (c->out.len)
				ev |= POLLOUT;
			pfd[n] = (struct pollfd){ .fd = c->fd, .events = ev };
			obj[n] = c;
			kind[n++] = PF_CONN;
		}
		for (p = procs; p; p = p->next) {
			struct conn *pc = p->st ? stream_conn(p->st) : NULL;

			for (int ch = 0; ch < 3; ch++) {
				short ev = 0;

				if (p->fd[ch] < 0)
					continue;
				if (ch == 0 && p->inlen)
					ev = POLLOUT;
				else if (ch && (!pc || (p->credit[ch] && pc->out.len < OUTQ_HIGH)))
					ev = POLLIN;
				if (!ev)
					continue;
				pfd[n] = (struct pollfd){ .fd = p->fd[ch], .events = ev };
				obj[n] = p;
				chan[n] = (uint8_t)ch;
				kind[n++] = PF_PROC;
			}
		}

		if (poll(pfd, n, nclosing ? 1000 : -1) < 0)
			continue;

		/*
		 * Objects may be freed while handling: connections and processes
		 * are looked up again by pointer before use.
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
				for (c = conns; c && c != obj[i]; c = c->next)
					;
				if (!c || c->fd != pfd[i].fd)
					break;
				if ((pfd[i].revents & POLLOUT) && conn_write(c) < 0)
					break;
				if (pfd[i].revents & (POLLIN | POLLHUP | POLLERR))
					conn_read(c);
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
		clock_gettime(CLOCK_MONOTONIC, &now);
		for (c = conns; c; c = cn) {
			cn = c->next;
			if (c->out.len || c->closing == 1)
				conn_write(c);
			else if (c->closing == 2 && now.tv_sec - c->closed_at.tv_sec > CLOSE_GRACE_S)
				conn_free(c);	/* the host never closed its end */
		}
	}
}
