"""The client side of the NBD handshake and simple replies, as pure functions.

Job: pack what an NBD client sends (client flags, options, requests) and
parse what a server answers (greeting, option replies, NBD_REP_INFO), with
the constants and struct layouts of vdfarm.nbd.
Rules: pure, no I/O. A server that breaks the protocol raises
`UpstreamProtocolError` (the agent drops that connection); a server that
refuses an option raises `OptionRefused` with its message.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vdfarm.nbd import constants as c
from vdfarm.nbd import wire
from vdfarm.nbd.text import printable


class UpstreamProtocolError(Exception):
    """The server sent bytes that break the NBD protocol."""


class OptionRefused(Exception):
    """The server answered an option with an NBD_REP_ERR_* reply."""

    def __init__(self, option: int, reply_type: int, message: str) -> None:
        super().__init__(
            f"server refused option {option} (error 0x{reply_type:x})"
            + (f": {message}" if message else "")
        )
        self.reply_type = reply_type


@dataclass(frozen=True)
class ExportAnswer:
    """What NBD_OPT_GO told about the export."""

    size: int
    transmission_flags: int
    description: str | None


def parse_greeting(data: bytes) -> int:
    """The handshake flags of the 18-byte server greeting.

    Raises UpstreamProtocolError unless it is fixed newstyle.
    """
    magic, opt_magic, flags = wire.GREETING.unpack(data)
    if magic != c.NBDMAGIC or opt_magic != c.IHAVEOPT:
        raise UpstreamProtocolError("not a newstyle NBD server (bad greeting magic)")
    if not flags & c.FLAG_FIXED_NEWSTYLE:
        raise UpstreamProtocolError("the server does not speak fixed newstyle")
    return int(flags)


def client_flags(server_flags: int) -> bytes:
    """Our client flags: fixed newstyle, and no zeroes if the server offers it."""
    flags = c.FLAG_C_FIXED_NEWSTYLE
    if server_flags & c.FLAG_NO_ZEROES:
        flags |= c.FLAG_C_NO_ZEROES
    return wire.CLIENT_FLAGS.pack(flags)


def option(opt: int, data: bytes = b"") -> bytes:
    """One option as a client sends it."""
    return wire.OPTION_HEADER.pack(c.IHAVEOPT, opt, len(data)) + data


def go_option(export: str, infos: tuple[int, ...] = (c.INFO_DESCRIPTION,)) -> bytes:
    """NBD_OPT_GO for EXPORT, asking for the INFOS."""
    name = wire.encode_string(export, "export name")
    payload = wire.U32.pack(len(name)) + name + wire.U16.pack(len(infos))
    payload += struct.pack(f">{len(infos)}H", *infos)
    return option(c.OPT_GO, payload)


def parse_option_reply_header(data: bytes, expected_option: int) -> tuple[int, int]:
    """(reply type, data length) of a 20-byte option reply header.

    Raises UpstreamProtocolError for a bad magic, another option's reply,
    or a reply longer than an NBD string allows (with some room).
    """
    magic, opt, reply_type, length = wire.OPTION_REPLY_HEADER.unpack(data)
    if magic != c.REPLY_MAGIC_OPT:
        raise UpstreamProtocolError(f"bad option reply magic 0x{magic:x}")
    if opt != expected_option:
        raise UpstreamProtocolError(f"reply to option {opt} while {expected_option} was asked")
    if length > c.MAX_STRING + 64:
        raise UpstreamProtocolError(f"option reply of {length} bytes is too long")
    return reply_type, length


def refusal(opt: int, reply_type: int, data: bytes) -> OptionRefused:
    """The OptionRefused for an error reply."""
    return OptionRefused(opt, reply_type, printable(data))


class GoReplies:
    """Collects the NBD_REP_INFO replies of NBD_OPT_GO until its ACK."""

    def __init__(self) -> None:
        self.size: int | None = None
        self.flags = 0
        self.description: str | None = None

    def add(self, reply_type: int, data: bytes) -> ExportAnswer | None:
        """Take one reply; the ExportAnswer once the ACK came, else None.

        Raises OptionRefused for an error reply, UpstreamProtocolError for a
        malformed INFO or an ACK without NBD_INFO_EXPORT.
        """
        if reply_type & c.REP_FLAG_ERROR:
            raise refusal(c.OPT_GO, reply_type, data)
        if reply_type == c.REP_ACK:
            if self.size is None:
                raise UpstreamProtocolError("NBD_OPT_GO acknowledged without NBD_INFO_EXPORT")
            return ExportAnswer(self.size, self.flags, self.description)
        if reply_type != c.REP_INFO:
            raise UpstreamProtocolError(f"unexpected reply type 0x{reply_type:x} to NBD_OPT_GO")
        if len(data) < 2:
            raise UpstreamProtocolError("NBD_REP_INFO without its type")
        (info,) = wire.U16.unpack_from(data, 0)
        if info == c.INFO_EXPORT:
            if len(data) != wire.INFO_EXPORT.size:
                raise UpstreamProtocolError("NBD_INFO_EXPORT of the wrong length")
            _, self.size, self.flags = wire.INFO_EXPORT.unpack(data)
        elif info == c.INFO_DESCRIPTION:
            self.description = wire.decode_string(data[2:])
        return None  # other infos (block sizes, name) are not needed


def request(cmd: int, flags: int, cookie: int, offset: int, length: int) -> bytes:
    """A request header (a WRITE's payload follows it)."""
    return wire.REQUEST_HEADER.pack(c.REQUEST_MAGIC, flags, cmd, cookie, offset, length)


def parse_simple_reply(data: bytes) -> tuple[int, int]:
    """(error, cookie) of a 16-byte simple reply.

    Raises UpstreamProtocolError for any other magic (structured replies
    are never negotiated).
    """
    magic, error, cookie = wire.SIMPLE_REPLY.unpack(data)
    if magic != c.SIMPLE_REPLY_MAGIC:
        raise UpstreamProtocolError(f"bad reply magic 0x{magic:x}")
    return int(error), int(cookie)
