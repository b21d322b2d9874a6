"""Store sets: which vDisks go to which servers, and how fast and when they
are copied there.

Rules:
- A store set (`vdfarm store add|set`) is a name, the servers it is present
  on (none listed: every server of the farm, those that join later too), a
  copy cap in bytes per second (None: none) and copy windows (none: copies
  run at any time). Every vDisk belongs to one: `default` (made by the
  migration) unless its import or `vdisk set --store` names another.
- Every value is checked before anything is written: the name
  (`check_name`), servers by name (NotFound), windows and rates
  (`vdfarm.farm.windows`; Invalid with its one line).
- `add_store_set` / `change_store_set` run in the caller's transaction and
  write their audit row there (`store.add`, `store.set`, before/after).
- The readers (`find_store_set`, `narrowed_servers`, `servers_of`) only
  read; replication and status build on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from vdfarm.farm.models import Server, StoreSet, StoreSetServer, Vdisk
from vdfarm.farm.windows import (
    parse_rate,
    parse_windows,
    windows_of_text,
    windows_text,
)
from vdfarm.service.audit import AuditWriter
from vdfarm.service.errors import Conflict, Invalid, NotFound
from vdfarm.service.validation import check_name

DEFAULT_STORE = "default"
ALL_SERVERS = "all"


@dataclass(frozen=True)
class StoreSetInfo:
    """A store set as the front ends show it. `servers` is empty when it is
    on every server of the farm."""

    name: str
    servers: tuple[str, ...]
    max_rate_bps: int | None
    windows: tuple[str, ...]
    vdisks: tuple[str, ...]


def find_store_set(session: Session, name: str) -> StoreSet:
    """The store set named NAME. Raises NotFound."""
    row = session.scalars(select(StoreSet).where(StoreSet.name == name)).one_or_none()
    if row is None:
        raise NotFound(f"no store named {name}")
    return row


def narrowed_servers(session: Session) -> dict[int, frozenset[int]]:
    """Store set id -> the ids of the servers it is narrowed to; a set on
    every server of the farm is absent."""
    narrowed: dict[int, set[int]] = {}
    for store_set_id, server_id in session.execute(
        select(StoreSetServer.store_set_id, StoreSetServer.server_id)
    ).all():
        narrowed.setdefault(store_set_id, set()).add(server_id)
    return {key: frozenset(ids) for key, ids in narrowed.items()}


def servers_of(
    narrowed: dict[int, frozenset[int]], store_set_id: int, every_server: frozenset[int]
) -> frozenset[int]:
    """The servers of store set STORE_SET_ID: those it is narrowed to, else
    EVERY_SERVER of the farm."""
    return narrowed.get(store_set_id, every_server)


def checked_server_names(servers: Sequence[str]) -> tuple[str, ...]:
    """SERVERS (names, each possibly comma-separated) as distinct names in
    the order given; () for every server (none given, or `all`).

    Raises Invalid (`all` with names, a bad name).
    """
    if isinstance(servers, str) or not all(isinstance(s, str) for s in servers):
        raise Invalid("invalid servers: give server names, or all")
    names: list[str] = []
    for item in servers:
        for part in item.split(","):
            name = part.strip()
            if name and name not in names:
                names.append(name)
    if ALL_SERVERS in names:
        if len(names) > 1:
            raise Invalid("give server names, or all, not both")
        return ()
    for name in names:
        check_name("server", name)
    return tuple(names)


def checked_rate(max_rate: str | int | None) -> int | None:
    """MAX_RATE ("50MB/s", bytes/s as an int; "none" or 0: no cap) as
    bytes/s or None. Raises Invalid."""
    if max_rate is None:
        return None
    try:
        return parse_rate(max_rate)
    except ValueError as exc:
        raise Invalid(str(exc)) from exc


def checked_windows(windows: Sequence[str]) -> str:
    """WINDOWS ("HH:MM-HH:MM" each, or comma-separated) as the database
    keeps them ("" for none). Raises Invalid."""
    if isinstance(windows, str):
        windows = [windows]
    try:
        return windows_text(parse_windows(windows))
    except ValueError as exc:
        raise Invalid(str(exc)) from exc


def _server_ids(session: Session, names: tuple[str, ...]) -> list[int]:
    query = select(Server.name, Server.id).where(Server.name.in_(names))
    found = {name: server_id for name, server_id in session.execute(query).all()}
    for name in names:
        if name not in found:
            raise NotFound(f"no server named {name}")
    return [found[name] for name in names]


def _set_servers(session: Session, row: StoreSet, server_ids: list[int]) -> None:
    session.execute(delete(StoreSetServer).where(StoreSetServer.store_set_id == row.id))
    session.add_all(StoreSetServer(store_set_id=row.id, server_id=sid) for sid in server_ids)
    session.flush()


def store_set_info(session: Session, row: StoreSet) -> StoreSetInfo:
    """ROW as StoreSetInfo (its servers and vDisks by name)."""
    servers = session.scalars(
        select(Server.name)
        .join(StoreSetServer, StoreSetServer.server_id == Server.id)
        .where(StoreSetServer.store_set_id == row.id)
        .order_by(Server.name)
    ).all()
    vdisks = session.scalars(
        select(Vdisk.name).where(Vdisk.store_set_id == row.id).order_by(Vdisk.name)
    ).all()
    return StoreSetInfo(
        name=row.name,
        servers=tuple(servers),
        max_rate_bps=row.max_rate_bps,
        windows=tuple(str(w) for w in windows_of_text(row.windows)),
        vdisks=tuple(vdisks),
    )


def list_store_sets(session: Session) -> list[StoreSetInfo]:
    """Every store set, by name."""
    rows = session.scalars(select(StoreSet).order_by(StoreSet.name)).all()
    return [store_set_info(session, row) for row in rows]


def add_store_set(
    session: Session,
    audit: AuditWriter,
    name: str,
    servers: Sequence[str] | None,
    max_rate: str | int | None,
    windows: Sequence[str] | None,
    actor: str | None,
) -> StoreSetInfo:
    """Add store set NAME on SERVERS (None or empty: every server), capped
    at MAX_RATE (None: no cap), copying within WINDOWS (None or empty:
    always). Audited as `store.add`.

    Raises Invalid (bad name, rate, window), NotFound (unknown server),
    Conflict (name taken).
    """
    check_name("store", name)
    names = checked_server_names(servers or ())
    rate = checked_rate(max_rate)
    text = checked_windows(windows or ())
    if session.scalars(select(StoreSet.id).where(StoreSet.name == name)).first():
        raise Conflict(f"store {name} already exists")
    server_ids = _server_ids(session, names)
    row = StoreSet(name=name, max_rate_bps=rate, windows=text)
    session.add(row)
    session.flush()
    _set_servers(session, row, server_ids)
    info = store_set_info(session, row)
    audit.record(
        session,
        actor=actor,
        action="store.add",
        target_type="store",
        target_name=name,
        before=None,
        after=info,
    )
    return info


def change_store_set(
    session: Session,
    audit: AuditWriter,
    name: str,
    servers: Sequence[str] | None,
    max_rate: str | int | None,
    windows: Sequence[str] | None,
    actor: str | None,
) -> StoreSetInfo:
    """Change what is given of store set NAME: SERVERS (empty or `all`:
    every server), MAX_RATE ("none" or 0: no cap), WINDOWS (empty: always);
    None leaves a value as it is. Audited as `store.set`.

    Raises Invalid (bad rate, window, server name; nothing to change),
    NotFound (unknown store or server).
    """
    changes: dict[str, Any] = {}
    names = checked_server_names(servers) if servers is not None else None
    if max_rate is not None:
        changes["max_rate_bps"] = checked_rate(max_rate)
    if windows is not None:
        changes["windows"] = checked_windows(windows)
    if names is None and not changes:
        raise Invalid("nothing to change: give servers, a max rate or windows")
    row = find_store_set(session, name)
    server_ids = _server_ids(session, names) if names is not None else None
    before = store_set_info(session, row)
    for column, value in changes.items():
        setattr(row, column, value)
    if server_ids is not None:
        _set_servers(session, row, server_ids)
    session.flush()
    after = store_set_info(session, row)
    audit.record(
        session,
        actor=actor,
        action="store.set",
        target_type="store",
        target_name=name,
        before=before,
        after=after,
    )
    return after
