#!/usr/bin/env python3
"""A small client of the kiln agent protocol (docs/agent-protocol.md), and a
self-test of kiln-agent against a real guest.

  agent-py-client.py selftest UDS     boot-independent checks against a guest
                                      started with --vsock cid=3,uds=UDS
                                      --cmdline kiln.agent; exit 0 when all pass

The Agent class is usable on its own: Agent(uds).request(op, fields) etc.
Records are lists of (tag, kind, value) triples.
"""
import socket
import struct
import sys
import time

PORT = 1024
HELLO, PING, PONG = 0x01, 0x02, 0x03
REQUEST, RESPONSE, ERROR, EVENT, CANCEL = 0x10, 0x11, 0x12, 0x13, 0x14
DATA, EOF, WINDOW = 0x20, 0x21, 0x22
F_END = 1
U64, I64, BOOL, BYTES, STR, REC = 1, 2, 3, 4, 5, 6

# enum kp_tag (lib/agent_proto.h)
KT = dict(OP=1, VERSION=2, WINDOW=3, MAX_FRAME=4, FEATURE=5, AGENT=6, CODE=8, ERRNO=9,
          MESSAGE=10, EVENT=11, ARG=16, SHELL=17, ENV=18, CLEAR_ENV=19, CWD=20, UID=21,
          GID=22, STDIN=23, STDOUT=24, STDERR=25, PTY=26, ROWS=27, COLS=28, RING=29,
          OVERFLOW=30, HANDLE=31, PID=32, SIGNAL=33, CORE=34, OOM=35, GROUP=36,
          PATH=48, PATH2=49, MODE=50, RECURSIVE=51, APPEND=52, CREATE=53, CREATE_NEW=54,
          TRUNCATE=55, READ=56, WRITE=57, OFFSET=58, LENGTH=59, SIZE=60, NOFOLLOW=61,
          ENTRY=62, NAME=63, TYPE=64, ATIME=71, MTIME=72, FH=75, WHENCE=76, EXCLUSIVE=77,
          DATA=78, EOF=79, MAX_DEPTH=83, DATA_ONLY=84, UPTIME_NS=105, PROCS=106)
OP = dict(HEALTH=0x01, EXEC=0x10, ATTACH=0x11, SIGNAL=0x12, RELEASE=0x15, STAT=0x20, READDIR=0x21,
          MKDIR=0x22, REMOVE=0x23, RENAME=0x24, FILE_WRITE=0x25, FILE_READ=0x26, COPY=0x29,
          WALK=0x32, FH_OPEN=0x38, FH_READ=0x39, FH_WRITE=0x3a, FH_SEEK=0x3b, FH_STAT=0x3c,
          FH_SYNC=0x3d, FH_TRUNCATE=0x3e, FH_LOCK=0x3f, FH_UNLOCK=0x40, FH_UTIME=0x41,
          FH_CLOSE=0x42)
IO_NULL, IO_PIPE, IO_MERGE = 0, 1, 2
ERR_PROTO, ERR_UNKNOWN_OP, ERR_BAD_ARGS, ERR_ID_IN_USE, ERR_OS, ERR_CREDIT = 1, 3, 4, 5, 10, 11
ERR_NO_SUCH, ERR_CANCELLED, ERR_LIMIT = 6, 7, 9


def rec_enc(fields):
    out = b""
    for tag, kind, v in fields:
        if kind == U64:
            b = struct.pack("<Q", v)
        elif kind == I64:
            b = struct.pack("<q", v)
        elif kind == BOOL:
            b = bytes([1 if v else 0])
        elif kind == REC:
            b = rec_enc(v)
        else:
            b = v.encode() if isinstance(v, str) else bytes(v)
        out += struct.pack("<BBI", tag, kind, len(b)) + b
    return out


def rec_dec(b):
    out, pos = [], 0
    while pos < len(b):
        tag, kind, n = struct.unpack_from("<BBI", b, pos)
        v = b[pos + 6:pos + 6 + n]
        pos += 6 + n
        if kind == U64:
            v = struct.unpack("<Q", v)[0]
        elif kind == I64:
            v = struct.unpack("<q", v)[0]
        elif kind == BOOL:
            v = bool(v[0])
        elif kind == REC:
            v = rec_dec(v)
        out.append((tag, kind, v))
    return out


def get(rec, name, default=None):
    for t, _, v in rec:
        if t == KT[name]:
            return v
    return default


def frame(ftype, fid=0, payload=b"", channel=0, flags=0):
    return struct.pack("<IBBHI", 8 + len(payload), ftype, flags, channel, fid) + payload


class Agent:
    def __init__(self, uds, window=256 << 10, deadline=60.0, hello=True):
        end = time.monotonic() + deadline
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(30)
            try:
                s.connect(uds)
                s.sendall(b"CONNECT %d\n" % PORT)
                line = b""
                while not line.endswith(b"\n"):
                    c = s.recv(1)
                    if not c:
                        break
                    line += c
                if line.startswith(b"OK "):
                    break
            except OSError:
                pass
            s.close()
            if time.monotonic() > end:
                raise SystemExit("agent: no OK from port %d" % PORT)
            time.sleep(0.2)
        self.s, self.buf, self.next_id = s, b"", 1
        self.window = window
        f = self.recv()
        assert f[0] == HELLO, f
        self.hello = rec_dec(f[4])
        if hello:
            self.send(frame(HELLO, 0, rec_enc([(KT["VERSION"], U64, 1), (KT["WINDOW"], U64, window),
                                               (KT["MAX_FRAME"], U64, 1 << 20)])))

    def send(self, b):
        self.s.sendall(b)

    def recv(self):
        """(type, flags, channel, id, payload), or None at EOF."""
        while True:
            if len(self.buf) >= 12:
                n, t, fl, ch, i = struct.unpack_from("<IBBHI", self.buf)
                if len(self.buf) >= 4 + n:
                    p = self.buf[12:4 + n]
                    self.buf = self.buf[4 + n:]
                    return (t, fl, ch, i, p)
            c = self.s.recv(1 << 20)
            if not c:
                return None
            self.buf += c

    def request(self, op, fields=()):
        fid = self.next_id
        self.next_id += 1
        self.send(frame(REQUEST, fid, rec_enc([(KT["OP"], U64, OP[op])] + list(fields))))
        return fid

    def call(self, op, fields=()):
        """A simple request: (type, record) of its reply (RESPONSE batches joined)."""
        fid = self.request(op, fields)
        out = []
        while True:
            t, fl, ch, i, p = self.recv()
            assert i == fid, (t, i, fid)
            out += rec_dec(p)
            if t == ERROR or fl & F_END:
                return t, out

    def run(self, argv=None, shell=None, stdin=None, stderr=IO_PIPE, env=(), cwd=None,
            grant=True, on_response=None):
        """Exec and collect: (response, out, err, exit record, frames seen)."""
        f = [(KT["ARG"], STR, a) for a in (argv or [])]
        if shell:
            f.append((KT["SHELL"], STR, shell))
        f += [(KT["ENV"], STR, e) for e in env]
        if cwd:
            f.append((KT["CWD"], STR, cwd))
        f.append((KT["STDIN"], U64, IO_PIPE if stdin is not None else IO_NULL))
        f.append((KT["STDERR"], U64, stderr))
        fid = self.request("EXEC", f)
        t, fl, ch, i, p = self.recv()
        if t == ERROR:
            return ("error", rec_dec(p)), b"", b"", None, []
        resp = rec_dec(p)
        if on_response:
            on_response(fid, resp)
        if stdin is not None:
            self.send(frame(DATA, fid, struct.pack("<Q", 0) + stdin, 1 - 1))
            self.send(frame(EOF, fid, struct.pack("<Q", len(stdin)), 0, F_END))
        out, err, seen = [b"", b"", b""], [0, 0, 0], []
        while True:
            fr = self.recv()
            assert fr is not None, "connection closed mid-exec"
            t, fl, ch, i, p = fr
            assert i == fid, fr
            seen.append((t, ch))
            if t == DATA:
                off = struct.unpack_from("<Q", p)[0]
                assert off == len(out[ch]), (off, len(out[ch]))
                out[ch] += p[8:]
                if grant:
                    self.send(frame(WINDOW, fid, struct.pack("<I", len(p) - 8), ch))
            elif t == EVENT:
                return resp, out[1], out[2], rec_dec(p), seen
            elif t == ERROR:
                return ("error", rec_dec(p)), out[1], out[2], None, seen


failures = 0


def check(name, ok, detail=""):
    global failures
    print("%s: %s%s" % ("ok" if ok else "FAIL", name, "" if ok else "  " + repr(detail)), flush=True)
    if not ok:
        failures += 1


def selftest(uds):
    a = Agent(uds)
    check("HELLO from the agent first", get(a.hello, "VERSION") == 1, a.hello)
    procs0 = get(a.call("HEALTH")[1], "PROCS")
    a.send(frame(PING, 0, struct.pack("<Q", 0x1234)))
    t, _, _, _, p = a.recv()
    check("PING answered with PONG", t == PONG and struct.unpack("<Q", p)[0] == 0x1234)

    t, r = a.call("HEALTH")
    check("HEALTH", t == RESPONSE and get(r, "UPTIME_NS", 0) > 0, r)

    resp, out, err, ex, _ = a.run(shell="read x; echo got $x; echo oops >&2; exit 3", stdin=b"hi\n")
    check("exec sh -c with stdin, stdout, stderr, exit 3",
          out == b"got hi\n" and err == b"oops\n" and get(ex, "CODE") == 3, (resp, out, err, ex))

    resp, out, err, ex, seen = a.run(argv=["/bin/echo", "a", "b c"])
    check("exec argv, EOF on 1 and 2 before the END event",
          out == b"a b c\n" and (EOF, 1) in seen and (EOF, 2) in seen and seen[-1] == (EVENT, 0), seen)

    resp, out, err, ex, _ = a.run(shell="echo out; echo err >&2", stderr=IO_MERGE)
    check("stderr merged into stdout", out == b"out\nerr\n" and err == b"", (out, err))

    resp, out, err, ex, _ = a.run(shell='echo "$FOO" "$PWD"', env=["FOO=bar"], cwd="/tmp")
    check("env and cwd", out == b"bar /tmp\n", out)

    resp, out, err, ex, _ = a.run(argv=["/no/such/binary"])
    check("exec of a missing binary is ERROR OS ENOENT",
          resp[0] == "error" and get(resp[1], "CODE") == ERR_OS and get(resp[1], "ERRNO") == 2, resp)

    resp, out, err, ex, _ = a.run(argv=["no-such-command-anywhere"])
    check("exec of a missing command (PATH lookup) is ENOENT",
          resp[0] == "error" and get(resp[1], "ERRNO") == 2, resp)

    # signal a running process
    b = Agent(uds)
    # run sleep on b, signal from b's own connection, skip the SIGNAL response frame
    fid = b.request("EXEC", [(KT["ARG"], STR, "sleep"), (KT["ARG"], STR, "100")])
    t, fl, ch, i, p = b.recv()
    h = get(rec_dec(p), "HANDLE")
    b.request("SIGNAL", [(KT["HANDLE"], U64, h), (KT["SIGNAL"], U64, 9)])
    ev = None
    while True:
        t, fl, ch, i, p = b.recv()
        if t == EVENT:
            ev = rec_dec(p)
            break
    check("SIGNAL kills; EXIT event has SIGNAL 9 and CODE -1",
          get(ev, "SIGNAL") == 9 and get(ev, "CODE") == -1, ev)

    # many processes at once on one connection
    ids = [a.request("EXEC", [(KT["SHELL"], STR, "sleep 0.%d; echo %d" % (k, k))]) for k in range(8)]
    outs, done = {}, set()
    while len(done) < len(ids):
        t, fl, ch, i, p = a.recv()
        if t == DATA:
            outs[i] = outs.get(i, b"") + p[8:]
        if t == EVENT:
            done.add(i)
    check("8 processes at once", all(outs.get(ids[k]) == b"%d\n" % k for k in range(8)), outs)

    # back-pressure: with no credit returned the process is stalled, not buffered
    fid = a.request("EXEC", [(KT["SHELL"], STR, "head -c 100000000 /dev/zero; echo done >&2")])
    got = 0
    a.s.settimeout(3)
    try:
        while True:
            t, fl, ch, i, p = a.recv()
            if t == DATA:
                got += len(p) - 8
    except socket.timeout:
        pass
    a.s.settimeout(30)
    check("output stops at the window (256 KiB) without WINDOW", got == a.window, got)
    # now grant credit as we go and see it finish
    a.send(frame(WINDOW, fid, struct.pack("<I", 1 << 20), 1))
    total, ex = got, None
    while ex is None:
        t, fl, ch, i, p = a.recv()
        if t == DATA and ch == 1:
            total += len(p) - 8
            a.send(frame(WINDOW, fid, struct.pack("<I", len(p) - 8), 1))
        elif t == EVENT:
            ex = rec_dec(p)
    check("100 MB streamed under flow control", total == 100000000 and get(ex, "CODE") == 0, total)

    # files
    t, r = a.call("MKDIR", [(KT["PATH"], STR, "/tmp/x/y/z"), (KT["RECURSIVE"], BOOL, True)])
    check("mkdir -p", t == RESPONSE, r)
    t, r = a.call("MKDIR", [(KT["PATH"], STR, "/tmp/x/y/z"), (KT["RECURSIVE"], BOOL, True)])
    check("mkdir -p of an existing dir is ok", t == RESPONSE, r)
    t, r = a.call("MKDIR", [(KT["PATH"], STR, "/tmp/x/y/z")])
    check("mkdir of an existing dir is EEXIST", t == ERROR and get(r, "ERRNO") == 17, r)

    content = bytes(range(256)) * 4096 + b"tail"      # 1 MiB + 4, more than one window
    fid = a.request("FILE_WRITE", [(KT["PATH"], STR, "/tmp/x/f"), (KT["MODE"], U64, 0o600)])
    t, fl, ch, i, p = a.recv()
    ok = t == RESPONSE and not fl & F_END
    credit, off = a.window, 0
    while off < len(content):
        n = min(credit, 65536, len(content) - off)
        if n == 0:
            t, fl, ch, i, p = a.recv()
            assert t == WINDOW, (t, p)
            credit += struct.unpack("<I", p)[0]
            continue
        a.send(frame(DATA, fid, struct.pack("<Q", off) + content[off:off + n]))
        off += n
        credit -= n
    a.send(frame(EOF, fid, struct.pack("<Q", off), 0, F_END))
    while True:
        t, fl, ch, i, p = a.recv()
        if t != WINDOW:
            break
    r = rec_dec(p)
    check("FILE_WRITE streamed, RESPONSE END with SIZE", ok and t == RESPONSE and fl & F_END and
          get(r, "SIZE") == len(content), (t, r))

    t, r = a.call("STAT", [(KT["PATH"], STR, "/tmp/x/f")])
    check("STAT: type, mode, size", get(r, "TYPE") == 0o100000 and get(r, "MODE") == 0o600 and
          get(r, "SIZE") == len(content), r)

    fid = a.request("FILE_READ", [(KT["PATH"], STR, "/tmp/x/f")])
    t, fl, ch, i, p = a.recv()
    size = get(rec_dec(p), "SIZE")
    data = b""
    while True:
        t, fl, ch, i, p = a.recv()
        if t == DATA:
            data += p[8:]
            a.send(frame(WINDOW, fid, struct.pack("<I", len(p) - 8), 1))
        else:
            break
    check("FILE_READ streams the file back, EOF END", size == len(content) and data == content and
          t == EOF and fl & F_END, (size, len(data), t))

    t, r = a.call("RENAME", [(KT["PATH"], STR, "/tmp/x/f"), (KT["PATH2"], STR, "/tmp/x/g")])
    check("RENAME", t == RESPONSE, r)
    t, r = a.call("READDIR", [(KT["PATH"], STR, "/tmp/x")])
    names = sorted((get(e, "NAME"), get(e, "TYPE")) for tag, _, e in r if tag == KT["ENTRY"])
    check("READDIR", names == [(b"g", 0o100000), (b"y", 0o040000)], names)
    t, r = a.call("REMOVE", [(KT["PATH"], STR, "/tmp/x")])
    check("REMOVE of a non-empty dir without RECURSIVE fails", t == ERROR and get(r, "ERRNO") == 39, r)
    t, r = a.call("REMOVE", [(KT["PATH"], STR, "/tmp/x"), (KT["RECURSIVE"], BOOL, True)])
    t2, r2 = a.call("STAT", [(KT["PATH"], STR, "/tmp/x")])
    check("REMOVE recursive", t == RESPONSE and t2 == ERROR and get(r2, "ERRNO") == 2, (r, r2))
    t, r = a.call("FILE_READ", [(KT["PATH"], STR, "/nonexistent")])
    check("FILE_READ of a missing file: ENOENT", t == ERROR and get(r, "ERRNO") == 2, r)
    t, r = a.call("STAT", [(KT["PATH"], U64, 1)])
    check("a known tag of the wrong kind: BAD_ARGS", t == ERROR and get(r, "CODE") == ERR_BAD_ARGS, r)
    fid = a.next_id
    a.next_id += 1
    a.send(frame(REQUEST, fid, rec_enc([(KT["OP"], U64, 0x7f)])))
    t, fl, ch, i, p = a.recv()
    check("unknown op", t == ERROR and get(rec_dec(p), "CODE") == ERR_UNKNOWN_OP)

    a.run(argv=["mkfifo", "/tmp/fifo"])
    t, r = a.call("FILE_READ", [(KT["PATH"], STR, "/tmp/fifo")])
    t2, r2 = a.call("FILE_WRITE", [(KT["PATH"], STR, "/tmp/fifo")])
    check("FILE_READ/WRITE of a FIFO is refused, not a hang of PID 1",
          t == ERROR and t2 == ERROR and get(r, "ERRNO") == 22, (r, r2))

    # hostile input: garbage closes that connection only, with ERROR on id 0
    c = Agent(uds)
    c.send(b"\xff" * 64)
    fr = c.recv()
    check("garbage: ERROR id 0 PROTO", fr and fr[0] == ERROR and fr[3] == 0 and
          get(rec_dec(fr[4]), "CODE") == ERR_PROTO, fr)
    check("garbage: then the connection closes", c.recv() is None)
    d = Agent(uds, hello=False)
    d.send(frame(REQUEST, 1, rec_enc([(KT["OP"], U64, 1)])))
    fr = d.recv()
    check("request before HELLO: ERROR PROTO", fr and fr[0] == ERROR and fr[3] == 0, fr)
    # A connection dropping mid-stream: its process runs on, detached. Its
    # output is kept in its ring (1 MiB); once ring and pipe are full the
    # process blocks in write(2) until an ATTACH reads it: nothing is lost.
    a.call("REMOVE", [(KT["PATH"], STR, "/tmp/survived")])
    e = Agent(uds)
    e.request("EXEC", [(KT["SHELL"], STR, "head -c 10000000 /dev/zero; sleep 1; touch /tmp/survived")])
    t, fl, ch, i, p = e.recv()
    h = get(rec_dec(p), "HANDLE")
    e.s.close()
    time.sleep(3)
    t, r = a.call("STAT", [(KT["PATH"], STR, "/tmp/survived")])
    check("a process outlives its connection; unread output fills its ring and blocks it",
          t == ERROR and get(r, "ERRNO") == 2, r)
    fid = a.request("ATTACH", [(KT["HANDLE"], U64, h)])
    total, ex, first = 0, None, None
    while ex is None:
        t, fl, ch, i, p = a.recv()
        assert i == fid, (t, i, fid)
        if t == DATA and ch == 1:
            if first is None:
                first = struct.unpack_from("<Q", p)[0]
            total += len(p) - 8
            a.send(frame(WINDOW, fid, struct.pack("<I", len(p) - 8), 1))
        elif t == EVENT and fl & F_END:
            ex = rec_dec(p)
        elif t == ERROR:
            ex = rec_dec(p)
    t, r = a.call("STAT", [(KT["PATH"], STR, "/tmp/survived")])
    check("ATTACH replays the ring from byte 0; the process then runs to its end",
          first == 0 and total == 10000000 and get(ex, "CODE") == 0 and t == RESPONSE, (first, total, ex, r))
    a.call("RELEASE", [(KT["HANDLE"], U64, h)])
    resp, out, err, ex, _ = a.run(shell="cat /proc/[0-9]*/stat 2>/dev/null | grep -c ') Z ' || true")
    check("no zombies accumulate", out.strip() == b"0", out)
    t, r = a.call("HEALTH")
    check("agent alive after hostile peers, no process left behind",
          t == RESPONSE and get(r, "PROCS") <= procs0, (r, procs0))
    return failures


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "selftest":
        n = selftest(sys.argv[2])
        print("agent selftest: %s" % ("all passed" if n == 0 else "%d failed" % n), flush=True)
        sys.exit(1 if n else 0)
    print(__doc__)
    sys.exit(2)
