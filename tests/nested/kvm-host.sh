#!/usr/bin/env bash
# kvm-host.sh - run a command where /dev/kvm works, even on machines without it.
#
# Usage: tests/nested/kvm-host.sh [--mem MiB] [--timeout SECONDS]
#                                 [--forward HOSTPORT[:GUESTPORT]]... -- CMD [ARGS...]
#        tests/nested/kvm-host.sh --probe    (prints "direct" or "nested")
#
# If /dev/kvm can be opened read-write here and is hardware KVM (the CPU
# has vmx or svm), CMD is simply exec'd (under timeout(1), so --timeout
# means the same on both paths).  A /dev/kvm without them (e.g. PVM's
# kvm_pvm module, which runs only PVM-enabled guest kernels and stops
# kiln's with "KVM internal error") does not count.  Otherwise a
# throwaway KVM host is booted as a QEMU guest under TCG with an emulated AMD
# EPYC CPU that has SVM and nested paging (kvm_amd works inside it), the dev
# machine's root filesystem is shared into it (read-only, with a discarded
# tmpfs overlay on top), the current directory is shared read-write at the same
# path, and CMD runs there with stdin from /dev/null.  CMD's stdout+stderr
# stream to this script's stdout (carriage returns dropped); harness messages
# go to stderr; CMD's exit status becomes ours.  Harness failures exit 125
# with a one-line "kvm-host: ..." reason, a timeout exits 124 (--timeout 0:
# none).  --forward gives the nested host a NIC on QEMU user networking with
# restrict=on (10.0.2.15/24; nothing inside can open a connection out) and
# forwards this machine's 127.0.0.1:HOSTPORT to its GUESTPORT, so a server
# in there can be reached from here.  Ctrl-C or SIGTERM stops the nested
# host and exits 130 or 143.
# See tests/nested/README.md.
#
# Environment knobs (all optional):
#   KILN_NESTED_FORCE=1        boot the nested host even if /dev/kvm works here
#   KILN_NESTED_KERNEL=PATH    kernel image for the nested host (default: newest
#                              /boot/vmlinuz-*-amd64 with a /lib/modules dir)
#   KILN_NESTED_QEMU=PATH      qemu-system-x86_64 binary
#   KILN_NESTED_CPU=MODEL      -cpu for the nested host (default EPYC,+svm,+npt)
#   KILN_NESTED_BUSYBOX=PATH   static busybox (default: /bin/busybox)
#   KILN_NESTED_PASSENV="A B"  extra environment variables to pass to CMD
#   KILN_NESTED_KEEP=1         keep the per-run temp dir (console log etc.)
#   KILN_NESTED_RAW=1          pass CMD's output byte-exact (default: drop \r)
#   KILN_NESTED_PVH=0          boot the compressed bzImage instead of the
#                              extracted ELF vmlinux (PVH entry, ~3 s faster)

set -uo pipefail

PROG=kvm-host
SELF=$(readlink -f -- "${BASH_SOURCE[0]}")
HERE=$(dirname -- "$SELF")
INIT_SRC=$HERE/host-init.sh

mem=6144
timeout_s=3000

forwards=() # "HOSTPORT GUESTPORT"
probe=0

usage() {
	echo "usage: $0 [--mem MiB] [--timeout SECONDS] [--forward HOSTPORT[:GUESTPORT]]... -- CMD [ARGS...]" >&2
	echo "       $0 --probe" >&2
	exit 125
}
die() {
	echo "$PROG: $*" >&2
	exit 125
}
note() { echo "$PROG: $*" >&2; }
add_forward() { # HOSTPORT[:GUESTPORT]
	local hp=${1%%:*} gp=${1#*:} p
	[[ $1 == *:* ]] || gp=$hp
	for p in "$hp" "$gp"; do
		if [[ ! $p =~ ^[1-9][0-9]{0,4}$ ]] || ((p > 65535)); then
			die "--forward wants HOSTPORT[:GUESTPORT] with ports 1-65535, got '$1'"
		fi
	done
	forwards+=("$hp $gp")
}

while (($#)); do
	case $1 in
	--mem) (($# >= 2)) || usage; mem=$2; shift 2 ;;
	--mem=*) mem=${1#*=}; shift ;;
	--timeout) (($# >= 2)) || usage; timeout_s=$2; shift 2 ;;
	--timeout=*) timeout_s=${1#*=}; shift ;;
	--forward) (($# >= 2)) || usage; add_forward "$2"; shift 2 ;;
	--forward=*) add_forward "${1#*=}"; shift ;;
	--probe) probe=1; shift ;;
	-h | --help) usage ;;
	--) shift; break ;;
	-*) echo "$PROG: unknown option $1" >&2; usage ;;
	*) break ;;
	esac
done
(($# || probe)) || usage
[[ $mem =~ ^[1-9][0-9]*$ ]] || die "--mem wants a number of MiB, got '$mem'"
[[ $timeout_s =~ ^(0|[1-9][0-9]*)$ ]] || die "--timeout wants a number of seconds (0: no limit), got '$timeout_s'"

# --- fast path: KVM works right here -------------------------------------------
# (-c first: bash's <> would create a regular file if /dev/kvm did not exist)
# Same timeout semantics as the nested path; timeout(1) passes CMD's status on
# and says on stderr when it had to kill CMD.
# --forward has nothing to do there: CMD's ports are this machine's own.
if [[ ${KILN_NESTED_FORCE:-} != 1 && -c /dev/kvm ]] && { : <>/dev/kvm; } 2>/dev/null &&
	grep -qw -E 'vmx|svm' /proc/cpuinfo; then
	((probe)) && { echo direct; exit 0; }
	for f in "${forwards[@]}"; do
		read -r hp gp <<<"$f"
		[[ $hp == "$gp" ]] || note "note: KVM works here, so --forward $hp:$gp does nothing: CMD must listen on port $hp itself"
	done
	exec timeout --verbose --kill-after=10 "$timeout_s" "$@"
fi
((probe)) && { echo nested; exit 0; }

# --- helpers -------------------------------------------------------------------
now_us() { local t=${EPOCHREALTIME/[.,]/}; echo "$((10#$t))"; }
fmt_s() { # microseconds -> "12.3"
	local us=$1
	printf '%d.%d' $((us / 1000000)) $((us % 1000000 / 100000))
}
squote() { # quote for a POSIX shell
	local s=$1
	printf "'%s'" "${s//\'/\'\\\'\'}"
}
one_line() { # last N lines of a file as one line, control characters removed
	[[ -s $2 ]] || { echo "(none)"; return; }
	tail -n "$1" -- "$2" | LC_ALL=C tr -d '\r' | LC_ALL=C tr -c '[:print:]\n' '?' |
		sed -e 's/^[[:space:]]*//' -e '/^$/d' | paste -s -d '|' - | sed 's/|/ | /g'
}

# --- tools and kernel ----------------------------------------------------------
qemu=${KILN_NESTED_QEMU:-qemu-system-x86_64}
command -v "$qemu" >/dev/null 2>&1 ||
	die "$qemu not found (install qemu-system-x86) - needed to boot the nested KVM host"
busybox=${KILN_NESTED_BUSYBOX:-/bin/busybox}
[[ -x $busybox ]] || die "$busybox not found (install busybox-static)"
# a dynamic executable names its ELF interpreter near the start of the file
if head -c 4096 -- "$busybox" | LC_ALL=C grep -q -a -e '/lib64/ld-' -e '/lib/ld-'; then
	die "$busybox is dynamically linked; install busybox-static"
fi
for t in cpio modinfo sha256sum timeout stdbuf; do
	command -v "$t" >/dev/null 2>&1 || die "$t not found (needed to build the nested host)"
done
[[ -r $INIT_SRC ]] || die "missing $INIT_SRC"

if [[ -n ${KILN_NESTED_KERNEL:-} ]]; then
	kernel=$KILN_NESTED_KERNEL
	[[ -r $kernel ]] || die "kernel $kernel (KILN_NESTED_KERNEL) not found or unreadable"
	kver=$(basename -- "$kernel")
	kver=${kver#vmlinuz-}
else
	kver=
	while IFS= read -r k; do
		v=${k#/boot/vmlinuz-}
		if [[ -r $k && -d /lib/modules/$v ]]; then kver=$v; fi
	done < <(compgen -G '/boot/vmlinuz-*-amd64' | sort -V)
	[[ -n $kver ]] || die "no /boot/vmlinuz-*-amd64 with matching /lib/modules/<version> (install linux-image-amd64)"
	kernel=/boot/vmlinuz-$kver
fi
moddir=/lib/modules/$kver
[[ -d $moddir ]] || die "no modules for kernel $kver ($moddir missing)"

# --- initramfs (cached) ----------------------------------------------------------
# Modules in the initramfs, loaded by /init before the root share is mounted
# (dependencies resolved with modinfo).  Once the dev machine's root is mounted,
# /init preloads more with the dev machine's own modprobe (list in host-init.sh),
# and the kernel autoloads anything else through it.
required_mods=(virtio_pci virtio_console 9pnet_virtio 9p kvm_amd)
optional_mods=(overlay)

cache_dir=${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/kiln
key=$({
	echo "$kver"
	stat -L -c '%s %Y' -- "$kernel" "$busybox" "$moddir/modules.dep" 2>/dev/null
	cat -- "$SELF" "$INIT_SRC"
} | sha256sum | cut -c1-16)
initrd=$cache_dir/nested-host-$key.cpio

build_initrd() {
	declare -A mod_seen=()
	mod_order=()
	add_mod() { # name need
		local m=${1//-/_} d
		[[ -n ${mod_seen[$m]:-} ]] && return 0
		mod_seen[$m]=1
		local f
		f=$(modinfo -k "$kver" -n "$m" 2>/dev/null) || {
			[[ $2 == required ]] && die "kernel module $m not found for $kver (in $moddir)"
			return 0
		}
		[[ $f == /* ]] || return 0 # built in
		local deps
		deps=$(modinfo -k "$kver" -F depends "$m" 2>/dev/null)
		for d in ${deps//,/ }; do add_mod "$d" "$2"; done
		mod_order+=("$m $2 $f")
	}
	for m in "${required_mods[@]}"; do add_mod "$m" required; done
	for m in "${optional_mods[@]}"; do add_mod "$m" optional; done

	mkdir -p -- "$cache_dir" || die "cannot create $cache_dir"
	local stage out
	stage=$(mktemp -d "$cache_dir/.stage.XXXXXX") || die "mktemp failed in $cache_dir"
	out=$(mktemp "$cache_dir/.nested-host.XXXXXX") || { rm -rf -- "$stage"; die "mktemp failed"; }
	(
		set -e
		cd -- "$stage"
		mkdir -p bin dev proc sys tmp ctl lower upper newroot lib/modules/kiln
		cp -- "$busybox" bin/busybox
		for a in $(bin/busybox --list); do
			[[ $a == busybox ]] || ln -s busybox "bin/$a"
		done
		install -m 0755 -- "$INIT_SRC" init
		printf '#!/bin/sh\nexec /bin/chroot /newroot /sbin/modprobe "$@"\n' >bin/kiln-modprobe
		chmod 0755 bin/kiln-modprobe
		: >lib/modules/kiln/order
		local line name need f
		for line in "${mod_order[@]}"; do
			read -r name need f <<<"$line"
			case $f in
			*.ko) cp -- "$f" "lib/modules/kiln/$name.ko" ;;
			*.ko.xz) xz -dc -- "$f" >"lib/modules/kiln/$name.ko" ;;
			*.ko.zst) zstd -q -dc -- "$f" >"lib/modules/kiln/$name.ko" ;;
			*.ko.gz) gzip -dc -- "$f" >"lib/modules/kiln/$name.ko" ;;
			*) echo "unsupported module file $f" >&2; exit 1 ;;
			esac
			echo "$name $need" >>lib/modules/kiln/order
		done
		find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 >"$out"
	) || { rm -rf -- "$stage" "$out"; die "building the nested host initramfs failed"; }
	rm -rf -- "$stage"
	chmod 0644 -- "$out"
	mv -f -- "$out" "$initrd" || die "cannot install $initrd"
	# drop initramfs images of older script versions and leftovers of
	# interrupted builds
	find "$cache_dir" -maxdepth 1 -type f \( \( -name 'nested-host-*.cpio' ! -name "${initrd##*/}" -mmin +10 \) \
		-o \( \( -name '.nested-host.*' -o -name '.vmlinux.*' \) -mmin +60 \) \) -delete 2>/dev/null
	find "$cache_dir" -maxdepth 1 -name '.stage.*' -mmin +60 -exec rm -rf -- {} + 2>/dev/null
}
[[ -s $initrd ]] || build_initrd

# The kernel decompressing itself under TCG costs ~3 s per boot.  If the kernel
# supports the PVH entry point, boot the uncompressed ELF (cached) instead.
extract_vmlinux() { # bzImage output
	local k=$1 out=$2 ss po pl start magic size
	local -a dec
	[[ $(od -An -tx1 -j $((0x202)) -N4 -- "$k" | tr -d ' \n') == 48647253 ]] || return 1 # "HdrS"
	ss=$(od -An -tu1 -j $((0x1f1)) -N1 -- "$k" | tr -d ' ')
	((ss)) || ss=4
	po=$(od -An -tu4 -j $((0x248)) -N4 -- "$k" | tr -d ' ')
	pl=$(od -An -tu4 -j $((0x24c)) -N4 -- "$k" | tr -d ' ')
	start=$(((ss + 1) * 512 + po))
	magic=$(tail -c +$((start + 1)) -- "$k" | head -c 6 | od -An -tx1 | tr -d ' \n')
	case $magic in
	fd377a585a00) dec=(xz -dc) ;;
	1f8b*) dec=(gzip -dc) ;;
	28b52ffd*) dec=(zstd -q -dc) ;;
	*) return 1 ;;
	esac
	command -v "${dec[0]}" >/dev/null 2>&1 || return 1
	# the kernel build appends the uncompressed size (u32 LE) to the payload
	size=$(tail -c +$((start + pl - 3)) -- "$k" | head -c 4 | od -An -tu4 | tr -d ' ')
	# (the decompressor complains about that trailer; the size check below decides)
	tail -c +$((start + 1)) -- "$k" | head -c "$pl" | "${dec[@]}" >"$out" 2>/dev/null
	[[ $(stat -c %s -- "$out") == "$size" && $(head -c 4 -- "$out" | od -An -tx1 | tr -d ' \n') == 7f454c46 ]]
}
boot_kernel=$kernel
if [[ ${KILN_NESTED_PVH:-1} == 1 ]] && grep -q -x 'CONFIG_PVH=y' "/boot/config-$kver" 2>/dev/null; then
	vmlinux=$cache_dir/vmlinux-$kver-$(stat -L -c '%s-%Y' -- "$kernel")
	if [[ ! -s $vmlinux ]]; then
		mkdir -p -- "$cache_dir" || die "cannot create $cache_dir"
		t=$(mktemp "$cache_dir/.vmlinux.XXXXXX") || die "mktemp failed in $cache_dir"
		if extract_vmlinux "$kernel" "$t"; then
			chmod 0644 -- "$t"
			mv -f -- "$t" "$vmlinux"
			# older extractions of this kernel version
			find "$cache_dir" -maxdepth 1 -name "vmlinux-$kver-*" ! -name "${vmlinux##*/}" -delete 2>/dev/null
		else
			rm -f -- "$t"
			note "note: cannot extract an ELF vmlinux from $kernel; booting the compressed image (slower)"
		fi
	fi
	[[ -s $vmlinux ]] && boot_kernel=$vmlinux
fi

# --- per-run state -----------------------------------------------------------------
# physical path: symlinks in $PWD would resolve differently inside
cwd=$(pwd -P)
[[ $cwd == /* && $cwd != *$'\n'* ]] ||
	die "cannot share working directory '$cwd' into the nested host (newline in path)"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/kiln-nested.XXXXXX") || die "mktemp failed"
mkdir "$tmp/ctl"
tpid='' outpid='' msgpid=''

# shellcheck disable=SC2317 # invoked by trap
cleanup() {
	local p
	for p in $tpid; do kill -TERM "$p" 2>/dev/null; done
	if [[ -s $tmp/qemu.pid ]]; then
		p=$(<"$tmp/qemu.pid")
		# only if that pid is still our QEMU (it removes the pidfile on clean exit)
		if [[ $p =~ ^[0-9]+$ ]] && grep -q -a -F -- "$tmp/ctl" "/proc/$p/cmdline" 2>/dev/null; then
			kill -KILL "$p" 2>/dev/null
		fi
	fi
	# unblock fifo readers that never saw a writer, then reap them
	for f in "$tmp/out.fifo" "$tmp/msg.fifo"; do [[ -p $f ]] && : 1<>"$f"; done
	for p in $outpid $msgpid $tpid; do wait "$p" 2>/dev/null; done
	if [[ ${KILN_NESTED_KEEP:-} == 1 ]]; then
		note "kept $tmp"
	else
		rm -rf -- "$tmp"
	fi
}
trap cleanup EXIT
trap 'note "interrupted"; exit 130' INT
trap 'note "terminated"; exit 143' TERM
trap 'note "hangup"; exit 129' HUP

# Job script, run by the dev machine's /bin/sh inside the nested host.
{
	echo "# generated by kvm-host.sh"
	while IFS= read -r v; do
		case $v in
		PATH | KILN_* | CI* | LANG | LC_* | TZ | CC | CFLAGS | CPPFLAGS | LDFLAGS) ;;
		*) [[ " ${KILN_NESTED_PASSENV:-} " == *" $v "* ]] || continue ;;
		esac
		[[ $v == KILN_NESTED_* || ! $v =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] && continue
		printf 'export %s=%s\n' "$v" "$(squote "${!v}")"
	done < <(compgen -e)
	# KILN_NESTED_HOST tells benchmarks they run in the emulated host.
	echo "export HOME=/root TERM=dumb KILN_NESTED_HOST=1"
	printf 'cd %s || exit 125\n' "$(squote "$cwd")"
	echo "unset OLDPWD"
	printf 'exec'
	for a in "$@"; do printf ' %s' "$(squote "$a")"; done
	echo
} >"$tmp/ctl/job"
printf '%s\n' "$cwd" >"$tmp/ctl/cwd"
net=()
if ((${#forwards[@]})); then
	# restrict=on: the nested host can open no connection anywhere (not even
	# to this machine); only the hostfwd rules below reach it, from here.
	fwd=
	for f in "${forwards[@]}"; do
		read -r hp gp <<<"$f"
		fwd+=",hostfwd=tcp:127.0.0.1:$hp-:$gp"
	done
	net=(-netdev "user,id=n0,restrict=on$fwd" -device 'virtio-net-pci,netdev=n0,romfile=')
	# /init configures the NIC statically when this file is there
	echo 10.0.2.15/24 >"$tmp/ctl/net"
fi
[[ $cwd == / ]] && note "warning: cwd is /; writes will not reach the dev machine"

mkfifo "$tmp/out.fifo" "$tmp/msg.fifo" || die "mkfifo failed in $tmp"

cpu=${KILN_NESTED_CPU:-EPYC,+svm,+npt}
note "booting nested KVM host (TCG, -cpu $cpu, ${mem} MiB, kernel $kver) ..."
t0=$(now_us)

# CMD output to our stdout, unbuffered.  Carriage returns are dropped (serial
# consoles of guests started by CMD emit CRLF) unless KILN_NESTED_RAW=1 asks
# for a byte-exact copy.
if [[ ${KILN_NESTED_RAW:-} == 1 ]]; then
	cat -- "$tmp/out.fifo" &
else
	stdbuf -o0 tr -d '\r' <"$tmp/out.fifo" &
fi
outpid=$!
# Harness messages from /init.
(
	while IFS= read -r line; do
		printf '%s\n' "$line" >>"$tmp/msg.log"
		case $line in
		ready*)
			read -r _ up _ <<<"$line"
			note "/dev/kvm ready after $(fmt_s $(($(now_us) - t0))) s (host uptime ${up} s)"
			;;
		error:*) ;; # reported once, at the end
		*) note "$line" ;;
		esac
	done <"$tmp/msg.fifo"
) &
msgpid=$!

# (QEMU option values escape ',' as ',,')
p9=(-fsdev "local,id=fsroot,path=/,security_model=none,readonly=on,multidevs=remap"
	-device "virtio-9p-pci,fsdev=fsroot,mount_tag=hostroot"
	-fsdev "local,id=fsctl,path=${tmp//,/,,}/ctl,security_model=none"
	-device "virtio-9p-pci,fsdev=fsctl,mount_tag=kilnctl")
if [[ $cwd != / ]]; then
	p9+=(-fsdev "local,id=fscwd,path=${cwd//,/,,},security_model=none,multidevs=remap"
		-device "virtio-9p-pci,fsdev=fscwd,mount_tag=kilncwd")
fi

timeout --kill-after=10 "$timeout_s" \
	"$qemu" -M q35 -accel tcg -cpu "$cpu" -smp 1 -m "$mem" \
	-nodefaults -no-user-config -display none -vga none -monitor none -parallel none \
	-no-reboot -pidfile "$tmp/qemu.pid" \
	-kernel "$boot_kernel" -initrd "$initrd" \
	-append "console=ttyS0 quiet loglevel=3 panic=-1 oops=panic" \
	-serial "file:$tmp/console.log" \
	-device virtio-serial-pci,id=vser \
	-chardev "file,id=msg,path=${tmp//,/,,}/msg.fifo" \
	-device virtserialport,bus=vser.0,chardev=msg,name=kiln.msg \
	-chardev "file,id=out,path=${tmp//,/,,}/out.fifo" \
	-device virtserialport,bus=vser.0,chardev=out,name=kiln.out \
	"${p9[@]}" "${net[@]}" \
	</dev/null >"$tmp/qemu.log" 2>&1 &
tpid=$!
wait "$tpid"
qrc=$?
tpid=''
elapsed=$(fmt_s $(($(now_us) - t0)))

# QEMU is gone; let the readers drain and finish.
for f in "$tmp/out.fifo" "$tmp/msg.fifo"; do : 1<>"$f"; done
wait "$outpid" 2>/dev/null
wait "$msgpid" 2>/dev/null
outpid='' msgpid=''

if [[ -s $tmp/ctl/status ]]; then
	rc=$(<"$tmp/ctl/status")
	[[ $rc =~ ^[0-9]+$ ]] || die "bad exit status '$rc' from the nested host"
	note "CMD exited with status $rc; ${elapsed} s in total"
	exit "$rc"
fi
if ((qrc == 124 || qrc == 137)); then
	echo "$PROG: timeout: CMD did not finish within ${timeout_s} s (including boot); killed the nested host" >&2
	# What the nested kernel said last (a lockup, the OOM killer, a hung task).
	if [[ -s $tmp/console.log ]]; then
		echo "$PROG: the nested host's console, last lines:" >&2
		tail -n 30 "$tmp/console.log" | tr -d '\r' | sed "s/^/$PROG: | /" >&2
	fi
	exit 124
fi
err=$(grep -a '^error: ' "$tmp/msg.log" 2>/dev/null | tail -n 1)
if [[ -n $err ]]; then
	die "nested host setup failed: ${err#error: }"
fi
if ((qrc != 0)) && grep -q 'host forwarding rule' "$tmp/qemu.log" 2>/dev/null; then
	die "cannot forward $(grep -o "tcp:127.0.0.1:[0-9]*" "$tmp/qemu.log" | head -n 1) into the nested host: is that port in use? (pick another --forward HOSTPORT)"
fi
if ((qrc != 0)); then
	die "qemu exited with status $qrc before CMD finished: $(one_line 3 "$tmp/qemu.log")"
fi
crash=$(grep -a -E 'Kernel panic|BUG:|Oops|general protection|invalid opcode|Out of memory' "$tmp/console.log" 2>/dev/null | head -n 3 | LC_ALL=C tr -d '\r' | LC_ALL=C tr -c '[:print:]\n' '?' | paste -s -d '|' - | sed 's/|/ | /g')
[[ -n $crash ]] || crash="last console lines: $(one_line 6 "$tmp/console.log")"
die "nested host died before CMD finished ($crash); KILN_NESTED_KEEP=1 keeps the console log"
