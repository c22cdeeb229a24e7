#!/usr/bin/env bash
# Install the Debian packages kiln needs to build, boot guests and run its
# tests, when any is missing. Usage: scripts/deps.sh [build|test|bench|image]
set -euo pipefail

build_pkgs=(build-essential pkg-config flex bison bc libelf-dev libssl-dev
	linux-source-6.1 busybox-static cpio check liburing-dev libcap-dev libnftnl-dev
	libsqlite3-dev)
# The network (issue 16): nftables, the egress proxy and resolver.
build_pkgs+=(libmnl-dev libevent-dev libhttp-parser-dev)
# kilnd's JSON: the create body (scheduler/sched_spec.c) and the API.
build_pkgs+=(libjansson-dev)
# kilnd's HTTP and WebSocket front, and the CLI's client of it.
build_pkgs+=(libwebsockets-dev)
# kilnd's SSH gateway (api/kilnd/kd_ssh.c): libssh's server API.
build_pkgs+=(libssh-dev)
test_pkgs=(qemu-system-x86 linux-image-amd64 kmod clang libclang-rt-14-dev util-linux python3 mount e2fsprogs iproute2
	curl jq dnsmasq-base nftables openssl)
# tests/ssh: OpenSSH's ssh, scp and sftp against the gateway, sftp-server behind it.
test_pkgs+=(openssh-client openssh-sftp-server)

# The Debian base image (guest/mkimage.sh): mmdebstrap, e2fsprogs, and npm for deno.
image_pkgs=(mmdebstrap e2fsprogs)

pkgs=("${build_pkgs[@]}")
case "${1:-build}" in
build) ;;
test|bench)
	pkgs+=("${test_pkgs[@]}")
	# npm for tests/sdk (sdk_npm below), unless one (e.g. NodeSource's nodejs) is already there.
	[ "$1" = bench ] || command -v npm >/dev/null || pkgs+=(npm) ;;
image)
	pkgs=("${image_pkgs[@]}")
	# Debian's npm, unless an npm (e.g. with NodeSource's nodejs) is already there.
	command -v npm >/dev/null || pkgs+=(npm) ;;
*) echo "usage: scripts/deps.sh [build|test|bench|image]" >&2; exit 2 ;;
esac

# make test's sdk group (tests/integration/sdk.sh) runs the @deno/sandbox SDK
# from tests/sdk/node_modules: install it here, as the nested host has no network.
sdk_npm() {
	local d
	d=$(cd "$(dirname "$0")/.." && pwd)/tests/sdk
	[ "${1:-build}" = test ] || return 0
	[ -d "$d/node_modules" ] && ! [ "$d/package-lock.json" -nt "$d/node_modules" ] && return 0
	echo "deps: npm ci in tests/sdk (@deno/sandbox for the sdk tests)" >&2
	(cd "$d" && npm ci --no-audit --no-fund >&2) || echo "deps: npm ci in tests/sdk failed: the sdk tests will fail" >&2
}

missing=()
for p in "${pkgs[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$p")
	fi
done
[ ${#missing[@]} -eq 0 ] && { sdk_npm "${1:-build}"; exit 0; }

sudo=
if [ "$(id -u)" != 0 ]; then
	if ! command -v sudo >/dev/null; then
		echo "deps: missing Debian packages: ${missing[*]} (run as root, or install sudo)" >&2
		exit 1
	fi
	sudo=sudo
fi
echo "deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q >&2
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
sdk_npm "${1:-build}"
