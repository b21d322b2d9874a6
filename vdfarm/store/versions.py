"""Version files of one vDisk in the local store: open a delta, seal, unseal,
drop, fold (merge), retire and purge, export flattened.

Rules:
- Every file above the base is a qcow2 whose backing file is its parent's
  RELATIVE name with the backing format recorded, so `qemu-img info
  --backing-chain` and `qemu-img check` work on every file, wherever the
  store sits.
- A new or rewritten file is built under a hidden temporary name (`.new-*`,
  `.merge-*`) in the vDisk's directory, checked, fsynced, then published with
  os.replace; the manifest is rewritten (atomically) right after. While a
  temporary exists its builder holds `store.busy` on the vDisk's directory,
  so `Store.remove_leftovers` never takes it for a crash's leftover.
- An export is fsynced (file, then its directory) before it is reported. A reader
  never sees a half-built file or a half-merged chain.
- Folding replaces the kept version's file in place (same name, same content),
  so files above it keep their backing names and hashes. The files that leave
  the chain are *retired*, never deleted here: `purge_retired` removes them
  once the caller says no connected device may still read them.
- Nothing here decides policy (which version, who is connected, what may be
  merged): the service layer does, and checks before calling.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from vdfarm.store import qemu_img
from vdfarm.store.chunks import chunk_list, forget_cache
from vdfarm.store.errors import StoreError, VdiskExists
from vdfarm.store.locking import busy
from vdfarm.store.manifest import (
    Manifest,
    ManifestFile,
    RetiredFile,
    fsync_dir,
    write_manifest,
)
from vdfarm.store.progress import Progress, fraction_to_bytes, silent
from vdfarm.store.store import Store, sha256_of

EXPORT_FORMATS = ("raw", "qcow2", "vpc", "vhdx", "vmdk")


def _temp_name(prefix: str, name: str) -> str:
    return f".{prefix}-{uuid.uuid4().hex[:12]}-{name}"


def _write(store: Store, name: str, manifest: Manifest) -> None:
    try:
        write_manifest(store.root / name, manifest)
    except OSError as exc:
        raise StoreError(f"cannot write the manifest of vDisk {name}: {exc.strerror}") from exc


def _virtual_size(manifest: Manifest, top_path: Path) -> int:
    if manifest.virtual_size is not None:
        return manifest.virtual_size
    # never probed: a raw file's bytes are a device's, and may look like qcow2
    size = qemu_img.info(top_path, manifest.top.format).get("virtual-size")
    if not isinstance(size, int):
        raise StoreError(f"qemu-img reports no size for {top_path.name}")
    return size


def _sealed_entry(path: Path, entry: ManifestFile, progress: Progress = silent) -> ManifestFile:
    """ENTRY with the size and sha256 of the file at PATH (fsynced first;
    PROGRESS hears the hash)."""
    try:
        with open(path, "rb+") as fh:
            os.fsync(fh.fileno())
        # A file under its real name: one pass hashes it and caches the chunk
        # list peers will ask for. A temporary (a fold) is hashed alone: its
        # chunk list would be cached under a name that goes away.
        digest = (
            sha256_of(path, progress)
            if path.name.startswith(".")
            else chunk_list(path, progress=progress).sha256
        )
        return replace(entry, size=path.stat().st_size, sha256=digest)
    except OSError as exc:
        raise StoreError(f"cannot read {path.name}: {exc.strerror}") from exc


def file_path(store: Store, name: str, file_name: str) -> Path:
    """Absolute path of FILE_NAME in vDisk NAME's directory (nothing is checked)."""
    return store.root / name / file_name


def open_delta(store: Store, name: str, file_name: str, version: int) -> ManifestFile:
    """Add an empty, unsealed qcow2 FILE_NAME (version VERSION) on top of vDisk
    NAME's chain; returns its manifest entry.

    Raises VdiskMissing, ManifestError, StoreError (top not sealed, name in
    use, disk full), QemuImgError.
    """
    manifest = store.manifest(name)
    top = manifest.top
    if not top.sealed:
        raise StoreError(f"the top file {top.name} of vDisk {name} is still open")
    final = file_path(store, name, file_name)
    if final.exists() or manifest.file(file_name) or file_name in _retired_names(manifest):
        raise VdiskExists(f"file {file_name} already exists in vDisk {name}")
    size = _virtual_size(manifest, file_path(store, name, top.name))
    temp = file_path(store, name, _temp_name("new", file_name))
    entry = ManifestFile(
        name=file_name, format="qcow2", size=None, sha256=None, parent=top.name, version=version
    )
    try:
        with busy(store.root / name):
            qemu_img.create_overlay(temp, top.name, top.format)
            os.replace(temp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    try:
        _write(store, name, replace(manifest, files=(*manifest.files, entry), virtual_size=size))
    except BaseException:
        final.unlink(missing_ok=True)
        raise
    return entry


def _retired_names(manifest: Manifest) -> list[str]:
    return [r.name for r in manifest.retired]


def seal_top(store: Store, name: str, progress: Progress = silent) -> ManifestFile:
    """Check (freeing clusters a crash leaked), fsync and hash vDisk NAME's
    unsealed top file (PROGRESS hears the hash); record it sealed.
    A top already sealed with the file's current hash is returned as it is
    (a repeat after a failed database commit).

    Raises VdiskMissing, ManifestError, StoreError (the base; a sealed top
    that changed; unreadable), QemuImgError (the file is corrupt).
    """
    manifest = store.manifest(name)
    top = manifest.top
    path = file_path(store, name, top.name)
    if len(manifest.files) == 1:
        raise StoreError(f"vDisk {name} has only its base file")
    if top.sealed:
        if _sealed_entry(path, top, progress) == top:
            return top
        raise StoreError(f"the sealed file {top.name} of vDisk {name} has changed")
    qemu_img.check(path, top.format, repair_leaks=True)  # sealed files stay clean forever
    sealed = _sealed_entry(path, top, progress)
    _write(store, name, replace(manifest, files=(*manifest.files[:-1], sealed)))
    return sealed


def unseal_top(store: Store, name: str) -> ManifestFile:
    """Mark vDisk NAME's top file (never the base) open again; no-op if it is open.

    Raises VdiskMissing, ManifestError, StoreError.
    """
    manifest = store.manifest(name)
    top = manifest.top
    if len(manifest.files) == 1:
        raise StoreError(f"the base file {top.name} of vDisk {name} cannot be unsealed")
    if not top.sealed:
        return top
    opened = replace(top, size=None, sha256=None)
    _write(store, name, replace(manifest, files=(*manifest.files[:-1], opened)))
    return opened


def drop_top(store: Store, name: str) -> ManifestFile:
    """Remove vDisk NAME's top file (never the base): manifest first, then the file.

    Raises VdiskMissing, ManifestError, StoreError.
    """
    manifest = store.manifest(name)
    if len(manifest.files) == 1:
        raise StoreError(f"vDisk {name} has only its base file")
    top = manifest.top
    _write(store, name, replace(manifest, files=manifest.files[:-1]))
    top_path = file_path(store, name, top.name)
    top_path.unlink(missing_ok=True)
    forget_cache(top_path)
    return top


def fold(
    store: Store,
    name: str,
    keep: str,
    *,
    new_base: bool,
    retired_at: datetime,
    progress: Progress = silent,
) -> tuple[ManifestFile, tuple[RetiredFile, ...]]:
    """Merge the chain under file KEEP into KEEP itself: onto the base
    (merged updates) or into a new full qcow2 base (NEW_BASE). KEEP's content
    is unchanged; the files that leave the chain are retired at RETIRED_AT.
    PROGRESS hears the fold ("merge", in bytes of the disk) and the hash.
    Returns KEEP's new entry and the newly retired files.

    Raises VdiskMissing, ManifestError, StoreError (KEEP not in the chain or
    unsealed, nothing to fold, disk full), QemuImgError.
    """
    manifest = store.manifest(name)
    index = next((i for i, f in enumerate(manifest.files) if f.name == keep), None)
    if index is None or not manifest.files[index].sealed:
        raise StoreError(f"file {keep} of vDisk {name} is not a sealed file of its chain")
    leaving = manifest.files[:index] if new_base else manifest.files[1:index]
    if not leaving:
        raise StoreError(f"nothing under {keep} to merge in vDisk {name}")
    kept, base = manifest.files[index], manifest.files[0]
    size = _virtual_size(manifest, file_path(store, name, manifest.top.name))
    with busy(store.root / name):
        built = _build_folded(
            store,
            name,
            kept,
            None if new_base else base,
            fraction_to_bytes(progress, "merge", size),
        )
        try:
            entry = _sealed_entry(
                built,
                replace(kept, format="qcow2", parent=None if new_base else base.name),
                progress,
            )
        except BaseException:
            built.unlink(missing_ok=True)
            raise
        os.replace(built, file_path(store, name, kept.name))
    fsync_dir(store.root / name)
    retired = tuple(RetiredFile(f.name, f.version, retired_at) for f in leaving)
    files = ((entry,) if new_base else (base, entry)) + manifest.files[index + 1 :]
    _write(
        store,
        name,
        replace(manifest, files=files, retired=manifest.retired + retired, virtual_size=size),
    )
    return entry, retired


def _build_folded(
    store: Store,
    name: str,
    kept: ManifestFile,
    base: ManifestFile | None,
    on_fraction: Callable[[float], None],
) -> Path:
    """A checked temp file with KEEP's content: on BASE, or standalone if BASE
    is None; ON_FRACTION hears how far qemu-img got."""
    source = file_path(store, name, kept.name)
    temp = file_path(store, name, _temp_name("merge", kept.name))
    try:
        if base is None:
            qemu_img.convert(
                source, temp, src_format=kept.format, dst_format="qcow2", on_fraction=on_fraction
            )
        else:
            on_fraction(0.0)
            shutil.copyfile(source, temp)
            qemu_img.rebase(temp, base.name, base.format, on_fraction=on_fraction)
        qemu_img.check(temp, "qcow2")
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise StoreError(f"cannot merge vDisk {name}: {exc.strerror}") from exc
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def purge_retired(
    store: Store, name: str, still_needed: Callable[[RetiredFile], bool]
) -> list[str]:
    """Delete vDisk NAME's retired files for which STILL_NEEDED is False;
    return their names. Files first, then the manifest.

    Raises VdiskMissing, ManifestError, StoreError.
    """
    manifest = store.manifest(name)
    doomed = [r for r in manifest.retired if not still_needed(r)]
    if not doomed:
        return []
    for retired in doomed:
        retired_path = file_path(store, name, retired.name)
        retired_path.unlink(missing_ok=True)
        forget_cache(retired_path)
    kept = tuple(r for r in manifest.retired if r not in doomed)
    _write(store, name, replace(manifest, retired=kept))
    return [r.name for r in doomed]


def export_flat(
    store: Store, name: str, file_name: str, fmt: str, out: Path, progress: Progress = silent
) -> int:
    """Write the content seen through FILE_NAME (and its backing chain) of vDisk
    NAME as a standalone FMT image at OUT (built under a temp name, then
    renamed); return OUT's size in bytes. PROGRESS hears the copy ("copy",
    in bytes of the disk).

    OUT (its data, then the directory entry) is fsynced before this returns.
    Raises VdiskMissing, ManifestError, StoreError (unknown format, OUT
    exists, unwritable, fsync failed), QemuImgError.
    """
    if fmt not in EXPORT_FORMATS:
        raise StoreError(f"unknown export format {fmt!r} (use {', '.join(EXPORT_FORMATS)})")
    manifest = store.manifest(name)
    entry = manifest.file(file_name)
    if entry is None:
        raise StoreError(f"file {file_name} is not in vDisk {name}'s chain")
    size = _virtual_size(manifest, file_path(store, name, manifest.top.name))
    out = Path(out).absolute()
    if out.exists():
        raise VdiskExists(f"{out} already exists")
    temp = out.with_name(_temp_name("export", out.name))
    try:
        progress("copy", 0, size)
        qemu_img.convert(
            file_path(store, name, file_name),
            temp,
            src_format=entry.format,
            dst_format=fmt,
            on_fraction=fraction_to_bytes(progress, "copy", size),
        )
        _fsync_file(temp)
        os.replace(temp, out)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    try:
        fsync_dir(out.parent)
        return out.stat().st_size
    except OSError as exc:
        raise StoreError(f"cannot make the export {out} durable: {exc.strerror}") from exc


def _fsync_file(path: Path) -> None:
    try:
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    except OSError as exc:
        raise StoreError(f"cannot write {path}: {exc.strerror}") from exc
