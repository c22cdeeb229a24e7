#!/bin/bash
# Boot an interactive guest shell with piped stdin N times per VMM and count
# the runs whose input never reached the shell, and those whose input the
# UART saved from the driver's FIFO clear (tests/nested/README.md, "Console
# input and the 8250 probe"). Run it in the nested host:
#   tests/nested/kvm-host.sh --timeout 1500 -- tests/nested/serial-soak.sh 60 build/kiln-vmm build/asan/kiln-vmm
set -u
n=${1:?usage: serial-soak.sh N VMM...}
shift
err=$(mktemp)
trap 'rm -f "$err"' EXIT
for vmm in "$@"; do
	ok=0 hung=0 saved=0
	for i in $(seq "$n"); do
		out=$(echo "echo from-stdin; exit" | timeout -s INT 60 "$vmm" -v 2>"$err")
		st=$?
		if grep -q "console input:.* [1-9][0-9]* saved from FIFO clears" "$err"; then
			saved=$((saved + 1))
			echo "run $i: $(grep 'console input' "$err")"
		fi
		if echo "$out" | grep -q from-stdin; then
			ok=$((ok + 1))
		else
			hung=$((hung + 1))
			echo "run $i: status $st, the shell never printed from-stdin"
			cat "$err"
		fi
	done
	echo "serial-soak $vmm: $ok ok, $hung failed, input saved from a FIFO clear in $saved"
done
