# Who may use kiln-vmm's unix sockets ($vmm, labelled $v): --control and
# --vsock uds= sockets are owner-only (0600) even under umask 0, or 0660 with
# a group (--control-group, --vsock group=); every connection's peer
# credentials are checked, so a chmod 777 lets no other user in; and a
# control client that sends nothing blocks no other and is closed after its
# deadline. The client half is tests/integration/sockets-peer.py.
# shellcheck shell=bash

sk=$work/sk
rm -rf "$sk" && mkdir -p "$sk" && chmod 755 "$sk"
sk_py=$here/sockets-peer.py
sk_kiln=${KILN_CLI:-$root/build/kiln}

# Two guests with the agent, started under umask 0: "o" with owner-only
# sockets, "g" sharing both with the group users (gid 100 on Debian).
(umask 000; exec "$vmm" --mem 128 --timeout 600 --vsock "cid=3,uds=$sk/o.sock" --control "$sk/o.ctl" \
	--console "$sk/o.console" --cmdline kiln.agent </dev/null 2>"$sk/o.err") &
sk_o=$!
(umask 000; exec "$vmm" --mem 128 --timeout 600 --vsock "cid=3,uds=$sk/g.sock,group=users" --control "$sk/g.ctl" \
	--control-group users --console "$sk/g.console" --cmdline kiln.agent </dev/null 2>"$sk/g.err") &
sk_g=$!

# sk_both PY USER NAME: the answer of control socket NAME.ctl and vsock socket NAME.sock to USER.
sk_both() {
	echo "control=$(python3 "$1" "$2" control "$sk/$3.ctl") vsock=$(python3 "$1" "$2" vsock "$sk/$3.sock")"
}
export -f sk_both
export sk

run "$v: sockets: --control and --vsock sockets are 0600 under umask 0" 0 '^ctl=600 sock=600$' \
	bash -c '"$1" exec --uds "$sk/o.sock" --connect-timeout 120 -- true || { cat "$sk/o.err"; exit 1; }
	         echo "ctl=$(stat -c %a "$sk/o.ctl") sock=$(stat -c %a "$sk/o.sock")"' _ "$sk_kiln"

run "$v: sockets: another user is refused by both sockets even after chmod 777; root is served" 0 \
	'^other: control=closed vsock=closed; root: control=ok vsock=ok; logged=yes$' \
	bash -c 'chmod 777 "$sk/o.ctl" "$sk/o.sock"
	         echo "other: $(sk_both "$1" 65534:65534 o); root: $(sk_both "$1" root o);" \
	              "logged=$(grep -q "refused uid 65534" "$sk/o.err" && echo yes || echo no)"' _ "$sk_py"

cat >"$sk/idle.py" <<'PY'
import socket, sys
path = sys.argv[1]
def conn():
    s = socket.socket(socket.AF_UNIX); s.settimeout(20); s.connect(path); return s
def recv(s):
    try:
        return s.recv(4096)
    except socket.timeout:
        return None
    except ConnectionResetError:
        return b""
idle = conn()                       # connects and sends nothing
part = conn(); part.sendall(b"sta")  # starts a line and never ends it
b = conn(); b.sendall(b"stats\n")
r = recv(b)
print("second=%s;" % ("ok" if r and r.startswith(b'{"ok":true') else r), end=" ")
more = [conn() for _ in range(13)]  # 16 clients in all
r = recv(conn())
print("17th=%s;" % ("busy" if r and b"too many control clients" in r else r), end=" ")
for s in (idle, part):
    s.settimeout(60)
print("idle=%s partial=%s" % tuple("closed" if r == b"" else "open" if r is None else r for r in (recv(idle), recv(part))))
PY
run "$v: sockets: a control client that sends nothing blocks no other and is closed after its deadline" 0 \
	'^second=ok; 17th=busy; idle=closed partial=closed$' \
	python3 "$sk/idle.py" "$sk/o.ctl"

run "$v: sockets: with --control-group/--vsock group= both are 0660 for the group, whose members are admitted" 0 \
	'^modes: 660:users 660:users; member: control=ok vsock=ok; primary: control=ok vsock=ok; other: control=closed vsock=closed$' \
	bash -c '"$1" exec --uds "$sk/g.sock" --connect-timeout 120 -- true || { cat "$sk/g.err"; exit 1; }
	         echo -n "modes: $(stat -c %a:%G "$sk/g.ctl") $(stat -c %a:%G "$sk/g.sock"); "
	         echo -n "member: $(sk_both "$2" 65533:65533:100 g); primary: $(sk_both "$2" 65532:100 g); "
	         chmod 777 "$sk/g.ctl" "$sk/g.sock"
	         echo "other: $(sk_both "$2" 65534:65534 g)"' _ "$sk_kiln" "$sk_py"

kill "$sk_o" "$sk_g" 2>/dev/null
wait "$sk_o" "$sk_g" 2>/dev/null

run "$v: sockets: an unknown --control-group" 125 '--control-group no-such-group-kiln: no such group' \
	"$vmm" --control "$sk/x.ctl" --control-group no-such-group-kiln -- true
run "$v: sockets: --control-group needs --control" 125 '--control-group goes with --control' \
	"$vmm" --control-group users -- true
run "$v: sockets: an unknown --vsock group=" 125 '--vsock .*group=no-such-group-kiln: no such group' \
	"$vmm" --vsock "cid=3,uds=$sk/x.sock,group=no-such-group-kiln" -- true
