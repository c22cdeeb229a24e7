#!/usr/bin/env python3
"""Write hostile kernel images for kiln-vmm's bad-input tests.

usage: mkbad.py VMLINUX BZIMAGE OUTDIR
Writes OUTDIR/{elf-low,elf-high,elf-truncated,bz-old,bz-truncated}.
"""
import struct
import sys

vmlinux, bzimage, out = sys.argv[1:4]
elf = bytearray(open(vmlinux, 'rb').read())
bz = bytearray(open(bzimage, 'rb').read())

e_phoff, = struct.unpack_from('<Q', elf, 0x20)
e_phnum, = struct.unpack_from('<H', elf, 0x38)


def first_load(img):
    for i in range(e_phnum):
        off = e_phoff + i * 56
        if struct.unpack_from('<I', img, off)[0] == 1:
            return off
    raise SystemExit('no PT_LOAD in ' + vmlinux)


def with_paddr(paddr):
    img = bytearray(elf)
    struct.pack_into('<Q', img, first_load(img) + 0x18, paddr)
    return img


# A segment over the boot structures below 1 MiB, and one beyond guest RAM.
open(out + '/elf-low', 'wb').write(with_paddr(0x7000))
open(out + '/elf-high', 'wb').write(with_paddr(0x7f000000000))
open(out + '/elf-truncated', 'wb').write(elf[:len(elf) // 3])
old = bytearray(bz)
struct.pack_into('<H', old, 0x206, 0x0208)
open(out + '/bz-old', 'wb').write(old)
open(out + '/bz-truncated', 'wb').write(bz[:0x300])
