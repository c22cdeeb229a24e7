# virtio-vsock between real guests and host programs ($vmm, labelled $v):
# bulk data with a checksum, a guest dialling out, ten connections at once,
# and refusals on both sides. The host half is tests/integration/vsock-host.py.
# shellcheck shell=bash

# vsock_pair VMM UDS HOST_ARGS... -- GUEST_CMD...: boot a guest with
# --vsock cid=3,uds=UDS running GUEST_CMD while vsock-host.py HOST_ARGS runs
# on the host; print both exit statuses and whether kiln-vmm removed UDS.
# With "serve PATH" the host listener is up before the guest boots.
vsock_pair() {
	local vmm=$1 uds=$2 py=$3 hpid vpid hst gst i
	local -a host=()
	shift 3
	while [ "$1" != -- ]; do host+=("$1"); shift; done
	shift
	if [ "${host[0]}" = serve ]; then
		python3 "$py" "${host[@]}" &
		hpid=$!
		for i in $(seq 100); do [ -S "${host[1]}" ] && break; sleep 0.1; done
	fi
	"$vmm" --timeout 240 --vsock "cid=3,uds=$uds" -- "$@" &
	vpid=$!
	if [ -z "${hpid:-}" ]; then
		python3 "$py" "${host[@]}" &
		hpid=$!
	fi
	wait "$hpid"
	hst=$?
	# A failed host half would leave the guest waiting: stop it.
	[ "$hst" = 0 ] || kill "$vpid" 2>/dev/null
	wait "$vpid"
	gst=$?
	if [ -e "$uds" ]; then i=no; else i=yes; fi
	echo "host=$hst guest=$gst socket-removed=$i"
}
export -f vsock_pair

vs_py=$here/vsock-host.py
vs_ok='^host=0 guest=0 socket-removed=yes$'

run "$v: vsock: 64 MiB from the host to a guest listener, checksum back" 0 "$vs_ok" \
	bash -c 'vsock_pair "$@"' _ "$vmm" "$work/vs1.sock" "$vs_py" send "$work/vs1.sock" 5000 67108864 -- \
	kiln-vsock listen 5000 --count 1 --sum

run "$v: vsock: the guest connects to a host listener at uds_PORT" 0 "$vs_ok" \
	bash -c 'vsock_pair "$@"' _ "$vmm" "$work/vs2.sock" "$vs_py" serve "$work/vs2.sock_6000" -- \
	sh -c 'head -c 1000000 /dev/urandom >/tmp/d && a=$(kiln-vsock connect 2 6000 </tmp/d) &&
	       b=$(kiln-vsock sum </tmp/d) && echo "guest: host counted $a, guest sent $b" && [ "$a" = "$b" ]'

run "$v: vsock: ten connections at once" 0 "$vs_ok" \
	bash -c 'vsock_pair "$@"' _ "$vmm" "$work/vs3.sock" "$vs_py" multi "$work/vs3.sock" 5000 10 1048576 -- \
	kiln-vsock listen 5000 --count 10 --sum

run "$v: vsock: connections to ports nobody listens on are refused on both sides" 0 "$vs_ok" \
	bash -c 'vsock_pair "$@"' _ "$vmm" "$work/vs4.sock" "$vs_py" refuse "$work/vs4.sock" 5000 5001 -- \
	sh -c 'kiln-vsock listen 5000 --count 1 & l=$!
	       if kiln-vsock connect 2 7999 </dev/null 2>/tmp/e; then echo "guest: connect succeeded"; exit 1; fi
	       cat /tmp/e; grep -Eq "reset by peer|refused" /tmp/e || exit 1
	       wait $l'

# A guest that cannot answer (paused through --control) does not keep a host
# client waiting past connect-timeout; resumed, it answers the next one.
cat >"$work/vs-paused.py" <<'EOF'
import json, socket, sys, time
uds, ctl = sys.argv[1], sys.argv[2]
c = socket.socket(socket.AF_UNIX); c.connect(ctl); cf = c.makefile()
def req(line):
    c.sendall(line.encode() + b"\n"); return json.loads(cf.readline())
assert req("pause")["state"] == "paused"
s = socket.socket(socket.AF_UNIX); s.connect(uds); s.settimeout(60)
t0 = time.monotonic()
s.sendall(b"CONNECT 1024\n")
got = s.recv(64)
dt = time.monotonic() - t0
print("%s after %s s;" % ("closed-without-ok" if got == b"" else "got %r" % got,
                          "1.5-30" if 1.4 <= dt <= 30 else "%.1f" % dt), end=" ")
assert req("resume")["state"] == "running"
EOF
run "$v: vsock: a guest that does not answer a connection (paused) is given up on after connect-timeout; resumed, it answers" 0 \
	'^closed-without-ok after 1.5-30 s; resumed: exec=ok exit=0$' \
	bash -c 'vmm=$1 w=$2 kiln=$3
	         "$vmm" --timeout 240 --vsock "cid=3,uds=$w/vs6.sock,connect-timeout=1500" --control "$w/vs6.ctl" \
	           --console "$w/vs6.console" --cmdline kiln.agent </dev/null & vp=$!
	         "$kiln" exec --uds "$w/vs6.sock" --connect-timeout 120 -- true || { kill $vp; exit 1; }
	         python3 "$w/vs-paused.py" "$w/vs6.sock" "$w/vs6.ctl" || { kill $vp; exit 1; }
	         e=$("$kiln" exec --uds "$w/vs6.sock" --connect-timeout 30 -- echo ok)
	         "$kiln" shutdown --uds "$w/vs6.sock" >/dev/null; wait $vp; st=$?
	         echo "resumed: exec=$e exit=$st"' \
	_ "$vmm" "$work" "$root/build/kiln"

run "$v: vsock: bad options" 125 '--vsock cid=2,uds=.*: cid must be a number from 3' \
	"$vmm" --vsock "cid=2,uds=$work/vs5.sock" -- true
run "$v: vsock: uds is required" 125 '--vsock cid=3: uds=PATH is required' \
	"$vmm" --vsock cid=3 -- true
run "$v: vsock: a bad connect-timeout" 125 'connect-timeout must be a number of milliseconds from 1 to 3600000' \
	"$vmm" --vsock "cid=3,uds=$work/vs7.sock,connect-timeout=5s" -- true
