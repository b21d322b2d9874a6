"""Untrusted protocol text made safe for one log line.

Job: `printable()` renders what a client sent (an export name, a message)
so that it cannot forge log lines or drive a terminal.
Rules: pure, never raises for any str or bytes. The result holds only
printable characters (no line breaks, no escape sequences, no bidi or other
format controls); each other character is written as a Python-style escape
(\\n, \\r, \\t, \\x1b, \\u202e, ...), bytes that are not UTF-8 as \\xNN, and a
backslash as \\\\, so the original can be told apart from any escape. The
result is cut to `limit` characters plus a marker that gives the full
length.
"""

from __future__ import annotations

_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape(ch: str) -> str:
    code = ord(ch)
    short = _SHORT.get(ch)
    if short is not None:
        return short
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str | bytes, limit: int = 256) -> str:
    """`text` as one safe log field of at most `limit` characters (plus a
    "...[N chars]" marker when it was cut; N counts the input). Bytes are
    read as UTF-8; invalid bytes show as \\xNN. Never raises."""
    if isinstance(text, bytes | bytearray | memoryview):
        text = bytes(text).decode("utf-8", "surrogateescape")
    if text.isprintable() and "\\" not in text and len(text) <= limit:
        return text  # the common case: a plain name, returned as it is
    out: list[str] = []
    size = 0
    for ch in text:
        piece = ch if ch.isprintable() and ch != "\\" else _escape(ch)
        if size + len(piece) > limit:
            out.append(f"...[{len(text)} chars]")
            break
        out.append(piece)
        size += len(piece)
    return "".join(out)
