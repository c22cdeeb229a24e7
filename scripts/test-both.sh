#!/usr/bin/env bash
# test-both.sh - make test's last step: the host-side tests and the
# integration tests at the same time.
#
# Usage: scripts/test-both.sh LOG HOST-TARGET... -- INTEGRATION-TARGET...
#
# Where /dev/kvm is missing the integration tests run in a nested KVM host on
# QEMU's TCG, one emulated CPU on one host thread, for the best part of an
# hour; the host-side tests (unit tests, the fuzz smoke run, the client,
# kilnd's API and CLI, the image, the sandbox network, the SSH gateway) need
# no guest. Run one after the other, the machine's second core idles through
# the nested run and the host tests add their ~9 minutes to it. Here they run
# beside it, one after another as before: their output goes to LOG, one line
# says when each is done, and on a failure the end of LOG is printed. The
# integration output streams as before. The exit status is 0 only when both
# passed.
set -u

(($# >= 3)) || { echo "usage: $0 LOG HOST-TARGET... -- INTEGRATION-TARGET..." >&2; exit 2; }
log=$1
shift
host=()
while (($#)) && [[ $1 != -- ]]; do
	host+=("$1")
	shift
done
[[ ${1:-} == -- ]] || { echo "$0: no -- before the integration targets" >&2; exit 2; }
shift
make=${MAKE:-make}

t0=$(date +%s)
mkdir -p "$(dirname "$log")"
echo "host tests (${host[*]}): running beside the integration tests, output in $log"
set -m	# the host tests in a process group of their own, to stop them whole
(
	: >"$log"
	rc=0
	for t in "${host[@]}"; do
		t1=$(date +%s)
		"$make" --no-print-directory "$t" </dev/null >>"$log" 2>&1
		rc=$?
		if ((rc != 0)); then
			echo "host tests: $t FAILED after $(($(date +%s) - t1)) s (exit $rc; the end of $log follows at the end)"
			break
		fi
		echo "host tests: $t passed in $(($(date +%s) - t1)) s"
	done
	((rc == 0)) && echo "host tests: all passed in $(($(date +%s) - t0)) s (output in $log)"
	exit $rc
) &
hpid=$!
set +m
# On ^C or a kill, the host tests stop with the integration tests.
stop_host() { kill -TERM -- "-$hpid" 2>/dev/null; }
trap 'stop_host; exit 130' INT
trap 'stop_host; exit 143' TERM
trap stop_host EXIT

"$make" --no-print-directory "$@"
irc=$?
wait "$hpid"
hrc=$?
trap - EXIT INT TERM
if ((hrc != 0)); then
	echo "---- the last 60 lines of $log ----"
	tail -n 60 "$log"
	echo "host tests: FAILED (exit $hrc)"
fi
((irc == 0)) || echo "integration tests: FAILED (exit $irc)"
((hrc == 0 && irc == 0))
