"""The payload of one NBD WRITE while it arrives.

Job: hold what came of a payload, piece by piece, and hand it out whole
once complete, so memory follows the bytes received, never the length a
request header announces.
Rules: no state beyond one payload, no I/O. A piece that is an immutable
bytes object of the caller is kept by reference; a piece of a buffer the
caller or the machine reuses is copied. Pieces under 4 KiB are gathered
into one bytearray (a client sending a byte at a time costs a byte each,
not an object each). The whole payload is joined once, at the end: one
copy of what came in pieces, none when it came in one.
"""

from __future__ import annotations

from vdfarm.nbd.errors import LocalProtocolError

SMALL_PIECE = 4096


class Payload:
    """`length` bytes to come; `keep=False` reads and drops them (the
    payload of a request that will be refused)."""

    __slots__ = ("_pieces", "held", "remaining")

    def __init__(self, length: int, keep: bool = True) -> None:
        self._pieces: list[bytes | bytearray | memoryview] | None = [] if keep else None
        self.held = 0  # bytes held so far
        self.remaining = length  # bytes still to come

    def take(self, source: bytes | bytearray, start: int, owned: bool) -> int:
        """Take up to the rest of the payload from source[start:]; return
        the number of bytes taken. `owned`: `source` is a bytes object
        nobody changes, which may be kept by reference."""
        take = min(len(source) - start, self.remaining)
        pieces = self._pieces
        if pieces is not None and take:
            if take < SMALL_PIECE:
                last = pieces[-1] if pieces else None
                if type(last) is bytearray:
                    last += memoryview(source)[start : start + take]
                else:
                    pieces.append(bytearray(memoryview(source)[start : start + take]))
            elif owned:
                whole = start == 0 and take == len(source)
                pieces.append(source if whole else memoryview(source)[start : start + take])
            else:
                pieces.append(bytes(memoryview(source)[start : start + take]))
            self.held += take
        self.remaining -= take
        return take

    def data(self) -> bytes | memoryview:
        """The whole payload.

        Raises LocalProtocolError if some of it has not come yet or it was
        being dropped.
        """
        pieces = self._pieces
        if self.remaining or pieces is None:
            raise LocalProtocolError("the payload is incomplete or was dropped")
        if len(pieces) == 1:
            piece = pieces[0]
            return memoryview(piece) if isinstance(piece, bytearray) else piece
        return b"".join(pieces)
