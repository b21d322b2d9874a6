"""The API's limits (one dataclass of defaults) and the request-body cap.

Rules:
- `BodyLimit` is a plain ASGI middleware around the whole app: a request
  whose Content-Length is over the cap is answered 413 before the app runs
  (nothing of the body is read); a body without a length (chunked) is
  counted as it is received and the request fails with 413 as soon as the
  count passes the cap, so at most the cap (plus one chunk) is ever held.
  The answer is `{"detail": "<one line>"}` with `Connection: close`.
- Every limit has a default here; `create_app` / `ApiServer` take an
  `ApiLimits` to change them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MIB = 1024 * 1024


@dataclass(frozen=True)
class ApiLimits:
    """Limits of one API server (per server, in memory)."""

    max_body_bytes: int = 1 * MIB
    login_rate_per_s: float = 20.0  # logins per second per source address
    login_burst: int = 40
    reservations_per_source: int = 32  # devices reserved by one anonymous source ...
    reservation_window_s: float = 30.0  # ... within this window (login's reservation lifetime)
    boot_rate_per_s: float = 20.0  # boot path requests (/boot/...) per second per source
    boot_burst: int = 40

    def __post_init__(self) -> None:
        if self.max_body_bytes < 0:
            raise ValueError("max_body_bytes must be >= 0")
        if self.login_rate_per_s <= 0 or self.login_burst < 1:
            raise ValueError("the login rate needs login_rate_per_s > 0 and login_burst >= 1")
        if self.boot_rate_per_s <= 0 or self.boot_burst < 1:
            raise ValueError("the boot rate needs boot_rate_per_s > 0 and boot_burst >= 1")
        if self.reservations_per_source < 1 or self.reservation_window_s <= 0:
            raise ValueError(
                "the reservation cap needs reservations_per_source >= 1 and "
                "reservation_window_s > 0"
            )


def too_large_message(limit: int) -> str:
    return f"request body too large: at most {limit} bytes"


class BodyTooLarge(HTTPException):
    """A request body passed the cap (answered 413 by the app's handlers)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large_message(limit), headers={"Connection": "close"})


def _content_length(scope: Scope) -> int | None | str:
    """The Content-Length header: a number, None (absent) or 'bad'."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isascii() and text.isdigit() else "bad"
    return None


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Refuse request bodies over MAX_BYTES (see the module rules)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length == "bad":
            await _answer(send, 400, "bad Content-Length header")
            return
        if isinstance(length, int) and length > self.max_bytes:
            await _answer(send, 413, too_large_message(self.max_bytes))
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except BodyTooLarge:
            if started:
                raise
            await _answer(send, 413, too_large_message(self.max_bytes))
