#!/usr/bin/env bash
# Block I/O benchmark: 4 KiB random reads at queue depth 1 and 32, 1 MiB
# sequential reads and writes, measured with kiln-blkbench (guest/tools/)
#   - on the host, straight on the backing device,
#   - inside a kiln-vmm guest on virtio-blk,
#   - inside a QEMU microvm guest on virtio-blk (virtio-mmio),
# all on the same backing device, in the same run. Needs /dev/kvm (make
# bench-blk goes through tests/nested/kvm-host.sh where there is none).
# Usage: bench/blk.sh VMM KERNEL INITRD TOOL [SECONDS]
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

vmm=$1 kernel=$2 initrd=$3 tool=$4 secs=${5:-3}
qemu=${QEMU:-qemu-system-x86_64}
size_mib=${KILN_BENCH_DISK_MIB:-256}
tmp=$(mktemp -d)
loopdev=
cleanup() {
	[ -n "$loopdev" ] && losetup -d "$loopdev" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT

bench_host_banner

# A loop device over a file: O_DIRECT works on it wherever the file lives.
echo "bench-blk: preparing a ${size_mib} MiB backing device" >&2
dd if=/dev/urandom of="$tmp/disk.img" bs=1M count="$size_mib" status=none
loopdev=$(losetup -f --show "$tmp/disk.img")

tests=("randread $secs 1" "randread $secs 32" "seqread $secs" "seqwrite $secs")
guest_script=
for t in "${tests[@]}"; do
	set -- $t
	guest_script+="kiln-blkbench $1 /dev/vda $2 ${3:-1} || exit 1; "
done

echo "bench-blk: host" >&2
for t in "${tests[@]}"; do
	set -- $t
	"$tool" "$1" "$loopdev" "$2" "${3:-1}"
done >"$tmp/host"

echo "bench-blk: kiln-vmm" >&2
"$vmm" --mem 512 --vcpus 2 --disk "$loopdev" -- sh -c "$guest_script" >"$tmp/kiln"

echo "bench-blk: QEMU microvm" >&2
cmd=$(bench_kiln_cmd sh -c "$guest_script")
"$qemu" -M microvm,acpi=off -accel kvm -cpu host -m 512 -smp 2 -nodefaults -no-user-config \
	-display none -serial stdio -no-reboot -kernel "$kernel" -initrd "$initrd" \
	-append "$(bench_qemu_cmdline) kiln.cmd=$cmd" \
	-drive id=d0,file="$loopdev",format=raw,if=none \
	-device virtio-blk-device,drive=d0 \
	-device isa-debug-exit,iobase=0xf4,iosize=4 >"$tmp/qemu" 2>&1 || true

value() { # FILE MODE QD FIELD
	awk -v m="$2" -v q="qd=$3" -v f="$4" '$1 == m && $2 == q {
		for (i = 3; i <= NF; i++) { split($i, kv, "="); if (kv[1] == f) print kv[2] } }' "$1" | tr -d '\r'
}

printf '\n%-26s %12s %12s %12s %10s %10s\n' metric host kiln-vmm "QEMU microvm" kiln/host kiln/QEMU
row() { # LABEL MODE QD FIELD
	local h k q
	h=$(value "$tmp/host" "$2" "$3" "$4")
	k=$(value "$tmp/kiln" "$2" "$3" "$4")
	q=$(value "$tmp/qemu" "$2" "$3" "$4")
	printf '%-26s %12s %12s %12s %10s %10s\n' "$1" "${h:-?}" "${k:-?}" "${q:-?}" \
		"$(bench_ratio "$k" "$h")" "$(bench_ratio "$k" "$q")"
}
row "4K random read QD1 IOPS" randread 1 iops
row "4K random read QD32 IOPS" randread 32 iops
row "1M sequential read MB/s" seqread 1 mbps
row "1M sequential write MB/s" seqwrite 1 mbps
for f in kiln qemu; do
	if ! grep -q '^seqwrite' "$tmp/$f"; then
		echo "bench-blk: the $f run did not finish; its output:" >&2
		tail -n 20 "$tmp/$f" >&2
		exit 1
	fi
done
