# kilnd with real guests ($vmm as its kiln-vmm, kilnd's ASan/UBSan build):
# create, exec and kill through its API; 20 creates at once; timeouts,
# extension and session lifetimes; admission; kill -9 and re-adoption; VMMs
# that die or hang; a full disk; and 80 create/kill cycles that leak
# nothing. One kilnd (restarted where a test needs it) serves every test,
# and one template (768 MiB, 1 vCPU) every sandbox.
# shellcheck shell=bash

# kilnd drives the kiln-vmm it is given; once, with the release build, is enough.
if [[ $vmm == */asan/* ]]; then
	echo "# kilnd: run with the first kiln-vmm only"
	return 0
fi

kiln=${KILN_CLI:-$root/build/kiln}
kilnd_bin=${KILND:-$root/build/asan/kilnd}
kd=$work/kd
kdsock=$work/kd.sock
kdport=18181
shape='"memory_mb": 768, "vcpus": 1'
export kiln kilnd_bin kd kdsock kdport shape vmm work root

# kd_start [FLAGS...]: start kilnd (log in $work/kilnd.log) and wait for its socket.
# Its floor is 256M, not 1G: the nested host's /tmp is a tmpfs that guest
# memory shares, and by the last tests under 1 GiB of it is free.
kd_start() {
	ASAN_OPTIONS=detect_leaks=1:quarantine_size_mb=16 "$kilnd_bin" --state-dir "$kd" --listen "unix:$kdsock" \
		--listen "tcp:127.0.0.1:$kdport" --vmm "$vmm" --session-grace 2s --default-image minimal --min-free 256M "$@" \
		>>"$work/kilnd.log" 2>&1 &
	echo $! >"$work/kilnd.pid"
	for _ in $(seq 100); do
		curl -s --max-time 2 --unix-socket "$kdsock" http://kd/v1/node >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	echo "kilnd did not start: $(tail -3 "$work/kilnd.log")"
	return 1
}
# kd_stop: SIGTERM kilnd and wait until it is gone (it is not our child: no status).
kd_stop() {
	local p
	p=$(cat "$work/kilnd.pid")
	kill "$p" 2>/dev/null
	for _ in $(seq 200); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
	echo "kilnd (pid $p) did not stop on SIGTERM"
	return 1
}
# api METHOD PATH [JSON]: the response body; the HTTP status goes to $work/status.
api() {
	curl -sS --max-time 300 --unix-socket "$kdsock" -X "$1" -o "$work/body" -w '%{http_code}' \
		${3:+-H 'Content-Type: application/json' --data-binary "$3"} "http://kd$2" >"$work/status"
	cat "$work/body"
}
# js FILTER: jq's raw output for the JSON on stdin (python3 starts too slowly under TCG).
js() { jq -r "$1"; }
# mk [JSON fields]: create a sandbox of the test shape; prints its id.
mk() { api POST /v1/sandboxes "{$shape${1:+, $1}}" | js '.id // empty'; }
# state ID: its state and end reason.
state() { api GET "/v1/sandboxes/$1" | js '.state + ":" + (.end_reason // "None")'; }
# wait_state ID WANT [SECONDS]: poll until state ID prints WANT.
wait_state() {
	local s
	for _ in $(seq $((${3:-20} * 5))); do
		s=$(state "$1")
		[ "$s" = "$2" ] && { echo "$s"; return 0; }
		sleep 0.2
	done
	echo "still $s, not $2"
	return 1
}
# ex ID CMD...: run CMD in sandbox ID through its VMM's vsock socket.
ex() { local id=$1; shift; "$kiln" exec --uds "$kd/run/$id/vsock" --connect-timeout 30 --timeout 60 -- "$@"; }
# vmm_pid ID: the pid of sandbox ID's kiln-vmm.
vmm_pid() { pgrep -f "kiln-vmm --restore .* --vsock cid=3,uds=$kd/run/$1/vsock"; }
export -f kd_start kd_stop api js mk state wait_state ex vmm_pid

saved_timeout=$per_test_timeout
on_test_failure() { echo "#   kilnd log: $(tail -n 5 "$work/kilnd.log" | tr '\n' '|')"; }

rm -rf "$kd" "$work/kilnd.log"
run "kilnd: starts on a unix socket and TCP with a fresh state dir" 0 '^up$' \
	bash -c 'kd_start --mem-overcommit 8 && echo up'

run "kilnd: the first create boots the template and answers 201 with a running sandbox" 0 \
	'^201 running 768 1 5m$' \
	bash -c 'api POST /v1/sandboxes "{$shape}" >"$work/first.json"; printf "%s " "$(cat $work/status)"
	         js "[.state, .memory_mb, .vcpus, .timeout] | map(tostring) | join(\" \")" <"$work/first.json"
	         # Gone at once, not at its 5m: the admission test counts what runs.
	         api DELETE "/v1/sandboxes/$(js .id <"$work/first.json")" >/dev/null'

run "kilnd: the sandbox has its identity (id, hostname, env) before the create returns" 0 \
	'^id=sbx_loc_[0-9a-z]{20} host=sbx-loc-[0-9a-z]{20} same=yes env=blue$' \
	bash -c 'id=$(mk "\"env\": {\"COLOR\": \"blue\"}")
	         out=$(ex "$id" sh -c "echo \$(cat /run/kiln/sandbox-id) \$(hostname) \$COLOR")
	         set -- $out; [ "$1" = "$id" ] && same=yes || same=no
	         echo "id=$1 host=$2 same=$same env=$3"; api DELETE /v1/sandboxes/$id >/dev/null'

run "kilnd: create, exec and kill through raw HTTP on TCP with a token; kill frees the VMM and files at once" 0 \
	'^exec=hello kill=200 stopped:killed vmm=gone dir=gone$' \
	bash -c 'tok=$(api POST /v1/tokens | js .token)
	         h=(-H "Authorization: Bearer $tok" -H "Content-Type: application/json")
	         id=$(curl -sS "${h[@]}" -d "{$shape}" http://127.0.0.1:$kdport/v1/sandboxes | js .id)
	         pid=$(vmm_pid $id)
	         e=$(ex $id echo hello)
	         code=$(curl -sS "${h[@]}" -X DELETE -o /dev/null -w "%{http_code}" http://127.0.0.1:$kdport/v1/sandboxes/$id)
	         kill -0 $pid 2>/dev/null && v=alive || v=gone
	         [ -e "$kd/run/$id" ] && d=left || d=gone
	         echo "exec=$e kill=$code $(state $id) vmm=$v dir=$d"'

run "kilnd: create, exec, cp, extend and kill through the CLI, the agent riding kilnd's WebSocket" 0 \
	'^exec=sbx-loc-[0-9a-z]{20} cp=same info=running extend=ok kill=0 ls=empty$' \
	bash -c 'export KILN_ENDPOINT=unix:$kdsock
	         id=$("$kiln" create --memory 768 --vcpus 1 --label via=cli) || exit 1
	         e=$("$kiln" exec $id -- hostname)
	         head -c 300000 /dev/urandom >"$work/blob"; "$kiln" cp "$work/blob" $id guest:/tmp/blob 2>/dev/null || "$kiln" cp $id "$work/blob" guest:/tmp/blob
	         "$kiln" cp $id guest:/tmp/blob "$work/blob.back"; cmp -s "$work/blob" "$work/blob.back" && c=same || c=differs
	         i=$("$kiln" info $id --json | js .state)
	         "$kiln" extend $id 10m >/dev/null && x=ok || x=failed
	         "$kiln" kill $id >/dev/null; k=$?
	         l=$("$kiln" ls --label via=cli); [ -z "$l" ] || [ "$(echo "$l" | grep -c sbx_)" = 0 ] && l=empty
	         echo "exec=$e cp=$c info=$i extend=$x kill=$k ls=$l"'

run "kilnd: the CLI over TCP with a token reaches a sandbox by id after its creator left" 0 '^hello over tcp$' \
	bash -c 'tok=$(api POST /v1/tokens | js .token); id=$(mk)
	         KILN_ENDPOINT=http://127.0.0.1:$kdport KILN_TOKEN=$tok "$kiln" exec $id -- echo hello over tcp
	         api DELETE /v1/sandboxes/$id >/dev/null'

run "kilnd: an open agent WebSocket keeps a session sandbox alive past its creator's grace" 0 \
	'^during=running:None after=stopped:session_ended$' \
	bash -c 'id=$(mk "\"timeout\": \"session\""); export KILN_ENDPOINT=unix:$kdsock
	         "$kiln" exec $id -- sleep 6 & sleep 4.5; d=$(state $id); wait
	         echo "during=$d after=$(wait_state $id stopped:session_ended 20)"'

run "kilnd: the agent WebSocket of an unknown or ended sandbox is refused, saying why" 0 \
	'sbx_loc_aaaaaaaaaaaaaaaaaaaa is not running on this node' \
	bash -c 'KILN_ENDPOINT=unix:$kdsock "$kiln" exec sbx_loc_aaaaaaaaaaaaaaaaaaaa -- true; echo "rc=$?"'

# 21 guests under TCG on one emulated CPU keep it busy with their timer
# ticks alone, and an exec then takes 10-20 s: every create is checked
# (201, running, its own id, which kilnd set through the agent before
# answering), three of them also answer an exec as themselves, and all 20
# are killed at once.
per_test_timeout=600
run "kilnd: 20 creates at once all start, each with its own identity, and answer as themselves" 0 \
	'^20 created, 20 distinct, 20 running; 3 of 3 answer as themselves' \
	bash -c 't0=$(date +%s); pids=()
	         for i in $(seq 20); do curl -sS --max-time 400 --unix-socket "$kdsock" -o "$work/c$i.json" \
	             -d "{$shape, \"timeout\": \"30m\", \"labels\": {\"batch\": \"b20\"}}" http://kd/v1/sandboxes & pids+=($!); done
	         wait "${pids[@]}"; t1=$(date +%s)
	         for i in $(seq 20); do js ".id // empty" <"$work/c$i.json"; done >"$work/ids"
	         ids=$(grep -c sbx_ "$work/ids"); uniq=$(sort -u "$work/ids" | grep -c sbx_)
	         running=$(api GET "/v1/sandboxes?label=batch=b20" | jq "[.sandboxes[] | select(.state == \"running\")] | length")
	         ok=0; for i in 1 10 20; do id=$(sed -n "${i}p" "$work/ids"); [ -n "$id" ] || continue
	             who=$(timeout 150 "$kiln" exec --uds "$kd/run/$id/vsock" --connect-timeout 120 -- cat /run/kiln/sandbox-id 2>&1)
	             [ "$who" = "$id" ] && ok=$((ok + 1)) || echo "$id: $who"; done; t2=$(date +%s)
	         for id in $(cat "$work/ids"); do api DELETE "/v1/sandboxes/$id" >/dev/null & done; wait
	         echo "$ids created, $uniq distinct, $running running; $ok of 3 answer as themselves (creates $((t1 - t0)) s, execs $((t2 - t1)) s)"'
per_test_timeout=$saved_timeout

run "kilnd: a 5 s timeout fires, and frees the VMM and its files" 0 '^stopped:timed_out vmm=gone dir=gone$' \
	bash -c 'id=$(mk "\"timeout\": \"5s\""); pid=$(vmm_pid $id)
	         wait_state $id stopped:timed_out 30 >/dev/null
	         kill -0 $pid 2>/dev/null && v=alive || v=gone; [ -e "$kd/run/$id" ] && d=left || d=gone
	         echo "$(state $id) vmm=$v dir=$d"'

run "kilnd: extend keeps a running process alive past the old deadline" 0 '^extended running sleeper=alive$' \
	bash -c 'id=$(mk "\"timeout\": \"6s\"")
	         "$kiln" exec --uds "$kd/run/$id/vsock" --detach -- sleep 600 >/dev/null
	         api POST /v1/sandboxes/$id/extend "{\"timeout\": \"2m\"}" >/dev/null; [ "$(cat $work/status)" = 200 ] && printf "extended "
	         sleep 9
	         s=$(state $id); "$kiln" ps --uds "$kd/run/$id/vsock" | grep -q "sleep 600" && p=alive || p=gone
	         echo "${s%%:*} sleeper=$p"; api DELETE /v1/sandboxes/$id >/dev/null'

run "kilnd: extend refuses what it cannot do, naming why" 0 '^400 session .* 400 not after now .* 409 over$' \
	bash -c 'id=$(mk "\"timeout\": \"session\""); api POST /v1/sandboxes/$id/extend "{\"timeout\": \"1m\"}" >"$work/e1"
	         printf "%s session %s " "$(cat $work/status)" "$(js ".message[:20]" <"$work/e1")"
	         api DELETE /v1/sandboxes/$id >/dev/null
	         id=$(mk); api POST /v1/sandboxes/$id/extend "{\"stop_at_ms\": 1000}" >/dev/null; printf "%s not after now x " "$(cat $work/status)"
	         api DELETE /v1/sandboxes/$id >/dev/null
	         api POST /v1/sandboxes/$id/extend "{\"timeout\": \"1m\"}" >/dev/null; echo "$(cat $work/status) over"'

run "kilnd: a session sandbox ends when its creating connection drops (after the grace)" 0 \
	'^while connected: running:None; after: stopped:session_ended$' \
	bash -c 'python3 - "$kdsock" "$shape" >"$work/sess" <<-"EOF" &
	import json, socket, sys, time
	s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
	body = ("{%s, \"timeout\": \"session\"}" % sys.argv[2]).encode()
	s.sendall(b"POST /v1/sandboxes HTTP/1.1\r\nHost: kd\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
	buf = b""
	while b"\r\n\r\n" not in buf or not buf.rstrip().endswith(b"}"):
	    buf += s.recv(65536)
	print(json.loads(buf.split(b"\r\n\r\n", 1)[1])["id"], flush=True)
	time.sleep(4)
	s.close()
	EOF
	         for _ in $(seq 600); do [ -s "$work/sess" ] && break; sleep 0.1; done; id=$(cat "$work/sess")
	         sleep 2.5; printf "while connected: %s; " "$(state $id)"; wait
	         echo "after: $(wait_state $id stopped:session_ended 20)"'

run "kilnd: a client that leaves mid-create gets its duration sandbox finished and owned" 0 '^running:None$' \
	bash -c 'python3 - "$kdsock" "$shape" <<-"EOF"
	import socket, sys
	s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
	body = ("{%s, \"labels\": {\"left\": \"yes\"}}" % sys.argv[2]).encode()
	s.sendall(b"POST /v1/sandboxes HTTP/1.1\r\nHost: kd\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
	s.close()
	EOF
	         for _ in $(seq 100); do id=$(api GET "/v1/sandboxes?label=left=yes" | js ".sandboxes[0].id // empty"); [ -n "$id" ] && break; sleep 0.1; done
	         wait_state $id running:None 30; api DELETE /v1/sandboxes/$id >/dev/null'

run "kilnd: a VMM killed behind kilnd's back is noticed at once and recorded" 0 '^stopped:oom .*SIGKILL, not by kilnd' \
	bash -c 'id=$(mk); kill -9 $(vmm_pid $id); wait_state $id stopped:oom 5 | tr "\n" " "
	         api GET /v1/sandboxes/$id/events | js ".events[-1].detail"'

run "kilnd: a hung VMM (SIGSTOP) is still killed within a second" 0 '^stopped:killed vmm=gone in [01]s$' \
	bash -c 'id=$(mk); pid=$(vmm_pid $id); kill -STOP $pid; t0=$(date +%s)
	         api DELETE /v1/sandboxes/$id >/dev/null; t1=$(date +%s)
	         kill -0 $pid 2>/dev/null && v=alive || v=gone; echo "$(state $id) vmm=$v in $((t1 - t0))s"'

run "kilnd: kill -9 of kilnd and a restart: every sandbox still answers, one whose VMM died is reported lost" 0 \
	'^a=ok b=ok c=stopped:lost adopted=yes$' \
	bash -c 'a=$(mk "\"labels\": {\"n\": \"a\"}"); b=$(mk "\"labels\": {\"n\": \"b\"}"); c=$(mk)
	         api GET /v1/node | js ".capacity_mb / 8" >"$work/base_mb"
	         echo "$a $b" >"$work/ab"
	         kill -9 $(cat "$work/kilnd.pid"); kill -9 $(vmm_pid $c)
	         kd_start --mem-overcommit $(awk "{print 2304.5 / \$1}" "$work/base_mb") || exit 1
	         [ "$(ex $a cat /run/kiln/sandbox-id)" = "$a" ] && ra=ok || ra=no
	         [ "$(ex $b cat /run/kiln/sandbox-id)" = "$b" ] && rb=ok || rb=no
	         api GET /v1/sandboxes/$a/events | grep -q "re-adopted kiln-vmm" && ad=yes || ad=no
	         echo "a=$ra b=$rb c=$(state $c) adopted=$ad"'

run "kilnd: admission refuses the sandbox that does not fit, saying what is free, and admits it after a kill" 0 \
	'^fits=201 refused=503 no room for 768 MiB: 0 MiB of 2304 MiB free .* after kill=201$' \
	bash -c 'read a b <"$work/ab"
	         d=$(mk); [ -n "$d" ] && f=201 || f=$(cat $work/status)
	         api POST /v1/sandboxes "{$shape}" >"$work/refused"; r=$(cat $work/status)
	         api DELETE /v1/sandboxes/$a >/dev/null
	         e=$(mk); [ -n "$e" ] && k=201 || k=$(cat $work/status)
	         echo "fits=$f refused=$r $(js .message <"$work/refused") after kill=$k"
	         for id in $b $d $e; do api DELETE /v1/sandboxes/$id >/dev/null; done'

run "kilnd: metrics count creates, refusals and committed memory" 0 \
	'^creates=[1-9][0-9]* refusals=[1-9][0-9]* committed=0 running=0$' \
	bash -c 'm=$(curl -s --unix-socket "$kdsock" http://kd/metrics)
	         g() { echo "$m" | grep "^$1 " | cut -d" " -f2; }
	         echo "creates=$(g kiln_creates_total) refusals=$(g kiln_admission_refusals_total) committed=$(g kiln_memory_committed_mb) running=$(echo "$m" | grep "^kiln_sandboxes{state=\"running\"}" | cut -d" " -f2)"'

# 80 cycles take minutes under TCG (200 took 280 s of a CI run that must stay
# under an hour): enough for a leak of one fd, process, file or namespace per
# sandbox to show, and 16 MiB of RSS is 200 KiB a cycle.
per_test_timeout=900
# Each sandbox has a network namespace (issue 16) holding its tap, nftables
# table and conntrack entries: counting namespaces counts all of them.
run "kilnd: 80 create/kill cycles leak no fds, processes, files, registry rows, namespaces or memory" 0 \
	'^leaks: none .*network true' \
	bash -c 'kd_stop; kd_start --mem-overcommit 8 || exit 1; p=$(cat "$work/kilnd.pid")
	         nsn() { find /proc/[0-9]*/ns/net -maxdepth 0 -printf "%l\n" 2>/dev/null | sort -u | wc -l; }
	         for i in $(seq 10); do id=$(mk); api DELETE /v1/sandboxes/$id >/dev/null; done
	         fd0=$(ls /proc/$p/fd | wc -l); rss0=$(awk "/VmRSS/{print \$2}" /proc/$p/status); ns0=$(nsn)
	         for i in $(seq 80); do id=$(mk) || exit 1; [ -n "$id" ] || { echo "create $i failed: $(cat $work/body)"; exit 1; }
	             api DELETE /v1/sandboxes/$id >/dev/null; done
	         fd1=$(ls /proc/$p/fd | wc -l); rss1=$(awk "/VmRSS/{print \$2}" /proc/$p/status)
	         vm=$(pgrep -c -f "kiln-vmm --restore $kd/" || true); dirs=$(ls "$kd/run" | wc -l)
	         live=$(api GET /v1/sandboxes | js ".sandboxes | length")
	         bad=""; [ "$fd1" -le "$fd0" ] || bad="$bad fds"; [ "$vm" = 0 ] || bad="$bad vmms"; [ "$dirs" = 0 ] || bad="$bad dirs"
	         [ "$live" = 0 ] || bad="$bad rows"; [ $((rss1 - rss0)) -lt 16384 ] || bad="$bad rss"
	         ns1=$(nsn); [ "$ns1" -le "$ns0" ] || bad="$bad namespaces"
	         echo "leaks: ${bad:-none} (fds $fd0->$fd1, RSS $rss0->$rss1 KiB, VMMs $vm, run dirs $dirs, live rows $live, namespaces $ns0->$ns1; network $(api GET /v1/node | js .network); $SECONDS s)"'
per_test_timeout=$saved_timeout

# pool_ready: the warm VMs ready in the 768 MiB / 1 vCPU pool.
pool_ready() { curl -s --unix-socket "$kdsock" http://kd/metrics | sed -n 's/^kiln_pool_ready{memory_mb="768",vcpus="1"} //p'; }
export -f pool_ready

run "kilnd: with a warm pool a create only hands over identity, and the pool refills" 0 \
	'^ready=2 pooled=yes identity=ok refilled=2$' \
	bash -c 'kd_stop; kd_start --mem-overcommit 8 --pool 768:1:2 || exit 1
	         for _ in $(seq 300); do [ "$(pool_ready)" = 2 ] && break; sleep 0.2; done; r=$(pool_ready)
	         id=$(mk); api GET /v1/sandboxes/$id/events | grep -q "taken from the warm pool" && p=yes || p=no
	         [ "$(ex $id hostname)" = "$(echo $id | tr _ -)" ] && i=ok || i=bad
	         for _ in $(seq 300); do [ "$(pool_ready)" = 2 ] && break; sleep 0.2; done
	         echo "ready=$r pooled=$p identity=$i refilled=$(pool_ready)"; api DELETE /v1/sandboxes/$id >/dev/null'

run "kilnd: a restart after kill -9 kills the old warm pool's VMs, which no sandbox owns" 0 '^orphans before=2 after=0$' \
	bash -c 'b=$(pgrep -c -f "kiln-vmm --restore $kd/" || true); kill -9 $(cat "$work/kilnd.pid")
	         kd_start --mem-overcommit 8 || exit 1; sleep 0.5
	         echo "orphans before=$b after=$(pgrep -c -f "kiln-vmm --restore $kd/" || true)"'

run "kilnd: a full disk under the state dir gets a clear error, and kilnd keeps serving" 0 \
	'^create=50[037] .*(full|space).* node=200$' \
	bash -c 'kd_stop; m=$work/small; mkdir -p $m && mount -t tmpfs -o size=4m tmpfs $m || exit 1
	         trap "umount -l $m" EXIT
	         "$kilnd_bin" --state-dir $m/kd --listen unix:$m/kd.sock --vmm "$vmm" --default-image minimal --min-free 0 \
	           >$work/full.log 2>&1 & p=$!
	         for _ in $(seq 100); do [ -S $m/kd.sock ] && break; sleep 0.1; done
	         dd if=/dev/zero of=$m/fill bs=64k 2>/dev/null
	         c=$(curl -sS --unix-socket $m/kd.sock -o $work/fullbody -w "%{http_code}" -d "{$shape}" http://kd/v1/sandboxes)
	         n=$(curl -sS --unix-socket $m/kd.sock -o /dev/null -w "%{http_code}" http://kd/v1/node)
	         echo "create=$c $(js .message <$work/fullbody) node=$n"; kill $p; wait $p'

run "kilnd: templates are keyed by the initramfs's content: a copy reuses one, a change boots a new one and the old goes" 0 \
	'^first=restored stale=false second=booted dirs=1 exec=ok$' \
	bash -c 'kd_stop; cp "$(dirname "$kilnd_bin")/guest/initramfs.cpio" "$work/initrd.cpio"
	         kd_start --mem-overcommit 8 --initrd "$work/initrd.cpio" || exit 1
	         id=$(mk); api GET /v1/sandboxes/$id/events | grep -q "after booting its template" && a=booted || a=restored
	         api DELETE /v1/sandboxes/$id >/dev/null; kd_stop
	         head -c 512 /dev/zero >>"$work/initrd.cpio"
	         kd_start --mem-overcommit 8 --initrd "$work/initrd.cpio" || exit 1
	         st=$(api GET /v1/templates | js "[.templates[] | select(.memory_mb == 768 and .vcpus == 1) | .current][0]")
	         id=$(mk); api GET /v1/sandboxes/$id/events | grep -q "after booting its template" && b=booted || b=restored
	         d=$(ls -d "$kd"/templates/minimal-768m-1c-* | grep -vc "\.build$")
	         [ "$(ex $id cat /run/kiln/sandbox-id)" = "$id" ] && e=ok || e=bad
	         api DELETE /v1/sandboxes/$id >/dev/null
	         echo "first=$a stale=$st second=$b dirs=$d exec=$e"'

# Debian sandboxes (make image): what make run's kilnd boots by default. The
# tests above run on the minimal image; kilnd finds Debian's beside it.
deb='"image": "debian"'
dimg=$(readlink -f "$root/build/guest/debian.ext4")
export deb dimg
run "kilnd: images: minimal and debian (found beside kilnd) are listed; an unknown image is refused, naming them" 0 \
	'^minimal,debian debian .* 400 .*image "nope" is not on this node \(it has minimal, debian\)' \
	bash -c 'kd_stop; kd_start --mem-overcommit 8 || exit 1
	         l=$(api GET /v1/images | js "[.images[].name] | join(\",\")")
	         t=$("$kiln" image ls --endpoint "unix:$kdsock" | grep "^debian" | tr -s " ")
	         api POST /v1/sandboxes "{$shape, \"image\": \"nope\"}" >/dev/null
	         echo "$l $t $(cat $work/status) $(js .message <$work/body)"'

run "kilnd: a Debian sandbox runs bash, python3 and sudo as app in /home/app, on a 10 GiB layer, its hostname resolving" 0 \
	'^201 debian 5\.[^ ]+ app /home/app 2 0 sbx-loc-[0-9a-z]{20} 10G$' \
	bash -c 'id=$(mk "$deb"); st=$(cat $work/status); img=$(api GET /v1/sandboxes/$id | js .image)
	         out=$(ex $id bash -c "echo \$BASH_VERSION \$(id -un) \$PWD \$(python3 -c \"print(1+1)\") \$(sudo -n id -u) \$(hostname) \$(df --output=size -BG / | tail -1)")
	         api DELETE /v1/sandboxes/$id >/dev/null; echo "$st $img $out"'

run "kilnd: 10 Debian sandboxes write everywhere; none sees another's files, and the image is unchanged" 0 \
	'^isolated=10 image=unchanged$' \
	bash -c 'iso=0
	         for i in $(seq 10); do
	           id=$(mk "$deb"); [ -n "$id" ] || { echo "create $i: $(cat $work/body)"; exit 1; }
	           n=$(ex $id bash -c "ls /usr/kiln-* /etc/kiln-* ~/kiln-* 2>/dev/null | wc -l
	                 echo $i | sudo tee /usr/kiln-$i /etc/kiln-$i >/dev/null && echo $i >~/kiln-$i &&
	                 sudo rm -rf /usr/share/doc /etc/apt && sync")
	           [ "$n" = 0 ] && iso=$((iso + 1)); api DELETE /v1/sandboxes/$id >/dev/null
	         done
	         sum=$(sha256sum <"$dimg" | cut -d" " -f1)
	         [ "$sum" = "$(cat "${dimg%.ext4}.sha256")" ] && u=unchanged || u="changed ($sum)"
	         echo "isolated=$iso image=$u"'

# Volumes: made through the CLI, attached at create in the template's slots.
vol='"volumes": {"/data": "vol1"}'
volro='"volumes": {"/v": {"volume": "vol1", "readonly": true}}'
export vol volro
run "kilnd: a volume keeps app's data across sandboxes; a second writer is refused, naming the first" 0 \
	'^made 1024 a=ok second=409 .*vol1 is attached writable to sandbox sbx_loc_[0-9a-z]{20}.* b=kept$' \
	bash -c '"$kiln" volume create vol1 1G --endpoint "unix:$kdsock" >/dev/null || exit 1
	         s=$(api GET /v1/volumes/vol1 | js .size_mb)
	         a=$(mk "$deb, $vol"); [ -n "$a" ] || { echo "create: $(cat $work/body)"; exit 1; }
	         ra=$(ex $a bash -c "echo hello >/data/f && sync && cat /data/f" | grep -q hello && echo ok)
	         api POST /v1/sandboxes "{$shape, $deb, \"volumes\": {\"/d\": \"vol1\"}}" >/dev/null
	         sec="$(cat $work/status) $(js .message <$work/body)"
	         api DELETE /v1/sandboxes/$a >/dev/null
	         b=$(mk "$deb, $vol"); rb=$(ex $b cat /data/f); api DELETE /v1/sandboxes/$b >/dev/null
	         [ "$rb" = hello ] && rb=kept
	         echo "made $s a=$ra second=$sec b=$rb"'

run "kilnd: a volume attaches read-only to two sandboxes at once; writes there fail; a writer must wait" 0 \
	'^r1=hello r2=hello write=Read-only file system writer=409 .*attached read-only' \
	bash -c 'r1=$(mk "$deb, $volro"); r2=$(mk "$deb, $volro")
	         [ -n "$r1" ] && [ -n "$r2" ] || { echo "create: $(cat $work/body)"; exit 1; }
	         a=$(ex $r1 cat /v/f); b=$(ex $r2 cat /v/f)
	         w=$(ex $r1 bash -c "{ echo x >/v/g; } 2>&1" | grep -o "Read-only file system" | head -1)
	         api POST /v1/sandboxes "{$shape, $deb, $vol}" >/dev/null; wr="$(cat $work/status) $(js .message <$work/body)"
	         api DELETE /v1/sandboxes/$r1 >/dev/null; api DELETE /v1/sandboxes/$r2 >/dev/null
	         echo "r1=$a r2=$b write=$w writer=$wr"'

run "kilnd: a volume grows only while free, and the next sandbox sees it grown; rm waits until it is free" 0 \
	'^busy=1 rm=1 grown=2048 df=(19|20)[0-9]{2} f=hello gone=404 hours=yes$' \
	bash -c 'a=$(mk "$deb, $vol"); [ -n "$a" ] || { echo "create: $(cat $work/body)"; exit 1; }
	         "$kiln" volume resize vol1 2G --endpoint "unix:$kdsock" 2>/dev/null; busy=$?
	         "$kiln" volume rm vol1 --endpoint "unix:$kdsock" 2>/dev/null; rm=$?
	         api DELETE /v1/sandboxes/$a >/dev/null
	         "$kiln" volume resize vol1 2G --endpoint "unix:$kdsock" || exit 1
	         g=$(api GET /v1/volumes/vol1 | js .size_mb)
	         h=$(api GET /v1/volumes/vol1 | js "if .usage.gib_hours > 0 then \"yes\" else \"no\" end")
	         b=$(mk "$deb, $vol"); d=$(ex $b df -BM --output=size /data | tail -1 | tr -dc 0-9); f=$(ex $b cat /data/f)
	         api DELETE /v1/sandboxes/$b >/dev/null
	         "$kiln" volume rm vol1 --endpoint "unix:$kdsock" || exit 1
	         api GET /v1/volumes/vol1 >/dev/null
	         echo "busy=$busy rm=$rm grown=$g df=$d f=$f gone=$(cat $work/status) hours=$h"'

run "kilnd: a volume made from debian, changed in a sandbox and snapshotted, boots as an image whose sandboxes' writes vanish" 0 \
	'^sees=hello vanished=yes kind=snapshot gone=404$' \
	bash -c 'ep="unix:$kdsock"
	         "$kiln" volume create rv 1G --from debian --endpoint "$ep" || exit 1
	         a=$(mk "$deb, \"volumes\": {\"/mnt/r\": \"rv\"}"); [ -n "$a" ] || { echo "create: $(cat $work/body)"; exit 1; }
	         ex $a bash -c "echo hello | sudo tee /mnt/r/etc/kiln-hello >/dev/null && sync"; api DELETE /v1/sandboxes/$a >/dev/null
	         "$kiln" volume snapshot rv snap1 --endpoint "$ep" || exit 1
	         k=$(api GET /v1/images/snap1 | js .kind)
	         b=$(mk "\"root\": \"snap1\""); [ -n "$b" ] || { echo "create: $(cat $work/body)"; exit 1; }
	         h=$(ex $b cat /etc/kiln-hello); ex $b bash -c "echo x | sudo tee /etc/kiln-x >/dev/null"
	         api DELETE /v1/sandboxes/$b >/dev/null
	         c=$(mk "\"image\": \"snap1\""); v=$(ex $c bash -c "test -e /etc/kiln-x && echo kept || echo yes")
	         api DELETE /v1/sandboxes/$c >/dev/null
	         "$kiln" image rm snap1 --endpoint "$ep" && "$kiln" volume rm rv --endpoint "$ep" || exit 1
	         api GET /v1/images/snap1 >/dev/null
	         echo "sees=$h vanished=$v kind=$k gone=$(cat $work/status)"'

run "kilnd: a full layer gives ENOSPC in its sandbox; another sandbox still writes" 0 \
	'^a: No space left on device b: written$' \
	bash -c 'kd_stop; kd_start --mem-overcommit 8 --layer-size 128M || exit 1
	         a=$(mk "$deb"); b=$(mk "$deb")
	         ea=$(ex $a bash -c "dd if=/dev/zero of=fill bs=1M count=200 2>&1 | grep -o \"No space left on device\" | head -1")
	         eb=$(ex $b bash -c "head -c 1048576 /dev/zero >f && echo written")
	         api DELETE /v1/sandboxes/$a >/dev/null; api DELETE /v1/sandboxes/$b >/dev/null; echo "a: $ea b: $eb"'

run "kilnd: a damaged image is refused by its recorded SHA-256; a truncated one fails its template boot, saying why" 0 \
	'^bad: 500 .*bad .*does not match the SHA-256 recorded in .*/bad/rootfs\.sha256.* trunc: 500 .*image on /dev/vda will not mount' \
	bash -c 'kd_stop; mkdir -p $work/bad $work/trunc
	         head -c 64M "$dimg" >$work/bad/rootfs.ext4; cp "${dimg%.ext4}.sha256" $work/bad/rootfs.sha256
	         head -c 64M "$dimg" >$work/trunc/t.ext4
	         kd_start --mem-overcommit 8 --image "debian=$dimg" --image bad=$work/bad/rootfs.ext4 \
	           --image trunc=$work/trunc/t.ext4 || exit 1
	         api POST /v1/sandboxes "{$shape, \"image\": \"bad\"}" >/dev/null; a="$(cat $work/status) $(js .message <$work/body)"
	         api POST /v1/sandboxes "{$shape, \"image\": \"trunc\"}" >/dev/null; b="$(cat $work/status) $(js .message <$work/body)"
	         rm -rf $work/bad $work/trunc; echo "bad: $a trunc: $b"'

run "kilnd: below --min-free a create is refused with 507, naming the floor and the fix" 0 \
	'^507 .*has [0-9.]+ GiB free, below the floor of 1024\.00 GiB \(kilnd --min-free\)' \
	bash -c 'kd_stop; kd_start --mem-overcommit 8 --min-free 1T || exit 1
	         api POST /v1/sandboxes "{$shape}" >/dev/null; echo "$(cat $work/status) $(js .message <$work/body)"'

run "kilnd: stops cleanly on SIGTERM, and ran with no sanitizer report" 0 '^stopped, reports=0$' \
	bash -c 'kd_stop; kd_start --mem-overcommit 8 >/dev/null && kd_stop && echo "stopped, reports=$(grep -c -E "Sanitizer|runtime error" "$work/kilnd.log" "$work/full.log" | awk -F: "{s+=\$2} END {print s}")"'

# The nested host's /tmp is a tmpfs that guest memory shares: leave no VMM,
# template, volume or image of this kilnd behind for the groups that follow.
pkill -9 -f "kiln-vmm .*$kd/" 2>/dev/null
sleep 0.5
rm -rf "$kd"
