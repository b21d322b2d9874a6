"""When the store's last full re-hash ended, kept across restarts.

Rules:
- One small file in the data directory (`REHASH_FILE`, mode 0600, written
  atomically) holds the wall-clock time the last full re-hash of the store
  ended. A restart waits for the rest of `--rehash-interval` instead of
  re-reading a whole store at every start (terabytes, on a server that is
  restarted for an upgrade).
- No file, an unreadable one, a time in the future (the clock was set
  back) or one older than the interval: re-hash at once. Reading and
  writing never raise: a missing marker only costs an early re-hash.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger("vdfarm.replication")

REHASH_FILE = "replication-rehashed-at"


def first_rehash_in(last_ended: float | None, now: float, every: float) -> float:
    """Seconds from NOW until the first full re-hash, given when the last
    one ended (LAST_ENDED, wall-clock seconds; None: never) and the
    interval EVERY."""
    if last_ended is None or last_ended > now:
        return 0.0
    return max(0.0, last_ended + every - now)


def read_last_rehash(data_dir: Path) -> float | None:
    """The wall-clock time the last full re-hash ended, or None."""
    try:
        text = (data_dir / REHASH_FILE).read_text(encoding="ascii").strip()
        value = float(text)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return value if value == value and value >= 0 else None  # not NaN


def write_last_rehash(data_dir: Path, ended: float) -> None:
    """Record that a full re-hash ended at ENDED (wall-clock seconds)."""
    path = data_dir / REHASH_FILE
    temp = data_dir / f".{REHASH_FILE}.{os.getpid()}"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(f"{ended:.3f}\n")
        os.replace(temp, path)
    except OSError as exc:
        log.warning("replication: cannot record the re-hash time in %s: %s", path, exc)
        with contextlib.suppress(OSError):
            temp.unlink()
