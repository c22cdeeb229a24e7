#!/usr/bin/env bash
# SDK benchmark: the real @deno/sandbox SDK (tests/sdk/node_modules, from npm)
# against kiln's own CLI, both through one kilnd serving Debian sandboxes, in
# one run (bench/sdk.mjs does the measuring and prints the table):
#   1. Sandbox.create() -> the first sh`true` returns, against kiln create ->
#      kiln exec ID -- true, interleaved round by round, each sandbox killed
#      after; both against the 93 ms Deno Sandbox advertises for a create
#   2. sh`true` round trips on one open sandbox against kiln exec ID -- true
#   3. MiB/s of fs.writeFile/readFile (31 MiB) and fs.upload/download (64
#      files of 256 KiB) against kiln cp of the same data, same sandbox
# This script starts kilnd (--default-image debian, a unix socket and a TCP
# listener on 127.0.0.1), takes a token (POST /v1/tokens on the unix
# socket), runs node bench/sdk.mjs with the SDK pointed at the TCP listener
# and the CLI at the unix socket, and on any exit kills every sandbox, stops
# kilnd, kills any kiln-vmm left with its state dir in its argv and removes
# that dir.
# Needs /dev/kvm (make bench-sdk goes through tests/nested/kvm-host.sh where
# there is none), node, tests/sdk/node_modules (make deps-test) and the
# Debian image (make image).
# Usage: bench/sdk.sh VMM KILND KILN
# Environment: BENCH_SDK_ROUNDS (create rounds, 10), BENCH_SDK_SH (round trips,
# 50), BENCH_SDK_XFER (rounds of each transfer, 3), BENCH_SDK_MIB (the file's
# size, 31), BENCH_SDK_TIMEOUT (seconds per step, 120; 300 in the nested host).
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

if (($# < 3)); then
	echo "usage: $0 VMM KILND KILN" >&2
	exit 2
fi
vmm=$(realpath "$1") kilnd=$(realpath "$2") kiln=$(realpath "$3")
root=$(cd "$(dirname "$0")/.." && pwd)
for f in "$vmm" "$kilnd" "$kiln"; do
	[ -x "$f" ] || { echo "bench-sdk: $f: not an executable (make bench-sdk builds it)" >&2; exit 2; }
done
# (-c first: <> would create a regular file where there is no /dev/kvm)
if ! [ -c /dev/kvm ] || ! { : <>/dev/kvm; } 2>/dev/null; then
	echo "bench-sdk: /dev/kvm cannot be opened; run this under tests/nested/kvm-host.sh (make bench-sdk does)" >&2
	exit 2
fi
command -v node >/dev/null || { echo "bench-sdk: node not found (make deps-test installs it)" >&2; exit 2; }
[ -d "$root/tests/sdk/node_modules/@deno/sandbox" ] ||
	{ echo "bench-sdk: tests/sdk/node_modules/@deno/sandbox missing: run make deps-test (npm ci in tests/sdk)" >&2; exit 2; }
[ -e "$(dirname "$kilnd")/guest/debian.ext4" ] ||
	{ echo "bench-sdk: $(dirname "$kilnd")/guest/debian.ext4 missing: run make image" >&2; exit 2; }

# Short paths: kilnd's run dirs and every VM's vsock socket live here
# (sun_path holds 107 bytes).
tmp=$(mktemp -d /tmp/bsdk.XXXXXX)
kd=$tmp/kd sock=$tmp/kd.sock klog=$tmp/kilnd.log
kd_pid='' node_pid=''
log() { echo "bench-sdk: $*" >&2; }
api() { curl -sS --max-time 60 --unix-socket "$sock" -X "$1" "http://kd$2"; }

# shellcheck disable=SC2317 # invoked by trap
cleanup() {
	local rc=$? id
	trap - EXIT INT TERM HUP
	if [ -n "$node_pid" ] && kill -0 "$node_pid" 2>/dev/null; then
		kill -TERM "$node_pid" 2>/dev/null || true   # it kills its own sandboxes on the way out
		for _ in $(seq 100); do kill -0 "$node_pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$node_pid" 2>/dev/null || true
	fi
	if [ -n "$kd_pid" ] && kill -0 "$kd_pid" 2>/dev/null; then
		# kilnd leaves its sandboxes running on SIGTERM: kill them first.
		for id in $(api GET /v1/sandboxes 2>/dev/null | jq -r '.sandboxes[]?.id' 2>/dev/null); do
			log "cleanup: killing $id"
			api DELETE "/v1/sandboxes/$id" >/dev/null 2>&1 || true
		done
		kill -TERM "$kd_pid" 2>/dev/null || true
		for _ in $(seq 100); do kill -0 "$kd_pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$kd_pid" 2>/dev/null || true
	fi
	# kilnd's VMMs are not our children: find them by our state dir in their argv.
	pkill -9 -f "kiln-vmm .*$kd/" 2>/dev/null || true
	sleep 0.5
	if [ "$rc" != 0 ] && [ -s "$klog" ]; then
		log "kilnd's log, last lines:"
		tail -n 15 "$klog" | sed 's/^/bench-sdk: | /' >&2
	fi
	rm -rf "$tmp"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log "starting kilnd (debian by default) on $sock and 127.0.0.1:$port"
# --min-free: the nested host's disk is a tmpfs; the sandboxes' layers are sparse.
"$kilnd" --state-dir "$kd" --listen "unix:$sock" --listen "tcp:127.0.0.1:$port" --vmm "$vmm" \
	--default-image debian --min-free 256M </dev/null >>"$klog" 2>&1 &
kd_pid=$!
for _ in $(seq 600); do
	curl -s --max-time 2 --unix-socket "$sock" http://kd/v1/node >/dev/null 2>&1 && break
	kill -0 "$kd_pid" 2>/dev/null || { log "kilnd exited at start: $(tail -n 5 "$klog")"; exit 1; }
	sleep 0.1
done
curl -s --max-time 2 --unix-socket "$sock" http://kd/v1/node >/dev/null 2>&1 ||
	{ log "kilnd did not answer GET /v1/node within 60 s"; exit 1; }
tok=$(api POST /v1/tokens | jq -r '.token // empty')
[ -n "$tok" ] || { log "POST /v1/tokens gave no token"; exit 1; }
log "kilnd up ($(api GET /v1/node | jq -r '"\(.capacity_mb) MiB for sandboxes, \(.cpus) CPUs"'))"

bench_host_banner
# In the background, so that a signal reaches cleanup at once.
DENO_SANDBOX_ENDPOINT=http://127.0.0.1:$port DENO_DEPLOY_ENDPOINT=http://127.0.0.1:$port DENO_DEPLOY_TOKEN=$tok \
	KILN_ENDPOINT=unix:$sock BENCH_KILN=$kiln BENCH_TMP=$tmp \
	node "$root/bench/sdk.mjs" </dev/null &
node_pid=$!
rc=0
wait "$node_pid" || rc=$?
node_pid=''
exit "$rc"
