#!/bin/sh
# /init of the throwaway nested KVM host built by kvm-host.sh.
#
# Runs as PID 1 under busybox inside a TCG-emulated AMD EPYC (+svm,+npt)
# QEMU guest.  It is never run on the dev machine itself.
#
# Channels (see kvm-host.sh):
#   /dev/console (ttyS0)      kernel + init diagnostics -> console.log on the host
#   virtio port "kiln.msg"    one-line harness messages -> kvm-host.sh stderr
#   virtio port "kiln.out"    CMD's stdout+stderr, byte-exact -> kvm-host.sh stdout
#   9p "kilnctl" (rw)         job script from the host, exit status back to it
#   9p "hostroot" (ro)        the dev machine's /, used as overlay lower layer
#   9p "kilncwd" (rw)         the caller's working directory, mounted at the same path

PATH=/bin
export PATH

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/null >/dev/console 2>&1

uptime_s() { read -r up _ </proc/uptime && echo "$up"; }

exec 3>/dev/null # kiln.msg port once found (a virtio port can be open only once)

log() { echo "kiln-init: [$(uptime_s)] $*"; }
msg() { echo "$*" >&3; log "$*"; }
fail() {
	msg "error: $*"
	sync
	poweroff -f
	reboot -f
	exit 1
}


log "init started"

# --- modules ---------------------------------------------------------------
# Load order (dependencies first) was computed with modinfo at build time.
# Lines are "name required|optional".
while read -r mod need; do
	[ -n "$mod" ] || continue
	[ -d "/sys/module/$mod" ] && continue
	if ! err=$(insmod "/lib/modules/kiln/$mod.ko" 2>&1); then
		log "insmod $mod failed: $err"
		if [ "$need" = required ]; then
			eval "insmod_err_$mod=\$err"
		fi
	fi
done </lib/modules/kiln/order

log "modules loaded"

# --- message channel -------------------------------------------------------
port_dev() {
	for d in /sys/class/virtio-ports/*; do
		[ -r "$d/name" ] || continue
		n=$(cat "$d/name" 2>/dev/null)
		if [ "$n" = "$1" ] && [ -c "/dev/${d##*/}" ]; then
			echo "/dev/${d##*/}"
			return 0
		fi
	done
	return 1
}

wait_port() {
	i=0
	while [ $i -lt 100 ]; do
		port_dev "$1" && return 0
		sleep 0.05
		i=$((i + 1))
	done
	return 1
}

if p=$(wait_port kiln.msg); then
	exec 3>"$p"
else
	fail "virtio port kiln.msg did not appear (virtio_console loaded: $([ -d /sys/module/virtio_console ] && echo yes || echo no))"
fi
outdev=$(wait_port kiln.out) || fail "virtio port kiln.out did not appear"

# --- /dev/kvm --------------------------------------------------------------
i=0
[ -d /sys/module/kvm_amd ] || i=100 # kvm_amd did not load: nothing to wait for
while [ ! -c /dev/kvm ] && [ $i -lt 50 ]; do
	sleep 0.1
	i=$((i + 1))
done
if [ ! -c /dev/kvm ]; then
	# shellcheck disable=SC2154 # set via eval above
	fail "/dev/kvm did not appear (kvm_amd: ${insmod_err_kvm_amd:-loaded}; kvm: ${insmod_err_kvm:-loaded}; cpu flags: $(grep -o -w -e svm -e npt /proc/cpuinfo | sort -u | tr '\n' ' '))"
fi
echo "ready $(uptime_s)" >&3

# --- filesystems -------------------------------------------------------------
P9="trans=virtio,version=9p2000.L,msize=512000"
mount -t 9p -o "$P9,cache=none" kilnctl /ctl ||
	fail "cannot mount the 9p control share (9p: ${insmod_err_9p:-loaded}; 9pnet_virtio: ${insmod_err_9pnet_virtio:-loaded})"
IFS= read -r cwd </ctl/cwd || fail "no cwd in control share"

mount -t 9p -o "ro,$P9,cache=loose" hostroot /lower ||
	fail "cannot mount the dev machine's root filesystem over 9p"

# Writable view of the dev machine's root: overlay with a tmpfs upper layer,
# so writes outside the shared cwd succeed but are discarded.  Fall back to
# the plain read-only share if overlayfs refuses.
mount -t tmpfs -o mode=0755 tmpfs /upper
mkdir -p /upper/u /upper/w
if ! mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w overlay /newroot; then
	log "overlayfs failed; the root filesystem is read-only"
	mount --bind /lower /newroot
fi

log "root mounted"
R=/newroot
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm
mount -t tmpfs -o mode=1777 tmpfs $R/tmp
mount -t tmpfs -o mode=0755 tmpfs $R/run
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup 2>/dev/null || true
mkdir -p $R/run/kiln
mount --bind /ctl $R/run/kiln

if [ "$cwd" != / ]; then
	mkdir -p "$R$cwd" || fail "cannot create $cwd inside the nested host"
	mount -t 9p -o "$P9,cache=mmap" kilncwd "$R$cwd" ||
		fail "cannot mount the working directory share at $cwd"
fi

# Let the kernel autoload modules (nft_*, bridge, ...) with the dev machine's
# own modprobe and /lib/modules, and preload the ones whose use does not
# trigger autoloading (e.g. /dev/net/tun only exists once tun is loaded).
echo /bin/kiln-modprobe >/proc/sys/kernel/modprobe
chroot $R /sbin/modprobe -a -q tun veth nf_tables ext4 loop 2>/dev/null ||
	log "modprobe tun veth nf_tables ext4 loop: some failed"
log "extra modules loaded"
ip link set lo up 2>/dev/null || true

# --- network (kvm-host.sh --forward) ---------------------------------------------
# QEMU user networking with restrict=on: connections come in only through
# its hostfwd rules and nothing goes out, so a static address and no gateway.
if [ -s /ctl/net ]; then
	read -r netaddr </ctl/net
	chroot $R /sbin/modprobe -q virtio_net 2>/dev/null || log "modprobe virtio_net failed"
	nic='' i=0
	while [ -z "$nic" ] && [ $i -lt 50 ]; do
		for d in /sys/class/net/*; do
			case $(readlink "$d/device/driver" 2>/dev/null) in
			*/virtio_net) nic=${d##*/}; break ;;
			esac
		done
		[ -n "$nic" ] || sleep 0.1
		i=$((i + 1))
	done
	[ -n "$nic" ] || fail "the forwarding NIC did not appear (virtio_net: $([ -d /sys/module/virtio_net ] && echo loaded || echo not loaded))"
	if ! ip addr add "$netaddr" dev "$nic" || ! ip link set "$nic" up; then
		fail "cannot configure $nic as $netaddr"
	fi
	log "$nic is $netaddr"
fi

# --- run CMD -------------------------------------------------------------------
log "running job (cwd $cwd)"
env -i chroot $R /bin/sh /run/kiln/job </dev/null >"$outdev" 2>&1
rc=$?
log "job exited with status $rc"

echo "$rc" >/ctl/status.tmp && mv /ctl/status.tmp /ctl/status
sync
[ "$cwd" != / ] && umount "$R$cwd"
umount /ctl/ 2>/dev/null
poweroff -f
reboot -f
