"""One NBD client connection: bytes from the socket through the sans-IO
protocol machine to the device's block stack, and replies back.

`NBDConnection` is built by single inheritance, each job in its module:
HandshakeSteps (vdfarm.stream.handshake_steps: export, view, TLS,
certificate, STARTTLS, reject, list) <- RequestPath (vdfarm.stream.requests:
the event loop over the machine, the transmission requests, deferred
replies) <- NBDConnection (here: the asyncio callbacks, admission, the
handshake timer, `leave`). Methods are inherited, never delegated: no extra
call per request.

Rules:
- A connection refused at accept (vdfarm.stream.limits) is closed before the
  greeting and holds nothing.
- Replies queued past the bound stop the reading of requests until the
  transport drains; so do too many bytes during a handshake step.
- `hand_over` (a move order, first step) keeps serving every request but
  answers NBD_CMD_CACHE with ESHUTDOWN: the device's agent probes with
  CACHE, learns it must move, connects to the new server and leaves this
  one by itself (NBD_CMD_DISC) between two requests. `stay` undoes it.
- `leave` (a move order, last step) closes the connection once the
  requests already received are answered; a request that arrives meanwhile
  gets ESHUTDOWN (the NBD spec's "server is shutting down, reconnect").
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol, cast

from vdfarm.nbd import constants as c
from vdfarm.nbd.server import ServerConnection
from vdfarm.stream.device_session import DeviceSession
from vdfarm.stream.handshake_steps import Listener
from vdfarm.stream.port import VdiskView
from vdfarm.stream.requests import RequestPath

log = logging.getLogger("vdfarm.stream")


class ConnectionOwner(Listener, Protocol):
    """What a connection needs of the listener that made it (the
    StreamServer), so this module need not import it."""

    @property
    def connections(self) -> set[NBDConnection]: ...


class NBDConnection(RequestPath):
    """asyncio protocol for one client; `server` is the StreamServer."""

    server: ConnectionOwner

    def __init__(self, server: ConnectionOwner) -> None:
        self.server = server
        self.registry = server.registry
        self.nbd = ServerConnection(max_payload=c.MAX_PAYLOAD, tls=server.tls.policy)
        self._sock_fd = -1  # for sendfile(2) of big reads; -1 for good once TLS starts
        self.session: DeviceSession | None = None
        self.view: VdiskView | None = None  # set when a read-only vDisk view is served
        self.peer = "?"
        self.client_ip: str | None = None
        # Names of the verified client certificate (None: no verified
        # certificate, the address rules apply), and what a device session
        # this connection opens is bound to (None: its address).
        self.cert_names: frozenset[str] | None = None
        self.peer_binding: str | None = None
        self._tls_early: list[bytes] | None = None  # decrypted before tls_started()
        self._leaving: str | None = None  # why the connection is being closed
        self._moving: str | None = None  # a move order: why CACHE gets ESHUTDOWN
        self._busy = False  # a handshake task is running
        self._clean = False
        self._closed = False
        self._deferred = 0  # requests whose reply waits for the io executor
        self._deferred_bytes = 0  # of which reads: their lengths
        self._deferred_full = False  # deferred read bytes past the bound: stop parsing
        self._out: list[Any] = []  # replies of the current batch, written at once
        self._admitted = False
        self._handshaking = True  # until the export is accepted for transmission
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._write_paused = False  # replies queued past the bound: stop reading requests
        self._held = False  # reading paused: too much arrived during a handshake step

    # -- asyncio callbacks -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        self._sock_fd = sock.fileno() if sock is not None else -1
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.client_ip = peer[0] if peer else None
        address = self.client_ip or "?"
        server = self.server
        refusal = server.admission.refusal(address)
        if refusal is not None:  # closed before the greeting: it holds nothing
            server.refusals.refused(address, refusal)
            self._closed = True
            self.transport.abort()
            return
        server.admission.admitted(address)
        self._admitted = True
        server.connections.add(self)
        limits = server.limits
        if limits.max_reply_buffer:
            self.transport.set_write_buffer_limits(high=limits.max_reply_buffer)
        if limits.handshake_timeout_s:
            self._handshake_timer = asyncio.get_running_loop().call_later(
                limits.handshake_timeout_s, self._handshake_expired
            )
        self.transport.write(self.nbd.start())

    def data_received(self, data: bytes) -> None:
        if self._tls_early is not None:  # the TLS layer's first bytes, before tls_started()
            self._tls_early.append(data)
            return
        self.nbd.receive_data(data)
        if not self._busy:
            if not self._write_paused:
                self._process()
            return
        # A handshake step runs: bytes wait unparsed, up to a bound.
        bound = self.server.limits.max_unparsed_bytes
        if bound and self.nbd.buffered_bytes > bound:
            self._held = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        if self._tls_early is not None:
            self._tls_early.append(b"")
            return False
        self.nbd.receive_data(b"")
        if not self._busy:
            self._process()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if not self._admitted:  # refused at accept, or already cleaned up
            return
        self._admitted = False
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        self.server.admission.left(self.client_ip or "?", self._handshaking)
        self.server.connections.discard(self)
        if self.session is not None:
            self.registry.detach(self.session, self, clean=self._clean)
            self.session = None
        if self.view is not None:
            self.registry.close_view(self.view)
            self.view = None

    def pause_writing(self) -> None:
        """Replies queued past the bound: parse no further request (the ones
        already received wait in the machine) and read no more."""
        self._write_paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if not self._closed and not self._deferred_full:
            self.transport.resume_reading()
            if not self._busy:
                self._process()

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        if self._handshaking and not self._closed:
            self.server.refusals.refused(
                self.client_ip or "?", "handshake not finished in time", f" ({self.peer})"
            )
            self._close()

    def hand_over(self, reason: str) -> None:
        """Tell the client (through its CACHE probes) that it must move;
        serve everything else as before."""
        if self._closed or self._moving is not None:
            return
        self._moving = reason
        log.info("%s: asking the client to move: %s", self.peer, reason)

    def stay(self) -> None:
        """The move order is off: CACHE is served again."""
        self._moving = None

    def leave(self, reason: str) -> None:
        """Close this connection after the requests already received are
        answered (deferred ones included); later ones get ESHUTDOWN."""
        if self._closed:
            return
        self._leaving = reason
        log.info("%s: closing: %s", self.peer, reason)
        if not self._deferred:
            self._close()
