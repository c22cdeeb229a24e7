#!/usr/bin/env bash
# The CLI's agent tunnel (kiln exec ID ... through kilnd's agent WebSocket)
# without kilnd or a VM: fake-kilnd (tests/kilnd-cli/fake_kilnd.c) bridges
# the WebSocket to kiln-agent-host, the agent on a unix socket. Run by
# `make test-unit`.
# Usage: tests/kilnd-cli/tunnel.sh FAKE_KILND AGENT KILN
set -u
[ $# = 3 ] || { echo "usage: $0 FAKE_KILND AGENT KILN" >&2; exit 2; }
fake=$1 agent=$2 kiln=$3
work=$(mktemp -d)
ap= fp= sp=
cleanup() {
	for p in $sp $fp $ap; do kill "$p" 2>/dev/null; done
	wait 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT
tap_name=kilnd-tunnel tap_logs="$work/fake.log $work/agent.log"
. "$(dirname "$0")/lib.sh"

ASAN_OPTIONS=detect_leaks=0 "$agent" --listen "unix:$work/agent.sock" 2>"$work/agent.log" &
ap=$!
wait_for 30 test -S "$work/agent.sock"
"$fake" "$work/kilnd.sock" "$work/agent.sock" 2>"$work/fake.log" &
fp=$!
wait_for 30 test -S "$work/kilnd.sock"
export KILN_ENDPOINT=unix:$work/kilnd.sock
unset KILN_UDS KILN_TOKEN

run exec sbx_ok -- sh -c 'echo out; echo err >&2; exit 3'
check "exec ID: stdout, stderr and the exit status through the WebSocket" \
	"$([[ $st = 3 && $out = out && $err = err ]] && echo 1)" "$(detail)"
seq 1 50000 >"$work/in"
stdin=$work/in run exec -i sbx_ok -- wc -l
check "exec -i ID: stdin through the tunnel" "$([[ $st = 0 && $out = 50000 ]] && echo 1)" "$(detail)"
head -c 3000000 /dev/urandom >"$work/big"
run cp sbx_ok "$work/big" guest:"$work/big.up"
run cp sbx_ok guest:"$work/big.up" "$work/big.down"
check "cp ID: 3 MB up and back down, unchanged" "$([ $st = 0 ] && cmp -s "$work/big" "$work/big.down" && echo 1)" \
	"$(detail)"
run ls sbx_ok "$work"
check "ls ID DIR: the agent's listing (not the sandboxes')" "$([[ $st = 0 && $out == *big.up* ]] && echo 1)" \
	"$(detail)"
run exec sbx_gone -- true
check "exec to a sandbox kilnd does not know: 125 with kilnd's message" \
	"$([[ $st = 125 && $err == 'kiln: no sandbox with that id (kiln ls lists them)' ]] && echo 1)" "$(detail)"
run exec sbx_drop -- sleep 30
check "kilnd closing the WebSocket mid-exec: the agent client's connection-lost error and kilnd's reason, 125" \
	"$([[ $st = 125 && $err == *'agent closed the connection'*'(kilnd: sandbox killed)' ]] && echo 1)" "$(detail)"
run exec sbx_text -- sleep 30
check "a text message from kilnd ends the connection: 125" "$([ $st = 125 ] && echo 1)" "$(detail)"

# connect --raw half-closes at stdin's end; the tunnel keeps the reply coming.
port=$(free_port)
python3 -c '
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(4)
while True:
    c, _ = s.accept(); data = b""
    while not data.endswith(b"\n"):
        b = c.recv(100)
        if not b: break
        data += b
    c.sendall(b"got " + data); c.close()
' "$port" &
sp=$!
wait_for 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null
echo hello >"$work/hello"
stdin=$work/hello run connect --raw sbx_ok "$port"
check "connect --raw ID PORT: stdin's end half-closes, the reply still arrives" \
	"$([[ $st = 0 && $out = 'got hello' ]] && echo 1)" "$(detail)"

# An endpoint that accepts and never answers the upgrade.
python3 -c '
import socket, sys, time
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(4)
conns = []
while True:
    c, _ = s.accept(); conns.append(c)
' "$work/silent.sock" &
sp="$sp $!"
wait_for 10 test -S "$work/silent.sock"
t0=$(date +%s)
run exec sbx_ok --endpoint "unix:$work/silent.sock" --connect-timeout 2 -- true
took=$(($(date +%s) - t0))
check "an upgrade never answered: 125 after --connect-timeout" \
	"$([[ $st = 125 && $err == *'did not open the agent connection'* && $took -lt 20 ]] && echo 1)" \
	"$(detail); took $took s"

# Endpoints: bad forms are usage errors (2); good ones with nothing there, 125.
for ep in unix:relative http://host http://h:99999 http://h:1/path https://h:1 'http://[::1:1'; do
	run node --endpoint "$ep"
	check "endpoint $ep: usage, exit 2" "$([[ $st = 2 && $err == *"endpoint $ep"* ]] && echo 1)" "$(detail)"
done
run node --endpoint 'http://[::1]:1'
check "endpoint http://[::1]:1: parsed, unreachable, 125" "$([[ $st = 125 && $err == *'cannot reach kilnd'* ]] && echo 1)" \
	"$(detail)"

run exec sbx_ok -- true
check "the fake kilnd and the agent still serve" "$([ $st = 0 ] && echo 1)" "$(detail)"
kill "$fp"; wait "$fp" 2>/dev/null; fp=
check "no sanitizer report (kiln's are in the checks above)" \
	"$(! grep -qE 'Sanitizer|runtime error' "$work/fake.log" "$work/agent.log" && echo 1)" "$(cat "$work/fake.log")"

done_tap
