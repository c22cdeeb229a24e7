/*
 * kilnd's HTTP front on libwebsockets: one protocol callback that takes a
 * request (method, path, bounded body), checks who is asking (SO_PEERCRED
 * on a unix socket, a bearer token on TCP), hands it to the router
 * (kd_api.c) and writes the answer, now or when a create comes back.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "kilnd.h"

struct kd_pss {
	struct kd_req req;
	size_t body_cap;
	int waiting;			/* the answer comes later (kd_http_reply) */
	int have_resp;
	int status;
	char *resp;			/* LWS_PRE bytes, then the body */
	size_t resp_len;
	const char *ctype;
};

static const char *status_code(int status)
{
	switch (status) {
	case 400: return "bad_request";
	case 401: return "unauthorized";
	case 403: return "forbidden";
	case 404: return "not_found";
	case 405: return "method_not_allowed";
	case 409: return "conflict";
	case 411: return "length_required";
	case 413: return "payload_too_large";
	case 503: return "no_capacity";
	case 507: return "insufficient_storage";
	default: return status >= 500 ? "internal" : "bad_request";
	}
}

json_t *kd_err_json(int status, const char *message)
{
	return json_pack("{s:s, s:s}", "code", status_code(status), "message", message && *message ? message : "error");
}

int kd_errno_status(int ret)
{
	switch (ret) {
	case -EINVAL: return 400;
	case -EACCES: return 401;
	case -EPERM: return 403;
	case -ENOENT: return 404;
	case -EALREADY:
	case -EEXIST:
	case -ETIMEDOUT:
	case -EBUSY: return 409;
	case -E2BIG: return 413;
	case -ENOSPC: return 503;
	case -EDQUOT: return 507;
	default: return 500;
	}
}

static void set_resp(struct kd_pss *p, int status, char *text, size_t len, const char *ctype)
{
	free(p->resp);
	p->resp = malloc(LWS_PRE + len + 1);
	if (p->resp) {
		memcpy(p->resp + LWS_PRE, text, len);
		p->resp_len = len;
	} else {
		p->resp_len = 0;
	}
	p->status = status;
	p->ctype = ctype;
	p->have_resp = 1;
}

static void reply_json(struct kd_pss *p, int status, json_t *body)
{
	char *s = body ? json_dumps(body, JSON_COMPACT) : NULL;
	size_t n = s ? strlen(s) : 0;

	if (s) {
		char *t = realloc(s, n + 2);

		if (t) {
			s = t;
			s[n++] = '\n';
			s[n] = '\0';
		}
	}
	set_resp(p, status, s ? s : "", n, "application/json");
	free(s);
	json_decref(body);
}

void kd_http_reply(struct lws *wsi, int status, json_t *body)
{
	struct kd_pss *p = lws_wsi_user(wsi);

	if (!p) {
		json_decref(body);
		return;
	}
	p->waiting = 0;
	reply_json(p, status, body);
	lws_callback_on_writable(wsi);
}

static int is_unix_listener(struct kilnd *kd, struct lws *wsi)
{
	struct lws_vhost *vh = lws_get_vhost(wsi);

	for (unsigned i = 0; i < kd->conf.nlisten; i++)
		if (kd->conf.listen[i].vh == vh)
			return kd->conf.listen[i].is_unix;
	return 0;
}

/*
 * May this connection use the API? A unix socket admits root, kilnd's own
 * user and the socket's group; TCP wants a valid bearer token. 0, or an
 * HTTP status with msg filled.
 */
static int authorize(struct kilnd *kd, struct lws *wsi, int is_unix, char *msg, size_t n)
{
	char hdr[128];
	int len;

	if (is_unix) {
		struct ucred cr;
		socklen_t cl = sizeof(cr);
		int fd = lws_get_socket_fd(wsi);

		if (fd < 0 || getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl)) {
			snprintf(msg, n, "cannot tell who is connected to kilnd's socket");
			return 403;
		}
		if (cr.uid == 0 || cr.uid == geteuid() ||
		    (kd->conf.sock_gid != (gid_t)-1 && cr.gid == kd->conf.sock_gid))
			return 0;
		snprintf(msg, n, "uid %u may not use kilnd's socket: it admits root, kilnd's user and the group "
			 "named by kilnd --socket-group", (unsigned)cr.uid);
		return 403;
	}
	len = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_AUTHORIZATION);
	if (len <= 0) {
		snprintf(msg, n, "missing Authorization header: send \"Authorization: Bearer ddo_...\" with a "
			 "token from `kiln token create`");
		return 401;
	}
	if (len >= (int)sizeof(hdr) || lws_hdr_copy(wsi, hdr, sizeof(hdr), WSI_TOKEN_HTTP_AUTHORIZATION) < 0 ||
	    strncasecmp(hdr, "Bearer ", 7)) {
		snprintf(msg, n, "malformed Authorization header: send \"Authorization: Bearer ddo_...\"");
		return 401;
	}
	pthread_mutex_lock(&kd->reg_lock);
	int r = reg_token_verify(kd->reg, hdr + 7, (int64_t)kd_now_ms(), NULL, NULL);
	pthread_mutex_unlock(&kd->reg_lock);
	if (r) {
		snprintf(msg, n, "invalid or revoked token: create one with `kiln token create` on the node");
		return 401;
	}
	return 0;
}

int kd_authorize(struct lws *wsi, char *msg, size_t n)
{
	struct kilnd *kd = kd_of(wsi);

	return authorize(kd, wsi, is_unix_listener(kd, wsi), msg, n);
}

static void dispatch(struct kilnd *kd, struct lws *wsi, struct kd_pss *p)
{
	json_t *body = NULL;
	char *text = NULL;
	int status = kd_api_route(kd, &p->req, &body, &text);

	free(p->req.body);
	p->req.body = NULL;
	p->req.body_len = 0;
	if (status == 0) {
		p->waiting = 1;
		return;
	}
	if (text) {
		set_resp(p, status, text, strlen(text), "text/plain; version=0.0.4");
		free(text);
	} else {
		reply_json(p, status, body);
	}
	lws_callback_on_writable(wsi);
}

static int start_request(struct kilnd *kd, struct lws *wsi, struct kd_pss *p, const char *uri)
{
	char *u, msg[256], cl[32];
	int ulen, st;
	long long len = 0;

	free(p->req.body);
	free(p->resp);
	memset(p, 0, sizeof(*p));
	p->req.wsi = wsi;
	p->req.is_unix = is_unix_listener(kd, wsi);
	p->req.method = lws_http_get_uri_and_method(wsi, &u, &ulen);
	snprintf(p->req.path, sizeof(p->req.path), "%s", uri ? uri : "");
	if (uri && strlen(uri) >= sizeof(p->req.path)) {
		reply_json(p, 404, kd_err_json(404, "no such path: it is too long to be one of kilnd's"));
		return lws_callback_on_writable(wsi), 0;
	}
	st = authorize(kd, wsi, p->req.is_unix, msg, sizeof(msg));
	if (st) {
		/* The Deno SDK special-cases INVALID_TOKEN (protocol §2.4). */
		if (!strncmp(p->req.path, "/api/", 5))
			reply_json(p, st, json_pack("{s:s, s:s}", "code", st == 401 ? "INVALID_TOKEN" : "FORBIDDEN",
						    "message", msg));
		else
			reply_json(p, st, kd_err_json(st, msg));
		return lws_callback_on_writable(wsi), 0;
	}
	if (lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH) > 0) {
		char *end;

		lws_hdr_copy(wsi, cl, sizeof(cl), WSI_TOKEN_HTTP_CONTENT_LENGTH);
		errno = 0;
		len = strtoll(cl, &end, 10);
		if (errno || *end || len < 0) {
			reply_json(p, 400, kd_err_json(400, "malformed Content-Length"));
			return lws_callback_on_writable(wsi), 0;
		}
	}
	if (len > (long long)SCHED_BODY_MAX) {
		snprintf(msg, sizeof(msg), "request body is %lld bytes (at most %u)", len, SCHED_BODY_MAX);
		reply_json(p, 413, kd_err_json(413, msg));
		return lws_callback_on_writable(wsi), 0;
	}
	if (len > 0 && (p->req.method == LWSHUMETH_POST || p->req.method == LWSHUMETH_PUT ||
			p->req.method == LWSHUMETH_PATCH || p->req.method == LWSHUMETH_DELETE)) {
		p->body_cap = (size_t)len;
		p->req.body = malloc(p->body_cap + 1);
		if (!p->req.body) {
			reply_json(p, 500, kd_err_json(500, "out of memory"));
			return lws_callback_on_writable(wsi), 0;
		}
		return 0;	/* LWS_CALLBACK_HTTP_BODY follows */
	}
	dispatch(kd, wsi, p);
	return 0;
}

static int write_resp(struct lws *wsi, struct kd_pss *p)
{
	unsigned char hbuf[LWS_PRE + 512], *start = hbuf + LWS_PRE, *q = start, *end = hbuf + sizeof(hbuf) - 1;

	if (!p->have_resp)
		return 0;
	p->have_resp = 0;
	if (lws_add_http_common_headers(wsi, (unsigned)p->status, p->ctype, p->resp_len, &q, end) ||
	    lws_add_http_header_by_name(wsi, (const unsigned char *)"cache-control:",
					(const unsigned char *)"no-store", 8, &q, end) ||
	    lws_finalize_write_http_header(wsi, start, &q, end))
		return -1;
	if (p->resp_len && lws_write(wsi, (unsigned char *)p->resp + LWS_PRE, p->resp_len, LWS_WRITE_HTTP_FINAL) !=
			   (int)p->resp_len)
		return -1;
	free(p->resp);
	p->resp = NULL;
	p->resp_len = 0;
	return lws_http_transaction_completed(wsi) ? -1 : 0;
}

static int http_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
	struct kilnd *kd = kd_of(wsi);
	struct kd_pss *p = user;

	switch (reason) {
	case LWS_CALLBACK_HTTP:
		return start_request(kd, wsi, p, in);
	case LWS_CALLBACK_HTTP_BODY:
		/* No body expected (none declared, or already answered): ignore what comes. */
		if (!p->req.body || !len)
			return 0;
		if (p->req.body_len + len > p->body_cap) {
			free(p->req.body);
			p->req.body = NULL;
			reply_json(p, 400, kd_err_json(400, "the body is longer than its Content-Length"));
			lws_callback_on_writable(wsi);
			return 0;
		}
		memcpy(p->req.body + p->req.body_len, in, len);
		p->req.body_len += len;
		return 0;
	case LWS_CALLBACK_HTTP_BODY_COMPLETION:
		if (p->req.body) {
			p->req.body[p->req.body_len] = '\0';
			dispatch(kd, wsi, p);
		}
		return 0;
	case LWS_CALLBACK_HTTP_WRITEABLE:
		return write_resp(wsi, p);
	case LWS_CALLBACK_WSI_DESTROY:
		/*
		 * Every wsi ends here, also one that never got CLOSED_HTTP; its user
		 * data may be another protocol's by now, so only forget the wsi.
		 */
		kd_v3_wsi_gone(kd, wsi);
		kd_conn_closed(kd, wsi);
		return 0;
	case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE:
		return kd_v3_confirm(kd, wsi);
	case LWS_CALLBACK_CLOSED_HTTP:
		if (p) {
			free(p->req.body);
			free(p->resp);
			p->req.body = NULL;
			p->resp = NULL;
		}
		kd_conn_closed(kd, wsi);
		return 0;
	case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
		/* A WebSocket that named no protocol or another one. */
		return -1;
	case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
		kd_jobs_drain(kd);
		return 0;
	default:
		return lws_callback_http_dummy(wsi, reason, user, in, len);
	}
}

const struct lws_protocols kd_protocols[] = {
	{ "http", http_cb, sizeof(struct kd_pss), 0, 0, NULL, 0 },
	{ "kiln-agent.v1", kd_tunnel_cb, 64, 4096, 0, NULL, 0 },
	{ "kiln-agent-raw", kd_raw_cb, 0, 0, 0, NULL, 0 },
	/* The Deno SDK names no protocol: the vhosts make this one the default (main.c). */
	{ "deno-sandbox", kd_v3_cb, 0, 65536, 0, NULL, 0 },
	{ NULL, NULL, 0, 0, 0, NULL, 0 }
};
