/*
 * kiln: the command-line client of kilnd (the node daemon's /v1 API) and of
 * a sandbox's agent (docs/agent-protocol.md). The agent is reached through
 * kilnd's agent WebSocket (kiln exec ID ...) or, with --uds, straight
 * through a VMM's vsock unix socket.
 *
 *   kiln create|ls|info|extend|kill|events|metrics|node|token|template ...
 *   kiln exec ID|--uds PATH [--env K=V]... [--cwd DIR] [--timeout S] [-i] [--tty] [--detach] -- CMD ARGS...
 *   kiln shell|attach|ps|wait|release ID|--uds PATH ...
 *   kiln cp   ID|--uds PATH SRC DST      (guest:/path on one side, or both: copy in the guest)
 *   kiln ls|stat|mkdir|rm|mv|copy|walk ID|--uds PATH ...
 *   kiln identity|shutdown|env ID|--uds PATH ...
 *   kiln connect|forward|ports ID|--uds PATH ...
 *
 * Exit status of exec: the command's own; 128+N when it was killed by signal
 * N; 124 on --timeout; 125 when kiln itself failed; 126 not executable; 127
 * not found. Other commands: 0, 1 when the operation failed (or kilnd
 * refused a request), 2 on bad usage, 125 when the agent or kilnd could not
 * be reached.
 */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent_proto.h"
#include "agent_client.h"
#include "kiln_cli.h"
#include "kiln_remote.h"

static const char usage_text[] =
"usage: kiln COMMAND [OPTIONS] ARGS...\n"
"\n"
"Sandboxes, from kilnd (the node daemon) at --endpoint or $KILN_ENDPOINT\n"
"(unix:/PATH or http://HOST:PORT; default " KR_DEFAULT_ENDPOINT "), with\n"
"$KILN_TOKEN sent as a bearer token (needed over TCP):\n"
"  create [--image NAME] [--memory MiB] [--vcpus N] [--timeout session|30s|5m|1h]\n"
"         [--volume /PATH=NAME[:ro]]... [--allow-net HOST]... [--label K=V]...\n"
"         [--env K=V]... [--secret NAME=HOST[,HOST...]:VALUE]... [--json]\n"
"        start a sandbox (of kilnd's default image: Debian where built); prints\n"
"        its id (--json: kilnd's object). May take minutes when its template\n"
"        boots first. It reaches no network but each --allow-net: a host\n"
"        (api.example.com), *.domain, an IP address or CIDR range, each with an\n"
"        optional :PORT; * is every public host. --secret: the guest gets\n"
"        NAME=KILN_SECRET_<hex>, and kilnd puts VALUE in its place in the\n"
"        headers of HTTPS requests to those hosts only (allowed by it; debian\n"
"        image). The hosts end at the first ':' that is not a :PORT (digits then\n"
"        ',' or ':'); VALUE is the rest. VALUE @env:VAR reads $VAR instead, so\n"
"        the value need not be in argv: --secret GH=api.github.com:@env:GH_TOKEN\n"
"  ls [--label K=V]... [--all] [--json]\n"
"        the live sandboxes (--all: ended ones too): id, state, memory, vcpus,\n"
"        stop_at and labels; --label keeps those with every label given\n"
"  info ID [--json]           a sandbox's state, times, size, labels and usage\n"
"  extend ID DURATION | extend ID --to MS [--json]\n"
"        move its stop_at: DURATION (10m) from now, or to MS since the epoch;\n"
"        prints the new stop_at\n"
"  kill ID [--json]           end it now and free everything it holds\n"
"  events ID [--json]         its events: created, restored, extended, killed ...\n"
"  metrics                    kilnd's Prometheus metrics\n"
"  node [--json]              the node: memory, capacity, committed, CPUs\n"
"  token create|ls|revoke ID [--json]\n"
"        API tokens for TCP clients (over the unix socket only); create\n"
"        prints the token once\n"
"  template ls|build [--image NAME] [--memory MiB] [--vcpus N]|rm IMAGE MEMORY_MB VCPUS\n"
"         [--json]    the snapshots sandboxes start from\n"
"  image ls | rm IMAGE [--json]\n"
"        the images sandboxes can boot (minimal, debian, snapshots of volumes)\n"
"  volume create NAME SIZE [--from IMAGE] | ls | info NAME | resize NAME SIZE |\n"
"         snapshot NAME IMAGE | rm NAME [--json]\n"
"        volumes (300M-20G) that outlive sandboxes; attach with create --volume;\n"
"        a snapshot is a read-only image to boot with create --image IMAGE\n"
"  --request-timeout S        wait this long for kilnd's answer (default 60;\n"
"                             create and template build: 600)\n"
"        exit 0, 1 if kilnd refused (its message on stderr), 2 on bad usage,\n"
"        125 if kilnd could not be reached\n"
"\n"
"Inside a sandbox: its agent, through kilnd (the sandbox ID first:\n"
"  kiln exec ID -- uname -a), or through the vsock socket of a VM started with\n"
"  kiln-vmm --vsock cid=3,uds=PATH --cmdline kiln.agent  (--uds PATH, no ID)\n"
"\n"
"agent commands: kiln COMMAND ID|--uds PATH [OPTIONS] ARGS... (through kilnd,\n"
"  125 also when kilnd refuses the agent connection, with its message)\n"
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
"  ls [--json] ID|--uds PATH [DIR]   list a guest directory (default /)\n"
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
"  ID                     the sandbox, through kilnd's agent WebSocket\n"
"  --endpoint EP          kilnd (unix:/PATH or http://HOST:PORT; or $KILN_ENDPOINT)\n"
"  --uds PATH             instead: the VMM's vsock socket (or $KILN_UDS)\n"
"  --connect-timeout S    wait this long for the VM and its agent, or for\n"
"                         kilnd to open the agent connection (default 60)\n"
"  --agent-timeout S      how long the agent may stay silent (default 30, 0: no\n"
"                         limit): a request unanswered, or during a long exec,\n"
"                         attach, cp or wait, no answer to kiln's keep-alive pings;\n"
"                         kiln then fails (exec: 125) instead of waiting forever\n"
"  -h, --help             this text\n";

const char *prog = "kiln";

void kiln_usage(void)
{
	fputs(usage_text, stdout);
}

void die_usage(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s: ", prog);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, " (see kiln --help)\n");
	exit(EXIT_USAGE);
}

enum { OPT_UDS = 256, OPT_ENV, OPT_CWD, OPT_TIMEOUT, OPT_CONNECT_TIMEOUT, OPT_AGENT_TIMEOUT, OPT_JSON, OPT_MODE,
       OPT_ID, OPT_HOSTNAME, OPT_CLEAR_ENV, OPT_CLOCK, OPT_REBOOT, OPT_RAW, OPT_ADDR,
       OPT_DETACH, OPT_ROWS, OPT_COLS, OPT_RING, OPT_OVERFLOW, OPT_FROM, OPT_FROM_ERR, OPT_MAX_DEPTH,
       OPT_FOLLOW, OPT_ENDPOINT };

#define ARG(name, code)		{ name, required_argument, NULL, code }
#define FLAG(name, code)	{ name, no_argument, NULL, code }

static const struct option long_opts[] = {
	ARG("uds", OPT_UDS), ARG("env", OPT_ENV), ARG("cwd", OPT_CWD), ARG("timeout", OPT_TIMEOUT),
	ARG("connect-timeout", OPT_CONNECT_TIMEOUT), ARG("agent-timeout", OPT_AGENT_TIMEOUT), FLAG("json", OPT_JSON),
	ARG("mode", OPT_MODE), FLAG("interactive", 'i'), ARG("id", OPT_ID), ARG("hostname", OPT_HOSTNAME),
	FLAG("clear-env", OPT_CLEAR_ENV), ARG("clock", OPT_CLOCK), FLAG("reboot", OPT_REBOOT), FLAG("raw", OPT_RAW),
	ARG("addr", OPT_ADDR), FLAG("detach", OPT_DETACH), FLAG("tty", 't'), ARG("rows", OPT_ROWS),
	ARG("cols", OPT_COLS), ARG("ring", OPT_RING), ARG("overflow", OPT_OVERFLOW), ARG("from", OPT_FROM),
	ARG("from-err", OPT_FROM_ERR), ARG("max-depth", OPT_MAX_DEPTH), FLAG("follow", OPT_FOLLOW), FLAG("help", 'h'),
	ARG("endpoint", OPT_ENDPOINT),
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
uint64_t parse_num(const char *s, const char *what, uint64_t lo, uint64_t hi, int units)
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
int parse_opts(int argc, char **argv, struct common *o)
{
	int c;
	char *end;

	memset(o, 0, sizeof(*o));
	o->uds = getenv("KILN_UDS");
	o->connect_ms = 60000;
	o->agent_ms = KAC_TIMEOUT_DEFAULT_MS;
	o->mode = 0755;
	o->max_depth = KAC_WALK_ALL;
	optind = 0;	/* 0: glibc starts afresh, ordering (+) included */
	/*
	 * "+": stop at the first operand, so the guest command keeps its
	 * options. Without --uds that operand is the sandbox ID, and the
	 * options go on after it.
	 */
again:
	while ((c = getopt_long(argc, argv, "+hiprft", long_opts, NULL)) != -1) {
		switch (c) {
		case OPT_UDS: o->uds = optarg; break;
		case OPT_ENDPOINT: o->endpoint = optarg; break;
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
	if (o->uds && *o->uds) {
		if (o->endpoint)
			die_usage("%s: --uds and --endpoint do not go together", argv[0]);
		return optind;
	}
	if (!o->sandbox) {
		if (optind >= argc || strcmp(argv[optind - 1], "--") == 0)
			die_usage("%s: expected the sandbox ID first (kiln %s ID ...), or --uds PATH", argv[0], argv[0]);
		kr_check_id(argv[optind], "sandbox ID");
		o->sandbox = argv[optind++];
		goto again;
	}
	o->uds = NULL;
	return optind;
}

/* --timeout in seconds (every command but shutdown). */
void timeout_secs(struct common *o)
{
	if (o->timeout_arg)
		o->timeout_s = parse_secs(o->timeout_arg, "--timeout");
}

int agent_connect(const struct common *o, struct kac **c, struct kac_err *err)
{
	struct kr_endpoint ep;
	struct kiln_err kerr;
	const char *env = getenv("KILN_ENDPOINT");
	char why[128];
	int ret, fd;

	err->code = 0;
	if (!o->sandbox) {
		ret = kac_connect(c, o->uds, o->connect_ms, err);
	} else {
		ret = kr_endpoint_parse(&ep, o->endpoint ? o->endpoint : env && *env ? env : KR_DEFAULT_ENDPOINT,
					&kerr);
		if (!ret)
			ret = kr_tunnel_open(&ep, o->sandbox, o->connect_ms, &fd, &kerr);
		if (ret) {
			snprintf(err->msg, sizeof(err->msg), "%s", kerr.msg);
			return ret;
		}
		ret = kac_connect_fd(c, fd, o->connect_ms, err);
		if (ret && kr_tunnel_close_reason(why, sizeof(why)))
			snprintf(err->msg, sizeof(err->msg), "kilnd closed the agent connection of %s: %s",
				 o->sandbox, why);
	}
	if (!ret)
		kac_set_timeout(*c, o->agent_ms);
	return ret;
}

struct kac *connect_or_die(const struct common *o)
{
	struct kac_err err = { "", 0 };
	struct kac *c;

	if (agent_connect(o, &c, &err)) {
		fprintf(stderr, "%s: %s\n", prog, err.msg);
		exit(EXIT_KILN);
	}
	return c;
}

/* What to add to an error: how to wait longer for a silent agent, or why kilnd hung up. */
const char *hint(const struct kac_err *err)
{
	static char buf[160];
	char why[128];

	if (err->code == KAC_ERR_TIMEOUT)
		return " (is the guest overloaded or its agent stuck? --agent-timeout S waits longer, 0 without limit)";
	if (!kr_tunnel_close_reason(why, sizeof(why)))
		return "";
	snprintf(buf, sizeof(buf), " (kilnd: %s)", why);
	return buf;
}

/* ---- output ----------------------------------------------------------------- */

/*
 * Print a name the guest chose (a file name, an argument, an env entry). On
 * a terminal its control bytes become '?', as ls shows them: a crafted name
 * must not move the cursor, retitle the window or type into the shell. Into
 * a pipe or file the bytes pass as they are. sep: what newlines and tabs
 * become (0: themselves).
 */
void put_guest(const char *s, char sep)
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

const char *guest_path(const char *s)
{
	return strncmp(s, "guest:", 6) == 0 ? s + 6 : NULL;
}

const char *guest_arg(const char *s)
{
	return guest_path(s) ? guest_path(s) : s;
}

const char *one_path(int argc, char **argv, int i)
{
	if (argc - i != 1)
		die_usage("%s: expected one PATH", argv[0]);
	return guest_arg(argv[i]);
}

void no_operands(int argc, char **argv, int i)
{
	if (i != argc)
		die_usage("%s: unexpected argument %s", argv[0], argv[i]);
}

int op_fail(const char *what, const struct kac_err *err)
{
	fprintf(stderr, "%s: %s: %s%s\n", prog, what, err->msg, hint(err));
	return EXIT_FAIL;
}

int cmd_done(struct kac *c, int ret, const char *what, const struct kac_err *err)
{
	kac_close(c);
	return ret ? op_fail(what, err) : 0;
}

void list_begin(struct listing *l, const struct common *o)
{
	l->json = o->json;
	l->n = 0;
	if (l->json)
		putchar('[');
}

const char *list_sep(struct listing *l)
{
	return l->n++ ? "," : "";
}

int list_end(struct listing *l, struct kac *c, int ret, const char *what, const struct kac_err *err)
{
	kac_close(c);
	if (l->json)
		puts("]");
	return ret ? op_fail(what, err) : 0;
}

const char *type_name(uint32_t t)
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
void json_str(const char *s)
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

/* The commands: each gets its own argv, argv[0] its name. */
static const struct command {
	const char *name;
	int (*run)(int argc, char **argv);
} commands[] = {
	{ "exec", cmd_exec }, { "shell", cmd_shell }, { "attach", cmd_attach }, { "ps", cmd_ps },
	{ "wait", cmd_wait }, { "release", cmd_release }, { "cp", cmd_cp }, { "ls", kr_cmd_ls },
	{ "stat", cmd_stat }, { "walk", cmd_walk }, { "copy", cmd_copy }, { "mkdir", cmd_simple },
	{ "rm", cmd_simple }, { "mv", cmd_simple }, { "identity", cmd_identity }, { "shutdown", cmd_shutdown },
	{ "env", cmd_env }, { "connect", cmd_connect }, { "forward", cmd_forward }, { "ports", cmd_ports },
	{ "create", kr_cmd_create }, { "info", kr_cmd_info }, { "extend", kr_cmd_extend }, { "kill", kr_cmd_kill },
	{ "events", kr_cmd_events }, { "metrics", kr_cmd_metrics }, { "node", kr_cmd_node },
	{ "token", kr_cmd_token }, { "template", kr_cmd_template }, { "image", kr_cmd_image },
	{ "volume", kr_cmd_volume },
};

int main(int argc, char **argv)
{
	const char *cmd;
	size_t i;

	if (argc < 2)
		die_usage("no command given");
	cmd = argv[1];
	if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
		fputs(usage_text, stdout);
		return 0;
	}
	/* The subcommand's options start after it. */
	for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (strcmp(cmd, commands[i].name) == 0)
			return commands[i].run(argc - 1, argv + 1);
	die_usage("%s: unknown command", cmd);
}
