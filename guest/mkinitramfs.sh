#!/usr/bin/env bash
# Build kiln's guest initramfs: the init (PID 1) and Debian's busybox-static
# with a link for every applet, as an uncompressed newc cpio (no decompression
# at boot), plus any static TOOLS in /usr/bin.
# Usage: mkinitramfs.sh INIT OUTPUT [TOOL...]
set -euo pipefail

init=${1:?usage: mkinitramfs.sh INIT OUTPUT [TOOL...]}
out=$(realpath -m "${2:?usage: mkinitramfs.sh INIT OUTPUT [TOOL...]}")
shift 2
busybox=${BUSYBOX:-/bin/busybox}

if ! "$busybox" --list-full >/dev/null 2>&1; then
	echo "mkinitramfs: $busybox: not a busybox binary (install it: apt-get install busybox-static)" >&2
	exit 1
fi
if ldd "$busybox" >/dev/null 2>&1; then
	echo "mkinitramfs: $busybox is dynamically linked (install busybox-static)" >&2
	exit 1
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,root,etc,mnt,var}
install -m 0755 "$init" "$stage/init"
install -m 0755 "$busybox" "$stage/bin/busybox"
for tool in "$@"; do
	install -m 0755 "$tool" "$stage/usr/bin/$(basename "$tool")"
done
"$busybox" --list-full | while read -r applet; do
	[ "$applet" = bin/busybox ] && continue
	up=$(dirname "$applet" | sed -e 's|[^/]*|..|g')
	ln -sf "$up/bin/busybox" "$stage/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$stage/etc/passwd"
printf 'root:x:0:\ntty:x:5:\nnogroup:x:65534:\n' >"$stage/etc/group"
printf '127.0.0.1 localhost\n127.0.1.1 kiln\n' >"$stage/etc/hosts"
chmod 1777 "$stage/tmp"

tmp="$out.tmp.$$"
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort |
	cpio --quiet -o -H newc --owner=0:0 --reproducible >"$tmp")
mv "$tmp" "$out"
