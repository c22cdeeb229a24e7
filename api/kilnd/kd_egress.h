/*
 * kilnd's egress (issue 16): for each sandbox with a network, a DNS
 * resolver that answers only names its allow_net allows, and a TCP proxy
 * that every connection the guest opens is steered to (nftables redirect
 * in the sandbox's network namespace, kd_netns.c). The proxy learns where
 * the guest meant to go (SO_ORIGINAL_DST, then the TLS ClientHello's SNI
 * through OpenSSL or the HTTP Host header through http-parser), checks it
 * against allow_net, resolves the name itself, refuses special addresses
 * (sched_addr_special) and the host's own, connects from the host's
 * namespace and copies bytes both ways with bounded buffers.
 *
 * Secrets: for a TLS connection whose server name is one of a sandbox's
 * secret hosts, the proxy terminates TLS with a leaf of the node CA
 * (kd_ca.h), opens TLS to the real upstream itself (verified against the
 * system's trust store and conf.upstream_ca), and in each HTTP/1.1 request
 * on it replaces the secret's placeholder with its value in the header
 * lines. Nothing else is terminated or rewritten.
 *
 * It runs on a thread of its own with a libevent loop; these calls are
 * safe from any other thread.
 */
#ifndef KILN_KD_EGRESS_H
#define KILN_KD_EGRESS_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

struct kd_egress;
struct kd_ca;

/*
 * A secret as the proxy needs it: the placeholder the guest holds
 * (KILN_SECRET_ and hex), the value it stands for (no NUL, CR or LF), and
 * the hosts it may go to (allow_net-style NAME or *.DOMAIN entries,
 * optionally with :PORT). kd_egress_add copies all of it; the copy of the
 * value is cleansed when the sandbox is removed. Its hosts are allowed too.
 */
struct kd_secret {
	const char *name;
	const char *placeholder;
	const char *value;
	size_t value_len;
	char *const *hosts;
	size_t nhosts;
};

#define KD_SECRET_PREFIX	"KILN_SECRET_"
#define KD_EGRESS_SECRETS_MAX	32
#define KD_EGRESS_HEAD_MAX	(64u << 10)	/* bytes of one request's header block on a terminated connection */

struct kd_egress_conf {
	/* Upstream DNS server ("IP" or "IP:PORT"); "" reads /etc/resolv.conf. */
	char dns_upstream[64];
	/*
	 * Called on the egress thread for each refused or failed connection or
	 * query: kind is "egress_refused" or "dns_refused"; detail one printable
	 * line such as "blocked.test:443: not in allow_net". At most
	 * KD_EGRESS_EVENTS_PER_MIN per sandbox per minute; the rest are counted.
	 */
	void (*event)(void *arg, const char *sbx_id, const char *kind, const char *detail);
	void *arg;
	/* The node CA that signs the leaves of terminated connections; NULL: no secrets served. */
	struct kd_ca *ca;
	/* A PEM file of CAs trusted for upstreams besides the system's store ("" none; tests). */
	char upstream_ca[512];
};

#define KD_EGRESS_EVENTS_PER_MIN	60
#define KD_EGRESS_CONNS_MAX		1024	/* open proxied connections per sandbox */
#define KD_EGRESS_BUF_MAX		(256u << 10)	/* bytes buffered each way per connection */
#define KD_EGRESS_SNIFF_MAX		(16u << 10)	/* bytes read before SNI or Host must be known */
#define KD_EGRESS_SNIFF_MS		10000	/* ... and how long for them */

struct kd_egress_stats {
	uint64_t conns_ok, conns_refused, dns_ok, dns_refused, bytes_out, bytes_in;
};

int kd_egress_start(const struct kd_egress_conf *c, struct kd_egress **out, struct kiln_err *err);

/*
 * Serve a sandbox: tcp_fd is a listening TCP socket and udp_fd a bound UDP
 * socket, both made inside its namespace (non-blocking, close-on-exec); the
 * egress thread owns them from now on, even on failure. allow holds the
 * create's allow_net entries (already valid; copied), secrets its secrets
 * (copied; needs conf.ca). -EEXIST if id is served.
 */
int kd_egress_add(struct kd_egress *e, const char *sbx_id, int tcp_fd, int udp_fd, char *const *allow, size_t nallow,
		  const struct kd_secret *secrets, size_t nsecrets, struct kiln_err *err);

/* Stop serving a sandbox: close its sockets and every connection it has; returns once done. */
void kd_egress_remove(struct kd_egress *e, const char *sbx_id);

/* A sandbox's counters; -ENOENT if not served. */
int kd_egress_stats(struct kd_egress *e, const char *sbx_id, struct kd_egress_stats *out);

/* Stop the thread and free everything. */
void kd_egress_stop(struct kd_egress *e);

#endif
