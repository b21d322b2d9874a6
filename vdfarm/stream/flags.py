"""Transmission flags an export advertises, computed from its block stack.

Rules: pure; a flag is advertised only when the stack really does it
(CAN_MULTI_CONN only where the stack says so, READ_ONLY where it is).
"""

from vdfarm.block.layer import Capabilities
from vdfarm.nbd import constants as c


def transmission_flags(caps: Capabilities, structured_replies: bool) -> int:
    """NBD transmission flags (without HAS_FLAGS) for a stack with `caps`."""
    flags = 0
    if caps.read_only:
        flags |= c.FLAG_READ_ONLY
    if caps.can_flush:
        flags |= c.FLAG_SEND_FLUSH
    if caps.can_fua and not caps.read_only:
        flags |= c.FLAG_SEND_FUA
    if caps.can_trim and not caps.read_only:
        flags |= c.FLAG_SEND_TRIM
    if caps.can_zero and not caps.read_only:
        flags |= c.FLAG_SEND_WRITE_ZEROES
        if caps.can_fast_zero:
            flags |= c.FLAG_SEND_FAST_ZERO
    if caps.can_cache:
        flags |= c.FLAG_SEND_CACHE
    if caps.can_multi_conn:
        flags |= c.FLAG_CAN_MULTI_CONN
    if structured_replies:
        # Reads are always answered in one chunk, so "don't fragment" holds.
        flags |= c.FLAG_SEND_DF
    return flags
