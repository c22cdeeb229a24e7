/* kiln exec, shell, attach, wait, release and ps: the guest's processes. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include "agent_proto.h"
#include "agent_client.h"
#include "kiln_cli.h"

/* ---- exec ------------------------------------------------------------------- */

static int sig_pipe[2] = { -1, -1 };

/* The host terminal, put in raw mode while a guest pty has it; restored on every way out. */
static struct termios tty_saved;
static int tty_raw_fd = -1;
static volatile sig_atomic_t nsignals;

static void tty_restore(void)
{
	if (tty_raw_fd >= 0)
		tcsetattr(tty_raw_fd, TCSADRAIN, &tty_saved);
	tty_raw_fd = -1;
}

static void tty_make_raw(int fd)
{
	struct termios t;

	if (!isatty(fd) || tcgetattr(fd, &tty_saved) < 0)
		return;
	t = tty_saved;
	cfmakeraw(&t);
	if (tcsetattr(fd, TCSADRAIN, &t) == 0) {
		tty_raw_fd = fd;
		atexit(tty_restore);
	}
}

/*
 * Signals are forwarded to the guest through sig_pipe. A guest that ignores
 * them must not trap the user: the third one restores the terminal and ends
 * kiln (the guest process runs on, detached).
 */
static void on_signal(int sig)
{
	int saved = errno;
	unsigned char b = (unsigned char)sig;

	if (sig != SIGWINCH && ++nsignals >= 3) {
		if (tty_raw_fd >= 0)
			tcsetattr(tty_raw_fd, TCSADRAIN, &tty_saved);
		_exit(128 + sig);
	}
	if (write(sig_pipe[1], &b, 1) < 0) {
		/* the pipe is full: the guest already has plenty of signals */
	}
	errno = saved;
}

static int signals_forward(void)
{
	struct sigaction sa;

	if (pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
		fprintf(stderr, "%s: pipe: %s\n", prog, strerror(errno));
		return -1;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sa.sa_flags = SA_RESTART;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	sigaction(SIGQUIT, &sa, NULL);
	sigaction(SIGWINCH, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	return 0;
}

/* A guest process's exit as ours: its code, 128+N for signal N. */
static int exit_status(const struct kac_exit *ex)
{
	if (ex->signal)
		return 128 + (ex->signal & 0x7f);
	return (int)(ex->code & 0xff);
}

static void on_gap(void *arg, int chan, uint64_t from, uint64_t to)
{
	(void)arg;
	fprintf(stderr, "%s: %s bytes %llu to %llu were lost: the process wrote faster than it was read "
		"(exec with a larger --ring, or --overflow block)%s\n", prog, chan == 1 ? "stdout" : "stderr",
		(unsigned long long)from, (unsigned long long)to, tty_raw_fd >= 0 ? "\r" : "");
}

/* The size for a new pty: --rows/--cols, else our terminal's, else 24x80. */
static void tty_size(const struct common *o, unsigned *rows, unsigned *cols)
{
	struct winsize ws;

	*rows = 24;
	*cols = 80;
	if ((ioctl(0, TIOCGWINSZ, &ws) == 0 || ioctl(1, TIOCGWINSZ, &ws) == 0) && ws.ws_row && ws.ws_col) {
		*rows = ws.ws_row;
		*cols = ws.ws_col;
	}
	if (o->rows)
		*rows = o->rows;
	if (o->cols)
		*cols = o->cols;
}

static int exec_failed(const char *cmd, int ret, const struct kac_err *err)
{
	if (ret == -ENOENT && err->code == KP_ERR_OS) {
		fprintf(stderr, "%s: %s: command not found in the guest (%s)\n", prog, cmd, err->msg);
		return EXIT_NOTFOUND;
	}
	if ((ret == -EACCES || ret == -ENOEXEC) && err->code == KP_ERR_OS) {
		fprintf(stderr, "%s: %s: not executable in the guest (%s)\n", prog, cmd, err->msg);
		return EXIT_NOEXEC;
	}
	fprintf(stderr, "%s: %s: %s%s\n", prog, cmd, err->msg, hint(err));
	return ret == -ETIMEDOUT && err->code != KAC_ERR_TIMEOUT ? EXIT_TIMEOUT : EXIT_KILN;
}

static int run_exec(struct common *o, const char *const *argv, const char *const *env)
{
	struct kac_exec_opts eo;
	struct kac_exit ex;
	struct kac_err err = { "", 0 };
	struct kac *c;
	int ret;

	if (o->detach && o->tty)
		die_usage("exec: --detach and --tty do not go together (attach to the process later)");
	if (o->detach && o->timeout_s)
		die_usage("exec: --detach and --timeout do not go together (use kiln wait --timeout)");
	if (!o->detach && signals_forward() < 0)
		return EXIT_KILN;
	c = connect_or_die(o);
	memset(&eo, 0, sizeof(eo));
	eo.argv = argv;
	eo.env = env;
	eo.cwd = o->cwd;
	eo.stdin_fd = o->tty || o->interactive || !isatty(0) ? 0 : -1;
	eo.stdout_fd = 1;
	eo.stderr_fd = 2;
	eo.sig_fd = o->detach ? -1 : sig_pipe[0];
	eo.timeout_ms = o->timeout_s * 1000;
	eo.detach = o->detach;
	eo.ring = o->ring;
	eo.overflow_drop = o->drop;
	eo.gap_fn = on_gap;
	eo.tty_fd = -1;
	if (o->tty) {
		eo.pty = 1;
		tty_size(o, &eo.rows, &eo.cols);
		eo.tty_fd = isatty(0) ? 0 : -1;
		tty_make_raw(0);
	}
	ret = kac_exec(c, &eo, &ex, &err);
	tty_restore();
	kac_close(c);
	if (ret)
		return exec_failed(argv[0], ret, &err);
	if (o->detach) {
		printf("%llu\n", (unsigned long long)ex.handle);
		return 0;
	}
	return exit_status(&ex);
}

int cmd_exec(int argc, char **argv)
{
	struct common o;
	int i, ret;

	i = parse_opts(argc, argv, &o);
	timeout_secs(&o);
	if (i >= argc)
		die_usage("exec: no command given (kiln exec --uds PATH -- CMD ARGS...)");
	if ((o.rows || o.cols) && !o.tty)
		die_usage("exec: --rows and --cols need --tty");
	ret = run_exec(&o, (const char *const *)&argv[i], o.env);
	free(o.env);
	return ret;
}

int cmd_shell(int argc, char **argv)
{
	static const char *const sh[] = { "/bin/sh", "-l", NULL };
	static char term[256];
	struct common o;
	const char **env;
	int i, ret;

	i = parse_opts(argc, argv, &o);
	timeout_secs(&o);
	if (o.detach)
		die_usage("shell: --detach makes no sense here (kiln exec --detach)");
	o.tty = 1;
	/* The guest's programs should draw for the terminal we have. */
	env = calloc((size_t)o.nenv + 2, sizeof(*env));
	if (!env) {
		fprintf(stderr, "%s: out of memory\n", prog);
		return EXIT_KILN;
	}
	for (int k = 0; k < o.nenv; k++)
		env[k] = o.env[k];
	if (getenv("TERM") && strlen(getenv("TERM")) < sizeof(term) - 6) {
		snprintf(term, sizeof(term), "TERM=%s", getenv("TERM"));
		env[o.nenv] = term;
	}
	ret = run_exec(&o, i < argc ? (const char *const *)&argv[i] : sh, env);
	free(env);
	free(o.env);
	return ret;
}

/* The one process HANDLE operand argv[i] of command argv[0], or die_usage. */
static uint64_t parse_handle(int argc, char **argv, int i)
{
	if (argc - i != 1)
		die_usage("%s: expected one process HANDLE (see kiln ps)", argv[0]);
	return parse_num(argv[i], "HANDLE", 1, UINT64_MAX, 0);
}

int cmd_attach(int argc, char **argv)
{
	struct common o;
	struct kac_attach_opts ao;
	struct kac_exit ex;
	struct kac_err err = { "", 0 };
	struct kac *c;
	int i, ret;

	i = parse_opts(argc, argv, &o);
	memset(&ao, 0, sizeof(ao));
	ao.handle = parse_handle(argc, argv, i);
	ao.out_offset = o.from;
	ao.err_offset = o.from_err;
	ao.stdin_fd = o.interactive ? 0 : -1;
	ao.stdout_fd = 1;
	ao.stderr_fd = 2;
	ao.tty_fd = -1;
	ao.gap_fn = on_gap;
	if (signals_forward() < 0)
		return EXIT_KILN;
	ao.sig_fd = sig_pipe[0];
	c = connect_or_die(&o);
	ret = kac_attach(c, &ao, &ex, &err);
	kac_close(c);
	if (ret) {
		fprintf(stderr, "%s: attach %s: %s%s\n", prog, argv[i], err.msg,
			err.code == KP_ERR_DETACHED ? " (another kiln attach took over)" : hint(&err));
		return EXIT_KILN;
	}
	return exit_status(&ex);
}

int cmd_wait(int argc, char **argv)
{
	struct common o;
	struct kac_exit ex;
	struct kac_err err = { "", 0 };
	struct kac *c;
	uint64_t h;
	int i, ret;

	i = parse_opts(argc, argv, &o);
	timeout_secs(&o);
	h = parse_handle(argc, argv, i);
	c = connect_or_die(&o);
	ret = kac_wait(c, h, o.timeout_s * 1000, &ex, &err);
	kac_close(c);
	if (ret) {
		fprintf(stderr, "%s: wait %s: %s%s\n", prog, argv[i], err.msg, hint(&err));
		return ret == -ETIMEDOUT && err.code != KAC_ERR_TIMEOUT ? EXIT_TIMEOUT : EXIT_KILN;
	}
	return exit_status(&ex);
}

int cmd_release(int argc, char **argv)
{
	struct common o;
	struct kac_err err = { "", 0 };
	int i = parse_opts(argc, argv, &o);
	uint64_t h = parse_handle(argc, argv, i);
	struct kac *c = connect_or_die(&o);

	return cmd_done(c, kac_release(c, h, &err), argv[i], &err);
}

static int ps_entry(void *arg, const struct kac_proc *p)
{
	struct listing *st = arg;
	char status[32];
	int k;

	if (!p->exited)
		snprintf(status, sizeof(status), "running");
	else if (p->exit.signal)
		snprintf(status, sizeof(status), "signal %d", p->exit.signal);
	else
		snprintf(status, sizeof(status), "exit %lld", (long long)p->exit.code);
	if (st->json) {
		printf("%s{\"handle\":%llu,\"pid\":%llu,\"running\":%s,", list_sep(st),
		       (unsigned long long)p->exit.handle, (unsigned long long)p->exit.pid,
		       p->exited ? "false" : "true");
		if (p->exited)
			printf("\"exit_code\":%lld,\"signal\":%d,", (long long)p->exit.code, p->exit.signal);
		printf("\"pty\":%s,\"stdout_bytes\":%llu,\"stderr_bytes\":%llu,\"argv\":[", p->pty ? "true" : "false",
		       (unsigned long long)p->out_offset, (unsigned long long)p->err_offset);
		for (k = 0; k < p->argc; k++) {
			if (k)
				putchar(',');
			json_str(p->argv[k]);
		}
		printf("]}");
		return 0;
	}
	if (!st->n++)
		printf("HANDLE\tPID\tSTATUS\tCOMMAND\n");
	printf("%llu\t%llu\t%s\t", (unsigned long long)p->exit.handle, (unsigned long long)p->exit.pid, status);
	for (k = 0; k < p->argc; k++) {
		/* One line per process: a newline in an argument is shown as a space. */
		if (k)
			putchar(' ');
		put_guest(p->argv[k], ' ');
	}
	putchar('\n');
	return 0;
}

int cmd_ps(int argc, char **argv)
{
	struct common o;
	struct kac_err err = { "", 0 };
	struct listing st;
	struct kac *c;

	no_operands(argc, argv, parse_opts(argc, argv, &o));
	c = connect_or_die(&o);
	list_begin(&st, &o);
	return list_end(&st, c, kac_proc_list(c, ps_entry, &st, &err), "ps", &err);
}
