#!/bin/bash
ls -l /dev/vhost-vsock 2>&1
modprobe vhost_vsock 2>&1; ls -l /dev/vhost-vsock 2>&1
cd /work/main
timeout 60 qemu-system-x86_64 -M microvm,acpi=off -accel kvm -cpu host -m 512 -smp 1 -nodefaults -no-user-config -display none -serial stdio -no-reboot -kernel build/guest/vmlinux -initrd build/guest/initramfs.cpio -append "console=ttyS0 reboot=k panic=-1 quiet no_timer_check kiln.bootmark kiln.agent" -device isa-debug-exit,iobase=0xf4,iosize=0x04 -device i8042 -device vhost-vsock-device,guest-cid=3 </dev/null > /tmp/q.out 2>&1 &
q=$!
for i in $(seq 60); do grep -q "kiln-agent" /tmp/q.out && break; sleep 1; done
cat /tmp/q.out; kill $q; wait $q
echo "---- agent.sh"
time bench/agent.sh build/kiln-vmm build/kiln 30 8
