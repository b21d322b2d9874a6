"""Drift: files of this server's store that changed behind vdfarm's back.

Rules:
- Only sealed, verified files (and the boot files) of the vDisks the
  caller names are checked:
  an open maintenance version, or a private vDisk's file (its device
  writes it; the home's copy is the only current one), changes by design
  and is never quarantined.
- The quick check (names and sizes) runs often; the full check re-hashes
  every file against its manifest's sha256 (`Store.sha256_of`, which does
  not keep what it read in the page cache).
- Reads only: the caller moves what drifted to quarantine. A drift names
  the sha256 its manifest entry had, so the caller can leave alone a file
  whose entry changed while it was hashed (a version reopened here).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from vdfarm.store.errors import StoreError
from vdfarm.store.store import Store, sha256_of

log = logging.getLogger("vdfarm.replication")


@dataclass(frozen=True)
class Drift:
    """FILE_NAME of vDisk VDISK (its version, if the manifest says) is not
    what its manifest said (sealed with SHA256): WHY."""

    vdisk: str
    file_name: str
    version: int | None
    why: str
    sha256: str | None = None


def still_as_found(store: Store, drift: Drift) -> bool:
    """True if DRIFT's manifest entry is still the sealed one it was found
    against (no step here reopened, resealed or removed it since)."""
    try:
        manifest = store.manifest(drift.vdisk)
    except StoreError:
        return False
    entry = manifest.file(drift.file_name)
    if entry is None:
        boot = manifest.boot_file(drift.file_name)
        return boot is not None and boot.sha256 == drift.sha256
    return entry.sealed and not entry.unverified and entry.sha256 == drift.sha256


def find_drift(store: Store, full: bool, vdisks: Collection[str]) -> list[Drift]:
    """The sealed files of STORE's VDISKS (the ones replication keeps:
    never a private vDisk, whose device writes its file) whose size (and,
    if FULL, sha256) differs from their manifest, or that are gone. A store
    that cannot be listed has no drift to report (the inventory says it
    holds nothing)."""
    try:
        manifests = store.scan()
    except StoreError:
        return []
    drifted: list[Drift] = []
    for manifest in manifests:
        if manifest.vdisk not in vdisks:
            continue
        directory = store.root / manifest.vdisk
        checked = [
            (f.name, f.version, f.size, f.sha256)
            for f in manifest.files
            if f.sealed and not f.unverified
        ]
        checked += [(b.name, None, b.size, b.sha256) for b in manifest.boot_files]
        for name, version, listed_size, sha256 in checked:
            why = _drift_of(directory / name, listed_size, sha256, full)
            if why is not None:
                drifted.append(Drift(manifest.vdisk, name, version, why, sha256))
    return drifted


def _drift_of(path: Path, size: int | None, sha256: str | None, full: bool) -> str | None:
    """Why the file at PATH is not the one of SIZE (and, if FULL, SHA256), or None."""
    try:
        found = path.stat().st_size
    except FileNotFoundError:
        return "vanished from the store"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if found != size:
        return f"size changed from {size} to {found} bytes"
    if full:
        try:
            if sha256_of(path) != sha256:
                return "content changed (sha256 differs from the manifest)"
        except OSError as exc:
            return f"cannot be read ({exc.strerror})"
    return None
