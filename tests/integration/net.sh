# virtio-net: the guest and a host-side peer exchange traffic through a tap
# (ping, then 16 MiB over TCP each way with checksums compared). Each test
# runs in its own network namespace (unshare -n): the tap, its address and the
# peer live and die with it, so nothing is left behind even on a timeout.
# Sourced by run.sh ($vmm, $v, $work, run()).
# shellcheck shell=bash

if ! command -v unshare >/dev/null || ! command -v python3 >/dev/null || [ ! -c /dev/net/tun ]; then
	echo "# net: skipped (needs unshare, python3 and /dev/net/tun)"
else

# The host side: recv takes one TCP stream on 172.30.0.1:5000; send connects
# to the guest's 172.30.0.2:5001 (retrying until it listens) and sends 16 MiB.
# Either way it prints "host-sha HASH BYTES".
cat >"$work/net-peer.py" <<'EOF'
import hashlib, os, socket, sys, time

mode, ready = sys.argv[1], sys.argv[2]
deadline = time.monotonic() + 200
h, n = hashlib.sha256(), 0
if mode == "recv":
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("172.30.0.1", 5000))
    s.listen(1)
    s.settimeout(200)
    open(ready, "w").close()
    c, _ = s.accept()
    c.settimeout(200)
    while True:
        b = c.recv(1 << 16)
        if not b:
            break
        h.update(b)
        n += len(b)
    c.close()
else:
    data = os.urandom(16 << 20)
    open(ready, "w").close()
    while True:
        try:
            c = socket.create_connection(("172.30.0.2", 5001), timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    c.settimeout(200)
    c.sendall(data)
    c.shutdown(socket.SHUT_WR)
    c.recv(1)          # the guest's nc closes once it has everything
    c.close()
    h.update(data)
    n = len(data)
print("host-sha", h.hexdigest(), n, flush=True)
EOF

# Run in a fresh network namespace: tap kt0 at 172.30.0.1/24, the peer
# (none, recv or send), then the guest; compare "guest-sha" with "host-sha".
cat >"$work/net-ns.sh" <<'EOF'
set -u
here=$(dirname "$0")
mode=$1
shift
ip link set lo up
ip tuntap add kt0 mode tap || exit 99
ip addr add 172.30.0.1/24 dev kt0
ip link set kt0 up
peer=
if [ "$mode" != none ]; then
	rm -f "$here/net-ready" "$here/net-peer.out"
	python3 "$here/net-peer.py" "$mode" "$here/net-ready" >"$here/net-peer.out" 2>&1 &
	peer=$!
	for _ in $(seq 100); do [ -e "$here/net-ready" ] && break; sleep 0.1; done
fi
"$@" | tee "$here/net-guest.out"
st=${PIPESTATUS[0]}
[ -z "$peer" ] && exit "$st"
wait "$peer"
cat "$here/net-peer.out"
g=$(awk '/^guest-sha/ {print $2, $3}' "$here/net-guest.out")
h=$(awk '/^host-sha/ {print $2, $3}' "$here/net-peer.out")
if [ -n "$g" ] && [ "$g" = "$h" ]; then
	echo "checksums match: $g"
else
	echo "checksums differ: guest '$g', host '$h'"
fi
exit "$st"
EOF

net_vmm=("$vmm" --timeout 240 --cmdline "kiln.net=172.30.0.2/24,172.30.0.1" --net tap=kt0)

run "$v: net: guest pings the host through a tap" 0 '3 packets transmitted, 3 packets received' \
	unshare -n bash "$work/net-ns.sh" none "${net_vmm[@]}" -- ping -c 3 -W 5 172.30.0.1
run "$v: net: eth0 configured from kiln.net= with its MAC and route" 0 \
	'06:00:ac:10:00:02.*inet 172\.30\.0\.2/24.*default via 172\.30\.0\.1 dev eth0' \
	unshare -n bash "$work/net-ns.sh" none "${net_vmm[@]}" -- \
	sh -c 'echo $(ip -o link show eth0; ip -o -4 addr show eth0; ip route)'
run "$v: net: 16 MiB guest to host over TCP, checksums match" 0 '^checksums match: [0-9a-f]{64} 16777216$' \
	unshare -n bash "$work/net-ns.sh" recv "${net_vmm[@]}" -- sh -c \
	'dd if=/dev/urandom of=/tmp/f bs=1M count=16 2>/dev/null && set -- $(sha256sum </tmp/f) &&
	 echo guest-sha $1 $(wc -c </tmp/f) && nc 172.30.0.1 5000 </tmp/f'
run "$v: net: 16 MiB host to guest over TCP, checksums match" 0 '^checksums match: [0-9a-f]{64} 16777216$' \
	unshare -n bash "$work/net-ns.sh" send "${net_vmm[@]}" -- sh -c \
	'nc -l -p 5001 </dev/null >/tmp/in && set -- $(sha256sum </tmp/in) && echo guest-sha $1 $(wc -c </tmp/in)'

# Mistakes: one clear line and exit 125.
run "$v: net: a malformed MAC" 125 '--net tap=kt0,mac=06:00:zz:00:00:01: mac=06:00:zz:00:00:01: expected six hex bytes' \
	"$vmm" --net tap=kt0,mac=06:00:zz:00:00:01 -- true
run "$v: net: no tap named" 125 '--net mac=06:00:ac:10:00:03: no tap given' \
	"$vmm" --net mac=06:00:ac:10:00:03 -- true
run "$v: net: without CAP_NET_ADMIN" 125 'tap=kt-nocap: permission denied \(needs CAP_NET_ADMIN' \
	unshare -n setpriv --bounding-set -net_admin "$vmm" --net tap=kt-nocap -- true
run "$v: net: a tap in use by another VM" 125 'tap=kt0: in use by another process' \
	unshare -n bash "$work/net-ns.sh" none sh -c \
	"'$vmm' --net tap=kt0 -- sleep 30 & p=\$!
	 for i in \$(seq 300); do grep -qs 'iff:[[:space:]]*kt0' /proc/\$p/fdinfo/* && break; sleep 0.1; done
	 '$vmm' --net tap=kt0 -- true; st=\$?; kill \$p; exit \$st"

fi
