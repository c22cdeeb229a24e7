/*
 * Inside kilnd's egress, not for the rest of kilnd: the state that
 * kd_egress.c (the proxy's connections, the sandboxes, the loop),
 * kd_egress_tls.c (terminated connections to secret hosts) and
 * kd_egress_dns.c (the guest's resolver) share, and the functions each of
 * them calls in another. All of them run on the egress thread, but for
 * eg_up_ctx_make and eg_dns_setup, which kd_egress_start calls before it starts.
 */
#ifndef KILN_KD_EGRESS_INT_H
#define KILN_KD_EGRESS_INT_H

#include <netinet/in.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>

#include <event2/bufferevent.h>
#include <event2/util.h>

#include <http_parser.h>
#include <openssl/ssl.h>

#include "kd_egress.h"
#include "sched_net.h"

#define EG_ID_MAX		128	/* bytes of a sandbox id, with the NUL */
#define EG_CONNECT_TOTAL_MS	10000	/* all of a name's addresses, and its lookup */
#define EG_ADDRS_MAX		16	/* addresses tried for one name */
#define EG_SELF_MAX		64	/* host addresses remembered */

struct eg_addr {
	int family;
	uint8_t a[16];
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

static inline long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline struct timeval ms_tv(long long ms)
{
	struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };

	return tv;
}

/* kd_egress.c */

/* Report a refusal (kind, then a printf detail), at most KD_EGRESS_EVENTS_PER_MIN a minute per sandbox. */
void eg_sbx_event(struct eg_sbx *s, const char *kind, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Reread the host's own addresses, unless force is 0 and they are fresh (EG_SELF_REFRESH_S). */
void eg_self_refresh(struct kd_egress *e, int force);

/* 1 if addr (4 or 16 bytes by family) is special or the host's own: no sandbox goes there. */
int eg_addr_forbidden(const struct kd_egress *e, int family, const void *addr);

/* Unlink c from its sandbox and free it: its lookup is cancelled, both sides closed. */
void eg_conn_close(struct eg_conn *c);

/* Count and report c as refused (a printf detail), reset the guest's side, close c. */
void eg_conn_refuse(struct eg_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* What a message calls c, in buf (n bytes): "host:port" if it gave a name, else "ip:port". Returns buf. */
const char *eg_conn_name(const struct eg_conn *c, char *buf, size_t n);

/* 0 if bev is c's guest side, 1 if its upstream's. */
int eg_conn_side(const struct eg_conn *c, const struct bufferevent *bev);

/* kd_egress_tls.c */

/* c's upstream TCP is up and c->secmask set: TLS to the upstream, then the guest's; c is refused on failure. */
void eg_tls_up_start(struct eg_conn *c);

/* EG_DRAIN's timer: what the upstream sent before its end goes on to the guest, then c closes. */
void eg_tls_drain_tick(struct eg_conn *c);

/* Make e->up_ctx, verifying upstreams by the system's store and conf.upstream_ca. 0, or -errno with err set. */
int eg_up_ctx_make(struct kd_egress *e, struct kiln_err *err);

/* kd_egress_dns.c */

/* The sandbox's resolver socket (fd) is readable: answer what the guest asked; arg is the eg_sbx. */
void eg_dns_read(evutil_socket_t fd, short what, void *arg);

/* The sandbox goes: unlink q; its lookup is cancelled and its callback frees q. */
void eg_dnsq_drop(struct kd_egress *e, struct eg_dnsq *q);

/* Point e->dns at conf.dns_upstream, else at /etc/resolv.conf's name servers. 0, or -errno with err set. */
int eg_dns_setup(struct kd_egress *e, struct kiln_err *err);

#endif
