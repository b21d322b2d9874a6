"""The stream service: an asyncio (uvloop) NBD server for one vdfarm server.

Rules:
- Owns the listening socket, the executors, the sessions and their
  shutdown; the protocol lives in vdfarm.nbd, the per-connection glue in
  connection.py, the farm behind the port (port.py). Who starts it, runs
  its periodic work and handles signals is the daemon's business
  (vdfarm.daemon), not this module's.
- Shutdown comes in three steps the daemon orders: `stop_accepting` (no new
  connections), `end_sessions` (close connections, end sessions: private
  vDisks are flushed and their locks released), `shutdown_executors`.
  `stop` does all three.
- Write caches are process state: stale cache files from an earlier process
  are removed at start.
- TLS is the listener's: one policy and one ssl.SSLContext, built from its
  TLSSettings when the server is made (so unusable files fail at once).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vdfarm.block.layer import FULL_CAPABILITIES, Capabilities
from vdfarm.nbd.limits import ConnectionLimits
from vdfarm.nbd.tls_config import TLSSettings
from vdfarm.stream.connection import NBDConnection
from vdfarm.stream.limits import Admission, RefusalLog
from vdfarm.stream.port import FarmPort
from vdfarm.stream.runtime_dirs import private_dir
from vdfarm.stream.sessions import DEFAULT_LEASE_SECONDS, MOVE_HANDOVER_SECONDS, SessionRegistry
from vdfarm.stream.tls import server_context

log = logging.getLogger("vdfarm.stream")


class StreamServer:
    """NBD listener + device sessions over a farm reached through its port.

    Raises TLSFilesError (from the constructor) when TLS's files cannot be used.
    """

    def __init__(
        self,
        farm: FarmPort,
        cache_dir: Path,
        grace_seconds: float = 30.0,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        ram_cache_dir: Path | None = None,
        limits: ConnectionLimits | None = None,
        tls: TLSSettings | None = None,
        handover_seconds: float = MOVE_HANDOVER_SECONDS,
    ) -> None:
        self.farm = farm
        self.tls = tls if tls is not None else TLSSettings()
        self.ssl_context = server_context(self.tls)
        self.limits = limits if limits is not None else ConnectionLimits()
        self.admission = Admission(self.limits)
        self.refusals = RefusalLog()
        self.cache_dir = Path(cache_dir)
        self.db_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vdfarm-db")
        self.link_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vdfarm-link")
        self.io_executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="vdfarm-io")
        self.ram_cache_dir = Path(ram_cache_dir) if ram_cache_dir else self.cache_dir
        self.registry = SessionRegistry(
            farm,
            self.cache_dir,
            self.db_executor,
            link_executor=self.link_executor,
            grace_seconds=grace_seconds,
            lease_seconds=lease_seconds,
            ram_cache_dir=self.ram_cache_dir,
            handover_seconds=handover_seconds,
        )
        self.connections: set[NBDConnection] = set()
        self._server: asyncio.Server | None = None

    def capabilities_for_mode(self, mode: str) -> Capabilities:
        """What an export of this mode will advertise (for NBD_OPT_INFO
        before any session exists): both the write-cache overlay (standard)
        and the vDisk file (private) do everything."""
        return FULL_CAPABILITIES

    def list_exports(self) -> list[tuple[str, str]]:
        """(device name, description) of every device with a vDisk (blocking).

        Raises FarmUnavailable.
        """
        return [(name, desc) for name, desc in self.farm.list_exports()]

    def _clear_stale_caches(self) -> None:
        """Make sure the cache directories are private (see runtime_dirs),
        then remove what an earlier process left in them. Raises
        UnsafeDirectory, OSError."""
        for where in {self.cache_dir, self.ram_cache_dir}:
            private_dir(where)
            for stale in where.glob("device-*.wcache"):
                stale.unlink(missing_ok=True)  # a link is removed, never followed

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0 = any free port); return the bound port.

        Raises OSError (address in use, unknown host, no permission).
        """
        self._clear_stale_caches()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: NBDConnection(self), host, port, reuse_address=True, backlog=256
        )
        for sock in self._server.sockets:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def stop_accepting(self) -> None:
        """Close the listening socket: no new connections. Raises nothing."""
        if self._server is not None:
            self._server.close()

    async def end_sessions(self) -> None:
        """Close every connection and end every session at once (no grace):
        private vDisks are flushed and their locks released. Raises nothing."""
        for conn in list(self.connections):
            conn.transport.close()
        await asyncio.sleep(0)  # let connection_lost callbacks run
        self.registry.grace_seconds = 0
        await self.registry.close_all()
        if self._server is not None:
            await self._server.wait_closed()

    def shutdown_executors(self) -> None:
        """Wait for the database, liveness and I/O threads to finish their
        work, then stop them; free the RAM cache directory. Raises nothing."""
        self.db_executor.shutdown(wait=True)
        self.link_executor.shutdown(wait=True)
        self.io_executor.shutdown(wait=True)
        if self.ram_cache_dir != self.cache_dir:
            try:
                self.ram_cache_dir.rmdir()
            except OSError:
                pass  # not empty or already gone: nothing to free

    async def stop(self) -> None:
        """Stop accepting, close every connection, end every session, stop
        the executors. Raises nothing."""
        await self.stop_accepting()
        await self.end_sessions()
        self.shutdown_executors()
