/*
 * Where a guest's new connection means to go (kd_sniff.h). OpenSSL reads
 * the ClientHello: a server SSL over a memory BIO holding the guest's bytes
 * stops in its client-hello callback, before it would answer. http-parser
 * reads an HTTP/1.x request up to the end of its headers. Nothing is kept
 * between calls but the one SSL_CTX, made on first use.
 */
#include <arpa/inet.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include <http_parser.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/tls1.h>

#include "kd_sniff.h"

#define HOST_MAX	253	/* a DNS name, as SCHED_HOST_MAX */
#define LABEL_MAX	63
#define HOST_HDR_MAX	(HOST_MAX + 8)	/* "[v6]:port" fits; longer is refused, not cut */

#define WHY_NOT_EITHER	"neither a TLS ClientHello nor an HTTP request"

static void why_set(char *why, size_t whyn, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void why_set(char *why, size_t whyn, const char *fmt, ...)
{
	va_list ap;

	if (!why || whyn == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(why, whyn, fmt, ap);
	va_end(ap);
}

/*
 * sched_host_valid's rule (scheduler/sched_net.h), kept here so the fuzz
 * target links this file alone: labels of 1-63 letters, digits, '-' and
 * '_', at most 253 bytes. s has no trailing dot.
 */
static int host_name_ok(const char *s, size_t len)
{
	size_t i, label = 0;

	if (len == 0 || len > HOST_MAX)
		return 0;
	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '.') {
			if (label == 0)
				return 0;
			label = 0;
		} else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_') {
			if (++label > LABEL_MAX)
				return 0;
		} else {
			return 0;
		}
	}
	return label > 0;
}

/*
 * Put len bytes of name into host (hostn bytes): lower case, one trailing
 * dot dropped, a DNS name or (v6: only) an IP literal. 0, or -1 with why set.
 */
static int host_put(const char *name, size_t len, int v6, char *host, size_t hostn, const char *what, char *why,
		    size_t whyn)
{
	char buf[HOST_MAX + 2];
	unsigned char addr[16];
	size_t i;
	int ok;

	if (!v6 && len > 1 && name[len - 1] == '.')
		len--;
	if (len == 0 || len > HOST_MAX) {
		why_set(why, whyn, "%s is %s", what, len ? "longer than a host name" : "empty");
		return -1;
	}
	for (i = 0; i < len; i++)
		buf[i] = (char)((name[i] >= 'A' && name[i] <= 'Z') ? name[i] - 'A' + 'a' : name[i]);
	buf[len] = '\0';
	if (v6)
		ok = inet_pton(AF_INET6, buf, addr) == 1;
	else
		ok = inet_pton(AF_INET, buf, addr) == 1 || host_name_ok(buf, len);
	if (!ok) {
		why_set(why, whyn, "%s is not a host name", what);
		return -1;
	}
	if (len >= hostn) {
		why_set(why, whyn, "%s does not fit the caller's buffer", what);
		return -1;
	}
	memcpy(host, buf, len + 1);
	return 0;
}

/* ---- TLS -------------------------------------------------------------------------- */

/* What the client-hello callback found, for the one SSL it ran on. */
struct hello {
	int seen;		/* the callback ran */
	int has_name;		/* ... and found a host_name in server_name */
	char name[HOST_MAX + 2];
	size_t len;
};

static SSL_CTX *tls_ctx;
static pthread_once_t tls_once = PTHREAD_ONCE_INIT;

/*
 * RFC 6066 section 3: ServerNameList { uint16 length; { uint8 type;
 * uint16 length; opaque name; }... }. The first host_name (type 0) is the
 * name; a malformed list or one too long for a DNS name gives none.
 */
static void hello_server_name(struct hello *h, const unsigned char *p, size_t n)
{
	size_t list, off = 2;

	if (n < 2)
		return;
	list = (size_t)p[0] << 8 | p[1];
	if (list != n - 2)
		return;
	while (off + 3 <= n) {
		unsigned type = p[off];
		size_t len = (size_t)p[off + 1] << 8 | p[off + 2];

		off += 3;
		if (len > n - off)
			return;
		if (type == TLSEXT_NAMETYPE_host_name) {
			if (len == 0 || len > sizeof(h->name) - 1 || memchr(p + off, '\0', len))
				return;
			memcpy(h->name, p + off, len);
			h->name[len] = '\0';
			h->len = len;
			h->has_name = 1;
			return;
		}
		off += len;
	}
}

/* Runs once OpenSSL has the whole ClientHello; failing stops the handshake there. */
static int hello_cb(SSL *ssl, int *al, void *arg)
{
	struct hello *h = SSL_get_app_data(ssl);
	const unsigned char *ext;
	size_t n;

	(void)arg;
	h->seen = 1;
	if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &ext, &n) == 1)
		hello_server_name(h, ext, n);
	*al = SSL_AD_UNRECOGNIZED_NAME;
	return SSL_CLIENT_HELLO_ERROR;
}

static void tls_init(void)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

	if (!ctx)
		return;
	/* Any version a client may offer: the hello is read, never answered. */
	SSL_CTX_set_min_proto_version(ctx, 0);
	SSL_CTX_set_security_level(ctx, 0);
	SSL_CTX_set_client_hello_cb(ctx, hello_cb, NULL);
	tls_ctx = ctx;
}

static enum kd_sniff sniff_tls(const uint8_t *buf, size_t len, char *host, size_t hostn, char *why, size_t whyn)
{
	struct hello h = { 0 };
	enum kd_sniff res = KD_SNIFF_NONE;
	BIO *rbio = NULL, *wbio = NULL;
	SSL *ssl = NULL;
	int r, e;

	pthread_once(&tls_once, tls_init);
	if (!tls_ctx || len > INT_MAX) {
		why_set(why, whyn, "cannot read TLS (OpenSSL failed to start)");
		return KD_SNIFF_NONE;
	}
	ssl = SSL_new(tls_ctx);
	rbio = BIO_new_mem_buf(buf, (int)len);
	wbio = BIO_new(BIO_s_null());	/* the alert OpenSSL sends on stopping goes nowhere */
	if (!ssl || !rbio || !wbio) {
		why_set(why, whyn, "cannot read TLS (out of memory)");
		goto out;
	}
	/* Out of bytes is "retry", not end of file: the guest may send more. */
	BIO_set_mem_eof_return(rbio, -1);
	SSL_set_bio(ssl, rbio, wbio);
	rbio = wbio = NULL;
	SSL_set_app_data(ssl, &h);
	r = SSL_accept(ssl);
	e = SSL_get_error(ssl, r);
	if (h.seen) {
		if (!h.has_name)
			why_set(why, whyn, "TLS ClientHello without a server name");
		else if (host_put(h.name, h.len, 0, host, hostn, "TLS server name", why, whyn) == 0)
			res = KD_SNIFF_TLS;
	} else if (e == SSL_ERROR_WANT_READ && BIO_pending(SSL_get_rbio(ssl)) == 0) {
		res = KD_SNIFF_MORE;
	} else {
		why_set(why, whyn, "a TLS record but not a ClientHello OpenSSL reads");
	}
out:
	SSL_free(ssl);
	BIO_free(rbio);
	BIO_free(wbio);
	/* SSL_accept empties the thread's error queue on entry, as every handshake does; leave it empty too. */
	ERR_clear_error();
	return res;
}

/* ---- HTTP ------------------------------------------------------------------------- */

/* What http-parser's callbacks gather from one request. */
struct req {
	char field[5];		/* the header name so far, if still a prefix of "host" */
	size_t flen;		/* bytes of the header name so far */
	int in_value;		/* the last callback was a value */
	int in_host;		/* the value being read is Host's */
	int hosts;		/* Host headers seen */
	int too_long;		/* Host's value was longer than HOST_HDR_MAX */
	char value[HOST_HDR_MAX + 1];
	size_t vlen;
	int done;		/* the headers are complete */
};

static int on_field(http_parser *p, const char *at, size_t n)
{
	struct req *q = p->data;
	size_t i;

	if (q->in_value) {
		q->in_value = 0;
		q->flen = 0;
	}
	/* Only whether it is "host" matters: keep the first five bytes. */
	for (i = 0; i < n && q->flen + i < sizeof(q->field); i++)
		q->field[q->flen + i] = at[i];
	q->flen += n;
	return 0;
}

static int on_value(http_parser *p, const char *at, size_t n)
{
	struct req *q = p->data;

	if (!q->in_value) {
		q->in_value = 1;
		q->in_host = q->flen == 4 && strncasecmp(q->field, "host", 4) == 0;
		if (q->in_host)
			q->hosts++;
	}
	if (!q->in_host || q->hosts > 1)
		return 0;
	if (n > HOST_HDR_MAX - q->vlen) {
		q->too_long = 1;
		return 0;
	}
	memcpy(q->value + q->vlen, at, n);
	q->vlen += n;
	return 0;
}

static int on_headers_complete(http_parser *p)
{
	struct req *q = p->data;

	q->done = 1;
	/* Stop here: the body is the server's business. */
	http_parser_pause(p, 1);
	return 0;
}

/* 1-65535 in decimal; 0 for anything else. */
static unsigned port_parse(const char *s, size_t len)
{
	unsigned v = 0;
	size_t i;

	if (len == 0 || len > 5)
		return 0;
	for (i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return 0;
		v = v * 10 + (unsigned)(s[i] - '0');
	}
	return v <= 65535 ? v : 0;
}

/* RFC 7230 section 5.4: Host = uri-host [ ":" port ], uri-host an IP-literal in brackets or a name. */
static enum kd_sniff host_header(const char *v, size_t len, char *host, size_t hostn, uint16_t *port, char *why,
				 size_t whyn)
{
	const char *name = v, *colon = NULL;
	size_t nlen = len;
	unsigned p = 0;
	int v6 = 0;

	while (nlen > 0 && (name[0] == ' ' || name[0] == '\t')) {
		name++;
		nlen--;
	}
	while (nlen > 0 && (name[nlen - 1] == ' ' || name[nlen - 1] == '\t'))
		nlen--;
	if (nlen > 0 && name[0] == '[') {
		const char *close = memchr(name, ']', nlen);

		if (!close) {
			why_set(why, whyn, "Host header is not a host name");
			return KD_SNIFF_NONE;
		}
		if (close + 1 < name + nlen) {
			if (close[1] != ':') {
				why_set(why, whyn, "Host header is not a host name");
				return KD_SNIFF_NONE;
			}
			colon = close + 1;
		}
		v6 = 1;
	} else {
		colon = memchr(name, ':', nlen);
	}
	if (colon) {
		size_t plen = nlen - (size_t)(colon + 1 - name);

		/* An empty port is allowed (RFC 3986 section 3.2.3) and means none. */
		if (plen > 0 && (p = port_parse(colon + 1, plen)) == 0) {
			why_set(why, whyn, "Host header's port is not 1-65535");
			return KD_SNIFF_NONE;
		}
		nlen = (size_t)(colon - name);
	}
	if (v6) {
		name++;
		nlen -= 2;
	}
	if (host_put(name, nlen, v6, host, hostn, "Host header", why, whyn) < 0)
		return KD_SNIFF_NONE;
	if (port)
		*port = (uint16_t)p;
	return KD_SNIFF_HTTP;
}

static enum kd_sniff sniff_http(const uint8_t *buf, size_t len, char *host, size_t hostn, uint16_t *port, char *why,
				size_t whyn)
{
	static const http_parser_settings settings = {
		.on_header_field = on_field,
		.on_header_value = on_value,
		.on_headers_complete = on_headers_complete,
	};
	struct req q;
	http_parser p;
	enum http_errno e;

	memset(&q, 0, sizeof(q));
	http_parser_init(&p, HTTP_REQUEST);
	p.data = &q;
	http_parser_execute(&p, &settings, (const char *)buf, len);
	e = HTTP_PARSER_ERRNO(&p);
	if (e != HPE_OK && e != HPE_PAUSED) {
		why_set(why, whyn, WHY_NOT_EITHER);
		return KD_SNIFF_NONE;
	}
	/* The method is known once the parser is past it; CONNECT names its target in the request line. */
	if (p.method == HTTP_CONNECT && (q.done || memchr(buf, ' ', len))) {
		why_set(why, whyn, "CONNECT is not supported; name the host in allow_net and connect directly");
		return KD_SNIFF_NONE;
	}
	if (!q.done)
		return KD_SNIFF_MORE;
	if (p.http_major != 1) {
		why_set(why, whyn, "not an HTTP/1.x request");
		return KD_SNIFF_NONE;
	}
	if (q.hosts == 0) {
		why_set(why, whyn, "HTTP request without a Host header");
		return KD_SNIFF_NONE;
	}
	if (q.hosts > 1) {
		why_set(why, whyn, "HTTP request with more than one Host header");
		return KD_SNIFF_NONE;
	}
	if (q.too_long) {
		why_set(why, whyn, "Host header is longer than a host name");
		return KD_SNIFF_NONE;
	}
	return host_header(q.value, q.vlen, host, hostn, port, why, whyn);
}

enum kd_sniff kd_sniff(const uint8_t *buf, size_t len, char *host, size_t hostn, uint16_t *port, char *why,
		       size_t whyn)
{
	if (port)
		*port = 0;
	if (host && hostn > 0)
		host[0] = '\0';
	if (why && whyn > 0)
		why[0] = '\0';
	if (!host || hostn == 0) {
		why_set(why, whyn, "no room for the host name");
		return KD_SNIFF_NONE;
	}
	if (len == 0)
		return KD_SNIFF_MORE;
	/* A TLS record of type handshake (RFC 8446 section 5.1); no HTTP method starts so. */
	if (buf[0] == 0x16)
		return sniff_tls(buf, len, host, hostn, why, whyn);
	return sniff_http(buf, len, host, hostn, port, why, whyn);
}

/*
 * The question of a query: a name of labels (no compression in a query),
 * its type and class. Returns its length, or 0 if malformed; name gets the
 * dotted text, unchecked (sched_allow_name refuses what is not a host name).
 */
size_t kd_dns_question(const uint8_t *p, size_t len, char *name, size_t namen, uint16_t *type, uint16_t *cls)
{
	size_t i = KD_DNS_HDR, o = 0;

	for (;;) {
		size_t l;

		if (i >= len)
			return 0;
		l = p[i++];
		if (!l)
			break;
		if (l > 63 || i + l > len || o + l + 1 >= namen)
			return 0;
		for (size_t k = 0; k < l; k++) {
			if (p[i + k] == '.' || !p[i + k])
				return 0;
			name[o++] = (char)p[i + k];
		}
		name[o++] = '.';
		i += l;
	}
	if (!o || o - 1 > 253 || i + 4 > len)
		return 0;	/* none, a name over DNS's 253 bytes, or no type and class */
	name[o - 1] = '\0';
	*type = (uint16_t)(p[i] << 8 | p[i + 1]);
	*cls = (uint16_t)(p[i + 2] << 8 | p[i + 3]);
	return i + 4 - KD_DNS_HDR;
}
