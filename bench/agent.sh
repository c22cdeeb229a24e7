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
if ! "$kiln" exec --uds "$tmp/a.sock" --connect-timeout 200 -- true; then
	echo "bench-agent: the guest agent did not answer; kiln-vmm's console:" >&2
	tail -n 20 "$tmp/console" >&2 || true
	exit 1
fi

python3 - "$kiln" "$tmp/a.sock" "$rounds" "$mib" "$tmp" <<'PY'
import hashlib, os, subprocess, sys, time

kiln, uds, rounds, mib, tmp = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
TIMEOUT = 600

def run(argv, **kw):
    try:
        return subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, timeout=TIMEOUT, **kw)
    except subprocess.TimeoutExpired:
        sys.exit("bench-agent: %s: no answer within %d s" % (argv if isinstance(argv, str) else " ".join(argv), TIMEOUT))
    except subprocess.CalledProcessError as e:
        sys.exit("bench-agent: %s: exit status %d" % (e.cmd if isinstance(e.cmd, str) else " ".join(e.cmd), e.returncode))

def lat(argv, n):
    """n times fork+exec+wait of argv: the times in microseconds."""
    t = []
    for _ in range(n):
        t0 = time.perf_counter()
        run(argv)
        t.append((time.perf_counter() - t0) * 1e6)
    return t

def p(t, q):
    t = sorted(t)
    return t[max(0, -(-len(t) * q // 100) - 1)]     # nearest rank

def secs(cmd):
    t0 = time.perf_counter()
    run(cmd, shell=True)
    return time.perf_counter() - t0

def ratio(a, b):
    return "%.2f" % (a / b) if b > 0 else "?"

def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()

n = mib << 20
# In chunks of 10, alternating, so that background load lands on both.
at, ht = [], []
while len(at) < rounds:
    k = min(10, rounds - len(at))
    at += lat([kiln, "exec", "--uds", uds, "--", "/bin/true"], k)
    ht += lat(["/bin/true"], k)
ap50, ap99, hp50, hp99 = p(at, 50), p(at, 99), p(ht, 50), p(ht, 99)

src = os.path.join(tmp, "src")
with open(src, "wb") as f:
    f.write(os.urandom(n))
# dd in 64 KiB blocks on both sides: busybox's head -c alone manages only
# about 12 MiB/s in the nested guest, which would time head, not the stream.
dd = "dd if=/dev/zero bs=65536 count=%d 2>/dev/null" % (n >> 16)
t_out = secs("%s exec --uds %s -- sh -c '%s' >/dev/null" % (kiln, uds, dd))
t_pipe = secs("%s | cat >/dev/null" % dd)
t_up = secs("%s cp --uds %s %s guest:/tmp/src" % (kiln, uds, src))
t_down = secs("%s cp --uds %s guest:/tmp/src %s/dst" % (kiln, uds, tmp))
t_cp = secs("cat %s >%s/dst2" % (src, tmp))
if sha(os.path.join(tmp, "dst")) != sha(src):
    sys.exit("bench-agent: the file downloaded from the guest differs from the one uploaded")

print("%d round trips each (alternating chunks of 10); p99 is nearest rank; %d MiB streams" % (rounds, mib))
print()
print("%-40s %14s %14s %9s" % ("metric", "kiln agent", "host peer", "kiln/host"))
print("%-40s %14s %14s %9s" % ("exec /bin/true round trip p50 (us)", "%.0f" % ap50, "%.0f" % hp50, ratio(ap50, hp50)))
print("%-40s %14s %14s %9s" % ("exec /bin/true round trip p99 (us)", "%.0f" % ap99, "%.0f" % hp99, ratio(ap99, hp99)))
print("%-40s %14s %14s %9s" % ("stdout stream MiB/s (vs host pipe)", "%.1f" % (mib / t_out), "%.1f" % (mib / t_pipe), ratio(t_pipe, t_out)))
print("%-40s %14s %14s %9s" % ("file upload MiB/s (vs host cat copy)", "%.1f" % (mib / t_up), "%.1f" % (mib / t_cp), ratio(t_cp, t_up)))
print("%-40s %14s %14s %9s" % ("file download MiB/s (vs host cat copy)", "%.1f" % (mib / t_down), "%.1f" % (mib / t_cp), ratio(t_cp, t_down)))
print()
print("kiln agent: `kiln exec --uds S -- /bin/true` (a new client process, connect, HELLO, EXEC,")
print("exit event); host peer: fork+exec+wait of /bin/true from the same Python loop. Streams")
print("include starting the kiln client; the download is checked against the upload (sha256).")
print("For times kiln/host below 1 is better; for MiB/s above 1 is better.")
PY
