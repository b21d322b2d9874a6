"""Taking drifted files out of service: the one path the replication task
and `vdfarm store verify` share.

Rules:
- A drifted file leaves the manifest (with the files above it) and goes to
  the store's quarantine, never deleted: the admin may want to see it.
- A file whose manifest entry changed since it was found (`still_as_found`:
  a revert reopened it, a promote sealed it again) is left alone: what it
  was checked against is gone.
- The inventory is the caller's to refresh once the files are out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from vdfarm.replication.drift import Drift, still_as_found
from vdfarm.store.replica_files import quarantine
from vdfarm.store.store import Store

log = logging.getLogger("vdfarm.replication")


@dataclass(frozen=True)
class Quarantined:
    """DRIFT, and where its file went (None: it was gone already)."""

    drift: Drift
    moved_to: Path | None


def quarantine_drifted(
    store: Store,
    drifted: Iterable[Drift],
    now: datetime,
    skip: Callable[[str], bool] = lambda vdisk: False,
) -> list[Quarantined]:
    """Quarantine every file of DRIFTED (but those of a vDisk SKIP names:
    a copy is being written into it, and those whose manifest entry changed
    since). Raises StoreError, ManifestError."""
    done: list[Quarantined] = []
    for item in drifted:
        if skip(item.vdisk):
            continue
        if not still_as_found(store, item):
            log.info(
                "replication: %s/%s changed here while checked: left alone",
                item.vdisk,
                item.file_name,
            )
            continue
        moved = quarantine(store, item.vdisk, item.file_name, now)
        log.warning(
            "replication: %s/%s %s: %s, to be fetched again",
            item.vdisk,
            item.file_name,
            item.why,
            f"moved to {moved}" if moved else "out of the manifest",
        )
        done.append(Quarantined(item, moved))
    return done
