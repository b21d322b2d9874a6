"""The two replication routes of one peer, over httpx: a file's chunk list
and a byte range of the file. Every way a peer can fail is a PeerFailed
with one line saying why.

Rules:
- Sync httpx, HTTP/1.1, `Authorization: Bearer <token>`, no compression
  (`Accept-Encoding: identity`, raw bytes read), so what arrives is what
  the peer sent and nothing expands in memory. With https the peer's
  certificate is checked against CA_FILE only, or the system's CAs.
- Timeouts: connecting, and every read, give up after READ_TIMEOUT seconds
  without a byte ("sent nothing for 10 s").
- A peer is untrusted: the chunk list's body is capped (MAX_LIST_BYTES)
  and checked (`ChunkList.from_dict`); a range answer must be 206 with
  exactly the Content-Range asked for, and never gives more bytes than
  asked (fewer is the caller's "short body").
- Pure wire: nothing here writes a file or decides which peer is next.
"""

from __future__ import annotations

import contextlib
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx

from vdfarm.store.chunks import MAX_CHUNKS, ChunkList
from vdfarm.store.errors import BadChunkList

FILES_PATH = "/api/v1/replication/files"
RAW_BLOCK = 256 * 1024
MAX_LIST_BYTES = MAX_CHUNKS * 70 + 64 * 1024
MAX_ERROR_BYTES = 4096


class PeerFailed(Exception):
    """The peer cannot give this file now: one line says why."""


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """A context that checks peers' certificates against CA_FILE (PEM) only,
    or the system's CAs if None. TLS 1.2 or newer.

    Raises OSError (CA file missing or unreadable), ssl.SSLError (not PEM).
    """
    context = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def make_client(token: str, ca_file: Path | None, read_timeout: float) -> httpx.Client:
    """An httpx client for peers' replication routes with TOKEN."""
    return httpx.Client(
        headers={"Authorization": f"Bearer {token}", "Accept-Encoding": "identity"},
        timeout=httpx.Timeout(read_timeout),
        verify=tls_context(ca_file),
        follow_redirects=False,
    )


def file_url(base_url: str, vdisk: str, file_name: str) -> str:
    """The URL of FILE_NAME of vDisk VDISK at the peer BASE_URL."""
    return f"{base_url.rstrip('/')}{FILES_PATH}/{quote(vdisk, safe='')}/{quote(file_name, safe='')}"


def _why(exc: httpx.HTTPError, timeout: float | None) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"sent nothing for {timeout:g} s" if timeout is not None else "timed out"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect: {exc}"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"broke off the answer: {exc}"
    return f"connection failed: {exc}"


@contextlib.contextmanager
def _answer(client: httpx.Client, url: str, headers: dict[str, str]) -> Iterator[httpx.Response]:
    """The streamed answer to GET URL; httpx failures (while it is read
    too) become PeerFailed."""
    timeout = client.timeout.read
    try:
        with client.stream("GET", url, headers=headers) as response:
            yield response
    except httpx.HTTPError as exc:
        raise PeerFailed(_why(exc, timeout)) from exc


def _refusal(response: httpx.Response, what: str) -> PeerFailed:
    body = b""
    with contextlib.suppress(httpx.HTTPError):
        for block in response.iter_raw(MAX_ERROR_BYTES):
            body += block
            if len(body) >= MAX_ERROR_BYTES:
                break
    try:
        detail = json.loads(body).get("detail")
    except (ValueError, AttributeError):
        detail = None
    if not isinstance(detail, str):
        detail = body[:200].decode("utf-8", "replace")
    detail = " ".join(detail.split()) or response.reason_phrase
    return PeerFailed(f"answered {response.status_code} to {what}: {detail}")


def get_chunk_list(client: httpx.Client, base_url: str, vdisk: str, file_name: str) -> ChunkList:
    """The peer's chunk list of FILE_NAME of vDisk VDISK (checked, not yet
    compared with the database). Raises PeerFailed."""
    url = file_url(base_url, vdisk, file_name) + "/chunks"
    with _answer(client, url, {}) as response:
        if response.status_code != 200:
            raise _refusal(response, "the chunk list")
        body = bytearray()
        for block in response.iter_raw(RAW_BLOCK):
            body += block
            if len(body) > MAX_LIST_BYTES:
                raise PeerFailed("sent a chunk list larger than any file's")
    try:
        return ChunkList.from_dict(json.loads(body))
    except ValueError as exc:
        raise PeerFailed("sent a chunk list that is not JSON") from exc
    except BadChunkList as exc:
        raise PeerFailed(str(exc)) from exc


@contextlib.contextmanager
def get_range(
    client: httpx.Client, base_url: str, vdisk: str, file_name: str, start: int, end: int, size: int
) -> Iterator[Iterator[bytes]]:
    """The bytes START..END-1 of FILE_NAME (SIZE bytes long) of vDisk VDISK,
    as blocks while they arrive; closing the block leaves the connection.
    Never more than END - START bytes; fewer if the peer stops early (the
    caller tells). Raises PeerFailed (refused, another range, no answer,
    connection lost), also while the blocks are read.
    """
    url = file_url(base_url, vdisk, file_name)
    last = end - 1
    with _answer(client, url, {"Range": f"bytes={start}-{last}"}) as response:
        if response.status_code == 200:
            raise PeerFailed(f"answered the whole file (200) to bytes {start}-{last}")
        if response.status_code != 206:
            raise _refusal(response, f"bytes {start}-{last}")
        if response.headers.get("content-range") != f"bytes {start}-{last}/{size}":
            raise PeerFailed(
                f"answered another range ({response.headers.get('content-range')!r}) "
                f"to bytes {start}-{last}"
            )
        yield _capped(response, end - start)


def _capped(response: httpx.Response, limit: int) -> Iterator[bytes]:
    got = 0
    for block in response.iter_raw():  # as read off the socket: no re-chunking copies
        got += len(block)
        if got > limit:
            raise PeerFailed(f"sent more than the {limit} bytes asked for")
        yield block
