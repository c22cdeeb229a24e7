# Deno's own SDK against kilnd: tests/sdk/sdk-test.mjs drives kilnd's
# /api/v3 (the @deno/sandbox wire protocol) and /api/v2 routes with the real
# @deno/sandbox from npm, on real Debian guests, exactly as a user program
# would (DENO_SANDBOX_ENDPOINT, DENO_DEPLOY_ENDPOINT, DENO_DEPLOY_TOKEN). Each
# TAP result it prints is one test of this group; then kilnd's RSS after its
# hostile clients, and that kilnd still answers.
#
# The SDK is installed on the dev machine by make deps-test (npm ci in
# tests/sdk): the nested host has no network. Knobs: KILN_SDK_ONLY=fs:,sh:
# runs only the checks whose names hold one of those substrings;
# KILN_SDK_DEADLINE (seconds, default 1200) bounds the run.
# shellcheck shell=bash

if [[ $vmm == */asan/* ]]; then
	echo "# sdk: run with the first kiln-vmm only"
	return 0
fi

sdk=$work/sdk
sdk_dir=$root/tests/sdk
sdk_kilnd=${KILND:-$root/build/asan/kilnd}
sdk_sock=$sdk/kd.sock
sdk_port=18383
# What sandboxes may commit in all: the checks' two sandboxes (1 GiB and
# 768 MiB) fit, a 4096 MiB one (the SDK's largest) never does, so that
# sdk-test.mjs sees a 503 NO_CAPACITY.
sdk_cap_mb=3072
mkdir -p "$sdk"
export sdk sdk_sock sdk_port

# sdk_start [FLAGS...]: start kilnd (log in $sdk/kilnd.log) and wait for its socket.
sdk_start() {
	ASAN_OPTIONS=detect_leaks=1:quarantine_size_mb=16 "$sdk_kilnd" --state-dir "$sdk/kd" --listen "unix:$sdk_sock" \
		--listen "tcp:127.0.0.1:$sdk_port" --vmm "$vmm" --default-image debian --min-free 256M \
		--expose-listen 127.0.0.1:18443 --ssh-listen 127.0.0.1:18022 --ssh-hostname 127.0.0.1 "$@" \
		>>"$sdk/kilnd.log" 2>&1 &
	echo $! >"$sdk/kilnd.pid"
	for _ in $(seq 600); do
		curl -s --max-time 2 --unix-socket "$sdk_sock" http://kd/v1/node >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	echo "kilnd did not start: $(tail -3 "$sdk/kilnd.log")"
	return 1
}
# sdk_stop: SIGTERM kilnd and wait until it is gone.
sdk_stop() {
	local p
	p=$(cat "$sdk/kilnd.pid" 2>/dev/null) || return 0
	kill "$p" 2>/dev/null
	for _ in $(seq 200); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
	echo "kilnd (pid $p) did not stop on SIGTERM"
	return 1
}
sdk_api() {
	curl -sS --max-time 60 --unix-socket "$sdk_sock" -X "$1" "http://kd$2"
}
# sdk_tap FILE: each TAP result in FILE (sdk-test.mjs's output, read as it
# comes) becomes one test of this group, counted as run() counts; its
# comments pass through. A run that stops short, or exits non-zero with no
# failure reported, is one more failure.
sdk_tap() {
	local line desc name detail plan="" seen=0 bad=0 st="" re='^(not )?ok [0-9]+ - (.*)$'
	while IFS= read -r line; do
		if [[ $line =~ $re ]]; then
			desc=${BASH_REMATCH[2]}
			name=${desc%% # *}
			detail=""
			[ "$name" = "$desc" ] || detail=${desc#* # }
			seen=$((seen + 1))
			if [ -z "${BASH_REMATCH[1]}" ]; then
				pass=$((pass + 1))
				printf 'ok %d - sdk: %s%s\n' $((pass + fail)) "$name" "${detail:+ ($detail)}"
			else
				fail=$((fail + 1))
				bad=$((bad + 1))
				failed_names+=("sdk: $name")
				printf 'not ok %d - sdk: %s: %s\n' $((pass + fail)) "$name" "$detail"
			fi
		elif [[ $line =~ ^1\.\.([0-9]+)$ ]]; then
			plan=${BASH_REMATCH[1]}
		elif [[ $line =~ ^#\ sdk-test\.mjs\ exited\ with\ status\ ([0-9]+)$ ]]; then
			st=${BASH_REMATCH[1]}
		elif [[ $line == "#"* || $line == "Bail out!"* ]]; then
			echo "$line"
		fi
	done <"$1"
	if [ -z "$plan" ] || [ "$seen" != "$plan" ] || { [ "$st" != 0 ] && [ "$bad" = 0 ]; }; then
		fail=$((fail + 1))
		failed_names+=("sdk: sdk-test.mjs ran to its end")
		printf 'not ok %d - sdk: sdk-test.mjs ran to its end: %s of %s results, exit status %s%s\n' $((pass + fail)) \
			"$seen" "${plan:-?}" "${st:-?}" "$([ "$st" = 124 ] || [ "$st" = 137 ] && echo " (timed out)")"
	fi
	if [ "$bad" != 0 ] || [ "$st" != 0 ]; then
		echo "#   sdk-test.mjs's stderr (the SDK logs socket errors there), last lines:"
		tail -n 15 "$sdk/node.err" | sed -e 's/^/#     /'
		echo "#   kilnd log: $(tail -n 8 "$sdk/kilnd.log" | tr '\n' '|')"
	fi
}

on_test_failure() { echo "#   kilnd log: $(tail -n 8 "$sdk/kilnd.log" | tr '\n' '|')"; }

if [ ! -d "$sdk_dir/node_modules/@deno/sandbox" ] || ! command -v node >/dev/null; then
	run "sdk: the @deno/sandbox SDK and node are installed" 0 '^never$' \
		echo "tests/sdk/node_modules or node is missing: run make deps-test (npm ci in tests/sdk) on a machine with network; the nested host has none"
	return 0
fi

# Sandboxes may commit (MemTotal - reserve) x --mem-overcommit: read the
# first factor from a kilnd at 1, then start the real one at sdk_cap_mb.
rm -rf "$sdk/kd" "$sdk/kilnd.log"
sdk_base_mb=
if sdk_start --mem-overcommit 1 >"$sdk/start.out"; then
	sdk_base_mb=$(sdk_api GET /v1/node | jq -r '.capacity_mb // empty')
	sdk_stop >>"$sdk/start.out"
fi
if [ -z "$sdk_base_mb" ] || ! sdk_start --mem-overcommit "$(awk -v b="$sdk_base_mb" -v c="$sdk_cap_mb" 'BEGIN { print (c + 0.5) / b }')" \
	>>"$sdk/start.out"; then
	run "sdk: kilnd starts with a unix socket, TCP and $sdk_cap_mb MiB for sandboxes" 0 '^never$' \
		cat "$sdk/start.out" "$sdk/kilnd.log"
	sdk_stop >/dev/null
	rm -rf "$sdk/kd"
	return 0
fi

sdk_tok=$(sdk_api POST /v1/tokens | jq -r '.token // empty')
IFS=, read -r -a sdk_only <<<"${KILN_SDK_ONLY:-}"
sdk_deadline=${KILN_SDK_DEADLINE:-1200}
echo "# sdk: kilnd on 127.0.0.1:$sdk_port with $(sdk_api GET /v1/node | jq -r .capacity_mb) MiB for sandboxes"
# The cleanup check may take 5 minutes after the deadline. A FIFO, not <(...):
# the nested host has no /dev/fd.
rm -f "$sdk/tap"
mkfifo "$sdk/tap"
(cd "$sdk_dir" && DENO_SANDBOX_ENDPOINT=http://127.0.0.1:$sdk_port DENO_DEPLOY_ENDPOINT=http://127.0.0.1:$sdk_port \
	DENO_DEPLOY_TOKEN=$sdk_tok SDK_TEST_DEADLINE=$sdk_deadline KILN_SDK_CA=$sdk/kd/ca/ca.crt KILN_SDK_SSH_PORT=18022 \
	timeout -k 10 $((sdk_deadline + 420)) node sdk-test.mjs ${sdk_only[@]+"${sdk_only[@]}"} </dev/null 2>"$sdk/node.err"
	echo "# sdk-test.mjs exited with status $?") >"$sdk/tap" &
sdk_tap "$sdk/tap"
wait $!
rm -f "$sdk/tap"

# The README's example, verbatim (tests/sdk/readme-example.mjs): each line it
# prints, checked, and nothing left running after its kill().
run "sdk: the README's example runs unmodified with only the three DENO_ variables set" 0 \
	'^id=yes uname=Linux user=app deno=yes eval=yes extend=yes list=yes left=0$' \
	bash -c 'cd "$1" && o=$(DENO_SANDBOX_ENDPOINT=http://127.0.0.1:$sdk_port DENO_DEPLOY_ENDPOINT=http://127.0.0.1:$sdk_port \
	             DENO_DEPLOY_TOKEN=$2 timeout 300 node readme-example.mjs 2>&1); echo "$o" >"$sdk/readme.out"
	         y() { grep -Eq -- "$1" <<<"$o" && echo yes || echo no; }
	         left=$(curl -s --unix-socket "$sdk_sock" "http://kd/v1/sandboxes?label=agent=a1" | jq ".sandboxes | length")
	         echo "id=$(y "^sbx_[a-z]{3}_[0-9a-hjkmnp-z]{20}$") uname=$(grep -m1 -x Linux <<<"$o") user=$(grep -m1 -x app <<<"$o")" \
	              "deno=$(y "^hi from deno 2\.") eval=$(y "^\[ 2, 4, 6 \]$") extend=$(y "^20[0-9]{2}-[0-9]{2}-[0-9]{2}T") list=$(y "agent: .a1.")" \
	              "left=$left"' sdk "$sdk_dir" "$sdk_tok"

run "sdk: kilnd's RSS after the hostile clients is under 300 MiB, and it still answers GET /v1/node" 0 \
	'^rss=[0-9]+ MiB under 300, node unix=200 tcp=200$' \
	bash -c 'p=$(cat "$sdk/kilnd.pid"); r=$(awk "/^VmRSS:/ {print int(\$2 / 1024)}" /proc/$p/status 2>/dev/null)
	         u=$(curl -s -o /dev/null -w "%{http_code}" --max-time 20 --unix-socket "$sdk_sock" http://kd/v1/node)
	         t=$(curl -s -o /dev/null -w "%{http_code}" --max-time 20 -H "Authorization: Bearer $1" http://127.0.0.1:$sdk_port/v1/node)
	         [ -n "$r" ] && [ "$r" -lt 300 ] && w="under 300" || w="NOT under 300"
	         echo "rss=${r:-gone} MiB $w, node unix=$u tcp=$t"' sdk "$sdk_tok"

sdk_stop >/dev/null
if grep -q "ERROR: AddressSanitizer\|ERROR: LeakSanitizer\|runtime error" "$sdk/kilnd.log"; then
	run "sdk: kilnd's sanitizers are quiet" 0 '^never$' grep -A20 "Sanitizer\|runtime error" "$sdk/kilnd.log"
fi
# The nested host's disk is a tmpfs: leave no VMM, template or layer of this kilnd behind.
pkill -9 -f "kiln-vmm .*$sdk/kd/" 2>/dev/null
sleep 0.5
rm -rf "$sdk/kd"
