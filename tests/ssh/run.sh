#!/usr/bin/env bash
# kilnd's SSH gateway without a VM: build/asan/kd-ssh-test (api/kilnd/kd_ssh.c
# with ASan and UBSan in a driver of its own) in front of
# build/asan/kiln-agent-host, the guest agent on this host. The agent answers
# the VMM's "CONNECT <port>" itself, so its socket stands in for a VM's vsock
# socket, and the "guest" is this machine: its commands and ports are local
# ones, run as the user running this. OpenSSH's ssh, scp and sftp are the
# clients. Run by `make test-ssh-host`.
# Usage: tests/ssh/run.sh KD_SSH_TEST AGENT
set -u
[ $# = 2 ] || { echo "usage: $0 KD_SSH_TEST AGENT" >&2; exit 2; }
drv=$(realpath "$1") agent=$(realpath "$2")
here=$(cd "$(dirname "$0")" && pwd)
for t in ssh scp sftp python3 curl; do
	command -v $t >/dev/null || { echo "tests/ssh: $t is missing (make deps-test)" >&2; exit 1; }
done
sftp_server=/usr/lib/openssh/sftp-server
[ -x $sftp_server ] || { echo "tests/ssh: $sftp_server is missing (apt-get install openssh-sftp-server)" >&2; exit 1; }
work=$(mktemp -d)
pass=0 fail=0
ap= dp= hp= lp= sp= op= pp=
cleanup() {
	exec 3>&- 2>/dev/null
	for p in $pp $lp $sp $op $hp $dp $ap; do
		kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
	done
	rm -rf "$work"
}
trap cleanup EXIT

# check NAME OK DETAIL: one TAP line; on failure the detail and the driver's stderr.
check() {
	if [ "$2" = 1 ]; then
		pass=$((pass + 1)); echo "ok $((pass + fail)) - ssh: $1"
	else
		fail=$((fail + 1)); echo "not ok $((pass + fail)) - ssh: $1"
		printf '%s\n' "$3" | sed -e 's/^/#   /' | tail -n 10
		tail -n 12 "$work/drv.err" 2>/dev/null | sed -e 's/^/#   gateway: /'
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

free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

sanitizer_clean() {
	! grep -qE 'Sanitizer|runtime error' "$@"
}

port=$(free_port)
opts=(-F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
	-o BatchMode=yes -o ConnectTimeout=10)
# ssh_ ARGS...: ssh to the gateway, at most a minute.
ssh_() {
	timeout 60 ssh "${opts[@]}" -p "$port" "$@"
}

mkdir -p "$work/home" "$work/state" "$work/www"
# The agent's working directory is the "guest's" home: relative paths land there.
(cd "$work/home" && ASAN_OPTIONS=detect_leaks=0 exec "$agent" --listen "unix:$work/a.sock") 2>"$work/agent.log" &
ap=$!
wait_for 30 test -S "$work/a.sock" || { cat "$work/agent.log" >&2; echo "tests/ssh: the agent did not start" >&2; exit 1; }

# start_gateway: the driver on $port, its stdin the fifo on fd 3, its usernames in $user $other $gone.
start_gateway() {
	rm -f "$work/ctl" "$work/drv.out"
	mkfifo "$work/ctl"
	"$drv" "127.0.0.1:$port" "$work/state" "$work/a.sock" <"$work/ctl" >"$work/drv.out" 2>>"$work/drv.err" &
	dp=$!
	exec 3>"$work/ctl"
	wait_for 30 grep -q . "$work/drv.out" 2>/dev/null
	read -r user other gone <"$work/drv.out"
}
start_gateway
check "the gateway starts and makes usernames (kiln- and 24 base32 characters)" \
	"$([[ $user =~ ^kiln-[a-z2-7]{24}$ && $other =~ ^kiln-[a-z2-7]{24}$ && $user != "$other" ]] && echo 1)" \
	"user '$user' other '$other': $(cat "$work/drv.err")"

key=$work/state/ssh_host_ed25519_key
pub=$(ssh-keygen -y -f "$key" 2>&1 | cut -d' ' -f1,2)
scan=$(ssh-keyscan -p "$port" -t ed25519 127.0.0.1 2>/dev/null | cut -d' ' -f2,3)
check "the host key is STATE/ssh_host_ed25519_key, mode 0600, and the one served" \
	"$([ "$(stat -c %a "$key" 2>/dev/null)" = 600 ] && [ -n "$pub" ] && [ "$pub" = "$scan" ] && echo 1)" \
	"mode $(stat -c %a "$key" 2>&1); key '$pub'; served '$scan'"

out=$(ssh_ "$user@127.0.0.1" 'echo hi; echo oops >&2; exit 3' </dev/null 2>"$work/err"); st=$?
check "exec: stdout, stderr apart, and the exit status" \
	"$([ "$out" = hi ] && [ "$(cat "$work/err")" = oops ] && [ $st = 3 ] && echo 1)" \
	"status $st: '$out' stderr '$(cat "$work/err")'"

out=$(ssh_ -tt "$user@127.0.0.1" 2>&1 <<'EOF'
echo $((6*7)); exit
EOF
); st=$?
check "a pty shell (-tt) reads a heredoc and exits 0" \
	"$(grep -qE $'(^|[^0-9])42\r?$' <<<"$out" && [ $st = 0 ] && echo 1)" "status $st: $out"

out=$(ssh_ -tt "$user@127.0.0.1" 'stty size; tty' </dev/null 2>&1); st=$?
check "exec with -tt runs on a terminal, 24x80 when the client has none" \
	"$(grep -qE $'^24 80\r?$' <<<"$out" && grep -q '^/dev/pts/' <<<"$out" && [ $st = 0 ] && echo 1)" \
	"status $st: $out"

out=$(python3 "$here/winch.py" ssh "${opts[@]}" -p "$port" "$user@127.0.0.1" 2>&1); st=$?
check "a resized terminal resizes the guest's pty (window-change)" "$([ $st = 0 ] && echo 1)" "status $st: $out"

out=$(ssh_ "$user@127.0.0.1" 'tty; echo "[$LC_KILN_TEST]"' </dev/null 2>&1); st=$?
out2=$(LC_KILN_TEST=passed ssh_ -o SendEnv=LC_KILN_TEST "$user@127.0.0.1" 'echo "[$LC_KILN_TEST]"' </dev/null 2>&1)
check "exec without -t has no terminal; env requests reach the command" \
	"$(grep -q 'not a tty' <<<"$out" && [ "$out2" = '[passed]' ] && echo 1)" "status $st: $out / $out2"

head -c 5M /dev/urandom >"$work/big"
want=$(sha256sum <"$work/big" | cut -d' ' -f1)
got=$(ssh_ "$user@127.0.0.1" cat <"$work/big" | sha256sum | cut -d' ' -f1)
check "5 MiB through cat: stdin up, stdout back, EOF passed on" "$([ "$got" = "$want" ] && echo 1)" "got $got"

rm -f "$work/home/up.bin" "$work/back.bin"
out=$(timeout 60 scp "${opts[@]}" -P "$port" "$work/big" "$user@127.0.0.1:up.bin" 2>&1 &&
	timeout 60 scp "${opts[@]}" -P "$port" "$user@127.0.0.1:$work/home/up.bin" "$work/back.bin" 2>&1); st=$?
check "scp (SFTP mode) up to the home directory and back, 5 MiB" \
	"$([ $st = 0 ] && cmp -s "$work/big" "$work/home/up.bin" && cmp -s "$work/big" "$work/back.bin" && echo 1)" \
	"status $st: $out"

rm -f "$work/home/up.bin" "$work/back.bin"
out=$(timeout 60 scp -O "${opts[@]}" -P "$port" "$work/big" "$user@127.0.0.1:up.bin" 2>&1 &&
	timeout 60 scp -O "${opts[@]}" -P "$port" "$user@127.0.0.1:$work/home/up.bin" "$work/back.bin" 2>&1); st=$?
check "scp -O (the legacy protocol: scp -t and -f as commands) up and back, 5 MiB" \
	"$([ $st = 0 ] && cmp -s "$work/big" "$work/home/up.bin" && cmp -s "$work/big" "$work/back.bin" && echo 1)" \
	"status $st: $out"

cat >"$work/batch" <<EOF
put $work/big sftp.bin
get sftp.bin $work/sftp-back.bin
ls -l sftp.bin
EOF
out=$(timeout 60 sftp "${opts[@]}" -P "$port" -b "$work/batch" "$user@127.0.0.1" 2>&1); st=$?
check "sftp -b: put, get, ls" \
	"$([ $st = 0 ] && cmp -s "$work/big" "$work/home/sftp.bin" && cmp -s "$work/big" "$work/sftp-back.bin" &&
	   grep -q '5242880.*sftp.bin' <<<"$out" && echo 1)" "status $st: $out"

# A "guest" port: a web server the agent reaches on 127.0.0.1.
gport=$(free_port)
echo "hello through the tunnel" >"$work/www/hello.txt"
cp "$work/big" "$work/www/big"
python3 -m http.server "$gport" --bind 127.0.0.1 --directory "$work/www" >/dev/null 2>&1 &
hp=$!
wait_for 30 curl -sf -o /dev/null "http://127.0.0.1:$gport/hello.txt"
lport=$(free_port)
ssh_ -N -L "$lport:127.0.0.1:$gport" "$user@127.0.0.1" </dev/null 2>"$work/tunnel.err" &
lp=$!
wait_for 30 curl -sf -o /dev/null "http://127.0.0.1:$lport/hello.txt"
out=$(curl -sf "http://127.0.0.1:$lport/hello.txt" 2>&1)
got=$(curl -sf "http://127.0.0.1:$lport/big" | sha256sum | cut -d' ' -f1)
check "ssh -L to a guest port: a page and 5 MiB" \
	"$([ "$out" = "hello through the tunnel" ] && [ "$got" = "$want" ] && echo 1)" \
	"'$out', big $got: $(cat "$work/tunnel.err")"
kill "$lp" 2>/dev/null; wait "$lp" 2>/dev/null; lp=

out=$(printf 'GET /hello.txt HTTP/1.0\r\n\r\n' | ssh_ -W "localhost:$gport" "$user@127.0.0.1" 2>&1); st=$?
check "ssh -W localhost:PORT: the request's EOF goes through and the reply comes back" \
	"$([ $st = 0 ] && grep -q '^hello through the tunnel' <<<"$out" && echo 1)" "status $st: $out"

out=$(ssh_ -W "example.com:80" "$user@127.0.0.1" </dev/null 2>&1); st=$?
check "a direct-tcpip channel to a host name is refused" \
	"$([ $st = 255 ] && grep -qiE 'prohibited|forwarding failed' <<<"$out" && echo 1)" "status $st: $out"

out=$(ssh_ "$user@127.0.0.1" 'kill -TERM $$' </dev/null 2>&1); st=$?
check "a command killed by a signal: exit-signal (ssh exits 255)" "$([ $st = 255 ] && echo 1)" "status $st: $out"

out=$(ssh_ "$user@127.0.0.1" 'exec /nonexistent/cmd' </dev/null 2>&1); st=$?
check "a command that cannot run: 127" "$([ $st = 127 ] && echo 1)" "status $st: $out"

for i in 1 2 3 4 5 6 7 8; do
	ssh_ "$user@127.0.0.1" "echo par-$i" </dev/null >"$work/par.$i" 2>&1 &
	pp="$pp $!"
done
wait_for 60 bash -c 'for i in 1 2 3 4 5 6 7 8; do [ "$(cat "$1/par.$i")" = "par-$i" ] || exit 1; done' _ "$work"; st=$?
check "8 connections at once" "$([ $st = 0 ] && echo 1)" "$(cat "$work"/par.* 2>&1)"
wait $pp 2>/dev/null
pp=

wait_for 30 grep -q '^auth ' "$work/drv.out"
check "the username alone gets in by none, any password or any key; an unknown one by none of them" \
	"$(grep -q '^auth ok$' "$work/drv.out" && echo 1)" "$(cat "$work/drv.out")"

out=$(ssh_ "$gone@127.0.0.1" true </dev/null 2>&1); st=$?
check "a sandbox whose agent is gone: 255 and a line that does not name host paths" \
	"$([ $st = 255 ] && grep -q "agent does not answer" <<<"$out" && ! grep -q "$work" <<<"$out" && echo 1)" \
	"status $st: $out"

out=$(ssh_ "kiln-aaaaaaaaaaaaaaaaaaaaaaaa@127.0.0.1" true </dev/null 2>&1); st=$?
out2=$(ssh_ "root@127.0.0.1" true </dev/null 2>&1); st2=$?
check "an unknown username is refused" \
	"$([ $st = 255 ] && [ $st2 = 255 ] && grep -q 'Permission denied' <<<"$out" && echo 1)" "status $st: $out / $st2: $out2"

# kd_ssh_forget: the open session ends within 2 s, its process is hung up,
# the username stops working; another sandbox's username does not.
ssh_ "$user@127.0.0.1" 'echo $$; exec sleep 3599' </dev/null >"$work/sleep.out" 2>&1 &
sp=$!
wait_for 30 grep -q '^[0-9]' "$work/sleep.out" 2>/dev/null
gpid=$(head -n 1 "$work/sleep.out")
ssh_ "$other@127.0.0.1" 'echo $$; exec sleep 3598' </dev/null >"$work/other.out" 2>&1 &
op=$!
wait_for 30 grep -q '^[0-9]' "$work/other.out" 2>/dev/null
echo forget >&3
wait_for 10 grep -q forgot "$work/drv.out"
t0=$(date +%s%N)
wait_for 5 bash -c '! kill -0 "$1" 2>/dev/null' _ "$sp"
ms=$((($(date +%s%N) - t0) / 1000000))
wait "$sp" 2>/dev/null
sp=
check "after kd_ssh_forget the open session is closed within 2 s (${ms} ms)" "$([ $ms -lt 2000 ] && echo 1)" "$ms ms"
wait_for 5 bash -c '! kill -0 "$1" 2>/dev/null' _ "$gpid"
check "... and its process is gone (SIGHUP, then SIGKILL)" "$(kill -0 "$gpid" 2>/dev/null || echo 1)" "pid $gpid"
out=$(ssh_ "$user@127.0.0.1" true </dev/null 2>&1); st=$?
out2=$(ssh_ "$other@127.0.0.1" 'echo still' </dev/null 2>&1)
check "... its username is refused, another sandbox's still works" \
	"$([ $st = 255 ] && [ "$out2" = still ] && kill -0 "$op" 2>/dev/null && echo 1)" "status $st: $out / $out2"

# kd_ssh_stop ends the other sandbox's open session too, and the driver exits clean.
echo stop >&3
wait_for 15 bash -c '! kill -0 "$1" 2>/dev/null' _ "$dp"
wait "$dp"; st=$?
dp=
wait_for 5 bash -c '! kill -0 "$1" 2>/dev/null' _ "$op"; ost=$?
check "kd_ssh_stop ends every session and returns; no sanitizer report" \
	"$([ $st = 0 ] && [ $ost = 0 ] && grep -q stopped "$work/drv.out" && sanitizer_clean "$work/drv.err" && echo 1)" \
	"driver status $st, session ended: $ost"
kill "$op" 2>/dev/null; wait "$op" 2>/dev/null; op=

sum=$(sha256sum <"$key")
start_gateway
scan2=$(ssh-keyscan -p "$port" -t ed25519 127.0.0.1 2>/dev/null | cut -d' ' -f2,3)
echo >&3; echo >&3
wait_for 15 bash -c '! kill -0 "$1" 2>/dev/null' _ "$dp"
wait "$dp"; st=$?
dp=
check "a restart keeps the host key" \
	"$([ $st = 0 ] && [ "$sum" = "$(sha256sum <"$key")" ] && [ "$scan2" = "$pub" ] && echo 1)" "status $st"

kill "$hp" 2>/dev/null; wait "$hp" 2>/dev/null; hp=
kill "$ap" 2>/dev/null; wait "$ap" 2>/dev/null; ap=
check "no sanitizer report from the gateway or the agent" \
	"$(sanitizer_clean "$work/drv.err" "$work/agent.log" && echo 1)" \
	"$(grep -hE -A5 'Sanitizer|runtime error' "$work/drv.err" "$work/agent.log" | head -n 20)"

echo "1..$((pass + fail))"
echo "# ssh: $pass passed, $fail failed"
[ "$fail" = 0 ]
