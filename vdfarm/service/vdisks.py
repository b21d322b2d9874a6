"""vDisks: import into the local store and the farm, list, show, change, delete.

Rules:
- Every check runs before anything is written; a call that raises has
  changed neither the database nor the store.
- Import order: store first (atomic publish), then the row + its lock row +
  its version 0 row (the base, in production) + the audit row in one
  transaction; if that transaction fails, the store entry is removed again.
- Delete is refused while devices are assigned or the lock is held; the rows
  are removed (flushed) before the files, and committed after them.
- A change of the mode or the write-cache type is refused while any device
  uses the vDisk (a session on any server, or a login reservation not yet
  expired), or a merge or seal is under way: connected devices read it as
  it was. Description, cache limit, max-versions and require-TLS change any
  time (require-TLS is checked when a client opens the export: connections
  already open are not dropped).
- Private mode needs a vDisk that is one raw file: it is refused for a vDisk
  with versions above its base (versions are a standard-mode feature).
- `vdisk.sha256`/`format` describe the base file; each version's own hash is
  in its version row. Verify checks every sealed file against both.
- Every vDisk belongs to one store set (`store_sets`): `default` unless its
  import names another; `set --store` moves it any time (replication then
  copies it to the new set's servers; copies elsewhere stay until removed).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from vdfarm.farm.models import (
    ACCESS_MODES,
    WRITE_CACHE_TYPES,
    Device,
    DeviceSession,
    Lock,
    StoreSet,
    Vdisk,
    VdiskVersion,
)
from vdfarm.service.audit import AuditWriter
from vdfarm.service.chains import (
    check_private_allowed,
    live_users,
    locked_vdisk,
    qemu_check_problems,
    sealed_hash,
    version_problems,
    version_rows,
)
from vdfarm.service.deps import Clock, SessionFactory
from vdfarm.service.errors import Conflict, Invalid, NotFound, Unavailable
from vdfarm.service.intents import check_no_intent
from vdfarm.service.locks import HELD, held_message, lock_of, lock_state
from vdfarm.service.login import RESERVATION_LIFETIME
from vdfarm.service.private_copies import rehash_copy
from vdfarm.service.records import to_plain
from vdfarm.service.store_sets import DEFAULT_STORE, find_store_set
from vdfarm.service.validation import (
    UNCHANGED,
    check_cache_limit,
    check_choice,
    check_description,
    check_name,
    vdisk_changes,
)
from vdfarm.store import errors as store_errors
from vdfarm.store.progress import Progress, silent
from vdfarm.store.qemu_img import QemuImgError
from vdfarm.store.sources import SOURCE_FORMATS as SOURCE_FORMATS  # re-exported for the CLI
from vdfarm.store.store import Store, VerifyResult

# Columns whose change alters what a connected device reads or where its
# writes go -> the words for it: refused while any device uses the vDisk.
LIVE_COLUMNS = {"access_mode": "mode", "write_cache_type": "write-cache type"}


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
    max_versions: int
    override_version: int | None
    subnet_affinity: str
    require_tls: bool
    store: str = DEFAULT_STORE


def find_vdisk(session: Session, name: str) -> Vdisk:
    """The vDisk row named NAME. Raises NotFound."""
    vdisk = session.scalars(select(Vdisk).where(Vdisk.name == name)).one_or_none()
    if vdisk is None:
        raise NotFound(f"no vDisk named {name}")
    return vdisk


def _store_name(session: Session, vdisk: Vdisk) -> str:
    store_set = session.get(StoreSet, vdisk.store_set_id)  # cached per session
    return store_set.name if store_set is not None else DEFAULT_STORE


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

    def __init__(
        self, session: SessionFactory, clock: Clock, audit: AuditWriter, store: Store
    ) -> None:
        self._session = session
        self._clock = clock
        self._audit = audit
        self._store = store

    def _info(self, session: Session, vdisk: Vdisk) -> VdiskInfo:
        return VdiskInfo(
            id=vdisk.id,
            name=vdisk.name,
            size=vdisk.size,
            format=vdisk.format,
            access_mode=vdisk.access_mode,
            write_cache_type=vdisk.write_cache_type,
            write_cache_limit_mb=vdisk.write_cache_limit_mb,
            description=vdisk.description,
            sha256=vdisk.sha256,
            created_at=vdisk.created_at,
            devices=_device_names(session, vdisk.id),
            in_store=self._store.contains(vdisk.name),
            max_versions=vdisk.max_versions,
            override_version=vdisk.override_version,
            subnet_affinity=vdisk.subnet_affinity,
            require_tls=vdisk.require_tls,
            store=_store_name(session, vdisk),
        )

    def import_image(
        self,
        name: str,
        source: str | Path,
        *,
        mode: str = "standard",
        write_cache: str = "server-disk",
        cache_limit_mb: int | None = None,
        description: str = "",
        actor: str | None = None,
        source_format: str | None = None,
        audit_source: str | None = None,
        store: str = DEFAULT_STORE,
        progress: Progress = silent,
    ) -> VdiskInfo:
        """Import the image file SOURCE (raw, qcow2, vpc, vhdx, vmdk: SOURCE_FORMAT,
        or detected among those if None) as vDisk NAME of store set STORE. The
        audit row names the source (AUDIT_SOURCE if given: the caller's name
        for it). PROGRESS hears the copy and the hash.

        Raises Invalid (bad name/option/source, a source naming other files),
        NotFound (no such store), Conflict (name taken), Unavailable (store
        or DB failure).
        """
        check_name("vDisk", name)
        check_choice("mode", mode, ACCESS_MODES)
        check_choice("write-cache type", write_cache, WRITE_CACHE_TYPES)
        check_cache_limit(cache_limit_mb)
        check_description(description)
        if source_format is not None:
            check_choice("source format", source_format, SOURCE_FORMATS)
        source = Path(source)
        if not source.is_file():
            raise Invalid(f"source file {source} does not exist or is not a file")
        with self._session() as session:
            store_set_id = find_store_set(session, store).id
            if session.scalars(select(Vdisk.id).where(Vdisk.name == name)).first():
                raise Conflict(f"vDisk {name} already exists")
        try:
            manifest = self._store.import_image(name, source, source_format, progress)
        except (store_errors.StoreError, QemuImgError) as exc:
            raise _store_error(exc) from exc
        try:
            return self._add_row(
                name,
                manifest.size,
                manifest.top.format,
                sealed_hash(manifest.top, name),
                manifest.top.name,
                mode,
                write_cache,
                cache_limit_mb,
                description,
                actor,
                audit_source or str(source.absolute()),
                store_set_id,
            )
        except BaseException:
            self._unimport(name)
            raise

    def _unimport(self, name: str) -> None:
        with contextlib.suppress(store_errors.StoreError):
            self._store.delete(name)

    def _add_row(
        self,
        name: str,
        size: int,
        fmt: str,
        sha256: str,
        file_name: str,
        mode: str,
        write_cache: str,
        cache_limit_mb: int | None,
        description: str,
        actor: str | None,
        source: str,
        store_set_id: int,
    ) -> VdiskInfo:
        now = self._clock()
        with self._session() as session:
            vdisk = Vdisk(
                name=name,
                size=size,
                format=fmt,
                access_mode=mode,
                write_cache_type=write_cache,
                write_cache_limit_mb=cache_limit_mb,
                description=description,
                sha256=sha256,
                created_at=now,
                store_set_id=store_set_id,
            )
            session.add(vdisk)
            session.flush()
            session.add(Lock(vdisk_id=vdisk.id, fencing_token=0))
            session.add(
                VdiskVersion(
                    vdisk_id=vdisk.id,
                    number=0,
                    parent_number=None,
                    file_name=file_name,
                    format=fmt,
                    access="production",
                    size=size,
                    sha256=sha256,
                    created_at=now,
                    sealed_at=now,
                    production_at=now,
                )
            )
            info = self._info(session, vdisk)
            self._audit.record(
                session,
                actor=actor,
                at=now,
                action="vdisk.import",
                target_type="vdisk",
                target_name=name,
                before=None,
                after={**to_plain(info), "source": source},
            )
            return info

    def list(self) -> list[VdiskInfo]:
        """Every vDisk of the farm, by name. Raises Unavailable."""
        with self._session() as session:
            rows = session.scalars(select(Vdisk).order_by(Vdisk.name)).all()
            return [self._info(session, v) for v in rows]

    def show(self, name: str) -> VdiskInfo:
        """The vDisk NAME. Raises NotFound, Unavailable."""
        with self._session() as session:
            return self._info(session, find_vdisk(session, name))

    def set(
        self,
        name: str,
        *,
        mode: str | None = None,
        write_cache: str | None = None,
        cache_limit_mb: Any = UNCHANGED,
        description: str | None = None,
        max_versions: int | None = None,
        require_tls: bool | None = None,
        store: str | None = None,
        actor: str | None = None,
    ) -> VdiskInfo:
        """Change the mode, write-cache type, cache limit (None clears it),
        description, max-versions, require-TLS (served over NBD only to
        clients that started TLS) or store set of vDisk NAME.

        Raises Invalid (bad value, nothing to change, private mode for a vDisk
        with versions), NotFound (vDisk or store), Conflict (mode change
        while the lock is held), Unavailable.
        """
        changes = vdisk_changes(
            mode,
            write_cache,
            cache_limit_mb,
            description,
            max_versions,
            require_tls,
            allow_none=store is not None,
        )
        now = self._clock()
        with self._session() as session:
            vdisk = locked_vdisk(session, name)
            if store is not None:
                changes["store_set_id"] = find_store_set(session, store).id
            before = self._info(session, vdisk)
            changed = [c for c in LIVE_COLUMNS if c in changes and changes[c] != getattr(vdisk, c)]
            if changed:
                if changes.get("access_mode") == "private":  # never possible: say so first
                    check_private_allowed(session, vdisk)
                check_no_intent(session, vdisk)
                lock = lock_of(session, vdisk.id)
                what = LIVE_COLUMNS[changed[0]]
                if lock is not None and lock_state(lock, now) == HELD:
                    raise Conflict(f"cannot change the {what} now: {held_message(lock)}")
                if users := live_users(session, vdisk, now - RESERVATION_LIFETIME):
                    raise Conflict(
                        f"cannot change the {what} of vDisk {name} while it is in use by "
                        f"{', '.join(users)}: they read it as it is; change it when they are off"
                    )
            for column, value in changes.items():
                setattr(vdisk, column, value)
            session.flush()
            after = self._info(session, vdisk)
            self._audit.record(
                session,
                actor=actor,
                at=now,
                action="vdisk.set",
                target_type="vdisk",
                target_name=name,
                before=before,
                after=after,
            )
            return after

    def delete(self, name: str, actor: str | None = None) -> VdiskInfo:
        """Remove vDisk NAME from the farm and this server's store; returns it as it was.

        Raises NotFound, Conflict (devices assigned, lock held), Unavailable.
        """
        now = self._clock()
        with self._session() as session:
            vdisk = locked_vdisk(session, name)
            check_no_intent(session, vdisk)
            before = self._info(session, vdisk)
            if before.devices:
                raise Conflict(
                    f"vDisk {name} is assigned to device(s) {', '.join(before.devices)}; "
                    "assign them another vDisk (or --none) first"
                )
            lock = lock_of(session, vdisk.id)
            if lock is not None and lock_state(lock, now) == HELD:
                raise Conflict(
                    f"{held_message(lock)}; release it first (vdfarm lock release {name})"
                )
            session.execute(delete(Lock).where(Lock.vdisk_id == vdisk.id))
            session.execute(delete(DeviceSession).where(DeviceSession.vdisk_id == vdisk.id))
            session.execute(delete(VdiskVersion).where(VdiskVersion.vdisk_id == vdisk.id))
            session.delete(vdisk)
            self._audit.record(
                session,
                actor=actor,
                at=now,
                action="vdisk.delete",
                target_type="vdisk",
                target_name=name,
                before=before,
                after=None,
            )
            session.flush()
            if before.in_store:
                try:
                    self._store.delete(name)
                except store_errors.StoreError as exc:
                    raise _store_error(exc) from exc
            return before

    def verify(self, name: str, progress: Progress = silent) -> VerifyResult:
        """Check vDisk NAME's files in this store against its manifest (size,
        sha256, qemu-img check) and the manifest against the farm's versions.
        PROGRESS hears the bytes hashed.

        A private copy its device wrote since its last hash is hashed
        again first, once no device holds its lock (`rehash_copy`).
        Raises NotFound (not in the farm), Unavailable (not in this store).
        """
        rehash_copy(self._session, self._clock, self._audit, self._store, name)
        with self._session() as session:
            vdisk = find_vdisk(session, name)
            expected_sha = vdisk.sha256
            rows = [
                (r.number, r.file_name, r.format, r.sha256) for r in version_rows(session, vdisk.id)
            ]
        try:
            result = self._store.verify(name, progress)
            manifest = self._store.manifest(name)
        except store_errors.VdiskMissing as exc:
            raise Unavailable(f"vDisk {name} is not in this server's store") from exc
        except store_errors.StoreError as exc:
            return VerifyResult(vdisk=name, problems=(str(exc),))
        extra = []
        if manifest.files[0].sha256 != expected_sha:
            extra.append("the store's manifest does not match the farm database")
        extra += version_problems(manifest, rows)
        if not result.problems:
            extra += qemu_check_problems(self._store.root / name, manifest)
        return VerifyResult(vdisk=name, problems=result.problems + tuple(extra))
