"""Login: which server a device should stream from, and the alternatives.

Rules:
- The device is found by name or MAC (a name match wins), like an NBD export
  name. The version it must boot is the one the stream would serve it
  (`version_rules.boot_choice`; a private vDisk: its newest version).
- The decision is `vdfarm.farm.placement.place` over every server of the
  farm: liveness from heartbeats (`farm.servers.heartbeat_timeout`), load and
  booting counts from device sessions (the device's own session left out, so
  a reconnect does not count against its old server), verified copies from
  `store_versions`, subnet affinity from the vDisk.
- Login only reads: it records nothing (the session is recorded when the
  device connects to the chosen server).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from vdfarm.farm.models import Server, StoreVersion, Vdisk
from vdfarm.farm.placement import AFFINITIES, Candidate, DeviceNeed, IpAddress, place
from vdfarm.service import audit
from vdfarm.service import version_rules as rules
from vdfarm.service.chains import states_of, version_rows
from vdfarm.service.errors import Invalid, NotFound, Unavailable
from vdfarm.service.exports import device_and_vdisk
from vdfarm.service.servers import LoadCounts, load_counts

if TYPE_CHECKING:
    from vdfarm.service.context import Farm


@dataclass(frozen=True)
class ServerEndpoint:
    """Where a device reaches a server."""

    name: str
    host: str
    nbd_port: int | None
    api_port: int | None


@dataclass(frozen=True)
class LoginResult:
    """The server a device should stream from, the ordered alternatives, and why."""

    device: str
    vdisk: str
    version: int
    server: ServerEndpoint
    alternatives: tuple[ServerEndpoint, ...]
    reason: str


def endpoint_of(row: Server) -> ServerEndpoint:
    """Where devices reach the server of ROW."""
    return ServerEndpoint(row.name, row.hostname, row.nbd_port, row.api_port)


def parse_address(text: str | None) -> IpAddress | None:
    """TEXT as an IP address (None stays None). Raises Invalid."""
    if text is None or text == "":
        return None
    try:
        return ipaddress.ip_address(text.strip())
    except (ValueError, AttributeError) as exc:
        raise Invalid(f"invalid client address {text!r}: give an IPv4 or IPv6 address") from exc


def boot_version(session: Session, vdisk: Vdisk, device_type: str, farm: Farm) -> int:
    """The version number a device of DEVICE_TYPE boots from VDISK now."""
    states = states_of(version_rows(session, vdisk.id))
    if vdisk.access_mode == "private":
        return rules.newest(states).number
    return rules.boot_choice(states, device_type, vdisk.override_version, farm.now()).number


def _candidates(
    session: Session, farm: Farm, vdisk: Vdisk, version: int, device_id: int
) -> tuple[list[Candidate], dict[int, ServerEndpoint]]:
    key = (vdisk.name, version)
    holders = set(session.scalars(select(StoreVersion.server_id).where(
        StoreVersion.vdisk_id == vdisk.id, StoreVersion.version == version)).all())
    counts = load_counts(session, farm.servers.boot_cutoff(farm.now()), device_id)
    candidates, endpoints = [], {}
    for row in session.scalars(select(Server)).all():
        load = counts.get(row.id, LoadCounts())
        candidates.append(Candidate(
            id=row.id, name=row.name, last_heartbeat=row.last_heartbeat,
            power_rating=row.power_rating, connected=load.connected, booting=load.booting,
            max_booting=row.max_booting, subnet=row.subnet,
            versions=frozenset({key}) if row.id in holders else frozenset()))
        endpoints[row.id] = endpoint_of(row)
    return candidates, endpoints


def login(farm: Farm, name_or_mac: str, client_ip: str | None = None) -> LoginResult:
    """Where the device NAME_OR_MAC (logging in from CLIENT_IP, if known)
    should stream from.

    Raises NotFound ("no device named X"), Invalid (no vDisk assigned, bad
    CLIENT_IP), Unavailable (no server is up; the vDisk version is held by
    no up server; fixed subnet affinity unmet; every holder at its
    max-booting limit; DB down).
    """
    address = parse_address(client_ip)
    with farm.session() as session:
        device, vdisk = device_and_vdisk(session, name_or_mac)
        version = boot_version(session, vdisk, device.device_type, farm)
        candidates, endpoints = _candidates(session, farm, vdisk, version, device.id)
        need = DeviceNeed(name=device.name, vdisk=vdisk.name, version=version,
                          affinity=vdisk.subnet_affinity, address=address)
    placement = place(need, candidates, farm.now(), farm.servers.timeout())
    if placement.primary is None:
        raise Unavailable(placement.reason)
    return LoginResult(
        device=need.name, vdisk=need.vdisk, version=version,
        server=endpoints[placement.primary.id],
        alternatives=tuple(endpoints[c.id] for c in placement.alternatives),
        reason=placement.reason,
    )


def set_subnet_affinity(farm: Farm, vdisk_name: str, affinity: str,
                        actor: str | None = None) -> str:
    """Set the subnet affinity of a vDisk ('none', 'best-effort', 'fixed');
    return it. Audited as `vdisk.set`.

    Raises Invalid (unknown affinity), NotFound, Unavailable.
    """
    if affinity not in AFFINITIES:
        raise Invalid(f"invalid subnet affinity {affinity!r}: use {', '.join(AFFINITIES)}")
    with farm.session() as session:
        vdisk = session.scalars(select(Vdisk).where(Vdisk.name == vdisk_name)).one_or_none()
        if vdisk is None:
            raise NotFound(f"no vDisk named {vdisk_name}")
        before = {"subnet_affinity": vdisk.subnet_affinity}
        vdisk.subnet_affinity = affinity
        audit.record(session, actor=actor or farm.actor, at=farm.now(), action="vdisk.set",
                     target_type="vdisk", target_name=vdisk_name, before=before,
                     after={"subnet_affinity": affinity})
    return affinity
