/* A sandbox's network policy: allow_net entries and special addresses (sched_net.h). */
#include <arpa/inet.h>
#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#include "sched_int.h"
#include "sched_net.h"

#define LABEL_MAX	63
#define ENTRY_FORMS	"a host name, *.domain, IP address or CIDR range (optionally with :PORT)"

enum name_fault {
	NAME_OK,
	NAME_EMPTY,		/* "" or an empty label: "a..b", ".a" */
	NAME_LONG,		/* over SCHED_HOST_MAX */
	NAME_LABEL_LONG,	/* a label over LABEL_MAX */
	NAME_STAR,		/* a '*' (the parser takes "*." off first) */
	NAME_BYTE,		/* anything else outside [A-Za-z0-9_-] */
};

static int is_name_byte(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

/* Check len bytes of a name that has no trailing dot left. */
static enum name_fault name_check(const char *s, size_t len)
{
	size_t i, label = 0;

	if (len == 0)
		return NAME_EMPTY;
	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '.') {
			if (label == 0)
				return NAME_EMPTY;
			label = 0;
			continue;
		}
		if (c == '*')
			return NAME_STAR;
		if (!is_name_byte(c))
			return NAME_BYTE;
		if (++label > LABEL_MAX)
			return NAME_LABEL_LONG;
	}
	if (label == 0)
		return NAME_EMPTY;
	return len > SCHED_HOST_MAX ? NAME_LONG : NAME_OK;
}

/* One trailing dot is the root, not part of the name ("example.com."). */
static size_t name_len(const char *s, size_t len)
{
	return len > 1 && s[len - 1] == '.' ? len - 1 : len;
}

int sched_host_valid(const char *s)
{
	size_t len = strnlen(s, SCHED_HOST_MAX + 2);

	return name_check(s, name_len(s, len)) == NAME_OK;
}

/* 1-65535 in 1-5 decimal digits; 0 otherwise. */
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

/* Keep the first prefix bits of addr (alen bytes), clear the rest. */
static void addr_mask(uint8_t *addr, size_t alen, unsigned prefix)
{
	size_t i;

	for (i = 0; i < alen; i++) {
		if (prefix >= 8) {
			prefix -= 8;
			continue;
		}
		addr[i] &= (uint8_t)(0xff00u >> prefix);
		prefix = 0;
	}
}

/* Does addr (alen bytes) lie in net/prefix? */
static int addr_in(const uint8_t *addr, const uint8_t *net, unsigned prefix)
{
	unsigned whole = prefix / 8, rest = prefix % 8;

	if (memcmp(addr, net, whole) != 0)
		return 0;
	return rest == 0 || ((addr[whole] ^ net[whole]) & (uint8_t)(0xff00u >> rest)) == 0;
}

/*
 * An address, or a CIDR range with "/N", of len bytes at s. v6only: it
 * stood in brackets. 0; 1 if s is no address (no message); or -EINVAL
 * with the message for entry q.
 */
static int cidr_parse(const char *s, size_t len, int v6only, struct sched_allow *out, const char *q,
		      struct kiln_err *err)
{
	char text[INET6_ADDRSTRLEN + 1], pq[SCHED_QUOTE_MAX];
	const char *slash = memchr(s, '/', len);
	size_t alen = slash ? (size_t)(slash - s) : len;
	unsigned max, prefix, i;

	if (alen == 0 || alen >= sizeof(text))
		return 1;
	memcpy(text, s, alen);
	text[alen] = '\0';
	if (!v6only && inet_pton(AF_INET, text, out->addr) == 1) {
		out->family = AF_INET;
		max = 32;
	} else if (inet_pton(AF_INET6, text, out->addr) == 1) {
		out->family = AF_INET6;
		max = 128;
	} else {
		return 1;
	}
	prefix = max;
	if (slash) {
		const char *p = slash + 1;
		size_t plen = len - alen - 1;

		/* At most three digits, so a long run cannot wrap. */
		for (i = 0, prefix = 0; i < plen && i < 4 && p[i] >= '0' && p[i] <= '9'; i++)
			prefix = prefix * 10 + (unsigned)(p[i] - '0');
		if (plen == 0 || plen > 3 || i != plen || prefix > max)
			return kiln_fail(err, EINVAL, "allow_net entry %s: prefix /%s is not 0-%u for an %s range", q,
					 sched_quote(p, plen, pq), max, max == 32 ? "IPv4" : "IPv6");
	}
	out->kind = SCHED_ALLOW_CIDR;
	out->prefix = prefix;
	addr_mask(out->addr, max / 8, prefix);
	return 0;
}

/*
 * A name (NAME, or WILD with the "*." taken off) of len bytes at s,
 * lower-cased into out->host. 0; 1 for a byte no name holds (no message);
 * or -EINVAL with the message for entry q.
 */
static int host_parse(const char *s, size_t len, enum sched_allow_kind kind, struct sched_allow *out, const char *q,
		      struct kiln_err *err)
{
	size_t n = name_len(s, len), i, last;

	switch (name_check(s, n)) {
	case NAME_OK:
		break;
	case NAME_EMPTY:
		return kiln_fail(err, EINVAL, "allow_net entry %s has an empty label; labels are 1-%u bytes between single dots",
				 q, LABEL_MAX);
	case NAME_LONG:
		return kiln_fail(err, EINVAL, "allow_net entry %s names %zu bytes (a host name is at most %u)", q, n,
				 SCHED_HOST_MAX);
	case NAME_LABEL_LONG:
		return kiln_fail(err, EINVAL, "allow_net entry %s has a label over %u bytes", q, LABEL_MAX);
	case NAME_STAR:
		return kiln_fail(err, EINVAL,
				 "allow_net entry %s: * stands only for a whole first label, as in *.example.com, or alone", q);
	case NAME_BYTE:
		return 1;
	}
	/* "10.0.0.256" or "1.2.3" is a mistyped address, not a name: no top-level domain is all digits. */
	for (last = n; last > 0 && s[last - 1] != '.'; last--)
		;
	for (i = last; i < n && s[i] >= '0' && s[i] <= '9'; i++)
		;
	if (i == n)
		return kiln_fail(err, EINVAL, "allow_net entry %s is not an IP address (and a host name's last label is not all digits)",
				 q);
	for (i = 0; i < n; i++)
		out->host[i] = (char)((s[i] >= 'A' && s[i] <= 'Z') ? s[i] - 'A' + 'a' : s[i]);
	out->host[n] = '\0';
	out->kind = kind;
	return 0;
}

/* "[v6]", "[v6/N]" or "[v6]/N" of len bytes at s, the ":PORT" already off. */
static int bracket_parse(const char *s, size_t len, struct sched_allow *out, const char *q, struct kiln_err *err)
{
	char inner[SCHED_ALLOW_LEN_MAX + 1];
	const char *close = memchr(s, ']', len);
	size_t n, tail;
	int r;

	if (!close)
		return kiln_fail(err, EINVAL, "allow_net entry %s has no closing ], as in [2001:db8::7]:443", q);
	n = (size_t)(close - s) - 1;
	tail = len - n - 2;
	if (tail > 0 && close[1] != '/')
		return kiln_fail(err, EINVAL, "allow_net entry %s: only :PORT or /PREFIX may follow ], as in [2001:db8::7]:443",
				 q);
	memcpy(inner, s + 1, n);
	memcpy(inner + n, close + 1, tail);
	r = cidr_parse(inner, n + tail, 1, out, q, err);
	if (r > 0)
		return kiln_fail(err, EINVAL, "allow_net entry %s: brackets hold an IPv6 address, as in [2001:db8::7]:443", q);
	return r;
}

int sched_allow_parse(const char *s, struct sched_allow *out, struct kiln_err *err)
{
	char q[SCHED_QUOTE_MAX], pq[SCHED_QUOTE_MAX];
	size_t len = strnlen(s, SCHED_ALLOW_LEN_MAX + 1), mlen = len;
	const char *colon, *port = NULL;
	size_t plen = 0;
	int r;

	memset(out, 0, sizeof(*out));
	sched_quote(s, len, q);
	if (len > SCHED_ALLOW_LEN_MAX)
		return kiln_fail(err, EINVAL, "allow_net entry %s is over %u bytes", q, SCHED_ALLOW_LEN_MAX);
	if (strstr(s, "://"))
		return kiln_fail(err, EINVAL, "allow_net entry %s is a URL; give its host name, such as example.com", q);
	if (s[0] == '[') {
		/* The port follows the ]; the colons inside are the address's. */
		const char *close = memchr(s, ']', len);

		colon = close ? memchr(close, ':', len - (size_t)(close - s)) : NULL;
	} else {
		/* Two colons or more: a bare IPv6 address or range, which cannot take a port. */
		colon = memchr(s, ':', len);
		if (colon && memchr(colon + 1, ':', len - (size_t)(colon + 1 - s)))
			colon = NULL;
	}
	if (colon) {
		port = colon + 1;
		plen = len - (size_t)(port - s);
		mlen = (size_t)(colon - s);
	}

	if (mlen == 0) {
		r = 1;
	} else if (mlen == 1 && s[0] == '*') {
		out->kind = SCHED_ALLOW_ANY;
		r = 0;
	} else if (s[0] == '[') {
		r = bracket_parse(s, mlen, out, q, err);
	} else {
		r = cidr_parse(s, mlen, 0, out, q, err);
		if (r > 0 && !memchr(s, '/', mlen)) {
			if (mlen >= 2 && s[0] == '*' && s[1] == '.')
				r = host_parse(s + 2, mlen - 2, SCHED_ALLOW_WILD, out, q, err);
			else
				r = host_parse(s, mlen, SCHED_ALLOW_NAME, out, q, err);
		}
	}
	if (r > 0)
		r = kiln_fail(err, EINVAL, "allow_net entry %s is not %s", q, ENTRY_FORMS);
	if (r < 0) {
		memset(out, 0, sizeof(*out));
		return r;
	}
	if (port) {
		unsigned p = port_parse(port, plen);

		if (p == 0) {
			memset(out, 0, sizeof(*out));
			return kiln_fail(err, EINVAL, "allow_net entry %s: port %s is not 1-65535", q,
					 sched_quote(port, plen, pq));
		}
		out->port = (uint16_t)p;
	}
	return 0;
}

static int port_ok(const struct sched_allow *a, uint16_t port)
{
	return a->port == 0 || port == 0 || a->port == port;
}

int sched_allow_name(const struct sched_allow *list, size_t n, const char *host, uint16_t port)
{
	char name[SCHED_HOST_MAX + 1];
	size_t len = strnlen(host, SCHED_HOST_MAX + 2), i, hl;

	len = name_len(host, len);
	if (name_check(host, len) != NAME_OK)
		return 0;
	for (i = 0; i < len; i++)
		name[i] = (char)((host[i] >= 'A' && host[i] <= 'Z') ? host[i] - 'A' + 'a' : host[i]);
	name[len] = '\0';
	for (i = 0; i < n; i++) {
		const struct sched_allow *a = &list[i];

		if (!port_ok(a, port))
			continue;
		switch (a->kind) {
		case SCHED_ALLOW_ANY:
			return 1;
		case SCHED_ALLOW_NAME:
			if (strcmp(name, a->host) == 0)
				return 1;
			break;
		case SCHED_ALLOW_WILD:
			/* Below the domain: at least one label and a dot before it. */
			hl = strlen(a->host);
			if (len > hl + 1 && name[len - hl - 1] == '.' && strcmp(name + len - hl, a->host) == 0)
				return 1;
			break;
		case SCHED_ALLOW_CIDR:
			break;
		}
	}
	return 0;
}

static const uint8_t v4mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

int sched_allow_addr(const struct sched_allow *list, size_t n, int family, const void *addr, uint16_t port)
{
	const uint8_t *a6 = addr;
	size_t i;

	if (family != AF_INET && family != AF_INET6)
		return 0;
	for (i = 0; i < n; i++) {
		const struct sched_allow *a = &list[i];

		if (!port_ok(a, port))
			continue;
		if (a->kind == SCHED_ALLOW_ANY)
			return 1;
		if (a->kind != SCHED_ALLOW_CIDR)
			continue;
		if (a->family == family && addr_in(addr, a->addr, a->prefix))
			return 1;
		/* ::ffff:203.0.113.7 is the same host as 203.0.113.7. */
		if (a->family == AF_INET && family == AF_INET6 && memcmp(a6, v4mapped, 12) == 0 &&
		    addr_in(a6 + 12, a->addr, a->prefix))
			return 1;
	}
	return 0;
}

struct range {
	uint8_t net[16];
	unsigned prefix;
};

/* IPv4 ranges no sandbox reaches (RFC 6890's special-purpose registry, less documentation). */
static const struct range special4[] = {
	{ { 0 }, 8 },			/* "this network", 0.0.0.0 */
	{ { 10 }, 8 },			/* RFC 1918 */
	{ { 100, 64 }, 10 },		/* CGNAT, RFC 6598 */
	{ { 127 }, 8 },			/* loopback */
	{ { 169, 254 }, 16 },		/* link-local, the cloud metadata service */
	{ { 172, 16 }, 12 },		/* RFC 1918 */
	{ { 192, 0, 0 }, 24 },		/* IETF protocol assignments */
	{ { 192, 168 }, 16 },		/* RFC 1918 */
	{ { 198, 18 }, 15 },		/* benchmarking, RFC 2544 */
	{ { 224 }, 4 },			/* multicast */
	{ { 240 }, 4 },			/* reserved, and 255.255.255.255 */
};

/* IPv6 ranges refused outright. */
static const struct range special6[] = {
	{ { 0xfe, 0x80 }, 10 },				/* link-local */
	{ { 0xfc }, 7 },				/* unique local */
	{ { 0xff }, 8 },				/* multicast */
	{ { 0, 0x64, 0xff, 0x9b, 0, 1 }, 48 },		/* local-use NAT64, RFC 8215 */
};

/* IPv6 ranges that carry an IPv4 address in their last 32 bits: special if it is. */
static const struct range embed6[] = {
	{ { 0 }, 96 },							/* IPv4-compatible, ::, ::1 */
	{ { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff }, 96 },		/* IPv4-mapped */
	{ { 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0 }, 96 },		/* IPv4-translated, RFC 2765 */
	{ { 0, 0x64, 0xff, 0x9b }, 96 },				/* NAT64, RFC 6052 */
};

static int in_ranges(const uint8_t *addr, const struct range *r, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (addr_in(addr, r[i].net, r[i].prefix))
			return 1;
	return 0;
}

#define NRANGES(t) (sizeof(t) / sizeof((t)[0]))

int sched_addr_special(int family, const void *addr)
{
	const uint8_t *a = addr;

	if (family == AF_INET)
		return in_ranges(a, special4, NRANGES(special4));
	if (family != AF_INET6)
		return 1;	/* not an address this code knows: refuse */
	if (in_ranges(a, special6, NRANGES(special6)))
		return 1;
	if (in_ranges(a, embed6, NRANGES(embed6)))
		return in_ranges(a + 12, special4, NRANGES(special4));
	/* 6to4 (2002::/16) carries its IPv4 address in bits 16-47. */
	if (a[0] == 0x20 && a[1] == 0x02)
		return in_ranges(a + 2, special4, NRANGES(special4));
	return 0;
}
