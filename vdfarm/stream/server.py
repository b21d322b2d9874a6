"""The stream service: an asyncio (uvloop) NBD server for one vdfarm server.

Rules:
- Owns the listening socket, the executors, the sessions and shutdown; the
  protocol lives in vdfarm.nbd, the per-connection glue in connection.py.
- `run_server` runs in the foreground until SIGTERM or SIGINT, then stops
  cleanly: stop accepting, close connections, end sessions (which flushes
  private vDisks and releases their locks), exit.
- Write caches are process state: stale cache files from an earlier process
  are removed at start.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vdfarm.block.layer import FULL_CAPABILITIES, Capabilities
from vdfarm.service.servers import is_wildcard
from vdfarm.stream.connection import NBDConnection
from vdfarm.stream.farm_link import heartbeat_forever
from vdfarm.stream.moves import auto_rebalance_forever, moves_forever
from vdfarm.stream.sessions import DEFAULT_LEASE_SECONDS, SessionRegistry

log = logging.getLogger("vdfarm.stream")


def ram_cache_dir_for(server_uuid: str, fallback: Path) -> Path:
    """A directory in RAM (tmpfs /dev/shm) for `server-ram` write caches of
    this server, or `fallback` where the machine has no /dev/shm."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm / f"vdfarm-{server_uuid}"
    log.warning("no writable /dev/shm: server-ram write caches go to %s", fallback)
    return fallback


class StreamServer:
    """NBD listener + device sessions over a farm."""

    def __init__(
        self,
        farm,
        cache_dir: Path,
        grace_seconds: float = 30.0,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> None:
        self.farm = farm
        self.cache_dir = Path(cache_dir)
        self.db_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vdfarm-db")
        self.link_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vdfarm-link")
        self.io_executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="vdfarm-io")
        self.ram_cache_dir = ram_cache_dir_for(farm.server_uuid, self.cache_dir)
        self.registry = SessionRegistry(
            farm,
            self.cache_dir,
            self.db_executor,
            link_executor=self.link_executor,
            grace_seconds=grace_seconds,
            lease_seconds=lease_seconds,
            ram_cache_dir=self.ram_cache_dir,
        )
        self.connections: set[NBDConnection] = set()
        self._server: asyncio.base_events.Server | None = None

    def capabilities_for_mode(self, mode: str) -> Capabilities:
        """What an export of this mode will advertise (for NBD_OPT_INFO
        before any session exists): both the write-cache overlay (standard)
        and the vDisk file (private) do everything."""
        return FULL_CAPABILITIES

    def list_exports(self) -> list[tuple[str, str]]:
        """(device name, description) of every device with a vDisk (blocking)."""
        return [(name, desc) for name, desc in self.farm.list_exports()]

    def _clear_stale_caches(self) -> None:
        for where in {self.cache_dir, self.ram_cache_dir}:
            where.mkdir(parents=True, exist_ok=True)
            for stale in where.glob("device-*.wcache"):
                stale.unlink(missing_ok=True)

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0 = any free port); return the bound port."""
        self._clear_stale_caches()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: NBDConnection(self), host, port, reuse_address=True, backlog=256
        )
        for sock in self._server.sockets:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop accepting, close every connection, end every session."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        await asyncio.sleep(0)  # let connection_lost callbacks run
        self.registry.grace_seconds = 0
        await self.registry.close_all()
        if self._server is not None:
            await self._server.wait_closed()
        self.db_executor.shutdown(wait=True)
        self.link_executor.shutdown(wait=True)
        self.io_executor.shutdown(wait=True)
        if self.ram_cache_dir != self.cache_dir:
            try:
                self.ram_cache_dir.rmdir()
            except OSError:
                pass  # not empty or already gone: nothing to free


async def serve(
    farm,
    host: str,
    port: int,
    grace_seconds: float,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    api_host: str | None = None,
    api_port: int | None = None,
    ready=None,
    auto_rebalance_every: float = 0,
    advertise: str | None = None,
) -> None:
    """Serve NBD (and the REST API unless `api_port` is None) until
    SIGTERM/SIGINT; carry out move orders; run the automatic rebalance every
    `auto_rebalance_every` seconds (0: never). `advertise` is the address
    devices and other servers reach this server at (default: `host`, or the
    host name, with a warning, when `host` is a wildcard)."""
    server = StreamServer(
        farm, farm.cache_dir, grace_seconds=grace_seconds, lease_seconds=lease_seconds
    )
    bound = await server.start(host, port)
    loop = asyncio.get_running_loop()
    api = None
    api_bound = None
    if api_port is not None:
        from vdfarm.api.server import ApiServer

        api = ApiServer(farm, api_host or host, api_port)
        try:
            api_bound = await api.start()
        except OSError:
            await server.stop()
            raise
    # Sessions this server recorded before it last stopped are over.
    await loop.run_in_executor(server.db_executor, farm.sessions.end_all)
    if advertise is None:
        advertise = host
        if is_wildcard(host):
            advertise = socket.gethostname()
            log.warning(
                "listening on %s: telling devices to reach this server at its host "
                "name %s; give --advertise ADDR if they cannot resolve it",
                host,
                advertise,
            )
    await loop.run_in_executor(
        server.db_executor, farm.register_server, bound, api_bound, advertise
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    registry = server.registry

    async def after_beat(reached: bool) -> None:
        registry.database_reachable = reached
        if reached and registry.dirty:
            await registry.reconcile()

    tasks = [
        loop.create_task(registry.report_cache_usage_forever()),
        loop.create_task(heartbeat_forever(farm, registry.run_link, after_beat=after_beat)),
        loop.create_task(moves_forever(farm, registry)),
    ]
    if auto_rebalance_every > 0:
        tasks.append(loop.create_task(auto_rebalance_forever(farm, registry, auto_rebalance_every)))
    log.info("serving NBD on %s:%d", host, bound)
    api_text = f", REST API on {api_host or host}:{api_bound}" if api is not None else ""
    print(f"vdfarm: serving NBD on {host}:{bound}{api_text} (data dir {farm.data_dir})", flush=True)
    if ready is not None:
        ready(bound)
    await stop.wait()
    log.info("stopping")
    for task in tasks:
        task.cancel()
    if api is not None:
        await api.stop()
    await server.stop()
    print("vdfarm: stopped", flush=True)


def _tune_malloc() -> None:
    """Keep big read buffers on the heap instead of fresh mmaps: glibc's
    default maps each buffer over 128 KiB anew and page-faults it in, which
    costs more than the read itself. Best effort: other libcs are left as is."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 64 * 1024 * 1024)
    libc.mallopt(m_trim_threshold, 256 * 1024 * 1024)


def run_server(
    farm,
    host: str = "127.0.0.1",
    nbd_port: int = 10809,
    grace_seconds: float = 30.0,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    api_host: str | None = None,
    api_port: int | None = None,
    auto_rebalance_every: float = 0,
    advertise: str | None = None,
) -> None:
    """Foreground entry point used by `vdfarm server run`."""
    _tune_malloc()
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    runner(
        serve(
            farm,
            host,
            nbd_port,
            grace_seconds,
            lease_seconds,
            api_host,
            api_port,
            auto_rebalance_every=auto_rebalance_every,
            advertise=advertise,
        )
    )
