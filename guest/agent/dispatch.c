/*
 * kiln-agent: frames from the host. HELLO, PING and the stream frames are
 * handled here; a REQUEST goes through the op table: its op names an entry
 * whose flags say what an agent may refuse, whose check reads and checks the
 * arguments where a pure checker exists (agent_proto.h), and whose handler
 * does the work.
 */
#include "agent_int.h"

/* ---- request arguments ----------------------------------------------------------- */

char *arg_str(const struct kp_frame *f, uint8_t tag, int *bad)
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

uint64_t arg_u64(const struct kp_frame *f, uint8_t tag, uint64_t dflt, int *bad)
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

char **arg_list(const struct kp_frame *f, uint8_t tag, size_t *n, int *bad)
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

void strv_free(char **v)
{
	size_t i;

	for (i = 0; v && v[i]; i++)
		free(v[i]);
	free(v);
}


/* ---- the op table ------------------------------------------------------------------- */

/* What an agent built for a fuzzer refuses (AGENT_NO_EXEC, AGENT_NO_PORTS). */
enum { OPF_EXEC = 1 << 0, OPF_PORT = 1 << 1 };

struct op_desc {
	const char *name;
	unsigned flags;		/* OPF_* */
	/* Read and check the arguments into r->args: 0, or -1 with *why for KP_ERR_BAD_ARGS. */
	int (*check)(struct req *r, const char **why);
	void (*run)(struct conn *c, const struct req *r);
};

static int check_fh_open(struct req *r, const char **why)
{
	return kp_args_fh_open(r->f->payload, r->f->len, &r->args.open, why);
}

static int check_fh(struct req *r, const char **why)
{
	return kp_args_fh(r->f->payload, r->f->len, r->op, &r->args.fh, why);
}

static int check_walk(struct req *r, const char **why)
{
	return kp_args_walk(r->f->payload, r->f->len, &r->args.walk, why);
}

#define OP(code, nm, fl, chk, fn)	[code] = { .name = nm, .flags = fl, .check = chk, .run = fn }
static const struct op_desc op_table[] = {
	OP(KP_OP_HEALTH, "health", 0, NULL, op_health),
	OP(KP_OP_IDENTITY, "identity", 0, NULL, op_identity),
	OP(KP_OP_SHUTDOWN, "shutdown", 0, NULL, op_shutdown),
	OP(KP_OP_ENV_GET, "env get", 0, NULL, op_env),
	OP(KP_OP_ENV_SET, "env set", 0, NULL, op_env),
	OP(KP_OP_ENV_DELETE, "env delete", 0, NULL, op_env),
	OP(KP_OP_ENV_LIST, "env list", 0, NULL, op_env),
	OP(KP_OP_EXEC, "exec", OPF_EXEC, NULL, op_exec),
	OP(KP_OP_ATTACH, "attach", 0, NULL, op_attach),
	OP(KP_OP_SIGNAL, "signal", 0, NULL, op_signal),
	OP(KP_OP_RESIZE, "resize", 0, NULL, op_resize),
	OP(KP_OP_WAIT, "wait", 0, NULL, op_wait),
	OP(KP_OP_RELEASE, "release", 0, NULL, op_release),
	OP(KP_OP_PROC_LIST, "proc list", 0, NULL, op_proc_list),
	OP(KP_OP_STAT, "stat", 0, NULL, op_stat),
	OP(KP_OP_READDIR, "readdir", 0, NULL, op_readdir),
	OP(KP_OP_MKDIR, "mkdir", 0, NULL, op_mkdir),
	OP(KP_OP_REMOVE, "remove", 0, NULL, op_remove),
	OP(KP_OP_RENAME, "rename", 0, NULL, op_rename),
	OP(KP_OP_FILE_WRITE, "file write", 0, NULL, op_file_write),
	OP(KP_OP_FILE_READ, "file read", 0, NULL, op_file_read),
	OP(KP_OP_CHMOD, "chmod", 0, NULL, op_path_simple),
	OP(KP_OP_CHOWN, "chown", 0, NULL, op_path_simple),
	OP(KP_OP_COPY, "copy", 0, NULL, op_copy),
	OP(KP_OP_LINK, "link", 0, NULL, op_path_simple),
	OP(KP_OP_SYMLINK, "symlink", 0, NULL, op_path_simple),
	OP(KP_OP_READLINK, "readlink", 0, NULL, op_path_query),
	OP(KP_OP_REALPATH, "realpath", 0, NULL, op_path_query),
	OP(KP_OP_TRUNCATE, "truncate", 0, NULL, op_path_simple),
	OP(KP_OP_UTIME, "utime", 0, NULL, op_path_simple),
	OP(KP_OP_MKTEMP, "mktemp", 0, NULL, op_mktemp),
	OP(KP_OP_UMASK, "umask", 0, NULL, op_umask),
	OP(KP_OP_WALK, "walk", 0, check_walk, op_walk),
	OP(KP_OP_FH_OPEN, "fh open", 0, check_fh_open, op_fh_open),
	OP(KP_OP_FH_READ, "fh read", 0, check_fh, op_fh),
	OP(KP_OP_FH_WRITE, "fh write", 0, check_fh, op_fh),
	OP(KP_OP_FH_SEEK, "fh seek", 0, check_fh, op_fh),
	OP(KP_OP_FH_STAT, "fh stat", 0, check_fh, op_fh),
	OP(KP_OP_FH_SYNC, "fh sync", 0, check_fh, op_fh),
	OP(KP_OP_FH_TRUNCATE, "fh truncate", 0, check_fh, op_fh),
	OP(KP_OP_FH_LOCK, "fh lock", 0, check_fh, op_fh),
	OP(KP_OP_FH_UNLOCK, "fh unlock", 0, check_fh, op_fh),
	OP(KP_OP_FH_UTIME, "fh utime", 0, check_fh, op_fh),
	OP(KP_OP_FH_CLOSE, "fh close", 0, check_fh, op_fh),
	OP(KP_OP_PORT_CONNECT, "port connect", OPF_PORT, NULL, op_port_connect),
	OP(KP_OP_PORT_WAIT, "port wait", OPF_PORT, NULL, op_port_wait),
	OP(KP_OP_PORT_LIST, "port list", OPF_PORT, NULL, op_port_list),
};
#undef OP
_Static_assert(sizeof(op_table) / sizeof(op_table[0]) == KP_OP_PORT_LIST + 1, "the op table ends at the last op");

/*
 * AGENT_JAIL: every path argument is relative and has no ".." component, so
 * an agent that a fuzzer drives from a temporary directory stays in it (a
 * symlink's target is a path argument too).
 */
static int jail_ok(const struct kp_frame *f)
{
	struct kp_rec rec;
	struct kp_field fl;

	kp_rec_open(&rec, f->payload, f->len);
	while (kp_rec_next(&rec, &fl) == 1) {
		const uint8_t *p = fl.val, *end = fl.val + fl.len;

		if ((fl.tag != KT_PATH && fl.tag != KT_PATH2 && fl.tag != KT_CWD) || fl.kind != KP_K_STR)
			continue;
		if (fl.len && p[0] == '/')
			return 0;
		while (p < end) {
			const uint8_t *q = memchr(p, '/', (size_t)(end - p));
			size_t n = (size_t)((q ? q : end) - p);

			if (n == 2 && p[0] == '.' && p[1] == '.')
				return 0;
			p += n + 1;
		}
	}
	return 1;
}

/*
 * KT_AS_USER: the op's file system checks and the files it creates are the
 * default user's. The agent is one thread, so its filesystem ids and
 * groups may change for the length of one op and come back to root's after
 * (a descriptor opened meanwhile keeps the access it was opened with).
 */
static void run_as_user(struct conn *c, const struct op_desc *d, const struct req *r)
{
	const struct agent_user *u = &c->ag->user;

	if (setgroups(u->ngroups, (const gid_t *)u->groups)) {
		send_error(c, r->f->id, KP_ERR_OS, errno, "%s: setgroups: %s", d->name, strerror(errno));
		return;
	}
	setfsgid(u->gid);
	setfsuid(u->uid);
	d->run(c, r);
	setfsuid(0);
	setfsgid(0);
	setgroups(0, NULL);
}

static void handle_request(struct conn *c, const struct kp_frame *f)
{
	struct agent *a = c->ag;
	int bad = 0;
	struct req r = { .f = f, .op = arg_u64(f, KT_OP, 0, &bad) };
	const struct op_desc *d;
	const char *why = NULL;

	if (stream_find(c, f->id)) {
		send_error(c, f->id, KP_ERR_ID_IN_USE, 0, "request id %u is live", f->id);
		return;
	}
	if (c->nstreams >= MAX_IDS) {
		send_error(c, f->id, KP_ERR_LIMIT, 0, "%d live requests already", MAX_IDS);
		return;
	}
	c->nreq++;
	if (bad || !r.op) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "request without a U64 OP");
		return;
	}
	d = r.op < sizeof(op_table) / sizeof(op_table[0]) ? &op_table[r.op] : NULL;
	if (!d || !d->run) {
		send_error(c, f->id, KP_ERR_UNKNOWN_OP, 0, "unknown op 0x%llx", (unsigned long long)r.op);
		return;
	}
	if (((d->flags & OPF_EXEC) && (a->flags & AGENT_NO_EXEC)) ||
	    ((d->flags & OPF_PORT) && (a->flags & AGENT_NO_PORTS))) {
		send_error(c, f->id, KP_ERR_OS, EPERM, "%s: not served by this agent (a test build)", d->name);
		return;
	}
	if ((a->flags & AGENT_JAIL) && !jail_ok(f)) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "%s: paths must be relative, without \"..\"", d->name);
		return;
	}
	if (d->check && d->check(&r, &why) < 0) {
		send_error(c, f->id, KP_ERR_BAD_ARGS, 0, "%s", why);
		return;
	}
	if (r.op >= KP_OP_STAT && r.op <= KP_OP_FH_CLOSE && a->has_user && arg_u64(f, KT_AS_USER, 0, &bad) == 1)
		run_as_user(c, d, &r);
	else
		d->run(c, &r);
}

/* ---- frames from the host ----------------------------------------------------------- */

/* The peer's HELLO: its version, window and max_frame. -1 when c must close. */
static int handle_hello(struct conn *c, const struct kp_frame *f)
{
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

int handle_frame(struct conn *c, const struct kp_frame *f)
{
	struct stream *s;
	uint8_t b[KP_HDR_LEN + 8];
	uint64_t v;

	if (!c->got_hello)
		return handle_hello(c, f);
	switch (f->type) {
	case KP_HELLO:
		send_error(c, 0, KP_ERR_PROTO, 0, "second HELLO");
		return -1;
	case KP_PING:
		kp_parse_u64(f, &v);
		conn_put(c, b, kp_enc_ping(b, KP_PONG, v));
		return 0;
	case KP_PONG:
		return 0;
	case KP_REQUEST:
		handle_request(c, f);
		return 0;
	case KP_CANCEL:
	case KP_DATA:
	case KP_EOF:
	case KP_WINDOW:
		/* No stream: raced with the request's end; the frame may have been in flight. */
		s = stream_find(c, f->id);
		if (!s)
			return 0;
		if (f->type == KP_WINDOW)
			return stream_window(c, s, f);
		if (f->type == KP_CANCEL)
			stream_cancel(c, s, f->channel);
		else
			stream_input(c, s, f);
		return 0;
	default:	/* RESPONSE, ERROR, EVENT: only the agent sends those */
		send_error(c, 0, KP_ERR_PROTO, 0, "%s from the host", kp_type_name(f->type));
		return -1;
	}
}
