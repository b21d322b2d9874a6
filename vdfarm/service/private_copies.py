"""A private vDisk's copy in this server's store, before and after its device writes.

Rules:
- A private-mode device writes the vDisk's one file in place, so the hash
  the farm recorded stops describing this copy the moment it may write.
  `mark_written` runs in the transaction that grants the lock (before the
  stream opens the file read/write): the store's manifest marks the file
  unverified and this server's inventory row of the vDisk goes, so `store
  list` no longer calls the copy held; the heartbeat's inventory leaves it
  out until it is re-hashed. Only a manifest rewrite: cheap on the
  stream's database thread.
- The re-hash (`rehash_copy`) is slow, so it never runs in the stream nor
  in a transaction: `vdfarm vdisk verify` and `vdfarm vdisk repair` call
  it. It reads the lock, hashes with no transaction open, then in one
  short transaction takes the lock row only if it is still free with the
  same fencing token (no device wrote meanwhile), records the new hash in
  the manifest, the vDisk row and its version 0 row, and audits
  `vdisk.rehash`. The owner's writes are legitimate: verify passes after.
"""

from __future__ import annotations

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from vdfarm.farm.models import Lock, StoreVersion, Vdisk, VdiskVersion
from vdfarm.service.audit import AuditWriter
from vdfarm.service.deps import Clock, SessionFactory, changed_rows
from vdfarm.service.errors import NotFound, Unavailable
from vdfarm.store import recovery
from vdfarm.store.errors import StoreError
from vdfarm.store.store import Store

PRIVATE = "private"


def mark_written(session: Session, store: Store, server_id: int, vdisk: Vdisk) -> None:
    """VDISK (private) is about to be written on this server: mark its copy
    unverified in the store and drop this server's inventory row of it.

    Raises Unavailable (the manifest cannot be written: the lock must not
    be granted then).
    """
    session.execute(
        delete(StoreVersion).where(
            StoreVersion.server_id == server_id, StoreVersion.vdisk_id == vdisk.id
        )
    )
    try:
        if store.contains(vdisk.name):
            base = store.manifest(vdisk.name).files[0].name
            recovery.mark_unverified(store, vdisk.name, base)
    except StoreError as exc:
        raise Unavailable(f"vDisk {vdisk.name} in this server's store: {exc}") from exc


def rehash_copy(
    sessions: SessionFactory, clock: Clock, audit: AuditWriter, store: Store, name: str
) -> str | None:
    """Re-hash vDisk NAME's copy here if a private device wrote it since its
    last hash and no device holds its lock; returns what happened (None:
    nothing to do).

    Raises NotFound (no such vDisk), Unavailable (DB or store trouble).
    """
    with sessions() as session:
        vdisk = session.scalars(select(Vdisk).where(Vdisk.name == name)).one_or_none()
        if vdisk is None:
            raise NotFound(f"no vDisk named {name}")
        lock = session.scalars(select(Lock).where(Lock.vdisk_id == vdisk.id)).one_or_none()
        token = lock.fencing_token if lock else 0
        if lock is not None and lock.holder_device_id is not None:
            return None  # its device may still write: verify says it is unverified
    try:
        if not store.contains(name):
            return None
        base = store.manifest(name).files[0]
        if not base.unverified:
            return None
        fresh = recovery.hash_file(store, name, base.name)
    except StoreError as exc:
        raise Unavailable(f"vDisk {name} in this server's store: {exc}") from exc
    with sessions() as session:
        still_free = session.execute(
            update(Lock)
            .where(Lock.vdisk_id == vdisk.id)
            .where(Lock.fencing_token == token)
            .where(Lock.holder_device_id.is_(None))
            .values(fencing_token=token),  # takes the row: an acquire waits for us
            execution_options={"synchronize_session": False},
        )
        if changed_rows(still_free) != 1:
            return f"vDisk {name} was written again while it was hashed: verify it later"
        try:
            recovery.record_hash(store, name, fresh)
        except StoreError as exc:
            raise Unavailable(f"vDisk {name} in this server's store: {exc}") from exc
        row = session.get(Vdisk, vdisk.id)
        assert row is not None
        before = row.sha256
        row.sha256 = fresh.sha256 or row.sha256
        session.execute(
            update(VdiskVersion)
            .where(VdiskVersion.vdisk_id == vdisk.id, VdiskVersion.file_name == fresh.name)
            .values(sha256=fresh.sha256, size=fresh.size),
            execution_options={"synchronize_session": False},
        )
        audit.record(
            session,
            action="vdisk.rehash",
            target_type="vdisk",
            target_name=name,
            before={"sha256": before},
            after={"sha256": fresh.sha256, "why": "written by its private device"},
            at=clock(),
        )
    return f"vDisk {name}: the copy its private device wrote was hashed again"
