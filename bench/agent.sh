#!/usr/bin/env bash
# Agent benchmark: exec round trip of /bin/true through the guest agent
# (build/kiln exec: a new client process, connection, HELLO, EXEC, exit event)
# against fork+exec of /bin/true on the host, timed the same way in the same
# run; then stdout streaming and file upload/download throughput against a
# host pipe and a host file copy. Needs /dev/kvm (make bench-agent goes
# through tests/nested/kvm-host.sh where there is none).
# Usage: bench/agent.sh VMM KILN [ROUNDS] [MIB]
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

vmm=$1 kiln=$2 rounds=${3:-200} mib=${4:-64}
tmp=$(mktemp -d)
vpid=
cleanup() {
	if [ -n "$vpid" ]; then kill "$vpid" 2>/dev/null; wait "$vpid" 2>/dev/null || true; fi
	rm -rf "$tmp"
}
trap cleanup EXIT

bench_host_banner
"$vmm" --timeout 1800 --mem 1024 --console "$tmp/console" --vsock "cid=3,uds=$tmp/a.sock" \
	--cmdline kiln.agent </dev/null &
vpid=$!
"$kiln" exec --uds "$tmp/a.sock" --connect-timeout 200 -- true

python3 - "$kiln" "$tmp/a.sock" "$rounds" "$mib" "$tmp" <<'PY'
import os, subprocess, sys, time

kiln, uds, rounds, mib, tmp = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]

def lat(argv):
    t = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
        t.append(time.perf_counter() - t0)
    t.sort()
    return t[len(t) // 2] * 1e6, t[min(len(t) - 1, len(t) * 99 // 100)] * 1e6

def secs(cmd):
    t0 = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - t0

def ratio(a, b):
    return "%.2f" % (a / b) if b > 0 else "?"

n = mib << 20
ap50, ap99 = lat([kiln, "exec", "--uds", uds, "--", "/bin/true"])
hp50, hp99 = lat(["/bin/true"])
print("%-44s %12s %12s %8s" % ("exec round trip of /bin/true", "p50 us", "p99 us", "p50 x"))
print("%-44s %12.0f %12.0f %8s" % ("kiln exec (client process + agent)", ap50, ap99, ratio(ap50, hp50)))
print("%-44s %12.0f %12.0f %8s" % ("host fork+exec", hp50, hp99, "1.00"))

src = os.path.join(tmp, "src")
with open(src, "wb") as f:
    f.write(os.urandom(n))
rows = [
    ("guest stdout to host (kiln exec)", secs("%s exec --uds %s -- head -c %d /dev/zero >/dev/null" % (kiln, uds, n))),
    ("host pipe (head | cat)", secs("head -c %d /dev/zero | cat >/dev/null" % n)),
    ("upload (kiln cp to guest /tmp)", secs("%s cp --uds %s %s guest:/tmp/src" % (kiln, uds, src))),
    ("download (kiln cp from guest /tmp)", secs("%s cp --uds %s guest:/tmp/src %s/dst" % (kiln, uds, tmp))),
    ("host file copy (cat src > dst)", secs("cat %s >%s/dst2" % (src, tmp))),
]
print()
print("%-44s %12s %8s" % ("%d MiB stream" % mib, "MiB/s", "x host"))
host_pipe, host_cp = rows[1][1], rows[4][1]
for name, s in rows:
    peer = host_pipe if "stdout" in name or "pipe" in name else host_cp
    print("%-44s %12.0f %8s" % (name, mib / s, ratio(peer, s)))
PY
