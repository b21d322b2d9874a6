"""Drift: files of this server's store that changed behind vdfarm's back.

Rules:
- Only sealed, verified files of the vDisks the caller names are checked:
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
        entry = store.manifest(drift.vdisk).file(drift.file_name)
    except StoreError:
        return False
    return (
        entry is not None and entry.sealed and not entry.unverified and entry.sha256 == drift.sha256
    )


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
        for entry in manifest.files:
            if not entry.sealed or entry.unverified:
                continue
            path = directory / entry.name
            why: str | None = None
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                why = "vanished from the store"
            except OSError as exc:
                why = f"cannot be read ({exc.strerror})"
            else:
                if size != entry.size:
                    why = f"size changed from {entry.size} to {size} bytes"
                elif full:
                    try:
                        if sha256_of(path) != entry.sha256:
                            why = "content changed (sha256 differs from the manifest)"
                    except OSError as exc:
                        why = f"cannot be read ({exc.strerror})"
            if why is not None:
                drifted.append(Drift(manifest.vdisk, entry.name, entry.version, why, entry.sha256))
    return drifted
