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
- Promote when replicated: `promote(..., when_replicated=True)` to
  production records the target on the version (`promote_when_replicated`)
  and leaves it in test (sealing it first if it was open: only a sealed
  version replicates); `apply_scheduled` later applies it through the same
  `apply_promotion`, claimed by a conditional update so that one server
  applies it when several try at once. Any other promotion or a revert of
  the version clears the schedule.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from vdfarm.farm.models import Vdisk, VdiskVersion
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
from vdfarm.service.deps import Clock, SessionFactory, ThisServer, changed_rows
from vdfarm.service.errors import Conflict, Invalid, ServiceError
from vdfarm.service.intents import (
    SEAL,
    check_no_intent,
    drop_intent,
    intent_of,
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
from vdfarm.store.progress import Progress, silent
from vdfarm.store.qemu_img import QemuImgError
from vdfarm.store.store import Store

SYSTEM_ACTOR = "system"
SCHEDULED = "when_replicated: scheduled"  # audit detail of a promotion put off
APPLIED = "when_replicated"  # audit detail of one applied once replicated


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
        self,
        vdisk: str,
        to: str,
        at: datetime | None = None,
        actor: str | None = None,
        when_replicated: bool = False,
        progress: Progress = silent,
    ) -> PromoteResult:
        """Promote VDISK's newest version to TO ("test" or "production"; for
        production, in effect from AT, else now). Leaving maintenance seals it.
        Then merges the chain if it is longer than the vDisk's max-versions.
        PROGRESS hears the seal's hash (and the merge's fold and hash).

        WHEN_REPLICATED (to production): the switch waits until every up
        server of the vDisk's store holds the version (`apply_scheduled`,
        which the servers' replication task runs); the version is test
        until then, sealed now if it was open (only a sealed version
        replicates). To test it changes nothing: leaving maintenance makes
        a version test in the same step that seals it, so there is nothing
        left to wait for, and the promotion happens now.

        Raises NotFound, Invalid (bad target or time, no version to promote,
        AT with WHEN_REPLICATED, a version pending production), Conflict (its
        maintenance device is still connected), Unavailable.
        """
        if at is not None and at.tzinfo is None:
            raise Invalid("invalid --at: give a time with a zone, e.g. 2030-01-31T22:00:00Z")
        if at is not None and to != rules.PRODUCTION:
            raise Invalid("--at is only for a promotion to production")
        if at is not None and when_replicated:
            raise Invalid("give --at or --when-replicated, not both")
        scheduled = when_replicated and to == rules.PRODUCTION
        now = self._clock()
        with working_on(self._store, vdisk):
            with self._session() as session:
                row = locked_vdisk(session, vdisk)
                check_versioned(row)
                check_no_intent(session, row)
                rows = version_rows(session, row.id)
                top, access, seal = rules.promotion(states_of(rows), to, now, vdisk)
                if scheduled:
                    access = self._scheduled_access(top, now, vdisk)
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
                    "when_replicated": rules.PRODUCTION if scheduled else None,
                }
                too_long = len(rows) > row.max_versions
                if not seal:
                    info = self.apply_promotion(session, row, plan, None, now)
                else:  # the slow part runs after this transaction, under an intent
                    intent_id = record_intent(session, row, self._here.id, SEAL, plan, now).id
            if seal:
                entry = self._seal_file(vdisk, top.number, intent_id, progress)
                with self._session() as session:
                    row = locked_vdisk(session, vdisk)
                    take_intent(session, row, intent_id)
                    info = self.apply_promotion(session, row, plan, entry, now)
                    drop_intent(session, row.id, intent_id)
        merged, skipped = (
            self._merges.auto_merge(vdisk, actor, progress) if too_long else (None, None)
        )
        return PromoteResult(version=info, merged=merged, merge_skipped=skipped)

    @staticmethod
    def _scheduled_access(top: rules.VersionState, now: datetime, vdisk: str) -> str:
        """The access a version gets now when its move to production waits
        for replication: test (sealed now if open). Raises Invalid (the
        version is pending production already)."""
        if rules.shown_access(top, now) == rules.PENDING:
            raise Invalid(
                f"version {top.number} of vDisk {vdisk} is pending production; revert it "
                f"(vdfarm version revert {vdisk}) to promote it when it is replicated instead"
            )
        return rules.TEST

    def apply_scheduled(self, vdisk_id: int, number: int) -> PromoteResult | None:
        """Apply the promotion to production scheduled for version NUMBER of
        vDisk VDISK_ID (`promote(..., when_replicated=True)`), as `promote`
        applies one (`apply_promotion`, then the merge of a chain past
        max-versions), by actor `system`, audited with detail
        `when_replicated`. The schedule is claimed by a conditional update
        in the same transaction (the vDisk row locked), so when several
        servers try at once exactly one applies it; the others get None, as
        does a version no longer scheduled (or no longer test) and a vDisk
        whose seal or merge is under way (tried again later).

        Raises Unavailable (database down).
        """
        now = self._clock()
        with self._session() as session:
            query = select(Vdisk).where(Vdisk.id == vdisk_id).with_for_update()
            row = session.scalars(query).one_or_none()
            if row is None or intent_of(session, row.id) is not None:
                return None
            rows = version_rows(session, row.id)
            version = next((r for r in rows if r.number == number), None)
            if version is None or version.access != rules.TEST:
                return None
            claim = (
                update(VdiskVersion)
                .where(
                    VdiskVersion.id == version.id,
                    VdiskVersion.promote_when_replicated == rules.PRODUCTION,
                )
                .values(promote_when_replicated=None)
            )
            if changed_rows(session.execute(claim)) != 1:
                return None
            plan = {
                "number": number,
                "file": version.file_name,
                "access": rules.PRODUCTION,
                "production_at": now.isoformat(),
                "actor": SYSTEM_ACTOR,
                "before": to_plain(self._info_of(session, row, number)),
                "when_replicated": None,
                "detail": APPLIED,
            }
            info = self.apply_promotion(session, row, plan, None, now)
            too_long, name = len(rows) > row.max_versions, row.name
        merged, skipped = self._merges.auto_merge(name, SYSTEM_ACTOR) if too_long else (None, None)
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
        """Record a promotion (PLAN as `promote` or `apply_scheduled` makes
        it; SEALED the top file's sealed manifest entry when it left
        maintenance) with its audit row; returns the version after. The
        version's schedule becomes PLAN's `when_replicated` (None: cleared).
        Raises nothing of its own."""
        number = plan["number"]
        version = row_of(version_rows(session, row.id), number)
        version.access = plan["access"]
        at = plan["production_at"]
        version.production_at = datetime.fromisoformat(at) if at else None
        version.promote_when_replicated = plan.get("when_replicated")
        if sealed is not None:
            version.size, version.sha256, version.sealed_at = sealed.size, sealed.sha256, now
        info = self._info_of(session, row, number)
        notes: dict[str, Any] = {"repaired": True} if repaired else {}
        if plan.get("when_replicated"):
            notes["detail"] = SCHEDULED
        if plan.get("detail"):
            notes["detail"] = plan["detail"]
        after: Any = {**to_plain(info), **notes} if notes else info
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

    def _seal_file(
        self, vdisk: str, number: int, intent_id: int, progress: Progress
    ) -> ManifestFile:
        """Check, fsync and hash the top file (no transaction open); on
        failure the intent is dropped (the file is still open) and Invalid
        or Unavailable raised."""
        try:
            return store_versions.seal_top(self._store, vdisk, progress)
        except (QemuImgError, StoreError) as exc:
            with contextlib.suppress(ServiceError), self._session() as session:
                row = locked_vdisk(session, vdisk)
                drop_intent(session, row.id, intent_id)
            if isinstance(exc, QemuImgError):
                raise Invalid(f"version {number} of vDisk {vdisk} cannot be sealed: {exc}") from exc
            raise store_failure(vdisk, exc) from exc
