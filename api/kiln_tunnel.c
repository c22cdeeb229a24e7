/*
 * The agent tunnel: kilnd's GET /v1/sandboxes/{id}/agent WebSocket
 * (subprotocol kiln-agent.v1, binary messages carrying the agent's byte
 * stream) bridged to one end of a socketpair, so that the synchronous agent
 * client runs unchanged on the other end (kac_connect_fd).
 *
 * A thread runs one libwebsockets context: the WebSocket client and our
 * socketpair end, adopted as a raw file. Both directions are flow
 * controlled: at most one chunk read from the socketpair waits for the
 * WebSocket, and WebSocket input that the client has no room for stops
 * further reads (lws_rx_flow_control) until it drained.
 *
 * Ends: the client closing its end (POLLHUP) closes the WebSocket; a
 * half-close (kiln connect --raw at stdin's end) only stops reading, since
 * a WebSocket has no half-close. kilnd closing the WebSocket flushes what
 * arrived, then closes the socketpair: the client sees the agent go away.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <libwebsockets.h>

#include "err.h"
#include "kiln_remote.h"

#define TUN_PROTOCOL	"kiln-agent.v1"
#define TUN_CHUNK	(64u << 10)	/* one read of the client's bytes, one WebSocket message */
#define TUN_IN_MAX	(4u << 20)	/* WebSocket input buffered for the client at most */

enum { T_CONNECTING, T_UP, T_FAILED };

struct tun {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int refs;			/* the opener and the thread; the last frees */
	int phase;			/* T_*, under mu */
	int err;			/* -errno when T_FAILED */
	int reached;			/* the upgrade request went out */
	char why[256];

	struct kr_endpoint ep;
	char path[160];
	int timeout_ms;
	int fd;				/* our end, until adopted */
	struct lws_context *ctx;
	struct lws *ws, *file;
	lws_sorted_usec_list_t sul;	/* the upgrade's deadline */

	unsigned char *in;		/* from the WebSocket, not yet written to fd: in[in_off..in_len) */
	size_t in_len, in_off, in_cap;
	unsigned char out[LWS_PRE + TUN_CHUNK];	/* read from fd, not yet sent */
	size_t out_len;
	int local_eof;			/* fd half-closed: read no more */
	int closing;			/* fd gone: close the WebSocket once out is sent */
};

/* Why kilnd closed the last tunnel (its WebSocket close reason), for the CLI's messages. */
static pthread_mutex_t reason_mu = PTHREAD_MUTEX_INITIALIZER;
static char close_reason[128];

const char *kr_tunnel_close_reason(char *buf, size_t cap)
{
	pthread_mutex_lock(&reason_mu);
	snprintf(buf, cap, "%s", close_reason);
	pthread_mutex_unlock(&reason_mu);
	return buf[0] ? buf : NULL;
}

/* The close frame's reason: a 2-byte status, then UTF-8 text (RFC 6455 5.5.1). */
static void tun_note_close(const unsigned char *in, size_t len)
{
	size_t n = len > 2 ? len - 2 : 0, i;

	if (n >= sizeof(close_reason))
		n = sizeof(close_reason) - 1;
	pthread_mutex_lock(&reason_mu);
	for (i = 0; i < n; i++)
		close_reason[i] = in[2 + i] < 0x20 || in[2 + i] == 0x7f ? '?' : (char)in[2 + i];
	close_reason[n] = '\0';
	pthread_mutex_unlock(&reason_mu);
}

/*
 * Before our end closes: read what the client sent and nobody will carry,
 * so that it sees an orderly EOF, not ECONNRESET (a unix socket closed
 * with unread bytes resets its peer).
 */
static void tun_drain(int fd)
{
	char buf[4096];

	while (recv(fd, buf, sizeof(buf), MSG_DONTWAIT) > 0)
		;
}

static void tun_put(struct tun *t)
{
	int last;

	pthread_mutex_lock(&t->mu);
	last = --t->refs == 0;
	pthread_mutex_unlock(&t->mu);
	if (!last)
		return;
	pthread_mutex_destroy(&t->mu);
	pthread_cond_destroy(&t->cv);
	free(t->in);
	free(t);
}

/* Tell the opener how the upgrade went (once). */
static void tun_report(struct tun *t, int phase, int errnum, const char *why)
{
	pthread_mutex_lock(&t->mu);
	if (t->phase == T_CONNECTING) {
		t->phase = phase;
		t->err = -errnum;
		if (why)
			snprintf(t->why, sizeof(t->why), "%s", why);
		pthread_cond_broadcast(&t->cv);
	}
	pthread_mutex_unlock(&t->mu);
}

static void tun_deadline(lws_sorted_usec_list_t *sul)
{
	struct tun *t = lws_container_of(sul, struct tun, sul);

	tun_report(t, T_FAILED, ETIMEDOUT, "no answer to the agent WebSocket upgrade");
	/* Timers run before the poll: wake it, or it sleeps on to the next event. */
	lws_cancel_service(t->ctx);
}

/* Write buffered WebSocket input to fd. Returns 0 (maybe some left), or -1 when fd is gone. */
static int tun_flush_in(struct tun *t)
{
	ssize_t w;

	while (t->in_off < t->in_len) {
		w = send(lws_get_socket_fd(t->file), t->in + t->in_off, t->in_len - t->in_off,
			 MSG_DONTWAIT | MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && errno == EAGAIN)
			return 0;
		if (w <= 0)
			return -1;
		t->in_off += (size_t)w;
	}
	t->in_off = t->in_len = 0;
	return 0;
}

static int tun_buffer_in(struct tun *t, const void *p, size_t n)
{
	unsigned char *nb;
	size_t cap;

	if (t->in_off) {
		memmove(t->in, t->in + t->in_off, t->in_len - t->in_off);
		t->in_len -= t->in_off;
		t->in_off = 0;
	}
	if (t->in_len + n > TUN_IN_MAX)
		return -1;
	if (t->in_len + n > t->in_cap) {
		cap = t->in_len + n > 2 * t->in_cap ? t->in_len + n : 2 * t->in_cap;
		nb = realloc(t->in, cap);
		if (!nb)
			return -1;
		t->in = nb;
		t->in_cap = cap;
	}
	memcpy(t->in + t->in_len, p, n);
	t->in_len += n;
	return 0;
}

static int ws_event(struct tun *t, struct lws *wsi, enum lws_callback_reasons reason, void *in, size_t len)
{
	lws_sock_file_fd_type u;
	char buf[1100];
	unsigned char **p;

	switch (reason) {
	case LWS_CALLBACK_CLIENT_APPEND_HANDSHAKE_HEADER:
		t->reached = 1;
		if (!t->ep.token)
			return 0;
		if (strlen(t->ep.token) > 1024) {
			tun_report(t, T_FAILED, EINVAL, "KILN_TOKEN is longer than 1024 bytes");
			return -1;
		}
		p = in;
		snprintf(buf, sizeof(buf), "Bearer %s", t->ep.token);
		return lws_add_http_header_by_name(wsi, (const unsigned char *)"authorization:",
						   (const unsigned char *)buf, (int)strlen(buf), p, *p + len);
	case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
		t->ws = NULL;
		tun_report(t, T_FAILED, t->reached ? EACCES : ECONNREFUSED, in ? (const char *)in : "connection failed");
		return 0;
	case LWS_CALLBACK_CLIENT_ESTABLISHED:
		t->ws = wsi;
		lws_sul_cancel(&t->sul);
		u.filefd = t->fd;
		t->fd = -1;	/* the adoption owns it now, even when it fails */
		t->file = lws_adopt_descriptor_vhost(lws_get_vhost(wsi), LWS_ADOPT_RAW_FILE_DESC, u, TUN_PROTOCOL, NULL);
		if (!t->file) {
			tun_report(t, T_FAILED, ENOMEM, "libwebsockets: cannot adopt the socketpair");
			return -1;
		}
		tun_report(t, T_UP, 0, NULL);
		return 0;
	case LWS_CALLBACK_CLIENT_RECEIVE:
		if (!t->file)
			return 0;	/* the client left: drop what the agent still says */
		if (!lws_frame_is_binary(wsi)) {
			lws_close_reason(wsi, LWS_CLOSE_STATUS_UNACCEPTABLE_OPCODE, (unsigned char *)"binary only", 11);
			return -1;
		}
		if (t->in_len == t->in_off) {
			ssize_t w = send(lws_get_socket_fd(t->file), in, len, MSG_DONTWAIT | MSG_NOSIGNAL);

			if (w < 0 && errno != EAGAIN && errno != EINTR)
				return -1;	/* the client is gone; its close follows */
			if (w > 0) {
				in = (char *)in + w;
				len -= (size_t)w;
			}
		}
		if (len) {
			if (tun_buffer_in(t, in, len) < 0) {
				lws_close_reason(wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, NULL, 0);
				return -1;
			}
			lws_rx_flow_control(wsi, 0);
			lws_callback_on_writable(t->file);
		}
		return 0;
	case LWS_CALLBACK_CLIENT_WRITEABLE:
		if (t->out_len) {
			if (lws_write(wsi, t->out + LWS_PRE, t->out_len, LWS_WRITE_BINARY) < (int)t->out_len)
				return -1;
			t->out_len = 0;
			if (t->file && !t->local_eof)
				lws_rx_flow_control(t->file, 1);
		}
		if (t->closing) {
			lws_close_reason(wsi, LWS_CLOSE_STATUS_NORMAL, NULL, 0);
			return -1;
		}
		return 0;
	case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
		tun_note_close(in, len);
		return 0;
	case LWS_CALLBACK_CLIENT_CLOSED:
		t->ws = NULL;
		/* What kilnd sent reaches the client before its end closes. */
		if (t->file)
			lws_callback_on_writable(t->file);
		return 0;
	default:
		return 0;
	}
}

static int file_event(struct tun *t, struct lws *wsi, enum lws_callback_reasons reason)
{
	ssize_t r;

	switch (reason) {
	case LWS_CALLBACK_RAW_RX_FILE:
		if (!t->ws) {
			/* kilnd is gone: what the client still sends goes nowhere (and must not spin us). */
			tun_drain(lws_get_socket_fd(wsi));
			lws_rx_flow_control(wsi, 0);
			return 0;
		}
		if (t->out_len) {
			lws_rx_flow_control(wsi, 0);
			return 0;
		}
		r = read(lws_get_socket_fd(wsi), t->out + LWS_PRE, TUN_CHUNK);
		if (r < 0)
			return errno == EAGAIN || errno == EINTR ? 0 : -1;
		/* Read no more until it is sent; at EOF, ever (a close follows as POLLHUP). */
		lws_rx_flow_control(wsi, 0);
		if (r == 0) {
			t->local_eof = 1;
			return 0;
		}
		t->out_len = (size_t)r;
		lws_callback_on_writable(t->ws);
		return 0;
	case LWS_CALLBACK_RAW_WRITEABLE_FILE:
		if (tun_flush_in(t) < 0)
			return -1;
		if (t->in_len != t->in_off) {
			lws_callback_on_writable(wsi);
			return 0;
		}
		if (!t->ws)
			return -1;	/* kilnd closed, all delivered: EOF for the client */
		lws_rx_flow_control(t->ws, 1);
		return 0;
	case LWS_CALLBACK_RAW_CLOSE_FILE:
		tun_drain(lws_get_socket_fd(wsi));
		t->file = NULL;
		if (t->ws) {
			t->closing = 1;
			lws_callback_on_writable(t->ws);
		}
		return 0;
	default:
		return 0;
	}
}

static int tun_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
	struct tun *t = lws_context_user(lws_get_context(wsi));

	(void)user;
	switch (reason) {
	case LWS_CALLBACK_RAW_ADOPT_FILE:
	case LWS_CALLBACK_RAW_RX_FILE:
	case LWS_CALLBACK_RAW_WRITEABLE_FILE:
	case LWS_CALLBACK_RAW_CLOSE_FILE:
		return file_event(t, wsi, reason);
	default:
		return ws_event(t, wsi, reason, in, len);
	}
}

static const struct lws_protocols tun_protocols[] = {
	{ TUN_PROTOCOL, tun_cb, 0, TUN_CHUNK, 0, NULL, 0 },
	{ NULL, NULL, 0, 0, 0, NULL, 0 },
};

static void *tun_main(void *arg)
{
	struct tun *t = arg;
	struct lws_context_creation_info info;
	struct lws_client_connect_info ci;
	char addr[sizeof(t->ep.path) + 1], host[sizeof(t->ep.host) + 16];

	kr_lws_context_info(&info, tun_protocols, t, t->timeout_ms);
	t->ctx = lws_create_context(&info);
	if (!t->ctx) {
		tun_report(t, T_FAILED, ENOMEM, "libwebsockets: cannot create a context");
		goto out;
	}
	memset(&ci, 0, sizeof(ci));
	ci.context = t->ctx;
	if (t->ep.is_unix) {
		snprintf(addr, sizeof(addr), "+%s", t->ep.path);
		ci.address = addr;
		ci.host = "localhost";
	} else {
		snprintf(host, sizeof(host), strchr(t->ep.host, ':') ? "[%s]:%d" : "%s:%d", t->ep.host, t->ep.port);
		ci.address = t->ep.host;
		ci.port = t->ep.port;
		ci.host = host;
	}
	ci.origin = ci.host;
	ci.path = t->path;
	ci.protocol = TUN_PROTOCOL;
	ci.local_protocol_name = TUN_PROTOCOL;
	lws_sul_schedule(t->ctx, 0, &t->sul, tun_deadline, (lws_usec_t)t->timeout_ms * LWS_US_PER_MS);
	if (!lws_client_connect_via_info(&ci))
		tun_report(t, T_FAILED, ECONNREFUSED, "connection failed");
	for (;;) {
		pthread_mutex_lock(&t->mu);
		int failed = t->phase == T_FAILED;
		pthread_mutex_unlock(&t->mu);
		if (failed || (!t->ws && !t->file && t->fd < 0))
			break;
		if (lws_service(t->ctx, 0) < 0)
			break;
	}
	lws_sul_cancel(&t->sul);
	lws_context_destroy(t->ctx);
	tun_report(t, T_FAILED, EPIPE, "the agent WebSocket closed during the upgrade");
out:
	if (t->fd >= 0)
		close(t->fd);
	tun_put(t);
	return NULL;
}

/* After a refused upgrade: kilnd's own word on the sandbox. */
static int tun_refused(const struct kr_endpoint *ep, const char *id, const char *why, struct kiln_err *err)
{
	struct kr_reply rep;
	struct kiln_err e2;
	const char *msg, *state;
	char path[160];
	int ret;

	snprintf(path, sizeof(path), "/v1/sandboxes/%s", id);
	if (kr_request(ep, "GET", path, NULL, KR_TIMEOUT_MS, &rep, &e2) < 0)
		return kiln_fail(err, EACCES, "kilnd refused the agent connection of %s: %s", id, why);
	msg = json_string_value(json_object_get(rep.json, "message"));
	state = json_string_value(json_object_get(rep.json, "state"));
	if (rep.status >= 400 && msg)
		ret = kiln_fail(err, rep.status == 404 ? ENOENT : EACCES, "%s", msg);
	else if (state && strcmp(state, "running"))
		ret = kiln_fail(err, EACCES, "sandbox %s is %s: its agent cannot be reached", id, state);
	else
		ret = kiln_fail(err, EACCES, "kilnd refused the agent connection of %s (HTTP %d to GET %s): %s",
				id, rep.status, path, why);
	kr_reply_free(&rep);
	return ret;
}

int kr_tunnel_open(const struct kr_endpoint *ep, const char *id, int timeout_ms, int *fd,
		   struct kiln_err *err)
{
	sigset_t all, old;
	pthread_t th;
	struct tun *t;
	int sp[2], ret, phase, reached;
	char why[256];

	t = calloc(1, sizeof(*t));
	if (!t)
		return kiln_fail(err, ENOMEM, "out of memory");
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) < 0) {
		ret = kiln_fail(err, errno, "socketpair: %s", strerror(errno));
		free(t);
		return ret;
	}
	fcntl(sp[1], F_SETFL, fcntl(sp[1], F_GETFL) | O_NONBLOCK);
	pthread_mutex_init(&t->mu, NULL);
	pthread_cond_init(&t->cv, NULL);
	t->refs = 2;
	t->ep = *ep;
	t->fd = sp[1];
	t->timeout_ms = timeout_ms > 0 ? timeout_ms : KR_TIMEOUT_MS;
	snprintf(t->path, sizeof(t->path), "/v1/sandboxes/%s/agent", id);
	kr_lws_log_init();

	/* Signals are the command's (exec forwards them): the thread takes none. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	ret = pthread_create(&th, NULL, tun_main, t);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (ret) {
		close(sp[0]);
		close(sp[1]);
		pthread_mutex_destroy(&t->mu);
		pthread_cond_destroy(&t->cv);
		free(t);
		return kiln_fail(err, ret, "cannot start the tunnel thread: %s", strerror(ret));
	}
	pthread_detach(th);

	pthread_mutex_lock(&t->mu);
	while (t->phase == T_CONNECTING)
		pthread_cond_wait(&t->cv, &t->mu);
	phase = t->phase;
	ret = t->err;
	reached = t->reached;
	snprintf(why, sizeof(why), "%s", t->why);
	pthread_mutex_unlock(&t->mu);
	tun_put(t);

	if (phase == T_UP) {
		*fd = sp[0];
		return 0;
	}
	close(sp[0]);
	if (ret == -ETIMEDOUT)
		return kiln_fail(err, ETIMEDOUT, "kilnd at %s did not open the agent connection of %s within %d s "
				 "(--connect-timeout S waits longer)", ep->text, id, timeout_ms / 1000);
	if (!reached) {
		char buf[128];
		const char *probe = kr_probe(ep, buf, sizeof(buf));

		return kr_unreachable(ep, ECONNREFUSED, probe ? probe : why, err);
	}
	if (ret == -EACCES)
		return tun_refused(ep, id, why, err);
	return kiln_fail(err, -ret, "agent connection of %s through kilnd at %s: %s", id, ep->text, why);
}
