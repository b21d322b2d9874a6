"""The root of the server machine: the state every phase shares, and its moves.

Job: hold what the handshake and the transmission both read or write (the
state, the receive buffer and its read position, end of stream, the bytes
queued for `data_to_send`, the failure, the WRITE payload still arriving)
and the moves on it: a table transition, a protocol failure, running out of
bytes at a message boundary. Also `NEED_DATA` and the event types.

`ServerConnection` (vdfarm.nbd.server) is built as one chain of classes,
each adding one job, its methods inherited (no call goes through another
object):  MachineCore (here) → Transmission (vdfarm.nbd.transmission) →
Handshake (vdfarm.nbd.handshake) → ServerConnection. The handshake sits
above the transmission because it ends by setting up what the transmission
checks.

Rules:
- Each attribute is declared once, in `__slots__` of the class that owns it
  (shared ones here); no class in the chain has an instance dict. Values are
  set by the ServerConnection constructor only.
- No I/O. States move only through `vdfarm.nbd.states.transition`; an
  illegal move raises LocalProtocolError and changes nothing.
- A client breaking the protocol goes through `_break` / `_fail`: ERROR,
  nothing held any more, RemoteProtocolError (now or on the next call).
"""

from __future__ import annotations

from typing import NoReturn, TypeAlias

from vdfarm.nbd.errors import RemoteProtocolError
from vdfarm.nbd.events import (
    BadRequest,
    Disconnect,
    ExportRequest,
    ListRequest,
    Request,
    StartTLS,
)
from vdfarm.nbd.payload import Payload
from vdfarm.nbd.states import State, can, transition

__all__ = [
    "NEED_DATA",
    "HandshakeEvent",
    "MachineCore",
    "NextEvent",
    "TransmissionEvent",
]


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()
"""next_event() result: nothing complete in the buffer; feed more bytes."""

# What next_event() returns, by phase.
HandshakeEvent: TypeAlias = ExportRequest | ListRequest | StartTLS | Disconnect | _NeedData
TransmissionEvent: TypeAlias = Request | BadRequest | Disconnect | _NeedData
NextEvent: TypeAlias = HandshakeEvent | TransmissionEvent


class MachineCore:
    """State shared by every phase of a ServerConnection, and its moves."""

    # Slots: attribute access stays fast on the hot path whatever their
    # number (an instance dict past 30 keys loses CPython's shared-key fast
    # path), and a connection costs less memory.
    __slots__ = (
        "_state",
        "_buf",
        "_pos",
        "_eof",
        "_clean_close",
        "_outgoing",
        "_error",
        "_transmission_flags",
        "_replies_allowed",
        "_pending_write",
    )

    _state: State
    _buf: bytearray  # received, not yet parsed from _pos on
    _pos: int
    _eof: bool
    _clean_close: bool  # False once the client vanished without DISC/ABORT
    _outgoing: bytearray  # the machine's own answers, for data_to_send()
    _error: str | None
    _transmission_flags: int | None  # set once GO/EXPORT_NAME succeeded
    _replies_allowed: bool
    # a WRITE whose payload is still arriving, and that payload
    _pending_write: tuple[Request | BadRequest, Payload] | None

    def data_to_send(self) -> bytes:
        """Bytes the machine produced by itself since the last call."""
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    def _set_state(self, trigger: object) -> None:
        self._state = transition(self._state, trigger)
        self._replies_allowed = self._transmission_flags is not None and can(self._state, "reply")

    def _break(self, message: str) -> None:
        """Record a protocol violation: ERROR, and nothing held any more."""
        self._error = message
        self._set_state("error")
        self._buf.clear()
        self._pos = 0
        self._pending_write = None

    def _fail(self, message: str) -> NoReturn:
        self._break(message)
        raise RemoteProtocolError(message)

    def _raise_if_failed(self) -> None:
        if self._state is State.ERROR:
            raise RemoteProtocolError(f"connection already failed: {self._error}")

    def _at_boundary_eof(self, what: str) -> _NeedData | Disconnect:
        """Out of bytes where a `what` would start: NEED_DATA before end of
        stream; at end of stream Disconnect, or a protocol error if part of
        a message was received."""
        if not self._eof:
            return NEED_DATA
        if self._pos < len(self._buf):
            self._fail(f"client disconnected mid-{what}")
        self._clean_close = False
        self._set_state(Disconnect)
        return Disconnect(clean=False)
