"""Boot files of a vDisk in the local store: the kernels and initramfs
images its versions boot over the network.

Rules:
- A boot file lives in its vDisk's directory under `<kind>-<sha256>`
  (`manifest.boot_file_name`): named by its content, so every version that
  boots the same kernel shares one file, and carrying boot files forward to
  a new version copies nothing.
- A file counts (is served, replicated, inventoried) only while the
  manifest's `boot_files` lists it and it is on disk, a regular file of the
  listed size (`held_boot_file`).
- A source is opened once by the caller (`open_boot_source`: a regular,
  non-empty file of at most MAX_BOOT_FILE_BYTES, never a symbolic link)
  and `copy_in` reads that open file: the bytes go to a `.new-*` temporary
  while the directory is `busy`, are hashed as they are copied, fsynced,
  and the file is renamed to its name. It is NOT listed: the caller lists
  it (`list_boot_files`) once the farm database knows it, so the
  replication round, which prunes listed files the database does not want,
  never sees a listed file the database has not recorded yet. A source
  whose size or change time moved during the copy is refused.
- `keep_boot_files` takes the files that are not kept out of the manifest
  first, then removes them; `discard_unlisted` removes copies that were
  never listed (a failed attach). Manifests are written atomically.
- A full disk is StoreFull; every other failure a StoreError (or
  BadBootSource for the source itself), each one line.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from vdfarm.store.chunks import forget_cache
from vdfarm.store.errors import StoreError, StoreFull
from vdfarm.store.locking import busy
from vdfarm.store.manifest import BOOT_KINDS, BootFile, Manifest, fsync_dir
from vdfarm.store.store import Store
from vdfarm.store.versions import _write

MAX_BOOT_FILE_BYTES = 1 << 30  # a kernel is ~10 MiB, an initramfs rarely past 200 MiB
COPY_BLOCK = 1 << 20
_FULL = (errno.ENOSPC, errno.EDQUOT)
_SOURCE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class BadBootSource(StoreError):
    """A boot file's source that cannot be taken (missing, a link, not a
    regular file, empty, too large, changed while copied)."""


@dataclass
class BootSource:
    """A boot file's source, opened once: KIND, the descriptor, the path
    the caller named (for messages) and what fstat said when it was opened."""

    kind: str
    fd: int
    shown: str
    opened: os.stat_result

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def check_source(kind: str, fd: int, shown: str) -> BootSource:
    """FD (open for reading) as the source of a KIND boot file; closes FD
    and raises BadBootSource if it is not a regular, non-empty file of at
    most MAX_BOOT_FILE_BYTES (or KIND is unknown)."""
    if kind not in BOOT_KINDS:
        os.close(fd)
        raise BadBootSource(f"unknown boot file kind {kind!r} (use {', '.join(BOOT_KINDS)})")
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "is not a regular file"
    elif st.st_size == 0:
        problem = "is empty"
    elif st.st_size > MAX_BOOT_FILE_BYTES:
        problem = f"is larger than {MAX_BOOT_FILE_BYTES >> 20} MiB"
    if problem is not None:
        os.close(fd)
        raise BadBootSource(f"{kind} file {shown} {problem}")
    return BootSource(kind=kind, fd=fd, shown=shown, opened=st)


def open_boot_source(kind: str, path: Path) -> BootSource:
    """PATH opened once as the source of a KIND boot file (never through a
    symbolic link at its last component; never blocking on a FIFO).

    Raises BadBootSource.
    """
    try:
        fd = os.open(path, _SOURCE_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise BadBootSource(f"{kind} file {path} does not exist") from exc
        if exc.errno == errno.ELOOP:
            raise BadBootSource(f"{kind} file {path} is a symbolic link: give the file") from exc
        raise BadBootSource(f"cannot open {kind} file {path}: {exc.strerror}") from exc
    return check_source(kind, fd, str(path))


def _unchanged(source: BootSource) -> bool:
    now = os.fstat(source.fd)
    before = source.opened
    return (now.st_size, now.st_mtime_ns, now.st_ctime_ns) == (
        before.st_size,
        before.st_mtime_ns,
        before.st_ctime_ns,
    )


def _copy_hashing(source: BootSource, out_fd: int) -> tuple[int, str]:
    """Copy SOURCE into OUT_FD; (bytes, sha256). Raises OSError, BadBootSource."""
    digest = hashlib.sha256()
    offset = 0
    while block := os.pread(source.fd, COPY_BLOCK, offset):
        offset += len(block)
        if offset > MAX_BOOT_FILE_BYTES:
            raise BadBootSource(f"{source.kind} file {source.shown} grew past the limit")
        digest.update(block)
        view = memoryview(block)
        while view:
            view = view[os.write(out_fd, view) :]
    os.fsync(out_fd)
    if offset != source.opened.st_size or not _unchanged(source):
        raise BadBootSource(f"{source.kind} file {source.shown} changed while it was copied")
    return offset, digest.hexdigest()


def copy_in(store: Store, vdisk: str, source: BootSource) -> BootFile:
    """Copy SOURCE into vDisk VDISK's directory as its boot file (under its
    content name; an identical file already there is replaced by the same
    bytes). The file is not listed in the manifest: see `list_boot_files`.

    Raises VdiskMissing, ManifestError, BadBootSource, StoreFull, StoreError.
    """
    directory = store.root / vdisk
    store.manifest(vdisk)  # the vDisk is here, its manifest readable
    temp = directory / f".new-{uuid.uuid4().hex[:12]}-{source.kind}"
    try:
        with busy(directory):
            out_fd = os.open(
                temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
            try:
                size, sha256 = _copy_hashing(source, out_fd)
            finally:
                os.close(out_fd)
            entry = BootFile(kind=source.kind, size=size, sha256=sha256)
            os.replace(temp, directory / entry.name)
        fsync_dir(directory)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        if exc.errno in _FULL:
            raise StoreFull(f"no room for the {source.kind} file of vDisk {vdisk}") from exc
        raise StoreError(
            f"cannot copy the {source.kind} file into vDisk {vdisk}: {exc.strerror}"
        ) from exc
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return entry


def held_boot_file(store: Store, vdisk: str, name: str, manifest: Manifest | None = None) -> Path:
    """The path of boot file NAME of vDisk VDISK if this store holds it:
    listed in the manifest (MANIFEST, or read now) and on disk, a regular
    file of the listed size.

    Raises VdiskMissing, ManifestError, StoreError (not held).
    """
    entry = (manifest or store.manifest(vdisk)).boot_file(name)
    if entry is None:
        raise StoreError(f"vDisk {vdisk} holds no boot file {name}")
    return on_disk(store, vdisk, entry)


def on_disk(store: Store, vdisk: str, entry: BootFile) -> Path:
    """ENTRY's path, if it is a regular file of its size. Raises StoreError."""
    path = store.root / vdisk / entry.name
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise StoreError(f"boot file {entry.name} of vDisk {vdisk} is not on disk") from exc
    if not stat.S_ISREG(st.st_mode) or st.st_size != entry.size:
        raise StoreError(f"boot file {entry.name} of vDisk {vdisk} is not a file of {entry.size} B")
    return path


def list_boot_files(store: Store, vdisk: str, files: Iterable[BootFile]) -> Manifest:
    """Add FILES (on disk under their names, copied or fetched) to vDisk
    VDISK's manifest; those listed already stay as they are.

    Raises VdiskMissing, ManifestError, StoreError (a file not on disk with
    its size; the manifest cannot be written).
    """
    manifest = store.manifest(vdisk)
    added = [f for f in dict.fromkeys(files) if manifest.boot_file(f.name) is None]
    if not added:
        return manifest
    for entry in added:
        on_disk(store, vdisk, entry)
    updated = replace(manifest, boot_files=manifest.boot_files + tuple(added))
    _write(store, vdisk, updated)
    return updated


def remove_boot_files(store: Store, vdisk: str, names: Collection[str]) -> None:
    """Remove the files NAMES (boot files no manifest lists now) of vDisk
    VDISK's directory, with their cached chunk lists. Raises nothing."""
    for name in names:
        path = store.root / vdisk / name
        with contextlib.suppress(OSError):
            path.unlink()
        forget_cache(path)


def keep_boot_files(store: Store, vdisk: str, keep: Collection[str]) -> list[str]:
    """Take every boot file of vDisk VDISK whose name is not in KEEP out of
    its manifest, then off the disk; return their names.

    Raises VdiskMissing, ManifestError, StoreError (manifest not written).
    """
    manifest = store.manifest(vdisk)
    gone = [b.name for b in manifest.boot_files if b.name not in keep]
    if not gone:
        return []
    kept = tuple(b for b in manifest.boot_files if b.name in keep)
    _write(store, vdisk, replace(manifest, boot_files=kept))
    remove_boot_files(store, vdisk, gone)
    return gone


def discard_unlisted(store: Store, vdisk: str, files: Iterable[BootFile]) -> None:
    """Remove FILES from vDisk VDISK's directory unless its manifest lists
    them (copies an attach made before it failed). Raises nothing."""
    try:
        manifest = store.manifest(vdisk)
    except StoreError:
        return
    remove_boot_files(store, vdisk, [f.name for f in files if manifest.boot_file(f.name) is None])
