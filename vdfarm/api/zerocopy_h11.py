"""uvicorn's h11 protocol with the ASGI zero-copy send extension
(`http.response.zerocopysend`): a response body sent from an open file with
sendfile(2), from the page cache to the socket, never through Python.

Rules:
- Offered (in `scope["extensions"]`) only on plain TCP connections: with
  TLS the bytes must go through the TLS layer, so the app sends bytes.
- h11 keeps the framing: the body passes `send_with_data_passthrough` as a
  placeholder of its length (h11's documented way to use sendfile), so a
  body longer than its Content-Length is refused before a byte goes out.
- sendfile(2) runs on the event loop, only while the transport has nothing
  queued (bytes stay in order) and only while the connection is not closing
  (its fd is still its socket). A full socket is waited for through a dup of
  its fd (the transport's own fd is watched by the transport); the wait ends
  when the connection is lost too.
- A window that does not look cached (`probably_cached`) is read in a worker
  thread and written through the transport instead: sendfile would hold the
  loop (and every NBD client on it) while the disk reads.
- A client that leaves mid-body ends the send quietly (as uvicorn's own
  send does); a file that ends early closes the connection (the framing is
  broken) and raises.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle

from vdfarm.block.nowait import probably_cached

ZEROCOPY_SEND = "http.response.zerocopysend"
WINDOW = 1 << 20  # bytes checked for residency (or read in a thread) at a time


class _Length:
    """What h11 is given as the body of a zero-copy send: only its length."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def _fileno(file: Any) -> int:
    return file if isinstance(file, int) else int(file.fileno())


class ZeroCopyH11Protocol(H11Protocol):
    """H11Protocol whose requests may answer with `http.response.zerocopysend`
    (on plain TCP connections)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        plain = sock is not None and transport.get_extra_info("sslcontext") is None
        self._sock_fd: int = sock.fileno() if plain else -1
        self._writable: asyncio.Future[None] | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._sock_fd = -1
        self._wake()

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        cycle = self.cycle
        if cycle is not before and cycle is not None and self._sock_fd >= 0:
            # the request's task has not run yet: its app sees both
            cycle.scope.setdefault("extensions", {})[ZEROCOPY_SEND] = {}
            setattr(cycle, "send", functools.partial(self._send, cycle, cycle.send))  # noqa: B010

    def _wake(self, *_: object) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    async def _send(self, cycle: RequestResponseCycle, send: Any, message: Any) -> None:
        """CYCLE's ASGI send (SEND, uvicorn's), which also takes zero-copy sends."""
        if message["type"] != ZEROCOPY_SEND:
            await send(message)
            return
        if not cycle.response_started or cycle.response_complete:
            raise RuntimeError(f"{ZEROCOPY_SEND} outside a response body")
        fd = _fileno(message["file"])
        offset = message.get("offset") or 0
        count = message.get("count")
        if count is None:
            count = max(0, os.fstat(fd).st_size - offset)
        body = count and cycle.scope["method"] != "HEAD" and not cycle.disconnected
        if body and not await self._send_file(cycle, fd, offset, count):
            return  # the client left
        await send(
            {
                "type": "http.response.body",
                "body": b"",
                "more_body": message.get("more_body", False),
            }
        )

    async def _send_file(
        self, cycle: RequestResponseCycle, fd: int, offset: int, count: int
    ) -> bool:
        """Bytes OFFSET..OFFSET+COUNT-1 of FD as body bytes of CYCLE's answer.
        False when the client left before; raises OSError (the file)."""
        cycle.conn.send_with_data_passthrough(h11.Data(data=_Length(count)))  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        transport = self.transport
        watch = -1
        try:
            while count:
                if cycle.disconnected or self._sock_fd < 0 or transport.is_closing():
                    cycle.disconnected = True
                    return False
                window = min(count, WINDOW)
                if transport.get_write_buffer_size() == 0 and probably_cached(
                    [(fd, offset, window)]
                ):
                    try:
                        sent = os.sendfile(self._sock_fd, fd, offset, window)
                    except BlockingIOError:
                        if watch < 0:
                            watch = os.dup(self._sock_fd)
                        await self._until_writable(loop, watch)
                        continue
                    except (BrokenPipeError, ConnectionResetError):
                        transport.close()
                        continue
                elif transport.get_write_buffer_size() == 0:
                    block = await loop.run_in_executor(None, os.pread, fd, window, offset)
                    if cycle.disconnected or transport.is_closing():
                        continue
                    transport.write(block)
                    sent = len(block)
                else:
                    if watch < 0:
                        watch = os.dup(self._sock_fd)
                    await self._until_writable(loop, watch)
                    continue
                if sent == 0:
                    transport.close()
                    raise OSError(errno.EIO, f"the file ended {count} bytes early")
                offset += sent
                count -= sent
            return True
        finally:
            if watch >= 0:
                os.close(watch)

    async def _until_writable(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        """Until FD (a dup of the socket's) can take bytes, or the connection is lost."""
        self._writable = loop.create_future()
        loop.add_writer(fd, self._wake)
        try:
            await self._writable
        finally:
            loop.remove_writer(fd)
            self._writable = None
