"""Promote: a version moves on (maintenance → test → production); leaving
maintenance seals its file.

Rules:
- Which step is allowed is `version_rules.promotion`'s answer; a version in
  maintenance is in use while the vDisk's lock is held or a device has a
  session on it, and cannot be promoted then.
- The seal (qemu-img check, fsync, sha256: slow on a big file) runs with no
  database transaction open, under an intent (`intents`): the checks and
  the intent commit first, the seal runs, then one short transaction
  applies it (`apply_promotion`) and drops the intent. While the intent
  exists the maintenance device cannot take the vDisk's lock (the
  promote/connect race), and a crash or a database failure after the seal
  leaves the intent for `RepairService`.
- A promotion that does not seal (test → production, a new time) is one
  transaction. Every promotion writes one audit row; a chain longer than
  max-versions is merged after (`MergeService.auto_merge`).
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from vdfarm.farm.models import Vdisk
from vdfarm.service import version_rules as rules
from vdfarm.service.audit import AuditWriter
from vdfarm.service.chains import (
    check_store_matches,
    check_versioned,
    locked_vdisk,
    maintenance_in_use,
    row_of,
    states_of,
    store_failure,
    version_rows,
)
from vdfarm.service.deps import Clock, SessionFactory, ThisServer
from vdfarm.service.errors import Conflict, Invalid, ServiceError
from vdfarm.service.intents import (
    SEAL,
    check_no_intent,
    drop_intent,
    record_intent,
    take_intent,
)
from vdfarm.service.merges import MergeService, working_on
from vdfarm.service.records import to_plain
from vdfarm.service.version_records import (
    PromoteResult,
    VersionInfo,
    version_info,
    version_target,
)
from vdfarm.store import versions as store_versions
from vdfarm.store.errors import StoreError
from vdfarm.store.manifest import ManifestFile
from vdfarm.store.qemu_img import QemuImgError
from vdfarm.store.store import Store


class PromotionService:
    """Promote versions; seal them on the way out of maintenance."""

    def __init__(
        self,
        session: SessionFactory,
        clock: Clock,
        audit: AuditWriter,
        store: Store,
        merges: MergeService,
        here: ThisServer,
    ) -> None:
        self._session = session
        self._clock = clock
        self._audit_writer = audit
        self._store = store
        self._merges = merges
        self._here = here

    def _info_of(self, session: Session, vdisk: Vdisk, number: int) -> VersionInfo:
        return version_info(self._store, session, vdisk, number, self._clock())

    def promote(
        self, vdisk: str, to: str, at: datetime | None = None, actor: str | None = None
    ) -> PromoteResult:
        """Promote VDISK's newest version to TO ("test" or "production"; for
        production, in effect from AT, else now). Leaving maintenance seals it.
        Then merges the chain if it is longer than the vDisk's max-versions.

        Raises NotFound, Invalid (bad target or time, no version to promote),
        Conflict (its maintenance device is still connected), Unavailable.
        """
        if at is not None and at.tzinfo is None:
            raise Invalid("invalid --at: give a time with a zone, e.g. 2030-01-31T22:00:00Z")
        if at is not None and to != rules.PRODUCTION:
            raise Invalid("--at is only for a promotion to production")
        now = self._clock()
        with working_on(self._store, vdisk):
            with self._session() as session:
                row = locked_vdisk(session, vdisk)
                check_versioned(row)
                check_no_intent(session, row)
                rows = version_rows(session, row.id)
                top, access, seal = rules.promotion(states_of(rows), to, now, vdisk)
                if top.access == rules.MAINTENANCE and (
                    busy := maintenance_in_use(session, row, top.number, now)
                ):
                    raise Conflict(
                        f"cannot promote version {top.number} while its maintenance "
                        f"device is connected: {busy}"
                    )
                check_store_matches(self._store, vdisk, rows)
                effective = (at or now) if access == rules.PRODUCTION else None
                plan = {
                    "number": top.number,
                    "file": row_of(rows, top.number).file_name,
                    "access": access,
                    "production_at": effective.isoformat() if effective else None,
                    "actor": actor,
                    "before": to_plain(self._info_of(session, row, top.number)),
                }
                too_long = len(rows) > row.max_versions
                if not seal:
                    info = self.apply_promotion(session, row, plan, None, now)
                else:  # the slow part runs after this transaction, under an intent
                    intent_id = record_intent(session, row, self._here.id, SEAL, plan, now).id
            if seal:
                entry = self._seal_file(vdisk, top.number, intent_id)
                with self._session() as session:
                    row = locked_vdisk(session, vdisk)
                    take_intent(session, row, intent_id)
                    info = self.apply_promotion(session, row, plan, entry, now)
                    drop_intent(session, row.id, intent_id)
        merged, skipped = self._merges.auto_merge(vdisk, actor) if too_long else (None, None)
        return PromoteResult(version=info, merged=merged, merge_skipped=skipped)

    def apply_promotion(
        self,
        session: Session,
        row: Vdisk,
        plan: dict[str, Any],
        sealed: ManifestFile | None,
        now: datetime,
        repaired: bool = False,
    ) -> VersionInfo:
        """Record a promotion (PLAN as `promote` makes it; SEALED the top
        file's sealed manifest entry when it left maintenance) with its audit
        row; returns the version after. Raises nothing of its own."""
        number = plan["number"]
        version = row_of(version_rows(session, row.id), number)
        version.access = plan["access"]
        at = plan["production_at"]
        version.production_at = datetime.fromisoformat(at) if at else None
        if sealed is not None:
            version.size, version.sha256, version.sealed_at = sealed.size, sealed.sha256, now
        info = self._info_of(session, row, number)
        after: Any = {**to_plain(info), "repaired": True} if repaired else info
        self._audit_writer.record(
            session,
            actor=plan["actor"],
            action="version.promote",
            target_type="version",
            target_name=version_target(row.name, number),
            before=plan["before"],
            after=after,
        )
        return info

    def _seal_file(self, vdisk: str, number: int, intent_id: int) -> ManifestFile:
        """Check, fsync and hash the top file (no transaction open); on
        failure the intent is dropped (the file is still open) and Invalid
        or Unavailable raised."""
        try:
            return store_versions.seal_top(self._store, vdisk)
        except (QemuImgError, StoreError) as exc:
            with contextlib.suppress(ServiceError), self._session() as session:
                row = locked_vdisk(session, vdisk)
                drop_intent(session, row.id, intent_id)
            if isinstance(exc, QemuImgError):
                raise Invalid(f"version {number} of vDisk {vdisk} cannot be sealed: {exc}") from exc
            raise store_failure(vdisk, exc) from exc
