"""How a sealed version stands on each server of its store set: the status
rows every front end shows (`replication status`, `GET /replication`) and
the progress `replication wait` draws, computed from database rows.

Rules (pure: no database session, no I/O; the time is an argument):
- A server that is down shows `server down`, whatever it holds; else
  `present` when its inventory lists the version with the database's
  sha256; else the state its `replicas` row reports (copying with bytes,
  rate and ETA; queued, failed or mismatch with the reason); else
  `missing`.
- A version is *replicated* when at least one up server of its store set
  holds it and every up one does (`is_replicated`); until then it is
  pending. Down servers neither count nor are waited for.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from vdfarm.farm.models import REPLICA_STATES, Replica, Server, VdiskVersion

PRESENT, MISSING, SERVER_DOWN = "present", "missing", "server down"
COPYING = "copying"
STATES = (PRESENT, *REPLICA_STATES, MISSING, SERVER_DOWN)


@dataclass(frozen=True)
class ReplicaStatus:
    """One sealed version on one server of its store set. `state` is one of
    STATES; `pending` is the version's (not yet on every up server of its
    store set); bytes are the file's (`bytes_total` its size), `rate_bps`
    and `eta_s` are known while copying; `reason` says why it is queued,
    failed or a mismatch, or since when a server is down."""

    vdisk: str
    version: int
    server: str
    state: str
    pending: bool
    bytes_done: int
    bytes_total: int
    rate_bps: float | None
    eta_s: float | None
    reason: str
    peer: str | None
    updated_at: datetime | None


@dataclass(frozen=True)
class ReplicationProgress:
    """How far one version is on the up servers of its store set."""

    vdisk: str
    version: int
    replicated: bool
    bytes_done: int
    bytes_total: int
    servers: tuple[ReplicaStatus, ...]


def progress_of(statuses: Iterable[ReplicaStatus], vdisk: str, version: int) -> ReplicationProgress:
    """The progress of VERSION of VDISK from `status` rows: bytes summed
    over the servers that are up (a down server neither counts nor waits)."""
    rows = tuple(s for s in statuses if s.vdisk == vdisk and s.version == version)
    live = [s for s in rows if s.state != SERVER_DOWN]
    return ReplicationProgress(
        vdisk=vdisk,
        version=version,
        replicated=bool(rows) and not rows[0].pending,
        bytes_done=sum(min(s.bytes_done, s.bytes_total) for s in live),
        bytes_total=sum(s.bytes_total for s in live),
        servers=rows,
    )


def is_replicated(store_servers: Iterable[int], up: set[int], holders: set[int]) -> bool:
    """True if at least one up server of a store set holds a version and
    every up one does (HOLDERS: the servers that hold it)."""
    live = {s for s in store_servers if s in up}
    return bool(live) and live <= holders


def status_of(
    vdisk: str,
    version: VdiskVersion,
    server: Server,
    *,
    up: bool,
    holds: bool,
    pending: bool,
    replica: Replica | None,
    peer_names: dict[int, str],
    now: datetime,
) -> ReplicaStatus:
    """The status of VERSION of VDISK on SERVER (a plain function of the rows)."""
    size = version.size or 0
    done, rate, eta, reason, peer, updated = 0, None, None, "", None, None
    if replica is not None and not holds:
        done, reason, updated = replica.bytes_done, replica.reason, replica.updated_at
        peer = peer_names.get(replica.peer_server_id) if replica.peer_server_id else None
    if not up:
        state = SERVER_DOWN
        reason = down_reason(server.last_heartbeat, now)
        done = size if holds else done
    elif holds:
        state, done = PRESENT, size
    elif replica is not None:
        state = replica.state
        if state == COPYING:
            rate = replica.rate_bps
            total = replica.bytes_total or size
            eta = (total - done) / rate if rate and total >= done else None
    else:
        state = MISSING
    return ReplicaStatus(
        vdisk=vdisk,
        version=version.number,
        server=server.name,
        state=state,
        pending=pending,
        bytes_done=done,
        bytes_total=size,
        rate_bps=rate,
        eta_s=eta,
        reason=reason,
        peer=peer,
        updated_at=updated,
    )


def down_reason(last_heartbeat: datetime | None, now: datetime) -> str:
    """Why a server counts as down at NOW, in a few words."""
    if last_heartbeat is None:
        return "never started"
    return f"no heartbeat for {max(0, round((now - last_heartbeat).total_seconds()))} s"
