#!/usr/bin/env bash
# The kiln CLI against a real kilnd, for the verbs that need no VM: node,
# ls, metrics, template ls, tokens over the unix socket and TCP, create
# (refused, or failing to boot without /dev/kvm: either way kilnd's message), unknown
# sandboxes (exit 1 with kilnd's message, 125 for the agent tunnel), an
# unreachable kilnd (125), a silent one (--request-timeout) and an oversized
# reply. Starts its own kilnd with --state-dir and --listen in a temporary
# directory and kills it at the end. No /dev/kvm needed.
# Usage: tests/kilnd-cli/run.sh KILND KILN
set -u
[ $# = 2 ] || { echo "usage: $0 KILND KILN" >&2; exit 2; }
kilnd=$1 kiln=$2
if [ ! -x "$kilnd" ]; then
	echo "1..0 # SKIP kilnd-cli: $kilnd is not built"
	exit 0
fi
work=$(mktemp -d)
sock=$work/kilnd.sock
kp= sp=
cleanup() {
	[ -n "$sp" ] && kill "$sp" 2>/dev/null
	[ -n "$kp" ] && kill "$kp" 2>/dev/null && wait "$kp" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT
tap_name=kilnd-cli tap_logs="$work/kilnd.log"
. "$(dirname "$0")/lib.sh"

port=$(free_port)
tcp=http://127.0.0.1:$port
mkdir -p "$work/state"
ASAN_OPTIONS=detect_leaks=0 "$kilnd" --state-dir "$work/state" --listen "unix:$sock" \
	--listen "tcp:127.0.0.1:$port" >"$work/kilnd.log" 2>&1 &
kp=$!
wait_for 30 test -S "$sock"
check "kilnd starts on a unix socket and TCP" "$(test -S "$sock" && echo 1)" "$(tail -n 5 "$work/kilnd.log")"
export KILN_ENDPOINT=unix:$sock
unset KILN_TOKEN KILN_UDS

run node
check "node: the node's capacity, one key a line" \
	"$([[ $st = 0 && $out == *capacity_mb* && $out == *free_mb* ]] && echo 1)" "$(detail)"
run node --json
check "node --json: kilnd's object" \
	"$([ $st = 0 ] && printf '%s' "$out" | python3 -c 'import json,sys; assert "capacity_mb" in json.load(sys.stdin)' && echo 1)" \
	"$(detail)"
run ls
check "ls: a table with no sandbox" "$([[ $st = 0 && $out == ID*STATE*MEMORY*VCPUS*STOP_AT*LABELS ]] && echo 1)" "$(detail)"
run ls --json --all --label 'team=a b&c' --label x=1
check "ls --json --all --label (escaped): {\"sandboxes\": []}" \
	"$([ $st = 0 ] && printf '%s' "$out" | python3 -c 'import json,sys; assert json.load(sys.stdin)["sandboxes"] == []' && echo 1)" \
	"$(detail)"
run metrics
check "metrics: Prometheus text" "$([[ $st = 0 && $out == *'# TYPE'* ]] && echo 1)" "$(detail)"
run template ls
check "template ls: a table" "$([[ $st = 0 && $out == IMAGE* ]] && echo 1)" "$(detail)"

run token create
token=$out
check "token create: a ddo_ token on stdout" "$([[ $st = 0 && $token == ddo_* ]] && echo 1)" "$(detail)"
run token create --json
tok2_id=$(printf '%s' "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' 2>/dev/null)
check "token create --json: id and token" "$([[ $st = 0 && $tok2_id == tok_* ]] && echo 1)" "$(detail)"
run token ls
check "token ls: lists the tokens" "$([[ $st = 0 && $out == *"$tok2_id"* ]] && echo 1)" "$(detail)"

KILN_TOKEN=$token run node --endpoint "$tcp"
check "TCP with the token: node answers" "$([[ $st = 0 && $out == *capacity_mb* ]] && echo 1)" "$(detail)"
KILN_TOKEN=ddo_wrong run ls --endpoint "$tcp"
check "TCP with a wrong token: exit 1 and kilnd's 401 message" \
	"$([[ $st = 1 && $err == 'kiln: '* && $err == *oken* ]] && echo 1)" "$(detail)"
run ls --endpoint "$tcp"
check "TCP without a token: exit 1 and kilnd's message" "$([[ $st = 1 && $err == 'kiln: '* ]] && echo 1)" "$(detail)"
KILN_TOKEN=$token run token create --endpoint "$tcp"
check "token create over TCP: refused, exit 1" "$([[ $st = 1 && $err == 'kiln: '* ]] && echo 1)" "$(detail)"
run token revoke "$tok2_id"
check "token revoke ID" "$([ $st = 0 ] && echo 1)" "$(detail)"
run token revoke tok_nosuchtoken
check "token revoke of an unknown id: exit 1" "$([[ $st = 1 && $err == 'kiln: '* ]] && echo 1)" "$(detail)"

unknown=sbx_loc_abcdefghjkmnpqrstvwx
for verb in info kill events; do
	run "$verb" "$unknown"
	check "$verb of an unknown sandbox: exit 1 with kilnd's message" \
		"$([[ $st = 1 && $err == 'kiln: '* && $err != *HTTP* ]] && echo 1)" "$(detail)"
done
run extend "$unknown" 10m
check "extend of an unknown sandbox: exit 1" "$([[ $st = 1 && $err == 'kiln: '* ]] && echo 1)" "$(detail)"
run info sbx_malformed
check "info of a malformed id: exit 1 with kilnd's 400 message" "$([[ $st = 1 && $err == *malformed* ]] && echo 1)" "$(detail)"
run exec "$unknown" -- true
check "exec through the tunnel to an unknown sandbox: 125 with kilnd's message" \
	"$([[ $st = 125 && $err == 'kiln: '* && $err != *HS:* ]] && echo 1)" "$(detail)"

run create --memory 100
check "create --memory 100: kilnd's range message, exit 1" \
	"$([[ $st = 1 && $err == 'kiln: '*memory_mb* ]] && echo 1)" "$(detail)"
# Without a usable /dev/kvm the template fails to boot: kilnd's reason,
# exit 1. With one, the sandbox is listed by its label and killed.
run create --memory 768 --vcpus 1 --timeout 1m --label suite=kilnd-cli --env A=b
if [ $st = 0 ]; then
	id=$out
	run ls --label suite=kilnd-cli
	check "create prints the id; ls --label lists it" "$([[ $id == sbx_* && $out == *"$id"* ]] && echo 1)" "$(detail)"
	run kill "$id"
	check "kill ID" "$([ $st = 0 ] && echo 1)" "$(detail)"
else
	check "create that kilnd cannot boot: exit 1 with its reason" \
		"$([[ $st = 1 && $err == 'kiln: '* && -z $out ]] && echo 1)" "$(detail)"
	run ls --all --label suite=kilnd-cli
	check "ls --all --label: the failed sandbox with its label" \
		"$([[ $st = 0 && $out == *sbx_*suite=kilnd-cli* ]] && echo 1)" "$(detail)"
fi

KILN_TOKEN=ddo_wrong run exec "$unknown" --endpoint "$tcp" -- true
check "exec over TCP with a wrong token: 125 with kilnd's reason" \
	"$([[ $st = 125 && $err == 'kiln: '*oken* ]] && echo 1)" "$(detail)"

run info 'a/b'
check "an id that is no URL path segment: usage, exit 2" "$([ $st = 2 ] && echo 1)" "$(detail)"
run create --memory lots
check "create --memory lots: usage, exit 2" "$([ $st = 2 ] && echo 1)" "$(detail)"
KILN_TOKEN=$'ddo_x\r\nX-Injected: 1' run node
check "a KILN_TOKEN with control characters: usage, exit 2, not sent" \
	"$([[ $st = 2 && $err == *KILN_TOKEN* ]] && echo 1)" "$(detail)"
run node --endpoint ftp://x
check "a bad endpoint: usage, exit 2" "$([[ $st = 2 && $err == *unix:/PATH* ]] && echo 1)" "$(detail)"

run node --endpoint "unix:$work/nothing.sock"
check "no kilnd on the socket: 125, the endpoint and the fix" \
	"$([[ $st = 125 && $err == "kiln: cannot reach kilnd at unix:$work/nothing.sock: No such file or directory (is kilnd running? set KILN_ENDPOINT)" ]] && echo 1)" \
	"$(detail)"
KILN_ENDPOINT=http://127.0.0.1:1 run ls
check "no kilnd on the TCP port: 125" "$([[ $st = 125 && $err == *'Connection refused'* ]] && echo 1)" "$(detail)"
run exec "$unknown" --endpoint "unix:$work/nothing.sock" -- true
check "exec with no kilnd: 125" "$([[ $st = 125 && $err == *'cannot reach kilnd'* ]] && echo 1)" "$(detail)"

# A server that accepts and never answers, and one that answers too much.
python3 - "$work/silent.sock" "$work/big.sock" <<'EOF' &
import os, socket, sys, threading
def serve(path, answer):
    s = socket.socket(socket.AF_UNIX); s.bind(path); s.listen(8)
    while True:
        c, _ = s.accept()
        threading.Thread(target=answer, args=(c,), daemon=True).start()
def silent(c):
    c.recv(4096); threading.Event().wait()
def big(c):
    c.recv(4096)
    try:
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
        c.sendall(b"[" + b"0," * (9 << 20))
    except OSError:
        pass
    c.close()
threading.Thread(target=serve, args=(sys.argv[1], silent), daemon=True).start()
serve(sys.argv[2], big)
EOF
sp=$!
wait_for 10 test -S "$work/big.sock"
t0=$(date +%s)
run node --endpoint "unix:$work/silent.sock" --request-timeout 2
took=$(($(date +%s) - t0))
check "a kilnd that never answers: 125 after --request-timeout" \
	"$([[ $st = 125 && $err == *'did not answer'* && $took -lt 30 ]] && echo 1)" "$(detail); took $took s"
run node --endpoint "unix:$work/big.sock"
check "a reply over 16 MiB: 125, named" "$([[ $st = 125 && $err == *'16 MiB'* ]] && echo 1)" "$(detail)"

kill "$kp" 2>/dev/null
wait "$kp"
kst=$?
kp=
check "kilnd ends on SIGTERM with no sanitizer report" \
	"$(! grep -qE 'Sanitizer|runtime error' "$work/kilnd.log" && echo 1)" "exit $kst; $(tail -n 5 "$work/kilnd.log")"

done_tap
