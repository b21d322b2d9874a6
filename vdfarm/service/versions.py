"""vDisk versions: open (new), promote, revert, override, delete, list.

Rules:
- Which step is allowed is decided by `version_rules` (pure); this module
  reads the rows, checks who is connected, then changes the database and
  this server's store together.
- Every check runs before anything is written: a call that raises has
  changed neither the database nor the store. Quick store changes (open,
  unseal, drop) run inside the database transaction, after the rows are
  flushed; the transaction commits after them (a failed `new` removes its
  file again). The seal (qemu-img check, hashing: slow) runs with no
  transaction open, under an intent (`intents`): checks + intent commit,
  then the seal, then a short transaction applies it (`apply_promotion`).
- While a seal or merge is under way (an intent exists), nothing else may
  change the vDisk's versions: each call refuses with a Conflict.
- A version is sealed (qemu-img check, size and sha256 into the row and the
  manifest) when it leaves maintenance, and never written again; revert to
  maintenance opens it again and is refused while devices booted it.
- A version in maintenance is in use while the vDisk's lock is held or a
  device has a session on it: it cannot be promoted or deleted then.
- A new version boots what its parent boots (`boot_records.copy_boot`)
  until `vdisk boot` gives it other boot files.
- Every change writes one audit row (target type "version") in its
  transaction. After a promote, a chain longer than the vDisk's max-versions
  is merged (`MergeService.auto_merge`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from vdfarm.farm.models import Vdisk, VdiskVersion
from vdfarm.service import version_rules as rules
from vdfarm.service.audit import AuditWriter
from vdfarm.service.boot_records import copy_boot
from vdfarm.service.chains import (
    check_store_matches,
    check_unused,
    check_versioned,
    locked_vdisk,
    maintenance_in_use,
    row_of,
    states_of,
    store_failure,
    version_rows,
)
from vdfarm.service.deps import Clock, SessionFactory
from vdfarm.service.errors import Conflict, Invalid, NotFound
from vdfarm.service.intents import (
    check_no_intent,
)
from vdfarm.service.merges import ExportResult, MergeResult, MergeService
from vdfarm.service.promotions import PromotionService
from vdfarm.service.version_records import (
    PromoteResult,
    VersionInfo,
    version_info,
    version_infos,
    version_target,
)
from vdfarm.store import versions as store_versions
from vdfarm.store.errors import StoreError
from vdfarm.store.progress import Progress, silent
from vdfarm.store.qemu_img import QemuImgError
from vdfarm.store.store import Store


@dataclass(frozen=True)
class OverrideInfo:
    """The production pin of a vDisk before and after a change."""

    vdisk: str
    version: int | None
    previous: int | None


class VersionService:
    """Version management for every front end."""

    def __init__(
        self,
        session: SessionFactory,
        clock: Clock,
        audit: AuditWriter,
        store: Store,
        merges: MergeService,
        promotions: PromotionService,
    ) -> None:
        self._promotions = promotions
        self._session = session
        self._clock = clock
        self._audit_writer = audit
        self._store = store
        self._merges = merges

    def _info_of(self, session: Session, vdisk: Vdisk, number: int) -> VersionInfo:
        return version_info(self._store, session, vdisk, number, self._clock())

    def _audit(
        self, session: Session, action: str, target: str, before: Any, after: Any, actor: str | None
    ) -> None:
        self._audit_writer.record(
            session,
            actor=actor,
            action=action,
            target_type="version",
            target_name=target,
            before=before,
            after=after,
        )

    def list(self, vdisk: str) -> list[VersionInfo]:
        """Every version of VDISK, oldest first. Raises NotFound, Unavailable."""
        with self._session() as session:
            row = session.scalars(select(Vdisk).where(Vdisk.name == vdisk)).one_or_none()
            if row is None:
                raise NotFound(f"no vDisk named {vdisk}")
            return version_infos(self._store, session, row, self._clock())

    def show(self, vdisk: str, number: int) -> VersionInfo:
        """Version NUMBER of VDISK. Raises NotFound, Unavailable."""
        found = next((i for i in self.list(vdisk) if i.number == number), None)
        if found is None:
            raise NotFound(f"vDisk {vdisk} has no version {number}")
        return found

    def new(self, vdisk: str, actor: str | None = None) -> VersionInfo:
        """Open a maintenance version of VDISK: an empty qcow2 delta on its
        newest version, booting the same boot files (if any).

        Raises NotFound, Invalid (private vDisk), Conflict (a version is
        already open), Unavailable (store or DB trouble).
        """
        opened: str | None = None
        try:
            with self._session() as session:
                row = locked_vdisk(session, vdisk)
                check_versioned(row)
                check_no_intent(session, row)
                rows = version_rows(session, row.id)
                if (open_one := rules.open_maintenance(states_of(rows))) is not None:
                    raise Conflict(
                        f"version {open_one.number} of vDisk {vdisk} is already "
                        f"open for maintenance; promote or delete it first"
                    )
                check_store_matches(self._store, vdisk, rows)
                top = rows[-1]
                number = top.number + 1
                file_name = self._free_file_name(vdisk, number)
                opening = VdiskVersion(
                    vdisk_id=row.id,
                    number=number,
                    parent_number=top.number,
                    file_name=file_name,
                    format="qcow2",
                    access=rules.MAINTENANCE,
                    created_at=self._clock(),
                )
                session.add(opening)
                session.flush()
                copy_boot(session, top, opening)  # boot files carry forward
                try:
                    store_versions.open_delta(self._store, vdisk, file_name, number)
                except (StoreError, QemuImgError) as exc:
                    raise store_failure(vdisk, exc) from exc
                opened = file_name
                info = self._info_of(session, row, number)
                self._audit(
                    session, "version.new", version_target(vdisk, number), None, info, actor
                )
            return info
        except BaseException:
            if opened is not None:
                self._undo_open(vdisk, opened)
            raise

    def _free_file_name(self, vdisk: str, number: int) -> str:
        name = f"v{number}.qcow2"
        suffix = 1
        while store_versions.file_path(self._store, vdisk, name).exists():
            suffix += 1
            name = f"v{number}-{suffix}.qcow2"
        return name

    def _undo_open(self, vdisk: str, file_name: str) -> None:
        try:
            if self._store.manifest(vdisk).top.name == file_name:
                store_versions.drop_top(self._store, vdisk)
        except StoreError:
            pass

    def promote(
        self,
        vdisk: str,
        to: str,
        at: datetime | None = None,
        actor: str | None = None,
        when_replicated: bool = False,
        progress: Progress = silent,
    ) -> PromoteResult:
        """Promote VDISK's newest version (see `PromotionService.promote`)."""
        return self._promotions.promote(vdisk, to, at, actor, when_replicated, progress)

    def revert(self, vdisk: str, actor: str | None = None) -> VersionInfo:
        """Take VDISK's newest version back one step: production (or pending)
        → test, test → maintenance (opened again). A promotion scheduled for
        when it is replicated is dropped.

        Raises NotFound, Invalid (the base, already in maintenance, private
        vDisk), Conflict (reopening a version devices booted or production is
        pinned to), Unavailable.
        """
        now = self._clock()
        with self._session() as session:
            row = locked_vdisk(session, vdisk)
            check_versioned(row)
            check_no_intent(session, row)
            rows = version_rows(session, row.id)
            top, access = rules.reversion(states_of(rows), now, vdisk)
            if access == rules.MAINTENANCE:
                check_unused(session, row, top.number, "opened for maintenance")
                check_store_matches(self._store, vdisk, rows)
            before = self._info_of(session, row, top.number)
            version = row_of(rows, top.number)
            version.access, version.production_at = access, None
            version.promote_when_replicated = None
            if access == rules.MAINTENANCE:
                version.size = version.sha256 = version.sealed_at = None
                session.flush()
                try:
                    store_versions.unseal_top(self._store, vdisk)
                except StoreError as exc:
                    raise store_failure(vdisk, exc) from exc
            info = self._info_of(session, row, top.number)
            self._audit(
                session, "version.revert", version_target(vdisk, top.number), before, info, actor
            )
            return info

    def override(self, vdisk: str, number: int | None, actor: str | None = None) -> OverrideInfo:
        """Pin VDISK's production devices to version NUMBER (None: remove the pin).

        Raises NotFound (vDisk or version), Invalid (version open for
        maintenance, no pin to remove, bad number), Unavailable.
        """
        if number is not None and (
            not isinstance(number, int) or isinstance(number, bool) or number < 0
        ):
            raise Invalid(f"invalid version {number!r}: give a version number >= 0")
        with self._session() as session:
            row = locked_vdisk(session, vdisk)
            check_versioned(row)
            check_no_intent(session, row)
            states = states_of(version_rows(session, row.id))
            if number is None and row.override_version is None:
                raise Invalid(f"vDisk {vdisk} has no override to clear")
            if number is not None and rules.find(states, number, vdisk).access == rules.MAINTENANCE:
                raise Invalid(
                    f"version {number} of vDisk {vdisk} is open for maintenance; "
                    f"only test or production versions can be pinned"
                )
            result = OverrideInfo(vdisk=vdisk, version=number, previous=row.override_version)
            row.override_version = number
            self._audit_writer.record(
                session,
                actor=actor,
                action="version.override",
                target_type="vdisk",
                target_name=vdisk,
                before={"override_version": result.previous},
                after={"override_version": number},
            )
            return result

    def delete(self, vdisk: str, actor: str | None = None) -> VersionInfo:
        """Delete VDISK's newest version (never the base); returns it as it was.

        Raises NotFound, Invalid (the base), Conflict (devices booted it, its
        maintenance device is connected, production is pinned to it),
        Unavailable.
        """
        now = self._clock()
        with self._session() as session:
            row = locked_vdisk(session, vdisk)
            check_no_intent(session, row)
            rows = version_rows(session, row.id)
            top = rules.newest(states_of(rows))
            if top.parent is None:
                raise Invalid(f"cannot delete the base of vDisk {vdisk} (version {top.number})")
            if top.access == rules.MAINTENANCE and (
                busy := maintenance_in_use(session, row, top.number, now)
            ):
                raise Conflict(f"cannot delete version {top.number}: {busy}")
            check_unused(session, row, top.number, "deleted")
            check_store_matches(self._store, vdisk, rows)
            before = self._info_of(session, row, top.number)
            session.delete(row_of(rows, top.number))
            session.flush()
            try:
                store_versions.drop_top(self._store, vdisk)
            except StoreError as exc:
                raise store_failure(vdisk, exc) from exc
            self._audit(
                session, "version.delete", version_target(vdisk, top.number), before, None, actor
            )
            return before

    def merge(
        self,
        vdisk: str,
        new_base: bool = False,
        actor: str | None = None,
        progress: Progress = silent,
    ) -> MergeResult:
        """Fold VDISK's chain (see `MergeService.merge`)."""
        return self._merges.merge(vdisk, new_base=new_base, actor=actor, progress=progress)

    def check_merge(self, vdisk: str, new_base: bool = False) -> None:
        """Refuse now what a merge would refuse (see `MergeService.check`)."""
        self._merges.check(vdisk, new_base)

    def export(
        self,
        vdisk: str,
        out: str | Path,
        fmt: str,
        version: int | None = None,
        progress: Progress = silent,
    ) -> ExportResult:
        """Write a version flattened (see `MergeService.export`)."""
        return self._merges.export(vdisk, Path(out), fmt, version, progress)
