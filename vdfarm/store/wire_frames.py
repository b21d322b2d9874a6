"""Compressed frames on the replication wire: how a sender packs a range of
a file and a receiver unpacks it, every size checked and memory bounded.

Rules:
- A framed body is a run of records: a 9-byte header (kind: RAW or ZLIB;
  the decoded length; the payload length; big-endian) and the payload.
  The records decode, in order, to exactly the bytes of the range asked for.
- The sender (`pack`) cuts a block into FRAME-sized frames (aligned to the
  block's start) and packs a frame with zlib (level 1) only when its probe
  says it will pay (`looks_packable`: at least a quarter of its first PROBE
  bytes are zero: qcow2 tables, padding, sparse metadata) and the result
  is at most 7/8 of the frame. Every other frame goes as it is, runs of
  them as one RAW record: random data costs a header, never compression
  CPU. Moderately compressible data (text, code) is not packed either: on
  a fast link zlib would cost more time than the bytes it saves.
- The receiver (`Unframer`) trusts nothing: an unknown kind, a record that
  decodes to nothing, or to less than MIN_RECORD bytes but for the last,
  or past the bytes asked for, a ZLIB record that decodes to more than
  MAX_PACKED bytes or whose payload is not smaller than what it decodes to,
  a payload that does not inflate to exactly its decoded length (garbage,
  a bomb, trailing bytes): each is BadFrame. It holds at most one ZLIB
  payload (< MAX_PACKED bytes) and inflates at most MAX_PACKED bytes of
  it, so a bomb costs its refusal and nothing more; headers being at
  least MIN_RECORD decoded bytes apart, the wire cannot outgrow the range
  by more than `max_wire_bytes` says.
- Pure: bytes in, bytes out; no I/O.
"""

from __future__ import annotations

import struct
import zlib

from vdfarm.store.errors import BadFrame

FRAME = 64 * 1024
PROBE = 1024
PACK_LEVEL = 1
MAX_PACKED = 1024 * 1024
MIN_RECORD = 4096
HEADER = struct.Struct(">BII")
RAW, ZLIB = 0, 1


def looks_packable(block: bytes, start: int = 0) -> bool:
    """True if the frame of BLOCK at START is worth packing: at least a
    quarter of its first PROBE bytes are zero."""
    end = min(start + PROBE, len(block))
    return end > start and block.count(0, start, end) * 4 >= end - start


def has_packable_frame(block: bytes) -> bool:
    """True if some FRAME of BLOCK (frames aligned to its start) looks packable."""
    return any(looks_packable(block, start) for start in range(0, len(block), FRAME))


def pack(block: bytes) -> bytes:
    """BLOCK as framed records: the frames that pay packed with zlib, the
    others as they are (runs of them as one RAW record)."""
    pieces: list[bytes | memoryview] = []
    view = memoryview(block)
    raw_from: int | None = None
    for start in range(0, len(block), FRAME):
        end = min(start + FRAME, len(block))
        packed = zlib.compress(view[start:end], PACK_LEVEL) if looks_packable(block, start) else b""
        if not packed or len(packed) * 8 > (end - start) * 7:
            if raw_from is None:
                raw_from = start
            continue
        if raw_from is not None:
            pieces += [HEADER.pack(RAW, start - raw_from, start - raw_from), view[raw_from:start]]
            raw_from = None
        pieces += [HEADER.pack(ZLIB, end - start, len(packed)), packed]
    if raw_from is not None:
        pieces += [HEADER.pack(RAW, len(block) - raw_from, len(block) - raw_from), view[raw_from:]]
    return b"".join(pieces)


def max_wire_bytes(expected: int) -> int:
    """The most bytes a framed body of EXPECTED decoded bytes may take."""
    return expected + HEADER.size * (expected // MIN_RECORD + 1)


class Unframer:
    """Unpacks a framed body that must decode to EXPECTED bytes; see the
    module's rules. `feed` the bytes as they arrive; `complete` says whether
    every byte asked for came and the last record ended."""

    def __init__(self, expected: int) -> None:
        self.remaining = expected  # decoded bytes not yet announced by a header
        self._head = bytearray()
        self._kind: int | None = None
        self._decoded = 0
        self._payload_left = 0
        self._payload = bytearray()

    @property
    def complete(self) -> bool:
        return self.remaining == 0 and self._kind is None and not self._head

    def feed(self, data: bytes | memoryview) -> list[bytes | memoryview]:
        """The decoded bytes DATA completes, in order (RAW pieces are views
        of DATA: use them before the next feed). Raises BadFrame."""
        out: list[bytes | memoryview] = []
        view = memoryview(data)
        at = 0
        while at < len(view):
            if self._kind is None:
                take = min(HEADER.size - len(self._head), len(view) - at)
                self._head += view[at : at + take]
                at += take
                if len(self._head) == HEADER.size:
                    self._begin(*HEADER.unpack(self._head))
                    self._head.clear()
                continue
            take = min(self._payload_left, len(view) - at)
            piece = view[at : at + take]
            at += take
            self._payload_left -= take
            if self._kind == RAW:
                out.append(piece)
            else:
                self._payload += piece
                if self._payload_left == 0:
                    out.append(self._inflate())
            if self._payload_left == 0:
                self._kind = None
        return out

    def _begin(self, kind: int, decoded: int, payload: int) -> None:
        if kind not in (RAW, ZLIB):
            raise BadFrame(f"a frame of unknown kind {kind}")
        if decoded == 0 or decoded > self.remaining:
            raise BadFrame(f"a frame of {decoded} bytes where {self.remaining} were left to send")
        if decoded < MIN_RECORD and decoded != self.remaining:
            raise BadFrame(f"a frame of {decoded} bytes before the last")
        if kind == RAW and payload != decoded:
            raise BadFrame(f"a raw frame of {decoded} bytes that says it carries {payload}")
        if kind == ZLIB and not (0 < payload < decoded <= MAX_PACKED):
            raise BadFrame(
                f"a compressed frame of {payload} bytes for {decoded} "
                f"(at most {MAX_PACKED}, and smaller packed)"
            )
        self.remaining -= decoded
        self._kind, self._decoded, self._payload_left = kind, decoded, payload

    def _inflate(self) -> bytes:
        inflater = zlib.decompressobj()
        try:
            out = inflater.decompress(self._payload, self._decoded)
        except zlib.error as exc:
            raise BadFrame(f"a compressed frame that does not inflate ({exc})") from exc
        finally:
            self._payload.clear()
        if (
            len(out) != self._decoded
            or not inflater.eof
            or inflater.unconsumed_tail
            or inflater.unused_data
        ):
            raise BadFrame(f"a compressed frame that does not inflate to its {self._decoded} bytes")
        return out
