/*
 * The @deno/sandbox protocol (issue 17; shared/deno-sandbox-protocol.md):
 * kd_v3.c owns the control WebSockets (/api/v3/sandboxes/create and
 * /api/v3/sandbox/ID/connect) and the REST routes beside them on the loop
 * thread; kd_rpc.c serves each JSON-RPC request on a worker thread of its
 * own, through the agent. This header is what the two share.
 *
 * Memory per socket is bounded both ways, since the SDK has no flow
 * control: what kilnd sends waits in a queue of at most KD_V3_OUT_MAX bytes
 * (a producer past it waits, and so does the guest process it reads for);
 * what the client streams waits in buffers of at most KD_V3_CS_MAX bytes
 * (past it kilnd stops reading the socket until a consumer catches up).
 */
#ifndef KILN_KD_DENO_H
#define KILN_KD_DENO_H

#include <pthread.h>
#include <stdint.h>

#include <jansson.h>

#include "agent_client.h"
#include "kilnd.h"

#define KD_V3_MSG_MAX		(64u << 20)	/* one message from the client */
#define KD_V3_OUT_MAX		(4u << 20)	/* queued to the client before producers wait */
#define KD_V3_CS_MAX		(16u << 20)	/* client stream bytes buffered before reads stop */
#define KD_V3_INFLIGHT_MAX	128		/* requests served at once per socket */
#define KD_V3_PENDING_MAX	1024		/* requests queued beyond those before reads stop */
#define KD_V3_STREAMS_MAX	4096		/* client streams open per socket */
#define KD_V3_CONNS_MAX		48		/* agent connections per sandbox (the agent takes 64) */
#define KD_V3_IDLE_MS		30000		/* a socket silent this long (the SDK pings every 2 s) is dead */
#define KD_V3_HOME		"/home/app"	/* a disk image's user's home: the default cwd */

struct kd_v3_frame {
	struct kd_v3_frame *next;
	size_t len;
	unsigned char buf[];		/* LWS_PRE, then len bytes of text */
};

struct kd_v3_chunk {
	struct kd_v3_chunk *next;
	size_t len, off;
	unsigned char data[];
};

/* A stream the client produces (stdin, a request body, writeFile content). */
struct kd_v3_cstream {
	struct kd_v3_cstream *next;
	uint64_t id;
	struct kd_v3_chunk *head, *tail;
	int ended, errored;
};

/* A process spawned on a socket: the SDK's pid is the agent's handle. */
struct kd_v3_proc {
	struct kd_v3_proc *next;
	uint64_t handle;
	int done;
	struct kac_exit ex;
	/* a REPL (spawnDenoRepl): requests go to its stdin, answers come marked on its stderr */
	int repl;
	int repl_in;			/* its stdin's write end; -1 once closed */
	uint64_t repl_seq;
	json_t *replies;		/* answers not yet taken, by id */
};

/* The agent connections of one sandbox, shared by its sockets. */
struct kd_v3_pool {
	struct kd_v3_pool *next;
	char id[REG_ID_MAX];
	char vsock[KD_PATH_MAX];
	struct kac *idle[8];
	unsigned nidle, out, refs;
	int dead;
};

struct kd_v3 {
	struct kd_v3 *next;		/* kd->v3s (loop only) */
	struct kilnd *kd;
	struct lws *wsi;		/* loop only; NULL once closed */
	char id[REG_ID_MAX];
	char cwd[KD_PATH_MAX];		/* where relative paths start */
	int primary;			/* the create's socket */
	int ready;			/* its sandbox runs: requests may start (loop only) */
	int paused;			/* rx flow stopped (loop only) */
	int close_code;			/* loop: close with this once the queue is out */
	char close_reason[124];
	struct kd_v3_pool *pool;

	/* the loop's own */
	unsigned char *rx;
	size_t rx_len, rx_cap;
	int rx_overflow;
	json_t *pending;		/* requests waiting for ready or a free slot */

	pthread_mutex_t m;		/* everything below */
	pthread_cond_t cv;
	unsigned refs;
	int closed;
	unsigned inflight;
	struct kd_v3_frame *out_head, *out_tail;
	size_t out_bytes;
	struct kd_v3_cstream *cs;
	size_t cs_bytes;
	unsigned ncs;
	uint64_t cancelled[64];		/* server streams the client cancelled (a ring) */
	unsigned ncancelled;
	uint64_t aborted[64];		/* abortIds fired (a ring) */
	unsigned naborted;
	struct kd_v3_proc *procs;
	pthread_mutex_t fh_m;		/* the file-handle connection, one call at a time */
	struct kac *fh;
};

/* ---- kd_v3.c: for the workers ---- */
/* Queue msg (stolen) for the client; with wait, block while the queue is full. 0, or -EPIPE once closed. */
int kd_v3_send(struct kd_v3 *v, json_t *msg, int wait);
void kd_v3_ok(struct kd_v3 *v, json_t *id, json_t *value);
void kd_v3_fail(struct kd_v3 *v, json_t *id, json_t *serr);
void kd_v3_rpc_error(struct kd_v3 *v, json_t *id, int code, const char *msg);
/* A SerializedError (protocol §4.4); code may be NULL. */
json_t *kd_v3_serr(const char *ctor, const char *code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* A SerializedError for -errno ret: constructor and code from the errno, then the message. */
json_t *kd_v3_serr_errno(int ret, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A server stream id, unique across the node (the SDK keys them process-wide). */
uint64_t kd_v3_sid_new(void);
/* Did the client cancel server stream sid? */
int kd_v3_sid_cancelled(struct kd_v3 *v, uint64_t sid);
/* Has abortId fired? */
int kd_v3_aborted(struct kd_v3 *v, json_t *abort_id);
/* Notifications of a server stream: start, one chunk (n > 0), end, error. */
int kd_v3_stream_start(struct kd_v3 *v, uint64_t sid);
int kd_v3_stream_data(struct kd_v3 *v, uint64_t sid, const void *p, size_t n);
int kd_v3_stream_end(struct kd_v3 *v, uint64_t sid);
int kd_v3_stream_error(struct kd_v3 *v, uint64_t sid, json_t *serr);
/* Read a client stream: up to n bytes, 0 at its end, -EPIPE if it errored or the socket closed, -EBADF if unknown. */
ssize_t kd_v3_cs_read(struct kd_v3 *v, uint64_t id, void *buf, size_t n);
/* Forget a client stream; with tell, send $sandbox.stream.cancel so the SDK stops its source. */
void kd_v3_cs_drop(struct kd_v3 *v, uint64_t id, int tell);
/* An agent connection of the socket's sandbox (waits while KD_V3_CONNS_MAX are out). NULL with err. */
struct kac *kd_v3_conn_get(struct kd_v3 *v, struct kac_err *err);
/* Give it back; keep: still usable (after success or an error the agent answered). */
void kd_v3_conn_put(struct kd_v3 *v, struct kac *c, int keep);
void kd_v3_unref(struct kd_v3 *v);

/* ---- kd_rpc.c: on a worker ---- */
/* Is method one of the protocol's 54? */
int kd_rpc_known(const char *method);
/* Serve one request (msg stolen) and answer it. */
void kd_rpc_serve(struct kd_v3 *v, json_t *msg);
/* Forget a socket's processes and close its file handles (it closed). */
void kd_rpc_socket_gone(struct kd_v3 *v);

#endif
