"""vDisk locks: leases held by devices, taken by compare-and-set, fenced by tokens.

Rules (the database is the only lock; there are no lock files):
- Every vDisk has exactly one lock row, created with the vDisk.
- Acquire is ONE conditional UPDATE (free, expired, or already ours), then a
  row-count check: correct under concurrency on SQLite and PostgreSQL.
- `fencing_token` grows by one on every acquire and never goes down; a holder
  whose token is no longer the row's token has lost the lock (`is_current`).
- An expired lease is free for anyone; until someone takes it, its holder's
  token stays current (streaming survives a slow database).
- Every server writes its own copy of a private vDisk (and of an open
  version in maintenance), so the lock also names the vDisk's *home*: the
  server that first took it. No other server may take the lock until the
  admin moves the home (`move_home`, audited), knowing that the writes made
  on the old home are not in the new home's copy.
- A lock is a promise to write: it is granted only while the device
  still writes its vDisk (`version_rules.writes_vdisk`, re-checked with the
  vDisk row locked, so a promote that seals the version and a device that
  connects serialize) and no merge or seal is under way (`intents`).
- Only the admin's release and home moves are audited; the stream
  service's acquire/renew/release are not changes made by a person.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from vdfarm.farm.models import Device, Lock, Server, Vdisk, VdiskVersion
from vdfarm.farm.placement import is_up
from vdfarm.service import version_rules as rules
from vdfarm.service.audit import AuditWriter
from vdfarm.service.deps import Clock, SessionFactory, ThisServer, changed_rows
from vdfarm.service.errors import Conflict, NotFound
from vdfarm.service.intents import check_no_intent
from vdfarm.service.private_copies import mark_written
from vdfarm.service.settings import SettingsService
from vdfarm.service.validation import check_lease
from vdfarm.store.store import Store

HELD, EXPIRED, FREE = "held", "expired", "free"
_NO_SYNC = {"synchronize_session": False}


@dataclass(frozen=True)
class LockGrant:
    """A lock handed to a device: its fencing token and lease end."""

    token: int
    expires_at: datetime


@dataclass(frozen=True)
class LockInfo:
    """A vDisk's lock as the front ends show it."""

    vdisk: str
    holder: str | None
    server: str | None
    home: str | None  # the server whose copy holds the vDisk's writes
    lease_expires_at: datetime | None
    fencing_token: int
    acquired_at: datetime | None
    state: str


def lock_state(lock: Lock, now: datetime) -> str:
    """held / expired / free for a lock row at time NOW."""
    if lock.holder_device_id is None:
        return FREE
    if lock.lease_expires_at is None or lock.lease_expires_at < now:
        return EXPIRED
    return HELD


def lock_info(lock: Lock, now: datetime) -> LockInfo:
    return LockInfo(
        vdisk=lock.vdisk.name,
        holder=lock.holder.name if lock.holder else None,
        server=lock.server.name if lock.server else None,
        home=lock.home.name if lock.home else None,
        lease_expires_at=lock.lease_expires_at,
        fencing_token=lock.fencing_token,
        acquired_at=lock.acquired_at,
        state=lock_state(lock, now),
    )


def held_message(lock: Lock) -> str:
    """'vDisk X is locked by device Y on server Z until T'."""
    holder = lock.holder.name if lock.holder else "?"
    server = lock.server.name if lock.server else "?"
    until = lock.lease_expires_at.isoformat() if lock.lease_expires_at else "?"
    return f"vDisk {lock.vdisk.name} is locked by device {holder} on server {server} until {until}"


def home_message(lock: Lock, here: str, up: bool) -> str:
    """Why server HERE may not take LOCK: another server's copy is the current one."""
    home = lock.home.name if lock.home else "?"
    name = lock.vdisk.name
    return (
        f"vDisk {name} is written on server {home} ({'up' if up else 'down'}), whose "
        f"store holds its only current copy: serve it there, or make this server its "
        f"home (the writes made on {home} are then not here): "
        f"vdfarm lock home {name} {here}"
    )


def _check_still_writes(
    session: Session, vdisk: Vdisk, device: Device, version: int | None, now: datetime
) -> None:
    """Refuse the lock of a standard vDisk to a maintenance DEVICE (or one
    that resolved a writable VERSION) unless it boots a version open for
    maintenance now (VERSION, if given, that one). Raises Conflict."""
    if vdisk.access_mode != rules.STANDARD or (
        device.device_type != rules.MAINTENANCE and version is None
    ):
        return
    rows = session.scalars(select(VdiskVersion).where(VdiskVersion.vdisk_id == vdisk.id)).all()
    states = [
        rules.VersionState(r.number, r.parent_number, r.access, r.production_at) for r in rows
    ]
    choice = rules.device_boot(
        states, vdisk.access_mode, device.device_type, vdisk.override_version, now
    )
    if not choice.writable or (version is not None and choice.number != version):
        shown = version if version is not None else choice.number
        raise Conflict(
            f"version {shown} of vDisk {vdisk.name} is not open for maintenance any more "
            f"(promoted or sealed): device {device.name} may not write it; reconnect"
        )


def lock_of(session: Session, vdisk_id: int) -> Lock | None:
    query = select(Lock).where(Lock.vdisk_id == vdisk_id)
    return session.scalars(query.execution_options(populate_existing=True)).one_or_none()


def lock_named(session: Session, vdisk_name: str) -> Lock:
    """The lock of the vDisk called VDISK_NAME. Raises NotFound."""
    vdisk = session.scalars(select(Vdisk).where(Vdisk.name == vdisk_name)).one_or_none()
    lock = lock_of(session, vdisk.id) if vdisk else None
    if lock is None:
        raise NotFound(f"no vDisk named {vdisk_name}")
    return lock


class LockService:
    """Acquire, renew, release and check vDisk locks."""

    def __init__(
        self,
        session: SessionFactory,
        clock: Clock,
        audit: AuditWriter,
        here: ThisServer,
        settings: SettingsService,
        store: Store,
    ) -> None:
        self._session = session
        self._clock = clock
        self._audit = audit
        self._here = here
        self._settings = settings
        self._store = store

    def acquire(
        self, vdisk_id: int, device_id: int, lease_seconds: float, version: int | None = None
    ) -> LockGrant:
        """Take the lock of VDISK_ID for DEVICE_ID for LEASE_SECONDS.

        Succeeds if the lock is free, expired, or already this device's on
        THIS server (a restarted server taking back its own device; the
        token grows in every case). The same device on another server waits
        for the lease: the first server may still be writing. And only the
        vDisk's home server (the first to take it; the admin moves it with
        `move_home`) may take it: each server writes its own copy.
        In the same transaction (the vDisk row locked, as promote and merge
        lock it) the device must still write its vDisk: a standard vDisk's
        version must still be open for maintenance (VERSION, if given, is the
        one the device resolved) and no seal or merge under way. A private
        vDisk's copy here is marked unverified (`private_copies.mark_written`).
        Raises Invalid (bad lease), NotFound (no such vDisk or device),
        Conflict (held by another device; the version was sealed or is
        being sealed), Unavailable (DB down).
        """
        lease = check_lease(lease_seconds)
        now = self._clock()
        expires = now + timedelta(seconds=lease)
        with self._session() as session:
            vdisk, device = self._check_exists(session, vdisk_id, device_id)
            check_no_intent(session, vdisk)
            _check_still_writes(session, vdisk, device, version, now)
            result = session.execute(
                update(Lock)
                .where(Lock.vdisk_id == vdisk_id)
                .where(
                    or_(
                        Lock.holder_device_id.is_(None),
                        Lock.lease_expires_at < now,
                        and_(
                            Lock.holder_device_id == device_id,
                            Lock.server_id == self._here.id,
                        ),
                    )
                )
                .where(or_(Lock.home_server_id.is_(None), Lock.home_server_id == self._here.id))
                .values(
                    holder_device_id=device_id,
                    server_id=self._here.id,
                    home_server_id=self._here.id,
                    lease_expires_at=expires,
                    fencing_token=Lock.fencing_token + 1,
                    acquired_at=now,
                ),
                execution_options=_NO_SYNC,
            )
            lock = lock_of(session, vdisk_id)
            if lock is None:
                raise NotFound(f"vDisk with id {vdisk_id} has no lock row")
            if changed_rows(result) != 1:
                if lock_state(lock, now) == HELD:
                    raise Conflict(held_message(lock))
                up = lock.home is not None and is_up(
                    lock.home.last_heartbeat, now, self._settings.heartbeat_timeout()
                )
                raise Conflict(home_message(lock, self._here.name, up))
            if vdisk.access_mode == rules.PRIVATE:
                mark_written(session, self._store, self._here.id, vdisk)
            return LockGrant(token=lock.fencing_token, expires_at=expires)

    def _check_exists(
        self, session: Session, vdisk_id: int, device_id: int
    ) -> tuple[Vdisk, Device]:
        query = select(Vdisk).where(Vdisk.id == vdisk_id).with_for_update()
        vdisk = session.scalars(query).one_or_none()
        if vdisk is None:
            raise NotFound(f"no vDisk with id {vdisk_id}")
        device = session.get(Device, device_id)
        if device is None:
            raise NotFound(f"no device with id {device_id}")
        return vdisk, device

    def renew(self, vdisk_id: int, device_id: int, token: int, lease_seconds: float) -> bool:
        """Extend the lease of a lock still held with TOKEN by DEVICE_ID.

        Returns False (and changes nothing) if the token is stale or the
        device is no longer the holder.
        Raises Invalid (bad lease), Unavailable (DB down).
        """
        lease = check_lease(lease_seconds)
        expires = self._clock() + timedelta(seconds=lease)
        with self._session() as session:
            result = session.execute(
                update(Lock)
                .where(Lock.vdisk_id == vdisk_id)
                .where(Lock.fencing_token == token)
                .where(Lock.holder_device_id == device_id)
                .values(lease_expires_at=expires),
                execution_options=_NO_SYNC,
            )
            return changed_rows(result) == 1

    def release(self, vdisk_id: int, device_id: int, token: int) -> None:
        """Free a lock held by DEVICE_ID with TOKEN; a stale token changes nothing.

        Raises Unavailable (DB down).
        """
        with self._session() as session:
            session.execute(
                update(Lock)
                .where(Lock.vdisk_id == vdisk_id)
                .where(Lock.fencing_token == token)
                .where(Lock.holder_device_id == device_id)
                .values(holder_device_id=None, server_id=None, lease_expires_at=None),
                execution_options=_NO_SYNC,
            )

    def is_current(self, vdisk_id: int, token: int) -> bool:
        """True if TOKEN is the lock's token and the lock has a holder.

        Raises Unavailable (DB down).
        """
        with self._session() as session:
            lock = lock_of(session, vdisk_id)
            return (
                lock is not None
                and lock.holder_device_id is not None
                and lock.fencing_token == token
            )

    def list(self) -> list[LockInfo]:
        """Every vDisk's lock, by vDisk name. Raises Unavailable (DB down)."""
        now = self._clock()
        with self._session() as session:
            locks = session.scalars(select(Lock).join(Lock.vdisk).order_by(Vdisk.name)).all()
            return [lock_info(lock, now) for lock in locks]

    def move_home(self, vdisk_name: str, server_name: str, actor: str | None = None) -> LockInfo:
        """Make SERVER_NAME the home of vDisk VDISK_NAME's writes (its copy
        becomes the current one; writes made on the old home are not in it).
        Audited as `lock.home`; returns the lock after.

        Raises NotFound (no such vDisk or server), Conflict (the lock is held:
        release it first), Unavailable (DB down).
        """
        now = self._clock()
        with self._session() as session:
            lock = lock_named(session, vdisk_name)
            server = session.scalars(select(Server).where(Server.name == server_name)).one_or_none()
            if server is None:
                raise NotFound(f"no server named {server_name}")
            before = lock_info(lock, now)
            if before.state == HELD and lock.server_id != server.id:
                raise Conflict(
                    f"{held_message(lock)}: release it first (vdfarm lock release {vdisk_name})"
                )
            lock.home_server_id = server.id
            session.flush()
            session.refresh(lock)
            after = lock_info(lock, now)
            self._audit.record(
                session,
                actor=actor,
                at=now,
                action="lock.home",
                target_type="lock",
                target_name=vdisk_name,
                before=before,
                after=after,
            )
            return after

    def release_by_admin(self, vdisk_name: str, actor: str | None = None) -> LockInfo:
        """Free the lock of vDisk VDISK_NAME whoever holds it (audited if it had
        a holder); returns the lock as it was. The old holder's token stops
        being current at once.

        Raises NotFound (no such vDisk), Unavailable (DB down).
        """
        now = self._clock()
        with self._session() as session:
            lock = lock_named(session, vdisk_name)
            before = lock_info(lock, now)
            if before.state == FREE:
                return before
            lock.holder_device_id = None
            lock.server_id = None
            lock.lease_expires_at = None
            session.flush()
            session.refresh(lock)
            self._audit.record(
                session,
                actor=actor,
                at=now,
                action="lock.release",
                target_type="lock",
                target_name=vdisk_name,
                before=before,
                after=lock_info(lock, now),
            )
            return before
