/*
 * Internal to the agent client library (api/ac_*.c): the connection and
 * operation state the parts share, and the engine they build on.
 * Not for the library's users, who include agent_client.h.
 */
#ifndef KILN_AC_INT_H
#define KILN_AC_INT_H

#include <stddef.h>
#include <stdint.h>

#include "agent_proto.h"
#include "agent_client.h"

#define KAC_WINDOW	KP_DEFAULT_WINDOW	/* credit we grant per channel */
#define KAC_RBUF	(256u << 10)		/* socket read-ahead */
#define KAC_CHUNK	(256u << 10)		/* largest DATA we send */
#define KAC_SBUF	(KP_MAX_CONTROL + KP_HDR_LEN)

struct kac {
	int fd;				/* non-blocking: every wait is a poll with a deadline */
	int timeout_ms;			/* kac_set_timeout; 0: no limit */
	int broken;			/* -errno once the connection is unusable (why says why) */
	int as_user;			/* kac_set_fs_user: file ops carry KT_AS_USER */
	char why[sizeof(((struct kac_err *)0)->msg)];
	uint64_t pings;			/* PINGs sent (their opaque values) */
	uint32_t next_id;
	uint32_t peer_window;		/* the agent's initial credit per channel */
	uint32_t peer_max;		/* the agent's max payload */
	char agent[128];
	struct kp_decoder dec;
	uint8_t *dbuf;			/* decoder payload buffer, KP_MAX_PAYLOAD */
	uint8_t *rbuf;			/* bytes read, not yet decoded: rbuf[rpos..rlen) */
	uint32_t rpos, rlen;
	uint8_t *sbuf;			/* record frames we send */
	uint8_t *chunk;			/* stream input bytes we send */
	/* kac_connect_early: the VMM's "OK" line and the agent's HELLO, still to read. */
	int greet;
	char okline[64];
	uint32_t okn;
	/* An IDENTITY sent ahead of later requests (kac_identity_send): its answer. */
	uint32_t pend_id;		/* 0: none in flight */
	int pend_done, pend_ret;
	char pend_msg[sizeof(((struct kac_err *)0)->msg)];
};

#define KAC_GREET_OK		1
#define KAC_GREET_HELLO		2
#define KAC_EARLY_POLL_US	1000	/* kac_connect_early: a socket bound, not yet listening */
#define KAC_EARLY_WAIT_MS	20	/* kac_connect_early: longest wait on inotify between tries */

/* How long a request may go without a frame (kac_set_timeout). */
enum op_wait {
	OP_ANSWER,		/* answered soon: its next frame is due within the timeout */
	OP_ALIVE,		/* any time while the agent is alive: a PING when quiet, any frame counts */
	OP_ALIVE_STARTED,	/* OP_ANSWER until its first RESPONSE (a process started), then OP_ALIVE */
};

/* One running request and what to do with its frames. */
struct op {
	uint32_t id;
	int done;
	enum op_wait wait;
	int started;			/* its first RESPONSE came */
	int ret;			/* -errno from an ERROR, else 0 */
	/* records: called for RESPONSE and EVENT payloads */
	int (*on_rec)(struct op *o, const struct kp_frame *f);
	void *arg;
	/* channel 0 (host to guest) */
	int in_fd;
	int in_eof_sent;
	uint64_t in_off;
	uint64_t in_credit;
	/* channels 1 and 2 (guest to host) */
	int out_fd[3];
	kac_data_fn out_fn;
	void *out_arg;
	uint64_t out_off[3];
	uint64_t out_credit[3];
	uint32_t out_pend[3];		/* consumed, credit not yet returned */
	int out_dead[3];		/* our consumer failed: discard */
	int out_err;
	/* exec */
	struct kac_exit *ex;
	int sig_fd;
	int sig_pending[8];
	int nsig;
	uint32_t sig_ids[8];		/* SIGNAL requests in flight, answers ignored */
	int64_t size;			/* the U64 result field res_tag (u64_rec), -1 if absent */
	uint8_t res_tag;
	int detach;			/* exec: done at the RESPONSE */
	int tty_fd;			/* SIGWINCH on sig_fd: RESIZE to this terminal's size */
	kac_gap_fn gap_fn;
	void *gap_arg;
	kac_started_fn started_fn;	/* exec: called once the process started */
	void *started_arg;
};

/* ---- ac_conn.c: the connection -------------------------------------------- */

/* err->msg from fmt (err may be NULL); returns -errnum. */
int ac_fail(struct kac_err *err, int errnum, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* CLOCK_MONOTONIC in ms. */
int64_t ac_now_ms(void);

/* Close c for good after ret (a violation, a stall, the agent gone): returns ret. */
int ac_conn_lost(struct kac *c, int ret, const struct kac_err *err);

/* The agent fell silent: -ETIMEDOUT, err->code KAC_ERR_TIMEOUT, the connection closed. */
int ac_conn_stalled(struct kac *c, struct kac_err *err, const char *what);

/* Send the whole frame p of n bytes, waiting at most the timeout for room: 0, or -errno. */
int ac_send_frame(struct kac *c, const void *p, size_t n, struct kac_err *err);

/* The next request id (never 0). */
uint32_t ac_new_id(struct kac *c);

/* The next frame from the buffered bytes (reading the socket if may_read): 0, -EAGAIN, or -errno. */
int ac_next_frame(struct kac *c, struct kp_frame *f, int may_read, struct kac_err *err);

/* Block until deadline (ms, ac_now_ms's clock) for the next frame: 0, or -errno. */
int ac_read_frame(struct kac *c, struct kp_frame *f, int64_t deadline, struct kac_err *err);

/* An ERROR frame into err and its -errno. */
int ac_error_frame(const struct kp_frame *f, struct kac_err *err);

/* ---- ac_op.c: the engine ---------------------------------------------------- */

/* Clear o for request id: no fds, the full window of credit. */
void ac_op_init(struct op *o, uint32_t id);

/* Open the request record w in c's send buffer with KT_OP op. */
void ac_req_begin(struct kac *c, struct kp_recw *w, uint64_t op);

/* Send the REQUEST id with record w: 0, or -errno. */
int ac_req_send(struct kac *c, uint32_t id, struct kp_recw *w, struct kac_err *err);

/* A new request o of operation op, answered soon (OP_ANSWER): w opened for its arguments. */
void ac_op_start(struct kac *c, struct op *o, struct kp_recw *w, uint64_t op);

/* ac_op_start for an op whose RESPONSE and EVENT records go to on_rec, with o->arg = arg. */
void ac_op_start_rec(struct kac *c, struct op *o, struct kp_recw *w, uint64_t op,
		     int (*on_rec)(struct op *o, const struct kp_frame *f), void *arg);

/* Send SIGNAL sig to handle, its answer ignored by o (if not NULL): 0, or -errno. */
int ac_send_signal(struct kac *c, struct op *o, uint64_t handle, int sig, struct kac_err *err);

/* now + timeout_ms, or -1 (no deadline) when timeout_ms <= 0. */
int64_t ac_deadline_of(int timeout_ms);

/* Send o's REQUEST (record w) and run it to its end or deadline (-1: none): o->ret, or -errno. */
int ac_op_send_run(struct kac *c, struct op *o, struct kp_recw *w, int64_t deadline, struct kac_err *err);
/* Run o, whose REQUEST went out already, to its end. */
int ac_op_run(struct kac *c, struct op *o, int64_t deadline, struct kac_err *err);

/* ac_op_send_run without a deadline: one REQUEST, RESPONSE|END or ERROR. */
int ac_simple(struct kac *c, struct op *o, struct kp_recw *w, struct kac_err *err);

/* A simple request op with the string arguments s (field tag) and, if tag2, s2: 0, or -errno. */
int ac_simple_str(struct kac *c, uint64_t op, uint8_t tag, const char *s, uint8_t tag2, const char *s2,
		  struct kac_err *err);

/* Send CANCEL for every channel of request id: 0, or -errno. */
int ac_send_cancel(struct kac *c, uint32_t id, struct kac_err *err);

/* ret, or when 0 the failure of o's output sink (a closed pipe is none) as "writing WHAT: ...". */
int ac_op_out_ret(const struct op *o, int ret, const char *what, struct kac_err *err);

/* ac_op_start for an op whose answer is the U64 field tag, into o->size (-1 if absent). */
void ac_op_start_u64(struct kac *c, struct op *o, struct kp_recw *w, uint64_t op, uint8_t tag);

/*
 * A listing (READDIR, WALK, ENV_LIST, PORT_LIST): each field tag of its
 * answers goes to entry(), which hands it to the caller's callback fn and
 * keeps the callback's error in ret; entries after that error are skipped.
 */
struct ac_list {
	uint8_t tag;			/* the fields listed: KT_ENTRY, KT_ENV */
	int cancel;			/* the callback's error cancels the request and is what the call returns */
	int (*entry)(struct ac_list *l, const struct kp_field *fl);	/* 0, or -errno: malformed */
	union {
		kac_dirent_fn dir;
		kac_walk_fn walk;
		kac_str_fn str;
		kac_listener_fn lst;
	} fn;
	void *arg;			/* the callback's */
	int ret;			/* the callback's error */
	struct kac *c;
};

/*
 * Send the listing request o (record w) and run it with l (ac_simple).
 * Returns its -errno, or the callback's as "WHAT PATH: ..." (path may be
 * NULL), or 0.
 */
int ac_list_run(struct kac *c, struct op *o, struct kp_recw *w, struct ac_list *l, const char *what,
		const char *path, struct kac_err *err);

/* ---- ac_file.c ------------------------------------------------------------------ */

/* on_rec for STAT and FH_STAT: the answer into the struct kac_stat at o->arg. */
int ac_stat_rec(struct op *o, const struct kp_frame *f);

#endif
