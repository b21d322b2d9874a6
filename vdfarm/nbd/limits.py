"""The bounds of an NBD server: what one client may make it hold.

Rules:
- Plain data, no I/O: the stream applies the transport bounds (vdfarm.
  stream.limits), the CLI shows their defaults in `server run --help`
  without loading the server.
- The boot network is hostile: every bound has a default; 0 switches one
  off (for measuring what the bounds cost, not for production).
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class ConnectionLimits:
    """The bounds of one NBD listener (`vdfarm server run` flags)."""

    max_connections: int = 2048  # all connections at once
    max_per_address: int = 64  # connections from one source address
    max_handshaking: int = 256  # connections that have not reached transmission
    handshake_timeout_s: float = 10.0  # from accept to transmission
    max_unparsed_bytes: int = 1 * MIB  # received while a handshake step runs
    max_reply_buffer: int = 256 * 1024  # queued reply bytes before requests stop being read
    list_exports: bool = False  # answer NBD_OPT_LIST with the device names

    def __post_init__(self) -> None:
        for name in (
            "max_connections",
            "max_per_address",
            "max_handshaking",
            "max_unparsed_bytes",
            "max_reply_buffer",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: no bound)")
        if self.handshake_timeout_s < 0:
            raise ValueError("handshake_timeout_s must be >= 0 (0: no bound)")
