"""One device's live streaming state; the lock, lease and fence of a session
that writes its vDisk.

Rules:
- A DeviceSession belongs to a device, not to a connection: every
  connection of the device shares its stack (so one write cache).
- A standard session has a write-cache overlay over the shared chain; a
  session that writes its vDisk (`ExportTarget.writes_vdisk`) has the
  chain's top open read/write (`private_file`) under the vDisk lock, whose
  fencing token it keeps, behind a FencedLayer that asks `fenced`.
- `open_writable` takes the lock first and opens the top second (and gives
  the lock back if the file cannot be opened); `end_writable` flushes,
  closes and releases, in that order (a fenced session releases nothing:
  the lock is someone else's).
- `renew_lease_forever` renews that lock every third of the lease. A
  refused renewal (someone else holds the lock) fences the session for
  good: every later write gets EPERM. A failed renewal (database away) is
  logged and tried again; the lease runs on meanwhile.
- A session is *pinned* when moving it to another server would lose state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vdfarm.block.cow import WriteCacheOverlay
from vdfarm.block.fenced import FencedLayer
from vdfarm.block.layer import Layer
from vdfarm.block.stack import CheckedStack
from vdfarm.stream.chains import ChainCache, open_file
from vdfarm.stream.port import ExportTarget, FarmPort, VdiskView

log = logging.getLogger("vdfarm.stream")

RunBlocking = Callable[..., Awaitable[Any]]  # SessionRegistry.run_db / run_link


def chain_of(target: ExportTarget | VdiskView) -> tuple[tuple[Path, ...], tuple[str, ...]]:
    """(files, formats) of the version a target boots, base first."""
    return tuple(Path(p) for p in target.chain), tuple(target.chain_formats)


@dataclass(eq=False)
class DeviceSession:
    """One device's live streaming state in this server process."""

    target: ExportTarget
    stack: CheckedStack
    overlay: WriteCacheOverlay | None = None
    private_file: Layer | None = None  # the writable top (private / maintenance)
    lock_token: int | None = None
    fenced: bool = False
    cache_full_reported: bool = False
    client_ip: str | None = None  # address of the first connection (the farm's record)
    bound_to: str | None = None  # its address or certificate identity (access.peer_refusal)
    moving_to: str | None = None  # name of the server a move order sends it to
    handover_handle: asyncio.TimerHandle | None = None  # ends the move's handover window
    connections: int = 0
    grace_handle: asyncio.TimerHandle | None = None
    renew_task: asyncio.Task[None] | None = None
    connections_set: set[Any] = field(default_factory=set)  # NBDConnection

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


async def renew_lease_forever(
    session: DeviceSession, farm: FarmPort, run_link: RunBlocking, lease_seconds: float
) -> None:
    """Renew SESSION's vDisk lock every third of LEASE_SECONDS until
    cancelled, or until a renewal is refused: then the session is fenced
    and this returns. `run_link(fn, *args)` runs a blocking port call on the
    liveness thread. Raises nothing but CancelledError."""
    target = session.target
    token = session.lock_token
    if token is None:
        return
    while True:
        await asyncio.sleep(lease_seconds / 3)
        try:
            ok = await run_link(
                farm.renew_lock, target.vdisk_id, target.device_id, token, lease_seconds
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


async def open_writable(
    target: ExportTarget,
    chains: ChainCache,
    farm: FarmPort,
    run_db: RunBlocking,
    run_link: RunBlocking,
    lease_seconds: float,
) -> DeviceSession:
    """A session that writes TARGET's vDisk: take the lock, open the chain's
    top read/write over its shared lower part, start renewing the lease.

    Raises the port's errors of `acquire_lock` (LockConflict: locked
    elsewhere), OSError / ValueError from opening the file (the lock is
    given back then).
    """
    grant = await run_db(farm.acquire_lock, target.vdisk_id, target.device_id, lease_seconds)
    try:
        top = _open_writable_top(target, chains)
    except BaseException:
        await run_db(farm.release_lock, target.vdisk_id, target.device_id, grant.token)
        raise
    session: DeviceSession
    fenced = FencedLayer(top, lambda: session.fenced)
    session = DeviceSession(
        target=target, stack=CheckedStack(fenced), private_file=top, lock_token=grant.token
    )
    session.renew_task = asyncio.get_running_loop().create_task(
        renew_lease_forever(session, farm, run_link, lease_seconds)
    )
    log.info(
        "device %s: read/write (%s) on vDisk %s version %d, lock token %d",
        target.device_name,
        target.access_mode,
        target.vdisk_name,
        target.version,
        grant.token,
    )
    return session


def _open_writable_top(target: ExportTarget, chains: ChainCache) -> Layer:
    """The chain's top file read/write over its shared read-only lower part."""
    chain, formats = chain_of(target)
    lower = chains.acquire(chain[:-1], formats[:-1]) if len(chain) > 1 else None
    try:
        return open_file(chain[-1], formats[-1], lower, read_only=False)
    except BaseException:
        if lower is not None:
            chains.release(chain[:-1])
        raise


async def end_writable(
    session: DeviceSession, top: Layer, chains: ChainCache, farm: FarmPort, run_db: RunBlocking
) -> None:
    """Stop renewing, flush and close the writable TOP, release the lock
    (unless fenced). Failures are logged (the lease expires by itself);
    raises nothing."""
    target = session.target
    if session.renew_task is not None:
        session.renew_task.cancel()
    try:
        await asyncio.get_running_loop().run_in_executor(None, top.flush)
    except OSError as exc:
        log.error("final flush of %s failed: %s", target.vdisk_name, exc)
    top.close()
    chain, _ = chain_of(target)
    if len(chain) > 1:
        chains.release(chain[:-1])
    if not session.fenced and session.lock_token is not None:
        try:
            await run_db(farm.release_lock, target.vdisk_id, target.device_id, session.lock_token)
        except Exception as exc:  # the lease will expire by itself
            log.warning("lock release for %s failed: %s", target.vdisk_name, exc)
