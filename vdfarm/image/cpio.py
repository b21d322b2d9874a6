"""A writer and a reader for the cpio "newc" format (what the kernel unpacks as initramfs).

Rules: pure bytes in, bytes out; no file system access. Entries are written in
the order given, so parents must come before their children. Every header
field is 8 hex digits; names and data are padded to 4 bytes; the archive ends
with the `TRAILER!!!` entry. Ownership is always root (uid 0, gid 0) and mtime
is fixed, so the same entries give the same bytes.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

NEWC_MAGIC = b"070701"
TRAILER_NAME = "TRAILER!!!"
_HEADER_FIELDS = 13  # after the magic: ino .. check
_HEADER_SIZE = len(NEWC_MAGIC) + 8 * _HEADER_FIELDS


class CpioFormatError(ValueError):
    """Bytes that are not a valid newc archive were given to `read_newc`."""


@dataclass(frozen=True, slots=True)
class CpioEntry:
    """One archive member. `data` is the file body, or the target of a symlink."""

    name: str
    mode: int
    data: bytes = b""
    rdev_major: int = 0
    rdev_minor: int = 0

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def is_char_device(self) -> bool:
        return stat.S_ISCHR(self.mode)


def directory(name: str, perm: int = 0o755) -> CpioEntry:
    return CpioEntry(name, stat.S_IFDIR | perm)


def regular_file(name: str, data: bytes, perm: int = 0o644) -> CpioEntry:
    return CpioEntry(name, stat.S_IFREG | perm, data)


def symlink(name: str, target: str) -> CpioEntry:
    return CpioEntry(name, stat.S_IFLNK | 0o777, target.encode())


def char_device(name: str, major: int, minor: int, perm: int = 0o600) -> CpioEntry:
    return CpioEntry(name, stat.S_IFCHR | perm, b"", major, minor)


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _header(ino: int, entry: CpioEntry, name_size: int) -> bytes:
    nlink = 2 if entry.is_dir else 1
    fields = (
        ino,
        entry.mode,
        0,
        0,
        nlink,
        0,
        len(entry.data),
        0,
        0,
        entry.rdev_major,
        entry.rdev_minor,
        name_size,
        0,
    )
    return NEWC_MAGIC + b"".join(b"%08X" % field for field in fields)


def _member(ino: int, entry: CpioEntry) -> bytes:
    name = entry.name.lstrip("/").encode() + b"\0"
    head = _header(ino, entry, len(name)) + name
    return head + _pad4(len(head)) + entry.data + _pad4(len(entry.data))


def write_newc(entries: list[CpioEntry]) -> bytes:
    """Return a complete newc archive holding `entries`, then the trailer.

    Raises ValueError for an entry with an empty name or a duplicate name.
    """
    seen: set[str] = set()
    parts = []
    for ino, entry in enumerate(entries, start=1):
        name = entry.name.lstrip("/")
        if not name or name in seen:
            raise ValueError(f"cpio entry name empty or repeated: {entry.name!r}")
        seen.add(name)
        parts.append(_member(ino, entry))
    parts.append(_member(0, CpioEntry(TRAILER_NAME, 0)))
    return b"".join(parts)


def _parse_header(raw: bytes, offset: int) -> tuple[int, ...]:
    if raw[offset : offset + 6] != NEWC_MAGIC:
        raise CpioFormatError(f"no newc magic at offset {offset}")
    fields_raw = raw[offset + 6 : offset + _HEADER_SIZE]
    if len(fields_raw) != 8 * _HEADER_FIELDS:
        raise CpioFormatError(f"truncated header at offset {offset}")
    try:
        return tuple(int(fields_raw[i : i + 8], 16) for i in range(0, len(fields_raw), 8))
    except ValueError as exc:
        raise CpioFormatError(f"bad hex field in header at offset {offset}") from exc


def read_newc(raw: bytes) -> list[CpioEntry]:
    """Parse a newc archive back into entries (the trailer is not returned).

    Raises CpioFormatError if the bytes are not a complete newc archive.
    """
    entries: list[CpioEntry] = []
    offset = 0
    while True:
        fields = _parse_header(raw, offset)
        mode, file_size, rdev_major, rdev_minor, name_size = (
            fields[1],
            fields[6],
            fields[9],
            fields[10],
            fields[11],
        )
        name_start = offset + _HEADER_SIZE
        name_end = name_start + name_size
        if name_size == 0 or name_end > len(raw) or raw[name_end - 1] != 0:
            raise CpioFormatError(f"bad name at offset {name_start}")
        name = raw[name_start : name_end - 1].decode()
        data_start = name_end + (-name_end % 4)
        data_end = data_start + file_size
        if data_end > len(raw):
            raise CpioFormatError(f"truncated data for {name!r}")
        if name == TRAILER_NAME:
            return entries
        entries.append(CpioEntry(name, mode, raw[data_start:data_end], rdev_major, rdev_minor))
        offset = data_end + (-data_end % 4)
