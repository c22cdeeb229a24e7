/*
 * kilnd's egress, the guest's resolver: each sandbox's DNS queries, read
 * from its UDP socket, checked against allow_net and answered from an
 * upstream lookup on the egress's evdns_base, which eg_dns_setup points at
 * the name servers. kd_egress.c adds the socket to the loop (eg_dns_read) and
 * drops a sandbox's queries when it goes (eg_dnsq_drop); what the two files
 * share is in kd_egress_int.h.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/dns.h>
#include <event2/event.h>

#include "kd_egress_int.h"
#include "kd_sniff.h"

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

#define EG_DNS_INFLIGHT_MAX	64	/* guest queries waiting on upstream, per sandbox */
#define EG_DNS_TTL_MAX		60	/* seconds a guest may cache an answer */

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

		eg_self_refresh(e, 0);
		/* A name that points inside gets no answer the guest could use anyway. */
		for (int k = 0; k < count && n < 16; k++) {
			const uint8_t *a = (const uint8_t *)addrs + (size_t)k * len;

			if (!eg_addr_forbidden(e, fam, a))
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
void eg_dnsq_drop(struct kd_egress *e, struct eg_dnsq *q)
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
		eg_sbx_event(s, "dns_refused", "%s: not in allow_net", name);
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

void eg_dns_read(evutil_socket_t fd, short what, void *arg)
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

int eg_dns_setup(struct kd_egress *e, struct kiln_err *err)
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
