"""`vdfarm agent`: put the agent together and run it until a signal.

Job: the first login (its errors end the start with one line), the device
cache the login's write_cache_type asks for, the Session, the local NBD
listener, the status file (written on every change, and every few
seconds while the cache statistics move), the failover reports.
Rules: nothing is listened on before the first upstream serves the right
copy; SIGTERM / SIGINT close the listener, the upstream and the socket file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vdfarm.agent.cache import make_cache
from vdfarm.agent.local import ListenAddress, listen, remove_socket
from vdfarm.agent.login import LoginAnswer, LoginError, ServerRef, login
from vdfarm.agent.report import report_failover
from vdfarm.agent.session import Session
from vdfarm.agent.session_types import FailoverRecord, SessionOptions, WriteCache
from vdfarm.agent.status import status_path, write_status
from vdfarm.agent.upstream import TLSFiles, Upstream, client_context, open_upstream

log = logging.getLogger("vdfarm.agent")

MIB = 1024 * 1024
STATUS_REFRESH_S = 5.0


class AgentError(Exception):
    """The agent cannot start (one line)."""


@dataclass(frozen=True)
class AgentOptions:
    farm_urls: tuple[str, ...]
    device: str
    listen: ListenAddress
    io_timeout: float = 1.0
    give_up: float | None = None
    cache_size_mib: int = 256
    cache_disk_mib: int | None = None  # None: as large as the vDisk (a sparse file)
    cache_dir: Path | None = None
    tls: TLSFiles | None = None
    login_ca: str | None = None  # CA for https farm URLs
    token: str | None = None
    status_file: str | None = None


def make_device_cache(
    kind: str, size: int, ram_bytes: int, disk_path: Path | None, disk_bytes: int
) -> WriteCache:
    """The device cache of KIND (vdfarm.agent.cache).

    Raises AgentError when KIND or its sizes are refused.
    """
    try:
        return make_cache(kind, size, ram_bytes, disk_path, disk_bytes)
    except (ValueError, OSError) as exc:
        raise AgentError(f"write cache {kind}: {exc}") from exc


def urls_in_order(
    urls: tuple[str, ...], known: dict[str, ServerRef], exclude: list[str], last: str | None
) -> list[str]:
    """The farm URLs to try: the one that answered last first, those that
    reach an excluded (failed) server's API last (a hung server's API would
    only time out)."""

    def failed(url: str) -> bool:
        netloc = urllib.parse.urlsplit(url).netloc
        return any(
            (ref := known.get(name)) is not None
            and ref.api_port is not None
            and netloc in (f"{ref.host}:{ref.api_port}", f"[{ref.host}]:{ref.api_port}")
            for name in exclude
        )

    return sorted(urls, key=lambda url: (failed(url), url != last))


class Agent:
    """The running agent: session, listener, status."""

    def __init__(self, options: AgentOptions) -> None:
        self.options = options
        self.status_file = status_path(options.listen, options.status_file)
        self.tls_context: ssl.SSLContext | None = None
        self.session: Session | None = None
        self._dirty = asyncio.Event()
        self._known: dict[str, ServerRef] = {}  # servers the logins named
        self._last_url: str | None = None  # the farm URL that answered last

    async def _login(self, exclude: list[str], version: int | None = None) -> LoginAnswer:
        """A login (VERSION: the version the running device keeps; None at boot)."""
        o = self.options
        urls = urls_in_order(o.farm_urls, self._known, exclude, self._last_url)
        answer = await asyncio.to_thread(
            login, urls, o.device, exclude, o.login_ca, version=version
        )
        self._last_url = answer.url
        for server in (answer.server, *answer.alternatives):
            self._known[server.name] = server
        return answer

    async def _connect(self, server: ServerRef, on_lost: Any) -> Upstream:
        return await open_upstream(
            server.host,
            server.nbd_port,
            self.options.device,
            name=server.name,
            tls=self.tls_context,
            timeout=max(2.0, 2 * self.options.io_timeout),
            on_lost=on_lost,
        )

    def _changed(self) -> None:
        self._dirty.set()

    def _failover_done(self, record: FailoverRecord) -> None:
        asyncio.get_running_loop().create_task(self._report(record))

    async def _report(self, record: FailoverRecord) -> None:
        o = self.options
        exclude = [record.from_server]
        for url in urls_in_order(o.farm_urls, self._known, exclude, self._last_url):
            try:
                status = await asyncio.to_thread(
                    report_failover, url, o.device, record, o.token, o.login_ca
                )
            except Exception as exc:  # never fatal: the next URL, or a log line
                log.warning("could not report the failover to %s: %s", url, exc)
                continue
            log.info("failover reported to %s (HTTP %d)", url, status)
            return

    async def _write_status_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), STATUS_REFRESH_S)
            self._dirty.clear()
            self.write_status()

    def write_status(self) -> None:
        if self.session is None:
            return
        try:
            write_status(self.status_file, self.session.status())
        except OSError as exc:
            log.warning("cannot write the status file %s: %s", self.status_file, exc)

    async def run(self) -> None:
        """Start and serve until cancelled. Raises AgentError at start."""
        o = self.options
        if o.tls is not None:
            try:
                self.tls_context = client_context(o.tls)
            except (OSError, ssl.SSLError) as exc:
                raise AgentError(f"TLS files: {exc}") from exc
        try:
            first = await self._login([])
        except LoginError as exc:
            raise AgentError(str(exc)) from exc
        cache: WriteCache | None = None
        if first.write_cache_type.startswith("device-"):
            disk = o.cache_dir / f"{o.device}.wcache" if o.cache_dir is not None else None
            disk_bytes = first.size if o.cache_disk_mib is None else o.cache_disk_mib * MIB
            cache = make_device_cache(
                first.write_cache_type, first.size, o.cache_size_mib * MIB, disk, disk_bytes
            )
        if not first.failover or first.sha256 is None:
            log.warning(
                "device %s stays on server %s (%s: no failover to another server)",
                o.device,
                first.server.name,
                first.write_cache_type,
            )
        booted = first.version

        async def failover_login(exclude: list[str]) -> LoginAnswer:
            return await self._login(exclude, booted)  # the device keeps what it booted

        self.session = Session(
            first,
            failover_login,
            self._connect,
            SessionOptions(io_timeout=o.io_timeout, give_up=o.give_up),
            cache=cache,
            on_change=self._changed,
            on_failover=self._failover_done,
        )
        status_task = asyncio.get_running_loop().create_task(self._write_status_loop())
        try:
            await self.session.start()
            try:
                server = await listen(o.listen, self.session, o.device)
            except (OSError, ValueError) as exc:
                raise AgentError(f"cannot listen on {o.listen}: {exc}") from exc
            log.info("agent for %s listening on %s", o.device, o.listen)
            self.write_status()
            try:
                await asyncio.Event().wait()  # until cancelled
            finally:
                server.close()
                remove_socket(o.listen)
        finally:
            status_task.cancel()
            await self.session.close()
            self.write_status()


def run_agent(options: AgentOptions) -> None:
    """Run the agent until SIGTERM / SIGINT. Raises AgentError at start."""

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await Agent(options).run()

    try:
        import uvloop  # the stream server's event loop; the agent runs without it too

        uvloop.run(main())
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(main())
