"""Inventory: which vDisk versions this server's store holds verified.

Rules:
- A version counts when every file of its chain is listed in the store's
  manifest with the format and hash the database sealed (`chain_in_store`),
  and is on disk with the manifest's size. Hashes are computed when a file
  is written, imported or replicated — not here, which runs every second.
- A file a private device wrote since it was hashed (`unverified` in the
  manifest, set when its lock is granted) does not count until re-hashed.
- An unsealed (maintenance) version counts where its store lists it:
  replication never copies unsealed files.
- `store_inventory` rewrites only the rows of THIS server that changed;
  replication fills other servers' rows the same way on their side.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from vdfarm.farm.changes import signal_change
from vdfarm.farm.models import StoreVersion, Vdisk, VdiskVersion
from vdfarm.service.chains import chain_in_store, version_rows
from vdfarm.service.errors import ServiceError
from vdfarm.store.errors import StoreError
from vdfarm.store.manifest import Manifest
from vdfarm.store.store import Store

# (vDisk id, version) -> (vDisk name, sha256 or None while unsealed)
Held = dict[tuple[int, int], tuple[str, str | None]]


def verified_versions(store: Store, session: Session) -> Held:
    """Every version whose whole chain STORE holds as the database sealed
    it. An unlistable store holds nothing. Raises nothing of its own."""
    try:
        manifests = store.scan()
    except StoreError:
        return {}
    ids = dict(session.execute(select(Vdisk.name, Vdisk.id)).all())
    held: Held = {}
    for manifest in manifests:
        vdisk_id = ids.get(manifest.vdisk)
        if vdisk_id is None:
            continue
        rows = version_rows(session, vdisk_id)
        for row in rows:
            if _chain_present(store, manifest, rows, row.number):
                entry = manifest.file(row.file_name)
                held[(vdisk_id, row.number)] = (manifest.vdisk, entry.sha256 if entry else None)
    return held


def _chain_present(store: Store, manifest: Manifest, rows: list[VdiskVersion], number: int) -> bool:
    try:
        chain = chain_in_store(store, manifest.vdisk, rows, number, manifest)
    except ServiceError:
        return False
    for path in chain.paths:
        entry = manifest.file(path.name)
        try:
            size = path.stat().st_size
        except OSError:
            return False
        if entry is None or entry.unverified or (entry.size is not None and size != entry.size):
            return False
    return True


def store_inventory(
    session: Session, server_id: int, held: Held, now: datetime
) -> list[tuple[str, int]]:
    """Make SERVER_ID's `store_versions` rows say HELD (verified at NOW for
    new or changed rows); return the held versions as sorted (vDisk name,
    version). A change is signalled to the farm's servers (`farm.changes`):
    a peer waiting for a version this server now holds starts at once."""
    mine = StoreVersion.server_id == server_id
    existing = {
        (r.vdisk_id, r.version): r for r in session.scalars(select(StoreVersion).where(mine)).all()
    }
    changed = False
    for key, row in existing.items():
        if key not in held or held[key][1] != row.sha256:
            session.delete(row)
            changed = True
    session.flush()
    for key, (_, sha256) in held.items():
        had = existing.get(key)
        if had is None or had.sha256 != sha256:
            changed = True
            session.add(
                StoreVersion(
                    server_id=server_id,
                    vdisk_id=key[0],
                    version=key[1],
                    sha256=sha256,
                    verified_at=now,
                )
            )
    session.flush()
    if changed:
        signal_change(session)
    return sorted((name, key[1]) for key, (name, _) in held.items())
