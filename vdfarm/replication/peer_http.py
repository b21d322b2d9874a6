"""The replication routes of one peer: a file's chunk list (over httpx),
and what the range reader (`range_get`) shares with it. Every way a peer
can fail is a PeerFailed with one line saying why.

Rules:
- Sync httpx, HTTP/1.1, `Authorization: Bearer <token>`, no compression
  (`Accept-Encoding: identity`, raw bytes read), so what arrives is what
  the peer sent and nothing expands in memory. With https the peer's
  certificate is checked against CA_FILE only, or the system's CAs.
- Timeouts: connecting, and every read, give up after READ_TIMEOUT seconds
  without a byte ("sent nothing for 10 s").
- A peer is untrusted: the chunk list's body is capped (MAX_LIST_BYTES)
  and checked (`ChunkList.from_dict`). A refusal's `detail` is shown in
  one line (`refusal_detail`), at most MAX_ERROR_BYTES of it read.
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
FRAMES_HEADER = "X-Vdfarm-Frames"  # frames asked for, and given (`range_get`)
FRAMES_ZLIB = "zlib"
RAW_BLOCK = 256 * 1024
MAX_LIST_BYTES = MAX_CHUNKS * 150 + 64 * 1024  # a hash and a prefix hash per chunk, an index
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


def make_client(token: str, context: ssl.SSLContext, read_timeout: float) -> httpx.Client:
    """An httpx client for peers' chunk lists with TOKEN, checking https
    peers with CONTEXT (`tls_context`)."""
    return httpx.Client(
        headers={"Authorization": f"Bearer {token}", "Accept-Encoding": "identity"},
        timeout=httpx.Timeout(read_timeout),
        verify=context,
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


def refusal_detail(body: bytes, reason: str) -> str:
    """The one line a refusal's BODY says (its JSON `detail`, or its start;
    REASON if empty)."""
    try:
        detail = json.loads(body).get("detail")
    except (ValueError, AttributeError):
        detail = None
    if not isinstance(detail, str):
        detail = body[:200].decode("utf-8", "replace")
    return " ".join(detail.split()) or reason


def _refusal(response: httpx.Response, what: str) -> PeerFailed:
    body = b""
    with contextlib.suppress(httpx.HTTPError):
        for block in response.iter_raw(MAX_ERROR_BYTES):
            body += block
            if len(body) >= MAX_ERROR_BYTES:
                break
    detail = refusal_detail(body, response.reason_phrase)
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
