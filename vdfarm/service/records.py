"""Plain views of service results, for JSON and tables.

Rules: service calls return frozen dataclasses (never ORM objects, which die
with their session); `to_plain` turns one into JSON-ready data: datetimes as
ISO 8601 UTC text, paths as text, tuples as lists.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from pathlib import Path
from typing import Any


def to_plain(value: Any) -> Any:
    """VALUE (dataclass, list, dict, datetime, Path, scalar) as JSON-ready data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    return value


def to_json(value: Any) -> str:
    """VALUE as compact, key-sorted JSON text."""
    return json.dumps(to_plain(value), sort_keys=True)
