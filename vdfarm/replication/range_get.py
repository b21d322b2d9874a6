"""A range of a peer's file, received straight into the caller's memory.

httpx hands a body over in 64 KiB events, each one parsed, copied twice
and wrapped in Python objects: about half a second of the receiver's CPU
per GiB, on a server whose devices want that CPU. A range answer is one
status line, a few headers and a long body, so this reads the head itself
and the body with `recv_into` into the caller's buffer: the kernel's copy
and little more.

Rules:
- One GET per connection (`Connection: close`), HTTP/1.1, with the
  headers peer_http sends (the token, `Accept-Encoding: identity`, the
  Range, `X-Vdfarm-Frames: zlib` when frames are asked for); https with
  the caller's TLS context (the peer's certificate checked, its name too).
- The answer is untrusted: its head is at most MAX_HEAD bytes; it must be
  206 with exactly the Content-Range asked for, framed only if asked, and
  its body delimited by a Content-Length or chunked (decoded here, every
  size line checked); a plain body is exactly the range, a framed one at
  most `wire_frames.max_wire_bytes` of it. A 200 (the whole file), another
  status (its `detail` shown), another range, frames unasked, a broken
  head or chunk line, a body longer than that: PeerFailed, in peer_http's
  words.
- Silence for the read timeout is "sent nothing for N s"; a pace under
  the caller's `Pace` (time blocked in receives against bytes) is "too
  slow: ..."; a connection that ends early ends the body (the caller
  says "short body").
- Pure wire: nothing here writes a file or decides which peer is next.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

from vdfarm.replication.pace import Pace
from vdfarm.replication.peer_http import (
    FRAMES_HEADER,
    FRAMES_ZLIB,
    MAX_ERROR_BYTES,
    PeerFailed,
    file_url,
    refusal_detail,
)
from vdfarm.store.wire_frames import max_wire_bytes

MAX_HEAD = 64 * 1024
MAX_CHUNK_LINE = 1024
_RECV = 64 * 1024


class RangeAnswer:
    """The body of one range answer (FRAMED: in frames; CHUNKED: in HTTP
    chunks, at most LIMIT bytes; else LIMIT bytes long), read with
    `read_into`. Made by `get_range_into`."""

    def __init__(
        self,
        sock: socket.socket,
        pending: bytes,
        chunked: bool,
        limit: int,
        framed: bool,
        pace: Pace | None = None,
    ) -> None:
        self._sock = sock
        self._pace = pace
        self._pending = bytearray(pending)
        self.framed = framed
        self._chunked = chunked
        self._left = limit  # the body's bytes (chunked: the most it may have)
        self._in_chunk = 0  # chunked: bytes left in the current chunk
        self._ended = False
        self.timeout = sock.gettimeout()

    def read_into(self, view: memoryview) -> int:
        """Receive up to len(VIEW) bytes of the body into VIEW; 0 when it
        ended (or the peer closed early). Raises PeerFailed."""
        if self._ended or not len(view):
            return 0
        if not self._chunked:
            got = self._take(view[: min(len(view), self._left)])
            self._left -= got
            self._ended = got == 0 or self._left == 0
            return got
        if self._in_chunk == 0:
            self._in_chunk = self._next_chunk_size()
            if self._in_chunk == 0:
                self._ended = True
                return 0
        got = self._take(view[: min(len(view), self._in_chunk)])
        if got == 0:
            self._ended = True
            return 0
        self._in_chunk -= got
        if self._in_chunk == 0:
            self._expect(b"\r\n")
        return got

    def _take(self, view: memoryview) -> int:
        if self._pending:
            got = min(len(view), len(self._pending))
            view[:got] = self._pending[:got]
            del self._pending[:got]
            return got
        return self._recv_into(view)

    def _recv_into(self, view: memoryview) -> int:
        began = time.monotonic()
        try:
            got = self._sock.recv_into(view)
        except TimeoutError as exc:
            raise PeerFailed(f"sent nothing for {self.timeout:g} s") from exc
        except OSError as exc:
            raise PeerFailed(f"broke off the answer: {exc}") from exc
        _keep_pace(self._pace, time.monotonic() - began, got)
        return got

    def _line(self) -> bytes | None:
        """The next CRLF-ended line of the body (without it); None if the
        connection ended first."""
        while b"\r\n" not in self._pending:
            if len(self._pending) > MAX_CHUNK_LINE:
                raise PeerFailed("sent a chunk size line too long")
            more = bytearray(_RECV)
            got = self._recv_into(memoryview(more))
            if got == 0:
                return None
            self._pending += more[:got]
        at = self._pending.index(b"\r\n")
        line = bytes(self._pending[:at])
        del self._pending[: at + 2]
        return line

    def _next_chunk_size(self) -> int:
        """The size of the next chunk (0: the body ended, or the connection
        did: the caller sees what is missing)."""
        found = self._line()
        if found is None:
            return 0
        line = found.split(b";", 1)[0].strip()
        try:
            size = int(line, 16) if line and len(line) <= 16 else -1
        except ValueError:
            size = -1
        if size < 0:
            raise PeerFailed(f"sent a broken chunk size line {line[:40]!r}")
        if size > self._left:
            raise PeerFailed("sent more than the bytes asked for")
        self._left -= size
        if size == 0:
            self._line()  # the end of an (empty) trailer
        return size

    def _expect(self, what: bytes) -> None:
        while len(self._pending) < len(what):
            more = bytearray(_RECV)
            got = self._recv_into(memoryview(more))
            if got == 0:
                return  # ended early: the caller sees a short body
            self._pending += more[:got]
        if bytes(self._pending[: len(what)]) != what:
            raise PeerFailed("sent a chunk without its CRLF")
        del self._pending[: len(what)]


def _connect(base_url: str, context: ssl.SSLContext, timeout: float) -> socket.socket:
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError as exc:
        raise PeerFailed(f"cannot connect: timed out after {timeout:g} s") from exc
    except OSError as exc:
        raise PeerFailed(f"cannot connect: {exc}") from exc
    if parts.scheme != "https":
        return sock
    try:
        return context.wrap_socket(sock, server_hostname=host)
    except (OSError, ssl.SSLError) as exc:
        sock.close()
        raise PeerFailed(f"connection failed: {exc}") from exc


def _keep_pace(pace: Pace | None, waited_s: float, got: int) -> None:
    """Tell PACE of one receive. Raises PeerFailed (the peer trickles)."""
    if pace is not None and (slow := pace.record(waited_s, got)) is not None:
        raise PeerFailed(f"too slow: {slow}")


def _read_head(
    sock: socket.socket, timeout: float, pace: Pace | None = None
) -> tuple[int, str, dict[str, str], bytes]:
    """(status, reason, headers by lowercase name, bytes after the head)."""
    head = bytearray()
    while b"\r\n\r\n" not in head:
        if len(head) > MAX_HEAD:
            raise PeerFailed(f"sent an answer head over {MAX_HEAD} bytes")
        began = time.monotonic()
        try:
            more = sock.recv(_RECV)
        except TimeoutError as exc:
            raise PeerFailed(f"sent nothing for {timeout:g} s") from exc
        except OSError as exc:
            raise PeerFailed(f"broke off the answer: {exc}") from exc
        _keep_pace(pace, time.monotonic() - began, len(more))
        if not more:
            raise PeerFailed("broke off the answer before its head ended")
        head += more
    at = head.index(b"\r\n\r\n")
    lines = bytes(head[:at]).decode("latin-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    if (
        len(status_line) < 2
        or not status_line[0].startswith("HTTP/1.")
        or not status_line[1].isdigit()
    ):
        raise PeerFailed(f"sent a broken status line {lines[0][:60]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise PeerFailed(f"sent a broken header line {line[:60]!r}")
        key = name.lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    reason = status_line[2] if len(status_line) > 2 else ""
    return int(status_line[1]), reason, headers, bytes(head[at + 4 :])


def _body_of_refusal(answer: RangeAnswer) -> bytes:
    body = bytearray()
    view = memoryview(bytearray(MAX_ERROR_BYTES))
    with contextlib.suppress(PeerFailed):
        while len(body) < MAX_ERROR_BYTES:
            got = answer.read_into(view[: MAX_ERROR_BYTES - len(body)])
            if not got:
                break
            body += view[:got]
    return bytes(body)


@contextlib.contextmanager
def get_range_into(
    base_url: str,
    token: str,
    context: ssl.SSLContext,
    read_timeout: float,
    vdisk: str,
    file_name: str,
    start: int,
    end: int,
    size: int,
    *,
    frames: bool = False,
    pace: Pace | None = None,
) -> Iterator[RangeAnswer]:
    """The answer to a GET of bytes START..END-1 of FILE_NAME (SIZE bytes
    long) of vDisk VDISK at the peer BASE_URL, framed if FRAMES asked for
    it and the peer framed it; the connection is closed when the block
    ends. Raises PeerFailed (cannot connect, refused, another range,
    frames unasked, a broken head, silence, a pace under PACE's), also
    while the body is read.
    """
    url = urlsplit(file_url(base_url, vdisk, file_name))
    last = end - 1
    lines = [
        f"GET {url.path} HTTP/1.1",
        f"Host: {url.netloc}",
        f"Authorization: Bearer {token}",
        "Accept-Encoding: identity",
        f"Range: bytes={start}-{last}",
        "Connection: close",
        "User-Agent: vdfarm-replica",
    ]
    if frames:
        lines.append(f"{FRAMES_HEADER}: {FRAMES_ZLIB}")
    sock = _connect(base_url, context, read_timeout)
    try:
        try:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        except TimeoutError as exc:
            raise PeerFailed(f"sent nothing for {read_timeout:g} s") from exc
        except OSError as exc:
            raise PeerFailed(f"broke off the answer: {exc}") from exc
        status, reason, headers, rest = _read_head(sock, read_timeout, pace)
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if status != 206:
            told = headers.get("content-length", "")
            limit = min(int(told), MAX_ERROR_BYTES) if told.isdigit() else MAX_ERROR_BYTES
            body = _body_of_refusal(RangeAnswer(sock, rest, chunked, limit, False))
            if status == 200:
                raise PeerFailed(f"answered the whole file (200) to bytes {start}-{last}")
            detail = refusal_detail(body, reason)
            raise PeerFailed(f"answered {status} to bytes {start}-{last}: {detail}")
        if headers.get("content-range") != f"bytes {start}-{last}/{size}":
            raise PeerFailed(
                f"answered another range ({headers.get('content-range')!r}) to bytes {start}-{last}"
            )
        framed = FRAMES_HEADER.lower() in headers
        if framed and (not frames or headers[FRAMES_HEADER.lower()] != FRAMES_ZLIB):
            raise PeerFailed(
                f"answered frames ({headers[FRAMES_HEADER.lower()]!r}) it was not asked for"
            )
        limit = max_wire_bytes(end - start) if framed else end - start
        length = headers.get("content-length")
        if not chunked and (
            length is None
            or not length.isdigit()
            or (int(length) != limit if not framed else int(length) > limit)
        ):
            raise PeerFailed(f"answered {length!r} bytes to bytes {start}-{last}")
        body_bytes = limit if chunked or length is None else int(length)
        yield RangeAnswer(sock, rest, chunked, body_bytes, framed, pace)
    finally:
        sock.close()
