/*
 * The kiln CLI's HTTP client of kilnd: where it listens (unix:/PATH or
 * http://HOST:PORT) and one synchronous request with a bounded reply and a
 * deadline, on libwebsockets' HTTP client; JSON in and out with jansson.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <libwebsockets.h>

#include "err.h"
#include "kiln_remote.h"

void kr_lws_log_init(void)
{
	const char *s = getenv("KILN_LWS_LOG");

	lws_set_log_level(s ? atoi(s) : 0, NULL);
}

int kr_endpoint_parse(struct kr_endpoint *ep, const char *text, struct kiln_err *err)
{
	const char *h, *colon, *end;
	char *pend;
	size_t hlen;
	long port;

	memset(ep, 0, sizeof(*ep));
	ep->text = text;
	ep->token = getenv("KILN_TOKEN");
	if (ep->token && !*ep->token)
		ep->token = NULL;
	for (h = ep->token; h && *h; h++)
		if (*h <= ' ' || *h == 0x7f)
			return kiln_fail(err, EINVAL, "KILN_TOKEN has a space or control character; "
					 "set it to the ddo_... token that kiln token create printed");
	if (strncmp(text, "unix:", 5) == 0) {
		if (text[5] != '/')
			return kiln_fail(err, EINVAL, "endpoint %s: expected unix:/ABSOLUTE/PATH", text);
		if (strlen(text + 5) >= sizeof(ep->path))
			return kiln_fail(err, ENAMETOOLONG, "endpoint %s: socket path longer than %zu bytes",
					 text, sizeof(ep->path) - 1);
		ep->is_unix = 1;
		strcpy(ep->path, text + 5);
		return 0;
	}
	if (strncmp(text, "http://", 7) != 0)
		return kiln_fail(err, EINVAL, "endpoint %s: expected unix:/PATH or http://HOST:PORT "
				 "(kilnd serves plain HTTP; no https)", text);
	h = text + 7;
	end = h + strlen(h);
	if (end > h && end[-1] == '/')
		end--;
	if (*h == '[') {
		colon = memchr(h, ']', (size_t)(end - h));
		if (!colon || colon[1] != ':')
			return kiln_fail(err, EINVAL, "endpoint %s: expected http://[IPV6]:PORT", text);
		h++;
		hlen = (size_t)(colon - h);
		colon++;
	} else {
		colon = memrchr(h, ':', (size_t)(end - h));
		if (!colon)
			return kiln_fail(err, EINVAL, "endpoint %s: no port (expected http://HOST:PORT)", text);
		hlen = (size_t)(colon - h);
	}
	if (!hlen || hlen >= sizeof(ep->host) || memchr(h, '/', hlen) || memchr(h, '@', hlen))
		return kiln_fail(err, EINVAL, "endpoint %s: bad host (expected http://HOST:PORT)", text);
	errno = 0;
	port = strtol(colon + 1, &pend, 10);
	if (errno || pend != end || pend == colon + 1 || port < 1 || port > 65535)
		return kiln_fail(err, EINVAL, "endpoint %s: port must be a number from 1 to 65535", text);
	memcpy(ep->host, h, hlen);
	ep->port = (int)port;
	return 0;
}

/* ---- why a connect failed ------------------------------------------------------- */

const char *kr_probe(const struct kr_endpoint *ep, char *buf, size_t cap)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai = NULL;
	struct pollfd p;
	char port[8];
	socklen_t sl = sizeof(int);
	int fd, e = 0, r;

	if (ep->is_unix) {
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return strerror(errno);
		memcpy(sa.sun_path, ep->path, strlen(ep->path));
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
			e = errno;
		close(fd);
		return e ? strerror(e) : NULL;
	}
	snprintf(port, sizeof(port), "%d", ep->port);
	r = getaddrinfo(ep->host, port, &hints, &ai);
	if (r) {
		snprintf(buf, cap, "%s", gai_strerror(r));
		return buf;
	}
	fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		freeaddrinfo(ai);
		return strerror(errno);
	}
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
		e = errno;
		if (e == EINPROGRESS) {
			p.fd = fd;
			p.events = POLLOUT;
			e = poll(&p, 1, 3000) == 1 && !getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &sl) ? e : ETIMEDOUT;
		}
	}
	close(fd);
	freeaddrinfo(ai);
	return e ? strerror(e) : NULL;
}

int kr_unreachable(const struct kr_endpoint *ep, int errnum, const char *why, struct kiln_err *err)
{
	return kiln_fail(err, errnum, "cannot reach kilnd at %s: %s (is kilnd running? set KILN_ENDPOINT)",
			 ep->text, why);
}

/* After libwebsockets could not connect: the reason, probed again. */
static int connect_failed(const struct kr_endpoint *ep, const char *lws_why, struct kiln_err *err)
{
	char buf[128];
	const char *why = kr_probe(ep, buf, sizeof(buf));

	return kr_unreachable(ep, ECONNREFUSED, why ? why : lws_why, err);
}

void kr_lws_context_info(struct lws_context_creation_info *info, const struct lws_protocols *protocols,
			 void *user, int timeout_ms)
{
	long fds = sysconf(_SC_OPEN_MAX);

	memset(info, 0, sizeof(*info));
	info->port = CONTEXT_PORT_NO_LISTEN;
	info->protocols = protocols;
	info->user = user;
	info->gid = -1;
	info->uid = -1;
	/* Our own deadline decides; libwebsockets' timeouts must not come first. */
	info->timeout_secs = (unsigned)(timeout_ms / 1000 + 30);
	info->connect_timeout_secs = info->timeout_secs;
	/* libwebsockets indexes its tables by fd number: enough for the CLI's, not ulimit's millions. */
	info->fd_limit_per_thread = (unsigned)(fds > 0 && fds < 4096 ? fds : 4096);
}

/* ---- one request ------------------------------------------------------------------ */

enum { R_RUNNING, R_DONE, R_CLOSED, R_CONNFAIL, R_FAILED, R_TIMEOUT };

struct req {
	const struct kr_endpoint *ep;
	struct kr_reply *rep;
	char *out;			/* the request body */
	size_t out_len, out_off;
	int state;
	int reached;			/* the request went out: failures are kilnd's, not the connect's */
	int err;			/* -errno for R_FAILED */
	char why[256];
	lws_sorted_usec_list_t sul;
	struct lws_context *ctx;
};

#define CHUNK	4096

static int add_header(struct lws *wsi, const char *name, const char *val, unsigned char **p, unsigned char *end)
{
	return lws_add_http_header_by_name(wsi, (const unsigned char *)name, (const unsigned char *)val,
					   (int)strlen(val), p, end);
}

static int req_fail(struct req *r, int errnum, const char *why)
{
	r->state = R_FAILED;
	r->err = -errnum;
	snprintf(r->why, sizeof(r->why), "%s", why);
	return -1;
}

static int body_append(struct req *r, const void *p, size_t n)
{
	struct kr_reply *rep = r->rep;
	char *nb;
	size_t cap;

	if (rep->len + n > KR_BODY_MAX)
		return req_fail(r, EFBIG, "the reply is larger than 16 MiB");
	/* Double, so a large reply costs O(n) copying, not a realloc per chunk. */
	if (rep->len + n + 1 > rep->cap) {
		cap = 2 * rep->cap > rep->len + n + 1 ? 2 * rep->cap : rep->len + n + 1;
		if (cap < 16384)
			cap = 16384;
		if (cap > KR_BODY_MAX + 1)
			cap = KR_BODY_MAX + 1;
		nb = realloc(rep->body, cap);
		if (!nb)
			return req_fail(r, ENOMEM, "out of memory");
		rep->body = nb;
		rep->cap = cap;
	}
	memcpy(rep->body + rep->len, p, n);
	rep->len += n;
	rep->body[rep->len] = '\0';
	return 0;
}

static int http_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
	struct req *r = lws_context_user(lws_get_context(wsi));
	unsigned char buf[LWS_PRE + CHUNK], **p, *end;
	char hv[64], *px;
	int n, lenx;

	switch (reason) {
	case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
		if (r->state == R_RUNNING) {
			r->state = r->reached ? R_FAILED : R_CONNFAIL;
			r->err = -EPROTO;
			snprintf(r->why, sizeof(r->why), "%s", in ? (const char *)in : "connection failed");
		}
		return 0;
	case LWS_CALLBACK_CLIENT_APPEND_HANDSHAKE_HEADER:
		r->reached = 1;
		p = in;
		end = *p + len;
		if (r->ep->token) {
			if (strlen(r->ep->token) > 1024)
				return req_fail(r, EINVAL, "KILN_TOKEN is longer than 1024 bytes");
			snprintf((char *)buf, sizeof(buf), "Bearer %s", r->ep->token);
			if (add_header(wsi, "authorization:", (char *)buf, p, end))
				return req_fail(r, EINVAL, "the request headers do not fit");
		}
		if (r->out) {
			snprintf(hv, sizeof(hv), "%zu", r->out_len);
			if (add_header(wsi, "content-type:", "application/json", p, end) ||
			    add_header(wsi, "content-length:", hv, p, end))
				return req_fail(r, EINVAL, "the request headers do not fit");
			lws_client_http_body_pending(wsi, 1);
			lws_callback_on_writable(wsi);
		}
		return 0;
	case LWS_CALLBACK_CLIENT_HTTP_WRITEABLE:
		if (!r->out || r->out_off >= r->out_len)
			return 0;
		n = r->out_len - r->out_off > CHUNK ? CHUNK : (int)(r->out_len - r->out_off);
		memcpy(buf + LWS_PRE, r->out + r->out_off, (size_t)n);
		r->out_off += (size_t)n;
		if (lws_write(wsi, buf + LWS_PRE, (size_t)n,
			      r->out_off == r->out_len ? LWS_WRITE_HTTP_FINAL : LWS_WRITE_HTTP) != n)
			return req_fail(r, EPIPE, "kilnd stopped reading the request");
		if (r->out_off == r->out_len)
			lws_client_http_body_pending(wsi, 0);
		else
			lws_callback_on_writable(wsi);
		return 0;
	case LWS_CALLBACK_ESTABLISHED_CLIENT_HTTP:
		r->rep->status = (int)lws_http_client_http_response(wsi);
		if (lws_hdr_copy(wsi, hv, sizeof(hv), WSI_TOKEN_HTTP_CONTENT_LENGTH) > 0 &&
		    strtoull(hv, NULL, 10) > KR_BODY_MAX)
			return req_fail(r, EFBIG, "the reply is larger than 16 MiB");
		return 0;
	case LWS_CALLBACK_RECEIVE_CLIENT_HTTP:
		px = (char *)buf + LWS_PRE;
		lenx = CHUNK;
		return lws_http_client_read(wsi, &px, &lenx) < 0 ? -1 : 0;
	case LWS_CALLBACK_RECEIVE_CLIENT_HTTP_READ:
		return body_append(r, in, len);
	case LWS_CALLBACK_COMPLETED_CLIENT_HTTP:
		if (r->state == R_RUNNING)
			r->state = R_DONE;
		return 0;
	case LWS_CALLBACK_CLOSED_CLIENT_HTTP:
		if (r->state == R_RUNNING)
			r->state = r->rep->status ? R_CLOSED : R_FAILED;
		if (r->state == R_FAILED && !r->why[0])
			req_fail(r, EPROTO, "kilnd closed the connection without answering");
		return 0;
	default:
		break;
	}
	return lws_callback_http_dummy(wsi, reason, user, in, len);
}

static void req_deadline(lws_sorted_usec_list_t *sul)
{
	struct req *r = lws_container_of(sul, struct req, sul);

	if (r->state == R_RUNNING)
		r->state = R_TIMEOUT;
	/* Timers run before the poll: wake it, or it sleeps on to the next event. */
	lws_cancel_service(r->ctx);
}

void kr_reply_free(struct kr_reply *rep)
{
	json_decref(rep->json);
	free(rep->body);
	memset(rep, 0, sizeof(*rep));
}

int kr_request(const struct kr_endpoint *ep, const char *method, const char *path, json_t *body,
	       int timeout_ms, struct kr_reply *rep, struct kiln_err *err)
{
	static const struct lws_protocols protocols[] = {
		{ "kiln-http", http_cb, 0, CHUNK, 0, NULL, 0 },
		{ NULL, NULL, 0, 0, 0, NULL, 0 },
	};
	struct lws_context_creation_info info;
	struct lws_client_connect_info ci;
	struct lws_context *ctx;
	struct req r;
	char addr[sizeof(ep->path) + 1], host[sizeof(ep->host) + 16];
	int ret;

	memset(rep, 0, sizeof(*rep));
	memset(&r, 0, sizeof(r));
	r.ep = ep;
	r.rep = rep;
	if (body) {
		r.out = json_dumps(body, JSON_COMPACT);
		if (!r.out)
			return kiln_fail(err, ENOMEM, "out of memory");
		r.out_len = strlen(r.out);
	}
	kr_lws_log_init();
	kr_lws_context_info(&info, protocols, &r, timeout_ms);
	ctx = r.ctx = lws_create_context(&info);
	if (!ctx) {
		free(r.out);
		return kiln_fail(err, ENOMEM, "libwebsockets: cannot create a context");
	}
	memset(&ci, 0, sizeof(ci));
	ci.context = ctx;
	if (ep->is_unix) {
		snprintf(addr, sizeof(addr), "+%s", ep->path);
		ci.address = addr;
		ci.host = "localhost";
	} else {
		snprintf(host, sizeof(host), strchr(ep->host, ':') ? "[%s]:%d" : "%s:%d", ep->host, ep->port);
		ci.address = ep->host;
		ci.port = ep->port;
		ci.host = host;
	}
	ci.path = path;
	ci.method = method;
	ci.protocol = protocols[0].name;
	ci.ssl_connection = LCCSCF_HTTP_NO_FOLLOW_REDIRECT;
	lws_sul_schedule(ctx, 0, &r.sul, req_deadline, (lws_usec_t)timeout_ms * LWS_US_PER_MS);
	if (!lws_client_connect_via_info(&ci) && r.state == R_RUNNING) {
		r.state = R_CONNFAIL;
		snprintf(r.why, sizeof(r.why), "connection failed");
	}
	while (r.state == R_RUNNING)
		if (lws_service(ctx, 0) < 0)
			break;
	lws_sul_cancel(&r.sul);
	lws_context_destroy(ctx);
	free(r.out);

	switch (r.state) {
	case R_DONE:
	case R_CLOSED:	/* a reply without a length ends when kilnd hangs up */
		break;
	case R_CONNFAIL:
		ret = connect_failed(ep, r.why, err);
		goto fail;
	case R_TIMEOUT:
		ret = kiln_fail(err, ETIMEDOUT, "kilnd at %s did not answer %s %s within %d s "
				"(--request-timeout S waits longer)", ep->text, method, path, timeout_ms / 1000);
		goto fail;
	default:
		ret = kiln_fail(err, r.err ? -r.err : EPROTO, "kilnd at %s, %s %s: %s", ep->text, method, path,
				r.why[0] ? r.why : "the connection failed");
		goto fail;
	}
	if (!rep->body && body_append(&r, "", 0)) {
		ret = kiln_fail(err, ENOMEM, "out of memory");
		goto fail;
	}
	if (rep->len && (rep->body[0] == '{' || rep->body[0] == '['))
		rep->json = json_loadb(rep->body, rep->len, JSON_REJECT_DUPLICATES, NULL);
	return 0;
fail:
	kr_reply_free(rep);
	return ret;
}
