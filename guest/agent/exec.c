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

void op_exec(struct conn *c, const struct req *r)
{
	const struct kp_frame *f = r->f;
	struct agent *a = c->ag;
	int bad = 0, io_in, io_out, io_err, p_in[2] = { -1, -1 }, p_out[2] = { -1, -1 };
	int p_err[2] = { -1, -1 }, p_ex[2] = { -1, -1 }, child[3], nul = -1, ex[2] = { 0, 0 };
	int pty_m = -1, pty_t = -1, ret;
	size_t argc = 0, nenv = 0;
	char **argv = arg_list(f, KT_ARG, &argc, &bad), **envv = arg_list(f, KT_ENV, &nenv, &bad);
	char *shell = arg_str(f, KT_SHELL, &bad), *cwd = arg_str(f, KT_CWD, &bad), **envp = NULL;
	char *sh[] = { "/bin/sh", "-c", shell, NULL };
	uint64_t uid = arg_u64(f, KT_UID, 0, &bad), gid = arg_u64(f, KT_GID, 0, &bad);
	int clear = (int)arg_u64(f, KT_CLEAR_ENV, 0, &bad);
	int pty = (int)arg_u64(f, KT_PTY, 0, &bad);
	uint64_t rows = arg_u64(f, KT_ROWS, 24, &bad), cols = arg_u64(f, KT_COLS, 80, &bad);
	uint64_t ring = arg_u64(f, KT_RING, RING_DEFAULT, &bad), ovf = arg_u64(f, KT_OVERFLOW, KP_OVF_BLOCK, &bad);
	struct proc *p = NULL;
	struct exec_stream *s;
	struct kp_recw w;
	sigset_t none;
	pid_t pid;
	ssize_t n;

	io_in = (int)arg_u64(f, KT_STDIN, KP_IO_NULL, &bad);
	io_out = (int)arg_u64(f, KT_STDOUT, KP_IO_PIPE, &bad);
	io_err = (int)arg_u64(f, KT_STDERR, KP_IO_PIPE, &bad);
	if (bad || (!shell && argc == 0) || io_in > KP_IO_PIPE || io_out > KP_IO_PIPE ||
	    io_err > KP_IO_MERGE || uid > 0xffffffffu || gid > 0xffffffffu) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "exec: wants ARG* or SHELL; STDIN/STDOUT NULL or PIPE, STDERR NULL, PIPE or MERGE");
		goto out;
	}
	if (ring < RING_MIN || ring > RING_MAX || ovf > KP_OVF_DROP) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "exec: RING must be %u to %u bytes, OVERFLOW BLOCK (0) or DROP (1)",
			   RING_MIN, RING_MAX);
		goto out;
	}
	if (pty && (rows < 1 || rows > 65535 || cols < 1 || cols > 65535)) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "exec: ROWS and COLS must be 1 to 65535");
		goto out;
	}
	proc_evict(a);		/* those a closed connection detached since the last exit */
	if (a->nlive >= MAX_PROCS) {
		send_error(c, f->id, KP_ERR_LIMIT, 0, "exec: %d processes already (SIGNAL some, or wait for them)",
			   MAX_PROCS);
		goto out;
	}
	if (a->nlive + a->nexited >= MAX_PROC_OBJS) {
		send_error(c, f->id, KP_ERR_LIMIT, 0, "exec: %d processes held already (%u exited, their pipes "
			   "still open or kept for WAIT): end their streams (CANCEL) or RELEASE some",
			   MAX_PROC_OBJS, a->nexited);
		goto out;
	}
	if (a->stopping.active) {
		send_error(c, f->id, KP_ERR_OS, ESHUTDOWN, "exec: the sandbox is shutting down");
		goto out;
	}
	envp = build_env(a, envv, nenv, clear);
	p = calloc(1, sizeof(*p));
	nul = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (!envp || !p || nul < 0 || pipe2(p_ex, O_CLOEXEC) < 0 ||
	    (!pty && io_in == KP_IO_PIPE && pipe2(p_in, O_CLOEXEC) < 0) ||
	    (!pty && io_out == KP_IO_PIPE && pipe2(p_out, O_CLOEXEC) < 0) ||
	    (!pty && io_err == KP_IO_PIPE && pipe2(p_err, O_CLOEXEC) < 0)) {
		send_error(c, f->id, KP_ERR_OS, errno, "exec: %s", strerror(errno));
		goto out;
	}
	if (pty) {
		ret = pty_open((unsigned)rows, (unsigned)cols, &pty_m, &pty_t);
		if (ret == 0 && (p_in[1] = fcntl(pty_m, F_DUPFD_CLOEXEC, 3)) < 0)
			ret = -errno;
		if (ret < 0) {
			send_error(c, f->id, KP_ERR_OS, -ret, "exec: pseudo-terminal: %s", strerror(-ret));
			goto out;
		}
		p_out[0] = pty_m;
		pty_m = -1;
		child[0] = child[1] = child[2] = pty_t;
	} else {
		child[0] = io_in == KP_IO_PIPE ? p_in[0] : nul;
		child[1] = io_out == KP_IO_PIPE ? p_out[1] : nul;
		child[2] = io_err == KP_IO_PIPE ? p_err[1] : io_err == KP_IO_MERGE ? child[1] : nul;
	}
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
		if (a->child_nofile.rlim_max)
			(void)setrlimit(RLIMIT_NOFILE, &a->child_nofile);
		setsid();
		/* The terminal becomes the new session's controlling tty: job control, SIGWINCH. */
		if (pty)
			ioctl(0, TIOCSCTTY, 0);
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
	s = (struct exec_stream *)stream_new(c, &exec_stream_ops, f->id, "exec");
	if (!s) {
		kill(pid, SIGKILL);
		goto out;
	}
	p->pid = pid;
	p->handle = a->next_handle++;
	p->pty = pty;
	p->drop = ovf == KP_OVF_DROP;
	p->ring_cap = (size_t)ring;
	p->cmd = cmd_copy(argv, argc, shell, &p->cmdlen);
	p->fd[0] = p_in[1];
	p->fd[1] = p_out[0];
	p->fd[2] = p_err[0];
	p_in[1] = p_out[0] = p_err[0] = -1;
	for (int i = 0; i < 3; i++)
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
	rec_send(c, KP_RESPONSE, 0, f->id, &w);
	proc_flush(p);		/* channels the process does not have end at once */
	p = NULL;
out:
	fd_close(&p_in[0]);
	fd_close(&p_in[1]);
	fd_close(&p_out[0]);
	fd_close(&p_out[1]);
	fd_close(&p_err[0]);
	fd_close(&p_err[1]);
	fd_close(&p_ex[0]);
	fd_close(&p_ex[1]);
	fd_close(&pty_m);
	fd_close(&pty_t);
	fd_close(&nul);
	free(p);
	free(envp);
	strv_free(argv);
	strv_free(envv);
	free(shell);
	free(cwd);
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
