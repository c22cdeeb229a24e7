#!/usr/bin/env bash
# run.sh - kiln's main command: kilnd in the foreground, serving its API on
# http://127.0.0.1:$KILN_PORT (default 8080), with a fresh token and two lines
# to try.  `make run` installs what is missing and builds everything first.
#
# Where /dev/kvm works on VT-x/AMD-V (tests/nested/kvm-host.sh --probe decides,
# as it does for make test), kilnd runs right here, its state kept across runs:
#   as root     state /var/lib/kiln, socket /run/kiln/kilnd.sock (the CLI's default)
#   otherwise   state ${XDG_STATE_HOME:-~/.local/state}/kiln, socket kilnd.sock in it
# Elsewhere kilnd runs in a throwaway nested KVM host under QEMU's TCG
# (tests/nested/), listening on its 10.0.2.15:PORT, which kvm-host.sh
# --forward makes this machine's 127.0.0.1:PORT (QEMU user networking with
# restrict=on: nothing in there can open a connection out).  State and socket
# are on a tmpfs in there (/tmp/kiln), so sandboxes and tokens end with it.
#
# Ctrl-C (or SIGTERM) stops kilnd, and the nested host with it.  kilnd on this
# machine leaves its sandboxes running, and its next start adopts them.
#
# Environment: KILN_PORT (default 8080), KILN_EXPOSE_PORT (exposed ports, 8443), KILN_SSH_PORT (exposeSsh: 22 where free, else 2222), KILN_STATE_DIR (the state dir where
# kilnd runs here), KILN_RUN_MEM (the nested host's MiB, default 6144).
#
# Usage: scripts/run.sh
#        scripts/run.sh --serve ADDR PORT STATE_DIR SOCKET ENDPOINT   (the part
#        that runs where kilnd runs; ENDPOINT is the URL this machine uses)
set -uo pipefail

root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
kilnd=$root/build/kilnd
kiln=$root/build/kiln
start_wait_s=300 # kilnd may build its first template before it serves

die() {
	echo "run: $*" >&2
	exit 1
}
note() { echo "run: $*" >&2; }

port_free() { # PORT: nothing bound to 127.0.0.1:PORT
	python3 -c 'import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}

# Starts kilnd, waits until its unix socket answers, makes a token there,
# prints how to reach it, and stays in the foreground until kilnd exits.
serve() { # ADDR PORT STATE_DIR SOCKET ENDPOINT
	local addr=$1 port=$2 state=$3 sock=$4 endpoint=$5
	local kpid out rc token stop='' t0=$SECONDS said=0

	((${#sock} < 108)) || die "unix socket path $sock is too long (at most 107 bytes); set KILN_STATE_DIR to a shorter path"
	(umask 077 && mkdir -p -- "$state") || die "cannot create $state (set KILN_STATE_DIR to a writable dir)"
	mkdir -p -- "$(dirname -- "$sock")" || die "cannot create the directory of $sock"
	# Exposed ports (the Deno SDK's exposeHttp) on KILN_EXPOSE_PORT: the ingress's
	# certificates come from the node CA, which kilnd has as root.
	local expose=()
	(($(id -u) == 0)) && expose=(--expose-listen "$addr:${KILN_EXPOSE_PORT:-8443}")
	# exposeSsh: users ssh to 127.0.0.1 (port 22 when it was free here).
	expose+=(--ssh-listen "$addr:${KILN_SSH_PORT:-2222}" --ssh-hostname 127.0.0.1)
	"$kilnd" --listen "unix:$sock" --listen "tcp:$addr:$port" --state-dir "$state" "${expose[@]}" &
	kpid=$!
	trap 'stop=130; kill -TERM "$kpid" 2>/dev/null' INT
	trap 'stop=143; kill -TERM "$kpid" 2>/dev/null' TERM
	trap 'stop=129; kill -TERM "$kpid" 2>/dev/null' HUP

	# the token, over the unix socket (no token needed there); 125 means
	# kilnd does not answer yet
	while :; do
		if [[ -n $stop ]] || ! kill -0 "$kpid" 2>/dev/null; then
			wait "$kpid"
			rc=$?
			[[ -n $stop ]] && exit "$stop"
			die "kilnd exited with status $rc before it served (its messages are above; KILN_STATE_DIR and KILN_PORT choose its state dir and port)"
		fi
		if [[ -S $sock ]]; then
			out=$(env -u KILN_TOKEN KILN_ENDPOINT="unix:$sock" "$kiln" token create 2>&1)
			rc=$?
			((rc == 0)) && break
			if ((rc != 125)); then
				kill -TERM "$kpid" 2>/dev/null
				wait "$kpid"
				die "kiln token create failed (status $rc): $out"
			fi
		fi
		if ((SECONDS - t0 >= start_wait_s)); then
			kill -TERM "$kpid" 2>/dev/null
			wait "$kpid"
			die "kilnd did not answer on $sock within $start_wait_s s${out:+ (last: $out)}"
		fi
		if ((!said && SECONDS - t0 >= 5)); then
			note "waiting for kilnd to answer on $sock ..."
			said=1
		fi
		sleep 0.2
	done
	token=$(grep -o 'ddo_[A-Za-z0-9_-]*' <<<"$out" | head -n 1)
	[[ -n $token ]] || { kill -TERM "$kpid"; wait "$kpid"; die "kiln token create printed no ddo_ token: $out"; }

	echo "kilnd: serving on $endpoint (token $token)"
	echo "try:  export KILN_ENDPOINT=$endpoint KILN_TOKEN=$token"
	echo "      id=\$(build/kiln create) && build/kiln exec \$id -- uname -a"
	echo "Deno Sandbox's SDK (docs/deno-sdk.md):"
	echo "      export DENO_SANDBOX_ENDPOINT=$endpoint DENO_DEPLOY_ENDPOINT=$endpoint DENO_DEPLOY_TOKEN=$token"
	if [[ ${KILN_NESTED_HOST:-} == 1 ]]; then
		echo "(kilnd runs in a nested KVM host under TCG: guests are about 10x slower and cannot reach out; its state is on a tmpfs in there; Ctrl-C stops it)"
	else
		echo "(state in $state; on this machine KILN_ENDPOINT=unix:$sock needs no token; Ctrl-C stops kilnd, which leaves its sandboxes running for its next start)"
	fi

	while :; do
		wait "$kpid"
		rc=$?
		kill -0 "$kpid" 2>/dev/null || break # else a trapped signal ended the wait
	done
	[[ -n $stop ]] && exit "$stop"
	die "kilnd exited with status $rc"
}

if [[ ${1:-} == --serve ]]; then
	(($# == 6)) || die "usage: $0 --serve ADDR PORT STATE_DIR SOCKET ENDPOINT"
	shift
	serve "$@"
fi
(($# == 0)) || die "usage: $0 (make run: KILN_PORT, KILN_STATE_DIR, KILN_RUN_MEM in the environment)"

cd -- "$root" || exit 1
port=${KILN_PORT:-8080}
if [[ ! $port =~ ^[1-9][0-9]{0,4}$ ]] || ((port > 65535)); then
	die "KILN_PORT=$port is not a port number (1-65535)"
fi
for b in "$kilnd" "$kiln" "$root/build/kiln-vmm"; do
	[[ -x $b ]] || die "${b#"$root"/} is missing: make run builds it"
done
command -v python3 >/dev/null || die "python3 not found (install python3; make run does)"
port_free "$port" || die "127.0.0.1:$port is in use (another make run or kilnd?): stop it, or pick another port with KILN_PORT=$((port == 65535 ? 8081 : port + 1)) make run"
eport=${KILN_EXPOSE_PORT:-8443}
if [[ ! $eport =~ ^[1-9][0-9]{0,4}$ ]] || ((eport > 65535)) || ((eport == port)); then
	die "KILN_EXPOSE_PORT=$eport is not a port number (1-65535) other than KILN_PORT"
fi
port_free "$eport" || die "127.0.0.1:$eport (exposed ports) is in use: stop what holds it, or pick another with KILN_EXPOSE_PORT=N make run"
export KILN_EXPOSE_PORT=$eport
# The SSH gateway (exposeSsh): 22 where this machine has it free (the SDK
# tells users "ssh USER@HOST", no port), else 2222; KILN_SSH_PORT chooses.
if [[ -z ${KILN_SSH_PORT:-} ]]; then
	if (($(id -u) == 0)) && port_free 22; then KILN_SSH_PORT=22; else KILN_SSH_PORT=2222; fi
fi
sport=$KILN_SSH_PORT
if [[ ! $sport =~ ^[1-9][0-9]{0,4}$ ]] || ((sport > 65535)) || ((sport == port || sport == eport)); then
	die "KILN_SSH_PORT=$sport is not a port number (1-65535) other than KILN_PORT and KILN_EXPOSE_PORT"
fi
port_free "$sport" || die "127.0.0.1:$sport (SSH) is in use: pick another with KILN_SSH_PORT=N make run"
export KILN_SSH_PORT=$sport

case $(tests/nested/kvm-host.sh --probe) in
direct)
	if (($(id -u) == 0)); then
		serve 127.0.0.1 "$port" "${KILN_STATE_DIR:-/var/lib/kiln}" /run/kiln/kilnd.sock "http://127.0.0.1:$port"
	else
		state=${KILN_STATE_DIR:-${XDG_STATE_HOME:-${HOME:?HOME is not set}/.local/state}/kiln}
		serve 127.0.0.1 "$port" "$state" "$state/kilnd.sock" "http://127.0.0.1:$port"
	fi
	;;
nested)
	note "no hardware KVM here: kilnd runs in a nested KVM host under QEMU's TCG, its port forwarded to 127.0.0.1:$port (tests/nested/README.md)"
	KILN_NESTED_PASSENV="${KILN_NESTED_PASSENV:-} KILN_EXPOSE_PORT KILN_SSH_PORT" \
		exec tests/nested/kvm-host.sh --timeout 0 --mem "${KILN_RUN_MEM:-6144}" --forward "$port" --forward "$eport" \
		--forward "$sport" -- \
		scripts/run.sh --serve 10.0.2.15 "$port" /tmp/kiln/state /tmp/kiln/kilnd.sock "http://127.0.0.1:$port"
	;;
*) die "tests/nested/kvm-host.sh --probe failed" ;;
esac
