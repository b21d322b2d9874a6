"""A small NBD server for the agent's tests, on the project's NBD machine:
serves bytes from memory under one export name, with an export description
that carries (or not) a vdfarm identity. It can die (every connection reset,
nothing listens), hang (stop answering, like SIGSTOP), be deaf (open
connections, never answer a request), answer every request with
NBD_ESHUTDOWN (a server leaving), or carry out a move order as vdfarm's
servers do (`moving`: CACHE, the agent's probe, gets NBD_ESHUTDOWN;
everything else is served).
"""

from __future__ import annotations

import asyncio
import hashlib

from vdfarm.agent.login import LoginAnswer, NoServer, ServerRef
from vdfarm.nbd import constants as c
from vdfarm.nbd.errors import RemoteProtocolError
from vdfarm.nbd.events import Disconnect, ExportRequest, Request
from vdfarm.nbd.server import NEED_DATA, ExportInfo, ServerConnection

FLAGS = (
    c.FLAG_SEND_FLUSH
    | c.FLAG_SEND_FUA
    | c.FLAG_SEND_TRIM
    | c.FLAG_SEND_WRITE_ZEROES
    | c.FLAG_SEND_CACHE
)


def identity(data: bytes, version: int = 1, vdisk: str = "golden") -> str:
    sha = hashlib.sha256(data).hexdigest()
    return f"vdfarm vdisk={vdisk} version={version} sha256={sha} size={len(data)}"


class FakeServer:
    def __init__(self, name: str, export: str, data: bytes, description: str | None = None):
        self.name = name
        self.export = export
        self.data = bytearray(data)
        self.description = identity(data) if description is None else description
        # serve | hang | deaf (handshakes, never answers) | shutdown | moving
        self.mode = "serve"
        self.server: asyncio.Server | None = None
        self.port = 0
        self.connections: set[asyncio.Transport] = set()
        self.requests = 0
        self.probes = 0  # CACHE requests
        self.disconnects = 0  # NBD_CMD_DISC received (soft disconnects)

    @property
    def ref(self) -> ServerRef:
        return ServerRef(self.name, "127.0.0.1", self.port, None)

    async def start(self) -> None:
        self.server = await asyncio.get_running_loop().create_server(
            lambda: _Conn(self), "127.0.0.1", self.port
        )
        self.port = self.server.sockets[0].getsockname()[1]
        self.mode = "serve"

    def kill(self) -> None:
        """Die: stop listening, reset every connection."""
        if self.server is not None:
            self.server.close()
            self.server = None
        for transport in list(self.connections):
            transport.abort()
        self.connections.clear()

    @property
    def up(self) -> bool:
        return self.server is not None


class _Conn(asyncio.Protocol):
    def __init__(self, owner: FakeServer) -> None:
        self.owner = owner
        self.nbd = ServerConnection()

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.transport = transport
        self.owner.connections.add(transport)
        if self.owner.mode == "hang":
            return
        transport.write(self.nbd.start())

    def connection_lost(self, exc) -> None:  # type: ignore[no-untyped-def]
        self.owner.connections.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        if self.owner.mode == "hang":
            return
        nbd = self.nbd
        nbd.receive_data(data)
        try:
            while True:
                ev = nbd.next_event()
                if ev is NEED_DATA:
                    break
                out = nbd.data_to_send()
                if out:
                    self.transport.write(out)
                if isinstance(ev, ExportRequest):
                    if ev.name != self.owner.export:
                        self.transport.write(nbd.reject_export(c.REP_ERR_UNKNOWN, "no such"))
                    else:
                        info = ExportInfo(len(self.owner.data), FLAGS, self.owner.description)
                        self.transport.write(nbd.accept_export(info))
                elif isinstance(ev, Request):
                    self._request(ev)
                elif isinstance(ev, Disconnect):
                    self.owner.disconnects += ev.clean
                    self.transport.close()
                    return
            out = nbd.data_to_send()
            if out:
                self.transport.write(out)
        except RemoteProtocolError:
            self.transport.close()

    def _request(self, req: Request) -> None:
        owner = self.owner
        if owner.mode in ("hang", "deaf"):
            return
        owner.requests += 1
        nbd = self.nbd
        if req.command == c.CMD_CACHE:
            owner.probes += 1
        if owner.mode == "shutdown" or (owner.mode == "moving" and req.command == c.CMD_CACHE):
            self.transport.write(nbd.reply_error(req.cookie, c.NBD_ESHUTDOWN))
            return
        end = req.offset + req.length
        if end > len(owner.data):
            self.transport.write(nbd.reply_error(req.cookie, c.NBD_EINVAL))
        elif req.command == c.CMD_READ:
            self.transport.writelines(
                [
                    nbd.reply_read_header(req.cookie, req.offset, req.length),
                    bytes(owner.data[req.offset : end]),
                ]
            )
        elif req.command == c.CMD_WRITE:
            owner.data[req.offset : end] = bytes(req.data or b"")
            self.transport.write(nbd.reply_ok(req.cookie))
        elif req.command == c.CMD_WRITE_ZEROES:
            owner.data[req.offset : end] = bytes(req.length)
            self.transport.write(nbd.reply_ok(req.cookie))
        else:
            self.transport.write(nbd.reply_ok(req.cookie))


class FakeFarm:
    """Login over FakeServers: the first one up (any, with `names_dead`), in
    order, not excluded; the others as the alternatives."""

    def __init__(
        self,
        servers: list[FakeServer],
        data: bytes,
        failover: bool = True,
        write_cache_type: str = "none",
    ):
        self.servers = servers
        self.data = data
        self.failover = failover
        self.write_cache_type = write_cache_type
        self.logins: list[list[str]] = []
        self.home: str | None = None  # the server logins name first (a move target)
        # Name dead servers too, as a real farm does until their heartbeat times out.
        self.names_dead = False

    def answer(self, server: FakeServer, alternatives: tuple[FakeServer, ...] = ()) -> LoginAnswer:
        return LoginAnswer(
            url="http://fake",
            device=server.export,
            vdisk="golden",
            version=1,
            sha256=hashlib.sha256(self.data).hexdigest(),
            size=len(self.data),
            write_cache_type=self.write_cache_type,
            failover=self.failover,
            server=server.ref,
            alternatives=tuple(alt.ref for alt in alternatives),
            reason="test",
        )

    async def login(self, exclude: list[str]) -> LoginAnswer:
        self.logins.append(list(exclude))
        order = sorted(self.servers, key=lambda s: s.name != self.home)
        named = [s for s in order if (s.up or self.names_dead) and s.name not in exclude]
        if not named:
            raise NoServer("no server can serve the device")
        return self.answer(named[0], tuple(named[1:]))
