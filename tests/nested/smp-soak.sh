#!/usr/bin/env bash
# smp-soak.sh - boot a multi-vCPU guest over and over; on a boot that does not
# finish, print what the guest is doing (control socket `vcpus` and `stats`,
# then tests/nested/guest-dump.py: stacks, state, printk buffer).
#
# Usage: tests/nested/kvm-host.sh --timeout 3600 -- tests/nested/smp-soak.sh VMM [BOOTS] [VCPUS] [CMDLINE]
#   e.g. tests/nested/kvm-host.sh --timeout 3600 -- tests/nested/smp-soak.sh build/kiln-vmm 200 4 initcall_debug
# A boot gets 25 s (KILN_SOAK_WAIT). The guest runs nproc and must print VCPUS,
# or runs KILN_SOAK_CMD (a shell command) and must exit 0, e.g.
# KILN_SOAK_CMD='kiln-pingpong 20000' for 40000 cross-CPU wakeups a boot.
# VMM "qemu" boots QEMU's microvm (same kernel and initramfs, from build/)
# instead, as the peer to compare with; its hangs are counted, not dumped.
# Exits 1 if any boot hung or failed.
set -u
vmm=${1:?usage: smp-soak.sh VMM [BOOTS] [VCPUS] [CMDLINE]} boots=${2:-100} vcpus=${3:-4} cmdline=${4:-}
here=$(cd "$(dirname "$0")" && pwd)
kernel=$(dirname "$vmm")/guest/vmlinux
[ "$vmm" = qemu ] && kernel=$here/../../build/guest/vmlinux
wait_s=${KILN_SOAK_WAIT:-25}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
hung=0 failed=0
cmd=(nproc)
[ -n "${KILN_SOAK_CMD:-}" ] && cmd=(sh -c "$KILN_SOAK_CMD")
# QEMU passes the command as kiln's init reads it (kiln.cmd=).
# shellcheck source=bench/lib.sh
. "$here/../../bench/lib.sh"
qcmd=$(bench_kiln_cmd "${cmd[@]}")
for i in $(seq 1 "$boots"); do
	t0=$(date +%s)
	rm -f "$tmp/vcpus.json"
	if [ "$vmm" = qemu ]; then
		qemu-system-x86_64 -M microvm,acpi=off -accel kvm -cpu host -m 512 -smp "$vcpus" \
			-nodefaults -no-user-config -display none -serial stdio -no-reboot \
			-kernel "$kernel" -initrd "$(dirname "$kernel")/initramfs.cpio" \
			-append "console=ttyS0 reboot=k panic=-1 quiet no_timer_check $cmdline kiln.cmd=$qcmd" \
			-device isa-debug-exit,iobase=0xf4,iosize=4 >"$tmp/out" 2>&1 </dev/null &
	else
		"$vmm" --vcpus "$vcpus" ${cmdline:+--cmdline "$cmdline"} --control "$tmp/ctl" --timeout 600 -- "${cmd[@]}" \
			>"$tmp/out" 2>&1 </dev/null &
	fi
	p=$!
	while kill -0 $p 2>/dev/null && [ $(($(date +%s) - t0)) -lt "$wait_s" ]; do sleep 0.2; done
	if kill -0 $p 2>/dev/null && [ "$vmm" = qemu ]; then
		hung=$((hung + 1))
		echo "smp-soak: boot $i did not finish in $wait_s s"
		cat "$tmp/out"
		kill $p
		wait $p
	elif kill -0 $p 2>/dev/null; then
		hung=$((hung + 1))
		echo "smp-soak: boot $i did not finish in $wait_s s"
		python3 - "$tmp/ctl" "$tmp/vcpus.json" <<-"EOF"
		import socket, sys
		s = socket.socket(socket.AF_UNIX); s.settimeout(10)
		try:
		    s.connect(sys.argv[1])
		except OSError as e:
		    sys.exit("smp-soak: control socket %s: %s" % (sys.argv[1], e))
		f = s.makefile()
		for r in ("vcpus", "stats"):
		    s.sendall(r.encode() + b"\n"); line = f.readline().strip(); print(line)
		    if r == "vcpus": open(sys.argv[2], "w").write(line)
		EOF
		[ -s "$tmp/vcpus.json" ] && python3 "$here/guest-dump.py" $p "$kernel" "$tmp/vcpus.json" | grep -v '^CPUID\['
		cat "$tmp/out"
		kill $p 2>/dev/null
		wait $p
	elif [ "$vmm" = qemu ]; then
		wait $p		# isa-debug-exit makes any status odd: only hangs count
	elif ! wait $p || { [ -z "${KILN_SOAK_CMD:-}" ] && [ "$(tr -d '\r' <"$tmp/out")" != "$vcpus" ]; }; then
		failed=$((failed + 1))
		echo "smp-soak: boot $i failed:"
		cat "$tmp/out"
	fi
	echo "smp-soak: boot $i: $(($(date +%s) - t0)) s" >&2
done
echo "smp-soak: $boots boots of $vcpus vCPUs: $hung hung, $failed failed"
[ $hung -eq 0 ] && [ $failed -eq 0 ]
