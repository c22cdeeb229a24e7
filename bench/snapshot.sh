#!/usr/bin/env bash
# Snapshot benchmark (issue 5): kiln-vmm --restore of a template against a
# cold boot of the same guest, measured in the same run, interleaved:
#   a. start -> the first exec of `true` through the agent returns (p50,
#      p99): a restore sends IDENTITY first, as every clone must; a cold
#      boot's client connects as soon as its agent answers
#   b. VMs per second with N started at once (50 on real KVM; 10 by default
#      in the nested host)
#   c. summed PSS (/proc/PID/smaps_rollup) of 10 clones against 10 cold VMs
#   d. VMM RSS excluding guest memory (smaps: all Rss minus the guest mapping)
# Needs /dev/kvm (make bench-snapshot goes through tests/nested/kvm-host.sh
# where there is none).
# The client is build/kiln-firstexec (bench/firstexec.c), started before its
# VM and told "go" when the VM starts: a daemon's view, holding a client
# library, without a CLI process started per request.
# Usage: bench/snapshot.sh VMM FIRSTEXEC [ROUNDS] [CLONES]
# Environment: BENCH_SNAP_ROUNDS, BENCH_SNAP_CLONES (the arguments win),
# BENCH_SNAP_MEMVMS (VMs of each kind for c, default 10), BENCH_SNAP_MEM
# (guest MiB, default 256), BENCH_SNAP_TIMEOUT (seconds per step, default 120).
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

if (($# < 2)); then
	echo "usage: $0 VMM FIRSTEXEC [ROUNDS] [CLONES]" >&2
	exit 2
fi
vmm=$1 firstexec=$2
nested=${KILN_NESTED_HOST:-0}
if [ "$nested" = 1 ]; then dr=5 dn=10 dt=300; else dr=20 dn=50 dt=120; fi
rounds=${3:-${BENCH_SNAP_ROUNDS:-$dr}}
clones=${4:-${BENCH_SNAP_CLONES:-$dn}}
for f in "$vmm" "$firstexec"; do
	[ -x "$f" ] || { echo "bench-snapshot: $f: not an executable (make bench-snapshot builds it)" >&2; exit 2; }
done
# (-c first: <> would create a regular file where there is no /dev/kvm)
if ! [ -c /dev/kvm ] || ! { : <>/dev/kvm; } 2>/dev/null; then
	echo "bench-snapshot: /dev/kvm cannot be opened; run this under tests/nested/kvm-host.sh (make bench-snapshot does)" >&2
	exit 2
fi
# Short paths: every VM's vsock socket lives here (sun_path holds 107 bytes).
tmp=$(mktemp -d /tmp/bsnap.XXXXXX)
trap 'umount "$tmp/huge" 2>/dev/null; rm -rf "$tmp"' EXIT
# A copy of the template on a tmpfs that keeps files in 2 MiB pages, where
# this user may mount one: guest memory the clones only read is then mapped
# (by the host, and so by KVM) in 2 MiB pages, a nested page fault for each
# instead of one per 4 KiB.
huge=$tmp/huge
if ! { mkdir "$huge" && mount -t tmpfs -o huge=always,mode=0700 kiln-huge "$huge"; } 2>/dev/null; then
	echo "bench-snapshot: no tmpfs with huge=always here (needs root): the huge-page row is left out" >&2
	huge=
fi

bench_host_banner
python3 - "$vmm" "$firstexec" "$rounds" "$clones" "${BENCH_SNAP_MEMVMS:-10}" \
	"${BENCH_SNAP_MEM:-256}" "${BENCH_SNAP_TIMEOUT:-$dt}" "$tmp" "$nested" "$huge" <<'PY'
import ctypes, json, os, re, signal, socket, struct, subprocess, sys, threading, time

vmm, firstexec = sys.argv[1], sys.argv[2]
rounds, nclones, nmem, mem_mib, tmo = (int(a) for a in sys.argv[3:8])
tmp, nested, huge = sys.argv[8], sys.argv[9] == "1", sys.argv[10]
CID = 3                      # a clone's CID must be the template's
READY = b"kiln-agent: ready"

def fail(msg):
    raise SystemExit("bench-snapshot: " + msg)

# SIGTERM/SIGINT/SIGHUP unwind through the finally below, which stops every VM.
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, lambda n, f: sys.exit(128 + n))

libc = ctypes.CDLL(None, use_errno=True)
def die_with_us():
    libc.prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG: no VM outlives the benchmark

live = []                           # every VM started and not yet stopped
seq = [0]

class VM:
    """One kiln-vmm: a cold boot (restore=None) or a restore of a template."""
    def __init__(self, kind, restore=None, prefetch=None, pipeline=True, standby=False, early=True,
                 on_request=None):
        seq[0] += 1
        self.on_request = on_request
        self.name = "%s%d" % (kind, seq[0])
        self.uds = os.path.join(tmp, self.name + ".sock")
        self.errpath = os.path.join(tmp, self.name + ".err")
        # A control socket on both kinds (stats when a VM fails; same VMM RSS).
        self.ctl = os.path.join(tmp, self.name + ".ctl")
        argv = [vmm, "--timeout", "3600", "--vsock", "cid=%d,uds=%s" % (CID, self.uds), "--control", self.ctl]
        if restore and standby:
            # Started ahead: the VM is made, and the clock starts when it
            # is told which snapshot to restore (the moment Firecracker's
            # restore latency counts from: its snapshot load request).
            argv += ["--standby", "--vcpus", "1", "-v"] + (["--prefetch", prefetch] if prefetch else [])
        elif restore:
            argv += ["--restore", restore, "-v"] + (["--prefetch", prefetch] if prefetch else [])
        else:
            argv += ["--mem", str(mem_mib), "--cmdline", "kiln.agent"]
        self.ready = threading.Event()
        self.t_ready = None
        self.con = b""
        # Its client first, waiting for "go": its own start-up is not measured.
        self.cli = subprocess.Popen([firstexec, "--uds", self.uds, "--timeout", str(tmo), "--again"] +
                                    (["--identity", self.name] if restore else []) +
                                    (["--pipeline"] if restore and pipeline else []) +
                                    (["--early"] if restore and early else []),
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, preexec_fn=die_with_us)
        if self.cli.stdout.readline() != b"ready\n":
            fail("%s: kiln-firstexec did not start" % self.name)
        err = open(self.errpath, "wb")
        self.t0 = time.perf_counter()
        self.t0_ns = time.monotonic_ns()
        # No preexec_fn: without one Python starts the VMM with vfork, not a
        # fork of this whole interpreter, which in the nested host alone
        # cost ~60 ms of "start" (the finally below and --timeout stop it).
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE if standby else subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=err)
        err.close()
        live.append(self)
        threading.Thread(target=self._console, daemon=True).start()
        # (and after the request, nothing of the benchmark's own but a write
        # and a blocking read: in a one-CPU host it would delay the restore)
        if standby:
            self._standby(restore)
        self.cli.stdin.write(b"go\n")
        self.cli.stdin.close()

    def _standby(self, restore):
        """Wait for "kiln-vmm: standby", then start the clock and ask for the restore."""
        deadline = time.perf_counter() + tmo
        while b"kiln-vmm: standby" not in open(self.errpath, "rb").read(4096):
            if self.p.poll() is not None or time.perf_counter() > deadline:
                self.cli.kill()
                fail("%s: no \"kiln-vmm: standby\" (%s)" % (self.name, self.why()))
            time.sleep(0.002)
        if self.on_request:
            self.on_request()
        self.t0 = time.perf_counter()
        self.t0_ns = time.monotonic_ns()
        self.p.stdin.write(("restore %s\n" % restore).encode())
        self.p.stdin.close()

    def _console(self):
        buf = b""
        while True:
            b = self.p.stdout.read1(65536)
            if not b:
                break
            if not self.ready.is_set():
                buf = (buf + b)[-4096:]
                if READY in buf:
                    self.t_ready = time.perf_counter()
                    self.ready.set()
            self.con = (self.con + b)[-2048:]

    def why(self):
        rc = self.p.poll()
        try:
            err = open(self.errpath, "rb").read()[-1500:].decode(errors="replace")
        except OSError:
            err = ""
        return "%s (%s): stderr: %s | console: %s%s" % (
            self.name, "running" if rc is None else "exited %d" % rc, err.strip() or "-",
            self.con[-600:].decode(errors="replace").strip() or "-", self.stats())

    def request(self, req, timeout):
        """One control request's answer line (raises OSError)."""
        with socket.socket(socket.AF_UNIX) as c:
            c.settimeout(timeout)
            c.connect(self.ctl)
            c.sendall(req.encode() + b"\n")
            return c.makefile("rb").readline()

    def stats(self):
        """The control stats as text, for a VM that failed."""
        if self.p.poll() is not None:
            return ""
        try:
            return " | control stats: " + self.request("stats", 3).decode(errors="replace").strip()
        except OSError as e:
            return " | control stats: %s" % e

    def control(self, req):
        """One control request's JSON answer, or None."""
        if self.p.poll() is not None:
            return None
        try:
            return json.loads(self.request(req, tmo))
        except (OSError, ValueError):
            return None

    def timeline(self):
        """kiln-vmm's own timeline (control "stats"), or None."""
        st = self.control("stats")
        # (whether the working set also went into KVM's page tables: KVM_PRE_FAULT_MEMORY)
        self.kvm_mapped = bool(st and st.get("prefetched", {}).get("kvm_mapped"))
        return st.get("timeline") if st else None

    def stop(self):
        if self.cli.poll() is None:
            self.cli.kill()
        self.cli.wait()
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        if self in live:
            live.remove(self)

    def restore_ms(self):
        """kiln-vmm -v's own "restored in X ms" (its start to vCPUs running)."""
        try:
            for line in open(self.errpath, errors="replace"):
                if "restored in " in line:
                    return float(line.split("restored in ")[1].split()[0])
        except (OSError, ValueError, IndexError):
            pass
        return None

def first_exec(vm, res):
    """From the VMM's start to the first exec's status (a clone: IDENTITY first)."""
    line = vm.cli.stdout.readline().decode(errors="replace").split()
    t = time.perf_counter()
    if not line or line[0] != "ok":
        res["error"] = "%s: kiln-firstexec: %s; %s" % (vm.name, " ".join(line[1:]) or "no answer", vm.why())
        return
    res.update(ms=(t - vm.t0) * 1e3, retries=int(line[2]), t_done=t,
               ready_ms=(vm.t_ready - vm.t0) * 1e3 if vm.t_ready else None)
    res.update((k, float(v)) for k, v in (w.split("=", 1) for w in line[3:] if "=" in w))

def start(kind, prefetch=None, pipeline=True, early=True):
    src = None if kind == "cold" else tpl_huge if kind == "huge" else tpl
    vm = VM(kind, src, prefetch, pipeline, kind in ("standby", "huge"), early)
    vm.restored = kind != "cold"
    return vm

# The phases of a start, in order: (name, where its end is read). "vmm:X" is
# kiln-vmm's timeline mark X, "cli:X" kiln-firstexec's moment t_X.
PHASES = [("spawn -> main() (standby: asked)", "vmm:start"), ("state file parsed", "vmm:parsed"),
          ("memory mapped", "vmm:mapped"), ("vCPU, irqchip, clock state", "vmm:kvm_state"),
          ("devices restored", "vmm:devices"), ("working set prefetched", "vmm:prefetched"),
          ("vCPUs running", "vmm:running"), ("guest userspace (cold)", "vmm:userspace"),
          ("agent ready (cold)", "vmm:agent_ready"), ("vsock reset delivered", "vmm:vsock_reset"),
          ("agent accepts", "vmm:accept"), ("HELLO answered", "cli:hello"),
          ("identity done", "cli:identity"), ("first exec spawned", "cli:started"),
          ("first exec answered", "cli:exit")]

# KVM's counters in kiln-vmm's timeline (vmm/kvmstats.h), in its order.
KVM = ("exits", "npf", "halt", "mmio", "pio", "irqs")

def phases(vm, res, tl):
    """Each phase's (ms, minor faults, major faults) for one start, from both timelines."""
    if not tl:
        return {}
    t0 = tl["t0_ns"]
    zero = [0] * len(KVM)
    marks = {m["name"]: (m["ms"], m["minflt"], m["majflt"], [m.get("kvm", {}).get(k, 0) for k in KVM])
             for m in tl["marks"]}
    # [ms, minflt, majflt, then KVM's counters in KVM's order]
    samples = [(x[0], x[1], x[2], list(x[3:3 + len(KVM)]) + zero[len(x[3:]):]) for x in tl.get("samples", [])]
    start = marks.get("request", marks.get("start", (0, 0, 0, zero)))   # t0: the request, for a standby VMM
    points = {"vmm:" + name: m for name, m in marks.items()}
    # (a standby VMM's own "start" came long before t0)
    points["vmm:start"] = (0.0, start[1], start[2], start[3])
    last = max([marks[k] for k in marks], key=lambda m: m[0], default=(0, 0, 0, zero))
    for key in ("hello", "identity", "started", "exit"):
        ns = res.get("t_" + key)
        if not ns:
            continue
        ms = (ns - t0) / 1e6
        # faults: the VMM's last sample (or mark) before the client saw it
        before = [x for x in samples if x[0] <= ms] + [m for m in marks.values() if m[0] <= ms]
        f = max(before, key=lambda x: x[0], default=last)
        points["cli:" + key] = (ms, f[1], f[2], f[3])
    # Spawn -> main() is the bench's clock to kiln-vmm's; each later phase
    # ends at its point and starts at the previous one reached.
    out, prev = {PHASES[0][0]: ((t0 - vm.t0_ns) / 1e6, 0, 0)}, points["vmm:start"]
    for label, key in PHASES[1:]:
        if key in points:
            p = points[key]
            out[label] = (p[0] - prev[0], p[1] - prev[1], p[2] - prev[2])
            prev = p
    if "vmm:running" in points and "cli:exit" in points:
        run, ex = points["vmm:running"], points["cli:exit"]
        res["after_resume_ms"] = ex[0] - run[0]
        res["after_resume_flt"] = (ex[1] - run[1], ex[2] - run[2])
        res["after_resume_kvm"] = [a - b for a, b in zip(ex[3], run[3])]
    return out

def one(kind, prefetch=None, pipeline=True, early=True):
    vm = start(kind, prefetch, pipeline, early)
    res = {}
    try:
        first_exec(vm, res)
        if "error" not in res:
            res["phases"] = phases(vm, res, vm.timeline())
            res["kvm_mapped"] = vm.kvm_mapped
    finally:
        vm.stop()
    res["restore_ms"] = vm.restore_ms()
    return res

def smaps(pid, guest_path):
    """(Pss of the process, its Rss minus the guest memory mapping's, guest Rss) in KiB."""
    pss = None
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
    total, maps, cur = 0, [], None
    with open("/proc/%d/smaps" % pid) as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                cur = [hi - lo, head[4], " ".join(head[5:]), 0, 0]
                maps.append(cur)
            elif head[0] == "Rss:":
                total += int(head[1])
                cur[3] = int(head[1])
            elif head[0] == "FilePmdMapped:":
                cur[4] = int(head[1])
    # Guest memory: the restored memory file (MAP_PRIVATE), or the smallest
    # anonymous mapping at least as big as guest RAM (a cold boot's mmap).
    want = mem_mib << 20
    cand = [m for m in maps if m[0] >= want and (m[2] == guest_path or (m[1] == "0" and not m[2]))]
    if not cand:
        fail("pid %d: no guest memory mapping of %d MiB in smaps" % (pid, mem_mib))
    g = sorted(cand, key=lambda m: (m[2] != guest_path, m[0]))[0]
    return pss, total - g[3], g[3], g[4]

def batch(kind, n, prefetch=None):
    """n VMs started at once, each to its first exec: (VMs/s of those that answered, results, VMs that answered)."""
    vms, res, threads = [], [], []
    t0 = time.perf_counter()
    for _ in range(n):
        vm = start(kind, prefetch)
        r = {}
        t = threading.Thread(target=first_exec, args=(vm, r), daemon=True)
        t.start()
        vms.append(vm), res.append(r), threads.append(t)
    for t in threads:
        t.join()
    ok = [vm for vm, r in zip(vms, res) if "error" not in r]
    for vm, r in zip(vms, res):
        if "error" in r:
            failures.append("%s batch of %d: %s" % (kind, n, r["error"]))
            print("bench-snapshot: FAILED: " + failures[-1], file=sys.stderr)
            vm.stop()
    dt = max([r["t_done"] for r in res if "t_done" in r], default=t0) - t0
    return (len(ok) / dt if ok else None), [r for r in res if "error" not in r], ok

def memory(vms, guest_path):
    s = [smaps(vm.p.pid, guest_path) for vm in vms]
    if not s:
        return None, None, None, 0, None
    return sum(x[0] for x in s), med([x[1] for x in s]), med([x[2] for x in s]), len(s), med([x[3] for x in s])

def pct(v, q):
    v = sorted(x for x in v if x is not None)
    if not v:
        return None
    return v[min(len(v) - 1, max(0, -(-q * len(v) // 100) - 1))]   # nearest rank

def med(v):
    return pct(v, 50)

# What the traced round turns on (kiln-vmm's vCPU threads it knows by their names).
TRACE_EVENTS = ("kvm/kvm_page_fault", "sched/sched_switch")

def tracefs():
    """The kernel's tracer, with the events the traced round needs, or None."""
    for d in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        if not os.path.isdir(os.path.join(d, "events")) and d == "/sys/kernel/tracing":
            subprocess.run(["mount", "-t", "tracefs", "nodev", d], stderr=subprocess.DEVNULL)
        if all(os.access(os.path.join(d, "events", e, "enable"), os.W_OK)
               for e in TRACE_EVENTS):
            return d
    return None

def guest_kernel_regions(vmlinux):
    """[(name, first GPA, end GPA)] of the guest kernel's image, from its ELF file: text, rodata, data, bss."""
    try:
        with open(vmlinux, "rb") as f:
            elf = f.read(1 << 20)
        phoff, = struct.unpack_from("<Q", elf, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
        loads = []
        for i in range(phnum):
            ptype, _, _, vaddr, paddr, _, memsz = struct.unpack_from("<IIQQQQQ", elf, phoff + i * phentsize)
            if ptype == 1:
                loads.append((vaddr, vaddr + memsz, paddr))
        syms = {}
        for line in subprocess.run(["nm", vmlinux], capture_output=True, text=True, check=True).stdout.splitlines():
            a = line.split()
            if len(a) == 3:
                syms[a[2]] = int(a[0], 16)
    except (OSError, ValueError, struct.error, subprocess.CalledProcessError):
        return []
    # The image is mapped linearly (its per-CPU segment aside): the segment
    # holding _text gives the offset from a symbol to its guest-physical page.
    text = syms.get("_text", -1)
    delta = next((lo - pa for lo, hi, pa in loads if lo <= text < hi), None)
    def gpa(v):
        return None if delta is None or v < 0 else v - delta
    out = []
    for name, a, b in (("kernel text", "_text", "_etext"), ("kernel rodata", "__start_rodata", "__end_rodata"),
                       ("kernel data", "_sdata", "_edata"), ("kernel bss", "__bss_start", "__bss_stop"),
                       ("kernel image, the rest", "_text", "_end")):
        lo, hi = gpa(syms.get(a, -1)), gpa(syms.get(b, -1))
        if lo is not None and hi is not None and lo < hi:
            out.append((name, lo, hi))
    return out

def traced_round():
    """
    One more standby restore to the first exec's status with the kernel's
    tracer on (kvm_page_fault, sched_switch): KVM's nested page
    faults by guest-physical region, and the host CPU by thread. Tracing
    slows everything; the counts and shares are the point, not the times.
    """
    tr = tracefs()
    if not tr:
        return {"why": "no writable tracefs with KVM's events here (needs root)"}
    def w(rel, v):
        with open(os.path.join(tr, rel), "w") as f:
            f.write(v)
    def on():
        w("tracing_on", "0")
        w("buffer_size_kb", "32768")
        w("trace", "")
        for e in TRACE_EVENTS:
            w("events/%s/enable" % e, "1")
        w("tracing_on", "1")
        w("trace_marker", "kiln-bench start")
    vm = VM("traced", tpl, None, True, True, True, on_request=on)
    res = {}
    try:
        first_exec(vm, res)
        w("trace_marker", "kiln-bench end")
    finally:
        w("tracing_on", "0")
        for e in TRACE_EVENTS:
            w("events/%s/enable" % e, "0")
        vm.stop()
    if "error" in res:
        return {"why": res["error"]}
    with open(os.path.join(tr, "trace"), errors="replace") as f:
        text = f.read()
    w("trace", "")
    pat = re.compile(r"^\s*(.+?)-(\d+)\s+\[\d+\]\s+\S+\s+(\d+\.\d+): (\w+): (.*)$")
    cpu, npf, t0, t1, cur, tcur = {}, [], None, None, None, None
    for line in text.splitlines():
        m = pat.match(line)
        if not m:
            continue
        comm, pid, t, ev, rest = m.group(1), m.group(2), float(m.group(3)), m.group(4), m.group(5)
        if ev == "tracing_mark_write":
            if "kiln-bench start" in rest:
                t0, tcur, cur = t, t, comm
            elif "kiln-bench end" in rest and t0 is not None:
                t1 = t
            continue
        if t0 is None or t1 is not None:
            continue
        if ev == "sched_switch":
            sw = re.search(r"prev_comm=(.*) prev_pid=\d+ .*next_comm=(.*) next_pid=\d+", rest)
            if sw:
                cpu[sw.group(1)] = cpu.get(sw.group(1), 0.0) + t - tcur
                tcur, cur = t, sw.group(2)
        elif ev == "kvm_page_fault":
            a = re.search(r"address (0x[0-9a-f]+)", rest)
            if a:
                npf.append(int(a.group(1), 16))
    if t1 is None:
        return {"why": "the trace lost its end marker (buffer too small)"}
    cpu[cur] = cpu.get(cur, 0.0) + t1 - tcur
    regions = guest_kernel_regions(os.path.join(os.path.dirname(os.path.abspath(vmm)), "guest", "vmlinux"))
    by = {}
    for a in npf:
        name = next((n for n, lo, hi in regions if lo <= a < hi), None)
        if name is None:
            name = "device MMIO (virtio registers)" if a >= mem_mib << 20 else \
                   "other guest RAM (page cache, slab, page tables, user)"
        by[name] = by.get(name, 0) + 1
    sizes = {n: hi - lo for n, lo, hi in regions}
    return {"span": (t1 - t0) * 1e3, "cpu": cpu, "npf": by, "sizes": sizes, "total_npf": len(npf),
            "ms": res["ms"]}

tpl = os.path.join(tmp, "tpl")
tpl_huge = os.path.join(huge, "tpl") if huge else None
failures = []
try:
    # The template: boot with the agent, snapshot the moment it is ready, exit 0.
    t = time.perf_counter()
    r = subprocess.run([vmm, "--mem", str(mem_mib), "--vsock", "cid=%d,uds=%s/tpl.sock" % (CID, tmp),
                        "--template", tpl, "--console", os.path.join(tmp, "tpl.console"),
                        "--timeout", str(tmo)], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=tmo + 10)
    t_tpl = (time.perf_counter() - t) * 1e3
    if r.returncode != 0:
        fail("kiln-vmm --template exited %d: %s" % (r.returncode, r.stderr.decode(errors="replace").strip()))
    guest_path = os.path.realpath(os.path.join(tpl, "memory"))

    print("bench-snapshot: template written; %d rounds of restore and cold boot" % rounds, file=sys.stderr)
    # The template's working set: a clone's first operations (IDENTITY, an
    # exec), then kiln-vmm records the pages they touched beside the template.
    vm = start("record", "none")
    res = {}
    try:
        first_exec(vm, res)
        ws = vm.control("workingset") if "error" not in res else None
    finally:
        vm.stop()
    if not ws or not ws.get("ok"):
        fail("recording the working set: %s" % (res.get("error") or ws))
    print("bench-snapshot: working set recorded: %d pages read, %d written, in %d ranges" % (
        ws["read_pages"], ws["write_pages"], ws["ranges"]), file=sys.stderr)
    if huge:
        subprocess.run(["cp", "-a", "--sparse=always", tpl, tpl_huge], check=True)
    guest_paths = {"huge": os.path.realpath(os.path.join(tpl_huge, "memory")) if huge else None}

    # "restore": kiln-vmm's default (--prefetch auto: the working set just
    # recorded), the client sending CONNECT, HELLO, IDENTITY and the exec
    # at once (kac_connect_early); "none" and "all": the other strategies,
    # in the same rounds. "hello": the client waits for the VMM's OK and
    # the agent's HELLO first (kac_connect); "serial": and for IDENTITY's
    # answer before it sends the exec. "standby": the default, by a
    # kiln-vmm --standby started ahead, timed from the moment it is asked
    # for the restore.
    # "huge": standby, from the copy of the template on a huge-page tmpfs.
    KINDS = ("restore", "standby") + (("huge",) if huge else ()) + ("none", "all", "hello", "serial", "cold")
    lat = {k: [] for k in KINDS}
    for i in range(rounds + 1):                     # round 0 warms the page cache
        for kind in KINDS:
            res = one("restore" if kind in ("none", "all", "hello", "serial") else kind,
                      kind if kind in ("none", "all") else None, kind != "serial", kind not in ("hello", "serial"))
            tag = "round %d" % i if i else "warm-up"
            if "error" in res:
                failures.append("%s %s: %s" % (tag, kind, res["error"]))
                print("bench-snapshot: FAILED: " + failures[-1], file=sys.stderr)
                continue
            if i:
                lat[kind].append(res)
            print("bench-snapshot: %s %-7s first exec %8.1f ms%s" % (
                tag, kind, res["ms"], "  (%d retries)" % res["retries"] if res["retries"] else ""),
                file=sys.stderr)

    tput, mem, bres = {}, {}, {}
    for kind in ("restore", "cold"):
        print("bench-snapshot: %d %s VMs at once" % (nclones, kind), file=sys.stderr)
        rate, res, vms = batch(kind, nclones)
        tput[kind], bres[kind] = rate, res
        try:
            if nmem == nclones:
                mem[kind] = memory(vms, guest_path)
        finally:
            for vm in vms:
                vm.stop()
        if nmem != nclones:
            print("bench-snapshot: %d %s VMs for memory" % (nmem, kind), file=sys.stderr)
            _, _, vms = batch(kind, nmem)
            try:
                mem[kind] = memory(vms, guest_path)
            finally:
                for vm in vms:
                    vm.stop()
    # Prefetching must not turn pages the clones share into private copies,
    # nor must huge pages.
    for mode in ("none", "all") + (("huge",) if huge else ()):
        print("bench-snapshot: %d restore VMs, --prefetch %s, for memory" % (nmem, mode), file=sys.stderr)
        _, _, vms = batch("huge" if mode == "huge" else "restore", nmem, None if mode == "huge" else mode)
        try:
            mem[mode] = memory(vms, guest_paths.get(mode) or guest_path)
        finally:
            for vm in vms:
                vm.stop()
    traced = traced_round()
finally:
    for vm in list(live):
        vm.stop()

def fmt(v, unit):
    if v is None:
        return "n/a"
    if unit == "MiB":
        return "%.1f MiB" % (v / 1024)
    if unit == "/s":
        return "%.1f /s" % v
    return ("%.0f ms" if v >= 1000 else "%.1f ms") % v

def row(label, stat, r, c, unit):
    c = c if c else None
    ratio = "%.3f" % (r / c) if r is not None and c else "n/a"
    print("%-38s %-5s %14s %14s %9s" % (label, stat, fmt(r, unit), fmt(c, unit), ratio))

R, C = lat["restore"], lat["cold"]
retries = {k: sum(x["retries"] for x in lat[k]) + sum(x["retries"] for x in bres[k]) for k in bres}
execs = {k: len(lat[k]) + len(bres[k]) for k in bres}
print("kiln-vmm --restore of a template vs cold boot, same guest (%d MiB, 1 vCPU, kiln.agent), same run" % mem_mib)
print("%d rounds each, interleaved, after 1 warm-up; p99 is nearest rank (the max below 100 rounds)" % rounds)
print("batch: %d VMs started at once%s; memory: %d VMs of each kind running at once" % (
    nclones, " (50 on real KVM; scaled down in the nested host, BENCH_SNAP_CLONES)" if nested and nclones < 50 else "", nmem))
print()
print("%-38s %-5s %14s %14s %9s" % ("metric", "", "restore", "cold boot", "rest/cold"))
row("start -> first exec returns", "p50", med([x["ms"] for x in R]), med([x["ms"] for x in C]), "ms")
row("  (restore: IDENTITY and exec at once)", "p99", pct([x["ms"] for x in R], 99), pct([x["ms"] for x in C], 99), "ms")
S = lat["standby"]
row("standby VMM: restore asked -> first exec", "p50", med([x["ms"] for x in S]), med([x["ms"] for x in C]), "ms")
row("  (kiln-vmm --standby, started ahead)", "p99", pct([x["ms"] for x in S], 99), pct([x["ms"] for x in C], 99), "ms")
row("start -> guest running, agent up", "p50", med([x["restore_ms"] for x in R]), med([x["ready_ms"] for x in C]), "ms")
row("  (restore: kiln-vmm -v \"restored in\";", "p99", pct([x["restore_ms"] for x in R], 99), pct([x["ready_ms"] for x in C], 99), "ms")
print("   cold: \"kiln-agent: ready\" on the console)")
row("VMs/s, %d started at once" % nclones, "", tput["restore"], tput["cold"], "/s")
row("  start -> first exec, in the batch", "p50", med([x["ms"] for x in bres["restore"]]), med([x["ms"] for x in bres["cold"]]), "ms")
row("", "p99", pct([x["ms"] for x in bres["restore"]], 99), pct([x["ms"] for x in bres["cold"]], 99), "ms")
row("summed PSS of %s VMs" % ("%d" % nmem if mem["restore"][3] == mem["cold"][3] == nmem else
    "%d+%d" % (mem["restore"][3], mem["cold"][3])), "", mem["restore"][0], mem["cold"][0], "MiB")
row("VMM RSS excl. guest memory", "p50", mem["restore"][1], mem["cold"][1], "MiB")
row("guest memory RSS per VM (info)", "p50", mem["restore"][2], mem["cold"][2], "MiB")
print("%-38s %-5s %14s %14s" % ("first-exec reconnects", "",
      "%d of %d" % (retries["restore"], execs["restore"]), "%d of %d" % (retries["cold"], execs["cold"])))
print("template (boot to agent ready + snapshot): %s; rest/cold below 1: restore is faster or smaller, "
      "except VMs/s (above 1: restore starts more)" % fmt(t_tpl, "ms"))
print()
print("prefetch strategies (kiln-vmm --prefetch): start -> first exec, and kiln-vmm's page faults from vCPUs running to the exit status")
print("%-30s %10s %10s %9s %16s %14s %14s" % ("", "p50", "p99", "/cold p50", "faults after run", "PSS of %d" % nmem,
                                            "exits/NPF"))
for label, key in (("ws (default: auto)", "restore"), ("none", "none"), ("all", "all"),
                   ("ws, OK and HELLO answered first", "hello"), ("ws, and IDENTITY answered first", "serial"),
                   ("ws, standby VMM", "standby")) + (
                  (("ws, standby, huge-page tmpfs", "huge"),) if huge else ()):
    rows = lat[key]
    p50 = med([x["ms"] for x in rows])
    cold = med([x["ms"] for x in C])
    flt = [x["after_resume_flt"] for x in rows if "after_resume_flt" in x]
    kv = [x["after_resume_kvm"] for x in rows if "after_resume_kvm" in x]
    m = mem.get(key)
    print("%-30s %10s %10s %9s %16s %14s %14s" % (label, fmt(p50, "ms"), fmt(pct([x["ms"] for x in rows], 99), "ms"),
          "%.3f" % (p50 / cold) if p50 and cold else "n/a",
          "%d/%d" % (med([f[0] for f in flt]), med([f[1] for f in flt])) if flt else "n/a",
          fmt(m[0], "MiB") if m else "n/a",
          "%d/%d" % (med([k[0] for k in kv]), med([k[1] for k in kv])) if kv else "n/a"))
if mem.get("huge"):
    print("huge-page tmpfs: per clone, %s of %s of guest memory resident is mapped in 2 MiB pages (p50)" % (
        fmt(mem["huge"][4], "MiB"), fmt(mem["huge"][2], "MiB")))
print("working set also mapped into KVM's page tables before the vCPUs ran (KVM_PRE_FAULT_MEMORY, Linux 6.10+): %s" % (
    "yes" if R and all(x.get("kvm_mapped") for x in R) else "no (this host's kernel has no KVM_PRE_FAULT_MEMORY)"
    if R and not any(x.get("kvm_mapped") for x in R) else "in some restores only"))
print("exits/NPF: KVM's exits, and its nested page faults (pages first mapped into the guest's page tables),")
print("from vCPUs running to the first exec's status (p50), by kind:")
for label, key in (("ws (default)", "restore"), ("none", "none"), ("ws, standby VMM", "standby"),
                   ("ws, standby, huge", "huge")):
    if key not in lat:
        continue
    kv = [x["after_resume_kvm"] for x in lat[key] if "after_resume_kvm" in x]
    if kv:
        print("  %-20s %s" % (label, "  ".join("%s %d" % (n, med([k[i] for k in kv])) for i, n in enumerate(KVM))))
print()
print("where the time goes (p50 of each phase, ms; kiln-vmm's minor/major page faults in it)")
print("%-34s %9s %9s %9s %9s %9s %9s" % ("phase", "restore", "faults", "standby", "faults", "cold boot", "faults"))
def phase_col(rows, label):
    v = [x["phases"][label] for x in rows if label in x.get("phases", {})]
    if not v:
        return "", ""
    return fmt(med([p[0] for p in v]), "ms"), "%d/%d" % (med([p[1] for p in v]), med([p[2] for p in v]))
for label, _ in PHASES:
    rc, sc, cc = phase_col(R, label), phase_col(S, label), phase_col(C, label)
    if rc[0] or sc[0] or cc[0]:
        print("%-34s %9s %9s %9s %9s %9s %9s" % (label, rc[0], rc[1], sc[0], sc[1], cc[0], cc[1]))
for name, rows in (("restore", R), ("standby", S)):
    pen = [x["after_resume_ms"] - x["again_ms"] for x in rows if "after_resume_ms" in x and "again_ms" in x]
    print("first-exec penalty (%s): vCPUs running -> first exec answered, minus a steady-state exec "
          "on the same clone: p50 %s (steady-state exec p50 %s)" % (name, fmt(med(pen), "ms"),
          fmt(med([x["again_ms"] for x in rows if "again_ms" in x]), "ms")))
print()
if "why" in traced:
    print("traced restore: left out (%s)" % traced["why"])
else:
    print("one more standby restore, traced (the kernel's tracer on: %.1f ms to the first exec's status here, "
          "slower than above; the counts and shares are the point)" % traced["ms"])
    print("KVM's nested page faults in it, %d, by guest-physical region:" % traced["total_npf"])
    for name, n in sorted(traced["npf"].items(), key=lambda x: -x[1]):
        size = traced["sizes"].get(name) if name != "kernel image, the rest" else None
        print("  %-54s %5d  %s" % (name, n, "(%d of its %d pages)" % (n, size // 4096) if size else ""))
    print("host CPU in it (%.1f ms from the request to the first exec's status), by thread:" % traced["span"])
    role = {"kiln-vmm": "restoring", "kiln-prefetch": "the working set", "kiln-io": "devices' I/O",
            "kiln-firstexec": "the client", "swapper/0": "idle"}
    for name, v in sorted(traced["cpu"].items(), key=lambda x: -x[1])[:10]:
        what = "the guest, and KVM on its exits" if name.startswith("kiln-vcpu") else role.get(name, "")
        print("  %-18s %-34s %7.1f ms %5.1f%%" % (name, what, v * 1e3, 100 * v * 1e3 / traced["span"]))
if failures:
    print("FAILED: %d VM(s) never answered their first exec (left out above):" % len(failures))
    for f in failures:
        print("  " + f[:1500])
    sys.exit(1)
PY
