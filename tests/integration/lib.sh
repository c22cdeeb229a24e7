# Shared by the integration test files: sourced by run.sh, which sets up
# $work (a scratch dir), $guest (build/guest) and counts results.
# shellcheck shell=bash

guest=$root/build/guest
per_test_timeout=${KILN_TEST_TIMEOUT:-300}
pass=0
fail=0
failed_names=()
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT


# run NAME EXPECTED_STATUS PATTERN CMD...: CMD must exit EXPECTED_STATUS and
# its output (stdout+stderr) must match the extended regex PATTERN.
run() {
	local name=$1 want=$2 pattern=$3
	shift 3
	local out=$work/out t0 t1 st
	t0=$(date +%s.%N)
	timeout -k 5 "$per_test_timeout" "$@" >"$out" 2>&1 </dev/null
	st=$?
	t1=$(date +%s.%N)
	if [ "$st" = "$want" ] && grep -Eq -- "$pattern" "$out"; then
		pass=$((pass + 1))
		printf 'ok %d - %s (%.1fs)\n' $((pass + fail)) "$name" "$(echo "$t1 - $t0" | bc)"
	else
		fail=$((fail + 1))
		failed_names+=("$name")
		printf 'not ok %d - %s: exit %s (wanted %s), output:\n' $((pass + fail)) "$name" "$st" "$want"
		sed -e 's/^/#   /' "$out" | tail -n 25
		printf '#   (wanted output matching: %s)\n' "$pattern"
		# A test file may say more about a failure (e.g. a shared VM that died).
		if declare -F on_test_failure >/dev/null; then on_test_failure; fi
	fi
}

