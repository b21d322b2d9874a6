"""The service layer: the one place with farm logic; CLI, REST API and the
stream server are thin front ends over it. `vdfarm.service.Farm` is loaded
on first use (it pulls in SQLAlchemy)."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "Farm":
        from vdfarm.service.context import Farm

        return Farm
    raise AttributeError(f"module 'vdfarm.service' has no attribute {name!r}")
