"""The agent's status file: what `vdfarm agent status` shows.

Job: where the status lives for a --listen address, write it atomically
(a private temporary file beside it, then rename), read it back.
Rules: the file is 0600 and replaced whole, never written in place; the
temporary file is created O_EXCL | O_NOFOLLOW so no planted link is
followed. A missing or unreadable file is a `StatusUnavailable` (one line).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from vdfarm.agent.local import ListenAddress

STATUS_DIR = Path("/run/vdfarm")


class StatusUnavailable(Exception):
    """No status to show (one line)."""


def status_path(address: ListenAddress, status_file: str | None = None) -> Path:
    """STATUS_FILE if given; else PATH.status.json beside a unix socket, or
    /run/vdfarm/agent-PORT.json for TCP."""
    if status_file:
        return Path(status_file)
    if address.path is not None:
        return address.path.with_name(address.path.name + ".status.json")
    return STATUS_DIR / f"agent-{address.port}.json"


def write_status(path: Path, status: dict[str, Any]) -> None:
    """Replace PATH with STATUS as JSON. Raises OSError."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(status, out, indent=2, sort_keys=True)
            out.write("\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_status(path: Path) -> dict[str, Any]:
    """The status in PATH. Raises StatusUnavailable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as source:
            value = json.load(source)
    except FileNotFoundError as exc:
        raise StatusUnavailable(f"no agent status at {path} (is the agent running?)") from exc
    except (OSError, ValueError) as exc:
        raise StatusUnavailable(f"cannot read the agent status {path}: {exc}") from exc
    if not isinstance(value, dict):
        raise StatusUnavailable(f"{path} is not an agent status")
    return value


def status_lines(status: dict[str, Any]) -> list[str]:
    """The status for people, one fact a line."""
    lines = [
        f"device {status.get('device')}: vDisk {status.get('vdisk')} "
        f"version {status.get('version')}",
        f"server: {status.get('server') or '-'} ({status.get('state')})",
        f"failover allowed: {'yes' if status.get('failover_allowed') else 'no'}",
        f"write cache: {status.get('write_cache_type')}"
        + (" (FULL)" if status.get("cache_full") else ""),
    ]
    cache = status.get("cache")
    if isinstance(cache, dict):
        lines.append("cache: " + ", ".join(f"{k} {v}" for k, v in sorted(cache.items())))
    failovers = status.get("failovers") or []
    lines.append(
        f"failovers: {len(failovers)}, requests sent again: {status.get('retried_requests', 0)}"
    )
    for record in failovers:
        pause = record.get("pause_ms")
        lines.append(
            f"  {record.get('at')} {record.get('from_server')} -> "
            f"{record.get('to_server') or '?'}: pause "
            f"{'?' if pause is None else f'{pause} ms'}, {record.get('retried')} sent again "
            f"({record.get('reason')})"
        )
    moves = status.get("moves") or []
    lines.append(f"moves: {len(moves)}")
    for record in moves:
        lines.append(
            f"  {record.get('at')} {record.get('from_server')} -> {record.get('to_server')}: "
            f"switched {record.get('switch_ms')} ms after the order, "
            f"{record.get('retried')} sent again (move order)"
        )
    if status.get("last_error"):
        lines.append(f"last error: {status['last_error']}")
    return lines
