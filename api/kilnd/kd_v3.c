/*
 * The @deno/sandbox SDK's endpoints (issue 17; shared/deno-sandbox-protocol.md):
 * the control WebSocket, GET /api/v3/sandboxes/create (config in the
 * x-deno-sandbox-config header) and GET /api/v3/sandbox/ID/connect, with
 * JSON-RPC 2.0 in text frames; kill, extendTimeout and expose as REST on
 * /api/v3/sandbox/ID; and the Deno Deploy console's /api/v2 on the same
 * origin (the sandbox list; the rest answers that kiln has no such thing).
 *
 * The loop thread frames messages, keeps the client's streams and decides
 * when to stop reading; each request runs on a thread of its own
 * (kd_rpc.c), because the SDK pipelines long polls (processWait, fileLock)
 * beside the calls that end them. A create answers 101 as soon as the
 * sandbox is admitted, with its id; requests wait until it runs.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>


#include "kd_deno.h"
#include "kd_ssh.h"
#include "kd_v3conf.h"

#define V3_CREATE	"/api/v3/sandboxes/create"
#define V3_SANDBOX	"/api/v3/sandbox/"
#define V3_CONFIG_HDR	"x-deno-sandbox-config:"
#define V3_CONFIG_MAX	(48 * 1024)
#define V3_EXTEND_MAX_MS (30 * 60 * 1000ull)	/* one extendTimeout moves the deadline this far at most */

static pthread_mutex_t pools_m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pools_cv = PTHREAD_COND_INITIALIZER;
static struct kd_v3_pool *pools;

/* ---- errors in the shapes the SDK reads ---------------------------------- */

/* The body of a refused handshake or REST call: {"code", "message"} (protocol §2.4, §6.2). */
static json_t *deno_err(const char *code, const char *msg)
{
	return json_pack("{s:s, s:s}", "code", code, "message", msg);
}

json_t *kd_v3_serr(const char *ctor, const char *code, const char *fmt, ...)
{
	char msg[600];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return json_pack("{s:s, s:s, s:o, s:n}", "constructorName", ctor, "message", msg, "code",
			 code ? json_string(code) : json_null(), "stack");
}

static const struct {
	int err;
	const char *code, *ctor;
} errnos[] = {
	{ ENOENT, "ENOENT", "NotFound" },	{ EACCES, "EACCES", "PermissionDenied" },
	{ EPERM, "EPERM", "PermissionDenied" },	{ EEXIST, "EEXIST", "AlreadyExists" },
	{ EINVAL, "EINVAL", "TypeError" },	{ EISDIR, "EISDIR", "IsADirectory" },
	{ ENOTDIR, "ENOTDIR", "NotADirectory" },	{ ELOOP, "ELOOP", "FilesystemLoop" },
	{ ENOTEMPTY, "ENOTEMPTY", "Error" },	{ EXDEV, "EXDEV", "Error" },
	{ ENOSPC, "ENOSPC", "Error" },		{ EROFS, "EROFS", "Error" },
	{ EMFILE, "EMFILE", "Error" },		{ EPIPE, "EPIPE", "BrokenPipe" },
	{ EAGAIN, "EAGAIN", "WouldBlock" },	{ ETIMEDOUT, "ETIMEDOUT", "TimedOut" },
	{ EINTR, "EINTR", "Interrupted" },	{ ECONNREFUSED, "ECONNREFUSED", "ConnectionRefused" },
	{ ECONNRESET, "ECONNRESET", "ConnectionReset" },	{ ECONNABORTED, "ECONNABORTED", "ConnectionAborted" },
	{ ENOTCONN, "ENOTCONN", "NotConnected" },	{ EADDRINUSE, "EADDRINUSE", "AddrInUse" },
	{ EADDRNOTAVAIL, "EADDRNOTAVAIL", "AddrNotAvailable" },
	{ ENETUNREACH, "ENETUNREACH", "NetworkUnreachable" },	{ EBUSY, "EBUSY", "Busy" },
	{ ENOTSUP, "ENOTSUP", "NotSupported" },	{ EBADF, "EBADF", "BadResource" },
	{ ESRCH, "ESRCH", "BadResource" },	{ EFBIG, "EFBIG", "Error" },
	{ ENAMETOOLONG, "ENAMETOOLONG", "Error" },	{ EIO, "EIO", "Error" },
};

json_t *kd_v3_serr_errno(int ret, const char *fmt, ...)
{
	int e = ret < 0 ? -ret : ret;
	char what[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	for (size_t i = 0; i < sizeof(errnos) / sizeof(errnos[0]); i++)
		if (errnos[i].err == e)
			return kd_v3_serr(errnos[i].ctor, errnos[i].code, "%s (os error %d): %s", strerror(e), e, what);
	return kd_v3_serr("Error", NULL, "%s (os error %d): %s", strerror(e), e, what);
}

/* ---- the outbound queue ----------------------------------------------------- */

static struct kd_v3_frame *frame_new(const char *text, size_t len)
{
	struct kd_v3_frame *f = malloc(sizeof(*f) + LWS_PRE + len);

	if (!f)
		return NULL;
	f->next = NULL;
	f->len = len;
	memcpy(f->buf + LWS_PRE, text, len);
	return f;
}

/* Append f under v->m; the caller wakes the loop. */
static void queue_locked(struct kd_v3 *v, struct kd_v3_frame *f)
{
	if (v->out_tail)
		v->out_tail->next = f;
	else
		v->out_head = f;
	v->out_tail = f;
	v->out_bytes += f->len;
}

int kd_v3_send(struct kd_v3 *v, json_t *msg, int wait)
{
	char *s = msg ? json_dumps(msg, JSON_COMPACT) : NULL;
	struct kd_v3_frame *f = s ? frame_new(s, strlen(s)) : NULL;

	free(s);
	json_decref(msg);
	if (!f)
		return -ENOMEM;
	pthread_mutex_lock(&v->m);
	while (wait && !v->closed && v->out_bytes > KD_V3_OUT_MAX)
		pthread_cond_wait(&v->cv, &v->m);
	if (v->closed) {
		pthread_mutex_unlock(&v->m);
		free(f);
		return -EPIPE;
	}
	queue_locked(v, f);
	pthread_mutex_unlock(&v->m);
	lws_cancel_service(v->kd->ctx);
	return 0;
}

void kd_v3_ok(struct kd_v3 *v, json_t *id, json_t *value)
{
	kd_v3_send(v, json_pack("{s:s, s:O, s:{s:o}}", "jsonrpc", "2.0", "id", id, "result", "ok",
				value ? value : json_null()), 1);
}

void kd_v3_fail(struct kd_v3 *v, json_t *id, json_t *serr)
{
	kd_v3_send(v, json_pack("{s:s, s:O, s:{s:o}}", "jsonrpc", "2.0", "id", id, "result", "error", serr), 1);
}

static json_t *rpc_error(json_t *id, int code, const char *msg)
{
	return json_pack("{s:s, s:O, s:{s:i, s:s}}", "jsonrpc", "2.0", "id", id ? id : json_null(), "error", "code",
			 code, "message", msg);
}

void kd_v3_rpc_error(struct kd_v3 *v, json_t *id, int code, const char *msg)
{
	kd_v3_send(v, rpc_error(id, code, msg), 1);
}

/* From the loop: never waits (its messages are small and rare; flow() bounds them). */
static void loop_queue(struct kd_v3 *v, const char *text, size_t len)
{
	struct kd_v3_frame *f = text ? frame_new(text, len) : NULL;

	if (!f)
		return;
	pthread_mutex_lock(&v->m);
	if (v->closed)
		free(f);
	else
		queue_locked(v, f);
	pthread_mutex_unlock(&v->m);
	if (v->wsi)
		lws_callback_on_writable(v->wsi);
}

static void loop_send(struct kd_v3 *v, json_t *msg)
{
	char *s = msg ? json_dumps(msg, JSON_COMPACT) : NULL;

	json_decref(msg);
	loop_queue(v, s, s ? strlen(s) : 0);
	free(s);
}

/* ---- server streams --------------------------------------------------------- */

static _Atomic uint64_t sid_next;

uint64_t kd_v3_sid_new(void)
{
	uint64_t cur = atomic_load(&sid_next);

	/* A random base below 2^52 (the SDK's ids are JS numbers), then a counter. */
	if (!cur) {
		uint32_t r = 0;

		if (getrandom(&r, sizeof(r), 0) != sizeof(r))
			r = (uint32_t)getpid();
		uint64_t base = ((uint64_t)r << 20) | 1;

		atomic_compare_exchange_strong(&sid_next, &cur, base);
	}
	return atomic_fetch_add(&sid_next, 1);
}

int kd_v3_sid_cancelled(struct kd_v3 *v, uint64_t sid)
{
	int hit = 0;

	pthread_mutex_lock(&v->m);
	for (unsigned i = 0; i < 64 && i < v->ncancelled; i++)
		hit |= v->cancelled[i] == sid;
	pthread_mutex_unlock(&v->m);
	return hit;
}

int kd_v3_aborted(struct kd_v3 *v, json_t *abort_id)
{
	int hit = 0;

	if (!json_is_integer(abort_id))
		return 0;
	pthread_mutex_lock(&v->m);
	for (unsigned i = 0; i < 64 && i < v->naborted; i++)
		hit |= v->aborted[i] == (uint64_t)json_integer_value(abort_id);
	pthread_mutex_unlock(&v->m);
	return hit;
}

static int notify(struct kd_v3 *v, const char *method, json_t *params)
{
	return kd_v3_send(v, json_pack("{s:s, s:s, s:o}", "jsonrpc", "2.0", "method", method, "params", params), 1);
}

int kd_v3_stream_start(struct kd_v3 *v, uint64_t sid)
{
	return notify(v, "$sandbox.stream.start", json_pack("{s:I}", "streamId", (json_int_t)sid));
}

int kd_v3_stream_data(struct kd_v3 *v, uint64_t sid, const void *p, size_t n)
{
	json_t *data;

	/* An empty chunk errors the SDK's byte stream and then crashes its process (§4.6). */
	if (!n)
		return 0;
	data = kd_b64_json(p, n);
	if (!data)
		return -ENOMEM;
	return notify(v, "$sandbox.stream.enqueue", json_pack("{s:I, s:o}", "streamId", (json_int_t)sid, "data", data));
}

int kd_v3_stream_end(struct kd_v3 *v, uint64_t sid)
{
	return notify(v, "$sandbox.stream.end", json_pack("{s:I}", "streamId", (json_int_t)sid));
}

int kd_v3_stream_error(struct kd_v3 *v, uint64_t sid, json_t *serr)
{
	return notify(v, "$sandbox.stream.error", json_pack("{s:I, s:o}", "streamId", (json_int_t)sid, "error", serr));
}

/* ---- client streams ---------------------------------------------------------- */

static struct kd_v3_cstream *cs_find(struct kd_v3 *v, uint64_t id)
{
	for (struct kd_v3_cstream *c = v->cs; c; c = c->next)
		if (c->id == id)
			return c;
	return NULL;
}

static void cs_free(struct kd_v3 *v, struct kd_v3_cstream *c)
{
	for (struct kd_v3_cstream **pp = &v->cs; *pp; pp = &(*pp)->next)
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	while (c->head) {
		struct kd_v3_chunk *k = c->head;

		c->head = k->next;
		v->cs_bytes -= k->len - k->off;
		free(k);
	}
	v->ncs--;
	free(c);
}

ssize_t kd_v3_cs_read(struct kd_v3 *v, uint64_t id, void *buf, size_t n)
{
	struct kd_v3_cstream *c;
	ssize_t got;
	int wake = 0;

	pthread_mutex_lock(&v->m);
	for (;;) {
		c = cs_find(v, id);
		if (!c) {
			pthread_mutex_unlock(&v->m);
			return -EBADF;
		}
		if (c->head || c->ended || c->errored || v->closed)
			break;
		pthread_cond_wait(&v->cv, &v->m);
	}
	if (c->head) {
		struct kd_v3_chunk *k = c->head;
		size_t take = k->len - k->off < n ? k->len - k->off : n;

		memcpy(buf, k->data + k->off, take);
		k->off += take;
		if (k->off == k->len) {
			c->head = k->next;
			if (!c->head)
				c->tail = NULL;
			free(k);
		}
		/* Past the high mark the loop stopped reading; half way down it may start again. */
		wake = v->cs_bytes > KD_V3_CS_MAX / 2 && v->cs_bytes - take <= KD_V3_CS_MAX / 2;
		v->cs_bytes -= take;
		got = (ssize_t)take;
	} else {
		got = c->errored || (!c->ended && v->closed) ? -EPIPE : 0;
	}
	pthread_mutex_unlock(&v->m);
	if (wake)
		lws_cancel_service(v->kd->ctx);
	return got;
}

void kd_v3_cs_drop(struct kd_v3 *v, uint64_t id, int tell)
{
	struct kd_v3_cstream *c;
	int done;

	pthread_mutex_lock(&v->m);
	c = cs_find(v, id);
	done = c && c->ended;
	if (c)
		cs_free(v, c);
	pthread_mutex_unlock(&v->m);
	lws_cancel_service(v->kd->ctx);
	if (tell && !done)
		notify(v, "$sandbox.stream.cancel", json_pack("{s:I, s:n}", "streamId", (json_int_t)id, "reason"));
}

/* $sandbox.stream.* from the client (loop thread). */
static void on_stream_note(struct kd_v3 *v, const char *method, json_t *params)
{
	json_t *jid = json_object_get(params, "streamId");
	uint64_t id;
	struct kd_v3_cstream *c;

	if (!json_is_integer(jid) || json_integer_value(jid) < 0)
		return;
	id = (uint64_t)json_integer_value(jid);
	if (!strcmp(method, "$sandbox.stream.cancel")) {
		/* The client stops reading one of ours: its producer checks this. */
		pthread_mutex_lock(&v->m);
		v->cancelled[v->ncancelled++ % 64] = id;
		pthread_mutex_unlock(&v->m);
		return;
	}
	pthread_mutex_lock(&v->m);
	c = cs_find(v, id);
	if (!strcmp(method, "$sandbox.stream.start")) {
		if (!c && v->ncs < KD_V3_STREAMS_MAX && (c = calloc(1, sizeof(*c)))) {
			c->id = id;
			c->next = v->cs;
			v->cs = c;
			v->ncs++;
		}
	} else if (c && !c->ended && !c->errored && !strcmp(method, "$sandbox.stream.enqueue")) {
		const char *b64 = json_string_value(json_object_get(params, "data"));
		size_t blen = b64 ? strlen(b64) : 0;
		struct kd_v3_chunk *k = blen ? malloc(sizeof(*k) + blen / 4 * 3 + 3) : NULL;
		long n = k ? kd_b64_decode(b64, blen, k->data) : -1;

		if (n >= 0) {
			k->len = (size_t)n;
			k->off = 0;
			k->next = NULL;
			if (c->tail)
				c->tail->next = k;
			else
				c->head = k;
			c->tail = k;
			v->cs_bytes += k->len;
		} else {
			free(k);
			c->errored = blen != 0;	/* bad base64 ends the stream as an error */
		}
	} else if (c && !strcmp(method, "$sandbox.stream.end")) {
		c->ended = 1;
	} else if (c && !strcmp(method, "$sandbox.stream.error")) {
		c->errored = 1;
	}
	pthread_cond_broadcast(&v->cv);
	pthread_mutex_unlock(&v->m);
}

/* ---- agent connections, per sandbox ---------------------------------------- */

static struct kd_v3_pool *pool_get(const char *id, const char *vsock)
{
	struct kd_v3_pool *p;

	pthread_mutex_lock(&pools_m);
	for (p = pools; p; p = p->next)
		if (!strcmp(p->id, id) && !p->dead)
			break;
	if (!p && (p = calloc(1, sizeof(*p)))) {
		snprintf(p->id, sizeof(p->id), "%s", id);
		snprintf(p->vsock, sizeof(p->vsock), "%s", vsock);
		p->next = pools;
		pools = p;
	}
	if (p)
		p->refs++;
	pthread_mutex_unlock(&pools_m);
	return p;
}

static void pool_put(struct kd_v3_pool *p)
{
	struct kac *idle[8];
	unsigned n = 0;

	pthread_mutex_lock(&pools_m);
	if (--p->refs) {
		pthread_mutex_unlock(&pools_m);
		return;
	}
	for (struct kd_v3_pool **pp = &pools; *pp; pp = &(*pp)->next)
		if (*pp == p) {
			*pp = p->next;
			break;
		}
	memcpy(idle, p->idle, sizeof(idle));
	n = p->nidle;
	pthread_mutex_unlock(&pools_m);
	for (unsigned i = 0; i < n; i++)
		kac_close(idle[i]);
	free(p);
}

/* The sandbox ended: its connections are worth nothing. */
static void pool_kill(const char *id)
{
	pthread_mutex_lock(&pools_m);
	for (struct kd_v3_pool *p = pools; p; p = p->next)
		if (!strcmp(p->id, id))
			p->dead = 1;
	pthread_cond_broadcast(&pools_cv);
	pthread_mutex_unlock(&pools_m);
}

struct kac *kd_v3_conn_get(struct kd_v3 *v, struct kac_err *err)
{
	struct kd_v3_pool *p = v->pool;
	struct kac *c = NULL;
	int r;

	pthread_mutex_lock(&pools_m);
	while (!p->dead && !p->nidle && p->out >= KD_V3_CONNS_MAX)
		pthread_cond_wait(&pools_cv, &pools_m);
	if (p->dead) {
		pthread_mutex_unlock(&pools_m);
		snprintf(err->msg, sizeof(err->msg), "sandbox %s has ended", v->id);
		err->code = 0;
		return NULL;
	}
	if (p->nidle)
		c = p->idle[--p->nidle];
	p->out++;
	pthread_mutex_unlock(&pools_m);
	if (c)
		return c;
	/*
	 * As long as any other answer of the agent's may take: an agent busy
	 * with many new connections and processes (100 SDK clients at once, in
	 * a slow host) is late, not gone.
	 */
	r = kac_connect(&c, p->vsock, KAC_TIMEOUT_DEFAULT_MS, err);
	if (r) {
		pthread_mutex_lock(&pools_m);
		p->out--;
		pthread_cond_broadcast(&pools_cv);
		pthread_mutex_unlock(&pools_m);
		return NULL;
	}
	kac_set_timeout(c, KAC_TIMEOUT_DEFAULT_MS);
	/* The SDK's file calls act as the sandbox's user, as its commands do. */
	kac_set_fs_user(c, 1);
	return c;
}

void kd_v3_conn_put(struct kd_v3 *v, struct kac *c, int keep)
{
	struct kd_v3_pool *p = v->pool;

	if (!c)
		return;
	pthread_mutex_lock(&pools_m);
	p->out--;
	if (keep && !p->dead && p->nidle < 8) {
		p->idle[p->nidle++] = c;
		c = NULL;
	}
	pthread_cond_broadcast(&pools_cv);
	pthread_mutex_unlock(&pools_m);
	if (c)
		kac_close(c);
}

/* ---- sockets ------------------------------------------------------------------ */

static struct kd_v3 *v3_new(struct kilnd *kd, const char *id, int primary)
{
	struct kd_v3 *v = calloc(1, sizeof(*v));

	if (!v)
		return NULL;
	v->kd = kd;
	snprintf(v->id, sizeof(v->id), "%s", id);
	v->primary = primary;
	v->refs = 1;
	v->pending = json_array();
	pthread_mutex_init(&v->m, NULL);
	pthread_cond_init(&v->cv, NULL);
	pthread_mutex_init(&v->fh_m, NULL);
	return v;
}

void kd_v3_unref(struct kd_v3 *v)
{
	unsigned left;

	pthread_mutex_lock(&v->m);
	left = --v->refs;
	pthread_mutex_unlock(&v->m);
	if (left)
		return;
	kd_rpc_socket_gone(v);
	while (v->out_head) {
		struct kd_v3_frame *f = v->out_head;

		v->out_head = f->next;
		free(f);
	}
	while (v->cs)
		cs_free(v, v->cs);
	if (v->pool)
		pool_put(v->pool);
	json_decref(v->pending);
	free(v->rx);
	pthread_mutex_destroy(&v->m);
	pthread_cond_destroy(&v->cv);
	pthread_mutex_destroy(&v->fh_m);
	free(v);
}

/* The sandbox runs: requests may start. */
static void v3_set_ready(struct kd_v3 *v, const struct kd_sbx *s)
{
	const struct kd_image *img = kd_image_find(v->kd, s->image);

	if (v->ready)
		return;
	v->pool = pool_get(v->id, s->vmm.vsock_path);
	if (!v->pool)
		return;
	snprintf(v->cwd, sizeof(v->cwd), "%s", img && img->path[0] ? KD_V3_HOME : "/");
	v->ready = 1;
}

static void v3_close(struct kd_v3 *v, int code, const char *reason)
{
	if (!v->wsi || v->close_code)
		return;
	v->close_code = code;
	snprintf(v->close_reason, sizeof(v->close_reason), "%s", reason);
	pthread_mutex_lock(&v->m);
	v->closed = 1;
	pthread_cond_broadcast(&v->cv);
	pthread_mutex_unlock(&v->m);
	lws_callback_on_writable(v->wsi);
}

struct task {
	struct kd_v3 *v;
	json_t *msg;
};

static void *task_main(void *arg)
{
	struct task *t = arg;
	struct kd_v3 *v = t->v;

	kd_rpc_serve(v, t->msg);
	pthread_mutex_lock(&v->m);
	v->inflight--;
	pthread_mutex_unlock(&v->m);
	lws_cancel_service(v->kd->ctx);
	kd_v3_unref(v);
	free(t);
	return NULL;
}

/* Start what waits, as far as the limits allow (loop thread). */
static void pump(struct kd_v3 *v)
{
	pthread_attr_t attr;

	if (!v->ready || v->closed)
		return;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&attr, 256 * 1024);
	while (json_array_size(v->pending)) {
		struct task *t;
		pthread_t th;

		pthread_mutex_lock(&v->m);
		if (v->inflight >= KD_V3_INFLIGHT_MAX) {
			pthread_mutex_unlock(&v->m);
			break;
		}
		v->inflight++;
		v->refs++;
		pthread_mutex_unlock(&v->m);
		t = malloc(sizeof(*t));
		if (t) {
			t->v = v;
			t->msg = json_incref(json_array_get(v->pending, 0));
		}
		json_array_remove(v->pending, 0);
		if (!t || pthread_create(&th, &attr, task_main, t)) {
			json_t *id = t ? json_object_get(t->msg, "id") : NULL;

			loop_send(v, rpc_error(id, -32603, "kilnd could not start a thread for this request"));
			if (t)
				json_decref(t->msg);
			free(t);
			pthread_mutex_lock(&v->m);
			v->inflight--;
			v->refs--;
			pthread_mutex_unlock(&v->m);
		}
	}
	pthread_attr_destroy(&attr);
}

/* Stop reading the socket while the client is ahead of us, read again once it is not. */
static void flow(struct kd_v3 *v)
{
	int stop;

	if (!v->wsi)
		return;
	pthread_mutex_lock(&v->m);
	stop = v->cs_bytes > KD_V3_CS_MAX || v->out_bytes > 2 * KD_V3_OUT_MAX;
	pthread_mutex_unlock(&v->m);
	stop |= json_array_size(v->pending) > KD_V3_PENDING_MAX;
	if (stop != v->paused) {
		v->paused = stop;
		lws_rx_flow_control(v->wsi, !stop);
	}
}

/* One whole message from the client (loop thread). */
static void on_message(struct kd_v3 *v, const unsigned char *p, size_t n)
{
	json_error_t je;
	json_t *msg, *id, *m;
	const char *method;

	if (n == 4 && !memcmp(p, "ping", 4)) {
		loop_queue(v, "pong", 4);
		return;
	}
	msg = json_loadb((const char *)p, n, JSON_REJECT_DUPLICATES, &je);
	if (!msg) {
		char t[200];

		snprintf(t, sizeof(t), "Parse error: %s (line %d, column %d)", je.text, je.line, je.column);
		loop_send(v, rpc_error(NULL, -32700, t));
		return;
	}
	id = json_object_get(msg, "id");
	m = json_object_get(msg, "method");
	if (!json_is_object(msg) || !json_is_string(json_object_get(msg, "jsonrpc")) ||
	    strcmp(json_string_value(json_object_get(msg, "jsonrpc")), "2.0") || !json_is_string(m) ||
	    (id && !json_is_integer(id) && !json_is_string(id))) {
		loop_send(v, rpc_error(json_is_integer(id) || json_is_string(id) ? id : NULL, -32600,
				       "Invalid Request: a JSON-RPC 2.0 object with a method, and an id that is a "
				       "number or a string"));
		json_decref(msg);
		return;
	}
	method = json_string_value(m);
	if (!id) {
		if (!strncmp(method, "$sandbox.stream.", 16) && json_is_object(json_object_get(msg, "params")))
			on_stream_note(v, method, json_object_get(msg, "params"));
		json_decref(msg);
		return;
	}
	if (!kd_rpc_known(method)) {
		char t[160];

		snprintf(t, sizeof(t), "Method not found: %.64s", method);
		loop_send(v, rpc_error(id, -32601, t));
	} else if (!json_is_object(json_object_get(msg, "params"))) {
		loop_send(v, rpc_error(id, -32602, "Invalid params: params must be an object"));
	} else if (!strcmp(method, "abort")) {
		/* Always null (§4.7): an error would crash the user's process. The op checks the ring. */
		json_t *a = json_object_get(json_object_get(msg, "params"), "abortId");

		if (json_is_integer(a)) {
			pthread_mutex_lock(&v->m);
			v->aborted[v->naborted++ % 64] = (uint64_t)json_integer_value(a);
			pthread_cond_broadcast(&v->cv);
			pthread_mutex_unlock(&v->m);
		}
		loop_send(v, json_pack("{s:s, s:O, s:{s:n}}", "jsonrpc", "2.0", "id", id, "result", "ok"));
	} else {
		json_array_append(v->pending, msg);
	}
	json_decref(msg);
	pump(v);
	flow(v);
}

static void v3_detach(struct kilnd *kd, struct kd_v3 *v)
{
	struct lws *wsi = v->wsi;

	for (struct kd_v3 **pp = (struct kd_v3 **)&kd->v3s; *pp; pp = &(*pp)->next)
		if (*pp == v) {
			*pp = v->next;
			break;
		}
	v->wsi = NULL;
	pthread_mutex_lock(&v->m);
	v->closed = 1;
	pthread_cond_broadcast(&v->cv);
	pthread_mutex_unlock(&v->m);
	json_array_clear(v->pending);
	if (wsi) {
		lws_set_opaque_user_data(wsi, NULL);
		/* A primary's end starts its session sandbox's grace (kd_sbx_unhold). */
		kd_conn_closed(kd, wsi);
	}
	kd_v3_unref(v);
}

void kd_v3_wsi_gone(struct kilnd *kd, struct lws *wsi)
{
	struct kd_v3 *v = lws_get_opaque_user_data(wsi);

	if (!v)
		return;
	if (!v->wsi) {
		/* Confirmed but never established: the loop holds its only reference. */
		lws_set_opaque_user_data(wsi, NULL);
		kd_conn_closed(kd, wsi);
		kd_v3_unref(v);
		return;
	}
	v3_detach(kd, v);
}

/* The loop was woken (a worker queued output, finished, or drained a stream). */
static void wake_all(struct kilnd *kd)
{
	for (struct kd_v3 *v = kd->v3s; v; v = v->next) {
		int out;

		if (!v->wsi)
			continue;
		pthread_mutex_lock(&v->m);
		out = v->out_head != NULL;
		pthread_mutex_unlock(&v->m);
		if (out || v->close_code)
			lws_callback_on_writable(v->wsi);
		pump(v);
		flow(v);
	}
}

void kd_v3_sbx_ready(struct kilnd *kd, const struct kd_sbx *s)
{
	for (struct kd_v3 *v = kd->v3s; v; v = v->next)
		if (!strcmp(v->id, s->id) && !v->ready) {
			v3_set_ready(v, s);
			pump(v);
		}
}

void kd_v3_sbx_ended(struct kilnd *kd, const char *id, enum reg_end why, const char *detail)
{
	char reason[120];
	int code = 1000;

	switch (why) {
	case REG_END_KILLED: snprintf(reason, sizeof(reason), "sandbox killed"); break;
	case REG_END_TIMED_OUT: code = 1001; snprintf(reason, sizeof(reason), "sandbox timed out"); break;
	case REG_END_CREATE_FAILED:
		code = 1011;
		snprintf(reason, sizeof(reason), "sandbox could not be created: %.80s", detail ? detail : "");
		break;
	default: code = 1001; snprintf(reason, sizeof(reason), "sandbox stopped: %s", reg_end_name(why)); break;
	}
	pool_kill(id);
	kd_ingress_forget(kd, id);
	if (kd->ssh)
		kd_ssh_forget(kd->ssh, id);
	for (struct kd_v3 *v = kd->v3s; v; v = v->next)
		if (!strcmp(v->id, id))
			v3_close(v, code, reason);
}

static int write_one(struct lws *wsi, struct kd_v3 *v)
{
	struct kd_v3_frame *f;
	int more;

	if (v->close_code) {
		lws_close_reason(wsi, (enum lws_close_status)v->close_code, (unsigned char *)v->close_reason,
				 strlen(v->close_reason));
		return -1;
	}
	pthread_mutex_lock(&v->m);
	f = v->out_head;
	if (f) {
		v->out_head = f->next;
		if (!v->out_head)
			v->out_tail = NULL;
		v->out_bytes -= f->len;
		pthread_cond_broadcast(&v->cv);
	}
	more = v->out_head != NULL;
	pthread_mutex_unlock(&v->m);
	if (!f)
		return 0;
	if (lws_write(wsi, f->buf + LWS_PRE, f->len, LWS_WRITE_TEXT) < (int)f->len) {
		free(f);
		return -1;
	}
	free(f);
	if (more)
		lws_callback_on_writable(wsi);
	flow(v);
	return 0;
}

static int on_receive(struct lws *wsi, struct kd_v3 *v, const void *in, size_t len)
{
	lws_set_timeout(wsi, PENDING_TIMEOUT_USER_OK, KD_V3_IDLE_MS / 1000);
	if (!v->rx_overflow && v->rx_len + len > KD_V3_MSG_MAX) {
		v->rx_overflow = 1;
		free(v->rx);
		v->rx = NULL;
		v->rx_len = v->rx_cap = 0;
	}
	if (!v->rx_overflow && len) {
		if (v->rx_len + len > v->rx_cap) {
			size_t nc = v->rx_cap ? v->rx_cap : 4096;
			unsigned char *q;

			while (nc < v->rx_len + len)
				nc *= 2;
			q = realloc(v->rx, nc);
			if (!q) {
				v3_close(v, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "kilnd is out of memory");
				return 0;
			}
			v->rx = q;
			v->rx_cap = nc;
		}
		memcpy(v->rx + v->rx_len, in, len);
		v->rx_len += len;
	}
	if (!lws_is_final_fragment(wsi) || lws_remaining_packet_payload(wsi))
		return 0;
	if (v->rx_overflow) {
		char t[100];

		v->rx_overflow = 0;
		snprintf(t, sizeof(t), "message over %u MiB: send big files as streams", KD_V3_MSG_MAX >> 20);
		v3_close(v, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, t);
		return 0;
	}
	on_message(v, v->rx, v->rx_len);
	v->rx_len = 0;
	/* Do not keep a big buffer for a socket that sent one big message. */
	if (v->rx_cap > (1u << 20)) {
		free(v->rx);
		v->rx = NULL;
		v->rx_cap = 0;
	}
	return 0;
}

int kd_v3_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
	struct kilnd *kd = kd_of(wsi);
	struct kd_v3 *v = lws_get_opaque_user_data(wsi);

	(void)user;
	switch (reason) {
	case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE:
		/* A new connection is bound to the vhost's default protocol, this one, until it asks for more. */
		return kd_v3_confirm(kd, wsi);
	case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
		/* Only an upgrade kd_v3_confirm took (a WebSocket on another path named no protocol). */
		return v ? 0 : -1;
	case LWS_CALLBACK_ADD_HEADERS: {
		struct lws_process_html_args *a = in;

		if (!v)
			return 0;
		if (lws_add_http_header_by_name(wsi, (const unsigned char *)"x-deno-sandbox-id:",
						(const unsigned char *)v->id, (int)strlen(v->id),
						(unsigned char **)&a->p, (unsigned char *)a->p + a->max_len))
			return 1;
		return 0;
	}
	case LWS_CALLBACK_ESTABLISHED: {
		struct kd_sbx *s;

		if (!v)
			return -1;
		v->wsi = wsi;
		v->next = kd->v3s;
		kd->v3s = v;
		lws_set_timeout(wsi, PENDING_TIMEOUT_USER_OK, KD_V3_IDLE_MS / 1000);
		s = kd_sbx_find(kd, v->id);
		if (!s) {
			v3_close(v, 1001, "sandbox stopped");
			return 0;
		}
		if (s->state == REG_RUNNING)
			v3_set_ready(v, s);
		return 0;
	}
	case LWS_CALLBACK_RECEIVE:
		return v && v->wsi ? on_receive(wsi, v, in, len) : -1;
	case LWS_CALLBACK_SERVER_WRITEABLE:
		return v && v->wsi ? write_one(wsi, v) : -1;
	case LWS_CALLBACK_CLOSED:
	case LWS_CALLBACK_WSI_DESTROY:
		if (v)
			kd_v3_wsi_gone(kd, wsi);
		else if (reason == LWS_CALLBACK_WSI_DESTROY)
			kd_conn_closed(kd, wsi);
		return 0;
	case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
		wake_all(kd);
		return 0;
	default:
		return 0;
	}
}

/* ---- the handshake (called from the HTTP protocol's CONFIRM_UPGRADE) ------- */

/* Refuse an upgrade with a JSON body the SDK turns into its error (§2.4): 1, as lws wants. */
static int refuse(struct lws *wsi, int status, const char *code, const char *msg)
{
	unsigned char hb[LWS_PRE + 1024], *start = hb + LWS_PRE, *q = start, *end = hb + sizeof(hb) - 1;
	json_t *o = deno_err(code, msg);
	char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
	size_t n = body ? strlen(body) : 0;
	unsigned char *b = malloc(LWS_PRE + n + 1);

	json_decref(o);
	if (!b || lws_add_http_common_headers(wsi, (unsigned)status, "application/json", n, &q, end) ||
	    lws_finalize_write_http_header(wsi, start, &q, end) ||
	    (n && (memcpy(b + LWS_PRE, body, n), lws_write(wsi, b + LWS_PRE, n, LWS_WRITE_HTTP_FINAL) != (int)n))) {
		free(b);
		free(body);
		return -1;
	}
	free(b);
	free(body);
	return 1;
}

static int confirm_create(struct kilnd *kd, struct lws *wsi)
{
	int hlen = lws_hdr_custom_length(wsi, V3_CONFIG_HDR, (int)strlen(V3_CONFIG_HDR));
	char msg[600], *hdr = NULL, *body = NULL;
	struct sched_spec spec;
	struct kiln_err err;
	struct kd_sbx *s;
	struct kd_v3 *v;
	json_t *sj = NULL;
	int r, st = 0;

	sched_spec_init(&spec);
	if (hlen <= 0 || hlen > V3_CONFIG_MAX) {
		snprintf(msg, sizeof(msg), hlen <= 0 ? "the create has no x-deno-sandbox-config header (base64 of the "
			 "config JSON)" : "x-deno-sandbox-config is over %d bytes", V3_CONFIG_MAX);
		return refuse(wsi, 400, "INVALID_CONFIG", msg);
	}
	hdr = malloc((size_t)hlen + 1);
	if (!hdr || lws_hdr_custom_copy(wsi, hdr, hlen + 1, V3_CONFIG_HDR, (int)strlen(V3_CONFIG_HDR)) < 0) {
		st = refuse(wsi, 500, "INTERNAL", "kilnd could not read the config header");
		goto out;
	}
	sj = kd_v3_config_spec(hdr, (size_t)hlen, kd_now_ms(), msg, sizeof(msg));
	body = sj ? json_dumps(sj, JSON_COMPACT) : NULL;
	if (!body) {
		st = refuse(wsi, 400, "INVALID_CONFIG", sj ? "out of memory" : msg);
		goto out;
	}
	r = sched_spec_from_json(body, strlen(body), &spec, &err);
	if (!r)
		r = kd_sbx_create(kd, &spec, wsi, &s, &err);
	if (r) {
		if (r == -ENOSPC)
			st = refuse(wsi, 503, "NO_CAPACITY", err.msg);
		else if (r == -EDQUOT)
			st = refuse(wsi, 507, "INSUFFICIENT_STORAGE", err.msg);
		else if (r == -EINVAL || r == -E2BIG || r == -ENOENT || r == -EBUSY)
			st = refuse(wsi, r == -EBUSY ? 409 : 400, "INVALID_CONFIG", err.msg);
		else
			st = refuse(wsi, 500, "INTERNAL", err.msg);
		goto out;
	}
	/* kd_create_done answers HTTP creators; this one is a socket, told through kd_v3_sbx_ready. */
	s->creator = NULL;
	v = v3_new(kd, s->id, 1);
	if (!v) {
		kd_sbx_end(kd, s, REG_END_CREATE_FAILED, "kilnd is out of memory");
		st = refuse(wsi, 500, "INTERNAL", "kilnd is out of memory");
		goto out;
	}
	lws_set_opaque_user_data(wsi, v);
out:
	sched_spec_free(&spec);
	json_decref(sj);
	free(hdr);
	free(body);
	return st;
}

static int confirm_connect(struct kilnd *kd, struct lws *wsi, const char *uri)
{
	const char *rest = uri + strlen(V3_SANDBOX);
	char id[REG_ID_MAX], msg[300];
	struct kiln_err err;
	struct kd_sbx *s;
	struct kd_v3 *v;
	json_t *o;
	int st;

	if (strlen(rest) != REG_ID_LEN + 8 || strcmp(rest + REG_ID_LEN, "/connect"))
		return refuse(wsi, 404, "NOT_FOUND", "the sandbox WebSockets are /api/v3/sandboxes/create and "
			      "/api/v3/sandbox/ID/connect");
	memcpy(id, rest, REG_ID_LEN);
	id[REG_ID_LEN] = '\0';
	if (reg_sandbox_id_check(id, &err))
		return refuse(wsi, 404, "SANDBOX_NOT_FOUND", err.msg);
	s = kd_sbx_find(kd, id);
	if (!s) {
		o = kd_sbx_json(kd, id, &err, &st);
		json_decref(o);
		if (!o)
			return refuse(wsi, 404, "SANDBOX_NOT_FOUND", err.msg);
		snprintf(msg, sizeof(msg), "sandbox %s has stopped", id);
		return refuse(wsi, 410, "SANDBOX_STOPPED", msg);
	}
	v = v3_new(kd, id, 0);
	if (!v)
		return refuse(wsi, 500, "INTERNAL", "kilnd is out of memory");
	lws_set_opaque_user_data(wsi, v);
	return 0;
}

int kd_v3_confirm(struct kilnd *kd, struct lws *wsi)
{
	char uri[160], msg[300];
	int st;

	if (lws_hdr_copy(wsi, uri, sizeof(uri), WSI_TOKEN_GET_URI) < 0 || strncmp(uri, "/api/", 5))
		return 0;	/* not ours: the agent tunnel decides */
	if ((st = kd_authorize(wsi, msg, sizeof(msg))))
		return refuse(wsi, st, st == 401 ? "INVALID_TOKEN" : "FORBIDDEN", msg);
	if (!strcmp(uri, V3_CREATE))
		return confirm_create(kd, wsi);
	if (!strncmp(uri, V3_SANDBOX, strlen(V3_SANDBOX)))
		return confirm_connect(kd, wsi, uri);
	return refuse(wsi, 404, "NOT_FOUND", "the sandbox WebSockets are /api/v3/sandboxes/create and "
		      "/api/v3/sandbox/ID/connect");
}

/* ---- REST: /api/v3/sandbox/ID and /api/v2 ------------------------------------ */

int kd_deno_fail(json_t **body, int status, const char *code, const char *fmt, ...)
{
	char msg[600];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	*body = deno_err(code, msg);
	return status;
}

static int v3_kill(struct kilnd *kd, const char *id, json_t **body)
{
	struct kd_sbx *s = kd_sbx_find(kd, id);

	if (!s)
		return kd_deno_fail(body, 404, "SANDBOX_NOT_FOUND", "sandbox %s is not running on this node", id);
	if (s->state == REG_CREATING)
		s->kill_asked = 1;
	else
		kd_sbx_end(kd, s, REG_END_KILLED, "killed through the Deno API");
	*body = json_object();
	return 200;
}

/* id's sandbox if it runs, else NULL (then sbx_not_running answers why). */
static struct kd_sbx *running_sbx(struct kilnd *kd, const char *id)
{
	struct kd_sbx *s = kd_sbx_find(kd, id);

	return s && s->state == REG_RUNNING ? s : NULL;
}

static int sbx_not_running(struct kilnd *kd, const char *id, json_t **body)
{
	int creating = kd_sbx_find(kd, id) != NULL;

	return kd_deno_fail(body, creating ? 409 : 404, creating ? "SANDBOX_NOT_READY" : "SANDBOX_NOT_FOUND", "sandbox %s is %s",
		     id, creating ? "still being created" : "not running on this node");
}

/* extendTimeout (§6.1.2): an absolute target on the client's clock; at most 30 minutes on, never shorter. */
static int v3_extend(struct kilnd *kd, const struct kd_req *r, const char *id, json_t **body)
{
	struct kd_sbx *s = running_sbx(kd, id);
	uint64_t now = kd_now_ms(), target;
	struct kiln_err err;
	json_error_t je;
	json_t *in, *v;
	int ret;

	if (!s)
		return sbx_not_running(kd, id, body);
	if (s->life.kind == SCHED_TIMEOUT_SESSION)
		return kd_deno_fail(body, 400, "INVALID_TIMEOUT", "sandbox %s lives as long as its creating connection "
			     "(timeout \"session\"): create it with a timeout such as \"10m\" to extend it", id);
	in = json_loadb(r->body ? r->body : "", r->body_len, 0, &je);
	v = json_object_get(in, "stop_at_ms");
	if (!json_is_integer(v) || json_integer_value(v) <= 0) {
		json_decref(in);
		return kd_deno_fail(body, 400, "INVALID_TIMEOUT", "extend takes {\"stop_at_ms\": N}, N in ms since the epoch");
	}
	target = (uint64_t)json_integer_value(v);
	json_decref(in);
	if (target > now + V3_EXTEND_MAX_MS)
		target = now + V3_EXTEND_MAX_MS;
	if (target > s->life.stop_at_ms) {
		ret = sched_life_extend_to(&s->life, target, now, &err);
		if (ret < 0)
			return kd_deno_fail(body, 400, "INVALID_TIMEOUT", "%s", err.msg);
		pthread_mutex_lock(&kd->reg_lock);
		ret = reg_sandbox_set_stop_at(kd->reg, id, (int64_t)s->life.stop_at_ms, (int64_t)now, NULL);
		pthread_mutex_unlock(&kd->reg_lock);
		if (ret)
			return kd_deno_fail(body, 500, "INTERNAL", "the registry did not take the new deadline");
	}
	*body = json_pack("{s:I}", "stop_at_ms", (json_int_t)s->life.stop_at_ms);
	return 200;
}

/* expose/http (§6.1.3): a name for the sandbox; the RPC exposeHttp binds it to a port. */
static int v3_expose(struct kilnd *kd, const char *id, json_t **body)
{
	struct kd_sbx *s = running_sbx(kd, id);
	char domain[200];
	struct kiln_err err;
	int r;

	if (!s)
		return sbx_not_running(kd, id, body);
	r = kd_ingress_alloc(kd, id, s->vmm.vsock_path, domain, sizeof(domain), &err);
	if (r)
		return kd_deno_fail(body, r == -ENOTSUP ? 501 : r == -ENOSPC ? 429 : 500,
			     r == -ENOTSUP ? "NOT_SUPPORTED" : r == -ENOSPC ? "LIMIT" : "INTERNAL", "%s", err.msg);
	*body = json_pack("{s:s}", "domain", domain);
	return 200;
}

/* expose/ssh (§6.1.3): a username that is the credential for this sandbox, for its lifetime. */
static int v3_expose_ssh(struct kilnd *kd, const char *id, json_t **body)
{
	struct kd_sbx *s = running_sbx(kd, id);
	char user[KD_SSH_USER_MAX];
	struct kiln_err err;
	int r;

	if (!s)
		return sbx_not_running(kd, id, body);
	if (!kd->ssh)
		return kd_deno_fail(body, 501, "NOT_SUPPORTED", "this node has no SSH gateway: start kilnd with --ssh-listen "
			     "ADDR:PORT (make run does)");
	r = kd_ssh_user_new(kd->ssh, id, s->vmm.vsock_path, user, sizeof(user), &err);
	if (r)
		return kd_deno_fail(body, r == -ENOSPC ? 429 : 500, r == -ENOSPC ? "LIMIT" : "INTERNAL", "%s", err.msg);
	*body = json_pack("{s:s, s:s}", "hostname", kd->conf.ssh_hostname, "username", user);
	return 200;
}

static json_t *iso_json(int64_t ms)
{
	char b[40];

	return ms > 0 ? json_string(sched_format_time((uint64_t)ms, b, sizeof(b))) : json_null();
}

/* GET /api/v2/sandboxes?labels[K]=V (§6.3): a bare array, every state. */
static int v2_list(struct kilnd *kd, const struct kd_req *r, json_t **body)
{
	struct reg_label f[REG_LABELS_MAX];
	struct reg_sandbox *rows = NULL;
	struct kiln_err err;
	size_t nf = 0, n = 0;
	char arg[300];
	json_t *a;
	int ret;

	for (int i = 0; i < 32; i++) {
		char *k, *close, *val;

		if (lws_hdr_copy_fragment(r->wsi, arg, sizeof(arg), WSI_TOKEN_HTTP_URI_ARGS, i) < 0)
			break;
		if (strncmp(arg, "labels[", 7))
			continue;	/* the SDK sends only labels; others are ignored like a server would */
		k = arg + 7;
		close = strstr(k, "]=");
		if (!close)
			return kd_deno_fail(body, 400, "INVALID_QUERY", "label filter \"%.64s\" is not labels[K]=V", arg);
		*close = '\0';
		val = close + 2;
		if (sched_label_check(k, strlen(k), val, strlen(val), &err))
			return kd_deno_fail(body, 400, "INVALID_QUERY", "%s", err.msg);
		if (nf == REG_LABELS_MAX)
			return kd_deno_fail(body, 400, "INVALID_QUERY", "more than %d label filters", REG_LABELS_MAX);
		snprintf(f[nf].key, sizeof(f[nf].key), "%.63s", k);
		snprintf(f[nf].value, sizeof(f[nf].value), "%.128s", val);
		nf++;
	}
	pthread_mutex_lock(&kd->reg_lock);
	ret = reg_sandbox_list(kd->reg, 0, f, nf, &rows, &n, &err);
	pthread_mutex_unlock(&kd->reg_lock);
	if (ret)
		return kd_deno_fail(body, 500, "INTERNAL", "%s", err.msg);
	a = json_array();
	for (size_t i = 0; i < n; i++) {
		json_t *labels = json_object();
		int live = rows[i].state == REG_CREATING || rows[i].state == REG_RUNNING;

		for (unsigned k = 0; k < rows[i].n_labels; k++)
			json_object_set_new(labels, rows[i].labels[k].key, json_string(rows[i].labels[k].value));
		json_array_append_new(a, json_pack("{s:s, s:o, s:o, s:s, s:s, s:o}", "id", rows[i].id, "createdAt",
						   iso_json(rows[i].created_ms), "stoppedAt",
						   live ? json_null() : iso_json(rows[i].ended_ms), "region",
						   kd->conf.region, "status", live ? "running" : "stopped", "labels",
						   labels));
	}
	free(rows);
	*body = a;
	return 200;
}

int kd_deno_route(struct kilnd *kd, const struct kd_req *r, json_t **body)
{
	const char *p = r->path;
	int m = r->method;

	if (!strncmp(p, V3_SANDBOX, strlen(V3_SANDBOX))) {
		const char *rest = p + strlen(V3_SANDBOX);
		char id[REG_ID_MAX];
		struct kiln_err err;

		if (strlen(rest) < REG_ID_LEN)
			return kd_deno_fail(body, 404, "SANDBOX_NOT_FOUND", "no sandbox id in %.80s", p);
		memcpy(id, rest, REG_ID_LEN);
		id[REG_ID_LEN] = '\0';
		if (reg_sandbox_id_check(id, &err))
			return kd_deno_fail(body, 404, "SANDBOX_NOT_FOUND", "%s", err.msg);
		rest += REG_ID_LEN;
		if (!*rest && m == LWSHUMETH_DELETE)
			return v3_kill(kd, id, body);
		if (!*rest && m == LWSHUMETH_PATCH)
			return v3_extend(kd, r, id, body);
		if (!*rest)
			return kd_deno_fail(body, 405, "METHOD_NOT_ALLOWED", "/api/v3/sandbox/ID takes DELETE (kill) or PATCH "
				     "(extendTimeout)");
		if (!strcmp(rest, "/connect"))
			return kd_deno_fail(body, 400, "BAD_REQUEST", "/api/v3/sandbox/ID/connect is a WebSocket");
		if ((!strcmp(rest, "/expose/http") || !strcmp(rest, "/expose/vscode")) && m == LWSHUMETH_POST)
			return v3_expose(kd, id, body);
		if (!strcmp(rest, "/expose/ssh") && m == LWSHUMETH_POST)
			return v3_expose_ssh(kd, id, body);
		return kd_deno_fail(body, 404, "NOT_FOUND", "no such path %.80s", p);
	}
	if (!strcmp(p, "/api/v3/sandboxes/create"))
		return kd_deno_fail(body, 400, "BAD_REQUEST", "/api/v3/sandboxes/create is a WebSocket (upgrade with the "
			     "x-deno-sandbox-config header)");
	if (!strcmp(p, "/api/v2/sandboxes") && m == LWSHUMETH_GET)
		return v2_list(kd, r, body);
	if (!strncmp(p, "/api/v2/volumes", 15) || !strncmp(p, "/api/v2/snapshots", 17))
		return kd_v2_volumes_route(kd, r, body);
	if (!strncmp(p, "/api/v2/", 8))
		return kd_deno_fail(body, 501, "NOT_SUPPORTED", "%.80s is part of Deno Deploy (apps, layers, revisions, "
			     "timelines, deploy), which kiln is not", p);
	return kd_deno_fail(body, 404, "NOT_FOUND", "no such path %.80s: kiln serves /api/v3 (sandboxes) and /api/v2 "
		     "(the sandbox list)", p);
}
