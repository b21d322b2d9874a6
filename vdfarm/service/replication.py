"""Replication in the farm database: what each server should hold, what it
is doing about it, the status every front end shows, store sets, and the
promotions that wait for replication.

Rules:
- Receivers pull. `work_for(server)` answers, in one short read, every
  vDisk of every store set the server is part of with its SEALED chain
  (the versions with a sha256, base first; an open maintenance version is
  never replicated) and, per version, the up servers (but this one, and
  only those with a REST API) whose inventory lists it with the database's
  sha256, least busy first. A vDisk with an intent (a merge or a seal
  under way: its files and rows change in two steps) is left out until the
  step is done. The daemon's replication task (elsewhere) does the copying
  and reports back with `report` / `clear`.
- Boot files travel with the versions that boot them: `work_for` lists,
  per vDisk, the boot files of its sealed chain (each once, by kind and
  sha256, under the lowest version that boots it) and, per file, the up
  servers whose boot inventory (`store_boot_files`) lists it.
- The inventory (`store_versions`, verified) is the truth about what a
  server holds; a `replicas` row only says what a server is doing about a
  version it does not hold yet. `status` joins both: `present`, `server
  down` (a down server, even one that holds it), else the row's state
  (`copying`, `queued`, `failed`, `mismatch`), else `missing`. A version is
  *replicated* when at least one up server of its store set holds it and
  every up server of it does; until then it is pending.
- `apply_due_promotions` applies the promotions scheduled for when a
  version is replicated (`PromotionService.apply_scheduled`, which claims
  each one so that two servers running it at once apply it once).
- Store sets are managed here too (`vdfarm.service.store_sets` holds the
  checks); every change is audited in its transaction.
- Transactions are short and hold no I/O; what can be computed from the
  rows is computed after the transaction, in plain functions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from vdfarm.farm.models import (
    BOOT_KINDS,
    REPLICA_STATES,
    Replica,
    Server,
    StoreBootFile,
    StoreSet,
    StoreVersion,
    Vdisk,
    VdiskIntent,
    VdiskVersion,
    VersionBootFile,
)
from vdfarm.farm.placement import is_up
from vdfarm.farm.windows import Window, windows_of_text
from vdfarm.service import version_rules as rules
from vdfarm.service.audit import AuditWriter
from vdfarm.service.deps import Clock, SessionFactory
from vdfarm.service.errors import Invalid, NotFound
from vdfarm.service.promotions import PromotionService
from vdfarm.service.replica_status import (
    ReplicaStatus,
    ReplicationProgress,
    is_replicated,
    progress_of,
    status_of,
)
from vdfarm.service.servers import load_counts
from vdfarm.service.settings import SettingsService
from vdfarm.service.store_sets import (
    StoreSetInfo,
    add_store_set,
    change_store_set,
    list_store_sets,
    narrowed_servers,
    servers_of,
)
from vdfarm.service.version_records import version_target
from vdfarm.store.manifest import boot_file_name

MAX_REASON = 1000  # characters of a reported reason kept
MAX_FILE_NAME = 128  # the width of replicas.file_name


@dataclass(frozen=True)
class Peer:
    """An up server that holds a version verified, as a receiver reaches
    it: its REST API at host:api_port (HTTPS if api_tls); `busy` is its
    count of device sessions."""

    server_id: int
    name: str
    host: str
    api_port: int
    api_tls: bool
    busy: int


@dataclass(frozen=True)
class WantedFile:
    """One sealed file of a vDisk's chain, as the database recorded it; or,
    with a KIND, one of its boot files (VERSION: the lowest version of the
    chain that boots it)."""

    version: int
    file_name: str
    format: str
    size: int
    sha256: str
    parent_file: str | None
    kind: str | None = None


@dataclass(frozen=True)
class WantedVdisk:
    """A vDisk a server should hold: its sealed chain (base first), per
    version the peers to pull it from (least busy first), the versions
    whose copies ignore the windows (`replication start --now`), and its
    store set's cap (bytes/s, None: none) and windows (none: always open)."""

    vdisk_id: int
    name: str
    virtual_size: int
    chain: tuple[WantedFile, ...]
    peers: dict[int, tuple[Peer, ...]]
    now_versions: frozenset[int]
    max_rate_bps: int | None
    windows: tuple[Window, ...]
    boot_files: tuple[WantedFile, ...] = ()
    boot_peers: dict[str, tuple[Peer, ...]] = field(default_factory=dict)  # by file name

    def peers_of(self, file: WantedFile) -> tuple[Peer, ...]:
        """The peers to pull FILE (of the chain, or a boot file) from."""
        if file.kind is not None:
            return self.boot_peers.get(file.file_name, ())
        return self.peers.get(file.version, ())


@dataclass(frozen=True)
class ReplicationWork:
    """What SERVER_ID should hold: the vDisks of every store set it is part
    of, and the names of every vDisk of the farm (a local copy of any other
    vDisk is left over from a delete)."""

    server_id: int
    vdisks: tuple[WantedVdisk, ...]
    all_vdisk_names: frozenset[str]


@dataclass(frozen=True)
class ReplicationStart:
    """A version whose copies ignore the windows from `at` on."""

    vdisk: str
    version: int
    at: datetime


def _chain(rows: Sequence[VdiskVersion]) -> list[VdiskVersion]:
    """The sealed ROWS of one vDisk in chain order (base first): the chain
    of the newest, following parent links."""
    if not rows:
        return []
    by_number = {r.number: r for r in rows}
    chain = [max(rows, key=lambda r: r.number)]
    while (parent := chain[-1].parent_number) is not None and parent in by_number:
        chain.append(by_number[parent])
    return chain[::-1]


def _check_report(
    state: str, reason: str, bytes_done: int, bytes_total: int, rate_bps: float, file_name: str
) -> None:
    if state not in REPLICA_STATES:
        raise Invalid(f"invalid replica state {state!r}: choose one of {', '.join(REPLICA_STATES)}")
    for what, value in (("bytes done", bytes_done), ("bytes total", bytes_total)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise Invalid(f"invalid {what} {value!r}: give a whole number >= 0")
    if not isinstance(rate_bps, int | float) or not math.isfinite(rate_bps) or rate_bps < 0:
        raise Invalid(f"invalid rate {rate_bps!r}: give a number of bytes/s >= 0")
    if not isinstance(reason, str):
        raise Invalid("invalid reason: give text")
    if not isinstance(file_name, str) or not 0 < len(file_name) <= MAX_FILE_NAME:
        raise Invalid(f"invalid file name {file_name!r}")


class ReplicationService:
    """Replication's side of the farm database, for the daemon and every front end."""

    def __init__(
        self,
        session: SessionFactory,
        clock: Clock,
        audit: AuditWriter,
        settings: SettingsService,
        promotions: PromotionService,
    ) -> None:
        self._session = session
        self._clock = clock
        self._audit = audit
        self._settings = settings
        self._promotions = promotions

    # -- store sets ----------------------------------------------------------

    def add_store(
        self,
        name: str,
        servers: Sequence[str] | None = None,
        max_rate: str | int | None = None,
        windows: Sequence[str] | None = None,
        actor: str | None = None,
    ) -> StoreSetInfo:
        """Add store set NAME (see `store_sets.add_store_set`).

        Raises Invalid, NotFound (unknown server), Conflict (name taken), Unavailable.
        """
        with self._session() as session:
            return add_store_set(session, self._audit, name, servers, max_rate, windows, actor)

    def set_store(
        self,
        name: str,
        servers: Sequence[str] | None = None,
        max_rate: str | int | None = None,
        windows: Sequence[str] | None = None,
        actor: str | None = None,
    ) -> StoreSetInfo:
        """Change store set NAME (see `store_sets.change_store_set`).

        Raises Invalid, NotFound (unknown store or server), Unavailable.
        """
        with self._session() as session:
            return change_store_set(session, self._audit, name, servers, max_rate, windows, actor)

    def store_sets(self) -> list[StoreSetInfo]:
        """Every store set, by name. Raises Unavailable."""
        with self._session() as session:
            return list_store_sets(session)

    # -- the receivers' side -------------------------------------------------

    def work_for(self, server_id: int, now: datetime | None = None) -> ReplicationWork:
        """What SERVER_ID should hold at NOW (default: the clock's now).

        Raises Unavailable (database down).
        """
        now = now or self._clock()
        timeout = self._settings.heartbeat_timeout()
        with self._session() as session:
            servers = session.scalars(select(Server)).all()
            every = frozenset(s.id for s in servers)
            narrowed = narrowed_servers(session)
            store_sets = {row.id: row for row in session.scalars(select(StoreSet)).all()}
            vdisks = session.scalars(select(Vdisk).order_by(Vdisk.name)).all()
            changing = set(session.scalars(select(VdiskIntent.vdisk_id)).all())
            # A private vDisk is not replicated: its home's copy, which its
            # device writes, is the only current one (login sends the device
            # nowhere else), and a copy of a moving disk would be stale.
            mine = [
                v
                for v in vdisks
                if v.access_mode != "private"
                and v.id not in changing
                and server_id in servers_of(narrowed, v.store_set_id, every)
            ]
            ids = [v.id for v in mine]
            sealed = self._sealed_rows(session, ids)
            held = self._holders(session, ids)
            boot_rows = self._boot_rows(session, ids)
            boot_held = self._boot_holders(session, ids)
            busy = load_counts(session, now) if ids else {}
        up = {
            s.id: s
            for s in servers
            if s.id != server_id
            and s.api_port is not None
            and is_up(s.last_heartbeat, now, timeout)
        }
        sessions = {sid: counts.connected for sid, counts in busy.items()}
        wanted = []
        for vdisk in mine:
            chain = _chain(sealed.get(vdisk.id, []))
            store_set = store_sets.get(vdisk.store_set_id)
            peers = {
                row.number: _peers(
                    (
                        sid
                        for sid, sha in held.get((vdisk.id, row.number), {}).items()
                        if sha == row.sha256
                    ),
                    up,
                    sessions,
                )
                for row in chain
            }
            files = tuple(
                WantedFile(
                    version=row.number,
                    file_name=row.file_name,
                    format=row.format,
                    size=row.size or 0,
                    sha256=row.sha256 or "",
                    parent_file=chain[i - 1].file_name if i else None,
                )
                for i, row in enumerate(chain)
            )
            boot = _boot_wanted(chain, boot_rows)
            boot_peers = {
                f.file_name: _peers(
                    boot_held.get((vdisk.id, f.kind or "", f.sha256), ()), up, sessions
                )
                for f in boot
            }
            wanted.append(
                WantedVdisk(
                    vdisk_id=vdisk.id,
                    name=vdisk.name,
                    virtual_size=vdisk.size,
                    chain=files,
                    peers=peers,
                    now_versions=frozenset(r.number for r in chain if r.replicate_now_at),
                    max_rate_bps=store_set.max_rate_bps if store_set else None,
                    windows=windows_of_text(store_set.windows) if store_set else (),
                    boot_files=boot,
                    boot_peers=boot_peers,
                )
            )
        return ReplicationWork(
            server_id=server_id,
            vdisks=tuple(wanted),
            all_vdisk_names=frozenset(v.name for v in vdisks),
        )

    def report(
        self,
        server_id: int,
        vdisk_id: int,
        version: int,
        file_name: str,
        state: str,
        reason: str = "",
        bytes_done: int = 0,
        bytes_total: int = 0,
        rate_bps: float = 0.0,
        peer_server_id: int | None = None,
    ) -> None:
        """Record what SERVER_ID is doing about VERSION of VDISK_ID (STATE:
        queued, copying, failed or mismatch; REASON is cut to MAX_REASON
        characters). One short transaction.

        Raises Invalid (bad state or number), Conflict (the vDisk, server or
        peer is gone), Unavailable.
        """
        _check_report(state, reason, bytes_done, bytes_total, rate_bps, file_name)
        now = self._clock()
        key = (
            Replica.server_id == server_id,
            Replica.vdisk_id == vdisk_id,
            Replica.version == version,
        )
        with self._session() as session:
            row = session.scalars(select(Replica).where(*key)).one_or_none()
            if row is None:
                row = Replica(server_id=server_id, vdisk_id=vdisk_id, version=version)
                session.add(row)
            row.file_name, row.state, row.reason = file_name, state, reason[:MAX_REASON]
            row.bytes_done, row.bytes_total = bytes_done, bytes_total
            row.rate_bps, row.peer_server_id, row.updated_at = float(rate_bps), peer_server_id, now

    def clear(self, server_id: int, vdisk_id: int, version: int) -> None:
        """Forget what SERVER_ID was doing about VERSION of VDISK_ID (it holds
        it now, or the version is gone). Raises Unavailable."""
        with self._session() as session:
            session.execute(
                delete(Replica).where(
                    Replica.server_id == server_id,
                    Replica.vdisk_id == vdisk_id,
                    Replica.version == version,
                )
            )

    # -- what every front end shows ------------------------------------------

    def status(self, vdisk: str | None = None, version: int | None = None) -> list[ReplicaStatus]:
        """Every sealed version of every vDisk (or of VDISK; only VERSION of
        it if given) on every server of its store set, by vDisk, version and
        server name.

        Raises NotFound (no such vDisk or version), Invalid (VERSION without
        VDISK, or a version open for maintenance: never replicated),
        Unavailable.
        """
        if version is not None and vdisk is None:
            raise Invalid("give the vDisk of the version")
        now = self._clock()
        timeout = self._settings.heartbeat_timeout()
        with self._session() as session:
            query = select(Vdisk).order_by(Vdisk.name)
            if vdisk is not None:
                query = query.where(Vdisk.name == vdisk)
            vdisks = session.scalars(query).all()
            if vdisk is not None and not vdisks:
                raise NotFound(f"no vDisk named {vdisk}")
            if version is not None:
                _check_version(session, vdisks[0], version)
            servers = session.scalars(select(Server).order_by(Server.name)).all()
            narrowed = narrowed_servers(session)
            ids = [v.id for v in vdisks]
            sealed = self._sealed_rows(session, ids)
            held = self._holders(session, ids)
            replicas = {
                (r.server_id, r.vdisk_id, r.version): r
                for r in session.scalars(select(Replica).where(Replica.vdisk_id.in_(ids))).all()
            }
        names = {s.id: s.name for s in servers}
        up = {s.id for s in servers if is_up(s.last_heartbeat, now, timeout)}
        every = frozenset(names)
        statuses = []
        for row in vdisks:
            members = servers_of(narrowed, row.store_set_id, every)
            for sealed_row in _chain(sealed.get(row.id, [])):
                if version is not None and sealed_row.number != version:
                    continue
                holders = {
                    sid
                    for sid, sha in held.get((row.id, sealed_row.number), {}).items()
                    if sha == sealed_row.sha256
                }
                pending = not is_replicated(members, up, holders)
                for server in (s for s in servers if s.id in members):
                    statuses.append(
                        status_of(
                            row.name,
                            sealed_row,
                            server,
                            up=server.id in up,
                            holds=server.id in holders,
                            pending=pending,
                            replica=replicas.get((server.id, row.id, sealed_row.number)),
                            peer_names=names,
                            now=now,
                        )
                    )
        return statuses

    def progress(self, vdisk: str, version: int) -> ReplicationProgress:
        """How far VERSION of VDISK is (for `replication wait`).

        Raises NotFound, Invalid (see `status`), Unavailable.
        """
        return progress_of(self.status(vdisk, version), vdisk, version)

    def start_now(
        self, vdisk: str, version: int | None = None, actor: str | None = None
    ) -> ReplicationStart:
        """Let the copies of VERSION of VDISK (default: its newest sealed
        version) ignore the store set's windows from now on. Audited as
        `replication.start`.

        Raises NotFound (no such vDisk or version), Invalid (a version open
        for maintenance, or a bad number), Unavailable.
        """
        if version is not None and (
            not isinstance(version, int) or isinstance(version, bool) or version < 0
        ):
            raise Invalid(f"invalid version {version!r}: give a version number >= 0")
        now = self._clock()
        with self._session() as session:
            row = session.scalars(select(Vdisk).where(Vdisk.name == vdisk)).one_or_none()
            if row is None:
                raise NotFound(f"no vDisk named {vdisk}")
            if version is None:
                chain = _chain(self._sealed_rows(session, [row.id]).get(row.id, []))
                if not chain:
                    raise Invalid(f"vDisk {vdisk} has no sealed version to replicate")
                version = chain[-1].number
            target = _check_version(session, row, version)
            before = {"replicate_now_at": target.replicate_now_at}
            target.replicate_now_at = now
            self._audit.record(
                session,
                actor=actor,
                action="replication.start",
                target_type="version",
                target_name=version_target(vdisk, version),
                before=before,
                after={"replicate_now_at": now},
            )
        return ReplicationStart(vdisk=vdisk, version=version, at=now)

    # -- promotions that wait for replication ----------------------------------

    def apply_due_promotions(self, now: datetime | None = None) -> list[str]:
        """Apply every promotion scheduled for when its version is
        replicated whose version is, at NOW (default: the clock's); return
        the versions promoted ("vdisk vN"). Safe to run on several servers
        at once: each is applied once (`PromotionService.apply_scheduled`).

        Raises Unavailable (database down).
        """
        now = now or self._clock()
        timeout = self._settings.heartbeat_timeout()
        with self._session() as session:
            scheduled = session.execute(
                select(VdiskVersion, Vdisk.name, Vdisk.store_set_id)
                .join(Vdisk, Vdisk.id == VdiskVersion.vdisk_id)
                .where(
                    VdiskVersion.promote_when_replicated == rules.PRODUCTION,
                    VdiskVersion.sha256.is_not(None),
                )
                .order_by(Vdisk.name, VdiskVersion.number)
            ).all()
            if not scheduled:
                return []
            servers = session.execute(select(Server.id, Server.last_heartbeat)).all()
            narrowed = narrowed_servers(session)
            held = self._holders(session, sorted({v.vdisk_id for v, _, _ in scheduled}))
        up = {sid for sid, beat in servers if is_up(beat, now, timeout)}
        every = frozenset(sid for sid, _ in servers)
        applied = []
        for version, name, store_set_id in scheduled:
            holders = {
                sid
                for sid, sha in held.get((version.vdisk_id, version.number), {}).items()
                if sha == version.sha256
            }
            members = servers_of(narrowed, store_set_id, every)
            if not is_replicated(members, up, holders):
                continue
            if self._promotions.apply_scheduled(version.vdisk_id, version.number) is not None:
                applied.append(version_target(name, version.number))
        return applied

    # -- reads shared by the calls above ---------------------------------------

    @staticmethod
    def _sealed_rows(session: Session, vdisk_ids: list[int]) -> dict[int, list[VdiskVersion]]:
        """vDisk id -> its sealed version rows (with a sha256), by number."""
        if not vdisk_ids:
            return {}
        query = (
            select(VdiskVersion)
            .where(VdiskVersion.vdisk_id.in_(vdisk_ids), VdiskVersion.sha256.is_not(None))
            .order_by(VdiskVersion.vdisk_id, VdiskVersion.number)
        )
        rows: dict[int, list[VdiskVersion]] = {}
        for row in session.scalars(query).all():
            rows.setdefault(row.vdisk_id, []).append(row)
        return rows

    @staticmethod
    def _boot_rows(session: Session, vdisk_ids: list[int]) -> dict[int, list[VersionBootFile]]:
        """Version row id -> its boot file rows, for the vDisks VDISK_IDS."""
        if not vdisk_ids:
            return {}
        query = (
            select(VersionBootFile)
            .join(VdiskVersion, VdiskVersion.id == VersionBootFile.version_id)
            .where(VdiskVersion.vdisk_id.in_(vdisk_ids))
        )
        rows: dict[int, list[VersionBootFile]] = {}
        for row in session.scalars(query).all():
            rows.setdefault(row.version_id, []).append(row)
        return rows

    @staticmethod
    def _boot_holders(
        session: Session, vdisk_ids: list[int]
    ) -> dict[tuple[int, str, str], set[int]]:
        """(vDisk id, kind, sha256) -> the servers whose boot inventory lists it."""
        if not vdisk_ids:
            return {}
        query = select(
            StoreBootFile.vdisk_id,
            StoreBootFile.kind,
            StoreBootFile.sha256,
            StoreBootFile.server_id,
        ).where(StoreBootFile.vdisk_id.in_(vdisk_ids))
        held: dict[tuple[int, str, str], set[int]] = {}
        for vdisk_id, kind, sha256, server_id in session.execute(query).all():
            held.setdefault((vdisk_id, kind, sha256), set()).add(server_id)
        return held

    @staticmethod
    def _holders(
        session: Session, vdisk_ids: list[int]
    ) -> dict[tuple[int, int], dict[int, str | None]]:
        """(vDisk id, version) -> {server id: the sha256 its inventory lists}."""
        if not vdisk_ids:
            return {}
        query = select(
            StoreVersion.vdisk_id, StoreVersion.version, StoreVersion.server_id, StoreVersion.sha256
        ).where(StoreVersion.vdisk_id.in_(vdisk_ids))
        held: dict[tuple[int, int], dict[int, str | None]] = {}
        for vdisk_id, number, server_id, sha256 in session.execute(query).all():
            held.setdefault((vdisk_id, number), {})[server_id] = sha256
        return held


def _peers(
    server_ids: Iterable[int], up: dict[int, Server], sessions: dict[int, int]
) -> tuple[Peer, ...]:
    """The servers SERVER_IDS that are UP, as peers, least busy first (then by name)."""
    holders = sorted(
        (up[sid] for sid in server_ids if sid in up),
        key=lambda s: (sessions.get(s.id, 0), s.name),
    )
    return tuple(
        Peer(
            server_id=s.id,
            name=s.name,
            host=s.hostname,
            api_port=s.api_port or 0,
            api_tls=s.api_tls,
            busy=sessions.get(s.id, 0),
        )
        for s in holders
    )


def _boot_wanted(
    chain: list[VdiskVersion], boot_rows: dict[int, list[VersionBootFile]]
) -> tuple[WantedFile, ...]:
    """The boot files the versions of CHAIN boot, each once (under the
    lowest version that boots it), in chain order, kernel first."""
    found: dict[str, WantedFile] = {}
    for version in chain:
        for row in sorted(boot_rows.get(version.id, ()), key=lambda r: BOOT_KINDS.index(r.kind)):
            name = boot_file_name(row.kind, row.sha256)
            if name not in found:
                found[name] = WantedFile(
                    version=version.number,
                    file_name=name,
                    format="raw",
                    size=row.size,
                    sha256=row.sha256,
                    parent_file=None,
                    kind=row.kind,
                )
    return tuple(found.values())


def _check_version(session: Session, vdisk: Vdisk, number: int) -> VdiskVersion:
    """Version NUMBER of VDISK, if it is sealed. Raises NotFound, Invalid."""
    row = session.scalars(
        select(VdiskVersion).where(VdiskVersion.vdisk_id == vdisk.id, VdiskVersion.number == number)
    ).one_or_none()
    if row is None:
        raise NotFound(f"vDisk {vdisk.name} has no version {number}")
    if row.sha256 is None:
        raise Invalid(
            f"version {number} of vDisk {vdisk.name} is open for maintenance: it is "
            f"replicated once it is promoted (vdfarm version promote {vdisk.name} --to test)"
        )
    return row
