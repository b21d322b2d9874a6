"""Source images for `vdisk import`: untrusted files, opened once, detected
among safe formats only, refused if they name any other file.

Rules:
- A source is opened once (a regular file; never a FIFO, device or
  directory) and every later read goes through that open file: ours, and
  qemu-img's (as `/dev/fd/N`), so the path cannot be swapped under an
  import. A source whose size or change time moved before the import ends
  is refused (`PinnedSource.check_unchanged`).
- The format is the caller's, or detected from the file's own first and last
  bytes among the safe formats only (raw, qcow2, vmdk, vpc, vhdx). The magic
  of another format qemu knows is refused, never taken for raw. qemu-img is
  always told the format (`-f`): it never probes a source.
- A source may name no other file: a backing file, a qcow2 external data
  file, a vmdk descriptor or an extent outside the file itself, a VHD
  differencing disk are refused. We read the header ourselves first, before
  qemu-img opens the file (so a qemu that would follow the reference never
  gets the chance), then check `qemu-img info` again.
- "raw" is never checked for headers: its bytes are the disk, whatever they
  look like.
- qemu-img runs on a source only under `qemu_img.INFO_LIMITS` /
  `qemu_img.convert_limits` and never with -U: an image another process
  holds open for writing is refused by qemu-img's lock, not copied torn.
- Every refusal is an UnsupportedImage whose message is one line naming the
  source.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vdfarm.store import qemu_img
from vdfarm.store.errors import UnsupportedImage

SOURCE_FORMATS = ("raw", "qcow2", "vpc", "vhdx", "vmdk")
SECTOR = 512
HEAD_BYTES = 4096

QCOW_MAGIC = b"QFI\xfb"
QCOW2_INCOMPAT_DATA_FILE = 1 << 2
VMDK4_MAGIC = b"KDMV"
VMDK3_MAGIC = b"COWD"
VHDX_MAGIC = b"vhdxfile"
VPC_MAGIC = b"conectix"
VPC_DIFFERENCING = 4

# Formats qemu would recognise but the store never reads: (offset, magic, name).
# A file carrying one is refused rather than taken for raw by mistake.
OTHER_MAGICS = (
    (0, b"QED\x00", "qed"),
    (0, b"LUKS\xba\xbe", "luks"),
    (0, b"Bochs Virtual HD Image", "bochs"),
    (0, b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop", "cloop"),
    (0, b"WithoutFreeSpace", "parallels"),
    (0, b"WithouFreSpacExt", "parallels"),
    (64, struct.pack("<I", 0xBEDA107F), "vdi"),
)


def _refuse(source: Path, why: str) -> UnsupportedImage:
    return UnsupportedImage(f"source {source} {why}")


def detect_format(source: Path, head: bytes, tail: bytes) -> str:
    """The safe format whose magic HEAD (the first bytes) or TAIL (the last
    512 bytes) carries; "raw" when none does.

    Raises UnsupportedImage for the magic of a format the store does not read
    (qcow v1, qed, vdi, luks, dmg, VMDK3, a VMDK descriptor...).
    """
    if head.startswith(QCOW_MAGIC):
        version = struct.unpack_from(">I", head, 4)[0] if len(head) >= 8 else 0
        if version in (2, 3):
            return "qcow2"
        raise _refuse(source, f"is a qcow version {version} image (only qcow2 is supported)")
    if head.startswith(VMDK4_MAGIC):
        return "vmdk"
    if head.startswith(VMDK3_MAGIC):
        raise _refuse(source, "is an old VMDK3 (COWD) image, which is not supported")
    if _looks_like_vmdk_descriptor(head):
        raise _refuse(source, "is a VMDK descriptor: its data lives in other files")
    if head.startswith(VHDX_MAGIC):
        return "vhdx"
    if head.startswith(VPC_MAGIC) or tail.startswith(VPC_MAGIC):
        return "vpc"
    for offset, magic, name in OTHER_MAGICS:
        if head[offset : offset + len(magic)] == magic:
            raise _refuse(source, f"has unsupported format {name!r} (supported: {_supported()})")
    if tail.startswith(b"koly"):
        raise _refuse(source, f"has unsupported format 'dmg' (supported: {_supported()})")
    return "raw"


def _supported() -> str:
    return ", ".join(SOURCE_FORMATS)


def _looks_like_vmdk_descriptor(head: bytes) -> bool:
    text = head.lstrip()
    return text.startswith((b"# Disk DescriptorFile", b"version=")) or b"createType=" in head


def check_header(source: Path, fmt: str, head: bytes, tail: bytes) -> None:
    """Refuse a FMT header (HEAD: first bytes, TAIL: last 512) that names
    another file, read by us, without qemu-img.

    Raises UnsupportedImage (backing file, external data file, VMDK
    descriptor or descriptor-only sparse header, VHD differencing disk, a
    header that is not FMT's).
    """
    if fmt == "qcow2":
        _check_qcow2(source, head)
    elif fmt == "vmdk":
        _check_vmdk(source, head)
    elif fmt == "vpc":
        _check_vpc(source, head, tail)
    elif fmt == "vhdx" and not head.startswith(VHDX_MAGIC):
        raise _refuse(source, "is not a vhdx image (no vhdx signature)")


def _check_qcow2(source: Path, head: bytes) -> None:
    if len(head) < 72 or not head.startswith(QCOW_MAGIC):
        raise _refuse(source, "is not a qcow2 image (no qcow2 header)")
    version, backing_offset, backing_size = struct.unpack_from(">IQI", head, 4)
    if version not in (2, 3):
        raise _refuse(source, f"is a qcow version {version} image (only qcow2 is supported)")
    if backing_offset or backing_size:
        raise _refuse(source, "has a backing file; flatten it first with 'qemu-img convert'")
    if version >= 3:
        if len(head) < 80:
            raise _refuse(source, "has a truncated qcow2 header")
        incompatible = struct.unpack_from(">Q", head, 72)[0]
        if incompatible & QCOW2_INCOMPAT_DATA_FILE:
            raise _refuse(
                source,
                "keeps its data in an external data file, which is refused; "
                "convert it into a self-contained image first",
            )


def _check_vmdk(source: Path, head: bytes) -> None:
    if not head.startswith(VMDK4_MAGIC):
        raise _refuse(
            source,
            "is not a self-contained vmdk (a descriptor or split vmdk names other "
            "files); convert it to a monolithicSparse or streamOptimized vmdk first",
        )
    if len(head) < 20:
        raise _refuse(source, "has a truncated vmdk header")
    capacity = struct.unpack_from("<Q", head, 12)[0]
    if capacity == 0:  # qemu then reads extents from the embedded descriptor
        raise _refuse(source, "is a vmdk whose embedded descriptor names other files")


def _check_vpc(source: Path, head: bytes, tail: bytes) -> None:
    footer = head if head.startswith(VPC_MAGIC) else tail
    if not footer.startswith(VPC_MAGIC) or len(footer) < 64:
        raise _refuse(source, "is not a vpc (VHD) image (no VHD footer)")
    if struct.unpack_from(">I", footer, 60)[0] == VPC_DIFFERENCING:
        raise _refuse(source, "is a differencing VHD: its parent is another file")


def check_info(source: Path, fmt: str, opened_as: str, info: dict[str, Any]) -> int:
    """Check `qemu-img info` of SOURCE (opened by qemu-img as OPENED_AS, with
    format FMT); return its virtual size.

    Raises UnsupportedImage (other format, empty, backing file, data file,
    a vmdk extent or a child node that is not the file itself).
    """
    if info.get("format") != fmt:
        raise _refuse(source, f"is not a {fmt} image (qemu-img reads {info.get('format')!r})")
    size = info.get("virtual-size")
    if not isinstance(size, int) or size <= 0:
        raise _refuse(source, "is empty")
    backing = info.get("backing-filename") or info.get("full-backing-filename")
    if backing:
        raise _refuse(source, "has a backing file; flatten it first with 'qemu-img convert'")
    data = (info.get("format-specific") or {}).get("data") or {}
    if data.get("data-file"):
        raise _refuse(
            source,
            "keeps its data in an external data file, which is refused; "
            "convert it into a self-contained image first",
        )
    if fmt == "vmdk":
        extents = data.get("extents")
        if not extents or any(e.get("filename") != opened_as for e in extents):
            raise _refuse(source, "is a vmdk with extents in other files, which is refused")
    for child in info.get("children") or []:  # newer qemu-img lists child nodes
        if (child.get("info") or {}).get("filename") != opened_as:
            raise _refuse(source, f"opens another file as its {child.get('name')!r} node")
    return size


@dataclass
class PinnedSource:
    """A source image opened once; `fd_path` is how qemu-img reaches the same file."""

    path: Path
    fd: int
    opened: os.stat_result

    @property
    def fd_path(self) -> str:
        return f"/dev/fd/{self.fd}"

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def check_unchanged(self) -> None:
        """Raises UnsupportedImage if the file changed since it was opened."""
        now = os.fstat(self.fd)
        if (now.st_size, now.st_mtime_ns, now.st_ctime_ns) != (
            self.opened.st_size,
            self.opened.st_mtime_ns,
            self.opened.st_ctime_ns,
        ):
            raise _refuse(self.path, "changed while it was being imported")

    def close(self) -> None:
        os.close(self.fd)


def open_source(source: Path) -> PinnedSource:
    """Open SOURCE for reading, once. Never blocks on a FIFO.

    Raises UnsupportedImage (missing, unreadable, not a regular file).
    """
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise _refuse(source, f"is not a readable file ({exc.strerror})") from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _refuse(source, "is not a readable file (not a regular file)")
    return PinnedSource(path=source, fd=fd, opened=st)


@dataclass(frozen=True)
class SourceImage:
    """What an import reads: the format qemu-img is told and the virtual size."""

    format: str
    virtual_size: int


def inspect(pinned: PinnedSource, fmt: str | None) -> SourceImage:
    """Decide PINNED's format (FMT, or detected among the safe formats if
    None) and refuse it if it names any other file.

    Raises UnsupportedImage (unknown FMT, unsupported or unsafe image, empty,
    not whole sectors), QemuImgError (qemu-img cannot read it, or a limit
    stopped it).
    """
    source, size = pinned.path, pinned.opened.st_size
    if fmt is not None and fmt not in SOURCE_FORMATS:
        raise UnsupportedImage(f"unknown source format {fmt!r} (supported: {_supported()})")
    if size == 0:
        raise _refuse(source, "is empty")
    head = pinned.read(0, HEAD_BYTES)
    tail = pinned.read(max(size - SECTOR, 0), SECTOR)
    if fmt is not None:
        check_header(source, fmt, head, tail)
    else:
        fmt = detect_format(source, head, tail)
        try:
            check_header(source, fmt, head, tail)
        except UnsupportedImage as exc:
            raise UnsupportedImage(
                f"{exc} (it looks like {fmt}; if it is a raw disk image whose first "
                f"bytes only look like {fmt}, give the source format raw explicitly)"
            ) from None
    if fmt == "raw" and size % SECTOR:
        raise _refuse(source, f"is not a disk image: its size is not a multiple of {SECTOR} bytes")
    info = qemu_img.info(pinned.fd_path, fmt, limits=qemu_img.INFO_LIMITS, pass_fds=(pinned.fd,))
    return SourceImage(format=fmt, virtual_size=check_info(source, fmt, pinned.fd_path, info))
