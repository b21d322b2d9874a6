"""The manifest side of replication in a store: make a vDisk's manifest the
chain the farm database says (`adopt_chain`), and take a copy that drifted
out of service (`quarantine`).

Rules:
- `adopt_chain` writes the manifest so its files are exactly the chain it is
  given (base first, every file sealed and on disk with its size), and
  retires every file of the old chain that left it; retired files stay on
  disk until `versions.purge_retired` says no session reads them. It never
  retires an open (unsealed) file: that is a maintenance version's only
  copy. It makes the manifest of a vDisk the store did not list yet. Given
  the manifest its caller decided on, it refuses (`ManifestChanged`) when
  the manifest changed since: a seal, merge or revert here wrote it, and
  the database says so a moment later.
- Given BOOT_FILES, `adopt_chain` makes the manifest's boot files exactly
  those (each on disk with its size) and removes the ones that left, after
  the manifest is written; without them, the manifest's boot files stay.
- `quarantine` moves a file to `<store>/.quarantine/<vdisk>/<file>.<UTC
  time>` (directories 0700) and takes it out of the manifest first, with
  every file above it in the chain (their parent is gone: they are retired,
  kept on disk); a boot file leaves the boot files alone. If the base goes,
  the directory stops being a vDisk (manifest.json is removed) and its
  other files stay for a later adopt.
- Manifests are written atomically (`write_manifest`) and checked by the
  manifest rules before they are written. Names are plain names.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from vdfarm.store.boot_files import on_disk, remove_boot_files
from vdfarm.store.chunks import forget_cache
from vdfarm.store.errors import ManifestChanged, ManifestError, StoreError
from vdfarm.store.manifest import (
    MANIFEST_NAME,
    BootFile,
    Manifest,
    ManifestFile,
    RetiredFile,
    check_file_name,
    check_vdisk_name,
    fsync_dir,
    read_manifest,
)
from vdfarm.store.store import Store
from vdfarm.store.versions import _write

QUARANTINE_DIR = ".quarantine"


class _Unchecked:
    """`adopt_chain` without an expected manifest: whatever is there."""


UNCHECKED = _Unchecked()
PRIVATE_DIR_MODE = 0o700


def _checked(manifest: Manifest) -> Manifest:
    """MANIFEST if it keeps the manifest rules. Raises ManifestError."""
    return Manifest.from_dict(manifest.to_dict())


def _old_manifest(vdisk_dir: Path) -> Manifest | None:
    if not (vdisk_dir / MANIFEST_NAME).exists():
        return None
    return read_manifest(vdisk_dir)


def _check_on_disk(vdisk_dir: Path, entry: ManifestFile) -> None:
    if not entry.sealed:
        raise StoreError(f"file {entry.name} is not sealed: only sealed files are adopted")
    try:
        st = os.lstat(vdisk_dir / entry.name)
    except OSError as exc:
        raise StoreError(f"file {entry.name} of vDisk {vdisk_dir.name} is not here") from exc
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"{entry.name} of vDisk {vdisk_dir.name} is not a regular file")
    if st.st_size != entry.size:
        raise StoreError(
            f"file {entry.name} of vDisk {vdisk_dir.name} has {st.st_size} bytes, not {entry.size}"
        )


def adopt_chain(
    store: Store,
    vdisk: str,
    files: list[ManifestFile],
    virtual_size: int | None,
    retired_at: datetime,
    expected: Manifest | None | _Unchecked = UNCHECKED,
    boot_files: Sequence[BootFile] | None = None,
) -> Manifest:
    """Make vDisk VDISK's manifest list exactly FILES (base first) with
    VIRTUAL_SIZE; the old chain's files not in FILES are retired at
    RETIRED_AT. Makes the manifest if the vDisk had none. Returns it. With
    EXPECTED (a manifest, or None for none), the current manifest must be
    that one. With BOOT_FILES, its boot files become those (the others are
    removed); without, they stay.

    Raises InvalidName, ManifestChanged (not EXPECTED), ManifestError (FILES
    break the manifest rules, or the old manifest is unreadable), StoreError
    (a file missing, not regular, of another size or unsealed; an open file
    would be retired; unwritable).
    """
    vdisk_dir = store.root / check_vdisk_name(vdisk)
    if not files:
        raise ManifestError(f"vDisk {vdisk}: a chain has at least its base file")
    for entry in files:
        _check_on_disk(vdisk_dir, entry)
    for listed in boot_files or ():
        on_disk(store, vdisk, listed)
    old = _old_manifest(vdisk_dir)
    if not isinstance(expected, _Unchecked) and old != expected:
        raise ManifestChanged(f"the manifest of vDisk {vdisk} changed meanwhile")
    names = {f.name for f in files}
    retired = [r for r in old.retired if r.name not in names] if old else []
    for entry in old.files if old else ():
        if entry.name in names:
            continue
        if not entry.sealed:
            raise StoreError(
                f"vDisk {vdisk}: the open file {entry.name} would leave the chain; "
                "it is a maintenance version's only copy"
            )
        retired.append(RetiredFile(entry.name, entry.version, retired_at))
    old_boot = old.boot_files if old else ()
    boot = old_boot if boot_files is None else tuple(boot_files)
    manifest = _checked(
        Manifest(
            vdisk=vdisk,
            files=tuple(files),
            retired=tuple(retired),
            virtual_size=virtual_size,
            boot_files=boot,
        )
    )
    _write(store, vdisk, manifest)
    remove_boot_files(store, vdisk, [b.name for b in old_boot if b not in boot])
    return manifest


def quarantine_path(store: Store, vdisk: str, file_name: str, now: datetime) -> Path:
    """Where FILE_NAME of vDisk VDISK goes when quarantined at NOW."""
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return store.root / QUARANTINE_DIR / vdisk / f"{file_name}.{stamp}"


def _make_private_dir(path: Path) -> None:
    """Make PATH (and the quarantine root) 0700, refusing links. Raises OSError."""
    for directory in (path.parent, path):
        try:
            directory.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:
            pass
        st = os.lstat(directory)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(f"{directory} is not a directory")


def quarantine(store: Store, vdisk: str, file_name: str, now: datetime) -> Path | None:
    """Take FILE_NAME of vDisk VDISK out of service: out of the manifest
    (with the files above it, retired), then moved to the quarantine.
    Returns where it went, or None if it was not on disk any more.

    Raises InvalidName, ManifestError (manifest unreadable), StoreError
    (the manifest or the quarantine cannot be written).
    """
    vdisk_dir = store.root / check_vdisk_name(vdisk)
    check_file_name(file_name)
    source = vdisk_dir / file_name
    target = quarantine_path(store, vdisk, file_name, now)
    present = os.path.lexists(source)
    if present:
        try:
            _make_private_dir(target.parent)
        except OSError as exc:
            raise StoreError(f"cannot quarantine {file_name} of vDisk {vdisk}: {exc}") from exc
    _drop_from_manifest(store, vdisk, vdisk_dir, file_name, now)
    forget_cache(source)
    if not present:
        return None
    try:
        os.rename(source, target)
        fsync_dir(vdisk_dir)
        fsync_dir(target.parent)
    except OSError as exc:
        raise StoreError(f"cannot quarantine {file_name} of vDisk {vdisk}: {exc}") from exc
    return target


def _drop_from_manifest(
    store: Store, vdisk: str, vdisk_dir: Path, file_name: str, now: datetime
) -> None:
    manifest = _old_manifest(vdisk_dir)
    if manifest is None:
        return
    index = next((i for i, f in enumerate(manifest.files) if f.name == file_name), None)
    if index == 0:
        try:
            os.unlink(vdisk_dir / MANIFEST_NAME)
            fsync_dir(vdisk_dir)
        except OSError as exc:
            raise StoreError(
                f"cannot remove the manifest of vDisk {vdisk}: {exc.strerror}"
            ) from exc
        return
    retired = tuple(r for r in manifest.retired if r.name != file_name)
    boot = tuple(b for b in manifest.boot_files if b.name != file_name)
    if index is None:
        if (retired, boot) != (manifest.retired, manifest.boot_files):
            _write(store, vdisk, replace(manifest, retired=retired, boot_files=boot))
        return
    above = tuple(RetiredFile(f.name, f.version, now) for f in manifest.files[index + 1 :])
    _write(store, vdisk, replace(manifest, files=manifest.files[:index], retired=retired + above))
