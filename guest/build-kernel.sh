#!/usr/bin/env bash
# Build kiln's guest kernel from Debian's linux-source-6.1 package and
# guest/kernel.config, cached outside the repo under
#   ${XDG_CACHE_HOME:-~/.cache}/kiln/kernel-<key>/{vmlinux,bzImage}
# where <key> hashes the config fragment, this script and the source version.
# Prints the cache directory on stdout; progress goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
src_tar=/usr/src/linux-source-6.1.tar.xz
cache=${XDG_CACHE_HOME:-$HOME/.cache}/kiln
jobs=$(nproc)

say() { printf 'kiln-kernel: %s\n' "$*" >&2; }

if [ ! -r "$src_tar" ]; then
	say "$src_tar: not found (install it: apt-get install linux-source-6.1)"
	exit 1
fi
src_ver=$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null || stat -c %Y "$src_tar")
key=$( { cat "$here/kernel.config" "$0"; echo "$src_ver"; } | sha256sum | cut -c1-16)
out=$cache/kernel-$key

if [ -f "$out/vmlinux" ] && [ -f "$out/bzImage" ]; then
	echo "$out"
	exit 0
fi

mkdir -p "$cache"
tree=$cache/linux-source-6.1-$src_ver
if [ ! -f "$tree/.kiln-extracted" ]; then
	say "extracting $src_tar (linux-source $src_ver)"
	rm -rf "$tree" "$tree.tmp"
	mkdir -p "$tree.tmp"
	tar -xJf "$src_tar" -C "$tree.tmp" --strip-components=1
	touch "$tree.tmp/.kiln-extracted"
	mv "$tree.tmp" "$tree"
fi

# One build tree per source version, so a config change rebuilds incrementally;
# the lock keeps two builds from sharing it at once.
build=$cache/build-linux-$src_ver
mkdir -p "$build"
exec 9>"$build.lock"
if ! flock -n 9; then
	say "waiting for another kernel build in $build"
	flock 9
	if [ -f "$out/vmlinux" ] && [ -f "$out/bzImage" ]; then
		echo "$out"
		exit 0
	fi
fi
say "configuring (tinyconfig + guest/kernel.config) in $build"
make -s -C "$tree" O="$build" tinyconfig >/dev/null
"$tree/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" "$here/kernel.config" >"$build/merge.log" 2>&1
make -s -C "$tree" O="$build" olddefconfig >/dev/null

# Every option the fragment asks for must have survived olddefconfig: a
# dependency we missed would otherwise silently drop a device.
missing=0
while IFS= read -r line; do
	case "$line" in
	CONFIG_*=n) opt=${line%=n}
		if grep -q "^$opt=" "$build/.config"; then say "$opt is set but guest/kernel.config turns it off"; missing=1; fi ;;
	CONFIG_*=*)
		if ! grep -qx "$line" "$build/.config"; then say "$line did not survive olddefconfig (a dependency is missing from guest/kernel.config)"; missing=1; fi ;;
	esac
done < "$here/kernel.config"
[ "$missing" = 0 ] || exit 1

total=$(grep -c '=y' "$build/.config")
say "building vmlinux and bzImage with $jobs jobs ($total options; log: $build/build.log)"
start=$(date +%s)
set +e
make -C "$tree" O="$build" -j"$jobs" vmlinux bzImage 2>&1 | tee "$build/build.log" |
	awk -v start="$start" '/^  (CC|AS|LD|AR)/ { n++; if (n % 100 == 0) { "date +%s" | getline now; close("date +%s"); printf "kiln-kernel: %5d objects built, %3ds\n", n, now - start > "/dev/stderr" } }'
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" != 0 ]; then
	tail -n 30 "$build/build.log" >&2
	say "build failed (full log: $build/build.log)"
	exit 1
fi
mkdir -p "$out.tmp"
cp "$build/vmlinux" "$build/arch/x86/boot/bzImage" "$build/.config" "$out.tmp/"
rm -rf "$out"
mv "$out.tmp" "$out"
say "done in $(( $(date +%s) - start ))s: $out"
echo "$out"
