#!/usr/bin/env python3
"""Seeds for fuzz_agent: request sequences as the host sends them.

Each file is one connection: a byte of flags (bit 0: the harness sends
HELLO first), then frames as on the wire (docs/agent-protocol.md). The
fuzzed agent is jailed (relative paths), so the seeds use relative paths.

  tests/fuzz/gen_agent_corpus.py tests/fuzz/corpus/fuzz_agent
"""
import os
import struct
import sys

# Frame types, ops and tags of guest/agent_proto.h.
HELLO, PING, REQUEST, CANCEL, DATA, EOF, WINDOW = 0x01, 0x02, 0x10, 0x14, 0x20, 0x21, 0x22
U64, I64, BOOL, BYTES, STR = 1, 2, 3, 4, 5
OP = {n: v for v, n in enumerate(
    "_ HEALTH IDENTITY SHUTDOWN ENV_GET ENV_SET ENV_DELETE ENV_LIST".split())}
OP.update({n: 0x10 + i for i, n in enumerate("EXEC ATTACH SIGNAL RESIZE WAIT RELEASE PROC_LIST".split())})
OP.update({n: 0x20 + i for i, n in enumerate(
    "STAT READDIR MKDIR REMOVE RENAME FILE_WRITE FILE_READ CHMOD CHOWN COPY LINK SYMLINK "
    "READLINK REALPATH TRUNCATE UTIME MKTEMP UMASK WALK".split())})
OP.update({n: 0x38 + i for i, n in enumerate(
    "FH_OPEN FH_READ FH_WRITE FH_SEEK FH_STAT FH_SYNC FH_TRUNCATE FH_LOCK FH_UNLOCK FH_UTIME FH_CLOSE".split())})
OP.update({n: 0x50 + i for i, n in enumerate("PORT_CONNECT PORT_WAIT PORT_LIST".split())})
T = {n: 1 + i for i, n in enumerate("OP VERSION WINDOW MAX_FRAME FEATURE AGENT".split())}
T.update({n: 16 + i for i, n in enumerate(
    "ARG SHELL ENV CLEAR_ENV CWD UID GID STDIN STDOUT STDERR PTY ROWS COLS RING OVERFLOW HANDLE PID "
    "SIGNAL CORE OOM GROUP OUT_OFFSET ERR_OFFSET LOST_FROM LOST_TO CHANNEL".split())})
T.update({n: 48 + i for i, n in enumerate(
    "PATH PATH2 MODE RECURSIVE APPEND CREATE CREATE_NEW TRUNCATE READ WRITE OFFSET LENGTH SIZE "
    "NOFOLLOW ENTRY NAME TYPE DEV INO NLINK RDEV BLKSIZE BLOCKS ATIME MTIME CTIME BTIME FH WHENCE "
    "EXCLUSIVE DATA EOF DIRECTORY PREFIX SUFFIX MAX_DEPTH DATA_ONLY".split())})
T.update({n: 96 + i for i, n in enumerate(
    "PORT ADDR RAW TIMEOUT_MS SANDBOX_ID HOSTNAME REALTIME_NS KEY VALUE UPTIME_NS PROCS REBOOT".split())})


def field(tag, v):
    if isinstance(v, bool):
        kind, b = BOOL, bytes([v])
    elif isinstance(v, int):
        kind, b = (I64, struct.pack("<q", v)) if v < 0 else (U64, struct.pack("<Q", v))
    elif isinstance(v, bytes):
        kind, b = BYTES, v
    else:
        kind, b = STR, v.encode()
    return struct.pack("<BBI", T[tag], kind, len(b)) + b


def frame(type_, id_, payload=b"", channel=0, flags=0):
    return struct.pack("<IBBHI", 8 + len(payload), type_, flags, channel, id_) + payload


def req(id_, op, *fields):
    return frame(REQUEST, id_, field("OP", OP[op]) + b"".join(field(t, v) for t, v in fields))


def data(id_, off, b, ch=0):
    return frame(DATA, id_, struct.pack("<Q", off) + b, ch)


def eof(id_, off, ch=0):
    return frame(EOF, id_, struct.pack("<Q", off), ch)


SEEDS = {
    "health-ping": [req(1, "HEALTH"), frame(PING, 0, struct.pack("<Q", 7))],
    "identity-env": [req(1, "IDENTITY", ("SANDBOX_ID", "sb-1"), ("ENV", "A=1"), ("CLEAR_ENV", True)),
                     req(2, "ENV_SET", ("KEY", "B"), ("VALUE", "2")), req(3, "ENV_GET", ("KEY", "A")),
                     req(4, "ENV_DELETE", ("KEY", "A")), req(5, "ENV_LIST")],
    "file-write-read": [req(1, "FILE_WRITE", ("PATH", "f")), data(1, 0, b"hello\n"), eof(1, 6),
                        req(2, "FILE_READ", ("PATH", "f")), frame(WINDOW, 2, struct.pack("<I", 4096), 1),
                        req(3, "STAT", ("PATH", "f"))],
    "dirs-walk": [req(1, "MKDIR", ("PATH", "d/e/f"), ("RECURSIVE", True)), req(2, "READDIR", ("PATH", "d")),
                  req(3, "WALK", ("PATH", "."), ("MAX_DEPTH", 3)), req(4, "REMOVE", ("PATH", "d"), ("RECURSIVE", True))],
    "file-handles": [req(1, "FH_OPEN", ("PATH", "g"), ("WRITE", True), ("READ", True), ("CREATE", True)),
                     req(2, "FH_WRITE", ("FH", 1), ("DATA", b"abcdef")),
                     req(3, "FH_SEEK", ("FH", 1), ("OFFSET", 2)), req(4, "FH_READ", ("FH", 1), ("LENGTH", 3)),
                     req(5, "FH_STAT", ("FH", 1)), req(6, "FH_LOCK", ("FH", 1), ("EXCLUSIVE", True)),
                     req(7, "FH_UNLOCK", ("FH", 1)), req(8, "FH_TRUNCATE", ("FH", 1), ("LENGTH", 1)),
                     req(9, "FH_SYNC", ("FH", 1)), req(10, "FH_CLOSE", ("FH", 1))],
    "paths": [req(1, "FILE_WRITE", ("PATH", "a")), eof(1, 0), req(2, "COPY", ("PATH", "a"), ("PATH2", "b")),
              req(3, "RENAME", ("PATH", "b"), ("PATH2", "c")), req(4, "LINK", ("PATH", "c"), ("PATH2", "l")),
              req(5, "SYMLINK", ("PATH", "c"), ("PATH2", "s")), req(6, "READLINK", ("PATH", "s")),
              req(7, "REALPATH", ("PATH", "s")), req(8, "REMOVE", ("PATH", "s"))],
    "attributes": [req(1, "MKTEMP", ("PATH", "."), ("PREFIX", "t")), req(2, "FILE_WRITE", ("PATH", "m")),
                   eof(2, 0), req(3, "CHMOD", ("PATH", "m"), ("MODE", 0o600)),
                   req(4, "TRUNCATE", ("PATH", "m"), ("LENGTH", 10)),
                   req(5, "UTIME", ("PATH", "m"), ("ATIME", 1), ("MTIME", -1)), req(6, "UMASK", ("MODE", 0o27))],
    "cancel": [req(1, "FILE_WRITE", ("PATH", "z")), data(1, 0, b"x" * 100), frame(CANCEL, 1, channel=0xffff),
               req(2, "WALK", ("PATH", ".")), frame(CANCEL, 2, channel=1)],
    "bad-frames": [req(1, "HEALTH"), frame(0x55, 0), frame(REQUEST, 2, field("OP", 0x7f))],
    "no-hello": [req(1, "HEALTH")],
    "shutdown": [req(1, "SHUTDOWN", ("TIMEOUT_MS", 10)), req(2, "HEALTH")],
    "refused": [req(1, "EXEC", ("ARG", "true")), req(2, "PORT_LIST"), req(3, "STAT", ("PATH", "/etc")),
                req(4, "ATTACH", ("HANDLE", 1)), req(5, "WAIT", ("HANDLE", 1)), req(6, "PROC_LIST"),
                req(7, "SIGNAL", ("HANDLE", 1), ("SIGNAL", 15)), req(8, "RELEASE", ("HANDLE", 1))],
}

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
for name, frames in SEEDS.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(bytes([0 if name == "no-hello" else 1]) + b"".join(frames))
