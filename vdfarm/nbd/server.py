"""The server side of the NBD protocol as a sans-IO state machine (h11 style).

Job: turn the client's bytes into events (`receive_data` + `next_event`) and
the application's answers into bytes (`accept_export`, `reply_ok`, ...).
`ServerConnection` is put together from parts, one module each, each over
the last (methods inherited, so no call goes through another object):
- machine.MachineCore: the state every phase shares (state, receive
  buffer, failure) and its moves; `NEED_DATA` and the event types.
- transmission.Transmission: requests in, replies out (the hot path).
- handshake.Handshake: option haggling, STARTTLS, meta contexts, the
  export answers; it ends by setting up what the transmission checks.
This module has the constructor (limits, initial state), the read-only
views, and the entry points the bytes go through: `start`,
`receive_data`, `next_event` (which reads a valid READ inline).

Rules (each part states its own too):
- No I/O of any kind. The caller moves bytes; the machine only parses and
  packs them. States and legal moves are the tables of `vdfarm.nbd.states`.
- The client breaking the protocol raises RemoteProtocolError (drop the
  connection; every later next_event raises it again); the application
  asking for something illegal raises LocalProtocolError and changes nothing.
- Limits, each a constructor parameter: options per handshake, bytes per
  option, unparsed bytes held before transmission, READ/WRITE payload. A
  client past one breaks the protocol (RemoteProtocolError), except an
  over-large READ/WRITE, which gets an NBD error as the spec asks.
- Memory follows what was received: `buffered_bytes` and
  `requests_in_flight` let the I/O layer stop reading or parsing past its
  own bounds. The receive buffer is a bytearray compacted once per
  `receive_data`; a WRITE payload streaming in bypasses it.
"""

from __future__ import annotations

from vdfarm.nbd import constants as c
from vdfarm.nbd import wire
from vdfarm.nbd.errors import LocalProtocolError, RemoteProtocolError
from vdfarm.nbd.events import BadRequest as BadRequest
from vdfarm.nbd.events import Disconnect, Request
from vdfarm.nbd.events import ExportRequest as ExportRequest
from vdfarm.nbd.events import ListRequest as ListRequest
from vdfarm.nbd.events import StartTLS as StartTLS
from vdfarm.nbd.export import ExportInfo
from vdfarm.nbd.export import advertised as advertised
from vdfarm.nbd.handshake import Handshake
from vdfarm.nbd.machine import NEED_DATA, NextEvent
from vdfarm.nbd.machine import HandshakeEvent as HandshakeEvent
from vdfarm.nbd.machine import TransmissionEvent as TransmissionEvent
from vdfarm.nbd.machine import _NeedData as _NeedData
from vdfarm.nbd.payload import Payload as Payload
from vdfarm.nbd.states import State
from vdfarm.nbd.states import can as can
from vdfarm.nbd.states import transition as transition
from vdfarm.nbd.tls import Gate as Gate
from vdfarm.nbd.tls import TLSPolicy
from vdfarm.nbd.tls import gate as gate

__all__ = ["NEED_DATA", "ExportInfo", "ServerConnection", "TLSPolicy"]
# The names imported "as" themselves above are not used here: they stay
# importable from this module, as they were before it was split in parts.

_HEADER = wire.REQUEST_HEADER.size
_unpack_request = wire.REQUEST_HEADER.unpack_from
_U64_LIMIT = wire.U64_LIMIT
_TRANSMISSION = State.TRANSMISSION
_REQUEST_MAGIC = c.REQUEST_MAGIC


class ServerConnection(Handshake):
    """One NBD connection, server side. See the module docstring.

    Parameters (all limits per connection):
    - `max_payload`: largest READ/WRITE accepted and advertised (32 MiB).
    - `tls`: a TLSPolicy or its name, "off" (default), "optional", "require".
    - `max_options`: options one handshake may send (64); the next one is a
      RemoteProtocolError.
    - `max_option_length`: bytes of one option's data (64 KiB), refused on
      the option header before any of it is held.
    - `max_handshake_buffer`: unparsed bytes held before transmission
      (256 KiB), e.g. while the application looks an export up; past it
      the connection fails. At least max_option_length + 16.

    Raises ValueError for a limit out of range or an unknown policy.
    """

    # Every attribute is declared in __slots__ of the part that owns it
    # (MachineCore, Transmission, Handshake); none here, so no instance dict.
    __slots__ = ()

    def __init__(
        self,
        max_payload: int = c.MAX_PAYLOAD,
        *,
        tls: TLSPolicy | str = TLSPolicy.OFF,
        max_options: int = c.MAX_OPTIONS,
        max_option_length: int = c.MAX_OPTION_LENGTH,
        max_handshake_buffer: int = c.MAX_HANDSHAKE_BUFFER,
    ) -> None:
        if not 1 <= max_payload <= 0xFFFFFFFF:
            raise ValueError(f"max_payload must be in 1..2**32-1, got {max_payload}")
        if max_options < 1:
            raise ValueError(f"max_options must be at least 1, got {max_options}")
        if not 0 <= max_option_length <= 0xFFFFFFFF:
            raise ValueError(f"max_option_length must be in 0..2**32-1, got {max_option_length}")
        if max_handshake_buffer < max_option_length + wire.OPTION_HEADER.size:
            raise ValueError(
                f"max_handshake_buffer {max_handshake_buffer} cannot hold one option "
                f"of max_option_length {max_option_length}"
            )
        # shared (MachineCore)
        self._state = State.START
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._clean_close = True
        self._outgoing = bytearray()
        self._error = None
        self._transmission_flags = None
        self._replies_allowed = False
        self._pending_write = None
        # transmission (Transmission)
        self._max_payload = max_payload
        self._structured = False
        self._meta_context_id = None
        self._allowed = {}
        self._read_bad_flags = 0xFFFF
        self._read_only = False
        self._align_mask = 0
        self._pending_status = {}
        self._in_flight = 0
        # handshake (Handshake)
        self._tls_policy = TLSPolicy(tls)
        self._tls_active = False
        self._max_options = max_options
        self._max_option_length = max_option_length
        self._max_handshake_buffer = max_handshake_buffer
        self._options_read = 0
        self._no_zeroes = False
        self._meta_export = None
        self._pending_export = None
        self._export_name = None

    # -- read-only views ------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def structured_replies(self) -> bool:
        return self._structured

    @property
    def transmission_flags(self) -> int | None:
        """Flags sent to the client (HAS_FLAGS included), once GO/EXPORT_NAME succeeded."""
        return self._transmission_flags

    @property
    def export_name(self) -> str | None:
        return self._export_name

    @property
    def meta_context_id(self) -> int | None:
        """Context id of base:allocation if negotiated for the export in use."""
        return self._meta_context_id

    @property
    def max_payload(self) -> int:
        """Largest READ/WRITE accepted (the advertised maximum once accepted)."""
        return self._max_payload

    @property
    def tls_policy(self) -> TLSPolicy:
        return self._tls_policy

    @property
    def tls_active(self) -> bool:
        """True once `tls_started()` was called: every byte since the
        STARTTLS ACK went over TLS."""
        return self._tls_active

    @property
    def buffered_bytes(self) -> int:
        """Bytes received and not yet handed out in an event: the unparsed
        buffer plus what arrived of a WRITE payload still incomplete. The
        I/O layer should stop reading while this is above its bound."""
        pending = self._pending_write
        held = pending[1].held if pending is not None else 0
        return len(self._buf) - self._pos + held

    @property
    def requests_in_flight(self) -> int:
        """Request and BadRequest events returned by next_event() and not
        yet answered by a reply_* call (each counts one final reply; a reply
        with none in flight leaves it at 0). The I/O layer should stop
        calling next_event() while this is above its bound."""
        return self._in_flight

    # -- bytes in, bytes out --------------------------------------------------

    def start(self) -> bytes:
        """The server greeting. Raises LocalProtocolError if already started."""
        self._set_state("start")
        return wire.GREETING.pack(c.NBDMAGIC, c.IHAVEOPT, c.FLAG_FIXED_NEWSTYLE | c.FLAG_NO_ZEROES)

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the client; b"" means end of stream.

        A bytes object may be kept by reference (as part of a WRITE
        payload); any other buffer is copied. Protocol violations found
        here (bytes before the TLS handshake, the handshake buffer limit)
        move the machine to ERROR, drop what it holds, and are raised by the
        next call of next_event(), tls_started() or an answer method.

        Raises LocalProtocolError for data after end of stream.
        """
        if not data:
            self._eof = True
            return
        if self._eof:
            raise LocalProtocolError("receive_data after end of stream")
        state = self._state
        if state is not _TRANSMISSION and (state is State.CLOSED or state is State.ERROR):
            return  # the session is over; what follows is not read
        buf = self._buf
        if self._pos:
            del buf[: self._pos]  # O(1) at the front of a bytearray
            self._pos = 0
        if self._pending_write is not None and not buf:  # payload streaming in
            taken = self._pending_write[1].take(data, 0, type(data) is bytes)
            if taken < len(data):
                buf += memoryview(data)[taken:]
            return
        buf += data
        if state is not _TRANSMISSION:  # handshake: nothing may pile up
            if state is State.TLS_HANDSHAKE:
                self._break("client sent data after NBD_OPT_STARTTLS before the TLS handshake")
            elif len(buf) > self._max_handshake_buffer:
                self._break(
                    f"client sent over {self._max_handshake_buffer} bytes "
                    "the handshake has not read"
                )

    def next_event(self) -> NextEvent:
        """The next event, or NEED_DATA. Parses only when called: an I/O
        layer that stops calling it stops the work (and the replies owed).

        Raises RemoteProtocolError if the client broke the protocol, and
        LocalProtocolError if called before start(), while an
        ExportRequest / ListRequest is still unanswered, or between
        StartTLS and tls_started(). In CLOSED it returns Disconnect() again.
        """
        state = self._state
        if state is _TRANSMISSION:
            if self._pending_write is not None:
                return self._continue_body(*self._pending_write)
            buf, pos = self._buf, self._pos
            if len(buf) - pos < _HEADER:
                return self._at_boundary_eof("request")
            magic, flags, cmd, cookie, offset, length = _unpack_request(buf, pos)
            if (
                cmd == 0
                and magic == _REQUEST_MAGIC
                and not flags & self._read_bad_flags
                and 0 < length <= self._max_payload
                and not (offset | length) & self._align_mask
                and offset + length <= _U64_LIMIT
            ):
                self._pos = pos + _HEADER  # the hot path, inline: a valid READ
                self._in_flight += 1
                return Request(cookie, 0, flags, offset, length, None)
            return self._request(pos, magic, flags, cmd, cookie, offset, length)
        if state is State.OPTIONS:
            return self._next_option()
        if state is State.CLIENT_FLAGS:
            return self._read_client_flags()
        if state is State.CLOSED:
            return Disconnect(clean=self._clean_close)
        if state is State.ERROR:
            raise RemoteProtocolError(f"connection already failed: {self._error}")
        raise LocalProtocolError(
            f"next_event() in state {state.name}: call start(), answer the pending "
            "request or call tls_started() first"
        )
