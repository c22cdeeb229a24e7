#!/usr/bin/env python3
"""The host client (build/kiln, api/ac_*.c) against fake, hostile
agents: no guest needed, so `make test` runs it on the host before the
nested integration tests.

  hostile-agent.py KILN

Each test serves one unix socket the way kiln-vmm's vsock socket does
(`CONNECT 1024` -> `OK 1024`), speaks docs/agent-protocol.md with a
misbehaving agent, runs KILN against it under a hard limit and checks that
kiln ends on its own, non-zero, with a message that names the problem (or,
for the legitimate cases, succeeds). A kiln still running at the hard limit
is killed and the test fails: a hang is a failure, not a stuck `make test`.
Prints "ok N - name" / "not ok N - name" lines; exits 1 if any failed.
"""
import importlib.util
import os
import pty
import re
import select
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("apc", os.path.join(here, "agent-py-client.py"))
apc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(apc)
K, U64, I64, STR = apc.KT, apc.U64, apc.I64, apc.STR
frame, rec_enc, rec_dec = apc.frame, apc.rec_enc, apc.rec_dec

HARD_LIMIT = 60          # seconds; kiln is killed (and the test fails) past this
AGENT_TIMEOUT = "2"      # kiln --agent-timeout for the tests that need one
S_IFREG = 0o100000


class Conn(apc.Agent):
    """The agent's end of one connection: the client's framing (send, recv), served the other way."""

    def __init__(self, s):
        self.s, self.buf = s, b""

    def requests(self, pong=True):
        """Yield (id, op, record) of each REQUEST; answer PINGs if pong; ignore the rest."""
        while True:
            f = self.recv()
            if f is None:
                return
            t, fl, ch, i, p = f
            if t == apc.PING and pong:
                self.send(frame(apc.PONG, 0, p))
            elif t == apc.REQUEST:
                r = rec_dec(p)
                yield i, apc.get(r, "OP"), r

    def response(self, fid, fields, end=True):
        self.send(frame(apc.RESPONSE, fid, rec_enc(fields), 0, apc.F_END if end else 0))

    def exit_event(self, fid, code=0):
        for ch in (1, 2):
            self.send(frame(apc.EOF, fid, struct.pack("<Q", 0), ch))
        self.send(frame(apc.EVENT, fid, rec_enc([(K["EVENT"], U64, 1), (K["CODE"], I64, code),
                                                 (K["SIGNAL"], U64, 0)]), 0, apc.F_END))


def serve(path, behave, done):
    """Listen on path; for each connection: CONNECT/OK, HELLO both ways, then behave(conn, done)."""
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ls.bind(path)
    ls.listen(8)
    ls.settimeout(0.2)

    def one(s):
        try:
            line = b""
            while not line.endswith(b"\n"):
                c = s.recv(1)
                if not c:
                    return
                line += c
            s.sendall(b"OK 1024\n")
            c = Conn(s)
            c.send(frame(apc.HELLO, 0, rec_enc([(K["VERSION"], U64, 1), (K["WINDOW"], U64, 256 << 10),
                                                (K["MAX_FRAME"], U64, (1 << 20) + 8),
                                                (K["AGENT"], STR, "hostile-agent")])))
            f = c.recv()
            if f is None or f[0] != apc.HELLO:
                return
            behave(c, done)
        except OSError:
            pass
        finally:
            s.close()

    while not done.is_set():
        try:
            s, _ = ls.accept()
        except socket.timeout:
            continue
        threading.Thread(target=one, args=(s,), daemon=True).start()
    ls.close()


# ---- the agents -----------------------------------------------------------------

def mute(c, done):
    """Takes every request and never answers one, nor a PING."""
    for _ in c.requests(pong=False):
        pass


def exec_then_mute(c, done):
    """Starts the process, then falls silent: no output, no exit, no PONG."""
    for fid, op, r in c.requests(pong=False):
        if op == apc.OP["EXEC"]:
            c.response(fid, [(K["HANDLE"], U64, 1), (K["PID"], U64, 42)], end=False)


def exec_long(c, done):
    """A legitimate long process: alive (answers PING) and exits after kiln pinged it four times."""
    fid, pings = None, 0
    while True:
        f = c.recv()
        if f is None:
            return
        t, fl, ch, i, p = f
        if t == apc.REQUEST and apc.get(rec_dec(p), "OP") == apc.OP["EXEC"]:
            fid = i
            c.response(fid, [(K["HANDLE"], U64, 1), (K["PID"], U64, 42)], end=False)
        elif t == apc.PING:
            c.send(frame(apc.PONG, 0, p))
            pings += 1
            if pings == 4 and fid:
                c.exit_event(fid, 0)


def flood(c, done):
    """Sends 100 KiB of stdout, then 300 KiB in one frame: beyond the 256 KiB window, then exits 0.

    (kiln returns credit for what it wrote before it waits for more, so what
    it can catch is DATA beyond the credit it has granted when it reads it.)
    """
    for fid, op, r in c.requests():
        if op == apc.OP["EXEC"]:
            c.response(fid, [(K["HANDLE"], U64, 1), (K["PID"], U64, 42)], end=False)
            c.send(frame(apc.DATA, fid, struct.pack("<Q", 0) + b"x" * (100 << 10), 1) +
                   frame(apc.DATA, fid, struct.pack("<Q", 100 << 10) + b"y" * (300 << 10), 1))
            c.exit_event(fid, 0)


def no_read(c, done):
    """Grants all the stdin credit there is, then stops reading the socket."""
    for fid, op, r in c.requests():
        if op == apc.OP["EXEC"]:
            c.response(fid, [(K["HANDLE"], U64, 1), (K["PID"], U64, 42)], end=False)
            c.send(frame(apc.WINDOW, fid, struct.pack("<I", 0xffffffff - (256 << 10)), 0))
            done.wait()
            return


def oversize(c, done):
    """Answers with a frame header claiming a 2 GiB payload."""
    for fid, op, r in c.requests():
        c.send(struct.pack("<IBBHI", 0x7ffffff0, apc.DATA, 0, 1, fid))
        done.wait()
        return


def setuid_file(c, done):
    """A guest file of mode 06755 (setuid, setgid), five bytes."""
    for fid, op, r in c.requests():
        if op == apc.OP["STAT"]:
            c.response(fid, [(K["TYPE"], U64, S_IFREG), (K["MODE"], U64, 0o6755), (K["SIZE"], U64, 5)])
        elif op == apc.OP["FILE_READ"]:
            c.response(fid, [(K["SIZE"], U64, 5)], end=False)
            c.send(frame(apc.DATA, fid, struct.pack("<Q", 0) + b"hello", 1))
            c.send(frame(apc.EOF, fid, struct.pack("<Q", 5), 1, apc.F_END))
        else:
            c.send(frame(apc.ERROR, fid, rec_enc([(K["CODE"], U64, apc.ERR_UNKNOWN_OP)])))


def escape_names(c, done):
    """A directory whose entry names carry terminal escape sequences."""
    for fid, op, r in c.requests():
        if op == apc.OP["READDIR"]:
            names = [b"\x1b]0;pwned\x07title", b"\x1b[2Jclear"]
            c.response(fid, [(K["ENTRY"], apc.REC, [(K["NAME"], STR, n), (K["TYPE"], U64, S_IFREG)])
                             for n in names])


# ---- the tests ------------------------------------------------------------------

results = [0, 0]


def report(name, good, detail):
    results[0 if good else 1] += 1
    n = results[0] + results[1]
    if good:
        print("ok %d - %s" % (n, name), flush=True)
    else:
        print("not ok %d - %s" % (n, name), flush=True)
        for line in detail.splitlines()[-15:]:
            print("#   " + line, flush=True)


def run(name, behave, args, want_status, pattern, stdin=subprocess.DEVNULL, umask=None, before=None,
        after=None, tty_out=None):
    """Run KILN args against an agent that behaves so; args' {uds} and {dir} are filled in."""
    with tempfile.TemporaryDirectory(prefix="kiln-hostile-") as d:
        uds = os.path.join(d, "agent.sock")
        if before:
            before(d)
        done = threading.Event()
        th = threading.Thread(target=serve, args=(uds, behave, done), daemon=True)
        th.start()
        while not os.path.exists(uds):
            time.sleep(0.01)
        argv = [kiln] + [a.format(uds=uds, dir=d) for a in args]
        pre = (lambda: os.umask(umask)) if umask is not None else None
        out = subprocess.DEVNULL
        if tty_out is not None:
            master, out = pty.openpty()
        try:
            p = subprocess.run(argv, stdin=stdin, stdout=out, stderr=subprocess.PIPE,
                               timeout=HARD_LIMIT, preexec_fn=pre)
            st, err = p.returncode, p.stderr.decode(errors="replace")
        except subprocess.TimeoutExpired as e:
            st, err = "hung", (e.stderr or b"").decode(errors="replace") + \
                "\n(still running after %d s: killed)" % HARD_LIMIT
        extra_ok, extra = (after(d) if after else (True, ""))
        if tty_out is not None:
            os.close(out)
            got = b""
            while select.select([master], [], [], 0)[0]:
                try:
                    b = os.read(master, 4096)
                except OSError:
                    break
                if not b:
                    break
                got += b
            os.close(master)
            extra_ok, extra = tty_out(got), "terminal got %r" % got
        done.set()
        th.join()
        good = st == want_status and re.search(pattern, err) is not None and extra_ok
        report(name, good, "exit %s (wanted %s), stderr:\n%s\n(wanted stderr matching: %s) %s" %
               (st, want_status, err, pattern, extra))


def mode_of(d, name, want):
    try:
        m = stat.S_IMODE(os.lstat(os.path.join(d, name)).st_mode)
    except OSError as e:
        return False, str(e)
    return m == want, "mode %04o (wanted %04o)" % (m, want)


kiln = os.path.abspath(sys.argv[1]) if len(sys.argv) == 2 else sys.exit("usage: hostile-agent.py KILN")
T = AGENT_TIMEOUT

run("a request the agent never answers ends with a clear error", mute,
    ["stat", "--uds", "{uds}", "--agent-timeout", T, "/etc"], 1,
    r"^kiln: /etc: the agent did not answer within 2 s \(.*--agent-timeout.*\)$")
run("an exec the agent never answers ends with a clear error (125)", mute,
    ["exec", "--uds", "{uds}", "--agent-timeout", T, "--", "true"], 125,
    r"the agent did not answer within 2 s")
run("an exec stream whose agent falls silent (no PONG) ends with a clear error (125)", exec_then_mute,
    ["exec", "--uds", "{uds}", "--agent-timeout", T, "--", "sleep", "1000"], 125,
    r"the agent did not answer within 2 s")
run("a process that runs longer than --agent-timeout while the agent is alive is not cut off", exec_long,
    ["exec", "--uds", "{uds}", "--agent-timeout", "4", "--", "sleep", "100"], 0, r"^$")
run("stdout beyond the granted credit is a protocol violation (125)", flood,
    ["exec", "--uds", "{uds}", "--", "yes"], 125,
    r"sent more than the credit .*protocol violation")
run("an agent that stops reading does not block kiln's sends forever (125)", no_read,
    ["exec", "--uds", "{uds}", "--agent-timeout", T, "-i", "--", "cat"], 125,
    r"the agent stopped reading: nothing could be sent for 2 s",
    stdin=open("/dev/zero", "rb"))
run("a frame header announcing 2 GiB is refused before any allocation (125)", oversize,
    ["exec", "--uds", "{uds}", "--", "true"], 125, r"malformed frame: .*(large|size)")
run("cp from the guest strips setuid/setgid and applies the umask (077: 0700)", setuid_file,
    ["cp", "--uds", "{uds}", "guest:/bin/su", "{dir}/su"], 0, r"^$", umask=0o077,
    after=lambda d: mode_of(d, "su", 0o700))
run("cp from the guest with umask 022 gives 0755, never 06755", setuid_file,
    ["cp", "--uds", "{uds}", "guest:/bin/su", "{dir}/su"], 0, r"^$", umask=0o022,
    after=lambda d: mode_of(d, "su", 0o755))


def dangling(d):
    os.symlink(os.path.join(d, "victim"), os.path.join(d, "link"))


def victim_absent(d):
    made = os.path.lexists(os.path.join(d, "victim"))
    return not made, "the symlink's target was created" if made else ""


run("cp from the guest does not write through a dangling symlink (as GNU cp)", setuid_file,
    ["cp", "--uds", "{uds}", "guest:/bin/su", "{dir}/link"], 1, r"dangling symlink",
    before=dangling, after=victim_absent)

run("guest file names reach a terminal with their control bytes as '?' (no escape sequences)", escape_names,
    ["ls", "--uds", "{uds}", "/tmp"], 0, r"^$",
    tty_out=lambda got: b"\x1b" not in got and b"?]0;pwned?title" in got and b"?[2Jclear" in got)

print("%d passed, %d failed" % (results[0], results[1]))
sys.exit(1 if results[1] else 0)
