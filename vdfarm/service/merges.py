"""Merging a vDisk's version chain, and exporting one version flattened.

Rules:
- `merge` keeps every version some device type boots now or later
  (`version_rules.merge_plan`) and folds the versions under the lowest of
  them into it: onto the base ("merged updates") or into a new full qcow2
  base (`new_base`). The kept version keeps its number, access and content;
  the folded versions' rows are deleted.
- A merge is refused while a device has a session on a version it would
  delete. The files that leave the chain are retired, and deleted only once
  no session may still read them (`sessions.release_retired_files`).
- Crash-safe and short in the database: the checks and the merge's intent
  are committed first (`intents`), the fold (qemu-img, hashing) runs with
  no transaction open, then one short transaction applies the result
  (`apply_merge`) and deletes the intent. A failure after the fold leaves
  the intent for `RepairService`, which completes it.
- `auto_merge` (after a promote past max-versions) runs the same merge and
  reports why it could not instead of raising.
- `export` writes one version, flattened, through qemu-img into a new file
  (never over an existing one); it changes nothing in the farm, and
  qemu-img runs after the reading transaction has closed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from vdfarm.farm.models import Vdisk, VdiskVersion
from vdfarm.service import version_rules as rules
from vdfarm.service.audit import AuditWriter
from vdfarm.service.chains import (
    booted_devices,
    chain_in_store,
    check_store_matches,
    locked_vdisk,
    maintenance_in_use,
    row_of,
    sealed_hash,
    states_of,
    store_failure,
    version_rows,
)
from vdfarm.service.deps import Clock, SessionFactory, ThisServer
from vdfarm.service.errors import Conflict, Invalid, NotFound, ServiceError
from vdfarm.service.intents import (
    MERGE,
    check_no_intent,
    drop_intent,
    record_intent,
    take_intent,
)
from vdfarm.service.sessions import release_retired_files
from vdfarm.store import versions as store_versions
from vdfarm.store.errors import StoreError
from vdfarm.store.locking import busy
from vdfarm.store.manifest import VDISK_NAME_RE, Manifest, ManifestFile
from vdfarm.store.progress import Progress, silent
from vdfarm.store.qemu_img import QemuImgError
from vdfarm.store.store import Store

EXPORT_FORMATS = store_versions.EXPORT_FORMATS


@dataclass(frozen=True)
class MergeResult:
    """What a merge did: `kept` now sits on `base` (itself if `new_base`);
    `removed` versions are gone; of their files, `deleted` are removed and
    `retained` wait for the devices that may still read them."""

    vdisk: str
    kept: int
    base: int
    new_base: bool
    removed: tuple[int, ...]
    deleted: tuple[str, ...]
    retained: tuple[str, ...]
    automatic: bool


@dataclass(frozen=True)
class ExportResult:
    """A version written out as a standalone image."""

    vdisk: str
    version: int
    format: str
    path: Path
    size: int


@contextlib.contextmanager
def working_on(store: Store, vdisk: str) -> Iterator[None]:
    """Hold `busy` on VDISK's store directory (if it has one) for a whole
    change, so a repair elsewhere on this host leaves it alone."""
    directory = store.root / vdisk
    with contextlib.ExitStack() as stack:
        if VDISK_NAME_RE.fullmatch(vdisk) and directory.is_dir():
            try:
                stack.enter_context(busy(directory))
            except StoreError as exc:
                raise store_failure(vdisk, exc) from exc
        yield


def apply_merge(
    session: Session,
    audit: AuditWriter,
    row: Vdisk,
    plan: dict[str, Any],
    entry: ManifestFile,
    now: datetime,
    repaired: bool = False,
) -> None:
    """Record in the database a fold the store has done (PLAN as recorded in
    the merge's intent; ENTRY the kept file's new manifest entry), with its
    audit row. Raises nothing of its own."""
    rows = version_rows(session, row.id)
    for number in plan["removed"]:
        if gone := next((r for r in rows if r.number == number), None):
            session.delete(gone)
    session.flush()
    keep = row_of(rows, plan["keep"])
    keep.parent_number = None if plan["new_base"] else plan["base"]
    keep.format, keep.size, keep.sha256 = entry.format, entry.size, entry.sha256
    if plan["new_base"]:
        row.format, row.sha256 = entry.format, sealed_hash(entry, row.name)
    chain_before = plan["chain_before"]
    audit.record(
        session,
        actor=plan["actor"],
        at=now,
        action="version.merge",
        target_type="vdisk",
        target_name=row.name,
        before={"versions": chain_before},
        after={
            "versions": [n for n in chain_before if n not in plan["removed"]],
            "kept": plan["keep"],
            "new_base": plan["new_base"],
            "automatic": plan["automatic"],
            **({"repaired": True} if repaired else {}),
        },
    )


def _check_no_session_on(session: Session, vdisk: Vdisk, removed: tuple[int, ...]) -> None:
    booted = booted_devices(session, vdisk.id)
    for number in removed:
        if devices := booted.get(number):
            raise Conflict(
                f"device(s) {', '.join(devices)} booted version {number} of vDisk "
                f"{vdisk.name}, which the merge would delete; merge after they reboot"
            )


class MergeService:
    """Merge a vDisk's chain; export one version flattened."""

    def __init__(
        self,
        session: SessionFactory,
        clock: Clock,
        audit: AuditWriter,
        store: Store,
        here: ThisServer,
    ) -> None:
        self._session = session
        self._clock = clock
        self._audit = audit
        self._store = store
        self._here = here

    def merge(
        self,
        vdisk: str,
        *,
        new_base: bool = False,
        actor: str | None = None,
        automatic: bool = False,
        progress: Progress = silent,
    ) -> MergeResult:
        """Fold VDISK's chain (see the module rules); PROGRESS hears the fold
        and the hash.

        Raises NotFound, Invalid (nothing to merge), Conflict (a device booted a
        version the merge would delete; another merge or seal under way),
        Unavailable (store, qemu-img or DB trouble; a failure after the fold
        leaves the intent for `vdfarm vdisk repair`).
        """
        now = self._clock()
        with working_on(self._store, vdisk):
            intent_id, plan = self._begin(vdisk, new_base, actor, automatic, now)
            try:
                entry, _ = store_versions.fold(
                    self._store,
                    vdisk,
                    plan["keep_file"],
                    new_base=new_base,
                    retired_at=now,
                    progress=progress,
                )
            except (StoreError, QemuImgError) as exc:
                self._abandon(vdisk, intent_id)
                raise store_failure(vdisk, exc) from exc
            with self._session() as session:
                row = locked_vdisk(session, vdisk)
                take_intent(session, row, intent_id)
                apply_merge(session, self._audit, row, plan, entry, now)
                drop_intent(session, row.id, intent_id)
                vdisk_id = row.id
        retired = list(plan["leaving_files"])
        deleted = release_retired_files(self._session, self._store, vdisk_id)
        return MergeResult(
            vdisk=vdisk,
            kept=plan["keep"],
            base=plan["base"],
            new_base=new_base,
            removed=tuple(plan["removed"]),
            deleted=tuple(n for n in retired if n in deleted),
            retained=tuple(n for n in retired if n not in deleted),
            automatic=automatic,
        )

    def check(self, vdisk: str, new_base: bool = False) -> None:
        """Refuse now what `merge` would refuse before touching a file
        (nothing written; the merge checks again): for a front end that
        runs the merge later (a job) and answers bad input at once.

        Raises what `merge` raises before its fold: NotFound, Invalid,
        Conflict, Unavailable.
        """
        with self._session() as session:
            self._checked(session, vdisk, new_base, self._clock())

    def _checked(
        self, session: Session, vdisk: str, new_base: bool, now: datetime
    ) -> tuple[Vdisk, list[VdiskVersion], rules.MergePlan, Manifest]:
        """The vDisk row (locked), its version rows, the merge plan and the
        store's manifest, once every check has passed."""
        row = locked_vdisk(session, vdisk)
        check_no_intent(session, row)
        rows = version_rows(session, row.id)
        plan = rules.merge_plan(
            states_of(rows), row.override_version, now, new_base=new_base, vdisk=vdisk
        )
        _check_no_session_on(session, row, plan.removed)
        manifest = check_store_matches(self._store, vdisk, rows)
        return row, rows, plan, manifest

    def _begin(
        self, vdisk: str, new_base: bool, actor: str | None, automatic: bool, now: datetime
    ) -> tuple[int, dict[str, Any]]:
        """Check everything and record the merge's intent (committed)."""
        with self._session() as session:
            row, rows, plan, manifest = self._checked(session, vdisk, new_base, now)
            keep = row_of(rows, plan.keep)
            index = [f.name for f in manifest.files].index(keep.file_name)
            leaving = manifest.files[:index] if new_base else manifest.files[1:index]
            details = {
                "keep": keep.number,
                "keep_file": keep.file_name,
                "base": keep.number if new_base else rows[0].number,
                "new_base": new_base,
                "removed": list(plan.removed),
                "leaving_files": [f.name for f in leaving],
                "chain_before": [r.number for r in rows],
                "automatic": automatic,
                "actor": actor,
            }
            intent = record_intent(session, row, self._here.id, MERGE, details, now)
            return intent.id, details

    def _abandon(self, vdisk: str, intent_id: int) -> None:
        """Forget an intent whose file work failed before it changed anything
        (the store stays as it was); if the database fails too, repair rolls
        it back later."""
        with contextlib.suppress(ServiceError), self._session() as session:
            row = locked_vdisk(session, vdisk)
            drop_intent(session, row.id, intent_id)

    def auto_merge(
        self, vdisk: str, actor: str | None, progress: Progress = silent
    ) -> tuple[MergeResult | None, str | None]:
        """Merge VDISK's updates because its chain outgrew max-versions:
        (the result, None), or (None, why it could not). Never raises."""
        try:
            return self.merge(vdisk, actor=actor, automatic=True, progress=progress), None
        except ServiceError as exc:
            return None, exc.message

    def export(
        self,
        vdisk: str,
        out: Path,
        fmt: str,
        version: int | None = None,
        progress: Progress = silent,
    ) -> ExportResult:
        """Write VERSION of VDISK (default: what production devices boot now)
        flattened as a FMT image at OUT; PROGRESS hears the copy.

        Raises Invalid (unknown format, no such directory, bad version number),
        NotFound (vDisk or version), Conflict (OUT exists; the version is open
        and its maintenance device connected), Unavailable.
        """
        if fmt not in EXPORT_FORMATS:
            raise Invalid(
                f"unknown export format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}"
            )
        if version is not None and (
            not isinstance(version, int) or isinstance(version, bool) or version < 0
        ):
            raise Invalid(f"invalid version {version!r}: give a version number >= 0")
        out = Path(out).absolute()
        if out.exists() or out.is_symlink():
            raise Conflict(f"{out} already exists")
        if not out.parent.is_dir():
            raise Invalid(f"directory {out.parent} does not exist")
        now = self._clock()
        with self._session() as session:
            row = session.scalars(select(Vdisk).where(Vdisk.name == vdisk)).one_or_none()
            if row is None:
                raise NotFound(f"no vDisk named {vdisk}")
            rows = version_rows(session, row.id)
            states = states_of(rows)
            if version is None:
                version = rules.device_boot(
                    states, row.access_mode, rules.PRODUCTION, row.override_version, now
                ).number
            if rules.find(states, version, vdisk).access == rules.MAINTENANCE and (
                busy := maintenance_in_use(session, row, version, now)
            ):
                raise Conflict(f"version {version} is open and in use: {busy}")
            top = chain_in_store(self._store, vdisk, rows, version).paths[-1]
        try:
            size = store_versions.export_flat(self._store, vdisk, top.name, fmt, out, progress)
        except (StoreError, QemuImgError) as exc:
            raise store_failure(vdisk, exc) from exc
        return ExportResult(vdisk=vdisk, version=version, format=fmt, path=out, size=size)
