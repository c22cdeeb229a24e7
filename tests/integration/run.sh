#!/usr/bin/env bash
# Integration tests: boot real guests with each kiln-vmm given and run every
# tests/integration/*.sh test file against it. Needs a usable /dev/kvm
# (make test runs this inside tests/nested/kvm-host.sh where there is none).
# Usage: tests/integration/run.sh VMM [VMM...]
# KILN_TEST_ONLY=boot,blk limits the files run.
set -u

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
[ $# -ge 1 ] || { echo "usage: $0 VMM [VMM...]" >&2; exit 2; }
if [ ! -r /dev/kvm ]; then
	echo "run.sh: /dev/kvm is not usable here; run through tests/nested/kvm-host.sh" >&2
	exit 2
fi
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

python3 "$here/mkbad.py" "$guest/vmlinux" "$guest/bzImage" "$work"
cp "$guest/vmlinux" "$work/vmlinux"
chmod 644 "$work/vmlinux"
chmod 755 "$work"
mknod "$work/kvm-private" c 10 232 && chmod 600 "$work/kvm-private"
long=$(head -c 3000 /dev/zero | tr '\0' a)

for vmm in "$@"; do
	v=$(basename "$(dirname "$vmm")")/$(basename "$vmm")
	echo "# kiln-vmm: $vmm"
	for f in "$here"/*.sh; do
		name=$(basename "$f" .sh)
		case $name in lib|run) continue ;; esac
		if [ -n "${KILN_TEST_ONLY:-}" ] && [[ ",$KILN_TEST_ONLY," != *",$name,"* ]]; then
			continue
		fi
		echo "# $name"
		# A file bash cannot parse would stop part way and look like a pass.
		if ! bash -n "$f"; then
			echo "not ok - $v: $name: tests/integration/$name.sh does not parse"
			fail=$((fail + 1))
			failed_names+=("$v: $name.sh does not parse")
			continue
		fi
		# shellcheck source=/dev/null
		. "$f"
	done
done

echo "# integration: $pass passed, $fail failed"
for n in ${failed_names[@]+"${failed_names[@]}"}; do echo "#   failed: $n"; done
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
