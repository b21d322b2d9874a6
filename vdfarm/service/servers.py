"""The servers of the farm: registration at start, heartbeats, load, listing.

Rules:
- A server's row is created by `init` (`vdfarm.service.identity`, which
  also keeps server.json); `register` (called by the stream
  server at start) and `heartbeat` only update it.
- `hostname` is the address devices and other servers reach this server at
  (with `api_port` and `api_tls`, the URL of its REST API for its peers)
  (`server run --advertise`; by default the listening address, or the host
  name when that is a wildcard): the login answer tells devices to use it.
- Liveness: a server is *up* when its last heartbeat is at most the farm's
  heartbeat timeout old (`SettingsService.heartbeat_timeout`, default 3 s;
  the stream beats every second). A session counts as *booting* during the
  farm's boot phase (`SettingsService.boot_cutoff`, default 60 s) after it
  connected.
- Inventory: `heartbeat` and `register` also record which vDisk versions
  this server's store holds complete and verified (`store_versions`; the
  rules are in `vdfarm.service.inventory`).
"""

from __future__ import annotations

import builtins
import ipaddress
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BindParameter,
    CompoundSelect,
    Select,
    Subquery,
    case,
    func,
    select,
    union_all,
    update,
)
from sqlalchemy.orm import Session

import vdfarm
from vdfarm.farm.models import DeviceSession, LoginReservation, Server, StoreVersion, Vdisk
from vdfarm.farm.placement import is_up, parse_subnet
from vdfarm.service.audit import AuditWriter
from vdfarm.service.deps import Clock, SessionFactory, ThisServer
from vdfarm.service.errors import Invalid, NotFound
from vdfarm.service.inventory import held_in_store, store_boot_inventory, store_inventory
from vdfarm.service.settings import SettingsService
from vdfarm.service.validation import UNCHANGED
from vdfarm.store.store import Store

MAX_MAX_BOOTING = 1_000_000
MAX_ADVERTISE_LEN = 255  # the width of servers.hostname


@dataclass(frozen=True)
class ServerInfo:
    """A server of the farm as the front ends show it."""

    id: int
    uuid: str
    name: str
    hostname: str
    nbd_port: int | None
    api_port: int | None
    power_rating: float
    store_path: str
    version: str
    last_heartbeat: datetime | None
    created_at: datetime
    subnet: str | None = None
    max_booting: int = 500
    up: bool = False
    connected: int = 0
    booting: int = 0
    api_tls: bool = False


@dataclass(frozen=True)
class LoadCounts:
    """Connected and booting sessions of one server."""

    connected: int = 0
    booting: int = 0


def server_info(row: Server, *, up: bool = False, counts: LoadCounts = LoadCounts()) -> ServerInfo:
    return ServerInfo(
        id=row.id,
        uuid=row.uuid,
        name=row.name,
        hostname=row.hostname,
        nbd_port=row.nbd_port,
        api_port=row.api_port,
        power_rating=row.power_rating,
        store_path=row.store_path,
        version=row.version,
        last_heartbeat=row.last_heartbeat,
        created_at=row.created_at,
        subnet=row.subnet,
        max_booting=row.max_booting,
        up=up,
        connected=counts.connected,
        booting=counts.booting,
        api_tls=row.api_tls,
    )


def load_subquery(
    boot_cutoff: datetime | BindParameter[datetime],
    exclude_device_id: int | BindParameter[int] | None = None,
    reserved_after: datetime | BindParameter[datetime] | None = None,
) -> Subquery:
    """Per server with sessions: `server_id`, `connected` and `booting` (the
    sessions connected after BOOT_CUTOFF), leaving out EXCLUDE_DEVICE_ID's
    own session: one grouped scan of the sessions, to join to `servers`
    (outer: a server without sessions has no row). With RESERVED_AFTER, the
    login reservations made after it count too, as connected and booting
    devices (login's view: devices on their way). Every argument may be a
    bind parameter (prepared statements)."""
    rows: Select[int, int, datetime] | CompoundSelect[int, int, datetime]
    rows = select(
        DeviceSession.server_id.label("server_id"),
        DeviceSession.device_id.label("device_id"),
        DeviceSession.connected_at.label("since"),
    )
    if reserved_after is not None:
        rows = union_all(
            rows,
            select(
                LoginReservation.server_id, LoginReservation.device_id, LoginReservation.reserved_at
            ).where(LoginReservation.reserved_at > reserved_after),
        )
    load = rows.subquery("devices")
    booting = func.sum(case((load.c.since > boot_cutoff, 1), else_=0))
    query = select(
        load.c.server_id, func.count().label("connected"), booting.label("booting")
    ).group_by(load.c.server_id)
    if exclude_device_id is not None:
        query = query.where(load.c.device_id != exclude_device_id)
    return query.subquery("load")


def load_counts(
    session: Session, boot_cutoff: datetime, exclude_device_id: int | None = None
) -> dict[int, LoadCounts]:
    """Server id -> its connected and booting sessions (those connected after
    BOOT_CUTOFF boot), leaving out EXCLUDE_DEVICE_ID's own session. A server
    without sessions is absent (its counts are `LoadCounts()`).

    One grouped query (`load_subquery`), so a listing stays cheap on a farm
    of thousands of devices.
    """
    load = load_subquery(boot_cutoff, exclude_device_id)
    rows = session.execute(select(load.c.server_id, load.c.connected, load.c.booting)).all()
    return {
        server_id: LoadCounts(int(connected), int(booting or 0))
        for server_id, connected, booting in rows
    }


def check_subnet(subnet: str) -> str:
    """SUBNET as normalised CIDR text. Raises Invalid."""
    network = parse_subnet(subnet) if isinstance(subnet, str) and "/" in subnet else None
    if network is None:
        raise Invalid(f"invalid subnet {subnet!r}: give CIDR like 10.1.0.0/16")
    return str(network)


def check_advertise(advertise: str) -> str:
    """ADVERTISE (an address or name devices reach this server at) if valid:
    non-empty, no spaces or control characters, at most 255 characters.

    Raises Invalid.
    """
    if (
        not isinstance(advertise, str)
        or not advertise
        or len(advertise) > MAX_ADVERTISE_LEN
        or any(c.isspace() or not c.isprintable() for c in advertise)
    ):
        shown = repr(advertise) if len(repr(advertise)) <= 60 else repr(advertise)[:57] + "..."
        raise Invalid(
            f"invalid advertised address {shown}: give the host name or "
            f"IP address devices reach this server at (no spaces, at most "
            f"{MAX_ADVERTISE_LEN} characters)"
        )
    return advertise


def is_wildcard(host: str) -> bool:
    """True if listening on HOST means every address (0.0.0.0, ::, empty)."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host == ""


class ServerService:
    """Servers of the farm: registration at start, heartbeats, inventory, listing."""

    def __init__(
        self,
        session: SessionFactory,
        clock: Clock,
        audit: AuditWriter,
        here: ThisServer,
        store: Store,
        settings: SettingsService,
    ) -> None:
        self._session = session
        self._clock = clock
        self._audit = audit
        self._here = here
        self._store = store
        self._settings = settings

    def timeout(self) -> timedelta:
        """How old a heartbeat may be for its server to count as up (the
        farm's setting: `SettingsService.heartbeat_timeout`)."""
        return self._settings.heartbeat_timeout()

    def boot_cutoff(self, now: datetime) -> datetime:
        """Sessions connected after this moment are booting (the farm's
        setting: `SettingsService.boot_cutoff`)."""
        return self._settings.boot_cutoff(now)

    def register(
        self,
        nbd_port: int,
        api_port: int | None = None,
        advertise: str | None = None,
        api_tls: bool = False,
    ) -> ServerInfo:
        """Record this server's advertised address (ADVERTISE; None: the
        host name), ports, whether its REST API speaks HTTPS (API_TLS: peers
        replicating from it need the scheme), version and a heartbeat.

        Raises Invalid (bad port or address; nothing changed), NotFound (row
        gone), Unavailable (DB down).
        """
        for port in (nbd_port, api_port):
            if port is not None and (not isinstance(port, int) or not 0 < port < 65536):
                raise Invalid(f"invalid port {port!r}: give 1-65535")
        hostname = socket.gethostname() if advertise is None else check_advertise(advertise)
        now = self._clock()
        with self._session() as session:
            row = self._this_row(session)
            row.hostname = hostname
            row.nbd_port, row.api_port = nbd_port, api_port
            row.api_tls = bool(api_tls)
            row.version = vdfarm.__version__
            row.last_heartbeat = now
            session.flush()
            self._record_inventory(session, now)
            return server_info(row, up=True)

    def heartbeat(self, inventory: bool = True) -> None:
        """Set this server's last_heartbeat to now and (unless INVENTORY is
        False) refresh the versions its store holds. The stream server calls
        it every second.

        Raises Unavailable (DB down).
        """
        now = self._clock()
        with self._session() as session:
            held = held_in_store(self._store, session) if inventory else None
            session.execute(
                update(Server).where(Server.id == self._here.id).values(last_heartbeat=now)
            )
            if held is not None:
                store_inventory(session, self._here.id, held[0], now)
                store_boot_inventory(session, self._here.id, held[1], now)

    def record_inventory(self) -> list[tuple[str, int]]:
        """Record which vDisk versions this store holds verified; return them
        as sorted (vDisk name, version). Raises Unavailable (DB down)."""
        with self._session() as session:
            return self._record_inventory(session, self._clock())

    def inventory(self) -> dict[str, list[tuple[str, int]]]:
        """Server name -> sorted (vDisk name, version) it holds verified, for
        every server of the farm. Raises Unavailable (DB down)."""
        query = (
            select(Server.name, Vdisk.name, StoreVersion.version)
            .join(Server, Server.id == StoreVersion.server_id)
            .join(Vdisk, Vdisk.id == StoreVersion.vdisk_id)
        )
        with self._session() as session:
            names = session.scalars(select(Server.name).order_by(Server.name)).all()
            held: dict[str, list[tuple[str, int]]] = {name: [] for name in names}
            for server, vdisk, version in session.execute(query).all():
                held[server].append((vdisk, version))
        return {name: sorted(pairs) for name, pairs in held.items()}

    def list(self) -> list[ServerInfo]:
        """Every server of the farm, by name, with liveness and load.

        Raises Unavailable (DB down).
        """
        now = self._clock()
        with self._session() as session:
            rows = session.scalars(select(Server).order_by(Server.name)).all()
            counts = load_counts(session, self.boot_cutoff(now))
            return [
                server_info(
                    r,
                    up=is_up(r.last_heartbeat, now, self.timeout()),
                    counts=counts.get(r.id, LoadCounts()),
                )
                for r in rows
            ]

    def configure(
        self,
        name: str,
        *,
        power_rating: float | None = None,
        subnet: Any = UNCHANGED,
        max_booting: int | None = None,
        actor: str | None = None,
    ) -> ServerInfo:
        """Change a server's power rating (> 0), subnet (CIDR text; None
        clears it) or max-booting limit (>= 1). Audited as `server.set`.

        Raises Invalid (bad value, nothing to change), NotFound, Unavailable.
        """
        changes = _checked_server_changes(power_rating, subnet, max_booting)
        now = self._clock()
        with self._session() as session:
            row = session.scalars(select(Server).where(Server.name == name)).one_or_none()
            if row is None:
                raise NotFound(f"no server named {name}")
            before = server_info(row)
            for column, value in changes.items():
                setattr(row, column, value)
            session.flush()
            after = server_info(row)
            self._audit.record(
                session,
                actor=actor,
                at=now,
                action="server.set",
                target_type="server",
                target_name=name,
                before=before,
                after=after,
            )
            return after

    def _record_inventory(self, session: Session, now: datetime) -> builtins.list[tuple[str, int]]:
        held, boot = held_in_store(self._store, session)
        store_boot_inventory(session, self._here.id, boot, now)
        return store_inventory(session, self._here.id, held, now)

    def _this_row(self, session: Session) -> Server:
        row = session.get(Server, self._here.id)
        if row is None:
            raise NotFound(f"server {self._here.name} is no longer in the farm database")
        return row


def _checked_server_changes(
    power_rating: float | None, subnet: Any, max_booting: int | None
) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if power_rating is not None:
        if (
            not isinstance(power_rating, int | float)
            or isinstance(power_rating, bool)
            or not 0 < power_rating < 1e6
        ):
            raise Invalid(f"invalid power rating {power_rating!r}: give a number > 0")
        changes["power_rating"] = float(power_rating)
    if subnet is not UNCHANGED:
        changes["subnet"] = None if subnet in (None, "") else check_subnet(subnet)
    if max_booting is not None:
        if (
            not isinstance(max_booting, int)
            or isinstance(max_booting, bool)
            or not 1 <= max_booting <= MAX_MAX_BOOTING
        ):
            raise Invalid(f"invalid max-booting {max_booting!r}: give 1-{MAX_MAX_BOOTING}")
        changes["max_booting"] = max_booting
    if not changes:
        raise Invalid("nothing to change: give a power rating, subnet or max-booting")
    return changes
