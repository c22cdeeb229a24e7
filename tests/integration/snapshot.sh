# Snapshots and restore ($vmm, labelled $v): a template taken the moment the
# agent is ready, clones restored from it with their own disks, sockets and
# identities, snapshots of a running guest through the control socket, and
# damaged or mismatched snapshots refused before anything runs.
# shellcheck shell=bash

kiln=${KILN_CLI:-$root/build/kiln}
sn=$work/snap
rm -rf "$sn" && mkdir -p "$sn"
mkdir -p "$sn/fsroot" && echo "from the template" >"$sn/fsroot/base"
mkfs.ext4 -q -F -d "$sn/fsroot" "$sn/data.img" 32M
snapedit=$root/tests/integration/snapedit.py
export kiln sn vmm snapedit

# clone NAME [ARGS...]: restore $sn/tpl in the background as clone NAME, with
# its own vsock socket ($sn/NAME.sock) and console; the pid goes to $sn/NAME.pid.
# Each clone brings its memory in by one of the --prefetch strategies, chosen
# by its name (ARGS may name one), so every test runs with each of them; and
# by the same hash, half of them are restored by a kiln-vmm --standby told
# the snapshot on stdin instead of by --restore.
clone() {
	local n=$1 modes=(auto none all) h
	shift
	h=$(printf %s "$n" | cksum | cut -d" " -f1)
	local m=${modes[$((h % 3))]}
	if [ $((h / 3 % 2)) = 1 ]; then
		echo "prefetch: $m, standby" >"$sn/$n.err"
		echo "restore $sn/tpl" | "$vmm" --standby --prefetch "$m" --vsock "cid=3,uds=$sn/$n.sock" \
			--console "$sn/$n.console" --control "$sn/$n.ctl" --timeout 600 "$@" 2>>"$sn/$n.err" &
	else
		echo "prefetch: $m" >"$sn/$n.err"
		"$vmm" --restore "$sn/tpl" --prefetch "$m" --vsock "cid=3,uds=$sn/$n.sock" --console "$sn/$n.console" \
			--control "$sn/$n.ctl" --timeout 600 "$@" </dev/null 2>>"$sn/$n.err" &
	fi
	echo $! >"$sn/$n.pid"
}
# ctl SOCKET REQUEST: one control request; prints the answer.
ctl() {
	python3 -c "import socket,sys; s=socket.socket(socket.AF_UNIX); s.settimeout(60); s.connect(sys.argv[1]); s.sendall(sys.argv[2].encode() + b\"\\n\"); print(s.makefile().readline().strip())" "$1" "$2"
}
# diag NAME: what a clone that does not answer is doing (for the failure output).
diag() {
	echo "diag $1: $(cat "$sn/$1.err" 2>/dev/null)"
	python3 - "$sn/$1.ctl" <<-"EOF"
	import socket, sys
	s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1]); f = s.makefile()
	for r in (b"stats\n", b"vcpus\n"):
	    s.sendall(r); print(f.readline().strip())
	EOF
}
# unclone NAME: stop a clone and reap it.
unclone() {
	local p
	p=$(cat "$sn/$1.pid")
	kill "$p" 2>/dev/null
	wait "$p" 2>/dev/null
	return 0
}
# snap CTL DIR: ask the VMM at control socket CTL to snapshot into DIR; prints the answer.
snap() {
	python3 -c "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b\"snapshot %s\\n\" % sys.argv[2].encode()); print(s.makefile().readline().strip())" "$1" "$2"
}
export -f clone unclone diag snap ctl

run "$v: snapshot: --template boots, waits for the agent and writes state, memory and a disk copy" 0 \
	'^state memory disk0.img rc=0$' \
	bash -c '"$vmm" --mem 256 --disk "$sn/data.img" --cmdline "kiln.mount=/dev/vda:/data" \
	           --vsock "cid=3,uds=$sn/tpl.sock" --console "$sn/tpl.console" --template "$sn/tpl" --timeout 300
	         rc=$?; cd "$sn/tpl" && echo "$(ls state) $(ls memory) $(ls disk0.img) rc=$rc"'

run "$v: snapshot: a clone's first operations are recorded as the template's working set" 0 \
	'^ok read=[1-9][0-9]* written=[1-9][0-9]* file=yes mode=0600$' \
	bash -c 'clone ws --prefetch none; trap "unclone ws" EXIT
	         "$kiln" identity --uds "$sn/ws.sock" --connect-timeout 60 --id ws >/dev/null || { diag ws; exit 1; }
	         "$kiln" exec --uds "$sn/ws.sock" -- true || exit 1
	         r=$(ctl "$sn/ws.ctl" workingset)
	         case $r in *"\"ok\":true"*) ;; *) echo "workingset: $r"; exit 1 ;; esac
	         echo "ok read=$(echo "$r" | jq .read_pages) written=$(echo "$r" | jq .write_pages)" \
	              "file=$([ -f "$sn/tpl/workingset" ] && echo yes) mode=$(stat -c %04a "$sn/tpl/workingset")"'

run "$v: snapshot: a clone answers exec, with the template'\''s disk and files" 0 \
	'^hello from the template clone-a$' \
	bash -c 'clone a; trap "unclone a" EXIT
	         "$kiln" identity --uds "$sn/a.sock" --connect-timeout 60 --id clone-a --hostname clone-a >/dev/null || { diag a; exit 1; }
	         "$kiln" exec --uds "$sn/a.sock" -- sh -c "echo hello \$(cat /data/base) \$(hostname)"'

run "$v: snapshot: a file written in one clone is not in another" 0 '^a-sees=mine b-sees=nothing$' \
	bash -c 'clone a; clone b; trap "unclone a; unclone b" EXIT
	         "$kiln" exec --uds "$sn/a.sock" --connect-timeout 60 -- sh -c "echo mine >/data/only-a; sync" || exit 1
	         "$kiln" exec --uds "$sn/b.sock" --connect-timeout 60 -- true || exit 1
	         a=$("$kiln" exec --uds "$sn/a.sock" -- cat /data/only-a)
	         b=$("$kiln" exec --uds "$sn/b.sock" -- sh -c "cat /data/only-a 2>/dev/null || echo nothing")
	         echo "a-sees=$a b-sees=$b"'

run "$v: snapshot: 10 clones restored at once, each answering with its own id" 0 '^distinct=10$' \
	bash -c 'for i in $(seq 10); do clone "m$i"; done
	         trap "for i in \$(seq 10); do unclone m\$i; done" EXIT
	         # (wait for the clients only: the clones are children of this shell too)
	         clients=
	         for i in $(seq 10); do
	           ( "$kiln" identity --uds "$sn/m$i.sock" --connect-timeout 60 --id "sandbox-$i" >/dev/null &&
	             "$kiln" exec --uds "$sn/m$i.sock" -- sh -c "echo \$KILN_SANDBOX_ID \$(cat /run/kiln/sandbox-id)" >"$sn/m$i.out" ) &
	           clients="$clients $!"
	         done; wait $clients
	         for i in $(seq 10); do [ "$(cat "$sn/m$i.out")" = "sandbox-$i sandbox-$i" ] || { echo "m$i: $(cat "$sn/m$i.out")"; diag "m$i"; }; done
	         echo "distinct=$(cat "$sn"/m*.out | sort -u | wc -l)"'

# The same guest whatever the strategy, and what a clone only read stays
# shared: its private memory is no more than a lazily faulted clone's.
run "$v: snapshot: every --prefetch strategy restores the same guest, and keeps read pages shared" 0 \
	'^same guest; prefetched none=0 ws=[1-9][0-9]* all=[1-9][0-9]*; private ws<=none all<=none$' \
	bash -c 'for m in none ws all; do clone "p$m" --prefetch "$m"; done
	         trap "for m in none ws all; do unclone p\$m; done" EXIT
	         for m in none ws all; do
	           "$kiln" identity --uds "$sn/p$m.sock" --connect-timeout 60 --id same >/dev/null || { diag "p$m"; exit 1; }
	           "$kiln" exec --uds "$sn/p$m.sock" -- sh -c "cat /data/base; hostname; ls / | wc -l; cat /proc/cmdline" >"$sn/p$m.out" || exit 1
	           ctl "$sn/p$m.ctl" stats >"$sn/p$m.stats"
	         done
	         cmp -s "$sn/pnone.out" "$sn/pws.out" && cmp -s "$sn/pnone.out" "$sn/pall.out" && echo -n "same guest; " ||
	           { head "$sn"/p*.out; exit 1; }
	         pf() { jq "(.prefetched.read_pages + .prefetched.write_pages)" "$sn/p$1.stats"; }
	         pv() { jq .memory.private "$sn/p$1.stats"; }
	         echo -n "prefetched none=$(pf none) ws=$(pf ws) all=$(pf all); private"
	         # (a page or two of slack per strategy: the guest is not stopped between runs)
	         for m in ws all; do
	           [ "$(pv $m)" -le $(($(pv none) + 64 * 4096)) ] && echo -n " $m<=none" || echo -n " $m=$(pv $m)>none=$(pv none)"
	         done; echo'

# A VMM started ahead of its snapshot (--standby): the VM is made, then it is
# told which snapshot to restore; its timeline counts from that request.
run "$v: snapshot: a standby VMM restores the snapshot it is told on stdin, timed from the request" 0 \
	'^standby-first=1 sb-1 restored-from-request=1 marks=standby kvm-exits=1$' \
	bash -c 'mkfifo "$sn/sb.in"
	         "$vmm" --standby --vcpus 1 --vsock "cid=3,uds=$sn/sb.sock" --console "$sn/sb.console" \
	           --control "$sn/sb.ctl" --timeout 600 -v <"$sn/sb.in" 2>"$sn/sb.err" &
	         echo $! >"$sn/sb.pid"; exec 3>"$sn/sb.in"; trap "exec 3>&-; unclone sb" EXIT
	         for i in $(seq 600); do grep -q "kiln-vmm: standby" "$sn/sb.err" && break; sleep 0.1; done
	         # (nothing restored yet: no vsock socket, no control socket)
	         f=$([ ! -e "$sn/sb.sock" ] && [ ! -e "$sn/sb.ctl" ] && grep -c "kiln-vmm: standby" "$sn/sb.err")
	         echo "restore $sn/tpl" >&3
	         "$kiln" identity --uds "$sn/sb.sock" --connect-timeout 60 --id sb-1 >/dev/null || { diag sb; exit 1; }
	         out=$("$kiln" exec --uds "$sn/sb.sock" -- sh -c "echo \$KILN_SANDBOX_ID")
	         st=$(ctl "$sn/sb.ctl" stats)
	         # the restore is timed from the request, not from the process start
	         r=$(echo "$st" | jq "[.timeline.marks[] | select(.name == \"request\" or .name == \"running\") | .ms] |
	                             (.[0] == 0 and .[1] > 0)")
	         marks=$(echo "$st" | jq -r "[.timeline.marks[] | select(.ms < 0) | .name] - [\"start\"] | join(\",\")")
	         echo "standby-first=$f $out restored-from-request=$([ "$r" = true ] && echo 1)" \
	              "marks=$marks kvm-exits=$(echo "$st" | jq ".kvm.exits > 0 and .kvm.exits >= .kvm.npf" | sed "s/true/1/")"'
run "$v: snapshot: a standby VMM of another vCPU count refuses the snapshot" 125 \
	'the snapshot.s guest has 1 vCPUs, not 2' \
	bash -c 'echo "restore $sn/tpl" | "$vmm" --standby --vcpus 2 --vsock "cid=3,uds=$sn/x.sock" --timeout 60'
run "$v: snapshot: a standby VMM refuses a line that is not a restore" 125 'standby: "snapshot now" on stdin: want "restore DIR"' \
	bash -c 'echo "snapshot now" | "$vmm" --standby --vsock "cid=3,uds=$sn/x.sock" --timeout 60'
run "$v: snapshot: a standby VMM whose input ends without a request exits 0" 0 '^exit=0 standby$' \
	bash -c '"$vmm" --standby --vsock "cid=3,uds=$sn/x.sock" --timeout 60 </dev/null 2>"$sn/sbx.err"
	         echo "exit=$? $(grep -o standby "$sn/sbx.err")"'
run "$v: snapshot: --standby takes no --restore" 125 'standby takes its snapshot on stdin' \
	"$vmm" --standby --restore "$sn/tpl"

run "$v: snapshot: a clone'\''s wall clock is right after IDENTITY, though the template is older" 0 '^clock-ok$' \
	bash -c 'sleep 3; clone c; trap "unclone c" EXIT
	         "$kiln" identity --uds "$sn/c.sock" --connect-timeout 60 --id c >/dev/null || { diag c; exit 1; }
	         g=$("$kiln" exec --uds "$sn/c.sock" -- date +%s); h=$(date +%s)
	         d=$((h - g)); [ "${d#-}" -le 2 ] && echo clock-ok || echo "guest $g host $h"'

run "$v: snapshot: a running guest with a busy disk and an open vsock connection, snapshot through --control" 0 \
	'^snapshot ok; original: tmp=before data=before; clone: tmp=before data=before new=ok; busy-exec-alive$' \
	bash -c '"$vmm" --mem 256 --disk "$sn/data.img" --cmdline "kiln.agent kiln.mount=/dev/vda:/data" \
	           --vsock "cid=3,uds=$sn/live.sock" --control "$sn/live.ctl" --console "$sn/live.console" --timeout 600 </dev/null &
	         live=$!; trap "kill $live 2>/dev/null; wait $live 2>/dev/null; unclone d" EXIT
	         "$kiln" exec --uds "$sn/live.sock" --connect-timeout 120 -- sh -c "echo before >/tmp/t; echo before >/data/d; sync" || exit 1
	         # A writer keeps the disk busy and its exec connection open across the snapshot.
	         "$kiln" exec --uds "$sn/live.sock" -- sh -c "while :; do dd if=/dev/zero of=/data/busy bs=64k count=16 conv=fsync 2>/dev/null; done" 2>"$sn/busy.err" &
	         busy=$!; sleep 2
	         r=$(python3 -c "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b\"snapshot %s\\n\" % sys.argv[2].encode()); print(s.makefile().readline())" "$sn/live.ctl" "$sn/live-snap")
	         case $r in *"\"ok\":true"*) echo -n "snapshot ok; " ;; *) echo "snapshot failed: $r"; exit 1 ;; esac
	         echo -n "original: $("$kiln" exec --uds "$sn/live.sock" -- sh -c "echo tmp=\$(cat /tmp/t) data=\$(cat /data/d)"); "
	         "$vmm" --restore "$sn/live-snap" --vsock "cid=3,uds=$sn/d.sock" --console "$sn/d.console" --timeout 600 </dev/null 2>"$sn/d.err" &
	         echo $! >"$sn/d.pid"
	         echo -n "clone: $("$kiln" exec --uds "$sn/d.sock" --connect-timeout 60 -- sh -c "echo tmp=\$(cat /tmp/t) data=\$(cat /data/d) new=\$(echo x >/data/new && sync && echo ok)"); "
	         kill -0 $busy && echo busy-exec-alive; kill $busy 2>/dev/null; wait $busy 2>/dev/null; exit 0'

run "$v: snapshot: control socket: pause, stats, resume, unknown requests" 0 \
	'^paused running vcpus=1 touched=yes shared=yes unknown=refused rip=kernel timer=tsc-deadline$' \
	bash -c 'clone s; trap "unclone s" EXIT
	         "$kiln" exec --uds "$sn/s.sock" --connect-timeout 60 -- true || { diag s; exit 1; }
	         python3 - "$sn/s.ctl" <<-"EOF"
	import json, socket, sys
	s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile()
	def req(line):
	    s.sendall(line.encode() + b"\n"); return json.loads(f.readline())
	p = req("pause"); st = req("stats"); vc = req("vcpus")["vcpus"][0]; r = req("resume"); u = req("frobnicate")
	print(p["state"], r["state"], "vcpus=%d" % len(st["vcpus"]),
	      "touched=%s" % ("yes" if 0 < st["memory"]["touched"] <= st["memory"]["size"] else "no"),
	      # a clone shares the pages it only read with the other clones
	      "shared=%s" % ("yes" if st["memory"]["private"] < st["memory"]["touched"] else "no"),
	      "unknown=%s" % ("refused" if not u["ok"] and "unknown request" in u["error"] else "accepted"),
	      # the idle guest sits in its kernel; its LAPIC timer mode (bits 17-18) is TSC deadline
	      "rip=%s" % ("kernel" if int(vc["rip"], 16) >= 0xffffffff80000000 else vc["rip"]),
	      "timer=%s" % ({0: "one-shot", 1: "periodic", 2: "tsc-deadline"}.get(int(vc["lvt_timer"], 16) >> 17 & 3, "?")))
	EOF'

run "$v: snapshot: snapshot DIR never writes through a link planted in DIR, and replaces an older snapshot whole" 0 \
	'^planted: refused victim=intact; again: ok ok files=disk0.img memory state leftovers=0$' \
	bash -c 'clone p; trap "unclone p" EXIT
	         "$kiln" exec --uds "$sn/p.sock" --connect-timeout 60 -- true || { diag p; exit 1; }
	         echo precious >"$sn/victim"; mkdir -p "$sn/planted"; ln -sfn "$sn/victim" "$sn/planted/memory"
	         case $(snap "$sn/p.ctl" "$sn/planted") in *"\"ok\":false"*) a=refused ;; *) a=accepted ;; esac
	         [ "$(cat "$sn/victim")" = precious ] && w=intact || w=overwritten
	         echo -n "planted: $a victim=$w; again: "
	         for i in 1 2; do r=$(snap "$sn/p.ctl" "$sn/p-snap"); case $r in *"\"ok\":true"*) echo -n "ok " ;; *) echo -n "failed: $r " ;; esac; done
	         echo "files=$(ls "$sn/p-snap" | tr "\n" " " | sed "s/ $//") leftovers=$(ls -A "$sn" | grep -c "^\.p-snap")"'

run "$v: snapshot: control socket shutdown stops the VM with status 0" 0 '^exit=0$' \
	bash -c 'clone z
	         "$kiln" exec --uds "$sn/z.sock" --connect-timeout 60 -- true || exit 1
	         python3 -c "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b\"shutdown\\n\"); s.makefile().readline()" "$sn/z.ctl"
	         wait "$(cat "$sn/z.pid")"; echo "exit=$?"'

# Clones on the network: each in its own namespace with its own tap kt0, whose
# host side keeps the template's MAC (the guest's ARP cache remembers it).
if [ -c /dev/net/tun ] && command -v unshare >/dev/null; then
	cat >"$sn/netns.sh" <<-"EOF"
	ip link set lo up
	ip tuntap add kt0 mode tap || exit 99
	ip link set kt0 address 02:6b:69:6c:6e:01
	ip addr add 172.30.0.1/24 dev kt0
	ip link set kt0 up
	exec "$@"
	EOF
	run "$v: snapshot: a template with a tap" 0 '^rc=0$' \
		bash -c 'unshare -n bash "$sn/netns.sh" "$vmm" --mem 256 --net tap=kt0 --cmdline "kiln.net=172.30.0.2/24,172.30.0.1" \
		           --vsock "cid=3,uds=$sn/ntpl.sock" --console "$sn/ntpl.console" --template "$sn/ntpl" --timeout 300; echo "rc=$?"'
	run "$v: snapshot: two clones, each on its own tap, reach the host" 0 '^n1: 1 packets received n2: 1 packets received $' \
		bash -c 'pids=
		         for n in n1 n2; do
		           unshare -n bash "$sn/netns.sh" "$vmm" --restore "$sn/ntpl" --net tap=kt0 --vsock "cid=3,uds=$sn/$n.sock" \
		             --console "$sn/$n.console" --timeout 200 </dev/null 2>"$sn/$n.err" &
		           pids="$pids $!"
		         done
		         trap "kill $pids 2>/dev/null; wait" EXIT
		         for n in n1 n2; do
		           echo -n "$n: $("$kiln" exec --uds "$sn/$n.sock" --connect-timeout 60 -- ping -c 1 -W 10 172.30.0.1 | grep -o "1 packets received") "
		         done; echo'
	run "$v: snapshot: a restore takes its tap from --net, never from the snapshot" 125 'net device.*pass --net tap=NAME' \
		bash -c 'unshare -n bash "$sn/netns.sh" "$vmm" --restore "$sn/ntpl" --vsock "cid=3,uds=$sn/nx.sock" --timeout 30 </dev/null'
fi

# Damaged and mismatched snapshots: refused with a reason, before the VM runs.
cp -r "$sn/tpl" "$sn/bad"
run "$v: snapshot: a truncated state file is refused" 125 'state: .*(truncated|checksum)' \
	bash -c 'head -c 3000 "$sn/tpl/state" >"$sn/bad/state"; "$vmm" --restore "$sn/bad"'
run "$v: snapshot: a state file with a flipped byte is refused (checksum)" 125 'checksum mismatch' \
	bash -c 'cp "$sn/tpl/state" "$sn/bad/state"
	         printf "\\xff" | dd of="$sn/bad/state" bs=1 seek=2000 conv=notrunc 2>/dev/null; "$vmm" --restore "$sn/bad"'
run "$v: snapshot: a state file with the wrong magic is refused" 125 'not a kiln snapshot state file' \
	bash -c 'cp "$sn/tpl/state" "$sn/bad/state"; printf "NOTSNAP!" | dd of="$sn/bad/state" conv=notrunc 2>/dev/null
	         "$vmm" --restore "$sn/bad"'
run "$v: snapshot: a memory file shorter than the guest's memory is refused" 125 'memory.*bytes, but the snapshot.s guest has 256 MiB' \
	bash -c 'cp "$sn/tpl/state" "$sn/bad/state"; truncate -s 100M "$sn/bad/memory"; "$vmm" --restore "$sn/bad"'
run "$v: snapshot: another memory size is refused" 125 'has 256 MiB of memory, not the 512 MiB' \
	"$vmm" --restore "$sn/tpl" --mem 512
run "$v: snapshot: another kernel is refused" 125 'runs another kernel' \
	"$vmm" --restore "$sn/tpl" --kernel "$guest/bzImage"
run "$v: snapshot: a restore cannot add devices" 125 'no further net device' \
	"$vmm" --restore "$sn/tpl" --net tap=nope0
run "$v: snapshot: another vsock CID is refused" 125 'vsock.*(cid|CID)' \
	"$vmm" --restore "$sn/tpl" --vsock "cid=9,uds=$sn/x.sock"
run "$v: snapshot: a damaged working set is refused, naming the way around it" 125 \
	'bad/workingset: its CRC-32C does not match .*--prefetch none' \
	bash -c 'cp "$sn/tpl/state" "$sn/bad/state"; cp --sparse=always "$sn/tpl/memory" "$sn/bad/memory"
	         cp "$sn/tpl/workingset" "$sn/bad/workingset"
	         printf "\xff" | dd of="$sn/bad/workingset" bs=1 seek=60 conv=notrunc 2>/dev/null
	         "$vmm" --restore "$sn/bad" --vsock "cid=3,uds=$sn/x.sock"'
run "$v: snapshot: the working set of another snapshot is refused" 125 \
	'live-snap/workingset: recorded for another snapshot' \
	bash -c 'cp "$sn/tpl/workingset" "$sn/live-snap/workingset"; trap "rm -f \"$sn/live-snap/workingset\"" EXIT
	         "$vmm" --restore "$sn/live-snap" --vsock "cid=3,uds=$sn/x.sock"'
run "$v: snapshot: --prefetch ws without a recorded working set says how to record one" 125 \
	'--prefetch ws: .*live-snap/workingset: No such file.*record one' \
	"$vmm" --restore "$sn/live-snap" --prefetch ws --vsock "cid=3,uds=$sn/x.sock"

# A crafted snapshot (docs/snapshot.md, "What a snapshot can and cannot do"):
# it names only files in its own directory, and host sockets and taps come
# from the restorer's options. victim.img has data.img's size, so only the
# path check stands between it and the guest.
cp "$sn/data.img" "$sn/victim.img"
for p in /etc/passwd "$sn/victim.img" ../victim.img; do
	run "$v: snapshot: a state naming $p as its disk is refused" 125 'disk path .* is not a file in the snapshot.s directory' \
		bash -c 'rm -rf "$sn/crafted" && cp -r "$sn/tpl" "$sn/crafted" && python3 "$snapedit" "$sn/crafted/state" 0 "$1" >/dev/null &&
		         "$vmm" --restore "$sn/crafted" --vsock "cid=3,uds=$sn/cr.sock" --timeout 30' _ "$p"
done
run "$v: snapshot: a restore takes its vsock socket from --vsock, never from the snapshot" 125 \
	'vsock device.*pass --vsock cid=3,uds=PATH.*\[socket: none\]$' \
	bash -c 'rm -rf "$sn/crafted" && cp -r "$sn/tpl" "$sn/crafted" && python3 "$snapedit" "$sn/crafted/state" 1 "cid=3,uds=$sn/planted.sock" >/dev/null
	         e=$("$vmm" --restore "$sn/crafted" --timeout 30 2>&1); rc=$?
	         echo "$e [socket: $([ -e "$sn/planted.sock" ] && echo created || echo none)]"; exit $rc'
run "$v: snapshot: a state beside the memory file of another snapshot is refused" 125 'memory.*another snapshot' \
	bash -c 'rm -rf "$sn/mixed" && cp -r "$sn/tpl" "$sn/mixed" && cp "$sn/live-snap/memory" "$sn/mixed/memory" &&
	         "$vmm" --restore "$sn/mixed" --vsock "cid=3,uds=$sn/mx.sock" --timeout 30'
rm -rf "$sn"
