#!/usr/bin/env python3
"""The host half of the vsock integration tests (tests/integration/vsock.sh).

  vsock-host.py send UDS PORT BYTES        stream BYTES to guest port PORT
                                           (kiln-vsock listen --sum), check
                                           the guest's count and CRC-32
  vsock-host.py multi UDS PORT N BYTES     the same over N connections at once
  vsock-host.py serve PATH                 listen on PATH (the guest dials
                                           CID 2), answer one connection's
                                           "<bytes> <crc32>"
  vsock-host.py refuse UDS PORT BADPORT    once PORT accepts, a CONNECT to
                                           BADPORT must be refused cleanly

Host connections follow kiln's convention: connect to UDS, send
"CONNECT <port>\\n", read "OK <host_port>\\n". The guest's listener may not be
up yet, so CONNECT is retried until OK or a deadline. Exit 0 when every check
passes, 1 otherwise, with a line saying why.
"""
import os
import socket
import sys
import threading
import time
import zlib

DEADLINE = 120.0    # seconds for the guest to boot and listen
CHUNK = 1 << 20


def fail(msg):
    print("host: FAIL: " + msg, flush=True)
    sys.exit(1)


def read_line(s):
    line = b""
    while not line.endswith(b"\n"):
        b = s.recv(1)
        if not b:
            break
        line += b
    return line


def connect(uds, port, deadline):
    """A stream to guest port PORT, retrying while the guest is not ready."""
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        try:
            s.connect(uds)
            s.sendall(b"CONNECT %d\n" % port)
            line = read_line(s)
            if line.startswith(b"OK ") and line[3:-1].isdigit():
                return s
        except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError):
            pass
        s.close()
        if time.monotonic() > deadline:
            fail("no OK from guest port %d before the deadline" % port)
        time.sleep(0.2)


def chunks(nbytes, seed):
    """nbytes of data, each MiB distinct (a counter in front of random bytes)."""
    block = bytearray(os.urandom(CHUNK))
    sent = 0
    i = 0
    while sent < nbytes:
        block[0:16] = b"%08d%08d" % (seed, i)
        n = min(CHUNK, nbytes - sent)
        yield bytes(block[:n])
        sent += n
        i += 1


def send_and_sum(s, nbytes, seed):
    """Stream nbytes, half-close, and check the guest's '<bytes> <crc32>'."""
    crc = 0
    for c in chunks(nbytes, seed):
        crc = zlib.crc32(c, crc)
        s.sendall(c)
    s.shutdown(socket.SHUT_WR)
    reply = b""
    while True:
        b = s.recv(4096)
        if not b:
            break
        reply += b
    s.close()
    want = b"%d %08x\n" % (nbytes, crc)
    if reply != want:
        return "guest answered %r, expected %r" % (reply, want)
    return None


def cmd_send(uds, port, nbytes):
    t0 = time.monotonic()
    s = connect(uds, int(port), t0 + DEADLINE)
    t1 = time.monotonic()
    err = send_and_sum(s, int(nbytes), 0)
    if err:
        fail(err)
    t2 = time.monotonic()
    print("host: %s bytes to the guest and its checksum back ok (%.1f MB/s)"
          % (nbytes, int(nbytes) / (t2 - t1) / 1e6), flush=True)


def cmd_multi(uds, port, n, nbytes):
    deadline = time.monotonic() + DEADLINE
    errors = []

    def one(i):
        try:
            s = connect(uds, int(port), deadline)
            err = send_and_sum(s, int(nbytes), i + 1)
        except (OSError, SystemExit) as e:
            err = "connection %d: %r" % (i, e)
        if err:
            errors.append(err)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(int(n))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        fail("; ".join(errors))
    print("host: %s connections at once, all checksums ok" % n, flush=True)


def cmd_serve(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ls.bind(path)
    ls.listen(4)
    ls.settimeout(DEADLINE)
    try:
        s, _ = ls.accept()
    except socket.timeout:
        fail("the guest never connected to %s" % path)
    s.settimeout(60)
    crc, n = 0, 0
    while True:
        b = s.recv(CHUNK)
        if not b:
            break
        crc = zlib.crc32(b, crc)
        n += len(b)
    s.sendall(b"%d %08x\n" % (n, crc))
    s.close()
    ls.close()
    os.unlink(path)
    print("host: served a guest connection of %d bytes" % n, flush=True)


def cmd_refuse(uds, port, badport):
    s = connect(uds, int(port), time.monotonic() + DEADLINE)
    s.sendall(b"x")
    s.shutdown(socket.SHUT_WR)
    s.close()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(uds)
    s.sendall(b"CONNECT %d\n" % int(badport))
    try:
        got = s.recv(64)
    except socket.timeout:
        fail("CONNECT %s neither refused nor answered" % badport)
    except ConnectionResetError:
        got = b""
    if got:
        fail("CONNECT %s to a port nobody listens on answered %r" % (badport, got))
    print("host: CONNECT %s refused cleanly" % badport, flush=True)


def main():
    cmds = {"send": (cmd_send, 3), "multi": (cmd_multi, 4), "serve": (cmd_serve, 1),
            "refuse": (cmd_refuse, 3)}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds or len(sys.argv) - 2 != cmds[sys.argv[1]][1]:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    cmds[sys.argv[1]][0](*sys.argv[2:])


if __name__ == "__main__":
    main()
