# Shared by tests/kilnd-cli/*.sh (sourced): TAP checks and kiln runs.
# The sourcing script sets tap_name, work (a temp dir) and tap_logs (the
# logs whose sanitizer lines a failure shows), and kiln.
pass=0 fail=0

# check NAME OK DETAIL: one TAP line; on failure the detail and the logs' sanitizer lines.
check() {
	if [ "$2" = 1 ]; then
		pass=$((pass + 1)); echo "ok $((pass + fail)) - $tap_name: $1"
	else
		fail=$((fail + 1)); echo "not ok $((pass + fail)) - $tap_name: $1"
		printf '%s\n' "$3" | sed -e 's/^/#   /' | tail -n 10
		# shellcheck disable=SC2086
		grep -hE 'Sanitizer|runtime error|#[0-4] ' $tap_logs 2>/dev/null | head -n 12 | sed -e 's/^/#   /'
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

# run ARGS...: kiln's stdout in $out, stderr in $err, status in $st; stdin from $stdin or /dev/null.
run() {
	"$kiln" "$@" >"$work/out" 2>"$work/err" <"${stdin:-/dev/null}"
	st=$?
	out=$(cat "$work/out") err=$(cat "$work/err")
}
detail() { printf 'status %s\nstdout: %s\nstderr: %s\n' "$st" "$out" "$err"; }

# A free TCP port on 127.0.0.1.
free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# done_tap: the summary line; the status of the script.
done_tap() {
	echo "# $tap_name: $pass passed, $fail failed"
	[ "$fail" = 0 ]
}
