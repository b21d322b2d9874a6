"""Who may open what over NBD: the stream's access rules.

Rules:
- A device's live session is bound to the peer of its first connection:
  its address, or, for a client that showed a verified certificate, that
  certificate's identity (the name that let it in: the device's own name
  or `admin`), whatever address it comes from. While the session lives
  (connected, or within its grace period) a connection bound otherwise is
  refused (`PeerMismatch`) and logged; once the session is over, anyone
  allowed may start a new one.
- With a client CA (TLS), a verified certificate names what it may open
  (`certificate_grant`): the device whose name is one of its names (the
  device the export resolved to, so a MAC export name works), or anything
  when it names `admin`; another device is refused (`CertificateRefused`).
  A client without a verified certificate (no TLS, or TLS without a CA)
  keeps the address rules.
- The read-only view of a vDisk (export `vdisk/NAME`) reads the golden
  image itself, not a device's: it is served to this server's own host
  (loopback) or to an `admin` certificate only (`ViewRefused`).
- A vDisk set to require TLS (`vdisk set NAME --require-tls`: its devices'
  exports and its view) is refused to a client that has not started TLS
  (`tls_refusal`): with STARTTLS possible (`--tls optional`) as
  `TLSRequired` (NBD_REP_ERR_TLS_REQD: start TLS and ask again); with
  `--tls off` as `TLSUnavailable` (NBD_REP_ERR_POLICY: no client can open
  it here, the operator must fix the setting). Under `--tls require` no
  export is asked for before TLS.
- Pure functions and error types; no sockets.
"""

from __future__ import annotations

import ipaddress

from vdfarm.nbd.tls_config import ADMIN_NAME

CERT_BINDING = "certificate "  # prefix of a session bound to a certificate identity


class AccessRefused(Exception):
    """An export this client may not open (NBD_REP_ERR_POLICY); one line."""


class PeerMismatch(AccessRefused):
    """A device's live session is bound to another client address."""


class ViewRefused(AccessRefused):
    """A vDisk view asked for from another host without an admin certificate."""


class CertificateRefused(AccessRefused):
    """A client certificate that does not name the device asked for."""


class TLSRequired(AccessRefused):
    """A vDisk that requires TLS, asked for in plaintext where STARTTLS is
    possible (NBD_REP_ERR_TLS_REQD)."""


class TLSUnavailable(AccessRefused):
    """A vDisk that requires TLS, asked for from a server whose TLS is off:
    an operator's error, no client can open it here."""


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
    """Why a connection bound to CONNECTING_FROM may not join DEVICE's live
    session bound to BOUND_TO, or None if it may. A binding is a client
    address or `certificate_binding(name)`."""
    if bound_to is None or bound_to == connecting_from:
        return None
    if bound_to.startswith(CERT_BINDING):
        return (
            f"device {device} is connected with another client certificate; "
            "its session must end before another client can use it"
        )
    if connecting_from is not None and connecting_from.startswith(CERT_BINDING):
        return (
            f"device {device} is connected without a certificate from an address; "
            "its session must end before a certificate can take it"
        )
    return (
        f"device {device} is connected from another address; "
        "its session must end before another address can use it"
    )


def certificate_binding(granted: str) -> str:
    """The session binding of a client let in by certificate name GRANTED."""
    return CERT_BINDING + granted


def certificate_grant(names: frozenset[str], device: str) -> str | None:
    """The name among a verified certificate's NAMES that lets it open
    DEVICE: the device's own name, else `admin`; None if neither."""
    if device in names:
        return device
    if ADMIN_NAME in names:
        return ADMIN_NAME
    return None


def may_open_views(address: str | None, names: frozenset[str] | None) -> bool:
    """True for a loopback client or a verified `admin` certificate."""
    return is_loopback(address) or (names is not None and ADMIN_NAME in names)


def tls_refusal(
    vdisk: str, require_tls: bool, tls_active: bool, starttls_possible: bool
) -> AccessRefused | None:
    """Why a connection may not open an export of VDISK (which REQUIRE_TLS
    or not) with its TLS state, or None if it may."""
    if not require_tls or tls_active:
        return None
    if starttls_possible:
        return TLSRequired(f"vDisk {vdisk} requires TLS: send NBD_OPT_STARTTLS and ask again")
    return TLSUnavailable(f"vDisk {vdisk} requires TLS; this server's --tls is off")
