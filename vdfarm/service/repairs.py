"""Repair: complete or roll back a merge or seal a crash (or a database
failure) cut short, and re-hash a private copy.

Rules:
- A half-done step is an intent row (`intents`) still there after its
  process is gone. Only the server whose store the step changed can repair
  it (the files are there); any other refuses, naming that server.
- The vDisk's store directory is taken exclusively (`store.exclusive`)
  while repairing, so a step still running in a live process on this host
  (it holds `busy`) is never touched: repair refuses with a Conflict.
- Merge: the files say how far it got (`recovery.fold_progress`). The kept
  file not yet replaced → rolled back (the intent goes; the store is as it
  was; leftover temporaries are `Store.remove_leftovers`' job). Replaced,
  or the manifest already folded → completed: the manifest finished if
  needed, then the database gets what the merge would have written
  (`merges.apply_merge`).
- Seal: the top file is sealed now or already (`seal_top` is idempotent:
  an already sealed top is re-hashed and must match) → completed
  (`PromotionService.apply_promotion`); a file qemu-img finds corrupt →
  rolled back (unsealed again, the version stays open for maintenance).
- Every repair writes one `vdisk.repair` audit row; completing also writes
  the step's own row, marked `repaired`.
- `resume_all` is what a server runs at start (the daemon's store task,
  in a thread: it may hash big files): every intent of THIS server's store,
  and every private copy here a device wrote (re-hashed if its lock is free).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from vdfarm.farm.models import Vdisk, VdiskIntent
from vdfarm.service.audit import AuditWriter
from vdfarm.service.chains import locked_vdisk, store_failure
from vdfarm.service.deps import Clock, SessionFactory, ThisServer
from vdfarm.service.errors import Conflict, NotFound, ServiceError
from vdfarm.service.intents import MERGE, SEAL, drop_intent, intent_of, plan_of, take_intent
from vdfarm.service.merges import apply_merge
from vdfarm.service.private_copies import rehash_copy
from vdfarm.service.promotions import PromotionService
from vdfarm.service.sessions import release_retired_files
from vdfarm.store import recovery
from vdfarm.store import versions as store_versions
from vdfarm.store.errors import StoreError
from vdfarm.store.locking import exclusive
from vdfarm.store.manifest import ManifestFile
from vdfarm.store.qemu_img import QemuImgError
from vdfarm.store.store import Store

log = logging.getLogger(__name__)

COMPLETED, ROLLED_BACK, NOTHING = "completed", "rolled back", "nothing to repair"


@dataclass(frozen=True)
class RepairResult:
    """What a repair of one vDisk did: `step` is the half-done step found
    (merge / seal / None), `outcome` completed / rolled back / nothing to
    repair, `notes` anything else it did (a private copy re-hashed)."""

    vdisk: str
    step: str | None
    outcome: str
    notes: tuple[str, ...] = ()


class RepairService:
    """Finish what a crash left half-done in this server's store and the farm."""

    def __init__(
        self,
        session: SessionFactory,
        clock: Clock,
        audit: AuditWriter,
        store: Store,
        here: ThisServer,
        promotions: PromotionService,
    ) -> None:
        self._session = session
        self._clock = clock
        self._audit = audit
        self._store = store
        self._here = here
        self._promotions = promotions

    def repair(self, vdisk: str, actor: str | None = None) -> RepairResult:
        """Complete or roll back VDISK's half-done merge or seal (see the
        module rules), then re-hash its private copy if a device wrote it.

        Raises NotFound, Conflict (the step belongs to another server's
        store, or is still running here), Unavailable (DB or store trouble).
        """
        with self._session() as session:
            row = session.scalars(select(Vdisk).where(Vdisk.name == vdisk)).one_or_none()
            if row is None:
                raise NotFound(f"no vDisk named {vdisk}")
            intent = intent_of(session, row.id)
            found = _Found.of(intent) if intent else None
            vdisk_id = row.id
        step, outcome = None, NOTHING
        if found is not None:
            if found.server_id != self._here.id:
                raise Conflict(
                    f"the half-done {found.kind} of vDisk {vdisk} changed the store of server "
                    f"{found.server_name}: run vdfarm vdisk repair {vdisk} there"
                )
            with exclusive(self._store.root / vdisk) as free:
                if not free and self._store.contains(vdisk):
                    raise Conflict(
                        f"a running process is changing vDisk {vdisk}'s files now; "
                        f"repair it when that has finished"
                    )
                step = found.kind
                outcome = self._finish(vdisk, found, actor)
            release_retired_files(self._session, self._store, vdisk_id)
        note = rehash_copy(self._session, self._clock, self._audit, self._store, vdisk)
        return RepairResult(vdisk, step, outcome, (note,) if note else ())

    def resume_all(self) -> list[RepairResult]:
        """Repair every half-done step of THIS server's store and re-hash
        every private copy here a device wrote (its lock free now): call at
        server start, off the event loop (it may hash big files). A step
        another live process still runs is skipped and logged. Returns what
        was repaired.

        Raises Unavailable (DB down).
        """
        with self._session() as session:
            names = set(
                session.scalars(
                    select(Vdisk.name)
                    .join(VdiskIntent, VdiskIntent.vdisk_id == Vdisk.id)
                    .where(VdiskIntent.server_id == self._here.id)
                ).all()
            )
        try:
            written = {m.vdisk for m in self._store.scan() if any(f.unverified for f in m.files)}
        except StoreError as exc:
            log.warning("cannot list the store to re-hash written copies: %s", exc)
            written = set()
        done = []
        for name in sorted(names | written):
            try:
                result = self.repair(name, actor=f"server:{self._here.name}")
            except ServiceError as exc:
                log.warning("cannot repair vDisk %s at start: %s", name, exc)
                continue
            if result.step is None and not result.notes:
                continue
            log.info("vDisk %s repaired: %s %s %s", name, result.step, result.outcome, result.notes)
            done.append(result)
        return done

    def _finish(self, vdisk: str, found: _Found, actor: str | None) -> str:
        try:
            if found.kind == MERGE:
                entry = self._merge_entry(vdisk, found)
            else:
                entry = self._seal_entry(vdisk, found)
        except (StoreError, QemuImgError) as exc:
            if found.kind == SEAL and isinstance(exc, QemuImgError):
                entry = None
            else:
                raise store_failure(vdisk, exc) from exc
        now = self._clock()
        with self._session() as session:
            row = locked_vdisk(session, vdisk)
            take_intent(session, row, found.id)
            if entry is None:
                outcome = ROLLED_BACK
            elif found.kind == MERGE:
                apply_merge(session, self._audit, row, found.plan, entry, now, repaired=True)
                outcome = COMPLETED
            else:
                self._promotions.apply_promotion(session, row, found.plan, entry, now, True)
                outcome = COMPLETED
            drop_intent(session, row.id, found.id)
            self._audit.record(
                session,
                actor=actor,
                at=now,
                action="vdisk.repair",
                target_type="vdisk",
                target_name=vdisk,
                before={"step": found.kind, "started_at": found.started_at, "plan": found.plan},
                after={"outcome": outcome},
            )
        return outcome

    def _merge_entry(self, vdisk: str, found: _Found) -> ManifestFile | None:
        """The kept file's entry after completing the fold, or None if the
        fold never replaced it (roll back)."""
        keep, new_base = found.plan["keep_file"], found.plan["new_base"]
        progress = recovery.fold_progress(self._store, vdisk, keep, new_base)
        if progress == recovery.NOT_STARTED:
            return None
        if progress == recovery.FILE_REPLACED:
            entry, _ = recovery.complete_fold(
                self._store, vdisk, keep, new_base=new_base, retired_at=found.started_at
            )
            return entry
        return self._store.manifest(vdisk).file(keep)

    def _seal_entry(self, vdisk: str, found: _Found) -> ManifestFile | None:
        """The top file's sealed entry (sealing it now if needed), or None
        (the file is not the one the intent named: roll back). Raises
        QemuImgError when the file is corrupt (the caller rolls back)."""
        if self._store.manifest(vdisk).top.name != found.plan["file"]:
            return None
        try:
            return store_versions.seal_top(self._store, vdisk)
        except QemuImgError:
            store_versions.unseal_top(self._store, vdisk)
            raise


@dataclass(frozen=True)
class _Found:
    """An intent as read in a closed transaction."""

    id: int
    kind: str
    server_id: int | None
    server_name: str
    started_at: datetime
    plan: dict

    @classmethod
    def of(cls, intent: VdiskIntent) -> _Found:
        return cls(
            id=intent.id,
            kind=intent.kind,
            server_id=intent.server_id,
            server_name=intent.server.name if intent.server else "?",
            started_at=intent.started_at,
            plan=plan_of(intent),
        )
