#!/usr/bin/env python3
"""Helpers for tests/egress/run.sh, run in one namespace or another.

  tool.py serve CERT KEY [UCERT UKEY]  the fake internet's servers (in "inet");
                                  /echo answers "auth=<Authorization header>"
  tool.py dns NAME [TYPE] [SERVER] one query; prints "RCODE addr..."
  tool.py tcp IP PORT [SEND]      connect, send, print what came back, or "reset"/"closed"
  tool.py slow IP PORT            connect, send nothing; print seconds until the proxy closes
  tool.py noread IP PORT HOST     send GET /big and never read; hold 5 s
  tool.py flood IP PORT N         open N connections sending nothing; print "open reset"
  tool.py garbage SERVER N        N random datagrams to the resolver
"""
import os
import random
import socket
import ssl
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAMES = {"203.0.113.10": "allowed.test", "203.0.113.11": "blocked.test",
         "203.0.113.12": "a.wild.test", "203.0.113.13": "wild.test",
         "203.0.113.14": "secret.test", "203.0.113.15": "untrusted.test"}
BIG = 50 << 20


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *a):
        pass

    def echo(self, extra=""):
        body = ("auth=%s%s\n" % (self.headers.get("Authorization", ""), extra)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        data = b""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                data += self.rfile.read(size)
                self.rfile.readline()
        else:
            n = int(self.headers.get("Content-Length", "0"))
            data = self.rfile.read(n) if n else b""
        self.echo(";body=%d" % len(data))

    def do_GET(self):
        name = NAMES.get(self.server.server_address[0], "?")
        if self.path == "/echo":
            self.echo()
            return
        if self.path == "/big":
            self.send_response(200)
            self.send_header("Content-Length", str(BIG))
            self.end_headers()
            chunk = b"\0" * (1 << 16)
            try:
                for _ in range(BIG // len(chunk)):
                    self.wfile.write(chunk)
            except OSError:
                pass
            return
        body = (name + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Handler11(Handler):
    """Keep-alive: many requests on one connection (the secrets' host)."""
    protocol_version = "HTTP/1.1"


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


def banner(ip, port):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((ip, port))
    ls.listen(64)

    def one(c):
        try:
            c.sendall(b"banner %s:%d\n" % (ip.encode(), port))
            while True:
                d = c.recv(4096)
                if not d:
                    break
                c.sendall(d)
        except OSError:
            pass
        c.close()

    while True:
        c, _ = ls.accept()
        threading.Thread(target=one, args=(c,), daemon=True).start()


def serve(cert, key, ucert=None, ukey=None):
    for ip in NAMES:
        s = Server((ip, 80), Handler11 if ip == "203.0.113.14" else Handler)
        threading.Thread(target=s.serve_forever, daemon=True).start()
    tls = [("203.0.113.10", Handler, cert, key), ("203.0.113.14", Handler11, cert, key)]
    if ucert:
        tls.append(("203.0.113.15", Handler11, ucert, ukey))
    for ip, h, c, k in tls:
        s = Server((ip, 443), h)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(c, k)
        s.socket = ctx.wrap_socket(s.socket, server_side=True)
        threading.Thread(target=s.serve_forever, daemon=True).start()
    threading.Thread(target=banner, args=("203.0.113.13", 7), daemon=True).start()
    print("serving", flush=True)
    while True:
        time.sleep(3600)


def qname(name):
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def skip_name(p, i):
    while True:
        n = p[i]
        if n == 0:
            return i + 1
        if n & 0xC0 == 0xC0:
            return i + 2
        i += 1 + n


def dns(name, qtype="A", server="172.29.0.1"):
    types = {"A": 1, "AAAA": 28, "TXT": 16, "MX": 15}
    qid = random.randrange(65536)
    pkt = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname(name) + struct.pack(">HH", types[qtype], 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(pkt, (server, 53))
    try:
        p, _ = s.recvfrom(4096)
    except socket.timeout:
        print("TIMEOUT")
        return
    _, flags, qd, an, _, _ = struct.unpack(">HHHHHH", p[:12])
    rcodes = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
    out = [rcodes.get(flags & 15, str(flags & 15))]
    i = 12
    for _ in range(qd):
        i = skip_name(p, i) + 4
    for _ in range(an):
        i = skip_name(p, i)
        t, _, ttl, rdlen = struct.unpack(">HHIH", p[i:i + 10])
        i += 10
        if t == 1:
            out.append(socket.inet_ntop(socket.AF_INET, p[i:i + 4]) + "/ttl=%d" % ttl)
        elif t == 28:
            out.append(socket.inet_ntop(socket.AF_INET6, p[i:i + 16]) + "/ttl=%d" % ttl)
        i += rdlen
    print(" ".join(out))


def tcp(ip, port, send=None):
    try:
        # The proxy's reset can come before connect() returns: a reset too.
        s = socket.create_connection((ip, int(port)), timeout=5)
        if send:
            s.sendall(send.encode().decode("unicode_escape").encode())
        d = s.recv(4096)
        print(d.decode(errors="replace").strip() if d else "closed")
    except ConnectionResetError:
        print("reset")
    except socket.timeout:
        print("timeout")


def slow(ip, port):
    s = socket.create_connection((ip, int(port)), timeout=60)
    t = time.monotonic()
    try:
        d = s.recv(1)
        what = "closed" if not d else "data"
    except ConnectionResetError:
        what = "reset"
    print("%s after %.1f s" % (what, time.monotonic() - t))


def noread(ip, port, host):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((ip, int(port)))
    s.sendall(b"GET /big HTTP/1.0\r\nHost: %s\r\n\r\n" % host.encode())
    time.sleep(5)
    print("held")


def flood(ip, port, n):
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    socks = []
    for _ in range(int(n)):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect((ip, int(port)))
        except BlockingIOError:
            pass
        socks.append(s)
    time.sleep(3)
    reset = 0
    for s in socks:
        try:
            d = s.recv(1)
            if d == b"":
                reset += 1
        except BlockingIOError:
            pass
        except OSError:
            reset += 1
    print("%d %d" % (len(socks) - reset, reset))
    for s in socks:
        s.close()


def garbage(server, n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(int(n)):
        s.sendto(os.urandom(random.randrange(1, 600)), (server, 53))
    # and a few near-valid ones: a header claiming many questions
    s.sendto(struct.pack(">HHHHHH", 1, 0x0100, 60000, 0, 0, 0), (server, 53))
    s.sendto(struct.pack(">HHHHHH", 2, 0x0100, 1, 0, 0, 0) + b"\x3f" + b"a" * 63, (server, 53))
    print("sent")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"serve": serve, "dns": dns, "tcp": tcp, "slow": slow, "noread": noread, "flood": flood,
     "garbage": garbage}[cmd](*args)
