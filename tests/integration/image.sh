# The Debian base image (make image) booted by kiln-vmm: the read-only image
# and a sparse writable layer joined by the init's overlay root, the agent
# staying PID 1 and running commands as app in /home/app. One guest serves
# the userland checks; a template of it and two clones show that layers stay
# apart through snapshots; a small layer fills up; broken images are refused.
# shellcheck shell=bash

# The image's behaviour does not depend on the VMM build; once is enough.
if [[ $vmm == */asan/* ]]; then
	echo "# image: run with the first kiln-vmm only"
	return 0
fi

img=$(readlink -f "$guest/debian.ext4")
if [ ! -f "$img" ]; then
	run "image: the Debian image is built (make image)" 0 '^built$' bash -c "echo 'no $guest/debian.ext4'"
	return 0
fi
kiln=${KILN_CLI:-$root/build/kiln}
isock=$work/img.sock
root_args="kiln.agent kiln.root=/dev/vda:/dev/vdb kiln.user=app"
export img isock kiln root_args work vmm

# mklayer FILE SIZE: a sparse, empty ext4 writable layer, as kilnd makes one.
mklayer() {
	rm -f "$1" && truncate -s "$2" "$1" &&
		mke2fs -q -t ext4 -O ^has_journal,^resize_inode -m 0 -E lazy_itable_init=1,nodiscard "$1"
}
# "${ki[@]}" -- CMD...: run CMD in the shared Debian guest.
ki=("$kiln" exec --uds "$isock" --connect-timeout 300)
export -f mklayer

mklayer "$work/layer0.img" 10G
"$vmm" --timeout 900 --mem 1024 --console "$work/img-console" --disk "$img,ro" --disk "$work/layer0.img" \
	--vsock "cid=3,uds=$isock" --cmdline "$root_args" </dev/null &
img_vmm=$!
img_told=
on_test_failure() {
	[ -z "$img_told" ] && ! kill -0 "$img_vmm" 2>/dev/null || return 0
	img_told=1
	echo "#   the Debian guest is gone; the last lines of its console:"
	tail -n 25 "$work/img-console" 2>/dev/null | sed -e 's/^/#   | /'
}

run "image: bash runs commands, as app (uid 1000) in /home/app, LANG C.UTF-8 (first call waits for boot)" 0 \
	'^5\.[0-9.]+.* app 1000 /home/app /home/app C\.UTF-8$' \
	"${ki[@]}" -- bash -c 'echo "$BASH_VERSION $USER $(id -u) $PWD $HOME $LANG"'
run "image: python3 -c 'print(1+1)'" 0 '^2$' "${ki[@]}" -- python3 -c 'print(1+1)'
run "image: git init in the home directory" 0 'Initialized empty Git repository in /home/app/r/' \
	"${ki[@]}" -- git init r
run "image: deno eval (the pinned npm build, on PATH)" 0 '^2$' "${ki[@]}" -- deno eval 'console.log(1+1)'
run "image: sudo -n id -u as app gives 0, with no warning about the hostname" 0 '^\[0\]$' \
	"${ki[@]}" -- bash -c 'echo "[$(sudo -n id -u 2>&1)]"'
run "image: curl --version" 0 '^curl 7\.' "${ki[@]}" -- curl --version
run "image: dpkg -l lists the installed packages" 0 '^[0-9]{3,}$' "${ki[@]}" -- bash -c 'dpkg -l | grep -c "^ii"'
run "image: app's groups do not include root's" 0 '^1000$' "${ki[@]}" -- id -G
run "image: the root is the overlay, 10 GiB of writable layer, and the image's parts are out of sight" 0 \
	'^overlay 10[0-9]{6} absent$' \
	"${ki[@]}" -- bash -c 'echo "$(stat -f -c %T / | sed s/overlayfs/overlay/) $(df --output=size -k / | tail -1 | tr -d " ") $(test -e /.kiln && echo present || echo absent)"'
run "image: writes anywhere (/usr, /etc, /) land in the layer" 0 '^usr etc root$' \
	"${ki[@]}" -- bash -c 'echo usr | sudo tee /usr/kiln-w >/dev/null && echo etc | sudo tee /etc/kiln-w >/dev/null &&
	               echo root | sudo tee /kiln-w >/dev/null && sync && echo $(cat /usr/kiln-w /etc/kiln-w /kiln-w)'

# A template of a booted Debian guest, and two clones restored from it.
tdir=$work/img-tmpl
run "image: a Debian guest snapshots as a template (the layer copied in, the image left out)" 0 '^snapshotted disk[0-9]+$' \
	bash -c 'mklayer "$work/layer-t.img" 10G &&
	         "$vmm" --timeout 600 --mem 1024 --console none --disk "$img,ro" --disk "$work/layer-t.img" \
	           --vsock "cid=3,uds=$work/t.sock" --cmdline "$root_args" --template "$work/img-tmpl" &&
	         echo "snapshotted $(cd "$work/img-tmpl" && ls disk*.img | sed s/.img//)"'
for c in a b; do
	"$vmm" --timeout 600 --restore "$tdir" --disk "$img,ro" --vsock "cid=3,uds=$work/clone-$c.sock" \
		--console none </dev/null &
	eval "clone_$c=\$!"
done
run "image: each clone writes its own layer; the other does not see it" 0 '^a: mine b: absent$' \
	bash -c '"$kiln" exec --uds "$work/clone-a.sock" --connect-timeout 300 -- bash -c "echo mine >/home/app/f && sudo cp /home/app/f /etc/f" &&
	         a=$("$kiln" exec --uds "$work/clone-a.sock" -- cat /etc/f) &&
	         b=$("$kiln" exec --uds "$work/clone-b.sock" --connect-timeout 300 -- bash -c "cat /etc/f /home/app/f 2>/dev/null || echo absent") &&
	         echo "a: $a b: $b"'
run "image: a clone runs as app with the template's environment" 0 '^app /home/app C\.UTF-8$' \
	"$kiln" exec --uds "$work/clone-b.sock" -- bash -c 'echo "$(id -un) $PWD $LANG"'
kill "$clone_a" "$clone_b" 2>/dev/null
wait "$clone_a" "$clone_b" 2>/dev/null

run "image: a full layer gives ENOSPC in the guest; the host's file stays at its size" 0 \
	'No space left on device.*host: 67108864 bytes, at most [0-9]+ KiB used' \
	bash -c 'mklayer "$work/small.img" 64M &&
	         "$vmm" --timeout 300 --mem 1024 --console none --disk "$img,ro" --disk "$work/small.img" \
	           --vsock "cid=3,uds=$work/small.sock" --cmdline "$root_args" </dev/null & p=$!
	         e=$("$kiln" exec --uds "$work/small.sock" --connect-timeout 300 -- bash -c "dd if=/dev/zero of=big bs=1M count=100 2>&1 | grep -m1 -o \"No space left on device\"; rm -f big")
	         kill $p; wait $p 2>/dev/null
	         echo "$e; host: $(stat -c %s "$work/small.img") bytes, at most $(($(stat -c %b "$work/small.img") / 2)) KiB used"'

run "image: a truncated image is refused at boot, naming the disk" 125 \
	'kiln-init: the image on /dev/vda will not mount' \
	bash -c 'head -c 64M "$img" >"$work/trunc.ext4" && mklayer "$work/l2.img" 1G &&
	         "$vmm" --timeout 300 --mem 1024 --disk "$work/trunc.ext4,ro" --disk "$work/l2.img" \
	           --cmdline "kiln.root=/dev/vda:/dev/vdb" -- true'
run "image: a damaged image (no superblock) is refused at boot" 125 'kiln-init: the image on /dev/vda will not mount' \
	bash -c 'cp "$work/trunc.ext4" "$work/bad.ext4" && dd if=/dev/zero of="$work/bad.ext4" bs=1024 seek=1 count=1 conv=notrunc 2>/dev/null &&
	         "$vmm" --timeout 300 --mem 1024 --disk "$work/bad.ext4,ro" --disk "$work/l2.img" \
	           --cmdline "kiln.root=/dev/vda:/dev/vdb" -- true'
run "image: a layer that is not ext4 is refused at boot" 125 'kiln-init: the writable layer on /dev/vdb will not mount' \
	bash -c 'truncate -s 64M "$work/raw.img" &&
	         "$vmm" --timeout 300 --mem 1024 --disk "$img,ro" --disk "$work/raw.img" \
	           --cmdline "kiln.root=/dev/vda:/dev/vdb" -- true'
rm -f "$work"/trunc.ext4 "$work"/bad.ext4 "$work"/raw.img "$work"/small.img "$work"/l2.img

"${ki[@]}" -- sudo -n poweroff >/dev/null 2>&1
kill "$img_vmm" 2>/dev/null
wait "$img_vmm" 2>/dev/null
run "image: the image is unchanged after every guest above wrote everywhere" 0 '^unchanged$' \
	bash -c 'sum=$(sha256sum <"$img" | cut -d" " -f1); want=$(cat "${img%.ext4}.sha256" 2>/dev/null || echo "$sum")
	         [ "$sum" = "$want" ] && echo unchanged || echo "changed: $sum, built as $want"'
rm -rf "$work"/layer*.img "$tdir"
