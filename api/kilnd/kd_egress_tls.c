/*
 * kilnd's egress, terminated connections (kd_egress.h's "Secrets"): TLS to
 * a secret host ends here on both sides, the guest's side with a leaf of
 * the node CA, the upstream's verified and with ALPN http/1.1, and the
 * guest's requests are rewritten on their way up. kd_egress.c makes the
 * upstreams' client context here at start (eg_up_ctx_make) and hands a
 * connection over once its upstream's TCP is up (eg_tls_up_start); what the
 * two files share is in kd_egress_int.h.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>

#include <http_parser.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "kd_ca.h"
#include "kd_egress_int.h"

/*
 * A connection to a secret host: TLS ends here on both sides. The guest's
 * side is an OpenSSL filter over its socket's bufferevent, whose input still
 * holds the ClientHello the sniff read; the upstream's is a filter over the
 * connected socket, verified against the host's trust store with the name
 * as SNI and as the name checked. Guest to upstream, each HTTP/1.1 request's
 * header block (at most KD_EGRESS_HEAD_MAX) is collected, the placeholders
 * of the secrets for this host are replaced in its header lines (not the
 * request line), and its body follows as http-parser delimits it
 * (Content-Length or chunked); then the next request of the keep-alive
 * connection. Upstream to guest is copied as it is.
 */
#define EG_REWRITE_MAX		(1u << 20)	/* one rewritten header block */
#define EG_DRAIN_TICK_MS	20
#define EG_DRAIN_MS		10000

static const unsigned char eg_alpn_h11[] = "\x08http/1.1";

static void tls_read(struct bufferevent *bev, void *arg);
static void tls_write(struct bufferevent *bev, void *arg);
static void tls_event(struct bufferevent *bev, short what, void *arg);

static int rw_message_complete(http_parser *p)
{
	struct eg_conn *c = p->data;

	c->rw_done = 1;
	http_parser_pause(p, 1);	/* stop at the message's end: the next one's head is collected whole */
	return 0;
}

static const http_parser_settings rw_settings = { .on_message_complete = rw_message_complete };

/* The header block h (hlen bytes) to out with this connection's placeholders replaced. 0, or -1 when too big. */
static int rw_head_out(struct eg_conn *c, const char *h, size_t hlen, struct evbuffer *out)
{
	static const char pre[] = KD_SECRET_PREFIX;
	const char *eol = memmem(h, hlen, "\r\n", 2);
	size_t done = 0, i = eol ? (size_t)(eol - h) + 2 : hlen, total = hlen;

	while (i < hlen) {
		const char *p = memmem(h + i, hlen - i, pre, sizeof(pre) - 1);
		size_t off;
		int hit = 0;

		if (!p)
			break;
		off = (size_t)(p - h);
		for (size_t k = 0; k < c->s->nsecrets && !hit; k++) {
			const struct eg_secret *x = &c->s->secrets[k];

			if (!(c->secmask & (1u << k)) || off + x->plen > hlen || memcmp(p, x->placeholder, x->plen))
				continue;
			total += x->vlen;
			if (total > EG_REWRITE_MAX)
				return -1;
			evbuffer_add(out, h + done, off - done);
			evbuffer_add(out, x->value, x->vlen);
			done = i = off + x->plen;
			hit = 1;
		}
		if (!hit)
			i = off + 1;
	}
	evbuffer_add(out, h + done, hlen - done);
	return 0;
}

static void tls_fail(struct eg_conn *c, const char *why)
{
	char name[SCHED_HOST_MAX + 16];

	eg_sbx_event(c->s, "egress_refused", "%s: %s", eg_conn_name(c, name, sizeof(name)), why);
	c->s->st.conns_refused++;
	eg_conn_close(c);
}

/* Guest to upstream: whole header blocks, rewritten; bodies as they come. */
static void tls_pump_out(struct eg_conn *c)
{
	struct evbuffer *in = bufferevent_get_input(c->bev[0]);
	struct evbuffer *out = bufferevent_get_output(c->bev[1]);

	for (;;) {
		size_t have = evbuffer_get_length(in), queued = evbuffer_get_length(out), room, n;
		enum http_errno he;

		if (!have)
			return;
		if (queued >= KD_EGRESS_BUF_MAX) {
			bufferevent_disable(c->bev[0], EV_READ);
			c->paused[0] = 1;
			return;
		}
		room = KD_EGRESS_BUF_MAX - queued;
		if (c->rw == RW_RAW) {
			int m = evbuffer_remove_buffer(in, out, room);

			if (m > 0)
				c->s->st.bytes_out += (uint64_t)m;
			continue;
		}
		if (c->rw == RW_HEAD) {
			struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
			const char *h;
			size_t hlen;

			if (end.pos < 0) {
				if (have > KD_EGRESS_HEAD_MAX)
					tls_fail(c, "a request's header block is over 64 KiB");
				return;
			}
			hlen = (size_t)end.pos + 4;
			if (hlen > KD_EGRESS_HEAD_MAX) {
				tls_fail(c, "a request's header block is over 64 KiB");
				return;
			}
			h = (const char *)evbuffer_pullup(in, (ev_ssize_t)hlen);
			c->rw_done = 0;
			n = http_parser_execute(&c->hp, &rw_settings, h, hlen);
			he = HTTP_PARSER_ERRNO(&c->hp);
			if ((he != HPE_OK && he != HPE_PAUSED) || n != hlen) {
				tls_fail(c, "not an HTTP/1.1 request (only HTTP/1.1 is spoken to secret hosts)");
				return;
			}
			if (rw_head_out(c, h, hlen, out) < 0) {
				tls_fail(c, "a request's header block is over 1 MiB with its secrets in");
				return;
			}
			evbuffer_drain(in, hlen);
			c->s->st.bytes_out += hlen;
			if (c->hp.upgrade)
				c->rw = RW_RAW;	/* another protocol from here: nothing more is rewritten */
			else if (c->rw_done)
				http_parser_pause(&c->hp, 0);
			else
				c->rw = RW_BODY;
			continue;
		}
		/* RW_BODY: through the parser only to find where the message ends. */
		{
			struct evbuffer_iovec v;
			size_t len;

			if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
				return;
			len = v.iov_len < room ? v.iov_len : room;
			c->rw_done = 0;
			n = http_parser_execute(&c->hp, &rw_settings, v.iov_base, len);
			he = HTTP_PARSER_ERRNO(&c->hp);
			if (he != HPE_OK && he != HPE_PAUSED) {
				tls_fail(c, "a request's body is not valid HTTP/1.1 framing");
				return;
			}
			evbuffer_remove_buffer(in, out, n);
			c->s->st.bytes_out += n;
			if (c->rw_done) {
				http_parser_pause(&c->hp, 0);
				c->rw = c->hp.upgrade ? RW_RAW : RW_HEAD;
			}
		}
	}
}

/* Upstream to guest: as it is, within the guest's buffer. */
static void tls_copy_in(struct eg_conn *c)
{
	struct evbuffer *in = bufferevent_get_input(c->bev[1]);
	struct evbuffer *out = bufferevent_get_output(c->bev[0]);
	size_t have = evbuffer_get_length(out), room = have < KD_EGRESS_BUF_MAX ? KD_EGRESS_BUF_MAX - have : 0;
	int n = evbuffer_remove_buffer(in, out, room);

	if (n > 0)
		c->s->st.bytes_in += (uint64_t)n;
	if (evbuffer_get_length(in) && c->state != EG_DRAIN) {
		bufferevent_disable(c->bev[1], EV_READ);
		c->paused[1] = 1;
	}
}

static void tls_read(struct bufferevent *bev, void *arg)
{
	struct eg_conn *c = arg;

	if (c->state == EG_DRAIN)
		return;
	if (eg_conn_side(c, bev) == 0)
		tls_pump_out(c);
	else
		tls_copy_in(c);
}

static void tls_write(struct bufferevent *bev, void *arg)
{
	struct eg_conn *c = arg;
	int j = eg_conn_side(c, bev);

	if (c->state == EG_DRAIN || !c->paused[!j])
		return;
	c->paused[!j] = 0;
	bufferevent_enable(c->bev[!j], EV_READ);
	tls_read(c->bev[!j], c);
}

static size_t bev_pending_out(struct bufferevent *bev)
{
	struct bufferevent *u = bufferevent_get_underlying(bev);

	return evbuffer_get_length(bufferevent_get_output(bev)) + (u ? evbuffer_get_length(bufferevent_get_output(u)) : 0);
}

/* After the upstream's end: what it sent still goes to the guest, then both close. */
void eg_tls_drain_tick(struct eg_conn *c)
{
	struct timeval tv = ms_tv(EG_DRAIN_TICK_MS);

	tls_copy_in(c);
	if ((!evbuffer_get_length(bufferevent_get_input(c->bev[1])) && !bev_pending_out(c->bev[0])) ||
	    now_ms() >= c->drain_until || c->eof[0]) {
		eg_conn_close(c);
		return;
	}
	evtimer_add(c->tmo, &tv);
}

static void tls_event(struct bufferevent *bev, short what, void *arg)
{
	struct eg_conn *c = arg;
	int i = eg_conn_side(c, bev);

	c->eof[i] = 1;
	if (i == 0 || !(what & BEV_EVENT_EOF) || c->state == EG_DRAIN) {
		eg_conn_close(c);	/* the guest is done, or an error: nothing more to deliver */
		return;
	}
	c->state = EG_DRAIN;
	c->drain_until = now_ms() + EG_DRAIN_MS;
	bufferevent_disable(c->bev[0], EV_READ);
	bufferevent_disable(c->bev[1], EV_READ);
	eg_tls_drain_tick(c);
}

/* The guest's handshake is done: rewrite one way, copy the other. */
static void tls_guest_event(struct bufferevent *bev, short what, void *arg)
{
	struct eg_conn *c = arg;

	(void)bev;
	if (!(what & BEV_EVENT_CONNECTED)) {
		tls_fail(c, "the guest's TLS handshake failed (does it trust the node CA?)");
		return;
	}
	evtimer_del(c->tmo);
	c->state = EG_SPLICE;
	c->s->st.conns_ok++;
	http_parser_init(&c->hp, HTTP_REQUEST);
	c->hp.data = c;
	c->rw = RW_HEAD;
	for (int i = 0; i < 2; i++) {
		bufferevent_setcb(c->bev[i], tls_read, tls_write, tls_event, c);
		bufferevent_setwatermark(c->bev[i], EV_READ, 0, 0);
		bufferevent_setwatermark(c->bev[i], EV_WRITE, KD_EGRESS_BUF_MAX / 2, 0);
		bufferevent_enable(c->bev[i], EV_READ | EV_WRITE);
	}
	tls_pump_out(c);
}

/* The upstream's handshake: verified, so now the guest's, with the leaf for this name. */
static void tls_up_event(struct bufferevent *bev, short what, void *arg)
{
	struct eg_conn *c = arg;
	struct kd_egress *e = c->s->e;
	struct timeval tv = ms_tv(EG_CONNECT_TOTAL_MS);
	struct kiln_err err = { "" };
	struct bufferevent *g;
	SSL_CTX *ctx;
	SSL *ssl;
	char why[300];

	if (!(what & BEV_EVENT_CONNECTED)) {
		long v = X509_V_OK;
		unsigned long code = bufferevent_get_openssl_error(bev);

		ssl = bufferevent_openssl_get_ssl(bev);
		if (ssl)
			v = SSL_get_verify_result(ssl);
		if (v != X509_V_OK) {
			snprintf(why, sizeof(why), "upstream certificate not trusted: %s", X509_verify_cert_error_string(v));
		} else if (code) {
			char buf[200];

			ERR_error_string_n(code, buf, sizeof(buf));
			snprintf(why, sizeof(why), "upstream TLS handshake failed: %s", buf);
		} else {
			snprintf(why, sizeof(why), "upstream TLS handshake failed: the connection closed");
		}
		while (bufferevent_get_openssl_error(bev))
			;
		/* The guest's TCP is reset: its TLS fails, with no certificate of ours to accept. */
		eg_conn_refuse(c, "%s:%u: %s", c->host, ntohs(c->orig.sin_port), why);
		return;
	}
	evtimer_del(c->tmo);
	ctx = kd_ca_leaf_ctx(e->conf.ca, c->host, &err);
	ssl = ctx ? SSL_new(ctx) : NULL;
	if (ctx)
		SSL_CTX_free(ctx);	/* the SSL holds its own reference */
	if (!ssl) {
		eg_conn_refuse(c, "%s: no leaf certificate: %s", c->host, err.msg[0] ? err.msg : "out of memory");
		return;
	}
	g = bufferevent_openssl_filter_new(e->base, c->bev[0], ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
	if (!g) {
		SSL_free(ssl);
		eg_conn_refuse(c, "%s: out of memory", c->host);
		return;
	}
	c->bev[0] = g;
	c->state = EG_TLS_GUEST;
	bufferevent_openssl_set_allow_dirty_shutdown(g, 1);
	bufferevent_setcb(g, NULL, NULL, tls_guest_event, c);
	bufferevent_setcb(c->bev[1], NULL, NULL, tls_event, c);
	bufferevent_enable(g, EV_READ | EV_WRITE);
	evtimer_add(c->tmo, &tv);
	/* The ClientHello is in the socket's input already: nothing would wake the handshake for it. */
	bufferevent_trigger(bufferevent_get_underlying(g), EV_READ, BEV_TRIG_IGNORE_WATERMARKS);
}

void eg_tls_up_start(struct eg_conn *c)
{
	struct kd_egress *e = c->s->e;
	struct timeval tv = ms_tv(EG_CONNECT_TOTAL_MS);
	struct bufferevent *f;
	SSL *ssl;

	evtimer_del(c->tmo);
	ssl = e->up_ctx ? SSL_new(e->up_ctx) : NULL;
	if (!ssl || !SSL_set_tlsext_host_name(ssl, c->host) ||
	    !X509_VERIFY_PARAM_set1_host(SSL_get0_param(ssl), c->host, 0) ||
	    SSL_set_alpn_protos(ssl, eg_alpn_h11, sizeof(eg_alpn_h11) - 1)) {
		SSL_free(ssl);
		eg_conn_refuse(c, "%s: cannot set up TLS to the upstream", c->host);
		return;
	}
	f = bufferevent_openssl_filter_new(e->base, c->bev[1], ssl, BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
	if (!f) {
		SSL_free(ssl);
		eg_conn_refuse(c, "%s: out of memory", c->host);
		return;
	}
	c->bev[1] = f;
	c->state = EG_TLS_UP;
	bufferevent_openssl_set_allow_dirty_shutdown(f, 1);
	bufferevent_setcb(f, NULL, NULL, tls_up_event, c);
	bufferevent_enable(f, EV_READ | EV_WRITE);
	evtimer_add(c->tmo, &tv);
	/* Nothing is queued to write yet, so nothing would start the handshake: start it. */
	bufferevent_trigger(bufferevent_get_underlying(f), EV_WRITE, BEV_TRIG_IGNORE_WATERMARKS);
}

/* TLS to the real upstreams of terminated connections: verified, by the system's store and --upstream-ca. */
int eg_up_ctx_make(struct kd_egress *e, struct kiln_err *err)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

	if (!ctx)
		return kiln_fail(err, ENOMEM, "egress: cannot make a TLS context");
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	if (SSL_CTX_set_default_verify_paths(ctx) != 1)
		ERR_clear_error();	/* no system store: only upstream_ca, if any, is trusted */
	if (e->conf.upstream_ca[0] && SSL_CTX_load_verify_locations(ctx, e->conf.upstream_ca, NULL) != 1) {
		ERR_clear_error();
		SSL_CTX_free(ctx);
		return kiln_fail(err, EINVAL, "egress: --upstream-ca %s is not a readable PEM file of certificates",
				 e->conf.upstream_ca);
	}
	e->up_ctx = ctx;
	return 0;
}
