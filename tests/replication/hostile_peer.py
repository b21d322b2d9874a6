"""A small peer that serves one file's chunk list and ranges the way the
vdfarm API does, and misbehaves on purpose (threaded http.server, HTTP/1.1,
127.0.0.1 only).

Modes:
- good: answers like a vdfarm server.
- wrong-chunk: one flipped byte in chunk 1 of every range it sends.
- truncate: sends the full Content-Length, half the body, then closes.
- error-500: answers ranges with 500.
- hang: accepts a range request and sends nothing (until the test ends).
- stall: sends the headers and 100 KB of the body, then nothing.
- list-differs: its chunk list names another sha256 than the database's.
- lying-list: serves other bytes (chunk 1 changed) with a chunk list that
  matches them chunk by chunk but claims the database's whole sha256 (as
  an older vdfarm lists: no prefix hashes).
- lying-prefixes: the same with prefix hashes that match the changed bytes
  but for the last one, the database's sha256.
- bomb: answers a framed request with a compressed frame that inflates to
  far more than it says (BOMB_MIB MiB).
- older: lists and answers as an older vdfarm (no prefix hashes, no
  packable chunks, no frames).
- garbage: answers a framed request with a "compressed" frame of noise.
- frames-unasked: frames its answer to a request that did not ask.
- whole-file: ignores Range, answers 200 with all of the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.store.replica_helpers import list_of
from vdfarm.store.wire_frames import FRAME, HEADER, MAX_PACKED, ZLIB, pack

RANGE_RE = re.compile(r"bytes=(\d+)-(\d+)")


def _flip(data: bytes, at: int) -> bytes:
    spoiled = bytearray(data)
    spoiled[at] ^= 0xFF
    return bytes(spoiled)


BOMB_MIB = 256


def _bomb() -> bytes:
    """BOMB_MIB MiB of zeroes, packed (a few hundred KiB)."""
    packer = zlib.compressobj(9)
    zeroes = bytes(1 << 20)
    return b"".join(packer.compress(zeroes) for _ in range(BOMB_MIB)) + packer.flush()


def _bad_frames(mode: str, length: int, bomb: bytes) -> bytes:
    """A framed body for LENGTH bytes whose first frame is a bomb (said to
    inflate to MAX_PACKED bytes) or noise."""
    if mode == "bomb":
        return HEADER.pack(ZLIB, min(MAX_PACKED, length), len(bomb)) + bomb
    payload = os.urandom(FRAME // 2)
    return HEADER.pack(ZLIB, min(FRAME, length), len(payload)) + payload


class _QuietServer(ThreadingHTTPServer):
    """A receiver that hangs up on us is expected here: no traceback."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass


class HostilePeer:
    """Serves DATA (a file whose true sha256 is the database's) in MODE."""

    def __init__(self, data: bytes, chunk_size: int, mode: str = "good") -> None:
        self.mode = mode
        self.true_sha256 = hashlib.sha256(data).hexdigest()
        lying = mode in ("lying-list", "lying-prefixes")
        self.served = _flip(data, chunk_size + 10) if lying else data
        older = mode in ("lying-list", "older")
        listed = list_of(self.served, chunk_size, older=older).to_dict()
        if lying:
            listed["sha256"] = self.true_sha256
        if mode == "lying-prefixes":
            listed["prefixes"][-1] = self.true_sha256
        if mode == "list-differs":
            listed["sha256"] = listed["prefixes"][-1] = "f" * 64
        self.chunk_list = json.dumps(listed).encode()
        self.bomb = _bomb() if mode == "bomb" else b""
        self.chunk_size = chunk_size
        self.stop = threading.Event()
        self.sent = 0
        self.requests: list[str] = []
        peer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                peer.requests.append(f"{self.path} {self.headers.get('Range')}")
                peer.answer(self)

            def log_message(self, *args) -> None:
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> HostilePeer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def answer(self, request: BaseHTTPRequestHandler) -> None:
        if request.path.endswith("/chunks"):
            self._send(request, 200, self.chunk_list, "application/json")
            return
        found = RANGE_RE.fullmatch(request.headers.get("Range") or "")
        if found is None or self.mode == "whole-file":
            self._send(request, 200, self.served)
            return
        start, end = int(found[1]), int(found[2]) + 1
        body = self.served[start:end]
        if self.mode == "error-500":
            self._send(request, 500, b'{"detail": "the disk is on fire"}', "application/json")
            return
        if self.mode == "hang":
            self.stop.wait(60)
            return
        if self.mode == "wrong-chunk" and start <= self.chunk_size + 10 < end:
            body = _flip(body, self.chunk_size + 10 - start)
        headers = {"Content-Range": f"bytes {start}-{end - 1}/{len(self.served)}"}
        asked_frames = request.headers.get("X-Vdfarm-Frames") == "zlib"
        if self.mode in ("bomb", "garbage") and asked_frames:
            headers["X-Vdfarm-Frames"] = "zlib"
            self._send(
                request, 206, _bad_frames(self.mode, end - start, self.bomb), headers=headers
            )
            return
        if self.mode == "frames-unasked" and not asked_frames:
            headers["X-Vdfarm-Frames"] = "zlib"
            self._send(request, 206, pack(body), headers=headers)
            return
        if self.mode == "truncate":
            self._send(request, 206, body, headers=headers, cut=len(body) // 2)
            request.close_connection = True
            return
        if self.mode == "trickle":  # a kilobyte now and then, never silent for long
            request.send_response(206)
            request.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                request.send_header(name, value)
            request.end_headers()
            for at in range(0, len(body), 1024):
                if self.stop.wait(0.05):
                    return
                try:
                    request.wfile.write(body[at : at + 1024])
                    request.wfile.flush()
                except OSError:
                    return
                self.sent += len(body[at : at + 1024])
            return
        if self.mode == "stall":
            self._send(request, 206, body, headers=headers, cut=100_000)
            self.stop.wait(60)
            return
        self._send(request, 206, body, headers=headers)

    def _send(
        self,
        request: BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        content_type: str = "application/octet-stream",
        headers: dict[str, str] | None = None,
        cut: int | None = None,
    ) -> None:
        request.send_response(status)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            request.send_header(name, value)
        request.end_headers()
        sent = body if cut is None else body[:cut]
        try:
            request.wfile.write(sent)
            request.wfile.flush()
        except OSError:
            return
        self.sent += len(sent)
