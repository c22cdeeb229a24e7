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
 * It runs on a thread of its own with a libevent loop; these calls are
 * safe from any other thread.
 */
#ifndef KILN_KD_EGRESS_H
#define KILN_KD_EGRESS_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

struct kd_egress;

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
 * create's allow_net entries (already valid; copied). -EEXIST if id is served.
 */
int kd_egress_add(struct kd_egress *e, const char *sbx_id, int tcp_fd, int udp_fd, char *const *allow, size_t nallow,
		  struct kiln_err *err);

/* Stop serving a sandbox: close its sockets and every connection it has; returns once done. */
void kd_egress_remove(struct kd_egress *e, const char *sbx_id);

/* A sandbox's counters; -ENOENT if not served. */
int kd_egress_stats(struct kd_egress *e, const char *sbx_id, struct kd_egress_stats *out);

/* Stop the thread and free everything. */
void kd_egress_stop(struct kd_egress *e);

#endif
