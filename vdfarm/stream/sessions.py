"""Device sessions: what a connected device streams from, and for how long.

Rules:
- A session belongs to a *device*, not to a TCP connection. All connections
  of one device share its session (so one write cache, so multi-conn holds).
- Standard mode: a shared read-only base file under a per-device write-cache
  overlay. The cache starts empty when the session is created; it survives an
  unclean drop for `grace_seconds` so a reconnect continues where it was; a
  clean disconnect (NBD_CMD_DISC) of the last connection discards it at once.
- Private mode: the vDisk file itself, read/write, under a database lock with
  a lease renewed while the session lives and a fencing token. A session
  whose renewal is refused (someone else holds the lock) is *fenced*: every
  later write is refused with EPERM.
- The base file of a vDisk is opened once per process and shared read-only;
  the last session using it closes it.
- Database calls are blocking; they run on the `db_executor` thread, never on
  the event loop.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from vdfarm.block.cow import WriteCacheOverlay
from vdfarm.block.layer import Layer
from vdfarm.block.raw import RawFile
from vdfarm.block.readonly import ReadOnlyGuard
from vdfarm.block.stack import CheckedStack

log = logging.getLogger("vdfarm.stream")

DEFAULT_LEASE_SECONDS = 30.0


class FarmPort(Protocol):
    """What the stream service needs from the farm (vdfarm.service.Farm)."""

    def resolve_export(self, name_or_mac: str) -> Any: ...
    def resolve_vdisk_view(self, vdisk_name: str) -> Any: ...
    def acquire_lock(self, vdisk_id: int, device_id: int, lease_seconds: float) -> Any: ...
    def renew_lock(self, vdisk_id: int, device_id: int, token: int, lease_seconds: float) -> bool: ...
    def release_lock(self, vdisk_id: int, device_id: int, token: int) -> None: ...


class FencedLayer(Layer):
    """Refuses writes once its session has lost its lock (fencing)."""

    def __init__(self, next: Layer, session: "DeviceSession") -> None:
        super().__init__(next)
        self._session = session

    def _check(self) -> None:
        if self._session.fenced:
            raise OSError(errno.EPERM, "lock lost: this server no longer holds the vDisk lock")

    def pwrite(self, offset, data, fua=False):
        self._check()
        self.next.pwrite(offset, data, fua)

    def trim(self, offset, length, fua=False):
        self._check()
        self.next.trim(offset, length, fua)

    def zero(self, offset, length, may_trim=False, fua=False, fast=False):
        self._check()
        self.next.zero(offset, length, may_trim, fua, fast)


@dataclass
class DeviceSession:
    """One device's live streaming state in this server process."""

    target: Any  # vdfarm.service ExportTarget
    stack: CheckedStack
    overlay: WriteCacheOverlay | None = None
    private_file: RawFile | None = None
    lock_token: int | None = None
    fenced: bool = False
    connections: int = 0
    grace_handle: asyncio.TimerHandle | None = None
    renew_task: asyncio.Task | None = None
    connections_set: set = field(default_factory=set)

    @property
    def device_name(self) -> str:
        return self.target.device_name


class _SharedBase:
    __slots__ = ("raw", "users")

    def __init__(self, raw: RawFile) -> None:
        self.raw = raw
        self.users = 0


class SessionRegistry:
    """Creates, shares and ends device sessions for one server process."""

    def __init__(self, farm: FarmPort, cache_dir: Path, db_executor: Executor,
                 grace_seconds: float = 30.0,
                 lease_seconds: float = DEFAULT_LEASE_SECONDS) -> None:
        self.farm = farm
        self.cache_dir = Path(cache_dir)
        self.db_executor = db_executor
        self.grace_seconds = grace_seconds
        self.lease_seconds = lease_seconds
        self.sessions: dict[int, DeviceSession] = {}
        self._bases: dict[Path, _SharedBase] = {}
        self._opening: dict[int, asyncio.Future] = {}

    async def run_db(self, fn, *args):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.db_executor, fn, *args)

    async def resolve(self, export_name: str):
        """The device's export target; raises vdfarm.service errors."""
        return await self.run_db(self.farm.resolve_export, export_name)

    async def resolve_view(self, vdisk_name: str):
        """The target of the read-only view of a vDisk; raises service errors."""
        return await self.run_db(self.farm.resolve_vdisk_view, vdisk_name)

    def open_view(self, target) -> CheckedStack:
        """A read-only stack over the vDisk's shared base (no session, no
        lock: the view never writes). Pair with `close_view`."""
        return CheckedStack(ReadOnlyGuard(self._acquire_base(Path(target.path)).raw))

    def close_view(self, target) -> None:
        self._release_base(Path(target.path))

    async def attach(self, target, connection) -> DeviceSession:
        """Join (or create) the session of `target`'s device for `connection`.

        Raises the farm's Conflict when a private vDisk is locked elsewhere,
        OSError when the vDisk file cannot be opened.
        """
        device_id = target.device_id
        while device_id in self._opening:  # another connection is opening it
            await asyncio.shield(self._opening[device_id])
        session = self.sessions.get(device_id)
        if session is not None and session.target.vdisk_id != target.vdisk_id:
            # The device was reassigned since: the old session is stale.
            if session.connections == 0:
                await self._end(session)
                session = None
            else:
                raise OSError(errno.EBUSY,
                              f"device {target.device_name} is still connected to vDisk "
                              f"{session.target.vdisk_name}")
        if session is None:
            fut = asyncio.get_running_loop().create_future()
            self._opening[device_id] = fut
            try:
                session = await self._open(target)
                self.sessions[device_id] = session
            finally:
                del self._opening[device_id]
                fut.set_result(None)
        if session.grace_handle is not None:
            session.grace_handle.cancel()
            session.grace_handle = None
            log.info("device %s reconnected within grace; session kept", target.device_name)
        session.connections += 1
        session.connections_set.add(connection)
        return session

    def detach(self, session: DeviceSession, connection, clean: bool) -> None:
        """`connection` left. The last one to leave ends the session now
        (clean) or after the grace period (unclean)."""
        if connection not in session.connections_set:
            return
        session.connections_set.discard(connection)
        session.connections -= 1
        if session.connections > 0:
            return
        if clean or self.grace_seconds <= 0:
            asyncio.get_running_loop().create_task(self._end(session))
        else:
            log.info("device %s dropped uncleanly; keeping its session %.0fs",
                     session.device_name, self.grace_seconds)
            session.grace_handle = asyncio.get_running_loop().call_later(
                self.grace_seconds, self._grace_expired, session)

    def _grace_expired(self, session: DeviceSession) -> None:
        session.grace_handle = None
        if session.connections == 0:
            log.info("grace expired for device %s; session ended", session.device_name)
            asyncio.get_running_loop().create_task(self._end(session))

    async def _open(self, target) -> DeviceSession:
        if target.access_mode == "private":
            return await self._open_private(target)
        return self._open_standard(target)

    def _open_standard(self, target) -> DeviceSession:
        base = self._acquire_base(Path(target.path))
        try:
            cache_path = self.cache_dir / f"device-{target.device_id}.wcache"
            overlay = WriteCacheOverlay(base.raw, cache_path,
                                        limit_bytes=target.write_cache_limit_bytes)
        except BaseException:
            self._release_base(Path(target.path))
            raise
        log.info("device %s: standard mode on vDisk %s, write cache %s",
                 target.device_name, target.vdisk_name, cache_path)
        return DeviceSession(target=target, stack=CheckedStack(overlay), overlay=overlay)

    async def _open_private(self, target) -> DeviceSession:
        grant = await self.run_db(self.farm.acquire_lock, target.vdisk_id,
                                  target.device_id, self.lease_seconds)
        try:
            raw = RawFile(target.path, read_only=False)
        except BaseException:
            await self.run_db(self.farm.release_lock, target.vdisk_id,
                              target.device_id, grant.token)
            raise
        session = DeviceSession(target=target, stack=None, private_file=raw,  # type: ignore[arg-type]
                                lock_token=grant.token)
        session.stack = CheckedStack(FencedLayer(raw, session))
        session.renew_task = asyncio.get_running_loop().create_task(self._renew_loop(session))
        log.info("device %s: private mode on vDisk %s, lock token %d",
                 target.device_name, target.vdisk_name, grant.token)
        return session

    async def _renew_loop(self, session: DeviceSession) -> None:
        target = session.target
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                ok = await self.run_db(self.farm.renew_lock, target.vdisk_id,
                                       target.device_id, session.lock_token,
                                       self.lease_seconds)
            except Exception as exc:  # database away: keep streaming, retry
                log.warning("lock renewal for %s failed: %s", target.vdisk_name, exc)
                continue
            if not ok:
                session.fenced = True
                log.error("device %s lost the lock on vDisk %s: writes now refused",
                          target.device_name, target.vdisk_name)
                return

    async def _end(self, session: DeviceSession) -> None:
        target = session.target
        if self.sessions.get(target.device_id) is session:
            del self.sessions[target.device_id]
        if session.grace_handle is not None:
            session.grace_handle.cancel()
            session.grace_handle = None
        if session.overlay is not None:
            session.overlay.close()
            self._release_base(Path(target.path))
        if session.private_file is not None:
            if session.renew_task is not None:
                session.renew_task.cancel()
            try:
                await asyncio.get_running_loop().run_in_executor(
                    None, session.private_file.flush)
            except OSError as exc:
                log.error("final flush of %s failed: %s", target.vdisk_name, exc)
            session.private_file.close()
            if not session.fenced:
                try:
                    await self.run_db(self.farm.release_lock, target.vdisk_id,
                                      target.device_id, session.lock_token)
                except Exception as exc:  # the lease will expire by itself
                    log.warning("lock release for %s failed: %s", target.vdisk_name, exc)
        log.info("device %s: session ended", target.device_name)

    async def close_all(self) -> None:
        """End every session (server shutdown)."""
        for session in list(self.sessions.values()):
            await self._end(session)

    def _acquire_base(self, path: Path) -> _SharedBase:
        base = self._bases.get(path)
        if base is None:
            base = _SharedBase(RawFile(path, read_only=True))
            self._bases[path] = base
        base.users += 1
        return base

    def _release_base(self, path: Path) -> None:
        base = self._bases.get(path)
        if base is None:
            return
        base.users -= 1
        if base.users <= 0:
            base.raw.close()
            del self._bases[path]
