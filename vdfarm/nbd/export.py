"""What the server tells a client about an export it accepted.

Job: `ExportInfo` (the application's description of an export) and
`advertised()`, which turns it into the transmission flags and block sizes
the protocol can carry.
Rules: pure, no state. What the protocol cannot advertise raises
LocalProtocolError: it is the application's mistake, never the client's.
"""

from __future__ import annotations

from dataclasses import dataclass

from vdfarm.nbd import constants as c
from vdfarm.nbd import wire
from vdfarm.nbd.errors import LocalProtocolError

SERVABLE_FLAGS = (
    c.FLAG_HAS_FLAGS
    | c.FLAG_READ_ONLY
    | c.FLAG_SEND_FLUSH
    | c.FLAG_SEND_FUA
    | c.FLAG_ROTATIONAL
    | c.FLAG_SEND_TRIM
    | c.FLAG_SEND_WRITE_ZEROES
    | c.FLAG_SEND_DF
    | c.FLAG_CAN_MULTI_CONN
    | c.FLAG_SEND_CACHE
    | c.FLAG_SEND_FAST_ZERO
)


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@dataclass(frozen=True)
class ExportInfo:
    """What the application tells the client about an accepted export.
    `transmission_flags` are FLAG_* bits; the machine adds HAS_FLAGS and drops
    SEND_DF when structured replies were not negotiated."""

    size: int
    transmission_flags: int
    description: str = ""
    min_block: int = 1
    preferred_block: int = 4096
    max_block: int = c.MAX_PAYLOAD


def advertised(
    info: ExportInfo, structured: bool, max_payload: int
) -> tuple[int, tuple[int, int, int]]:
    """(transmission flags, (min, preferred, max) block sizes) to send for
    `info`, the maximum capped at the machine's `max_payload`.

    Raises LocalProtocolError for what the protocol cannot advertise.
    """
    if not 0 <= info.size < wire.U64_LIMIT:
        raise LocalProtocolError(f"export size {info.size} does not fit 64 bits")
    flags = info.transmission_flags | c.FLAG_HAS_FLAGS
    if flags & ~SERVABLE_FLAGS:
        raise LocalProtocolError(
            f"transmission flags 0x{flags & ~SERVABLE_FLAGS:x} are not supported by this machine"
        )
    if flags & c.FLAG_SEND_FAST_ZERO and not flags & c.FLAG_SEND_WRITE_ZEROES:
        raise LocalProtocolError("SEND_FAST_ZERO needs SEND_WRITE_ZEROES")
    if not structured:
        flags &= ~c.FLAG_SEND_DF  # proto.md: MUST be clear without structured replies
    maximum = min(info.max_block, max_payload)
    if not (_is_power_of_two(info.min_block) and info.min_block <= 65536):
        raise LocalProtocolError(f"min_block {info.min_block} is not a power of 2 <= 65536")
    if not (
        _is_power_of_two(info.preferred_block) and info.preferred_block >= max(info.min_block, 512)
    ):
        raise LocalProtocolError(
            f"preferred_block {info.preferred_block} must be a power of 2 >= max(min_block, 512)"
        )
    if not info.preferred_block <= maximum <= 0xFFFFFFFF:
        raise LocalProtocolError(f"maximum payload {maximum} must be >= preferred_block")
    return flags, (info.min_block, info.preferred_block, maximum)
