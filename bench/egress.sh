#!/usr/bin/env bash
# Sandbox networks (issue 16): what kilnd's egress path costs a Debian guest,
# against a peer in the same run. Rows, each the p50 of N requests:
#   - host -> fake internet across the veth (the baseline: no VM, no proxy);
#   - guest -> proxy -> fake internet, HTTP named by Host, HTTPS by SNI,
#     HTTPS to a secret's host (TLS ended and begun again by kilnd, headers
#     rewritten), and raw TCP allowed by an IP entry (no sniffing);
# then a 64 MiB download by each path (MiB/s), the namespace set-up and
# teardown time (kd_netns_create/close), and a create with a 256-entry
# allow_net against one with none. Needs root; the fake internet exists
# only in the nested host (make bench-net runs this through
# tests/nested/kvm-host.sh). kiln has no plain-NAT path to compare: a
# sandbox's namespace routes nothing (docs/network.md).
# Usage: bench/egress.sh KILND KILN-VMM KILN [REQUESTS]
set -uo pipefail
here=$(dirname "$(readlink -f "$0")")
root=$(dirname "$here")
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
# shellcheck source=tests/net/fake-internet.sh
. "$root/tests/net/fake-internet.sh"

kilnd=$1 vmm=$2 kiln=$3 n=${4:-30}
w=$(mktemp -d)
sock=$w/kd.sock
cleanup() {
	[ -f "$w/kilnd.pid" ] && kill "$(cat "$w/kilnd.pid")" 2>/dev/null
	sleep 0.5
	fi_down "$w"
	rm -rf "$w"
}
trap cleanup EXIT
die() { echo "bench-egress: $*" >&2; exit 1; }

bench_host_banner
fi_down "$w"
fi_up "$w" || die "the fake internet did not start"
"$kilnd" --state-dir "$w/kd" --listen "unix:$sock" --vmm "$vmm" --default-image debian --min-free 0 \
	--dns-upstream 203.0.113.53 --upstream-ca "$w/ca.crt" >"$w/kilnd.log" 2>&1 &
echo $! >"$w/kilnd.pid"
for _ in $(seq 600); do curl -s --max-time 2 --unix-socket "$sock" http://kd/v1/node >/dev/null 2>&1 && break; sleep 0.1; done
api() { curl -sS --max-time 900 --unix-socket "$sock" -X "$1" ${3:+-H 'Content-Type: application/json' --data-binary "$3"} "http://kd$2"; }
mk() { api POST /v1/sandboxes "{\"memory_mb\": 1024, \"vcpus\": 1${1:+, $1}}" | jq -r '.id // empty'; }
ex() { local id=$1; shift; "$kiln" exec --uds "$w/kd/run/$id/vsock" --timeout 600 -- "$@"; }

id=$(mk '"allow_net": ["allowed.test", "203.0.113.12:7"], "secrets": {"TOKEN": {"hosts": ["secret.test"], "value": "bench-value"}}')
[ -n "$id" ] || die "no sandbox: $(tail -3 "$w/kilnd.log")"
"$kiln" cp --uds "$w/kd/run/$id/vsock" "$w/ca.crt" guest:/tmp/ca.crt >/dev/null || die "kiln cp failed"

# p50 of curl's time_connect and time_total (ms) over n requests, from $1 (host or guest).
curl_p50() {
	local where=$1; shift
	local script='for i in $(seq '"$n"'); do curl -s -o /dev/null -w "%{time_connect} %{time_total}\n" "$@" || echo "fail fail"; done'
	if [ "$where" = host ]; then bash -c "$script" curl "$@"; else ex "$id" bash -c "$script" curl "$@"; fi |
		grep -v fail >"$w/times"
	echo "$(median 1) $(median 2)"
}
# The median of column $1 of $w/times, in ms (mawk has no sort of its own).
median() {
	local k
	k=$(wc -l <"$w/times")
	[ "$k" -gt 0 ] || { echo -; return; }
	awk -v c="$1" '{ printf "%.2f\n", $c * 1000 }' "$w/times" | sort -n | sed -n "$(((k + 1) / 2))p"
}
# MiB/s of a 64 MiB download.
curl_mibs() {
	local where=$1; shift
	local script='curl -s -o /dev/null -w "%{speed_download}\n" "$@"'
	if [ "$where" = host ]; then bash -c "$script" curl "$@"; else ex "$id" bash -c "$script" curl "$@"; fi |
		awk '{ printf "%.1f\n", $1 / 1048576 }'
}
# A raw TCP round trip to the echo server (ms, p50), by an IP entry.
echo_p50() {
	ex "$id" python3 -c '
import socket, statistics, sys, time
ts = []
for i in range(int(sys.argv[1])):
    t = time.monotonic(); s = socket.create_connection(("203.0.113.12", 7), timeout=10); s.sendall(b"x"); s.recv(1); s.close()
    ts.append((time.monotonic() - t) * 1000)
print("%.2f" % statistics.median(ts))' "$n"
}

big=$((64 << 20))
# (No process substitution: the nested host has no /dev/fd.)
set -- $(curl_p50 host http://allowed.test/ --resolve allowed.test:80:203.0.113.10); hc=$1 ht=$2
set -- $(curl_p50 guest http://allowed.test/); gc=$1 gt=$2
set -- $(curl_p50 guest --cacert /tmp/ca.crt https://allowed.test/); sc=$1 st=$2
set -- $(curl_p50 host --cacert "$w/ca.crt" https://allowed.test/ --resolve allowed.test:443:203.0.113.10); hsc=$1 hst=$2
set -- $(curl_p50 guest -H "Authorization: Bearer KILN_SECRET_x" https://secret.test/); tc=$1 tt=$2
ep=$(echo_p50)
hm=$(curl_mibs host "http://allowed.test/bytes/$big" --resolve allowed.test:80:203.0.113.10)
gm=$(curl_mibs guest "http://allowed.test/bytes/$big")

echo
echo "sandbox egress: p50 of $n requests (ms); 64 MiB download (MiB/s)"
printf '%-44s %12s %12s %10s\n' path connect total MiB/s
printf '%-44s %12s %12s %10s\n' "host -> inet, HTTP (veth baseline)" "$hc" "$ht" "$hm"
printf '%-44s %12s %12s %10s\n' "guest -> proxy -> inet, HTTP by Host" "$gc" "$gt" "$gm"
printf '%-44s %12s %12s %10s\n' "host -> inet, HTTPS (veth baseline)" "$hsc" "$hst" "-"
printf '%-44s %12s %12s %10s\n' "guest -> proxy -> inet, HTTPS by SNI" "$sc" "$st" "-"
printf '%-44s %12s %12s %10s\n' "guest -> proxy (TLS ended, secret) -> inet" "$tc" "$tt" "-"
printf '%-44s %12s %12s %10s\n' "guest -> proxy -> inet, TCP echo by IP entry" "-" "$ep" "-"
echo "guest/host total time: HTTP $(bench_ratio "$gt" "$ht"), HTTPS $(bench_ratio "$st" "$hst"), HTTPS with a secret $(bench_ratio "$tt" "$hst"); throughput $(bench_ratio "$gm" "$hm")"

# Create time with a 256-entry allow_net against none (the same template, alternating).
list=$(python3 -c 'import json; print(json.dumps(["h%d.example.com" % i for i in range(255)] + ["allowed.test"]))')
for r in 1 2 3 4 5; do
	for kind in none big; do
		t0=$(date +%s%N)
		if [ $kind = none ]; then c=$(mk); else c=$(mk "\"allow_net\": $list"); fi
		t1=$(date +%s%N)
		[ -n "$c" ] && api DELETE "/v1/sandboxes/$c" >/dev/null
		echo "$kind $(((t1 - t0) / 1000000))"
	done
done >"$w/creates"
cn=$(awk '$1 == "none" { print $2 }' "$w/creates" | sort -n | sed -n 3p)
cb=$(awk '$1 == "big" { print $2 }' "$w/creates" | sort -n | sed -n 3p)
echo "create p50 of 5: no allow_net ${cn} ms, 256-entry allow_net ${cb} ms (ratio $(bench_ratio "$cb" "$cn"))"

# The namespace alone, without a VM (tests/netns's driver).
if "$root/tests/netns/run.sh" "$w/netns" >"$w/netns.log" 2>&1; then
	sed -n '/namespace set-up and teardown time/,+2p' "$w/netns.log" | tail -3
else
	echo "namespace timing: tests/netns/run.sh failed: $(tail -2 "$w/netns.log")"
fi
