"""vDisks: import into the local store and the farm, list, show, change, delete.

Rules:
- Every check runs before anything is written; a call that raises has
  changed neither the database nor the store.
- Import order: store first (atomic publish), then the row + its lock row +
  the audit row in one transaction; if that transaction fails, the store
  entry is removed again.
- Delete is refused while devices are assigned or the lock is held; the rows
  are removed (flushed) before the files, and committed after them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from vdfarm.farm.models import ACCESS_MODES, WRITE_CACHE_TYPES, Device, Lock, Vdisk
from vdfarm.service import audit
from vdfarm.service.errors import Conflict, Invalid, NotFound, Unavailable
from vdfarm.service.locks import HELD, held_message, lock_of, lock_state
from vdfarm.service.validation import (
    UNCHANGED,
    check_cache_limit,
    check_choice,
    check_description,
    check_name,
)
from vdfarm.store import errors as store_errors
from vdfarm.store.qemu_img import QemuImgError
from vdfarm.store.store import VerifyResult

if TYPE_CHECKING:
    from vdfarm.service.context import Farm


@dataclass(frozen=True)
class VdiskInfo:
    """A vDisk as the front ends show it."""

    id: int
    name: str
    size: int
    format: str
    access_mode: str
    write_cache_type: str
    write_cache_limit_mb: int | None
    description: str
    sha256: str
    created_at: datetime
    devices: tuple[str, ...]
    in_store: bool


def find_vdisk(session: Session, name: str) -> Vdisk:
    """The vDisk row named NAME. Raises NotFound."""
    vdisk = session.scalars(select(Vdisk).where(Vdisk.name == name)).one_or_none()
    if vdisk is None:
        raise NotFound(f"no vDisk named {name}")
    return vdisk


def _device_names(session: Session, vdisk_id: int) -> tuple[str, ...]:
    query = select(Device.name).where(Device.vdisk_id == vdisk_id).order_by(Device.name)
    return tuple(session.scalars(query).all())


def _store_error(exc: Exception) -> Exception:
    """The service error for a store failure."""
    if isinstance(exc, store_errors.VdiskExists):
        return Conflict(str(exc))
    if isinstance(exc, store_errors.VdiskMissing):
        return NotFound(str(exc))
    if isinstance(exc, store_errors.InvalidName | store_errors.UnsupportedImage | QemuImgError):
        return Invalid(str(exc))
    return Unavailable(str(exc))


class VdiskService:
    """vDisk management for every front end."""

    def __init__(self, farm: Farm) -> None:
        self.farm = farm

    def _info(self, session: Session, vdisk: Vdisk) -> VdiskInfo:
        return VdiskInfo(
            id=vdisk.id, name=vdisk.name, size=vdisk.size, format=vdisk.format,
            access_mode=vdisk.access_mode, write_cache_type=vdisk.write_cache_type,
            write_cache_limit_mb=vdisk.write_cache_limit_mb, description=vdisk.description,
            sha256=vdisk.sha256, created_at=vdisk.created_at,
            devices=_device_names(session, vdisk.id),
            in_store=self.farm.store.contains(vdisk.name),
        )

    def import_image(
        self, name: str, source: str | Path, *, mode: str = "standard",
        write_cache: str = "server-disk", cache_limit_mb: int | None = None,
        description: str = "", actor: str | None = None,
    ) -> VdiskInfo:
        """Import the image file SOURCE (raw, qcow2, vpc, vhdx, vmdk) as vDisk NAME.

        Raises Invalid (bad name/option/source), Conflict (name taken),
        Unavailable (store or DB failure).
        """
        check_name("vDisk", name)
        check_choice("mode", mode, ACCESS_MODES)
        check_choice("write-cache type", write_cache, WRITE_CACHE_TYPES)
        check_cache_limit(cache_limit_mb)
        check_description(description)
        source = Path(source)
        if not source.is_file():
            raise Invalid(f"source file {source} does not exist or is not a file")
        with self.farm.session() as session:
            if session.scalars(select(Vdisk.id).where(Vdisk.name == name)).first():
                raise Conflict(f"vDisk {name} already exists")
        try:
            manifest = self.farm.store.import_image(name, source)
        except (store_errors.StoreError, QemuImgError) as exc:
            raise _store_error(exc) from exc
        try:
            return self._add_row(name, manifest.size, manifest.top.format, manifest.top.sha256,
                                 mode, write_cache, cache_limit_mb, description, actor)
        except BaseException:
            self._unimport(name)
            raise

    def _unimport(self, name: str) -> None:
        with contextlib.suppress(store_errors.StoreError):
            self.farm.store.delete(name)

    def _add_row(
        self, name: str, size: int, fmt: str, sha256: str, mode: str, write_cache: str,
        cache_limit_mb: int | None, description: str, actor: str | None,
    ) -> VdiskInfo:
        now = self.farm.now()
        with self.farm.session() as session:
            vdisk = Vdisk(
                name=name, size=size, format=fmt, access_mode=mode,
                write_cache_type=write_cache, write_cache_limit_mb=cache_limit_mb,
                description=description, sha256=sha256, created_at=now,
            )
            session.add(vdisk)
            session.flush()
            session.add(Lock(vdisk_id=vdisk.id, fencing_token=0))
            info = self._info(session, vdisk)
            audit.record(session, actor=actor or self.farm.actor, at=now, action="vdisk.import",
                         target_type="vdisk", target_name=name, before=None, after=info)
            return info

    def list(self) -> list[VdiskInfo]:
        """Every vDisk of the farm, by name. Raises Unavailable."""
        with self.farm.session() as session:
            rows = session.scalars(select(Vdisk).order_by(Vdisk.name)).all()
            return [self._info(session, v) for v in rows]

    def show(self, name: str) -> VdiskInfo:
        """The vDisk NAME. Raises NotFound, Unavailable."""
        with self.farm.session() as session:
            return self._info(session, find_vdisk(session, name))

    def set(
        self, name: str, *, mode: str | None = None, write_cache: str | None = None,
        cache_limit_mb: Any = UNCHANGED, description: str | None = None,
        actor: str | None = None,
    ) -> VdiskInfo:
        """Change the mode, write-cache type, cache limit (None clears it) or
        description of vDisk NAME.

        Raises Invalid (bad value, nothing to change), NotFound, Conflict
        (mode change while the lock is held), Unavailable.
        """
        changes = self._checked_changes(mode, write_cache, cache_limit_mb, description)
        now = self.farm.now()
        with self.farm.session() as session:
            vdisk = find_vdisk(session, name)
            before = self._info(session, vdisk)
            if "access_mode" in changes and changes["access_mode"] != vdisk.access_mode:
                lock = lock_of(session, vdisk.id)
                if lock is not None and lock_state(lock, now) == HELD:
                    raise Conflict(f"cannot change the mode now: {held_message(lock)}")
            for column, value in changes.items():
                setattr(vdisk, column, value)
            session.flush()
            after = self._info(session, vdisk)
            audit.record(session, actor=actor or self.farm.actor, at=now, action="vdisk.set",
                         target_type="vdisk", target_name=name, before=before, after=after)
            return after

    @staticmethod
    def _checked_changes(
        mode: str | None, write_cache: str | None, cache_limit_mb: Any, description: str | None
    ) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        if mode is not None:
            changes["access_mode"] = check_choice("mode", mode, ACCESS_MODES)
        if write_cache is not None:
            changes["write_cache_type"] = check_choice(
                "write-cache type", write_cache, WRITE_CACHE_TYPES)
        if cache_limit_mb is not UNCHANGED:
            changes["write_cache_limit_mb"] = check_cache_limit(cache_limit_mb)
        if description is not None:
            changes["description"] = check_description(description)
        if not changes:
            raise Invalid(
                "nothing to change: give a mode, write-cache type, cache limit or description")
        return changes

    def delete(self, name: str, actor: str | None = None) -> VdiskInfo:
        """Remove vDisk NAME from the farm and this server's store; returns it as it was.

        Raises NotFound, Conflict (devices assigned, lock held), Unavailable.
        """
        now = self.farm.now()
        with self.farm.session() as session:
            vdisk = find_vdisk(session, name)
            before = self._info(session, vdisk)
            if before.devices:
                raise Conflict(
                    f"vDisk {name} is assigned to device(s) {', '.join(before.devices)}; "
                    "assign them another vDisk (or --none) first"
                )
            lock = lock_of(session, vdisk.id)
            if lock is not None and lock_state(lock, now) == HELD:
                raise Conflict(
                    f"{held_message(lock)}; release it first (vdfarm lock release {name})")
            session.execute(delete(Lock).where(Lock.vdisk_id == vdisk.id))
            session.delete(vdisk)
            audit.record(session, actor=actor or self.farm.actor, at=now, action="vdisk.delete",
                         target_type="vdisk", target_name=name, before=before, after=None)
            session.flush()
            if before.in_store:
                try:
                    self.farm.store.delete(name)
                except store_errors.StoreError as exc:
                    raise _store_error(exc) from exc
            return before

    def verify(self, name: str) -> VerifyResult:
        """Check vDisk NAME's files in this store against its manifest and the farm.

        Raises NotFound (not in the farm), Unavailable (not in this store).
        """
        with self.farm.session() as session:
            vdisk = find_vdisk(session, name)
            expected_sha, expected_size = vdisk.sha256, vdisk.size
        try:
            result = self.farm.store.verify(name)
            top = self.farm.store.manifest(name).top
        except store_errors.VdiskMissing as exc:
            raise Unavailable(f"vDisk {name} is not in this server's store") from exc
        except store_errors.StoreError as exc:
            return VerifyResult(vdisk=name, problems=(str(exc),))
        extra = []
        if top.sha256 != expected_sha or top.size != expected_size:
            extra.append("the store's manifest does not match the farm database")
        return VerifyResult(vdisk=name, problems=result.problems + tuple(extra))
