#!/usr/bin/env bash
# vsock benchmark: 1-byte echo round trips (p50, p99) and echo throughput
# between a host program and a guest echo server (kiln-vsock listen) through
# kiln-vmm's unix-socket front door, against the same client talking to an
# echo server on a plain unix socket on the host (the floor). Needs /dev/kvm
# (make bench-vsock goes through tests/nested/kvm-host.sh where there is none).
# Usage: bench/vsock.sh VMM [MIB] [ROUNDS]
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

vmm=$1 mib=${2:-32} rounds=${3:-2000}
tmp=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	rm -rf "$tmp"
}
trap cleanup EXIT

bench_host_banner

cat >"$tmp/client.py" <<'PY'
import socket, sys, threading, time

def connect(path, port):
    deadline = time.monotonic() + 120
    while True:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            if port is None:
                return s
            s.sendall(b"CONNECT %d\n" % port)
            line = b""
            while not line.endswith(b"\n"):
                b = s.recv(1)
                if not b:
                    raise ConnectionError("closed")
                line += b
            if line.startswith(b"OK "):
                return s
        except OSError:
            pass
        s.close()
        if time.monotonic() > deadline:
            sys.exit("bench-vsock: no echo server at %s" % path)
        time.sleep(0.1)

path, port, mib, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
port = None if port == "-" else int(port)
s = connect(path, port)
lat = []
for _ in range(rounds):
    t = time.perf_counter()
    s.sendall(b"x")
    if s.recv(1) != b"x":
        sys.exit("bench-vsock: bad echo")
    lat.append(time.perf_counter() - t)
lat.sort()
s.close()

s = connect(path, port)
total = mib << 20
got = [0]
def reader():
    while got[0] < total:
        b = s.recv(1 << 20)
        if not b:
            break
        got[0] += len(b)
t0 = time.perf_counter()
th = threading.Thread(target=reader)
th.start()
chunk = b"k" * (1 << 16)
for _ in range(total // len(chunk)):
    s.sendall(chunk)
th.join()
dt = time.perf_counter() - t0
s.close()
print("%.1f %.1f %.1f" % (lat[len(lat) // 2] * 1e6, lat[len(lat) * 99 // 100] * 1e6,
                          got[0] / dt / 1e6 if got[0] == total else 0))
PY

cat >"$tmp/echo.py" <<'PY'
import os, socket, sys, threading
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(8)
def serve(c):
    while True:
        b = c.recv(1 << 16)
        if not b:
            break
        c.sendall(b)
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
PY

echo "bench-vsock: unix-socket echo on the host" >&2
python3 "$tmp/echo.py" "$tmp/echo.sock" &
pids+=($!)
base=$(python3 "$tmp/client.py" "$tmp/echo.sock" - "$mib" "$rounds")

echo "bench-vsock: kiln-vmm guest echo" >&2
"$vmm" --timeout 600 --console none --vsock "cid=3,uds=$tmp/v.sock" -- kiln-vsock listen 5000 &
pids+=($!)
kiln=$(python3 "$tmp/client.py" "$tmp/v.sock" 5000 "$mib" "$rounds")

set -- $base
b50=$1 b99=$2 bt=$3
set -- $kiln
k50=$1 k99=$2 kt=$3
printf '\n%-30s %12s %14s %10s\n' metric "unix socket" "kiln vsock" kiln/unix
printf '%-30s %12s %14s %10s\n' "1-byte echo RTT p50 us" "$b50" "$k50" "$(bench_ratio "$k50" "$b50")"
printf '%-30s %12s %14s %10s\n' "1-byte echo RTT p99 us" "$b99" "$k99" "$(bench_ratio "$k99" "$b99")"
printf '%-30s %12s %14s %10s\n' "echo throughput MB/s ($mib MiB)" "$bt" "$kt" "$(bench_ratio "$kt" "$bt")"
