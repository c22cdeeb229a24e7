# virtio-blk with real guests ($vmm, labelled $v): data integrity across a
# 256 MiB image, read-only disks, the end of the disk, flush durability.
# shellcheck shell=bash

if [ ! -f "$work/pattern.img" ]; then
	python3 -c '
import hashlib, sys
with open(sys.argv[1], "wb") as f:
    for i in range(256):
        block = hashlib.sha256(b"kiln-%d" % i).digest() * 32768
        f.write(block)' "$work/pattern.img"
	pattern_md5=$(md5sum <"$work/pattern.img" | cut -d" " -f1)
fi
truncate -s 0 "$work/target.img"
truncate -s 256M "$work/target.img"

run "$v: blk: guest copies a 256 MiB pattern between disks and reads it back" 0 "^$pattern_md5 target\$" \
	"$vmm" --mem 512 --disk "$work/target.img" --disk "$work/pattern.img,ro,id=pattern" -- sh -c '
	dd if=/dev/vdb of=/dev/vda bs=1M conv=fsync 2>/dev/null || exit 1
	echo 3 >/proc/sys/vm/drop_caches
	a=$(dd if=/dev/vda bs=1M iflag=direct 2>/dev/null | md5sum | cut -d" " -f1)
	b=$(dd if=/dev/vdb bs=1M iflag=direct 2>/dev/null | md5sum | cut -d" " -f1)
	[ "$a" = "$b" ] && echo "$a target"'
run "$v: blk: the host sees what the guest wrote" 0 "^$pattern_md5\$" \
	sh -c "md5sum <'$work/target.img' | cut -d' ' -f1"

run "$v: blk: disk ids, sizes and the read-only flag" 0 '^pattern 524288 1 target 524288 0$' \
	"$vmm" --disk "$work/target.img,id=target" --disk "$work/pattern.img,ro,id=pattern" -- sh -c '
	for f in vdb/serial vdb/size vdb/ro vda/serial vda/size vda/ro; do
		printf "%s " "$(cat /sys/block/$f)"; done | sed "s/ \$//"; echo'

run "$v: blk: a read-only disk refuses writes" 0 '^refused$' \
	"$vmm" --disk "$work/pattern.img,ro" -- sh -c '
	dd if=/dev/zero of=/dev/vda bs=4k count=1 oflag=direct 2>/dev/null && exit 1; echo refused'
run "$v: blk: the read-only image is unchanged" 0 "^$pattern_md5\$" \
	sh -c "md5sum <'$work/pattern.img' | cut -d' ' -f1"

run "$v: blk: nothing is read or written past the end of the disk" 0 '^0\+0 records in .*No space left on device$' \
	"$vmm" --disk "$work/target.img" -- sh -c '
	r=$(dd if=/dev/vda of=/dev/null bs=512 skip=524288 count=1 iflag=direct 2>&1 | head -1)
	w=$(dd if=/dev/zero of=/dev/vda bs=512 seek=524288 count=1 oflag=direct 2>&1 | head -1)
	echo $r $w'

# Durability: kill -9 the VMM right after the guest's flush completed.
truncate -s 0 "$work/target.img"
truncate -s 256M "$work/target.img"
blk_durable() {
	local vmm=$1 work=$2 out=$2/durable.out pid i a b
	"$vmm" --disk "$work/target.img" --disk "$work/pattern.img,ro" -- sh -c '
		dd if=/dev/vdb of=/dev/vda bs=1M count=16 2>/dev/null && sync && echo flushed && sleep 1000' \
		>"$out" 2>&1 &
	pid=$!
	for i in $(seq 1 600); do
		grep -q flushed "$out" && break
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -9 "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null
	grep -q flushed "$out" || { echo "guest never flushed:"; cat "$out"; return 1; }
	a=$(head -c 16M "$work/target.img" | md5sum)
	b=$(head -c 16M "$work/pattern.img" | md5sum)
	[ "$a" = "$b" ] && echo "survived kill -9"
}
export -f blk_durable
run "$v: blk: flushed writes survive kill -9 of the VMM" 0 '^survived kill -9$' \
	bash -c 'blk_durable "$@"' _ "$vmm" "$work"

run "$v: blk: a missing image is a clear error" 125 'kiln-vmm: --disk /nonexistent.img: No such file or directory' \
	"$vmm" --disk /nonexistent.img -- true
run "$v: blk: an image that is not whole sectors" 125 'not a positive multiple of 512' \
	sh -c "head -c 1000 /dev/zero >'$work/odd.img' && '$vmm' --disk '$work/odd.img' -- true"

# The init mounts a disk named on the kernel command line.
blk_mount() {
	local vmm=$1 work=$2
	rm -rf "$work/fsroot" && mkdir -p "$work/fsroot" && echo "hello from ext4" >"$work/fsroot/hello"
	rm -f "$work/fs.img"
	mkfs.ext4 -q -F -d "$work/fsroot" "$work/fs.img" 32M || return 1
	"$vmm" --disk "$work/fs.img" --cmdline 'kiln.mount=/dev/vda:/data' -- sh -c 'cat /data/hello && echo written >/data/new && sync' || return 1
	debugfs -R 'cat /new' "$work/fs.img" 2>/dev/null
}
export -f blk_mount
run "$v: blk: kiln.mount= mounts an ext4 disk read-write" 0 '^written$' \
	bash -c 'blk_mount "$@"' _ "$vmm" "$work"

# Issue 11: a hostile driver in the guest takes the disk from the kernel's
# driver, then each round disables its 16-entry queue and writes QueueNum=256
# while a write and a flush are in flight. The VMM must stay up, write
# nothing past the 16-entry used ring (the tool checks a canary there), and
# keep serving the guest (it prints "alive" after).
truncate -s 0 "$work/target.img"
truncate -s 16M "$work/target.img"
run "$v: blk: a driver that disables and resizes its queue during I/O gets nothing written outside the ring" 0 \
	'canary intact; alive$' \
	"$vmm" --mem 256 --disk "$work/target.img" -- sh -c '
	echo virtio-mmio.0 >/sys/bus/platform/drivers/virtio-mmio/unbind || exit 1
	r=$(kiln-hostile-queue d0000000 30) || { echo "$r"; exit 1; }
	echo "$r; alive"'
