#!/usr/bin/env bash
# Build kiln's Debian base image: a root filesystem made by mmdebstrap from
# the host's own Debian release and package sources (guest/image/packages),
# deno from the npm registry (pinned and integrity-checked by
# guest/image/package-lock.json), a user `app` (uid 1000, /home/app,
# passwordless sudo), as an ext4 image, cached outside the repo under
#   ${XDG_CACHE_HOME:-~/.cache}/kiln/image-debian-<key>/rootfs.ext4
# where <key> hashes the package list, the lockfile, this script and the
# release. Prints the cache directory on stdout; progress goes to stderr.
# Needs root (mmdebstrap's root mode, mke2fs -d keeps ownership).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
img=$here/image
cache=${XDG_CACHE_HOME:-$HOME/.cache}/kiln

say() { printf 'kiln-image: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "building the image needs root (mmdebstrap in root mode keeps the files' owners)"
command -v mmdebstrap >/dev/null || die "mmdebstrap: not found (scripts/deps.sh image installs it)"
command -v mke2fs >/dev/null || die "mke2fs: not found (scripts/deps.sh image installs e2fsprogs)"
command -v npm >/dev/null || die "npm: not found (deno comes from the npm registry; install Node.js's npm)"
# shellcheck source=/dev/null
release=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ -n "$release" ] || die "/etc/os-release names no VERSION_CODENAME: which Debian release is this?"

mapfile -t pkgs < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$img/packages" | grep -v '^$')
key=$( { cat "$img/packages" "$img/package-lock.json" "$0"; echo "$release"; } | sha256sum | cut -c1-16)
out=$cache/image-debian-$key

if [ -f "$out/rootfs.ext4" ]; then
	echo "$out"
	exit 0
fi

mkdir -p "$cache"
tmp=$out.tmp
rm -rf "$tmp"
mkdir -p "$tmp/npm"
trap 'rm -rf "$tmp"' EXIT
t0=$SECONDS

say "[1/3] deno from the npm registry (as pinned in guest/image/package-lock.json)"
cp "$img/package.json" "$img/package-lock.json" "$tmp/npm/"
(cd "$tmp/npm" && npm ci --ignore-scripts --no-audit --no-fund >&2)
deno=$tmp/npm/node_modules/@deno/linux-x64-glibc/deno
[ -x "$deno" ] || die "the npm package @deno/linux-x64-glibc holds no executable deno"

say "[2/3] Debian $release with ${#pkgs[@]} packages (mmdebstrap, the host's package sources)"
# The hooks run once the packages are in: the user the Deno SDK expects,
# sudo without a password, a UTF-8 locale and deno on PATH.
mmdebstrap --mode=root --variant=minbase --include="$(IFS=,; echo "${pkgs[*]}")" \
	--customize-hook='chroot "$1" useradd --create-home --uid 1000 --user-group --shell /bin/bash app' \
	--customize-hook='echo "app ALL=(ALL) NOPASSWD:ALL" >"$1/etc/sudoers.d/app" && chmod 0440 "$1/etc/sudoers.d/app"' \
	--customize-hook='echo LANG=C.UTF-8 >"$1/etc/default/locale"' \
	--customize-hook="install -m 0755 '$deno' \"\$1/usr/local/bin/deno\"" \
	--customize-hook='echo kiln >"$1/etc/hostname"' \
	--customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
	"$release" "$tmp/root" >&2

say "[3/3] ext4 image (no journal: every sandbox mounts it read-only)"
used=$(du -sm "$tmp/root" | cut -f1)
size=$((used + used / 4 + 64))
mke2fs -q -t ext4 -O ^has_journal -m 0 -L kiln-debian -d "$tmp/root" "$tmp/rootfs.ext4" "${size}M" >&2
rm -rf "$tmp/root" "$tmp/npm"
sha256sum "$tmp/rootfs.ext4" | cut -d' ' -f1 >"$tmp/rootfs.sha256"
trap - EXIT
rm -rf "$out"
mv "$tmp" "$out"
say "built in $((SECONDS - t0)) s: $out/rootfs.ext4, ${size} MiB ($used MiB of files)"
echo "$out"
