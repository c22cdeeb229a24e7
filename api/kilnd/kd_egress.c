/*
 * kilnd's egress (kd_egress.h): per sandbox, a DNS resolver and a TCP proxy
 * on one libevent loop of their own. The guest's queries are parsed here
 * (see the DNS section for why not by evdns's server); upstream lookups,
 * for the resolver and for the proxy's names, go through one evdns_base.
 *
 * Every async step (an upstream DNS lookup, a getaddrinfo) carries a small
 * ticket that its callback always frees; whoever gives up on it (a removed
 * sandbox, a closed connection) only clears the ticket's back pointer and
 * cancels, because libevent still runs the callback, later, with a cancel
 * error. e->tickets counts them so stop can wait for the last one.
 *
 * A connection goes accept -> (sniff) -> resolve -> connect -> splice. For
 * a TLS connection to one of the sandbox's secret hosts, connect is
 * followed by two handshakes (upstream first, verified; then the guest's,
 * with the ClientHello already read fed in) and the splice becomes a
 * request rewriter one way and a copy the other (the "terminated
 * connections" section).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <event2/bufferevent_ssl.h>
#include <event2/util.h>

#include <http_parser.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "kd_ca.h"

#include "kd_egress.h"
#include "kd_sniff.h"
#include "sched_net.h"

#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST		80	/* linux/netfilter_ipv4.h, which clashes with netinet/in.h */
#endif

#define EG_ID_MAX		128	/* bytes of a sandbox id, with the NUL */
#define EG_DNS_INFLIGHT_MAX	64	/* guest queries waiting on upstream, per sandbox */
#define EG_DNS_TTL_MAX		60	/* seconds a guest may cache an answer */
#define EG_CONNECT_MS		5000	/* one address */
#define EG_CONNECT_TOTAL_MS	10000	/* all of a name's addresses, and its lookup */
#define EG_ADDRS_MAX		16	/* addresses tried for one name */
#define EG_SELF_MAX		64	/* host addresses remembered */
#define EG_SELF_REFRESH_S	5
#define EG_ACCEPT_PAUSE_MS	1000	/* after EMFILE and the like */
#define EG_DETAIL_MAX		400
#define EG_IO_CHUNK		(64u << 10)	/* one read or write while splicing (libevent's default: 16 KiB) */

struct eg_addr {
	int family;
	uint8_t a[16];
};

enum eg_op { EG_ADD, EG_REMOVE, EG_STATS, EG_STOP };

struct eg_cmd {
	struct eg_cmd *next;
	enum eg_op op;
	const char *id;
	int tcp_fd, udp_fd;
	char *const *allow;
	size_t nallow;
	const struct kd_secret *secrets;
	size_t nsecrets;
	struct kd_egress_stats *stats;
	struct kiln_err *err;
	int ret, done;
	int detached;			/* nobody waits: the loop frees it */
	char idbuf[EG_ID_MAX];
};

struct kd_egress {
	struct kd_egress_conf conf;
	struct event_base *base;
	struct evdns_base *dns;
	struct event *cmd_ev;
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct eg_cmd *cmds, **cmds_tail;
	struct eg_sbx *sbxs;
	struct eg_addr self[EG_SELF_MAX];
	size_t nself;
	time_t self_at;
	unsigned long tickets;		/* async callbacks still to run */
	SSL_CTX *up_ctx;		/* TLS to upstreams of terminated connections (verifying) */
};

/* A secret, copied; value is cleansed when the sandbox goes. */
struct eg_secret {
	char placeholder[64];
	size_t plen;
	char *value;
	size_t vlen;
	struct sched_allow *hosts;
	size_t nhosts;
};

struct eg_sbx {
	struct eg_sbx *next;
	struct kd_egress *e;
	char id[EG_ID_MAX];
	struct sched_allow *allow;	/* allow_net, and the secrets' hosts after it */
	size_t nallow;
	struct eg_secret *secrets;
	size_t nsecrets;
	struct evconnlistener *lis;
	struct event *lis_pause;
	struct event *dns_ev;
	struct eg_conn *conns;
	unsigned nconns;
	struct eg_dnsq *dnsqs;
	unsigned ndnsq;
	struct kd_egress_stats st;
	time_t ev_window;
	unsigned ev_count;
	uint64_t ev_suppressed;
};

/* One guest DNS query waiting on its upstream lookup; a ticket. */
struct eg_dnsq {
	struct eg_dnsq *prev, *next;
	struct kd_egress *e;
	struct eg_sbx *s;		/* NULL once the sandbox dropped it */
	struct evdns_request *r;
	struct sockaddr_storage from;
	socklen_t fromlen;
	uint16_t id, flags, qtype;
	size_t qlen;
	uint8_t question[SCHED_HOST_MAX + 8];	/* as asked, echoed in the answer */
};

struct eg_gai {				/* ticket */
	struct kd_egress *e;
	struct eg_conn *c;		/* NULL once the connection is closed */
	struct evdns_getaddrinfo_request *req;
	int calling, done, err;
	struct evutil_addrinfo *res;
};

enum eg_state { EG_SNIFF, EG_RESOLVE, EG_CONNECT, EG_SPLICE, EG_TLS_UP, EG_TLS_GUEST, EG_DRAIN };
enum eg_rw { RW_HEAD, RW_BODY, RW_RAW };

/* Index 0 is the guest's side, 1 the upstream's. */
struct eg_conn {
	struct eg_conn *prev, *next;
	struct eg_sbx *s;
	enum eg_state state;
	struct bufferevent *bev[2];
	struct event *tmo;
	struct sockaddr_in orig;
	char dst[INET_ADDRSTRLEN + 8];	/* the original destination, "ip:port" */
	char host[SCHED_HOST_MAX + 1];	/* the sniffed name, "" when going by address */
	struct eg_gai *gai;
	struct sockaddr_storage addrs[EG_ADDRS_MAX];
	socklen_t addrlen[EG_ADDRS_MAX];
	unsigned naddrs, next_addr;
	long long deadline_ms;
	int last_err;
	int eof[2], shut[2], paused[2];
	int tls;			/* the sniffed bytes were a TLS ClientHello */
	int by_addr;			/* allow_net lets the original address through as it is */
	uint32_t secmask;		/* the secrets whose hosts this is: terminate (bit k: s->secrets[k]) */
	/* terminated connections: the guest's requests, one at a time */
	http_parser hp;
	enum eg_rw rw;
	int rw_done;
	long long drain_until;
};

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct timeval ms_tv(long long ms)
{
	struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };

	return tv;
}

/* --- events and counters ------------------------------------------------ */

static void printable(char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
			*s = '?';
}

/* Report a refusal, at most KD_EGRESS_EVENTS_PER_MIN a minute per sandbox. */
static void sbx_event(struct eg_sbx *s, const char *kind, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void sbx_event(struct eg_sbx *s, const char *kind, const char *fmt, ...)
{
	char detail[EG_DETAIL_MAX];
	time_t now = (time_t)(now_ms() / 1000);
	size_t n;
	va_list ap;

	if (!s->e->conf.event)
		return;
	if (now - s->ev_window >= 60) {
		s->ev_window = now;
		s->ev_count = 0;
	}
	if (s->ev_count >= KD_EGRESS_EVENTS_PER_MIN) {
		s->ev_suppressed++;
		return;
	}
	s->ev_count++;
	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	n = strlen(detail);
	if (s->ev_suppressed && n < sizeof(detail))
		snprintf(detail + n, sizeof(detail) - n, " (%llu more suppressed before this)",
			 (unsigned long long)s->ev_suppressed);
	s->ev_suppressed = 0;
	printable(detail);
	s->e->conf.event(s->e->conf.arg, s->id, kind, detail);
}

/* --- the host's own addresses ------------------------------------------- */

static void self_refresh(struct kd_egress *e, int force)
{
	time_t now = (time_t)(now_ms() / 1000);
	struct ifaddrs *ifa, *i;

	if (!force && e->self_at && now - e->self_at < EG_SELF_REFRESH_S)
		return;
	if (getifaddrs(&ifa) < 0)
		return;		/* keep the last list */
	e->nself = 0;
	e->self_at = now;
	for (i = ifa; i && e->nself < EG_SELF_MAX; i = i->ifa_next) {
		struct eg_addr *a = &e->self[e->nself];

		if (!i->ifa_addr)
			continue;
		if (i->ifa_addr->sa_family == AF_INET) {
			a->family = AF_INET;
			memcpy(a->a, &((struct sockaddr_in *)i->ifa_addr)->sin_addr, 4);
		} else if (i->ifa_addr->sa_family == AF_INET6) {
			a->family = AF_INET6;
			memcpy(a->a, &((struct sockaddr_in6 *)i->ifa_addr)->sin6_addr, 16);
		} else {
			continue;
		}
		e->nself++;
	}
	freeifaddrs(ifa);
}

static int self_is(const struct kd_egress *e, int family, const void *addr)
{
	size_t len = family == AF_INET ? 4 : 16;

	for (size_t i = 0; i < e->nself; i++)
		if (e->self[i].family == family && !memcmp(e->self[i].a, addr, len))
			return 1;
	return 0;
}

/* Special or the host's own: no sandbox goes there. */
static int addr_forbidden(const struct kd_egress *e, int family, const void *addr)
{
	return sched_addr_special(family, addr) || self_is(e, family, addr);
}

/* --- tickets ------------------------------------------------------------ */

static void conn_resolved(struct eg_conn *c, int err, struct evutil_addrinfo *res);

static void gai_done(int err, struct evutil_addrinfo *res, void *arg)
{
	struct eg_gai *t = arg;
	struct eg_conn *c;

	if (t->calling) {	/* answered inside evdns_getaddrinfo() */
		t->done = 1;
		t->err = err;
		t->res = res;
		return;
	}
	c = t->c;
	t->e->tickets--;
	free(t);
	if (!c) {
		if (res)
			evutil_freeaddrinfo(res);
		return;
	}
	c->gai = NULL;
	conn_resolved(c, err, res);
}

/* --- connections -------------------------------------------------------- */

static void conn_close(struct eg_conn *c)
{
	struct eg_sbx *s = c->s;

	if (c->gai) {
		c->gai->c = NULL;
		evdns_getaddrinfo_cancel(c->gai->req);
	}
	if (c->tmo)
		event_free(c->tmo);
	for (int i = 0; i < 2; i++)
		if (c->bev[i])
			bufferevent_free(c->bev[i]);
	if (c->prev)
		c->prev->next = c->next;
	else
		s->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	s->nconns--;
	free(c);
}

/* Reset, not FIN, so the guest's client fails at once. */
static void rst_close(evutil_socket_t fd)
{
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };

	setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	evutil_closesocket(fd);
}

static void conn_refuse(struct eg_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void conn_refuse(struct eg_conn *c, const char *fmt, ...)
{
	char detail[EG_DETAIL_MAX];
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	if (c->bev[0])
		setsockopt(bufferevent_getfd(c->bev[0]), SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	c->s->st.conns_refused++;
	sbx_event(c->s, "egress_refused", "%s", detail);
	conn_close(c);
}

/* What a message calls the connection: the name it asked for, else the address. */
static const char *conn_name(const struct eg_conn *c, char *buf, size_t n)
{
	if (c->host[0])
		snprintf(buf, n, "%s:%u", c->host, ntohs(c->orig.sin_port));
	else
		snprintf(buf, n, "%s", c->dst);
	return buf;
}

static int conn_side(const struct eg_conn *c, const struct bufferevent *bev)
{
	return bev == c->bev[1];
}

static void splice_check_done(struct eg_conn *c)
{
	if (c->eof[0] && c->eof[1] && c->shut[0] && c->shut[1])
		conn_close(c);
}

static void splice_read(struct bufferevent *bev, void *arg)
{
	struct eg_conn *c = arg;
	int i = conn_side(c, bev);
	struct evbuffer *in = bufferevent_get_input(bev);
	struct evbuffer *out = bufferevent_get_output(c->bev[!i]);
	size_t have = evbuffer_get_length(out), room = have < KD_EGRESS_BUF_MAX ? KD_EGRESS_BUF_MAX - have : 0;
	int n = evbuffer_remove_buffer(in, out, room);

	if (n > 0) {
		if (i == 0)
			c->s->st.bytes_out += (uint64_t)n;
		else
			c->s->st.bytes_in += (uint64_t)n;
	}
	/*
	 * Back-pressure: the other side's output is full, so stop reading this
	 * side until it drains (splice_write); what is left in our input (one
	 * read at most) moves then.
	 */
	if (evbuffer_get_length(in) || evbuffer_get_length(out) >= KD_EGRESS_BUF_MAX) {
		bufferevent_disable(bev, EV_READ);
		c->paused[i] = 1;
	}
}

/* bev's output fell to its low watermark (KD_EGRESS_BUF_MAX / 2) or below. */
static void splice_write(struct bufferevent *bev, void *arg)
{
	struct eg_conn *c = arg;
	int j = conn_side(c, bev);

	if (c->paused[!j]) {
		c->paused[!j] = 0;
		splice_read(c->bev[!j], c);
		if (!c->paused[!j] && !c->eof[!j])
			bufferevent_enable(c->bev[!j], EV_READ);
	}
	if (!evbuffer_get_length(bufferevent_get_output(bev)) && c->eof[!j] && !c->shut[j] &&
	    !evbuffer_get_length(bufferevent_get_input(c->bev[!j]))) {
		shutdown(bufferevent_getfd(bev), SHUT_WR);
		c->shut[j] = 1;
		splice_check_done(c);
	}
}

static void splice_event(struct bufferevent *bev, short what, void *arg)
{
	struct eg_conn *c = arg;
	int i = conn_side(c, bev);
	struct bufferevent *to = c->bev[!i];

	if (!(what & BEV_EVENT_EOF)) {	/* an error or a reset: drop both sides */
		conn_close(c);
		return;
	}
	c->eof[i] = 1;
	bufferevent_disable(bev, EV_READ);
	/* Half-close: pass the FIN on once what is queued for the other side is out. */
	if (!evbuffer_get_length(bufferevent_get_output(to)) && !evbuffer_get_length(bufferevent_get_input(bev)) &&
	    !c->shut[!i]) {
		shutdown(bufferevent_getfd(to), SHUT_WR);
		c->shut[!i] = 1;
	}
	splice_check_done(c);
}

static void conn_splice(struct eg_conn *c)
{
	struct evbuffer *sniffed = bufferevent_get_input(c->bev[0]);

	c->state = EG_SPLICE;
	evtimer_del(c->tmo);
	/* What was read to learn the name goes first. */
	c->s->st.bytes_out += evbuffer_get_length(sniffed);
	evbuffer_add_buffer(bufferevent_get_output(c->bev[1]), sniffed);
	for (int i = 0; i < 2; i++) {
		bufferevent_setcb(c->bev[i], splice_read, splice_write, splice_event, c);
		bufferevent_setwatermark(c->bev[i], EV_READ, 0, 0);
		bufferevent_setwatermark(c->bev[i], EV_WRITE, KD_EGRESS_BUF_MAX / 2, 0);
		bufferevent_set_max_single_read(c->bev[i], EG_IO_CHUNK);
		bufferevent_set_max_single_write(c->bev[i], EG_IO_CHUNK);
		bufferevent_enable(c->bev[i], EV_READ | EV_WRITE);
	}
}

static void tls_up_start(struct eg_conn *c);

/* Both ends are open: splice them, or terminate TLS first for a secret host. */
static void conn_upstream_ready(struct eg_conn *c)
{
	if (c->secmask) {
		tls_up_start(c);
		return;
	}
	c->s->st.conns_ok++;
	conn_splice(c);
}

/* --- terminated connections (secrets) ------------------------------------ */

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

	sbx_event(c->s, "egress_refused", "%s: %s", conn_name(c, name, sizeof(name)), why);
	c->s->st.conns_refused++;
	conn_close(c);
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
	if (conn_side(c, bev) == 0)
		tls_pump_out(c);
	else
		tls_copy_in(c);
}

static void tls_write(struct bufferevent *bev, void *arg)
{
	struct eg_conn *c = arg;
	int j = conn_side(c, bev);

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
static void tls_drain_tick(struct eg_conn *c)
{
	struct timeval tv = ms_tv(EG_DRAIN_TICK_MS);

	tls_copy_in(c);
	if ((!evbuffer_get_length(bufferevent_get_input(c->bev[1])) && !bev_pending_out(c->bev[0])) ||
	    now_ms() >= c->drain_until || c->eof[0]) {
		conn_close(c);
		return;
	}
	evtimer_add(c->tmo, &tv);
}

static void tls_event(struct bufferevent *bev, short what, void *arg)
{
	struct eg_conn *c = arg;
	int i = conn_side(c, bev);

	c->eof[i] = 1;
	if (i == 0 || !(what & BEV_EVENT_EOF) || c->state == EG_DRAIN) {
		conn_close(c);	/* the guest is done, or an error: nothing more to deliver */
		return;
	}
	c->state = EG_DRAIN;
	c->drain_until = now_ms() + EG_DRAIN_MS;
	bufferevent_disable(c->bev[0], EV_READ);
	bufferevent_disable(c->bev[1], EV_READ);
	tls_drain_tick(c);
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
		conn_refuse(c, "%s:%u: %s", c->host, ntohs(c->orig.sin_port), why);
		return;
	}
	evtimer_del(c->tmo);
	ctx = kd_ca_leaf_ctx(e->conf.ca, c->host, &err);
	ssl = ctx ? SSL_new(ctx) : NULL;
	if (ctx)
		SSL_CTX_free(ctx);	/* the SSL holds its own reference */
	if (!ssl) {
		conn_refuse(c, "%s: no leaf certificate: %s", c->host, err.msg[0] ? err.msg : "out of memory");
		return;
	}
	g = bufferevent_openssl_filter_new(e->base, c->bev[0], ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
	if (!g) {
		SSL_free(ssl);
		conn_refuse(c, "%s: out of memory", c->host);
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

static void tls_up_start(struct eg_conn *c)
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
		conn_refuse(c, "%s: cannot set up TLS to the upstream", c->host);
		return;
	}
	f = bufferevent_openssl_filter_new(e->base, c->bev[1], ssl, BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
	if (!f) {
		SSL_free(ssl);
		conn_refuse(c, "%s: out of memory", c->host);
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

static void conn_connect_next(struct eg_conn *c);

static void connect_event(struct bufferevent *bev, short what, void *arg)
{
	struct eg_conn *c = arg;

	(void)bev;
	if (what & BEV_EVENT_CONNECTED) {
		conn_upstream_ready(c);
		return;
	}
	c->last_err = EVUTIL_SOCKET_ERROR();
	if (!c->last_err)
		c->last_err = ECONNREFUSED;
	bufferevent_free(c->bev[1]);
	c->bev[1] = NULL;
	evtimer_del(c->tmo);
	conn_connect_next(c);
}

/* Try the next address, with EG_CONNECT_MS for it and the deadline for all. */
static void conn_connect_next(struct eg_conn *c)
{
	struct event_base *base = c->s->e->base;
	char name[SCHED_HOST_MAX + 16];

	while (c->next_addr < c->naddrs) {
		long long left = c->deadline_ms - now_ms();
		unsigned k = c->next_addr++;
		struct bufferevent *up;
		struct timeval tv;
		int fd;

		if (left <= 0) {
			c->last_err = ETIMEDOUT;
			break;
		}
		/* Our own socket: libevent's would not be close-on-exec, and kilnd spawns VMMs. */
		fd = socket(c->addrs[k].ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			c->last_err = errno;
			break;
		}
		up = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
		if (!up) {
			close(fd);
			c->last_err = ENOMEM;
			break;
		}
		bufferevent_setcb(up, NULL, NULL, connect_event, c);
		errno = 0;
		if (bufferevent_socket_connect(up, (struct sockaddr *)&c->addrs[k], (int)c->addrlen[k]) < 0) {
			c->last_err = errno ? errno : ECONNREFUSED;
			bufferevent_free(up);
			continue;
		}
		c->bev[1] = up;
		tv = ms_tv(left < EG_CONNECT_MS ? left : EG_CONNECT_MS);
		evtimer_add(c->tmo, &tv);
		return;
	}
	conn_refuse(c, "%s: connect: %s", conn_name(c, name, sizeof(name)),
		    strerror(c->last_err ? c->last_err : EHOSTUNREACH));
}

static void conn_connect_start(struct eg_conn *c)
{
	c->state = EG_CONNECT;
	c->deadline_ms = now_ms() + EG_CONNECT_TOTAL_MS;
	conn_connect_next(c);
}

static void conn_add_addr(struct eg_conn *c, const struct sockaddr *sa)
{
	struct sockaddr_storage *ss;

	if (c->naddrs >= EG_ADDRS_MAX)
		return;
	ss = &c->addrs[c->naddrs];
	if (sa->sa_family == AF_INET) {
		memcpy(ss, sa, sizeof(struct sockaddr_in));
		((struct sockaddr_in *)ss)->sin_port = c->orig.sin_port;
		c->addrlen[c->naddrs++] = sizeof(struct sockaddr_in);
	} else if (sa->sa_family == AF_INET6) {
		memcpy(ss, sa, sizeof(struct sockaddr_in6));
		((struct sockaddr_in6 *)ss)->sin6_port = c->orig.sin_port;
		c->addrlen[c->naddrs++] = sizeof(struct sockaddr_in6);
	}
}

/* Our own lookup's answer: the guest's idea of the address counts for nothing. */
static void conn_resolved(struct eg_conn *c, int err, struct evutil_addrinfo *res)
{
	struct kd_egress *e = c->s->e;
	unsigned forbidden = 0;

	if (err) {
		if (res)
			evutil_freeaddrinfo(res);
		conn_refuse(c, "%s: no address (%s)", c->host, evutil_gai_strerror(err));
		return;
	}
	self_refresh(e, 0);
	/* IPv4 first: the host is likelier to route it. */
	for (int fam = 0; fam < 2; fam++)
		for (struct evutil_addrinfo *ai = res; ai; ai = ai->ai_next) {
			const void *a;

			if (ai->ai_family != (fam ? AF_INET6 : AF_INET))
				continue;
			if (ai->ai_family == AF_INET)
				a = &((struct sockaddr_in *)ai->ai_addr)->sin_addr;
			else
				a = &((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
			if (addr_forbidden(e, ai->ai_family, a)) {
				forbidden++;
				continue;
			}
			conn_add_addr(c, ai->ai_addr);
		}
	if (res)
		evutil_freeaddrinfo(res);
	if (!c->naddrs) {
		if (forbidden)
			conn_refuse(c, "%s: resolves only to special addresses", c->host);
		else
			conn_refuse(c, "%s: no address", c->host);
		return;
	}
	conn_connect_start(c);
}

static void conn_resolve(struct eg_conn *c)
{
	struct kd_egress *e = c->s->e;
	struct evutil_addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
					 .ai_protocol = IPPROTO_TCP };
	struct evdns_getaddrinfo_request *req;
	struct eg_gai *t = calloc(1, sizeof(*t));
	struct timeval tv = ms_tv(EG_CONNECT_TOTAL_MS);
	int err;
	struct evutil_addrinfo *res;

	if (!t) {
		conn_refuse(c, "%s: out of memory", c->host);
		return;
	}
	t->e = e;
	t->c = c;
	t->calling = 1;
	e->tickets++;
	req = evdns_getaddrinfo(e->dns, c->host, NULL, &hints, gai_done, t);
	t->calling = 0;
	if (t->done) {
		e->tickets--;
		err = t->err;
		res = t->res;
		free(t);
		conn_resolved(c, err, res);
		return;
	}
	t->req = req;
	c->gai = t;
	c->state = EG_RESOLVE;
	evtimer_add(c->tmo, &tv);
}

/* The name (or IP literal) the guest's first bytes gave: allowed? Then resolve it. */
static void conn_named(struct eg_conn *c)
{
	struct eg_sbx *s = c->s;
	uint16_t port = ntohs(c->orig.sin_port);
	union {
		struct sockaddr_in v4;
		struct sockaddr_in6 v6;
	} lit;

	memset(&lit, 0, sizeof(lit));
	if (inet_pton(AF_INET, c->host, &lit.v4.sin_addr) == 1 ||
	    inet_pton(AF_INET6, c->host, &lit.v6.sin6_addr) == 1) {
		int fam = strchr(c->host, ':') ? AF_INET6 : AF_INET;
		const void *a = fam == AF_INET ? (const void *)&lit.v4.sin_addr : (const void *)&lit.v6.sin6_addr;

		if (!sched_allow_addr(s->allow, s->nallow, fam, a, port)) {
			conn_refuse(c, "%s:%u: not in allow_net", c->host, port);
			return;
		}
		if (addr_forbidden(s->e, fam, a)) {
			conn_refuse(c, "%s:%u: special address (private, loopback, link-local, ...)", c->host, port);
			return;
		}
		if (fam == AF_INET)
			lit.v4.sin_family = AF_INET;
		else
			lit.v6.sin6_family = AF_INET6;
		conn_add_addr(c, (struct sockaddr *)&lit);
		conn_connect_start(c);
		return;
	}
	if (c->tls)
		for (size_t k = 0; k < s->nsecrets; k++)
			if (sched_allow_name(s->secrets[k].hosts, s->secrets[k].nhosts, c->host, port))
				c->secmask |= 1u << k;
	if (c->by_addr && !c->secmask) {
		/* Sniffed only to spot secret hosts: otherwise it goes where the guest dialled. */
		conn_add_addr(c, (struct sockaddr *)&c->orig);
		conn_connect_start(c);
		return;
	}
	if (!sched_allow_name(s->allow, s->nallow, c->host, port)) {
		conn_refuse(c, "%s:%u: not in allow_net", c->host, port);
		return;
	}
	conn_resolve(c);
}

static void sniff_read(struct bufferevent *bev, void *arg)
{
	struct eg_conn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	size_t len = evbuffer_get_length(in);
	const uint8_t *p = evbuffer_pullup(in, (ev_ssize_t)len);
	char why[128] = "";
	uint16_t hport = 0;

	switch (kd_sniff(p, len, c->host, sizeof(c->host), &hport, why, sizeof(why))) {
	case KD_SNIFF_MORE:
		c->host[0] = '\0';
		if (len >= KD_EGRESS_SNIFF_MAX && c->by_addr)
			break;
		if (len >= KD_EGRESS_SNIFF_MAX)
			conn_refuse(c, "%s: no server name in the first %u bytes", c->dst, KD_EGRESS_SNIFF_MAX);
		return;
	case KD_SNIFF_NONE:
		c->host[0] = '\0';
		if (c->by_addr)
			break;
		conn_refuse(c, "%s: %s", c->dst, why[0] ? why : "neither TLS nor HTTP");
		return;
	case KD_SNIFF_TLS:
		c->tls = 1;
		break;
	case KD_SNIFF_HTTP:
		break;
	}
	if (c->by_addr && (!c->tls || !c->host[0])) {
		bufferevent_disable(bev, EV_READ);
		evtimer_del(c->tmo);
		conn_add_addr(c, (struct sockaddr *)&c->orig);
		conn_connect_start(c);
		return;
	}
	/* The Host header's port is ignored: the packet's port is what the guest asked for. */
	bufferevent_disable(bev, EV_READ);
	evtimer_del(c->tmo);
	conn_named(c);
}

static void sniff_event(struct bufferevent *bev, short what, void *arg)
{
	(void)bev;
	(void)what;
	conn_close(arg);	/* gone before it said where to */
}

static void tls_drain_tick(struct eg_conn *c);

static void conn_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct eg_conn *c = arg;

	(void)fd;
	(void)what;
	switch (c->state) {
	case EG_SNIFF:
		if (c->by_addr) {	/* a server-first protocol: it goes by address after all */
			bufferevent_disable(c->bev[0], EV_READ);
			conn_add_addr(c, (struct sockaddr *)&c->orig);
			conn_connect_start(c);
			break;
		}
		conn_refuse(c, "%s: no server name within %d s", c->dst, KD_EGRESS_SNIFF_MS / 1000);
		break;
	case EG_TLS_UP:
	case EG_TLS_GUEST:
		conn_refuse(c, "%s: TLS handshake timed out", c->host);
		break;
	case EG_DRAIN:
		tls_drain_tick(c);
		break;
	case EG_RESOLVE:
		conn_refuse(c, "%s: no address (lookup timed out)", c->host);
		break;
	case EG_CONNECT:
		bufferevent_free(c->bev[1]);
		c->bev[1] = NULL;
		c->last_err = ETIMEDOUT;
		conn_connect_next(c);
		break;
	case EG_SPLICE:
		conn_close(c);	/* not armed while splicing */
		break;
	}
}

/*
 * Could a connection to this port be TLS to one of the sandbox's secret
 * hosts? Their explicit ports, or 443 for hosts without one.
 */
static int secret_port(const struct eg_sbx *s, uint16_t port)
{
	for (size_t k = 0; k < s->nsecrets; k++)
		for (size_t i = 0; i < s->secrets[k].nhosts; i++) {
			uint16_t p = s->secrets[k].hosts[i].port;

			if (p ? p == port : port == 443)
				return 1;
		}
	return 0;
}

static void conn_accept(struct evconnlistener *lis, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
	struct eg_sbx *s = arg;
	struct kd_egress *e = s->e;
	socklen_t olen = sizeof(struct sockaddr_in);
	struct eg_conn *c;
	uint16_t port;
	struct timeval tv = ms_tv(KD_EGRESS_SNIFF_MS);

	(void)lis;
	(void)sa;
	(void)salen;
	if (s->nconns >= KD_EGRESS_CONNS_MAX) {
		rst_close(fd);
		s->st.conns_refused++;
		sbx_event(s, "egress_refused", "more than %u connections open", KD_EGRESS_CONNS_MAX);
		return;
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		rst_close(fd);
		s->st.conns_refused++;
		return;
	}
	c->s = s;
	c->bev[0] = bufferevent_socket_new(e->base, fd, BEV_OPT_CLOSE_ON_FREE);
	c->tmo = evtimer_new(e->base, conn_timeout, c);
	c->next = s->conns;
	if (s->conns)
		s->conns->prev = c;
	s->conns = c;
	s->nconns++;
	if (!c->bev[0] || !c->tmo) {
		if (!c->bev[0])
			rst_close(fd);
		conn_refuse(c, "out of memory");
		return;
	}
	/* The redirect happened in the sandbox's namespace, where fd lives. */
	if (getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &c->orig, &olen) < 0 || c->orig.sin_family != AF_INET) {
		snprintf(c->dst, sizeof(c->dst), "?");
		conn_refuse(c, "no original destination (%s)", strerror(errno));
		return;
	}
	port = ntohs(c->orig.sin_port);
	inet_ntop(AF_INET, &c->orig.sin_addr, c->dst, INET_ADDRSTRLEN);
	snprintf(c->dst + strlen(c->dst), sizeof(c->dst) - strlen(c->dst), ":%u", port);
	self_refresh(e, 0);
	if (sched_addr_special(AF_INET, &c->orig.sin_addr)) {
		conn_refuse(c, "%s: special address (private, loopback, link-local, ...)", c->dst);
		return;
	}
	if (self_is(e, AF_INET, &c->orig.sin_addr)) {
		conn_refuse(c, "%s: the host's own address", c->dst);
		return;
	}
	if (sched_allow_addr(s->allow, s->nallow, AF_INET, &c->orig.sin_addr, port)) {
		/*
		 * Allowed by address: nothing to read first (SSH and such talk
		 * server-first), unless it may be TLS to a secret host.
		 */
		if (!secret_port(s, port)) {
			conn_add_addr(c, (struct sockaddr *)&c->orig);
			conn_connect_start(c);
			return;
		}
		c->by_addr = 1;
	}
	c->state = EG_SNIFF;
	bufferevent_setcb(c->bev[0], sniff_read, NULL, sniff_event, c);
	bufferevent_setwatermark(c->bev[0], EV_READ, 0, KD_EGRESS_SNIFF_MAX);
	bufferevent_enable(c->bev[0], EV_READ);
	evtimer_add(c->tmo, &tv);
}

static void lis_resume(evutil_socket_t fd, short what, void *arg)
{
	struct eg_sbx *s = arg;

	(void)fd;
	(void)what;
	evconnlistener_enable(s->lis);
}

/* Out of descriptors or the like: pause accepting instead of spinning on it. */
static void lis_error(struct evconnlistener *lis, void *arg)
{
	struct eg_sbx *s = arg;
	struct timeval tv = ms_tv(EG_ACCEPT_PAUSE_MS);
	int err = EVUTIL_SOCKET_ERROR();

	evconnlistener_disable(lis);
	evtimer_add(s->lis_pause, &tv);
	sbx_event(s, "egress_refused", "accept: %s", strerror(err));
}

/* --- DNS ---------------------------------------------------------------- */

/*
 * The guest's side of DNS is parsed here, not by evdns's server: libevent
 * 2.1.12's request_parse() dereferences NULL on any datagram shorter than a
 * header (fixed upstream after 2.1.12, not in Debian 12), so one 9-byte
 * packet from a guest would kill kilnd. A query is one question (RFC 1035
 * 4.1); the answer echoes it and carries at most what fits in 512 bytes.
 */
#define DNS_HDR		12
#define DNS_UDP_MAX	512
#define DNS_QR		0x8000
#define DNS_OPCODE	0x7800
#define DNS_RD		0x0100
#define DNS_RA		0x0080
#define DNS_T_A		1
#define DNS_T_AAAA	28
#define DNS_C_IN	1
#define DNS_READS_MAX	32	/* datagrams read per wakeup */

enum { RC_NOERROR, RC_FORMERR, RC_SERVFAIL, RC_NXDOMAIN, RC_NOTIMP, RC_REFUSED };

static void dns_send(struct eg_sbx *s, const struct sockaddr_storage *to, socklen_t tolen, uint16_t id, uint16_t qflags,
		     const uint8_t *question, size_t qlen, int rcode, int type, const uint8_t *addrs, int n, int ttl)
{
	uint8_t p[DNS_UDP_MAX];
	size_t alen = type == DNS_T_A ? 4 : 16, off;
	uint16_t flags = DNS_QR | DNS_RA | (qflags & DNS_RD) | (uint16_t)rcode;
	int room;

	if (DNS_HDR + qlen > sizeof(p))
		return;
	room = (int)((sizeof(p) - DNS_HDR - qlen) / (12 + alen));
	if (n > room)
		n = room;
	p[0] = id >> 8, p[1] = id & 0xff;
	p[2] = flags >> 8, p[3] = flags & 0xff;
	p[4] = 0, p[5] = qlen ? 1 : 0;
	p[6] = 0, p[7] = (uint8_t)n;
	memset(p + 8, 0, 4);
	if (qlen)
		memcpy(p + DNS_HDR, question, qlen);
	off = DNS_HDR + qlen;
	for (int i = 0; i < n; i++) {
		uint8_t *r = p + off;

		r[0] = 0xc0, r[1] = DNS_HDR;	/* the name: a pointer to the question's */
		r[2] = 0, r[3] = (uint8_t)type;
		r[4] = 0, r[5] = DNS_C_IN;
		r[6] = 0, r[7] = 0, r[8] = 0, r[9] = (uint8_t)ttl;
		r[10] = 0, r[11] = (uint8_t)alen;
		memcpy(r + 12, addrs + (size_t)i * alen, alen);
		off += 12 + alen;
	}
	/* A full socket buffer drops the answer; the guest's resolver asks again. */
	(void)sendto(event_get_fd(s->dns_ev), p, off, MSG_DONTWAIT, (const struct sockaddr *)to, tolen);
}

static void dnsq_unlink(struct eg_dnsq *q)
{
	struct eg_sbx *s = q->s;

	if (q->prev)
		q->prev->next = q->next;
	else
		s->dnsqs = q->next;
	if (q->next)
		q->next->prev = q->prev;
	s->ndnsq--;
	q->s = NULL;
}

static void dns_upstream(int result, char type, int count, int ttl, void *addrs, void *arg)
{
	struct eg_dnsq *q = arg;
	struct eg_sbx *s = q->s;
	struct kd_egress *e = q->e;
	uint8_t ok[16 * 16];
	int n = 0, rcode = RC_NOERROR;

	e->tickets--;
	if (!s) {		/* the sandbox went; nobody to answer */
		free(q);
		return;
	}
	dnsq_unlink(q);
	if (result == DNS_ERR_NONE && count > 0 && (type == DNS_IPv4_A || type == DNS_IPv6_AAAA) &&
	    (type == DNS_IPv4_A) == (q->qtype == DNS_T_A)) {
		int fam = type == DNS_IPv4_A ? AF_INET : AF_INET6;
		size_t len = fam == AF_INET ? 4 : 16;

		self_refresh(e, 0);
		/* A name that points inside gets no answer the guest could use anyway. */
		for (int k = 0; k < count && n < 16; k++) {
			const uint8_t *a = (const uint8_t *)addrs + (size_t)k * len;

			if (!addr_forbidden(e, fam, a))
				memcpy(ok + (size_t)n++ * len, a, len);
		}
	} else if (result == DNS_ERR_NOTEXIST) {
		rcode = RC_NXDOMAIN;
	} else if (result != DNS_ERR_NONE && result != DNS_ERR_NODATA) {
		rcode = RC_SERVFAIL;
	}
	if (ttl < 0 || ttl > EG_DNS_TTL_MAX)
		ttl = EG_DNS_TTL_MAX;
	s->st.dns_ok++;
	dns_send(s, &q->from, q->fromlen, q->id, q->flags, q->question, q->qlen, rcode, q->qtype, ok, n, ttl);
	free(q);
}

/* The sandbox goes: its queries stay unanswered, their lookups are cancelled. */
static void dnsq_drop(struct kd_egress *e, struct eg_dnsq *q)
{
	dnsq_unlink(q);
	evdns_cancel_request(e->dns, q->r);	/* dns_upstream still runs, and frees q */
}

static void dns_query(struct eg_sbx *s, const uint8_t *p, size_t len, const struct sockaddr_storage *from,
		      socklen_t fromlen)
{
	struct kd_egress *e = s->e;
	char name[SCHED_HOST_MAX + 2];
	uint16_t id, flags, type, cls;
	struct eg_dnsq *q;
	size_t qlen;

	if (len < DNS_HDR)
		return;
	id = (uint16_t)(p[0] << 8 | p[1]);
	flags = (uint16_t)(p[2] << 8 | p[3]);
	if (flags & DNS_QR)
		return;		/* an answer: never reply to one */
	if (flags & DNS_OPCODE) {
		dns_send(s, from, fromlen, id, flags, NULL, 0, RC_NOTIMP, DNS_T_A, NULL, 0, 0);
		return;
	}
	qlen = (p[4] || p[5] != 1) ? 0 : kd_dns_question(p, len, name, sizeof(name), &type, &cls);
	if (!qlen) {
		dns_send(s, from, fromlen, id, flags, NULL, 0, RC_FORMERR, DNS_T_A, NULL, 0, 0);
		return;
	}
	if (!sched_allow_name(s->allow, s->nallow, name, 0)) {
		s->st.dns_refused++;
		sbx_event(s, "dns_refused", "%s: not in allow_net", name);
		dns_send(s, from, fromlen, id, flags, p + DNS_HDR, qlen, RC_REFUSED, DNS_T_A, NULL, 0, 0);
		return;
	}
	/* Other types (MX, TXT, HTTPS ...) and classes get an empty NOERROR. */
	if (cls != DNS_C_IN || (type != DNS_T_A && type != DNS_T_AAAA)) {
		s->st.dns_ok++;
		dns_send(s, from, fromlen, id, flags, p + DNS_HDR, qlen, RC_NOERROR, DNS_T_A, NULL, 0, 0);
		return;
	}
	if (s->ndnsq >= EG_DNS_INFLIGHT_MAX || !(q = calloc(1, sizeof(*q)))) {
		dns_send(s, from, fromlen, id, flags, p + DNS_HDR, qlen, RC_SERVFAIL, DNS_T_A, NULL, 0, 0);
		return;
	}
	q->e = e;
	q->from = *from;
	q->fromlen = fromlen;
	q->id = id;
	q->flags = flags;
	q->qtype = type;
	q->qlen = qlen;
	memcpy(q->question, p + DNS_HDR, qlen);
	if (type == DNS_T_A)
		q->r = evdns_base_resolve_ipv4(e->dns, name, DNS_QUERY_NO_SEARCH, dns_upstream, q);
	else
		q->r = evdns_base_resolve_ipv6(e->dns, name, DNS_QUERY_NO_SEARCH, dns_upstream, q);
	if (!q->r) {
		free(q);
		dns_send(s, from, fromlen, id, flags, p + DNS_HDR, qlen, RC_SERVFAIL, DNS_T_A, NULL, 0, 0);
		return;
	}
	e->tickets++;
	q->s = s;
	q->next = s->dnsqs;
	if (s->dnsqs)
		s->dnsqs->prev = q;
	s->dnsqs = q;
	s->ndnsq++;
}

static void dns_read(evutil_socket_t fd, short what, void *arg)
{
	struct eg_sbx *s = arg;
	uint8_t p[DNS_UDP_MAX];

	(void)what;
	for (int i = 0; i < DNS_READS_MAX; i++) {
		struct sockaddr_storage from;
		socklen_t fromlen = sizeof(from);
		ssize_t n = recvfrom(fd, p, sizeof(p), MSG_DONTWAIT | MSG_TRUNC, (struct sockaddr *)&from, &fromlen);

		if (n < 0)
			return;
		if ((size_t)n > sizeof(p))
			continue;	/* bigger than a query needs to be */
		dns_query(s, p, (size_t)n, &from, fromlen);
	}
}

/* --- sandboxes ---------------------------------------------------------- */

static struct eg_sbx *sbx_find(struct kd_egress *e, const char *id)
{
	for (struct eg_sbx *s = e->sbxs; s; s = s->next)
		if (!strcmp(s->id, id))
			return s;
	return NULL;
}

static void sbx_free(struct kd_egress *e, struct eg_sbx *s)
{
	if (s->lis)
		evconnlistener_free(s->lis);
	if (s->lis_pause)
		event_free(s->lis_pause);
	while (s->conns)
		conn_close(s->conns);
	while (s->dnsqs)
		dnsq_drop(e, s->dnsqs);
	if (s->dns_ev) {
		close(event_get_fd(s->dns_ev));
		event_free(s->dns_ev);
	}
	for (size_t k = 0; k < s->nsecrets; k++) {
		if (s->secrets[k].value) {
			OPENSSL_cleanse(s->secrets[k].value, s->secrets[k].vlen);
			free(s->secrets[k].value);
		}
		free(s->secrets[k].hosts);
	}
	free(s->secrets);
	free(s->allow);
	free(s);
}

/* Copy the secrets; their hosts go on the end of allow_net too. */
static int sbx_secrets(struct eg_sbx *s, const struct eg_cmd *cmd)
{
	size_t extra = 0;

	if (!cmd->nsecrets)
		return 0;
	if (cmd->nsecrets > KD_EGRESS_SECRETS_MAX)
		return kiln_fail(cmd->err, EINVAL, "egress: more than %d secrets", KD_EGRESS_SECRETS_MAX);
	if (!s->e->conf.ca || !s->e->up_ctx)
		return kiln_fail(cmd->err, ENOTSUP, "egress: secrets need the node CA, which did not load");
	for (size_t k = 0; k < cmd->nsecrets; k++)
		extra += cmd->secrets[k].nhosts;
	if (extra > 16 * KD_EGRESS_SECRETS_MAX)
		return kiln_fail(cmd->err, EINVAL, "egress: secrets have too many hosts");
	s->secrets = calloc(cmd->nsecrets, sizeof(*s->secrets));
	if (!s->secrets)
		return kiln_fail(cmd->err, ENOMEM, "egress: out of memory");
	{
		struct sched_allow *a = realloc(s->allow, (s->nallow + extra) * sizeof(*a));

		if (!a)
			return kiln_fail(cmd->err, ENOMEM, "egress: out of memory");
		s->allow = a;
	}
	for (size_t k = 0; k < cmd->nsecrets; k++) {
		const struct kd_secret *in = &cmd->secrets[k];
		struct eg_secret *x = &s->secrets[k];
		const char *name = in->name ? in->name : "?";
		size_t plen = in->placeholder ? strlen(in->placeholder) : 0;

		s->nsecrets = k + 1;
		if (plen <= strlen(KD_SECRET_PREFIX) || plen >= sizeof(x->placeholder) ||
		    strncmp(in->placeholder, KD_SECRET_PREFIX, strlen(KD_SECRET_PREFIX)))
			return kiln_fail(cmd->err, EINVAL, "egress: secret %s: placeholder is not " KD_SECRET_PREFIX "...",
					 name);
		if (!in->value || !in->value_len || memchr(in->value, '\0', in->value_len) ||
		    memchr(in->value, '\r', in->value_len) || memchr(in->value, '\n', in->value_len))
			return kiln_fail(cmd->err, EINVAL, "egress: secret %s: value is empty or has a NUL, CR or LF", name);
		if (!in->nhosts || !in->hosts)
			return kiln_fail(cmd->err, EINVAL, "egress: secret %s has no hosts", name);
		memcpy(x->placeholder, in->placeholder, plen + 1);
		x->plen = plen;
		x->value = malloc(in->value_len);
		x->hosts = calloc(in->nhosts, sizeof(*x->hosts));
		if (!x->value || !x->hosts)
			return kiln_fail(cmd->err, ENOMEM, "egress: out of memory");
		memcpy(x->value, in->value, in->value_len);
		x->vlen = in->value_len;
		for (size_t i = 0; i < in->nhosts; i++) {
			int r = in->hosts[i] ? sched_allow_parse(in->hosts[i], &x->hosts[i], cmd->err) : -EINVAL;

			if (r < 0 || (x->hosts[i].kind != SCHED_ALLOW_NAME && x->hosts[i].kind != SCHED_ALLOW_WILD))
				return kiln_fail(cmd->err, EINVAL, "egress: secret %s: host %zu is not a name or *.domain",
						 name, i);
			x->nhosts = i + 1;
			s->allow[s->nallow++] = x->hosts[i];
		}
	}
	return 0;
}

static int sbx_add(struct kd_egress *e, struct eg_cmd *cmd)
{
	struct eg_sbx *s = NULL;
	int r;

	if (!cmd->id || !cmd->id[0] || strlen(cmd->id) >= EG_ID_MAX) {
		r = kiln_fail(cmd->err, EINVAL, "egress: sandbox id is empty or longer than %d bytes", EG_ID_MAX - 1);
		goto fail;
	}
	if (sbx_find(e, cmd->id)) {
		r = kiln_fail(cmd->err, EEXIST, "egress: sandbox %s is already served", cmd->id);
		goto fail;
	}
	if (cmd->nallow > SCHED_ALLOW_MAX) {
		r = kiln_fail(cmd->err, EINVAL, "egress: allow_net has more than %d entries", SCHED_ALLOW_MAX);
		goto fail;
	}
	if (cmd->tcp_fd < 0 || cmd->udp_fd < 0) {
		r = kiln_fail(cmd->err, EBADF, "egress: sandbox %s: no proxy or resolver socket", cmd->id);
		goto fail;
	}
	s = calloc(1, sizeof(*s));
	if (!s || (cmd->nallow && !(s->allow = calloc(cmd->nallow, sizeof(*s->allow))))) {
		r = kiln_fail(cmd->err, ENOMEM, "egress: out of memory");
		goto fail;
	}
	s->e = e;
	snprintf(s->id, sizeof(s->id), "%s", cmd->id);
	for (size_t i = 0; i < cmd->nallow; i++) {
		if (!cmd->allow[i]) {
			r = kiln_fail(cmd->err, EINVAL, "egress: allow_net entry %zu is missing", i);
			goto fail;
		}
		r = sched_allow_parse(cmd->allow[i], &s->allow[i], cmd->err);
		if (r < 0)
			goto fail;
	}
	s->nallow = cmd->nallow;
	r = sbx_secrets(s, cmd);
	if (r < 0)
		goto fail;
	s->lis_pause = evtimer_new(e->base, lis_resume, s);
	if (!s->lis_pause) {
		r = kiln_fail(cmd->err, ENOMEM, "egress: out of memory");
		goto fail;
	}
	/* Backlog 0: the socket is listening already; leave it so. */
	s->lis = evconnlistener_new(e->base, conn_accept, s, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 0,
				    cmd->tcp_fd);
	if (!s->lis) {
		r = kiln_fail(cmd->err, ENOMEM, "egress: sandbox %s: cannot watch the proxy socket", cmd->id);
		goto fail;
	}
	cmd->tcp_fd = -1;
	evconnlistener_set_error_cb(s->lis, lis_error);
	s->dns_ev = event_new(e->base, cmd->udp_fd, EV_READ | EV_PERSIST, dns_read, s);
	if (!s->dns_ev) {
		r = kiln_fail(cmd->err, ENOMEM, "egress: out of memory");
		goto fail;
	}
	cmd->udp_fd = -1;
	if (event_add(s->dns_ev, NULL) < 0) {
		r = kiln_fail(cmd->err, ENOMEM, "egress: sandbox %s: cannot watch the resolver socket", cmd->id);
		goto fail;
	}
	self_refresh(e, 0);
	s->next = e->sbxs;
	e->sbxs = s;
	return 0;
fail:
	if (s)
		sbx_free(e, s);
	if (cmd->tcp_fd >= 0)
		close(cmd->tcp_fd);
	if (cmd->udp_fd >= 0)
		close(cmd->udp_fd);
	cmd->tcp_fd = cmd->udp_fd = -1;
	return r;
}

static int sbx_remove(struct kd_egress *e, const char *id)
{
	for (struct eg_sbx **pp = &e->sbxs; *pp; pp = &(*pp)->next)
		if (!strcmp((*pp)->id, id)) {
			struct eg_sbx *s = *pp;

			*pp = s->next;
			sbx_free(e, s);
			return 0;
		}
	return -ENOENT;
}

/* --- the loop and its commands ------------------------------------------ */

static void cmd_run(struct kd_egress *e, struct eg_cmd *c)
{
	struct eg_sbx *s;

	switch (c->op) {
	case EG_ADD:
		c->ret = sbx_add(e, c);
		break;
	case EG_REMOVE:
		c->ret = sbx_remove(e, c->id);
		break;
	case EG_STATS:
		s = sbx_find(e, c->id);
		c->ret = s ? 0 : -ENOENT;
		if (s)
			*c->stats = s->st;
		break;
	case EG_STOP:
		while (e->sbxs)
			sbx_remove(e, e->sbxs->id);
		event_base_loopbreak(e->base);
		c->ret = 0;
		break;
	}
}

static void cmd_cb(evutil_socket_t fd, short what, void *arg)
{
	struct kd_egress *e = arg;
	struct eg_cmd *list, *c;

	(void)fd;
	(void)what;
	pthread_mutex_lock(&e->mu);
	list = e->cmds;
	e->cmds = NULL;
	e->cmds_tail = &e->cmds;
	pthread_mutex_unlock(&e->mu);
	while ((c = list)) {
		list = c->next;
		cmd_run(e, c);
		if (c->detached) {
			free(c);
			continue;
		}
		pthread_mutex_lock(&e->mu);
		c->done = 1;
		pthread_cond_broadcast(&e->cv);
		pthread_mutex_unlock(&e->mu);
	}
}

static void cmd_post(struct kd_egress *e, struct eg_cmd *c)
{
	pthread_mutex_lock(&e->mu);
	c->next = NULL;
	*e->cmds_tail = c;
	e->cmds_tail = &c->next;
	pthread_mutex_unlock(&e->mu);
	event_active(e->cmd_ev, EV_READ, 0);
}

static int cmd_call(struct kd_egress *e, struct eg_cmd *c)
{
	cmd_post(e, c);
	pthread_mutex_lock(&e->mu);
	while (!c->done)
		pthread_cond_wait(&e->cv, &e->mu);
	pthread_mutex_unlock(&e->mu);
	return c->ret;
}

static int on_loop(const struct kd_egress *e)
{
	return pthread_equal(pthread_self(), e->thread);
}

static void *eg_thread(void *arg)
{
	struct kd_egress *e = arg;

	event_base_loop(e->base, EVLOOP_NO_EXIT_ON_EMPTY);
	/* Let cancelled lookups' callbacks run and free their tickets. */
	for (int i = 0; i < 100 && e->tickets; i++)
		event_base_loop(e->base, EVLOOP_NONBLOCK);
	return NULL;
}

static pthread_once_t eg_once = PTHREAD_ONCE_INIT;
static int eg_threads_ok;

static void eg_threads_init(void)
{
	eg_threads_ok = evthread_use_pthreads() == 0;
}

static int dns_setup(struct kd_egress *e, struct kiln_err *err)
{
	int r;

	if (e->conf.dns_upstream[0]) {
		r = evdns_base_nameserver_ip_add(e->dns, e->conf.dns_upstream);
		if (r)
			return kiln_fail(err, EINVAL, "egress: dns_upstream \"%s\" is not IP or IP:PORT",
					 e->conf.dns_upstream);
	} else {
		/* Name servers only: no search domains, no /etc/hosts for a guest's names. */
		r = evdns_base_resolv_conf_parse(e->dns, DNS_OPTION_NAMESERVERS | DNS_OPTION_NAMESERVERS_NO_DEFAULT,
						 "/etc/resolv.conf");
		(void)r;	/* 6, "no nameserver", and read errors alike: what counts is below */
		if (!evdns_base_count_nameservers(e->dns))
			return kiln_fail(err, ENOENT,
					 "egress: no name server in /etc/resolv.conf; set dns_upstream in kilnd's config");
	}
	evdns_base_set_option(e->dns, "timeout:", "2");
	evdns_base_set_option(e->dns, "attempts:", "2");
	return 0;
}

/* TLS to the real upstreams of terminated connections: verified, by the system's store and --upstream-ca. */
static int up_ctx_make(struct kd_egress *e, struct kiln_err *err)
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

int kd_egress_start(const struct kd_egress_conf *conf, struct kd_egress **out, struct kiln_err *err)
{
	struct kd_egress *e;
	sigset_t all, old;
	int r;

	*out = NULL;
	pthread_once(&eg_once, eg_threads_init);
	if (!eg_threads_ok)
		return kiln_fail(err, ENOMEM, "egress: libevent threading (evthread_use_pthreads) failed");
	e = calloc(1, sizeof(*e));
	if (!e)
		return kiln_fail(err, ENOMEM, "egress: out of memory");
	e->conf = *conf;
	e->conf.dns_upstream[sizeof(e->conf.dns_upstream) - 1] = '\0';
	e->conf.upstream_ca[sizeof(e->conf.upstream_ca) - 1] = '\0';
	e->cmds_tail = &e->cmds;
	pthread_mutex_init(&e->mu, NULL);
	pthread_cond_init(&e->cv, NULL);
	r = -ENOMEM;
	e->base = event_base_new();
	if (!e->base)
		goto fail;
	e->cmd_ev = event_new(e->base, -1, 0, cmd_cb, e);
	e->dns = evdns_base_new(e->base, 0);
	if (!e->cmd_ev || !e->dns)
		goto fail;
	r = dns_setup(e, err);
	if (r < 0)
		goto fail_quiet;
	if (e->conf.ca) {
		r = up_ctx_make(e, err);
		if (r < 0)
			goto fail_quiet;
	}
	self_refresh(e, 1);
	/* The thread takes no signals: SIGPIPE from a reset peer must not kill kilnd. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	r = -pthread_create(&e->thread, NULL, eg_thread, e);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (r)
		goto fail;
	*out = e;
	return 0;
fail:
	kiln_fail(err, -r, "egress: cannot start its loop: %s", strerror(-r));
fail_quiet:
	if (e->up_ctx)
		SSL_CTX_free(e->up_ctx);
	if (e->dns)
		evdns_base_free(e->dns, 0);
	if (e->cmd_ev)
		event_free(e->cmd_ev);
	if (e->base)
		event_base_free(e->base);
	pthread_mutex_destroy(&e->mu);
	pthread_cond_destroy(&e->cv);
	free(e);
	return r;
}

int kd_egress_add(struct kd_egress *e, const char *sbx_id, int tcp_fd, int udp_fd, char *const *allow, size_t nallow,
		  const struct kd_secret *secrets, size_t nsecrets, struct kiln_err *err)
{
	struct eg_cmd c = { .op = EG_ADD, .id = sbx_id, .tcp_fd = tcp_fd, .udp_fd = udp_fd,
			    .allow = allow, .nallow = nallow, .secrets = secrets, .nsecrets = nsecrets, .err = err };

	if (on_loop(e)) {	/* from the event callback: would wait on itself */
		if (tcp_fd >= 0)
			close(tcp_fd);
		if (udp_fd >= 0)
			close(udp_fd);
		return kiln_fail(err, EDEADLK, "egress: kd_egress_add called from the egress thread");
	}
	return cmd_call(e, &c);
}

void kd_egress_remove(struct kd_egress *e, const char *sbx_id)
{
	struct eg_cmd c = { .op = EG_REMOVE, .id = sbx_id }, *d;

	if (!on_loop(e)) {
		cmd_call(e, &c);
		return;
	}
	/* From the event callback: the sandbox may be on the stack below us; remove it next round. */
	d = calloc(1, sizeof(*d));
	if (!d)
		return;
	d->op = EG_REMOVE;
	d->detached = 1;
	snprintf(d->idbuf, sizeof(d->idbuf), "%s", sbx_id);
	d->id = d->idbuf;
	cmd_post(e, d);
}

int kd_egress_stats(struct kd_egress *e, const char *sbx_id, struct kd_egress_stats *out)
{
	struct eg_cmd c = { .op = EG_STATS, .id = sbx_id, .stats = out };

	if (on_loop(e)) {
		cmd_run(e, &c);
		return c.ret;
	}
	return cmd_call(e, &c);
}

void kd_egress_stop(struct kd_egress *e)
{
	struct eg_cmd c = { .op = EG_STOP };

	if (!e)
		return;
	cmd_call(e, &c);
	pthread_join(e->thread, NULL);
	/* Detached removes still queued: their sandboxes are gone already. */
	while (e->cmds) {
		struct eg_cmd *d = e->cmds;

		e->cmds = d->next;
		if (d->detached)
			free(d);
	}
	evdns_base_free(e->dns, 0);
	event_base_loop(e->base, EVLOOP_NONBLOCK);
	event_free(e->cmd_ev);
	event_base_free(e->base);
	if (e->up_ctx)
		SSL_CTX_free(e->up_ctx);
	pthread_mutex_destroy(&e->mu);
	pthread_cond_destroy(&e->cv);
	free(e);
}
