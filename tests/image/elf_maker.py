"""Make small, well-formed 64-bit little-endian ELF files for the parser's tests.

Layout: the ELF header, three program headers (PT_LOAD over the whole file,
PT_INTERP if an interpreter is given, PT_DYNAMIC), the interpreter string,
the dynamic string table, then the dynamic entries. The one PT_LOAD maps
file offset X to address BASE + X, so DT_STRTAB holds an address, as in real
files. Written here from the ELF specification, not taken from a toolchain.
"""

from __future__ import annotations

import struct

BASE = 0x400000
EM_X86_64 = 62
EM_AARCH64 = 183
PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_SONAME, DT_RPATH, DT_RUNPATH = 1, 5, 10, 14, 15, 29


def make_elf(
    interpreter: str | None = None,
    needed: tuple[str, ...] = (),
    *,
    soname: str | None = None,
    runpath: str | None = None,
    rpath: str | None = None,
    machine: int = EM_X86_64,
    dynamic: bool = True,
    strtab_address: int | None = None,
) -> bytes:
    """An ELF file recording these loader facts (no code: it is never run).
    `strtab_address` overrides DT_STRTAB, to make a broken file."""
    phnum = 3
    cursor = 64 + phnum * 56
    interp_bytes = interpreter.encode() + b"\0" if interpreter else b""
    interp_off = cursor
    cursor += len(interp_bytes)
    strtab = bytearray(b"\0")
    dyn: list[tuple[int, int]] = []

    def add_string(text: str) -> int:
        offset = len(strtab)
        strtab.extend(text.encode() + b"\0")
        return offset

    for name in needed:
        dyn.append((DT_NEEDED, add_string(name)))
    for tag, value in ((DT_SONAME, soname), (DT_RUNPATH, runpath), (DT_RPATH, rpath)):
        if value is not None:
            dyn.append((tag, add_string(value)))
    strtab_off = cursor
    cursor += len(strtab)
    cursor += -cursor % 8
    address = BASE + strtab_off if strtab_address is None else strtab_address
    dyn += [(DT_STRTAB, address), (DT_STRSZ, len(strtab)), (0, 0)]
    dyn_off = cursor
    dyn_bytes = b"".join(struct.pack("<qQ", tag, value) for tag, value in dyn)
    size = dyn_off + len(dyn_bytes)

    def phdr(kind: int, offset: int, length: int) -> bytes:
        if not length:
            return struct.pack("<IIQQQQQQ", 0, 0, 0, 0, 0, 0, 0, 0)  # PT_NULL
        return struct.pack("<IIQQQQQQ", kind, 4, offset, BASE + offset, 0, length, length, 8)

    ident = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9
    header = ident + struct.pack(
        "<HHIQQQIHHHHHH", 3, machine, 1, 0, 64, 0, 0, 64, 56, phnum, 64, 0, 0
    )
    phdrs = (
        phdr(PT_LOAD, 0, size)
        + phdr(PT_INTERP, interp_off, len(interp_bytes))
        + phdr(PT_DYNAMIC, dyn_off, len(dyn_bytes) if dynamic else 0)
    )
    body = header + phdrs + interp_bytes + bytes(strtab)
    body += b"\0" * (dyn_off - len(body))
    return body + dyn_bytes
