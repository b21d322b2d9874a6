"""Handshake: option haggling, up to the export the client will use.

Job: read the client flags and the options that follow the greeting,
answer by itself those the application never sees (STRUCTURED_REPLY,
LIST/SET_META_CONTEXT, STARTTLS, unknown options, bad data), emit the events
the application answers (ExportRequest, ListRequest, StartTLS, Disconnect),
pack its answers (`accept_export`, `reject_export`, `send_export_list`) and,
after GO / EXPORT_NAME, set up what the transmission checks.
`Handshake` is one class of the ServerConnection chain (see
vdfarm.nbd.machine).

Rules:
- Options the machine answers alone go to `data_to_send()`. Answers the
  application gives are returned preceded by any such bytes not taken yet,
  so the order on the wire is right either way.
- TLS follows the connection's `TLSPolicy` (the tables of `vdfarm.nbd.tls`).
  An accepted STARTTLS queues its ACK and emits `StartTLS`; the machine
  then reads nothing until `tls_started()`. Bytes the client sent after
  STARTTLS without waiting for the ACK break the protocol. What was
  negotiated in plaintext (structured replies, metadata contexts) is
  forgotten when TLS starts: a man in the middle may have sent it.
- Limits: options per handshake and bytes per option; a client past one
  breaks the protocol (RemoteProtocolError), refused on the option header
  before any of its data is held.
- The application answering what was not asked, or with what cannot be
  advertised, raises LocalProtocolError and changes nothing; an answer
  after the connection failed raises RemoteProtocolError.
"""

from __future__ import annotations

from vdfarm.nbd import constants as c
from vdfarm.nbd import wire
from vdfarm.nbd.errors import LocalProtocolError
from vdfarm.nbd.events import Disconnect, ExportRequest, ListRequest, StartTLS
from vdfarm.nbd.export import ExportInfo, advertised
from vdfarm.nbd.machine import NEED_DATA, HandshakeEvent
from vdfarm.nbd.states import State
from vdfarm.nbd.tls import Gate, TLSPolicy, gate
from vdfarm.nbd.transmission import Transmission

__all__ = ["Handshake"]


class Handshake(Transmission):
    """Option haggling and the export answers; see the module docstring."""

    __slots__ = (
        "_tls_policy",
        "_tls_active",
        "_max_options",
        "_max_option_length",
        "_max_handshake_buffer",
        "_options_read",
        "_no_zeroes",
        "_meta_export",
        "_pending_export",
        "_export_name",
    )

    _tls_policy: TLSPolicy
    _tls_active: bool  # every byte since the STARTTLS ACK went over TLS
    _max_options: int
    _max_option_length: int
    _max_handshake_buffer: int  # unparsed bytes held before transmission
    _options_read: int
    _no_zeroes: bool  # the client set NO_ZEROES
    _meta_export: str | None  # export named by a successful SET_META_CONTEXT
    _pending_export: ExportRequest | None  # the one EXPORT_ANSWER is about
    _export_name: str | None

    # -- client flags and options in ---------------------------------------------

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
