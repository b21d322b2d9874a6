"""NBD wire formats: struct layouts, option payload parsers, reply packers.

Rules: pure functions over bytes, no state. Everything is big-endian (network
byte order) as proto.md says. Parsers of client data raise `OptionInvalid`
(the option gets NBD_REP_ERR_INVALID and the handshake goes on); packers of
our own data raise LocalProtocolError when the application hands them
something the protocol cannot carry.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from vdfarm.nbd import constants as c
from vdfarm.nbd.errors import LocalProtocolError

GREETING = struct.Struct(">QQH")  # NBDMAGIC, IHAVEOPT, handshake flags
CLIENT_FLAGS = struct.Struct(">I")
OPTION_HEADER = struct.Struct(">QII")  # IHAVEOPT, option, length
OPTION_REPLY_HEADER = struct.Struct(">QIII")  # reply magic, option, type, length
EXPORT_NAME_REPLY = struct.Struct(">QH")  # size, transmission flags
INFO_EXPORT = struct.Struct(">HQH")  # NBD_INFO_EXPORT, size, flags
INFO_BLOCK_SIZE = struct.Struct(">HIII")  # NBD_INFO_BLOCK_SIZE, min, preferred, max
U16 = struct.Struct(">H")
U32 = struct.Struct(">I")

REQUEST_HEADER = struct.Struct(">IHHQQI")  # magic, flags, type, cookie, offset, length
SIMPLE_REPLY = struct.Struct(">IIQ")  # magic, error, cookie
STRUCTURED_HEADER = struct.Struct(">IHHQI")  # magic, flags, type, cookie, length
STRUCTURED_READ_HEADER = struct.Struct(">IHHQIQ")  # ... + the OFFSET_DATA offset field
STRUCTURED_ERROR = struct.Struct(">IHHQIIH")  # ... + error, message length

ZERO_PADDING = bytes(124)  # after an EXPORT_NAME reply unless NO_ZEROES


class OptionInvalid(Exception):
    """A known option whose payload is malformed (answer NBD_REP_ERR_INVALID)."""


def decode_string(raw: bytes) -> str | None:
    """An NBD string as text, or None if it is not one (longer than 4096
    bytes, not UTF-8, or holding a NUL)."""
    if len(raw) > c.MAX_STRING or b"\0" in raw:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def encode_string(text: str, what: str) -> bytes:
    """`text` as an NBD string.

    Raises LocalProtocolError if it holds a NUL or is longer than 4096 bytes.
    """
    raw = text.encode("utf-8")
    if len(raw) > c.MAX_STRING or b"\0" in raw:
        raise LocalProtocolError(f"{what} is not a valid NBD string (NUL or over 4096 bytes)")
    return raw


def encode_message(text: str) -> bytes:
    """A human-readable message as an NBD string: NULs dropped, cut to 4096
    bytes on a character boundary. Never raises."""
    raw = text.replace("\0", "").encode("utf-8", "replace")
    if len(raw) > c.MAX_STRING:
        raw = raw[: c.MAX_STRING].decode("utf-8", "ignore").encode("utf-8")
    return raw


def option_reply(option: int, reply_type: int, data: bytes = b"") -> bytes:
    """One fixed-newstyle option reply."""
    return OPTION_REPLY_HEADER.pack(c.REPLY_MAGIC_OPT, option, reply_type, len(data)) + data


def parse_info_request(data: bytes) -> tuple[str, tuple[int, ...]]:
    """Payload of NBD_OPT_INFO / NBD_OPT_GO: (export name, info requests).

    Raises OptionInvalid if the lengths do not add up or the name is not an
    NBD string.
    """
    if len(data) < 6:
        raise OptionInvalid("option too short for a name length and a request count")
    (name_len,) = U32.unpack_from(data, 0)
    if name_len > len(data) - 6:
        raise OptionInvalid("export name longer than the option")
    name = decode_string(data[4 : 4 + name_len])
    if name is None:
        raise OptionInvalid("export name is not a valid NBD string")
    (count,) = U16.unpack_from(data, 4 + name_len)
    start = 6 + name_len
    if len(data) != start + 2 * count:
        raise OptionInvalid("information request count does not match the option length")
    requests = struct.unpack_from(f">{count}H", data, start)
    return name, requests


def parse_meta_context_request(data: bytes) -> tuple[str, list[bytes]]:
    """Payload of NBD_OPT_LIST/SET_META_CONTEXT: (export name, queries).

    Raises OptionInvalid if a length points past the option, the option has
    trailing bytes, or a string is not an NBD string.
    """
    pos = 0

    def take_string(what: str) -> bytes:
        nonlocal pos
        if len(data) - pos < 4:
            raise OptionInvalid(f"option too short for the {what} length")
        (length,) = U32.unpack_from(data, pos)
        if length > len(data) - pos - 4:
            raise OptionInvalid(f"{what} longer than the option")
        raw = data[pos + 4 : pos + 4 + length]
        if decode_string(raw) is None:
            raise OptionInvalid(f"{what} is not a valid NBD string")
        pos += 4 + length
        return raw

    name = take_string("export name").decode("utf-8")
    if len(data) - pos < 4:
        raise OptionInvalid("option too short for the query count")
    (count,) = U32.unpack_from(data, pos)
    pos += 4
    if count > (len(data) - pos) // 4:
        raise OptionInvalid("query count larger than the option can hold")
    queries = [take_string("query") for _ in range(count)]
    if pos != len(data):
        raise OptionInvalid("trailing bytes after the last query")
    return name, queries


def info_replies(
    option: int,
    size: int,
    flags: int,
    name: bytes | None,
    description: bytes | None,
    block_sizes: tuple[int, int, int],
) -> bytes:
    """The NBD_REP_INFO replies of a successful INFO/GO, then NBD_REP_ACK.
    NAME and DESCRIPTION are sent when given (not None)."""
    parts = [option_reply(option, c.REP_INFO, INFO_EXPORT.pack(c.INFO_EXPORT, size, flags))]
    if name is not None:
        parts.append(option_reply(option, c.REP_INFO, U16.pack(c.INFO_NAME) + name))
    if description is not None:
        parts.append(option_reply(option, c.REP_INFO, U16.pack(c.INFO_DESCRIPTION) + description))
    parts.append(
        option_reply(option, c.REP_INFO, INFO_BLOCK_SIZE.pack(c.INFO_BLOCK_SIZE, *block_sizes))
    )
    parts.append(option_reply(option, c.REP_ACK))
    return b"".join(parts)


def server_reply(name: bytes, description: bytes) -> bytes:
    """One NBD_REP_SERVER entry of an NBD_OPT_LIST answer."""
    return option_reply(c.OPT_LIST, c.REP_SERVER, U32.pack(len(name)) + name + description)


def meta_context_reply(option: int, context_id: int, name: str) -> bytes:
    """One NBD_REP_META_CONTEXT reply."""
    return option_reply(option, c.REP_META_CONTEXT, U32.pack(context_id) + name.encode())


# -- transmission rules --------------------------------------------------------

COMMAND_NAMES = {
    c.CMD_READ: "READ",
    c.CMD_WRITE: "WRITE",
    c.CMD_DISC: "DISC",
    c.CMD_FLUSH: "FLUSH",
    c.CMD_TRIM: "TRIM",
    c.CMD_CACHE: "CACHE",
    c.CMD_WRITE_ZEROES: "WRITE_ZEROES",
    c.CMD_BLOCK_STATUS: "BLOCK_STATUS",
}
WRITING_COMMANDS = frozenset({c.CMD_WRITE, c.CMD_TRIM, c.CMD_WRITE_ZEROES})
U64_LIMIT = 1 << 64
MAX_DESCRIPTOR_LENGTH = (1 << 32) - (1 << 16)  # below 4 GiB, aligned to any legal min block


def allowed_command_flags(transmission_flags: int, meta_context: bool) -> dict[int, int]:
    """For each command the client may send on this export, the command flags
    it may set (FUA only with SEND_FUA, DF only with SEND_DF, ...). A command
    missing from the result was not advertised. DISC is handled apart."""
    fua = c.CMD_FLAG_FUA if transmission_flags & c.FLAG_SEND_FUA else 0
    allowed = {
        c.CMD_READ: fua | (c.CMD_FLAG_DF if transmission_flags & c.FLAG_SEND_DF else 0),
        c.CMD_WRITE: fua,
    }
    if transmission_flags & c.FLAG_SEND_FLUSH:
        allowed[c.CMD_FLUSH] = fua
    if transmission_flags & c.FLAG_SEND_TRIM:
        allowed[c.CMD_TRIM] = fua
    if transmission_flags & c.FLAG_SEND_CACHE:
        allowed[c.CMD_CACHE] = fua
    if transmission_flags & c.FLAG_SEND_WRITE_ZEROES:
        fast = c.CMD_FLAG_FAST_ZERO if transmission_flags & c.FLAG_SEND_FAST_ZERO else 0
        allowed[c.CMD_WRITE_ZEROES] = fua | c.CMD_FLAG_NO_HOLE | fast
    if meta_context:
        allowed[c.CMD_BLOCK_STATUS] = fua | c.CMD_FLAG_REQ_ONE
    return allowed


def request_error(
    cmd: int,
    flags: int,
    offset: int,
    length: int,
    allowed: dict[int, int],
    read_only: bool,
    max_payload: int,
    align_mask: int,
) -> tuple[int, str] | None:
    """Why a request header (not DISC) is invalid, as (NBD error, message),
    or None if it is valid. Checks in this order: unknown command (EINVAL),
    write to a read-only export (EPERM), command not advertised (EINVAL),
    flag not allowed (EINVAL), FLUSH with an offset or length (EINVAL), zero
    length (EINVAL), READ/WRITE over the maximum payload (EOVERFLOW for READ,
    EINVAL for WRITE), misalignment (EINVAL), offset + length > 2**64 (EINVAL)."""
    name = COMMAND_NAMES.get(cmd)
    if name is None:
        return c.NBD_EINVAL, f"unknown command {cmd}"
    if read_only and cmd in WRITING_COMMANDS:
        return c.NBD_EPERM, f"{name} on a read-only export"
    ok_flags = allowed.get(cmd)
    if ok_flags is None:
        if cmd == c.CMD_BLOCK_STATUS:
            return c.NBD_EINVAL, "BLOCK_STATUS without a negotiated metadata context"
        return c.NBD_EINVAL, f"{name} was not advertised by the server"
    if flags & ~ok_flags:
        return c.NBD_EINVAL, f"command flags 0x{flags & ~ok_flags:x} not allowed on {name}"
    if cmd == c.CMD_FLUSH:
        if offset or length:
            return c.NBD_EINVAL, "FLUSH offset and length must be zero"
        return None
    if length == 0:
        return c.NBD_EINVAL, f"zero-length {name}"
    if length > max_payload and cmd in (c.CMD_READ, c.CMD_WRITE):
        error = c.NBD_EOVERFLOW if cmd == c.CMD_READ else c.NBD_EINVAL
        return error, f"{name} of {length} bytes exceeds the maximum payload of {max_payload}"
    if (offset | length) & align_mask:
        return c.NBD_EINVAL, f"{name} not aligned to the minimum block size {align_mask + 1}"
    if offset + length > U64_LIMIT:
        return c.NBD_EINVAL, f"{name} offset + length overflows 64 bits"
    return None


def block_status_descriptors(
    extents: Iterable[tuple[int, int]], request_length: int, req_one: bool
) -> list[tuple[int, int]]:
    """The (length, flags) descriptors to send for a BLOCK_STATUS request.

    Follows proto.md: at least one descriptor, each nonzero and below 4 GiB
    (a longer extent is clamped and ends the list, since descriptors must be
    consecutive); with REQ_ONE exactly one, not longer than the request; else
    stop once the request length is covered, and at most 2**20 descriptors.
    Raises LocalProtocolError for an empty list, a zero or negative length,
    or flags outside 32 bits.
    """
    out: list[tuple[int, int]] = []
    total = 0
    for length, flags in extents:
        if length <= 0:
            raise LocalProtocolError(f"extent length must be positive, got {length}")
        if not 0 <= flags <= 0xFFFFFFFF:
            raise LocalProtocolError(f"extent flags must fit 32 bits, got {flags}")
        clamped = length > MAX_DESCRIPTOR_LENGTH
        if clamped:
            length = MAX_DESCRIPTOR_LENGTH
        if req_one:
            length = min(length, request_length)
        out.append((length, flags))
        total += length
        if req_one or clamped or total >= request_length or len(out) >= c.MAX_EXTENTS_PER_REPLY:
            break
    if not out:
        raise LocalProtocolError("a block status reply needs at least one extent")
    return out
