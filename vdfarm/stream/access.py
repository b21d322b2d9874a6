"""Who may open what over NBD: the stream's access rules.

Rules:
- A device's live session belongs to the address of its first connection:
  while the session lives (connected, or within its grace period) a
  connection from another address is refused (`PeerMismatch`) and logged;
  once the session is over, any address may start a new one. (Certificates,
  when the farm uses TLS, name the device instead.)
- The read-only view of a vDisk (export `vdisk/NAME`) reads the golden
  image itself, not a device's: it is served to this server's own host
  (loopback) only (`ViewRefused`).
- Pure functions and error types; no sockets.
"""

from __future__ import annotations

import ipaddress


class AccessRefused(Exception):
    """An export this client may not open (NBD_REP_ERR_POLICY); one line."""


class PeerMismatch(AccessRefused):
    """A device's live session is bound to another client address."""


class ViewRefused(AccessRefused):
    """A vDisk view asked for from another host."""


def is_loopback(address: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and ::ffff:127.x.y.z; False for anything
    else, including None or text that is not an address."""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def peer_refusal(bound_to: str | None, connecting_from: str | None, device: str) -> str | None:
    """Why a connection from CONNECTING_FROM may not join DEVICE's live
    session bound to BOUND_TO, or None if it may."""
    if bound_to is None or bound_to == connecting_from:
        return None
    return (
        f"device {device} is connected from another address; "
        "its session must end before another address can use it"
    )
