# Sandbox networks through kilnd (issue 16): a namespace per sandbox, the
# nftables rules in it, the resolver that answers only allowed names and the
# egress proxy that checks SNI and Host against allow_net, all with real
# Debian guests using curl, getent and python3.
#
# The "internet" exists only here: a namespace (kinet) joined to the nested
# host by a veth, at documentation addresses (203.0.113.0/24) with dnsmasq
# and HTTP, HTTPS, echo and UDP servers. The nested host has no NIC, so a
# rule that fails can send a packet nowhere else. One kilnd serves every
# test, with three sandboxes: one with no allow_net, one with a list, one
# with "*". They last 30 minutes: the group outlasts kilnd's default 5m, and
# a sandbox that timed out part way would fail the tests after it.
# shellcheck shell=bash

if [[ $vmm == */asan/* ]]; then
	echo "# egress: run with the first kiln-vmm only"
	return 0
fi

eg_kiln=${KILN_CLI:-$root/build/kiln}
eg_kilnd=${KILND:-$root/build/asan/kilnd}
eg=$work/eg
egsock=$eg/kd.sock
mkdir -p "$eg"
export eg eg_kiln egsock

# The fake internet (tests/net/fake-internet.sh): kinet at 203.0.113.2-.53, the nested host at .1.
# shellcheck source=tests/net/fake-internet.sh
. "$root/tests/net/fake-internet.sh"
eg_net_up() { fi_up "$eg"; }
eg_net_down() { fi_down "$eg"; }

eg_start() {
	ASAN_OPTIONS=detect_leaks=1:quarantine_size_mb=16 "$eg_kilnd" --state-dir "$eg/kd" --listen "unix:$egsock" \
		--vmm "$vmm" --default-image debian --min-free 0 --dns-upstream 203.0.113.53 --upstream-ca "$eg/ca.crt" "$@" >>"$eg/kilnd.log" 2>&1 &
	echo $! >"$eg/kilnd.pid"
	for _ in $(seq 600); do
		curl -s --max-time 2 --unix-socket "$egsock" http://kd/v1/node >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	echo "kilnd did not start: $(tail -3 "$eg/kilnd.log")"
	return 1
}
eg_api() {
	curl -sS --max-time 600 --unix-socket "$egsock" -X "$1" -o "$eg/body" -w '%{http_code}' \
		${3:+-H 'Content-Type: application/json' --data-binary "$3"} "http://kd$2" >"$eg/status"
	cat "$eg/body"
}
eg_mk() { eg_api POST /v1/sandboxes "{\"memory_mb\": 768, \"vcpus\": 1, \"timeout\": \"30m\"${1:+, $1}}" | jq -r '.id // empty'; }
eg_ex() { local id=$1; shift; "$eg_kiln" exec --uds "$eg/kd/run/$id/vsock" --connect-timeout 30 --timeout 60 -- "$@"; }
# eg_curl ID ARGS...: curl in the guest, printing the body or "fail:<exit code>" and the seconds it took.
eg_curl() {
	local id=$1; shift
	eg_ex "$id" bash -c 's=$(date +%s.%N); out=$(curl -sS --max-time 8 "$@" 2>/dev/null) || out="fail:$?";
		e=$(date +%s.%N); printf "%s t=%.1f\n" "$out" "$(echo "$e - $s" | bc 2>/dev/null || echo 0)"' curl "$@"
}
export -f eg_start eg_api eg_mk eg_ex eg_curl
export eg_kilnd vmm

saved_eg_timeout=$per_test_timeout
per_test_timeout=900
on_test_failure() { echo "#   kilnd log: $(tail -n 8 "$eg/kilnd.log" | tr '\n' '|')"; }
eg_net_down
if ! eg_net_up || ! eg_start; then
	run "egress: the fake internet and kilnd start" 0 '^never$' cat "$eg/server.log" "$eg/kilnd.log"
	eg_net_down
	per_test_timeout=$saved_eg_timeout
	return 0
fi

run "egress: kilnd gives sandboxes networks; three sandboxes start (no allow_net, a list, *)" 0 \
	'^net=true a=201 b=201 c=201 net=true$' \
	bash -c 'n=$(eg_api GET /v1/node | jq -r .network)
	         a=$(eg_mk); as=$(cat $eg/status)
	         b=$(eg_mk "\"allow_net\": [\"allowed.test\", \"*.wild.test\", \"203.0.113.13:7\"]"); bs=$(cat $eg/status)
	         c=$(eg_mk "\"allow_net\": [\"*\"]"); cs=$(cat $eg/status)
	         echo "$a" >$eg/a; echo "$b" >$eg/b; echo "$c" >$eg/c
	         echo "net=$n a=$as b=$bs c=$cs net=$(eg_api GET /v1/sandboxes/$b | jq -r .network)"'
A=$(cat "$eg/a" 2>/dev/null); B=$(cat "$eg/b" 2>/dev/null); C=$(cat "$eg/c" 2>/dev/null)
export A B C

run "egress: the guest has eth0 at 172.29.0.2, a route via 172.29.0.1 and kilnd's resolver in resolv.conf" 0 \
	'^172\.29\.0\.2/30 default via 172\.29\.0\.1 nameserver 172\.29\.0\.1$' \
	bash -c 'eg_ex $B bash -c "ip -o -4 addr show eth0 | awk '"'"'{printf \"%s \", \$4}'"'"';
	         ip route | grep -o \"^default via [0-9.]*\" | tr \"\\n\" \" \"; grep -m1 ^nameserver /etc/resolv.conf"'

run "egress: no allow_net: no DNS answer and no connection, even to an address" 0 \
	'^dns=fail http=fail:[0-9]+ ip=fail:[0-9]+$' \
	bash -c 'd=$(eg_ex $A getent hosts allowed.test >/dev/null && echo ok || echo fail)
	         h=$(eg_curl $A http://allowed.test/ | cut -d" " -f1); i=$(eg_curl $A http://203.0.113.10/ | cut -d" " -f1)
	         echo "dns=$d http=$h ip=$i"'

run "egress: allow_net [allowed.test]: its name resolves, HTTP reaches it with its Host" 0 \
	'^203\.0\.113\.10 +allowed\.test server=203\.0\.113\.10 host=allowed\.test ' \
	bash -c 'echo "$(eg_ex $B getent hosts allowed.test | head -1) $(eg_curl $B http://allowed.test/)"'

run "egress: HTTPS to an allowed name goes through by its SNI, the guest verifying the server itself" 0 \
	'^server=203\.0\.113\.10 host=allowed\.test ' \
	bash -c '"$eg_kiln" cp --uds "$eg/kd/run/$B/vsock" "$eg/ca.crt" guest:/tmp/ca.crt >/dev/null &&
	         eg_curl $B --cacert /tmp/ca.crt https://allowed.test/'

run "egress: a name not in allow_net gets no DNS answer, and HTTP and HTTPS to it are reset at once" 0 \
	'^dns=fail http=fail:[0-9]+ t=[0-2]\.[0-9] https=fail:[0-9]+ t=[0-2]\.[0-9]$' \
	bash -c 'd=$(eg_ex $B getent hosts blocked.test >/dev/null && echo ok || echo fail)
	         h=$(eg_curl $B --resolve blocked.test:80:203.0.113.11 http://blocked.test/)
	         s=$(eg_curl $B --cacert /tmp/ca.crt --resolve blocked.test:443:203.0.113.11 https://blocked.test/)
	         echo "dns=$d http=$h https=$s"'

run "egress: the proxy resolves names itself: allowed.test pinned to blocked.test's address still reaches only allowed.test" 0 \
	'^server=203\.0\.113\.10 host=allowed\.test .*/server=203\.0\.113\.10 host=allowed\.test .*/fail:[0-9]+ ' \
	bash -c 'a=$(eg_curl $B --resolve allowed.test:80:203.0.113.11 http://allowed.test/)
	         s=$(eg_curl $B --cacert /tmp/ca.crt --resolve allowed.test:443:203.0.113.11 https://allowed.test/)
	         ip=$(eg_curl $B -H "Host: blocked.test" http://203.0.113.11/)
	         echo "$a/$s/$ip"'

run "egress: *.wild.test allows a.wild.test, not wild.test or wild.test.evil" 0 \
	'^server=203\.0\.113\.12 host=a\.wild\.test .*/fail:[0-9]+ .*/fail:[0-9]+ ' \
	bash -c 'a=$(eg_curl $B http://a.wild.test/); w=$(eg_curl $B --resolve wild.test:80:203.0.113.14 http://wild.test/)
	         e=$(eg_curl $B --resolve wild.test.evil:80:203.0.113.13 http://wild.test.evil/); echo "$a/$w/$e"'

run "egress: an IP:port entry lets raw TCP through to that port only" 0 '^echo=kiln-echo other=refused$' \
	bash -c 'eg_ex $B python3 -c "
import socket
s = socket.create_connection((\"203.0.113.13\", 7), timeout=5); s.sendall(b\"kiln-echo\"); print(\"echo=\" + s.recv(64).decode(), end=\" \")
try:
    t = socket.create_connection((\"203.0.113.13\", 80), timeout=5); t.sendall(b\"x\"); r = t.recv(64); print(\"other=open\" if r else \"other=refused\")
except OSError:
    print(\"other=refused\")"'

run "egress: even with *, link-local, private, loopback, the host's own and the gateway's addresses are unreachable" 0 \
	'^public=ok( fail:[0-9]+){5}$' \
	bash -c 'p=$(eg_curl $C http://allowed.test/ | grep -q "server=203.0.113.10" && echo ok || echo no); out="public=$p"
	         for u in http://169.254.169.254/latest/meta-data/ http://10.0.0.1/ http://203.0.113.1/ http://172.29.0.1:18181/ http://127.0.0.1:1/; do
	           out="$out $(eg_curl $C "$u" | cut -d" " -f1)"; done; echo "$out"'

run "egress: UDP other than DNS never leaves the sandbox" 0 '^sent udp=none$' \
	bash -c 'eg_ex $C python3 -c "
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(5): s.sendto(b\"leak\", (\"203.0.113.10\", 9999))
print(\"sent\", end=\" \")"; sleep 1; grep -q leak $eg/udp.log 2>/dev/null && echo udp=leaked || echo udp=none'

run "egress: refusals are the sandbox's events, naming host, port and reason" 0 \
	'egress_refused .*blocked\.test:80.*not in allow_net' \
	bash -c 'eg_api GET /v1/sandboxes/$B/events | jq -r ".events[] | .kind + \" \" + .detail"'

# Secrets: sandbox D holds API_KEY for secret.test (the fake internet's HTTPS
# server, which echoes the Authorization it gets); only kilnd knows the value.
# The server shows a header without a placeholder only as a hash (egress-server.py).
secret_value=kiln-s3cr3t-v4lue-0f-the-test
secret_sha=sha256:$(printf 'Bearer %s' "$secret_value" | sha256sum | cut -c1-16)
export secret_value
run "egress: a create with a secret shows its name, hosts and placeholder, never its value" 0 \
	'^201 API_KEY secret\.test KILN_SECRET_[0-9a-f]{32} value-absent$' \
	bash -c 'd=$(eg_mk "\"allow_net\": [\"allowed.test\"], \"secrets\": {\"API_KEY\": {\"hosts\": [\"secret.test\"], \"value\": \"$secret_value\"}}")
	         echo "$d" >$eg/d; st=$(cat $eg/status); body=$(eg_api GET /v1/sandboxes/$d)
	         echo "$st $(echo "$body" | jq -r ".secrets[0] | .name + \" \" + (.hosts | join(\",\")) + \" \" + .placeholder") $(echo "$body" | grep -q "$secret_value" && echo value-shown || echo value-absent)"'
D=$(cat "$eg/d" 2>/dev/null)
export D
run "egress: the guest holds the placeholder; kilnd puts the value into requests to the secret's host only" 0 \
	"^env=KILN_SECRET_[0-9a-f]{32} secret-host=$secret_sha other-host=Bearer KILN_SECRET_[0-9a-f]{32}\$" \
	bash -c 'k=$(eg_ex $D printenv API_KEY)
	         a=$(eg_ex $D bash -c "curl -sS --max-time 10 -H \"Authorization: Bearer \$API_KEY\" https://secret.test/" | sed -n "s/.*auth=//p")
	         "$eg_kiln" cp --uds "$eg/kd/run/$D/vsock" "$eg/ca.crt" guest:/tmp/ca.crt >/dev/null
	         o=$(eg_ex $D bash -c "curl -sS --max-time 10 --cacert /tmp/ca.crt -H \"Authorization: Bearer \$API_KEY\" https://allowed.test/" | sed -n "s/.*auth=//p")
	         echo "env=$k secret-host=$a other-host=$o"'

run "egress: python3, git and deno in the guest trust kilnd's CA for the secret's host" 0 \
	"^python=$secret_sha git=no-tls-error deno=$secret_sha\$" \
	bash -c 'p=$(eg_ex $D python3 -c "
import os, urllib.request
r = urllib.request.Request(\"https://secret.test/\", headers={\"Authorization\": \"Bearer \" + os.environ[\"API_KEY\"]})
print(urllib.request.urlopen(r, timeout=20).read().decode().split(\"auth=\")[1].strip())")
	         g=$(eg_ex $D git ls-remote https://secret.test/repo.git 2>&1)
	         case $g in *"certificate"*|*"SSL"*|*"TLS"*) g="tls-error: $g" ;; *) g=no-tls-error ;; esac
	         d=$(eg_ex $D deno eval "const r = await fetch(\"https://secret.test/\", {headers: {Authorization: \"Bearer \" + Deno.env.get(\"API_KEY\")}}); console.log((await r.text()).split(\"auth=\")[1].trim())" 2>&1 | tail -1)
	         echo "python=$p git=$g deno=$d"'

run "egress: a bad allow_net entry is refused with the reason, from the API and the CLI" 0 \
	'^400 .*allow_net entry .*exa mple\.com.* / 1 kiln: .*allow_net entry .*exa mple' \
	bash -c 'm=$(eg_api POST /v1/sandboxes "{\"allow_net\": [\"exa mple.com\"]}" | jq -r .message); s=$(cat $eg/status)
	         c=$("$eg_kiln" create --endpoint "unix:$egsock" --allow-net "exa mple.com" 2>&1); echo "$s $m / $? $c"'

run "egress: after kill -9 and a restart, kilnd serves the sandboxes' networks again" 0 \
	"^server=203\\.0\\.113\\.10 host=allowed\\.test .*/dns=fail/secret=$secret_sha\$" \
	bash -c 'kill -9 $(cat $eg/kilnd.pid); sleep 0.5; eg_start >/dev/null || exit 1
	         a=$(eg_curl $B http://allowed.test/); d=$(eg_ex $A getent hosts allowed.test >/dev/null && echo ok || echo fail)
	         s=$(eg_ex $D bash -c "curl -sS --max-time 10 -H \"Authorization: Bearer \$API_KEY\" https://secret.test/" | sed -n "s/.*auth=//p")
	         echo "$a/dns=$d/secret=$s"'

run "egress: the secret's value is nowhere in the guest's memory (a snapshot of it), its placeholder is" 0 \
	'^placeholder=found value=absent$' \
	bash -c 'ph=$(eg_ex $D printenv API_KEY); rm -rf $eg/dsnap
	         echo "snapshot $eg/dsnap" | python3 -c "
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(sys.stdin.buffer.read()); print(s.recv(4096).decode().strip())" "$eg/kd/run/$D/control" >/dev/null
	         for _ in $(seq 100); do [ -s $eg/dsnap/memory ] && ! pgrep -f "uds=$eg/kd/run/$D/vsock" >/dev/null && break; sleep 0.2; done
	         m=$(ls $eg/dsnap/ | tr "\n" " ")
	         # One pass with mmap: grep -a holds each "line" whole, and 768 MiB of
	         # memory is a few lines of mostly zeros (minutes in the nested host).
	         r=$(python3 -c "
import mmap, sys
with open(sys.argv[1], \"rb\") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
    p = \"found\" if m.find(sys.argv[2].encode()) >= 0 else \"missing\"
    v = \"present\" if m.find(sys.argv[3].encode()) >= 0 else \"absent\"
print(\"placeholder=%s value=%s\" % (p, v))" $eg/dsnap/memory "$ph" "$secret_value" 2>&1)
	         [ -n "$ph" ] || r="placeholder=(printenv API_KEY gave nothing)"
	         rm -rf $eg/dsnap; echo "$r"; echo "(snapshot files: $m)"'

# Namespaces are counted by their inodes across every process (kilnd holds none of its own).
eg_netns_count() { find /proc/[0-9]*/ns/net -maxdepth 0 -printf '%l\n' 2>/dev/null | sort -u | wc -l; }
export -f eg_netns_count
run "egress: 10 create/kill cycles leave no namespace, tap or kilnd descriptor behind" 0 '^ns=same fds=same$' \
	bash -c 'n0=$(eg_netns_count); f0=$(ls /proc/$(cat $eg/kilnd.pid)/fd | wc -l)
	         for i in $(seq 10); do id=$(eg_mk "\"allow_net\": [\"allowed.test\"]"); [ -n "$id" ] || exit 1
	           eg_api DELETE /v1/sandboxes/$id >/dev/null; done; sleep 1
	         n1=$(eg_netns_count); f1=$(ls /proc/$(cat $eg/kilnd.pid)/fd | wc -l)
	         echo "ns=$([ $n1 -le $n0 ] && echo same || echo "$n0->$n1") fds=$([ $f1 -le $((f0 + 2)) ] && echo same || echo "$f0->$f1")"'

run "egress: killing the sandboxes removes their namespaces" 0 '^gone$' \
	bash -c 'n0=$(eg_netns_count); for s in $A $B $C; do eg_api DELETE /v1/sandboxes/$s >/dev/null; done
	         # (a namespace goes with the last of its VMM and kilnd'"'"'s sockets: on a
	         # loaded host that can take more than the second it takes here)
	         for i in $(seq 50); do n1=$(eg_netns_count); [ $n1 -le $((n0 - 3)) ] && break; sleep 0.2; done
	         st=$(for s in $A $B $C; do eg_api GET /v1/sandboxes/$s | jq -r ".state + \":\" + .end_reason"; done | sort -u | tr "\n" " ")
	         [ $n1 -eq $((n0 - 3)) ] && [ "$st" = "stopped:killed " ] && echo gone || echo "$n0 -> $n1 ($st)"'

kill "$(cat "$eg/kilnd.pid")" 2>/dev/null
for _ in $(seq 100); do kill -0 "$(cat "$eg/kilnd.pid")" 2>/dev/null || break; sleep 0.1; done
if grep -q "ERROR: AddressSanitizer\|ERROR: LeakSanitizer\|runtime error" "$eg/kilnd.log"; then
	run "egress: kilnd's sanitizers are quiet" 0 '^never$' grep -A20 "Sanitizer\|runtime error" "$eg/kilnd.log"
fi
eg_net_down
# The nested host's disk is a tmpfs: the templates and layers of this kilnd
# must not crowd out the tests that follow.
pkill -9 -f "kiln-vmm .*$eg/kd/" 2>/dev/null
sleep 0.5
rm -rf "$eg/kd" "$eg/dsnap"
per_test_timeout=$saved_eg_timeout
