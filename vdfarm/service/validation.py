"""Checks of user input shared by every service: names, MACs, choices, numbers.

Rules: each check returns the clean value or raises Invalid with one line
that says what is wrong and what is allowed. No database, no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from vdfarm.farm.models import ACCESS_MODES, WRITE_CACHE_TYPES
from vdfarm.service.errors import Invalid
from vdfarm.store.manifest import VDISK_NAME_RE

R = TypeVar("R")

MAX_DESCRIPTION = 1024
MIB = 1024 * 1024
MAX_CACHE_LIMIT_MB = 2**31 - 1
MIN_MAX_VERSIONS, MAX_MAX_VERSIONS = 2, 1000

_MAC_SEPARATED = re.compile(r"[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}")
_MAC_BARE = re.compile(r"[0-9a-f]{12}")
_MAC_DOTTED = re.compile(r"[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}")


class _Unchanged:
    """Marks a keyword argument the caller did not give (None may mean 'clear')."""

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = _Unchanged()


def check_name(kind: str, name: object) -> str:
    """Return NAME if it is a valid name for a KIND (vDisk, device, server).

    Raises Invalid.
    """
    if not isinstance(name, str) or not VDISK_NAME_RE.fullmatch(name):
        raise Invalid(
            f"invalid {kind} name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def parse_mac(text: str) -> str | None:
    """TEXT as a normalised MAC (aa:bb:cc:dd:ee:ff), or None if it is not one.

    Accepts aa:bb:cc:dd:ee:ff, AA-BB-CC-DD-EE-FF, aabbccddeeff, aabb.ccdd.eeff.
    """
    if not isinstance(text, str):
        return None
    lowered = text.strip().lower()
    if _MAC_SEPARATED.fullmatch(lowered) or _MAC_DOTTED.fullmatch(lowered):
        digits = re.sub(r"[:.-]", "", lowered)
    elif _MAC_BARE.fullmatch(lowered):
        digits = lowered
    else:
        return None
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def name_wins(rows: Sequence[R], name_or_mac: str, name_of: Callable[[R], str]) -> list[R]:
    """Of ROWS found by name or MAC, those of the device whose name is
    NAME_OR_MAC if there is one (a name match wins over a MAC match), else
    all of them (the device with that MAC). Raises nothing."""
    named = [r for r in rows if name_of(r) == name_or_mac]
    return named or list(rows)


def normalise_mac(text: str) -> str:
    """TEXT as a normalised MAC. Raises Invalid if it is not a MAC address."""
    mac = parse_mac(text)
    if mac is None:
        raise Invalid(f"invalid MAC address {text!r}: use the form aa:bb:cc:dd:ee:ff")
    return mac


def check_choice(kind: str, value: object, choices: tuple[str, ...]) -> str:
    """Return VALUE if it is one of CHOICES. Raises Invalid."""
    if value not in choices:
        raise Invalid(f"invalid {kind} {value!r}: choose one of {', '.join(choices)}")
    return value


def check_cache_limit(limit_mb: object) -> int | None:
    """Return a write-cache limit in MiB (None = no limit). Raises Invalid."""
    if limit_mb is None:
        return None
    if (
        not isinstance(limit_mb, int)
        or isinstance(limit_mb, bool)
        or not 1 <= limit_mb <= MAX_CACHE_LIMIT_MB
    ):
        raise Invalid(f"invalid write-cache limit {limit_mb!r}: give a whole number of MiB >= 1")
    return limit_mb


def check_description(text: object) -> str:
    """Return TEXT if it is a usable description. Raises Invalid."""
    if not isinstance(text, str):
        raise Invalid("invalid description: must be text")
    if len(text) > MAX_DESCRIPTION:
        raise Invalid(f"invalid description: longer than {MAX_DESCRIPTION} characters")
    return text


def cache_limit_bytes(limit_mb: int | None) -> int | None:
    """A stored write-cache limit (MiB; None = no limit) in bytes, as the
    stream enforces it and the front ends show it."""
    return None if limit_mb is None else limit_mb * MIB


def check_lease(seconds: object) -> float:
    """Return a lease length in seconds (> 0, finite). Raises Invalid."""
    if (
        not isinstance(seconds, int | float)
        or isinstance(seconds, bool)
        or not math.isfinite(seconds)
        or seconds <= 0
    ):
        raise Invalid(f"invalid lease {seconds!r}: give a number of seconds > 0")
    return float(seconds)


def check_max_versions(count: object) -> int:
    """Return a max-versions setting (a chain length that triggers a merge). Raises Invalid."""
    if (
        not isinstance(count, int)
        or isinstance(count, bool)
        or not MIN_MAX_VERSIONS <= count <= MAX_MAX_VERSIONS
    ):
        raise Invalid(
            f"invalid max-versions {count!r}: give a whole number from "
            f"{MIN_MAX_VERSIONS} to {MAX_MAX_VERSIONS}"
        )
    return count


def check_require_tls(value: object) -> bool:
    """Return a require-TLS setting (exactly True or False). Raises Invalid."""
    if not isinstance(value, bool):
        raise Invalid(f"invalid require-tls {value!r}: give true or false")
    return value


def vdisk_changes(
    mode: str | None,
    write_cache: str | None,
    cache_limit_mb: Any,
    description: str | None,
    max_versions: int | None,
    require_tls: bool | None = None,
    *,
    allow_none: bool = False,
) -> dict[str, Any]:
    """The checked column changes of `vdisk set` (only those given; none at
    all only with ALLOW_NONE, when the caller changes something else).

    Raises Invalid (a bad value, or nothing to change).
    """
    changes: dict[str, Any] = {}
    if mode is not None:
        changes["access_mode"] = check_choice("mode", mode, ACCESS_MODES)
    if write_cache is not None:
        changes["write_cache_type"] = check_choice(
            "write-cache type", write_cache, WRITE_CACHE_TYPES
        )
    if cache_limit_mb is not UNCHANGED:
        changes["write_cache_limit_mb"] = check_cache_limit(cache_limit_mb)
    if description is not None:
        changes["description"] = check_description(description)
    if max_versions is not None:
        changes["max_versions"] = check_max_versions(max_versions)
    if require_tls is not None:
        changes["require_tls"] = check_require_tls(require_tls)
    if not changes and not allow_none:
        raise Invalid(
            "nothing to change: give a mode, write-cache type, cache limit, "
            "description, max-versions, require-tls or store"
        )
    return changes
