"""Transmission: requests in, replies out (the second phase of the server machine).

Job: turn request headers (and WRITE payloads) of the receive buffer into
Request / BadRequest / Disconnect events, and the application's answers
into reply bytes: simple replies, or structured ones once negotiated.
`Transmission` is one class of the ServerConnection chain (see
vdfarm.nbd.machine); `ServerConnection.next_event` reads a valid READ
inline and hands every other header to `_request`.

Rules:
- This is the hot path: one `unpack_from` per request header, a WRITE that
  arrives whole copied once, nothing allocated but the event, an int kept
  for the requests in flight (`_in_flight`: events out minus final
  replies, never below 0). No extra call or object on the way of a request
  or a reply.
- Memory follows what was received, never what a header announces: a WRITE
  payload still arriving is held as the pieces that came (referenced, or
  copied once when they sit in the receive buffer) and joined once when
  complete (`vdfarm.nbd.payload`); the payload of an invalid WRITE is
  read and dropped.
- Range checks against the export size belong to the block stack. The
  machine checks what the protocol itself defines (see
  `wire.request_error`); an invalid request becomes a BadRequest, offset +
  length past 2**64 gets EINVAL, an over-large READ/WRITE an NBD error as
  the spec asks. A bad magic or a client gone mid-request breaks the
  protocol (RemoteProtocolError).
- Replies outside transmission, with a cookie or offset past 64 bits, a
  value that is no NBD error, or a BLOCK_STATUS answer nobody asked for
  raise LocalProtocolError and change nothing.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from itertools import chain

from vdfarm.nbd import constants as c
from vdfarm.nbd import wire
from vdfarm.nbd.errors import LocalProtocolError
from vdfarm.nbd.events import BadRequest, Disconnect, Request
from vdfarm.nbd.machine import NEED_DATA, MachineCore, TransmissionEvent, _NeedData
from vdfarm.nbd.payload import Payload

__all__ = ["Transmission"]

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
_pack_simple = wire.SIMPLE_REPLY.pack
_pack_chunk = wire.STRUCTURED_HEADER.pack
_pack_read_chunk = wire.STRUCTURED_READ_HEADER.pack
_REQUEST_MAGIC = c.REQUEST_MAGIC
_SIMPLE_MAGIC = c.SIMPLE_REPLY_MAGIC
_STRUCTURED_MAGIC = c.STRUCTURED_REPLY_MAGIC
_DONE = c.REPLY_FLAG_DONE
_OFFSET_DATA = c.REPLY_TYPE_OFFSET_DATA


class Transmission(MachineCore):
    """Requests in, replies out. The handshake sets what is checked here
    (`Handshake._enter_transmission`)."""

    __slots__ = (
        "_max_payload",
        "_structured",
        "_meta_context_id",
        "_allowed",
        "_read_bad_flags",
        "_read_only",
        "_align_mask",
        "_pending_status",
        "_in_flight",
    )

    _max_payload: int  # largest READ/WRITE accepted (advertised once accepted)
    _structured: bool  # structured replies negotiated
    _meta_context_id: int | None  # base:allocation for the export in use
    _allowed: dict[int, int]  # command -> flags it may carry
    _read_bad_flags: int  # flags a READ may not carry (the inline READ check)
    _read_only: bool
    _align_mask: int  # minimum block size - 1
    _pending_status: dict[int, tuple[int, bool]]  # BLOCK_STATUS cookie -> (length, REQ_ONE)
    _in_flight: int  # Request/BadRequest events out, minus replies

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
