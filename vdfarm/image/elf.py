"""Read what the dynamic loader reads from an ELF file: its interpreter and the libraries it needs.

Rules: pure bytes in, an `ElfInfo` out; no file system access, nothing run
(unlike `ldd`, which may execute the program it is asked about). Only 64-bit
little-endian ELF is understood (what an x86-64 initramfs holds). Everything
comes from the program headers, as the loader sees it: PT_INTERP, and the
PT_DYNAMIC entries DT_NEEDED, DT_SONAME, DT_RPATH and DT_RUNPATH, whose
strings live in DT_STRTAB (a virtual address, mapped to a file offset through
the PT_LOAD segments). Section headers are never needed, so stripped files
parse the same. Every offset is bounds-checked: bad or truncated input raises
`ElfFormatError`, never IndexError or struct.error.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

ELF_MAGIC = b"\x7fELF"
_ELFCLASS64 = 2
_ELFDATA2LSB = 1
EM_X86_64 = 62

_PT_LOAD, _PT_DYNAMIC, _PT_INTERP = 1, 2, 3
_DT_NULL, _DT_NEEDED, _DT_STRTAB, _DT_STRSZ = 0, 1, 5, 10
_DT_SONAME, _DT_RPATH, _DT_RUNPATH = 14, 15, 29

_EHDR_SIZE = 64
_PHDR_SIZE = 56
_DYN_SIZE = 16


class ElfFormatError(ValueError):
    """The bytes are not a well-formed 64-bit little-endian ELF file."""


@dataclass(frozen=True, slots=True)
class ElfInfo:
    """What the dynamic loader needs to know about one ELF file."""

    machine: int  # e_machine, e.g. EM_X86_64
    interpreter: str | None  # PT_INTERP, e.g. /lib64/ld-linux-x86-64.so.2; None if static
    needed: tuple[str, ...]  # DT_NEEDED names, in order
    soname: str | None = None
    rpath: tuple[str, ...] = ()  # DT_RPATH, split on ':'
    runpath: tuple[str, ...] = ()  # DT_RUNPATH, split on ':'

    @property
    def is_dynamic(self) -> bool:
        """True if the file is loaded by an interpreter or needs shared libraries."""
        return self.interpreter is not None or bool(self.needed)


@dataclass(frozen=True, slots=True)
class _Segment:
    kind: int
    offset: int
    vaddr: int
    filesz: int


def _unpack(fmt: str, data: bytes, offset: int) -> tuple[int, ...]:
    if offset < 0 or offset + struct.calcsize(fmt) > len(data):
        raise ElfFormatError(f"truncated ELF file: {fmt} at offset {offset}")
    return struct.unpack_from(fmt, data, offset)


def _segments(data: bytes) -> list[_Segment]:
    (phoff,) = _unpack("<Q", data, 0x20)
    phentsize, phnum = _unpack("<HH", data, 0x36)
    if phnum and phentsize < _PHDR_SIZE:
        raise ElfFormatError(f"program header entries of {phentsize} bytes")
    segments = []
    for index in range(phnum):
        base = phoff + index * phentsize
        (kind,) = _unpack("<I", data, base)
        offset, vaddr = _unpack("<QQ", data, base + 8)
        (filesz,) = _unpack("<Q", data, base + 32)
        segments.append(_Segment(kind, offset, vaddr, filesz))
    return segments


def _c_string(data: bytes, start: int, end: int) -> str:
    """The NUL-terminated string at `start`, which must end before `end`."""
    if not 0 <= start < end <= len(data):
        raise ElfFormatError(f"string at offset {start} outside its table")
    stop = data.find(b"\0", start, end)
    if stop < 0:
        raise ElfFormatError(f"string at offset {start} is not terminated")
    return data[start:stop].decode("utf-8", errors="surrogateescape")


def _file_offset(segments: list[_Segment], vaddr: int) -> int:
    for seg in segments:
        if seg.kind == _PT_LOAD and seg.vaddr <= vaddr < seg.vaddr + seg.filesz:
            return seg.offset + (vaddr - seg.vaddr)
    raise ElfFormatError(f"address {vaddr:#x} is in no loaded segment")


def _dynamic_entries(data: bytes, dynamic: _Segment) -> list[tuple[int, int]]:
    entries = []
    for index in range(dynamic.filesz // _DYN_SIZE):
        tag, value = _unpack("<qQ", data, dynamic.offset + index * _DYN_SIZE)
        if tag == _DT_NULL:
            break
        entries.append((tag, value))
    return entries


def _paths(text: str | None) -> tuple[str, ...]:
    return tuple(p for p in text.split(":") if p) if text else ()


def parse_elf(data: bytes) -> ElfInfo:
    """The interpreter, needed libraries and search paths recorded in `data`.

    Raises ElfFormatError if `data` is not a well-formed 64-bit
    little-endian ELF file.
    """
    if len(data) < _EHDR_SIZE or data[:4] != ELF_MAGIC:
        raise ElfFormatError("not an ELF file")
    if data[4] != _ELFCLASS64 or data[5] != _ELFDATA2LSB:
        raise ElfFormatError("not a 64-bit little-endian ELF file")
    (machine,) = _unpack("<H", data, 0x12)
    segments = _segments(data)
    interpreter = None
    for seg in segments:
        if seg.kind == _PT_INTERP:
            interpreter = _c_string(data, seg.offset, seg.offset + seg.filesz)
    dynamic = next((seg for seg in segments if seg.kind == _PT_DYNAMIC), None)
    if dynamic is None:
        return ElfInfo(machine, interpreter, ())
    entries = _dynamic_entries(data, dynamic)
    table = dict(entries)  # the last of a repeated tag wins; only NEEDED repeats
    if _DT_STRTAB not in table:
        raise ElfFormatError("dynamic section without a string table")
    strtab = _file_offset(segments, table[_DT_STRTAB])
    strtab_end = min(len(data), strtab + table.get(_DT_STRSZ, len(data)))

    def string(tag: int) -> str | None:
        return _c_string(data, strtab + table[tag], strtab_end) if tag in table else None

    needed = tuple(
        _c_string(data, strtab + value, strtab_end) for tag, value in entries if tag == _DT_NEEDED
    )
    return ElfInfo(
        machine,
        interpreter,
        needed,
        soname=string(_DT_SONAME),
        rpath=_paths(string(_DT_RPATH)),
        runpath=_paths(string(_DT_RUNPATH)),
    )
