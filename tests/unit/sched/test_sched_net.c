/*
 * A sandbox's network policy (scheduler/sched_net.h): allow_net entries as a
 * user writes them, what each lets through, and the addresses no entry
 * opens. The documentation ranges (192.0.2.0/24, 198.51.100.0/24,
 * 203.0.113.0/24, 2001:db8::/32) stand for the public internet.
 */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "sched_net.h"
#include "sched_unit.h"

static struct sched_allow parse_ok(const char *s)
{
	struct kiln_err err = { { 0 } };
	struct sched_allow a;

	ck_assert_msg(sched_allow_parse(s, &a, &err) == 0, "%s: %s", s, err.msg);
	return a;
}

/* The text form of a CIDR entry's address, for comparing with the table. */
static const char *cidr_text(const struct sched_allow *a, char *buf, size_t n)
{
	ck_assert_ptr_nonnull(inet_ntop(a->family, a->addr, buf, (socklen_t)n));
	return buf;
}

START_TEST(allow_parse_kinds)
{
	static const struct {
		const char *in;
		enum sched_allow_kind kind;
		const char *host;	/* NAME, WILD: host; CIDR: the address */
		int family;
		unsigned prefix;
		uint16_t port;
	} rows[] = {
		{ "*", SCHED_ALLOW_ANY, "", 0, 0, 0 },
		{ "*:443", SCHED_ALLOW_ANY, "", 0, 0, 443 },
		{ "example.com", SCHED_ALLOW_NAME, "example.com", 0, 0, 0 },
		{ "Example.COM.", SCHED_ALLOW_NAME, "example.com", 0, 0, 0 },
		{ "api.example.com:8443", SCHED_ALLOW_NAME, "api.example.com", 0, 0, 8443 },
		{ "example.com.:1", SCHED_ALLOW_NAME, "example.com", 0, 0, 1 },
		{ "localhost", SCHED_ALLOW_NAME, "localhost", 0, 0, 0 },
		{ "_srv.x-y.test:65535", SCHED_ALLOW_NAME, "_srv.x-y.test", 0, 0, 65535 },
		{ "1.example", SCHED_ALLOW_NAME, "1.example", 0, 0, 0 },
		{ "*.example.com", SCHED_ALLOW_WILD, "example.com", 0, 0, 0 },
		{ "*.Wild.Test.:80", SCHED_ALLOW_WILD, "wild.test", 0, 0, 80 },
		{ "*.com", SCHED_ALLOW_WILD, "com", 0, 0, 0 },
		{ "203.0.113.7", SCHED_ALLOW_CIDR, "203.0.113.7", AF_INET, 32, 0 },
		{ "203.0.113.7:443", SCHED_ALLOW_CIDR, "203.0.113.7", AF_INET, 32, 443 },
		{ "203.0.113.0/24", SCHED_ALLOW_CIDR, "203.0.113.0", AF_INET, 24, 0 },
		{ "203.0.113.77/24:00443", SCHED_ALLOW_CIDR, "203.0.113.0", AF_INET, 24, 443 },	/* host bits cleared */
		{ "198.51.100.255/25", SCHED_ALLOW_CIDR, "198.51.100.128", AF_INET, 25, 0 },
		{ "0.0.0.0/0", SCHED_ALLOW_CIDR, "0.0.0.0", AF_INET, 0, 0 },
		{ "192.0.2.1/0", SCHED_ALLOW_CIDR, "0.0.0.0", AF_INET, 0, 0 },
		{ "2001:db8::7", SCHED_ALLOW_CIDR, "2001:db8::7", AF_INET6, 128, 0 },
		{ "[2001:db8::7]", SCHED_ALLOW_CIDR, "2001:db8::7", AF_INET6, 128, 0 },
		{ "[2001:DB8::7]:443", SCHED_ALLOW_CIDR, "2001:db8::7", AF_INET6, 128, 443 },
		{ "2001:db8::ff/120", SCHED_ALLOW_CIDR, "2001:db8::", AF_INET6, 120, 0 },
		{ "2001:db8:ffff::/33", SCHED_ALLOW_CIDR, "2001:db8:8000::", AF_INET6, 33, 0 },
		{ "[2001:db8::/32]:53", SCHED_ALLOW_CIDR, "2001:db8::", AF_INET6, 32, 53 },
		{ "[2001:db8::]/32:53", SCHED_ALLOW_CIDR, "2001:db8::", AF_INET6, 32, 53 },
		{ "::/0", SCHED_ALLOW_CIDR, "::", AF_INET6, 0, 0 },
		{ "::ffff:203.0.113.7", SCHED_ALLOW_CIDR, "::ffff:203.0.113.7", AF_INET6, 128, 0 },
	};
	char buf[INET6_ADDRSTRLEN];
	int i;

	for (i = 0; i < ROWS(rows); i++) {
		struct sched_allow a = parse_ok(rows[i].in);

		ck_assert_msg(a.kind == rows[i].kind, "%s: kind %d", rows[i].in, a.kind);
		ck_assert_msg(a.port == rows[i].port, "%s: port %u", rows[i].in, a.port);
		if (a.kind == SCHED_ALLOW_CIDR) {
			ck_assert_msg(a.family == rows[i].family, "%s: family %d", rows[i].in, a.family);
			ck_assert_msg(a.prefix == rows[i].prefix, "%s: prefix %u", rows[i].in, a.prefix);
			ck_assert_str_eq(cidr_text(&a, buf, sizeof(buf)), rows[i].host);
		} else {
			ck_assert_str_eq(a.host, rows[i].host);
		}
	}
}
END_TEST

START_TEST(allow_parse_refused)
{
	static const struct {
		const char *in;
		const char *msg;
	} rows[] = {
		{ "", "allow_net entry \"\" is not " "a host name, *.domain, IP address or CIDR range (optionally with :PORT)" },
		{ "exa mple.com",
		  "allow_net entry \"exa mple.com\" is not a host name, *.domain, IP address or CIDR range (optionally with :PORT)" },
		{ "ex\x01" "ample.com",
		  "allow_net entry \"ex\\x01ample.com\" is not a host name, *.domain, IP address or CIDR range (optionally with :PORT)" },
		{ "http://example.com", "allow_net entry \"http://example.com\" is a URL; give its host name, such as example.com" },
		{ "example.com/24",
		  "allow_net entry \"example.com/24\" is not a host name, *.domain, IP address or CIDR range (optionally with :PORT)" },
		{ ":443", "allow_net entry \":443\" is not a host name, *.domain, IP address or CIDR range (optionally with :PORT)" },
		{ "a..b", "allow_net entry \"a..b\" has an empty label; labels are 1-63 bytes between single dots" },
		{ ".example.com", "allow_net entry \".example.com\" has an empty label; labels are 1-63 bytes between single dots" },
		{ "example.com..", "allow_net entry \"example.com..\" has an empty label; labels are 1-63 bytes between single dots" },
		{ ".", "allow_net entry \".\" has an empty label; labels are 1-63 bytes between single dots" },
		{ "*.", "allow_net entry \"*.\" has an empty label; labels are 1-63 bytes between single dots" },
		{ "*.example.com", NULL },	/* a control: valid */
		{ "**.example.com", "allow_net entry \"**.example.com\": * stands only for a whole first label, as in *.example.com, or alone" },
		{ "*example.com", "allow_net entry \"*example.com\": * stands only for a whole first label, as in *.example.com, or alone" },
		{ "a.*.example.com", "allow_net entry \"a.*.example.com\": * stands only for a whole first label, as in *.example.com, or alone" },
		{ "*.*.example.com", "allow_net entry \"*.*.example.com\": * stands only for a whole first label, as in *.example.com, or alone" },
		{ "example.*", "allow_net entry \"example.*\": * stands only for a whole first label, as in *.example.com, or alone" },
		{ "10.0.0.256", "allow_net entry \"10.0.0.256\" is not an IP address (and a host name's last label is not all digits)" },
		{ "1.2.3", "allow_net entry \"1.2.3\" is not an IP address (and a host name's last label is not all digits)" },
		{ "010.0.0.1", "allow_net entry \"010.0.0.1\" is not an IP address (and a host name's last label is not all digits)" },
		{ "example.com:0", "allow_net entry \"example.com:0\": port \"0\" is not 1-65535" },
		{ "example.com:65536", "allow_net entry \"example.com:65536\": port \"65536\" is not 1-65535" },
		{ "example.com:", "allow_net entry \"example.com:\": port \"\" is not 1-65535" },
		{ "example.com:+80", "allow_net entry \"example.com:+80\": port \"+80\" is not 1-65535" },
		{ "example.com:443x", "allow_net entry \"example.com:443x\": port \"443x\" is not 1-65535" },
		{ "example.com:4294967297", "allow_net entry \"example.com:4294967297\": port \"4294967297\" is not 1-65535" },
		{ "*:0", "allow_net entry \"*:0\": port \"0\" is not 1-65535" },
		{ "[2001:db8::7]:0", "allow_net entry \"[2001:db8::7]:0\": port \"0\" is not 1-65535" },
		{ "203.0.113.0/33", "allow_net entry \"203.0.113.0/33\": prefix /\"33\" is not 0-32 for an IPv4 range" },
		{ "203.0.113.0/", "allow_net entry \"203.0.113.0/\": prefix /\"\" is not 0-32 for an IPv4 range" },
		{ "203.0.113.0/-1", "allow_net entry \"203.0.113.0/-1\": prefix /\"-1\" is not 0-32 for an IPv4 range" },
		{ "203.0.113.0/1234", "allow_net entry \"203.0.113.0/1234\": prefix /\"1234\" is not 0-32 for an IPv4 range" },
		{ "203.0.113.0/24/8", "allow_net entry \"203.0.113.0/24/8\": prefix /\"24/8\" is not 0-32 for an IPv4 range" },
		{ "2001:db8::/129", "allow_net entry \"2001:db8::/129\": prefix /\"129\" is not 0-128 for an IPv6 range" },
		{ "[2001:db8::]/129:443", "allow_net entry \"[2001:db8::]/129:443\": prefix /\"129\" is not 0-128 for an IPv6 range" },
		{ "/24", "allow_net entry \"/24\" is not a host name, *.domain, IP address or CIDR range (optionally with :PORT)" },
		{ "[2001:db8::7", "allow_net entry \"[2001:db8::7\" has no closing ], as in [2001:db8::7]:443" },
		{ "[2001:db8::7]443", "allow_net entry \"[2001:db8::7]443\": only :PORT or /PREFIX may follow ], as in [2001:db8::7]:443" },
		{ "[203.0.113.7]:443", "allow_net entry \"[203.0.113.7]:443\": brackets hold an IPv6 address, as in [2001:db8::7]:443" },
		{ "[example.com]", "allow_net entry \"[example.com]\": brackets hold an IPv6 address, as in [2001:db8::7]:443" },
		{ "[]", "allow_net entry \"[]\": brackets hold an IPv6 address, as in [2001:db8::7]:443" },
		{ "2001:db8::7%eth0",
		  "allow_net entry \"2001:db8::7%eth0\" is not a host name, *.domain, IP address or CIDR range (optionally with :PORT)" },
		{ "2001:db8:::7",
		  "allow_net entry \"2001:db8:::7\" is not a host name, *.domain, IP address or CIDR range (optionally with :PORT)" },
		{ "a:b:c", "allow_net entry \"a:b:c\" is not a host name, *.domain, IP address or CIDR range (optionally with :PORT)" },
	};
	struct kiln_err err;
	struct sched_allow a;
	int i;

	for (i = 0; i < ROWS(rows); i++) {
		memset(&err, 0, sizeof(err));
		if (!rows[i].msg) {
			ck_assert_int_eq(sched_allow_parse(rows[i].in, &a, &err), 0);
			continue;
		}
		ck_assert_msg(sched_allow_parse(rows[i].in, &a, &err) == -EINVAL, "%s parsed", rows[i].in);
		ck_assert_str_eq(err.msg, rows[i].msg);
		assert_printable(err.msg);
	}
	/* A NULL err is fine. */
	ck_assert_int_eq(sched_allow_parse("a..b", &a, NULL), -EINVAL);
	ck_assert_int_eq(sched_allow_parse("exa mple", &a, NULL), -EINVAL);
}
END_TEST

/* Labels of up to 63 bytes, names of up to 253, entries of up to 261. */
START_TEST(allow_parse_lengths)
{
	char name[256], entry[400];
	struct kiln_err err = { { 0 } };
	struct sched_allow a;

	memset(name, 'a', 63);
	strcpy(name + 63, ".test");
	a = parse_ok(name);
	ck_assert_str_eq(a.host, name);
	memset(name, 'a', 64);
	strcpy(name + 64, ".test");
	ck_assert_int_eq(sched_allow_parse(name, &a, &err), -EINVAL);
	ck_assert_uint_eq(strncmp(err.msg, "allow_net entry \"aaaa", 21), 0);
	ck_assert_ptr_nonnull(strstr(err.msg, "\"... has a label over 63 bytes"));
	assert_printable(err.msg);

	/* 4 labels of 63 and one of 1: 253 bytes, the most a name holds. */
	memset(name, 'b', 253);
	name[63] = name[127] = name[191] = name[251] = '.';
	name[253] = '\0';
	a = parse_ok(name);
	ck_assert_uint_eq(strlen(a.host), 253);
	snprintf(entry, sizeof(entry), "*.%s.:65535", name);	/* 262 bytes */
	ck_assert_int_eq(sched_allow_parse(entry, &a, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "\"... is over 261 bytes"));
	snprintf(entry, sizeof(entry), "*.%s:65535", name);	/* 261 bytes */
	a = parse_ok(entry);
	ck_assert_int_eq(a.kind, SCHED_ALLOW_WILD);
	ck_assert_uint_eq(a.port, 65535);
	snprintf(entry, sizeof(entry), "%s.", name);		/* the trailing dot does not count */
	a = parse_ok(entry);
	ck_assert_uint_eq(strlen(a.host), 253);
	snprintf(entry, sizeof(entry), "c.%s", name);
	ck_assert_int_eq(sched_allow_parse(entry, &a, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "\"... names 255 bytes (a host name is at most 253)"));
	assert_printable(err.msg);
	memset(entry, 'x', 300);
	entry[300] = '\0';
	ck_assert_int_eq(sched_allow_parse(entry, &a, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "\"... is over 261 bytes"));
}
END_TEST

START_TEST(host_valid)
{
	static const struct {
		const char *in;
		int ok;
	} rows[] = {
		{ "example.com", 1 }, { "EXAMPLE.com.", 1 }, { "a", 1 }, { "_dmarc.x-y.test", 1 }, { "1.2.3.4", 1 },
		{ "", 0 }, { ".", 0 }, { "a..b", 0 }, { ".a", 0 }, { "a.b..", 0 }, { "*.a", 0 }, { "a b", 0 },
		{ "a:80", 0 }, { "[::1]", 0 }, { "caf\xc3\xa9.test", 0 }, { "a/b", 0 }, { "a\\b", 0 },
	};
	char name[300];
	int i;

	for (i = 0; i < ROWS(rows); i++)
		ck_assert_msg(sched_host_valid(rows[i].in) == rows[i].ok, "%s", rows[i].in);
	memset(name, 'a', 63);
	name[63] = '\0';
	ck_assert_int_eq(sched_host_valid(name), 1);
	memset(name, 'a', 64);
	name[64] = '\0';
	ck_assert_int_eq(sched_host_valid(name), 0);
	memset(name, 'a', 253);
	name[61] = name[123] = name[185] = name[247] = '.';
	name[253] = '\0';
	ck_assert_int_eq(sched_host_valid(name), 1);
	name[253] = '.';
	name[254] = '\0';
	ck_assert_int_eq(sched_host_valid(name), 1);
	name[253] = 'a';
	ck_assert_int_eq(sched_host_valid(name), 0);
	memset(name, 'a', 299);
	name[299] = '\0';
	ck_assert_int_eq(sched_host_valid(name), 0);
}
END_TEST

static size_t parse_list(const char *const *in, size_t n, struct sched_allow *out)
{
	size_t i;

	for (i = 0; i < n; i++)
		out[i] = parse_ok(in[i]);
	return n;
}

START_TEST(allow_name_match)
{
	static const char *const entries[] = { "exact.test", "*.wild.test", "Port.Test:443", "*.deep.test:8080" };
	static const struct {
		const char *host;
		uint16_t port;
		int ok;
	} rows[] = {
		{ "exact.test", 443, 1 }, { "EXACT.Test.", 80, 1 }, { "exact.test", 0, 1 },
		{ "a.exact.test", 443, 0 }, { "exact.test.evil", 443, 0 }, { "xexact.test", 443, 0 },
		{ "a.wild.test", 443, 1 }, { "x.y.wild.test", 1, 1 }, { "A.WILD.TEST.", 443, 1 },
		{ "wild.test", 443, 0 }, { "wild.test.evil", 443, 0 }, { "evilwild.test", 443, 0 },
		{ "a.wild.test.evil", 443, 0 }, { ".wild.test", 443, 0 }, { "a..wild.test", 443, 0 },
		{ "port.test", 443, 1 }, { "port.test", 80, 0 }, { "port.test", 0, 1 },
		{ "a.deep.test", 8080, 1 }, { "a.deep.test", 8081, 0 }, { "deep.test", 8080, 0 },
		{ "", 443, 0 }, { "exact.test..", 443, 0 }, { "exact test", 443, 0 }, { "*.wild.test", 443, 0 },
	};
	struct sched_allow list[ROWS(entries)];
	size_t n = parse_list(entries, ROWS(entries), list);
	int i;

	for (i = 0; i < ROWS(rows); i++)
		ck_assert_msg(sched_allow_name(list, n, rows[i].host, rows[i].port) == rows[i].ok, "%s:%u",
			      rows[i].host, rows[i].port);
	ck_assert_int_eq(sched_allow_name(list, 0, "exact.test", 443), 0);
	/* Names are not addresses: a CIDR entry opens no name, even one that reads as its address. */
	list[0] = parse_ok("203.0.113.7");
	ck_assert_int_eq(sched_allow_name(list, 1, "203.0.113.7", 443), 0);
	/* "*" opens every name, at its port if it has one. */
	list[0] = parse_ok("*");
	ck_assert_int_eq(sched_allow_name(list, 1, "anything.example", 22), 1);
	list[0] = parse_ok("*:443");
	ck_assert_int_eq(sched_allow_name(list, 1, "anything.example", 443), 1);
	ck_assert_int_eq(sched_allow_name(list, 1, "anything.example", 80), 0);
	ck_assert_int_eq(sched_allow_name(list, 1, "bad name", 443), 0);
}
END_TEST

struct addr {
	int family;
	uint8_t b[16];
};

static struct addr addr_of(const char *s)
{
	struct addr a = { 0 };

	a.family = strchr(s, ':') ? AF_INET6 : AF_INET;
	ck_assert_msg(inet_pton(a.family, s, a.b) == 1, "%s", s);
	return a;
}

static int allow_addr(const struct sched_allow *list, size_t n, const char *s, uint16_t port)
{
	struct addr a = addr_of(s);

	return sched_allow_addr(list, n, a.family, a.b, port);
}

START_TEST(allow_addr_match)
{
	static const char *const entries[] = { "203.0.113.0/24", "198.51.100.7:443", "2001:db8:1::/48",
					       "[2001:db8::7]:22", "example.com" };
	static const struct {
		const char *addr;
		uint16_t port;
		int ok;
	} rows[] = {
		{ "203.0.113.0", 80, 1 }, { "203.0.113.255", 80, 1 }, { "203.0.114.0", 80, 0 }, { "203.0.112.255", 80, 0 },
		{ "198.51.100.7", 443, 1 }, { "198.51.100.7", 80, 0 }, { "198.51.100.7", 0, 1 }, { "198.51.100.8", 443, 0 },
		{ "2001:db8:1::1", 443, 1 }, { "2001:db8:1:ffff:ffff:ffff:ffff:ffff", 1, 1 }, { "2001:db8:2::", 443, 0 },
		{ "2001:db8:0:ffff::", 443, 0 }, { "2001:db8::7", 22, 1 }, { "2001:db8::7", 23, 0 },
		{ "2001:db8::8", 22, 0 },
		/* The same host written as an IPv4-mapped IPv6 address. */
		{ "::ffff:203.0.113.9", 80, 1 }, { "::ffff:198.51.100.7", 443, 1 }, { "::ffff:192.0.2.1", 80, 0 },
		/* Not mapped: the NAT64 form is another address. */
		{ "64:ff9b::203.0.113.9", 80, 0 },
		{ "192.0.2.1", 80, 0 },
	};
	struct sched_allow list[ROWS(entries)];
	size_t n = parse_list(entries, ROWS(entries), list);
	uint8_t b[16] = { 0 };
	int i;

	for (i = 0; i < ROWS(rows); i++)
		ck_assert_msg(allow_addr(list, n, rows[i].addr, rows[i].port) == rows[i].ok, "%s:%u", rows[i].addr,
			      rows[i].port);
	ck_assert_int_eq(sched_allow_addr(list, n, AF_UNIX, b, 80), 0);
	ck_assert_int_eq(allow_addr(list, 0, "203.0.113.1", 80), 0);

	/* /0 takes its whole family, and only that family. */
	list[0] = parse_ok("0.0.0.0/0");
	ck_assert_int_eq(allow_addr(list, 1, "192.0.2.1", 1), 1);
	ck_assert_int_eq(allow_addr(list, 1, "255.255.255.255", 1), 1);
	ck_assert_int_eq(allow_addr(list, 1, "2001:db8::1", 1), 0);
	list[0] = parse_ok("::/0");
	ck_assert_int_eq(allow_addr(list, 1, "2001:db8::1", 1), 1);
	ck_assert_int_eq(allow_addr(list, 1, "192.0.2.1", 1), 0);
	/* Odd prefixes cut inside a byte. */
	list[0] = parse_ok("192.0.2.64/27");
	ck_assert_int_eq(allow_addr(list, 1, "192.0.2.64", 1), 1);
	ck_assert_int_eq(allow_addr(list, 1, "192.0.2.95", 1), 1);
	ck_assert_int_eq(allow_addr(list, 1, "192.0.2.63", 1), 0);
	ck_assert_int_eq(allow_addr(list, 1, "192.0.2.96", 1), 0);
	list[0] = parse_ok("2001:db8:8000::/33");
	ck_assert_int_eq(allow_addr(list, 1, "2001:db8:ffff::1", 1), 1);
	ck_assert_int_eq(allow_addr(list, 1, "2001:db8:7fff::1", 1), 0);
	/* "*" opens every address (sched_addr_special still refuses the special ones). */
	list[0] = parse_ok("*");
	ck_assert_int_eq(allow_addr(list, 1, "8.8.8.8", 53), 1);
	ck_assert_int_eq(allow_addr(list, 1, "2001:db8::1", 53), 1);
	list[0] = parse_ok("*:443");
	ck_assert_int_eq(allow_addr(list, 1, "8.8.8.8", 443), 1);
	ck_assert_int_eq(allow_addr(list, 1, "8.8.8.8", 53), 0);
	/* Name entries open no address. */
	list[0] = parse_ok("*.example.com");
	ck_assert_int_eq(allow_addr(list, 1, "8.8.8.8", 443), 0);
}
END_TEST

START_TEST(addr_special)
{
	static const struct {
		const char *addr;
		int special;
	} rows[] = {
		/* Each range's first and last address, and its neighbours outside. */
		{ "0.0.0.0", 1 }, { "0.255.255.255", 1 }, { "1.0.0.0", 0 },
		{ "9.255.255.255", 0 }, { "10.0.0.0", 1 }, { "10.255.255.255", 1 }, { "11.0.0.0", 0 },
		{ "100.63.255.255", 0 }, { "100.64.0.0", 1 }, { "100.127.255.255", 1 }, { "100.128.0.0", 0 },
		{ "126.255.255.255", 0 }, { "127.0.0.0", 1 }, { "127.0.0.1", 1 }, { "127.255.255.255", 1 }, { "128.0.0.0", 0 },
		{ "169.253.255.255", 0 }, { "169.254.0.0", 1 }, { "169.254.169.254", 1 }, { "169.254.255.255", 1 },
		{ "169.255.0.0", 0 },
		{ "172.15.255.255", 0 }, { "172.16.0.0", 1 }, { "172.31.255.255", 1 }, { "172.32.0.0", 0 },
		{ "191.255.255.255", 0 }, { "192.0.0.0", 1 }, { "192.0.0.255", 1 }, { "192.0.1.0", 0 },
		{ "192.167.255.255", 0 }, { "192.168.0.0", 1 }, { "192.168.255.255", 1 }, { "192.169.0.0", 0 },
		{ "198.17.255.255", 0 }, { "198.18.0.0", 1 }, { "198.19.255.255", 1 }, { "198.20.0.0", 0 },
		{ "223.255.255.255", 0 }, { "224.0.0.0", 1 }, { "239.255.255.255", 1 }, { "240.0.0.0", 1 },
		{ "255.255.255.255", 1 },
		/* The documentation ranges stand for the internet in tests: not special. */
		{ "192.0.2.0", 0 }, { "192.0.2.255", 0 }, { "198.51.100.7", 0 }, { "203.0.113.0", 0 }, { "203.0.113.7", 0 },
		{ "203.0.113.255", 0 }, { "8.8.8.8", 0 }, { "1.1.1.1", 0 },
		/* IPv6. */
		{ "::", 1 }, { "::1", 1 }, { "::2", 1 }, { "2001:db8::1", 0 }, { "2606:4700::1111", 0 },
		{ "fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 0 }, { "fe80::", 1 }, { "fe80::1", 1 },
		{ "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1 }, { "fec0::", 0 },
		{ "fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 0 }, { "fc00::", 1 }, { "fd12:3456::1", 1 },
		{ "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1 }, { "fe00::", 0 },
		{ "ff00::", 1 }, { "ff02::1", 1 }, { "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1 },
		{ "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 0 },
		/* IPv4 inside IPv6: mapped, compatible, translated, NAT64, 6to4. */
		{ "::ffff:10.0.0.1", 1 }, { "::ffff:127.0.0.1", 1 }, { "::ffff:169.254.169.254", 1 },
		{ "::ffff:203.0.113.7", 0 }, { "::ffff:8.8.8.8", 0 }, { "::ffff:0.0.0.0", 1 },
		{ "::10.0.0.1", 1 }, { "::127.0.0.1", 1 }, { "::203.0.113.7", 0 },
		{ "::ffff:0:192.168.1.1", 1 }, { "::ffff:0:203.0.113.7", 0 },
		{ "64:ff9b::a00:1", 1 }, { "64:ff9b::a9fe:a9fe", 1 }, { "64:ff9b::203.0.113.7", 0 },
		{ "64:ff9b::8.8.8.8", 0 }, { "64:ff9b:1::1", 1 }, { "64:ff9b:1:ffff::1", 1 },
		{ "2002:a00:1::", 1 }, { "2002:a9fe:a9fe::1", 1 }, { "2002:cb00:7107::1", 0 },
		{ "::fffe:10.0.0.1", 0 },	/* not a form that embeds IPv4 */
	};
	uint8_t b[16] = { 0 };
	int i;

	for (i = 0; i < ROWS(rows); i++) {
		struct addr a = addr_of(rows[i].addr);

		ck_assert_msg(sched_addr_special(a.family, a.b) == rows[i].special, "%s", rows[i].addr);
	}
	/* A family this code does not know is refused. */
	ck_assert_int_eq(sched_addr_special(AF_UNIX, b), 1);
}
END_TEST

TCase *tcase_sched_net(void)
{
	TCase *tc = tcase_create("net");

	tcase_add_test(tc, allow_parse_kinds);
	tcase_add_test(tc, allow_parse_refused);
	tcase_add_test(tc, allow_parse_lengths);
	tcase_add_test(tc, host_valid);
	tcase_add_test(tc, allow_name_match);
	tcase_add_test(tc, allow_addr_match);
	tcase_add_test(tc, addr_special);
	return tc;
}
