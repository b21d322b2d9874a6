"""The device-facing NBD server: the device's own client connects here.

Job: listen on a unix socket (`unix:PATH`, the file 0600, its directory
made 0700 if missing) or loopback TCP (`tcp:127.0.0.1:PORT`), drive one
vdfarm.nbd.server machine per connection, and hand each request to the
shared Session.
Rules:
- Only the device's name is an export; other names are refused. Several
  connections may share the session (multi-conn): one upstream serves all.
- TLS is off (the socket is local); the size and flags come from the session.
- A client that breaks the protocol or vanishes mid-request loses its own
  connection and nothing else; its requests still running are dropped.
- Requests run concurrently (replies carry their cookie, any order); past
  MAX_IN_FLIGHT requests or MAX_IN_FLIGHT_BYTES of read and write data of
  one connection, reading stops until some are answered: with the device
  cache's own bound, that is what bounds the agent's memory.
- The hot path has no task per request: the requests of one batch of
  bytes are handed to the session (`Session.submit`) and sent upstream in
  one write; replies are queued (`answer`) and written in one write when
  the upstream's batch of replies ends (`flush`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from vdfarm.agent.session import Session
from vdfarm.agent.upstream import Payload
from vdfarm.nbd import constants as c
from vdfarm.nbd.errors import RemoteProtocolError
from vdfarm.nbd.events import BadRequest, Disconnect, ExportRequest, ListRequest, Request
from vdfarm.nbd.server import NEED_DATA, ExportInfo, ServerConnection
from vdfarm.nbd.text import printable

log = logging.getLogger("vdfarm.agent")

MAX_IN_FLIGHT = 128
MAX_IN_FLIGHT_BYTES = 64 << 20
SEND_BUFFER_BYTES = 4 << 20  # asked of the local socket (the system may grant less)


class ListenError(ValueError):
    """A --listen value that cannot be used (one line)."""


@dataclass(frozen=True)
class ListenAddress:
    """Where the agent listens: a unix socket path, or a loopback host and port."""

    path: Path | None = None
    host: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.path is not None else f"tcp:{self.host}:{self.port}"


def parse_listen(text: str) -> ListenAddress:
    """`unix:PATH` (absolute) or `tcp:HOST:PORT` with a loopback HOST.

    Raises ListenError.
    """
    kind, sep, rest = text.partition(":")
    if kind == "unix" and sep:
        path = Path(rest)
        if not path.is_absolute() or path.name in ("", ".", ".."):
            raise ListenError(f"--listen unix:PATH needs an absolute socket path, got {rest!r}")
        return ListenAddress(path=path)
    if kind == "tcp" and sep:
        host, sep, port_text = rest.rpartition(":")
        host = host.strip("[]")
        if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ListenError(f"--listen tcp:HOST:PORT needs a port in 1..65535, got {rest!r}")
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise ListenError(f"--listen tcp: the agent listens on loopback only, not {host!r}")
        return ListenAddress(host=host, port=int(port_text))
    raise ListenError(f"--listen must be unix:PATH or tcp:127.0.0.1:PORT, got {text!r}")


class LocalConnection(asyncio.Protocol):
    """One local NBD client."""

    def __init__(self, session: Session, device: str) -> None:
        self.session = session
        self.device = device
        self.nbd = ServerConnection()
        self.transport: asyncio.Transport | None = None
        self.in_flight = 0  # requests handed to the session, not yet answered
        self.in_flight_bytes = 0  # their read lengths and write payloads
        self._out: list[Any] = []  # replies queued by `answer`
        self.closed = False
        self.paused = False
        self.ending = False  # the client said goodbye: close once answered

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None:  # a 1 MiB read reply leaves in one write, not five
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        self.transport.write(self.nbd.start())

    def data_received(self, data: bytes) -> None:
        self.nbd.receive_data(data)
        self._process()

    def eof_received(self) -> bool:
        self.nbd.receive_data(b"")
        self._process()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True  # requests still running are answered into nothing

    def _write(self, data: bytes | list[bytes]) -> None:
        if self.closed or self.transport is None or not data:
            return
        if isinstance(data, list):
            self.transport.writelines(data)
        else:
            self.transport.write(data)

    def _close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def _process(self) -> None:
        nbd = self.nbd
        try:
            while not self.closed and not self.paused:
                ev = nbd.next_event()
                if ev is NEED_DATA:
                    break
                if type(ev) is Request:
                    self._start(ev)
                    continue
                self._write(nbd.data_to_send())
                if type(ev) is BadRequest:
                    self._write(nbd.reply_error(ev.cookie, ev.error, ev.message))
                elif type(ev) is ExportRequest:
                    self._export(ev)
                elif type(ev) is ListRequest:
                    self._write(nbd.send_export_list([(self.device, "")]))
                elif type(ev) is Disconnect:
                    self.ending = True
                    if not self.in_flight:
                        self._close()
                    break
            self.session.flush()
            self._write(nbd.data_to_send())
        except RemoteProtocolError as exc:
            self.session.flush()
            log.warning("local client: protocol error: %s; closing", printable(str(exc)))
            self._close()

    def _export(self, ev: ExportRequest) -> None:
        if ev.name != self.device:
            self._write(
                self.nbd.reject_export(c.REP_ERR_UNKNOWN, f"this agent serves {self.device} only")
            )
            if ev.legacy:
                self._close()
            return
        info = ExportInfo(
            size=self.session.size,
            transmission_flags=self.session.transmission_flags,
            description=f"vdfarm agent for device {self.device}",
        )
        self._write(self.nbd.accept_export(info))

    def _start(self, req: Request) -> None:
        cmd = req.command
        if cmd == c.CMD_BLOCK_STATUS:  # we know no holes: all of it is data
            self._out.append(self.nbd.reply_block_status(req.cookie, [(req.length, 0)]))
            self.flush()
            return
        data = bytes(req.data) if req.data is not None else None
        self.in_flight += 1
        self.in_flight_bytes += _data_bytes(cmd, req.length)
        self.session.submit(self, req.cookie, cmd, req.flags, req.offset, req.length, data)
        if (
            self.in_flight >= MAX_IN_FLIGHT or self.in_flight_bytes >= MAX_IN_FLIGHT_BYTES
        ) and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def answer(
        self, cookie: int, cmd: int, offset: int, length: int, error: int, payload: Payload | None
    ) -> None:
        """Queue the reply of request COOKIE (written by `flush`)."""
        self.in_flight -= 1
        self.in_flight_bytes -= _data_bytes(cmd, length)
        if self.closed:
            return
        nbd = self.nbd
        if error:
            self._out.append(nbd.reply_error(cookie, error))
        elif cmd == c.CMD_READ:
            self._out.append(nbd.reply_read_header(cookie, offset, length))
            self._out.extend(payload or ())
        else:
            self._out.append(nbd.reply_ok(cookie))

    def flush(self) -> None:
        """Write the queued replies at once; resume reading, or close a
        connection whose client said goodbye, as the answers allow."""
        out = self._out
        if out:
            self._out = []
            self._write(out)
        if self.closed:
            return
        if self.ending:
            if not self.in_flight:
                self._close()
        elif (
            self.paused
            and self.in_flight < MAX_IN_FLIGHT // 2
            and self.in_flight_bytes < MAX_IN_FLIGHT_BYTES // 2
        ):
            self.paused = False
            assert self.transport is not None
            self.transport.resume_reading()
            self._process()


def _data_bytes(cmd: int, length: int) -> int:
    """The bytes a request holds while in flight: a READ's reply, a WRITE's payload."""
    return length if cmd == c.CMD_READ or cmd == c.CMD_WRITE else 0


def _prepare_socket_dir(path: Path) -> None:
    """Make PATH's directory (0700) if missing; remove a stale socket at
    PATH. Raises ListenError if PATH exists and is not a socket."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ListenError(f"{path} exists and is not a socket")
    path.unlink()


async def listen(address: ListenAddress, session: Session, device: str) -> asyncio.Server:
    """Start the local NBD server. Raises ListenError, OSError."""
    loop = asyncio.get_running_loop()

    def factory() -> LocalConnection:
        return LocalConnection(session, device)

    if address.path is not None:
        _prepare_socket_dir(address.path)
        old = os.umask(0o177)  # the socket file is born 0600
        try:
            server = await loop.create_unix_server(factory, str(address.path))
        finally:
            os.umask(old)
        os.chmod(address.path, 0o600)
        return server
    assert address.port is not None  # parse_listen sets a port for TCP
    return await loop.create_server(factory, address.host, address.port)


def remove_socket(address: ListenAddress) -> None:
    if address.path is not None:
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.lstat(address.path).st_mode):
                address.path.unlink()
