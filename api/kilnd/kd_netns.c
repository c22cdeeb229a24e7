/*
 * A network namespace per sandbox (kd_netns.h): made on the calling thread
 * only (unshare and setns act on one thread), so kilnd's other threads
 * never leave its own namespace, and this one always goes back to it.
 *
 * The policy, table inet kiln, as `nft list table inet kiln` prints it
 * (kt0 is KD_NET_TAP, 172.29.0.1 KD_NET_GW, 3128 KD_NET_PROXY_PORT, 53
 * KD_NET_DNS_PORT):
 *
 *	chain pre_filter {
 *		type filter hook prerouting priority mangle; policy accept;
 *		iifname != "kt0" accept
 *		meta nfproto != ipv4 drop		# all of the guest's IPv6
 *		udp dport 53 accept			# DNS, to whatever server
 *		meta l4proto != tcp drop		# ICMP, other UDP, the rest
 *		ip daddr 0.0.0.0/8 reject with tcp reset
 *		ip daddr 10.0.0.0/8 reject with tcp reset
 *		ip daddr 100.64.0.0/10 reject with tcp reset
 *		ip daddr 127.0.0.0/8 reject with tcp reset
 *		ip daddr 169.254.0.0/16 reject with tcp reset
 *		ip daddr 172.16.0.0/12 reject with tcp reset	# KD_NET_GW too
 *		ip daddr 192.168.0.0/16 reject with tcp reset
 *		ip daddr 224.0.0.0/3 reject with tcp reset	# multicast, 240/4, broadcast
 *	}
 *	chain pre_nat {
 *		type nat hook prerouting priority dstnat; policy accept;
 *		iifname "kt0" udp dport 53 redirect to :53
 *		iifname "kt0" meta l4proto tcp redirect to :3128
 *	}
 *	chain in {
 *		type filter hook input priority filter; policy drop;
 *		iifname "lo" accept
 *		ct state established,related accept
 *		iifname "kt0" tcp dport 3128 ct status dnat accept
 *		iifname "kt0" udp dport 53 accept
 *		iifname "kt0" meta l4proto tcp reject with tcp reset
 *	}
 *	chain fwd {
 *		type filter hook forward priority filter; policy drop;
 *	}
 *
 * The special ranges are refused before NAT, where the guest's destination
 * is still in the packet, so a connection there fails at once instead of
 * reaching the proxy (which refuses them too, sched_addr_special). TCP to
 * the gateway itself is among them: the guest reaches kilnd only through
 * the redirects. Rejecting from prerouting needs Linux 5.16, NAT chains in
 * an inet table 5.2; kd_netns_probe finds out at start.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_conntrack_common.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <libmnl/libmnl.h>
#include <libnftnl/chain.h>
#include <libnftnl/common.h>
#include <libnftnl/expr.h>
#include <libnftnl/rule.h>
#include <libnftnl/table.h>

#include "kd_netns.h"

#define NETNS_TABLE		"kiln"
#define NETNS_ACK_MS		5000	/* how long the kernel may take to answer netlink */
#define NETNS_LISTEN_BACKLOG	128
#define NFT_MSGS_MAX		64	/* messages in the one nftables batch */
#define NFT_BATCH_LIMIT		(32u << 10)

/* ---- rtnetlink ---------------------------------------------------------- */

static int rtnl_open(struct mnl_socket **out, struct kiln_err *err)
{
	struct timeval tv = { .tv_sec = NETNS_ACK_MS / 1000 };
	struct mnl_socket *nl = mnl_socket_open2(NETLINK_ROUTE, SOCK_CLOEXEC);
	int e;

	if (!nl)
		return kiln_fail(err, errno, "cannot open rtnetlink: %s", strerror(errno));
	if (mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0 ||
	    setsockopt(mnl_socket_get_fd(nl), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0) {
		e = errno;
		mnl_socket_close(nl);
		return kiln_fail(err, e, "cannot open rtnetlink: %s", strerror(e));
	}
	*out = nl;
	return 0;
}

/* Send one request that asks for an ack and wait for it. 0 or -errno (no message). */
static int rtnl_talk(struct mnl_socket *nl, struct nlmsghdr *nlh)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	unsigned portid = mnl_socket_get_portid(nl);
	uint32_t seq = nlh->nlmsg_seq;
	ssize_t len;
	int r;

	if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0)
		return -errno;
	do {
		len = mnl_socket_recvfrom(nl, buf, sizeof(buf));
		if (len < 0)
			return errno == EAGAIN ? -ETIMEDOUT : -errno;
		r = mnl_cb_run(buf, (size_t)len, seq, portid, NULL, NULL);
	} while (r > 0);
	return r < 0 ? -errno : 0;
}

/* Bring ifindex up. */
static int rtnl_link_up(struct mnl_socket *nl, unsigned ifindex, uint32_t seq)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
	struct ifinfomsg *ifi;

	nlh->nlmsg_type = RTM_NEWLINK;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
	nlh->nlmsg_seq = seq;
	ifi = mnl_nlmsg_put_extra_header(nlh, sizeof(*ifi));
	ifi->ifi_family = AF_UNSPEC;
	ifi->ifi_index = (int)ifindex;
	ifi->ifi_flags = IFF_UP;
	ifi->ifi_change = IFF_UP;
	return rtnl_talk(nl, nlh);
}

static int rtnl_addr_add(struct mnl_socket *nl, unsigned ifindex, struct in_addr addr, unsigned prefix,
			 uint32_t seq)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
	struct ifaddrmsg *ifa;
	struct in_addr brd = addr;

	brd.s_addr |= htonl(0xffffffffu >> prefix);
	nlh->nlmsg_type = RTM_NEWADDR;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK;
	nlh->nlmsg_seq = seq;
	ifa = mnl_nlmsg_put_extra_header(nlh, sizeof(*ifa));
	ifa->ifa_family = AF_INET;
	ifa->ifa_prefixlen = (unsigned char)prefix;
	ifa->ifa_scope = RT_SCOPE_UNIVERSE;
	ifa->ifa_index = ifindex;
	mnl_attr_put(nlh, IFA_LOCAL, sizeof(addr), &addr);
	mnl_attr_put(nlh, IFA_ADDRESS, sizeof(addr), &addr);
	mnl_attr_put(nlh, IFA_BROADCAST, sizeof(brd), &brd);
	return rtnl_talk(nl, nlh);
}

/* ---- the tap ------------------------------------------------------------ */

/* Make KD_NET_TAP persistent and owned by uid/gid; kiln-vmm attaches to it by name later. */
static int tap_create(uid_t uid, gid_t gid, struct kiln_err *err)
{
	struct ifreq ifr;
	int fd, e;

	fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		e = errno;
		return kiln_fail(err, e, "cannot create the sandbox's tap %s: /dev/net/tun: %s%s", KD_NET_TAP,
				 strerror(e), e == ENOENT || e == ENODEV || e == ENXIO ? " (modprobe tun)" : "");
	}
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", KD_NET_TAP);
	ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
	if (ioctl(fd, TUNSETIFF, &ifr) < 0 ||
	    ioctl(fd, TUNSETOWNER, (unsigned long)uid) < 0 ||
	    ioctl(fd, TUNSETGROUP, (unsigned long)gid) < 0 ||
	    ioctl(fd, TUNSETPERSIST, 1ul) < 0) {
		e = errno;
		close(fd);
		return kiln_fail(err, e, "cannot create the sandbox's tap %s: %s", KD_NET_TAP, strerror(e));
	}
	close(fd);
	return 0;
}

/*
 * No IPv6 on the tap, so the namespace sends the guest no router
 * solicitations or DAD probes; the guest's IPv6 is dropped by the table
 * anyway, so a kernel without IPv6 is fine. /proc/sys/net is the opening
 * thread's namespace, which is the sandbox's here.
 */
static void tap_no_ipv6(void)
{
	int fd = open("/proc/sys/net/ipv6/conf/" KD_NET_TAP "/disable_ipv6", O_WRONLY | O_CLOEXEC);

	if (fd < 0)
		return;
	if (write(fd, "1", 1) < 0) {
		/* best effort, see above */
	}
	close(fd);
}

/* lo up, the tap up at KD_NET_GW/KD_NET_PREFIX. */
static int links_setup(uid_t uid, gid_t gid, struct kiln_err *err)
{
	struct mnl_socket *nl = NULL;
	struct in_addr gw;
	unsigned lo, tap;
	int r;

	inet_pton(AF_INET, KD_NET_GW, &gw);
	r = rtnl_open(&nl, err);
	if (r < 0)
		return r;
	lo = if_nametoindex("lo");
	r = lo ? rtnl_link_up(nl, lo, 1) : -ENODEV;
	if (r < 0) {
		kiln_fail(err, -r, "cannot bring lo up: %s", strerror(-r));
		goto out;
	}
	r = tap_create(uid, gid, err);
	if (r < 0)
		goto out;
	tap = if_nametoindex(KD_NET_TAP);
	if (!tap) {
		r = kiln_fail(err, errno, "the sandbox's tap %s vanished: %s", KD_NET_TAP, strerror(errno));
		goto out;
	}
	tap_no_ipv6();
	r = rtnl_addr_add(nl, tap, gw, KD_NET_PREFIX, 2);
	if (r < 0) {
		kiln_fail(err, -r, "cannot give the tap %s the address %s/%d: %s", KD_NET_TAP, KD_NET_GW,
			  KD_NET_PREFIX, strerror(-r));
		goto out;
	}
	r = rtnl_link_up(nl, tap, 3);
	if (r < 0)
		kiln_fail(err, -r, "cannot bring the tap %s up: %s", KD_NET_TAP, strerror(-r));
out:
	mnl_socket_close(nl);
	return r;
}

/* ---- nftables ----------------------------------------------------------- */

/* One batch being built: its messages' seqs index what[] for the error. */
struct nft_batch {
	struct mnl_nlmsg_batch *b;
	uint32_t seq;			/* the next message's */
	const char *what[NFT_MSGS_MAX];
	int bad;			/* an allocation failed or the batch is full */
};

static struct nlmsghdr *nft_msg(struct nft_batch *nb, uint16_t type, uint16_t flags, const char *what)
{
	struct nlmsghdr *nlh;

	if (nb->bad || nb->seq >= NFT_MSGS_MAX - 1) {
		nb->bad = 1;
		return NULL;
	}
	nb->what[nb->seq] = what;
	nlh = nftnl_nlmsg_build_hdr(mnl_nlmsg_batch_current(nb->b), type, NFPROTO_INET, flags | NLM_F_ACK,
				    nb->seq++);
	return nlh;
}

static void nft_next(struct nft_batch *nb)
{
	if (!mnl_nlmsg_batch_next(nb->b))
		nb->bad = 1;
}

static void nft_table(struct nft_batch *nb, uint16_t type, uint16_t flags, const char *what)
{
	struct nftnl_table *t = nftnl_table_alloc();
	struct nlmsghdr *nlh;

	if (!t) {
		nb->bad = 1;
		return;
	}
	nftnl_table_set_str(t, NFTNL_TABLE_NAME, NETNS_TABLE);
	nlh = nft_msg(nb, type, flags, what);
	if (nlh) {
		nftnl_table_nlmsg_build_payload(nlh, t);
		nft_next(nb);
	}
	nftnl_table_free(t);
}

static void nft_chain(struct nft_batch *nb, const char *name, const char *type, int hook, int prio, int policy,
		      const char *what)
{
	struct nftnl_chain *c = nftnl_chain_alloc();
	struct nlmsghdr *nlh;

	if (!c) {
		nb->bad = 1;
		return;
	}
	nftnl_chain_set_str(c, NFTNL_CHAIN_TABLE, NETNS_TABLE);
	nftnl_chain_set_str(c, NFTNL_CHAIN_NAME, name);
	nftnl_chain_set_str(c, NFTNL_CHAIN_TYPE, type);
	nftnl_chain_set_u32(c, NFTNL_CHAIN_HOOKNUM, (uint32_t)hook);
	nftnl_chain_set_s32(c, NFTNL_CHAIN_PRIO, prio);
	nftnl_chain_set_u32(c, NFTNL_CHAIN_POLICY, (uint32_t)policy);
	nlh = nft_msg(nb, NFT_MSG_NEWCHAIN, NLM_F_CREATE, what);
	if (nlh) {
		nftnl_chain_nlmsg_build_payload(nlh, c);
		nft_next(nb);
	}
	nftnl_chain_free(c);
}

/* A rule under construction; any failed allocation marks it bad. */
struct nft_rule {
	struct nftnl_rule *r;
	int bad;
};

static struct nftnl_expr *rule_expr(struct nft_rule *nr, const char *name)
{
	struct nftnl_expr *e = nftnl_expr_alloc(name);

	if (!e)
		nr->bad = 1;
	else
		nftnl_rule_add_expr(nr->r, e);
	return e;
}

static void rule_meta(struct nft_rule *nr, uint32_t key)
{
	struct nftnl_expr *e = rule_expr(nr, "meta");

	if (e) {
		nftnl_expr_set_u32(e, NFTNL_EXPR_META_KEY, key);
		nftnl_expr_set_u32(e, NFTNL_EXPR_META_DREG, NFT_REG_1);
	}
}

static void rule_cmp(struct nft_rule *nr, uint32_t op, const void *data, uint32_t len)
{
	struct nftnl_expr *e = rule_expr(nr, "cmp");

	if (e) {
		nftnl_expr_set_u32(e, NFTNL_EXPR_CMP_SREG, NFT_REG_1);
		nftnl_expr_set_u32(e, NFTNL_EXPR_CMP_OP, op);
		nftnl_expr_set(e, NFTNL_EXPR_CMP_DATA, data, len);
	}
}

static void rule_payload(struct nft_rule *nr, uint32_t base, uint32_t offset, uint32_t len)
{
	struct nftnl_expr *e = rule_expr(nr, "payload");

	if (e) {
		nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_DREG, NFT_REG_1);
		nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_BASE, base);
		nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_OFFSET, offset);
		nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_LEN, len);
	}
}

/* reg1 &= mask (len bytes), for a CIDR or a set of flag bits. */
static void rule_and(struct nft_rule *nr, const void *mask, uint32_t len)
{
	struct nftnl_expr *e = rule_expr(nr, "bitwise");
	static const uint8_t zero[16];

	if (e) {
		nftnl_expr_set_u32(e, NFTNL_EXPR_BITWISE_SREG, NFT_REG_1);
		nftnl_expr_set_u32(e, NFTNL_EXPR_BITWISE_DREG, NFT_REG_1);
		nftnl_expr_set_u32(e, NFTNL_EXPR_BITWISE_LEN, len);
		nftnl_expr_set(e, NFTNL_EXPR_BITWISE_MASK, mask, len);
		nftnl_expr_set(e, NFTNL_EXPR_BITWISE_XOR, zero, len);
	}
}

/* iifname OP name */
static void rule_iifname(struct nft_rule *nr, uint32_t op, const char *name)
{
	char ifname[IFNAMSIZ] = { 0 };

	snprintf(ifname, sizeof(ifname), "%s", name);
	rule_meta(nr, NFT_META_IIFNAME);
	rule_cmp(nr, op, ifname, sizeof(ifname));
}

/* meta nfproto/l4proto OP v */
static void rule_meta_u8(struct nft_rule *nr, uint32_t key, uint32_t op, uint8_t v)
{
	rule_meta(nr, key);
	rule_cmp(nr, op, &v, sizeof(v));
}

/* tcp/udp dport port (with the l4proto match it depends on) */
static void rule_dport(struct nft_rule *nr, uint8_t proto, uint16_t port)
{
	uint16_t p = htons(port);

	rule_meta_u8(nr, NFT_META_L4PROTO, NFT_CMP_EQ, proto);
	rule_payload(nr, NFT_PAYLOAD_TRANSPORT_HEADER, 2, sizeof(p));
	rule_cmp(nr, NFT_CMP_EQ, &p, sizeof(p));
}

/*
 * ip daddr net/prefix. The nfproto match only repeats what the chain has
 * checked already, but without it nft prints "@nh,128,32 & ..." instead.
 */
static void rule_daddr(struct nft_rule *nr, const char *net, unsigned prefix)
{
	struct in_addr a;
	uint32_t mask = prefix ? htonl(0xffffffffu << (32 - prefix)) : 0;

	inet_pton(AF_INET, net, &a);
	rule_meta_u8(nr, NFT_META_NFPROTO, NFT_CMP_EQ, NFPROTO_IPV4);
	rule_payload(nr, NFT_PAYLOAD_NETWORK_HEADER, 16, sizeof(a));
	if (prefix < 32)
		rule_and(nr, &mask, sizeof(mask));
	rule_cmp(nr, NFT_CMP_EQ, &a, sizeof(a));
}

/* ct state/status & bits != 0 */
static void rule_ct_any(struct nft_rule *nr, uint32_t key, uint32_t bits)
{
	struct nftnl_expr *e = rule_expr(nr, "ct");
	uint32_t zero = 0;

	if (e) {
		nftnl_expr_set_u32(e, NFTNL_EXPR_CT_KEY, key);
		nftnl_expr_set_u32(e, NFTNL_EXPR_CT_DREG, NFT_REG_1);
	}
	rule_and(nr, &bits, sizeof(bits));
	rule_cmp(nr, NFT_CMP_NEQ, &zero, sizeof(zero));
}

static void rule_verdict(struct nft_rule *nr, int verdict)
{
	struct nftnl_expr *e = rule_expr(nr, "immediate");

	if (e) {
		nftnl_expr_set_u32(e, NFTNL_EXPR_IMM_DREG, NFT_REG_VERDICT);
		nftnl_expr_set_u32(e, NFTNL_EXPR_IMM_VERDICT, (uint32_t)verdict);
	}
}

static void rule_tcp_reset(struct nft_rule *nr)
{
	struct nftnl_expr *e = rule_expr(nr, "reject");

	if (e) {
		nftnl_expr_set_u32(e, NFTNL_EXPR_REJECT_TYPE, NFT_REJECT_TCP_RST);
		nftnl_expr_set_u8(e, NFTNL_EXPR_REJECT_CODE, 0);
	}
}

/* redirect to :port (to the address of the interface it came in on) */
static void rule_redirect(struct nft_rule *nr, uint16_t port)
{
	struct nftnl_expr *e = rule_expr(nr, "immediate");
	uint16_t p = htons(port);

	if (e) {
		nftnl_expr_set_u32(e, NFTNL_EXPR_IMM_DREG, NFT_REG_1);
		nftnl_expr_set(e, NFTNL_EXPR_IMM_DATA, &p, sizeof(p));
	}
	e = rule_expr(nr, "redir");
	if (e)
		nftnl_expr_set_u32(e, NFTNL_EXPR_REDIR_REG_PROTO_MIN, NFT_REG_1);
}

static void rule_begin(struct nft_rule *nr, struct nft_batch *nb, const char *chain)
{
	nr->bad = 0;
	nr->r = nftnl_rule_alloc();
	if (!nr->r) {
		nr->bad = 1;
		nb->bad = 1;
		return;
	}
	nftnl_rule_set_str(nr->r, NFTNL_RULE_TABLE, NETNS_TABLE);
	nftnl_rule_set_str(nr->r, NFTNL_RULE_CHAIN, chain);
	nftnl_rule_set_u32(nr->r, NFTNL_RULE_FAMILY, NFPROTO_INET);
}

/* Append the rule to its chain in the batch; what is its nft text, for errors. */
static void rule_end(struct nft_rule *nr, struct nft_batch *nb, const char *what)
{
	struct nlmsghdr *nlh;

	if (!nr->r)
		return;
	if (nr->bad)
		nb->bad = 1;
	else if ((nlh = nft_msg(nb, NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, what))) {
		nftnl_rule_nlmsg_build_payload(nlh, nr->r);
		nft_next(nb);
	}
	nftnl_rule_free(nr->r);
	nr->r = NULL;
}

/* Where the guest's TCP may not go: refused before NAT (see the top of the file). */
static const struct {
	const char *net;
	unsigned prefix;
	const char *what;
} netns_special[] = {
	{ "0.0.0.0", 8, "pre_filter: ip daddr 0.0.0.0/8 reject with tcp reset" },
	{ "10.0.0.0", 8, "pre_filter: ip daddr 10.0.0.0/8 reject with tcp reset" },
	{ "100.64.0.0", 10, "pre_filter: ip daddr 100.64.0.0/10 reject with tcp reset" },
	{ "127.0.0.0", 8, "pre_filter: ip daddr 127.0.0.0/8 reject with tcp reset" },
	{ "169.254.0.0", 16, "pre_filter: ip daddr 169.254.0.0/16 reject with tcp reset" },
	{ "172.16.0.0", 12, "pre_filter: ip daddr 172.16.0.0/12 reject with tcp reset" },
	{ "192.168.0.0", 16, "pre_filter: ip daddr 192.168.0.0/16 reject with tcp reset" },
	{ "224.0.0.0", 3, "pre_filter: ip daddr 224.0.0.0/3 reject with tcp reset" },
};

/* The table's chains and rules, as the comment at the top of the file lists them. */
static void nft_policy(struct nft_batch *nb)
{
	struct nft_rule nr;

	nft_chain(nb, "pre_filter", "filter", NF_INET_PRE_ROUTING, -150, NF_ACCEPT, "chain pre_filter");
	nft_chain(nb, "pre_nat", "nat", NF_INET_PRE_ROUTING, -100, NF_ACCEPT, "chain pre_nat (nat)");
	nft_chain(nb, "in", "filter", NF_INET_LOCAL_IN, 0, NF_DROP, "chain in");
	nft_chain(nb, "fwd", "filter", NF_INET_FORWARD, 0, NF_DROP, "chain fwd");

	rule_begin(&nr, nb, "pre_filter");
	rule_iifname(&nr, NFT_CMP_NEQ, KD_NET_TAP);
	rule_verdict(&nr, NF_ACCEPT);
	rule_end(&nr, nb, "pre_filter: iifname != " KD_NET_TAP " accept");

	rule_begin(&nr, nb, "pre_filter");
	rule_meta_u8(&nr, NFT_META_NFPROTO, NFT_CMP_NEQ, NFPROTO_IPV4);
	rule_verdict(&nr, NF_DROP);
	rule_end(&nr, nb, "pre_filter: meta nfproto != ipv4 drop");

	rule_begin(&nr, nb, "pre_filter");
	rule_dport(&nr, IPPROTO_UDP, 53);
	rule_verdict(&nr, NF_ACCEPT);
	rule_end(&nr, nb, "pre_filter: udp dport 53 accept");

	rule_begin(&nr, nb, "pre_filter");
	rule_meta_u8(&nr, NFT_META_L4PROTO, NFT_CMP_NEQ, IPPROTO_TCP);
	rule_verdict(&nr, NF_DROP);
	rule_end(&nr, nb, "pre_filter: meta l4proto != tcp drop");

	for (size_t i = 0; i < sizeof(netns_special) / sizeof(netns_special[0]); i++) {
		rule_begin(&nr, nb, "pre_filter");
		rule_daddr(&nr, netns_special[i].net, netns_special[i].prefix);
		rule_tcp_reset(&nr);
		rule_end(&nr, nb, netns_special[i].what);
	}

	rule_begin(&nr, nb, "pre_nat");
	rule_iifname(&nr, NFT_CMP_EQ, KD_NET_TAP);
	rule_dport(&nr, IPPROTO_UDP, 53);
	rule_redirect(&nr, KD_NET_DNS_PORT);
	rule_end(&nr, nb, "pre_nat: udp dport 53 redirect (nft_redir)");

	rule_begin(&nr, nb, "pre_nat");
	rule_iifname(&nr, NFT_CMP_EQ, KD_NET_TAP);
	rule_meta_u8(&nr, NFT_META_L4PROTO, NFT_CMP_EQ, IPPROTO_TCP);
	rule_redirect(&nr, KD_NET_PROXY_PORT);
	rule_end(&nr, nb, "pre_nat: meta l4proto tcp redirect (nft_redir)");

	rule_begin(&nr, nb, "in");
	rule_iifname(&nr, NFT_CMP_EQ, "lo");
	rule_verdict(&nr, NF_ACCEPT);
	rule_end(&nr, nb, "in: iifname lo accept");

	rule_begin(&nr, nb, "in");
	rule_ct_any(&nr, NFT_CT_STATE, NF_CT_STATE_BIT(IP_CT_ESTABLISHED) | NF_CT_STATE_BIT(IP_CT_RELATED));
	rule_verdict(&nr, NF_ACCEPT);
	rule_end(&nr, nb, "in: ct state established,related accept (nft_ct)");

	rule_begin(&nr, nb, "in");
	rule_iifname(&nr, NFT_CMP_EQ, KD_NET_TAP);
	rule_dport(&nr, IPPROTO_TCP, KD_NET_PROXY_PORT);
	rule_ct_any(&nr, NFT_CT_STATUS, IPS_DST_NAT);
	rule_verdict(&nr, NF_ACCEPT);
	rule_end(&nr, nb, "in: tcp dport proxy ct status dnat accept");

	rule_begin(&nr, nb, "in");
	rule_iifname(&nr, NFT_CMP_EQ, KD_NET_TAP);
	rule_dport(&nr, IPPROTO_UDP, KD_NET_DNS_PORT);
	rule_verdict(&nr, NF_ACCEPT);
	rule_end(&nr, nb, "in: udp dport dns accept");

	rule_begin(&nr, nb, "in");
	rule_iifname(&nr, NFT_CMP_EQ, KD_NET_TAP);
	rule_meta_u8(&nr, NFT_META_L4PROTO, NFT_CMP_EQ, IPPROTO_TCP);
	rule_tcp_reset(&nr);
	rule_end(&nr, nb, "in: meta l4proto tcp reject with tcp reset");
}

/* Read acks until the last message's, or the first error. 0 or -errno with err naming the step. */
static int nft_acks(struct mnl_socket *nl, struct nft_batch *nb, uint32_t last, struct kiln_err *err)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	unsigned portid = mnl_socket_get_portid(nl);
	struct nlmsghdr *nlh;
	ssize_t len;
	int left;

	for (;;) {
		len = mnl_socket_recvfrom(nl, buf, sizeof(buf));
		if (len < 0) {
			int e = errno == EAGAIN ? ETIMEDOUT : errno;

			return kiln_fail(err, e, "cannot install the nftables table inet %s: waiting for the kernel: %s",
					 NETNS_TABLE, strerror(e));
		}
		nlh = (struct nlmsghdr *)buf;
		left = (int)len;
		for (; mnl_nlmsg_ok(nlh, left); nlh = mnl_nlmsg_next(nlh, &left)) {
			uint32_t seq = nlh->nlmsg_seq;

			/* One message at a time: mnl_cb_run stops at the first ack. */
			if (mnl_cb_run(nlh, nlh->nlmsg_len, 0, portid, NULL, NULL) < 0) {
				int e = errno;
				const char *what = seq < NFT_MSGS_MAX && nb->what[seq] ? nb->what[seq] : "the batch";

				return kiln_fail(err, e, "cannot install the nftables table inet %s: %s: %s%s", NETNS_TABLE,
						 what, strerror(e),
						 e == EOPNOTSUPP || e == ENOENT ? " (this kernel lacks part of nf_tables: it needs Linux 5.16 or later with nft_chain_nat, nft_redir, nft_reject_inet and nft_ct)" : "");
			}
			if (nlh->nlmsg_type == NLMSG_ERROR && seq == last)
				return 0;
		}
	}
}

/*
 * Install the table in the current namespace as one transaction. replace:
 * whatever table of that name is there goes in the same transaction (the
 * add-delete-add idiom, which needs no kernel's "destroy").
 */
static int nft_install(int replace, struct kiln_err *err)
{
	struct nft_batch nb = { .seq = 1 };
	struct mnl_socket *nl = NULL;
	struct timeval tv = { .tv_sec = NETNS_ACK_MS / 1000 };
	char *buf;
	uint32_t last;
	int r, e;

	buf = malloc(2 * NFT_BATCH_LIMIT);
	if (!buf || !(nb.b = mnl_nlmsg_batch_start(buf, NFT_BATCH_LIMIT))) {
		free(buf);
		return kiln_fail(err, ENOMEM, "cannot install the nftables table inet %s: out of memory", NETNS_TABLE);
	}
	nftnl_batch_begin(mnl_nlmsg_batch_current(nb.b), nb.seq++);
	nft_next(&nb);
	if (replace) {
		nft_table(&nb, NFT_MSG_NEWTABLE, NLM_F_CREATE, "table (to replace it)");
		nft_table(&nb, NFT_MSG_DELTABLE, 0, "deleting the old table");
	}
	nft_table(&nb, NFT_MSG_NEWTABLE, NLM_F_CREATE, "table");
	nft_policy(&nb);
	last = nb.seq - 1;
	if (!nb.bad) {
		nftnl_batch_end(mnl_nlmsg_batch_current(nb.b), nb.seq++);
		nft_next(&nb);
	}
	if (nb.bad) {
		r = kiln_fail(err, ENOMEM, "cannot install the nftables table inet %s: cannot build the batch (out of memory, or too big)",
			      NETNS_TABLE);
		goto out;
	}
	nl = mnl_socket_open2(NETLINK_NETFILTER, SOCK_CLOEXEC);
	if (!nl || mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0 ||
	    setsockopt(mnl_socket_get_fd(nl), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0) {
		e = errno;
		r = kiln_fail(err, e, "cannot install the nftables table inet %s: netlink: %s%s", NETNS_TABLE,
			      strerror(e), e == EPROTONOSUPPORT ? " (modprobe nf_tables)" : "");
		goto out;
	}
	if (mnl_socket_sendto(nl, mnl_nlmsg_batch_head(nb.b), mnl_nlmsg_batch_size(nb.b)) < 0) {
		e = errno;
		r = kiln_fail(err, e, "cannot install the nftables table inet %s: sending the batch: %s", NETNS_TABLE,
			      strerror(e));
		goto out;
	}
	r = nft_acks(nl, &nb, last, err);
out:
	if (nl)
		mnl_socket_close(nl);
	mnl_nlmsg_batch_stop(nb.b);
	free(buf);
	return r;
}

/* ---- the sockets -------------------------------------------------------- */

static int sock_bound(int type, uint16_t port, const char *what, struct kiln_err *err)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
	int one = 1, fd, e;

	inet_pton(AF_INET, KD_NET_GW, &sa.sin_addr);
	fd = socket(AF_INET, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return kiln_fail(err, errno, "cannot make the sandbox's %s socket: %s", what, strerror(errno));
	if ((type == SOCK_STREAM && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0) ||
	    bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    (type == SOCK_STREAM && listen(fd, NETNS_LISTEN_BACKLOG) < 0)) {
		e = errno;
		close(fd);
		return kiln_fail(err, e, "cannot bind the sandbox's %s socket to %s:%u: %s", what, KD_NET_GW, port,
				 strerror(e));
	}
	return fd;
}

/* Both sockets, in the current namespace, into n. */
static int socks_open(struct kd_netns *n, struct kiln_err *err)
{
	n->tcp_fd = sock_bound(SOCK_STREAM, KD_NET_PROXY_PORT, "proxy (TCP)", err);
	if (n->tcp_fd < 0)
		return n->tcp_fd;
	n->udp_fd = sock_bound(SOCK_DGRAM, KD_NET_DNS_PORT, "resolver (UDP)", err);
	return n->udp_fd < 0 ? n->udp_fd : 0;
}

/* ---- entering and leaving ----------------------------------------------- */

static int ns_open_self(struct kiln_err *err)
{
	int fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return kiln_fail(err, errno, "cannot open /proc/thread-self/ns/net: %s", strerror(errno));
	return fd;
}

/*
 * Back to kilnd's namespace. If that fails this thread stays in a sandbox's
 * namespace, and what it does next (a bind, a connect) would happen there:
 * the caller must treat the thread as lost, so the message says so.
 */
static int ns_return(int home, int r, struct kiln_err *err)
{
	if (setns(home, CLONE_NEWNET) < 0) {
		int e = errno;

		r = kiln_fail(err, e, "cannot return to kilnd's own network namespace: setns: %s; this thread is stuck in a sandbox's namespace (fatal: restart kilnd)",
			      strerror(e));
	}
	close(home);
	return r;
}

static const char *hint(int r)
{
	return r == -EPERM || r == -EACCES ? " (run kilnd as root: it needs CAP_NET_ADMIN)" : "";
}

/* kd_netns_create's work; err without the "kilnd: " and the hint. */
static int netns_create(struct kd_netns *n, uid_t uid, gid_t gid, struct kiln_err *err)
{
	int home, r;

	n->nsfd = n->tcp_fd = n->udp_fd = -1;
	home = ns_open_self(err);
	if (home < 0)
		return home;
	if (unshare(CLONE_NEWNET) < 0) {
		r = kiln_fail(err, errno, "cannot make a network namespace: unshare: %s", strerror(errno));
		close(home);
		return r;
	}
	n->nsfd = ns_open_self(err);
	r = n->nsfd < 0 ? n->nsfd : links_setup(uid, gid, err);
	if (r == 0)
		r = nft_install(0, err);
	if (r == 0)
		r = socks_open(n, err);
	r = ns_return(home, r, err);
	if (r < 0)
		kd_netns_close(n);
	return r;
}

int kd_netns_create(struct kd_netns *n, uid_t uid, gid_t gid, struct kiln_err *err)
{
	int r = netns_create(n, uid, gid, err);

	if (r < 0) {
		kiln_err_prefix(err, r, "kilnd");
		if (err && *hint(r))
			snprintf(err->msg + strlen(err->msg), sizeof(err->msg) - strlen(err->msg), "%s", hint(r));
	}
	return r;
}

int kd_netns_adopt(struct kd_netns *n, pid_t pid, struct kiln_err *err)
{
	char path[64];
	struct stat ours, theirs;
	int home, r;

	n->nsfd = n->tcp_fd = n->udp_fd = -1;
	snprintf(path, sizeof(path), "/proc/%d/ns/net", (int)pid);
	n->nsfd = open(path, O_RDONLY | O_CLOEXEC);
	if (n->nsfd < 0)
		return kiln_fail(err, errno, "kilnd: cannot find the network namespace of VMM %d: %s: %s", (int)pid,
				 path, strerror(errno));
	home = ns_open_self(err);
	if (home < 0) {
		kd_netns_close(n);
		return kiln_err_prefix(err, home, "kilnd");
	}
	/* Never program the host's own namespace: the table's input policy is drop. */
	if (fstat(home, &ours) < 0 || fstat(n->nsfd, &theirs) < 0 ||
	    (ours.st_dev == theirs.st_dev && ours.st_ino == theirs.st_ino)) {
		close(home);
		kd_netns_close(n);
		return kiln_fail(err, ESRCH, "kilnd: VMM %d is in kilnd's own network namespace, not a sandbox's (not a kiln VMM, or one started without a network)",
				 (int)pid);
	}
	if (setns(n->nsfd, CLONE_NEWNET) < 0) {
		int e = errno;

		r = kiln_fail(err, e, "kilnd: cannot enter the network namespace of VMM %d: setns: %s%s", (int)pid,
			      strerror(e), hint(-e));
		close(home);
		kd_netns_close(n);
		return r;
	}
	if (!if_nametoindex(KD_NET_TAP))
		r = kiln_fail(err, ENODEV, "the network namespace of VMM %d has no tap %s (not a sandbox's)", (int)pid,
			      KD_NET_TAP);
	else
		r = nft_install(1, err);
	if (r == 0)
		r = socks_open(n, err);
	r = ns_return(home, r, err);
	if (r < 0) {
		kd_netns_close(n);
		kiln_err_prefix(err, r, "kilnd");
	}
	return r;
}

int kd_netns_probe(struct kiln_err *err)
{
	struct kd_netns n;
	struct kiln_err why = { "" };
	int r = netns_create(&n, getuid(), getgid(), &why);

	if (r < 0)
		return kiln_fail(err, -r, "kilnd: sandboxes get no network: %s; run kilnd as root (CAP_NET_ADMIN) with the tun and nf_tables modules",
				 why.msg);
	kd_netns_close(&n);
	return 0;
}

void kd_netns_close(struct kd_netns *n)
{
	int *fds[] = { &n->tcp_fd, &n->udp_fd, &n->nsfd };

	for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
		if (*fds[i] >= 0)
			close(*fds[i]);
		*fds[i] = -1;
	}
}
