#!/usr/bin/env bash
# selftest.sh - checks for tests/nested/kvm-host.sh (boots ~14 nested hosts,
# a few minutes under TCG).  Forces the nested path even where /dev/kvm works.
#
# Usage: tests/nested/selftest.sh
# shellcheck disable=SC2016,SC1003 # single-quoted $ and \ are intended
set -uo pipefail

HERE=$(cd "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
KH=$HERE/kvm-host.sh
export KILN_NESTED_FORCE=1

scratch=$(mktemp -d /var/tmp/kiln-nested-selftest.XXXXXX) || exit 1
mkdir "$scratch/tmp"
export TMPDIR=$scratch/tmp # kvm-host.sh's per-run dirs, to spot leftovers
trap 'rm -rf -- "$scratch"' EXIT
cd "$scratch" || exit 1

fails=0
pass() { printf 'PASS %-28s %s\n' "$1" "${2:-}"; }
fail() { printf 'FAIL %-28s %s\n' "$1" "${2:-}"; fails=$((fails + 1)); }
t_start() { t0=$EPOCHREALTIME; }
t_took() { printf '%.1f s' "$(bc <<<"$EPOCHREALTIME - $t0")"; }

# run NAME [kvm-host options] -- CMD...: sets out, err, rc, took
run() {
	local name=$1
	shift
	t_start
	"$KH" "$@" >"$scratch/$name.out" 2>"$scratch/$name.err"
	rc=$?
	took=$(t_took)
	out=$scratch/$name.out
	err=$scratch/$name.err
}
show_err() { tr '\n' ' ' <"$err" | cut -c1-400; }

# 1. quoting, exit status, /dev/kvm present
args=("a b" 'c"d' "e'f" '$HOME `id`' '' $'multi\nline' '*' '\' '--')
run quoting -- sh -c 'test -c /dev/kvm || echo "no /dev/kvm"; printf "[%s]\n" "$@"; exit 3' sh "${args[@]}"
if [[ $rc == 3 ]] && cmp -s "$out" <(printf '[%s]\n' "${args[@]}"); then
	pass quoting+exit3 "$took; $(grep -o 'ready after [0-9.]* s' "$err")"
else
	fail quoting+exit3 "rc=$rc out=$(head -c 300 "$out" | tr '\n' '|') err=$(show_err)"
fi

# 2. exit statuses pass through exactly
for want in 0 1 124 255; do
	run "exit$want" -- sh -c "exit $want"
	if [[ $rc == "$want" ]]; then pass "exit $want" "$took"; else fail "exit $want" "rc=$rc $(show_err)"; fi
done

# 3. environment: PATH, KILN_*, CI* pass; others do not; HOME/TERM set
KILN_SELFTEST='x y "z"' CI_SELFTEST=1 NOT_PASSED=1 run env -- env
if grep -qx 'KILN_SELFTEST=x y "z"' "$out" && grep -qx 'CI_SELFTEST=1' "$out" &&
	grep -qx 'HOME=/root' "$out" && grep -qx 'TERM=dumb' "$out" && grep -qx "PATH=$PATH" "$out" &&
	! grep -q NOT_PASSED "$out" && ! grep -q KILN_NESTED_FORCE "$out"; then
	pass env "$took"
else
	fail env "$(tr '\n' ' ' <"$out" | cut -c1-300)"
fi

# 4. cwd shared read-write at the same path, binaries built there run,
#    writes elsewhere are discarded
if command -v cc >/dev/null; then
	build='printf "int main(void){return 42;}\n" >prog.c && cc -o prog prog.c'
else
	build='cp /bin/false prog'
fi
run cwd -- sh -c "pwd; echo written >inside.txt; $build; ./prog; echo prog=\$?; touch /etc/kiln-selftest-discard"
if [[ $rc == 0 && $(head -n1 "$out") == "$scratch" && $(cat inside.txt 2>/dev/null) == written && -x prog &&
	! -e /etc/kiln-selftest-discard ]] && grep -q -x -e 'prog=42' -e 'prog=1' "$out"; then
	pass cwd-rw+exec "$took"
else
	fail cwd-rw+exec "rc=$rc out=$(tr '\n' '|' <"$out") err=$(show_err)"
fi

# 5. 10 MB of binary output, byte-exact with KILN_NESTED_RAW=1
head -c 10000000 /dev/urandom >rand.bin
KILN_NESTED_RAW=1 run big -- cat rand.bin
if [[ $rc == 0 ]] && cmp -s rand.bin "$out"; then
	pass "10MB binary (raw)" "$took"
else
	fail "10MB binary (raw)" "rc=$rc size=$(stat -c %s "$out") $(show_err)"
fi

# 6. CRs dropped by default; no output at all
run cr -- printf 'a\r\nb\r\n'
if [[ $rc == 0 ]] && cmp -s "$out" <(printf 'a\nb\n'); then pass "CR stripped" "$took"; else fail "CR stripped" "$(od -c "$out" | head -3)"; fi
run empty -- true
if [[ $rc == 0 && ! -s $out ]]; then pass "empty output" "$took"; else fail "empty output" "rc=$rc"; fi

# 7. a real KVM guest (L2) boots inside: busybox initramfs that prints and reboots
kver=$(grep -o 'kernel [^ ]*) \.\.\.' "$scratch/empty.err" | cut -d' ' -f2 | tr -d ')')
mkdir -p l2/bin && cp /bin/busybox l2/bin/ &&
	printf '#!/bin/busybox sh\n/bin/busybox echo "HELLO FROM L2 $(/bin/busybox uname -r)"\n/bin/busybox reboot -f\n' >l2/init &&
	chmod +x l2/init && (cd l2 && find . | cpio -o -H newc --quiet) >l2.cpio
run kvm -- sh -c 'start=$(date +%s.%N)
qemu-system-x86_64 -M microvm,acpi=off -accel kvm -cpu host -m 256 -nodefaults -no-user-config \
  -display none -serial stdio -no-reboot -kernel /boot/vmlinuz-'"$kver"' -initrd l2.cpio \
  -append "console=ttyS0 quiet reboot=t panic=-1" </dev/null; rc=$?
echo "qemu rc=$rc, $(echo "$(date +%s.%N) - $start" | bc) s"'
if [[ $rc == 0 ]] && grep -q "^HELLO FROM L2" "$out" && grep -q '^qemu rc=0' "$out"; then
	pass "KVM guest boots inside" "$took total; L2 $(grep -o '[0-9.]* s$' "$out")"
else
	fail "KVM guest boots inside" "rc=$rc out=$(tr '\n' '|' <"$out" | cut -c1-400) err=$(show_err)"
fi

# 8. timeout
run timeout --timeout 20 -- sleep 100
if [[ $rc == 124 ]] && grep -q 'timeout' "$err"; then pass "timeout -> 124" "$took"; else fail "timeout -> 124" "rc=$rc $(show_err)"; fi

# 9. harness failures are loud
KILN_NESTED_KERNEL=/nonexistent run nokernel -- true
if [[ $rc == 125 ]] && grep -q 'kvm-host: kernel /nonexistent' "$err"; then pass "missing kernel" "$(show_err)"; else fail "missing kernel" "rc=$rc $(show_err)"; fi
KILN_NESTED_CPU=EPYC,-svm run nosvm -- true
if [[ $rc == 125 ]] && grep -q '/dev/kvm did not appear' "$err"; then pass "no SVM -> no /dev/kvm" "$took"; else fail "no SVM -> no /dev/kvm" "rc=$rc $(show_err)"; fi
run crash -- sh -c 'echo before; echo c >/proc/sysrq-trigger; sleep 10; echo after'
if [[ $rc == 125 ]] && grep -q 'died before CMD finished' "$err" && grep -qx before "$out" && ! grep -q after "$out"; then
	pass "host crash detected" "$took"
else
	fail "host crash detected" "rc=$rc $(show_err)"
fi

# 10. nothing left behind
sleep 1
if pgrep -f -- "$scratch/tmp" >/dev/null; then fail "no leftover processes" "$(pgrep -a -f -- "$scratch/tmp")"; else pass "no leftover processes"; fi
if [[ -z $(ls -A "$scratch/tmp") ]]; then pass "no leftover temp dirs"; else fail "no leftover temp dirs" "$(ls "$scratch/tmp")"; fi

echo "$fails failure(s)"
((fails == 0))
