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
  so merges never delete a file a device still reads; a device that
  comes back within grace is recorded again (its agent may have streamed
  from another server meanwhile, whose record replaced this one's); a database outage
  only costs the record, never the stream. The farm is reached only
  through the port (vdfarm.stream.port); its errors are the port's types.
- Database calls are blocking; they run on the `db_executor` thread, never on
  the event loop. Lease renewals (and the server's heartbeat) run on their
  own `link_executor` thread, so a slow session record or export lookup
  never lets a lease run out.
- Streaming survives the database: every export a device resolved is
  remembered, so while the database is away a known device can still
  connect (a standard-mode device from what was cached; a private or
  maintenance device only by rejoining its live session, since a lock cannot
  be taken without the database). Only the database's absence lets the
  cache stand in: when the database says the device's copy is not in this
  store (NotInStore: a different copy, or none), what was cached is
  forgotten, never served. While the heartbeat says the database is
  away (`set_farm_reachable(False)`), known devices do not wait on it at all and
  session records are not tried. Records that failed or were skipped mark
  the registry *dirty*; `reconcile` repairs them once the database is back.
- A move order (rebalance) is carried out in two steps. First a handover
  window (`handover_seconds`): the connections keep serving, but answer
  the agent's CACHE probe with ESHUTDOWN, so a device running the agent
  connects to its new server and leaves this one between two requests.
  When the window ends with the device still here, its connections are
  closed after their in-flight requests are answered (a device with no
  agent, or one that could not reach its new server) — unless it wrote to
  its write cache here meanwhile: then it is pinned, stays, and the order
  is cancelled. Either way the session ends at once, without grace, and
  its farm record stays (with the order) until the device connects to its
  new server, so the device's next login finds the order.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, TypeVar

from vdfarm.block.cow import WriteCacheOverlay
from vdfarm.block.readonly import ReadOnlyGuard
from vdfarm.block.stack import CheckedStack
from vdfarm.stream.access import PeerMismatch, peer_refusal
from vdfarm.stream.chains import ChainCache
from vdfarm.stream.device_session import DeviceSession, chain_of, end_writable, open_writable
from vdfarm.stream.port import (
    ExportTarget,
    FarmPort,
    FarmUnavailable,
    LiveSession,
    NotInStore,
    UnknownExport,
    VdiskView,
)

log = logging.getLogger("vdfarm.stream")

DEFAULT_LEASE_SECONDS = 30.0
MOVE_HANDOVER_SECONDS = 5.0

T = TypeVar("T")


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
        handover_seconds: float = MOVE_HANDOVER_SECONDS,
    ) -> None:
        self.farm = farm
        self.handover_seconds = handover_seconds
        self.cache_dir = Path(cache_dir)
        self.ram_cache_dir = Path(ram_cache_dir) if ram_cache_dir else self.cache_dir
        self.db_executor = db_executor
        self.link_executor = link_executor or db_executor
        self.grace_seconds = grace_seconds
        self.lease_seconds = lease_seconds
        self.sessions: dict[int, DeviceSession] = {}
        self.chains = ChainCache()
        self._opening: dict[int, asyncio.Future[None]] = {}
        self.known: dict[str, ExportTarget] = {}  # export name -> last resolved target
        self.dirty = False  # a session record failed: reconcile when the DB is back
        self.database_reachable = True  # as the last heartbeat found it
        self.reconcile_wanted = asyncio.Event()  # dirty, and the database is back

    async def run_db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking port call on the database thread; raises what it raises."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.db_executor, fn, *args)

    async def run_link(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a liveness call (lease renewal, heartbeat) off the event loop,
        on a thread no other database work queues on; raises what it raises."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.link_executor, fn, *args)

    async def resolve(self, export_name: str) -> ExportTarget:
        """The device's export target. While the database is unreachable,
        the target last resolved for this export name (if any) stands in —
        never when the database answered that the device's copy is not in
        this store (NotInStore: gone, or another copy than the farm sealed;
        the old target would serve whatever file now has its name).

        Raises UnknownExport, ExportRefused, NotInStore, FarmUnavailable
        (database away and the device unknown here).
        """
        cached = self.known.get(export_name)
        if cached is not None and not self.database_reachable:
            log.warning("farm database away: device %s served from cache", cached.device_name)
            return cached
        try:
            target = await self.run_db(self.farm.resolve_export, export_name)
        except (UnknownExport, NotInStore):
            self.known.pop(export_name, None)
            raise
        except FarmUnavailable as exc:
            cached = self.known.get(export_name)
            if cached is None:
                raise
            log.warning(
                "farm database unreachable (%s): device %s served from cache",
                exc,
                cached.device_name,
            )
            return cached
        self.known[export_name] = target
        return target

    async def resolve_view(self, vdisk_name: str) -> VdiskView:
        """The target of the read-only view of a vDisk.

        Raises UnknownExport, FarmUnavailable.
        """
        return await self.run_db(self.farm.resolve_vdisk_view, vdisk_name)

    def open_view(self, target: VdiskView) -> CheckedStack:
        """A read-only stack over the vDisk's shared chain (no session, no
        lock: the view never writes). Pair with `close_view`. Raises OSError
        or ValueError from opening a file."""
        return CheckedStack(ReadOnlyGuard(self.chains.acquire(*chain_of(target))))

    def close_view(self, target: VdiskView) -> None:
        self.chains.release(chain_of(target)[0])

    async def attach(self, target: ExportTarget, connection: Any) -> DeviceSession:
        """Join (or create) the session of `target`'s device for `connection`.

        The session is bound to `connection.peer_binding` (a certificate
        identity) if the connection has one, else to its `client_ip`.

        Raises PeerMismatch (the device's live session is bound to another
        client address or certificate), LockConflict when the vDisk is locked elsewhere (and the
        other port errors of `acquire_lock`), OSError (EBUSY: the device is
        still connected to another vDisk; or the vDisk file cannot be
        opened), ValueError (a format we do not serve).
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
        client_ip = getattr(connection, "client_ip", None)
        binding = getattr(connection, "peer_binding", None) or client_ip
        if session is not None:
            why = peer_refusal(session.bound_to, binding, target.device_name)
            if why is not None:
                raise PeerMismatch(why)
        if session is None:
            fut = asyncio.get_running_loop().create_future()
            self._opening[device_id] = fut
            try:
                session = await self._open(target)
                session.client_ip = client_ip
                session.bound_to = binding
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
        rejoined = session.grace_handle is not None
        if session.grace_handle is not None:
            session.grace_handle.cancel()
            session.grace_handle = None
            log.info("device %s reconnected within grace; session kept", target.device_name)
        session.connections += 1
        session.connections_set.add(connection)
        if rejoined:  # it may have streamed from another server meanwhile (its agent
            # failed over and back): the farm's record must say here again
            await self._record(
                self.farm.session_started,
                device_id,
                target.vdisk_id,
                target.version,
                session.client_ip,
            )
        return session

    def detach(self, session: DeviceSession, connection: Any, clean: bool) -> None:
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
                self.farm.cache_full,
                target.device_id,
                session.overlay.used_bytes,
                target.write_cache_limit_bytes,
            )
        )

    def move_out(self, device_id: int, to_server: str) -> str | None:
        """Carry out a move order: tell the device's connections to move
        (the handover window), then close them (each after its in-flight
        requests are answered) and end its session. Returns None when under
        way or done, else why the device stays (it has no session here, or
        moving would lose its state)."""
        session = self.sessions.get(device_id)
        if session is None:
            return "it has no session on this server"
        if session.moving_to is not None:
            return None  # under way
        why = session.pinned_because()
        if why is not None:
            return why
        session.moving_to = to_server
        reason = f"device moved to server {to_server}"
        if self.handover_seconds > 0 and session.connections:
            log.info(
                "device %s: moving to server %s; its agent may leave within %.0f s",
                session.device_name,
                to_server,
                self.handover_seconds,
            )
            for connection in list(session.connections_set):
                connection.hand_over(reason)
            session.handover_handle = asyncio.get_running_loop().call_later(
                self.handover_seconds, self._handover_expired, session
            )
            return None
        self._close_moving(session)
        return None

    def _close_moving(self, session: DeviceSession) -> None:
        """Close a moving session's connections (each once answered) and end it."""
        log.info(
            "device %s: moving to server %s; closing its connections",
            session.device_name,
            session.moving_to,
        )
        for connection in list(session.connections_set):
            connection.leave(f"device moved to server {session.moving_to}")
        if session.connections == 0:  # waiting out a grace period: end it now
            asyncio.get_running_loop().create_task(self._end(session))

    def _handover_expired(self, session: DeviceSession) -> None:
        """The handover window ended with the device still here: close its
        connections, or (it wrote to its write cache meanwhile) keep it and
        cancel the order."""
        session.handover_handle = None
        if self.sessions.get(session.target.device_id) is not session:
            return  # ended meanwhile: the device left by itself
        why = session.pinned_because()
        if why is None:
            self._close_moving(session)
            return
        log.warning(
            "device %s stays on this server (not moved to %s): %s",
            session.device_name,
            session.moving_to,
            why,
        )
        session.moving_to = None
        for connection in list(session.connections_set):
            connection.stay()
        asyncio.get_running_loop().create_task(
            self._record(self.farm.cancel_move, session.target.device_id)
        )

    def live_sessions(self) -> dict[int, LiveSession]:
        """{device_id: LiveSession} of every session this server serves
        (moving ones excluded: their record belongs to the move)."""
        return {
            s.target.device_id: LiveSession(s.target.vdisk_id, s.target.version, s.client_ip)
            for s in self.sessions.values()
            if s.moving_to is None
        }

    def set_farm_reachable(self, reached: bool) -> None:
        """What the last heartbeat found: while the database is away, known
        devices do not wait on it and records are skipped (the registry is
        marked dirty); a beat that reaches it while the registry is dirty
        sets `reconcile_wanted`, so the repair follows the beat at once."""
        self.database_reachable = reached
        if reached and self.dirty:
            self.reconcile_wanted.set()

    async def reconcile(self) -> None:
        """Repair the farm's session records of this server after an outage
        (on failure the registry stays dirty). Raises nothing."""
        self.dirty = False
        try:
            added, removed = await self.run_db(self.farm.reconcile_sessions, self.live_sessions())
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

    async def _record(self, fn: Callable[..., object], *args: Any) -> None:
        if not self.database_reachable:
            self.dirty = True
            return
        try:
            await self.run_db(fn, *args)
        except Exception as exc:  # the stream does not depend on the record
            self.dirty = True
            log.warning("could not record session in the farm database: %s", exc)

    async def _open(self, target: ExportTarget) -> DeviceSession:
        if target.writes_vdisk:
            return await open_writable(
                target, self.chains, self.farm, self.run_db, self.run_link, self.lease_seconds
            )
        return self._open_standard(target)

    def _open_standard(self, target: ExportTarget) -> DeviceSession:
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

    def cache_path(self, target: ExportTarget) -> Path:
        """Where a standard-mode device's write cache lives: `server-ram` in
        RAM (a tmpfs), every other type on the server's disk. The device-side
        types (device-ram, device-disk, device-ram-overflow) are the agent's
        job; until a device runs the agent its writes are cached here, on
        the server's disk."""
        where = self.ram_cache_dir if target.write_cache_type == "server-ram" else self.cache_dir
        return where / f"device-{target.device_id}.wcache"

    async def _end(self, session: DeviceSession) -> None:
        target = session.target
        if self.sessions.get(target.device_id) is session:
            del self.sessions[target.device_id]
        if session.grace_handle is not None:
            session.grace_handle.cancel()
            session.grace_handle = None
        if session.handover_handle is not None:
            session.handover_handle.cancel()
            session.handover_handle = None
        chain, _ = chain_of(target)
        if session.overlay is not None:
            session.overlay.close()
            self.chains.release(chain)
        if session.private_file is not None:
            await end_writable(session, session.private_file, self.chains, self.farm, self.run_db)
        if session.moving_to is None:
            await self._record(self.farm.session_ended, target.device_id)
        log.info("device %s: session ended", target.device_name)

    async def close_all(self) -> None:
        """End every session (server shutdown)."""
        for session in list(self.sessions.values()):
            await self._end(session)
