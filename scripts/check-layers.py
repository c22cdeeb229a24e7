#!/usr/bin/env python3
"""Fail when a source file includes a header from a layer above its own.

The layer order is written down here and nowhere else. Each folder may include
its own headers and those of the folders listed after it; a file belongs to
the longest folder prefix that names it. Folders not listed (tests/, bench/
programs' helpers...) are not checked unless they appear below.

Usage: scripts/check-layers.py [REPO]   (exit 1 and one line per upward include)
"""
import os
import re
import subprocess
import sys

# folder: the folders it may include from (besides itself).
# The VMM runs one way: lib <- vmm (core) <- devices <- snapshot <- vmm/kiln-vmm.
LAYERS = {
    "lib": [],
    "vmm": ["lib"],
    "devices": ["vmm", "lib"],
    "snapshot": ["devices", "vmm", "lib"],
    "vmm/kiln-vmm": ["snapshot", "devices", "vmm", "lib"],
    # The guest side shares only lib/ with the host.
    "guest": ["lib"],
    # kilnd's side: api -> scheduler -> (agent client, kiln-vmm processes).
    "scheduler": ["lib"],
    "api": ["scheduler", "lib"],
    # kilnd, the program: its HTTP front over the agent client and the scheduler.
    "api/kilnd": ["api", "scheduler", "lib"],
    "bench": ["api", "lib"],
}


def layer_of(path):
    best = None
    for folder in LAYERS:
        if path.startswith(folder + "/") and (best is None or len(folder) > len(best)):
            best = folder
    return best


def main():
    repo = sys.argv[1] if len(sys.argv) > 1 else "."
    files = subprocess.run(["git", "-C", repo, "ls-files", "-co", "--exclude-standard", "*.c", "*.h"],
                           check=True, capture_output=True, text=True).stdout.split()
    files = sorted(f for f in set(files) if os.path.isfile(os.path.join(repo, f)))
    by_name = {}
    for f in files:
        if f.endswith(".h"):
            by_name.setdefault(os.path.basename(f), []).append(f)
    bad = []
    for name, paths in sorted(by_name.items()):
        if len(paths) > 1 and any(layer_of(p) for p in paths):
            bad.append(f"header name {name} is not unique: {' '.join(paths)} (includes are by bare name)")
    inc = re.compile(r'^\s*#\s*include\s+"([^"]+)"')
    for f in files:
        mine = layer_of(f)
        if mine is None:
            continue
        with open(os.path.join(repo, f), encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                m = inc.match(line)
                if not m:
                    continue
                target = os.path.normpath(os.path.join(os.path.dirname(f), m.group(1)))
                if target not in files:
                    hits = by_name.get(os.path.basename(m.group(1)), [])
                    if len(hits) != 1:
                        continue  # a system or generated header, or reported above
                    target = hits[0]
                theirs = layer_of(target)
                if theirs is None or theirs == mine or theirs in LAYERS[mine]:
                    continue
                bad.append(f"{f}:{n}: includes {target}: {mine}/ may include only "
                           f"{', '.join(x + '/' for x in [mine] + LAYERS[mine])}")
    for b in bad:
        print("check-layers: " + b, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
