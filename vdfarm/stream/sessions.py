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
- A version chain (base + qcow2 deltas) is opened once per process and
  shared read-only (ChainCache); the last session using it closes it.
- Maintenance (a maintenance device on the open version) is like private
  mode: the chain's top is opened read/write over the shared lower chain,
  under the vDisk lock.
- Each session is recorded in the farm (which version the device booted),
  so merges never delete a file a device still reads; a database outage
  only costs the record, never the stream.
- Database calls are blocking; they run on the `db_executor` thread, never on
  the event loop. Lease renewals (and the server's heartbeat) run on their
  own `link_executor` thread, so a slow session record or export lookup
  never lets a lease run out.
- Streaming survives the database: every export a device resolved is
  remembered, so while the database is away a known device can still
  connect (a standard-mode device from what was cached; a private or
  maintenance device only by rejoining its live session, since a lock cannot
  be taken without the database). While the heartbeat says the database is
  away (`database_reachable`), known devices do not wait on it at all and
  session records are not tried. Records that failed or were skipped mark
  the registry *dirty*; `reconcile` repairs them once the database is back.
- A move order (rebalance) ends a session at once, without grace: its
  connections are closed after their in-flight requests are answered, and
  its farm record stays (with the order) until the device connects to its
  new server, so the device's next login finds the order.
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
from vdfarm.block.fenced import FencedLayer
from vdfarm.block.layer import Layer
from vdfarm.block.readonly import ReadOnlyGuard
from vdfarm.block.stack import CheckedStack
from vdfarm.stream.chains import ChainCache, open_file

log = logging.getLogger("vdfarm.stream")

DEFAULT_LEASE_SECONDS = 30.0


class FarmPort(Protocol):
    """What the stream service needs from the farm (vdfarm.service.Farm)."""

    def resolve_export(self, name_or_mac: str) -> Any: ...
    def resolve_vdisk_view(self, vdisk_name: str) -> Any: ...
    def acquire_lock(self, vdisk_id: int, device_id: int, lease_seconds: float) -> Any: ...
    def renew_lock(
        self, vdisk_id: int, device_id: int, token: int, lease_seconds: float
    ) -> bool: ...
    def release_lock(self, vdisk_id: int, device_id: int, token: int) -> None: ...
    def session_started(
        self, device_id: int, vdisk_id: int, version: int, client_ip: str | None = None
    ) -> None: ...
    def session_ended(self, device_id: int) -> None: ...


def chain_of(target) -> tuple[tuple[Path, ...], tuple[str, ...]]:
    """(files, formats) of the version a target boots, base first."""
    return tuple(Path(p) for p in target.chain), tuple(target.chain_formats)


def is_writable(target) -> bool:
    """Private vDisks and maintenance boots write to the vDisk itself."""
    return target.access_mode == "private" or bool(target.writable)


@dataclass
class DeviceSession:
    """One device's live streaming state in this server process."""

    target: Any  # vdfarm.service ExportTarget
    stack: CheckedStack
    overlay: WriteCacheOverlay | None = None
    private_file: Layer | None = None  # the writable top (private / maintenance)
    lock_token: int | None = None
    fenced: bool = False
    cache_full_reported: bool = False
    client_ip: str | None = None
    moving_to: str | None = None  # name of the server a move order sends it to
    connections: int = 0
    grace_handle: asyncio.TimerHandle | None = None
    renew_task: asyncio.Task | None = None
    connections_set: set = field(default_factory=set)

    @property
    def device_name(self) -> str:
        return self.target.device_name

    def pinned_because(self) -> str | None:
        """Why this session cannot move to another server without losing
        state, or None if it can."""
        if self.private_file is not None:
            return f"it writes to vDisk {self.target.vdisk_name} itself ({self.target.access_mode})"
        if self.overlay is not None and self.overlay.used_bytes:
            return f"its write cache on this server holds {self.overlay.used_bytes} bytes"
        return None


class SessionRegistry:
    """Creates, shares and ends device sessions for one server process."""

    def __init__(
        self,
        farm: FarmPort,
        cache_dir: Path,
        db_executor: Executor,
        link_executor: Executor | None = None,
        grace_seconds: float = 30.0,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        ram_cache_dir: Path | None = None,
    ) -> None:
        self.farm = farm
        self.cache_dir = Path(cache_dir)
        self.ram_cache_dir = Path(ram_cache_dir) if ram_cache_dir else self.cache_dir
        self.db_executor = db_executor
        self.link_executor = link_executor or db_executor
        self.grace_seconds = grace_seconds
        self.lease_seconds = lease_seconds
        self.sessions: dict[int, DeviceSession] = {}
        self.chains = ChainCache()
        self._opening: dict[int, asyncio.Future] = {}
        self.known: dict[str, Any] = {}  # export name -> last resolved target
        self.dirty = False  # a session record failed: reconcile when the DB is back
        self.database_reachable = True  # as the last heartbeat found it

    async def run_db(self, fn, *args):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.db_executor, fn, *args)

    async def run_link(self, fn, *args):
        """Run a liveness call (lease renewal, heartbeat) off the event loop,
        on a thread no other database work queues on."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.link_executor, fn, *args)

    async def resolve(self, export_name: str):
        """The device's export target; raises vdfarm.service errors. While
        the database is unreachable, the target last resolved for this
        export name (if any) stands in."""
        cached = self.known.get(export_name)
        if cached is not None and not self.database_reachable:
            log.warning("farm database away: device %s served from cache", cached.device_name)
            return cached
        try:
            target = await self.run_db(self.farm.resolve_export, export_name)
        except Exception as exc:
            cached = self.known.get(export_name)
            if type(exc).__name__ != "Unavailable" or cached is None:
                if type(exc).__name__ == "NotFound":
                    self.known.pop(export_name, None)
                raise
            log.warning(
                "farm database unreachable (%s): device %s served from cache",
                exc,
                cached.device_name,
            )
            return cached
        self.known[export_name] = target
        return target

    async def resolve_view(self, vdisk_name: str):
        """The target of the read-only view of a vDisk; raises service errors."""
        return await self.run_db(self.farm.resolve_vdisk_view, vdisk_name)

    def open_view(self, target) -> CheckedStack:
        """A read-only stack over the vDisk's shared chain (no session, no
        lock: the view never writes). Pair with `close_view`."""
        return CheckedStack(ReadOnlyGuard(self.chains.acquire(*chain_of(target))))

    def close_view(self, target) -> None:
        self.chains.release(chain_of(target)[0])

    async def attach(self, target, connection) -> DeviceSession:
        """Join (or create) the session of `target`'s device for `connection`.

        Raises the farm's Conflict when a private vDisk is locked elsewhere,
        OSError when the vDisk file cannot be opened.
        """
        device_id = target.device_id
        while device_id in self._opening:  # another connection is opening it
            await asyncio.shield(self._opening[device_id])
        session = self.sessions.get(device_id)
        if session is not None and (session.target.vdisk_id, session.target.version) != (
            target.vdisk_id,
            target.version,
        ):
            # The device was reassigned since: the old session is stale.
            if session.connections == 0:
                await self._end(session)
                session = None
            else:
                raise OSError(
                    errno.EBUSY,
                    f"device {target.device_name} is still connected to vDisk "
                    f"{session.target.vdisk_name}",
                )
        if session is None:
            fut = asyncio.get_running_loop().create_future()
            self._opening[device_id] = fut
            try:
                session = await self._open(target)
                session.client_ip = getattr(connection, "client_ip", None)
                self.sessions[device_id] = session
                await self._record(
                    self.farm.session_started,
                    device_id,
                    target.vdisk_id,
                    target.version,
                    session.client_ip,
                )
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
        if clean or self.grace_seconds <= 0 or session.moving_to is not None:
            asyncio.get_running_loop().create_task(self._end(session))
        else:
            log.info(
                "device %s dropped uncleanly; keeping its session %.0fs",
                session.device_name,
                self.grace_seconds,
            )
            session.grace_handle = asyncio.get_running_loop().call_later(
                self.grace_seconds, self._grace_expired, session
            )

    def cache_full(self, session: DeviceSession) -> None:
        """A write did not fit the device's write cache: log and audit it
        (once per session; every such write still gets ENOSPC)."""
        if session.cache_full_reported or session.overlay is None:
            return
        session.cache_full_reported = True
        target = session.target
        log.warning(
            "device %s: write cache full (%d of %s bytes): writes get ENOSPC",
            target.device_name,
            session.overlay.used_bytes,
            target.write_cache_limit_bytes,
        )
        asyncio.get_running_loop().create_task(
            self._record(
                self.farm.sessions.cache_full,
                target.device_id,
                session.overlay.used_bytes,
                target.write_cache_limit_bytes,
            )
        )

    async def report_cache_usage_forever(self, interval: float = 2.0) -> None:
        """Every `interval` seconds, tell the farm how much write cache each
        connected standard-mode device uses (only what changed), so
        `vdfarm device show` can say it from any host."""
        reported: dict[int, int] = {}
        while True:
            await asyncio.sleep(interval)
            now = {
                s.target.device_id: s.overlay.used_bytes
                for s in self.sessions.values()
                if s.overlay is not None
            }
            changed = {d: used for d, used in now.items() if reported.get(d) != used}
            if not changed:
                continue
            try:
                await self.run_db(self.farm.sessions.report_cache_usage, changed)
            except Exception as exc:  # database away: try again next time
                log.warning("could not report write-cache usage: %s", exc)
                continue
            reported = {d: now[d] for d in now}

    def move_out(self, device_id: int, to_server: str) -> str | None:
        """Carry out a move order: close the device's connections (each after
        its in-flight requests are answered) and end its session. Returns
        None when done, else why the device stays (it has no session here,
        or moving would lose its state)."""
        session = self.sessions.get(device_id)
        if session is None:
            return "it has no session on this server"
        why = session.pinned_because()
        if why is not None:
            return why
        session.moving_to = to_server
        log.info(
            "device %s: moving to server %s; closing its connections",
            session.device_name,
            to_server,
        )
        for connection in list(session.connections_set):
            connection.leave(f"device moved to server {to_server}")
        if session.connections == 0:  # waiting out a grace period: end it now
            asyncio.get_running_loop().create_task(self._end(session))
        return None

    def live_sessions(self) -> dict[int, Any]:
        """{device_id: LiveSession} of every session this server serves
        (moving ones excluded: their record belongs to the move)."""
        from vdfarm.service.sessions import LiveSession

        return {
            s.target.device_id: LiveSession(s.target.vdisk_id, s.target.version, s.client_ip)
            for s in self.sessions.values()
            if s.moving_to is None
        }

    async def reconcile(self) -> None:
        """Repair the farm's session records of this server after an outage."""
        self.dirty = False
        try:
            added, removed = await self.run_db(self.farm.sessions.reconcile, self.live_sessions())
        except Exception as exc:
            self.dirty = True
            log.warning("could not reconcile session records: %s", exc)
            return
        if added or removed:
            log.info("session records reconciled: %d added, %d removed", added, removed)

    def _grace_expired(self, session: DeviceSession) -> None:
        session.grace_handle = None
        if session.connections == 0:
            log.info("grace expired for device %s; session ended", session.device_name)
            asyncio.get_running_loop().create_task(self._end(session))

    async def _record(self, fn, *args) -> None:
        if not self.database_reachable:
            self.dirty = True
            return
        try:
            await self.run_db(fn, *args)
        except Exception as exc:  # the stream does not depend on the record
            self.dirty = True
            log.warning("could not record session in the farm database: %s", exc)

    async def _open(self, target) -> DeviceSession:
        if is_writable(target):
            return await self._open_writable(target)
        return self._open_standard(target)

    def _open_standard(self, target) -> DeviceSession:
        chain, formats = chain_of(target)
        base = self.chains.acquire(chain, formats)
        try:
            cache_path = self.cache_path(target)
            overlay = WriteCacheOverlay(
                base, cache_path, limit_bytes=target.write_cache_limit_bytes
            )
        except BaseException:
            self.chains.release(chain)
            raise
        log.info(
            "device %s: standard mode on vDisk %s, write cache %s",
            target.device_name,
            target.vdisk_name,
            cache_path,
        )
        return DeviceSession(target=target, stack=CheckedStack(overlay), overlay=overlay)

    def cache_path(self, target) -> Path:
        """Where a standard-mode device's write cache lives: `server-ram` in
        RAM (a tmpfs), every other type on the server's disk. The device-side
        types (device-ram, device-disk, device-ram-overflow) are the agent's
        job; until a device runs the agent its writes are cached here, on
        the server's disk."""
        where = self.ram_cache_dir if target.write_cache_type == "server-ram" else self.cache_dir
        return where / f"device-{target.device_id}.wcache"

    async def _open_writable(self, target) -> DeviceSession:
        grant = await self.run_db(
            self.farm.acquire_lock, target.vdisk_id, target.device_id, self.lease_seconds
        )
        try:
            top = self._open_writable_top(target)
        except BaseException:
            await self.run_db(
                self.farm.release_lock, target.vdisk_id, target.device_id, grant.token
            )
            raise
        session = DeviceSession(
            target=target,
            stack=None,
            private_file=top,  # type: ignore[arg-type]
            lock_token=grant.token,
        )
        session.stack = CheckedStack(FencedLayer(top, lambda: session.fenced))
        session.renew_task = asyncio.get_running_loop().create_task(self._renew_loop(session))
        log.info(
            "device %s: read/write (%s) on vDisk %s version %d, lock token %d",
            target.device_name,
            target.access_mode,
            target.vdisk_name,
            target.version,
            grant.token,
        )
        return session

    def _open_writable_top(self, target) -> Layer:
        """The chain's top file read/write over its shared read-only lower part."""
        chain, formats = chain_of(target)
        lower = self.chains.acquire(chain[:-1], formats[:-1]) if len(chain) > 1 else None
        try:
            return open_file(chain[-1], formats[-1], lower, read_only=False)
        except BaseException:
            if lower is not None:
                self.chains.release(chain[:-1])
            raise

    async def _renew_loop(self, session: DeviceSession) -> None:
        target = session.target
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                ok = await self.run_link(
                    self.farm.renew_lock,
                    target.vdisk_id,
                    target.device_id,
                    session.lock_token,
                    self.lease_seconds,
                )
            except Exception as exc:  # database away: keep streaming, retry
                log.warning("lock renewal for %s failed: %s", target.vdisk_name, exc)
                continue
            if not ok:
                session.fenced = True
                log.error(
                    "device %s lost the lock on vDisk %s: writes now refused",
                    target.device_name,
                    target.vdisk_name,
                )
                return

    async def _end(self, session: DeviceSession) -> None:
        target = session.target
        if self.sessions.get(target.device_id) is session:
            del self.sessions[target.device_id]
        if session.grace_handle is not None:
            session.grace_handle.cancel()
            session.grace_handle = None
        chain, _ = chain_of(target)
        if session.overlay is not None:
            session.overlay.close()
            self.chains.release(chain)
        if session.private_file is not None:
            if session.renew_task is not None:
                session.renew_task.cancel()
            try:
                await asyncio.get_running_loop().run_in_executor(None, session.private_file.flush)
            except OSError as exc:
                log.error("final flush of %s failed: %s", target.vdisk_name, exc)
            session.private_file.close()
            if len(chain) > 1:
                self.chains.release(chain[:-1])
            if not session.fenced:
                try:
                    await self.run_db(
                        self.farm.release_lock,
                        target.vdisk_id,
                        target.device_id,
                        session.lock_token,
                    )
                except Exception as exc:  # the lease will expire by itself
                    log.warning("lock release for %s failed: %s", target.vdisk_name, exc)
        if session.moving_to is None:
            await self._record(self.farm.session_ended, target.device_id)
        log.info("device %s: session ended", target.device_name)

    async def close_all(self) -> None:
        """End every session (server shutdown)."""
        for session in list(self.sessions.values()):
            await self._end(session)
