"""The HTTP `Range` header of a download (RFC 9110 §14): one byte range.

Rules:
- Accepted: `bytes=A-B`, `bytes=A-` and `bytes=-N` (the last N bytes); B
  past the end is cut to the end. Anything else — another unit, several
  ranges, A > B, A at or past the end, an empty file, a range of nothing —
  is RangeNotSatisfiable (416 with `Content-Range: bytes */SIZE`).
- Numbers are plain digits (at most MAX_DIGITS): no signs, no spaces inside.
- Pure: strings and ints in, a (start, end) pair out (END exclusive), or
  the whole answer of a download (`RangeAnswer`: status and headers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_DIGITS = 19
_NUMBER = rf"([0-9]{{0,{MAX_DIGITS}}})"
_RANGE_RE = re.compile(rf"bytes={_NUMBER}-{_NUMBER}")


class RangeNotSatisfiable(ValueError):
    """A Range header this server will not answer with part of the file."""


def parse_range(header: str, size: int) -> tuple[int, int]:
    """The bytes START..END-1 that HEADER asks for of a file of SIZE bytes.

    Raises RangeNotSatisfiable.
    """
    found = _RANGE_RE.fullmatch(header.strip())
    if found is None:
        raise RangeNotSatisfiable(
            f"unsupported Range {header[:80]!r}: ask for one range, bytes=START-END or bytes=START-"
        )
    first, last = found.groups()
    if not first:
        if not last or int(last) == 0 or size == 0:
            raise RangeNotSatisfiable(f"Range {header[:80]!r} asks for nothing of {size} bytes")
        return max(0, size - int(last)), size
    start = int(first)
    end = size if not last else min(int(last) + 1, size)
    if last and int(last) < start:
        raise RangeNotSatisfiable(f"Range {header[:80]!r} ends before it starts")
    if start >= size:
        raise RangeNotSatisfiable(f"Range {header[:80]!r} starts past the end ({size} bytes)")
    return start, end


def content_range(start: int, end: int, size: int) -> str:
    """The Content-Range value of bytes START..END-1 of SIZE."""
    return f"bytes {start}-{end - 1}/{size}"


def unsatisfied_range(size: int) -> str:
    """The Content-Range value of a 416 answer about a file of SIZE bytes."""
    return f"bytes */{size}"


@dataclass(frozen=True)
class RangeAnswer:
    """What a GET of a SIZE-byte file answers: bytes START..END-1, with
    STATUS (200: the whole file, 206: a range) and HEADERS."""

    start: int
    end: int
    status: int
    headers: dict[str, str]


def range_answer(header: str | None, size: int) -> RangeAnswer:
    """The answer to a GET of a file of SIZE bytes with the Range HEADER
    (None: no Range). Raises RangeNotSatisfiable."""
    headers = {"Accept-Ranges": "bytes"}
    if header is None:
        start, end, status = 0, size, 200
    else:
        start, end = parse_range(header, size)
        status = 206
        headers["Content-Range"] = content_range(start, end, size)
    headers["Content-Length"] = str(end - start)
    return RangeAnswer(start, end, status, headers)


def refusal_headers(size: int) -> dict[str, str]:
    """The headers of a 416 answer about a file of SIZE bytes."""
    return {"Accept-Ranges": "bytes", "Content-Range": unsatisfied_range(size)}
