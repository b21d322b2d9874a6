"""Placement: which server a device should stream from, and the alternatives.

Rules (pure: no database, no I/O, no clock — `now` is an argument):
- A server is *up* when its last heartbeat is at most `timeout` old.
- Only up servers holding a verified copy of the (vDisk, version) the device
  must boot are considered.
- Subnet affinity of the vDisk: `none` ignores subnets; `best-effort` puts the
  servers whose subnet contains the device's address first; `fixed` keeps
  only those (a device whose address is unknown matches no subnet).
- A server with `booting >= max_booting` takes no further booting device
  (every login is a boot): it is left out.
- Order: affinity group, then load = connected / power_rating (a rating of
  0 or less means "last resort"), then booting / power_rating, then name and
  id, so equal inputs always give the same answer.
- A `preferred` server (the destination of the device's pending rebalance
  move) comes first if it passes every rule above (up, holds the version,
  affinity, below max-booting); the others follow in the order above. A
  preferred server that fails a rule is ignored: the order is as without it.
- When nothing fits, `primary` is None and `reason` says why in one line.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

AFFINITY_NONE = "none"
AFFINITY_BEST_EFFORT = "best-effort"
AFFINITY_FIXED = "fixed"
AFFINITIES = (AFFINITY_NONE, AFFINITY_BEST_EFFORT, AFFINITY_FIXED)
DEFAULT_TIMEOUT = timedelta(seconds=3)

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
VersionKey = tuple[str, int]  # (vDisk name, version number)


@dataclass(frozen=True)
class DeviceNeed:
    """What placement needs to know of the device logging in."""

    name: str
    vdisk: str
    version: int
    affinity: str = AFFINITY_NONE
    address: IpAddress | None = None

    @property
    def key(self) -> VersionKey:
        return (self.vdisk, self.version)


@dataclass(frozen=True)
class Candidate:
    """A server of the farm as placement sees it."""

    id: int
    name: str
    last_heartbeat: datetime | None
    power_rating: float = 1.0
    connected: int = 0
    booting: int = 0
    max_booting: int = 500
    subnet: str | None = None
    versions: frozenset[VersionKey] = frozenset()


@dataclass(frozen=True)
class Placement:
    """The chosen server (None: nothing fits), the ordered alternatives, and why."""

    primary: Candidate | None
    alternatives: tuple[Candidate, ...]
    reason: str


def is_up(last_heartbeat: datetime | None, now: datetime, timeout: timedelta) -> bool:
    """True if a heartbeat at LAST_HEARTBEAT is at most TIMEOUT old at NOW."""
    return last_heartbeat is not None and now - last_heartbeat <= timeout


def parse_subnet(subnet: str | None) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """SUBNET (CIDR text) as a network, or None if absent or malformed."""
    if not subnet:
        return None
    try:
        return ipaddress.ip_network(subnet, strict=False)
    except ValueError:
        return None


def in_subnet(address: IpAddress | None, subnet: str | None) -> bool:
    """True if ADDRESS is known and inside SUBNET (CIDR text)."""
    network = parse_subnet(subnet)
    return address is not None and network is not None and address in network


def load(connected: int, power_rating: float) -> float:
    """Connected devices per unit of power (a rating <= 0: infinitely loaded)."""
    return connected / power_rating if power_rating > 0 else math.inf


def order_key(candidate: Candidate, device: DeviceNeed) -> tuple[object, ...]:
    """The sort key of a candidate for DEVICE: affinity group, load, tie-breaks."""
    away = device.affinity == AFFINITY_BEST_EFFORT and not in_subnet(
        device.address, candidate.subnet
    )
    return (
        away,
        load(candidate.connected, candidate.power_rating),
        load(candidate.booting, candidate.power_rating),
        candidate.name,
        candidate.id,
    )


def _nowhere(reason: str) -> Placement:
    return Placement(primary=None, alternatives=(), reason=reason)


def _version_text(device: DeviceNeed) -> str:
    return f"vDisk {device.vdisk} version {device.version}"


def place(
    device: DeviceNeed,
    candidates: Sequence[Candidate],
    now: datetime,
    timeout: timedelta = DEFAULT_TIMEOUT,
    preferred: int | None = None,
) -> Placement:
    """Where DEVICE should stream from at NOW, among CANDIDATES; the
    candidate with id PREFERRED first if it may serve DEVICE.

    Never raises for farm states: an impossible placement is a Placement
    with `primary` None and the reason.
    """
    up = [c for c in candidates if is_up(c.last_heartbeat, now, timeout)]
    if not up:
        return _nowhere("no server is up")
    holders = [c for c in up if device.key in c.versions]
    if not holders:
        return _nowhere(f"{_version_text(device)} is held by no up server")
    if device.affinity == AFFINITY_FIXED:
        holders = [c for c in holders if in_subnet(device.address, c.subnet)]
        if not holders:
            where = device.address if device.address is not None else "an unknown address"
            return _nowhere(
                f"vDisk {device.vdisk} has fixed subnet affinity and no up server "
                f"holding version {device.version} is in the subnet of {where}"
            )
    free = [c for c in holders if c.booting < c.max_booting]
    if not free:
        return _nowhere(
            f"every up server holding {_version_text(device)} already has its "
            "maximum of booting devices; retry shortly"
        )
    ordered = sorted(free, key=lambda c: order_key(c, device))
    moved_to = next((c for c in ordered if c.id == preferred), None)
    if moved_to is not None:
        reason = (
            f"moved by a rebalance to {moved_to.name}, one of {len(ordered)} up "
            f"server(s) holding {_version_text(device)}: {moved_to.connected} "
            f"connected, power {moved_to.power_rating:g}"
        )
        return Placement(
            primary=moved_to,
            reason=reason,
            alternatives=tuple(c for c in ordered if c is not moved_to),
        )
    primary = ordered[0]
    reason = (
        f"least busy of {len(ordered)} up server(s) holding {_version_text(device)}: "
        f"{primary.connected} connected, power {primary.power_rating:g}"
    )
    return Placement(primary=primary, alternatives=tuple(ordered[1:]), reason=reason)
