"""Boot files of vDisk versions: attach a kernel, an initramfs and a kernel
command line to a vDisk's newest version (`vdisk boot`), and find the
boot file a device asks for (`held`, for `GET /boot/files/…`).

Rules:
- Boot files go to the vDisk's NEWEST version (the one `version new` would
  build on, whatever its access): a sealed version's disk content never
  changes, but what it boots may; devices get the new files at their next
  boot. A new version starts with its parent's (`VersionService.new`).
- Only standard vDisks: a private vDisk is not versioned nor replicated,
  so boot files would live on one store only (refused, one line).
- Every check runs first (the vDisk, its mode, no merge or seal under way,
  this store holds its chain, the sources are regular files); the files
  are copied into the store (hashed as they are copied) with no
  transaction open; one short transaction then records them in the
  version's rows, refusing if the newest version changed meanwhile, and
  writes the audit row (`version.boot`, before and after); only then are
  they listed in the store's manifest, and the vDisk's boot files no
  version uses any more are removed. A call that fails before the commit
  leaves no file listed and no row changed (its copies are removed).
- Files are read from sources opened once (`store.boot_files`): a path the
  local user names, or a file of the API's transfer directory
  (`TransferService.attach_boot`); the server never serves a path a user
  gave, only its own copies, by (vDisk, version, kind).
- `held` answers only a file this server holds as the database recorded
  it (listed in the manifest with that sha256 and size, on disk with that
  size); anything else is NotFound, whatever the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from vdfarm.farm.models import BOOT_KINDS, Vdisk, VdiskVersion, VersionBootFile
from vdfarm.service.audit import AuditWriter
from vdfarm.service.boot_records import INITRD, KERNEL, apply_boot, boot_files_of, check_cmdline
from vdfarm.service.chains import (
    check_store_matches,
    check_versioned,
    locked_vdisk,
    store_failure,
    version_rows,
)
from vdfarm.service.deps import Clock, SessionFactory
from vdfarm.service.errors import Conflict, Invalid, NotFound, Unavailable
from vdfarm.service.intents import check_no_intent
from vdfarm.service.vdisks import find_vdisk
from vdfarm.service.version_records import VersionInfo, version_info, version_target
from vdfarm.store import boot_files
from vdfarm.store.errors import InvalidName, StoreError
from vdfarm.store.manifest import BootFile, boot_file_name, check_vdisk_name
from vdfarm.store.store import Store

# The query of `held` (every boot file request), built once: building a
# select costs more than running it; per request only the values change.
_HELD_QUERY = (
    select(VersionBootFile.size, VersionBootFile.sha256)
    .join(VdiskVersion, VdiskVersion.id == VersionBootFile.version_id)
    .join(Vdisk, Vdisk.id == VdiskVersion.vdisk_id)
    .where(
        Vdisk.name == bindparam("vdisk"),
        VdiskVersion.number == bindparam("version"),
        VersionBootFile.kind == bindparam("kind"),
    )
)


@dataclass(frozen=True)
class HeldBootFile:
    """A boot file this server holds as the database recorded it."""

    vdisk: str
    version: int
    kind: str
    path: Path
    size: int
    sha256: str


def _check_request(kinds: Sequence[str], cmdline: str | None, clear: bool) -> None:
    """Raises Invalid for a request that asks for nothing, or clears and sets at once."""
    if clear and (kinds or cmdline is not None):
        raise Invalid("give --clear alone: it removes the newest version's boot files")
    if not clear and not kinds and cmdline is None:
        raise Invalid("give a kernel, an initramfs, a command line, or --clear")
    if len(set(kinds)) != len(kinds):
        raise Invalid("give each boot file once")
    if cmdline is not None:
        check_cmdline(cmdline)


class BootService:
    """Boot files of versions, for every front end and the boot routes."""

    def __init__(
        self, session: SessionFactory, clock: Clock, audit: AuditWriter, store: Store
    ) -> None:
        self._session = session
        self._clock = clock
        self._audit = audit
        self._store = store

    def attach(
        self,
        vdisk: str,
        *,
        kernel: str | Path | None = None,
        initrd: str | Path | None = None,
        cmdline: str | None = None,
        clear: bool = False,
        actor: str | None = None,
    ) -> VersionInfo:
        """Give VDISK's newest version the boot files KERNEL and INITRD
        (paths on this host; each given one replaces that kind) and the
        kernel command line CMDLINE (None: unchanged; "" when its first
        kernel comes without one), or take them all away (CLEAR). Answers
        the version.

        Raises Invalid (a bad request, source or name; a private vDisk; no
        kernel yet), NotFound, Conflict (a merge or seal under way; the
        newest version changed meanwhile), Unavailable (store or database).
        """
        given = [(k, p) for k, p in ((KERNEL, kernel), (INITRD, initrd)) if p is not None]
        _check_request([k for k, _ in given], cmdline, clear)
        sources: list[boot_files.BootSource] = []
        try:
            for kind, path in given:
                try:
                    sources.append(boot_files.open_boot_source(kind, Path(path)))
                except boot_files.BadBootSource as exc:
                    raise Invalid(str(exc)) from exc
            return self.attach_sources(vdisk, sources, cmdline, clear, actor)
        finally:
            for source in sources:
                source.close()

    def attach_sources(
        self,
        vdisk: str,
        sources: Sequence[boot_files.BootSource],
        cmdline: str | None,
        clear: bool,
        actor: str | None,
    ) -> VersionInfo:
        """`attach` from sources already open (the caller closes them).

        Raises what `attach` raises.
        """
        _check_request([s.kind for s in sources], cmdline, clear)
        try:
            check_vdisk_name(vdisk)
        except InvalidName as exc:
            raise Invalid(str(exc)) from exc
        number = self._check_target(vdisk, [s.kind for s in sources], clear)
        copied = self._copy_in(vdisk, sources)
        try:
            info = self._record(vdisk, number, copied, cmdline, clear, actor, sources)
        except BaseException:
            boot_files.discard_unlisted(self._store, vdisk, copied.values())
            raise
        self._settle_store(vdisk, list(copied.values()))
        return info

    def _check_target(self, vdisk: str, kinds: Sequence[str], clear: bool) -> int:
        """The number of VDISK's newest version, if it may get boot files.

        Raises NotFound, Invalid, Conflict, Unavailable.
        """
        with self._session() as session:
            row = find_vdisk(session, vdisk)
            rows = self._versions(session, row)
            top = rows[-1]
            if clear and top.boot_cmdline is None:
                raise Invalid(f"version {top.number} of vDisk {vdisk} has no boot files")
            if not clear and KERNEL not in kinds and top.boot_cmdline is None:
                raise Invalid(
                    f"version {top.number} of vDisk {vdisk} has no boot files yet: give its kernel"
                )
            check_store_matches(self._store, vdisk, rows)
            return top.number

    @staticmethod
    def _versions(session: Session, row: Vdisk) -> list[VdiskVersion]:
        """ROW's version rows (the newest last), if its newest may get boot
        files now. Raises Invalid (a private vDisk), Conflict (a merge or
        seal under way)."""
        try:
            check_versioned(row)
        except Invalid as exc:
            raise Invalid(
                f"vDisk {row.name} is in private mode: boot files are kept with versions and "
                f"copied to every server with them, which a private vDisk is not "
                f"(vdfarm vdisk set {row.name} --mode standard)"
            ) from exc
        check_no_intent(session, row)
        return version_rows(session, row.id)

    def _copy_in(self, vdisk: str, sources: Sequence[boot_files.BootSource]) -> dict[str, BootFile]:
        """Each source copied into VDISK's directory (not listed yet), by kind.

        Raises Invalid (a source), Unavailable (the store).
        """
        copied: dict[str, BootFile] = {}
        try:
            for source in sources:
                copied[source.kind] = boot_files.copy_in(self._store, vdisk, source)
        except StoreError as exc:
            boot_files.discard_unlisted(self._store, vdisk, copied.values())
            if isinstance(exc, boot_files.BadBootSource):
                raise Invalid(str(exc)) from exc
            raise store_failure(vdisk, exc) from exc
        return copied

    def _record(
        self,
        vdisk: str,
        number: int,
        copied: dict[str, BootFile],
        cmdline: str | None,
        clear: bool,
        actor: str | None,
        sources: Sequence[boot_files.BootSource],
    ) -> VersionInfo:
        now = self._clock()
        with self._session() as session:
            row = locked_vdisk(session, vdisk)
            top = self._versions(session, row)[-1]
            if top.number != number:
                raise Conflict(
                    f"the newest version of vDisk {vdisk} changed (now {top.number}) while "
                    "its boot files were copied; give them again"
                )
            before = version_info(self._store, session, row, number, now)
            if clear:
                apply_boot(session, top, dict.fromkeys(BOOT_KINDS), None)
            else:
                apply_boot(session, top, copied, cmdline)
            after = version_info(self._store, session, row, number, now)
            sources_named = {s.kind: s.shown for s in sources}
            self._audit.record(
                session,
                actor=actor,
                at=now,
                action="version.boot",
                target_type="version",
                target_name=version_target(vdisk, number),
                before={"boot": before.boot},
                after={"boot": after.boot, "sources": sources_named},
            )
            return after

    def _settle_store(self, vdisk: str, copied: list[BootFile]) -> None:
        """List the files just recorded in the manifest, and remove the
        vDisk's boot files no version uses now.

        Raises Unavailable (the store: the database has the change; giving
        the files again completes it).
        """
        with self._session() as session:
            used = boot_files_of(session, find_vdisk(session, vdisk).id)
        try:
            boot_files.list_boot_files(self._store, vdisk, [f for f in copied if f.name in used])
            boot_files.keep_boot_files(self._store, vdisk, set(used))
        except StoreError as exc:
            raise Unavailable(
                f"vDisk {vdisk}: the farm database has the boot files, but this store "
                f"could not list them ({exc}); give them again"
            ) from exc

    def held(self, vdisk: str, version: int, kind: str, sha256: str | None = None) -> HeldBootFile:
        """The KIND boot file of VERSION of VDISK, if this server holds it as
        the database recorded it (and, given SHA256, it is that file).

        Raises NotFound, Unavailable (database).
        """
        where = f"{kind} of version {version} of vDisk {vdisk}"
        not_here = NotFound(f"this server holds no {where}")
        if kind not in BOOT_KINDS:
            raise NotFound(f"no boot file kind {kind!r} (use {', '.join(BOOT_KINDS)})")
        try:
            check_vdisk_name(vdisk)
        except InvalidName as exc:
            raise NotFound(f"no vDisk named {vdisk!r}") from exc
        with self._session() as session:
            found = session.execute(
                _HELD_QUERY, {"vdisk": vdisk, "version": version, "kind": kind}
            ).first()
        if found is None or (sha256 is not None and found.sha256 != sha256):
            raise not_here
        name = boot_file_name(kind, found.sha256)
        try:
            manifest = self._store.manifest(vdisk)
            entry = manifest.boot_file(name)
            if entry is None or entry.size != found.size:
                raise not_here
            path = boot_files.held_boot_file(self._store, vdisk, name, manifest)
        except StoreError as exc:
            raise not_here from exc
        return HeldBootFile(
            vdisk=vdisk, version=version, kind=kind, path=path, size=found.size, sha256=found.sha256
        )
