"""The server side of the NBD protocol as a sans-IO state machine (h11 style).

Job: turn the client's bytes into events (`receive_data` + `next_event`) and
the application's answers into bytes (`accept_export`, `reply_ok`, ...).
Rules:
- No I/O of any kind. The caller moves bytes; the machine only parses and
  packs them. States and legal moves are the tables of `vdfarm.nbd.states`.
- The client breaking the protocol raises RemoteProtocolError (drop the
  connection; every later next_event raises it again); the application
  asking for something illegal raises LocalProtocolError and changes nothing.
- Options the machine answers alone (STRUCTURED_REPLY, META_CONTEXT,
  STARTTLS, unknown options...) go to `data_to_send()`. Answers the
  application gives (accept/reject/list) are returned preceded by any such
  bytes not taken yet, so the order on the wire is right either way.
- TLS follows the connection's `TLSPolicy` (the tables of `vdfarm.nbd.tls`).
  An accepted STARTTLS queues its ACK and emits `StartTLS`; the machine
  then reads nothing until `tls_started()`. Bytes the client sent after
  STARTTLS without waiting for the ACK break the protocol. What was
  negotiated in plaintext (structured replies, metadata contexts) is
  forgotten when TLS starts: a man in the middle may have sent it.
- Limits, each a constructor parameter: options per handshake, bytes per
  option, unparsed bytes held before transmission, READ/WRITE payload. A
  client past one breaks the protocol (RemoteProtocolError), except an
  over-large READ/WRITE, which gets an NBD error as the spec asks.
- Memory follows what was received, never what a header announces: a WRITE
  payload still arriving is held as the pieces that came (referenced, or
  copied once when they sit in the receive buffer) and joined once when
  complete (`vdfarm.nbd.payload`). `buffered_bytes` and
  `requests_in_flight` let the I/O layer stop reading or parsing past its
  own bounds.
- Transmission is the hot path: one `unpack_from` per request header, a
  bytearray receive buffer compacted once per `receive_data`, a WRITE that
  arrives whole copied once, nothing allocated but the event, an int kept
  for the requests in flight.
- Range checks against the export size belong to the block stack. The
  machine checks what the protocol itself defines (see
  `wire.request_error`); offset + length past 2**64 gets EINVAL.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from itertools import chain
from typing import NoReturn, TypeAlias

from vdfarm.nbd import constants as c
from vdfarm.nbd import wire
from vdfarm.nbd.errors import LocalProtocolError, RemoteProtocolError
from vdfarm.nbd.events import (
    BadRequest,
    Disconnect,
    ExportRequest,
    ListRequest,
    Request,
    StartTLS,
)
from vdfarm.nbd.export import ExportInfo, advertised
from vdfarm.nbd.payload import Payload
from vdfarm.nbd.states import State, can, transition
from vdfarm.nbd.tls import Gate, TLSPolicy, gate

__all__ = ["NEED_DATA", "ExportInfo", "ServerConnection", "TLSPolicy"]


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()

# What next_event() returns, by phase.
HandshakeEvent: TypeAlias = ExportRequest | ListRequest | StartTLS | Disconnect | _NeedData
TransmissionEvent: TypeAlias = Request | BadRequest | Disconnect | _NeedData
NextEvent: TypeAlias = HandshakeEvent | TransmissionEvent
"""next_event() result: nothing complete in the buffer; feed more bytes."""

_NBD_ERRORS = frozenset(
    {
        c.NBD_EPERM,
        c.NBD_EIO,
        c.NBD_ENOMEM,
        c.NBD_EINVAL,
        c.NBD_ENOSPC,
        c.NBD_EOVERFLOW,
        c.NBD_ENOTSUP,
        c.NBD_ESHUTDOWN,
    }
)
_HEADER = wire.REQUEST_HEADER.size
_unpack_request = wire.REQUEST_HEADER.unpack_from
_pack_simple = wire.SIMPLE_REPLY.pack
_pack_chunk = wire.STRUCTURED_HEADER.pack
_pack_read_chunk = wire.STRUCTURED_READ_HEADER.pack
_U64_LIMIT = wire.U64_LIMIT
_TRANSMISSION = State.TRANSMISSION
_REQUEST_MAGIC = c.REQUEST_MAGIC
_SIMPLE_MAGIC = c.SIMPLE_REPLY_MAGIC
_STRUCTURED_MAGIC = c.STRUCTURED_REPLY_MAGIC
_DONE = c.REPLY_FLAG_DONE
_OFFSET_DATA = c.REPLY_TYPE_OFFSET_DATA


class ServerConnection:
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

    # Slots: attribute access stays fast on the hot path whatever their
    # number (an instance dict past 30 keys loses CPython's shared-key fast
    # path), and a connection costs less memory.
    __slots__ = (
        "_tls_policy",
        "_tls_active",
        "_max_options",
        "_max_option_length",
        "_max_handshake_buffer",
        "_options_read",
        "_max_payload",
        "_state",
        "_buf",
        "_pos",
        "_eof",
        "_clean_close",
        "_outgoing",
        "_error",
        "_no_zeroes",
        "_structured",
        "_meta_export",
        "_pending_export",
        "_export_name",
        "_transmission_flags",
        "_meta_context_id",
        "_replies_allowed",
        "_allowed",
        "_read_bad_flags",
        "_read_only",
        "_align_mask",
        "_pending_status",
        "_in_flight",
        "_pending_write",
    )

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
        self._tls_policy = TLSPolicy(tls)
        self._tls_active = False
        self._max_options = max_options
        self._max_option_length = max_option_length
        self._max_handshake_buffer = max_handshake_buffer
        self._options_read = 0
        self._max_payload = max_payload
        self._state = State.START
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._clean_close = True  # False once the client vanished without DISC/ABORT
        self._outgoing = bytearray()
        self._error: str | None = None
        # handshake results
        self._no_zeroes = False
        self._structured = False
        self._meta_export: str | None = None  # export named by a successful SET_META_CONTEXT
        self._pending_export: ExportRequest | None = None  # the one EXPORT_ANSWER is about
        self._export_name: str | None = None
        self._transmission_flags: int | None = None
        self._meta_context_id: int | None = None
        self._replies_allowed = False
        # transmission
        self._allowed: dict[int, int] = {}
        self._read_bad_flags = 0xFFFF
        self._read_only = False
        self._align_mask = 0
        self._pending_status: dict[int, tuple[int, bool]] = {}
        self._in_flight = 0  # Request/BadRequest events out, minus replies
        # a WRITE whose payload is still arriving, and that payload
        self._pending_write: tuple[Request | BadRequest, Payload] | None = None

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

    def data_to_send(self) -> bytes:
        """Bytes the machine produced by itself since the last call."""
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

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

    def tls_started(self) -> None:
        """The I/O layer finished the TLS handshake after StartTLS: option
        haggling goes on over TLS. Structured replies and metadata contexts
        negotiated before are forgotten.

        Raises RemoteProtocolError if the connection failed meanwhile (the
        client sent plaintext after STARTTLS), LocalProtocolError if no
        StartTLS is pending.
        """
        self._raise_if_failed()
        self._set_state("tls_started")
        self._tls_active = True
        self._structured = False
        self._meta_export = None

    # -- state helpers --------------------------------------------------------

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

    # -- handshake --------------------------------------------------------------

    def _read_client_flags(self) -> HandshakeEvent:
        if len(self._buf) - self._pos < 4:
            return self._at_boundary_eof("handshake")
        (flags,) = wire.CLIENT_FLAGS.unpack_from(self._buf, self._pos)
        self._pos += 4
        if flags & ~c.KNOWN_CLIENT_FLAGS:
            self._fail(f"unknown client flags 0x{flags & ~c.KNOWN_CLIENT_FLAGS:x}")
        if not flags & c.FLAG_C_FIXED_NEWSTYLE:
            self._fail("client does not support fixed newstyle negotiation")
        self._no_zeroes = bool(flags & c.FLAG_C_NO_ZEROES)
        self._set_state("client_flags")
        return self._next_option()

    def _next_option(self) -> HandshakeEvent:
        while True:
            buf, pos = self._buf, self._pos
            if len(buf) - pos < wire.OPTION_HEADER.size:
                return self._at_boundary_eof("option")
            magic, option, length = wire.OPTION_HEADER.unpack_from(buf, pos)
            if magic != c.IHAVEOPT:
                self._fail(f"bad option magic 0x{magic:x}")
            if self._options_read >= self._max_options:
                self._fail(f"more than {self._max_options} options in one handshake")
            if length > self._max_option_length:
                self._fail(f"option {option} of {length} bytes exceeds {self._max_option_length}")
            start = pos + wire.OPTION_HEADER.size
            if len(buf) - start < length:
                if self._eof:
                    self._fail("client disconnected mid-option")
                return NEED_DATA
            data = bytes(buf[start : start + length])
            self._pos = start + length
            self._options_read += 1
            event = self._handle_option(option, data)
            if event is not None:
                self._set_state(type(event))
                if type(event) is ExportRequest:
                    self._pending_export = event
                return event
            self._set_state("option_answered")

    def _handle_option(
        self, option: int, data: bytes
    ) -> ExportRequest | ListRequest | StartTLS | Disconnect | None:
        """The event an option needs the application for, or None once the
        machine has queued its own answer."""
        if option == c.OPT_STARTTLS:
            return self._opt_starttls(data)
        action = gate(self._tls_policy, self._tls_active, option)
        if action is Gate.TLS_REQUIRED:
            self._answer_error(option, c.REP_ERR_TLS_REQD, "TLS is required: send NBD_OPT_STARTTLS")
            return None
        if action is Gate.CLOSE:
            self._fail("NBD_OPT_EXPORT_NAME before TLS, which this server requires")
        if option == c.OPT_EXPORT_NAME:
            name = wire.decode_string(data)
            if name is None:  # no error reply exists for EXPORT_NAME
                self._fail("NBD_OPT_EXPORT_NAME name is not a valid NBD string")
            return ExportRequest(name, go=True, legacy=True)
        if option in (c.OPT_INFO, c.OPT_GO):
            try:
                name, infos = wire.parse_info_request(data)
            except wire.OptionInvalid as exc:
                self._answer_error(option, c.REP_ERR_INVALID, str(exc))
                return None
            return ExportRequest(name, option == c.OPT_GO, False, infos)
        if option == c.OPT_LIST and not data:
            return ListRequest()
        if option == c.OPT_ABORT:
            self._outgoing += wire.option_reply(option, c.REP_ACK)
            return Disconnect()
        self._answer_alone(option, data)
        return None

    def _answer_alone(self, option: int, data: bytes) -> None:
        """Queue the machine's own answer to an option the application
        never sees."""
        if option == c.OPT_LIST:
            return self._answer_error(option, c.REP_ERR_INVALID, "NBD_OPT_LIST takes no data")
        if option == c.OPT_STRUCTURED_REPLY:
            return self._opt_structured_reply(data)
        if option in (c.OPT_LIST_META_CONTEXT, c.OPT_SET_META_CONTEXT):
            return self._opt_meta_context(option, data)
        return self._answer_error(option, c.REP_ERR_UNSUP, f"option {option} not supported")

    def _opt_starttls(self, data: bytes) -> StartTLS | None:
        option = c.OPT_STARTTLS
        action = gate(self._tls_policy, self._tls_active, option)
        if data:
            self._answer_error(option, c.REP_ERR_INVALID, "NBD_OPT_STARTTLS takes no data")
            return None
        if action is Gate.REFUSE_POLICY:
            self._answer_error(option, c.REP_ERR_POLICY, "TLS not available")
            return None
        if action is Gate.REFUSE_AGAIN:
            self._answer_error(option, c.REP_ERR_INVALID, "TLS is already active")
            return None
        if self._pos < len(self._buf):  # proto.md: the client waits for the ACK
            self._fail("client sent data after NBD_OPT_STARTTLS without waiting for its reply")
        self._outgoing += wire.option_reply(option, c.REP_ACK)
        return StartTLS()

    def _answer_error(self, option: int, reply_type: int, message: str) -> None:
        self._outgoing += wire.option_reply(option, reply_type, wire.encode_message(message))
        return None

    def _opt_structured_reply(self, data: bytes) -> None:
        option = c.OPT_STRUCTURED_REPLY
        if data:
            return self._answer_error(option, c.REP_ERR_INVALID, "option takes no data")
        if self._structured:
            return self._answer_error(
                option, c.REP_ERR_INVALID, "structured replies already negotiated"
            )
        self._structured = True
        self._outgoing += wire.option_reply(option, c.REP_ACK)
        return None

    def _opt_meta_context(self, option: int, data: bytes) -> None:
        setting = option == c.OPT_SET_META_CONTEXT
        if setting:
            self._meta_export = None  # SET replaces the selection, even when it fails
            if not self._structured:
                return self._answer_error(
                    option, c.REP_ERR_INVALID, "negotiate structured replies first"
                )
        try:
            name, queries = wire.parse_meta_context_request(data)
        except wire.OptionInvalid as exc:
            return self._answer_error(option, c.REP_ERR_INVALID, str(exc))
        base = c.META_CONTEXT_BASE_ALLOCATION.encode()
        if setting:
            matched = base in queries
            context_id = c.META_CONTEXT_BASE_ALLOCATION_ID
        else:  # LIST: no query means "everything"; "base:" is the namespace wildcard
            matched = not queries or base in queries or b"base:" in queries
            context_id = 0  # proto.md: reserved in LIST replies
        if matched:
            self._outgoing += wire.meta_context_reply(
                option, context_id, c.META_CONTEXT_BASE_ALLOCATION
            )
            if setting:
                self._meta_export = name
        self._outgoing += wire.option_reply(option, c.REP_ACK)
        return None

    # -- handshake answers from the application ------------------------------------

    def accept_export(self, info: ExportInfo) -> bytes:
        """Answer the pending ExportRequest with success: INFO replies + ACK
        (or the EXPORT_NAME reply). After GO / EXPORT_NAME the machine is in
        TRANSMISSION.

        Raises RemoteProtocolError if the connection failed while the
        answer was prepared (see receive_data), LocalProtocolError if no
        ExportRequest is pending or `info` cannot be advertised (bad flags,
        size or block sizes).
        """
        self._raise_if_failed()
        request = self._pending_export
        if self._state is not State.EXPORT_ANSWER or request is None:
            raise LocalProtocolError("accept_export without a pending ExportRequest")
        flags, block_sizes = advertised(info, self._structured, self._max_payload)
        if request.legacy:
            reply = wire.EXPORT_NAME_REPLY.pack(info.size, flags)
            if not self._no_zeroes:
                reply += wire.ZERO_PADDING
        else:
            asked = request.info_requests
            name = wire.encode_string(request.name, "export name") if c.INFO_NAME in asked else None
            description = None
            if c.INFO_DESCRIPTION in asked and info.description:
                description = wire.encode_string(info.description, "description")
            reply = wire.info_replies(
                c.OPT_GO if request.go else c.OPT_INFO,
                info.size,
                flags,
                name,
                description,
                block_sizes,
            )
        if request.go:
            self._enter_transmission(request.name, flags, block_sizes)
        self._set_state("accept_go" if request.go else "accept_info")
        return self.data_to_send() + reply

    def reject_export(self, error: int = c.REP_ERR_UNKNOWN, message: str = "") -> bytes:
        """Refuse the pending ExportRequest with an NBD_REP_ERR_* code. For
        INFO/GO: an error reply, haggling goes on. For EXPORT_NAME: b"" (plus
        any queued bytes) and CLOSED; the caller must close the connection.

        NBD_REP_ERR_TLS_REQD (a TLS-only export asked for in plaintext) is
        allowed only while TLS is possible and not active, as proto.md says;
        with TLS off, refuse with NBD_REP_ERR_POLICY.

        Raises RemoteProtocolError if the connection failed while the
        answer was prepared, LocalProtocolError if nothing is pending or
        `error` is not an error reply type or not allowed now.
        """
        self._raise_if_failed()
        request = self._pending_export
        if self._state is not State.EXPORT_ANSWER or request is None:
            raise LocalProtocolError("reject_export without a pending ExportRequest")
        if not error & c.REP_FLAG_ERROR or not 0 <= error <= 0xFFFFFFFF:
            raise LocalProtocolError(f"0x{error:x} is not an NBD_REP_ERR_* code")
        if error == c.REP_ERR_TLS_REQD and (self._tls_active or self._tls_policy is TLSPolicy.OFF):
            raise LocalProtocolError(
                "NBD_REP_ERR_TLS_REQD is not allowed with TLS active or TLS off"
            )
        if request.legacy:
            self._set_state("reject_legacy")
            return self.data_to_send()
        option = c.OPT_GO if request.go else c.OPT_INFO
        self._set_state("reject")
        return self.data_to_send() + wire.option_reply(option, error, wire.encode_message(message))

    def send_export_list(self, entries: list[tuple[str, str]]) -> bytes:
        """Answer the pending ListRequest: one NBD_REP_SERVER per (name,
        description), then ACK.

        Raises RemoteProtocolError if the connection failed while the
        answer was prepared, LocalProtocolError if no ListRequest is pending
        or a name or description is not a valid NBD string.
        """
        self._raise_if_failed()
        if self._state is not State.LIST_ANSWER:
            raise LocalProtocolError("send_export_list without a pending ListRequest")
        replies = [
            wire.server_reply(
                wire.encode_string(name, "export name"),
                wire.encode_string(description, "export description"),
            )
            for name, description in entries
        ]
        replies.append(wire.option_reply(c.OPT_LIST, c.REP_ACK))
        self._set_state("send_export_list")
        return self.data_to_send() + b"".join(replies)

    def _enter_transmission(self, name: str, flags: int, block_sizes: tuple[int, int, int]) -> None:
        meta = self._structured and self._meta_export == name
        self._export_name = name
        self._transmission_flags = flags
        self._meta_context_id = c.META_CONTEXT_BASE_ALLOCATION_ID if meta else None
        self._read_only = bool(flags & c.FLAG_READ_ONLY)
        self._align_mask = block_sizes[0] - 1
        self._max_payload = block_sizes[2]
        self._allowed = wire.allowed_command_flags(flags, meta)
        self._read_bad_flags = 0xFFFF & ~self._allowed[c.CMD_READ]

    # -- transmission: requests in ---------------------------------------------------

    def _request(
        self, pos: int, magic: int, flags: int, cmd: int, cookie: int, offset: int, length: int
    ) -> TransmissionEvent:
        """Every request header but a valid READ (next_event reads those
        inline), unpacked at `pos` of the receive buffer."""
        if magic != _REQUEST_MAGIC:
            self._fail(f"bad request magic 0x{magic:x}")
        self._pos = pos + _HEADER
        if cmd == c.CMD_DISC:
            self._set_state(Disconnect)
            return Disconnect()
        problem = wire.request_error(
            cmd,
            flags,
            offset,
            length,
            self._allowed,
            self._read_only,
            self._max_payload,
            self._align_mask,
        )
        if cmd == c.CMD_WRITE and length:
            return self._start_body(cookie, flags, offset, length, problem)
        self._in_flight += 1
        if problem is not None:
            return BadRequest(cookie, *problem)
        if cmd == c.CMD_BLOCK_STATUS:
            self._pending_status[cookie] = (length, bool(flags & c.CMD_FLAG_REQ_ONE))
        return Request(cookie, cmd, flags, offset, length, None)

    def _start_body(
        self, cookie: int, flags: int, offset: int, length: int, problem: tuple[int, str] | None
    ) -> Request | BadRequest | _NeedData:
        """A WRITE header was read: take its payload, whole if it is here
        (one copy), else as it arrives (held piece by piece, or discarded if
        the request is invalid). Nothing is allocated for bytes not received."""
        pos = self._pos
        if problem is None and len(self._buf) - pos >= length:
            self._pos = pos + length
            self._in_flight += 1
            data = bytes(memoryview(self._buf)[pos : pos + length])
            return Request(cookie, c.CMD_WRITE, flags, offset, length, data)
        event: Request | BadRequest
        if problem is None:
            event = Request(cookie, c.CMD_WRITE, flags, offset, length, None)
        else:
            event = BadRequest(cookie, *problem)
        payload = Payload(length, keep=problem is None)
        self._pending_write = (event, payload)
        return self._continue_body(event, payload)

    def _continue_body(
        self, event: Request | BadRequest, payload: Payload
    ) -> Request | BadRequest | _NeedData:
        """Take what is buffered of the pending WRITE's payload; the event
        once all of it is here."""
        if payload.remaining and self._pos < len(self._buf):
            self._pos += payload.take(self._buf, self._pos, False)
        if payload.remaining:
            if self._eof:
                self._fail("client disconnected mid-request")
            return NEED_DATA
        if type(event) is Request:  # a BadRequest has no body
            event.data = payload.data()
        self._pending_write = None
        self._in_flight += 1
        return event

    # -- transmission: replies out ------------------------------------------------

    def _check_reply(self) -> None:
        if not self._replies_allowed:
            raise LocalProtocolError(f"no reply can be sent in state {self._state.name}")

    def reply_ok(self, cookie: int) -> bytes:
        """Success without data. Raises LocalProtocolError outside transmission."""
        if not self._replies_allowed:
            self._check_reply()
        try:
            if self._structured:
                out = _pack_chunk(_STRUCTURED_MAGIC, _DONE, c.REPLY_TYPE_NONE, cookie, 0)
            else:
                out = _pack_simple(_SIMPLE_MAGIC, 0, cookie)
        except struct.error as exc:
            raise LocalProtocolError(f"cookie {cookie} does not fit 64 bits") from exc
        if self._pending_status:
            self._pending_status.pop(cookie, None)
        if self._in_flight:
            self._in_flight -= 1
        return out

    def reply_error(self, cookie: int, error: int, message: str = "") -> bytes:
        """Failure with an NBD error (NBD_E*); the message travels only in a
        structured reply. Raises LocalProtocolError outside transmission or
        if `error` is not an NBD error value."""
        self._check_reply()
        if error not in _NBD_ERRORS:
            raise LocalProtocolError(f"{error} is not an NBD error value (use errno_to_nbd)")
        out = self._pack_error(cookie, error, message)
        self._pending_status.pop(cookie, None)
        if self._in_flight:
            self._in_flight -= 1
        return out

    def _pack_error(self, cookie: int, error: int, message: str) -> bytes:
        try:
            if not self._structured:
                return _pack_simple(_SIMPLE_MAGIC, error, cookie)
            text = wire.encode_message(message)
            return (
                wire.STRUCTURED_ERROR.pack(
                    _STRUCTURED_MAGIC,
                    _DONE,
                    c.REPLY_TYPE_ERROR,
                    cookie,
                    6 + len(text),
                    error,
                    len(text),
                )
                + text
            )
        except struct.error as exc:
            raise LocalProtocolError(f"cookie {cookie} does not fit 64 bits") from exc

    def reply_read_header(self, cookie: int, offset: int, length: int) -> bytes:
        """Header of a successful READ reply; the caller sends exactly
        `length` data bytes right after it. Raises LocalProtocolError
        outside transmission, or for a structured reply of 0 or >= 4 GiB - 8
        bytes."""
        if not self._replies_allowed:
            self._check_reply()
        try:
            if self._structured:
                if not 0 < length <= 0xFFFFFFFF - 8:
                    raise LocalProtocolError(f"a data chunk cannot carry {length} bytes")
                out = _pack_read_chunk(
                    _STRUCTURED_MAGIC,
                    _DONE,
                    _OFFSET_DATA,
                    cookie,
                    8 + length,
                    offset,
                )
            else:
                out = _pack_simple(_SIMPLE_MAGIC, 0, cookie)
        except struct.error as exc:
            raise LocalProtocolError(
                f"cookie {cookie} or offset {offset} does not fit 64 bits"
            ) from exc
        if self._in_flight:
            self._in_flight -= 1
        return out

    def reply_block_status(self, cookie: int, extents: Iterable[tuple[int, int]]) -> bytes:
        """Success of a BLOCK_STATUS: one base:allocation chunk built from
        (length, flags) pairs, trimmed to what proto.md allows (see
        wire.block_status_descriptors). Raises LocalProtocolError outside
        transmission, if `cookie` is no outstanding BLOCK_STATUS request, or
        for extents the protocol cannot carry."""
        self._check_reply()
        pending = self._pending_status.get(cookie)
        if pending is None:
            raise LocalProtocolError(f"no BLOCK_STATUS request with cookie {cookie} is pending")
        descriptors = wire.block_status_descriptors(extents, *pending)
        del self._pending_status[cookie]
        if self._in_flight:
            self._in_flight -= 1
        count = len(descriptors)
        payload = struct.pack(f">{1 + 2 * count}I", self._meta_context_id, *chain(*descriptors))
        return (
            _pack_chunk(
                _STRUCTURED_MAGIC,
                _DONE,
                c.REPLY_TYPE_BLOCK_STATUS,
                cookie,
                len(payload),
            )
            + payload
        )
