#!/usr/bin/env bash
# forward-test.sh - checks for kvm-host.sh --forward (one nested boot, about
# 30 s under TCG).  Forces the nested path even where /dev/kvm works.
#
#  1. a forward onto a port that is in use fails at once, with a clear reason;
#  2. this machine's 127.0.0.1:PORT reaches a server in the nested host;
#  3. nothing in the nested host can open a connection out (restrict=on): not
#     to this machine through QEMU's gateway 10.0.2.2 (a listener on
#     127.0.0.1 here records any connection), not to QEMU's DNS 10.0.2.3,
#     not to a public address;
#  4. Ctrl-C (SIGINT to kvm-host.sh's process group, as a terminal sends it)
#     stops the nested host: status 130, no QEMU, temp dir or port left.
#
# Usage: tests/nested/forward-test.sh
set -uo pipefail

HERE=$(cd "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
KH=$HERE/kvm-host.sh
export KILN_NESTED_FORCE=1

scratch=$(mktemp -d /var/tmp/kiln-nested-forward.XXXXXX) || exit 1
mkdir "$scratch/tmp"
export TMPDIR=$scratch/tmp # kvm-host.sh's per-run dirs, to spot leftovers
khpid='' trappid=''
cleanup() {
	[[ -n $khpid ]] && kill -TERM "$khpid" 2>/dev/null && wait "$khpid" 2>/dev/null
	[[ -n $trappid ]] && kill -TERM "$trappid" 2>/dev/null && wait "$trappid" 2>/dev/null
	rm -rf -- "$scratch"
}
trap cleanup EXIT
cd "$scratch" || exit 1

fails=0
pass() { printf 'PASS %-30s %s\n' "$1" "${2:-}"; }
fail() { printf 'FAIL %-30s %s\n' "$1" "${2:-}"; fails=$((fails + 1)); }
since() { printf '%.1f s' "$(bc <<<"$EPOCHREALTIME - $1")"; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# A listener on this machine's loopback that records every connection: the
# nested host must never reach it (through 10.0.2.2 it would, without
# restrict=on).
cat >trap.py <<'EOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen(16)
with open(sys.argv[1], "w") as f:
    print(s.getsockname()[1], file=f)
while True:
    c, peer = s.accept()
    with open(sys.argv[2], "a") as f:
        print("connection from", peer, file=f)
    c.close()
EOF

# Runs in the nested host: tries to connect out, then serves HTTP.
cat >inner.py <<'EOF'
import http.server, socket, subprocess, sys
port, trap_port = int(sys.argv[1]), int(sys.argv[2])
# kvm-host.sh sets no gateway; with one, packets to anywhere reach QEMU's
# slirp, and it is restrict=on that must drop them
subprocess.run(["ip", "route", "add", "default", "via", "10.0.2.2"], check=True)

def tcp(addr, p):
    try:
        socket.create_connection((addr, p), timeout=3).close()
        return "connected"
    except OSError as e:
        return "blocked (%s)" % (e.strerror or type(e).__name__)

def dns(addr):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01"
    try:
        s.sendto(query, (addr, 53))
        s.recvfrom(512)
        return "answered"
    except OSError as e:
        return "blocked (%s)" % (e.strerror or type(e).__name__)

print("out tcp 10.0.2.2:%d %s" % (trap_port, tcp("10.0.2.2", trap_port)), flush=True)
print("out tcp 1.1.1.1:443 %s" % tcp("1.1.1.1", 443), flush=True)
print("out udp 10.0.2.3:53 %s" % dns("10.0.2.3"), flush=True)

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"kiln-forward-ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

srv = http.server.HTTPServer(("0.0.0.0", port), H)
print("serving on", port, flush=True)
srv.serve_forever()
EOF

# Polls http://127.0.0.1:PORT/ until it answers kiln-forward-ok, PID exits or
# the deadline passes.  Slirp accepts on the host side before anything listens
# inside, so early attempts see resets and empty replies.
cat >fetch.py <<'EOF'
import os, sys, time, urllib.request
port, pid, deadline = int(sys.argv[1]), int(sys.argv[2]), time.time() + float(sys.argv[3])
last = "no attempt"
while time.time() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("kvm-host.sh exited; last attempt: " + last)
    try:
        body = urllib.request.urlopen("http://127.0.0.1:%d/" % port, timeout=5).read()
        if body == b"kiln-forward-ok\n":
            sys.exit(0)
        last = "unexpected body %r" % body[:80]
    except Exception as e:
        last = repr(e)
    time.sleep(0.5)
sys.exit("no answer in time; last attempt: " + last)
EOF

python3 trap.py trap.port trap.log &
trappid=$!
for _ in $(seq 50); do [[ -s trap.port ]] && break; sleep 0.1; done
trap_port=$(cat trap.port 2>/dev/null)
[[ $trap_port =~ ^[0-9]+$ ]] || { echo "FAIL: the loopback listener did not start"; exit 1; }

# 1. a port in use: QEMU refuses the forward before booting anything
t0=$EPOCHREALTIME
"$KH" --timeout 60 --forward "$trap_port" -- true >busy.out 2>busy.err
rc=$?
if [[ $rc == 125 ]] && grep -q "cannot forward tcp:127.0.0.1:$trap_port into the nested host: is that port in use" busy.err; then
	pass "port in use -> 125" "$(since "$t0")"
else
	fail "port in use -> 125" "rc=$rc $(tr '\n' ' ' <busy.err | cut -c1-300)"
fi

# 2.-3. a long-running server inside, reached from here; nothing goes out
port=$(free_port)
t0=$EPOCHREALTIME
# Its own process group, and SIGINT as a terminal leaves it: set -m alone
# does not undo an ignored SIGINT this script inherited (a `make test &`
# from a script), which kvm-host.sh, a shell, could then never trap.
set -m
python3 -c 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])' \
	"$KH" --timeout 600 --forward "$port" -- python3 inner.py "$port" "$trap_port" >serve.out 2>serve.err &
khpid=$!
set +m
if err=$(python3 fetch.py "$port" "$khpid" 300 2>&1); then
	pass "127.0.0.1:$port reaches inside" "$(since "$t0") after start"
else
	fail "127.0.0.1:$port reaches inside" "$err; $(tr '\n' ' ' <serve.err | cut -c1-300)"
fi
for want in "tcp 10.0.2.2:$trap_port" "tcp 1.1.1.1:443" "udp 10.0.2.3:53"; do
	line=$(grep -F "out $want " serve.out)
	if [[ $line == *" blocked "* ]]; then
		pass "no way out: $want" "${line##*"$want" }"
	else
		fail "no way out: $want" "${line:-no result} (output: $(tr '\n' '|' <serve.out | cut -c1-300))"
	fi
done
if [[ ! -s trap.log ]]; then pass "nothing reached 127.0.0.1 here"; else fail "nothing reached 127.0.0.1 here" "$(cat trap.log)"; fi

# 4. Ctrl-C stops it
t0=$EPOCHREALTIME
kill -INT -- "-$khpid" 2>/dev/null
for _ in $(seq 300); do kill -0 "$khpid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$khpid" 2>/dev/null; then
	fail "Ctrl-C stops the nested host" "still running 30 s after SIGINT"
else
	wait "$khpid"
	rc=$?
	khpid=''
	if [[ $rc == 130 ]]; then pass "Ctrl-C stops the nested host" "$(since "$t0"), status 130"; else fail "Ctrl-C stops the nested host" "status $rc"; fi
fi
sleep 1
if pgrep -f -- "$scratch/tmp" >/dev/null; then fail "no leftover processes" "$(pgrep -a -f -- "$scratch/tmp")"; else pass "no leftover processes"; fi
if [[ -z $(ls -A tmp) ]]; then pass "no leftover temp dirs"; else fail "no leftover temp dirs" "$(ls tmp)"; fi
# Free as a server sees it: nothing listens there. SO_REUSEADDR, as every
# server (QEMU's hostfwd too) binds, so a TIME_WAIT left by the test's own
# connections does not count; a leftover listener still fails the bind.
if python3 -c 'import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()' "$port" 2>/dev/null; then
	pass "port $port free again"
else
	fail "port $port free again"
fi

echo "$fails failure(s)"
((fails == 0))
