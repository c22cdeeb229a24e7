#!/usr/bin/env bash
# What issue 15 asks of the Debian base image's userland, checked on the
# image itself (not yet booted by kiln): mounted read-only with a tmpfs
# overlay, each command run in a chroot, and the image's checksum unchanged
# afterwards. Usage: tests/image/check.sh IMAGE (make test-image). Needs root.
set -uo pipefail

img=${1:?usage: tests/image/check.sh IMAGE}
[ "$(id -u)" = 0 ] || { echo "test-image: needs root (loop mount, chroot)" >&2; exit 2; }
[ -f "$img" ] || { echo "test-image: $img: no such image (make image builds it)" >&2; exit 2; }
m=$(mktemp -d /tmp/kiln-image.XXXXXX)
cleanup() {
	for d in merged/dev merged/proc merged upper lower; do mountpoint -q "$m/$d" && umount "$m/$d"; done
	rm -rf "$m"
}
trap cleanup EXIT
sum0=$(sha256sum <"$img")
mkdir -p "$m"/{lower,upper,merged}
mount -o loop,ro "$img" "$m/lower" && mount -t tmpfs tmpfs "$m/upper" && mkdir "$m/upper/u" "$m/upper/w" &&
	mount -t overlay overlay -o "lowerdir=$m/lower,upperdir=$m/upper/u,workdir=$m/upper/w" "$m/merged" &&
	mount -t proc proc "$m/merged/proc" && mount --bind /dev "$m/merged/dev" ||
	{ echo "test-image: cannot mount $img (loop devices, overlayfs)" >&2; exit 1; }

pass=0 fail=0
# check NAME PATTERN CMD: CMD (bash -c, as app in /home/app unless it says otherwise) prints PATTERN.
check() {
	local out
	out=$(chroot "$m/merged" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 \
		/bin/su -s /bin/bash app -c "cd ~ && $3" 2>&1)
	if grep -Eq -- "$2" <<<"$out"; then
		pass=$((pass + 1)); echo "ok $((pass + fail)) - image: $1"
	else
		fail=$((fail + 1)); echo "not ok $((pass + fail)) - image: $1: got: $(head -c 300 <<<"$out")"
	fi
}
check "bash is the shell" '^5\.' 'echo $BASH_VERSION'
check "python3 runs" '^2$' 'python3 -c "print(1+1)"'
check "git init works in the home directory" 'Initialized empty Git repository in /home/app/' 'git init repo'
check "deno runs (from the pinned npm package)" '^2$' 'deno eval "console.log(1+1)"'
check "app is uid 1000 in /home/app" '^1000 /home/app$' 'echo $(id -u) $PWD'
check "app has passwordless sudo" '^0$' 'sudo -n id -u 2>/dev/null'
check "curl, tar, xz, zip, ip, ping, ssh are there" '^all there$' \
	'for c in curl tar gzip xz zip unzip ip ping ssh less vi nano ps; do command -v $c >/dev/null || echo "missing $c"; done; echo all there'
check "C.UTF-8 is the locale" '^LANG=C.UTF-8$' 'cat /etc/default/locale'
check "dpkg knows its packages" '^[0-9]{3,}$' 'dpkg -l | grep -c "^ii"'
check "CA certificates are installed" '^[1-9][0-9]*$' 'ls /etc/ssl/certs | wc -l'
for d in merged/dev merged/proc merged upper lower; do umount "$m/$d"; done
if [ "$(sha256sum <"$img")" = "$sum0" ]; then
	pass=$((pass + 1)); echo "ok $((pass + fail)) - image: unchanged after the checks wrote in the overlay"
else
	fail=$((fail + 1)); echo "not ok $((pass + fail)) - image: the image changed"
fi
echo "# test-image: $pass passed, $fail failed"
[ "$fail" = 0 ]
