#!/usr/bin/env python3
"""Flood a kiln-agent with EXECs whose output pipes outlive them.

  flood.py AGENT_PY_CLIENT UDS N

Each EXEC runs `sh -c 'sleep 120 &'`: the shell exits at once, the sleep
keeps its stdout and stderr open, so the process stays exited-but-attached
(no EXIT event until the pipes close). N of them go out pipelined on two
connections (at most 1024 live requests each), 50 at a time.

Prints one line: "ok=A limit=L other=O first-limit=MESSAGE", or
"agent-gone after A" when the agent closed the connections (a crash).
"""
import importlib.util
import os
import signal
import sys

spec = importlib.util.spec_from_file_location("apc", sys.argv[1])
apc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(apc)
uds, total = sys.argv[2], int(sys.argv[3])
K = apc.KT
conns = [apc.Agent(uds), apc.Agent(uds)]
fields = [(K["ARG"], apc.STR, a) for a in ("sh", "-c", "sleep 120 &")]
ok = limit = other = 0
first_limit = ""
groups = []                             # each process leads its own session
answered = set()
sent = 0
try:
    while sent < total:
        batch = []
        for c in conns:
            for _ in range(min(25, total - sent)):
                batch.append((c, c.request("EXEC", fields)))
                sent += 1
        for c, fid in batch:
            while (c, fid) not in answered:
                fr = c.recv()
                if fr is None:
                    raise EOFError
                t, _, _, i, p = fr
                if (c, i) in answered or t not in (apc.RESPONSE, apc.ERROR):
                    continue            # EOF/EVENT of an earlier process
                answered.add((c, i))
                if t == apc.RESPONSE:
                    ok += 1
                    groups.append(apc.get(apc.rec_dec(p), "PID"))
                    continue
                rec = apc.rec_dec(p)
                if apc.get(rec, "CODE") == apc.ERR_LIMIT:
                    limit += 1
                    first_limit = first_limit or apc.get(rec, "MESSAGE", b"").decode()
                else:
                    other += 1
except (EOFError, OSError):
    print("agent-gone after %d" % ok)
    sys.exit(1)
print("ok=%d limit=%d other=%d first-limit=%s" % (ok, limit, other, first_limit), flush=True)
# Keep the connections (and the processes attached) until told to go, then
# end the sleeps (the agent forgets exited processes, it does not kill them).
sys.stdin.read()
for g in groups:
    try:
        os.killpg(g, signal.SIGKILL)
    except OSError:
        pass
