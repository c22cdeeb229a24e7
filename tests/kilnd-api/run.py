#!/usr/bin/env python3
"""kilnd's REST front against hostile and malformed requests, without a VM.

Starts kilnd (the ASan/UBSan build in `make test`) on a unix socket and a TCP
port in a scratch state dir and checks what every client sees: JSON errors
with a status that fits and a message that names the fix, auth on both
listeners, bounded bodies and headers, a slow client and hundreds of idle
connections that do not stop kilnd serving others, and a second kilnd on
the same state dir refused. What needs a guest is in
tests/integration/kilnd.sh, which runs in the nested KVM host.

Usage: tests/kilnd-api/run.py KILND
"""
import http.client
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time

KILND = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else "build/asan/kilnd"
passed = failed = 0


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print("ok %d - %s" % (passed + failed, name))
    else:
        failed += 1
        print("not ok %d - %s" % (passed + failed, name))
        for line in str(detail).splitlines()[-15:]:
            print("#   " + line)


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path, timeout=10):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start(state, sock, port, extra=()):
    log = open(state + ".log", "ab")
    p = subprocess.Popen([KILND, "--state-dir", state, "--listen", "unix:" + sock,
                          "--listen", "tcp:127.0.0.1:%d" % port] + list(extra),
                         stdout=log, stderr=log, env=dict(os.environ, ASAN_OPTIONS="detect_leaks=1"))
    for _ in range(200):
        if os.path.exists(sock):
            try:
                c = UnixHTTP(sock, 2)
                c.request("GET", "/v1/node")
                c.getresponse().read()
                return p
            except OSError:
                pass
        if p.poll() is not None:
            break
        time.sleep(0.05)
    raise SystemExit("kilnd did not start: " + open(state + ".log").read())


def req(conn, method, path, body=None, headers=None):
    h = dict(headers or {})
    if body is not None and not isinstance(body, (bytes, bytearray)):
        body = body.encode()
    conn.request(method, path, body=body, headers=h)
    r = conn.getresponse()
    data = r.read()
    try:
        js = json.loads(data) if data else None
    except ValueError:
        js = None
    return r.status, js, data


def ws_handshake(port, path, headers, timeout=20):
    """A WebSocket upgrade by hand: (status line, header dict, socket, leftover bytes)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    h = "".join("%s: %s\r\n" % kv for kv in headers.items())
    s.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
               "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n%s\r\n"
               % (path, port, h)).encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            break
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    hd = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        hd[k.strip().lower()] = v.strip()
    if "content-length" in hd:
        while len(rest) < int(hd["content-length"]):
            d = s.recv(65536)
            if not d:
                break
            rest += d
    return lines[0] if lines else "", hd, s, rest


def ws_send(s, text, opcode=1):
    data = text if isinstance(text, bytes) else text.encode()
    mask = os.urandom(4)
    n = len(data)
    hdr = bytes([0x80 | opcode])
    if n < 126:
        hdr += bytes([0x80 | n])
    elif n < 65536:
        hdr += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        hdr += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    s.sendall(hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))


def ws_recv(s, buf):
    """One frame: (opcode, payload, rest of buf)."""
    def need(k):
        nonlocal buf
        while len(buf) < k:
            d = s.recv(65536)
            if not d:
                raise EOFError("closed")
            buf += d
    need(2)
    op, n = buf[0] & 0x0F, buf[1] & 0x7F
    off = 2
    if n == 126:
        need(4)
        n, off = int.from_bytes(buf[2:4], "big"), 4
    elif n == 127:
        need(10)
        n, off = int.from_bytes(buf[2:10], "big"), 10
    need(off + n)
    return op, buf[off:off + n], buf[off + n:]


def deno_checks(port, u):
    """The @deno/sandbox protocol's front door without a VM: handshakes refused
    in the SDK's JSON shape, REST routes, and a control socket's framing (ping,
    malformed JSON-RPC) answered before its sandbox runs; then the create,
    which fails here for want of KVM, closes the socket with 1011 and why."""
    import base64
    tok = req(u(), "POST", "/v1/tokens")[1]["token"]
    cfg = lambda o: base64.b64encode(json.dumps(o).encode("latin-1")).decode()
    auth = {"Authorization": "Bearer " + tok}
    st, hd, s, body = ws_handshake(port, "/api/v3/sandboxes/create", {"Authorization": "Bearer ddo_bogus",
                                                                      "x-deno-sandbox-config": cfg({"memory_mb": 1280})})
    s.close()
    check("v3: a create with a bad token -> 401 INVALID_TOKEN (the SDK's InvalidTokenError)",
          " 401 " in st and b'"INVALID_TOKEN"' in body, st + " " + body.decode("latin-1"))
    st, hd, s, body = ws_handshake(port, "/api/v3/sandboxes/create", auth)
    s.close()
    check("v3: a create without x-deno-sandbox-config -> 400 INVALID_CONFIG naming the header",
          " 400 " in st and b"INVALID_CONFIG" in body and b"x-deno-sandbox-config" in body, body)
    st, hd, s, body = ws_handshake(port, "/api/v3/sandboxes/create", dict(auth, **{"x-deno-sandbox-config": "%%%%"}))
    s.close()
    check("v3: a config that is not base64 -> 400", " 400 " in st and b"not base64" in body, body)
    st, hd, s, body = ws_handshake(port, "/api/v3/sandboxes/create",
                                   dict(auth, **{"x-deno-sandbox-config": cfg({"memory_mb": 600, "volumes": []})}))
    s.close()
    check("v3: memory_mb 600 -> 400 saying the range", " 400 " in st and b"768" in body and b"4096" in body, body)
    big = cfg({"memory_mb": 1280, "volumes": [], "labels": {"k": "v"}, "x": "y" * 20000})
    st, hd, s, body = ws_handshake(port, "/api/v3/sandboxes/create", dict(auth, **{"x-deno-sandbox-config": big,
                                                                                  "x-bad": "1"}))
    s.close()
    check("v3: a 27 KB config header is read whole (its unknown keys ignored), not cut off",
          st != "" and " 101 " in st, st)
    st, hd, s, body = ws_handshake(port, "/api/v3/sandbox/sbx_loc_00000000000000000000/connect", auth)
    s.close()
    check("v3: connect to an unknown id -> 404 SANDBOX_NOT_FOUND", " 404 " in st and b"SANDBOX_NOT_FOUND" in body, body)
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    st2, js, raw = req(c, "GET", "/api/v2/apps", headers=auth)
    check("v2: Deno Deploy's apps -> 501 NOT_SUPPORTED saying kiln is not Deploy",
          st2 == 501 and js["code"] == "NOT_SUPPORTED" and "Deploy" in js["message"], raw)
    st2, js, raw = req(c, "DELETE", "/api/v3/sandbox/sbx_loc_00000000000000000000", headers=auth)
    check("v3: kill of an unknown sandbox -> 404 SANDBOX_NOT_FOUND", st2 == 404 and js["code"] == "SANDBOX_NOT_FOUND", raw)
    jh = dict(auth, **{"Content-Type": "application/json"})
    st2, js, raw = req(c, "POST", "/api/v2/volumes", json.dumps({"slug": "dv-1", "region": "ord", "capacity": "320MiB",
                                                                  "token": tok}), headers=jh)
    check("v2: a volume create answers a Deno volume (id, slug, capacity in bytes)",
          st2 == 201 and js["slug"] == "dv-1" and js["capacity"] == 320 << 20 and js["is_bootable"] is False, raw)
    st2, js, raw = req(c, "GET", "/api/v2/volumes?search=dv-", headers=auth)
    check("v2: the volume list is a bare array", st2 == 200 and [v["slug"] for v in js] == ["dv-1"], raw)
    st2, js, raw = req(c, "GET", "/api/v2/volumes/dv-2", headers=auth)
    check("v2: an unknown volume -> 404 (the SDK's null)", st2 == 404 and isinstance(js["code"], str), raw)
    st2, js, raw = req(c, "POST", "/api/v2/volumes", json.dumps({"slug": "dv-3", "capacity": "lots"}), headers=jh)
    check("v2: a capacity that is not a size -> 400 saying what one is", st2 == 400 and "512MiB" in js["message"], raw)
    st2, js, raw = req(c, "DELETE", "/api/v2/volumes/dv-1", headers=auth)
    check("v2: delete of the volume -> 200", st2 == 200, raw)
    st2, js, raw = req(c, "GET", "/api/v2/sandboxes?labels%5Bnone%5D=x", headers=auth)
    check("v2: the sandbox list with a label filter is a bare array", st2 == 200 and isinstance(js, list), raw)
    # A real create: 101 with the id at once; the socket answers while the sandbox is made.
    st, hd, s, rest = ws_handshake(port, "/api/v3/sandboxes/create",
                                   dict(auth, **{"x-deno-sandbox-config": cfg({"memory_mb": 768, "volumes": []})}))
    import re
    check("v3: a create answers 101 with x-deno-sandbox-id in the SDK's shape",
          " 101 " in st and re.match(r"^sbx_[a-z]{3}_[0-9a-hjkmnp-z]{20}$", hd.get("x-deno-sandbox-id", "")), (st, hd))
    got = []
    try:
        ws_send(s, "ping")
        ws_send(s, '{"jsonrpc":"2.0","id":0,"method":"nope","params":{}}')
        ws_send(s, '{"jsonrpc":"2.0","id":')
        ws_send(s, '{"jsonrpc":"2.0","id":7,"method":"stat"}')
        close = None
        while close is None:
            op, payload, rest = ws_recv(s, rest)
            if op == 8:
                close = (int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None, payload[2:].decode())
            elif op == 1:
                got.append(payload.decode())
    except (OSError, EOFError) as e:
        close = ("error", str(e))
    s.close()
    msgs = [g if g == "pong" else json.loads(g) for g in got]
    check("v3: text ping -> pong; unknown method -> -32601 with id 0; bad JSON -> -32700; no params -> -32602",
          "pong" in msgs and any(isinstance(m, dict) and m.get("id") == 0 and m["error"]["code"] == -32601 for m in msgs)
          and any(isinstance(m, dict) and m["error"]["code"] == -32700 for m in msgs)
          and any(isinstance(m, dict) and m.get("id") == 7 and m["error"]["code"] == -32602 for m in msgs), got)
    check("v3: a create that fails (no KVM here) closes the socket with 1011 and the reason",
          close[0] == 1011 and "could not be created" in close[1], close)
    sid = hd.get("x-deno-sandbox-id", "")
    st2, js, raw = req(u(), "GET", "/v1/sandboxes/%s/events" % sid)
    evs = js.get("events", []) if isinstance(js, dict) else []
    st3, js3, raw3 = req(u(), "GET", "/v1/sandboxes/%s/events?after=%d" % (sid, evs[0]["seq"] if evs else 0))
    check("events?after=SEQ pages past SEQ (the failed create's events)",
          st2 == 200 and len(evs) >= 2 and st3 == 200 and len(js3.get("events", [])) == len(evs) - 1, (raw, raw3))


def main():
    tmp = tempfile.mkdtemp(prefix="kd-api.")
    os.chmod(tmp, 0o755)
    state, sock, port = tmp + "/st", tmp + "/kd.sock", free_port()
    kd = start(state, sock, port)
    u = lambda: UnixHTTP(sock)
    t = lambda: http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        run_checks(state, sock, port, kd, u, t, tmp)
    finally:
        if kd.poll() is None:
            kd.send_signal(signal.SIGTERM)
            try:
                rc = kd.wait(20)
            except subprocess.TimeoutExpired:
                kd.kill()
                rc = "killed"
            check("kilnd stops on SIGTERM with status 0 and no sanitizer report", rc == 0,
                  open(state + ".log").read())
    print("# kilnd-api: %d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)


def run_checks(state, sock, port, kd, u, t, tmp):
    c = u()
    st, js, raw = req(c, "GET", "/v1/node")
    check("GET /v1/node over the unix socket answers the node's capacity",
          st == 200 and js["capacity_mb"] > 0 and js["cpus"] >= 1, raw)

    # Modes: owner-only state, registry and socket.
    check("the state dir is 0700, the registry 0600, the unix socket 0600",
          stat.S_IMODE(os.stat(state).st_mode) == 0o700 and
          stat.S_IMODE(os.stat(state + "/registry.db").st_mode) == 0o600 and
          stat.S_IMODE(os.stat(sock).st_mode) == 0o600,
          "%o %o %o" % (os.stat(state).st_mode, os.stat(state + "/registry.db").st_mode, os.stat(sock).st_mode))

    bad = [
        ('{"memory_mb": 600}', 400, "memory_mb 600 is out of range (768-4096)"),
        ('{"vcpus": 64}', 400, "vcpus 64 is out of range (1-8)"),
        ('{"memory": 1024}', 400, 'unknown field "memory"'),
        ('{"timeout": "5min"}', 400, 'has an unknown unit "min"'),
        ('{"memory_mb": 1024', 400, "malformed JSON at line 1"),
        ('{"memory_mb": "big"}', 400, "memory_mb must be an integer"),
        ('{"labels": {"a b": "c"}}', 400, 'label key "a b"'),
        ('[1,2]', 400, "JSON object"),
        ('{"secrets": {"A": {"hosts": ["10.0.0.1"], "value": "sk-zzz"}}}', 400, 'secrets "A": host "10.0.0.1"'),
        ('{"secrets": {"A": {"hosts": ["a.test"], "value": "sk-\\r\\nzzz"}}}', 400, 'secrets "A": value has a NUL, CR or LF'),
        ('{"env": {"A": "1"}, "secrets": {"A": {"hosts": ["a.test"], "value": "sk-zzz"}}}', 400, "remove it from env"),
    ]
    for body, want, msg in bad:
        st, js, raw = req(c, "POST", "/v1/sandboxes", body, {"Content-Type": "application/json"})
        check("POST /v1/sandboxes %s -> %d %s" % (body, want, msg),
              st == want and js and js.get("code") == "bad_request" and msg in js.get("message", ""), raw)

    check("no secret value in any 400 message", b"sk-" not in raw, raw)
    # A valid secret on an image without a disk (and so without a CA bundle) is refused saying why.
    st, js, raw = req(c, "POST", "/v1/sandboxes",
                      '{"image": "minimal", "secrets": {"TOKEN": {"hosts": ["api.example.com"], "value": "sk-yyy"}}}')
    check("secrets on the minimal image (or a node without networks) -> 400 with the reason, no value",
          st == 400 and ("secrets need" in js.get("message", "")) and b"sk-yyy" not in raw, raw)
    if os.path.exists(state + "/ca/ca.crt"):
        check("the node CA: ca.key and secrets.key 0600, ca.crt 0644",
              stat.S_IMODE(os.stat(state + "/ca/ca.key").st_mode) == 0o600 and
              stat.S_IMODE(os.stat(state + "/ca/secrets.key").st_mode) == 0o600 and
              stat.S_IMODE(os.stat(state + "/ca/ca.crt").st_mode) == 0o644, "")
    st, js, raw = req(c, "POST", "/v1/sandboxes", b"x" * 300000)
    check("a body over 256 KiB is refused with 413 before it is read",
          st == 413 and "request body is 300000 bytes (at most 262144)" in js["message"], raw)

    for path, want, msg in [("/v1/sandboxes/bogus", 400, "is malformed"),
                            ("/v1/sandboxes/sbx_loc_aaaaaaaaaaaaaaaaaaaa", 404, "no sandbox sbx_loc_aaaaaaaaaaaaaaaaaaaa"),
                            ("/v1/nothing", 404, "no such path"),
                            ("/v1/sandboxes/sbx_loc_aaaaaaaaaaaaaaaaaaaa/events", 404, "no sandbox")]:
        st, js, raw = req(c, "GET", path)
        check("GET %s -> %d" % (path, want), st == want and msg in js["message"], raw)
    st, js, raw = req(c, "PUT", "/v1/sandboxes")
    check("PUT /v1/sandboxes -> 405 naming the methods", st == 405 and "GET (list) or POST" in js["message"], raw)
    st, js, raw = req(c, "DELETE", "/v1/sandboxes/sbx_loc_aaaaaaaaaaaaaaaaaaaa")
    check("kill of an unknown sandbox -> 404", st == 404, raw)
    st, js, raw = req(c, "POST", "/v1/sandboxes/sbx_loc_aaaaaaaaaaaaaaaaaaaa/extend", '{"timeout":"10m"}')
    check("extend of an unknown sandbox -> 404", st == 404, raw)
    st, js, raw = req(c, "GET", "/v1/sandboxes?label=a%20b=1")
    check("a malformed label filter -> 400", st == 400 and "label key" in js["message"], raw)
    st, js, raw = req(c, "GET", "/v1/sandboxes?frob=1")
    check("an unknown query argument -> 400", st == 400 and "unknown query argument" in js["message"], raw)

    # Tokens: over the unix socket only; TCP wants one.
    st, js, raw = req(c, "POST", "/v1/tokens")
    check("POST /v1/tokens over the unix socket mints a ddo_ token",
          st == 201 and js["token"].startswith("ddo_") and js["id"].startswith("tok_"), raw)
    tok, tok_id = js["token"], js["id"]
    tc = t()
    st, js, raw = req(tc, "GET", "/v1/sandboxes")
    check("TCP without a token -> 401 naming the header", st == 401 and "Authorization: Bearer" in js["message"], raw)
    st, js, raw = req(tc, "GET", "/v1/sandboxes", headers={"Authorization": "Bearer ddo_wrong"})
    check("TCP with a wrong token -> 401", st == 401 and "invalid or revoked token" in js["message"], raw)
    st, js, raw = req(tc, "GET", "/v1/sandboxes", headers={"Authorization": "Bearer " + tok})
    check("TCP with the token -> 200", st == 200 and js["sandboxes"] == [], raw)
    st, js, raw = req(tc, "POST", "/v1/tokens", headers={"Authorization": "Bearer " + tok})
    check("tokens cannot be minted over TCP (403)", st == 403 and "unix socket" in js["message"], raw)
    st, js, raw = req(c, "GET", "/v1/tokens")
    check("GET /v1/tokens lists the token without its secret",
          st == 200 and js["tokens"][0]["id"] == tok_id and tok not in raw.decode(), raw)
    st, js, raw = req(c, "DELETE", "/v1/tokens/" + tok_id)
    check("DELETE /v1/tokens/ID revokes it", st == 200 and js["revoked"] is True, raw)
    tc = t()
    st, js, raw = req(tc, "GET", "/v1/sandboxes", headers={"Authorization": "Bearer " + tok})
    check("a revoked token -> 401", st == 401, raw)

    deno_checks(port, u)

    # Oversized headers: the connection is refused, and kilnd keeps serving.
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET /v1/node HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n")
    try:
        got = s.recv(4096)
    except OSError:
        got = b""
    s.close()
    st, js, raw = req(u(), "GET", "/v1/node")
    check("headers over 60 KiB get no answer but a closed connection, and kilnd serves the next client",
          not got.startswith(b"HTTP/1.1 200") and st == 200, got[:200])

    # A client that sends a byte at a time does not hold up the others.
    slow = socket.socket(socket.AF_UNIX)
    slow.connect(sock)
    slow.sendall(b"GET /v1/no")
    t0 = time.monotonic()
    st, js, raw = req(u(), "GET", "/v1/node")
    dt = time.monotonic() - t0
    check("a slow client (half a request line) does not stall another client", st == 200 and dt < 5, dt)
    for ch in b"de HTTP/1.1\r\nHost: x\r\n\r\n":
        slow.sendall(bytes([ch]))
        time.sleep(0.02)
    slow.settimeout(10)
    got = slow.recv(4096)
    slow.close()
    check("... and the slow client is answered when its request is whole", got.startswith(b"HTTP/1.1 200"), got[:200])

    # Hundreds of idle connections at once.
    idle = []
    for _ in range(300):
        x = socket.socket(socket.AF_UNIX)
        x.connect(sock)
        idle.append(x)
    t0 = time.monotonic()
    st, js, raw = req(u(), "GET", "/v1/node")
    check("300 idle connections open: another client is still served", st == 200 and time.monotonic() - t0 < 5, raw)
    for x in idle:
        x.close()

    # Metrics.
    st, _, raw = req(u(), "GET", "/metrics")
    text = raw.decode()
    check("GET /metrics is Prometheus text with sandboxes by state, creates, refusals, committed memory",
          st == 200 and 'kiln_sandboxes{state="running"}' in text and "kiln_creates_total" in text and
          "kiln_admission_refusals_total" in text and "kiln_memory_committed_mb" in text and
          "kiln_create_seconds_bucket" in text, text[:400])

    # Admission: a sandbox bigger than the node is refused with 503 and what is free.
    st, js, raw = req(u(), "GET", "/v1/node")
    free = js["free_mb"]
    if free < 4096:
        st, js, raw = req(u(), "POST", "/v1/sandboxes", '{"memory_mb": 4096}')
        check("a create that does not fit -> 503 saying what is free",
              st == 503 and js["code"] == "no_capacity" and "no room for 4096 MiB" in js["message"], raw)
    st, js, raw = req(u(), "POST", "/v1/sandboxes", '{"vcpus": %d}' % (js["vcpus_limit"] + 1)) \
        if js["vcpus_limit"] < 8 else (400, {"message": "vcpus"}, b"")
    check("vcpus above the node's limit -> 400 naming --vcpu-overcommit",
          st == 400 and "vcpu" in js["message"], raw)

    # A second kilnd on the same state dir is refused.
    p2 = subprocess.run([KILND, "--state-dir", state, "--listen", "unix:" + tmp + "/kd2.sock"],
                        capture_output=True, text=True, timeout=30)
    check("a second kilnd on the same state dir is refused, naming the lock",
          p2.returncode == 1 and "another kilnd already uses" in p2.stderr, p2.stderr)
    p3 = subprocess.run([KILND, "--state-dir", tmp + "/st3", "--listen", "unix:" + sock],
                        capture_output=True, text=True, timeout=30)
    check("a kilnd on a socket another one serves is refused",
          p3.returncode == 1 and "in use by another server" in p3.stderr, p3.stderr)
    p4 = subprocess.run([KILND, "--state-dir", "relative"], capture_output=True, text=True, timeout=30)
    check("bad flags name the fix", p4.returncode == 1 and "absolute path" in p4.stderr, p4.stderr)

    # kill -9 and restart: the registry survives, tokens included.
    st, js, raw = req(u(), "POST", "/v1/tokens")
    tok2 = js["token"]
    kd.kill()
    kd.wait()
    kd2 = start(state, sock, port)
    st, js, raw = req(t(), "GET", "/v1/sandboxes", headers={"Authorization": "Bearer " + tok2})
    check("after kill -9 and a restart the registry (and its tokens) is intact", st == 200, raw)
    kd2.send_signal(signal.SIGTERM)
    check("the restarted kilnd stops cleanly", kd2.wait(20) == 0, open(state + ".log").read())


if __name__ == "__main__":
    main()
