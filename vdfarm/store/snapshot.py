"""What a store holds right now, as replication plans on it: every vDisk
directory with its manifest (or None), and the partial copies in each.

Rules:
- Entries whose name starts with '.' are not vDisks (temporaries,
  quarantine); symlinks are not followed and not listed.
- A directory whose manifest is missing or broken is listed with None: it
  may hold a copy under way (a vDisk this server never had) or what a
  quarantine left.
- Reads only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vdfarm.store.errors import ManifestError, StoreError
from vdfarm.store.manifest import Manifest, read_manifest
from vdfarm.store.receive import TEMP_PREFIX as PARTIAL_PREFIX
from vdfarm.store.store import Store


@dataclass(frozen=True)
class StoreSnapshot:
    manifests: dict[str, Manifest | None]
    partials: dict[str, tuple[str, ...]]


def snapshot(store: Store) -> StoreSnapshot:
    """STORE's vDisk directories, manifests and partial copies.

    Raises StoreError (the store cannot be listed).
    """
    try:
        entries = sorted(os.scandir(store.root), key=lambda e: e.name)
    except OSError as exc:
        raise StoreError(f"cannot list the store {store.root}: {exc.strerror}") from exc
    manifests: dict[str, Manifest | None] = {}
    partials: dict[str, tuple[str, ...]] = {}
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
            continue
        directory = Path(entry.path)
        try:
            manifests[entry.name] = read_manifest(directory)
        except ManifestError:
            manifests[entry.name] = None
        try:
            names = sorted(
                e.name
                for e in os.scandir(directory)
                if e.name.startswith(PARTIAL_PREFIX) and e.is_file(follow_symlinks=False)
            )
        except OSError:
            names = []
        if names:
            partials[entry.name] = tuple(names)
    return StoreSnapshot(manifests=manifests, partials=partials)
