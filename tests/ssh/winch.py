#!/usr/bin/env python3
"""A terminal resized under ssh: window-change must reach the guest's pty.

Runs SSH_ARGS (an ssh command line asking for a shell) on a pty of 30x100,
asks `stty size`, resizes the pty to 40x120 (ssh gets SIGWINCH and sends
window-change), asks again, and exits 0 when both sizes came back.
Usage: winch.py SSH_ARGS...
"""
import fcntl
import os
import pty
import select
import signal
import struct
import sys
import termios
import time


def set_size(fd, rows, cols):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def expect(fd, want, seen, deadline):
    while want not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return seen, False
        try:
            data = os.read(fd, 4096)
        except OSError:
            return seen, False
        if not data:
            return seen, False
        seen += data
    return seen, True


def main():
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp(sys.argv[1], sys.argv[1:])
    set_size(fd, 30, 100)
    deadline = time.monotonic() + 30
    seen, ok = b"", True
    # Distinct markers: the echo of what we type is not the answer.
    os.write(fd, b"stty size | sed 's/^/size=/'\n")
    seen, ok = expect(fd, b"size=30 100", seen, deadline)
    if ok:
        set_size(fd, 40, 120)
        os.kill(pid, signal.SIGWINCH)
        time.sleep(0.5)
        os.write(fd, b"stty size | sed 's/^/size=/'\n")
        seen, ok = expect(fd, b"size=40 120", seen, deadline)
    os.write(fd, b"exit\n")
    expect(fd, b"\x00never", seen, time.monotonic() + 5)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)
    if not ok:
        sys.stdout.write(seen.decode(errors="replace")[-600:] + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
