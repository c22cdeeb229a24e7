#!/usr/bin/env python3
"""guest-dump.py - what a hung Linux guest of kiln-vmm is doing, from outside.

Usage: tests/nested/guest-dump.py PID VMLINUX VCPUS_JSON [--mem MiB]

PID is a running kiln-vmm (root, or its owner with ptrace rights, reads
/proc/PID/mem), VMLINUX the guest kernel it booted (with symbols; nm -S reads
it), VCPUS_JSON the answer to the control socket's `vcpus` request (saved to
a file). Prints lapic_timer_period, tsc_khz, system_state and jiffies; for
each vCPU its rip and the kernel return addresses on its stack; every
kernel stack in the first 4 MiB of vmalloc space that went through
__schedule (kernel_init's marked INIT); each CPU's queued cross-CPU work
and runnable count; then the printk buffer, oldest first. Assumes the guest kernel is not relocated (kiln loads vmlinux at its
link address) and memory below 3 GiB (one mapping of --mem MiB, default 512).
"""
import bisect, json, re, struct, subprocess, sys

KERNEL_MAP = 0xffffffff80000000        # __START_KERNEL_map: phys = va - this
VMALLOC = 0xffffc90000000000
STACK = 0x4000                         # THREAD_SIZE on x86-64 without KASAN


def main():
    args = sys.argv[1:]
    mem = 512
    if "--mem" in args:
        i = args.index("--mem"); mem = int(args[i + 1]); del args[i:i + 2]
    if len(args) != 3:
        sys.exit(__doc__.strip().splitlines()[2])
    pid, vmlinux, vcpus = int(args[0]), args[1], json.load(open(args[2]))["vcpus"]

    base = None
    for line in open("/proc/%d/maps" % pid):
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if hi - lo == mem << 20:
            base = lo
            break
    if base is None:
        sys.exit("guest-dump: no %d MiB mapping in kiln-vmm %d (pass --mem)" % (mem, pid))
    syms, text = {}, []
    for line in subprocess.run(["nm", "-S", vmlinux], capture_output=True, text=True, check=True).stdout.splitlines():
        p = line.split()
        if len(p) == 4:
            syms[p[3]] = (int(p[0], 16), int(p[1], 16))
        if len(p) >= 3 and p[-2] in "tTwW":
            text.append((int(p[0], 16), p[-1]))
    text.sort()
    taddr = [a for a, _ in text]
    etext = syms.get("_etext", (0xffffffff82000000, 0))[0]
    m = open("/proc/%d/mem" % pid, "rb")

    def phys(pa, n):
        m.seek(base + pa)
        return m.read(n)

    def var(name, fmt):
        a, s = syms[name]
        return struct.unpack_from(fmt, phys(a - KERNEL_MAP, s))[0]

    def walk(cr3, va):                 # 4-level page walk; 1 GiB and 2 MiB pages
        t = cr3 & ~0xfff
        for lvl, sh in ((4, 39), (3, 30), (2, 21), (1, 12)):
            e = struct.unpack("<Q", phys(t + ((va >> sh) & 511) * 8, 8))[0]
            if not e & 1:
                return None
            if lvl in (3, 2) and e & 0x80:
                return (e & 0x000ffffffffff000 & ~((1 << sh) - 1)) + (va & ((1 << sh) - 1))
            t = e & 0x000ffffffffff000
        return t + (va & 0xfff)

    def sym(x):
        i = bisect.bisect_right(taddr, x) - 1
        return "%s+%#x" % (text[i][1], x - text[i][0])

    def returns(cr3, lo, hi):          # kernel text addresses stored in [lo, hi)
        out, va = [], lo
        while va < hi:
            n = min(hi - va, 0x1000 - (va & 0xfff))
            pa = walk(cr3, va)
            if pa is not None:
                d = phys(pa, n)
                out += [sym(w) for w in struct.unpack("<%dQ" % (n // 8), d[:n - n % 8])
                        if KERNEL_MAP + 0x1000000 <= w < etext]
            va += n
        return out

    for name, fmt in (("lapic_timer_period", "<I"), ("tsc_khz", "<I"), ("system_state", "<I"), ("jiffies_64", "<Q")):
        if name in syms:
            print(name, var(name, fmt))
    cr3 = int(vcpus[0]["cr3"], 16)
    for v in vcpus:
        rsp = int(v["rsp"], 16)
        print("vCPU %d: rip %s, stack:" % (v["id"], sym(int(v["rip"], 16))),
              " <- ".join(returns(int(v["cr3"], 16), rsp, (rsp | (STACK - 1)) + 1)[:40]))
    # Per CPU: work queued for it by other CPUs (call_single_queue, drained
    # by the IPI handler) and its run queue's nr_running (struct rq's second
    # field, after a 4-byte raw_spinlock_t in a kernel without lock debugging).
    # Work queued on an idle CPU means its IPI was sent and lost.
    if "__per_cpu_offset" in syms and "call_single_queue" in syms:
        offs = syms["__per_cpu_offset"][0] - KERNEL_MAP
        for v in vcpus:
            off = struct.unpack("<Q", phys(offs + 8 * v["id"], 8))[0]
            line = "cpu %d:" % v["id"]
            for name, at, fmt in (("call_single_queue", 0, "<Q"), ("runqueues", 4, "<I")):
                pa = walk(cr3, (syms[name][0] + off + at) & 0xffffffffffffffff) if name in syms else None
                if pa is not None:
                    line += " %s %#x" % (name, struct.unpack(fmt, phys(pa, struct.calcsize(fmt)))[0])
            print(line)
    for va in range(VMALLOC, VMALLOC + (4 << 20), STACK):
        r = returns(cr3, va, va + STACK)
        if any(s.startswith("kernel_init+") for s in r):
            print("INIT stack %#x:" % va, " <- ".join(r[-40:]))
        elif any(s.startswith("__schedule+") for s in r):
            print("stack %#x:" % va, " <- ".join(r[-14:]))
    a, s = syms["__log_buf"]
    for t in re.findall(rb"[\x20-\x7e\t]{6,}", phys(a - KERNEL_MAP, s)):
        print(t.decode())


if __name__ == "__main__":
    main()
