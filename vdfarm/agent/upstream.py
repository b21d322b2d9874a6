"""An asyncio NBD client to one vdfarm server: the agent's upstream.

Job: `open_upstream` connects, runs the fixed newstyle handshake (with
NBD_OPT_STARTTLS when a TLS context is given) and NBD_OPT_GO for the
export, asking for its description; `Upstream.request` sends a request
with its own cookie and returns a future of (NBD error, data).

Rules:
- Simple replies only: structured replies are never negotiated, so a
  structured reply breaks the protocol.
- A broken connection (EOF, reset, a protocol error, `abort`) fails every
  pending future with ConnectionLost, at once, and every later request too.
- A reply for a cookie nobody waits for breaks the protocol.
- The handshake is bounded by `timeout` (a hung server never answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from vdfarm.agent import client_wire as cw
from vdfarm.nbd import constants as c
from vdfarm.nbd import wire

log = logging.getLogger("vdfarm.agent")

Reply = tuple[int, bytes]  # (NBD error, data of a successful READ)


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
    return Upstream(name, answer, reader, writer, on_lost)


async def _option_reply(reader: asyncio.StreamReader, opt: int) -> tuple[int, bytes]:
    header = await reader.readexactly(wire.OPTION_REPLY_HEADER.size)
    reply_type, length = cw.parse_option_reply_header(header, opt)
    return reply_type, await reader.readexactly(length)


class Upstream:
    """One open NBD connection in transmission. See the module docstring."""

    def __init__(
        self,
        name: str,
        export: cw.ExportAnswer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_lost: Callable[[Upstream], None] | None = None,
    ) -> None:
        self.name = name
        self.export = export
        self._reader = reader
        self._writer = writer
        self._on_lost = on_lost
        self._cookies = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future[Reply], int, int]] = {}
        self._lost: str | None = None
        self._closing = False
        self.saw_shutdown = False  # a reply said NBD_ESHUTDOWN (a move order)
        self._task = asyncio.get_running_loop().create_task(self._read_replies())

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

    def request(
        self, cmd: int, offset: int, length: int, data: bytes | None = None, flags: int = 0
    ) -> asyncio.Future[Reply]:
        """Send one request; the future gets (NBD error, data) or raises
        ConnectionLost."""
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        if self._lost is not None:
            fut.set_exception(ConnectionLost(self._lost))
            return fut
        cookie = next(self._cookies)
        self._pending[cookie] = (fut, cmd, length)
        header = cw.request(cmd, flags, cookie, offset, length)
        if data is not None:
            self._writer.writelines([header, data])
        else:
            self._writer.write(header)
        return fut

    async def _read_replies(self) -> None:
        reader = self._reader
        why = "the server closed the connection"
        try:
            while True:
                header = await reader.readexactly(wire.SIMPLE_REPLY.size)
                error, cookie = cw.parse_simple_reply(header)
                entry = self._pending.pop(cookie, None)
                if entry is None:
                    raise cw.UpstreamProtocolError(f"reply for unknown cookie {cookie}")
                fut, cmd, length = entry
                data = b""
                if cmd == c.CMD_READ and error == 0:
                    data = await reader.readexactly(length)
                if error == c.NBD_ESHUTDOWN:
                    self.saw_shutdown = True
                if not fut.done():
                    fut.set_result((error, data))
        except asyncio.CancelledError:
            why = self._lost or "closed"
        except asyncio.IncompleteReadError:
            pass
        except (OSError, cw.UpstreamProtocolError, ssl.SSLError) as exc:
            why = f"{type(exc).__name__}: {exc}"
        self._fail(why)

    def _fail(self, why: str, abort: bool = True) -> None:
        if self._lost is not None:
            return
        self._lost = why
        pending, self._pending = self._pending, {}
        for fut, _, _ in pending.values():
            if not fut.done():
                fut.set_exception(ConnectionLost(why))
        if abort:
            with contextlib.suppress(Exception):
                self._writer.transport.abort()
        if not self._closing and self._on_lost is not None:
            self._on_lost(self)

    def abort(self, why: str) -> None:
        """Drop the connection now (a hung server): every pending request fails."""
        self._fail(why)
        self._task.cancel()

    async def close(self) -> None:
        """Say goodbye (NBD_CMD_DISC) and close; pending requests fail."""
        self._closing = True
        if self._lost is None:
            with contextlib.suppress(Exception):
                self._writer.write(cw.request(c.CMD_DISC, 0, 0, 0, 0))
                self._writer.close()
        self._fail("closed by the agent", abort=False)
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task
