"""Store steps that bring a vDisk's files back in line after a writer or a crash:
mark a private copy unverified, re-hash it, finish a half-done fold.

Rules:
- A private-mode device writes its vDisk's one file in place, so the hash
  in the manifest stops describing it. The lock's taker marks the file
  `unverified` before the device may write (`mark_unverified`, a manifest
  rewrite: cheap); the slow re-hash runs later, outside any database
  transaction and off the stream's threads (called by `vdfarm
  vdisk verify` and by repair): `hash_file`, then `record_hash`.
- A fold (`versions.fold`) replaces the kept file, then rewrites the
  manifest. `fold_progress` tells how far one got from the files alone
  (the kept file's backing name, read by qemu-img), and `complete_fold`
  writes the manifest a crash left unwritten. Nothing here touches the
  database: the service decides what the steps mean for the farm.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from vdfarm.store import qemu_img
from vdfarm.store.errors import StoreError
from vdfarm.store.manifest import ManifestFile, RetiredFile
from vdfarm.store.store import Store
from vdfarm.store.versions import _sealed_entry, _write, file_path

NOT_STARTED, FILE_REPLACED, DONE = "not-started", "file-replaced", "done"


def mark_unverified(store: Store, name: str, file_name: str) -> bool:
    """Mark FILE_NAME of vDisk NAME as written since it was hashed; False if
    it is not a sealed file of the chain (nothing to mark), True otherwise.

    Raises VdiskMissing, ManifestError, StoreError (manifest unwritable).
    """
    manifest = store.manifest(name)
    entry = manifest.file(file_name)
    if entry is None or not entry.sealed:
        return False
    if entry.unverified:
        return True
    files = tuple(replace(f, unverified=True) if f is entry else f for f in manifest.files)
    _write(store, name, replace(manifest, files=files))
    return True


def hash_file(store: Store, name: str, file_name: str) -> ManifestFile:
    """FILE_NAME's manifest entry of vDisk NAME with the size and sha256 the
    file has now (fsynced first), marked verified; the manifest is not
    written (`record_hash` does). Slow on a big file: never call it inside a
    database transaction.

    Raises VdiskMissing, ManifestError, StoreError (not in the chain, unreadable).
    """
    entry = store.manifest(name).file(file_name)
    if entry is None or not entry.sealed:
        raise StoreError(f"file {file_name} is not a sealed file of vDisk {name}")
    return replace(_sealed_entry(file_path(store, name, file_name), entry), unverified=False)


def record_hash(store: Store, name: str, entry: ManifestFile) -> None:
    """Write ENTRY (from `hash_file`) into vDisk NAME's manifest.

    Raises VdiskMissing, ManifestError, StoreError (the file left the chain).
    """
    manifest = store.manifest(name)
    if manifest.file(entry.name) is None:
        raise StoreError(f"file {entry.name} left vDisk {name}'s chain while it was hashed")
    files = tuple(entry if f.name == entry.name else f for f in manifest.files)
    _write(store, name, replace(manifest, files=files))


def fold_progress(store: Store, name: str, keep: str, new_base: bool) -> str:
    """How far a fold of vDisk NAME into file KEEP got: DONE (the manifest
    says folded), FILE_REPLACED (the file is folded, the manifest not yet),
    NOT_STARTED.

    Raises VdiskMissing, ManifestError, StoreError (KEEP not in the chain),
    QemuImgError (KEEP unreadable).
    """
    manifest = store.manifest(name)
    index = next((i for i, f in enumerate(manifest.files) if f.name == keep), None)
    if index is None:
        raise StoreError(f"file {keep} is not in vDisk {name}'s chain")
    if index == (0 if new_base else 1):
        return DONE
    backing = qemu_img.info(file_path(store, name, keep), manifest.files[index].format).get(
        "backing-filename"
    )
    wanted = None if new_base else manifest.files[0].name
    return FILE_REPLACED if backing == wanted else NOT_STARTED


def complete_fold(
    store: Store, name: str, keep: str, *, new_base: bool, retired_at: datetime
) -> tuple[ManifestFile, tuple[RetiredFile, ...]]:
    """Write the manifest of a fold whose kept file KEEP is already replaced
    (`fold_progress` says FILE_REPLACED): KEEP hashed anew, the files under
    it retired at RETIRED_AT. Returns KEEP's entry and the retired files.

    Raises VdiskMissing, ManifestError, StoreError, QemuImgError (KEEP corrupt).
    """
    manifest = store.manifest(name)
    index = next((i for i, f in enumerate(manifest.files) if f.name == keep), None)
    if index is None or index == (0 if new_base else 1):
        raise StoreError(f"vDisk {name} has no half-done fold into {keep}")
    kept, base = manifest.files[index], manifest.files[0]
    path = file_path(store, name, keep)
    qemu_img.check(path, "qcow2")
    entry = _sealed_entry(
        path, replace(kept, format="qcow2", parent=None if new_base else base.name)
    )
    leaving = manifest.files[:index] if new_base else manifest.files[1:index]
    retired = tuple(RetiredFile(f.name, f.version, retired_at) for f in leaving)
    files = ((entry,) if new_base else (base, entry)) + manifest.files[index + 1 :]
    _write(store, name, replace(manifest, files=files, retired=manifest.retired + retired))
    return entry, retired
