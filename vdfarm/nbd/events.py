"""Events the NBD server machine hands to its application.

Rules: an event is plain data; it knows nothing of sockets or of the machine
that made it. Every event class has `__slots__` (the transmission events are
made once per request, on the hot path) and compares by value, so tests can
write the event they expect.

Handshake: `ExportRequest` and `ListRequest` must be answered by the
application (`accept_export` / `reject_export`, `send_export_list`).
`StartTLS` must be followed by the TLS handshake and `tls_started()`.
Transmission: `Request` must be executed and answered; `BadRequest` must be
answered with an error reply and not executed. `Disconnect` ends both phases.
"""

from __future__ import annotations


class Event:
    """Base of all events: value equality and a readable repr from slots."""

    __slots__: tuple[str, ...] = ()

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({fields})"


class ExportRequest(Event):
    """The client asks for an export: NBD_OPT_INFO (go=False), NBD_OPT_GO
    (go=True) or NBD_OPT_EXPORT_NAME (go=True, legacy=True: no error reply is
    possible, a rejection closes the connection). `info_requests` holds the
    NBD_INFO_* codes the client asked for, as sent (unknown ones included)."""

    __slots__ = ("name", "go", "legacy", "info_requests")

    def __init__(
        self, name: str, go: bool, legacy: bool = False, info_requests: tuple[int, ...] = ()
    ) -> None:
        self.name = name
        self.go = go
        self.legacy = legacy
        self.info_requests = info_requests


class ListRequest(Event):
    """The client asks for the list of exports (NBD_OPT_LIST)."""

    __slots__ = ()


class Request(Event):
    """A valid transmission request. `cookie` is the client's 64-bit handle,
    echoed in the reply. `data` is the payload of a WRITE (bytes, or a
    memoryview over a buffer nobody changes any more); None otherwise."""

    __slots__ = ("cookie", "command", "flags", "offset", "length", "data")

    def __init__(
        self,
        cookie: int,
        command: int,
        flags: int,
        offset: int,
        length: int,
        data: bytes | memoryview | None = None,
    ) -> None:
        self.cookie = cookie
        self.command = command
        self.flags = flags
        self.offset = offset
        self.length = length
        self.data = data

    def _values(self) -> tuple[object, ...]:
        data = None if self.data is None else bytes(self.data)
        return (self.cookie, self.command, self.flags, self.offset, self.length, data)


class BadRequest(Event):
    """A request that breaks the protocol in a way the client can be told
    about: answer `reply_error(cookie, error, message)`, do not execute it.
    `error` is an NBD error value (constants NBD_E*)."""

    __slots__ = ("cookie", "error", "message")

    def __init__(self, cookie: int, error: int, message: str) -> None:
        self.cookie = cookie
        self.error = error
        self.message = message


class StartTLS(Event):
    """NBD_OPT_STARTTLS was accepted; its NBD_REP_ACK is queued in
    `data_to_send()`. The I/O layer must stop reading plaintext, send those
    bytes, run the TLS handshake as the server on the same socket, then call
    `tls_started()`; if the handshake fails it must close the connection
    (the ACK is out: there is no way back to plaintext)."""

    __slots__ = ()


class Disconnect(Event):
    """The client ended the session: NBD_OPT_ABORT, NBD_CMD_DISC, or an end
    of stream between two messages. The machine is CLOSED after it.

    `clean` is True when the client said goodbye (ABORT or DISC) and False
    for a bare end of stream: a server may keep state for a client that
    vanished without a word, expecting it back."""

    __slots__ = ("clean",)

    def __init__(self, clean: bool = True) -> None:
        self.clean = clean
