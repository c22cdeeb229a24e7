/*
 * Internal to the kiln CLI (api/kiln*.c): the options every command parses,
 * the exit statuses, the helpers the commands share and the commands.
 */
#ifndef KILN_CLI_H
#define KILN_CLI_H

#include <stdint.h>

#include "agent_client.h"

#define EXIT_FAIL	1
#define EXIT_USAGE	2
#define EXIT_TIMEOUT	124
#define EXIT_KILN	125
#define EXIT_NOEXEC	126
#define EXIT_NOTFOUND	127

/* What a command's options say (parse_opts). */
struct common {
	const char *uds;		/* --uds (or $KILN_UDS); NULL when the agent is reached through kilnd */
	const char *sandbox;		/* without --uds: the sandbox ID, the first operand */
	const char *endpoint;		/* --endpoint: kilnd (else $KILN_ENDPOINT, or the default) */
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

/* ---- kiln.c: the command front ------------------------------------------------ */

extern const char *prog;

/* Print the usage text on stdout (kiln --help). */
void kiln_usage(void);

/* Print "kiln: " fmt " (see kiln --help)" on stderr and exit EXIT_USAGE. */
void die_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* An unsigned decimal number in [lo, hi] (K and M suffixes when units), or die_usage naming what. */
uint64_t parse_num(const char *s, const char *what, uint64_t lo, uint64_t hi, int units);

/* The options of a command's argv into o (argv[0] is the command); returns the index of the first operand. */
int parse_opts(int argc, char **argv, struct common *o);

/* --timeout in seconds into o->timeout_s (every command but shutdown). */
void timeout_secs(struct common *o);

/*
 * Connect to the agent o names: through kilnd's agent WebSocket for
 * o->sandbox, else through the VMM's socket o->uds; the agent timeout set.
 * Returns 0 with *c, or -errno with err->msg.
 */
int agent_connect(const struct common *o, struct kac **c, struct kac_err *err);

/* The agent connection o names, or exit EXIT_KILN with the reason. */
struct kac *connect_or_die(const struct common *o);

/* What to add to an error: how to wait longer for a silent agent ("" for other errors). */
const char *hint(const struct kac_err *err);

/* Print "kiln: what: " the error on stderr; returns EXIT_FAIL. */
int op_fail(const char *what, const struct kac_err *err);

/* The path of "guest:PATH", or NULL when s has no guest: prefix. */
const char *guest_path(const char *s);

/* A guest path operand: the path of "guest:PATH", or s itself. */
const char *guest_arg(const char *s);

/* The one guest PATH operand argv[i] of command argv[0], or die_usage. */
const char *one_path(int argc, char **argv, int i);

/* die_usage unless command argv[0] has no operands (i == argc). */
void no_operands(int argc, char **argv, int i);

/* kac_close(c); the command's exit status: 0, or EXIT_FAIL (op_fail with what) when ret. */
int cmd_done(struct kac *c, int ret, const char *what, const struct kac_err *err);

/* A listing on stdout (ps, ls, walk, ports): with --json its entries in "[" "]". */
struct listing {
	int json;
	unsigned long long n;		/* entries so far */
};

/* Start a listing as o says: "[" with --json. */
void list_begin(struct listing *l, const struct common *o);

/* The separator before the next JSON entry: "," after the first. */
const char *list_sep(struct listing *l);

/* End a listing: kac_close(c), "]" with --json; then as cmd_done. */
int list_end(struct listing *l, struct kac *c, int ret, const char *what, const struct kac_err *err);

/* Print a name the guest chose, made safe for a terminal; sep: what newlines and tabs become (0: themselves). */
void put_guest(const char *s, char sep);

/* Print s as a JSON string. */
void json_str(const char *s);

/* "file", "directory", ... for the S_IFMT bits of t. */
const char *type_name(uint32_t t);

/* ---- the commands: each takes its argv (argv[0] the command) and returns kiln's exit status */

int cmd_exec(int argc, char **argv);		/* kiln_exec.c */
int cmd_shell(int argc, char **argv);
int cmd_attach(int argc, char **argv);
int cmd_wait(int argc, char **argv);
int cmd_release(int argc, char **argv);
int cmd_ps(int argc, char **argv);
int cmd_cp(int argc, char **argv);		/* kiln_files.c */
int cmd_copy(int argc, char **argv);
int cmd_ls(int argc, char **argv);
int cmd_stat(int argc, char **argv);
int cmd_walk(int argc, char **argv);
int cmd_simple(int argc, char **argv);		/* mkdir, rm, mv (argv[0]) */
int cmd_identity(int argc, char **argv);	/* kiln_ctl.c */
int cmd_shutdown(int argc, char **argv);
int cmd_env(int argc, char **argv);
int cmd_connect(int argc, char **argv);		/* kiln_port.c */
int cmd_forward(int argc, char **argv);
int cmd_ports(int argc, char **argv);

#endif
