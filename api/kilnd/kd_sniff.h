/*
 * What the egress proxy reads from a guest's new TCP connection before it
 * knows where the connection goes (kd_egress.c): the server name of a TLS
 * ClientHello (parsed by OpenSSL, not by hand) or the Host header of an
 * HTTP/1.x request (parsed by http-parser). Pure: no sockets, no state
 * between calls; the caller keeps the bytes and calls again with more.
 */
#ifndef KILN_KD_SNIFF_H
#define KILN_KD_SNIFF_H

#include <stddef.h>
#include <stdint.h>

enum kd_sniff {
	KD_SNIFF_MORE,		/* not enough bytes yet to tell */
	KD_SNIFF_TLS,		/* a ClientHello with a server name: host set */
	KD_SNIFF_HTTP,		/* an HTTP/1.x request's headers with Host: host (and *port if given) set */
	KD_SNIFF_NONE,		/* neither, or no name in it: why says which */
};

/*
 * Look at the first len bytes a guest sent on a connection. host gets the
 * name in lower case without a trailing dot (and without the port, which
 * goes to *port, 0 when the Host header had none); it must be a valid DNS
 * name (sched_host_valid) or an IP literal, else NONE. why (may be NULL)
 * gets a short reason for NONE: "neither a TLS ClientHello nor an HTTP
 * request", "TLS ClientHello without a server name", "HTTP request without
 * a Host header", "Host header is not a host name", ...
 */
enum kd_sniff kd_sniff(const uint8_t *buf, size_t len, char *host, size_t hostn, uint16_t *port, char *why,
		       size_t whyn);

/* A DNS header's bytes; the question follows it. */
#define KD_DNS_HDR	12

/*
 * The question of a guest's DNS query at p (len bytes, header included): a
 * name of labels (no compression), its type and class. The resolver
 * parses queries itself because Debian 12's libevent 2.1.12 evdns server
 * crashes on datagrams shorter than a header. Returns the question's
 * length after the header, or 0 if malformed; name gets the dotted text,
 * unchecked (sched_allow_name refuses what is not a host name).
 */
size_t kd_dns_question(const uint8_t *p, size_t len, char *name, size_t namen, uint16_t *type, uint16_t *cls);

#endif
