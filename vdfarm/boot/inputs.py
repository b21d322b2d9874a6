"""What an admin types for the DHCP/TFTP configuration, checked: interface
name, proxy subnet, address range, farm server URLs, TFTP root.

Job: turn each typed value into a value that is safe to write, as is, into
a dnsmasq configuration line and an iPXE script line, or refuse it.
Rules: pure (no I/O). Every parser either answers a checked value or raises
ValueError with a one-line reason naming the value; nothing is fixed up
silently but the normalisations said below (a subnet given with host bits,
a URL's scheme case and trailing slash). A value holding anything outside
printable ASCII (newline, tab, escape, non-ASCII, a space) is refused
before it is parsed, so no line of a generated file can be split or
forged.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

# Linux interface names: at most 15 bytes (IFNAMSIZ - 1); this subset of
# characters is all dnsmasq and `ip` take without quoting.
INTERFACE_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")
# A DNS name: labels of letters, digits and inner hyphens.
LABEL_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# An absolute path of plain characters (dnsmasq reads `,` in tftp-root as an
# interface, `#` as a comment and `"` as a quote).
PATH_RE = re.compile(r"/[A-Za-z0-9_.+/-]*")
MAX_PATH = 1024
MAX_URL = 200


@dataclass(frozen=True)
class ProxyDhcp:
    """Proxy-DHCP beside the site's DHCP server, for the devices of NETWORK."""

    network: ipaddress.IPv4Network


@dataclass(frozen=True)
class FullDhcp:
    """dnsmasq hands out the addresses START..END itself (NETMASK if given)."""

    start: ipaddress.IPv4Address
    end: ipaddress.IPv4Address
    netmask: ipaddress.IPv4Address | None = None


@dataclass(frozen=True)
class ServerUrl:
    """A farm server's REST API base: SCHEME://HOST[:PORT] (no path)."""

    scheme: str
    host: str
    port: int | None

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}" + (f":{self.port}" if self.port else "")


def _plain(what: str, value: str) -> str:
    """VALUE if it is printable ASCII without spaces.

    Raises ValueError.
    """
    if not value:
        raise ValueError(f"{what} is empty")
    if not all(33 <= ord(c) <= 126 for c in value):
        raise ValueError(f"{what} {value!r} holds a space, a control or a non-ASCII character")
    return value


def parse_interface(value: str) -> str:
    """A network interface name (eth0, enp3s0, br-boot, vlan.12).

    Raises ValueError.
    """
    _plain("the interface name", value)
    if not INTERFACE_RE.fullmatch(value) or value in (".", ".."):
        raise ValueError(
            f"invalid interface name {value!r}: at most 15 letters, digits, '_', '.' or '-'"
        )
    return value


def parse_subnet(value: str) -> ipaddress.IPv4Network:
    """An IPv4 subnet ADDRESS/PREFIX (host bits allowed: 192.168.1.10/24 is
    192.168.1.0/24), prefix 8 to 30.

    Raises ValueError.
    """
    _plain("the subnet", value)
    if "/" not in value:
        raise ValueError(f"invalid subnet {value!r}: give ADDRESS/PREFIX, e.g. 192.168.1.0/24")
    try:
        network = ipaddress.IPv4Interface(value).network
    except ValueError:
        raise ValueError(
            f"invalid subnet {value!r}: give an IPv4 ADDRESS/PREFIX, e.g. 192.168.1.0/24"
        ) from None
    if not 8 <= network.prefixlen <= 30:
        raise ValueError(f"invalid subnet {value!r}: the prefix must be 8 to 30")
    return network


def _address(what: str, value: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f"invalid {what} {value!r}: not an IPv4 address") from None


def parse_range(value: str) -> FullDhcp:
    """An address range START,END[,NETMASK]: START <= END, and with NETMASK
    both in one subnet of it, neither its network nor its broadcast address.

    Raises ValueError.
    """
    _plain("the range", value)
    parts = value.split(",")
    if len(parts) not in (2, 3):
        raise ValueError(f"invalid range {value!r}: give START,END[,NETMASK]")
    start = _address("range start", parts[0])
    end = _address("range end", parts[1])
    if int(start) > int(end):
        raise ValueError(f"invalid range {value!r}: {start} comes after {end}")
    if start.is_loopback or start.is_multicast or end.is_multicast or start.is_unspecified:
        raise ValueError(f"invalid range {value!r}: not addresses a device can have")
    netmask = None
    if len(parts) == 3:
        netmask = _address("netmask", parts[2])
        try:
            network = ipaddress.IPv4Network(f"{start}/{netmask}", strict=False)
        except ValueError:
            raise ValueError(f"invalid netmask {parts[2]!r}: not a contiguous mask") from None
        if network.prefixlen > 30:
            raise ValueError(f"invalid netmask {parts[2]!r}: too small a subnet")
        if end not in network:
            raise ValueError(f"invalid range {value!r}: {end} is not in {network}")
        if network.network_address in (start, end) or network.broadcast_address in (start, end):
            raise ValueError(
                f"invalid range {value!r}: {network}'s network and broadcast addresses "
                "are not for devices"
            )
    return FullDhcp(start, end, netmask)


def _host(value: str, url: str) -> str:
    """URL's host part VALUE: an IPv4 address, [IPv6], or a DNS name."""
    if value.startswith("["):
        if not value.endswith("]"):
            raise ValueError(f"invalid server URL {url!r}: bad IPv6 address")
        try:
            ipaddress.IPv6Address(value[1:-1])
        except ValueError:
            raise ValueError(f"invalid server URL {url!r}: bad IPv6 address") from None
        return value.lower()
    if re.fullmatch(r"[0-9.]+", value):
        try:
            return str(ipaddress.IPv4Address(value))
        except ValueError:
            raise ValueError(f"invalid server URL {url!r}: bad IPv4 address") from None
    labels = value.split(".")
    if len(value) > 253 or not all(LABEL_RE.fullmatch(label) for label in labels):
        raise ValueError(f"invalid server URL {url!r}: bad host name {value!r}")
    return value


def parse_server_url(value: str) -> ServerUrl:
    """A farm server's REST API, http(s)://HOST[:PORT][/]: no user, path,
    query or fragment (vdfarm adds /boot/ipxe?mac=…).

    Raises ValueError.
    """
    _plain("the server URL", value)
    if len(value) > MAX_URL:
        raise ValueError(f"invalid server URL {value[:40]!r}…: longer than {MAX_URL} characters")
    try:
        parts = urlsplit(value)
    except ValueError:  # e.g. a bracketed host that is no IPv6 address
        raise ValueError(f"invalid server URL {value!r}: bad IPv6 address") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not value.lower().startswith(f"{scheme}://"):
        raise ValueError(f"invalid server URL {value!r}: give http://HOST[:PORT]")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "?" in value:
        raise ValueError(
            f"invalid server URL {value!r}: give the server only (http://HOST:PORT), "
            "vdfarm adds /boot/ipxe"
        )
    netloc = parts.netloc
    if "@" in netloc:
        raise ValueError(f"invalid server URL {value!r}: no user name or password")
    host, port = netloc, None
    match = re.fullmatch(r"(.*):([0-9]{1,5})", netloc)
    if match and not netloc.endswith("]"):
        host, port = match.group(1), int(match.group(2))
        if not 1 <= port <= 65535:
            raise ValueError(f"invalid server URL {value!r}: port {port} is not 1 to 65535")
    elif ":" in netloc and not (netloc.startswith("[") and netloc.endswith("]")):
        raise ValueError(f"invalid server URL {value!r}: bad port")
    if not host:
        raise ValueError(f"invalid server URL {value!r}: no host")
    return ServerUrl(scheme, _host(host, value), port)


def parse_tftp_root(value: str) -> str:
    """An absolute directory path of plain characters (letters, digits,
    `_ . + / -`), without `..`; trailing slashes dropped.

    Raises ValueError.
    """
    _plain("the TFTP root", value)
    if len(value) > MAX_PATH:
        raise ValueError(f"invalid TFTP root: longer than {MAX_PATH} characters")
    if not PATH_RE.fullmatch(value):
        raise ValueError(
            f"invalid TFTP root {value!r}: give an absolute path of letters, digits and '_ . + / -'"
        )
    if ".." in value.split("/"):
        raise ValueError(f"invalid TFTP root {value!r}: no '..'")
    return value.rstrip("/") or "/"
