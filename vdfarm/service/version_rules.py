"""The rules of vDisk versions, as pure functions over plain values (no I/O).

Rules:
- Versions form one chain: the base (no parent) first, each next version on
  the one before; numbers grow along the chain. The newest version is the
  only one that may change access, and only it may be open (maintenance).
- Access moves along PROMOTIONS and REVERSIONS (tables below); a production
  version whose `production_at` is still ahead is shown as *pending*.
- What a device boots (`boot_choice`): production → the override pin if set,
  else the newest production version already in effect (the base if none);
  test → the newest test or production version; maintenance → the open
  maintenance version (writable) if any, else as test. A private vDisk's
  device boots its newest version (`device_boot`).
- Whether a device writes to its vDisk itself is decided in ONE place,
  `writes_vdisk` (private mode: every device; standard mode: only a
  maintenance device on a version open for maintenance). Everything else
  derives from it: the vDisk lock (`needs_lock`), the home-server rule of
  login (`home_server_only`), and rebalance's `is_pinned` (which adds data
  in a server-side write cache), and login's `may_fail_over`.
- Write caches: `server-disk`/`server-ram` live on the server (data there
  pins the device to it); `device-ram`/`device-disk`/`device-ram-overflow`
  live in the device's agent (`DEVICE_CACHES`): they travel with the
  device, so they never pin it, and such a device may fail over to any
  server holding a verified copy (`may_fail_over`).
- A merge keeps every version some device type boots now or later (`needed`)
  and folds the versions under the lowest of them; a merge that would fold
  nothing is refused.
- A running device keeps the version it booted until it boots again
  (`kept_version`): a failover or reconnect may ask for it instead of the
  current one, if it still exists, is sealed, and is one its device type
  could have booted (production devices: production versions only).
- Every refusal is an Invalid / NotFound / Conflict with one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from vdfarm.service.errors import Invalid, NotFound

MAINTENANCE, TEST, PRODUCTION, PENDING = "maintenance", "test", "production", "pending"
PRIVATE, STANDARD = "private", "standard"  # access modes of a vDisk
DEVICE_CACHES = ("device-ram", "device-disk", "device-ram-overflow")  # the agent's
DEVICE_TYPES = (PRODUCTION, TEST, MAINTENANCE)
VERSION_STATES = (MAINTENANCE, TEST, PRODUCTION, PENDING)
PROMOTE_TARGETS = (TEST, PRODUCTION)

# (access now, asked for) -> (access after, seals the file)
PROMOTIONS: dict[tuple[str, str], tuple[str, bool]] = {
    (MAINTENANCE, TEST): (TEST, True),
    (MAINTENANCE, PRODUCTION): (PRODUCTION, True),
    (TEST, PRODUCTION): (PRODUCTION, False),
    (PENDING, PRODUCTION): (PRODUCTION, False),  # reschedule, or take effect now
}
# access now -> access after one step back (unseals when it reaches maintenance)
REVERSIONS: dict[str, str] = {PRODUCTION: TEST, PENDING: TEST, TEST: MAINTENANCE}


@dataclass(frozen=True)
class VersionState:
    """What the rules need of one version."""

    number: int
    parent: int | None
    access: str
    production_at: datetime | None = None


@dataclass(frozen=True)
class BootChoice:
    """The version a device boots and whether it may write to it."""

    number: int
    writable: bool


@dataclass(frozen=True)
class MergePlan:
    """Fold `removed` into `keep` (onto the base, or as a new base)."""

    keep: int
    removed: tuple[int, ...]
    new_base: bool


def shown_access(version: VersionState, now: datetime) -> str:
    """maintenance / test / production / pending (production not yet in effect;
    never the base, which is always in effect)."""
    if (
        version.access == PRODUCTION
        and version.parent is not None
        and version.production_at is not None
        and version.production_at > now
    ):
        return PENDING
    return version.access


def newest(versions: Sequence[VersionState]) -> VersionState:
    """The newest version (the top of the chain)."""
    return max(versions, key=lambda v: v.number)


def base(versions: Sequence[VersionState]) -> VersionState:
    """The base: the version without a parent."""
    return next(v for v in versions if v.parent is None)


def find(versions: Sequence[VersionState], number: int, vdisk: str) -> VersionState:
    """Version NUMBER. Raises NotFound."""
    for version in versions:
        if version.number == number:
            return version
    raise NotFound(f"vDisk {vdisk} has no version {number}")


def open_maintenance(versions: Sequence[VersionState]) -> VersionState | None:
    """The version open for maintenance, if there is one (always the newest)."""
    top = newest(versions)
    return top if top.access == MAINTENANCE else None


def production_version(versions: Sequence[VersionState], now: datetime) -> int:
    """The newest production version in effect at NOW (ignoring any pin); the base if none."""
    live = [v.number for v in versions if shown_access(v, now) == PRODUCTION]
    return max(live) if live else base(versions).number


def test_version(versions: Sequence[VersionState]) -> int:
    """The newest test or production (or pending) version; the base if none."""
    sealed = [v.number for v in versions if v.access != MAINTENANCE]
    return max(sealed) if sealed else base(versions).number


def writes_vdisk(access_mode: str, device_type: str, version_state: str) -> bool:
    """True if a device of DEVICE_TYPE (production/test/maintenance) that
    boots a version in VERSION_STATE (maintenance/test/production/pending)
    of a vDisk in ACCESS_MODE (private/standard) writes to the vDisk itself,
    rather than to a write cache that is reset at boot: every device of a
    private vDisk; in standard mode, only a maintenance device on a version
    open for maintenance. Raises nothing."""
    if access_mode == PRIVATE:
        return True
    return device_type == MAINTENANCE and version_state == MAINTENANCE


def needs_lock(access_mode: str, device_type: str, version_state: str) -> bool:
    """True if the device must hold the vDisk's lock (one writer) while it
    streams: exactly when it writes to the vDisk (`writes_vdisk`)."""
    return writes_vdisk(access_mode, device_type, version_state)


def home_server_only(access_mode: str, device_type: str, version_state: str) -> bool:
    """True if login must send the device to the vDisk's home server: every
    server writes its own copy, so only the home's holds the device's writes
    (`writes_vdisk`)."""
    return writes_vdisk(access_mode, device_type, version_state)


def is_pinned(
    access_mode: str,
    device_type: str,
    version_state: str,
    server_cache_bytes: int | None,
    write_cache_type: str = "server-disk",
) -> bool:
    """True if the device would lose state by moving to another server: it
    writes to its vDisk (`writes_vdisk`: one writer, on this server's copy),
    or its write cache on this server holds data (SERVER_CACHE_BYTES > 0).
    A write cache on the device itself (WRITE_CACHE_TYPE in `DEVICE_CACHES`)
    travels with it (the agent's job): it never pins."""
    if writes_vdisk(access_mode, device_type, version_state):
        return True
    return write_cache_type not in DEVICE_CACHES and bool(server_cache_bytes)


def may_fail_over(
    access_mode: str, device_type: str, version_state: str, write_cache_type: str
) -> bool:
    """True if a device may be served by any server holding a verified copy
    of its version (its agent fails over on its own): a standard-mode
    vDisk, a production or test device not writing its vDisk, and a write
    cache on the device. False for private mode, maintenance, or a cache on
    the server (its writes live on one server)."""
    return (
        access_mode == STANDARD
        and device_type in (PRODUCTION, TEST)
        and not writes_vdisk(access_mode, device_type, version_state)
        and write_cache_type in DEVICE_CACHES
    )


def boot_choice(
    versions: Sequence[VersionState], device_type: str, pin: int | None, now: datetime
) -> BootChoice:
    """What a device of DEVICE_TYPE boots at NOW from a standard-mode vDisk,
    with production pinned to PIN; `writable` is `writes_vdisk`'s answer."""
    if device_type == MAINTENANCE and (opened := open_maintenance(versions)) is not None:
        number = opened.number
    elif device_type in (MAINTENANCE, TEST):
        number = test_version(versions)
    elif pin is not None and any(v.number == pin for v in versions):
        number = pin
    else:
        number = production_version(versions, now)
    state = shown_access(find(versions, number, "?"), now)
    return BootChoice(number, writable=writes_vdisk(STANDARD, device_type, state))


def device_boot(
    versions: Sequence[VersionState],
    access_mode: str,
    device_type: str,
    pin: int | None,
    now: datetime,
) -> BootChoice:
    """What a device of DEVICE_TYPE boots at NOW from a vDisk of ACCESS_MODE
    whose versions are VERSIONS (production pinned to PIN): a private vDisk
    its newest version, a standard one `boot_choice`'s."""
    if access_mode == PRIVATE:
        top = newest(versions)
        state = shown_access(top, now)
        return BootChoice(top.number, writable=writes_vdisk(PRIVATE, device_type, state))
    return boot_choice(versions, device_type, pin, now)


def kept_version(
    versions: Sequence[VersionState],
    access_mode: str,
    device_type: str,
    number: int,
    current: BootChoice,
    now: datetime,
    names: tuple[str, str],
) -> BootChoice:
    """The choice of a running device of DEVICE_TYPE that booted version
    NUMBER and asks to keep it, while a fresh boot would get CURRENT.
    NAMES: (device, vDisk), for the messages.

    Raises NotFound (no such version: merged away or deleted), Invalid (a
    private vDisk's older version, an open version, or a version a
    production device never boots).
    """
    if number == current.number:
        return current
    device, vdisk = names
    if access_mode == PRIVATE:
        raise Invalid(
            f"vDisk {vdisk} is in private mode: device {device} runs its one copy, "
            f"version {current.number}"
        )
    found = next((v for v in versions if v.number == number), None)
    if found is None:
        raise NotFound(
            f"vDisk {vdisk} has no version {number} any more (merged away or deleted): "
            f"device {device} must boot again to run version {current.number}"
        )
    state = shown_access(found, now)
    if state == MAINTENANCE:
        raise Invalid(f"version {number} of vDisk {vdisk} is open for maintenance, not sealed")
    if device_type == PRODUCTION and state != PRODUCTION:
        raise Invalid(
            f"version {number} of vDisk {vdisk} is {state}: production device "
            f"{device} does not run it"
        )
    return BootChoice(number, writable=False)


def chain_numbers(versions: Sequence[VersionState], number: int) -> list[int]:
    """The numbers of version NUMBER's chain, base first, NUMBER last."""
    by_number = {v.number: v for v in versions}
    chain = [number]
    while (parent := by_number[chain[-1]].parent) is not None:
        chain.append(parent)
    return chain[::-1]


def promotion(
    versions: Sequence[VersionState], to: str, now: datetime, vdisk: str
) -> tuple[VersionState, str, bool]:
    """(version to promote, its new access, whether it gets sealed) for `promote --to TO`.

    Raises Invalid (bad target, nothing to promote).
    """
    if to not in PROMOTE_TARGETS:
        raise Invalid(f"invalid access {to!r}: choose one of {', '.join(PROMOTE_TARGETS)}")
    top = newest(versions)
    current = shown_access(top, now)
    if top.parent is None or current == PRODUCTION:
        what = "is the base" if top.parent is None else "is already in production"
        raise Invalid(
            f"vDisk {vdisk} has no version open to promote: its newest version "
            f"{top.number} {what} (open one with vdfarm version new {vdisk})"
        )
    step = PROMOTIONS.get((current, to))
    if step is None and current == PENDING:
        raise Invalid(
            f"version {top.number} of vDisk {vdisk} is pending production; "
            f"revert it to bring it back to test (vdfarm version revert {vdisk})"
        )
    if step is None:
        raise Invalid(f"version {top.number} of vDisk {vdisk} is already in {current}")
    return top, step[0], step[1]


def reversion(
    versions: Sequence[VersionState], now: datetime, vdisk: str
) -> tuple[VersionState, str]:
    """(version to take back, its new access) for `revert`.

    Raises Invalid (the newest version is the base, or already in maintenance).
    """
    top = newest(versions)
    if top.parent is None:
        raise Invalid(f"cannot revert the base of vDisk {vdisk} (version {top.number})")
    current = shown_access(top, now)
    if current not in REVERSIONS:
        raise Invalid(
            f"version {top.number} of vDisk {vdisk} is already in maintenance; "
            f"discard it with vdfarm version delete {vdisk}"
        )
    return top, REVERSIONS[current]


def needed(versions: Sequence[VersionState], pin: int | None, now: datetime) -> set[int]:
    """Every version some device type boots now or will boot without a new
    promotion: the pin, production in effect, pending ones, test, maintenance."""
    keep = {production_version(versions, now), test_version(versions)}
    keep.update(v.number for v in versions if shown_access(v, now) in (PENDING, MAINTENANCE))
    if pin is not None:
        keep.add(pin)
    return keep


def merge_plan(
    versions: Sequence[VersionState],
    pin: int | None,
    now: datetime,
    *,
    new_base: bool,
    vdisk: str,
) -> MergePlan:
    """What `merge` (or `merge --new-base`) would do.

    Raises Invalid (nothing to merge).
    """
    chain = chain_numbers(versions, newest(versions).number)
    keep_set = needed(versions, pin, now)
    lowest = min(keep_set) if new_base else min(keep_set - {chain[0]}, default=None)
    if lowest is None or lowest == chain[0]:
        raise Invalid(
            f"nothing to merge in vDisk {vdisk}: "
            + (
                "production devices boot its base"
                if new_base
                else "it has no version above its base"
            )
        )
    index = chain.index(lowest)
    removed = tuple(chain[:index] if new_base else chain[1:index])
    if not removed:
        raise Invalid(
            f"nothing to merge in vDisk {vdisk}: version {lowest} already sits on the base"
        )
    return MergePlan(keep=lowest, removed=removed, new_base=new_base)
