"""Device sessions: which vDisk version each connected device booted, and where.

Rules:
- One row per device (`device_id` is unique): `started` replaces any older
  row of that device (a reconnect), `ended` removes it — but only a row of
  THIS server, so a late goodbye on an old server cannot erase the session a
  device opened on a new one.
- Records lost while the database was away are repaired by `reconcile`:
  the stream server hands over what it serves, and this server's rows are
  made to match it (never another server's rows).
- The stream service calls them (through `Farm.session_started` /
  `Farm.session_ended`, or `farm.sessions`); they are not audited (no
  person changed anything), except a full write cache (`cache_full`).
- Sessions are what `version list` counts and what merge, delete and revert
  check. After a session ends, retired files of its vDisk that no remaining
  session may read are deleted (`release_retired_files`).
- A retired file (merged out of the chain at time T, from version R) may be
  read by a session that connected at or before T on version R or above.
- A session started is the device's `streaming` boot stage; the first
  report of a used write cache its `up` stage (`boot_stages`), in the same
  transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from vdfarm.farm.boot_stages import STREAMING, UP
from vdfarm.farm.models import (
    Device,
    DeviceSession,
    LoginReservation,
    Server,
    Vdisk,
    VdiskVersion,
)
from vdfarm.service.audit import AuditWriter
from vdfarm.service.boot_stages import record_stage
from vdfarm.service.deps import Clock, SessionFactory, ThisServer, changed_rows
from vdfarm.service.errors import NotFound
from vdfarm.store import versions as store_versions
from vdfarm.store.errors import StoreError
from vdfarm.store.manifest import RetiredFile
from vdfarm.store.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionInfo:
    """A connected device as the front ends show it."""

    device: str
    server: str
    vdisk: str
    version: int
    connected_at: datetime
    last_seen: datetime


@dataclass(frozen=True)
class LiveSession:
    """What a stream server knows of one of its connected devices."""

    vdisk_id: int
    version: int
    client_ip: str | None = None


def _short_address(text: str | None) -> str | None:
    """An address as stored (at most 45 characters: an IPv6 text), or None."""
    return text[:45] if text else None


@dataclass(frozen=True)
class _Reader:
    """What the retirement rule needs of one session."""

    version: int
    connected_at: datetime


def _readers(session: Session, vdisk_id: int) -> list[_Reader]:
    rows = session.execute(
        select(DeviceSession.version, DeviceSession.connected_at).where(
            DeviceSession.vdisk_id == vdisk_id
        )
    ).all()
    return [_Reader(version, connected_at) for version, connected_at in rows]


def may_read(retired: RetiredFile, reader: _Reader) -> bool:
    """True if a session READER may still read the RETIRED file."""
    above = retired.version is None or reader.version >= retired.version
    return above and reader.connected_at <= retired.retired_at


def release_retired_files(sessions: SessionFactory, store: Store, vdisk_id: int) -> list[str]:
    """Delete the retired files of vDisk VDISK_ID in STORE that no session
    may read; return their names. Store trouble is logged, never raised (the
    files stay for a later try).

    Raises Unavailable (DB down).
    """
    with sessions() as session:
        vdisk = session.get(Vdisk, vdisk_id)
        if vdisk is None:
            return []
        name, readers = vdisk.name, _readers(session, vdisk_id)
    try:
        if not store.contains(name):
            return []
        return store_versions.purge_retired(
            store, name, lambda retired: any(may_read(retired, r) for r in readers)
        )
    except StoreError as exc:
        log.warning("cannot delete retired files of vDisk %s: %s", name, exc)
        return []


class SessionService:
    """Start, refresh, end and list device sessions."""

    def __init__(
        self,
        session: SessionFactory,
        clock: Clock,
        audit: AuditWriter,
        here: ThisServer,
        store: Store,
    ) -> None:
        self._session = session
        self._clock = clock
        self._audit = audit
        self._here = here
        self._store = store

    def _release_retired_files(self, vdisk_id: int) -> None:
        release_retired_files(self._session, self._store, vdisk_id)

    def started(
        self, device_id: int, vdisk_id: int, version: int, client_ip: str | None = None
    ) -> None:
        """Record that DEVICE_ID booted VERSION of VDISK_ID from this server,
        connecting from CLIENT_IP (replacing any older session of the device).

        Raises NotFound (no such device, vDisk or version), Unavailable.
        """
        now = self._clock()
        with self._session() as session:
            if session.get(Device, device_id) is None:
                raise NotFound(f"no device with id {device_id}")
            vdisk = session.get(Vdisk, vdisk_id)
            if vdisk is None:
                raise NotFound(f"no vDisk with id {vdisk_id}")
            exists = session.scalar(
                select(VdiskVersion.id).where(
                    VdiskVersion.vdisk_id == vdisk_id, VdiskVersion.number == version
                )
            )
            if exists is None:
                raise NotFound(f"vDisk {vdisk.name} has no version {version}")
            session.execute(delete(DeviceSession).where(DeviceSession.device_id == device_id))
            session.execute(
                delete(LoginReservation).where(  # it arrived: now its session counts
                    LoginReservation.device_id == device_id
                )
            )
            session.add(
                DeviceSession(
                    device_id=device_id,
                    server_id=self._here.id,
                    vdisk_id=vdisk_id,
                    version=version,
                    connected_at=now,
                    last_seen=now,
                    client_ip=_short_address(client_ip),
                )
            )
            record_stage(session, device_id, STREAMING, now)

    def cache_full(self, device_id: int, used_bytes: int, limit_bytes: int | None) -> None:
        """Audit that DEVICE_ID's write cache refused a write (ENOSPC).

        Raises NotFound (no such device), Unavailable.
        """
        with self._session() as session:
            device = session.get(Device, device_id)
            if device is None:
                raise NotFound(f"no device with id {device_id}")
            self._audit.record(
                session,
                actor=f"server:{self._here.name}",
                action="write-cache-full",
                target_type="device",
                target_name=device.name,
                before=None,
                after={"used_bytes": used_bytes, "limit_bytes": limit_bytes},
            )

    def seen(self, device_id: int) -> bool:
        """Refresh `last_seen` of this server's session of DEVICE_ID; False if none.

        Raises Unavailable.
        """
        with self._session() as session:
            result = session.execute(
                update(DeviceSession)
                .where(
                    DeviceSession.device_id == device_id,
                    DeviceSession.server_id == self._here.id,
                )
                .values(last_seen=self._clock()),
                execution_options={"synchronize_session": False},
            )
            return changed_rows(result) == 1

    def ended(self, device_id: int) -> None:
        """Forget this server's session of DEVICE_ID (no-op if none), then
        delete retired files no session may still read.

        Raises Unavailable.
        """
        with self._session() as session:
            vdisk_id = session.scalar(
                select(DeviceSession.vdisk_id).where(
                    DeviceSession.device_id == device_id,
                    DeviceSession.server_id == self._here.id,
                )
            )
            if vdisk_id is None:
                return
            session.execute(delete(DeviceSession).where(DeviceSession.device_id == device_id))
        self._release_retired_files(vdisk_id)

    def report_cache_usage(self, used: dict[int, int]) -> None:
        """Store the write-cache bytes used by this server's connected devices
        ({device_id: bytes}); sessions of other servers are left alone.

        Raises Unavailable.
        """
        if not used:
            return
        now = self._clock()
        with self._session() as session:
            for device_id, used_bytes in used.items():
                result = session.execute(
                    update(DeviceSession)
                    .where(
                        DeviceSession.device_id == device_id,
                        DeviceSession.server_id == self._here.id,
                    )
                    .values(cache_used_bytes=used_bytes, last_seen=now)
                )
                if used_bytes > 0 and changed_rows(result) == 1:  # its first write: up
                    record_stage(session, device_id, UP, now)

    def reconcile(self, live: Mapping[int, LiveSession]) -> tuple[int, int]:
        """Make this server's session rows match LIVE ({device_id: what it
        streams}), after records were lost to a database outage: rows of
        devices no longer connected here are deleted, missing rows added,
        rows of a changed version replaced. A device's row on ANOTHER server
        is left alone (it connected there later), and so is a row with a move
        order (the device is on its way to another server). Returns (added,
        removed).

        Raises Unavailable.
        """
        now = self._clock()
        added = removed = 0
        with self._session() as session:
            rows = {
                r.device_id: r
                for r in session.scalars(
                    select(DeviceSession).where(
                        DeviceSession.device_id.in_(list(live))
                        | (DeviceSession.server_id == self._here.id)
                    )
                )
            }
            known_devices = set(
                session.scalars(select(Device.id).where(Device.id.in_(list(live)))).all()
            )
            freed: set[int] = set()
            for device_id, row in rows.items():
                if row.server_id != self._here.id or row.move_to_server_id is not None:
                    continue
                want = live.get(device_id)
                if want is None or (want.vdisk_id, want.version) != (row.vdisk_id, row.version):
                    freed.add(row.vdisk_id)
                    session.delete(row)
                    removed += 1
            session.flush()
            for device_id, want in live.items():
                had = rows.get(device_id)
                keep = had is not None and (
                    had.server_id != self._here.id
                    or had.move_to_server_id is not None
                    or (had.vdisk_id, had.version) == (want.vdisk_id, want.version)
                )
                if keep or device_id not in known_devices:
                    continue
                session.add(
                    DeviceSession(
                        device_id=device_id,
                        server_id=self._here.id,
                        vdisk_id=want.vdisk_id,
                        version=want.version,
                        connected_at=now,
                        last_seen=now,
                        client_ip=_short_address(want.client_ip),
                    )
                )
                added += 1
        for vdisk_id in sorted(freed):
            self._release_retired_files(vdisk_id)
        return added, removed

    def end_all(self) -> int:
        """Forget every session of THIS server (call at server start: after a
        crash none of them is connected any more), then delete retired files
        no session may still read; return how many sessions ended.

        Raises Unavailable.
        """
        with self._session() as session:
            mine = DeviceSession.server_id == self._here.id
            vdisk_ids = set(session.scalars(select(DeviceSession.vdisk_id).where(mine)).all())
            ended = changed_rows(session.execute(delete(DeviceSession).where(mine)))
        for vdisk_id in sorted(vdisk_ids):
            self._release_retired_files(vdisk_id)
        return ended

    def list(self) -> list[SessionInfo]:
        """Every session of the farm, by device name. Raises Unavailable."""
        query = (
            select(
                Device.name,
                Server.name,
                Vdisk.name,
                DeviceSession.version,
                DeviceSession.connected_at,
                DeviceSession.last_seen,
            )
            .join(Device, Device.id == DeviceSession.device_id)
            .join(Server, Server.id == DeviceSession.server_id)
            .join(Vdisk, Vdisk.id == DeviceSession.vdisk_id)
            .order_by(Device.name)
        )
        with self._session() as session:
            return [SessionInfo(*row) for row in session.execute(query).all()]
