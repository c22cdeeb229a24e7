# Shared by the benchmark scripts in bench/.
# shellcheck shell=bash

# Say where the numbers come from: real KVM, or the nested host where only
# ratios against a peer measured in the same run mean anything.
bench_host_banner() {
	if [ "${KILN_NESTED_HOST:-}" = 1 ]; then
		echo "host: nested (KVM inside QEMU TCG): compare the ratios, not the absolute figures"
	else
		echo "host: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), real KVM"
	fi
}

# kiln.cmd= for a guest command run by another VMM (QEMU): base64url, no
# padding, of the NUL-terminated arguments (lib/abi.h).
bench_kiln_cmd() {
	python3 -c 'import base64, sys; print(base64.urlsafe_b64encode(b"".join(a.encode() + b"\0" for a in sys.argv[1:])).decode().rstrip("="))' "$@"
}

# The start of the kernel command line QEMU's guest gets: kiln-vmm's defaults.
# (In the nested host kiln-vmm also kicks its vCPUs awake every 50 ms,
# vmm/tcgkick.h; QEMU's guest gets no kicks, which costs it nothing on a boot.)
bench_qemu_cmdline() {
	echo "console=ttyS0 reboot=k panic=-1 quiet no_timer_check"
}

# A / B to two places, or ? when either is missing.
bench_ratio() {
	awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b > 0) printf "%.2f", a / b; else print "?" }'
}
