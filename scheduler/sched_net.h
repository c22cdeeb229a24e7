/*
 * A sandbox's network policy (issue 16): the allow_net entries a create may
 * give, how a name, address and port are checked against them, and which
 * addresses no sandbox may reach whatever its list says. Pure code, shared
 * by the create-body parser (sched_spec.c) and kilnd's egress proxy and
 * resolver (api/kilnd/kd_egress.c).
 *
 * An entry is one of:
 *   "*"                   every public name and address (special ones stay refused)
 *   "example.com"         that name exactly (case-insensitive, a trailing dot ignored)
 *   "*.example.com"       any name below example.com, not example.com itself
 *   "203.0.113.7"         an IPv4 address; "2001:db8::7" or "[2001:db8::7]" an IPv6 one
 *   "203.0.113.0/24"      a CIDR range (IPv4 or IPv6)
 * each optionally followed by ":PORT" (1-65535; IPv6 needs the brackets for
 * that: "[2001:db8::7]:443"). Without a port every port matches.
 */
#ifndef KILN_SCHED_NET_H
#define KILN_SCHED_NET_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define SCHED_ALLOW_MAX		256	/* entries in one allow_net */
#define SCHED_ALLOW_LEN_MAX	261	/* bytes of one entry: a 253-byte name, "*." and ":65535" */
#define SCHED_HOST_MAX		253	/* bytes of a DNS name, without the trailing dot */

enum sched_allow_kind {
	SCHED_ALLOW_ANY,	/* "*" */
	SCHED_ALLOW_NAME,	/* host: exactly this name */
	SCHED_ALLOW_WILD,	/* host: names below this domain */
	SCHED_ALLOW_CIDR,	/* family, addr, prefix (an address alone is /32 or /128) */
};

struct sched_allow {
	enum sched_allow_kind kind;
	char host[SCHED_HOST_MAX + 1];	/* NAME and WILD: lower case, no trailing dot, no "*." */
	int family;			/* CIDR: AF_INET or AF_INET6 */
	uint8_t addr[16];		/* CIDR: network byte order, host bits cleared */
	unsigned prefix;		/* CIDR: 0-32 or 0-128 */
	uint16_t port;			/* 0: any port */
};

/*
 * Parse one entry. 0, or -EINVAL with err naming the entry and the rule it
 * breaks: "allow_net entry \"exa mple.com\" is not a host name, *.domain,
 * IP address or CIDR range (optionally with :PORT)".
 */
int sched_allow_parse(const char *s, struct sched_allow *out, struct kiln_err *err);

/* Is a DNS name (any case, a trailing dot ignored) at port (0: any port) allowed by list? 1 or 0. */
int sched_allow_name(const struct sched_allow *list, size_t n, const char *host, uint16_t port);

/* Is an address (family AF_INET/AF_INET6, network byte order) at port allowed by list's CIDR and "*" entries? 1 or 0. */
int sched_allow_addr(const struct sched_allow *list, size_t n, int family, const void *addr, uint16_t port);

/*
 * Is this an address no sandbox may reach, whatever allow_net says? 1 for
 * unspecified, loopback, RFC 1918 private, link-local (169.254.0.0/16,
 * including 169.254.169.254, and fe80::/10), CGNAT (100.64.0.0/10),
 * multicast, broadcast, 0.0.0.0/8, 240.0.0.0/4, IPv6 unique-local
 * (fc00::/7), and IPv4-mapped/compatible/NAT64 IPv6 forms of any of these.
 * 0 otherwise. The host's own addresses are refused separately (kilnd knows them).
 */
int sched_addr_special(int family, const void *addr);

/* Is s a valid DNS host name (letters, digits, '-', '_' in labels of 1-63, at most 253 bytes)? 1 or 0. */
int sched_host_valid(const char *s);

#endif
