#!/usr/bin/env python3
"""Rewrite one device's option argument in a kiln snapshot state file, keeping
the container valid (section and body lengths, CRC-32C), as a crafted snapshot
would. Usage: snapedit.py STATE DEVICE_INDEX NEW_SPEC (docs/snapshot.md)."""
import struct
import sys


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def main():
    path, index, spec = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
    data = open(path, "rb").read()
    magic, version, nsec, _ = struct.unpack_from("<8sIIQ", data, 0)
    assert magic == b"KILNSNAP", "not a state file"
    off, out, ndev = 24, [data[:24]], 0
    for _ in range(nsec):
        tag, length = struct.unpack_from("<IQ", data, off)
        body = data[off + 12:off + 12 + length]
        if tag == 5:  # DEVICE: kind blob, spec blob, then the rest
            if ndev == index:
                klen = struct.unpack_from("<I", body, 0)[0]
                slen = struct.unpack_from("<I", body, 4 + klen)[0]
                body = body[:4 + klen] + struct.pack("<I", len(spec)) + spec + body[8 + klen + slen:]
            ndev += 1
        out.append(struct.pack("<IQ", tag, len(body)) + body)
        off += 12 + length
    blob = b"".join(out)
    blob = blob[:16] + struct.pack("<Q", len(blob) - 24) + blob[24:]
    blob += struct.pack("<I", crc32c(blob))
    open(path, "wb").write(blob)
    print("version %d: device %d spec now %s" % (version, index, spec.decode()))


main()
