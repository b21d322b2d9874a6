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
- Boot files are inventoried apart (`store_boot_files`, by vDisk, kind and
  sha256): a boot file counts when the manifest lists it and it is on disk
  with the listed size (hashed when copied in or fetched, re-hashed by the
  drift check), whatever version boots it. A version's copies count
  without them: streaming needs no kernel.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from vdfarm.farm.changes import signal_change
from vdfarm.farm.models import StoreBootFile, StoreVersion, Vdisk, VdiskVersion
from vdfarm.service.chains import chain_in_store, version_rows
from vdfarm.service.errors import ServiceError
from vdfarm.store.boot_files import held_boot_file
from vdfarm.store.errors import StoreError
from vdfarm.store.manifest import Manifest
from vdfarm.store.store import Store

# (vDisk id, version) -> (vDisk name, sha256 or None while unsealed)
Held = dict[tuple[int, int], tuple[str, str | None]]
# (vDisk id, kind, sha256) of every boot file held
HeldBoot = set[tuple[int, str, str]]


def verified_versions(store: Store, session: Session) -> Held:
    """Every version whose whole chain STORE holds as the database sealed
    it. An unlistable store holds nothing. Raises nothing of its own."""
    return held_in_store(store, session)[0]


def held_in_store(store: Store, session: Session) -> tuple[Held, HeldBoot]:
    """The versions (see `verified_versions`) and the boot files STORE
    holds, from one scan. An unlistable store holds nothing."""
    try:
        manifests = store.scan()
    except StoreError:
        return {}, set()
    ids = dict(session.execute(select(Vdisk.name, Vdisk.id)).all())
    held: Held = {}
    boot: HeldBoot = set()
    for manifest in manifests:
        vdisk_id = ids.get(manifest.vdisk)
        if vdisk_id is None:
            continue
        rows = version_rows(session, vdisk_id)
        for row in rows:
            if _chain_present(store, manifest, rows, row.number):
                entry = manifest.file(row.file_name)
                held[(vdisk_id, row.number)] = (manifest.vdisk, entry.sha256 if entry else None)
        for listed in manifest.boot_files:
            try:
                held_boot_file(store, manifest.vdisk, listed.name, manifest)
            except StoreError:
                continue
            boot.add((vdisk_id, listed.kind, listed.sha256))
    return held, boot


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


def store_boot_inventory(session: Session, server_id: int, held: HeldBoot, now: datetime) -> None:
    """Make SERVER_ID's `store_boot_files` rows say HELD (new rows verified at NOW)."""
    mine = StoreBootFile.server_id == server_id
    existing = {
        (r.vdisk_id, r.kind, r.sha256): r
        for r in session.scalars(select(StoreBootFile).where(mine)).all()
    }
    for key, row in existing.items():
        if key not in held:
            session.delete(row)
    for vdisk_id, kind, sha256 in held - existing.keys():
        session.add(
            StoreBootFile(
                server_id=server_id, vdisk_id=vdisk_id, kind=kind, sha256=sha256, verified_at=now
            )
        )
    session.flush()


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
