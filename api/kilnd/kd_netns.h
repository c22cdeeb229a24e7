/*
 * A network namespace per sandbox (issue 16). Every guest sees the same
 * network, so one template restores into any sandbox unchanged: eth0
 * KD_NET_GUEST/30, gateway KD_NET_GW (kilnd's end, the tap "kt0" in the
 * sandbox's namespace). Nothing in the namespace routes anywhere: the
 * nftables table "kiln" (programmed through libnftnl and libmnl, no nft
 * binary) redirects the guest's DNS to a UDP socket of kilnd's and every
 * TCP connection to kilnd's egress proxy, both bound inside the namespace
 * at KD_NET_GW; everything else from the guest is dropped (TCP to special
 * addresses reset at once), and IPv6 from the guest is dropped whole.
 *
 * The namespace lives while anything holds it: kilnd's descriptors and the
 * VMM, which runs inside it (kd_vmm_spawn setns()s into nsfd). When both
 * are gone the kernel removes it with its tap, rules and conntrack entries,
 * so nothing is left behind even if kilnd is killed.
 */
#ifndef KILN_KD_NETNS_H
#define KILN_KD_NETNS_H

#include <sys/types.h>

#include "err.h"

#define KD_NET_TAP		"kt0"
#define KD_NET_GUEST		"172.29.0.2"
#define KD_NET_GW		"172.29.0.1"
#define KD_NET_PREFIX		30
#define KD_NET_PROXY_PORT	3128	/* where the guest's TCP is redirected, on KD_NET_GW */
#define KD_NET_DNS_PORT		53
/* The guest's kernel command line for it: kiln.net=ADDR/PREFIX,GATEWAY */
#define KD_NET_CMDLINE		"kiln.net=" KD_NET_GUEST "/30," KD_NET_GW

struct kd_netns {
	int nsfd;		/* the namespace (open /proc/thread-self/ns/net); -1 none */
	int tcp_fd;		/* the proxy's listening socket in it, or -1 once handed over */
	int udp_fd;		/* the resolver's socket in it, or -1 once handed over */
};

/*
 * Can this process make sandbox namespaces (CAP_NET_ADMIN, tun, nf_tables)?
 * Tries once, for real, and undoes it. 0, or -errno with err saying what is
 * missing and the fix ("run kilnd as root").
 */
int kd_netns_probe(struct kiln_err *err);

/*
 * A new namespace: lo up, tap KD_NET_TAP (persistent, IFF_TAP|IFF_NO_PI|
 * IFF_VNET_HDR, owned by uid/gid) up at KD_NET_GW/30, the nftables table,
 * and the two sockets bound in it. The calling thread is back in its own
 * namespace on return, success or not. 0, or -errno with err.
 */
int kd_netns_create(struct kd_netns *n, uid_t uid, gid_t gid, struct kiln_err *err);

/*
 * After a kilnd restart: the namespace a running VMM (pid) is in, with new
 * sockets bound in it (the old ones died with the old kilnd). 0 or -errno.
 */
int kd_netns_adopt(struct kd_netns *n, pid_t pid, struct kiln_err *err);

/* Close what is still held (nsfd, and the sockets unless handed over). */
void kd_netns_close(struct kd_netns *n);

#endif
