#!/usr/bin/env python3
# sockets-peer.py USER KIND PATH: as USER ("root", or UID:GID[:G1,G2...]
# with exactly those supplementary groups), connect to kiln-vmm's socket
# PATH and make one request: "stats" on a control socket (KIND control),
# "CONNECT 1024" (the agent) on a vsock socket (KIND vsock). Prints "ok"
# (answered), "closed" (closed without an answer) or "denied" (connect()
# refused by the file's mode). Used by tests/integration/sockets.sh.
import os
import socket
import sys

user, kind, path = sys.argv[1:4]
if user != "root":
    f = user.split(":")
    uid, gid = int(f[0]), int(f[1])
    os.setgroups([int(g) for g in f[2].split(",")] if len(f) > 2 and f[2] else [])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
s = socket.socket(socket.AF_UNIX)
s.settimeout(30)
try:
    s.connect(path)
except PermissionError:
    print("denied")
    sys.exit(0)
try:
    s.sendall(b"stats\n" if kind == "control" else b"CONNECT 1024\n")
    got = s.recv(4096)
except (BrokenPipeError, ConnectionResetError):
    got = b""
except socket.timeout:
    got = b"(timeout)"
if (kind == "control" and got.startswith(b'{"ok":true')) or (kind == "vsock" and got.startswith(b"OK ")):
    print("ok")
elif got == b"":
    print("closed")
else:
    print("got %r" % got[:80])
