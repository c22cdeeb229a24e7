#!/usr/bin/env bash
# Network benchmark: TCP throughput (guest -> host) and ICMP round-trip time
#   - host to host across a veth pair into a network namespace (the baseline),
#   - a kiln-vmm guest on virtio-net through a tap,
#   - a QEMU microvm guest on virtio-net (virtio-mmio) through a tap,
# in the same run, with busybox's nc and ping on the sending side and a Python
# receiver on the host. Needs root and /dev/kvm (make bench-net goes through
# tests/nested/kvm-host.sh where there is none).
# Usage: bench/net.sh VMM KERNEL INITRD [MIB]
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

vmm=$1 kernel=$2 initrd=$3 mib=${4:-64}
qemu=${QEMU:-qemu-system-x86_64}
busybox=${BUSYBOX:-/bin/busybox}
tmp=$(mktemp -d)
cleanup() {
	ip link del kbt0 2>/dev/null || true
	ip link del kbq0 2>/dev/null || true
	ip link del kbv0 2>/dev/null || true
	ip netns del kbench 2>/dev/null || true
	jobs -p | xargs -r kill 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT

bench_host_banner

# receive ADDR PORT OUT: accept one connection, read $mib MiB, write MB/s from
# the first byte to the last, then close (busybox nc does not half-close).
receive() {
	python3 - "$1" "$2" "$3" "$((mib << 20))" <<'PY' &
import socket, sys, time
addr, port, out, want = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, port))
s.listen(1)
open(out + ".ready", "w").close()
s.settimeout(300)
c, _ = s.accept()
n, t0 = 0, None
while n < want:
    b = c.recv(1 << 20)
    if not b:
        break
    if t0 is None:
        t0 = time.monotonic()
    n += len(b)
dt = time.monotonic() - (t0 or time.monotonic())
c.close()
if n >= want:
    open(out, "w").write("%.1f %d\n" % (n / dt / 1e6 if dt > 0 else 0, n))
PY
	# Python starts slowly in the nested host: wait until it listens.
	for _ in $(seq 1 300); do [ -e "$3.ready" ] && return 0; sleep 0.1; done
	echo "bench-net: the receiver on $1 did not start" >&2
	return 1
}

# The sender's commands, the same everywhere: busybox's ping, then a TCP stream.
sender() { # PEER BUSYBOX
	echo "$2 ping -c 20 -i 0.1 $1 | $2 tail -1; $2 dd if=/dev/zero bs=64k count=$((mib * 16)) 2>/dev/null | $2 nc $1 5001"
}

rtt_of() { sed -n 's|.*= [0-9.]*/\([0-9.]*\)/.*|\1|p' "$1" | tr -d '\r' | head -1; }

echo "bench-net: veth baseline" >&2
ip netns add kbench
ip link add kbv0 type veth peer name kbv1
ip link set kbv1 netns kbench
ip addr add 172.31.0.1/24 dev kbv0 && ip link set kbv0 up
ip netns exec kbench ip addr add 172.31.0.2/24 dev kbv1
ip netns exec kbench ip link set kbv1 up
ip netns exec kbench ip link set lo up
receive 172.31.0.1 5001 "$tmp/veth.tcp"
ip netns exec kbench "$busybox" sh -c "$(sender 172.31.0.1 "$busybox")" >"$tmp/veth.out" 2>&1 || true
wait

echo "bench-net: kiln-vmm" >&2
ip tuntap add kbt0 mode tap
ip addr add 172.30.0.1/24 dev kbt0 && ip link set kbt0 up
receive 172.30.0.1 5001 "$tmp/kiln.tcp"
"$vmm" --mem 512 --net tap=kbt0 --cmdline 'kiln.net=172.30.0.2/24' -- sh -c "$(sender 172.30.0.1 busybox)" \
	>"$tmp/kiln.out" 2>&1 || true
wait

echo "bench-net: QEMU microvm" >&2
ip tuntap add kbq0 mode tap
ip addr add 172.32.0.1/24 dev kbq0 && ip link set kbq0 up
receive 172.32.0.1 5001 "$tmp/qemu.tcp"
cmd=$(bench_kiln_cmd sh -c "$(sender 172.32.0.1 busybox)")
"$qemu" -M microvm,acpi=off -accel kvm -cpu host -m 512 -smp 1 -nodefaults -no-user-config \
	-display none -serial stdio -no-reboot -kernel "$kernel" -initrd "$initrd" \
	-append "$(bench_qemu_cmdline) kiln.net=172.32.0.2/24 kiln.cmd=$cmd" \
	-netdev tap,id=n0,ifname=kbq0,script=no,downscript=no \
	-device virtio-net-device,netdev=n0,mac=06:00:ac:10:00:02 \
	-device isa-debug-exit,iobase=0xf4,iosize=4 >"$tmp/qemu.out" 2>&1 || true
wait

v_t=$(cut -d' ' -f1 "$tmp/veth.tcp" 2>/dev/null || true)
k_t=$(cut -d' ' -f1 "$tmp/kiln.tcp" 2>/dev/null || true)
q_t=$(cut -d' ' -f1 "$tmp/qemu.tcp" 2>/dev/null || true)
v_r=$(rtt_of "$tmp/veth.out")
k_r=$(rtt_of "$tmp/kiln.out")
q_r=$(rtt_of "$tmp/qemu.out")
printf '\n%-28s %10s %10s %13s %11s %10s\n' metric veth kiln-vmm "QEMU microvm" kiln/veth kiln/QEMU
printf '%-28s %10s %10s %13s %11s %10s\n' "TCP guest->host MB/s ($mib MiB)" "${v_t:-?}" "${k_t:-?}" "${q_t:-?}" \
	"$(bench_ratio "$k_t" "$v_t")" "$(bench_ratio "$k_t" "$q_t")"
printf '%-28s %10s %10s %13s %11s %10s\n' "ping RTT avg ms" "${v_r:-?}" "${k_r:-?}" "${q_r:-?}" \
	"$(bench_ratio "$k_r" "$v_r")" "$(bench_ratio "$k_r" "$q_r")"
for f in veth kiln qemu; do
	if [ ! -s "$tmp/$f.tcp" ]; then
		echo "bench-net: the $f run did not finish; its output:" >&2
		tail -n 20 "$tmp/$f.out" >&2
		exit 1
	fi
done
