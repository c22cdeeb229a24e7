#!/bin/bash
# kilnd's egress (api/kilnd/kd_egress.c) without a VM: four network
# namespaces play the parts, and egress-test.c plays kilnd.
#
#   $P-inet   the fake internet: 203.0.113.x on its lo, dnsmasq at .53,
#             HTTP servers on .10-.13 that answer their own name, HTTPS on
#             .10:443 (a test CA), a server-first banner on .13:7
#   $P-host   where kilnd's egress thread lives: a veth to inet, a route to
#             203.0.113.0/24 and nothing else
#   $P-sbx    the sandbox's namespace: kt0 at 172.29.0.1/30 and the nft
#             redirects of kd_netns (TCP -> :3128, DNS -> :53)
#   $P-guest  the guest: 172.29.0.2/30, default via 172.29.0.1, resolv.conf
#             pointing at it
#
# The driver runs in $P-host and makes its listeners in $P-sbx by setns(),
# as kilnd does, so the proxy's outgoing connections leave from "the host".
#
# usage: tests/egress/run.sh BUILD_DIR      (root; builds BUILD_DIR/egress-test*)
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
	echo "egress: SKIP (needs root for network namespaces)"
	exit 0
fi
B=${1:?usage: tests/egress/run.sh BUILD_DIR}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
mkdir -p "$B"
B=$(cd "$B" && pwd)
W=$(mktemp -d /tmp/egress-test.XXXXXX)
P=egt$$
INET=$P-inet HOST=$P-host SBX=$P-sbx GUEST=$P-guest
G="ip netns exec $GUEST"
TOOL="python3 $here/tool.py"

# --- build -------------------------------------------------------------------
# sched_time.c for sched_quote, which sched_net.c's messages use.
SRCS="api/kilnd/kd_egress.c api/kilnd/kd_sniff.c api/kilnd/kd_ca.c scheduler/sched_net.c scheduler/sched_time.c lib/err.c"
CPP="-D_GNU_SOURCE -Ilib -Ischeduler -Iapi/kilnd"
WARN="-Wall -Wextra -Wshadow -Wformat=2 -Werror"
LIBS="-levent -levent_pthreads -levent_openssl -lssl -lcrypto -lhttp_parser -ljansson -pthread"
(cd "$root" &&
	gcc $CPP -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined $WARN \
		-o "$B/egress-test" tests/egress/egress-test.c $SRCS $LIBS &&
	gcc $CPP -O2 -g $WARN -o "$B/egress-test-O2" tests/egress/egress-test.c $SRCS $LIBS)

# --- topology ----------------------------------------------------------------
pids=()
cleanup() {
	if [ "${fail:-0}" != 0 ] && [ -s "${LOG:-}" ]; then
		echo "--- driver log (tail)"
		tail -60 "$LOG"
	fi
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	sleep 0.3
	for ns in $INET $HOST $SBX $GUEST; do ip netns del "$ns" 2>/dev/null || true; done
	rm -rf "/etc/netns/$GUEST" "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for ns in $INET $HOST $SBX $GUEST; do
	ip netns add "$ns"
	ip -n "$ns" link set lo up
done
ip link add h0 netns $HOST type veth peer name i0 netns $INET
ip -n $HOST addr add 198.51.100.1/30 dev h0
ip -n $HOST link set h0 up
ip -n $HOST route add 203.0.113.0/24 via 198.51.100.2
ip -n $INET addr add 198.51.100.2/30 dev i0
ip -n $INET link set i0 up
# The servers' addresses on lo (no dummy driver needed).
for a in 10 11 12 13 14 15 53; do ip -n $INET addr add 203.0.113.$a/32 dev lo; done

ip link add kt0 netns $SBX type veth peer name eth0 netns $GUEST
ip -n $SBX addr add 172.29.0.1/30 dev kt0
ip -n $SBX link set kt0 up
ip -n $GUEST addr add 172.29.0.2/30 dev eth0
ip -n $GUEST link set eth0 up
ip -n $GUEST route add default via 172.29.0.1
# What kd_netns programs through libnftnl, written for the nft CLI.
ip netns exec $SBX nft -f - <<'EOF'
table ip kiln {
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		iifname "kt0" udp dport 53 redirect to :53
		iifname "kt0" meta l4proto tcp redirect to :3128
	}
	chain forward {
		type filter hook forward priority 0; policy drop;
	}
}
EOF
mkdir -p /etc/netns/$GUEST
echo "nameserver 172.29.0.1" >/etc/netns/$GUEST/resolv.conf

# --- the fake internet -------------------------------------------------------
# With no upstream, dnsmasq REFUSEs AAAA for names it has only an A for, and
# libevent takes REFUSED for a dead server: so every .test name has AAAA ::,
# which the resolver and the proxy must drop as special.
(cd "$W" &&
	openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=egress-test-ca &&
	openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr -subj /CN=allowed.test &&
	printf 'subjectAltName=DNS:allowed.test,DNS:blocked.test,DNS:secret.test\n' >san.ext &&
	openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 -extfile san.ext &&
	openssl req -x509 -newkey rsa:2048 -nodes -keyout untrusted.key -out untrusted.pem -days 2 \
		-subj /CN=untrusted.test -addext subjectAltName=DNS:untrusted.test) \
	>/dev/null 2>&1
ip netns exec $INET dnsmasq -k --conf-file=/dev/null --no-resolv --no-hosts --bind-interfaces \
	--listen-address=203.0.113.53 --pid-file="$W/dnsmasq.pid" --user=root \
	--address=/allowed.test/203.0.113.10 --address=/blocked.test/203.0.113.11 \
	--address=/a.wild.test/203.0.113.12 --address=/wild.test/203.0.113.13 \
	--address=/secret.test/203.0.113.14 --address=/untrusted.test/203.0.113.15 \
	--address=/inside.test/10.0.0.1 --local=/other.test/ \
	--address=/test/:: 2>"$W/dnsmasq.log" &
pids+=($!)
ip netns exec $INET $TOOL serve "$W/srv.pem" "$W/srv.key" "$W/untrusted.pem" "$W/untrusted.key" >"$W/serve.log" 2>&1 &
pids+=($!)

# --- the proxy ---------------------------------------------------------------
ALLOW=(allowed.test '*.wild.test' 203.0.113.13:7 '*.other.test' inside.test 198.51.100.0/24)
LOG=$W/driver.log
EXTRA=()
start_driver() {	# BINARY
	: >"$LOG"
	ip netns exec $HOST "$1" --netns /run/netns/$SBX --dns 203.0.113.53 "${EXTRA[@]}" "${ALLOW[@]}" >>"$LOG" 2>&1 &
	DRV=$!
	pids+=($DRV)
	for _ in $(seq 100); do
		grep -q '^ready' "$LOG" && grep -q serving "$W/serve.log" && return 0
		sleep 0.1
	done
	echo "egress: driver or servers did not start"; cat "$LOG" "$W/serve.log"; exit 1
}
start_driver "$B/egress-test"

pass=0 fail=0
ok() { echo "ok   $1"; pass=$((pass + 1)); }
bad() { echo "FAIL $1"; sed 's/^/     | /' <<<"$2"; fail=$((fail + 1)); }
expect() {	# NAME REGEX COMMAND...
	local name=$1 pat=$2 out
	shift 2
	out=$("$@" 2>&1) || true
	if grep -qE -- "$pat" <<<"$out"; then ok "$name"; else bad "$name" "$out"; fi
	if ! kill -0 "$DRV" 2>/dev/null; then
		bad "driver alive after: $name" ""
		exit 1
	fi
}
rss() { awk '/^VmRSS/ {print $2}' /proc/$DRV/status; }	# KiB
# The driver is `ip netns exec`'s child: find the real pid.
real_pid() {
	local c=
	for _ in $(seq 20); do
		c=$(pgrep -P $DRV | head -1 || true)
		[ -n "$c" ] && break
		sleep 0.1
	done
	[ -n "${c:-}" ] && DRV=$c
	return 0
}
real_pid

CURL="curl -sS -m 8"
# --- DNS ---------------------------------------------------------------------
expect "dns: allowed A answered, TTL <= 60" '^NOERROR 203\.0\.113\.10/ttl=([0-9]|[1-5][0-9]|60)$' $G $TOOL dns allowed.test A
expect "dns: blocked REFUSED" '^REFUSED$' $G $TOOL dns blocked.test A
expect "dns: AAAA :: dropped, empty NOERROR" '^NOERROR$' $G $TOOL dns allowed.test AAAA
expect "dns: TXT of an allowed name, empty NOERROR" '^NOERROR$' $G $TOOL dns allowed.test TXT
expect "dns: allowed but missing name NXDOMAIN" '^NXDOMAIN$' $G $TOOL dns nx.other.test A
expect "dns: allowed name pointing inside gets no address" '^NOERROR$' $G $TOOL dns inside.test A
expect "dns: wild.test itself REFUSED by *.wild.test" '^REFUSED$' $G $TOOL dns wild.test A
expect "dns: a.wild.test allowed" '^NOERROR 203\.0\.113\.12' $G $TOOL dns a.wild.test A
expect "dns: getent blocked.test fails" '^fail$' $G sh -c 'getent hosts blocked.test || echo fail'
expect "dns: garbage datagrams dropped" '^sent$' $G $TOOL garbage 172.29.0.1 2000
expect "dns: still answers after garbage" '^NOERROR 203\.0\.113\.10' $G $TOOL dns allowed.test A

# --- HTTP and raw TCP --------------------------------------------------------
expect "http: allowed.test" '^allowed\.test$' $G $CURL http://allowed.test/
expect "http: blocked.test fails at DNS" 'resolve' $G $CURL http://blocked.test/
t0=$(date +%s.%N)
expect "http: blocked.test by address reset" 'reset|Recv failure' \
	$G $CURL --resolve blocked.test:80:203.0.113.11 http://blocked.test/
echo "     (refused in $(echo "$(date +%s.%N) - $t0" | bc) s)"
expect "http: guest's wrong IP for allowed.test still reaches allowed" '^allowed\.test$' \
	$G $CURL --resolve allowed.test:80:203.0.113.11 http://allowed.test/
expect "http: a.wild.test by *.wild.test" '^a\.wild\.test$' $G $CURL http://a.wild.test/
expect "http: wild.test not by *.wild.test" 'reset|Recv failure' \
	$G $CURL --resolve wild.test:80:203.0.113.13 http://wild.test/
expect "tcp: 203.0.113.13:7 by address, server speaks first" '^banner 203\.0\.113\.13:7' \
	$G $TOOL tcp 203.0.113.13 7
expect "tcp: 203.0.113.13:8, not HTTP/TLS, reset" '^reset$' $G $TOOL tcp 203.0.113.13 8 'SSH-2.0-x\r\n'
# The reset may come before curl sees its connect finish: "Couldn't connect"
# then; the events at the end show it was the proxy's refusal.
expect "http: 169.254.169.254 refused" 'reset|Recv failure|connect to server' $G $CURL http://169.254.169.254/
expect "http: 10.0.0.1 refused" 'reset|Recv failure|connect to server' $G $CURL http://10.0.0.1/
expect "http: name resolving inside refused" 'reset|Recv failure' \
	$G $CURL --resolve inside.test:80:203.0.113.10 http://inside.test/
expect "tcp: the host's own address refused" '^reset$' $G $TOOL tcp 198.51.100.1 80 'x'

# --- HTTPS (SNI) -------------------------------------------------------------
expect "https: allowed.test through the proxy" '^allowed\.test$' $G $CURL --cacert "$W/ca.pem" https://allowed.test/
expect "https: blocked SNI refused" 'reset|SSL|Recv failure' \
	$G $CURL --cacert "$W/ca.pem" --resolve blocked.test:443:203.0.113.10 https://blocked.test/

# --- hostile clients ---------------------------------------------------------
expect "slow: a client that sends nothing is closed after the sniff timeout" '^reset after (9|1[0-4])\.' \
	$G $TOOL slow 203.0.113.10 80
expect "big: 50 MiB through the proxy" '^52428800$' \
	$G $CURL -o /dev/null -w '%{size_download}\n' http://allowed.test/big
r0=$(rss)
nr=()
for i in 1 2 3 4; do
	$G $TOOL noread 203.0.113.10 80 allowed.test >/dev/null 2>&1 &
	nr+=($!)
done
sleep 4
r1=$(rss)
wait "${nr[@]}" 2>/dev/null || true
echo "     (4 clients that never read a 50 MiB answer: RSS $r0 -> $r1 KiB)"
if [ $((r1 - r0)) -lt $((48 * 1024)) ]; then ok "noread: memory bounded"; else bad "noread: memory bounded" "$r0 -> $r1 KiB"; fi
out=$($G $TOOL flood 203.0.113.10 80 10000 2>&1 || true)
echo "     (10000 connections at once: open/reset = $out)"
open=${out%% *}
if [[ "$out" =~ ^[0-9]+\ [0-9]+$ ]] && [ "$open" -le 1100 ]; then ok "flood: at most about KD_EGRESS_CONNS_MAX held"; else bad "flood" "$out"; fi
sleep 1
expect "flood: serves again afterwards" '^allowed\.test$' $G $CURL http://allowed.test/

# --- counters -------------------------------------------------------------------
kill -USR1 $DRV
sleep 0.3
expect "stats: counted" 'conns_ok=[1-9].*conns_refused=[1-9].*dns_ok=[1-9].*dns_refused=[1-9].*bytes_in=[1-9]' \
	grep '^stats' "$LOG"
# --- remove with live connections, then add again -----------------------------
$G $CURL --limit-rate 2M -o /dev/null http://allowed.test/big >"$W/cut.log" 2>&1 &
cut=$!
sleep 1
kill -USR2 $DRV
for _ in $(seq 50); do grep -q '^readded' "$LOG" && break; sleep 0.1; done
if wait $cut; then bad "remove: cuts a live download" "$(cat "$W/cut.log")"; else ok "remove: cuts a live download"; fi
expect "remove: served again after re-add" '^allowed\.test$' $G $CURL http://allowed.test/
expect "remove: DNS again after re-add" '^NOERROR 203\.0\.113\.10' $G $TOOL dns allowed.test A

# --- events, stop, sanitizers ---------------------------------------------------
nev=$(grep -c '^event' "$LOG" || true)
if [ "$nev" -le $((2 * 60)) ] && [ "$nev" -gt 0 ]; then ok "events: rate-limited ($nev events)"; else bad "events: rate-limited" "$nev"; fi
kill -TERM $DRV
# LeakSanitizer reports as the process exits: wait for that.
for _ in $(seq 200); do kill -0 $DRV 2>/dev/null || break; sleep 0.1; done
if grep -q '^stopped$' "$LOG"; then ok "stop: clean"; else bad "stop: clean" "$(tail -5 "$LOG")"; fi
if grep -qE 'AddressSanitizer|LeakSanitizer|runtime error' "$LOG"; then
	bad "sanitizers: clean" "$(grep -A30 -E 'AddressSanitizer|LeakSanitizer|runtime error' "$LOG" | head -60)"
else
	ok "sanitizers: clean"
fi
for ev in 'dns_refused: blocked.test: not in allow_net' 'egress_refused: blocked.test:80: not in allow_net' \
	'egress_refused: 169.254.169.254:80: special address' 'egress_refused: 10.0.0.1:80: special address' \
	'egress_refused: inside.test: resolves only to special addresses' 'egress_refused: 198.51.100.1:80: the host' \
	'egress_refused: blocked.test:443: not in allow_net' 'egress_refused: 203.0.113.10:80: no server name within' \
	'egress_refused: 203.0.113.13:8: neither'; do
	if grep -qF "$ev" "$LOG"; then ok "event: $ev"; else bad "event: $ev" ""; fi
done
echo "     events seen:"
grep '^event' "$LOG" | sed 's/^event [^ ]* //' | sort | uniq -c | sort -rn | head -25 | sed 's/^/     /'

# --- secrets: TLS terminated for secret hosts, placeholders replaced ---------
# A second driver with the node CA in $W/nodeca, the test CA trusted for
# upstreams, and one secret for secret.test and untrusted.test (hosts that
# allow_net does not name: a secret's hosts are allowed by it).
ALLOW_SAVE=("${ALLOW[@]}")
ALLOW=(allowed.test)
PH=KILN_SECRET_0123456789abcdef0123456789abcdef
VAL=s3cr3t-VALUE-xyz
EXTRA=(--ca-dir "$W/nodeca" --upstream-ca "$W/ca.pem" --secret "API_KEY,$PH,$VAL,secret.test,untrusted.test")
start_driver "$B/egress-test"
real_pid
NCA=$W/nodeca/ca.crt
if [ "$(stat -c %a "$W/nodeca/ca.key")" = 600 ] && [ "$(stat -c %a "$W/nodeca/secrets.key")" = 600 ] &&
	[ "$(stat -c %a "$NCA")" = 644 ] &&
	openssl x509 -in "$NCA" -noout -text | grep -q 'CA:TRUE, pathlen:0'; then
	ok "secrets: node CA made (key 0600, certificate 0644, CA:TRUE pathlen:0)"
else
	bad "secrets: node CA made" "$(ls -l "$W/nodeca"; openssl x509 -in "$NCA" -noout -text 2>&1 | head -30)"
fi
expect "secrets: placeholder replaced on the secret's host" "^auth=Bearer $VAL\$" \
	$G $CURL --cacert "$NCA" -H "Authorization: Bearer $PH" https://secret.test/echo
expect "secrets: keep-alive, both requests replaced on one connection" \
	"^auth=Bearer $VAL;body=3 1 auth=Bearer $VAL 0\$" \
	sh -c "$G $CURL --cacert $NCA -H 'Authorization: Bearer $PH' -w '%{num_connects}\n' -d abc https://secret.test/echo \
		--next --cacert $NCA -H 'Authorization: Bearer $PH' -w '%{num_connects}\n' https://secret.test/echo | paste -sd' '"
expect "secrets: chunked body, then a second request, both replaced" \
	"^auth=Bearer $VAL;body=5 auth=Bearer $VAL\$" \
	sh -c "printf 'hello' | $G $CURL --cacert $NCA -H 'Authorization: Bearer $PH' -H 'Transfer-Encoding: chunked' \
		-T - -X POST https://secret.test/echo --next --cacert $NCA -H 'Authorization: Bearer $PH' \
		https://secret.test/echo | paste -sd' '"
expect "secrets: curl --http2 gets HTTP/1.1" "^auth=Bearer $VAL 1\.1\$" \
	sh -c "$G $CURL --http2 --cacert $NCA -H 'Authorization: Bearer $PH' -w '%{http_version}\n' https://secret.test/echo | paste -sd' '"
expect "secrets: the guest sees the node CA's leaf, not the upstream's" 'SSL|certificate' \
	$G $CURL --cacert "$W/ca.pem" -H "Authorization: Bearer $PH" https://secret.test/echo
expect "secrets: another host gets the placeholder unreplaced (not terminated)" "^auth=Bearer $PH\$" \
	$G $CURL --cacert "$W/ca.pem" -H "Authorization: Bearer $PH" https://allowed.test/echo
expect "secrets: plain HTTP to the secret's host carries it unreplaced" "^auth=Bearer $PH\$" \
	$G $CURL -H "Authorization: Bearer $PH" http://secret.test/echo
expect "secrets: an upstream with an untrusted certificate fails" 'SSL|reset|Recv failure' \
	$G $CURL --cacert "$NCA" -H "Authorization: Bearer $PH" https://untrusted.test/echo
expect "secrets: a header block over 64 KiB is refused" 'SSL|reset|Recv failure|Empty reply|HTTP/2 stream|closed' \
	sh -c "$G $CURL --cacert $NCA -H \"X-Big: \$(head -c 70000 /dev/zero | tr '\\0' a)\" https://secret.test/echo"
expect "secrets: still serves after that" "^auth=Bearer $VAL\$" \
	$G $CURL --cacert "$NCA" -H "Authorization: Bearer $PH" https://secret.test/echo
kill -TERM $DRV
for _ in $(seq 200); do kill -0 $DRV 2>/dev/null || break; sleep 0.1; done
if grep -qF 'egress_refused: untrusted.test:443: upstream certificate not trusted:' "$LOG"; then
	ok "secrets: event for the untrusted upstream"
else
	bad "secrets: event for the untrusted upstream" "$(grep '^event' "$LOG")"
fi
if grep -qF "$VAL" "$LOG" "$W/serve.log"; then bad "secrets: the value never in the driver's output" "$(grep -F "$VAL" "$LOG")"
else ok "secrets: the value never in the driver's output"; fi
if grep -q '^stopped$' "$LOG" && ! grep -qE 'AddressSanitizer|LeakSanitizer|runtime error' "$LOG"; then
	ok "secrets: stop clean, sanitizers clean"
else
	bad "secrets: stop clean, sanitizers clean" "$(grep -A30 -E 'AddressSanitizer|LeakSanitizer|runtime error' "$LOG" | head -60; tail -5 "$LOG")"
fi
echo "     secrets events:"
grep '^event' "$LOG" | sed 's/^event [^ ]* /     /'
EXTRA=()
ALLOW=("${ALLOW_SAVE[@]}")

# --- lifetimes: remove and stop with lookups still in flight -----------------------
# An upstream that never answers (inet drops what is not its own), so every
# DNS query and every proxied name waits on evdns when the sandbox goes.
ALLOW_SAVE=("${ALLOW[@]}")
ALLOW=(allowed.test)
start_driver_dns() {
	: >"$LOG"
	ip netns exec $HOST "$B/egress-test" --netns /run/netns/$SBX --dns 203.0.113.99 "${ALLOW[@]}" >>"$LOG" 2>&1 &
	DRV=$!
	pids+=($DRV)
	for _ in $(seq 100); do grep -q '^ready' "$LOG" && return 0; sleep 0.1; done
	echo "egress: driver did not start"; cat "$LOG"; exit 1
}
start_driver_dns
cl=()
for i in $(seq 20); do
	$G $TOOL dns allowed.test A >/dev/null 2>&1 &
	cl+=($!)
	$G curl -s -m 3 -o /dev/null --resolve allowed.test:80:203.0.113.10 http://allowed.test/ >/dev/null 2>&1 &
	cl+=($!)
done
sleep 1
kill -USR2 $DRV
for _ in $(seq 50); do grep -q '^readded' "$LOG" && break; sleep 0.1; done
for i in $(seq 20); do
	$G $TOOL dns allowed.test A >/dev/null 2>&1 &
	cl+=($!)
	$G curl -s -m 3 -o /dev/null --resolve allowed.test:80:203.0.113.10 http://allowed.test/ >/dev/null 2>&1 &
	cl+=($!)
done
sleep 1
kill -TERM $DRV
for _ in $(seq 200); do kill -0 $DRV 2>/dev/null || break; sleep 0.1; done
wait "${cl[@]}" 2>/dev/null || true
if grep -q '^readded' "$LOG" && grep -q '^stopped$' "$LOG" &&
	! grep -qE 'AddressSanitizer|LeakSanitizer|runtime error' "$LOG"; then
	ok "lifetimes: remove and stop with lookups in flight, sanitizers clean"
else
	bad "lifetimes: remove and stop with lookups in flight" "$(tail -40 "$LOG")"
fi
ALLOW=("${ALLOW_SAVE[@]}")

# --- benchmark: through the proxy (an -O2 build) against straight from "host" --
start_driver "$B/egress-test-O2"
p50() { sort -n | awk '{v[NR]=$1} END {printf "%.2f", v[int((NR+1)/2)] * 1000}'; }
bench() {	# NS URL [CURLARGS] -> "connect_p50 total_p50" in ms
	local f=$W/bench.$RANDOM
	for _ in $(seq 50); do
		ip netns exec "$1" curl -s -o /dev/null -w '%{time_connect} %{time_total}\n' "${@:3}" "$2"
	done >"$f"
	echo "$(cut -d' ' -f1 <"$f" | p50) $(cut -d' ' -f2 <"$f" | p50)"
}
read -r pc pt <<<"$(bench $GUEST http://allowed.test/ --resolve allowed.test:80:203.0.113.10)"
read -r dc dt <<<"$(bench $HOST http://203.0.113.10/)"
tp=$(ip netns exec $GUEST curl -s -o /dev/null -w '%{speed_download}' --resolve allowed.test:80:203.0.113.10 http://allowed.test/big)
td=$(ip netns exec $HOST curl -s -o /dev/null -w '%{speed_download}' http://203.0.113.10/big)
echo
echo "benchmark (50 requests each, p50; 50 MiB download)"
printf '  %-28s %12s %12s %12s\n' path time_connect time_total 'MiB/s'
printf '  %-28s %9s ms %9s ms %12.0f\n' "guest -> proxy -> inet" "$pc" "$pt" "$(echo "$tp / 1048576" | bc -l)"
printf '  %-28s %9s ms %9s ms %12.0f\n' "host -> inet (direct)" "$dc" "$dt" "$(echo "$td / 1048576" | bc -l)"
printf '  total-time ratio proxy/direct: %.2f\n' "$(echo "$pt / $dt" | bc -l)"
kill -TERM $DRV 2>/dev/null || true

echo
echo "egress: $pass passed, $fail failed"
[ "$fail" = 0 ]
