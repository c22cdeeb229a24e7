#!/usr/bin/env bash
# The guest agent on the host: build/asan/kiln-agent-host (the agent built
# with ASan and UBSan, serving a unix socket) driven by python and build/kiln,
# no VM needed, and build/asan/kac-pipeline-test (IDENTITY sent ahead of an
# exec, and kac_connect_early, through the C client). Run by `make test-unit`.
# Usage: tests/agent-host/run.sh AGENT KILN PIPELINE_TEST
set -u
[ $# = 3 ] || { echo "usage: $0 AGENT KILN PIPELINE_TEST" >&2; exit 2; }
agent=$1 kiln=$2 pipeline=$3
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
sock=$work/a.sock
pass=0 fail=0
ap= fp=
cleanup() {
	exec 3>&- 2>/dev/null
	[ -n "$fp" ] && kill "$fp" 2>/dev/null
	[ -n "$ap" ] && kill "$ap" 2>/dev/null && wait "$ap" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT

# check NAME OK DETAIL: one TAP line; on failure the detail and the agent's stderr.
check() {
	if [ "$2" = 1 ]; then
		pass=$((pass + 1)); echo "ok $((pass + fail)) - agent-host: $1"
	else
		fail=$((fail + 1)); echo "not ok $((pass + fail)) - agent-host: $1"
		printf '%s\n' "$3" | sed -e 's/^/#   /' | tail -n 10
		grep -E 'Sanitizer|runtime error|WRITE|READ|#[0-4] ' "$work/agent.log" | head -n 12 | sed -e 's/^/#   agent: /'
	fi
}

# wait_for SECONDS CMD...: poll CMD every 0.1 s until it succeeds or time runs out.
wait_for() {
	local end=$((SECONDS + $1))
	shift
	until "$@"; do
		[ $SECONDS -ge $end ] && return 1
		sleep 0.1
	done
}

ASAN_OPTIONS=detect_leaks=0 "$agent" --listen "unix:$sock" 2>"$work/agent.log" &
ap=$!
wait_for 30 test -S "$sock"
check "the agent listens on a unix socket, owner only" \
	"$([[ $(stat -c %a "$sock" 2>/dev/null) == [67]00 ]] && echo 1)" "$(ls -l "$sock" 2>&1; cat "$work/agent.log")"

out=$("$kiln" exec --uds "$sock" -- sh -c 'echo hi; exit 3' 2>&1); st=$?
check "kiln exec through the CONNECT/OK exchange (stdout, exit status)" \
	"$([ "$out" = hi ] && [ $st = 3 ] && echo 1)" "status $st: $out"

out=$("$pipeline" "$sock" 2>&1); st=$?
check "IDENTITY sent ahead: the exec behind it runs as the new identity, a refusal still comes back; an early connection sends all at once" \
	"$([ $st = 0 ] && [ "$(grep -c '^ok ' <<<"$out")" = 6 ] && echo 1)" "status $st: $out"

# 1,900 processes that exit at once while a background child keeps their
# pipes open: each stays attached until its pipes close, and each adds poll
# entries. The agent must refuse at its limit (KP_ERR_LIMIT), not overflow.
mkfifo "$work/hold"
python3 "$here/flood.py" "$root/tests/integration/agent-py-client.py" "$sock" 1900 \
	<"$work/hold" >"$work/flood" 2>&1 &
fp=$!
exec 3>"$work/hold"
wait_for 900 bash -c '[ -s "$1" ] || ! kill -0 "$2" 2>/dev/null' _ "$work/flood" "$fp"
line=$(head -n 1 "$work/flood")
kill -0 "$ap" 2>/dev/null && alive=1 || alive=0
check "1900 execs with pipes held open: the agent lives and refuses the excess with LIMIT" \
	"$([[ $alive = 1 && $line =~ ^ok=[0-9]+\ limit=[1-9][0-9]*\ other=0\ first-limit=exec:\ .*processes ]] && echo 1)" \
	"alive=$alive flood: $(cat "$work/flood")"

out=$("$kiln" exec --uds "$sock" -- true 2>&1); st=$?
check "at the limit kiln exec fails with a line naming it" \
	"$([[ $st != 0 && $out == *processes* ]] && echo 1)" "status $st: $out"

# Closing the connections detaches the processes; exited ones are forgotten
# beyond the 64 kept, so the agent takes new work again.
exec 3>&-
wait "$fp" 2>/dev/null
fp=
out=$(wait_for 60 "$kiln" exec --uds "$sock" -- echo again 2>&1 | tail -n 1)
check "after the flooding connections close, exec works again" \
	"$([ "$out" = again ] && echo 1)" "$out"

"$kiln" shutdown --uds "$sock" --timeout 2000 >/dev/null 2>&1
wait_for 30 bash -c '! kill -0 "$1" 2>/dev/null' _ "$ap"
wait "$ap"; st=$?
ap=
check "SHUTDOWN: the agent exits 0 with no sanitizer report" \
	"$([ $st = 0 ] && ! grep -q Sanitizer "$work/agent.log" && echo 1)" "exit $st"

echo "# agent-host: $pass passed, $fail failed"
[ "$fail" = 0 ]
