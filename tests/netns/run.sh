#!/bin/sh
# kd_netns.c without a VM (issue 16): build tests/netns/netns-test.c into OUT
# and, as root, check a sandbox namespace's tap, table and sockets, the
# policy with real packets from a stand-in guest, kd_netns_adopt, that
# teardown leaves no namespace or descriptor, and print create/teardown times.
# Usage: tests/netns/run.sh [OUT]   (default build/netns)
set -eu
cd "$(dirname "$0")/../.."
OUT=${1:-build/netns}
mkdir -p "$OUT"
LIBS=$(pkg-config --libs libnftnl libmnl 2>/dev/null || echo -lnftnl -lmnl)
${CC:-cc} -D_GNU_SOURCE -Ilib -Iapi/kilnd -O2 -Wall -Wextra -Wshadow -Wformat=2 -Werror \
	-o "$OUT/netns-test" tests/netns/netns-test.c api/kilnd/kd_netns.c lib/err.c $LIBS -pthread
T=$OUT/netns-test

if [ "$(id -u)" != 0 ]; then
	echo "skip: tests/netns needs root (CAP_NET_ADMIN)"
	exit 0
fi
fail() { echo "FAIL: $*"; exit 1; }

$T probe

# Without the privilege: a clean failure that names the fix.
if command -v setpriv >/dev/null; then
	set +e
	msg=$(setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all $T probe)
	rc=$?
	set -e
	echo "$msg"
	[ $rc = 2 ] && echo "$msg" | grep -q 'sandboxes get no network: .*run kilnd as root' ||
		fail "unprivileged probe: rc $rc"
	echo "ok probe unprivileged: refused with the fix"
	# Root without CAP_NET_ADMIN fails inside the new namespace: the error path goes home too.
	set +e
	msg=$(setpriv --bounding-set -net_admin --inh-caps=-net_admin $T probe)
	rc=$?
	set -e
	echo "$msg"
	[ $rc = 2 ] && echo "$msg" | grep -q 'cannot bring lo up: Operation not permitted' ||
		fail "probe without CAP_NET_ADMIN: rc $rc"
	echo "ok probe without CAP_NET_ADMIN: refused, thread back home"
fi

# Inside one namespace: the tap, the table, the two sockets.
$T exec sh -c 'ip -br addr; echo ---; nft list ruleset; echo ---; ss -ltnuH; echo ---;
	cat /proc/sys/net/ipv6/conf/kt0/disable_ipv6' >"$OUT/inside.txt"
cat "$OUT/inside.txt"
ino=$(sed -n 's/^namespace net:\[\([0-9]*\)\]$/\1/p' "$OUT/inside.txt")
grep -Eq '^kt0 +(UP|UNKNOWN|DOWN) +172\.29\.0\.1/30' "$OUT/inside.txt" || fail "kt0 lacks 172.29.0.1/30"
ip_flags=$($T exec ip -o link show kt0 | grep -o '<[^>]*>')
echo "$ip_flags" | grep -q 'UP' || fail "kt0 is not up: $ip_flags"
for c in 'chain pre_filter' 'chain pre_nat' 'chain in' 'chain fwd' \
	'type filter hook prerouting priority mangle; policy accept;' \
	'type nat hook prerouting priority dstnat; policy accept;' \
	'type filter hook input priority filter; policy drop;' \
	'type filter hook forward priority filter; policy drop;' \
	'iifname != "kt0" accept' 'meta nfproto != ipv4 drop' 'ip daddr 10.0.0.0/8 reject with tcp reset' \
	'ip daddr 224.0.0.0/3 reject with tcp reset' 'redirect to :3128' 'redirect to :53' \
	'ct state established,related accept' 'ct status dnat accept'; do
	grep -qF "$c" "$OUT/inside.txt" || fail "ruleset lacks: $c"
done
grep -Eq '^udp +UNCONN .*172\.29\.0\.1:53 ' "$OUT/inside.txt" || fail "no UDP socket on 172.29.0.1:53"
grep -Eq '^tcp +LISTEN .*172\.29\.0\.1:3128 ' "$OUT/inside.txt" || fail "no TCP listener on 172.29.0.1:3128"
echo "ok inside: kt0 172.29.0.1/30 up, table inet kiln, sockets 172.29.0.1:3128/tcp and :53/udp"
if lsns -t net -n -o NS | grep -qx "$ino"; then fail "lsns still lists net:[$ino]"; fi
if ip link show kt0 >/dev/null 2>&1; then fail "kt0 in the host's namespace"; fi
echo "ok gone: lsns no longer lists net:[$ino]"

$T traffic
$T thread
$T adopt
$T cycles 200
echo "namespace set-up and teardown time (50 cycles):"
$T cycles 50 | sed -n 's/^   //p'
echo "ok tests/netns"
