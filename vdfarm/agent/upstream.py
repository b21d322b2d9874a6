"""An asyncio NBD client to one vdfarm server: the agent's upstream.

Job: `open_upstream` connects, runs the fixed newstyle handshake (with
NBD_OPT_STARTTLS when a TLS context is given) and NBD_OPT_GO for the
export, asking for its description; then the connection is an
`Upstream`, an asyncio protocol. `send` queues a request with its own
cookie and a reply handler, `flush` writes what is queued in one call
(the session sends a batch of the device's requests at once); the handler
gets (NBD error, payload) — the payload of a successful READ as a list of
buffers — when the reply is complete, or LOST. `request` is the same as a
future, for the slow paths.

Rules:
- Simple replies only: structured replies are never negotiated, so a
  structured reply breaks the protocol.
- A broken connection (EOF, reset, a protocol error, `abort`) fails every
  pending request with LOST (a future: ConnectionLost), at once, and every
  later request too.
- A reply for a cookie nobody waits for breaks the protocol.
- The handshake is bounded by `timeout` (a hung server never answers).
- Replies are read into one staging buffer (an asyncio BufferedProtocol:
  the event loop receives into it, no chunk objects) and parsed there; a
  small READ payload is copied out of it, a large one (DIRECT_MIN and up)
  gets a buffer of its own that the rest of it is received into
  directly. After each received chunk, `on_batch_end` runs (the session
  writes the device's replies at once).
- Pending requests keep their send time, in send order: the oldest is
  what the session's watchdog measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vdfarm.agent import client_wire as cw
from vdfarm.nbd import constants as c
from vdfarm.nbd import wire

log = logging.getLogger("vdfarm.agent")

Reply = tuple[int, bytes]  # (NBD error, data of a successful READ)
Payload = list[Any]  # the buffers (bytes, memoryview) of a READ's data
ReplyHandler = Callable[[Any, int, Payload | None], None]  # (context, error, payload)
LOST = -1  # the "error" a handler gets when the connection is gone

_REPLY = wire.SIMPLE_REPLY
_REPLY_SIZE = wire.SIMPLE_REPLY.size
_REQUEST = wire.REQUEST_HEADER
STAGING_BYTES = 256 * 1024
DIRECT_MIN = 64 * 1024  # READ payloads this large are received into their own buffer


class ConnectionLost(Exception):
    """The upstream connection is gone; the request may be sent again elsewhere."""


class UpstreamRefused(Exception):
    """The server could not be used: unreachable, refused the export, or
    broke the handshake."""


@dataclass(frozen=True)
class TLSFiles:
    """The device's TLS identity: the farm's CA, its certificate and key."""

    ca: str
    cert: str | None = None
    key: str | None = None


def client_context(files: TLSFiles) -> ssl.SSLContext:
    """A TLS client context trusting FILES.ca, presenting the device
    certificate if given. Raises OSError / ssl.SSLError for bad files."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=files.ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if files.cert:
        context.load_cert_chain(files.cert, files.key)
    return context


async def open_upstream(
    host: str,
    port: int,
    export: str,
    *,
    name: str,
    tls: ssl.SSLContext | None = None,
    timeout: float = 2.0,
    on_lost: Callable[[Upstream], None] | None = None,
) -> Upstream:
    """Connect to HOST:PORT and open EXPORT; NAME is the server's name (for
    logs and the status). Raises UpstreamRefused."""
    try:
        return await asyncio.wait_for(
            _handshake(host, port, export, name, tls, on_lost), timeout=timeout
        )
    except TimeoutError as exc:
        raise UpstreamRefused(f"{name} ({host}:{port}): no handshake within {timeout:g} s") from exc
    except (OSError, EOFError, cw.UpstreamProtocolError, cw.OptionRefused, ssl.SSLError) as exc:
        raise UpstreamRefused(f"{name} ({host}:{port}): {exc or type(exc).__name__}") from exc


async def _handshake(
    host: str,
    port: int,
    export: str,
    name: str,
    tls: ssl.SSLContext | None,
    on_lost: Callable[[Upstream], None] | None,
) -> Upstream:
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    try:
        server_flags = cw.parse_greeting(await reader.readexactly(wire.GREETING.size))
        writer.write(cw.client_flags(server_flags))
        if tls is not None:
            writer.write(cw.option(c.OPT_STARTTLS))
            reply_type, data = await _option_reply(reader, c.OPT_STARTTLS)
            if reply_type != c.REP_ACK:
                raise cw.refusal(c.OPT_STARTTLS, reply_type, data)
            await writer.start_tls(tls, server_hostname=host)
        writer.write(cw.go_option(export))
        replies = cw.GoReplies()
        while True:
            reply_type, data = await _option_reply(reader, c.OPT_GO)
            answer = replies.add(reply_type, data)
            if answer is not None:
                break
    except BaseException:
        writer.close()
        raise
    # Transmission: the connection is the Upstream protocol's from now on (a
    # server sends nothing before the first request, so nothing is buffered).
    transport = writer.transport
    up = Upstream(name, answer, transport, on_lost, handshake_writer=writer)
    transport.set_protocol(up)
    return up


async def _option_reply(reader: asyncio.StreamReader, opt: int) -> tuple[int, bytes]:
    header = await reader.readexactly(wire.OPTION_REPLY_HEADER.size)
    reply_type, length = cw.parse_option_reply_header(header, opt)
    return reply_type, await reader.readexactly(length)


class Upstream(asyncio.BufferedProtocol):
    """One open NBD connection in transmission. See the module docstring."""

    def __init__(
        self,
        name: str,
        export: cw.ExportAnswer,
        transport: asyncio.BaseTransport,
        on_lost: Callable[[Upstream], None] | None = None,
        handshake_writer: asyncio.StreamWriter | None = None,
    ) -> None:
        self.name = name
        self.export = export
        self._transport: Any = transport
        # The handshake's stream writer closes the transport when collected:
        # it lives as long as this connection.
        self._handshake_writer = handshake_writer
        self._on_lost = on_lost
        self.on_batch_end: Callable[[], None] | None = None
        self._cookie = 0
        # cookie -> (handler, context, command, length, sent at); in send order
        self._pending: dict[int, tuple[ReplyHandler, Any, int, int, float]] = {}
        self._out: list[Any] = []  # queued requests, written by flush()
        self._staging = bytearray(STAGING_BYTES)
        self._view = memoryview(self._staging)
        self._start = 0  # where the next unparsed reply starts in the staging buffer
        self._end = 0  # how much of it holds received bytes
        # A large READ payload being received into its own buffer:
        self._reading: tuple[ReplyHandler, Any, int, int, float] | None = None
        self._payload = bytearray()
        self._payload_view = memoryview(self._payload)
        self._filled = 0
        self._lost: str | None = None
        self._oldest_at_loss: float | None = None
        self._closing = False
        self.saw_shutdown = False  # a reply said NBD_ESHUTDOWN (a move order)

    @property
    def size(self) -> int:
        return self.export.size

    @property
    def lost(self) -> str | None:
        """Why the connection is gone, or None while it is up."""
        return self._lost

    @property
    def pending(self) -> int:
        return len(self._pending)

    def oldest_sent(self) -> float | None:
        """When the oldest request still unanswered was sent (monotonic);
        after a loss, the oldest of those it failed; None if none."""
        for entry in self._pending.values():
            return entry[4]
        return self._oldest_at_loss

    # -- requests ------------------------------------------------------------
    def send(
        self,
        cmd: int,
        flags: int,
        offset: int,
        length: int,
        data: Any,
        handler: ReplyHandler,
        context: Any,
    ) -> None:
        """Queue one request (written by the next `flush`); HANDLER(CONTEXT,
        error, payload) runs once, when its reply is complete or with LOST."""
        if self._lost is not None:
            asyncio.get_running_loop().call_soon(handler, context, LOST, None)
            return
        self._cookie = cookie = self._cookie + 1
        self._pending[cookie] = (handler, context, cmd, length, time.monotonic())
        self._out.append(_REQUEST.pack(c.REQUEST_MAGIC, flags, cmd, cookie, offset, length))
        if data is not None:
            self._out.append(data)

    def flush(self) -> None:
        """Write every queued request at once."""
        out = self._out
        if out:
            self._out = []
            if self._lost is None:
                self._transport.writelines(out)

    def request(
        self, cmd: int, offset: int, length: int, data: bytes | None = None, flags: int = 0
    ) -> asyncio.Future[Reply]:
        """Send one request now; the future gets (NBD error, data) or raises
        ConnectionLost."""
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.send(cmd, flags, offset, length, data, _settle_future, fut)
        self.flush()
        return fut

    # -- replies -------------------------------------------------------------
    def get_buffer(self, sizehint: int) -> memoryview:
        if self._reading is not None:
            return self._payload_view[self._filled :]
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        try:
            if self._reading is not None:
                self._filled += nbytes
                if self._filled == len(self._payload):
                    entry, payload = self._reading, self._payload
                    self._reading, self._payload = None, bytearray()
                    self._payload_view = memoryview(self._payload)
                    entry[0](entry[1], 0, [payload])
            else:
                self._end += nbytes
                self._parse()
        except cw.UpstreamProtocolError as exc:
            self._fail(f"UpstreamProtocolError: {exc}")
        if self.on_batch_end is not None:
            self.on_batch_end()

    def _parse(self) -> None:
        """Handle every complete reply in the staging buffer; keep the rest
        at its start (or go on receiving a large payload into its own)."""
        view, pos, end = self._view, self._start, self._end
        pending = self._pending
        while end - pos >= _REPLY_SIZE:
            magic, error, cookie = _REPLY.unpack_from(view, pos)
            if magic != c.SIMPLE_REPLY_MAGIC:
                raise cw.UpstreamProtocolError(f"bad reply magic 0x{magic:x}")
            entry = pending.get(cookie)
            if entry is None:
                raise cw.UpstreamProtocolError(f"reply for unknown cookie {cookie}")
            data_at = pos + _REPLY_SIZE
            if entry[2] == c.CMD_READ and error == 0:
                length = entry[3]
                if end - data_at >= length:
                    del pending[cookie]
                    pos = data_at + length
                    entry[0](entry[1], 0, [bytes(view[data_at:pos])])
                    continue
                if length >= DIRECT_MIN or _REPLY_SIZE + length > STAGING_BYTES:
                    del pending[cookie]
                    have = end - data_at
                    self._payload = bytearray(length)
                    self._payload_view = memoryview(self._payload)
                    self._payload_view[:have] = view[data_at:end]
                    self._filled = have
                    self._reading = entry
                    pos = end
                break  # a small payload: wait for the rest here
            del pending[cookie]
            if error == c.NBD_ESHUTDOWN:
                self.saw_shutdown = True
            entry[0](entry[1], error, None)
            pos = data_at
        if pos == end:
            self._start = self._end = 0
        elif pos:  # keep the unparsed start of a reply at the buffer's start
            view[: end - pos] = view[pos:end]
            self._start, self._end = 0, end - pos
        else:
            self._start = pos

    # -- the connection ------------------------------------------------------
    def eof_received(self) -> bool:
        self._fail("the server closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None:
            self._fail("the server closed the connection")
        else:
            self._fail(f"{type(exc).__name__}: {exc}")

    def _fail(self, why: str, abort: bool = True) -> None:
        if self._lost is not None:
            return
        self._lost = why
        self._oldest_at_loss = self.oldest_sent()
        pending, self._pending = self._pending, {}
        if self._reading is not None:
            pending[0] = self._reading
            self._reading = None
        self._out = []
        if abort:
            with contextlib.suppress(Exception):
                self._transport.abort()
        for handler, context, _, _, _ in pending.values():
            handler(context, LOST, None)
        if not self._closing and self._on_lost is not None:
            self._on_lost(self)
        if self.on_batch_end is not None:
            self.on_batch_end()

    def abort(self, why: str) -> None:
        """Drop the connection now (a hung server): every pending request fails."""
        self._fail(why)

    async def close(self) -> None:
        """Say goodbye (NBD_CMD_DISC) and close; pending requests fail."""
        self._closing = True
        if self._lost is None:
            with contextlib.suppress(Exception):
                self.flush()
                self._transport.write(cw.request(c.CMD_DISC, 0, 0, 0, 0))
                self._transport.close()
        self._fail("closed by the agent", abort=False)


def _settle_future(fut: asyncio.Future[Reply], error: int, payload: Payload | None) -> None:
    """The handler behind `Upstream.request`."""
    if fut.done():
        return
    if error == LOST:
        fut.set_exception(ConnectionLost("the connection is gone"))
    else:
        fut.set_result((error, b"".join(payload) if payload else b""))
