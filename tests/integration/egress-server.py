#!/usr/bin/env python3
"""The fake internet's servers for tests/integration/egress.sh, run inside its
namespace: HTTP on :80 and HTTPS on :443 (a test CA's certificate for every
test name) answering "server=<address it was reached at> host=<Host header>
auth=<Authorization header>" (a header without a kiln placeholder in it is
shown as sha256:<16 hex digits> of it, so a secret's value never travels back
into the guest that must not learn it), a TCP echo on :7, and a UDP sink on :9999 that
logs what reaches it to LOG. Usage: egress-server.py CERT KEY LOG"""
import hashlib
import socket
import socketserver
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

cert, key, log = sys.argv[1:4]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        size = 0
        if self.path.startswith("/bytes/"):
            size = int(self.path.split("/")[2])
        auth = self.headers.get("Authorization")
        if auth is not None and "KILN_SECRET_" not in auth:
            auth = "sha256:" + hashlib.sha256(auth.encode()).hexdigest()[:16]
        body = ("server=%s host=%s auth=%s\n" % (self.connection.getsockname()[0], self.headers.get("Host"),
                                                 auth)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body) + size))
        self.end_headers()
        self.wfile.write(body)
        chunk = b"x" * 65536
        while size > 0:
            n = min(size, len(chunk))
            self.wfile.write(chunk[:n])
            size -= n

    def log_message(self, fmt, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            b = self.request.recv(4096)
            if not b:
                return
            self.request.sendall(b)


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def udp_sink():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 9999))
    while True:
        data, peer = s.recvfrom(2048)
        with open(log, "a") as f:
            f.write("udp from %s: %r\n" % (peer[0], data[:64]))


http = Server(("0.0.0.0", 80), Handler)
https = Server(("0.0.0.0", 443), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
https.socket = ctx.wrap_socket(https.socket, server_side=True)
echo = EchoServer(("0.0.0.0", 7), Echo)
for target in (http.serve_forever, https.serve_forever, echo.serve_forever, udp_sink):
    threading.Thread(target=target, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
