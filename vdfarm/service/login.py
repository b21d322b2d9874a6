"""Login: which server a device should stream from, and the alternatives.

Rules:
- The device is found by name or MAC (a name match wins), like an NBD export
  name. The version it must boot is the one the stream would serve it
  (`version_rules.device_boot`; a private vDisk: its newest version).
- The decision is `vdfarm.farm.placement.place` over every server of the
  farm: liveness from heartbeats (the farm's heartbeat timeout), load and
  booting counts from device sessions (the device's own session left out, so
  a reconnect does not count against its old server), verified copies from
  `store_versions`, subnet affinity from the vDisk.
- A pending rebalance move of the device (`move_to_server_id` on its
  session) names the preferred server: it comes first if placement would
  accept it, so the device's next login lands where the rebalance sent it.
- A device that writes to its vDisk (`version_rules.home_server_only`:
  private mode, or a maintenance boot of the open version) may only stream
  from the vDisk's home server (the lock row's `home_server_id`): every
  server writes its own copy, so only the home's is current — and it
  counts as holding the version even while it is not re-hashed after its
  device's writes (`private_copies`): it is the one current copy.
- What the device's agent needs to check and fail over: the served
  version's `sha256` (None while it is written or open for maintenance:
  no fixed hash), the vDisk's virtual `size` and `write_cache_type`, and
  `failover` (`version_rules.may_fail_over`: any server holding a verified
  copy may serve it; False when its writes live on one server).
- `version` (a failover login) is the version the device's agent runs:
  a running device keeps the version it booted until it boots again, so
  the login places it on up servers holding THAT version verified, answers
  its sha256, and records it in the reservation, which the chosen server's
  export resolution honours (`exports`). Allowed only for a version of the
  device's own vDisk that still exists, is sealed, and its device type
  boots (`version_rules.kept_version`); one merged away or deleted is
  NotFound, saying the device must boot again. Without `version` (a boot)
  the device gets the current version, as always.
- `exclude` names servers placement must skip (at most `MAX_EXCLUDED`
  valid server names): an agent failing over away from a server that is
  dead or hung before its heartbeat times out. Every holder excluded:
  Unavailable, saying so.
- Login records one thing: a short reservation (`login_reservations`) of
  the chosen server (and the version a failover login keeps, NULL at a
  boot), which counts on its load and booting until the
  device's session is recorded (when it connects) or `RESERVATION_LIFETIME`
  passes, so devices logging in at once (a boot storm) spread out and
  max-booting holds. Everything else it only reads.
- Reserving logins run one at a time farm-wide, from before they read the
  servers' booting counts to their commit (`_one_at_a_time`: PostgreSQL's
  transaction advisory lock, SQLite's write lock taken first): two logins
  at the same instant, on one server or two, never both take a server's
  last place. A question that reserves nothing takes no lock.
- Cheap, as every boot pays for it: one transaction of three Core
  statements (device + vDisk + versions + own session; servers + load
  counts + verified copy; the reservation, an upsert), no ORM objects. On
  PostgreSQL its commit does not wait for the disk (`synchronous_commit`
  off: a reservation lost in a database crash costs nothing).
- `LoginService` is what the front ends call (`farm.logins`); the module
  functions `login` / `set_subnet_affinity` take anything that has one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import (
    Connection,
    Insert,
    Row,
    Select,
    bindparam,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from vdfarm.farm.models import (
    Device,
    DeviceSession,
    Lock,
    LoginReservation,
    Server,
    StoreVersion,
    Vdisk,
    VdiskVersion,
)
from vdfarm.farm.placement import AFFINITIES, Candidate, DeviceNeed, IpAddress, is_up, place
from vdfarm.service import version_rules as rules
from vdfarm.service.audit import AuditWriter
from vdfarm.service.deps import Clock, SessionFactory
from vdfarm.service.errors import Invalid, NotFound, Unavailable
from vdfarm.service.servers import load_subquery
from vdfarm.service.settings import SettingsService
from vdfarm.service.validation import check_name, name_wins, parse_mac

RESERVATION_LIFETIME = timedelta(seconds=30)  # login to connect: seconds at most
MAX_EXCLUDED = 16  # servers one login may exclude
MAX_VERSION = 2**31 - 1  # a version number the database can hold


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
    sha256: str | None = None
    size: int = 0
    write_cache_type: str = "server-disk"
    failover: bool = False


def check_exclude(names: Sequence[str] | None) -> frozenset[str]:
    """NAMES (server names a login must skip) as a set. Raises Invalid (not
    a list of at most MAX_EXCLUDED valid server names)."""
    if names is None:
        return frozenset()
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise Invalid("invalid exclude: give a list of server names")
    if len(names) > MAX_EXCLUDED:
        raise Invalid(f"invalid exclude: at most {MAX_EXCLUDED} server names")
    return frozenset(check_name("server", name) for name in names)


def check_version(number: object) -> int | None:
    """NUMBER (the version a failover login asks to keep) as an int, None
    staying None. Raises Invalid (not a whole number from 0 to MAX_VERSION)."""
    if number is None:
        return None
    if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= MAX_VERSION:
        raise Invalid(f"invalid version: give a whole number from 0 to {MAX_VERSION}")
    return number


def endpoint_of(row: Any) -> ServerEndpoint:
    """Where devices reach the server of ROW (a `Server`, or a row with its
    name, hostname, nbd_port and api_port)."""
    return ServerEndpoint(row.name, row.hostname, row.nbd_port, row.api_port)


def parse_address(text: str | None) -> IpAddress | None:
    """TEXT as an IP address (None stays None). Raises Invalid."""
    if text is None or text == "":
        return None
    try:
        return ipaddress.ip_address(text.strip())
    except (ValueError, AttributeError) as exc:
        raise Invalid(f"invalid client address {text!r}: give an IPv4 or IPv6 address") from exc


def _device_query(by_mac: bool) -> Select[*tuple[Any, ...]]:
    """The device by :name (or :mac), its vDisk, one row per version, and its
    own session's move order (outer joins: a missing part is NULL)."""
    match = Device.name == bindparam("name")
    if by_mac:
        match = or_(match, Device.mac == bindparam("mac"))
    return (
        select(
            Device.id,
            Device.name,
            Device.device_type,
            Device.vdisk_id,
            Vdisk.name.label("vdisk_name"),
            Vdisk.size.label("vdisk_size"),
            Vdisk.write_cache_type,
            Vdisk.access_mode,
            Vdisk.override_version,
            Vdisk.subnet_affinity,
            VdiskVersion.number,
            VdiskVersion.parent_number,
            VdiskVersion.access,
            VdiskVersion.production_at,
            VdiskVersion.sha256,
            DeviceSession.move_to_server_id,
            Lock.home_server_id,
        )
        .outerjoin(Vdisk, Vdisk.id == Device.vdisk_id)
        .outerjoin(Lock, Lock.vdisk_id == Device.vdisk_id)
        .outerjoin(VdiskVersion, VdiskVersion.vdisk_id == Device.vdisk_id)
        .outerjoin(DeviceSession, DeviceSession.device_id == Device.id)
        .where(match)
    )


_BY_NAME = _device_query(by_mac=False)
_BY_NAME_OR_MAC = _device_query(by_mac=True)

_LOAD = load_subquery(
    bindparam("cutoff", type_=DeviceSession.connected_at.type),
    bindparam("device_id", type_=DeviceSession.device_id.type),
    bindparam("reserved_after", type_=DeviceSession.connected_at.type),
)
_HOLDS = (
    select(literal(1))
    .where(
        StoreVersion.server_id == Server.id,
        StoreVersion.vdisk_id == bindparam("vdisk_id"),
        StoreVersion.version == bindparam("version"),
    )
    .exists()
)
_SERVERS = select(
    Server.id,
    Server.name,
    Server.hostname,
    Server.nbd_port,
    Server.api_port,
    Server.power_rating,
    Server.last_heartbeat,
    Server.max_booting,
    Server.subnet,
    func.coalesce(_LOAD.c.connected, 0).label("connected"),
    func.coalesce(_LOAD.c.booting, 0).label("booting"),
    _HOLDS.label("holds"),
).outerjoin(_LOAD, _LOAD.c.server_id == Server.id)


def _device_rows(connection: Connection, name_or_mac: str) -> Sequence[Row[Any]]:
    """The rows of the device NAME_OR_MAC names (a name match wins over a
    MAC match). Raises NotFound, Invalid (no vDisk assigned)."""
    mac = parse_mac(name_or_mac)
    if mac is None:
        rows = connection.execute(_BY_NAME, {"name": name_or_mac}).all()
    else:
        found = connection.execute(_BY_NAME_OR_MAC, {"name": name_or_mac, "mac": mac}).all()
        rows = name_wins(found, name_or_mac, lambda r: r.name)
    if not rows:
        raise NotFound(f"no device named {name_or_mac}")
    if rows[0].vdisk_id is None:
        raise Invalid(f"device {rows[0].name} has no vDisk assigned")
    return rows


def _candidates(rows: Sequence[Row[Any]], key: tuple[str, int]) -> list[Candidate]:
    return [
        Candidate(
            id=r.id,
            name=r.name,
            last_heartbeat=r.last_heartbeat,
            power_rating=r.power_rating,
            connected=int(r.connected),
            booting=int(r.booting),
            max_booting=r.max_booting,
            subnet=r.subnet,
            versions=frozenset({key}) if r.holds else frozenset(),
        )
        for r in rows
    ]


def _home_reason(
    need: DeviceNeed,
    home: list[Candidate],
    now: datetime,
    timeout: timedelta,
    excluded: frozenset[str],
) -> str:
    """Why a device whose vDisk lives on one server cannot stream from it."""
    if not home:
        return f"vDisk {need.vdisk} is written on a server that is no longer in the farm"
    if home[0].name in excluded:
        return (
            f"vDisk {need.vdisk} is written on server {home[0].name} only, "
            f"which device {need.name} excluded"
        )
    server = home[0]
    state = "up" if is_up(server.last_heartbeat, now, timeout) else "down"
    return (
        f"vDisk {need.vdisk} is written on server {server.name} ({state}), whose store "
        f"holds its only current copy; it cannot take device {need.name} now "
        f"(`vdfarm lock home {need.vdisk} SERVER` makes another server's copy current)"
    )


def _excluded_reason(reason: str, candidates: list[Candidate], allowed: list[Candidate]) -> str:
    """REASON, naming the servers the device excluded if it left any out."""
    left_out = sorted(c.name for c in candidates if c not in allowed)
    if not left_out:
        return reason
    return f"{reason} (excluded by the device: {', '.join(left_out)})"


RESERVING_LOGINS_LOCK = 0x7664666D6C6F67  # PostgreSQL advisory lock key ("vdfmlog")


def _one_at_a_time(connection: Connection, dialect: str) -> None:
    """Wait until no other reserving login is between its read of the
    booting counts and its commit (see the module's rules); held to the end
    of this transaction."""
    if dialect == "postgresql":
        connection.execute(select(func.pg_advisory_xact_lock(RESERVING_LOGINS_LOCK)))
    else:  # SQLite: a write first takes the database's one write lock
        connection.execute(update(LoginReservation).where(literal(False)).values(device_id=0))


def _reservation_upsert(dialect: str) -> Insert:
    """INSERT … ON CONFLICT (device) DO UPDATE of a device's reservation."""
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(LoginReservation).values(
        device_id=bindparam("device_id"),
        server_id=bindparam("server_id"),
        reserved_at=bindparam("at"),
        version=bindparam("version"),
    )
    return statement.on_conflict_do_update(
        index_elements=[LoginReservation.device_id],
        set_={
            "server_id": statement.excluded.server_id,
            "reserved_at": statement.excluded.reserved_at,
            "version": statement.excluded.version,
        },
    )


_RESERVE = {dialect: _reservation_upsert(dialect) for dialect in ("postgresql", "sqlite")}


class LoginService:
    """Login (where a device streams from) and the subnet affinity it honours."""

    def __init__(
        self,
        session: SessionFactory,
        clock: Clock,
        audit: AuditWriter,
        settings: SettingsService,
    ) -> None:
        self._session = session
        self._clock = clock
        self._audit = audit
        self._settings = settings

    def login(
        self,
        name_or_mac: str,
        client_ip: str | None = None,
        reserve: bool = True,
        exclude: Sequence[str] | None = None,
        version: int | None = None,
    ) -> LoginResult:
        """Where the device NAME_OR_MAC (logging in from CLIENT_IP, if known)
        should stream from: the destination of its pending rebalance move if
        that server may serve it, else the least busy, never a server named
        in EXCLUDE. RESERVE=False answers without reserving (an admin's
        question, not a device on its way). VERSION: the version the running
        device keeps (a failover login; None: a boot, the current version).

        Raises NotFound ("no device named X"; VERSION merged away or
        deleted), Invalid (no vDisk assigned, bad CLIENT_IP, bad EXCLUDE, a
        VERSION the device may not keep), Unavailable (no server is up; the vDisk
        version is held by no up server, or only by excluded ones; fixed
        subnet affinity unmet; every holder at its max-booting limit; DB down).
        """
        address = parse_address(client_ip)
        excluded = check_exclude(exclude)
        kept = check_version(version)
        now = self._clock()
        with self._session() as session:
            connection = session.connection()
            dialect = connection.dialect.name
            if dialect == "postgresql":  # the reservation is soft state: no wait for the disk
                connection.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            rows = _device_rows(connection, name_or_mac)
            device = rows[0]
            states = sorted(
                (
                    rules.VersionState(
                        number=r.number,
                        parent=r.parent_number,
                        access=r.access,
                        production_at=r.production_at,
                    )
                    for r in rows
                    if r.number is not None
                ),
                key=lambda v: v.number,
            )
            choice = rules.device_boot(
                states, device.access_mode, device.device_type, device.override_version, now
            )
            if kept is not None:  # a running device stays on what it booted
                choice = rules.kept_version(
                    states,
                    device.access_mode,
                    device.device_type,
                    kept,
                    choice,
                    now,
                    (device.name, device.vdisk_name),
                )
            version = choice.number
            state = rules.shown_access(rules.find(states, version, device.vdisk_name), now)
            home_only = rules.home_server_only(device.access_mode, device.device_type, state)
            booted = next(r for r in rows if r.number == version)
            if reserve:
                _one_at_a_time(connection, dialect)
            servers = connection.execute(
                _SERVERS,
                {
                    "cutoff": self._settings.boot_cutoff(now),
                    "device_id": device.id,
                    "reserved_after": now - RESERVATION_LIFETIME,
                    "vdisk_id": device.vdisk_id,
                    "version": version,
                },
            ).all()
            need = DeviceNeed(
                name=device.name,
                vdisk=device.vdisk_name,
                version=version,
                affinity=device.subnet_affinity,
                address=address,
            )
            candidates = _candidates(servers, need.key)
            home = device.home_server_id if home_only else None
            if home is not None:  # only the home's copy holds the writes
                candidates = [
                    replace(c, versions=frozenset({need.key})) for c in candidates if c.id == home
                ]
            timeout = self._settings.heartbeat_timeout()
            allowed = [c for c in candidates if c.name not in excluded]
            placement = place(need, allowed, now, timeout, preferred=device.move_to_server_id)
            if placement.primary is None:  # (the transaction rolls back: nothing written)
                raise Unavailable(
                    _home_reason(need, candidates, now, timeout, excluded)
                    if home is not None
                    else _excluded_reason(placement.reason, candidates, allowed)
                )
            if reserve:
                connection.execute(
                    _RESERVE[dialect],
                    {
                        "device_id": device.id,
                        "server_id": placement.primary.id,
                        "at": now,
                        "version": kept,
                    },
                )
        endpoints = {r.id: endpoint_of(r) for r in servers}
        return LoginResult(
            device=need.name,
            vdisk=need.vdisk,
            version=version,
            server=endpoints[placement.primary.id],
            alternatives=tuple(endpoints[c.id] for c in placement.alternatives),
            reason=placement.reason,
            sha256=None if home_only or state == rules.MAINTENANCE else booted.sha256,
            size=device.vdisk_size,
            write_cache_type=device.write_cache_type,
            failover=rules.may_fail_over(
                device.access_mode, device.device_type, state, device.write_cache_type
            ),
        )

    def set_subnet_affinity(self, vdisk_name: str, affinity: str, actor: str | None = None) -> str:
        """Set the subnet affinity of a vDisk ('none', 'best-effort', 'fixed');
        return it. Audited as `vdisk.set`.

        Raises Invalid (unknown affinity), NotFound, Unavailable.
        """
        if affinity not in AFFINITIES:
            raise Invalid(f"invalid subnet affinity {affinity!r}: use {', '.join(AFFINITIES)}")
        with self._session() as session:
            vdisk = session.scalars(select(Vdisk).where(Vdisk.name == vdisk_name)).one_or_none()
            if vdisk is None:
                raise NotFound(f"no vDisk named {vdisk_name}")
            before = {"subnet_affinity": vdisk.subnet_affinity}
            vdisk.subnet_affinity = affinity
            self._audit.record(
                session,
                actor=actor,
                action="vdisk.set",
                target_type="vdisk",
                target_name=vdisk_name,
                before=before,
                after={"subnet_affinity": affinity},
            )
        return affinity


class HasLogins(Protocol):
    """A holder of the login service (the `Farm` façade)."""

    logins: LoginService


def login(
    farm: HasLogins,
    name_or_mac: str,
    client_ip: str | None = None,
    reserve: bool = True,
    exclude: Sequence[str] | None = None,
    version: int | None = None,
) -> LoginResult:
    """`farm.logins.login(...)` for a caller holding a Farm (see `LoginService.login`).

    Raises NotFound, Invalid, Unavailable.
    """
    return farm.logins.login(name_or_mac, client_ip, reserve, exclude, version)


def set_subnet_affinity(
    farm: HasLogins, vdisk_name: str, affinity: str, actor: str | None = None
) -> str:
    """`farm.logins.set_subnet_affinity(...)` for a caller holding a Farm.

    Raises Invalid, NotFound, Unavailable.
    """
    return farm.logins.set_subnet_affinity(vdisk_name, affinity, actor)
