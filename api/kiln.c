/*
 * kiln: the command-line client of a sandbox's agent (docs/agent-protocol.md),
 * reached through the VMM's vsock unix socket.
 *
 *   kiln exec --uds PATH [--env K=V]... [--cwd DIR] [--timeout S] [-i] [--tty] [--detach] -- CMD ARGS...
 *   kiln shell|attach|ps|wait|release --uds PATH ...
 *   kiln cp   --uds PATH SRC DST          (guest:/path on one side, or both: copy in the guest)
 *   kiln ls|stat|mkdir|rm|mv|copy|walk --uds PATH ...
 *   kiln identity|shutdown|env --uds PATH ...
 *   kiln connect|forward|ports --uds PATH ...
 *
 * Exit status of exec: the command's own; 128+N when it was killed by signal
 * N; 124 on --timeout; 125 when kiln itself failed; 126 not executable; 127
 * not found. Other commands: 0, 1 when the operation failed, 2 on bad usage,
 * 125 when the agent could not be reached.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "agent_proto.h"
#include "agent_client.h"

#define EXIT_FAIL	1
#define EXIT_USAGE	2
#define EXIT_TIMEOUT	124
#define EXIT_KILN	125
#define EXIT_NOEXEC	126
#define EXIT_NOTFOUND	127

static const char usage_text[] =
"usage: kiln COMMAND --uds PATH [OPTIONS] ARGS...\n"
"\n"
"Talk to the kiln agent of a VM started with\n"
"  kiln-vmm --vsock cid=3,uds=PATH --cmdline kiln.agent\n"
"\n"
"commands:\n"
"  exec [--env K=V]... [--cwd DIR] [--timeout S] [-i] -- CMD [ARGS...]\n"
"        run CMD in the guest; its stdout and stderr become ours, its exit\n"
"        code ours (128+N if killed by signal N, 124 on --timeout, 125 if kiln\n"
"        failed, 126/127 if CMD is not executable/not found). stdin is\n"
"        forwarded unless it is a terminal (-i forwards it anyway); Ctrl-C,\n"
"        SIGTERM and SIGHUP are forwarded to the guest process.\n"
"        --tty [--rows R --cols C]  run it on a pseudo-terminal (default: the size\n"
"                  of ours, else 24x80); our terminal goes raw meanwhile and\n"
"                  window changes follow; stdin is always forwarded\n"
"        --detach  print the process handle and return at once; the output\n"
"                  waits in the guest for kiln attach\n"
"        --ring BYTES[K|M]  output kept per stream in the guest (default 1M,\n"
"                  4K to 16M); --overflow block|drop: when it is full, stop\n"
"                  the process until someone reads (default) or drop the oldest\n"
"  shell [--rows R --cols C] [-- CMD ARGS...]\n"
"        an interactive shell (/bin/sh -l, or CMD) on a guest pseudo-terminal;\n"
"        exits with its status\n"
"  attach [--from N] [--from-err N] [-i] HANDLE\n"
"        replay a process's output from byte N of stdout (default 0) and of\n"
"        stderr, follow it until it exits and exit with its status; lost bytes\n"
"        (--overflow drop) are reported on stderr; -i feeds stdin to it. A\n"
"        second attach takes over (the first exits 125)\n"
"  ps [--json]    the guest's processes: handle, pid, status, command\n"
"  wait [--timeout S] HANDLE   wait for a process; exit with its status\n"
"  release HANDLE forget an exited process and its output\n"
"  cp SRC DST     copy a file; one side is guest:/path, '-' is stdin/stdout.\n"
"                 Uploads keep the file's permission bits; downloads to a new\n"
"                 file too, less setuid/setgid/sticky and our umask (as scp)\n"
"                 and never through a dangling symlink. With guest: on both\n"
"                 sides the file is copied inside the guest (as kiln copy)\n"
"  ls [--json] DIR           list a guest directory\n"
"  stat [--json] PATH        stat a guest path\n"
"  mkdir [-p] [--mode OCTAL] DIR\n"
"  rm [-r] PATH\n"
"  mv FROM TO\n"
"  copy FROM TO   copy a regular guest file inside the guest, permission bits\n"
"                 kept (TO may be a directory)\n"
"  walk [--max-depth N] [--follow] [--json] PATH\n"
"        every path under guest PATH, PATH first, one a line (directories\n"
"        end in /); --max-depth 1: PATH and its entries; --follow: go down\n"
"        into symlinks to directories too\n"
"  identity [--id ID] [--hostname H] [--env K=V]... [--clear-env] [--clock now|none|NS]\n"
"        set the sandbox id (env KILN_SANDBOX_ID, file /run/kiln/sandbox-id),\n"
"        hostname, default environment and wall clock (default: the host's\n"
"        clock now); send after every snapshot restore\n"
"  shutdown [--timeout MS] [--reboot]\n"
"        SIGTERM every guest process, SIGKILL after MS milliseconds (default\n"
"        5000), sync and power off; returns once the VM has stopped\n"
"  env [list [--json] | get KEY | set KEY VALUE | unset KEY]\n"
"        the guest's default environment (the base of every exec)\n"
"  connect [--raw] [--addr IP] PORT\n"
"        connect stdin and stdout to guest TCP PORT (like nc); --raw uses a\n"
"        dedicated unframed connection\n"
"  forward [--addr IP] LOCALPORT:GUESTPORT\n"
"        listen on 127.0.0.1:LOCALPORT, one guest connection per client\n"
"  ports [--json]             the guest's listening TCP ports (port, pid, address)\n"
"  ports [--timeout S] wait PORT\n"
"        wait until something listens on guest PORT\n"
"        exit 0, 1 if the operation failed, 2 on bad usage, 125 if the agent\n"
"        could not be reached\n"
"\n"
"common options:\n"
"  --uds PATH             the VMM's vsock socket (or $KILN_UDS)\n"
"  --connect-timeout S    wait this long for the VM and its agent (default 60)\n"
"  --agent-timeout S      how long the agent may stay silent (default 30, 0: no\n"
"                         limit): a request unanswered, or during a long exec,\n"
"                         attach, cp or wait, no answer to kiln's keep-alive pings;\n"
"                         kiln then fails (exec: 125) instead of waiting forever\n"
"  -h, --help             this text\n";

static const char *prog = "kiln";

static void die_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die_usage(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s: ", prog);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, " (see kiln --help)\n");
	exit(EXIT_USAGE);
}

struct common {
	const char *uds;
	int connect_ms;
	int agent_ms;
	int json;
	int recursive;
	int interactive;
	int timeout_s;
	const char *cwd;
	const char **env;
	int nenv;
	uint32_t mode;
	const char *timeout_arg;	/* --timeout as given (shutdown takes ms) */
	const char *id, *hostname, *clock;
	int clear_env;
	int reboot;
	int raw;
	const char *addr;
	int detach, tty;
	unsigned rows, cols;
	uint64_t ring;
	int drop;
	uint64_t from, from_err;
	uint64_t max_depth;
	int follow;
};

enum { OPT_UDS = 256, OPT_ENV, OPT_CWD, OPT_TIMEOUT, OPT_CONNECT_TIMEOUT, OPT_AGENT_TIMEOUT, OPT_JSON, OPT_MODE,
       OPT_ID, OPT_HOSTNAME, OPT_CLEAR_ENV, OPT_CLOCK, OPT_REBOOT, OPT_RAW, OPT_ADDR,
       OPT_DETACH, OPT_ROWS, OPT_COLS, OPT_RING, OPT_OVERFLOW, OPT_FROM, OPT_FROM_ERR, OPT_MAX_DEPTH,
       OPT_FOLLOW };

static const struct option long_opts[] = {
	{ "uds", required_argument, NULL, OPT_UDS },
	{ "env", required_argument, NULL, OPT_ENV },
	{ "cwd", required_argument, NULL, OPT_CWD },
	{ "timeout", required_argument, NULL, OPT_TIMEOUT },
	{ "connect-timeout", required_argument, NULL, OPT_CONNECT_TIMEOUT },
	{ "agent-timeout", required_argument, NULL, OPT_AGENT_TIMEOUT },
	{ "json", no_argument, NULL, OPT_JSON },
	{ "mode", required_argument, NULL, OPT_MODE },
	{ "interactive", no_argument, NULL, 'i' },
	{ "id", required_argument, NULL, OPT_ID },
	{ "hostname", required_argument, NULL, OPT_HOSTNAME },
	{ "clear-env", no_argument, NULL, OPT_CLEAR_ENV },
	{ "clock", required_argument, NULL, OPT_CLOCK },
	{ "reboot", no_argument, NULL, OPT_REBOOT },
	{ "raw", no_argument, NULL, OPT_RAW },
	{ "addr", required_argument, NULL, OPT_ADDR },
	{ "detach", no_argument, NULL, OPT_DETACH },
	{ "tty", no_argument, NULL, 't' },
	{ "rows", required_argument, NULL, OPT_ROWS },
	{ "cols", required_argument, NULL, OPT_COLS },
	{ "ring", required_argument, NULL, OPT_RING },
	{ "overflow", required_argument, NULL, OPT_OVERFLOW },
	{ "from", required_argument, NULL, OPT_FROM },
	{ "from-err", required_argument, NULL, OPT_FROM_ERR },
	{ "max-depth", required_argument, NULL, OPT_MAX_DEPTH },
	{ "follow", no_argument, NULL, OPT_FOLLOW },
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

static int parse_secs(const char *s, const char *what)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *end || v < 0 || v > 24 * 3600 * 365)
		die_usage("%s %s: not a number of seconds", what, s);
	return (int)v;
}

/* An unsigned decimal number in [lo, hi], with an optional K or M suffix when units. */
static uint64_t parse_num(const char *s, const char *what, uint64_t lo, uint64_t hi, int units)
{
	unsigned long long v;
	char *end;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (units && (*end == 'K' || *end == 'k'))
		v <<= 10, end++;
	else if (units && (*end == 'M' || *end == 'm'))
		v <<= 20, end++;
	if (errno || *end || end == s || *s == '-' || v < lo || v > hi)
		die_usage("%s %s: expected a number from %llu to %llu%s", what, s, (unsigned long long)lo,
			  (unsigned long long)hi, units ? " (bytes; K and M suffixes allowed)" : "");
	return v;
}

/* Options common to all commands; returns the index of the first operand. */
static int parse_opts(int argc, char **argv, struct common *o)
{
	int c;
	char *end;

	memset(o, 0, sizeof(*o));
	o->uds = getenv("KILN_UDS");
	o->connect_ms = 60000;
	o->agent_ms = KAC_TIMEOUT_DEFAULT_MS;
	o->mode = 0755;
	o->max_depth = KAC_WALK_ALL;
	optind = 1;
	/* "+": stop at the first operand, so the guest command keeps its options. */
	while ((c = getopt_long(argc, argv, "+hiprft", long_opts, NULL)) != -1) {
		switch (c) {
		case OPT_UDS: o->uds = optarg; break;
		case OPT_ENV:
			if (!strchr(optarg, '='))
				die_usage("--env %s: expected KEY=VALUE", optarg);
			if (!o->env)
				o->env = calloc((size_t)argc + 1, sizeof(*o->env));
			if (!o->env) {
				fprintf(stderr, "%s: out of memory\n", prog);
				exit(EXIT_KILN);
			}
			o->env[o->nenv++] = optarg;
			break;
		case OPT_CWD: o->cwd = optarg; break;
		case OPT_TIMEOUT: o->timeout_arg = optarg; break;
		case OPT_ID: o->id = optarg; break;
		case OPT_HOSTNAME: o->hostname = optarg; break;
		case OPT_CLEAR_ENV: o->clear_env = 1; break;
		case OPT_CLOCK: o->clock = optarg; break;
		case OPT_REBOOT: o->reboot = 1; break;
		case OPT_RAW: o->raw = 1; break;
		case OPT_ADDR: o->addr = optarg; break;
		/* Seconds held as int milliseconds: at most 2,000,000 (23 days). */
		case OPT_CONNECT_TIMEOUT:
			o->connect_ms = (int)parse_num(optarg, "--connect-timeout", 0, 2000000, 0) * 1000;
			break;
		case OPT_AGENT_TIMEOUT:
			o->agent_ms = (int)parse_num(optarg, "--agent-timeout", 0, 2000000, 0) * 1000;
			break;
		case OPT_JSON: o->json = 1; break;
		case OPT_MODE:
			errno = 0;
			o->mode = (uint32_t)strtoul(optarg, &end, 8);
			if (errno || *end || o->mode > 07777)
				die_usage("--mode %s: expected octal permission bits like 0755", optarg);
			break;
		case 'i': o->interactive = 1; break;
		case 't': o->tty = 1; break;
		case OPT_DETACH: o->detach = 1; break;
		case OPT_ROWS: o->rows = (unsigned)parse_num(optarg, "--rows", 1, 65535, 0); break;
		case OPT_COLS: o->cols = (unsigned)parse_num(optarg, "--cols", 1, 65535, 0); break;
		case OPT_RING: o->ring = parse_num(optarg, "--ring", 4096, 16u << 20, 1); break;
		case OPT_FROM: o->from = parse_num(optarg, "--from", 0, INT64_MAX, 0); break;
		case OPT_FROM_ERR: o->from_err = parse_num(optarg, "--from-err", 0, INT64_MAX, 0); break;
		case OPT_MAX_DEPTH: o->max_depth = parse_num(optarg, "--max-depth", 0, INT64_MAX, 0); break;
		case OPT_FOLLOW: o->follow = 1; break;
		case OPT_OVERFLOW:
			if (strcmp(optarg, "block") && strcmp(optarg, "drop"))
				die_usage("--overflow %s: expected block or drop", optarg);
			o->drop = !strcmp(optarg, "drop");
			break;
		case 'p': case 'r': o->recursive = 1; break;
		case 'f': break;
		case 'h': fputs(usage_text, stdout); exit(0);
		default: die_usage("bad option");
		}
	}
	if (!o->uds)
		die_usage("--uds PATH is required (the socket of kiln-vmm --vsock cid=3,uds=PATH)");
	return optind;
}

/* --timeout in seconds (every command but shutdown). */
static void timeout_secs(struct common *o)
{
	if (o->timeout_arg)
		o->timeout_s = parse_secs(o->timeout_arg, "--timeout");
}

static struct kac *connect_or_die(const struct common *o)
{
	struct kac_err err = { "", 0 };
	struct kac *c;
	int ret = kac_connect(&c, o->uds, o->connect_ms, &err);

	if (ret) {
		fprintf(stderr, "%s: %s\n", prog, err.msg);
		exit(EXIT_KILN);
	}
	kac_set_timeout(c, o->agent_ms);
	return c;
}

/* What to add to an error: how to wait longer for a silent agent. */
static const char *hint(const struct kac_err *err)
{
	return err->code == KAC_ERR_TIMEOUT ? " (is the guest overloaded or its agent stuck? "
	       "--agent-timeout S waits longer, 0 without limit)" : "";
}

/* ---- exec ------------------------------------------------------------------- */

static int sig_pipe[2] = { -1, -1 };


static void json_str(const char *s);
static int op_fail(const char *what, const struct kac_err *err);

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

static int cmd_exec(int argc, char **argv)
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

static int cmd_shell(int argc, char **argv)
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

static uint64_t parse_handle(int argc, char **argv, int i, const char *cmd)
{
	if (argc - i != 1)
		die_usage("%s: expected one process HANDLE (see kiln ps)", cmd);
	return parse_num(argv[i], "HANDLE", 1, UINT64_MAX, 0);
}

static int cmd_attach(int argc, char **argv)
{
	struct common o;
	struct kac_attach_opts ao;
	struct kac_exit ex;
	struct kac_err err = { "", 0 };
	struct kac *c;
	int i, ret;

	i = parse_opts(argc, argv, &o);
	memset(&ao, 0, sizeof(ao));
	ao.handle = parse_handle(argc, argv, i, "attach");
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

static int cmd_wait(int argc, char **argv)
{
	struct common o;
	struct kac_exit ex;
	struct kac_err err = { "", 0 };
	struct kac *c;
	uint64_t h;
	int i, ret;

	i = parse_opts(argc, argv, &o);
	timeout_secs(&o);
	h = parse_handle(argc, argv, i, "wait");
	c = connect_or_die(&o);
	ret = kac_wait(c, h, o.timeout_s * 1000, &ex, &err);
	kac_close(c);
	if (ret) {
		fprintf(stderr, "%s: wait %s: %s%s\n", prog, argv[i], err.msg, hint(&err));
		return ret == -ETIMEDOUT && err.code != KAC_ERR_TIMEOUT ? EXIT_TIMEOUT : EXIT_KILN;
	}
	return exit_status(&ex);
}

static int cmd_release(int argc, char **argv)
{
	struct common o;
	struct kac_err err = { "", 0 };
	struct kac *c;
	uint64_t h;
	int i, ret;

	i = parse_opts(argc, argv, &o);
	h = parse_handle(argc, argv, i, "release");
	c = connect_or_die(&o);
	ret = kac_release(c, h, &err);
	kac_close(c);
	return ret ? op_fail(argv[i], &err) : 0;
}


/*
 * Print a name the guest chose (a file name, an argument, an env entry). On
 * a terminal its control bytes become '?', as ls shows them: a crafted name
 * must not move the cursor, retitle the window or type into the shell. Into
 * a pipe or file the bytes pass as they are. sep: what newlines and tabs
 * become (0: themselves).
 */
static void put_guest(const char *s, char sep)
{
	static int tty = -1;

	if (tty < 0)
		tty = isatty(1);
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if ((ch == '\n' || ch == '\t') && sep)
			putchar(sep);
		else if (tty && (ch < 0x20 || ch == 0x7f))
			putchar('?');
		else
			putchar(ch);
	}
}

struct ps_out {
	int json;
	int n;
};

static int ps_entry(void *arg, const struct kac_proc *p)
{
	struct ps_out *st = arg;
	char status[32];
	int k;

	if (!p->exited)
		snprintf(status, sizeof(status), "running");
	else if (p->exit.signal)
		snprintf(status, sizeof(status), "signal %d", p->exit.signal);
	else
		snprintf(status, sizeof(status), "exit %lld", (long long)p->exit.code);
	if (st->json) {
		printf("%s{\"handle\":%llu,\"pid\":%llu,\"running\":%s,", st->n++ ? "," : "",
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

static int cmd_ps(int argc, char **argv)
{
	struct common o;
	struct kac_err err = { "", 0 };
	struct ps_out st = { 0, 0 };
	struct kac *c;
	int i, ret;

	i = parse_opts(argc, argv, &o);
	if (i != argc)
		die_usage("ps: unexpected argument %s", argv[i]);
	st.json = o.json;
	c = connect_or_die(&o);
	if (st.json)
		putchar('[');
	ret = kac_proc_list(c, ps_entry, &st, &err);
	kac_close(c);
	if (st.json)
		puts("]");
	return ret ? op_fail("ps", &err) : 0;
}

/* ---- files ------------------------------------------------------------------ */

static const char *guest_path(const char *s)
{
	return strncmp(s, "guest:", 6) == 0 ? s + 6 : NULL;
}

static int op_fail(const char *what, const struct kac_err *err)
{
	fprintf(stderr, "%s: %s: %s%s\n", prog, what, err->msg, hint(err));
	return EXIT_FAIL;
}

/* Copy a file inside the guest (COPY); to an existing directory, under the source's name. */
static int guest_copy(const struct common *o, const char *from, const char *to)
{
	struct kac_err err = { "", 0 };
	static char path[8192];
	struct kac_stat st;
	struct kac *c = connect_or_die(o);
	int64_t n;

	if (to[strlen(to) - 1] == '/' || (kac_stat(c, to, 0, &st, &err) == 0 && S_ISDIR(st.type))) {
		const char *b = strrchr(from, '/');

		if ((size_t)snprintf(path, sizeof(path), "%s%s%s", to, to[strlen(to) - 1] == '/' ? "" : "/",
				     b ? b + 1 : from) >= sizeof(path))
			die_usage("%s: path too long", to);
		to = path;
	}
	n = kac_copy(c, from, to, &err);
	kac_close(c);
	return n < 0 ? op_fail("copy", &err) : 0;
}

static int cmd_copy(int argc, char **argv)
{
	struct common o;
	int i = parse_opts(argc, argv, &o);

	if (argc - i != 2)
		die_usage("copy: expected FROM TO (guest paths)");
	return guest_copy(&o, guest_path(argv[i]) ? guest_path(argv[i]) : argv[i],
			  guest_path(argv[i + 1]) ? guest_path(argv[i + 1]) : argv[i + 1]);
}

/*
 * Open the host file a download writes, as cp and scp do without -p: an
 * existing file is truncated and keeps its mode (a symlink to one is
 * followed); a new one gets the guest file's permission bits without
 * setuid, setgid and sticky (the guest is not trusted), less our umask.
 * O_EXCL keeps a dangling symlink, which could point anywhere, from being
 * written through (GNU cp refuses it too). Returns the fd, or -1 (told).
 */
static int open_download(const char *dst, uint32_t guest_mode)
{
	int fd = open(dst, O_WRONLY | O_TRUNC | O_CLOEXEC);

	if (fd < 0 && errno == ENOENT) {
		fd = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, guest_mode & 0777);
		if (fd < 0 && errno == EEXIST) {
			fprintf(stderr, "%s: %s: not writing through a dangling symlink (remove it, or name "
				"the file it points to)\n", prog, dst);
			return -1;
		}
	}
	if (fd < 0)
		fprintf(stderr, "%s: %s: %s\n", prog, dst, strerror(errno));
	return fd;
}

static int cmd_cp(int argc, char **argv)
{
	struct common o;
	struct kac_err err = { "", 0 };
	struct kac *c;
	const char *gsrc, *gdst, *src, *dst;
	static char path[8192];
	struct stat lst;
	struct kac_stat gst;
	int64_t n;
	int i, fd, ret;

	i = parse_opts(argc, argv, &o);
	if (argc - i != 2)
		die_usage("cp: expected SRC DST, one of them guest:/path");
	src = argv[i];
	dst = argv[i + 1];
	gsrc = guest_path(src);
	gdst = guest_path(dst);
	if (!gsrc && !gdst)
		die_usage("cp: SRC or DST (or both) must be guest:/path");
	if ((gsrc && !*gsrc) || (gdst && !*gdst))
		die_usage("cp: guest: needs a path (guest:/tmp/file)");
	if (gsrc && gdst)
		return guest_copy(&o, gsrc, gdst);

	if (gdst) {
		/* upload */
		if (strcmp(src, "-") == 0) {
			fd = 0;
			lst.st_mode = 0644;
		} else {
			fd = open(src, O_RDONLY | O_CLOEXEC);
			if (fd < 0 || fstat(fd, &lst) < 0) {
				fprintf(stderr, "%s: %s: %s\n", prog, src, strerror(errno));
				return EXIT_FAIL;
			}
			if (S_ISDIR(lst.st_mode)) {
				fprintf(stderr, "%s: %s: is a directory (kiln cp copies one file)\n", prog, src);
				return EXIT_FAIL;
			}
		}
		c = connect_or_die(&o);
		if (gdst[strlen(gdst) - 1] == '/' && strcmp(src, "-") != 0) {
			const char *b = strrchr(src, '/');

			if ((size_t)snprintf(path, sizeof(path), "%s%s", gdst, b ? b + 1 : src) >= sizeof(path))
				die_usage("%s: path too long", gdst);
			gdst = path;
		}
		n = kac_file_write(c, gdst, fd, lst.st_mode & 07777, &err);
		kac_close(c);
		if (n < 0)
			return op_fail(gdst, &err);
		return 0;
	}

	/* download */
	c = connect_or_die(&o);
	ret = kac_stat(c, gsrc, 0, &gst, &err);
	if (ret)
		return op_fail(gsrc, &err);
	if (S_ISDIR(gst.type)) {
		fprintf(stderr, "%s: %s: is a directory in the guest (kiln cp copies one file)\n", prog, gsrc);
		return EXIT_FAIL;
	}
	if (strcmp(dst, "-") == 0) {
		fd = 1;
	} else {
		if (stat(dst, &lst) == 0 && S_ISDIR(lst.st_mode)) {
			const char *b = strrchr(gsrc, '/');

			if ((size_t)snprintf(path, sizeof(path), "%s/%s", dst, b ? b + 1 : gsrc) >= sizeof(path))
				die_usage("%s: path too long", dst);
			dst = path;
		}
		fd = open_download(dst, gst.mode);
		if (fd < 0)
			return EXIT_FAIL;
	}
	signal(SIGPIPE, SIG_IGN);
	n = kac_file_read(c, gsrc, fd, &err);
	kac_close(c);
	if (n < 0)
		return op_fail(gsrc, &err);
	if (fd != 1 && close(fd) < 0) {
		fprintf(stderr, "%s: %s: %s\n", prog, dst, strerror(errno));
		return EXIT_FAIL;
	}
	return 0;
}

static const char *type_name(uint32_t t)
{
	switch (t & S_IFMT) {
	case S_IFREG: return "file";
	case S_IFDIR: return "directory";
	case S_IFLNK: return "symlink";
	case S_IFCHR: return "char";
	case S_IFBLK: return "block";
	case S_IFIFO: return "fifo";
	case S_IFSOCK: return "socket";
	default: return "unknown";
	}
}

/* A JSON string (names are bytes: escape controls, pass the rest). */
static void json_str(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if (ch == '"' || ch == '\\')
			printf("\\%c", ch);
		else if (ch < 0x20)
			printf("\\u%04x", ch);
		else
			putchar(ch);
	}
	putchar('"');
}

struct ls_state {
	int json;
	int n;
};

static int ls_entry(void *arg, const char *name, uint32_t type)
{
	struct ls_state *s = arg;

	if (s->json) {
		printf("%s{\"name\":", s->n ? "," : "");
		json_str(name);
		printf(",\"type\":\"%s\"}", type_name(type));
	} else {
		put_guest(name, 0);
		printf("%s\n", (type & S_IFMT) == S_IFDIR ? "/" : "");
	}
	s->n++;
	return 0;
}

static int cmd_ls(int argc, char **argv)
{
	struct common o;
	struct kac_err err = { "", 0 };
	struct ls_state s = { 0, 0 };
	struct kac *c;
	const char *path;
	int i, ret;

	i = parse_opts(argc, argv, &o);
	if (argc - i > 1)
		die_usage("ls: one directory at a time");
	path = i < argc ? argv[i] : "/";
	if (guest_path(path))
		path = guest_path(path);
	s.json = o.json;
	c = connect_or_die(&o);
	if (s.json)
		putchar('[');
	ret = kac_readdir(c, path, ls_entry, &s, &err);
	kac_close(c);
	if (s.json)
		puts("]");
	return ret ? op_fail(path, &err) : 0;
}

struct walk_state {
	int json;
	unsigned long long n;
};

static int walk_entry(void *arg, const char *path, const char *name, uint32_t type)
{
	struct walk_state *s = arg;
	int dir = (type & S_IFMT) == S_IFDIR, slash = dir && path[strlen(path) - 1] != '/';

	if (s->json) {
		printf("%s{\"path\":", s->n ? "," : "");
		json_str(path);
		printf(",\"name\":");
		json_str(name);
		printf(",\"type\":\"%s\"}", type_name(type));
	} else {
		put_guest(path, 0);
		printf("%s\n", slash ? "/" : "");
	}
	s->n++;
	return ferror(stdout) ? -EIO : 0;
}

static int cmd_walk(int argc, char **argv)
{
	struct common o;
	struct kac_err err = { "", 0 };
	struct walk_state s = { 0, 0 };
	struct kac *c;
	const char *path;
	int i, ret;

	i = parse_opts(argc, argv, &o);
	if (argc - i != 1)
		die_usage("walk: expected one PATH");
	path = guest_path(argv[i]) ? guest_path(argv[i]) : argv[i];
	s.json = o.json;
	c = connect_or_die(&o);
	if (s.json)
		putchar('[');
	ret = kac_walk(c, path, o.max_depth, o.follow, walk_entry, &s, &err);
	kac_close(c);
	if (s.json)
		puts("]");
	return ret ? op_fail(path, &err) : 0;
}

static int cmd_stat(int argc, char **argv)
{
	struct common o;
	struct kac_err err = { "", 0 };
	struct kac_stat st;
	struct kac *c;
	const char *path;
	int i, ret;

	i = parse_opts(argc, argv, &o);
	if (argc - i != 1)
		die_usage("stat: expected one PATH");
	path = guest_path(argv[i]) ? guest_path(argv[i]) : argv[i];
	c = connect_or_die(&o);
	ret = kac_stat(c, path, 0, &st, &err);
	kac_close(c);
	if (ret)
		return op_fail(path, &err);
	if (o.json) {
		printf("{\"path\":");
		json_str(path);
		printf(",\"type\":\"%s\",\"mode\":\"%04o\",\"size\":%llu,\"uid\":%llu,\"gid\":%llu,"
		       "\"nlink\":%llu,\"ino\":%llu,\"mtime_ns\":%lld}\n",
		       type_name(st.type), st.mode & 07777, (unsigned long long)st.size,
		       (unsigned long long)st.uid, (unsigned long long)st.gid,
		       (unsigned long long)st.nlink, (unsigned long long)st.ino,
		       (long long)st.mtime_ns);
	} else {
		printf("%s: %s, mode %04o, %llu bytes, uid %llu, gid %llu, mtime %lld.%09lld\n",
		       path, type_name(st.type), st.mode & 07777, (unsigned long long)st.size,
		       (unsigned long long)st.uid, (unsigned long long)st.gid,
		       (long long)(st.mtime_ns / 1000000000), (long long)(st.mtime_ns % 1000000000));
	}
	return 0;
}

static int cmd_simple(int argc, char **argv, const char *cmd)
{
	struct common o;
	struct kac_err err = { "", 0 };
	struct kac *c;
	const char *path, *path2 = NULL;
	int i, ret;

	i = parse_opts(argc, argv, &o);
	if (strcmp(cmd, "mv") == 0) {
		if (argc - i != 2)
			die_usage("mv: expected FROM TO");
		path2 = guest_path(argv[i + 1]) ? guest_path(argv[i + 1]) : argv[i + 1];
	} else if (argc - i != 1) {
		die_usage("%s: expected one PATH", cmd);
	}
	path = guest_path(argv[i]) ? guest_path(argv[i]) : argv[i];
	c = connect_or_die(&o);
	if (strcmp(cmd, "mkdir") == 0)
		ret = kac_mkdir(c, path, o.mode, o.recursive, &err);
	else if (strcmp(cmd, "rm") == 0)
		ret = kac_remove(c, path, o.recursive, &err);
	else
		ret = kac_rename(c, path, path2, &err);
	kac_close(c);
	return ret ? op_fail(path, &err) : 0;
}

/* ---- control ------------------------------------------------------------------ */

static int cmd_identity(int argc, char **argv)
{
	struct common o;
	struct kac_identity id;
	struct kac_err err = { "", 0 };
	struct kac *c;
	char *end;
	int i, ret;

	i = parse_opts(argc, argv, &o);
	if (i != argc)
		die_usage("identity: unexpected argument %s", argv[i]);
	memset(&id, 0, sizeof(id));
	id.sandbox_id = o.id;
	id.hostname = o.hostname;
	id.env = o.env;
	id.clear_env = o.clear_env;
	id.set_clock = 1;
	if (o.clock && strcmp(o.clock, "none") == 0) {
		id.set_clock = 0;
	} else if (o.clock && strcmp(o.clock, "now") != 0) {
		errno = 0;
		id.realtime_ns = strtoull(o.clock, &end, 10);
		if (errno || *end || !id.realtime_ns || id.realtime_ns > (uint64_t)INT64_MAX)
			die_usage("--clock %s: expected now, none, or nanoseconds since the epoch", o.clock);
	}
	c = connect_or_die(&o);
	ret = kac_identity(c, &id, &err);
	kac_close(c);
	free(o.env);
	if (ret)
		fprintf(stderr, "%s: %s%s\n", prog, err.msg, hint(&err));
	return ret ? EXIT_FAIL : 0;
}

static int cmd_shutdown(int argc, char **argv)
{
	struct common o;
	struct kac_err err = { "", 0 };
	struct kac *c;
	long ms = 0;
	char *end;
	int i, ret;

	i = parse_opts(argc, argv, &o);
	if (i != argc)
		die_usage("shutdown: unexpected argument %s", argv[i]);
	if (o.timeout_arg) {
		errno = 0;
		ms = strtol(o.timeout_arg, &end, 10);
		if (errno || *end || ms < 1 || ms > 600000)
			die_usage("shutdown --timeout %s: expected milliseconds, 1 to 600000", o.timeout_arg);
	}
	c = connect_or_die(&o);
	ret = kac_shutdown(c, (int)ms, o.reboot, &err);
	kac_close(c);
	return ret ? op_fail("shutdown", &err) : 0;
}

struct env_state {
	int json;
	int n;
};

static int env_entry(void *arg, const char *e)
{
	struct env_state *s = arg;
	size_t kl = strcspn(e, "=");
	char key[4096];

	if (!s->json) {
		put_guest(e, 0);
		putchar('\n');
		return 0;
	}
	snprintf(key, sizeof(key), "%.*s", (int)(kl < sizeof(key) ? kl : sizeof(key) - 1), e);
	printf("%s", s->n++ ? "," : "{");
	json_str(key);
	putchar(':');
	json_str(e[kl] ? e + kl + 1 : "");
	return 0;
}

static int cmd_env(int argc, char **argv)
{
	struct common o;
	struct kac_err err = { "", 0 };
	struct env_state st = { 0, 0 };
	struct kac *c;
	const char *sub;
	char *val = NULL;
	int i, ret;

	i = parse_opts(argc, argv, &o);
	sub = i < argc ? argv[i++] : "list";
	if ((!strcmp(sub, "list") && i != argc) || (!strcmp(sub, "get") && argc - i != 1) ||
	    (!strcmp(sub, "unset") && argc - i != 1) || (!strcmp(sub, "set") && argc - i != 2))
		die_usage("env: expected list, get KEY, set KEY VALUE or unset KEY");
	if (strcmp(sub, "list") && strcmp(sub, "get") && strcmp(sub, "set") && strcmp(sub, "unset"))
		die_usage("env: %s: expected list, get, set or unset", sub);
	c = connect_or_die(&o);
	if (!strcmp(sub, "list")) {
		st.json = o.json;
		ret = kac_env_list(c, env_entry, &st, &err);
		if (!ret && o.json)
			puts(st.n ? "}" : "{}");
	} else if (!strcmp(sub, "get")) {
		ret = kac_env_get(c, argv[i], &val, &err);
		if (!ret && !val) {
			kac_close(c);
			fprintf(stderr, "%s: env: %s is not set in the guest's default environment\n", prog, argv[i]);
			return EXIT_FAIL;
		}
		if (!ret)
			puts(val);
		free(val);
	} else if (!strcmp(sub, "set")) {
		ret = kac_env_set(c, argv[i], argv[i + 1], &err);
	} else {
		ret = kac_env_unset(c, argv[i], &err);
	}
	kac_close(c);
	return ret ? op_fail("env", &err) : 0;
}

/* ---- ports -------------------------------------------------------------------- */

static uint16_t parse_port(const char *s, const char *what)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *end || v < 1 || v > 65535)
		die_usage("%s %s: expected a TCP port, 1 to 65535", what, s);
	return (uint16_t)v;
}

/*
 * Copy bytes both ways between (a_in, a_out) and b until both directions
 * have ended; an ended direction is passed on as a half-close
 * (shutdown(SHUT_WR) on a socket, close on a pipe). 0, or -errno.
 */
static int relay(int a_in, int a_out, int b)
{
	static char ab[65536], ba[65536];
	size_t abn = 0, ban = 0;
	int a_eof = 0, b_eof = 0, ab_done = 0, ba_done = 0;
	ssize_t n;

	while (!ab_done || !ba_done) {
		struct pollfd p[3];
		int k = 0, ia = -1, ib = -1, iw = -1;

		if (!a_eof && !abn) {
			ia = k;
			p[k++] = (struct pollfd){ .fd = a_in, .events = POLLIN };
		}
		if ((!b_eof && !ban) || abn) {
			ib = k;
			p[k++] = (struct pollfd){ .fd = b, .events = (short)((!b_eof && !ban ? POLLIN : 0) |
									       (abn ? POLLOUT : 0)) };
		}
		if (ban) {
			iw = k;
			p[k++] = (struct pollfd){ .fd = a_out, .events = POLLOUT };
		}
		if (poll(p, (nfds_t)k, -1) < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (ia >= 0 && p[ia].revents) {
			n = read(a_in, ab, sizeof(ab));
			if (n < 0 && errno != EINTR && errno != EAGAIN)
				return -errno;
			if (n == 0)
				a_eof = 1;
			else if (n > 0)
				abn = (size_t)n;
		}
		if (ib >= 0 && (p[ib].revents & POLLOUT) && abn) {
			n = send(b, ab, abn, MSG_NOSIGNAL);
			if (n < 0 && errno != EINTR && errno != EAGAIN)
				return -errno;
			if (n > 0) {
				memmove(ab, ab + n, abn - (size_t)n);
				abn -= (size_t)n;
			}
		}
		if (ib >= 0 && (p[ib].revents & (POLLIN | POLLHUP | POLLERR)) && !b_eof && !ban) {
			n = read(b, ba, sizeof(ba));
			if (n < 0 && errno != EINTR && errno != EAGAIN)
				return -errno;
			if (n == 0)
				b_eof = 1;
			else if (n > 0)
				ban = (size_t)n;
		}
		if (iw >= 0 && p[iw].revents) {
			n = write(a_out, ba, ban);
			if (n < 0 && errno != EINTR && errno != EAGAIN)
				return -errno;
			if (n > 0) {
				memmove(ba, ba + n, ban - (size_t)n);
				ban -= (size_t)n;
			}
		}
		if (a_eof && !abn && !ab_done) {
			shutdown(b, SHUT_WR);
			ab_done = 1;
		}
		if (b_eof && !ban && !ba_done) {
			/* A half-close, passed on: our side may still send. */
			if (a_out != a_in)
				close(a_out);
			else
				shutdown(a_out, SHUT_WR);
			ba_done = 1;
		}
	}
	return 0;
}

static int cmd_connect(int argc, char **argv)
{
	struct common o;
	struct kac_err err = { "", 0 };
	struct kac *c;
	uint16_t port;
	int i, ret, fd;

	i = parse_opts(argc, argv, &o);
	if (argc - i != 1)
		die_usage("connect: expected one guest PORT");
	port = parse_port(argv[i], "connect:");
	signal(SIGPIPE, SIG_IGN);
	c = connect_or_die(&o);
	if (!o.raw) {
		ret = kac_port_connect(c, port, o.addr, 0, 1, &err);
		kac_close(c);
		return ret ? op_fail(argv[i], &err) : 0;
	}
	ret = kac_port_raw(c, port, o.addr, &fd, &err);
	if (ret)
		return op_fail(argv[i], &err);
	ret = relay(0, 1, fd);
	close(fd);
	if (ret) {
		fprintf(stderr, "%s: port %u: %s\n", prog, port, strerror(-ret));
		return EXIT_FAIL;
	}
	return 0;
}

static int cmd_forward(int argc, char **argv)
{
	struct common o;
	struct sockaddr_in sa = { .sin_family = AF_INET };
	uint16_t lport, gport;
	char spec[32], *colon;
	int i, lfd, one = 1;

	i = parse_opts(argc, argv, &o);
	if (argc - i != 1 || strlen(argv[i]) >= sizeof(spec) || !(colon = strchr(argv[i], ':')))
		die_usage("forward: expected LOCALPORT:GUESTPORT");
	strcpy(spec, argv[i]);
	colon = spec + (colon - argv[i]);
	*colon = '\0';
	lport = parse_port(spec, "forward: local port");
	gport = parse_port(colon + 1, "forward: guest port");
	signal(SIGPIPE, SIG_IGN);
	signal(SIGCHLD, SIG_IGN);	/* one child per client, reaped by the kernel */
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sa.sin_port = htons(lport);
	if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(lfd, 64) < 0) {
		fprintf(stderr, "%s: forward: 127.0.0.1:%u: %s (pick another local port)\n", prog, lport,
			strerror(errno));
		return EXIT_FAIL;
	}
	fprintf(stderr, "%s: forwarding 127.0.0.1:%u to guest port %u\n", prog, lport, gport);
	for (;;) {
		int cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC), fd, ret;
		struct kac_err err = { "", 0 };
		struct kac *c;
		pid_t pid;

		if (cfd < 0) {
			if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE)
				continue;
			fprintf(stderr, "%s: forward: accept: %s\n", prog, strerror(errno));
			return EXIT_FAIL;
		}
		pid = fork();
		if (pid < 0) {
			fprintf(stderr, "%s: forward: fork: %s\n", prog, strerror(errno));
			close(cfd);
			continue;
		}
		if (pid > 0) {
			close(cfd);
			continue;
		}
		close(lfd);
		ret = kac_connect(&c, o.uds, o.connect_ms, &err);
		if (!ret) {
			kac_set_timeout(c, o.agent_ms);
			ret = kac_port_raw(c, gport, o.addr, &fd, &err);
		}
		if (ret) {
			fprintf(stderr, "%s: forward: guest port %u: %s\n", prog, gport, err.msg);
			_exit(EXIT_FAIL);
		}
		ret = relay(cfd, cfd, fd);
		_exit(ret ? EXIT_FAIL : 0);
	}
}

static int port_entry(void *arg, const struct kac_listener *l)
{
	int *json = arg;

	if (json[0]) {
		printf("%s{\"port\":%u,\"pid\":%llu,\"addr\":", json[1]++ ? "," : "", l->port,
		       (unsigned long long)l->pid);
		json_str(l->addr);
		putchar('}');
	} else {
		printf("%u\t%llu\t%s\n", l->port, (unsigned long long)l->pid, l->addr);
	}
	return 0;
}

static int cmd_ports(int argc, char **argv)
{
	struct common o;
	struct kac_err err = { "", 0 };
	struct kac_listener l;
	struct kac *c;
	int i, ret, json[2] = { 0, 0 };

	i = parse_opts(argc, argv, &o);
	timeout_secs(&o);
	if (argc - i != 0 && !(argc - i == 2 && strcmp(argv[i], "wait") == 0))
		die_usage("ports: expected no argument, or wait PORT");
	c = connect_or_die(&o);
	if (argc - i == 2) {
		ret = kac_port_wait(c, parse_port(argv[i + 1], "ports wait"), 0, o.timeout_s * 1000, &l, &err);
		kac_close(c);
		if (ret)
			return op_fail("ports wait", &err);
		json[0] = o.json;
		port_entry(json, &l);
		if (o.json)
			putchar('\n');
		return 0;
	}
	json[0] = o.json;
	if (o.json)
		putchar('[');
	ret = kac_port_list(c, 0, port_entry, json, &err);
	kac_close(c);
	if (o.json)
		puts("]");
	return ret ? op_fail("ports", &err) : 0;
}

int main(int argc, char **argv)
{
	const char *cmd;

	if (argc < 2)
		die_usage("no command given");
	cmd = argv[1];
	if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
		fputs(usage_text, stdout);
		return 0;
	}
	/* The subcommand's options start after it. */
	argv++;
	argc--;
	if (strcmp(cmd, "exec") == 0)
		return cmd_exec(argc, argv);
	if (strcmp(cmd, "shell") == 0)
		return cmd_shell(argc, argv);
	if (strcmp(cmd, "attach") == 0)
		return cmd_attach(argc, argv);
	if (strcmp(cmd, "ps") == 0)
		return cmd_ps(argc, argv);
	if (strcmp(cmd, "wait") == 0)
		return cmd_wait(argc, argv);
	if (strcmp(cmd, "release") == 0)
		return cmd_release(argc, argv);
	if (strcmp(cmd, "cp") == 0)
		return cmd_cp(argc, argv);
	if (strcmp(cmd, "ls") == 0)
		return cmd_ls(argc, argv);
	if (strcmp(cmd, "stat") == 0)
		return cmd_stat(argc, argv);
	if (strcmp(cmd, "walk") == 0)
		return cmd_walk(argc, argv);
	if (strcmp(cmd, "copy") == 0)
		return cmd_copy(argc, argv);
	if (strcmp(cmd, "mkdir") == 0 || strcmp(cmd, "rm") == 0 || strcmp(cmd, "mv") == 0)
		return cmd_simple(argc, argv, cmd);
	if (strcmp(cmd, "identity") == 0)
		return cmd_identity(argc, argv);
	if (strcmp(cmd, "shutdown") == 0)
		return cmd_shutdown(argc, argv);
	if (strcmp(cmd, "env") == 0)
		return cmd_env(argc, argv);
	if (strcmp(cmd, "connect") == 0)
		return cmd_connect(argc, argv);
	if (strcmp(cmd, "forward") == 0)
		return cmd_forward(argc, argv);
	if (strcmp(cmd, "ports") == 0)
		return cmd_ports(argc, argv);
	die_usage("%s: unknown command", cmd);
}
