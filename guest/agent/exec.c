/* kiln-agent: EXEC, ATTACH, WAIT and the other operations on processes. */
#include "agent_int.h"

/* ---- processes -------------------------------------------------------------------- */

/* The child's environment: the default one, with extra KEY=VALUE entries on top. */
static char **build_env(struct agent *a, char **extra, size_t nextra, int clear)
{
	char **envs = a->envs;
	size_t n = clear ? 0 : a->nenvs, i, j, k = 0;
	char **e;

	e = calloc(n + nextra + 1, sizeof(*e));
	if (!e)
		return NULL;
	for (i = 0; i < n; i++) {
		size_t kl = strcspn(envs[i], "=");

		for (j = 0; j < nextra; j++)
			if (strncmp(extra[j], envs[i], kl) == 0 && extra[j][kl] == '=')
				break;
		if (j == nextra)
			e[k++] = envs[i];
	}
	for (j = 0; j < nextra; j++)
		e[k++] = extra[j];
	return e;
}

/* argv (or the shell line) as NUL-separated strings for PROC_LIST, cut at CMD_MAX bytes. */
static char *cmd_copy(char **argv, size_t argc, const char *shell, size_t *len)
{
	const char *sh[] = { "/bin/sh", "-c", shell };
	char *b = malloc(CMD_MAX);
	size_t i, n = 0, k = shell ? 3 : argc;

	*len = 0;
	if (!b)
		return NULL;
	for (i = 0; i < k; i++) {
		const char *a = shell ? sh[i] : argv[i];
		size_t l = strlen(a) + 1;

		if (n + l > CMD_MAX)
			break;
		memcpy(b + n, a, l);
		n += l;
	}
	*len = n;
	return b;
}

/* A pseudo-terminal of rows x cols: the master (non-blocking) in *master, the terminal in *term. */
static int pty_open(unsigned rows, unsigned cols, int *master, int *term)
{
	struct winsize ws = { .ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols };
	char name[64];
	int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC), t, err;

	if (m < 0)
		return -errno;
	if (grantpt(m) < 0 || unlockpt(m) < 0 || ptsname_r(m, name, sizeof(name)) != 0)
		goto fail;
	t = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (t < 0)
		goto fail;
	if (ioctl(t, TIOCSWINSZ, &ws) < 0) {
		err = errno;
		close(t);
		close(m);
		return -err;
	}
	*master = m;
	*term = t;
	return 0;
fail:
	err = errno;
	close(m);
	return -err;
}

/* EXEC's arguments. */
#define ID_UNSET	UINT64_MAX	/* no KT_UID / KT_GID in the request */
_Static_assert(sizeof(gid_t) == sizeof(uint32_t), "struct agent_user keeps gids as uint32_t");
struct exec_args {
	char **argv, **envv;	/* KT_ARG*, KT_ENV* */
	size_t argc, nenv;
	char *shell, *cwd;
	uint64_t uid, gid, rows, cols, ring, ovf;
	int clear, pty;
	int io[3];		/* KT_STDIN, KT_STDOUT, KT_STDERR: KP_IO_* */
};

/* Read and check EXEC's arguments: 0, or -1 after the ERROR. */
static int exec_args_read(struct conn *c, const struct kp_frame *f, struct exec_args *x)
{
	int bad = 0;

	x->argv = arg_list(f, KT_ARG, &x->argc, &bad);
	x->envv = arg_list(f, KT_ENV, &x->nenv, &bad);
	x->shell = arg_str(f, KT_SHELL, &bad);
	x->cwd = arg_str(f, KT_CWD, &bad);
	x->uid = arg_u64(f, KT_UID, ID_UNSET, &bad);
	x->gid = arg_u64(f, KT_GID, ID_UNSET, &bad);
	x->clear = (int)arg_u64(f, KT_CLEAR_ENV, 0, &bad);
	x->pty = (int)arg_u64(f, KT_PTY, 0, &bad);
	x->rows = arg_u64(f, KT_ROWS, 24, &bad);
	x->cols = arg_u64(f, KT_COLS, 80, &bad);
	x->ring = arg_u64(f, KT_RING, RING_DEFAULT, &bad);
	x->ovf = arg_u64(f, KT_OVERFLOW, KP_OVF_BLOCK, &bad);
	x->io[0] = (int)arg_u64(f, KT_STDIN, KP_IO_NULL, &bad);
	x->io[1] = (int)arg_u64(f, KT_STDOUT, KP_IO_PIPE, &bad);
	x->io[2] = (int)arg_u64(f, KT_STDERR, KP_IO_PIPE, &bad);
	if (bad || (!x->shell && x->argc == 0) || x->io[0] > KP_IO_PIPE || x->io[1] > KP_IO_PIPE ||
	    x->io[2] > KP_IO_MERGE || (x->uid != ID_UNSET && x->uid > 0xffffffffu) ||
	    (x->gid != ID_UNSET && x->gid > 0xffffffffu)) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "exec: wants ARG* or SHELL; STDIN/STDOUT NULL or PIPE, STDERR NULL, PIPE or MERGE");
		return -1;
	}
	if (x->ring < RING_MIN || x->ring > RING_MAX || x->ovf > KP_OVF_DROP) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "exec: RING must be %u to %u bytes, OVERFLOW BLOCK (0) or DROP (1)",
			   RING_MIN, RING_MAX);
		return -1;
	}
	if (x->pty && (x->rows < 1 || x->rows > 65535 || x->cols < 1 || x->cols > 65535)) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "exec: ROWS and COLS must be 1 to 65535");
		return -1;
	}
	return 0;
}

static void exec_args_free(struct exec_args *x)
{
	strv_free(x->argv);
	strv_free(x->envv);
	free(x->shell);
	free(x->cwd);
}

/* Whether the process table takes one more: 0, or -1 after the ERROR. */
static int exec_admit(struct conn *c, const struct kp_frame *f)
{
	struct agent *a = c->ag;

	proc_evict(a);		/* those a closed connection detached since the last exit */
	if (a->nlive >= MAX_PROCS) {
		send_error(c, f->id, KP_ERR_LIMIT, 0, "exec: %d processes already (SIGNAL some, or wait for them)",
			   MAX_PROCS);
		return -1;
	}
	if (a->nlive + a->nexited >= MAX_PROC_OBJS) {
		send_error(c, f->id, KP_ERR_LIMIT, 0, "exec: %d processes held already (%u exited, their pipes "
			   "still open or kept for WAIT): end their streams (CANCEL) or RELEASE some",
			   MAX_PROC_OBJS, a->nexited);
		return -1;
	}
	if (a->stopping.active) {
		send_error(c, f->id, KP_ERR_OS, ESHUTDOWN, "exec: the sandbox is shutting down");
		return -1;
	}
	return 0;
}

/*
 * The descriptors of a start: the agent's ends (in[1], out[0], err[0]; a
 * pty's master in in[1] and out[0]), the child's stdio (child[]), and ex, a
 * pipe on which a child that cannot exec reports where and why.
 */
struct exec_fds {
	int in[2], out[2], err[2], ex[2];
	int nul, pty_m, pty_t;
	int child[3];
};

/* Open x's pipes or pseudo-terminal: 0, or -1 after the ERROR. */
static int exec_fds_open(struct conn *c, const struct kp_frame *f, const struct exec_args *x, struct exec_fds *d)
{
	int ret;

	d->nul = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (d->nul < 0 || pipe2(d->ex, O_CLOEXEC) < 0 ||
	    (!x->pty && x->io[0] == KP_IO_PIPE && pipe2(d->in, O_CLOEXEC) < 0) ||
	    (!x->pty && x->io[1] == KP_IO_PIPE && pipe2(d->out, O_CLOEXEC) < 0) ||
	    (!x->pty && x->io[2] == KP_IO_PIPE && pipe2(d->err, O_CLOEXEC) < 0)) {
		send_error(c, f->id, KP_ERR_OS, errno, "exec: %s", strerror(errno));
		return -1;
	}
	if (!x->pty) {
		d->child[0] = x->io[0] == KP_IO_PIPE ? d->in[0] : d->nul;
		d->child[1] = x->io[1] == KP_IO_PIPE ? d->out[1] : d->nul;
		d->child[2] = x->io[2] == KP_IO_PIPE ? d->err[1] : x->io[2] == KP_IO_MERGE ? d->child[1] : d->nul;
		return 0;
	}
	ret = pty_open((unsigned)x->rows, (unsigned)x->cols, &d->pty_m, &d->pty_t);
	if (ret == 0 && (d->in[1] = fcntl(d->pty_m, F_DUPFD_CLOEXEC, 3)) < 0)
		ret = -errno;
	if (ret < 0) {
		send_error(c, f->id, KP_ERR_OS, -ret, "exec: pseudo-terminal: %s", strerror(-ret));
		return -1;
	}
	d->out[0] = d->pty_m;
	d->pty_m = -1;
	d->child[0] = d->child[1] = d->child[2] = d->pty_t;
	return 0;
}

static void exec_fds_close(struct exec_fds *d)
{
	int *fds[] = { &d->in[0], &d->in[1], &d->out[0], &d->out[1], &d->err[0], &d->err[1],
		       &d->ex[0], &d->ex[1], &d->pty_m, &d->pty_t, &d->nul };
	size_t i;

	for (i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
		fd_close(fds[i]);
}

/*
 * In the child: take the command's credentials. With neither UID nor GID
 * asked, the agent's default user (kiln.user=) with its groups, else root
 * as the agent is. An asked UID other than 0 also drops root's groups to
 * the one GID, so no root group survives into a user's process.
 */
static int exec_creds(const struct agent *a, const struct exec_args *x)
{
	gid_t gid;

	if (x->uid == ID_UNSET && x->gid == ID_UNSET) {
		if (!a->has_user)
			return 0;
		return setgroups(a->user.ngroups, (const gid_t *)a->user.groups) < 0 || setgid(a->user.gid) < 0 ||
		       setuid(a->user.uid) < 0 ? -1 : 0;
	}
	if (x->gid != ID_UNSET && setgid((gid_t)x->gid) < 0)
		return -1;
	if (x->uid == ID_UNSET || x->uid == 0)
		return 0;
	gid = getgid();
	return setgroups(1, &gid) < 0 || setuid((uid_t)x->uid) < 0 ? -1 : 0;
}

/* In the child: stdio, signals, limits, a session, then exec; a failure goes up d->ex. */
static _Noreturn void exec_child(struct agent *a, const struct exec_args *x, const struct exec_fds *d,
				 char **envp)
{
	char *sh[] = { "/bin/sh", "-c", x->shell, NULL };
	int i, fds[3], ex[2] = { 0, 0 };
	sigset_t none;

	/* dup first: a later dup2 must not overwrite a source still needed. */
	for (i = 0; i < 3; i++)
		fds[i] = fcntl(d->child[i], F_DUPFD_CLOEXEC, 3);
	for (i = 0; i < 3; i++)
		dup2(fds[i], i);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	if (a->child_nofile.rlim_max)
		(void)setrlimit(RLIMIT_NOFILE, &a->child_nofile);
	setsid();
	/* The terminal becomes the new session's controlling tty: job control, SIGWINCH. */
	if (x->pty)
		ioctl(0, TIOCSCTTY, 0);
	ex[0] = 1;
	if (x->cwd && chdir(x->cwd) < 0)
		goto fail;
	ex[0] = 2;
	if (exec_creds(a, x) < 0)
		goto fail;
	ex[0] = 3;
	if (x->shell)
		execve(sh[0], sh, envp);
	else
		execvpe(x->argv[0], x->argv, envp);
fail:
	ex[1] = errno;
	(void)!write(d->ex[1], ex, sizeof(ex));
	_exit(127);
}

/* Fork and exec x: the child's pid, or -1 after the ERROR (a failed exec included). */
static pid_t exec_spawn(struct conn *c, const struct kp_frame *f, const struct exec_args *x, struct exec_fds *d)
{
	char **envp = build_env(c->ag, x->envv, x->nenv, x->clear);
	int ex[2] = { 0, 0 };
	pid_t pid;
	ssize_t n;

	if (!envp) {
		send_error(c, f->id, KP_ERR_OS, ENOMEM, "exec: %s", strerror(ENOMEM));
		return -1;
	}
	pid = fork();
	if (pid == 0)
		exec_child(c->ag, x, d, envp);
	free(envp);
	if (pid < 0) {
		send_error(c, f->id, KP_ERR_OS, errno, "exec: fork: %s", strerror(errno));
		return -1;
	}
	fd_close(&d->ex[1]);
	do
		n = read(d->ex[0], ex, sizeof(ex));
	while (n < 0 && errno == EINTR);
	if (n == sizeof(ex)) {
		/* The child is reaped by the SIGCHLD handler as an unknown pid. */
		send_error(c, f->id, KP_ERR_OS, ex[1], "exec: %s: %s",
			   ex[0] == 1 ? x->cwd : ex[0] == 2 ? "setuid/setgid" : x->shell ? "/bin/sh" : x->argv[0],
			   strerror(ex[1]));
		return -1;
	}
	return pid;
}

/* The process p started as pid, with d's ends and stream s: into the table, and answered. */
static void exec_started(struct conn *c, const struct exec_args *x, struct exec_fds *d, struct proc *p,
			 struct exec_stream *s, pid_t pid)
{
	struct agent *a = c->ag;
	struct kp_recw w;
	int i;

	p->pid = pid;
	p->handle = a->next_handle++;
	p->pty = x->pty;
	p->drop = x->ovf == KP_OVF_DROP;
	p->ring_cap = (size_t)x->ring;
	p->cmd = cmd_copy(x->argv, x->argc, x->shell, &p->cmdlen);
	p->fd[0] = d->in[1];
	p->fd[1] = d->out[0];
	p->fd[2] = d->err[0];
	d->in[1] = d->out[0] = d->err[0] = -1;
	for (i = 0; i < 3; i++)
		if (p->fd[i] >= 0)
			fcntl(p->fd[i], F_SETFL, O_NONBLOCK);
	p->st = s;
	s->proc = p;
	s->credit[1] = s->credit[2] = c->peer_window;
	if (p->fd[0] < 0)
		s->s.in_credit = 0;
	p->next = a->procs;
	a->procs = p;
	a->nlive++;
	rec_begin(c, &w);
	kp_put_u64(&w, KT_HANDLE, p->handle);
	kp_put_u64(&w, KT_PID, (uint64_t)pid);
	rec_send(c, KP_RESPONSE, 0, s->s.id, &w);
	proc_flush(p);		/* channels the process does not have end at once */
}

void op_exec(struct conn *c, const struct req *r)
{
	const struct kp_frame *f = r->f;
	struct exec_args x = { 0 };
	struct exec_fds d = {
		.in = { -1, -1 }, .out = { -1, -1 }, .err = { -1, -1 }, .ex = { -1, -1 },
		.nul = -1, .pty_m = -1, .pty_t = -1,
	};
	struct proc *p = NULL;
	struct exec_stream *s;
	pid_t pid;

	if (exec_args_read(c, f, &x) < 0 || exec_admit(c, f) < 0)
		goto out;
	p = calloc(1, sizeof(*p));
	if (!p) {
		send_error(c, f->id, KP_ERR_OS, ENOMEM, "exec: %s", strerror(ENOMEM));
		goto out;
	}
	if (exec_fds_open(c, f, &x, &d) < 0)
		goto out;
	pid = exec_spawn(c, f, &x, &d);
	if (pid < 0)
		goto out;
	s = (struct exec_stream *)stream_new(c, &exec_stream_ops, f->id, "exec");
	if (!s) {
		kill(pid, SIGKILL);
		goto out;
	}
	exec_started(c, &x, &d, p, s, pid);
	p = NULL;
out:
	exec_fds_close(&d);
	free(p);
	exec_args_free(&x);
}

static struct proc *proc_arg(struct conn *c, const struct kp_frame *f, const char *op, int *bad)
{
	uint64_t h = arg_u64(f, KT_HANDLE, 0, bad);
	struct proc *p;

	if (*bad || !h) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "%s: wants HANDLE (U64)", op);
		return NULL;
	}
	p = proc_by_handle(c->ag, h);
	if (!p)
		send_error(c, f->id, KP_ERR_NO_SUCH, 0, "%s: no process with handle %llu (see PROC_LIST)", op,
			   (unsigned long long)h);
	return p;
}

/*
 * ATTACH: take over the output of a process from the given offsets (absent:
 * the oldest byte the ring holds), and optionally its stdin. A stream already
 * attached ends with ERROR DETACHED.
 */
void op_attach(struct conn *c, const struct req *r)
{
	const struct kp_frame *f = r->f;
	int bad = 0, ch;
	struct proc *p = proc_arg(c, f, "attach", &bad);
	uint64_t off[3] = { 0, arg_u64(f, KT_OUT_OFFSET, UINT64_MAX, &bad), arg_u64(f, KT_ERR_OFFSET, UINT64_MAX, &bad) };
	uint64_t io_in = arg_u64(f, KT_STDIN, KP_IO_NULL, &bad);
	struct exec_stream *s;
	struct kp_recw w;

	if (!p)
		return;
	if (bad || io_in > KP_IO_PIPE) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "attach: OUT_OFFSET and ERR_OFFSET U64, STDIN NULL or PIPE");
		return;
	}
	for (ch = 1; ch <= 2; ch++)
		if (off[ch] != UINT64_MAX && off[ch] > p->ring[ch].end) {
			send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "attach: %s offset %llu is beyond the %llu bytes written",
				   ch == 1 ? "stdout" : "stderr", (unsigned long long)off[ch],
				   (unsigned long long)p->ring[ch].end);
			return;
		}
	if (io_in == KP_IO_PIPE && (p->fd[0] < 0 || p->in_eof)) {
		send_error(c, f->id, KP_ERR_OS, EPIPE, "attach: the stdin of process %llu is closed",
			   (unsigned long long)p->handle);
		return;
	}
	s = (struct exec_stream *)stream_new(c, &exec_stream_ops, f->id, "attach");
	if (!s)
		return;
	if (p->st) {
		struct stream *old = &p->st->s;

		send_error(old->conn, old->id, KP_ERR_DETACHED, 0, "process %llu: another ATTACH took over",
			   (unsigned long long)p->handle);
		stream_free(old->conn, old);
	}
	p->st = s;
	s->proc = p;
	s->credit[1] = s->credit[2] = c->peer_window;
	s->s.in_credit = io_in == KP_IO_PIPE ? KP_DEFAULT_WINDOW : 0;
	for (ch = 1; ch <= 2; ch++) {
		s->sent[ch] = s->acked[ch] = off[ch] == UINT64_MAX ? p->ring[ch].start : off[ch];
		/* The host says it has what lies below its offset: block mode may overwrite it. */
		if (off[ch] != UINT64_MAX && off[ch] > p->keep[ch])
			p->keep[ch] = off[ch];
	}
	rec_begin(c, &w);
	kp_put_u64(&w, KT_HANDLE, p->handle);
	kp_put_u64(&w, KT_PID, (uint64_t)p->pid);
	kp_put_u64(&w, KT_OUT_OFFSET, p->ring[1].end);
	kp_put_u64(&w, KT_ERR_OFFSET, p->ring[2].end);
	kp_put_bool(&w, KT_PTY, p->pty);
	rec_send(c, KP_RESPONSE, 0, f->id, &w);
	proc_flush(p);
}

/* A WAIT on a running process: answered when it exits. */
struct wait_stream {
	struct stream s;
	struct proc *proc;
};

static const struct stream_ops wait_stream_ops = {
	.name = "wait",
	.size = sizeof(struct wait_stream),
};

void proc_wait_answer(struct agent *a, struct proc *p)
{
	struct conn *c;
	struct stream *s, *sn;
	struct kp_recw w;

	for (c = a->conns; c; c = c->next)
		for (s = c->streams; s; s = sn) {
			sn = s->next;
			if (s->ops != &wait_stream_ops || ((struct wait_stream *)s)->proc != p)
				continue;
			rec_begin(c, &w);
			put_exit(&w, p);
			rec_send(c, KP_RESPONSE, KP_F_END, s->id, &w);
			stream_free(c, s);
		}
}

void op_wait(struct conn *c, const struct req *r)
{
	const struct kp_frame *f = r->f;
	int bad = 0;
	struct proc *p = proc_arg(c, f, "wait", &bad);
	struct wait_stream *s;
	struct kp_recw w;

	if (!p)
		return;
	if (p->exited) {
		rec_begin(c, &w);
		put_exit(&w, p);
		rec_send(c, KP_RESPONSE, KP_F_END, f->id, &w);
		return;
	}
	s = (struct wait_stream *)stream_new(c, &wait_stream_ops, f->id, "wait");
	if (!s)
		return;
	s->proc = p;
	s->s.in_credit = 0;
}

void op_release(struct conn *c, const struct req *r)
{
	const struct kp_frame *f = r->f;
	int bad = 0;
	struct proc *p = proc_arg(c, f, "release", &bad);

	if (!p)
		return;
	if (!p->exited) {
		send_error(c, f->id, KP_ERR_OS, EBUSY, "release: process %llu is still running (SIGNAL it, then WAIT)",
			   (unsigned long long)p->handle);
		return;
	}
	proc_free(c->ag, p);
	send_ok(c, f->id);
}

void op_proc_list(struct conn *c, const struct req *r)
{
	struct kp_recw w;
	struct proc *p;

	rec_begin(c, &w);
	for (p = c->ag->procs; p; p = p->next) {
		uint32_t mark;
		size_t i;

		if (w.len > KP_MAX_CONTROL - CMD_MAX - 1024) {	/* a batch is full */
			rec_send(c, KP_RESPONSE, 0, r->f->id, &w);
			rec_begin(c, &w);
		}
		mark = kp_nest_begin(&w, KT_ENTRY);
		kp_put_u64(&w, KT_HANDLE, p->handle);
		kp_put_u64(&w, KT_PID, (uint64_t)p->pid);
		for (i = 0; i < p->cmdlen; i += strlen(p->cmd + i) + 1)
			kp_put_str(&w, KT_ARG, p->cmd + i);
		kp_put_u64(&w, KT_OUT_OFFSET, p->ring[1].end);
		kp_put_u64(&w, KT_ERR_OFFSET, p->ring[2].end);
		kp_put_bool(&w, KT_PTY, p->pty);
		if (p->exited)
			put_exit(&w, p);
		kp_nest_end(&w, mark);
	}
	rec_send(c, KP_RESPONSE, KP_F_END, r->f->id, &w);
}

void op_resize(struct conn *c, const struct req *r)
{
	const struct kp_frame *f = r->f;
	int bad = 0;
	struct proc *p = proc_arg(c, f, "resize", &bad);
	uint64_t rows = arg_u64(f, KT_ROWS, 0, &bad), cols = arg_u64(f, KT_COLS, 0, &bad);
	struct winsize ws = { .ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols };
	int fd;

	if (!p)
		return;
	if (bad || rows < 1 || rows > 65535 || cols < 1 || cols > 65535) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "resize: wants ROWS and COLS, 1 to 65535");
		return;
	}
	fd = p->fd[1] >= 0 ? p->fd[1] : p->fd[0];
	if (!p->pty || fd < 0) {
		send_error(c, f->id, KP_ERR_OS, ENOTTY, "resize: process %llu has %s", (unsigned long long)p->handle,
			   p->pty ? "closed its terminal" : "no terminal (exec it with PTY)");
		return;
	}
	/* The kernel sends SIGWINCH to the terminal's foreground process group. */
	if (ioctl(fd, TIOCSWINSZ, &ws) < 0)
		send_error(c, f->id, KP_ERR_OS, errno, "resize: %s", strerror(errno));
	else
		send_ok(c, f->id);
}

void op_signal(struct conn *c, const struct req *r)
{
	const struct kp_frame *f = r->f;
	int bad = 0;
	uint64_t h = arg_u64(f, KT_HANDLE, 0, &bad), sig = arg_u64(f, KT_SIGNAL, SIGTERM, &bad);
	int group = (int)arg_u64(f, KT_GROUP, 0, &bad);
	struct proc *p = proc_by_handle(c->ag, h);

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
